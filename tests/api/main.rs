//! Behaviour tests: real gRPC servers on port 0, real clients, and a fresh
//! database per test, PostgreSQL or SQLite.

// Test docs speak of status codes and RPC names as plain words.
#![allow(clippy::doc_markdown)]
// A test crate has no public API: its helpers' `pub` means "for the other
// test modules".
#![allow(unreachable_pub)]

use rstest_reuse::template;

/// Runs a test once on each backend, as `name::case_1_postgres` and
/// `name::case_2_sqlite`; the test takes `#[case] backend: Backend`. Defined
/// before the modules so that they all see it.
#[template]
#[rstest::rstest]
#[case::postgres(Backend::Postgres)]
#[case::sqlite(Backend::Sqlite)]
fn backends(#[case] backend: Backend) {}

mod access;
mod allocator;
mod audit;
mod bad_input;
mod bench;
mod connections;
mod fairness;
mod group_commit;
mod helpers;
mod invoice_retries;
mod invoices;
mod kept_connection;
mod manifests;
mod metrics;
mod numbers;
mod pg_server;
mod processes;
mod reconcile;
mod request_ids;
mod reservations;
mod series;
mod server;
mod sqlite;
mod startup;
mod tls;
mod traces;
mod upgrade;
