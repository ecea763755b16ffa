//! Fairness between tenants: refusals that need no database answer without
//! one, and a per-tenant rate limit.

use std::{
    num::NonZeroU32,
    sync::Arc,
    time::{Duration, Instant},
};

use numbering::{
    db::Backend,
    server::{ServerSettings, fairness::TenantLimits},
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{
    AllocatorApp, AllocatorProxy, CapturedLogs, Fault, Method, advance, allocate, assert_reason,
    create, invoice_request, keyed, list_all, spawn_allocator, spawn_allocator_serving,
    spawn_writer, test_settings,
};

/// Once a period is known to be full, unkeyed calls for it are refused
/// without the database: they answer SERIES_EXHAUSTED while it is
/// unreachable, when any call that needs it answers UNAVAILABLE.
#[tokio::test]
async fn an_exhausted_series_is_refused_without_the_database() {
    let mut app = spawn_allocator(Backend::Postgres).await;
    app.client
        .advance_counter(advance("acme", i64::MAX, "test"))
        .await
        .unwrap();
    app.client
        .allocate(allocate("globex", "", 1))
        .await
        .unwrap();
    for request in [allocate("acme", "", 1), keyed("acme", "", 1, "first")] {
        let status = app.client.allocate(request).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_reason(&status, "SERIES_EXHAUSTED");
    }

    app.db.cut().await;
    for count in [1, 2, 100] {
        let status = app
            .client
            .allocate(allocate("acme", "", count))
            .await
            .unwrap_err();
        assert_reason(&status, "SERIES_EXHAUSTED");
    }
    // A keyed call may be a replay: it asks the database.
    let status = app
        .client
        .allocate(keyed("acme", "", 1, "second"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = app
        .client
        .allocate(allocate("globex", "", 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    app.db.restore().await;
}

/// Past its rate, a tenant whose next turn is further off than the wait
/// allowed is told when to retry, nothing moves, and other tenants go on.
#[tokio::test]
async fn a_tenant_over_its_rate_is_told_when_to_retry_and_others_go_on() {
    // The fourth call's turn is a third of a second away.
    let mut app = rate_limited_allocator(3, Duration::from_millis(100)).await;
    for _ in 0..3 {
        app.client.allocate(allocate("acme", "", 1)).await.unwrap();
    }
    let status = app
        .client
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_reason(&status, "TENANT_RATE_LIMITED");
    assert!(
        status
            .message()
            .starts_with("tenant \"acme\" is over its 3 calls a second"),
        "{status:?}"
    );
    let retry = status.get_details_retry_info().expect("RetryInfo");
    let delay = retry.retry_delay.expect("a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "{delay:?}"
    );
    assert_eq!(
        app.db.counters().await,
        [("acme".into(), "invoice".into(), String::new(), 3)]
    );
    app.client
        .allocate(allocate("globex", "", 1))
        .await
        .unwrap();

    // The allowance comes back after the delay told: the wait is the
    // behaviour under test.
    tokio::time::sleep(delay).await;
    let number = app.client.allocate(allocate("acme", "", 1)).await.unwrap();
    assert_eq!(number.into_inner().numbers[0].value, 4);
}

/// Calls past the rate whose turn comes within the wait allowed wait for it
/// and succeed: a burst twice the rate is served, spread over a second,
/// instead of half of it being refused.
#[tokio::test]
async fn calls_past_the_rate_wait_for_their_turn() {
    let app = rate_limited_allocator(5, Duration::from_secs(5)).await;
    let started = Instant::now();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move { client.allocate(allocate("acme", "", 1)).await })
        })
        .collect();
    let mut numbers = Vec::new();
    for call in calls {
        let response = call
            .await
            .unwrap()
            .expect("a call within the wait succeeds");
        numbers.push(response.into_inner().numbers[0].value);
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=10).collect::<Vec<_>>());
    // Five at once, then one every 200 ms: the last cannot start before
    // about a second has passed.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "ten calls at five a second took only {elapsed:?}"
    );
}

