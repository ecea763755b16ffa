//! The allocator assembled from its settings: the one build path the binary
//! and the tests share. Picking the store's backend by URL happens here, above
//! the store interface and its implementations.

use std::{future::Future, sync::Arc};

use tokio::net::TcpListener;

use crate::{
    allocator::{
        Allocator, CommitMode,
        grpc::{self, AllocatorService},
        postgres::{self, PgCounterStore},
        series::NumberFormat,
        sqlite::{self, SqliteCounterStore},
        store::CounterStore,
    },
    db::{self, Backend, DatabaseUrl, OpenError, PoolSettings},
    proto::number_allocator_server::NumberAllocatorServer,
    server::{self, ServeError, ServerSettings},
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
}

/// The allocator service on its store, ready to serve.
pub struct App {
    store: Arc<dyn CounterStore>,
    service: NumberAllocatorServer<AllocatorService>,
}

impl App {
    /// Opens (creating and migrating as needed) the store the settings name
    /// and assembles the service on it.
    ///
    /// # Errors
    /// The database cannot be opened; see [`OpenError`].
    pub async fn build(settings: Settings) -> Result<Self, OpenError> {
        let store = open_store(&settings.database, &settings.pool).await?;
        Ok(Self::on(store, settings.default_format, settings.mode))
    }

    /// The service on a store already open.
    #[must_use]
    pub fn on(
        store: Arc<dyn CounterStore>,
        default_format: NumberFormat,
        mode: CommitMode,
    ) -> Self {
        let allocator = Allocator::new(store.clone(), default_format, mode);
        Self {
            store,
            service: grpc::service(allocator),
        }
    }

    /// Serves on `listener` until `shutdown` resolves and the drain ends, then
    /// closes the store (see [`server::serve`]).
    ///
    /// # Errors
    /// The transport failed.
    pub async fn serve(
        self,
        listener: TcpListener,
        settings: &ServerSettings,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        server::serve(listener, self.service, self.store, settings, shutdown).await
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
    Ok(match url.backend() {
        Backend::Postgres => Arc::new(PgCounterStore::new(
            db::open_postgres(url, pool, &postgres::MIGRATOR).await?,
        )),
        Backend::Sqlite => Arc::new(SqliteCounterStore::new(
            db::open_sqlite(url, pool, &sqlite::MIGRATOR).await?,
        )),
    })
}
