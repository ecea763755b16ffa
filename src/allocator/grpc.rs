//! `numbering.v1.NumberAllocator` handlers: request → domain types → [`Allocator`] → response.

use tonic::{Code, Request, Response, Status};

use crate::{
    access::Needs,
    allocator::{
        Allocator, Error,
        numbers::{NumberRecord, NumberState},
        requests::{self, Named},
        series::{GapPolicy, Series, SeriesName},
        store::{NumberAt, StateChange, StateRefusal},
    },
    calendar::Reset,
    proto::{
        self, AdvanceCounterRequest, AdvanceCounterResponse, AllocateRequest, AllocateResponse,
        AllocatedNumber, AuditSeriesRequest, AuditSeriesResponse, ConfigureSeriesRequest,
        ConfigureSeriesResponse, ConfirmRequest, ConfirmResponse, GetNumberRequest,
        GetNumberResponse, GetSeriesRequest, GetSeriesResponse, ListNumbersRequest,
        ListNumbersResponse, ListSeriesRequest, ListSeriesResponse, ReleaseRequest,
        ReleaseResponse, ReserveRequest, ReserveResponse, VoidRequest, VoidResponse,
        number_allocator_server::{NumberAllocator, NumberAllocatorServer},
    },
    server::{
        self,
        status::{chain, internal, with_reason},
        validation::{FieldViolation, InvalidArgument},
    },
    tenant::TenantId,
};

/// Largest request the allocator decodes; its requests are a few short strings.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The gRPC face of an [`Allocator`].
#[derive(Clone)]
pub struct AllocatorService {
    allocator: Allocator,
}

/// The tonic service to serve.
#[must_use]
pub fn service(allocator: Allocator) -> NumberAllocatorServer<AllocatorService> {
    NumberAllocatorServer::new(AllocatorService { allocator })
        .max_decoding_message_size(MAX_REQUEST_BYTES)
}

impl AllocatorService {
    /// Admits the caller to a checked change of one number (voiding is
    /// administrative), applies it and shows the record.
    async fn change(
        &self,
        admission: &server::Admission,
        named: &Named,
        period: &str,
        number: i64,
        change: StateChange<'_>,
    ) -> Result<proto::NumberRecord, Status> {
        let Named { tenant, series } = named;
        let needs = match change {
            StateChange::Confirm { .. } | StateChange::Release { .. } => Needs::Tenant,
            StateChange::Void { .. } => Needs::Admin,
        };
        admission.admit(tenant, needs).await?;

        let at = NumberAt {
            tenant,
            series,
            period,
            number,
        };
        let record = self.allocator.change_state(at, change).await?;
        let shown = Shown {
            tenant,
            series,
            period,
        };
        Ok(shown.record(record))
    }
}

/// The period a record belongs to, as records show it.
struct Shown<'a> {
    tenant: &'a TenantId,
    series: &'a SeriesName,
    period: &'a str,
}

impl Shown<'_> {
    fn record(&self, record: NumberRecord) -> proto::NumberRecord {
        let state = match record.state {
            NumberState::Issued => proto::NumberState::Issued,
            NumberState::Reserved => proto::NumberState::Reserved,
            NumberState::Confirmed => proto::NumberState::Confirmed,
            NumberState::Released => proto::NumberState::Released,
            NumberState::Voided => proto::NumberState::Voided,
            NumberState::Skipped => proto::NumberState::Skipped,
        };
        proto::NumberRecord {
            tenant_id: self.tenant.to_string(),
            series: self.series.to_string(),
            period: self.period.to_owned(),
            number: record.number,
            formatted: record.formatted,
            state: state.into(),
            reason: record.reason,
            reference: record.reference,
            request_id: record.request_id,
            expires_at: record.expires_at.map(proto::timestamp),
            date: record.date.to_string(),
            updated_at: Some(proto::timestamp(record.updated_at)),
        }
    }
}

#[tonic::async_trait]
impl NumberAllocator for AllocatorService {
    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let admission = server::admission(&request)?;
        let asked = requests::allocate(request.get_ref())?;
        let Named { tenant, series } = &asked.named;
        admission.admit(tenant, Needs::Tenant).await?;

