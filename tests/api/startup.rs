//! Start-up: each cause of failure is named and has its own exit status, a
//! database is refused unless it is this service's or empty, and nothing is
//! created before the listener is bound.

use std::{net::TcpListener, path::Path, process::Output, str::FromStr, time::Duration};

use numbering::{
    allocator::{
        series::{SeriesConfig, SeriesName},
        store::Advance,
    },
    db::Backend,
    proto::number_allocator_client::NumberAllocatorClient,
    tenant::TenantId,
};
use rstest_reuse::apply;
use sqlx::{
    AssertSqlSafe, Connection, PgConnection, SqliteConnection, sqlite::SqliteConnectOptions,
};

use crate::backends;
use crate::helpers::{PATIENCE, TestDb, allocate, allocator_binary, import_invoice, start};

/// Runs a service binary with `args` and no database settings from the
/// environment, expecting it to stop on its own.
async fn run(binary: &str, args: &[&str]) -> Output {
    run_with(binary, args, &[]).await
}

/// [`run`] with the environment variables `env` set.
async fn run_with(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let running = tokio::process::Command::new(binary)
        .env_remove("DATABASE_URL")
        .env_remove("NUMBERING_DATA_DIR")
        .envs(env.iter().copied())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, running)
        .await
        .unwrap_or_else(|_| panic!("still running after {PATIENCE:?}: it started"))
        .expect("run the binary");
    assert!(!output.status.success(), "it started: {output:?}");
    output
}

/// Asserts the exit status and that the error output says `what`, in plain
/// text: no colour codes when the output is not a terminal.
fn assert_refused(output: &Output, status: i32, what: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(status), "{stderr}");
    assert!(stderr.contains(what), "{what:?} not in {stderr}");
    assert!(!stderr.contains('\x1b'), "colour codes in {stderr:?}");
}

const ALLOCATOR: &str = env!("CARGO_BIN_EXE_number-allocator");
const WRITER: &str = env!("CARGO_BIN_EXE_invoice-writer");

/// Every table of the database with its rows, migrations included: what a
/// refused start must leave as it was.
async fn snapshot(db: &TestDb) -> Vec<String> {
    match db.backend {
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() ORDER BY 1",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            let mut rows = Vec::new();
            for table in tables {
                let sql = format!(r#"SELECT t::text FROM "{table}" t ORDER BY 1"#);
                let content: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
                rows.push(format!("{table}: {content:?}"));
            }
            rows
        }
        Backend::Sqlite => {
            let options = SqliteConnectOptions::from_str(&db.url).unwrap();
            let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY 1",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            let mut rows = Vec::new();
            for table in tables {
                let sql = format!(r#"SELECT count(*) FROM "{table}""#);
                let count: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                rows.push(format!("{table}: {count} rows"));
            }
            rows
        }
    }
}

/// Each service refuses the other's database, with exit status 65 and a
/// message saying what to do, and changes nothing in either.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_refuses_the_other_services_database(#[case] backend: Backend) {
    let allocator_db = TestDb::create(backend).await;
    let counters = allocator_db.counter_store().await;
    let (tenant, series) = (
        TenantId::parse("acme").unwrap(),
        SeriesName::parse("invoice").unwrap(),
    );
    let format = "INV-{number}".parse().unwrap();
    let config = SeriesConfig::unconfigured(format);
    let advance = Advance {
        tenant: &tenant,
        series: &series,
        calendar: config.calendar,
        period: "",
        date: chrono::Utc::now().date_naive(),
        at_least: 7,
        reason: "test",
        now: chrono::Utc::now(),
    };
    counters.advance(advance, &config).await.unwrap();
    counters.close().await;
    let writer_db = TestDb::create(backend).await;
    let invoices = writer_db.invoice_store().await;
    import_invoice(&invoices, "acme", 1, "INV-001").await;
    invoices.close().await;
    let before = (snapshot(&allocator_db).await, snapshot(&writer_db).await);

    let output = run(WRITER, &["--database-url", &allocator_db.url]).await;
    assert_refused(&output, 65, "not this service's database");
    assert_refused(&output, 65, "counters");
    let output = run(ALLOCATOR, &["--database-url", &writer_db.url]).await;
    assert_refused(&output, 65, "a database of its own");
    assert_refused(&output, 65, "invoices");

    let after = (snapshot(&allocator_db).await, snapshot(&writer_db).await);
    assert_eq!(before, after);
    assert!(
        before.0.iter().any(|t| t.starts_with("counters")),
        "{before:?}"
    );
}

