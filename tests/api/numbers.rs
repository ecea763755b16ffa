//! GetNumber and ListNumbers: each number of a period with what became of
//! it, read from the ledger's ranges.

use numbering::{
    db::Backend,
    proto::{
        AuditSeriesRequest, ConfigureSeriesRequest, ConfirmRequest, GetNumberRequest,
        ListNumbersRequest, ListSeriesRequest, NumberRecord, NumberState, ReleaseRequest,
        ReserveRequest, Reset, VoidRequest,
    },
};
use rstest_reuse::apply;
use sqlx::Connection as _;
use tonic::{Code, Status};

use crate::{
    backends,
    helpers::{AllocatorApp, advance, allocate, assert_reason, keyed, spawn_allocator},
};

fn get(tenant: &str, series: &str, period: &str, number: i64) -> GetNumberRequest {
    GetNumberRequest {
        tenant_id: tenant.into(),
        series: series.into(),
        period: period.into(),
        number,
    }
}

fn list(state: NumberState, page_size: i32, page_token: &str) -> ListNumbersRequest {
    ListNumbersRequest {
        tenant_id: "acme".into(),
        state: state.into(),
        page_size,
        page_token: page_token.into(),
        ..ListNumbersRequest::default()
    }
}

/// 1..=3 issued together, 4..=5 issued to a keyed call, 6..=8 skipped, 9
/// issued.
async fn numbers_of_each_kind(app: &mut AllocatorApp) {
    app.client.allocate(allocate("acme", "", 3)).await.unwrap();
    app.client
        .allocate(keyed("acme", "", 2, "order-17"))
        .await
        .unwrap();
    app.client
        .advance_counter(advance("acme", 8, "numbers of the old system"))
        .await
        .unwrap();
    app.client.allocate(allocate("acme", "", 1)).await.unwrap();
}

async fn record(app: &mut AllocatorApp, request: GetNumberRequest) -> NumberRecord {
    let answer = app.client.get_number(request).await.unwrap().into_inner();
    answer.record.expect("a record")
}

