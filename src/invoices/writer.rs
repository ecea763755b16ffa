//! The invoice-writing rules: reserve a number, insert the invoice, confirm
//! the number with the invoice's id; give the number back if the insert
//! fails, and on a number already taken confirm it to the invoice that holds
//! it and reserve again, up to a bounded number of attempts. Reconciliation
//! settles what calls that died left behind.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;
use tonic::{Code, Status};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    clock::Clock,
    invoices::{
        allocator_client::{AllocatorClient, AllocatorError, Reserved},
        domain::{Invoice, NewInvoice, Numbered},
        store::{InvoiceStore, Note, NotedAt, NumberOf, Pending, StoreError, StoredAt},
    },
    page::Page,
    proto::{NumberRecord, NumberState},
    request_id::RequestId,
    server::{metrics::confirmation_refused, status::chain},
    tenant::TenantId,
};

/// An invoice-writer failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No invoice with this id for this tenant.
    #[error("invoice not found")]
    InvoiceNotFound,
    /// Every allocated number was already taken; nothing was stored.
    #[error("{attempts} allocated numbers were all already taken")]
    NumberConflicts {
        /// Tenant of the invoice.
        tenant: String,
        /// Numbers tried.
        attempts: u32,
    },
    /// The last allocated number was taken over before the invoice was
    /// stored under it: by reconciliation, the store having taken longer
    /// than reconciliation waits, or by another call with the same request
    /// id that settled it; nothing was stored.
    #[error(
        "the last of {attempts} allocated numbers was taken over while the invoice was being stored"
    )]
    StoreTooSlow {
        /// Numbers tried.
        attempts: u32,
    },
    /// The request id's calls made so many attempts, none of which stored
    /// an invoice, that a repeat would only walk through them; nothing was
    /// stored.
    #[error("request id {request_id:?} was tried {attempts} times without storing an invoice")]
    RequestIdSpent {
        /// The id.
        request_id: String,
        /// Attempts made under it.
        attempts: u32,
    },
    /// The request id already created an invoice with another body.
    #[error("request id {request_id:?} already created invoice {invoice_number} with another body")]
    RequestIdReused {
        /// The id.
        request_id: String,
        /// The invoice it created.
        invoice_number: String,
    },
    /// No number could be allocated.
    #[error(transparent)]
    Allocator(#[from] AllocatorError),
    /// The invoice store cannot be reached now; nothing was stored. Retrying
    /// later may succeed.
    #[error("the invoice store is unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// The invoice store failed otherwise.
    #[error("the invoice store failed")]
    Internal(#[source] StoreError),
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => Self::StoreUnavailable(error),
            // A number or note taken is handled where it can happen;
            // anywhere else it is a bug.
            StoreError::NumberTaken
            | StoreError::RequestIdTaken
            | StoreError::NoteTakenOver
            | StoreError::Internal(_) => Self::Internal(error),
        }
    }
}

/// What a reconciliation looked at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Stored invoices it settled: their numbers confirmed, found to need
    /// no confirming, or refused for good (logged as errors); not those
    /// left for a later run.
    pub confirmed: u32,
    /// Reservations left pending that it gave back.
    pub given_back: u32,
}

/// The number a reservation answered, as an invoice holds it.
fn numbered(record: NumberRecord) -> Result<Numbered, Error> {
    let date = crate::calendar::parse_day(&record.date).map_err(|reason| {
        AllocatorError::Rejected(Status::internal(format!(
            "the allocator answered the date {:?}: {reason}",
            record.date
        )))
    })?;
    Ok(Numbered {
        date,
        value: record.number,
        formatted: record.formatted,
        period: record.period,
    })
}

/// An invoice the writer returns for a `CreateInvoice` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The invoice.
    pub invoice: Invoice,
    /// Whether an earlier call with the same request id stored it.
    pub replayed: bool,
}

/// The stored invoice of a repeated call, if the repeat has the same body.
fn repeat(new: &NewInvoice, stored: Invoice, request_id: &RequestId) -> Result<Created, Error> {
    if new.same_as(&stored) {
        Ok(Created {
            invoice: stored,
            replayed: true,
        })
    } else {
        Err(Error::RequestIdReused {
            request_id: request_id.to_string(),
            invoice_number: stored.invoice_number,
        })
    }
}

/// Where the request ids of a call's allocations come from: the caller's
/// request id, or an id made for this call. Fixed names, so a repeat of the
/// call, even by another writer process, derives the same ids.
struct CallKey(Uuid);

/// The namespace of the ids derived from callers' request ids.
const CALL_KEYS: Uuid = Uuid::from_u128(0x5d1c_7f0e_2b8a_4c4e_9a51_63f0_d2e7_b914);

impl CallKey {
    fn new(request_id: Option<&RequestId>, new_id: impl FnOnce() -> Uuid) -> Self {
        Self(request_id.map_or_else(new_id, |id| {
            Uuid::new_v5(&CALL_KEYS, id.as_str().as_bytes())
        }))
    }

