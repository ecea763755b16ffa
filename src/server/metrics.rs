//! Prometheus metrics: the conventional gRPC server metrics of every call, the
//! services' own (recorded where they happen, through the `metrics` facade),
//! and the `GET /metrics` endpoint that serves them on a listener of its own.
//!
//! Nothing is recorded until a metrics listener is configured: the facade's
//! macros do nothing without a recorder. Tenant ids are never labels.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use prost::Message;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tonic::{Code, Status, body::Body, codegen::http};

/// Upper bounds (seconds) of the call-duration histograms.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the histograms of calls or writes merged into one
/// transaction.
const BATCH_SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Whether this module's recorder is installed: work done only to label a
/// metric (a failure's reason) is skipped otherwise.
static RECORDING: AtomicBool = AtomicBool::new(false);

/// The process's recorder, installed on first use; `None` if another recorder
/// was installed first.
fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|builder| {
                    builder
                        .set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), BATCH_SIZES)
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            RECORDING.store(true, Ordering::Relaxed);
            describe();
            Some(handle)
        })
        .as_ref()
}

/// Gives each metric its `# HELP` text (the README's table says more).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "grpc_server_started_total",
        "Calls started, health and reflection included."
    );
    describe_counter!(
        "grpc_server_handled_total",
        "Calls finished, by code; Canceled when the client went away first."
    );
    describe_histogram!(
        "grpc_server_handling_seconds",
        metrics::Unit::Seconds,
        "Time from the request to the call's status."
    );
    describe_counter!(
        "numbering_calls_failed_total",
        "Failed calls by code and by the reason of their ErrorInfo."
    );
    describe_counter!(
        "numbering_numbers_allocated_total",
        "Numbers handed out by Allocate and Reserve, repeats of a request id not counted."
    );
    describe_histogram!(
        "numbering_group_commit_batch_size",
        "Calls merged into each group commit of the allocator."
    );
    describe_histogram!(
        "numbering_group_commit_wait_seconds",
        metrics::Unit::Seconds,
        "Time each call waited in its lane's queue before its group's transaction began."
    );
    describe_histogram!(
        "numbering_invoice_write_batch_size",
        "Writes of the invoice writer merged into each of its transactions."
    );
    describe_histogram!(
        "numbering_db_operation_seconds",
        metrics::Unit::Seconds,
        "Each database operation (a transaction, a read), by outcome."
    );
    describe_gauge!(
        "numbering_db_operations_in_flight",
        "Database operations running, those waiting for a connection included."
    );
    describe_gauge!(
        "numbering_db_connections",
        "The database pool's connections, by state."
    );
    describe_gauge!(
        "numbering_db_connections_max",
        "The most database connections (--db-max-connections)."
    );
    describe_counter!(
        "numbering_invoice_number_conflicts_total",
        "Numbers the writer found held by a stored invoice, retried or given up on."
    );
    describe_counter!(
        "numbering_invoice_confirmations_refused_total",
        "Stored invoices whose number the allocator refused to confirm."
    );
    describe_counter!(
        "grpc_client_handled_total",
        "The writer's calls to the allocator, each retry counted, by code."
    );
    describe_gauge!(
        "numbering_ready",
        "Readiness as the health check answers it: 1 while the database takes writes."
    );
}

/// Connections the metrics endpoint holds at once; more wait in the listen
/// backlog. A scraper needs one.
const MAX_METRICS_CONNECTIONS: usize = 16;

/// Installs the recorder if it is not yet, and serves `GET /metrics` on
/// `listener` in a task until it is aborted: at most
/// [`MAX_METRICS_CONNECTIONS`] connections at once, each closed `lifetime`
/// after its accept (a scrape takes milliseconds; a scraper reconnects), so
/// that clients of this port cannot hold the process's file descriptors.
/// None if another recorder was installed first.
pub(crate) fn start(
    listener: TcpListener,
    lifetime: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    let Some(handle) = handle() else {
        tracing::warn!("another metrics recorder is installed; not serving /metrics");
        return None;
    };
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            (
                [(
                    http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                handle.render(),
            )
        }),
    );
    // Histograms keep their samples until upkeep folds them in.
    let upkeep = async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticks.tick().await;
            handle.run_upkeep();
        }
    };
    Some(tokio::spawn(async move {
        tokio::select! {
            served = async { axum::serve(Bounded::new(listener, lifetime), router).await } => {
                if let Err(error) = served {
                    tracing::error!(%error, "the metrics endpoint stopped");
                }
            }
            () = upkeep => {}
        }
    }))
}

