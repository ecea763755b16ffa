//! Calls to the allocator. Reservations, confirmations and releases retry
//! with bounded, jittered backoff while the allocator is unreachable, up to a
//! deadline.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::time::Instant;
use tonic::{
    Code, Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt as _;

use crate::{
    access::bearer::BearerToken,
    proto::{
        AdvanceCounterRequest, ConfirmRequest, GetSeriesRequest, NumberRecord, ReleaseRequest,
        ReserveRequest, Series, number_allocator_client::NumberAllocatorClient,
    },
    server::{metrics::client_handled, telemetry},
    tenant::TenantId,
    tls::{ClientTls, TlsConnector},
};

/// Exponential backoff with jitter: the delay before retry `n` is drawn from
/// the upper half of `min(initial × 2ⁿ, max)`, so clients that failed together
/// do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Largest ceiling.
    pub max: Duration,
    /// Where the jitter comes from: a number in `[0, 1)`, uniformly random
    /// outside tests.
    pub draw: fn() -> f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            draw: fastrand::f64,
        }
    }
}

impl Backoff {
    /// The delay before retry `retry` (0 for the first).
    #[must_use]
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(2_u32.saturating_pow(retry))
            .min(self.max);
        ceiling / 2 + (ceiling / 2).mul_f64((self.draw)().clamp(0.0, 1.0))
    }
}

/// Whether a failed call is worth retrying: the allocator is unreachable,
/// unavailable, shedding load or out of its own time (its `--request-timeout`
/// shorter than what is left of the budget), or the connection failed
/// mid-call. A status built here from a transport error carries that error
/// as its source (UNKNOWN for a reset stream, CANCELLED for a dropped
/// connection, which is also what our own per-call time-out gives: the
/// deadline check tells them apart). Every call retried is keyed (a
/// reservation by its request id, a confirmation or release by its number
/// and holder): a retry after a call that did commit answers the same.
fn is_transient(status: &Status) -> bool {
    use std::error::Error as _;
    matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::ResourceExhausted | Code::DeadlineExceeded
    ) || status.source().is_some()
}

/// Whether the allocator refused a call for its tenant's rate
/// (`TENANT_RATE_LIMITED`): the tenant's to wait out, not the allocator's
/// fault.
#[must_use]
pub fn rate_limited(status: &Status) -> bool {
    status.code() == Code::ResourceExhausted
        && status
            .get_details_error_info()
            .is_some_and(|info| info.reason == "TENANT_RATE_LIMITED")
}

/// What every call to the allocator carries: the writer's token, and the
/// trace context of the call it serves.
#[derive(Debug, Clone)]
struct Outgoing(BearerToken);

impl Interceptor for Outgoing {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let mut request = self.0.call(request)?;
        telemetry::pass_on_trace(request.metadata_mut());
        Ok(request)
    }
}

/// A number reserved.
#[derive(Debug, Clone, PartialEq)]
pub struct Reserved {
    /// The number, as it stands now.
    pub record: NumberRecord,
    /// Whether an earlier call under the same request id reserved it.
    pub replayed: bool,
}

/// Why no number could be had.
#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    /// The allocator stayed unreachable or unavailable until the deadline.
    #[error("the allocator is unavailable: {0}")]
    Unavailable(String),
    /// The call's time ran out before the allocator was called (the
    /// writer's own work took it): nothing was asked of the allocator.
    #[error("no time was left to call the allocator")]
    OutOfTime,
    /// The allocator answered with an error retrying would not fix.
    #[error("the allocator refused: {}", .0.message())]
    Rejected(Status),
    /// The allocator answered a retry with an error retrying would not fix
    /// (its settings changed between the tries, say), after an earlier try
    /// of the call was lost (a time-out, a dropped connection): that try
    /// may have been acted on.
    #[error("the allocator refused a retry: {}", .0.message())]
    RefusedRetry(Status),
}