/// A PostgreSQL database holding tables of some other application is refused
/// and left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_tables_of_another_application_is_refused() {
    let db = TestDb::create(Backend::Postgres).await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("CREATE TABLE customers (id int PRIMARY KEY)")
        .execute(&mut conn)
        .await
        .unwrap();
    let before = snapshot(&db).await;
    let output = run(ALLOCATOR, &["--database-url", &db.url]).await;
    assert_refused(&output, 65, "customers");
    assert_eq!(snapshot(&db).await, before);
}

/// A port where nothing listens, free when returned.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL server that refuses connections, a host that does not
/// resolve, a role that may not log in, and a database that is missing and
/// may not be created each stop start-up with their own status and words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cause_of_a_failed_connection_is_named() {
    let refused = format!("postgres://postgres@127.0.0.1:{}/x", closed_port());
    let output = run(ALLOCATOR, &["--database-url", &refused]).await;
    assert_refused(&output, 69, "cannot reach the database server");
    assert_refused(&output, 69, "refused");

    let output = run(
        ALLOCATOR,
        &[
            "--database-url",
            "postgres://postgres@no-such-host.invalid/x",
        ],
    )
    .await;
    assert_refused(
        &output,
        68,
        "unknown database host \"no-such-host.invalid\"",
    );

    // Roles are the server's, not a database's: made once, kept.
    let db = TestDb::create(Backend::Postgres).await;
    for role in [
        "numbering_test_nologin NOLOGIN",
        "numbering_test_nocreatedb LOGIN NOCREATEDB",
    ] {
        db.admin(format!(
            "DO $$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ))
        .await;
    }
    let as_role = |role: &str, database: &str| {
        let mut url = url::Url::parse(&db.url).unwrap();
        url.set_username(role).unwrap();
        url.set_path(database);
        url.to_string()
    };
    let output = run(
        ALLOCATOR,
        &[
            "--database-url",
            &as_role("numbering_test_nologin", &db.name),
        ],
    )
    .await;
    assert_refused(&output, 77, "refused the user or password");
    // PostgreSQL's message, without the line of its source that raised it.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("numbering_test_nologin"), "{stderr}");
    assert!(!stderr.contains(" at line "), "{stderr}");

    let missing = format!("{}_missing", db.name);
    let output = run(
        ALLOCATOR,
        &[
            "--database-url",
            &as_role("numbering_test_nocreatedb", &missing),
        ],
    )
    .await;
    assert_refused(&output, 66, "does not exist and could not be created");
}

/// With `--create-database false`, a database that does not exist (a
/// mistyped PostgreSQL URL, a SQLite file in another data directory) stops
/// start-up with status 66 and is not created; one that exists is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_not_created_when_creating_is_off() {
    refused_creating_nothing(
        &["--create-database", "false"],
        66,
        "--create-database is false",
    )
    .await;

    let db = TestDb::create(Backend::Postgres).await;
    let mistyped = mistyped(&db);
    let output = run(
        ALLOCATOR,
        &["--database-url", &mistyped, "--create-database", "false"],
    )
    .await;
    assert_refused(&output, 66, "--create-database is false");
    assert_not_created(&db, &mistyped).await;

    // The database that exists is opened, and served from.
    let mut command = allocator_binary(&db.url);
    command.args(["--create-database", "false"]);
    let running = start(command).await;
    let mut client =
        NumberAllocatorClient::new(running.ready("numbering.v1.NumberAllocator").await);
    client.allocate(allocate("acme", "", 1)).await.unwrap();
}

