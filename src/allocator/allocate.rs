//! Allocation rules: the [`Allocator`] applies them over a [`CounterStore`],
//! one transaction per call or through group commit.

use std::sync::Arc;

use crate::{
    allocator::{
        group_commit::{GroupCommitSettings, GroupCommitter, GroupError},
        series::{Count, Number, NumberFormat, Series, SeriesName},
        store::{CounterStore, Grant, StoreError},
    },
    page::Page,
    tenant::TenantId,
};

/// An allocator failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The series was never used.
    #[error("series {series:?} of tenant {tenant:?} not found")]
    SeriesNotFound {
        /// Tenant asked for.
        tenant: String,
        /// Series asked for.
        series: String,
    },
    /// A stored format no longer parses: the store was edited by hand.
    #[error(
        "series {series:?} of tenant {tenant:?} has an invalid stored format {format:?}: {reason}"
    )]
    StoredFormat {
        /// Tenant of the series.
        tenant: String,
        /// The series.
        series: String,
        /// The stored template.
        format: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Too many calls are waiting to commit.
    #[error("too many allocations waiting to commit")]
    Busy,
    /// The counter would pass the largest representable number.
    #[error("the series cannot go past {}", i64::MAX)]
    Exhausted,
    /// The store cannot be reached now; no number was handed out. Retrying
    /// later may succeed.
    #[error("the counter store is unavailable")]
    Unavailable(#[source] Arc<StoreError>),
    /// The store failed otherwise; no number was handed out.
    #[error("the counter store failed")]
    Internal(#[source] Arc<StoreError>),
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        Arc::new(error).into()
    }
}

/// A group's error is shared by each of its calls.
impl From<Arc<StoreError>> for Error {
    fn from(error: Arc<StoreError>) -> Self {
        match error.as_ref() {
            StoreError::Exhausted => Self::Exhausted,
            StoreError::Unavailable(_) => Self::Unavailable(error),
            StoreError::Internal(_) => Self::Internal(error),
        }
    }
}

impl From<GroupError> for Error {
    fn from(error: GroupError) -> Self {
        match error {
            GroupError::QueueFull => Self::Busy,
            GroupError::Store(error) => error.into(),
        }
    }
}

/// How allocations reach the store.
#[derive(Debug, Clone)]
pub enum CommitMode {
    /// One transaction per call: the baseline.
    PerCall,
    /// Concurrent calls of a series share a transaction.
    Group(GroupCommitSettings),
}

#[derive(Clone)]
enum Path {
    PerCall,
    Group(Arc<GroupCommitter>),
}

/// Applies the allocation rules over a counter store.
#[derive(Clone)]
pub struct Allocator {
    store: Arc<dyn CounterStore>,
    default_format: NumberFormat,
    path: Path,
}

impl Allocator {
    /// An allocator creating new series with `default_format`.
    #[must_use]
    pub fn new(
        store: Arc<dyn CounterStore>,
        default_format: NumberFormat,
        mode: CommitMode,
    ) -> Self {
        let path = match mode {
            CommitMode::PerCall => Path::PerCall,
            CommitMode::Group(settings) => Path::Group(Arc::new(GroupCommitter::new(
                &store,
                &settings,
                default_format.template(),
            ))),
        };
        Self {
            store,
            default_format,
            path,
        }
    }

    /// Allocates `count` consecutive numbers, committed before they are returned.
    ///
    /// # Errors
    /// The store fails or the series is exhausted; no number is handed out then.
    pub async fn allocate(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        count: Count,
    ) -> Result<Vec<Number>, Error> {
        let template = self.default_format.template();
        let Grant { first, format } = match &self.path {
            Path::PerCall => {
                let count = i64::from(count.get());
                let advanced = self.store.allocate(tenant, series, count, template).await?;
                advanced.grant(count)
            }
            Path::Group(committer) => committer.allocate(tenant, series, count).await?,
        };
        let format = parse_stored(tenant, series, &format)?;
        // Offsets from the first number: the last may be i64::MAX.
        Ok((0..i64::from(count.get()))
            .map(|offset| first + offset)
            .map(|value| Number {
                value,
                formatted: format.render(value),
            })
            .collect())
    }

    /// Reads a series.
    ///
    /// # Errors
    /// [`Error::SeriesNotFound`] for a series never used, or a store failure.
    pub async fn get_series(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
    ) -> Result<Series, Error> {
        self.store
            .get(tenant, series)
            .await?
            .ok_or_else(|| Error::SeriesNotFound {
                tenant: tenant.to_string(),
                series: series.to_string(),
            })
    }

    /// Up to `limit` series after `after`, and whether more follow.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list_series(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Series>, Error> {
        let fetched = self
            .store
            .list(tenant, after, Page::<Series>::fetch(limit))
            .await?;
        Ok(Page::from_fetched(fetched, limit))
    }

    /// Raises a counter to `at_least` if it is lower; never lowers it.
    ///
    /// # Errors
    /// A store failure.
    pub async fn advance(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        at_least: i64,
    ) -> Result<Series, Error> {
        Ok(self
            .store
            .advance(tenant, series, at_least, self.default_format.template())
            .await?)
    }
}

fn parse_stored(
    tenant: &TenantId,
    series: &SeriesName,
    format: &str,
) -> Result<NumberFormat, Error> {
    format.parse().map_err(|reason| Error::StoredFormat {
        tenant: tenant.to_string(),
        series: series.to_string(),
        format: format.to_owned(),
        reason,
    })
}
