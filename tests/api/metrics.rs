//! Prometheus metrics, scraped from the real binary's `/metrics` after
//! traffic.

use std::{collections::BTreeMap, time::Duration};

use nix::sys::signal::{Signal, kill};
use numbering::{
    db::Backend,
    proto::{
        invoice_writer_client::InvoiceWriterClient, number_allocator_client::NumberAllocatorClient,
    },
};
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::helpers::{
    PATIENCE, Running, TestDb, allocate, allocator_binary, create, import_invoice,
    import_invoice_in, start, start_draining, writer_binary,
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

/// The value of the sample named `name` with exactly `labels` at
/// `metrics_addr`, once there is one.
async fn counted(metrics_addr: &str, name: &str, labels: Vec<(&str, &str)>) -> Option<f64> {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let (_, text) = scrape(metrics_addr, "/metrics").await;
            let count = value(&samples(&text), name, &labels);
            if count.is_some() {
                break count;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {name} {labels:?}"))
}

/// Asserts that every metric of a text exposition says what it is.
fn assert_every_metric_is_described(text: &str) {
    for line in text.lines() {
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            let name = typed.split_whitespace().next().unwrap();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no help for {name} in:\n{text}"
            );
        }
    }
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

/// Silent connections to the metrics port, more than it holds at once, are
/// each closed once their lifetime (the first-request time-out) ends, and a
/// scrape behind them all is served: clients of this port cannot hold the
/// process's file descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_to_the_metrics_port_are_closed_and_a_scrape_is_served() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut command = allocator_binary(&db.url);
    command.args(["--first-request-timeout", "1s"]);
    let (_running, metrics_addr) = start_with_metrics(command).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(&metrics_addr).await.unwrap());
    }
    let (status, text) = tokio::time::timeout(PATIENCE, scrape(&metrics_addr, "/metrics"))
        .await
        .expect("a scrape behind the silent connections is served");
    assert!(status.contains(" 200 "), "{status}");
    assert!(text.contains("# TYPE"), "{text}");
    for mut connection in silent {
        let mut buffer = [0u8; 64];
        let closed = tokio::time::timeout(PATIENCE, async {
            while connection
                .read(&mut buffer)
                .await
                .is_ok_and(|read| read > 0)
            {}
        })
        .await;
        assert!(closed.is_ok(), "a silent metrics connection is still open");
    }
}

/// The allocator with `--metrics-listen`: after two allocations and a
/// refused call, `/metrics` holds the conventional gRPC server metrics by
/// service, method, type and code, the allocator's own metrics, and no
/// tenant id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allocator_exports_grpc_and_its_own_metrics_after_traffic() {
    let db = TestDb::create(Backend::Postgres).await;
    let (running, metrics_addr) = start_with_metrics(allocator_binary(&db.url)).await;
    let channel = running.ready("numbering.v1.NumberAllocator").await;
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
    assert_every_metric_is_described(&text);
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

/// `/metrics` is served from the moment its port is bound: while the
/// database is still being opened (here a server that accepts the
/// connection and never answers), a scrape is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_while_the_database_is_opened() {
    use tokio::io::AsyncBufReadExt;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("postgres://postgres@{}/never", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let mut child = allocator_binary(&url)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--db-acquire-timeout",
            "1h",
        ])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let metrics_addr = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(addr) = crate::helpers::event(&line)["metrics_addr"].as_str() {
                return addr.to_owned();
            }
        }
        panic!("the allocator exited");
    })
    .await
    .expect("metrics served");
    let (status, _) = tokio::time::timeout(PATIENCE, scrape(&metrics_addr, "/metrics"))
        .await
        .expect("a scrape answered while the database is opened");
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the allocator stopped waiting for its database"
    );
    held.abort();
}

/// A call its client gives up on before it is answered (the allocator's
/// counters locked elsewhere, so that it waits) is counted handled, as
/// `Canceled`, with its time: calls started and calls handled stay equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_its_client_gives_up_on_is_counted_canceled() {
    let db = TestDb::create(Backend::Postgres).await;
    let (running, metrics_addr) = start_with_metrics(allocator_binary(&db.url)).await;
    let channel = running.ready("numbering.v1.NumberAllocator").await;
    let mut client = NumberAllocatorClient::new(channel);
    client.allocate(allocate("acme", "", 1)).await.unwrap();

    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE counters IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let waiting = tokio::spawn(async move { client.allocate(allocate("acme", "", 1)).await });
    let allocate = [
        ("grpc_service", "numbering.v1.NumberAllocator"),
        ("grpc_method", "Allocate"),
        ("grpc_type", "unary"),
    ];
    let mut canceled = allocate.to_vec();
    canceled.push(("grpc_code", "Canceled"));
    let counted = |name, labels| counted(&metrics_addr, name, labels);
    // Started twice (once before), then given up on.
    while counted("grpc_server_started_total", allocate.to_vec()).await < Some(2.0) {
        tokio::task::yield_now().await;
    }
    waiting.abort();
    assert_eq!(
        counted("grpc_server_handled_total", canceled.clone()).await,
        Some(1.0)
    );
    assert_eq!(
        counted("grpc_server_handling_seconds_count", canceled).await,
        Some(1.0)
    );
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
}

