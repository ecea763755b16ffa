//! Writer faults: its database locked by another session, so that inserts
//! wait (the call answers UNAVAILABLE within the database time-out whatever
//! the caller's deadline, and a retry with the same request id stores the
//! invoice once); the writer SIGKILLed under keyed load; and its database
//! cut, frozen and slowed under keyed load.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::sys::signal::{Signal, kill};
use numbering::{db::Backend, proto::invoice_writer_client::InvoiceWriterClient};
use tokio::sync::watch;
use tonic::{Code, transport::Endpoint};

use crate::{
    checker::{Timed, recovery},
    helpers::{
        Link, PATIENCE, Running, TcpProxy, TestDb, invoice_request, list_all, spawn_allocator,
        start, writer_binary,
    },
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writers_database_locked_is_unavailable_within_seconds_and_retried_once() {
    let allocator = spawn_allocator(Backend::Postgres).await;
    let db = TestDb::create(Backend::Postgres).await;
    let writer = start(writer_binary(&db.url, &allocator.server.url())).await;
    let mut client = InvoiceWriterClient::connect(writer.url()).await.unwrap();
    let mut request = invoice_request("acme");
    request.request_id = "order-1".into();
    let call = |request| {
        let mut request = tonic::Request::new(request);
        request.set_timeout(Duration::from_secs(30));
        request
    };

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE invoices IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let started = Instant::now();
    let status = client
        .create_invoice(call(request.clone()))
        .await
        .unwrap_err();
    let took = started.elapsed();
    holder.rollback().await.unwrap();
    println!(
        "fault: writer's invoices locked elsewhere | answered {:?} in {:.2}s",
        status.code(),
        took.as_secs_f64()
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(took < Duration::from_millis(9500), "took {took:?}");

    let stored = client
        .create_invoice(call(request.clone()))
        .await
        .expect("the retry once the lock is gone")
        .into_inner();
    let again = client
        .create_invoice(call(request))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.invoice, stored.invoice);
    assert_eq!(list_all(&mut client, "acme").await.len(), 1);
}

/// Clients creating invoices, each retrying its request id until it is
/// acknowledged (as a client of an idempotent API does), while the writer is
/// SIGKILLed and restarted three times. Every request id is stored once,
/// each acknowledged answer is the stored invoice, and no invoice number is
/// stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_killed_three_times_under_keyed_load() {
    const KILLS: usize = 3;
    let allocator = spawn_allocator(Backend::Postgres).await;
    let db = TestDb::create(Backend::Postgres).await;
    let writer_on = |db: &TestDb| start(writer_binary(&db.url, &allocator.server.url()));
    let mut writer = writer_on(&db).await;
    let proxy = TcpProxy::start(writer.addr.parse().unwrap()).await;

    let mut load = KeyedLoad::start(&proxy.url(), Duration::from_secs(5));
    let mut kills = Vec::new();
    for _ in 0..KILLS {
        load.wait_for(100).await;
        let killed = Instant::now();
        kills.push((killed, killed));
        kill(writer.pid(), Signal::SIGKILL).unwrap();
        let (status, logs) = writer.wait().await;
        assert_eq!(status.code(), None, "not killed: {logs:?}");
        writer = writer_on(&db).await;
        proxy.retarget(writer.addr.parse().unwrap());
    }
    load.wait_for(100).await;
    load.stop()
        .await
        .check(
            &format!("writer SIGKILLed and restarted {KILLS} times, keyed retries"),
            &kills,
            &db,
            &writer,
        )
        .await;
}

