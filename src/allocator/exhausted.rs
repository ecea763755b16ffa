//! Periods known to be exhausted: a counter never goes down, so once a call
//! of `count` numbers did not fit, no call of as many or more ever will. Such
//! calls are refused without the database, so a tenant hammering a full
//! series costs the others nothing.

use std::{collections::HashMap, sync::Mutex};

use crate::{allocator::series::SeriesName, tenant::TenantId};

/// The smallest count refused, per tenant, series and period.
#[derive(Debug, Default)]
pub(crate) struct Exhausted(Mutex<HashMap<String, i64>>);

impl Exhausted {
    /// Most periods kept; past it the map starts again empty.
    const MAX: usize = 100_000;

    fn key(tenant: &TenantId, series: &SeriesName, period: &str) -> String {
        // Neither a tenant id nor a series name holds a slash.
        format!("{tenant}/{series}/{period}")
    }

    /// Whether a call of `count` numbers is known not to fit.
    pub(crate) fn refuses(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        count: i64,
    ) -> bool {
        let refused = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The common case: nothing is exhausted, and no key is built.
        if refused.is_empty() {
            return false;
        }
        refused
            .get(&Self::key(tenant, series, period))
            .is_some_and(|smallest| count >= *smallest)
    }

    /// Remembers that a call of `count` numbers did not fit.
    pub(crate) fn record(&self, tenant: &TenantId, series: &SeriesName, period: &str, count: i64) {
        let mut refused = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if refused.len() >= Self::MAX {
            refused.clear();
        }
        let smallest = refused
            .entry(Self::key(tenant, series, period))
            .or_insert(count);
        *smallest = (*smallest).min(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_count_refuses_as_many_or_more_in_that_period_only() {
        let exhausted = Exhausted::default();
        let (acme, invoice) = (
            TenantId::parse("acme").unwrap(),
            SeriesName::parse("invoice").unwrap(),
        );
        assert!(!exhausted.refuses(&acme, &invoice, "2026", 1));
        exhausted.record(&acme, &invoice, "2026", 5);
        assert!(exhausted.refuses(&acme, &invoice, "2026", 5));
        assert!(exhausted.refuses(&acme, &invoice, "2026", 6));
        assert!(
            !exhausted.refuses(&acme, &invoice, "2026", 4),
            "a smaller call may fit"
        );
        assert!(
            !exhausted.refuses(&acme, &invoice, "2027", 5),
            "another period"
        );
        let globex = TenantId::parse("globex").unwrap();
        assert!(
            !exhausted.refuses(&globex, &invoice, "2026", 5),
            "another tenant"
        );
        exhausted.record(&acme, &invoice, "2026", 2);
        assert!(exhausted.refuses(&acme, &invoice, "2026", 2));
        exhausted.record(&acme, &invoice, "2026", 9);
        assert!(
            exhausted.refuses(&acme, &invoice, "2026", 2),
            "the smallest stays"
        );
    }
}
