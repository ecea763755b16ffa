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
/// headers, which peers cap in size (16 KiB for many clients; a request with
/// 500 bad items would not fit).
const MAX_REPORTED: usize = 20;

/// Longest description put in a status, in bytes, and longest message: a
/// description may quote the value refused, which may be as long as the
/// request (64 KiB), and a status too large for the client's headers
/// reaches it as another error altogether.
const MAX_DESCRIPTION: usize = 160;
const MAX_MESSAGE: usize = 1024;

/// `text` cut to at most `most` bytes, on a character's boundary, with `…`
/// where it was cut.
fn cut(text: &str, most: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= most {
        return text.into();
    }
    let mut end = most - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

impl fmt::Display for InvalidArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        let mut message = String::from("invalid request: ");
        for (i, violation) in self.0.iter().take(MAX_REPORTED).enumerate() {
            if i > 0 {
                message.push_str("; ");
            }
            let description = cut(&violation.description, MAX_DESCRIPTION);
            write!(message, "{}: {description}", violation.field)?;
        }
        if self.0.len() > MAX_REPORTED {
            write!(message, "; and {} more", self.0.len() - MAX_REPORTED)?;
        }
        f.write_str(&cut(&message, MAX_MESSAGE))
    }
}

impl From<InvalidArgument> for Status {
    fn from(error: InvalidArgument) -> Self {
        let mut details = ErrorDetails::new();
        for violation in error.0.iter().take(MAX_REPORTED) {
            let description = cut(&violation.description, MAX_DESCRIPTION);
            details.add_bad_request_violation(&violation.field, description);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_descriptions_are_cut_on_a_character_boundary() {
        assert_eq!(cut("short", 160), "short");
        let long = "é".repeat(1000);
        let cut = cut(&long, MAX_DESCRIPTION);
        assert!(cut.len() <= MAX_DESCRIPTION, "{}", cut.len());
        assert!(cut.ends_with("é…"), "{cut}");
    }

    #[test]
    fn a_status_quoting_long_values_stays_small() {
        let violation = FieldViolation {
            field: "period".into(),
            description: format!("{:?} is not a period", "x".repeat(60_000)),
        };
        let status = Status::from(InvalidArgument(vec![violation; 30]));
        assert!(
            status.message().len() <= MAX_MESSAGE,
            "{}",
            status.message().len()
        );
        assert!(
            status.details().len() < 8 * 1024,
            "{}",
            status.details().len()
        );
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations.len(), MAX_REPORTED);
        assert_eq!(bad.field_violations[0].field, "period");
    }
}
