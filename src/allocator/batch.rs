//! One transaction's allocations, planned once for both engines: which calls
//! take new numbers and which repeat an earlier call, how far each counter
//! moves, and the range each call receives.
//!
//! A transaction first claims the request ids of its calls (the first call
//! carrying each id claims it). A call without an id, or the one that won its
//! id's claim, allocates; every other call with an id answers what the id's
//! first call received, or `REQUEST_ID_REUSED` if it asked for something else.
//! The counters then move by the sum of their allocating calls, which share
//! each range in arrival order.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, NaiveDate, SubsecRound, TimeDelta, Utc};

use crate::{
    allocator::{
        series::{Calendar, GapPolicy},
        store::{Call, Grant, KeyRow, Lease, Outcome, Stamp, StoreError},
    },
    clock::Clock,
    request_id::RequestId,
};

/// How long request ids are kept, by which clock.
#[derive(Clone)]
pub struct Retention {
    /// The clock the window is measured by.
    pub clock: Arc<dyn Clock>,
    /// How long a request id is kept after its first use.
    pub window: Duration,
}

impl Retention {
    /// The time now, to the microsecond: as both stores keep times, so that
    /// a record reads back as it was answered, on either.
    #[must_use]
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now().trunc_subsecs(6)
    }

    /// The stamp of a transaction starting now.
    #[must_use]
    pub fn stamp(&self) -> Stamp {
        let now = self.now();
        let window = TimeDelta::from_std(self.window).unwrap_or(TimeDelta::MAX);
        // No id was used before 1970: a longer window keeps them all, and
        // stays a time every database can store.
        Stamp {
            now,
            forget_before: now
                .checked_sub_signed(window)
                .map_or(DateTime::UNIX_EPOCH, |before| {
                    before.max(DateTime::UNIX_EPOCH)
                }),
        }
    }
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// A request id claimed by a transaction for its first call carrying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The id's tenant.
    pub tenant: &'a str,
    /// The id.
    pub request_id: &'a str,
    /// The series its first call asked for.
    pub series: &'a str,
    /// The count its first call asked for.
    pub count: i64,
    /// Its first call's kind: `allocate` or `reserve`.
    pub kind: &'a str,
}

/// A counter after the transaction's increment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// The series' tenant.
    pub tenant_id: String,
    /// The series.
    pub series: String,
    /// The period.
    pub period: String,
    /// The counter's value after the increment.
    pub last_value: i64,
    /// The series' number template at the increment.
    pub format: String,
}

/// The calls of one transaction and the request ids they claim.
#[derive(Debug)]
pub struct Batch<'a> {
    calls: &'a [Call<'a>],
    /// Per call with a request id: the index of the first call with that id.
    leader: Vec<Option<usize>>,
    claims: Vec<Claim<'a>>,
}

