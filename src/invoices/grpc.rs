//! `numbering.v1.InvoiceWriter` handlers: request → domain types → [`InvoiceWriter`] → response.

use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::{
    access::Needs,
    calendar::parse_date,
    invoices::{
        Error, InvoiceWriter,
        allocator_client::{AllocatorError, rate_limited},
        domain::{self, Client, Invoice, LineItem, MAX_LINE_ITEMS, NewInvoice},
    },
    proto::{
        self, CreateInvoiceRequest, CreateInvoiceResponse, GetInvoiceRequest, GetInvoiceResponse,
        ListInvoicesRequest, ListInvoicesResponse,
        invoice_writer_server::{self, InvoiceWriterServer},
    },
    request_id::RequestId,
    server::{
        self, caller_timeout,
        pagination::{self, Listing, PageAsked},
        status::{chain, internal, with_reason},
        validation::{FieldViolation, InvalidArgument, Violations},
    },
    tenant::TenantId,
};

/// Largest request the writer decodes: 500 line items of bounded text fit well within it.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The gRPC face of an [`InvoiceWriter`].
#[derive(Clone)]
pub struct InvoiceWriterService {
    writer: InvoiceWriter,
    allocation_budget: Duration,
}

/// The tonic service to serve. Allocation retries stop after
/// `allocation_budget`, or sooner when the caller's deadline is nearer.
#[must_use]
pub fn service(
    writer: InvoiceWriter,
    allocation_budget: Duration,
) -> InvoiceWriterServer<InvoiceWriterService> {
    InvoiceWriterServer::new(InvoiceWriterService {
        writer,
        allocation_budget,
    })
    .max_decoding_message_size(MAX_REQUEST_BYTES)
}

/// Reads a create request into a [`NewInvoice`] and its request id, naming
/// every bad field.
///
/// # Errors
/// The fields that break the rules.
pub fn parse_new_invoice(
    request: &CreateInvoiceRequest,
) -> Result<(NewInvoice, Option<RequestId>), InvalidArgument> {
    let mut v = Violations::new();
    let tenant_id = v.check("tenant_id", TenantId::parse(&request.tenant_id));
    let id = v.check("client_id", domain::text(&request.client_id, 128, false));
    let name = v.check("client_name", domain::text(&request.client_name, 200, true));
    let email = v.check("client_email", domain::email(&request.client_email));
    let phone = v.check("client_phone", domain::phone(&request.client_phone));
    let address = v.check(
        "client_address",
        domain::text(&request.client_address, 1000, false),
    );
    let issue_date = v.check("issue_date", parse_date(&request.issue_date));
    let due_date = v.check("due_date", domain::due_date(&request.due_date));
    let notes = v.check("notes", domain::text(&request.notes, 4000, false));
    let currency = v.check("currency", domain::currency(&request.currency));
    let request_id = v.check("request_id", RequestId::parse(&request.request_id));
    if request.line_items.is_empty() || request.line_items.len() > MAX_LINE_ITEMS {
        v.add(
            "line_items",
            format!("must hold 1 to {MAX_LINE_ITEMS} items"),
        );
    }
    let mut line_items = Vec::with_capacity(request.line_items.len().min(MAX_LINE_ITEMS));
    for (i, item) in request.line_items.iter().take(MAX_LINE_ITEMS).enumerate() {
        let description = v.check(
            format!("line_items[{i}].description"),
            domain::text(&item.description, 1000, true),
        );
        let quantity = v.check(
            format!("line_items[{i}].quantity"),
            domain::quantity(&item.quantity),
        );
        let unit_price = v.check(
            format!("line_items[{i}].unit_price"),
            domain::unit_price(&item.unit_price),
        );
        if let (Some(description), Some(quantity), Some(unit_price)) =
            (description, quantity, unit_price)
        {
            line_items.push(LineItem {
                description,
                quantity,
                unit_price,
            });
        }
    }
    v.finish()?;
    let (
        Some(tenant_id),
        Some(id),
        Some(name),
        Some(email),
        Some(phone),
        Some(address),
        Some(due_date),
        Some(notes),
        Some(currency),
        Some(request_id),
        Some(issue_date),
    ) = (
        tenant_id, id, name, email, phone, address, due_date, notes, currency, request_id,
        issue_date,
    )
    else {
        unreachable!("finish() returned Ok, so every field parsed");
    };
    let new = NewInvoice {
        tenant_id,
        issue_date,
        client: Client {
            id,
            name,
            email,
            phone,
            address,
        },
        due_date,
        notes,
        currency,
        line_items,
    };
    Ok((new, request_id))
}

