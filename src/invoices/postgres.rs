//! The invoice store on PostgreSQL: the store written once (`sql_store.rs`),
//! each insert in a transaction that commits synchronously. Ids are UUIDs and
//! totals NUMERIC.

use std::sync::Arc;

use async_trait::async_trait;
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, migrate::Migrator};
use uuid::Uuid;

use crate::{
    db::{KeptConnection, begin_durable, begin_durable_on},
    invoices::{
        domain::Invoice,
        sql_store::{self, Engine, Made, SqlInvoiceStore, Stored, Write},
        store::StoreError,
    },
};

/// The invoice writer's PostgreSQL migrations, used by start-up and by tests.
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres/invoices");

/// The invoice store on a PostgreSQL pool.
pub type PgInvoiceStore = SqlInvoiceStore<PgEngine>;

impl PgInvoiceStore {
    /// A store on an already-migrated pool.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        sql_store::on(PgEngine {
            groups: Arc::new(KeptConnection::new(pool.clone())),
            pool,
        })
    }
}

/// PostgreSQL as the invoice statements see it.
#[derive(Debug, Clone)]
pub struct PgEngine {
    pool: PgPool,
    /// The connection kept for the group commit's transactions, which run
    /// one after another.
    groups: Arc<KeptConnection>,
}

/// Ids and totals in PostgreSQL's own types.
pub struct Native;

impl Stored for Native {
    type Id = Uuid;
    type Total = Decimal;

    fn id(id: Uuid) -> Uuid {
        id
    }

    fn total(total: Decimal) -> Decimal {
        total
    }

    fn read_id(id: Uuid) -> Uuid {
        id
    }

    fn read(id: Uuid, total: Decimal) -> Result<(Uuid, Decimal), StoreError> {
        Ok((id, total))
    }
}

#[async_trait]
impl Engine for PgEngine {
    type Db = Postgres;
    type Stored = Native;

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn write_group(&self, writes: &[Write]) -> Result<Made, sqlx::Error> {
        let mut conn = self.groups.take().await?;
        let mut tx = begin_durable_on(&mut conn).await?;
        let made = sql_store::write_group::<Postgres, Native>(&mut tx, writes).await?;
        tx.commit().await?;
        conn.keep();
        Ok(made)
    }

    async fn insert(
        &self,
        invoice: &Invoice,
        request_id: Option<&str>,
        noted: bool,
    ) -> Result<(), StoreError> {
        let mut tx = begin_durable(&self.pool).await?;
        sql_store::insert_invoice::<Postgres, Native>(&mut tx, invoice, request_id, noted).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn is_ready(&self) -> bool {
        crate::db::ping(&self.pool).await
    }

    async fn close(&self) {
        self.groups.release();
        self.pool.close().await;
    }
}
