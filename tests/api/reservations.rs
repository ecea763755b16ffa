//! Reserve, Confirm and Release: numbers held by a lease, then confirmed or
//! given back by the series' gap policy, each accounted for by the audit.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use numbering::{
    allocator::{
        CommitMode,
        app::RequestIdSettings,
        group_commit::GroupCommitSettings,
        series::{GapPolicy as SeriesGapPolicy, SeriesName},
        store::{Held, NumberAt, StateChange, StateWrite},
    },
    clock::Clock,
    db::Backend,
    proto::{
        AllocateRequest, AuditSeriesRequest, AuditSeriesResponse, ConfigureSeriesRequest,
        ConfirmRequest, GapPolicy, GetNumberRequest, GetSeriesRequest, ListNumbersRequest,
        NumberRecord, NumberState, ReleaseRequest, ReserveRequest, VoidRequest,
        number_allocator_client::NumberAllocatorClient,
    },
    tenant::TenantId,
};
use rstest_reuse::apply;
use sqlx::{Connection, PgConnection};
use tonic::{Code, Status, transport::Channel};

use crate::{
    backends,
    helpers::{
        ManualClock, TestDb, TestServer, allocate, assert_invalid_field, assert_reason,
        serve_allocator_on,
    },
};

/// An allocator on a fresh database whose clock the test moves, sweeping
/// ended leases every few milliseconds.
struct Reservations {
    db: TestDb,
    _server: TestServer,
    client: NumberAllocatorClient<Channel>,
    clock: Arc<ManualClock>,
}

async fn reservations(backend: Backend) -> Reservations {
    let db = TestDb::create(backend).await;
    let clock = ManualClock::at(START.parse().unwrap());
    let mode = CommitMode::Group(GroupCommitSettings::default());
    let sweeps = RequestIdSettings {
        purge_interval: Duration::from_millis(20),
        ..RequestIdSettings::default()
    };
    let (server, client) = serve_allocator_on(&db, mode, sweeps, clock.clone()).await;
    Reservations {
        db,
        _server: server,
        client,
        clock,
    }
}

/// Number `number` of acme's `series`, as `client` reads its record.
async fn number_of(
    client: &mut NumberAllocatorClient<Channel>,
    series: &str,
    number: i64,
) -> Result<NumberRecord, Status> {
    let request = GetNumberRequest {
        tenant_id: "acme".into(),
        series: series.into(),
        period: String::new(),
        number,
    };
    let answer = client.get_number(request).await?.into_inner();
    Ok(answer.record.expect("a record"))
}

const START: &str = "2026-12-03T10:00:00Z";

fn at(time: &str) -> DateTime<Utc> {
    time.parse().unwrap()
}

fn seconds(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

fn reserve(series: &str) -> ReserveRequest {
    ReserveRequest {
        tenant_id: "acme".into(),
        series: series.into(),
        ..ReserveRequest::default()
    }
}

fn confirm(series: &str, number: i64, reference: &str) -> ConfirmRequest {
    ConfirmRequest {
        tenant_id: "acme".into(),
        series: series.into(),
        number,
        reference: reference.into(),
        ..ConfirmRequest::default()
    }
}

fn release(series: &str, number: i64, reason: &str) -> ReleaseRequest {
    ReleaseRequest {
        tenant_id: "acme".into(),
        series: series.into(),
        number,
        reason: reason.into(),
        ..ReleaseRequest::default()
    }
}

fn with_policy(series: &str, policy: GapPolicy) -> ConfigureSeriesRequest {
    ConfigureSeriesRequest {
        tenant_id: "acme".into(),
        series: series.into(),
        gap_policy: policy.into(),
        ..ConfigureSeriesRequest::default()
    }
}

impl Reservations {
    async fn reserve(&mut self, request: ReserveRequest) -> NumberRecord {
        let answer = self.client.reserve(request).await.unwrap().into_inner();
        answer.record.expect("a record")
    }

    async fn confirm(&mut self, request: ConfirmRequest) -> Result<NumberRecord, Status> {
        let answer = self.client.confirm(request).await?.into_inner();
        Ok(answer.record.expect("a record"))
    }

    async fn release(&mut self, request: ReleaseRequest) -> Result<NumberRecord, Status> {
        let answer = self.client.release(request).await?.into_inner();
        Ok(answer.record.expect("a record"))
    }

    async fn get(&mut self, series: &str, number: i64) -> Result<NumberRecord, Status> {
        number_of(&mut self.client, series, number).await
    }

    async fn audit(&mut self, series: &str) -> AuditSeriesResponse {
        let request = AuditSeriesRequest {
            tenant_id: "acme".into(),
            series: series.into(),
            period: String::new(),
        };
        self.client
            .audit_series(request)
            .await
            .unwrap()
            .into_inner()
    }

    async fn configure(&mut self, series: &str, policy: GapPolicy) {
        self.client
            .configure_series(with_policy(series, policy))
            .await
            .unwrap();
    }
}

/// A reservation holds its number for the default lease, reads back as
/// reserved, and a confirmation records its reference; again with the same
/// reference it answers the same record.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_is_held_then_confirmed(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    let held = app.reserve(reserve("")).await;
    assert_eq!(
        (
            held.number,
            held.formatted.as_str(),
            held.state(),
            held.date.as_str()
        ),
        (1, "INV-001", NumberState::Reserved, "2026-12-03")
    );
    let five_minutes = at("2026-12-03T10:05:00Z");
    assert_eq!(held.expires_at, Some(timestamp(five_minutes)));
    assert_eq!(app.get("", 1).await.unwrap(), held);
    let audit = app.audit("").await;
    assert_eq!((audit.last_value, audit.reserved, audit.issued), (1, 1, 0));

    let confirmed = app.confirm(confirm("", 1, "inv-1")).await.unwrap();
    assert_eq!(
        (confirmed.state(), confirmed.reference.as_str()),
        (NumberState::Confirmed, "inv-1")
    );
    assert_eq!(
        app.confirm(confirm("", 1, "inv-1")).await.unwrap(),
        confirmed
    );
    assert_eq!(app.get("", 1).await.unwrap(), confirmed);
    let audit = app.audit("").await;
    assert_eq!(
        (audit.reserved, audit.confirmed, audit.unaccounted),
        (0, 1, 0)
    );
}

/// A confirmation that meets another write of its number (here another
/// replica's void, committed while the confirmation waits for the row)
/// decides on what that write left, never over it: the number stays voided
/// and the confirmation is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_meets_another_write_decides_on_what_it_left() {
    let mut app = reservations(Backend::Postgres).await;
    let held = app.reserve(reserve("")).await;
    let mut other = PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT 1 FROM number_states WHERE tenant_id = 'acme' AND number = $1 FOR UPDATE")
        .bind(held.number)
        .execute(&mut other)
        .await
        .unwrap();

    let mut client = app.client.clone();
    let confirming =
        tokio::spawn(async move { client.confirm(confirm("", held.number, "inv-1")).await });
    app.db.wait_until_blocked_on_a_lock().await;
    assert!(!confirming.is_finished(), "the confirmation did not wait");
    sqlx::query(
        "UPDATE number_states SET state = 'voided', reason = 'voided elsewhere',
                                  expires_at = NULL, updated_at = now()
         WHERE tenant_id = 'acme' AND number = $1",
    )
    .bind(held.number)
    .execute(&mut other)
    .await
    .unwrap();
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();

    let refused = confirming.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_reason(&refused, "NUMBER_VOIDED");
    let record = app.get("", held.number).await.unwrap();
    assert_eq!(
        (
            record.state(),
            record.reason.as_str(),
            record.reference.as_str()
        ),
        (NumberState::Voided, "voided elsewhere", "")
    );
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    numbering::proto::timestamp(at)
}

