//! Single numbers and their records, read from the ledger's ranges: what
//! became of each number of a period.

use chrono::{DateTime, NaiveDate, Utc};

use crate::{
    allocator::{
        Allocator, Error,
        allocate::parse_stored,
        series::{GapPolicy, SeriesName},
        store::{
            ChangeError, Changed, Held, NumberAt, RangeRow, RangesAfter, StateChange, StateRefusal,
            StateRow, StateWrite, StatesAfter, StoreError,
        },
    },
    calendar::Reset,
    page::Page,
    tenant::TenantId,
};

/// What became of a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberState {
    /// Handed out by `Allocate`.
    Issued,
    /// Held by a reservation until its lease ends.
    Reserved,
    /// Confirmed with the reference of the document that holds it.
    Confirmed,
    /// Given back to a series that reissues: the next one-number call may
    /// take it.
    Released,
    /// Voided with a reason: never handed out again.
    Voided,
    /// Jumped over by `AdvanceCounter`.
    Skipped,
}

impl NumberState {
    /// The state as a state row stores it; none for a skipped number.
    #[must_use]
    pub fn stored(self) -> Option<&'static str> {
        match self {
            Self::Issued => Some("issued"),
            Self::Reserved => Some("reserved"),
            Self::Confirmed => Some("confirmed"),
            Self::Released => Some("released"),
            Self::Voided => Some("voided"),
            Self::Skipped => None,
        }
    }

    /// The state a state row holds.
    ///
    /// # Errors
    /// A state no row should hold.
    pub fn of_stored(state: &str) -> Result<Self, StoreError> {
        match state {
            "issued" => Ok(Self::Issued),
            "reserved" => Ok(Self::Reserved),
            "confirmed" => Ok(Self::Confirmed),
            "released" => Ok(Self::Released),
            "voided" => Ok(Self::Voided),
            _ => Err(StoreError::Internal(
                format!("stored number state {state:?}").into(),
            )),
        }
    }

    /// The state of the numbers of a range of `kind`, before any row.
    ///
    /// # Errors
    /// A kind no range should have.
    pub fn of_kind(kind: &str) -> Result<Self, StoreError> {
        match kind {
            "allocate" => Ok(Self::Issued),
            "reserve" => Ok(Self::Reserved),
            "advance" => Ok(Self::Skipped),
            _ => Err(StoreError::Internal(
                format!("stored range of unknown kind {kind:?}").into(),
            )),
        }
    }
}

impl GapPolicy {
    /// The state of a reserved number given back under this policy.
    #[must_use]
    pub fn given_back(self) -> NumberState {
        match self {
            Self::Void => NumberState::Voided,
            Self::Reissue => NumberState::Released,
        }
    }
}

/// The reason of a number given back because its lease ran out.
pub const LEASE_EXPIRED: &str = "lease expired";

/// A state row as it stands at [`Held::now`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// The state it stands for: a reservation whose lease has ended is
    /// given back by the series' policy, swept or not.
    pub state: NumberState,
    /// Why it was released or voided.
    pub reason: String,
    /// When it took that state.
    pub updated_at: DateTime<Utc>,
    /// When its lease ran out, if that is how it was given back.
    pub expired_at: Option<DateTime<Utc>>,
}

impl Standing {
    /// What `row` stands for under `held`.
    ///
    /// # Errors
    /// A row of unknown state.
    pub fn of(row: &StateRow, held: Held) -> Result<Self, StoreError> {
        let state = NumberState::of_stored(&row.state)?;
        Ok(match (state, row.expires_at) {
            (NumberState::Reserved, Some(end)) if end <= held.now => Self {
                state: held.policy.given_back(),
                reason: LEASE_EXPIRED.to_owned(),
                updated_at: end,
                expired_at: Some(end),
            },
            (NumberState::Released | NumberState::Voided, end) => Self {
                state,
                reason: row.reason.clone(),
                updated_at: row.updated_at,
                // Kept only when the lease's end gave it back.
                expired_at: end,
            },
            _ => Self {
                state,
                reason: row.reason.clone(),
                updated_at: row.updated_at,
                expired_at: None,
            },
        })
    }
}

/// One number and its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberRecord {
    /// The number.
    pub number: i64,
    /// As its document shows it.
    pub formatted: String,
    /// The date it reads with.
    pub date: NaiveDate,
    /// What became of it.
    pub state: NumberState,
    /// The reference of the document that holds it, once confirmed.
    pub reference: String,
    /// Why it was skipped, released or voided.
    pub reason: String,
    /// The request id of the call that took it; empty if none.
    pub request_id: String,
    /// When the lease of its reservation ends or ended, if it was reserved.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it took its state.
    pub updated_at: DateTime<Utc>,
}

