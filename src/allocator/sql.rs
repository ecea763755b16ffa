//! The counter statements both engines run alike: one text each (`$N`
//! placeholders suit both). Only the increment differs per engine, and lives
//! in its backend file.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use crate::allocator::store::SeriesRow;

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
