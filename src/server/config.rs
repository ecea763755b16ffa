//! Settings both binaries share, read from flags or environment variables.

use std::{ffi::OsStr, net::SocketAddr, num::NonZeroU32, path::PathBuf, sync::Arc, time::Duration};

use clap::{
    Arg, Args, Command, CommandFactory, Parser, ValueEnum,
    builder::TypedValueParser,
    error::{ContextKind, ContextValue, ErrorKind},
};

use crate::{
    access::{Access, RELOAD_INTERVAL},
    db::{DatabaseUrl, PoolSettings},
    server::{
        ServerSettings,
        connections::{ConnectionLimits, MaxAge},
        fairness::TenantLimits,
        startup::{EXIT_BAD_CONFIG, StartupError},
        telemetry::otlp_endpoint,
    },
    tls::{ServerTls, ServerTlsFiles},
};

/// Parses a binary's settings; prints the error and exits 64 when they are bad.
#[must_use]
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(config) => config,
        Err(error) if error.use_stderr() => {
            let _ = error.print();
            if let Some(variable) = given_by_environment::<T>(&error) {
                eprintln!("The value came from the environment variable {variable}.");
            }
            std::process::exit(i32::from(EXIT_BAD_CONFIG));
        }
        // --help and --version.
        Err(error) => error.exit(),
    }
}

