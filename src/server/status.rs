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
/// raised it, which the driver appends ("at line 768"): noise to whoever
/// reads it.
#[must_use]
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = String::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let (text, source) = match error.downcast_ref::<sqlx::Error>() {
            // Its source is the database's error, whose text this is.
            Some(sqlx::Error::Database(database))
                if database
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some() =>
            {
                let text = format!("error returned from database: {}", database.message());
                (text, None)
            }
            _ => (error.to_string(), error.source()),
        };
        if chain.is_empty() {
            chain = text;
        } else if !chain.ends_with(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        next = source;
    }
    chain
}
