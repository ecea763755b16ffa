//! The counter store on PostgreSQL: a batch is one statement, its own
//! transaction, which also stores the batch's request ids and fails whole if
//! one is in use; only then are the ids claimed first, in a transaction with
//! that statement. Every counter change commits synchronously.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, migrate::Migrator};

use crate::{
    allocator::{
        batch::{Batch, Claim, Counted, Plan, Won},
        numbers::LEASE_EXPIRED,
        series::SeriesConfig,
        sql_store::{
            self, BATCH_COLUMNS, BatchRow, Engine, Pick, RANGE_COLUMNS, STATE_COLUMNS,
            SqlCounterStore,
        },
        store::{
            Advance, Change, ChangeError, Changed, ConfigureError, Held, KeyedStateRow, NumberAt,
            Outcome, PeriodOf, RangeRow, Reissue, SeriesRow, Stamp, StateChange, StateRow,
            StateWrite, StoreError, kind_of,
        },
    },
    db::{KeptConnection, begin_durable, begin_durable_by_key_on},
};

/// The allocator's PostgreSQL migrations, used by start-up and by tests.
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres/allocator");

/// The counter store on a PostgreSQL pool.
pub type PgCounterStore = SqlCounterStore<PgEngine>;

impl PgCounterStore {
    /// A store on an already-migrated pool.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        SqlCounterStore(PgEngine {
            allocations: Arc::new(KeptConnection::new(pool.clone())),
            changes: Arc::new(KeptConnection::new(pool.clone())),
            pool,
        })
    }
}

/// PostgreSQL as the counter statements see it.
#[derive(Debug, Clone)]
pub struct PgEngine {
    pool: PgPool,
    /// The connection kept for the allocation statements, which a group
    /// commit lane runs one after another.
    allocations: Arc<KeptConnection>,
    /// The connection kept for the transactions of batched state changes.
    changes: Arc<KeptConnection>,
}

/// A counter as the increment statement returns it.
#[derive(sqlx::FromRow)]
struct IncrementedRow {
    tenant_id: String,
    series: String,
    period: String,
    last_value: i64,
    format: String,
    /// The setting the statement's commit ran under.
    synchronous_commit: String,
}

/// Locks the existing counters of the batch, in their order.
#[tracing::instrument(name = "db.counters.lock", skip_all, err(level = "debug"))]
async fn lock_counters(
    conn: &mut PgConnection,
    counters: &[(&str, &str, &str)],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT 1 FROM counters
         WHERE (tenant_id, series, period) IN
               (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]))
         ORDER BY tenant_id, series, period FOR UPDATE",
    )
    .bind(counters.iter().map(|c| c.0).collect::<Vec<_>>())
    .bind(counters.iter().map(|c| c.1).collect::<Vec<_>>())
    .bind(counters.iter().map(|c| c.2).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks a series row: shared against `ConfigureSeries` (which takes
/// it exclusively) for an advance, exclusively for a configuration.
#[tracing::instrument(name = "db.series.lock", skip_all, err(level = "debug"))]
async fn lock_series(
    conn: &mut PgConnection,
    tenant: &str,
    series: &str,
    exclusive: bool,
) -> Result<Option<SeriesRow>, sqlx::Error> {
    let statement = if exclusive {
        "SELECT series, format, reset, timezone, start_at, gap_policy FROM series
         WHERE tenant_id = $1 AND series = $2 FOR UPDATE"
    } else {
        "SELECT series, format, reset, timezone, start_at, gap_policy FROM series
         WHERE tenant_id = $1 AND series = $2 FOR KEY SHARE"
    };
    sqlx::query_as(statement)
        .bind(tenant)
        .bind(series)
        .fetch_optional(conn)
        .await
}

/// A number's state row, locked until the transaction ends.
#[tracing::instrument(name = "db.number_states.lock", skip_all, err(level = "debug"))]
async fn lock_state(
    conn: &mut PgConnection,
    at: NumberAt<'_>,
) -> Result<Option<StateRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {STATE_COLUMNS} FROM number_states
         WHERE tenant_id = $1 AND series = $2 AND period = $3 AND number = $4 FOR UPDATE"
    )))
    .bind(at.tenant.as_str())
    .bind(at.series.as_str())
    .bind(at.period)
    .bind(at.number)
    .fetch_optional(conn)
    .await
}

