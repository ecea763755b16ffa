//! Requests and calls the tests make, and waits on health.

use std::{collections::BTreeMap, sync::Arc};

use numbering::{
    invoices::{self, domain::Numbered, store::InvoiceStore},
    proto::{
        AdvanceCounterRequest, AllocateRequest, AllocateResponse, AuditSeriesRequest,
        AuditSeriesResponse, ConfigureSeriesRequest, CreateInvoiceRequest, GapPolicy,
        GetNumberRequest, GetSeriesRequest, Invoice, LineItem, ListInvoicesRequest,
        ListNumbersRequest, NumberRecord, NumberState, Series,
        invoice_writer_client::InvoiceWriterClient, number_allocator_client::NumberAllocatorClient,
    },
};
use tokio::sync::Barrier;
use tokio_stream::StreamExt;
use tonic::{Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::PATIENCE;

/// An Allocate request with no request id.
pub fn allocate(tenant: &str, series: &str, count: u32) -> AllocateRequest {
    AllocateRequest {
        tenant_id: tenant.into(),
        series: series.into(),
        count,
        ..AllocateRequest::default()
    }
}

/// An Allocate request with a request id.
pub fn keyed(tenant: &str, series: &str, count: u32, request_id: &str) -> AllocateRequest {
    AllocateRequest {
        request_id: request_id.into(),
        ..allocate(tenant, series, count)
    }
}

/// An `AdvanceCounter` of `tenant`'s default series.
pub fn advance(tenant: &str, at_least: i64, reason: &str) -> AdvanceCounterRequest {
    AdvanceCounterRequest {
        tenant_id: tenant.into(),
        at_least,
        reason: reason.into(),
        ..AdvanceCounterRequest::default()
    }
}

/// Runs `calls` Allocate calls at once, one task each, released together;
/// the answers in the order of `calls`.
pub async fn allocate_all(
    client: &NumberAllocatorClient<Channel>,
    calls: Vec<AllocateRequest>,
) -> Vec<AllocateResponse> {
    let barrier = Arc::new(Barrier::new(calls.len()));
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|request| {
            let mut client = client.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                client
                    .allocate(request)
                    .await
                    .expect("allocate")
                    .into_inner()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// Runs `calls` Allocate calls at once, one task each, released together;
/// the numbers of each, in the order of `calls`.
pub async fn allocate_concurrently(
    client: &NumberAllocatorClient<Channel>,
    calls: Vec<AllocateRequest>,
) -> Vec<Vec<i64>> {
    allocate_all(client, calls)
        .await
        .iter()
        .map(|answer| answer.numbers.iter().map(|n| n.value).collect())
        .collect()
}

/// Waits until `service`'s health is `wanted`, through the Watch stream.
pub async fn wait_for_health(channel: Channel, service: &str, wanted: ServingStatus) {
    let mut health = HealthClient::new(channel);
    let mut updates = health
        .watch(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let reached = tokio::time::timeout(PATIENCE, async {
        while let Some(update) = updates.next().await {
            if update.expect("health update").status == wanted as i32 {
                return;
            }
        }
        panic!("health stream ended before {service:?} was {wanted:?}");
    })
    .await;
    assert!(
        reached.is_ok(),
        "{service:?} did not become {wanted:?} within {PATIENCE:?}"
    );
}

/// A valid create request for `tenant`.
pub fn invoice_request(tenant: &str) -> CreateInvoiceRequest {
    CreateInvoiceRequest {
        tenant_id: tenant.into(),
        client_id: "c-42".into(),
        client_name: "Globex Corporation".into(),
        client_email: "billing@globex.example".into(),
        client_phone: "+1 555 0100".into(),
        client_address: "1 Main Street, Springfield".into(),
        due_date: "2026-12-31".into(),
        notes: "Thank you".into(),
        currency: "EUR".into(),
        line_items: vec![
            LineItem {
                description: "Consulting".into(),
                quantity: "1.5".into(),
                unit_price: "100.00".into(),
            },
            LineItem {
                description: "Travel".into(),
                quantity: "1".into(),
                unit_price: "0.1".into(),
            },
        ],
        ..CreateInvoiceRequest::default()
    }
}

/// Stores an invoice directly, as an import from another system would.
pub async fn import_invoice(
    store: &Arc<dyn InvoiceStore>,
    tenant: &str,
    number: i64,
    invoice_number: &str,
) -> uuid::Uuid {
    import_invoice_in(store, tenant, "", number, invoice_number).await
}

/// [`import_invoice`] in `period`.
pub async fn import_invoice_in(
    store: &Arc<dyn InvoiceStore>,
    tenant: &str,
    period: &str,
    number: i64,
    invoice_number: &str,
) -> uuid::Uuid {
    let new = invoices::grpc::parse_new_invoice(&invoice_request(tenant))
        .unwrap()
        .0;
    let today = chrono::Utc::now();
    let number = Numbered {
        value: number,
        formatted: invoice_number.into(),
        period: period.into(),
        date: today.date_naive(),
    };
    let invoice = new.numbered(number, uuid::Uuid::now_v7(), today);
    store
        .insert(&invoice, None, None)
        .await
        .expect("import invoice");
    invoice.id
}

/// The tenant's invoice series in the allocator.
pub async fn invoice_series(
    client: &mut NumberAllocatorClient<Channel>,
    tenant: &str,
) -> Result<Series, Status> {
    let response = client
        .get_series(GetSeriesRequest {
            tenant_id: tenant.into(),
            ..GetSeriesRequest::default()
        })
        .await?;
    Ok(response
        .into_inner()
        .series
        .expect("a series in the response"))
}

/// Creates the standard invoice for `tenant`, expecting success.
pub async fn create(client: &mut InvoiceWriterClient<Channel>, tenant: &str) -> Invoice {
    client
        .create_invoice(invoice_request(tenant))
        .await
        .expect("create invoice")
        .into_inner()
        .invoice
        .expect("an invoice in the response")
}

/// Every invoice of a tenant, through ListInvoices.
pub async fn list_all(client: &mut InvoiceWriterClient<Channel>, tenant: &str) -> Vec<Invoice> {
    list_in_pages(client, tenant, 0).await
}

/// Lists every invoice of a tenant, `page_size` at a time (0: the server's
/// default), each page's token taking the next page on.
pub async fn list_in_pages(
    client: &mut InvoiceWriterClient<Channel>,
    tenant: &str,
    page_size: i32,
) -> Vec<Invoice> {
    let mut invoices = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_invoices(ListInvoicesRequest {
                tenant_id: tenant.into(),
                page_size,
                page_token,
            })
            .await
            .expect("list invoices")
            .into_inner();
        invoices.extend(page.invoices);
        if page.next_page_token.is_empty() {
            return invoices;
        }
        page_token = page.next_page_token;
    }
}

/// Asserts the audit of `period` of each tenant's invoice series is clean
/// (nothing unaccounted, reserved or given back) and that the number of each
/// invoice, all of that period, is confirmed with the invoice's id.
pub async fn assert_confirmed_with_ids(
    allocator: &mut NumberAllocatorClient<Channel>,
    period: &str,
    invoices: &[Invoice],
) {
    let mut by_period: BTreeMap<(String, String), Vec<(i64, String)>> = BTreeMap::new();
    for invoice in invoices {
        let key = (invoice.tenant_id.clone(), period.to_owned());
        let number = invoice.number;
        by_period
            .entry(key)
            .or_default()
            .push((number, invoice.id.clone()));
    }
    for ((tenant, period), mut expected) in by_period {
        let audit = allocator
            .audit_series(AuditSeriesRequest {
                tenant_id: tenant.clone(),
                series: String::new(),
                period: period.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (audit.unaccounted, audit.reserved, audit.released),
            (0, 0, 0),
            "{tenant}/{period}: {audit:?}"
        );
        let mut confirmed = Vec::new();
        let mut token = String::new();
        loop {
            let page = allocator
                .list_numbers(ListNumbersRequest {
                    tenant_id: tenant.clone(),
                    period: period.clone(),
                    state: NumberState::Confirmed.into(),
                    page_size: 1000,
                    page_token: token,
                    ..ListNumbersRequest::default()
                })
                .await
                .unwrap()
                .into_inner();
            confirmed.extend(page.records.into_iter().map(|r| (r.number, r.reference)));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        expected.sort();
        assert_eq!(
            confirmed, expected,
            "{tenant}/{period}: confirmed with their ids"
        );
    }
}

/// Sets the gap policy of acme's invoice series.
pub async fn set_acme_gap_policy(
    allocator: &mut NumberAllocatorClient<Channel>,
    policy: GapPolicy,
) {
    let request = ConfigureSeriesRequest {
        tenant_id: "acme".into(),
        gap_policy: policy.into(),
        ..ConfigureSeriesRequest::default()
    };
    allocator.configure_series(request).await.unwrap();
}

/// Number `number` of acme's invoice series, as its record stands.
pub async fn acme_number(
    allocator: &mut NumberAllocatorClient<Channel>,
    number: i64,
) -> NumberRecord {
    acme_number_in(allocator, "", number).await
}

/// Number `number` of `period` of acme's invoice series, as its record
/// stands.
pub async fn acme_number_in(
    allocator: &mut NumberAllocatorClient<Channel>,
    period: &str,
    number: i64,
) -> NumberRecord {
    let request = GetNumberRequest {
        tenant_id: "acme".into(),
        period: period.into(),
        number,
        ..GetNumberRequest::default()
    };
    let answer = allocator.get_number(request).await.unwrap().into_inner();
    answer.record.unwrap()
}

/// The audit of acme's invoice series.
pub async fn audit_acme(allocator: &mut NumberAllocatorClient<Channel>) -> AuditSeriesResponse {
    let request = AuditSeriesRequest {
        tenant_id: "acme".into(),
        ..AuditSeriesRequest::default()
    };
    allocator.audit_series(request).await.unwrap().into_inner()
}
