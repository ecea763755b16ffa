//! Test fixtures: fresh databases, in-process servers on port 0, clients, and
//! waits on conditions (never on time).

use std::{
    collections::HashMap, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};

use numbering::{
    allocator::{
        self, CommitMode, group_commit::GroupCommitSettings, series::NumberFormat,
        store::CounterStore,
    },
    db::{self, Backend, DatabaseUrl, PoolSettings},
    invoices::{
        self,
        allocator_client::{AllocatorClient, Backoff},
        store::InvoiceStore,
        writer::{Clock, SystemClock},
    },
    proto::{
        AllocateRequest, CreateInvoiceRequest, GetSeriesRequest, Invoice, LineItem,
        ListInvoicesRequest, Series, invoice_writer_client::InvoiceWriterClient,
        number_allocator_client::NumberAllocatorClient,
    },
    server::{ServeError, ServerSettings},
};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpListener,
    sync::Barrier,
    sync::oneshot,
    task::JoinHandle,
};
use tokio_stream::StreamExt;
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use crate::pg_server::admin_url;

/// Longest any wait on a condition may take before the test fails.
pub const PATIENCE: Duration = Duration::from_mins(1);

/// A database created for one test: a fresh PostgreSQL database, or a SQLite
/// file in a fresh directory. Dropped when the test passes, kept for
/// inspection when it fails.
pub struct TestDb {
    pub backend: Backend,
    /// The PostgreSQL database's name, or the SQLite file's path.
    pub name: String,
    pub url: String,
    dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => Self::create_postgres().await,
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("numbering_test_")
                    .tempdir()
                    .expect("temporary directory");
                let path = dir.path().join("test.sqlite3");
                Self {
                    backend,
                    name: path.display().to_string(),
                    url: DatabaseUrl::sqlite_file(&path).unwrap().expose().to_owned(),
                    dir: Some(dir),
                }
            }
        }
    }

    async fn create_postgres() -> Self {
        let admin = admin_url();
        let name = format!("numbering_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(admin)
            .await
            .expect("connect to the test PostgreSQL server");
        sqlx::query(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let mut url = url::Url::parse(admin).expect("admin url");
        url.set_path(&name);
        Self {
            backend: Backend::Postgres,
            name,
            url: url.to_string(),
            dir: None,
        }
    }

    pub fn database_url(&self) -> DatabaseUrl {
        self.url.parse().expect("test database url")
    }

    /// The allocator's store, opened as the service opens it.
    pub async fn counter_store(&self) -> Arc<dyn CounterStore> {
        allocator::app::open_store(&self.database_url(), &test_pool_settings())
            .await
            .expect("open the counter store")
    }

    /// The invoice writer's store, opened as the service opens it.
    pub async fn invoice_store(&self) -> Arc<dyn InvoiceStore> {
        invoices::app::open_store(&self.database_url(), &test_pool_settings())
            .await
            .expect("open the invoice store")
    }

    /// A PostgreSQL pool with the services' settings.
    pub async fn pool(&self, settings: &PoolSettings) -> PgPool {
        db::connect_postgres(&self.database_url(), settings)
            .await
            .expect("connect to test database")
    }

    /// Runs SQL as the PostgreSQL administrator, outside the database under test.
    pub async fn admin(&self, sql: String) {
        let mut conn = PgConnection::connect(admin_url())
            .await
            .expect("admin connection");
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect("admin statement");
    }

    /// Makes the PostgreSQL database unreachable: refuses new connections and
    /// ends the open ones.
    pub async fn cut(&self) {
        let name = &self.name;
        self.admin(format!(
            r#"ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false"#
        ))
        .await;
        self.admin(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await;
    }

    /// Makes the PostgreSQL database reachable again.
    pub async fn restore(&self) {
        let name = &self.name;
        self.admin(format!(
            r#"ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true"#
        ))
        .await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept database {} of the failed test", self.name);
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
            return;
        }
        if self.backend == Backend::Sqlite {
            // The directory goes with `dir`.
            return;
        }
        let sql = format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on:
        // drop the database from a thread with a runtime of its own.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(admin_url()).await {
                    let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await;
                }
            });
        })
        .join()
        .unwrap();
    }
}

/// Server settings for tests: no drain delay, quick readiness checks.
pub fn test_settings() -> ServerSettings {
    ServerSettings {
        health_check_interval: Duration::from_millis(50),
        drain_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(10),
        ..ServerSettings::default()
    }
}

