//! `numbering-bench`, briefly: `replicas` (several allocator processes on one
//! database, driven together, one verdict over all their answers) and
//! `targets` (every workload of the performance targets).

use numbering::db::Backend;
use sqlx::{Connection, PgConnection};

use crate::helpers::{admin_url, spawn_allocator};

/// Runs `numbering-bench` with `args` and the test binaries; its stdout and
/// stderr, once it has succeeded.
async fn bench(args: &[&str]) -> (String, String) {
    let (success, stdout, stderr) = bench_with(args, &[]).await;
    assert!(success, "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// Runs `numbering-bench` with `args` (after which the test binaries and
/// PostgreSQL, unless `args` name others) and the environment `env` added;
/// whether it succeeded, its stdout and stderr.
async fn bench_with(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_numbering-bench"))
        .args(args)
        .args(defaults(args))
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stdout, stderr)
}

/// The database and allocator of a test run, where `args` do not name theirs.
fn defaults(args: &[&str]) -> Vec<&'static str> {
    let mut defaults = Vec::new();
    if !args.contains(&"--database-url") {
        defaults.extend(["--database-url", admin_url()]);
    }
    if !args.contains(&"--allocator-bin") {
        defaults.extend(["--allocator-bin", env!("CARGO_BIN_EXE_number-allocator")]);
    }
    defaults
}

/// A run in which every call failed acknowledged no number, and proves
/// nothing: it fails, and says why (here, an allocator asked to create
/// invoices answers UNIMPLEMENTED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_which_every_call_failed_does_not_pass() {
    let app = spawn_allocator(Backend::Postgres).await;
    let url = app.server.url();
    let args = [
        "run",
        "--url",
        &url,
        "--call",
        "create-invoice",
        "--clients",
        "2",
        "--duration",
        "200ms",
    ];
    let (success, stdout, stderr) = bench_with(&args, &[]).await;
    assert!(!success, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("VERIFICATION FAILED: no number was acknowledged"),
        "{stdout}"
    );
    assert!(stdout.contains("calls ok: 0 "), "{stdout}");
}

/// Settings that make no run are refused before anything starts, naming
/// the setting.
#[tokio::test]
async fn settings_that_make_no_run_are_refused() {
    for (args, said) in [
        (&["run", "--clients", "0"][..], "--clients"),
        (&["run", "--duration", "0s"], "--duration"),
        (&["run", "--tenants", "0"], "--tenants"),
        (
            &["run", "--clients", "2", "--connections", "3"],
            "--connections 3",
        ),
        (
            &["run", "--call", "reserve-confirm", "--count", "3"],
            "--count",
        ),
        (
            &[
                "run",
                "--call",
                "create-invoice",
                "--commit-mode",
                "per-call",
            ],
            "--commit-mode",
        ),
        (&["targets", "--rounds", "0"], "--rounds"),
        (
            &["replicas", "--replicas", "3", "--connections", "2"],
            "--replicas 3",
        ),
    ] {
        let (success, stdout, stderr) = bench_with(args, &[]).await;
        assert!(!success, "{args:?}: {stdout}\n{stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert!(!stdout.contains("calls ok"), "{args:?}: {stdout}");
    }
}

/// The allocator a run starts takes its settings from the run alone: a
/// rate limit and one commit per call in the environment do not reach it,
/// so no call is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_a_run_starts_take_no_settings_from_its_environment() {
    let args = ["run", "--clients", "4", "--duration", "300ms"];
    let env = [
        ("NUMBERING_TENANT_RATE_LIMIT", "1"),
        ("NUMBERING_TENANT_RATE_WAIT", "0s"),
        ("NUMBERING_COMMIT_MODE", "per-call"),
    ];
    let (success, stdout, stderr) = bench_with(&args, &env).await;
    assert!(success, "{stdout}\n{stderr}");
    assert!(stdout.contains("; failed: 0 {}"), "{stdout}");
    assert!(stdout.contains("each series exactly 1..=N"), "{stdout}");
    // And the server's durability, which every figure depends on, is said.
    assert!(stdout.contains("PostgreSQL: fsync "), "{stdout}");
}

/// The benchmark's temporary directories in `dir`.
fn left_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("numbering_bench_"))
        .collect()
}

