//! Database URLs: which backend a URL names, refusing those that would lose
//! or refuse writes, and a password that never reaches `Debug`, `Display` or logs.

use std::{fmt, path::Path, str::FromStr};

use sqlx::{postgres::PgConnectOptions, sqlite::SqliteConnectOptions};

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `postgres://` or `postgresql://`: the production store.
    Postgres,
    /// `sqlite:`: one file on local disk, the embedded default.
    Sqlite,
}

/// A database URL. Its password never reaches `Debug`, `Display` or logs.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL of a SQLite database file at `path`.
    ///
    /// # Errors
    /// The path is not UTF-8.
    pub fn sqlite_file(path: &Path) -> Result<Self, String> {
        // The URL's path is percent-decoded: escape what would not survive.
        const ESCAPED: &percent_encoding::AsciiSet =
            &percent_encoding::CONTROLS.add(b'%').add(b'?').add(b'#');
        let path = path
            .to_str()
            .ok_or_else(|| format!("database path {} is not UTF-8", path.display()))?;
        Ok(Self(format!(
            "sqlite://{}",
            percent_encoding::utf8_percent_encode(path, ESCAPED)
        )))
    }

    /// The backend the URL's scheme names.
    #[must_use]
    pub fn backend(&self) -> Backend {
        if self.0.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }

    /// The full URL, password included: for connecting only.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password, in the user part or as a `password`
    /// parameter, replaced by `***`.
    #[must_use]
    pub fn redacted(&self) -> String {
        if self.backend() == Backend::Sqlite {
            // A file name: nothing secret in it.
            return self.0.clone();
        }
        redacted(&self.0)
    }
}

