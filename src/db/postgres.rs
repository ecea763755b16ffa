//! Opening PostgreSQL: the start-up path (each cause of failure named), the
//! pool, and the durable transaction every write runs in.

use std::str::FromStr;

use sqlx::{
    Connection, PgConnection, PgPool, Postgres, Transaction,
    migrate::{MigrateDatabase, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{
    Contents, DatabaseUrl, DbErrorKind, NotReady, OpenError, PoolSettings, classify, open_error,
};

/// Opens a PostgreSQL pool and checks one connection. A database that does
/// not exist yet is created first, so a first run needs no setup step.
///
/// Every connection asks for synchronous commit at start-up, overriding the
/// server's, database's and role's defaults; [`begin_durable`] and the allocation statement ask again per
/// transaction, for poolers that drop start-up options. Every connection
/// also plans each prepared statement once (`plan_cache_mode =
/// force_generic_plan`): the allocation statement is the same text every
/// time, and planning it anew for each batch cost as much CPU as running it.
///
/// The server also bounds each of the pool's statements and lock waits by
/// [`PoolSettings::operation_timeout`], and ends a session left idle inside
/// a transaction for twice it: a call cut off by the service does not leave
/// its statement waiting in the server, holding a connection and its locks.
/// Migrations run on a connection of their own, without these bounds.
///
/// # Errors
/// The URL does not parse, or the database cannot be reached or created.
pub async fn connect_postgres(
    url: &DatabaseUrl,
    settings: &PoolSettings,
) -> Result<PgPool, sqlx::Error> {
    let bound = settings.operation_timeout.as_millis().to_string();
    let idle = (2 * settings.operation_timeout.as_millis()).to_string();
    let options = connect_options(url)?.options([
        ("statement_timeout", bound.as_str()),
        ("lock_timeout", bound.as_str()),
        ("idle_in_transaction_session_timeout", idle.as_str()),
    ]);
    match pool_options(settings).connect_with(options.clone()).await {
        Err(error)
            if settings.create_missing && classify(&error) == DbErrorKind::NoSuchDatabase =>
        {
            create_database(url).await?;
            pool_options(settings).connect_with(options).await
        }
        result => result,
    }
}

/// Creates the database named in `url`. One that another process created
/// meanwhile (replicas started at once) is as good as created here.
async fn create_database(url: &DatabaseUrl) -> Result<(), sqlx::Error> {
    match Postgres::create_database(url.expose()).await {
        Ok(()) => {
            tracing::warn!(database = %url, "created a new, empty database");
            Ok(())
        }
        Err(error) if classify(&error) == DbErrorKind::DatabaseExists => Ok(()),
        Err(error) => Err(error),
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
pub(crate) async fn open_postgres(
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
            DbErrorKind::NoSuchDatabase if settings.create_missing => {} // created below
            DbErrorKind::NoSuchDatabase => return Err(OpenError::NotCreated { database }),
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
    // Checked and migrated on a connection of their own: a migration may
    // take longer than any serving statement, or wait for another process's.
    let options =
        connect_options(url).map_err(|error| OpenError::Connect(database.clone(), error))?;
    let mut connection = PgConnection::connect_with(&options)
        .await
        .map_err(|error| open_error(&database, error))?;
    Contents::read::<Postgres>(
        &mut connection,
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() ORDER BY table_name",
    )
    .await
    .map_err(|error| OpenError::Connect(database.clone(), error))?
    .check_ours(migrator, &database)?;
    migrator
        .run(&mut connection)
        .await
        .map_err(|error| OpenError::Migrate(database, error))?;
    let _ = connection.close().await;
    super::watch_pool(&pool);
    Ok(pool)
}

/// The options of every connection: the URL's, with synchronous commit and
/// generic plans (see [`connect_postgres`]).
fn connect_options(url: &DatabaseUrl) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url.expose())?.options([
        ("synchronous_commit", "on"),
        ("plan_cache_mode", "force_generic_plan"),
    ]))
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
    pool.begin_with(BEGIN_DURABLE).await
}

/// [`begin_durable`] on a connection already taken.
///
/// # Errors
/// The statements failed.
pub async fn begin_durable_on(
    conn: &mut PgConnection,
) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
    conn.begin_with(BEGIN_DURABLE).await
}

/// One round trip: the simple-query protocol runs both statements.
const BEGIN_DURABLE: &str = "BEGIN; SET LOCAL synchronous_commit = on";

/// [`begin_durable_on`] for a transaction whose statements each read rows
/// by key, with sequential scans off in it. A connection plans a statement
/// once and keeps that plan until the next `ANALYZE` of its tables; a plan
/// made while a table held a few rows, which a scan reads faster than an
/// index, would read the whole table for each key as it grows. With scans
/// off, a lookup by key is planned on its index whatever the table's
/// statistics say. Only statements written as one lookup per key belong in
/// it: one that joins a list of keys with a table could still be planned as
/// a read of that table's whole index.
///
/// # Errors
/// The statements failed.
pub async fn begin_durable_by_key_on(
    conn: &mut PgConnection,
) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
    conn.begin_with(BEGIN_DURABLE_BY_KEY).await
}

/// One round trip, as [`BEGIN_DURABLE`].
const BEGIN_DURABLE_BY_KEY: &str =
    "BEGIN; SET LOCAL synchronous_commit = on; SET LOCAL enable_seqscan = off";

/// `Ok` if the pool can hand out a working connection now, to a database
/// that takes writes and that `migrator`'s migrations have made; bounded by
/// the pool's acquire time-out.
pub(crate) async fn ping(pool: &PgPool, migrator: &Migrator) -> Result<(), NotReady> {
    // Answering is not enough: a standby (recovering, or not yet promoted
    // during a failover) or a read-only database refuses every write, and
    // one made again empty under the service (dropped and created, or
    // restored from the wrong dump) answers every call with a fault. The
    // service's last migration must be the database's last: without the
    // table the statement fails, and so does the check. A later one is a
    // newer release's, whose schema this process was not written for (its
    // writes could read otherwise there): it is not ready, and says so.
    let found = sqlx::query_as::<_, (bool, Option<i64>)>(
        "SELECT NOT pg_is_in_recovery()
                AND NOT current_setting('transaction_read_only')::boolean,
                (SELECT max(version) FROM _sqlx_migrations WHERE success)",
    )
    .fetch_one(pool)
    .await;
    let (writable, last) = match found {
        Ok(found) => found,
        // No migrations table: none of the service's migrations.
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P01") => {
            (true, None)
        }
        Err(error) => return Err(NotReady::Failed(error)),
    };
    if !writable {
        return Err(NotReady::ReadOnly);
    }
    super::schema_is_ours(last, migrator)
}
