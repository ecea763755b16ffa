//! TLS and mutual TLS with certificates generated here: ALPN h2 for any gRPC
//! client, rotation picked up by new connections, clients without a
//! certificate refused, health on its own plaintext listener, grants by
//! certificate subject, and the writer's channel to the allocator.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use numbering::{
    access::{Access, bearer::BearerToken},
    allocator::{
        CommitMode, app::RequestIdSettings, group_commit::GroupCommitSettings, series::NumberFormat,
    },
    clock::SystemClock,
    db::Backend,
    invoices::allocator_client::{AllocatorEndpoint, Keepalive},
    proto::number_allocator_client::NumberAllocatorClient,
    server::{Listeners, ServerSettings},
    tls::{ClientTls, ClientTlsFiles, ServerTls, ServerTlsFiles},
};
use tokio::net::TcpListener;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{
    CapturedLogs, Issued, TestCa, TestDb, TestServer, WriterApp, allocate, allocator_binary,
    allocator_client_to, assert_reason, build_allocator, count, invoice_request, replace,
    spawn_server, spawn_writer_on, start, test_settings,
};

/// Files are read again this often in tests.
const RELOAD: Duration = Duration::from_millis(50);

/// An allocator on PostgreSQL with these settings, its gRPC listener and a
/// plaintext health listener.
struct Served {
    _db: TestDb,
    server: TestServer,
    health: SocketAddr,
}

async fn serve_allocator(settings: ServerSettings) -> Served {
    let db = TestDb::create(Backend::Postgres).await;
    let app = build_allocator(
        &db,
        NumberFormat::default(),
        CommitMode::Group(GroupCommitSettings::default()),
        RequestIdSettings::default(),
        Arc::new(SystemClock),
    )
    .await;
    let health = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health_addr = health.local_addr().unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = spawn_server(grpc, move |grpc, stop| async move {
        let listeners = Listeners {
            grpc,
            health: Some(health),
            metrics: None,
        };
        app.serve(listeners, &settings, stop).await
    });
    Served {
        _db: db,
        server,
        health: health_addr,
    }
}

/// The files of mutual TLS in one directory: a service CA and its server
/// certificate, and a client CA.
struct MutualTls {
    ca: TestCa,
    clients: TestCa,
    client_ca: std::path::PathBuf,
    /// The server certificate and key files.
    server: (std::path::PathBuf, std::path::PathBuf),
}

impl MutualTls {
    fn in_dir(dir: &Path) -> Self {
        let ca = TestCa::new("service CA");
        let server = ca.server().write(dir, "server");
        let clients = TestCa::new("client CA");
        let client_ca = replace(dir, "clients.crt", &clients.pem());
        Self {
            ca,
            clients,
            client_ca,
            server,
        }
    }
}

/// TLS settings from the server certificate in `dir`, and the client CA if
/// given, read again every [`RELOAD`].
fn tls_settings(dir: &Path, client_ca: Option<&Path>) -> ServerSettings {
    let files = ServerTlsFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        client_ca: client_ca.map(Path::to_owned),
    };
    ServerSettings {
        tls: Some(ServerTls::watch(&files, RELOAD).unwrap()),
        ..test_settings()
    }
}

/// One allocation for acme over a new TLS connection trusting `ca`, showing
/// `identity` if given: the number, or why it failed.
async fn allocate_over_tls(
    addr: SocketAddr,
    ca: &str,
    identity: Option<&Issued>,
    token: Option<&str>,
) -> Result<i64, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(&identity.cert, &identity.key));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|error| format!("connect: {error:?}"))?;
    let token = token.map_or_else(BearerToken::none, |t| BearerToken::fixed(t).unwrap());
    let mut client = NumberAllocatorClient::with_interceptor(channel, token);
    client
        .allocate(allocate("acme", "", 1))
        .await
        .map(|response| response.into_inner().numbers[0].value)
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

