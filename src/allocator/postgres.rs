//! The counter store on PostgreSQL: a batch without request ids is one
//! statement; with them, a claim and that statement in one transaction. Every
//! counter change commits synchronously.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, migrate::Migrator};

use crate::{
    allocator::{
        batch::{Batch, Claim, Counted, Outcome, Plan, Stamp, Won},
        sql_store::{self, Engine, SqlCounterStore},
        store::{Advance, SeriesRow, StoreError},
    },
    db::begin_durable,
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

/// Claims the batch's request ids: inserts each, or takes over one older than
/// the window. Returns the ids claimed; an id another transaction is claiming
/// now is waited for, and is not claimed if that transaction commits.
#[tracing::instrument(name = "db.request_ids.claim", skip_all, fields(ids = claims.len()), err(level = "debug"))]
async fn claim(
    conn: &mut PgConnection,
    claims: &[Claim<'_>],
    stamp: Stamp,
) -> Result<Won, sqlx::Error> {
    let tenants: Vec<&str> = claims.iter().map(|c| c.tenant).collect();
    let ids: Vec<&str> = claims.iter().map(|c| c.request_id).collect();
    let series: Vec<&str> = claims.iter().map(|c| c.series).collect();
    let counts: Vec<i64> = claims.iter().map(|c| c.count).collect();
    let won: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO request_ids (tenant_id, request_id, series, count, created_at)
         SELECT claim.tenant_id, claim.request_id, claim.series, claim.count, $5
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])
              AS claim (tenant_id, request_id, series, count)
         ON CONFLICT (tenant_id, request_id)
         DO UPDATE SET series = EXCLUDED.series, count = EXCLUDED.count,
                       first_value = NULL, created_at = EXCLUDED.created_at
         WHERE request_ids.created_at < $6
         RETURNING tenant_id, request_id",
    )
    .bind(&tenants)
    .bind(&ids)
    .bind(&series)
    .bind(&counts)
    .bind(stamp.now)
    .bind(stamp.forget_before)
    .fetch_all(conn)
    .await?;
    Ok(won.into_iter().collect())
}

/// Advances each counter by its total, creating absent ones (one upsert, so
/// concurrent first calls for a new series cannot both start at 1), records
/// each allocating call's range, and stores the first number of each claimed
/// request id: one statement.
///
/// Run alone it is its own transaction (one round trip), and sets
/// `synchronous_commit` for it, so its commit returns only once flushed to
/// disk whatever the server, database, role or connection defaults to.
#[tracing::instrument(name = "db.counters.increment", skip_all, fields(series = plan.increments.len()), err(level = "debug"))]
async fn increment<'e>(
    executor: impl PgExecutor<'e>,
    plan: &Plan<'_>,
    format: &str,
    now: DateTime<Utc>,
) -> Result<Vec<IncrementedRow>, sqlx::Error> {
    let totals = &plan.increments;
    let records = &plan.records;
    sqlx::query_as(
        "WITH durable AS (SELECT set_config('synchronous_commit', 'on', true)),
         bumped AS (
             INSERT INTO counters (tenant_id, series, last_value, format)
             SELECT total.tenant_id, total.series, total.count, $4
             FROM durable, UNNEST($1::text[], $2::text[], $3::bigint[])
                  AS total (tenant_id, series, count)
             ON CONFLICT (tenant_id, series)
             DO UPDATE SET last_value = counters.last_value + EXCLUDED.last_value
             RETURNING tenant_id, series, last_value, format),
         ranges AS (
             SELECT call.tenant_id, call.series, call.count, call.request_id,
                    bumped.last_value - call.tail - call.count + 1 AS first_value
             FROM UNNEST($5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::text[])
                  AS call (tenant_id, series, count, tail, request_id)
             JOIN bumped ON bumped.tenant_id = call.tenant_id AND bumped.series = call.series),
         recorded AS (
             INSERT INTO allocations (tenant_id, series, first_value, count, kind, request_id, created_at)
             SELECT tenant_id, series, first_value, count, 'allocate', request_id, $10 FROM ranges),
         keyed AS (
             UPDATE request_ids SET first_value = ranges.first_value FROM ranges
             WHERE request_ids.tenant_id = ranges.tenant_id
               AND request_ids.request_id = ranges.request_id)
         SELECT tenant_id, series, last_value, format,
                current_setting('synchronous_commit') AS synchronous_commit
         FROM bumped",
    )
    .bind(totals.iter().map(|t| t.tenant).collect::<Vec<_>>())
    .bind(totals.iter().map(|t| t.series).collect::<Vec<_>>())
    .bind(totals.iter().map(|t| t.total).collect::<Vec<_>>())
    .bind(format)
    .bind(records.iter().map(|r| r.tenant).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.series).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.count).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.tail).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.request_id).collect::<Vec<_>>())
    .bind(now)
    .fetch_all(executor)
    .await
}

/// The counters an increment returned, once its commit is known flushed.
fn flushed(rows: Vec<IncrementedRow>) -> Result<Vec<Counted>, StoreError> {
    // Committed. Numbers whose commit was not flushed are withheld: a gap is
    // safe, an acknowledged number a crash could hand out again is not.
    if let Some(row) = rows.iter().find(|row| row.synchronous_commit != "on") {
        return Err(StoreError::Internal(
            format!(
                "committed with synchronous_commit = {}; numbers withheld",
                row.synchronous_commit
            )
            .into(),
        ));
    }
    Ok(rows
        .into_iter()
        .map(|row| Counted {
            tenant_id: row.tenant_id,
            series: row.series,
            last_value: row.last_value,
            format: row.format,
        })
        .collect())
}

#[async_trait]
impl Engine for PgEngine {
    type Db = Postgres;

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn allocate(
        &self,
        batch: &Batch<'_>,
        format: &str,
        stamp: Stamp,
    ) -> Result<Vec<Outcome>, StoreError> {
        // Without request ids the batch is one statement, its own transaction.
        if batch.claims().is_empty() {
            let plan = batch.plan(&Won::default());
            let rows = increment(&self.pool, &plan, format, stamp.now).await?;
            return batch.outcomes(&plan, flushed(rows)?, &HashMap::new());
        }
        let mut tx = begin_durable(&self.pool).await?;
        let won = claim(&mut tx, batch.claims(), stamp).await?;
        let held = sql_store::read_held::<Postgres>(&mut tx, batch, &won).await?;
        let plan = batch.plan(&won);
        let rows = if plan.is_empty() {
            Vec::new()
        } else {
            increment(&mut *tx, &plan, format, stamp.now).await?
        };
        tx.commit().await?;
        batch.outcomes(&plan, flushed(rows)?, &held)
    }

    async fn advance(&self, advance: Advance<'_>, format: &str) -> Result<SeriesRow, StoreError> {
        let mut tx = begin_durable(&self.pool).await?;
        let row = sql_store::advance::<Postgres>(&mut tx, advance, format).await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn forget(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        // Not made durable: an id a crash brings back is still past the window.
        let done = sql_store::delete_request_ids(&self.pool, before, limit).await?;
        Ok(done.rows_affected())
    }

    async fn is_ready(&self) -> bool {
        crate::db::ping(&self.pool).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
