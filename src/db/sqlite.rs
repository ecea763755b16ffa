//! Opening a SQLite file, and the one way the stores write to it.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use sqlx::{
    Connection, Sqlite, SqliteConnection, SqlitePool, Transaction,
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::{Mutex, MutexGuard};

use super::{
    Contents, DatabaseUrl, DbErrorKind, NotReady, OpenError, PoolSettings, classify, open_error,
};

/// Opens a SQLite database file, creating it and its directory if missing
/// (unless [`PoolSettings::create_missing`] is off), then runs `migrator`:
/// the SQLite counterpart of `open_postgres`.
///
/// Every connection uses the WAL journal and `synchronous = FULL`, so a
/// commit returns only once it is on disk, and waits up to the pool's acquire
/// time-out for another process' write lock instead of failing with
/// "database is locked". Creating and migrating happen under a lock on a file
/// beside the database, so processes starting together on one new file
/// cannot race.
///
/// # Errors
/// The URL does not parse, the file or its directory cannot be created or
/// opened, or a migration fails.
pub async fn open_sqlite(
    url: &DatabaseUrl,
    settings: &PoolSettings,
    migrator: &'static Migrator,
) -> Result<SqliteDatabase, OpenError> {
    let connect_error = |error: sqlx::Error| OpenError::Connect(url.redacted(), error);
    let options = SqliteConnectOptions::from_str(url.expose())
        .map_err(connect_error)?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(settings.acquire_timeout)
        .foreign_keys(true);
    let path = options.get_filename().to_path_buf();
    // A path that cannot be looked at is left to the open below to name.
    if !settings.create_missing && !path.try_exists().unwrap_or(true) {
        return Err(OpenError::NotCreated {
            database: url.redacted(),
        });
    }
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|error| OpenError::CreateDir(dir.into(), error))?;
    }
    // Connecting switches a new file to WAL, which does not wait out another
    // process doing the same; migrating is not atomic across processes.
    let lock = lock_file(&path).await?;
    let created = !path.exists();
    let setup = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone().create_if_missing(settings.create_missing))
        .await
        .map_err(|error| match classify(&error) {
            DbErrorKind::NotADatabase => open_error(&url.redacted(), error),
            _ => connect_error(error),
        })?;
    Contents::read::<sqlx::Sqlite>(
        &mut *setup.acquire().await.map_err(connect_error)?,
        "SELECT name FROM sqlite_schema \
         WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .await
    .map_err(connect_error)?
    .check_ours(migrator, &url.redacted())?;
    migrator
        .run(&setup)
        .await
        .map_err(|error| OpenError::Migrate(url.redacted(), error))?;
    setup.close().await;
    drop(lock);
    let absolute = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
    if created {
        tracing::warn!(file = %absolute.display(), "created a new, empty database file");
    } else {
        tracing::info!(file = %absolute.display(), "opened the database file");
    }

    // The pool never creates the file: should it vanish, a new connection
    // fails rather than start an empty database in its place. A connection
    // is not tested before use: the test is a round trip to its own thread,
    // which a server cannot have dropped (2% more calls a second, measured
    // in BENCHMARKS.md); the file's fate is watched by `SqliteFile`.
    //
    // A connection still inside a transaction is closed instead: a commit
    // that failed after SQLite ended the transaction on its own (a full
    // disk, say) leaves the driver counting it open, the rollback that
    // follows fails too, and every write begun on it after would fail. By
    // the time the connection is idle again its rollback has run, so the
    // count it carries here is the true one.
    let pool = SqlitePoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, _| {
            Box::pin(async move {
                let usable = !conn.is_in_transaction();
                if !usable {
                    tracing::warn!(
                        "a connection left inside a transaction by a failed commit or rollback is closed"
                    );
                }
                Ok(usable)
            })
        })
        .connect_with(options.create_if_missing(false))
        .await
        .map_err(connect_error)?;
    let file = SqliteFile::new(path).map_err(|error| connect_error(error.into()))?;
    super::watch_pool(&pool);
    Ok(SqliteDatabase {
        pool,
        file,
        turn: Arc::default(),
        wait: settings.acquire_timeout,
        migrator,
    })
}

/// Takes an exclusive lock on a file beside the database, `<file>-setup-lock`,
/// waiting for any other process that holds it.
async fn lock_file(database: &Path) -> Result<std::fs::File, OpenError> {
    let mut path = database.as_os_str().to_owned();
    path.push("-setup-lock");
    let path = PathBuf::from(path);
    let failed = |error| OpenError::Lock(path.clone(), error);
    let file = std::fs::File::create(&path).map_err(failed)?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(std::fs::TryLockError::Error(error)) => return Err(failed(error)),
        Err(std::fs::TryLockError::WouldBlock) => {}
    }
    tracing::info!(
        lock = %path.display(),
        "another process is setting the database up; waiting for it"
    );
    // On a thread of its own, not the runtime's pool for blocking work: a
    // process stopped while it waits does not wait for it to end.
    let (locked, taken) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = locked.send(file.lock().map(|()| file));
    });
    taken
        .await
        .map_err(std::io::Error::other)
        .flatten()
        .map_err(failed)
}