/// `seed-counters` reads the invoices already stored: a database that does
/// not exist (a mistyped URL or data directory) stops it with status 66,
/// and is not created, instead of seeding nothing from an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_counters_creates_no_database() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let output = run(
        WRITER,
        &["--data-dir", data_dir.to_str().unwrap(), "seed-counters"],
    )
    .await;
    assert_refused(&output, 66, "does not exist, and this start creates none");
    assert!(!data_dir.exists(), "{}", data_dir.display());

    let db = TestDb::create(Backend::Postgres).await;
    let mistyped = mistyped(&db);
    let output = run(WRITER, &["seed-counters", "--database-url", &mistyped]).await;
    assert_refused(&output, 66, "does not exist, and this start creates none");
    assert_not_created(&db, &mistyped).await;
}

/// The URL of `db` with its database name mistyped: one that does not exist.
fn mistyped(db: &TestDb) -> String {
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_path(&format!("{}_mistyped", db.name));
    url.into()
}

/// Asserts that the database `url` names was not created on `db`'s server.
async fn assert_not_created(db: &TestDb, url: &str) {
    let name = url::Url::parse(url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned();
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let created: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(created, 0, "the mistyped database {name} was created");
}

/// Options that exclude each other are refused on either side of
/// `seed-counters`, not only on the same side.
#[tokio::test]
async fn a_token_and_a_token_file_are_refused_across_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cret").unwrap();
    let data_dir = dir.path().join("data");
    let output = run(
        WRITER,
        &[
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--allocator-token-file",
            file.to_str().unwrap(),
            "seed-counters",
            "--allocator-token",
            "other",
        ],
    )
    .await;
    assert_refused(
        &output,
        64,
        "--allocator-token or --allocator-token-file, not both",
    );
    assert!(!data_dir.exists(), "{}", data_dir.display());
}

/// Settings that go together are paired on either side of the writer's
/// command: a certificate before it and its key after it are read together
/// (here the key, which is missing, is refused as such), where clap alone
/// would say the key was not given.
#[tokio::test]
async fn tls_files_pair_across_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let [cert, ca] = ["cert.pem", "ca.pem"].map(|name| {
        let file = dir.path().join(name);
        std::fs::write(&file, "no PEM here").unwrap();
        file.to_str().unwrap().to_owned()
    });
    let key = dir.path().join("missing-key.pem");
    let key = key.to_str().unwrap();
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().unwrap();
    for args in [
        &["--tls-cert", &cert, "serve", "--tls-key", key][..],
        &[
            "--allocator-tls-ca",
            &ca,
            "--allocator-tls-cert",
            &cert,
            "seed-counters",
            "--allocator-tls-key",
            key,
        ],
    ] {
        let mut all = vec!["--data-dir", data_dir];
        all.extend_from_slice(args);
        let output = run(WRITER, &all).await;
        assert_refused(&output, 64, &format!("{key}: No such file"));
        assert!(!Path::new(data_dir).exists(), "{data_dir}");
    }
}

