//! The counter store written once over either engine, and the statements both
//! engines run alike: one text each (`$N` placeholders suit both). Only the
//! statements that take a batch as arrays, the locking reads, and the write
//! path differ per engine, and live in its file.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ops::RangeInclusive,
};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{AssertSqlSafe, Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use crate::{
    allocator::{
        batch::{Batch, Won},
        numbers,
        series::{SeriesConfig, SeriesName},
        store::{
            Advance, Call, Change, ChangeError, Changed, ConfigureError, CounterStore, Grant, Held,
            KeyRow, KeyedStateRow, KindTotal, Ledger, NumberAt, Outcome, PeriodOf, RangeRow,
            RangesAfter, Reissue, SeriesRow, Stamp, StateChange, StateRow, StateTotal, StateWrite,
            StatedRow, StatesAfter, StoreError,
        },
    },
    request_id::RequestId,
    server::Store,
    tenant::TenantId,
};

/// What differs per engine: its pool, how it runs a batch of allocations, and
/// its durable write path.
#[async_trait]
pub(crate) trait Engine: Send + Sync + 'static {
    /// The database kind.
    type Db: Database;

    /// `number_states` as a statement that reads numbers by state names it:
    /// with any hint the engine needs to read them through
    /// `number_states_by_state` rather than every number of the period.
    /// That index leaves out confirmed numbers, so such a statement says
    /// `state <> 'confirmed'` among its own terms.
    const BY_STATE: &'static str;

    /// `number_states` as a statement that reads a series' reservations by
    /// the end of their lease names it: with any hint the engine needs to
    /// read them through `number_states_leases`.
    const LEASES: &'static str;

    /// `allocations` as a statement that reads only the ranges skipped
    /// names it: with any hint the engine needs to read them through
    /// `allocations_advances` rather than every range of the period.
    const ADVANCES: &'static str;

    /// The pool reads go through.
    fn pool(&self) -> &Pool<Self::Db>;

    /// Runs the batch in one durable transaction, as
    /// [`CounterStore::allocate_many`] does.
    async fn allocate(
        &self,
        batch: &Batch<'_>,
        defaults: &SeriesConfig,
        stamp: Stamp,
    ) -> Result<Vec<Outcome>, StoreError>;

    /// Runs [`configure`] in the engine's durable write, on the series row
    /// locked against allocations.
    async fn configure(
        &self,
        tenant: &str,
        series: &str,
        defaults: &SeriesConfig,
        change: Change<'_>,
    ) -> Result<SeriesConfig, ConfigureError>;

    /// Runs [`advance`] in the engine's durable write, on the series row
    /// (created with `defaults` if absent) locked against `ConfigureSeries`.
    async fn advance(
        &self,
        advance: Advance<'_>,
        defaults: &SeriesConfig,
    ) -> Result<(SeriesConfig, i64), StoreError>;

    /// Runs [`apply_state_change`] in the engine's durable write, on the
    /// number's state row locked (or its absence made safe).
    async fn change_state(
        &self,
        at: NumberAt<'_>,
        range: &RangeRow,
        change: StateChange<'_>,
        held: Held,
    ) -> Result<Option<StateRow>, ChangeError>;

    /// Runs [`CounterStore::change_states`] in the engine's durable write:
    /// the rows of the batch's numbers read and locked, the changes planned
    /// by [`plan_changes`], its rows written.
    async fn change_states(&self, writes: &[StateWrite<'_>]) -> Result<Vec<Changed>, StoreError>;

    /// Runs [`CounterStore::reissue`] in the engine's durable write.
    async fn reissue(&self, take: Reissue<'_>, stamp: Stamp)
    -> Result<Option<Outcome>, StoreError>;

    /// Runs [`CounterStore::given_back`]: one statement over the distinct
    /// periods, reading them as [`take_back`] does.
    async fn given_back(
        &self,
        periods: &[PeriodOf<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, StoreError>;

    /// Runs [`CounterStore::expire_leases`] in the engine's write path.
    async fn expire_leases(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;

    /// Forgets up to `limit` request ids first used before `before`, oldest
    /// first, in the engine's write path.
    async fn forget(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;

    /// `Ok` if the database takes calls now, else why not.
    async fn readiness(&self) -> Result<(), crate::db::NotReady>;

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
    for<'r> KeyRow: FromRow<'r, <E::Db as Database>::Row>,
    for<'r> KindTotal: FromRow<'r, <E::Db as Database>::Row>,
    for<'r> RangeRow: FromRow<'r, <E::Db as Database>::Row>,
    for<'r> StateRow: FromRow<'r, <E::Db as Database>::Row>,
    for<'r> StatedRow: FromRow<'r, <E::Db as Database>::Row>,
    for<'r> (i64,): FromRow<'r, <E::Db as Database>::Row>,
    for<'r> (i64, i64): FromRow<'r, <E::Db as Database>::Row>,
    for<'r> StateTotal: FromRow<'r, <E::Db as Database>::Row>,
    for<'q> &'q str: Encode<'q, E::Db> + Type<E::Db>,
    for<'q> i64: Encode<'q, E::Db> + Type<E::Db>,
    for<'q> DateTime<Utc>: Encode<'q, E::Db> + Type<E::Db>,
{
    async fn allocate_many(
        &self,
        calls: &[Call<'_>],
        defaults: &SeriesConfig,
        stamp: Stamp,
    ) -> Result<Vec<Outcome>, StoreError> {
        let batch = Batch::new(calls);
        if batch.reads_settings_apart() {
            return Err(StoreError::SeriesChanged);
        }
        self.0.allocate(&batch, defaults, stamp).await
    }

    async fn find(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
    ) -> Result<Option<SeriesConfig>, StoreError> {
        let row = select_series(self.0.pool(), tenant.as_str(), series.as_str()).await?;
        row.as_ref().map(SeriesRow::config).transpose()
    }

    async fn counter(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
    ) -> Result<Option<i64>, StoreError> {
        let value = select_counter(self.0.pool(), tenant.as_str(), series.as_str(), period).await?;
        Ok(value.map(|(value,)| value))
    }

    async fn configure(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        defaults: &SeriesConfig,
        change: Change<'_>,
    ) -> Result<SeriesConfig, ConfigureError> {
        self.0
            .configure(tenant.as_str(), series.as_str(), defaults, change)
            .await
    }

    async fn advance(
        &self,
        advance: Advance<'_>,
        defaults: &SeriesConfig,
    ) -> Result<(SeriesConfig, i64), StoreError> {
        self.0.advance(advance, defaults).await
    }

    async fn ledger(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        sample: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<Ledger>, StoreError> {
        let pool = self.0.pool();
        let (tenant, series) = (tenant.as_str(), series.as_str());
        let Some((last_value, base)) = select_period(pool, tenant, series, period).await? else {
            return Ok(None);
        };
        // Ranges are committed with their counter and lie above its earlier
        // values: those up to `last_value` are exactly the ones it counts,
        // whatever commits meanwhile.
        let at = LedgerAt {
            tenant,
            series,
            period,
            base,
            last_value,
        };
        let kinds = select_range_totals(pool, &at).await?;
        let recorded: i64 = kinds.iter().map(|kind| kind.numbers).sum();
        let states = select_state_totals(pool, &at, now).await?;
        // The holes take a walk over every range: only when some number is
        // in no range. The rows in them, when there are any, are looked up
        // hole by hole once every hole is known, else by another walk over
        // every range and row.
        let (holes, unranged) = if recorded == last_value - base {
            (Vec::new(), Vec::new())
        } else {
            let holes = select_holes(pool, &at, sample.into()).await?;
            let recorded_to = kinds.iter().map(|kind| kind.last).max();
            let recorded_to = recorded_to.unwrap_or(base).max(base);
            let unranged = if states.is_empty() {
                Vec::new()
            } else if holes.len() < usize::try_from(sample).unwrap_or(usize::MAX) {
                let after_last = recorded_to.checked_add(1).map(|first| first..=last_value);
                let mut unranged = Vec::new();
                for numbers in holes
                    .iter()
                    .map(|&(first, count)| first..=first + (count - 1))
                    .chain(after_last.filter(|numbers| !numbers.is_empty()))
                {
                    unranged.extend(select_hole_state_totals(pool, &at, numbers, now).await?);
                }
                unranged
            } else {
                select_unranged_state_totals(pool, &at, recorded_to, now).await?
            };
            (holes, unranged)
        };
        let reserved = |rows: &[StateTotal]| -> i64 {
            let rows = rows.iter().filter(|row| row.origin == "reserve");
            rows.map(|row| row.numbers).sum()
        };
        let reserve_ranges: i64 = kinds
            .iter()
            .filter(|kind| kind.kind == "reserve")
            .map(|kind| kind.numbers)
            .sum();
        // Orphans take a walk over the reservations: only when some are.
        let orphans = if reserved(&states) - reserved(&unranged) == reserve_ranges {
            Vec::new()
        } else {
            select_orphans(pool, &at, sample.into()).await?
        };
        Ok(Some(Ledger {
            last_value,
            base,
            kinds,
            holes,
            states,
            unranged,
            orphans,
        }))
    }

    async fn range_at(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        number: i64,
    ) -> Result<Option<RangeRow>, StoreError> {
        let (tenant, series) = (tenant.as_str(), series.as_str());
        let range = select_range_from(self.0.pool(), tenant, series, period, number).await?;
        Ok(range.filter(|range| range.holds(number)))
    }

    async fn ranges_after(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        after: RangesAfter,
    ) -> Result<Vec<RangeRow>, StoreError> {
        let (tenant, series, pool) = (tenant.as_str(), series.as_str(), self.0.pool());
        let advances = E::ADVANCES;
        Ok(select_ranges_after(pool, advances, tenant, series, period, after).await?)
    }

    async fn change_state(
        &self,
        at: NumberAt<'_>,
        range: &RangeRow,
        change: StateChange<'_>,
        held: Held,
    ) -> Result<Option<StateRow>, ChangeError> {
        self.0.change_state(at, range, change, held).await
    }

    async fn change_states(&self, writes: &[StateWrite<'_>]) -> Result<Vec<Changed>, StoreError> {
        self.0.change_states(writes).await
    }

    async fn reissue(
        &self,
        take: Reissue<'_>,
        stamp: Stamp,
    ) -> Result<Option<Outcome>, StoreError> {
        self.0.reissue(take, stamp).await
    }

    async fn given_back(
        &self,
        periods: &[PeriodOf<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, StoreError> {
        // Calls of one series share a group: each period is read once.
        let distinct: Vec<PeriodOf<'_>> = periods
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let found = self.0.given_back(&distinct, now).await?;
        let found: BTreeMap<_, _> = distinct.into_iter().zip(found).collect();
        Ok(periods.iter().map(|period| found[period]).collect())
    }

    async fn expire_leases(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        self.0.expire_leases(now, limit).await
    }

    async fn states_between(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        numbers: (i64, i64),
    ) -> Result<Vec<StateRow>, StoreError> {
        let (tenant, series) = (tenant.as_str(), series.as_str());
        Ok(select_states_between(self.0.pool(), tenant, series, period, numbers).await?)
    }

    async fn states_after(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        after: StatesAfter<'_>,
    ) -> Result<Vec<(StateRow, RangeRow)>, StoreError> {
        let (tenant, series) = (tenant.as_str(), series.as_str());
        let by_state = E::BY_STATE;
        let rows =
            select_states_after(self.0.pool(), by_state, tenant, series, period, after).await?;
        Ok(rows.into_iter().map(StatedRow::split).collect())
    }

    async fn first_answer(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        stamp: Stamp,
    ) -> Result<Option<KeyRow>, StoreError> {
        let mut conn = self.0.pool().acquire().await?;
        let (tenant, id) = (tenant.as_str(), request_id.as_str());
        Ok(select_key::<E::Db>(&mut conn, tenant, id, stamp.forget_before).await?)
    }

    async fn forget_request_ids(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.0.forget(before, limit).await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, SeriesConfig)>, StoreError> {
        let (tenant, after) = (tenant.as_str(), after.unwrap_or(""));
        let rows = select_page(self.0.pool(), tenant, after, limit.into()).await?;
        rows.into_iter()
            .map(|row| {
                let config = row.config()?;
                Ok((row.series, config))
            })
            .collect()
    }
}

#[async_trait]
impl<E: Engine> Store for SqlCounterStore<E> {
    async fn readiness(&self) -> Result<(), crate::db::NotReady> {
        self.0.readiness().await
    }

    async fn close(&self) {
        self.0.close().await;
    }
}

/// Stores what `change` makes of the locked series' settings. Runs on
/// `conn`, inside the caller's durable transaction, after the row was
/// locked against allocations.
pub(crate) async fn configure<DB>(
    conn: &mut DB::Connection,
    locked: &SeriesRow,
    tenant: &str,
    change: Change<'_>,
) -> Result<SeriesConfig, ConfigureError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    let current = locked.config()?;
    // Read after the lock: an allocation that began before it has committed.
    let in_use = select_in_use::<DB>(&mut *conn, tenant, &locked.series).await?;
    let new = change(&current, in_use).map_err(ConfigureError::Refused)?;
    update_series::<DB>(conn, tenant, &locked.series, &new).await?;
    Ok(new)
}

/// Checks that the locked series' calendar is still the one the advance
/// assumed, raises the period's counter and records the range skipped.
/// Runs on `conn`, inside the caller's durable transaction.
pub(crate) async fn advance<DB>(
    conn: &mut DB::Connection,
    locked: &SeriesRow,
    advance: Advance<'_>,
) -> Result<(SeriesConfig, i64), StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (i64, i64): FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> NaiveDate: Encode<'q, DB> + Type<DB>,
{
    let config = locked.config()?;
    if config.calendar != advance.calendar {
        return Err(StoreError::SeriesChanged);
    }
    // A period not begun starts at its series' start; one begun keeps the
    // start it began with, whatever the series says since.
    let counter = Counter {
        tenant: advance.tenant.as_str(),
        series: advance.series.as_str(),
        period: advance.period,
        base: config.start_at - 1,
    };
    let (before, base) = hold::<DB>(conn, &counter).await?;
    let after = raise::<DB>(conn, &counter, advance.at_least).await?;
    if after > before {
        let skipped = Skipped {
            counter: &counter,
            first: before + 1,
            count: after - before,
            format: config.format.template(),
            date: advance.date,
            reason: advance.reason,
            at: advance.now,
        };
        insert_skipped::<DB>(conn, &skipped).await?;
    } else if before == base {
        // Nothing handed out or skipped: the period stays not begun, so a
        // start set later still applies to it.
        forget_unbegun::<DB>(conn, &counter).await?;
    }
    Ok((config, after))
}

/// Holds a period's counter for the rest of the transaction, starting it at
/// `counter.base` if absent (nothing is handed out from it then); its value
/// and the value it started from.
#[tracing::instrument(name = "db.counters.hold", skip_all, err(level = "debug"))]
async fn hold<DB>(
    conn: &mut DB::Connection,
    counter: &Counter<'_>,
) -> Result<(i64, i64), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> (i64, i64): FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(
        "INSERT INTO counters (tenant_id, series, period, last_value, base)
         VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT (tenant_id, series, period)
         DO UPDATE SET last_value = counters.last_value
         RETURNING last_value, base",
    )
    .bind(counter.tenant)
    .bind(counter.series)
    .bind(counter.period)
    .bind(counter.base)
    .fetch_one(conn)
    .await
}

/// Deletes a period's counter that has handed out nothing.
#[tracing::instrument(name = "db.counters.forget_unbegun", skip_all, err(level = "debug"))]
async fn forget_unbegun<DB>(
    conn: &mut DB::Connection,
    counter: &Counter<'_>,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(
        "DELETE FROM counters
         WHERE tenant_id = $1 AND series = $2 AND period = $3 AND last_value = base",
    )
    .bind(counter.tenant)
    .bind(counter.series)
    .bind(counter.period)
    .execute(conn)
    .await?;
    Ok(())
}

/// A period's counter, and the value it starts from.
struct Counter<'a> {
    tenant: &'a str,
    series: &'a str,
    period: &'a str,
    base: i64,
}

/// A range an advance skipped, for the ledger.
struct Skipped<'a> {
    counter: &'a Counter<'a>,
    first: i64,
    count: i64,
    format: &'a str,
    date: NaiveDate,
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
    for<'q> NaiveDate: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(
        "INSERT INTO allocations
             (tenant_id, series, period, first_value, count, kind, reason, format, date, created_at)
         VALUES ($1, $2, $3, $4, $5, 'advance', $6, $7, $8, $9)",
    )
    .bind(skipped.counter.tenant)
    .bind(skipped.counter.series)
    .bind(skipped.counter.period)
    .bind(skipped.first)
    .bind(skipped.count)
    .bind(skipped.reason)
    .bind(skipped.format)
    .bind(skipped.date)
    .bind(skipped.at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Raises a period's counter to `at_least`, starting the period there if
/// absent; never lowers it. Returns the counter.
#[tracing::instrument(name = "db.counters.raise", skip_all, err(level = "debug"))]
async fn raise<DB>(
    conn: &mut DB::Connection,
    counter: &Counter<'_>,
    at_least: i64,
) -> Result<i64, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    // CASE rather than GREATEST (PostgreSQL) or max() (SQLite): both have it.
    let (value,) = sqlx::query_as(
        "INSERT INTO counters (tenant_id, series, period, last_value, base)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant_id, series, period)
         DO UPDATE SET last_value = CASE WHEN excluded.last_value > counters.last_value
                                         THEN excluded.last_value
                                         ELSE counters.last_value END
         RETURNING last_value",
    )
    .bind(counter.tenant)
    .bind(counter.series)
    .bind(counter.period)
    .bind(at_least)
    .bind(counter.base)
    .fetch_one(conn)
    .await?;
    Ok(value)
}

/// Creates a series with `config` unless it exists.
#[tracing::instrument(name = "db.series.insert", skip_all, err(level = "debug"))]
pub(crate) async fn insert_series<'e, DB>(
    executor: impl Executor<'e, Database = DB>,
    tenant: &str,
    series: &str,
    config: &SeriesConfig,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(
        "INSERT INTO series (tenant_id, series, format, reset, timezone, start_at, gap_policy)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (tenant_id, series) DO NOTHING",
    )
    .bind(tenant)
    .bind(series)
    .bind(config.format.template())
    .bind(config.calendar.reset.name())
    .bind(config.calendar.zone.name())
    .bind(config.start_at)
    .bind(config.gap_policy.name())
    .execute(executor)
    .await?;
    Ok(())
}

/// Stores a series' settings.
#[tracing::instrument(name = "db.series.update", skip_all, err(level = "debug"))]
async fn update_series<DB>(
    conn: &mut DB::Connection,
    tenant: &str,
    series: &str,
    config: &SeriesConfig,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(
        "UPDATE series SET format = $3, reset = $4, timezone = $5, start_at = $6,
                          gap_policy = $7
         WHERE tenant_id = $1 AND series = $2",
    )
    .bind(tenant)
    .bind(series)
    .bind(config.format.template())
    .bind(config.calendar.reset.name())
    .bind(config.calendar.zone.name())
    .bind(config.start_at)
    .bind(config.gap_policy.name())
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether a series has handed out or skipped a number, in any period.
#[tracing::instrument(name = "db.counters.in_use", skip_all, err(level = "debug"))]
async fn select_in_use<DB>(
    conn: &mut DB::Connection,
    tenant: &str,
    series: &str,
) -> Result<bool, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    let used: Option<(i64,)> = sqlx::query_as(
        "SELECT last_value FROM counters
         WHERE tenant_id = $1 AND series = $2 AND last_value > base LIMIT 1",
    )
    .bind(tenant)
    .bind(series)
    .fetch_optional(conn)
    .await?;
    Ok(used.is_some())
}

/// The first answers of the batch's request ids that another transaction
/// holds, by (tenant, request id). Runs on `conn`, inside the transaction
/// that tried to claim them; rare (repeats only), so one read per id.
pub(crate) async fn read_held<DB>(
    conn: &mut DB::Connection,
    batch: &Batch<'_>,
    won: &Won,
    stamp: Stamp,
) -> Result<HashMap<(String, String), KeyRow>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> KeyRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
{
    let mut held = HashMap::new();
    for claim in batch.held(won) {
        let (tenant, id) = (claim.tenant, claim.request_id);
        if let Some(row) = select_key::<DB>(&mut *conn, tenant, id, stamp.forget_before).await? {
            held.insert((claim.tenant.to_owned(), claim.request_id.to_owned()), row);
        }
    }
    Ok(held)
}

/// What a request id first answered, unless that was before `forget_before`
/// (then the id is free again).
#[tracing::instrument(name = "db.request_ids.select", skip_all, err(level = "debug"))]
pub(crate) async fn select_key<DB>(
    conn: &mut DB::Connection,
    tenant: &str,
    request_id: &str,
    forget_before: DateTime<Utc>,
) -> Result<Option<KeyRow>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> KeyRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(
        "SELECT series, count, kind, period, first_value, format, date FROM request_ids
         WHERE tenant_id = $1 AND request_id = $2 AND first_value IS NOT NULL
           AND created_at >= $3",
    )
    .bind(tenant)
    .bind(request_id)
    .bind(forget_before)
    .fetch_optional(conn)
    .await
}

/// One series, if it exists.
#[tracing::instrument(name = "db.series.select_one", skip_all, err(level = "debug"))]
pub(crate) async fn select_series<'e, DB>(
    executor: impl Executor<'e, Database = DB>,
    tenant: &str,
    series: &str,
) -> Result<Option<SeriesRow>, sqlx::Error>
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    for<'r> SeriesRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(
        "SELECT series, format, reset, timezone, start_at, gap_policy FROM series
         WHERE tenant_id = $1 AND series = $2",
    )
    .bind(tenant)
    .bind(series)
    .fetch_optional(executor)
    .await
}

/// A period's counter, if the period has begun.
#[tracing::instrument(name = "db.counters.select_one", skip_all, err(level = "debug"))]
async fn select_counter<DB>(
    pool: &Pool<DB>,
    tenant: &str,
    series: &str,
    period: &str,
) -> Result<Option<(i64,)>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(
        "SELECT last_value FROM counters WHERE tenant_id = $1 AND series = $2 AND period = $3",
    )
    .bind(tenant)
    .bind(series)
    .bind(period)
    .fetch_optional(pool)
    .await
}

/// A period's counter and the value it started from.
#[tracing::instrument(name = "db.counters.select_period", skip_all, err(level = "debug"))]
async fn select_period<DB>(
    pool: &Pool<DB>,
    tenant: &str,
    series: &str,
    period: &str,
) -> Result<Option<(i64, i64)>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> (i64, i64): FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(
        "SELECT last_value, base FROM counters
         WHERE tenant_id = $1 AND series = $2 AND period = $3",
    )
    .bind(tenant)
    .bind(series)
    .bind(period)
    .fetch_optional(pool)
    .await
}

/// Decides `change` for the number `at`, which `range` holds, now in
/// `current`, in a series of `policy`, and stores what it makes of it. Runs
/// on `conn`, inside the engine's durable write. Answers the row as it
/// stands after.
///
/// # Errors
/// [`ChangeError::Refused`]: the state does not allow the change;
/// [`ChangeError::Raced`]: another write stored the number's first state
/// since `current` was read (run again).
pub(crate) async fn apply_state_change<DB>(
    conn: &mut DB::Connection,
    at: NumberAt<'_>,
    range: &RangeRow,
    current: Option<StateRow>,
    change: StateChange<'_>,
    held: Held,
) -> Result<Option<StateRow>, ChangeError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
{
    let Some(row) = numbers::decide(at.number, range, current.as_ref(), change, held)? else {
        return Ok(current);
    };
    if current.is_some() {
        update_state::<DB>(conn, at, &row).await?;
    } else if let Err(error) = insert_state::<DB>(conn, at, &row).await {
        let raced = matches!(&error, sqlx::Error::Database(db) if db.is_unique_violation());
        return Err(if raced {
            ChangeError::Raced
        } else {
            error.into()
        });
    }
    Ok(Some(row))
}

/// How an engine picks the row [`take_back`] takes: the table as each of
/// its reads names it, and the lock it takes on the rows it reads.
pub(crate) struct Pick {
    /// `number_states`, as [`Engine::BY_STATE`] names it.
    pub(crate) by_state: &'static str,
    /// `number_states`, as [`Engine::LEASES`] names it.
    pub(crate) leases: &'static str,
    /// The row lock, one that skips rows another transaction holds and so
    /// never waits (nothing where the write holds the whole database).
    pub(crate) lock: &'static str,
}

/// Takes the lowest number of a period given back to a series that
/// reissues (released, or reserved with a lease ended by `now`), and holds
/// it for `take`: reserved until its lease ends, or issued.
///
/// It reads the reservations whose lease ended and the lowest released
/// number below them, not the reservations still held: the sweep stores
/// ended leases as released within its interval, so few are read. With
/// `pick.lock` it locks what it reads, skipping rows another transaction
/// holds, and so never waits for a row while holding another: a batch of
/// changes locking the same numbers cannot deadlock with it. Another call
/// taking back at the same moment skips the rows this one locked, and may
/// get a new number while an ended lease it skipped stays given back for
/// the next call.
#[tracing::instrument(name = "db.number_states.take_back", skip_all, err(level = "debug"))]
pub(crate) async fn take_back<DB>(
    conn: &mut DB::Connection,
    take: Reissue<'_>,
    now: DateTime<Utc>,
    pick: Pick,
) -> Result<Option<i64>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
{
    let Pick {
        by_state,
        leases,
        lock,
    } = pick;
    // The ended leases are read on their own (`MATERIALIZED`), so that no
    // plan walks the held ones in number order looking for one; a released
    // number is locked only if it is below all of them, so taken.
    let taken: Option<(i64,)> = sqlx::query_as(AssertSqlSafe(format!(
        "WITH ended AS MATERIALIZED (
             SELECT number FROM {leases}
             WHERE tenant_id = $1 AND series = $2 AND period = $3 AND state = 'reserved'
               AND expires_at <= $4 {lock}),
         released AS (
             SELECT number FROM {by_state}
             WHERE tenant_id = $1 AND series = $2 AND period = $3 AND state = 'released'
               AND state <> 'confirmed'
               AND number < COALESCE((SELECT min(number) FROM ended), 9223372036854775807)
             ORDER BY number LIMIT 1 {lock})
         UPDATE number_states
         SET state = CASE WHEN $5 IS NULL THEN 'issued' ELSE 'reserved' END,
             expires_at = $5, request_id = COALESCE($6, ''), reason = '', reference = '',
             updated_at = $7
         WHERE tenant_id = $1 AND series = $2 AND period = $3
           AND number = (SELECT min(number) FROM (SELECT number FROM released
                                                  UNION ALL SELECT number FROM ended) given_back)
           AND (state = 'released' OR (state = 'reserved' AND expires_at <= $4))
           AND EXISTS (SELECT 1 FROM series
                       WHERE tenant_id = $1 AND series = $2 AND gap_policy = 'reissue')
         RETURNING number"
    )))
    .bind(take.tenant.as_str())
    .bind(take.series.as_str())
    .bind(take.period)
    .bind(now)
    .bind(take.lease.map(|lease| lease.ends))
    .bind(take.request_id.map(RequestId::as_str))
    .bind(take.lease.map_or(now, |lease| lease.at))
    .fetch_optional(conn)
    .await?;
    Ok(taken.map(|(number,)| number))
}

