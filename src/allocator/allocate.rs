//! Allocation rules: the [`Allocator`] applies them over a [`CounterStore`],
//! one transaction per call or through group commit, keeping request ids for
//! the retention window and picking each call's period by its series'
//! calendar.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDate, Utc};

use crate::{
    allocator::{
        batch::Retention,
        exhausted::Exhausted,
        group_commit::{GroupCommitSettings, GroupCommitter, GroupError},
        series::Leases,
        series::{
            Calendar, Count, GapPolicy, Number, NumberFormat, Refusal, Series, SeriesConfig,
            SeriesName, TimeZone,
        },
        store::{
            Advance, Call, ConfigureError, CounterStore, Grant, Lease, Outcome, PeriodOf, Reissue,
            StateRefusal, StoreError,
        },
    },
    calendar::Reset,
    page::Page,
    request_id::RequestId,
    tenant::TenantId,
};

/// An allocator failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is not acceptable for this series, e.g. a date too
    /// far ahead.
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field at fault.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A series setting can no longer change.
    #[error("{field} cannot change once the series has handed out a number")]
    SeriesInUse {
        /// Tenant of the series.
        tenant: String,
        /// The series.
        series: String,
        /// The request field that would change.
        field: &'static str,
    },
    /// The series was never used.
    #[error("series {series:?} of tenant {tenant:?} not found")]
    SeriesNotFound {
        /// Tenant asked for.
        tenant: String,
        /// Series asked for.
        series: String,
    },
    /// The number was never handed out: no range of the period holds it,
    /// or an `AdvanceCounter` skipped it.
    #[error(
        "number {number} of period {period:?} of series {series:?} of tenant {tenant:?} not found"
    )]
    NumberNotFound {
        /// Tenant asked for.
        tenant: String,
        /// Series asked for.
        series: String,
        /// Period asked for.
        period: String,
        /// Number asked for.
        number: i64,
        /// Whether it was skipped (and so has a record, but no document).
        skipped: bool,
    },
    /// The number's state does not allow the change asked.
    #[error(transparent)]
    NotAllowed(StateRefusal),
    /// The number a repeated `Reserve`'s request id reserved is held under
    /// another request id: its lease ended and another call took it.
    #[error("number {number} of period {period:?} is held under request id {request_id:?}")]
    TakenSince {
        /// The request id it is held under.
        request_id: String,
        /// Its period.
        period: String,
        /// The number.
        number: i64,
        /// The number as its document shows it.
        formatted: String,
    },
    /// A stored format no longer parses: the store was edited by hand.
    #[error(
        "series {series:?} of tenant {tenant:?} has an invalid stored format {format:?}: {reason}"
    )]
    StoredFormat {
        /// Tenant of the series.
        tenant: String,
        /// The series.
        series: String,
        /// The stored template.
        format: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The request id was first used for another call, series or count.
    #[error("request id {request_id:?} was first used for {count} numbers of series {series:?}")]
    RequestIdReused {
        /// The id.
        request_id: String,
        /// The series it was first used for.
        series: String,
        /// The count it was first used for.
        count: i64,
        /// Whether it was first used by `Reserve` (else `Allocate`).
        reserved: bool,
    },
    /// A `Reserve` that only repeats names a request id no call reserved
    /// under (or one forgotten since).
    #[error("nothing was reserved under request id {request_id:?}")]
    RequestIdNotFound {
        /// The id.
        request_id: String,
    },
    /// Too many calls are waiting to commit.
    #[error("too many allocations waiting to commit")]
    Busy,
    /// The counter would pass the largest representable number.
    #[error("the series cannot go past {}", i64::MAX)]
    Exhausted,
    /// The store cannot be reached now; no number was handed out. Retrying
    /// later may succeed.
    #[error("the counter store is unavailable")]
    Unavailable(#[source] Arc<StoreError>),
    /// The store failed otherwise; no number was handed out.
    #[error("the counter store failed")]
    Internal(#[source] Arc<StoreError>),
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        Arc::new(error).into()
    }
}

/// A group's error is shared by each of its calls.
impl From<Arc<StoreError>> for Error {
    fn from(error: Arc<StoreError>) -> Self {
        match error.as_ref() {
            StoreError::Exhausted => Self::Exhausted,
            // Left after the allocator's own retries: a series configured
            // over and over while it is being used.
            StoreError::Unavailable(_) | StoreError::SeriesChanged => Self::Unavailable(error),
            StoreError::Internal(_) => Self::Internal(error),
        }
    }
}

impl From<GroupError> for Error {
    fn from(error: GroupError) -> Self {
        match error {
            GroupError::QueueFull => Self::Busy,
            GroupError::Store(error) => error.into(),
        }
    }
}

/// How allocations reach the store.
#[derive(Debug, Clone)]
pub enum CommitMode {
    /// One transaction per call: the baseline.
    PerCall,
    /// Concurrent calls of a series share a transaction.
    Group(GroupCommitSettings),
}

#[derive(Clone)]
enum Path {
    PerCall,
    Group(Arc<GroupCommitter>),
}

/// Numbers handed out to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// Consecutive numbers, ascending.
    pub numbers: Vec<Number>,
    /// Whether they were first handed out to an earlier call with the same
    /// request id.
    pub replayed: bool,
}

