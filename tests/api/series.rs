//! Series as configured resources: templates with date parts, a counter per
//! period picked by the document's date in the series' time zone, and
//! settings that never rewrite numbers already handed out.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Utc};
use numbering::{
    allocator::{CommitMode, app::RequestIdSettings, group_commit::GroupCommitSettings},
    db::Backend,
    invoices::{self, domain::Numbered, seed},
    proto::{
        AllocateRequest, AllocateResponse, ConfigureSeriesRequest, CreateInvoiceRequest,
        GetSeriesRequest, ListSeriesRequest, Reset, Series,
        number_allocator_client::NumberAllocatorClient,
    },
};
use rstest_reuse::apply;
use sqlx::Connection as _;
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

use crate::{
    backends,
    helpers::{
        AllocatorProxy, CapturedLogs, Fault, ManualClock, Method, TestDb, TestServer, WriterApp,
        advance, allocator_client, assert_exactly_one_to, assert_reason, invoice_request, keyed,
        list_all, list_in_pages, serve_allocator_on, spawn_writer,
    },
};

/// An allocator on a fresh database whose clock the test moves.
async fn allocator_at(
    backend: Backend,
    now: &str,
) -> (
    TestDb,
    TestServer,
    NumberAllocatorClient<Channel>,
    Arc<ManualClock>,
) {
    let db = TestDb::create(backend).await;
    let clock = ManualClock::at(at(now));
    let mode = CommitMode::Group(GroupCommitSettings::default());
    let (server, client) =
        serve_allocator_on(&db, mode, RequestIdSettings::default(), clock.clone()).await;
    (db, server, client, clock)
}

fn at(time: &str) -> DateTime<Utc> {
    time.parse().unwrap()
}

fn configure(tenant: &str, format: &str, reset: Reset, timezone: &str) -> ConfigureSeriesRequest {
    ConfigureSeriesRequest {
        tenant_id: tenant.into(),
        format: format.into(),
        reset: reset.into(),
        timezone: timezone.into(),
        ..ConfigureSeriesRequest::default()
    }
}

fn dated(tenant: &str, date: &str) -> AllocateRequest {
    AllocateRequest {
        tenant_id: tenant.into(),
        date: date.into(),
        ..AllocateRequest::default()
    }
}

async fn one(
    client: &mut NumberAllocatorClient<Channel>,
    request: AllocateRequest,
) -> (String, String) {
    let number = client
        .allocate(request)
        .await
        .unwrap()
        .into_inner()
        .numbers
        .remove(0);
    (number.formatted, number.period)
}

async fn get(client: &mut NumberAllocatorClient<Channel>, tenant: &str, date: &str) -> Series {
    client
        .get_series(GetSeriesRequest {
            tenant_id: tenant.into(),
            date: date.into(),
            ..GetSeriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .series
        .unwrap()
}

/// The field an INVALID_ARGUMENT names, and why.
fn violation(status: &Status) -> (String, String) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status.get_details_bad_request().expect("a BadRequest");
    let violation = bad
        .field_violations
        .into_iter()
        .next()
        .expect("a violation");
    (violation.field, violation.description)
}

/// INV-2026-0999 is followed, after midnight in Berlin, by INV-2027-0001;
/// for the hour in which Berlin and UTC disagree, the series' zone wins.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yearly_series_starts_again_at_midnight_in_its_zone(#[case] backend: Backend) {
    // 23:30 in Berlin on New Year's Eve.
    let (_db, _server, mut client, clock) = allocator_at(backend, "2026-12-31T22:30:00Z").await;
    for (tenant, zone) in [("berlin", "Europe/Berlin"), ("london", "UTC")] {
        let series = client
            .configure_series(configure(
                tenant,
                "INV-{year}-{number:04}",
                Reset::Yearly,
                zone,
            ))
            .await
            .unwrap()
            .into_inner()
            .series
            .unwrap();
        assert_eq!(series.current_period, "2026");
        assert_eq!(series.last_value, 0);
        let advanced = client
            .advance_counter(advance(tenant, 998, "numbers of the old system"))
            .await
            .unwrap();
        assert_eq!(advanced.into_inner().series.unwrap().current_period, "2026");
    }
    for tenant in ["berlin", "london"] {
        let number = one(&mut client, dated(tenant, "")).await;
        assert_eq!(number, ("INV-2026-0999".into(), "2026".into()));
    }

    // 00:30 in Berlin, 23:30 in UTC: only Berlin is in 2027.
    clock.set(at("2026-12-31T23:30:00Z"));
    assert_eq!(
        one(&mut client, dated("berlin", "")).await,
        ("INV-2027-0001".into(), "2027".into())
    );
    assert_eq!(
        one(&mut client, dated("london", "")).await,
        ("INV-2026-1000".into(), "2026".into())
    );
    // A UTC hour later both are.
    clock.set(at("2027-01-01T00:30:00Z"));
    assert_eq!(
        one(&mut client, dated("london", "")).await,
        ("INV-2027-0001".into(), "2027".into())
    );
    let berlin = get(&mut client, "berlin", "").await;
    assert_eq!(
        (berlin.current_period.as_str(), berlin.last_value),
        ("2027", 1)
    );
    let old_year = get(&mut client, "berlin", "2026-06-01").await;
    assert_eq!(
        (old_year.current_period.as_str(), old_year.last_value),
        ("2026", 999)
    );
}

