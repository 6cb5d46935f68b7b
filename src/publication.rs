//! Publication management: which tables (and which rows and columns of them) the slot
//! decodes, and what those tables need so that publishing them never breaks the
//! application's writes.
//!
//! ```text
//!  --tables a,b       ──▶ publication NAME              publish insert, update, delete, truncate
//!  --insert-only log  ──▶ publication NAME_insert_only  publish insert, truncate
//!                          both WITH (publish_via_partition_root = true); one slot decodes both
//! ```
//!
//! * **Insert-only tables.** A publication's `publish` list applies to all its tables, and
//!   PostgreSQL refuses UPDATE and DELETE on a table without a replica identity while any of
//!   its publications publishes them. A table published insert-only therefore goes to a
//!   second publication, `NAME_insert_only`, that publishes only INSERT and TRUNCATE; capture
//!   asks pgoutput for both (`publication_names 'NAME,NAME_insert_only'`). It is created with
//!   `NAME`, before any slot decodes WAL: pgoutput before PostgreSQL 18 stops with "publication
//!   does not exist" when it decodes a change from before a publication it was asked for.
//! * **Partitioned tables** are published as the table the application writes to
//!   (`publish_via_partition_root = true`): changes to any partition arrive as the partitioned
//!   table's, with its name and key. A publication that already publishes partitions on their
//!   own is refused with the fix rather than changed, since that would move their streams.
//! * **Checks before changes** ([`identity`]): a table whose UPDATE and DELETE would fail once
//!   published is refused with the fix before the publication is touched; tables whose updates
//!   could lose TOASTed values get REPLICA IDENTITY FULL (logged), unless the caller accepts
//!   partial updates or forbids changes to tables.

pub mod identity;
mod membership;
mod show;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::pg::PgError;
use crate::pg::ident::{
    LookupError, NameError, TableRef, check_row_filter, quote, resolve_table,
    validate_publication_name,
};

pub use identity::{IdentityPolicy, Refusal, TOAST_MODE_DOC, ToastMode};
pub use membership::{add, create, ensure};
pub use show::{PublicationInfo, PublishedTable, show};

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
    #[error("--{option} names table '{table}', which is not in --tables or --insert-only")]
    OptionForUnlistedTable { option: &'static str, table: String },
    #[error("table {0} is named both in --tables and in --insert-only")]
    ListedTwice(String),
    #[error(
        "table {table} is published {now} in publication '{publication}'; it cannot also be \
         published {asked}"
    )]
    PublishedOtherwise {
        table: String,
        publication: String,
        now: &'static str,
        asked: &'static str,
    },
    #[error(
        "publication '{0}' publishes all tables (FOR ALL TABLES): no table can be added to it \
         or published insert-only beside it"
    )]
    AllTables(String),
    #[error(
        "publication '{publication}' publishes partitions as tables of their own \
         (publish_via_partition_root is off): changes to {tables} would reach streams named \
         after each partition, with the partition's name as type"
    )]
    PartitionsSeparately { publication: String, tables: String },
    #[error(
        "insert-only tables go to publication '{companion}', which does not exist yet, while \
         slot '{slot}' already decodes WAL written before it: PostgreSQL (before 18) stops \
         decoding when a publication it is asked for did not exist at the decoded position"
    )]
    CompanionAfterSlot { companion: String, slot: String },
    #[error(
        "a {feature} for table {table} needs PostgreSQL 15 or later; this server runs \
         PostgreSQL {version}"
    )]
    NeedsNewerServer {
        feature: &'static str,
        table: String,
        version: String,
    },
    #[error("{}", refused_message(.0))]
    Refused(Vec<Refusal>),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Pg(#[from] PgError),
}

fn refused_message(refusals: &[Refusal]) -> String {
    match refusals {
        [one] => one.to_string(),
        many => {
            let lines: Vec<String> = many.iter().map(|r| format!("  - {r}")).collect();
            format!(
                "{} tables cannot be published as asked:\n{}",
                many.len(),
                lines.join("\n")
            )
        }
    }
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
            PublicationError::PublishedOtherwise { table, publication, .. } => Some(format!(
                "Remove it first (`ds-sync publication remove {publication} --tables {table}` \
                 removes it from either), then add it the other way."
            )),
            PublicationError::AllTables(_) => Some(
                "Use a publication of listed tables (ds-sync publication create NAME --tables ...).".into(),
            ),
            PublicationError::PartitionsSeparately { publication, .. } => Some(format!(
                "Publish partitions through their partitioned table: ALTER PUBLICATION \
                 \"{publication}\" SET (publish_via_partition_root = true) (capture then sends \
                 their changes as the partitioned table's, and snapshots it when it first sees \
                 it); or remove the partitioned tables from the publication."
            )),
            PublicationError::CompanionAfterSlot { slot, .. } => Some(format!(
                "Give the table a primary key or a replica identity and publish it with \
                 --tables instead; or drop the slot (`ds-sync slot drop {slot}`) and run again \
                 with --insert-only: ds-sync then creates the publication before the slot and \
                 takes a new snapshot."
            )),
            PublicationError::NeedsNewerServer { .. } => Some(
                "Publish the whole table (drop --row-filter and --columns for it), or upgrade \
                 the server to PostgreSQL 15 or later."
                    .into(),
            ),
            PublicationError::Refused(refusals) => {
                let hints: Vec<String> = refusals.iter().map(Refusal::hint).collect();
                Some(hints.join("\n"))
            }
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

impl TableSpec {
    /// A whole table, every row and column.
    pub fn named(table: &str) -> TableSpec {
        TableSpec {
            table: table.to_owned(),
            ..TableSpec::default()
        }
    }
}

/// Tables to publish and what may be done to them.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Published with inserts, updates, deletes and TRUNCATE.
    pub tables: Vec<TableSpec>,
    /// Published with inserts and TRUNCATE only (the companion publication).
    pub insert_only: Vec<TableSpec>,
    pub policy: IdentityPolicy,
}

