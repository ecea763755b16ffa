//! The counter store written once over either engine, and the statements both
//! engines run alike: one text each (`$N` placeholders suit both). Only the
//! increment and the write path differ per engine, and live in its file.

use async_trait::async_trait;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use crate::{
    allocator::{
        series::{Series, SeriesName},
        store::{Advanced, CounterStore, Increment, SeriesRow, StoreError},
    },
    server::Store,
    tenant::TenantId,
};

/// What differs per engine: its pool, its increment statement, and its
/// durable write path.
#[async_trait]
pub(crate) trait Engine: Send + Sync + 'static {
    /// The database kind.
    type Db: Database;

    /// The pool reads go through.
    fn pool(&self) -> &Pool<Self::Db>;

    /// Advances the counters in one durable transaction, as
    /// [`CounterStore::allocate_many`] does.
    async fn increment(
        &self,
        increments: &[Increment<'_>],
        format: &str,
    ) -> Result<Vec<Advanced>, StoreError>;

    /// Runs [`raise`] in the engine's durable write.
    async fn raise(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        at_least: i64,
        format: &str,
    ) -> Result<SeriesRow, StoreError>;

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
        increments: &[Increment<'_>],
        format: &str,
    ) -> Result<Vec<Advanced>, StoreError> {
        self.0.increment(increments, format).await
    }

    async fn advance(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        at_least: i64,
        format: &str,
    ) -> Result<Series, StoreError> {
        Ok(self.0.raise(tenant, series, at_least, format).await?.into())
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
