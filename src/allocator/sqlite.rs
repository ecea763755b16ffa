//! The counter store on SQLite: each counter change is one statement in an
//! immediate transaction, committed with `synchronous = FULL` (see
//! [`crate::db::open_sqlite`]).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{SqliteConnection, SqlitePool, migrate::Migrator, types::Json};
use tokio::sync::Mutex;

use crate::{
    allocator::{
        domain::{Series, SeriesName},
        store::{CounterStore, SeriesRow, StoreError, in_input_order},
    },
    db::SqliteFile,
    server::Readiness,
    tenant::TenantId,
};

/// The allocator's SQLite migrations, used by start-up and by tests.
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite/allocator");

/// [`CounterStore`] on a SQLite pool.
#[derive(Debug, Clone)]
pub struct SqliteCounterStore {
    pool: SqlitePool,
    file: SqliteFile,
    /// Writers of this process take turns here, so only one at a time waits
    /// on SQLite's file lock, which polls, against other processes.
    writer: Arc<Mutex<()>>,
}

impl SqliteCounterStore {
    /// A store on an already-migrated pool of `file`.
    #[must_use]
    pub fn new(pool: SqlitePool, file: SqliteFile) -> Self {
        Self {
            pool,
            file,
            writer: Arc::default(),
        }
    }
}

/// Adds each count to its counter, creating absent ones: one upsert over a
/// JSON array of `[tenant, series, count]`. The keys must be distinct.
#[tracing::instrument(name = "db.counters.increment", skip_all, fields(series = increments.len()), err)]
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

/// Raises the counter to `at_least`, creating it there if absent; never lowers it.
#[tracing::instrument(name = "db.counters.raise", skip_all, err)]
async fn raise(
    conn: &mut SqliteConnection,
    tenant: &str,
    series: &str,
    at_least: i64,
    format: &str,
) -> Result<SeriesRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO counters (tenant_id, series, last_value, format) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (tenant_id, series)
         DO UPDATE SET last_value = max(counters.last_value, excluded.last_value)
         RETURNING tenant_id, series, last_value, format",
    )
    .bind(tenant)
    .bind(series)
    .bind(at_least)
    .bind(format)
    .fetch_one(conn)
    .await
}

#[tracing::instrument(name = "db.counters.select_one", skip_all, err)]
async fn select_one(
    pool: &SqlitePool,
    tenant: &str,
    series: &str,
) -> Result<Option<SeriesRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, series, last_value, format FROM counters
         WHERE tenant_id = ?1 AND series = ?2",
    )
    .bind(tenant)
    .bind(series)
    .fetch_optional(pool)
    .await
}

#[tracing::instrument(name = "db.counters.select_page", skip_all, err)]
async fn select_page(
    pool: &SqlitePool,
    tenant: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<SeriesRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, series, last_value, format FROM counters
         WHERE tenant_id = ?1 AND series > ?2
         ORDER BY series LIMIT ?3",
    )
    .bind(tenant)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[async_trait]
impl CounterStore for SqliteCounterStore {
    async fn allocate_many(
        &self,
        increments: &[(&TenantId, &SeriesName, i64)],
        format: &str,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let keyed: Vec<(&str, &str, i64)> = increments
            .iter()
            .map(|(tenant, series, count)| (tenant.as_str(), series.as_str(), *count))
            .collect();
        // IMMEDIATE takes the write lock up front, waiting out other writers
        // for the busy time-out, rather than failing when a read upgrades.
        let _turn = self.writer.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = increment(&mut tx, &keyed, format).await?;
        tx.commit().await?;
        // Committed, but to a file that is no longer at its path: the next
        // start would hand these numbers out again. Withhold them.
        self.file.check_in_place()?;
        in_input_order(
            increments,
            rows.into_iter()
                .map(|row| (row.tenant_id, row.series, row.last_value, row.format)),
        )
    }

    async fn advance(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        at_least: i64,
        format: &str,
    ) -> Result<Series, StoreError> {
        let _turn = self.writer.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = raise(&mut tx, tenant.as_str(), series.as_str(), at_least, format).await?;
        tx.commit().await?;
        self.file.check_in_place()?;
        Ok(row.into())
    }

    async fn get(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
    ) -> Result<Option<Series>, StoreError> {
        Ok(select_one(&self.pool, tenant.as_str(), series.as_str())
            .await?
            .map(Into::into))
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Series>, StoreError> {
        let rows = select_page(
            &self.pool,
            tenant.as_str(),
            after.unwrap_or(""),
            i64::from(limit),
        )
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Readiness for SqliteCounterStore {
    async fn is_ready(&self) -> bool {
        crate::db::ping_sqlite(&self.pool, &self.file).await
    }
}
