//! Two allocator processes on one database, and on one SQLite file, each
//! under its own load for the same tenant: together they never hand out a
//! number twice.

use numbering::{db::Backend, proto::number_allocator_client::NumberAllocatorClient};
use rstest_reuse::apply;
use std::time::Duration;

use crate::{
    backends,
    checker::Load,
    helpers::{TestDb, allocator_binary, start},
};

const CLIENTS: usize = 8;
const DEADLINE: Duration = Duration::from_secs(10);

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_allocator_processes_on_one_database(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let (first, second) = tokio::join!(
        start(allocator_binary(&db.url)),
        start(allocator_binary(&db.url))
    );
    let mut loads = [
        Load::start(&first.url(), CLIENTS, DEADLINE),
        Load::start(&second.url(), CLIENTS, DEADLINE),
    ];
    for load in &mut loads {
        load.wait_for_acks(500).await;
    }
    let [one, other] = loads;
    let outcomes = one.stop().await.merge(other.stop().await);

    let mut allocator = NumberAllocatorClient::connect(first.url()).await.unwrap();
    outcomes
        .check(
            &format!("two allocator processes on one database ({backend:?})"),
            &[],
            &mut allocator,
        )
        .await
        .print_and_check();
}
