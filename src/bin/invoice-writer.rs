//! `invoice-writer`: serves `numbering.v1.InvoiceWriter` on PostgreSQL or SQLite, numbering
//! invoices with the allocator; `seed-counters` seeds the allocator from stored invoices.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{CommandFactory, Parser, Subcommand};
use numbering::{
    access::{
        RELOAD_INTERVAL,
        bearer::{BearerToken, Secret},
    },
    invoices::{
        allocator_client::{AllocatorEndpoint, Backoff, Keepalive},
        app::{App, ReconcileSettings, Settings, check_allocator_url, shown_url},
    },
    server::{
        config::{
            Checked, DatabaseArgs, ServerArgs, at_least_a_second, listen_address, needs,
            parse_or_exit, positive_duration,
        },
        shutdown,
        startup::{self, StartupError},
        telemetry,
    },
    tls::{ClientTls, ClientTlsFiles},
};

/// Each call allocates and frees small buffers many times; jemalloc does it
/// for less processor time than the system's allocator (BENCHMARKS.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Stores invoices, each numbered by the number allocator, over gRPC.
#[derive(Debug, Parser)]
#[command(version)]
struct Config {
    #[command(subcommand)]
    command: Option<Command>,

    /// Address to listen on.
    #[arg(global = true, long, env = "NUMBERING_LISTEN", default_value = "0.0.0.0:50052", value_parser = listen_address)]
    listen: SocketAddr,

    /// URL of the number allocator.
    #[arg(
        global = true,
        long,
        env = "NUMBERING_ALLOCATOR_URL",
        default_value = "http://127.0.0.1:50051",
        value_parser = Checked(|raw| check_allocator_url(raw).map(|()| raw.to_owned()))
    )]
    allocator_url: String,

    /// Numbers allocated per invoice before answering ABORTED when each is already taken.
    #[arg(global = true, long, env = "NUMBERING_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,

    /// Longest time spent calling the allocator for one invoice, retries included: each call's time-out is what is left of it (90% of a shorter caller deadline wins).
    #[arg(global = true, long, env = "NUMBERING_ALLOCATOR_RETRY_BUDGET", default_value = "5s", value_parser = positive_duration)]
    allocator_retry_budget: Duration,

    /// Bearer token sent to the allocator with every call (never logged). The writer's token needs the tenants it serves; seed-counters also needs admin.
    #[arg(
        global = true,
        long,
        env = "NUMBERING_ALLOCATOR_TOKEN",
        hide_env_values = true,
        conflicts_with = "allocator_token_file"
    )]
    allocator_token: Option<Secret>,

    /// File holding the bearer token sent to the allocator; re-read when it changes.
    #[arg(global = true, long, env = "NUMBERING_ALLOCATOR_TOKEN_FILE")]
    allocator_token_file: Option<PathBuf>,

    /// CA (PEM) that signed the allocator's certificate; needed by an https:// --allocator-url. Re-read when it changes.
    #[arg(global = true, long, env = "NUMBERING_ALLOCATOR_TLS_CA")]
    allocator_tls_ca: Option<PathBuf>,

    /// The writer's client certificate (PEM) for an allocator that asks for one (mutual TLS). Re-read when it changes.
    #[arg(global = true, long, env = "NUMBERING_ALLOCATOR_TLS_CERT")]
    allocator_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --allocator-tls-cert. Re-read when it changes.
    #[arg(global = true, long, env = "NUMBERING_ALLOCATOR_TLS_KEY")]
    allocator_tls_key: Option<PathBuf>,

    /// How long the allocator holds each invoice's number reserved for it (at most the allocator's --max-lease). A stored invoice whose writer, or its way to the allocator, is down longer than this finds its number given back when reconciliation comes to confirm it. A number of an invoice never stored is given back sooner, by reconciliation, once the writer is back.
    #[arg(global = true, long, env = "NUMBERING_RESERVATION_LEASE", default_value = "1h", value_parser = at_least_a_second)]
    reservation_lease: Duration,

    /// How often numbers left behind by calls that died are settled (stored invoices' numbers confirmed, numbers of invoices never stored given back); also once at start-up.
    #[arg(global = true, long, env = "NUMBERING_RECONCILE_INTERVAL", default_value = "30s", value_parser = positive_duration)]
    reconcile_interval: Duration,

    /// Time-out for opening a connection to the allocator.
    #[arg(global = true, long, env = "NUMBERING_ALLOCATOR_CONNECT_TIMEOUT", default_value = "1s", value_parser = positive_duration)]
    allocator_connect_timeout: Duration,

    /// How long the connection to the allocator may go without a frame from it while a call is open before an HTTP/2 ping checks that it is alive.
    #[arg(global = true, long, env = "NUMBERING_ALLOCATOR_KEEPALIVE_INTERVAL", default_value = "1s", value_parser = positive_duration)]
    allocator_keepalive_interval: Duration,

    /// How long that ping may go unanswered before the connection is closed and the next call opens another.
    #[arg(global = true, long, env = "NUMBERING_ALLOCATOR_KEEPALIVE_TIMEOUT", default_value = "2s", value_parser = positive_duration)]
    allocator_keepalive_timeout: Duration,

    #[command(flatten)]
    database: DatabaseArgs,

    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Raise each tenant's invoice counter in the allocator to its highest stored invoice number, then exit.
    SeedCounters,
}

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = parse_or_exit();
    let _telemetry = telemetry::init_or_exit(&config.server, "invoice-writer");
    let result = match config.command {
        Some(Command::SeedCounters) => seed(&config).await,
        Some(Command::Serve) | None => serve(config).await.map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|error| startup::report(&error))
}