#[tokio::test]
async fn tls_speaks_h2_and_new_connections_pick_up_rotated_certificates() {
    let logs = CapturedLogs::default();
    let _subscriber = tracing::subscriber::set_default(logs.subscriber());
    let dir = tempfile::tempdir().unwrap();
    let first = TestCa::new("first CA");
    first.server().write(dir.path(), "server");
    let served = serve_allocator(tls_settings(dir.path(), None)).await;
    let addr = served.server.addr;

    assert_eq!(
        allocate_over_tls(addr, &first.pem(), None, None).await,
        Ok(1)
    );
    // Plaintext is not served on the TLS port.
    let plain = NumberAllocatorClient::new(served.server.channel().await)
        .allocate(allocate("acme", "", 1))
        .await;
    assert!(plain.is_err(), "plaintext was served: {plain:?}");

    // A certificate from another CA, its files replaced by renames.
    let second = TestCa::new("second CA");
    second.server().write(dir.path(), "server");
    // The two renames may be seen apart, a key not matching its certificate
    // in between: wait for the pair to load.
    logs.wait_until(|events| count(events, "TLS files", "reloaded") >= 1)
        .await;
    assert_eq!(
        allocate_over_tls(addr, &second.pem(), None, None).await,
        Ok(2)
    );
    let old = allocate_over_tls(addr, &first.pem(), None, None).await;
    assert!(old.is_err(), "the old certificate is still served: {old:?}");

    // A key that does not belong to the certificate keeps the last good pair.
    let stranger = TestCa::new("third CA").server();
    replace(dir.path(), "server.key", &stranger.key);
    let warned = logs.count("TLS files", "not valid");
    logs.wait_until(|events| count(events, "TLS files", "not valid") > warned)
        .await;
    let kept = allocate_over_tls(addr, &second.pem(), None, None).await;
    assert!(kept.is_ok(), "{kept:?}");
    served.server.stop().await.unwrap();
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_its_ca_and_health_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let MutualTls {
        ca,
        clients,
        client_ca,
        ..
    } = MutualTls::in_dir(dir.path());
    let served = serve_allocator(tls_settings(dir.path(), Some(&client_ca))).await;
    let addr = served.server.addr;

    let billing = clients.client("billing");
    assert_eq!(
        allocate_over_tls(addr, &ca.pem(), Some(&billing), None).await,
        Ok(1)
    );
    let without = allocate_over_tls(addr, &ca.pem(), None, None).await;
    assert!(
        without.is_err(),
        "a client without a certificate got {without:?}"
    );
    let foreign = TestCa::new("foreign CA").client("billing");
    let foreign = allocate_over_tls(addr, &ca.pem(), Some(&foreign), None).await;
    assert!(foreign.is_err(), "a foreign certificate got {foreign:?}");

    // Probes reach health in plaintext on its own listener, and nothing else.
    let channel = Channel::from_shared(format!("http://{}", served.health))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");
    let status = NumberAllocatorClient::new(channel)
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(
        status.message().ends_with("this port serves health alone"),
        "{status:?}"
    );
    served.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_certificate_subject_can_carry_grants_and_a_token_still_wins() {
    let logs = CapturedLogs::default();
    let _subscriber = tracing::subscriber::set_default(logs.subscriber());
    let dir = tempfile::tempdir().unwrap();
    let MutualTls {
        ca,
        clients,
        client_ca,
        ..
    } = MutualTls::in_dir(dir.path());
    let tokens = replace(
        dir.path(),
        "tokens.toml",
        "[[certificate]]\nname = \"batch\"\nsubject = \"CN=batch\"\ntenants = [\"globex\"]\n\
         [[certificate]]\nname = \"example\"\nsubject = \"CN=batch, O=Example\"\n\
         tenants = [\"acme\"]\n\
         [[token]]\nname = \"billing\"\nsecret = \"billing-s3cret\"\ntenants = [\"acme\"]\n",
    );
    let settings = ServerSettings {
        access: Access::from_file(Some(tokens), RELOAD, true).unwrap(),
        ..tls_settings(dir.path(), Some(&client_ca))
    };
    let served = serve_allocator(settings).await;
    let addr = served.server.addr;

    // The batch certificate may act for globex only; acme is refused.
    let batch = clients.client("batch");
    let refused = allocate_over_tls(addr, &ca.pem(), Some(&batch), None).await;
    assert_eq!(
        refused,
        Err(
            "PermissionDenied: client certificate \"batch\" may not act for tenant \"acme\"".into()
        )
    );
    // One common name that reads as two parts names no grant: the
    // certificate is another's than the grant's, whatever its text says.
    let posing = clients.client("batch, O=Example");
    let refused = allocate_over_tls(addr, &ca.pem(), Some(&posing), None).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.starts_with("Unauthenticated")),
        "{refused:?}"
    );
    // A certificate without grants needs a token.
    let other = clients.client("other");
    let refused = allocate_over_tls(addr, &ca.pem(), Some(&other), None).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.starts_with("Unauthenticated")),
        "{refused:?}"
    );
    assert_eq!(
        allocate_over_tls(addr, &ca.pem(), Some(&other), Some("billing-s3cret")).await,
        Ok(1)
    );
    assert_eq!(
        allocate_over_tls(addr, &ca.pem(), Some(&batch), Some("billing-s3cret")).await,
        Ok(2)
    );
    served.server.stop().await.unwrap();
}