/// Concurrent calls dated on both sides of a year boundary get numbers that
/// are unique and contiguous in each period.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_both_sides_of_the_boundary_are_contiguous_per_period(#[case] backend: Backend) {
    let (_db, _server, mut client, _clock) = allocator_at(backend, "2026-12-31T23:59:00Z").await;
    client
        .configure_series(configure(
            "acme",
            "INV-{year}-{number:04}",
            Reset::Yearly,
            "UTC",
        ))
        .await
        .unwrap();
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let mut client = client.clone();
            let date = if i % 2 == 0 {
                "2026-12-31"
            } else {
                "2027-01-01"
            };
            tokio::spawn(async move { client.allocate(dated("acme", date)).await })
        })
        .collect();
    let mut by_period: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for call in calls {
        let answer: AllocateResponse = call.await.unwrap().unwrap().into_inner();
        let number = &answer.numbers[0];
        let year = &number.period;
        assert_eq!(number.formatted, format!("INV-{year}-{:04}", number.value));
        by_period
            .entry(year.clone())
            .or_default()
            .push(number.value);
    }
    assert_eq!(by_period.keys().collect::<Vec<_>>(), ["2026", "2027"]);
    for values in by_period.values() {
        assert_exactly_one_to(values, 100);
    }
}

/// A backdated document takes its own period's next number, read with its
/// own date; monthly and daily series keep a counter per month and per day.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_take_the_period_of_their_date(#[case] backend: Backend) {
    let (_db, _server, mut client, _clock) = allocator_at(backend, "2027-03-01T12:00:00Z").await;
    client
        .configure_series(configure(
            "yearly",
            "RE/{yy}/{number:03}",
            Reset::Yearly,
            "",
        ))
        .await
        .unwrap();
    assert_eq!(one(&mut client, dated("yearly", "")).await.0, "RE/27/001");
    assert_eq!(
        one(&mut client, dated("yearly", "2026-06-30")).await.0,
        "RE/26/001"
    );
    assert_eq!(
        one(&mut client, dated("yearly", "2026-12-31")).await.0,
        "RE/26/002"
    );
    assert_eq!(
        one(&mut client, dated("yearly", "2027-02-01")).await.0,
        "RE/27/002"
    );

    client
        .configure_series(configure(
            "monthly",
            "{year}/{month}/{number}",
            Reset::Monthly,
            "",
        ))
        .await
        .unwrap();
    client
        .configure_series(configure(
            "daily",
            "{year}{month}{day}-{number}",
            Reset::Daily,
            "",
        ))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for (tenant, date) in [
        ("monthly", "2027-02-28"),
        ("monthly", "2027-03-01"),
        ("monthly", "2027-02-01"),
        ("monthly", ""),
        ("daily", "2027-02-28"),
        ("daily", ""),
        ("daily", "2027-03-01"),
        ("daily", "2027-03-02"),
    ] {
        seen.push(one(&mut client, dated(tenant, date)).await);
    }
    let seen: Vec<(&str, &str)> = seen.iter().map(|(f, p)| (f.as_str(), p.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("2027/02/1", "2027-02"),
            ("2027/03/1", "2027-03"),
            ("2027/02/2", "2027-02"),
            ("2027/03/2", "2027-03"),
            ("20270228-1", "2027-02-28"),
            ("20270301-1", "2027-03-01"),
            ("20270301-2", "2027-03-01"),
            ("20270302-1", "2027-03-02"),
        ]
    );
}