impl AllocatorError {
    /// Whether the allocator refused the call before anything was written:
    /// bad input, a state that does not allow it, access refused, the
    /// tenant's rate, no such method. An internal fault (`INTERNAL`, `UNKNOWN`, `DATA_LOSS`) may
    /// follow a commit, as may a time-out or a lost reply, and a refusal of
    /// a retry says nothing of the try before it.
    #[must_use]
    pub fn refused_before_writing(&self) -> bool {
        let status = match self {
            Self::OutOfTime => return true,
            Self::Unavailable(_) | Self::RefusedRetry(_) => return false,
            Self::Rejected(status) => status,
        };
        matches!(
            status.code(),
            Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::FailedPrecondition
                | Code::Aborted
                | Code::OutOfRange
                | Code::Unauthenticated
                | Code::PermissionDenied
                | Code::Unimplemented
        ) || rate_limited(status)
    }

    /// The request id another call holds a number under (empty if it sent
    /// none), when a change naming the request id it was reserved under was
    /// refused because that reservation's lease ended and the other call
    /// took it since (`NOT_THE_HOLDER`).
    #[must_use]
    pub fn held_under(&self) -> Option<String> {
        use tonic_types::StatusExt as _;
        let (Self::Rejected(status) | Self::RefusedRetry(status)) = self else {
            return None;
        };
        let info = status.get_details_error_info()?;
        if status.code() != Code::FailedPrecondition || info.reason != "NOT_THE_HOLDER" {
            return None;
        }
        Some(info.metadata.get("requestId").cloned().unwrap_or_default())
    }

    /// The number a repeated `Reserve` was refused because another call
    /// holds it since the reservation's lease ended (`NOT_THE_HOLDER`): its
    /// period, number, text and the request id it is held under. Nothing is
    /// reserved for the call.
    #[must_use]
    pub fn held_by_another(&self) -> Option<NumberRecord> {
        use tonic_types::StatusExt as _;
        let (Self::Rejected(status) | Self::RefusedRetry(status)) = self else {
            return None;
        };
        self.held_under()?;
        let info = status.get_details_error_info()?;
        let field = |key: &str| info.metadata.get(key).cloned();
        Some(NumberRecord {
            period: field("period")?,
            number: field("number")?.parse().ok()?,
            formatted: field("formatted")?,
            request_id: field("requestId")?,
            ..NumberRecord::default()
        })
    }
}

/// Where the allocator is and how to reach it.
#[derive(Debug, Clone)]
pub struct AllocatorEndpoint {
    /// `http://host:port`, or `https://host:port` with `tls`.
    pub url: String,
    /// Time-out for opening a connection.
    pub connect_timeout: Duration,
    /// How a connection whose allocator went silent is found out.
    pub keepalive: Keepalive,
    /// The token sent with every call.
    pub token: BearerToken,
    /// TLS settings, for an `https://` URL.
    pub tls: Option<ClientTls>,
}

/// HTTP/2 pings on the connection to the allocator, sent while a call is
/// open: a connection whose allocator stopped answering without
/// closing it (its node lost, a network cut in between) is closed once a
/// ping goes unanswered, and the next call opens another, instead of every
/// call waiting on it until the operating system gives up on it, many
/// minutes later.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    /// How long a connection may go without a frame from the allocator
    /// before a ping is sent.
    pub interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
        }
    }
}

/// A client of `numbering.v1.NumberAllocator`.
#[derive(Debug, Clone)]
pub struct AllocatorClient {
    client: NumberAllocatorClient<InterceptedService<Channel, Outgoing>>,
    backoff: Backoff,
    /// Where it is, for the logs.
    url: Arc<str>,
}

impl AllocatorClient {
    /// A client that connects on first use, so the writer starts while the
    /// allocator is down.
    ///
    /// # Errors
    /// The URL is not a valid endpoint URL, or its scheme does not agree with
    /// the TLS settings: `https://` needs them, `http://` takes none.
    pub fn connect_lazy(endpoint: &AllocatorEndpoint, backoff: Backoff) -> Result<Self, String> {
        let to = |url: String| {
            Ok::<_, String>(
                Endpoint::from_shared(url)
                    .map_err(|error| error.to_string())?
                    .connect_timeout(endpoint.connect_timeout)
                    .http2_keep_alive_interval(endpoint.keepalive.interval)
                    .keep_alive_timeout(endpoint.keepalive.timeout)
                    // Only while a call is open: a connection that went
                    // silent while idle is found out by the next call's
                    // pings, and idle pings are what proxies that police
                    // them (gRPC's too_many_pings) cut connections for.
                    .keep_alive_while_idle(false),
            )
        };
        let channel = match (&endpoint.tls, endpoint.url.strip_prefix("https://")) {
            (None, None) => to(endpoint.url.clone())?.connect_lazy(),
            // The connector speaks TLS itself; tonic's own connector would
            // refuse an https:// URL it has no TLS settings for.
            (Some(tls), Some(rest)) => {
                to(format!("http://{rest}"))?.connect_with_connector_lazy(TlsConnector(tls.clone()))
            }
            (None, Some(_)) => {
                return Err("an https:// URL needs --allocator-tls-ca".into());
            }
            (Some(_), None) => {
                return Err("the allocator TLS settings need an https:// URL".into());
            }
        };
        Ok(Self {
            client: NumberAllocatorClient::with_interceptor(
                channel,
                Outgoing(endpoint.token.clone()),
            ),
            backoff,
            url: endpoint.url.as_str().into(),
        })
    }