/// Probes on the health-only listener (`--health-listen`, where the
/// Kubernetes manifests send them) are counted as calls, as on the gRPC port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_on_the_health_listener_are_counted() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let db = TestDb::create(Backend::Sqlite).await;
    let mut command = allocator_binary(&db.url);
    command.args(["--health-listen", "127.0.0.1:0"]);
    let (mut running, metrics_addr) = start_with_metrics(command).await;
    let health_addr = running.health_addr().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect_lazy();
    let mut health = HealthClient::new(channel);
    let checked = [
        ("grpc_service", "grpc.health.v1.Health"),
        ("grpc_method", "Check"),
        ("grpc_type", "unary"),
    ];
    let started = || async {
        let (_, text) = scrape(&metrics_addr, "/metrics").await;
        value(&samples(&text), "grpc_server_started_total", &checked).unwrap_or(0.0)
    };
    let before = started().await;
    for _ in 0..3 {
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
    }
    // Counted as each call starts, before it is answered.
    let after = started().await;
    assert!(after >= before + 3.0, "{before} then {after}");
}

/// A health watch its client closes ends canceled, as a stream does: counted
/// handled, and not as a failed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_its_client_closes_is_not_a_failure() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let db = TestDb::create(Backend::Sqlite).await;
    let (running, metrics_addr) = start_with_metrics(allocator_binary(&db.url)).await;
    let mut health = HealthClient::new(running.ready("").await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().expect("a first status");
    drop(watch);
    let watched = [
        ("grpc_service", "grpc.health.v1.Health"),
        ("grpc_method", "Watch"),
        ("grpc_type", "server_stream"),
        ("grpc_code", "Canceled"),
    ];
    // This one, and any the readiness wait watched with.
    let closed = counted(&metrics_addr, "grpc_server_handled_total", watched.to_vec()).await;
    assert!(closed >= Some(1.0), "{closed:?}");
    let (_, text) = scrape(&metrics_addr, "/metrics").await;
    assert!(
        !samples(&text)
            .iter()
            .any(|(name, labels, _)| name == "numbering_calls_failed_total"
                && labels
                    .get("grpc_method")
                    .is_some_and(|method| method == "Watch")),
        "{text}"
    );
}

