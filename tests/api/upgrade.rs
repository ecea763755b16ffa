//! Databases written before series had periods keep every number: after the
//! migrations, counters continue, request ids replay their first numbers,
//! the ledger keeps its ranges and stored invoices read back.

use std::{path::Path, sync::Arc};

use chrono::Utc;
use numbering::{
    allocator::{CommitMode, app::RequestIdSettings, group_commit::GroupCommitSettings},
    clock::SystemClock,
    db::Backend,
    proto::{
        AuditSeriesRequest, ConfigureSeriesRequest, GetNumberRequest, ListInvoicesRequest,
        NumberState, ReserveRequest, number_allocator_client::NumberAllocatorClient,
    },
};
use rstest_reuse::apply;
use sqlx::{AssertSqlSafe, Connection, PgConnection, SqliteConnection, migrate::Migrator};
use tonic::transport::Channel;

use crate::{
    backends,
    helpers::{
        TestDb, TestServer, allocate, allocator_client, assert_reason, keyed, serve_allocator_on,
        spawn_writer_on, test_settings,
    },
};

/// Runs the first `count` migrations of `dir` (under `migrations/`) on `db`,
/// as a database of that version would have them.
async fn migrate_to(db: &TestDb, dir: &str, count: usize) {
    let engine = match db.backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(engine)
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&source)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let old = tempfile::tempdir().unwrap();
    for file in &files[..count] {
        std::fs::copy(file, old.path().join(file.file_name().unwrap())).unwrap();
    }
    let migrator = Migrator::new(old.path()).await.unwrap();
    run(db, &[], Some(&migrator)).await;
}

/// An allocator on `db`, migrating it to this release, under group commit.
async fn serve(db: &TestDb) -> (TestServer, NumberAllocatorClient<Channel>) {
    let mode = CommitMode::Group(GroupCommitSettings::default());
    serve_allocator_on(
        db,
        mode,
        RequestIdSettings::default(),
        Arc::new(SystemClock),
    )
    .await
}

/// Runs `migrator`, then each statement of `sql`, on `db`.
async fn run(db: &TestDb, sql: &[&str], migrator: Option<&Migrator>) {
    match db.backend {
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await.unwrap();
            if let Some(migrator) = migrator {
                migrator.run(&mut conn).await.unwrap();
            }
            for statement in sql {
                let statement = AssertSqlSafe(statement.to_string());
                sqlx::query(statement).execute(&mut conn).await.unwrap();
            }
        }
        Backend::Sqlite => {
            let options: sqlx::sqlite::SqliteConnectOptions = db.url.parse().unwrap();
            let mut conn = SqliteConnection::connect_with(&options.create_if_missing(true))
                .await
                .unwrap();
            if let Some(migrator) = migrator {
                migrator.run(&mut conn).await.unwrap();
            }
            for statement in sql {
                let statement = AssertSqlSafe(statement.to_string());
                sqlx::query(statement).execute(&mut conn).await.unwrap();
            }
        }
    }
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocator_database_from_before_periods_keeps_its_numbers(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    migrate_to(&db, "allocator", 2).await;
    run(
        &db,
        &[
            "INSERT INTO counters (tenant_id, series, last_value, format)
             VALUES ('acme', 'invoice', 41, 'INV-{number:03}')",
            "INSERT INTO allocations (tenant_id, series, first_value, count, kind, request_id, created_at)
             VALUES ('acme', 'invoice', 1, 40, 'allocate', NULL, '2026-11-30T10:00:00+00:00'),
                    ('acme', 'invoice', 41, 1, 'allocate', 'k', '2026-12-01T10:00:00+00:00')",
            // Recent enough to be kept: the window is a day.
            "INSERT INTO request_ids (tenant_id, request_id, series, count, first_value, created_at)
             VALUES ('acme', 'k', 'invoice', 1, 41, '2099-01-01T00:00:00+00:00')",
        ],
        None,
    )
    .await;

    let (_server, mut client) = serve(&db).await;
    let replay = client
        .allocate(keyed("acme", "", 1, "k"))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.numbers[0].formatted, "INV-041");
    let next = client
        .allocate(keyed("acme", "", 1, "next"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (next.numbers[0].value, next.numbers[0].formatted.as_str()),
        (42, "INV-042")
    );

    let ledger: Vec<_> = db
        .ledger_texts()
        .await
        .into_iter()
        .map(|(_, period, first, format, date)| (period, first, format, date))
        .collect();
    let today = Utc::now().date_naive().to_string();
    let row = |first, date: &str| {
        (
            String::new(),
            first,
            "INV-{number:03}".to_owned(),
            date.to_owned(),
        )
    };
    assert_eq!(
        ledger,
        [row(1, "2026-11-30"), row(41, "2026-12-01"), row(42, &today)]
    );
}

