//! The invoice store on SQLite: one statement per operation, each insert in an
//! immediate transaction committed with `synchronous = FULL` (see
//! [`crate::db::open_sqlite`]).

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::{SqliteConnection, SqlitePool, migrate::Migrator, types::Json};
use uuid::{Uuid, fmt::Hyphenated};

use crate::{
    db::SqliteDatabase,
    invoices::{
        domain::{Client, Invoice, LineItem},
        store::{COLUMNS, HighestNumber, InvoiceStore, StoreError},
    },
    server::Readiness,
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

#[derive(sqlx::FromRow)]
struct InvoiceRow {
    id: Hyphenated,
    tenant_id: String,
    number: i64,
    invoice_number: String,
    client_id: String,
    client_name: String,
    client_email: String,
    client_phone: String,
    client_address: String,
    due_date: NaiveDate,
    notes: String,
    currency: String,
    line_items: Json<Vec<LineItem>>,
    total: String,
    created_at: DateTime<Utc>,
}

impl TryFrom<InvoiceRow> for Invoice {
    type Error = StoreError;

    fn try_from(row: InvoiceRow) -> Result<Self, StoreError> {
        let total = Decimal::from_str(&row.total).map_err(|error| {
            StoreError::Internal(format!("stored total {:?}: {error}", row.total).into())
        })?;
        Ok(Self {
            id: row.id.into_uuid(),
            tenant_id: row.tenant_id,
            number: row.number,
            invoice_number: row.invoice_number,
            client: Client {
                id: row.client_id,
                name: row.client_name,
                email: row.client_email,
                phone: row.client_phone,
                address: row.client_address,
            },
            due_date: row.due_date,
            notes: row.notes,
            currency: row.currency,
            line_items: row.line_items.0,
            total,
            created_at: row.created_at,
        })
    }
}

#[tracing::instrument(name = "db.invoices.insert", skip_all, err(level = "debug"))]
async fn insert_invoice(conn: &mut SqliteConnection, invoice: &Invoice) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO invoices (id, tenant_id, number, invoice_number, client_id, client_name,
             client_email, client_phone, client_address, due_date, notes, currency, line_items,
             total, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )
    .bind(invoice.id.hyphenated())
    .bind(&invoice.tenant_id)
    .bind(invoice.number)
    .bind(&invoice.invoice_number)
    .bind(&invoice.client.id)
    .bind(&invoice.client.name)
    .bind(&invoice.client.email)
    .bind(&invoice.client.phone)
    .bind(&invoice.client.address)
    .bind(invoice.due_date)
    .bind(&invoice.notes)
    .bind(&invoice.currency)
    .bind(Json(&invoice.line_items))
    .bind(invoice.total.to_string())
    .bind(invoice.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

#[tracing::instrument(name = "db.invoices.select_one", skip_all, err(level = "debug"))]
async fn select_one(
    pool: &SqlitePool,
    tenant: &str,
    id: Uuid,
) -> Result<Option<InvoiceRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invoices WHERE tenant_id = ?1 AND id = ?2"
    )))
    .bind(tenant)
    .bind(id.hyphenated())
    .fetch_optional(pool)
    .await
}

#[tracing::instrument(name = "db.invoices.select_page", skip_all, err(level = "debug"))]
async fn select_page(
    pool: &SqlitePool,
    tenant: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<InvoiceRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invoices WHERE tenant_id = ?1 AND number > ?2
         ORDER BY number LIMIT ?3"
    )))
    .bind(tenant)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Highest number per tenant, compared as integers.
#[tracing::instrument(
    name = "db.invoices.select_highest_numbers",
    skip_all,
    err(level = "debug")
)]
async fn select_highest_numbers(pool: &SqlitePool) -> Result<Vec<HighestNumber>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, MAX(number) AS number FROM invoices GROUP BY tenant_id ORDER BY tenant_id",
    )
    .fetch_all(pool)
    .await
}

#[async_trait]
impl InvoiceStore for SqliteInvoiceStore {
    async fn insert(&self, invoice: &Invoice) -> Result<(), StoreError> {
        let mut write = self.db.begin_write().await?;
        insert_invoice(write.conn(), invoice).await?;
        // Not acknowledged if it went to a file no longer at its path.
        write.commit().await?;
        Ok(())
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Invoice>, StoreError> {
        select_one(self.db.pool(), tenant.as_str(), id)
            .await?
            .map(Invoice::try_from)
            .transpose()
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Invoice>, StoreError> {
        select_page(self.db.pool(), tenant.as_str(), after, i64::from(limit))
            .await?
            .into_iter()
            .map(Invoice::try_from)
            .collect()
    }

    async fn highest_numbers(&self) -> Result<Vec<HighestNumber>, StoreError> {
        Ok(select_highest_numbers(self.db.pool()).await?)
    }

    async fn close(&self) {
        self.db.close().await;
    }
}

#[async_trait]
impl Readiness for SqliteInvoiceStore {
    async fn is_ready(&self) -> bool {
        self.db.is_ready().await
    }
}
