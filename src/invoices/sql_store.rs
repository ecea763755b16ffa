//! The invoices table as both engines read and write it: one statement text
//! each (`$N` placeholders suit both), one row type, one conversion. The
//! engines differ only in how an id and a total are stored: a UUID and a
//! NUMERIC on PostgreSQL, text on SQLite; each backend says which.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type, types::Json};
use uuid::Uuid;

use crate::{
    invoices::{
        domain::{Client, Invoice, LineItem},
        store::{HighestNumber, InvoiceStore, Note, NumberOf, Pending, StoreError},
    },
    request_id::RequestId,
    server::Store,
    tenant::TenantId,
};

/// What differs per engine: its pool, how it stores ids and totals, and how
/// it writes (each engine has its own durable write path).
#[async_trait]
pub(crate) trait Engine: Send + Sync + 'static {
    /// The database kind.
    type Db: Database;
    /// How ids and totals are stored.
    type Stored: Stored;

    /// The pool reads go through.
    fn pool(&self) -> &Pool<Self::Db>;

    /// Stores the invoice ([`store_invoice`]) in the engine's durable write.
    async fn insert(
        &self,
        invoice: &Invoice,
        request_id: Option<&str>,
        pending: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Applies the note ([`apply_note`]) in the engine's write path.
    async fn note(&self, note: Note<'_>) -> Result<(), StoreError>;

    /// Whether the database answers now.
    async fn is_ready(&self) -> bool;

    /// Closes the pool.
    async fn close(&self);
}

/// The invoice store on either engine: the statements of this module, run
/// the way `E` says.
#[derive(Debug, Clone)]
pub struct SqlInvoiceStore<E>(pub(crate) E);

#[async_trait]
impl<E: Engine> InvoiceStore for SqlInvoiceStore<E>
where
    for<'c> &'c mut <E::Db as Database>::Connection: Executor<'c, Database = E::Db>,
    <E::Db as Database>::Arguments: IntoArguments<E::Db>,
    for<'r> RowOf<E::Stored>: FromRow<'r, <E::Db as Database>::Row> + Send + Unpin,
    for<'r> HighestNumber: FromRow<'r, <E::Db as Database>::Row>,
    for<'r> Pending: FromRow<'r, <E::Db as Database>::Row>,
    for<'q> <E::Stored as Stored>::Id: Encode<'q, E::Db> + Type<E::Db>,
    for<'q> &'q str: Encode<'q, E::Db> + Type<E::Db>,
    for<'q> i64: Encode<'q, E::Db> + Type<E::Db>,
    for<'q> DateTime<Utc>: Encode<'q, E::Db> + Type<E::Db>,
{
    async fn insert(
        &self,
        invoice: &Invoice,
        request_id: Option<&RequestId>,
        pending: Option<&str>,
    ) -> Result<(), StoreError> {
        self.0
            .insert(invoice, request_id.map(RequestId::as_str), pending)
            .await
    }

    async fn get_by_request_id(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
    ) -> Result<Option<Invoice>, StoreError> {
        select_by_request_id::<E::Db, E::Stored>(
            self.0.pool(),
            tenant.as_str(),
            request_id.as_str(),
        )
        .await?
        .map(InvoiceRow::into_invoice::<E::Stored>)
        .transpose()
    }

    async fn get_by_number(&self, number: NumberOf<'_>) -> Result<Option<Invoice>, StoreError> {
        select_by_number::<E::Db, E::Stored>(self.0.pool(), number)
            .await?
            .map(InvoiceRow::into_invoice::<E::Stored>)
            .transpose()
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Invoice>, StoreError> {
        select_one::<E::Db, E::Stored>(self.0.pool(), tenant.as_str(), id)
            .await?
            .map(InvoiceRow::into_invoice::<E::Stored>)
            .transpose()
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after: Option<(&str, i64)>,
        limit: u32,
    ) -> Result<Vec<Invoice>, StoreError> {
        // Periods are never empty text but for a series that never resets,
        // whose numbers start at 1: ("", 0) comes before every invoice.
        let (period, number) = after.unwrap_or(("", 0));
        select_page::<E::Db, E::Stored>(
            self.0.pool(),
            tenant.as_str(),
            period,
            number,
            limit.into(),
        )
        .await?
        .into_iter()
        .map(InvoiceRow::into_invoice::<E::Stored>)
        .collect()
    }

    async fn highest_numbers(&self) -> Result<Vec<HighestNumber>, StoreError> {
        Ok(select_highest_numbers(self.0.pool()).await?)
    }

    async fn note(&self, note: Note<'_>) -> Result<(), StoreError> {
        self.0.note(note).await
    }

    async fn pending_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Pending>, StoreError> {
        Ok(select_pending_before(self.0.pool(), before, limit.into()).await?)
    }

    async fn unsettled(&self, limit: u32) -> Result<Vec<Invoice>, StoreError> {
        select_unsettled::<E::Db, E::Stored>(self.0.pool(), limit.into())
            .await?
            .into_iter()
            .map(InvoiceRow::into_invoice::<E::Stored>)
            .collect()
    }
}

#[async_trait]
impl<E: Engine> Store for SqlInvoiceStore<E> {
    async fn is_ready(&self) -> bool {
        self.0.is_ready().await
    }

    async fn close(&self) {
        self.0.close().await;
    }
}

/// The columns every read returns, in the row's order.
const COLUMNS: &str =
    "id, tenant_id, number, invoice_number, period, issue_date, client_id, client_name,
    client_email, client_phone, client_address, due_date, notes, currency, line_items, total,
    created_at";

/// An invoice as stored, its id and total in the engine's own types.
#[derive(FromRow)]
pub(crate) struct InvoiceRow<Id, Total> {
    id: Id,
    tenant_id: String,
    number: i64,
    invoice_number: String,
    period: String,
    issue_date: NaiveDate,
    client_id: String,
    client_name: String,
    client_email: String,
    client_phone: String,
    client_address: String,
    due_date: NaiveDate,
    notes: String,
    currency: String,
    line_items: Json<Vec<LineItem>>,
    total: Total,
    created_at: DateTime<Utc>,
}

/// The row of an engine that stores ids and totals as `S` says.
pub(crate) type RowOf<S> = InvoiceRow<<S as Stored>::Id, <S as Stored>::Total>;

/// How an engine stores an invoice's id and total.
pub(crate) trait Stored: Sized {
    /// The id's stored form.
    type Id;
    /// The total's stored form.
    type Total;

    /// The id as stored.
    fn id(id: Uuid) -> Self::Id;
    /// The total as stored.
    fn total(total: Decimal) -> Self::Total;
    /// Reads back a stored id and total.
    ///
    /// # Errors
    /// A stored value does not parse: the table was edited by hand.
    fn read(id: Self::Id, total: Self::Total) -> Result<(Uuid, Decimal), StoreError>;
}

impl<Id, Total> InvoiceRow<Id, Total> {
    /// The invoice, its id and total read back by `S`.
    pub(crate) fn into_invoice<S: Stored<Id = Id, Total = Total>>(
        self,
    ) -> Result<Invoice, StoreError> {
        let (id, total) = S::read(self.id, self.total)?;
        Ok(Invoice {
            id,
            tenant_id: self.tenant_id,
            number: self.number,
            invoice_number: self.invoice_number,
            period: self.period,
            issue_date: self.issue_date,
            client: Client {
                id: self.client_id,
                name: self.client_name,
                email: self.client_email,
                phone: self.client_phone,
                address: self.client_address,
            },
            due_date: self.due_date,
            notes: self.notes,
            currency: self.currency,
            line_items: self.line_items.0,
            total,
            created_at: self.created_at,
        })
    }
}

/// Inserts the invoice and the request id that created it on `conn`, and
/// deletes the pending note of `pending`, the request key its number was
/// reserved with, if any: inside the caller's transaction, so that the note
/// goes only with a stored invoice.
pub(crate) async fn store_invoice<DB, S>(
    conn: &mut DB::Connection,
    invoice: &Invoice,
    request_id: Option<&str>,
    pending: Option<&str>,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    S: Stored,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> S::Id: Encode<'q, DB> + Type<DB>,
    for<'q> S::Total: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> NaiveDate: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q [LineItem]>: Encode<'q, DB> + Type<DB>,
{
    insert_invoice::<DB, S>(&mut *conn, invoice, request_id).await?;
    if let Some(request_key) = pending {
        let done = Note::Done {
            tenant: &invoice.tenant_id,
            request_key,
        };
        apply_note::<DB, S>(conn, done).await?;
    }
    Ok(())
}

/// Inserts the invoice and the request id that created it on `conn`, inside
/// the caller's transaction.
#[tracing::instrument(name = "db.invoices.insert", skip_all, err(level = "debug"))]
async fn insert_invoice<DB, S>(
    conn: &mut DB::Connection,
    invoice: &Invoice,
    request_id: Option<&str>,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    S: Stored,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> S::Id: Encode<'q, DB> + Type<DB>,
    for<'q> S::Total: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> NaiveDate: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q [LineItem]>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(
        "INSERT INTO invoices (id, tenant_id, number, invoice_number, period, issue_date,
             client_id, client_name, client_email, client_phone, client_address, due_date, notes,
             currency, line_items, total, created_at, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
    )
    .bind(S::id(invoice.id))
    .bind(invoice.tenant_id.as_str())
    .bind(invoice.number)
    .bind(invoice.invoice_number.as_str())
    .bind(invoice.period.as_str())
    .bind(invoice.issue_date)
    .bind(invoice.client.id.as_str())
    .bind(invoice.client.name.as_str())
    .bind(invoice.client.email.as_str())
    .bind(invoice.client.phone.as_str())
    .bind(invoice.client.address.as_str())
    .bind(invoice.due_date)
    .bind(invoice.notes.as_str())
    .bind(invoice.currency.as_str())
    .bind(Json(invoice.line_items.as_slice()))
    .bind(S::total(invoice.total))
    .bind(invoice.created_at)
    .bind(request_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// One of the tenant's invoices, by id.
#[tracing::instrument(name = "db.invoices.select_one", skip_all, err(level = "debug"))]
pub(crate) async fn select_one<DB, S>(
    pool: &Pool<DB>,
    tenant: &str,
    id: Uuid,
) -> Result<Option<RowOf<S>>, sqlx::Error>
where
    DB: Database,
    S: Stored,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> RowOf<S>: FromRow<'r, DB::Row> + Send + Unpin,
    for<'q> S::Id: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invoices WHERE tenant_id = $1 AND id = $2"
    )))
    .bind(tenant)
    .bind(S::id(id))
    .fetch_optional(pool)
    .await
}