/// Pool settings for tests: room for bursts of 500 calls while other tests
/// share the machine, yet well under the callers' deadlines.
pub fn test_pool_settings() -> PoolSettings {
    PoolSettings {
        max_connections: 10,
        acquire_timeout: Duration::from_secs(5),
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
    let app = allocator::app::App::build(allocator::app::Settings {
        database: db.database_url(),
        pool: test_pool_settings(),
        default_format,
        mode,
    })
    .await
    .expect("build the allocator");
    let server = serve_allocator(listener, app, settings);
    let client = NumberAllocatorClient::new(server.channel().await);
    AllocatorApp { db, server, client }
}

/// An Allocate request with no request id.
pub fn allocate(tenant: &str, series: &str, count: u32) -> AllocateRequest {
    AllocateRequest {
        tenant_id: tenant.into(),
        series: series.into(),
        count,
        request_id: String::new(),
    }
}

/// Runs `calls` Allocate calls at once, one task each, released together.
pub async fn allocate_concurrently(
    client: &NumberAllocatorClient<Channel>,
    calls: Vec<AllocateRequest>,
) -> Vec<Vec<i64>> {
    let barrier = Arc::new(Barrier::new(calls.len()));
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|request| {
            let mut client = client.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let response = client
                    .allocate(request)
                    .await
                    .expect("allocate")
                    .into_inner();
                response.numbers.iter().map(|n| n.value).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

/// Waits until `service`'s health is `wanted`, through the Watch stream.
pub async fn wait_for_health(channel: Channel, service: &str, wanted: ServingStatus) {
    let mut health = HealthClient::new(channel);
    let mut updates = health
        .watch(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let reached = tokio::time::timeout(PATIENCE, async {
        while let Some(update) = updates.next().await {
            if update.expect("health update").status == wanted as i32 {
                return;
            }
        }
        panic!("health stream ended before {service:?} was {wanted:?}");
    })
    .await;
    assert!(
        reached.is_ok(),
        "{service:?} did not become {wanted:?} within {PATIENCE:?}"
    );
}

/// Asserts an INVALID_ARGUMENT whose BadRequest names `field` and whose
/// ErrorInfo has the reason INVALID_ARGUMENT.
pub fn assert_invalid_field(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad_request = status
        .get_details_bad_request()
        .expect("BadRequest details");
    let fields: Vec<_> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert!(fields.contains(&field), "{field} not named in {fields:?}");
    assert_reason(status, "INVALID_ARGUMENT");
}

/// Asserts the status' ErrorInfo reason.
pub fn assert_reason(status: &Status, reason: &str) {
    let info = status.get_details_error_info().expect("ErrorInfo details");
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "numbering");
}

/// Asserts `values` are exactly `1..=n` (after sorting), naming what differs.
pub fn assert_exactly_one_to(values: &[i64], n: i64) {
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for value in values {
        *seen.entry(*value).or_default() += 1;
    }
    let duplicates: Vec<_> = seen
        .iter()
        .filter(|(_, times)| **times > 1)
        .map(|(v, _)| *v)
        .collect();
    assert!(duplicates.is_empty(), "duplicated numbers: {duplicates:?}");
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=n).collect::<Vec<_>>());
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
    AllocatorClient::connect_lazy(allocator_url, Duration::from_secs(1), test_backoff()).unwrap()
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
    let app = invoices::app::App::on(
        store.clone(),
        allocator_client(allocator_url),
        max_attempts,
        Duration::from_secs(5),
        clock,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = spawn_server(listener, |listener, stop| async move {
        app.serve(listener, &test_settings(), stop).await
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

/// A valid create request for `tenant`.
pub fn invoice_request(tenant: &str) -> CreateInvoiceRequest {
    CreateInvoiceRequest {
        tenant_id: tenant.into(),
        client_id: "c-42".into(),
        client_name: "Globex Corporation".into(),
        client_email: "billing@globex.example".into(),
        client_phone: "+1 555 0100".into(),
        client_address: "1 Main Street, Springfield".into(),
        due_date: "2026-12-31".into(),
        notes: "Thank you".into(),
        currency: "EUR".into(),
        line_items: vec![
            LineItem {
                description: "Consulting".into(),
                quantity: "1.5".into(),
                unit_price: "100.00".into(),
            },
            LineItem {
                description: "Travel".into(),
                quantity: "1".into(),
                unit_price: "0.1".into(),
            },
        ],
        request_id: String::new(),
    }
}

/// Stores an invoice directly, as an import from another system would.
pub async fn import_invoice(
    store: &Arc<dyn InvoiceStore>,
    tenant: &str,
    number: i64,
    invoice_number: &str,
) {
    let new = invoices::grpc::parse_new_invoice(&invoice_request(tenant)).unwrap();
    let invoice = new.numbered(
        number,
        invoice_number.into(),
        uuid::Uuid::now_v7(),
        chrono::Utc::now(),
    );
    store.insert(&invoice).await.expect("import invoice");
}

/// The tenant's invoice series in the allocator.
pub async fn invoice_series(
    client: &mut NumberAllocatorClient<Channel>,
    tenant: &str,
) -> Result<Series, Status> {
    let response = client
        .get_series(GetSeriesRequest {
            tenant_id: tenant.into(),
            series: String::new(),
        })
        .await?;
    Ok(response
        .into_inner()
        .series
        .expect("a series in the response"))
}

/// Creates the standard invoice for `tenant`, expecting success.
pub async fn create(client: &mut InvoiceWriterClient<Channel>, tenant: &str) -> Invoice {
    client
        .create_invoice(invoice_request(tenant))
        .await
        .expect("create invoice")
        .into_inner()
        .invoice
        .expect("an invoice in the response")
}

/// Every invoice of a tenant, through ListInvoices.
pub async fn list_all(client: &mut InvoiceWriterClient<Channel>, tenant: &str) -> Vec<Invoice> {
    let mut invoices = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_invoices(ListInvoicesRequest {
                tenant_id: tenant.into(),
                page_size: 0,
                page_token,
            })
            .await
            .expect("list invoices")
            .into_inner();
        invoices.extend(page.invoices);
        if page.next_page_token.is_empty() {
            return invoices;
        }
        page_token = page.next_page_token;
    }
}

/// Log events captured as JSON lines, for tests of what is logged.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// A subscriber writing every event here.
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
        let logs = self.clone();
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || logs.clone())
            .finish()
    }

    /// The events logged so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

/// A service binary running in a child process, its JSON log read in the background.
pub struct Running {
    pub child: tokio::process::Child,
    /// The address it listens on, from its "listening" log line.
    pub addr: String,
    logs: Arc<std::sync::Mutex<Vec<String>>>,
    /// Counts the lines logged, to wait for one without polling.
    logged: tokio::sync::watch::Receiver<usize>,
    reader: JoinHandle<()>,
}

/// Starts `command` (a service binary) on 127.0.0.1, port 0, logging JSON
/// with no drain delay, and waits until it logs that it listens.
pub async fn start(command: tokio::process::Command) -> Running {
    start_draining(command, "0s").await
}

/// Starts `command` as [`start`] does, with this drain delay.
pub async fn start_draining(mut command: tokio::process::Command, drain_delay: &str) -> Running {
    let mut child = command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--drain-delay",
            drain_delay,
        ])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the binary");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (listening, addr) = oneshot::channel();
    let (count, logged) = tokio::sync::watch::channel(0);
    let reader = tokio::spawn({
        let logs = logs.clone();
        async move {
            let mut listening = Some(listening);
            while let Ok(Some(line)) = lines.next_line().await {
                // The event that names the address it listens on.
                if let Some(addr) = event(&line)["addr"].as_str()
                    && let Some(listening) = listening.take()
                {
                    let _ = listening.send(addr.to_owned());
                }
                logs.lock().unwrap().push(line);
                count.send_modify(|n| *n += 1);
            }
        }
    });
    let addr = tokio::time::timeout(PATIENCE, addr)
        .await
        .expect("the binary did not start listening")
        .unwrap_or_else(|_| panic!("the binary exited before listening: {:?}", logs.lock()));
    Running {
        child,
        addr,
        logs,
        logged,
        reader,
    }
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id().expect("running")).unwrap())
    }

    /// Waits until the process logs an event that `wanted` accepts.
    pub async fn wait_for_event(&mut self, wanted: impl Fn(&serde_json::Value) -> bool) {
        let logs = self.logs.clone();
        let seen = tokio::time::timeout(PATIENCE, async {
            loop {
                if logs.lock().unwrap().iter().any(|line| wanted(&event(line))) {
                    return;
                }
                let more = self.logged.changed().await;
                assert!(more.is_ok(), "the binary stopped logging: {logs:?}");
            }
        })
        .await;
        assert!(seen.is_ok(), "not logged within {PATIENCE:?}: {logs:?}");
    }

    /// Waits for the process to exit; its exit status and every line it logged.
    pub async fn wait(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let logs = self.logs.clone();
        let exited = tokio::time::timeout(PATIENCE, async {
            let status = self.child.wait().await.expect("wait for the binary");
            self.reader.await.expect("log reader");
            status
        })
        .await
        .unwrap_or_else(|_| panic!("the binary did not exit within {PATIENCE:?}: {logs:?}"));
        let logged = self.logs.lock().unwrap().clone();
        (exited, logged)
    }
}

/// A JSON log line as an event, its fields at the top level.
pub fn event(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|_| panic!("log line is not JSON: {line}"))
}

/// The allocator binary on `url`.
pub fn allocator_binary(url: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"));
    command.env("DATABASE_URL", url);
    command
}
