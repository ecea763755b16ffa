//! What only the embedded SQLite store needs: durable connection settings,
//! waiting for another process' write lock, the default file in the data
//! directory, a file that goes away, a full disk.

use std::{str::FromStr, sync::Arc, time::Duration};

use numbering::{
    allocator::{self, CommitMode, app::RequestIdSettings, series::NumberFormat},
    clock::SystemClock,
    db::{self, Backend, DbErrorKind, PoolSettings},
    invoices,
    proto::{
        invoice_writer_client::InvoiceWriterClient, number_allocator_client::NumberAllocatorClient,
    },
};
use sqlx::{
    ConnectOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode},
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{
    TestDb, allocate, assert_reason, invoice_request, serve_allocator, spawn_allocator, spawn_both,
    start, test_pool_settings, test_settings, wait_for_health,
};

/// Every pooled connection writes through the WAL journal, flushes each commit
/// to disk (synchronous = FULL), and waits out another writer for the acquire
/// time-out instead of failing with "database is locked".
#[tokio::test]
async fn connections_are_durable_and_wait_for_the_write_lock() {
    let db = TestDb::create(Backend::Sqlite).await;
    let settings = PoolSettings {
        max_connections: 2,
        acquire_timeout: Duration::from_millis(3500),
        operation_timeout: Duration::from_secs(5),
        create_missing: true,
    };
    let database = db::open_sqlite(&db.database_url(), &settings, &allocator::sqlite::MIGRATOR)
        .await
        .unwrap();
    let pool = database.pool();
    // Both connections, not only the first.
    let (mut first, mut second) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    for conn in [&mut first, &mut second] {
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(journal, "wal");
        assert_eq!(synchronous, 2, "synchronous should be FULL");
        assert_eq!(busy_timeout, 3500);
    }
}

/// While another process holds the file's write lock, calls wait for it up to
/// the acquire time-out, then answer UNAVAILABLE: each call, however many
/// queue up, long before the caller's deadline; none takes a number.
/// Readiness is NOT_SERVING meanwhile, SERVING again once the lock is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_elsewhere_is_unavailable_within_the_acquire_timeout() {
    let db = TestDb::create(Backend::Sqlite).await;
    let settings = PoolSettings {
        max_connections: 10,
        acquire_timeout: Duration::from_millis(300),
        operation_timeout: Duration::from_secs(5),
        create_missing: true,
    };
    let app = allocator::app::App::build(
        allocator::app::Settings {
            database: db.database_url(),
            pool: settings,
            default_format: NumberFormat::default(),
            mode: CommitMode::PerCall,
            request_ids: RequestIdSettings::default(),
            leases: allocator::series::Leases::default(),
        },
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve_allocator(listener, app, test_settings());
    let channel = server.channel().await;
    let client = NumberAllocatorClient::new(channel.clone());
    let name = "numbering.v1.NumberAllocator";
    wait_for_health(channel.clone(), name, ServingStatus::Serving).await;

    let mut other_process = SqliteConnectOptions::new()
        .filename(&db.name)
        .connect()
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other_process)
        .await
        .unwrap();
    let calls: Vec<_> = (0..30)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut request = tonic::Request::new(allocate("acme", "", 1));
                request.set_timeout(Duration::from_secs(5));
                client.allocate(request).await
            })
        })
        .collect();
    for call in calls {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_reason(&status, "STORE_UNAVAILABLE");
    }
    wait_for_health(channel.clone(), name, ServingStatus::NotServing).await;

    sqlx::query("ROLLBACK")
        .execute(&mut other_process)
        .await
        .unwrap();
    wait_for_health(channel, name, ServingStatus::Serving).await;
    let first = client
        .clone()
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.numbers[0].value, 1);
}

/// Processes starting together on a new file take turns to migrate it: none
/// fails on tables another has just created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_opened_together_on_a_new_file_all_start() {
    for _ in 0..5 {
        let db = TestDb::create(Backend::Sqlite).await;
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let url = db.database_url();
            opening.spawn(async move {
                db::open_sqlite(&url, &test_pool_settings(), &allocator::sqlite::MIGRATOR).await
            });
        }
        for opened in opening.join_all().await {
            opened.expect("open while others open the same new file");
        }
    }
}