/// The range that holds `number` as handed out, of the last range of its
/// period starting at or before it (`range`).
///
/// # Errors
/// [`ChangeError::NotHandedOut`]: no range holds it, or the one that does
/// skipped it; a range of unknown kind.
pub(crate) fn handed_out(range: Option<RangeRow>, number: i64) -> Result<RangeRow, ChangeError> {
    match range.filter(|range| range.holds(number)) {
        None => Err(ChangeError::NotHandedOut { skipped: false }),
        Some(range) if NumberState::of_kind(&range.kind)? == NumberState::Skipped => {
            Err(ChangeError::NotHandedOut { skipped: true })
        }
        Some(range) => Ok(range),
    }
}

/// The record of the number `at` as `range`, which holds it, gives it.
fn record_in(at: NumberAt<'_>, range: &RangeRow) -> Result<NumberRecord, Error> {
    let render = |range: &RangeRow, n| render_stored(at.tenant, at.series, range, n);
    let mut records = expand(std::slice::from_ref(range), at.number, 1, render)?;
    records.pop().ok_or_else(|| {
        StoreError::Internal(format!("the range read holds no number {}", at.number).into()).into()
    })
}

/// The numbers of `ranges` (in order) from `from` on, at most `limit`, each
/// shown by `render`.
///
/// # Errors
/// A range of unknown kind, or one `render` refuses.
pub fn expand<E>(
    ranges: &[RangeRow],
    from: i64,
    limit: usize,
    render: impl Fn(&RangeRow, i64) -> Result<String, E>,
) -> Result<Vec<NumberRecord>, E>
where
    E: From<StoreError>,
{
    let mut records = Vec::with_capacity(limit.min(1024));
    for range in ranges {
        let state = NumberState::of_kind(&range.kind)?;
        let first = range.first_value.max(from);
        // Inclusive, so that a range ending at i64::MAX needs no overflow.
        for number in (first..=range.last()).take(limit - records.len()) {
            records.push(NumberRecord {
                number,
                formatted: render(range, number)?,
                date: range.date,
                state,
                reference: String::new(),
                reason: range.reason.clone(),
                request_id: range.request_id.clone().unwrap_or_default(),
                expires_at: None,
                updated_at: range.created_at,
            });
        }
        if records.len() == limit {
            break;
        }
    }
    Ok(records)
}

impl NumberRecord {
    /// The record as its state row says it stands now.
    ///
    /// # Errors
    /// A row of unknown state.
    pub fn with(mut self, row: &StateRow, held: Held) -> Result<Self, StoreError> {
        let standing = Standing::of(row, held)?;
        self.state = standing.state;
        self.reference.clone_from(&row.reference);
        self.reason = standing.reason;
        self.updated_at = standing.updated_at;
        self.expires_at = row.expires_at;
        if let Some(request_id) = &row.request_id {
            self.request_id.clone_from(request_id);
        }
        Ok(self)
    }
}

/// What made a number, and the request id it is held under: as its row
/// says, or, without one, as its range made it (a reservation's whose row was
/// lost is still held under the reservation's request id).
fn taken<'a>(range: &'a RangeRow, current: Option<&'a StateRow>) -> (&'a str, Option<&'a str>) {
    match current {
        Some(row) => (row.origin.as_str(), row.request_id.as_deref()),
        None if range.kind == "reserve" => ("reserve", range.request_id.as_deref()),
        None => ("allocate", None),
    }
}