/// `start_at` is the first number of every period not yet begun; a series
/// that never resets takes it only before its first number.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_applies_to_periods_not_yet_begun(#[case] backend: Backend) {
    let (_db, _server, mut client, _clock) = allocator_at(backend, "2026-12-02T12:00:00Z").await;
    let start = |tenant: &str, start_at| ConfigureSeriesRequest {
        tenant_id: tenant.into(),
        start_at,
        ..ConfigureSeriesRequest::default()
    };
    let mut yearly = configure("acme", "{year}-{number}", Reset::Yearly, "");
    yearly.start_at = 100;
    let configured = client
        .configure_series(yearly)
        .await
        .unwrap()
        .into_inner()
        .series
        .unwrap();
    assert_eq!((configured.start_at, configured.last_value), (100, 99));
    assert_eq!(one(&mut client, dated("acme", "")).await.0, "2026-100");
    client.configure_series(start("acme", 500)).await.unwrap();
    assert_eq!(
        one(&mut client, dated("acme", "")).await.0,
        "2026-101",
        "a begun period kept going"
    );
    assert_eq!(
        one(&mut client, dated("acme", "2027-01-01")).await.0,
        "2027-500"
    );
    assert_eq!(
        one(&mut client, dated("acme", "2025-05-05")).await.0,
        "2025-500"
    );

    let never = client.configure_series(start("plain", 7)).await.unwrap();
    assert_eq!(
        never.into_inner().series.unwrap().reset,
        i32::from(Reset::Never)
    );
    assert_eq!(one(&mut client, dated("plain", "")).await.0, "INV-007");
    let refused = client
        .configure_series(start("plain", 1000))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_reason(&refused, "SERIES_IN_USE");
    assert_eq!(
        refused.message(),
        "start_at of series \"invoice\" cannot change: the series has handed out (or skipped) \
         numbers"
    );
    let info = refused.get_details_error_info().unwrap();
    assert_eq!(info.metadata["field"], "start_at");
    assert_eq!(one(&mut client, dated("plain", "")).await.0, "INV-008");
}

