//! The counter store on PostgreSQL: a batch is one statement, its own
//! transaction, which also stores the batch's request ids and fails whole if
//! one is in use; only then are the ids claimed first, in a transaction with
//! that statement. Every counter change commits synchronously.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, migrate::Migrator};

use crate::{
    allocator::{
        batch::{Batch, Claim, Counted, Plan, Won},
        sql_store::{self, Engine, SqlCounterStore},
        store::{Advance, Outcome, SeriesRow, Stamp, StoreError},
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

/// Locks the existing counters of `series`, in their order.
#[tracing::instrument(name = "db.counters.lock", skip_all, err(level = "debug"))]
async fn lock_counters(
    conn: &mut PgConnection,
    series: &[(&str, &str)],
) -> Result<(), sqlx::Error> {
    let tenants: Vec<&str> = series.iter().map(|s| s.0).collect();
    let names: Vec<&str> = series.iter().map(|s| s.1).collect();
    sqlx::query(
        "SELECT 1 FROM counters
         WHERE (tenant_id, series) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))
         ORDER BY tenant_id, series FOR UPDATE",
    )
    .bind(&tenants)
    .bind(&names)
    .execute(conn)
    .await?;
    Ok(())
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
/// the ranges, and stores each request id with its first number: one
/// statement. A request id is stored if it is new, past the window, or
/// claimed by this transaction; if one is held by another call instead, the
/// statement fails with [`ID_IN_USE`] and changes nothing.
///
/// Run alone it is its own transaction (one round trip), and sets
/// `synchronous_commit` for it, so its commit returns only once flushed to
/// disk whatever the server, database, role or connection defaults to.
#[tracing::instrument(name = "db.counters.increment", skip_all, fields(series = plan.increments.len()), err(level = "debug"))]
async fn increment<'e>(
    executor: impl PgExecutor<'e>,
    plan: &Plan<'_>,
    format: &str,
    stamp: Stamp,
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
             INSERT INTO request_ids (tenant_id, request_id, series, count, first_value, created_at)
             SELECT tenant_id, request_id, series, count, first_value, $10
             FROM ranges WHERE request_id IS NOT NULL
             ON CONFLICT (tenant_id, request_id)
             DO UPDATE SET series = EXCLUDED.series, count = EXCLUDED.count,
                           first_value = EXCLUDED.first_value, created_at = EXCLUDED.created_at
             WHERE request_ids.first_value IS NULL OR request_ids.created_at < $11
             RETURNING 1)
         SELECT tenant_id, series, last_value, format,
                current_setting('synchronous_commit') AS synchronous_commit,
                -- Read by nobody: evaluated, it fails the statement if an id
                -- of the plan was not stored.
                CASE WHEN (SELECT count(*) FROM keyed) = $12 THEN 0
                     ELSE request_id_in_use() END AS ids_checked
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
    .bind(stamp.now)
    .bind(stamp.forget_before)
    .bind(i64::try_from(plan.ids_recorded()).unwrap_or(i64::MAX))
    .fetch_all(executor)
    .await
}

/// The SQLSTATE of `request_id_in_use()` (see the migrations).
const ID_IN_USE: &str = "NB001";

/// Whether the increment failed because one of its request ids is held by
/// another call.
fn is_id_in_use(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(sqlx::error::DatabaseError::code)
        .is_some_and(|code| code == ID_IN_USE)
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
            let rows = increment(&self.pool, &plan, format, stamp).await?;
            return batch.outcomes(&plan, flushed(rows)?, &HashMap::new(), stamp.now);
        }
        // Most ids are new: first try as if every one were, in one
        // statement, which fails whole if one is not.
        let plan = batch.plan(&batch.all_won());
        match increment(&self.pool, &plan, format, stamp).await {
            Ok(rows) => return batch.outcomes(&plan, flushed(rows)?, &HashMap::new(), stamp.now),
            Err(error) if is_id_in_use(&error) => {}
            Err(error) => return Err(error.into()),
        }

        // Some id is in use: claim the ids first, then allocate for the
        // calls whose ids were won, and repeat the others' first answers.
        // The existing counters are locked before the ids, in the order the
        // statement above locks them, so two such transactions cannot
        // deadlock on them.
        let mut tx = begin_durable(&self.pool).await?;
        lock_counters(&mut tx, &batch.series()).await?;
        let won = claim(&mut tx, batch.claims(), stamp).await?;
        let held = sql_store::read_held::<Postgres>(&mut tx, batch, &won).await?;
        let plan = batch.plan(&won);
        // Every id of this plan was claimed here: ID_IN_USE now is a fault.
        let rows = if plan.is_empty() {
            Vec::new()
        } else {
            increment(&mut *tx, &plan, format, stamp).await?
        };
        tx.commit().await?;
        batch.outcomes(&plan, flushed(rows)?, &held, stamp.now)
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