/// What `ConfigureSeries` asks to change; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesChange {
    /// A new template.
    pub format: Option<NumberFormat>,
    /// A new reset.
    pub reset: Option<Reset>,
    /// A new time zone.
    pub zone: Option<TimeZone>,
    /// A new first number for periods not yet begun.
    pub start_at: Option<i64>,
    /// A new gap policy.
    pub gap_policy: Option<GapPolicy>,
}

impl SeriesChange {
    /// The settings this change makes of `current`, given whether the series
    /// has handed out or skipped a number.
    ///
    /// # Errors
    /// The reset or time zone would change on a series in use, or its first
    /// number on one that never resets; or the template would not show the
    /// period.
    pub fn apply(&self, current: &SeriesConfig, in_use: bool) -> Result<SeriesConfig, Refusal> {
        let new = SeriesConfig {
            format: self
                .format
                .clone()
                .unwrap_or_else(|| current.format.clone()),
            calendar: Calendar {
                reset: self.reset.unwrap_or(current.calendar.reset),
                zone: self.zone.unwrap_or(current.calendar.zone),
            },
            start_at: self.start_at.unwrap_or(current.start_at),
            gap_policy: self.gap_policy.unwrap_or(current.gap_policy),
        };
        if in_use {
            // Numbers already handed out belong to periods of this calendar.
            let fixed = [
                ("reset", new.calendar.reset != current.calendar.reset),
                ("timezone", new.calendar.zone != current.calendar.zone),
                // A series that never resets has begun its only period.
                (
                    "start_at",
                    new.calendar.reset == Reset::Never && new.start_at != current.start_at,
                ),
                // Numbers given back under one policy are not handled by another.
                ("gap_policy", new.gap_policy != current.gap_policy),
            ];
            if let Some((field, _)) = fixed.into_iter().find(|(_, changes)| *changes) {
                return Err(Refusal::InUse { field });
            }
        }
        new.format
            .check_reset(new.calendar.reset)
            .map_err(|reason| Refusal::Invalid {
                field: "format",
                reason,
            })?;
        Ok(new)
    }
}

/// What one call asks for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ask<'a> {
    pub tenant: &'a TenantId,
    pub series: &'a SeriesName,
    /// How many numbers.
    pub count: i64,
    pub request_id: Option<&'a RequestId>,
    /// The document's date; none: today.
    pub date: Option<NaiveDate>,
    /// For a reservation: its lease.
    pub lease: Option<Lease>,
}