/// Each number reads back with its state, text, request id or reason; a
/// number never handed out is not found.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_number_reads_back_with_what_became_of_it(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    numbers_of_each_kind(&mut app).await;

    let second = record(&mut app, get("acme", "", "", 2)).await;
    assert_eq!(
        (
            second.state(),
            second.formatted.as_str(),
            second.request_id.as_str(),
            second.series.as_str()
        ),
        (NumberState::Issued, "INV-002", "", "invoice")
    );
    assert!(second.updated_at.is_some());
    let keyed = record(&mut app, get("acme", "", "", 5)).await;
    assert_eq!(
        (keyed.state(), keyed.request_id.as_str()),
        (NumberState::Issued, "order-17")
    );
    let skipped = record(&mut app, get("acme", "", "", 7)).await;
    assert_eq!(
        (skipped.state(), skipped.reason.as_str()),
        (NumberState::Skipped, "numbers of the old system")
    );
    // Times to the microsecond on either backend, as PostgreSQL keeps them.
    for record in [&second, &keyed, &skipped] {
        let at = record.updated_at.expect("a time");
        assert_eq!(at.nanos % 1_000, 0, "{record:?}");
    }

    for (tenant, number) in [("acme", 10), ("globex", 1)] {
        let status = app
            .client
            .get_number(get(tenant, "", "", number))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_reason(&status, "NUMBER_NOT_FOUND");
        // The one period of a series that never resets is not named.
        assert_eq!(
            status.message(),
            format!(
                "number {number} of series \"invoice\" of tenant {tenant:?} was never handed out or skipped"
            )
        );
    }
    let status = app
        .client
        .get_number(get("acme", "", "", 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// Makes acme's "yearly" series (`{year}/{number:04}`, reset yearly) and
/// allocates its first number of 2025.
async fn yearly_with_one_number(app: &mut AllocatorApp) {
    app.client
        .configure_series(ConfigureSeriesRequest {
            tenant_id: "acme".into(),
            series: "yearly".into(),
            format: "{year}/{number:04}".into(),
            reset: Reset::Yearly.into(),
            ..ConfigureSeriesRequest::default()
        })
        .await
        .unwrap();
    let mut request = allocate("acme", "yearly", 1);
    request.date = "2025-06-30".into();
    app.client.allocate(request).await.unwrap();
}

/// A number of a periodic series is read in its period, with the text of
/// its document's date.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_are_read_in_their_period(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    yearly_with_one_number(&mut app).await;

    let first = record(&mut app, get("acme", "yearly", "2025", 1)).await;
    assert_eq!(
        (first.period.as_str(), first.formatted.as_str()),
        ("2025", "2025/0001")
    );
    let status = app
        .client
        .get_number(get("acme", "yearly", "2026", 1))
        .await
        .unwrap_err();
    assert_reason(&status, "NUMBER_NOT_FOUND");
    assert!(
        status
            .message()
            .starts_with("number 1 of period \"2026\" of series \"yearly\""),
        "{status:?}"
    );
}

/// Each call that reads or changes acme's number 1 of `series` and
/// `period`: GetNumber, ListNumbers, Confirm, Release and Void, each answer
/// reduced to whether it passed (ListNumbers: with what it listed).
async fn each_number_call(
    app: &mut AllocatorApp,
    series: &str,
    period: &str,
) -> [Result<Vec<NumberRecord>, Status>; 5] {
    let client = &mut app.client;
    [
        client
            .get_number(get("acme", series, period, 1))
            .await
            .map(|_| Vec::new()),
        client
            .list_numbers(ListNumbersRequest {
                series: series.into(),
                period: period.into(),
                ..list(NumberState::Unspecified, 10, "")
            })
            .await
            .map(|listed| listed.into_inner().records),
        client
            .confirm(ConfirmRequest {
                series: series.into(),
                period: period.into(),
                ..confirm(1, "INV-1")
            })
            .await
            .map(|_| Vec::new()),
        client
            .release(ReleaseRequest {
                tenant_id: "acme".into(),
                series: series.into(),
                period: period.into(),
                number: 1,
                reason: "not needed".into(),
                ..ReleaseRequest::default()
            })
            .await
            .map(|_| Vec::new()),
        client
            .void(VoidRequest {
                series: series.into(),
                period: period.into(),
                ..void(1, "cancelled")
            })
            .await
            .map(|_| Vec::new()),
    ]
}

/// A period the series' reset never makes (a month of a yearly series, a
/// year of one that never resets) is an invalid argument naming `period`
/// on every call that reads or changes a number, not a period without
/// numbers: a caller with the period wrong is not told its numbers do not
/// exist. Nothing changes.
#[tokio::test]
async fn a_period_the_series_never_makes_is_refused_by_field() {
    let mut app = spawn_allocator(Backend::Postgres).await;
    yearly_with_one_number(&mut app).await;
    app.client.allocate(allocate("acme", "", 1)).await.unwrap();

    for (series, period, hint) in [
        ("yearly", "2025-06", "such as \"2026\""),
        ("yearly", "", "such as \"2026\""),
        ("", "2025", "leave it empty"),
    ] {
        for answer in each_number_call(&mut app, series, period).await {
            let status = answer.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            let violations = tonic_types::StatusExt::get_details_bad_request(&status)
                .expect("a BadRequest")
                .field_violations;
            assert_eq!(violations[0].field, "period", "{violations:?}");
            assert!(violations[0].description.contains(hint), "{violations:?}");
        }
    }
    for (series, period) in [("yearly", "2025"), ("", "")] {
        let kept = record(&mut app, get("acme", series, period, 1)).await;
        assert_eq!(kept.state(), NumberState::Issued, "{kept:?}");
    }
}

/// A series never used nor configured (a misspelt name, say) has no
/// periods yet: a call naming one of its numbers with a period answers as
/// without one, for a number never handed out (NOT_FOUND; an empty list),
/// not that the period is wrong for the series.
#[tokio::test]
async fn a_period_of_a_series_never_used_is_not_refused() {
    let mut app = spawn_allocator(Backend::Sqlite).await;
    app.client.allocate(allocate("acme", "", 1)).await.unwrap();
    let mut answers = Vec::new();
    for period in ["2026", ""] {
        let codes = each_number_call(&mut app, "invoces", period)
            .await
            .map(|answer| answer.map_err(|status| status.code()));
        answers.push(codes);
    }
    assert_eq!(answers[0][0], Err(Code::NotFound));
    assert_eq!(answers[0][1], Ok(Vec::new()));
    assert_eq!(answers[0], answers[1]);
}

/// Every number of a period is listed once, in order, page by page, or only
/// those of one state.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_are_listed_in_order_page_by_page(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    numbers_of_each_kind(&mut app).await;

    for (state, page_size, expected) in [
        (NumberState::Unspecified, 4, vec![1, 2, 3, 4, 5, 6, 7, 8, 9]),
        (NumberState::Issued, 2, vec![1, 2, 3, 4, 5, 9]),
        (NumberState::Skipped, 2, vec![6, 7, 8]),
        (NumberState::Skipped, 0, vec![6, 7, 8]),
    ] {
        let (mut seen, mut pages, mut token) = (Vec::new(), 0, String::new());
        loop {
            let page = app
                .client
                .list_numbers(list(state, page_size, &token))
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            assert!(
                page.records
                    .iter()
                    .all(|r| state == NumberState::Unspecified || r.state() == state)
            );
            seen.extend(page.records.iter().map(|r| r.number));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(seen, expected, "{state:?}");
        let size = if page_size == 0 {
            50
        } else {
            usize::try_from(page_size).unwrap()
        };
        assert_eq!(pages, expected.len().div_ceil(size), "{state:?}");
    }
}

/// A page token is taken back only by the listing that gave it, with the
/// same fields: one of another state, period, series or method is refused
/// (INVALID_ARGUMENT naming `page_token`), not read as a place in this one.
#[tokio::test]
async fn a_page_token_is_taken_only_by_the_listing_that_gave_it() {
    let mut app = spawn_allocator(Backend::Postgres).await;
    numbers_of_each_kind(&mut app).await;
    app.client
        .allocate(allocate("globex", "", 3))
        .await
        .unwrap();
    let page = app
        .client
        .list_numbers(list(NumberState::Unspecified, 2, ""))
        .await
        .unwrap()
        .into_inner();
    let token = page.next_page_token;
    assert!(!token.is_empty());
    let refused = |status: Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let violations = tonic_types::StatusExt::get_details_bad_request(&status)
            .expect("a BadRequest")
            .field_violations;
        assert_eq!(violations[0].field, "page_token", "{violations:?}");
        assert!(
            violations[0]
                .description
                .starts_with("was given for another listing"),
            "{violations:?}"
        );
    };
    let others = [
        list(NumberState::Issued, 2, &token),
        ListNumbersRequest {
            tenant_id: "globex".into(),
            ..list(NumberState::Unspecified, 2, &token)
        },
        ListNumbersRequest {
            series: "credit".into(),
            ..list(NumberState::Unspecified, 2, &token)
        },
        ListNumbersRequest {
            period: "2026".into(),
            ..list(NumberState::Unspecified, 2, &token)
        },
    ];
    for other in others {
        refused(app.client.list_numbers(other).await.unwrap_err());
    }
    let as_series = app
        .client
        .list_series(ListSeriesRequest {
            tenant_id: "acme".into(),
            page_size: 2,
            page_token: token.clone(),
        })
        .await
        .unwrap_err();
    refused(as_series);
    // The same fields, another page size: the next page.
    let next = app
        .client
        .list_numbers(list(NumberState::Unspecified, 3, &token))
        .await
        .unwrap()
        .into_inner();
    let numbers: Vec<_> = next.records.iter().map(|r| r.number).collect();
    assert_eq!(numbers, [3, 4, 5]);
}

