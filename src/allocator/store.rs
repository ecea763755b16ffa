//! The counter store interface, which names none of its implementations.
//! The gRPC layer never sees which backend runs.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::{
    allocator::series::{
        Calendar, GapPolicy, NumberFormat, Refusal, SeriesConfig, SeriesName, TimeZone,
    },
    calendar::Reset,
    db::{DbErrorKind, classify},
    request_id::RequestId,
    server::Store,
    tenant::TenantId,
};

/// Boxed cause of a store error, whatever the backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Durable per-(tenant, series, period) counters, the series' settings, and
/// the ledger of the ranges the counters handed out.
///
/// Every method that changes a counter commits durably before it returns:
/// a returned value survives a crash of the store.
#[async_trait]
pub trait CounterStore: Store {
    /// Allocates for several calls in one transaction, as planned by
    /// [`Batch`](crate::allocator::batch::Batch): claims their request ids,
    /// creates the series of allocating calls that do not exist with
    /// `defaults`, advances each period's counter once by the sum of its
    /// allocating calls (starting a period at its series' `start_at`), and
    /// records each allocating call's range. Either all of it commits or none does; if a
    /// series' calendar or gap policy is no longer the one its calls assumed,
    /// or two calls of one period assumed different ones, none does and the
    /// answer is [`StoreError::SeriesChanged`]. The outcomes come in the
    /// order of `calls`.
    async fn allocate_many(
        &self,
        calls: &[Call<'_>],
        defaults: &SeriesConfig,
        stamp: Stamp,
    ) -> Result<Vec<Outcome>, StoreError>;

    /// [`CounterStore::allocate_many`] for one call.
    async fn allocate(
        &self,
        call: Call<'_>,
        defaults: &SeriesConfig,
        stamp: Stamp,
    ) -> Result<Outcome, StoreError> {
        let mut outcomes = self.allocate_many(&[call], defaults, stamp).await?;
        Ok(outcomes.remove(0))
    }

    /// What `request_id` first answered (its series, count and numbers), if
    /// it was first used since `stamp`'s window began. A read: nothing is
    /// claimed, so an id in use by a call not yet committed reads as none.
    async fn first_answer(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        stamp: Stamp,
    ) -> Result<Option<KeyRow>, StoreError>;

    /// A period's ledger as of one moment: its counter and the ranges
    /// recorded up to it, if the period has begun. At most `sample` of the
    /// holes between ranges are read.
    async fn ledger(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        sample: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<Ledger>, StoreError>;

    /// The range of a period's ledger that holds `number`, if one does.
    async fn range_at(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        number: i64,
    ) -> Result<Option<RangeRow>, StoreError>;

    /// Up to `limit` ranges of a period that start after `number`, in
    /// order, only those of `kind` if one is given.
    async fn ranges_after(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        after: RangesAfter,
    ) -> Result<Vec<RangeRow>, StoreError>;

    /// Applies `change` to a number handed out, durably, if its state allows
    /// ([`decide`](crate::allocator::numbers::decide)); answers its state row
    /// after (none: still issued as its range gave it). The caller has checked
    /// that a range of `Allocate` or `Reserve` holds it.
    async fn change_state(
        &self,
        at: NumberAt<'_>,
        range: &RangeRow,
        change: StateChange<'_>,
        held: Held,
    ) -> Result<Option<StateRow>, ChangeError>;

    /// Applies several changes in one durable transaction, in order (a later
    /// change of the same number sees the earlier one); answers each as
    /// [`CounterStore::change_state`] would, with the range that holds its
    /// number, read in the same transaction: a number no range holds as
    /// handed out (`numbers::handed_out`) answers
    /// [`ChangeError::NotHandedOut`] and does not change. If another
    /// write stored the first state of one of their numbers meanwhile,
    /// nothing commits and every change answers [`ChangeError::Raced`].
    ///
    /// # Errors
    /// The transaction failed: no change was made.
    async fn change_states(&self, writes: &[StateWrite<'_>]) -> Result<Vec<Changed>, StoreError>;

    /// Hands out again the lowest number of a period given back to a series
    /// whose policy reissues (released, or reserved with a lease ended by
    /// `stamp.now`): reserved until `take.lease` ends, or issued without one.
    /// A request id in use within the window answers its first answer
    /// instead. None: nothing to reissue (or the id's answer was forgotten
    /// meanwhile), and nothing changed.
    async fn reissue(&self, take: Reissue<'_>, stamp: Stamp)
    -> Result<Option<Outcome>, StoreError>;

    /// For each of `periods`, whether it has a number given back by `now`
    /// (released, or reserved with a lease ended), as [`Self::reissue`]
    /// would find it: one read for all, in order.
    async fn given_back(
        &self,
        periods: &[PeriodOf<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, StoreError>;

    /// Gives back up to `limit` reservations whose lease ended by `now`,
    /// each by its series' policy with the reason "lease expired"; returns
    /// how many.
    async fn expire_leases(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;

    /// The state rows of a period's numbers in `first..=last`, in order.
    async fn states_between(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        numbers: (i64, i64),
    ) -> Result<Vec<StateRow>, StoreError>;

    /// Up to `after.limit` state rows of `after.states` after `after.number`,
    /// in order, each with the range that holds its number.
    async fn states_after(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        after: StatesAfter<'_>,
    ) -> Result<Vec<(StateRow, RangeRow)>, StoreError>;

    /// A series' settings, if it exists.
    async fn find(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
    ) -> Result<Option<SeriesConfig>, StoreError>;

    /// A period's counter, if the period has begun.
    async fn counter(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
    ) -> Result<Option<i64>, StoreError>;

    /// Creates the series with `defaults`, or locks it, and stores what
    /// `change` makes of its settings, given whether it has handed out or
    /// skipped a number. Nothing changes if `change` refuses.
    async fn configure(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        defaults: &SeriesConfig,
        change: Change<'_>,
    ) -> Result<SeriesConfig, ConfigureError>;

    /// Raises a period's counter to `at_least` if it is lower, creating the
    /// series with `defaults` and starting the period if absent, and records
    /// the range skipped with `reason`; never lowers it. Returns the series'
    /// settings and the counter. Fails with [`StoreError::SeriesChanged`] as
    /// [`CounterStore::allocate_many`] does.
    async fn advance(
        &self,
        advance: Advance<'_>,
        defaults: &SeriesConfig,
    ) -> Result<(SeriesConfig, i64), StoreError>;

    /// Forgets up to `limit` request ids first used before `before`; returns
    /// how many it forgot.
    async fn forget_request_ids(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// Up to `limit` of a tenant's series with names after `after`, by name.
    async fn list(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, SeriesConfig)>, StoreError>;
}

/// What `ConfigureSeries` makes of a series' settings: given the current ones
/// and whether the series has handed out or skipped a number, the new ones,
/// or why not.
pub type Change<'a> = &'a (dyn Fn(&SeriesConfig, bool) -> Result<SeriesConfig, Refusal> + Sync);

/// Why [`CounterStore::configure`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    /// The change was refused.
    #[error(transparent)]
    Refused(Refusal),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ConfigureError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

/// A counter to raise, and why.
#[derive(Debug, Clone, Copy)]
pub struct Advance<'a> {
    /// The series' tenant.
    pub tenant: &'a TenantId,
    /// The series.
    pub series: &'a SeriesName,
    /// The calendar the period was picked by.
    pub calendar: Calendar,
    /// The period whose counter is raised.
    pub period: &'a str,
    /// The date the skipped numbers read with.
    pub date: NaiveDate,
    /// The value to raise the counter to.
    pub at_least: i64,
    /// Why, recorded with the skipped range.
    pub reason: &'a str,
    /// When, recorded with the skipped range.
    pub now: DateTime<Utc>,
}

/// A one-number call that may take back a number given back.
#[derive(Debug, Clone, Copy)]
pub struct Reissue<'a> {
    /// The series' tenant.
    pub tenant: &'a TenantId,
    /// The series.
    pub series: &'a SeriesName,
    /// The period to take from.
    pub period: &'a str,
    /// The caller's idempotency key, scoped to the tenant.
    pub request_id: Option<&'a RequestId>,
    /// For a reservation: its lease.
    pub lease: Option<Lease>,
}

impl<'a> Reissue<'a> {
    /// The period it takes from.
    #[must_use]
    pub fn period_of(&self) -> PeriodOf<'a> {
        PeriodOf {
            tenant: self.tenant,
            series: self.series,
            period: self.period,
        }
    }
}

/// One period of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeriodOf<'a> {
    /// The series' tenant.
    pub tenant: &'a TenantId,
    /// The series.
    pub series: &'a SeriesName,
    /// The period.
    pub period: &'a str,
}

/// One `Allocate` call, as the store sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The series' tenant.
    pub tenant: &'a TenantId,
    /// The series.
    pub series: &'a SeriesName,
    /// The calendar the period was picked by, as the caller read it.
    pub calendar: Calendar,
    /// The series' gap policy, as the caller read it: the call goes on
    /// only if the series still has it.
    pub policy: GapPolicy,
    /// The series has handed out a number before (so its calendar is
    /// fixed): the transaction reads its settings without locking them.
    pub settled: bool,
    /// The period whose counter the call takes from.
    pub period: &'a str,
    /// The document's date: the date its numbers read with.
    pub date: NaiveDate,
    /// How many numbers, at least 1.
    pub count: i64,
    /// The caller's idempotency key, scoped to the tenant.
    pub request_id: Option<&'a RequestId>,
    /// For a `Reserve` call (of one number): its lease.
    pub lease: Option<Lease>,
}

impl Call<'_> {
    /// Which call this is, as its range's kind names it.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        kind_of(self.lease.as_ref())
    }
}

/// The kind of a call's range and request id: `reserve` with a lease,
/// `allocate` without.
#[must_use]
pub fn kind_of(lease: Option<&Lease>) -> &'static str {
    if lease.is_some() {
        "reserve"
    } else {
        "allocate"
    }
}

/// A reservation's lease: when it was taken, which its number's record
/// shows, and when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// When the reservation was made.
    pub at: DateTime<Utc>,
    /// When it ends.
    pub ends: DateTime<Utc>,
}

