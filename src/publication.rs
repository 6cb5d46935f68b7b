//! Publication management: which tables (and which rows and columns of them) the slot
//! decodes.
//!
//! `show` also reports each table's replica identity, because it decides what UPDATE and
//! DELETE messages carry: with `default` and no primary key, or `nothing`, deletes carry no
//! key at all; only `full` carries the whole old row (and so the values of unchanged TOAST
//! columns).

use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::pg::PgError;
use crate::pg::ident::{
    LookupError, NameError, TableRef, check_row_filter, quote, resolve_table,
    validate_publication_name,
};

/// Errors of publication management.
#[derive(Debug, thiserror::Error)]
pub enum PublicationError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("publication '{0}' does not exist")]
    NotFound(String),
    #[error("publication '{0}' already exists")]
    AlreadyExists(String),
    #[error("no tables given")]
    NoTables,
    #[error("--{option} names table '{table}', which is not in --tables")]
    OptionForUnlistedTable { option: &'static str, table: String },
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Pg(#[from] PgError),
}

impl PublicationError {
    /// A sentence telling the operator what to do next, when there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            PublicationError::NotFound(_) => {
                Some("Create it with `ds-sync publication create NAME --tables ...`.".into())
            }
            PublicationError::AlreadyExists(_) => Some(
                "Use `ds-sync publication add` to add tables to an existing publication.".into(),
            ),
            PublicationError::NoTables => Some("Name tables with --tables a,b.".into()),
            _ => None,
        }
    }
}

/// One table to publish, optionally with a row filter and a column list (PostgreSQL 15+).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSpec {
    pub table: String,
    pub row_filter: Option<String>,
    pub columns: Option<Vec<String>>,
}

/// Creates a publication for the given tables.
pub async fn create(
    client: &Client,
    name: &str,
    tables: &[TableSpec],
) -> Result<(), PublicationError> {
    validate_publication_name(name)?;
    let list = table_list(client, tables).await?;
    let sql = format!("CREATE PUBLICATION {} FOR TABLE {list}", quote(name));
    client
        .execute(sql.as_str(), &[])
        .await
        .map_err(|e| match e.code() {
            Some(&SqlState::DUPLICATE_OBJECT) => PublicationError::AlreadyExists(name.to_string()),
            _ => PgError::query(format!("creating publication '{name}'"), &e).into(),
        })?;
    Ok(())
}

/// Adds tables to a publication.
pub async fn add(
    client: &Client,
    name: &str,
    tables: &[TableSpec],
) -> Result<(), PublicationError> {
    alter(client, name, "ADD", tables).await
}

/// Removes tables from a publication (filters and column lists do not apply here).
pub async fn remove(
    client: &Client,
    name: &str,
    tables: &[String],
) -> Result<(), PublicationError> {
    let specs: Vec<TableSpec> = tables
        .iter()
        .map(|t| TableSpec {
            table: t.clone(),
            ..TableSpec::default()
        })
        .collect();
    alter(client, name, "DROP", &specs).await
}

async fn alter(
    client: &Client,
    name: &str,
    action: &str,
    tables: &[TableSpec],
) -> Result<(), PublicationError> {
    validate_publication_name(name)?;
    let list = table_list(client, tables).await?;
    let sql = format!("ALTER PUBLICATION {} {action} TABLE {list}", quote(name));
    client
        .execute(sql.as_str(), &[])
        .await
        .map_err(|e| match e.code() {
            Some(&SqlState::UNDEFINED_OBJECT) => PublicationError::NotFound(name.to_string()),
            _ => PgError::query(format!("altering publication '{name}'"), &e).into(),
        })?;
    Ok(())
}

/// Drops a publication.
pub async fn drop(client: &Client, name: &str) -> Result<(), PublicationError> {
    validate_publication_name(name)?;
    let sql = format!("DROP PUBLICATION {}", quote(name));
    client
        .execute(sql.as_str(), &[])
        .await
        .map_err(|e| match e.code() {
            Some(&SqlState::UNDEFINED_OBJECT) => PublicationError::NotFound(name.to_string()),
            _ => PgError::query(format!("dropping publication '{name}'"), &e).into(),
        })?;
    Ok(())
}

/// Builds `"s"."t" (cols) WHERE (filter), ...` from resolved, quoted names.
async fn table_list(client: &Client, tables: &[TableSpec]) -> Result<String, PublicationError> {
    if tables.is_empty() {
        return Err(PublicationError::NoTables);
    }
    let mut parts = Vec::with_capacity(tables.len());
    for spec in tables {
        let table = resolve_table(client, &spec.table).await?;
        parts.push(table_clause(&table, spec)?);
    }
    Ok(parts.join(", "))
}