/// `count` answers, true at each of the 0-based places `found` names (a
/// statement's rows); a place out of range is not one of them.
pub(crate) fn found_among(count: usize, found: impl IntoIterator<Item = i64>) -> Vec<bool> {
    let mut among = vec![false; count];
    for place in found {
        if let Some(answer) = usize::try_from(place).ok().and_then(|i| among.get_mut(i)) {
            *answer = true;
        }
    }
    among
}

/// The answer of a call that took back `number`: the text its range gave
/// it, stored as its request id's answer if it sent one.
///
/// # Errors
/// No range holds the number, or the request id was not claimed: the store
/// holds something other than what the caller made sure of.
pub(crate) async fn reissued<DB>(
    conn: &mut DB::Connection,
    take: Reissue<'_>,
    number: i64,
) -> Result<Outcome, StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> RangeRow: FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> NaiveDate: Encode<'q, DB> + Type<DB>,
{
    let (tenant, series) = (take.tenant.as_str(), take.series.as_str());
    let range = select_range_from(&mut *conn, tenant, series, take.period, number).await?;
    let range = range
        .filter(|range| range.last() >= number)
        .ok_or_else(|| {
            StoreError::Internal(
                format!("number {number} was given back but no range holds it").into(),
            )
        })?;
    let grant = Grant {
        first: number,
        format: range.format,
        date: range.date,
        period: take.period.to_owned(),
    };
    if let Some(id) = take.request_id {
        let stored = update_key_answer::<DB>(conn, tenant, id.as_str(), &grant).await?;
        if !stored {
            return Err(StoreError::Internal(
                format!("request id {id} was not claimed").into(),
            ));
        }
    }
    Ok(Outcome::Granted(grant))
}

