//! What a server error means for the one who got it: try again, or stop and say why.
//!
//! Every decision is made on the SQLSTATE, through [`SqlState`] constants, in
//! [`classify_code`]: capture, ingest and the commands ask the same question and get the same
//! answer. The classes:
//!
//! | SQLSTATE                                   | class                       | transient |
//! |--------------------------------------------|-----------------------------|-----------|
//! | 40xxx transaction rollback (serialization failure, deadlock, completion unknown) | [`ErrorClass::Conflict`] | yes |
//! | 08xxx connection exception                 | [`ErrorClass::Unavailable`] | yes       |
//! | 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now, 57P05 idle session timeout, 57000 operator intervention | [`ErrorClass::Unavailable`] | yes |
//! | 57014 query canceled (statement timeout, `pg_cancel_backend`) | [`ErrorClass::Canceled`] | yes |
//! | 53xxx insufficient resources (disk full, out of memory, too many connections) | [`ErrorClass::Unavailable`] | yes |
//! | 22xxx data exception, 54000 program limit exceeded | [`ErrorClass::Data`] | no  |
//! | 23xxx integrity constraint violation       | [`ErrorClass::Constraint`]  | no        |
//! | anything else (57P04 database dropped, 42xxx, 28xxx, 55xxx, ...) | [`ErrorClass::Refused`] | no |
//!
//! A canceled statement is transient on purpose: an operator cancels a ds-sync query to
//! relieve the server (and expects ds-sync to carry on), and a `statement_timeout` fires on a
//! lock wait or a loaded server, both of which pass. A timeout that fires every time shows
//! as repeated retries with the server's message in the log and the reconnect metric, paced
//! by the backoff, rather than as a stopped service.
//!
//! Some errors exist only as text: the replication stream library hands the server's error
//! over as `"<message> (SQLSTATE <code>)"`. [`sqlstate_in_message`] reads the code out of
//! such text once, so that the decision is still made on the code. Two exceptions sit with
//! the replication stream, because the code alone does not say enough there: 55006 (the slot
//! is held by another session) is transient for it, a holder that goes away on its own, and a
//! lost slot is 55000 plus PostgreSQL's wording, since 55000 also means "wal_level too low"
//! (`capture::error` and `capture::slot_lost`).

use tokio_postgres::error::SqlState;

/// What a failed statement or connection says about trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The transaction lost a race (serialization failure, deadlock): running it again can
    /// succeed.
    Conflict,
    /// The connection was lost, or the server is going away, starting, or out of resources:
    /// a new connection can succeed.
    Unavailable,
    /// The statement was canceled (statement timeout or an operator's cancel).
    Canceled,
    /// The server refused a value (bad input, out of range, too large): definite for this
    /// value, which can be set aside.
    Data,
    /// A constraint refused a row (unique, check, foreign key, not null): definite.
    Constraint,
    /// Anything else: the statement, the login or the setup is refused for good.
    Refused,
}

impl ErrorClass {
    /// Whether trying again (on a new connection where needed) can succeed.
    #[must_use]
    pub fn is_transient(self) -> bool {
        match self {
            ErrorClass::Conflict | ErrorClass::Unavailable | ErrorClass::Canceled => true,
            ErrorClass::Data | ErrorClass::Constraint | ErrorClass::Refused => false,
        }
    }
}

/// Codes that say the connection or the server, not the statement, failed.
const UNAVAILABLE: &[SqlState] = &[
    SqlState::CONNECTION_EXCEPTION,
    SqlState::CONNECTION_DOES_NOT_EXIST,
    SqlState::CONNECTION_FAILURE,
    SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
    SqlState::SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION,
    SqlState::TRANSACTION_RESOLUTION_UNKNOWN,
    SqlState::PROTOCOL_VIOLATION,
    SqlState::OPERATOR_INTERVENTION,
    SqlState::ADMIN_SHUTDOWN,
    SqlState::CRASH_SHUTDOWN,
    SqlState::CANNOT_CONNECT_NOW,
    SqlState::IDLE_SESSION_TIMEOUT,
    SqlState::INSUFFICIENT_RESOURCES,
    SqlState::DISK_FULL,
    SqlState::OUT_OF_MEMORY,
    SqlState::TOO_MANY_CONNECTIONS,
    SqlState::CONFIGURATION_LIMIT_EXCEEDED,
];

/// Codes of a transaction that lost a race.
const CONFLICT: &[SqlState] = &[
    SqlState::TRANSACTION_ROLLBACK,
    SqlState::T_R_SERIALIZATION_FAILURE,
    SqlState::T_R_INTEGRITY_CONSTRAINT_VIOLATION,
    SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN,
    SqlState::T_R_DEADLOCK_DETECTED,
];

/// The SQLSTATE class (its first two characters, as the standard defines it).
fn class_of(code: &SqlState) -> &str {
    code.code().get(..2).unwrap_or_default()
}

/// The class of a SQLSTATE: the one place that decides transient or definite.
#[must_use]
pub fn classify_code(code: &SqlState) -> ErrorClass {
    if CONFLICT.contains(code) {
        ErrorClass::Conflict
    } else if UNAVAILABLE.contains(code) {
        ErrorClass::Unavailable
    } else if *code == SqlState::QUERY_CANCELED {
        ErrorClass::Canceled
    } else if *code == SqlState::PROGRAM_LIMIT_EXCEEDED
        || class_of(code) == class_of(&SqlState::DATA_EXCEPTION)
    {
        ErrorClass::Data
    } else if class_of(code) == class_of(&SqlState::INTEGRITY_CONSTRAINT_VIOLATION) {
        ErrorClass::Constraint
    } else {
        ErrorClass::Refused
    }
}

