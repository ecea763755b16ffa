//! The number allocator: hands out per-tenant, per-series numbers, each
//! committed durably before it is returned and never returned twice.
//!
//! - [`domain`]: series names, counts, number formats and the [`Allocator`] rules.
//! - [`group_commit`]: concurrent calls of one series merged into one transaction.
//! - [`grpc`]: the `numbering.v1.NumberAllocator` handlers.
//! - [`store`]: the counter store interface; [`postgres`] and
//!   [`sqlite`]: its two implementations, chosen by the database URL.

pub mod domain;
pub mod group_commit;
pub mod grpc;
pub mod postgres;
pub mod sqlite;
pub mod store;

pub use domain::{Allocator, CommitMode, Error};
