//! The one place database errors are classified: nothing else matches on
//! SQLSTATE codes or SQLite result codes.

/// What a database error means to the layers above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbErrorKind {
    /// A unique constraint rejected the row: by constraint name on PostgreSQL
    /// (23505), by column list (`table.a, table.b`) on SQLite.
    UniqueViolation(Option<String>),
    /// Serialization failure (40001) or deadlock (40P01) on PostgreSQL; the
    /// busy time-out running out (BUSY, LOCKED) on SQLite: retry the transaction.
    Retryable,
    /// A value does not fit its column (22003), e.g. a counter past `i64::MAX`.
    OutOfRange,
    /// The database cannot be reached now: connection loss, pool time-out,
    /// server shutting down or refusing connections, out of disk (or, on
    /// SQLite, memory). Retry the call later.
    Unavailable,
    /// The database named in the URL does not exist (3D000).
    NoSuchDatabase,
    /// A database of the name being created exists (42P04), or was created
    /// by another session in the same moment (its name's unique index,
    /// 23505 on `pg_database_datname_index`).
    DatabaseExists,
    /// The server refused the user or password (28000, 28P01).
    Authentication,
    /// The role lacks a privilege the statement needs (42501).
    NoPrivilege,
    /// The file is not a SQLite database (NOTADB).
    NotADatabase,
    /// Anything else: a bug or a broken database.
    Other,
}

/// Classifies a database error. Nothing else matches on SQLSTATE codes or
/// SQLite result codes.
#[must_use]
pub fn classify(error: &sqlx::Error) -> DbErrorKind {
    if let sqlx::Error::Database(db) = error
        && let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>()
    {
        return classify_sqlite(sqlite);
    }
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => DbErrorKind::Unavailable,
        sqlx::Error::Database(db) => db.code().map_or(DbErrorKind::Other, |code| {
            by_sqlstate(&code, db.constraint())
        }),
        _ => DbErrorKind::Other,
    }
}

/// Classifies a PostgreSQL error by its SQLSTATE; `constraint` names the
/// constraint a unique violation broke.
fn by_sqlstate(code: &str, constraint: Option<&str>) -> DbErrorKind {
    match code {
        "42P04" => DbErrorKind::DatabaseExists,
        "23505" if constraint == Some("pg_database_datname_index") => DbErrorKind::DatabaseExists,
        "23505" => DbErrorKind::UniqueViolation(constraint.map(str::to_owned)),
        "40001" | "40P01" => DbErrorKind::Retryable,
        "22003" => DbErrorKind::OutOfRange,
        "3D000" => DbErrorKind::NoSuchDatabase,
        "28000" | "28P01" => DbErrorKind::Authentication,
        "42501" => DbErrorKind::NoPrivilege,
        // 08: connection exception; 53000, 53100 and 53300: insufficient
        // resources, disk full, too many connections (not 53200 or 53400,
        // which one statement may meet alone: out of lock slots, past
        // temp_file_limit); 58000 and 58030: system and I/O errors;
        // 57P01-57P04: admin or crash shutdown, cannot connect now, database
        // dropped; 55000 is what a database that does not accept connections
        // answers at connect; 25006: a write in a read-only transaction,
        // i.e. a standby not yet promoted during a failover, or a database
        // set read-only; 57014, 55P03 and 25P03: the statement, lock and
        // idle-in-transaction time-outs the pool sets.
        code if code.starts_with("08") => DbErrorKind::Unavailable,
        "53000" | "53100" | "53300" | "58000" | "58030" | "57P01" | "57P02" | "57P03" | "57P04"
        | "55000" | "25006" | "57014" | "55P03" | "25P03" => DbErrorKind::Unavailable,
        _ => DbErrorKind::Other,
    }
}

/// Classifies a SQLite error by its extended result code.
fn classify_sqlite(error: &sqlx::sqlite::SqliteError) -> DbErrorKind {
    use sqlx::error::DatabaseError;
    let code: i32 = error
        .code()
        .and_then(|code| code.parse().ok())
        .unwrap_or_default();
    by_sqlite_code(code, error.message())
}

