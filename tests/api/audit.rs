//! AuditSeries: every number of a period accounted for, from the ledger's
//! ranges; numbers whose record was lost are counted and listed.

use std::collections::HashSet;

use numbering::{
    db::Backend,
    proto::{
        AdvanceCounterRequest, AuditSeriesRequest, AuditSeriesResponse, ConfigureSeriesRequest,
        ConfirmRequest, NumberState, ReserveRequest, Reset,
    },
};
use rstest_reuse::apply;
use tonic::Code;

use crate::{
    backends,
    helpers::{
        AllocatorApp, advance, allocate, allocate_concurrently, assert_reason, keyed,
        spawn_allocator,
    },
};

fn audit(tenant: &str, series: &str, period: &str) -> AuditSeriesRequest {
    AuditSeriesRequest {
        tenant_id: tenant.into(),
        series: series.into(),
        period: period.into(),
    }
}

async fn audited(app: &mut AllocatorApp, request: AuditSeriesRequest) -> AuditSeriesResponse {
    app.client.audit_series(request).await.unwrap().into_inner()
}

/// Numbers handed out alone, in groups, with and without request ids, and
/// ranges skipped, are each counted once by their kind; none is unaccounted.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_number_is_accounted_for_by_kind(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    let ones = (0..200).map(|_| allocate("acme", "", 1)).collect();
    allocate_concurrently(&app.client, ones).await;
    for (count, id) in [(3, "a"), (2, "b"), (3, "a")] {
        app.client
            .allocate(keyed("acme", "", count, id))
            .await
            .unwrap();
    }
    app.client
        .advance_counter(advance("acme", 1000, "numbers of the old system"))
        .await
        .unwrap();
    app.client.allocate(allocate("acme", "", 7)).await.unwrap();

    let answer = audited(&mut app, audit("acme", "", "")).await;
    assert_eq!(
        answer,
        AuditSeriesResponse {
            last_value: 1007,
            issued: 200 + 3 + 2 + 7,
            skipped: 1000 - 205,
            unaccounted: 0,
            unaccounted_sample: Vec::new(),
            ..AuditSeriesResponse::default()
        }
    );
}

/// An `AdvanceCounter` of a dated call in `acme`'s yearly series; the
/// period's last value after it.
async fn advance_yearly(app: &mut AllocatorApp, at_least: i64, date: &str) -> i64 {
    let request = AdvanceCounterRequest {
        series: "yearly".into(),
        date: date.into(),
        ..advance("acme", at_least, "numbers of the old system")
    };
    let answer = app.client.advance_counter(request).await.unwrap();
    answer.into_inner().series.unwrap().last_value
}

/// An audit's last value, and its numbers issued, skipped and unaccounted.
fn tally(answer: &AuditSeriesResponse) -> (i64, i64, i64, i64) {
    (
        answer.last_value,
        answer.issued,
        answer.skipped,
        answer.unaccounted,
    )
}

/// `acme`'s yearly series, starting at `start_at`.
fn yearly(start_at: i64) -> ConfigureSeriesRequest {
    ConfigureSeriesRequest {
        tenant_id: "acme".into(),
        series: "yearly".into(),
        format: "{year}-{number}".into(),
        reset: Reset::Yearly.into(),
        start_at,
        ..ConfigureSeriesRequest::default()
    }
}

/// A period begun before its series was given another start is advanced
/// from where it stands: a value below it changes nothing, one above it
/// skips only the numbers in between, and every number stays accounted for.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begun_period_is_advanced_from_where_it_stands(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    app.client.configure_series(yearly(1)).await.unwrap();
    let mut five = allocate("acme", "yearly", 5);
    five.date = "2026-06-01".into();
    app.client.allocate(five).await.unwrap();
    // Periods not yet begun start at 1000 from now on.
    app.client.configure_series(yearly(1000)).await.unwrap();

    assert_eq!(advance_yearly(&mut app, 3, "2026-06-01").await, 5);
    let answer = audited(&mut app, audit("acme", "yearly", "2026")).await;
    assert_eq!(tally(&answer), (5, 5, 0, 0), "{answer:?}");
    assert_eq!(advance_yearly(&mut app, 10, "2026-06-01").await, 10);
    let answer = audited(&mut app, audit("acme", "yearly", "2026")).await;
    assert_eq!(tally(&answer), (10, 5, 5, 0), "{answer:?}");
    let mut next = allocate("acme", "yearly", 1);
    next.date = "2026-06-02".into();
    let next = app.client.allocate(next).await.unwrap().into_inner();
    assert_eq!(next.numbers[0].formatted, "2026-11");
}