/// A batch's numbers as the statements take them: one array per column.
struct Keys<'a> {
    tenants: Vec<&'a str>,
    series: Vec<&'a str>,
    periods: Vec<&'a str>,
    numbers: Vec<i64>,
}

impl<'a> Keys<'a> {
    fn of(writes: &'a [StateWrite<'a>]) -> Self {
        Self {
            tenants: writes.iter().map(|w| w.at.tenant.as_str()).collect(),
            series: writes.iter().map(|w| w.at.series.as_str()).collect(),
            periods: writes.iter().map(|w| w.at.period).collect(),
            numbers: writes.iter().map(|w| w.at.number).collect(),
        }
    }
}

/// Per change of a batch, in order, the last range of its number's period
/// starting at or before the number; and the state rows of its numbers,
/// locked until the transaction ends, in key order: one statement.
///
/// Each row is looked up by a read of its own, the keys sorted as the
/// table's key sorts them (`COLLATE "C"`), in a transaction with sequential
/// scans off ([`begin_durable_by_key_on`]): a join of the keys with the
/// table, planned once while the table was empty, hashed the whole table
/// for every batch until the next `ANALYZE`.
#[tracing::instrument(name = "db.number_states.lock_many", skip_all, fields(numbers = keys.numbers.len()), err(level = "debug"))]
async fn read_and_lock(
    conn: &mut PgConnection,
    keys: &Keys<'_>,
) -> Result<(Vec<KeyedStateRow>, Vec<Option<RangeRow>>), sqlx::Error> {
    let read: Vec<BatchRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        r#"WITH read ({BATCH_COLUMNS}) AS (
             SELECT w.nth, w.tenant_id, w.series, w.period, r.*, NULL::bigint, NULL, NULL,
                    NULL::timestamptz, NULL, NULL::timestamptz
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])
                  WITH ORDINALITY AS w (tenant_id, series, period, number, nth)
             CROSS JOIN LATERAL (
                 SELECT {RANGE_COLUMNS} FROM allocations
                 WHERE tenant_id = w.tenant_id AND series = w.series AND period = w.period
                   AND first_value <= w.number
                 ORDER BY first_value DESC LIMIT 1) r
             UNION ALL
             SELECT 0, s.tenant_id, s.series, s.period, NULL, NULL, NULL, s.reason,
                    s.request_id, NULL, NULL, NULL, s.number, s.state, s.reference,
                    s.updated_at, s.origin, s.expires_at
             FROM (SELECT DISTINCT tenant_id COLLATE "C" AS tenant_id,
                                   series COLLATE "C" AS series,
                                   period COLLATE "C" AS period, number
                   FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])
                        AS k (tenant_id, series, period, number)
                   ORDER BY 1, 2, 3, 4) k
             CROSS JOIN LATERAL (
                 SELECT * FROM number_states n
                 WHERE n.tenant_id = k.tenant_id AND n.series = k.series
                   AND n.period = k.period AND n.number = k.number
                 FOR UPDATE) s)
         SELECT * FROM read"#
    )))
    .bind(&keys.tenants)
    .bind(&keys.series)
    .bind(&keys.periods)
    .bind(&keys.numbers)
    .fetch_all(conn)
    .await?;
    Ok(sql_store::split_read(read, keys.numbers.len()))
}