/// Every refused setting and date answers INVALID_ARGUMENT naming its field,
/// or FAILED_PRECONDITION SERIES_IN_USE, and changes nothing.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_and_dates_are_refused_and_change_nothing(#[case] backend: Backend) {
    let (_db, _server, mut client, _clock) = allocator_at(backend, "2026-12-15T12:00:00Z").await;
    for (format, reset, why) in [
        ("INV-{number}", Reset::Yearly, "{year} or {yy}"),
        ("INV-{year}-{number}", Reset::Monthly, "{month}"),
        ("{yy}{month}-{number}", Reset::Daily, "{day}"),
        ("INV-{num}", Reset::Never, "not a placeholder"),
        ("INV-{number}-{number}", Reset::Never, "exactly one"),
        ("INV-{year}", Reset::Never, "exactly one"),
        ("{number:019}", Reset::Never, "not a placeholder"),
        ("INV-{number", Reset::Never, "never closed"),
    ] {
        let status = client
            .configure_series(configure("acme", format, reset, ""))
            .await
            .unwrap_err();
        let (field, description) = violation(&status);
        assert_eq!(field, "format", "{format}");
        assert!(description.contains(why), "{format}: {description}");
    }
    let too_long = format!("{}{{number}}", "x".repeat(57));
    let status = client
        .configure_series(configure("acme", &too_long, Reset::Never, ""))
        .await
        .unwrap_err();
    assert_eq!(violation(&status).0, "format");
    let status = client
        .configure_series(configure("acme", "", Reset::Never, "Europe/Springfield"))
        .await
        .unwrap_err();
    assert_eq!(violation(&status).0, "timezone");
    for start_at in [-1, 1_000_000_000_000_000_001, i64::MAX] {
        let mut out_of_range = configure("acme", "", Reset::Never, "");
        out_of_range.start_at = start_at;
        let status = client.configure_series(out_of_range).await.unwrap_err();
        assert_eq!(violation(&status).0, "start_at", "{start_at}");
    }
    // A yearly reset with the default template, which shows no year.
    let status = client
        .configure_series(configure("acme", "", Reset::Yearly, ""))
        .await
        .unwrap_err();
    assert_eq!(violation(&status).0, "format");
    let status = client
        .get_series(GetSeriesRequest {
            tenant_id: "acme".into(),
            ..GetSeriesRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::NotFound,
        "a refused configuration created the series"
    );

    client
        .configure_series(configure(
            "acme",
            "INV-{year}-{month}-{number}",
            Reset::Monthly,
            "",
        ))
        .await
        .unwrap();
    for (date, why) in [
        ("2026-13-01", "not a day of the calendar"),
        ("15.12.2026", "YYYY-MM-DD"),
        // The end of the month after this one is the latest.
        ("2027-02-01", "2027-01-31"),
        // A hundred years back would read as this century's.
        ("1926-12-15", "1928-01-01"),
    ] {
        let status = client.allocate(dated("acme", date)).await.unwrap_err();
        let (field, description) = violation(&status);
        assert_eq!(field, "date", "{date}");
        assert!(description.contains(why), "{date}: {description}");
    }
    assert_eq!(
        one(&mut client, dated("acme", "2027-01-31")).await.0,
        "INV-2027-01-1"
    );
    // A period that far back may still be raised (seeding an old system's
    // numbers), though no number of it is handed out.
    let raised = client
        .advance_counter(numbering::proto::AdvanceCounterRequest {
            date: "1926-12-15".into(),
            ..advance("acme", 7, "numbers of the old system")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raised.series.unwrap().last_value, 7);

    // The series has handed out a number: its calendar is fixed.
    for (change, field) in [
        (
            configure("acme", "INV-{year}-{number}", Reset::Yearly, ""),
            "reset",
        ),
        (
            configure("acme", "", Reset::Unspecified, "Europe/Berlin"),
            "timezone",
        ),
    ] {
        let status = client.configure_series(change).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_reason(&status, "SERIES_IN_USE");
        assert_eq!(
            status.get_details_error_info().unwrap().metadata["field"],
            field
        );
    }
    let series = get(&mut client, "acme", "2027-01-05").await;
    assert_eq!(series.reset, i32::from(Reset::Monthly));
    assert_eq!(series.timezone, "UTC");
    assert_eq!(series.format, "INV-{year}-{month}-{number}");
    assert_eq!(
        (series.current_period.as_str(), series.last_value),
        ("2027-01", 1)
    );
    // Setting what it already has is no change.
    client
        .configure_series(configure("acme", "", Reset::Monthly, "UTC"))
        .await
        .unwrap();
}

/// A new template applies to numbers handed out after it; numbers handed
/// out before keep their text, in a replay and in the ledger.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_format_never_rewrites_numbers_handed_out(#[case] backend: Backend) {
    let (db, _server, mut client, _clock) = allocator_at(backend, "2026-12-02T12:00:00Z").await;
    let first = client
        .allocate(keyed("acme", "", 2, "first"))
        .await
        .unwrap()
        .into_inner();
    let texts = |answer: &AllocateResponse| -> Vec<String> {
        answer.numbers.iter().map(|n| n.formatted.clone()).collect()
    };
    assert_eq!(texts(&first), ["INV-001", "INV-002"]);
    let changed = client
        .configure_series(ConfigureSeriesRequest {
            tenant_id: "acme".into(),
            format: "NEW/{year}/{number:05}".into(),
            ..ConfigureSeriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .series
        .unwrap();
    assert_eq!(
        (changed.format.as_str(), changed.last_value),
        ("NEW/{year}/{number:05}", 2)
    );

    let replay = client
        .allocate(keyed("acme", "", 2, "first"))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(texts(&replay), ["INV-001", "INV-002"]);
    let next = client
        .allocate(keyed("acme", "", 1, "next"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(texts(&next), ["NEW/2026/00003"]);

    let ledger = db.ledger_texts().await;
    let ledger: Vec<_> = ledger
        .iter()
        .map(|(_, period, first, format, date)| {
            (period.as_str(), *first, format.as_str(), date.as_str())
        })
        .collect();
    assert_eq!(
        ledger,
        [
            ("", 1, "INV-{number:03}", "2026-12-02"),
            ("", 3, "NEW/{year}/{number:05}", "2026-12-02"),
        ]
    );
}

/// A series' reset changes only while it has handed out nothing: with
/// allocations racing the change, either it is refused or every number was
/// handed out under the new calendar. No counter of the old calendar is
/// left behind a series that now resets.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calendar_change_racing_allocations_never_splits_a_series(#[case] backend: Backend) {
    let (db, _server, client, _clock) = allocator_at(backend, "2026-12-02T12:00:00Z").await;
    let tenants: Vec<String> = (0..20).map(|i| format!("race-{i}")).collect();
    let mut tasks = Vec::new();
    for tenant in &tenants {
        for _ in 0..5 {
            let (mut client, tenant) = (client.clone(), tenant.clone());
            tasks.push(tokio::spawn(async move {
                client.allocate(dated(&tenant, "")).await.map(|_| ())
            }));
        }
        let (mut client, tenant) = (client.clone(), tenant.clone());
        tasks.push(tokio::spawn(async move {
            let change = configure(&tenant, "{year}-{number}", Reset::Yearly, "");
            match client.configure_series(change).await {
                Err(status) if status.code() == Code::FailedPrecondition => Ok(()),
                other => other.map(|_| ()),
            }
        }));
    }
    for task in tasks {
        task.await
            .unwrap()
            .expect("every call is answered, or refused as in use");
    }
    let mut client = client;
    for tenant in &tenants {
        let series = get(&mut client, tenant, "").await;
        let counters: Vec<_> = db
            .counters()
            .await
            .into_iter()
            .filter(|counter| &counter.0 == tenant)
            .map(|counter| (counter.2, counter.3))
            .collect();
        let period = if series.reset == i32::from(Reset::Yearly) {
            "2026"
        } else {
            ""
        };
        assert_eq!(counters, [(period.to_owned(), 5)], "{tenant}: {series:?}");
    }
}

/// ListSeries shows each series with its settings and today's period.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_series_show_their_settings_and_current_period(#[case] backend: Backend) {
    let (_db, _server, mut client, _clock) = allocator_at(backend, "2026-12-02T12:00:00Z").await;
    client
        .configure_series(ConfigureSeriesRequest {
            tenant_id: "acme".into(),
            series: "credit".into(),
            format: "CN-{yy}{month}-{number:03}".into(),
            reset: Reset::Monthly.into(),
            timezone: "Europe/Berlin".into(),
            start_at: 10,
            ..ConfigureSeriesRequest::default()
        })
        .await
        .unwrap();
    one(&mut client, dated("acme", "")).await;
    let listed = client
        .list_series(ListSeriesRequest {
            tenant_id: "acme".into(),
            ..ListSeriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .series;
    let shown: Vec<_> = listed
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.format.as_str(),
                s.reset,
                s.timezone.as_str(),
                s.start_at,
                s.current_period.as_str(),
                s.last_value,
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (
                "credit",
                "CN-{yy}{month}-{number:03}",
                i32::from(Reset::Monthly),
                "Europe/Berlin",
                10,
                "2026-12",
                9
            ),
            (
                "invoice",
                "INV-{number:03}",
                i32::from(Reset::Never),
                "UTC",
                1,
                "",
                1
            ),
        ]
    );
}

/// An allocation that began before a calendar change committed either sees
/// the change or is seen by it: here the series row is held changed, as a
/// `ConfigureSeries` transaction holds it, while the allocation waits; once
/// the change commits, the allocation takes its number under the new reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_waits_for_a_calendar_change_and_follows_it() {
    let (db, _server, mut client, _clock) =
        allocator_at(Backend::Postgres, "2026-12-02T12:00:00Z").await;
    // Known to the allocator as a series that never resets.
    client
        .configure_series(ConfigureSeriesRequest {
            tenant_id: "acme".into(),
            ..ConfigureSeriesRequest::default()
        })
        .await
        .unwrap();
    let mut configure = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut change = sqlx::Connection::begin(&mut configure).await.unwrap();
    sqlx::query("SELECT 1 FROM series WHERE tenant_id = 'acme' FOR UPDATE")
        .execute(&mut *change)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE series SET reset = 'yearly', format = '{year}-{number}' WHERE tenant_id = 'acme'",
    )
    .execute(&mut *change)
    .await
    .unwrap();
    let call = tokio::spawn({
        let mut client = client.clone();
        async move { one(&mut client, dated("acme", "")).await }
    });
    db.wait_until_blocked_on_a_lock().await;
    change.commit().await.unwrap();
    assert_eq!(call.await.unwrap(), ("2026-1".into(), "2026".into()));
    let counters: Vec<_> = db
        .counters()
        .await
        .into_iter()
        .map(|c| (c.2, c.3))
        .collect();
    assert_eq!(counters, [("2026".to_owned(), 1)]);
}

