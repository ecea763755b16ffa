//! InvoiceWriter behaviour, with a real allocator behind it.

use numbering::db::Backend;
use rstest_reuse::apply;

use crate::backends;
use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use numbering::{
    allocator::{CommitMode, series::NumberFormat},
    clock::Clock,
    invoices::{domain::Numbered, seed, store::HighestNumber},
    proto::{
        AdvanceCounterRequest, GapPolicy, GetInvoiceRequest, LineItem, ListInvoicesRequest,
        NumberState,
    },
    tenant::TenantId,
};
use tokio::{net::TcpListener, sync::Barrier};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{
    AllocatorApp, CapturedLogs, PATIENCE, TestDb, WriterApp, acme_number, allocator_client,
    assert_invalid_field, assert_reason, audit_acme, create, import_invoice, import_invoice_in,
    invoice_request, invoice_series, list_all, list_in_pages, set_acme_gap_policy, spawn_allocator,
    spawn_allocator_on, spawn_both, spawn_writer, spawn_writer_with, test_pool_settings,
    wait_for_health,
};

/// A clock stopped at one instant that hands out one id.
struct Stopped(chrono::DateTime<chrono::Utc>, uuid::Uuid);

impl Clock for Stopped {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.0
    }

    fn new_id(&self) -> uuid::Uuid {
        self.1
    }
}

/// The writer stamps an invoice with its clock's time and an id from it, in
/// the answer and in the store alike.
#[apply(backends)]
#[tokio::test]
async fn invoices_are_stamped_by_the_writers_clock(#[case] backend: Backend) {
    let at = chrono::DateTime::parse_from_rfc3339("2031-02-03T04:05:06.789012Z")
        .unwrap()
        .to_utc();
    let id = uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0042);
    let allocator = spawn_allocator(backend).await;
    let clock = Arc::new(Stopped(at, id));
    let mut writer = spawn_writer_with(backend, &allocator.server.url(), 3, clock).await;

    let created = create(&mut writer.client, "acme").await;
    assert_eq!(created.id, id.to_string());
    let stamp = created.created_at.expect("a creation time");
    assert_eq!((stamp.seconds, stamp.nanos), (at.timestamp(), 789_012_000));
    let stored = writer
        .store
        .get(&TenantId::parse("acme").unwrap(), id)
        .await
        .unwrap()
        .expect("stored under the clock's id");
    assert_eq!(stored.created_at, at);
}

/// 200 concurrent invoices of one tenant are numbered INV-001 … INV-200,
/// each once; each is stored settled, and its reservation's note goes once
/// its number is confirmed (just after its call is answered; no
/// reconciliation runs here).
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invoices_are_numbered_without_gaps_or_duplicates(#[case] backend: Backend) {
    let (_allocator, mut writer) = spawn_both(backend, 3).await;
    let barrier = Arc::new(Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let mut client = writer.client.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                client
                    .create_invoice(invoice_request("acme"))
                    .await
                    .expect("create")
                    .into_inner()
                    .invoice
                    .unwrap()
            })
        })
        .collect();
    let mut numbers = Vec::new();
    for task in tasks {
        numbers.push(task.await.unwrap().invoice_number);
    }
    numbers.sort();
    let expected: Vec<_> = (1..=200).map(|n| format!("INV-{n:03}")).collect();
    assert_eq!(numbers, expected);

    let listed: Vec<_> = list_all(&mut writer.client, "acme")
        .await
        .into_iter()
        .map(|i| i.number)
        .collect();
    assert_eq!(
        listed,
        (1..=200).collect::<Vec<i64>>(),
        "ListInvoices is not in number order"
    );
    // Each call's note goes once its number is confirmed, in a later group.
    let later = chrono::Utc::now() + chrono::Duration::days(1);
    let settled = tokio::time::timeout(PATIENCE, async {
        while !writer
            .store
            .pending_before(later, None, 1)
            .await
            .unwrap()
            .is_empty()
        {
            tokio::task::yield_now().await;
        }
    });
    settled.await.expect("every invoice's note is settled");
    let unsettled = writer.store.unsettled(None, 1).await.unwrap();
    assert!(unsettled.is_empty(), "stored unsettled: {unsettled:?}");
}

