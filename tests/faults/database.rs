//! PostgreSQL faults under load: every connection of the service terminated,
//! and the server stopped as a crash would and started again.

use std::time::Instant;

use numbering::{db::Backend, proto::number_allocator_client::NumberAllocatorClient};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    checker::Load,
    helpers::{TestDb, Throwaway, allocator_binary, start, wait_for_health},
};

const CLIENTS: usize = 16;
const READINESS: &str = "numbering.v1.NumberAllocator";

/// The allocator's database connections terminated three times under load
/// (`pg_terminate_backend`, as a failover or an administrator would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_connections_terminated_under_load() {
    let db = TestDb::create(Backend::Postgres).await;
    let running = start(allocator_binary(&db.url)).await;
    let mut load = Load::start(&running.url(), CLIENTS);
    let admin = sqlx::PgPool::connect(crate::helpers::admin_url())
        .await
        .unwrap();
    let mut faults = Vec::new();
    for _ in 0..3 {
        load.wait_for_acks(300).await;
        faults.push(Instant::now());
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&db.name)
        .execute(&admin)
        .await
        .unwrap();
    }
    load.wait_for_acks(300).await;
    let outcomes = load.stop().await;
    let mut allocator = NumberAllocatorClient::connect(running.url()).await.unwrap();
    outcomes
        .check(
            "database connections terminated 3 times",
            &faults,
            &mut allocator,
        )
        .await
        .print_and_check();
}

/// PostgreSQL stopped with `-m immediate` (no checkpoint: it recovers from
/// its WAL) under load, then started again: readiness is NOT_SERVING while it
/// is down, and the allocator recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashed_and_started_again_under_load() {
    let server = tokio::task::spawn_blocking(Throwaway::start)
        .await
        .unwrap()
        .expect("a throwaway PostgreSQL server");
    let mut url = url::Url::parse(&server.url).unwrap();
    url.set_path("numbering");
    let running = start(allocator_binary(url.as_str())).await;
    wait_for_health(
        running_channel(&running).await,
        READINESS,
        ServingStatus::Serving,
    )
    .await;
    let mut load = Load::start(&running.url(), CLIENTS);

    load.wait_for_acks(300).await;
    let crashed = Instant::now();
    let server = tokio::task::spawn_blocking(move || server.crash().map(|()| server))
        .await
        .unwrap()
        .expect("pg_ctl stop -m immediate");
    wait_for_health(
        running_channel(&running).await,
        READINESS,
        ServingStatus::NotServing,
    )
    .await;
    let server = tokio::task::spawn_blocking(move || server.start_again().map(|()| server))
        .await
        .unwrap()
        .expect("pg_ctl start");
    wait_for_health(
        running_channel(&running).await,
        READINESS,
        ServingStatus::Serving,
    )
    .await;
    load.wait_for_acks(300).await;
    let outcomes = load.stop().await;

    let mut allocator = NumberAllocatorClient::connect(running.url()).await.unwrap();
    outcomes
        .check(
            "PostgreSQL stopped -m immediate and started",
            &[crashed],
            &mut allocator,
        )
        .await
        .print_and_check();
    drop(server);
}

async fn running_channel(running: &crate::helpers::Running) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(running.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}
