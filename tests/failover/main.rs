//! Failover on the high-availability stack users run (Patroni, etcd,
//! haproxy): the leader lost under load while its standby is behind, with and
//! without Patroni's synchronous mode. Not part of `cargo test`, since it
//! installs and runs system packages: `cargo test --test failover --
//! --nocapture --test-threads=1` (CI runs it).

// Test docs speak of status codes and RPC names as plain words.
#![allow(clippy::doc_markdown)]
#![allow(unreachable_pub)]

use std::time::{Duration, Instant};

use numbering::proto::number_allocator_client::NumberAllocatorClient;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    checker::{Load, Report},
    cluster::Cluster,
    helpers::{Link, Running, allocator_binary, start, wait_for_health},
};

// Shared with the fault suite.
#[path = "../faults/checker.rs"]
mod checker;
mod cluster;
// Shared with the behaviour suite, of which this target uses a part.
#[allow(dead_code, unused_imports)]
#[path = "../api/helpers/mod.rs"]
mod helpers;

const CLIENTS: usize = 16;
/// Each call's deadline: long, so that every failure is the service's own
/// answer.
const DEADLINE: Duration = Duration::from_secs(30);
const READINESS: &str = "numbering.v1.NumberAllocator";

/// One failover under load, and what its clients saw.
struct Failover {
    report: Report,
    /// Calls that failed though started once readiness was SERVING again.
    failed_after_serving: usize,
}

/// With `synchronous_mode`, the leader is lost while its standby's
/// replication is held back: the commits it has not confirmed wait (and
/// answer UNAVAILABLE after the database time-out), so every acknowledged
/// number is on the standby Patroni promotes. Every failed call is
/// UNAVAILABLE, readiness is NOT_SERVING until the new leader takes writes,
/// and the allocator recovers through haproxy by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_standby_takes_over_with_every_acknowledged_number() {
    let failover = failover(true).await;
    failover.report.print_and_check();
    assert_eq!(
        failover.report.codes.keys().collect::<Vec<_>>(),
        ["Unavailable"],
        "{}",
        failover.report
    );
    assert_eq!(
        failover.failed_after_serving, 0,
        "calls failed after readiness was SERVING again: {}",
        failover.report
    );
}

/// Without synchronous mode, the same fault: the leader acknowledged
/// commits its standby never received, Patroni promotes the standby all the
/// same, and the numbers of those commits are handed out again. This is what
/// a synchronous standby buys; the README shows these figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_synchronous_standby_a_failover_hands_numbers_out_again() {
    let failover = failover(false).await;
    println!("{}", failover.report);
    assert!(
        failover.report.duplicates > 0,
        "no number was handed out twice, though the standby missed \
         acknowledged commits: {}",
        failover.report
    );
}

/// The allocator on the cluster under load; the standby's replication held
/// back, then the leader killed (Patroni and PostgreSQL at once) and what
/// the standby had not received dropped; the load goes on until the
/// allocator acknowledges calls again through haproxy.
async fn failover(synchronous: bool) -> Failover {
    let mut cluster = Cluster::start(synchronous).await;
    let running = start(allocator_binary(&cluster.url)).await;
    readiness(&running, ServingStatus::Serving, &cluster).await;
    let mut load = Load::start(&running.url(), CLIENTS, DEADLINE);
    load.wait_for_acks(300).await;

    // Asynchronous replication may lag by the schema itself on a loaded
    // machine: the standby is first brought in step, so that what it misses
    // is the numbers committed while it is held back.
    cluster.standby_caught_up().await;
    let leader = cluster.leader().await;
    cluster.replication_from(leader, Link::Frozen);
    if synchronous {
        // Commits wait for the standby, until the database time-out.
        load.wait_for_failures(CLIENTS).await;
    } else {
        // Commits go on without it.
        load.wait_for_acks(300).await;
    }
    let killed = Instant::now();
    cluster.kill(leader);
    cluster.replication_from(leader, Link::Cut);
    readiness(&running, ServingStatus::NotServing, &cluster).await;
    readiness(&running, ServingStatus::Serving, &cluster).await;
    let serving_again = Instant::now();
    assert!(
        load.acks_within(300).await,
        "300 more calls were not acknowledged once readiness was SERVING again: {}\n\
         == the allocator\n{}\n{}",
        load.failures_since(Duration::from_secs(5)),
        running.log_tail(15).join("\n"),
        cluster.logs()
    );
    let outcomes = load.stop().await;

    let fault = format!(
        "Patroni failover, leader killed with its standby behind, synchronous_mode {} \
         (readiness SERVING again {:.1}s after)",
        if synchronous { "on" } else { "off" },
        (serving_again - killed).as_secs_f64()
    );
    let mut allocator = NumberAllocatorClient::connect(running.url()).await.unwrap();
    let report = outcomes.check(&fault, &[killed], &mut allocator).await;
    Failover {
        failed_after_serving: outcomes.failures_started_after(serving_again),
        report,
    }
}

/// Waits until the allocator's readiness is `status`; otherwise fails with
/// what the cluster logged.
async fn readiness(running: &Running, status: ServingStatus, cluster: &Cluster) {
    let channel = tonic::transport::Channel::from_shared(running.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let waited = tokio::spawn(wait_for_health(channel, READINESS, status)).await;
    assert!(
        waited.is_ok(),
        "readiness did not become {status:?}:\n{}",
        cluster.logs()
    );
}
