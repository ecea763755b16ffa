//! An invoice store whose every operation is bounded in time, as the
//! allocator's counter store is ([`crate::allocator::bounded`]): a database
//! that stops answering makes calls UNAVAILABLE after the bound instead of
//! holding them. An insert cut off may still commit: a retry with the same
//! request id finds the invoice.

use std::{future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    db,
    invoices::{
        domain::Invoice,
        store::{
            HighestNumber, InvoiceStore, Note, NotedAt, NumberOf, Pending, StoreError, StoredAt,
        },
    },
    request_id::RequestId,
    server::Store,
    tenant::TenantId,
};

/// `inner`, each operation cut off after `limit`.
pub struct Bounded {
    inner: Arc<dyn InvoiceStore>,
    limit: Duration,
}

impl Bounded {
    /// Bounds each operation of `inner` to `limit`.
    #[must_use]
    pub fn new(inner: Arc<dyn InvoiceStore>, limit: Duration) -> Self {
        Self { inner, limit }
    }

    async fn within<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        db::bounded(self.limit, operation, StoreError::Unavailable).await
    }
}

#[async_trait]
impl Store for Bounded {
    /// Not ready when the check itself does not finish in time: held by a
    /// database that stopped answering, it would leave readiness as it was.
    async fn readiness(&self) -> Result<(), crate::db::NotReady> {
        tokio::time::timeout(self.limit, self.inner.readiness())
            .await
            .unwrap_or(Err(db::NotReady::TimedOut(self.limit)))
    }

    /// Shutdown waits no longer than an operation for the connections.
    async fn close(&self) {
        let _ = tokio::time::timeout(self.limit, self.inner.close()).await;
    }
}

#[async_trait]
impl InvoiceStore for Bounded {
    async fn insert(
        &self,
        invoice: &Invoice,
        request_id: Option<&RequestId>,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        self.within(self.inner.insert(invoice, request_id, note))
            .await
    }

    async fn get_by_request_id(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
    ) -> Result<Option<Invoice>, StoreError> {
        self.within(self.inner.get_by_request_id(tenant, request_id))
            .await
    }

    async fn get_by_number(&self, number: NumberOf<'_>) -> Result<Option<Invoice>, StoreError> {
        self.within(self.inner.get_by_number(number)).await
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Invoice>, StoreError> {
        self.within(self.inner.get(tenant, id)).await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after: Option<(&str, i64)>,
        limit: u32,
    ) -> Result<Vec<Invoice>, StoreError> {
        self.within(self.inner.list(tenant, after, limit)).await
    }

    async fn highest_numbers(&self) -> Result<Vec<HighestNumber>, StoreError> {
        self.within(self.inner.highest_numbers()).await
    }

    async fn note(&self, note: Note<'_>) -> Result<(), StoreError> {
        self.within(self.inner.note(note)).await
    }

    async fn take_over(&self, pending: &Pending) -> Result<bool, StoreError> {
        self.within(self.inner.take_over(pending)).await
    }

    async fn pending_before(
        &self,
        before: DateTime<Utc>,
        after: Option<NotedAt>,
        limit: u32,
    ) -> Result<Vec<Pending>, StoreError> {
        self.within(self.inner.pending_before(before, after, limit))
            .await
    }

    async fn unsettled(
        &self,
        after: Option<StoredAt>,
        limit: u32,
    ) -> Result<Vec<Invoice>, StoreError> {
        self.within(self.inner.unsettled(after, limit)).await
    }
}