/// A page token this listing did not give, or a state that is not one, is
/// an invalid argument naming its field.
#[tokio::test]
async fn bad_listings_are_refused_by_field() {
    let mut app = spawn_allocator(Backend::Postgres).await;
    let mut bad_state = list(NumberState::Unspecified, 10, "");
    bad_state.state = 99;
    for (request, field) in [
        (
            list(NumberState::Unspecified, 10, "bm90IGEgdG9rZW4"),
            "page_token",
        ),
        (bad_state, "state"),
        (list(NumberState::Unspecified, -1, ""), "page_size"),
    ] {
        let status = app.client.list_numbers(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let violations = tonic_types::StatusExt::get_details_bad_request(&status)
            .expect("a BadRequest")
            .field_violations;
        assert_eq!(violations[0].field, field, "{violations:?}");
    }
}

fn confirm(number: i64, reference: &str) -> ConfirmRequest {
    ConfirmRequest {
        tenant_id: "acme".into(),
        number,
        reference: reference.into(),
        ..ConfirmRequest::default()
    }
}

fn void(number: i64, reason: &str) -> VoidRequest {
    VoidRequest {
        tenant_id: "acme".into(),
        number,
        reason: reason.into(),
        ..VoidRequest::default()
    }
}

async fn listed(app: &mut AllocatorApp, state: NumberState) -> Vec<i64> {
    let page = app
        .client
        .list_numbers(list(state, 100, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(page.next_page_token.is_empty());
    page.records.iter().map(|record| record.number).collect()
}

/// Issued numbers are confirmed with their document's reference or voided
/// with a reason; a confirmed one can be voided later; repeats answer the
/// same record; every other change is refused with its reason and changes
/// nothing; listings and the audit follow.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_are_confirmed_and_voided_as_their_state_allows(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    numbers_of_each_kind(&mut app).await;

    let first = app.client.confirm(confirm(1, "inv-1")).await.unwrap();
    let first = first.into_inner().record.unwrap();
    assert_eq!(
        (
            first.state(),
            first.reference.as_str(),
            first.formatted.as_str()
        ),
        (NumberState::Confirmed, "inv-1", "INV-001")
    );
    let again = app.client.confirm(confirm(1, "inv-1")).await.unwrap();
    assert_eq!(again.into_inner().record.unwrap(), first);
    let status = app.client.confirm(confirm(1, "inv-9")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_reason(&status, "ALREADY_CONFIRMED");
    assert_eq!(record(&mut app, get("acme", "", "", 1)).await, first);

    let typo = app.client.void(void(2, "typo")).await.unwrap();
    let typo = typo.into_inner().record.unwrap();
    assert_eq!(
        (typo.state(), typo.reason.as_str()),
        (NumberState::Voided, "typo")
    );
    let status = app.client.confirm(confirm(2, "inv-2")).await.unwrap_err();
    assert_reason(&status, "NUMBER_VOIDED");
    let cancelled = app.client.void(void(1, "cancelled")).await.unwrap();
    let cancelled = cancelled.into_inner().record.unwrap();
    assert_eq!(
        (
            cancelled.state(),
            cancelled.reference.as_str(),
            cancelled.reason.as_str()
        ),
        (NumberState::Voided, "inv-1", "cancelled")
    );
    let again = app.client.void(void(1, "cancelled")).await.unwrap();
    assert_eq!(again.into_inner().record.unwrap(), cancelled);
    let status = app.client.void(void(1, "another")).await.unwrap_err();
    assert_reason(&status, "NUMBER_VOIDED");
    app.client.confirm(confirm(5, "inv-5")).await.unwrap();

    // Skipped, or never handed out: nothing to confirm.
    for number in [7, 10] {
        let status = app
            .client
            .confirm(confirm(number, "inv"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_reason(&status, "NUMBER_NOT_FOUND");
        assert_eq!(
            status.message().contains("skipped by AdvanceCounter"),
            number == 7,
            "{status:?}"
        );
    }
    for (request, field) in [
        (confirm(3, ""), "reference"),
        (confirm(3, " \t "), "reference"),
        (confirm(3, &"x".repeat(257)), "reference"),
        (confirm(0, "inv"), "number"),
    ] {
        let status = app.client.confirm(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let violations = tonic_types::StatusExt::get_details_bad_request(&status)
            .expect("a BadRequest")
            .field_violations;
        assert_eq!(violations[0].field, field, "{violations:?}");
    }
    for blank in ["", "   "] {
        let status = app.client.void(void(3, blank)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let release = ReleaseRequest {
            tenant_id: "acme".into(),
            number: 3,
            reason: blank.into(),
            ..ReleaseRequest::default()
        };
        let status = app.client.release(release).await.unwrap_err();
        let violations = tonic_types::StatusExt::get_details_bad_request(&status)
            .expect("a BadRequest")
            .field_violations;
        assert_eq!(violations[0].field, "reason", "{violations:?}");
    }

    assert_eq!(listed(&mut app, NumberState::Issued).await, [3, 4, 9]);
    assert_eq!(listed(&mut app, NumberState::Confirmed).await, [5]);
    let page = app
        .client
        .list_numbers(list(NumberState::Confirmed, 10, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.records,
        [record(&mut app, get("acme", "", "", 5)).await]
    );
    assert_eq!(
        (
            page.records[0].formatted.as_str(),
            page.records[0].reference.as_str(),
            page.records[0].request_id.as_str()
        ),
        ("INV-005", "inv-5", "order-17")
    );
    assert_eq!(listed(&mut app, NumberState::Voided).await, [1, 2]);
    assert_eq!(listed(&mut app, NumberState::Skipped).await, [6, 7, 8]);
    let audit = app
        .client
        .audit_series(AuditSeriesRequest {
            tenant_id: "acme".into(),
            ..AuditSeriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            audit.issued,
            audit.confirmed,
            audit.voided,
            audit.skipped,
            audit.unaccounted
        ),
        (3, 1, 2, 3, 0)
    );
}

/// Concurrent confirmations of one number with different references agree:
/// one reference wins, every other call is refused naming it.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_confirmations_of_one_number_agree(#[case] backend: Backend) {
    let app = spawn_allocator(backend).await;
    app.client
        .clone()
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap();
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let mut client = app.client.clone();
            tokio::spawn(async move { client.confirm(confirm(1, &format!("inv-{i}"))).await })
        })
        .collect();
    let (mut won, mut refused) = (Vec::new(), Vec::new());
    for call in calls {
        match call.await.unwrap() {
            Ok(answer) => won.push(answer.into_inner().record.unwrap().reference),
            Err(status) => {
                assert_reason(&status, "ALREADY_CONFIRMED");
                refused.push(status);
            }
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(refused.len(), 15);
    let stored = tonic_types::StatusExt::get_details_error_info(&refused[0]).unwrap();
    assert_eq!(stored.metadata["reference"], won[0]);
}

/// The first state of a number stored by another write while a confirmation
/// waits to store its own: the confirmation runs again and answers what was
/// stored, never overwrites it. (PostgreSQL: the insert waits on the other
/// write's uncommitted row, then fails on the key.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_that_loses_the_race_to_another_sees_it() {
    let app = spawn_allocator(Backend::Postgres).await;
    app.client
        .clone()
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap();
    confirm_while_another_write_commits(
        &app,
        "INSERT INTO number_states (tenant_id, series, period, number, state, reference, updated_at)
         VALUES ('acme', 'invoice', '', 1, 'confirmed', 'inv-first', now())",
    )
    .await;
}

/// Confirms number 1 to `inv-late` while another connection's open
/// transaction, which ran `statement`, holds its row; commits that
/// transaction once the confirmation waits on it, and checks that the
/// confirmation is refused naming `inv-first`.
async fn confirm_while_another_write_commits(app: &AllocatorApp, statement: &str) {
    let mut other = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let mut first = sqlx::Connection::begin(&mut other).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&mut *first)
        .await
        .unwrap();
    let mut client = app.client.clone();
    let late = tokio::spawn(async move { client.confirm(confirm(1, "inv-late")).await });
    app.db.wait_until_blocked_on_a_lock().await;
    first.commit().await.unwrap();

    let status = late.await.unwrap().unwrap_err();
    assert_reason(&status, "ALREADY_CONFIRMED");
    let stored = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(stored.metadata["reference"], "inv-first");
}

/// A reserved number confirmed by another write while a confirmation waits
/// to change it: the confirmation answers what was stored, never overwrites
/// it. (PostgreSQL: the confirmation's read of the row waits on the other
/// write's uncommitted change, then sees it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_whose_row_another_write_changed_sees_it() {
    let app = spawn_allocator(Backend::Postgres).await;
    let reserve = ReserveRequest {
        tenant_id: "acme".into(),
        ..ReserveRequest::default()
    };
    let reserved = app.client.clone().reserve(reserve).await.unwrap();
    assert_eq!(reserved.into_inner().record.unwrap().number, 1);
    confirm_while_another_write_commits(
        &app,
        "UPDATE number_states SET state = 'confirmed', reference = 'inv-first', updated_at = now()
         WHERE tenant_id = 'acme' AND number = 1",
    )
    .await;
    let record = app
        .client
        .clone()
        .get_number(get("acme", "", "", 1))
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(record.reference, "inv-first");
}