/// A TLS file given without the one it needs stops start-up with status 64
/// naming both, by flag and by environment variable, however it was given;
/// nothing is created.
#[tokio::test]
async fn a_tls_file_without_the_one_it_needs_names_both() {
    refused_creating_nothing(
        &["--tls-key", "key.pem"],
        64,
        "--tls-key (NUMBERING_TLS_KEY) needs --tls-cert (NUMBERING_TLS_CERT)",
    )
    .await;
    refused_creating_nothing(
        &["--tls-cert", "cert.pem"],
        64,
        "--tls-cert (NUMBERING_TLS_CERT) needs --tls-key (NUMBERING_TLS_KEY)",
    )
    .await;
    refused_creating_nothing_with(
        &[],
        &[("NUMBERING_TLS_CLIENT_CA", "ca.pem")],
        64,
        "--tls-client-ca (NUMBERING_TLS_CLIENT_CA) needs --tls-cert (NUMBERING_TLS_CERT)",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for (args, what) in [
        (
            &["--allocator-tls-key", "key.pem"][..],
            "--allocator-tls-key (NUMBERING_ALLOCATOR_TLS_KEY) needs --allocator-tls-cert \
             (NUMBERING_ALLOCATOR_TLS_CERT)",
        ),
        (
            &[
                "--allocator-tls-cert",
                "cert.pem",
                "--allocator-tls-key",
                "key.pem",
            ],
            "--allocator-tls-cert (NUMBERING_ALLOCATOR_TLS_CERT) needs --allocator-tls-ca \
             (NUMBERING_ALLOCATOR_TLS_CA)",
        ),
    ] {
        let mut all = vec!["--data-dir", data_dir.to_str().unwrap()];
        all.extend_from_slice(args);
        assert_refused(&run(WRITER, &all).await, 64, what);
        assert!(!data_dir.exists(), "{}", data_dir.display());
    }
}

/// Replicas started at once on a PostgreSQL database that does not exist
/// yet all start: one creates it, the others find it created, and each
/// serves from it. The numbers they hand out are distinct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_at_once_on_a_missing_database_all_start() {
    const REPLICAS: i64 = 4;
    let db = TestDb::create(Backend::Postgres).await;
    db.admin(format!(r#"DROP DATABASE "{}""#, db.name)).await;
    let mut starting = tokio::task::JoinSet::new();
    for _ in 0..REPLICAS {
        starting.spawn(start(allocator_binary(&db.url)));
    }
    let replicas = starting.join_all().await;
    let mut numbers = Vec::new();
    for replica in &replicas {
        let mut client =
            NumberAllocatorClient::new(replica.ready("numbering.v1.NumberAllocator").await);
        let reply = client.allocate(allocate("acme", "", 1)).await.unwrap();
        numbers.push(reply.into_inner().numbers[0].value);
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=REPLICAS).collect::<Vec<_>>());
}

/// A listen address in use stops start-up with status 71 before anything is
/// created: no data directory, no database file. The metrics port alike.
#[tokio::test]
async fn a_busy_port_stops_start_up_before_anything_is_created() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for binary in [ALLOCATOR, WRITER] {
        let output = tokio::process::Command::new(binary)
            .env_remove("DATABASE_URL")
            .env("NUMBERING_DATA_DIR", &data_dir)
            .args(["--listen", &addr])
            .output()
            .await
            .unwrap();
        assert_refused(&output, 71, &format!("cannot listen on {addr} (--listen)"));
        assert!(!Path::new(&data_dir).exists(), "{}", data_dir.display());
        // The metrics port alike.
        let output = tokio::process::Command::new(binary)
            .env_remove("DATABASE_URL")
            .env("NUMBERING_DATA_DIR", &data_dir)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", &addr])
            .output()
            .await
            .unwrap();
        assert_refused(
            &output,
            71,
            &format!("cannot listen on {addr} (--metrics-listen)"),
        );
        assert!(!Path::new(&data_dir).exists(), "{}", data_dir.display());
    }
}