/// What `change` makes of number `number`, which `range` holds, now as
/// `current` says (none: issued, as its range gave it), read against
/// `held`: the row to store, or none when the number is already so (a
/// repeat answers what the first call did).
///
/// # Errors
/// [`ChangeError::Refused`]: the number's state does not allow the change.
pub fn decide(
    number: i64,
    range: &RangeRow,
    current: Option<&StateRow>,
    change: StateChange<'_>,
    held: Held,
) -> Result<Option<StateRow>, ChangeError> {
    use NumberState::{Confirmed, Issued, Released, Reserved, Skipped, Voided};
    let standing = current.map(|row| Standing::of(row, held)).transpose()?;
    let (state, reason) = standing
        .as_ref()
        .map_or((Issued, ""), |s| (s.state, s.reason.as_str()));
    let reference = current.map_or("", |row| row.reference.as_str());
    let (origin, taken_under) = taken(range, current);
    let refuse = |refusal| Err(ChangeError::Refused(refusal));
    let given_back = |state| match state {
        Released => refuse(StateRefusal::Released {
            reason: reason.to_owned(),
        }),
        _ => refuse(StateRefusal::Voided {
            reason: reason.to_owned(),
        }),
    };
    let write = |state: NumberState, reference: &str, reason: &str, expires_at| {
        Ok(Some(StateRow {
            number,
            state: state.stored().unwrap_or_default().to_owned(),
            reference: reference.to_owned(),
            reason: reason.to_owned(),
            updated_at: held.now,
            origin: origin.to_owned(),
            expires_at,
            request_id: taken_under.map(str::to_owned),
        }))
    };
    let lease = current.and_then(|row| row.expires_at);
    let expired_at = standing.as_ref().and_then(|s| s.expired_at);
    let holder = match change {
        StateChange::Confirm { holder, .. } | StateChange::Release { holder, .. } => holder,
        StateChange::Void { .. } => None,
    };
    // A call is read at the time it was sent: a number a series that
    // reissues handed out again since, while the call waited for its
    // commit, is not the one the caller was given. (Sent after that, it is
    // the number's holding then; naming the holder is what tells them apart.)
    if holder.is_none()
        && held.policy == GapPolicy::Reissue
        && let Some(row) = current
        && matches!(row.state.as_str(), "issued" | "reserved")
        && row.updated_at > held.now
    {
        return refuse(StateRefusal::HandedOutAgain {
            request_id: row.request_id.clone().unwrap_or_default(),
        });
    }
    // Only a reservation's row names who holds the number: taken again
    // after its lease ended, it names the call that took it. One reserved
    // or taken again without a request id is held under none, so under no
    // id a change names.
    if let Some(holder) = holder
        && (origin == "reserve" || taken_under.is_some())
        && taken_under != Some(holder)
    {
        return refuse(StateRefusal::NotTheHolder {
            request_id: taken_under.unwrap_or_default().to_owned(),
        });
    }
    match change {
        // Its holder's confirmation, late: the number was not taken again
        // since (a reservation that takes it names its own holder), so it
        // is still the holder's, and its record says what became of it.
        StateChange::Confirm {
            reference: asked,
            holder: Some(holder),
        } if expired_at.is_some()
            && current.and_then(|row| row.request_id.as_deref()) == Some(holder) =>
        {
            write(Confirmed, asked, "", lease)
        }
        StateChange::Confirm { .. } if let Some(expired_at) = expired_at => {
            refuse(StateRefusal::Expired { expired_at })
        }
        StateChange::Confirm {
            reference: asked, ..
        } => match state {
            Issued | Reserved => write(Confirmed, asked, "", lease),
            Confirmed if reference == asked => Ok(None),
            Confirmed => refuse(StateRefusal::AlreadyConfirmed {
                reference: reference.to_owned(),
            }),
            Released | Voided | Skipped => given_back(state),
        },
        StateChange::Release { reason: asked, .. } => match state {
            Reserved => write(held.policy.given_back(), "", asked, None),
            // A repeat: a reservation given back by a release with this
            // reason, not by its lease's end (nor voided once confirmed).
            Released | Voided
                if state == held.policy.given_back()
                    && reason == asked
                    && expired_at.is_none()
                    && current.is_some_and(|row| row.origin == "reserve")
                    && reference.is_empty() =>
            {
                Ok(None)
            }
            Issued => refuse(StateRefusal::NotReserved),
            Confirmed => refuse(StateRefusal::Confirmed {
                reference: reference.to_owned(),
            }),
            Released | Voided | Skipped => given_back(state),
        },
        StateChange::Void { reason: asked } => match state {
            Voided if reason == asked => Ok(None),
            Voided => given_back(state),
            _ => write(Voided, reference, asked, None),
        },
    }
}

/// Refuses a period a series that resets by `reset` never makes (a year of a
/// monthly series, say): read as one, it holds no number.
///
/// # Errors
/// [`Error::Invalid`] naming `period`.
pub(super) fn made_by(reset: Reset, period: &str) -> Result<(), Error> {
    if reset.makes(period) {
        return Ok(());
    }
    let reason = match reset {
        Reset::Never => {
            format!("{period:?} is not a period of this series, which never resets: leave it empty")
        }
        _ => format!(
            "{period:?} is not a period of this series, which resets {}: give one such as {:?}",
            reset.name(),
            reset.period(NaiveDate::from_ymd_opt(2026, 3, 15).unwrap_or_default()),
        ),
    };
    Err(Error::Invalid {
        field: "period",
        reason,
    })
}

