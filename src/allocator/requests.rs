//! The allocator's requests, checked: each call's fields read into the
//! domain's types, every bad field named at once, before the caller is
//! admitted or the store is asked anything.

use std::time::Duration;

use chrono::NaiveDate;

use crate::{
    allocator::{
        SeriesChange,
        numbers::NumberState,
        series::{Count, GapPolicy, NumberFormat, SeriesName, TimeZone},
        store::StateChange,
    },
    calendar::{Reset, check_period, parse_date},
    proto::{
        self, AdvanceCounterRequest, AllocateRequest, AuditSeriesRequest, ConfigureSeriesRequest,
        ConfirmRequest, GetNumberRequest, GetSeriesRequest, ListNumbersRequest, ListSeriesRequest,
        ReleaseRequest, ReserveRequest, VoidRequest,
    },
    request_id::RequestId,
    server::{
        pagination::{self, Listing, PageAsked},
        validation::{InvalidArgument, Violations},
    },
    tenant::TenantId,
};

/// Longest reason an `AdvanceCounter` call gives, in characters.
const MAX_REASON_CHARS: usize = 500;

/// Longest reference or reason of a number's state.
const MAX_NOTE_CHARS: usize = 256;

/// The largest `start_at`: 10¹⁸, so that a period not yet begun always has
/// room for the numbers of any one commit (a counter computes its first
/// value from it without overflow), and is never refused as exhausted.
const MAX_START_AT: i64 = 1_000_000_000_000_000_000;

/// A tenant's series, as a request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// The tenant.
    pub tenant: TenantId,
    /// Its series.
    pub series: SeriesName,
}

/// An `Allocate` call, checked.
#[derive(Debug)]
pub struct Allocate {
    /// The series.
    pub named: Named,
    /// How many numbers.
    pub count: Count,
    /// The caller's request id, if it sent one.
    pub request_id: Option<RequestId>,
    /// The date the numbers are for; none: today in the series' zone.
    pub date: Option<NaiveDate>,
}

/// A `Reserve` call, checked.
#[derive(Debug)]
pub struct Reserve {
    /// The series.
    pub named: Named,
    /// The caller's request id, if it sent one; always one to repeat.
    pub request_id: Option<RequestId>,
    /// The date the number is for.
    pub date: Option<NaiveDate>,
    /// The lease asked for; zero: the server's default.
    pub lease: Duration,
}

/// A `ListNumbers` call, checked.
#[derive(Debug)]
pub struct ListNumbers {
    /// The series.
    pub named: Named,
    /// The state asked for; none: any.
    pub state: Option<NumberState>,
    /// The page.
    pub page: PageAsked<i64>,
}

/// Checks an `Allocate` call.
///
/// # Errors
/// Every field that breaks its rules.
pub fn allocate(request: &AllocateRequest) -> Result<Allocate, InvalidArgument> {
    let mut violations = Violations::new();
    let named = named(&mut violations, &request.tenant_id, &request.series);
    let count = violations.check("count", Count::parse(request.count));
    let request_id = violations.check("request_id", RequestId::parse(&request.request_id));
    let date = violations.check("date", parse_date(&request.date));
    violations.finish()?;
    Ok(Allocate {
        named: parsed(named),
        count: parsed(count),
        request_id: parsed(request_id),
        date: parsed(date),
    })
}

/// Checks a `GetSeries` call: the series and the date asked about.
///
/// # Errors
/// Every field that breaks its rules.
pub fn get_series(
    request: &GetSeriesRequest,
) -> Result<(Named, Option<NaiveDate>), InvalidArgument> {
    let mut violations = Violations::new();
    let named = named(&mut violations, &request.tenant_id, &request.series);
    let date = violations.check("date", parse_date(&request.date));
    violations.finish()?;
    Ok((parsed(named), parsed(date)))
}

/// Checks a `ListSeries` call: the tenant and the page.
///
/// # Errors
/// Every field that breaks its rules.
pub fn list_series(
    request: &ListSeriesRequest,
) -> Result<(TenantId, PageAsked<String>), InvalidArgument> {
    let mut violations = Violations::new();
    let tenant = violations.check("tenant_id", TenantId::parse(&request.tenant_id));
    let size = violations.check("page_size", pagination::page_size(request.page_size));
    let listing = Listing::of("ListSeries", &[&request.tenant_id]);
    let after = violations.check("page_token", series_token(listing, &request.page_token));
    violations.finish()?;
    Ok((
        parsed(tenant),
        PageAsked {
            size: parsed(size),
            after: parsed(after),
            listing,
        },
    ))
}

