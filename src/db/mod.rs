//! Database connection settings, the start-up path of both backends, and the
//! one place database errors are classified.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use sqlx::{
    Connection, PgConnection, PgPool, Postgres, Transaction,
    migrate::{MigrateDatabase, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::SqliteConnectOptions,
};

mod sqlite;

pub use sqlite::{SqliteDatabase, SqliteWrite, open_sqlite};

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `postgres://` or `postgresql://`: the production store.
    Postgres,
    /// `sqlite:`: one file on local disk, the embedded default.
    Sqlite,
}

/// A database URL. Its password never reaches `Debug`, `Display` or logs.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL of a SQLite database file at `path`.
    ///
    /// # Errors
    /// The path is not UTF-8.
    pub fn sqlite_file(path: &Path) -> Result<Self, String> {
        // The URL's path is percent-decoded: escape what would not survive.
        const ESCAPED: &percent_encoding::AsciiSet =
            &percent_encoding::CONTROLS.add(b'%').add(b'?').add(b'#');
        let path = path
            .to_str()
            .ok_or_else(|| format!("database path {} is not UTF-8", path.display()))?;
        Ok(Self(format!(
            "sqlite://{}",
            percent_encoding::utf8_percent_encode(path, ESCAPED)
        )))
    }

    /// The backend the URL's scheme names.
    #[must_use]
    pub fn backend(&self) -> Backend {
        if self.0.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }

    /// The full URL, password included: for connecting only.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password, in the user part or as a `password`
    /// parameter, replaced by `***`.
    #[must_use]
    pub fn redacted(&self) -> String {
        if self.backend() == Backend::Sqlite {
            // A file name: nothing secret in it.
            return self.0.clone();
        }
        let Ok(mut url) = url::Url::parse(&self.0) else {
            return "<unparseable database url>".into();
        };
        if url.password().is_some() {
            // Cannot fail: the URL already has a password, so it has a host.
            let _ = url.set_password(Some("***"));
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(key, value)| {
                    let value = if key.eq_ignore_ascii_case("password") {
                        "***".into()
                    } else {
                        value.into_owned()
                    };
                    (key.into_owned(), value)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let url = Self(raw.to_owned());
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(url);
        }
        if raw.starts_with("sqlite:") {
            // Numbers handed out from memory would be handed out again after a restart.
            let options = SqliteConnectOptions::from_str(raw).map_err(|error| error.to_string())?;
            if raw.contains(":memory:") || raw.contains("mode=memory") {
                return Err(format!(
                    "{raw}: an in-memory SQLite database loses every number at exit; name a file"
                ));
            }
            // The services write, and rely on SQLite's own file locking.
            if let Some((_, query)) = raw.split_once('?') {
                for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
                    if matches!(key.as_ref(), "vfs" | "immutable") || value == "ro" {
                        return Err(format!(
                            "{raw}: {key}={value} would give up writing or file locking"
                        ));
                    }
                }
            }
            if options.get_filename().as_os_str().is_empty() {
                return Err(format!("{raw}: no SQLite file named"));
            }
            return Ok(url);
        }
        Err(format!(
            "unsupported database URL {}: expected postgres:// or sqlite://",
            url.redacted()
        ))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Pool limits. The acquire time-out is what makes calls fail fast while the
/// database is unreachable, so keep it well under the callers' deadlines.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long a call waits for a connection before answering UNAVAILABLE.
    pub acquire_timeout: Duration,
}

/// Opens a PostgreSQL pool and checks one connection. A database that does
/// not exist yet is created first, so a first run needs no setup step.
///
/// Every connection asks for synchronous commit at start-up, overriding the
/// server's, database's and role's defaults; [`begin_durable`] and the allocation statement ask again per
/// transaction, for poolers that drop start-up options.
///
/// # Errors
/// The URL does not parse, or the database cannot be reached or created.
pub async fn connect_postgres(
    url: &DatabaseUrl,
    settings: &PoolSettings,
) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url.expose())?.options([("synchronous_commit", "on")]);
    match pool_options(settings).connect_with(options.clone()).await {
        Err(error) if classify(&error) == DbErrorKind::NoSuchDatabase => {
            Postgres::create_database(url.expose()).await?;
            tracing::warn!(database = %url, "created a new, empty database");
            pool_options(settings).connect_with(options).await
        }
        result => result,
    }
}

