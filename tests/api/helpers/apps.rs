//! The services in this process on port 0, built as the binaries build them.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use numbering::{
    access::bearer::BearerToken,
    allocator::{
        self, CommitMode, app::RequestIdSettings, group_commit::GroupCommitSettings,
        series::Leases, series::NumberFormat,
    },
    clock::{Clock, SystemClock},
    db::Backend,
    invoices::{
        self,
        allocator_client::{AllocatorClient, AllocatorEndpoint, Backoff, Keepalive},
        store::InvoiceStore,
    },
    proto::{
        invoice_writer_client::InvoiceWriterClient, number_allocator_client::NumberAllocatorClient,
    },
    server::{ServeError, ServerSettings},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

use super::{TestDb, test_pool_settings};

/// Server settings for tests: no drain delay, quick readiness checks.
pub fn test_settings() -> ServerSettings {
    ServerSettings {
        health_check_interval: Duration::from_millis(50),
        drain_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(10),
        ..ServerSettings::default()
    }
}

/// A server running in this process, stopped through a oneshot.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("connect to test server")
    }

    /// Triggers shutdown and waits for the server to finish.
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.shutdown.send(());
        self.handle.await.expect("server task")
    }
}

/// Runs `serve`, an app's serve given its listener and shutdown future, in a
/// task: the server stops when [`TestServer::stop`] resolves that future.
pub fn spawn_server<F, Fut>(listener: TcpListener, serve: F) -> TestServer
where
    F: FnOnce(TcpListener, Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), ServeError>> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(serve(
        listener,
        Box::pin(async {
            let _ = stopped.await;
        }),
    ));
    TestServer {
        addr,
        shutdown,
        handle,
    }
}

/// Serves the allocator `app` on `listener` with `settings`.
pub fn serve_allocator(
    listener: TcpListener,
    app: allocator::app::App,
    settings: ServerSettings,
) -> TestServer {
    spawn_server(listener, |listener, stop| async move {
        app.serve(listener, &settings, stop).await
    })
}

/// An allocator on a fresh database.
pub struct AllocatorApp {
    pub db: TestDb,
    pub server: TestServer,
    pub client: NumberAllocatorClient<Channel>,
}

/// An allocator with the default settings (group commit).
pub async fn spawn_allocator(backend: Backend) -> AllocatorApp {
    spawn_allocator_in(backend, CommitMode::Group(GroupCommitSettings::default())).await
}

pub async fn spawn_allocator_in(backend: Backend, mode: CommitMode) -> AllocatorApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    spawn_allocator_on(listener, backend, NumberFormat::default(), mode).await
}

pub async fn spawn_allocator_with(backend: Backend, default_format: NumberFormat) -> AllocatorApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    spawn_allocator_on(
        listener,
        backend,
        default_format,
        CommitMode::Group(GroupCommitSettings::default()),
    )
    .await
}

/// An allocator with the default settings, served with `settings`.
pub async fn spawn_allocator_serving(backend: Backend, settings: ServerSettings) -> AllocatorApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mode = CommitMode::Group(GroupCommitSettings::default());
    spawn_allocator_app(listener, backend, NumberFormat::default(), mode, settings).await
}

/// An allocator on a fresh database, serving on `listener`.
pub async fn spawn_allocator_on(
    listener: TcpListener,
    backend: Backend,
    default_format: NumberFormat,
    mode: CommitMode,
) -> AllocatorApp {
    spawn_allocator_app(listener, backend, default_format, mode, test_settings()).await
}

/// An allocator built as the binary builds it, on a fresh database.
async fn spawn_allocator_app(
    listener: TcpListener,
    backend: Backend,
    default_format: NumberFormat,
    mode: CommitMode,
    settings: ServerSettings,
) -> AllocatorApp {
    let db = TestDb::create(backend).await;
    let app = build_allocator(
        &db,
        default_format,
        mode,
        RequestIdSettings::default(),
        Arc::new(SystemClock),
    )
    .await;
    let server = serve_allocator(listener, app, settings);
    let client = NumberAllocatorClient::new(server.channel().await);
    AllocatorApp { db, server, client }
}