/// Stores the numbers a claimed request id answers; returns whether the id
/// was there to take them.
#[tracing::instrument(name = "db.request_ids.answer", skip_all, err(level = "debug"))]
async fn update_key_answer<DB>(
    conn: &mut DB::Connection,
    tenant: &str,
    request_id: &str,
    grant: &Grant,
) -> Result<bool, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> NaiveDate: Encode<'q, DB> + Type<DB>,
{
    let stored: Option<(i64,)> = sqlx::query_as(
        "UPDATE request_ids SET period = $3, first_value = $4, format = $5, date = $6
         WHERE tenant_id = $1 AND request_id = $2
         RETURNING first_value",
    )
    .bind(tenant)
    .bind(request_id)
    .bind(grant.period.as_str())
    .bind(grant.first)
    .bind(grant.format.as_str())
    .bind(grant.date)
    .fetch_optional(conn)
    .await?;
    Ok(stored.is_some())
}

/// What a batch of changes answers and writes.
#[derive(Debug)]
pub(crate) struct PlannedChanges {
    /// Per change, in order: the row after it, or why nothing changed.
    pub answers: Vec<Changed>,
    /// Rows that existed and changed, in key order.
    pub updates: Vec<KeyedStateRow>,
    /// First state rows of numbers that had none, in key order.
    pub inserts: Vec<KeyedStateRow>,
}