/// The writer's settings from the command line.
fn settings(config: &Config) -> Result<Settings, StartupError> {
    let command = Config::command();
    let (cert, key) = (
        config.allocator_tls_cert.is_some(),
        config.allocator_tls_key.is_some(),
    );
    let ca = config.allocator_tls_ca.is_some();
    needs(
        &command,
        ("allocator_tls_cert", cert),
        ("allocator_tls_key", key),
    )?;
    needs(
        &command,
        ("allocator_tls_cert", cert),
        ("allocator_tls_ca", ca),
    )?;
    needs(
        &command,
        ("allocator_tls_key", key),
        ("allocator_tls_cert", cert),
    )?;
    // No longer than 90% of the request time-out: a call cut off by it
    // while still retrying would answer DEADLINE_EXCEEDED instead of saying
    // the allocator is unavailable.
    let longest_budget = config.server.request_timeout.mul_f64(0.9);
    if config.allocator_retry_budget > longest_budget {
        tracing::warn!(
            allocator_retry_budget = %humantime::format_duration(config.allocator_retry_budget),
            request_timeout = %humantime::format_duration(config.server.request_timeout),
            "--allocator-retry-budget is cut to 90% of --request-timeout",
        );
    }
    let budget = config.allocator_retry_budget.min(longest_budget);
    // A call on a connection gone silent waits until the pings find it
    // dead, then is retried on a new one: within the budget, or not at all.
    let found_out = config.allocator_keepalive_interval + config.allocator_keepalive_timeout;
    if found_out >= budget {
        tracing::warn!(
            allocator_keepalive_interval = %humantime::format_duration(config.allocator_keepalive_interval),
            allocator_keepalive_timeout = %humantime::format_duration(config.allocator_keepalive_timeout),
            allocator_retry_budget = %humantime::format_duration(budget),
            "a connection the allocator goes silent on is found dead only after the retry \
             budget: calls on it answer UNAVAILABLE instead of being retried on a new one; \
             shorten --allocator-keepalive-interval or --allocator-keepalive-timeout",
        );
    }
    Ok(Settings {
        database: config.database.url("invoices.sqlite3")?,
        pool: config.database.pool(),
        allocator: AllocatorEndpoint {
            url: config.allocator_url.clone(),
            connect_timeout: config.allocator_connect_timeout,
            keepalive: Keepalive {
                interval: config.allocator_keepalive_interval,
                timeout: config.allocator_keepalive_timeout,
            },
            token: allocator_token(config)?,
            tls: allocator_tls(config)?,
        },
        backoff: Backoff::default(),
        max_attempts: config.max_attempts,
        reservation_lease: config.reservation_lease,
        allocator_retry_budget: budget,
        reconcile: ReconcileSettings {
            interval: config.reconcile_interval,
            // No call outlives the request time-out: a number held longer
            // was left by one that died.
            stale_after: config.server.request_timeout,
        },
    })
}

