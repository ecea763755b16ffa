//! The counter store written once over either engine, and the statements both
//! engines run alike: one text each (`$N` placeholders suit both). Only the
//! statements that take a batch as arrays, and the write path, differ per
//! engine, and live in its file.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use crate::{
    allocator::{
        batch::{Batch, KeyRow, Won},
        series::{Series, SeriesName},
        store::{Advance, Call, CounterStore, Outcome, SeriesRow, Stamp, StoreError},
    },
    server::Store,
    tenant::TenantId,
};

/// What differs per engine: its pool, how it runs a batch of allocations, and
/// its durable write path.
#[async_trait]
pub(crate) trait Engine: Send + Sync + 'static {
    /// The database kind.
    type Db: Database;

    /// The pool reads go through.
    fn pool(&self) -> &Pool<Self::Db>;

    /// Runs the batch in one durable transaction, as
    /// [`CounterStore::allocate_many`] does.
    async fn allocate(
        &self,
        batch: &Batch<'_>,
        format: &str,
        stamp: Stamp,
    ) -> Result<Vec<Outcome>, StoreError>;

    /// Runs [`advance`] in the engine's durable write.
    async fn advance(&self, advance: Advance<'_>, format: &str) -> Result<SeriesRow, StoreError>;

    /// Runs [`delete_request_ids`] in the engine's write path.
    async fn forget(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;

    /// Whether the database answers now.
    async fn is_ready(&self) -> bool;

    /// Closes the pool.
    async fn close(&self);
}

/// The counter store on either engine: the statements of this module, run
/// the way `E` says.
#[derive(Debug, Clone)]
pub struct SqlCounterStore<E>(pub(crate) E);

#[async_trait]
impl<E: Engine> CounterStore for SqlCounterStore<E>
where
    for<'c> &'c mut <E::Db as Database>::Connection: Executor<'c, Database = E::Db>,
    <E::Db as Database>::Arguments: IntoArguments<E::Db>,
    for<'r> SeriesRow: FromRow<'r, <E::Db as Database>::Row>,
    for<'q> &'q str: Encode<'q, E::Db> + Type<E::Db>,
    for<'q> i64: Encode<'q, E::Db> + Type<E::Db>,
{
    async fn allocate_many(
        &self,
        calls: &[Call<'_>],
        format: &str,
        stamp: Stamp,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.0.allocate(&Batch::new(calls), format, stamp).await
    }

    async fn advance(&self, advance: Advance<'_>, format: &str) -> Result<Series, StoreError> {
        Ok(self.0.advance(advance, format).await?.into())
    }

    async fn forget_request_ids(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.0.forget(before, limit).await
    }

    async fn get(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
    ) -> Result<Option<Series>, StoreError> {
        let row = select_one(self.0.pool(), tenant.as_str(), series.as_str()).await?;
        Ok(row.map(Into::into))
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Series>, StoreError> {
        let (tenant, after) = (tenant.as_str(), after.unwrap_or(""));
        let rows = select_page(self.0.pool(), tenant, after, limit.into()).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

#[async_trait]
impl<E: Engine> Store for SqlCounterStore<E> {
    async fn is_ready(&self) -> bool {
        self.0.is_ready().await
    }

    async fn close(&self) {
        self.0.close().await;
    }
}

/// Raises a counter and records the range skipped: the counter is first
/// locked (created at 0 if absent) to read the value it is raised from. Runs
/// on `conn`, inside the caller's durable transaction.
pub(crate) async fn advance<DB>(
    conn: &mut DB::Connection,
    advance: Advance<'_>,
    format: &str,
) -> Result<SeriesRow, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> SeriesRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
{
    let (tenant, series) = (advance.tenant.as_str(), advance.series.as_str());
    let before = raise::<DB>(conn, tenant, series, 0, format).await?;
    let after = raise::<DB>(conn, tenant, series, advance.at_least, format).await?;
    if after.last_value > before.last_value {
        let skipped = Skipped {
            tenant,
            series,
            first: before.last_value + 1,
            count: after.last_value - before.last_value,
            reason: advance.reason,
            at: advance.now,
        };
        insert_skipped::<DB>(conn, &skipped).await?;
    }
    Ok(after)
}

/// A range an advance skipped, for the ledger.
struct Skipped<'a> {
    tenant: &'a str,
    series: &'a str,
    first: i64,
    count: i64,
    reason: &'a str,
    at: DateTime<Utc>,
}

/// Records the range an advance skipped.
#[tracing::instrument(name = "db.allocations.insert_skipped", skip_all, err(level = "debug"))]
async fn insert_skipped<DB>(
    conn: &mut DB::Connection,
    skipped: &Skipped<'_>,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(
        "INSERT INTO allocations (tenant_id, series, first_value, count, kind, reason, created_at)
         VALUES ($1, $2, $3, $4, 'advance', $5, $6)",
    )
    .bind(skipped.tenant)
    .bind(skipped.series)
    .bind(skipped.first)
    .bind(skipped.count)
    .bind(skipped.reason)
    .bind(skipped.at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The first answers of the batch's request ids that another transaction
/// holds, by (tenant, request id). Runs on `conn`, inside the transaction
/// that tried to claim them; rare (repeats only), so one read per id.
pub(crate) async fn read_held<DB>(
    conn: &mut DB::Connection,
    batch: &Batch<'_>,
    won: &Won,
) -> Result<HashMap<(String, String), KeyRow>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> KeyRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    let mut held = HashMap::new();
    for claim in batch.held(won) {
        if let Some(row) = select_key::<DB>(&mut *conn, claim.tenant, claim.request_id).await? {
            held.insert((claim.tenant.to_owned(), claim.request_id.to_owned()), row);
        }
    }
    Ok(held)
}

/// What a request id first answered, with its series' format.
#[tracing::instrument(name = "db.request_ids.select", skip_all, err(level = "debug"))]
async fn select_key<DB>(
    conn: &mut DB::Connection,
    tenant: &str,
    request_id: &str,
) -> Result<Option<KeyRow>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> KeyRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(
        "SELECT k.series, k.count, k.first_value, c.format, k.created_at
         FROM request_ids k JOIN counters c ON c.tenant_id = k.tenant_id AND c.series = k.series
         WHERE k.tenant_id = $1 AND k.request_id = $2",
    )
    .bind(tenant)
    .bind(request_id)
    .fetch_optional(conn)
    .await
}

/// Forgets up to `limit` request ids first used before `before`, oldest
/// first. Small batches keep each write short beside the allocations.
#[tracing::instrument(name = "db.request_ids.delete", skip_all, err(level = "debug"))]
pub(crate) async fn delete_request_ids<'e, DB>(
    executor: impl Executor<'e, Database = DB>,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<DB::QueryResult, sqlx::Error>
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(
        "DELETE FROM request_ids WHERE (tenant_id, request_id) IN (
             SELECT tenant_id, request_id FROM request_ids
             WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
    )
    .bind(before)
    .bind(i64::from(limit))
    .execute(executor)
    .await
}

/// Raises the counter to `at_least`, creating it there if absent; never
/// lowers it. Runs on `conn`, inside the caller's durable transaction.
#[tracing::instrument(name = "db.counters.raise", skip_all, err(level = "debug"))]
pub(crate) async fn raise<DB>(
    conn: &mut DB::Connection,
    tenant: &str,
    series: &str,
    at_least: i64,
    format: &str,
) -> Result<SeriesRow, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> SeriesRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    // CASE rather than GREATEST (PostgreSQL) or max() (SQLite): both have it.
    sqlx::query_as(
        "INSERT INTO counters (tenant_id, series, last_value, format) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, series)
         DO UPDATE SET last_value = CASE WHEN excluded.last_value > counters.last_value
                                         THEN excluded.last_value
                                         ELSE counters.last_value END
         RETURNING tenant_id, series, last_value, format",
    )
    .bind(tenant)
    .bind(series)
    .bind(at_least)
    .bind(format)
    .fetch_one(conn)
    .await
}

/// One counter, if the series was ever used.
#[tracing::instrument(name = "db.counters.select_one", skip_all, err(level = "debug"))]
pub(crate) async fn select_one<DB>(
    pool: &Pool<DB>,
    tenant: &str,
    series: &str,
) -> Result<Option<SeriesRow>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> SeriesRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(
        "SELECT tenant_id, series, last_value, format FROM counters
         WHERE tenant_id = $1 AND series = $2",
    )
    .bind(tenant)
    .bind(series)
    .fetch_optional(pool)
    .await
}

/// Up to `limit` of a tenant's counters with names after `after`, by name
/// (bytewise on both engines).
#[tracing::instrument(name = "db.counters.select_page", skip_all, err(level = "debug"))]
pub(crate) async fn select_page<DB>(
    pool: &Pool<DB>,
    tenant: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<SeriesRow>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> SeriesRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(
        "SELECT tenant_id, series, last_value, format FROM counters
         WHERE tenant_id = $1 AND series > $2
         ORDER BY series LIMIT $3",
    )
    .bind(tenant)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}
