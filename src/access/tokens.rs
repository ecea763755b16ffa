//! Bearer tokens and what each may do: read from a TOML file with one
//! `[[token]]` table per token, checked by their SHA-256 digests in constant
//! time.
//!
//! ```toml
//! [[token]]
//! name = "billing"
//! sha256 = "…"                      # or: secret = "…"
//! tenants = ["acme", "globex-*"]    # `*` matches any run of characters
//! admin = false                     # AdvanceCounter, ConfigureSeries, …
//! ```

use std::{fmt, sync::Arc};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::access::{Credential, Denied};

/// The tokens a service accepts, and the grants of client certificates by
/// subject.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
    subjects: Vec<(String, Arc<Grant>)>,
}

/// One token: the digest of its secret and what it grants.
#[derive(Clone, PartialEq, Eq)]
struct Token {
    digest: [u8; 32],
    grant: Arc<Grant>,
}

/// What a caller may do: act for the tenants its patterns match, and call
/// administrative methods if `admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    by: Credential,
    name: String,
    tenants: Vec<TenantPattern>,
    admin: bool,
}

/// A tenant id, or a pattern where `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TenantPattern(String);

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<Entry>,
    #[serde(default)]
    certificate: Vec<CertificateEntry>,
}

/// Grants to a client certificate (under mutual TLS) by its subject.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateEntry {
    name: String,
    subject: String,
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    /// Read as any value, so that one of another type (a secret written
    /// without quotes) is refused without the parser's message quoting it.
    secret: Option<toml::Value>,
    sha256: Option<String>,
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default)]
    admin: bool,
}

impl Tokens {
    /// Reads a tokens file.
    ///
    /// # Errors
    /// The text is not such a file, naming the token at fault and why: a
    /// missing or doubled secret, a digest that is not 64 lowercase hex
    /// digits, a tenant pattern with characters a tenant id cannot hold, or
    /// two tokens with one name or one secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        // Not the error's own text: it quotes the line, which may hold a secret.
        let file: File = toml::from_str(text).map_err(|error| {
            let line = error
                .span()
                .map(|span| text[..span.start].matches('\n').count() + 1);
            match line {
                Some(line) => format!("line {line}: {}", error.message()),
                None => error.message().to_owned(),
            }
        })?;
        let mut tokens: Vec<Token> = Vec::with_capacity(file.token.len());
        for entry in file.token {
            let token = Token::from_entry(entry)?;
            if let Some(other) = tokens
                .iter()
                .find(|t| t.grant.name == token.grant.name || t.digest == token.digest)
            {
                return Err(format!(
                    "tokens {:?} and {:?} share a name or a secret",
                    other.grant.name, token.grant.name
                ));
            }
            tokens.push(token);
        }
        let mut subjects: Vec<(String, Arc<Grant>)> = Vec::new();
        for entry in file.certificate {
            let grant = Grant::new(
                Credential::Certificate,
                entry.name,
                entry.tenants,
                entry.admin,
            )?;
            if entry.subject.is_empty() {
                return Err(format!("certificate {:?}: subject is empty", grant.name));
            }
            if subjects
                .iter()
                .any(|(subject, _)| *subject == entry.subject)
            {
                return Err(format!(
                    "certificate {:?}: subject {:?} is granted twice",
                    grant.name, entry.subject
                ));
            }
            subjects.push((entry.subject, Arc::new(grant)));
        }
        Ok(Self { tokens, subjects })
    }

    /// Whether nothing is granted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.subjects.is_empty()
    }

    /// Whether any client certificate subject has grants.
    #[must_use]
    pub fn grants_subjects(&self) -> bool {
        !self.subjects.is_empty()
    }

    /// The grant of a client certificate with this subject.
    #[must_use]
    pub fn by_subject(&self, subject: &str) -> Option<&Arc<Grant>> {
        self.subjects
            .iter()
            .find(|(granted, _)| granted == subject)
            .map(|(_, grant)| grant)
    }

    /// The token whose digest is the secret's. Every token is compared, each
    /// in constant time, so the time taken says nothing of which one matched
    /// or how much of a secret was right.
    #[must_use]
    pub fn find(&self, secret: &str) -> Option<&Arc<Grant>> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for token in &self.tokens {
            let equal: Choice = token.digest.ct_eq(&digest);
            if bool::from(equal) {
                found = Some(&token.grant);
            }
        }
        found
    }
}

