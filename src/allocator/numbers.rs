//! Single numbers and their records, read from the ledger's ranges: what
//! became of each number of a period.

use chrono::{DateTime, SubsecRound, Utc};

use crate::{
    allocator::{
        Allocator, Error,
        allocate::parse_stored,
        series::SeriesName,
        store::{
            ChangeError, NumberAt, RangeRow, RangesAfter, StateChange, StateRefusal, StateRow,
            StatesAfter, StoreError,
        },
    },
    page::Page,
    tenant::TenantId,
};

/// What became of a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberState {
    /// Handed out by `Allocate`.
    Issued,
    /// Jumped over by `AdvanceCounter`.
    Skipped,
    /// Confirmed with the reference of the document that holds it.
    Confirmed,
    /// Voided with a reason: never handed out again.
    Voided,
}

impl NumberState {
    /// The state as a state row stores it, for the states rows hold.
    #[must_use]
    pub fn stored(self) -> Option<&'static str> {
        match self {
            Self::Confirmed => Some("confirmed"),
            Self::Voided => Some("voided"),
            Self::Issued | Self::Skipped => None,
        }
    }

    /// The state a state row holds.
    ///
    /// # Errors
    /// A state no row should hold.
    pub fn of_stored(state: &str) -> Result<Self, StoreError> {
        match state {
            "confirmed" => Ok(Self::Confirmed),
            "voided" => Ok(Self::Voided),
            _ => Err(StoreError::Internal(
                format!("stored number state {state:?}").into(),
            )),
        }
    }

    /// The kind of ledger range whose numbers start in this state.
    #[must_use]
    pub fn kind(self) -> Option<&'static str> {
        match self {
            Self::Issued => Some("allocate"),
            Self::Skipped => Some("advance"),
            Self::Confirmed | Self::Voided => None,
        }
    }

    /// The state of the numbers of a range of `kind`.
    ///
    /// # Errors
    /// A kind no range should have.
    pub fn of_kind(kind: &str) -> Result<Self, StoreError> {
        match kind {
            "allocate" => Ok(Self::Issued),
            "advance" => Ok(Self::Skipped),
            _ => Err(StoreError::Internal(
                format!("stored range of unknown kind {kind:?}").into(),
            )),
        }
    }
}

/// One number and its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberRecord {
    /// The number.
    pub number: i64,
    /// As its document shows it.
    pub formatted: String,
    /// What became of it.
    pub state: NumberState,
    /// The reference of the document that holds it, once confirmed.
    pub reference: String,
    /// Why it was skipped or voided.
    pub reason: String,
    /// The request id of the call that took it; empty if none.
    pub request_id: String,
    /// When it took its state.
    pub updated_at: DateTime<Utc>,
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
                state,
                reference: String::new(),
                reason: range.reason.clone(),
                request_id: range.request_id.clone().unwrap_or_default(),
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
    /// The record as its state row says it is now.
    ///
    /// # Errors
    /// A row of unknown state.
    pub fn with(mut self, row: &StateRow) -> Result<Self, StoreError> {
        self.state = NumberState::of_stored(&row.state)?;
        self.reference.clone_from(&row.reference);
        self.reason.clone_from(&row.reason);
        self.updated_at = row.updated_at;
        Ok(self)
    }
}