    /// Runs `attempt` (given the time left) until it succeeds, fails with
    /// an error retrying would not fix, or the deadline leaves no room for
    /// another attempt. While the allocator is unreachable or answers
    /// UNAVAILABLE, waits with backoff between attempts.
    async fn retried<T, F, Fut>(
        &self,
        method: &'static str,
        tenant: &str,
        deadline: Instant,
        mut attempt: F,
    ) -> Result<T, AllocatorError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut retry = 0;
        // Whether every attempt so far was turned away for the tenant's
        // rate, before the allocator did anything (so with none made): another
        // failure (a lost reply, a time-out) may follow a commit.
        let mut only_rate_limited = true;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(if retry == 0 {
                    AllocatorError::OutOfTime
                } else {
                    AllocatorError::Unavailable("no time left to call it again".into())
                });
            }
            let status = match attempt(remaining).await {
                Ok(answer) => {
                    client_handled(method, Code::Ok);
                    return Ok(answer);
                }
                Err(status) => status,
            };
            client_handled(method, status.code());
            if !is_transient(&status) {
                return Err(if only_rate_limited {
                    AllocatorError::Rejected(status)
                } else {
                    AllocatorError::RefusedRetry(status)
                });
            }
            // No sooner than the allocator says a retry can succeed.
            let told = status
                .get_details_retry_info()
                .and_then(|info| info.retry_delay)
                .unwrap_or_default();
            let delay = self.backoff.delay(retry).max(told);
            only_rate_limited &= rate_limited(&status);
            if Instant::now()
                .checked_add(delay)
                .is_none_or(|then| then >= deadline)
            {
                // The tenant's rate, which the caller's own retry is to
                // wait out, as the allocator told: passed on as it is, if
                // nothing this call sent may have been acted on.
                if only_rate_limited {
                    return Err(AllocatorError::Rejected(status));
                }
                return Err(AllocatorError::Unavailable(status.message().to_owned()));
            }
            tracing::warn!(
                tenant = %tenant,
                allocator = %self.url,
                retry,
                delay = ?delay,
                error = %status.message(),
                "allocator unavailable or over the tenant's rate; retrying",
            );
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }

    /// Reserves the next number of the tenant's invoice series for a
    /// document dated `date` (`YYYY-MM-DD`, empty for today in the series'
    /// time zone) for `lease`, with `request_id`, so that a retry whose first
    /// try committed gets the same number: a number given back first if the
    /// series reissues. Retried with backoff while the allocator is unreachable, until `deadline`.
    ///
    /// # Errors
    /// [`AllocatorError::Unavailable`] once the deadline leaves no room for
    /// another attempt; [`AllocatorError::Rejected`] for any other error
    /// ([`AllocatorError::RefusedRetry`] after a try that was lost).
    pub async fn reserve(
        &self,
        tenant: &TenantId,
        date: &str,
        request_id: &str,
        lease: Duration,
        deadline: Instant,
    ) -> Result<Reserved, AllocatorError> {
        self.reserving(tenant, date, request_id, lease, deadline, false)
            .await
    }

    /// What an earlier [`reserve`](Self::reserve) under `request_id` got,
    /// as it stands now; nothing is reserved if none was made: `NOT_FOUND`
    /// `REQUEST_ID_NOT_FOUND`, refused.
    ///
    /// # Errors
    /// As [`AllocatorClient::reserve`].
    pub async fn repeat_reservation(
        &self,
        tenant: &TenantId,
        date: &str,
        request_id: &str,
        lease: Duration,
        deadline: Instant,
    ) -> Result<NumberRecord, AllocatorError> {
        self.reserving(tenant, date, request_id, lease, deadline, true)
            .await
            .map(|reserved| reserved.record)
    }

    /// A `Reserve`, retried; with `repeat_only`, of an earlier one only.
    async fn reserving(
        &self,
        tenant: &TenantId,
        date: &str,
        request_id: &str,
        lease: Duration,
        deadline: Instant,
        repeat_only: bool,
    ) -> Result<Reserved, AllocatorError> {
        self.retried("Reserve", tenant.as_str(), deadline, |remaining| {
            let mut request = Request::new(ReserveRequest {
                tenant_id: tenant.to_string(),
                // Empty: the allocator's default series, the invoices'.
                series: String::new(),
                date: date.to_owned(),
                request_id: request_id.to_owned(),
                lease: prost_types::Duration::try_from(lease).ok(),
                repeat_only,
            });
            request.set_timeout(remaining);
            let mut client = self.client.clone();
            async move {
                let answer = client.reserve(request).await?.into_inner();
                let record = answer
                    .record
                    .ok_or_else(|| Status::internal("the allocator returned no number"))?;
                Ok(Reserved {
                    record,
                    replayed: answer.replayed,
                })
            }
        })
        .await
    }

    /// Confirms the tenant's invoice number `number` of `period` with
    /// `reference`; again with the same reference it answers the same. With
    /// `holder`, the request id it was reserved with, a number held under
    /// another is refused (`NOT_THE_HOLDER`).
    /// Retried with backoff while the allocator is unreachable, until `deadline`.
    ///
    /// # Errors
    /// As [`AllocatorClient::reserve`].
    pub async fn confirm(
        &self,
        tenant: &str,
        period: &str,
        number: i64,
        reference: &str,
        holder: Option<&str>,
        deadline: Instant,
    ) -> Result<NumberRecord, AllocatorError> {
        self.retried("Confirm", tenant, deadline, |remaining| {
            let mut request = Request::new(ConfirmRequest {
                tenant_id: tenant.to_string(),
                series: String::new(),
                period: period.to_owned(),
                number,
                reference: reference.to_owned(),
                request_id: holder.unwrap_or_default().to_owned(),
            });
            request.set_timeout(remaining);
            let mut client = self.client.clone();
            async move {
                let answer = client.confirm(request).await?.into_inner();
                answer
                    .record
                    .ok_or_else(|| Status::internal("the allocator returned no record"))
            }
        })
        .await
    }

    /// Gives back the tenant's reserved invoice number `number` of `period`,
    /// for `reason`, if held under `holder` when that is given. Retried with
    /// backoff while the allocator is unreachable, until `deadline`.
    ///
    /// # Errors
    /// As [`AllocatorClient::reserve`]; a number given back already is
    /// refused (`NUMBER_RELEASED`, `NUMBER_VOIDED`).
    pub async fn release(
        &self,
        tenant: &str,
        period: &str,
        number: i64,
        reason: &str,
        holder: Option<&str>,
        deadline: Instant,
    ) -> Result<NumberRecord, AllocatorError> {
        self.retried("Release", tenant, deadline, |remaining| {
            let mut request = Request::new(ReleaseRequest {
                tenant_id: tenant.to_string(),
                series: String::new(),
                period: period.to_owned(),
                number,
                reason: reason.to_owned(),
                request_id: holder.unwrap_or_default().to_owned(),
            });
            request.set_timeout(remaining);
            let mut client = self.client.clone();
            async move {
                let answer = client.release(request).await?.into_inner();
                answer
                    .record
                    .ok_or_else(|| Status::internal("the allocator returned no record"))
            }
        })
        .await
    }

    /// The tenant's invoice series, if it was ever used or configured.
    ///
    /// # Errors
    /// The allocator's answer but `NOT_FOUND`, unretried.
    pub async fn series(&self, tenant: &str) -> Result<Option<Series>, Status> {
        let request = GetSeriesRequest {
            tenant_id: tenant.to_owned(),
            ..GetSeriesRequest::default()
        };
        let answer = self.client.clone().get_series(request).await;
        client_handled(
            "GetSeries",
            answer.as_ref().map_or_else(Status::code, |_| Code::Ok),
        );
        match answer {
            Ok(response) => Ok(response.into_inner().series),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// Raises the tenant's invoice counter of the period `date` falls in
    /// (`YYYY-MM-DD`, empty for today's) to `at_least`, giving `reason` for
    /// the numbers skipped; never lowers it.
    ///
    /// # Errors
    /// The allocator's answer, unretried.
    pub async fn advance(
        &self,
        tenant: &str,
        at_least: i64,
        reason: &str,
        date: &str,
    ) -> Result<Series, Status> {
        let answer = self
            .client
            .clone()
            .advance_counter(AdvanceCounterRequest {
                tenant_id: tenant.to_owned(),
                series: String::new(),
                at_least,
                reason: reason.to_owned(),
                date: date.to_owned(),
            })
            .await;
        client_handled(
            "AdvanceCounter",
            answer.as_ref().map_or_else(Status::code, |_| Code::Ok),
        );
        answer?
            .into_inner()
            .series
            .ok_or_else(|| Status::internal("the allocator returned no series"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter() {
        let backoff = |draw| Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
            draw,
        };
        let (lowest, highest) = (backoff(|| 0.0), backoff(|| 1.0));
        let ms = Duration::from_millis;
        assert_eq!((lowest.delay(0), highest.delay(0)), (ms(50), ms(100)));
        assert_eq!((lowest.delay(1), highest.delay(1)), (ms(100), ms(200)));
        assert_eq!((lowest.delay(30), highest.delay(30)), (ms(200), ms(400)));
        assert_eq!(backoff(|| 0.5).delay(2), ms(300));
        // The default draws at random: twenty delays are not all alike.
        let random = Backoff {
            initial: Duration::from_secs(1),
            ..Backoff::default()
        };
        let draws: std::collections::HashSet<_> = (0..20).map(|_| random.delay(0)).collect();
        assert!(draws.len() > 1, "no jitter");
    }

    /// The error `retried` ends with when the tries answer `answers` in turn.
    async fn retried_through(answers: Vec<Status>) -> AllocatorError {
        let endpoint = AllocatorEndpoint {
            url: "http://127.0.0.1:9".into(),
            connect_timeout: Duration::from_secs(1),
            keepalive: Keepalive::default(),
            token: BearerToken::none(),
            tls: None,
        };
        let backoff = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(1),
            ..Backoff::default()
        };
        let client = AllocatorClient::connect_lazy(&endpoint, backoff).unwrap();
        let mut answers = answers.into_iter();
        let deadline = Instant::now() + Duration::from_secs(30);
        let tried = client
            .retried("Reserve", "acme", deadline, |_| {
                std::future::ready(Err::<(), _>(answers.next().expect("an answer left")))
            })
            .await;
        tried.unwrap_err()
    }

    /// A refusal says nothing was written only of a call none of whose
    /// tries may have been acted on: after a lost try, it may have been.
    #[tokio::test]
    async fn a_refusal_after_a_lost_try_may_follow_a_commit() {
        let denied = || Status::permission_denied("the token is not granted");
        let rate_limited = || {
            Status::with_error_details(
                Code::ResourceExhausted,
                "over the tenant's rate",
                tonic_types::ErrorDetails::with_error_info("TENANT_RATE_LIMITED", "numbering", []),
            )
        };
        let first = retried_through(vec![denied()]).await;
        assert!(matches!(first, AllocatorError::Rejected(_)), "{first:?}");
        assert!(first.refused_before_writing());
        let after_rate = retried_through(vec![rate_limited(), denied()]).await;
        assert!(matches!(after_rate, AllocatorError::Rejected(_)));
        assert!(after_rate.refused_before_writing());

        for lost in [
            Status::unavailable("the connection was reset"),
            Status::deadline_exceeded("timed out"),
            Status::cancelled("the connection was dropped"),
        ] {
            let after_lost = retried_through(vec![lost, denied()]).await;
            assert!(
                matches!(&after_lost, AllocatorError::RefusedRetry(status)
                    if status.code() == Code::PermissionDenied),
                "{after_lost:?}"
            );
            assert!(!after_lost.refused_before_writing());
        }
    }
}