/// What this process knows of a series' calendar.
#[derive(Debug, Clone, Copy)]
pub(super) struct Known {
    pub(super) calendar: Calendar,
    /// The series has handed out a number, so its calendar never changes
    /// again: its transactions need not lock it against `ConfigureSeries`.
    settled: bool,
    /// Its gap policy, which is fixed too once it has handed out a number.
    pub(super) policy: GapPolicy,
}

impl Known {
    /// What a series' settings say, until it hands out a number.
    fn of(config: &SeriesConfig) -> Self {
        Self {
            calendar: config.calendar,
            settled: false,
            policy: config.gap_policy,
        }
    }
}

/// The calendars of the series this process has used: a call's period is
/// picked before its transaction, which checks the series still has it.
/// One entry per series, keyed by tenant and series; a lookup borrows the
/// names and copies nothing.
#[derive(Debug, Default)]
struct Calendars(Mutex<KnownCalendars>);

/// Hashed with the standard library's keyed hasher: names come from callers.
type KnownCalendars = hashbrown::HashMap<(Box<str>, Box<str>), Known, std::hash::RandomState>;

/// A tenant's and series' names, borrowed, as a key of [`KnownCalendars`]:
/// hashed as the owned key is.
#[derive(Hash)]
struct Names<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<(Box<str>, Box<str>)> for Names<'_> {
    fn equivalent(&self, key: &(Box<str>, Box<str>)) -> bool {
        *self.0 == *key.0 && *self.1 == *key.1
    }
}

impl Calendars {
    /// Most calendars kept; past it the map starts again empty.
    const MAX: usize = 100_000;

    fn known(&self) -> std::sync::MutexGuard<'_, KnownCalendars> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, tenant: &TenantId, series: &SeriesName) -> Option<Known> {
        self.known()
            .get(&Names(tenant.as_str(), series.as_str()))
            .copied()
    }

    fn insert(&self, tenant: &TenantId, series: &SeriesName, calendar: Known) {
        let mut known = self.known();
        if let Some(entry) = known.get_mut(&Names(tenant.as_str(), series.as_str())) {
            *entry = calendar;
            return;
        }
        if known.len() >= Self::MAX {
            // Emptied, not only cleared: its table goes back to the allocator.
            *known = KnownCalendars::default();
        }
        known.insert((tenant.as_str().into(), series.as_str().into()), calendar);
    }

    /// Notes that the series handed out a number as `known` said it was.
    fn settle(&self, tenant: &TenantId, series: &SeriesName, known: Known) {
        let settled = Known {
            settled: true,
            ..known
        };
        self.insert(tenant, series, settled);
    }

    fn forget(&self, tenant: &TenantId, series: &SeriesName) {
        self.known()
            .remove(&Names(tenant.as_str(), series.as_str()));
    }
}

/// How often a call picks its period again after the series was configured
/// anew under it.
const CALENDAR_ATTEMPTS: u32 = 3;

/// Whether a store failure says the series' calendar changed under the call.
fn series_changed(error: &Error) -> bool {
    matches!(error, Error::Unavailable(cause) if matches!(cause.as_ref(), StoreError::SeriesChanged))
}

/// Applies the allocation rules over a counter store.
#[derive(Clone)]
pub struct Allocator {
    pub(super) store: Arc<dyn CounterStore>,
    pub(super) defaults: SeriesConfig,
    path: Path,
    pub(super) retention: Retention,
    calendars: Arc<Calendars>,
    exhausted: Arc<Exhausted>,
    pub(super) leases: Leases,
}

impl Allocator {
    /// An allocator creating new series with `default_format`, keeping
    /// request ids for `retention`.
    #[must_use]
    pub fn new(
        store: Arc<dyn CounterStore>,
        default_format: NumberFormat,
        mode: CommitMode,
        retention: Retention,
    ) -> Self {
        let defaults = SeriesConfig::unconfigured(default_format);
        let path = match mode {
            CommitMode::PerCall => Path::PerCall,
            CommitMode::Group(settings) => Path::Group(Arc::new(GroupCommitter::new(
                &store, &settings, &defaults, &retention,
            ))),
        };
        Self {
            store,
            defaults,
            path,
            retention,
            calendars: Arc::default(),
            exhausted: Arc::default(),
            leases: Leases::default(),
        }
    }