    /// The Reserve request id of attempt `attempt` (from 1).
    fn attempt(&self, attempt: u32) -> String {
        format!("invoice:{}:{attempt}", self.0)
    }
}

/// The request id under which attempt `attempt` (from 1) of a
/// `CreateInvoice` call with request id `request_id` reserves its number,
/// as the allocator's records show it.
#[must_use]
pub fn attempt_request_id(request_id: &RequestId, attempt: u32) -> String {
    CallKey::new(Some(request_id), Uuid::nil).attempt(attempt)
}

/// How many attempts of earlier calls under its request id a call walks
/// past (each settled since, its number reserved for nothing now) before it
/// answers that the request id is spent. Each is an attempt that stored
/// nothing: a call that died, or was too slow, after reserving its number.
const SPENT_ATTEMPTS_WALKED: u32 = 100;

/// The answer to a call under `request_id` that walked past `attempts`
/// attempts of earlier calls.
fn spent(request_id: Option<&RequestId>, attempts: u32) -> Error {
    Error::RequestIdSpent {
        request_id: request_id.map(ToString::to_string).unwrap_or_default(),
        attempts,
    }
}

/// Whether `stored` holds `number` itself, not only its text.
fn holds(stored: &Invoice, number: NumberOf<'_>) -> bool {
    stored.period == number.period && stored.number == number.number
}

/// How a call's last reserved number was lost.
enum Lost {
    /// An invoice already stored holds it.
    Taken,
    /// Reconciliation took it over, the store having been too slow.
    TakenOver,
}

/// Whether the allocator refused a call for good: asked again, it would
/// refuse again (the number's state, the request's values), where other
/// refusals (the writer's token, a fault of the allocator's) may pass.
fn refused_for_good(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::FailedPrecondition | Code::InvalidArgument
    )
}

/// Where reconciliation goes on from, having looked at the first
/// `looked_at` of `page`, up to `batch` rows after `after`: after the last it
/// looked at; from the start again once it looked at all of a last page (or
/// found it empty); where it was, if it looked at none (its time ran out).
fn go_on<T, K>(
    after: Option<K>,
    page: &[T],
    looked_at: usize,
    batch: u32,
    key: impl Fn(&T) -> K,
) -> Option<K> {
    let last_page = page.len() < batch as usize;
    match looked_at.checked_sub(1).and_then(|last| page.get(last)) {
        _ if page.is_empty() => None,
        None => after,
        Some(_) if last_page && looked_at == page.len() => None,
        Some(last) => Some(key(last)),
    }
}

/// Whether the allocator answered a repeated `Reserve` that no call
/// reserved under its request id.
fn never_reserved(status: &Status) -> bool {
    use tonic_types::StatusExt as _;
    status.code() == Code::NotFound
        && status
            .get_details_error_info()
            .is_some_and(|info| info.reason == "REQUEST_ID_NOT_FOUND")
}

/// Whether `status` refuses the request's `period` (one the series' reset
/// never makes).
fn names_period(status: &Status) -> bool {
    status.code() == Code::InvalidArgument
        && tonic_types::StatusExt::get_details_bad_request(status).is_some_and(|bad| {
            bad.field_violations
                .iter()
                .any(|violation| violation.field == "period")
        })
}

/// What notes an invoice's number settled once it is confirmed.
enum Settle {
    /// Deleting the pending note, by its request key, that names the
    /// invoice: one the writer stored.
    Note(String),
    /// Marking the invoice settled: one no note names (stored before notes
    /// named their invoices, imported, or another call's).
    Mark,
}

/// How long an invoice's number is reserved for it unless told otherwise:
/// long enough that a writer down for a while (or an allocator it cannot
/// reach) comes back to a number still reserved, which reconciliation then
/// confirms to the invoice stored under it. Once the lease ends the
/// allocator gives the number back; the confirmation, naming the request
/// id the number was reserved with, is still accepted until another call
/// takes the number (only a series that reissues hands it out again).
pub const DEFAULT_RESERVATION_LEASE: Duration = Duration::from_hours(1);

/// Writes and reads invoices.
#[derive(Clone)]
pub struct InvoiceWriter {
    store: Arc<dyn InvoiceStore>,
    allocator: AllocatorClient,
    max_attempts: u32,
    clock: Arc<dyn Clock>,
    lease: Duration,
    /// The last unsettled invoice reconciliation looked at (when stored,
    /// and id): the next run goes on after it.
    reconciled_to: Arc<Mutex<Option<StoredAt>>>,
    /// The last pending note reconciliation looked at (when noted, tenant
    /// and request key): the next run goes on after it.
    settled_to: Arc<Mutex<Option<NotedAt>>>,
}