/// Stores the rows of a batch's changes: updates of rows read and locked,
/// or first rows; returns how many it stored. A first row another
/// transaction stored meanwhile is not stored. Each row updated is found by
/// its key, then written by its place (`ctid`), as [`read_and_lock`] reads.
#[tracing::instrument(name = "db.number_states.write_many", skip_all, fields(rows = rows.len()), err(level = "debug"))]
async fn write_states(
    conn: &mut PgConnection,
    rows: &[KeyedStateRow],
    first: bool,
) -> Result<usize, sqlx::Error> {
    let statement = if first {
        "INSERT INTO number_states (tenant_id, series, period, number, state, reference, reason,
                                    updated_at, expires_at, origin, request_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                              $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[],
                              $10::text[], $11::text[])
         ON CONFLICT DO NOTHING
         RETURNING number"
    } else {
        "UPDATE number_states s
         SET state = u.state, reference = u.reference, reason = u.reason,
             updated_at = u.updated_at, expires_at = u.expires_at
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                     $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[])
              AS u (tenant_id, series, period, number, state, reference, reason, updated_at,
                    expires_at, origin, request_id)
              CROSS JOIN LATERAL (
                  SELECT n.ctid FROM number_states n
                  WHERE n.tenant_id = u.tenant_id AND n.series = u.series
                    AND n.period = u.period AND n.number = u.number
                  LIMIT 1) AS n
         WHERE s.ctid = n.ctid
         RETURNING s.number"
    };
    let stored: Vec<i64> = sqlx::query_scalar(statement)
        .bind(
            rows.iter()
                .map(|r| r.tenant_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.series.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.period.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.row.number).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.row.state.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.row.reference.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.row.reason.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.row.updated_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.row.expires_at).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.row.origin.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.row.request_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(conn)
        .await?;
    Ok(stored.len())
}

