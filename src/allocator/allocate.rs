//! Allocation rules: the [`Allocator`] applies them over a [`CounterStore`],
//! one transaction per call or through group commit, keeping request ids for
//! the retention window.

use std::sync::Arc;

use crate::{
    allocator::{
        batch::Retention,
        group_commit::{GroupCommitSettings, GroupCommitter, GroupError},
        series::{Count, Number, NumberFormat, Series, SeriesName},
        store::{Advance, Call, CounterStore, Grant, Outcome, StoreError},
    },
    page::Page,
    request_id::RequestId,
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
    /// The request id was first used for another series or count.
    #[error("request id {request_id:?} was first used for {count} numbers of series {series:?}")]
    RequestIdReused {
        /// The id.
        request_id: String,
        /// The series it was first used for.
        series: String,
        /// The count it was first used for.
        count: i64,
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

/// Numbers handed out to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// Consecutive numbers, ascending.
    pub numbers: Vec<Number>,
    /// Whether they were first handed out to an earlier call with the same
    /// request id.
    pub replayed: bool,
}

/// Applies the allocation rules over a counter store.
#[derive(Clone)]
pub struct Allocator {
    store: Arc<dyn CounterStore>,
    default_format: NumberFormat,
    path: Path,
    retention: Retention,
}

impl Allocator {
    /// An allocator creating new series with `default_format`, keeping
    /// request ids for `retention`.
    #[must_use]
    pub fn new(
        store: Arc<dyn CounterStore>,
        default_format: NumberFormat,
        mode: CommitMode,
        retention: Retention,
    ) -> Self {
        let path = match mode {
            CommitMode::PerCall => Path::PerCall,
            CommitMode::Group(settings) => Path::Group(Arc::new(GroupCommitter::new(
                &store,
                &settings,
                default_format.template(),
                &retention,
            ))),
        };
        Self {
            store,
            default_format,
            path,
            retention,
        }
    }

    /// Allocates `count` consecutive numbers, committed before they are
    /// returned; or, for a request id used within the retention window, the
    /// numbers its first call received.
    ///
    /// # Errors
    /// [`Error::RequestIdReused`] for a request id first used for another
    /// series or count; the store fails or the series is exhausted. No number
    /// is handed out then.
    pub async fn allocate(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        count: Count,
        request_id: Option<&RequestId>,
    ) -> Result<Allocation, Error> {
        let outcome = match &self.path {
            Path::PerCall => {
                let call = Call {
                    tenant,
                    series,
                    count: i64::from(count.get()),
                    request_id,
                };
                let template = self.default_format.template();
                self.store
                    .allocate(call, template, self.retention.stamp())
                    .await?
            }
            Path::Group(committer) => {
                committer
                    .allocate(tenant, series, count, request_id)
                    .await?
            }
        };
        let (Grant { first, format, at }, replayed) = match outcome {
            Outcome::Granted(grant) => (grant, false),
            Outcome::Replayed(grant) => (grant, true),
            Outcome::Reused { series, count } => {
                return Err(Error::RequestIdReused {
                    request_id: request_id.map(ToString::to_string).unwrap_or_default(),
                    series,
                    count,
                });
            }
        };
        let format = parse_stored(tenant, series, &format)?;
        // The date of the first answer, so that a repeat reads alike. (Dates
        // are UTC until series carry a time zone.)
        let date = at.date_naive();
        // Offsets from the first number: the last may be i64::MAX.
        let numbers = (0..i64::from(count.get()))
            .map(|offset| first + offset)
            .map(|value| Number {
                value,
                formatted: format.render(value, date),
            })
            .collect();
        Ok(Allocation { numbers, replayed })
    }

    /// Forgets the request ids past the retention window, in batches of
    /// `batch`, until none is left; returns how many it forgot. Each batch is
    /// its own short write, so allocations go on in between.
    ///
    /// # Errors
    /// A store failure; what was forgotten before it stays forgotten.
    pub async fn forget_expired(&self, batch: u32) -> Result<u64, Error> {
        let before = self.retention.stamp().forget_before;
        let mut forgotten = 0;
        loop {
            let done = self.store.forget_request_ids(before, batch).await?;
            forgotten += done;
            if done < u64::from(batch) {
                return Ok(forgotten);
            }
        }
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

    /// Raises a counter to `at_least` if it is lower, recording the range
    /// skipped with `reason`; never lowers it.
    ///
    /// # Errors
    /// A store failure.
    pub async fn advance(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        at_least: i64,
        reason: &str,
    ) -> Result<Series, Error> {
        let advance = Advance {
            tenant,
            series,
            at_least,
            reason,
            now: self.retention.clock.now(),
        };
        Ok(self
            .store
            .advance(advance, self.default_format.template())
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
