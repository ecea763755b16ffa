//! Where the services get the time, and the ids of new records: the
//! system's outside tests, a clock the test moves inside them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The time, and new ids. Together, because the ids (version 7 UUIDs) embed
/// the time.
pub trait Clock: Send + Sync {
    /// The time now.
    fn now(&self) -> DateTime<Utc>;
    /// A new, unique id.
    fn new_id(&self) -> Uuid;
}

/// The system's clock, and time-ordered random ids.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn new_id(&self) -> Uuid {
        Uuid::now_v7()
    }
}
