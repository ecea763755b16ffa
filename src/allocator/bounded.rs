//! A counter store whose every operation is bounded in time. A database that
//! stops answering without closing its connections (frozen, or behind a
//! network that drops everything) would otherwise hold each call, and the
//! group committer with them, until the operating system gives up on the
//! connection; bounded, the call answers UNAVAILABLE and its connection is
//! dropped. An operation cut off may still commit: its numbers are a gap,
//! never handed out again.

use std::{future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{
    allocator::{
        series::{SeriesConfig, SeriesName},
        store::{
            Advance, Call, Change, ChangeError, Changed, ConfigureError, CounterStore, Held,
            KeyRow, Ledger, NumberAt, Outcome, PeriodOf, RangeRow, RangesAfter, Reissue, Stamp,
            StateChange, StateRow, StateWrite, StatesAfter, StoreError,
        },
    },
    db,
    request_id::RequestId,
    server::Store,
    tenant::TenantId,
};

/// `inner`, each operation cut off after `limit`.
pub struct Bounded {
    inner: Arc<dyn CounterStore>,
    limit: Duration,
}

impl Bounded {
    /// Bounds each operation of `inner` to `limit`.
    #[must_use]
    pub fn new(inner: Arc<dyn CounterStore>, limit: Duration) -> Self {
        Self { inner, limit }
    }

    async fn within<T, E: From<StoreError>>(
        &self,
        operation: impl Future<Output = Result<T, E>> + Send,
    ) -> Result<T, E> {
        db::bounded(self.limit, operation, |cause| {
            StoreError::Unavailable(cause).into()
        })
        .await
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
impl CounterStore for Bounded {
    async fn allocate_many(
        &self,
        calls: &[Call<'_>],
        defaults: &SeriesConfig,
        stamp: Stamp,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.within(self.inner.allocate_many(calls, defaults, stamp))
            .await
    }

    async fn first_answer(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        stamp: Stamp,
    ) -> Result<Option<KeyRow>, StoreError> {
        self.within(self.inner.first_answer(tenant, request_id, stamp))
            .await
    }

    async fn ledger(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        sample: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<Ledger>, StoreError> {
        self.within(self.inner.ledger(tenant, series, period, sample, now))
            .await
    }

    async fn range_at(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        number: i64,
    ) -> Result<Option<RangeRow>, StoreError> {
        self.within(self.inner.range_at(tenant, series, period, number))
            .await
    }

    async fn ranges_after(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        after: RangesAfter,
    ) -> Result<Vec<RangeRow>, StoreError> {
        self.within(self.inner.ranges_after(tenant, series, period, after))
            .await
    }

    async fn change_state(
        &self,
        at: NumberAt<'_>,
        range: &RangeRow,
        change: StateChange<'_>,
        held: Held,
    ) -> Result<Option<StateRow>, ChangeError> {
        self.within(self.inner.change_state(at, range, change, held))
            .await
    }

    async fn change_states(&self, writes: &[StateWrite<'_>]) -> Result<Vec<Changed>, StoreError> {
        self.within(self.inner.change_states(writes)).await
    }

    async fn reissue(
        &self,
        take: Reissue<'_>,
        stamp: Stamp,
    ) -> Result<Option<Outcome>, StoreError> {
        self.within(self.inner.reissue(take, stamp)).await
    }

    async fn given_back(
        &self,
        periods: &[PeriodOf<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, StoreError> {
        self.within(self.inner.given_back(periods, now)).await
    }

    async fn expire_leases(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        self.within(self.inner.expire_leases(now, limit)).await
    }

    async fn states_between(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        numbers: (i64, i64),
    ) -> Result<Vec<StateRow>, StoreError> {
        self.within(self.inner.states_between(tenant, series, period, numbers))
            .await
    }

    async fn states_after(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        after: StatesAfter<'_>,
    ) -> Result<Vec<(StateRow, RangeRow)>, StoreError> {
        self.within(self.inner.states_after(tenant, series, period, after))
            .await
    }

    async fn find(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
    ) -> Result<Option<SeriesConfig>, StoreError> {
        self.within(self.inner.find(tenant, series)).await
    }

    async fn counter(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
    ) -> Result<Option<i64>, StoreError> {
        self.within(self.inner.counter(tenant, series, period))
            .await
    }

    async fn configure(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        defaults: &SeriesConfig,
        change: Change<'_>,
    ) -> Result<SeriesConfig, ConfigureError> {
        self.within(self.inner.configure(tenant, series, defaults, change))
            .await
    }

    async fn advance(
        &self,
        advance: Advance<'_>,
        defaults: &SeriesConfig,
    ) -> Result<(SeriesConfig, i64), StoreError> {
        self.within(self.inner.advance(advance, defaults)).await
    }

    async fn forget_request_ids(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.within(self.inner.forget_request_ids(before, limit))
            .await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, SeriesConfig)>, StoreError> {
        self.within(self.inner.list(tenant, after, limit)).await
    }
}