/// The tenant's invoice of a period and number, or of its text.
#[tracing::instrument(name = "db.invoices.select_by_number", skip_all, err(level = "debug"))]
pub(crate) async fn select_by_number<DB, S>(
    pool: &Pool<DB>,
    number: NumberOf<'_>,
) -> Result<Option<RowOf<S>>, sqlx::Error>
where
    DB: Database,
    S: Stored,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> RowOf<S>: FromRow<'r, DB::Row> + Send + Unpin,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invoices
         WHERE tenant_id = $1 AND ((period = $2 AND number = $3) OR invoice_number = $4)
         ORDER BY period, number LIMIT 1"
    )))
    .bind(number.tenant)
    .bind(number.period)
    .bind(number.number)
    .bind(number.formatted)
    .fetch_optional(pool)
    .await
}

/// The tenant's invoice created with this request id.
#[tracing::instrument(
    name = "db.invoices.select_by_request_id",
    skip_all,
    err(level = "debug")
)]
pub(crate) async fn select_by_request_id<DB, S>(
    pool: &Pool<DB>,
    tenant: &str,
    request_id: &str,
) -> Result<Option<RowOf<S>>, sqlx::Error>
where
    DB: Database,
    S: Stored,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> RowOf<S>: FromRow<'r, DB::Row> + Send + Unpin,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invoices WHERE tenant_id = $1 AND request_id = $2"
    )))
    .bind(tenant)
    .bind(request_id)
    .fetch_optional(pool)
    .await
}

