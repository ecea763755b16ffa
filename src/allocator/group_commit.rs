//! Group commit: concurrent allocations share transactions.
//!
//! Calls go to one of a fixed number of lanes, chosen by their series, so a
//! series always uses the same lane and two lanes of a process never touch the
//! same counter row. While a lane's commit is in flight, new calls queue; the
//! lane's next transaction takes its whole queue as one
//! [`Batch`](crate::allocator::batch::Batch): every series advances once, by
//! the sum of its calls' counts, and its range is split among those calls in
//! arrival order. Every call is answered only after the commit succeeded, so
//! nothing is ever handed out from memory. Lanes hold no per-series state:
//! idle series cost nothing.
//!
//! Changes of numbers' states (confirm, release, void) queue apart and share
//! transactions of their own the same way: one transaction and one disk
//! flush for every change that arrived during the last.
//!
//! A one-number call of a series that reissues first asks whether its period
//! has a number given back; those questions share reads the same way.
//!
//! Each lane is a [`Group`] queue and task: the same as the invoice writer's.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use tokio::time::Instant;

use chrono::{DateTime, NaiveDate, Utc};

use crate::{
    allocator::{
        batch::Retention,
        series::{Calendar, GapPolicy, SeriesConfig, SeriesName},
        store::{
            Call, Changed, CounterStore, Held, Lease, NumberAt, Outcome, PeriodOf, StateChange,
            StateWrite, StoreError,
        },
    },
    group::{Group, Refused},
    request_id::RequestId,
    tenant::TenantId,
};

/// Limits of group commit.
#[derive(Debug, Clone)]
pub struct GroupCommitSettings {
    /// Lanes committing in parallel; keep it below the pool size so reads
    /// still find connections. One lane puts every queued call into one
    /// transaction and one disk flush, which is fastest where flushes do not
    /// run in parallel (measured in `BENCHMARKS.md`).
    pub lanes: usize,
    /// Most calls merged into one transaction.
    pub max_batch: usize,
    /// Most calls waiting per lane; more answer `RESOURCE_EXHAUSTED`.
    pub queue_capacity: usize,
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        Self {
            lanes: 1,
            max_batch: 1000,
            queue_capacity: 10_000,
        }
    }
}

/// Why a grouped allocation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    /// The lane's queue is full.
    #[error("too many allocations waiting")]
    QueueFull,
    /// The group's transaction failed: no number of its ranges was handed out.
    #[error(transparent)]
    Store(Arc<StoreError>),
}

impl From<Refused> for GroupError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Full => Self::QueueFull,
            // Only a panicked lane stops: that is a fault, not load.
            Refused::Stopped => Self::Store(Arc::new(StoreError::Internal(refused.into()))),
        }
    }
}

/// An allocation waiting for its group.
struct Waiting {
    call: OwnedCall,
    /// When it joined the queue.
    queued: Instant,
}

/// A [`Call`] that waits in a queue.
struct OwnedCall {
    tenant: TenantId,
    series: SeriesName,
    calendar: Calendar,
    policy: GapPolicy,
    settled: bool,
    period: String,
    date: NaiveDate,
    count: i64,
    request_id: Option<RequestId>,
    lease: Option<Lease>,
}

impl Waiting {
    fn call(&self) -> Call<'_> {
        let call = &self.call;
        Call {
            tenant: &call.tenant,
            series: &call.series,
            calendar: call.calendar,
            policy: call.policy,
            settled: call.settled,
            period: &call.period,
            date: call.date,
            count: call.count,
            request_id: call.request_id.as_ref(),
            lease: call.lease,
        }
    }
}

/// A change of a number's state that waits in the change queue.
struct WaitingChange {
    tenant: TenantId,
    series: SeriesName,
    period: String,
    number: i64,
    change: OwnedChange,
    held: Held,
}

/// A [`StateChange`] that waits in a queue.
enum OwnedChange {
    Confirm(String, Option<String>),
    Release(String, Option<String>),
    Void(String),
}