    /// The allocator holding reservations for `leases`.
    #[must_use]
    pub fn with_leases(self, leases: Leases) -> Self {
        Self { leases, ..self }
    }

    /// The group committer, under group commit.
    pub(super) fn committer(&self) -> Option<&GroupCommitter> {
        match &self.path {
            Path::Group(committer) => Some(committer),
            Path::PerCall => None,
        }
    }

    /// Whether `period` has a number given back by `now`: read together
    /// with other calls' questions under group commit, alone otherwise.
    async fn given_back(&self, period: PeriodOf<'_>, now: DateTime<Utc>) -> Result<bool, Error> {
        match &self.path {
            Path::Group(committer) => committer.given_back(period, now).await.map_err(Error::from),
            Path::PerCall => {
                let found = self.store.given_back(&[period], now).await?;
                Ok(found.first().copied().unwrap_or(false))
            }
        }
    }

    pub(super) fn now(&self) -> DateTime<Utc> {
        self.retention.now()
    }

    /// The calendar of a series: that of an unconfigured one for a series
    /// not created yet, which its first allocation creates so. Until the
    /// series hands out a number (`settled`), `ConfigureSeries` in any
    /// process may change it: an allocation checks what it assumed in its
    /// transaction, and other uses read it again (see `held`).
    pub(super) async fn calendar(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
    ) -> Result<Known, Error> {
        if let Some(known) = self.calendars.get(tenant, series) {
            return Ok(known);
        }
        let known = self.read_calendar(tenant, series).await?;
        self.calendars.insert(tenant, series, known);
        Ok(known)
    }

    /// The calendar of a series, if kept since the series handed out a
    /// number: fixed from then on.
    pub(super) fn settled_calendar(&self, tenant: &TenantId, series: &SeriesName) -> Option<Known> {
        self.calendars
            .get(tenant, series)
            .filter(|known| known.settled)
    }

    /// The calendar of a series as the store has it now.
    pub(super) async fn read_calendar(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
    ) -> Result<Known, Error> {
        let configured = self.configured_calendar(tenant, series).await?;
        Ok(configured.unwrap_or_else(|| Known::of(&self.defaults)))
    }

    /// The calendar of a series as the store has it now, if it was ever
    /// used or configured.
    pub(super) async fn configured_calendar(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
    ) -> Result<Option<Known>, Error> {
        let config = self.store.find(tenant, series).await?;
        Ok(config.as_ref().map(Known::of))
    }

    /// Runs `attempt` with the series' calendar, again with the calendar read
    /// anew if the series was configured anew under it.
    async fn with_calendar<T, F>(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        mut attempt: impl FnMut(Known) -> F,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let mut tries = 1;
        loop {
            let known = self.calendar(tenant, series).await?;
            match attempt(known).await {
                Err(error) if series_changed(&error) && tries < CALENDAR_ATTEMPTS => {
                    self.calendars.forget(tenant, series);
                    tries += 1;
                }
                result => return result,
            }
        }
    }

    /// Allocates `count` consecutive numbers for a document dated `date`
    /// (none: today in the series' time zone), from the period that date
    /// falls in, committed before they are returned; or, for a request id
    /// used within the retention window, the numbers its first call
    /// received. The first call on a series creates it. One number of a
    /// series that reissues is the lowest given back, if one is.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a date too far ahead, or (in a series that
    /// resets) back; [`Error::RequestIdReused`]
    /// for a request id first used for another series or count; the store
    /// fails or the series is exhausted. No number is handed out then.
    pub async fn allocate(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        count: Count,
        request_id: Option<&RequestId>,
        date: Option<NaiveDate>,
    ) -> Result<Allocation, Error> {
        let ask = Ask {
            tenant,
            series,
            count: i64::from(count.get()),
            request_id,
            date,
            lease: None,
        };
        let (grant, replayed) = self.obtain(ask).await?;
        let Grant {
            first,
            format,
            date,
            period,
        } = grant;
        let format = parse_stored(tenant, series, &format)?;
        // Offsets from the first number: the last may be i64::MAX.
        let numbers = (0..ask.count)
            .map(|offset| first + offset)
            .map(|value| Number {
                value,
                formatted: format.render(value, date),
                period: period.clone(),
                date,
            })
            .collect();
        Ok(Allocation { numbers, replayed })
    }

