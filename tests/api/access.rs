//! Access control: bearer tokens from a file, tenant patterns, administrative
//! methods, reloading the file, what stays open, and what the logs show.

use std::{path::Path, sync::Arc, time::Duration};

use nix::sys::signal::{Signal, kill};
use numbering::{
    access::{Access, bearer::BearerToken},
    clock::SystemClock,
    db::Backend,
    proto::{
        AuditSeriesRequest, ConfigureSeriesRequest, GetNumberRequest, GetSeriesRequest,
        ListNumbersRequest, ReleaseRequest, ReserveRequest, VoidRequest,
        invoice_writer_client::InvoiceWriterClient, number_allocator_client::NumberAllocatorClient,
    },
    server::ServerSettings,
};
use rstest_reuse::apply;
use tokio_stream::StreamExt;
use tonic::{Code, Status, service::interceptor::InterceptedService, transport::Channel};
use tonic_health::{ServingStatus, pb::HealthCheckRequest, pb::health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest,
};

use crate::{
    backends,
    helpers::{
        AllocatorApp, CapturedLogs, PATIENCE, TestDb, advance, allocate, allocator_binary,
        allocator_client_with, assert_reason, count, event, import_invoice, invoice_request,
        list_all, spawn_allocator_serving, spawn_writer_on, start, test_settings, writer_binary,
    },
};

/// Read again this often in tests, so that a change shows within a test's patience.
const RELOAD: Duration = Duration::from_millis(50);

const TOKENS: &str = r#"
[[token]]
name = "billing"
secret = "billing-s3cret"
tenants = ["acme", "globex-*"]

[[token]]
name = "ops"
secret = "ops-s3cret"
tenants = ["*"]
admin = true

[[token]]
name = "revoked"
secret = "revoked-s3cret"
tenants = []
"#;

type Client = NumberAllocatorClient<InterceptedService<Channel, BearerToken>>;

/// A client sending `secret`, or no token at all.
async fn client(app: &AllocatorApp, secret: Option<&str>) -> Client {
    let token = secret.map_or_else(BearerToken::none, |s| BearerToken::fixed(s).unwrap());
    NumberAllocatorClient::with_interceptor(app.server.channel().await, token)
}

/// Settings whose tokens come from `path`, read again every [`RELOAD`].
fn guarded_by(path: &Path) -> ServerSettings {
    ServerSettings {
        access: Access::from_file(Some(path.to_owned()), RELOAD, false).unwrap(),
        ..test_settings()
    }
}

/// An allocator on PostgreSQL asking for the tokens of [`TOKENS`], kept in
/// a file in `dir`.
async fn guarded_allocator(dir: &tempfile::TempDir) -> (AllocatorApp, std::path::PathBuf) {
    let path = dir.path().join("tokens.toml");
    std::fs::write(&path, TOKENS).unwrap();
    let app = spawn_allocator_serving(Backend::Postgres, guarded_by(&path)).await;
    (app, path)
}

fn assert_refused(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_reason(status, reason);
}

/// Reserve and Release need the tenant, as Allocate does: a token is
/// refused another tenant's, and reserves for its own.
#[tokio::test]
async fn reservations_need_the_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _path) = guarded_allocator(&dir).await;
    let mut billing = client(&app, Some("billing-s3cret")).await;
    let status = billing
        .reserve(ReserveRequest {
            tenant_id: "initech".into(),
            ..ReserveRequest::default()
        })
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "TENANT_NOT_GRANTED");
    let status = billing
        .release(ReleaseRequest {
            tenant_id: "initech".into(),
            number: 1,
            reason: "cancelled".into(),
            ..ReleaseRequest::default()
        })
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "TENANT_NOT_GRANTED");
    let held = billing
        .reserve(ReserveRequest {
            tenant_id: "acme".into(),
            ..ReserveRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(
        held.number, 1,
        "initech's refused call reserved nothing of acme's"
    );
}

/// A known secret sent without its `Bearer ` scheme is refused as an
/// unknown token, with a message that says how to send it.
#[tokio::test]
async fn a_secret_without_its_scheme_is_told_how_to_send_it() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _path) = guarded_allocator(&dir).await;
    let mut request = tonic::Request::new(allocate("acme", "", 1));
    request
        .metadata_mut()
        .insert("authorization", "billing-s3cret".parse().unwrap());
    let status = client(&app, None)
        .await
        .allocate(request)
        .await
        .unwrap_err();
    assert_refused(&status, Code::Unauthenticated, "TOKEN_UNKNOWN");
    assert!(
        status.message().contains("authorization: Bearer …"),
        "{status:?}"
    );
}