/// For each of `periods`, whether it has a number given back by `now`
/// (released, or reserved with a lease ended), in order: one statement
/// that reads none of the reservations still held.
///
/// Each connection plans it once, generically. Written with `EXISTS`, that
/// plan may walk a series' held reservations (or the whole table) hoping to
/// meet an ended lease within a few rows. So the lowest released number is
/// read as the first entry of its state, and the ended leases are counted,
/// which no plan does faster than through an index by lease end; they are
/// few, as the sweep stores them as released.
#[tracing::instrument(name = "db.number_states.given_back", skip_all, fields(periods = periods.len()), err(level = "debug"))]
async fn select_given_back(
    pool: &PgPool,
    periods: &[PeriodOf<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<bool>, sqlx::Error> {
    let found: Vec<(i64,)> = sqlx::query_as(
        "SELECT p.nth FROM UNNEST($1::text[], $2::text[], $3::text[])
                            WITH ORDINALITY AS p (tenant_id, series, period, nth)
         WHERE (SELECT min(number) FROM number_states s
                WHERE s.tenant_id = p.tenant_id AND s.series = p.series
                  AND s.period = p.period AND s.state = 'released'
                  AND s.state <> 'confirmed') IS NOT NULL
            OR (SELECT count(*) FROM number_states s
                WHERE s.tenant_id = p.tenant_id AND s.series = p.series
                  AND s.period = p.period AND s.state = 'reserved'
                  AND s.expires_at <= $4) > 0",
    )
    .bind(
        periods
            .iter()
            .map(|p| p.tenant.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        periods
            .iter()
            .map(|p| p.series.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(periods.iter().map(|p| p.period).collect::<Vec<_>>())
    .bind(now)
    .fetch_all(pool)
    .await?;
    Ok(sql_store::found_among(
        periods.len(),
        found.into_iter().map(|(nth,)| nth - 1),
    ))
}

/// Gives back up to `limit` reservations whose lease ended by `now`, by
/// their series' policy, as of the lease's end. Rows another transaction
/// holds are left for the next sweep.
#[tracing::instrument(name = "db.number_states.expire", skip_all, err(level = "debug"))]
async fn expire(pool: &PgPool, now: DateTime<Utc>, limit: u32) -> Result<u64, sqlx::Error> {
    // The ended leases are read through the index by lease end, locked,
    // and each row is then written by its place (`ctid`), joined one by
    // one: written as `ctid = ANY(ARRAY(...))`, a plan made while the table
    // was small read every entry of the index by state (all the numbers
    // voided, released or held) to find them. The policy is looked up per
    // row: a join with `series` read that table's index up to the batch's
    // last tenant. A row changed since it was picked is checked again and,
    // no longer an ended reservation, left alone.
    let done = sqlx::query(
        "WITH ended AS (
             SELECT ctid FROM number_states
             WHERE state = 'reserved' AND expires_at <= $1
             ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         UPDATE number_states n
         SET state = CASE (SELECT gap_policy FROM series s
                           WHERE s.tenant_id = n.tenant_id AND s.series = n.series)
                     WHEN 'reissue' THEN 'released' ELSE 'voided' END,
             reason = $3, updated_at = n.expires_at
         FROM ended
         WHERE n.ctid = ended.ctid AND n.state = 'reserved' AND n.expires_at <= $1",
    )
    .bind(now)
    .bind(i64::from(limit))
    .bind(LEASE_EXPIRED)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Forgets up to `limit` request ids first used before `before`, oldest
/// first. Small batches keep each write short beside the allocations.
#[tracing::instrument(name = "db.request_ids.delete", skip_all, err(level = "debug"))]
async fn delete_request_ids(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    // The rows are named by their place (`ctid`): a generic plan of a join
    // on the key reads the whole table, taking the limit for a tenth of it.
    // An id claimed again meanwhile has a new place and a new age, and
    // stays.
    let done = sqlx::query(
        "DELETE FROM request_ids
         WHERE ctid = ANY(ARRAY(
               SELECT ctid FROM request_ids
               WHERE created_at < $1 ORDER BY created_at LIMIT $2))
           AND created_at < $1",
    )
    .bind(before)
    .bind(i64::from(limit))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
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
    let kinds: Vec<&str> = claims.iter().map(|c| c.kind).collect();
    let won: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO request_ids (tenant_id, request_id, series, count, kind, created_at)
         SELECT claim.tenant_id, claim.request_id, claim.series, claim.count, claim.kind, $5
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $7::text[])
              AS claim (tenant_id, request_id, series, count, kind)
         ON CONFLICT (tenant_id, request_id)
         DO UPDATE SET series = EXCLUDED.series, count = EXCLUDED.count, kind = EXCLUDED.kind,
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
    .bind(&kinds)
    .fetch_all(conn)
    .await?;
    Ok(won.into_iter().collect())
}

/// The statement of [`increment`], with `$ids` after the insert of its
/// request ids.
macro_rules! increment_statement {
    ($ids:literal) => {
        concat!(
            "WITH durable AS (SELECT set_config('synchronous_commit', 'on', true)),
     used AS (
         SELECT * FROM UNNEST($21::text[], $22::text[], $23::bool[])
                       AS used (tenant_id, series, settled)),
     created AS (
         INSERT INTO series (tenant_id, series, format, reset, timezone, start_at)
         SELECT tenant_id, series, $17, $18, $19, $20::bigint FROM used WHERE NOT settled
         ON CONFLICT (tenant_id, series) DO NOTHING
         RETURNING tenant_id, series, format, reset, timezone, start_at, gap_policy),
     locked AS (
         SELECT tenant_id, series, format, reset, timezone, start_at, gap_policy FROM series
         WHERE (tenant_id, series) IN (SELECT tenant_id, series FROM used WHERE NOT settled)
         FOR KEY SHARE),
     -- Settled series never change their calendar: no lock is needed.
     unlocked AS (
         SELECT tenant_id, series, format, reset, timezone, start_at, gap_policy FROM series
         WHERE (tenant_id, series) IN (SELECT tenant_id, series FROM used WHERE settled)),
     -- A series another call created since this statement began is in
     -- none: the check below fails the statement, and a retry sees it.
     config AS (SELECT * FROM created UNION ALL SELECT * FROM locked
                UNION ALL SELECT * FROM unlocked),
     planned AS (
         SELECT total.tenant_id, total.series, total.period, total.count,
                CASE WHEN config.reset = total.reset AND config.timezone = total.timezone
                          AND config.gap_policy = total.gap_policy
                     THEN config.start_at - 1
                     ELSE series_changed() END AS base
         FROM durable,
              UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                     $26::text[])
              AS total (tenant_id, series, period, count, reset, timezone, gap_policy)
              LEFT JOIN config USING (tenant_id, series)),
     bumped AS (
         INSERT INTO counters (tenant_id, series, period, last_value, base)
         SELECT tenant_id, series, period, base + count, base FROM planned
         ON CONFLICT (tenant_id, series, period)
         DO UPDATE SET last_value = counters.last_value + (EXCLUDED.last_value - EXCLUDED.base)
         RETURNING tenant_id, series, period, last_value),
     ranges AS (
         SELECT call.tenant_id, call.series, call.period, call.date, call.count,
                call.request_id, call.expires_at, call.reserved_at, config.format,
                bumped.last_value - call.tail - call.count + 1 AS first_value
         FROM UNNEST($7::text[], $8::text[], $9::text[], $10::date[], $11::bigint[],
                     $12::bigint[], $13::text[], $24::timestamptz[], $25::timestamptz[])
              AS call (tenant_id, series, period, date, count, tail, request_id, expires_at,
                       reserved_at)
         JOIN bumped USING (tenant_id, series, period)
         JOIN config USING (tenant_id, series)),
     recorded AS (
         INSERT INTO allocations (tenant_id, series, period, first_value, count, kind,
                                  request_id, format, date, created_at)
         SELECT tenant_id, series, period, first_value, count,
                CASE WHEN expires_at IS NULL THEN 'allocate' ELSE 'reserve' END,
                request_id, format, date, $14
         FROM ranges),
     -- A reservation's number is held from the start.
     held AS (
         INSERT INTO number_states (tenant_id, series, period, number, state, origin,
                                    expires_at, request_id, updated_at)
         SELECT tenant_id, series, period, first_value, 'reserved', 'reserve',
                expires_at, request_id, reserved_at
         FROM ranges WHERE expires_at IS NOT NULL),
     keyed AS (
         INSERT INTO request_ids (tenant_id, request_id, series, count, kind, period,
                                  first_value, format, date, created_at)
         SELECT tenant_id, request_id, series, count,
                CASE WHEN expires_at IS NULL THEN 'allocate' ELSE 'reserve' END,
                period, first_value, format, date, $14
         FROM ranges WHERE request_id IS NOT NULL ",
            $ids,
            "
         RETURNING 1)
     SELECT tenant_id, series, period, last_value, config.format,
            current_setting('synchronous_commit') AS synchronous_commit,
            -- Read by nobody: evaluated, it fails the statement if an id
            -- of the plan was not stored.
            CASE WHEN (SELECT count(*) FROM keyed) = $16 THEN 0
                 ELSE request_id_in_use() END AS ids_checked
     FROM bumped JOIN config USING (tenant_id, series)"
        )
    };
}

/// [`increment`] where every request id is new: a plain insert, which fails
/// on a unique violation of `request_ids_pkey` if one is not.
const INCREMENT_NEW: &str = increment_statement!("");

/// [`increment`] where the request ids were claimed in its transaction: it
/// stores their first numbers. An id another call holds fails it with
/// [`ID_IN_USE`].
const INCREMENT_CLAIMED: &str = increment_statement!(
    "ON CONFLICT (tenant_id, request_id)
         DO UPDATE SET series = EXCLUDED.series, count = EXCLUDED.count, kind = EXCLUDED.kind,
                       period = EXCLUDED.period, first_value = EXCLUDED.first_value,
                       format = EXCLUDED.format, date = EXCLUDED.date,
                       created_at = EXCLUDED.created_at
         WHERE request_ids.first_value IS NULL OR request_ids.created_at < $15"
);

/// Creates the series of the plan that do not exist yet with `defaults`,
/// advances each period's counter by its total, starting absent periods at
/// their series' `start_at` (one upsert, so concurrent first calls cannot
/// both start a period), records the ranges with the template and date they
/// read with, and stores each request id with its first number: one
/// statement; a reservation's number gets its state row, held until its
/// lease ends. With [`Ids::New`] a request id is stored if it is new, and
/// any other fails the statement with a unique violation of
/// `request_ids_pkey` ([`id_taken`]); with [`Ids::Claimed`], if it is new,
/// past the window, or claimed by this transaction, and one held by another
/// call instead fails it with [`ID_IN_USE`]. A failed statement changes
/// nothing. The series rows are locked against `ConfigureSeries` and checked
/// against the calendars the calls assumed; a change fails the statement
/// with [`SERIES_CHANGED`].
///
/// Run alone it is its own transaction (one round trip), and sets
/// `synchronous_commit` for it, so its commit returns only once flushed to
/// disk whatever the server, database, role or connection defaults to.
#[tracing::instrument(name = "db.counters.increment", skip_all, fields(counters = plan.increments.len()), err(level = "debug"))]
async fn increment<'e>(
    executor: impl PgExecutor<'e>,
    plan: &Plan<'_>,
    ids: Ids,
    defaults: &SeriesConfig,
    stamp: Stamp,
) -> Result<Vec<IncrementedRow>, sqlx::Error> {
    let totals = &plan.increments;
    let records = &plan.records;
    let statement = match ids {
        Ids::New => INCREMENT_NEW,
        Ids::Claimed => INCREMENT_CLAIMED,
    };
    sqlx::query_as(statement)
        .bind(totals.iter().map(|t| t.tenant).collect::<Vec<_>>())
        .bind(totals.iter().map(|t| t.series).collect::<Vec<_>>())
        .bind(totals.iter().map(|t| t.period).collect::<Vec<_>>())
        .bind(totals.iter().map(|t| t.total).collect::<Vec<_>>())
        .bind(
            totals
                .iter()
                .map(|t| t.calendar.reset.name())
                .collect::<Vec<_>>(),
        )
        .bind(
            totals
                .iter()
                .map(|t| t.calendar.zone.name())
                .collect::<Vec<_>>(),
        )
        .bind(records.iter().map(|r| r.tenant).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.series).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.period).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.date).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.count).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.tail).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.request_id).collect::<Vec<_>>())
        .bind(stamp.now)
        .bind(stamp.forget_before)
        .bind(i64::try_from(plan.ids_recorded()).unwrap_or(i64::MAX))
        .bind(defaults.format.template())
        .bind(defaults.calendar.reset.name())
        .bind(defaults.calendar.zone.name())
        .bind(defaults.start_at)
        .bind(plan.series.iter().map(|s| s.tenant).collect::<Vec<_>>())
        .bind(plan.series.iter().map(|s| s.series).collect::<Vec<_>>())
        .bind(plan.series.iter().map(|s| s.settled).collect::<Vec<_>>())
        .bind(
            records
                .iter()
                .map(|r| r.lease.map(|l| l.ends))
                .collect::<Vec<_>>(),
        )
        .bind(
            records
                .iter()
                .map(|r| r.lease.map(|l| l.at))
                .collect::<Vec<_>>(),
        )
        .bind(totals.iter().map(|t| t.policy.name()).collect::<Vec<_>>())
        .fetch_all(executor)
        .await
}

