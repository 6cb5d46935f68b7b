//! Names that reach SQL: validation, quoting, and table lookup through the catalog.
//!
//! No user input is ever pasted into SQL text. Values are bound as parameters; names of
//! slots and publications are validated and then quoted; table names are resolved through
//! `to_regclass($1)` (bound) and the catalog's own spelling is quoted into DDL. Row filters
//! are the one exception by nature (they are SQL expressions the user writes on purpose):
//! [`check_row_filter`] keeps each one inside its parentheses, and DDL is always sent through
//! the extended query protocol, which refuses a second statement.

use postgres_protocol::escape::escape_identifier;
use tokio_postgres::Client;

use super::PgError;

/// A name the server would not accept, or that ds-sync refuses for safety.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "invalid slot name '{0}': use 1 to 63 characters from a-z, 0-9 and _ (e.g. ds_sync_items)"
    )]
    Slot(String),
    #[error(
        "invalid publication name '{0}': use 1 to 63 characters from a-z, A-Z, 0-9 and _ (e.g. ds_sync)"
    )]
    Publication(String),
    #[error(
        "invalid column name '{0}' in a column list: names must be non-empty and at most 63 bytes"
    )]
    Column(String),
    #[error("row filter for {table} is not a single expression: {reason}")]
    RowFilter { table: String, reason: String },
}

/// Checks a replication slot name against the server's own rule (`[a-z0-9_]{1,63}`).
pub fn validate_slot_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NameError::Slot(name.to_string()))
    }
}

/// Checks a publication name. Case is kept (the name is always quoted), so only plain
/// identifier characters are allowed to avoid names that differ from what users type in SQL
/// only by quoting.
pub fn validate_publication_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NameError::Publication(name.to_string()))
    }
}

/// Quotes an identifier for SQL text (`a"b` becomes `"a""b"`).
pub fn quote(name: &str) -> String {
    escape_identifier(name)
}

/// Keeps a user-written row filter inside the `WHERE (...)` that wraps it: parentheses must
/// balance outside string literals and quoted identifiers, and no `;` or comment may appear
/// there.
pub fn check_row_filter(table: &str, expr: &str) -> Result<(), NameError> {
    let fail = |reason: &str| NameError::RowFilter {
        table: table.to_string(),
        reason: reason.to_string(),
    };
    if expr.trim().is_empty() {
        return Err(fail("the expression is empty"));
    }
    let bytes = expr.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err(fail("a quote is not closed")),
                        Some(&c) if c == q && bytes.get(i + 1) == Some(&q) => i += 2,
                        Some(&c) if c == q => break,
                        Some(_) => i += 1,
                    }
                }
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(fail("a ')' closes a parenthesis that was never opened"));
                }
            }
            b';' => return Err(fail("';' is not allowed")),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                return Err(fail("comments are not allowed"));
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                return Err(fail("comments are not allowed"));
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return Err(fail("parentheses do not balance"));
    }
    Ok(())
}

/// A table as the catalog names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub oid: u32,
    pub schema: String,
    pub name: String,
}

impl TableRef {
    /// `"schema"."name"`, safe to place in SQL text.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.name))
    }

    /// `schema.name` for people.
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Errors of table lookup.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(
        "table '{0}' does not exist (names are resolved like SQL: unquoted names fold to lower case, schemas follow search_path)"
    )]
    NoSuchTable(String),
    #[error("'{0}' is not a valid table name: {1}")]
    InvalidName(String, String),
    #[error("'{name}' is a {kind}, not a table: publications hold tables only")]
    NotATable { name: String, kind: &'static str },
    #[error(transparent)]
    Pg(#[from] PgError),
}

/// Why `to_regclass` found nothing: a name that does not parse (PostgreSQL 16 and 18 answer
/// NULL where 14 and 15 raised an error, so the text is parsed separately to say the same on
/// every version), or a table that does not exist.
async fn missing_or_invalid(client: &Client, name: &str) -> LookupError {
    match client.query_one("SELECT parse_ident($1)", &[&name]).await {
        Err(e)
            if matches!(
                e.code(),
                Some(
                    &tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE
                        | &tokio_postgres::error::SqlState::INVALID_NAME
                )
            ) =>
        {
            LookupError::InvalidName(name.to_string(), super::describe(&e))
        }
        _ => LookupError::NoSuchTable(name.to_string()),
    }
}

/// Resolves a table name the way SQL would (`items`, `public.items`, `"Mixed Case"`).
pub async fn resolve_table(client: &Client, name: &str) -> Result<TableRef, LookupError> {
    let row = client
        .query_opt(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1)",
            &[&name],
        )
        .await
        .map_err(|e| match e.code() {
            Some(&tokio_postgres::error::SqlState::INVALID_NAME) => {
                LookupError::InvalidName(name.to_string(), super::describe(&e))
            }
            _ => PgError::query(format!("looking up table '{name}'"), &e).into(),
        })?;
    let Some(row) = row else {
        return Err(missing_or_invalid(client, name).await);
    };
    let kind: String = row.get(3);
    let kind = match kind.as_str() {
        "r" | "p" => None,
        "v" => Some("view"),
        "m" => Some("materialized view"),
        "i" | "I" => Some("index"),
        "S" => Some("sequence"),
        "f" => Some("foreign table"),
        _ => Some("relation of another kind"),
    };
    if let Some(kind) = kind {
        return Err(LookupError::NotATable {
            name: name.to_string(),
            kind,
        });
    }
    Ok(TableRef {
        oid: row.get(0),
        schema: row.get(1),
        name: row.get(2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_the_server_rule() {
        for ok in ["a", "ds_sync", "slot_01", &"x".repeat(63)] {
            assert!(validate_slot_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Upper",
            "with-dash",
            "sp ace",
            "é",
            &"x".repeat(64),
            "a;drop",
        ] {
            let e = validate_slot_name(bad).unwrap_err();
            assert!(e.to_string().contains("a-z, 0-9 and _"), "{bad}: {e}");
        }
    }

    #[test]
    fn publication_names_allow_case_but_not_punctuation() {
        assert!(validate_publication_name("MyPub_1").is_ok());
        assert!(validate_publication_name("my pub").is_err());
        assert!(validate_publication_name("").is_err());
        assert!(validate_publication_name("p\"; drop").is_err());
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote("items"), "\"items\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn row_filters_stay_inside_their_parentheses() {
        assert!(check_row_filter("t", "status = 'open'").is_ok());
        assert!(check_row_filter("t", "(a > 1) AND b IN (1, 2)").is_ok());
        assert!(check_row_filter("t", "note <> 'it''s ) ; -- fine in a string'").is_ok());
        assert!(check_row_filter("t", "\"odd)col\" = 1").is_ok());
        for bad in [
            "",
            "a = 1) OR (true",
            "a = 1; DROP TABLE x",
            "a = 1 -- comment",
            "a = 1 /* c */",
            "(a = 1",
            "a = 'open",
        ] {
            assert!(check_row_filter("t", bad).is_err(), "{bad}");
        }
    }
}
