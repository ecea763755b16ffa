//! A writer process killed with SIGKILL part-way through CreateInvoice, and
//! started again: it settles what the call left behind. No number is stored
//! twice, every stored invoice's number is confirmed with its id, and the
//! number of an invoice never stored is given back. And reconciliation
//! itself, run on notes such calls leave.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use nix::sys::signal::{Signal, kill};
use numbering::{
    clock::SystemClock,
    db::Backend,
    invoices::{
        store::{InvoiceStore, Note, Pending},
        writer::InvoiceWriter,
    },
    proto::{
        AllocateRequest, AuditSeriesResponse, CreateInvoiceRequest, GapPolicy, NumberState,
        ReserveRequest, invoice_writer_client::InvoiceWriterClient,
        number_allocator_client::NumberAllocatorClient,
    },
};
use rstest_reuse::apply;
use tonic::transport::Channel;

use crate::{
    backends,
    helpers::{
        AllocatorApp, AllocatorProxy, Fault, Method, PATIENCE, Running, TestDb, acme_number,
        allocator_client, assert_confirmed_with_ids, assert_reason, audit_acme, create,
        import_invoice, invoice_request, list_all, set_acme_gap_policy, spawn_allocator, start,
        writer_binary,
    },
};

/// Reconciling every 100 ms; with a 1 s request time-out, a reservation
/// pending longer was left by a call that died.
const RECONCILING: &[&str] = &["--reconcile-interval", "100ms", "--request-timeout", "1s"];

/// Notes every pending note again by a call whose invoice is never stored,
/// as a repeat of the call under the same request id notes it: named by
/// that invoice, the calls that noted it before still among its callers.
const NOTED_AGAIN: &str = "UPDATE pending_numbers
    SET invoice_id = '00000000-0000-4000-8000-000000000000',
        noted_by = noted_by || ' 00000000-0000-4000-8000-000000000000'";

/// A writer binary on `db` numbering through `allocator_url`, as
/// [`RECONCILING`] says.
async fn writer(db: &TestDb, allocator_url: &str) -> Running {
    let mut command = writer_binary(&db.url, allocator_url);
    command.args(RECONCILING);
    start(command).await
}

/// Stores acme's first invoice through a writer binary on `db`, with
/// `args`, whose confirmations the allocator never gets, then kills it with
/// SIGKILL: the invoice is stored, its number still reserved, its note left.
async fn stored_unconfirmed_and_killed(allocator: &mut AllocatorApp, db: &TestDb, args: &[&str]) {
    let unconfirmed = AllocatorProxy::new(allocator.client.clone(), Fault::Refuse(Method::Confirm));
    let (unconfirmed_url, _serving) = unconfirmed.serve().await;
    let mut command = writer_binary(&db.url, &unconfirmed_url);
    command.args(args);
    let first = start(command).await;
    let mut client = InvoiceWriterClient::connect(first.url()).await.unwrap();
    assert_eq!(create(&mut client, "acme").await.invoice_number, "INV-001");
    assert!(unconfirmed.lost() >= 1, "its number was confirmed");
    kill(first.pid(), Signal::SIGKILL).unwrap();
    first.wait().await;
    assert_eq!(audit_acme(&mut allocator.client).await.reserved, 1);
}

/// Starts a CreateInvoice through `writer`, waits until the proxy holds the
/// reply it was told to, and kills the writer with SIGKILL.
async fn kill_mid_call(writer: Running, proxy: &AllocatorProxy) {
    kill_mid(writer, proxy, invoice_request("acme")).await;
}

/// As [`kill_mid_call`], with `request`.
async fn kill_mid(writer: Running, proxy: &AllocatorProxy, request: CreateInvoiceRequest) {
    let mut client = InvoiceWriterClient::connect(writer.url()).await.unwrap();
    let call = tokio::spawn(async move { client.create_invoice(request).await });
    tokio::time::timeout(PATIENCE, proxy.hung())
        .await
        .expect("the call reaches the held reply");
    kill(writer.pid(), Signal::SIGKILL).unwrap();
    let (status, logged) = writer.wait().await;
    assert_eq!(status.code(), None, "not killed: {logged:?}");
    assert!(call.await.unwrap().is_err(), "the killed call answered");
}