/// What one call received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// New numbers, committed with this call.
    Granted(Grant),
    /// The numbers an earlier call with the same request id received.
    Replayed(Grant),
    /// The request id was first used for another series or count: nothing
    /// was allocated.
    Reused {
        /// The series the id was first used for.
        series: String,
        /// The count it was first used for.
        count: i64,
        /// The call it was first used for: `allocate` or `reserve`.
        kind: String,
    },
}

/// A request id's first answer, read back for calls that repeat it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRow {
    /// The series the id was first used for.
    pub series: String,
    /// The count it was first used for.
    pub count: i64,
    /// The call it was first used for, as a range's kind: `allocate` or
    /// `reserve`.
    pub kind: String,
    /// The period its numbers were taken from.
    pub period: String,
    /// The first number it received.
    pub first_value: i64,
    /// The template its numbers read with.
    pub format: String,
    /// The date its numbers read with.
    pub date: NaiveDate,
}

impl KeyRow {
    /// The first answer of a call of `kind` for `count` numbers of `series`.
    #[must_use]
    pub fn new(series: &str, count: i64, kind: &str, grant: Grant) -> Self {
        Self {
            series: series.to_owned(),
            count,
            kind: kind.to_owned(),
            period: grant.period,
            first_value: grant.first,
            format: grant.format,
            date: grant.date,
        }
    }