/// Checks an `AuditSeries` call; its period is the request's.
///
/// # Errors
/// Every field that breaks its rules.
pub fn audit_series(request: &AuditSeriesRequest) -> Result<Named, InvalidArgument> {
    let mut violations = Violations::new();
    let named = named(&mut violations, &request.tenant_id, &request.series);
    violations.check("period", check_period(&request.period));
    violations.finish()?;
    Ok(parsed(named))
}

/// Checks a `GetNumber` call; its period and number are the request's.
///
/// # Errors
/// Every field that breaks its rules.
pub fn get_number(request: &GetNumberRequest) -> Result<Named, InvalidArgument> {
    let mut violations = Violations::new();
    let named = number_at(
        &mut violations,
        &request.tenant_id,
        &request.series,
        &request.period,
        request.number,
    );
    violations.finish()?;
    Ok(parsed(named))
}

/// Checks a `ListNumbers` call; its period is the request's.
///
/// # Errors
/// Every field that breaks its rules.
pub fn list_numbers(request: &ListNumbersRequest) -> Result<ListNumbers, InvalidArgument> {
    let mut violations = Violations::new();
    let named = named(&mut violations, &request.tenant_id, &request.series);
    violations.check("period", check_period(&request.period));
    let state = violations.check("state", number_state(request.state));
    let size = violations.check("page_size", pagination::page_size(request.page_size));
    let listing = Listing::of(
        "ListNumbers",
        &[
            &request.tenant_id,
            &request.series,
            &request.period,
            &request.state.to_string(),
        ],
    );
    let after = violations.check("page_token", number_token(listing, &request.page_token));
    violations.finish()?;
    Ok(ListNumbers {
        named: parsed(named),
        state: parsed(state),
        page: PageAsked {
            size: parsed(size),
            after: parsed(after),
            listing,
        },
    })
}

/// Checks a `Reserve` call.
///
/// # Errors
/// Every field that breaks its rules, and a repeat without a request id.
pub fn reserve(request: &ReserveRequest) -> Result<Reserve, InvalidArgument> {
    let mut violations = Violations::new();
    let named = named(&mut violations, &request.tenant_id, &request.series);
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
    Ok(Reserve {
        named: parsed(named),
        request_id: parsed(request_id),
        date: parsed(date),
        lease: parsed(lease),
    })
}

/// Checks a `Confirm` call: the number's series and the change asked for;
/// its period and number are the request's.
///
/// # Errors
/// Every field that breaks its rules.
pub fn confirm(request: &ConfirmRequest) -> Result<(Named, StateChange<'_>), InvalidArgument> {
    let change = StateChange::Confirm {
        reference: &request.reference,
        holder: holder(&request.request_id),
    };
    let names = [&*request.tenant_id, &request.series, &request.period];
    number_change(names, request.number, change)
}

/// Checks a `Release` call, as [`confirm`].
///
/// # Errors
/// Every field that breaks its rules.
pub fn release(request: &ReleaseRequest) -> Result<(Named, StateChange<'_>), InvalidArgument> {
    let change = StateChange::Release {
        reason: &request.reason,
        holder: holder(&request.request_id),
    };
    let names = [&*request.tenant_id, &request.series, &request.period];
    number_change(names, request.number, change)
}

/// Checks a `Void` call, as [`confirm`].
///
/// # Errors
/// Every field that breaks its rules.
pub fn void(request: &VoidRequest) -> Result<(Named, StateChange<'_>), InvalidArgument> {
    let change = StateChange::Void {
        reason: &request.reason,
    };
    let names = [&*request.tenant_id, &request.series, &request.period];
    number_change(names, request.number, change)
}