/// Numbers handed out before the ledger was kept are recorded by the
/// migrations, so that an audit accounts for every number.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_from_before_the_ledger_are_accounted_for(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    migrate_to(&db, "allocator", 1).await;
    run(
        &db,
        &[
            "INSERT INTO counters (tenant_id, series, last_value, format, created_at)
             VALUES ('acme', 'invoice', 41, 'INV-{number:03}', '2026-06-30T10:00:00+00:00'),
                    ('globex', 'invoice', 0, 'INV-{number:03}', '2026-06-30T10:00:00+00:00')",
        ],
        None,
    )
    .await;

    let (_server, mut client) = serve(&db).await;
    client.allocate(allocate("acme", "", 2)).await.unwrap();
    let audit = |tenant: &str| AuditSeriesRequest {
        tenant_id: tenant.into(),
        ..AuditSeriesRequest::default()
    };
    let acme = client
        .audit_series(audit("acme"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (acme.last_value, acme.issued, acme.unaccounted),
        (43, 43, 0)
    );
    let globex = client
        .audit_series(audit("globex"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (globex.last_value, globex.issued, globex.unaccounted),
        (0, 0, 0)
    );
    let ledger: Vec<_> = db
        .ledger_texts()
        .await
        .into_iter()
        .map(|(_, _, first, _, date)| (first, date))
        .collect();
    let today = Utc::now().date_naive().to_string();
    assert_eq!(ledger, [(1, "2026-06-30".to_owned()), (42, today)]);
}

/// Numbers confirmed or voided before reservations existed keep their
/// state, and the audit still accounts for every number.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn number_states_from_before_reservations_are_kept(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    migrate_to(&db, "allocator", 5).await;
    run(
        &db,
        &[
            "INSERT INTO series (tenant_id, series, format, created_at)
             VALUES ('acme', 'invoice', 'INV-{number:03}', '2026-11-30T10:00:00+00:00')",
            "INSERT INTO counters (tenant_id, series, period, last_value, base, created_at)
             VALUES ('acme', 'invoice', '', 3, 0, '2026-11-30T10:00:00+00:00')",
            "INSERT INTO allocations (tenant_id, series, period, first_value, count, kind,
                                      format, date, created_at)
             VALUES ('acme', 'invoice', '', 1, 3, 'allocate', 'INV-{number:03}', '2026-11-30',
                     '2026-11-30T10:00:00+00:00')",
            "INSERT INTO number_states (tenant_id, series, period, number, state, reference,
                                        reason, updated_at)
             VALUES ('acme', 'invoice', '', 1, 'confirmed', 'inv-1', '',
                     '2026-11-30T11:00:00+00:00'),
                    ('acme', 'invoice', '', 2, 'voided', '', 'typo',
                     '2026-11-30T11:00:00+00:00')",
        ],
        None,
    )
    .await;

    let (_server, mut client) = serve(&db).await;
    let audit = client
        .audit_series(AuditSeriesRequest {
            tenant_id: "acme".into(),
            ..AuditSeriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            audit.last_value,
            audit.issued,
            audit.confirmed,
            audit.voided,
            audit.unaccounted
        ),
        (3, 1, 1, 1, 0)
    );
    let first = client
        .get_number(GetNumberRequest {
            tenant_id: "acme".into(),
            number: 1,
            ..GetNumberRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(
        (first.state(), first.reference.as_str()),
        (NumberState::Confirmed, "inv-1")
    );
}

/// A counter an `AdvanceCounter` that skipped nothing left in a period not
/// yet begun, before such counters were taken away, is taken away by the
/// migrations: the period begins at the start its series was given since.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_that_handed_out_nothing_leaves_its_period_not_begun(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    // Every migration but the one that takes such counters away.
    let before = match backend {
        Backend::Postgres => 11,
        Backend::Sqlite => 10,
    };
    migrate_to(&db, "allocator", before).await;
    run(
        &db,
        &[
            "INSERT INTO series (tenant_id, series, format, reset)
             VALUES ('acme', 'invoice', '{year}-{number}', 'yearly')",
            "INSERT INTO counters (tenant_id, series, period, last_value, base)
             VALUES ('acme', 'invoice', '2025', 0, 0)",
        ],
        None,
    )
    .await;

    let (_server, mut client) = serve(&db).await;
    client
        .configure_series(ConfigureSeriesRequest {
            tenant_id: "acme".into(),
            start_at: 1000,
            ..ConfigureSeriesRequest::default()
        })
        .await
        .unwrap();
    let mut first = allocate("acme", "", 1);
    first.date = "2025-06-01".into();
    let first = client.allocate(first).await.unwrap().into_inner();
    assert_eq!(first.numbers[0].formatted, "2025-1000");
}

