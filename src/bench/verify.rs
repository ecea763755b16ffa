//! Checks every acknowledged number: none twice, and per series exactly
//! `1..=N` when the series started fresh and no call failed.

use std::collections::BTreeMap;

/// One acknowledged call: `count` numbers from `first` in a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Index of the series in the run (its tenant).
    pub series: u32,
    /// First number of the range.
    pub first: i64,
    /// How many numbers.
    pub count: u32,
}

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Numbers acknowledged in all.
    pub numbers: u64,
    /// Series seen.
    pub series: usize,
    /// Numbers acknowledged more than once, as (series, number); at most 20 kept.
    pub duplicates: Vec<(u32, i64)>,
    /// How many numbers were acknowledged more than once.
    pub duplicate_count: u64,
    /// Series whose numbers are not exactly `1..=N`, with the first number missing.
    pub gaps: Vec<(u32, i64)>,
    /// Answers that were not as many consecutive numbers as asked.
    pub malformed: u64,
}

impl Verification {
    /// Some number checked, no duplicate, no malformed answer, and no gap
    /// where none was allowed. A run that acknowledged nothing proves
    /// nothing: it fails.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.numbers > 0 && self.duplicate_count == 0 && self.gaps.is_empty() && self.malformed == 0
    }
}

/// Checks `acks`. With `contiguous`, every series must hold exactly `1..=N`.
#[must_use]
pub fn verify(acks: &[Ack], contiguous: bool) -> Verification {
    let mut by_series: BTreeMap<u32, Vec<(i64, u32)>> = BTreeMap::new();
    for ack in acks {
        by_series
            .entry(ack.series)
            .or_default()
            .push((ack.first, ack.count));
    }
    let mut result = Verification {
        series: by_series.len(),
        ..Verification::default()
    };
    for (series, mut ranges) in by_series {
        ranges.sort_unstable();
        // Next number not yet seen in this series.
        let mut next = 1_i128;
        for (first, count) in ranges {
            // i128: a range may end at i64::MAX.
            let (first, count) = (i128::from(first), i128::from(count));
            result.numbers += u64::try_from(count).unwrap_or(0);
            if first > next && contiguous && result.gaps.last().is_none_or(|(s, _)| *s != series) {
                result
                    .gaps
                    .push((series, i64::try_from(next).unwrap_or(i64::MAX)));
            }
            let end = first + count;
            if first < next {
                let overlap = next.min(end) - first;
                result.duplicate_count += u64::try_from(overlap).unwrap_or(0);
                for value in first..first + overlap {
                    if result.duplicates.len() < 20 {
                        result
                            .duplicates
                            .push((series, i64::try_from(value).unwrap_or(i64::MAX)));
                    }
                }
            }
            next = next.max(end);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(series: u32, first: i64, count: u32) -> Ack {
        Ack {
            series,
            first,
            count,
        }
    }

    #[test]
    fn a_clean_run_passes() {
        let acks = [ack(0, 3, 2), ack(0, 1, 2), ack(1, 1, 1), ack(0, 5, 1)];
        let result = verify(&acks, true);
        assert!(result.passed(), "{result:?}");
        assert_eq!((result.numbers, result.series), (6, 2));
    }

    #[test]
    fn a_run_that_acknowledged_nothing_fails() {
        let result = verify(&[], false);
        assert!(!result.passed(), "{result:?}");
        assert_eq!(result.numbers, 0);
    }

    #[test]
    fn a_planted_duplicate_is_caught() {
        let acks = [ack(0, 1, 1), ack(0, 2, 1), ack(0, 2, 1), ack(0, 3, 1)];
        let result = verify(&acks, true);
        assert!(!result.passed());
        assert_eq!(result.duplicates, [(0, 2)]);
        assert_eq!(result.duplicate_count, 1);
    }

    #[test]
    fn overlapping_ranges_are_duplicates() {
        let acks = [ack(7, 1, 10), ack(7, 8, 5)];
        let result = verify(&acks, false);
        assert_eq!(result.duplicate_count, 3);
        assert_eq!(result.duplicates, [(7, 8), (7, 9), (7, 10)]);
    }

    #[test]
    fn ranges_ending_at_the_largest_number_do_not_overflow() {
        let acks = [ack(0, i64::MAX - 1, 2), ack(0, i64::MAX, 1)];
        let result = verify(&acks, false);
        assert_eq!(result.duplicates, [(0, i64::MAX)]);
    }

    #[test]
    fn gaps_fail_only_when_contiguity_is_expected() {
        let acks = [ack(0, 1, 1), ack(0, 3, 1), ack(1, 2, 1)];
        assert_eq!(verify(&acks, true).gaps, [(0, 2), (1, 1)]);
        assert!(verify(&acks, false).passed());
    }
}
