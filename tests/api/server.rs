//! Server behaviour both services share: reflection, health, shutdown, configuration.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use numbering::{
    db::Backend,
    proto::{
        AllocateRequest, invoice_writer_client::InvoiceWriterClient,
        number_allocator_client::NumberAllocatorClient,
    },
    server::ServerSettings,
};
use rstest_reuse::apply;
use sqlx::Connection;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use crate::backends;
use crate::helpers::{
    CapturedLogs, PATIENCE, TestDb, allocate, allocator_binary, assert_invalid_field,
    assert_reason, event, invoice_request, spawn_allocator, spawn_allocator_serving, spawn_both,
    start, start_draining, test_settings, wait_for_health,
};

/// Service names listed by reflection v1.
async fn list_v1(channel: Channel) -> Vec<String> {
    use v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match responses
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
    {
        MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// Whether reflection v1 finds the file defining `symbol`.
async fn described_v1(channel: Channel, symbol: &str) -> bool {
    use v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = responses.next().await.and_then(Result::ok);
    matches!(
        answer.and_then(|answer| answer.message_response),
        Some(MessageResponse::FileDescriptorResponse(files))
            if !files.file_descriptor_proto.is_empty()
    )
}

/// Asks reflection v1alpha (the version grpcurl 1.8 speaks) for the file defining
/// `symbol`, then for each of its dependencies, and returns every file name served.
async fn resolve_v1alpha(channel: Channel, symbol: &str) -> Vec<String> {
    use prost::Message;
    use v1alpha::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let client = ServerReflectionClient::new(channel);
    let ask = |request: MessageRequest| {
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut client = client.clone();
        async move {
            let mut responses = client
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .unwrap()
                .into_inner();
            match responses
                .next()
                .await
                .unwrap()
                .unwrap()
                .message_response
                .unwrap()
            {
                MessageResponse::FileDescriptorResponse(files) => files
                    .file_descriptor_proto
                    .iter()
                    .map(|bytes| {
                        prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap()
                    })
                    .collect::<Vec<_>>(),
                other => panic!("unexpected reflection answer {other:?}"),
            }
        }
    };
    let mut names = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    for file in ask(MessageRequest::FileContainingSymbol(symbol.into())).await {
        pending.extend(file.dependency.clone());
        names.push(file.name().to_owned());
    }
    while let Some(name) = pending.pop() {
        if names.contains(&name) {
            continue;
        }
        for file in ask(MessageRequest::FileByFilename(name.clone())).await {
            pending.extend(file.dependency.clone());
            names.push(file.name().to_owned());
        }
    }
    names
}

/// Reflection lists each server's own service with health and reflection, in v1 and
/// v1alpha, and resolves every service it lists (as `grpcurl describe` does) and
/// every file the calls and error details need.
#[tokio::test]
async fn reflection_describes_both_services() {
    let (allocator, writer) = spawn_both(Backend::Postgres, 3).await;
    for (server, service) in [
        (&allocator.server, "numbering.v1.NumberAllocator"),
        (&writer.server, "numbering.v1.InvoiceWriter"),
    ] {
        let mut listed = list_v1(server.channel().await).await;
        listed.sort();
        let mut expected = vec![
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            service,
        ];
        expected.sort_unstable();
        assert_eq!(listed, expected);
        for listed in &listed {
            let files = resolve_v1alpha(server.channel().await, listed).await;
            assert!(!files.is_empty(), "{listed} is not described by v1alpha");
            let described = described_v1(server.channel().await, listed).await;
            assert!(described, "{listed} is not described by v1");
        }
        let files = resolve_v1alpha(server.channel().await, service).await;
        assert!(
            files.iter().any(|f| f.starts_with("numbering/v1/")),
            "{files:?}"
        );
    }
    let files = resolve_v1alpha(writer.server.channel().await, "numbering.v1.InvoiceWriter").await;
    assert!(
        files.contains(&"google/protobuf/timestamp.proto".to_owned()),
        "{files:?}"
    );
    let files = resolve_v1alpha(writer.server.channel().await, "google.rpc.BadRequest").await;
    assert!(
        files.iter().any(|f| f.contains("error_details")),
        "{files:?}"
    );
    let files = resolve_v1alpha(allocator.server.channel().await, "grpc.health.v1.Health").await;
    assert!(files.iter().any(|f| f.contains("health")), "{files:?}");
}

/// On shutdown health turns NOT_SERVING first, a call in flight still completes, and
/// the server then stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flips_health_and_finishes_calls_in_flight() {
    let mut app = spawn_allocator(Backend::Postgres).await;
    let allocate = || AllocateRequest {
        tenant_id: "acme".into(),
        series: String::new(),
        count: 1,
        ..AllocateRequest::default()
    };
    app.client.allocate(allocate()).await.unwrap();
    let channel = app.server.channel().await;
    wait_for_health(
        channel.clone(),
        "numbering.v1.NumberAllocator",
        ServingStatus::Serving,
    )
    .await;

    let mut blocker = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let lock = lock_counter(&mut blocker, "acme").await;
    let mut client = app.client.clone();
    let in_flight = tokio::spawn(async move { client.allocate(allocate()).await });
    app.db.wait_until_blocked_on_a_lock().await;

    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "numbering.v1.NumberAllocator".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let stopped = tokio::spawn(app.server.stop());
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    drop(watch);

    lock.commit().await.unwrap();
    let response = in_flight
        .await
        .unwrap()
        .expect("the call in flight completes")
        .into_inner();
    assert_eq!(response.numbers[0].value, 2);
    stopped.await.unwrap().expect("clean stop");
}

/// The real binary serves, never logs its database password, and on SIGTERM logs it,
/// drains and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_cleanly_on_sigterm() {
    let db = TestDb::create(Backend::Postgres).await;
    // Passwords in both places a URL can carry one (trust auth ignores them).
    let running = start(allocator_binary(&password_url(&db.url))).await;

    let mut client = NumberAllocatorClient::connect(running.url()).await.unwrap();
    let allocated = client
        .allocate(AllocateRequest {
            tenant_id: "acme".into(),
            series: String::new(),
            count: 1,
            ..AllocateRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allocated.numbers[0].formatted, "INV-001");

    kill(running.pid(), Signal::SIGTERM).unwrap();
    let (status, logged) = running.wait().await;
    assert_eq!(status.code(), Some(0), "{logged:?}");
    assert!(
        logged.iter().any(|line| event(line)["signal"] == "SIGTERM"),
        "{logged:?}"
    );
    assert!(!logged.iter().any(|l| l.contains("s3cret")), "{logged:?}");
}

/// Settings that do not fit together as the settings table says to keep
/// them are each warned of at start, naming both flags' values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_do_not_fit_together_are_warned_of() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut command = allocator_binary(&db.url);
    command.args([
        "--db-timeout",
        "6s",
        "--group-lanes",
        "10",
        "--request-id-retention",
        "1h",
    ]);
    let mut running = start(command).await;
    for (flag, value) in [
        ("db_timeout", "6s"),
        ("group_lanes", "10"),
        ("request_id_retention", "1h"),
    ] {
        let warned = running
            .wait_for_event(|event| event[flag].is_string() || event[flag].is_number())
            .await;
        assert_eq!(warned["level"], "WARN", "{warned}");
        assert_eq!(
            warned[flag].to_string().trim_matches('"'),
            value,
            "{warned}"
        );
    }
}