/// An `AdvanceCounter` that skips nothing leaves its period not begun: a
/// start set afterwards still applies to it, and the period's first number
/// is that start.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advance_that_skips_nothing_leaves_the_period_not_begun(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    app.client.configure_series(yearly(1)).await.unwrap();
    assert_eq!(advance_yearly(&mut app, 0, "2026-06-01").await, 0);
    app.client.configure_series(yearly(1000)).await.unwrap();
    assert_eq!(advance_yearly(&mut app, 0, "2026-06-01").await, 999);

    let mut first = allocate("acme", "yearly", 1);
    first.date = "2026-06-01".into();
    let first = app.client.allocate(first).await.unwrap().into_inner();
    assert_eq!(first.numbers[0].formatted, "2026-1000");
    let answer = audited(&mut app, audit("acme", "yearly", "2026")).await;
    assert_eq!(tally(&answer), (1000, 1, 0, 0), "{answer:?}");
}

/// Audits taken while 16 clients allocate each see one moment of the series:
/// every number up to the last value they report is accounted for, none
/// twice.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_during_allocations_see_every_number_once(#[case] backend: Backend) {
    const UNTIL: i64 = 3000;
    let mut app = spawn_allocator(backend).await;
    // The series exists before the first audit.
    app.client.allocate(allocate("acme", "", 1)).await.unwrap();
    let clients: Vec<_> = (0..16)
        .map(|client_no| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                for call_no in 0.. {
                    let count = [1, 3, 2][call_no % 3];
                    let request = if call_no % 2 == 0 {
                        allocate("acme", "", count)
                    } else {
                        keyed("acme", "", count, &format!("{client_no}-{call_no}"))
                    };
                    let answer = client.allocate(request).await.unwrap().into_inner();
                    if answer.numbers[0].value > UNTIL {
                        return;
                    }
                }
            })
        })
        .collect();

    let mut moments = HashSet::new();
    loop {
        let answer = audited(&mut app, audit("acme", "", "")).await;
        assert_eq!(
            (
                answer.issued,
                answer.unaccounted,
                answer.unaccounted_sample.len()
            ),
            (answer.last_value, 0, 0),
            "{answer:?}"
        );
        moments.insert(answer.last_value);
        if answer.last_value > UNTIL {
            break;
        }
    }
    for client in clients {
        client.await.unwrap();
    }
    assert!(moments.len() > 2, "no audit ran during the allocations");
}

/// Each period of a periodic series is audited on its own, from its own
/// first number; a period not yet begun has nothing to account for.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_period_is_audited_from_its_first_number(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    app.client
        .configure_series(ConfigureSeriesRequest {
            tenant_id: "acme".into(),
            series: "yearly".into(),
            format: "{year}-{number}".into(),
            reset: Reset::Yearly.into(),
            start_at: 100,
            ..ConfigureSeriesRequest::default()
        })
        .await
        .unwrap();
    for (date, count) in [("2025-06-30", 4), ("2026-01-02", 2), ("2025-12-31", 1)] {
        let mut request = allocate("acme", "yearly", count);
        request.date = date.into();
        app.client.allocate(request).await.unwrap();
    }

    let of_2025 = audited(&mut app, audit("acme", "yearly", "2025")).await;
    assert_eq!(
        (of_2025.last_value, of_2025.issued, of_2025.unaccounted),
        (104, 5, 0)
    );
    let of_2026 = audited(&mut app, audit("acme", "yearly", "2026")).await;
    assert_eq!(
        (of_2026.last_value, of_2026.issued, of_2026.unaccounted),
        (101, 2, 0)
    );
    let of_2024 = audited(&mut app, audit("acme", "yearly", "2024")).await;
    assert_eq!(
        of_2024,
        AuditSeriesResponse {
            last_value: 99,
            ..AuditSeriesResponse::default()
        }
    );
}