/// A tenant over the allocator's rate, through the writer: the writer waits
/// as long as the allocator's `RetryInfo` says, once, instead of asking
/// again sooner; when the caller's deadline leaves no time for that, the
/// caller is told the tenant is over its rate and when to retry
/// (`RESOURCE_EXHAUSTED`, `TENANT_RATE_LIMITED`, `RetryInfo`), not that the
/// allocator is down, and nothing is stored or taken.
#[tokio::test]
async fn a_tenant_over_the_allocators_rate_is_waited_for_or_told() {
    // One call a second: a CreateInvoice makes two (Reserve, Confirm).
    let allocator = rate_limited_allocator(1, Duration::from_millis(10)).await;
    let mut writer = spawn_writer(Backend::Postgres, &allocator.server.url(), 3).await;
    // A current-thread runtime: the servers' tasks log through this one.
    let logs = CapturedLogs::default();
    let _subscriber = tracing::subscriber::set_default(logs.subscriber());

    // The Confirm waits about a second for its turn, in one retry.
    let created = create(&mut writer.client, "acme").await;
    assert_eq!(created.invoice_number, "INV-001");
    let retries: Vec<_> = logs
        .events()
        .into_iter()
        .filter(|event| {
            event["fields"]["message"]
                == "allocator unavailable or over the tenant's rate; retrying"
        })
        .collect();
    assert_eq!(retries.len(), 1, "{retries:#?}");

    // The next Reserve's turn is a second away; the caller waits 300 ms.
    let mut request = tonic::Request::new(invoice_request("acme"));
    request.set_timeout(Duration::from_millis(300));
    let status = writer.client.create_invoice(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_reason(&status, "TENANT_RATE_LIMITED");
    let delay = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "{delay:?}"
    );
    assert_eq!(list_all(&mut writer.client, "acme").await.len(), 1);

    // No number was taken: after the delay told (the wait is the behaviour
    // under test), the next invoice is the second.
    tokio::time::sleep(delay).await;
    let created = create(&mut writer.client, "acme").await;
    assert_eq!(created.invoice_number, "INV-002");
}

/// A call whose turn comes within the wait allowed but after its caller's
/// deadline is refused at once with when to retry, not left to run out of
/// time (which would say a number may be lost), and takes no turn from the
/// calls after it; through the writer, its caller is told the tenant is
/// over its rate, not that the allocator is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_after_the_callers_deadline_is_refused_at_once() {
    let mut allocator = rate_limited_allocator(1, Duration::from_secs(5)).await;
    allocator
        .client
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap();
    let mut told = Vec::new();
    for _ in 0..3 {
        let mut request = tonic::Request::new(allocate("acme", "", 1));
        request.set_timeout(Duration::from_millis(300));
        let status = allocator.client.allocate(request).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_reason(&status, "TENANT_RATE_LIMITED");
        told.push(
            status
                .get_details_retry_info()
                .and_then(|info| info.retry_delay)
                .expect("a delay"),
        );
    }
    // No refused call took a turn: each is told the same next one (a
    // second off, less the time the calls took), not one a second later.
    assert!(told.windows(2).all(|pair| pair[1] <= pair[0]), "{told:?}");
    assert!(told[2] <= Duration::from_secs(1), "{told:?}");

    let mut writer = spawn_writer(Backend::Postgres, &allocator.server.url(), 3).await;
    // Its turn waited for (no deadline): the next is a second off again,
    // however long the writer took to start.
    allocator
        .client
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap();
    let mut request = tonic::Request::new(invoice_request("acme"));
    request.set_timeout(Duration::from_millis(300));
    let status = writer.client.create_invoice(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_reason(&status, "TENANT_RATE_LIMITED");
    assert!(list_all(&mut writer.client, "acme").await.is_empty());
    assert_eq!(
        allocator.db.counters().await,
        [("acme".into(), "invoice".into(), String::new(), 2)],
        "no number taken"
    );
}

/// A reservation whose answer was lost after the allocator committed it
/// (its own time ran out), then retried and refused for the tenant's rate
/// past the caller's deadline: the first try may hold a number, so the
/// caller is told the allocator was unavailable (retry with the same request
/// id), not only rate limited, and the call's note stays for reconciliation
/// to give that number back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_retry_after_a_lost_reply_keeps_its_note() {
    let allocator = rate_limited_allocator(1, Duration::from_millis(10)).await;
    let proxy = AllocatorProxy::new(
        allocator.client.clone(),
        Fault::TimeOutFirst(Method::Reserve),
    );
    let (proxy_url, _serving) = proxy.serve().await;
    let mut writer = spawn_writer(Backend::Postgres, &proxy_url, 3).await;

    let mut request = tonic::Request::new(invoice_request("acme"));
    request.set_timeout(Duration::from_millis(300));
    let status = writer.client.create_invoice(request).await.unwrap_err();
    assert_eq!(proxy.lost(), 1);
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_reason(&status, "ALLOCATOR_UNAVAILABLE");
    assert!(list_all(&mut writer.client, "acme").await.is_empty());
    // The first try's number, reserved (its reply lost after the
    // allocator answered), is noted for reconciliation.
    let later = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    let noted = writer.store.pending_before(later, None, 10).await.unwrap();
    assert_eq!(noted.len(), 1, "{noted:?}");
}

/// An allocator on PostgreSQL letting each tenant start `per_second` calls a
/// second, a call past it waiting up to `wait` for its turn.
async fn rate_limited_allocator(per_second: u32, wait: Duration) -> AllocatorApp {
    let settings = ServerSettings {
        tenant_limits: Some(Arc::new(TenantLimits::new(
            NonZeroU32::new(per_second).unwrap(),
            wait,
        ))),
        ..test_settings()
    };
    spawn_allocator_serving(Backend::Postgres, settings).await
}