/// A start on a database already migrated logs no PostgreSQL notice at the
/// default level: its migrations' "already exists, skipping" is noise to
/// whoever reads the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_logs_no_postgresql_notice_by_default() {
    let db = TestDb::create(Backend::Postgres).await;
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut command = allocator_binary(&db.url);
        command.env_remove("RUST_LOG");
        let running = start(command).await;
        kill(running.pid(), Signal::SIGTERM).unwrap();
        let (status, logged) = running.wait().await;
        assert!(status.success(), "{logged:?}");
        lines = logged;
    }
    assert!(
        lines.iter().any(|line| line.contains("listening")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|line| line.contains("already exists")),
        "{lines:?}"
    );
}

/// A second Ctrl-C during the drain exits at once with status 130, long before
/// the drain delay would end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_exits_at_once_with_130() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut running = start_draining(allocator_binary(&db.url), "1h").await;
    kill(running.pid(), Signal::SIGINT).unwrap();
    // Draining: the event that names the drain delay.
    running
        .wait_for_event(|e| e["drain_delay"].is_string())
        .await;
    kill(running.pid(), Signal::SIGINT).unwrap();
    let (status, logged) = running.wait().await;
    assert_eq!(status.code(), Some(130), "{logged:?}");
    let signals: Vec<_> = logged
        .iter()
        .map(|line| event(line))
        .filter(|e| e["signal"] == "SIGINT")
        .map(|e| e["status"].as_i64())
        .collect();
    assert_eq!(signals, [None, Some(130)], "{logged:?}");
}

