//! What start-up checks before it migrates a database, and why opening one
//! failed: each cause with its own exit status.

use std::path::PathBuf;

use sqlx::migrate::Migrator;

use super::{DbErrorKind, classify};

/// Why a database could not be opened at start-up. Each cause has its own
/// exit status ([`OpenError::exit_code`]), listed in the README.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The host name in the URL does not resolve.
    #[error("unknown database host {host:?} in {database}")]
    UnknownHost {
        /// The redacted URL.
        database: String,
        /// The host that does not resolve.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// Nothing accepts connections at the database's address, or it did not
    /// answer in time.
    #[error(
        "cannot reach the database server of {database}: is it running, and is that its address?"
    )]
    Unreachable {
        /// The redacted URL.
        database: String,
        /// Refused, reset or timed out.
        #[source]
        source: sqlx::Error,
    },
    /// The server refused the URL's user or password.
    #[error("the database server refused the user or password of {database}")]
    Authentication {
        /// The redacted URL.
        database: String,
        /// The server's answer.
        #[source]
        source: sqlx::Error,
    },
    /// The database does not exist, and creating it failed.
    #[error(
        "database {database} does not exist and could not be created: create it, or let its role create databases (CREATEDB)"
    )]
    Missing {
        /// The redacted URL.
        database: String,
        /// Why it could not be created.
        #[source]
        source: sqlx::Error,
    },
    /// The database does not exist, and creating it is turned off.
    #[error(
        "database {database} does not exist, and this start creates none (--create-database is false, or seed-counters, which reads invoices already stored): check --database-url (or --data-dir for SQLite files), or create it"
    )]
    NotCreated {
        /// The redacted URL.
        database: String,
    },
    /// The database holds tables this service did not create: another
    /// service's, or an application's.
    #[error(
        "{database} is not this service's database: it holds {found}. Give each service a database of its own (--database-url, or --data-dir for SQLite files)"
    )]
    NotOurs {
        /// The redacted URL.
        database: String,
        /// What was found there.
        found: String,
    },
    /// The database is this service's, migrated since by a newer release:
    /// this one does not know its schema.
    #[error(
        "{database} was migrated by a newer release of this service (migration {versions}): run that release or a newer one; this one cannot use it"
    )]
    Newer {
        /// The redacted URL.
        database: String,
        /// The migrations this release does not have.
        versions: String,
    },
    /// Any other failure to connect, e.g. a file that is not a SQLite database.
    #[error("connecting to {0}")]
    Connect(String, #[source] sqlx::Error),
    /// The directory of a SQLite file could not be created.
    #[error("creating directory {} for the database", .0.display())]
    CreateDir(PathBuf, #[source] std::io::Error),
    /// The lock that serialises processes opening one SQLite file failed.
    #[error("locking {}", .0.display())]
    Lock(PathBuf, #[source] std::io::Error),
    /// The migrations failed.
    #[error("migrating {0}")]
    Migrate(String, #[source] sqlx::migrate::MigrateError),
}

impl OpenError {
    /// The process exit status for this cause, after `sysexits.h`.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotOurs { .. } | Self::Newer { .. } => 65, // EX_DATAERR
            Self::Missing { .. } | Self::NotCreated { .. } => 66, // EX_NOINPUT
            Self::UnknownHost { .. } => 68,                  // EX_NOHOST
            Self::Unreachable { .. } => 69,                  // EX_UNAVAILABLE
            Self::CreateDir(..) | Self::Lock(..) => 73,      // EX_CANTCREAT
            Self::Authentication { .. } => 77,               // EX_NOPERM
            Self::Connect(..) | Self::Migrate(..) => 1,
        }
    }
}

/// The cause of a failed connection at start-up.
pub(crate) fn open_error(database: &str, error: sqlx::Error) -> OpenError {
    let database = database.to_owned();
    match classify(&error) {
        DbErrorKind::Authentication => OpenError::Authentication {
            database,
            source: error,
        },
        DbErrorKind::NoSuchDatabase => OpenError::Missing {
            database,
            source: error,
        },
        DbErrorKind::Unavailable => OpenError::Unreachable {
            database,
            source: error,
        },
        DbErrorKind::NotADatabase => OpenError::NotOurs {
            database,
            found: "data that is not a SQLite database".into(),
        },
        _ => OpenError::Connect(database, error),
    }
}

/// What start-up found in a database before migrating it.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    /// The tables of its schema, migrations table included.
    pub tables: Vec<String>,
    /// The migrations applied, by version and checksum, if it has a
    /// migrations table.
    pub applied: Vec<(i64, Vec<u8>)>,
}