impl Token {
    fn from_entry(entry: Entry) -> Result<Self, String> {
        let name = entry.name;
        let secret = match entry.secret {
            Some(toml::Value::String(secret)) => Some(secret),
            Some(_) => {
                return Err(format!(
                    "token {name:?}: the secret must be a quoted string"
                ));
            }
            None => None,
        };
        let digest = match (secret, entry.sha256) {
            // A bearer token is read without its surrounding spaces: such a
            // secret could never be presented.
            (Some(secret), None) if secret.trim_matches(' ') != secret => {
                return Err(format!(
                    "token {name:?}: the secret begins or ends with a space"
                ));
            }
            (Some(secret), None) if !secret.is_empty() => Sha256::digest(secret.as_bytes()).into(),
            (None, Some(hex_digest)) => parse_digest(&hex_digest)
                .ok_or_else(|| format!("token {name:?}: sha256 must be 64 lowercase hex digits"))?,
            _ => return Err(format!("token {name:?}: give either secret or sha256")),
        };
        // What a recipe hashing a secret it failed to make gives: that token
        // would admit an empty bearer token.
        if digest == <[u8; 32]>::from(Sha256::digest(b"")) {
            return Err(format!(
                "token {name:?}: sha256 is the digest of an empty secret"
            ));
        }
        Ok(Self {
            digest,
            grant: Arc::new(Grant::new(
                Credential::Token,
                name,
                entry.tenants,
                entry.admin,
            )?),
        })
    }
}

impl Grant {
    fn new(
        by: Credential,
        name: String,
        tenants: Vec<String>,
        admin: bool,
    ) -> Result<Self, String> {
        let tenants = tenants
            .into_iter()
            .map(|pattern| TenantPattern::parse(&pattern).map_err(|why| format!("{name:?}: {why}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            by,
            name,
            tenants,
            admin,
        })
    }
}

/// Names only: digests stay out of logs too.
impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.tokens.iter().map(|token| &token.grant.name))
            .entries(self.subjects.iter().map(|(_, grant)| &grant.name))
            .finish()
    }
}

impl Grant {
    /// The token's name, for logs.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it grants no tenant, so nothing at all: a token kept in the
    /// file only so that the file is not empty, revoked.
    #[must_use]
    pub fn grants_nothing(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Whether this grant may call a method for `tenant`, administrative if
    /// `admin`.
    ///
    /// # Errors
    /// [`Denied`] says why not.
    pub fn allows(&self, tenant: &str, admin: bool) -> Result<(), Denied> {
        if !self.tenants.iter().any(|pattern| pattern.matches(tenant)) {
            return Err(Denied::Tenant {
                by: self.by,
                grant: self.name.clone(),
                tenant: tenant.to_owned(),
            });
        }
        if admin && !self.admin {
            return Err(Denied::Admin {
                by: self.by,
                grant: self.name.clone(),
            });
        }
        Ok(())
    }
}

/// A lowercase hex SHA-256 digest.
fn parse_digest(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut digest = [0; 32];
    hex::decode_to_slice(text, &mut digest).ok()?;
    Some(digest)
}

impl TenantPattern {
    fn parse(pattern: &str) -> Result<Self, String> {
        let allowed =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-' | '*');
        if pattern.is_empty() || !pattern.chars().all(allowed) {
            return Err(format!(
                "tenant pattern {pattern:?} may hold only A-Z a-z 0-9 . _ : - and *"
            ));
        }
        Ok(Self(pattern.to_owned()))
    }