    /// The numbers `ask` gets, and whether they repeat an earlier call's.
    pub(super) async fn obtain(&self, ask: Ask<'_>) -> Result<(Grant, bool), Error> {
        let Ask {
            tenant,
            series,
            count,
            request_id,
            date,
            lease,
        } = ask;
        let outcome = self
            .with_calendar(tenant, series, |known| async move {
                let (date, period) = known
                    .calendar
                    .place_new(date, self.now())
                    .map_err(bad_date)?;
                if known.policy == GapPolicy::Reissue && count == 1 {
                    let take = Reissue {
                        tenant,
                        series,
                        period: &period,
                        request_id,
                        lease,
                    };
                    let stamp = self.retention.stamp();
                    // Most find none: a read tells, and only then a write
                    // of its own takes one.
                    if self.given_back(take.period_of(), stamp.now).await?
                        && let Some(outcome) = self.store.reissue(take, stamp).await?
                    {
                        return Ok(outcome);
                    }
                }
                let call = Call {
                    tenant,
                    series,
                    calendar: known.calendar,
                    policy: known.policy,
                    settled: known.settled,
                    period: &period,
                    date,
                    count,
                    request_id,
                    lease,
                };
                if self.exhausted.refuses(tenant, series, &period, count) {
                    // Counters never go down: only a repeat of an answered
                    // call can get numbers here, and a read tells.
                    return match request_id {
                        Some(id) => self.repeat_or_refuse(tenant, id, &call).await,
                        None => Err(Error::Exhausted),
                    };
                }
                let outcome = match &self.path {
                    Path::Group(committer) => committer.allocate(call).await.map_err(Error::from),
                    Path::PerCall => {
                        let stamp = self.retention.stamp();
                        let outcome = self.store.allocate(call, &self.defaults, stamp).await;
                        outcome.map_err(Error::from)
                    }
                };
                if matches!(outcome, Err(Error::Exhausted)) {
                    self.exhausted.record(tenant, series, &period, count);
                    // A repeat is planned as a new call, so it overflows the
                    // counter its first answer filled: a read tells.
                    if let Some(id) = request_id {
                        return self.repeat_or_refuse(tenant, id, &call).await;
                    }
                }
                let outcome = outcome?;
                if !known.settled && matches!(outcome, Outcome::Granted(_)) {
                    self.calendars.settle(tenant, series, known);
                }
                Ok(outcome)
            })
            .await?;
        answered(outcome, request_id, count, lease.is_some())
    }

    /// A keyed call for a period known to be full: the numbers its id first
    /// got if it repeats an answered call, else refused.
    async fn repeat_or_refuse(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        call: &Call<'_>,
    ) -> Result<Outcome, Error> {
        self.first_answered(
            tenant,
            request_id,
            call.series.as_str(),
            call.count,
            call.kind(),
        )
        .await?
        .ok_or(Error::Exhausted)
    }

    /// What a repeat of a call of `kind` for `count` numbers of `series`
    /// under `request_id` gets from the first call made under it, if one
    /// was (and has committed).
    pub(super) async fn first_answered(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        series: &str,
        count: i64,
        kind: &str,
    ) -> Result<Option<Outcome>, Error> {
        let stamp = self.retention.stamp();
        let first = self.store.first_answer(tenant, request_id, stamp).await?;
        Ok(first.map(|first| first.repeated_by(series, count, kind)))
    }

