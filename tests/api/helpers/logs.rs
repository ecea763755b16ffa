//! Log events: captured in this process, or read from a binary's JSON lines.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::PATIENCE;

/// Log events captured as JSON lines, for tests of what is logged.
#[derive(Clone)]
pub struct CapturedLogs {
    bytes: Arc<Mutex<Vec<u8>>>,
    /// Counts the writes, to wait for an event without polling.
    written: Arc<watch::Sender<usize>>,
}

impl Default for CapturedLogs {
    fn default() -> Self {
        Self {
            bytes: Arc::default(),
            written: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.bytes.lock().unwrap().extend_from_slice(bytes);
        self.written.send_modify(|n| *n += 1);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// A subscriber writing every event here.
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
        let logs = self.clone();
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || logs.clone())
            .finish()
    }

    /// The events logged so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let bytes = self.bytes.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Waits until the events logged so far satisfy `done`, failing the test
    /// after [`PATIENCE`].
    pub async fn wait_until(&self, done: impl Fn(&[serde_json::Value]) -> bool) {
        let mut written = self.written.subscribe();
        let reached = tokio::time::timeout(PATIENCE, async {
            while !done(&self.events()) {
                written.changed().await.expect("the sender lives in self");
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "not logged within {PATIENCE:?}: {:?}",
            self.events()
        );
    }

    /// How many events about `what` (a watched file's name) have a message
    /// containing `message`.
    pub fn count(&self, what: &str, message: &str) -> usize {
        count(&self.events(), what, message)
    }
}

/// How many of `events` are about `what` with a message containing `message`.
pub fn count(events: &[serde_json::Value], what: &str, message: &str) -> usize {
    events
        .iter()
        .filter(|event| {
            event["fields"]["what"] == what
                && event["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(message))
        })
        .count()
}

/// A JSON log line as an event, its fields at the top level.
pub fn event(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|_| panic!("log line is not JSON: {line}"))
}
