//! Group commit: concurrent allocations share transactions.
//!
//! Calls go to one of a fixed number of lanes, chosen by their series, so a
//! series always uses the same lane and two lanes of a process never touch the
//! same counter row. While a lane's commit is in
//! flight, new calls queue; the lane's next transaction advances every series
//! in its queue with one statement, each by the sum of its calls' counts, and
//! splits each range among that series' calls in arrival order. Every call is
//! answered only after the commit succeeded, so nothing is ever handed out from
//! memory. Lanes hold no per-series state: idle series cost nothing.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use tokio::sync::{mpsc, mpsc::error::TrySendError, oneshot};

use crate::{
    allocator::{
        series::{Count, SeriesName},
        store::{Advanced, CounterStore, Grant, Increment, StoreError},
    },
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

type Key = (TenantId, SeriesName);

struct Waiting {
    key: Key,
    count: u32,
    reply: oneshot::Sender<Result<Grant, GroupError>>,
}

/// Merges concurrent allocations into shared transactions.
pub struct GroupCommitter {
    lanes: Vec<mpsc::Sender<Waiting>>,
    hasher: RandomState,
}

impl GroupCommitter {
    /// A committer over `store`, creating new series with `format`. Starts
    /// one task per lane; they end when the committer is dropped.
    ///
    /// # Panics
    /// Called outside a Tokio runtime.
    #[must_use]
    pub fn new(
        store: &Arc<dyn CounterStore>,
        settings: &GroupCommitSettings,
        format: &str,
    ) -> Self {
        let lanes = (0..settings.lanes.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(settings.queue_capacity.max(1));
                let lane = Lane {
                    store: store.clone(),
                    queue: receiver,
                    max_batch: settings.max_batch.max(1),
                    format: format.to_owned(),
                };
                tokio::spawn(lane.run());
                sender
            })
            .collect();
        Self {
            lanes,
            hasher: RandomState::new(),
        }
    }

    fn lane(&self, key: &Key) -> &mpsc::Sender<Waiting> {
        let index = self.hasher.hash_one(key) % self.lanes.len() as u64;
        &self.lanes[usize::try_from(index).unwrap_or(0)]
    }

    /// Allocates `count` numbers of the series. Returns the first number of
    /// the range and the series' format once the transaction that took the
    /// range has committed.
    ///
    /// # Errors
    /// [`GroupError::QueueFull`] when the lane's queue is full;
    /// [`GroupError::Store`] when the group's transaction failed.
    pub async fn allocate(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        count: Count,
    ) -> Result<Grant, GroupError> {
        let (reply, granted) = oneshot::channel();
        let key = (tenant.clone(), series.clone());
        let lane = self.lane(&key);
        lane.try_send(Waiting {
            key,
            count: count.get(),
            reply,
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
        let lane = self.lane(&(tenant.clone(), series.clone()));
        lane.max_capacity() - lane.capacity()
    }
}

/// One lane: drains its queue into one transaction at a time.
struct Lane {
    store: Arc<dyn CounterStore>,
    queue: mpsc::Receiver<Waiting>,
    max_batch: usize,
    format: String,
}

/// The calls of one series in a batch, in arrival order.
struct SeriesGroup {
    key: Key,
    total: i64,
    calls: Vec<Waiting>,
}

impl Lane {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        // Calls that arrived during the last commit are waiting here.
        while self.queue.recv_many(&mut batch, self.max_batch).await > 0 {
            // A caller that gave up before its group formed takes no numbers.
            batch.retain(|waiting| !waiting.reply.is_closed());
            let groups = group_by_series(batch.drain(..));
            if !groups.is_empty() {
                self.commit(groups).await;
            }
        }
    }

    async fn commit(&self, groups: Vec<SeriesGroup>) {
        let increments: Vec<_> = groups
            .iter()
            .map(|g| Increment {
                tenant: &g.key.0,
                series: &g.key.1,
                count: g.total,
            })
            .collect();
        match self.store.allocate_many(&increments, &self.format).await {
            Ok(results) => {
                for (group, result) in groups.into_iter().zip(results) {
                    answer(group, Ok(result));
                }
            }
            // A series near i64::MAX must fail only the calls that do not
            // fit: commit every call on its own, in arrival order. Rare.
            Err(StoreError::Exhausted) => {
                for group in groups {
                    for waiting in group.calls {
                        let count = i64::from(waiting.count);
                        let result = self
                            .store
                            .allocate(&group.key.0, &group.key.1, count, &self.format)
                            .await
                            .map(|advanced| advanced.grant(count))
                            .map_err(|error| GroupError::Store(Arc::new(error)));
                        let _ = waiting.reply.send(result);
                    }
                }
            }
            Err(error) => {
                let error = GroupError::Store(Arc::new(error));
                for group in groups {
                    answer(group, Err(error.clone()));
                }
            }
        }
    }
}

fn group_by_series(calls: impl Iterator<Item = Waiting>) -> Vec<SeriesGroup> {
    let mut index: HashMap<Key, usize> = HashMap::new();
    let mut groups: Vec<SeriesGroup> = Vec::new();
    for waiting in calls {
        let at = *index.entry(waiting.key.clone()).or_insert_with(|| {
            groups.push(SeriesGroup {
                key: waiting.key.clone(),
                total: 0,
                calls: Vec::new(),
            });
            groups.len() - 1
        });
        groups[at].total += i64::from(waiting.count);
        groups[at].calls.push(waiting);
    }
    // Every transaction locks its rows in one order, so batches of different
    // lanes or of other allocator processes cannot deadlock.
    groups.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    groups
}

/// Splits a committed range among a series' calls in arrival order, or fails them all.
fn answer(group: SeriesGroup, result: Result<Advanced, GroupError>) {
    match result {
        Ok(advanced) => {
            // Offsets, not a running "next": the last value may be i64::MAX.
            let whole = advanced.grant(group.total);
            let mut offset = 0;
            for waiting in group.calls {
                // A caller gone by now leaves a gap: its numbers were
                // committed and go to nobody else.
                let _ = waiting.reply.send(Ok(Grant {
                    first: whole.first + offset,
                    format: whole.format.clone(),
                }));
                offset += i64::from(waiting.count);
            }
        }
        Err(error) => {
            for waiting in group.calls {
                let _ = waiting.reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(tenant: &str, count: u32) -> Waiting {
        Waiting {
            key: (
                TenantId::parse(tenant).unwrap(),
                SeriesName::parse("").unwrap(),
            ),
            count,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn groups_sum_per_series_keep_arrival_order_and_sort_by_key() {
        let calls = [
            waiting("c", 1),
            waiting("a", 2),
            waiting("c", 3),
            waiting("b", 4),
            waiting("a", 5),
        ];
        let groups = group_by_series(calls.into_iter());
        let summary: Vec<(&str, i64, Vec<u32>)> = groups
            .iter()
            .map(|g| {
                (
                    g.key.0.as_str(),
                    g.total,
                    g.calls.iter().map(|w| w.count).collect(),
                )
            })
            .collect();
        // Sorted by key, so every transaction locks rows in the same order.
        assert_eq!(
            summary,
            [
                ("a", 7, vec![2, 5]),
                ("b", 4, vec![4]),
                ("c", 4, vec![1, 3])
            ]
        );
    }
}
