//! Authentication of every call but health's, before any handler runs: the
//! [`Caller`] goes into the request's extensions and its name into the call's
//! log span; a caller without a known token is answered `UNAUTHENTICATED`.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{Code, Status, body::Body, codegen::http};

use crate::{
    access::{Access, Caller, Denied},
    server::status::with_reason,
};

/// Health answers Kubernetes probes, which carry no token.
const HEALTH_PATH: &str = "/grpc.health.v1.Health/";

/// A service whose calls are authenticated first.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated<S> {
    inner: S,
    access: Access,
}

impl<S> Authenticated<S> {
    pub(crate) fn new(inner: S, access: Access) -> Self {
        Self { inner, access }
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
        if request.uri().path().starts_with(HEALTH_PATH) {
            return Box::pin(self.inner.call(request));
        }
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        let extensions = request.extensions();
        match self
            .access
            .authenticate(authorization, || crate::tls::peer_subject(extensions))
        {
            Ok(caller) => {
                if let Some(name) = caller.name() {
                    tracing::Span::current().record("caller", name);
                }
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Err(denied) => {
                let status = Status::from(denied);
                // Not secret, and what a grant by subject must name.
                let subject = crate::tls::peer_subject(request.extensions());
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

/// The caller of a call, as authentication left it before the handler; a
/// request that did not pass through authentication is refused.
///
/// # Errors
/// `UNAUTHENTICATED`: no caller was established.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
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
            Denied::Unknown => with_reason(Code::Unauthenticated, message, "TOKEN_UNKNOWN", &[]),
            Denied::Tenant { token, tenant } => with_reason(
                Code::PermissionDenied,
                message,
                "TENANT_NOT_GRANTED",
                &[("token", token), ("tenantId", tenant)],
            ),
            Denied::Admin { token } => with_reason(
                Code::PermissionDenied,
                message,
                "ADMIN_REQUIRED",
                &[("token", token)],
            ),
        }
    }
}