/// A created invoice carries its fields and an exact total, and reads back the same.
#[apply(backends)]
#[tokio::test]
async fn invoices_read_back_as_created_with_exact_totals(#[case] backend: Backend) {
    let (_allocator, mut writer) = spawn_both(backend, 3).await;
    let created = create(&mut writer.client, "acme").await;
    assert_eq!(created.invoice_number, "INV-001");
    assert_eq!(created.number, 1);
    // 1.5 × 100.00 + 1 × 0.1, never via floating point.
    assert_eq!(created.total, "150.10");
    assert_eq!(created.line_items[0].quantity, "1.5");
    assert_eq!(created.line_items[0].unit_price, "100.00");
    assert_eq!(
        (
            created.client_name.as_str(),
            created.due_date.as_str(),
            created.currency.as_str()
        ),
        ("Globex Corporation", "2026-12-31", "EUR")
    );
    assert!(created.created_at.is_some());

    let read = writer
        .client
        .get_invoice(GetInvoiceRequest {
            tenant_id: "acme".into(),
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap();
    assert_eq!(read, created);
}

/// Another tenant's invoice answers NOT_FOUND exactly as an unknown id does.
#[apply(backends)]
#[tokio::test]
async fn another_tenants_invoice_is_not_found(#[case] backend: Backend) {
    let (_allocator, mut writer) = spawn_both(backend, 3).await;
    let created = create(&mut writer.client, "acme").await;

    let foreign = writer
        .client
        .get_invoice(GetInvoiceRequest {
            tenant_id: "globex".into(),
            id: created.id,
        })
        .await
        .unwrap_err();
    let unknown = writer
        .client
        .get_invoice(GetInvoiceRequest {
            tenant_id: "globex".into(),
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    assert_eq!(
        (foreign.code(), foreign.message()),
        (unknown.code(), unknown.message())
    );
    assert_eq!(foreign.details(), unknown.details());
    assert_reason(&foreign, "INVOICE_NOT_FOUND");
    assert!(list_all(&mut writer.client, "globex").await.is_empty());
}

/// Invoices imported with periods of shapes the allocator does not make
/// (a fiscal year, a slash) are listed page by page with the others, in
/// order of period and number: each page's token takes the next page on.
#[apply(backends)]
#[tokio::test]
async fn invoices_of_imported_periods_are_listed_page_by_page(#[case] backend: Backend) {
    let (_allocator, mut writer) = spawn_both(backend, 3).await;
    for (period, number, text) in [
        ("FY/2026", 2, "FY/2026-2"),
        ("FY/2026", 1, "FY/2026-1"),
        ("Q1-2026", 7, "Q1-2026-7"),
        ("", 1, "INV-001"),
    ] {
        import_invoice_in(&writer.store, "acme", period, number, text).await;
    }

    let listed = list_in_pages(&mut writer.client, "acme", 1).await;
    let listed: Vec<_> = listed.into_iter().map(|i| i.invoice_number).collect();
    assert_eq!(listed, ["INV-001", "FY/2026-1", "FY/2026-2", "Q1-2026-7"]);
}

/// Invoices imported ahead of the counter are skipped within the attempts, each
/// conflict is logged with tenant, number and attempt, and no number is stored twice.
#[apply(backends)]
#[tokio::test]
async fn conflicting_numbers_are_skipped_within_the_attempts(#[case] backend: Backend) {
    // A current-thread runtime: the servers' tasks log through this subscriber too.
    let (_allocator, mut writer) = spawn_both(backend, 3).await;
    // After start-up, whose warnings (a new SQLite file) are not under test.
    let logs = CapturedLogs::default();
    let _subscriber = tracing::subscriber::set_default(logs.subscriber());
    import_invoice(&writer.store, "acme", 1, "INV-001").await;
    import_invoice(&writer.store, "acme", 2, "INV-002").await;

    let created = create(&mut writer.client, "acme").await;
    assert_eq!(created.invoice_number, "INV-003");
    let numbers: Vec<_> = list_all(&mut writer.client, "acme")
        .await
        .into_iter()
        .map(|i| i.invoice_number)
        .collect();
    assert_eq!(numbers, ["INV-001", "INV-002", "INV-003"]);

    let conflicts: Vec<_> = logs
        .events()
        .into_iter()
        .filter(|event| {
            event["target"] == "numbering::invoices::writer" && event["fields"]["attempt"].is_i64()
        })
        .map(|event| {
            let fields = &event["fields"];
            (
                fields["tenant"].as_str().map(str::to_owned),
                fields["number"].as_i64(),
                fields["attempt"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        conflicts,
        [
            (Some("acme".to_owned()), Some(1), Some(1)),
            (Some("acme".to_owned()), Some(2), Some(2))
        ]
    );
    // A handled conflict is the caller's data, not a fault: nothing at ERROR,
    // and the driver's own report of the violation is not logged.
    let events = logs.events();
    let errors: Vec<_> = events.iter().filter(|e| e["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "ERROR events: {errors:?}");
    let warnings = events.iter().filter(|e| e["level"] == "WARN").count();
    assert_eq!(warnings, 2, "one line per conflict: {events:?}");
}

/// An invoice imported with the text of the next number but a number of
/// its own (another period, another format) holds that text: the number is
/// confirmed to it, so that it is never handed out again (on a series that
/// reissues, a number given back would come back to every attempt), and
/// the new invoice is stored under the next.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_whose_text_only_is_taken_is_confirmed_to_that_invoice(#[case] backend: Backend) {
    for policy in [GapPolicy::Void, GapPolicy::Reissue] {
        let (mut allocator, mut writer) = spawn_both(backend, 3).await;
        set_acme_gap_policy(&mut allocator.client, policy).await;
        let imported = import_invoice(&writer.store, "acme", 500, "INV-001").await;

        for expected in ["INV-002", "INV-003"] {
            let created = create(&mut writer.client, "acme").await;
            assert_eq!(created.invoice_number, expected, "{policy:?}");
        }
        let first = acme_number(&mut allocator.client, 1).await;
        assert_eq!(
            (first.state(), first.reference),
            (NumberState::Confirmed, imported.to_string()),
            "{policy:?}"
        );
        let audit = audit_acme(&mut allocator.client).await;
        assert_eq!(
            (
                audit.confirmed,
                audit.reserved,
                audit.voided,
                audit.released
            ),
            (3, 0, 0, 0),
            "{policy:?}: {audit:?}"
        );
    }
}

#[apply(backends)]
#[tokio::test]
async fn more_conflicts_than_attempts_abort_and_store_nothing(#[case] backend: Backend) {
    let (_allocator, mut writer) = spawn_both(backend, 3).await;
    for n in 1..=4 {
        import_invoice(&writer.store, "acme", n, &format!("INV-{n:03}")).await;
    }

    let status = writer
        .client
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_reason(&status, "NUMBER_CONFLICT");
    assert!(
        status.message().contains("nothing was stored"),
        "{}",
        status.message()
    );
    assert_eq!(list_all(&mut writer.client, "acme").await.len(), 4);

    let created = create(&mut writer.client, "acme").await;
    assert_eq!(created.invoice_number, "INV-005");
    let numbers: Vec<_> = list_all(&mut writer.client, "acme")
        .await
        .into_iter()
        .map(|i| i.number)
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
}

/// Seeding compares numbers numerically (INV-1001 above INV-999), raises each tenant's
/// counter, and changes nothing when run again.
#[apply(backends)]
#[tokio::test]
async fn seeding_continues_numbering_after_imported_invoices(#[case] backend: Backend) {
    let (mut allocator, mut writer) = spawn_both(backend, 1).await;
    for (n, formatted) in [
        (998, "INV-998"),
        (999, "INV-999"),
        (1000, "INV-1000"),
        (1001, "INV-1001"),
    ] {
        import_invoice(&writer.store, "acme", n, formatted).await;
    }
    import_invoice(&writer.store, "globex", 7, "INV-007").await;
    let client = allocator_client(&allocator.server.url());

    // The first run configures both series, as nobody had; the second
    // finds them configured.
    for unconfigured in [2, 0] {
        let report = seed::seed_counters(writer.store.as_ref(), &client)
            .await
            .unwrap();
        assert_eq!(
            (report.tenants, report.failed, report.unconfigured),
            (2, 0, unconfigured)
        );
        let series = invoice_series(&mut allocator.client, "acme").await.unwrap();
        assert_eq!(series.last_value, 1001);
    }

    // One attempt only: a number that collided would fail the call.
    let acme = create(&mut writer.client, "acme").await;
    assert_eq!(acme.invoice_number, "INV-1002");
    let globex = create(&mut writer.client, "globex").await;
    assert_eq!(globex.invoice_number, "INV-008");
}

/// The seed-counters command of the real binary seeds the allocator and exits
/// 0; its options go before the command or after it.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_counters_command_seeds_the_allocator(#[case] backend: Backend) {
    let (mut allocator, writer) = spawn_both(backend, 1).await;
    import_invoice(&writer.store, "acme", 41, "INV-041").await;

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_invoice-writer"))
        .args([
            "--database-url",
            &writer.db.url,
            "seed-counters",
            "--allocator-url",
            &allocator.server.url(),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let series = invoice_series(&mut allocator.client, "acme").await.unwrap();
    assert_eq!(series.last_value, 41);
}

/// Each invoice rule answers INVALID_ARGUMENT naming the field, before any number is
/// allocated, and stores nothing.
#[apply(backends)]
#[tokio::test]
async fn bad_invoices_are_rejected_by_field_and_change_nothing(#[case] backend: Backend) {
    type Edit = fn(&mut numbering::proto::CreateInvoiceRequest);
    let (mut allocator, mut writer) = spawn_both(backend, 3).await;
    let item = |q: &str, p: &str| LineItem {
        description: "x".into(),
        quantity: q.into(),
        unit_price: p.into(),
    };
    let cases: Vec<(&str, Edit)> = vec![
        ("tenant_id", |r| r.tenant_id = "bad tenant".into()),
        ("client_id", |r| r.client_id = "c".repeat(129)),
        ("client_name", |r| r.client_name = "   ".into()),
        ("client_name", |r| r.client_name = "n".repeat(201)),
        ("client_name", |r| r.client_name = "Glo\0bex".into()),
        ("client_email", |r| r.client_email = "not-an-email".into()),
        ("client_phone", |r| r.client_phone = "call me".into()),
        ("client_address", |r| r.client_address = "a".repeat(1001)),
        ("due_date", |r| r.due_date = "2026-02-30".into()),
        ("due_date", |r| r.due_date = String::new()),
        ("notes", |r| r.notes = "n".repeat(4001)),
        ("currency", |r| r.currency = "EURO".into()),
        ("currency", |r| r.currency = "XYZ".into()),
        ("currency", |r| r.currency = "HRK".into()),
        ("request_id", |r| r.request_id = "r".repeat(129)),
        ("request_id", |r| r.request_id = "retry #2".into()),
        ("line_items", |r| r.line_items.clear()),
        ("line_items[1].description", |r| {
            r.line_items[1].description = "nul\0".into();
        }),
        ("line_items[0].description", |r| {
            r.line_items[0].description = String::new();
        }),
        ("line_items[1].quantity", |r| {
            r.line_items[1].quantity = "0".into();
        }),
        ("line_items[1].quantity", |r| {
            r.line_items[1].quantity = "-2".into();
        }),
        ("line_items[0].unit_price", |r| {
            r.line_items[0].unit_price = "-0.01".into();
        }),
        ("line_items[0].unit_price", |r| {
            r.line_items[0].unit_price = "1.23456".into();
        }),
        ("line_items[0].quantity", |r| {
            r.line_items[0].quantity = "1e3".into();
        }),
    ];
    for (field, edit) in cases {
        let mut request = invoice_request("acme");
        edit(&mut request);
        let status = writer.client.create_invoice(request).await.unwrap_err();
        assert_invalid_field(&status, field);
    }
    let mut too_many = invoice_request("acme");
    too_many.line_items = (0..501).map(|_| item("1", "1")).collect();
    assert_invalid_field(
        &writer.client.create_invoice(too_many).await.unwrap_err(),
        "line_items",
    );

    let status = writer
        .client
        .get_invoice(GetInvoiceRequest {
            tenant_id: "acme".into(),
            id: "42".into(),
        })
        .await
        .unwrap_err();
    assert_invalid_field(&status, "id");
    let status = writer
        .client
        .list_invoices(ListInvoicesRequest {
            tenant_id: "acme".into(),
            page_size: 10,
            page_token: "nonsense".into(),
        })
        .await
        .unwrap_err();
    assert_invalid_field(&status, "page_token");
    // A token of this form with a period no invoice can have, or no
    // number: refused, not sent to the database.
    for key in ["\0/1", "2026/x", "2026"] {
        let status = writer
            .client
            .list_invoices(ListInvoicesRequest {
                tenant_id: "acme".into(),
                page_size: 10,
                page_token: numbering::server::pagination::Listing::of("ListInvoices", &["acme"])
                    .token(key),
            })
            .await
            .unwrap_err();
        assert_invalid_field(&status, "page_token");
    }
    // A token of acme's listing, sent for another tenant's.
    let status = writer
        .client
        .list_invoices(ListInvoicesRequest {
            tenant_id: "globex".into(),
            page_size: 10,
            page_token: numbering::server::pagination::Listing::of("ListInvoices", &["acme"])
                .token("2026/1"),
        })
        .await
        .unwrap_err();
    assert_invalid_field(&status, "page_token");
    assert!(
        status.message().contains("was given for another listing"),
        "{status:?}"
    );

    assert!(list_all(&mut writer.client, "acme").await.is_empty());
    let series = invoice_series(&mut allocator.client, "acme")
        .await
        .unwrap_err();
    assert_eq!(
        series.code(),
        Code::NotFound,
        "a rejected invoice allocated a number"
    );
}

/// With the allocator unreachable the writer retries inside the caller's deadline, then
/// answers UNAVAILABLE (not DEADLINE_EXCEEDED) and stores nothing.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_allocator_is_retried_then_unavailable_within_the_deadline(
    #[case] backend: Backend,
) {
    // An "allocator" that drops every connection it accepts, counting them.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(connection);
        }
    });
    let mut writer = spawn_writer(backend, &url, 3).await;

    let mut request = tonic::Request::new(invoice_request("acme"));
    request.set_timeout(Duration::from_secs(2));
    let status = writer.client.create_invoice(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_reason(&status, "ALLOCATOR_UNAVAILABLE");
    let attempts = attempts.load(Ordering::SeqCst);
    assert!(
        attempts > 1,
        "the writer tried the allocator {attempts} time(s) only"
    );
    assert!(list_all(&mut writer.client, "acme").await.is_empty());
}

/// An allocator refusal that retrying cannot fix keeps its code and reason.
#[apply(backends)]
#[tokio::test]
async fn allocator_refusals_keep_their_code_and_reason(#[case] backend: Backend) {
    let (mut allocator, mut writer) = spawn_both(backend, 3).await;
    allocator
        .client
        .advance_counter(AdvanceCounterRequest {
            tenant_id: "acme".into(),
            series: String::new(),
            at_least: i64::MAX,
            reason: "at the end".into(),
            ..AdvanceCounterRequest::default()
        })
        .await
        .unwrap();
    let status = writer
        .client
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_reason(&status, "SERIES_EXHAUSTED");
    // The google.rpc.Status inside the details says what the status says.
    let inner = <tonic_types::pb::Status as prost::Message>::decode(status.details()).unwrap();
    assert_eq!(
        (inner.code, inner.message.as_str()),
        (Code::FailedPrecondition as i32, status.message())
    );
}

/// A writer whose first allocation fails retries and succeeds once the allocator answers.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_retries_until_the_allocator_answers(#[case] backend: Backend) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut writer = spawn_writer(backend, &url, 3).await;

    let mut client = writer.client.clone();
    let call = tokio::spawn(async move { client.create_invoice(invoice_request("acme")).await });
    // Refuse the first connection: the writer's first attempt fails.
    let (refused, _) = listener.accept().await.unwrap();
    drop(refused);
    // Then serve the allocator on the same port.
    let _allocator = spawn_allocator_on(
        listener,
        backend,
        NumberFormat::default(),
        CommitMode::PerCall,
    )
    .await;

    let created = call
        .await
        .unwrap()
        .expect("create after retry")
        .into_inner()
        .invoice
        .unwrap();
    assert_eq!(created.invoice_number, "INV-001");
    assert_eq!(list_all(&mut writer.client, "acme").await.len(), 1);
}

/// A writer whose `--reservation-lease` the allocator refuses (past its
/// `--max-lease`) answers INTERNAL: the operator's to mend, not an
/// INVALID_ARGUMENT the caller would take for its own; nothing is stored.
/// Its log names the setting to mend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_the_allocator_refuses_is_the_writers_fault() {
    use crate::helpers::{allocator_binary, start, writer_binary};
    let allocator_db = TestDb::create(Backend::Sqlite).await;
    let mut command = allocator_binary(&allocator_db.url);
    command.args(["--max-lease", "1h"]);
    let allocator = start(command).await;
    let writer_db = TestDb::create(Backend::Sqlite).await;
    let mut command = writer_binary(&writer_db.url, &allocator.url());
    command.args(["--reservation-lease", "2h"]);
    let mut writer = start(command).await;
    let mut client = numbering::proto::invoice_writer_client::InvoiceWriterClient::new(
        writer.ready("numbering.v1.InvoiceWriter").await,
    );
    let status = client
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(list_all(&mut client, "acme").await.is_empty());
    writer
        .wait_for_event(|event| {
            event["message"].as_str().is_some_and(|message| {
                message.contains("this writer's --reservation-lease")
                    && message.contains("--max-lease")
            })
        })
        .await;
}

/// A retry budget longer than the request time-out is cut to 90% of it: a
/// call that cannot reach the allocator answers ALLOCATOR_UNAVAILABLE, not
/// a time-out cutting it off while it still retries; its retries are
/// logged with the allocator's URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_budget_past_the_request_timeout_is_cut_to_it() {
    use crate::helpers::{start, writer_binary};
    let writer_db = TestDb::create(Backend::Sqlite).await;
    // Nothing listens on port 1.
    let mut command = writer_binary(&writer_db.url, "http://127.0.0.1:1");
    command.args(["--request-timeout", "2s", "--allocator-retry-budget", "30s"]);
    let mut writer = start(command).await;
    writer
        .wait_for_event(|event| {
            event["message"]
                .as_str()
                .is_some_and(|m| m.contains("cut to 90% of --request-timeout"))
        })
        .await;
    let mut client =
        numbering::proto::invoice_writer_client::InvoiceWriterClient::new(writer.ready("").await);
    let status = client
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_reason(&status, "ALLOCATOR_UNAVAILABLE");
    // Each retry's log line names the allocator it could not reach: a
    // mistyped port shows there.
    writer
        .wait_for_event(|event| {
            event["message"] == "allocator unavailable or over the tenant's rate; retrying"
                && event["allocator"] == "http://127.0.0.1:1"
        })
        .await;
}

/// A writer database dropped under the running writer answers UNAVAILABLE,
/// not INTERNAL, and no number is taken for the invoice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_database_dropped_under_it_is_unavailable() {
    let (mut allocator, writer) = spawn_both(Backend::Postgres, 3).await;
    writer
        .db
        .admin(format!(
            r#"DROP DATABASE "{}" WITH (FORCE)"#,
            writer.db.name
        ))
        .await;
    fails_taking_no_number(&mut allocator, &writer).await;
}

/// With the writer's database away, `CreateInvoice` answers UNAVAILABLE
/// before taking a number: acme's series is never created.
async fn fails_taking_no_number(allocator: &mut AllocatorApp, writer: &WriterApp) {
    let status = writer
        .client
        .clone()
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_reason(&status, "STORE_UNAVAILABLE");
    let series = invoice_series(&mut allocator.client, "acme")
        .await
        .unwrap_err();
    assert_eq!(series.code(), Code::NotFound, "a number was burned");
}

/// The writer's readiness follows its own database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_readiness_follows_its_database() {
    // The outage is cut at the PostgreSQL server; sqlite.rs covers a SQLite file going away.
    let (mut allocator, writer) = spawn_both(Backend::Postgres, 3).await;
    let channel = writer.server.channel().await;
    let name = "numbering.v1.InvoiceWriter";
    wait_for_health(channel.clone(), name, ServingStatus::Serving).await;
    writer.db.cut().await;
    wait_for_health(channel.clone(), name, ServingStatus::NotServing).await;

    fails_taking_no_number(&mut allocator, &writer).await;

    writer.db.restore().await;
    wait_for_health(channel, name, ServingStatus::Serving).await;
    let created = writer
        .client
        .clone()
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.invoice.unwrap().invoice_number, "INV-001");
}

