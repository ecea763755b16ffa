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
        batch::{Batch, Claim, Counted, Plan, Won},
        numbers::LEASE_EXPIRED,
        series::SeriesConfig,
        sql_store::{self, BATCH_COLUMNS, BatchRow, Engine, Pick, RANGE_COLUMNS, SqlCounterStore},
        store::{
            Advance, Change, ChangeError, Changed, ConfigureError, Held, KeyedStateRow, NumberAt,
            Outcome, PeriodOf, RangeRow, Reissue, Stamp, StateChange, StateRow, StateWrite,
            StoreError, kind_of,
        },
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
    let claims: Vec<(&str, &str, &str, i64, &str)> = claims
        .iter()
        .map(|c| (c.tenant, c.request_id, c.series, c.count, c.kind))
        .collect();
    // `WHERE true` tells SQLite's parser the ON CONFLICT is the upsert's.
    let won: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO request_ids (tenant_id, request_id, series, count, kind, created_at)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, ?2
         FROM json_each(?1) WHERE true
         ON CONFLICT (tenant_id, request_id)
         DO UPDATE SET series = excluded.series, count = excluded.count, kind = excluded.kind,
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

/// A batch's numbers for a JSON array: `[tenant, series, period, number]` each.
fn keys<'a>(writes: &'a [StateWrite<'a>]) -> Json<Vec<(&'a str, &'a str, &'a str, i64)>> {
    Json(
        writes
            .iter()
            .map(|w| {
                (
                    w.at.tenant.as_str(),
                    w.at.series.as_str(),
                    w.at.period,
                    w.at.number,
                )
            })
            .collect(),
    )
}

/// Per change of a batch, in order, the last range of its number's period
/// starting at or before the number; and the state rows of its numbers (a
/// row twice if the batch changes its number twice): one statement.
#[tracing::instrument(name = "db.number_states.select_many", skip_all, fields(numbers = writes.len()), err(level = "debug"))]
async fn read_batch(
    conn: &mut SqliteConnection,
    writes: &[StateWrite<'_>],
) -> Result<(Vec<KeyedStateRow>, Vec<Option<RangeRow>>), sqlx::Error> {
    // The state rows joined, so that each number is looked up by its key:
    // with a row value `IN` the list, SQLite reads every row of the series.
    let read: Vec<BatchRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH read ({BATCH_COLUMNS}) AS (
             SELECT w.key + 1, a.tenant_id, a.series, a.period, {RANGE_COLUMNS}, NULL, NULL,
                    NULL, NULL, NULL, NULL
             FROM json_each(?1) AS w
             JOIN allocations a
               ON a.tenant_id = w.value ->> 0 AND a.series = w.value ->> 1
              AND a.period = w.value ->> 2
              AND a.first_value = (SELECT max(b.first_value) FROM allocations b
                                   WHERE b.tenant_id = w.value ->> 0
                                     AND b.series = w.value ->> 1
                                     AND b.period = w.value ->> 2
                                     AND b.first_value <= w.value ->> 3)
             UNION ALL
             SELECT 0, s.tenant_id, s.series, s.period, NULL, NULL, NULL, s.reason, s.request_id,
                    NULL, NULL, NULL, s.number, s.state, s.reference, s.updated_at, s.origin,
                    s.expires_at
             FROM json_each(?1) AS k
             JOIN number_states s
               ON s.tenant_id = k.value ->> 0 AND s.series = k.value ->> 1
              AND s.period = k.value ->> 2 AND s.number = k.value ->> 3)
         SELECT * FROM read"
    )))
    .bind(keys(writes))
    .fetch_all(conn)
    .await?;
    Ok(sql_store::split_read(read, writes.len()))
}

/// A state row for a JSON array: `[tenant, series, period, number, state,
/// reference, reason, updated at, expires at or null, origin, request id or
/// null]`.
type StateValues<'a> = (
    &'a str,
    &'a str,
    &'a str,
    i64,
    &'a str,
    &'a str,
    &'a str,
    String,
    Option<String>,
    &'a str,
    Option<&'a str>,
);