/// A service that wrote its database and then failed to start: the run
/// fails, and removes that database all the same.
#[tokio::test]
async fn a_run_whose_service_fails_to_start_leaves_no_database() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("allocator-that-fails");
    std::fs::write(
        &script,
        "#!/bin/sh\nmkdir -p \"$NUMBERING_DATA_DIR\"\ntouch \"$NUMBERING_DATA_DIR/allocator.sqlite3\"\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let runs = tmp.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    let script = script.display().to_string();
    let args = [
        "run",
        "--database-url",
        "sqlite:",
        "--allocator-bin",
        &script,
    ];
    let (success, stdout, stderr) =
        bench_with(&args, &[("TMPDIR", &runs.display().to_string())]).await;
    assert!(!success, "{stdout}\n{stderr}");
    assert!(stderr.contains("did not start listening"), "{stderr}");
    assert_eq!(left_in(&runs), Vec::<String>::new());

    // One that failed before it made anything: nothing to remove, and no
    // error about it.
    let args = [
        "run",
        "--database-url",
        "sqlite:",
        "--allocator-bin",
        "/bin/false",
    ];
    let (success, stdout, stderr) =
        bench_with(&args, &[("TMPDIR", &runs.display().to_string())]).await;
    assert!(!success, "{stdout}\n{stderr}");
    assert!(stderr.contains("did not start listening"), "{stderr}");
    assert!(!stderr.contains("removing"), "{stderr}");
    assert_eq!(left_in(&runs), Vec::<String>::new());
}

/// A run stopped by SIGTERM stops the allocator it started and removes its
/// database before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_removes_the_database_it_made() {
    let runs = tempfile::tempdir().unwrap();
    let mut bench = tokio::process::Command::new(env!("CARGO_BIN_EXE_numbering-bench"))
        .args([
            "run",
            "--database-url",
            "sqlite:",
            "--duration",
            "1h",
            "--clients",
            "2",
        ])
        .args(["--allocator-bin", env!("CARGO_BIN_EXE_number-allocator")])
        .env("TMPDIR", runs.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Driving: the allocator has made its database, and serves the calls
    // (its ledger's write-ahead log holds them).
    let started = std::time::Instant::now();
    loop {
        let made = left_in(runs.path());
        if let [dir] = &made[..]
            && runs.path().join(dir).join("allocator.sqlite3-wal").exists()
        {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_mins(1),
            "the run made no database: {made:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(bench.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), bench.wait())
        .await
        .expect("the run stops")
        .unwrap();
    assert_eq!(output.code(), Some(143));
    assert_eq!(left_in(runs.path()), Vec::<String>::new());
}

/// Two replicas on one PostgreSQL database for half a second each: a row per
/// workload and replica count, each verified, and the command succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicas_benchmark_verifies_the_answers_of_every_replica() {
    let (stdout, _) = bench(&[
        "replicas",
        "--replicas",
        "2",
        "--duration",
        "500ms",
        "--clients",
        "4",
        "--connections",
        "2",
    ])
    .await;
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|line| line.starts_with("| one") || line.starts_with("| 1,000"))
        .map(|line| line.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    for row in &rows {
        // | workload | replicas | calls/s | vs 1 | p99 | failed | verified |
        assert!(row[3].parse::<f64>().unwrap() > 0.0, "{stdout}");
        assert_eq!(row[7], "yes", "{stdout}");
    }
    assert_eq!(
        rows.iter().map(|row| row[2]).collect::<Vec<_>>(),
        ["1", "2", "1", "2"]
    );
}

/// `run --reissue` configures every tenant's series to reissue before it
/// drives them: each series it called reads as reissuing, and its answers
/// are verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_reissue_drives_series_that_reissue() {
    let app = spawn_allocator(Backend::Postgres).await;
    let url = app.server.url();
    let (stdout, _) = bench(&[
        "run",
        "--url",
        &url,
        "--call",
        "reserve-confirm",
        "--reissue",
        "--tenants",
        "3",
        "--clients",
        "4",
        "--duration",
        "300ms",
    ])
    .await;
    assert!(stdout.contains("no duplicates"), "{stdout}");
    let mut conn = PgConnection::connect(&app.db.url).await.unwrap();
    let series: Vec<(String, String)> =
        sqlx::query_as("SELECT series, gap_policy FROM series ORDER BY tenant_id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        series.len(),
        3,
        "the default series of each tenant: {series:?}"
    );
    for (name, policy) in &series {
        assert_eq!((name.as_str(), policy.as_str()), ("invoice", "reissue"));
    }
}

