//! Arbitrary bytes as requests, through the decoding the servers run (every
//! request of both services) and the validation they share (names, dates,
//! periods, free text, templates, page tokens; the whole of `CreateInvoice`'s):
//! a refusal is always INVALID_ARGUMENT with its details, never a panic, and
//! what validation accepts keeps its rules.

#![no_main]

use std::str::FromStr;

use chrono::NaiveDate;
use libfuzzer_sys::fuzz_target;
use numbering::{
    allocator::series::{NumberFormat, SeriesName},
    calendar,
    codec::decode_request,
    invoices::{domain, grpc::parse_new_invoice},
    proto::{
        AdvanceCounterRequest, AllocateRequest, AuditSeriesRequest, ConfigureSeriesRequest,
        ConfirmRequest, CreateInvoiceRequest, GetInvoiceRequest, GetNumberRequest,
        GetSeriesRequest, ListInvoicesRequest, ListNumbersRequest, ListSeriesRequest,
        ReleaseRequest, ReserveRequest, VoidRequest,
    },
    request_id::RequestId,
    server::pagination,
    tenant::TenantId,
    text,
};
use prost::Name;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// A refusal as the services send it: INVALID_ARGUMENT, a BadRequest with
/// at least one field.
fn assert_refusal(status: &Status) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad_request = status
        .get_details_bad_request()
        .expect("BadRequest details");
    assert!(!bad_request.field_violations.is_empty(), "{status:?}");
}

/// Decodes `bytes` as `U`; a refusal is checked and `None`.
fn decode<U: prost::Message + Name + Default>(bytes: &[u8]) -> Option<U> {
    match decode_request::<U>(bytes) {
        Ok(request) => Some(request),
        Err(status) => {
            assert_refusal(&status);
            None
        }
    }
}

/// The name rules: whatever is accepted is ASCII, so no look-alike passes.
fn names(tenant: &str, series: &str, request_id: &str) {
    if let Ok(tenant) = TenantId::parse(tenant) {
        assert!(tenant.as_str().is_ascii());
    }
    if let Ok(series) = SeriesName::parse(series) {
        assert!(series.as_str().is_ascii());
    }
    if let Ok(Some(id)) = RequestId::parse(request_id) {
        assert!(id.as_str().is_ascii());
    }
}

fn allocate(bytes: &[u8]) {
    let Some(request) = decode::<AllocateRequest>(bytes) else {
        return;
    };
    names(&request.tenant_id, &request.series, &request.request_id);
    let _ = calendar::parse_date(&request.date);
}

fn configure(bytes: &[u8]) {
    let Some(request) = decode::<ConfigureSeriesRequest>(bytes) else {
        return;
    };
    names(&request.tenant_id, &request.series, "");
    if let Ok(format) = NumberFormat::from_str(&request.format) {
        let day = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
        for value in [1, 42, i64::MAX] {
            let shown = format.render(value, day);
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
        }
    }
}

fn confirm(bytes: &[u8]) {
    let Some(request) = decode::<ConfirmRequest>(bytes) else {
        return;
    };
    names(&request.tenant_id, &request.series, &request.request_id);
    let _ = calendar::check_period(&request.period);
    if let Ok(reference) = text::check(&request.reference, 256, true) {
        // What is accepted is accepted again, unchanged.
        assert_eq!(
            text::check(&reference, 256, true).as_deref(),
            Ok(&*reference)
        );
    }
}

fn list(bytes: &[u8]) {
    let Some(request) = decode::<ListSeriesRequest>(bytes) else {
        return;
    };
    let _ = pagination::page_size(request.page_size);
    if let Ok(Some(key)) = pagination::decode_token(&request.page_token) {
        // A token is the key it carries, and back.
        assert_eq!(
            pagination::decode_token(&pagination::encode_token(&key)),
            Ok(Some(key))
        );
    }
}

fn invoice(bytes: &[u8]) {
    let Some(request) = decode::<CreateInvoiceRequest>(bytes) else {
        return;
    };
    match parse_new_invoice(&request) {
        Ok((invoice, _)) => {
            // Totals are exact and never overflow within the bounds.
            let total = invoice.total();
            assert!(total >= rust_decimal::Decimal::ZERO);
            let _ = domain::amount(total);
            assert!(domain::currency(&invoice.currency).is_ok());
        }
        Err(invalid) => assert_refusal(&Status::from(invalid)),
    }
}

/// The requests whose own checks are not fuzzed here, decoded as the
/// servers decode them, with their names checked.
fn others(which: u8, bytes: &[u8]) {
    macro_rules! named {
        ($request:ty) => {
            if let Some(request) = decode::<$request>(bytes) {
                names(&request.tenant_id, "", "");
            }
        };
        ($request:ty, series) => {
            if let Some(request) = decode::<$request>(bytes) {
                names(&request.tenant_id, &request.series, "");
            }
        };
    }
    match which % 10 {
        0 => named!(GetSeriesRequest, series),
        1 => named!(AdvanceCounterRequest, series),
        2 => named!(AuditSeriesRequest, series),
        3 => named!(ReserveRequest, series),
        4 => named!(ReleaseRequest, series),
        5 => named!(GetNumberRequest, series),
        6 => named!(ListNumbersRequest, series),
        7 => named!(VoidRequest, series),
        8 => named!(GetInvoiceRequest),
        _ => named!(ListInvoicesRequest),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => allocate(bytes),
        1 => configure(bytes),
        2 => confirm(bytes),
        3 => list(bytes),
        4 => invoice(bytes),
        _ => others(which / 6, bytes),
    }
});