/// Stores the rows of a batch's changes: updates of rows read in this write,
/// or first rows.
#[tracing::instrument(name = "db.number_states.write_many", skip_all, fields(rows = rows.len()), err(level = "debug"))]
async fn write_states(
    conn: &mut SqliteConnection,
    rows: &[KeyedStateRow],
    first: bool,
) -> Result<(), sqlx::Error> {
    let values: Vec<StateValues<'_>> = rows
        .iter()
        .map(|r| {
            (
                r.tenant_id.as_str(),
                r.series.as_str(),
                r.period.as_str(),
                r.row.number,
                r.row.state.as_str(),
                r.row.reference.as_str(),
                r.row.reason.as_str(),
                stored_time(r.row.updated_at),
                r.row.expires_at.map(stored_time),
                r.row.origin.as_str(),
                r.row.request_id.as_deref(),
            )
        })
        .collect();
    let statement = if first {
        "INSERT INTO number_states (tenant_id, series, period, number, state, reference, reason,
                                    updated_at, expires_at, origin, request_id)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,
                value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10
         FROM json_each(?1)"
    } else {
        "UPDATE number_states
         SET state = u.value ->> 4, reference = u.value ->> 5, reason = u.value ->> 6,
             updated_at = u.value ->> 7, expires_at = u.value ->> 8
         FROM json_each(?1) AS u
         WHERE number_states.tenant_id = u.value ->> 0 AND number_states.series = u.value ->> 1
           AND number_states.period = u.value ->> 2 AND number_states.number = u.value ->> 3"
    };
    sqlx::query(statement)
        .bind(Json(values))
        .execute(conn)
        .await?;
    Ok(())
}