/// The environment variable that gave the bad value `error` names a flag
/// for, if it came from one: the message names the flag alone, which a
/// setting made in a Kubernetes manifest never shows.
fn given_by_environment<T: CommandFactory>(error: &clap::Error) -> Option<String> {
    let ContextValue::String(invalid) = error.get(ContextKind::InvalidArg)? else {
        return None;
    };
    // "--request-timeout <REQUEST_TIMEOUT>"
    let long = invalid.split_whitespace().next()?.strip_prefix("--")?;
    let command = T::command();
    let argument = command
        .get_arguments()
        .find(|argument| argument.get_long() == Some(long))?;
    let variable = argument.get_env()?.to_str()?;
    let from_environment = std::env::var(variable).ok()?;
    let args: Vec<String> = std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let flag = format!("--{long}");
    let given = |value: &str| {
        args.iter().any(|arg| *arg == format!("{flag}={value}"))
            || args
                .windows(2)
                .any(|pair| pair[0] == flag && pair[1] == value)
    };
    let refused = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => Some(value.as_str()),
        _ => None,
    };
    let from_it = match refused {
        // The variable's value, not also given as the flag's. A setting of
        // the writer's command too is read from its variable for the
        // command even where its flag was given before the command.
        Some(refused) => refused == from_environment && !given(refused),
        // Given on the command line too, the flag's value is the one refused.
        None => !args
            .iter()
            .any(|arg| *arg == flag || arg.starts_with(&format!("{flag}="))),
    };
    from_it.then(|| variable.to_owned())
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// gRPC server settings. Field docs are `--help` text, hence plain words.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Log format; the level is set with RUST_LOG (default "info").
    #[arg(
        global = true,
        long,
        env = "NUMBERING_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Longest a call may run before answering DEADLINE_EXCEEDED; the caller's shorter deadline wins.
    #[arg(global = true, long, env = "NUMBERING_REQUEST_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub request_timeout: Duration,

    /// Calls in flight at once, over all connections; more answer RESOURCE_EXHAUSTED. Health checks are not counted.
    #[arg(global = true, long, env = "NUMBERING_CONCURRENCY_LIMIT", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000).map(|limit| usize::try_from(limit).unwrap_or(usize::MAX)))]
    pub concurrency_limit: usize,

    /// How often readiness re-checks the database.
    #[arg(global = true, long, env = "NUMBERING_HEALTH_CHECK_INTERVAL", default_value = "1s", value_parser = positive_duration)]
    pub health_check_interval: Duration,

    /// After SIGTERM, how long to keep serving while load balancers notice NOT_SERVING.
    #[arg(global = true, long, env = "NUMBERING_DRAIN_DELAY", default_value = "5s", value_parser = duration)]
    pub drain_delay: Duration,

    /// After the drain delay, how long in-flight calls get to finish; also, with --max-connection-age, how long a connection's calls get after its GOAWAY (at least 1s there).
    #[arg(global = true, long, env = "NUMBERING_SHUTDOWN_GRACE", default_value = "20s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// TOML file of bearer tokens, each with the tenants it may act for and whether it may call administrative methods; re-read when it changes. Without it no token is asked for.
    #[arg(global = true, long, env = "NUMBERING_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Certificate chain (PEM) of the gRPC listener; with --tls-key, turns TLS on. Re-read when it changes.
    #[arg(global = true, long, env = "NUMBERING_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert. Re-read when it changes.
    #[arg(global = true, long, env = "NUMBERING_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// CA (PEM) that must have signed every client's certificate: mutual TLS. Re-read when it changes.
    #[arg(global = true, long, env = "NUMBERING_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Also serve health alone, in plaintext, on this address: for Kubernetes probes under TLS, which they cannot speak.
    #[arg(global = true, long, env = "NUMBERING_HEALTH_LISTEN", value_parser = listen_address)]
    pub health_listen: Option<SocketAddr>,

    /// Export every call's span as an OpenTelemetry trace to this OTLP/gRPC endpoint (e.g. http://otel-collector:4317), continuing the caller's W3C trace context. Off when unset.
    #[arg(global = true, long, env = "NUMBERING_OTLP_ENDPOINT", value_parser = Checked(otlp_endpoint))]
    pub otlp_endpoint: Option<String>,

    /// Serve Prometheus metrics at GET /metrics on this address (plain HTTP). Off when unset.
    #[arg(global = true, long, env = "NUMBERING_METRICS_LISTEN", value_parser = listen_address)]
    pub metrics_listen: Option<SocketAddr>,

    /// Calls each tenant may start per second (and in a burst), at most 1000000; more wait for a turn up to --tenant-rate-wait, then answer RESOURCE_EXHAUSTED with a RetryInfo. 0: no limit.
    #[arg(global = true, long, env = "NUMBERING_TENANT_RATE_LIMIT", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=MOST_TENANT_RATE))]
    pub tenant_rate_limit: u32,

    /// How long a call past its tenant's rate waits for a turn before it is refused ("0s": refused at once).
    #[arg(global = true, long, env = "NUMBERING_TENANT_RATE_WAIT", default_value = "1s", value_parser = duration)]
    pub tenant_rate_wait: Duration,

    /// Connections held open at once; more wait in the listen backlog until one closes. Keep it below the process' file limit, less the database connections.
    #[arg(global = true, long, env = "NUMBERING_MAX_CONNECTIONS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000).map(|limit| usize::try_from(limit).unwrap_or(usize::MAX)))]
    pub max_connections: usize,

    /// A connection with no call admitted this long after it was accepted (TLS and HTTP/2 handshakes included) is closed: silent, or, with tokens, whose every call was refused or was a health Check without a token (one in flight gets --request-timeout to finish).
    #[arg(global = true, long, env = "NUMBERING_FIRST_REQUEST_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub first_request_timeout: Duration,

    /// A connection that has had no call open this long (since its last call ended) is closed; its client reconnects for its next call (a tonic client fails that one call with CANCELLED: retry it). One whose calls that answer once have stalled (none started or ended for this and --request-timeout) is closed too; streams (health Watch, reflection) keep theirs.
    #[arg(global = true, long, env = "NUMBERING_IDLE_TIMEOUT", default_value = "1h", value_parser = positive_duration)]
    pub idle_timeout: Duration,

    /// Calls in flight at once on one connection (HTTP/2 concurrent streams); a client past it waits for one to end.
    #[arg(global = true, long, env = "NUMBERING_MAX_CONCURRENT_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// How often an HTTP/2 ping checks that each connection's peer is alive.
    #[arg(global = true, long, env = "NUMBERING_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = positive_duration)]
    pub keepalive_interval: Duration,

    /// How long a keep-alive ping may go unanswered before the connection is closed.
    #[arg(global = true, long, env = "NUMBERING_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = positive_duration)]
    pub keepalive_timeout: Duration,

    /// Once a connection is this old, the server asks its client to reconnect (an HTTP/2 GOAWAY): calls in flight get --shutdown-grace (at least 1s) to finish and are then closed with the connection, new ones go on a new connection, so that clients spread over replicas added since. Off when unset.
    #[arg(global = true, long, env = "NUMBERING_MAX_CONNECTION_AGE", value_parser = positive_duration)]
    pub max_connection_age: Option<Duration>,

    /// Whether to serve gRPC server reflection (v1 and v1alpha), which grpcurl uses. With a tokens file it needs a token like any other call.
    #[arg(global = true, long, env = "NUMBERING_REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub reflection: bool,
}

