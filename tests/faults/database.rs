//! PostgreSQL faults under load: every connection of the service terminated,
//! the server stopped as a crash would and started again, the network to it
//! cut and restored or slowed, and the database frozen (answering nothing).

use std::time::{Duration, Instant};

use numbering::{db::Backend, proto::number_allocator_client::NumberAllocatorClient};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    checker::{Load, Report},
    helpers::{
        Link, Running, TcpProxy, TestDb, Throwaway, allocator_binary, start, wait_for_health,
    },
};

const CLIENTS: usize = 16;
/// Each call's deadline: long, so that every failure is the service's own
/// answer.
const DEADLINE: Duration = Duration::from_secs(30);
const READINESS: &str = "numbering.v1.NumberAllocator";

/// The allocator's database connections terminated three times under load
/// (`pg_terminate_backend`, as a failover or an administrator would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_connections_terminated_under_load() {
    let db = TestDb::create(Backend::Postgres).await;
    let running = start(allocator_binary(&db.url)).await;
    let mut load = Load::start(&running.url(), CLIENTS, DEADLINE);
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
    finish(
        load,
        &running,
        "database connections terminated 3 times",
        &faults,
    )
    .await;
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
    readiness(&running, ServingStatus::Serving).await;
    let mut load = Load::start(&running.url(), CLIENTS, DEADLINE);

    load.wait_for_acks(300).await;
    let crashed = Instant::now();
    let server = tokio::task::spawn_blocking(move || server.crash().map(|()| server))
        .await
        .unwrap()
        .expect("pg_ctl stop -m immediate");
    readiness(&running, ServingStatus::NotServing).await;
    let restarted = Instant::now();
    let server = tokio::task::spawn_blocking(move || server.start_again().map(|()| server))
        .await
        .unwrap()
        .expect("pg_ctl start");
    readiness(&running, ServingStatus::Serving).await;
    let report = finish(
        load,
        &running,
        "PostgreSQL stopped -m immediate and started",
        &[restarted],
    )
    .await;
    assert_only_unavailable(&report);
    assert!(crashed < restarted);
    drop(server);
}

async fn running_channel(running: &Running) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(running.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The allocator on a fresh database that it reaches through a proxy,
/// ready, under load.
async fn loaded_behind_a_proxy() -> (TestDb, TcpProxy, Running, Load) {
    let db = TestDb::create(Backend::Postgres).await;
    let (proxy, url) = TcpProxy::before_database(&db.url).await;
    let running = start(allocator_binary(&url)).await;
    readiness(&running, ServingStatus::Serving).await;
    let load = Load::start(&running.url(), CLIENTS, DEADLINE);
    (db, proxy, running, load)
}

/// The database frozen under load (connections accepted, nothing answered)
/// for 12 s, for callers with 30 s deadlines: every call answers within the
/// database time-out (4 s) and a connection's wait, each failure
/// UNAVAILABLE, none held until a deadline; readiness is NOT_SERVING; and once
/// the database answers again the allocator recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_database_is_unavailable_within_seconds_and_recovered_from() {
    let (_db, proxy, running, mut load) = loaded_behind_a_proxy().await;

    load.wait_for_acks(300).await;
    let frozen = Instant::now();
    proxy.set(Link::Frozen);
    readiness(&running, ServingStatus::NotServing).await;
    load.wait_for_failures(2 * CLIENTS).await;
    // The fault lasts past the service's 10 s request time-out, so that a
    // call held by the frozen database would show.
    tokio::time::sleep(Duration::from_secs(12)).await;
    proxy.set(Link::Pass);
    let thawed = Instant::now();
    readiness(&running, ServingStatus::Serving).await;
    let report = finish(
        load,
        &running,
        "database frozen (30 s deadlines)",
        &[thawed],
    )
    .await;
    assert_unavailable_within_the_bound(&report);
    assert!(frozen < thawed);
}