        let allocation = self
            .allocator
            .allocate(
                tenant,
                series,
                asked.count,
                asked.request_id.as_ref(),
                asked.date,
            )
            .await?;
        Ok(Response::new(AllocateResponse {
            replayed: allocation.replayed,
            numbers: allocation
                .numbers
                .into_iter()
                .map(|number| AllocatedNumber {
                    value: number.value,
                    formatted: number.formatted,
                    period: number.period,
                    date: number.date.to_string(),
                })
                .collect(),
        }))
    }

    async fn get_series(
        &self,
        request: Request<GetSeriesRequest>,
    ) -> Result<Response<GetSeriesResponse>, Status> {
        let admission = server::admission(&request)?;
        let (Named { tenant, series }, date) = requests::get_series(request.get_ref())?;
        admission.admit(&tenant, Needs::Tenant).await?;

        let series = self.allocator.get_series(&tenant, &series, date).await?;
        Ok(Response::new(GetSeriesResponse {
            series: Some(series.into()),
        }))
    }

    async fn list_series(
        &self,
        request: Request<ListSeriesRequest>,
    ) -> Result<Response<ListSeriesResponse>, Status> {
        let admission = server::admission(&request)?;
        let (tenant, asked) = requests::list_series(request.get_ref())?;
        admission.admit(&tenant, Needs::Tenant).await?;

        let page = self
            .allocator
            .list_series(&tenant, asked.after.as_deref(), asked.size)
            .await?;
        let next_page_token = asked.listing.next_token(&page, |last| last.name.clone());
        Ok(Response::new(ListSeriesResponse {
            series: page.items.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn audit_series(
        &self,
        request: Request<AuditSeriesRequest>,
    ) -> Result<Response<AuditSeriesResponse>, Status> {
        let admission = server::admission(&request)?;
        let Named { tenant, series } = requests::audit_series(request.get_ref())?;
        admission.admit(&tenant, Needs::Tenant).await?;

        let audit = self
            .allocator
            .audit(&tenant, &series, &request.get_ref().period)
            .await?;
        Ok(Response::new(AuditSeriesResponse {
            last_value: audit.last_value,
            issued: audit.issued,
            reserved: audit.reserved,
            confirmed: audit.confirmed,
            released: audit.released,
            voided: audit.voided,
            skipped: audit.skipped,
            unaccounted: audit.unaccounted,
            unaccounted_sample: audit.unaccounted_sample,
        }))
    }

    async fn get_number(
        &self,
        request: Request<GetNumberRequest>,
    ) -> Result<Response<GetNumberResponse>, Status> {
        let admission = server::admission(&request)?;
        let Named { tenant, series } = requests::get_number(request.get_ref())?;
        admission.admit(&tenant, Needs::Tenant).await?;

        let asked = request.get_ref();
        let record = self
            .allocator
            .get_number(&tenant, &series, &asked.period, asked.number)
            .await?;
        let shown = Shown {
            tenant: &tenant,
            series: &series,
            period: &asked.period,
        };
        Ok(Response::new(GetNumberResponse {
            record: Some(shown.record(record)),
        }))
    }

    async fn list_numbers(
        &self,
        request: Request<ListNumbersRequest>,
    ) -> Result<Response<ListNumbersResponse>, Status> {
        let admission = server::admission(&request)?;
        let asked = requests::list_numbers(request.get_ref())?;
        let Named { tenant, series } = &asked.named;
        admission.admit(tenant, Needs::Tenant).await?;

        let period = &request.get_ref().period;
        let page = self
            .allocator
            .list_numbers(
                tenant,
                series,
                period,
                asked.state,
                asked.page.after,
                asked.page.size,
            )
            .await?;
        let next_page_token = page
            .next_after
            .map(|last| asked.page.listing.token(&last.to_string()))
            .unwrap_or_default();
        let shown = Shown {
            tenant,
            series,
            period,
        };
        Ok(Response::new(ListNumbersResponse {
            records: page.records.into_iter().map(|r| shown.record(r)).collect(),
            next_page_token,
        }))
    }

    async fn confirm(
        &self,
        request: Request<ConfirmRequest>,
    ) -> Result<Response<ConfirmResponse>, Status> {
        let admission = server::admission(&request)?;
        let asked = request.get_ref();
        let (named, change) = requests::confirm(asked)?;
        let record = self
            .change(&admission, &named, &asked.period, asked.number, change)
            .await?;
        Ok(Response::new(ConfirmResponse {
            record: Some(record),
        }))
    }

    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        let admission = server::admission(&request)?;
        let asked = requests::reserve(request.get_ref())?;
        let Named { tenant, series } = &asked.named;
        admission.admit(tenant, Needs::Tenant).await?;

        let reservation = match &asked.request_id {
            Some(request_id) if request.get_ref().repeat_only => {
                self.allocator
                    .repeat_reservation(tenant, series, request_id)
                    .await?
            }
            _ => {
                self.allocator
                    .reserve(
                        tenant,
                        series,
                        asked.request_id.as_ref(),
                        asked.date,
                        asked.lease,
                    )
                    .await?
            }
        };
        let shown = Shown {
            tenant,
            series,
            period: &reservation.period,
        };
        Ok(Response::new(ReserveResponse {
            record: Some(shown.record(reservation.record)),
            replayed: reservation.replayed,
        }))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let admission = server::admission(&request)?;
        let asked = request.get_ref();
        let (named, change) = requests::release(asked)?;
        let record = self
            .change(&admission, &named, &asked.period, asked.number, change)
            .await?;
        Ok(Response::new(ReleaseResponse {
            record: Some(record),
        }))
    }

    async fn void(&self, request: Request<VoidRequest>) -> Result<Response<VoidResponse>, Status> {
        let admission = server::admission(&request)?;
        let asked = request.get_ref();
        let (named, change) = requests::void(asked)?;
        let record = self
            .change(&admission, &named, &asked.period, asked.number, change)
            .await?;
        Ok(Response::new(VoidResponse {
            record: Some(record),
        }))
    }

    async fn advance_counter(
        &self,
        request: Request<AdvanceCounterRequest>,
    ) -> Result<Response<AdvanceCounterResponse>, Status> {
        let admission = server::admission(&request)?;
        let (Named { tenant, series }, date) = requests::advance_counter(request.get_ref())?;
        admission.admit(&tenant, Needs::Admin).await?;

        let asked = request.get_ref();
        let series = self
            .allocator
            .advance(&tenant, &series, asked.at_least, &asked.reason, date)
            .await?;
        Ok(Response::new(AdvanceCounterResponse {
            series: Some(series.into()),
        }))
    }

    async fn configure_series(
        &self,
        request: Request<ConfigureSeriesRequest>,
    ) -> Result<Response<ConfigureSeriesResponse>, Status> {
        let admission = server::admission(&request)?;
        let (Named { tenant, series }, change) = requests::configure_series(request.get_ref())?;
        admission.admit(&tenant, Needs::Admin).await?;

        let series = self.allocator.configure(&tenant, &series, &change).await?;
        Ok(Response::new(ConfigureSeriesResponse {
            series: Some(series.into()),
        }))
    }
}

impl From<Reset> for proto::Reset {
    fn from(reset: Reset) -> Self {
        match reset {
            Reset::Never => Self::Never,
            Reset::Yearly => Self::Yearly,
            Reset::Monthly => Self::Monthly,
            Reset::Daily => Self::Daily,
        }
    }
}

impl From<Series> for proto::Series {
    fn from(series: Series) -> Self {
        Self {
            tenant_id: series.tenant_id,
            name: series.name,
            last_value: series.last_value,
            format: series.config.format.template().to_owned(),
            reset: proto::Reset::from(series.config.calendar.reset).into(),
            timezone: series.config.calendar.zone.name().to_owned(),
            start_at: series.config.start_at,
            current_period: series.period,
            gap_policy: match series.config.gap_policy {
                GapPolicy::Void => proto::GapPolicy::Void,
                GapPolicy::Reissue => proto::GapPolicy::Reissue,
            }
            .into(),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid { field, reason } => InvalidArgument(vec![FieldViolation {
                field: field.to_owned(),
                description: reason,
            }])
            .into(),
            Error::SeriesInUse {
                tenant,
                series,
                field,
            } => with_reason(
                Code::FailedPrecondition,
                format!(
                    "{field} of series {series:?} cannot change: the series has handed out \
                     (or skipped) numbers"
                ),
                "SERIES_IN_USE",
                &[
                    ("tenantId", tenant),
                    ("series", series),
                    ("field", field.to_owned()),
                ],
            ),
            Error::RequestIdNotFound { request_id } => with_reason(
                Code::NotFound,
                format!(
                    "no Reserve was made under request id {request_id:?} (or it was forgotten \
                     after --request-id-retention); nothing was reserved"
                ),
                "REQUEST_ID_NOT_FOUND",
                &[("requestId", request_id)],
            ),
            Error::SeriesNotFound { tenant, series } => with_reason(
                Code::NotFound,
                format!("series {series:?} of tenant {tenant:?} has never been used or configured"),
                "SERIES_NOT_FOUND",
                &[("tenantId", tenant), ("series", series)],
            ),
            Error::NumberNotFound {
                tenant,
                series,
                period,
                number,
                skipped,
            } => number_not_found(tenant, series, period, number, skipped),
            Error::NotAllowed(refusal) => refused(refusal),
            Error::TakenSince {
                request_id,
                period,
                number,
                formatted,
            } => with_reason(
                Code::FailedPrecondition,
                format!(
                    "number {number} is held under request id {request_id:?}, not this one: its \
                     reservation under this one ended and another call took it"
                ),
                "NOT_THE_HOLDER",
                &[
                    ("requestId", request_id),
                    ("period", period),
                    ("number", number.to_string()),
                    ("formatted", formatted),
                ],
            ),
            Error::RequestIdReused {
                request_id,
                series,
                count,
                reserved,
            } => reused(request_id, series, count, reserved),
            Error::Busy => with_reason(
                Code::ResourceExhausted,
                "too many allocations are waiting to commit; retry with backoff",
                "ALLOCATOR_BUSY",
                &[],
            ),
            Error::Exhausted => with_reason(
                Code::FailedPrecondition,
                format!("the series cannot go past {}", i64::MAX),
                "SERIES_EXHAUSTED",
                &[],
            ),
            Error::Unavailable(cause) => {
                tracing::warn!(error = %chain(cause.as_ref()), "counter store unavailable");
                with_reason(
                    Code::Unavailable,
                    "the counter store is unavailable; retry later",
                    "STORE_UNAVAILABLE",
                    &[],
                )
            }
            error @ (Error::Internal(_) | Error::StoredFormat { .. }) => internal(&error),
        }
    }
}

/// `FAILED_PRECONDITION` `REQUEST_ID_REUSED` for a request id first used by
/// another call (`Reserve` if `reserved`, else `Allocate`), of `count`
/// numbers of `series`.
fn reused(request_id: String, series: String, count: i64, reserved: bool) -> Status {
    let call = if reserved { "Reserve" } else { "Allocate" };
    with_reason(
        Code::FailedPrecondition,
        format!(
            "request id {request_id:?} was first used by {call} for {count} numbers of series \
             {series:?}; send a new request id for a different call"
        ),
        "REQUEST_ID_REUSED",
        &[
            ("requestId", request_id),
            ("series", series),
            ("count", count.to_string()),
            ("call", call.to_owned()),
        ],
    )
}

/// `FAILED_PRECONDITION` for a change a number's state does not allow, with
/// the state's reason.
fn refused(refusal: StateRefusal) -> Status {
    match refusal {
        StateRefusal::AlreadyConfirmed { reference } => with_reason(
            Code::FailedPrecondition,
            format!("the number was confirmed with reference {reference:?}"),
            "ALREADY_CONFIRMED",
            &[("reference", reference)],
        ),
        StateRefusal::Voided { reason } => with_reason(
            Code::FailedPrecondition,
            format!("the number was voided ({reason}); it is never handed out again"),
            "NUMBER_VOIDED",
            &[("reason", reason)],
        ),
        StateRefusal::Released { reason } => with_reason(
            Code::FailedPrecondition,
            format!("the number was released ({reason}); reserve a number again"),
            "NUMBER_RELEASED",
            &[("reason", reason)],
        ),
        StateRefusal::Confirmed { reference } => with_reason(
            Code::FailedPrecondition,
            format!("the number was confirmed with reference {reference:?}; void it to cancel it"),
            "NUMBER_CONFIRMED",
            &[("reference", reference)],
        ),
        StateRefusal::Expired { expired_at } => {
            // As a record's times read in JSON: UTC, `Z`.
            let expired_at = expired_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
            with_reason(
                Code::FailedPrecondition,
                format!("the number's reservation expired at {expired_at}; reserve a number again"),
                "RESERVATION_EXPIRED",
                &[("expiredAt", expired_at)],
            )
        }
        StateRefusal::NotReserved => with_reason(
            Code::FailedPrecondition,
            "the number was handed out by Allocate, not reserved: confirm or void it",
            "NUMBER_NOT_RESERVED",
            &[],
        ),
        StateRefusal::NotTheHolder { request_id } => with_reason(
            Code::FailedPrecondition,
            format!(
                "the number is held {}, not under the one this call names (if that one \
                 reserved it, its lease ended and another call took it since)",
                if request_id.is_empty() {
                    "without a request id".to_owned()
                } else {
                    format!("under request id {request_id:?}")
                }
            ),
            "NOT_THE_HOLDER",
            &[("requestId", request_id)],
        ),
        StateRefusal::HandedOutAgain { request_id } => with_reason(
            Code::FailedPrecondition,
            "the number was handed out again after this call was sent: the lease of the \
             reservation it was sent for ended while the call waited; nothing changed \
             (name the reservation's request_id to confirm or release only its own)",
            "NUMBER_REISSUED",
            &[("requestId", request_id)],
        ),
    }
}

/// `NOT_FOUND` for a number never handed out, saying whether it was skipped.
fn number_not_found(
    tenant: String,
    series: String,
    period: String,
    number: i64,
    skipped: bool,
) -> Status {
    // A series that never resets has one period, unnamed.
    let of_period = if period.is_empty() {
        String::new()
    } else {
        format!(" of period {period:?}")
    };
    with_reason(
        Code::NotFound,
        format!(
            "number {number}{of_period} of series {series:?} of tenant {tenant:?} {}",
            if skipped {
                "was skipped by AdvanceCounter, never handed out"
            } else {
                "was never handed out or skipped"
            }
        ),
        "NUMBER_NOT_FOUND",
        &[
            ("tenantId", tenant),
            ("series", series),
            ("period", period),
            ("number", number.to_string()),
        ],
    )
}
