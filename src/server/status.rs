//! Rich gRPC statuses: every error carries a `google.rpc.ErrorInfo` with an
//! `UPPER_SNAKE` reason (AIP-193); bad input also carries a `google.rpc.BadRequest`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every error this project returns.
pub const ERROR_DOMAIN: &str = "numbering";

/// A status whose details hold an `ErrorInfo` with `reason` and `metadata`.
#[must_use]
pub fn with_reason(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    metadata: &[(&str, String)],
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .collect();
    let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

/// Logs `error` once with its cause chain and answers an opaque INTERNAL.
#[must_use]
pub fn internal(error: &(dyn std::error::Error + 'static)) -> Status {
    tracing::error!(error = %chain(error), "internal error");
    with_reason(Code::Internal, "internal error", "INTERNAL", &[])
}

/// `error` and its causes, joined by ": ", for one log line. A cause whose
/// text its error already ends with (drivers often repeat it) is not repeated.
/// A PostgreSQL error reads without the line of PostgreSQL's own source that
/// raised it, which the driver appends ("at line 768"), wherever it is
/// repeated: noise to whoever reads it.
#[must_use]
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = error.to_string();
    let mut noise = source_line(error);
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !chain.ends_with(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        noise = noise.or_else(|| source_line(cause));
        source = cause.source();
    }
    match noise {
        Some(noise) => chain.replace(&noise, ""),
        None => chain,
    }
}

/// What the driver appends to a PostgreSQL error's text: " at line N".
fn source_line(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let sqlx::Error::Database(database) = error.downcast_ref::<sqlx::Error>()? else {
        return None;
    };
    let line = database
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?
        .line()?;
    Some(format!(" at line {line}"))
}