/// A database file deleted under a running allocator: numbers it would commit
/// there are withheld (a restart would hand them out again), no empty file
/// takes its place, and readiness turns NOT_SERVING while liveness stays SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_database_file_withholds_numbers_and_fails_readiness() {
    let mut app = spawn_allocator(Backend::Sqlite).await;
    let channel = app.server.channel().await;
    let name = "numbering.v1.NumberAllocator";
    wait_for_health(channel.clone(), name, ServingStatus::Serving).await;
    app.client.allocate(allocate("acme", "", 3)).await.unwrap();

    std::fs::remove_file(&app.db.name).unwrap();
    let status = app
        .client
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_reason(&status, "STORE_UNAVAILABLE");
    wait_for_health(channel.clone(), name, ServingStatus::NotServing).await;
    wait_for_health(channel, "", ServingStatus::Serving).await;
    assert!(
        !std::path::Path::new(&app.db.name).exists(),
        "an empty database was created in place of the deleted one"
    );
}

/// An invoice committed to a database file deleted under the writer is not
/// acknowledged, and the writer's readiness turns NOT_SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_invoice_file_fails_the_insert_and_readiness() {
    let (_allocator, writer) = spawn_both(Backend::Sqlite, 3).await;
    let channel = writer.server.channel().await;
    let name = "numbering.v1.InvoiceWriter";
    wait_for_health(channel.clone(), name, ServingStatus::Serving).await;

    std::fs::remove_file(&writer.db.name).unwrap();
    let invoice = invoices::grpc::parse_new_invoice(&invoice_request("acme"))
        .unwrap()
        .0
        .numbered(
            invoices::domain::Numbered {
                value: 1,
                formatted: "INV-001".into(),
                period: String::new(),
                date: chrono::Utc::now().date_naive(),
            },
            uuid::Uuid::now_v7(),
            chrono::Utc::now(),
        );
    let inserted = writer.store.insert(&invoice, None, None).await;
    assert!(
        matches!(inserted, Err(invoices::store::StoreError::Unavailable(_))),
        "{inserted:?}"
    );
    wait_for_health(channel, name, ServingStatus::NotServing).await;
}

/// With no database URL and no data directory, the allocator keeps its counters
/// in `numbering/allocator.sqlite3` under the user's data directory, wherever it
/// is started: two starts from two working directories hand out one sequence,
/// and neither working directory gets a file. The writer keeps its invoices in
/// `invoices.sqlite3` under NUMBERING_DATA_DIR, created if missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_database_url_each_service_uses_its_file_in_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let xdg_data_home = dir.path().join("xdg");
    let (first_cwd, second_cwd) = (dir.path().join("one"), dir.path().join("two"));
    for cwd in [&first_cwd, &second_cwd] {
        std::fs::create_dir(cwd).unwrap();
    }
    let allocator_in = |cwd: &std::path::Path| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"));
        command
            .current_dir(cwd)
            .env_remove("DATABASE_URL")
            .env_remove("NUMBERING_DATA_DIR")
            .env("XDG_DATA_HOME", &xdg_data_home);
        command
    };
    let allocator = start(allocator_in(&first_cwd)).await;

    let data_dir = dir.path().join("nested").join("data");
    let mut writer = tokio::process::Command::new(env!("CARGO_BIN_EXE_invoice-writer"));
    writer
        .env_remove("DATABASE_URL")
        .env("NUMBERING_DATA_DIR", &data_dir)
        .args(["--allocator-url", &allocator.url()]);
    let writer = start(writer).await;

    let invoice = InvoiceWriterClient::connect(writer.url())
        .await
        .unwrap()
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap();
    assert_eq!(invoice.number, 1);
    assert!(xdg_data_home.join("numbering/allocator.sqlite3").is_file());
    assert!(data_dir.join("invoices.sqlite3").is_file());

    // The counter lives in the allocator's file: a new process started from
    // another directory continues it.
    let (status, logged) = {
        nix::sys::signal::kill(allocator.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
        allocator.wait().await
    };
    assert!(status.success(), "{logged:?}");
    let again = start(allocator_in(&second_cwd)).await;
    let next = NumberAllocatorClient::connect(again.url())
        .await
        .unwrap()
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.numbers[0].value, 2);
    for cwd in [&first_cwd, &second_cwd] {
        assert_eq!(
            std::fs::read_dir(cwd).unwrap().count(),
            0,
            "{}",
            cwd.display()
        );
    }
}

