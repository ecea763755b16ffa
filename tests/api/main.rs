//! Behaviour tests: real gRPC servers on port 0, real clients, and a fresh
//! PostgreSQL database per test.

mod allocator;
mod helpers;
mod invoices;
mod server;
