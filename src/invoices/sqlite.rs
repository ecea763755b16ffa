//! The invoice store on SQLite: the shared statements (`sql.rs`), each
//! insert through the one SQLite write path (see [`crate::db::open_sqlite`]).
//! Ids and totals are stored as text.

use std::str::FromStr;

use async_trait::async_trait;
use rust_decimal::Decimal;
use sqlx::{Sqlite, migrate::Migrator};
use uuid::{Uuid, fmt::Hyphenated};

use crate::{
    db::SqliteDatabase,
    invoices::{
        domain::Invoice,
        sql::{self, Stored},
        store::{HighestNumber, InvoiceStore, StoreError},
    },
    server::Store,
    tenant::TenantId,
};

/// The invoice writer's SQLite migrations, used by start-up and by tests.
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite/invoices");

/// [`InvoiceStore`] on a SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteInvoiceStore {
    db: SqliteDatabase,
}

impl SqliteInvoiceStore {
    /// A store on an already-migrated database.
    #[must_use]
    pub fn new(db: SqliteDatabase) -> Self {
        Self { db }
    }
}

/// Ids as hyphenated text, totals as decimal text: SQLite has neither type.
struct AsText;

impl Stored for AsText {
    type Id = Hyphenated;
    type Total = String;

    fn id(id: Uuid) -> Hyphenated {
        id.hyphenated()
    }

    fn total(total: Decimal) -> String {
        total.to_string()
    }

    fn read(id: Hyphenated, total: String) -> Result<(Uuid, Decimal), StoreError> {
        let total = Decimal::from_str(&total).map_err(|error| {
            StoreError::Internal(format!("stored total {total:?}: {error}").into())
        })?;
        Ok((id.into_uuid(), total))
    }
}

#[async_trait]
impl InvoiceStore for SqliteInvoiceStore {
    async fn insert(&self, invoice: &Invoice) -> Result<(), StoreError> {
        let mut write = self.db.begin_write().await?;
        sql::insert_invoice::<Sqlite, AsText>(write.conn(), invoice).await?;
        // Not acknowledged if it went to a file no longer at its path.
        write.commit().await?;
        Ok(())
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Invoice>, StoreError> {
        sql::select_one::<Sqlite, AsText>(self.db.pool(), tenant.as_str(), id)
            .await?
            .map(sql::InvoiceRow::into_invoice::<AsText>)
            .transpose()
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Invoice>, StoreError> {
        sql::select_page::<Sqlite, AsText>(self.db.pool(), tenant.as_str(), after, limit.into())
            .await?
            .into_iter()
            .map(sql::InvoiceRow::into_invoice::<AsText>)
            .collect()
    }

    async fn highest_numbers(&self) -> Result<Vec<HighestNumber>, StoreError> {
        Ok(sql::select_highest_numbers(self.db.pool()).await?)
    }
}

#[async_trait]
impl Store for SqliteInvoiceStore {
    async fn is_ready(&self) -> bool {
        self.db.is_ready().await
    }

    async fn close(&self) {
        self.db.close().await;
    }
}