/// A data directory that cannot be created, or a file that is not a SQLite
/// database, stops start-up with an error that says so; an in-memory database,
/// which would forget every number at exit, is a bad setting.
#[tokio::test]
async fn unusable_sqlite_databases_are_clear_start_up_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, "").unwrap();
    let (code, stderr) = start_up_error("NUMBERING_DATA_DIR", &file.display().to_string()).await;
    assert_eq!(code, Some(73), "{stderr}");
    assert!(
        stderr.contains("creating directory") && stderr.contains("not-a-directory"),
        "{stderr}"
    );

    let garbage = dir.path().join("garbage.sqlite3");
    std::fs::write(&garbage, vec![0xA5; 8192]).unwrap();
    let (code, stderr) =
        start_up_error("DATABASE_URL", &format!("sqlite://{}", garbage.display())).await;
    assert_eq!(code, Some(65), "{stderr}");
    assert!(
        stderr.contains("garbage.sqlite3") && stderr.contains("not a SQLite database"),
        "{stderr}"
    );

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"))
        .args(["--database-url", "sqlite::memory:"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(64),
        "an in-memory store loses every number"
    );

    // A relative file would be another file, with another counter, for
    // each directory the service is started in: refused, creating nothing.
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"))
        .args(["--database-url", "sqlite://allocator.sqlite3"])
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), refused)
        .await
        .expect("the allocator started on a relative SQLite file")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("a relative path"), "{stderr}");
    assert!(!dir.path().join("allocator.sqlite3").exists());
}

/// Starts the allocator with `key` set to `value` (and no other database
/// setting), expects it to fail, and returns its exit status and what it printed.
async fn start_up_error(key: &str, value: &str) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"))
        .env_remove("DATABASE_URL")
        .env_remove("NUMBERING_DATA_DIR")
        .env(key, value)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success(), "started with {key}={value}");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The error of a full disk is classified UNAVAILABLE (retry later), not a bug.
/// It cannot see readiness: no service runs on this file.
#[tokio::test]
async fn a_full_disk_is_classified_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = SqliteConnectOptions::from_str("sqlite://full.sqlite3")
        .unwrap()
        .filename(dir.path().join("full.sqlite3"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .pragma("max_page_count", "8")
        .connect()
        .await
        .unwrap();
    sqlx::query("CREATE TABLE filler (data BLOB)")
        .execute(&mut conn)
        .await
        .unwrap();
    let error = loop {
        if let Err(error) = sqlx::query("INSERT INTO filler VALUES (zeroblob(4096))")
            .execute(&mut conn)
            .await
        {
            break error;
        }
    };
    assert_eq!(db::classify(&error), DbErrorKind::Unavailable, "{error}");
    assert!(matches!(
        allocator::store::StoreError::from(error),
        allocator::store::StoreError::Unavailable(_)
    ));
}

/// A write that fills the disk: SQLite rolls its transaction back on its
/// own, the commit fails, and the driver still counts the connection inside
/// a transaction. That connection is closed, not handed to the next write,
/// which begins and commits as usual once there is room. Before, every
/// later write on it failed (INTERNAL) until the process restarted.
#[tokio::test]
async fn a_write_that_fills_the_disk_leaves_no_connection_stuck() {
    let db = TestDb::create(Backend::Sqlite).await;
    // One connection: the next write would get the same one.
    let settings = PoolSettings {
        max_connections: 1,
        ..test_pool_settings()
    };
    let database = db::open_sqlite(&db.database_url(), &settings, &allocator::sqlite::MIGRATOR)
        .await
        .unwrap();
    let mut write = database.begin_write().await.unwrap();
    sqlx::query("CREATE TABLE filler (data BLOB)")
        .execute(write.conn())
        .await
        .unwrap();
    write.commit().await.unwrap();

    // A disk with room for two more pages, for this connection.
    let mut write = database.begin_write().await.unwrap();
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(write.conn())
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PRAGMA max_page_count = {}",
        pages + 2
    )))
    .execute(write.conn())
    .await
    .unwrap();
    let full = loop {
        if let Err(error) = sqlx::query("INSERT INTO filler VALUES (zeroblob(4096))")
            .execute(write.conn())
            .await
        {
            break error;
        }
    };
    assert_eq!(db::classify(&full), DbErrorKind::Unavailable, "{full}");
    assert!(write.commit().await.is_err());

    // The next write, on a connection of its own (with room again).
    for round in 0..3 {
        let mut write = database.begin_write().await.unwrap();
        sqlx::query("INSERT INTO filler VALUES (?)")
            .bind(round)
            .execute(write.conn())
            .await
            .unwrap();
        write.commit().await.unwrap();
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM filler")
        .fetch_one(database.pool())
        .await
        .unwrap();
    assert_eq!(rows, 3);
}
