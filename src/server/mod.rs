//! Server plumbing both services share: configuration, telemetry, shutdown, and
//! [`serve`], the one function that assembles a gRPC server around a service.

mod authenticate;
mod calls;
pub mod config;
pub mod connections;
pub mod fairness;
pub(crate) mod metrics;
pub mod pagination;
pub mod shutdown;
pub mod startup;
pub mod status;
pub mod telemetry;
pub mod validation;

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use tokio::{net::TcpListener, sync::watch, time::MissedTickBehavior};
use tonic::{
    Status,
    body::Body,
    codegen::{Service, http},
    server::NamedService,
    service::Routes,
    transport::Server,
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower_http::trace::TraceLayer;

pub use authenticate::{Admission, admission};
use connections::CountCalls;

use crate::{
    access::Access,
    db::NotReady,
    server::{
        connections::{ConnectionLimits, incoming},
        fairness::TenantLimits,
    },
    tls::ServerTls,
};

/// A service's store, as the server sees it: readiness follows it, and it is
/// closed once the server has stopped.
#[async_trait]
pub trait Store: Send + Sync {
    /// `Ok` if the store takes calls now, else why not. Must return within
    /// a bounded time.
    async fn readiness(&self) -> Result<(), NotReady>;

    /// Closes the store's connections.
    async fn close(&self);
}

/// Timing and limits of a server.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Longest a call may run; the caller's shorter deadline wins.
    pub request_timeout: Duration,
    /// Calls of the service in flight at once; more answer `RESOURCE_EXHAUSTED`.
    pub concurrency_limit: usize,
    /// How often readiness re-checks the store.
    pub health_check_interval: Duration,
    /// After the shutdown signal, how long to keep serving while `NOT_SERVING` spreads.
    pub drain_delay: Duration,
    /// After the drain delay, how long in-flight calls get to finish.
    pub shutdown_grace: Duration,
    /// Who may call: every method but health's.
    pub access: Access,
    /// Whether server reflection is served.
    pub reflection: bool,
    /// TLS on the gRPC listener; none for plaintext.
    pub tls: Option<ServerTls>,
    /// Each tenant's rate; none for no limit.
    pub tenant_limits: Option<Arc<TenantLimits>>,
    /// Connections held at once, and how long one may stay silent.
    pub connections: ConnectionLimits,
    /// Calls in flight at once on one connection (HTTP/2 streams).
    pub max_concurrent_streams: u32,
    /// How often an HTTP/2 ping checks that a connection's peer is alive.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// How old a connection gets before its client is asked to reconnect;
    /// none for no limit.
    pub max_connection_age: Option<Duration>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            concurrency_limit: 10_000,
            health_check_interval: Duration::from_secs(1),
            drain_delay: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
            access: Access::open(),
            reflection: true,
            tls: None,
            tenant_limits: None,
            connections: ConnectionLimits::default(),
            max_concurrent_streams: 100,
            keepalive_interval: Duration::from_mins(1),
            keepalive_timeout: Duration::from_secs(20),
            max_connection_age: None,
        }
    }
}

/// Why a server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection descriptors did not load.
    #[error("building the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("serving gRPC")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `service` with health and reflection on an already-bound listener
