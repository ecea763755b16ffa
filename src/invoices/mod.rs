//! The invoice writer: stores invoices in its own database, numbering each one
//! with the allocator and allocating again when a number is already taken.
//!
//! - [`app`]: the service assembled from its settings, the store picked by URL.
//! - [`domain`]: field rules, exact totals, the invoice as stored.
//! - [`writer`]: the [`InvoiceWriter`] rules: allocate, insert, retry on conflict.
//! - [`allocator_client`]: calls to the allocator, retried while it is unreachable.
//! - [`grpc`]: the `numbering.v1.InvoiceWriter` handlers.
//! - [`store`]: the invoice store interface; [`postgres`] and
//!   [`sqlite`]: its two engines (pool, stored types, durable write), chosen by
//!   the database URL; `sql_store`: the store written once over either engine, its
//!   statements and row: where an invoice is stored.
//! - [`seed`]: seeding the allocator's counters from stored invoices.

pub mod allocator_client;
pub mod app;
pub mod bounded;
pub mod domain;
pub mod grpc;
pub mod postgres;
pub mod seed;
mod sql_store;
pub mod sqlite;
pub mod store;
pub mod writer;

pub use writer::{Error, InvoiceWriter};