/// Why a database could not be opened at start-up. Each cause has its own
/// exit status ([`OpenError::exit_code`]), listed in the README.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The host name in the URL does not resolve.
    #[error("unknown database host {host:?} in {database}")]
    UnknownHost {
        /// The redacted URL.
        database: String,
        /// The host that does not resolve.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// Nothing accepts connections at the database's address, or it did not
    /// answer in time.
    #[error(
        "cannot reach the database server of {database}: is it running, and is that its address?"
    )]
    Unreachable {
        /// The redacted URL.
        database: String,
        /// Refused, reset or timed out.
        #[source]
        source: sqlx::Error,
    },
    /// The server refused the URL's user or password.
    #[error("the database server refused the user or password of {database}")]
    Authentication {
        /// The redacted URL.
        database: String,
        /// The server's answer.
        #[source]
        source: sqlx::Error,
    },
    /// The database does not exist, and creating it failed.
    #[error(
        "database {database} does not exist and could not be created: create it, or let its role create databases (CREATEDB)"
    )]
    Missing {
        /// The redacted URL.
        database: String,
        /// Why it could not be created.
        #[source]
        source: sqlx::Error,
    },
    /// The database holds tables this service did not create: another
    /// service's, or an application's.
    #[error(
        "{database} is not this service's database: it holds {found}. Give each service a database of its own (--database-url, or --data-dir for SQLite files)"
    )]
    NotOurs {
        /// The redacted URL.
        database: String,
        /// What was found there.
        found: String,
    },
    /// Any other failure to connect, e.g. a file that is not a SQLite database.
    #[error("connecting to {0}")]
    Connect(String, #[source] sqlx::Error),
    /// The directory of a SQLite file could not be created.
    #[error("creating directory {} for the database", .0.display())]
    CreateDir(PathBuf, #[source] std::io::Error),
    /// The lock that serialises processes opening one SQLite file failed.
    #[error("locking {}", .0.display())]
    Lock(PathBuf, #[source] std::io::Error),
    /// The migrations failed.
    #[error("migrating {0}")]
    Migrate(String, #[source] sqlx::migrate::MigrateError),
}

impl OpenError {
    /// The process exit status for this cause, after `sysexits.h`.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotOurs { .. } => 65,                 // EX_DATAERR
            Self::Missing { .. } => 66,                 // EX_NOINPUT
            Self::UnknownHost { .. } => 68,             // EX_NOHOST
            Self::Unreachable { .. } => 69,             // EX_UNAVAILABLE
            Self::CreateDir(..) | Self::Lock(..) => 73, // EX_CANTCREAT
            Self::Authentication { .. } => 77,          // EX_NOPERM
            Self::Connect(..) | Self::Migrate(..) => 1,
        }
    }
}

/// Connects as [`connect_postgres`] does, checks the database is this
/// service's or empty, then runs `migrator`: what a service does at start-up
/// before it reports ready. Each cause of failure is its own [`OpenError`].
///
/// # Errors
/// The host does not resolve, the server does not answer or refuses the
/// credentials, the database is missing and cannot be created, it holds
/// another service's tables, or a migration fails.
pub async fn open_postgres(
    url: &DatabaseUrl,
    settings: &PoolSettings,
    migrator: &Migrator,
) -> Result<PgPool, OpenError> {
    let database = url.redacted();
    let options = PgConnectOptions::from_str(url.expose())
        .map_err(|error| OpenError::Connect(database.clone(), error))?;
    resolve(&options, &database).await?;
    // One connection first, alone: the pool would report any failure as
    // "pool timed out", hiding the cause.
    let probe = tokio::time::timeout(
        settings.acquire_timeout,
        PgConnection::connect_with(&options),
    )
    .await
    .unwrap_or_else(|_| {
        Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {:?}", settings.acquire_timeout),
        )))
    });
    match probe {
        Ok(conn) => {
            let _ = conn.close().await;
        }
        Err(error) => match classify(&error) {
            DbErrorKind::NoSuchDatabase => {} // created below
            _ => return Err(open_error(&database, error)),
        },
    }
    // Creating a missing database fails for want of CREATEDB.
    let pool = connect_postgres(url, settings)
        .await
        .map_err(|error| match classify(&error) {
            DbErrorKind::NoPrivilege => OpenError::Missing {
                database: database.clone(),
                source: error,
            },
            _ => open_error(&database, error),
        })?;
    tracing::info!(database, "opened the database");
    Contents::read(
        &pool,
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() ORDER BY table_name",
    )
    .await
    .map_err(|error| OpenError::Connect(database.clone(), error))?
    .check_ours(migrator, &database)?;
    migrator
        .run(&pool)
        .await
        .map_err(|error| OpenError::Migrate(database, error))?;
    Ok(pool)
}