/// A stored invoice, as an import from another system writes it.
async fn import_dated(writer: &WriterApp, number: i64, formatted: &str, period: &str, date: &str) {
    let new = invoices::grpc::parse_new_invoice(&invoice_request("acme"))
        .unwrap()
        .0;
    let number = Numbered {
        value: number,
        formatted: formatted.into(),
        period: period.into(),
        date: date.parse().unwrap(),
    };
    let invoice = new.numbered(number, uuid::Uuid::now_v7(), Utc::now());
    writer.store.insert(&invoice, None, None).await.unwrap();
}

fn issued(date: &str, request_id: &str) -> CreateInvoiceRequest {
    CreateInvoiceRequest {
        issue_date: date.into(),
        request_id: request_id.into(),
        ..invoice_request("acme")
    }
}

/// The writer numbers each invoice from the period of its issue date, keeps
/// that date, and lists invoices period by period.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_of_two_years_take_numbers_from_two_periods(#[case] backend: Backend) {
    let (_db, allocator, mut client, _clock) = allocator_at(backend, "2026-12-02T23:30:00Z").await;
    client
        .configure_series(configure(
            "acme",
            "INV-{year}-{number:03}",
            Reset::Yearly,
            "Europe/Berlin",
        ))
        .await
        .unwrap();
    let mut writer = spawn_writer(backend, &allocator.url(), 3).await;
    let mut created = Vec::new();
    for (date, key) in [("2026-12-30", "a"), ("2027-01-02", "b"), ("", "c")] {
        let invoice = writer
            .client
            .create_invoice(issued(date, key))
            .await
            .unwrap();
        let invoice = invoice.into_inner().invoice.unwrap();
        created.push((invoice.invoice_number, invoice.number, invoice.issue_date));
    }
    // With no issue date, today in Berlin: already December 3rd.
    assert_eq!(
        created,
        [
            ("INV-2026-001".into(), 1, "2026-12-30".into()),
            ("INV-2027-001".into(), 1, "2027-01-02".into()),
            ("INV-2026-002".into(), 2, "2026-12-03".into()),
        ]
    );
    // A repeat without its issue date is the same call.
    let repeat = writer
        .client
        .create_invoice(issued("", "b"))
        .await
        .unwrap()
        .into_inner();
    assert!(repeat.replayed);
    assert_eq!(repeat.invoice.unwrap().invoice_number, "INV-2027-001");

    let listed = list_in_pages(&mut writer.client, "acme", 1).await;
    let listed: Vec<_> = listed.into_iter().map(|i| i.invoice_number).collect();
    assert_eq!(listed, ["INV-2026-001", "INV-2026-002", "INV-2027-001"]);

    for (date, why) in [("2028-01-01", "2027-12-31"), ("2026-02-30", "not a day")] {
        let status = writer
            .client
            .create_invoice(issued(date, ""))
            .await
            .unwrap_err();
        let (field, description) = violation(&status);
        assert_eq!(field, "issue_date", "{date}");
        assert!(description.contains(why), "{date}: {description}");
    }
    assert_eq!(list_all(&mut writer.client, "acme").await.len(), 3);
}

