//! Databases for one test each: PostgreSQL or SQLite, kept when the test fails.

use std::{sync::Arc, time::Duration};

use numbering::{
    allocator::{self, store::CounterStore},
    db::{self, Backend, DatabaseUrl, PoolSettings},
    invoices::{self, store::InvoiceStore},
};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, SqlitePool};

use super::admin_url;

/// A database created for one test: a fresh PostgreSQL database, or a SQLite
/// file in a fresh directory. Dropped when the test passes, kept for
/// inspection when it fails.
pub struct TestDb {
    pub backend: Backend,
    /// The PostgreSQL database's name, or the SQLite file's path.
    pub name: String,
    pub url: String,
    dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => Self::create_postgres().await,
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("numbering_test_")
                    .tempdir()
                    .expect("temporary directory");
                let path = dir.path().join("test.sqlite3");
                Self {
                    backend,
                    name: path.display().to_string(),
                    url: DatabaseUrl::sqlite_file(&path).unwrap().expose().to_owned(),
                    dir: Some(dir),
                }
            }
        }
    }

    async fn create_postgres() -> Self {
        let admin = admin_url();
        let name = format!("numbering_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(admin)
            .await
            .expect("connect to the test PostgreSQL server");
        sqlx::query(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let mut url = url::Url::parse(admin).expect("admin url");
        url.set_path(&name);
        Self {
            backend: Backend::Postgres,
            name,
            url: url.to_string(),
            dir: None,
        }
    }

    pub fn database_url(&self) -> DatabaseUrl {
        self.url.parse().expect("test database url")
    }

    /// The allocator's store, opened as the service opens it.
    pub async fn counter_store(&self) -> Arc<dyn CounterStore> {
        allocator::app::open_store(&self.database_url(), &test_pool_settings())
            .await
            .expect("open the counter store")
    }

    /// The invoice writer's store, opened as the service opens it.
    pub async fn invoice_store(&self) -> Arc<dyn InvoiceStore> {
        invoices::app::open_store(&self.database_url(), &test_pool_settings())
            .await
            .expect("open the invoice store")
    }

    /// The allocator's ledger, by tenant, series and first number.
    pub async fn allocations(&self) -> Vec<AllocationRow> {
        const SQL: &str = "SELECT tenant_id, series, first_value, count, kind, reason, request_id
                           FROM allocations ORDER BY tenant_id, series, first_value";
        match self.backend {
            Backend::Postgres => {
                let pool = self.pool(&test_pool_settings()).await;
                sqlx::query_as(SQL).fetch_all(&pool).await.unwrap()
            }
            Backend::Sqlite => {
                let pool = SqlitePool::connect(&self.url).await.unwrap();
                sqlx::query_as(SQL).fetch_all(&pool).await.unwrap()
            }
        }
    }

    /// The text of every range in the allocator's ledger: series, period,
    /// first number, template and date, in that order.
    pub async fn ledger_texts(&self) -> Vec<(String, String, i64, String, String)> {
        const SQL: &str = "SELECT series, period, first_value, format, CAST(date AS TEXT)
                           FROM allocations ORDER BY tenant_id, series, period, first_value";
        self.fetch_all(SQL).await
    }

    /// Every counter of the allocator: tenant, series, period, last value.
    pub async fn counters(&self) -> Vec<(String, String, String, i64)> {
        const SQL: &str = "SELECT tenant_id, series, period, last_value
                           FROM counters ORDER BY tenant_id, series, period";
        self.fetch_all(SQL).await
    }

    async fn fetch_all<T>(&self, sql: &'static str) -> Vec<T>
    where
        T: Send
            + Unpin
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
    {
        match self.backend {
            Backend::Postgres => {
                let pool = self.pool(&test_pool_settings()).await;
                sqlx::query_as(sql).fetch_all(&pool).await.unwrap()
            }
            Backend::Sqlite => {
                let pool = SqlitePool::connect(&self.url).await.unwrap();
                sqlx::query_as(sql).fetch_all(&pool).await.unwrap()
            }
        }
    }

    /// Runs one statement on the database, as an operator (or a fault) would.
    pub async fn execute(&self, sql: &'static str) {
        match self.backend {
            Backend::Postgres => {
                let pool = self.pool(&test_pool_settings()).await;
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
            Backend::Sqlite => {
                let pool = SqlitePool::connect(&self.url).await.unwrap();
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
        }
    }

    /// Waits until a session of this PostgreSQL database waits on a lock.
    pub async fn wait_until_blocked_on_a_lock(&self) {
        self.wait_until_blocked_on_a_lock_for(Duration::ZERO).await;
    }

    /// Waits until a session of this PostgreSQL database has waited on a
    /// lock for at least `at_least` (in its current statement).
    pub async fn wait_until_blocked_on_a_lock_for(&self, at_least: Duration) {
        let mut conn = PgConnection::connect(&self.url).await.unwrap();
        let blocked = tokio::time::timeout(super::PATIENCE, async {
            loop {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'
                       AND now() - query_start >= make_interval(secs => $1)",
                )
                .bind(at_least.as_secs_f64())
                .fetch_one(&mut conn)
                .await
                .unwrap();
                if waiting > 0 {
                    return;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(
            blocked.is_ok(),
            "no call blocked on a lock for {at_least:?}"
        );
    }

    /// Waits until number `number` of acme's `series` is stored given back
    /// (by a sweep of ended leases, say): its row no longer says reserved.
    pub async fn wait_until_given_back(&self, series: &str, number: i64) {
        const SQL: &str = "SELECT count(*) FROM number_states
                           WHERE tenant_id = 'acme' AND series = $1 AND number = $2
                             AND state IN ('released', 'voided')";
        // One pool of the database's own kind, for every look.
        let (postgres, sqlite) = match self.backend {
            Backend::Postgres => (Some(self.pool(&test_pool_settings()).await), None),
            Backend::Sqlite => (None, Some(SqlitePool::connect(&self.url).await.unwrap())),
        };
        let swept = tokio::time::timeout(super::PATIENCE, async {
            loop {
                let given_back: i64 = match (&postgres, &sqlite) {
                    (Some(pool), _) => sqlx::query_scalar(SQL)
                        .bind(series)
                        .bind(number)
                        .fetch_one(pool)
                        .await
                        .unwrap(),
                    (_, Some(pool)) => sqlx::query_scalar(SQL)
                        .bind(series)
                        .bind(number)
                        .fetch_one(pool)
                        .await
                        .unwrap(),
                    (None, None) => unreachable!("one pool is made"),
                };
                if given_back > 0 {
                    return;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(
            swept.is_ok(),
            "number {number} of {series:?} not given back"
        );
    }

    /// How many request ids starting with `prefix` the allocator keeps.
    pub async fn request_ids(&self, prefix: &str) -> i64 {
        const SQL: &str = "SELECT count(*) FROM request_ids WHERE request_id LIKE $1 || '%'";
        match self.backend {
            Backend::Postgres => {
                let pool = self.pool(&test_pool_settings()).await;
                sqlx::query_scalar(SQL)
                    .bind(prefix)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
            Backend::Sqlite => {
                let pool = SqlitePool::connect(&self.url).await.unwrap();
                sqlx::query_scalar(SQL)
                    .bind(prefix)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        }
    }

    /// What PostgreSQL counted of the reads of these relations of this
    /// database since it was made, once every other session of it has ended
    /// and reported its reads: rows read by a table's sequential scans, or
    /// entries read by an index's scans.
    pub async fn reads_reported<const N: usize>(&self, relations: [&str; N]) -> [i64; N] {
        let mut conn = PgConnection::connect(&self.url).await.unwrap();
        let others = "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND pid <> pg_backend_pid()";
        tokio::time::timeout(super::PATIENCE, async {
            while sqlx::query_scalar::<_, i64>(others)
                .fetch_one(&mut conn)
                .await
                .unwrap()
                > 0
            {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the other sessions end and report their reads");
        let mut reads = [0; N];
        for (read, relation) in reads.iter_mut().zip(relations) {
            *read = sqlx::query_scalar(
                "SELECT COALESCE(
                     (SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = $1),
                     (SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = $1))",
            )
            .bind(relation)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        }
        reads
    }

    /// A PostgreSQL pool with the services' settings.
    pub async fn pool(&self, settings: &PoolSettings) -> PgPool {
        db::connect_postgres(&self.database_url(), settings)
            .await
            .expect("connect to test database")
    }

    /// Runs SQL as the PostgreSQL administrator, outside the database under test.
    pub async fn admin(&self, sql: String) {
        let mut conn = PgConnection::connect(admin_url())
            .await
            .expect("admin connection");
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect("admin statement");
    }

    /// Makes the PostgreSQL database take no writes (`read_only`), as a
    /// standby not yet promoted does, or take them again: new sessions start
    /// so, and the open ones are ended, so that a pool opens new ones.
    pub async fn set_read_only(&self, read_only: bool) {
        let name = &self.name;
        let setting = if read_only {
            "SET default_transaction_read_only = on"
        } else {
            "RESET default_transaction_read_only"
        };
        self.admin(format!(r#"ALTER DATABASE "{name}" {setting}"#))
            .await;
        self.admin(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await;
    }

    /// Makes the PostgreSQL database unreachable: refuses new connections and
    /// ends the open ones.
    pub async fn cut(&self) {
        let name = &self.name;
        self.admin(format!(
            r#"ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false"#
        ))
        .await;
        self.admin(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await;
    }

    /// Makes the PostgreSQL database reachable again.
    pub async fn restore(&self) {
        let name = &self.name;
        self.admin(format!(
            r#"ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true"#
        ))
        .await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept database {} of the failed test", self.name);
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
            return;
        }
        if self.backend == Backend::Sqlite {
            // The directory goes with `dir`.
            return;
        }
        let sql = format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on:
        // drop the database from a thread with a runtime of its own.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(admin_url()).await {
                    let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await;
                }
            });
        })
        .join()
        .unwrap();
    }
}

/// One row of the allocator's ledger.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AllocationRow {
    pub tenant_id: String,
    pub series: String,
    pub first_value: i64,
    pub count: i64,
    pub kind: String,
    pub reason: String,
    pub request_id: Option<String>,
}

/// Pool settings for tests: room for bursts of 500 calls while the whole
/// suite shares two cores (a connection or SQLite's write lock can then take
/// seconds to come), yet under the server's 10 s request time-out. No
/// operation is cut off before the request time-out: under that load a
/// commit that got its turn late may take seconds; the fault suite checks
/// the bound with the binaries' defaults.
pub fn test_pool_settings() -> PoolSettings {
    PoolSettings {
        max_connections: 10,
        acquire_timeout: Duration::from_secs(8),
        operation_timeout: Duration::from_mins(1),
        create_missing: true,
    }
}