fn table_clause(table: &TableRef, spec: &TableSpec) -> Result<String, PublicationError> {
    let mut clause = table.quoted();
    if let Some(columns) = &spec.columns {
        let mut quoted = Vec::with_capacity(columns.len());
        for c in columns {
            if c.is_empty() || c.len() > 63 {
                return Err(NameError::Column(c.clone()).into());
            }
            quoted.push(quote(c));
        }
        clause.push_str(&format!(" ({})", quoted.join(", ")));
    }
    if let Some(filter) = &spec.row_filter {
        check_row_filter(&table.display_name(), filter)?;
        clause.push_str(&format!(" WHERE ({filter})"));
    }
    Ok(clause)
}

/// What `show` reports about a publication.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PublicationInfo {
    pub name: String,
    pub all_tables: bool,
    /// Operations published: insert, update, delete, truncate.
    pub operations: Vec<String>,
    pub tables: Vec<PublishedTable>,
}

/// One table of a publication.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PublishedTable {
    pub schema: String,
    pub table: String,
    /// The row filter expression, as the server deparses it.
    pub row_filter: Option<String>,
    /// The column list; `None` means every column.
    pub columns: Option<Vec<String>>,
    /// `default`, `nothing`, `full` or `index`.
    pub replica_identity: String,
    /// The key the replica identity uses: the primary key or the chosen index, if any.
    pub identity_index: Option<String>,
    /// A warning when UPDATE/DELETE will not carry a usable key.
    pub warning: Option<String>,
}

/// Describes a publication.
pub async fn show(client: &Client, name: &str) -> Result<PublicationInfo, PublicationError> {
    validate_publication_name(name)?;
    let row = client
        .query_opt(
            "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate \
             FROM pg_publication WHERE pubname = $1::text",
            &[&name],
        )
        .await
        .map_err(|e| PgError::query(format!("reading publication '{name}'"), &e))?
        .ok_or_else(|| PublicationError::NotFound(name.to_string()))?;
    let mut operations = Vec::new();
    for (i, op) in ["insert", "update", "delete", "truncate"]
        .iter()
        .enumerate()
    {
        if row.get::<_, bool>(i + 1) {
            operations.push(op.to_string());
        }
    }
    Ok(PublicationInfo {
        name: name.to_string(),
        all_tables: row.get(0),
        operations,
        tables: published_tables(client, name).await?,
    })
}

/// Row filters and column lists exist from PostgreSQL 15 on; on 14 they are reported empty.
async fn published_tables(
    client: &Client,
    name: &str,
) -> Result<Vec<PublishedTable>, PublicationError> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| PgError::query("reading the server version", &e))?
        .get(0);
    let (filter, columns) = if version >= 150000 {
        (
            "pt.rowfilter",
            "CASE WHEN pr.prattrs IS NULL THEN NULL ELSE pt.attnames::text[] END",
        )
    } else {
        ("NULL::text", "NULL::text[]")
    };
    let sql = format!(
        "SELECT pt.schemaname::text, pt.tablename::text, {filter}, {columns}, \
                c.relreplident::text, \
                (SELECT i.indexrelid::regclass::text FROM pg_index i \
                  WHERE i.indrelid = c.oid AND ((c.relreplident = 'i' AND i.indisreplident) \
                     OR (c.relreplident = 'd' AND i.indisprimary))) \
         FROM pg_publication_tables pt \
         JOIN pg_namespace n ON n.nspname = pt.schemaname \
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
         JOIN pg_publication p ON p.pubname = pt.pubname \
         LEFT JOIN pg_publication_rel pr ON pr.prpubid = p.oid AND pr.prrelid = c.oid \
         WHERE pt.pubname = $1::text ORDER BY 1, 2"
    );
    let rows = client
        .query(sql.as_str(), &[&name])
        .await
        .map_err(|e| PgError::query(format!("reading the tables of publication '{name}'"), &e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let ident: String = r.get(4);
            let index: Option<String> = r.get(5);
            let (replica_identity, warning) = describe_identity(&ident, index.is_some());
            PublishedTable {
                schema: r.get(0),
                table: r.get(1),
                row_filter: r.get(2),
                columns: r.get(3),
                replica_identity,
                identity_index: index,
                warning,
            }
        })
        .collect())
}

