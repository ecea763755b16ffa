//! The counter store on PostgreSQL: one statement per operation, each counter
//! change in a transaction that commits synchronously.

use async_trait::async_trait;
use sqlx::{PgPool, Postgres, migrate::Migrator};

use crate::{
    allocator::{
        series::SeriesName,
        sql_store::{self, Engine, SqlCounterStore},
        store::{Advanced, Increment, SeriesRow, StoreError, in_input_order},
    },
    db::begin_durable,
    tenant::TenantId,
};

/// The allocator's PostgreSQL migrations, used by start-up and by tests.
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres/allocator");

/// The counter store on a PostgreSQL pool.
pub type PgCounterStore = SqlCounterStore<PgEngine>;

impl PgCounterStore {
    /// A store on an already-migrated pool.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        SqlCounterStore(PgEngine { pool })
    }
}

/// PostgreSQL as the counter statements see it.
#[derive(Debug, Clone)]
pub struct PgEngine {
    pool: PgPool,
}

/// A counter as the increment statement returns it.
#[derive(sqlx::FromRow)]
struct IncrementedRow {
    tenant_id: String,
    series: String,
    last_value: i64,
    format: String,
    /// The setting the statement's commit ran under.
    synchronous_commit: String,
}

/// Adds each count to its counter, creating absent ones: one upsert, so
/// concurrent first calls for a new series cannot both start at 1. The keys
/// must be distinct: one statement cannot update a row twice.
///
/// The statement is its own transaction (one round trip) and sets
/// `synchronous_commit` for it, so its commit returns only once flushed to
/// disk whatever the server, database, role or connection defaults to.
#[tracing::instrument(name = "db.counters.increment", skip_all, fields(series = tenants.len()), err(level = "debug"))]
async fn increment(
    pool: &PgPool,
    tenants: &[&str],
    series: &[&str],
    counts: &[i64],
    format: &str,
) -> Result<Vec<IncrementedRow>, sqlx::Error> {
    sqlx::query_as(
        "WITH durable AS (SELECT set_config('synchronous_commit', 'on', true))
         INSERT INTO counters (tenant_id, series, last_value, format)
         SELECT batch.tenant_id, batch.series, batch.count, $4
         FROM durable, UNNEST($1::text[], $2::text[], $3::bigint[]) AS batch (tenant_id, series, count)
         ON CONFLICT (tenant_id, series)
         DO UPDATE SET last_value = counters.last_value + EXCLUDED.last_value
         RETURNING tenant_id, series, last_value, format,
                   current_setting('synchronous_commit') AS synchronous_commit",
    )
    .bind(tenants)
    .bind(series)
    .bind(counts)
    .bind(format)
    .fetch_all(pool)
    .await
}

#[async_trait]
impl Engine for PgEngine {
    type Db = Postgres;

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn increment(
        &self,
        increments: &[Increment<'_>],
        format: &str,
    ) -> Result<Vec<Advanced>, StoreError> {
        let tenants: Vec<&str> = increments.iter().map(|i| i.tenant.as_str()).collect();
        let series: Vec<&str> = increments.iter().map(|i| i.series.as_str()).collect();
        let counts: Vec<i64> = increments.iter().map(|i| i.count).collect();
        let rows = increment(&self.pool, &tenants, &series, &counts, format).await?;
        // Committed. Numbers whose commit was not flushed are withheld: a gap
        // is safe, an acknowledged number a crash could hand out again is not.
        if let Some(row) = rows.iter().find(|row| row.synchronous_commit != "on") {
            return Err(StoreError::Internal(
                format!(
                    "committed with synchronous_commit = {}; numbers withheld",
                    row.synchronous_commit
                )
                .into(),
            ));
        }

        in_input_order(
            increments,
            rows.into_iter().map(|row| SeriesRow {
                tenant_id: row.tenant_id,
                series: row.series,
                last_value: row.last_value,
                format: row.format,
            }),
        )
    }

    async fn raise(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        at_least: i64,
        format: &str,
    ) -> Result<SeriesRow, StoreError> {
        let mut tx = begin_durable(&self.pool).await?;
        let row = sql_store::raise::<Postgres>(
            &mut tx,
            tenant.as_str(),
            series.as_str(),
            at_least,
            format,
        )
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn is_ready(&self) -> bool {
        crate::db::ping(&self.pool).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
