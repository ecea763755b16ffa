//! The shutdown signal of the binaries.

/// Resolves on the first SIGTERM or SIGINT, logging which one arrived.
///
/// # Panics
/// The signal handlers cannot be installed (no signal support on this platform).
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};

    let mut terminate = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutdown signal received");
}