fn describe_identity(relreplident: &str, has_index: bool) -> (String, Option<String>) {
    let name = match relreplident {
        "d" => "default",
        "n" => "nothing",
        "f" => "full",
        "i" => "index",
        other => other,
    };
    let warning = match (relreplident, has_index) {
        ("d", false) => Some(
            "no primary key: UPDATE and DELETE on this table fail while it is published; \
             add a primary key or set REPLICA IDENTITY FULL"
                .to_string(),
        ),
        ("n", _) => Some(
            "replica identity NOTHING: UPDATE and DELETE fail while it is published; \
             set REPLICA IDENTITY DEFAULT (with a primary key) or FULL"
                .to_string(),
        ),
        _ => None,
    };
    (name.to_string(), warning)
}

/// Parses `TABLE=VALUE` from `--row-filter` / `--columns`: the table is everything before the
/// first `=` outside double quotes, so quoted names may contain `=`.
pub fn split_table_option(raw: &str) -> Option<(String, String)> {
    let mut quoted = false;
    for (i, c) in raw.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '=' if !quoted => {
                let table = raw[..i].trim();
                let value = raw[i + 1..].trim();
                if table.is_empty() || value.is_empty() {
                    return None;
                }
                return Some((table.to_string(), value.to_string()));
            }
            _ => {}
        }
    }
    None
}

/// Combines `--tables`, `--row-filter T=EXPR` and `--columns T=a,b` into table specs.
pub fn build_specs(
    tables: &[String],
    row_filters: &[(String, String)],
    column_lists: &[(String, String)],
) -> Result<Vec<TableSpec>, PublicationError> {
    let mut specs: Vec<TableSpec> = tables
        .iter()
        .map(|t| TableSpec {
            table: t.clone(),
            ..TableSpec::default()
        })
        .collect();
    for (table, expr) in row_filters {
        let spec = specs
            .iter_mut()
            .find(|s| &s.table == table)
            .ok_or_else(|| PublicationError::OptionForUnlistedTable {
                option: "row-filter",
                table: table.clone(),
            })?;
        spec.row_filter = Some(expr.clone());
    }
    for (table, cols) in column_lists {
        let spec = specs
            .iter_mut()
            .find(|s| &s.table == table)
            .ok_or_else(|| PublicationError::OptionForUnlistedTable {
                option: "columns",
                table: table.clone(),
            })?;
        spec.columns = Some(cols.split(',').map(|c| c.trim().to_string()).collect());
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_options_split_at_the_first_unquoted_equals() {
        assert_eq!(
            split_table_option("orders=status = 'open'"),
            Some(("orders".into(), "status = 'open'".into()))
        );
        assert_eq!(
            split_table_option("\"a=b\"=x > 1"),
            Some(("\"a=b\"".into(), "x > 1".into()))
        );
        assert_eq!(split_table_option("orders"), None);
        assert_eq!(split_table_option("=x"), None);
        assert_eq!(split_table_option("t="), None);
    }

    #[test]
    fn specs_attach_filters_and_columns_to_listed_tables_only() {
        let specs = build_specs(
            &["a".into(), "b".into()],
            &[("b".into(), "x > 1".into())],
            &[("a".into(), "id, name".into())],
        )
        .unwrap();
        assert_eq!(specs[0].columns, Some(vec!["id".into(), "name".into()]));
        assert_eq!(specs[1].row_filter.as_deref(), Some("x > 1"));
        let err = build_specs(&["a".into()], &[("c".into(), "x".into())], &[]).unwrap_err();
        assert!(err.to_string().contains("'c'"), "{err}");
    }

    #[test]
    fn clause_quotes_names_and_wraps_filters() {
        let t = TableRef {
            oid: 1,
            schema: "public".into(),
            name: "Odd\"Name".into(),
        };
        let spec = TableSpec {
            table: "x".into(),
            row_filter: Some("a > 1".into()),
            columns: Some(vec!["id".into(), "A b".into()]),
        };
        assert_eq!(
            table_clause(&t, &spec).unwrap(),
            "\"public\".\"Odd\"\"Name\" (\"id\", \"A b\") WHERE (a > 1)"
        );
        let bad = TableSpec {
            row_filter: Some("a > 1) OR (true".into()),
            ..spec
        };
        assert!(table_clause(&t, &bad).is_err());
    }

    #[test]
    fn identity_warnings() {
        assert!(describe_identity("d", false).1.is_some());
        assert!(describe_identity("d", true).1.is_none());
        assert_eq!(describe_identity("f", false), ("full".into(), None));
        assert!(describe_identity("n", false).1.is_some());
    }
}