/// Released on a series that voids, a number is voided and the next
/// reservation takes a new one; on a series that reissues, it goes back and
/// the next reservations take the lowest given back first. A release
/// repeated answers the same record.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_follows_the_series_policy(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    app.configure("cont", GapPolicy::Reissue).await;

    let first = app.reserve(reserve("")).await.number;
    let voided = app
        .release(release("", first, "order cancelled"))
        .await
        .unwrap();
    assert_eq!(
        (voided.state(), voided.reason.as_str(), voided.expires_at),
        (NumberState::Voided, "order cancelled", None)
    );
    // A repeat (its answer lost) answers the same record.
    let repeated = app.release(release("", first, "order cancelled")).await;
    assert_eq!(repeated.unwrap(), voided, "a repeated release was refused");
    assert_eq!(app.reserve(reserve("")).await.number, 2);
    let audit = app.audit("").await;
    assert_eq!((audit.voided, audit.reserved, audit.unaccounted), (1, 1, 0));

    let first = ReserveRequest {
        request_id: "order-1".into(),
        ..reserve("cont")
    };
    app.reserve(first).await;
    for _ in 0..2 {
        app.reserve(reserve("cont")).await;
    }
    for number in [2, 1] {
        let released = app
            .release(release("cont", number, "refused"))
            .await
            .unwrap();
        assert_eq!(released.state(), NumberState::Released);
        let repeated = app.release(release("cont", number, "refused")).await;
        assert_eq!(
            repeated.unwrap(),
            released,
            "a repeated release was refused"
        );
    }
    let audit = app.audit("cont").await;
    assert_eq!((audit.released, audit.reserved), (2, 1));
    let keyed = ReserveRequest {
        request_id: "order-7".into(),
        ..reserve("cont")
    };
    let again = [
        app.reserve(reserve("cont")).await,
        app.reserve(keyed).await,
        app.reserve(reserve("cont")).await,
    ];
    let numbers: Vec<i64> = again.iter().map(|record| record.number).collect();
    assert_eq!(numbers, [1, 2, 4], "the lowest given back first, then new");
    for record in &again {
        let stored = app.get("cont", record.number).await.unwrap();
        assert_eq!(&stored, record, "answered as stored");
    }
    assert_eq!(again[1].request_id, "order-7");
    let retaken = app.get("cont", 1).await.unwrap();
    assert_eq!(
        (
            retaken.state(),
            retaken.reason.as_str(),
            retaken.formatted.as_str()
        ),
        (NumberState::Reserved, "", "INV-001")
    );
    let audit = app.audit("cont").await;
    assert_eq!(
        (
            audit.last_value,
            audit.released,
            audit.reserved,
            audit.unaccounted
        ),
        (4, 0, 4, 0)
    );
}

/// On a series that reissues, Allocate of one number takes a released one
/// first (issued, without a lease); of more, new ones.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocating_one_number_takes_a_released_one_first(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    app.configure("cont", GapPolicy::Reissue).await;
    app.reserve(reserve("cont")).await;
    app.release(release("cont", 1, "refused")).await.unwrap();

    let two: Vec<i64> = allocated(&mut app, allocate("acme", "cont", 2)).await;
    assert_eq!(two, [2, 3]);
    assert_eq!(allocated(&mut app, allocate("acme", "cont", 1)).await, [1]);
    let taken = app.get("cont", 1).await.unwrap();
    assert_eq!(
        (taken.state(), taken.expires_at),
        (NumberState::Issued, None)
    );
    let audit = app.audit("cont").await;
    assert_eq!((audit.issued, audit.released, audit.unaccounted), (3, 0, 0));
}

/// A reservation whose lease ended and whose range was lost, its row kept:
/// unaccounted, not counted as given back, swept or not, in a series that
/// voids and in one that reissues.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_reservation_whose_range_was_lost_is_unaccounted(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    app.configure("cont", GapPolicy::Reissue).await;
    for series in ["", "cont"] {
        for _ in 0..3 {
            app.reserve(ReserveRequest {
                lease: Some(seconds(60)),
                ..reserve(series)
            })
            .await;
        }
    }
    app.clock.advance(Duration::from_secs(61));
    app.db
        .execute("DELETE FROM allocations WHERE first_value = 2")
        .await;

    for series in ["", "cont"] {
        let audit = app.audit(series).await;
        let given_back = audit.voided + audit.released;
        assert_eq!(
            (given_back, audit.reserved, audit.unaccounted),
            (2, 0, 1),
            "{series:?}: {audit:?}"
        );
        assert_eq!(audit.unaccounted_sample, [2], "{series:?}");
    }
}

async fn allocated(app: &mut Reservations, request: AllocateRequest) -> Vec<i64> {
    let answer = app.client.allocate(request).await.unwrap().into_inner();
    answer.numbers.iter().map(|number| number.value).collect()
}

/// Once its lease ends a reservation stands given back at once, swept or
/// not: voided or released by the policy with the reason "lease expired", a
/// confirmation answers RESERVATION_EXPIRED, and a series that reissues
/// hands it out again. The sweep then stores what it stood for.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_lease_gives_the_number_back(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    app.configure("cont", GapPolicy::Reissue).await;
    let short = |series| ReserveRequest {
        lease: Some(seconds(60)),
        ..reserve(series)
    };
    app.reserve(short("")).await;
    app.reserve(short("cont")).await;
    app.clock.advance(Duration::from_secs(61));

    let ended = timestamp(at("2026-12-03T10:01:00Z"));
    for (series, state) in [("", NumberState::Voided), ("cont", NumberState::Released)] {
        let record = app.get(series, 1).await.unwrap();
        assert_eq!(
            (record.state(), record.reason.as_str(), record.updated_at),
            (state, "lease expired", Some(ended))
        );
        let refused = app.confirm(confirm(series, 1, "inv-1")).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert_reason(&refused, "RESERVATION_EXPIRED");
        let info = tonic_types::StatusExt::get_details_error_info(&refused).unwrap();
        assert_eq!(
            info.metadata["expiredAt"], "2026-12-03T10:01:00Z",
            "{refused:?}"
        );
    }
    let audit = app.audit("").await;
    assert_eq!((audit.voided, audit.reserved), (1, 0));

    // The sweep stores it as it stood; a confirmation is still refused.
    wait_until_swept(&app.db, "", &[1]).await;
    let refused = app.confirm(confirm("", 1, "inv-1")).await.unwrap_err();
    assert_reason(&refused, "RESERVATION_EXPIRED");
    assert_eq!(app.get("", 1).await.unwrap().state(), NumberState::Voided);

    let retaken = app.reserve(reserve("cont")).await;
    assert_eq!(
        (retaken.number, retaken.state()),
        (1, NumberState::Reserved)
    );
    app.confirm(confirm("cont", 1, "inv-2")).await.unwrap();
}

