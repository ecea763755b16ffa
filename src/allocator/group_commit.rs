//! Group commit: concurrent allocations of one series share a transaction.
//!
//! Each active `(tenant, series)` has a bounded queue and one task draining it.
//! While that task's commit is in flight, new calls queue; the next transaction
//! advances the counter once by the sum of their counts and splits the range
//! among them in arrival order. Every call is answered only after its commit
//! succeeded, so nothing is ever handed out from memory. A series whose queue
//! runs empty is dropped, so idle series hold no memory.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex},
};

use tokio::sync::{mpsc, oneshot};

use crate::{
    allocator::{
        domain::{Count, SeriesName},
        store::{CounterStore, StoreError},
    },
    tenant::TenantId,
};

/// Limits of group commit.
#[derive(Debug, Clone)]
pub struct GroupCommitSettings {
    /// Most calls merged into one transaction.
    pub max_batch: usize,
    /// Most calls waiting per series; more answer `RESOURCE_EXHAUSTED`.
    pub queue_capacity: usize,
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            queue_capacity: 10_000,
        }
    }
}

/// Why a grouped allocation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    /// The series' queue is full.
    #[error("too many allocations waiting for this series")]
    QueueFull,
    /// The group's transaction failed: no number of its range was handed out.
    #[error(transparent)]
    Store(Arc<StoreError>),
}

/// The first number of a call's range and the series' format.
pub type Granted = (i64, String);

struct Waiting {
    count: u32,
    reply: oneshot::Sender<Result<Granted, GroupError>>,
}

type Key = (TenantId, SeriesName);
type Queues = HashMap<Key, mpsc::Sender<Waiting>>;

/// Number of independently locked shards of the queue map, so calls for
/// different series rarely contend on one lock.
const SHARDS: usize = 64;

/// Merges concurrent allocations per series into shared transactions.
pub struct GroupCommitter {
    store: Arc<dyn CounterStore>,
    settings: GroupCommitSettings,
    shards: Vec<Mutex<Queues>>,
    hasher: RandomState,
}

impl GroupCommitter {
    /// A committer over `store`.
    #[must_use]
    pub fn new(store: Arc<dyn CounterStore>, settings: GroupCommitSettings) -> Arc<Self> {
        Arc::new(Self {
            store,
            settings,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        })
    }

    fn shard(&self, key: &Key) -> &Mutex<Queues> {
        let index = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        &self.shards[index]
    }

    /// Allocates `count` numbers of the series, creating it with `format` on
    /// first use. Returns the first number of the range and the series' format
    /// once the transaction that took the range has committed.
    ///
    /// # Errors
    /// [`GroupError::QueueFull`] when the series' queue is full;
    /// [`GroupError::Store`] when the group's transaction failed.
    ///
    /// # Panics
    /// A shard lock was poisoned by a panic while it was held.
    pub async fn allocate(
        self: &Arc<Self>,
        tenant: &TenantId,
        series: &SeriesName,
        count: Count,
        format: &str,
    ) -> Result<Granted, GroupError> {
        let (reply, granted) = oneshot::channel();
        let waiting = Waiting {
            count: count.get(),
            reply,
        };
        let key = (tenant.clone(), series.clone());
        {
            // Sending under the shard lock is what lets a drained worker
            // decide, under the same lock, that nothing can reach it any more.
            let mut queues = self.shard(&key).lock().expect("shard lock");
            let sender = queues.entry(key).or_insert_with_key(|key| {
                let (sender, receiver) = mpsc::channel(self.settings.queue_capacity);
                tokio::spawn(Arc::clone(self).drain(key.clone(), receiver, format.to_owned()));
                sender
            });
            sender
                .try_send(waiting)
                .map_err(|_| GroupError::QueueFull)?;
        }
        // The worker always answers; a dropped sender would mean it panicked.
        granted.await.unwrap_or_else(|_| {
            Err(GroupError::Store(Arc::new(StoreError::Internal(
                "group commit worker stopped".into(),
            ))))
        })
    }

    /// Calls waiting for a series (for tests and metrics).
    ///
    /// # Panics
    /// A shard lock was poisoned.
    #[must_use]
    pub fn waiting(&self, tenant: &TenantId, series: &SeriesName) -> usize {
        let key = (tenant.clone(), series.clone());
        self.shard(&key)
            .lock()
            .expect("shard lock")
            .get(&key)
            .map_or(0, |sender| sender.max_capacity() - sender.capacity())
    }

    /// Series with a live queue (for tests and metrics).
    ///
    /// # Panics
    /// A shard lock was poisoned.
    #[must_use]
    pub fn active_series(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().expect("shard lock").len())
            .sum()
    }

    /// Serves one series until its queue is empty, then removes it.
    async fn drain(self: Arc<Self>, key: Key, mut queue: mpsc::Receiver<Waiting>, format: String) {
        let (tenant, series) = &key;
        let mut batch = Vec::with_capacity(self.settings.max_batch);
        loop {
            while batch.len() < self.settings.max_batch {
                match queue.try_recv() {
                    Ok(waiting) => batch.push(waiting),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                let mut queues = self.shard(&key).lock().expect("shard lock");
                if queue.is_empty() {
                    queues.remove(&key);
                    return;
                }
                continue;
            }
            // A caller that gave up before its group formed takes no numbers.
            batch.retain(|waiting| !waiting.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            let total: i64 = batch.iter().map(|waiting| i64::from(waiting.count)).sum();
            match self.store.allocate(tenant, series, total, &format).await {
                Ok((last, format)) => {
                    // Offsets, not a running "next": last may be i64::MAX.
                    let first = last - total + 1;
                    let mut offset = 0;
                    for waiting in batch.drain(..) {
                        // A caller gone by now leaves a gap: its numbers were
                        // committed and go to nobody else.
                        let _ = waiting.reply.send(Ok((first + offset, format.clone())));
                        offset += i64::from(waiting.count);
                    }
                }
                Err(error) => {
                    let error = Arc::new(error);
                    for waiting in batch.drain(..) {
                        let _ = waiting.reply.send(Err(GroupError::Store(error.clone())));
                    }
                }
            }
            // Let the calls that queued during the commit join the next group.
            tokio::task::yield_now().await;
        }
    }
}
