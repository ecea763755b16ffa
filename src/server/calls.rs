//! Limits on each call of a service, and the one log line for each failed call.
//!
//! Health and reflection are not wrapped: a probe must answer however busy the
//! service is.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::Semaphore;
use tonic::{
    Code, Status,
    body::Body,
    codegen::{Service, http},
    server::NamedService,
};
use tonic_types::StatusExt;

use crate::server::{
    status::with_reason,
    validation::{FieldViolation, InvalidArgument},
};

/// A service whose calls are bounded in number and time, each failure logged
/// at the level its code deserves.
#[derive(Clone)]
pub(crate) struct Guarded<S> {
    inner: S,
    in_flight: Arc<Semaphore>,
    request_timeout: Duration,
}

impl<S> Guarded<S> {
    /// At most `concurrency_limit` calls at once across every connection; each
    /// runs for at most `request_timeout`, or the caller's deadline if shorter.
    pub(crate) fn new(inner: S, concurrency_limit: usize, request_timeout: Duration) -> Self {
        Self {
            inner,
            in_flight: Arc::new(Semaphore::new(concurrency_limit)),
            request_timeout,
        }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Generated tonic services are always ready; the limit is taken per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The path is read only if the call fails; cloning the URI shares its
        // bytes rather than copying them on every call.
        let uri = request.uri().clone();
        // A full service sheds at once: queueing would only move the wait
        // into the callers' deadlines.
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let status = with_reason(
                Code::ResourceExhausted,
                "too many calls in flight; retry with backoff",
                "OVERLOADED",
                &[],
            );
            log_failure(uri.path(), &status);
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let timeout = crate::server::caller_timeout(request.headers())
            .map_or(self.request_timeout, |caller| {
                caller.min(self.request_timeout)
            });
        // Generated tonic services are ready at once, every time: a clone can
        // be called without polling it first.
        let mut inner = self.inner.clone();
        Box::pin(async move {
            // Dropping the call may drop a commit's reply: a gap, never a
            // duplicate.
            let Ok(response) = tokio::time::timeout(timeout, inner.call(request)).await else {
                let status = with_reason(
                    Code::DeadlineExceeded,
                    format!("the call did not finish within {timeout:?}"),
                    "REQUEST_TIMEOUT",
                    &[("timeoutMs", timeout.as_millis().to_string())],
                );
                log_failure(uri.path(), &status);
                return Ok(status.into_http());
            };
            let response = response?;
            drop(permit);
            // A unary error is trailers-only: its status is in the headers.
            match Status::from_header_map(response.headers()) {
                Some(status) if status.code() != Code::Ok => {
                    let Some(status) = undecodable(&status) else {
                        log_failure(uri.path(), &status);
                        return Ok(response);
                    };
                    log_failure(uri.path(), &status);
                    Ok(status.into_http())
                }
                _ => Ok(response),
            }
        })
    }
}

/// The answer of this service to a request whose frame the gRPC library
/// refused before any handler ran, in place of the library's own, which
/// carries no `ErrorInfo`: a message over the size limit is
/// `RESOURCE_EXHAUSTED` `REQUEST_TOO_LARGE` (gRPC's code for it); a frame
/// with a compression flag its request's encoding does not allow is
/// `INVALID_ARGUMENT`, as any request that does not decode, and not the
/// `INTERNAL` of a fault of the service. `None` for every other answer: the
/// service's own, with their reasons.
fn undecodable(status: &Status) -> Option<Status> {
    if !status.details().is_empty() {
        return None;
    }
    match status.code() {
        Code::OutOfRange => {
            // "Error, decoded message length too large: found N bytes, the
            // limit is: M bytes"
            let sizes = status
                .message()
                .split_once(": ")
                .map_or(status.message(), |(_, sizes)| sizes);
            Some(with_reason(
                Code::ResourceExhausted,
                format!(
                    "the request message is over this service's size limit ({sizes}); do not \
                     retry it as it is"
                ),
                "REQUEST_TOO_LARGE",
                &[],
            ))
        }
        Code::Internal => Some(
            InvalidArgument(vec![FieldViolation {
                field: String::new(),
                description: status.message().to_owned(),
            }])
            .into(),
        ),
        _ => None,
    }
}

/// Who is at fault for a failed call, which sets its log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The caller's request or timing: INFO.
    Caller,
    /// Load or a dependency's outage, expected to pass: WARN.
    Load,
    /// Ours: ERROR, for someone to look at.
    Server,
}

impl Fault {
    /// The fault a status code stands for.
    pub(crate) fn of(code: Code) -> Self {
        match code {
            Code::Internal | Code::Unknown | Code::DataLoss | Code::Unavailable => Self::Server,
            Code::ResourceExhausted | Code::DeadlineExceeded => Self::Load,
            _ => Self::Caller,
        }
    }
}

/// Logs a failed call once, with its code, reason and message.
fn log_failure(method: &str, status: &Status) {
    let reason = status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default();
    let code = status.code();
    // Not `message`: that name is the event's own.
    let detail = status.message();
    match Fault::of(code) {
        Fault::Caller => tracing::info!(method, ?code, reason, detail, "call refused"),
        Fault::Load => tracing::warn!(method, ?code, reason, detail, "call failed"),
        Fault::Server => tracing::error!(method, ?code, reason, detail, "call failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_server_faults_are_errors() {
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::Cancelled,
        ] {
            assert_eq!(Fault::of(code), Fault::Caller, "{code:?}");
        }
        for code in [Code::ResourceExhausted, Code::DeadlineExceeded] {
            assert_eq!(Fault::of(code), Fault::Load, "{code:?}");
        }
        for code in [
            Code::Internal,
            Code::Unknown,
            Code::DataLoss,
            Code::Unavailable,
        ] {
            assert_eq!(Fault::of(code), Fault::Server, "{code:?}");
        }
    }
}
