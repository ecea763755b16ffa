//! Writer faults: its database locked by another session, so that inserts
//! wait. The call answers UNAVAILABLE within the database time-out whatever
//! the caller's deadline, and a retry with the same request id stores the
//! invoice once.

use std::time::{Duration, Instant};

use numbering::{db::Backend, proto::invoice_writer_client::InvoiceWriterClient};
use tonic::Code;

use crate::helpers::{TestDb, invoice_request, list_all, spawn_allocator, start, writer_binary};

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