/// How the request ids of an increment's plan stand.
#[derive(Debug, Clone, Copy)]
enum Ids {
    /// None was claimed: each is inserted as new.
    New,
    /// Each was claimed in the increment's transaction.
    Claimed,
}

/// The SQLSTATE of `request_id_in_use()` (see the migrations).
const ID_IN_USE: &str = "NB001";

/// Whether an increment failed because a request id of its plan was not
/// new: stored by another call, or claimed and held.
fn id_taken(error: &sqlx::Error) -> bool {
    failed_with(error, ID_IN_USE)
        || error.as_database_error().is_some_and(|db| {
            db.is_unique_violation() && db.constraint() == Some("request_ids_pkey")
        })
}

/// The SQLSTATE of `series_changed()` (see the migrations).
const SERIES_CHANGED: &str = "NB002";

/// Whether the statement failed with the SQLSTATE `code`.
fn failed_with(error: &sqlx::Error, code: &str) -> bool {
    error
        .as_database_error()
        .and_then(sqlx::error::DatabaseError::code)
        .is_some_and(|found| found == code)
}

/// A failed increment as the store reports it.
fn increment_failed(error: sqlx::Error) -> StoreError {
    if failed_with(&error, SERIES_CHANGED) {
        StoreError::SeriesChanged
    } else {
        error.into()
    }
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
            period: row.period,
            last_value: row.last_value,
            format: row.format,
        })
        .collect())
}

