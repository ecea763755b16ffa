//! Load generation for `numbering-bench`: drives a `NumberAllocator` (or an
//! `InvoiceWriter`) over gRPC with concurrent clients, measures throughput and
//! latency, and keeps every acknowledged range for [`verify`](mod@verify).

pub mod plot;
pub mod processor;
pub mod report;
pub mod spawn;
pub mod verify;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    bench::{
        processor::ProcessorTime,
        verify::{Ack, Verification, verify},
    },
    proto::{
        AllocateRequest, ConfigureSeriesRequest, ConfirmRequest, CreateInvoiceRequest, GapPolicy,
        LineItem, ReserveRequest, invoice_writer_client::InvoiceWriterClient,
        number_allocator_client::NumberAllocatorClient,
    },
};

/// Which call the clients make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `Allocate`.
    Allocate,
    /// `Reserve` of one number, then `Confirm` of it: one pair, two calls.
    ReserveConfirm,
    /// `CreateInvoice` on an invoice writer: one invoice of one line.
    CreateInvoice,
    /// `grpc.health.v1.Health/Check`: a no-op through the same stack, the
    /// ceiling any allocation can reach.
    Health,
}

/// The load to apply.
#[derive(Debug, Clone)]
pub struct Load {
    /// Concurrent clients, each with one call in flight at a time.
    pub clients: usize,
    /// HTTP/2 connections the clients share.
    pub connections: usize,
    /// How long to drive.
    pub duration: Duration,
    /// Tenants called, uniformly at random; 1 is one hot tenant.
    pub tenants: u32,
    /// Numbers per `Allocate`.
    pub count: u32,
    /// The call made.
    pub call: Call,
    /// Prefix of the tenant ids, so each run uses fresh series.
    pub tenant_prefix: String,
    /// Call each tenant exactly once, in order, instead of at random; the run
    /// ends when all were called (or at `duration`).
    pub each_tenant_once: bool,
    /// Send every `Allocate`, `Reserve` and `CreateInvoice` with a fresh
    /// request id.
    pub keyed: bool,
    /// Configure each tenant's series to reissue the numbers given back
    /// before the run: each one-number `Allocate` or `Reserve` then looks for
    /// one to take first.
    pub reissue: bool,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// A connection could not be opened.
    #[error("opening a connection: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// A tenant's series could not be configured before the run.
    #[error("configuring the series of {tenant}: {status}")]
    Configure {
        /// The tenant.
        tenant: String,
        /// The allocator's answer.
        status: tonic::Status,
    },
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    /// Wall time from the first call to the last answer.
    pub elapsed: Duration,
    /// Calls answered OK.
    pub ok: u64,
    /// Failed calls by status code.
    pub errors: BTreeMap<String, u64>,
    /// Latency of OK calls, in microseconds.
    pub latency: Histogram<u64>,
    /// Every acknowledged range.
    pub acks: Vec<Ack>,
    /// Processor time over the run, by party, where the caller sampled it
    /// around the run (unknown otherwise).
    pub processor: ProcessorTime,
}

impl Report {
    /// OK calls per second.
    #[must_use]
    pub fn throughput(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let ok = self.ok as f64;
        ok / self.elapsed.as_secs_f64()
    }

    /// Latency at quantile `q` (0.5, 0.99, …).
    #[must_use]
    pub fn latency(&self, q: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(q))
    }

    /// Failed calls in all.
    #[must_use]
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Whether some call was made and every one answered OK: what a no-op
    /// ceiling must show to measure anything (a failed call lowers it, and
    /// raises every share taken of it).
    #[must_use]
    pub fn every_call_ok(&self) -> bool {
        self.ok > 0 && self.failed() == 0
    }

    /// Checks every acknowledged number of a run on fresh series: no
    /// duplicate, no malformed answer, and each series exactly `1..=N` when no
    /// call failed.
    #[must_use]
    pub fn verification(&self) -> Verification {
        Verification {
            malformed: self.errors.get(MALFORMED).copied().unwrap_or(0),
            ..verify(&self.acks, self.failed() == 0)
        }
    }
}

struct ClientResult {
    ok: u64,
    errors: BTreeMap<String, u64>,
    latency: Histogram<u64>,
    acks: Vec<Ack>,
}

/// Drives the allocator at `url` with `load`.
///
/// # Errors
/// A connection could not be opened, or a series configured.
///
/// # Panics
/// `load` has no client, connection or tenant, or a client task panicked.
pub async fn drive(url: &str, load: &Load) -> Result<Report, DriveError> {
    drive_all(&[url.to_owned()], load).await
}