impl InvoiceWriter {
    /// A writer that allocates at most `max_attempts` numbers per invoice and
    /// stamps each with `clock`'s time and a new id from it.
    #[must_use]
    pub fn new(
        store: Arc<dyn InvoiceStore>,
        allocator: AllocatorClient,
        max_attempts: u32,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            allocator,
            max_attempts: max_attempts.max(1),
            clock,
            lease: DEFAULT_RESERVATION_LEASE,
            reconciled_to: Arc::default(),
            settled_to: Arc::default(),
        }
    }

    /// The writer reserving each number for `lease`.
    #[must_use]
    pub fn with_lease(self, lease: Duration) -> Self {
        Self { lease, ..self }
    }

    /// Numbers and stores a new invoice; or, for a request id that already
    /// created one from the same body, returns that invoice.
    ///
    /// Each attempt allocates with a request id of its own, derived from the
    /// caller's (or, without one, from an id made for this call), so an
    /// attempt repeated after a lost reply gets its number back. A repeat
    /// walks past the attempts of earlier calls whose numbers were settled
    /// since (given back by reconciliation): only the numbers it reserves
    /// itself count against `max_attempts`.
    ///
    /// # Errors
    /// [`Error::RequestIdReused`] when the request id created an invoice from
    /// another body, [`Error::NumberConflicts`] when every number allocated
    /// was taken, [`Error::StoreTooSlow`] when the last was taken over
    /// before its invoice was stored, [`Error::RequestIdSpent`] when earlier calls under
    /// the request id left too many attempts behind, [`Error::Allocator`]
    /// when none could be allocated before `deadline`, or a store failure.
    /// Nothing is stored in any of these cases.
    pub async fn create(
        &self,
        new: &NewInvoice,
        request_id: Option<&RequestId>,
        deadline: Instant,
    ) -> Result<Created, Error> {
        let call = CallKey::new(request_id, || self.clock.new_id());
        let issue_date = new
            .issue_date
            .map(|date| date.to_string())
            .unwrap_or_default();
        // Numbers this call reserved, and how its last one was lost.
        let mut reserved_here = 0;
        let mut last_lost = Lost::Taken;
        let mut attempt = 0;
        while reserved_here < self.max_attempts {
            attempt += 1;
            // Only a request id's repeats walk past attempts.
            if attempt - 1 - reserved_here >= SPENT_ATTEMPTS_WALKED {
                return Err(spent(request_id, attempt - 1));
            }
            let key = call.attempt(attempt);
            // Noted first: a crash from here on leaves a row that
            // reconciliation settles, by the invoice it names if that is
            // stored, else by repeating the reservation. It is also
            // the store's check before taking a number: with the store down
            // (or read-only) the call fails here instead of burning a number
            // it cannot use. (Holding a transaction open across the allocator
            // call instead would tie up a connection for as long as the
            // allocator takes, retries included.) And it is where a repeat
            // of a call that stored its invoice stops, before any number.
            // The note lasts until the number is confirmed or given back.
            let id = self.clock.new_id();
            let pending = self.pending(new, &key, &issue_date, id);
            if let Some(repeated) = self.note_pending(new, &pending, request_id).await? {
                return Ok(repeated);
            }
            // A repeat of this call under the same request id may have
            // noted the same reservation: the note stays for it.
            let withdrawn = Note::Withdrawn { pending: &pending };
            let Some(reserved) = self
                .reserve(&new.tenant_id, &pending, attempt, deadline)
                .await?
            else {
                continue;
            };
            reserved_here += 1;
            let number = numbered(reserved)?;
            let invoice = new.numbered(number, id, self.clock.now());
            match self.store.insert(&invoice, request_id, Some(&key)).await {
                Ok(()) => {
                    self.confirm(&invoice, Settle::Note(key), deadline).await;
                    return Ok(Created {
                        invoice,
                        replayed: false,
                    });
                }
                // A concurrent repeat of this call stored its invoice first
                // (with the same number: it reserved with the same key), and
                // confirms it. The note is that call's too: it stays for
                // that call (or reconciliation) to settle, unless the repeat
                // has settled it already.
                Err(
                    StoreError::NumberTaken
                    | StoreError::RequestIdTaken
                    | StoreError::NoteTakenOver,
                ) if let Some(request_id) = request_id
                    && let Some(stored) = self
                        .store
                        .get_by_request_id(&new.tenant_id, request_id)
                        .await? =>
                {
                    return repeat(new, stored, request_id);
                }
                // Reconciliation took the note over, the call having taken
                // longer than it waits (or settled it, and a repeat of the
                // call made it afresh; or a repeat that stored no invoice
                // settled it): the number is not this call's to store under,
                // so it reserves another.
                Err(StoreError::NoteTakenOver) => {
                    last_lost = Lost::TakenOver;
                    tracing::warn!(
                        tenant = %new.tenant_id,
                        number = invoice.number,
                        attempt,
                        max_attempts = self.max_attempts,
                        "the number this attempt reserved was taken over before the invoice \
                         was stored (by reconciliation, or another call with this request id); \
                         reserving another",
                    );
                }
                Err(StoreError::NumberTaken) => {
                    last_lost = Lost::Taken;
                    let last = reserved_here == self.max_attempts;
                    if self
                        .number_taken(&invoice, &key, attempt, last, deadline)
                        .await?
                    {
                        self.let_go(withdrawn).await;
                    }
                }
                // The invoice may be stored all the same: its connection was
                // lost, or its time ran out, or its group stopped, after its
                // group committed; or a repeat of the call stored its own
                // under the same number meanwhile. The number stays reserved
                // and noted: reconciliation confirms it to the invoice stored
                // under it, if any, and gives it back otherwise. Given back
                // here, it could be voided, or handed out again, under a
                // stored invoice.
                Err(error) => return Err(error.into()),
            }
        }
        Err(match last_lost {
            Lost::Taken => Error::NumberConflicts {
                tenant: new.tenant_id.to_string(),
                attempts: self.max_attempts,
            },
            Lost::TakenOver => Error::StoreTooSlow {
                attempts: self.max_attempts,
            },
        })
    }

    /// The note of an attempt that reserves under `key` for invoice `id`.
    fn pending(&self, new: &NewInvoice, key: &str, issue_date: &str, id: Uuid) -> Pending {
        Pending {
            tenant_id: new.tenant_id.to_string(),
            request_key: key.to_owned(),
            issue_date: issue_date.to_owned(),
            since: self.clock.now(),
            invoice_id: id.to_string(),
            noted_by: id.to_string(),
        }
    }

    /// Reserves attempt `attempt`'s number under `key`, noted pending; the
    /// number if it is held for this call. A repeat of an attempt of an
    /// earlier call under the same request id, settled since, answers a
    /// number no longer held: this call reserved nothing, and withdraws its
    /// note (which stays for a repeat of the call that noted it too).
    /// One still held, but for another date than the call's issue date
    /// (the earlier call was sent with another), is settled as reconciliation
    /// settles it: confirmed to the earlier call's invoice if that is
    /// stored, given back if not.
    async fn reserve(
        &self,
        tenant: &TenantId,
        pending: &Pending,
        attempt: u32,
        deadline: Instant,
    ) -> Result<Option<NumberRecord>, Error> {
        let (issue_date, key) = (pending.issue_date.as_str(), pending.request_key.as_str());
        // A repeat of this call under the same request id may have noted
        // the same reservation, and reserved it: the note stays for it.
        let withdrawn = Note::Withdrawn { pending };
        let Reserved {
            record: reserved,
            replayed,
        } = match self
            .allocator
            .reserve(tenant, issue_date, key, self.lease, deadline)
            .await
        {
            Ok(reserved) => reserved,
            // A repeat of an attempt of an earlier call under the same
            // request id, whose number another call holds since: this call
            // reserved nothing, and its note goes.
            Err(error) if error.held_by_another().is_some() => {
                tracing::warn!(
                    %tenant,
                    attempt,
                    max_attempts = self.max_attempts,
                    error = %error,
                    "the number this attempt reserved before is no longer held for it; \
                     reserving another",
                );
                self.let_go(withdrawn).await;
                return Ok(None);
            }
            // Refused: nothing was reserved, and the call withdraws its
            // note (if the store fails to, reconciliation settles it: the
            // caller is answered the refusal all the same). Otherwise (out
            // of time, a fault of the allocator's own) it may have been:
            // the note stays for reconciliation.
            Err(error) if error.refused_before_writing() => {
                self.let_go(withdrawn).await;
                return Err(error.into());
            }
            Err(error) => return Err(error.into()),
        };
        if !self.held_for(tenant, &reserved, key, attempt) {
            self.let_go(withdrawn).await;
            return Ok(None);
        }
        // Reserved by an earlier call under this request id for another
        // date (a retry sent with the next day's date): this call's invoice
        // cannot carry it, whose text may show that date, or whose period
        // is another. (A number reissued reads with the date it was first
        // handed out for, and may be settled here for nothing: another is
        // reserved.) The earlier call may still be storing its invoice
        // under it: the note is taken over first, so that no insert under
        // it follows.
        if !issue_date.is_empty()
            && (!issue_date.starts_with(&reserved.period)
                || replayed && reserved.date != issue_date)
        {
            tracing::info!(
                %tenant,
                invoice_number = %reserved.formatted,
                issue_date,
                reserved_for = %reserved.date,
                attempt,
                "the number this attempt reserved before is for another date than the issue \
                 date; settling it and reserving another",
            );
            self.settle(pending, deadline).await?;
            return Ok(None);
        }
        Ok(Some(reserved))
    }

    /// Counts and logs a number found taken on attempt `attempt` (the
    /// call's `last`, or not), reserved under `key`, and confirms it to the
    /// invoice stored under it, which holds it (or only its text: that
    /// invoice's own number is confirmed to it too). Whether this one is
    /// settled.
    async fn number_taken(
        &self,
        invoice: &Invoice,
        key: &str,
        attempt: u32,
        last: bool,
        deadline: Instant,
    ) -> Result<bool, Error> {
        let outcome = if last { "gave_up" } else { "retried" };
        metrics::counter!("numbering_invoice_number_conflicts_total", "outcome" => outcome)
            .increment(1);
        tracing::warn!(
            tenant = %invoice.tenant_id,
            number = invoice.number,
            invoice_number = %invoice.invoice_number,
            attempt,
            max_attempts = self.max_attempts,
            "invoice number already taken; reserving another",
        );
        let number = NumberOf::held_by(invoice);
        let Some(stored) = self.store.get_by_number(number).await? else {
            // Its holder is not found: nothing holds it.
            return Ok(self
                .give_back(number, "its invoice number was taken", key, deadline)
                .await);
        };
        let confirmed = self.confirm(&stored, Settle::Mark, deadline).await;
        if holds(&stored, number) {
            // Unless confirmed, the note is all that leads back to it.
            return Ok(confirmed);
        }
        // That invoice shows this number's text under a number of its own:
        // it holds this one too, which is never handed out again (given
        // back, a series that reissues would hand it out to every attempt).
        Ok(self.settles(number, stored.id, Some(key), deadline).await)
    }

    /// Whether `reserved`, the answer to attempt `attempt`'s reservation
    /// under `key`, is this call's to use. A repeat of the reservation
    /// answers its number as it stands now: given back since (by
    /// reconciliation, or at the lease's end), perhaps held by another call.
    /// Only a number still reserved under the attempt's key is the call's.
    fn held_for(
        &self,
        tenant: &TenantId,
        reserved: &NumberRecord,
        key: &str,
        attempt: u32,
    ) -> bool {
        let held = reserved.state() == NumberState::Reserved && reserved.request_id == key;
        if !held {
            tracing::warn!(
                %tenant,
                number = reserved.number,
                state = ?reserved.state(),
                attempt,
                max_attempts = self.max_attempts,
                "the number this attempt reserved is no longer held for it; reserving another",
            );
        }
        held
    }

    /// Notes an attempt's reservation pending; or, if the call's request id
    /// already stored an invoice, answers that one and notes nothing.
    async fn note_pending(
        &self,
        new: &NewInvoice,
        pending: &Pending,
        request_id: Option<&RequestId>,
    ) -> Result<Option<Created>, Error> {
        let noted = self
            .store
            .note(Note::Pending {
                pending,
                request_id,
            })
            .await;
        match noted {
            Ok(()) => Ok(None),
            Err(StoreError::RequestIdTaken)
                if let Some(request_id) = request_id
                    && let Some(stored) = self
                        .store
                        .get_by_request_id(&new.tenant_id, request_id)
                        .await? =>
            {
                repeat(new, stored, request_id).map(Some)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Lets a pending reservation's note go ([`Note::Done`]), or takes the
    /// call off it ([`Note::Withdrawn`]); a failure is logged, and
    /// reconciliation settles the note later (its number is stored or given
    /// back, or was never the call's, so settling it changes nothing).
    async fn let_go(&self, done: Note<'_>) {
        if let Err(error) = self.store.note(done).await {
            tracing::warn!(error = %chain(&error), "a settled reservation is still noted pending");
        }
    }

    /// Confirms a stored invoice's number with its id, and notes it settled
    /// as `settle` says; whether it is settled. A number the allocator did
    /// not hand out (imported, seeded) is settled with nothing to confirm;
    /// one it refuses to confirm (or refuses as invalid) is logged as an
    /// error and settled (its record says why). While the allocator cannot
    /// be reached, or does not accept the writer's token, it is left for
    /// reconciliation.
    ///
    /// The note is written by a task of its own, in the store's next group,
    /// and not waited for: it only spares reconciliation a confirmation, so
    /// a note lost in a crash makes reconciliation confirm the number again,
    /// which answers the same record.
    async fn confirm(&self, invoice: &Invoice, settle: Settle, deadline: Instant) -> bool {
        let holder = match &settle {
            Settle::Note(request_key) => Some(request_key.as_str()),
            Settle::Mark => None,
        };
        if !self
            .settles(NumberOf::held_by(invoice), invoice.id, holder, deadline)
            .await
        {
            return false;
        }
        let store = self.store.clone();
        let (tenant, id) = (invoice.tenant_id.clone(), invoice.id);
        let invoice_number = invoice.invoice_number.clone();
        let noted = async move {
            let note = match &settle {
                Settle::Note(request_key) => Note::Done {
                    tenant: &tenant,
                    request_key,
                },
                Settle::Mark => Note::Settled {
                    tenant: &tenant,
                    id,
                },
            };
            if let Err(error) = store.note(note).await {
                tracing::warn!(
                    %tenant,
                    %invoice_number,
                    error = %chain(&error),
                    "the invoice's number is confirmed but not noted; reconciliation will",
                );
            }
        };
        // Its log lines keep the call's span.
        tokio::spawn(noted.in_current_span());
        true
    }

    /// Confirms `number` with `reference`, the id of the invoice that holds
    /// it, as reserved under `holder` if that is known (taken by another
    /// call since, as that call's reservation: the invoice holds it all the
    /// same); whether it is settled (confirmed, not one the allocator handed
    /// out, or refused).
    async fn settles(
        &self,
        number: NumberOf<'_>,
        reference: Uuid,
        holder: Option<&str>,
        deadline: Instant,
    ) -> bool {
        let reference = reference.to_string();
        let confirm = |holder| {
            self.allocator.confirm(
                number.tenant,
                number.period,
                number.number,
                &reference,
                holder,
                deadline,
            )
        };
        let mut confirmed = confirm(holder).await;
        // Reserved by another call since the reservation's lease ended: the
        // stored invoice holds the number all the same (as when a repeat of
        // the reservation finds it another's). It is confirmed as the other
        // call's reservation, which is accepted after that one's lease too,
        // so that the other call's confirmation is refused and the clash
        // shows.
        if let Some(holder) = holder
            && let Err(error) = &confirmed
            && let Some(other) = error.held_under()
        {
            tracing::warn!(
                tenant = %number.tenant,
                invoice_number = %number.formatted,
                reserved_under = holder,
                held_under = %other,
                "the number of a stored invoice was reserved by another call after its lease \
                 ended; confirming it to the stored invoice",
            );
            confirmed = confirm((!other.is_empty()).then_some(other.as_str())).await;
        }
        match confirmed {
            Ok(_) => true,
            // An invoice without a period holds no number of a series that
            // resets: every number the allocator hands out there has one.
            Err(AllocatorError::Rejected(status))
                if status.code() == Code::NotFound
                    || number.period.is_empty() && names_period(&status) =>
            {
                tracing::info!(
                    tenant = %number.tenant,
                    invoice_number = %number.formatted,
                    "the invoice's number was not handed out by the allocator (imported or \
                     seeded): nothing to confirm",
                );
                true
            }
            // Refused for good (an imported number it cannot take, say):
            // tried again, it would hold a place in every reconciliation.
            Err(AllocatorError::Rejected(status)) if refused_for_good(&status) => {
                confirmation_refused(&status);
                tracing::error!(
                    tenant = %number.tenant,
                    invoice_number = %number.formatted,
                    error = %status.message(),
                    "the allocator refuses to confirm the number of a stored invoice; \
                     see its record (GetNumber)",
                );
                true
            }
            Err(error) => {
                tracing::warn!(
                    tenant = %number.tenant,
                    invoice_number = %number.formatted,
                    error = %chain(&error),
                    "the invoice's number is not confirmed yet; reconciliation will",
                );
                false
            }
        }
    }

    /// Gives back a number reserved under `holder` for an invoice that was
    /// not stored; whether it is given back (or was, or is confirmed or held
    /// by another call since). A failure is logged: reconciliation, or the
    /// lease's end, gives it back later.
    async fn give_back(
        &self,
        number: NumberOf<'_>,
        reason: &str,
        holder: &str,
        deadline: Instant,
    ) -> bool {
        let released = self
            .allocator
            .release(
                number.tenant,
                number.period,
                number.number,
                reason,
                Some(holder),
                deadline,
            )
            .await;
        match released {
            Ok(_) => true,
            // Given back before, confirmed since, or taken by another call
            // since its lease ended: nothing of this call's to give back.
            Err(AllocatorError::Rejected(status)) if status.code() == Code::FailedPrecondition => {
                true
            }
            Err(error) => {
                tracing::warn!(
                    tenant = %number.tenant,
                    invoice_number = %number.formatted,
                    error = %chain(&error),
                    "a number reserved for an invoice not stored is not given back yet",
                );
                false
            }
        }
    }

    /// Settles what calls that died left behind: confirms the numbers of up
    /// to `batch` stored invoices not settled (each run after those the last
    /// looked at, from the oldest again once at the end), and settles up to
    /// `batch` reservations pending since before `stale_before` (after
    /// those the last looked at, likewise): each is repeated (same request
    /// id, same number), then confirmed to the invoice stored under its
    /// number, or given back. The invoices, then the notes, have `budget`
    /// each, each call retried within it: a confirmation that stalls keeps
    /// the notes waiting no longer than one budget. What is not looked at
    /// in time is looked at first next run.
    ///
    /// # Errors
    /// The invoice store failed; what was settled before stays settled, and
    /// the next run goes on after the note it failed on.
    pub async fn reconcile(
        &self,
        stale_before: chrono::DateTime<chrono::Utc>,
        batch: u32,
        budget: Duration,
    ) -> Result<Reconciled, Error> {
        let mut reconciled = Reconciled::default();
        let deadline = Instant::now() + budget;
        let after = *self
            .reconciled_to
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let unsettled = self.store.unsettled(after, batch).await?;
        // Each run goes on after the last, and starts again from the oldest
        // once at the end: invoices that cannot be settled (of a tenant
        // the writer's token is not granted) do not hold back those behind.
        let mut looked_at = 0;
        for invoice in unsettled.iter().take_while(|_| Instant::now() < deadline) {
            let confirmed = self.confirm(invoice, Settle::Mark, deadline).await;
            reconciled.confirmed += u32::from(confirmed);
            looked_at += 1;
        }
        *self
            .reconciled_to
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            go_on(after, &unsettled, looked_at, batch, |last| {
                (last.created_at, last.id)
            });
        let after = self
            .settled_to
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let pending = self
            .store
            .pending_before(stale_before, after.clone(), batch)
            .await?;
        let deadline = Instant::now() + budget;
        // Notes that cannot be settled now (of a tenant the writer's token
        // is not granted), or that a store fault stops on, do not hold back
        // those behind either.
        let (mut looked_at, mut failed) = (0, Ok(()));
        for note in pending.iter().take_while(|_| Instant::now() < deadline) {
            looked_at += 1;
            match self.settle(note, deadline).await {
                Ok(given_back) => reconciled.given_back += u32::from(given_back),
                Err(error) => {
                    failed = Err(error);
                    break;
                }
            }
        }
        *self
            .settled_to
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            go_on(after, &pending, looked_at, batch, |last| {
                (last.since, last.tenant_id.clone(), last.request_key.clone())
            });
        failed.map(|()| reconciled)
    }

    /// Settles a reservation a call that died left pending; whether it was
    /// given back. The invoice stored under the note, if any (the one it
    /// names, or another call's that noted it), has its number confirmed;
    /// otherwise the reservation is repeated (same request id,
    /// same number) and its number confirmed to the invoice stored under
    /// it, or given back. The note goes once its number is settled.
    async fn settle(&self, pending: &Pending, deadline: Instant) -> Result<bool, Error> {
        let done = Note::Done {
            tenant: &pending.tenant_id,
            request_key: &pending.request_key,
        };
        let Ok(tenant) = TenantId::parse(&pending.tenant_id) else {
            // Not a tenant any call could have reserved for: nothing to settle.
            self.store.note(done).await?;
            return Ok(false);
        };
        // From here on no invoice is stored under the note: what is stored
        // under its number now is all there will be. A note that names
        // another invoice now is a live call's again.
        if !self.store.take_over(pending).await? {
            return Ok(false);
        }
        if let Some(stored) = self.stored_under(&tenant, pending).await? {
            if self
                .settles(
                    NumberOf::held_by(&stored),
                    stored.id,
                    Some(&pending.request_key),
                    deadline,
                )
                .await
            {
                self.store.note(done).await?;
            }
            return Ok(false);
        }
        let Some(record) = self.repeat(&tenant, pending, done, deadline).await? else {
            return Ok(false);
        };
        let number = NumberOf {
            tenant: &pending.tenant_id,
            period: &record.period,
            number: record.number,
            formatted: &record.formatted,
        };
        // Stored by this call, or by another under the same number; or
        // another holds only its text, with a number of its own: both are
        // confirmed to it (as when a call finds the number taken).
        if let Some(stored) = self.store.get_by_number(number).await? {
            // One that holds this very number, still recorded as reserved
            // under the note's key (not reissued to another call since),
            // holds it as that reservation's: named, a confirmation after
            // the lease is accepted.
            let holder = (holds(&stored, number) && record.request_id == pending.request_key)
                .then_some(pending.request_key.as_str());
            let mut settled = self
                .settles(NumberOf::held_by(&stored), stored.id, holder, deadline)
                .await;
            if !holds(&stored, number) {
                settled &= self
                    .settles(number, stored.id, Some(&pending.request_key), deadline)
                    .await;
            }
            if settled {
                self.store.note(done).await?;
            }
            return Ok(false);
        }
        let given_back = self
            .give_back(
                number,
                "the invoice was not stored",
                &pending.request_key,
                deadline,
            )
            .await;
        if given_back {
            self.store.note(done).await?;
        }
        Ok(given_back)
    }

    /// The invoice stored under a pending note, if any: the one it names,
    /// or another call's that noted it (a repeat of the call that stored
    /// its invoice may have noted it again since, naming its own, never
    /// stored). Found by its id, not by repeating the reservation, which
    /// the allocator answers only while it keeps the request id.
    async fn stored_under(
        &self,
        tenant: &TenantId,
        pending: &Pending,
    ) -> Result<Option<Invoice>, Error> {
        let others = pending
            .noted_by
            .split_whitespace()
            .filter(|id| *id != pending.invoice_id);
        // Notes written before they named their invoices name none.
        let ids = std::iter::once(pending.invoice_id.as_str())
            .chain(others)
            .filter_map(|id| Uuid::parse_str(id).ok());
        for id in ids {
            if let Some(stored) = self.store.get(tenant, id).await? {
                return Ok(Some(stored));
            }
        }
        Ok(None)
    }

    /// Repeats the reservation a pending note was made for (same request
    /// id, same number): its number as it stands, if the allocator answers
    /// it. One never made (the call died before its `Reserve` reached the
    /// allocator) reserves nothing, and its note (`done`) goes. A
    /// reservation refused for good is left for its lease to end, and its
    /// note goes; one refused for now, or unreachable, is tried again at
    /// the next reconciliation.
    async fn repeat(
        &self,
        tenant: &TenantId,
        pending: &Pending,
        done: Note<'_>,
        deadline: Instant,
    ) -> Result<Option<NumberRecord>, Error> {
        let repeated = self
            .allocator
            .repeat_reservation(
                tenant,
                &pending.issue_date,
                &pending.request_key,
                self.lease,
                deadline,
            )
            .await;
        Ok(match repeated {
            Ok(record) => Some(record),
            // Another call holds its number since its lease ended: settled
            // as any number found taken (confirmed to an invoice stored
            // under it, by a repeat of the call the note does not name;
            // nothing of this reservation's is left to give back).
            Err(error) if let Some(record) = error.held_by_another() => Some(record),
            // Never made: nothing to settle, and no number taken only to be
            // given back (a gap, in a series that voids what is given back).
            Err(AllocatorError::Rejected(status)) if never_reserved(&status) => {
                tracing::info!(
                    tenant = %pending.tenant_id,
                    request_key = %pending.request_key,
                    "a pending reservation was never made; nothing to give back",
                );
                self.store.note(done).await?;
                None
            }
            // Refused for good (the date out of the series' reach, say), as
            // a confirmation is: tried again, it would hold a place in every
            // reconciliation.
            Err(AllocatorError::Rejected(status)) if refused_for_good(&status) => {
                tracing::error!(
                    tenant = %pending.tenant_id,
                    request_key = %pending.request_key,
                    error = %status.message(),
                    "a pending reservation cannot be repeated; left for its lease to end",
                );
                self.store.note(done).await?;
                None
            }
            // Refused for now (the writer's token not granted, a fault of
            // the allocator's): an invoice may be stored under the number,
            // which only the note leads to. Tried again at the next
            // reconciliation.
            Err(AllocatorError::Rejected(status)) => {
                tracing::warn!(
                    tenant = %pending.tenant_id,
                    request_key = %pending.request_key,
                    error = %status.message(),
                    "a pending reservation cannot be repeated now; reconciliation will try again",
                );
                None
            }
            // Tried again at the next reconciliation.
            Err(
                AllocatorError::Unavailable(_)
                | AllocatorError::OutOfTime
                | AllocatorError::RefusedRetry(_),
            ) => None,
        })
    }

    /// One of the tenant's invoices.
    ///
    /// # Errors
    /// [`Error::InvoiceNotFound`] for an unknown id and for another tenant's.
    pub async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Invoice, Error> {
        self.store
            .get(tenant, id)
            .await?
            .ok_or(Error::InvoiceNotFound)
    }

    /// Up to `limit` invoices after `after` (a period and a number), in
    /// period and number order, and whether more follow.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list(
        &self,
        tenant: &TenantId,
        after: Option<(&str, i64)>,
        limit: u32,
    ) -> Result<Page<Invoice>, Error> {
        let fetched = self
            .store
            .list(tenant, after, Page::<Invoice>::fetch(limit))
            .await?;
        Ok(Page::from_fetched(fetched, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::go_on;

    #[test]
    fn reconciliation_goes_on_after_what_it_looked_at() {
        let on = |after: Option<u8>, page: &[u8], looked_at: usize| {
            go_on(after, page, looked_at, 3, |&row| row)
        };
        // A full page looked at: after its last, for more may follow.
        assert_eq!(on(None, &[1, 2, 3], 3), Some(3));
        // A last page looked at, or none left: from the start again.
        assert_eq!(on(Some(3), &[4, 5], 2), None);
        assert_eq!(on(Some(5), &[], 0), None);
        // Time ran out part-way: after the last looked at, even on a last
        // page; before any: where it was.
        assert_eq!(on(Some(3), &[4, 5], 1), Some(4));
        assert_eq!(on(None, &[1, 2, 3], 2), Some(2));
        assert_eq!(on(Some(3), &[4, 5], 0), Some(3));
    }
}
