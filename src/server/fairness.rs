//! A per-tenant rate limit: each tenant may start so many calls a second
//! (with a burst of as many), whatever the others do. A call past it waits
//! for its tenant's next turn, up to a bound, so that a client calling in a
//! loop is slowed to the rate instead of spinning on refusals; one whose turn
//! is further off answers `RESOURCE_EXHAUSTED` with a `RetryInfo` saying when
//! to try again, and touches nothing.

use std::{
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{server::status::ERROR_DOMAIN, tenant::TenantId};

/// Checks between two sweeps of tenants idle long enough to be forgotten.
const SWEEP_EVERY: u64 = 10_000;

/// The calls each tenant may still start.
#[derive(Debug)]
pub struct TenantLimits {
    limiter: DefaultKeyedRateLimiter<TenantId>,
    per_second: NonZeroU32,
    max_wait: Duration,
    checks: AtomicU64,
}

impl TenantLimits {
    /// `per_second` calls a second per tenant, and bursts of as many; a call
    /// past them waits up to `max_wait` for a turn (zero: none).
    #[must_use]
    pub fn new(per_second: NonZeroU32, max_wait: Duration) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second)),
            per_second,
            max_wait,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one call from `tenant`'s allowance, waiting for a turn if it
    /// comes within the bound.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` (`TENANT_RATE_LIMITED`) with a `RetryInfo`: the
    /// tenant has no turn within the bound.
    pub async fn admit(&self, tenant: &TenantId) -> Result<(), Status> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        let give_up = Instant::now() + self.max_wait;
        loop {
            let Err(not_until) = self.limiter.check_key(tenant) else {
                return Ok(());
            };
            // Waiters are not queued: each takes the next free turn it
            // sees, and one that keeps losing gives up at the bound.
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            let turn = Instant::now() + wait;
            if turn > give_up {
                return Err(self.refusal(tenant, wait));
            }
            tokio::time::sleep_until(turn).await;
        }
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
                "tenant {tenant:?} is over its {} calls a second; retry in {} ms",
                self.per_second,
                wait.as_millis()
            ),
            details,
        )
    }
}