/// Bad access settings stop start-up with status 64 before anything is
/// created, and the message names the setting without echoing a secret.
#[tokio::test]
async fn bad_access_settings_stop_start_up_without_echoing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        "[[token]]\nname = \"a\"\nsecret = \"s3cret\"\nadmin = 1\n",
    )
    .unwrap();
    let tokens = tokens.to_str().unwrap();
    let mut outputs = Vec::new();
    for binary in [ALLOCATOR, WRITER] {
        let output = run(binary, &["--data-dir", data_dir, "--tokens-file", tokens]).await;
        assert_refused(&output, 64, "tokens file");
        outputs.push(output);
        let output = run(
            binary,
            &["--data-dir", data_dir, "--tokens-file", "/no/such/file"],
        )
        .await;
        assert_refused(&output, 64, "/no/such/file");
    }
    let output = run(
        WRITER,
        &[
            "--data-dir",
            data_dir,
            "--allocator-url",
            "http://writer:pa55word@127.0.0.1:50051",
        ],
    )
    .await;
    assert_refused(&output, 64, "--allocator-token");
    outputs.push(output);
    let output = run(
        WRITER,
        &[
            "--data-dir",
            data_dir,
            "--allocator-token",
            "bad\u{7f}s3cret",
        ],
    )
    .await;
    assert_refused(&output, 64, "allocator token");
    outputs.push(output);
    for output in &outputs {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("s3cret") && !stderr.contains("pa55word"),
            "{stderr}"
        );
    }
    assert!(!Path::new(data_dir).exists(), "{data_dir}");
}

/// An allocator URL without its scheme (`host:port` alone) stops the
/// writer's start-up with status 64, saying how to write it, instead of
/// failing every call as an allocator unavailable; nothing is created. So
/// does one with a path, query or fragment, which the calls would drop.
#[tokio::test]
async fn an_allocator_url_without_its_scheme_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for url in [
        "127.0.0.1:50051",
        "localhost:50051",
        "ftp://allocator:50051",
        "HTTP://allocator:50051",
        // A path, query or fragment the calls would drop.
        "http://allocator:50051/numbering",
        "http://allocator:50051?tls=on",
        "http://allocator:50051#here",
    ] {
        let output = run(
            WRITER,
            &[
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--allocator-url",
                url,
            ],
        )
        .await;
        assert_refused(&output, 64, "http://host:port");
        // The value as given, and where from.
        assert_refused(&output, 64, &format!("invalid --allocator-url: {url}: "));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("environment variable"), "{stderr}");
        assert!(!data_dir.exists(), "{}", data_dir.display());
    }
    // From the environment, it says so; a password is never shown.
    let output = run_with(
        WRITER,
        &["--data-dir", data_dir.to_str().unwrap()],
        &[("NUMBERING_ALLOCATOR_URL", "writer:s3cret@allocator:50051")],
    )
    .await;
    assert_refused(
        &output,
        64,
        "invalid --allocator-url: ***@allocator:50051: no http:// or https://",
    );
    assert_refused(&output, 64, "environment variable NUMBERING_ALLOCATOR_URL");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("s3cret"));
    assert!(!data_dir.exists(), "{}", data_dir.display());
}

/// `db` migrated by an allocator that then stopped, and a connection
/// holding its migrations table locked in an open transaction: the next
/// start-up's migrator waits for it.
async fn migrations_locked(db: &TestDb) -> PgConnection {
    drop(start(allocator_binary(&db.url)).await);
    let mut holder = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    holder
}

/// Migrations are not bound by `--db-timeout`, which the server applies to
/// serving statements and lock waits: a start-up whose migrator waits for a
/// lock held elsewhere longer than that goes on once it is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_wait_for_a_lock_longer_than_the_db_timeout() {
    let db = TestDb::create(Backend::Postgres).await;
    let mut holder = migrations_locked(&db).await;

    let mut command = allocator_binary(&db.url);
    command.args(["--db-timeout", "1s"]);
    let starting = tokio::spawn(start(command));
    // Its migrator waits on the lock for twice the bound.
    db.wait_until_blocked_on_a_lock_for(Duration::from_secs(2))
        .await;
    assert!(!starting.is_finished(), "the start-up ended while waiting");
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();

    let running = starting.await.unwrap();
    let mut client = NumberAllocatorClient::connect(running.url()).await.unwrap();
    client.allocate(allocate("acme", "", 1)).await.unwrap();
}