/// An allocator on 2026-12-02 whose acme series resets yearly, and a
/// writer (one attempt per invoice) on it.
async fn yearly_with_writer(
    backend: Backend,
) -> (
    TestDb,
    TestServer,
    NumberAllocatorClient<Channel>,
    WriterApp,
) {
    let (db, allocator, mut client, _clock) = allocator_at(backend, "2026-12-02T12:00:00Z").await;
    client
        .configure_series(configure(
            "acme",
            "INV-{year}-{number:03}",
            Reset::Yearly,
            "",
        ))
        .await
        .unwrap();
    let writer = spawn_writer(backend, &allocator.url(), 1).await;
    (db, allocator, client, writer)
}

/// seed-counters raises each period of a yearly series to the highest
/// number issued in it, by the invoices' issue dates.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_raises_each_period_from_the_issue_dates(#[case] backend: Backend) {
    let (_db, allocator, mut client, mut writer) = yearly_with_writer(backend).await;
    import_dated(&writer, 3, "INV-2025-003", "2025", "2025-03-01").await;
    import_dated(&writer, 7, "INV-2025-007", "2025", "2025-12-31").await;
    import_dated(&writer, 4, "INV-2026-004", "2026", "2026-01-05").await;

    let report = seed::seed_counters(writer.store.as_ref(), &allocator_client(&allocator.url()))
        .await
        .unwrap();
    assert_eq!(
        (report.tenants, report.failed, report.unconfigured),
        (1, 0, 0)
    );
    assert_eq!(get(&mut client, "acme", "2025-06-01").await.last_value, 7);
    assert_eq!(get(&mut client, "acme", "").await.last_value, 4);
    let next = writer.client.create_invoice(issued("", "")).await.unwrap();
    assert_eq!(
        next.into_inner().invoice.unwrap().invoice_number,
        "INV-2026-005"
    );
}

