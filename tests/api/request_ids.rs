//! Request ids on Allocate: a repeat answers what its first call received,
//! whatever the concurrency, the commit mode or the process; a different call
//! with the same id is refused; ids are forgotten after the window. And the
//! ledger: every call and every advance leaves its range.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use numbering::{
    allocator::{CommitMode, app::RequestIdSettings, group_commit::GroupCommitSettings},
    db::Backend,
    proto::{
        AllocateResponse, GetSeriesRequest, ReserveRequest,
        number_allocator_client::NumberAllocatorClient,
    },
};
use rstest_reuse::apply;
use tonic::Code;

use crate::{
    backends,
    helpers::{
        AllocationRow, ManualClock, PATIENCE, TestDb, advance, allocate, allocate_all,
        allocator_binary, assert_exactly_one_to, assert_reason, build_allocator, invoice_series,
        keyed, serve_allocator, serve_allocator_on, spawn_allocator_in, start, test_settings,
    },
};

fn group() -> CommitMode {
    CommitMode::Group(GroupCommitSettings::default())
}

fn values(answer: &AllocateResponse) -> Vec<i64> {
    answer.numbers.iter().map(|n| n.value).collect()
}

/// Every answer is the first one, value for value and formatted alike; only
/// one of them is new.
fn assert_one_answer(answers: &[AllocateResponse], expected: &[i64]) {
    let first = answers
        .iter()
        .find(|a| !a.replayed)
        .expect("a first answer");
    assert_eq!(values(first), expected);
    for answer in answers {
        assert_eq!(
            answer.numbers, first.numbers,
            "a repeat answered differently"
        );
    }
    let new = answers.iter().filter(|a| !a.replayed).count();
    assert_eq!(new, 1, "{new} answers were not marked replayed");
}