/// A listing by state pages through that state's numbers in order,
/// whichever row stands for them: an ended lease lists as what its series'
/// policy makes of it, before the sweep and after, and a reservation still
/// held lists once, as reserved.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_by_state_counts_ended_leases_as_given_back(#[case] backend: Backend) {
    use NumberState::{Confirmed, Released, Reserved, Voided};
    let mut app = reservations(backend).await;
    app.configure("cont", GapPolicy::Reissue).await;
    let short = |series| ReserveRequest {
        lease: Some(seconds(60)),
        ..reserve(series)
    };
    // "" voids: 1 confirmed, 2 voided, 3 and 5 lease ended, 4 and 6 held.
    for ended in [false, false, true, false, true, false] {
        app.reserve(if ended { short("") } else { reserve("") })
            .await;
    }
    app.confirm(confirm("", 1, "inv-1")).await.unwrap();
    app.release(release("", 2, "cancelled")).await.unwrap();
    // cont reissues: 1 released, 2 lease ended, 3 held, 4 confirmed.
    for ended in [false, true, false, false] {
        let request = if ended {
            short("cont")
        } else {
            reserve("cont")
        };
        app.reserve(request).await;
    }
    app.release(release("cont", 1, "cancelled")).await.unwrap();
    app.confirm(confirm("cont", 4, "inv-2")).await.unwrap();
    app.clock.advance(Duration::from_secs(61));

    let expected: [(&str, NumberState, &[i64]); 8] = [
        ("", Reserved, &[4, 6]),
        ("", Voided, &[2, 3, 5]),
        ("", Confirmed, &[1]),
        ("", Released, &[]),
        ("cont", Released, &[1, 2]),
        ("cont", Reserved, &[3]),
        ("cont", Confirmed, &[4]),
        ("cont", Voided, &[]),
    ];
    for swept in [false, true] {
        if swept {
            wait_until_swept(&app.db, "", &[3, 5]).await;
            wait_until_swept(&app.db, "cont", &[2]).await;
        }
        for (series, state, numbers) in expected {
            for page_size in [1, 2, 100] {
                assert_eq!(
                    listed(&mut app, series, state, page_size).await,
                    numbers,
                    "{series:?} {state:?}, {page_size} a page, swept: {swept}"
                );
            }
        }
    }
}

/// Listing a state other than confirmed reads that state's rows, not the
/// period's: with 300 numbers confirmed, two voided and two held, the
/// listings of voided, held and released numbers read none of the confirmed
/// rows. The index by state leaves confirmed numbers out, so a listing that
/// cannot use it (its statement lost its own `state <> 'confirmed'`) walks
/// the period by key or reads the whole table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_by_state_reads_none_of_the_confirmed_rows() {
    use NumberState::{Released, Reserved, Voided};
    let app = reservations(Backend::Postgres).await;
    let mut reserved = tokio::task::JoinSet::new();
    for _ in 0..304 {
        let mut client = app.client.clone();
        reserved.spawn(async move { client.reserve(reserve("")).await.unwrap() });
    }
    reserved.join_all().await;
    let mut confirmed = tokio::task::JoinSet::new();
    for number in 1..=300 {
        let mut client = app.client.clone();
        let reference = format!("inv-{number}");
        confirmed.spawn(async move {
            client
                .confirm(confirm("", number, &reference))
                .await
                .unwrap()
        });
    }
    confirmed.join_all().await;
    let Reservations {
        db,
        _server: server,
        mut client,
        clock,
    } = app;
    for number in [301, 302] {
        client
            .release(release("", number, "cancelled"))
            .await
            .unwrap();
    }
    drop(server);
    let relations = [
        "number_states",
        "number_states_pkey",
        "number_states_by_state",
    ];
    let before = db.reads_reported(relations).await;

    // Another allocator on the same database lists, sweeping only at start.
    let mode = CommitMode::Group(GroupCommitSettings::default());
    let rare_sweeps = RequestIdSettings {
        purge_interval: Duration::from_hours(1),
        ..RequestIdSettings::default()
    };
    let (server, client) = serve_allocator_on(&db, mode, rare_sweeps, clock.clone()).await;
    let mut app = Reservations {
        db,
        _server: server,
        client,
        clock,
    };
    let expected: [(NumberState, &[i64]); 3] = [
        (Voided, &[301, 302]),
        (Reserved, &[303, 304]),
        (Released, &[]),
    ];
    for (state, numbers) in expected {
        for page_size in [1, 100] {
            assert_eq!(
                listed(&mut app, "", state, page_size).await,
                numbers,
                "{state:?}, {page_size} a page"
            );
        }
    }
    let Reservations {
        db,
        _server: server,
        ..
    } = app;
    drop(server);
    let after = db.reads_reported(relations).await;
    let [scanned, by_key, by_state] = [0, 1, 2].map(|i| after[i] - before[i]);
    assert!(scanned < 300, "the table read whole: {scanned} rows");
    assert!(by_key < 300, "the period walked by key: {by_key} entries");
    assert!(by_state > 0, "the index by state not read");
}

/// On PostgreSQL each connection plans a group of changes once, on the
/// table as it is then: empty on a fresh database, then a few rows long
/// when first analyzed, where a scan beats an index. Groups of
/// confirmations and releases still look each number up by key, and read
/// neither `number_states` whole nor the period's states in the index by
/// state, which they would go on doing for every group as the table grew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_changes_look_each_number_up_by_key_in_a_table_planned_small() {
    let app = unswept(
        Backend::Postgres,
        CommitMode::Group(GroupCommitSettings::default()),
    )
    .await;
    let mut reserved = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let mut client = app.client.clone();
        reserved.spawn(async move { client.reserve(reserve("")).await.unwrap() });
    }
    reserved.join_all().await;
    // Many at once, so that groups hold several numbers.
    let changes = |numbers: std::ops::RangeInclusive<i64>| {
        let mut changed = tokio::task::JoinSet::new();
        for number in numbers {
            let mut client = app.client.clone();
            changed.spawn(async move {
                if number <= 30 {
                    let reference = format!("inv-{number}");
                    client
                        .confirm(confirm("", number, &reference))
                        .await
                        .unwrap();
                } else {
                    client
                        .release(release("", number, "cancelled"))
                        .await
                        .unwrap();
                }
            });
        }
        changed.join_all()
    };
    changes(1..=20).await;
    // Planned again on statistics of a table a few rows long.
    app.db.execute("ANALYZE number_states").await;
    changes(21..=40).await;

    let Reservations {
        db,
        _server: server,
        ..
    } = app;
    drop(server);
    let relations = [
        "number_states",
        "number_states_by_state",
        "number_states_pkey",
    ];
    let [scanned, by_state, by_key] = db.reads_reported(relations).await;
    assert_eq!(scanned, 0, "number_states read whole");
    assert_eq!(by_state, 0, "numbers looked up through the period's states");
    // Each change reads its number's entry twice: to lock it, and to write.
    assert!(by_key <= 80, "the key read whole: {by_key} entries");
    let (tenant, series) = (
        TenantId::parse("acme").unwrap(),
        SeriesName::parse("").unwrap(),
    );
    let rows = db
        .counter_store()
        .await
        .states_between(&tenant, &series, "", (1, 40))
        .await
        .unwrap();
    let states: Vec<&str> = rows.iter().map(|row| row.state.as_str()).collect();
    assert_eq!(
        states,
        [["confirmed"; 30].as_slice(), &["voided"; 10]].concat()
    );
}