/// An allocator on `db` as the binary builds it, with the given request id
/// settings and clock.
pub async fn build_allocator(
    db: &TestDb,
    default_format: NumberFormat,
    mode: CommitMode,
    request_ids: RequestIdSettings,
    clock: Arc<dyn Clock>,
) -> allocator::app::App {
    allocator::app::App::build(
        allocator::app::Settings {
            database: db.database_url(),
            pool: test_pool_settings(),
            default_format,
            mode,
            request_ids,
            leases: Leases::default(),
        },
        clock,
    )
    .await
    .expect("build the allocator")
}

/// A second allocator (or a first) on an existing database, served on port 0.
pub async fn serve_allocator_on(
    db: &TestDb,
    mode: CommitMode,
    request_ids: RequestIdSettings,
    clock: Arc<dyn Clock>,
) -> (TestServer, NumberAllocatorClient<Channel>) {
    let app = build_allocator(db, NumberFormat::default(), mode, request_ids, clock).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve_allocator(listener, app, test_settings());
    let client = NumberAllocatorClient::new(server.channel().await);
    (server, client)
}

/// An invoice writer on a fresh database of its own.
pub struct WriterApp {
    pub db: TestDb,
    pub store: Arc<dyn InvoiceStore>,
    pub server: TestServer,
    pub client: InvoiceWriterClient<Channel>,
}

/// Short backoff so retry tests run quickly.
pub fn test_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        ..Backoff::default()
    }
}

/// An allocator client as the writer builds it.
pub fn allocator_client(allocator_url: &str) -> AllocatorClient {
    allocator_client_with(allocator_url, BearerToken::none())
}

/// An allocator client as the writer builds it, sending `token`.
pub fn allocator_client_with(allocator_url: &str, token: BearerToken) -> AllocatorClient {
    allocator_client_to(&AllocatorEndpoint {
        url: allocator_url.to_owned(),
        connect_timeout: Duration::from_secs(1),
        keepalive: Keepalive::default(),
        token,
        tls: None,
    })
}

/// An allocator client as the writer builds it, to `endpoint`.
pub fn allocator_client_to(endpoint: &AllocatorEndpoint) -> AllocatorClient {
    AllocatorClient::connect_lazy(endpoint, test_backoff()).unwrap()
}

pub async fn spawn_writer(backend: Backend, allocator_url: &str, max_attempts: u32) -> WriterApp {
    spawn_writer_with(backend, allocator_url, max_attempts, Arc::new(SystemClock)).await
}

/// A writer on a fresh database, stamping invoices with `clock`.
pub async fn spawn_writer_with(
    backend: Backend,
    allocator_url: &str,
    max_attempts: u32,
    clock: Arc<dyn Clock>,
) -> WriterApp {
    let db = TestDb::create(backend).await;
    let store = db.invoice_store().await;
    spawn_writer_on(
        db,
        store,
        allocator_client(allocator_url),
        max_attempts,
        clock,
        test_settings(),
    )
    .await
}

/// A writer on `store`, which may wrap the store of `db`, calling the
/// allocator through `allocator`, served with `settings`.
pub async fn spawn_writer_on(
    db: TestDb,
    store: Arc<dyn InvoiceStore>,
    allocator: AllocatorClient,
    max_attempts: u32,
    clock: Arc<dyn Clock>,
    settings: ServerSettings,
) -> WriterApp {
    let app = invoices::app::App::on(
        store.clone(),
        allocator,
        max_attempts,
        Duration::from_secs(5),
        clock,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = spawn_server(listener, |listener, stop| async move {
        app.serve(listener, &settings, stop).await
    });
    let client = InvoiceWriterClient::new(server.channel().await);
    WriterApp {
        db,
        store,
        server,
        client,
    }
}

/// An allocator and a writer that uses it.
pub async fn spawn_both(backend: Backend, max_attempts: u32) -> (AllocatorApp, WriterApp) {
    let allocator = spawn_allocator(backend).await;
    let writer = spawn_writer(backend, &allocator.server.url(), max_attempts).await;
    (allocator, writer)
}
