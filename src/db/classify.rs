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
    /// server shutting down or refusing connections. Retry the call later.
    Unavailable,
    /// The database named in the URL does not exist (3D000).
    NoSuchDatabase,
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
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("23505") => DbErrorKind::UniqueViolation(db.constraint().map(str::to_owned)),
            Some("40001" | "40P01") => DbErrorKind::Retryable,
            Some("22003") => DbErrorKind::OutOfRange,
            Some("3D000") => DbErrorKind::NoSuchDatabase,
            Some("28000" | "28P01") => DbErrorKind::Authentication,
            Some("42501") => DbErrorKind::NoPrivilege,
            // 08: connection exception; 57P01-57P04: admin or crash shutdown,
            // cannot connect now, database dropped; 53300: too many
            // connections; 55000 is what a database that does not accept
            // connections answers at connect; 25006: a write in a read-only
            // transaction, i.e. a standby not yet promoted during a failover,
            // or a database set read-only; 57014, 55P03 and 25P03: the
            // statement, lock and idle-in-transaction time-outs the pool sets.
            Some(code)
                if code.starts_with("08")
                    || matches!(
                        code,
                        "57P01"
                            | "57P02"
                            | "57P03"
                            | "57P04"
                            | "53300"
                            | "55000"
                            | "25006"
                            | "57014"
                            | "55P03"
                            | "25P03"
                    ) =>
            {
                DbErrorKind::Unavailable
            }
            _ => DbErrorKind::Other,
        },
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
    match code {
        // SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY. SQLite names
        // the columns, not the constraint: "UNIQUE constraint failed: t.a, t.b".
        2067 | 1555 => DbErrorKind::UniqueViolation(
            error
                .message()
                .split_once(": ")
                .map(|(_, columns)| columns.to_owned()),
        ),
        // SQLITE_CONSTRAINT_DATATYPE: in a STRICT table, an INTEGER sum that
        // overflowed to REAL, e.g. a counter past `i64::MAX`.
        3091 => DbErrorKind::OutOfRange,
        26 => DbErrorKind::NotADatabase,
        // By primary code: BUSY and LOCKED (the busy time-out ran out),
        // READONLY, IOERR, FULL (disk full), CANTOPEN.
        code => match code & 0xff {
            5 | 6 => DbErrorKind::Retryable,
            8 | 10 | 13 | 14 => DbErrorKind::Unavailable,
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
}