/// Drives the allocators at `urls` (replicas on one database) with `load`,
/// its connections spread over them in turn (at least one each).
///
/// # Errors
/// A connection could not be opened, or a series configured.
///
/// # Panics
/// `urls` is empty, `load` has no client, connection or tenant, or a client
/// task panicked.
pub async fn drive_all(urls: &[String], load: &Load) -> Result<Report, DriveError> {
    assert!(!urls.is_empty(), "no allocator to drive");
    assert!(
        load.clients > 0 && load.connections > 0 && load.tenants > 0,
        "a load of no client, connection or tenant: {load:?}"
    );
    let mut channels = Vec::new();
    for i in 0..load.connections.max(urls.len()) {
        // Each connect() opens a connection of its own.
        let url = &urls[i % urls.len()];
        channels.push(Endpoint::from_shared(url.clone())?.connect().await?);
    }
    if load.reissue {
        reissue_given_back(channels[0].clone(), load).await?;
    }
    let started = Instant::now();
    let deadline = started + load.duration;
    let cursor = Arc::new(AtomicU32::new(0));
    let clients: Vec<_> = (0..load.clients)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            tokio::spawn(client(channel, load.clone(), deadline, cursor.clone()))
        })
        .collect();
    let mut report = Report {
        elapsed: Duration::ZERO,
        ok: 0,
        errors: BTreeMap::new(),
        latency: new_histogram(),
        acks: Vec::new(),
        processor: ProcessorTime::default(),
    };
    for client in clients {
        let result = client.await.expect("client task");
        report.ok += result.ok;
        for (code, n) in result.errors {
            *report.errors.entry(code).or_default() += n;
        }
        report
            .latency
            .add(&result.latency)
            .expect("histograms of one shape");
        report.acks.extend(result.acks);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Answers that were not as many consecutive numbers as asked.
pub const MALFORMED: &str = "MALFORMED";

/// Keeps an answer for the verifier; whether it was well formed. A
/// well-formed answer (as many consecutive numbers as asked) is kept as one
/// range; any other is counted as `MALFORMED` (and only so: not as a call
/// answered OK) and kept number by number, so its duplicates still show.
fn record(result: &mut ClientResult, series: u32, asked: u32, numbers: &[i64]) -> bool {
    let consecutive = numbers
        .windows(2)
        .all(|pair| pair[0].checked_add(1) == Some(pair[1]));
    match numbers.first() {
        Some(&first) if consecutive && numbers.len() == asked as usize => {
            result.acks.push(Ack {
                series,
                first,
                count: asked,
            });
            true
        }
        _ => {
            *result.errors.entry(MALFORMED.into()).or_default() += 1;
            result.acks.extend(numbers.iter().map(|&first| Ack {
                series,
                first,
                count: 1,
            }));
            false
        }
    }
}

/// Microseconds from 1 µs to an hour, at 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds and precision")
}

async fn client(
    channel: Channel,
    load: Load,
    deadline: Instant,
    cursor: Arc<AtomicU32>,
) -> ClientResult {
    let mut allocator = NumberAllocatorClient::new(channel.clone());
    let mut writer = InvoiceWriterClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let mut result = ClientResult {
        ok: 0,
        errors: BTreeMap::new(),
        latency: new_histogram(),
        acks: Vec::new(),
    };
    let mut rng = fastrand::Rng::new();
    while Instant::now() < deadline {
        let series = if load.each_tenant_once {
            let next = cursor.fetch_add(1, Ordering::Relaxed);
            if next >= load.tenants {
                break;
            }
            next
        } else {
            rng.u32(0..load.tenants)
        };
        let started = Instant::now();
        let tenant_id = format!("{}-{series}", load.tenant_prefix);
        let outcome = match load.call {
            Call::Allocate => allocator
                .allocate(AllocateRequest {
                    tenant_id,
                    series: String::new(),
                    count: load.count,
                    request_id: if load.keyed {
                        uuid::Uuid::now_v7().to_string()
                    } else {
                        String::new()
                    },
                    date: String::new(),
                })
                .await
                .map(|response| {
                    Some(
                        response
                            .into_inner()
                            .numbers
                            .iter()
                            .map(|n| n.value)
                            .collect::<Vec<_>>(),
                    )
                }),
            Call::ReserveConfirm => reserve_confirm(&mut allocator, tenant_id, load.keyed)
                .await
                .map(|number| Some(vec![number])),
            Call::CreateInvoice => writer
                .create_invoice(invoice(tenant_id, load.keyed))
                .await
                .and_then(|response| {
                    let invoice = response
                        .into_inner()
                        .invoice
                        .ok_or_else(|| tonic::Status::internal("no invoice"))?;
                    Ok(Some(vec![invoice.number]))
                }),
            Call::Health => health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|_| None),
        };
        match outcome {
            Ok(numbers) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                // Only `Allocate` asks for more than one number.
                let asked = match load.call {
                    Call::Allocate => load.count,
                    _ => 1,
                };
                if numbers.is_none_or(|numbers| record(&mut result, series, asked, &numbers)) {
                    result.latency.saturating_record(micros.max(1));
                    result.ok += 1;
                }
            }
            Err(status) => {
                *result
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
            }
        }
    }
    result
}