/// Up to `limit` of the tenant's invoices after (`period`, `number`), in
/// period and number order.
#[tracing::instrument(name = "db.invoices.select_page", skip_all, err(level = "debug"))]
pub(crate) async fn select_page<DB, S>(
    pool: &Pool<DB>,
    tenant: &str,
    period: &str,
    number: i64,
    limit: i64,
) -> Result<Vec<RowOf<S>>, sqlx::Error>
where
    DB: Database,
    S: Stored,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> RowOf<S>: FromRow<'r, DB::Row> + Send + Unpin,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invoices WHERE tenant_id = $1 AND (period, number) > ($2, $3)
         ORDER BY period, number LIMIT $4"
    )))
    .bind(tenant)
    .bind(period)
    .bind(number)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Highest number per tenant and issue date. `number` is an integer column,
/// so INV-1000 ranks above INV-999, as a text sort of `invoice_number` would
/// not.
#[tracing::instrument(
    name = "db.invoices.select_highest_numbers",
    skip_all,
    err(level = "debug")
)]
pub(crate) async fn select_highest_numbers<DB>(
    pool: &Pool<DB>,
) -> Result<Vec<HighestNumber>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> HighestNumber: FromRow<'r, DB::Row>,
{
    sqlx::query_as(
        "SELECT tenant_id, issue_date, MAX(number) AS number FROM invoices
         GROUP BY tenant_id, issue_date ORDER BY tenant_id, issue_date",
    )
    .fetch_all(pool)
    .await
}