    /// What a later call of `kind` with the same id gets: the same numbers
    /// if it is the same call for the same series and count, else nothing.
    #[must_use]
    pub fn repeated_by(self, series: &str, count: i64, kind: &str) -> Outcome {
        if self.series == series && self.count == count && self.kind == kind {
            Outcome::Replayed(Grant {
                first: self.first_value,
                format: self.format,
                date: self.date,
                period: self.period,
            })
        } else {
            Outcome::Reused {
                series: self.series,
                count: self.count,
                kind: self.kind,
            }
        }
    }
}

/// A period's ledger: its counter, the sums of its ranges by kind, and the
/// holes between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    /// The period's last number handed out or skipped.
    pub last_value: i64,
    /// The value it started from: `start_at - 1` when it began.
    pub base: i64,
    /// Numbers in ranges of each kind (`allocate`, `reserve`, `advance`), and the end
    /// of each kind's last range.
    pub kinds: Vec<KindTotal>,
    /// The first holes between ranges, as (first number, count), ascending;
    /// not the hole after the last range.
    pub holes: Vec<(i64, i64)>,
    /// State rows, by the kind of range their numbers lie in and by state
    /// (`expired` for a reservation whose lease has ended).
    pub states: Vec<StateTotal>,
    /// Those of `states` whose number lies in no range (its range lost):
    /// looked for only when some number does.
    pub unranged: Vec<StateTotal>,
    /// The first numbers of `reserve` ranges with no state row: a reserved
    /// number always has one, so these have no record.
    pub orphans: Vec<i64>,
}