#[tokio::test]
async fn each_refusal_answers_its_code_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _path) = guarded_allocator(&dir).await;

    let status = client(&app, None)
        .await
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap_err();
    assert_refused(&status, Code::Unauthenticated, "CREDENTIALS_MISSING");
    let status = client(&app, Some("guess"))
        .await
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap_err();
    assert_refused(&status, Code::Unauthenticated, "TOKEN_UNKNOWN");
    let mut billing = client(&app, Some("billing-s3cret")).await;
    let status = billing
        .allocate(allocate("initech", "", 1))
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "TENANT_NOT_GRANTED");
    let status = billing
        .advance_counter(advance("acme", i64::MAX, "exhaust it"))
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "ADMIN_REQUIRED");
    let status = billing
        .configure_series(ConfigureSeriesRequest {
            tenant_id: "acme".into(),
            series: "orders".into(),
            format: "ORD-{number}".into(),
            ..ConfigureSeriesRequest::default()
        })
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "ADMIN_REQUIRED");
    let status = billing
        .void(VoidRequest {
            tenant_id: "acme".into(),
            number: 1,
            reason: "cancelled".into(),
            ..VoidRequest::default()
        })
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "ADMIN_REQUIRED");
    // Reading needs the tenant too.
    let status = billing
        .get_series(GetSeriesRequest {
            tenant_id: "initech".into(),
            ..GetSeriesRequest::default()
        })
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "TENANT_NOT_GRANTED");
    let status = billing
        .audit_series(AuditSeriesRequest {
            tenant_id: "initech".into(),
            ..AuditSeriesRequest::default()
        })
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "TENANT_NOT_GRANTED");
    let status = billing
        .list_numbers(ListNumbersRequest {
            tenant_id: "initech".into(),
            ..ListNumbersRequest::default()
        })
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "TENANT_NOT_GRANTED");
    let status = billing
        .get_number(GetNumberRequest {
            tenant_id: "initech".into(),
            number: 1,
            ..GetNumberRequest::default()
        })
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "TENANT_NOT_GRANTED");

    assert_eq!(
        app.db.counters().await,
        [],
        "a refused call moved a counter"
    );
    let status = client(&app, Some("ops-s3cret"))
        .await
        .get_series(GetSeriesRequest {
            tenant_id: "acme".into(),
            series: "orders".into(),
            ..GetSeriesRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::NotFound,
        "a refused call configured a series"
    );
}

#[tokio::test]
async fn a_token_acts_for_the_tenants_its_patterns_match_and_admin_tokens_administer() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _path) = guarded_allocator(&dir).await;
    let mut billing = client(&app, Some("billing-s3cret")).await;
    for tenant in ["acme", "globex-", "globex-eu"] {
        let numbers = billing
            .allocate(allocate(tenant, "", 1))
            .await
            .unwrap_or_else(|status| panic!("{tenant}: {status:?}"))
            .into_inner()
            .numbers;
        assert_eq!(numbers[0].value, 1, "{tenant}");
    }
    for tenant in ["globex", "acme-eu", "xglobex-eu"] {
        let status = billing.allocate(allocate(tenant, "", 1)).await.unwrap_err();
        assert_refused(&status, Code::PermissionDenied, "TENANT_NOT_GRANTED");
    }
    let series = client(&app, Some("ops-s3cret"))
        .await
        .advance_counter(advance("initech", 100, "imported"))
        .await
        .unwrap()
        .into_inner()
        .series
        .unwrap();
    assert_eq!(series.last_value, 100);
}

/// The outcome of one `allocate` for acme with `secret`.
async fn acme_with(app: &AllocatorApp, secret: &str) -> Result<(), Code> {
    client(app, Some(secret))
        .await
        .allocate(allocate("acme", "", 1))
        .await
        .map(drop)
        .map_err(|status| status.code())
}

/// Waits until the tokens file has been reloaded `times` times in all.
async fn reloaded(logs: &CapturedLogs, times: usize) {
    logs.wait_until(|events| count(events, "tokens file", "reloaded") >= times)
        .await;
}