/// Numbers stored never repeat, whatever path wrote them.
#[apply(backends)]
#[tokio::test]
async fn the_store_refuses_a_number_twice(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = db.invoice_store().await;
    import_invoice(&store, "acme", 5, "INV-005").await;
    let today = chrono::Utc::now().date_naive();
    for (number, formatted) in [(5, "X-5"), (6, "INV-005")] {
        let error = store
            .insert(&acme_invoice(number, formatted), None, None)
            .await
            .unwrap_err();
        assert!(
            matches!(error, numbering::invoices::store::StoreError::NumberTaken),
            "{error:?}"
        );
    }
    let stored: HashSet<_> = store.highest_numbers().await.unwrap().into_iter().collect();
    let expected = HighestNumber {
        tenant_id: "acme".into(),
        issue_date: today,
        number: 5,
    };
    assert_eq!(stored, HashSet::from([expected]));
}

/// The invoice that holds a number is found by the number or by its text,
/// whichever of the two it shares with the number asked; by the number
/// first.
#[apply(backends)]
#[tokio::test]
async fn the_holder_of_a_number_is_found_by_number_or_by_text(#[case] backend: Backend) {
    use numbering::invoices::store::NumberOf;

    let db = TestDb::create(backend).await;
    let store = db.invoice_store().await;
    import_invoice(&store, "acme", 5, "INV-005").await;
    import_invoice(&store, "acme", 6, "INV-006").await;
    let holder = |number, formatted| {
        let store = store.clone();
        async move {
            let asked = NumberOf {
                tenant: "acme",
                period: "",
                number,
                formatted,
            };
            let found = store.get_by_number(asked).await.unwrap();
            found.map(|invoice| (invoice.number, invoice.invoice_number))
        }
    };
    assert_eq!(holder(5, "X-5").await, Some((5, "INV-005".to_owned())));
    assert_eq!(holder(9, "INV-006").await, Some((6, "INV-006".to_owned())));
    // Both taken, by two invoices: the number's own holder, not the one
    // that holds only its text (and comes first in number order).
    assert_eq!(holder(6, "INV-005").await, Some((6, "INV-006".to_owned())));
    assert_eq!(holder(9, "X-9").await, None);
    let other_tenant = NumberOf {
        tenant: "globex",
        period: "",
        number: 5,
        formatted: "INV-005",
    };
    assert!(store.get_by_number(other_tenant).await.unwrap().is_none());
}

