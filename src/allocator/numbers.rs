//! Single numbers and their records, read from the ledger's ranges: what
//! became of each number of a period.

use chrono::{DateTime, Utc};

use crate::allocator::store::{RangeRow, StateChange, StateRefusal, StateRow, StoreError};

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