/// Checks an `AdvanceCounter` call: the series and the date of the period
/// to advance; `at_least` and the reason are the request's.
///
/// # Errors
/// Every field that breaks its rules.
pub fn advance_counter(
    request: &AdvanceCounterRequest,
) -> Result<(Named, Option<NaiveDate>), InvalidArgument> {
    let mut violations = Violations::new();
    let named = named(&mut violations, &request.tenant_id, &request.series);
    if request.at_least < 0 {
        violations.add("at_least", "must not be negative");
    }
    violations.check(
        "reason",
        crate::text::check(&request.reason, MAX_REASON_CHARS, true),
    );
    let date = violations.check("date", parse_date(&request.date));
    violations.finish()?;
    Ok((parsed(named), parsed(date)))
}

/// Checks a `ConfigureSeries` call: the series and what it changes.
///
/// # Errors
/// Every field that breaks its rules.
pub fn configure_series(
    request: &ConfigureSeriesRequest,
) -> Result<(Named, SeriesChange), InvalidArgument> {
    let mut violations = Violations::new();
    let named = named(&mut violations, &request.tenant_id, &request.series);
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
    Ok((parsed(named), change))
}

/// A field that parsed: once `finish` returns `Ok`, every field did.
fn parsed<T>(field: Option<T>) -> T {
    field.unwrap_or_else(|| unreachable!("finish() returned Ok, so every field parsed"))
}

/// The tenant and series fields, checked.
fn named(violations: &mut Violations, tenant: &str, series: &str) -> Option<Named> {
    let tenant = violations.check("tenant_id", TenantId::parse(tenant));
    let series = violations.check("series", SeriesName::parse(series));
    Some(Named {
        tenant: tenant?,
        series: series?,
    })
}

/// The fields that name one number, checked.
fn number_at(
    violations: &mut Violations,
    tenant: &str,
    series: &str,
    period: &str,
    number: i64,
) -> Option<Named> {
    let named = named(violations, tenant, series);
    violations.check("period", check_period(period));
    if number < 1 {
        violations.add("number", "must be 1 or more");
    }
    named
}

/// The fields of a change of one number's state, checked: its tenant,
/// series and period as `names`, and the change.
fn number_change<'a>(
    [tenant, series, period]: [&str; 3],
    number: i64,
    change: StateChange<'a>,
) -> Result<(Named, StateChange<'a>), InvalidArgument> {
    let mut violations = Violations::new();
    let named = number_at(&mut violations, tenant, series, period, number);
    let (field, note, holder) = match change {
        StateChange::Confirm { reference, holder } => ("reference", reference, holder),
        StateChange::Release { reason, holder } => ("reason", reason, holder),
        StateChange::Void { reason } => ("reason", reason, None),
    };
    violations.check(field, check_note(note));
    if let Some(id) = holder {
        violations.check("request_id", RequestId::parse(id));
    }
    violations.finish()?;
    Ok((parsed(named), change))
}

/// The request id a change names its number's holder by; empty: none.
fn holder(request_id: &str) -> Option<&str> {
    (!request_id.is_empty()).then_some(request_id)
}

/// A reference or a reason: 1 to 256 characters of free text, not blank.
fn check_note(text: &str) -> Result<(), String> {
    crate::text::check(text, MAX_NOTE_CHARS, true).map(drop)
}

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
fn series_token(listing: Listing, token: &str) -> Result<Option<String>, String> {
    let Some(key) = listing.read(token)? else {
        return Ok(None);
    };
    match SeriesName::parse(&key) {
        Ok(name) => Ok(Some(name.to_string())),
        Err(_) => Err("is not a token this listing gave".into()),
    }
}

/// The number a page token says the last page ended with.
fn number_token(listing: Listing, token: &str) -> Result<Option<i64>, String> {
    let Some(key) = listing.read(token)? else {
        return Ok(None);
    };
    match key.parse::<i64>() {
        Ok(number) if number >= 1 => Ok(Some(number)),
        _ => Err("is not a token this listing gave".into()),
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
fn lease(raw: Option<prost_types::Duration>) -> Result<Duration, String> {
    raw.map_or(Ok(Duration::ZERO), |raw| {
        // Refused before the conversion, which negates a negative length.
        if raw.seconds < 0 || raw.nanos < 0 {
            return Err("must not be negative".to_owned());
        }
        Duration::try_from(raw).map_err(|_| "must not be negative".to_owned())
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