impl<'a> Batch<'a> {
    /// The calls, in arrival order.
    #[must_use]
    pub fn new(calls: &'a [Call<'a>]) -> Self {
        let mut first_with: HashMap<(&str, &str), usize> = HashMap::new();
        let mut claims = Vec::new();
        let leader = calls
            .iter()
            .enumerate()
            .map(|(at, call)| {
                let request_id = call.request_id?;
                let key = (call.tenant.as_str(), request_id.as_str());
                Some(*first_with.entry(key).or_insert_with(|| {
                    claims.push(Claim {
                        tenant: key.0,
                        request_id: key.1,
                        series: call.series.as_str(),
                        count: call.count,
                        kind: call.kind(),
                    });
                    at
                }))
            })
            .collect();
        // One order for every transaction's claims, so that two transactions
        // waiting on each other's ids cannot deadlock.
        claims.sort_unstable_by_key(|claim| (claim.tenant, claim.request_id));
        Self {
            calls,
            leader,
            claims,
        }
    }

    /// The request ids to claim, each once, in a fixed order.
    #[must_use]
    pub fn claims(&self) -> &[Claim<'a>] {
        &self.claims
    }

    /// Every claim won: the plan of a transaction that expects no id in use.
    #[must_use]
    pub fn all_won(&self) -> Won {
        self.claims
            .iter()
            .map(|claim| (claim.tenant.to_owned(), claim.request_id.to_owned()))
            .collect()
    }

    /// The counters of the batch, each once, sorted: the order they are
    /// locked in.
    #[must_use]
    pub fn counters(&self) -> Vec<(&'a str, &'a str, &'a str)> {
        let mut counters: Vec<_> = self
            .calls
            .iter()
            .map(|call| (call.tenant.as_str(), call.series.as_str(), call.period))
            .collect();
        counters.sort_unstable();
        counters.dedup();
        counters
    }

    /// The claims the transaction did not win: ids already in use.
    pub fn held<'b>(&'b self, won: &'b Won) -> impl Iterator<Item = &'b Claim<'a>> + 'b {
        self.claims
            .iter()
            .filter(|claim| !won.contains(claim.tenant, claim.request_id))
    }

    /// Whether two calls of one counter read its series' settings apart (a
    /// `ConfigureSeries` came between their reads). A transaction checks
    /// each counter's series once, against what its first call read: such a
    /// batch must be committed call by call, each checked.
    #[must_use]
    pub fn reads_settings_apart(&self) -> bool {
        let settings = |call: &Call<'_>| (call.calendar, call.policy);
        // Almost every batch: all its calls read the same settings, and no
        // counter needs looking up.
        let Some(first) = self.calls.first().map(settings) else {
            return false;
        };
        if self.calls.iter().all(|call| settings(call) == first) {
            return false;
        }
        let mut read: HashMap<(&str, &str, &str), (Calendar, GapPolicy)> = HashMap::new();
        self.calls.iter().any(|call| {
            let key = (call.tenant.as_str(), call.series.as_str(), call.period);
            *read.entry(key).or_insert(settings(call)) != settings(call)
        })
    }

    /// The counter moves and ranges, given the claims the transaction won.
    #[must_use]
    pub fn plan(&self, won: &Won) -> Plan<'a> {
        let mut index: HashMap<(&str, &str, &str), usize> = HashMap::new();
        let mut totals: Vec<Total<'a>> = Vec::new();
        let mut allocating: Vec<(usize, usize, i64)> = Vec::new();
        for (at, call) in self.calls.iter().enumerate() {
            let allocates = match (call.request_id, self.leader[at]) {
                (Some(id), Some(leader)) => {
                    leader == at && won.contains(call.tenant.as_str(), id.as_str())
                }
                _ => true,
            };
            if !allocates {
                continue;
            }
            let key = (call.tenant.as_str(), call.series.as_str(), call.period);
            let group = *index.entry(key).or_insert_with(|| {
                totals.push(Total {
                    tenant: key.0,
                    series: key.1,
                    period: key.2,
                    calendar: call.calendar,
                    policy: call.policy,
                    settled: true,
                    total: 0,
                });
                totals.len() - 1
            });
            totals[group].settled &= call.settled;
            // The numbers of the group's earlier calls come first.
            let offset = totals[group].total;
            totals[group].total += call.count;
            allocating.push((at, group, offset));
        }

        let mut range_of = vec![None; self.calls.len()];
        let mut records: Vec<Record<'a>> = Vec::new();
        // Per group: its last record, while it is a run of calls without ids.
        let mut open: HashMap<usize, usize> = HashMap::new();
        for (at, group, offset) in allocating {
            let call = &self.calls[at];
            let range = Record {
                tenant: call.tenant.as_str(),
                series: call.series.as_str(),
                period: call.period,
                date: call.date,
                count: call.count,
                tail: totals[group].total - offset - call.count,
                request_id: call.request_id.map(RequestId::as_str),
                lease: call.lease,
            };
            range_of[at] = Some(range);
            // A group's calls take adjacent ranges in this order, so a call
            // without an id extends the run before it if its numbers read
            // with the same date: one ledger row per run, not per call. A
            // call with an id, or a reservation, keeps a row of its own.
            let plain = range.request_id.is_none() && range.lease.is_none();
            match (plain, open.get(&group)) {
                (true, Some(&run)) if records[run].date == range.date => {
                    records[run].count += range.count;
                    records[run].tail = range.tail;
                }
                (true, _) => {
                    open.insert(group, records.len());
                    records.push(range);
                }
                (false, _) => {
                    open.remove(&group);
                    records.push(range);
                }
            }
        }
        let mut increments = totals;
        // Every transaction locks its counters in one order, so batches of
        // different lanes or of other allocator processes cannot deadlock.
        increments.sort_unstable_by_key(|total| (total.tenant, total.series, total.period));
        // A series is read unlocked only if every call of it knows it settled.
        let mut series: Vec<SeriesUse<'a>> = Vec::with_capacity(increments.len());
        for total in &increments {
            match series.last_mut() {
                Some(last) if (last.tenant, last.series) == (total.tenant, total.series) => {
                    last.settled &= total.settled;
                }
                _ => series.push(SeriesUse {
                    tenant: total.tenant,
                    series: total.series,
                    settled: total.settled,
                }),
            }
        }
        Plan {
            increments,
            series,
            records,
            range_of,
        }
    }

    /// Each call's outcome, in arrival order, from the counters the plan's
    /// increments returned and the first answers of the ids held elsewhere.
    ///
    /// # Errors
    /// A counter or a held id's answer is missing: the store answered
    /// something other than what was asked.
    pub fn outcomes(
        &self,
        plan: &Plan<'_>,
        counters: &[Counted],
        held: &HashMap<(String, String), KeyRow>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let counters: HashMap<(&str, &str, &str), &Counted> = counters
            .iter()
            .map(|counted| {
                let key = (
                    counted.tenant_id.as_str(),
                    counted.series.as_str(),
                    counted.period.as_str(),
                );
                (key, counted)
            })
            .collect();
        let granted = |record: &Record<'_>| -> Result<Grant, StoreError> {
            let key = (record.tenant, record.series, record.period);
            let counted = counters.get(&key).ok_or_else(|| {
                StoreError::Internal(
                    format!(
                        "no counter returned for {}/{}/{}",
                        record.tenant, record.series, record.period
                    )
                    .into(),
                )
            })?;
            Ok(Grant {
                first: record.first(counted.last_value),
                format: counted.format.clone(),
                date: record.date,
                period: record.period.to_owned(),
            })
        };

        let mut outcomes = Vec::with_capacity(self.calls.len());
        for (at, call) in self.calls.iter().enumerate() {
            if let Some(range) = &plan.range_of[at] {
                outcomes.push(Outcome::Granted(granted(range)?));
                continue;
            }
            let (Some(id), Some(leader)) = (call.request_id, self.leader[at]) else {
                unreachable!("a call without a request id always allocates");
            };
            // What the id first answered: in this batch, or before it.
            let first = if let Some(range) = &plan.range_of[leader] {
                let first = &self.calls[leader];
                let grant = granted(range)?;
                KeyRow::new(first.series.as_str(), first.count, first.kind(), grant)
            } else {
                let key = (call.tenant.to_string(), id.to_string());
                // Between the claim and this read the id aged past the
                // window and was purged: rare, and a retry claims it anew.
                held.get(&key).cloned().ok_or_else(|| {
                    StoreError::Unavailable(
                        format!("request id {id} was forgotten during the call").into(),
                    )
                })?
            };
            outcomes.push(first.repeated_by(call.series.as_str(), call.count, call.kind()));
        }
        Ok(outcomes)
    }
}

