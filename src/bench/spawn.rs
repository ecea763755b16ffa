//! Starts a `number-allocator` (or an `invoice-writer`) process on a fresh
//! database (PostgreSQL, or a SQLite file in a new directory) for one
//! benchmark run, and removes both afterwards: when stopped, and also when
//! dropped (a run that failed half way, or was interrupted). A separate
//! process, as in production, so its resident memory can be read on its
//! own; started with none of the services' settings from this process'
//! environment, so that it runs as the benchmark says.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use sqlx::{
    AssertSqlSafe, ConnectOptions, Connection, PgConnection, SqliteConnection,
    postgres::PgConnectOptions, sqlite::SqliteConnectOptions,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// Why an allocator could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The process could not be started.
    #[error("starting {0}")]
    Start(String, #[source] std::io::Error),
    /// The admin URL does not parse.
    #[error("bad database URL: {0}")]
    AdminUrl(String),
    /// The database could not be created.
    #[error("creating the benchmark database")]
    Database(#[from] sqlx::Error),
    /// The benchmark's SQLite directory could not be removed.
    #[error("removing {0}")]
    Remove(String, #[source] std::io::Error),
    /// The process exited or went quiet before it listened.
    #[error("the service did not start listening: {0}")]
    NotListening(String),
}

/// A running allocator on a database of its own.
pub struct SpawnedAllocator {
    child: Child,
    /// Its gRPC URL.
    pub url: String,
    database: FreshDatabase,
}

/// Several allocator processes on one fresh database, as replicas behind a
/// load balancer would be.
pub struct SpawnedReplicas {
    children: Vec<Child>,
    /// Their gRPC URLs, one per process.
    pub urls: Vec<String>,
    database: FreshDatabase,
}

impl SpawnedReplicas {
    /// Creates a fresh database as [`SpawnedAllocator::start`] does and
    /// starts `replicas` processes of `binary` on it, one after the other
    /// (the first runs the migrations).
    ///
    /// # Errors
    /// The database or a process could not be started.
    pub async fn start(
        binary: &Path,
        admin_url: &str,
        args: &[String],
        replicas: usize,
    ) -> Result<Self, SpawnError> {
        // Dropped on an error, as `started` is: the database goes too.
        let (database, (key, value)) = FreshDatabase::create(admin_url).await?;
        let mut started = Self {
            children: Vec::with_capacity(replicas),
            urls: Vec::with_capacity(replicas),
            database,
        };
        for _ in 0..replicas.max(1) {
            let (child, url) = spawn(binary, args, ALLOCATOR_LOG, (key, &value)).await?;
            started.children.push(child);
            started.urls.push(url);
        }
        Ok(started)
    }

    /// Stops every process and drops the database.
    ///
    /// # Errors
    /// The database or directory could not be removed.
    pub async fn stop(mut self) -> Result<(), SpawnError> {
        for child in &mut self.children {
            let _ = child.kill().await;
        }
        self.database.remove().await
    }
}

/// The database a benchmark run created, to remove afterwards: by
/// [`remove`](Self::remove), or else when dropped.
struct FreshDatabase(Option<Database>);

enum Database {
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
    Sqlite {
        dir: PathBuf,
    },
}

impl Drop for FreshDatabase {
    /// Removes the database of a run that ended without
    /// [`remove`](Self::remove), as best it can: its processes, killed on
    /// drop, may still hold it (a forced `DROP DATABASE` ends their
    /// sessions).
    fn drop(&mut self) {
        let Some(database) = self.0.take() else {
            return;
        };
        // A runtime of its own on a thread of its own: this may run inside
        // the benchmark's runtime, which cannot be blocked on.
        let removed = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            // Bounded: a server that does not answer must not hold the
            // exit forever.
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), database.remove()).await
            })??;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("removing a benchmark database: {error}"),
            Err(_) => eprintln!("removing a benchmark database: the thread doing it panicked"),
        }
    }
}

