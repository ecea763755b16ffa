//! Who may call: bearer tokens from a file, each granting a set of tenants
//! and perhaps the administrative methods.
//!
//! A server authenticates each call once, before any handler runs, and
//! leaves the [`Caller`] in the request's extensions; a handler then asks
//! [`Caller::may`] for the tenant the request names.

pub mod bearer;
pub mod reload;
pub mod tokens;

use std::{path::PathBuf, sync::Arc, time::Duration};

use reload::Reloading;
use tokens::{Grant, Tokens};

use crate::tenant::TenantId;

/// How often watched files are read again: a change is in force within this.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Who may call a service.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// No tokens file: no token is asked for.
    tokens: Option<Reloading<Tokens>>,
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No bearer token: `UNAUTHENTICATED`.
    #[error("this call needs a bearer token (metadata \"authorization: Bearer …\")")]
    Missing,
    /// A bearer token this service does not know: `UNAUTHENTICATED`.
    #[error("the bearer token is not one this service knows")]
    Unknown,
    /// Authorization that is not a bearer token (its `Bearer ` left out,
    /// say): `UNAUTHENTICATED`, as an unknown token.
    #[error("the authorization metadata is not a bearer token: send \"authorization: Bearer …\"")]
    NotBearer,
    /// The grant may not act for this tenant: `PERMISSION_DENIED`.
    #[error("{by} {grant:?} may not act for tenant {tenant:?}")]
    Tenant {
        /// What the caller showed.
        by: Credential,
        /// The grant's name.
        grant: String,
        /// The tenant asked for.
        tenant: String,
    },
    /// The method is administrative and the grant is not: `PERMISSION_DENIED`.
    #[error("{by} {grant:?} may not call administrative methods")]
    Admin {
        /// What the caller showed.
        by: Credential,
        /// The grant's name.
        grant: String,
    },
}

/// What a caller showed for its grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token: a `[[token]]` entry.
    Token,
    /// A client certificate: a `[[certificate]]` entry, by its subject.
    Certificate,
}

impl Credential {
    /// The key naming the grant in a refusal's `ErrorInfo`.
    #[must_use]
    pub fn key(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Certificate => "certificate",
        }
    }
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Token => "token",
            Self::Certificate => "client certificate",
        })
    }
}

/// What a method needs of its caller besides the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Acting for the tenant is enough.
    Tenant,
    /// An administrative method: `AdvanceCounter`, `ConfigureSeries`, `Void`.
    Admin,
}

/// The authenticated caller of one call.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No tokens are configured: anyone may do anything.
    Anyone,
    /// The caller showed a token, or a client certificate, with this grant.
    Token(Arc<Grant>),
}

impl Access {
    /// Anyone may call.
    #[must_use]
    pub fn open() -> Self {
        Self::default()
    }

    /// Callers need one of `tokens`.
    #[must_use]
    pub fn with_tokens(tokens: Reloading<Tokens>) -> Self {
        Self {
            tokens: Some(tokens),
        }
    }

    /// Callers need a token from the file at `path`, which is read again
    /// every `interval`; with no `path`, anyone may call. Without
    /// `mutual_tls` no caller shows a certificate, so a file that grants
    /// client certificates anything is refused, at start and on reload.
    ///
    /// # Errors
    /// The file cannot be read or is not a tokens file.
    pub fn from_file(
        path: Option<PathBuf>,
        interval: Duration,
        mutual_tls: bool,
    ) -> Result<Self, String> {
        let Some(path) = path else {
            return Ok(Self::open());
        };
        let tokens = Reloading::watch(
            "tokens file",
            vec![path],
            interval,
            Box::new(move |files| {
                let text = std::str::from_utf8(&files[0]).map_err(|_| "not UTF-8".to_owned())?;
                // Caught between truncation and write, a file edited in place
                // reads empty: that must not refuse every caller.
                if text.trim().is_empty() {
                    return Err("empty; to ask for no token, remove --tokens-file".into());
                }
                // Comments alone, say: every caller would be refused.
                let tokens = Tokens::parse(text)?;
                if tokens.is_empty() {
                    return Err(
                        "grants nothing: no [[token]] or [[certificate]]; to ask for no token, \
                         remove --tokens-file"
                            .into(),
                    );
                }
                if tokens.grants_subjects() && !mutual_tls {
                    return Err("grants client certificates ([[certificate]]), which only \
                                --tls-client-ca (mutual TLS) asks callers for"
                        .into());
                }
                Ok(tokens)
            }),
        )?;
        Ok(Self::with_tokens(tokens))
    }

