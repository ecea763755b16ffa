//! Behaviour tests: real gRPC servers on port 0, real clients, and a fresh
//! PostgreSQL database per test.

// Test docs speak of status codes and RPC names as plain words.
#![allow(clippy::doc_markdown)]

mod allocator;
mod group_commit;
mod helpers;
mod invoices;
mod server;