/// How many state rows of one origin are in one state.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StateTotal {
    /// The kind of range their numbers lie in: `allocate` or `reserve`.
    pub origin: String,
    /// Their state; `expired` for reservations whose lease has ended.
    pub state: String,
    /// How many.
    pub numbers: i64,
}

/// A range of a period's ledger, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RangeRow {
    /// Its first number.
    pub first_value: i64,
    /// How many numbers it holds.
    pub count: i64,
    /// `allocate` (handed out), `reserve` (one number reserved) or `advance` (skipped).
    pub kind: String,
    /// Why an advance skipped it; empty for an allocation.
    pub reason: String,
    /// The request id of the call that took it, if it sent one.
    pub request_id: Option<String>,
    /// The template its numbers read with.
    pub format: String,
    /// The date its numbers read with.
    pub date: NaiveDate,
    /// When it was committed.
    pub created_at: DateTime<Utc>,
}

impl RangeRow {
    /// Its last number.
    #[must_use]
    pub fn last(&self) -> i64 {
        self.first_value + (self.count - 1)
    }

    /// Whether `number` lies in it.
    #[must_use]
    pub fn holds(&self, number: i64) -> bool {
        (self.first_value..=self.last()).contains(&number)
    }
}

/// What a caller asks of one number handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChange<'a> {
    /// Its document was stored under `reference`.
    Confirm {
        /// The document's reference.
        reference: &'a str,
        /// The request id the caller reserved it under, if it names one:
        /// a number held under another is refused.
        holder: Option<&'a str>,
    },
    /// Its reservation is given back, for `reason`: released or voided by
    /// the series' gap policy.
    Release {
        /// Why.
        reason: &'a str,
        /// As [`StateChange::Confirm`]'s.
        holder: Option<&'a str>,
    },
    /// It will never be used, for `reason`.
    Void {
        /// Why.
        reason: &'a str,
    },
}

/// Why a number's state does not allow a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateRefusal {
    /// Confirmed before with another reference.
    #[error("the number was confirmed with reference {reference:?}")]
    AlreadyConfirmed {
        /// The reference it was confirmed with.
        reference: String,
    },
    /// Confirmed, so it cannot be released (voiding it can cancel it).
    #[error("the number was confirmed with reference {reference:?}; void it instead")]
    Confirmed {
        /// The reference it was confirmed with.
        reference: String,
    },
    /// Its reservation's lease ended before the confirmation.
    #[error("the number's reservation expired at {expired_at}")]
    Expired {
        /// When the lease ended.
        expired_at: DateTime<Utc>,
    },
    /// Released: it waits to be handed out again.
    #[error("the number was released: {reason}")]
    Released {
        /// Why it was released.
        reason: String,
    },
    /// Voided before.
    #[error("the number was voided: {reason}")]
    Voided {
        /// Why it was voided.
        reason: String,
    },
    /// Handed out by `Allocate`, not reserved: there is nothing to release.
    #[error("the number was not reserved; confirm or void it")]
    NotReserved,
    /// Held under another request id than the caller's: its reservation
    /// under the caller's ended and another call took the number.
    #[error("the number is held under request id {request_id:?}")]
    NotTheHolder {
        /// The request id it is held under.
        request_id: String,
    },
    /// Handed out again, by a series that reissues, after the call that
    /// names no holder was sent: the lease of the reservation it was sent
    /// for ended while it waited for its commit.
    #[error("the number was handed out again after the call was sent")]
    HandedOutAgain {
        /// The request id it is held under now, if its taker sent one.
        request_id: String,
    },
}