/// Twenty calls note one reservation at once (repeats of one call), so that
/// most of the notes share a group: each call is among those that noted it,
/// and each may store its invoice under the note.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_of_one_reservation_made_together_each_keep_their_call(#[case] backend: Backend) {
    use numbering::invoices::store::{Note, Pending};

    let db = TestDb::create(backend).await;
    let store = db.invoice_store().await;
    let invoices: Vec<_> = (1..=20)
        .map(|number| acme_invoice(number, &format!("INV-{number:03}")))
        .collect();
    let since = chrono::Utc::now();
    let notes: Vec<_> = invoices
        .iter()
        .map(|invoice| {
            let store = store.clone();
            let pending = Pending {
                tenant_id: "acme".into(),
                request_key: "key-1".into(),
                issue_date: String::new(),
                since,
                invoice_id: invoice.id.to_string(),
                noted_by: invoice.id.to_string(),
            };
            tokio::spawn(async move {
                let note = Note::Pending {
                    pending: &pending,
                    request_id: None,
                };
                store.note(note).await
            })
        })
        .collect();
    for note in notes {
        note.await.unwrap().unwrap();
    }
    for invoice in &invoices {
        let stored = store.insert(invoice, None, Some("key-1")).await;
        assert!(stored.is_ok(), "{}: {stored:?}", invoice.number);
    }
}