/// On PostgreSQL the sweep finds ended leases through the index by lease
/// end and writes each by its place: with ten numbers voided, nine held and
/// one lease ended, a sweep on a connection that planned it on that small,
/// never analyzed table reads none of the numbers voided or held (in the
/// index by state, the index of held leases by series, or the table
/// whole), which it would go on doing as they grew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_reads_the_ended_leases_alone() {
    let Reservations {
        db,
        _server: server,
        mut client,
        clock,
    } = unswept(
        Backend::Postgres,
        CommitMode::Group(GroupCommitSettings::default()),
    )
    .await;
    let mut reserved = tokio::task::JoinSet::new();
    for _ in 0..19 {
        let mut client = client.clone();
        reserved.spawn(async move { client.reserve(reserve("")).await.unwrap() });
    }
    reserved.join_all().await;
    for number in 1..=10 {
        client
            .release(release("", number, "cancelled"))
            .await
            .unwrap();
    }
    let short = ReserveRequest {
        lease: Some(seconds(60)),
        ..reserve("")
    };
    let ending = client.reserve(short).await.unwrap().into_inner();
    assert_eq!(ending.record.expect("a record").number, 20);
    drop(server);
    clock.advance(Duration::from_secs(61));
    let relations = [
        "number_states",
        "number_states_by_state",
        "number_states_leases",
    ];
    let before = db.reads_reported(relations).await;

    // Another allocator sweeps at start: number 20's lease has ended.
    let rare_sweeps = RequestIdSettings {
        purge_interval: Duration::from_hours(1),
        ..RequestIdSettings::default()
    };
    let mode = CommitMode::Group(GroupCommitSettings::default());
    let (server, _client) = serve_allocator_on(&db, mode, rare_sweeps, clock).await;
    wait_until_swept(&db, "", &[20]).await;
    drop(server);
    let after = db.reads_reported(relations).await;
    let [scanned, by_state, held] = [0, 1, 2].map(|i| after[i] - before[i]);
    assert_eq!(scanned, 0, "number_states read whole");
    assert_eq!(by_state, 0, "the ended lease looked for among every state");
    assert_eq!(held, 0, "the ended lease looked for among the held");
    let (tenant, series) = (
        TenantId::parse("acme").unwrap(),
        SeriesName::parse("").unwrap(),
    );
    let store = db.counter_store().await;
    let rows = store
        .states_between(&tenant, &series, "", (11, 20))
        .await
        .unwrap();
    let states: Vec<&str> = rows.iter().map(|row| row.state.as_str()).collect();
    assert_eq!(
        states,
        [["reserved"; 9].as_slice(), &["voided"]].concat(),
        "only the ended lease swept"
    );
}

/// An allocator whose sweep runs at start-up, then not again within a test:
/// leases that end stay unswept.
async fn unswept(backend: Backend, mode: CommitMode) -> Reservations {
    let db = TestDb::create(backend).await;
    let clock = ManualClock::at(START.parse().unwrap());
    let rare_sweeps = RequestIdSettings {
        purge_interval: Duration::from_hours(1),
        ..RequestIdSettings::default()
    };
    let (server, client) = serve_allocator_on(&db, mode, rare_sweeps, clock.clone()).await;
    Reservations {
        db,
        _server: server,
        client,
        clock,
    }
}

/// On a series that reissues, a lease that has ended counts as given back
/// at once: the next reservation takes its number although no sweep has run.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_lease_is_taken_again_before_any_sweep(#[case] backend: Backend) {
    let mut app = unswept(backend, CommitMode::Group(GroupCommitSettings::default())).await;
    app.configure("cont", GapPolicy::Reissue).await;
    let short = ReserveRequest {
        lease: Some(seconds(60)),
        ..reserve("cont")
    };
    app.reserve(short).await;
    app.clock.advance(Duration::from_secs(61));
    assert_eq!(
        stored_states(&app.db, (1, 1)).await,
        ["reserved"],
        "not swept"
    );

    let again = app.reserve(reserve("cont")).await;
    assert_eq!((again.number, again.state()), (1, NumberState::Reserved));
    let audit = app.audit("cont").await;
    assert_eq!(
        (audit.last_value, audit.reserved, audit.released),
        (1, 1, 0)
    );
}