impl FreshDatabase {
    /// A new database on the PostgreSQL server of `admin_url`, or a new
    /// directory for the default SQLite file when `admin_url` is exactly
    /// `sqlite:`;
    /// and the environment that points the allocator at it.
    async fn create(admin_url: &str) -> Result<(Self, (&'static str, String)), SpawnError> {
        if admin_url == "sqlite:" {
            let dir = std::env::temp_dir()
                .join(format!("numbering_bench_{}", uuid::Uuid::now_v7().simple()));
            let env = ("NUMBERING_DATA_DIR", dir.display().to_string());
            return Ok((Self(Some(Database::Sqlite { dir })), env));
        }
        // Parse before creating anything, so a bad URL leaves no database behind.
        let mut url =
            url::Url::parse(admin_url).map_err(|e| SpawnError::AdminUrl(e.to_string()))?;
        let name = format!("numbering_bench_{}", uuid::Uuid::now_v7().simple());
        url.set_path(&name);
        let mut admin = PgConnection::connect(admin_url).await?;
        sqlx::query(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut admin)
            .await?;
        let database = Database::Postgres {
            admin_url: admin_url.to_owned(),
            name,
            url: url.to_string(),
        };
        Ok((Self(Some(database)), ("DATABASE_URL", url.to_string())))
    }

    /// Removes the database, once.
    async fn remove(&mut self) -> Result<(), SpawnError> {
        match self.0.take() {
            Some(database) => database.remove().await,
            None => Ok(()),
        }
    }

    fn get(&self) -> Option<&Database> {
        self.0.as_ref()
    }

    /// Its URL, where it is on PostgreSQL.
    fn postgres_url(&self) -> Option<&str> {
        match self.get()? {
            Database::Postgres { url, .. } => Some(url),
            Database::Sqlite { .. } => None,
        }
    }
}

impl Database {
    async fn remove(self) -> Result<(), SpawnError> {
        match self {
            Self::Postgres {
                admin_url, name, ..
            } => {
                let mut admin = PgConnection::connect(&admin_url).await?;
                sqlx::query(AssertSqlSafe(format!(
                    r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                )))
                .execute(&mut admin)
                .await?;
            }
            Self::Sqlite { dir } => {
                // A process killed as it is dropped may still finish the
                // call that writes a file there: a few tries.
                let mut tries = 0;
                while let Err(e) = std::fs::remove_dir_all(&dir) {
                    // A service that failed first may never have made it.
                    if e.kind() == std::io::ErrorKind::NotFound {
                        break;
                    }
                    tries += 1;
                    if tries == 5 || e.kind() != std::io::ErrorKind::DirectoryNotEmpty {
                        return Err(SpawnError::Remove(dir.display().to_string(), e));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Ok(())
    }
}

/// Runs `sql` on the PostgreSQL database at `url`, unlogged.
async fn execute_on(url: &str, sql: AssertSqlSafe<String>) -> Result<(), SpawnError> {
    let options: PgConnectOptions = url.parse()?;
    let mut conn = options.disable_statement_logging().connect().await?;
    sqlx::query(sql).execute(&mut conn).await?;
    Ok(())
}

/// Analyzes the PostgreSQL database at `url`, as autovacuum would.
///
/// # Errors
/// The database could not be reached, or the statement failed.
pub async fn analyze(url: &str) -> Result<(), SpawnError> {
    execute_on(url, AssertSqlSafe("ANALYZE".to_owned())).await
}

/// How the PostgreSQL server of `admin_url` makes a commit durable
/// (`fsync`, `synchronous_commit`), as a benchmark's figures depend on it;
/// `None` for SQLite (`sqlite:`), whose settings are the services' own.
///
/// # Errors
/// The server could not be reached.
pub async fn durability(admin_url: &str) -> Result<Option<String>, SpawnError> {
    if admin_url == "sqlite:" {
        return Ok(None);
    }
    let mut admin = PgConnection::connect(admin_url).await?;
    let (fsync, synchronous_commit): (String, String) =
        sqlx::query_as("SELECT current_setting('fsync'), current_setting('synchronous_commit')")
            .fetch_one(&mut admin)
            .await?;
    Ok(Some(format!(
        "fsync {fsync}, synchronous_commit {synchronous_commit}"
    )))
}

impl SpawnedAllocator {
    /// Runs `sql` on the allocator's database, behind its back: for
    /// benchmarks that need more data than calls would make in time, and
    /// the analyzes that stand in for autovacuum. Not logged, slow or not:
    /// an `ANALYZE` of a large database takes seconds.
    ///
    /// # Errors
    /// The statement failed.
    pub async fn execute(&self, sql: &str) -> Result<(), SpawnError> {
        let sql = AssertSqlSafe(sql.to_owned());
        match self.database.get() {
            Some(Database::Postgres { url, .. }) => execute_on(url, sql).await?,
            Some(Database::Sqlite { dir }) => {
                let file = dir.join("allocator.sqlite3");
                let options = SqliteConnectOptions::new().filename(file);
                let mut conn = SqliteConnection::connect_with(&options).await?;
                sqlx::query(sql).execute(&mut conn).await?;
            }
            None => {}
        }
        Ok(())
    }

    /// Whether its database is SQLite.
    #[must_use]
    pub fn on_sqlite(&self) -> bool {
        matches!(self.database.get(), Some(Database::Sqlite { .. }))
    }

    /// Its database's URL, where that is on PostgreSQL.
    #[must_use]
    pub fn postgres_url(&self) -> Option<&str> {
        self.database.postgres_url()
    }

    /// Creates a fresh database on the server of `admin_url`, or a SQLite
    /// file in a new directory when it is `sqlite:`, and starts `binary` on it
    /// with `args` added.
    ///
    /// # Errors
    /// The database or the process could not be started.
    pub async fn start(
        binary: &Path,
        admin_url: &str,
        args: &[String],
    ) -> Result<Self, SpawnError> {
        // Dropped on an error: the database goes too.
        let (database, (key, value)) = FreshDatabase::create(admin_url).await?;
        let (child, url) = spawn(binary, args, ALLOCATOR_LOG, (key, &value)).await?;
        Ok(Self {
            child,
            url,
            database,
        })
    }

    /// The process id, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The process' resident memory, from `/proc`.
    #[must_use]
    pub fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// Stops the process and drops its database or directory.
    ///
    /// # Errors
    /// The database or directory could not be removed.
    pub async fn stop(mut self) -> Result<(), SpawnError> {
        let _ = self.child.kill().await;
        self.database.remove().await
    }
}

/// A running invoice writer on a database of its own, calling an allocator.
pub struct SpawnedWriter {
    child: Child,
    /// Its gRPC URL.
    pub url: String,
    database: FreshDatabase,
}

impl SpawnedWriter {
    /// Creates a fresh database as [`SpawnedAllocator::start`] does and
    /// starts `binary` on it, calling the allocator at `allocator_url`.
    ///
    /// # Errors
    /// The database or the process could not be started.
    pub async fn start(
        binary: &Path,
        admin_url: &str,
        allocator_url: &str,
    ) -> Result<Self, SpawnError> {
        let (database, (key, value)) = FreshDatabase::create(admin_url).await?;
        let args = ["--allocator-url".to_owned(), allocator_url.to_owned()];
        let (child, url) = spawn(binary, &args, WRITER_LOG, (key, &value)).await?;
        Ok(Self {
            child,
            url,
            database,
        })
    }

    /// The process id, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its database's URL, where that is on PostgreSQL.
    #[must_use]
    pub fn postgres_url(&self) -> Option<&str> {
        self.database.postgres_url()
    }

    /// Stops the process and drops its database or directory.
    ///
    /// # Errors
    /// The database or directory could not be removed.
    pub async fn stop(mut self) -> Result<(), SpawnError> {
        let _ = self.child.kill().await;
        self.database.remove().await
    }
}

/// The log filters that keep the line naming the listening address.
const ALLOCATOR_LOG: &str = "warn,number_allocator=info";
const WRITER_LOG: &str = "warn,invoice_writer=info";

/// Starts `binary` with `args`, the log filter `log` and the database in
/// `database` (variable and value), and waits until it listens; the process
/// and its gRPC URL.
async fn spawn(
    binary: &Path,
    args: &[String],
    log: &str,
    (key, value): (&str, &str),
) -> Result<(Child, String), SpawnError> {
    let mut command = Command::new(binary);
    // None of the services' settings from this process' environment: only
    // what the benchmark passes.
    for (name, _) in std::env::vars_os() {
        if name == "DATABASE_URL" || name.to_string_lossy().starts_with("NUMBERING_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--drain-delay",
            "0s",
        ])
        .args(args)
        .env(key, value)
        .env("RUST_LOG", log)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SpawnError::Start(binary.display().to_string(), e))?;
    let mut lines = BufReader::new(
        child
            .stderr
            .take()
            .ok_or_else(|| SpawnError::NotListening("no stderr to read".into()))?,
    )
    .lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(addr) = event["addr"].as_str() {
                return Ok(addr.to_owned());
            }
        }
        Err(SpawnError::NotListening("the process exited".into()))
    })
    .await
    .map_err(|_| SpawnError::NotListening("no address within 30 s".into()))??;
    // Keep reading its logs, or a full pipe would stall it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    Ok((child, format!("http://{addr}")))
}