    /// Whether callers need a token.
    #[must_use]
    pub fn asks_for_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// The caller whose `authorization` metadata is `authorization`: its
    /// token's grant; without one, the grant of the subject of its client
    /// certificate, which `peer_subject` reads when needed.
    ///
    /// # Errors
    /// Tokens are configured and the caller shows none of them, nor a
    /// certificate with grants.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer_subject: impl FnOnce() -> Option<String>,
    ) -> Result<Caller, Denied> {
        let Some(tokens) = &self.tokens else {
            return Ok(Caller::Anyone);
        };
        let tokens = tokens.get();
        let Some(authorization) = authorization else {
            return tokens
                .grants_subjects()
                .then(peer_subject)
                .flatten()
                .and_then(|subject| tokens.by_subject(&subject).cloned())
                .filter(|grant| !grant.grants_nothing())
                .map(Caller::Token)
                .ok_or(Denied::Missing);
        };
        let secret = bearer(authorization).ok_or(Denied::NotBearer)?;
        // A token that grants no tenant is revoked: not even reflection,
        // which asks for no tenant, answers it.
        tokens
            .find(secret)
            .filter(|grant| !grant.grants_nothing())
            .map(|grant| Caller::Token(grant.clone()))
            .ok_or(Denied::Unknown)
    }
}

/// The secret of `Bearer <secret>` (the scheme in any case, RFC 6750); none
/// when it is empty.
fn bearer(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    let secret = secret.trim_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty()).then_some(secret)
}

impl Caller {
    /// Who the caller is, for logs: the token's name.
    #[must_use]
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Anyone => None,
            Self::Token(grant) => Some(grant.name()),
        }
    }

    /// Whether the caller may call a method that `needs` this of it, for
    /// `tenant`.
    ///
    /// # Errors
    /// [`Denied`] says why not.
    pub fn may(&self, tenant: &TenantId, needs: Needs) -> Result<(), Denied> {
        match self {
            Self::Anyone => Ok(()),
            Self::Token(grant) => grant.allows(tenant.as_str(), needs == Needs::Admin),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_tokens_file_is_not_taken_for_one_granting_nothing() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "\n ").unwrap();
        let refused = Access::from_file(Some(file.path().to_owned()), RELOAD_INTERVAL, false);
        assert!(refused.unwrap_err().contains("empty"));
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer abc"), Some("abc"));
        assert_eq!(bearer(b"BEARER  abc "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b"Bearer \xff"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer   "), None);
    }

    #[test]
    fn without_tokens_anyone_may_call_and_with_them_a_known_one_is_needed() {
        let open = Access::open();
        let no_subject = || None;
        assert!(matches!(
            open.authenticate(None, no_subject),
            Ok(Caller::Anyone)
        ));
        let tokens = Tokens::parse(
            "[[token]]\nname = \"billing\"\nsecret = \"s3cret\"\ntenants = [\"acme\"]\n\
             [[certificate]]\nname = \"batch\"\nsubject = \"CN=batch\"\ntenants = [\"*\"]",
        )
        .unwrap();
        let access = Access::with_tokens(Reloading::fixed(tokens));
        assert_eq!(
            access.authenticate(None, no_subject).unwrap_err(),
            Denied::Missing
        );
        assert_eq!(
            access
                .authenticate(Some(b"Bearer nope"), no_subject)
                .unwrap_err(),
            Denied::Unknown
        );
        assert_eq!(
            access
                .authenticate(Some(b"Basic s3cret"), no_subject)
                .unwrap_err(),
            Denied::NotBearer
        );
        let batch = access
            .authenticate(None, || Some("CN=batch".into()))
            .unwrap();
        assert_eq!(batch.name(), Some("batch"));
        assert_eq!(
            access
                .authenticate(None, || Some("CN=other".into()))
                .unwrap_err(),
            Denied::Missing
        );
        let caller = access
            .authenticate(Some(b"Bearer s3cret"), || panic!("not read"))
            .unwrap();
        assert_eq!(caller.name(), Some("billing"));
        let tenant = |id| TenantId::parse(id).unwrap();
        assert_eq!(caller.may(&tenant("acme"), Needs::Tenant), Ok(()));
        assert!(caller.may(&tenant("acme"), Needs::Admin).is_err());
        assert!(caller.may(&tenant("globex"), Needs::Tenant).is_err());
    }
}
