//! The counter store interface. The gRPC layer never sees which backend runs.

use async_trait::async_trait;

use crate::{
    allocator::domain::{Series, SeriesName},
    db::{DbErrorKind, classify},
    server::Readiness,
    tenant::TenantId,
};

/// Boxed cause of a store error, whatever the backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Durable per-(tenant, series) counters.
///
/// Every method that changes a counter commits durably before it returns:
/// a returned value survives a crash of the store.
#[async_trait]
pub trait CounterStore: Readiness {
    /// Advances the counter by `count` (at least 1) in one atomic statement,
    /// creating the series with `format` on first use, and returns the new last
    /// value and the series' format. The numbers handed out are
    /// `last_value - count + 1 ..= last_value`.
    async fn allocate(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        count: i64,
        format: &str,
    ) -> Result<(i64, String), StoreError>;

    /// Advances several counters in one transaction, each by its count, as
    /// [`CounterStore::allocate`] does for one; the results come in the order
    /// of `increments`. Each `(tenant, series)` appears at most once. Either
    /// every counter advances or none does.
    async fn allocate_many(
        &self,
        increments: &[(&TenantId, &SeriesName, i64)],
        format: &str,
    ) -> Result<Vec<(i64, String)>, StoreError>;

    /// Raises the counter to `at_least` if it is lower, creating the series with
    /// `format` on first use; never lowers it.
    async fn advance(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        at_least: i64,
        format: &str,
    ) -> Result<Series, StoreError>;

    /// One series, if it was ever used.
    async fn get(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
    ) -> Result<Option<Series>, StoreError>;

    /// Up to `limit` of a tenant's series with names after `after`, by name.
    async fn list(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Series>, StoreError>;

    /// Closes the store's connections.
    async fn close(&self);
}

/// A counter store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached now; retrying the call later may succeed.
    #[error("counter store unavailable")]
    Unavailable(#[source] BoxError),
    /// The counter would pass the largest representable number.
    #[error("counter would pass {}", i64::MAX)]
    Exhausted,
    /// Anything else.
    #[error("counter store failed")]
    Internal(#[source] BoxError),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match classify(&error) {
            // A single-statement transaction that lost a conflict can simply run again.
            DbErrorKind::Unavailable | DbErrorKind::Retryable => Self::Unavailable(error.into()),
            DbErrorKind::OutOfRange => Self::Exhausted,
            _ => Self::Internal(error.into()),
        }
    }
}
