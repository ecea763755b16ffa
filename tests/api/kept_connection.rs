//! The connection a group commit lane keeps between its statements: out of
//! the pool while kept, never kept past its bounds or out of a small pool,
//! and a dead one replaced at once. A transaction cut off while it begins
//! leaves no connection in the pool inside it.

use std::time::Duration;

use numbering::db::{Backend, KEEP_MIN_POOL, KeptConnection, PoolSettings};
use sqlx::PgPool;

use crate::helpers::{Link, TcpProxy, TestDb, admin_url};

const LONG: Duration = Duration::from_hours(1);

async fn pool(db: &TestDb, max_connections: u32) -> PgPool {
    db.pool(&PoolSettings {
        max_connections,
        acquire_timeout: Duration::from_millis(500),
        operation_timeout: Duration::from_mins(1),
        create_missing: true,
    })
    .await
}

async fn backend_pid(conn: &mut sqlx::PgConnection) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
}

/// Ends a backend and waits until the server has no such session.
async fn terminate(pid: i32) {
    let admin = PgPool::connect(admin_url()).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&admin)
        .await
        .unwrap();
    let mut gone = tokio::time::interval(Duration::from_millis(10));
    loop {
        gone.tick().await;
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(pid)
                .fetch_one(&admin)
                .await
                .unwrap();
        if !alive {
            return;
        }
    }
}

/// Takes a connection, runs a statement on it and keeps it; its backend.
async fn take_and_keep(kept: &KeptConnection) -> i32 {
    let mut conn = kept.take().await.unwrap();
    let pid = backend_pid(&mut conn).await.unwrap();
    conn.keep();
    pid
}

#[tokio::test]
async fn a_kept_connection_serves_the_next_taker_and_stays_out_of_the_pool() {
    let db = TestDb::create(Backend::Postgres).await;
    let pool = pool(&db, KEEP_MIN_POOL).await;
    let kept = KeptConnection::with_bounds(pool.clone(), LONG, LONG);
    let pid = take_and_keep(&kept).await;

    // Every other connection of the pool can be had, and no more.
    let mut others = Vec::new();
    for _ in 1..KEEP_MIN_POOL {
        others.push(pool.acquire().await.unwrap());
    }
    pool.acquire()
        .await
        .expect_err("the kept connection is out of the pool");
    assert_eq!(take_and_keep(&kept).await, pid, "the same session again");

    kept.release();
    let mut back = pool.acquire().await.expect("released to the pool");
    backend_pid(&mut back).await.unwrap();
    drop(back);

    // Once released, nothing is kept, so the pool can close.
    take_and_keep(&kept).await;
    drop(others);
    tokio::time::timeout(Duration::from_secs(5), pool.close())
        .await
        .expect("every connection back in the pool");
}

#[tokio::test]
async fn a_pool_smaller_than_the_minimum_keeps_nothing() {
    let db = TestDb::create(Backend::Postgres).await;
    let pool = pool(&db, KEEP_MIN_POOL - 1).await;
    let kept = KeptConnection::with_bounds(pool.clone(), LONG, LONG);
    take_and_keep(&kept).await;
    let mut all = Vec::new();
    for _ in 0..KEEP_MIN_POOL - 1 {
        all.push(
            pool.acquire()
                .await
                .expect("no connection kept out of a small pool"),
        );
    }
}

#[tokio::test]
async fn a_connection_past_its_bounds_goes_back_to_the_pool_which_tests_it() {
    let db = TestDb::create(Backend::Postgres).await;
    let pool = pool(&db, KEEP_MIN_POOL).await;
    for (idle, life) in [(Duration::ZERO, LONG), (LONG, Duration::ZERO)] {
        let kept = KeptConnection::with_bounds(pool.clone(), idle, life);
        let pid = take_and_keep(&kept).await;
        terminate(pid).await;
        let mut next = kept.take().await.unwrap();
        let now = backend_pid(&mut next)
            .await
            .expect("a tested connection from the pool");
        assert_ne!(now, pid, "idle bound {idle:?}, life bound {life:?}");
    }
}

#[tokio::test]
async fn a_connection_that_failed_is_replaced_by_the_next_take() {
    let db = TestDb::create(Backend::Postgres).await;
    let pool = pool(&db, KEEP_MIN_POOL).await;
    let kept = KeptConnection::with_bounds(pool.clone(), LONG, LONG);
    let pid = take_and_keep(&kept).await;
    terminate(pid).await;

    // Within its bounds the kept connection is taken untested: its work
    // fails, and a taker keeps only a connection whose work succeeded.
    let mut dead = kept.take().await.unwrap();
    backend_pid(&mut dead)
        .await
        .expect_err("the kept session was ended");
    drop(dead);
    let mut next = kept.take().await.unwrap();
    assert_ne!(backend_pid(&mut next).await.unwrap(), pid);
}

/// A durable transaction whose caller gives up while its `BEGIN` is on the
/// wire (a time-out, a call cancelled) leaves the connection outside any
/// transaction: the next statement on it commits on its own. Were it left
/// inside, the next borrower's writes (a lane's counter raised under
/// numbers it answers) would run in a transaction nobody commits, and be
/// rolled back when the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_cut_off_while_it_begins_leaves_no_connection_inside_it() {
    let db = TestDb::create(Backend::Postgres).await;
    let (proxy, proxied) = TcpProxy::before_database(&db.url).await;
    let direct = pool(&db, 2).await;
    sqlx::query("CREATE TABLE probe (n INT)")
        .execute(&direct)
        .await
        .unwrap();
    let settings = PoolSettings {
        max_connections: 1,
        acquire_timeout: Duration::from_secs(5),
        operation_timeout: Duration::from_mins(1),
        create_missing: false,
    };
    let through = numbering::db::connect_postgres(&proxied.parse().unwrap(), &settings)
        .await
        .unwrap();
    // Taken first, as a lane takes the connection it keeps.
    let mut conn = through.acquire().await.unwrap();

    // The BEGIN is written, and its answer held back until the caller has
    // given up.
    proxy.set(Link::Frozen);
    let begun = tokio::time::timeout(
        Duration::from_millis(200),
        numbering::db::begin_durable_on(&mut conn),
    )
    .await
    .is_ok();
    assert!(!begun, "BEGIN answered through a frozen link");
    drop(conn);
    proxy.set(Link::Pass);

    sqlx::query("INSERT INTO probe VALUES (1)")
        .execute(&through)
        .await
        .unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM probe")
        .fetch_one(&direct)
        .await
        .unwrap();
    assert_eq!(seen, 1, "the insert ran in a transaction left open");
}