/// A number reserved without a request id, fresh or given back and taken
/// again, is held under none: a change that names one is refused and
/// changes nothing; one that names none settles it.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_naming_a_request_id_is_refused_a_number_reserved_without_one(
    #[case] backend: Backend,
) {
    let mut app = unswept(backend, CommitMode::Group(GroupCommitSettings::default())).await;
    app.configure("cont", GapPolicy::Reissue).await;
    assert_eq!(app.reserve(reserve("cont")).await.number, 1);
    assert_eq!(app.reserve(reserve("cont")).await.number, 2);
    app.release(release("cont", 2, "the invoice was not stored"))
        .await
        .unwrap();
    assert_eq!(app.reserve(reserve("cont")).await.number, 2, "taken again");

    for number in [1, 2] {
        let before = app.get("cont", number).await.unwrap();
        let refused = app
            .confirm(ConfirmRequest {
                request_id: "someone".into(),
                ..confirm("cont", number, "inv-other")
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_reason(&refused, "NOT_THE_HOLDER");
        assert!(
            refused.message().contains("without a request id"),
            "{refused:?}"
        );
        let refused = app
            .release(ReleaseRequest {
                request_id: "someone".into(),
                ..release("cont", number, "not needed")
            })
            .await
            .unwrap_err();
        assert_reason(&refused, "NOT_THE_HOLDER");
        assert_eq!(app.get("cont", number).await.unwrap(), before, "unchanged");

        let confirmed = app
            .confirm(confirm("cont", number, "inv-own"))
            .await
            .unwrap();
        assert_eq!(confirmed.state(), NumberState::Confirmed, "{number}");
    }
}

/// A caller late past its lease, naming the request id it reserved with,
/// can neither confirm nor release the number another call took since; the
/// holder can. Under group commit and one commit per call alike.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_caller_cannot_settle_a_number_another_call_holds(#[case] backend: Backend) {
    for mode in [
        CommitMode::Group(GroupCommitSettings::default()),
        CommitMode::PerCall,
    ] {
        let mut app = unswept(backend, mode).await;
        app.configure("cont", GapPolicy::Reissue).await;
        let late = ReserveRequest {
            lease: Some(seconds(60)),
            request_id: "late".into(),
            ..reserve("cont")
        };
        assert_eq!(app.reserve(late).await.number, 1);
        app.clock.advance(Duration::from_secs(61));
        let held = ReserveRequest {
            request_id: "holder".into(),
            ..reserve("cont")
        };
        let held = app.reserve(held).await;
        assert_eq!(held.number, 1, "the ended lease's number is taken again");

        let refused = app
            .confirm(ConfirmRequest {
                request_id: "late".into(),
                ..confirm("cont", 1, "inv-late")
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_reason(&refused, "NOT_THE_HOLDER");
        let refused = app
            .release(ReleaseRequest {
                request_id: "late".into(),
                ..release("cont", 1, "the invoice was not stored")
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_reason(&refused, "NOT_THE_HOLDER");
        let now = app.get("cont", 1).await.unwrap();
        assert_eq!(
            (now.state(), now.request_id.as_str(), now.expires_at),
            (NumberState::Reserved, "holder", held.expires_at),
            "the holder's reservation is untouched"
        );

        let by_holder = ConfirmRequest {
            request_id: "holder".into(),
            ..confirm("cont", 1, "inv-holder")
        };
        let confirmed = app.confirm(by_holder.clone()).await.unwrap();
        assert_eq!(
            (confirmed.state(), confirmed.reference.as_str()),
            (NumberState::Confirmed, "inv-holder")
        );
        assert_eq!(app.confirm(by_holder).await.unwrap(), confirmed, "repeated");
    }
}

/// A caller late past its lease, naming the request id it reserved with,
/// confirms its number while no call has taken it since: voided or released
/// by the lease's end, swept or not, it is confirmed to the caller, and a
/// series that reissues never hands it out again. Without the request id
/// the confirmation is refused, RESERVATION_EXPIRED. Unswept under group
/// commit and one commit per call, and swept.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_holder_confirms_a_number_whose_lease_ended_untaken(#[case] backend: Backend) {
    let apps = [
        (
            unswept(backend, CommitMode::Group(GroupCommitSettings::default())).await,
            false,
        ),
        (unswept(backend, CommitMode::PerCall).await, false),
        (reservations(backend).await, true),
    ];
    for (mut app, swept) in apps {
        app.configure("cont", GapPolicy::Reissue).await;
        for series in ["", "cont"] {
            let lapsing = ReserveRequest {
                lease: Some(seconds(60)),
                request_id: format!("order-{series}"),
                ..reserve(series)
            };
            assert_eq!(app.reserve(lapsing).await.number, 1);
        }
        app.clock.advance(Duration::from_secs(61));
        if swept {
            wait_until_swept(&app.db, "", &[1]).await;
            wait_until_swept(&app.db, "cont", &[1]).await;
        }

        for series in ["", "cont"] {
            let refused = app.confirm(confirm(series, 1, "inv-1")).await.unwrap_err();
            assert_reason(&refused, "RESERVATION_EXPIRED");
            let by_holder = ConfirmRequest {
                request_id: format!("order-{series}"),
                ..confirm(series, 1, "inv-1")
            };
            let confirmed = app.confirm(by_holder.clone()).await.unwrap();
            assert_eq!(
                (confirmed.state(), confirmed.reference.as_str()),
                (NumberState::Confirmed, "inv-1"),
                "{series:?}, swept: {swept}"
            );
            assert_eq!(app.confirm(by_holder).await.unwrap(), confirmed, "repeated");
            assert_eq!(app.get(series, 1).await.unwrap(), confirmed);
        }
        let audit = app.audit("").await;
        assert_eq!((audit.confirmed, audit.voided), (1, 0), "{audit:?}");
        assert_eq!(app.reserve(reserve("cont")).await.number, 2);
    }
}

/// A series that reissues takes its numbers given back lowest first,
/// released or with a lease ended and not yet swept alike, and never one
/// still held; with none left, a new one. Under group commit and one commit
/// per call alike.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_given_back_are_taken_lowest_first_whatever_gave_them_back(
    #[case] backend: Backend,
) {
    for mode in [
        CommitMode::Group(GroupCommitSettings::default()),
        CommitMode::PerCall,
    ] {
        let mut app = unswept(backend, mode.clone()).await;
        give_back_two_ways(&mut app).await;

        let mut taken = Vec::new();
        for _ in 0..4 {
            taken.push(app.reserve(reserve("cont")).await.number);
        }
        assert_eq!(taken, [2, 4, 5, 7], "{mode:?}");
        let audit = app.audit("cont").await;
        assert_eq!(
            (audit.last_value, audit.reserved, audit.released),
            (7, 7, 0),
            "{mode:?}"
        );
    }
}

/// Reservations of several series that reissue, made at once, share their
/// reads of what each series has given back: each series takes back
/// exactly its own numbers given back, then new ones, and none twice. The
/// series that give numbers back get one call for each, among many calls of
/// a series that gives none: one wrong answer of a shared read leaves a
/// number given back untaken.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_take_back_each_series_own_numbers(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    // Each series: its first numbers, those of them given back, and how
    // many reservations are then made at once.
    let series: [(&str, i64, &[i64], i64); 3] = [
        ("alpha", 5, &[2, 4], 2),
        ("beta", 3, &[], 24),
        ("gamma", 2, &[1], 1),
    ];
    for (name, first, given_back, _) in series {
        app.configure(name, GapPolicy::Reissue).await;
        for _ in 0..first {
            app.reserve(reserve(name)).await;
        }
        for &number in given_back {
            app.release(release(name, number, "cancelled"))
                .await
                .unwrap();
        }
    }

    let mut calls = tokio::task::JoinSet::new();
    for round in 0..24 {
        for (name, _, _, each) in series {
            if round < each {
                let mut client = app.client.clone();
                calls.spawn(async move {
                    let answer = client.reserve(reserve(name)).await.unwrap().into_inner();
                    (name, answer.record.expect("a record").number)
                });
            }
        }
    }
    let taken = calls.join_all().await;
    for (name, first, given_back, each) in series {
        let mut numbers: Vec<i64> = taken
            .iter()
            .filter(|(series, _)| *series == name)
            .map(|(_, number)| *number)
            .collect();
        numbers.sort_unstable();
        let new = each - i64::try_from(given_back.len()).unwrap();
        let expected: Vec<i64> = given_back
            .iter()
            .copied()
            .chain(first + 1..=first + new)
            .collect();
        assert_eq!(numbers, expected, "{name}");
    }
}

/// On PostgreSQL, taking a number back never waits for a row while holding
/// another (a batch of changes locking numbers in order could then deadlock
/// with it): with an ended lease locked by another transaction, a
/// reservation passes over it at once and takes the released number above
/// it; once the lock is gone the lease is taken back, lowest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_back_skips_a_locked_number_without_waiting() {
    let mut app = unswept(
        Backend::Postgres,
        CommitMode::Group(GroupCommitSettings::default()),
    )
    .await;
    give_back_two_ways(&mut app).await;
    let mut other = PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query(
        "SELECT 1 FROM number_states
         WHERE tenant_id = 'acme' AND series = 'cont' AND number = 2 FOR UPDATE",
    )
    .execute(&mut other)
    .await
    .unwrap();

    let mut client = app.client.clone();
    let reserving = client.reserve(reserve("cont"));
    let taken = tokio::select! {
        answer = reserving => answer.unwrap().into_inner().record.expect("a record"),
        () = app.db.wait_until_blocked_on_a_lock() => panic!("taking back waited for a row"),
    };
    assert_eq!(taken.number, 4);
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();

    let mut then = Vec::new();
    for _ in 0..3 {
        then.push(app.reserve(reserve("cont")).await.number);
    }
    assert_eq!(then, [2, 5, 7]);
}

/// Makes "cont" reissue, with numbers 1 to 6 reserved: 1, 3 and 6 held, 2
/// and 5 on a lease that has ended but is not swept, 4 released.
async fn give_back_two_ways(app: &mut Reservations) {
    app.configure("cont", GapPolicy::Reissue).await;
    for ends in [false, true, false, false, true, false] {
        let lease = if ends { seconds(60) } else { seconds(3600) };
        let request = ReserveRequest {
            lease: Some(lease),
            ..reserve("cont")
        };
        app.reserve(request).await;
    }
    app.release(release("cont", 4, "cancelled")).await.unwrap();
    app.clock.advance(Duration::from_secs(61));
    let stored = stored_states(&app.db, (1, 6)).await;
    assert_eq!(
        stored,
        [
            "reserved", "reserved", "reserved", "released", "reserved", "reserved"
        ],
        "not swept"
    );
}

/// The states stored for acme's numbers `first..=last` of "cont", whatever
/// they stand for.
async fn stored_states(db: &TestDb, (first, last): (i64, i64)) -> Vec<String> {
    let store = db.counter_store().await;
    let (tenant, series) = (
        TenantId::parse("acme").unwrap(),
        SeriesName::parse("cont").unwrap(),
    );
    let rows = store
        .states_between(&tenant, &series, "", (first, last))
        .await
        .unwrap();
    rows.into_iter().map(|row| row.state).collect()
}

/// Waits until the background sweep has stored `numbers` of `series` as no
/// longer reserved.
async fn wait_until_swept(db: &TestDb, series: &str, numbers: &[i64]) {
    let store = db.counter_store().await;
    let (tenant, series) = (
        TenantId::parse("acme").unwrap(),
        SeriesName::parse(series).unwrap(),
    );
    let (first, last) = (numbers[0], numbers[numbers.len() - 1]);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let rows = store
                .states_between(&tenant, &series, "", (first, last))
                .await;
            let swept = rows
                .unwrap()
                .iter()
                .all(|row| !numbers.contains(&row.number) || row.state != "reserved");
            if swept {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the sweep gives back the ended leases");
    // Its sessions end now, not when the pool's own tasks let it go.
    store.close().await;
}

/// Every refused change names its reason and changes nothing.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_names_its_reason_and_changes_nothing(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    app.configure("cont", GapPolicy::Reissue).await;
    // cont: 1 confirmed, 2 released, 3 voided, 4 issued by Allocate, 5 expired.
    for _ in 0..3 {
        app.reserve(reserve("cont")).await;
    }
    app.confirm(confirm("cont", 1, "inv-1")).await.unwrap();
    app.release(release("cont", 2, "refused")).await.unwrap();
    app.client
        .void(VoidRequest {
            tenant_id: "acme".into(),
            series: "cont".into(),
            number: 3,
            reason: "typo".into(),
            ..VoidRequest::default()
        })
        .await
        .unwrap();
    app.client
        .allocate(allocate("acme", "cont", 2))
        .await
        .unwrap();
    let short = ReserveRequest {
        lease: Some(seconds(1)),
        ..reserve("other")
    };
    app.reserve(short).await;
    app.clock.advance(Duration::from_secs(2));

    let mut before = Vec::new();
    for number in 1..=5 {
        before.push(app.get("cont", number).await.unwrap());
    }
    let cases: Vec<(Result<NumberRecord, Status>, &str)> = vec![
        (
            app.confirm(confirm("cont", 1, "inv-2")).await,
            "ALREADY_CONFIRMED",
        ),
        (
            app.release(release("cont", 1, "x")).await,
            "NUMBER_CONFIRMED",
        ),
        (
            app.confirm(confirm("cont", 2, "inv-2")).await,
            "NUMBER_RELEASED",
        ),
        (
            app.release(release("cont", 2, "again")).await,
            "NUMBER_RELEASED",
        ),
        (
            app.confirm(confirm("cont", 3, "inv-3")).await,
            "NUMBER_VOIDED",
        ),
        (app.release(release("cont", 3, "x")).await, "NUMBER_VOIDED"),
        (
            app.release(release("cont", 4, "x")).await,
            "NUMBER_NOT_RESERVED",
        ),
        (
            app.confirm(confirm("other", 1, "inv-5")).await,
            "RESERVATION_EXPIRED",
        ),
        (
            app.confirm(confirm("cont", 99, "inv-9")).await,
            "NUMBER_NOT_FOUND",
        ),
        (
            app.release(release("cont", 99, "x")).await,
            "NUMBER_NOT_FOUND",
        ),
    ];
    for (answer, reason) in cases {
        let status = answer.expect_err(reason);
        let code = if reason == "NUMBER_NOT_FOUND" {
            Code::NotFound
        } else {
            Code::FailedPrecondition
        };
        assert_eq!(status.code(), code, "{reason}: {status:?}");
        assert_reason(&status, reason);
    }
    for (number, record) in (1..=5).zip(&before) {
        assert_eq!(&app.get("cont", number).await.unwrap(), record, "{number}");
    }
    let other = app.get("other", 1).await.unwrap();
    assert_eq!(other.state(), NumberState::Voided);
}

/// A lease under a second, over the maximum, or negative (to the least
/// value its fields hold) is refused by field; nothing is reserved.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_out_of_bounds_is_refused(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    let bad = [
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 500_000_000,
        }),
        Some(seconds(24 * 3600 + 1)),
        Some(seconds(-5)),
        // Negated by a careless conversion, it overflows.
        Some(seconds(i64::MIN)),
        Some(prost_types::Duration {
            seconds: 0,
            nanos: i32::MIN,
        }),
    ];
    for lease in bad {
        let request = ReserveRequest {
            lease,
            ..reserve("")
        };
        let status = app.client.reserve(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{lease:?}");
        assert_invalid_field(&status, "lease");
    }
    let longer = ReserveRequest {
        lease: Some(seconds(24 * 3600 + 1)),
        ..reserve("")
    };
    let status = app.client.reserve(longer).await.unwrap_err();
    assert!(
        status
            .message()
            .contains("must be at most 86400s, this allocator's --max-lease"),
        "{status:?}"
    );
    let series = GetSeriesRequest {
        tenant_id: "acme".into(),
        ..GetSeriesRequest::default()
    };
    let status = app.client.get_series(series).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "no series was created");

    let longest = ReserveRequest {
        lease: Some(seconds(24 * 3600)),
        ..reserve("")
    };
    let held = app.reserve(longest).await;
    assert_eq!(held.expires_at, Some(timestamp(at("2026-12-04T10:00:00Z"))));
}

