//! The counter store interface, which names none of its implementations.
//! The gRPC layer never sees which backend runs.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{
    allocator::series::{Series, SeriesName},
    db::{DbErrorKind, classify},
    request_id::RequestId,
    server::Store,
    tenant::TenantId,
};

/// Boxed cause of a store error, whatever the backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Durable per-(tenant, series) counters, and the ledger of the ranges they
/// handed out.
///
/// Every method that changes a counter commits durably before it returns:
/// a returned value survives a crash of the store.
#[async_trait]
pub trait CounterStore: Store {
    /// Allocates for several calls in one transaction, as planned by
    /// [`Batch`](crate::allocator::batch::Batch): claims their request ids, advances each counter once by the
    /// sum of its allocating calls (creating the series with `format` on
    /// first use), and records each allocating call's range. Either all of
    /// it commits or none does. The outcomes come in the order of `calls`.
    async fn allocate_many(
        &self,
        calls: &[Call<'_>],
        format: &str,
        stamp: Stamp,
    ) -> Result<Vec<Outcome>, StoreError>;

    /// [`CounterStore::allocate_many`] for one call.
    async fn allocate(
        &self,
        call: Call<'_>,
        format: &str,
        stamp: Stamp,
    ) -> Result<Outcome, StoreError> {
        let mut outcomes = self.allocate_many(&[call], format, stamp).await?;
        Ok(outcomes.remove(0))
    }

    /// Raises the counter to `at_least` if it is lower, creating the series
    /// with `format` on first use, and records the range skipped with
    /// `reason`; never lowers it.
    async fn advance(&self, advance: Advance<'_>, format: &str) -> Result<Series, StoreError>;

    /// Forgets up to `limit` request ids first used before `before`; returns
    /// how many it forgot.
    async fn forget_request_ids(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;

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
}

/// A counter to raise, and why.
#[derive(Debug, Clone, Copy)]
pub struct Advance<'a> {
    /// The series' tenant.
    pub tenant: &'a TenantId,
    /// The series.
    pub series: &'a SeriesName,
    /// The value to raise the counter to.
    pub at_least: i64,
    /// Why, recorded with the skipped range.
    pub reason: &'a str,
    /// When, recorded with the skipped range.
    pub now: DateTime<Utc>,
}

/// One `Allocate` call, as the store sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The series' tenant.
    pub tenant: &'a TenantId,
    /// The series.
    pub series: &'a SeriesName,
    /// How many numbers, at least 1.
    pub count: i64,
    /// The caller's idempotency key, scoped to the tenant.
    pub request_id: Option<&'a RequestId>,
}

/// What one call received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// New numbers, committed with this call.
    Granted(Grant),
    /// The numbers an earlier call with the same request id received.
    Replayed(Grant),
    /// The request id was first used for another series or count: nothing
    /// was allocated.
    Reused {
        /// The series the id was first used for.
        series: String,
        /// The count it was first used for.
        count: i64,
    },
}

/// When a transaction runs, as its records and request ids see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The time the records of the transaction carry.
    pub now: DateTime<Utc>,
    /// Request ids first used before this are forgotten.
    pub forget_before: DateTime<Utc>,
}

/// A range of numbers handed out to one call, committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The first number of the range.
    pub first: i64,
    /// The series' number template.
    pub format: String,
    /// When the range was first handed out: the date its numbers show.
    pub at: DateTime<Utc>,
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
            // A transaction that lost a conflict (a deadlock) rolled back whole and
            // can simply run again.
            DbErrorKind::Unavailable | DbErrorKind::Retryable => Self::Unavailable(error.into()),
            DbErrorKind::OutOfRange => Self::Exhausted,
            _ => Self::Internal(error.into()),
        }
    }
}

/// A counter row as both backends' statements return it.
#[derive(sqlx::FromRow)]
pub(crate) struct SeriesRow {
    pub tenant_id: String,
    pub series: String,
    pub last_value: i64,
    pub format: String,
}

impl From<SeriesRow> for Series {
    fn from(row: SeriesRow) -> Self {
        Self {
            tenant_id: row.tenant_id,
            name: row.series,
            last_value: row.last_value,
            format: row.format,
        }
    }
}