/// The network to the database cut under load (every connection closed,
/// new ones refused) and restored: calls fail UNAVAILABLE at once, and the
/// allocator recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_to_the_database_cut_and_restored() {
    let (_db, proxy, running, mut load) = loaded_behind_a_proxy().await;

    load.wait_for_acks(300).await;
    let cut = Instant::now();
    proxy.set(Link::Cut);
    load.wait_for_failures(2 * CLIENTS).await;
    proxy.set(Link::Pass);
    let restored = Instant::now();
    let report = finish(load, &running, "network to the database cut", &[restored]).await;
    assert_only_unavailable(&report);
    assert!(cut < restored);
}

/// The network to the database slowed under load: first by 20 ms a chunk
/// each way, and calls go on without failing; then by 3 s a chunk, so that
/// every operation runs past the database time-out: calls answer
/// UNAVAILABLE within it, none is held until its deadline; and once the
/// network is back to normal the allocator recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_to_the_database_slowed() {
    let (_db, proxy, running, mut load) = loaded_behind_a_proxy().await;

    load.wait_for_acks(300).await;
    proxy.set(Link::Slow(Duration::from_millis(20)));
    load.wait_for_acks(300).await;
    assert_eq!(load.failed(), 0, "calls failed on a network 20 ms slower");
    proxy.set(Link::Slow(Duration::from_secs(3)));
    load.wait_for_failures(2 * CLIENTS).await;
    proxy.set(Link::Pass);
    let restored = Instant::now();
    let report = finish(
        load,
        &running,
        "network to the database slowed by 20 ms, then by 3 s a chunk",
        &[restored],
    )
    .await;
    assert_unavailable_within_the_bound(&report);
}

/// Every failed call answered UNAVAILABLE, and none was held past twice the
/// database time-out (4 s) and a connection's wait: well under the
/// service's 10 s request time-out.
fn assert_unavailable_within_the_bound(report: &Report) {
    assert_only_unavailable(report);
    assert!(
        report.longest_call < Duration::from_millis(9500),
        "{report}"
    );
}

/// Every failed call answered UNAVAILABLE, the code clients retry.
fn assert_only_unavailable(report: &Report) {
    assert_eq!(
        report.codes.keys().collect::<Vec<_>>(),
        ["Unavailable"],
        "{report}"
    );
}

/// Waits until the allocator's readiness is `status`.
async fn readiness(running: &Running, status: ServingStatus) {
    wait_for_health(running_channel(running).await, READINESS, status).await;
}

/// Another session holds the tenant's counter row locked for 12 s under
/// load (a stuck transaction, or another process frozen mid-commit), for
/// callers with 30 s deadlines: every call waiting on the lock answers
/// UNAVAILABLE within twice the database time-out (4 s), none is held until its
/// deadline, no statement keeps waiting in the server once its call gave up,
/// and once the lock is released the allocator goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_locked_elsewhere_is_unavailable_within_seconds() {
    let db = TestDb::create(Backend::Postgres).await;
    let running = start(allocator_binary(&db.url)).await;
    let mut load = Load::start(&running.url(), CLIENTS, DEADLINE);
    load.wait_for_acks(300).await;

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT * FROM counters WHERE tenant_id = 'acme' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    load.wait_for_failures(2 * CLIENTS).await;
    // Held past the service's 10 s request time-out, so that a call held by
    // the lock would show.
    tokio::time::sleep(Duration::from_secs(12)).await;
    // The server gave up each wait after the database time-out too: no
    // statement the allocator abandoned still waits, holding a connection.
    let stale: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
         AND wait_event_type = 'Lock' AND now() - query_start > interval '6 s'",
    )
    .bind(&db.name)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        stale, 0,
        "statements still waiting on the lock after the time-out"
    );
    holder.rollback().await.unwrap();
    let released = Instant::now();
    let report = finish(
        load,
        &running,
        "counter row locked elsewhere for 12 s",
        &[released],
    )
    .await;
    assert_unavailable_within_the_bound(&report);
}

/// Lets the load run for 300 more acknowledged calls, stops it, and checks
/// and prints what it saw.
async fn finish(load: Load, running: &Running, fault: &str, faults: &[Instant]) -> Report {
    let mut load = load;
    load.wait_for_acks(300).await;
    let outcomes = load.stop().await;
    let mut allocator = NumberAllocatorClient::connect(running.url()).await.unwrap();
    let report = outcomes.check(fault, faults, &mut allocator).await;
    report.print_and_check();
    report
}
