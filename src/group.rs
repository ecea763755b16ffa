//! Group commit written once: concurrent writes wait in a queue, and one task
//! commits everything that queued during its last commit as one group, then
//! answers each write. A write is answered only after its group's commit, so
//! nothing is acknowledged from memory.

use std::future::Future;

use tokio::sync::{mpsc, mpsc::error::TrySendError, oneshot};

/// Why a write was not taken into a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The queue is full.
    #[error("too many writes waiting")]
    Full,
    /// The committing task stopped (it panicked).
    #[error("the group commit task stopped")]
    Stopped,
}

/// A write waiting for its group, and where its answer goes.
struct Waiting<W, A> {
    write: W,
    reply: oneshot::Sender<A>,
}

/// The queue of a group-committing task: writes `W`, answered with `A`.
pub struct Group<W, A> {
    queue: mpsc::Sender<Waiting<W, A>>,
}

impl<W, A> Clone for Group<W, A> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<W: Send + 'static, A: Send + 'static> Group<W, A> {
    /// Starts the task that commits groups of at most `max_group` writes
    /// with `commit`, which answers every write of a group, in order. At
    /// most `capacity` writes wait. The task ends when every handle to the
    /// queue is dropped.
    ///
    /// # Panics
    /// Called outside a Tokio runtime.
    pub fn start<C, F>(capacity: usize, max_group: usize, mut commit: C) -> Self
    where
        C: FnMut(Vec<W>) -> F + Send + 'static,
        F: Future<Output = Vec<A>> + Send,
    {
        let (queue, mut receiver) = mpsc::channel::<Waiting<W, A>>(capacity.max(1));
        let max_group = max_group.max(1);
        tokio::spawn(async move {
            let mut waiting = Vec::with_capacity(max_group);
            // Writes that arrived during the last commit are waiting here.
            while receiver.recv_many(&mut waiting, max_group).await > 0 {
                // A caller that gave up before its group formed writes nothing.
                waiting.retain(|waiting| !waiting.reply.is_closed());
                if waiting.is_empty() {
                    continue;
                }
                let (writes, replies): (Vec<W>, Vec<_>) = waiting
                    .drain(..)
                    .map(|waiting| (waiting.write, waiting.reply))
                    .unzip();
                let answers = commit(writes).await;
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // A caller gone since has its write committed all the same.
                    let _ = reply.send(answer);
                }
            }
        });
        Self { queue }
    }

    /// Writes waiting for a group (for tests and metrics).
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Queues `write` for the next group, and returns its answer once the
    /// group has committed.
    ///
    /// # Errors
    /// [`Refused::Full`] when the queue is full: the write was not made.
    /// [`Refused::Stopped`] when the task stopped, before the write's group
    /// or during its commit: whether it was made is not known.
    pub async fn write(&self, write: W) -> Result<A, Refused> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Waiting { write, reply })
            .map_err(|error| match error {
                TrySendError::Full(_) => Refused::Full,
                TrySendError::Closed(_) => Refused::Stopped,
            })?;
        // A task that drops an answer unsent has panicked.
        answer.await.map_err(|_| Refused::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::watch;

    use super::*;

    /// The groups committed, in order.
    type Groups = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A group whose commits answer each write `w` with `w * 10`, and record
    /// their groups; the group of the first write, `0`, commits only once
    /// `true` is sent.
    fn held_group() -> (Group<u32, u32>, Groups, watch::Sender<bool>) {
        let groups = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let (release, released) = watch::channel(false);
        let seen = groups.clone();
        let group = Group::start(100, 10, move |writes: Vec<u32>| {
            seen.lock().unwrap().push(writes.clone());
            let mut released = released.clone();
            async move {
                if writes == [0] {
                    released.wait_for(|go| *go).await.unwrap();
                }
                writes.into_iter().map(|write| write * 10).collect()
            }
        });
        (group, groups, release)
    }

    /// Writes `write` from a task of its own.
    fn spawn_write(
        group: &Group<u32, u32>,
        write: u32,
    ) -> tokio::task::JoinHandle<Result<u32, Refused>> {
        let group = group.clone();
        tokio::spawn(async move { group.write(write).await })
    }

    /// Starts the first group's commit, and holds it.
    async fn hold_first(
        group: &Group<u32, u32>,
        groups: &Mutex<Vec<Vec<u32>>>,
    ) -> tokio::task::JoinHandle<Result<u32, Refused>> {
        let first = spawn_write(group, 0);
        while groups.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        first
    }

    /// Waits until `count` writes wait in the queue.
    async fn queued(group: &Group<u32, u32>, count: usize) {
        while group.waiting() < count {
            tokio::task::yield_now().await;
        }
    }

    /// Writes that arrive during a commit wait and go together in the next
    /// group, each answered with its own answer.
    #[tokio::test]
    async fn writes_that_queue_during_a_commit_share_the_next_group() {
        let (group, groups, hold) = held_group();
        let first = hold_first(&group, &groups).await;
        let rest: Vec<_> = (1..=3).map(|write| spawn_write(&group, write)).collect();
        queued(&group, 3).await;
        hold.send(true).unwrap();
        assert_eq!(first.await.unwrap(), Ok(0));
        for (write, answer) in (1..=3).zip(rest) {
            assert_eq!(answer.await.unwrap(), Ok(write * 10));
        }
        assert_eq!(*groups.lock().unwrap(), [vec![0], vec![1, 2, 3]]);
    }

    /// A write whose caller gave up before its group formed is not made.
    #[tokio::test]
    async fn a_write_whose_caller_gave_up_is_left_out_of_its_group() {
        let (group, groups, hold) = held_group();
        let first = hold_first(&group, &groups).await;
        let gone = spawn_write(&group, 1);
        let kept = spawn_write(&group, 2);
        queued(&group, 2).await;
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        hold.send(true).unwrap();
        assert_eq!(first.await.unwrap(), Ok(0));
        assert_eq!(kept.await.unwrap(), Ok(20));
        assert_eq!(*groups.lock().unwrap(), [vec![0], vec![2]]);
    }
}
