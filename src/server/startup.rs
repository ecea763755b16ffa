//! Start-up failures of the binaries, each with its own exit status (listed
//! in the README), so an operator or a supervisor can tell them apart.

use std::{net::SocketAddr, process::ExitCode};

use tokio::net::TcpListener;

use crate::{
    db::OpenError,
    server::{Listeners, ServeError, ServerSettings, status::chain},
};

/// Exit status for bad configuration (`EX_USAGE`).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// Why a service did not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting is unusable, found after parsing (the data directory, say).
    #[error("{0}")]
    BadSetting(String),
    /// The listen address is in use or not allowed.
    #[error("cannot listen on {addr} ({setting})")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The setting that asked for it.
        setting: &'static str,
        /// The operating system's refusal.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The server failed while serving.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// Anything else.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl StartupError {
    /// The process exit status for this cause, after `sysexits.h`.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadSetting(_) => EXIT_BAD_CONFIG,
            Self::Bind { .. } => 71, // EX_OSERR
            Self::Open(error) => error.exit_code(),
            Self::Serve(_) | Self::Other(_) => 1,
        }
    }
}

/// Binds the listener: the first thing a service does after installing its
/// signal handlers, so that a busy port stops it before it creates anything.
///
/// # Errors
/// [`StartupError::Bind`] when the address is in use or not allowed.
pub async fn bind(addr: SocketAddr, setting: &'static str) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            addr,
            setting,
            source,
        })
}

/// Binds the gRPC listener and, if given, the health-only and metrics ones.
/// Warns once when the gRPC listener is reachable beyond this host with
/// neither TLS nor tokens configured.
///
/// # Errors
/// An address cannot be bound.
pub async fn listen(
    addr: SocketAddr,
    health: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    settings: &ServerSettings,
) -> Result<Listeners, StartupError> {
    let grpc = bind(addr, "--listen").await?;
    let health = match health {
        Some(addr) => Some(bind(addr, "--health-listen").await?),
        None => None,
    };
    let metrics = match metrics {
        Some(addr) => {
            let listener = bind(addr, "--metrics-listen").await?;
            // Recording and served from here on: a scrape while the
            // database is opened (or waited for) is answered.
            let endpoint =
                super::MetricsEndpoint::serve(listener, settings.connections.first_request_timeout);
            if let Some(addr) = endpoint.addr() {
                tracing::info!(metrics_addr = %addr, "serving metrics");
            }
            Some(endpoint)
        }
        None => None,
    };
    if !addr.ip().is_loopback() && settings.tls.is_none() && !settings.access.asks_for_tokens() {
        tracing::warn!(
            listen = %addr,
            "serving in plaintext, to anyone who can reach this address: set --tls-cert and --tls-key, and --tokens-file (see the README's security section)"
        );
    }
    Ok(Listeners {
        grpc,
        health,
        metrics,
    })
}

/// Logs `error` once with its cause chain and returns its exit status.
#[must_use]
pub fn report(error: &StartupError) -> ExitCode {
    let status = error.exit_code();
    tracing::error!(error = %chain(error), exit_status = status, "could not start");
    ExitCode::from(status)
}
