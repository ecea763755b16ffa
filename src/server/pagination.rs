//! Page sizes and opaque page tokens (AIP-158) for the List calls.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::page::Page;

/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Larger requested sizes are lowered to this.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Reads a requested page size: 0 means the default, larger than the maximum
/// means the maximum.
///
/// # Errors
/// A negative size.
pub fn page_size(requested: i32) -> Result<u32, String> {
    match u32::try_from(requested) {
        Err(_) => Err("must not be negative".into()),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) => Ok(size.min(MAX_PAGE_SIZE)),
    }
}

/// The token of the page after `page`, from its last item's key; empty when
/// nothing follows.
pub fn next_token<T>(page: &Page<T>, key: impl Fn(&T) -> String) -> String {
    match page.items.last() {
        Some(last) if page.more => encode_token(&key(last)),
        _ => String::new(),
    }
}

/// Wraps the key of the last item of a page into a token.
#[must_use]
pub fn encode_token(last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{last_key}"))
}

/// Reads a token back into the key of the last item seen; `None` for the first page.
///
/// # Errors
/// A token this server did not issue.
pub fn decode_token(token: &str) -> Result<Option<String>, String> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("v1:").map(str::to_owned))
        .map(Some)
        .ok_or_else(|| "is not a page token from this service".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(7), Ok(7));
        assert_eq!(page_size(5000), Ok(MAX_PAGE_SIZE));
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn tokens_round_trip_and_reject_foreign_text() {
        assert_eq!(decode_token(&encode_token("abc")), Ok(Some("abc".into())));
        assert_eq!(decode_token(""), Ok(None));
        assert!(decode_token("not a token").is_err());
        assert!(decode_token(&URL_SAFE_NO_PAD.encode("abc")).is_err());
    }
}