/// For each of `periods`, whether it has a number given back by `now`
/// (released, or reserved with a lease ended), in order: one statement.
/// Each read stops at the first such row, through the same indexes as
/// [`sql_store::take_back`]: the reservations still held are not read.
#[tracing::instrument(name = "db.number_states.given_back", skip_all, fields(periods = periods.len()), err(level = "debug"))]
async fn select_given_back(
    pool: &SqlitePool,
    periods: &[PeriodOf<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<bool>, sqlx::Error> {
    let keys: Vec<(&str, &str, &str)> = periods
        .iter()
        .map(|p| (p.tenant.as_str(), p.series.as_str(), p.period))
        .collect();
    let found: Vec<(i64,)> = sqlx::query_as(
        "SELECT p.key FROM json_each(?1) AS p
         WHERE EXISTS (SELECT 1 FROM number_states INDEXED BY number_states_by_state
                       WHERE tenant_id = p.value ->> 0 AND series = p.value ->> 1
                         AND period = p.value ->> 2 AND state = 'released'
                         AND state <> 'confirmed')
            OR EXISTS (SELECT 1 FROM number_states INDEXED BY number_states_leases
                       WHERE tenant_id = p.value ->> 0 AND series = p.value ->> 1
                         AND period = p.value ->> 2 AND state = 'reserved'
                         AND expires_at <= ?2)",
    )
    .bind(Json(keys))
    .bind(now)
    .fetch_all(pool)
    .await?;
    Ok(sql_store::found_among(
        periods.len(),
        found.into_iter().map(|(key,)| key),
    ))
}

/// Gives back up to `limit` reservations whose lease ended by `now`, by
/// their series' policy, as of the lease's end.
#[tracing::instrument(name = "db.number_states.expire", skip_all, err(level = "debug"))]
async fn expire(
    conn: &mut SqliteConnection,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE number_states
         SET state = CASE (SELECT gap_policy FROM series s
                           WHERE s.tenant_id = number_states.tenant_id
                             AND s.series = number_states.series)
                     WHEN 'reissue' THEN 'released' ELSE 'voided' END,
             reason = ?3, updated_at = expires_at
         WHERE (tenant_id, series, period, number) IN (
             SELECT tenant_id, series, period, number FROM number_states
             WHERE state = 'reserved' AND expires_at <= ?1
             ORDER BY expires_at LIMIT ?2)",
    )
    .bind(now)
    .bind(i64::from(limit))
    .bind(LEASE_EXPIRED)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Forgets up to `limit` request ids first used before `before`, oldest
/// first. Small batches keep each write short beside the allocations.
#[tracing::instrument(name = "db.request_ids.delete", skip_all, err(level = "debug"))]
async fn delete_request_ids(
    conn: &mut SqliteConnection,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM request_ids WHERE (tenant_id, request_id) IN (
             SELECT tenant_id, request_id FROM request_ids
             WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)",
    )
    .bind(before)
    .bind(i64::from(limit))
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Creates the series of a JSON array of `[tenant, series]` that do not
/// exist, with `defaults`.
#[tracing::instrument(name = "db.series.insert_many", skip_all, fields(series = series.len()), err(level = "debug"))]
async fn insert_series(
    conn: &mut SqliteConnection,
    series: &[(&str, &str)],
    defaults: &SeriesConfig,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO series (tenant_id, series, format, reset, timezone, start_at)
         SELECT value ->> 0, value ->> 1, ?2, ?3, ?4, ?5 FROM json_each(?1) WHERE true
         ON CONFLICT (tenant_id, series) DO NOTHING",
    )
    .bind(Json(series))
    .bind(defaults.format.template())
    .bind(defaults.calendar.reset.name())
    .bind(defaults.calendar.zone.name())
    .bind(defaults.start_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds each total to its period's counter, starting absent periods at
/// their series' `start_at`: one upsert over a JSON array of `[tenant,
/// series, period, total, reset, time zone, gap policy]`, returning each
/// counter with its series' template. A total whose series does not exist or
/// no longer has that reset, time zone and gap policy is left out: the caller
/// sees fewer counters than totals. The keys must be distinct.
#[tracing::instrument(name = "db.counters.increment", skip_all, fields(counters = totals.len()), err(level = "debug"))]
async fn increment(
    conn: &mut SqliteConnection,
    totals: &[(&str, &str, &str, i64, &str, &str, &str)],
) -> Result<Vec<Counted>, sqlx::Error> {
    let rows: Vec<(String, String, String, i64, String)> = sqlx::query_as(
        "INSERT INTO counters (tenant_id, series, period, last_value, base)
         SELECT total.value ->> 0, total.value ->> 1, total.value ->> 2,
                series.start_at - 1 + (total.value ->> 3), series.start_at - 1
         FROM json_each(?1) AS total
         JOIN series ON series.tenant_id = total.value ->> 0
                    AND series.series = total.value ->> 1
                    AND series.reset = total.value ->> 4
                    AND series.timezone = total.value ->> 5
                    AND series.gap_policy = total.value ->> 6
         WHERE true
         ON CONFLICT (tenant_id, series, period)
         DO UPDATE SET last_value = counters.last_value + (excluded.last_value - excluded.base)
         RETURNING tenant_id, series, period, last_value,
                   (SELECT format FROM series
                    WHERE series.tenant_id = counters.tenant_id
                      AND series.series = counters.series)",
    )
    .bind(Json(totals))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant_id, series, period, last_value, format)| Counted {
            tenant_id,
            series,
            period,
            last_value,
            format,
        })
        .collect())
}

/// A range for the ledger: `[tenant, series, period, first, count, request
/// id or null, format, date, kind, lease end or null, reserved at or null]`.
type Range<'a> = (
    &'a str,
    &'a str,
    &'a str,
    i64,
    i64,
    Option<&'a str>,
    &'a str,
    String,
    &'static str,
    Option<String>,
    Option<String>,
);

/// A time as the store keeps it: RFC 3339 text in UTC, as bound parameters
/// are, so that times compare as text.
pub(crate) fn stored_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// Records each allocating call's range.
#[tracing::instrument(name = "db.allocations.insert", skip_all, fields(ranges = ranges.len()), err(level = "debug"))]
async fn record(
    conn: &mut SqliteConnection,
    ranges: &[Range<'_>],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO allocations (tenant_id, series, period, first_value, count, kind,
                                  request_id, format, date, created_at)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 8,
                value ->> 5, value ->> 6, value ->> 7, ?2
         FROM json_each(?1)",
    )
    .bind(Json(ranges))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Holds the number of each reservation's range until its lease ends.