impl ServerArgs {
    /// The settings [`crate::server::serve`] takes. Reads the tokens file,
    /// and watches it from then on: call within the runtime.
    ///
    /// # Errors
    /// The tokens file cannot be read or is not valid; a call could wait for
    /// its tenant's turn past the request time-out.
    pub fn settings(&self) -> Result<ServerSettings, StartupError> {
        self.check_tls_files()?;
        if self.tenant_rate_limit > 0 && self.tenant_rate_wait >= self.request_timeout {
            let command = Self::augment_args(Command::new("server"));
            return Err(StartupError::BadSetting(format!(
                "{} is {}: it must be shorter than {}, {}",
                named(&command, "tenant_rate_wait"),
                humantime::format_duration(self.tenant_rate_wait),
                named(&command, "request_timeout"),
                humantime::format_duration(self.request_timeout)
            )));
        }
        // Each call waiting for its tenant's turn holds its place under the
        // concurrency limit: a tenant's waiting calls that could fill it
        // would have every other tenant's refused as overloaded.
        let waiting_millis = u128::from(self.tenant_rate_limit) * self.tenant_rate_wait.as_millis();
        let limit = u128::try_from(self.concurrency_limit).unwrap_or(u128::MAX);
        if waiting_millis >= limit.saturating_mul(1000) {
            tracing::warn!(
                tenant_rate_limit = self.tenant_rate_limit,
                tenant_rate_wait = %humantime::format_duration(self.tenant_rate_wait),
                concurrency_limit = self.concurrency_limit,
                "--tenant-rate-limit times --tenant-rate-wait is not below --concurrency-limit: \
                 one tenant's calls waiting for their turns can take every place, and other \
                 tenants' calls are refused OVERLOADED; shorten the wait or raise the limit",
            );
        }
        let mutual_tls = self.tls_cert.is_some() && self.tls_client_ca.is_some();
        let access = Access::from_file(self.tokens_file.clone(), RELOAD_INTERVAL, mutual_tls)
            .map_err(StartupError::BadSetting)?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(
                ServerTls::watch(
                    &ServerTlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                        client_ca: self.tls_client_ca.clone(),
                    },
                    RELOAD_INTERVAL,
                )
                .map_err(StartupError::BadSetting)?,
            ),
            _ => None,
        };
        Ok(ServerSettings {
            request_timeout: self.request_timeout,
            concurrency_limit: self.concurrency_limit,
            health_check_interval: self.health_check_interval,
            drain_delay: self.drain_delay,
            shutdown_grace: self.shutdown_grace,
            access,
            reflection: self.reflection,
            tls,
            tenant_limits: NonZeroU32::new(self.tenant_rate_limit)
                .map(|rate| Arc::new(TenantLimits::new(rate, self.tenant_rate_wait))),
            connections: ConnectionLimits {
                max_connections: self.max_connections,
                first_request_timeout: self.first_request_timeout,
                idle_timeout: self.idle_timeout,
                longest_call: self.request_timeout,
                max_age: self.max_connection_age.map(|age| MaxAge {
                    age,
                    // Closed with no grace, a connection could be gone
                    // before its GOAWAY has left.
                    grace: self.shutdown_grace.max(Duration::from_secs(1)),
                }),
            },
            max_concurrent_streams: self.max_concurrent_streams,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            max_connection_age: self.max_connection_age,
        })
    }

    /// Refuses a TLS file given without the others it needs: a key without
    /// its certificate, a client CA without a certificate to serve TLS with.
    ///
    /// # Errors
    /// One is missing.
    pub fn check_tls_files(&self) -> Result<(), StartupError> {
        let command = Self::augment_args(Command::new("server"));
        let (cert, key) = (self.tls_cert.is_some(), self.tls_key.is_some());
        needs(&command, ("tls_cert", cert), ("tls_key", key))?;
        needs(&command, ("tls_key", key), ("tls_cert", cert))?;
        needs(
            &command,
            ("tls_client_ca", self.tls_client_ca.is_some()),
            ("tls_cert", cert),
        )
    }
}

/// A setting as an error names it: its flag and the environment variable
/// that sets it too, since a setting made in a Kubernetes manifest never
/// shows the flag. `id` is the setting's field in `command`.
#[must_use]
pub fn named(command: &Command, id: &str) -> String {
    let Some(argument) = command
        .get_arguments()
        .find(|argument| argument.get_id() == id)
    else {
        return id.to_owned();
    };
    let flag = argument
        .get_long()
        .map_or_else(|| id.to_owned(), |long| format!("--{long}"));
    match argument.get_env().and_then(OsStr::to_str) {
        Some(variable) => format!("{flag} ({variable})"),
        None => flag,
    }
}