/// A number's row as a batch leaves it, whether it existed before, and
/// whether the batch changed it.
struct Planned {
    row: Option<StateRow>,
    existed: bool,
    changed: bool,
}

/// Decides each change of a batch in order over the rows its numbers have
/// (`existing`), so that a later change of a number sees an earlier one;
/// a change of a number its range (`ranges`, one per change: the last range
/// of its period starting at or before it) does not hold as handed out is
/// refused.
pub(crate) fn plan_changes(
    writes: &[StateWrite<'_>],
    existing: Vec<KeyedStateRow>,
    ranges: Vec<Option<RangeRow>>,
) -> PlannedChanges {
    let mut rows: BTreeMap<(String, String, String, i64), Planned> = existing
        .into_iter()
        .map(|keyed| {
            let key = (
                keyed.tenant_id,
                keyed.series,
                keyed.period,
                keyed.row.number,
            );
            let planned = Planned {
                row: Some(keyed.row),
                existed: true,
                changed: false,
            };
            (key, planned)
        })
        .collect();
    debug_assert_eq!(ranges.len(), writes.len(), "one range read per change");
    let mut answers = Vec::with_capacity(writes.len());
    for (write, range) in writes.iter().zip(ranges) {
        let at = write.at;
        let range = match numbers::handed_out(range, at.number) {
            Ok(range) => range,
            Err(error) => {
                answers.push(Err(error));
                continue;
            }
        };
        let key = (
            at.tenant.to_string(),
            at.series.to_string(),
            at.period.to_owned(),
            at.number,
        );
        let planned = rows.entry(key).or_insert(Planned {
            row: None,
            existed: false,
            changed: false,
        });
        answers.push(
            match numbers::decide(
                at.number,
                &range,
                planned.row.as_ref(),
                write.change,
                write.held,
            ) {
                Ok(Some(row)) => {
                    planned.row = Some(row.clone());
                    planned.changed = true;
                    Ok((range, Some(row)))
                }
                Ok(None) => Ok((range, planned.row.clone())),
                Err(error) => Err(error),
            },
        );
    }
    let (mut updates, mut inserts) = (Vec::new(), Vec::new());
    for ((tenant_id, series, period, _), planned) in rows {
        let (Some(row), true) = (planned.row, planned.changed) else {
            continue;
        };
        let keyed = KeyedStateRow {
            tenant_id,
            series,
            period,
            row,
        };
        if planned.existed {
            updates.push(keyed);
        } else {
            inserts.push(keyed);
        }
    }
    PlannedChanges {
        answers,
        updates,
        inserts,
    }
}

/// A number's state row, if it has one.
#[tracing::instrument(name = "db.number_states.select_one", skip_all, err(level = "debug"))]
pub(crate) async fn select_state<DB>(
    conn: &mut DB::Connection,
    at: NumberAt<'_>,
) -> Result<Option<StateRow>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> StateRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {STATE_COLUMNS} FROM number_states
             WHERE tenant_id = $1 AND series = $2 AND period = $3 AND number = $4"
    )))
    .bind(at.tenant.as_str())
    .bind(at.series.as_str())
    .bind(at.period)
    .bind(at.number)
    .fetch_optional(conn)
    .await
}

