//! One PostgreSQL connection kept from one statement to the next for a
//! caller that runs them one after another, such as a group commit lane.
//!
//! A pool tests a connection with a round trip when it hands it out and
//! again when it takes it back, so a lane that takes a connection for each
//! one-statement batch makes three round trips where one would do. A kept
//! connection skips both tests while batches follow each other closely:
//! left unused for [`KEEP_IDLE`], or kept for [`KEEP_FOR`], it is not taken
//! again untested; the next taker sends it back to the pool (which tests it
//! before its next use) and takes one from there, so a connection the
//! server dropped while the lane was quiet is still found before a call
//! uses it, and the pool's own bounds on a connection's life still apply.
//! Until that next taker, it stays out of the pool, counted in use there,
//! even while the lane is quiet. A connection whose work failed is not
//! kept.

use std::{
    ops::{Deref, DerefMut},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};

/// How long a kept connection may stay unused and still be taken untested.
pub const KEEP_IDLE: Duration = Duration::from_millis(100);

/// How long a connection is kept before it goes back to the pool.
pub const KEEP_FOR: Duration = Duration::from_secs(10);

/// The fewest connections a pool must allow for one to be kept out of it:
/// the others serve every other statement, so none waits on a connection a
/// quiet lane holds.
pub const KEEP_MIN_POOL: u32 = 4;

/// A pool, and at most one connection kept out of it for the next taker.
#[derive(Debug)]
pub struct KeptConnection {
    pool: PgPool,
    idle: Duration,
    life: Duration,
    slot: Mutex<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    kept: Option<Kept>,
    /// Set by [`KeptConnection::release`]: nothing is kept after it.
    released: bool,
}

#[derive(Debug)]
struct Kept {
    conn: PoolConnection<Postgres>,
    since: Instant,
    used: Instant,
}

/// A connection taken from a [`KeptConnection`]; dropped, it goes back to
/// the pool, and [`Taken::keep`] keeps it for the next taker instead.
#[derive(Debug)]
pub struct Taken<'a> {
    conn: PoolConnection<Postgres>,
    since: Instant,
    from: &'a KeptConnection,
}

impl KeptConnection {
    /// Keeps connections of `pool`; keeps none if the pool allows fewer than
    /// [`KEEP_MIN_POOL`].
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self::with_bounds(pool, KEEP_IDLE, KEEP_FOR)
    }

    /// As [`KeptConnection::new`], with other bounds than [`KEEP_IDLE`] and
    /// [`KEEP_FOR`].
    #[must_use]
    pub fn with_bounds(pool: PgPool, idle: Duration, life: Duration) -> Self {
        Self {
            pool,
            idle,
            life,
            slot: Mutex::new(Slot::default()),
        }
    }

    /// The kept connection if it was used within the idle bound and taken
    /// from the pool within the life bound; otherwise one from the pool,
    /// tested there.
    ///
    /// # Errors
    /// The pool could not hand out a connection.
    pub async fn take(&self) -> Result<Taken<'_>, sqlx::Error> {
        // Taken out under the lock, dropped (back to the pool) outside it.
        let kept = self.lock().kept.take();
        if let Some(kept) = kept
            && kept.used.elapsed() < self.idle
            && kept.since.elapsed() < self.life
        {
            return Ok(Taken {
                conn: kept.conn,
                since: kept.since,
                from: self,
            });
        }
        Ok(Taken {
            conn: self.pool.acquire().await?,
            since: Instant::now(),
            from: self,
        })
    }

    /// Hands the kept connection, if any, back to the pool and keeps none
    /// from then on, as a pool's close waits for every connection to come
    /// back.
    pub fn release(&self) {
        let kept = {
            let mut slot = self.lock();
            slot.released = true;
            slot.kept.take()
        };
        drop(kept);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Taken<'_> {
    /// Keeps the connection for the next taker: call it only once the
    /// connection's work succeeded, so it is idle and between transactions.
    /// Another connection already kept, a pool too small or closed, or a
    /// [`KeptConnection::release`] sends this one back to the pool instead.
    pub fn keep(self) {
        let from = self.from;
        if from.pool.is_closed() || from.pool.options().get_max_connections() < KEEP_MIN_POOL {
            return;
        }
        let mut slot = from.lock();
        if slot.kept.is_none() && !slot.released {
            slot.kept = Some(Kept {
                conn: self.conn,
                since: self.since,
                used: Instant::now(),
            });
        }
    }
}

impl Deref for Taken<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for Taken<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}
