//! The shutdown signal of the binaries.

use std::{future::Future, pin::Pin};

use tokio::signal::unix::{SignalKind, signal as listen};

/// Installs SIGTERM and SIGINT handlers now, and returns a future that
/// resolves on the first of them, logging which one arrived. A second signal
/// during the drain exits at once with 128 + its number (130 for a second
/// Ctrl-C), for an operator who will not wait. Install before listening: a
/// signal that arrives earlier would otherwise kill the process without a
/// graceful stop.
///
/// # Panics
/// The handlers cannot be installed (no signal support on this platform), or
/// this is called outside a Tokio runtime.
pub fn signal() -> impl Future<Output = ()> {
    let mut terminate = listen(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut interrupt = listen(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutdown signal received; a second one exits at once"
        );
        tokio::spawn(async move {
            let (name, status) = tokio::select! {
                _ = terminate.recv() => ("SIGTERM", 128 + 15),
                _ = interrupt.recv() => ("SIGINT", 128 + 2),
            };
            tracing::warn!(signal = name, status, "second shutdown signal: exiting now");
            std::process::exit(status);
        });
    }
}

/// Runs `starting` unless `stop` resolves first: then `None`, and
/// `starting` is dropped. Opening the database may wait without end for a
/// migration another replica runs; a SIGTERM then stops the process at once
/// (nothing is served yet, so there is nothing to drain), and a migration
/// cut off is rolled back.
pub async fn unless_stopped<T>(
    starting: impl Future<Output = T>,
    stop: Pin<&mut impl Future<Output = ()>>,
) -> Option<T> {
    tokio::select! {
        done = starting => Some(done),
        () = stop => None,
    }
}
