//! The invoice store on PostgreSQL: the store written once (`sql_store.rs`),
//! each insert in a transaction that commits synchronously. Ids are UUIDs and
//! totals NUMERIC.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
};

use async_trait::async_trait;
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool, Postgres, migrate::Migrator};
use uuid::Uuid;

use crate::{
    db::{KeptConnection, begin_durable, begin_durable_by_key_on},
    invoices::{
        domain::Invoice,
        sql_store::{self, Done, Engine, KeyLookups, Made, SqlInvoiceStore, Stored, Write},
        store::{Pending, StoreError},
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

/// One text for every group, the keys as arrays: each connection plans it
/// once (see [`crate::db::connect_postgres`]), where a list of values would
/// be planned anew for each group. That one plan is made on the tables as
/// they are then, empty on a fresh database, or a few rows long when last
/// analyzed, and kept as they grow. So each key is looked up by a read of
/// its own (`LATERAL … LIMIT 1`), in a transaction with sequential scans off
/// ([`begin_durable_by_key_on`]): read by index whatever the statistics say.
/// A join of the keys with the table would be planned as a hash of the whole
/// table.
#[async_trait]
impl KeyLookups for Postgres {
    const HOLD_NOTE: &'static str = " FOR SHARE";

    #[tracing::instrument(name = "db.pending_numbers.upsert", skip_all, err(level = "debug"))]
    async fn upsert_pending(
        conn: &mut PgConnection,
        pending: &[(&Pending, Option<&str>)],
    ) -> Result<HashSet<(String, String)>, sqlx::Error> {
        let noted: Vec<(String, String)> = sqlx::query_as(
            "INSERT INTO pending_numbers
                 (tenant_id, request_key, issue_date, since, invoice_id, noted_by)
             SELECT v.tenant_id, v.request_key, v.issue_date, v.since, v.invoice_id, v.invoice_id
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                         $6::text[])
                  AS v (tenant_id, request_key, issue_date, since, invoice_id, request_id)
             LEFT JOIN LATERAL (
                 SELECT TRUE AS created FROM invoices i
                 WHERE i.tenant_id = v.tenant_id AND i.request_id = v.request_id
                 LIMIT 1) AS i ON TRUE
             WHERE i.created IS NULL
             ON CONFLICT (tenant_id, request_key)
             DO UPDATE SET since = excluded.since, invoice_id = excluded.invoice_id,
                 noted_by = pending_numbers.noted_by || ' ' || excluded.invoice_id
             RETURNING tenant_id, request_key",
        )
        .bind(
            pending
                .iter()
                .map(|(p, _)| p.tenant_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            pending
                .iter()
                .map(|(p, _)| p.request_key.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            pending
                .iter()
                .map(|(p, _)| p.issue_date.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(pending.iter().map(|(p, _)| p.since).collect::<Vec<_>>())
        .bind(
            pending
                .iter()
                .map(|(p, _)| p.invoice_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(pending.iter().map(|(_, id)| *id).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
        Ok(noted.into_iter().collect())
    }

    /// Each note is deleted by its place (`ctid`), found by key: a note
    /// another process wrote again since the statement began (a repeated
    /// call's, in another writer) is that call's now, and stays; it is
    /// settled in turn, or reconciled as stale.
    #[tracing::instrument(name = "db.pending_numbers.delete", skip_all, err(level = "debug"))]
    async fn delete_pending(
        conn: &mut PgConnection,
        done: &BTreeSet<Done<'_>>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "DELETE FROM pending_numbers p
             USING UNNEST($1::text[], $2::text[], $3::text[])
                       AS v (tenant_id, request_key, withdrawn_by)
                   CROSS JOIN LATERAL (
                       SELECT n.ctid FROM pending_numbers n
                       WHERE n.tenant_id = v.tenant_id AND n.request_key = v.request_key
                       LIMIT 1) AS n
             WHERE p.ctid = n.ctid
                 AND (v.withdrawn_by IS NULL OR p.noted_by = '')",
        )
        .bind(done.iter().map(|(tenant, ..)| *tenant).collect::<Vec<_>>())
        .bind(done.iter().map(|(_, key, _)| *key).collect::<Vec<_>>())
        .bind(done.iter().map(|(.., by)| *by).collect::<Vec<_>>())
        .execute(conn)
        .await?;
        Ok(())
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
        let mut tx = begin_durable_by_key_on(&mut conn).await?;
        let made = sql_store::write_group::<Postgres, Native>(&mut tx, writes).await?;
        tx.commit().await?;
        conn.keep();
        Ok(made)
    }

    async fn insert(
        &self,
        invoice: &Invoice,
        request_id: Option<&str>,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = begin_durable(&self.pool).await?;
        let stored =
            sql_store::insert_invoice::<Postgres, Native>(&mut tx, invoice, request_id, note)
                .await?;
        if !stored {
            return Err(StoreError::NoteTakenOver);
        }
        tx.commit().await?;
        Ok(())
    }

    async fn readiness(&self) -> Result<(), crate::db::NotReady> {
        crate::db::ping(&self.pool, &MIGRATOR).await
    }

    async fn close(&self) {
        self.groups.release();
        self.pool.close().await;
    }
}
