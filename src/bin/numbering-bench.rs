//! `numbering-bench`: drives a `number-allocator` over gRPC, prints throughput
//! and latency, and verifies every number it acknowledged.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use numbering::bench::{
    Call, Load, Report, drive, drive_all, plot,
    processor::{CallCost, ProcessorTime, Sample},
    report::{CompareRow, VerificationLine},
    spawn::{SpawnedAllocator, SpawnedReplicas, SpawnedWriter, analyze},
};

/// Load generator and verifier for the number allocator.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One load run, against a running allocator (--url) or one started on a fresh database.
    Run(RunArgs),
    /// Group commit (with and without a request id on every call) against one commit per call and the no-op ceiling, for 1-256 clients, one
    /// hot tenant and 1,000 tenants; prints a table of ratios.
    Compare(CompareArgs),
    /// Serves each of --tenants distinct tenants once and reports the allocator's resident memory; with --steady, then calls them at random that long and samples it.
    Memory(MemoryArgs),
    /// A quiet tenant's throughput alone, then while another tenant hammers a series it has exhausted; prints the ratio.
    Neighbours(NeighboursArgs),
    /// Times `AuditSeries` over one period of --numbers numbers, each its own range (the worst case), written to the ledger by SQL.
    Audit(AuditArgs),
    /// 1 to --replicas allocator processes on one database, the clients' connections spread over them: throughput, p99 and the verdict over every answer, for one hot tenant and 1,000 tenants.
    Replicas(ReplicasArgs),
    /// The performance targets: one hot tenant (and 1,000 tenants) at --clients over --connections, each workload beside the no-op ceiling and one commit per call in the same round, and invoices created through a writer beside the writer's own no-op; --rounds repeats and prints the ranges.
    Targets(TargetsArgs),
}

#[derive(Debug, Args)]
struct SpawnArgs {
    /// PostgreSQL server to create the fresh benchmark databases on (any database of it), or "sqlite:" for a SQLite file in a new temporary directory.
    #[arg(
        long,
        env = "NUMBERING_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,

    /// The number-allocator binary to start (default: next to this one).
    #[arg(long)]
    allocator_bin: Option<PathBuf>,

    /// The invoice-writer binary to start, where a benchmark runs one (default: next to this one).
    #[arg(long)]
    writer_bin: Option<PathBuf>,

    /// On PostgreSQL, analyze the services' fresh databases this often while a run lasts, as autovacuum does on a server that has run a while. Without it, a run measures a server whose plans were made on empty tables (memory: 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    analyze_every: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Group,
    PerCall,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Group => "group",
            Mode::PerCall => "per-call",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CallArg {
    Allocate,
    /// Reserve then Confirm: a pair counts as one call answered.
    ReserveConfirm,
    /// Creates an invoice, on an invoice writer given with --url.
    CreateInvoice,
    Health,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// A running allocator (or, for create-invoice, writer) to drive; without it one is started on a fresh database (for create-invoice, an allocator and a writer, each on its own).
    #[arg(long)]
    url: Option<String>,
    /// Commit mode of the allocator started here (default: group); not with --url or create-invoice.
    #[arg(long, value_enum)]
    commit_mode: Option<Mode>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    clients: usize,
    /// Connections the clients share, at most one per client (default: min(clients, 8)).
    #[arg(long, value_parser = at_least_one)]
    connections: Option<usize>,
    /// How long to drive.
    #[arg(long, default_value = "5s", value_parser = some_time)]
    duration: Duration,
    /// Tenants, called uniformly at random; 1 is one hot tenant.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    tenants: u32,
    /// Numbers per Allocate call (Allocate only).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Send every Allocate, Reserve and invoice with a fresh request id.
    #[arg(long)]
    keyed: bool,
    /// The call to make; "health" is the no-op ceiling.
    #[arg(long, value_enum, default_value = "allocate")]
    call: CallArg,
    /// Configure every tenant's series to reissue the numbers given back (its gap policy) before driving; not with create-invoice, whose series the writer's allocator holds.
    #[arg(long)]
    reissue: bool,
    #[command(flatten)]
    spawn: SpawnArgs,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Length of each run.
    #[arg(long, default_value = "5s", value_parser = some_time)]
    duration: Duration,
    /// Client counts to compare.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256", value_parser = at_least_one)]
    clients: Vec<usize>,
    /// Also draw the sweep (throughput and p99 against clients, per mode) into this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
    #[command(flatten)]
    spawn: SpawnArgs,
}

#[derive(Debug, Args)]
struct NeighboursArgs {
    /// Length of each run.
    #[arg(long, default_value = "5s", value_parser = some_time)]
    duration: Duration,
    /// Clients of the quiet side.
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    quiet_clients: usize,
    /// Tenants the quiet clients share (each under a per-tenant rate limit
    /// that would cap one tenant taking the whole machine).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    quiet_tenants: u32,
    /// Clients hammering the exhausted series.
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    noisy_clients: usize,
    /// The noisy clients send a fresh request id with every call.
    #[arg(long)]
    keyed: bool,
    /// Runs of each kind, alternating.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    rounds: usize,
    /// A setting for the allocator, e.g. `--allocator-arg=--tenant-rate-limit=1000`
    /// (repeatable).
    #[arg(long = "allocator-arg", allow_hyphen_values = true)]
    allocator_args: Vec<String>,
    #[command(flatten)]
    spawn: SpawnArgs,
}

#[derive(Debug, Args)]
struct ReplicasArgs {
    /// Length of each run.
    #[arg(long, default_value = "5s", value_parser = some_time)]
    duration: Duration,
    /// Concurrent clients, over all replicas.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    clients: usize,
    /// Connections the clients share, spread over the replicas.
    #[arg(long, default_value_t = 12, value_parser = at_least_one)]
    connections: usize,
    /// Most replicas; runs 1, 2, … up to it.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    replicas: usize,
    #[command(flatten)]
    spawn: SpawnArgs,
}

#[derive(Debug, Args)]
struct TargetsArgs {
    /// Length of each run.
    #[arg(long, default_value = "4s", value_parser = some_time)]
    duration: Duration,
    /// Rounds of every workload, back to back.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    rounds: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    clients: usize,
    /// Connections the clients share.
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    connections: usize,
    #[command(flatten)]
    spawn: SpawnArgs,
}

#[derive(Debug, Args)]
struct AuditArgs {
    /// Numbers in the period, each its own range.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(1..))]
    numbers: i64,
    /// Audits to time.
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    rounds: usize,
    /// Also time audits after one range's record is deleted, which walks
    /// the ranges to find it.
    #[arg(long)]
    lose_one: bool,
    /// Every number but the first confirmed: a state row each, which an
    /// audit with a range lost walks as well.
    #[arg(long)]
    confirmed: bool,
    #[command(flatten)]
    spawn: SpawnArgs,
}

#[derive(Debug, Args)]
struct MemoryArgs {
    /// Distinct tenants, each served once.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    tenants: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    clients: usize,
    /// Longest the run may take.
    #[arg(long, default_value = "30m", value_parser = some_time)]
    max_duration: Duration,
    /// After serving every tenant once, keep calling them at random this long, with a fresh request id each call, and sample the resident memory ten times ("0s": not at all).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    steady: Duration,
    #[command(flatten)]
    spawn: SpawnArgs,
}

/// A count of at least one (clients, connections, rounds, replicas).
fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A length of time longer than none.
fn some_time(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(duration) if duration.is_zero() => Err("must be longer than 0s".to_owned()),
        Ok(duration) => Ok(duration),
        Err(e) => Err(e.to_string()),
    }
}

