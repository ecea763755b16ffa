//! The tenant id both services key everything by.

use std::fmt;

/// 1–128 characters of `A–Z a–z 0–9 . _ : -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Longest accepted tenant id, in characters.
    pub const MAX_LEN: usize = 128;

    /// Validates a tenant id.
    ///
    /// # Errors
    /// A description of what is wrong, for a field violation.
    pub fn parse(raw: &str) -> Result<Self, String> {
        check_key(raw, Self::MAX_LEN)?;
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The rule of every client-chosen key, tenant ids and request ids alike:
/// 1 to `max` characters of `A–Z a–z 0–9 . _ : -`, so a UUID fits and a key
/// prints, logs and sorts the same everywhere.
pub(crate) fn check_key(raw: &str, max: usize) -> Result<(), String> {
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    if raw.len() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if !raw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    {
        return Err("may contain only A-Z a-z 0-9 . _ : -".into());
    }
    Ok(())
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        assert!(TenantId::parse("Acme.EU_1:prod-2").is_ok());
        assert!(TenantId::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse(&"a".repeat(129)).is_err());
        for bad in ["a b", "a/b", "é", "a\n", "a*"] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