/// Stores the first state row of a number; fails on a unique violation if
/// another write stored one first.
#[tracing::instrument(name = "db.number_states.insert", skip_all, err(level = "debug"))]
async fn insert_state<DB>(
    conn: &mut DB::Connection,
    at: NumberAt<'_>,
    row: &StateRow,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(
        "INSERT INTO number_states (tenant_id, series, period, number, state, reference,
                                    reason, updated_at, origin, expires_at, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(at.tenant.as_str())
    .bind(at.series.as_str())
    .bind(at.period)
    .bind(at.number)
    .bind(row.state.as_str())
    .bind(row.reference.as_str())
    .bind(row.reason.as_str())
    .bind(row.updated_at)
    .bind(row.origin.as_str())
    .bind(row.expires_at)
    .bind(row.request_id.as_deref())
    .execute(conn)
    .await?;
    Ok(())
}

/// Replaces a number's state row, read and locked in this write.
#[tracing::instrument(name = "db.number_states.update", skip_all, err(level = "debug"))]
async fn update_state<DB>(
    conn: &mut DB::Connection,
    at: NumberAt<'_>,
    row: &StateRow,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(
        "UPDATE number_states SET state = $5, reference = $6, reason = $7, updated_at = $8,
                                  expires_at = $9
         WHERE tenant_id = $1 AND series = $2 AND period = $3 AND number = $4",
    )
    .bind(at.tenant.as_str())
    .bind(at.series.as_str())
    .bind(at.period)
    .bind(at.number)
    .bind(row.state.as_str())
    .bind(row.reference.as_str())
    .bind(row.reason.as_str())
    .bind(row.updated_at)
    .bind(row.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The state rows of a period's numbers in `first..=last`, in order.
#[tracing::instrument(
    name = "db.number_states.select_between",
    skip_all,
    err(level = "debug")
)]
async fn select_states_between<DB>(
    pool: &Pool<DB>,
    tenant: &str,
    series: &str,
    period: &str,
    (first, last): (i64, i64),
) -> Result<Vec<StateRow>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> StateRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {STATE_COLUMNS} FROM number_states
             WHERE tenant_id = $1 AND series = $2 AND period = $3
               AND number BETWEEN $4 AND $5
             ORDER BY number"
    )))
    .bind(tenant)
    .bind(series)
    .bind(period)
    .bind(first)
    .bind(last)
    .fetch_all(pool)
    .await
}

