//! `numbering.v1.NumberAllocator` handlers: request → domain types → [`Allocator`] → response.

use tonic::{Code, Request, Response, Status};

use crate::{
    access::Needs,
    allocator::{
        Allocator, Error, SeriesChange,
        numbers::{NumberRecord, NumberState},
        series::{Count, GapPolicy, NumberFormat, Series, SeriesName, TimeZone},
        store::{NumberAt, StateChange, StateRefusal},
    },
    calendar::{Reset, check_period, parse_date},
    proto::{
        self, AdvanceCounterRequest, AdvanceCounterResponse, AllocateRequest, AllocateResponse,
        AllocatedNumber, AuditSeriesRequest, AuditSeriesResponse, ConfigureSeriesRequest,
        ConfigureSeriesResponse, ConfirmRequest, ConfirmResponse, GetNumberRequest,
        GetNumberResponse, GetSeriesRequest, GetSeriesResponse, ListNumbersRequest,
        ListNumbersResponse, ListSeriesRequest, ListSeriesResponse, ReleaseRequest,
        ReleaseResponse, ReserveRequest, ReserveResponse, VoidRequest, VoidResponse,
        number_allocator_server::{NumberAllocator, NumberAllocatorServer},
    },
    request_id::RequestId,
    server::{
        self, pagination,
        status::{chain, internal, with_reason},
        validation::{FieldViolation, InvalidArgument, Violations},
    },
    tenant::TenantId,
};

/// Largest request the allocator decodes; its requests are a few short strings.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Longest reason an `AdvanceCounter` call gives, in characters.
const MAX_REASON_CHARS: usize = 500;

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
    /// Checks the fields of a change of one number, admits the caller
    /// (voiding is administrative), applies it and shows the record.
    async fn change(
        &self,
        admission: &server::Admission,
        asked: NumberFields<'_>,
        change: StateChange<'_>,
    ) -> Result<proto::NumberRecord, Status> {
        let mut violations = Violations::new();
        let names = number_at(
            &mut violations,
            asked.tenant,
            asked.series,
            asked.period,
            asked.number,
        );
        let (field, note, needs) = match change {
            StateChange::Confirm { reference, .. } => ("reference", reference, Needs::Tenant),
            StateChange::Release { reason, .. } => ("reason", reason, Needs::Tenant),
            StateChange::Void { reason } => ("reason", reason, Needs::Admin),
        };
        violations.check(field, check_note(note));
        if let StateChange::Confirm {
            holder: Some(id), ..
        }
        | StateChange::Release {
            holder: Some(id), ..
        } = change
        {
            violations.check("request_id", RequestId::parse(id));
        }
        violations.finish()?;
        let Some((tenant, series)) = names else {
            unreachable!("finish() returned Ok, so every field parsed");
        };
        admission.admit(&tenant, needs).await?;

        let at = NumberAt {
            tenant: &tenant,
            series: &series,
            period: asked.period,
            number: asked.number,
        };
        let record = self.allocator.change_state(at, change).await?;
        let shown = Shown {
            tenant: &tenant,
            series: &series,
            period: asked.period,
        };
        Ok(shown.record(record))
    }
}

/// The request id a change names its number's holder by; empty: none.
fn holder(request_id: &str) -> Option<&str> {
    (!request_id.is_empty()).then_some(request_id)
}

/// The fields of a request that name one number, as sent.
#[derive(Clone, Copy)]
struct NumberFields<'a> {
    tenant: &'a str,
    series: &'a str,
    period: &'a str,
    number: i64,
}

/// The fields that name one number, checked.
fn number_at(
    violations: &mut Violations,
    tenant: &str,
    series: &str,
    period: &str,
    number: i64,
) -> Option<(TenantId, SeriesName)> {
    let (tenant, series) = tenant_and_series(violations, tenant, series);
    violations.check("period", check_period(period));
    if number < 1 {
        violations.add("number", "must be 1 or more");
    }
    tenant.zip(series)
}

/// A reference or a reason: 1 to 256 characters of free text, not blank.
fn check_note(text: &str) -> Result<(), String> {
    crate::text::check(text, MAX_NOTE_CHARS, true).map(drop)
}

/// Longest reference or reason of a number's state.
const MAX_NOTE_CHARS: usize = 256;