/// 100 concurrent calls with one request id: one allocation, 99 repeats of it.
async fn one_id_allocates_once(backend: Backend, mode: CommitMode) {
    let mut app = spawn_allocator_in(backend, mode).await;
    app.client.allocate(allocate("acme", "", 2)).await.unwrap();

    let answers = allocate_all(&app.client, vec![keyed("acme", "", 3, "order-7"); 100]).await;
    assert_one_answer(&answers, &[3, 4, 5]);
    assert_eq!(answers[0].numbers[0].formatted, "INV-003");
    let series = invoice_series(&mut app.client, "acme").await.unwrap();
    assert_eq!(series.last_value, 5, "the counter moved more than once");

    // Later repeats too, and the next call without an id continues after it.
    let again = app
        .client
        .allocate(keyed("acme", "", 3, "order-7"))
        .await
        .unwrap();
    assert!(again.get_ref().replayed);
    assert_eq!(values(again.get_ref()), [3, 4, 5]);
    let next = app.client.allocate(allocate("acme", "", 1)).await.unwrap();
    assert_eq!(values(next.get_ref()), [6]);
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_get_one_allocation_under_group_commit(#[case] backend: Backend) {
    one_id_allocates_once(backend, group()).await;
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_get_one_allocation_committing_per_call(#[case] backend: Backend) {
    one_id_allocates_once(backend, CommitMode::PerCall).await;
}

/// Two allocator processes on one database, 50 repeats of one call each, at
/// once, beside calls without ids: one allocation, every answer the same.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_across_two_processes_get_one_allocation(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let (first, second) = tokio::join!(
        start(allocator_binary(&db.url)),
        start(allocator_binary(&db.url))
    );
    let (a, b) = tokio::join!(
        NumberAllocatorClient::connect(first.url()),
        NumberAllocatorClient::connect(second.url())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let calls = || {
        let mut calls = vec![keyed("acme", "", 2, "shared-key"); 50];
        calls.extend((0..50).map(|_| allocate("acme", "", 1)));
        calls
    };
    let (from_a, from_b) = tokio::join!(allocate_all(&a, calls()), allocate_all(&b, calls()));
    let (repeats, plain): (Vec<_>, Vec<_>) = from_a
        .into_iter()
        .chain(from_b)
        .partition(|answer| answer.numbers.len() == 2);
    let key_numbers = values(&repeats[0]);
    assert_one_answer(&repeats, &key_numbers);
    let mut numbers: Vec<i64> = plain.iter().flat_map(values).collect();
    numbers.extend(key_numbers);
    assert_exactly_one_to(&numbers, 102);
}

/// An id first used for one call refuses another: other count, other series.
/// Nothing is allocated or recorded by the refusal.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_for_another_call_is_refused(#[case] backend: Backend) {
    let mut app = spawn_allocator_in(backend, group()).await;
    app.client
        .allocate(keyed("acme", "", 2, "k"))
        .await
        .unwrap();

    for other in [keyed("acme", "", 3, "k"), keyed("acme", "credit", 2, "k")] {
        let status = app.client.allocate(other).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_reason(&status, "REQUEST_ID_REUSED");
        let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
        assert_eq!(info.metadata["requestId"], "k");
        assert_eq!(info.metadata["series"], "invoice");
        assert_eq!(info.metadata["count"], "2");
    }
    // Ids are scoped to the tenant: another tenant's "k" is its own.
    let other_tenant = app
        .client
        .allocate(keyed("globex", "", 3, "k"))
        .await
        .unwrap();
    assert!(!other_tenant.get_ref().replayed);

    let series = invoice_series(&mut app.client, "acme").await.unwrap();
    assert_eq!(series.last_value, 2, "a refused call moved the counter");
    let credit = app
        .client
        .get_series(GetSeriesRequest {
            tenant_id: "acme".into(),
            series: "credit".into(),
            ..GetSeriesRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        credit.code(),
        Code::NotFound,
        "a refused call created a series"
    );
    let acme: Vec<AllocationRow> = app
        .db
        .allocations()
        .await
        .into_iter()
        .filter(|row| row.tenant_id == "acme")
        .collect();
    assert_eq!(acme.len(), 1, "a refused call was recorded: {acme:?}");
}

/// After the retention window (a clock the test moves) an id allocates anew;
/// within it, it repeats.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_is_forgotten_after_the_window(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let clock = ManualClock::new();
    let settings = RequestIdSettings {
        retention: Duration::from_hours(1),
        purge_interval: Duration::from_hours(1),
    };
    let (_server, mut client) = serve_allocator_on(&db, group(), settings, clock.clone()).await;
    let call = || keyed("acme", "", 1, "nightly-run");

    assert_eq!(
        values(client.allocate(call()).await.unwrap().get_ref()),
        [1]
    );
    clock.advance(Duration::from_mins(59));
    let repeat = client.allocate(call()).await.unwrap().into_inner();
    assert!(repeat.replayed);
    assert_eq!(values(&repeat), [1]);

    clock.advance(Duration::from_mins(2));
    let anew = client.allocate(call()).await.unwrap().into_inner();
    assert!(
        !anew.replayed,
        "an id past the window repeated its first answer"
    );
    assert_eq!(values(&anew), [2]);
    // Now it answers with its new numbers, and a different call may take it.
    let repeat = client.allocate(call()).await.unwrap().into_inner();
    assert_eq!((repeat.replayed, values(&repeat)), (true, vec![2]));
    clock.advance(Duration::from_mins(61));
    let other = client
        .allocate(keyed("acme", "", 5, "nightly-run"))
        .await
        .unwrap();
    assert_eq!(values(other.get_ref()), [3, 4, 5, 6, 7]);
}

/// A window longer than the calendar reaches back (ten thousand years)
/// keeps every id: calls with ids are answered, and repeat, as with any
/// window.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_past_the_calendar_s_start_keeps_every_id(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let clock = ManualClock::new();
    let settings = RequestIdSettings {
        retention: Duration::from_hours(10_000 * 366 * 24),
        purge_interval: Duration::from_hours(1),
    };
    let (_server, mut client) = serve_allocator_on(&db, group(), settings, clock.clone()).await;
    let call = || keyed("acme", "", 1, "nightly-run");
    assert_eq!(
        values(client.allocate(call()).await.unwrap().get_ref()),
        [1]
    );
    clock.advance(Duration::from_hours(365 * 50 * 24));
    let repeat = client.allocate(call()).await.unwrap().into_inner();
    assert_eq!((repeat.replayed, values(&repeat)), (true, vec![1]));
}