/// Waits until the audit of acme's series satisfies `settled`.
async fn wait_for_audit(
    allocator: &mut NumberAllocatorClient<Channel>,
    settled: impl Fn(&AuditSeriesResponse) -> bool,
) {
    let waited = tokio::time::timeout(PATIENCE, async {
        loop {
            let audit = audit_acme(allocator).await;
            if settled(&audit) {
                return;
            }
            // Reconciliation runs every 100 ms: look again at that pace.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "not reconciled: {:?}",
        audit_acme(allocator).await
    );
}

/// Killed after the allocator reserved the number, before the writer
/// stored its invoice: the restarted writer gives the number back (voided,
/// with its reason), and the next invoice takes the next number.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_reserved_for_an_invoice_never_stored_is_given_back(#[case] backend: Backend) {
    let mut allocator = spawn_allocator(backend).await;
    let proxy = AllocatorProxy::new(allocator.client.clone(), Fault::Hang(Method::Reserve));
    let (proxy_url, _serving) = proxy.serve().await;
    let db = TestDb::create(backend).await;
    kill_mid_call(writer(&db, &proxy_url).await, &proxy).await;
    assert_eq!(audit_acme(&mut allocator.client).await.reserved, 1);

    let restarted = writer(&db, &allocator.server.url()).await;
    wait_for_audit(&mut allocator.client, |audit| {
        (audit.reserved, audit.voided) == (0, 1)
    })
    .await;
    let first = acme_number(&mut allocator.client, 1).await;
    assert_eq!(
        (first.state(), first.reason.as_str()),
        (NumberState::Voided, "the invoice was not stored")
    );

    let mut client = InvoiceWriterClient::connect(restarted.url()).await.unwrap();
    assert_eq!(create(&mut client, "acme").await.invoice_number, "INV-002");
    let invoices = list_all(&mut client, "acme").await;
    assert_eq!(invoices.len(), 1);
    assert_confirmed_with_ids(&mut allocator.client, "", &invoices).await;
    let audit = audit_acme(&mut allocator.client).await;
    assert_eq!(
        (
            audit.last_value,
            audit.confirmed,
            audit.voided,
            audit.unaccounted
        ),
        (2, 1, 1, 0)
    );
}

/// Killed after the allocator reserved the number, then repeated with its
/// request id once the restarted writer gave that number back (on a series
/// that reissues, after another call reserved it again): a repeat of the
/// reservation answers the number as it stands, no longer held for the
/// call, and the call takes the next number instead of storing its invoice
/// under one voided or another call's.
async fn a_repeat_after_its_number_was_given_back(backend: Backend, policy: GapPolicy) {
    let mut allocator = spawn_allocator(backend).await;
    set_acme_gap_policy(&mut allocator.client, policy).await;
    let proxy = AllocatorProxy::new(allocator.client.clone(), Fault::Hang(Method::Reserve));
    let (proxy_url, _serving) = proxy.serve().await;
    let db = TestDb::create(backend).await;
    let request = CreateInvoiceRequest {
        request_id: "order-1".into(),
        ..invoice_request("acme")
    };
    kill_mid(writer(&db, &proxy_url).await, &proxy, request.clone()).await;

    let restarted = writer(&db, &allocator.server.url()).await;
    wait_for_audit(&mut allocator.client, |audit| {
        (audit.reserved, audit.voided + audit.released) == (0, 1)
    })
    .await;
    let other = if policy == GapPolicy::Reissue {
        let again = ReserveRequest {
            tenant_id: "acme".into(),
            request_id: "someone-else".into(),
            ..ReserveRequest::default()
        };
        let again = allocator.client.reserve(again).await.unwrap().into_inner();
        let record = again.record.unwrap();
        assert_eq!(record.number, 1, "the number given back is reserved again");
        Some(record)
    } else {
        None
    };

    let mut client = InvoiceWriterClient::connect(restarted.url()).await.unwrap();
    let repeated = client.create_invoice(request).await.unwrap().into_inner();
    assert!(!repeated.replayed, "no invoice was stored to replay");
    let invoice = repeated.invoice.unwrap();
    assert_eq!(invoice.invoice_number, "INV-002");
    assert_eq!(list_all(&mut client, "acme").await, [invoice]);
    let first = acme_number(&mut allocator.client, 1).await;
    match other {
        Some(other) => assert_eq!(first, other, "the other call's reservation is untouched"),
        None => assert_eq!(first.state(), NumberState::Voided),
    }
    let audit = audit_acme(&mut allocator.client).await;
    assert_eq!(
        (audit.last_value, audit.confirmed, audit.unaccounted),
        (2, 1, 0)
    );
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_after_its_number_was_given_back_takes_another(#[case] backend: Backend) {
    a_repeat_after_its_number_was_given_back(backend, GapPolicy::Void).await;
}

#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_whose_number_another_call_holds_takes_another(#[case] backend: Backend) {
    a_repeat_after_its_number_was_given_back(backend, GapPolicy::Reissue).await;
}

/// Killed after the invoice was stored, before its number was confirmed:
/// the restarted writer confirms it with the invoice's id.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_invoice_s_number_is_confirmed_after_a_crash(#[case] backend: Backend) {
    let mut allocator = spawn_allocator(backend).await;
    let proxy = AllocatorProxy::new(allocator.client.clone(), Fault::Hang(Method::Confirm));
    let (proxy_url, _serving) = proxy.serve().await;
    let db = TestDb::create(backend).await;
    kill_mid_call(writer(&db, &proxy_url).await, &proxy).await;

    let restarted = writer(&db, &allocator.server.url()).await;
    wait_for_audit(&mut allocator.client, |audit| audit.confirmed == 1).await;
    let mut client = InvoiceWriterClient::connect(restarted.url()).await.unwrap();
    let invoices = list_all(&mut client, "acme").await;
    let numbers: Vec<&str> = invoices.iter().map(|i| i.invoice_number.as_str()).collect();
    assert_eq!(numbers, ["INV-001"], "stored once");
    assert_confirmed_with_ids(&mut allocator.client, "", &invoices).await;

    assert_eq!(create(&mut client, "acme").await.invoice_number, "INV-002");
    let invoices = list_all(&mut client, "acme").await;
    assert_confirmed_with_ids(&mut allocator.client, "", &invoices).await;
    let audit = audit_acme(&mut allocator.client).await;
    assert_eq!(
        (audit.last_value, audit.confirmed, audit.unaccounted),
        (2, 2, 0)
    );
}