/// A SIGTERM while start-up waits for another process's migration stops
/// the process at once, successfully: nothing is served yet, so there is
/// nothing to drain, and Kubernetes need not wait out the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_while_waiting_to_migrate_stops_start_up() {
    let db = TestDb::create(Backend::Postgres).await;
    let _holder = migrations_locked(&db).await;

    let mut waiting = allocator_binary(&db.url)
        .args(["--listen", "127.0.0.1:0"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    db.wait_until_blocked_on_a_lock_for(Duration::from_millis(100))
        .await;
    stops_at_once_on_sigterm(&mut waiting).await;
}

/// A SIGTERM while start-up waits for another process setting the SQLite
/// file up stops the process at once, successfully, as on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_while_waiting_for_the_sqlite_setup_stops_start_up() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let held = std::fs::File::create(dir.path().join("allocator.sqlite3-setup-lock")).unwrap();
    held.lock().unwrap();
    let mut waiting = tokio::process::Command::new(ALLOCATOR)
        .env_remove("DATABASE_URL")
        .env("NUMBERING_DATA_DIR", dir.path())
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(waiting.stderr.take().unwrap()).lines();
    let waits = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("setting the database up; waiting") {
                return true;
            }
        }
        false
    });
    assert!(waits.await.unwrap(), "it never waited for the lock");
    stops_at_once_on_sigterm(&mut waiting).await;
}

