//! A value read from files and read again when they change: whether a file is
//! written in place or replaced by a rename (as Kubernetes updates a mounted
//! secret), its new bytes are seen on the next poll.

use std::{
    path::PathBuf,
    sync::{Arc, Weak},
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::time::MissedTickBehavior;

/// Parses the files' bytes, in the order given, into the value; `Err` says
/// why not, in words safe to log (never the files' contents).
pub type Parse<T> = dyn Fn(&[Vec<u8>]) -> Result<T, String> + Send + Sync;

/// The value the files held when last read whole and well-formed.
#[derive(Debug)]
pub struct Reloading<T> {
    current: Arc<ArcSwap<T>>,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// A value that never changes.
    #[must_use]
    pub fn fixed(value: T) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(value)),
        }
    }

    /// Reads `paths` and parses them now, then polls them every `interval`
    /// for as long as this value (or a clone) lives. Changed bytes that parse
    /// replace the value; bytes that do not are logged with the reason, once,
    /// and the last good value stays.
    ///
    /// # Errors
    /// A file cannot be read or does not parse now, naming `what` and why.
    pub fn watch(
        what: &'static str,
        paths: Vec<PathBuf>,
        interval: Duration,
        parse: Box<Parse<T>>,
    ) -> Result<Self, String> {
        let bytes = read_all(&paths).map_err(|error| format!("{what}: {error}"))?;
        let value = parse(&bytes).map_err(|error| format!("{what}: {error}"))?;
        let current = Arc::new(ArcSwap::from_pointee(value));
        tokio::spawn(poll(
            what,
            paths,
            interval,
            parse,
            bytes,
            Arc::downgrade(&current),
        ));
        Ok(Self { current })
    }

    /// The value now.
    #[must_use]
    pub fn get(&self) -> Arc<T> {
        self.current.load_full()
    }
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, String> {
    paths
        .iter()
        .map(|path| std::fs::read(path).map_err(|error| format!("{}: {error}", path.display())))
        .collect()
}

/// Re-reads the files every `interval` until the value is dropped.
async fn poll<T: Send + Sync + 'static>(
    what: &'static str,
    paths: Vec<PathBuf>,
    interval: Duration,
    parse: Box<Parse<T>>,
    seen: Vec<Vec<u8>>,
    current: Weak<ArcSwap<T>>,
) {
    let mut seen = Ok(seen);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(current) = current.upgrade() else {
            return;
        };
        // A failure to read counts as a change too, logged once: a file
        // removed, or renamed over at this very moment.
        let read = read_all(&paths);
        if read == seen {
            continue;
        }
        match &read {
            Err(error) => {
                tracing::warn!(what, %error, "cannot read; keeping the last good value");
            }
            Ok(bytes) => match parse(bytes) {
                Ok(value) => {
                    current.store(Arc::new(value));
                    tracing::info!(what, "reloaded");
                }
                Err(error) => {
                    tracing::warn!(what, %error, "changed but not valid; keeping the last good value");
                }
            },
        }
        seen = read;
    }
}