/// Refuses `setting`, if it was given, without `needed`: each a field of
/// `command` and whether it was given. Checked once parsing is done: clap
/// checks what a setting requires on each side of a subcommand apart, and
/// would refuse a certificate given before `seed-counters` and its key
/// after it.
///
/// # Errors
/// `setting` was given without `needed`.
pub fn needs(
    command: &Command,
    (setting, given): (&str, bool),
    (needed, present): (&str, bool),
) -> Result<(), StartupError> {
    if given && !present {
        return Err(StartupError::BadSetting(format!(
            "{} needs {}",
            named(command, setting),
            named(command, needed)
        )));
    }
    Ok(())
}

/// Database settings.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database URL: postgres://user:password@host:5432/db or sqlite:///absolute/path/to/file. Default: a SQLite file in --data-dir. The password is never logged.
    #[arg(global = true, long, env = "DATABASE_URL", value_parser = DATABASE_URL, hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,

    /// Directory of the SQLite file used when no --database-url is given; created if missing. Default: "numbering" in the user's data directory ($XDG_DATA_HOME, else ~/.local/share), wherever the service starts.
    #[arg(global = true, long, env = "NUMBERING_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Most database connections.
    #[arg(global = true, long, env = "NUMBERING_DB_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub db_max_connections: u32,

    /// How long a call waits for a database connection (on SQLite, also for the write lock) before answering UNAVAILABLE; also bounds the first connection at start-up (not the wait for another process migrating the same database).
    #[arg(global = true, long, env = "NUMBERING_DB_ACQUIRE_TIMEOUT", default_value = "2s", value_parser = database_wait)]
    pub db_acquire_timeout: Duration,

    /// Longest one database operation (a transaction, a read) may take before the call answers UNAVAILABLE; bounds calls when the database stops answering without closing its connections (frozen, or a network that drops everything), or a lock is held elsewhere. A call may wait for the operation ahead of it and then its own: keep twice this under --request-timeout. PostgreSQL applies it too (statement_timeout, lock_timeout; twice it as idle_in_transaction_session_timeout); migrations are not bound.
    #[arg(global = true, long, env = "NUMBERING_DB_TIMEOUT", default_value = "4s", value_parser = database_wait)]
    pub db_timeout: Duration,

    /// Whether a missing database (PostgreSQL) or SQLite file is created at start-up. Set it to false once the database exists: a mistyped URL or data directory then stops start-up (status 66) instead of starting an empty counter that hands out numbers again.
    #[arg(global = true, long, env = "NUMBERING_CREATE_DATABASE", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_database: bool,
}

/// The longest any duration setting may be: longer is a slip of the
/// keyboard, and a deadline that far ahead may not fit the clock.
pub const LONGEST_DURATION: Duration = Duration::from_hours(24 * 366);

/// A duration of at most [`LONGEST_DURATION`].
///
/// # Errors
/// Not a duration, or a longer one.
pub fn duration(raw: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(raw).map_err(|error| error.to_string())?;
    if duration > LONGEST_DURATION {
        return Err("must be at most 366 days".into());
    }
    Ok(duration)
}

/// A duration of at least a second, at most [`LONGEST_DURATION`]: a lease
/// or a retention shorter would end before a call could use it.
///
/// # Errors
/// Not a duration, under a second, or longer.
pub fn at_least_a_second(raw: &str) -> Result<Duration, String> {
    match duration(raw)? {
        duration if duration < Duration::from_secs(1) => Err("must be at least 1s".into()),
        duration => Ok(duration),
    }
}

/// A duration of more than zero, at most [`LONGEST_DURATION`].
///
/// # Errors
/// Not a duration, zero, or longer.
pub fn positive_duration(raw: &str) -> Result<Duration, String> {
    match duration(raw)? {
        duration if duration.is_zero() => Err("must be more than 0s".into()),
        duration => Ok(duration),
    }
}

/// Parses an address to listen on: an IP address and a port.
///
/// # Errors
/// Anything else, a host name among them, saying how to write it.
pub fn listen_address(raw: &str) -> Result<SocketAddr, String> {
    raw.parse().map_err(|_| {
        "must be an IP address and a port, such as 0.0.0.0:50051 (every IPv4 address), \
         [::]:50051 (every address) or 127.0.0.1:50051 (this machine alone), not a host name"
            .to_owned()
    })
}

/// The highest rate a tenant may be held to, in calls a second: turns a
/// microsecond apart. Past a billion, turns a nanosecond apart would round
/// to none, and the limit would silently be none.
const MOST_TENANT_RATE: i64 = 1_000_000;

