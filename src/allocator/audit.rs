//! The account of a period's numbers: how many are in each state, and which
//! have no record, from its counter and its ranges.

use crate::{
    allocator::{
        Allocator, Error,
        numbers::{NumberState, made_by},
        series::{GapPolicy, SeriesName},
        store::{Ledger, StateTotal},
    },
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
    /// Numbers held by a reservation whose lease has not ended.
    pub reserved: i64,
    /// Numbers confirmed with their document's reference.
    pub confirmed: i64,
    /// Numbers given back to a series that reissues, not yet taken again.
    pub released: i64,
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

    /// The account of `ledger` of a series of `policy`: a reservation whose
    /// lease has ended counts as given back, swept or not.
    #[must_use]
    pub fn of(ledger: &Ledger, policy: GapPolicy) -> Self {
        let total = |kind: &str| -> i64 {
            let kinds = ledger.kinds.iter().filter(|total| total.kind == kind);
            kinds.map(|total| total.numbers).sum()
        };
        let (allocated, skipped, reserve) = (total("allocate"), total("advance"), total("reserve"));
        // Rows in ranges only: a row kept of a range lost does not stand
        // for the range, as GetNumber finds its number nowhere.
        let rows = |keep: &dyn Fn(&StateTotal) -> bool| -> i64 {
            let sum = |rows: &[StateTotal]| -> i64 {
                let rows = rows.iter().filter(|row| keep(row));
                rows.map(|row| row.numbers).sum()
            };
            sum(&ledger.states) - sum(&ledger.unranged)
        };
        let in_state = |state: NumberState| {
            let stored = state.stored().unwrap_or_default();
            rows(&|row| {
                row.state == stored || (row.state == "expired" && policy.given_back() == state)
            })
        };
        // Numbers of Allocate's ranges without a row are still issued; every
        // number of a reservation's range has a row from the start.
        let allocated_with_rows = rows(&|row| row.origin == "allocate");
        let reserved_with_rows = rows(&|row| row.origin == "reserve");
        let recorded_to = ledger.kinds.iter().map(|total| total.last).max();
        let recorded_to = recorded_to.unwrap_or(ledger.base).max(ledger.base);
        let after_last_range = (recorded_to < ledger.last_value)
            .then(|| (recorded_to + 1, ledger.last_value - recorded_to));
        let mut unaccounted_sample: Vec<i64> = ledger
            .holes
            .iter()
            .copied()
            .chain(after_last_range)
            .flat_map(|(first, count)| (0..count).map(move |offset| first + offset))
            .take(SAMPLE as usize)
            .chain(ledger.orphans.iter().copied())
            .collect();
        unaccounted_sample.sort_unstable();
        unaccounted_sample.truncate(SAMPLE as usize);
        Self {
            last_value: ledger.last_value,
            issued: allocated - allocated_with_rows + in_state(NumberState::Issued),
            reserved: in_state(NumberState::Reserved),
            confirmed: in_state(NumberState::Confirmed),
            released: in_state(NumberState::Released),
            voided: in_state(NumberState::Voided),
            skipped,
            // Numbers in no range (rows or not), and reservations without
            // their row.
            unaccounted: ledger.last_value - ledger.base - allocated - skipped - reserve
                + (reserve - reserved_with_rows).max(0),
            unaccounted_sample,
        }
    }
}

impl Allocator {
    /// Accounts for every number of `period` of a series.
    ///
    /// # Errors
    /// [`Error::SeriesNotFound`]; [`Error::Invalid`] for a period the
    /// series' reset never makes (a year of a monthly series, say), which
    /// would otherwise read as a period with nothing to account for; a
    /// store failure.
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
        made_by(config.calendar.reset, period)?;
        let now = self.now();
        let ledger = self
            .store
            .ledger(tenant, series, period, SAMPLE, now)
            .await?;
        Ok(ledger.map_or_else(
            || Audit::not_begun(config.start_at),
            |ledger| Audit::of(&ledger, config.gap_policy),
        ))
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

    fn rows(origin: &str, state: &str, numbers: i64) -> StateTotal {
        StateTotal {
            origin: origin.to_owned(),
            state: state.to_owned(),
            numbers,
        }
    }