/// The metrics listener, bounded: at most [`MAX_METRICS_CONNECTIONS`] at
/// once, each for at most its lifetime.
struct Bounded {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    lifetime: Duration,
}

impl Bounded {
    fn new(listener: TcpListener, lifetime: Duration) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS)),
            lifetime,
        }
    }
}

impl axum::serve::Listener for Bounded {
    type Io = Lifetime;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Lifetime, SocketAddr) {
        loop {
            // A permit first: at the limit, connections wait in the kernel.
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let ends = Box::pin(tokio::time::sleep(self.lifetime));
                    return (
                        Lifetime {
                            stream,
                            ends,
                            _permit: permit,
                        },
                        addr,
                    );
                }
                Err(error) => {
                    // Out of file descriptors, say: let some close.
                    tracing::warn!(%error, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A metrics connection, closed by its next read once its lifetime ends;
/// holds its place under the limit until dropped.
struct Lifetime {
    stream: TcpStream,
    ends: Pin<Box<tokio::time::Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Lifetime {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.ends.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the metrics connection's lifetime ended",
            )));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lifetime {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The labels of one gRPC method: `grpc_service` (the full name),
/// `grpc_method` and `grpc_type`.
#[derive(Debug, Clone, Copy)]
struct Rpc {
    service: &'static str,
    method: &'static str,
    kind: &'static str,
}

impl Rpc {
    /// Any path no service serves; labelled alike, so that made-up paths
    /// cannot add label values.
    const UNKNOWN: Self = Self {
        service: "unknown",
        method: "unknown",
        kind: "unknown",
    };

    /// The method of a request path (`/package.Service/Method`).
    fn of(path: &str) -> Self {
        known_methods().get(path).copied().unwrap_or(Self::UNKNOWN)
    }

    fn started(self) {
        metrics::counter!(
            "grpc_server_started_total",
            "grpc_service" => self.service,
            "grpc_method" => self.method,
            "grpc_type" => self.kind,
        )
        .increment(1);
    }

    /// Records the end of a call answered with `code`; `headers` are those
    /// holding its status (the trailers, or the headers of a trailers-only
    /// answer), which name a failure's reason.
    fn handled(self, code: Code, started: Instant, headers: Option<&http::HeaderMap>) {
        // A stream its client closes (a health watch, a reflection session)
        // ends canceled: that is how it ends, not a failure.
        let failed = code != Code::Ok && !(code == Code::Cancelled && self.kind != "unary");
        if failed && RECORDING.load(Ordering::Relaxed) {
            metrics::counter!(
                "numbering_calls_failed_total",
                "grpc_service" => self.service,
                "grpc_method" => self.method,
                "grpc_code" => code_name(code),
                "reason" => headers.map_or_else(|| NO_REASON.to_owned(), reason_of),
            )
            .increment(1);
        }
        let code = code_name(code);
        metrics::counter!(
            "grpc_server_handled_total",
            "grpc_service" => self.service,
            "grpc_method" => self.method,
            "grpc_type" => self.kind,
            "grpc_code" => code,
        )
        .increment(1);
        metrics::histogram!(
            "grpc_server_handling_seconds",
            "grpc_service" => self.service,
            "grpc_method" => self.method,
            "grpc_type" => self.kind,
            "grpc_code" => code,
        )
        .record(started.elapsed().as_secs_f64());
    }
}

/// Every method the servers serve, by path: the project's services (from
/// their descriptors), health and reflection.
fn known_methods() -> &'static HashMap<String, Rpc> {
    static METHODS: OnceLock<HashMap<String, Rpc>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let mut methods = HashMap::new();
        let mut add = |service: String, method: String, client_streaming, server_streaming| {
            let kind = match (client_streaming, server_streaming) {
                (false, false) => "unary",
                (false, true) => "server_stream",
                (true, false) => "client_stream",
                (true, true) => "bidi_stream",
            };
            let path = format!("/{service}/{method}");
            // Leaked once per process: a fixed, small set of names.
            let labels = Rpc {
                service: Box::leak(service.into_boxed_str()),
                method: Box::leak(method.into_boxed_str()),
                kind,
            };
            methods.insert(path, labels);
        };
        let files = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptors decode");
        for file in &files.file {
            for service in &file.service {
                for method in &service.method {
                    add(
                        format!("{}.{}", file.package(), service.name()),
                        method.name().to_owned(),
                        method.client_streaming(),
                        method.server_streaming(),
                    );
                }
            }
        }
        add("grpc.health.v1.Health".into(), "Check".into(), false, false);
        add("grpc.health.v1.Health".into(), "Watch".into(), false, true);
        for reflection in [
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            add(reflection.into(), "ServerReflectionInfo".into(), true, true);
        }
        methods
    })
}

