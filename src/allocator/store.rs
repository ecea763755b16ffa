//! The counter store interface, which names none of its implementations.
//! The gRPC layer never sees which backend runs.

use std::collections::HashMap;

use async_trait::async_trait;

use crate::{
    allocator::series::{Series, SeriesName},
    db::{DbErrorKind, classify},
    server::Store,
    tenant::TenantId,
};

/// Boxed cause of a store error, whatever the backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Durable per-(tenant, series) counters.
///
/// Every method that changes a counter commits durably before it returns:
/// a returned value survives a crash of the store.
#[async_trait]
pub trait CounterStore: Store {
    /// Advances the counter by `count` (at least 1) in one atomic statement,
    /// creating the series with `format` on first use. The numbers handed out
    /// are [`Advanced::grant`]`(count)`.
    async fn allocate(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        count: i64,
        format: &str,
    ) -> Result<Advanced, StoreError> {
        let increment = Increment {
            tenant,
            series,
            count,
        };
        let mut results = self.allocate_many(&[increment], format).await?;
        Ok(results.remove(0))
    }

    /// Advances several counters in one transaction, each by its count, as
    /// [`CounterStore::allocate`] does for one; the results come in the order
    /// of `increments`. Each `(tenant, series)` appears at most once. Either
    /// every counter advances or none does.
    async fn allocate_many(
        &self,
        increments: &[Increment<'_>],
        format: &str,
    ) -> Result<Vec<Advanced>, StoreError>;

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
}

/// A counter to advance, and by how much.
#[derive(Debug, Clone, Copy)]
pub struct Increment<'a> {
    /// The series' tenant.
    pub tenant: &'a TenantId,
    /// The series.
    pub series: &'a SeriesName,
    /// How many numbers to take, at least 1.
    pub count: i64,
}

/// A counter just advanced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advanced {
    /// The last number handed out, now the counter's value.
    pub last_value: i64,
    /// The series' number template, fixed when it was created.
    pub format: String,
}

impl Advanced {
    /// The range an advance by `count` handed out. Counts back from the last
    /// value, which may be `i64::MAX`.
    #[must_use]
    pub fn grant(self, count: i64) -> Grant {
        Grant {
            first: self.last_value - count + 1,
            format: self.format,
        }
    }
}

/// A range of numbers handed out to one call, committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The first number of the range.
    pub first: i64,
    /// The series' number template.
    pub format: String,
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

/// Puts counters returned by one multi-row statement, whose order neither
/// backend promises, in the order of the increments.
pub(crate) fn in_input_order(
    increments: &[Increment<'_>],
    counters: impl IntoIterator<Item = SeriesRow>,
) -> Result<Vec<Advanced>, StoreError> {
    let mut by_key: HashMap<(String, String), Advanced> = counters
        .into_iter()
        .map(|row| {
            let advanced = Advanced {
                last_value: row.last_value,
                format: row.format,
            };
            ((row.tenant_id, row.series), advanced)
        })
        .collect();
    increments
        .iter()
        .map(|Increment { tenant, series, .. }| {
            by_key
                .remove(&(tenant.to_string(), series.to_string()))
                .ok_or_else(|| {
                    StoreError::Internal(
                        format!("no counter returned for {tenant}/{series}").into(),
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(tenant: &str, last_value: i64) -> SeriesRow {
        SeriesRow {
            tenant_id: tenant.into(),
            series: "invoice".into(),
            last_value,
            format: "F".into(),
        }
    }

    #[test]
    fn counters_are_matched_to_increments_by_key_whatever_their_order() {
        let (a, b, c) = (
            TenantId::parse("a").unwrap(),
            TenantId::parse("b").unwrap(),
            TenantId::parse("c").unwrap(),
        );
        let series = SeriesName::parse("").unwrap();
        let increment = |tenant, count| Increment {
            tenant,
            series: &series,
            count,
        };
        let increments = [increment(&a, 1), increment(&b, 2), increment(&c, 3)];
        let matched = in_input_order(
            &increments,
            vec![counter("c", 30), counter("a", 10), counter("b", 20)],
        )
        .unwrap();
        let values: Vec<i64> = matched.iter().map(|advanced| advanced.last_value).collect();
        assert_eq!(values, [10, 20, 30]);
        assert!(in_input_order(&increments, vec![counter("a", 10), counter("b", 20)]).is_err());
    }
}