#[async_trait]
impl Engine for PgEngine {
    type Db = Postgres;

    const BY_STATE: &'static str = "number_states";

    const LEASES: &'static str = "number_states";

    const ADVANCES: &'static str = "allocations";

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn allocate(
        &self,
        batch: &Batch<'_>,
        defaults: &SeriesConfig,
        stamp: Stamp,
    ) -> Result<Vec<Outcome>, StoreError> {
        // Without request ids the batch is one statement, its own transaction.
        if batch.claims().is_empty() {
            let plan = batch.plan(&Won::default());
            let mut conn = self.allocations.take().await?;
            let rows = increment(&mut *conn, &plan, Ids::New, defaults, stamp)
                .await
                .map_err(increment_failed)?;
            conn.keep();
            return batch.outcomes(&plan, &flushed(rows)?, &HashMap::new());
        }
        // Most ids are new: first try as if every one were, in one
        // statement, which fails whole if one is not.
        let plan = batch.plan(&batch.all_won());
        let mut conn = self.allocations.take().await?;
        match increment(&mut *conn, &plan, Ids::New, defaults, stamp).await {
            Ok(rows) => {
                conn.keep();
                return batch.outcomes(&plan, &flushed(rows)?, &HashMap::new());
            }
            Err(error) if id_taken(&error) => conn.keep(),
            Err(error) => return Err(increment_failed(error)),
        }

        // Some id is in use: claim the ids first, then allocate for the
        // calls whose ids were won, and repeat the others' first answers.
        // The existing counters are locked before the ids, in the order the
        // statement above locks them, so two such transactions cannot
        // deadlock on them.
        let mut tx = begin_durable(&self.pool).await?;
        lock_counters(&mut tx, &batch.counters()).await?;
        let won = claim(&mut tx, batch.claims(), stamp).await?;
        let held = sql_store::read_held::<Postgres>(&mut tx, batch, &won, stamp).await?;
        let plan = batch.plan(&won);
        // Every id of this plan was claimed here: ID_IN_USE now is a fault.
        let rows = if plan.is_empty() {
            Vec::new()
        } else {
            increment(&mut *tx, &plan, Ids::Claimed, defaults, stamp)
                .await
                .map_err(increment_failed)?
        };
        tx.commit().await?;
        batch.outcomes(&plan, &flushed(rows)?, &held)
    }