/// What a change does to a number now in `current` (none: issued, as its
/// range gave it): the state, reference and reason to store, or none when
/// the number is already so (a repeat answers what the first call did).
///
/// # Errors
/// The number's state does not allow the change.
pub fn decide(
    current: Option<&StateRow>,
    change: StateChange<'_>,
) -> Result<Option<(NumberState, String, String)>, StateRefusal> {
    let current = current.map(|row| (row.state.as_str(), row));
    match (change, current) {
        (StateChange::Confirm { reference }, None) => Ok(Some((
            NumberState::Confirmed,
            reference.to_owned(),
            String::new(),
        ))),
        (StateChange::Confirm { reference }, Some(("confirmed", row))) => {
            if row.reference == reference {
                Ok(None)
            } else {
                Err(StateRefusal::AlreadyConfirmed {
                    reference: row.reference.clone(),
                })
            }
        }
        (StateChange::Void { reason }, None) => Ok(Some((
            NumberState::Voided,
            String::new(),
            reason.to_owned(),
        ))),
        (StateChange::Void { reason }, Some(("confirmed", row))) => Ok(Some((
            NumberState::Voided,
            row.reference.clone(),
            reason.to_owned(),
        ))),
        (StateChange::Void { reason }, Some((_, row))) if row.reason == reason => Ok(None),
        (_, Some((_, row))) => Err(StateRefusal::Voided {
            reason: row.reason.clone(),
        }),
    }
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
        let record = self.ranged(at).await?;
        let states = self
            .store
            .states_between(tenant, series, period, (number, number))
            .await?;
        match states.first() {
            Some(row) => Ok(record.with(row)?),
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
        let range = range.ok_or_else(not_found)?;
        let render = |range: &RangeRow, n| render_stored(tenant, series, range, n);
        let mut records = expand(std::slice::from_ref(&range), number, 1, render)?;
        records.pop().ok_or_else(not_found)
    }

    /// Confirms or voids a number handed out, if its state allows; a repeat
    /// of the same change answers the same record.
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
        let record = self.ranged(at).await?;
        if record.state != NumberState::Issued {
            return Err(Error::NumberNotFound {
                tenant: at.tenant.to_string(),
                series: at.series.to_string(),
                period: at.period.to_owned(),
                number: at.number,
                skipped: true,
            });
        }
        // As the database keeps it, so that a repeat shows the same time.
        let now = self.now().trunc_subsecs(6);
        match self.store.change_state(at, change, now).await {
            Ok(row) => Ok(record.with(&row)?),
            Err(ChangeError::Refused(refusal)) => Err(Error::NotAllowed(refusal)),
            Err(ChangeError::Store(error)) => Err(error.into()),
            Err(ChangeError::Raced) => Err(StoreError::Unavailable(
                "the number's state changed meanwhile; retry".into(),
            )
            .into()),
        }
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
        let Some(from) = after.map_or(Some(1), |after| after.checked_add(1)) else {
            return Ok(NumberPage::default());
        };
        let fetch = Page::<NumberRecord>::fetch(limit);
        if let Some(stored) = state.and_then(NumberState::stored) {
            // Numbers that left their range's state: listed from their rows.
            let after = StatesAfter {
                state: stored,
                number: from - 1,
                limit: fetch,
            };
            let rows = self
                .store
                .states_after(tenant, series, period, after)
                .await?;
            let render = |range: &RangeRow, n| render_stored(tenant, series, range, n);
            let mut records = Vec::with_capacity(rows.len());
            for (row, range) in &rows {
                // The joined range holds the row's number: one record.
                for record in expand(std::slice::from_ref(range), row.number, 1, render)? {
                    records.push(record.with(row)?);
                }
            }
            let page = Page::from_fetched(records, limit);
            let next_after = page
                .more
                .then(|| page.items.last().map(|r| r.number))
                .flatten();
            return Ok(NumberPage {
                records: page.items,
                next_after,
            });
        }
        let kind = state.and_then(NumberState::kind);
        let at = self.store.range_at(tenant, series, period, from).await?;
        let mut ranges: Vec<RangeRow> = at
            .into_iter()
            .filter(|range| kind.is_none_or(|kind| range.kind == kind))
            .collect();
        let after = RangesAfter {
            number: from,
            kind,
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
                Some(row) => record.with(row)?,
                None => record,
            };
            // A number confirmed or voided is no longer issued.
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
    use chrono::NaiveDate;

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

    fn row(state: &str, reference: &str, reason: &str) -> StateRow {
        StateRow {
            number: 7,
            state: state.to_owned(),
            reference: reference.to_owned(),
            reason: reason.to_owned(),
            updated_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn confirm_and_void_follow_the_transitions() {
        let confirm = |reference| StateChange::Confirm { reference };
        let void = |reason| StateChange::Void { reason };
        let confirmed = row("confirmed", "inv-1", "");
        let voided = row("voided", "inv-1", "cancelled");
        let write = |state, reference: &str, reason: &str| {
            Ok(Some((state, reference.to_owned(), reason.to_owned())))
        };

        assert_eq!(
            decide(None, confirm("inv-1")),
            write(NumberState::Confirmed, "inv-1", "")
        );
        assert_eq!(decide(Some(&confirmed), confirm("inv-1")), Ok(None));
        assert_eq!(
            decide(Some(&confirmed), confirm("inv-2")),
            Err(StateRefusal::AlreadyConfirmed {
                reference: "inv-1".into()
            })
        );
        assert_eq!(
            decide(None, void("typo")),
            write(NumberState::Voided, "", "typo")
        );
        assert_eq!(
            decide(Some(&confirmed), void("cancelled")),
            write(NumberState::Voided, "inv-1", "cancelled")
        );
        assert_eq!(decide(Some(&voided), void("cancelled")), Ok(None));
        let refused = Err(StateRefusal::Voided {
            reason: "cancelled".into(),
        });
        assert_eq!(decide(Some(&voided), void("other")), refused);
        assert_eq!(decide(Some(&voided), confirm("inv-1")), refused);
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
