//! `invoice-writer seed-counters`: raises each tenant's invoice counters in
//! the allocator to the highest numbers already stored, so numbering
//! continues after invoices imported from another system. A series that
//! resets is seeded period by period, from the invoices' issue dates.
//! Running it again changes nothing.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use tonic::{Code, Status};

use crate::{
    calendar::Reset,
    invoices::{
        allocator_client::AllocatorClient,
        store::{HighestNumber, InvoiceStore, StoreError},
    },
    proto,
};

/// What a seeding run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeedReport {
    /// Tenants with invoices.
    pub tenants: usize,
    /// Tenants whose counters could not all be raised (logged one by one).
    pub failed: usize,
    /// Tenants without a series before (none configured, no number
    /// handed out), now seeded as one that never resets, which cannot be
    /// made to reset any more (each logged as a warning).
    pub unconfigured: usize,
}

/// Raises every tenant's counters to their highest stored invoice numbers.
///
/// # Errors
/// The invoice store could not be read. A tenant the allocator refuses is
/// logged and counted in [`SeedReport::failed`], and the others still go ahead.
pub async fn seed_counters(
    store: &dyn InvoiceStore,
    allocator: &AllocatorClient,
) -> Result<SeedReport, StoreError> {
    let mut by_tenant: BTreeMap<String, Vec<(NaiveDate, i64)>> = BTreeMap::new();
    for HighestNumber {
        tenant_id,
        issue_date,
        number,
    } in store.highest_numbers().await?
    {
        by_tenant
            .entry(tenant_id)
            .or_default()
            .push((issue_date, number));
    }
    let mut report = SeedReport {
        tenants: by_tenant.len(),
        ..SeedReport::default()
    };
    for (tenant, highest) in by_tenant {
        match seed_tenant(allocator, &tenant, &highest).await {
            Ok(Seeded::Existing) => {}
            Ok(Seeded::Made) => {
                report.unconfigured += 1;
                tracing::warn!(
                    tenant = %tenant,
                    "the series was not configured: seeded as one that never resets, which \
                     cannot be made to reset now that it holds numbers (configure a series \
                     that resets before seeding it)",
                );
            }
            Err(refusals) => {
                report.failed += 1;
                for status in refusals {
                    tracing::error!(tenant = %tenant, error = %status, "could not seed counters");
                }
            }
        }
    }
    Ok(report)
}

/// Whether a seeded series was there before (configured, or made by a
/// call), or seeding made it with the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seeded {
    Existing,
    Made,
}

/// Raises each period's counter of one tenant to the highest number issued
/// in it, given the highest number of each issue date. A period the
/// allocator refuses does not stop those after it, unless the refusal
/// would be every period's: the allocator unreachable, out of time or
/// busy, or the writer's token refused.
///
/// # Errors
/// Why each period tried was refused, or why none could be tried.
async fn seed_tenant(
    allocator: &AllocatorClient,
    tenant: &str,
    highest: &[(NaiveDate, i64)],
) -> Result<Seeded, Vec<Status>> {
    // The series' reset says which dates share a counter; a series not yet
    // used will be created never resetting.
    let (reset, seeded) = match allocator.series(tenant).await {
        Ok(Some(series)) => (
            reset_of(series.reset).map_err(|s| vec![s])?,
            Seeded::Existing,
        ),
        Ok(None) => (Reset::Never, Seeded::Made),
        Err(status) => return Err(vec![status]),
    };
    // Per period: its highest number, and a date in it to name it by.
    let mut periods: BTreeMap<String, (NaiveDate, i64)> = BTreeMap::new();
    for &(date, number) in highest {
        let period = periods.entry(reset.period(date)).or_insert((date, number));
        *period = (period.0.max(date), period.1.max(number));
    }
    let mut refusals = Vec::new();
    for (period, (date, number)) in periods {
        // A date names the period; a series that never resets has one
        // period, which the allocator's today names as well as any date
        // (an invoice dated past the dates it takes among them).
        let on = match reset {
            Reset::Never => String::new(),
            _ => date.to_string(),
        };
        let advanced = allocator
            .advance(
                tenant,
                number,
                "seeded from the invoices already stored",
                &on,
            )
            .await
            .map_err(|status| {
                let which = match reset {
                    Reset::Never => "the series".to_owned(),
                    _ => format!("period {period}"),
                };
                // The allocator's details (its reason) kept.
                Status::with_details(
                    status.code(),
                    format!(
                        "{which} (its invoices dated up to {date}, numbered up to {number}): {}",
                        status.message()
                    ),
                    status.details().to_vec().into(),
                )
            });
        let series = match advanced {
            Ok(series) => series,
            Err(refused) => {
                let every_periods = matches!(
                    refused.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::ResourceExhausted
                        | Code::Unauthenticated
                        | Code::PermissionDenied
                );
                refusals.push(refused);
                if every_periods {
                    break;
                }
                continue;
            }
        };
        tracing::info!(
            tenant = %tenant,
            period = %period,
            highest_invoice = number,
            counter = series.last_value,
            "counter at or above the highest invoice (raised if it was below)"
        );
    }
    if refusals.is_empty() {
        Ok(seeded)
    } else {
        Err(refusals)
    }
}

/// The reset a series reports.
fn reset_of(raw: i32) -> Result<Reset, Status> {
    match proto::Reset::try_from(raw) {
        Ok(proto::Reset::Yearly) => Ok(Reset::Yearly),
        Ok(proto::Reset::Monthly) => Ok(Reset::Monthly),
        Ok(proto::Reset::Daily) => Ok(Reset::Daily),
        Ok(proto::Reset::Never | proto::Reset::Unspecified) => Ok(Reset::Never),
        Err(_) => Err(Status::internal(format!(
            "the allocator answered an unknown reset {raw}"
        ))),
    }
}