/// An invoice stored, its writer killed before its number was confirmed,
/// and its note naming only another invoice (as a note written before
/// notes kept every call that noted them); the lease ends before a writer
/// is back. Reconciliation repeats the reservation, finds the stored
/// invoice under the number, and confirms it as the number's holder, late:
/// the number stays the invoice's, not given back.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_naming_another_invoice_confirms_the_stored_one_as_holder(#[case] backend: Backend) {
    a_note_naming_another_invoice(backend, Since::Ended, false).await;
}

/// As above, on a series that reissues, with the number reserved again by
/// another call after the lease ended: the repeat of the reservation is
/// refused as another's, and reconciliation still confirms the number to
/// the invoice stored under it, so that the other call's confirmation is
/// refused and the clash shows, instead of the note going unsettled.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_invoice_whose_number_another_call_took_keeps_it(#[case] backend: Backend) {
    a_note_naming_another_invoice(backend, Since::Taken, false).await;
}

/// As above, the note naming another invoice (a repeat of the call under
/// the same request id noted its own, never stored) and still noted by the
/// stored one: the stored invoice is found without repeating the
/// reservation, and its number confirmed to it as the other call's
/// reservation, its confirmation as its own being refused as another's.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_invoice_noted_by_its_note_keeps_a_number_another_call_took(
    #[case] backend: Backend,
) {
    a_note_naming_another_invoice(backend, Since::Taken, true).await;
}

/// As above, the other call's lease ended as well: confirmed as that call's
/// reservation, late, the number is still the stored invoice's, not given
/// back (as a confirmation naming no holder would be refused).
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_invoice_keeps_a_number_another_call_took_and_let_lapse(#[case] backend: Backend) {
    a_note_naming_another_invoice(backend, Since::TakenAndEnded, true).await;
}

/// What became of a stored invoice's reservation while its writer was down.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Since {
    /// Its lease ended.
    Ended,
    /// Its lease ended, and on a series that reissues, another call
    /// reserved the number.
    Taken,
    /// As [`Since::Taken`], and the other call's lease ended too.
    TakenAndEnded,
}

