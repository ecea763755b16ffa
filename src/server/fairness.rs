//! A per-tenant rate limit: each tenant may start so many calls a second
//! (with a burst of as many), whatever the others do. Past it a call answers
//! `RESOURCE_EXHAUSTED` with a `RetryInfo` saying when to try again, and
//! touches nothing.

use std::{
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};
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
    checks: AtomicU64,
}

impl TenantLimits {
    /// `per_second` calls a second per tenant, and bursts of as many.
    #[must_use]
    pub fn per_second(per_second: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second)),
            per_second,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one call from `tenant`'s allowance.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` (`TENANT_RATE_LIMITED`) with a `RetryInfo`: the
    /// tenant has none left now.
    pub fn check(&self, tenant: &TenantId) -> Result<(), Status> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(tenant).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
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
        })
    }
}