/// Text that is not a URL, as it may be shown: the value of a `password`
/// query parameter, and whatever precedes the last `@` after any scheme (a
/// user and password, which may hold a `?`, `/` or `#` that kept the text
/// from parsing), replaced by `***`.
#[must_use]
pub fn without_secrets(raw: &str) -> String {
    // A password parameter first: its value may hold an `@`.
    let shown = match raw.split_once('?') {
        Some((head, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{head}?{}", pairs.join("&"))
        }
        None => raw.to_owned(),
    };
    let (scheme, rest) = shown
        .split_once("://")
        .map_or(("", shown.as_str()), |(scheme, rest)| (scheme, rest));
    match rest.rsplit_once('@') {
        Some((_, host)) if scheme.is_empty() => format!("***@{host}"),
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => shown,
    }
}

/// `raw` with any password, in the user part or as a `password` query
/// parameter, replaced by `***`.
#[must_use]
fn redacted(raw: &str) -> String {
    // `user:password@host` reads as a scheme and a path.
    let Ok(mut url) = url::Url::parse(raw).map_err(drop).and_then(|url| {
        if url.cannot_be_a_base() {
            Err(())
        } else {
            Ok(url)
        }
    }) else {
        return without_secrets(raw);
    };
    if url.password().is_some() {
        // Cannot fail: the URL already has a password, so it has a host.
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if key.eq_ignore_ascii_case("password") {
                    "***".into()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let url = Self(raw.to_owned());
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            // Refused here, as a bad setting, rather than at the first
            // connection. The error names no part of the URL.
            PgConnectOptions::from_str(raw)
                .map_err(|error| format!("{}: {error}", url.redacted()))?;
            return Ok(url);
        }
        if raw.starts_with("sqlite:") {
            // Numbers handed out from memory would be handed out again after a restart.
            let options = SqliteConnectOptions::from_str(raw).map_err(|error| error.to_string())?;
            if raw.contains(":memory:") || raw.contains("mode=memory") {
                return Err(format!(
                    "{raw}: an in-memory SQLite database loses every number at exit; name a file"
                ));
            }
            // The services write, and rely on SQLite's own file locking.
            if let Some((_, query)) = raw.split_once('?') {
                for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
                    if matches!(key.as_ref(), "vfs" | "immutable") || value == "ro" {
                        return Err(format!(
                            "{raw}: {key}={value} would give up writing or file locking"
                        ));
                    }
                }
            }
            if options.get_filename().as_os_str().is_empty() {
                return Err(format!("{raw}: no SQLite file named"));
            }
            // Started from another directory, a service would open another
            // file: a second counter, handing out the same numbers again.
            if options.get_filename().is_relative() {
                return Err(format!(
                    "{raw}: a relative path depends on the directory the service starts in, \
                     and each directory would get a counter of its own; give an absolute path \
                     (sqlite:///var/lib/numbering/allocator.sqlite3) or --data-dir"
                ));
            }
            return Ok(url);
        }
        Err(format!(
            "unsupported database URL {}: expected postgres:// or sqlite://",
            url.redacted()
        ))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_hides_its_password() {
        let url: DatabaseUrl = "postgres://app:s3cret@db:5432/numbers".parse().unwrap();
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(!url.to_string().contains("s3cret"));
        assert!(url.redacted().contains("app:***@db"));
        assert!(url.expose().contains("s3cret"));

        let url: DatabaseUrl = "postgres://app@db/numbers?sslmode=require&password=s3cret"
            .parse()
            .unwrap();
        assert!(!url.to_string().contains("s3cret"), "{url}");
        assert!(url.to_string().contains("sslmode=require"), "{url}");
    }

    #[test]
    fn database_url_rejects_other_schemes() {
        let error = "mysql://root:pw@db/x".parse::<DatabaseUrl>().unwrap_err();
        assert!(!error.contains("pw@"), "{error}");
        // Without a scheme: shown as written, but for a user and password.
        let error = "app:s3cret@db:5432/numbers"
            .parse::<DatabaseUrl>()
            .unwrap_err();
        assert!(error.contains(" ***@db:5432/numbers:"), "{error}");
        let error = "/srv/numbering/allocator.sqlite3"
            .parse::<DatabaseUrl>()
            .unwrap_err();
        assert!(
            error.contains(" /srv/numbering/allocator.sqlite3:"),
            "{error}"
        );
        // A password as a query parameter, where the URL does not parse as
        // one with a host.
        for raw in [
            "postgres:db/numbers?sslmode=require&password=s3cret",
            "postgres//db?Password=s3cret",
            "postgres//db?password=p@s3cret",
        ] {
            let error = raw.parse::<DatabaseUrl>().unwrap_err();
            assert!(!error.contains("s3cret"), "{error}");
            assert!(error.contains("assword=***"), "{error}");
        }
    }

    /// A user and password with a `?`, `/` or `#` in them keep the URL from
    /// parsing: still hidden.
    #[test]
    fn a_password_that_breaks_the_url_is_hidden() {
        for (raw, shown) in [
            (
                "postgres://app:hunter?2@127.0.0.1:5432/numbers",
                "postgres://***@127.0.0.1:5432/numbers",
            ),
            (
                "postgres://app:a/b?c#d@db:5432/numbers?sslmode=require",
                "postgres://***@db:5432/numbers?sslmode=require",
            ),
            (
                "postgresql://app:x://y@db/numbers",
                "postgresql://***@db/numbers",
            ),
            ("app:hunter?2@db:5432/numbers", "***@db:5432/numbers"),
            (
                "http://writer:s3cr?et@allocator:50051",
                "http://***@allocator:50051",
            ),
        ] {
            assert_eq!(without_secrets(raw), shown);
        }
    }

    /// A PostgreSQL URL that does not parse is a bad setting, refused with
    /// the others, not found at the first connection.
    #[test]
    fn a_postgres_url_that_does_not_parse_is_refused() {
        for raw in [
            "postgres://app:s3cret@127.0.0.1:99999/numbers",
            "postgres://app:s3cret@db/numbers?sslmode=bogus",
            "postgres://app:hunter?2@127.0.0.1:5432/numbers",
        ] {
            let error = raw.parse::<DatabaseUrl>().unwrap_err();
            assert!(
                !error.contains("s3cret") && !error.contains("hunter"),
                "{error}"
            );
        }
        assert!(
            "postgres://app:s3cret@db:5432/numbers?sslmode=require&application_name=x"
                .parse::<DatabaseUrl>()
                .is_ok()
        );
    }

    #[test]
    fn the_scheme_picks_the_backend() {
        let postgres: DatabaseUrl = "postgresql://db/numbers".parse().unwrap();
        assert_eq!(postgres.backend(), Backend::Postgres);
        let sqlite: DatabaseUrl = "sqlite:///data/allocator.sqlite3".parse().unwrap();
        assert_eq!(sqlite.backend(), Backend::Sqlite);
        assert_eq!(sqlite.to_string(), "sqlite:///data/allocator.sqlite3");
    }

    #[test]
    fn sqlite_files_keep_their_exact_path() {
        let path = Path::new("/srv/a?b#c%20d/numbers.sqlite3");
        let url = DatabaseUrl::sqlite_file(path).unwrap();
        let options = SqliteConnectOptions::from_str(url.expose()).unwrap();
        assert_eq!(options.get_filename(), path);
        assert_eq!(
            url.expose().parse::<DatabaseUrl>().unwrap().backend(),
            Backend::Sqlite
        );
    }

    #[test]
    fn an_absolute_sqlite_file_is_accepted() {
        assert!("sqlite:///tmp/x.db?mode=rwc".parse::<DatabaseUrl>().is_ok());
    }

    #[test]
    fn sqlite_urls_that_would_lose_or_refuse_writes_are_refused() {
        for raw in [
            "sqlite::memory:",
            "sqlite:///tmp/x.db?mode=memory",
            "sqlite://",
            "sqlite:///tmp/x.db?mode=ro",
            "sqlite:///tmp/x.db?vfs=unix-none",
            "sqlite:///tmp/x.db?immutable=true",
            // Another file, and another counter, in each working directory.
            "sqlite://x.db",
            "sqlite:x.db",
        ] {
            assert!(raw.parse::<DatabaseUrl>().is_err(), "{raw} accepted");
        }
    }
}