/// A repeated Reserve answers the number its first call reserved, on a
/// series of either policy, also when the first took a number back.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_reservation_answers_the_same_number(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    app.configure("cont", GapPolicy::Reissue).await;
    for series in ["", "cont"] {
        // Request ids are the tenant's: one set per series here. A lease
        // finer than the microseconds times are kept in ends as kept.
        let keyed = |id: &str| ReserveRequest {
            request_id: format!("{series}{id}"),
            lease: Some(prost_types::Duration {
                seconds: 60,
                nanos: 500,
            }),
            ..reserve(series)
        };
        let first = app
            .client
            .reserve(keyed("order-1"))
            .await
            .unwrap()
            .into_inner();
        let again = app
            .client
            .reserve(keyed("order-1"))
            .await
            .unwrap()
            .into_inner();
        assert!(!first.replayed && again.replayed);
        assert_eq!(first.record, again.record);
        app.release(release(series, 1, "refused")).await.unwrap();

        let next = app
            .client
            .reserve(keyed("order-2"))
            .await
            .unwrap()
            .into_inner();
        let repeat = app
            .client
            .reserve(keyed("order-2"))
            .await
            .unwrap()
            .into_inner();
        let expected = if series == "cont" { 1 } else { 2 };
        let record = next.record.unwrap();
        let id = format!("{series}order-2");
        assert_eq!(
            (record.number, record.request_id.as_str()),
            (expected, id.as_str())
        );
        assert!(repeat.replayed);
        assert_eq!(repeat.record.unwrap().number, expected);
    }
}