/// What became of a number since its range was recorded, when that is not
/// simply "issued": every reserved number has one from the start.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StateRow {
    /// The number.
    pub number: i64,
    /// `issued`, `reserved`, `confirmed`, `released` or `voided`.
    pub state: String,
    /// The reference of the document that holds it.
    pub reference: String,
    /// Why it was released or voided.
    pub reason: String,
    /// When it took this state.
    pub updated_at: DateTime<Utc>,
    /// The kind of the range that holds it: `allocate` or `reserve`.
    pub origin: String,
    /// When the lease of its reservation ends: kept while it is reserved or
    /// confirmed, and once given back because the lease ran out (cleared
    /// when it is released or voided by a call).
    pub expires_at: Option<DateTime<Utc>>,
    /// The request id of the call that last took it, if it sent one.
    pub request_id: Option<String>,
}

/// A state row joined with the range that holds its number.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StatedRow {
    pub number: i64,
    pub state: String,
    pub reference: String,
    pub reason: String,
    pub updated_at: DateTime<Utc>,
    pub origin: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub state_request_id: Option<String>,
    pub first_value: i64,
    pub count: i64,
    pub kind: String,
    pub request_id: Option<String>,
    pub format: String,
    pub date: NaiveDate,
    pub created_at: DateTime<Utc>,
}

impl StatedRow {
    /// The state row and its range, apart.
    pub(crate) fn split(self) -> (StateRow, RangeRow) {
        let state = StateRow {
            number: self.number,
            state: self.state,
            reference: self.reference,
            reason: self.reason,
            updated_at: self.updated_at,
            origin: self.origin,
            expires_at: self.expires_at,
            request_id: self.state_request_id,
        };
        let range = RangeRow {
            first_value: self.first_value,
            count: self.count,
            kind: self.kind,
            // A range of Allocate has no reason of its own.
            reason: String::new(),
            request_id: self.request_id,
            format: self.format,
            date: self.date,
            created_at: self.created_at,
        };
        (state, range)
    }
}

/// One number of a period.
#[derive(Debug, Clone, Copy)]
pub struct NumberAt<'a> {
    /// The tenant.
    pub tenant: &'a TenantId,
    /// The series.
    pub series: &'a SeriesName,
    /// The period.
    pub period: &'a str,
    /// The number.
    pub number: i64,
}

/// What a state row is read against: the series' gap policy and the time,
/// which decide what a reservation whose lease has ended stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The series' gap policy.
    pub policy: GapPolicy,
    /// Now.
    pub now: DateTime<Utc>,
}

/// One change of a batch.
#[derive(Debug, Clone, Copy)]
pub struct StateWrite<'a> {
    /// The number, which a range of `Allocate` or `Reserve` holds.
    pub at: NumberAt<'a>,
    /// The change asked.
    pub change: StateChange<'a>,
    /// What its state row is read against.
    pub held: Held,
}

/// What one change of a batch did: the range that holds the number and
/// the number's state row after it (none: still issued as its range gave
/// it), or why nothing changed.
pub type Changed = Result<(RangeRow, Option<StateRow>), ChangeError>;

/// A number's key and state row, as a batch reads and writes them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct KeyedStateRow {
    pub tenant_id: String,
    pub series: String,
    pub period: String,
    #[sqlx(flatten)]
    pub row: StateRow,
}

