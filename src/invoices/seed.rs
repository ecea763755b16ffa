//! `invoice-writer seed-counters`: raises each tenant's invoice counter in the
//! allocator to the highest number already stored, so numbering continues
//! after invoices imported from another system. Running it again changes nothing.

use crate::invoices::{
    allocator_client::AllocatorClient,
    store::{HighestNumber, InvoiceStore, StoreError},
};

/// What a seeding run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeedReport {
    /// Tenants with invoices.
    pub tenants: usize,
    /// Tenants whose counter could not be raised (logged one by one).
    pub failed: usize,
}

/// Raises every tenant's counter to its highest stored invoice number.
///
/// # Errors
/// The invoice store could not be read. A tenant the allocator refuses is
/// logged and counted in [`SeedReport::failed`], and the others still go ahead.
pub async fn seed_counters(
    store: &dyn InvoiceStore,
    allocator: &AllocatorClient,
) -> Result<SeedReport, StoreError> {
    let highest = store.highest_numbers().await?;
    let mut report = SeedReport {
        tenants: highest.len(),
        failed: 0,
    };
    for HighestNumber {
        tenant_id: tenant,
        number,
    } in highest
    {
        match allocator
            .advance(&tenant, number, "seeded from the invoices already stored")
            .await
        {
            Ok(series) => tracing::info!(
                tenant = %tenant,
                highest_invoice = number,
                counter = series.last_value,
                "counter seeded"
            ),
            Err(status) => {
                report.failed += 1;
                tracing::error!(tenant = %tenant, highest_invoice = number, error = %status, "could not seed counter");
            }
        }
    }
    Ok(report)
}