/// Up to `after.limit` state rows of one or two states after a number, in
/// order, each joined with the range that holds its number.
///
/// Any state but confirmed is read from `by_state` ([`Engine::BY_STATE`]);
/// confirmed numbers, which that index leaves out and most rows are, by key
/// in number order, skipping the rows of other states.
#[tracing::instrument(name = "db.number_states.select_after", skip_all, err(level = "debug"))]
async fn select_states_after<DB>(
    pool: &Pool<DB>,
    by_state: &str,
    tenant: &str,
    series: &str,
    period: &str,
    after: StatesAfter<'_>,
) -> Result<Vec<StatedRow>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> StatedRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    // One ordered read of the index on state per state, merged: a state
    // whose numbers are sparse costs a page, not a walk of the period. The
    // second read is empty when both states are the same.
    let (from, open) = if after.states.contains(&"confirmed") {
        ("number_states", "")
    } else {
        (by_state, "AND state <> 'confirmed'")
    };
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT s.number, s.state, s.reference, s.reason, s.updated_at, s.origin,
                s.expires_at, s.request_id AS state_request_id, a.first_value, a.count, a.kind, a.request_id, a.format, a.date, a.created_at
         FROM (
             SELECT * FROM (
                 SELECT {STATE_COLUMNS} FROM {from}
                 WHERE tenant_id = $1 AND series = $2 AND period = $3 AND state = $4 {open}
                   AND number > $5
                 ORDER BY number LIMIT $6) first_state
             UNION ALL
             SELECT * FROM (
                 SELECT {STATE_COLUMNS} FROM {from}
                 WHERE tenant_id = $1 AND series = $2 AND period = $3 AND state = $7 {open}
                   AND $7 <> $4 AND number > $5
                 ORDER BY number LIMIT $6) second_state
         ) s
         JOIN allocations a
           ON a.tenant_id = $1 AND a.series = $2 AND a.period = $3
          AND a.first_value = (
              SELECT MAX(b.first_value) FROM allocations b
              WHERE b.tenant_id = $1 AND b.series = $2
                AND b.period = $3 AND b.first_value <= s.number)
         ORDER BY s.number LIMIT $6",
    )))
    .bind(tenant)
    .bind(series)
    .bind(period)
    .bind(after.states.first().copied().unwrap_or_default())
    .bind(after.number)
    .bind(i64::from(after.limit))
    .bind(after.states.last().copied().unwrap_or_default())
    .fetch_all(pool)
    .await
}

/// The columns of a state row.
pub(crate) const STATE_COLUMNS: &str =
    "number, state, reference, reason, updated_at, origin, expires_at, request_id";

/// The columns of a ledger range.
pub(crate) const RANGE_COLUMNS: &str =
    "first_value, count, kind, reason, request_id, format, date, created_at";

/// A range read for the change at place `nth` (from 1) of a batch.
#[derive(sqlx::FromRow)]
pub(crate) struct NthRange {
    pub(crate) nth: i64,
    #[sqlx(flatten)]
    pub(crate) range: RangeRow,
}

/// The columns of a batch's read, [`BatchRow`]: `nth`, the number's key,
/// the columns of a range ([`RANGE_COLUMNS`]), then those of a state row
/// that a range lacks (the two share `reason` and `request_id`).
pub(crate) const BATCH_COLUMNS: &str = "nth, tenant_id, series, period, first_value, count, kind, \
     reason, request_id, format, date, created_at, number, state, reference, updated_at, origin, \
     expires_at";

/// A row of a batch's read, one statement for its ranges and its numbers'
/// state rows: the range of the change at place `nth` (from 1), or, where
/// `nth` is 0, the state row of one of its numbers. Each leaves the other's
/// own columns null.
pub(crate) enum BatchRow {
    Range(NthRange),
    State(KeyedStateRow),
}

impl<'r, R> sqlx::FromRow<'r, R> for BatchRow
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    NthRange: sqlx::FromRow<'r, R>,
    KeyedStateRow: sqlx::FromRow<'r, R>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        if row.try_get::<i64, _>("nth")? > 0 {
            NthRange::from_row(row).map(Self::Range)
        } else {
            KeyedStateRow::from_row(row).map(Self::State)
        }
    }
}

/// A batch's read of `len` changes split: the state rows of its numbers,
/// and its ranges, one per change in order (`None` for a change whose number
/// no range starts at or before).
pub(crate) fn split_read(
    read: Vec<BatchRow>,
    len: usize,
) -> (Vec<KeyedStateRow>, Vec<Option<RangeRow>>) {
    let mut states = Vec::new();
    let mut ranges = vec![None; len];
    for row in read {
        match row {
            BatchRow::State(state) => states.push(state),
            BatchRow::Range(NthRange { nth, range }) => {
                if let Some(slot) = usize::try_from(nth - 1)
                    .ok()
                    .and_then(|i| ranges.get_mut(i))
                {
                    *slot = Some(range);
                }
            }
        }
    }
    (states, ranges)
}