/// One brief round of `targets` on PostgreSQL, the writer's included: a row
/// with a figure for every target, every answer verified (`CreateInvoice`'s
/// invoice numbers among them), and the command succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_targets_benchmark_measures_every_target_and_verifies_every_answer() {
    let (stdout, stderr) = bench(&[
        "targets",
        "--rounds",
        "1",
        "--duration",
        "300ms",
        "--clients",
        "4",
        "--connections",
        "2",
        "--writer-bin",
        env!("CARGO_BIN_EXE_invoice-writer"),
    ])
    .await;
    // | target | needed | each round | met in every round |
    let rows = table(&stdout, "| target |");
    assert_eq!(
        rows.iter().map(|row| row[1]).collect::<Vec<_>>(),
        [
            "group commit ÷ no-op",
            "group commit p99",
            "group commit ÷ one commit per call",
            "keyed group commit ÷ no-op",
            "Reserve + Confirm calls ÷ no-op",
            "1,000 tenants: group commit ÷ one commit per call",
            "CreateInvoice ÷ the writer's no-op",
        ],
        "{stdout}"
    );
    for row in &rows {
        let figure: f64 = row[3]
            .trim_start_matches('<')
            .trim_end_matches(['%', '×'])
            .trim_end_matches(" ms")
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}\n{stdout}", row[3]));
        assert!(figure > 0.0, "{stdout}");
    }
    assert!(
        stdout.contains("no call failed: true"),
        "{stdout}\n{stderr}"
    );
    let invoices = stderr
        .lines()
        .find(|line| line.starts_with("round 1, CreateInvoice:"))
        .unwrap_or_else(|| panic!("no CreateInvoice run\n{stderr}"));
    assert!(invoices.contains("failed 0, verified: true"), "{invoices}");

    // | workload | load generator | allocator | writer | PostgreSQL | the rest | idle |
    let spent = table(&stdout, "| workload |");
    assert_eq!(
        spent.iter().map(|row| row[1]).collect::<Vec<_>>(),
        [
            "no-op",
            "group commit",
            "keyed group commit",
            "Reserve + Confirm pair",
            "one commit per call",
            "1,000 tenants, group commit",
            "1,000 tenants, one commit per call",
            "the writer's no-op",
            "CreateInvoice",
        ],
        "{stdout}"
    );
    let micros = |cell: &str| -> f64 {
        cell.strip_suffix(" µs")
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("{cell}: not a time per call\n{stdout}"))
    };
    // Every party of every workload measured: the writer where one ran.
    let mut sums = [0.0; 5];
    for row in &spent {
        let writer = row[1].contains("writer") || row[1] == "CreateInvoice";
        for (sum, column) in sums.iter_mut().zip([2, 3, 4, 5, 6]) {
            if column == 4 && !writer {
                assert_eq!(row[column], "–", "{stdout}");
            } else {
                *sum += micros(row[column]);
            }
        }
        let idle: f64 = row[7].trim_end_matches('%').parse().expect("an idle share");
        assert!((0.0..=100.0).contains(&idle), "{stdout}");
    }
    // The load generator, the allocator and the writer each used some, and
    // PostgreSQL too where it runs on this machine.
    assert!(sums[..3].iter().all(|&sum| sum > 0.0), "{stdout}");
    let local = url::Url::parse(admin_url()).ok().and_then(|url| {
        url.host_str()
            .map(|host| ["127.0.0.1", "localhost"].contains(&host))
    });
    if local == Some(true) {
        assert!(sums[3] > 0.0, "{stdout}");
    }
}

/// The rows of the Markdown table whose header starts with `header`, each
/// split into trimmed cells (the first and last empty).
fn table<'a>(stdout: &'a str, header: &str) -> Vec<Vec<&'a str>> {
    stdout
        .lines()
        .skip_while(|line| !line.starts_with(header))
        .skip(2)
        .take_while(|line| line.starts_with("| "))
        .map(|line| line.split('|').map(str::trim).collect())
        .collect()
}

/// `memory` with a steady phase, briefly, on PostgreSQL analyzed every
/// 100 ms: the resident set after the new tenants, ten samples during the
/// steady calls, every answer of both phases verified, no analyze failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_benchmark_samples_a_steady_run_and_verifies_both_phases() {
    let (stdout, stderr) = bench(&[
        "memory",
        "--tenants",
        "200",
        "--clients",
        "4",
        "--steady",
        "1s",
        "--analyze-every",
        "100ms",
    ])
    .await;
    assert!(
        stdout.contains("after 200 distinct tenants"),
        "{stdout}\n{stderr}"
    );
    let samples = stdout
        .lines()
        .find_map(|line| line.strip_prefix("resident memory every 100ms: "))
        .unwrap_or_else(|| panic!("no samples\n{stdout}"));
    assert_eq!(samples.split(", ").count(), 10, "{samples}");
    assert!(
        samples.split(", ").all(|sample| sample.ends_with(" MiB")),
        "{samples}"
    );
    // Both phases together: more numbers than tenants, each series 1..=N.
    let verified = stdout
        .lines()
        .find(|line| line.starts_with("verified: "))
        .unwrap_or_else(|| panic!("no verdict\n{stdout}"));
    assert!(
        verified.contains("over 200 series, no duplicates, each series exactly 1..=N"),
        "{verified}"
    );
    let numbers: u64 = verified
        .trim_start_matches("verified: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{verified}"));
    assert!(
        numbers > 200,
        "the steady answers are not verified: {verified}"
    );
    assert!(!stderr.contains("ANALYZE failed"), "{stderr}");
}
