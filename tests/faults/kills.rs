//! The allocator process SIGKILLed under load and restarted, five times, on
//! each backend. Its clients reach it through a proxy, so the restarted
//! process (on a new port) keeps their address.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use nix::sys::signal::{Signal, kill};
use numbering::{db::Backend, proto::number_allocator_client::NumberAllocatorClient};
use rstest_reuse::apply;

use crate::{
    backends,
    checker::Load,
    helpers::{Running, TcpProxy, TestDb, allocator_binary, start},
};

const KILLS: usize = 5;
const CLIENTS: usize = 16;
/// Each call's deadline.
const DEADLINE: Duration = Duration::from_secs(2);

fn addr(running: &Running) -> SocketAddr {
    running.addr.parse().unwrap()
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allocator_killed_five_times_under_load(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let mut running = start(allocator_binary(&db.url)).await;
    let proxy = TcpProxy::start(addr(&running)).await;
    let mut load = Load::start(&proxy.url(), CLIENTS, DEADLINE);
    let mut faults = Vec::new();
    for _ in 0..KILLS {
        load.wait_for_acks(200).await;
        faults.push(Instant::now());
        kill(running.pid(), Signal::SIGKILL).unwrap();
        let (status, logs) = running.wait().await;
        assert_eq!(status.code(), None, "not killed: {logs:?}");
        running = start(allocator_binary(&db.url)).await;
        proxy.retarget(addr(&running));
    }
    load.wait_for_recovery(&faults, 200).await;
    let outcomes = load.stop().await;

    let mut allocator = NumberAllocatorClient::connect(running.url()).await.unwrap();
    outcomes
        .check(
            &format!("allocator SIGKILLed and restarted {KILLS} times ({backend:?})"),
            &faults,
            &mut allocator,
        )
        .await
        .print_and_check();
}
