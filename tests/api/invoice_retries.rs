//! Request ids on CreateInvoice: a repeat returns the stored invoice, even
//! of a call that failed after storing it; a different body is refused. And
//! the writer's own retries: a lost allocator reply burns no number.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use numbering::{
    allocator::{CommitMode, app::RequestIdSettings, group_commit::GroupCommitSettings},
    clock::SystemClock,
    db::Backend,
    invoices::{
        InvoiceWriter,
        allocator_client::AllocatorError,
        domain::{Invoice, Numbered},
        grpc::parse_new_invoice,
        store::{HighestNumber, InvoiceStore, Note, NumberOf, Pending, StoreError},
        writer::{Reconciled, attempt_request_id},
    },
    proto::{
        AllocateRequest, AuditSeriesRequest, ConfigureSeriesRequest, CreateInvoiceRequest,
        CreateInvoiceResponse, GapPolicy, GetNumberRequest, NumberRecord, NumberState,
        ReleaseRequest, ReserveRequest, Reset, invoice_writer_client::InvoiceWriterClient,
        number_allocator_client::NumberAllocatorClient,
    },
    request_id::RequestId,
    server::{ServerSettings, Store},
    tenant::TenantId,
};
use rstest_reuse::apply;
use tokio::sync::Notify;
use tonic::{Code, Request, Response, Status, transport::Channel};
use uuid::Uuid;

use crate::{
    backends,
    helpers::{
        AllocatorApp, AllocatorProxy, CapturedLogs, Fault, ManualClock, Method, PATIENCE, TestDb,
        TestServer, WriterApp, acme_number, acme_number_in, allocator_client,
        assert_confirmed_with_ids, assert_reason, audit_acme, import_invoice, invoice_request,
        invoice_series, list_all, serve_allocator_on, set_acme_gap_policy, spawn_allocator,
        spawn_both, spawn_writer, spawn_writer_on, test_settings,
    },
};

fn keyed(tenant: &str, request_id: &str) -> CreateInvoiceRequest {
    CreateInvoiceRequest {
        request_id: request_id.into(),
        ..invoice_request(tenant)
    }
}

/// Sends `requests` at once; the answers in their order.
async fn create_all(
    client: &InvoiceWriterClient<Channel>,
    requests: Vec<CreateInvoiceRequest>,
) -> Vec<Result<CreateInvoiceResponse, Status>> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .create_invoice(request)
                    .await
                    .map(Response::into_inner)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// Sent twice, or 20 times at once, with one request id: one invoice, every
