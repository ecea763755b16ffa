//! The counter store on SQLite: each counter change is one statement in an
//! immediate transaction, committed with `synchronous = FULL` (see
//! [`crate::db::open_sqlite`]).

use async_trait::async_trait;
use sqlx::{Sqlite, SqliteConnection, SqlitePool, migrate::Migrator, types::Json};

use crate::{
    allocator::{
        series::SeriesName,
        sql_store::{self, Engine, SqlCounterStore},
        store::{Advanced, Increment, SeriesRow, StoreError, in_input_order},
    },
    db::SqliteDatabase,
    tenant::TenantId,
};

/// The allocator's SQLite migrations, used by start-up and by tests.
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite/allocator");

/// The counter store on a SQLite database file.
pub type SqliteCounterStore = SqlCounterStore<SqliteEngine>;

impl SqliteCounterStore {
    /// A store on an already-migrated database.
    #[must_use]
    pub fn new(db: SqliteDatabase) -> Self {
        SqlCounterStore(SqliteEngine { db })
    }
}

/// SQLite as the counter statements see it.
#[derive(Debug, Clone)]
pub struct SqliteEngine {
    db: SqliteDatabase,
}

/// Adds each count to its counter, creating absent ones: one upsert over a
/// JSON array of `[tenant, series, count]`. The keys must be distinct.
#[tracing::instrument(name = "db.counters.increment", skip_all, fields(series = increments.len()), err(level = "debug"))]
async fn increment(
    conn: &mut SqliteConnection,
    increments: &[(&str, &str, i64)],
    format: &str,
) -> Result<Vec<SeriesRow>, sqlx::Error> {
    // `WHERE true` tells SQLite's parser the ON CONFLICT is the upsert's.
    sqlx::query_as(
        "INSERT INTO counters (tenant_id, series, last_value, format)
         SELECT value ->> 0, value ->> 1, value ->> 2, ?2 FROM json_each(?1) WHERE true
         ON CONFLICT (tenant_id, series)
         DO UPDATE SET last_value = counters.last_value + excluded.last_value
         RETURNING tenant_id, series, last_value, format",
    )
    .bind(Json(increments))
    .bind(format)
    .fetch_all(conn)
    .await
}

#[async_trait]
impl Engine for SqliteEngine {
    type Db = Sqlite;

    fn pool(&self) -> &SqlitePool {
        self.db.pool()
    }

    async fn increment(
        &self,
        increments: &[Increment<'_>],
        format: &str,
    ) -> Result<Vec<Advanced>, StoreError> {
        let keyed: Vec<(&str, &str, i64)> = increments
            .iter()
            .map(|i| (i.tenant.as_str(), i.series.as_str(), i.count))
            .collect();
        let mut write = self.db.begin_write().await?;
        let rows = increment(write.conn(), &keyed, format).await?;
        // Withholds the numbers if the file is no longer at its path: the
        // next start would hand them out again.
        write.commit().await?;
        in_input_order(increments, rows)
    }

    async fn raise(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        at_least: i64,
        format: &str,
    ) -> Result<SeriesRow, StoreError> {
        let mut write = self.db.begin_write().await?;
        let row = sql_store::raise::<Sqlite>(
            write.conn(),
            tenant.as_str(),
            series.as_str(),
            at_least,
            format,
        )
        .await?;
        write.commit().await?;
        Ok(row)
    }

    async fn is_ready(&self) -> bool {
        self.db.is_ready().await
    }

    async fn close(&self) {
        self.db.close().await;
    }
}
