//! `numbering-bench`, briefly: `replicas` (several allocator processes on one
//! database, driven together, one verdict over all their answers) and
//! `targets` (every workload of the performance targets).

use numbering::db::Backend;
use sqlx::{Connection, PgConnection};

use crate::helpers::{admin_url, spawn_allocator};

/// Runs `numbering-bench` with `args` and the test binaries; its stdout and
/// stderr, once it has succeeded.
async fn bench(args: &[&str]) -> (String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_numbering-bench"))
        .args(args)
        .args([
            "--database-url",
            admin_url(),
            "--allocator-bin",
            env!("CARGO_BIN_EXE_number-allocator"),
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
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
