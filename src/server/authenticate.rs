//! Authentication of every call but health's `Check`, before any handler
//! runs: the caller's [`Admission`] goes into the request's extensions and
//! its name into the call's log span, and its connection is admitted (see
//! [`super::connections`]); a caller without a known token is answered
//! `UNAUTHENTICATED`.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::time::Instant;
use tonic::{Code, Status, body::Body, codegen::http};

use crate::{
    access::{Access, Caller, Denied, Needs},
    server::{fairness::TenantLimits, status::with_reason},
    tenant::TenantId,
};

/// Health's `Check` answers Kubernetes probes, which carry no token. Its
/// `Watch`, a stream that may stay open for as long as its client likes,
/// asks for one as every other call does (open on `--health-listen`).
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";

/// A service whose calls are authenticated first.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated<S> {
    inner: S,
    access: Access,
    limits: Option<Arc<TenantLimits>>,
}

impl<S> Authenticated<S> {
    pub(crate) fn new(inner: S, access: Access, limits: Option<Arc<TenantLimits>>) -> Self {
        Self {
            inner,
            access,
            limits,
        }
    }
}

/// What a handler asks before it acts for a tenant: whether the caller may,
/// and whether the tenant is within its rate.
#[derive(Debug, Clone)]
pub struct Admission {
    caller: Caller,
    limits: Option<Arc<TenantLimits>>,
    /// When the caller stops waiting for the answer, if it said.
    deadline: Option<Instant>,
}

impl Admission {
    /// Admits a call for `tenant` of a method that `needs` this of its caller.
    ///
    /// # Errors
    /// `PERMISSION_DENIED`: the caller may not; `RESOURCE_EXHAUSTED`: the
    /// tenant is over its rate and has no turn within the wait allowed, or
    /// none before the caller's deadline.
    pub async fn admit(&self, tenant: &TenantId, needs: Needs) -> Result<(), Status> {
        self.caller.may(tenant, needs)?;
        match &self.limits {
            Some(limits) => limits.admit(tenant, self.deadline).await,
            None => Ok(()),
        }
    }
}

impl<S, B> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        let extensions = request.extensions();
        let authenticated = self.access.authenticate(authorization, || {
            super::connections::grantable_subject(extensions)
        });
        if request.uri().path() == HEALTH_CHECK {
            // Answered either way; the connection is admitted only as any
            // other call's would be.
            if authenticated.is_ok() {
                super::connections::admit(request.extensions());
            }
            return Box::pin(self.inner.call(request));
        }
        match authenticated {
            Ok(caller) => {
                super::connections::admit(request.extensions());
                if let Some(name) = caller.name() {
                    tracing::Span::current().record("caller", name);
                }
                // Read only where a rate limit can make a call wait.
                let deadline = self
                    .limits
                    .as_ref()
                    .and_then(|_| super::caller_timeout(request.headers()))
                    .and_then(|timeout| Instant::now().checked_add(timeout));
                request.extensions_mut().insert(Admission {
                    caller,
                    limits: self.limits.clone(),
                    deadline,
                });
                Box::pin(self.inner.call(request))
            }
            // Without a token, as gRPC clients that check their servers'
            // health themselves open it (with no credentials of the calls'):
            // they take UNIMPLEMENTED, and no other answer, as health
            // checking off, and call on.
            Err(Denied::Missing) if request.uri().path() == HEALTH_WATCH => {
                let status = Status::unimplemented(
                    "health Watch asks for a token on this port: Check asks for none, nor does \
                     the health-only listener (--health-listen)",
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
            Err(denied) => {
                let status = Status::from(denied);
                // Not secret, and what a grant by subject must name.
                let subject = super::connections::peer_subject(request.extensions());
                tracing::info!(
                    method = request.uri().path(),
                    code = ?status.code(),
                    detail = status.message(),
                    subject,
                    "call refused"
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// The admission of a call, as authentication left it before the handler; a
/// request that did not pass through authentication is refused.
///
/// # Errors
/// `UNAUTHENTICATED`: no caller was established.
pub fn admission<T>(request: &tonic::Request<T>) -> Result<Admission, Status> {
    request
        .extensions()
        .get::<Admission>()
        .cloned()
        .ok_or_else(|| Status::from(Denied::Missing))
}

impl From<Denied> for Status {
    fn from(denied: Denied) -> Self {
        let message = denied.to_string();
        match denied {
            Denied::Missing => {
                with_reason(Code::Unauthenticated, message, "CREDENTIALS_MISSING", &[])
            }
            Denied::Unknown | Denied::NotBearer => {
                with_reason(Code::Unauthenticated, message, "TOKEN_UNKNOWN", &[])
            }
            Denied::Tenant { by, grant, tenant } => with_reason(
                Code::PermissionDenied,
                message,
                "TENANT_NOT_GRANTED",
                &[(by.key(), grant), ("tenantId", tenant)],
            ),
            Denied::Admin { by, grant } => with_reason(
                Code::PermissionDenied,
                message,
                "ADMIN_REQUIRED",
                &[(by.key(), grant)],
            ),
        }
    }
}