/// Reads a get request: the tenant and the invoice's id.
///
/// # Errors
/// The fields that break the rules.
pub fn parse_get_invoice(request: &GetInvoiceRequest) -> Result<(TenantId, Uuid), InvalidArgument> {
    let mut v = Violations::new();
    let tenant = v.check("tenant_id", TenantId::parse(&request.tenant_id));
    let id = v.check(
        "id",
        Uuid::parse_str(&request.id)
            .map_err(|_| "must be an invoice id as returned by CreateInvoice".to_owned()),
    );
    v.finish()?;
    let (Some(tenant), Some(id)) = (tenant, id) else {
        unreachable!("finish() returned Ok, so every field parsed");
    };
    Ok((tenant, id))
}

/// The period and number a page of invoices ended with.
pub type InvoiceKey = (String, i64);

/// Reads a list request: the tenant, and the page asked for.
///
/// # Errors
/// The fields that break the rules.
pub fn parse_list_invoices(
    request: &ListInvoicesRequest,
) -> Result<(TenantId, PageAsked<InvoiceKey>), InvalidArgument> {
    let mut v = Violations::new();
    let tenant = v.check("tenant_id", TenantId::parse(&request.tenant_id));
    let size = v.check("page_size", pagination::page_size(request.page_size));
    let listing = Listing::of("ListInvoices", &[&request.tenant_id]);
    let after = v.check(
        "page_token",
        listing.read(&request.page_token).and_then(|key| {
            key.map_or(Ok(None), |key| {
                // "<period>/<number>". A period is any text an invoice can
                // hold (an imported one's may have a shape of its own), so
                // never a NUL, which PostgreSQL does not store.
                key.rsplit_once('/')
                    .filter(|(period, _)| !period.contains('\0'))
                    .and_then(|(period, number)| {
                        Some((period.to_owned(), number.parse::<i64>().ok()?))
                    })
                    .map(Some)
                    .ok_or_else(|| "is not a page token from this service".into())
            })
        }),
    );
    v.finish()?;
    let (Some(tenant), Some(size), Some(after)) = (tenant, size, after) else {
        unreachable!("finish() returned Ok, so every field parsed");
    };
    Ok((
        tenant,
        PageAsked {
            size,
            after,
            listing,
        },
    ))
}

#[tonic::async_trait]
impl invoice_writer_server::InvoiceWriter for InvoiceWriterService {
    async fn create_invoice(
        &self,
        request: Request<CreateInvoiceRequest>,
    ) -> Result<Response<CreateInvoiceResponse>, Status> {
        // Answer before the caller gives up: stop retrying at 90% of its deadline.
        let budget = caller_timeout(request.metadata().as_ref())
            .map_or(self.allocation_budget, |timeout| {
                self.allocation_budget.min(timeout.mul_f64(0.9))
            });
        let deadline = Instant::now() + budget;
        let admission = server::admission(&request)?;
        let (new, request_id) = parse_new_invoice(request.get_ref())?;
        admission.admit(&new.tenant_id, Needs::Tenant).await?;

        let created = self
            .writer
            .create(&new, request_id.as_ref(), deadline)
            .await?;
        Ok(Response::new(CreateInvoiceResponse {
            invoice: Some(created.invoice.into()),
            replayed: created.replayed,
        }))
    }