/// Writes that arrive together are committed together, and each keeps its
/// own outcome: an invoice whose number, formatted number or request id is
/// taken, whose note is taken over or another call's, or that the table
/// refuses, fails alone and keeps its pending note; the others are stored, and their notes stay
/// until their numbers are settled; two invoices with one number store one.
#[apply(backends)]
#[tokio::test]
async fn writes_made_together_keep_each_their_own_outcome(#[case] backend: Backend) {
    use numbering::{
        invoices::store::{Note, Pending, StoreError},
        request_id::RequestId,
    };

    let db = TestDb::create(backend).await;
    let store = db.invoice_store().await;
    import_invoice(&store, "acme", 5, "INV-005").await;
    let numbered = |number: i64, formatted: String| acme_invoice(number, &formatted);
    let used = RequestId::parse("used-request-id").unwrap().unwrap();
    store
        .insert(&numbered(6, "INV-006".into()), Some(&used), None)
        .await
        .unwrap();

    // (invoice, request id, expected outcome): 20 fresh ones, then one whose
    // number is taken, one whose text is, one whose request id is, two with
    // one new number, and one the table refuses.
    let mut writes: Vec<_> = (10..30)
        .map(|number| (numbered(number, format!("INV-{number:03}")), None, Ok(())))
        .collect();
    writes.push((numbered(5, "X-5".into()), None, Err("number")));
    writes.push((numbered(7, "INV-005".into()), None, Err("number")));
    writes.push((
        numbered(8, "INV-008".into()),
        Some(used.clone()),
        Err("request id"),
    ));
    writes.push((numbered(40, "INV-040".into()), None, Ok(())));
    writes.push((numbered(40, "INV-040".into()), None, Err("number")));
    // A row the table refuses fails its whole group's statement: the
    // group's other writes are made all the same.
    writes.push((numbered(0, "INV-000".into()), None, Err("refused")));
    // One whose note reconciliation took over, one whose note another call
    // made: not stored. One whose call noted it again after another (a
    // repeat of the call, which reserved the same number): stored.
    writes.push((numbered(50, "INV-050".into()), None, Err("taken over")));
    writes.push((numbered(51, "INV-051".into()), None, Err("taken over")));
    writes.push((numbered(52, "INV-052".into()), None, Ok(())));
    let since = chrono::Utc::now();
    let key = |index: usize| format!("key-{index}");
    for (index, (invoice, ..)) in writes.iter().enumerate() {
        let mut pending = Pending {
            tenant_id: "acme".into(),
            request_key: key(index),
            issue_date: String::new(),
            since,
            invoice_id: invoice.id.to_string(),
            noted_by: invoice.id.to_string(),
        };
        if matches!(invoice.number, 51 | 52) {
            let another = Pending {
                invoice_id: uuid::Uuid::now_v7().to_string(),
                ..pending.clone()
            };
            let note = Note::Pending {
                pending: &another,
                request_id: None,
            };
            store.note(note).await.unwrap();
        }
        if invoice.number == 51 {
            pending.invoice_id = uuid::Uuid::now_v7().to_string();
        }
        let note = Note::Pending {
            pending: &pending,
            request_id: None,
        };
        store.note(note).await.unwrap();
        if invoice.number == 50 {
            assert!(store.take_over(&pending).await.unwrap());
        }
        if invoice.number == 51 {
            // Taken over only as read: it names another invoice now.
            let as_read = Pending {
                invoice_id: invoice.id.to_string(),
                ..pending
            };
            assert!(!store.take_over(&as_read).await.unwrap());
        }
    }

    // All at once, so that they queue while a group commits.
    let calls: Vec<_> = writes
        .iter()
        .enumerate()
        .map(|(index, (invoice, request_id, _))| {
            let (store, invoice, request_id) = (store.clone(), invoice.clone(), request_id.clone());
            let note = key(index);
            tokio::spawn(async move {
                store
                    .insert(&invoice, request_id.as_ref(), Some(&note))
                    .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    for ((invoice, _, expected), answer) in writes.iter().zip(&answers) {
        let as_expected = matches!(
            (expected, answer),
            (Ok(()), Ok(()))
                | (Err("number"), Err(StoreError::NumberTaken))
                | (Err("request id"), Err(StoreError::RequestIdTaken))
                | (Err("refused"), Err(StoreError::Internal(_)))
                | (Err("taken over"), Err(StoreError::NoteTakenOver))
        );
        assert!(
            as_expected,
            "{} ({}): expected {expected:?}, got {answer:?}",
            invoice.number, invoice.invoice_number
        );
    }

    let stored = list_stored(&store).await;
    let expected: Vec<i64> = [5, 6].into_iter().chain(10..30).chain([40, 52]).collect();
    assert_eq!(stored, expected);
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let mut left: Vec<String> = store
        .pending_before(later, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|pending| pending.request_key)
        .collect();
    left.sort();
    let mut noted: Vec<String> = (0..writes.len()).map(key).collect();
    noted.sort();
    assert_eq!(
        left, noted,
        "a note lasts until its number is settled, not stored"
    );
    // Stored with a note, an invoice is settled by its note; the two stored
    // without one are left for reconciliation.
    let unsettled: Vec<i64> = store
        .unsettled(None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|invoice| invoice.number)
        .collect();
    assert_eq!(unsettled, [5, 6]);
}

/// On PostgreSQL each connection plans a group's statements once, on the
/// tables as they are then: empty on a fresh database, then a few rows long
/// when first analyzed, where a scan beats an index. A group still looks
/// each of its keys up by index, the request ids of its notes in `invoices`
/// and the notes it deletes in `pending_numbers`, and reads neither table
/// whole, which it would go on doing as the tables grew.
#[tokio::test]
async fn a_groups_keys_are_looked_up_by_index_in_tables_planned_small() {
    use numbering::{
        db::PoolSettings,
        invoices::store::{Note, Pending, StoreError},
        request_id::RequestId,
    };

    let db = TestDb::create(Backend::Postgres).await;
    let store = db.invoice_store().await;
    // Counted from the first group on, not during the migrations. One
    // session, so that the store's are told apart from it.
    let settings = PoolSettings {
        max_connections: 1,
        ..test_pool_settings()
    };
    let pool = db.pool(&settings).await;
    sqlx::query(
        "SELECT pg_stat_reset_single_table_counters('invoices'::regclass),
                pg_stat_reset_single_table_counters('pending_numbers'::regclass)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let pending = |number: i64, invoice: &numbering::invoices::domain::Invoice| Pending {
        tenant_id: "acme".into(),
        request_key: format!("key-{number}"),
        issue_date: String::new(),
        since: chrono::Utc::now(),
        invoice_id: invoice.id.to_string(),
        noted_by: invoice.id.to_string(),
    };
    let request_id = |number: i64| RequestId::parse(&format!("request-{number}")).unwrap();

    // What a call makes, many at once, so that groups hold several keys.
    let calls = |numbers: std::ops::RangeInclusive<i64>| {
        numbers.map(|number| {
            let store = store.clone();
            tokio::spawn(async move {
                let invoice = acme_invoice(number, &format!("INV-{number:03}"));
                let (note, id) = (pending(number, &invoice), request_id(number));
                let noted = Note::Pending {
                    pending: &note,
                    request_id: id.as_ref(),
                };
                store.note(noted).await.unwrap();
                store
                    .insert(&invoice, id.as_ref(), Some(&note.request_key))
                    .await
                    .unwrap();
                let done = Note::Done {
                    tenant: "acme",
                    request_key: &note.request_key,
                };
                store.note(done).await.unwrap();
            })
        })
    };
    for call in calls(1..=20).collect::<Vec<_>>() {
        call.await.unwrap();
    }
    // Each statement is planned again on statistics of tables a few rows
    // long.
    sqlx::query("ANALYZE invoices, pending_numbers")
        .execute(&pool)
        .await
        .unwrap();
    for call in calls(21..=40).collect::<Vec<_>>() {
        call.await.unwrap();
    }
    // A note whose request id created an invoice is refused: that lookup
    // finds its row.
    let (repeat, id) = (pending(7, &acme_invoice(7, "INV-007")), request_id(7));
    let noted = Note::Pending {
        pending: &repeat,
        request_id: id.as_ref(),
    };
    assert!(matches!(
        store.note(noted).await,
        Err(StoreError::RequestIdTaken)
    ));

    // Closed, the store's sessions end and report what they read.
    store.close().await;
    let [notes_read, invoices_read] = reads_reported(&pool, ["pending_numbers", "invoices"]).await;
    assert_eq!(notes_read.0, 0, "pending_numbers read whole");
    assert_eq!(invoices_read.0, 0, "invoices read whole");
    // Every call made what it asked for.
    let stored: Vec<i64> = sqlx::query_scalar("SELECT number FROM invoices ORDER BY number")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored, (1..=40).collect::<Vec<_>>());
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_numbers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "every note done is deleted");
}

/// A call whose note reconciliation took over, settled and deleted, and a
/// repeat of the call then made afresh, cannot store its invoice under the
/// fresh note: the number it reserved under it was given back. The repeat
/// can.
#[apply(backends)]
#[tokio::test]
async fn a_note_made_afresh_after_a_take_over_is_not_the_first_call_s(#[case] backend: Backend) {
    use numbering::invoices::store::{Note, Pending, StoreError};

    let db = TestDb::create(backend).await;
    let store = db.invoice_store().await;
    let (slow, repeat) = (acme_invoice(1, "INV-001"), acme_invoice(1, "INV-001"));
    let noted = |invoice: &numbering::invoices::domain::Invoice| Pending {
        tenant_id: "acme".into(),
        request_key: "key-1".into(),
        issue_date: String::new(),
        since: chrono::Utc::now(),
        invoice_id: invoice.id.to_string(),
        noted_by: invoice.id.to_string(),
    };
    let first = noted(&slow);
    let note = Note::Pending {
        pending: &first,
        request_id: None,
    };
    store.note(note).await.unwrap();
    assert!(store.take_over(&first).await.unwrap());
    let done = Note::Done {
        tenant: "acme",
        request_key: "key-1",
    };
    store.note(done).await.unwrap();
    let afresh = noted(&repeat);
    let note = Note::Pending {
        pending: &afresh,
        request_id: None,
    };
    store.note(note).await.unwrap();

    let late = store.insert(&slow, None, Some("key-1")).await;
    assert!(matches!(late, Err(StoreError::NoteTakenOver)), "{late:?}");
    store.insert(&repeat, None, Some("key-1")).await.unwrap();
    let tenant = TenantId::parse("acme").unwrap();
    assert!(store.get(&tenant, slow.id).await.unwrap().is_none());
}

/// A call that withdraws its note (its reservation refused, say) after a
/// repeat of it under the same request id noted the same reservation leaves
/// the note to the repeat, which stores its invoice under it. Withdrawn by
/// the only call that noted it, or by each, the note goes.
#[apply(backends)]
#[tokio::test]
async fn a_withdrawn_note_stays_for_a_repeat_that_noted_it_too(#[case] backend: Backend) {
    use numbering::invoices::store::{Note, Pending, StoreError};

    let db = TestDb::create(backend).await;
    let store = db.invoice_store().await;
    let noted = |invoice: &numbering::invoices::domain::Invoice, key: &str| Pending {
        tenant_id: "acme".into(),
        request_key: key.into(),
        issue_date: String::new(),
        since: chrono::Utc::now(),
        invoice_id: invoice.id.to_string(),
        noted_by: invoice.id.to_string(),
    };
    let note = |pending: &Pending| {
        let store = store.clone();
        let pending = pending.clone();
        async move {
            let note = Note::Pending {
                pending: &pending,
                request_id: None,
            };
            store.note(note).await.unwrap();
        }
    };

    let (refused, repeat) = (acme_invoice(1, "INV-001"), acme_invoice(1, "INV-001"));
    let refused_note = noted(&refused, "key-1");
    note(&refused_note).await;
    note(&noted(&repeat, "key-1")).await;
    let withdrawn = Note::Withdrawn {
        pending: &refused_note,
    };
    store.note(withdrawn).await.unwrap();
    store.insert(&repeat, None, Some("key-1")).await.unwrap();

    let alone = acme_invoice(2, "INV-002");
    let alone_note = noted(&alone, "key-2");
    note(&alone_note).await;
    let withdrawn = Note::Withdrawn {
        pending: &alone_note,
    };
    store.note(withdrawn).await.unwrap();
    let late = store.insert(&alone, None, Some("key-2")).await;
    assert!(matches!(late, Err(StoreError::NoteTakenOver)), "{late:?}");
    let tenant = TenantId::parse("acme").unwrap();
    assert!(store.get(&tenant, alone.id).await.unwrap().is_none());

    // Withdrawn by each call that noted it, the note goes.
    let (first, second) = (acme_invoice(3, "INV-003"), acme_invoice(3, "INV-003"));
    let (first_note, second_note) = (noted(&first, "key-3"), noted(&second, "key-3"));
    note(&first_note).await;
    note(&second_note).await;
    // At once: in one group, or one after the other.
    let (one, other) = tokio::join!(
        store.note(Note::Withdrawn {
            pending: &first_note
        }),
        store.note(Note::Withdrawn {
            pending: &second_note
        })
    );
    one.unwrap();
    other.unwrap();
    let late = store.insert(&second, None, Some("key-3")).await;
    assert!(matches!(late, Err(StoreError::NoteTakenOver)), "{late:?}");
    let later = chrono::Utc::now() + chrono::TimeDelta::minutes(1);
    let left = store.pending_before(later, None, 10).await.unwrap();
    let keys: Vec<_> = left.iter().map(|note| note.request_key.as_str()).collect();
    assert_eq!(
        keys,
        ["key-1"],
        "the repeat's note is left for it to settle"
    );
}

/// On PostgreSQL an insert holds its note until it commits, against a
/// take-over: one not committed yet (reconciliation's) makes the insert
/// wait, and once it commits the insert stores nothing. An insert that read
/// the note as it was would store its invoice under a number reconciliation
/// goes on to give back.
#[tokio::test]
async fn an_insert_waits_for_a_take_over_of_its_note_and_then_stores_nothing() {
    use numbering::invoices::store::{Note, Pending, StoreError};

    let db = TestDb::create(Backend::Postgres).await;
    let store = db.invoice_store().await;
    let pool = db.pool(&test_pool_settings()).await;
    let invoice = acme_invoice(1, "INV-001");
    let pending = Pending {
        tenant_id: "acme".into(),
        request_key: "key-1".into(),
        issue_date: String::new(),
        since: chrono::Utc::now(),
        invoice_id: invoice.id.to_string(),
        noted_by: invoice.id.to_string(),
    };
    let note = Note::Pending {
        pending: &pending,
        request_id: None,
    };
    store.note(note).await.unwrap();

    let mut taking_over = pool.begin().await.unwrap();
    sqlx::query(
        "UPDATE pending_numbers SET taken_over = TRUE
         WHERE tenant_id = 'acme' AND request_key = 'key-1'",
    )
    .execute(&mut *taking_over)
    .await
    .unwrap();
    let insert = tokio::spawn({
        let store = store.clone();
        async move { store.insert(&invoice, None, Some("key-1")).await }
    });
    let waiting = "SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    tokio::time::timeout(PATIENCE, async {
        loop {
            let waits: i64 = sqlx::query_scalar(waiting).fetch_one(&pool).await.unwrap();
            if waits > 0 || insert.is_finished() {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the insert waits, or is answered");
    assert!(
        !insert.is_finished(),
        "the insert went on past a take-over not committed: {:?}",
        insert.await.unwrap()
    );
    taking_over.commit().await.unwrap();
    let answer = insert.await.unwrap();
    assert!(
        matches!(answer, Err(StoreError::NoteTakenOver)),
        "{answer:?}"
    );
    assert!(list_stored(&store).await.is_empty());
}

/// The sequential and index scans of each table, once every other session
/// of the database has ended and reported its reads: waits until none is
/// left and each table shows an index scan.
async fn reads_reported<const N: usize>(pool: &sqlx::PgPool, tables: [&str; N]) -> [(i64, i64); N] {
    let others = "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()";
    tokio::time::timeout(PATIENCE, async {
        loop {
            let sessions: i64 = sqlx::query_scalar(others).fetch_one(pool).await.unwrap();
            let mut reads = [(0, 0); N];
            for (read, table) in reads.iter_mut().zip(tables) {
                *read = sqlx::query_as(
                    "SELECT seq_scan, idx_scan FROM pg_stat_user_tables WHERE relname = $1",
                )
                .bind(table)
                .fetch_one(pool)
                .await
                .unwrap();
            }
            if sessions == 0 && reads.iter().all(|(_, index)| *index > 0) {
                return reads;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the other sessions end and report their reads")
}

/// The numbers of every stored invoice of `acme`, in order.
async fn list_stored(store: &Arc<dyn numbering::invoices::store::InvoiceStore>) -> Vec<i64> {
    let tenant = TenantId::parse("acme").unwrap();
    store
        .list(&tenant, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|invoice| invoice.number)
        .collect()
}

/// A new invoice of `acme` dated today, with this number and text.
fn acme_invoice(number: i64, formatted: &str) -> numbering::invoices::domain::Invoice {
    let new = numbering::invoices::grpc::parse_new_invoice(&invoice_request("acme"))
        .unwrap()
        .0;
    let number = Numbered {
        value: number,
        formatted: formatted.into(),
        period: String::new(),
        date: chrono::Utc::now().date_naive(),
    };
    new.numbered(number, uuid::Uuid::now_v7(), chrono::Utc::now())
}
