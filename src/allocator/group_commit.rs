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

use std::{
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use tokio::{
    sync::{mpsc, mpsc::error::TrySendError, oneshot},
    time::Instant,
};

use chrono::NaiveDate;

use crate::{
    allocator::{
        batch::Retention,
        series::{Calendar, SeriesConfig, SeriesName},
        store::{
            Call, Changed, CounterStore, Held, Lease, NumberAt, Outcome, StateChange, StateWrite,
            StoreError,
        },
    },
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

struct Waiting {
    call: OwnedCall,
    reply: oneshot::Sender<Result<Outcome, GroupError>>,
    /// When it joined the queue.
    queued: Instant,
}

/// A [`Call`] that waits in a queue.
struct OwnedCall {
    tenant: TenantId,
    series: SeriesName,
    calendar: Calendar,
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
    reply: oneshot::Sender<Result<Changed, GroupError>>,
}

/// A [`StateChange`] that waits in a queue.
enum OwnedChange {
    Confirm(String),
    Release(String),
    Void(String),
}

impl WaitingChange {
    fn write(&self) -> StateWrite<'_> {
        let change = match &self.change {
            OwnedChange::Confirm(reference) => StateChange::Confirm { reference },
            OwnedChange::Release(reason) => StateChange::Release { reason },
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

/// Merges concurrent allocations into shared transactions, and concurrent
/// changes of numbers' states into shared transactions of their own.
pub struct GroupCommitter {
    lanes: Vec<mpsc::Sender<Waiting>>,
    changes: mpsc::Sender<WaitingChange>,
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
                let (sender, receiver) = mpsc::channel(settings.queue_capacity.max(1));
                let lane = Lane {
                    store: store.clone(),
                    queue: receiver,
                    max_batch: settings.max_batch.max(1),
                    defaults: defaults.clone(),
                    retention: retention.clone(),
                };
                tokio::spawn(lane.run());
                sender
            })
            .collect();
        let (changes, receiver) = mpsc::channel(settings.queue_capacity.max(1));
        let lane = ChangeLane {
            store: store.clone(),
            queue: receiver,
            max_batch: settings.max_batch.max(1),
        };
        tokio::spawn(lane.run());
        Self {
            lanes,
            changes,
            hasher: RandomState::new(),
        }
    }

    /// Applies a change of a number's state in the next transaction of
    /// changes. Returns once it has committed.
    ///
    /// # Errors
    /// [`GroupError::QueueFull`] when the queue of changes is full;
    /// [`GroupError::Store`] when the group's transaction failed.
    pub async fn change(&self, write: StateWrite<'_>) -> Result<Changed, GroupError> {
        let (reply, changed) = oneshot::channel();
        let change = match write.change {
            StateChange::Confirm { reference } => OwnedChange::Confirm(reference.to_owned()),
            StateChange::Release { reason } => OwnedChange::Release(reason.to_owned()),
            StateChange::Void { reason } => OwnedChange::Void(reason.to_owned()),
        };
        self.changes
            .try_send(WaitingChange {
                tenant: write.at.tenant.clone(),
                series: write.at.series.clone(),
                period: write.at.period.to_owned(),
                number: write.at.number,
                change,
                held: write.held,
                reply,
            })
            .map_err(|error| match error {
                TrySendError::Full(_) => GroupError::QueueFull,
                TrySendError::Closed(_) => GroupError::Store(Arc::new(StoreError::Internal(
                    "group commit lane stopped".into(),
                ))),
            })?;
        changed.await.unwrap_or_else(|_| {
            Err(GroupError::Store(Arc::new(StoreError::Internal(
                "group commit lane stopped".into(),
            ))))
        })
    }

    fn lane(&self, tenant: &TenantId, series: &SeriesName) -> &mpsc::Sender<Waiting> {
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
        let (reply, granted) = oneshot::channel();
        let lane = self.lane(call.tenant, call.series);
        lane.try_send(Waiting {
            call: OwnedCall {
                tenant: call.tenant.clone(),
                series: call.series.clone(),
                calendar: call.calendar,
                settled: call.settled,
                period: call.period.to_owned(),
                date: call.date,
                count: call.count,
                request_id: call.request_id.cloned(),
                lease: call.lease,
            },
            reply,
            queued: Instant::now(),
        })
        .map_err(|error| match error {
            TrySendError::Full(_) => GroupError::QueueFull,
            // Only a panicked lane closes its queue: that is a fault, not load.
            TrySendError::Closed(_) => GroupError::Store(Arc::new(StoreError::Internal(
                "group commit lane stopped".into(),
            ))),
        })?;
        // The lane always answers; a dropped sender would mean it panicked.
        granted.await.unwrap_or_else(|_| {
            Err(GroupError::Store(Arc::new(StoreError::Internal(
                "group commit lane stopped".into(),
            ))))
        })
    }

    /// Calls waiting in the lane of a series (for tests and metrics).
    #[must_use]
    pub fn waiting(&self, tenant: &TenantId, series: &SeriesName) -> usize {
        let lane = self.lane(tenant, series);
        lane.max_capacity() - lane.capacity()
    }
}

/// One lane: drains its queue into one transaction at a time.
struct Lane {
    store: Arc<dyn CounterStore>,
    queue: mpsc::Receiver<Waiting>,
    max_batch: usize,
    defaults: SeriesConfig,
    retention: Retention,
}

impl Lane {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        // Calls that arrived during the last commit are waiting here.
        while self.queue.recv_many(&mut batch, self.max_batch).await > 0 {
            // A caller that gave up before its group formed takes no numbers.
            batch.retain(|waiting| !waiting.reply.is_closed());
            if !batch.is_empty() {
                self.commit(std::mem::take(&mut batch)).await;
            }
        }
    }

    async fn commit(&self, batch: Vec<Waiting>) {
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
        drop(calls);
        match result {
            Ok(outcomes) => {
                for (waiting, outcome) in batch.into_iter().zip(outcomes) {
                    // A caller gone by now leaves a gap: its numbers were
                    // committed and go to nobody else.
                    let _ = waiting.reply.send(Ok(outcome));
                }
            }
            // A series near i64::MAX must fail only the calls that do not
            // fit, and a series configured anew under its calls only those
            // calls (they pick their period again), not the other series'
            // calls of the batch: commit every call on its own, in arrival
            // order. Rare.
            Err(StoreError::Exhausted | StoreError::SeriesChanged) => {
                for waiting in batch {
                    let result = self
                        .store
                        .allocate(waiting.call(), &self.defaults, self.retention.stamp())
                        .await
                        .map_err(|error| GroupError::Store(Arc::new(error)));
                    let _ = waiting.reply.send(result);
                }
            }
            Err(error) => {
                let error = GroupError::Store(Arc::new(error));
                for waiting in batch {
                    let _ = waiting.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// The lane of state changes: drains its queue into one transaction at a
/// time.
struct ChangeLane {
    store: Arc<dyn CounterStore>,
    queue: mpsc::Receiver<WaitingChange>,
    max_batch: usize,
}

impl ChangeLane {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while self.queue.recv_many(&mut batch, self.max_batch).await > 0 {
            // A caller that gave up before its group formed changes nothing.
            batch.retain(|waiting| !waiting.reply.is_closed());
            if !batch.is_empty() {
                self.commit(std::mem::take(&mut batch)).await;
            }
        }
    }

    async fn commit(&self, batch: Vec<WaitingChange>) {
        let writes: Vec<StateWrite<'_>> = batch.iter().map(WaitingChange::write).collect();
        let result = self.store.change_states(&writes).await;
        drop(writes);
        match result {
            Ok(answers) => {
                for (waiting, answer) in batch.into_iter().zip(answers) {
                    let _ = waiting.reply.send(Ok(answer));
                }
            }
            Err(error) => {
                let error = GroupError::Store(Arc::new(error));
                for waiting in batch {
                    let _ = waiting.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
