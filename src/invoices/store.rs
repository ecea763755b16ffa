//! The invoice store interface, which names none of its implementations.
//! The gRPC layer never sees which backend runs.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    db::{DbErrorKind, classify},
    invoices::domain::Invoice,
    request_id::RequestId,
    server::Store,
    tenant::TenantId,
};

/// Boxed cause of a store error, whatever the backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An invoice's place in the order of storing: when it was stored, then
/// its id.
pub type StoredAt = (DateTime<Utc>, Uuid);

/// A pending note's place in the order of noting: when it was noted, then
/// its tenant and request key.
pub type NotedAt = (DateTime<Utc>, String, String);

/// Durable invoices, unique per tenant by period and number, and by
/// formatted number.
#[async_trait]
pub trait InvoiceStore: Store {
    /// Stores a new invoice with the request id of the call that created it,
    /// durably before it returns. `note`: the request key of the invoice's
    /// pending note (its reservation's), which settles its number; it is
    /// stored settled, and only while that note is there, not taken over
    /// ([`InvoiceStore::take_over`]), and noted by this invoice's call since
    /// it was made, which the insert checks and holds until it commits. (A
    /// repeat of the call may have noted its own invoice under it since: it
    /// reserved the same number. A note made afresh after reconciliation
    /// deleted the call's is not the call's.) Without one (imported) it is
    /// stored unsettled, for reconciliation to settle.
    ///
    /// # Errors
    /// [`StoreError::NumberTaken`] when the tenant already has an invoice with
    /// this number in this period, or this formatted number,
    /// [`StoreError::RequestIdTaken`] with this request id,
    /// [`StoreError::NoteTakenOver`] when the note is gone, taken over, or
    /// made afresh since the call noted it; nothing is stored then.
    async fn insert(
        &self,
        invoice: &Invoice,
        request_id: Option<&RequestId>,
        note: Option<&str>,
    ) -> Result<(), StoreError>;

    /// The tenant's invoice created by the call with this request id.
    async fn get_by_request_id(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
    ) -> Result<Option<Invoice>, StoreError>;

    /// The tenant's stored invoice that holds a number: of its period and
    /// number, or of its formatted text.
    async fn get_by_number(&self, number: NumberOf<'_>) -> Result<Option<Invoice>, StoreError>;

    /// One of the tenant's invoices; `None` for an unknown id or another tenant's.
    async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Invoice>, StoreError>;

    /// Up to `limit` of the tenant's invoices after `after` (a period and a
    /// number), in period and number order.
    async fn list(
        &self,
        tenant: &TenantId,
        after: Option<(&str, i64)>,
        limit: u32,
    ) -> Result<Vec<Invoice>, StoreError>;

    /// The highest invoice number of every tenant and issue date, compared
    /// as numbers.
    async fn highest_numbers(&self) -> Result<Vec<HighestNumber>, StoreError>;

    /// Applies one bookkeeping write of the reservations in flight.
    async fn note(&self, note: Note<'_>) -> Result<(), StoreError>;

    /// Takes a pending note over for reconciliation, if it still names the
    /// invoice it named when read (`pending`): from then on no invoice is
    /// stored under it, so its number, if no invoice holds it yet, can be
    /// given back. Whether it is taken over: not if the call stored its
    /// invoice and settled the note since, or a repeat of the call noted
    /// another invoice under it. A note taken over stays taken over, also
    /// when noted again, until it is done.
    async fn take_over(&self, pending: &Pending) -> Result<bool, StoreError>;

    /// Up to `limit` reservations pending since before `before`, oldest
    /// first (by when noted, then tenant and request key), after `after` if
    /// given: left by calls that died, if `before` is older than any call
    /// runs.
    async fn pending_before(
        &self,
        before: DateTime<Utc>,
        after: Option<NotedAt>,
        limit: u32,
    ) -> Result<Vec<Pending>, StoreError>;

    /// Up to `limit` invoices whose number is not settled with the
    /// allocator, oldest first (by when stored, then id), after `after`
    /// (when stored and id) if given.
    async fn unsettled(
        &self,
        after: Option<StoredAt>,
        limit: u32,
    ) -> Result<Vec<Invoice>, StoreError>;
}

/// One number of a tenant's invoice series.
#[derive(Debug, Clone, Copy)]
pub struct NumberOf<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The number's period.
    pub period: &'a str,
    /// The number.
    pub number: i64,
    /// Its text.
    pub formatted: &'a str,
}

impl<'a> NumberOf<'a> {
    /// The number an invoice holds.
    #[must_use]
    pub fn held_by(invoice: &'a Invoice) -> Self {
        Self {
            tenant: &invoice.tenant_id,
            period: &invoice.period,
            number: invoice.number,
            formatted: &invoice.invoice_number,
        }
    }
}

/// A reservation asked for an invoice not stored yet.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Pending {
    /// The tenant.
    pub tenant_id: String,
    /// The request id the reservation is asked with: a repeat answers the
    /// same number.
    pub request_key: String,
    /// The invoice's date, `YYYY-MM-DD`, or empty for today.
    pub issue_date: String,
    /// When it was asked for.
    pub since: DateTime<Utc>,
    /// The id of the invoice the call stores under the reserved number;
    /// empty in notes written before notes named their invoices.
    pub invoice_id: String,
    /// As read: the ids of the invoices of every call that noted it and has
    /// not withdrawn, space-separated (`invoice_id`'s among them unless its
    /// call withdrew). Not written: a note is made, or made again, by its
    /// `invoice_id`.
    pub noted_by: String,
}