/// Request ids stored before they recorded which call used them: a
/// reservation's id still repeats its reservation, an allocation's its
/// numbers, and neither is answered to the other call.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_from_before_their_kinds_repeat_their_own_call(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    // Every migration but the one that adds the kinds.
    let before = match backend {
        Backend::Postgres => 10,
        Backend::Sqlite => 9,
    };
    migrate_to(&db, "allocator", before).await;
    // Created far ahead, so that no retention window has passed them.
    run(
        &db,
        &[
            "INSERT INTO series (tenant_id, series, format, created_at)
             VALUES ('acme', 'invoice', 'INV-{number:03}', '2026-11-30T10:00:00+00:00')",
            "INSERT INTO counters (tenant_id, series, period, last_value, base, created_at)
             VALUES ('acme', 'invoice', '', 2, 0, '2026-11-30T10:00:00+00:00')",
            "INSERT INTO allocations (tenant_id, series, period, first_value, count, kind,
                                      request_id, format, date, created_at)
             VALUES ('acme', 'invoice', '', 1, 1, 'reserve', 'held', 'INV-{number:03}',
                     '2026-11-30', '2026-11-30T10:00:00+00:00'),
                    ('acme', 'invoice', '', 2, 1, 'allocate', 'issued', 'INV-{number:03}',
                     '2026-11-30', '2026-11-30T10:00:00+00:00')",
            "INSERT INTO number_states (tenant_id, series, period, number, state, origin,
                                        expires_at, request_id, reference, reason, updated_at)
             VALUES ('acme', 'invoice', '', 1, 'reserved', 'reserve',
                     '2099-01-01T00:00:00+00:00', 'held', '', '', '2026-11-30T10:00:00+00:00')",
            "INSERT INTO request_ids (tenant_id, request_id, series, count, period, first_value,
                                      format, date, created_at)
             VALUES ('acme', 'held', 'invoice', 1, '', 1, 'INV-{number:03}', '2026-11-30',
                     '2099-01-01T00:00:00+00:00'),
                    ('acme', 'issued', 'invoice', 1, '', 2, 'INV-{number:03}', '2026-11-30',
                     '2099-01-01T00:00:00+00:00')",
        ],
        None,
    )
    .await;

    let (_server, mut client) = serve(&db).await;
    let reserve = |id: &str| ReserveRequest {
        tenant_id: "acme".into(),
        request_id: id.into(),
        ..ReserveRequest::default()
    };
    let repeated = client.reserve(reserve("held")).await.unwrap().into_inner();
    assert!(repeated.replayed);
    assert_eq!(repeated.record.unwrap().number, 1);
    let repeated = client
        .allocate(keyed("acme", "", 1, "issued"))
        .await
        .unwrap()
        .into_inner();
    assert!(repeated.replayed);
    let numbers: Vec<i64> = repeated.numbers.iter().map(|n| n.value).collect();
    assert_eq!(numbers, [2]);
    let refused = client.reserve(reserve("issued")).await.unwrap_err();
    assert_reason(&refused, "REQUEST_ID_REUSED");
    let refused = client
        .allocate(keyed("acme", "", 1, "held"))
        .await
        .unwrap_err();
    assert_reason(&refused, "REQUEST_ID_REUSED");
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoice_database_from_before_periods_keeps_its_invoices(#[case] backend: Backend) {
    let db = TestDb::create(backend).await;
    migrate_to(&db, "invoices", 2).await;
    let (id, line_items, total) = match backend {
        Backend::Postgres => (
            "'0190a4b2-0000-7000-8000-000000000001'",
            "'[{\"description\":\"x\",\"quantity\":\"1\",\"unit_price\":\"2\"}]'::jsonb",
            "2",
        ),
        Backend::Sqlite => (
            "'0190a4b2-0000-7000-8000-000000000001'",
            "'[{\"description\":\"x\",\"quantity\":\"1\",\"unit_price\":\"2\"}]'",
            "'2'",
        ),
    };
    let insert = format!(
        "INSERT INTO invoices (id, tenant_id, number, invoice_number, client_id, client_name,
             client_email, client_phone, client_address, due_date, notes, currency, line_items,
             total, created_at, request_id)
         VALUES ({id}, 'acme', 5, 'INV-005', '', 'Globex', '', '', '', '2026-12-31', '', 'EUR',
                 {line_items}, {total}, '2026-11-30T10:00:00+00:00', NULL)"
    );
    run(&db, &[&insert], None).await;

    let store = db.invoice_store().await;
    // Reading needs no allocator: none answers at this address.
    let mut writer = spawn_writer_on(
        db,
        store,
        allocator_client("http://127.0.0.1:9"),
        1,
        Arc::new(SystemClock),
        test_settings(),
    )
    .await;
    let listed = writer
        .client
        .list_invoices(ListInvoicesRequest {
            tenant_id: "acme".into(),
            ..ListInvoicesRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .invoices;
    let shown: Vec<_> = listed
        .iter()
        .map(|i| (i.invoice_number.as_str(), i.number, i.issue_date.as_str()))
        .collect();
    assert_eq!(shown, [("INV-005", 5, "2026-11-30")]);
}