/// until `shutdown` resolves, then drains: health `NOT_SERVING`, `drain_delay`
/// of normal service, stop accepting, in-flight calls finish within
/// `shutdown_grace`.
///
/// Health: `""` is liveness and stays SERVING until shutdown; the service's own
/// name is readiness, `NOT_SERVING` until `store` first answers and then
/// following it. Once the server has stopped, the store is closed.
///
/// # Errors
/// The transport fails.
pub async fn serve<S>(
    listeners: impl Into<Listeners>,
    service: S,
    store: Arc<dyn Store>,
    settings: &ServerSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listeners = listeners.into();
    // One block, so that the store is closed however the server stops.
    let served: Result<(), ServeError> = async {
        // Served as long as the server.
        let _metrics = listeners.metrics;
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(S::NAME, ServingStatus::NotServing)
            .await;
        let watcher = tokio::spawn(follow_readiness(
            health.clone(),
            S::NAME,
            store.clone(),
            settings.health_check_interval,
        ));

        let (stop, stopped) = watch::channel(false);
        let health_only = listeners.health.map(|listener| {
            let routes = Routes::new(health_service.clone());
            tokio::spawn(
                builder(settings)
                    .layer(tower::layer::layer_fn(CountCalls::admitting))
                    // Probes are calls too: counted as on the gRPC port.
                    .layer(tower::layer::layer_fn(metrics::GrpcMetrics::new))
                    .add_routes(answering_the_rest(routes, "health alone"))
                    .serve_with_incoming_shutdown(
                        incoming(listener, None, settings.connections),
                        stopping(stopped.clone()),
                    ),
            )
        });
        let mut routes = Routes::new(health_service);
        if settings.reflection {
            routes = routes
                .add_service(reflection(S::NAME).build_v1()?)
                .add_service(reflection(S::NAME).build_v1alpha()?);
        }
        // Bounds the service's calls in number and time, so a stuck store
        // cannot hold callers forever and a flood is shed at once; health
        // sits outside, so probes still answer.
        let routes = routes.add_service(calls::Guarded::new(
            service,
            settings.concurrency_limit,
            settings.request_timeout,
        ));
        let (access, limits) = (settings.access.clone(), settings.tenant_limits.clone());
        let routes = builder(settings)
            // A connection with a call open is not idle; one with no call
            // admitted yet (by authentication, below) is closed at its
            // first-request time-out.
            .layer(tower::layer::layer_fn(CountCalls::new))
            // Every call counted, refused and shed ones included.
            .layer(tower::layer::layer_fn(metrics::GrpcMetrics::new))
            // So every call gets a span, shed, refused and timed-out ones
            // included. Failures are logged by `Guarded`, which knows their
            // reason and who is at fault.
            .layer(
                TraceLayer::new_for_grpc()
                    .make_span_with(call_span)
                    .on_failure(()),
            )
            .layer(tower::layer::layer_fn(move |inner| {
                authenticate::Authenticated::new(inner, access.clone(), limits.clone())
            }))
            .add_routes(answering_the_rest(routes, S::NAME));
        let mut server = std::pin::pin!(routes.serve_with_incoming_shutdown(
            incoming(listeners.grpc, settings.tls.clone(), settings.connections),
            stopping(stopped),
        ));
        let _health_only = health_only.map(AbortOnDrop);

        tokio::select! {
            result = &mut server => {
                watcher.abort();
                return Ok(result?);
            }
            () = shutdown => {}
        }

        // Stop the watcher first, and wait until it has stopped: one caught
        // on another thread mid-way through setting SERVING must not flip
        // readiness back after the NOT_SERVING below.
        watcher.abort();
        let _ = watcher.await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(S::NAME, ServingStatus::NotServing)
            .await;
        ready_gauge(S::NAME).set(0.0);
        tracing::info!(drain_delay = ?settings.drain_delay, "health NOT_SERVING; draining");
        tokio::select! {
            result = &mut server => return Ok(result?),
            () = tokio::time::sleep(settings.drain_delay) => {}
        }

        let _ = stop.send(true);
        tracing::info!(grace = ?settings.shutdown_grace, "stopped accepting; finishing in-flight calls");
        if let Ok(result) = tokio::time::timeout(settings.shutdown_grace, server).await {
            return Ok(result?);
        }
        // Open streams (a health Watch, say) never finish by themselves: the grace
        // period bounds them, and dropping the server closes what is left.
        tracing::warn!(grace = ?settings.shutdown_grace, "calls still open after the grace period; closing them");
        Ok(())
    }
    .await;
    store.close().await;
    served
}

/// The listeners a server serves on.
#[derive(Debug)]
pub struct Listeners {
    /// Every service, with TLS if it is configured.
    pub grpc: TcpListener,
    /// Health alone, in plaintext: for probes that cannot show a client
    /// certificate.
    pub health: Option<TcpListener>,
    /// Prometheus metrics, `GET /metrics` in plain HTTP: served from the
    /// moment it is bound, while the database is opened too.
    pub metrics: Option<MetricsEndpoint>,
}

/// The `GET /metrics` endpoint, served until it is dropped.
#[derive(Debug)]
pub struct MetricsEndpoint {
    addr: Option<std::net::SocketAddr>,
    _serving: Option<AbortOnDrop<()>>,
}

impl MetricsEndpoint {
    /// Serves `GET /metrics` on `listener` from now on, each connection
    /// closed `lifetime` after its accept.
    #[must_use]
    pub fn serve(listener: TcpListener, lifetime: Duration) -> Self {
        Self {
            addr: listener.local_addr().ok(),
            _serving: metrics::start(listener, lifetime).map(AbortOnDrop),
        }
    }

    /// The address it serves on.
    #[must_use]
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.addr
    }
}