/// The token for the allocator: given, read from a file (and watched), or none.
fn allocator_token(config: &Config) -> Result<BearerToken, StartupError> {
    match (&config.allocator_token, &config.allocator_token_file) {
        // Refused by the parser too, unless one came before seed-counters
        // and the other after it.
        (Some(_), Some(_)) => {
            Err("give --allocator-token or --allocator-token-file, not both".into())
        }
        (Some(secret), None) => BearerToken::fixed(secret.expose()),
        (None, Some(path)) => BearerToken::from_file(path.clone(), RELOAD_INTERVAL),
        (None, None) => Ok(BearerToken::none()),
    }
    .map_err(|why| StartupError::BadSetting(format!("allocator token: {why}")))
}

/// TLS to the allocator, if its CA is given.
fn allocator_tls(config: &Config) -> Result<Option<ClientTls>, StartupError> {
    let Some(ca) = &config.allocator_tls_ca else {
        return Ok(None);
    };
    let files = ClientTlsFiles {
        ca: ca.clone(),
        identity: config
            .allocator_tls_cert
            .clone()
            .zip(config.allocator_tls_key.clone()),
    };
    ClientTls::watch(&files, RELOAD_INTERVAL)
        .map(Some)
        .map_err(StartupError::BadSetting)
}

async fn serve(config: Config) -> Result<(), StartupError> {
    let settings = settings(&config)?;
    config
        .database
        .warn_of_timeouts(config.server.request_timeout);
    // Settings files are read before anything is bound or opened.
    let server_settings = config.server.settings()?;
    let mut stop = std::pin::pin!(shutdown::signal());
    // Bound before the database is opened, so a busy port creates nothing.
    let listeners = startup::listen(
        config.listen,
        config.server.health_listen,
        config.server.metrics_listen,
        &server_settings,
    )
    .await?;
    let database = settings.database.clone();
    let Some(app) = shutdown::unless_stopped(App::build(settings), stop.as_mut()).await else {
        tracing::info!("invoice-writer stopped before serving");
        return Ok(());
    };
    let app = app?;
    let addr = listeners.grpc.local_addr().unwrap_or(config.listen);
    let (tls, health_addr, metrics_addr) = listeners.describe(&server_settings);
    tracing::info!(
        %addr,
        %database,
        tls,
        health_addr,
        metrics_addr,
        allocator = %shown_url(&config.allocator_url),
        "invoice-writer listening"
    );
    app.serve(listeners, &server_settings, stop).await?;
    tracing::info!("invoice-writer stopped");
    Ok(())
}

/// `seed-counters`: exits 1 when any tenant could not be seeded. It reads
/// the invoices already stored, so it creates no database: one made for it
/// (a mistyped URL or data directory) would hold none, and seed nothing.
async fn seed(config: &Config) -> Result<ExitCode, StartupError> {
    // Serving reads them in its server settings; seeding serves nothing,
    // but refuses them as serving would.
    config.server.check_tls_files()?;
    let mut settings = settings(config)?;
    settings.pool.create_missing = false;
    let app = App::build(settings).await?;
    let report = app
        .seed_counters()
        .await
        .map_err(|error| StartupError::Other(error.into()))?;
    tracing::info!(
        tenants = report.tenants,
        failed = report.failed,
        unconfigured = report.unconfigured,
        "seeding finished"
    );
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