/// Resolves the URL's host, so that a misspelt one is named as such.
async fn resolve(options: &PgConnectOptions, database: &str) -> Result<(), OpenError> {
    let host = options.get_host();
    // A Unix socket directory needs no resolving.
    if host.starts_with('/') {
        return Ok(());
    }
    match tokio::net::lookup_host((host, options.get_port())).await {
        Ok(_) => Ok(()),
        Err(source) => Err(OpenError::UnknownHost {
            database: database.to_owned(),
            host: host.to_owned(),
            source,
        }),
    }
}

/// The cause of a failed connection at start-up.
pub(crate) fn open_error(database: &str, error: sqlx::Error) -> OpenError {
    let database = database.to_owned();
    match classify(&error) {
        DbErrorKind::Authentication => OpenError::Authentication {
            database,
            source: error,
        },
        DbErrorKind::NoSuchDatabase => OpenError::Missing {
            database,
            source: error,
        },
        DbErrorKind::Unavailable => OpenError::Unreachable {
            database,
            source: error,
        },
        DbErrorKind::NotADatabase => OpenError::NotOurs {
            database,
            found: "data that is not a SQLite database".into(),
        },
        _ => OpenError::Connect(database, error),
    }
}

/// What start-up found in a database before migrating it.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    /// The tables of its schema, migrations table included.
    pub tables: Vec<String>,
    /// The migrations applied, by version and checksum, if it has a
    /// migrations table.
    pub applied: Vec<(i64, Vec<u8>)>,
}

impl Contents {
    /// Reads the tables, listed by `tables_sql` (engines list them each their
    /// own way), and the migrations applied.
    pub(crate) async fn read<DB>(
        pool: &sqlx::Pool<DB>,
        tables_sql: &'static str,
    ) -> Result<Self, sqlx::Error>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        DB::Arguments: sqlx::IntoArguments<DB>,
        for<'r> (String,): sqlx::FromRow<'r, DB::Row>,
        for<'r> (i64, Vec<u8>): sqlx::FromRow<'r, DB::Row>,
    {
        let tables: Vec<(String,)> = sqlx::query_as(tables_sql).fetch_all(pool).await?;
        let tables: Vec<String> = tables.into_iter().map(|(table,)| table).collect();
        let applied = if Self::has_migrations(&tables) {
            sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations ORDER BY version")
                .fetch_all(pool)
                .await?
        } else {
            Vec::new()
        };
        Ok(Self { tables, applied })
    }

    /// Whether the tables include the migrations table.
    pub(crate) fn has_migrations(tables: &[String]) -> bool {
        tables.iter().any(|table| table == MIGRATIONS_TABLE)
    }

    /// Refuses a database that is neither empty nor this service's: one
    /// holding tables but no migrations table, or whose applied migrations
    /// are not `migrator`'s (another service's database, given to this one by
    /// mistake). Checked before migrating, so a refused database is left as
    /// it was.
    pub(crate) fn check_ours(&self, migrator: &Migrator, database: &str) -> Result<(), OpenError> {
        if self.tables.is_empty() {
            return Ok(());
        }
        let ours = |(version, checksum): &(i64, Vec<u8>)| {
            migrator
                .iter()
                .any(|m| m.version == *version && m.checksum.as_ref() == checksum.as_slice())
        };
        let foreign: Vec<String> = self
            .applied
            .iter()
            .filter(|migration| !ours(migration))
            .map(|(version, _)| version.to_string())
            .collect();
        if Self::has_migrations(&self.tables) && foreign.is_empty() {
            return Ok(());
        }
        let tables: Vec<&str> = self
            .tables
            .iter()
            .map(String::as_str)
            .filter(|table| *table != MIGRATIONS_TABLE)
            .collect();
        let found = if foreign.is_empty() {
            format!("tables this service did not create ({})", tables.join(", "))
        } else {
            format!(
                "tables ({}) made by migrations this service does not have (version {})",
                tables.join(", "),
                foreign.join(", ")
            )
        };
        Err(OpenError::NotOurs {
            database: database.to_owned(),
            found,
        })
    }
}

