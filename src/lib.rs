//! Per-tenant, per-series number allocation over gRPC, and an invoice writer
//! that numbers its invoices with it.
//!
//! - [`allocator`]: the `numbering.v1.NumberAllocator` service and its counter store.
//! - [`invoices`]: the `numbering.v1.InvoiceWriter` service, its invoice store and
//!   its client of the allocator.
//! - [`bench`](mod@bench): the load generator and verifier behind `numbering-bench`.
//! - [`server`]: plumbing both services share: configuration, telemetry, health,
//!   reflection, per-call limits, start-up errors, shutdown, and the gRPC edge
//!   (rich statuses, field validation, page tokens).
//! - [`access`]: bearer tokens and their grants, and settings files read again
//!   when they change; [`tls`]: TLS for both servers and the writer's channel.
//! - [`db`]: opening and checking either database, and classifying its errors;
//!   [`group`]: group commit, the queue and task both services' writes share.
//! - [`tenant`], [`request_id`], [`page`](mod@page), [`clock`], [`calendar`]: the
//!   tenant id, the request id, the page of a listing, the clock and the calendar
//!   day both services speak of.

pub mod access;
pub mod allocator;
pub mod bench;
pub mod calendar;
pub mod clock;
pub mod codec;
pub mod db;
pub mod group;
pub mod invoices;
pub mod page;
pub mod proto;
pub mod request_id;
pub mod server;
pub mod tenant;
pub mod text;
pub mod tls;