fn allocator_bin(spawn: &SpawnArgs) -> anyhow::Result<PathBuf> {
    binary(
        spawn.allocator_bin.as_ref(),
        "number-allocator",
        "--allocator-bin",
    )
}

fn writer_bin(spawn: &SpawnArgs) -> anyhow::Result<PathBuf> {
    binary(spawn.writer_bin.as_ref(), "invoice-writer", "--writer-bin")
}

/// `given`, or the binary `name` next to this one; it must exist.
fn binary(given: Option<&PathBuf>, name: &str, flag: &str) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name(name),
    };
    if !path.exists() {
        bail!(
            "{} not found: build it first (cargo build --release) or pass {flag}",
            path.display()
        );
    }
    Ok(path)
}

/// Refuses more connections than clients: the extra ones would carry no call.
fn fewer_connections_than_clients(
    connections: Option<usize>,
    clients: usize,
) -> anyhow::Result<()> {
    if let Some(connections) = connections
        && connections > clients
    {
        bail!(
            "--connections {connections} is more than --clients {clients}: each connection needs a client"
        );
    }
    Ok(())
}

/// Prints how the PostgreSQL server makes commits durable, which every
/// figure depends on.
async fn print_durability(spawn: &SpawnArgs) -> anyhow::Result<()> {
    if let Some(durability) = numbering::bench::spawn::durability(&spawn.database_url)
        .await
        .context("reading the PostgreSQL server's settings")?
    {
        println!("PostgreSQL: {durability}");
    }
    Ok(())
}

fn load(
    clients: usize,
    connections: Option<usize>,
    duration: Duration,
    tenants: u32,
    count: u32,
    call: Call,
) -> Load {
    Load {
        clients,
        connections: connections.unwrap_or(clients.min(8)),
        duration,
        tenants,
        count,
        call,
        tenant_prefix: format!("bench-{}", uuid::Uuid::now_v7().simple()),
        each_tenant_once: false,
        keyed: false,
        reissue: false,
    }
}

/// Starts an allocator in `mode`, drives it with `load`, stops it.
async fn spawned_run(
    spawn: &SpawnArgs,
    bin: &Path,
    mode: Mode,
    load: &Load,
) -> anyhow::Result<Report> {
    let args = vec!["--commit-mode".to_owned(), mode.flag().to_owned()];
    let allocator = SpawnedAllocator::start(bin, &spawn.database_url, &args).await?;
    let pids = [allocator.pid()];
    let start = Sample::now(&pids);
    let databases = [allocator.postgres_url()];
    let report = analyzing(&databases, spawn.analyze_every, drive(&allocator.url, load)).await;
    let processor = Sample::now(&pids).since(&start);
    allocator.stop().await?;
    Ok(Report {
        processor,
        ..report?
    })
}