    async fn configure(
        &self,
        tenant: &str,
        series: &str,
        defaults: &SeriesConfig,
        change: Change<'_>,
    ) -> Result<SeriesConfig, ConfigureError> {
        let mut tx = begin_durable(&self.pool).await?;
        sql_store::insert_series(&mut *tx, tenant, series, defaults).await?;
        let locked = lock_series(&mut tx, tenant, series, true)
            .await?
            .ok_or_else(|| StoreError::Internal("series vanished once created".into()))?;
        let config = sql_store::configure::<Postgres>(&mut tx, &locked, tenant, change).await?;
        tx.commit().await?;
        Ok(config)
    }

    async fn change_state(
        &self,
        at: NumberAt<'_>,
        range: &RangeRow,
        change: StateChange<'_>,
        held: Held,
    ) -> Result<Option<StateRow>, ChangeError> {
        // Two first changes of one number race on its insert: the loser runs
        // again, and then finds the winner's row locked or stored.
        for _ in 0..2 {
            let mut tx = begin_durable(&self.pool).await?;
            let current = lock_state(&mut tx, at).await?;
            match sql_store::apply_state_change::<Postgres>(
                &mut tx, at, range, current, change, held,
            )
            .await
            {
                Ok(row) => {
                    tx.commit().await?;
                    return Ok(row);
                }
                Err(ChangeError::Raced) => {}
                Err(error) => return Err(error),
            }
        }
        Err(StoreError::Unavailable("a number's state kept changing; retry".into()).into())
    }