    async fn get_invoice(
        &self,
        request: Request<GetInvoiceRequest>,
    ) -> Result<Response<GetInvoiceResponse>, Status> {
        let admission = server::admission(&request)?;
        let (tenant, id) = parse_get_invoice(request.get_ref())?;
        admission.admit(&tenant, Needs::Tenant).await?;

        let invoice = self.writer.get(&tenant, id).await?;
        Ok(Response::new(GetInvoiceResponse {
            invoice: Some(invoice.into()),
        }))
    }

    async fn list_invoices(
        &self,
        request: Request<ListInvoicesRequest>,
    ) -> Result<Response<ListInvoicesResponse>, Status> {
        let admission = server::admission(&request)?;
        let (tenant, asked) = parse_list_invoices(request.get_ref())?;
        admission.admit(&tenant, Needs::Tenant).await?;

        let after = asked
            .after
            .as_ref()
            .map(|(period, number)| (period.as_str(), *number));
        let page = self.writer.list(&tenant, after, asked.size).await?;
        let next_page_token = asked
            .listing
            .next_token(&page, |last| format!("{}/{}", last.period, last.number));
        Ok(Response::new(ListInvoicesResponse {
            invoices: page.items.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }
}

impl From<Invoice> for proto::Invoice {
    fn from(invoice: Invoice) -> Self {
        Self {
            id: invoice.id.to_string(),
            tenant_id: invoice.tenant_id,
            invoice_number: invoice.invoice_number,
            number: invoice.number,
            issue_date: invoice.issue_date.to_string(),
            client_id: invoice.client.id,
            client_name: invoice.client.name,
            client_email: invoice.client.email,
            client_phone: invoice.client.phone,
            client_address: invoice.client.address,
            due_date: invoice.due_date.format("%Y-%m-%d").to_string(),
            notes: invoice.notes,
            currency: invoice.currency,
            line_items: invoice
                .line_items
                .into_iter()
                .map(|item| proto::LineItem {
                    description: item.description,
                    quantity: item.quantity.to_string(),
                    unit_price: item.unit_price.to_string(),
                })
                .collect(),
            total: domain::amount(invoice.total),
            created_at: Some(proto::timestamp(invoice.created_at)),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvoiceNotFound => with_reason(
                Code::NotFound,
                "invoice not found",
                "INVOICE_NOT_FOUND",
                &[],
            ),
            Error::NumberConflicts { tenant, attempts } => with_reason(
                Code::Aborted,
                format!(
                    "could not number the invoice: the {attempts} numbers allocated were all taken by existing \
                     invoices; nothing was stored. Seed the counter (invoice-writer seed-counters) or retry"
                ),
                "NUMBER_CONFLICT",
                &[("tenantId", tenant), ("attempts", attempts.to_string())],
            ),
            Error::StoreTooSlow { attempts } => with_reason(
                Code::Unavailable,
                format!(
                    "could not number the invoice: the last of the {attempts} numbers allocated \
                     was taken over before the invoice was stored under it (the invoice store \
                     took longer than reconciliation waits, or another call with this request \
                     id settled it); nothing was stored, retry later"
                ),
                "STORE_TOO_SLOW",
                &[("attempts", attempts.to_string())],
            ),
            Error::RequestIdSpent {
                request_id,
                attempts,
            } => with_reason(
                Code::FailedPrecondition,
                format!(
                    "request id {request_id:?} was tried in {attempts} attempts, none of which \
                     stored an invoice; nothing was stored. Send a new request id"
                ),
                "REQUEST_ID_SPENT",
                &[
                    ("requestId", request_id),
                    ("attempts", attempts.to_string()),
                ],
            ),
            Error::Allocator(error) => from_allocator(error),
            Error::StoreUnavailable(cause) => {
                tracing::warn!(error = %chain(&cause), "invoice store unavailable");
                with_reason(
                    Code::Unavailable,
                    "the invoice store is unavailable; retry later",
                    "STORE_UNAVAILABLE",
                    &[],
                )
            }
            Error::RequestIdReused {
                request_id,
                invoice_number,
            } => with_reason(
                Code::FailedPrecondition,
                format!(
                    "request id {request_id:?} already created invoice {invoice_number} from a \
                     different request; send a new request id for a different invoice"
                ),
                "REQUEST_ID_REUSED",
                &[("requestId", request_id), ("invoiceNumber", invoice_number)],
            ),
            error @ Error::Internal(_) => internal(&error),
        }
    }
}

/// Whether an `INVALID_ARGUMENT` of the allocator's names only the date, the
/// one field the writer passes on from its caller as it was sent.
fn names_only_the_date(status: &Status) -> bool {
    status.get_details_bad_request().is_none_or(|bad| {
        bad.field_violations
            .iter()
            .all(|violation| violation.field == "date")
    })
}

/// An allocator failure as the writer's answer.
fn from_allocator(error: AllocatorError) -> Status {
    match error {
        // What the refusal says is the caller's answer all the same.
        AllocatorError::RefusedRetry(status) => from_allocator(AllocatorError::Rejected(status)),
        AllocatorError::Unavailable(cause) => with_reason(
            Code::Unavailable,
            format!(
                "the number allocator is unavailable ({cause}); nothing was stored, retry later \
                 with the same request id"
            ),
            "ALLOCATOR_UNAVAILABLE",
            &[],
        ),
        // The writer's own work (its database, slow; earlier attempts under
        // the request id, walked past) took the call's time: the allocator
        // is not to blame.
        AllocatorError::OutOfTime => with_reason(
            Code::DeadlineExceeded,
            "the call's time ran out before the number allocator could be asked for the \
             invoice's number; nothing was stored, retry with the same request id",
            "REQUEST_TIMEOUT",
            &[],
        ),
        // The allocator names the date it was given; the caller sent it
        // as the issue date. Any other field it names (the lease) is the
        // writer's own setting: below.
        AllocatorError::Rejected(status)
            if status.code() == Code::InvalidArgument && names_only_the_date(&status) =>
        {
            match status.get_details_bad_request() {
                Some(bad) => InvalidArgument(
                    bad.field_violations
                        .into_iter()
                        .map(|violation| FieldViolation {
                            field: if violation.field == "date" {
                                "issue_date".to_owned()
                            } else {
                                violation.field
                            },
                            description: violation.description,
                        })
                        .collect(),
                )
                .into(),
                None => passed_on(&status),
            }
        }
        // A refusal about the caller's invoice (its series exhausted, say),
        // or its tenant's rate, with when to retry: the caller's to act on.
        // (The allocator's own load, RESOURCE_EXHAUSTED too, is retried,
        // and ends as unavailable.)
        AllocatorError::Rejected(status)
            if matches!(
                status.code(),
                Code::FailedPrecondition
                    | Code::NotFound
                    | Code::OutOfRange
                    | Code::Aborted
                    | Code::AlreadyExists
            ) || rate_limited(&status) =>
        {
            passed_on(&status)
        }
        // The writer's own setting, past what the allocator allows: said
        // so, for the operator to mend.
        AllocatorError::Rejected(status)
            if status.code() == Code::InvalidArgument
                && status.get_details_bad_request().is_some_and(|bad| {
                    bad.field_violations
                        .iter()
                        .any(|violation| violation.field == "lease")
                }) =>
        {
            tracing::error!(
                error = %status.message(),
                "the allocator refuses this writer's --reservation-lease: set it within the \
                 allocator's --max-lease",
            );
            with_reason(Code::Internal, "internal error", "INTERNAL", &[])
        }
        // Ours to mend: the allocator broke, does not accept the writer's
        // own token, or is not what its URL names (another service's port
        // answers UNIMPLEMENTED).
        AllocatorError::Rejected(status) => internal(&AllocatorError::Rejected(status)),
    }
}

/// The allocator's refusal as the writer's answer: its code and details
/// (`SERIES_EXHAUSTED`, say) tell the caller whether a retry can help.
fn passed_on(status: &Status) -> Status {
    // The details are encoded again under the new message: a
    // `google.rpc.Status` whose message disagrees with the status' own is
    // refused by standard status tooling.
    Status::with_error_details(
        status.code(),
        format!("the number allocator refused: {}", status.message()),
        status.get_error_details(),
    )
}
