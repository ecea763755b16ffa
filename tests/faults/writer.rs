//! Writer faults: its database locked by another session, so that inserts
//! wait (the call answers UNAVAILABLE within the database time-out whatever
//! the caller's deadline, and a retry with the same request id stores the
//! invoice once); and the writer SIGKILLed under keyed load.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::sys::signal::{Signal, kill};
use numbering::{db::Backend, proto::invoice_writer_client::InvoiceWriterClient};
use tokio::sync::watch;
use tonic::{Code, transport::Endpoint};

use crate::helpers::{
    PATIENCE, TcpProxy, TestDb, invoice_request, list_all, spawn_allocator, start, writer_binary,
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
    const CLIENTS: usize = 8;
    const KILLS: usize = 3;
    let allocator = spawn_allocator(Backend::Postgres).await;
    let db = TestDb::create(Backend::Postgres).await;
    let writer_on = |db: &TestDb| start(writer_binary(&db.url, &allocator.server.url()));
    let mut writer = writer_on(&db).await;
    let proxy = TcpProxy::start(writer.addr.parse().unwrap()).await;

    // Each acknowledged request id with the invoice it answered.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let (count, acks) = watch::channel(0usize);
    let count = Arc::new(count);
    let (stop, stopping) = watch::channel(false);
    let failures = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let client = InvoiceWriterClient::new(
                Endpoint::from_shared(proxy.url()).unwrap().connect_lazy(),
            );
            keyed_client(
                c,
                client,
                Keyed {
                    acked: acked.clone(),
                    count: count.clone(),
                    stopping: stopping.clone(),
                    failures: failures.clone(),
                },
            )
        })
        .collect();
    let wait_for = |more: usize| {
        let target = *acks.borrow() + more;
        let mut acks = acks.clone();
        async move {
            tokio::time::timeout(PATIENCE, acks.wait_for(|n| *n >= target))
                .await
                .expect("invoices acknowledged in time")
                .unwrap();
        }
    };
    for _ in 0..KILLS {
        wait_for(100).await;
        kill(writer.pid(), Signal::SIGKILL).unwrap();
        let (status, logs) = writer.wait().await;
        assert_eq!(status.code(), None, "not killed: {logs:?}");
        writer = writer_on(&db).await;
        proxy.retarget(writer.addr.parse().unwrap());
    }
    wait_for(100).await;
    stop.send_replace(true);
    for client in clients {
        client.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
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
    let missing = acked
        .iter()
        .filter(|(_, id)| !stored_ids.contains(id.as_str()))
        .count();
    let numbers: HashSet<i64> = stored.iter().map(|i| i.number).collect();
    println!(
        "fault: writer SIGKILLed and restarted {KILLS} times, keyed retries | acknowledged {} \
         invoices | stored {} | stored twice for one request id {twice} | acknowledged missing \
         {missing} | numbers stored twice {} | failures by code {:?}",
        acked.len(),
        stored.len(),
        stored.len() - numbers.len(),
        failures.lock().unwrap(),
    );
    assert_eq!(twice, 0);
    assert_eq!(missing, 0);
    assert_eq!(
        numbers.len(),
        stored.len(),
        "an invoice number stored twice"
    );
    // Every client retried until acknowledged, so every stored invoice is
    // one acknowledged request id.
    assert_eq!(stored.len(), acked.len());
}

/// What a keyed client shares with the test.
struct Keyed {
    acked: Arc<Mutex<Vec<(String, String)>>>,
    count: Arc<watch::Sender<usize>>,
    stopping: watch::Receiver<bool>,
    failures: Arc<Mutex<BTreeMap<String, usize>>>,
}

/// Client `c`: creates invoices with request ids of its own, each retried
/// until acknowledged, until stopped between two.
fn keyed_client(
    c: usize,
    mut client: InvoiceWriterClient<tonic::transport::Channel>,
    shared: Keyed,
) -> tokio::task::JoinHandle<()> {
    let Keyed {
        acked,
        count,
        stopping,
        failures,
    } = shared;
    tokio::spawn(async move {
        for k in 0.. {
            if *stopping.borrow() {
                return;
            }
            let request_id = format!("order-{c}-{k}");
            let mut request = invoice_request("acme");
            request.request_id.clone_from(&request_id);
            // The same request id until it is acknowledged.
            loop {
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(Duration::from_secs(5));
                match client.create_invoice(call).await {
                    Ok(response) => {
                        let invoice = response.into_inner().invoice.unwrap();
                        acked.lock().unwrap().push((request_id.clone(), invoice.id));
                        count.send_modify(|n| *n += 1);
                        break;
                    }
                    Err(status) => {
                        *failures
                            .lock()
                            .unwrap()
                            .entry(format!("{:?}", status.code()))
                            .or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    })
}