#[tracing::instrument(name = "db.number_states.hold", skip_all, err(level = "debug"))]
async fn hold(conn: &mut SqliteConnection, ranges: &[Range<'_>]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO number_states (tenant_id, series, period, number, state, origin,
                                    expires_at, request_id, updated_at)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, 'reserved', 'reserve',
                value ->> 9, value ->> 5, value ->> 10
         FROM json_each(?1) WHERE value ->> 9 IS NOT NULL",
    )
    .bind(Json(ranges))
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores the request ids of the ranges that carry one, with their first
/// numbers. An id is stored if it is new, past the window, or claimed by
/// this transaction; returns how many were stored.
#[tracing::instrument(name = "db.request_ids.store", skip_all, err(level = "debug"))]
async fn store_ids(
    conn: &mut SqliteConnection,
    ranges: &[Range<'_>],
    stamp: Stamp,
) -> Result<usize, sqlx::Error> {
    let stored: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO request_ids (tenant_id, request_id, series, count, kind, period,
                                 first_value, format, date, created_at)
         SELECT value ->> 0, value ->> 5, value ->> 1, value ->> 4,
                CASE WHEN value ->> 9 IS NULL THEN 'allocate' ELSE 'reserve' END,
                value ->> 2, value ->> 3, value ->> 6, value ->> 7, ?2
         FROM json_each(?1) WHERE value ->> 5 IS NOT NULL
         ON CONFLICT (tenant_id, request_id)
         DO UPDATE SET series = excluded.series, count = excluded.count, kind = excluded.kind,
                       period = excluded.period, first_value = excluded.first_value,
                       format = excluded.format, date = excluded.date,
                       created_at = excluded.created_at
         WHERE request_ids.first_value IS NULL OR request_ids.created_at < ?3
         RETURNING 1",
    )
    .bind(Json(ranges))
    .bind(stamp.now)
    .bind(stamp.forget_before)
    .fetch_all(conn)
    .await?;
    Ok(stored.len())
}

/// Creates the series of the plan that do not exist yet with `defaults`,
/// moves its counters if their series still have the calendars its calls
/// assumed ([`StoreError::SeriesChanged`] if not), records its ranges and
/// stores its request ids;
/// returns the counters, or `None` if an id of the plan is held by another
/// call (the caller rolls back then).
async fn apply(
    conn: &mut SqliteConnection,
    plan: &Plan<'_>,
    defaults: &SeriesConfig,
    stamp: Stamp,
) -> Result<Option<Vec<Counted>>, StoreError> {
    let unsettled: Vec<(&str, &str)> = plan
        .series
        .iter()
        .filter(|used| !used.settled)
        .map(|used| (used.tenant, used.series))
        .collect();
    if !unsettled.is_empty() {
        insert_series(conn, &unsettled, defaults).await?;
    }
    let totals: Vec<_> = plan
        .increments
        .iter()
        .map(|total| {
            let calendar = total.calendar;
            let (reset, zone) = (calendar.reset.name(), calendar.zone.name());
            (
                total.tenant,
                total.series,
                total.period,
                total.total,
                reset,
                zone,
                total.policy.name(),
            )
        })
        .collect();
    let counted = increment(conn, &totals).await?;
    if counted.len() < totals.len() {
        return Err(StoreError::SeriesChanged);
    }
    let by_key: HashMap<(&str, &str, &str), &Counted> = counted
        .iter()
        .map(|c| {
            (
                (c.tenant_id.as_str(), c.series.as_str(), c.period.as_str()),
                c,
            )
        })
        .collect();
    let mut ranges = Vec::with_capacity(plan.records.len());
    for record in &plan.records {
        let Some(row) = by_key.get(&(record.tenant, record.series, record.period)) else {
            return Err(StoreError::Internal(
                format!(
                    "no counter returned for {}/{}/{}",
                    record.tenant, record.series, record.period
                )
                .into(),
            ));
        };
        ranges.push((
            record.tenant,
            record.series,
            record.period,
            record.first(row.last_value),
            record.count,
            record.request_id,
            row.format.as_str(),
            record.date.to_string(),
            record.kind(),
            record.lease.map(|lease| stored_time(lease.ends)),
            record.lease.map(|lease| stored_time(lease.at)),
        ));
    }
    record(conn, &ranges, stamp.now).await?;
    if plan.records.iter().any(|record| record.lease.is_some()) {
        hold(conn, &ranges).await?;
    }
    let ids = plan.ids_recorded();
    if ids > 0 && store_ids(conn, &ranges, stamp).await? < ids {
        return Ok(None);
    }
    Ok(Some(counted))
}

