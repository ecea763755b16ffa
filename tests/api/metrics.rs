//! Prometheus metrics, scraped from the real binary's `/metrics` after
//! traffic.

use std::collections::BTreeMap;

use numbering::{
    db::Backend,
    proto::{
        invoice_writer_client::InvoiceWriterClient, number_allocator_client::NumberAllocatorClient,
    },
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{
    Running, TestDb, allocate, allocator_binary, import_invoice, invoice_request, start,
    wait_for_health, writer_binary,
};

/// One sample: a metric's name, its labels, its value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Fetches `GET /metrics` at `addr`; the status line and the body.
async fn scrape(addr: &str, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The samples of a text exposition (comments skipped).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap();
            let Some((name, labels)) = series.split_once('{') else {
                return (series.to_owned(), BTreeMap::new(), value);
            };
            let labels = labels
                .trim_end_matches('}')
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once("=\"").unwrap();
                    (key.to_owned(), value.trim_end_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value)
        })
        .collect()
}

/// The value of the sample named `name` with exactly `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .iter()
        .find(|(n, l, _)| n == name && *l == labels)
        .map(|(_, _, v)| *v)
}

/// Starts a service binary with metrics on a port of its own; it and the
/// metrics address.
async fn start_with_metrics(mut command: tokio::process::Command) -> (Running, String) {
    command.args(["--metrics-listen", "127.0.0.1:0"]);
    let mut running = start(command).await;
    let listening = running
        .wait_for_event(|event| event["metrics_addr"].is_string())
        .await;
    let addr = listening["metrics_addr"].as_str().unwrap().to_owned();
    (running, addr)
}

/// A channel to `running` once its readiness (`service`) is SERVING.
async fn ready(running: &Running, service: &str) -> tonic::transport::Channel {
    let channel = tonic::transport::Channel::from_shared(running.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    wait_for_health(channel.clone(), service, ServingStatus::Serving).await;
    channel
}

/// The allocator with `--metrics-listen`: after two allocations and a
/// refused call, `/metrics` holds the conventional gRPC server metrics by
/// service, method, type and code, the allocator's own metrics, and no
/// tenant id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allocator_exports_grpc_and_its_own_metrics_after_traffic() {
    let db = TestDb::create(Backend::Postgres).await;
    let (running, metrics_addr) = start_with_metrics(allocator_binary(&db.url)).await;
    let channel = ready(&running, "numbering.v1.NumberAllocator").await;
    let mut client = NumberAllocatorClient::new(channel);
    for _ in 0..2 {
        client
            .allocate(allocate("tenant-secret-7", "", 2))
            .await
            .unwrap();
    }
    let refused = client
        .allocate(allocate("tenant-secret-7", "", 5000))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    let (status, text) = scrape(&metrics_addr, "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(!text.contains("tenant-secret-7"), "a tenant id in:\n{text}");
    assert!(text.contains("# TYPE grpc_server_handling_seconds histogram"));
    let samples = samples(&text);
    let allocate = [
        ("grpc_service", "numbering.v1.NumberAllocator"),
        ("grpc_method", "Allocate"),
        ("grpc_type", "unary"),
    ];
    let with = |code: &'static str| {
        let mut labels = allocate.to_vec();
        labels.push(("grpc_code", code));
        labels
    };
    let expected = [
        ("grpc_server_started_total", allocate.to_vec(), 3.0),
        ("grpc_server_handled_total", with("OK"), 2.0),
        ("grpc_server_handled_total", with("InvalidArgument"), 1.0),
        ("grpc_server_handling_seconds_count", with("OK"), 2.0),
        (
            "numbering_numbers_allocated_total",
            vec![("state", "issued")],
            4.0,
        ),
        ("numbering_group_commit_batch_size_sum", vec![], 2.0),
        (
            "numbering_ready",
            vec![("grpc_service", "numbering.v1.NumberAllocator")],
            1.0,
        ),
        // The refusal by its reason: the count too large is a bad request.
        (
            "numbering_calls_failed_total",
            vec![
                ("grpc_service", "numbering.v1.NumberAllocator"),
                ("grpc_method", "Allocate"),
                ("grpc_code", "InvalidArgument"),
                ("reason", "INVALID_ARGUMENT"),
            ],
            1.0,
        ),
        ("numbering_group_commit_wait_seconds_count", vec![], 2.0),
        // The pool's maximum: the default 10.
        ("numbering_db_connections_max", vec![], 10.0),
        ("numbering_db_operations_in_flight", vec![], 0.0),
    ];
    for (name, labels, wanted) in expected {
        assert_eq!(
            value(&samples, name, &labels),
            Some(wanted),
            "{name} {labels:?} in:\n{text}"
        );
    }
    assert!(
        value(&samples, "numbering_db_connections", &[("state", "idle")]).is_some()
            && value(&samples, "numbering_db_connections", &[("state", "in_use")]).is_some(),
        "{text}"
    );
    assert_eq!(
        value(&samples, "numbering_db_operations_in_flight", &[]),
        Some(0.0),
        "{text}"
    );
    let mut infinite = with("OK");
    infinite.push(("le", "+Inf"));
    assert_eq!(
        value(&samples, "grpc_server_handling_seconds_bucket", &infinite),
        Some(2.0),
        "{text}"
    );
    assert!(
        value(
            &samples,
            "numbering_db_operation_seconds_count",
            &[("outcome", "ok")]
        )
        .is_some_and(|count| count >= 2.0),
        "{text}"
    );
    let (status, _) = scrape(&metrics_addr, "/other").await;
    assert!(status.contains(" 404 "), "{status}");
}