/// A writer on a fresh database calling the allocator on `port` over TLS
/// with its token, trusting `ca` and showing `identity` if given.
async fn writer_over_tls(
    port: u16,
    ca: std::path::PathBuf,
    identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> WriterApp {
    let endpoint = AllocatorEndpoint {
        url: format!("https://localhost:{port}"),
        connect_timeout: Duration::from_secs(5),
        keepalive: Keepalive::default(),
        token: BearerToken::fixed("writer-s3cret").unwrap(),
        tls: Some(ClientTls::watch(&ClientTlsFiles { ca, identity }, RELOAD).unwrap()),
    };
    let db = TestDb::create(Backend::Postgres).await;
    let store = db.invoice_store().await;
    spawn_writer_on(
        db,
        store,
        allocator_client_to(&endpoint),
        3,
        Arc::new(SystemClock),
        test_settings(),
    )
    .await
}

#[tokio::test]
async fn the_writer_reaches_a_mutual_tls_allocator_with_its_certificate_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let MutualTls {
        ca,
        clients,
        client_ca,
        ..
    } = MutualTls::in_dir(dir.path());
    let tokens = replace(
        dir.path(),
        "tokens.toml",
        "[[token]]\nname = \"writer\"\nsecret = \"writer-s3cret\"\ntenants = [\"*\"]\n",
    );
    let settings = ServerSettings {
        access: Access::from_file(Some(tokens), RELOAD, true).unwrap(),
        ..tls_settings(dir.path(), Some(&client_ca))
    };
    let served = serve_allocator(settings).await;
    let ca_path = replace(dir.path(), "ca.crt", &ca.pem());
    let identity = clients.client("writer").write(dir.path(), "writer");

    let port = served.server.addr.port();
    let mut writer = writer_over_tls(port, ca_path.clone(), Some(identity)).await;
    let invoice = writer
        .client
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap();
    assert_eq!(invoice.number, 1);

    // Without its certificate the writer cannot connect: its callers are
    // told the allocator is unavailable.
    let mut writer = writer_over_tls(port, ca_path, None).await;
    // The writer stops retrying at 90% of the caller's deadline.
    let mut request = tonic::Request::new(invoice_request("acme"));
    request.set_timeout(Duration::from_secs(2));
    let status = writer.client.create_invoice(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_reason(&status, "ALLOCATOR_UNAVAILABLE");
    served.server.stop().await.unwrap();
}

/// The allocator binary with mutual TLS and a plaintext health listener, set
/// by its flags: it says so when it starts, serves a client with a
/// certificate, and answers probes in plaintext.
#[tokio::test]
async fn the_binary_serves_mutual_tls_and_plaintext_health_from_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let MutualTls {
        ca,
        clients,
        client_ca,
        server: (cert, key),
    } = MutualTls::in_dir(dir.path());
    let db = TestDb::create(Backend::Postgres).await;
    let mut command = allocator_binary(&db.url);
    command
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--tls-client-ca")
        .arg(&client_ca)
        .args(["--health-listen", "127.0.0.1:0"]);
    let mut running = start(command).await;
    let listening = running
        .wait_for_event(|event| event["health_addr"].is_string())
        .await;
    assert_eq!(listening["tls"], "mutual", "{listening}");
    let addr: SocketAddr = running.addr.parse().unwrap();

    let billing = clients.client("billing");
    assert_eq!(
        allocate_over_tls(addr, &ca.pem(), Some(&billing), None).await,
        Ok(1)
    );
    let without = allocate_over_tls(addr, &ca.pem(), None, None).await;
    assert!(without.is_err(), "{without:?}");
    let health_addr = listening["health_addr"].as_str().unwrap();
    let channel = Channel::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");
}
