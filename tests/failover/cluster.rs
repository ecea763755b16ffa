//! The high-availability stack users run, started for one test: one etcd, two
//! PostgreSQL nodes run by Patroni, and haproxy routing to the leader through
//! Patroni's REST check (`GET /primary`). A standby replicates from the leader
//! through a [`TcpProxy`], so that a test can hold replication back. Installs
//! the Debian packages it needs when they are missing; every process and file
//! is removed when the cluster is dropped or the test process ends.

use std::{
    fmt::Write as _,
    io::Write as _,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::Once,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sqlx::{Connection, PgConnection};

use crate::helpers::{Link, PATIENCE, TcpProxy, free_port, server_binaries, unprivileged_user};

/// Patroni's timings: the leader key lives 10 s, each loop waits 1 s.
const DCS: &str = "ttl: 10\n    loop_wait: 1\n    retry_timeout: 4";

/// A running cluster.
pub struct Cluster {
    /// The URL of the `postgres` database through haproxy: always the leader.
    pub url: String,
    dir: PathBuf,
    nodes: Vec<Node>,
    /// etcd, haproxy and each node's Patroni.
    processes: Vec<Child>,
    watcher: Child,
    stdin: Option<ChildStdin>,
}

/// One PostgreSQL node and its Patroni.
struct Node {
    port: u16,
    data: PathBuf,
    /// Where the other node replicates from: a proxy to `port`.
    replication: TcpProxy,
    /// Its Patroni, in [`Cluster::processes`].
    patroni: usize,
}

impl Cluster {
    /// Starts the stack and waits until the leader accepts writes and the
    /// standby streams from it (as its synchronous standby with
    /// `synchronous`).
    pub async fn start(synchronous: bool) -> Self {
        tokio::task::spawn_blocking(install).await.unwrap();
        let user = unprivileged_user().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("numbering_test_ha_")
            .tempdir()
            .unwrap()
            .keep();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let (watcher, stdin) = watcher(&dir, user);
        let mut cluster = Self {
            url: String::new(),
            dir,
            nodes: Vec::new(),
            processes: Vec::new(),
            watcher,
            stdin: Some(stdin),
        };

        let etcd = (free_port().unwrap(), free_port().unwrap());
        let etcd_client = format!("http://127.0.0.1:{}", etcd.0);
        let etcd_peer = format!("http://127.0.0.1:{}", etcd.1);
        let etcd_data = cluster.dir.join("etcd");
        cluster.spawn(
            "etcd",
            Command::new("etcd").args([
                "--name",
                "etcd",
                "--data-dir",
                path(&etcd_data),
                "--listen-client-urls",
                &etcd_client,
                "--advertise-client-urls",
                &etcd_client,
                "--listen-peer-urls",
                &etcd_peer,
                "--initial-advertise-peer-urls",
                &etcd_peer,
                "--initial-cluster",
                &format!("etcd={etcd_peer}"),
            ]),
            user,
        );

        let mut haproxy = String::from(
            "global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 2s\n  \
             timeout client 30m\n  timeout server 30m\n  timeout check 1s\n\
             listen leader\n",
        );
        let haproxy_port = free_port().unwrap();
        writeln!(
            haproxy,
            "  bind 127.0.0.1:{haproxy_port}\n  option httpchk GET /primary\n  \
             http-check expect status 200\n  \
             default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions"
        )
        .unwrap();
        for name in ["node1", "node2"] {
            let (port, rest) = (free_port().unwrap(), free_port().unwrap());
            let replication = TcpProxy::start(([127, 0, 0, 1], port).into()).await;
            let data = cluster.dir.join(name);
            let config = patroni_config(
                name,
                port,
                rest,
                replication.addr.port(),
                etcd.0,
                &data,
                &cluster.dir,
                synchronous,
            );
            let file = cluster.write(&format!("{name}.yml"), &config, user);
            cluster.spawn(name, Command::new("patroni").arg(&file), user);
            writeln!(
                haproxy,
                "  server {name} 127.0.0.1:{port} check port {rest}"
            )
            .unwrap();
            cluster.nodes.push(Node {
                port,
                data,
                replication,
                patroni: cluster.processes.len() - 1,
            });
        }
        let file = cluster.write("haproxy.cfg", &haproxy, user);
        cluster.spawn(
            "haproxy",
            Command::new("haproxy").arg("-db").arg("-f").arg(&file),
            user,
        );

        cluster.url = format!("postgres://postgres@127.0.0.1:{haproxy_port}/postgres");
        cluster.wait_until_replicating(synchronous).await;
        cluster
    }

    /// Which node leads: the one haproxy routes to.
    pub async fn leader(&self) -> usize {
        let mut connection = PgConnection::connect(&self.url).await.unwrap();
        let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        self.nodes
            .iter()
            .position(|node| i32::from(node.port) == port)
            .expect("the leader is a node of the cluster")
    }

    /// Sets what the link its standby replicates from `node` through does.
    pub fn replication_from(&self, node: usize, link: Link) {
        self.nodes[node].replication.set(link);
    }

    /// Kills `node` as a lost machine would: its Patroni and its PostgreSQL
    /// (the postmaster and every backend) at once with SIGKILL.
    pub fn kill(&mut self, node: usize) {
        let patroni = &mut self.processes[self.nodes[node].patroni];
        patroni.kill().unwrap();
        patroni.wait().unwrap();
        let pid_file = std::fs::read_to_string(self.nodes[node].data.join("postmaster.pid"))
            .expect("the node's postmaster.pid");
        let postmaster: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        let children = Command::new("pgrep")
            .args(["-P", &postmaster.to_string()])
            .output()
            .expect("pgrep");
        let children = String::from_utf8(children.stdout).unwrap();
        for pid in std::iter::once(postmaster)
            .chain(children.lines().map(|line| line.trim().parse().unwrap()))
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// Waits until the standby has replayed what the leader had written when
    /// called: the schema and the numbers committed so far are on it, so
    /// that only what follows can be lost.
    pub async fn standby_caught_up(&self) {
        let mut connection = PgConnection::connect(&self.url).await.unwrap();
        let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        let started = Instant::now();
        while started.elapsed() < PATIENCE {
            let replayed: bool = sqlx::query_scalar(
                "SELECT coalesce(bool_and(replay_lsn >= $1::pg_lsn), false) \
                 FROM pg_stat_replication",
            )
            .bind(&target)
            .fetch_one(&mut connection)
            .await
            .unwrap();
            if replayed {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the standby did not replay up to {target} in {PATIENCE:?}:\n{}",
            self.logs()
        );
    }

    /// Waits until the leader takes writes through haproxy and the other node
    /// streams from it.
    async fn wait_until_replicating(&self, synchronous: bool) {
        let wanted = if synchronous { "sync" } else { "async" };
        let started = Instant::now();
        // Bootstrapping (initdb, the standby's base backup) takes a while.
        while started.elapsed() < 2 * PATIENCE {
            if let Ok(mut connection) = PgConnection::connect(&self.url).await {
                let ready: Result<bool, _> = sqlx::query_scalar(
                    "SELECT NOT pg_is_in_recovery() AND (SELECT count(*) FROM \
                     pg_stat_replication WHERE state = 'streaming' AND sync_state = $1) = 1",
                )
                .bind(wanted)
                .fetch_one(&mut connection)
                .await;
                if ready.unwrap_or(false) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "the cluster did not come up with a {wanted} standby:\n{}",
            self.logs()
        );
    }

    /// The end of each process's log, for a failure's message.
    pub fn logs(&self) -> String {
        ["etcd", "node1", "node2", "haproxy"]
            .iter()
            .map(|name| {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<_> = log.lines().rev().take(15).collect();
                let tail: Vec<_> = tail.into_iter().rev().collect();
                format!("== {name}\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts a process of the cluster, logging to `<name>.log`.
    fn spawn(&mut self, name: &str, command: &mut Command, user: Option<(u32, u32)>) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(self.dir.join(format!("{name}.log")), Some(uid), Some(gid))
                .unwrap();
            command.uid(uid).gid(gid);
        }
        let child = command
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {name}: {error}"));
        self.processes.push(child);
    }

    /// Writes a configuration file into the cluster's directory.
    fn write(&self, name: &str, text: &str, user: Option<(u32, u32)>) -> PathBuf {
        let file = self.dir.join(name);
        std::fs::write(&file, text).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&file, Some(uid), Some(gid)).unwrap();
        }
        file
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Closing the watcher's input is its signal to stop and clean up.
        drop(self.stdin.take());
        let _ = self.watcher.wait();
        for process in &mut self.processes {
            let _ = process.wait();
        }
    }
}

/// A process that, once its input closes (the cluster dropped, or the test
/// process gone in any way), kills the cluster's processes, stops its
/// PostgreSQL servers and removes its directory. The directory is passed in
/// the environment, so that the watcher's own command line does not match it.
fn watcher(dir: &Path, user: Option<(u32, u32)>) -> (Child, ChildStdin) {
    let script = r#"cat >/dev/null
pkill -KILL -f "patroni $CLUSTER_DIR"
for data in "$CLUSTER_DIR"/node*; do
  [ -f "$data/postmaster.pid" ] && "$PG_CTL" -D "$data" -m immediate stop >/dev/null 2>&1
done
pkill -KILL -f "$CLUSTER_DIR"
rm -rf "$CLUSTER_DIR""#;
    let mut command = Command::new("sh");
    command
        .args(["-c", script])
        .env("CLUSTER_DIR", dir)
        .env("PG_CTL", server_binaries().unwrap().join("pg_ctl"))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    let mut watcher = command.spawn().expect("start the cluster's watcher");
    let stdin = watcher.stdin.take().unwrap();
    (watcher, stdin)
}

/// One node's Patroni configuration. Others reach its PostgreSQL at
/// `replication_port` (the proxy); haproxy and Patroni itself at `port`.
#[allow(clippy::too_many_arguments)]
fn patroni_config(
    name: &str,
    port: u16,
    rest: u16,
    replication_port: u16,
    etcd: u16,
    data: &Path,
    dir: &Path,
    synchronous: bool,
) -> String {
    let (data, dir) = (path(data), path(dir));
    // Without synchronous mode, Patroni promotes a standby only if it lags
    // the leader by less than this (1 MB by default; beyond it, no failover
    // at all). Raised, so that the fault ends in a failover however much
    // WAL a loaded machine wrote while replication was held.
    let max_lag = if synchronous { 1 << 20 } else { 1 << 30 };
    let bin = server_binaries().unwrap();
    let bin = path(&bin);
    format!(
        "scope: numbering
name: {name}
log: {{level: INFO}}
restapi: {{listen: '127.0.0.1:{rest}', connect_address: '127.0.0.1:{rest}'}}
etcd3: {{hosts: '127.0.0.1:{etcd}'}}
bootstrap:
  dcs:
    {DCS}
    synchronous_mode: {synchronous}
    maximum_lag_on_failover: {max_lag}
    postgresql:
      parameters: {{max_connections: 200}}
  initdb: [{{encoding: UTF8}}, {{locale: C}}, {{auth: trust}}]
postgresql:
  listen: '127.0.0.1:{port}'
  connect_address: '127.0.0.1:{replication_port}'
  data_dir: '{data}'
  bin_dir: '{bin}'
  pgpass: '{dir}/{name}.pgpass'
  authentication:
    superuser: {{username: postgres}}
    replication: {{username: postgres}}
  parameters: {{unix_socket_directories: '{dir}'}}
  pg_hba: ['local all all trust', 'host all all 127.0.0.1/32 trust',
           'host replication all 127.0.0.1/32 trust']
"
    )
}

/// Installs Patroni, etcd and haproxy from Debian's packages when one is
/// missing (as root); without them and without root, says what to install.
fn install() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let present = |binary: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {binary}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        if ["patroni", "etcd", "haproxy"].iter().all(|b| present(b)) {
            return;
        }
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the failover suite needs Patroni, etcd and haproxy: \
             apt-get install patroni etcd-server haproxy"
        );
        let _ = writeln!(
            std::io::stderr(),
            "installing patroni, etcd-server and haproxy"
        );
        for args in [
            &["update", "-qq"][..],
            &["install", "-y", "-qq", "patroni", "etcd-server", "haproxy"],
        ] {
            let status = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .expect("apt-get");
            assert!(status.success(), "apt-get {args:?} failed");
        }
    });
}

/// A path as the UTF-8 text configurations take; temporary paths always are.
fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}