/// The longest wait for a database connection, and the longest database
/// operation: SQLite's busy time-out, and PostgreSQL's statement time-out
/// (twice it, for a transaction left idle), are counted in milliseconds in
/// 31 bits, and a wait past the request time-out serves nobody.
const LONGEST_DATABASE_WAIT: Duration = Duration::from_hours(1);

/// A wait on the database: more than zero (at zero, every call behind
/// another's write would fail at once), at most [`LONGEST_DATABASE_WAIT`].
fn database_wait(raw: &str) -> Result<Duration, String> {
    let duration = positive_duration(raw)?;
    if duration > LONGEST_DATABASE_WAIT {
        return Err(format!(
            "must be at most {}",
            humantime::format_duration(LONGEST_DATABASE_WAIT)
        ));
    }
    Ok(duration)
}

/// Parses a value with its check, whose message names the value only as it
/// may be shown: clap's own message for a bad value quotes it, password and
/// all.
#[derive(Debug, Clone, Copy)]
pub struct Checked<T>(pub fn(&str) -> Result<T, String>);

/// A database URL, named redacted in its error.
pub const DATABASE_URL: Checked<DatabaseUrl> = Checked(str::parse);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Checked<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let name = arg
            .and_then(Arg::get_long)
            .map_or_else(|| "value".to_owned(), |long| format!("--{long}"));
        let error = |message: String| {
            let mut error = clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid {name}: {message}\n"),
            )
            .with_cmd(cmd);
            // The flag it is for, as clap's own errors name it: read to say
            // which environment variable gave the value, if one did.
            error.insert(ContextKind::InvalidArg, ContextValue::String(name.clone()));
            error
        };
        let value = value.to_str().ok_or_else(|| error("not UTF-8".into()))?;
        (self.0)(value).map_err(|message| {
            let mut error = error(message);
            error.insert(
                ContextKind::InvalidValue,
                ContextValue::String(value.to_owned()),
            );
            error
        })
    }
}

impl DatabaseArgs {
    /// The database to open: `--database-url`, else the SQLite file
    /// `file_name` in the data directory ([`DatabaseArgs::data_dir`]).
    ///
    /// # Errors
    /// There is no data directory, or its path is not UTF-8.
    pub fn url(&self, file_name: &str) -> Result<DatabaseUrl, StartupError> {
        match &self.database_url {
            Some(url) => Ok(url.clone()),
            None => DatabaseUrl::sqlite_file(&self.data_dir()?.join(file_name))
                .map_err(StartupError::BadSetting),
        }
    }

    /// The data directory as an absolute path: `--data-dir`, else
    /// `numbering` in the platform's data directory for this user. Never the
    /// working directory: a service started from elsewhere would open a new,
    /// empty counter file and hand out numbers again.
    ///
    /// # Errors
    /// No `--data-dir`, and the user has no data directory (no `HOME`).
    pub fn data_dir(&self) -> Result<PathBuf, StartupError> {
        let dir = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => dirs::data_dir()
                .ok_or_else(|| {
                    StartupError::BadSetting(
                        "this user has no data directory (is HOME set?): set --data-dir or NUMBERING_DATA_DIR"
                            .into(),
                    )
                })?
                .join("numbering"),
        };
        std::path::absolute(&dir).map_err(|error| {
            StartupError::BadSetting(format!("data directory {}: {error}", dir.display()))
        })
    }

    /// Warns when a call that waits for the database operation ahead of it,
    /// then makes its own, can run out of `request_timeout` before either
    /// times out: it would answer `DEADLINE_EXCEEDED` where a shorter
    /// `--db-timeout` answers `UNAVAILABLE`, which says to retry.
    pub fn warn_of_timeouts(&self, request_timeout: Duration) {
        if self.db_timeout.saturating_mul(2) >= request_timeout {
            tracing::warn!(
                db_timeout = %humantime::format_duration(self.db_timeout),
                request_timeout = %humantime::format_duration(request_timeout),
                "twice --db-timeout is not under --request-timeout: a call waiting on a \
                 database that stopped answering may answer DEADLINE_EXCEEDED instead of \
                 UNAVAILABLE",
            );
        }
    }

    /// The pool settings.
    #[must_use]
    pub fn pool(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.db_max_connections,
            acquire_timeout: self.db_acquire_timeout,
            operation_timeout: self.db_timeout,
            create_missing: self.create_database,
        }
    }
}