/// The largest `start_at`: 10¹⁸, so that a period not yet begun always has
/// room for the numbers of any one commit (a counter computes its first
/// value from it without overflow), and is never refused as exhausted.
const MAX_START_AT: i64 = 1_000_000_000_000_000_000;

/// A state asked for: unspecified is any.
fn number_state(raw: i32) -> Result<Option<NumberState>, String> {
    match proto::NumberState::try_from(raw) {
        Ok(proto::NumberState::Unspecified) => Ok(None),
        Ok(proto::NumberState::Issued) => Ok(Some(NumberState::Issued)),
        Ok(proto::NumberState::Skipped) => Ok(Some(NumberState::Skipped)),
        Ok(proto::NumberState::Confirmed) => Ok(Some(NumberState::Confirmed)),
        Ok(proto::NumberState::Voided) => Ok(Some(NumberState::Voided)),
        Ok(proto::NumberState::Reserved) => Ok(Some(NumberState::Reserved)),
        Ok(proto::NumberState::Released) => Ok(Some(NumberState::Released)),
        Err(_) => Err(format!("{raw} is not a NumberState")),
    }
}

/// The series name a page token says the last page ended with: a name
/// this service stored, or the token is not one it gave.
fn series_token(token: &str) -> Result<Option<String>, String> {
    let Some(key) = pagination::decode_token(token)? else {
        return Ok(None);
    };
    match SeriesName::parse(&key) {
        Ok(name) => Ok(Some(name.to_string())),
        Err(_) => Err("is not a token this listing gave".into()),
    }
}