    #[test]
    fn reservations_count_by_state_and_ended_leases_by_the_policy() {
        // 1..=4 allocated (2 confirmed); 5..=10 reserved one by one: one
        // confirmed, one released and taken again by Allocate, one still
        // held, one released, two whose leases ended unswept.
        let ledger = Ledger {
            last_value: 10,
            base: 0,
            kinds: vec![kind("allocate", 4, 4), kind("reserve", 6, 10)],
            holes: Vec::new(),
            states: vec![
                rows("allocate", "confirmed", 2),
                rows("reserve", "confirmed", 1),
                rows("reserve", "expired", 2),
                rows("reserve", "issued", 1),
                rows("reserve", "released", 1),
                rows("reserve", "reserved", 1),
            ],
            unranged: Vec::new(),
            orphans: Vec::new(),
        };
        let reissue = Audit::of(&ledger, GapPolicy::Reissue);
        assert_eq!(
            reissue,
            Audit {
                last_value: 10,
                issued: 3,
                reserved: 1,
                confirmed: 3,
                released: 3,
                ..Audit::default()
            }
        );
        let void = Audit::of(&ledger, GapPolicy::Void);
        assert_eq!((void.released, void.voided), (1, 2));
    }

    #[test]
    fn a_reservation_without_its_row_is_unaccounted() {
        let ledger = Ledger {
            last_value: 3,
            base: 0,
            kinds: vec![kind("reserve", 3, 3)],
            holes: Vec::new(),
            states: vec![rows("reserve", "reserved", 2)],
            unranged: Vec::new(),
            orphans: vec![2],
        };
        let audit = Audit::of(&ledger, GapPolicy::Void);
        assert_eq!((audit.reserved, audit.unaccounted), (2, 1));
        assert_eq!(audit.unaccounted_sample, [2]);
    }

    /// A reservation's range lost while its row stays: its number is
    /// counted unaccounted, as the sample shows it, and not as reserved.
    #[test]
    fn a_row_without_its_range_does_not_account_for_the_number() {
        // 1 allocated, 2 and 3 reserved; the range of 2 is lost.
        let ledger = Ledger {
            last_value: 3,
            base: 0,
            kinds: vec![kind("allocate", 1, 1), kind("reserve", 1, 3)],
            holes: vec![(2, 1)],
            states: vec![rows("reserve", "reserved", 2)],
            unranged: vec![rows("reserve", "reserved", 1)],
            orphans: Vec::new(),
        };
        let audit = Audit::of(&ledger, GapPolicy::Void);
        assert_eq!((audit.reserved, audit.unaccounted), (1, 1));
        assert_eq!(audit.unaccounted_sample, [2]);
    }

    /// One reservation's range lost and another's row: the row kept does
    /// not stand for the row lost, and both numbers are unaccounted.
    #[test]
    fn a_lost_range_and_another_lost_row_do_not_cancel_out() {
        // 1, 2 and 3 reserved; the range of 2 is lost, and the row of 3.
        let ledger = Ledger {
            last_value: 3,
            base: 0,
            kinds: vec![kind("reserve", 2, 3)],
            holes: vec![(2, 1)],
            states: vec![rows("reserve", "reserved", 2)],
            unranged: vec![rows("reserve", "reserved", 1)],
            orphans: vec![3],
        };
        let audit = Audit::of(&ledger, GapPolicy::Void);
        assert_eq!((audit.reserved, audit.unaccounted), (1, 2));
        assert_eq!(audit.unaccounted_sample, [2, 3]);
    }

    #[test]
    fn a_complete_ledger_leaves_nothing_unaccounted() {
        let ledger = Ledger {
            last_value: 110,
            base: 9,
            kinds: vec![kind("advance", 51, 110), kind("allocate", 50, 59)],
            holes: Vec::new(),
            states: vec![
                rows("allocate", "confirmed", 7),
                rows("allocate", "voided", 2),
            ],
            unranged: Vec::new(),
            orphans: Vec::new(),
        };
        let audit = Audit::of(&ledger, GapPolicy::Void);
        assert_eq!(
            audit,
            Audit {
                last_value: 110,
                issued: 41,
                confirmed: 7,
                voided: 2,
                skipped: 51,
                ..Audit::default()
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
            unranged: Vec::new(),
            orphans: Vec::new(),
        };
        let audit = Audit::of(&ledger, GapPolicy::Void);
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
            unranged: Vec::new(),
            orphans: Vec::new(),
        };
        let audit = Audit::of(&ledger, GapPolicy::Void);
        assert_eq!(audit.unaccounted, i64::MAX);
        assert_eq!(audit.unaccounted_sample, (1..=100).collect::<Vec<_>>());
    }
}