/// Applies a note of the reservations in flight on `conn`, inside the
/// caller's write.
#[tracing::instrument(name = "db.pending_numbers.note", skip_all, err(level = "debug"))]
pub(crate) async fn apply_note<DB, S>(
    conn: &mut DB::Connection,
    note: Note<'_>,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    S: Stored,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> S::Id: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
{
    let query = match note {
        // A repeated call asks with the same request id again: the row is
        // its own now, and not stale.
        Note::Pending(pending) => sqlx::query(
            "INSERT INTO pending_numbers (tenant_id, request_key, issue_date, since)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id, request_key) DO UPDATE SET since = excluded.since",
        )
        .bind(pending.tenant_id.as_str())
        .bind(pending.request_key.as_str())
        .bind(pending.issue_date.as_str())
        .bind(pending.since),
        Note::Done {
            tenant,
            request_key,
        } => sqlx::query("DELETE FROM pending_numbers WHERE tenant_id = $1 AND request_key = $2")
            .bind(tenant)
            .bind(request_key),
        Note::Settled { tenant, id } => sqlx::query(
            "UPDATE invoices SET number_settled = TRUE WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(S::id(id)),
    };
    query.execute(conn).await?;
    Ok(())
}

/// Up to `limit` reservations pending since before `before`, oldest first.
#[tracing::instrument(name = "db.pending_numbers.select_old", skip_all, err(level = "debug"))]
pub(crate) async fn select_pending_before<DB>(
    pool: &Pool<DB>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Pending>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> Pending: FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(
        "SELECT tenant_id, request_key, issue_date, since FROM pending_numbers
         WHERE since < $1 ORDER BY since LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Up to `limit` invoices whose number is not settled, oldest first.
#[tracing::instrument(name = "db.invoices.select_unsettled", skip_all, err(level = "debug"))]
pub(crate) async fn select_unsettled<DB, S>(
    pool: &Pool<DB>,
    limit: i64,
) -> Result<Vec<RowOf<S>>, sqlx::Error>
where
    DB: Database,
    S: Stored,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> RowOf<S>: FromRow<'r, DB::Row> + Send + Unpin,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invoices WHERE NOT number_settled ORDER BY created_at LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(pool)
    .await
}