/// The number a page token says the last page ended with.
fn number_token(token: &str) -> Result<Option<i64>, String> {
    let Some(key) = pagination::decode_token(token)? else {
        return Ok(None);
    };
    match key.parse::<i64>() {
        Ok(number) if number >= 1 => Ok(Some(number)),
        _ => Err("is not a token this listing gave".into()),
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

fn tenant_and_series(
    violations: &mut Violations,
    tenant: &str,
    series: &str,
) -> (Option<TenantId>, Option<SeriesName>) {
    (
        violations.check("tenant_id", TenantId::parse(tenant)),
        violations.check("series", SeriesName::parse(series)),
    )
}

#[tonic::async_trait]
impl NumberAllocator for AllocatorService {
    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let admission = server::admission(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        let (tenant, series) =
            tenant_and_series(&mut violations, &request.tenant_id, &request.series);
        let count = violations.check("count", Count::parse(request.count));
        let request_id = violations.check("request_id", RequestId::parse(&request.request_id));
        let date = violations.check("date", parse_date(&request.date));
        violations.finish()?;
        let (Some(tenant), Some(series), Some(count), Some(request_id), Some(date)) =
            (tenant, series, count, request_id, date)
        else {
            unreachable!("finish() returned Ok, so every field parsed");
        };
        admission.admit(&tenant, Needs::Tenant).await?;

        let allocation = self
            .allocator
            .allocate(&tenant, &series, count, request_id.as_ref(), date)
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
        let request = request.into_inner();
        let mut violations = Violations::new();
        let (tenant, series) =
            tenant_and_series(&mut violations, &request.tenant_id, &request.series);
        let date = violations.check("date", parse_date(&request.date));
        violations.finish()?;
        let (Some(tenant), Some(series), Some(date)) = (tenant, series, date) else {
            unreachable!("finish() returned Ok, so every field parsed");
        };
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
        let request = request.into_inner();
        let mut violations = Violations::new();
        let tenant = violations.check("tenant_id", TenantId::parse(&request.tenant_id));
        let size = violations.check("page_size", pagination::page_size(request.page_size));
        let after = violations.check("page_token", series_token(&request.page_token));
        violations.finish()?;
        let (Some(tenant), Some(size), Some(after)) = (tenant, size, after) else {
            unreachable!("finish() returned Ok, so every field parsed");
        };
        admission.admit(&tenant, Needs::Tenant).await?;

        let page = self
            .allocator
            .list_series(&tenant, after.as_deref(), size)
            .await?;
        let next_page_token = pagination::next_token(&page, |last| last.name.clone());
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
        let request = request.into_inner();
        let mut violations = Violations::new();
        let (tenant, series) =
            tenant_and_series(&mut violations, &request.tenant_id, &request.series);
        let period = violations.check("period", check_period(&request.period));
        violations.finish()?;
        let (Some(tenant), Some(series), Some(())) = (tenant, series, period) else {
            unreachable!("finish() returned Ok, so every field parsed");
        };
        admission.admit(&tenant, Needs::Tenant).await?;

        let audit = self
            .allocator
            .audit(&tenant, &series, &request.period)
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
        let request = request.into_inner();
        let mut violations = Violations::new();
        let at = number_at(
            &mut violations,
            &request.tenant_id,
            &request.series,
            &request.period,
            request.number,
        );
        violations.finish()?;
        let Some((tenant, series)) = at else {
            unreachable!("finish() returned Ok, so every field parsed");
        };
        admission.admit(&tenant, Needs::Tenant).await?;

        let record = self
            .allocator
            .get_number(&tenant, &series, &request.period, request.number)
            .await?;
        let shown = Shown {
            tenant: &tenant,
            series: &series,
            period: &request.period,
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
        let request = request.into_inner();
        let mut violations = Violations::new();
        let (tenant, series) =
            tenant_and_series(&mut violations, &request.tenant_id, &request.series);
        let period = violations.check("period", check_period(&request.period));
        let state = violations.check("state", number_state(request.state));
        let size = violations.check("page_size", pagination::page_size(request.page_size));
        let after = violations.check("page_token", number_token(&request.page_token));
        violations.finish()?;
        let (Some(tenant), Some(series), Some(()), Some(state), Some(size), Some(after)) =
            (tenant, series, period, state, size, after)
        else {
            unreachable!("finish() returned Ok, so every field parsed");
        };
        admission.admit(&tenant, Needs::Tenant).await?;

        let page = self
            .allocator
            .list_numbers(&tenant, &series, &request.period, state, after, size)
            .await?;
        let next_page_token = page
            .next_after
            .map(|last| pagination::encode_token(&last.to_string()))
            .unwrap_or_default();
        let shown = Shown {
            tenant: &tenant,
            series: &series,
            period: &request.period,
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
        let request = request.into_inner();
        let asked = NumberFields {
            tenant: &request.tenant_id,
            series: &request.series,
            period: &request.period,
            number: request.number,
        };
        let change = StateChange::Confirm {
            reference: &request.reference,
            holder: holder(&request.request_id),
        };
        let record = self.change(&admission, asked, change).await?;
        Ok(Response::new(ConfirmResponse {
            record: Some(record),
        }))
    }

    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        let admission = server::admission(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        let (tenant, series) =
            tenant_and_series(&mut violations, &request.tenant_id, &request.series);
        let request_id = violations.check("request_id", RequestId::parse(&request.request_id));
        let date = violations.check("date", parse_date(&request.date));
        let lease = violations.check("lease", lease(request.lease));
        if request.repeat_only && request.request_id.is_empty() {
            violations.add(
                "request_id",
                "must be given to repeat a reservation (repeat_only)",
            );
        }
        violations.finish()?;
        let (Some(tenant), Some(series), Some(request_id), Some(date), Some(lease)) =
            (tenant, series, request_id, date, lease)
        else {
            unreachable!("finish() returned Ok, so every field parsed");
        };
        admission.admit(&tenant, Needs::Tenant).await?;

        let reservation = match &request_id {
            Some(request_id) if request.repeat_only => {
                self.allocator
                    .repeat_reservation(&tenant, &series, request_id)
                    .await?
            }
            _ => {
                self.allocator
                    .reserve(&tenant, &series, request_id.as_ref(), date, lease)
                    .await?
            }
        };
        let shown = Shown {
            tenant: &tenant,
            series: &series,
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
        let request = request.into_inner();
        let asked = NumberFields {
            tenant: &request.tenant_id,
            series: &request.series,
            period: &request.period,
            number: request.number,
        };
        let change = StateChange::Release {
            reason: &request.reason,
            holder: holder(&request.request_id),
        };
        let record = self.change(&admission, asked, change).await?;
        Ok(Response::new(ReleaseResponse {
            record: Some(record),
        }))
    }

    async fn void(&self, request: Request<VoidRequest>) -> Result<Response<VoidResponse>, Status> {
        let admission = server::admission(&request)?;
        let request = request.into_inner();
        let asked = NumberFields {
            tenant: &request.tenant_id,
            series: &request.series,
            period: &request.period,
            number: request.number,
        };
        let change = StateChange::Void {
            reason: &request.reason,
        };
        let record = self.change(&admission, asked, change).await?;
        Ok(Response::new(VoidResponse {
            record: Some(record),
        }))
    }

    async fn advance_counter(
        &self,
        request: Request<AdvanceCounterRequest>,
    ) -> Result<Response<AdvanceCounterResponse>, Status> {
        let admission = server::admission(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        let (tenant, series) =
            tenant_and_series(&mut violations, &request.tenant_id, &request.series);
        if request.at_least < 0 {
            violations.add("at_least", "must not be negative");
        }
        violations.check(
            "reason",
            crate::text::check(&request.reason, MAX_REASON_CHARS, true),
        );
        let date = violations.check("date", parse_date(&request.date));
        violations.finish()?;
        let (Some(tenant), Some(series), Some(date)) = (tenant, series, date) else {
            unreachable!("finish() returned Ok, so every field parsed");
        };
        admission.admit(&tenant, Needs::Admin).await?;

        let series = self
            .allocator
            .advance(&tenant, &series, request.at_least, &request.reason, date)
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
        let request = request.into_inner();
        let mut violations = Violations::new();
        let (tenant, series) =
            tenant_and_series(&mut violations, &request.tenant_id, &request.series);
        let change = SeriesChange {
            format: violations
                .check(
                    "format",
                    optional(&request.format, str::parse::<NumberFormat>),
                )
                .flatten(),
            reset: violations.check("reset", reset(request.reset)).flatten(),
            zone: violations
                .check("timezone", optional(&request.timezone, TimeZone::parse))
                .flatten(),
            start_at: match request.start_at {
                0 => None,
                first if !(1..=MAX_START_AT).contains(&first) => {
                    violations.add(
                        "start_at",
                        format!("must be 1 to {MAX_START_AT} (0 keeps the current value)"),
                    );
                    None
                }
                first => Some(first),
            },
            gap_policy: violations
                .check("gap_policy", gap_policy(request.gap_policy))
                .flatten(),
        };
        violations.finish()?;
        let (Some(tenant), Some(series)) = (tenant, series) else {
            unreachable!("finish() returned Ok, so every field parsed");
        };
        admission.admit(&tenant, Needs::Admin).await?;

        let series = self.allocator.configure(&tenant, &series, &change).await?;
        Ok(Response::new(ConfigureSeriesResponse {
            series: Some(series.into()),
        }))
    }
}

/// An optional text field: empty means none.
fn optional<T>(
    raw: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    if raw.is_empty() {
        Ok(None)
    } else {
        parse(raw).map(Some)
    }
}

/// A lease asked for: unset is zero (the default), checked against the
/// server's bounds by the allocator.
fn lease(raw: Option<prost_types::Duration>) -> Result<std::time::Duration, String> {
    raw.map_or(Ok(std::time::Duration::ZERO), |raw| {
        // Refused before the conversion, which negates a negative length.
        if raw.seconds < 0 || raw.nanos < 0 {
            return Err("must not be negative".to_owned());
        }
        std::time::Duration::try_from(raw).map_err(|_| "must not be negative".to_owned())
    })
}

/// A requested gap policy: unspecified means none.
fn gap_policy(raw: i32) -> Result<Option<GapPolicy>, String> {
    match proto::GapPolicy::try_from(raw) {
        Ok(proto::GapPolicy::Unspecified) => Ok(None),
        Ok(proto::GapPolicy::Void) => Ok(Some(GapPolicy::Void)),
        Ok(proto::GapPolicy::Reissue) => Ok(Some(GapPolicy::Reissue)),
        Err(_) => Err(format!("{raw} is not a GapPolicy value")),
    }
}

/// A requested reset: unspecified means none.
fn reset(raw: i32) -> Result<Option<Reset>, String> {
    match proto::Reset::try_from(raw) {
        Ok(proto::Reset::Unspecified) => Ok(None),
        Ok(proto::Reset::Never) => Ok(Some(Reset::Never)),
        Ok(proto::Reset::Yearly) => Ok(Some(Reset::Yearly)),
        Ok(proto::Reset::Monthly) => Ok(Some(Reset::Monthly)),
        Ok(proto::Reset::Daily) => Ok(Some(Reset::Daily)),
        Err(_) => Err(format!("{raw} is not a Reset value")),
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
                    "{field} of series {series:?} cannot change: the series has handed out numbers"
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
            format!("the number was voided ({reason}); it is never used again"),
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
                "the number is held under request id {request_id:?}, not the one this call \
                 names (if that one reserved it, its lease ended and another call took it since)"
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