impl WaitingChange {
    fn write(&self) -> StateWrite<'_> {
        let change = match &self.change {
            OwnedChange::Confirm(reference, holder) => StateChange::Confirm {
                reference,
                holder: holder.as_deref(),
            },
            OwnedChange::Release(reason, holder) => StateChange::Release {
                reason,
                holder: holder.as_deref(),
            },
            OwnedChange::Void(reason) => StateChange::Void { reason },
        };
        StateWrite {
            at: NumberAt {
                tenant: &self.tenant,
                series: &self.series,
                period: &self.period,
                number: self.number,
            },
            change,
            held: self.held,
        }
    }
}

/// A question waiting for its group's read: has this period a number given
/// back by `now`?
struct WaitingLook {
    tenant: TenantId,
    series: SeriesName,
    period: String,
    now: DateTime<Utc>,
}

impl WaitingLook {
    fn period(&self) -> PeriodOf<'_> {
        PeriodOf {
            tenant: &self.tenant,
            series: &self.series,
            period: &self.period,
        }
    }
}

/// Merges concurrent allocations into shared transactions, concurrent
/// changes of numbers' states into shared transactions of their own, and
/// concurrent looks for numbers given back into shared reads.
pub struct GroupCommitter {
    lanes: Vec<Group<Waiting, Result<Outcome, GroupError>>>,
    changes: Group<WaitingChange, Result<Changed, GroupError>>,
    looks: Group<WaitingLook, Result<bool, GroupError>>,
    hasher: RandomState,
}

impl GroupCommitter {
    /// A committer over `store`, creating new series with `defaults`. Starts
    /// one task per lane; they end when the committer is dropped.
    ///
    /// # Panics
    /// Called outside a Tokio runtime.
    #[must_use]
    pub fn new(
        store: &Arc<dyn CounterStore>,
        settings: &GroupCommitSettings,
        defaults: &SeriesConfig,
        retention: &Retention,
    ) -> Self {
        let lanes = (0..settings.lanes.max(1))
            .map(|_| {
                let lane = Arc::new(Lane {
                    store: store.clone(),
                    defaults: defaults.clone(),
                    retention: retention.clone(),
                });
                Group::start(settings.queue_capacity, settings.max_batch, move |batch| {
                    let lane = lane.clone();
                    async move { lane.commit(batch).await }
                })
            })
            .collect();
        let changes = {
            let store = store.clone();
            Group::start(settings.queue_capacity, settings.max_batch, move |batch| {
                let store = store.clone();
                async move { commit_changes(&*store, batch).await }
            })
        };
        let looks = {
            let store = store.clone();
            Group::start(settings.queue_capacity, settings.max_batch, move |batch| {
                let store = store.clone();
                async move { look_for_given_back(&*store, batch).await }
            })
        };
        Self {
            lanes,
            changes,
            looks,
            hasher: RandomState::new(),
        }
    }

    /// Whether `period` has a number given back by `now`, read together with
    /// the other calls' questions that queued meanwhile.
    ///
    /// # Errors
    /// [`GroupError::QueueFull`] when the queue of questions is full;
    /// [`GroupError::Store`] when the group's read failed.
    pub async fn given_back(
        &self,
        period: PeriodOf<'_>,
        now: DateTime<Utc>,
    ) -> Result<bool, GroupError> {
        let waiting = WaitingLook {
            tenant: period.tenant.clone(),
            series: period.series.clone(),
            period: period.period.to_owned(),
            now,
        };
        self.looks
            .write(waiting)
            .await
            .unwrap_or_else(|refused| Err(refused.into()))
    }

    /// Applies a change of a number's state in the next transaction of
    /// changes. Returns once it has committed.
    ///
    /// # Errors
    /// [`GroupError::QueueFull`] when the queue of changes is full;
    /// [`GroupError::Store`] when the group's transaction failed.
    pub async fn change(&self, write: StateWrite<'_>) -> Result<Changed, GroupError> {
        let change = match write.change {
            StateChange::Confirm { reference, holder } => {
                OwnedChange::Confirm(reference.to_owned(), holder.map(str::to_owned))
            }
            StateChange::Release { reason, holder } => {
                OwnedChange::Release(reason.to_owned(), holder.map(str::to_owned))
            }
            StateChange::Void { reason } => OwnedChange::Void(reason.to_owned()),
        };
        let waiting = WaitingChange {
            tenant: write.at.tenant.clone(),
            series: write.at.series.clone(),
            period: write.at.period.to_owned(),
            number: write.at.number,
            change,
            held: write.held,
        };
        self.changes
            .write(waiting)
            .await
            .unwrap_or_else(|refused| Err(refused.into()))
    }

