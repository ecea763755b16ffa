//! How `numbering-bench` prints what it measured: a run's summary, its
//! verification, and a row of the comparison table in BENCHMARKS.md.

use std::{fmt, time::Duration};

use crate::bench::Report;

impl fmt::Display for Report {
    /// Throughput, failures and latency percentiles, on two lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "calls ok: {} in {:.2?} = {:.0}/s; failed: {} {:?}",
            self.ok,
            self.elapsed,
            self.throughput(),
            self.failed(),
            self.errors
        )?;
        write!(
            f,
            "latency: p50 {:.2?}, p99 {:.2?}, p99.9 {:.2?}, max {:.2?}",
            self.latency(0.5),
            self.latency(0.99),
            self.latency(0.999),
            Duration::from_micros(self.latency.max())
        )
    }
}

/// The verification of a run's numbers, in one line.
pub struct VerificationLine<'a>(pub &'a Report);

impl fmt::Display for VerificationLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verification = self.0.verification();
        if verification.numbers == 0 {
            write!(
                f,
                "VERIFICATION FAILED: no number was acknowledged ({} calls failed: {:?})",
                self.0.failed(),
                self.0.errors
            )
        } else if verification.passed() {
            write!(
                f,
                "verified: {} numbers over {} series, no duplicates{}",
                verification.numbers,
                verification.series,
                if self.0.failed() == 0 {
                    ", each series exactly 1..=N"
                } else {
                    ""
                }
            )
        } else {
            write!(
                f,
                "VERIFICATION FAILED: {} duplicated numbers (first: {:?}); series with gaps (first missing): {:?}; malformed answers: {}",
                verification.duplicate_count,
                verification.duplicates,
                verification.gaps,
                verification.malformed
            )
        }
    }
}

/// One row of the comparison table: a workload at a number of clients, run
/// with group commit (with and without request ids), one commit per call, and
/// as a no-op.
pub struct CompareRow<'a> {
    /// What was called: one hot tenant, or many.
    pub workload: &'a str,
    /// Concurrent clients.
    pub clients: usize,
    /// The group-commit run.
    pub group: &'a Report,
    /// The group-commit run with a fresh request id on every call.
    pub keyed: &'a Report,
    /// The one-commit-per-call run.
    pub per_call: &'a Report,
    /// The health-check run: the ceiling of the stack.
    pub noop: &'a Report,
}

impl CompareRow<'_> {
    /// The table's header and separator lines.
    pub const HEADER: &'static str = "| workload | clients | group commit /s | keyed group /s | per call /s | no-op /s | group ÷ per call | keyed ÷ group | keyed ÷ per call | group ÷ no-op | group p50 | group p99 | group p99.9 | failed calls |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";
}

impl fmt::Display for CompareRow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (group, keyed, per_call, noop) = (self.group, self.keyed, self.per_call, self.noop);
        write!(
            f,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1}× | {:.0}% | {:.1}× | {:.0}% | {:.2?} | {:.2?} | {:.2?} | {} / {} / {} |",
            self.workload,
            self.clients,
            group.throughput(),
            keyed.throughput(),
            per_call.throughput(),
            noop.throughput(),
            group.throughput() / per_call.throughput(),
            100.0 * keyed.throughput() / group.throughput(),
            keyed.throughput() / per_call.throughput(),
            100.0 * group.throughput() / noop.throughput(),
            group.latency(0.5),
            group.latency(0.99),
            group.latency(0.999),
            group.failed(),
            keyed.failed(),
            per_call.failed(),
        )
    }
}
