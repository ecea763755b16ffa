//! Test fixtures: fresh databases, in-process servers on port 0, clients, and
//! waits on conditions (never on time), one file per job.

use std::time::Duration;

mod apps;
mod asserts;
mod calls;
mod certs;
mod clock;
mod db;
mod logs;
mod pg_server;
mod processes;
mod proxy;
mod tcp_proxy;

pub use apps::*;
pub use asserts::*;
pub use calls::*;
pub use certs::*;
pub use clock::*;
pub use db::*;
pub use logs::*;
pub use pg_server::*;
pub use processes::*;
pub use proxy::*;
#[allow(unused_imports)] // used by the fault suite
pub use tcp_proxy::*;

/// Longest any wait on a condition may take before the test fails.
pub const PATIENCE: Duration = Duration::from_mins(1);
