//! The number allocator: hands out per-tenant, per-series numbers, each
//! committed durably before it is returned and never returned twice.
//!
//! - [`app`]: the service assembled from its settings, the store picked by URL.
//! - [`series`]: series names, counts, number formats: the values the rules speak of.
//! - [`allocate`]: the [`Allocator`] rules: where a number is allocated.
//! - [`audit`]: the account of a period's numbers, from its counter and ranges
//!   ([`Allocator::audit`]).
//! - [`numbers`]: single numbers and their records, read from the ranges and
//!   their state rows, and the rules of confirming, releasing and voiding them.
//! - [`reserve`]: reservations held by a lease, and the sweep of ended leases.
//! - [`batch`]: one transaction's calls planned: request ids claimed or repeated,
//!   counters moved, ranges split and recorded.
//! - [`group_commit`]: concurrent calls merged into one transaction.
//! - [`grpc`]: the `numbering.v1.NumberAllocator` handlers.
//! - [`store`]: the counter store interface; [`postgres`] and
//!   [`sqlite`]: its two implementations, chosen by the database URL, each
//!   an engine (batch statements, durable write); `sql_store`: the
//!   store written once over either engine, and the statements both share.

pub mod allocate;
pub mod app;
pub mod audit;
pub mod batch;
pub mod bounded;
mod exhausted;
pub mod group_commit;
pub mod grpc;
pub mod numbers;
pub mod postgres;
pub mod requests;
pub mod reserve;
pub mod series;
mod sql_store;
pub mod sqlite;
pub mod store;

pub use allocate::{Allocation, Allocator, CommitMode, Error, SeriesChange};