/// A page of numbers, and the number to list on from if more follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NumberPage {
    /// The numbers, in order.
    pub records: Vec<NumberRecord>,
    /// The last number this page looked at, when more follow.
    pub next_after: Option<i64>,
}

impl Allocator {
    /// What the series' state rows of `period` are read against now.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a period the series' reset never makes (a
    /// year of a monthly series, say), which would otherwise read as a
    /// period without numbers; a store failure.
    pub(super) async fn held(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
    ) -> Result<Held, Error> {
        let now = self.now();
        let known = match self.settled_calendar(tenant, series) {
            Some(known) => Some(known),
            // Until the series hands out a number its policy may change,
            // in any process.
            None => self.configured_calendar(tenant, series).await?,
        };
        let policy = match known {
            Some(known) => {
                made_by(known.calendar.reset, period)?;
                known.policy
            }
            // Never used nor configured: it has no periods yet, and no
            // number of any is held (NOT_FOUND, as for a number never
            // handed out), whatever reset it will be configured with.
            None => self.defaults.gap_policy,
        };
        Ok(Held { policy, now })
    }

    /// One number of a period and its record.
    ///
    /// # Errors
    /// [`Error::NumberNotFound`]: no range holds it; a store failure.
    pub async fn get_number(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        number: i64,
    ) -> Result<NumberRecord, Error> {
        let at = NumberAt {
            tenant,
            series,
            period,
            number,
        };
        let held = self.held(tenant, series, period).await?;
        let record = self.ranged(at).await?;
        let states = self
            .store
            .states_between(tenant, series, period, (number, number))
            .await?;
        match states.first() {
            Some(row) => Ok(record.with(row, held)?),
            None => Ok(record),
        }
    }

    /// A number's record as its range gave it.
    async fn ranged(&self, at: NumberAt<'_>) -> Result<NumberRecord, Error> {
        let NumberAt {
            tenant,
            series,
            period,
            number,
        } = at;
        let not_found = || Error::NumberNotFound {
            tenant: tenant.to_string(),
            series: series.to_string(),
            period: period.to_owned(),
            number,
            skipped: false,
        };
        let range = self.store.range_at(tenant, series, period, number).await?;
        record_in(at, &range.ok_or_else(not_found)?)
    }

    /// Confirms, releases or voids a number handed out, if its state
    /// allows; a repeat of the same confirmation or voiding answers the same
    /// record.
    ///
    /// # Errors
    /// [`Error::NumberNotFound`]: it was never handed out (a number skipped
    /// was not); [`Error::NotAllowed`]: its state does not allow the change;
    /// a store failure.
    pub async fn change_state(
        &self,
        at: NumberAt<'_>,
        change: StateChange<'_>,
    ) -> Result<NumberRecord, Error> {
        let held = self.held(at.tenant, at.series, at.period).await?;
        let changed = match self.committer() {
            // The group reads the number's range with its rows.
            Some(committer) => {
                let write = StateWrite { at, change, held };
                match committer.change(write).await.map_err(Error::from)? {
                    // Another process stored the number's first state: alone,
                    // the change sees it.
                    Err(ChangeError::Raced) => self.change_alone(at, change, held).await,
                    changed => changed,
                }
            }
            None => self.change_alone(at, change, held).await,
        };
        match changed {
            Ok((range, row)) => {
                let record = record_in(at, &range)?;
                match row {
                    Some(row) => Ok(record.with(&row, held)?),
                    None => Ok(record),
                }
            }
            Err(ChangeError::NotHandedOut { skipped }) => Err(Error::NumberNotFound {
                tenant: at.tenant.to_string(),
                series: at.series.to_string(),
                period: at.period.to_owned(),
                number: at.number,
                skipped,
            }),
            Err(ChangeError::Refused(refusal)) => Err(Error::NotAllowed(refusal)),
            Err(ChangeError::Store(error)) => Err(error.into()),
            Err(ChangeError::Raced) => Err(StoreError::Unavailable(
                "the number's state changed meanwhile; retry".into(),
            )
            .into()),
        }
    }

    /// Applies `change` in a write of its own, once its number's range shows
    /// it was handed out.
    async fn change_alone(&self, at: NumberAt<'_>, change: StateChange<'_>, held: Held) -> Changed {
        let range = self
            .store
            .range_at(at.tenant, at.series, at.period, at.number)
            .await?;
        let range = handed_out(range, at.number)?;
        let row = self.store.change_state(at, &range, change, held).await?;
        Ok((range, row))
    }

