//! The invoice store on SQLite: the store written once (`sql_store.rs`), each
//! insert through the one SQLite write path (see [`crate::db::open_sqlite`]).
//! Ids and totals are stored as text.

use std::{
    collections::{BTreeSet, HashSet},
    str::FromStr,
};

use async_trait::async_trait;
use rust_decimal::Decimal;
use sqlx::{Sqlite, SqliteConnection, SqlitePool, migrate::Migrator};
use uuid::{Uuid, fmt::Hyphenated};

use crate::{
    db::SqliteDatabase,
    invoices::{
        domain::Invoice,
        sql_store::{self, Done, Engine, KeyLookups, Made, SqlInvoiceStore, Stored, Write},
        store::{Pending, StoreError},
    },
};

/// The invoice writer's SQLite migrations, used by start-up and by tests.
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite/invoices");

/// The invoice store on a SQLite database file.
pub type SqliteInvoiceStore = SqlInvoiceStore<SqliteEngine>;

impl SqliteInvoiceStore {
    /// A store on an already-migrated database.
    #[must_use]
    pub fn new(db: SqliteDatabase) -> Self {
        sql_store::on(SqliteEngine { db })
    }
}

/// SQLite as the invoice statements see it.
#[derive(Debug, Clone)]
pub struct SqliteEngine {
    db: SqliteDatabase,
}

/// Ids as hyphenated text, totals as decimal text: SQLite has neither type.
pub struct AsText;

impl Stored for AsText {
    type Id = Hyphenated;
    type Total = String;

    fn id(id: Uuid) -> Hyphenated {
        id.hyphenated()
    }

    fn total(total: Decimal) -> String {
        total.to_string()
    }

    fn read_id(id: Hyphenated) -> Uuid {
        id.into_uuid()
    }

    fn read(id: Hyphenated, total: String) -> Result<(Uuid, Decimal), StoreError> {
        let total = Decimal::from_str(&total).map_err(|error| {
            StoreError::Internal(format!("stored total {total:?}: {error}").into())
        })?;
        Ok((id.into_uuid(), total))
    }
}

/// SQLite plans a statement in microseconds, and looks each key of a list
/// of values up by its index: the statements as written once.
#[async_trait]
impl KeyLookups for Sqlite {
    const HOLD_NOTE: &'static str = "";

    async fn upsert_pending(
        conn: &mut SqliteConnection,
        pending: &[(&Pending, Option<&str>)],
    ) -> Result<HashSet<(String, String)>, sqlx::Error> {
        sql_store::upsert_pending::<Sqlite>(conn, pending).await
    }

    async fn delete_pending(
        conn: &mut SqliteConnection,
        done: &BTreeSet<Done<'_>>,
    ) -> Result<(), sqlx::Error> {
        sql_store::delete_pending::<Sqlite>(conn, done).await
    }
}

#[async_trait]
impl Engine for SqliteEngine {
    type Db = Sqlite;
    type Stored = AsText;

    fn pool(&self) -> &SqlitePool {
        self.db.pool()
    }

    async fn write_group(&self, writes: &[Write]) -> Result<Made, sqlx::Error> {
        let mut write = self.db.begin_write().await?;
        let made = sql_store::write_group::<Sqlite, AsText>(write.conn(), writes).await?;
        // Not acknowledged if it went to a file no longer at its path.
        write.commit().await?;
        Ok(made)
    }

    async fn insert(
        &self,
        invoice: &Invoice,
        request_id: Option<&str>,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut write = self.db.begin_write().await?;
        let stored =
            sql_store::insert_invoice::<Sqlite, AsText>(write.conn(), invoice, request_id, note)
                .await?;
        if !stored {
            return Err(StoreError::NoteTakenOver);
        }
        // Not acknowledged if it went to a file no longer at its path.
        write.commit().await?;
        Ok(())
    }

    async fn readiness(&self) -> Result<(), crate::db::NotReady> {
        self.db.readiness().await
    }

    async fn close(&self) {
        self.db.close().await;
    }
}
