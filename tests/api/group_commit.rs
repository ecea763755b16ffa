//! Group commit: calls of one series merged into shared transactions.

use numbering::db::Backend;
use rstest_reuse::apply;

use crate::backends;
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use numbering::{
    allocator::{
        Allocator, CommitMode, Error,
        batch::Retention,
        group_commit::{GroupCommitSettings, GroupCommitter, GroupError},
        numbers::NumberState,
        series::{Calendar, GapPolicy, NumberFormat, SeriesConfig, SeriesName},
        store::{
            Advance, Call, Change, ChangeError, Changed, ConfigureError, CounterStore, Held,
            KeyRow, Ledger, NumberAt, Outcome, PeriodOf, RangeRow, RangesAfter, Reissue, Stamp,
            StateChange, StateRow, StateWrite, StatesAfter, StoreError,
        },
    },
    clock::SystemClock,
    proto::number_allocator_client::NumberAllocatorClient,
    request_id::RequestId,
    server::Store,
    tenant::TenantId,
};
use tokio::sync::{Barrier, Semaphore};
use tonic::{Code, transport::Channel};

use crate::helpers::{
    ManualClock, PATIENCE, TestDb, allocate, assert_exactly_one_to, assert_reason,
    spawn_allocator_in,
};

/// A real counter store that can hold calls at a gate, fail chosen calls,
/// and records the count of every call that reached it.
struct ScriptedStore {
    inner: Arc<dyn CounterStore>,
    gate: Semaphore,
    fail: Mutex<HashSet<usize>>,
    calls: Mutex<Vec<Vec<i64>>>,
}

impl ScriptedStore {
    async fn new(db: &TestDb) -> Arc<Self> {
        Arc::new(Self {
            inner: db.counter_store().await,
            gate: Semaphore::new(0),
            fail: Mutex::new(HashSet::new()),
            calls: Mutex::new(Vec::new()),
        })
    }

