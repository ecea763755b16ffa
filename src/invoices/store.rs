//! The invoice store interface. The gRPC layer never sees which backend runs.

use async_trait::async_trait;
use uuid::Uuid;

use crate::{
    db::{DbErrorKind, classify},
    invoices::domain::Invoice,
    server::Readiness,
    tenant::TenantId,
};

/// Boxed cause of a store error, whatever the backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Durable invoices, unique per tenant by number and by formatted number.
#[async_trait]
pub trait InvoiceStore: Readiness {
    /// Begins a durable transaction for writing one invoice.
    async fn begin(&self) -> Result<Box<dyn InvoiceTransaction>, StoreError>;

    /// Stores a new invoice in a transaction of its own, durably before it returns.
    ///
    /// # Errors
    /// [`StoreError::NumberTaken`] when the tenant already has an invoice with
    /// this number; nothing is stored then.
    async fn insert(&self, invoice: &Invoice) -> Result<(), StoreError> {
        let mut transaction = self.begin().await?;
        transaction.insert(invoice).await?;
        transaction.commit().await
    }

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
    async fn highest_numbers(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// Closes the store's connections.
    async fn close(&self);
}

/// A transaction writing one invoice; dropped without commit, it rolls back.
#[async_trait]
pub trait InvoiceTransaction: Send {
    /// Inserts the invoice.
    ///
    /// # Errors
    /// [`StoreError::NumberTaken`] when the tenant already has an invoice with
    /// this number; the transaction is then unusable.
    async fn insert(&mut self, invoice: &Invoice) -> Result<(), StoreError>;

    /// Commits; the invoice is durable once this returns.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
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
            DbErrorKind::UniqueViolation(Some(constraint))
                if constraint == "invoices_tenant_invoice_number_key"
                    || constraint == "invoices_tenant_number_key" =>
            {
                Self::NumberTaken
            }
            DbErrorKind::Unavailable | DbErrorKind::Retryable => Self::Unavailable(error.into()),
            _ => Self::Internal(error.into()),
        }
    }
}