/// A SQLite database as a service opened it: a pool to read through, and
/// writes that take turns.
#[derive(Debug, Clone)]
pub struct SqliteDatabase {
    pool: SqlitePool,
    file: SqliteFile,
    /// Writers of this process take turns here, so only one at a time waits
    /// on SQLite's file lock, which polls, against other processes.
    turn: Arc<Mutex<()>>,
    /// Longest wait for the turn, and then for the file lock.
    wait: Duration,
    /// The service's migrations: readiness checks the file's are its own.
    migrator: &'static Migrator,
}

impl SqliteDatabase {
    /// The pool, for reads.
    #[must_use]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Begins a write: waits for this process' turn, then begins an
    /// `IMMEDIATE` transaction, which takes the file's write lock up front.
    /// Each wait is bounded by the pool's acquire time-out.
    ///
    /// # Errors
    /// The turn or the lock did not come in time, or no connection could be had.
    pub async fn begin_write(&self) -> Result<SqliteWrite<'_>, sqlx::Error> {
        let turn = tokio::time::timeout(self.wait, self.turn.lock())
            .await
            .map_err(|_| {
                sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "waited {:?} for the other writers of this process",
                        self.wait
                    ),
                ))
            })?;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(SqliteWrite {
            tx,
            file: &self.file,
            _turn: turn,
        })
    }

    /// `Ok` if a write could begin now (this process' turn and the file's
    /// write lock, each within the acquire time-out), the file is still in
    /// place, and its last migration is the service's (not a newer
    /// release's, run by another process on the file). A read alone would
    /// pass while another process holds the write lock, or the file will
    /// not take writes.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        if !self.file.is_in_place() {
            return Err(NotReady::FileReplaced);
        }
        let mut write = self.begin_write().await.map_err(NotReady::Failed)?;
        let last = sqlx::query_scalar::<_, Option<i64>>(
            "SELECT max(version) FROM _sqlx_migrations WHERE success",
        )
        .fetch_one(write.conn())
        .await;
        let rolled_back = write.rollback().await;
        let last = last.map_err(NotReady::Failed)?;
        rolled_back.map_err(NotReady::Failed)?;
        super::schema_is_ours(last, self.migrator)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A write in progress: dropped without [`SqliteWrite::commit`], it rolls back.
pub struct SqliteWrite<'a> {
    // Dropped in this order: the transaction before the turn.
    tx: Transaction<'static, Sqlite>,
    file: &'a SqliteFile,
    _turn: MutexGuard<'a, ()>,
}

impl SqliteWrite<'_> {
    /// The connection to run the write's statements on.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    /// Rolls back, releasing the write lock.
    ///
    /// # Errors
    /// The rollback failed.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }

    /// Commits, then checks the file is still in place: what went to a file
    /// deleted, moved or replaced since it was opened would be lost to the
    /// next process on its path, so it must not be acknowledged.
    ///
    /// # Errors
    /// The commit failed, or the file is no longer in place.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await?;
        self.file.check_in_place()
    }
}

/// The SQLite database file a pool was opened on, by path and identity.
///
/// SQLite keeps writing to a file deleted or replaced under a running
/// process, and the next process to start on the path would begin again from
/// nothing: every write is checked against this before it is acknowledged.
#[derive(Debug, Clone)]
struct SqliteFile {
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

impl SqliteFile {
    fn new(path: PathBuf) -> std::io::Result<Self> {
        let identity = file_identity(&path)?;
        Ok(Self { path, identity })
    }

    /// Whether the file opened is still the one at its path.
    fn is_in_place(&self) -> bool {
        file_identity(&self.path).is_ok_and(|identity| identity == self.identity)
    }

    /// `Ok` if [`SqliteFile::is_in_place`], else an error naming the path.
    fn check_in_place(&self) -> Result<(), sqlx::Error> {
        if self.is_in_place() {
            Ok(())
        } else {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "database file {} was deleted, moved or replaced while open",
                    self.path.display()
                ),
            )))
        }
    }
}

/// Device and inode on Unix; on other systems only whether the file exists.
fn file_identity(path: &Path) -> std::io::Result<Option<(u64, u64)>> {
    let metadata = std::fs::metadata(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(Some((metadata.dev(), metadata.ino())))
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        Ok(None)
    }
}