    /// The counts of every store call so far, one list per transaction.
    fn calls(&self) -> Vec<Vec<i64>> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Store for ScriptedStore {
    async fn readiness(&self) -> Result<(), numbering::db::NotReady> {
        self.inner.readiness().await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

#[async_trait]
impl CounterStore for ScriptedStore {
    async fn allocate_many(
        &self,
        calls: &[Call<'_>],
        defaults: &SeriesConfig,
        stamp: Stamp,
    ) -> Result<Vec<Outcome>, StoreError> {
        let transaction = {
            let mut seen = self.calls.lock().unwrap();
            seen.push(calls.iter().map(|call| call.count).collect());
            seen.len() - 1
        };
        self.gate.acquire().await.unwrap().forget();
        if self.fail.lock().unwrap().contains(&transaction) {
            // As a transaction whose COMMIT failed: nothing was written.
            return Err(StoreError::Unavailable("injected commit failure".into()));
        }
        self.inner.allocate_many(calls, defaults, stamp).await
    }

    async fn find(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
    ) -> Result<Option<SeriesConfig>, StoreError> {
        self.inner.find(tenant, series).await
    }

    async fn counter(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
    ) -> Result<Option<i64>, StoreError> {
        self.inner.counter(tenant, series, period).await
    }

    async fn configure(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        defaults: &SeriesConfig,
        change: Change<'_>,
    ) -> Result<SeriesConfig, ConfigureError> {
        self.inner.configure(tenant, series, defaults, change).await
    }

    async fn advance(
        &self,
        advance: Advance<'_>,
        defaults: &SeriesConfig,
    ) -> Result<(SeriesConfig, i64), StoreError> {
        self.inner.advance(advance, defaults).await
    }

    async fn ledger(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        sample: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<Ledger>, StoreError> {
        self.inner.ledger(tenant, series, period, sample, now).await
    }

    async fn range_at(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        number: i64,
    ) -> Result<Option<RangeRow>, StoreError> {
        self.inner.range_at(tenant, series, period, number).await
    }

    async fn ranges_after(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        after: RangesAfter,
    ) -> Result<Vec<RangeRow>, StoreError> {
        self.inner.ranges_after(tenant, series, period, after).await
    }

    async fn change_state(
        &self,
        at: NumberAt<'_>,
        range: &RangeRow,
        change: StateChange<'_>,
        held: Held,
    ) -> Result<Option<StateRow>, ChangeError> {
        self.inner.change_state(at, range, change, held).await
    }

    async fn change_states(&self, writes: &[StateWrite<'_>]) -> Result<Vec<Changed>, StoreError> {
        self.inner.change_states(writes).await
    }

    async fn reissue(
        &self,
        take: Reissue<'_>,
        stamp: Stamp,
    ) -> Result<Option<Outcome>, StoreError> {
        self.inner.reissue(take, stamp).await
    }

    async fn given_back(
        &self,
        periods: &[PeriodOf<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, StoreError> {
        self.inner.given_back(periods, now).await
    }

    async fn expire_leases(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        self.inner.expire_leases(now, limit).await
    }

    async fn states_between(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        numbers: (i64, i64),
    ) -> Result<Vec<StateRow>, StoreError> {
        self.inner
            .states_between(tenant, series, period, numbers)
            .await
    }

    async fn states_after(
        &self,
        tenant: &TenantId,
        series: &SeriesName,
        period: &str,
        after: StatesAfter<'_>,
    ) -> Result<Vec<(StateRow, RangeRow)>, StoreError> {
        self.inner.states_after(tenant, series, period, after).await
    }

    async fn first_answer(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
        stamp: Stamp,
    ) -> Result<Option<KeyRow>, StoreError> {
        self.inner.first_answer(tenant, request_id, stamp).await
    }

    async fn forget_request_ids(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.inner.forget_request_ids(before, limit).await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, SeriesConfig)>, StoreError> {
        self.inner.list(tenant, after, limit).await
    }
}

/// The settings of a series nobody configured.
fn defaults() -> SeriesConfig {
    SeriesConfig::unconfigured(NumberFormat::default())
}

fn series() -> SeriesName {
    SeriesName::parse("").unwrap()
}

/// A committer with one lane, so every call shares its queue.
fn one_lane(store: &Arc<ScriptedStore>, queue_capacity: usize) -> Arc<GroupCommitter> {
    let settings = GroupCommitSettings {
        lanes: 1,
        max_batch: 1000,
        queue_capacity,
    };
    let store: Arc<dyn CounterStore> = store.clone();
    let retention = Retention {
        clock: Arc::new(SystemClock),
        window: Duration::from_mins(1),
    };
    Arc::new(GroupCommitter::new(
        &store,
        &settings,
        &defaults(),
        &retention,
    ))
}

/// Raises a series to `at_least` through the store.
async fn advance(store: &ScriptedStore, tenant: &TenantId, at_least: i64) {
    let series = series();
    let advance = Advance {
        tenant,
        series: &series,
        calendar: Calendar::DEFAULT,
        period: "",
        date: Utc::now().date_naive(),
        at_least,
        reason: "test",
        now: Utc::now(),
    };
    store.advance(advance, &defaults()).await.unwrap();
}

/// The first number of a call's new range.
fn first(outcome: Result<Outcome, GroupError>) -> i64 {
    match outcome {
        Ok(Outcome::Granted(grant)) => grant.first,
        other => panic!("expected new numbers, got {other:?}"),
    }
}

/// Starts one grouped allocation of `count` numbers for `tenant` in a task.
fn spawn_call(
    committer: &Arc<GroupCommitter>,
    tenant: &str,
    count: u32,
) -> tokio::task::JoinHandle<Result<Outcome, GroupError>> {
    spawn_call_reading(committer, tenant, count, GapPolicy::Void)
}

/// As [`spawn_call`], by a caller that read the series' gap policy as
/// `policy`.
fn spawn_call_reading(
    committer: &Arc<GroupCommitter>,
    tenant: &str,
    count: u32,
    policy: GapPolicy,
) -> tokio::task::JoinHandle<Result<Outcome, GroupError>> {
    let committer = committer.clone();
    let tenant = TenantId::parse(tenant).unwrap();
    tokio::spawn(async move {
        let series = series();
        let call = Call {
            tenant: &tenant,
            series: &series,
            calendar: Calendar::DEFAULT,
            policy,
            settled: false,
            period: "",
            date: Utc::now().date_naive(),
            count: i64::from(count),
            request_id: None,
            lease: None,
        };
        committer.allocate(call).await
    })
}

/// Waits until `n` calls are queued behind the commit in flight.
async fn wait_for_waiting(committer: &GroupCommitter, n: usize) {
    let tenant = TenantId::parse("acme").unwrap();
    let reached = tokio::time::timeout(PATIENCE, async {
        while committer.waiting(&tenant, &series()) < n {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(reached.is_ok(), "{n} calls never queued");
}

/// Waits until `n` transactions have reached the store.
async fn wait_for_store_calls(store: &ScriptedStore, n: usize) {
    let reached = tokio::time::timeout(PATIENCE, async {
        while store.calls().len() < n {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(reached.is_ok(), "the store never saw {n} transactions");
}

/// A reservation committed only once its lease had ended (it waited its turn
/// that long) is not answered as reserved: given back by then, it may be
/// another caller's. One committed in time is.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_committed_after_its_lease_ended_is_not_answered(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = ScriptedStore::new(&db).await;
    let clock = ManualClock::new();
    let counters: Arc<dyn CounterStore> = store.clone();
    let allocator = Arc::new(Allocator::new(
        counters,
        NumberFormat::default(),
        CommitMode::Group(GroupCommitSettings::default()),
        Retention {
            clock: clock.clone(),
            window: Duration::from_mins(1),
        },
    ));
    let tenant = TenantId::parse("acme").unwrap();
    let lease = Duration::from_secs(1);
    let reserving = tokio::spawn({
        let (allocator, tenant) = (allocator.clone(), tenant.clone());
        async move {
            allocator
                .reserve(&tenant, &series(), None, None, lease)
                .await
        }
    });
    wait_for_store_calls(&store, 1).await;
    clock.advance(lease);
    store.gate.add_permits(1);
    let late = reserving.await.unwrap();
    assert!(matches!(late, Err(Error::Unavailable(_))), "{late:?}");

    store.gate.add_permits(1);
    let in_time = allocator
        .reserve(&tenant, &series(), None, None, lease)
        .await
        .unwrap();
    assert_eq!(in_time.record.state, NumberState::Reserved);
    assert_eq!(in_time.record.number, 2);
}

/// 2,000 concurrent calls with mixed counts for one series, over several
/// connections, get consecutive ranges that together are exactly 1..=N.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_mixed_calls_get_exactly_the_contiguous_set(#[case] backend: Backend) {
    let app = spawn_allocator_in(backend, CommitMode::Group(GroupCommitSettings::default())).await;
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..8 {
        channels.push(app.server.channel().await);
    }
    let counts: Vec<u32> = (0..2000)
        .map(|i| [1, 1, 1, 2, 5, 10, 1, 3][i % 8])
        .collect();
    let total: u32 = counts.iter().sum();
    let barrier = Arc::new(Barrier::new(counts.len()));
    let tasks: Vec<_> = counts
        .iter()
        .enumerate()
        .map(|(i, count)| {
            let mut client = NumberAllocatorClient::new(channels[i % 8].clone());
            let barrier = barrier.clone();
            let request = allocate("acme", "", *count);
            tokio::spawn(async move {
                barrier.wait().await;
                client
                    .allocate(request)
                    .await
                    .expect("allocate")
                    .into_inner()
                    .numbers
                    .iter()
                    .map(|n| n.value)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for (task, count) in tasks.into_iter().zip(&counts) {
        let range = task.await.unwrap();
        assert_eq!(range.len(), *count as usize);
        assert!(
            range.windows(2).all(|w| w[1] == w[0] + 1),
            "not consecutive: {range:?}"
        );
        all.extend(range);
    }
    assert_exactly_one_to(&all, i64::from(total));
}

/// Calls queued behind a commit share the next transaction, one series or many;
/// each series' range is split in arrival order.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_calls_share_the_next_transaction(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = ScriptedStore::new(&db).await;
    let committer = one_lane(&store, 100);

    let first = spawn_call(&committer, "acme", 1);
    wait_for_store_calls(&store, 1).await;
    let mut queued = Vec::new();
    for (tenant, count) in [("acme", 2), ("globex", 5), ("acme", 3), ("initech", 1)] {
        queued.push(spawn_call(&committer, tenant, count));
        // One at a time, so the arrival order is known.
        wait_for_waiting(&committer, queued.len()).await;
    }
    store.gate.add_permits(2);

    assert_eq!(self::first(first.await.unwrap()), 1);
    let firsts: Vec<i64> = futures_firsts(queued).await;
    // acme: 2..=3 then 4..=6; globex: 1..=5; initech: 1.
    assert_eq!(firsts, [2, 1, 4, 1]);
    assert_eq!(
        store.calls(),
        [vec![1], vec![2, 5, 3, 1]],
        "the queued calls did not share one transaction"
    );
}

async fn futures_firsts(
    calls: Vec<tokio::task::JoinHandle<Result<Outcome, GroupError>>>,
) -> Vec<i64> {
    let mut firsts = Vec::new();
    for call in calls {
        firsts.push(first(call.await.unwrap()));
    }
    firsts
}

/// When a group's commit fails, every call of the group fails alike and no
/// number of its ranges is handed out; the next group continues from the
/// committed value.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_fails_its_whole_group_and_hands_out_nothing(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = ScriptedStore::new(&db).await;
    store.fail.lock().unwrap().insert(1);
    let committer = one_lane(&store, 100);

    // Group 0: one call, held in its commit while the next group queues.
    let first = spawn_call(&committer, "acme", 1);
    wait_for_store_calls(&store, 1).await;
    let mut group: Vec<_> = (1..=10)
        .map(|count| spawn_call(&committer, "acme", count))
        .collect();
    group.push(spawn_call(&committer, "globex", 4));
    wait_for_waiting(&committer, 11).await;
    store.gate.add_permits(2);

    assert_eq!(self::first(first.await.unwrap()), 1);
    let mut messages = HashSet::new();
    for call in group {
        match call.await.unwrap() {
            Err(GroupError::Store(error)) => {
                messages.insert(error.to_string());
            }
            other => panic!("a call of the failed group got {other:?}"),
        }
    }
    assert_eq!(
        messages.len(),
        1,
        "the group's calls failed differently: {messages:?}"
    );
    // The eleven were spawned together: their arrival order is not known.
    let mut calls = store.calls();
    calls[1].sort_unstable();
    assert_eq!(
        calls,
        [vec![1], vec![1, 2, 3, 4, 4, 5, 6, 7, 8, 9, 10]],
        "the eleven calls did not share one transaction"
    );

    store.gate.add_permits(1);
    let next = self::first(spawn_call(&committer, "acme", 3).await.unwrap());
    assert_eq!(
        next, 2,
        "the next group did not continue from the committed value"
    );
    store.gate.add_permits(1);
    let other = self::first(spawn_call(&committer, "globex", 1).await.unwrap());
    assert_eq!(other, 1, "the failed group took numbers of another series");
}

/// A series at the end of its range fails alone; the other series of its batch commit.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_series_does_not_fail_the_rest_of_its_batch(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = ScriptedStore::new(&db).await;
    let full = TenantId::parse("full").unwrap();
    advance(&store, &full, i64::MAX).await;
    let committer = one_lane(&store, 100);

    let first = spawn_call(&committer, "acme", 1);
    wait_for_store_calls(&store, 1).await;
    let exhausted = spawn_call(&committer, "full", 1);
    wait_for_waiting(&committer, 1).await;
    let fine = spawn_call(&committer, "globex", 2);
    wait_for_waiting(&committer, 2).await;
    store.gate.add_permits(10);

    self::first(first.await.unwrap());
    match exhausted.await.unwrap() {
        Err(GroupError::Store(error)) => {
            assert!(matches!(*error, StoreError::Exhausted), "{error:?}");
        }
        other => panic!("the exhausted series got {other:?}"),
    }
    assert_eq!(self::first(fine.await.unwrap()), 1);
    // The batch of both series failed as a whole, then each call committed alone.
    assert_eq!(store.calls(), [vec![1], vec![1, 2], vec![1], vec![2]]);
}

/// Holds one call of acme's in its commit, then queues `calls` (tenant,
/// count, the gap policy it read) behind it in this order: the held call
/// and each queued one by tenant.
async fn queue_behind_one<'t>(
    committer: &Arc<GroupCommitter>,
    store: &ScriptedStore,
    calls: &[(&'t str, u32, GapPolicy)],
) -> (
    tokio::task::JoinHandle<Result<Outcome, GroupError>>,
    Vec<(
        &'t str,
        tokio::task::JoinHandle<Result<Outcome, GroupError>>,
    )>,
) {
    let held = spawn_call(committer, "acme", 1);
    wait_for_store_calls(store, 1).await;
    let mut queued = Vec::new();
    for &(tenant, count, policy) in calls {
        queued.push((tenant, spawn_call_reading(committer, tenant, count, policy)));
        wait_for_waiting(committer, queued.len()).await;
    }
    (held, queued)
}

/// Awaits `calls`, in arrival order: each of `refused` must fail as
/// `is_refused` says; the first numbers of globex's.
async fn globex_firsts(
    calls: Vec<(&str, tokio::task::JoinHandle<Result<Outcome, GroupError>>)>,
    refused: &str,
    is_refused: impl Fn(&StoreError) -> bool,
) -> Vec<i64> {
    let mut globex = Vec::new();
    for (tenant, call) in calls {
        match call.await.unwrap() {
            Err(GroupError::Store(error)) if tenant == refused => {
                assert!(is_refused(&error), "{tenant}: {error:?}");
            }
            outcome if tenant == "globex" => globex.push(self::first(outcome)),
            outcome => panic!("{tenant} got {outcome:?}"),
        }
    }
    globex
}

/// A batch that fails on a few calls that do not fit commits the rest in
/// halves, not one call at a time: every call gets the answer it would have
/// had alone, in arrival order, and a call known not to fit costs no
/// transaction.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_committed_in_halves(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = ScriptedStore::new(&db).await;
    let full = TenantId::parse("full").unwrap();
    advance(&store, &full, i64::MAX).await;
    let committer = one_lane(&store, 100);

    let void = GapPolicy::Void;
    let (held, calls) = queue_behind_one(
        &committer,
        &store,
        &[
            ("full", 1, void),
            ("globex", 1, void),
            ("full", 2, void),
            ("globex", 1, void),
            ("full", 1, void),
            ("globex", 1, void),
            ("globex", 1, void),
            ("full", 3, void),
        ],
    )
    .await;
    store.gate.add_permits(100);

    self::first(held.await.unwrap());
    let globex = globex_firsts(calls, "full", |error| {
        matches!(error, StoreError::Exhausted)
    })
    .await;
    assert_eq!(globex, [1, 2, 3, 4], "not numbered in arrival order");
    assert_eq!(
        store.calls(),
        [
            vec![1],
            vec![1, 1, 2, 1, 1, 1, 1, 3],
            // The first half fails, and its first quarter; its calls alone.
            vec![1, 1, 2, 1],
            vec![1, 1],
            vec![1],
            vec![1],
            // The second quarter without the call known not to fit.
            vec![1],
            // The second half without its two.
            vec![1, 1],
        ]
    );
}

/// A batch that fails on calls that read a series' settings before they
/// changed is committed in halves too, and a call that read the same
/// settings as one refused so is refused without a transaction.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_failed_on_changed_settings_is_committed_in_halves(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = ScriptedStore::new(&db).await;
    let committer = one_lane(&store, 100);

    // Its series voids (the default): read as reissuing, it has changed.
    let (held, calls) = queue_behind_one(
        &committer,
        &store,
        &[
            ("moved", 1, GapPolicy::Reissue),
            ("globex", 1, GapPolicy::Void),
            ("moved", 1, GapPolicy::Reissue),
            ("globex", 1, GapPolicy::Void),
        ],
    )
    .await;
    store.gate.add_permits(100);

    self::first(held.await.unwrap());
    let globex = globex_firsts(calls, "moved", |error| {
        matches!(error, StoreError::SeriesChanged)
    })
    .await;
    assert_eq!(globex, [1, 2], "not numbered in arrival order");
    assert_eq!(
        store.calls(),
        [
            vec![1],
            vec![1, 1, 1, 1],
            vec![1, 1],
            vec![1],
            vec![1],
            // The second half without the call known to have read stale settings.
            vec![1],
        ]
    );
}

/// A part of a split batch that fails on its own (its commit lost) fails
/// only its calls: the others keep their numbers, and the failed part's
/// numbers go to the next calls.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_of_a_split_batch_fails_alone(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = ScriptedStore::new(&db).await;
    let full = TenantId::parse("full").unwrap();
    advance(&store, &full, i64::MAX).await;
    let committer = one_lane(&store, 100);
    // Transactions: the held one, the batch, its first half, the exhausted
    // call alone, the call after it alone, and then the second half.
    store.fail.lock().unwrap().insert(5);

    let void = GapPolicy::Void;
    let (held, calls) = queue_behind_one(
        &committer,
        &store,
        &[
            ("full", 1, void),
            ("globex", 1, void),
            ("globex", 1, void),
            ("globex", 1, void),
        ],
    )
    .await;
    store.gate.add_permits(100);

    self::first(held.await.unwrap());
    let mut answers = Vec::new();
    for (_, call) in calls {
        answers.push(match call.await.unwrap() {
            Ok(outcome) => Ok(self::first(Ok(outcome))),
            Err(GroupError::Store(error)) => Err(format!("{error:?}")),
            Err(other) => panic!("{other:?}"),
        });
    }
    assert!(
        answers[0].as_ref().unwrap_err().contains("Exhausted"),
        "{answers:?}"
    );
    assert_eq!(answers[1], Ok(1));
    for failed in &answers[2..] {
        assert!(
            failed.as_ref().unwrap_err().contains("injected"),
            "{answers:?}"
        );
    }
    assert_eq!(
        store.calls(),
        [
            vec![1],
            vec![1, 1, 1, 1],
            vec![1, 1],
            vec![1],
            vec![1],
            vec![1, 1]
        ]
    );
    let next = spawn_call(&committer, "globex", 1).await.unwrap();
    assert_eq!(self::first(next), 2, "the failed part took numbers");
}

/// A caller that gives up while queued takes no numbers, and the numbers of the
/// rest of its group are unaffected.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_caller_takes_no_numbers_from_the_others(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = ScriptedStore::new(&db).await;
    let committer = one_lane(&store, 100);

    let first = spawn_call(&committer, "acme", 1);
    wait_for_store_calls(&store, 1).await;
    let before = spawn_call(&committer, "acme", 2);
    wait_for_waiting(&committer, 1).await;
    let cancelled = spawn_call(&committer, "acme", 5);
    wait_for_waiting(&committer, 2).await;
    let after = spawn_call(&committer, "acme", 3);
    wait_for_waiting(&committer, 3).await;
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    store.gate.add_permits(2);

    assert_eq!(self::first(first.await.unwrap()), 1);
    assert_eq!(self::first(before.await.unwrap()), 2);
    assert_eq!(
        self::first(after.await.unwrap()),
        4,
        "the cancelled caller's numbers were not skipped cleanly"
    );
    assert_eq!(store.calls(), [vec![1], vec![2, 3]]);
}

/// A full queue refuses more calls at once instead of growing.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_more_calls(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = ScriptedStore::new(&db).await;
    let committer = one_lane(&store, 2);

    let first = spawn_call(&committer, "acme", 1);
    wait_for_store_calls(&store, 1).await;
    let queued: Vec<_> = (0..2).map(|_| spawn_call(&committer, "acme", 1)).collect();
    wait_for_waiting(&committer, 2).await;
    let refused = spawn_call(&committer, "globex", 1).await.unwrap();
    assert!(matches!(refused, Err(GroupError::QueueFull)), "{refused:?}");

    store.gate.add_permits(2);
    self::first(first.await.unwrap());
    let mut firsts = futures_firsts(queued).await;
    firsts.sort_unstable();
    assert_eq!(firsts, [2, 3]);
}

/// A full queue reaches the caller as RESOURCE_EXHAUSTED with the ALLOCATOR_BUSY reason.
#[test]
fn a_full_queue_is_resource_exhausted() {
    let error: tonic::Status = numbering::allocator::Error::from(GroupError::QueueFull).into();
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert_reason(&error, "ALLOCATOR_BUSY");
}

/// Near the largest number, the calls that still fit get their numbers and only the
/// rest fail, as they would one commit per call.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_end_only_the_calls_that_do_not_fit_fail(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = ScriptedStore::new(&db).await;
    let acme = TenantId::parse("acme").unwrap();
    advance(&store, &acme, i64::MAX - 2).await;
    let committer = one_lane(&store, 100);

    let first = spawn_call(&committer, "acme", 1);
    wait_for_store_calls(&store, 1).await;
    let fits = spawn_call(&committer, "acme", 1);
    wait_for_waiting(&committer, 1).await;
    let too_many = spawn_call(&committer, "acme", 2);
    wait_for_waiting(&committer, 2).await;
    store.gate.add_permits(10);

    assert_eq!(self::first(first.await.unwrap()), i64::MAX - 1);
    assert_eq!(self::first(fits.await.unwrap()), i64::MAX);
    match too_many.await.unwrap() {
        Err(GroupError::Store(error)) => {
            assert!(matches!(*error, StoreError::Exhausted), "{error:?}");
        }
        other => panic!("a call past the end got {other:?}"),
    }
}