    /// Forgets the request ids past the retention window, in batches of
    /// `batch`, until none is left; returns how many it forgot. Each batch is
    /// its own short write, so allocations go on in between.
    ///
    /// # Errors
    /// A store failure; what was forgotten before it stays forgotten.
    pub async fn forget_expired(&self, batch: u32) -> Result<u64, Error> {
        let before = self.retention.stamp().forget_before;
        let mut forgotten = 0;
        loop {
            let done = self.store.forget_request_ids(before, batch).await?;
            forgotten += done;
            if done < u64::from(batch) {
                return Ok(forgotten);
            }
        }
    }

    /// Creates or changes a series' settings, and shows it with today's
    /// period.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a template that would not show the period,
    /// [`Error::SeriesInUse`] for a setting fixed by the numbers handed out,
    /// or a store failure. Nothing changes then.
    pub async fn configure(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        change: &SeriesChange,
    ) -> Result<Series, Error> {
        let apply = |current: &SeriesConfig, in_use| change.apply(current, in_use);
        let config = self
            .store
            .configure(tenant, series, &self.defaults, &apply)
            .await
            .map_err(|error| match error {
                ConfigureError::Refused(Refusal::Invalid { field, reason }) => {
                    Error::Invalid { field, reason }
                }
                ConfigureError::Refused(Refusal::InUse { field }) => Error::SeriesInUse {
                    tenant: tenant.to_string(),
                    series: series.to_string(),
                    field,
                },
                ConfigureError::Store(error) => error.into(),
            })?;
        // In other processes, an allocation that assumed other settings is
        // retried on these, and other calls read them anew until the series
        // hands out a number.
        self.calendars.forget(tenant, series);
        self.show(tenant, series, config, None).await
    }

    /// A series with the period `date` falls in (none: today's).
    async fn show(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        config: SeriesConfig,
        date: Option<NaiveDate>,
    ) -> Result<Series, Error> {
        let (_, period) = place(config.calendar, date, self.now())?;
        let last_value = self.store.counter(tenant, series, &period).await?;
        Ok(Series {
            tenant_id: tenant.to_string(),
            name: series.to_string(),
            last_value: last_value.unwrap_or(config.start_at - 1),
            config,
            period,
        })
    }

    /// Reads a series, with the period `date` falls in (none: today's).
    ///
    /// # Errors
    /// [`Error::SeriesNotFound`] for a series never used or configured,
    /// [`Error::Invalid`] for a date too far ahead, or a store failure.
    pub async fn get_series(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        date: Option<NaiveDate>,
    ) -> Result<Series, Error> {
        let config =
            self.store
                .find(tenant, series)
                .await?
                .ok_or_else(|| Error::SeriesNotFound {
                    tenant: tenant.to_string(),
                    series: series.to_string(),
                })?;
        self.show(tenant, series, config, date).await
    }

    /// Up to `limit` series after `after`, each with today's period, and
    /// whether more follow.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list_series(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Series>, Error> {
        let fetched = self
            .store
            .list(tenant, after, Page::<Series>::fetch(limit))
            .await?;
        let mut shown = Vec::with_capacity(fetched.len());
        for (name, config) in fetched {
            let name = SeriesName::parse(&name).map_err(|reason| {
                Error::Internal(Arc::new(StoreError::Internal(
                    format!("stored series name {name:?}: {reason}").into(),
                )))
            })?;
            shown.push(self.show(tenant, &name, config, None).await?);
        }
        Ok(Page::from_fetched(shown, limit))
    }

    /// Raises the counter of the period `date` falls in (none: today's) to
    /// `at_least` if it is lower, recording the range skipped with `reason`;
    /// never lowers it. The first call on a series creates it.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a date too far ahead, or a store failure.
    pub async fn advance(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        at_least: i64,
        reason: &str,
        date: Option<NaiveDate>,
    ) -> Result<Series, Error> {
        let (config, last_value, period) = self
            .with_calendar(tenant, series, |known| async move {
                let calendar = known.calendar;
                let now = self.now();
                let (date, period) = place(calendar, date, now)?;
                let advance = Advance {
                    tenant,
                    series,
                    calendar,
                    period: &period,
                    date,
                    at_least,
                    reason,
                    now,
                };
                let (config, last_value) = self.store.advance(advance, &self.defaults).await?;
                Ok((config, last_value, period))
            })
            .await?;
        Ok(Series {
            tenant_id: tenant.to_string(),
            name: series.to_string(),
            config,
            period,
            last_value,
        })
    }
}