/// What a create, add or ensure did, for the command's output and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub created: bool,
    /// Tables added to either publication.
    pub added: Vec<String>,
    /// Tables and partitions set to REPLICA IDENTITY FULL.
    pub full: Vec<String>,
    /// `publish_via_partition_root` was turned on.
    pub via_root: bool,
}

/// Suffix of the companion publication of insert-only tables.
pub const INSERT_ONLY_SUFFIX: &str = "_insert_only";

/// The companion publication of `name`: its insert-only tables.
pub fn insert_only_name(name: &str) -> String {
    format!("{name}{INSERT_ONLY_SUFFIX}")
}

/// The publications a slot decodes for `name`: `name`, and its insert-only companion when
/// it exists.
pub async fn decoded_names(client: &Client, name: &str) -> Result<Vec<String>, PublicationError> {
    let companion = insert_only_name(name);
    let mut names = vec![name.to_owned()];
    if show::flags(client, &companion).await?.is_some() {
        names.push(companion);
    }
    Ok(names)
}

/// Removes tables from a publication or its insert-only companion, wherever each is
/// (filters and column lists do not apply here).
pub async fn remove(
    client: &Client,
    name: &str,
    tables: &[String],
) -> Result<(), PublicationError> {
    let info = show(client, name).await?;
    let companion = insert_only_name(name);
    for raw in tables {
        let table = resolve_table(client, raw).await?;
        let owner = match info.table(&table.schema, &table.name) {
            Some(t) if t.insert_only => companion.as_str(),
            _ => name,
        };
        let sql = format!(
            "ALTER PUBLICATION {} DROP TABLE {}",
            quote(owner),
            table.quoted()
        );
        execute(client, &sql, owner, "altering").await?;
    }
    Ok(())
}

/// Drops a publication and its insert-only companion.
pub async fn drop(client: &Client, name: &str) -> Result<(), PublicationError> {
    validate_publication_name(name)?;
    let companion = insert_only_name(name);
    execute(
        client,
        &format!("DROP PUBLICATION {}", quote(name)),
        name,
        "dropping",
    )
    .await?;
    if show::flags(client, &companion).await?.is_some() {
        let sql = format!("DROP PUBLICATION {}", quote(&companion));
        execute(client, &sql, &companion, "dropping").await?;
    }
    Ok(())
}

/// Runs one publication statement (extended protocol: a single statement only), mapping
/// the server's codes for a missing or duplicate publication.
async fn execute(
    client: &Client,
    sql: &str,
    publication: &str,
    doing: &str,
) -> Result<(), PublicationError> {
    client.execute(sql, &[]).await.map_err(|e| match e.code() {
        Some(&SqlState::UNDEFINED_OBJECT) => PublicationError::NotFound(publication.into()),
        Some(&SqlState::DUPLICATE_OBJECT) => PublicationError::AlreadyExists(publication.into()),
        _ => PgError::query(format!("{doing} publication '{publication}'"), &e).into(),
    })?;
    Ok(())
}

/// `"s"."t" (cols) WHERE (filter)` from a resolved, quoted name.
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

/// Combines `--tables` and `--insert-only` with `--row-filter T=EXPR` and `--columns T=a,b`
/// into a request.
pub fn build_request(
    tables: &[String],
    insert_only: &[String],
    row_filters: &[(String, String)],
    column_lists: &[(String, String)],
    policy: IdentityPolicy,
) -> Result<Request, PublicationError> {
    let all = build_specs(&[tables, insert_only].concat(), row_filters, column_lists)?;
    let (insert_only, tables) = all
        .into_iter()
        .partition(|spec| insert_only.contains(&spec.table));
    Ok(Request {
        tables,
        insert_only,
        policy,
    })
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
}