/// Ranges whose record is gone, between others or after the last, are
/// counted as unaccounted and their numbers listed, lowest first.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_whose_record_was_lost_are_unaccounted(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    // Keyed calls: one range each, 1..=2, 3..=4, ..., 9..=10.
    for id in ["a", "b", "c", "d", "e"] {
        app.client.allocate(keyed("acme", "", 2, id)).await.unwrap();
    }
    app.db
        .execute("DELETE FROM allocations WHERE first_value IN (3, 9)")
        .await;

    let answer = audited(&mut app, audit("acme", "", "")).await;
    assert_eq!(
        answer,
        AuditSeriesResponse {
            last_value: 10,
            issued: 6,
            skipped: 0,
            unaccounted: 4,
            unaccounted_sample: vec![3, 4, 9, 10],
            ..AuditSeriesResponse::default()
        }
    );
}

/// More holes than an audit lists: the rows in every hole, listed or not,
/// count in no state.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_in_holes_past_the_sample_are_unaccounted(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    // Keyed calls: one range each, 1 to 205.
    for id in 1..=205 {
        let id = format!("k-{id}");
        app.client
            .allocate(keyed("acme", "", 1, &id))
            .await
            .unwrap();
    }
    for number in [4, 202] {
        app.client
            .confirm(ConfirmRequest {
                tenant_id: "acme".into(),
                number,
                reference: format!("invoice-{number}"),
                ..ConfirmRequest::default()
            })
            .await
            .unwrap();
    }
    // 102 holes, 2 to 204: the sample lists the first 100.
    app.db
        .execute("DELETE FROM allocations WHERE first_value % 2 = 0")
        .await;

    let answer = audited(&mut app, audit("acme", "", "")).await;
    assert_eq!(
        answer,
        AuditSeriesResponse {
            last_value: 205,
            issued: 103,
            unaccounted: 102,
            unaccounted_sample: (1..=100).map(|hole| hole * 2).collect(),
            ..AuditSeriesResponse::default()
        }
    );
}

/// Ranges that overlap (a ledger written twice): a range inside a longer
/// one leaves no hole after it that the longer one covers, and a row there
/// counts in its state; the numbers recorded twice make unaccounted
/// negative.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_that_overlap_leave_no_hole_where_one_covers(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    // Keyed calls: one range each, 1..=2, 3..=4, ..., 9..=10.
    for id in ["a", "b", "c", "d", "e"] {
        app.client.allocate(keyed("acme", "", 2, id)).await.unwrap();
    }
    app.client
        .confirm(ConfirmRequest {
            tenant_id: "acme".into(),
            number: 5,
            reference: "invoice-5".into(),
            ..ConfirmRequest::default()
        })
        .await
        .unwrap();
    // The first range now covers 1..=10, 3..=4 inside it, then 7..=8 and
    // 9..=10, with 5..=6 in no range but the first.
    app.db
        .execute("UPDATE allocations SET count = 10 WHERE first_value = 1")
        .await;
    app.db
        .execute("DELETE FROM allocations WHERE first_value = 5")
        .await;

    let answer = audited(&mut app, audit("acme", "", "")).await;
    assert_eq!(
        answer,
        AuditSeriesResponse {
            last_value: 10,
            issued: 15,
            confirmed: 1,
            unaccounted: -6,
            ..AuditSeriesResponse::default()
        }
    );
}

/// A reservation whose range is gone while its state row stays is
/// unaccounted too, and not reserved: its row is no record of a number no
/// range holds. So between ranges, and after the last.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_whose_range_was_lost_is_unaccounted(#[case] backend: Backend) {
    for (lost, delete) in [
        (2, "DELETE FROM allocations WHERE first_value = 2"),
        (3, "DELETE FROM allocations WHERE first_value = 3"),
    ] {
        let mut app = three_reserved(backend).await;
        app.db.execute(delete).await;

        let answer = audited(&mut app, audit("acme", "", "")).await;
        let account = (
            answer.reserved,
            answer.unaccounted,
            answer.unaccounted_sample,
        );
        assert_eq!(account, (2, 1, vec![lost]), "the range of {lost} lost");
    }
}

/// A number of Allocate confirmed, whose range is lost: its row does not
/// count it as confirmed, and it is unaccounted.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_number_whose_range_was_lost_is_unaccounted(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    for id in ["a", "b", "c"] {
        app.client.allocate(keyed("acme", "", 1, id)).await.unwrap();
    }
    app.client
        .confirm(ConfirmRequest {
            tenant_id: "acme".into(),
            number: 2,
            reference: "invoice-2".into(),
            ..ConfirmRequest::default()
        })
        .await
        .unwrap();
    app.db
        .execute("DELETE FROM allocations WHERE first_value = 2")
        .await;

    let answer = audited(&mut app, audit("acme", "", "")).await;
    let account = (
        answer.issued,
        answer.confirmed,
        answer.unaccounted,
        answer.unaccounted_sample,
    );
    assert_eq!(account, (2, 0, 1, vec![2]));
}

