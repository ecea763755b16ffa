//! Databases both services use: URLs, opening and checking PostgreSQL or a
//! SQLite file at start-up, and the one place database errors are classified.

use std::{future::Future, time::Duration};

mod classify;
mod kept;
mod open;
mod postgres;
mod sqlite;
mod url;

pub use classify::{DbErrorKind, classify};
pub use kept::{KEEP_FOR, KEEP_IDLE, KEEP_MIN_POOL, KeptConnection, Taken};
pub use open::OpenError;
pub(crate) use open::{Contents, open_error};
pub use postgres::{begin_durable, begin_durable_by_key_on, begin_durable_on, connect_postgres};
pub(crate) use postgres::{open_postgres, ping};
pub(crate) use sqlite::SqliteDatabase;
pub use sqlite::open_sqlite;
pub use url::{Backend, DatabaseUrl, without_secrets};

/// Pool limits. The acquire time-out is what makes calls fail fast while the
/// database is unreachable, so keep it well under the callers' deadlines.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long a call waits for a connection before answering UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// Longest one store operation (a transaction, a read) may take before
    /// the call answers UNAVAILABLE: bounds calls when the database stops
    /// answering without closing its connections.
    pub operation_timeout: Duration,
    /// Whether a missing database (a PostgreSQL database, a SQLite file) is
    /// created at start-up. Without it, a mistyped URL or data directory
    /// stops start-up instead of starting an empty counter.
    pub create_missing: bool,
}

/// Runs one store operation, cut off after `limit`: the error `unavailable`
/// makes of a cause saying so. See [`PoolSettings::operation_timeout`].
///
/// # Errors
/// The operation's own, or the cut-off.
pub(crate) async fn bounded<T, E>(
    limit: Duration,
    operation: impl Future<Output = Result<T, E>>,
    unavailable: impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> E,
) -> Result<T, E> {
    let started = std::time::Instant::now();
    let _in_flight = InFlight::new();
    let result = tokio::time::timeout(limit, operation).await;
    let outcome = match &result {
        Ok(Ok(_)) => "ok",
        Ok(Err(_)) => "error",
        Err(_) => "timeout",
    };
    metrics::histogram!("numbering_db_operation_seconds", "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    result.unwrap_or_else(|_| {
        Err(unavailable(
            format!(
                "the database did not answer within {}",
                humantime::format_duration(limit)
            )
            .into(),
        ))
    })
}

/// Counts a store operation in `numbering_db_operations_in_flight` while it
/// lives, however it ends.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn new() -> Self {
        let gauge = metrics::gauge!("numbering_db_operations_in_flight");
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Reports `pool`'s connections every second until it is closed:
/// `numbering_db_connections` by state (`in_use`, `idle`) and
/// `numbering_db_connections_max`. Operations in flight beyond the
/// connections in use are waiting for one.
pub(crate) fn watch_pool<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) {
    let pool = pool.clone();
    tokio::spawn(async move {
        let closed = pool.close_event();
        tokio::pin!(closed);
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = &mut closed => return,
                _ = ticks.tick() => {}
            }
            let (size, idle) = (pool.size(), pool.num_idle());
            let idle = u32::try_from(idle).unwrap_or(u32::MAX).min(size);
            metrics::gauge!("numbering_db_connections", "state" => "in_use")
                .set(f64::from(size - idle));
            metrics::gauge!("numbering_db_connections", "state" => "idle").set(f64::from(idle));
            metrics::gauge!("numbering_db_connections_max")
                .set(f64::from(pool.options().get_max_connections()));
        }
    });
}

/// Why a service's store is not ready for calls, as its readiness log says.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// The check failed: no connection within the acquire time-out, or the
    /// database refused it or the check's statement.
    #[error("the readiness check failed")]
    Failed(#[source] sqlx::Error),
    /// It answers but takes no writes: a standby, or a database set read-only.
    #[error("the database takes no writes (a standby, or set read-only)")]
    ReadOnly,
    /// Its last migration is not the service's own last.
    #[error("{}", schema_said(*.found, *.ours))]
    Schema {
        /// The database's last migration, if it has any.
        found: Option<i64>,
        /// This release's last migration.
        ours: i64,
    },
    /// The SQLite file at the path is not the one the service opened.
    #[error("the database file was deleted, moved or replaced while open")]
    FileReplaced,
    /// The check did not finish in time: a database that stopped answering.
    #[error("the check did not finish within {0:?}")]
    TimedOut(Duration),
}

impl NotReady {
    /// The kind of cause, as a log line tells a change of it: a check that
    /// failed and one that ran out of time are one kind (no answer), so
    /// that a database alternating between the two is not logged at every
    /// check.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Failed(_) | Self::TimedOut(_) => "no answer",
            Self::ReadOnly => "read-only",
            Self::Schema { .. } => "schema",
            Self::FileReplaced => "file replaced",
        }
    }
}

/// What a [`NotReady::Schema`] says of the database's migrations.
fn schema_said(found: Option<i64>, ours: i64) -> String {
    match found {
        None => "the database holds none of the service's migrations (made again empty, or \
                 not the service's)"
            .to_owned(),
        Some(found) if found > ours => format!(
            "a newer release has migrated the database (migration {found}; this release's \
             last is {ours}): stop this process (README, Upgrades)"
        ),
        Some(found) => {
            format!("the database's last migration is {found}, not this release's {ours}")
        }
    }
}

/// Whether `last`, the database's last migration applied, is `migrator`'s
/// own last: the schema the service was written for. None (a database made
/// again empty, or not by this service) is not; nor is a later one, a newer
/// release's, whose schema the service's writes could read otherwise in;
/// that one is logged, once per process, as an error for the operator.
pub(crate) fn schema_is_ours(
    last: Option<i64>,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), NotReady> {
    static NEWER_SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let latest = migrator
        .iter()
        .map(|migration| migration.version)
        .max()
        .unwrap_or(0);
    if last == Some(latest) {
        return Ok(());
    }
    if let Some(last) = last
        && last > latest
        && !NEWER_SAID.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::error!(
            database = last,
            this_release = latest,
            "a newer release has migrated the database: this process is not ready \
             again; stop it (README, Upgrades)"
        );
    }
    Err(NotReady::Schema {
        found: last,
        ours: latest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_answer_is_one_kind_of_cause_and_each_other_its_own() {
        let causes = [
            NotReady::Failed(sqlx::Error::PoolTimedOut),
            NotReady::TimedOut(Duration::from_secs(4)),
            NotReady::ReadOnly,
            NotReady::Schema {
                found: None,
                ours: 12,
            },
            NotReady::FileReplaced,
        ];
        let kinds: Vec<&str> = causes.iter().map(NotReady::kind).collect();
        assert_eq!(kinds[0], kinds[1]);
        let mut distinct = kinds[1..].to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{kinds:?}");
    }
}
