//! Field violations collected while turning a request into domain types, so one
//! `INVALID_ARGUMENT` names every bad field at once.

use std::fmt;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::server::status::ERROR_DOMAIN;

/// One bad field: its path in the request (`line_items[2].quantity`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request message.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// A request with one or more bad fields; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidArgument(pub Vec<FieldViolation>);

/// Most violations put in one status: its message and details travel in
/// headers, which peers cap in size (a request with 500 bad items would not fit).
const MAX_REPORTED: usize = 20;

impl fmt::Display for InvalidArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid request: ")?;
        for (i, violation) in self.0.iter().take(MAX_REPORTED).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", violation.field, violation.description)?;
        }
        if self.0.len() > MAX_REPORTED {
            write!(f, "; and {} more", self.0.len() - MAX_REPORTED)?;
        }
        Ok(())
    }
}

impl From<InvalidArgument> for Status {
    fn from(error: InvalidArgument) -> Self {
        let mut details = ErrorDetails::new();
        for violation in error.0.iter().take(MAX_REPORTED) {
            details.add_bad_request_violation(&violation.field, &violation.description);
        }
        details.set_error_info(
            "INVALID_ARGUMENT",
            ERROR_DOMAIN,
            std::collections::HashMap::new(),
        );
        Status::with_error_details(Code::InvalidArgument, error.to_string(), details)
    }
}

/// Collects violations while fields are parsed one by one.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// No violations yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the value of a successful parse; records the error of a failed one.
    pub fn check<T>(&mut self, field: impl Into<String>, parsed: Result<T, String>) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(description) => {
                self.add(field, description);
                None
            }
        }
    }

    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// `Ok` when nothing was recorded.
    ///
    /// # Errors
    /// Every recorded violation, as one [`InvalidArgument`].
    pub fn finish(self) -> Result<(), InvalidArgument> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(InvalidArgument(self.0))
        }
    }
}