    fn lane(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
    ) -> &Group<Waiting, Result<Outcome, GroupError>> {
        let index = self.hasher.hash_one((tenant, series)) % self.lanes.len() as u64;
        &self.lanes[usize::try_from(index).unwrap_or(0)]
    }

    /// Allocates `count` numbers of the series, or repeats the answer to an
    /// earlier call with `request_id`. Returns once the transaction that
    /// decided it has committed.
    ///
    /// # Errors
    /// [`GroupError::QueueFull`] when the lane's queue is full;
    /// [`GroupError::Store`] when the group's transaction failed.
    pub async fn allocate(&self, call: Call<'_>) -> Result<Outcome, GroupError> {
        let waiting = Waiting {
            call: OwnedCall {
                tenant: call.tenant.clone(),
                series: call.series.clone(),
                calendar: call.calendar,
                policy: call.policy,
                settled: call.settled,
                period: call.period.to_owned(),
                date: call.date,
                count: call.count,
                request_id: call.request_id.cloned(),
                lease: call.lease,
            },
            queued: Instant::now(),
        };
        self.lane(call.tenant, call.series)
            .write(waiting)
            .await
            .unwrap_or_else(|refused| Err(refused.into()))
    }

    /// Calls waiting in the lane of a series (for tests and metrics).
    #[must_use]
    pub fn waiting(&self, tenant: &TenantId, series: &SeriesName) -> usize {
        self.lane(tenant, series).waiting()
    }
}

/// One lane: commits its groups of allocations, one transaction at a time.
struct Lane {
    store: Arc<dyn CounterStore>,
    defaults: SeriesConfig,
    retention: Retention,
}

