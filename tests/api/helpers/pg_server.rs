//! The PostgreSQL server the tests create their databases on:
//! `NUMBERING_TEST_DATABASE_URL` if set; else the default address, if something
//! answers there; else a throwaway server started from the installed binaries
//! in a temporary directory on a free port, removed when the tests end.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

/// Where the tests look for a server when no URL is set.
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The administrator URL of the tests' server, found or started on first use.
/// Where no server answers and none can be started, prints what to install or
/// set and ends the run at once: one message, not a panic per test.
pub fn admin_url() -> &'static str {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("NUMBERING_TEST_DATABASE_URL") {
                return PgServer::Given(url);
            }
            PgServer::at(DEFAULT_URL).unwrap_or_else(|error| {
                // Straight to stderr: the test harness captures eprintln!, and
                // would lose the message with the process.
                let _ = writeln!(
                    std::io::stderr(),
                    "\nThe tests need PostgreSQL 13 or newer. Nothing answers at {DEFAULT_URL}, \
                     and no throwaway server could be started: {error}.\nInstall PostgreSQL's \
                     server binaries (Debian: apt-get install postgresql), or set \
                     NUMBERING_TEST_DATABASE_URL to a server whose role is a superuser.\n"
                );
                std::process::exit(2);
            })
        })
        .url()
}

/// A server for tests: one that was given or found, or one this process started.
pub enum PgServer {
    /// Already running.
    Given(String),
    /// Started here; stopped and removed when dropped or when the process ends.
    Throwaway(Throwaway),
}

impl PgServer {
    /// The server at `url` if something answers at its address, else a new
    /// throwaway server.
    ///
    /// # Errors
    /// Nothing answers and no server could be started, with the reason.
    pub fn at(url: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|error| format!("{url}: {error}"))?;
        let host = parsed.host_str().unwrap_or("127.0.0.1");
        let port = parsed.port().unwrap_or(5432);
        let answers = (host, port)
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.any(answers));
        if answers {
            Ok(Self::Given(url.to_owned()))
        } else {
            Throwaway::start().map(Self::Throwaway)
        }
    }

    /// Its administrator URL.
    pub fn url(&self) -> &str {
        match self {
            Self::Given(url) => url,
            Self::Throwaway(server) => &server.url,
        }
    }
}

/// Whether something accepts connections at `addr`.
pub fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// A PostgreSQL server in a temporary directory. A watcher process stops it
/// and removes the directory once its standard input closes: when this is
/// dropped, or when the test process ends in any way (statics are never
/// dropped).
pub struct Throwaway {
    pub url: String,
    pub dir: PathBuf,
    /// `pg_ctl`'s options, to start it again.
    #[allow(dead_code)] // used by the fault suite
    options: String,
    watcher: Child,
    stdin: Option<ChildStdin>,
}

