//! Log and trace set-up: structured `tracing` events as text or JSON,
//! filtered by `RUST_LOG`; and, when an OTLP endpoint is given, every call's
//! span exported as an OpenTelemetry trace, its W3C trace context taken from
//! the request and passed on to the calls it makes.

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tonic::{
    codegen::http,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    EnvFilter, filter::LevelFilter, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

use crate::server::{
    config::{LogFormat, ServerArgs},
    startup::EXIT_BAD_CONFIG,
};

/// Longest one export of spans may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether traces are exported, so that calls skip trace contexts otherwise.
static TRACING: AtomicBool = AtomicBool::new(false);

/// Keeps the trace exporter: dropped at exit, it sends the spans not yet sent.
#[must_use = "dropping it stops the trace export"]
pub struct Telemetry(Option<SdkTracerProvider>);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber; with `otlp` (an OTLP/gRPC endpoint such as
/// `http://collector:4317`), spans are exported there as `service`'s. Call
/// once, first thing in `main`, within the runtime.
///
/// # Errors
/// `RUST_LOG` is not a valid filter, or the OTLP endpoint not a valid URL.
pub fn init(
    format: LogFormat,
    otlp: Option<&str>,
    service: &'static str,
) -> Result<Telemetry, String> {
    let filter = log_filter()?;
    // Colour only on a terminal: escape codes in a log file or collector are noise.
    let ansi = std::io::stderr().is_terminal();
    let (text, json) = match format {
        LogFormat::Text => (
            Some(fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_ansi(false),
            ),
        ),
    };
    let provider = otlp
        .map(|endpoint| tracer_provider(endpoint, service))
        .transpose()?;
    let traces = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("numbering")));
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(traces)
        .init();
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        TRACING.store(true, Ordering::Relaxed);
    }
    Ok(Telemetry(provider))
}

/// The log filter `RUST_LOG` sets; if it is unset or names no directive
/// (blank, or commas alone, which would let no event through), "info", with
/// PostgreSQL's notices at "warn" (each start's migrations draw one that says
/// their table already exists).
///
/// # Errors
/// `RUST_LOG` is not a valid filter, or names a bare word that is not a
/// level: a service logging less than asked, or nothing (a bare word is
/// read as a target, and a misspelt level such as "warning" would let no
/// event through, a failed start's report included), would be no help to
/// whoever set it.
fn log_filter() -> Result<EnvFilter, String> {
    let invalid = |directives: &str, why: &dyn std::fmt::Display| {
        format!("{}={directives:?}: {why}", EnvFilter::DEFAULT_ENV)
    };
    match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(directives)
            if directives
                .split(',')
                .any(|directive| !directive.trim().is_empty()) =>
        {
            if let Some(word) = directives.split(',').map(str::trim).find(|directive| {
                !directive.is_empty()
                    && !directive.contains(['=', '['])
                    && directive.parse::<LevelFilter>().is_err()
            }) {
                return Err(invalid(
                    &directives,
                    &format_args!(
                        "{word:?} is not a level (off, error, warn, info, debug, trace); \
                         a target takes one as target=level"
                    ),
                ));
            }
            EnvFilter::try_new(&directives).map_err(|error| invalid(&directives, &error))
        }
        Err(std::env::VarError::NotUnicode(directives)) => {
            Err(invalid(&directives.to_string_lossy(), &"not UTF-8"))
        }
        _ => Ok(EnvFilter::new("info,sqlx::postgres::notice=warn")),
    }
}

/// [`init`] with a service's settings; on a bad setting, prints it and
/// exits with the status of bad settings (64).
#[must_use = "dropping it stops the trace export"]
pub fn init_or_exit(settings: &ServerArgs, service: &'static str) -> Telemetry {
    init(
        settings.log_format,
        settings.otlp_endpoint.as_deref(),
        service,
    )
    .unwrap_or_else(|error| {
        eprintln!("error: {error}");
        std::process::exit(i32::from(EXIT_BAD_CONFIG));
    })
}

/// Checks an OTLP/gRPC endpoint: `http://host:port`. The exporter speaks
/// no TLS, and takes text with no scheme (`collector:4317`) for an `https`
/// endpoint.
///
/// # Errors
/// Anything else, saying how to write it.
pub fn otlp_endpoint(raw: &str) -> Result<String, String> {
    const FORM: &str = "must be http://host:port, such as http://otel-collector:4317";
    let url = url::Url::parse(raw).map_err(|error| format!("{raw:?}: {error}; {FORM}"))?;
    if url.scheme() != "http" || url.host().is_none() {
        return Err(format!("{raw:?} {FORM}"));
    }
    Ok(raw.to_owned())
}

/// A provider exporting spans in batches to the OTLP/gRPC `endpoint`.
fn tracer_provider(endpoint: &str, service: &'static str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        // Bounds the last export at exit, should the collector be away.
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|error| format!("--otlp-endpoint {endpoint:?}: {error}"))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// Makes the trace context in `headers` (W3C `traceparent`), if any, the
/// parent of `span`. Does nothing unless traces are exported.
pub(crate) fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !TRACING.load(Ordering::Relaxed) {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Headers(headers))
    });
    let _ = span.set_parent(parent);
}

/// Adds the current span's trace context to an outgoing call's `metadata`.
/// Does nothing unless traces are exported.
pub(crate) fn pass_on_trace(metadata: &mut MetadataMap) {
    if !TRACING.load(Ordering::Relaxed) {
        return;
    }
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Metadata(metadata));
    });
}

/// Request headers, read as a propagator reads them.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Outgoing metadata, written as a propagator writes it.
struct Metadata<'a>(&'a mut MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}