    /// Whether `tenant` matches: literal characters match themselves, `*`
    /// any run of characters, the empty one included.
    fn matches(&self, tenant: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = tenant.strip_prefix(first) else {
            return false;
        };
        let middle: Vec<&str> = parts.collect();
        let Some((last, middle)) = middle.split_last() else {
            // No `*`: the whole id must be the pattern.
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> TenantPattern {
        TenantPattern::parse(text).unwrap()
    }

    #[test]
    fn patterns_match_literally_but_for_stars() {
        assert!(pattern("acme").matches("acme"));
        assert!(!pattern("acme").matches("acme-2"));
        assert!(pattern("globex-*").matches("globex-"));
        assert!(pattern("globex-*").matches("globex-eu"));
        assert!(!pattern("globex-*").matches("globex"));
        assert!(pattern("*").matches("anyone"));
        assert!(pattern("*-eu").matches("acme-eu"));
        assert!(!pattern("*-eu").matches("acme-us"));
        assert!(pattern("a*b*c").matches("abc"));
        assert!(pattern("a*b*c").matches("a-b-b-c"));
        assert!(!pattern("a*b*c").matches("a-c-b"));
        assert!(
            !pattern("ab*ba").matches("aba"),
            "the two ends must not overlap"
        );
        for bad in ["", "acme corp", "acme?", "ümlaut"] {
            assert!(TenantPattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    const FILE: &str = r#"
        [[token]]
        name = "billing"
        secret = "s3cret-billing"
        tenants = ["acme", "globex-*"]

        [[token]]
        name = "ops"
        # sha256 of "s3cret-ops"
        sha256 = "SHA"
        tenants = ["*"]
        admin = true
    "#;

    fn tokens() -> Tokens {
        let digest = hex::encode(Sha256::digest(b"s3cret-ops"));
        Tokens::parse(&FILE.replace("SHA", &digest)).unwrap()
    }

    fn check(tokens: &Tokens, secret: &str, tenant: &str, admin: bool) -> Result<String, Denied> {
        let grant = tokens.find(secret).ok_or(Denied::Unknown)?;
        grant.allows(tenant, admin)?;
        Ok(grant.name().to_owned())
    }

    #[test]
    fn a_token_acts_for_its_tenants_and_only_an_admin_token_administers() {
        let tokens = tokens();
        assert_eq!(
            check(&tokens, "s3cret-billing", "acme", false),
            Ok("billing".into())
        );
        assert_eq!(
            check(&tokens, "s3cret-billing", "globex-eu", false),
            Ok("billing".into())
        );
        assert_eq!(
            check(&tokens, "s3cret-billing", "initech", false),
            Err(Denied::Tenant {
                by: Credential::Token,
                grant: "billing".into(),
                tenant: "initech".into()
            })
        );
        assert_eq!(
            check(&tokens, "s3cret-billing", "acme", true),
            Err(Denied::Admin {
                by: Credential::Token,
                grant: "billing".into()
            })
        );
        assert_eq!(
            check(&tokens, "s3cret-ops", "initech", true),
            Ok("ops".into())
        );
        for unknown in ["", "s3cret", "s3cret-billing ", "S3CRET-OPS"] {
            assert_eq!(tokens.find(unknown), None, "{unknown:?}");
        }
    }

    /// A certificate's grant is named as one, in the refusal's text and its
    /// `ErrorInfo`, and a token's as a token.
    #[test]
    fn a_refusal_names_the_grant_as_what_the_caller_showed() {
        use tonic_types::StatusExt;
        let tokens = Tokens::parse(
            "[[certificate]]\nname = \"batch\"\nsubject = \"CN=batch\"\ntenants = [\"globex\"]\n\
             [[token]]\nname = \"billing\"\nsecret = \"s3cret\"\ntenants = [\"acme\"]\n",
        )
        .unwrap();
        let batch = tokens.by_subject("CN=batch").unwrap();
        let billing = tokens.find("s3cret").unwrap();
        let refusals = [
            (
                batch.allows("acme", false),
                "certificate",
                "client certificate \"batch\" may not act for tenant \"acme\"",
            ),
            (
                batch.allows("globex", true),
                "certificate",
                "client certificate \"batch\" may not call administrative methods",
            ),
            (
                billing.allows("globex", false),
                "token",
                "token \"billing\" may not act for tenant \"globex\"",
            ),
        ];
        for (refused, key, message) in refusals {
            let status = tonic::Status::from(refused.unwrap_err());
            assert_eq!(status.message(), message);
            let info = status.get_error_details().error_info().cloned().unwrap();
            let named: Vec<_> = info.metadata.keys().filter(|k| *k != "tenantId").collect();
            assert_eq!(named, [key], "{message}");
            assert_eq!(
                info.metadata[key],
                if key == "token" { "billing" } else { "batch" }
            );
        }
    }

    #[test]
    fn debug_output_names_tokens_and_shows_no_digest() {
        let shown = format!("{:?}", tokens());
        assert_eq!(shown, r#"["billing", "ops"]"#);
    }

    #[test]
    fn bad_files_are_refused_with_the_token_at_fault() {
        let refused = |text: &str| Tokens::parse(text).unwrap_err();
        assert!(
            refused("[[token]]\nname = \"a\"\ntenants = [\"x\"]")
                .contains("either secret or sha256")
        );
        assert!(
            refused("[[token]]\nname = \"a\"\nsecret = \"s\"\nsha256 = \"00\"").contains("\"a\"")
        );
        let upper = "A".repeat(64);
        assert!(
            refused(&format!("[[token]]\nname = \"a\"\nsha256 = \"{upper}\""))
                .contains("lowercase hex")
        );
        assert!(
            refused("[[token]]\nname = \"a\"\nsecret = \"s\"\ntenants = [\"a b\"]")
                .contains("tenant pattern")
        );
        assert!(
            refused("[[token]]\nname = \"a\"\nsecret = \"s\"\nwho = 1").contains("unknown field")
        );
        let twice =
            "[[token]]\nname = \"a\"\nsecret = \"s\"\n[[token]]\nname = \"b\"\nsecret = \"s\"";
        assert!(refused(twice).contains("share"));
        assert!(Tokens::parse("").unwrap().is_empty());
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(
            refused(&format!("[[token]]\nname = \"a\"\nsha256 = \"{empty}\""))
                .contains("empty secret")
        );
        assert!(refused("[[token]]\nname = \"a\"\nsecret = \"s \"").contains("space"));
        // A secret of another type is refused without being quoted.
        for secret in ["123456789", "0xDEADBEEF", "2026-12-06", "[\"hunter2\"]"] {
            let error = refused(&format!("[[token]]\nname = \"a\"\nsecret = {secret}"));
            assert!(error.contains("quoted string"), "{error}");
            for quoted in ["123456789", "DEADBEEF", "3735928559", "2026", "hunter2"] {
                assert!(!error.contains(quoted), "{error}");
            }
        }
    }
}