/// Starts an allocator with group commit and a writer calling it, each on a
/// fresh database, drives the writer with `load`, stops both.
async fn spawned_writer_run(
    spawn: &SpawnArgs,
    (allocator_bin, writer_bin): (&Path, &Path),
    load: &Load,
) -> anyhow::Result<Report> {
    let args = ["--commit-mode".to_owned(), Mode::Group.flag().to_owned()];
    let allocator = SpawnedAllocator::start(allocator_bin, &spawn.database_url, &args).await?;
    // On an error the allocator is dropped, and its database goes with it.
    let writer = SpawnedWriter::start(writer_bin, &spawn.database_url, &allocator.url).await?;
    let pids = [allocator.pid(), writer.pid()];
    let start = Sample::now(&pids);
    let databases = [allocator.postgres_url(), writer.postgres_url()];
    let report = analyzing(&databases, spawn.analyze_every, drive(&writer.url, load)).await;
    let processor = Sample::now(&pids).since(&start);
    writer.stop().await?;
    allocator.stop().await?;
    Ok(Report {
        processor,
        ..report?
    })
}

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let call = match args.call {
        CallArg::Allocate => Call::Allocate,
        CallArg::ReserveConfirm => Call::ReserveConfirm,
        CallArg::CreateInvoice => Call::CreateInvoice,
        CallArg::Health => Call::Health,
    };
    if args.reissue && call == Call::CreateInvoice {
        bail!("--reissue configures an allocator's series; not with create-invoice");
    }
    if args.count != 1 && call != Call::Allocate {
        let call = args
            .call
            .to_possible_value()
            .map(|value| value.get_name().to_owned());
        bail!(
            "--count is the numbers of one Allocate; not with {}",
            call.unwrap_or_default()
        );
    }
    if args.commit_mode.is_some() && (args.url.is_some() || call == Call::CreateInvoice) {
        bail!(
            "--commit-mode sets the allocator this run starts; not with --url or create-invoice \
             (whose writer's allocator commits in groups)"
        );
    }
    fewer_connections_than_clients(args.connections, args.clients)?;
    let load = Load {
        keyed: args.keyed,
        reissue: args.reissue,
        ..load(
            args.clients,
            args.connections,
            args.duration,
            args.tenants,
            args.count,
            call,
        )
    };
    if args.url.is_none() {
        print_durability(&args.spawn).await?;
    }
    let report = match &args.url {
        Some(url) => {
            let start = Sample::now(&[]);
            let report = drive(url, &load)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            Report {
                processor: Sample::now(&[]).since(&start),
                ..report
            }
        }
        None if call == Call::CreateInvoice => {
            let bins = (allocator_bin(&args.spawn)?, writer_bin(&args.spawn)?);
            spawned_writer_run(&args.spawn, (&bins.0, &bins.1), &load).await?
        }
        None => {
            spawned_run(
                &args.spawn,
                &allocator_bin(&args.spawn)?,
                args.commit_mode.unwrap_or(Mode::Group),
                &load,
            )
            .await?
        }
    };
    println!("{report}");
    let names: &[&str] = match (&args.url, call) {
        (Some(_), _) => &[],
        (None, Call::CreateInvoice) => &["allocator", "writer"],
        (None, _) => &["allocator"],
    };
    println!(
        "processor time per call: {}",
        report.processor.per_call(names, report.ok)
    );
    if call == Call::Health {
        // A ceiling of failed calls, or of none, measures nothing.
        return Ok(report.every_call_ok());
    }
    println!("{}", VerificationLine(&report));
    Ok(report.verification().passed())
}

async fn compare(args: CompareArgs) -> anyhow::Result<bool> {
    let bin = allocator_bin(&args.spawn)?;
    print_durability(&args.spawn).await?;
    let mut all_verified = true;
    println!("{}", CompareRow::HEADER);
    let mut figure = Vec::new();
    for (workload, tenants) in [("one hot tenant", 1), ("1,000 tenants", 1000)] {
        let mut lines: Vec<plot::Line> =
            ["no-op ceiling", "group commit", "keyed group", "per call"]
                .into_iter()
                .map(|mode| plot::Line {
                    mode,
                    points: Vec::new(),
                })
                .collect();
        for &clients in &args.clients {
            // The three runs of a row back to back: the machine is shared and
            // noisy, so only ratios taken close together mean much.
            let noop = spawned_run(
                &args.spawn,
                &bin,
                Mode::Group,
                &load(clients, None, args.duration, 1, 1, Call::Health),
            )
            .await?;
            // A ceiling lowered by failed calls would raise every share.
            let ceiling_sound = noop.every_call_ok();
            if !ceiling_sound {
                eprintln!(
                    "{workload}, {clients} clients, no-op ceiling: {} calls failed {:?}",
                    noop.failed(),
                    noop.errors
                );
            }
            all_verified &= ceiling_sound;
            let allocate = load(clients, None, args.duration, tenants, 1, Call::Allocate);
            let group = spawned_run(&args.spawn, &bin, Mode::Group, &allocate).await?;
            let with_ids = Load {
                keyed: true,
                ..allocate.clone()
            };
            let keyed = spawned_run(&args.spawn, &bin, Mode::Group, &with_ids).await?;
            let per_call = spawned_run(&args.spawn, &bin, Mode::PerCall, &allocate).await?;
            let runs = [
                ("group", &group),
                ("keyed group", &keyed),
                ("per call", &per_call),
            ];
            for (name, report) in runs {
                let verified = report.verification().passed();
                eprintln!(
                    "{workload}, {clients} clients, {name}: {:.0}/s, verified: {verified}",
                    report.throughput()
                );
                all_verified &= verified;
            }
            for (line, report) in lines.iter_mut().zip([&noop, &group, &keyed, &per_call]) {
                line.points.push(plot::Point {
                    clients: u32::try_from(clients)?,
                    throughput: report.throughput(),
                    p99_ms: report.latency(0.99).as_secs_f64() * 1000.0,
                });
            }
            let row = CompareRow {
                workload,
                clients,
                group: &group,
                keyed: &keyed,
                per_call: &per_call,
                noop: &noop,
            };
            println!("{row}");
        }
        figure.push(plot::Workload {
            name: workload,
            lines,
        });
    }
    if let Some(path) = &args.svg {
        plot::draw(path, &figure)
            .map_err(|error| anyhow::anyhow!("drawing {}: {error}", path.display()))?;
        eprintln!("drew {}", path.display());
    }
    println!(
        "\nEvery acknowledged number verified (no duplicates; 1..=N per series when nothing failed), no no-op call failed: {all_verified}"
    );
    Ok(all_verified)
}

