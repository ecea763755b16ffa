//! Single numbers and their records, read from the ledger's ranges: what
//! became of each number of a period.

use chrono::{DateTime, Utc};

use crate::allocator::store::{RangeRow, StoreError};

/// What became of a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberState {
    /// Handed out by `Allocate`.
    Issued,
    /// Jumped over by `AdvanceCounter`.
    Skipped,
}

impl NumberState {
    /// The kind of ledger range whose numbers are in this state.
    #[must_use]
    pub fn kind(self) -> &'static str {
        match self {
            Self::Issued => "allocate",
            Self::Skipped => "advance",
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
    /// Why it was skipped; empty for a number issued.
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