/// `url` with a password in its user part and as a parameter.
fn password_url(url: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_password(Some("s3cret")).unwrap();
    url.set_query(Some("password=s3cret&application_name=numbering-test"));
    url.to_string()
}

/// A database no connection reaches: a binary that took a bad setting
/// fails to start with another status, instead of serving.
const NOWHERE: &str = "postgres://127.0.0.1:1/nowhere";

/// Asserts that `binary` given `flag value` exits 64 naming the flag.
async fn refuses_setting(binary: &str, flag: &str, value: &str) {
    let output = tokio::process::Command::new(binary)
        .args([flag, value, "--database-url", NOWHERE])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{flag} {value}: {stderr}");
    assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
}

/// A tenant's calls waiting for their turns that could fill the
/// concurrency limit are warned of at start: other tenants' calls would be
/// refused as overloaded. Below it, no warning.
#[tokio::test]
async fn a_rate_times_its_wait_past_the_concurrency_limit_is_warned_of() {
    let db = TestDb::create(Backend::Sqlite).await;
    let warned = |event: &serde_json::Value| {
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains("is not below --concurrency-limit"))
    };
    for (wait, warns) in [("4s", true), ("3999ms", false)] {
        let mut command = allocator_binary(&db.url);
        command.args([
            "--concurrency-limit",
            "20",
            "--tenant-rate-limit",
            "5",
            "--tenant-rate-wait",
            wait,
        ]);
        let mut running = start(command).await;
        let listening = running
            .wait_for_event(|event| event["message"] == "number-allocator listening")
            .await;
        // Warned of, if at all, before it listens.
        let logged = running.log_tail(usize::MAX);
        assert_eq!(
            logged.iter().any(|line| warned(&event(line))),
            warns,
            "{wait}: {listening} {logged:?}"
        );
    }
}

/// A default lease outside its bounds is refused with the values compared.
#[tokio::test]
async fn a_default_lease_past_the_longest_is_refused_showing_both() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"))
        .args(["--default-lease", "25h", "--database-url", NOWHERE])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(
            "--default-lease (NUMBERING_DEFAULT_LEASE) is 1day 1h: it must be at most \
             --max-lease (NUMBERING_MAX_LEASE), 1day"
        ),
        "{stderr}"
    );
}