/// The table in which sqlx records applied migrations.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Pool options shared by every PostgreSQL pool.
fn pool_options(settings: &PoolSettings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
}

/// Begins a transaction whose COMMIT returns only once it is flushed to disk,
/// whatever `synchronous_commit` the server, database or role defaults to:
/// with it off, a crash could roll a counter back under numbers already
/// handed out, or lose an invoice already acknowledged.
///
/// # Errors
/// No connection could be had, or the statements failed.
pub async fn begin_durable(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    // One round trip: the simple-query protocol runs both statements.
    pool.begin_with("BEGIN; SET LOCAL synchronous_commit = on")
        .await
}

/// Whether the pool can hand out a working connection now; bounded by the
/// pool's acquire time-out.
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

/// What a database error means to the layers above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbErrorKind {
    /// A unique constraint rejected the row: by constraint name on PostgreSQL
    /// (23505), by column list (`table.a, table.b`) on SQLite.
    UniqueViolation(Option<String>),
    /// Serialization failure (40001) or deadlock (40P01) on PostgreSQL; the
    /// busy time-out running out (BUSY, LOCKED) on SQLite: retry the transaction.
    Retryable,
    /// A value does not fit its column (22003), e.g. a counter past `i64::MAX`.
    OutOfRange,
    /// The database cannot be reached now: connection loss, pool time-out,
    /// server shutting down or refusing connections. Retry the call later.
    Unavailable,
    /// The database named in the URL does not exist (3D000).
    NoSuchDatabase,
    /// The server refused the user or password (28000, 28P01).
    Authentication,
    /// The role lacks a privilege the statement needs (42501).
    NoPrivilege,
    /// The file is not a SQLite database (NOTADB).
    NotADatabase,
    /// Anything else: a bug or a broken database.
    Other,
}

/// Classifies a database error. Nothing else matches on SQLSTATE codes or
/// SQLite result codes.
#[must_use]
pub fn classify(error: &sqlx::Error) -> DbErrorKind {
    if let sqlx::Error::Database(db) = error
        && let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>()
    {
        return classify_sqlite(sqlite);
    }
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => DbErrorKind::Unavailable,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("23505") => DbErrorKind::UniqueViolation(db.constraint().map(str::to_owned)),
            Some("40001" | "40P01") => DbErrorKind::Retryable,
            Some("22003") => DbErrorKind::OutOfRange,
            Some("3D000") => DbErrorKind::NoSuchDatabase,
            Some("28000" | "28P01") => DbErrorKind::Authentication,
            Some("42501") => DbErrorKind::NoPrivilege,
            // 08: connection exception; 57P01-57P04: admin or crash shutdown,
            // cannot connect now, database dropped; 53300: too many
            // connections; 55000 is what a database that does not accept
            // connections answers at connect.
            Some(code)
                if code.starts_with("08")
                    || matches!(
                        code,
                        "57P01" | "57P02" | "57P03" | "57P04" | "53300" | "55000"
                    ) =>
            {
                DbErrorKind::Unavailable
            }
            _ => DbErrorKind::Other,
        },
        _ => DbErrorKind::Other,
    }
}