/// The last range of a period starting at or before `number`.
#[tracing::instrument(name = "db.allocations.select_at", skip_all, err(level = "debug"))]
pub(crate) async fn select_range_from<'e, DB>(
    executor: impl Executor<'e, Database = DB>,
    tenant: &str,
    series: &str,
    period: &str,
    number: i64,
) -> Result<Option<RangeRow>, sqlx::Error>
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    for<'r> RangeRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    let sql = format!(
        "SELECT {RANGE_COLUMNS} FROM allocations
         WHERE tenant_id = $1 AND series = $2 AND period = $3 AND first_value <= $4
         ORDER BY first_value DESC LIMIT 1"
    );
    sqlx::query_as(AssertSqlSafe(sql))
        .bind(tenant)
        .bind(series)
        .bind(period)
        .bind(number)
        .fetch_optional(executor)
        .await
}

/// Up to `after.limit` ranges of a period starting after `after.number`, of
/// `after.skipped` if given, in order.
#[tracing::instrument(name = "db.allocations.select_after", skip_all, err(level = "debug"))]
async fn select_ranges_after<DB>(
    pool: &Pool<DB>,
    advances: &str,
    tenant: &str,
    series: &str,
    period: &str,
    after: RangesAfter,
) -> Result<Vec<RangeRow>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> RangeRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    // The kind is written out, as the partial index of the advances says
    // it, so that a listing of the numbers skipped reads that index rather
    // than every range of the period.
    let (from, kind) = match after.skipped {
        None => ("allocations", "TRUE"),
        Some(true) => (advances, "kind = 'advance'"),
        Some(false) => ("allocations", "kind <> 'advance'"),
    };
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {RANGE_COLUMNS} FROM {from}
         WHERE tenant_id = $1 AND series = $2 AND period = $3 AND first_value > $4 AND {kind}
         ORDER BY first_value LIMIT $5"
    )))
    .bind(tenant)
    .bind(series)
    .bind(period)
    .bind(after.number)
    .bind(i64::from(after.limit))
    .fetch_all(pool)
    .await
}

/// A period's ledger up to a counter value read before it.
struct LedgerAt<'a> {
    tenant: &'a str,
    series: &'a str,
    period: &'a str,
    base: i64,
    last_value: i64,
}

/// The numbers in a period's ranges up to `last_value`, by kind.
#[tracing::instrument(name = "db.allocations.select_totals", skip_all, err(level = "debug"))]
async fn select_range_totals<DB>(
    pool: &Pool<DB>,
    at: &LedgerAt<'_>,
) -> Result<Vec<KindTotal>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> KindTotal: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(
        "SELECT kind, CAST(SUM(count) AS BIGINT) AS numbers,
                MAX(first_value + (count - 1)) AS last
         FROM allocations
         WHERE tenant_id = $1 AND series = $2 AND period = $3 AND first_value <= $4
         GROUP BY kind ORDER BY kind",
    )
    .bind(at.tenant)
    .bind(at.series)
    .bind(at.period)
    .bind(at.last_value)
    .fetch_all(pool)
    .await
}

/// A state row's state as of `$5`, the audit's now: `expired` for a
/// reservation whose lease has ended, swept or not. The same in every
/// count of an audit, so that one count can be taken from another.
const STATE_AT_NOW: &str =
    "CASE WHEN state = 'reserved' AND expires_at <= $5 THEN 'expired' ELSE state END";

/// How many numbers up to `last_value` are in each state a row holds.
#[tracing::instrument(
    name = "db.number_states.select_totals",
    skip_all,
    err(level = "debug")
)]
async fn select_state_totals<DB>(
    pool: &Pool<DB>,
    at: &LedgerAt<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<StateTotal>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> StateTotal: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT origin, state, COUNT(*) AS numbers FROM (
             SELECT origin, {STATE_AT_NOW} AS state
             FROM number_states
             WHERE tenant_id = $1 AND series = $2 AND period = $3 AND number <= $4
         ) AS rows
         GROUP BY origin, state ORDER BY origin, state"
    )))
    .bind(at.tenant)
    .bind(at.series)
    .bind(at.period)
    .bind(at.last_value)
    .bind(now)
    .fetch_all(pool)
    .await
}

/// How many numbers of `hole` are in each state a row holds: a statement
/// of its own, so that the plan of [`select_state_totals`], which reads
/// the whole period, is not one made for a few numbers.
#[tracing::instrument(
    name = "db.number_states.select_hole_totals",
    skip_all,
    err(level = "debug")
)]
async fn select_hole_state_totals<DB>(
    pool: &Pool<DB>,
    at: &LedgerAt<'_>,
    hole: RangeInclusive<i64>,
    now: DateTime<Utc>,
) -> Result<Vec<StateTotal>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> StateTotal: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT origin, state, COUNT(*) AS numbers FROM (
             SELECT origin, {STATE_AT_NOW} AS state
             FROM number_states
             WHERE tenant_id = $1 AND series = $2 AND period = $3
               AND number >= $4 AND number <= $6
         ) AS rows
         GROUP BY origin, state ORDER BY origin, state"
    )))
    .bind(at.tenant)
    .bind(at.series)
    .bind(at.period)
    .bind(*hole.start())
    .bind(now)
    .bind(*hole.end())
    .fetch_all(pool)
    .await
}

/// The last number the ranges before a range cover (null before the first):
/// the highest end of any, not the end of the one just before, which a
/// longer range before it may cover past (ranges that overlap, a ledger
/// written twice).
const COVERED_BEFORE: &str = "MAX(first_value + (count - 1)) OVER (ORDER BY first_value \
     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)";

/// How many numbers up to `last_value` that lie in no range are in each
/// state a row holds: rows whose range was lost. The holes between ranges
/// (a walk over them, as [`select_holes`] takes), and the numbers after
/// `recorded_to`, the end of the last range, each read by index for rows.
#[tracing::instrument(
    name = "db.number_states.select_unranged_totals",
    skip_all,
    err(level = "debug")
)]
async fn select_unranged_state_totals<DB>(
    pool: &Pool<DB>,
    at: &LedgerAt<'_>,
    recorded_to: i64,
    now: DateTime<Utc>,
) -> Result<Vec<StateTotal>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> StateTotal: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH holes AS (
             SELECT before + 1 AS first, first_value - 1 AS last FROM (
                 SELECT first_value,
                        COALESCE({COVERED_BEFORE}, $6) AS before
                 FROM allocations
                 WHERE tenant_id = $1 AND series = $2 AND period = $3 AND first_value <= $4
             ) AS ranges
             WHERE first_value > before + 1
             UNION ALL
             SELECT $7 + 1, $4
         )
         SELECT origin, state, COUNT(*) AS numbers FROM (
             SELECT s.origin, {STATE_AT_NOW} AS state
             FROM holes JOIN number_states s
               ON s.tenant_id = $1 AND s.series = $2 AND s.period = $3
              AND s.number >= holes.first AND s.number <= holes.last
         ) AS rows
         GROUP BY origin, state ORDER BY origin, state"
    )))
    .bind(at.tenant)
    .bind(at.series)
    .bind(at.period)
    .bind(at.last_value)
    .bind(now)
    .bind(at.base)
    .bind(recorded_to)
    .fetch_all(pool)
    .await
}

