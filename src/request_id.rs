//! The request id a caller may send with a call, the key of idempotent retries.

use std::fmt;

use crate::tenant::check_key;

/// 1–128 characters of `A–Z a–z 0–9 . _ : -` (a UUID fits), scoped to the
/// tenant of the call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// Longest accepted request id, in characters.
    pub const MAX_LEN: usize = 128;

    /// Validates a request id; empty means none was sent.
    ///
    /// # Errors
    /// A description of what is wrong, for a field violation.
    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        if raw.is_empty() {
            return Ok(None);
        }
        check_key(raw, Self::MAX_LEN)?;
        Ok(Some(Self(raw.to_owned())))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_optional_keys() {
        assert_eq!(RequestId::parse("").unwrap(), None);
        let uuid = "0190b2c4-7d1e-7c3a-9f00-1234567890ab";
        assert_eq!(RequestId::parse(uuid).unwrap().unwrap().as_str(), uuid);
        assert!(RequestId::parse(&"r".repeat(128)).unwrap().is_some());
        for bad in [
            "r".repeat(129),
            "two words".into(),
            "é".into(),
            "a/b".into(),
        ] {
            assert!(RequestId::parse(&bad).is_err(), "{bad:?} accepted");
        }
    }
}