/// One reservation's range lost and another's row: the row kept of the
/// first does not make up for the row lost of the second, and both numbers
/// are unaccounted.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_range_and_another_lost_row_are_both_unaccounted(#[case] backend: Backend) {
    let mut app = three_reserved(backend).await;
    app.db
        .execute("DELETE FROM allocations WHERE first_value = 2")
        .await;
    app.db
        .execute("DELETE FROM number_states WHERE number = 3")
        .await;

    let answer = audited(&mut app, audit("acme", "", "")).await;
    assert_eq!(
        (
            answer.reserved,
            answer.unaccounted,
            answer.unaccounted_sample
        ),
        (1, 2, vec![2, 3])
    );
}

/// A reservation whose row was lost, then confirmed by its holder: still
/// that reservation's (another holder is refused), it counts as confirmed,
/// and nothing is unaccounted once it has its row again.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_confirmed_after_its_row_was_lost_is_accounted_for(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    for id in ["r-1", "r-2", "r-3"] {
        app.client
            .reserve(ReserveRequest {
                tenant_id: "acme".into(),
                request_id: id.into(),
                ..ReserveRequest::default()
            })
            .await
            .unwrap();
    }
    app.db
        .execute("DELETE FROM number_states WHERE number = 2")
        .await;
    let confirm = |request_id: &str| ConfirmRequest {
        tenant_id: "acme".into(),
        number: 2,
        reference: "invoice-2".into(),
        request_id: request_id.into(),
        ..ConfirmRequest::default()
    };

    let refused = app.client.confirm(confirm("r-9")).await.unwrap_err();
    assert_reason(&refused, "NOT_THE_HOLDER");
    let record = app.client.confirm(confirm("r-2")).await.unwrap();
    let record = record.into_inner().record.unwrap();
    assert_eq!(
        (record.state(), record.request_id.as_str()),
        (NumberState::Confirmed, "r-2")
    );
    let answer = audited(&mut app, audit("acme", "", "")).await;
    assert_eq!(
        answer,
        AuditSeriesResponse {
            last_value: 3,
            reserved: 2,
            confirmed: 1,
            ..AuditSeriesResponse::default()
        }
    );
}

/// An allocator whose acme series holds three reservations, 1 to 3.
async fn three_reserved(backend: Backend) -> AllocatorApp {
    let mut app = spawn_allocator(backend).await;
    for _ in 0..3 {
        app.client
            .reserve(ReserveRequest {
                tenant_id: "acme".into(),
                ..ReserveRequest::default()
            })
            .await
            .unwrap();
    }
    app
}

/// A series never used is not found; a period that is not one, or a bad
/// tenant, is an invalid argument naming the field.
#[tokio::test]
async fn bad_audits_are_refused_by_field() {
    let mut app = spawn_allocator(Backend::Postgres).await;
    app.client.allocate(allocate("acme", "", 1)).await.unwrap();

    let status = app
        .client
        .audit_series(audit("acme", "credit-notes", ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_reason(&status, "SERIES_NOT_FOUND");

    // Periods its reset never makes: they would read as periods with
    // nothing to account for.
    app.client
        .configure_series(ConfigureSeriesRequest {
            tenant_id: "acme".into(),
            series: "monthly".into(),
            format: "{year}-{month}-{number}".into(),
            reset: Reset::Monthly.into(),
            ..ConfigureSeriesRequest::default()
        })
        .await
        .unwrap();
    for (request, field) in [
        (audit("acme", "", "2026-13"), "period"),
        (audit("acme", "", "last year"), "period"),
        (audit("", "", ""), "tenant_id"),
        (audit("acme", "", "2026"), "period"),
        (audit("acme", "monthly", "2026"), "period"),
        (audit("acme", "monthly", ""), "period"),
        (audit("acme", "monthly", "2026-03-01"), "period"),
    ] {
        let status = app.client.audit_series(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let violations = tonic_types::StatusExt::get_details_bad_request(&status)
            .expect("a BadRequest")
            .field_violations;
        assert_eq!(violations[0].field, field, "{violations:?}");
    }
    let answer = audited(&mut app, audit("acme", "monthly", "2026-03")).await;
    assert_eq!(
        (answer.last_value, answer.unaccounted),
        (0, 0),
        "{answer:?}"
    );
}