async fn replicas(args: ReplicasArgs) -> anyhow::Result<bool> {
    fewer_connections_than_clients(Some(args.connections), args.clients)?;
    if args.replicas > args.connections {
        bail!(
            "--replicas {} is more than --connections {}: each replica needs a connection",
            args.replicas,
            args.connections
        );
    }
    let bin = allocator_bin(&args.spawn)?;
    print_durability(&args.spawn).await?;
    let mut all_verified = true;
    println!("| workload | replicas | calls/s | vs 1 replica | p99 | failed | verified |");
    println!("|---|---|---|---|---|---|---|");
    for (workload, tenants) in [("one hot tenant", 1), ("1,000 tenants", 1000)] {
        let mut single = None;
        for replicas in 1..=args.replicas {
            let started =
                SpawnedReplicas::start(&bin, &args.spawn.database_url, &[], replicas).await?;
            let load = load(
                args.clients,
                Some(args.connections),
                args.duration,
                tenants,
                1,
                Call::Allocate,
            );
            let report = drive_all(&started.urls, &load).await;
            started.stop().await?;
            let report = report?;
            // One verdict over the answers of every replica.
            let verified = report.verification().passed();
            all_verified &= verified;
            let throughput = report.throughput();
            let single = *single.get_or_insert(throughput);
            println!(
                "| {workload} | {replicas} | {throughput:.0} | {:.2}× | {:.1} ms | {} | {} |",
                throughput / single,
                report.latency(0.99).as_secs_f64() * 1000.0,
                report.failed(),
                if verified { "yes" } else { "NO" }
            );
        }
    }
    println!(
        "\nEvery acknowledged number verified over all replicas (no duplicates; 1..=N per series when nothing failed): {all_verified}"
    );
    Ok(all_verified)
}

/// One target of the performance pass and its figure in each round.
struct Target {
    name: &'static str,
    /// The bound, as the table prints it.
    needed: &'static str,
    met: fn(f64) -> bool,
    /// How a figure prints.
    show: fn(f64) -> String,
    figures: Vec<f64>,
    /// For a share of a no-op ceiling, what its processor time bounds it at.
    reach: Option<Reach>,
}

impl Target {
    fn new(
        name: &'static str,
        needed: &'static str,
        met: fn(f64) -> bool,
        show: fn(f64) -> String,
    ) -> Self {
        Self {
            name,
            needed,
            met,
            show,
            figures: Vec::new(),
            reach: None,
        }
    }

    /// A share of a no-op ceiling: `workload`'s calls a second over
    /// `ceiling`'s, each counting as `calls_each` of the ceiling's, making
    /// `services`' calls.
    fn share(
        mut self,
        workload: &'static str,
        ceiling: &'static str,
        calls_each: f64,
        services: &'static [(&'static str, f64)],
    ) -> Self {
        self.reach = Some(Reach {
            workload,
            ceiling,
            calls_each,
            services,
        });
        self
    }
}

/// A share in percent, with a decimal or two below 10% and 1%: a small
/// share reads as what it is, not as none.
fn percent(ratio: f64) -> String {
    let percent = ratio * 100.0;
    match percent {
        p if p > 0.0 && p < 0.005 => "<0.01%".to_owned(),
        p if p < 0.995 => format!("{p:.2}%"),
        p if p < 9.95 => format!("{p:.1}%"),
        p => format!("{p:.0}%"),
    }
}

fn times(ratio: f64) -> String {
    format!("{ratio:.1}×")
}

fn milliseconds(ms: f64) -> String {
    format!("{ms:.1} ms")
}

/// The services `targets` starts for the allocator's workloads, and for the
/// writer's, as the processor time names them.
const ALLOCATOR: &[&str] = &["allocator"];
const WRITER: &[&str] = &["allocator", "writer"];

/// Processor time a workload of `targets` used, over its calls.
struct Spent {
    workload: &'static str,
    /// The services started, as the processor time names them.
    services: &'static [&'static str],
    processor: ProcessorTime,
    calls: u64,
}

impl Spent {
    fn of(workload: &'static str, services: &'static [&'static str], report: &Report) -> Self {
        Self {
            workload,
            services,
            processor: report.processor.clone(),
            calls: report.ok,
        }
    }

    /// Adds another round's run of the same workload.
    fn add(&mut self, other: &Self) {
        self.processor.add(&other.processor);
        self.calls += other.calls;
    }

    /// The time per call of `service`, if it was started and read.
    fn service_micros(&self, service: &str) -> Option<f64> {
        let at = self.services.iter().position(|s| *s == service)?;
        self.processor
            .per_call(self.services, self.calls)
            .micros(self.processor.watched[at])
    }

    fn cost(&self) -> Option<CallCost> {
        CallCost::of(&self.processor, self.calls)
    }
}

/// A share of a no-op ceiling that `targets` asks for, as its processor time
/// bounds it: the workload, its no-op, how many of the no-op's calls each of
/// its calls counts for, and how many calls of each service it makes.
struct Reach {
    workload: &'static str,
    ceiling: &'static str,
    calls_each: f64,
    services: &'static [(&'static str, f64)],
}

