//! Databases both services use: URLs, opening and checking PostgreSQL or a
//! SQLite file at start-up, and the one place database errors are classified.

use std::{future::Future, time::Duration};

mod classify;
mod open;
mod postgres;
mod sqlite;
mod url;

pub use classify::{DbErrorKind, classify};
pub use open::OpenError;
pub(crate) use open::{Contents, open_error};
pub use postgres::{begin_durable, connect_postgres};
pub(crate) use postgres::{open_postgres, ping};
pub(crate) use sqlite::SqliteDatabase;
pub use sqlite::open_sqlite;
pub use url::{Backend, DatabaseUrl};

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