    /// Up to `limit` numbers of a period after `after`, in number order, only
    /// those in `state` if one is given, and the number to list on from, if
    /// more follow. A page may hold fewer than `limit` when a state is asked
    /// for.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list_numbers(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        state: Option<NumberState>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<NumberPage, Error> {
        use NumberState::{Confirmed, Issued, Released, Reserved, Skipped, Voided};
        let Some(from) = after.map_or(Some(1), |after| after.checked_add(1)) else {
            return Ok(NumberPage::default());
        };
        let held = self.held(tenant, series, period).await?;
        let fetch = Page::<NumberRecord>::fetch(limit);
        // The rows that may stand for the state: a reservation whose lease
        // ended stands for a number given back, swept or not.
        let rows_of: Option<&[&str]> = match state {
            Some(Reserved) => Some(&["reserved"]),
            Some(Confirmed) => Some(&["confirmed"]),
            Some(Released) => Some(&["released", "reserved"]),
            Some(Voided) => Some(&["voided", "reserved"]),
            Some(Issued | Skipped) | None => None,
        };
        if let Some(states) = rows_of {
            let after = StatesAfter {
                states,
                number: from - 1,
                limit: fetch,
            };
            let rows = self
                .store
                .states_after(tenant, series, period, after)
                .await?;
            let render = |range: &RangeRow, n| render_stored(tenant, series, range, n);
            let mut scanned = Vec::with_capacity(rows.len());
            for (row, range) in &rows {
                // The joined range holds the row's number: one record.
                for record in expand(std::slice::from_ref(range), row.number, 1, render)? {
                    scanned.push(record.with(row, held)?);
                }
            }
            let page = Page::from_fetched(scanned, limit);
            let next_after = page
                .more
                .then(|| page.items.last().map(|r| r.number))
                .flatten();
            let records = page
                .items
                .into_iter()
                .filter(|record| state == Some(record.state))
                .collect();
            return Ok(NumberPage {
                records,
                next_after,
            });
        }
        // Numbers skipped lie in ranges of their own; issued ones may lie in
        // a reservation's range too, once reissued.
        let skipped = state.map(|state| state == Skipped);
        let at = self.store.range_at(tenant, series, period, from).await?;
        let mut ranges: Vec<RangeRow> = at
            .into_iter()
            .filter(|range| skipped.is_none_or(|skipped| skipped == (range.kind == "advance")))
            .collect();
        let after = RangesAfter {
            number: from,
            skipped,
            limit: fetch,
        };
        ranges.extend(
            self.store
                .ranges_after(tenant, series, period, after)
                .await?,
        );
        let render = |range: &RangeRow, n| render_stored(tenant, series, range, n);
        let scanned = Page::from_fetched(expand(&ranges, from, fetch as usize, render)?, limit);
        let (Some(first), Some(last)) = (scanned.items.first(), scanned.items.last()) else {
            return Ok(NumberPage::default());
        };
        let span = (first.number, last.number);
        let next_after = scanned.more.then_some(last.number);
        let rows = self
            .store
            .states_between(tenant, series, period, span)
            .await?;
        let mut rows = rows.iter().peekable();
        let mut records = Vec::with_capacity(scanned.items.len());
        for record in scanned.items {
            let record = match rows.next_if(|row| row.number == record.number) {
                Some(row) => record.with(row, held)?,
                None => record,
            };
            if state.is_none_or(|state| record.state == state) {
                records.push(record);
            }
        }
        Ok(NumberPage {
            records,
            next_after,
        })
    }
}

