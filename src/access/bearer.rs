//! The bearer token a client sends: none, a fixed secret, or a file's
//! contents, read again when the file changes.

use std::{convert::Infallible, fmt, path::PathBuf, str::FromStr, time::Duration};

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::Interceptor,
};

use crate::access::reload::Reloading;

/// Adds `authorization: Bearer <secret>` to every request, if there is a
/// secret. The value is marked sensitive, so it never shows in `Debug`.
#[derive(Debug, Clone)]
pub struct BearerToken(Reloading<Option<MetadataValue<Ascii>>>);

impl BearerToken {
    /// No token is sent.
    #[must_use]
    pub fn none() -> Self {
        Self(Reloading::fixed(None))
    }

    /// `secret` is sent.
    ///
    /// # Errors
    /// The secret is empty or holds characters metadata cannot carry.
    pub fn fixed(secret: &str) -> Result<Self, String> {
        Ok(Self(Reloading::fixed(Some(header(secret)?))))
    }

    /// The contents of the file at `path` (without surrounding white space)
    /// are sent, read again every `interval`.
    ///
    /// # Errors
    /// The file cannot be read or holds no usable secret.
    pub fn from_file(path: PathBuf, interval: Duration) -> Result<Self, String> {
        let token = Reloading::watch(
            "token file",
            vec![path],
            interval,
            Box::new(|files| {
                let text = std::str::from_utf8(&files[0]).map_err(|_| "not UTF-8".to_owned())?;
                header(text.trim()).map(Some)
            }),
        )?;
        Ok(Self(token))
    }
}

/// A secret given as a setting: `Debug` shows `***`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret itself: for sending only.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = Infallible;

    fn from_str(secret: &str) -> Result<Self, Infallible> {
        Ok(Self(secret.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

fn header(secret: &str) -> Result<MetadataValue<Ascii>, String> {
    if secret.is_empty() {
        return Err("the token is empty".into());
    }
    let mut value: MetadataValue<Ascii> = format!("Bearer {secret}")
        .parse()
        .map_err(|_| "the token holds characters metadata cannot carry".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = self.0.get().as_ref() {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_sent_and_never_shown() {
        let mut token = BearerToken::fixed("s3cret").unwrap();
        let request = token.call(Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        assert!(!format!("{token:?}").contains("s3cret"));
        assert!(BearerToken::fixed("").is_err());
        assert!(BearerToken::fixed("two\nlines").is_err());
        assert_eq!(format!("{:?}", "s3cret".parse::<Secret>().unwrap()), "***");
        let none = BearerToken::none().call(Request::new(())).unwrap();
        assert!(none.metadata().get("authorization").is_none());
    }
}