/// Waits until a reload of the tokens file was refused with an error
/// containing `why`.
async fn refused_with(logs: &CapturedLogs, why: &str) {
    logs.wait_until(|events| {
        events.iter().any(|event| {
            event["fields"]["error"]
                .as_str()
                .is_some_and(|e| e.contains(why))
        })
    })
    .await;
}

#[tokio::test]
async fn tokens_file_changes_take_effect_without_a_restart() {
    let logs = CapturedLogs::default();
    let _subscriber = tracing::subscriber::set_default(logs.subscriber());
    let dir = tempfile::tempdir().unwrap();
    let (app, path) = guarded_allocator(&dir).await;

    // Written in place: a new token works.
    let added = format!(
        "{TOKENS}\n[[token]]\nname = \"shop\"\nsecret = \"shop-s3cret\"\ntenants = [\"acme\"]\n"
    );
    std::fs::write(&path, &added).unwrap();
    reloaded(&logs, 1).await;
    assert_eq!(acme_with(&app, "shop-s3cret").await, Ok(()));

    // Replaced by a rename, as Kubernetes updates a secret: a removed token
    // stops working.
    let without_billing = added.replace(
        "name = \"billing\"\nsecret = \"billing-s3cret\"",
        "name = \"billing\"\nsecret = \"rotated\"",
    );
    let staged = dir.path().join("tokens.toml.new");
    std::fs::write(&staged, &without_billing).unwrap();
    std::fs::rename(&staged, &path).unwrap();
    reloaded(&logs, 2).await;
    assert_eq!(
        acme_with(&app, "billing-s3cret").await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(acme_with(&app, "rotated").await, Ok(()));

    // A file that no longer parses keeps the last good set, and says why.
    std::fs::write(&path, "[[token]]\nname = \"broken\"\n").unwrap();
    logs.wait_until(|events| {
        events.iter().any(|event| {
            event["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("not valid"))
                && event["fields"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("either secret or sha256"))
        })
    })
    .await;
    assert_eq!(acme_with(&app, "shop-s3cret").await, Ok(()));
    assert_eq!(acme_with(&app, "rotated").await, Ok(()));

    // Nor does a file that grants nothing (comments alone): it would
    // refuse every caller.
    std::fs::write(&path, "# every token moved to another file\n").unwrap();
    refused_with(&logs, "grants nothing").await;
    assert_eq!(acme_with(&app, "rotated").await, Ok(()));

    // Nor a file that is gone (taken for one being replaced).
    std::fs::remove_file(&path).unwrap();
    refused_with(&logs, "No such file").await;
    assert_eq!(acme_with(&app, "rotated").await, Ok(()));

    // Nor one that grants only client certificates, which no caller shows
    // without mutual TLS.
    std::fs::write(
        &path,
        "[[certificate]]\nname = \"batch\"\nsubject = \"CN=batch\"\ntenants = [\"acme\"]\n",
    )
    .unwrap();
    refused_with(&logs, "--tls-client-ca").await;
    assert_eq!(acme_with(&app, "rotated").await, Ok(()));
    assert_eq!(logs.count("tokens file", "reloaded"), 2);
}

/// One reflection request, listing services.
async fn list_services(channel: Channel, secret: Option<&str>) -> Result<Vec<String>, Status> {
    let token = secret.map_or_else(BearerToken::none, |s| BearerToken::fixed(s).unwrap());
    let mut reflection = ServerReflectionClient::with_interceptor(channel, token);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let response = responses.next().await.expect("a reflection response")?;
    match response.message_response {
        Some(tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("not a service list: {other:?}"),
    }
}

#[tokio::test]
async fn health_stays_open_and_reflection_asks_for_a_token_or_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let (app, path) = guarded_allocator(&dir).await;
    let channel = app.server.channel().await;
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let status = list_services(channel.clone(), None).await.unwrap_err();
    assert_refused(&status, Code::Unauthenticated, "CREDENTIALS_MISSING");
    // Revoked, granting no tenant: refused as unknown, reflection too.
    let status = list_services(channel.clone(), Some("revoked-s3cret"))
        .await
        .unwrap_err();
    assert_refused(&status, Code::Unauthenticated, "TOKEN_UNKNOWN");
    let status = client(&app, Some("revoked-s3cret"))
        .await
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap_err();
    assert_refused(&status, Code::Unauthenticated, "TOKEN_UNKNOWN");
    let services = list_services(channel, Some("billing-s3cret"))
        .await
        .unwrap();
    assert!(
        services.iter().any(|s| s == "numbering.v1.NumberAllocator"),
        "{services:?}"
    );

    let off = spawn_allocator_serving(
        Backend::Postgres,
        ServerSettings {
            reflection: false,
            ..guarded_by(&path)
        },
    )
    .await;
    let status = list_services(off.server.channel().await, Some("billing-s3cret"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

/// Both binaries with tokens: the writer checks its callers against its own
/// file and sends its token, read from a file, to the allocator. Health needs
/// no token; each log names the caller in the call's span and holds no secret.
#[tokio::test]
async fn the_binaries_name_callers_in_their_spans_and_log_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let allocator_tokens = dir.path().join("allocator.toml");
    std::fs::write(
        &allocator_tokens,
        "[[token]]\nname = \"writer\"\nsecret = \"writer-s3cret\"\ntenants = [\"*\"]\n",
    )
    .unwrap();
    let writer_tokens = dir.path().join("writer.toml");
    std::fs::write(
        &writer_tokens,
        "[[token]]\nname = \"shop\"\nsecret = \"shop-s3cret\"\ntenants = [\"acme\"]\n",
    )
    .unwrap();
    let writer_token = dir.path().join("writer-token");
    std::fs::write(&writer_token, "writer-s3cret\n").unwrap();

    let allocator_db = TestDb::create(Backend::Postgres).await;
    let mut command = allocator_binary(&allocator_db.url);
    command.arg("--tokens-file").arg(&allocator_tokens);
    let allocator = start(command).await;
    let writer_db = TestDb::create(Backend::Postgres).await;
    let mut command = writer_binary(&writer_db.url, &allocator.url());
    command
        .arg("--tokens-file")
        .arg(&writer_tokens)
        .arg("--allocator-token-file")
        .arg(&writer_token);
    let writer = start(command).await;

    let channel = Channel::from_shared(writer.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "numbering.v1.InvoiceWriter".into(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");
    let token = BearerToken::fixed("shop-s3cret").unwrap();
    let mut shop = InvoiceWriterClient::with_interceptor(channel.clone(), token);
    let invoice = shop
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap();
    assert_eq!(invoice.number, 1);
    let status = shop
        .create_invoice(invoice_request("globex"))
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "TENANT_NOT_GRANTED");
    let status = InvoiceWriterClient::new(channel)
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap_err();
    assert_refused(&status, Code::Unauthenticated, "CREDENTIALS_MISSING");

    let mut lines = Vec::new();
    for process in [writer, allocator] {
        kill(process.pid(), Signal::SIGTERM).unwrap();
        let (exit, logged) = process.wait().await;
        assert!(exit.success(), "{exit:?}: {logged:?}");
        lines.extend(logged);
    }
    let events: Vec<_> = lines.iter().map(|line| event(line)).collect();
    let refused = events
        .iter()
        .find(|event| event["reason"] == "TENANT_NOT_GRANTED")
        .unwrap_or_else(|| panic!("the refusal was not logged: {lines:?}"));
    assert_eq!(refused["span"]["caller"], "shop", "{refused}");
    for secret in ["writer-s3cret", "shop-s3cret"] {
        assert!(
            lines.iter().all(|line| !line.contains(secret)),
            "{secret} was logged: {lines:?}"
        );
    }
}

/// A writer whose own token the allocator refuses answers INTERNAL (its
/// operators must mend it, not its callers) and stores nothing.
#[tokio::test]
async fn a_writer_with_a_refused_token_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (allocator, _path) = guarded_allocator(&dir).await;
    for (secret, tenant) in [("wrong", "acme"), ("billing-s3cret", "initech")] {
        let db = TestDb::create(Backend::Postgres).await;
        let store = db.invoice_store().await;
        let client =
            allocator_client_with(&allocator.server.url(), BearerToken::fixed(secret).unwrap());
        let mut writer =
            spawn_writer_on(db, store, client, 3, Arc::new(SystemClock), test_settings()).await;
        let status = writer
            .client
            .create_invoice(invoice_request(tenant))
            .await
            .unwrap_err();
        assert_refused(&status, Code::Internal, "INTERNAL");
        assert_eq!(list_all(&mut writer.client, tenant).await, []);
    }
    assert_eq!(allocator.db.counters().await, []);
}

/// Reconciliation goes on past invoices it cannot settle: with the oldest
/// unsettled invoice of a tenant the writer's token is not granted (an
/// import), each run goes on after the last, and the next invoice, of a
/// tenant it is granted, is settled instead of waiting behind it for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_goes_on_past_an_invoice_it_cannot_settle() {
    use numbering::invoices::writer::InvoiceWriter;
    let dir = tempfile::tempdir().unwrap();
    let (allocator, _path) = guarded_allocator(&dir).await;
    let db = TestDb::create(Backend::Postgres).await;
    let store = db.invoice_store().await;
    let refused = import_invoice(&store, "initech", 1, "INV-001").await;
    let granted = import_invoice(&store, "acme", 1, "INV-001").await;
    let unsettled = store.unsettled(None, 10).await.unwrap();
    let ids: Vec<_> = unsettled.iter().map(|invoice| invoice.id).collect();
    assert_eq!(ids, [refused, granted], "oldest first");

    let writer = InvoiceWriter::new(
        store.clone(),
        allocator_client_with(
            &allocator.server.url(),
            BearerToken::fixed("billing-s3cret").unwrap(),
        ),
        3,
        Arc::new(SystemClock),
    );
    let later = chrono::Utc::now() + chrono::TimeDelta::minutes(1);
    let mut confirmed = 0;
    for _ in 0..2 {
        confirmed += writer
            .reconcile(later, 1, PATIENCE)
            .await
            .unwrap()
            .confirmed;
    }
    // The refused one is not counted.
    assert_eq!(confirmed, 1);
    let settled = tokio::time::timeout(PATIENCE, async {
        loop {
            let left = store.unsettled(None, 10).await.unwrap();
            if left.iter().all(|invoice| invoice.id != granted) {
                return left;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the granted tenant's invoice was never settled");
    let left: Vec<_> = settled.iter().map(|invoice| invoice.id).collect();
    assert_eq!(left, [refused]);
}

/// Reconciliation goes on past reservations it cannot settle either: with
/// the oldest pending note of a tenant the writer's token is not granted
/// (kept, as the refusal may not last), each run goes on after the last,
/// and the next note, of a tenant it is granted, is settled (its
/// reservation repeated and given back) instead of waiting behind it.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_goes_on_past_a_note_it_cannot_settle(#[case] backend: Backend) {
    use numbering::invoices::{
        store::{Note, Pending},
        writer::InvoiceWriter,
    };
    let dir = tempfile::tempdir().unwrap();
    let (allocator, _path) = guarded_allocator(&dir).await;
    let db = TestDb::create(backend).await;
    let store = db.invoice_store().await;
    let now = chrono::Utc::now();
    for (tenant, age) in [("initech", 2), ("acme", 1)] {
        let id = uuid::Uuid::now_v7();
        let pending = Pending {
            tenant_id: tenant.into(),
            request_key: format!("{tenant}-call"),
            issue_date: String::new(),
            since: now - chrono::TimeDelta::seconds(age),
            invoice_id: id.to_string(),
            noted_by: id.to_string(),
        };
        let note = Note::Pending {
            pending: &pending,
            request_id: None,
        };
        store.note(note).await.unwrap();
    }
    // The reservation acme's note was made for.
    client(&allocator, Some("billing-s3cret"))
        .await
        .reserve(ReserveRequest {
            tenant_id: "acme".into(),
            request_id: "acme-call".into(),
            ..ReserveRequest::default()
        })
        .await
        .unwrap();
    let noted = |notes: Vec<Pending>| -> Vec<String> {
        notes.into_iter().map(|note| note.tenant_id).collect()
    };
    let later = now + chrono::TimeDelta::minutes(1);
    let all = store.pending_before(later, None, 10).await.unwrap();
    assert_eq!(noted(all), ["initech", "acme"], "oldest first");

    let writer = InvoiceWriter::new(
        store.clone(),
        allocator_client_with(
            &allocator.server.url(),
            BearerToken::fixed("billing-s3cret").unwrap(),
        ),
        3,
        Arc::new(SystemClock),
    );
    let mut given_back = 0;
    for _ in 0..2 {
        given_back += writer
            .reconcile(later, 1, PATIENCE)
            .await
            .unwrap()
            .given_back;
    }
    assert_eq!(given_back, 1, "acme's reservation was not given back");
    let left = store.pending_before(later, None, 10).await.unwrap();
    assert_eq!(noted(left), ["initech"]);
}
