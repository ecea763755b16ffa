//! The invoice writer assembled from its settings: the one build path the
//! binary and the tests share. Picking the store's backend by URL happens
//! here, above the store interface and its implementations.

use std::{future::Future, sync::Arc, time::Duration};

use chrono::TimeDelta;
use tokio::{sync::oneshot, time::MissedTickBehavior};

use crate::{
    clock::{Clock, SystemClock},
    db::{self, Backend, DatabaseUrl, OpenError, PoolSettings},
    invoices::{
        InvoiceWriter,
        allocator_client::{AllocatorClient, AllocatorEndpoint, Backoff},
        bounded::Bounded,
        grpc::{self, InvoiceWriterService},
        postgres::{self, PgInvoiceStore},
        seed::{self, SeedReport},
        sqlite::{self, SqliteInvoiceStore},
        store::{InvoiceStore, StoreError},
        writer::Reconciled,
    },
    proto::invoice_writer_server::InvoiceWriterServer,
    server::{self, Listeners, ServeError, ServerSettings, startup::StartupError, status::chain},
};

/// What the invoice writer is built from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The invoices' database.
    pub database: DatabaseUrl,
    /// Its pool.
    pub pool: PoolSettings,
    /// Where the allocator is, and how to reach it.
    pub allocator: AllocatorEndpoint,
    /// Delays between calls to an unreachable allocator.
    pub backoff: Backoff,
    /// Numbers tried per invoice before answering ABORTED.
    pub max_attempts: u32,
    /// How long each invoice's number is reserved for it.
    pub reservation_lease: Duration,
    /// Longest time spent retrying an unreachable allocator per invoice.
    pub allocator_retry_budget: Duration,
    /// How calls that died are settled.
    pub reconcile: ReconcileSettings,
}

/// How often the writer settles what calls that died left behind, and when
/// a number held is surely left by one.
#[derive(Debug, Clone, Copy)]
pub struct ReconcileSettings {
    /// How often; also once at start-up.
    pub interval: Duration,
    /// A number held this long was reserved by a call that has ended: no
    /// call runs longer (the server's request time-out).
    pub stale_after: Duration,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            stale_after: Duration::from_secs(10),
        }
    }
}

/// Invoices confirmed, or numbers given back, per reconciliation step.
const RECONCILE_BATCH: u32 = 500;

/// The invoice writer on its store and allocator, ready to serve.
pub struct App {
    store: Arc<dyn InvoiceStore>,
    allocator: AllocatorClient,
    writer: InvoiceWriter,
    service: InvoiceWriterServer<InvoiceWriterService>,
    clock: Arc<dyn Clock>,
    allocator_retry_budget: Duration,
    reconcile: ReconcileSettings,
}

impl App {
    /// Checks the allocator URL, opens (creating and migrating as needed)
    /// the store the settings name, and assembles the service on both. The
    /// allocator is connected to on first use.
    ///
    /// # Errors
    /// A bad allocator URL, or a database that cannot be opened.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let invalid =
            |why: String| StartupError::BadSetting(format!("invalid --allocator-url: {why}"));
        check_allocator_url(&settings.allocator.url).map_err(invalid)?;
        let allocator = AllocatorClient::connect_lazy(&settings.allocator, settings.backoff)
            .map_err(invalid)?;
        let store = open_store(&settings.database, &settings.pool).await?;
        let app = Self::on(
            store,
            allocator,
            settings.max_attempts,
            settings.allocator_retry_budget,
            Arc::new(SystemClock),
        );
        Ok(app
            .with_reconcile(settings.reconcile)
            .with_reservation_lease(settings.reservation_lease))
    }

    /// The service on a store already open, an allocator client, and the
    /// clock that stamps new invoices.
    #[must_use]
    pub fn on(
        store: Arc<dyn InvoiceStore>,
        allocator: AllocatorClient,
        max_attempts: u32,
        allocator_retry_budget: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let writer = InvoiceWriter::new(
            store.clone(),
            allocator.clone(),
            max_attempts,
            clock.clone(),
        );
        Self {
            store,
            allocator,
            service: grpc::service(writer.clone(), allocator_retry_budget),
            writer,
            clock,
            allocator_retry_budget,
            reconcile: ReconcileSettings::default(),
        }
    }

    /// The service reserving each invoice's number for `lease`.
    #[must_use]
    pub fn with_reservation_lease(self, lease: Duration) -> Self {
        let writer = self.writer.with_lease(lease);
        Self {
            service: grpc::service(writer.clone(), self.allocator_retry_budget),
            writer,
            ..self
        }
    }

    /// The service settling what calls that died left behind as `reconcile`
    /// says.
    #[must_use]
    pub fn with_reconcile(self, reconcile: ReconcileSettings) -> Self {
        Self { reconcile, ..self }
    }

    /// Raises each tenant's invoice counter in the allocator to its highest
    /// stored invoice number (see [`seed::seed_counters`]), then closes the store.
    ///
    /// # Errors
    /// The store could not be read.
    pub async fn seed_counters(self) -> Result<SeedReport, StoreError> {
        let report = seed::seed_counters(self.store.as_ref(), &self.allocator).await;
        self.store.close().await;
        report
    }

    /// Serves on `listener` until `shutdown` resolves and the drain ends, then
    /// closes the store (see [`server::serve`]). Reconciles at once and then
    /// every interval, in the background, until shutdown begins.
    ///
    /// # Errors
    /// The transport failed.
    pub async fn serve(
        self,
        listeners: impl Into<Listeners>,
        settings: &ServerSettings,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let (stop_reconciling, stopped) = oneshot::channel::<()>();
        let reconciler = Reconciler {
            writer: self.writer,
            clock: self.clock,
            settings: self.reconcile,
            budget: self.allocator_retry_budget,
        };
        let reconciling = tokio::spawn(reconciler.run(stopped));
        let shutdown = async move {
            shutdown.await;
            let _ = stop_reconciling.send(());
        };
        let served = server::serve(listeners, self.service, self.store, settings, shutdown).await;
        // Ended by now, unless serving failed before shutdown began.
        reconciling.abort();
        served
    }
}

