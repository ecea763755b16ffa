//! The allocator assembled from its settings: the one build path the binary
//! and the tests share. Picking the store's backend by URL happens here, above
//! the store interface and its implementations.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{sync::oneshot, time::MissedTickBehavior};

use crate::{
    allocator::{
        Allocator, CommitMode,
        batch::Retention,
        bounded::Bounded,
        grpc::{self, AllocatorService},
        postgres::{self, PgCounterStore},
        series::Leases,
        series::NumberFormat,
        sqlite::{self, SqliteCounterStore},
        store::CounterStore,
    },
    clock::Clock,
    db::{self, Backend, DatabaseUrl, OpenError, PoolSettings},
    proto::number_allocator_server::NumberAllocatorServer,
    server::{self, Listeners, ServeError, ServerSettings, status::chain},
};

/// What the allocator is built from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The counters' database.
    pub database: DatabaseUrl,
    /// Its pool.
    pub pool: PoolSettings,
    /// The template of new series.
    pub default_format: NumberFormat,
    /// One transaction per call, or group commit.
    pub mode: CommitMode,
    /// How long request ids are kept, and how often expired ones are purged.
    pub request_ids: RequestIdSettings,
    /// How long reservations are held.
    pub leases: Leases,
}

/// How long request ids are kept, and how often expired ones are purged.
#[derive(Debug, Clone)]
pub struct RequestIdSettings {
    /// How long after its first use a request id answers repeats.
    pub retention: Duration,
    /// How often ids past the window are purged.
    pub purge_interval: Duration,
}

impl Default for RequestIdSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_hours(24),
            purge_interval: Duration::from_mins(1),
        }
    }
}

/// Request ids forgotten, or leases given back, per statement: short writes
/// beside the allocations.
const PURGE_BATCH: u32 = 1000;

/// The allocator service on its store, ready to serve.
pub struct App {
    store: Arc<dyn CounterStore>,
    allocator: Allocator,
    service: NumberAllocatorServer<AllocatorService>,
    purge_interval: Duration,
}

impl App {
    /// Opens (creating and migrating as needed) the store the settings name
    /// and assembles the service on it.
    ///
    /// # Errors
    /// The database cannot be opened; see [`OpenError`].
    pub async fn build(settings: Settings, clock: Arc<dyn Clock>) -> Result<Self, OpenError> {
        let store = open_store(&settings.database, &settings.pool).await?;
        let app = Self::on(
            store,
            settings.default_format,
            settings.mode,
            &settings.request_ids,
            clock,
        );
        Ok(app.with_leases(settings.leases))
    }

    /// The service on a store already open; request ids and records take
    /// their time from `clock`.
    #[must_use]
    pub fn on(
        store: Arc<dyn CounterStore>,
        default_format: NumberFormat,
        mode: CommitMode,
        request_ids: &RequestIdSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let retention = Retention {
            clock,
            window: request_ids.retention,
        };
        let allocator = Allocator::new(store.clone(), default_format, mode, retention);
        Self {
            store,
            service: grpc::service(allocator.clone()),
            allocator,
            purge_interval: request_ids.purge_interval,
        }
    }

    /// The service holding reservations for `leases`.
    #[must_use]
    pub fn with_leases(self, leases: Leases) -> Self {
        let allocator = self.allocator.with_leases(leases);
        Self {
            service: grpc::service(allocator.clone()),
            allocator,
            ..self
        }
    }

    /// Serves on `listener` until `shutdown` resolves and the drain ends, then
    /// closes the store (see [`server::serve`]). Purges expired request ids
    /// and gives back reservations whose lease ended, in the background,
    /// until shutdown begins.
    ///
    /// # Errors
    /// The transport failed.
    pub async fn serve(
        self,
        listeners: impl Into<Listeners>,
        settings: &ServerSettings,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let (stop_purging, stopped) = oneshot::channel::<()>();
        let purging = tokio::spawn(purge(self.allocator, self.purge_interval, stopped));
        let shutdown = async move {
            shutdown.await;
            let _ = stop_purging.send(());
        };
        let served = server::serve(listeners, self.service, self.store, settings, shutdown).await;
        // Ended by now, unless serving failed before shutdown began.
        purging.abort();
        served
    }
}

/// Forgets expired request ids and gives back reservations whose lease
/// ended every `interval` until `stop` resolves.
async fn purge(allocator: Allocator, interval: Duration, stop: oneshot::Receiver<()>) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let purging = async {
        loop {
            ticks.tick().await;
            match allocator.forget_expired(PURGE_BATCH).await {
                Ok(0) => {}
                Ok(forgotten) => tracing::debug!(forgotten, "forgot request ids past the window"),
                Err(error) => tracing::warn!(
                    error = %chain(&error),
                    "forgetting expired request ids failed; trying again later",
                ),
            }
            match allocator.expire_leases(PURGE_BATCH).await {
                Ok(0) => {}
                Ok(expired) => tracing::debug!(expired, "gave back reservations whose lease ended"),
                Err(error) => tracing::warn!(
                    error = %chain(&error),
                    "giving back ended reservations failed; trying again later",
                ),
            }
        }
    };
    tokio::select! {
        () = purging => {}
        _ = stop => {}
    }
}

/// Opens the counter store the URL's scheme names, creating and migrating the
/// database as needed.
///
/// # Errors
/// The database cannot be opened; see [`OpenError`].
pub async fn open_store(
    url: &DatabaseUrl,
    pool: &PoolSettings,
) -> Result<Arc<dyn CounterStore>, OpenError> {
    let store: Arc<dyn CounterStore> = match url.backend() {
        Backend::Postgres => Arc::new(PgCounterStore::new(
            db::open_postgres(url, pool, &postgres::MIGRATOR).await?,
        )),
        Backend::Sqlite => Arc::new(SqliteCounterStore::new(
            db::open_sqlite(url, pool, &sqlite::MIGRATOR).await?,
        )),
    };
    Ok(Arc::new(Bounded::new(store, pool.operation_timeout)))
}