/// The date and period of a call with document date `date` that reads or
/// raises a counter.
fn place(
    calendar: Calendar,
    date: Option<NaiveDate>,
    now: DateTime<Utc>,
) -> Result<(NaiveDate, String), Error> {
    calendar.place(date, now).map_err(bad_date)
}

/// A document date refused, as the `date` field's error.
fn bad_date(reason: String) -> Error {
    Error::Invalid {
        field: "date",
        reason,
    }
}

pub(super) fn parse_stored(
    tenant: &TenantId,
    series: &SeriesName,
    format: &str,
) -> Result<NumberFormat, Error> {
    NumberFormat::stored(format).map_err(|reason| Error::StoredFormat {
        tenant: tenant.to_string(),
        series: series.to_string(),
        format: format.to_owned(),
        reason,
    })
}

/// A call's outcome as it is answered: the numbers granted (counted, as
/// reserved when `reserving`, else issued) or replayed (and whether they
/// were), or its request id refused as first used for another call.
///
/// # Errors
/// [`Error::RequestIdReused`].
pub(super) fn answered(
    outcome: Outcome,
    request_id: Option<&RequestId>,
    count: i64,
    reserving: bool,
) -> Result<(Grant, bool), Error> {
    match outcome {
        Outcome::Granted(grant) => {
            let how = if reserving { "reserved" } else { "issued" };
            metrics::counter!("numbering_numbers_allocated_total", "state" => how)
                .increment(count.unsigned_abs());
            Ok((grant, false))
        }
        Outcome::Replayed(grant) => Ok((grant, true)),
        Outcome::Reused {
            series,
            count,
            kind,
        } => Err(Error::RequestIdReused {
            request_id: request_id.map(ToString::to_string).unwrap_or_default(),
            series,
            count,
            reserved: kind == "reserve",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tenant: &str, series: &str) -> (TenantId, SeriesName) {
        (
            TenantId::parse(tenant).unwrap(),
            SeriesName::parse(series).unwrap(),
        )
    }

    fn known(settled: bool) -> Known {
        Known {
            calendar: Calendar::DEFAULT,
            settled,
            policy: GapPolicy::default(),
        }
    }

    #[test]
    fn calendars_are_kept_per_tenant_and_series() {
        let calendars = Calendars::default();
        let (ab, c) = names("ab", "c");
        let (a, bc) = names("a", "bc");
        calendars.insert(&ab, &c, known(false));
        assert!(calendars.get(&a, &bc).is_none(), "names are not joined");
        calendars.settle(&ab, &c, known(false));
        assert!(calendars.get(&ab, &c).is_some_and(|known| known.settled));
        assert_eq!(calendars.known().len(), 1, "settling replaces the entry");
        calendars.forget(&ab, &c);
        assert!(calendars.get(&ab, &c).is_none());
    }

    #[test]
    fn calendars_start_again_empty_past_their_bound() {
        let calendars = Calendars::default();
        let series = SeriesName::parse("").unwrap();
        for i in 0..Calendars::MAX {
            calendars.insert(
                &TenantId::parse(&format!("t{i}")).unwrap(),
                &series,
                known(true),
            );
        }
        assert_eq!(calendars.known().len(), Calendars::MAX);
        let newest = TenantId::parse("newest").unwrap();
        calendars.insert(&newest, &series, known(true));
        assert_eq!(calendars.known().len(), 1);
        assert!(calendars.get(&newest, &series).is_some());
    }
}