/// A code as Prometheus' gRPC metrics name it (Go's `codes.Code` names).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The reason label of a failure without an `ErrorInfo`.
const NO_REASON: &str = "none";

/// The `ErrorInfo` reason of the status in `headers`, if it is one of ours
/// (`UPPER_SNAKE`, short), so that label values stay a small, fixed set.
fn reason_of(headers: &http::HeaderMap) -> String {
    Status::from_header_map(headers)
        .map_or_else(|| NO_REASON.to_owned(), |status| reason_of_status(&status))
}

/// The `ErrorInfo` reason of `status`, if it is one of ours (`UPPER_SNAKE`,
/// short); `none` otherwise.
fn reason_of_status(status: &Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .filter(|reason| {
            (1..=48).contains(&reason.len())
                && reason.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        })
        .unwrap_or_else(|| NO_REASON.to_owned())
}

/// Records one call of the writer's allocator client to `method` of
/// `numbering.v1.NumberAllocator` that answered `code` (each attempt of a
/// retried call is one call).
pub(crate) fn client_handled(method: &'static str, code: Code) {
    metrics::counter!(
        "grpc_client_handled_total",
        "grpc_service" => "numbering.v1.NumberAllocator",
        "grpc_method" => method,
        "grpc_type" => "unary",
        "grpc_code" => code_name(code),
    )
    .increment(1);
}

/// Records the writer's refusal by the allocator to confirm the number of a
/// stored invoice (another call holds it, say): each is an invoice whose
/// number's record does not name it, for an operator to look at.
pub(crate) fn confirmation_refused(status: &Status) {
    metrics::counter!(
        "numbering_invoice_confirmations_refused_total",
        "grpc_code" => code_name(status.code()),
        "reason" => reason_of_status(status),
    )
    .increment(1);
}

/// The `grpc-status` of a header map, if it has one.
fn status_of(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// Records the gRPC server metrics of every call through it.
#[derive(Debug, Clone)]
pub(crate) struct GrpcMetrics<S> {
    inner: S,
}

impl<S> GrpcMetrics<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: http_body::Body<Data = Bytes> + Send + 'static,
    R::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Nothing would be recorded: no lookup, no clock, no wrapped body.
        if !RECORDING.load(Ordering::Relaxed) {
            let response = self.inner.call(request);
            return Box::pin(async move { Ok(response.await?.map(Body::new)) });
        }
        let method = Rpc::of(request.uri().path());
        method.started();
        let mut call = Call(Some((method, Instant::now())));
        let response = self.inner.call(request);
        // Dropped before it answers (the client went away), the call is
        // recorded as canceled.
        Box::pin(async move {
            let response = response.await?;
            // A failure answers in the headers alone (trailers-only); a
            // reply's status comes in the trailers after its messages.
            if let Some(code) = status_of(response.headers()) {
                call.finish(code, Some(response.headers()));
                return Ok(response.map(Body::new));
            }
            Ok(response.map(|body| {
                Body::new(Observed {
                    inner: Body::new(body),
                    call,
                })
            }))
        })
    }
}

/// A call not recorded as handled yet: recorded once, with its code, or
/// `Canceled` if it is dropped first (the client went away before its
/// answer or its trailers).
struct Call(Option<(Rpc, Instant)>);

impl Call {
    fn finish(&mut self, code: Code, trailers: Option<&http::HeaderMap>) {
        if let Some((method, started)) = self.0.take() {
            method.handled(code, started, trailers);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled, None);
    }
}

/// A reply body that records its call's code once its trailers pass, or
/// `Canceled` if it is dropped before they do.
struct Observed {
    inner: Body,
    call: Call,
}

impl Observed {
    fn finish(&mut self, code: Code, trailers: Option<&http::HeaderMap>) {
        self.call.finish(code, trailers);
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_of(trailers).unwrap_or(Code::Unknown);
                    self.finish(code, Some(trailers));
                }
            }
            Poll::Ready(Some(Err(status))) => self.finish(status.code(), None),
            Poll::Ready(None) => self.finish(Code::Unknown, None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
