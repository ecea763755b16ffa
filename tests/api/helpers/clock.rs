//! A clock the test moves.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use numbering::clock::Clock;
use uuid::Uuid;

/// Stands still until [`ManualClock::advance`] moves it.
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock stopped at the time of the call.
    pub fn new() -> Arc<Self> {
        Self::at(Utc::now())
    }

    /// A clock stopped at `time`.
    pub fn at(time: DateTime<Utc>) -> Arc<Self> {
        Arc::new(Self(Mutex::new(time)))
    }

    pub fn set(&self, time: DateTime<Utc>) {
        *self.0.lock().unwrap() = time;
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += TimeDelta::from_std(by).unwrap();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }

    fn new_id(&self) -> Uuid {
        Uuid::now_v7()
    }
}