impl Reach {
    /// The share this workload could reach on these cores with no core
    /// idle, and with the services also spending on each call what they
    /// spend on a health check (the allocator's from the no-op, the
    /// writer's from its own), every other party as measured.
    fn of(&self, spent: &[Spent]) -> (Option<f64>, Option<f64>) {
        let find = |name: &str| spent.iter().find(|spent| spent.workload == name);
        let health_check = |service: &str| {
            let noop = find(if service == "writer" {
                "the writer's no-op"
            } else {
                "no-op"
            })?;
            noop.service_micros(service)
        };
        let Some((workload, cost, ceiling)) = find(self.workload)
            .zip(find(self.ceiling))
            .and_then(|(workload, ceiling)| Some((workload, workload.cost()?, ceiling.cost()?)))
        else {
            return (None, None);
        };
        let trimmed = self
            .services
            .iter()
            .try_fold(cost, |cost, (service, calls)| {
                Some(cost.with(
                    workload.service_micros(service)?,
                    calls * health_check(service)?,
                ))
            });
        (
            Some(cost.reach(ceiling, self.calls_each)),
            trimmed.map(|trimmed| trimmed.reach(ceiling, self.calls_each)),
        )
    }
}

/// One round of `targets`: its figures, in the order of the targets, whether
/// every run was verified with no call failed, and each workload's processor
/// time.
async fn targets_round(
    args: &TargetsArgs,
    (bin, writer_bin): (&Path, &Path),
    round: usize,
) -> anyhow::Result<([f64; 7], bool, Vec<Spent>)> {
    use Call::{Allocate, ReserveConfirm};
    use Mode::{Group, PerCall};

    let run = |call, tenants, keyed| Load {
        keyed,
        ..load(
            args.clients,
            Some(args.connections),
            args.duration,
            tenants,
            1,
            call,
        )
    };
    // Back to back: the machine is shared and noisy, so only ratios taken
    // close together mean much.
    let noop = spawned_run(&args.spawn, bin, Mode::Group, &run(Call::Health, 1, false)).await?;
    let mut spent = vec![Spent::of("no-op", ALLOCATOR, &noop)];
    let mut runs = Vec::new();
    // A ceiling lowered by failed calls would raise every share.
    let mut all_verified = sound_ceiling(round, "no-op ceiling", &noop);
    for (name, mode, call, tenants, keyed) in [
        ("group commit", Group, Allocate, 1, false),
        ("keyed group commit", Group, Allocate, 1, true),
        ("Reserve + Confirm pair", Group, ReserveConfirm, 1, false),
        ("one commit per call", PerCall, Allocate, 1, false),
        ("1,000 tenants, group commit", Group, Allocate, 1000, false),
        (
            "1,000 tenants, one commit per call",
            PerCall,
            Allocate,
            1000,
            false,
        ),
    ] {
        let report = spawned_run(&args.spawn, bin, mode, &run(call, tenants, keyed)).await?;
        let verified = report.verification().passed() && report.failed() == 0;
        all_verified &= verified;
        eprintln!(
            "round {round}, {name}: {:.0}/s, p99 {:.2?}, failed {}, verified: {verified}",
            report.throughput(),
            report.latency(0.99),
            report.failed()
        );
        spent.push(Spent::of(name, ALLOCATOR, &report));
        runs.push(report);
    }
    // The writer's own ceiling: its health check, with an allocator beside it.
    let writer_noop =
        spawned_writer_run(&args.spawn, (bin, writer_bin), &run(Call::Health, 1, false)).await?;
    all_verified &= sound_ceiling(round, "the writer's no-op ceiling", &writer_noop);
    let invoices = spawned_writer_run(
        &args.spawn,
        (bin, writer_bin),
        &run(Call::CreateInvoice, 1, true),
    )
    .await?;
    let verified = invoices.verification().passed() && invoices.failed() == 0;
    all_verified &= verified;
    eprintln!(
        "round {round}, CreateInvoice: {:.0}/s, p99 {:.2?}, failed {}, verified: {verified}; writer's no-op ceiling {:.0}/s",
        invoices.throughput(),
        invoices.latency(0.99),
        invoices.failed(),
        writer_noop.throughput(),
    );
    let [group, keyed, pairs, per_call, many, many_per_call] = &runs[..] else {
        unreachable!("six runs");
    };
    spent.push(Spent::of("the writer's no-op", WRITER, &writer_noop));
    spent.push(Spent::of("CreateInvoice", WRITER, &invoices));
    let ceiling = noop.throughput();
    eprintln!(
        "round {round}, no-op ceiling: {ceiling:.0}/s; CreateInvoice ÷ Reserve + Confirm pairs: {:.0}%",
        100.0 * invoices.throughput() / pairs.throughput()
    );
    let figures = [
        group.throughput() / ceiling,
        group.latency(0.99).as_secs_f64() * 1000.0,
        group.throughput() / per_call.throughput(),
        keyed.throughput() / ceiling,
        // A pair is two calls.
        2.0 * pairs.throughput() / ceiling,
        many.throughput() / many_per_call.throughput(),
        invoices.throughput() / writer_noop.throughput(),
    ];
    Ok((figures, all_verified, spent))
}