/// The request ids a transaction claimed.
#[derive(Debug, Default)]
pub struct Won(HashSet<(String, String)>);

impl Won {
    /// Whether the transaction claimed this id.
    #[must_use]
    pub fn contains(&self, tenant: &str, request_id: &str) -> bool {
        // Few ids per batch; a lookup by borrowed pair would need a key type.
        self.0.contains(&(tenant.to_owned(), request_id.to_owned()))
    }
}

impl FromIterator<(String, String)> for Won {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// How a transaction moves its counters and records its ranges.
#[derive(Debug)]
pub struct Plan<'a> {
    /// Each counter to move and by how much, each once, in a fixed order.
    pub increments: Vec<Total<'a>>,
    /// The series of the increments, each once, in the same order.
    pub series: Vec<SeriesUse<'a>>,
    /// The ledger rows: the range of each call with a request id, and of
    /// each run of adjacent calls without one.
    pub records: Vec<Record<'a>>,
    /// Per call: its range, if it allocates.
    range_of: Vec<Option<Record<'a>>>,
}

impl Plan<'_> {
    /// How many ledger rows carry a request id: the ids the plan stores.
    #[must_use]
    pub fn ids_recorded(&self) -> usize {
        self.records
            .iter()
            .filter(|record| record.request_id.is_some())
            .count()
    }

    /// Whether no counter moves: every call repeats an earlier one.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.increments.is_empty()
    }
}

/// A period's counter to move by the sum of its calls' counts.
#[derive(Debug, Clone, Copy)]
pub struct Total<'a> {
    /// The series' tenant.
    pub tenant: &'a str,
    /// The series.
    pub series: &'a str,
    /// The period.
    pub period: &'a str,
    /// The calendar the period was picked by: the series' must still be it.
    pub calendar: Calendar,
    /// The gap policy its calls read: the series' must still be it.
    pub policy: GapPolicy,
    /// Whether every call of it knew the series settled.
    pub settled: bool,
    /// The sum of the counts.
    pub total: i64,
}