impl Lane {
    async fn commit(&self, batch: Vec<Waiting>) -> Vec<Result<Outcome, GroupError>> {
        #[allow(clippy::cast_precision_loss)] // at most --group-max-batch
        metrics::histogram!("numbering_group_commit_batch_size").record(batch.len() as f64);
        let waited = metrics::histogram!("numbering_group_commit_wait_seconds");
        for waiting in &batch {
            waited.record(waiting.queued.elapsed().as_secs_f64());
        }
        let calls: Vec<Call<'_>> = batch.iter().map(Waiting::call).collect();
        let result = self
            .store
            .allocate_many(&calls, &self.defaults, self.retention.stamp())
            .await;
        match result {
            // A caller gone by now leaves a gap: its numbers were committed
            // and go to nobody else.
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            // A series near i64::MAX must fail only the calls that do not
            // fit, and a series configured anew under its calls only those
            // calls (they pick their period again), not the other series'
            // calls of the batch. Rare.
            Err(StoreError::Exhausted | StoreError::SeriesChanged) if calls.len() > 1 => {
                self.commit_apart(&calls).await
            }
            Err(error) => {
                let error = GroupError::Store(Arc::new(error));
                calls.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }

    /// Commits the calls of a batch that failed as a whole on a call that
    /// does not fit or a series changed under it, with the answers each call
    /// would have had alone, in arrival order: the batch is halved until the
    /// parts commit, so a few such calls cost a few transactions each, not
    /// one per call of the batch. A call of as many numbers or more as one
    /// refused as exhausted before it, of the same period, is refused
    /// without the database (a counter never goes down), and so is a call
    /// that read the same settings of a series as one refused because they
    /// changed (it reads them again, as that one does).
    async fn commit_apart(&self, calls: &[Call<'_>]) -> Vec<Result<Outcome, GroupError>> {
        let mut answers: Vec<Option<Result<Outcome, GroupError>>> =
            calls.iter().map(|_| None).collect();
        let mut refused: HashMap<(&str, &str, &str), i64> = HashMap::new();
        // The settings calls read of series found changed since.
        let mut changed: Vec<Settings<'_>> = Vec::new();
        // Parts still to commit, by their calls' places: the next one last.
        let all: Vec<usize> = (0..calls.len()).collect();
        let mut parts = Vec::from(halves(all));
        while let Some(part) = parts.pop() {
            let mut rest = Vec::with_capacity(part.len());
            for at in part {
                let call = &calls[at];
                let known = if changed.contains(&settings(call)) {
                    StoreError::SeriesChanged
                } else if refused
                    .get(&(call.tenant.as_str(), call.series.as_str(), call.period))
                    .is_some_and(|smallest| call.count >= *smallest)
                {
                    StoreError::Exhausted
                } else {
                    rest.push(at);
                    continue;
                };
                answers[at] = Some(Err(GroupError::Store(Arc::new(known))));
            }
            let part = rest;
            let part_calls: Vec<Call<'_>> = part.iter().map(|&at| calls[at]).collect();
            let result = match part_calls.len() {
                0 => continue,
                1 => {
                    let result = self
                        .store
                        .allocate(part_calls[0], &self.defaults, self.retention.stamp())
                        .await;
                    let call = &part_calls[0];
                    match result {
                        Err(StoreError::Exhausted) => {
                            let smallest = refused
                                .entry((call.tenant.as_str(), call.series.as_str(), call.period))
                                .or_insert(call.count);
                            *smallest = (*smallest).min(call.count);
                        }
                        Err(StoreError::SeriesChanged) => changed.push(settings(call)),
                        _ => {}
                    }
                    result.map(|outcome| vec![outcome])
                }
                _ => {
                    self.store
                        .allocate_many(&part_calls, &self.defaults, self.retention.stamp())
                        .await
                }
            };
            match result {
                Ok(outcomes) => {
                    for (at, outcome) in part.iter().zip(outcomes) {
                        answers[*at] = Some(Ok(outcome));
                    }
                }
                Err(StoreError::Exhausted | StoreError::SeriesChanged) if part.len() > 1 => {
                    parts.extend(halves(part));
                }
                Err(error) => {
                    let error = GroupError::Store(Arc::new(error));
                    for at in part {
                        answers[at] = Some(Err(error.clone()));
                    }
                }
            }
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Err(GroupError::Store(Arc::new(StoreError::Internal(
                        "a call of a split batch was not answered".into(),
                    ))))
                })
            })
            .collect()
    }
}

/// A series and the settings a call read of it.
type Settings<'a> = (&'a str, &'a str, Calendar, GapPolicy);

fn settings<'a>(call: &Call<'a>) -> Settings<'a> {
    (
        call.tenant.as_str(),
        call.series.as_str(),
        call.calendar,
        call.policy,
    )
}

/// The two halves of `part`, its second half first: popped from the end of
/// a list of parts, the first half commits first.
fn halves(mut part: Vec<usize>) -> [Vec<usize>; 2] {
    let second = part.split_off(part.len().div_ceil(2));
    [second, part]
}

/// Answers a group of questions with one read, as of the latest of their
/// times: a number given back by then was given back while each call was
/// still unanswered.
async fn look_for_given_back(
    store: &dyn CounterStore,
    batch: Vec<WaitingLook>,
) -> Vec<Result<bool, GroupError>> {
    let periods: Vec<PeriodOf<'_>> = batch.iter().map(WaitingLook::period).collect();
    let Some(now) = batch.iter().map(|look| look.now).max() else {
        return Vec::new();
    };
    match store.given_back(&periods, now).await {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(error) => {
            let error = GroupError::Store(Arc::new(error));
            periods.iter().map(|_| Err(error.clone())).collect()
        }
    }
}

/// Commits a group of changes of numbers' states in one transaction.
async fn commit_changes(
    store: &dyn CounterStore,
    batch: Vec<WaitingChange>,
) -> Vec<Result<Changed, GroupError>> {
    let writes: Vec<StateWrite<'_>> = batch.iter().map(WaitingChange::write).collect();
    match store.change_states(&writes).await {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(error) => {
            let error = GroupError::Store(Arc::new(error));
            writes.iter().map(|_| Err(error.clone())).collect()
        }
    }
}