/// Whether a no-op ceiling's run made calls and none failed; said if not.
fn sound_ceiling(round: usize, name: &str, report: &Report) -> bool {
    let sound = report.every_call_ok();
    if !sound {
        eprintln!(
            "round {round}, {name}: {} calls ok, {} failed {:?}",
            report.ok,
            report.failed(),
            report.errors
        );
    }
    sound
}

async fn targets(args: TargetsArgs) -> anyhow::Result<bool> {
    fewer_connections_than_clients(Some(args.connections), args.clients)?;
    let bin = allocator_bin(&args.spawn)?;
    let writer_bin = writer_bin(&args.spawn)?;
    print_durability(&args.spawn).await?;
    let mut targets = [
        Target::new("group commit ÷ no-op", "≥ 65%", |r| r >= 0.65, percent).share(
            "group commit",
            "no-op",
            1.0,
            &[("allocator", 1.0)],
        ),
        Target::new("group commit p99", "< 10 ms", |ms| ms < 10.0, milliseconds),
        Target::new(
            "group commit ÷ one commit per call",
            "≥ 10×",
            |r| r >= 10.0,
            times,
        ),
        Target::new(
            "keyed group commit ÷ no-op",
            "≥ 55%",
            |r| r >= 0.55,
            percent,
        )
        .share("keyed group commit", "no-op", 1.0, &[("allocator", 1.0)]),
        Target::new(
            "Reserve + Confirm calls ÷ no-op",
            "≥ 40%",
            |r| r >= 0.40,
            percent,
        )
        // A pair is two calls.
        .share(
            "Reserve + Confirm pair",
            "no-op",
            2.0,
            &[("allocator", 2.0)],
        ),
        Target::new(
            "1,000 tenants: group commit ÷ one commit per call",
            "≥ 3×",
            |r| r >= 3.0,
            times,
        ),
        Target::new(
            "CreateInvoice ÷ the writer's no-op",
            "≥ 25%",
            |r| r >= 0.25,
            percent,
        )
        .share(
            "CreateInvoice",
            "the writer's no-op",
            1.0,
            &[("writer", 1.0), ("allocator", 2.0)],
        ),
    ];
    let mut all_verified = true;
    let mut spent: Vec<Spent> = Vec::new();
    for round in 1..=args.rounds {
        let (figures, verified, round_spent) =
            targets_round(&args, (&bin, &writer_bin), round).await?;
        all_verified &= verified;
        for (target, figure) in targets.iter_mut().zip(figures) {
            target.figures.push(figure);
        }
        if spent.is_empty() {
            spent = round_spent;
        } else {
            for (all, more) in spent.iter_mut().zip(&round_spent) {
                all.add(more);
            }
        }
    }
    let embedded = args.spawn.database_url.starts_with("sqlite:");
    print_targets(&targets, &spent, embedded);
    print_spent(&spent);
    println!(
        "\nEvery acknowledged number verified (no duplicates, each series 1..=N), no call failed: {all_verified}"
    );
    Ok(all_verified)
}

/// The table of the targets, each round's figure and, for each share, what
/// the processor time of every round bounds it at; `embedded` when the
/// database is the services' own (SQLite).
fn print_targets(targets: &[Target], spent: &[Spent], embedded: bool) {
    println!(
        "| target | needed | each round | met in every round | with no core idle | and the services at a health check's cost |"
    );
    println!("|---|---|---|---|---|---|");
    let show = |reach: Option<f64>| reach.map_or_else(|| "–".to_owned(), percent);
    for target in targets {
        let (no_idle, at_health_check) = target
            .reach
            .as_ref()
            .map_or((None, None), |reach| reach.of(spent));
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            target.name,
            target.needed,
            target
                .figures
                .iter()
                .map(|&figure| (target.show)(figure))
                .collect::<Vec<_>>()
                .join(", "),
            if target.figures.iter().all(|&figure| (target.met)(figure)) {
                "yes"
            } else {
                "no"
            },
            show(no_idle),
            show(at_health_check),
        );
    }
    println!(
        "\nThe last two columns: the share each workload could reach on these cores, every round together, were none of them idle, and also were each service to spend on a call what it spends on a health check (every other party as measured)."
    );
    if embedded {
        println!(
            "On SQLite the database's work, its flushes included, is the services' own time: the last column takes it away as well, so it bounds nothing the services could reach alone."
        );
    }
}

/// The table of processor time per call, by workload and party, over every
/// round.
fn print_spent(spent: &[Spent]) {
    println!(
        "\nProcessor time per call over every round (a pair counts as one call; PostgreSQL is every process of that name on the machine; the rest is the kernel's own threads and anything else running):\n"
    );
    println!("| workload | load generator | allocator | writer | PostgreSQL | the rest | idle |");
    println!("|---|---|---|---|---|---|---|");
    let micros =
        |micros: Option<f64>| micros.map_or_else(|| "–".to_owned(), |m| format!("{m:.0} µs"));
    for workload in spent {
        let per_call = workload
            .processor
            .per_call(workload.services, workload.calls);
        let service = |name| {
            let at = workload.services.iter().position(|s| *s == name);
            micros(per_call.micros(at.and_then(|at| workload.processor.watched[at])))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            workload.workload,
            micros(per_call.micros(workload.processor.own)),
            service("allocator"),
            service("writer"),
            micros(per_call.micros(workload.processor.database)),
            micros(per_call.micros(workload.processor.rest)),
            workload
                .processor
                .idle_share()
                .map_or_else(|| "–".to_owned(), percent),
        );
    }
}

