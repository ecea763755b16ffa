//! The counter store interface. The gRPC layer never sees which backend runs.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;

use crate::{
    allocator::domain::{Series, SeriesName},
    db::{self, Backend, DatabaseUrl, DbErrorKind, OpenError, PoolSettings, classify},
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
    ) -> Result<(i64, String), StoreError> {
        let mut results = self
            .allocate_many(&[(tenant, series, count)], format)
            .await?;
        Ok(results.remove(0))
    }

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

/// Opens the store the URL's scheme names, creating and migrating the
/// database as needed: what the service does at start-up.
///
/// # Errors
/// The database cannot be reached or created, or a migration fails.
pub async fn open(
    url: &DatabaseUrl,
    settings: &PoolSettings,
) -> Result<Arc<dyn CounterStore>, OpenError> {
    Ok(match url.backend() {
        Backend::Postgres => Arc::new(super::postgres::PgCounterStore::new(
            db::open_postgres(url, settings, &super::postgres::MIGRATOR).await?,
        )),
        Backend::Sqlite => {
            let db = db::open_sqlite(url, settings, &super::sqlite::MIGRATOR).await?;
            Arc::new(super::sqlite::SqliteCounterStore::new(db))
        }
    })
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
/// backend promises, in the order of the increments. Each counter is
/// `(tenant, series, last_value, format)`.
pub(crate) fn in_input_order(
    increments: &[(&TenantId, &SeriesName, i64)],
    counters: impl IntoIterator<Item = (String, String, i64, String)>,
) -> Result<Vec<(i64, String)>, StoreError> {
    let mut by_key: HashMap<(String, String), (i64, String)> = counters
        .into_iter()
        .map(|(tenant, series, last_value, format)| ((tenant, series), (last_value, format)))
        .collect();
    increments
        .iter()
        .map(|(tenant, series, _)| {
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

    fn counter(tenant: &str, last_value: i64) -> (String, String, i64, String) {
        (tenant.into(), "invoice".into(), last_value, "F".into())
    }

    #[test]
    fn counters_are_matched_to_increments_by_key_whatever_their_order() {
        let (a, b, c) = (
            TenantId::parse("a").unwrap(),
            TenantId::parse("b").unwrap(),
            TenantId::parse("c").unwrap(),
        );
        let series = SeriesName::parse("").unwrap();
        let increments = [(&a, &series, 1), (&b, &series, 2), (&c, &series, 3)];
        let matched = in_input_order(
            &increments,
            vec![counter("c", 30), counter("a", 10), counter("b", 20)],
        )
        .unwrap();
        let values: Vec<i64> = matched.iter().map(|(value, _)| *value).collect();
        assert_eq!(values, [10, 20, 30]);
        assert!(in_input_order(&increments, vec![counter("a", 10), counter("b", 20)]).is_err());
    }
}