/// Classifies a SQLite error by its extended result code.
fn classify_sqlite(error: &sqlx::sqlite::SqliteError) -> DbErrorKind {
    use sqlx::error::DatabaseError;
    let code: i32 = error
        .code()
        .and_then(|code| code.parse().ok())
        .unwrap_or_default();
    match code {
        // SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY. SQLite names
        // the columns, not the constraint: "UNIQUE constraint failed: t.a, t.b".
        2067 | 1555 => DbErrorKind::UniqueViolation(
            error
                .message()
                .split_once(": ")
                .map(|(_, columns)| columns.to_owned()),
        ),
        // SQLITE_CONSTRAINT_DATATYPE: in a STRICT table, an INTEGER sum that
        // overflowed to REAL, e.g. a counter past `i64::MAX`.
        3091 => DbErrorKind::OutOfRange,
        26 => DbErrorKind::NotADatabase,
        // By primary code: BUSY and LOCKED (the busy time-out ran out),
        // READONLY, IOERR, FULL (disk full), CANTOPEN.
        code => match code & 0xff {
            5 | 6 => DbErrorKind::Retryable,
            8 | 10 | 13 | 14 => DbErrorKind::Unavailable,
            _ => DbErrorKind::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_hides_its_password() {
        let url: DatabaseUrl = "postgres://app:s3cret@db:5432/numbers".parse().unwrap();
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(!url.to_string().contains("s3cret"));
        assert!(url.redacted().contains("app:***@db"));
        assert!(url.expose().contains("s3cret"));

        let url: DatabaseUrl = "postgres://app@db/numbers?sslmode=require&password=s3cret"
            .parse()
            .unwrap();
        assert!(!url.to_string().contains("s3cret"), "{url}");
        assert!(url.to_string().contains("sslmode=require"), "{url}");
    }

    #[test]
    fn database_url_rejects_other_schemes() {
        let error = "mysql://root:pw@db/x".parse::<DatabaseUrl>().unwrap_err();
        assert!(!error.contains("pw@"), "{error}");
    }

    #[test]
    fn the_scheme_picks_the_backend() {
        let postgres: DatabaseUrl = "postgresql://db/numbers".parse().unwrap();
        assert_eq!(postgres.backend(), Backend::Postgres);
        let sqlite: DatabaseUrl = "sqlite://data/allocator.sqlite3".parse().unwrap();
        assert_eq!(sqlite.backend(), Backend::Sqlite);
        assert_eq!(sqlite.to_string(), "sqlite://data/allocator.sqlite3");
    }

    #[test]
    fn sqlite_files_keep_their_exact_path() {
        let path = Path::new("/srv/a?b#c%20d/numbers.sqlite3");
        let url = DatabaseUrl::sqlite_file(path).unwrap();
        let options = SqliteConnectOptions::from_str(url.expose()).unwrap();
        assert_eq!(options.get_filename(), path);
        assert_eq!(
            url.expose().parse::<DatabaseUrl>().unwrap().backend(),
            Backend::Sqlite
        );
    }

    #[test]
    fn sqlite_urls_that_would_lose_or_refuse_writes_are_refused() {
        for raw in [
            "sqlite::memory:",
            "sqlite://x.db?mode=memory",
            "sqlite://",
            "sqlite://x.db?mode=ro",
            "sqlite://x.db?vfs=unix-none",
            "sqlite://x.db?immutable=true",
        ] {
            assert!(raw.parse::<DatabaseUrl>().is_err(), "{raw} accepted");
        }
    }

    #[test]
    fn only_an_empty_database_or_this_services_own_is_accepted() {
        static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite/allocator");
        let ours = MIGRATOR.iter().next().unwrap();
        let contents = |tables: &[&str], applied: &[(i64, &[u8])]| Contents {
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
            applied: applied.iter().map(|(v, c)| (*v, c.to_vec())).collect(),
        };
        let accepted = |c: Contents| c.check_ours(&MIGRATOR, "db").is_ok();
        assert!(accepted(contents(&[], &[])));
        assert!(accepted(contents(
            &["_sqlx_migrations", "counters"],
            &[(ours.version, &ours.checksum)]
        )));
        // A newer migration not yet applied is fine: it runs next.
        assert!(accepted(contents(&["_sqlx_migrations"], &[])));
        assert!(!accepted(contents(&["customers"], &[])));
        assert!(!accepted(contents(
            &["_sqlx_migrations", "invoices"],
            &[(ours.version, b"another checksum")]
        )));
        assert!(!accepted(contents(
            &["_sqlx_migrations", "counters"],
            &[(ours.version, &ours.checksum), (9999, b"unknown")]
        )));
    }

    #[test]
    fn pool_errors_are_unavailable() {
        assert_eq!(
            classify(&sqlx::Error::PoolTimedOut),
            DbErrorKind::Unavailable
        );
        assert_eq!(classify(&sqlx::Error::RowNotFound), DbErrorKind::Other);
    }
}