/// Number `n` of `range` as its document shows it.
fn render_stored(
    tenant: &TenantId,
    series: &SeriesName,
    range: &RangeRow,
    n: i64,
) -> Result<String, Error> {
    Ok(parse_stored(tenant, series, &range.format)?.render(n, range.date))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first_value: i64, count: i64, kind: &str) -> RangeRow {
        RangeRow {
            first_value,
            count,
            kind: kind.to_owned(),
            reason: if kind == "advance" { "old system" } else { "" }.to_owned(),
            request_id: None,
            format: String::new(),
            date: NaiveDate::from_ymd_opt(2026, 12, 3).unwrap(),
            created_at: DateTime::UNIX_EPOCH,
        }
    }

    fn numbers(ranges: &[RangeRow], from: i64, limit: usize) -> Vec<(i64, NumberState)> {
        let render = |_: &RangeRow, n: i64| Ok::<_, StoreError>(n.to_string());
        expand(ranges, from, limit, render)
            .unwrap()
            .into_iter()
            .map(|record| (record.number, record.state))
            .collect()
    }

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + chrono::TimeDelta::minutes(minutes)
    }

    fn row(state: &str, reference: &str, reason: &str) -> StateRow {
        StateRow {
            number: 7,
            state: state.to_owned(),
            reference: reference.to_owned(),
            reason: reason.to_owned(),
            updated_at: DateTime::UNIX_EPOCH,
            origin: "allocate".to_owned(),
            expires_at: None,
            request_id: None,
        }
    }

    /// A reservation made at minute 0 whose lease ends at minute 5.
    fn reserved() -> StateRow {
        StateRow {
            origin: "reserve".to_owned(),
            expires_at: Some(at(5)),
            ..row("reserved", "", "")
        }
    }

    type Decided =
        Result<Option<(NumberState, String, String, Option<DateTime<Utc>>)>, StateRefusal>;

    /// The decision at minute `now` in a series of `policy`, as its parts.
    fn decided(
        current: Option<&StateRow>,
        change: StateChange<'_>,
        policy: GapPolicy,
        now: i64,
    ) -> Decided {
        let held = Held {
            policy,
            now: at(now),
        };
        match decide(7, &range(7, 1, "allocate"), current, change, held) {
            Ok(Some(row)) => Ok(Some((
                NumberState::of_stored(&row.state).unwrap(),
                row.reference,
                row.reason,
                row.expires_at,
            ))),
            Ok(None) => Ok(None),
            Err(ChangeError::Refused(refusal)) => Err(refusal),
            Err(other) => panic!("{other:?}"),
        }
    }

    type Written = (NumberState, String, String, Option<DateTime<Utc>>);

    fn write(state: NumberState, reference: &str, reason: &str, ends: Option<i64>) -> Written {
        (state, reference.to_owned(), reason.to_owned(), ends.map(at))
    }

    /// A number of a reservation whose row was lost is still that
    /// reservation's: its first row says so, and names its holder, and a
    /// change naming another holder is refused.
    #[test]
    fn a_reservation_without_its_row_is_held_as_its_range_says() {
        let held = Held {
            policy: GapPolicy::Void,
            now: at(0),
        };
        let reservation = RangeRow {
            request_id: Some("r-7".to_owned()),
            ..range(7, 1, "reserve")
        };
        let confirm = |holder| StateChange::Confirm {
            reference: "inv-7",
            holder,
        };
        let first_row = |range: &RangeRow, change| match decide(7, range, None, change, held) {
            Ok(Some(row)) => (row.state, row.origin, row.request_id),
            other => panic!("{other:?}"),
        };
        let held_by_r7 = (
            "confirmed".to_owned(),
            "reserve".to_owned(),
            Some("r-7".into()),
        );
        assert_eq!(first_row(&reservation, confirm(None)), held_by_r7);
        assert_eq!(first_row(&reservation, confirm(Some("r-7"))), held_by_r7);
        assert!(matches!(
            decide(7, &reservation, None, confirm(Some("r-8")), held),
            Err(ChangeError::Refused(StateRefusal::NotTheHolder { request_id })) if request_id == "r-7"
        ));
        // Allocate's numbers are held under no request id, keyed or not.
        let keyed_allocation = RangeRow {
            request_id: Some("a-1".to_owned()),
            ..range(5, 3, "allocate")
        };
        assert_eq!(
            first_row(&keyed_allocation, confirm(Some("r-8"))),
            ("confirmed".to_owned(), "allocate".to_owned(), None)
        );
    }

    #[test]
    fn confirm_and_void_follow_the_transitions() {
        let confirm = |reference| StateChange::Confirm {
            reference,
            holder: None,
        };
        let void = |reason| StateChange::Void { reason };
        let confirmed = row("confirmed", "inv-1", "");
        let voided = row("voided", "inv-1", "cancelled");
        let d = |current, change| decided(current, change, GapPolicy::Void, 0);

        assert_eq!(
            d(None, confirm("inv-1")),
            Ok(Some(write(NumberState::Confirmed, "inv-1", "", None)))
        );
        assert_eq!(d(Some(&confirmed), confirm("inv-1")), Ok(None));
        assert_eq!(
            d(Some(&confirmed), confirm("inv-2")),
            Err(StateRefusal::AlreadyConfirmed {
                reference: "inv-1".into()
            })
        );
        assert_eq!(
            d(None, void("typo")),
            Ok(Some(write(NumberState::Voided, "", "typo", None)))
        );
        assert_eq!(
            d(Some(&confirmed), void("cancelled")),
            Ok(Some(write(NumberState::Voided, "inv-1", "cancelled", None)))
        );
        assert_eq!(d(Some(&voided), void("cancelled")), Ok(None));
        let refused = Err(StateRefusal::Voided {
            reason: "cancelled".into(),
        });
        assert_eq!(d(Some(&voided), void("other")), refused);
        assert_eq!(d(Some(&voided), confirm("inv-1")), refused);
    }

    #[test]
    fn a_reservation_is_confirmed_or_given_back_by_the_policy() {
        use GapPolicy::{Reissue, Void};
        let confirm = StateChange::Confirm {
            reference: "inv-9",
            holder: None,
        };
        let release = StateChange::Release {
            reason: "refused",
            holder: None,
        };
        let live = reserved();
        assert_eq!(
            decided(Some(&live), confirm, Void, 4),
            Ok(Some(write(NumberState::Confirmed, "inv-9", "", Some(5))))
        );
        assert_eq!(
            decided(Some(&live), release, Void, 4),
            Ok(Some(write(NumberState::Voided, "", "refused", None)))
        );
        assert_eq!(
            decided(Some(&live), release, Reissue, 4),
            Ok(Some(write(NumberState::Released, "", "refused", None)))
        );
        // Issued by Allocate: nothing to release.
        assert_eq!(
            decided(None, release, Reissue, 4),
            Err(StateRefusal::NotReserved)
        );
        let confirmed = StateRow {
            reference: "inv-9".into(),
            ..row("confirmed", "inv-9", "")
        };
        assert_eq!(
            decided(Some(&confirmed), release, Reissue, 4),
            Err(StateRefusal::Confirmed {
                reference: "inv-9".into()
            })
        );
        let released = row("released", "", "refused");
        let refused = Err(StateRefusal::Released {
            reason: "refused".into(),
        });
        assert_eq!(decided(Some(&released), confirm, Reissue, 4), refused);
        // Released again with the same reason: a repeat, answered as is.
        let reservation = |state| StateRow {
            origin: "reserve".to_owned(),
            ..row(state, "", "refused")
        };
        assert_eq!(
            decided(Some(&reservation("released")), release, Reissue, 4),
            Ok(None)
        );
        let voided = reservation("voided");
        assert_eq!(decided(Some(&voided), release, Void, 4), Ok(None));
        // Not a reservation's, or voided once confirmed: refused.
        let refused_voided = Err(StateRefusal::Voided {
            reason: "refused".into(),
        });
        let allocated = row("voided", "", "refused");
        assert_eq!(decided(Some(&allocated), release, Void, 4), refused_voided);
        let cancelled = StateRow {
            origin: "reserve".to_owned(),
            ..row("voided", "inv-9", "refused")
        };
        assert_eq!(decided(Some(&cancelled), release, Void, 4), refused_voided);
        // With another reason, or given back otherwise: refused.
        let other = StateChange::Release {
            reason: "cancelled",
            holder: None,
        };
        assert_eq!(decided(Some(&released), other, Reissue, 4), refused);
        assert_eq!(
            decided(Some(&voided), release, Reissue, 4),
            Err(StateRefusal::Voided {
                reason: "refused".into()
            })
        );
    }

    #[test]
    fn a_lease_that_ended_refuses_confirmation_but_by_its_holder() {
        use GapPolicy::{Reissue, Void};
        let confirm = StateChange::Confirm {
            reference: "inv-9",
            holder: None,
        };
        let expired = Err(StateRefusal::Expired { expired_at: at(5) });
        // Unswept: the row still says reserved.
        assert_eq!(decided(Some(&reserved()), confirm, Void, 5), expired);
        assert_eq!(decided(Some(&reserved()), confirm, Reissue, 6), expired);
        // Swept: given back with the lease's end kept.
        let swept = StateRow {
            expires_at: Some(at(5)),
            ..row("released", "", LEASE_EXPIRED)
        };
        assert_eq!(decided(Some(&swept), confirm, Reissue, 60), expired);
        // Named by its holder, swept or not, under either policy: the
        // number was not taken since, so it is the holder's to confirm.
        let held = |row: StateRow| StateRow {
            request_id: Some("order-1".into()),
            ..row
        };
        let by_holder = |holder| StateChange::Confirm {
            reference: "inv-9",
            holder: Some(holder),
        };
        let late = Ok(Some(write(NumberState::Confirmed, "inv-9", "", Some(5))));
        assert_eq!(
            decided(Some(&held(reserved())), by_holder("order-1"), Void, 6),
            late
        );
        assert_eq!(
            decided(
                Some(&held(swept.clone())),
                by_holder("order-1"),
                Reissue,
                60
            ),
            late
        );
        let voided = StateRow {
            expires_at: Some(at(5)),
            ..row("voided", "", LEASE_EXPIRED)
        };
        assert_eq!(
            decided(Some(&held(voided)), by_holder("order-1"), Void, 60),
            late
        );
        // Named by another: not the holder's.
        assert_eq!(
            decided(Some(&held(swept)), by_holder("order-2"), Reissue, 60),
            Err(StateRefusal::NotTheHolder {
                request_id: "order-1".into()
            })
        );
        // Reserved without a request id (none, or none when taken again):
        // held under no id a change names, within its lease or after.
        for request_id in [None, Some(String::new())] {
            let anonymous = StateRow {
                request_id,
                ..reserved()
            };
            for minute in [4, 6] {
                assert_eq!(
                    decided(Some(&anonymous), by_holder("order-1"), Void, minute),
                    Err(StateRefusal::NotTheHolder {
                        request_id: String::new()
                    })
                );
            }
        }
        // Releasing it after its end: it stands given back already.
        let release = StateChange::Release {
            reason: "refused",
            holder: None,
        };
        assert_eq!(
            decided(Some(&reserved()), release, Void, 6),
            Err(StateRefusal::Voided {
                reason: LEASE_EXPIRED.into()
            })
        );
    }

    /// A change sent within a lease, committed after the series handed the
    /// number out again, finds another holding: refused, unless it names its
    /// holder (then refused as not the holder's).
    #[test]
    fn a_change_sent_before_the_number_was_handed_out_again_is_refused() {
        use GapPolicy::Reissue;
        // Taken again at minute 6, by Allocate or by Reserve.
        let issued = StateRow {
            updated_at: at(6),
            origin: "reserve".to_owned(),
            ..row("issued", "", "")
        };
        let retaken = StateRow {
            updated_at: at(6),
            expires_at: Some(at(11)),
            request_id: Some("order-2".into()),
            ..reserved()
        };
        let confirm = StateChange::Confirm {
            reference: "inv-9",
            holder: None,
        };
        let release = StateChange::Release {
            reason: "refused",
            holder: None,
        };
        let void = StateChange::Void {
            reason: "cancelled",
        };
        for (taken, request_id) in [(&issued, ""), (&retaken, "order-2")] {
            for change in [confirm, release, void] {
                // Sent at minute 4, in the first lease.
                assert_eq!(
                    decided(Some(taken), change, Reissue, 4),
                    Err(StateRefusal::HandedOutAgain {
                        request_id: request_id.into()
                    }),
                    "{change:?}"
                );
            }
            // Sent once it was taken again: the number's holding then.
            assert_eq!(
                decided(Some(taken), confirm, Reissue, 7),
                Ok(Some(write(
                    NumberState::Confirmed,
                    "inv-9",
                    "",
                    taken.expires_at.map(|_| 11)
                )))
            );
        }
        let by_first_holder = StateChange::Confirm {
            reference: "inv-9",
            holder: Some("order-1"),
        };
        assert_eq!(
            decided(Some(&retaken), by_first_holder, Reissue, 4),
            Err(StateRefusal::NotTheHolder {
                request_id: "order-2".into()
            })
        );
    }

    #[test]
    fn an_ended_lease_stands_for_the_policy_s_state_from_its_end() {
        let standing = Standing::of(
            &reserved(),
            Held {
                policy: GapPolicy::Reissue,
                now: at(9),
            },
        )
        .unwrap();
        assert_eq!(
            standing,
            Standing {
                state: NumberState::Released,
                reason: LEASE_EXPIRED.into(),
                updated_at: at(5),
                expired_at: Some(at(5)),
            }
        );
        let before = Held {
            policy: GapPolicy::Reissue,
            now: at(4),
        };
        assert_eq!(
            Standing::of(&reserved(), before).unwrap().state,
            NumberState::Reserved
        );
    }

    #[test]
    fn numbers_start_inside_a_range_and_stop_at_the_limit() {
        use NumberState::{Issued, Skipped};
        let ranges = [range(1, 3, "allocate"), range(4, 2, "advance")];
        assert_eq!(
            numbers(&ranges, 2, 3),
            [(2, Issued), (3, Issued), (4, Skipped)]
        );
        assert_eq!(numbers(&ranges, 5, 10), [(5, Skipped)]);
    }

    #[test]
    fn a_range_up_to_the_last_number_there_is_expands_without_overflow() {
        let ranges = [range(i64::MAX - 1, 2, "advance")];
        let all: Vec<i64> = numbers(&ranges, 1, 10).iter().map(|n| n.0).collect();
        assert_eq!(all, [i64::MAX - 1, i64::MAX]);
    }
}