    async fn advance(
        &self,
        advance: Advance<'_>,
        defaults: &SeriesConfig,
    ) -> Result<(SeriesConfig, i64), StoreError> {
        let (tenant, series) = (advance.tenant.as_str(), advance.series.as_str());
        let mut tx = begin_durable(&self.pool).await?;
        sql_store::insert_series(&mut *tx, tenant, series, defaults).await?;
        let locked = lock_series(&mut tx, tenant, series, false)
            .await?
            .ok_or_else(|| StoreError::Internal("series vanished once created".into()))?;
        let advanced = sql_store::advance::<Postgres>(&mut tx, &locked, advance).await?;
        tx.commit().await?;
        Ok(advanced)
    }

    async fn change_states(&self, writes: &[StateWrite<'_>]) -> Result<Vec<Changed>, StoreError> {
        let mut conn = self.changes.take().await?;
        let mut tx = begin_durable_by_key_on(&mut conn).await?;
        let keys = Keys::of(writes);
        let (existing, ranges) = read_and_lock(&mut tx, &keys).await?;
        let planned = sql_store::plan_changes(writes, existing, ranges);
        if !planned.updates.is_empty() {
            write_states(&mut tx, &planned.updates, false).await?;
        }
        if !planned.inserts.is_empty()
            && write_states(&mut tx, &planned.inserts, true).await? < planned.inserts.len()
        {
            // Another write stored a first state meanwhile: none of this.
            tx.rollback().await?;
            conn.keep();
            return Ok(writes.iter().map(|_| Err(ChangeError::Raced)).collect());
        }
        tx.commit().await?;
        conn.keep();
        Ok(planned.answers)
    }

    async fn reissue(
        &self,
        take: Reissue<'_>,
        stamp: Stamp,
    ) -> Result<Option<Outcome>, StoreError> {
        let mut tx = begin_durable(&self.pool).await?;
        if let Some(id) = take.request_id {
            let asked = Claim {
                tenant: take.tenant.as_str(),
                request_id: id.as_str(),
                series: take.series.as_str(),
                count: 1,
                kind: kind_of(take.lease.as_ref()),
            };
            let won = claim(&mut tx, &[asked], stamp).await?;
            if !won.contains(asked.tenant, asked.request_id) {
                let first = sql_store::select_key::<Postgres>(
                    &mut tx,
                    asked.tenant,
                    asked.request_id,
                    stamp.forget_before,
                )
                .await?;
                return Ok(first.map(|first| first.repeated_by(asked.series, 1, asked.kind)));
            }
        }
        let pick = Pick {
            by_state: Self::BY_STATE,
            leases: Self::LEASES,
            // Another transaction taking the same number skips it, not waits.
            lock: "FOR UPDATE SKIP LOCKED",
        };
        let Some(number) = sql_store::take_back::<Postgres>(&mut tx, take, stamp.now, pick).await?
        else {
            return Ok(None);
        };
        let outcome = sql_store::reissued::<Postgres>(&mut tx, take, number).await?;
        tx.commit().await?;
        Ok(Some(outcome))
    }

    async fn given_back(
        &self,
        periods: &[PeriodOf<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, StoreError> {
        Ok(select_given_back(&self.pool, periods, now).await?)
    }

    async fn expire_leases(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        // Not made durable: a sweep a crash undoes runs again.
        Ok(expire(&self.pool, now, limit).await?)
    }

    async fn forget(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        // Not made durable: an id a crash brings back is still past the window.
        Ok(delete_request_ids(&self.pool, before, limit).await?)
    }

    async fn readiness(&self) -> Result<(), crate::db::NotReady> {
        crate::db::ping(&self.pool, &MIGRATOR).await
    }

    async fn close(&self) {
        self.allocations.release();
        self.changes.release();
        self.pool.close().await;
    }
}
