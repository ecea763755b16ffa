//! The fault suite: faults injected under load, each checked by
//! [`checker`]: no acknowledged number handed out twice, none missing
//! afterwards, recovery by itself, with the figures printed per fault
//! (`cargo test --test faults -- --nocapture`).

// Test docs speak of status codes and RPC names as plain words.
#![allow(clippy::doc_markdown)]
#![allow(unreachable_pub)]

use rstest_reuse::template;

/// Runs a test once on each backend, as in the behaviour suite.
#[template]
#[rstest::rstest]
#[case::postgres(Backend::Postgres)]
#[case::sqlite(Backend::Sqlite)]
fn backends(#[case] backend: Backend) {}

mod checker;
mod database;
// Shared with the behaviour suite, of which this target uses a part.
#[allow(dead_code, unused_imports)]
#[path = "../api/helpers/mod.rs"]
mod helpers;
mod kills;
mod processes;
mod writer;
