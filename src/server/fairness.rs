//! A per-tenant rate limit: each tenant may start so many calls a second
//! (with a burst of as many), whatever the others do. A call past it takes
//! its tenant's next free turn, if that comes within a bound, and waits for
//! it, so that a client calling in a loop is slowed to the rate instead of
//! spinning on refusals. Each waiting call holds a turn of its own: waiters
//! wake one at a time, each once, and at most the rate times the bound of a
//! tenant's calls wait at once. A call whose turn would be further off, or
//! come after the caller's deadline, answers `RESOURCE_EXHAUSTED` at once,
//! with a `RetryInfo` saying when to try again, and takes no turn.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{server::status::ERROR_DOMAIN, tenant::TenantId};

/// Checks between two sweeps of tenants idle long enough to be forgotten.
const SWEEP_EVERY: u64 = 10_000;

/// The calls each tenant may still start.
#[derive(Debug)]
pub struct TenantLimits {
    /// Each tenant's next free turn, as the generic cell rate algorithm
    /// keeps it (its theoretical arrival time): a call may start up to
    /// `burst` before it. A tenant not here has every turn free.
    turns: Mutex<HashMap<TenantId, Instant>>,
    /// Between two turns.
    interval: Duration,
    /// How far ahead of its turn a call may start: a burst of `per_second`
    /// calls.
    burst: Duration,
    per_second: NonZeroU32,
    max_wait: Duration,
    checks: AtomicU64,
}

impl TenantLimits {
    /// `per_second` calls a second per tenant, and bursts of as many; a call
    /// past them waits up to `max_wait` for a turn (zero: none).
    #[must_use]
    pub fn new(per_second: NonZeroU32, max_wait: Duration) -> Self {
        let interval = Duration::from_secs(1) / per_second.get();
        Self {
            turns: Mutex::new(HashMap::new()),
            interval,
            burst: interval * (per_second.get() - 1),
            per_second,
            max_wait,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one call from `tenant`'s allowance: its next free turn, waited
    /// for if it comes within the bound and before the call's `deadline`
    /// (the caller's, if it set one). A turn taken by a call that gives up
    /// waiting (its caller gone) is not given to another.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` (`TENANT_RATE_LIMITED`) with a `RetryInfo`: the
    /// tenant has no turn within the bound, or none before the deadline.
    pub async fn admit(&self, tenant: &TenantId, deadline: Option<Instant>) -> Result<(), Status> {
        let now = Instant::now();
        let bound = deadline.map_or(self.max_wait, |deadline| {
            self.max_wait.min(deadline.saturating_duration_since(now))
        });
        let turn = {
            let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
            if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
                turns.retain(|_, next| *next > now);
            }
            let next = turns.get(tenant).map_or(now, |next| (*next).max(now));
            let turn = next
                .checked_sub(self.burst)
                .map_or(now, |turn| turn.max(now));
            let wait = turn - now;
            if wait > bound {
                return Err(self.refusal(tenant, wait));
            }
            match turns.get_mut(tenant) {
                Some(taken) => *taken = next + self.interval,
                None => {
                    turns.insert(tenant.clone(), next + self.interval);
                }
            }
            turn
        };
        if turn > now {
            tokio::time::sleep_until(turn).await;
        }
        Ok(())
    }

    fn refusal(&self, tenant: &TenantId, wait: Duration) -> Status {
        let mut details = ErrorDetails::with_error_info(
            "TENANT_RATE_LIMITED",
            ERROR_DOMAIN,
            [
                ("tenantId".to_owned(), tenant.to_string()),
                ("perSecond".to_owned(), self.per_second.to_string()),
            ],
        );
        details.set_retry_info(Some(wait));
        Status::with_error_details(
            Code::ResourceExhausted,
            format!(
                "tenant \"{tenant}\" is over its {} calls a second; retry in {} ms",
                self.per_second,
                wait.as_millis()
            ),
            details,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// 100 calls of one tenant at once, at 10 a second with a 1 s wait:
    /// 10 start at once, 10 more at their own turns 100 ms apart, and the
    /// other 80 are refused at once, told when their turn would come,
    /// instead of waiting out the bound. Another tenant is not slowed.
    #[tokio::test(start_paused = true)]
    async fn each_waiting_call_takes_a_turn_and_those_past_the_wait_are_refused_at_once() {
        let limits = Arc::new(TenantLimits::new(
            NonZeroU32::new(10).unwrap(),
            Duration::from_secs(1),
        ));
        let acme = TenantId::parse("acme").unwrap();
        let started = Instant::now();
        let calls: Vec<_> = (0..100)
            .map(|_| {
                let (limits, acme) = (limits.clone(), acme.clone());
                tokio::spawn(async move {
                    let admitted = limits.admit(&acme, None).await;
                    (admitted.is_ok(), started.elapsed())
                })
            })
            .collect();
        let globex = TenantId::parse("globex").unwrap();
        limits.admit(&globex, None).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO, "another tenant waited");

        let mut admitted = Vec::new();
        let mut refused = Vec::new();
        for call in calls {
            let (ok, at) = call.await.unwrap();
            if ok {
                admitted.push(at);
            } else {
                refused.push(at);
            }
        }
        admitted.sort_unstable();
        let turns: Vec<Duration> = (0..20_u32)
            .map(|call| Duration::from_millis(100) * call.saturating_sub(9))
            .collect();
        assert_eq!(admitted, turns);
        assert_eq!(refused.len(), 80);
        assert!(
            refused.iter().all(Duration::is_zero),
            "a refused call waited: {refused:?}"
        );
    }

    /// A call whose turn comes within the wait but after its caller's
    /// deadline is refused at once, told when the turn comes, and takes no
    /// turn: the calls after it keep theirs.
    #[tokio::test(start_paused = true)]
    async fn a_call_whose_turn_comes_after_its_deadline_is_refused_at_once() {
        let limits = TenantLimits::new(NonZeroU32::new(2).unwrap(), Duration::from_secs(5));
        let acme = TenantId::parse("acme").unwrap();
        for _ in 0..2 {
            limits.admit(&acme, None).await.unwrap();
        }
        let started = Instant::now();
        let soon = Some(started + Duration::from_millis(100));
        for _ in 0..3 {
            let refused = limits.admit(&acme, soon).await.unwrap_err();
            assert_eq!(refused.code(), Code::ResourceExhausted);
            let delay = refused
                .get_details_retry_info()
                .and_then(|retry| retry.retry_delay);
            assert_eq!(delay, Some(Duration::from_millis(500)));
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "a refused call waited");
        // The next turn is still the one told, half a second away.
        let later = Some(started + Duration::from_secs(1));
        limits.admit(&acme, later).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }

    /// The retry delay told is when the tenant's next turn comes, and a call
    /// then is admitted at once.
    #[tokio::test(start_paused = true)]
    async fn a_refused_call_is_told_when_its_turn_comes() {
        let limits = TenantLimits::new(NonZeroU32::new(3).unwrap(), Duration::ZERO);
        let acme = TenantId::parse("acme").unwrap();
        for _ in 0..3 {
            limits.admit(&acme, None).await.unwrap();
        }
        let refused = limits.admit(&acme, None).await.unwrap_err();
        let delay = refused
            .get_details_retry_info()
            .and_then(|retry| retry.retry_delay)
            .expect("a retry delay");
        assert_eq!(delay, Duration::from_secs(1) / 3);
        tokio::time::advance(delay).await;
        let started = Instant::now();
        limits.admit(&acme, None).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