/// answer that invoice, one number taken. Another body with the id is refused
/// and takes no number. A repeat needs no allocator.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_create_returns_the_stored_invoice(#[case] backend: Backend) {
    let (mut allocator, mut writer) = spawn_both(backend, 3).await;
    let first = writer
        .client
        .create_invoice(keyed("acme", "order-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    let second = writer
        .client
        .create_invoice(keyed("acme", "order-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(second.replayed);
    assert_eq!(second.invoice, first.invoice);

    let answers = create_all(&writer.client, vec![keyed("acme", "order-2"); 20]).await;
    let answers: Vec<CreateInvoiceResponse> = answers.into_iter().map(Result::unwrap).collect();
    let stored = answers
        .iter()
        .find(|a| !a.replayed)
        .expect("one first answer");
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
    assert!(answers.iter().all(|a| a.invoice == stored.invoice));
    assert_eq!(stored.invoice.as_ref().unwrap().invoice_number, "INV-002");

    let other_body = CreateInvoiceRequest {
        notes: "a different invoice".into(),
        ..keyed("acme", "order-1")
    };
    let status = writer.client.create_invoice(other_body).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_reason(&status, "REQUEST_ID_REUSED");
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(info.metadata["invoiceNumber"], "INV-001");

    let invoices = list_all(&mut writer.client, "acme").await;
    let numbers: Vec<&str> = invoices.iter().map(|i| i.invoice_number.as_str()).collect();
    assert_eq!(numbers, ["INV-001", "INV-002"]);
    let series = invoice_series(&mut allocator.client, "acme").await.unwrap();
    assert_eq!(series.last_value, 2, "a repeat or a refusal took a number");

    // A repeat is answered from the writer's own store before any number
    // is asked for: even with the allocator gone.
    allocator.server.stop().await.unwrap();
    let third = writer
        .client
        .create_invoice(keyed("acme", "order-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(third.replayed);
    assert_eq!(third.invoice, first.invoice);
}

/// On a series that reissues, an invoice issued on 1 December takes number
/// 1, reserved for 1 November and given back since: the invoice keeps the
/// date its caller sent, and a repeat of the call answers it.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissued_number_keeps_the_invoice_s_own_date_and_its_repeat(#[case] backend: Backend) {
    let (mut allocator, mut writer) = spawn_both(backend, 3).await;
    set_acme_gap_policy(&mut allocator.client, GapPolicy::Reissue).await;
    reserve_and_give_back(&mut allocator.client, "", "2026-11-01").await;

    let request = CreateInvoiceRequest {
        issue_date: "2026-12-01".into(),
        ..keyed("acme", "order-1")
    };
    stored_and_repeated(&mut writer.client, request, ("INV-001", "2026-12-01")).await;
}

/// Sends `request`, a new call, and its repeat: the first stores an invoice
/// numbered and dated as `expected`, the repeat answers that invoice.
async fn stored_and_repeated(
    writer: &mut InvoiceWriterClient<Channel>,
    request: CreateInvoiceRequest,
    expected: (&str, &str),
) {
    let created = writer
        .create_invoice(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!created.replayed);
    let invoice = created.invoice.unwrap();
    assert_eq!(
        (invoice.invoice_number.as_str(), invoice.issue_date.as_str()),
        expected
    );
    let repeated = writer
        .create_invoice(request)
        .await
        .expect("the repeat of the call that stored the invoice answers it")
        .into_inner();
    assert!(repeated.replayed);
    assert_eq!(repeated.invoice, Some(invoice));
}

/// A call of `order-1` issued on 31 December reserved a number of 2026 and
/// failed before storing its invoice; its repeat, issued on 5 January (a
/// client that sends today's date with each try), gives that number back
/// and stores its invoice under a number of 2027 with its own date; a
/// repeat of that call answers it.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_issued_in_another_period_takes_a_number_of_that_period(#[case] backend: Backend) {
    let series = ConfigureSeriesRequest {
        format: "{year}-{number}".into(),
        ..ConfigureSeriesRequest::default()
    };
    let dates = ("2026-12-31", "2027-01-05");
    let mut allocator =
        repeated_on_another_date(backend, series, dates, ("2027-1", "2027-01-05")).await;
    let audit = allocator
        .client
        .audit_series(AuditSeriesRequest {
            tenant_id: "acme".into(),
            period: "2026".into(),
            ..AuditSeriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((audit.reserved, audit.unaccounted), (0, 0), "{audit:?}");
}

/// As above within one period: a call of `order-1` issued on 5 December
/// reserved a number whose text shows that day, and failed before storing
/// its invoice; its repeat, issued on 6 December, gives that number back
/// and stores its invoice under a number that shows its own day.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_issued_on_another_day_takes_a_number_that_shows_it(#[case] backend: Backend) {
    let series = ConfigureSeriesRequest {
        format: "INV-{year}{month}{day}-{number:03}".into(),
        ..ConfigureSeriesRequest::default()
    };
    let dates = ("2026-12-05", "2026-12-06");
    let expected = ("INV-20261206-002", "2026-12-06");
    let mut allocator = repeated_on_another_date(backend, series, dates, expected).await;
    let first = acme_number_in(&mut allocator.client, "2026", 1).await;
    assert_eq!(
        (first.formatted.as_str(), first.state()),
        ("INV-20261205-001", NumberState::Voided)
    );
}

/// An allocator whose acme series resets yearly, as `series` says
/// otherwise, and a writer whose first insert fails: a call of `order-1`
/// issued on the first of `dates` reserves a number and fails; its repeat,
/// issued on the second, stores an invoice numbered and dated as
/// `expected`, and a repeat of that answers it. The allocator.
async fn repeated_on_another_date(
    backend: Backend,
    series: ConfigureSeriesRequest,
    (first, repeat): (&str, &str),
    expected: (&str, &str),
) -> AllocatorApp {
    let mut allocator = spawn_allocator(backend).await;
    let series = ConfigureSeriesRequest {
        tenant_id: "acme".into(),
        reset: Reset::Yearly.into(),
        ..series
    };
    allocator.client.configure_series(series).await.unwrap();
    let url = allocator.server.url();
    let once = (Failure::NotStored, 1);
    let (mut writer, _) = writer_failing(backend, &url, once, 3, test_settings()).await;
    let on = |date: &str| CreateInvoiceRequest {
        issue_date: date.into(),
        ..keyed("acme", "order-1")
    };
    let status = writer.client.create_invoice(on(first)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    stored_and_repeated(&mut writer.client, on(repeat), expected).await;
    allocator
}

/// As above, but the first call is still storing its invoice when its
/// repeat, issued on 5 January, finds the number of 2026 under their first
/// attempt, and the repeat is slow to note that number settled. The repeat
/// takes the note over before it gives the number back, so the first
/// call's insert is refused: no invoice is stored under a number given
/// back. One of the two calls stores the request id's invoice (the first,
/// on its next attempt, or the repeat), under a number confirmed to it.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_in_another_period_stops_the_insert_of_the_call_before_it(
    #[case] backend: Backend,
) {
    let mut allocator = spawn_allocator(backend).await;
    configure_acme_yearly(&mut allocator.client).await;
    let url = allocator.server.url();
    let (insert, done) = (Arc::new(Gate::default()), Arc::new(Gate::default()));
    let paused = (Failure::PausedAndDone(insert.clone(), done.clone()), 1);
    let (writer, _) = writer_failing(backend, &url, paused, 3, test_settings()).await;
    let call = |date: &'static str| {
        let mut client = writer.client.clone();
        tokio::spawn(async move {
            let request = CreateInvoiceRequest {
                issue_date: date.into(),
                ..keyed("acme", "order-1")
            };
            client.create_invoice(request).await
        })
    };
    let first = call("2026-12-31");
    insert.reached.notified().await;
    let second = call("2027-01-05");
    // The repeat has settled the number of 2026, and not noted it yet.
    done.reached.notified().await;

    insert.read.notify_one();
    let first_insert = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(answer) = insert.answered.lock().unwrap().take() {
                return answer;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first call's insert answers");
    assert_eq!(first_insert, Err("NoteTakenOver".to_owned()));
    done.read.notify_one();
    let answers = [first.await.unwrap(), second.await.unwrap()];
    let mut client = writer.client.clone();
    let invoices = list_all(&mut client, "acme").await;
    assert_eq!(invoices.len(), 1, "{invoices:?}");
    let stored = &invoices[0];
    assert!(
        answers.iter().any(|answer| answer
            .as_ref()
            .is_ok_and(|created| { created.get_ref().invoice.as_ref() == Some(stored) })),
        "{answers:?}"
    );
    // The year its number reads with is its period.
    let period = &stored.invoice_number[..4];
    assert_confirmed_with_ids(&mut allocator.client, period, &invoices).await;
}

/// Makes acme's invoice series yearly: `{year}-{number}`.
async fn configure_acme_yearly(allocator: &mut NumberAllocatorClient<Channel>) {
    allocator
        .configure_series(ConfigureSeriesRequest {
            tenant_id: "acme".into(),
            format: "{year}-{number}".into(),
            reset: Reset::Yearly.into(),
            ..ConfigureSeriesRequest::default()
        })
        .await
        .unwrap();
}

/// Reserves one of acme's invoice numbers under `request_id`, for `date`
/// (both may be empty); its record.
async fn reserve_acme(
    allocator: &mut NumberAllocatorClient<Channel>,
    request_id: &str,
    date: &str,
) -> NumberRecord {
    allocator
        .reserve(ReserveRequest {
            tenant_id: "acme".into(),
            request_id: request_id.into(),
            date: date.into(),
            ..ReserveRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap()
}

/// Reserves one of acme's invoice numbers under `request_id`, for `date`
/// (both may be empty), and gives it back.
async fn reserve_and_give_back(
    allocator: &mut NumberAllocatorClient<Channel>,
    request_id: &str,
    date: &str,
) {
    let reserved = reserve_acme(allocator, request_id, date).await;
    allocator
        .release(ReleaseRequest {
            tenant_id: "acme".into(),
            number: reserved.number,
            reason: "the invoice was not stored".into(),
            request_id: request_id.into(),
            ..ReleaseRequest::default()
        })
        .await
        .unwrap();
}

/// How a store fails the next insert: after its invoice is committed, or
/// before; or makes it late.
enum Failure {
    /// Answers unavailable after the commit, as a connection lost before
    /// the reply does.
    Unavailable,
    /// Never answers after the commit, so the caller's deadline passes.
    Hangs,
    /// Fails as a store fault after the commit, as a group task that stops
    /// once its write is made does: whether the invoice is stored is not
    /// known.
    InternalAfterCommit,
    /// Answers unavailable without storing the invoice.
    NotStored,
    /// Makes the insert, as a call slower than reconciliation waits, only
    /// once reconciliation has read what is stored under its number; and
    /// answers only at the test's word, so that reconciliation has settled
    /// the number by then. The outcome is kept.
    Late(Arc<Gate>),
    /// Makes the insert only once the test says so (`read`), as a call
    /// whose insert waits while a repeat of it runs; the outcome is kept.
    Paused(Arc<Gate>),
    /// As `Paused`; and the first note that a reservation is done (by any
    /// call) is written only once the test opens the second gate, as a
    /// call slow to write it after settling its number.
    PausedAndDone(Arc<Gate>, Arc<Gate>),
    /// Every note that a reservation is done (or withdrawn) fails
    /// unavailable, as a store lost just then; inserts are made.
    DoneUnavailable,
    /// Taking a note over fails unavailable, as many times as the
    /// failures say; inserts are made.
    TakeOverUnavailable,
}

/// Where a late insert and reconciliation wait for each other, and what the
/// insert answered.
#[derive(Default)]
struct Gate {
    /// The insert is reached.
    reached: Notify,
    /// Reconciliation has read the number's holder: the insert goes on.
    read: Notify,
    /// The insert is made.
    made: Notify,
    /// The insert answers.
    answer: Notify,
    answered: Mutex<Option<Result<(), String>>>,
}

/// The real store, failing the next `failures` inserts as `how` says.
struct Fails {
    inner: Arc<dyn InvoiceStore>,
    how: Failure,
    failures: AtomicU32,
    /// A done note was held (`Failure::PausedAndDone`).
    done_held: AtomicBool,
}

impl Fails {
    fn new(inner: Arc<dyn InvoiceStore>, how: Failure, failures: u32) -> Arc<Self> {
        Arc::new(Self {
            inner,
            how,
            failures: AtomicU32::new(failures),
            done_held: AtomicBool::new(false),
        })
    }

    /// Whether this call fails: one of the failures left is used up.
    fn fails(&self) -> bool {
        self.failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }
}

#[async_trait]
impl Store for Fails {
    async fn readiness(&self) -> Result<(), numbering::db::NotReady> {
        self.inner.readiness().await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

#[async_trait]
impl InvoiceStore for Fails {
    async fn insert(
        &self,
        invoice: &Invoice,
        request_id: Option<&RequestId>,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        if matches!(
            self.how,
            Failure::DoneUnavailable | Failure::TakeOverUnavailable
        ) || !self.fails()
        {
            return self.inner.insert(invoice, request_id, note).await;
        }
        match &self.how {
            Failure::DoneUnavailable | Failure::TakeOverUnavailable => {
                unreachable!("made above")
            }
            Failure::NotStored => Err(StoreError::Unavailable("connection lost".into())),
            Failure::Unavailable => {
                self.inner.insert(invoice, request_id, note).await?;
                Err(StoreError::Unavailable(
                    "connection lost after commit".into(),
                ))
            }
            Failure::Hangs => {
                self.inner.insert(invoice, request_id, note).await?;
                std::future::pending().await
            }
            Failure::InternalAfterCommit => {
                self.inner.insert(invoice, request_id, note).await?;
                Err(StoreError::Internal(
                    "the group stopped after its commit".into(),
                ))
            }
            Failure::Paused(gate) | Failure::PausedAndDone(gate, _) => {
                gate.reached.notify_one();
                gate.read.notified().await;
                let answer = self.inner.insert(invoice, request_id, note).await;
                *gate.answered.lock().unwrap() =
                    Some(answer.as_ref().copied().map_err(|e| format!("{e:?}")));
                answer
            }
            Failure::Late(gate) => {
                gate.reached.notify_one();
                gate.read.notified().await;
                let answer = self.inner.insert(invoice, request_id, note).await;
                *gate.answered.lock().unwrap() =
                    Some(answer.as_ref().copied().map_err(|e| format!("{e:?}")));
                gate.made.notify_one();
                gate.answer.notified().await;
                answer
            }
        }
    }

    async fn get_by_request_id(
        &self,
        tenant: &TenantId,
        request_id: &RequestId,
    ) -> Result<Option<Invoice>, StoreError> {
        self.inner.get_by_request_id(tenant, request_id).await
    }

    async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<Invoice>, StoreError> {
        self.inner.get(tenant, id).await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        after: Option<(&str, i64)>,
        limit: u32,
    ) -> Result<Vec<Invoice>, StoreError> {
        self.inner.list(tenant, after, limit).await
    }

    async fn highest_numbers(&self) -> Result<Vec<HighestNumber>, StoreError> {
        self.inner.highest_numbers().await
    }

    async fn get_by_number(&self, number: NumberOf<'_>) -> Result<Option<Invoice>, StoreError> {
        let holder = self.inner.get_by_number(number).await;
        if let Failure::Late(gate) = &self.how
            && gate.answered.lock().unwrap().is_none()
        {
            gate.read.notify_one();
            gate.made.notified().await;
        }
        holder
    }

    async fn note(&self, note: Note<'_>) -> Result<(), StoreError> {
        if matches!(self.how, Failure::DoneUnavailable)
            && matches!(note, Note::Done { .. } | Note::Withdrawn { .. })
        {
            return Err(StoreError::Unavailable("connection lost".into()));
        }
        if let Failure::PausedAndDone(_, gate) = &self.how
            && matches!(note, Note::Done { .. })
            && !self.done_held.swap(true, Ordering::SeqCst)
        {
            gate.reached.notify_one();
            gate.read.notified().await;
        }
        self.inner.note(note).await
    }

    async fn take_over(&self, pending: &Pending) -> Result<bool, StoreError> {
        if matches!(self.how, Failure::TakeOverUnavailable) && self.fails() {
            return Err(StoreError::Unavailable("connection lost".into()));
        }
        self.inner.take_over(pending).await
    }

    async fn pending_before(
        &self,
        before: DateTime<Utc>,
        after: Option<(DateTime<Utc>, String, String)>,
        limit: u32,
    ) -> Result<Vec<Pending>, StoreError> {
        self.inner.pending_before(before, after, limit).await
    }

    async fn unsettled(
        &self,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: u32,
    ) -> Result<Vec<Invoice>, StoreError> {
        self.inner.unsettled(after, limit).await
    }
}

/// A writer through the allocator at `url`, allowed `max_attempts`
/// numbers per invoice and served with `settings`, on a fresh database
/// whose store fails the next `failures` inserts as `how` says;
/// and that store.
async fn writer_failing(
    backend: Backend,
    url: &str,
    (how, failures): (Failure, u32),
    max_attempts: u32,
    settings: ServerSettings,
) -> (WriterApp, Arc<dyn InvoiceStore>) {
    let db = TestDb::create(backend).await;
    let store = Fails::new(db.invoice_store().await, how, failures);
    let stored: Arc<dyn InvoiceStore> = store.clone();
    let allocator = allocator_client(url);
    let writer = spawn_writer_on(
        db,
        store,
        allocator,
        max_attempts,
        Arc::new(SystemClock),
        settings,
    )
    .await;
    (writer, stored)
}

/// Reconciles `store` now, through the allocator at `url`, as another
/// writer would, every pending note counted stale.
async fn reconcile_all(store: &Arc<dyn InvoiceStore>, url: &str) -> Reconciled {
    InvoiceWriter::new(
        store.clone(),
        allocator_client(url),
        3,
        Arc::new(SystemClock),
    )
    .reconcile(Utc::now() + TimeDelta::minutes(1), 10, PATIENCE)
    .await
    .unwrap()
}

/// A call that failed although its invoice was stored, retried with its
/// request id, returns that invoice: never a second one.
async fn a_retry_after_a_failure_past_the_commit_returns_the_invoice(
    backend: Backend,
    how: Failure,
    code: Code,
) {
    let mut allocator = spawn_allocator(backend).await;
    // The server's time-out ends a hung call, with DEADLINE_EXCEEDED.
    let settings = ServerSettings {
        request_timeout: Duration::from_millis(500),
        ..test_settings()
    };
    let url = allocator.server.url();
    let (mut writer, stored) = writer_failing(backend, &url, (how, 1), 3, settings).await;

    let mut request = Request::new(keyed("acme", "order-9"));
    request.set_timeout(PATIENCE);
    let status = writer.client.create_invoice(request).await.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");

    let retried = writer
        .client
        .create_invoice(keyed("acme", "order-9"))
        .await
        .unwrap()
        .into_inner();
    assert!(retried.replayed, "the retry stored a second invoice");
    let invoices = list_all(&mut writer.client, "acme").await;
    assert_eq!(invoices.len(), 1);
    assert_eq!(Some(&invoices[0]), retried.invoice.as_ref());

    // The failed call could not tell whether its invoice was stored, so its
    // number is neither given back nor confirmed: still reserved, and noted.
    let audit = audit_acme(&mut allocator.client).await;
    assert_eq!(
        (audit.reserved, audit.released, audit.voided),
        (1, 0, 0),
        "{audit:?}"
    );
    // Reconciliation confirms it to the stored invoice the note names.
    let settled = reconcile_all(&stored, &url).await;
    assert_eq!(settled.given_back, 0, "{settled:?}");
    assert_confirmed_with_ids(&mut allocator.client.clone(), "", &invoices).await;
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_unavailable_after_its_commit_is_repeated_by_its_retry(#[case] backend: Backend) {
    a_retry_after_a_failure_past_the_commit_returns_the_invoice(
        backend,
        Failure::Unavailable,
        Code::Unavailable,
    )
    .await;
}

/// A store fault after the commit leaves the invoice stored: its number is
/// not given back, which would leave it voided (or handed out again) under
/// a stored invoice.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_failed_by_its_store_after_its_commit_is_repeated_by_its_retry(
    #[case] backend: Backend,
) {
    a_retry_after_a_failure_past_the_commit_returns_the_invoice(
        backend,
        Failure::InternalAfterCommit,
        Code::Internal,
    )
    .await;
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_after_its_commit_is_repeated_by_its_retry(
    #[case] backend: Backend,
) {
    a_retry_after_a_failure_past_the_commit_returns_the_invoice(
        backend,
        Failure::Hangs,
        Code::DeadlineExceeded,
    )
    .await;
}

/// With a third of the allocator's replies lost after it committed, 200
/// invoices of one tenant, created eight at a time, are exactly INV-001 …
/// INV-200: the writer's retries get their numbers back; and each number
/// is confirmed with its invoice's id.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_allocator_replies_leave_no_gap(#[case] backend: Backend) {
    let allocator = spawn_allocator(backend).await;
    let proxy = AllocatorProxy::new(allocator.client.clone(), Fault::LoseEveryThird);
    let (proxy_url, serving) = proxy.serve().await;
    let mut writer = spawn_writer(backend, &proxy_url, 3).await;

    for _ in 0..25 {
        let answers = create_all(&writer.client, vec![invoice_request("acme"); 8]).await;
        for answer in answers {
            answer.expect("create through lossy replies");
        }
    }
    serving.abort();

    assert!(proxy.lost() >= 66, "too few replies were lost");
    let invoices = list_all(&mut writer.client, "acme").await;
    let numbers: Vec<String> = invoices.iter().map(|i| i.invoice_number.clone()).collect();
    let expected: Vec<String> = (1..=200).map(|n| format!("INV-{n:03}")).collect();
    assert_eq!(numbers, expected, "a lost reply burned a number");
    let distinct: HashSet<&str> = invoices.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(distinct.len(), 200);
    assert_confirmed_with_ids(&mut allocator.client.clone(), "", &invoices).await;
}

/// A call slower than reconciliation waits (or timed by a clock behind the
/// reconciling writer's): reconciliation finds its note stale, and its
/// number stored by no invoice; the call stores its invoice just then, and
/// reconciliation gives the number back. The call must not have stored its
/// invoice under that number: it reserves another, and every stored
/// invoice's number is confirmed to it.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_slower_than_reconciliation_stores_nothing_under_the_number_given_back(
    #[case] backend: Backend,
) {
    let (mut allocator, mut writer, answer) = slower_than_reconciliation(backend, 3).await;
    let created = answer.unwrap().into_inner();
    assert!(!created.replayed);

    assert_the_only_invoice(&mut allocator, &mut writer, &created).await;
}

/// `created` is acme's only invoice, and the only number its series
/// handed out, confirmed to it.
async fn assert_the_only_invoice(
    allocator: &mut AllocatorApp,
    writer: &mut WriterApp,
    created: &CreateInvoiceResponse,
) {
    let invoices = list_all(&mut writer.client, "acme").await;
    assert_eq!(invoices.len(), 1);
    assert_eq!(Some(&invoices[0]), created.invoice.as_ref());
    assert_confirmed_with_ids(&mut allocator.client, "", &invoices).await;
    let audit = audit_acme(&mut allocator.client).await;
    assert_eq!((audit.confirmed, audit.reserved), (1, 0), "{audit:?}");
}

/// The same, with one attempt allowed: the call answers that the store was
/// too slow (not that numbers were taken), and stores nothing.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_too_slow_on_its_last_attempt_answers_store_too_slow(#[case] backend: Backend) {
    let (mut allocator, mut writer, answer) = slower_than_reconciliation(backend, 1).await;
    let status = answer.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_reason(&status, "STORE_TOO_SLOW");

    assert!(list_all(&mut writer.client, "acme").await.is_empty());
    let audit = audit_acme(&mut allocator.client).await;
    assert_eq!((audit.confirmed, audit.reserved), (0, 0), "{audit:?}");
}

/// A call of `order-1` by a writer allowed `max_attempts` numbers, its
/// first insert made only once reconciliation (every note counted stale)
/// has read what is stored under its number, and answered once it has
/// settled it; the late insert is refused. The call's answer.
async fn slower_than_reconciliation(
    backend: Backend,
    max_attempts: u32,
) -> (
    AllocatorApp,
    WriterApp,
    Result<Response<CreateInvoiceResponse>, Status>,
) {
    let allocator = spawn_allocator(backend).await;
    let gate = Arc::new(Gate::default());
    let url = allocator.server.url();
    let late = (Failure::Late(gate.clone()), 1);
    let (writer, stored) = writer_failing(backend, &url, late, max_attempts, test_settings()).await;
    let call = tokio::spawn({
        let mut client = writer.client.clone();
        async move { client.create_invoice(keyed("acme", "order-1")).await }
    });
    gate.reached.notified().await;

    let settled = reconcile_all(&stored, &url).await;
    assert_eq!(settled.given_back, 1, "{settled:?}");
    gate.answer.notify_one();
    let answer = call.await.unwrap();
    assert_eq!(
        *gate.answered.lock().unwrap(),
        Some(Err("NoteTakenOver".to_owned())),
        "the late insert was not refused"
    );
    (allocator, writer, answer)
}

/// Two calls of `order-1` at once, on a writer allowed one attempt: the
/// first's insert waits while the second stores the invoice, confirms its
/// number and settles the note they share. The first's insert is refused,
/// its note gone; it answers the invoice the second stored, as a repeat
/// (not that the store was too slow).
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_repeat_settled_first_answers_the_repeat_s_invoice(#[case] backend: Backend) {
    let mut allocator = spawn_allocator(backend).await;
    let gate = Arc::new(Gate::default());
    let url = allocator.server.url();
    let paused = (Failure::Paused(gate.clone()), 1);
    let (mut writer, stored) = writer_failing(backend, &url, paused, 1, test_settings()).await;
    let first = tokio::spawn({
        let mut client = writer.client.clone();
        async move { client.create_invoice(keyed("acme", "order-1")).await }
    });
    gate.reached.notified().await;
    let second = writer
        .client
        .create_invoice(keyed("acme", "order-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!second.replayed);
    tokio::time::timeout(PATIENCE, async {
        let far = Utc::now() + TimeDelta::days(1);
        while !stored
            .pending_before(far, None, 10)
            .await
            .unwrap()
            .is_empty()
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the second call settles the note");

    gate.read.notify_one();
    let first = first.await.unwrap().unwrap().into_inner();
    assert_eq!(
        *gate.answered.lock().unwrap(),
        Some(Err("NoteTakenOver".to_owned())),
        "the first call's insert was not refused"
    );
    assert!(first.replayed);
    assert_eq!(first.invoice, second.invoice);
    let invoices = list_all(&mut writer.client, "acme").await;
    assert_eq!(invoices.len(), 1);
    assert_confirmed_with_ids(&mut allocator.client, "", &invoices).await;
}

/// Four calls of `order-1` each reserved a number and failed before storing
/// their invoice; reconciliation gave each number back. A fifth call walks
/// past those four attempts, which count against none of its own, and
/// stores its invoice.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_walks_past_attempts_settled_since(#[case] backend: Backend) {
    let mut allocator = spawn_allocator(backend).await;
    let url = allocator.server.url();
    let four = (Failure::NotStored, 4);
    let (mut writer, stored) = writer_failing(backend, &url, four, 3, test_settings()).await;
    for _ in 0..4 {
        let status = writer
            .client
            .create_invoice(keyed("acme", "order-1"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let settled = reconcile_all(&stored, &url).await;
        assert_eq!(settled.given_back, 1, "{settled:?}");
    }

    let created = writer
        .client
        .create_invoice(keyed("acme", "order-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!created.replayed);
    assert_the_only_invoice(&mut allocator, &mut writer, &created).await;
}

/// Every attempt a call of `order-1` could walk past was made, and its
/// number given back: the call answers that the request id is spent, and
/// reserves nothing; a call with a new request id stores its invoice.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_whose_attempts_ran_out_is_refused_spent(#[case] backend: Backend) {
    let (mut allocator, mut writer) = spawn_both(backend, 3).await;
    let order = RequestId::parse("order-1").unwrap().unwrap();
    let made = 100;
    for attempt in 1..=made {
        let request_id = attempt_request_id(&order, attempt);
        reserve_and_give_back(&mut allocator.client, &request_id, "").await;
    }

    let status = writer
        .client
        .create_invoice(keyed("acme", "order-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_reason(&status, "REQUEST_ID_SPENT");
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(info.metadata["attempts"], made.to_string());
    assert!(list_all(&mut writer.client, "acme").await.is_empty());
    let audit = audit_acme(&mut allocator.client).await;
    assert_eq!(audit.reserved, 0, "{audit:?}");

    let created = writer
        .client
        .create_invoice(keyed("acme", "order-2"))
        .await
        .unwrap()
        .into_inner();
    assert_confirmed_with_ids(&mut allocator.client, "", &[created.invoice.unwrap()]).await;
}

/// What a call of `order-1` that failed UNAVAILABLE, as `how` says, left
/// behind: the allocator, on a clock of its own (its series reissuing the
/// numbers given back if `reissue`), and the writer with the store it
/// failed on.
struct LeftBehind {
    _allocator_db: TestDb,
    server: TestServer,
    allocator: NumberAllocatorClient<Channel>,
    clock: Arc<ManualClock>,
    stored: Arc<dyn InvoiceStore>,
    writer: WriterApp,
}

async fn left_behind(backend: Backend, how: Failure, reissue: bool) -> LeftBehind {
    let allocator_db = TestDb::create(backend).await;
    let clock = ManualClock::at("2026-12-03T10:00:00Z".parse().unwrap());
    let mode = CommitMode::Group(GroupCommitSettings::default());
    let (server, mut allocator) = serve_allocator_on(
        &allocator_db,
        mode,
        RequestIdSettings::default(),
        clock.clone(),
    )
    .await;
    if reissue {
        set_acme_gap_policy(&mut allocator, GapPolicy::Reissue).await;
    }
    let (mut writer, stored) =
        writer_failing(backend, &server.url(), (how, 1), 3, test_settings()).await;
    let status = writer
        .client
        .create_invoice(keyed("acme", "order-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    LeftBehind {
        _allocator_db: allocator_db,
        server,
        allocator,
        clock,
        stored,
        writer,
    }
}

/// A call stored its invoice and died before confirming its number (its
/// store's answer lost); the writer stays down, or cannot reach the
/// allocator, for ten minutes, past the allocator's default lease (five).
/// The writer's own lease (an hour) still holds the number: reconciliation
/// confirms it to the invoice, and nothing is given back.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_invoice_s_number_outlasts_a_writer_down_past_the_default_lease(
    #[case] backend: Backend,
) {
    let LeftBehind {
        _allocator_db: _kept,
        server,
        mut allocator,
        clock,
        stored,
        mut writer,
    } = left_behind(backend, Failure::Unavailable, false).await;
    let url = server.url();
    let invoices = list_all(&mut writer.client, "acme").await;
    assert_eq!(invoices.len(), 1);

    clock.advance(Duration::from_mins(10));
    let settled = reconcile_all(&stored, &url).await;
    assert_eq!(settled.given_back, 0, "{settled:?}");
    assert_confirmed_with_ids(&mut allocator, "", &invoices).await;
}

/// The same, the writer down for two hours, past its own lease: the number
/// stands given back (voided, or released on a series that reissues) but no
/// call took it since, so reconciliation, naming the request id it was
/// reserved with, confirms it to the invoice: the record never says a
/// number an invoice holds was given back.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_invoice_s_number_is_confirmed_after_its_lease_ended_untaken(
    #[case] backend: Backend,
) {
    for reissue in [false, true] {
        let LeftBehind {
            _allocator_db: _kept,
            server,
            mut allocator,
            clock,
            stored,
            mut writer,
        } = left_behind(backend, Failure::Unavailable, reissue).await;
        let invoices = list_all(&mut writer.client, "acme").await;
        assert_eq!(invoices.len(), 1);

        clock.advance(Duration::from_hours(2));
        let settled = reconcile_all(&stored, &server.url()).await;
        assert_eq!(settled.given_back, 0, "{settled:?}");
        assert_confirmed_with_ids(&mut allocator, "", &invoices).await;
        let audit = audit_acme(&mut allocator).await;
        assert_eq!(
            (audit.confirmed, audit.voided, audit.released),
            (1, 0, 0),
            "reissue: {reissue}, {audit:?}"
        );
    }
}

/// A call whose invoice was not stored left its number reserved and noted;
/// an invoice with that number's text but a number of its own is imported
/// since. Reconciliation confirms the number to that invoice, which holds
/// its text, on a series that voids and on one that reissues alike.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_confirms_a_number_whose_text_only_is_taken(#[case] backend: Backend) {
    for reissue in [false, true] {
        let LeftBehind {
            _allocator_db: _kept,
            server,
            mut allocator,
            clock: _,
            stored,
            writer: _writer,
        } = left_behind(backend, Failure::NotStored, reissue).await;
        let imported = import_invoice(&stored, "acme", 500, "INV-001").await;

        let settled = reconcile_all(&stored, &server.url()).await;
        assert_eq!(settled.given_back, 0, "{settled:?}");
        let first = acme_number(&mut allocator, 1).await;
        assert_eq!(
            (first.state(), first.reference),
            (NumberState::Confirmed, imported.to_string()),
            "reissue: {reissue}"
        );
        assert!(
            stored
                .pending_before(Utc::now() + TimeDelta::minutes(1), None, 10)
                .await
                .unwrap()
                .is_empty(),
            "the note is settled"
        );
    }
}

/// An imported invoice whose number the allocator refuses as invalid (its
/// period named as no series names one) is settled by reconciliation, its
/// refusal logged, not tried again at every reconciliation, where it would
/// hold a place in every batch.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoice_whose_number_is_refused_as_invalid_is_settled(#[case] backend: Backend) {
    let (allocator, writer) = spawn_both(backend, 3).await;
    let new = numbering::invoices::grpc::parse_new_invoice(&invoice_request("acme"))
        .unwrap()
        .0;
    let legacy = Numbered {
        value: 7,
        formatted: "Q1-2026-7".into(),
        period: "Q1-2026".into(),
        date: Utc::now().date_naive(),
    };
    let imported = new.numbered(legacy, Uuid::now_v7(), Utc::now());
    writer.store.insert(&imported, None, None).await.unwrap();

    reconcile_all(&writer.store, &allocator.server.url()).await;
    tokio::time::timeout(PATIENCE, async {
        while !writer.store.unsettled(None, 10).await.unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the invoice is settled");
}

/// A call whose invoice was not stored, on a series that reissues, left its
/// number reserved and noted; the lease (the writer's hour) ended and another call reserved the
/// number again. Reconciliation, repeating the reservation, finds the number
/// held by that call: it gives back nothing, and the note goes.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_leaves_a_number_another_call_took_since(#[case] backend: Backend) {
    let LeftBehind {
        _allocator_db: _kept,
        server,
        mut allocator,
        clock,
        stored,
        writer: _writer,
    } = left_behind(backend, Failure::NotStored, true).await;
    let url = server.url();

    let number_1 = || GetNumberRequest {
        tenant_id: "acme".into(),
        number: 1,
        ..GetNumberRequest::default()
    };
    let left = allocator.get_number(number_1()).await.unwrap().into_inner();
    assert_eq!(left.record.unwrap().state(), NumberState::Reserved);
    clock.advance(Duration::from_mins(61));
    let taken = allocator
        .reserve(ReserveRequest {
            tenant_id: "acme".into(),
            request_id: "someone-else".into(),
            ..ReserveRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(taken.number, 1, "the ended lease's number is taken again");

    reconcile_all(&stored, &url).await;
    let now = allocator
        .get_number(number_1())
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(now, taken, "the other call's reservation is untouched");
    assert!(
        stored
            .pending_before(Utc::now() + TimeDelta::minutes(1), None, 10)
            .await
            .unwrap()
            .is_empty(),
        "the note is settled"
    );
}

/// An invoice stored under a reservation whose note a repeat of its call
/// has made its own (naming an invoice of the repeat's, never stored, and
/// only that one, as a note written before notes kept every call that
/// noted them), its number not confirmed; reconciled while the allocator refuses the writer
/// (its token no longer granted, say): the refusal may pass, so the note
/// stays, and once the allocator takes the writer again the number is
/// confirmed to the stored invoice. Dropped, the note would leave the
/// number reserved until its lease ended, then given back under a stored
/// invoice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_whose_repeat_is_refused_for_now_is_settled_later() {
    let mut allocator = spawn_allocator(Backend::Postgres).await;
    let db = TestDb::create(Backend::Postgres).await;
    let store = db.invoice_store().await;
    let key = attempt_request_id(&RequestId::parse("order-9").unwrap().unwrap(), 1);
    let reserved = reserve_acme(&mut allocator.client, &key, "").await;
    let pending = |invoice_id: Uuid| Pending {
        tenant_id: "acme".into(),
        request_key: key.clone(),
        issue_date: String::new(),
        since: Utc::now(),
        invoice_id: invoice_id.to_string(),
        noted_by: invoice_id.to_string(),
    };
    let stored = Uuid::now_v7();
    store
        .note(Note::Pending {
            pending: &pending(stored),
            request_id: None,
        })
        .await
        .unwrap();
    let new = numbering::invoices::grpc::parse_new_invoice(&invoice_request("acme"))
        .unwrap()
        .0;
    let number = Numbered {
        value: reserved.number,
        formatted: reserved.formatted.clone(),
        period: String::new(),
        date: Utc::now().date_naive(),
    };
    let invoice = new.numbered(number, stored, Utc::now());
    store.insert(&invoice, None, Some(&key)).await.unwrap();
    // The repeat's note, for an invoice it never stored.
    store
        .note(Note::Pending {
            pending: &pending(Uuid::now_v7()),
            request_id: None,
        })
        .await
        .unwrap();
    db.execute("UPDATE pending_numbers SET noted_by = invoice_id")
        .await;
    let later = Utc::now() + TimeDelta::hours(1);

    let denying = AllocatorProxy::new(allocator.client.clone(), Fault::Deny(Method::Reserve));
    let (denying_url, _serving) = denying.serve().await;
    reconcile_all(&store, &denying_url).await;
    assert_eq!(denying.lost(), 1, "the reservation was not repeated");
    assert_eq!(
        store.pending_before(later, None, 10).await.unwrap().len(),
        1,
        "the note went while its number is still reserved"
    );

    let settled = reconcile_all(&store, &allocator.server.url()).await;
    assert_eq!(settled.given_back, 0, "{settled:?}");
    assert!(
        store
            .pending_before(later, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let record = acme_number(&mut allocator.client, reserved.number).await;
    assert_eq!(record.state(), NumberState::Confirmed, "{record:?}");
    assert_eq!(record.reference, stored.to_string());
}

/// An invoice imported without a period into a series that resets holds no
/// number the allocator handed out (each of those has its period): its
/// reconciliation settles it as such, not as a confirmation refused, which
/// would be logged as an error and counted.
#[tokio::test]
async fn an_invoice_imported_without_a_period_into_a_yearly_series_is_settled_quietly() {
    let mut allocator = spawn_allocator(Backend::Postgres).await;
    configure_acme_yearly(&mut allocator.client).await;
    let db = TestDb::create(Backend::Postgres).await;
    let store = db.invoice_store().await;
    import_invoice(&store, "acme", 7, "2026-7").await;

    let logs = CapturedLogs::default();
    let _subscriber = tracing::subscriber::set_default(logs.subscriber());
    reconcile_all(&store, &allocator.server.url()).await;
    // Marked settled by a write of its own, after the answer.
    tokio::time::timeout(PATIENCE, async {
        while !store.unsettled(None, 10).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the imported invoice is settled");
    let events = logs.events();
    assert!(
        events.iter().any(|event| event["fields"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("not handed out by the allocator"))),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|event| event["level"] == "ERROR"),
        "{events:?}"
    );
}

/// An allocator out of its own time (its `--request-timeout` shorter than
/// the writer's budget) after committing a reservation: the writer repeats
/// the call while its budget lasts, gets the same number back, and creates
/// the invoice, the number confirmed to it and none left reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocator_out_of_its_own_time_is_called_again() {
    let mut allocator = spawn_allocator(Backend::Sqlite).await;
    let proxy = AllocatorProxy::new(
        allocator.client.clone(),
        Fault::TimeOutFirst(Method::Reserve),
    );
    let (proxy_url, _serving) = proxy.serve().await;
    let mut writer = spawn_writer(Backend::Sqlite, &proxy_url, 3).await;

    let created = writer
        .client
        .create_invoice(invoice_request("acme"))
        .await
        .expect("created once the allocator was called again")
        .into_inner();
    assert_eq!(proxy.lost(), 1);
    assert_eq!(created.invoice.unwrap().invoice_number, "INV-001");
    let audit = audit_acme(&mut allocator.client).await;
    assert_eq!((audit.confirmed, audit.reserved), (1, 0), "{audit:?}");
}

/// A writer whose allocator URL names another service's port (its own
/// kind's, say) answers INTERNAL, as for any setting of its own that is
/// wrong, with the reason a caller reads, and stores nothing: the other
/// port's UNIMPLEMENTED is the operators' to mend, not the caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_allocator_url_names_another_service_answers_internal() {
    let allocator = spawn_allocator(Backend::Sqlite).await;
    let other = spawn_writer(Backend::Sqlite, &allocator.server.url(), 3).await;
    let mut writer = spawn_writer(Backend::Sqlite, &other.server.url(), 3).await;

    let status = writer
        .client
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_reason(&status, "INTERNAL");
    assert_eq!(list_all(&mut writer.client, "acme").await, []);
}

/// A number found taken by an invoice stored under it is confirmed to that
/// invoice; while the allocator does not take the confirmation (the
/// writer's token not granted for now), the attempt's note stays, the one
/// thing that leads reconciliation back to the number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_found_taken_keeps_its_note_until_confirmed() {
    let allocator = spawn_allocator(Backend::Sqlite).await;
    let proxy = AllocatorProxy::new(allocator.client.clone(), Fault::Deny(Method::Confirm));
    let (proxy_url, _serving) = proxy.serve().await;
    let mut writer = spawn_writer(Backend::Sqlite, &proxy_url, 3).await;
    import_invoice(&writer.store, "acme", 1, "INV-001").await;

    let created = writer
        .client
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.invoice.unwrap().invoice_number, "INV-002");
    // Both numbers' confirmations denied (and the imported invoice's, if
    // the writer's reconciliation at start came to it after the import).
    assert!(proxy.lost() >= 2, "{} confirmations denied", proxy.lost());
    let later = Utc::now() + TimeDelta::minutes(1);
    let notes = writer.store.pending_before(later, None, 10).await.unwrap();
    assert_eq!(notes.len(), 2, "{notes:?}");
}

/// A Reserve the allocator refuses answers as its refusal says, also when
/// the store is lost as the call lets its note go: the note stays for
/// reconciliation, and the caller is not told to retry a call that cannot
/// pass (here, the writer's own token refused: INTERNAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reservation_answers_its_refusal_when_its_note_cannot_go() {
    let allocator = spawn_allocator(Backend::Sqlite).await;
    let proxy = AllocatorProxy::new(allocator.client.clone(), Fault::Deny(Method::Reserve));
    let (proxy_url, _serving) = proxy.serve().await;
    let (mut writer, store) = writer_failing(
        Backend::Sqlite,
        &proxy_url,
        (Failure::DoneUnavailable, 0),
        3,
        test_settings(),
    )
    .await;

    let status = writer
        .client
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let later = Utc::now() + TimeDelta::minutes(1);
    assert_eq!(
        store.pending_before(later, None, 10).await.unwrap().len(),
        1
    );
}

/// A Reserve whose first try's reply was lost after the allocator committed
/// it, then refused on its retry (the allocator's grants changed between the
/// tries): the first try holds a number, so the call's note stays for
/// reconciliation to give it back, and the caller is answered the refusal
/// (the writer's own token refused: INTERNAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_refused_on_its_retry_after_a_lost_try_keeps_its_note() {
    let mut allocator = spawn_allocator(Backend::Sqlite).await;
    let proxy = AllocatorProxy::new(
        allocator.client.clone(),
        Fault::TimeOutFirstThenDeny(Method::Reserve),
    );
    let (proxy_url, _serving) = proxy.serve().await;
    let mut writer = spawn_writer(Backend::Sqlite, &proxy_url, 3).await;

    let status = writer
        .client
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap_err();
    assert_eq!(proxy.lost(), 1, "the first try's reply was lost");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let audit = audit_acme(&mut allocator.client).await;
    assert_eq!(audit.reserved, 1, "the first try reserved: {audit:?}");
    let later = Utc::now() + TimeDelta::minutes(1);
    let noted = writer.store.pending_before(later, None, 10).await.unwrap();
    assert_eq!(noted.len(), 1, "{noted:?}");
}

/// A store fault on one pending note stops that reconciliation run, and
/// the next goes on after that note: a note the store keeps failing on
/// does not hold back those behind it (it is tried again once the runs
/// come round to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_the_store_fails_on_is_passed_at_the_next_run() {
    let mut allocator = spawn_allocator(Backend::Sqlite).await;
    let db = TestDb::create(Backend::Sqlite).await;
    let store: Arc<dyn InvoiceStore> =
        Fails::new(db.invoice_store().await, Failure::TakeOverUnavailable, 1);
    let now = Utc::now();
    for (key, age) in [("first", 2), ("second", 1)] {
        reserve_acme(&mut allocator.client, key, "").await;
        let id = uuid::Uuid::now_v7();
        let pending = Pending {
            tenant_id: "acme".into(),
            request_key: key.into(),
            issue_date: String::new(),
            since: now - TimeDelta::seconds(age),
            invoice_id: id.to_string(),
            noted_by: id.to_string(),
        };
        let note = Note::Pending {
            pending: &pending,
            request_id: None,
        };
        store.note(note).await.unwrap();
    }
    let writer = InvoiceWriter::new(
        store.clone(),
        allocator_client(&allocator.server.url()),
        3,
        Arc::new(SystemClock),
    );
    let later = now + TimeDelta::minutes(1);

    writer.reconcile(later, 1, PATIENCE).await.unwrap_err();
    let next = writer.reconcile(later, 1, PATIENCE).await.unwrap();
    assert_eq!(next.given_back, 1);
    let left = store.pending_before(later, None, 10).await.unwrap();
    let keys: Vec<_> = left.iter().map(|note| note.request_key.as_str()).collect();
    assert_eq!(keys, ["first"]);
}

/// Two calls under one request id note the same reservation; the Reserve of
/// the first is refused while the second's goes through. The refused call
/// withdraws only its own note: the repeat stores its invoice under the
/// number it reserved, not under a second one while the first stays
/// reserved, no note leading back to it, until its lease ends.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_leaves_the_note_a_concurrent_repeat_reserved_under(
    #[case] backend: Backend,
) {
    let mut allocator = spawn_allocator(backend).await;
    let proxy = AllocatorProxy::new(allocator.client.clone(), Fault::Gate(Method::Reserve));
    let (proxy_url, _serving) = proxy.serve().await;
    let writer = spawn_writer(backend, &proxy_url, 3).await;
    let call = |request: CreateInvoiceRequest| {
        let mut client = writer.client.clone();
        tokio::spawn(async move {
            client
                .create_invoice(request)
                .await
                .map(Response::into_inner)
        })
    };

    let refused = call(keyed("acme", "order-1"));
    let first = proxy.at_gate().await;
    let repeat = call(keyed("acme", "order-1"));
    let second = proxy.at_gate().await;
    first.refuse();
    let status = refused.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    // Any reservation after these goes through.
    let passing = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            loop {
                proxy.at_gate().await.pass();
            }
        }
    });
    second.pass();
    let created = repeat
        .await
        .unwrap()
        .expect("the repeat creates its invoice");
    passing.abort();

    assert_eq!(created.invoice.unwrap().invoice_number, "INV-001");
    let audit = audit_acme(&mut allocator.client).await;
    assert_eq!(
        (audit.last_value, audit.confirmed, audit.reserved),
        (1, 1, 0),
        "{audit:?}"
    );
}

/// A Reserve answered with a fault of the allocator's own (`INTERNAL`) may
/// have reserved its number all the same: the call answers `INTERNAL`, its
/// note stays, and reconciliation gives the number back. Let go with the
/// note, the number would stay reserved, nothing leading back to it, until
/// its lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_answered_with_an_internal_fault_keeps_its_note() {
    let mut allocator = spawn_allocator(Backend::Sqlite).await;
    let proxy = AllocatorProxy::new(allocator.client.clone(), Fault::FailAfter(Method::Reserve));
    let (proxy_url, _serving) = proxy.serve().await;
    let mut writer = spawn_writer(Backend::Sqlite, &proxy_url, 3).await;

    let status = writer
        .client
        .create_invoice(invoice_request("acme"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(audit_acme(&mut allocator.client).await.reserved, 1);
    let later = Utc::now() + TimeDelta::minutes(1);
    assert_eq!(
        writer
            .store
            .pending_before(later, None, 10)
            .await
            .unwrap()
            .len(),
        1,
        "the note went while its number is still reserved"
    );

    let settled = reconcile_all(&writer.store, &allocator.server.url()).await;
    assert_eq!(settled.given_back, 1, "{settled:?}");
    let audit = audit_acme(&mut allocator.client).await;
    assert_eq!((audit.reserved, audit.voided), (0, 1), "{audit:?}");
}

/// A call whose time ran out in the writer's own work (its database slow),
/// before the allocator was asked for a number, answers that its time ran
/// out (`DEADLINE_EXCEEDED`, `REQUEST_TIMEOUT`), not that the allocator is
/// unavailable. It reserved nothing and leaves no note: the next number is
/// still the first.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_spent_before_the_allocator_is_asked_is_not_blamed_on_it(#[case] backend: Backend) {
    let mut allocator = spawn_allocator(backend).await;
    let db = TestDb::create(backend).await;
    let store = db.invoice_store().await;
    let writer = InvoiceWriter::new(
        store.clone(),
        allocator_client(&allocator.server.url()),
        3,
        Arc::new(SystemClock),
    );
    let request = CreateInvoiceRequest {
        request_id: "order-1".into(),
        ..invoice_request("acme")
    };
    let (new, request_id) = parse_new_invoice(&request).unwrap();
    let spent = tokio::time::Instant::now();
    let error = writer
        .create(&new, request_id.as_ref(), spent)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            numbering::invoices::Error::Allocator(AllocatorError::OutOfTime)
        ),
        "{error:?}"
    );
    let status = Status::from(error);
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_reason(&status, "REQUEST_TIMEOUT");
    let noted = store
        .pending_before(Utc::now() + TimeDelta::minutes(1), None, 10)
        .await
        .unwrap();
    assert!(noted.is_empty(), "{noted:?}");
    let first = allocator
        .client
        .allocate(AllocateRequest {
            tenant_id: "acme".into(),
            count: 1,
            ..AllocateRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.numbers[0].value, 1);
}
