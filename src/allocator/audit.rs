//! The account of a period's numbers: how many are in each state, and which
//! have no record, from its counter and its ranges.

use crate::{
    allocator::{Allocator, Error, series::SeriesName, store::Ledger},
    tenant::TenantId,
};

/// The most numbers without a record an audit lists.
pub const SAMPLE: u32 = 100;

/// Every number of a period, `start_at..=last_value`, accounted for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// The period's last number handed out or skipped.
    pub last_value: i64,
    /// Numbers handed out by `Allocate`, neither confirmed nor voided since.
    pub issued: i64,
    /// Numbers confirmed with their document's reference.
    pub confirmed: i64,
    /// Numbers voided with a reason.
    pub voided: i64,
    /// Numbers jumped over by `AdvanceCounter`.
    pub skipped: i64,
    /// Numbers with no record: 0 unless records were lost (negative if
    /// ranges overlapped: numbers recorded twice).
    pub unaccounted: i64,
    /// The first of them, at most [`SAMPLE`], ascending.
    pub unaccounted_sample: Vec<i64>,
}

impl Audit {
    /// A period not yet begun: nothing to account for.
    #[must_use]
    pub fn not_begun(start_at: i64) -> Self {
        Self {
            last_value: start_at - 1,
            ..Self::default()
        }
    }

    /// The account of `ledger`.
    #[must_use]
    pub fn of(ledger: &Ledger) -> Self {
        let total = |kind: &str| -> i64 {
            let kinds = ledger.kinds.iter().filter(|total| total.kind == kind);
            kinds.map(|total| total.numbers).sum()
        };
        let (allocated, skipped) = (total("allocate"), total("advance"));
        let in_state = |state: &str| -> i64 {
            let rows = ledger.states.iter().filter(|(name, _)| name == state);
            rows.map(|(_, numbers)| numbers).sum()
        };
        let (confirmed, voided) = (in_state("confirmed"), in_state("voided"));
        let recorded_to = ledger.kinds.iter().map(|total| total.last).max();
        let recorded_to = recorded_to.unwrap_or(ledger.base).max(ledger.base);
        let after_last_range = (recorded_to < ledger.last_value)
            .then(|| (recorded_to + 1, ledger.last_value - recorded_to));
        let unaccounted_sample = ledger
            .holes
            .iter()
            .copied()
            .chain(after_last_range)
            .flat_map(|(first, count)| (0..count).map(move |offset| first + offset))
            .take(SAMPLE as usize)
            .collect();
        Self {
            last_value: ledger.last_value,
            issued: allocated - confirmed - voided,
            confirmed,
            voided,
            skipped,
            unaccounted: ledger.last_value - ledger.base - allocated - skipped,
            unaccounted_sample,
        }
    }
}

impl Allocator {
    /// Accounts for every number of `period` of a series.
    ///
    /// # Errors
    /// [`Error::SeriesNotFound`]; a store failure.
    pub async fn audit(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
    ) -> Result<Audit, Error> {
        let config = self.store.find(tenant, series).await?;
        let config = config.ok_or_else(|| Error::SeriesNotFound {
            tenant: tenant.to_string(),
            series: series.to_string(),
        })?;
        let ledger = self.store.ledger(tenant, series, period, SAMPLE).await?;
        Ok(ledger.map_or_else(|| Audit::not_begun(config.start_at), |l| Audit::of(&l)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::store::KindTotal;

    fn kind(kind: &str, numbers: i64, last: i64) -> KindTotal {
        KindTotal {
            kind: kind.to_owned(),
            numbers,
            last,
        }
    }

    #[test]
    fn a_complete_ledger_leaves_nothing_unaccounted() {
        let ledger = Ledger {
            last_value: 110,
            base: 9,
            kinds: vec![kind("advance", 51, 110), kind("allocate", 50, 59)],
            holes: Vec::new(),
            states: vec![("confirmed".into(), 7), ("voided".into(), 2)],
        };
        let audit = Audit::of(&ledger);
        assert_eq!(
            audit,
            Audit {
                last_value: 110,
                issued: 41,
                confirmed: 7,
                voided: 2,
                skipped: 51,
                unaccounted: 0,
                unaccounted_sample: Vec::new(),
            }
        );
    }

    #[test]
    fn holes_and_the_end_after_the_last_range_are_unaccounted() {
        // Ranges 1..=3 and 6..=6 recorded; 4, 5 and 7..=8 are not.
        let ledger = Ledger {
            last_value: 8,
            base: 0,
            kinds: vec![kind("allocate", 4, 6)],
            holes: vec![(4, 2)],
            states: Vec::new(),
        };
        let audit = Audit::of(&ledger);
        assert_eq!(audit.unaccounted, 4);
        assert_eq!(audit.unaccounted_sample, [4, 5, 7, 8]);
    }

    #[test]
    fn the_sample_stops_at_its_size_and_the_last_number_there_is_fits() {
        let ledger = Ledger {
            last_value: i64::MAX,
            base: 0,
            kinds: Vec::new(),
            holes: Vec::new(),
            states: Vec::new(),
        };
        let audit = Audit::of(&ledger);
        assert_eq!(audit.unaccounted, i64::MAX);
        assert_eq!(audit.unaccounted_sample, (1..=100).collect::<Vec<_>>());
    }
}