/// The four tests above: the reservation as `since` says; `still_noted`:
/// the stored invoice's call is still among those that noted the note (the
/// reservation is then never repeated).
async fn a_note_naming_another_invoice(backend: Backend, since: Since, still_noted: bool) {
    let mut allocator = spawn_allocator(backend).await;
    if since != Since::Ended {
        set_acme_gap_policy(&mut allocator.client, GapPolicy::Reissue).await;
    }
    let db = TestDb::create(backend).await;
    stored_unconfirmed_and_killed(
        &mut allocator,
        &db,
        &["--reconcile-interval", "1h", "--reservation-lease", "1s"],
    )
    .await;
    db.execute(if still_noted {
        NOTED_AGAIN
    } else {
        "UPDATE pending_numbers SET invoice_id = '00000000-0000-4000-8000-000000000000',
             noted_by = '00000000-0000-4000-8000-000000000000'"
    })
    .await;
    // The lease ends: the number reads as given back.
    wait_for_audit(&mut allocator.client, |audit| audit.reserved == 0).await;
    if since != Since::Ended {
        let again = ReserveRequest {
            tenant_id: "acme".into(),
            request_id: "someone-else".into(),
            lease: (since == Since::TakenAndEnded).then_some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..ReserveRequest::default()
        };
        let again = allocator.client.reserve(again).await.unwrap().into_inner();
        assert_eq!(again.record.unwrap().number, 1, "reserved again");
    }
    if since == Since::TakenAndEnded {
        wait_for_audit(&mut allocator.client, |audit| audit.reserved == 0).await;
    }

    // Every repeat of a reservation refused: with the note still noted by
    // the stored invoice, none is needed.
    let refusing = AllocatorProxy::new(allocator.client.clone(), Fault::Refuse(Method::Reserve));
    let (refusing_url, _serving) = refusing.serve().await;
    let restarted = writer(
        &db,
        &if still_noted {
            refusing_url
        } else {
            allocator.server.url()
        },
    )
    .await;
    wait_for_audit(&mut allocator.client, |audit| audit.confirmed == 1).await;
    assert_eq!(refusing.lost(), 0, "a reservation was repeated");
    let mut client = InvoiceWriterClient::connect(restarted.url()).await.unwrap();
    let invoices = list_all(&mut client, "acme").await;
    assert_eq!(invoices.len(), 1);
    assert_confirmed_with_ids(&mut allocator.client, "", &invoices).await;
    if since != Since::Ended {
        let theirs = numbering::proto::ConfirmRequest {
            tenant_id: "acme".into(),
            number: 1,
            reference: "their-document".into(),
            request_id: "someone-else".into(),
            ..numbering::proto::ConfirmRequest::default()
        };
        let status = allocator.client.confirm(theirs).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert_reason(&status, "ALREADY_CONFIRMED");
    }
}

/// An invoice stored while its number could not be confirmed, its writer
/// killed, and a writer started again where every repeat of a reservation is
/// refused: the pending note names the stored invoice, whose number is
/// confirmed without repeating the reservation, and the note goes.
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_invoice_is_confirmed_by_the_note_that_names_it(#[case] backend: Backend) {
    a_stored_invoice_is_confirmed_by_its_note(backend, false).await;
}

/// As above, the note noted again since by a repeat of the call (under the
/// same request id) that stored nothing, and naming the repeat's invoice:
/// the stored invoice, still among those that noted it, is confirmed all
/// the same, though the reservation is not answered again (as once the
/// allocator no longer keeps its request id).
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_invoice_is_confirmed_by_a_note_a_repeat_named_again(#[case] backend: Backend) {
    a_stored_invoice_is_confirmed_by_its_note(backend, true).await;
}

