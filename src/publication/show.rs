//! `publication show`: what a publication and its insert-only companion publish, with each
//! table's replica identity, because it decides what UPDATE and DELETE messages carry (and
//! whether the application's UPDATE and DELETE work at all): with `default` and no primary
//! key, or `nothing`, PostgreSQL refuses them while the table is published with updates and
//! deletes; only `full` carries the whole old row (and so the values of unchanged TOAST
//! columns).

use serde::Serialize;
use tokio_postgres::Client;

use crate::pg::PgError;
use crate::pg::ident::validate_publication_name;

use super::{PublicationError, insert_only_name};

/// What `show` reports about a publication.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PublicationInfo {
    pub name: String,
    pub all_tables: bool,
    /// Operations published: insert, update, delete, truncate.
    pub operations: Vec<String>,
    /// Whether changes to partitions are published as their partitioned table's
    /// (`publish_via_partition_root`).
    pub via_root: bool,
    /// The companion publication of insert-only tables, when it exists.
    pub insert_only_publication: Option<String>,
    /// The tables of both, insert-only ones flagged.
    pub tables: Vec<PublishedTable>,
}

impl PublicationInfo {
    /// Whether the publication publishes UPDATE.
    pub fn updates(&self) -> bool {
        self.operations.iter().any(|o| o == "update")
    }

    /// Whether the publication publishes DELETE.
    pub fn deletes(&self) -> bool {
        self.operations.iter().any(|o| o == "delete")
    }

    /// The table `schema.name`, if either publication has it.
    pub fn table(&self, schema: &str, name: &str) -> Option<&PublishedTable> {
        self.tables
            .iter()
            .find(|t| t.schema == schema && t.table == name)
    }
}

/// One table of a publication.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PublishedTable {
    pub schema: String,
    pub table: String,
    /// Published insert-only (in the companion publication): inserts and TRUNCATE only.
    pub insert_only: bool,
    /// A partitioned table (published as itself, its partitions' changes included).
    pub partitioned: bool,
    /// A partition (published separately from its partitioned table).
    pub partition: bool,
    /// The row filter expression, as the server deparses it.
    pub row_filter: Option<String>,
    /// The column list; `None` means every column.
    pub columns: Option<Vec<String>>,
    /// The columns the row filter reads (`None` without a filter).
    pub filter_columns: Option<Vec<String>>,
    /// `default`, `nothing`, `full` or `index`.
    pub replica_identity: String,
    /// The key the replica identity uses: the primary key or the chosen index, if any.
    pub identity_index: Option<String>,
    /// A warning when UPDATE/DELETE will not carry a usable key.
    pub warning: Option<String>,
}

/// The columns the row filter of `pr` (a `pg_publication_rel` row of relation `c`) reads:
/// the attribute numbers of its `VAR` nodes, by name. PostgreSQL 15+ (`prqual`).
pub(super) const FILTER_COLUMNS_SQL: &str = "\
    (SELECT array_agg(DISTINCT a.attname::text) FROM pg_attribute a \
      WHERE a.attrelid = c.oid AND pr.prqual IS NOT NULL AND a.attnum::text = ANY (ARRAY( \
        SELECT (regexp_matches(pr.prqual::text, ':varattno (\\d+)', 'g'))[1])))";

/// The flags of a publication, `None` when it does not exist.
pub(super) struct Flags {
    pub all_tables: bool,
    pub operations: Vec<String>,
    pub via_root: bool,
}

/// Reads `pg_publication` for `name`.
pub(super) async fn flags(client: &Client, name: &str) -> Result<Option<Flags>, PgError> {
    let row = client
        .query_opt(
            "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot \
             FROM pg_publication WHERE pubname = $1::text",
            &[&name],
        )
        .await
        .map_err(|e| PgError::query(format!("reading publication '{name}'"), &e))?;
    Ok(row.map(|row| {
        let operations = ["insert", "update", "delete", "truncate"]
            .iter()
            .enumerate()
            .filter(|(i, _)| row.get::<_, bool>(i + 1))
            .map(|(_, op)| op.to_string())
            .collect();
        Flags {
            all_tables: row.get(0),
            operations,
            via_root: row.get(5),
        }
    }))
}

/// Describes a publication and its insert-only companion.
pub async fn show(client: &Client, name: &str) -> Result<PublicationInfo, PublicationError> {
    validate_publication_name(name)?;
    let main = flags(client, name)
        .await?
        .ok_or_else(|| PublicationError::NotFound(name.to_string()))?;
    let mut tables = published_tables(client, name, false).await?;
    let companion = insert_only_name(name);
    let companion = match flags(client, &companion).await? {
        Some(_) => {
            tables.extend(published_tables(client, &companion, true).await?);
            Some(companion)
        }
        None => None,
    };
    tables.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
    Ok(PublicationInfo {
        name: name.to_string(),
        all_tables: main.all_tables,
        operations: main.operations,
        via_root: main.via_root,
        insert_only_publication: companion,
        tables,
    })
}

/// Row filters and column lists exist from PostgreSQL 15 on; on 14 they are reported empty.
async fn published_tables(
    client: &Client,
    name: &str,
    insert_only: bool,
) -> Result<Vec<PublishedTable>, PublicationError> {
    let version = crate::pg::server_version(client).await?;
    let (filter, columns, filter_columns) = if version.has_row_filters() {
        (
            "pt.rowfilter",
            "CASE WHEN pr.prattrs IS NULL THEN NULL ELSE pt.attnames::text[] END",
            FILTER_COLUMNS_SQL,
        )
    } else {
        ("NULL::text", "NULL::text[]", "NULL::text[]")
    };
    let sql = format!(
        "SELECT pt.schemaname::text, pt.tablename::text, {filter}, {columns}, \
                c.relreplident::text, \
                (SELECT i.indexrelid::regclass::text FROM pg_index i \
                  WHERE i.indrelid = c.oid AND ((c.relreplident = 'i' AND i.indisreplident) \
                     OR (c.relreplident = 'd' AND i.indisprimary))), \
                c.relkind = 'p', c.relispartition, {filter_columns} \
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
                insert_only,
                partitioned: r.get(6),
                partition: r.get(7),
                row_filter: r.get(2),
                columns: r.get(3),
                filter_columns: r.get(8),
                replica_identity,
                identity_index: index,
                // Inserts need no identity; a partitioned table's is checked on partitions.
                warning: warning.filter(|_| !insert_only && !r.get::<_, bool>(6)),
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
             add a primary key, set REPLICA IDENTITY FULL, or publish it insert-only"
                .to_string(),
        ),
        ("i", false) => Some(
            "its replica identity index is gone: UPDATE and DELETE on this table fail while \
             it is published; set REPLICA IDENTITY DEFAULT (with a primary key) or FULL"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_warnings() {
        assert!(describe_identity("d", false).1.is_some());
        assert!(describe_identity("d", true).1.is_none());
        assert_eq!(describe_identity("f", false), ("full".into(), None));
        assert!(describe_identity("n", false).1.is_some());
        assert!(describe_identity("i", false).1.is_some());
    }
}