/// A bookkeeping write of the reservations in flight.
#[derive(Debug, Clone, Copy)]
pub enum Note<'a> {
    /// A reservation is about to be asked for, by a call with `request_id`.
    /// If that request id already created one of the tenant's invoices,
    /// nothing is noted and the note fails [`StoreError::RequestIdTaken`]:
    /// the read and the note are one write.
    Pending {
        /// The reservation.
        pending: &'a Pending,
        /// The call's request id.
        request_id: Option<&'a RequestId>,
    },
    /// The reservation's number is settled: confirmed to the invoice stored
    /// under it, or given back.
    Done {
        /// The tenant.
        tenant: &'a str,
        /// The request id it was asked with.
        request_key: &'a str,
    },
    /// The call that noted `pending` keeps nothing under it (it was
    /// refused, the number is not held for it, or is found taken): the call
    /// (its invoice) is taken off the note's callers, and the note goes once
    /// none is left. Another call under the same request id that noted it
    /// too may still store its invoice under it: it settles the note,
    /// withdraws in turn, or leaves it to reconciliation.
    Withdrawn {
        /// The reservation, as the call noted it.
        pending: &'a Pending,
    },
    /// The number of an invoice no note names (stored before notes named
    /// their invoices, or imported) is settled with the allocator: confirmed
    /// with its id, or not one it handed out.
    Settled {
        /// The tenant.
        tenant: &'a str,
        /// The invoice.
        id: Uuid,
    },
}

/// A tenant's highest invoice number stored with one issue date.
#[derive(Debug, Clone, PartialEq, Eq, Hash, sqlx::FromRow)]
pub struct HighestNumber {
    /// The tenant.
    pub tenant_id: String,
    /// The issue date.
    pub issue_date: chrono::NaiveDate,
    /// Its highest `number`.
    pub number: i64,
}

/// An invoice store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The tenant already has an invoice with this number.
    #[error("invoice number already taken")]
    NumberTaken,
    /// The tenant already has an invoice created with this request id.
    #[error("request id already used")]
    RequestIdTaken,
    /// The invoice's pending note is gone, reconciliation took it over, or
    /// it was made afresh since the call noted it: its number is not the
    /// call's to store the invoice under.
    #[error("the reservation's note was taken over")]
    NoteTakenOver,
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
                        | "invoices_tenant_period_number_key"
                        | "invoices.tenant_id, invoices.invoice_number"
                        | "invoices.tenant_id, invoices.period, invoices.number"
                ) =>
            {
                Self::NumberTaken
            }
            DbErrorKind::UniqueViolation(Some(constraint))
                if matches!(
                    constraint.as_str(),
                    "invoices_tenant_request_id_key" | "invoices.tenant_id, invoices.request_id"
                ) =>
            {
                Self::RequestIdTaken
            }
            // A new connection refused (the database dropped, or the role's
            // password changed, under the running service) is away too.
            DbErrorKind::Unavailable
            | DbErrorKind::Retryable
            | DbErrorKind::NoSuchDatabase
            | DbErrorKind::Authentication => Self::Unavailable(error.into()),
            _ => Self::Internal(error.into()),
        }
    }
}