/// A period the allocator refuses does not stop seeding the periods after
/// it: each is tried, the tenant counted failed once, and the refused
/// period named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_goes_on_past_a_period_the_allocator_refuses() {
    let logs = CapturedLogs::default();
    let _subscriber = tracing::subscriber::set_default(logs.subscriber());
    let (_db, _allocator, mut client, writer) = yearly_with_writer(Backend::Postgres).await;
    import_dated(&writer, 2, "INV-2024-002", "2024", "2024-05-01").await;
    import_dated(&writer, 7, "INV-2025-007", "2025", "2025-12-31").await;
    import_dated(&writer, 4, "INV-2026-004", "2026", "2026-01-05").await;
    let proxy = AllocatorProxy::new(client.clone(), Fault::Gate(Method::AdvanceCounter));
    let (proxy_url, _serving) = proxy.serve().await;

    // Polled here, where the logs are captured.
    let through_proxy = allocator_client(&proxy_url);
    let seeding = seed::seed_counters(writer.store.as_ref(), &through_proxy);
    tokio::pin!(seeding);
    // The first period's call is refused, the others let through.
    let mut refused = false;
    let report = loop {
        tokio::select! {
            at_gate = proxy.at_gate() => if refused {
                at_gate.pass();
            } else {
                at_gate.refuse();
                refused = true;
            },
            report = &mut seeding => break report.unwrap(),
        }
    };
    assert_eq!((report.tenants, report.failed), (1, 1));
    assert_eq!(get(&mut client, "acme", "2024-06-01").await.last_value, 0);
    assert_eq!(get(&mut client, "acme", "2025-06-01").await.last_value, 7);
    assert_eq!(get(&mut client, "acme", "").await.last_value, 4);
    assert_eq!(report.unconfigured, 0);
    let errors = seeding_errors(&logs);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("period 2024"), "{errors:?}");
}

/// The errors seeding logged, in order.
fn seeding_errors(logs: &CapturedLogs) -> Vec<String> {
    logs.events()
        .into_iter()
        .filter(|event| event["fields"]["message"] == "could not seed counters")
        .map(|event| event["fields"]["error"].as_str().unwrap().to_owned())
        .collect()
}

/// A refusal that would be every period's (the writer's token denied)
/// stops the tenant at its first period, instead of asking once for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_a_tenant_stops_at_a_refusal_every_period_would_get() {
    let logs = CapturedLogs::default();
    let _subscriber = tracing::subscriber::set_default(logs.subscriber());
    let (_db, _allocator, mut client, writer) = yearly_with_writer(Backend::Postgres).await;
    import_dated(&writer, 2, "INV-2024-002", "2024", "2024-05-01").await;
    import_dated(&writer, 7, "INV-2025-007", "2025", "2025-12-31").await;
    let proxy = AllocatorProxy::new(client.clone(), Fault::Deny(Method::AdvanceCounter));
    let (proxy_url, _serving) = proxy.serve().await;

    let report = seed::seed_counters(writer.store.as_ref(), &allocator_client(&proxy_url))
        .await
        .unwrap();
    assert_eq!((report.tenants, report.failed), (1, 1));
    assert_eq!(proxy.lost(), 1, "one period asked for");
    let errors = seeding_errors(&logs);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("period 2024"), "{errors:?}");
    assert_eq!(get(&mut client, "acme", "2025-06-01").await.last_value, 0);
}

