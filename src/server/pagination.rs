//! Page sizes and opaque page tokens (AIP-158) for the List calls. A token
//! holds the key the page ended with and which listing it was given for, so
//! that it is taken back only by the same listing with the same fields.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

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

/// The page of a listing asked for, checked.
#[derive(Debug)]
pub struct PageAsked<K> {
    /// The page's size asked for; zero: the default.
    pub size: u32,
    /// The key the last page ended with.
    pub after: Option<K>,
    /// The listing its tokens are for.
    pub listing: Listing,
}

/// What a page token is given for: a List method and the fields of its
/// request that choose the items (all but the page's size and token). As
/// AIP-158 asks, a token sent with another method or other fields is
/// refused, not read as a place in a listing it does not belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listing([u8; 8]);

/// The length of a [`Listing`] written in a token, in hex digits.
const LISTING_DIGITS: usize = 16;

impl Listing {
    /// The listing of `method` with `fields` as the request has them.
    #[must_use]
    pub fn of(method: &str, fields: &[&str]) -> Self {
        let mut digest = Sha256::new();
        for part in std::iter::once(method).chain(fields.iter().copied()) {
            // Each part's length first: no two lists of parts read alike
            // (in eight bytes, whatever the machine's word).
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part.as_bytes());
        }
        let mut listing = [0; 8];
        listing.copy_from_slice(&digest.finalize()[..8]);
        Self(listing)
    }

    /// The token of the page after `page`, from its last item's key; empty
    /// when nothing follows.
    pub fn next_token<T>(self, page: &Page<T>, key: impl Fn(&T) -> String) -> String {
        match page.items.last() {
            Some(last) if page.more => self.token(&key(last)),
            _ => String::new(),
        }
    }

    /// A token of this listing carrying the key of the last item of a page.
    #[must_use]
    pub fn token(self, last_key: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!("v2:{}:{last_key}", hex::encode(self.0)))
    }

    /// Reads a token of this listing back into the key of the last item
    /// seen; `None` for the first page.
    ///
    /// # Errors
    /// A token this service did not give, or gave for another listing.
    pub fn read(self, token: &str) -> Result<Option<String>, String> {
        if token.is_empty() {
            return Ok(None);
        }
        let text = URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        if text.as_deref().is_some_and(|text| text.starts_with("v1:")) {
            return Err(
                "was given by an earlier version of this service, for no listing in \
                        particular: leave it out to start again from the first page"
                    .into(),
            );
        }
        let (listing, key) = text
            .and_then(|text| {
                let rest = text.strip_prefix("v2:")?;
                let listing = rest.get(..LISTING_DIGITS)?.to_owned();
                let key = rest.get(LISTING_DIGITS..)?.strip_prefix(':')?.to_owned();
                Some((listing, key))
            })
            .ok_or("is not a page token from this service")?;
        if listing != hex::encode(self.0) {
            return Err(
                "was given for another listing, or for other fields than this \
                        request's: send them as they were, or leave the token out to start \
                        from the first page"
                    .into(),
            );
        }
        Ok(Some(key))
    }
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
        let listing = Listing::of("ListSeries", &["acme"]);
        for key in ["abc", "", "a:b", "2026/7"] {
            assert_eq!(listing.read(&listing.token(key)), Ok(Some(key.into())));
        }
        assert_eq!(listing.read(""), Ok(None));
        for foreign in [
            "not a token".to_owned(),
            URL_SAFE_NO_PAD.encode("abc"),
            URL_SAFE_NO_PAD.encode("v2:0123:abc"),
        ] {
            assert_eq!(
                listing.read(&foreign),
                Err("is not a page token from this service".into()),
                "{foreign}"
            );
        }
        let earlier = listing.read(&URL_SAFE_NO_PAD.encode("v1:abc")).unwrap_err();
        assert!(
            earlier.starts_with("was given by an earlier version"),
            "{earlier}"
        );
    }

    /// A token is taken back by its own listing alone: not by another
    /// method, nor by the same with any field changed, nor by fields that
    /// join to the same text.
    #[test]
    fn a_token_is_read_only_by_the_listing_it_was_given_for() {
        let given = Listing::of("ListNumbers", &["acme", "invoice", "2026", "1"]);
        let token = given.token("41");
        for other in [
            Listing::of("ListSeries", &["acme", "invoice", "2026", "1"]),
            Listing::of("ListNumbers", &["globex", "invoice", "2026", "1"]),
            Listing::of("ListNumbers", &["acme", "credit", "2026", "1"]),
            Listing::of("ListNumbers", &["acme", "invoice", "2025", "1"]),
            Listing::of("ListNumbers", &["acme", "invoice", "2026", "0"]),
            Listing::of("ListNumbers", &["acme", "invoice2026", "", "1"]),
        ] {
            assert_ne!(other, given);
            let refused = other.read(&token).unwrap_err();
            assert!(
                refused.starts_with("was given for another listing"),
                "{refused}"
            );
        }
        assert_eq!(
            Listing::of("ListNumbers", &["acme", "invoice", "2026", "1"]).read(&token),
            Ok(Some("41".into()))
        );
    }
}
