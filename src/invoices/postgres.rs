//! The invoice store on PostgreSQL: the shared statements (`sql.rs`),
//! each insert in a transaction that commits synchronously. Ids are UUIDs and
//! totals NUMERIC.

use async_trait::async_trait;
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, migrate::Migrator};
use uuid::Uuid;

use crate::{
    db::begin_durable,
    invoices::{
        domain::Invoice,
        sql::{self, Stored},
        store::{HighestNumber, InvoiceStore, StoreError},
    },
    server::Store,
    tenant::TenantId,
};

/// The invoice writer's PostgreSQL migrations, used by start-up and by tests.
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres/invoices");

/// [`InvoiceStore`] on a PostgreSQL pool.
#[derive(Debug, Clone)]
pub struct PgInvoiceStore {
    pool: PgPool,
}

impl PgInvoiceStore {
    /// A store on an already-migrated pool.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// Ids and totals in PostgreSQL's own types.
struct Native;

impl Stored for Native {
    type Id = Uuid;
    type Total = Decimal;

    fn id(id: Uuid) -> Uuid {
        id
    }

    fn total(total: Decimal) -> Decimal {
        total
    }

    fn read(id: Uuid, total: Decimal) -> Result<(Uuid, Decimal), StoreError> {
        Ok((id, total))
    }
}

#[async_trait]
impl InvoiceStore for PgInvoiceStore {
    async fn insert(&self, invoice: &Invoice) -> Result<(), StoreError> {
        let mut tx = begin_durable(&self.pool).await?;
        sql::insert_invoice::<Postgres, Native>(&mut tx, invoice).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Invoice>, StoreError> {
        sql::select_one::<Postgres, Native>(&self.pool, tenant.as_str(), id)
            .await?
            .map(sql::InvoiceRow::into_invoice::<Native>)
            .transpose()
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Invoice>, StoreError> {
        sql::select_page::<Postgres, Native>(&self.pool, tenant.as_str(), after, limit.into())
            .await?
            .into_iter()
            .map(sql::InvoiceRow::into_invoice::<Native>)
            .collect()
    }

    async fn highest_numbers(&self) -> Result<Vec<HighestNumber>, StoreError> {
        Ok(sql::select_highest_numbers(&self.pool).await?)
    }
}

#[async_trait]
impl Store for PgInvoiceStore {
    async fn is_ready(&self) -> bool {
        crate::db::ping(&self.pool).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
