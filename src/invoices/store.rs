//! The invoice store interface. The gRPC layer never sees which backend runs.

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use crate::{
    db::{self, Backend, DatabaseUrl, DbErrorKind, OpenError, PoolSettings, classify},
    invoices::domain::Invoice,
    server::Readiness,
    tenant::TenantId,
};

/// Boxed cause of a store error, whatever the backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Durable invoices, unique per tenant by number and by formatted number.
#[async_trait]
pub trait InvoiceStore: Readiness {
    /// Stores a new invoice, durably before it returns.
    ///
    /// # Errors
    /// [`StoreError::NumberTaken`] when the tenant already has an invoice with
    /// this number; nothing is stored then.
    async fn insert(&self, invoice: &Invoice) -> Result<(), StoreError>;

    /// One of the tenant's invoices; `None` for an unknown id or another tenant's.
    async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Invoice>, StoreError>;

    /// Up to `limit` of the tenant's invoices numbered above `after`, in number order.
    async fn list(
        &self,
        tenant: &TenantId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Invoice>, StoreError>;

    /// The highest invoice number of every tenant, compared as numbers.
    async fn highest_numbers(&self) -> Result<Vec<HighestNumber>, StoreError>;

    /// Closes the store's connections.
    async fn close(&self);
}

/// A tenant's highest stored invoice number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, sqlx::FromRow)]
pub struct HighestNumber {
    /// The tenant.
    pub tenant_id: String,
    /// Its highest `number`.
    pub number: i64,
}

/// The invoices table's columns, as both backends' rows read them.
pub(crate) const COLUMNS: &str = "id, tenant_id, number, invoice_number, client_id, client_name,
    client_email, client_phone, client_address, due_date, notes, currency, line_items, total,
    created_at";

/// Opens the store the URL's scheme names, creating and migrating the
/// database as needed: what the service does at start-up.
///
/// # Errors
/// The database cannot be reached or created, or a migration fails.
pub async fn open(
    url: &DatabaseUrl,
    settings: &PoolSettings,
) -> Result<Arc<dyn InvoiceStore>, OpenError> {
    Ok(match url.backend() {
        Backend::Postgres => Arc::new(super::postgres::PgInvoiceStore::new(
            db::open_postgres(url, settings, &super::postgres::MIGRATOR).await?,
        )),
        Backend::Sqlite => {
            let db = db::open_sqlite(url, settings, &super::sqlite::MIGRATOR).await?;
            Arc::new(super::sqlite::SqliteInvoiceStore::new(db))
        }
    })
}

/// An invoice store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The tenant already has an invoice with this number.
    #[error("invoice number already taken")]
    NumberTaken,
    /// The store cannot be reached now; retrying the call later may succeed.
    #[error("invoice store unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else.
    #[error("invoice store failed")]
    Internal(#[source] BoxError),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match classify(&error) {
            // PostgreSQL names the constraint, SQLite its columns.
            DbErrorKind::UniqueViolation(Some(constraint))
                if matches!(
                    constraint.as_str(),
                    "invoices_tenant_invoice_number_key"
                        | "invoices_tenant_number_key"
                        | "invoices.tenant_id, invoices.invoice_number"
                        | "invoices.tenant_id, invoices.number"
                ) =>
            {
                Self::NumberTaken
            }
            DbErrorKind::Unavailable | DbErrorKind::Retryable => Self::Unavailable(error.into()),
            _ => Self::Internal(error.into()),
        }
    }
}
