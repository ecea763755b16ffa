//! `numbering-bench replicas`, briefly: several allocator processes on one
//! database, driven together, and one verdict over all their answers.

use crate::helpers::admin_url;

/// Two replicas on one PostgreSQL database for half a second each: a row per
/// workload and replica count, each verified, and the command succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicas_benchmark_verifies_the_answers_of_every_replica() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_numbering-bench"))
        .args([
            "replicas",
            "--replicas",
            "2",
            "--duration",
            "500ms",
            "--clients",
            "4",
            "--connections",
            "2",
            "--database-url",
            admin_url(),
            "--allocator-bin",
            env!("CARGO_BIN_EXE_number-allocator"),
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
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