impl Listeners {
    /// For the "listening" log line: TLS (`off`, `on` or `mutual`), and the
    /// health-only and metrics addresses, if any.
    #[must_use]
    pub fn describe(
        &self,
        settings: &ServerSettings,
    ) -> (&'static str, Option<String>, Option<String>) {
        let tls = settings
            .tls
            .as_ref()
            .map_or("off", |tls| if tls.is_mutual() { "mutual" } else { "on" });
        let health = self
            .health
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());
        let metrics = self.metrics.as_ref().and_then(MetricsEndpoint::addr);
        (
            tls,
            health.map(|addr| addr.to_string()),
            metrics.map(|addr| addr.to_string()),
        )
    }
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Self {
        Self {
            grpc,
            health: None,
            metrics: None,
        }
    }
}

/// A server builder with the connection settings: streams per connection,
/// keep-alive pings, the age at which a connection is asked to close.
fn builder(settings: &ServerSettings) -> Server {
    let builder = Server::builder()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .http2_keepalive_interval(Some(settings.keepalive_interval))
        .http2_keepalive_timeout(Some(settings.keepalive_timeout));
    // Without tonic's grace: with one, it would drop the connection at age
    // plus grace instead of sending GOAWAY at age. The connection closes
    // itself at age plus the shutdown grace instead, under any call still
    // open (see `connections`).
    match settings.max_connection_age {
        Some(age) => builder.max_connection_age(age),
        None => builder,
    }
}

/// `routes`, with any other path answered `UNIMPLEMENTED` saying what this
/// port serves (`port_serves`), health and reflection aside: a call sent to the
/// other service's port, or to the health-only one, says so, where gRPC's
/// own answer says nothing.
fn answering_the_rest(routes: Routes, port_serves: &'static str) -> Routes {
    let answering = routes
        .into_axum_router()
        .fallback(move |uri: http::Uri| async move {
            Status::unimplemented(format!(
                "{} is not served here: this port serves {port_serves}",
                uri.path()
            ))
            .into_http::<axum::body::Body>()
        });
    Routes::from(answering)
}

/// Resolves once `stop` turns true, or its sender is gone.
async fn stopping(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Ends a task when dropped.
#[derive(Debug)]
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The caller's deadline, from the `grpc-timeout` header (`<digits><unit>`,
/// unit one of H M S m u n).
#[must_use]
pub(crate) fn caller_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The span of one call: its method, and the caller once authenticated.
fn call_span<B>(request: &http::Request<B>) -> tracing::Span {
    let span = tracing::info_span!(
        "call",
        method = request.uri().path(),
        caller = tracing::field::Empty
    );
    telemetry::continue_trace(&span, request.headers());
    span
}

/// Reflection for one service, health and reflection itself, with the
/// descriptors grpcurl needs to describe calls and print error details.
fn reflection(service_name: &str) -> tonic_reflection::server::Builder<'static> {
    // Both versions' descriptors in either version's answers: a client of
    // one describes every service listed, the other's too.
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(service_name)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
}

/// The gauge that shows the service's readiness as its health does: 1 while
/// `SERVING`.
fn ready_gauge(service_name: &'static str) -> ::metrics::Gauge {
    ::metrics::gauge!("numbering_ready", "grpc_service" => service_name)
}

/// Sets the service's health from its store, on every change, logging why
/// it is not ready (again when the cause changes).
async fn follow_readiness(
    health: HealthReporter,
    service_name: &'static str,
    readiness: Arc<dyn Store>,
    interval: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // What was last said: ready, or the cause's kind.
    let mut last: Option<Option<&'static str>> = None;
    loop {
        ticks.tick().await;
        let found = readiness.readiness().await;
        let said = found.as_ref().err().map(NotReady::kind);
        if last == Some(said) {
            continue;
        }
        let was_ready = last.map(|said| said.is_none());
        last = Some(said);
        match found {
            Ok(()) => {
                tracing::info!(service = service_name, "store ready: SERVING");
                ready_gauge(service_name).set(1.0);
                health
                    .set_service_status(service_name, ServingStatus::Serving)
                    .await;
            }
            Err(cause) => {
                tracing::warn!(
                    service = service_name,
                    cause = %status::chain(&cause),
                    "store not ready: NOT_SERVING"
                );
                if was_ready != Some(false) {
                    ready_gauge(service_name).set(0.0);
                    health
                        .set_service_status(service_name, ServingStatus::NotServing)
                        .await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_timeout_reads_every_unit() {
        let timeout = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            caller_timeout(&headers)
        };
        assert_eq!(timeout("2H"), Some(Duration::from_hours(2)));
        assert_eq!(timeout("3M"), Some(Duration::from_mins(3)));
        assert_eq!(timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "5", "5x", "123456789S", "-1S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(caller_timeout(&http::HeaderMap::new()), None);
    }
}