/// Once a period is known to be full, a repeat of a call answered before
/// still gets its numbers, a different call with its id is refused as a
/// reuse, and new ids, or ids past the window, are refused as exhausted.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_are_answered_after_their_series_is_full(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let clock = ManualClock::new();
    let settings = RequestIdSettings {
        retention: Duration::from_hours(1),
        purge_interval: Duration::from_hours(1),
    };
    let (_server, mut client) = serve_allocator_on(&db, group(), settings, clock.clone()).await;
    let first = client
        .allocate(keyed("acme", "", 2, "before"))
        .await
        .unwrap();
    assert_eq!(values(first.get_ref()), [1, 2]);
    client
        .advance_counter(advance("acme", i64::MAX, "test"))
        .await
        .unwrap();
    // Now the period is known to be full.
    let status = client.allocate(allocate("acme", "", 1)).await.unwrap_err();
    assert_reason(&status, "SERIES_EXHAUSTED");

    let repeat = client
        .allocate(keyed("acme", "", 2, "before"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((repeat.replayed, values(&repeat)), (true, vec![1, 2]));
    let status = client
        .allocate(keyed("acme", "", 3, "before"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_reason(&status, "REQUEST_ID_REUSED");
    let status = client
        .allocate(keyed("acme", "", 1, "after"))
        .await
        .unwrap_err();
    assert_reason(&status, "SERIES_EXHAUSTED");

    clock.advance(Duration::from_mins(61));
    let status = client
        .allocate(keyed("acme", "", 2, "before"))
        .await
        .unwrap_err();
    assert_reason(&status, "SERIES_EXHAUSTED");
    assert_eq!(
        db.counters().await,
        [("acme".into(), "invoice".into(), String::new(), i64::MAX)]
    );
}

/// The repeat of the call that filled its period, the first the process
/// sees fail for want of room (no call has been refused as exhausted yet),
/// gets that call's numbers: it is planned as a new call, overflows the
/// counter its first answer filled, and a read of its id tells. So does a
/// `Reserve` repeated the same way.
async fn the_call_that_filled_its_period_is_repeated(backend: Backend, mode: CommitMode) {
    let mut app = spawn_allocator_in(backend, mode).await;
    app.client
        .advance_counter(advance("acme", i64::MAX - 5, "near the end"))
        .await
        .unwrap();
    let first = app
        .client
        .allocate(keyed("acme", "", 4, "fills"))
        .await
        .unwrap()
        .into_inner();
    let last: Vec<i64> = (i64::MAX - 4..i64::MAX).collect();
    assert_eq!(values(&first), last);
    let repeat = app
        .client
        .allocate(keyed("acme", "", 4, "fills"))
        .await
        .expect("the repeat gets its first answer")
        .into_inner();
    assert_eq!((repeat.replayed, values(&repeat)), (true, last));

    let reserve = ReserveRequest {
        tenant_id: "acme".into(),
        request_id: "takes-the-last".into(),
        ..ReserveRequest::default()
    };
    let reserved = app
        .client
        .reserve(reserve.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reserved.record.as_ref().map(|r| r.number), Some(i64::MAX));
    let repeat = app
        .client
        .reserve(reserve)
        .await
        .expect("the repeated reservation gets its number")
        .into_inner();
    assert_eq!(
        (repeat.replayed, repeat.record.map(|r| r.number)),
        (true, Some(i64::MAX))
    );
    let status = app
        .client
        .allocate(keyed("acme", "", 1, "new"))
        .await
        .unwrap_err();
    assert_reason(&status, "SERIES_EXHAUSTED");
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_that_filled_its_period_is_repeated_under_group_commit(#[case] backend: Backend) {
    the_call_that_filled_its_period_is_repeated(backend, group()).await;
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_that_filled_its_period_is_repeated_committing_per_call(#[case] backend: Backend) {
    the_call_that_filled_its_period_is_repeated(backend, CommitMode::PerCall).await;
}

/// Expired ids are purged in the background, in batches, while allocations
/// with and without ids go on unharmed; ids still in the window stay.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_ids_are_purged_while_allocations_go_on(#[case] backend: Backend) {
    const OLD: i64 = 2500;
    let db = TestDb::create(backend).await;
    let clock = ManualClock::new();
    let settings = RequestIdSettings {
        retention: Duration::from_hours(1),
        purge_interval: Duration::from_millis(20),
    };
    let (_server, client) = serve_allocator_on(&db, group(), settings, clock.clone()).await;
    for chunk in (0..OLD).collect::<Vec<_>>().chunks(500) {
        let calls = chunk
            .iter()
            .map(|i| keyed("acme", "", 1, &format!("old-{i}")))
            .collect();
        allocate_all(&client, calls).await;
    }
    assert_eq!(db.request_ids("old-").await, OLD);

    // Allocations run before, while and after the expired ids are purged:
    // plain calls throughout, calls with new ids once the clock has moved.
    let (stop, advanced) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (calls, keyed_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = tokio::spawn({
        let mut client = client.clone();
        let (stop, advanced) = (stop.clone(), advanced.clone());
        let (calls, keyed_calls) = (calls.clone(), keyed_calls.clone());
        async move {
            let mut numbers = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let mut requests = vec![allocate("acme", "", 1)];
                if advanced.load(Ordering::SeqCst) {
                    let i = keyed_calls.load(Ordering::SeqCst);
                    requests.push(keyed("acme", "", 1, &format!("new-{i}")));
                }
                for request in requests {
                    let keyed = !request.request_id.is_empty();
                    let answer = client
                        .allocate(request)
                        .await
                        .expect("allocate during the purge");
                    numbers.extend(values(answer.get_ref()));
                    calls.fetch_add(1, Ordering::SeqCst);
                    if keyed {
                        keyed_calls.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            numbers
        }
    });
    let progressed = |past: usize| {
        let calls = calls.clone();
        async move {
            let reached = tokio::time::timeout(PATIENCE, async {
                while calls.load(Ordering::SeqCst) <= past {
                    tokio::task::yield_now().await;
                }
            })
            .await;
            assert!(reached.is_ok(), "allocations stopped");
        }
    };
    progressed(0).await;

    clock.advance(Duration::from_mins(61));
    advanced.store(true, Ordering::SeqCst);
    let purged = tokio::time::timeout(PATIENCE, async {
        while db.request_ids("old-").await > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(purged.is_ok(), "the expired ids were never purged");
    progressed(calls.load(Ordering::SeqCst)).await;
    stop.store(true, Ordering::SeqCst);
    let numbers = load.await.unwrap();
    assert_eq!(numbers.len(), calls.load(Ordering::SeqCst));
    assert_eq!(
        db.request_ids("new-").await,
        i64::try_from(keyed_calls.load(Ordering::SeqCst)).unwrap(),
        "ids in the window were purged"
    );
    let distinct: HashSet<i64> = numbers.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        numbers.len(),
        "a number was handed out twice"
    );

    let mut client = client;
    let anew = client
        .allocate(keyed("acme", "", 1, "old-0"))
        .await
        .unwrap();
    assert!(!anew.get_ref().replayed);
}

/// Every call's range is recorded: a call with a request id in a row of its
/// own, calls without one in rows of adjacent runs; repeats add nothing. An
/// advance records the range it skipped and why. The records of a series
/// tile 1..=last_value exactly.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_range_handed_out_or_skipped_is_recorded(#[case] backend: Backend) {
    let mut app = spawn_allocator_in(backend, group()).await;
    let mut calls: Vec<_> = (0..60).map(|i| allocate("acme", "", 1 + i % 4)).collect();
    calls.extend((0..30).map(|i| keyed("acme", "", 2, &format!("k{}", i % 10))));
    allocate_all(&app.client, calls).await;
    app.client
        .advance_counter(advance("acme", 500, "migrated from the old system"))
        .await
        .unwrap();
    // Raising to a lower value skips nothing and records nothing.
    app.client
        .advance_counter(advance("acme", 10, "no-op"))
        .await
        .unwrap();
    app.client
        .allocate(keyed("acme", "", 1, "after"))
        .await
        .unwrap();

    let rows = app.db.allocations().await;
    let mut next = 1;
    for row in &rows {
        assert_eq!(
            row.first_value, next,
            "records do not tile the series: {rows:?}"
        );
        next += row.count;
    }
    let series = invoice_series(&mut app.client, "acme").await.unwrap();
    assert_eq!(next - 1, series.last_value);

    let plain = rows
        .iter()
        .filter(|r| r.kind == "allocate" && r.request_id.is_none());
    let plain_numbers: i64 = plain.map(|r| r.count).sum();
    assert_eq!(plain_numbers, (0..60).map(|i| 1 + i % 4).sum::<i64>());
    let ids: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.request_id.as_deref())
        .collect();
    assert_eq!(ids.len(), 11, "one record per id, none per repeat: {ids:?}");
    let advances: Vec<&AllocationRow> = rows.iter().filter(|r| r.kind == "advance").collect();
    assert_eq!(advances.len(), 1);
    let skipped = advances[0];
    assert_eq!(skipped.first_value + skipped.count - 1, 500);
    assert_eq!(skipped.reason, "migrated from the old system");
    assert_eq!(rows.last().unwrap().first_value, 501);
}

/// An allocator killed with SIGKILL while repeats of keyed calls are in
/// flight: after a restart, every id acknowledged before the kill repeats the
/// numbers it was acknowledged with.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_ids_repeat_their_numbers_after_a_sigkill(#[case] backend: Backend) {
    use nix::sys::signal::{Signal, kill};
    use std::sync::Mutex;
    use tokio::sync::Notify;

    const CLIENTS: usize = 8;
    let db = TestDb::create(backend).await;
    let running = start(allocator_binary(&db.url)).await;
    let client = NumberAllocatorClient::connect(running.url()).await.unwrap();
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, Vec<i64>)>::new()));
    let enough = Arc::new(Notify::new());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (mut client, acknowledged, enough) =
                (client.clone(), acknowledged.clone(), enough.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    // Each call twice, the second a repeat in flight with others.
                    let id = format!("c{c}-{i}");
                    for _ in 0..2 {
                        let Ok(answer) = client.allocate(keyed("acme", "", 2, &id)).await else {
                            return;
                        };
                        let mut acknowledged = acknowledged.lock().unwrap();
                        acknowledged.push((id.clone(), values(answer.get_ref())));
                        if acknowledged.len() >= 200 {
                            enough.notify_one();
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(PATIENCE, enough.notified())
        .await
        .expect("the load did not get going");
    kill(running.pid(), Signal::SIGKILL).unwrap();
    running.wait().await;
    for client in clients {
        client.await.unwrap();
    }

    let restarted = start(allocator_binary(&db.url)).await;
    let mut client = NumberAllocatorClient::connect(restarted.url())
        .await
        .unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    for (id, numbers) in &acknowledged {
        let repeat = client
            .allocate(keyed("acme", "", 2, id))
            .await
            .unwrap()
            .into_inner();
        assert!(repeat.replayed, "{id} allocated anew after the restart");
        assert_eq!(&values(&repeat), numbers, "{id} changed its numbers");
    }
    let distinct: HashSet<&str> = acknowledged.iter().map(|(id, _)| id.as_str()).collect();
    let numbers: HashSet<i64> = acknowledged.iter().flat_map(|(_, n)| n.clone()).collect();
    assert_eq!(numbers.len(), 2 * distinct.len(), "two ids share a number");
}

/// Date parts show the date a number was handed out on, and a repeat reads
/// as its first answer did, even after the date has changed.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_shows_the_date_of_its_first_answer(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let new_years_eve = "2026-12-31T23:59:00Z".parse().unwrap();
    let clock = ManualClock::at(new_years_eve);
    let format = "INV-{year}-{number:04}".parse().unwrap();
    let app = build_allocator(
        &db,
        format,
        group(),
        RequestIdSettings::default(),
        clock.clone(),
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve_allocator(listener, app, test_settings());
    let mut client = NumberAllocatorClient::new(server.channel().await);
    let formatted = |answer: &AllocateResponse| answer.numbers[0].formatted.clone();

    let first = client
        .allocate(keyed("acme", "", 1, "k1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(formatted(&first), "INV-2026-0001");
    clock.advance(Duration::from_mins(2));
    let next = client
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(formatted(&next), "INV-2027-0002");
    let repeat = client
        .allocate(keyed("acme", "", 1, "k1"))
        .await
        .unwrap()
        .into_inner();
    assert!(repeat.replayed);
    assert_eq!(formatted(&repeat), "INV-2026-0001");
}