impl Contents {
    /// Reads the tables, listed by `tables_sql` (engines list them each their
    /// own way), and the migrations applied.
    pub(crate) async fn read<DB>(
        connection: &mut DB::Connection,
        tables_sql: &'static str,
    ) -> Result<Self, sqlx::Error>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        DB::Arguments: sqlx::IntoArguments<DB>,
        for<'r> (String,): sqlx::FromRow<'r, DB::Row>,
        for<'r> (i64, Vec<u8>): sqlx::FromRow<'r, DB::Row>,
    {
        let tables: Vec<(String,)> = sqlx::query_as(tables_sql)
            .fetch_all(&mut *connection)
            .await?;
        let tables: Vec<String> = tables.into_iter().map(|(table,)| table).collect();
        let applied = if Self::has_migrations(&tables) {
            sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&mut *connection)
                .await?
        } else {
            Vec::new()
        };
        Ok(Self { tables, applied })
    }

    /// Whether the tables include the migrations table.
    pub(crate) fn has_migrations(tables: &[String]) -> bool {
        tables.iter().any(|table| table == MIGRATIONS_TABLE)
    }

    /// Refuses a database that is neither empty nor this service's: one
    /// holding tables but no migrations table, or whose applied migrations
    /// are not `migrator`'s (another service's database, given to this one by
    /// mistake). Checked before migrating, so a refused database is left as
    /// it was.
    pub(crate) fn check_ours(&self, migrator: &Migrator, database: &str) -> Result<(), OpenError> {
        if self.tables.is_empty() {
            return Ok(());
        }
        let ours = |(version, checksum): &(i64, Vec<u8>)| {
            migrator
                .iter()
                .any(|m| m.version == *version && m.checksum.as_ref() == checksum.as_slice())
        };
        let foreign: Vec<&(i64, Vec<u8>)> = self
            .applied
            .iter()
            .filter(|migration| !ours(migration))
            .collect();
        if Self::has_migrations(&self.tables) && foreign.is_empty() {
            return Ok(());
        }
        let versions = |migrations: &[&(i64, Vec<u8>)]| {
            migrations
                .iter()
                .map(|(version, _)| version.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Every migration of this release applied, and others after them:
        // a newer release's database.
        let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        let all_ours = migrator.iter().all(|m| {
            self.applied.iter().any(|(version, checksum)| {
                *version == m.version && checksum.as_slice() == m.checksum.as_ref()
            })
        });
        if all_ours && foreign.iter().all(|(version, _)| *version > latest) {
            return Err(OpenError::Newer {
                database: database.to_owned(),
                versions: versions(&foreign),
            });
        }
        let tables: Vec<&str> = self
            .tables
            .iter()
            .map(String::as_str)
            .filter(|table| *table != MIGRATIONS_TABLE)
            .collect();
        let found = if foreign.is_empty() {
            format!("tables this service did not create ({})", tables.join(", "))
        } else {
            format!(
                "tables ({}) made by migrations this service does not have (version {})",
                tables.join(", "),
                versions(&foreign)
            )
        };
        Err(OpenError::NotOurs {
            database: database.to_owned(),
            found,
        })
    }
}

/// The table in which sqlx records applied migrations.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_empty_database_or_this_services_own_is_accepted() {
        static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite/allocator");
        let ours = MIGRATOR.iter().next().unwrap();
        let contents = |tables: &[&str], applied: &[(i64, &[u8])]| Contents {
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
            applied: applied.iter().map(|(v, c)| (*v, c.to_vec())).collect(),
        };
        let accepted = |c: Contents| c.check_ours(&MIGRATOR, "db").is_ok();
        assert!(accepted(contents(&[], &[])));
        assert!(accepted(contents(
            &["_sqlx_migrations", "counters"],
            &[(ours.version, &ours.checksum)]
        )));
        // A newer migration not yet applied is fine: it runs next.
        assert!(accepted(contents(&["_sqlx_migrations"], &[])));
        assert!(!accepted(contents(&["customers"], &[])));
        assert!(!accepted(contents(
            &["_sqlx_migrations", "invoices"],
            &[(ours.version, b"another checksum")]
        )));
        // Another service's database with one migration of ours' version.
        assert!(matches!(
            contents(
                &["_sqlx_migrations", "counters"],
                &[(ours.version, &ours.checksum), (9999, b"unknown")]
            )
            .check_ours(&MIGRATOR, "db"),
            Err(OpenError::NotOurs { .. })
        ));
        // Every migration of ours, and one after them: a newer release's.
        let mut applied: Vec<(i64, &[u8])> = MIGRATOR
            .iter()
            .map(|m| (m.version, m.checksum.as_ref()))
            .collect();
        let latest = applied.last().unwrap().0;
        applied.push((latest + 1, b"a newer one"));
        let newer =
            contents(&["_sqlx_migrations", "counters"], &applied).check_ours(&MIGRATOR, "db");
        assert!(
            matches!(&newer, Err(OpenError::Newer { versions, .. }) if *versions == (latest + 1).to_string()),
            "{newer:?}"
        );
    }
}