/// The first `limit` numbers of a period's reservations up to `last_value`
/// that have no state row.
#[tracing::instrument(name = "db.allocations.select_orphans", skip_all, err(level = "debug"))]
async fn select_orphans<DB>(
    pool: &Pool<DB>,
    at: &LedgerAt<'_>,
    limit: i64,
) -> Result<Vec<i64>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT a.first_value FROM allocations a
         WHERE a.tenant_id = $1 AND a.series = $2 AND a.period = $3 AND a.kind = 'reserve'
           AND a.first_value <= $4
           AND NOT EXISTS (
               SELECT 1 FROM number_states s
               WHERE s.tenant_id = a.tenant_id AND s.series = a.series
                 AND s.period = a.period AND s.number = a.first_value)
         ORDER BY a.first_value LIMIT $5",
    )
    .bind(at.tenant)
    .bind(at.series)
    .bind(at.period)
    .bind(at.last_value)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(first,)| first).collect())
}

/// The first `limit` holes between a period's ranges up to `last_value`,
/// from `base + 1`, as (first number, count): numbers with no record.
#[tracing::instrument(name = "db.allocations.select_holes", skip_all, err(level = "debug"))]
async fn select_holes<DB>(
    pool: &Pool<DB>,
    at: &LedgerAt<'_>,
    limit: i64,
) -> Result<Vec<(i64, i64)>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> (i64, i64): FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT before + 1, first_value - before - 1 FROM (
             SELECT first_value,
                    COALESCE({COVERED_BEFORE}, $4) AS before
             FROM allocations
             WHERE tenant_id = $1 AND series = $2 AND period = $3 AND first_value <= $5
         ) AS ranges
         WHERE first_value > before + 1
         ORDER BY first_value LIMIT $6"
    )))
    .bind(at.tenant)
    .bind(at.series)
    .bind(at.period)
    .bind(at.base)
    .bind(at.last_value)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Up to `limit` of a tenant's series with names after `after`, by name
/// (bytewise on both engines).
#[tracing::instrument(name = "db.series.select_page", skip_all, err(level = "debug"))]
async fn select_page<DB>(
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
        "SELECT series, format, reset, timezone, start_at, gap_policy FROM series
         WHERE tenant_id = $1 AND series > $2
         ORDER BY series LIMIT $3",
    )
    .bind(tenant)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;
    use crate::{
        allocator::{
            series::{GapPolicy, SeriesName},
            store::StateRefusal,
        },
        tenant::TenantId,
    };

    /// What a planned change answers, as the test compares it.
    #[derive(Debug, PartialEq)]
    enum Answer {
        Row(Option<String>),
        Refused(StateRefusal),
        NotHandedOut { skipped: bool },
    }

    fn keyed(number: i64, state: &str) -> KeyedStateRow {
        KeyedStateRow {
            tenant_id: "acme".into(),
            series: "invoice".into(),
            period: String::new(),
            row: StateRow {
                number,
                state: state.into(),
                reference: String::new(),
                reason: String::new(),
                updated_at: DateTime::UNIX_EPOCH,
                origin: "reserve".into(),
                expires_at: None,
                request_id: None,
            },
        }
    }

    #[test]
    fn a_batch_decides_in_order_and_writes_each_number_once() {
        let (tenant, series) = (
            TenantId::parse("acme").unwrap(),
            SeriesName::parse("").unwrap(),
        );
        let held = Held {
            policy: GapPolicy::Void,
            now: DateTime::UNIX_EPOCH,
        };
        let write = |number, change| StateWrite {
            at: NumberAt {
                tenant: &tenant,
                series: &series,
                period: "",
                number,
            },
            change,
            held,
        };
        let confirm = |reference| StateChange::Confirm {
            reference,
            holder: None,
        };
        let writes = [
            // 3 has no row (issued): confirmed, then repeated.
            write(3, confirm("inv-3")),
            write(3, confirm("inv-3")),
            // 5 is reserved: confirmed, then refused another reference.
            write(5, confirm("inv-5")),
            write(5, confirm("other")),
            // 7 is voided: refused, nothing written.
            write(7, confirm("inv-7")),
            // 9 lies past every range, 12 in a range skipped: not changed.
            write(9, confirm("inv-9")),
            write(12, confirm("inv-12")),
        ];
        let range = |first_value, count, kind: &str| RangeRow {
            first_value,
            count,
            kind: kind.into(),
            reason: String::new(),
            request_id: None,
            format: "{number}".into(),
            date: NaiveDate::MIN,
            created_at: DateTime::UNIX_EPOCH,
        };
        let (issued, skipped) = (range(1, 8, "allocate"), range(10, 5, "advance"));
        let ranges = vec![
            Some(issued.clone()),
            Some(issued.clone()),
            Some(issued.clone()),
            Some(issued.clone()),
            Some(issued.clone()),
            Some(issued),
            Some(skipped),
        ];
        let existing = vec![keyed(5, "reserved"), keyed(7, "voided")];
        let planned = plan_changes(&writes, existing, ranges);
        let answers: Vec<_> = planned
            .answers
            .iter()
            .map(|answer| match answer {
                Ok((range, row)) => {
                    assert_eq!(range.first_value, 1);
                    Answer::Row(row.as_ref().map(|row| row.reference.clone()))
                }
                Err(ChangeError::Refused(refusal)) => Answer::Refused(refusal.clone()),
                Err(ChangeError::NotHandedOut { skipped }) => {
                    Answer::NotHandedOut { skipped: *skipped }
                }
                Err(other) => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            answers,
            [
                Answer::Row(Some("inv-3".into())),
                Answer::Row(Some("inv-3".into())),
                Answer::Row(Some("inv-5".into())),
                Answer::Refused(StateRefusal::AlreadyConfirmed {
                    reference: "inv-5".into()
                }),
                Answer::Refused(StateRefusal::Voided {
                    reason: String::new()
                }),
                Answer::NotHandedOut { skipped: false },
                Answer::NotHandedOut { skipped: true },
            ]
        );
        let numbers = |rows: &[KeyedStateRow]| -> Vec<i64> {
            rows.iter().map(|keyed| keyed.row.number).collect()
        };
        assert_eq!(numbers(&planned.inserts), [3]);
        assert_eq!(numbers(&planned.updates), [5]);
        assert_eq!(planned.inserts[0].row.origin, "allocate");
    }
}
