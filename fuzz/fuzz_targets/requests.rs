//! Arbitrary bytes as requests, through the decoding the servers run and the
//! checks their handlers make before anything else (every request of both
//! services): a refusal is always INVALID_ARGUMENT with its details, never a
//! panic, and what the checks accept keeps its rules.

#![no_main]

use chrono::NaiveDate;
use libfuzzer_sys::fuzz_target;
use numbering::{
    allocator::requests::{self, Named},
    codec::decode_request,
    invoices::{
        domain,
        grpc::{parse_get_invoice, parse_list_invoices, parse_new_invoice},
    },
    proto::{
        AdvanceCounterRequest, AllocateRequest, AuditSeriesRequest, ConfigureSeriesRequest,
        ConfirmRequest, CreateInvoiceRequest, GetInvoiceRequest, GetNumberRequest,
        GetSeriesRequest, ListInvoicesRequest, ListNumbersRequest, ListSeriesRequest,
        ReleaseRequest, ReserveRequest, VoidRequest,
    },
    request_id::RequestId,
    server::{pagination::Listing, validation::InvalidArgument},
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

/// What a handler's checks made of a request; a refusal is checked and
/// `None`.
fn checked<T>(parsed: Result<T, InvalidArgument>) -> Option<T> {
    match parsed {
        Ok(parsed) => Some(parsed),
        Err(invalid) => {
            assert_refusal(&Status::from(invalid));
            None
        }
    }
}

/// The name rules: whatever is accepted is ASCII, so no look-alike passes.
fn names(named: &Named) {
    assert!(named.tenant.as_str().is_ascii());
    assert!(named.series.as_str().is_ascii());
}

fn request_id(id: Option<&RequestId>) {
    if let Some(id) = id {
        assert!(id.as_str().is_ascii());
    }
}

fn allocate(bytes: &[u8]) {
    let Some(request) = decode::<AllocateRequest>(bytes) else {
        return;
    };
    if let Some(asked) = checked(requests::allocate(&request)) {
        names(&asked.named);
        request_id(asked.request_id.as_ref());
        assert!(asked.count.get() >= 1);
    }
}

fn configure(bytes: &[u8]) {
    let Some(request) = decode::<ConfigureSeriesRequest>(bytes) else {
        return;
    };
    let Some((named, change)) = checked(requests::configure_series(&request)) else {
        return;
    };
    names(&named);
    if let Some(format) = change.format {
        let day = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
        for value in [1, 42, i64::MAX] {
            let shown = format.render(value, day);
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
        }
    }
}

/// A change of one number's state: Confirm, Release or Void.
fn change(which: u8, bytes: &[u8]) {
    let (named, note) = match which % 3 {
        0 => {
            let Some(request) = decode::<ConfirmRequest>(bytes) else {
                return;
            };
            let Some((named, _)) = checked(requests::confirm(&request)) else {
                return;
            };
            (named, request.reference)
        }
        1 => {
            let Some(request) = decode::<ReleaseRequest>(bytes) else {
                return;
            };
            let Some((named, _)) = checked(requests::release(&request)) else {
                return;
            };
            (named, request.reason)
        }
        _ => {
            let Some(request) = decode::<VoidRequest>(bytes) else {
                return;
            };
            let Some((named, _)) = checked(requests::void(&request)) else {
                return;
            };
            (named, request.reason)
        }
    };
    names(&named);
    // What is accepted is accepted again, unchanged.
    assert_eq!(text::check(&note, 256, true).as_deref(), Ok(&*note));
}

/// A List request's `page_token` as fuzzed (almost never one of its
/// listing's), then read as the key a page ended with and wrapped in its
/// listing's token, so that the keys' own checks are reached too.
fn with_key_wrapped<R: Clone>(
    request: &R,
    token: impl Fn(&mut R) -> &mut String,
    listing: impl Fn(&R) -> Option<Listing>,
) -> [R; 2] {
    let mut first_page = request.clone();
    let key = std::mem::take(token(&mut first_page));
    let mut wrapped = request.clone();
    if let Some(listing) = listing(&first_page) {
        *token(&mut wrapped) = listing.token(&key);
    }
    [request.clone(), wrapped]
}

fn list(bytes: &[u8]) {
    let Some(request) = decode::<ListSeriesRequest>(bytes) else {
        return;
    };
    let tried = with_key_wrapped(
        &request,
        |r| &mut r.page_token,
        |r| requests::list_series(r).ok().map(|(_, page)| page.listing),
    );
    for request in tried {
        if let Some((tenant, page)) = checked(requests::list_series(&request)) {
            assert!(tenant.as_str().is_ascii());
            if let Some(after) = page.after {
                // A token is the key it carries, and back.
                assert_eq!(
                    page.listing.read(&page.listing.token(&after)),
                    Ok(Some(after))
                );
            }
        }
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

/// The other requests, decoded and checked as their handlers do.
fn others(which: u8, bytes: &[u8]) {
    match which % 8 {
        0 => {
            if let Some(request) = decode::<GetSeriesRequest>(bytes)
                && let Some((named, _)) = checked(requests::get_series(&request))
            {
                names(&named);
            }
        }
        1 => {
            if let Some(request) = decode::<AdvanceCounterRequest>(bytes)
                && let Some((named, _)) = checked(requests::advance_counter(&request))
            {
                names(&named);
                assert!(request.at_least >= 0);
            }
        }
        2 => {
            if let Some(request) = decode::<AuditSeriesRequest>(bytes)
                && let Some(named) = checked(requests::audit_series(&request))
            {
                names(&named);
            }
        }
        3 => {
            if let Some(request) = decode::<ReserveRequest>(bytes)
                && let Some(asked) = checked(requests::reserve(&request))
            {
                names(&asked.named);
                request_id(asked.request_id.as_ref());
                assert!(!request.repeat_only || asked.request_id.is_some());
            }
        }
        4 => {
            if let Some(request) = decode::<GetNumberRequest>(bytes)
                && let Some(named) = checked(requests::get_number(&request))
            {
                names(&named);
                assert!(request.number >= 1);
            }
        }
        5 => {
            let Some(request) = decode::<ListNumbersRequest>(bytes) else {
                return;
            };
            let tried = with_key_wrapped(
                &request,
                |r| &mut r.page_token,
                |r| {
                    requests::list_numbers(r)
                        .ok()
                        .map(|asked| asked.page.listing)
                },
            );
            for request in tried {
                if let Some(asked) = checked(requests::list_numbers(&request)) {
                    names(&asked.named);
                    assert!(asked.page.after.is_none_or(|after| after >= 1));
                }
            }
        }
        6 => {
            if let Some(request) = decode::<GetInvoiceRequest>(bytes)
                && let Some((tenant, _)) = checked(parse_get_invoice(&request))
            {
                assert!(tenant.as_str().is_ascii());
            }
        }
        _ => {
            let Some(request) = decode::<ListInvoicesRequest>(bytes) else {
                return;
            };
            let tried = with_key_wrapped(
                &request,
                |r| &mut r.page_token,
                |r| parse_list_invoices(r).ok().map(|(_, page)| page.listing),
            );
            for request in tried {
                if let Some((tenant, page)) = checked(parse_list_invoices(&request)) {
                    assert!(tenant.as_str().is_ascii());
                    if let Some((period, number)) = page.after {
                        // The key is the token's, and back.
                        let token = page.listing.token(&format!("{period}/{number}"));
                        let again = ListInvoicesRequest {
                            page_token: token,
                            ..request
                        };
                        let (_, back) = parse_list_invoices(&again).expect("its own token");
                        assert_eq!(back.after, Some((period, number)));
                    }
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => allocate(bytes),
        1 => configure(bytes),
        2 => change(which / 6, bytes),
        3 => list(bytes),
        4 => invoice(bytes),
        _ => others(which / 6, bytes),
    }
});