/// A Reserve that only repeats answers what an earlier call under its
/// request id reserved, as a repeat does, and reserves nothing for a request
/// id no call reserved under: NOT_FOUND, the series untouched. It needs a
/// request id, and one first used by Allocate is refused as reused.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_repeated_only_reserves_nothing_new(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    let repeat_only = |id: &str| ReserveRequest {
        request_id: id.into(),
        repeat_only: true,
        ..reserve("")
    };
    let status = app
        .client
        .reserve(repeat_only("never-sent"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_reason(&status, "REQUEST_ID_NOT_FOUND");
    assert!(status.message().contains("never-sent"), "{status:?}");
    // Not even the series was made.
    let unmade = app
        .client
        .audit_series(AuditSeriesRequest {
            tenant_id: "acme".into(),
            ..AuditSeriesRequest::default()
        })
        .await
        .unwrap_err();
    assert_reason(&unmade, "SERIES_NOT_FOUND");

    let first = app
        .client
        .reserve(ReserveRequest {
            request_id: "order-1".into(),
            ..reserve("")
        })
        .await
        .unwrap()
        .into_inner();
    let repeated = app
        .client
        .reserve(repeat_only("order-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(repeated.replayed);
    assert_eq!(repeated.record, first.record);

    let status = app.client.reserve(repeat_only("")).await.unwrap_err();
    assert_invalid_field(&status, "request_id");
    app.client
        .allocate(AllocateRequest {
            request_id: "order-2".into(),
            ..allocate("acme", "", 1)
        })
        .await
        .unwrap();
    let status = app
        .client
        .reserve(repeat_only("order-2"))
        .await
        .unwrap_err();
    assert_reason(&status, "REQUEST_ID_REUSED");
    let audit = app.audit("").await;
    assert_eq!((audit.last_value, audit.reserved), (2, 1), "{audit:?}");
}

/// A repeated Reserve whose number another call has taken since its lease
/// ran out is refused, naming the holder, so that no two callers are told
/// one number is theirs; until then, and for the holder, it is answered as
/// the number stands.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_reservation_whose_number_was_taken_is_refused(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    app.configure("cont", GapPolicy::Reissue).await;
    let keyed = |id: &str, lease: i64| ReserveRequest {
        request_id: id.into(),
        lease: Some(seconds(lease)),
        ..reserve("cont")
    };
    let first = app.reserve(keyed("short", 1)).await;
    assert_eq!(first.number, 1);
    app.clock.advance(Duration::from_secs(2));
    // Given back by its lease's end, and not taken since: still the
    // holder's to confirm late.
    let ended = app
        .client
        .reserve(keyed("short", 1))
        .await
        .unwrap()
        .into_inner();
    assert!(ended.replayed);
    let ended = ended.record.unwrap();
    assert_eq!(
        (ended.number, ended.state(), ended.reason.as_str()),
        (1, NumberState::Released, "lease expired")
    );

    let taken = app.reserve(keyed("taker", 60)).await;
    assert_eq!((taken.number, taken.request_id.as_str()), (1, "taker"));
    let status = app.client.reserve(keyed("short", 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_reason(&status, "NOT_THE_HOLDER");
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(info.metadata["requestId"], "taker");
    // The holder's own repeats are answered, held and then confirmed.
    let again = app
        .client
        .reserve(keyed("taker", 60))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.record.unwrap(), taken);
    app.confirm(confirm("cont", 1, "inv-1")).await.unwrap();
    let confirmed = app
        .client
        .reserve(keyed("taker", 60))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.record.unwrap().state(), NumberState::Confirmed);
    let audit = app.audit("cont").await;
    assert_eq!(
        (audit.last_value, audit.confirmed, audit.unaccounted),
        (1, 1, 0)
    );
}

/// A request id first used by `Reserve` is refused to `Allocate`, and the
/// other way round, so that a number one call holds is never answered to
/// the other as its own; on a series that reissues, also while a number is
/// given back (one-number calls then try to take it back first).
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_of_one_call_is_refused_to_the_other(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    app.configure("cont", GapPolicy::Reissue).await;
    let reserve_with = |id: &str| ReserveRequest {
        request_id: id.into(),
        ..reserve("cont")
    };
    let allocate_with = |id: &str| AllocateRequest {
        tenant_id: "acme".into(),
        series: "cont".into(),
        count: 1,
        request_id: id.into(),
        ..AllocateRequest::default()
    };
    let held = app.reserve(reserve_with("reserved")).await;
    assert_eq!(allocated(&mut app, allocate_with("allocated")).await, [2]);
    for given_back in [false, true] {
        if given_back {
            let third = app.reserve(reserve("cont")).await;
            app.release(release("cont", third.number, "not used"))
                .await
                .unwrap();
        }
        let refused = app
            .client
            .allocate(allocate_with("reserved"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_reason(&refused, "REQUEST_ID_REUSED");
        assert!(refused.message().contains("by Reserve"), "{refused:?}");
        let refused = app
            .client
            .reserve(reserve_with("allocated"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_reason(&refused, "REQUEST_ID_REUSED");
        assert!(refused.message().contains("by Allocate"), "{refused:?}");
    }
    // Each call's own repeat still answers what it got.
    let again = app.client.reserve(reserve_with("reserved")).await.unwrap();
    assert_eq!(again.into_inner().record.unwrap(), held);
    assert_eq!(allocated(&mut app, allocate_with("allocated")).await, [2]);
    let audit = app.audit("cont").await;
    assert_eq!(
        (
            audit.last_value,
            audit.reserved,
            audit.issued,
            audit.released
        ),
        (3, 1, 1, 1),
        "{audit:?}"
    );
}

/// A series configured to reissue by one allocator process, before its
/// first number, after another process had looked at it: the other follows
/// the policy the series has, not the one it saw first.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_policy_set_in_one_process_is_followed_by_another(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    let mode = || CommitMode::Group(GroupCommitSettings::default());
    let clock = ManualClock::at(START.parse().unwrap());
    let (_one, mut first) =
        serve_allocator_on(&db, mode(), RequestIdSettings::default(), clock.clone()).await;
    let (_two, mut second) =
        serve_allocator_on(&db, mode(), RequestIdSettings::default(), clock).await;
    // The first process looks at the series before it exists.
    let missing = first
        .confirm(confirm("cont", 1, "inv-1"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    second
        .configure_series(with_policy("cont", GapPolicy::Reissue))
        .await
        .unwrap();
    // The second process reserves; the first gives the number back.
    let held = second.reserve(reserve("cont")).await.unwrap().into_inner();
    let number = held.record.unwrap().number;
    let released = first
        .release(release("cont", number, "not used"))
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(released.state(), NumberState::Released, "{released:?}");
    let again = first.reserve(reserve("cont")).await.unwrap().into_inner();
    assert_eq!(again.record.unwrap().number, number, "taken back");
}

/// The gap policy shows on the series, and is fixed once the series has
/// handed out a number.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gap_policy_is_fixed_once_in_use(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    let created = app
        .client
        .configure_series(with_policy("cont", GapPolicy::Reissue))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.series.unwrap().gap_policy(), GapPolicy::Reissue);
    app.configure("cont", GapPolicy::Void).await;
    app.configure("cont", GapPolicy::Reissue).await;
    app.reserve(reserve("cont")).await;

    let status = app
        .client
        .configure_series(with_policy("cont", GapPolicy::Void))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_reason(&status, "SERIES_IN_USE");
    let series = GetSeriesRequest {
        tenant_id: "acme".into(),
        series: "cont".into(),
        ..GetSeriesRequest::default()
    };
    let shown = app.client.get_series(series).await.unwrap().into_inner();
    assert_eq!(shown.series.unwrap().gap_policy(), GapPolicy::Reissue);
}

/// What a client did last with a number: what the audit must count it as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    Confirmed,
    GivenBack,
}

/// 32 clients reserve numbers at random and confirm, release or abandon
/// each. Once every lease has ended the audit accounts for every number as
/// the clients' own records say; on a series that reissues, reserving and
/// confirming until nothing is given back leaves exactly
/// `1..=last_value` confirmed.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_clients_leave_every_number_accounted_for(#[case] backend: Backend) {
    for policy in [GapPolicy::Void, GapPolicy::Reissue] {
        let mut app = reservations(backend).await;
        app.configure("", policy).await;
        // A client notes what it does before it asks, so that a number's
        // next holder, who can only get it once the ask has committed,
        // notes after it.
        let last: Arc<Mutex<HashMap<i64, Last>>> = Arc::default();
        let mut clients = Vec::new();
        for client in 0..32_u64 {
            let mut allocator = app.client.clone();
            let last = last.clone();
            clients.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(client);
                for op in 0..8 {
                    let held = allocator.reserve(reserve("")).await.unwrap().into_inner();
                    let number = held.record.unwrap().number;
                    let note = |what| last.lock().unwrap().insert(number, what);
                    match rng.u8(0..3) {
                        0 => {
                            note(Last::Confirmed);
                            let reference = format!("inv-{client}-{op}");
                            allocator
                                .confirm(confirm("", number, &reference))
                                .await
                                .unwrap();
                        }
                        1 => {
                            note(Last::GivenBack);
                            allocator
                                .release(release("", number, "refused"))
                                .await
                                .unwrap();
                        }
                        _ => {
                            // Abandoned: its lease ends below.
                            note(Last::GivenBack);
                        }
                    }
                }
            }));
        }
        for client in clients {
            client.await.unwrap();
        }
        app.clock.advance(Duration::from_mins(6));

        let last = last.lock().unwrap().clone();
        let confirmed = last.values().filter(|l| **l == Last::Confirmed).count();
        let given_back = last.len() - confirmed;
        let audit = app.audit("").await;
        let (released, voided) = match policy {
            GapPolicy::Reissue => (audit.released, audit.voided),
            _ => (audit.voided, audit.released),
        };
        assert_eq!(
            (
                audit.unaccounted,
                audit.issued,
                audit.reserved,
                audit.confirmed,
                released,
                voided,
                audit.last_value,
            ),
            (
                0,
                0,
                0,
                i64::try_from(confirmed).unwrap(),
                i64::try_from(given_back).unwrap(),
                0,
                i64::try_from(last.len()).unwrap(),
            ),
            "{policy:?}"
        );
        if policy == GapPolicy::Reissue {
            let mut drained = 0;
            while app.audit("").await.released > 0 {
                let number = app.reserve(reserve("")).await.number;
                app.confirm(confirm("", number, &format!("late-{drained}")))
                    .await
                    .unwrap();
                drained += 1;
            }
            assert_eq!(
                drained, given_back,
                "every number given back is taken again"
            );
            let audit = app.audit("").await;
            assert_eq!(
                (audit.confirmed, audit.last_value),
                (audit.last_value, i64::try_from(last.len()).unwrap())
            );
            let listed = listed(&mut app, "", NumberState::Confirmed, 100).await;
            assert_eq!(listed, (1..=audit.last_value).collect::<Vec<_>>());
        }
    }
}

