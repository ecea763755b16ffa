//! The invoices table as both engines read and write it: one statement text
//! each (`$N` placeholders suit both), one row type, one conversion. The
//! engines differ in how an id and a total are stored: a UUID and a NUMERIC
//! on PostgreSQL, text on SQLite; each backend says which. PostgreSQL also
//! has its own text for the two statements of a group that look its keys up
//! ([`KeyLookups`]).
//!
//! Writes are committed in groups ([`crate::group`]): every invoice, note
//! and settled mark that arrives while a group commits goes into the next
//! group's one transaction, and is answered once it has committed.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::Arc,
};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use rust_decimal::Decimal;
use sqlx::{
    Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, QueryBuilder, Type,
    database::HasStatementCache, types::Json,
};
use uuid::Uuid;

use crate::{
    db::{DbErrorKind, classify},
    group::{Group, Refused},
    invoices::{
        domain::{Client, Invoice, LineItem},
        store::{
            HighestNumber, InvoiceStore, Note, NotedAt, NumberOf, Pending, StoreError, StoredAt,
        },
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

    /// Makes a group of writes ([`write_group`]) in one durable transaction
    /// of the engine.
    async fn write_group(&self, writes: &[Write]) -> Result<Made, sqlx::Error>;

    /// Stores the invoice ([`insert_invoice`]) in the engine's durable write.
    async fn insert(
        &self,
        invoice: &Invoice,
        request_id: Option<&str>,
        note: Option<&str>,
    ) -> Result<(), StoreError>;

    /// `Ok` if the database takes calls now, else why not.
    async fn readiness(&self) -> Result<(), crate::db::NotReady>;

    /// Closes the pool.
    async fn close(&self);
}

/// The two statements of a group that look each of its keys up: the insert
/// of the pending notes, with its check of request ids ([`upsert_pending`]),
/// and the deletion of the notes done ([`delete_pending`]). SQLite runs them
/// as written in this module, a list of values in a text that grows with the
/// group; PostgreSQL, which would plan such a text anew for every group, has
/// its own, one text for every group.
#[async_trait]
pub(crate) trait KeyLookups: Database {
    /// Notes reservations pending, each unless its call's request id already
    /// created one of the tenant's invoices. Returns the notes made, by
    /// tenant and request key.
    async fn upsert_pending(
        conn: &mut Self::Connection,
        pending: &[(&Pending, Option<&str>)],
    ) -> Result<HashSet<(String, String)>, sqlx::Error>;

    /// Deletes the notes of reservations done, by tenant and request key;
    /// one withdrawn only once no call that noted it is left.
    async fn delete_pending(
        conn: &mut Self::Connection,
        done: &BTreeSet<Done<'_>>,
    ) -> Result<(), sqlx::Error>;

    /// What an insert adds to its read of an invoice's note to hold the
    /// note until it commits, so that the note cannot be taken over
    /// ([`take_over_pending`]) in between: PostgreSQL locks the row, where
    /// SQLite's write transaction holds the whole database.
    const HOLD_NOTE: &'static str;
}

/// The invoice store on either engine: the statements of this module, run
/// the way `E` says, its writes committed in groups.
pub struct SqlInvoiceStore<E> {
    engine: Arc<E>,
    writes: Group<Write, Result<(), StoreError>>,
}

/// Most writes waiting for a group; more fail `UNAVAILABLE`.
const WAITING_WRITES: usize = 10_000;

/// Most writes in one group: an invoice takes 20 parameters, and SQLite
/// takes at most 32,766 in one statement (PostgreSQL 65,535).
const MAX_GROUP: usize = 500;

/// The store on `engine`; starts the task that commits its writes.
///
/// # Panics
/// Called outside a Tokio runtime.
pub(crate) fn on<E: Engine>(engine: E) -> SqlInvoiceStore<E> {
    let engine = Arc::new(engine);
    let committer = engine.clone();
    let writes = Group::start(WAITING_WRITES, MAX_GROUP, move |writes| {
        let engine = committer.clone();
        async move { commit_group(&*engine, writes).await }
    });
    SqlInvoiceStore { engine, writes }
}

impl<E> SqlInvoiceStore<E> {
    /// Makes `write` in the next group, once it has committed.
    async fn write(&self, write: Write) -> Result<(), StoreError> {
        self.writes.write(write).await.unwrap_or_else(|refused| {
            Err(match refused {
                Refused::Full => StoreError::Unavailable(refused.into()),
                Refused::Stopped => StoreError::Internal(refused.into()),
            })
        })
    }
}

/// A write of the store, owned so that it can wait for its group.
#[derive(Debug)]
pub(crate) enum Write {
    /// A new invoice, with the request id that created it, and the request
    /// key of the pending note that names it.
    Invoice {
        /// The invoice.
        invoice: Box<Invoice>,
        /// The call's request id.
        request_id: Option<String>,
        /// The request key of the pending note that names it.
        note: Option<String>,
    },
    /// [`Note::Pending`].
    Pending {
        /// The reservation.
        note: Pending,
        /// The call's request id.
        request_id: Option<String>,
    },
    /// [`InvoiceStore::take_over`].
    TakeOver {
        /// The tenant.
        tenant: String,
        /// The reservation's request key.
        request_key: String,
        /// The invoice the note named when read.
        invoice_id: String,
    },
    /// [`Note::Done`], and [`Note::Withdrawn`].
    Done {
        /// The tenant.
        tenant: String,
        /// The reservation's request key.
        request_key: String,
        /// Withdrawn: the invoice of the call withdrawing, taken off the
        /// note's callers; the note goes once none is left.
        withdrawn_by: Option<String>,
    },
    /// [`Note::Settled`].
    Settled {
        /// The tenant.
        tenant: String,
        /// The invoice.
        id: Uuid,
    },
}

impl Write {
    fn of(note: Note<'_>) -> Self {
        match note {
            Note::Pending {
                pending,
                request_id,
            } => Self::Pending {
                note: pending.clone(),
                request_id: request_id.map(|id| id.as_str().to_owned()),
            },
            Note::Done {
                tenant,
                request_key,
            } => Self::Done {
                tenant: tenant.to_owned(),
                request_key: request_key.to_owned(),
                withdrawn_by: None,
            },
            Note::Withdrawn { pending } => Self::Done {
                tenant: pending.tenant_id.clone(),
                request_key: pending.request_key.clone(),
                withdrawn_by: Some(pending.invoice_id.clone()),
            },
            Note::Settled { tenant, id } => Self::Settled {
                tenant: tenant.to_owned(),
                id,
            },
        }
    }

    /// Makes this write alone, in a transaction of its own: with its own
    /// error, as it would be without a group.
    async fn alone(&self, engine: &impl Engine) -> Result<(), StoreError> {
        if let Self::Invoice {
            invoice,
            request_id,
            note,
        } = self
        {
            // Not left out on a number or request id taken, but refused.
            return engine
                .insert(invoice, request_id.as_deref(), note.as_deref())
                .await;
        }
        // A note takes nothing another row holds: a group of one fails
        // with its own error.
        let made = engine.write_group(std::slice::from_ref(self)).await?;
        self.answer(&made)
    }

    /// What this write answers once `made` committed, if it was not left
    /// out.
    fn answer(&self, made: &Made) -> Result<(), StoreError> {
        match self {
            Self::Pending {
                note,
                request_id: Some(request_id),
            } if made.taken(&note.tenant_id, request_id) => Err(StoreError::RequestIdTaken),
            Self::TakeOver {
                tenant,
                request_key,
                ..
            } if !is_taken(&made.taken_over, tenant, request_key) => Err(StoreError::NoteTakenOver),
            _ => Ok(()),
        }
    }
}

/// What a group made.
#[derive(Debug, Default)]
pub(crate) struct Made {
    /// The ids of the invoices it stored.
    stored: HashSet<Uuid>,
    /// The tenants' request ids of pending notes not noted, since an
    /// invoice created by the same request id is stored.
    taken: HashSet<(String, String)>,
    /// The notes taken over, by tenant and request key.
    taken_over: HashSet<(String, String)>,
}

impl Made {
    fn taken(&self, tenant: &str, request_id: &str) -> bool {
        is_taken(&self.taken, tenant, request_id)
    }
}

/// Whether a tenant's key (a request id, or request key) is among those
/// `taken`.
fn is_taken(taken: &HashSet<(String, String)>, tenant: &str, key: &str) -> bool {
    // Almost always empty: no key is built then.
    !taken.is_empty() && taken.contains(&(tenant.to_owned(), key.to_owned()))
}

/// Commits a group of writes in one transaction, and answers each. A write
/// the group could not make is made alone, so that it fails with its own
/// error (a number or request id already taken) and fails no other write.
async fn commit_group<E: Engine>(engine: &E, writes: Vec<Write>) -> Vec<Result<(), StoreError>> {
    #[allow(clippy::cast_precision_loss)] // at most MAX_GROUP
    metrics::histogram!("numbering_invoice_write_batch_size").record(writes.len() as f64);
    let mut answers = Vec::with_capacity(writes.len());
    match engine.write_group(&writes).await {
        Ok(made) => {
            for write in &writes {
                answers.push(match write {
                    Write::Invoice { invoice, .. } if !made.stored.contains(&invoice.id) => {
                        write.alone(engine).await
                    }
                    _ => write.answer(&made),
                });
            }
        }
        // The database cannot be reached: neither could any write alone.
        Err(error) if classify(&error) == DbErrorKind::Unavailable => {
            let cause = SharedCause(Arc::new(error));
            answers.extend(
                writes
                    .iter()
                    .map(|_| Err(StoreError::Unavailable(Box::new(cause.clone())))),
            );
        }
        // A deadlock with another process's writes, or a row no statement
        // of the group could take: none of its writes was made.
        Err(error) => {
            tracing::warn!(
                error = %crate::server::status::chain(&error),
                writes = writes.len(),
                "a group of invoice writes failed; making each alone",
            );
            for write in &writes {
                answers.push(write.alone(engine).await);
            }
        }
    }
    answers
}

/// One cause shared by the errors of every write of a group.
#[derive(Debug, Clone)]
struct SharedCause(Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for SharedCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

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
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        self.write(Write::Invoice {
            invoice: Box::new(invoice.clone()),
            request_id: request_id.map(|id| id.as_str().to_owned()),
            note: note.map(str::to_owned),
        })
        .await
    }

    async fn get_by_request_id(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
    ) -> Result<Option<Invoice>, StoreError> {
        select_by_request_id::<E::Db, E::Stored>(
            self.engine.pool(),
            tenant.as_str(),
            request_id.as_str(),
        )
        .await?
        .map(InvoiceRow::into_invoice::<E::Stored>)
        .transpose()
    }

    async fn get_by_number(&self, number: NumberOf<'_>) -> Result<Option<Invoice>, StoreError> {
        select_by_number::<E::Db, E::Stored>(self.engine.pool(), number)
            .await?
            .map(InvoiceRow::into_invoice::<E::Stored>)
            .transpose()
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Invoice>, StoreError> {
        select_one::<E::Db, E::Stored>(self.engine.pool(), tenant.as_str(), id)
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
            self.engine.pool(),
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
        Ok(select_highest_numbers(self.engine.pool()).await?)
    }

    async fn note(&self, note: Note<'_>) -> Result<(), StoreError> {
        self.write(Write::of(note)).await
    }

    async fn take_over(&self, pending: &Pending) -> Result<bool, StoreError> {
        let taken = self
            .write(Write::TakeOver {
                tenant: pending.tenant_id.clone(),
                request_key: pending.request_key.clone(),
                invoice_id: pending.invoice_id.clone(),
            })
            .await;
        match taken {
            Ok(()) => Ok(true),
            Err(StoreError::NoteTakenOver) => Ok(false),
            Err(error) => Err(error),
        }
    }

    async fn pending_before(
        &self,
        before: DateTime<Utc>,
        after: Option<NotedAt>,
        limit: u32,
    ) -> Result<Vec<Pending>, StoreError> {
        // Without a place to go on from: before every note.
        let (at, tenant, request_key) =
            after.unwrap_or_else(|| (first_instant(), String::new(), String::new()));
        Ok(select_pending_before(
            self.engine.pool(),
            before,
            (at, &tenant, &request_key),
            limit.into(),
        )
        .await?)
    }

    async fn unsettled(
        &self,
        after: Option<StoredAt>,
        limit: u32,
    ) -> Result<Vec<Invoice>, StoreError> {
        // Without a place to go on from: before every invoice.
        let (at, id) = after.unwrap_or_else(|| (first_instant(), Uuid::nil()));
        select_unsettled::<E::Db, E::Stored>(self.engine.pool(), (at, id), limit.into())
            .await?
            .into_iter()
            .map(InvoiceRow::into_invoice::<E::Stored>)
            .collect()
    }
}

/// Before every invoice stored and every note made: none is before the year
/// 1, which both engines keep in order.
fn first_instant() -> DateTime<Utc> {
    let first = NaiveDate::from_ymd_opt(1, 1, 1).unwrap_or(NaiveDate::MIN);
    first.and_time(NaiveTime::MIN).and_utc()
}

#[async_trait]
impl<E: Engine> Store for SqlInvoiceStore<E> {
    async fn readiness(&self) -> Result<(), crate::db::NotReady> {
        self.engine.readiness().await
    }

    async fn close(&self) {
        self.engine.close().await;
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

/// A note done: its tenant, its request key, and, if withdrawn, the invoice
/// of the call withdrawing it ([`Note::Withdrawn`]).
pub(crate) type Done<'a> = (&'a str, &'a str, Option<&'a str>);

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
    /// Reads back a stored id.
    fn read_id(id: Self::Id) -> Uuid;
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

/// Makes a group of writes on `conn`, inside the caller's transaction: the
/// pending notes, then the notes taken over, then the invoices (leaving out
/// any that would take a number or request id already taken, or whose note
/// is gone, taken over, or made afresh since), then the notes withdrawn and
/// done, and the settled marks.
/// Rows go in key order, so that the groups of two processes lock them in the
/// same order. Returns the ids of the invoices stored.
pub(crate) async fn write_group<DB, S>(
    conn: &mut DB::Connection,
    writes: &[Write],
) -> Result<Made, sqlx::Error>
where
    DB: Database + HasStatementCache + KeyLookups,
    S: Stored,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Default,
    for<'q> S::Id: Encode<'q, DB> + Decode<'q, DB> + Type<DB> + Send + Unpin,
    for<'q> S::Total: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> NaiveDate: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q [LineItem]>: Encode<'q, DB> + Type<DB>,
    for<'r> (S::Id,): FromRow<'r, DB::Row>,
    for<'r> (String, String): FromRow<'r, DB::Row>,
{
    // A repeated call may note the same reservation twice in one group: the
    // notes of one key are made in turns, one statement each, so that each
    // call is among those that noted it, and the later note wins, as in two
    // transactions.
    let mut pending = Vec::new();
    let mut invoices = Vec::new();
    let mut taking_over = BTreeSet::new();
    let mut done = BTreeSet::new();
    let mut settled = BTreeSet::new();
    for write in writes {
        match write {
            Write::Pending { note, request_id } => {
                let key = (note.tenant_id.as_str(), note.request_key.as_str());
                pending.push((key, (note, request_id.as_deref())));
            }
            Write::Invoice {
                invoice,
                request_id,
                note,
            } => invoices.push((&**invoice, request_id.as_deref(), note.as_deref())),
            Write::TakeOver {
                tenant,
                request_key,
                invoice_id,
            } => {
                taking_over.insert((tenant.as_str(), request_key.as_str(), invoice_id.as_str()));
            }
            Write::Done {
                tenant,
                request_key,
                withdrawn_by,
            } => {
                done.insert((
                    tenant.as_str(),
                    request_key.as_str(),
                    withdrawn_by.as_deref(),
                ));
            }
            Write::Settled { tenant, id } => {
                settled.insert((tenant.as_str(), *id));
            }
        }
    }
    invoices.sort_by(|(a, ..), (b, ..)| {
        (&a.tenant_id, &a.period, a.number).cmp(&(&b.tenant_id, &b.period, b.number))
    });
    let mut taken = HashSet::new();
    for turn in &in_turns(pending) {
        let asked: Vec<_> = turn.values().copied().collect();
        let noted = DB::upsert_pending(&mut *conn, &asked).await?;
        // The request ids of the notes not noted created an invoice.
        taken.extend(
            turn.iter()
                .filter(|((tenant, key), _)| {
                    !noted.contains(&((*tenant).to_owned(), (*key).to_owned()))
                })
                .filter_map(|((tenant, _), (_, request_id))| {
                    request_id.map(|id| ((*tenant).to_owned(), id.to_owned()))
                }),
        );
    }
    let taken_over = if taking_over.is_empty() {
        HashSet::new()
    } else {
        take_over_pending::<DB>(&mut *conn, &taking_over).await?
    };
    let stored = if invoices.is_empty() {
        HashSet::new()
    } else {
        insert_invoices::<DB, S>(&mut *conn, &invoices).await?
    };
    // Calls under one request id may withdraw the same note in one group:
    // in turns, so that each is taken off it.
    let withdrawals = done
        .iter()
        .filter_map(|(tenant, key, by)| by.map(|by| ((*tenant, *key), by)));
    for turn in &in_turns(withdrawals) {
        withdraw_pending::<DB>(&mut *conn, turn).await?;
    }
    if !done.is_empty() {
        DB::delete_pending(&mut *conn, &done).await?;
    }
    if !settled.is_empty() {
        mark_settled::<DB, S>(conn, &settled).await?;
    }
    Ok(Made {
        stored,
        taken,
        taken_over,
    })
}

/// `items` by key, in turns that each hold a key once: a key's later items
/// in later turns, so that a statement a turn makes each of them, in order.
fn in_turns<K: Ord, V>(items: impl IntoIterator<Item = (K, V)>) -> Vec<BTreeMap<K, V>> {
    let mut turns: Vec<BTreeMap<K, V>> = Vec::new();
    for (key, value) in items {
        match turns.iter_mut().find(|turn| !turn.contains_key(&key)) {
            Some(turn) => {
                turn.insert(key, value);
            }
            None => turns.push(BTreeMap::from([(key, value)])),
        }
    }
    turns
}

/// Notes reservations pending, on `conn`, each unless its call's request id
/// (the second of each pair) already created one of the tenant's invoices: a
/// repeated call's note is its own now, and not stale. Returns the notes
/// made, by tenant and request key. The keys are a list of values, planned
/// with the statement ([`KeyLookups`]).
#[tracing::instrument(name = "db.pending_numbers.upsert", skip_all, err(level = "debug"))]
pub(crate) async fn upsert_pending<DB>(
    conn: &mut DB::Connection,
    pending: &[(&Pending, Option<&str>)],
) -> Result<HashSet<(String, String)>, sqlx::Error>
where
    DB: Database + HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Default,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'r> (String, String): FromRow<'r, DB::Row>,
{
    let mut query = QueryBuilder::<DB>::new(
        "INSERT INTO pending_numbers
             (tenant_id, request_key, issue_date, since, invoice_id, noted_by)
         SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column5 FROM (",
    );
    query.push_values(pending, |mut row, (pending, request_id)| {
        row.push_bind(pending.tenant_id.as_str())
            .push_bind(pending.request_key.as_str())
            .push_bind(pending.issue_date.as_str())
            .push_bind(pending.since)
            .push_bind(pending.invoice_id.as_str())
            .push_bind(*request_id);
    });
    // The invoices are looked up by key: SQLite would scan the table for a
    // row value `IN` a list.
    query.push(
        ") AS v
         WHERE NOT EXISTS (SELECT 1 FROM invoices i
                           WHERE i.tenant_id = v.column1 AND i.request_id = v.column6)
         ON CONFLICT (tenant_id, request_key)
         DO UPDATE SET since = excluded.since, invoice_id = excluded.invoice_id,
             noted_by = pending_numbers.noted_by || ' ' || excluded.invoice_id
         RETURNING tenant_id, request_key",
    );
    // Its text differs with its length: not worth keeping prepared.
    let noted: Vec<(String, String)> = query
        .build_query_as()
        .persistent(false)
        .fetch_all(conn)
        .await?;
    Ok(noted.into_iter().collect())
}

/// Inserts invoices with the request ids that created them, on `conn`,
/// leaving out any whose number, formatted number or request id the tenant
/// already has (or has earlier in the list), and any whose note is gone,
/// taken over, or made afresh since its call noted it. Returns the ids of
/// those inserted.
#[tracing::instrument(name = "db.invoices.insert_many", skip_all, err(level = "debug"))]
async fn insert_invoices<DB, S>(
    conn: &mut DB::Connection,
    invoices: &[(&Invoice, Option<&str>, Option<&str>)],
) -> Result<HashSet<Uuid>, sqlx::Error>
where
    DB: Database + HasStatementCache + KeyLookups,
    S: Stored,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Default,
    for<'q> S::Id: Encode<'q, DB> + Decode<'q, DB> + Type<DB> + Send + Unpin,
    for<'q> S::Total: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> NaiveDate: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q [LineItem]>: Encode<'q, DB> + Type<DB>,
    for<'r> (S::Id,): FromRow<'r, DB::Row>,
{
    let mut query = insert_values::<DB, S>(invoices.iter().copied());
    query.push(" ON CONFLICT DO NOTHING RETURNING id");
    let ids: Vec<S::Id> = query
        .build_query_scalar()
        .persistent(false)
        .fetch_all(conn)
        .await?;
    Ok(ids.into_iter().map(S::read_id).collect())
}

/// Takes the calls withdrawing notes (by tenant and request key, the
/// invoice of each call) off the notes' `noted_by`, on `conn`: a note goes
/// once no call that noted it is left ([`delete_pending`]). Rare (a
/// reservation refused, or its number found taken): written once for both
/// backends.
#[tracing::instrument(name = "db.pending_numbers.withdraw", skip_all, err(level = "debug"))]
async fn withdraw_pending<DB>(
    conn: &mut DB::Connection,
    withdrawn: &BTreeMap<(&str, &str), &str>,
) -> Result<(), sqlx::Error>
where
    DB: Database + HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Default,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    let mut query = QueryBuilder::<DB>::new(
        "UPDATE pending_numbers
         SET noted_by = TRIM(REPLACE(' ' || noted_by || ' ', ' ' || v.column3 || ' ', ' '))
         FROM (",
    );
    query.push_values(withdrawn, |mut row, ((tenant, request_key), by)| {
        row.push_bind(*tenant)
            .push_bind(*request_key)
            .push_bind(*by);
    });
    query.push(
        ") AS v
         WHERE pending_numbers.tenant_id = v.column1
             AND pending_numbers.request_key = v.column2",
    );
    query.build().persistent(false).execute(conn).await?;
    Ok(())
}

/// Deletes the notes of reservations done, by tenant and request key, on
/// `conn`; a note withdrawn (the third of each, the invoice of the call
/// withdrawing, taken off its `noted_by` by [`withdraw_pending`] first)
/// only once no call that noted it is left. The keys are a list of values,
/// planned with the statement ([`KeyLookups`]).
#[tracing::instrument(name = "db.pending_numbers.delete", skip_all, err(level = "debug"))]
pub(crate) async fn delete_pending<DB>(
    conn: &mut DB::Connection,
    done: &BTreeSet<Done<'_>>,
) -> Result<(), sqlx::Error>
where
    DB: Database + HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Default,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
{
    let mut query = QueryBuilder::<DB>::new(
        "DELETE FROM pending_numbers WHERE (tenant_id, request_key) IN (
             SELECT p.tenant_id, p.request_key FROM (",
    );
    query.push_values(done, |mut row, (tenant, request_key, withdrawn_by)| {
        row.push_bind(*tenant)
            .push_bind(*request_key)
            .push_bind(*withdrawn_by);
    });
    query.push(
        ") AS v JOIN pending_numbers p
             ON p.tenant_id = v.column1 AND p.request_key = v.column2
         WHERE v.column3 IS NULL OR p.noted_by = '')",
    );
    query.build().persistent(false).execute(conn).await?;
    Ok(())
}

/// Takes notes over for reconciliation, by tenant, request key and the
/// invoice each named when read, on `conn`: each unless it names another
/// invoice now, or is gone. Returns the notes taken over, by tenant and
/// request key.
#[tracing::instrument(name = "db.pending_numbers.take_over", skip_all, err(level = "debug"))]
async fn take_over_pending<DB>(
    conn: &mut DB::Connection,
    notes: &BTreeSet<(&str, &str, &str)>,
) -> Result<HashSet<(String, String)>, sqlx::Error>
where
    DB: Database + HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Default,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'r> (String, String): FromRow<'r, DB::Row>,
{
    let mut query = QueryBuilder::<DB>::new("UPDATE pending_numbers SET taken_over = TRUE FROM (");
    query.push_values(notes, |mut row, (tenant, request_key, invoice_id)| {
        row.push_bind(*tenant)
            .push_bind(*request_key)
            .push_bind(*invoice_id);
    });
    query.push(
        ") AS v WHERE pending_numbers.tenant_id = v.column1
             AND pending_numbers.request_key = v.column2
             AND pending_numbers.invoice_id = v.column3
         RETURNING tenant_id, request_key",
    );
    // Its text differs with its length: not worth keeping prepared.
    let taken: Vec<(String, String)> = query
        .build_query_as()
        .persistent(false)
        .fetch_all(conn)
        .await?;
    Ok(taken.into_iter().collect())
}

/// Marks invoices' numbers settled, by tenant and id, on `conn`.
#[tracing::instrument(name = "db.invoices.mark_settled", skip_all, err(level = "debug"))]
async fn mark_settled<DB, S>(
    conn: &mut DB::Connection,
    settled: &BTreeSet<(&str, Uuid)>,
) -> Result<(), sqlx::Error>
where
    DB: Database + HasStatementCache,
    S: Stored,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Default,
    for<'q> S::Id: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    let mut query = QueryBuilder::<DB>::new("UPDATE invoices SET number_settled = TRUE FROM (");
    query.push_values(settled, |mut row, (tenant, id)| {
        row.push_bind(*tenant).push_bind(S::id(*id));
    });
    // A row already settled is left as it is, not written again.
    query.push(
        ") AS v WHERE invoices.tenant_id = v.column1 AND invoices.id = v.column2
             AND NOT invoices.number_settled",
    );
    query.build().persistent(false).execute(conn).await?;
    Ok(())
}

/// `INSERT INTO invoices (...)` one row per invoice, with the request id
/// that created it; one with a pending note (by request key) is stored
/// settled, and only while that note is there, not taken over, and noted by
/// the invoice's call (its id among `noted_by`), which the statement holds
/// ([`KeyLookups::HOLD_NOTE`]) until it commits: the start of both inserts.
fn insert_values<'a, DB, S>(
    invoices: impl IntoIterator<Item = (&'a Invoice, Option<&'a str>, Option<&'a str>)>,
) -> QueryBuilder<DB>
where
    DB: Database + KeyLookups,
    S: Stored,
    DB::Arguments: Default,
    for<'q> S::Id: Encode<'q, DB> + Type<DB>,
    for<'q> S::Total: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> NaiveDate: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q [LineItem]>: Encode<'q, DB> + Type<DB>,
{
    let mut query = QueryBuilder::new(
        "INSERT INTO invoices (id, tenant_id, number, invoice_number, period, issue_date,
             client_id, client_name, client_email, client_phone, client_address, due_date, notes,
             currency, line_items, total, created_at, request_id, number_settled)
         SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7,
             v.column8, v.column9, v.column10, v.column11, v.column12, v.column13, v.column14,
             v.column15, v.column16, v.column17, v.column18, v.column19 FROM (",
    );
    query.push_values(invoices, |mut row, (invoice, request_id, note)| {
        row.push_bind(S::id(invoice.id))
            .push_bind(invoice.tenant_id.as_str())
            .push_bind(invoice.number)
            .push_bind(invoice.invoice_number.as_str())
            .push_bind(invoice.period.as_str())
            .push_bind(invoice.issue_date)
            .push_bind(invoice.client.id.as_str())
            .push_bind(invoice.client.name.as_str())
            .push_bind(invoice.client.email.as_str())
            .push_bind(invoice.client.phone.as_str())
            .push_bind(invoice.client.address.as_str())
            .push_bind(invoice.due_date)
            .push_bind(invoice.notes.as_str())
            .push_bind(invoice.currency.as_str())
            .push_bind(Json(invoice.line_items.as_slice()))
            .push_bind(S::total(invoice.total))
            .push_bind(invoice.created_at)
            .push_bind(request_id)
            .push(if note.is_some() { "TRUE" } else { "FALSE" })
            .push_bind(note)
            .push_bind(invoice.id.to_string().as_str());
    });
    query.push(format_args!(
        ") AS v
         WHERE v.column20 IS NULL OR EXISTS (
             SELECT 1 FROM pending_numbers p
             WHERE p.tenant_id = v.column2 AND p.request_key = v.column20
                 AND NOT p.taken_over AND p.noted_by LIKE '%' || v.column21 || '%'{})",
        DB::HOLD_NOTE
    ));
    query
}

/// Inserts the invoice and the request id that created it on `conn`, inside
/// the caller's transaction: settled, if it has a pending note (by request
/// key, `note`), and only while that note is there, not taken over, and
/// noted by its call; whether it is stored.
#[tracing::instrument(name = "db.invoices.insert", skip_all, err(level = "debug"))]
pub(crate) async fn insert_invoice<DB, S>(
    conn: &mut DB::Connection,
    invoice: &Invoice,
    request_id: Option<&str>,
    note: Option<&str>,
) -> Result<bool, sqlx::Error>
where
    DB: Database + KeyLookups,
    S: Stored,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Default,
    for<'q> S::Id: Encode<'q, DB> + Decode<'q, DB> + Type<DB> + Send + Unpin,
    for<'q> S::Total: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> NaiveDate: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q [LineItem]>: Encode<'q, DB> + Type<DB>,
    for<'r> (S::Id,): FromRow<'r, DB::Row>,
{
    // One row: one of two texts, kept prepared.
    let mut query = insert_values::<DB, S>([(invoice, request_id, note)]);
    query.push(" RETURNING id");
    let stored: Option<S::Id> = query.build_query_scalar().fetch_optional(conn).await?;
    Ok(stored.is_some())
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
    // One lookup per unique key: with the two as one `OR`, SQLite reads every
    // invoice of the tenant. The invoice that holds the number itself comes
    // before one that holds only its text.
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT 0 AS text_only, {COLUMNS} FROM invoices
         WHERE tenant_id = $1 AND period = $2 AND number = $3
         UNION ALL
         SELECT 1 AS text_only, {COLUMNS} FROM invoices
         WHERE tenant_id = $1 AND invoice_number = $4
         ORDER BY text_only LIMIT 1"
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

/// Up to `limit` reservations pending since before `before`, oldest first
/// (by when noted, then tenant and request key), after `after` (when noted,
/// tenant and request key).
#[tracing::instrument(name = "db.pending_numbers.select_old", skip_all, err(level = "debug"))]
pub(crate) async fn select_pending_before<DB>(
    pool: &Pool<DB>,
    before: DateTime<Utc>,
    after: (DateTime<Utc>, &str, &str),
    limit: i64,
) -> Result<Vec<Pending>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> Pending: FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(
        "SELECT tenant_id, request_key, issue_date, since, invoice_id, noted_by
         FROM pending_numbers
         WHERE since < $1 AND (since, tenant_id, request_key) > ($2, $3, $4)
         ORDER BY since, tenant_id, request_key LIMIT $5",
    )
    .bind(before)
    .bind(after.0)
    .bind(after.1)
    .bind(after.2)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Up to `limit` invoices whose number is not settled, oldest first, after
/// `after` (when stored, and id).
#[tracing::instrument(name = "db.invoices.select_unsettled", skip_all, err(level = "debug"))]
pub(crate) async fn select_unsettled<DB, S>(
    pool: &Pool<DB>,
    after: (DateTime<Utc>, Uuid),
    limit: i64,
) -> Result<Vec<RowOf<S>>, sqlx::Error>
where
    DB: Database,
    S: Stored,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> RowOf<S>: FromRow<'r, DB::Row> + Send + Unpin,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
    for<'q> S::Id: Encode<'q, DB> + Type<DB>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invoices WHERE NOT number_settled AND (created_at, id) > ($1, $2)
         ORDER BY created_at, id LIMIT $3"
    )))
    .bind(after.0)
    .bind(S::id(after.1))
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_turn_holds_a_key_once_and_a_keys_later_items_come_later() {
        let turns = in_turns([("a", 1), ("b", 2), ("a", 3), ("a", 4), ("b", 5)]);
        assert_eq!(
            turns,
            [
                BTreeMap::from([("a", 1), ("b", 2)]),
                BTreeMap::from([("a", 3), ("b", 5)]),
                BTreeMap::from([("a", 4)]),
            ]
        );
    }
}
