//! Reservations: one number held by a lease until it is confirmed, released
//! or voided, and the sweep that gives back the numbers whose lease ended.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, SubsecRound, TimeDelta, Utc};

use crate::{
    allocator::{
        Allocator, Error,
        allocate::{Ask, answered, parse_stored},
        numbers::{NumberRecord, NumberState},
        series::SeriesName,
        store::{Grant, Lease, StoreError},
    },
    request_id::RequestId,
    tenant::TenantId,
};

/// A number reserved, as `Reserve` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The number and its record.
    pub record: NumberRecord,
    /// The period it belongs to.
    pub period: String,
    /// Whether an earlier call with the same request id reserved it.
    pub replayed: bool,
}

impl Allocator {
    /// Reserves one number of the period `date` falls in (none: today) until
    /// `lease` (zero: the default) ends: the lowest number given back if the
    /// series reissues and one is, else a new one, committed before it is
    /// returned. A request id repeats as it does for
    /// [`allocate`](Allocator::allocate). The first call on a series creates
    /// it.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a lease out of bounds or a date too far ahead
    /// (or, in a series that resets, back);
    /// as [`allocate`](Allocator::allocate) otherwise.
    pub async fn reserve(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        request_id: Option<&RequestId>,
        date: Option<NaiveDate>,
        lease: Duration,
    ) -> Result<Reservation, Error> {
        let lease = self.leases.pick(lease).map_err(|reason| Error::Invalid {
            field: "lease",
            reason,
        })?;
        let lease = TimeDelta::from_std(lease).unwrap_or(TimeDelta::MAX);
        // The lease's end as the database keeps times, too (to the
        // microsecond), so that it ends when it says.
        let at = self.now();
        let lease = Lease {
            at,
            ends: at
                .checked_add_signed(lease)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
                .trunc_subsecs(6),
        };
        let ask = Ask {
            tenant,
            series,
            count: 1,
            request_id,
            date,
            lease: Some(lease),
        };
        let (grant, replayed) = self.obtain(ask).await?;
        if let (true, Some(request_id)) = (replayed, request_id) {
            return self.as_it_stands(tenant, series, request_id, grant).await;
        }
        if self.now() >= lease.ends {
            // Committed after its lease ended (it waited its turn longer than
            // the lease): given back already, perhaps reissued. Answering it
            // would tell two callers the number is theirs.
            return Err(StoreError::Unavailable(
                "the lease ended before the reservation was committed; retry".into(),
            )
            .into());
        }
        // Reserved by this call, a new number or one given back: its row
        // holds what the lease says.
        let format = parse_stored(tenant, series, &grant.format)?;
        let record = NumberRecord {
            number: grant.first,
            formatted: format.render(grant.first, grant.date),
            date: grant.date,
            state: NumberState::Reserved,
            reference: String::new(),
            reason: String::new(),
            request_id: request_id.map(ToString::to_string).unwrap_or_default(),
            expires_at: Some(lease.ends),
            updated_at: lease.at,
        };
        Ok(Reservation {
            record,
            period: grant.period,
            replayed,
        })
    }

    /// What an earlier [`reserve`](Allocator::reserve) of `series` under
    /// `request_id` reserved, as a repeat of that call answers it; nothing is
    /// reserved if no call was made under it (or none has committed yet).
    ///
    /// # Errors
    /// [`Error::RequestIdNotFound`] if none was (or it was forgotten, past
    /// the request ids' retention); as a repeated
    /// [`reserve`](Allocator::reserve) otherwise.
    pub async fn repeat_reservation(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        request_id: &RequestId,
    ) -> Result<Reservation, Error> {
        let first = self
            .first_answered(tenant, request_id, series.as_str(), 1, "reserve")
            .await?
            .ok_or_else(|| Error::RequestIdNotFound {
                request_id: request_id.to_string(),
            })?;
        let (grant, _) = answered(first, Some(request_id), 1, true)?;
        self.as_it_stands(tenant, series, request_id, grant).await
    }

    /// A number reserved by an earlier call under `request_id`, as it stands
    /// now, unless another call holds it since: answered, it would be two
    /// callers' at once. Until then it is answered as it stands (given back
    /// and not taken since, its holder's late `Confirm` may still take it).
    ///
    /// # Errors
    /// [`Error::TakenSince`]; a store failure.
    async fn as_it_stands(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        request_id: &RequestId,
        grant: Grant,
    ) -> Result<Reservation, Error> {
        let record = self
            .get_number(tenant, series, &grant.period, grant.first)
            .await?;
        if record.request_id != request_id.as_str() {
            return Err(Error::TakenSince {
                request_id: record.request_id,
                period: grant.period,
                number: record.number,
                formatted: record.formatted,
            });
        }
        Ok(Reservation {
            record,
            period: grant.period,
            replayed: true,
        })
    }

    /// Gives back the reservations whose lease has ended, in batches of
    /// `batch`, until none is left: each released or voided by its series'
    /// policy, with the reason "lease expired"; returns how many. Each batch
    /// is its own short write.
    ///
    /// # Errors
    /// A store failure; what was given back before it stays so.
    pub async fn expire_leases(&self, batch: u32) -> Result<u64, Error> {
        let now = self.now();
        let mut expired = 0;
        loop {
            let done = self.store.expire_leases(now, batch).await?;
            expired += done;
            if done < u64::from(batch) {
                return Ok(expired);
            }
        }
    }
}