/// Bad settings exit 64 with a message naming the setting.
#[tokio::test]
async fn bad_settings_exit_64() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"))
        .args([
            "--database-url",
            "postgres://127.0.0.1/x",
            "--default-format",
            "INV-{n}",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--default-format"));

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"))
        .args(["--request-id-retention", "0s"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--request-id-retention"));

    // A call could wait for its tenant's turn past its time-out.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"))
        .args(["--tenant-rate-limit", "10", "--tenant-rate-wait", "10s"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--tenant-rate-wait"));

    // Grants to client certificates no caller is asked for.
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        "[[certificate]]\nname = \"batch\"\nsubject = \"CN=batch\"\ntenants = [\"acme\"]\n",
    )
    .unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"))
        .arg("--tokens-file")
        .arg(&tokens)
        .args(["--database-url", NOWHERE])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--tls-client-ca"));

    // Connection limits that would close or refuse everything; a lease
    // default outside its bounds.
    for (flag, value) in [
        ("--first-request-timeout", "0s"),
        ("--keepalive-interval", "0s"),
        ("--max-connections", "0"),
        ("--max-concurrent-streams", "0"),
        ("--db-timeout", "0s"),
        // Past what PostgreSQL's statement time-out holds.
        ("--db-timeout", "13days"),
        ("--default-lease", "0s"),
        ("--default-lease", "25h"),
        // A readiness check every 0s would stop readiness for good.
        ("--health-check-interval", "0s"),
        ("--db-max-connections", "0"),
        // A busy time-out SQLite cannot hold; none at all.
        ("--db-acquire-timeout", "30days"),
        ("--db-acquire-timeout", "0s"),
        // A lease ending past what the databases compare as a time.
        ("--max-lease", "10000years"),
        // Every call would answer DEADLINE_EXCEEDED; a deadline past what
        // the clock holds.
        ("--request-timeout", "0s"),
        ("--first-request-timeout", "300000000000years"),
        ("--shutdown-grace", "367days"),
        // Turns a nanosecond apart would round to none: no limit at all.
        ("--tenant-rate-limit", "2000000000"),
    ] {
        refuses_setting(env!("CARGO_BIN_EXE_number-allocator"), flag, value).await;
    }
    // A host name where an address is listened on: said how to write it.
    for flag in ["--listen", "--health-listen", "--metrics-listen"] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"))
            .args([flag, "localhost:50051", "--database-url", NOWHERE])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains("not a host name"), "{flag}: {stderr}");
    }
    for (flag, value) in [
        ("--reservation-lease", "10000years"),
        ("--db-max-connections", "0"),
        // Every invoice would fail before its first call to the allocator.
        ("--allocator-retry-budget", "0s"),
        ("--allocator-connect-timeout", "0s"),
        ("--reconcile-interval", "0s"),
    ] {
        refuses_setting(env!("CARGO_BIN_EXE_invoice-writer"), flag, value).await;
    }

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_invoice-writer"))
        .args(["--database-url", "mysql://u:hunter2@db/x"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--database-url") && !stderr.contains("hunter2"),
        "{stderr}"
    );
}

/// A call sent to the other service's port answers UNIMPLEMENTED saying
/// which method it asked for and what the port serves, where gRPC's own
/// answer says nothing; nothing is allocated or stored.
#[tokio::test]
async fn a_call_to_the_other_services_port_says_what_the_port_serves() {
    let (mut allocator, writer) = spawn_both(Backend::Sqlite, 3).await;
    let on_writer = NumberAllocatorClient::new(writer.server.channel().await)
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap_err();
    let on_allocator = InvoiceWriterClient::new(allocator.server.channel().await)
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap_err();
    for (status, message) in [
        (
            on_writer,
            "/numbering.v1.NumberAllocator/Allocate is not served here: this port serves \
             numbering.v1.InvoiceWriter",
        ),
        (
            on_allocator,
            "/numbering.v1.InvoiceWriter/CreateInvoice is not served here: this port serves \
             numbering.v1.NumberAllocator",
        ),
    ] {
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
        assert_eq!(status.message(), message);
    }
    // Neither call reached a service: the allocator's first number is
    // still to come.
    let first = allocator
        .client
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.numbers[0].value, 1);
}

/// Health answers for liveness ("") and for each service by name.
#[apply(backends)]
#[tokio::test]
async fn health_answers_liveness_and_readiness(#[case] backend: Backend) {
    let app = spawn_allocator(backend).await;
    let channel = app.server.channel().await;
    wait_for_health(
        channel.clone(),
        "numbering.v1.NumberAllocator",
        ServingStatus::Serving,
    )
    .await;
    let mut health = HealthClient::new(channel);
    let live = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.status, ServingStatus::Serving as i32);
    let unknown = health
        .check(HealthCheckRequest {
            service: "numbering.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

/// Holds `tenant`'s invoice counter row locked on `conn` until the returned
/// transaction ends, so an Allocate of that series blocks inside its transaction.
async fn lock_counter<'c>(
    conn: &'c mut sqlx::PgConnection,
    tenant: &str,
) -> sqlx::Transaction<'c, sqlx::Postgres> {
    let mut lock = conn.begin().await.unwrap();
    let locked = sqlx::query("SELECT last_value FROM counters WHERE tenant_id = $1 FOR UPDATE")
        .bind(tenant)
        .execute(&mut *lock)
        .await
        .unwrap();
    assert_eq!(locked.rows_affected(), 1, "no counter row for {tenant}");
    lock
}

/// A call still running at --request-timeout answers DEADLINE_EXCEEDED with the
/// REQUEST_TIMEOUT reason, logged as a WARN, not an ERROR.
#[tokio::test]
async fn a_call_past_the_request_timeout_answers_deadline_exceeded() {
    let mut app = spawn_allocator_serving(
        Backend::Postgres,
        ServerSettings {
            request_timeout: Duration::from_millis(300),
            ..test_settings()
        },
    )
    .await;
    let mut blocker = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    // The counter made directly: through the server, a slow first commit on a
    // busy machine could itself pass the short time-out.
    sqlx::query("INSERT INTO series (tenant_id, series, format) VALUES ('acme', 'invoice', 'INV-{number:03}')")
        .execute(&mut blocker)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO counters (tenant_id, series, last_value) VALUES ('acme', 'invoice', 1)",
    )
    .execute(&mut blocker)
    .await
    .unwrap();
    let lock = lock_counter(&mut blocker, "acme").await;
    let logs = CapturedLogs::default();
    let _subscriber = tracing::subscriber::set_default(logs.subscriber());

    // The caller's own deadline is long: only the server's time-out can end
    // the call in time, and a missing one fails the test instead of hanging it.
    let mut request = tonic::Request::new(allocate("acme", "", 1));
    request.set_timeout(PATIENCE);
    let status = app.client.allocate(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert_reason(&status, "REQUEST_TIMEOUT");
    let failures: Vec<_> = logs
        .events()
        .into_iter()
        .filter(|e| e["fields"]["reason"] == "REQUEST_TIMEOUT")
        .map(|e| e["level"].clone())
        .collect();
    assert_eq!(failures, ["WARN"]);
    lock.rollback().await.unwrap();
}

/// Past --concurrency-limit calls in flight, a call is shed at once with the
/// OVERLOADED reason, health still answers, and the call in flight completes.
#[tokio::test]
async fn calls_past_the_concurrency_limit_are_shed_while_health_answers() {
    let mut app = spawn_allocator_serving(
        Backend::Postgres,
        ServerSettings {
            concurrency_limit: 1,
            ..test_settings()
        },
    )
    .await;
    app.client.allocate(allocate("acme", "", 1)).await.unwrap();
    let mut blocker = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let lock = lock_counter(&mut blocker, "acme").await;
    let mut client = app.client.clone();
    let in_flight = tokio::spawn(async move { client.allocate(allocate("acme", "", 1)).await });
    app.db.wait_until_blocked_on_a_lock().await;

    // Another connection too: the limit is the server's, not a connection's.
    let mut other = NumberAllocatorClient::new(app.server.channel().await);
    let status = other.allocate(allocate("globex", "", 1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_reason(&status, "OVERLOADED");
    let live = HealthClient::new(app.server.channel().await)
        .check(HealthCheckRequest {
            service: "numbering.v1.NumberAllocator".into(),
        })
        .await
        .expect("health answers while the service is full")
        .into_inner();
    assert_eq!(live.status, ServingStatus::Serving as i32);

    lock.commit().await.unwrap();
    let response = in_flight
        .await
        .unwrap()
        .expect("the call in flight completes");
    assert_eq!(response.into_inner().numbers[0].value, 2);
    app.client
        .allocate(allocate("globex", "", 1))
        .await
        .expect("room again once the call finished");
}

/// Calls refused for the caller's mistakes are logged once each at INFO with
/// their reason; nothing reaches ERROR.
#[apply(backends)]
#[tokio::test]
async fn caller_errors_are_logged_at_info_with_their_reason(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    let logs = CapturedLogs::default();
    let _subscriber = tracing::subscriber::set_default(logs.subscriber());

    let status = app.client.allocate(allocate("", "", 1)).await.unwrap_err();
    assert_invalid_field(&status, "tenant_id");
    let status = crate::helpers::invoice_series(&mut app.client, "nobody")
        .await
        .unwrap_err();
    assert_reason(&status, "SERIES_NOT_FOUND");

    let events = logs.events();
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e["fields"]["reason"].is_string())
        .map(|e| (e["level"].clone(), e["fields"]["reason"].clone()))
        .collect();
    assert_eq!(
        refused,
        [
            ("INFO".into(), "INVALID_ARGUMENT".into()),
            ("INFO".into(), "SERIES_NOT_FOUND".into())
        ],
        "{events:?}"
    );
    let errors: Vec<_> = events.iter().filter(|e| e["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "ERROR events: {errors:?}");
}