#[async_trait]
impl Engine for SqliteEngine {
    type Db = Sqlite;

    // Without the hint SQLite, which keeps no statistics here, walks every
    // number of the period in order, testing each one's state.
    const BY_STATE: &'static str = "number_states INDEXED BY number_states_by_state";

    const LEASES: &'static str = "number_states INDEXED BY number_states_leases";

    const ADVANCES: &'static str = "allocations INDEXED BY allocations_advances";

    fn pool(&self) -> &SqlitePool {
        self.db.pool()
    }

    async fn allocate(
        &self,
        batch: &Batch<'_>,
        defaults: &SeriesConfig,
        stamp: Stamp,
    ) -> Result<Vec<Outcome>, StoreError> {
        // Most ids are new: first try as if every one were.
        let plan = batch.plan(&batch.all_won());
        let mut write = self.db.begin_write().await?;
        match apply(write.conn(), &plan, defaults, stamp).await {
            Ok(Some(counted)) => {
                // Withholds the numbers if the file is no longer at its
                // path: the next start would hand them out again.
                write.commit().await?;
                return batch.outcomes(&plan, &counted, &HashMap::new());
            }
            Ok(None) => write.rollback().await?,
            Err(error) => {
                write.rollback().await?;
                return Err(error);
            }
        }

        // Some id is in use: claim the ids first, then allocate for the
        // calls whose ids were won, and repeat the others' first answers.
        let mut write = self.db.begin_write().await?;
        let won = claim(write.conn(), batch.claims(), stamp).await?;
        let held = sql_store::read_held::<Sqlite>(write.conn(), batch, &won, stamp).await?;
        let plan = batch.plan(&won);
        let counted = if plan.is_empty() {
            Vec::new()
        } else {
            match apply(write.conn(), &plan, defaults, stamp).await {
                Ok(Some(counted)) => counted,
                Ok(None) => {
                    write.rollback().await?;
                    return Err(StoreError::Internal(
                        "a request id claimed here was not stored".into(),
                    ));
                }
                Err(error) => {
                    write.rollback().await?;
                    return Err(error);
                }
            }
        };
        write.commit().await?;
        batch.outcomes(&plan, &counted, &held)
    }

    async fn change_state(
        &self,
        at: NumberAt<'_>,
        range: &RangeRow,
        change: StateChange<'_>,
        held: Held,
    ) -> Result<Option<StateRow>, ChangeError> {
        // The write lock keeps every other change of the number out.
        let mut write = self.db.begin_write().await?;
        let current = sql_store::select_state::<Sqlite>(write.conn(), at).await?;
        match sql_store::apply_state_change::<Sqlite>(
            write.conn(),
            at,
            range,
            current,
            change,
            held,
        )
        .await
        {
            Ok(row) => {
                write.commit().await?;
                Ok(row)
            }
            Err(error) => {
                write.rollback().await?;
                Err(error)
            }
        }
    }

    async fn configure(
        &self,
        tenant: &str,
        series: &str,
        defaults: &SeriesConfig,
        change: Change<'_>,
    ) -> Result<SeriesConfig, ConfigureError> {
        // The write holds the database's one write lock: nothing allocates
        // in between.
        let mut write = self.db.begin_write().await?;
        sql_store::insert_series(write.conn(), tenant, series, defaults).await?;
        let locked = sql_store::select_series(write.conn(), tenant, series)
            .await?
            .ok_or_else(|| StoreError::Internal("series vanished once created".into()))?;
        match sql_store::configure::<Sqlite>(write.conn(), &locked, tenant, change).await {
            Ok(config) => {
                write.commit().await?;
                Ok(config)
            }
            Err(error) => {
                write.rollback().await?;
                Err(error)
            }
        }
    }