/// The writer's own database cut off, then frozen for 6 s, then slowed by
/// 3 s a chunk, under clients retrying each request id with 30 s deadlines:
/// the writer answers UNAVAILABLE within its database time-out, or, where
/// several slow operations of one call add up past its 10 s request
/// time-out, DEADLINE_EXCEEDED then (never held to the caller's deadline);
/// it recovers by itself each time, and every request id is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writers_database_cut_frozen_and_slowed_under_keyed_load() {
    let allocator = spawn_allocator(Backend::Postgres).await;
    let db = TestDb::create(Backend::Postgres).await;
    let (proxy, url) = TcpProxy::before_database(&db.url).await;
    let writer = start(writer_binary(&url, &allocator.server.url())).await;

    let mut load = KeyedLoad::start(&writer.url(), Duration::from_secs(30));
    let mut faults = Vec::new();
    for link in [Link::Cut, Link::Frozen, Link::Slow(Duration::from_secs(3))] {
        load.wait_for(100).await;
        let injected = Instant::now();
        proxy.set(link);
        load.wait_for_failures(CLIENTS).await;
        if link == Link::Frozen {
            // Past the writer's 10 s request time-out with what went before.
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        proxy.set(Link::Pass);
        faults.push((injected, Instant::now()));
    }
    load.wait_for(100).await;
    let outcome = load.stop().await;
    assert!(
        outcome
            .failures
            .keys()
            .all(|code| code == "Unavailable" || code == "DeadlineExceeded"),
        "{:?}",
        outcome.failures
    );
    assert!(
        // The writer's own 10 s request time-out, and a little for a
        // loaded machine: far from the caller's 30 s.
        outcome.longest_failure() < Duration::from_secs(12),
        "a failure took {:?}",
        outcome.longest_failure()
    );
    outcome
        .check(
            "writer's database cut, frozen 6 s, slowed by 3 s a chunk, keyed retries",
            &faults,
            &db,
            &writer,
        )
        .await;
}

const CLIENTS: usize = 8;

/// Clients creating invoices with request ids of their own, each retried
/// until acknowledged, until stopped between two.
struct KeyedLoad {
    shared: Keyed,
    acks: watch::Receiver<usize>,
    failed: watch::Receiver<usize>,
    stop: watch::Sender<bool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

/// What the keyed clients share with the test.
#[derive(Clone)]
struct Keyed {
    /// Each acknowledged request id with the invoice it answered.
    acked: Arc<Mutex<Vec<(String, String)>>>,
    count: Arc<watch::Sender<usize>>,
    failed: Arc<watch::Sender<usize>>,
    stopping: watch::Receiver<bool>,
    failures: Arc<Mutex<BTreeMap<String, usize>>>,
    calls: Arc<Mutex<Vec<Timed>>>,
}

/// What the keyed clients saw.
struct KeyedOutcome {
    acked: Vec<(String, String)>,
    /// Failed calls by code.
    failures: BTreeMap<String, usize>,
    calls: Vec<Timed>,
}

impl KeyedLoad {
    /// Starts the clients on `url`, each call with `deadline`.
    fn start(url: &str, deadline: Duration) -> Self {
        let (count, acks) = watch::channel(0usize);
        let (failed_count, failed) = watch::channel(0usize);
        let (stop, stopping) = watch::channel(false);
        let shared = Keyed {
            acked: Arc::default(),
            count: Arc::new(count),
            failed: Arc::new(failed_count),
            stopping,
            failures: Arc::default(),
            calls: Arc::default(),
        };
        let clients = (0..CLIENTS)
            .map(|c| {
                let client = InvoiceWriterClient::new(
                    Endpoint::from_shared(url.to_owned())
                        .unwrap()
                        .connect_lazy(),
                );
                keyed_client(c, client, deadline, shared.clone())
            })
            .collect();
        Self {
            shared,
            acks,
            failed,
            stop,
            clients,
        }
    }

    /// Waits until `more` invoices beyond those so far are acknowledged.
    async fn wait_for(&mut self, more: usize) {
        let target = *self.acks.borrow() + more;
        tokio::time::timeout(PATIENCE, self.acks.wait_for(|n| *n >= target))
            .await
            .expect("invoices acknowledged in time")
            .unwrap();
    }

    /// Waits until `more` calls beyond those so far have failed.
    async fn wait_for_failures(&mut self, more: usize) {
        let target = *self.failed.borrow() + more;
        tokio::time::timeout(PATIENCE, self.failed.wait_for(|n| *n >= target))
            .await
            .expect("calls failed in time")
            .unwrap();
    }

