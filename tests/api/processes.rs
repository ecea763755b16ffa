//! Real allocator processes: two sharing one database, and one killed with
//! SIGKILL under load, then restarted.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use nix::sys::signal::{Signal, kill};
use numbering::{db::Backend, proto::number_allocator_client::NumberAllocatorClient};
use rstest_reuse::apply;
use tokio::sync::Notify;

use crate::backends;
use crate::helpers::{
    PATIENCE, TestDb, allocate, allocate_concurrently, allocator_binary, assert_exactly_one_to,
    start,
};

/// Two allocator processes on one database, started together, each taking 500
/// concurrent calls for the same tenant: together they hand out exactly
/// 1..=1000. Under group commit the two contend for every batch.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_database_never_hand_out_the_same_number(#[case] backend: Backend) {
    two_processes_share_one_counter(backend, &[]).await;
}

/// The same with one commit per call: the two contend for every number.
/// SQLite's lock favours the process that just wrote, so 1,000 calls queued
/// one commit each would outwait the default acquire, database and request time-outs: this is
/// about uniqueness, so they get longer.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_committing_per_call_never_hand_out_the_same_number(
    #[case] backend: Backend,
) {
    two_processes_share_one_counter(
        backend,
        &[
            "--commit-mode",
            "per-call",
            "--db-acquire-timeout",
            "30s",
            "--db-timeout",
            "30s",
            "--request-timeout",
            "60s",
        ],
    )
    .await;
}

async fn two_processes_share_one_counter(backend: Backend, args: &[&str]) {
    let db = TestDb::create(backend).await;
    let process = || {
        let mut command = allocator_binary(&db.url);
        command.args(args);
        start(command)
    };
    let (first, second) = tokio::join!(process(), process());
    let (a, b) = tokio::join!(
        NumberAllocatorClient::connect(first.url()),
        NumberAllocatorClient::connect(second.url())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let calls = || (0..500).map(|_| allocate("shared", "", 1)).collect();
    let (from_first, from_second) = tokio::join!(
        allocate_concurrently(&a, calls()),
        allocate_concurrently(&b, calls())
    );
    let mut numbers = from_first.concat();
    numbers.extend(from_second.concat());
    assert_exactly_one_to(&numbers, 1000);
}

/// An allocator killed with SIGKILL in the middle of a load and restarted on
/// the same database: no number was acknowledged twice, and every number
/// acknowledged before the kill is below the next one handed out. (The
/// operating system survives a process kill, so this cannot tell a flushed
/// commit from one still in its cache: power loss is covered by the tests of
/// the durability settings, `writes_force_synchronous_commit` and
/// `connections_are_durable_and_wait_for_the_write_lock`.)
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_acknowledged_before_a_sigkill_are_never_handed_out_again(
    #[case] backend: Backend,
) {
    const CLIENTS: usize = 16;
    const BEFORE_KILL: usize = 300;

    let db = TestDb::create(backend).await;
    let running = start(allocator_binary(&db.url)).await;
    let client = NumberAllocatorClient::connect(running.url()).await.unwrap();

    // Clients allocate until their calls fail, recording every number acknowledged.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let enough = Arc::new(Notify::new());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (mut client, acknowledged, enough) =
                (client.clone(), acknowledged.clone(), enough.clone());
            tokio::spawn(async move {
                let count = 1 + u32::try_from(i % 3).unwrap();
                while let Ok(response) = client.allocate(allocate("acme", "", count)).await {
                    let mut acknowledged = acknowledged.lock().unwrap();
                    acknowledged.extend(response.into_inner().numbers.iter().map(|n| n.value));
                    if acknowledged.len() >= BEFORE_KILL {
                        enough.notify_one();
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(PATIENCE, enough.notified())
        .await
        .expect("the load did not get going");

    kill(running.pid(), Signal::SIGKILL).unwrap();
    let (status, logged) = running.wait().await;
    assert_eq!(status.code(), None, "not killed: {logged:?}");
    for client in clients {
        client.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let distinct: HashSet<i64> = acknowledged.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        acknowledged.len(),
        "a number was acknowledged twice"
    );
    let highest = *acknowledged.iter().max().unwrap();

    let restarted = start(allocator_binary(&db.url)).await;
    let next = NumberAllocatorClient::connect(restarted.url())
        .await
        .unwrap()
        .allocate(allocate("acme", "", 1))
        .await
        .expect("allocate after the restart")
        .into_inner()
        .numbers[0]
        .value;
    assert!(
        next > highest,
        "handed out {next} after a restart, but {highest} was acknowledged before the kill"
    );
}