    async fn advance(
        &self,
        advance: Advance<'_>,
        defaults: &SeriesConfig,
    ) -> Result<(SeriesConfig, i64), StoreError> {
        let (tenant, series) = (advance.tenant.as_str(), advance.series.as_str());
        let mut write = self.db.begin_write().await?;
        sql_store::insert_series(write.conn(), tenant, series, defaults).await?;
        let Some(locked) = sql_store::select_series(write.conn(), tenant, series).await? else {
            write.rollback().await?;
            return Err(StoreError::Internal("series vanished once created".into()));
        };
        match sql_store::advance::<Sqlite>(write.conn(), &locked, advance).await {
            Ok(advanced) => {
                write.commit().await?;
                Ok(advanced)
            }
            Err(error) => {
                write.rollback().await?;
                Err(error)
            }
        }
    }

    async fn change_states(&self, writes: &[StateWrite<'_>]) -> Result<Vec<Changed>, StoreError> {
        // The write lock keeps every other change of the numbers out.
        let mut write = self.db.begin_write().await?;
        let planned = match read_batch(write.conn(), writes).await {
            Ok((existing, ranges)) => sql_store::plan_changes(writes, existing, ranges),
            Err(error) => {
                write.rollback().await?;
                return Err(error.into());
            }
        };
        let written = async {
            if !planned.updates.is_empty() {
                write_states(write.conn(), &planned.updates, false).await?;
            }
            if !planned.inserts.is_empty() {
                write_states(write.conn(), &planned.inserts, true).await?;
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match written {
            Ok(()) => {
                write.commit().await?;
                Ok(planned.answers)
            }
            Err(error) => {
                write.rollback().await?;
                Err(error.into())
            }
        }
    }

    async fn reissue(
        &self,
        take: Reissue<'_>,
        stamp: Stamp,
    ) -> Result<Option<Outcome>, StoreError> {
        let mut write = self.db.begin_write().await?;
        if let Some(id) = take.request_id {
            let asked = Claim {
                tenant: take.tenant.as_str(),
                request_id: id.as_str(),
                series: take.series.as_str(),
                count: 1,
                kind: kind_of(take.lease.as_ref()),
            };
            let won = claim(write.conn(), &[asked], stamp).await?;
            if !won.contains(asked.tenant, asked.request_id) {
                let (tenant, id) = (asked.tenant, asked.request_id);
                let first =
                    sql_store::select_key::<Sqlite>(write.conn(), tenant, id, stamp.forget_before)
                        .await;
                write.rollback().await?;
                return Ok(first?.map(|first| first.repeated_by(asked.series, 1, asked.kind)));
            }
        }
        let pick = Pick {
            by_state: Self::BY_STATE,
            leases: Self::LEASES,
            // The write lock keeps every other taker out.
            lock: "",
        };
        let taken = match sql_store::take_back::<Sqlite>(write.conn(), take, stamp.now, pick).await
        {
            Ok(Some(number)) => sql_store::reissued::<Sqlite>(write.conn(), take, number).await,
            Ok(None) => {
                write.rollback().await?;
                return Ok(None);
            }
            Err(error) => Err(error.into()),
        };
        match taken {
            Ok(outcome) => {
                write.commit().await?;
                Ok(Some(outcome))
            }
            Err(error) => {
                write.rollback().await?;
                Err(error)
            }
        }
    }

    async fn given_back(
        &self,
        periods: &[PeriodOf<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, StoreError> {
        Ok(select_given_back(self.db.pool(), periods, now).await?)
    }

    async fn expire_leases(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let mut write = self.db.begin_write().await?;
        let done = expire(write.conn(), now, limit).await?;
        write.commit().await?;
        Ok(done)
    }

    async fn forget(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let mut write = self.db.begin_write().await?;
        let done = delete_request_ids(write.conn(), before, limit).await?;
        write.commit().await?;
        Ok(done)
    }

    async fn readiness(&self) -> Result<(), crate::db::NotReady> {
        self.db.readiness().await
    }

    async fn close(&self) {
        self.db.close().await;
    }
}