    /// Stops the clients between two invoices.
    async fn stop(self) -> KeyedOutcome {
        self.stop.send_replace(true);
        for client in self.clients {
            client.await.unwrap();
        }
        KeyedOutcome {
            acked: self.shared.acked.lock().unwrap().clone(),
            failures: self.shared.failures.lock().unwrap().clone(),
            calls: self.shared.calls.lock().unwrap().clone(),
        }
    }
}

impl KeyedOutcome {
    /// Prints the figures and checks, from the writer's answers and its
    /// database: every request id stored once, every acknowledged invoice
    /// stored, no invoice number stored twice, every fault recovered from.
    /// The longest, over `faults` (each injected and ended), from a fault's
    /// end to the first acknowledged call after the last failure before the
    /// next fault was injected.
    fn recovery(&self, faults: &[(Instant, Instant)]) -> Option<Duration> {
        faults
            .iter()
            .enumerate()
            .map(|(i, &(_, ended))| {
                let next = faults.get(i + 1).map(|&(injected, _)| injected);
                let calls: Vec<Timed> = self
                    .calls
                    .iter()
                    .filter(|(_, answered, _)| next.is_none_or(|next| *answered < next))
                    .copied()
                    .collect();
                recovery(&calls, &[ended])
            })
            .collect::<Option<Vec<_>>>()
            .map(|times| times.into_iter().max().unwrap_or_default())
    }

    /// The longest a failed call took.
    fn longest_failure(&self) -> Duration {
        self.calls
            .iter()
            .filter(|(_, _, ok)| !ok)
            .map(|(started, ended, _)| *ended - *started)
            .max()
            .unwrap_or_default()
    }

    /// `faults`: when each was injected and when it ended.
    async fn check(
        &self,
        fault: &str,
        faults: &[(Instant, Instant)],
        db: &TestDb,
        writer: &Running,
    ) {
        let mut client = InvoiceWriterClient::connect(writer.url()).await.unwrap();
        let stored = list_all(&mut client, "acme").await;
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let twice: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT request_id FROM invoices \
             GROUP BY tenant_id, request_id HAVING count(*) > 1) AS repeated",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let stored_ids: HashSet<&str> = stored.iter().map(|i| i.id.as_str()).collect();
        let missing = self
            .acked
            .iter()
            .filter(|(_, id)| !stored_ids.contains(id.as_str()))
            .count();
        let numbers: HashSet<i64> = stored.iter().map(|i| i.number).collect();
        let recovery = self.recovery(faults);
        println!(
            "fault: {fault} | acknowledged {} invoices | stored {} | stored twice for one \
             request id {twice} | acknowledged missing {missing} | numbers stored twice {} | \
             recovery {} | longest failed call {:.2}s | failures by code {:?}",
            self.acked.len(),
            stored.len(),
            stored.len() - numbers.len(),
            recovery.map_or_else(
                || "never".to_owned(),
                |d| format!("{:.2}s", d.as_secs_f64())
            ),
            self.longest_failure().as_secs_f64(),
            self.failures,
        );
        assert!(recovery.is_some(), "did not recover");
        assert_eq!(twice, 0);
        assert_eq!(missing, 0);
        assert_eq!(
            numbers.len(),
            stored.len(),
            "an invoice number stored twice"
        );
        // Every client retried until acknowledged, so every stored invoice
        // is one acknowledged request id.
        assert_eq!(stored.len(), self.acked.len());
    }
}

/// Client `c`: creates invoices with request ids of its own, each retried
/// until acknowledged, until stopped between two.
fn keyed_client(
    c: usize,
    mut client: InvoiceWriterClient<tonic::transport::Channel>,
    deadline: Duration,
    shared: Keyed,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for k in 0.. {
            if *shared.stopping.borrow() {
                return;
            }
            let request_id = format!("order-{c}-{k}");
            let mut request = invoice_request("acme");
            request.request_id.clone_from(&request_id);
            // The same request id until it is acknowledged.
            loop {
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(deadline);
                let started = Instant::now();
                let answer = client.create_invoice(call).await;
                let timed = (started, Instant::now(), answer.is_ok());
                shared.calls.lock().unwrap().push(timed);
                match answer {
                    Ok(response) => {
                        let invoice = response.into_inner().invoice.unwrap();
                        let acked = (request_id.clone(), invoice.id);
                        shared.acked.lock().unwrap().push(acked);
                        shared.count.send_modify(|n| *n += 1);
                        break;
                    }
                    Err(status) => {
                        *shared
                            .failures
                            .lock()
                            .unwrap()
                            .entry(format!("{:?}", status.code()))
                            .or_default() += 1;
                        shared.failed.send_modify(|n| *n += 1);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    })
}
