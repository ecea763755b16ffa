//! Fairness between tenants: refusals that need no database answer without
//! one, and a per-tenant rate limit.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use numbering::{
    db::Backend,
    proto::AdvanceCounterRequest,
    server::{ServerSettings, fairness::TenantLimits},
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{
    allocate, assert_reason, keyed, spawn_allocator, spawn_allocator_serving, test_settings,
};

/// Once a period is known to be full, unkeyed calls for it are refused
/// without the database: they answer SERIES_EXHAUSTED while it is
/// unreachable, when any call that needs it answers UNAVAILABLE.
#[tokio::test]
async fn an_exhausted_series_is_refused_without_the_database() {
    let mut app = spawn_allocator(Backend::Postgres).await;
    app.client
        .advance_counter(AdvanceCounterRequest {
            tenant_id: "acme".into(),
            at_least: i64::MAX,
            reason: "test".into(),
            ..AdvanceCounterRequest::default()
        })
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

/// Past its rate a tenant is told when to retry, nothing moves, and other
/// tenants go on.
#[tokio::test]
async fn a_tenant_over_its_rate_is_told_when_to_retry_and_others_go_on() {
    let settings = ServerSettings {
        tenant_limits: Some(Arc::new(TenantLimits::per_second(
            NonZeroU32::new(3).unwrap(),
        ))),
        ..test_settings()
    };
    let mut app = spawn_allocator_serving(Backend::Postgres, settings).await;
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