/// A series that never resets is seeded whatever its invoices' dates: one
/// dated further ahead than the allocator takes dates does not hold the
/// counter back (it names no period).
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_a_series_that_never_resets_takes_invoices_dated_far_ahead(
    #[case] backend: Backend,
) {
    let (_db, allocator, mut client, _clock) = allocator_at(backend, "2026-12-02T12:00:00Z").await;
    let writer = spawn_writer(backend, &allocator.url(), 1).await;
    import_dated(&writer, 9, "INV-009", "", "2026-11-01").await;
    import_dated(&writer, 10, "INV-010", "", "2028-02-01").await;

    let report = seed::seed_counters(writer.store.as_ref(), &allocator_client(&allocator.url()))
        .await
        .unwrap();
    // Nobody configured it: seeding did, as one that never resets.
    assert_eq!(
        (report.tenants, report.failed, report.unconfigured),
        (1, 0, 1)
    );
    assert_eq!(get(&mut client, "acme", "").await.last_value, 10);
}

/// A series that starts at 1000 still hands out every number up to 2⁶³−1,
/// and only then answers SERIES_EXHAUSTED.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_started_late_still_reaches_the_largest_number(#[case] backend: Backend) {
    let (_db, _server, mut client, _clock) = allocator_at(backend, "2026-12-02T12:00:00Z").await;
    client
        .configure_series(ConfigureSeriesRequest {
            tenant_id: "acme".into(),
            format: "{number}".into(),
            start_at: 1000,
            ..ConfigureSeriesRequest::default()
        })
        .await
        .unwrap();
    client
        .advance_counter(advance("acme", i64::MAX - 1, "near the end"))
        .await
        .unwrap();
    assert_eq!(
        one(&mut client, dated("acme", "")).await.0,
        i64::MAX.to_string()
    );
    let status = client.allocate(dated("acme", "")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_reason(&status, "SERIES_EXHAUSTED");
}

/// At the largest `start_at` (10¹⁸) a period not yet begun, backdated
/// days included, starts at it with room for the most numbers one call
/// asks for: never refused as exhausted.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_at_the_largest_start_at_begins_every_period(#[case] backend: Backend) {
    let (_db, _server, mut client, _clock) = allocator_at(backend, "2026-12-02T12:00:00Z").await;
    let start_at = 1_000_000_000_000_000_000;
    let mut daily = configure("acme", "{year}{month}{day}-{number}", Reset::Daily, "");
    daily.start_at = start_at;
    client.configure_series(daily).await.unwrap();
    for date in ["2026-12-02", "1999-01-01", "1928-01-01"] {
        let numbers = client
            .allocate(AllocateRequest {
                count: 1000,
                ..dated("acme", date)
            })
            .await
            .unwrap()
            .into_inner()
            .numbers;
        let values: Vec<i64> = numbers.iter().map(|n| n.value).collect();
        let expected: Vec<i64> = (start_at..start_at + 1000).collect();
        assert_eq!(values, expected, "{date}");
    }
}

/// A format stored by an earlier release, under the text rules of its day,
/// is read as it stands: a template holding a character refused since (a
/// Hangul filler, which shows as nothing) still numbers its series, and the
/// series can still be configured anew, while the same template given now
/// is refused.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_stored_under_earlier_rules_still_numbers(#[case] backend: Backend) {
    let (db, server, mut client, clock) = allocator_at(backend, "2026-12-07T12:00:00Z").await;
    client
        .configure_series(configure("acme", "OLD-{number}", Reset::Never, ""))
        .await
        .unwrap();
    let refused = client
        .configure_series(configure("acme", "OLD\u{3164}-{number}", Reset::Never, ""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    drop(server);
    db.execute("UPDATE series SET format = 'OLD\u{3164}-{number}' WHERE tenant_id = 'acme'")
        .await;

    let mode = CommitMode::Group(GroupCommitSettings::default());
    let (_server, mut client) =
        serve_allocator_on(&db, mode, RequestIdSettings::default(), clock).await;
    assert_eq!(one(&mut client, dated("acme", "")).await.0, "OLD\u{3164}-1");
    let series = client
        .get_series(GetSeriesRequest {
            tenant_id: "acme".into(),
            ..GetSeriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .series
        .unwrap();
    assert_eq!(series.format, "OLD\u{3164}-{number}");
    client
        .configure_series(configure("acme", "NEW-{number}", Reset::Never, ""))
        .await
        .unwrap();
    assert_eq!(one(&mut client, dated("acme", "")).await.0, "NEW-2");
}