/// A series a transaction moves a counter of.
#[derive(Debug, Clone, Copy)]
pub struct SeriesUse<'a> {
    /// The series' tenant.
    pub tenant: &'a str,
    /// The series.
    pub series: &'a str,
    /// Every call of it knew it has handed out numbers: its calendar is
    /// fixed and its row is read without a lock. Otherwise the transaction
    /// creates it if absent and locks it against `ConfigureSeries`.
    pub settled: bool,
}

/// A range of one increment, relative to its counter's new value: one call's,
/// or a run of adjacent calls' for the ledger.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The series' tenant.
    pub tenant: &'a str,
    /// The series.
    pub series: &'a str,
    /// The period.
    pub period: &'a str,
    /// The date its numbers read with.
    pub date: NaiveDate,
    /// How many numbers.
    pub count: i64,
    /// How many numbers of the same increment follow this call's range.
    pub tail: i64,
    /// The call's request id, if it sent one.
    pub request_id: Option<&'a str>,
    /// For a reservation: its lease.
    pub lease: Option<Lease>,
}

impl Record<'_> {
    /// The kind of ledger row it is.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        if self.lease.is_some() {
            "reserve"
        } else {
            "allocate"
        }
    }

    /// The first number of the range, given the counter's new value (which
    /// may be `i64::MAX`: counts back from it).
    #[must_use]
    pub fn first(&self, last_value: i64) -> i64 {
        last_value - self.tail - self.count + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{allocator::series::SeriesName, tenant::TenantId};

    fn call<'a>(
        tenant: &'a TenantId,
        series: &'a SeriesName,
        count: i64,
        key: Option<&'a RequestId>,
    ) -> Call<'a> {
        Call {
            tenant,
            series,
            calendar: Calendar::DEFAULT,
            policy: GapPolicy::Void,
            settled: false,
            period: "",
            date: today(),
            count,
            request_id: key,
            lease: None,
        }
    }

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 2).unwrap()
    }

    /// Settings read apart count within one counter only: two tenants'
    /// series may differ.
    #[test]
    fn settings_read_apart_within_one_counter_only() {
        let (acme, globex) = (
            TenantId::parse("acme").unwrap(),
            TenantId::parse("globex").unwrap(),
        );
        let series = SeriesName::parse("").unwrap();
        let reissuing = |tenant| Call {
            policy: GapPolicy::Reissue,
            ..call(tenant, &series, 1, None)
        };
        let same = [call(&acme, &series, 1, None), call(&acme, &series, 2, None)];
        assert!(!Batch::new(&same).reads_settings_apart());
        let two_series = [call(&acme, &series, 1, None), reissuing(&globex)];
        assert!(!Batch::new(&two_series).reads_settings_apart());
        let apart = [
            call(&acme, &series, 1, None),
            reissuing(&globex),
            reissuing(&acme),
        ];
        assert!(Batch::new(&apart).reads_settings_apart());
    }

    #[test]
    fn adjacent_calls_without_ids_share_a_ledger_row() {
        let acme = TenantId::parse("acme").unwrap();
        let series = SeriesName::parse("").unwrap();
        let keys = ids(&["", "", "", "k", "", ""]);
        let counts = [1, 2, 3, 4, 5, 6];
        let calls: Vec<_> = (0..6)
            .map(|i| call(&acme, &series, counts[i], keys[i].as_ref()))
            .collect();
        let batch = Batch::new(&calls);
        let won: Won = [("acme".to_owned(), "k".to_owned())].into_iter().collect();
        let plan = batch.plan(&won);
        let rows: Vec<_> = plan
            .records
            .iter()
            .map(|r| (r.first(21), r.count, r.request_id))
            .collect();
        assert_eq!(rows, [(1, 6, None), (7, 4, Some("k")), (11, 11, None)]);
        let counted = Counted {
            tenant_id: "acme".into(),
            series: "invoice".into(),
            period: String::new(),
            last_value: 21,
            format: "F".into(),
        };
        let firsts: Vec<i64> = batch
            .outcomes(&plan, &[counted], &HashMap::new())
            .unwrap()
            .into_iter()
            .map(|outcome| match outcome {
                Outcome::Granted(grant) => grant.first,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            firsts,
            [1, 2, 4, 7, 11, 16],
            "each call keeps its own range"
        );
    }

    fn ids(raw: &[&str]) -> Vec<Option<RequestId>> {
        raw.iter().map(|id| RequestId::parse(id).unwrap()).collect()
    }

    #[test]
    fn calls_share_their_counters_range_in_arrival_order_and_repeats_take_none() {
        let (a, b) = (TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap());
        let series = SeriesName::parse("").unwrap();
        let other = SeriesName::parse("credit").unwrap();
        let keys = ids(&["", "k1", "", "k1", "k1", "k2"]);
        let calls = [
            call(&b, &series, 2, keys[0].as_ref()),
            call(&b, &series, 3, keys[1].as_ref()),
            call(&b, &series, 1, keys[2].as_ref()),
            call(&b, &series, 3, keys[3].as_ref()),
            call(&b, &other, 3, keys[4].as_ref()),
            call(&a, &series, 5, keys[5].as_ref()),
        ];
        let batch = Batch::new(&calls);
        let claimed: Vec<_> = batch.claims().iter().map(|c| c.request_id).collect();
        assert_eq!(claimed, ["k2", "k1"], "one claim per id, sorted by tenant");

        let won: Won = [("b".to_owned(), "k1".to_owned())].into_iter().collect();
        let plan = batch.plan(&won);
        let rows: Vec<_> = plan
            .records
            .iter()
            .map(|r| (r.count, r.tail, r.request_id))
            .collect();
        assert_eq!(rows, [(2, 4, None), (3, 1, Some("k1")), (1, 0, None)]);
        let moves: Vec<_> = plan
            .increments
            .iter()
            .map(|t| (t.tenant, t.series, t.total))
            .collect();
        // a's k2 is held elsewhere and b's repeats of k1 take nothing.
        assert_eq!(moves, [("b", "invoice", 6)]);

        let counted = Counted {
            tenant_id: "b".into(),
            series: "invoice".into(),
            period: String::new(),
            last_value: 16,
            format: "F".into(),
        };
        let held = HashMap::from([(
            ("a".to_owned(), "k2".to_owned()),
            KeyRow {
                series: "invoice".into(),
                count: 5,
                kind: "allocate".into(),
                period: String::new(),
                first_value: 40,
                format: "G".into(),
                date: today(),
            },
        )]);
        let outcomes = batch.outcomes(&plan, &[counted], &held).unwrap();
        let grant = |first, format: &str| Grant {
            first,
            format: format.into(),
            date: today(),
            period: String::new(),
        };
        assert_eq!(
            outcomes,
            [
                Outcome::Granted(grant(11, "F")),
                Outcome::Granted(grant(13, "F")),
                Outcome::Granted(grant(16, "F")),
                Outcome::Replayed(grant(13, "F")),
                Outcome::Reused {
                    series: "invoice".into(),
                    count: 3,
                    kind: "allocate".into(),
                },
                Outcome::Replayed(grant(40, "G")),
            ]
        );
    }

    #[test]
    fn each_period_has_its_own_counter_and_a_new_date_starts_a_ledger_row() {
        let acme = TenantId::parse("acme").unwrap();
        let series = SeriesName::parse("").unwrap();
        let day = |d| NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
        let january = NaiveDate::from_ymd_opt(2027, 1, 1).unwrap();
        let at = |period, date| Call {
            period,
            date,
            ..call(&acme, &series, 1, None)
        };
        let calls = [
            at("2026", day(1)),
            at("2027", january),
            at("2026", day(1)),
            at("2026", day(2)),
        ];
        let batch = Batch::new(&calls);
        let plan = batch.plan(&Won::default());
        let moves: Vec<_> = plan
            .increments
            .iter()
            .map(|t| (t.period, t.total))
            .collect();
        assert_eq!(moves, [("2026", 3), ("2027", 1)]);
        let rows: Vec<_> = plan
            .records
            .iter()
            .map(|r| (r.period, r.date, r.count, r.tail))
            .collect();
        assert_eq!(
            rows,
            [
                ("2026", day(1), 2, 1),
                ("2027", january, 1, 0),
                ("2026", day(2), 1, 0)
            ]
        );
        let counted = |period: &str, last_value| Counted {
            tenant_id: "acme".into(),
            series: "invoice".into(),
            period: period.into(),
            last_value,
            format: "F".into(),
        };
        let outcomes = batch
            .outcomes(
                &plan,
                &[counted("2026", 12), counted("2027", 1)],
                &HashMap::new(),
            )
            .unwrap();
        let firsts: Vec<_> = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Outcome::Granted(grant) => (grant.period, grant.first, grant.date),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            firsts,
            [
                ("2026".into(), 10, day(1)),
                ("2027".into(), 1, january),
                ("2026".into(), 11, day(1)),
                ("2026".into(), 12, day(2)),
            ]
        );
    }
}
