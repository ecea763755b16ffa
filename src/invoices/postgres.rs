//! The invoice store on PostgreSQL: one statement per operation.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool, migrate::Migrator, types::Json};
use uuid::Uuid;

use crate::{
    db::begin_durable,
    invoices::{
        domain::{Client, Invoice, LineItem},
        store::{COLUMNS, HighestNumber, InvoiceStore, StoreError},
    },
    server::Readiness,
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

#[derive(sqlx::FromRow)]
struct InvoiceRow {
    id: Uuid,
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
    total: Decimal,
    created_at: DateTime<Utc>,
}

impl From<InvoiceRow> for Invoice {
    fn from(row: InvoiceRow) -> Self {
        Self {
            id: row.id,
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
            total: row.total,
            created_at: row.created_at,
        }
    }
}

#[tracing::instrument(name = "db.invoices.insert", skip_all, err(level = "debug"))]
async fn insert_invoice(conn: &mut PgConnection, invoice: &Invoice) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO invoices (id, tenant_id, number, invoice_number, client_id, client_name,
             client_email, client_phone, client_address, due_date, notes, currency, line_items,
             total, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(invoice.id)
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
    .bind(invoice.total)
    .bind(invoice.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

#[tracing::instrument(name = "db.invoices.select_one", skip_all, err(level = "debug"))]
async fn select_one(
    pool: &PgPool,
    tenant: &str,
    id: Uuid,
) -> Result<Option<InvoiceRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invoices WHERE tenant_id = $1 AND id = $2"
    )))
    .bind(tenant)
    .bind(id)
    .fetch_optional(pool)
    .await
}

#[tracing::instrument(name = "db.invoices.select_page", skip_all, err(level = "debug"))]
async fn select_page(
    pool: &PgPool,
    tenant: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<InvoiceRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invoices WHERE tenant_id = $1 AND number > $2
         ORDER BY number LIMIT $3"
    )))
    .bind(tenant)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Highest number per tenant. `number` is a BIGINT, so INV-1000 ranks above
/// INV-999, as a text sort of `invoice_number` would not.
#[tracing::instrument(
    name = "db.invoices.select_highest_numbers",
    skip_all,
    err(level = "debug")
)]
async fn select_highest_numbers(pool: &PgPool) -> Result<Vec<HighestNumber>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, MAX(number) AS number FROM invoices GROUP BY tenant_id ORDER BY tenant_id",
    )
    .fetch_all(pool)
    .await
}

#[async_trait]
impl InvoiceStore for PgInvoiceStore {
    async fn insert(&self, invoice: &Invoice) -> Result<(), StoreError> {
        let mut tx = begin_durable(&self.pool).await?;
        insert_invoice(&mut tx, invoice).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Invoice>, StoreError> {
        Ok(select_one(&self.pool, tenant.as_str(), id)
            .await?
            .map(Into::into))
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Invoice>, StoreError> {
        let rows = select_page(&self.pool, tenant.as_str(), after, i64::from(limit)).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn highest_numbers(&self) -> Result<Vec<HighestNumber>, StoreError> {
        Ok(select_highest_numbers(&self.pool).await?)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Readiness for PgInvoiceStore {
    async fn is_ready(&self) -> bool {
        crate::db::ping(&self.pool).await
    }
}