/// Why a number's state did not change.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// Its state does not allow the change.
    #[error(transparent)]
    Refused(#[from] StateRefusal),
    /// No range holds it as handed out: none holds it, or the one that
    /// does skipped it.
    #[error("the number was not handed out")]
    NotHandedOut {
        /// A range holds it, skipped.
        skipped: bool,
    },
    /// Another write stored the number's first state meanwhile: run again.
    #[error("the number's state changed meanwhile")]
    Raced,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ChangeError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

/// Which state rows [`CounterStore::states_after`] reads.
#[derive(Debug, Clone, Copy)]
pub struct StatesAfter<'a> {
    /// Rows of these states (one or two of `issued`, `reserved`,
    /// `confirmed`, `released`, `voided`).
    pub states: &'a [&'a str],
    /// Of numbers after this one.
    pub number: i64,
    /// At most this many.
    pub limit: u32,
}

/// Which ranges [`CounterStore::ranges_after`] reads.
#[derive(Debug, Clone, Copy)]
pub struct RangesAfter {
    /// Ranges starting after this number.
    pub number: i64,
    /// Only ranges skipped (`Some(true)`) or handed out (`Some(false)`).
    pub skipped: Option<bool>,
    /// At most this many.
    pub limit: u32,
}

/// The numbers in a period's ranges of one kind.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KindTotal {
    /// `allocate`, `reserve` or `advance`.
    pub kind: String,
    /// How many numbers its ranges hold.
    pub numbers: i64,
    /// The last number of its last range.
    pub last: i64,
}

/// When a transaction runs, as its records and request ids see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The time the records of the transaction carry.
    pub now: DateTime<Utc>,
    /// Request ids first used before this are forgotten.
    pub forget_before: DateTime<Utc>,
}

/// A range of numbers handed out to one call, committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The first number of the range.
    pub first: i64,
    /// The template its numbers read with: the series' when first handed out.
    pub format: String,
    /// The date its numbers read with: the document's date.
    pub date: NaiveDate,
    /// The period it was taken from.
    pub period: String,
}

/// A counter store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached now; retrying the call later may succeed.
    #[error("counter store unavailable")]
    Unavailable(#[source] BoxError),
    /// The counter would pass the largest representable number.
    #[error("counter would pass {}", i64::MAX)]
    Exhausted,
    /// A series' reset or time zone is no longer what the call assumed:
    /// nothing was written; read the series again.
    #[error("a series was configured anew during the call")]
    SeriesChanged,
    /// Anything else.
    #[error("counter store failed")]
    Internal(#[source] BoxError),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match classify(&error) {
            // A transaction that lost a conflict (a deadlock) rolled back whole and
            // can simply run again.
            DbErrorKind::Unavailable | DbErrorKind::Retryable => Self::Unavailable(error.into()),
            // A new connection refused: the database dropped, or the role's
            // password changed, under the running service. Away until the
            // operator mends it, as a server that does not answer is.
            DbErrorKind::NoSuchDatabase | DbErrorKind::Authentication => {
                Self::Unavailable(error.into())
            }
            DbErrorKind::OutOfRange => Self::Exhausted,
            _ => Self::Internal(error.into()),
        }
    }
}

/// A series row as both backends' statements return it.
#[derive(sqlx::FromRow)]
pub(crate) struct SeriesRow {
    pub series: String,
    pub format: String,
    pub reset: String,
    pub timezone: String,
    pub start_at: i64,
    pub gap_policy: String,
}

impl SeriesRow {
    /// The settings the row holds.
    pub(crate) fn config(&self) -> Result<SeriesConfig, StoreError> {
        let invalid = |what: &str, reason: String| {
            StoreError::Internal(
                format!("series {:?} holds an invalid {what}: {reason}", self.series).into(),
            )
        };
        Ok(SeriesConfig {
            format: NumberFormat::stored(&self.format)
                .map_err(|reason| invalid("format", reason))?,
            calendar: Calendar {
                reset: Reset::from_name(&self.reset).map_err(|reason| invalid("reset", reason))?,
                zone: TimeZone::parse(&self.timezone)
                    .map_err(|reason| invalid("time zone", reason))?,
            },
            start_at: self.start_at,
            gap_policy: GapPolicy::from_name(&self.gap_policy)
                .map_err(|reason| invalid("gap policy", reason))?,
        })
    }
}
