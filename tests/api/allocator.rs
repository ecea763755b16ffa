//! NumberAllocator behaviour.

use numbering::db::Backend;
use rstest_reuse::apply;

use crate::backends;

use chrono::Utc;
use numbering::{
    allocator::{
        CommitMode,
        group_commit::GroupCommitSettings,
        postgres::PgCounterStore,
        series::{GapPolicy, NumberFormat, SeriesConfig, SeriesName},
        store::{Call, CounterStore, Grant, Outcome, Stamp, StoreError},
    },
    db::{NotReady, begin_durable},
    proto::{
        AdvanceCounterRequest, AllocateRequest, ConfigureSeriesRequest, GetSeriesRequest,
        ListSeriesRequest,
    },
    tenant::TenantId,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{
    CapturedLogs, TestDb, allocate, allocate_concurrently, assert_exactly_one_to,
    assert_invalid_field, assert_reason, keyed, spawn_allocator, spawn_allocator_in,
    spawn_allocator_with, test_pool_settings, wait_for_health,
};

/// 500 concurrent first calls of a brand-new tenant get exactly 1..=500.
async fn new_tenant_is_unique_and_contiguous(backend: Backend, mode: CommitMode) {
    let app = spawn_allocator_in(backend, mode).await;
    let calls = (0..500).map(|_| allocate("new-tenant", "", 0)).collect();
    let numbers: Vec<i64> = allocate_concurrently(&app.client, calls).await.concat();
    assert_exactly_one_to(&numbers, 500);
}

/// 500 concurrent calls on a series already in use continue it without gaps or duplicates.
async fn existing_tenant_is_unique_and_contiguous(backend: Backend, mode: CommitMode) {
    let mut app = spawn_allocator_in(backend, mode).await;
    let first = app
        .client
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.numbers[0].value, 1);

    let calls = (0..500).map(|_| allocate("acme", "", 1)).collect();
    let mut numbers: Vec<i64> = allocate_concurrently(&app.client, calls).await.concat();
    numbers.push(1);
    assert_exactly_one_to(&numbers, 501);
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocations_for_a_new_tenant_are_unique_and_contiguous(
    #[case] backend: Backend,
) {
    new_tenant_is_unique_and_contiguous(backend, CommitMode::Group(GroupCommitSettings::default()))
        .await;
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocations_for_a_new_tenant_are_unique_and_contiguous_per_call(
    #[case] backend: Backend,
) {
    new_tenant_is_unique_and_contiguous(backend, CommitMode::PerCall).await;
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocations_for_an_existing_tenant_are_unique_and_contiguous(
    #[case] backend: Backend,
) {
    existing_tenant_is_unique_and_contiguous(
        backend,
        CommitMode::Group(GroupCommitSettings::default()),
    )
    .await;
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocations_for_an_existing_tenant_are_unique_and_contiguous_per_call(
    #[case] backend: Backend,
) {
    existing_tenant_is_unique_and_contiguous(backend, CommitMode::PerCall).await;
}

/// Concurrent calls over several tenants and series give each (tenant, series) its own 1..=n.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_series_are_independent(#[case] backend: Backend) {
    let app = spawn_allocator(backend).await;
    let keys = [
        ("t1", "invoice"),
        ("t1", "credit-note"),
        ("t2", "invoice"),
        ("t3", ""),
    ];
    let calls: Vec<_> = (0..400).map(|i| keys[i % keys.len()]).collect();
    let results = allocate_concurrently(
        &app.client,
        calls.iter().map(|(t, s)| allocate(t, s, 1)).collect(),
    )
    .await;
    for key in keys {
        let numbers: Vec<i64> = calls
            .iter()
            .zip(&results)
            .filter(|(call, _)| **call == key)
            .flat_map(|(_, numbers)| numbers.clone())
            .collect();
        assert_exactly_one_to(&numbers, 100);
    }
}

/// Calls with count > 1 get consecutive ranges that never overlap and leave no hole.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_consecutive_and_disjoint(#[case] backend: Backend) {
    let app = spawn_allocator(backend).await;
    let counts: Vec<u32> = (0..200).map(|i| 1 + (i * 7) % 10).collect();
    let total: u32 = counts.iter().sum();
    let results = allocate_concurrently(
        &app.client,
        counts.iter().map(|c| allocate("acme", "", *c)).collect(),
    )
    .await;
    for (range, count) in results.iter().zip(&counts) {
        assert_eq!(range.len(), *count as usize);
        assert!(
            range.windows(2).all(|w| w[1] == w[0] + 1),
            "not consecutive: {range:?}"
        );
    }
    assert_exactly_one_to(&results.concat(), i64::from(total));
}

/// Numbers are formatted with the series template, the width being a minimum.
#[apply(backends)]
#[tokio::test]
async fn numbers_are_formatted_past_the_minimum_width(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    app.client
        .advance_counter(AdvanceCounterRequest {
            tenant_id: "acme".into(),
            series: String::new(),
            at_least: 998,
            reason: "near the end".into(),
            ..AdvanceCounterRequest::default()
        })
        .await
        .unwrap();
    let response = app
        .client
        .allocate(allocate("acme", "", 3))
        .await
        .unwrap()
        .into_inner();
    let formatted: Vec<_> = response
        .numbers
        .iter()
        .map(|n| n.formatted.as_str())
        .collect();
    assert_eq!(formatted, ["INV-999", "INV-1000", "INV-1001"]);
}

/// The server's default template is a setting; a series keeps the template it was created with.
#[apply(backends)]
#[tokio::test]
async fn the_default_template_is_a_setting(#[case] backend: Backend) {
    let format: NumberFormat = "CN-{number:05}".parse().unwrap();
    let mut app = spawn_allocator_with(backend, format).await;
    let response = app
        .client
        .allocate(allocate("acme", "credit", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.numbers[0].formatted, "CN-00001");
    let series = app
        .client
        .get_series(GetSeriesRequest {
            tenant_id: "acme".into(),
            series: "credit".into(),
            ..GetSeriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .series
        .unwrap();
    assert_eq!(series.format, "CN-{number:05}");
}

/// GetSeries answers NOT_FOUND for a series never used, and the last value handed out after use.
#[apply(backends)]
#[tokio::test]
async fn get_series_reports_the_last_value(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    let request = GetSeriesRequest {
        tenant_id: "acme".into(),
        series: String::new(),
        ..GetSeriesRequest::default()
    };
    let status = app.client.get_series(request.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_reason(&status, "SERIES_NOT_FOUND");

    app.client.allocate(allocate("acme", "", 5)).await.unwrap();
    let series = app
        .client
        .get_series(request)
        .await
        .unwrap()
        .into_inner()
        .series
        .unwrap();
    assert_eq!(
        (
            series.tenant_id.as_str(),
            series.name.as_str(),
            series.last_value
        ),
        ("acme", "invoice", 5)
    );
    assert_eq!(series.format, "INV-{number:03}");
}

/// AdvanceCounter raises the counter, never lowers it, and allocation continues above it.
#[apply(backends)]
#[tokio::test]
async fn advance_counter_raises_but_never_lowers(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    let advance = |at_least| AdvanceCounterRequest {
        tenant_id: "acme".into(),
        series: String::new(),
        at_least,
        reason: "seeded".into(),
        ..AdvanceCounterRequest::default()
    };
    let raised = app
        .client
        .advance_counter(advance(41))
        .await
        .unwrap()
        .into_inner()
        .series
        .unwrap();
    assert_eq!(raised.last_value, 41);
    let kept = app
        .client
        .advance_counter(advance(7))
        .await
        .unwrap()
        .into_inner()
        .series
        .unwrap();
    assert_eq!(kept.last_value, 41);
    let next = app
        .client
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.numbers[0].value, 42);
}

/// ListSeries pages through a tenant's series in name order and shows no other tenant's.
#[apply(backends)]
#[tokio::test]
async fn list_series_pages_in_name_order(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    for series in ["delta", "alpha", "charlie", "bravo", "echo"] {
        app.client
            .allocate(allocate("acme", series, 1))
            .await
            .unwrap();
    }
    app.client
        .allocate(allocate("other", "aardvark", 1))
        .await
        .unwrap();

    let mut names = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .client
            .list_series(ListSeriesRequest {
                tenant_id: "acme".into(),
                page_size: 2,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.series.len() <= 2);
        names.extend(page.series.into_iter().map(|s| s.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(names, ["alpha", "bravo", "charlie", "delta", "echo"]);
    assert_eq!(pages, 3);
}

/// Each bad field answers INVALID_ARGUMENT naming it, and changes nothing.
#[apply(backends)]
#[tokio::test]
async fn bad_input_is_rejected_by_field_and_changes_nothing(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    let long_tenant = "t".repeat(129);
    let long_series = "s".repeat(65);
    let cases = [
        (allocate("", "", 1), "tenant_id"),
        (allocate("acme corp", "", 1), "tenant_id"),
        (allocate(&long_tenant, "", 1), "tenant_id"),
        (allocate("acme", "Invoice", 1), "series"),
        (allocate("acme", &long_series, 1), "series"),
        (allocate("acme", "", 1001), "count"),
        (
            AllocateRequest {
                request_id: "r".repeat(129),
                ..allocate("acme", "", 1)
            },
            "request_id",
        ),
        (
            AllocateRequest {
                request_id: "retry #2".into(),
                ..allocate("acme", "", 1)
            },
            "request_id",
        ),
    ];
    for (request, field) in cases {
        let status = app.client.allocate(request).await.unwrap_err();
        assert_invalid_field(&status, field);
    }
    let status = app
        .client
        .advance_counter(AdvanceCounterRequest {
            tenant_id: "acme".into(),
            series: String::new(),
            at_least: -1,
            reason: String::new(),
            ..AdvanceCounterRequest::default()
        })
        .await
        .unwrap_err();
    assert_invalid_field(&status, "at_least");
    // A range skipped says why: a reason is needed even for no range.
    assert_invalid_field(&status, "reason");
    for reason in ["", " \n"] {
        let status = app
            .client
            .advance_counter(AdvanceCounterRequest {
                tenant_id: "acme".into(),
                at_least: 5,
                reason: reason.into(),
                ..AdvanceCounterRequest::default()
            })
            .await
            .unwrap_err();
        assert_invalid_field(&status, "reason");
    }
    let status = app
        .client
        .list_series(ListSeriesRequest {
            tenant_id: "acme".into(),
            page_size: -1,
            page_token: "junk".into(),
        })
        .await
        .unwrap_err();
    assert_invalid_field(&status, "page_size");
    assert_invalid_field(&status, "page_token");
    // A token of this form with a key no series has: refused, not sent to
    // the database.
    for key in ["\0", "Bad Name", &"x".repeat(65)] {
        let status = app
            .client
            .list_series(ListSeriesRequest {
                tenant_id: "acme".into(),
                page_size: 10,
                page_token: numbering::server::pagination::Listing::of("ListSeries", &["acme"])
                    .token(key),
            })
            .await
            .unwrap_err();
        assert_invalid_field(&status, "page_token");
    }
    let status = app
        .client
        .get_series(GetSeriesRequest {
            tenant_id: "a/b".into(),
            series: String::new(),
            ..GetSeriesRequest::default()
        })
        .await
        .unwrap_err();
    assert_invalid_field(&status, "tenant_id");

    let listed = app
        .client
        .list_series(ListSeriesRequest {
            tenant_id: "acme".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.series.is_empty(),
        "a rejected call created {:?}",
        listed.series
    );

    // The rule is not stricter than it says: a UUID is a request id.
    let keyed = AllocateRequest {
        request_id: "0190b2c4-7d1e-7c3a-9f00-1234567890ab".into(),
        ..allocate("acme", "", 1)
    };
    app.client.allocate(keyed).await.expect("a UUID request id");
}

/// A counter at the largest number answers FAILED_PRECONDITION and stays where it is.
#[apply(backends)]
#[tokio::test]
async fn an_exhausted_series_fails_without_moving(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    app.client
        .advance_counter(AdvanceCounterRequest {
            tenant_id: "acme".into(),
            series: String::new(),
            at_least: i64::MAX - 1,
            reason: "near the end".into(),
            ..AdvanceCounterRequest::default()
        })
        .await
        .unwrap();
    let status = app
        .client
        .allocate(allocate("acme", "", 2))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_reason(&status, "SERIES_EXHAUSTED");
    let last = app
        .client
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(last.numbers[0].value, i64::MAX);
}

/// Writes commit synchronously even when the database defaults to
/// `synchronous_commit = off`: every connection of the services' pools asks for
/// it, and so does every durable transaction on its own.
#[tokio::test]
async fn writes_force_synchronous_commit() {
    let db = TestDb::create(Backend::Postgres).await;
    db.admin(format!(
        r#"ALTER DATABASE "{}" SET synchronous_commit = off"#,
        db.name
    ))
    .await;

    let raw = sqlx::PgPool::connect(&db.url).await.unwrap();
    let default: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&raw)
        .await
        .unwrap();
    assert_eq!(
        default, "off",
        "the test database should default to asynchronous commit"
    );
    let mut durable = begin_durable(&raw).await.unwrap();
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut *durable)
        .await
        .unwrap();
    assert_eq!(
        setting, "on",
        "begin_durable did not force synchronous commit"
    );
    durable.rollback().await.unwrap();

    // Allocation is one statement in a transaction of its own: it forces
    // synchronous commit itself, and withholds numbers committed without it.
    numbering::allocator::postgres::MIGRATOR
        .run(&raw)
        .await
        .unwrap();
    let store = PgCounterStore::new(raw);
    let (tenant, series) = (
        TenantId::parse("acme").unwrap(),
        SeriesName::parse("").unwrap(),
    );
    let config = SeriesConfig::unconfigured(NumberFormat::default());
    let now = Utc::now();
    let call = Call {
        tenant: &tenant,
        series: &series,
        calendar: config.calendar,
        policy: config.gap_policy,
        settled: false,
        period: "",
        date: now.date_naive(),
        count: 3,
        request_id: None,
        lease: None,
    };
    let stamp = Stamp {
        now,
        forget_before: now,
    };
    let allocated = store.allocate(call, &config, stamp).await;
    assert_eq!(
        allocated.expect("allocate on a connection defaulting to asynchronous commit"),
        Outcome::Granted(Grant {
            first: 1,
            format: NumberFormat::DEFAULT.into(),
            date: now.date_naive(),
            period: String::new(),
        })
    );

    let service_pool = db.pool(&test_pool_settings()).await;
    let mut plain = service_pool.begin().await.unwrap();
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut *plain)
        .await
        .unwrap();
    assert_eq!(
        setting, "on",
        "the services' pools do not force synchronous commit"
    );
}

/// A database that answers but refuses writes (a standby not yet promoted
/// during a failover, or one set read-only) is unavailable, never internal:
/// readiness turns NOT_SERVING and calls answer UNAVAILABLE; once it takes
/// writes again both recover, with no number lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_is_unavailable_until_it_takes_writes() {
    let mut app = spawn_allocator(Backend::Postgres).await;
    let channel = app.server.channel().await;
    let name = "numbering.v1.NumberAllocator";
    app.client.allocate(allocate("acme", "", 3)).await.unwrap();
    app.db.set_read_only(true).await;
    wait_for_health(channel.clone(), name, ServingStatus::NotServing).await;
    for call in [allocate("acme", "", 1), keyed("acme", "", 1, "order-1")] {
        let status = app.client.allocate(call).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_reason(&status, "STORE_UNAVAILABLE");
    }

    app.db.set_read_only(false).await;
    wait_for_health(channel, name, ServingStatus::Serving).await;
    let next = app
        .client
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.numbers[0].value, 4);
}

/// Readiness logs why it turned NOT_SERVING, for whoever reads the logs of
/// a replica its probe took out: here, a database that takes no writes;
/// and says when it is ready again.
#[tokio::test]
async fn readiness_logs_why_it_is_not_serving() {
    let logs = CapturedLogs::default();
    let _subscriber = tracing::subscriber::set_default(logs.subscriber());
    let app = spawn_allocator(Backend::Postgres).await;
    let said = |events: &[serde_json::Value], message: &str| {
        events
            .iter()
            .filter(|event| event["fields"]["message"] == message)
            .map(|event| {
                let cause = event["fields"]["cause"].as_str().unwrap_or_default();
                (event["level"].to_string(), cause.to_owned())
            })
            .collect::<Vec<_>>()
    };
    let serving = "store ready: SERVING";
    logs.wait_until(|events| said(events, serving).len() == 1)
        .await;
    app.db.set_read_only(true).await;
    let not_serving = "store not ready: NOT_SERVING";
    let read_only = "the database takes no writes (a standby, or set read-only)";
    logs.wait_until(|events| {
        said(events, not_serving)
            .iter()
            .any(|(_, cause)| cause == read_only)
    })
    .await;
    for (level, cause) in said(&logs.events(), not_serving) {
        assert_eq!(level, r#""WARN""#, "{cause}");
    }

    app.db.set_read_only(false).await;
    logs.wait_until(|events| said(events, serving).len() == 2)
        .await;
}

/// A database dropped under the running service refuses every new
/// connection (as one whose role's password changed does): calls answer
/// UNAVAILABLE, as for any database away, not INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_dropped_under_the_service_is_unavailable() {
    let mut app = spawn_allocator(Backend::Postgres).await;
    app.client.allocate(allocate("acme", "", 1)).await.unwrap();
    app.db
        .admin(format!(r#"DROP DATABASE "{}" WITH (FORCE)"#, app.db.name))
        .await;
    let mut request = tonic::Request::new(allocate("acme", "", 1));
    request.set_timeout(std::time::Duration::from_secs(20));
    let status = app.client.allocate(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_reason(&status, "STORE_UNAVAILABLE");
}

/// A database dropped and created again, empty, under the running services
/// is not theirs: readiness says so, naming the cause, so that no call is
/// sent to a replica whose every call would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_on_a_database_made_again_empty() {
    let db = TestDb::create(Backend::Postgres).await;
    let counters = db.counter_store().await;
    let invoices = TestDb::create(Backend::Postgres).await;
    let store = invoices.invoice_store().await;
    counters.readiness().await.unwrap();
    store.readiness().await.unwrap();
    for name in [&db.name, &invoices.name] {
        db.admin(format!(r#"DROP DATABASE "{name}" WITH (FORCE)"#))
            .await;
        db.admin(format!(r#"CREATE DATABASE "{name}""#)).await;
    }
    for (service, readiness) in [
        ("allocator", counters.readiness().await),
        ("writer", store.readiness().await),
    ] {
        let cause = readiness.expect_err(service);
        assert!(
            matches!(cause, NotReady::Schema { found: None, .. }),
            "{service}: {cause:?}"
        );
        assert!(
            cause
                .to_string()
                .contains("none of the service's migrations"),
            "{service}: {cause}"
        );
    }
}

/// A database a newer release has migrated (a migration after the
/// service's last) is not one the service was written for: neither service
/// is ready on it, so that no call is sent to a replica left behind by an
/// upgrade.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_on_a_database_a_newer_release_migrated(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let counters = db.counter_store().await;
    let invoices = TestDb::create(backend).await;
    let store = invoices.invoice_store().await;
    counters.readiness().await.unwrap();
    store.readiness().await.unwrap();
    // The row a newer release's migration would leave (its checksum
    // borrowed from the last one: any blob will do).
    let newer = "INSERT INTO _sqlx_migrations
                     (version, description, success, checksum, execution_time)
                 SELECT max(version) + 1, 'a newer release', true,
                        (SELECT checksum FROM _sqlx_migrations ORDER BY version DESC LIMIT 1), 1
                 FROM _sqlx_migrations";
    db.execute(newer).await;
    invoices.execute(newer).await;
    for (service, readiness) in [
        ("allocator", counters.readiness().await),
        ("writer", store.readiness().await),
    ] {
        let cause = readiness.expect_err(service);
        let NotReady::Schema {
            found: Some(found),
            ours,
        } = &cause
        else {
            panic!("{service}: {cause:?}");
        };
        assert_eq!(*found, ours + 1, "{service}");
        assert!(
            cause.to_string().contains("a newer release has migrated"),
            "{service}: {cause}"
        );
    }
}

/// Readiness follows the database while liveness does not; calls fail fast with
/// UNAVAILABLE while it is away, and allocation resumes where it was once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database() {
    // The outage is cut at the PostgreSQL server; sqlite.rs covers a SQLite file going away.
    let mut app = spawn_allocator(Backend::Postgres).await;
    let channel = app.server.channel().await;
    let name = "numbering.v1.NumberAllocator";
    wait_for_health(channel.clone(), name, ServingStatus::Serving).await;
    app.client.allocate(allocate("acme", "", 3)).await.unwrap();

    app.db.cut().await;
    wait_for_health(channel.clone(), name, ServingStatus::NotServing).await;
    wait_for_health(channel.clone(), "", ServingStatus::Serving).await;
    // A generous deadline: only a fail-fast answer is UNAVAILABLE rather than DEADLINE_EXCEEDED.
    let mut request = tonic::Request::new(allocate("acme", "", 1));
    request.set_timeout(std::time::Duration::from_secs(20));
    let status = app.client.allocate(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_reason(&status, "STORE_UNAVAILABLE");

    app.db.restore().await;
    wait_for_health(channel, name, ServingStatus::Serving).await;
    let next = app
        .client
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.numbers[0].value, 4);
}

/// An allocation whose caller read another gap policy than the series has
/// (set meanwhile by `ConfigureSeries`, perhaps in another process) is
/// refused as a change of the series, handing out nothing, alone or in a
/// group; read anew, it goes on.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_that_read_another_gap_policy_is_refused(#[case] backend: Backend) {
    let mut app = spawn_allocator(backend).await;
    app.client
        .configure_series(ConfigureSeriesRequest {
            tenant_id: "acme".into(),
            series: "cont".into(),
            gap_policy: numbering::proto::GapPolicy::Reissue.into(),
            ..ConfigureSeriesRequest::default()
        })
        .await
        .unwrap();
    let store = app.db.counter_store().await;
    let (tenant, series) = (
        TenantId::parse("acme").unwrap(),
        SeriesName::parse("cont").unwrap(),
    );
    let defaults = SeriesConfig::unconfigured(NumberFormat::default());
    let now = Utc::now();
    let call = |policy| Call {
        tenant: &tenant,
        series: &series,
        calendar: defaults.calendar,
        policy,
        settled: false,
        period: "",
        date: now.date_naive(),
        count: 1,
        request_id: None,
        lease: None,
    };
    let stamp = Stamp {
        now,
        forget_before: now,
    };
    let stale = store
        .allocate(call(GapPolicy::Void), &defaults, stamp)
        .await;
    assert!(matches!(stale, Err(StoreError::SeriesChanged)), "{stale:?}");
    let fresh = store
        .allocate(call(GapPolicy::Reissue), &defaults, stamp)
        .await;
    assert!(
        matches!(&fresh, Ok(Outcome::Granted(grant)) if grant.first == 1),
        "{fresh:?}"
    );

    // In one group, behind a call that read the policy as it is: the group
    // checks the series once, so it is refused whole, and each call is
    // then committed, and checked, on its own.
    let both = store
        .allocate_many(
            &[call(GapPolicy::Reissue), call(GapPolicy::Void)],
            &defaults,
            stamp,
        )
        .await;
    assert!(matches!(both, Err(StoreError::SeriesChanged)), "{both:?}");
    let next = store
        .allocate(call(GapPolicy::Reissue), &defaults, stamp)
        .await;
    assert!(
        matches!(&next, Ok(Outcome::Granted(grant)) if grant.first == 2),
        "{next:?}"
    );
}