// Counts of calls and runs, far below 2^52.
#[allow(clippy::cast_precision_loss)]
async fn neighbours(args: NeighboursArgs) -> anyhow::Result<bool> {
    let bin = allocator_bin(&args.spawn)?;
    let allocator =
        SpawnedAllocator::start(&bin, &args.spawn.database_url, &args.allocator_args).await?;
    let noisy = Load {
        keyed: args.keyed,
        ..load(
            args.noisy_clients,
            None,
            args.duration,
            1,
            1,
            Call::Allocate,
        )
    };
    exhaust(&allocator.url, &format!("{}-0", noisy.tenant_prefix)).await?;
    let mut alone = Vec::new();
    let mut beside = Vec::new();
    let mut verified = true;
    for _ in 0..args.rounds {
        // Fresh quiet series each run, so that each can be verified alone.
        let quiet = || {
            load(
                args.quiet_clients,
                None,
                args.duration,
                args.quiet_tenants,
                1,
                Call::Allocate,
            )
        };
        let report = drive(&allocator.url, &quiet()).await?;
        verified &= report.verification().passed();
        alone.push(report.throughput());

        let quiet = quiet();
        let (report, hammer) =
            tokio::join!(drive(&allocator.url, &quiet), drive(&allocator.url, &noisy));
        let (report, hammer) = (report?, hammer?);
        verified &= report.verification().passed() && hammer.ok == 0;
        eprintln!(
            "quiet alone {:.0}/s; beside the noisy tenant {:.0}/s while it was refused {:.0}/s ({:?})",
            alone.last().copied().unwrap_or_default(),
            report.throughput(),
            hammer.failed() as f64 / hammer.elapsed.as_secs_f64(),
            hammer.errors
        );
        beside.push(report.throughput());
    }
    allocator.stop().await?;
    let (alone, beside) = (
        alone.iter().sum::<f64>() / alone.len().max(1) as f64,
        beside.iter().sum::<f64>() / beside.len().max(1) as f64,
    );
    println!(
        "quiet side, {} clients over {} tenant(s){}: {alone:.0}/s alone, {beside:.0}/s beside {} clients on an exhausted series{}: {:.0}%",
        args.quiet_clients,
        args.quiet_tenants,
        if args.allocator_args.is_empty() {
            String::new()
        } else {
            format!(" (allocator {})", args.allocator_args.join(" "))
        },
        args.noisy_clients,
        if args.keyed { " (keyed)" } else { "" },
        beside / alone * 100.0
    );
    println!("Every acknowledged number verified, and no noisy call granted: {verified}");
    Ok(verified)
}