/// The class of a tokio-postgres error: a closed or broken (I/O) connection is
/// [`ErrorClass::Unavailable`]; a server error goes by its SQLSTATE; anything else (a value
/// that cannot be converted, an unexpected message) is [`ErrorClass::Refused`].
#[must_use]
pub fn classify(err: &tokio_postgres::Error) -> ErrorClass {
    if err.is_closed() {
        return ErrorClass::Unavailable;
    }
    if let Some(code) = err.code() {
        return classify_code(code);
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return ErrorClass::Unavailable;
        }
        source = cause.source();
    }
    ErrorClass::Refused
}

/// The SQLSTATE of a server error that is only available as text, written
/// `"<message> (SQLSTATE <code>)"` (the form of the replication stream library and of
/// [`super::describe`]). `None` when the text carries no well-formed code. Pure.
#[must_use]
pub fn sqlstate_in_message(text: &str) -> Option<SqlState> {
    const MARK: &str = "(SQLSTATE ";
    let at = text.rfind(MARK)?;
    let rest = &text[at + MARK.len()..];
    let code = rest.get(..5)?;
    let well_formed = code
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    (well_formed && rest[5..].starts_with(')')).then(|| SqlState::from_code(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sqlstate_has_one_deliberate_class() {
        use ErrorClass::*;
        let table = [
            (SqlState::T_R_SERIALIZATION_FAILURE, Conflict),
            (SqlState::T_R_DEADLOCK_DETECTED, Conflict),
            (SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN, Conflict),
            (SqlState::TRANSACTION_ROLLBACK, Conflict),
            (SqlState::ADMIN_SHUTDOWN, Unavailable),
            (SqlState::CRASH_SHUTDOWN, Unavailable),
            (SqlState::CANNOT_CONNECT_NOW, Unavailable),
            (SqlState::IDLE_SESSION_TIMEOUT, Unavailable),
            (SqlState::OPERATOR_INTERVENTION, Unavailable),
            (SqlState::QUERY_CANCELED, Canceled),
            (SqlState::DATABASE_DROPPED, Refused),
            (SqlState::INSUFFICIENT_RESOURCES, Unavailable),
            (SqlState::DISK_FULL, Unavailable),
            (SqlState::OUT_OF_MEMORY, Unavailable),
            (SqlState::TOO_MANY_CONNECTIONS, Unavailable),
            (SqlState::CONFIGURATION_LIMIT_EXCEEDED, Unavailable),
            (SqlState::CONNECTION_EXCEPTION, Unavailable),
            (SqlState::CONNECTION_FAILURE, Unavailable),
            (SqlState::CONNECTION_DOES_NOT_EXIST, Unavailable),
            (SqlState::PROTOCOL_VIOLATION, Unavailable),
            (SqlState::INVALID_TEXT_REPRESENTATION, Data),
            (SqlState::NUMERIC_VALUE_OUT_OF_RANGE, Data),
            (SqlState::UNTRANSLATABLE_CHARACTER, Data),
            (SqlState::DATA_EXCEPTION, Data),
            (SqlState::PROGRAM_LIMIT_EXCEEDED, Data),
            (SqlState::UNIQUE_VIOLATION, Constraint),
            (SqlState::CHECK_VIOLATION, Constraint),
            (SqlState::NOT_NULL_VIOLATION, Constraint),
            (SqlState::FOREIGN_KEY_VIOLATION, Constraint),
            (SqlState::INVALID_PASSWORD, Refused),
            (SqlState::INVALID_CATALOG_NAME, Refused),
            (SqlState::UNDEFINED_TABLE, Refused),
            (SqlState::INSUFFICIENT_PRIVILEGE, Refused),
            (SqlState::OBJECT_IN_USE, Refused),
            (SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, Refused),
            (SqlState::LOCK_NOT_AVAILABLE, Refused),
        ];
        for (code, class) in table {
            assert_eq!(classify_code(&code), class, "SQLSTATE {}", code.code());
        }
        let transient = [Conflict, Unavailable, Canceled];
        for class in [Conflict, Unavailable, Canceled, Data, Constraint, Refused] {
            assert_eq!(
                class.is_transient(),
                transient.contains(&class),
                "{class:?}"
            );
        }
    }

    #[test]
    fn the_sqlstate_is_read_from_the_end_of_a_server_message() {
        let table = [
            (
                "ERROR: replication slot \"s\" is active for PID 7 (SQLSTATE 55006)",
                Some(SqlState::OBJECT_IN_USE),
            ),
            (
                "terminating connection due to administrator command (SQLSTATE 57P01)",
                Some(SqlState::ADMIN_SHUTDOWN),
            ),
            (
                "a (SQLSTATE 12345) in the message, then the real one (SQLSTATE 55000)",
                Some(SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE),
            ),
            ("error (SQLSTATE 42704)", Some(SqlState::UNDEFINED_OBJECT)),
            ("no code at all", None),
            ("cut short (SQLSTATE 550", None),
            ("lower case (SQLSTATE 57p01)", None),
            ("unclosed (SQLSTATE 55000", None),
            ("", None),
        ];
        for (text, code) in table {
            assert_eq!(sqlstate_in_message(text), code, "{text}");
        }
    }
}