impl Throwaway {
    /// Creates a cluster with `initdb` and starts it on a free port of
    /// 127.0.0.1, trusting local connections, as the `postgres` user when
    /// running as root (PostgreSQL refuses to run as root).
    ///
    /// # Errors
    /// No PostgreSQL binaries are installed, or `initdb` or `pg_ctl` failed.
    pub fn start() -> Result<Self, String> {
        let bin = server_binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("numbering_test_pg_")
            .tempdir()
            .map_err(|error| format!("temporary directory: {error}"))?
            .keep();
        let user = unprivileged_user()?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|error| format!("chown {}: {error}", dir.display()))?;
        }
        let data = dir.join("data");
        let port = free_port()?;
        run(
            Command::new(bin.join("initdb"))
                .args([
                    "-D",
                    path(&data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "--no-sync",
                ])
                .env("LC_ALL", "C"),
            user,
        )?;
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=200",
            path(&dir)
        );
        // -w: returns once the server accepts connections.
        run(
            Command::new(bin.join("pg_ctl"))
                .args(["-D", path(&data), "-l", path(&dir.join("log")), "-w"])
                .args(["-o", &options, "start"]),
            user,
        )?;
        let script = format!(
            "cat >/dev/null; '{}' -D '{}' -m immediate stop; rm -rf '{}'",
            path(&bin.join("pg_ctl")),
            path(&data),
            path(&dir)
        );
        let mut watcher = Command::new("sh");
        watcher
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = user {
            watcher.uid(uid).gid(gid);
        }
        let mut watcher = watcher
            .spawn()
            .map_err(|error| format!("starting the watcher: {error}"))?;
        let stdin = watcher.stdin.take();
        Ok(Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            options,
            watcher,
            stdin,
        })
    }

    /// Stops the server as a crash would (`-m immediate`: no checkpoint,
    /// clients cut off); it recovers from its WAL when started again.
    ///
    /// # Errors
    /// `pg_ctl` failed.
    #[allow(dead_code)] // used by the fault suite
    pub fn crash(&self) -> Result<(), String> {
        let data = self.dir.join("data");
        run(
            Command::new(server_binaries()?.join("pg_ctl")).args([
                "-D",
                path(&data),
                "-m",
                "immediate",
                "stop",
            ]),
            unprivileged_user()?,
        )
    }

    /// Starts the server again on the same port and data; returns once it
    /// accepts connections.
    ///
    /// # Errors
    /// `pg_ctl` failed.
    #[allow(dead_code)] // used by the fault suite
    pub fn start_again(&self) -> Result<(), String> {
        let data = self.dir.join("data");
        run(
            Command::new(server_binaries()?.join("pg_ctl"))
                .args(["-D", path(&data), "-l", path(&self.dir.join("log")), "-w"])
                .args(["-o", &self.options, "start"]),
            unprivileged_user()?,
        )
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        // Closing the watcher's input is its signal to stop and clean up.
        drop(self.stdin.take());
        let _ = self.watcher.wait();
    }
}

/// The directory of `initdb` and `pg_ctl`: `pg_config --bindir`, else the
/// newest `/usr/lib/postgresql/*/bin`, else wherever `initdb` is on the PATH.
pub fn server_binaries() -> Result<PathBuf, String> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_initdb(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .find(|dir| has_initdb(dir))
        .ok_or_else(|| "no initdb and pg_ctl found (pg_config, /usr/lib/postgresql, PATH)".into())
}

/// As root, the `postgres` user's ids: PostgreSQL will not run as root.
pub fn unprivileged_user() -> Result<Option<(u32, u32)>, String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .map_err(|error| format!("looking up the postgres user: {error}"))?
        .ok_or("running as root, and there is no postgres user to run the server as")?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

/// A port of 127.0.0.1 that nothing listens on, for a process a test starts.
///
/// A port the kernel hands out for port 0 can be handed out again, to an
/// outgoing connection or another listener, before that process binds it.
/// These ports come from below the kernel's ephemeral range, which it never
/// hands out on its own, and each only once in this test process.
pub fn free_port() -> Result<u16, String> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .map_err(|error| format!("reading the ephemeral port range: {error}"))?;
    let ephemeral: u32 = range
        .split_whitespace()
        .next()
        .and_then(|low| low.parse().ok())
        .ok_or_else(|| format!("an unreadable ephemeral port range: {range:?}"))?;
    // The upper half below the ephemeral range, started at a place of this
    // process's own so that two test processes rarely meet.
    let (first, count) = (ephemeral / 2, ephemeral / 2);
    if first < 1024 {
        return Err(format!("no ports below the ephemeral range {range:?}"));
    }
    let start = std::process::id() * 101 % count;
    for _ in 0..count {
        let taken = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = u16::try_from(first + (start + taken) % count)
            .map_err(|_| format!("an ephemeral port range above 65535: {range:?}"))?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(format!(
        "every port from {first} below the ephemeral range is taken"
    ))
}

/// Runs `command` to completion, as `user` if given.
fn run(command: &mut Command, user: Option<(u32, u32)>) -> Result<(), String> {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    let output = command
        .current_dir("/")
        .output()
        .map_err(|error| format!("{command:?}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A path as the UTF-8 text the commands take; temporary paths always are.
fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}