/// Settles what calls that died left behind, every interval.
struct Reconciler {
    writer: InvoiceWriter,
    clock: Arc<dyn Clock>,
    settings: ReconcileSettings,
    budget: Duration,
}

impl Reconciler {
    /// Reconciles at once, then every interval, until `stop` resolves.
    async fn run(self, stop: oneshot::Receiver<()>) {
        let mut ticks = tokio::time::interval(self.settings.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let reconciling = async {
            loop {
                ticks.tick().await;
                let stale =
                    TimeDelta::from_std(self.settings.stale_after).unwrap_or(TimeDelta::MAX);
                let stale_before = self.clock.now() - stale;
                match self
                    .writer
                    .reconcile(stale_before, RECONCILE_BATCH, self.budget)
                    .await
                {
                    Ok(done) if done == Reconciled::default() => {}
                    Ok(done) => tracing::info!(
                        confirmed = done.confirmed,
                        given_back = done.given_back,
                        "reconciled the numbers of invoices and of calls that died",
                    ),
                    Err(error) => tracing::warn!(
                        error = %chain(&error),
                        "reconciling failed; trying again later",
                    ),
                }
            }
        };
        tokio::select! {
            () = reconciling => {}
            _ = stop => {}
        }
    }
}

/// Checks an allocator URL as the writer takes it: `http://host:port` or
/// `https://host:port`, nothing more.
///
/// # Errors
/// Why not, naming the URL without its user-info.
pub fn check_allocator_url(raw: &str) -> Result<(), String> {
    const FORM: &str = "write it as http://host:port or https://host:port";
    let invalid = |why: &str| Err(format!("{}: {why}", shown_url(raw)));
    // As written: the client tells TLS from plaintext by the prefix. And
    // `host:port` alone would be taken for a scheme and a path, and fail on
    // every call instead of here.
    if !(raw.starts_with("http://") || raw.starts_with("https://")) {
        return invalid(&format!("no http:// or https:// before the host; {FORM}"));
    }
    let Ok(url) = url::Url::parse(raw) else {
        return invalid(&format!("not a URL; {FORM}"));
    };
    if url.host_str().is_none() {
        return invalid(FORM);
    }
    // gRPC calls go to the service's own paths: one given here would be
    // dropped without a word.
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return invalid(&format!("a path, query or fragment is not used; {FORM}"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return invalid("credentials in the URL are not sent; give them as --allocator-token");
    }
    Ok(())
}

/// `url` without its user-info, if any: fit for logs and messages.
#[must_use]
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        // `user:password@host` reads as a scheme and a path.
        Ok(parsed) if parsed.cannot_be_a_base() => crate::db::without_secrets(url),
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            // Cannot fail: a URL with user-info has a host.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => crate::db::without_secrets(url),
    }
}

/// Opens the invoice store the URL's scheme names, creating and migrating the
/// database as needed.
///
/// # Errors
/// The database cannot be opened; see [`OpenError`].
pub async fn open_store(
    url: &DatabaseUrl,
    pool: &PoolSettings,
) -> Result<Arc<dyn InvoiceStore>, OpenError> {
    let store: Arc<dyn InvoiceStore> = match url.backend() {
        Backend::Postgres => Arc::new(PgInvoiceStore::new(
            db::open_postgres(url, pool, &postgres::MIGRATOR).await?,
        )),
        Backend::Sqlite => Arc::new(SqliteInvoiceStore::new(
            db::open_sqlite(url, pool, &sqlite::MIGRATOR).await?,
        )),
    };
    Ok(Arc::new(Bounded::new(store, pool.operation_timeout)))
}