/// Every number of `series` listed in `state`, `page_size` to a page.
async fn listed(
    app: &mut Reservations,
    series: &str,
    state: NumberState,
    page_size: i32,
) -> Vec<i64> {
    let mut numbers = Vec::new();
    let mut token = String::new();
    loop {
        let request = ListNumbersRequest {
            tenant_id: "acme".into(),
            series: series.into(),
            state: state.into(),
            page_size,
            page_token: token,
            ..ListNumbersRequest::default()
        };
        let page = app.client.list_numbers(request).await.unwrap().into_inner();
        assert!(page.records.iter().all(|record| record.state() == state));
        numbers.extend(page.records.iter().map(|record| record.number));
        token = page.next_page_token;
        if token.is_empty() {
            return numbers;
        }
    }
}

/// A batch of changes reads each number's own range, whatever the order and
/// the series of the changes beside it: a reserved number, another series'
/// number, a number inside a range of several, and one never handed out.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_changes_reads_each_numbers_own_range(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    // cont: 1, 2 and 3 reserved, 4-5 one allocation; other: 1 reserved.
    for _ in 0..3 {
        app.reserve(reserve("cont")).await;
    }
    app.client
        .allocate(allocate("acme", "cont", 2))
        .await
        .unwrap();
    app.reserve(reserve("other")).await;

    let tenant = TenantId::parse("acme").unwrap();
    let (cont, other) = (
        SeriesName::parse("cont").unwrap(),
        SeriesName::parse("other").unwrap(),
    );
    let held = Held {
        policy: SeriesGapPolicy::Void,
        now: app.clock.now(),
    };
    let change = |series, number, reference| StateWrite {
        at: NumberAt {
            tenant: &tenant,
            series,
            period: "",
            number,
        },
        change: StateChange::Confirm {
            reference,
            holder: None,
        },
        held,
    };
    let writes = [
        change(&cont, 3, "inv-3"),
        change(&other, 1, "other-1"),
        change(&cont, 9, "inv-9"),
        change(&cont, 5, "inv-5"),
        change(&cont, 1, "inv-1"),
    ];
    let store = app.db.counter_store().await;
    let answers = store.change_states(&writes).await.unwrap();
    let read: Vec<Result<(i64, i64, String, String), String>> = answers
        .into_iter()
        .map(|answer| match answer {
            Ok((range, row)) => {
                let row = row.expect("a confirmed number has a state row");
                Ok((range.first_value, range.count, range.kind, row.reference))
            }
            Err(error) => Err(format!("{error:?}")),
        })
        .collect();
    let range = |first, count, kind: &str, reference: &str| {
        Ok((first, count, kind.to_owned(), reference.to_owned()))
    };
    assert_eq!(
        read,
        vec![
            range(3, 1, "reserve", "inv-3"),
            range(1, 1, "reserve", "other-1"),
            Err("NotHandedOut { skipped: false }".to_owned()),
            range(4, 2, "allocate", "inv-5"),
            range(1, 1, "reserve", "inv-1"),
        ]
    );
}

/// A confirmation, release or void sent within a lease, but committed after
/// the series handed the number out again, finds another holding: refused
/// (`NUMBER_REISSUED`, naming the request id it is held under now), and the
/// number stays with its new holder. Two replicas on one database, the
/// second's clock past the lease: what the second does comes between the
/// first's call and its commit, as when that call waits on a slow database.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_sent_within_a_lease_leaves_the_number_handed_out_again(#[case] backend: Backend) {
    let mut app = reservations(backend).await;
    app.configure("cont", GapPolicy::Reissue).await;
    let first = ReserveRequest {
        lease: Some(seconds(60)),
        ..reserve("cont")
    };
    let number = app.reserve(first).await.number;
    let later = ManualClock::at(at(START) + chrono::TimeDelta::minutes(2));
    let (_replica, mut replica) = serve_allocator_on(
        &app.db,
        CommitMode::Group(GroupCommitSettings::default()),
        RequestIdSettings::default(),
        later,
    )
    .await;
    // The replica's first sweep of ended leases, at its start, stores the
    // number given back: a reservation taking it back at the same moment
    // would skip the row the sweep holds, and take a new number.
    app.db.wait_until_given_back("cont", number).await;
    let again = ReserveRequest {
        request_id: "order-2".into(),
        ..reserve("cont")
    };
    let taken = replica.reserve(again).await.unwrap().into_inner();
    assert_eq!(taken.record.unwrap().number, number);

    let reissued = |status: Status| {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_reason(&status, "NUMBER_REISSUED");
        let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
        assert_eq!(info.metadata["requestId"], "order-2", "{status:?}");
    };
    reissued(
        app.confirm(confirm("cont", number, "inv-1"))
            .await
            .unwrap_err(),
    );
    reissued(
        app.release(release("cont", number, "refused"))
            .await
            .unwrap_err(),
    );
    let void = VoidRequest {
        tenant_id: "acme".into(),
        series: "cont".into(),
        number,
        reason: "typo".into(),
        ..VoidRequest::default()
    };
    reissued(app.client.void(void).await.unwrap_err());

    let record = number_of(&mut replica, "cont", number).await.unwrap();
    assert_eq!(
        (
            record.state(),
            record.request_id.as_str(),
            record.reference.as_str()
        ),
        (NumberState::Reserved, "order-2", "")
    );
}
