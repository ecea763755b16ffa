//! `number-allocator`: serves `numbering.v1.NumberAllocator` on PostgreSQL or SQLite.

use std::{net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use clap::{CommandFactory, Parser};
use numbering::{
    allocator::{
        CommitMode,
        app::{App, RequestIdSettings, Settings},
        group_commit::GroupCommitSettings,
        series::Leases,
        series::NumberFormat,
    },
    clock::SystemClock,
    server::{
        config::{
            DatabaseArgs, LONGEST_DURATION, ServerArgs, at_least_a_second, listen_address, named,
            parse_or_exit,
        },
        shutdown,
        startup::{self, StartupError},
        telemetry,
    },
};

/// Each call allocates and frees small buffers many times; jemalloc does it
/// for less processor time than the system's allocator (BENCHMARKS.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Hands out per-tenant, per-series numbers over gRPC, each committed before it is returned.
// Field docs are `--help` text, hence plain words.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Parser)]
#[command(version)]
struct Config {
    /// Address to listen on.
    #[arg(long, env = "NUMBERING_LISTEN", default_value = "0.0.0.0:50051", value_parser = listen_address)]
    listen: SocketAddr,

    /// Number template of new series: text, one {number} or {number:0N} (N from 1 to 18), and any of {year}, {yy}, {month}, {day}; {{ and }} for braces.
    #[arg(long, env = "NUMBERING_DEFAULT_FORMAT", default_value = NumberFormat::DEFAULT)]
    default_format: NumberFormat,

    /// How allocations commit: "group" merges concurrent calls of a series into one transaction; "per-call" commits each alone.
    #[arg(
        long,
        env = "NUMBERING_COMMIT_MODE",
        value_enum,
        default_value = "group"
    )]
    commit_mode: Mode,

    /// Group commit lanes committing in parallel (a series always uses the same lane); one lane batches every series into one disk flush. Keep it below --db-max-connections.
    #[arg(long, env = "NUMBERING_GROUP_LANES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    group_lanes: u32,

    /// Most calls merged into one group commit.
    #[arg(long, env = "NUMBERING_GROUP_MAX_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    group_max_batch: u32,

    /// Most calls waiting per lane under group commit; more answer RESOURCE_EXHAUSTED.
    #[arg(long, env = "NUMBERING_GROUP_QUEUE_CAPACITY", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    group_queue_capacity: u32,

    /// How long a request id answers repeats of its call, e.g. "24h", "30m"; after it, the id allocates anew.
    #[arg(long, env = "NUMBERING_REQUEST_ID_RETENTION", default_value = "24h", value_parser = at_least_a_second)]
    request_id_retention: Duration,

    /// How long a Reserve call holds its number when it asks for no lease, e.g. "5m".
    #[arg(long, env = "NUMBERING_DEFAULT_LEASE", default_value = "5m", value_parser = at_least_a_second)]
    default_lease: Duration,

    /// The longest lease a Reserve call may ask for, e.g. "24h".
    #[arg(long, env = "NUMBERING_MAX_LEASE", default_value = "24h", value_parser = at_least_a_second)]
    max_lease: Duration,

    #[command(flatten)]
    database: DatabaseArgs,

    #[command(flatten)]
    server: ServerArgs,
}

// Every duration setting is at most LONGEST_DURATION, so --max-lease is
// within the longest lease the allocator may allow.
const _: () = assert!(LONGEST_DURATION.as_secs() <= Leases::CEILING.as_secs());

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Mode {
    Group,
    PerCall,
}

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = parse_or_exit();
    let _telemetry = telemetry::init_or_exit(&config.server, "number-allocator");
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => startup::report(&error),
    }
}

async fn run(config: Config) -> Result<(), StartupError> {
    // A repeat of a Reserve finds its request id, and the number held under
    // it, only as long as request ids are kept.
    if config.max_lease > config.request_id_retention {
        tracing::warn!(
            max_lease = %humantime::format_duration(config.max_lease),
            request_id_retention = %humantime::format_duration(config.request_id_retention),
            "--max-lease is longer than --request-id-retention: a Reserve repeated after its \
             request id is forgotten takes another number while its first is still held",
        );
    }
    if config.default_lease > config.max_lease {
        let command = Config::command();
        return Err(StartupError::BadSetting(format!(
            "{} is {}: it must be at most {}, {}",
            named(&command, "default_lease"),
            humantime::format_duration(config.default_lease),
            named(&command, "max_lease"),
            humantime::format_duration(config.max_lease),
        )));
    }
    config
        .database
        .warn_of_timeouts(config.server.request_timeout);
    if matches!(config.commit_mode, Mode::Group)
        && config.group_lanes >= config.database.db_max_connections
    {
        tracing::warn!(
            group_lanes = config.group_lanes,
            db_max_connections = config.database.db_max_connections,
            "--group-lanes is not below --db-max-connections: group commits can hold every \
             connection, and reads and sweeps wait for one",
        );
    }
    let settings = Settings {
        database: config.database.url("allocator.sqlite3")?,
        pool: config.database.pool(),
        default_format: config.default_format,
        mode: match config.commit_mode {
            Mode::PerCall => CommitMode::PerCall,
            Mode::Group => CommitMode::Group(GroupCommitSettings {
                lanes: config.group_lanes as usize,
                max_batch: config.group_max_batch as usize,
                queue_capacity: config.group_queue_capacity as usize,
            }),
        },
        request_ids: RequestIdSettings {
            retention: config.request_id_retention,
            ..RequestIdSettings::default()
        },
        leases: Leases {
            default: config.default_lease,
            max: config.max_lease,
        },
    };
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
    let Some(app) =
        shutdown::unless_stopped(App::build(settings, Arc::new(SystemClock)), stop.as_mut()).await
    else {
        tracing::info!("number-allocator stopped before serving");
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
        "number-allocator listening"
    );
    app.serve(listeners, &server_settings, stop).await?;
    tracing::info!("number-allocator stopped");
    Ok(())
}