/// Classifies a SQLite extended result code; `message` is the error's, which
/// names the columns of a unique violation.
fn by_sqlite_code(code: i32, message: &str) -> DbErrorKind {
    match code {
        // SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY. SQLite names
        // the columns, not the constraint: "UNIQUE constraint failed: t.a, t.b".
        2067 | 1555 => DbErrorKind::UniqueViolation(
            message
                .split_once(": ")
                .map(|(_, columns)| columns.to_owned()),
        ),
        // SQLITE_CONSTRAINT_DATATYPE: in a STRICT table, an INTEGER sum that
        // overflowed to REAL, e.g. a counter past `i64::MAX`.
        3091 => DbErrorKind::OutOfRange,
        26 => DbErrorKind::NotADatabase,
        // By primary code: BUSY and LOCKED (the busy time-out ran out);
        // NOMEM, READONLY, IOERR, FULL (disk full), CANTOPEN and PROTOCOL
        // (a lock of the WAL file lost a race). CORRUPT is left to Other: a
        // broken file is the operator's to mend.
        code => match code & 0xff {
            5 | 6 => DbErrorKind::Retryable,
            7 | 8 | 10 | 13 | 14 | 15 => DbErrorKind::Unavailable,
            _ => DbErrorKind::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_errors_are_unavailable() {
        assert_eq!(
            classify(&sqlx::Error::PoolTimedOut),
            DbErrorKind::Unavailable
        );
        assert_eq!(classify(&sqlx::Error::RowNotFound), DbErrorKind::Other);
    }

    /// A server out of disk or connections, or failing to read or write its
    /// files, is unavailable for now; a corrupt one, or one statement past a
    /// limit of its own, is a fault.
    #[test]
    fn postgresql_out_of_resources_is_unavailable() {
        for code in [
            "53000", "53100", "53300", "58000", "58030", "08006", "57P01", "25006",
        ] {
            assert_eq!(by_sqlstate(code, None), DbErrorKind::Unavailable, "{code}");
        }
        for code in ["XX001", "XX000", "42P01", "53200", "53400"] {
            assert_eq!(by_sqlstate(code, None), DbErrorKind::Other, "{code}");
        }
        assert_eq!(
            by_sqlstate("23505", Some("counters_pkey")),
            DbErrorKind::UniqueViolation(Some("counters_pkey".into()))
        );
        assert_eq!(by_sqlstate("40P01", None), DbErrorKind::Retryable);
    }

    /// Creating a database another session created first, whichever check
    /// of the name caught it.
    #[test]
    fn a_database_created_meanwhile_exists() {
        assert_eq!(by_sqlstate("42P04", None), DbErrorKind::DatabaseExists);
        assert_eq!(
            by_sqlstate("23505", Some("pg_database_datname_index")),
            DbErrorKind::DatabaseExists
        );
    }

    /// SQLite out of memory or disk, failing its I/O or losing a race for
    /// the WAL's lock is unavailable for now; a corrupt file is a fault.
    #[test]
    fn sqlite_out_of_resources_is_unavailable() {
        // NOMEM, READONLY, IOERR_WRITE, FULL, CANTOPEN, PROTOCOL.
        for code in [7, 8, 778, 13, 14, 15] {
            assert_eq!(by_sqlite_code(code, ""), DbErrorKind::Unavailable, "{code}");
        }
        // CORRUPT, an error in SQL.
        for code in [11, 1] {
            assert_eq!(by_sqlite_code(code, ""), DbErrorKind::Other, "{code}");
        }
        assert_eq!(by_sqlite_code(517, ""), DbErrorKind::Retryable);
        assert_eq!(
            by_sqlite_code(2067, "UNIQUE constraint failed: t.a, t.b"),
            DbErrorKind::UniqueViolation(Some("t.a, t.b".into()))
        );
    }
}
