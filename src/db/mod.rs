//! Databases both services use: URLs, opening and checking PostgreSQL or a
//! SQLite file at start-up, and the one place database errors are classified.

use std::time::Duration;

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
}