/// The two tests above; `noted_again`: a repeat of the call noted the note
/// again, naming its own invoice.
async fn a_stored_invoice_is_confirmed_by_its_note(backend: Backend, noted_again: bool) {
    let mut allocator = spawn_allocator(backend).await;
    let db = TestDb::create(backend).await;
    stored_unconfirmed_and_killed(&mut allocator, &db, RECONCILING).await;
    if noted_again {
        db.execute(NOTED_AGAIN).await;
    }

    let refusing = AllocatorProxy::new(allocator.client.clone(), Fault::Refuse(Method::Reserve));
    let (refusing_url, _serving) = refusing.serve().await;
    let restarted = writer(&db, &refusing_url).await;
    wait_for_audit(&mut allocator.client, |audit| audit.confirmed == 1).await;
    let mut client = InvoiceWriterClient::connect(restarted.url()).await.unwrap();
    let invoices = list_all(&mut client, "acme").await;
    assert_confirmed_with_ids(&mut allocator.client, "", &invoices).await;

    let store = db.invoice_store().await;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let settled = tokio::time::timeout(PATIENCE, async {
        while !store
            .pending_before(later, None, 1)
            .await
            .unwrap()
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    settled
        .await
        .expect("the note goes once its number is confirmed");
    assert_eq!(refusing.lost(), 0, "a reservation was repeated");
    let audit = audit_acme(&mut allocator.client).await;
    assert_eq!(
        (audit.last_value, audit.confirmed, audit.unaccounted),
        (1, 1, 0)
    );
}

/// A call that died after noting its reservation, before its Reserve
/// reached the allocator: reconciliation finds nothing reserved under the
/// note and lets it go, taking no number, which it would only give back (a
/// voided gap in a series that voids what is given back).
#[apply(backends)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_never_made_takes_no_number(#[case] backend: Backend) {
    let mut allocator = spawn_allocator(backend).await;
    set_acme_gap_policy(&mut allocator.client, GapPolicy::Void).await;
    let db = TestDb::create(backend).await;
    let store = db.invoice_store().await;
    let now = Utc::now();
    note_acme(&store, "died-before-reserving", now - TimeDelta::seconds(1)).await;

    let writer = writer_of(&store, &allocator);
    let later = now + TimeDelta::minutes(1);
    let reconciled = writer.reconcile(later, 10, PATIENCE).await.unwrap();
    assert_eq!(reconciled.given_back, 0);
    assert_eq!(store.pending_before(later, None, 10).await.unwrap(), []);
    let audit = audit_acme(&mut allocator.client).await;
    assert_eq!((audit.last_value, audit.voided), (0, 0), "{audit:?}");
}

/// Notes a reservation of acme's under `request_key` pending since `since`,
/// as a call does before its Reserve.
async fn note_acme(store: &Arc<dyn InvoiceStore>, request_key: &str, since: DateTime<Utc>) {
    let id = uuid::Uuid::now_v7();
    let pending = Pending {
        tenant_id: "acme".into(),
        request_key: request_key.into(),
        issue_date: String::new(),
        since,
        invoice_id: id.to_string(),
        noted_by: id.to_string(),
    };
    let note = Note::Pending {
        pending: &pending,
        request_id: None,
    };
    store.note(note).await.unwrap();
}

/// A writer on `store`, reconciling through `allocator`.
fn writer_of(store: &Arc<dyn InvoiceStore>, allocator: &AllocatorApp) -> InvoiceWriter {
    InvoiceWriter::new(
        store.clone(),
        allocator_client(&allocator.server.url()),
        3,
        Arc::new(SystemClock),
    )
}

/// A run whose time is up before it looks at a note does not pass over
/// it: the next run settles the oldest note first, not the one after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_out_of_time_passes_over_no_note() {
    let mut allocator = spawn_allocator(Backend::Sqlite).await;
    let db = TestDb::create(Backend::Sqlite).await;
    let store = db.invoice_store().await;
    let now = Utc::now();
    for (key, age) in [("first", 2), ("second", 1)] {
        allocator
            .client
            .reserve(ReserveRequest {
                tenant_id: "acme".into(),
                request_id: key.into(),
                ..ReserveRequest::default()
            })
            .await
            .unwrap();
        note_acme(&store, key, now - TimeDelta::seconds(age)).await;
    }
    let writer = writer_of(&store, &allocator);
    let later = now + TimeDelta::minutes(1);

    let none = writer.reconcile(later, 1, Duration::ZERO).await.unwrap();
    assert_eq!(none.given_back, 0);
    let one = writer.reconcile(later, 1, PATIENCE).await.unwrap();
    assert_eq!(one.given_back, 1);
    let left = store.pending_before(later, None, 10).await.unwrap();
    let keys: Vec<_> = left.iter().map(|note| note.request_key.as_str()).collect();
    assert_eq!(keys, ["second"]);
}

/// A confirmation that stalls uses up the invoices' time of a run, not the
/// notes': the same run settles a note a call that died left (its number
/// given back) while an invoice's confirmation hangs until its time is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_confirmation_keeps_no_note_waiting() {
    let mut allocator = spawn_allocator(Backend::Sqlite).await;
    let allocated = allocator
        .client
        .allocate(AllocateRequest {
            tenant_id: "acme".into(),
            ..AllocateRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allocated.numbers[0].value, 1);
    let db = TestDb::create(Backend::Sqlite).await;
    let store = db.invoice_store().await;
    import_invoice(&store, "acme", 1, "INV-001").await;
    allocator
        .client
        .reserve(ReserveRequest {
            tenant_id: "acme".into(),
            request_id: "died".into(),
            ..ReserveRequest::default()
        })
        .await
        .unwrap();
    let now = Utc::now();
    note_acme(&store, "died", now - TimeDelta::seconds(1)).await;

    let hanging = AllocatorProxy::new(allocator.client.clone(), Fault::Hang(Method::Confirm));
    let (hanging_url, _serving) = hanging.serve().await;
    let writer = InvoiceWriter::new(
        store.clone(),
        allocator_client(&hanging_url),
        3,
        Arc::new(SystemClock),
    );
    let later = now + TimeDelta::minutes(1);
    let reconciled = writer
        .reconcile(later, 10, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(reconciled.given_back, 1, "{reconciled:?}");
    let audit = audit_acme(&mut allocator.client).await;
    assert_eq!(audit.reserved, 0, "{audit:?}");
}
