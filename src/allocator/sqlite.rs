//! The counter store on SQLite: each batch (increment, ledger rows, request
//! ids) is one immediate transaction, committed with `synchronous = FULL` (see
//! [`crate::db::open_sqlite`]); if one of its ids is in use, it rolls back and
//! runs again with the ids claimed first.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, migrate::Migrator, types::Json};

use crate::{
    allocator::{
        batch::{Batch, Claim, Counted, Plan, Total, Won},
        sql_store::{self, Engine, SqlCounterStore},
        store::{Advance, Outcome, SeriesRow, Stamp, StoreError},
    },
    db::SqliteDatabase,
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

/// Claims the batch's request ids: inserts each, or takes over one older than
/// the window. Returns the ids claimed.
#[tracing::instrument(name = "db.request_ids.claim", skip_all, fields(ids = claims.len()), err(level = "debug"))]
async fn claim(
    conn: &mut SqliteConnection,
    claims: &[Claim<'_>],
    stamp: Stamp,
) -> Result<Won, sqlx::Error> {
    let claims: Vec<(&str, &str, &str, i64)> = claims
        .iter()
        .map(|c| (c.tenant, c.request_id, c.series, c.count))
        .collect();
    // `WHERE true` tells SQLite's parser the ON CONFLICT is the upsert's.
    let won: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO request_ids (tenant_id, request_id, series, count, created_at)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, ?2 FROM json_each(?1) WHERE true
         ON CONFLICT (tenant_id, request_id)
         DO UPDATE SET series = excluded.series, count = excluded.count,
                       first_value = NULL, created_at = excluded.created_at
         WHERE request_ids.created_at < ?3
         RETURNING tenant_id, request_id",
    )
    .bind(Json(claims))
    .bind(stamp.now)
    .bind(stamp.forget_before)
    .fetch_all(conn)
    .await?;
    Ok(won.into_iter().collect())
}

/// Adds each total to its counter, creating absent ones: one upsert over a
/// JSON array of `[tenant, series, total]`. The keys must be distinct.
#[tracing::instrument(name = "db.counters.increment", skip_all, fields(series = totals.len()), err(level = "debug"))]
async fn increment(
    conn: &mut SqliteConnection,
    totals: &[Total<'_>],
    format: &str,
) -> Result<Vec<SeriesRow>, sqlx::Error> {
    let totals: Vec<(&str, &str, i64)> = totals
        .iter()
        .map(|t| (t.tenant, t.series, t.total))
        .collect();
    sqlx::query_as(
        "INSERT INTO counters (tenant_id, series, last_value, format)
         SELECT value ->> 0, value ->> 1, value ->> 2, ?2 FROM json_each(?1) WHERE true
         ON CONFLICT (tenant_id, series)
         DO UPDATE SET last_value = counters.last_value + excluded.last_value
         RETURNING tenant_id, series, last_value, format",
    )
    .bind(Json(totals))
    .bind(format)
    .fetch_all(conn)
    .await
}

/// Records each allocating call's range: a JSON array of
/// `[tenant, series, first, count, request id or null]`.
#[tracing::instrument(name = "db.allocations.insert", skip_all, fields(ranges = ranges.len()), err(level = "debug"))]
async fn record(
    conn: &mut SqliteConnection,
    ranges: &[(&str, &str, i64, i64, Option<&str>)],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO allocations (tenant_id, series, first_value, count, kind, request_id, created_at)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, 'allocate', value ->> 4, ?2
         FROM json_each(?1)",
    )
    .bind(Json(ranges))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores each request id of the plan with its first number: a JSON array
/// of `[tenant, request id, series, count, first]`. An id is stored if it is
/// new, past the window, or claimed by this transaction; returns how many
/// were stored.
#[tracing::instrument(name = "db.request_ids.store", skip_all, err(level = "debug"))]
async fn store_ids(
    conn: &mut SqliteConnection,
    ids: &[(&str, &str, &str, i64, i64)],
    stamp: Stamp,
) -> Result<usize, sqlx::Error> {
    let stored: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO request_ids (tenant_id, request_id, series, count, first_value, created_at)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, ?2
         FROM json_each(?1) WHERE true
         ON CONFLICT (tenant_id, request_id)
         DO UPDATE SET series = excluded.series, count = excluded.count,
                       first_value = excluded.first_value, created_at = excluded.created_at
         WHERE request_ids.first_value IS NULL OR request_ids.created_at < ?3
         RETURNING 1",
    )
    .bind(Json(ids))
    .bind(stamp.now)
    .bind(stamp.forget_before)
    .fetch_all(conn)
    .await?;
    Ok(stored.len())
}

/// Moves the plan's counters, records its ranges and stores its request ids;
/// returns the counters, or `None` if an id of the plan is held by another
/// call (the caller rolls back then).
async fn apply(
    conn: &mut SqliteConnection,
    plan: &Plan<'_>,
    format: &str,
    stamp: Stamp,
) -> Result<Option<Vec<Counted>>, StoreError> {
    let rows = increment(conn, &plan.increments, format).await?;
    let last: HashMap<(&str, &str), i64> = rows
        .iter()
        .map(|row| {
            (
                (row.tenant_id.as_str(), row.series.as_str()),
                row.last_value,
            )
        })
        .collect();
    let mut ranges = Vec::with_capacity(plan.records.len());
    let mut ids = Vec::new();
    for record in &plan.records {
        let Some(&last_value) = last.get(&(record.tenant, record.series)) else {
            return Err(StoreError::Internal(
                format!(
                    "no counter returned for {}/{}",
                    record.tenant, record.series
                )
                .into(),
            ));
        };
        let first = record.first(last_value);
        ranges.push((
            record.tenant,
            record.series,
            first,
            record.count,
            record.request_id,
        ));
        if let Some(id) = record.request_id {
            ids.push((record.tenant, id, record.series, record.count, first));
        }
    }
    record(conn, &ranges, stamp.now).await?;
    if !ids.is_empty() && store_ids(conn, &ids, stamp).await? < ids.len() {
        return Ok(None);
    }
    Ok(Some(
        rows.into_iter()
            .map(|row| Counted {
                tenant_id: row.tenant_id,
                series: row.series,
                last_value: row.last_value,
                format: row.format,
            })
            .collect(),
    ))
}

#[async_trait]
impl Engine for SqliteEngine {
    type Db = Sqlite;

    fn pool(&self) -> &SqlitePool {
        self.db.pool()
    }

    async fn allocate(
        &self,
        batch: &Batch<'_>,
        format: &str,
        stamp: Stamp,
    ) -> Result<Vec<Outcome>, StoreError> {
        // Most ids are new: first try as if every one were.
        let plan = batch.plan(&batch.all_won());
        let mut write = self.db.begin_write().await?;
        if let Some(counted) = apply(write.conn(), &plan, format, stamp).await? {
            // Withholds the numbers if the file is no longer at its path:
            // the next start would hand them out again.
            write.commit().await?;
            return batch.outcomes(&plan, counted, &HashMap::new(), stamp.now);
        }
        write.rollback().await?;

        // Some id is in use: claim the ids first, then allocate for the
        // calls whose ids were won, and repeat the others' first answers.
        let mut write = self.db.begin_write().await?;
        let won = claim(write.conn(), batch.claims(), stamp).await?;
        let held = sql_store::read_held::<Sqlite>(write.conn(), batch, &won).await?;
        let plan = batch.plan(&won);
        let counted = if plan.is_empty() {
            Vec::new()
        } else {
            apply(write.conn(), &plan, format, stamp)
                .await?
                .ok_or_else(|| {
                    StoreError::Internal("a request id claimed here was not stored".into())
                })?
        };
        write.commit().await?;
        batch.outcomes(&plan, counted, &held, stamp.now)
    }

    async fn advance(&self, advance: Advance<'_>, format: &str) -> Result<SeriesRow, StoreError> {
        let mut write = self.db.begin_write().await?;
        let row = sql_store::advance::<Sqlite>(write.conn(), advance, format).await?;
        write.commit().await?;
        Ok(row)
    }

    async fn forget(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let mut write = self.db.begin_write().await?;
        let done = sql_store::delete_request_ids(write.conn(), before, limit).await?;
        write.commit().await?;
        Ok(done.rows_affected())
    }

    async fn is_ready(&self) -> bool {
        self.db.is_ready().await
    }

    async fn close(&self) {
        self.db.close().await;
    }
}
