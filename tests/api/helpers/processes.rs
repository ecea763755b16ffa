//! The real binaries in child processes, their logs read as they come.

use std::sync::Arc;

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::oneshot,
    task::JoinHandle,
};

use super::{PATIENCE, event};

/// A service binary running in a child process, its JSON log read in the background.
pub struct Running {
    pub child: tokio::process::Child,
    /// The address it listens on, from its "listening" log line.
    pub addr: String,
    logs: Arc<std::sync::Mutex<Vec<String>>>,
    /// Counts the lines logged, to wait for one without polling.
    logged: tokio::sync::watch::Receiver<usize>,
    reader: JoinHandle<()>,
}

/// Starts `command` (a service binary) on 127.0.0.1, port 0, logging JSON
/// with no drain delay, and waits until it logs that it listens.
pub async fn start(command: tokio::process::Command) -> Running {
    start_draining(command, "0s").await
}

/// Starts `command` as [`start`] does, with this drain delay.
pub async fn start_draining(mut command: tokio::process::Command, drain_delay: &str) -> Running {
    let mut child = command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--drain-delay",
            drain_delay,
        ])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the binary");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (listening, addr) = oneshot::channel();
    let (count, logged) = tokio::sync::watch::channel(0);
    let reader = tokio::spawn({
        let logs = logs.clone();
        async move {
            let mut listening = Some(listening);
            while let Ok(Some(line)) = lines.next_line().await {
                // The event that names the address it listens on.
                if let Some(addr) = event(&line)["addr"].as_str()
                    && let Some(listening) = listening.take()
                {
                    let _ = listening.send(addr.to_owned());
                }
                logs.lock().unwrap().push(line);
                count.send_modify(|n| *n += 1);
            }
        }
    });
    let addr = tokio::time::timeout(PATIENCE, addr)
        .await
        .expect("the binary did not start listening")
        .unwrap_or_else(|_| panic!("the binary exited before listening: {:?}", logs.lock()));
    Running {
        child,
        addr,
        logs,
        logged,
        reader,
    }
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id().expect("running")).unwrap())
    }

    /// A channel to the process once its health for `service` (its
    /// readiness, or `""` for liveness) is SERVING.
    #[allow(dead_code)] // not used by every test target
    pub async fn ready(&self, service: &str) -> tonic::transport::Channel {
        let channel = tonic::transport::Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        crate::helpers::wait_for_health(
            channel.clone(),
            service,
            tonic_health::pb::health_check_response::ServingStatus::Serving,
        )
        .await;
        channel
    }

    /// The last `n` lines the process logged.
    #[allow(dead_code)] // used by the failover suite
    pub fn log_tail(&self, n: usize) -> Vec<String> {
        let logs = self.logs.lock().unwrap();
        logs[logs.len().saturating_sub(n)..].to_vec()
    }

    /// Waits until the process logs an event that `wanted` accepts; that event.
    pub async fn wait_for_event(
        &mut self,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let logs = self.logs.clone();
        let seen = tokio::time::timeout(PATIENCE, async {
            loop {
                let found = logs
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|line| event(line))
                    .find(|event| wanted(event));
                if let Some(found) = found {
                    return found;
                }
                let more = self.logged.changed().await;
                assert!(more.is_ok(), "the binary stopped logging: {logs:?}");
            }
        })
        .await;
        seen.unwrap_or_else(|_| panic!("not logged within {PATIENCE:?}: {logs:?}"))
    }

    /// The address of the health-only listener (`--health-listen`), once the
    /// process logs that it listens there.
    pub async fn health_addr(&mut self) -> String {
        let listening = self
            .wait_for_event(|event| event["health_addr"].is_string())
            .await;
        listening["health_addr"].as_str().unwrap().to_owned()
    }

    /// Waits for the process to exit; its exit status and every line it logged.
    pub async fn wait(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let logs = self.logs.clone();
        let exited = tokio::time::timeout(PATIENCE, async {
            let status = self.child.wait().await.expect("wait for the binary");
            self.reader.await.expect("log reader");
            status
        })
        .await
        .unwrap_or_else(|_| panic!("the binary did not exit within {PATIENCE:?}: {logs:?}"));
        let logged = self.logs.lock().unwrap().clone();
        (exited, logged)
    }
}

/// The allocator binary on `url`.
pub fn allocator_binary(url: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"));
    command.env("DATABASE_URL", url);
    command
}

/// The writer binary on `url`, numbering with the allocator at `allocator_url`.
pub fn writer_binary(url: &str, allocator_url: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_invoice-writer"));
    command
        .env("DATABASE_URL", url)
        .args(["--allocator-url", allocator_url]);
    command
}