/// An invoice of one line for `tenant_id`, with a fresh request id if `keyed`.
fn invoice(tenant_id: String, keyed: bool) -> CreateInvoiceRequest {
    CreateInvoiceRequest {
        tenant_id,
        client_id: "c-42".into(),
        client_name: "Globex Corporation".into(),
        client_email: "billing@globex.example".into(),
        due_date: "2026-12-31".into(),
        currency: "EUR".into(),
        line_items: vec![LineItem {
            description: "Consulting".into(),
            quantity: "1.5".into(),
            unit_price: "100.00".into(),
        }],
        request_id: if keyed {
            uuid::Uuid::now_v7().to_string()
        } else {
            String::new()
        },
        ..CreateInvoiceRequest::default()
    }
}

/// Configures the series of every tenant of `load` to reissue the numbers
/// given back.
async fn reissue_given_back(channel: Channel, load: &Load) -> Result<(), DriveError> {
    let mut allocator = NumberAllocatorClient::new(channel);
    for series in 0..load.tenants {
        let tenant = format!("{}-{series}", load.tenant_prefix);
        let request = ConfigureSeriesRequest {
            tenant_id: tenant.clone(),
            gap_policy: GapPolicy::Reissue.into(),
            ..ConfigureSeriesRequest::default()
        };
        if let Err(status) = allocator.configure_series(request).await {
            return Err(DriveError::Configure { tenant, status });
        }
    }
    Ok(())
}

/// Reserves one number of the tenant's series and confirms it; the number.
async fn reserve_confirm(
    allocator: &mut NumberAllocatorClient<Channel>,
    tenant_id: String,
    keyed: bool,
) -> Result<i64, tonic::Status> {
    let reserved = allocator
        .reserve(ReserveRequest {
            tenant_id: tenant_id.clone(),
            request_id: if keyed {
                uuid::Uuid::now_v7().to_string()
            } else {
                String::new()
            },
            ..ReserveRequest::default()
        })
        .await?
        .into_inner()
        .record
        .ok_or_else(|| tonic::Status::internal("no record"))?;
    allocator
        .confirm(ConfirmRequest {
            tenant_id,
            series: reserved.series,
            period: reserved.period,
            number: reserved.number,
            reference: format!("bench-{}", reserved.number),
            request_id: reserved.request_id,
        })
        .await?;
    Ok(reserved.number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> ClientResult {
        ClientResult {
            ok: 0,
            errors: BTreeMap::new(),
            latency: new_histogram(),
            acks: Vec::new(),
        }
    }

    fn report(ok: u64, errors: &[(&str, u64)]) -> Report {
        Report {
            elapsed: Duration::from_secs(1),
            ok,
            errors: errors
                .iter()
                .map(|&(code, n)| (code.to_owned(), n))
                .collect(),
            latency: new_histogram(),
            acks: Vec::new(),
            processor: ProcessorTime::default(),
        }
    }

    #[test]
    fn a_ceiling_counts_only_when_some_call_was_made_and_none_failed() {
        assert!(report(10, &[]).every_call_ok());
        assert!(!report(0, &[]).every_call_ok());
        assert!(!report(10, &[("Unavailable", 1)]).every_call_ok());
        assert!(!report(0, &[("Unimplemented", 5)]).every_call_ok());
    }

    #[test]
    fn well_formed_answers_are_kept_as_ranges() {
        let mut result = empty();
        record(&mut result, 0, 3, &[4, 5, 6]);
        assert_eq!(
            result.acks,
            [Ack {
                series: 0,
                first: 4,
                count: 3
            }]
        );
        assert!(result.errors.is_empty());
    }

    #[test]
    fn malformed_answers_are_counted_and_their_duplicates_caught() {
        let mut result = empty();
        record(&mut result, 0, 3, &[1, 2, 3]);
        record(&mut result, 0, 3, &[5, 5, 6]);
        record(&mut result, 0, 3, &[7, 8]);
        assert_eq!(result.errors.get(MALFORMED), Some(&2));
        let verification = verify(&result.acks, false);
        assert_eq!(verification.duplicates, [(0, 5)]);
    }
}