/// Raises `tenant`'s default series to the last number there is.
async fn exhaust(url: &str, tenant: &str) -> anyhow::Result<()> {
    let mut client =
        numbering::proto::number_allocator_client::NumberAllocatorClient::connect(url.to_owned())
            .await?;
    client
        .advance_counter(numbering::proto::AdvanceCounterRequest {
            tenant_id: tenant.to_owned(),
            at_least: i64::MAX,
            reason: "numbering-bench neighbours".into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Times `AuditSeries` over a period of `args.numbers` one-number ranges.
async fn audit(args: AuditArgs) -> anyhow::Result<bool> {
    use numbering::proto::{AuditSeriesRequest, number_allocator_client::NumberAllocatorClient};
    let bin = allocator_bin(&args.spawn)?;
    let allocator = SpawnedAllocator::start(&bin, &args.spawn.database_url, &[]).await?;
    let mut client = NumberAllocatorClient::connect(allocator.url.clone()).await?;
    // One real allocation creates the series, its counter and its first range.
    client
        .allocate(numbering::proto::AllocateRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await?;
    let n = args.numbers;
    let numbers = if allocator.on_sqlite() {
        format!(
            "WITH RECURSIVE g(n) AS (SELECT 2 UNION ALL SELECT n + 1 FROM g WHERE n < {n})
             SELECT n, strftime('%Y-%m-%d', 'now') AS d, strftime('%Y-%m-%dT%H:%M:%fZ', 'now') AS t
             FROM g"
        )
    } else {
        format!("SELECT g AS n, current_date AS d, now() AS t FROM generate_series(2, {n}) AS g")
    };
    allocator
        .execute(&format!(
            "INSERT INTO allocations (tenant_id, series, period, first_value, count, kind,
                                      reason, request_id, format, date, created_at)
             SELECT 'acme', 'invoice', '', n, 1, 'allocate', '', NULL, 'INV-{{number:03}}', d, t
             FROM ({numbers}) AS numbers"
        ))
        .await?;
    if args.confirmed {
        allocator
            .execute(&format!(
                "INSERT INTO number_states (tenant_id, series, period, number, state, reference,
                                            updated_at, origin)
                 SELECT 'acme', 'invoice', '', n, 'confirmed', 'doc-' || n, t, 'allocate'
                 FROM ({numbers}) AS numbers"
            ))
            .await?;
    }
    allocator
        .execute(&format!("UPDATE counters SET last_value = {n}"))
        .await?;
    if !allocator.on_sqlite() {
        // What autovacuum does soon after such a load in production.
        allocator.execute("VACUUM ANALYZE allocations").await?;
        allocator.execute("VACUUM ANALYZE number_states").await?;
    }
    let mut passed = true;
    let mut ledgers = vec![("complete", 0)];
    if args.lose_one {
        ledgers.push(("one range lost", 1));
    }
    for (ledger, lost) in ledgers {
        if lost > 0 {
            allocator
                .execute(&format!(
                    "DELETE FROM allocations WHERE first_value = {}",
                    n / 2
                ))
                .await?;
        }
        let mut times = Vec::new();
        let mut answer = None;
        for _ in 0..args.rounds {
            let started = std::time::Instant::now();
            let audited = client
                .audit_series(AuditSeriesRequest {
                    tenant_id: "acme".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            times.push(started.elapsed());
            answer = Some(audited);
        }
        times.sort();
        let answer = answer.unwrap_or_default();
        passed &= answer.last_value == n && answer.unaccounted == lost;
        // Every row but that of the range lost counts as confirmed.
        passed &= !args.confirmed || answer.confirmed == n - 1 - lost;
        println!(
            "{n} numbers, {ledger}: audit {:?} median ({:?}..{:?}); issued {}, unaccounted {}",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1],
            answer.issued,
            answer.unaccounted
        );
    }
    allocator.stop().await?;
    println!("Every audit accounted for exactly the numbers expected: {passed}");
    Ok(passed)
}

/// Resident memory in MiB, to one decimal.
fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("?".to_owned(), |b| {
        format!("{}.{} MiB", b / 1_048_576, b % 1_048_576 * 10 / 1_048_576)
    })
}

async fn memory(args: MemoryArgs) -> anyhow::Result<bool> {
    let bin = allocator_bin(&args.spawn)?;
    let allocator = SpawnedAllocator::start(&bin, &args.spawn.database_url, &[]).await?;
    let before = allocator.resident_bytes();
    let mut load = load(
        args.clients,
        None,
        args.max_duration,
        args.tenants,
        1,
        Call::Allocate,
    );
    load.each_tenant_once = true;
    let every = args.spawn.analyze_every.or(Some(Duration::from_secs(10)));
    let databases = [allocator.postgres_url()];
    let mut report = analyzing(&databases, every, drive(&allocator.url, &load)).await?;
    let after = allocator.resident_bytes();
    println!("{report}");
    println!(
        "allocator resident memory: {} at start, {} after {} distinct tenants",
        mib(before),
        mib(after),
        report.ok
    );
    if !args.steady.is_zero() {
        // The same tenants, so their series go on from where the pass above
        // left them and every answer is still verified as 1..=N.
        load.each_tenant_once = false;
        load.keyed = true;
        load.duration = args.steady;
        let samples = sample_memory(&allocator, args.steady / 10);
        let (steady, samples) = tokio::join!(
            analyzing(&databases, every, drive(&allocator.url, &load)),
            samples
        );
        let steady = steady?;
        println!("steady, at random over the same tenants, keyed: {steady}");
        println!(
            "resident memory every {:?}: {}",
            args.steady / 10,
            samples
                .iter()
                .map(|&b| mib(b))
                .collect::<Vec<_>>()
                .join(", ")
        );
        report.ok += steady.ok;
        report.acks.extend(steady.acks);
        for (code, n) in steady.errors {
            *report.errors.entry(code).or_default() += n;
        }
    }
    allocator.stop().await?;
    println!("{}", VerificationLine(&report));
    Ok(report.verification().passed())
}

/// The allocator's resident memory every `every`, ten times.
async fn sample_memory(allocator: &SpawnedAllocator, every: Duration) -> Vec<Option<u64>> {
    let mut samples = Vec::with_capacity(10);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    for _ in 0..10 {
        ticks.tick().await;
        samples.push(allocator.resident_bytes());
    }
    samples
}

/// Runs `work`; meanwhile analyzes each of the services' `databases` on
/// PostgreSQL (`None` for one on SQLite) `every` so often, as autovacuum
/// would. Each connection keeps the plans it made while the tables were
/// empty (sequential scans) until its tables are analyzed, which a fresh
/// database's are not in a run of seconds, nor ever on a server that runs
/// without autovacuum.
async fn analyzing<T>(
    databases: &[Option<&str>],
    every: Option<Duration>,
    work: impl Future<Output = T>,
) -> T {
    let analyze = async {
        let urls: Vec<&str> = databases.iter().flatten().copied().collect();
        let Some(every) = every.filter(|every| !every.is_zero() && !urls.is_empty()) else {
            return std::future::pending().await;
        };
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            for url in &urls {
                if let Err(e) = analyze(url).await {
                    eprintln!("ANALYZE failed: {e}");
                    return std::future::pending().await;
                }
            }
        }
    };
    tokio::select! {
        out = work => out,
        never = analyze => never,
    }
}

/// The first SIGINT or SIGTERM, named, and the exit status it calls for
/// (128 and its number, as a shell reports a process it ended).
async fn interrupted() -> (&'static str, u8) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => ("interrupted", 130),
        _ = term.recv() => ("terminated", 143),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let command = async {
        match Cli::parse().command {
            Command::Run(args) => run(args).await,
            Command::Compare(args) => compare(args).await,
            Command::Memory(args) => memory(args).await,
            Command::Audit(args) => audit(args).await,
            Command::Neighbours(args) => neighbours(args).await,
            Command::Replicas(args) => replicas(args).await,
            Command::Targets(args) => targets(args).await,
        }
    };
    // Interrupted, the command is dropped: the services it started are
    // killed, and their databases removed, as it goes.
    let passed = tokio::select! {
        passed = command => passed?,
        (signal, code) = interrupted() => {
            eprintln!("{signal}: stopping the services started and removing their databases");
            return Ok(ExitCode::from(code));
        }
    };
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