/// Both services with `--metrics-listen`, after traffic: an invoice whose
/// first number was taken by an imported invoice (one conflict, retried),
/// an imported invoice whose number the allocator refuses to confirm (its
/// period, "Q1-2026", is not a period any series shows), and an `Allocate`
/// refused. What each one's `/metrics` says.
async fn traffic_on_both() -> (String, String) {
    let allocator_db = TestDb::create(Backend::Postgres).await;
    let (allocator, allocator_metrics) =
        start_with_metrics(allocator_binary(&allocator_db.url)).await;
    let writer_db = TestDb::create(Backend::Postgres).await;
    import_invoice(&writer_db.invoice_store().await, "acme", 1, "INV-001").await;
    import_invoice_in(
        &writer_db.invoice_store().await,
        "acme",
        "Q1-2026",
        7,
        "Q1-2026-7",
    )
    .await;
    let (writer, writer_metrics) =
        start_with_metrics(writer_binary(&writer_db.url, &allocator.url())).await;
    let channel = writer.ready("numbering.v1.InvoiceWriter").await;
    // The writer settles the imported invoices at start-up, while it serves
    // (the allocator never handed its number out). Wait for that, or its
    // confirmation could meet the call's reservation of the same number and
    // count as one of the call's.
    let store = writer_db.invoice_store().await;
    tokio::time::timeout(PATIENCE, async {
        while !store.unsettled(None, 10).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the imported invoices are settled at start-up");
    let created = create(&mut InvoiceWriterClient::new(channel), "acme").await;
    assert_eq!(created.invoice_number, "INV-002");
    let channel = allocator.ready("numbering.v1.NumberAllocator").await;
    let refused = NumberAllocatorClient::new(channel)
        .allocate(allocate("acme", "", 5000))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    (
        scrape(&allocator_metrics, "/metrics").await.1,
        scrape(&writer_metrics, "/metrics").await.1,
    )
}

/// The writer's metrics after [`traffic_on_both`]: the conflict, retried;
/// the refused confirmation, by code and reason; its calls to the
/// allocator by method and code; its own gRPC and readiness metrics; no
/// tenant id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_exports_its_conflicts_and_allocator_calls() {
    let (_, text) = traffic_on_both().await;
    assert_every_metric_is_described(&text);
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
        (
            "numbering_invoice_confirmations_refused_total",
            vec![
                ("grpc_code", "InvalidArgument"),
                ("reason", "INVALID_ARGUMENT"),
            ],
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
    // The call's writes went through the writer's group commit: at least
    // both attempts' pending notes and invoices and the first note's
    // deletion (the settled marks are not waited for).
    let grouped = value(&samples, "numbering_invoice_write_batch_size_sum", &[]);
    assert!(
        grouped >= Some(5.0),
        "{grouped:?} writes grouped in:\n{text}"
    );
    assert!(!text.contains("acme"), "a tenant id in:\n{text}");
}

/// The Grafana dashboard (`deploy/grafana/numbering.json`): every query
/// parses as PromQL, and every metric it names, with every label it matches
/// on, is one the services export after traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_exported_metrics() {
    let (allocator, writer) = traffic_on_both().await;
    let exported: Vec<Sample> = samples(&allocator)
        .into_iter()
        .chain(samples(&writer))
        .collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/numbering.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    expressions(&dashboard, &mut queries);
    assert!(queries.len() >= 10, "{queries:?}");
    // The services as Grafana fills them in: all (the variable's own value
    // for all, put in as it stands), or one picked (its regular expression's
    // characters escaped, and the escapes again for PromQL's string).
    let all = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|variable| variable["name"] == "service")
        .expect("a service variable")["allValue"]
        .as_str()
        .expect("a value for all")
        .to_owned();
    let picked = r"numbering\\.v1\\.NumberAllocator";
    for (query, service) in queries
        .iter()
        .flat_map(|query| [(query, all.as_str()), (query, picked)])
    {
        let promql = query
            .replace("$__rate_interval", "1m")
            .replace("$service", service);
        let expr = promql_parser::parser::parse(&promql)
            .unwrap_or_else(|error| panic!("{promql}: {error}"));
        let mut selectors = Selectors::default();
        promql_parser::util::walk_expr(&mut selectors, &expr).unwrap();
        assert!(!selectors.0.is_empty(), "{query} names no metric");
        for (metric, labels) in selectors.0 {
            let series: Vec<_> = exported
                .iter()
                .filter(|(name, _, _)| *name == metric)
                .collect();
            assert!(!series.is_empty(), "{query}: {metric} is not exported");
            for label in labels {
                assert!(
                    series
                        .iter()
                        .any(|(_, exported, _)| exported.contains_key(&label)),
                    "{query}: {metric} has no label {label}"
                );
            }
        }
    }
}

/// Every `expr` of a dashboard's targets.
fn expressions(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(object) => {
            for (key, value) in object {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => found.push(expr.clone()),
                    _ => expressions(value, found),
                }
            }
        }
        serde_json::Value::Array(values) => {
            for value in values {
                expressions(value, found);
            }
        }
        _ => {}
    }
}

/// The metrics a query selects, each with the labels it matches on.
#[derive(Default)]
struct Selectors(Vec<(String, Vec<String>)>);

impl promql_parser::util::ExprVisitor for Selectors {
    type Error = std::convert::Infallible;

    fn pre_visit(&mut self, expr: &promql_parser::parser::Expr) -> Result<bool, Self::Error> {
        use promql_parser::parser::Expr;
        let selector = match expr {
            Expr::VectorSelector(selector) => selector,
            Expr::MatrixSelector(matrix) => &matrix.vs,
            _ => return Ok(true),
        };
        let name = selector.name.clone().unwrap_or_default();
        let labels = selector
            .matchers
            .matchers
            .iter()
            .map(|matcher| matcher.name.clone())
            .filter(|label| label != "__name__")
            .collect();
        self.0.push((name, labels));
        Ok(true)
    }
}

/// Readiness on `/metrics` follows health through a shutdown: 1 while
/// serving, 0 once draining has begun, as the health check answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_drops_to_0_while_draining() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut command = allocator_binary(&db.url);
    command.args(["--metrics-listen", "127.0.0.1:0"]);
    let mut running = start_draining(command, "1h").await;
    let listening = running
        .wait_for_event(|event| event["metrics_addr"].is_string())
        .await;
    let metrics_addr = listening["metrics_addr"].as_str().unwrap().to_owned();
    running.ready("numbering.v1.NumberAllocator").await;
    let ready = || async {
        let (_, text) = scrape(&metrics_addr, "/metrics").await;
        let labels = [("grpc_service", "numbering.v1.NumberAllocator")];
        value(&samples(&text), "numbering_ready", &labels)
    };
    assert_eq!(ready().await, Some(1.0));

    kill(running.pid(), Signal::SIGTERM).unwrap();
    running
        .wait_for_event(|event| event["drain_delay"].is_string())
        .await;
    assert_eq!(ready().await, Some(0.0));
    kill(running.pid(), Signal::SIGKILL).unwrap();
}