/// Sends `waiting`, a start-up waiting for a lock, SIGTERM, and asserts it
/// exits successfully without waiting on.
async fn stops_at_once_on_sigterm(waiting: &mut tokio::process::Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(waiting.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(PATIENCE, waiting.wait())
        .await
        .expect("still waiting for the lock after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// An OTLP endpoint that is not `http://host:port` stops start-up with
/// status 64, naming the variable it came from, if one; nothing is created.
#[tokio::test]
async fn a_bad_otlp_endpoint_stops_start_up() {
    refused_creating_nothing(&["--otlp-endpoint", "not a url"], 64, "--otlp-endpoint").await;
    // No scheme, which the exporter would take for https, which it cannot
    // speak; another scheme.
    for endpoint in ["otel-collector:4317", "ftp://otel-collector:4317"] {
        refused_creating_nothing(
            &["--otlp-endpoint", endpoint],
            64,
            "must be http://host:port",
        )
        .await;
    }
    refused_creating_nothing_with(
        &[],
        &[("NUMBERING_OTLP_ENDPOINT", "https://otel-collector:4317")],
        64,
        "environment variable NUMBERING_OTLP_ENDPOINT",
    )
    .await;
}

/// A `RUST_LOG` that is not a valid filter, or names a bare word that is
/// not a level (read as a target, "warning" would let no event through),
/// stops start-up with status 64, saying what is wrong with it, and nothing
/// is created: a service logging less than asked would leave its operator
/// looking for logs that never come.
#[tokio::test]
async fn a_bad_log_filter_stops_start_up() {
    for filter in [
        "numbering=loud",
        "info,[{",
        "warning",
        "numbering=debug,verbose",
    ] {
        refused_creating_nothing_with(&[], &[("RUST_LOG", filter)], 64, "RUST_LOG=").await;
    }
    // One that names no directive is no filter: a refused start still says
    // why.
    for filter in [" ", ",", " , "] {
        refused_creating_nothing_with(
            &["--tenant-rate-limit", "5", "--tenant-rate-wait", "20s"],
            &[("RUST_LOG", filter)],
            64,
            "must be shorter than --request-timeout",
        )
        .await;
    }
}

/// A bad value set by environment variable, as a Kubernetes manifest sets
/// them, stops start-up with status 64 naming the variable, not only the
/// flag it stands for; nothing is created.
#[tokio::test]
async fn a_bad_setting_from_the_environment_names_its_variable() {
    refused_creating_nothing_with(
        &[],
        &[("NUMBERING_REQUEST_TIMEOUT", "0s")],
        64,
        "environment variable NUMBERING_REQUEST_TIMEOUT",
    )
    .await;
    // Also one checked against another setting, which names both.
    let output = run_with(
        ALLOCATOR,
        &["--database-url", "postgres://127.0.0.1:1/nowhere"],
        &[
            ("NUMBERING_DEFAULT_LEASE", "2h"),
            ("NUMBERING_MAX_LEASE", "1h"),
        ],
    )
    .await;
    assert_refused(
        &output,
        64,
        "--default-lease (NUMBERING_DEFAULT_LEASE) is 2h: it must be at most --max-lease \
         (NUMBERING_MAX_LEASE), 1h",
    );
    for (binary, variable) in [
        (ALLOCATOR, "NUMBERING_MAX_LEASE"),
        (ALLOCATOR, "NUMBERING_DEFAULT_LEASE"),
        (ALLOCATOR, "NUMBERING_REQUEST_ID_RETENTION"),
        (WRITER, "NUMBERING_RESERVATION_LEASE"),
    ] {
        let output = run_with(
            binary,
            &["--database-url", "postgres://127.0.0.1:1/nowhere"],
            &[(variable, "500ms")],
        )
        .await;
        assert_refused(&output, 64, "must be at least 1s");
        assert_refused(&output, 64, &format!("environment variable {variable}"));
    }
    // Also one whose value the service reads itself.
    refused_creating_nothing_with(
        &[],
        &[("DATABASE_URL", "mysql://db/x")],
        64,
        "environment variable DATABASE_URL",
    )
    .await;
}

/// A bad variable is read for the writer's command even where its flag is
/// given before the command: refused, naming the variable, since the value
/// quoted is not the flag's.
#[tokio::test]
async fn a_bad_variable_read_for_the_writers_command_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for command in ["serve", "seed-counters"] {
        let output = run_with(
            WRITER,
            &[
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--request-timeout",
                "5s",
                command,
            ],
            &[("NUMBERING_REQUEST_TIMEOUT", "0s")],
        )
        .await;
        assert_refused(
            &output,
            64,
            "environment variable NUMBERING_REQUEST_TIMEOUT",
        );
        assert!(!data_dir.exists(), "{}", data_dir.display());
    }
}

/// A URL whose password holds a `?` does not parse: refused as a bad
/// setting, the password not shown.
#[tokio::test]
async fn a_url_broken_by_its_password_is_refused_without_showing_it() {
    for (binary, flag, url) in [
        (
            ALLOCATOR,
            "--database-url",
            "postgres://app:hunter?2@127.0.0.1:5432/numbers",
        ),
        (
            WRITER,
            "--database-url",
            "postgres://app:hunter?2@127.0.0.1:5432/numbers",
        ),
        (
            WRITER,
            "--allocator-url",
            "http://writer:hunter?2@allocator:50051",
        ),
    ] {
        let output = run(binary, &[flag, url]).await;
        assert_refused(&output, 64, &format!("invalid {flag}: "));
        assert_refused(&output, 64, "://***@");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("hunter"), "{stderr}");
    }
}

/// Runs each service with `args` and a data directory of its own: it stops
/// with `status`, saying `what`, and creates no data directory.
async fn refused_creating_nothing(args: &[&str], status: i32, what: &str) {
    refused_creating_nothing_with(args, &[], status, what).await;
}

/// [`refused_creating_nothing`] with the environment variables `env` set.
async fn refused_creating_nothing_with(
    args: &[&str],
    env: &[(&str, &str)],
    status: i32,
    what: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for binary in [ALLOCATOR, WRITER] {
        let mut all = vec!["--data-dir", data_dir.to_str().unwrap()];
        all.extend_from_slice(args);
        let output = run_with(binary, &all, env).await;
        assert_refused(&output, status, what);
        assert!(!data_dir.exists(), "{}", data_dir.display());
    }
}
