//! The invoice-writing rules: allocate a number, insert the invoice, and on a
//! number already taken allocate again, up to a bounded number of attempts.

use std::sync::Arc;

use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    clock::Clock,
    invoices::{
        allocator_client::{AllocatorClient, AllocatorError},
        domain::{Invoice, NewInvoice},
        store::{InvoiceStore, StoreError},
    },
    page::Page,
    tenant::TenantId,
};

/// An invoice-writer failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No invoice with this id for this tenant.
    #[error("invoice not found")]
    InvoiceNotFound,
    /// Every allocated number was already taken; nothing was stored.
    #[error("{attempts} allocated numbers were all already taken")]
    NumberConflicts {
        /// Tenant of the invoice.
        tenant: String,
        /// Numbers tried.
        attempts: u32,
    },
    /// No number could be allocated.
    #[error(transparent)]
    Allocator(#[from] AllocatorError),
    /// The invoice store cannot be reached now; nothing was stored. Retrying
    /// later may succeed.
    #[error("the invoice store is unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// The invoice store failed otherwise.
    #[error("the invoice store failed")]
    Internal(#[source] StoreError),
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => Self::StoreUnavailable(error),
            // A number taken is handled where it can happen; anywhere else it is a bug.
            StoreError::NumberTaken | StoreError::Internal(_) => Self::Internal(error),
        }
    }
}

/// Writes and reads invoices.
#[derive(Clone)]
pub struct InvoiceWriter {
    store: Arc<dyn InvoiceStore>,
    allocator: AllocatorClient,
    max_attempts: u32,
    clock: Arc<dyn Clock>,
}

impl InvoiceWriter {
    /// A writer that allocates at most `max_attempts` numbers per invoice and
    /// stamps each with `clock`'s time and a new id from it.
    #[must_use]
    pub fn new(
        store: Arc<dyn InvoiceStore>,
        allocator: AllocatorClient,
        max_attempts: u32,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            allocator,
            max_attempts: max_attempts.max(1),
            clock,
        }
    }

    /// Numbers and stores a new invoice.
    ///
    /// # Errors
    /// [`Error::NumberConflicts`] when every number allocated was taken,
    /// [`Error::Allocator`] when none could be allocated before `deadline`,
    /// or a store failure. Nothing is stored in any of these cases.
    pub async fn create(&self, new: &NewInvoice, deadline: Instant) -> Result<Invoice, Error> {
        // Check the store before taking a number: with the store down the call
        // fails here instead of burning a number it cannot use. (Holding a
        // transaction open across the allocator call instead would tie up a
        // connection for as long as the allocator takes, retries included.)
        if !self.store.is_ready().await {
            return Err(StoreError::Unavailable("the invoice store does not answer".into()).into());
        }
        for attempt in 1..=self.max_attempts {
            let number = self.allocator.allocate(&new.tenant_id, deadline).await?;
            let invoice = new.numbered(
                number.value,
                number.formatted,
                self.clock.new_id(),
                self.clock.now(),
            );
            match self.store.insert(&invoice).await {
                Ok(()) => return Ok(invoice),
                Err(StoreError::NumberTaken) => tracing::warn!(
                    tenant = %new.tenant_id,
                    number = invoice.number,
                    invoice_number = %invoice.invoice_number,
                    attempt,
                    max_attempts = self.max_attempts,
                    "invoice number already taken; allocating another",
                ),
                Err(error) => return Err(error.into()),
            }
        }
        Err(Error::NumberConflicts {
            tenant: new.tenant_id.to_string(),
            attempts: self.max_attempts,
        })
    }

    /// One of the tenant's invoices.
    ///
    /// # Errors
    /// [`Error::InvoiceNotFound`] for an unknown id and for another tenant's.
    pub async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Invoice, Error> {
        self.store
            .get(tenant, id)
            .await?
            .ok_or(Error::InvoiceNotFound)
    }

    /// Up to `limit` invoices numbered above `after`, and whether more follow.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list(
        &self,
        tenant: &TenantId,
        after: i64,
        limit: u32,
    ) -> Result<Page<Invoice>, Error> {
        let fetched = self
            .store
            .list(tenant, after, Page::<Invoice>::fetch(limit))
            .await?;
        Ok(Page::from_fetched(fetched, limit))
    }
}