/// The writer with `--metrics-listen`: an invoice whose first number was
/// taken by an imported invoice shows one conflict, retried; its calls to the
/// allocator by method and code; its own gRPC and readiness metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_exports_its_conflicts_and_allocator_calls() {
    let allocator_db = TestDb::create(Backend::Postgres).await;
    let allocator = start(allocator_binary(&allocator_db.url)).await;
    let writer_db = TestDb::create(Backend::Postgres).await;
    import_invoice(&writer_db.invoice_store().await, "acme", 1, "INV-001").await;
    let (writer, metrics_addr) =
        start_with_metrics(writer_binary(&writer_db.url, &allocator.url())).await;
    let channel = ready(&writer, "numbering.v1.InvoiceWriter").await;
    let created = InvoiceWriterClient::new(channel)
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap();
    assert_eq!(created.invoice_number, "INV-002");

    let (_, text) = scrape(&metrics_addr, "/metrics").await;
    let samples = samples(&text);
    let client = |method: &'static str| {
        vec![
            ("grpc_service", "numbering.v1.NumberAllocator"),
            ("grpc_method", method),
            ("grpc_type", "unary"),
            ("grpc_code", "OK"),
        ]
    };
    let expected = [
        (
            "numbering_invoice_number_conflicts_total",
            vec![("outcome", "retried")],
            1.0,
        ),
        ("grpc_client_handled_total", client("Reserve"), 2.0),
        ("grpc_client_handled_total", client("Confirm"), 2.0),
        (
            "grpc_server_handled_total",
            vec![
                ("grpc_service", "numbering.v1.InvoiceWriter"),
                ("grpc_method", "CreateInvoice"),
                ("grpc_type", "unary"),
                ("grpc_code", "OK"),
            ],
            1.0,
        ),
        (
            "numbering_ready",
            vec![("grpc_service", "numbering.v1.InvoiceWriter")],
            1.0,
        ),
        ("numbering_db_connections_max", vec![], 10.0),
    ];
    for (name, labels, wanted) in expected {
        assert_eq!(
            value(&samples, name, &labels),
            Some(wanted),
            "{name} {labels:?} in:\n{text}"
        );
    }
    assert!(!text.contains("acme"), "a tenant id in:\n{text}");
}
