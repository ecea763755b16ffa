//! The invoice-writing rules: allocate a number, insert the invoice, and on a
//! number already taken allocate again, up to a bounded number of attempts.

use std::sync::Arc;

use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    clock::Clock,
    invoices::{
        allocator_client::{AllocatorClient, AllocatorError},
        domain::{Invoice, NewInvoice, Numbered},
        store::{InvoiceStore, StoreError},
    },
    page::Page,
    request_id::RequestId,
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
    /// The request id already created an invoice with another body.
    #[error("request id {request_id:?} already created invoice {invoice_number} with another body")]
    RequestIdReused {
        /// The id.
        request_id: String,
        /// The invoice it created.
        invoice_number: String,
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
            StoreError::NumberTaken | StoreError::RequestIdTaken | StoreError::Internal(_) => {
                Self::Internal(error)
            }
        }
    }
}

/// An invoice the writer returns for a `CreateInvoice` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The invoice.
    pub invoice: Invoice,
    /// Whether an earlier call with the same request id stored it.
    pub replayed: bool,
}

/// The stored invoice of a repeated call, if the repeat has the same body.
fn repeat(new: &NewInvoice, stored: Invoice, request_id: &RequestId) -> Result<Created, Error> {
    if new.same_as(&stored) {
        Ok(Created {
            invoice: stored,
            replayed: true,
        })
    } else {
        Err(Error::RequestIdReused {
            request_id: request_id.to_string(),
            invoice_number: stored.invoice_number,
        })
    }
}

/// Where the request ids of a call's allocations come from: the caller's
/// request id, or an id made for this call. Fixed names, so a repeat of the
/// call, even by another writer process, derives the same ids.
struct CallKey(Uuid);

/// The namespace of the ids derived from callers' request ids.
const CALL_KEYS: Uuid = Uuid::from_u128(0x5d1c_7f0e_2b8a_4c4e_9a51_63f0_d2e7_b914);

impl CallKey {
    fn new(request_id: Option<&RequestId>, new_id: impl FnOnce() -> Uuid) -> Self {
        Self(request_id.map_or_else(new_id, |id| {
            Uuid::new_v5(&CALL_KEYS, id.as_str().as_bytes())
        }))
    }

    /// The Allocate request id of attempt `attempt` (from 1).
    fn attempt(&self, attempt: u32) -> String {
        format!("invoice:{}:{attempt}", self.0)
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

    /// Numbers and stores a new invoice; or, for a request id that already
    /// created one from the same body, returns that invoice.
    ///
    /// Each attempt allocates with a request id of its own, derived from the
    /// caller's (or, without one, from an id made for this call), so an
    /// attempt repeated after a lost reply gets its number back.
    ///
    /// # Errors
    /// [`Error::RequestIdReused`] when the request id created an invoice from
    /// another body, [`Error::NumberConflicts`] when every number allocated
    /// was taken, [`Error::Allocator`] when none could be allocated before
    /// `deadline`, or a store failure. Nothing is stored in any of these cases.
    pub async fn create(
        &self,
        new: &NewInvoice,
        request_id: Option<&RequestId>,
        deadline: Instant,
    ) -> Result<Created, Error> {
        if let Some(request_id) = request_id
            && let Some(stored) = self
                .store
                .get_by_request_id(&new.tenant_id, request_id)
                .await?
        {
            return repeat(new, stored, request_id);
        }
        // Check the store before taking a number: with the store down the call
        // fails here instead of burning a number it cannot use. (Holding a
        // transaction open across the allocator call instead would tie up a
        // connection for as long as the allocator takes, retries included.)
        if !self.store.is_ready().await {
            return Err(StoreError::Unavailable("the invoice store does not answer".into()).into());
        }
        let call = CallKey::new(request_id, || self.clock.new_id());
        let issue_date = new
            .issue_date
            .map(|date| date.to_string())
            .unwrap_or_default();
        for attempt in 1..=self.max_attempts {
            let key = call.attempt(attempt);
            let number = self
                .allocator
                .allocate(&new.tenant_id, &issue_date, &key, deadline)
                .await?;
            let number = Numbered {
                date: crate::calendar::parse_day(&number.date).map_err(|reason| {
                    AllocatorError::Rejected(tonic::Status::internal(format!(
                        "the allocator answered the date {:?}: {reason}",
                        number.date
                    )))
                })?,
                value: number.value,
                formatted: number.formatted,
                period: number.period,
            };
            let invoice = new.numbered(number, self.clock.new_id(), self.clock.now());
            match self.store.insert(&invoice, request_id).await {
                Ok(()) => {
                    return Ok(Created {
                        invoice,
                        replayed: false,
                    });
                }
                // A concurrent repeat of this call stored its invoice first
                // (with the same number: it allocated with the same key).
                Err(StoreError::NumberTaken | StoreError::RequestIdTaken)
                    if let Some(request_id) = request_id
                        && let Some(stored) = self
                            .store
                            .get_by_request_id(&new.tenant_id, request_id)
                            .await? =>
                {
                    return repeat(new, stored, request_id);
                }
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

    /// Up to `limit` invoices after `after` (a period and a number), in
    /// period and number order, and whether more follow.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list(
        &self,
        tenant: &TenantId,
        after: Option<(&str, i64)>,
        limit: u32,
    ) -> Result<Page<Invoice>, Error> {
        let fetched = self
            .store
            .list(tenant, after, Page::<Invoice>::fetch(limit))
            .await?;
        Ok(Page::from_fetched(fetched, limit))
    }
}
