//! Which tables a snapshot reads, and how: the publication's tables (and its insert-only
//! companion's) with their row filters and column lists, each described the way pgoutput's
//! Relation message would describe it, so snapshot rows get the same `type`, key columns and
//! value conversion as streamed rows.
//!
//! Partitioned tables: ds-sync's publications publish them through their root
//! (`publish_via_partition_root`), so `pg_publication_tables` lists the partitioned table,
//! not its partitions; it is read as one table (`SELECT .. FROM root` reads every partition)
//! and keyed by its own primary key, exactly as its streamed changes are.

use std::sync::Arc;

use tokio_postgres::Client;

use crate::pg::PgError;
use crate::pg::ident::quote;
use crate::pgoutput::{Column, Relation, ReplicaIdentity};

use super::super::error::CaptureError;
use super::super::message::TableInfo;
use super::super::source;

/// One published table, ready to read.
#[derive(Debug, Clone)]
pub struct SnapshotTable {
    pub info: Arc<TableInfo>,
    /// `SELECT <published columns> FROM <table> [WHERE <row filter>]`.
    pub select: String,
    /// The planner's row estimate, for progress only.
    pub estimated_rows: u64,
}

/// The schema of ds-sync's bookkeeping tables.
pub const SIGNAL_SCHEMA: &str = "ds_sync";

/// The publication's tables; `$columns` are the column list and row filter, which exist
/// from PostgreSQL 15 on.
macro_rules! tables_sql {
    ($columns:literal) => {
        concat!(
            "SELECT DISTINCT ON (2, 3) c.oid, pt.schemaname::text, pt.tablename::text, ",
            $columns,
            ", CASE c.relkind WHEN 'p' THEN (SELECT coalesce(sum(greatest(l.reltuples, 0)), 0) \
                 FROM pg_partition_tree(c.oid) t JOIN pg_class l ON l.oid = t.relid \
                 WHERE t.isleaf)::int8 ELSE greatest(c.reltuples, 0)::int8 END, \
               c.relreplident::text \
             FROM pg_publication_tables pt \
             JOIN pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname = ANY($1::text[]) ORDER BY 2, 3"
        )
    };
}

const TABLES_SQL_15: &str = tables_sql!("pt.attnames::text[], pt.rowfilter");
const TABLES_SQL_14: &str = tables_sql!("NULL::text[], NULL::text");

/// Columns pgoutput sends, in table order, with the replica-identity flag it would set.
/// Generated columns are not replicated, so they are not read either.
const COLUMNS_SQL: &str = "\
    SELECT a.attname::text, a.atttypid, a.atttypmod, \
      CASE c.relreplident \
        WHEN 'f' THEN true \
        WHEN 'd' THEN coalesce(a.attnum = ANY((SELECT i.indkey FROM pg_index i \
                 WHERE i.indrelid = c.oid AND i.indisprimary)::int2[]), false) \
        WHEN 'i' THEN coalesce(a.attnum = ANY((SELECT i.indkey FROM pg_index i \
                 WHERE i.indrelid = c.oid AND i.indisreplident)::int2[]), false) \
        ELSE false END \
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
    WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
    ORDER BY a.attnum";

/// The tables of the publication and of its insert-only companion, largest first (so
/// parallel readers finish close together).
pub async fn published_tables(
    sql: &Client,
    publication: &str,
) -> Result<Vec<SnapshotTable>, CaptureError> {
    let version = crate::pg::server_version(sql).await?;
    let query = if version.has_row_filters() {
        TABLES_SQL_15
    } else {
        TABLES_SQL_14
    };
    let names = [
        publication.to_owned(),
        crate::publication::insert_only_name(publication),
    ];
    let rows = sql.query(query, &[&&names[..]]).await.map_err(|e| {
        PgError::query(
            format!("listing the tables of publication '{publication}'"),
            &e,
        )
    })?;
    let mut tables = Vec::with_capacity(rows.len());
    for row in rows {
        let oid: u32 = row.get(0);
        let schema: String = row.get(1);
        let name: String = row.get(2);
        // ds-sync's own signal table is published for capture, never snapshotted.
        if schema == SIGNAL_SCHEMA {
            continue;
        }
        let attnames: Option<Vec<String>> = row.get(3);
        let rowfilter: Option<String> = row.get(4);
        let estimated: i64 = row.get(5);
        let identity: String = row.get(6);
        let columns = columns(sql, oid, attnames.as_deref()).await?;
        let relation = Relation {
            oid,
            namespace: if schema == "pg_catalog" {
                String::new()
            } else {
                schema.clone()
            },
            name: name.clone(),
            replica_identity: ReplicaIdentity::from_byte(identity.bytes().next().unwrap_or(b'd'))
                .unwrap_or(ReplicaIdentity::Default),
            columns,
        };
        let pk = source::primary_key(sql, oid).await?;
        let select = select_sql(&schema, &name, &relation.columns, rowfilter.as_deref());
        tables.push(SnapshotTable {
            info: Arc::new(TableInfo::new(Arc::new(relation), pk)),
            select,
            estimated_rows: u64::try_from(estimated).unwrap_or(0),
        });
    }
    tables.sort_by_key(|t| std::cmp::Reverse(t.estimated_rows));
    Ok(tables)
}

async fn columns(
    sql: &Client,
    oid: u32,
    published: Option<&[String]>,
) -> Result<Vec<Column>, CaptureError> {
    let rows = sql
        .query(COLUMNS_SQL, &[&oid])
        .await
        .map_err(|e| PgError::query(format!("reading the columns of relation {oid}"), &e))?;
    Ok(rows
        .iter()
        .map(|r| Column {
            flags: u8::from(r.get::<_, bool>(3)),
            name: r.get(0),
            type_oid: r.get(1),
            type_modifier: r.get(2),
        })
        .filter(|c| published.is_none_or(|p| p.contains(&c.name)))
        .collect())
}

/// The query that reads a table's published rows and columns. The row filter is the
/// server's own text of the publication's expression (`pg_get_expr`), not user input.
pub fn select_sql(
    schema: &str,
    table: &str,
    columns: &[Column],
    row_filter: Option<&str>,
) -> String {
    let list = if columns.is_empty() {
        // A table without published columns still has rows; pgoutput sends them empty.
        String::new()
    } else {
        columns
            .iter()
            .map(|c| quote(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut sql = format!("SELECT {list} FROM {}.{}", quote(schema), quote(table));
    if let Some(filter) = row_filter {
        sql.push_str(&format!(" WHERE ({filter})"));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str) -> Column {
        Column {
            flags: 0,
            name: name.into(),
            type_oid: 25,
            type_modifier: -1,
        }
    }

    #[test]
    fn the_select_quotes_names_and_wraps_the_row_filter() {
        assert_eq!(
            select_sql("public", "Items", &[col("id"), col("a\"b")], None),
            "SELECT \"id\", \"a\"\"b\" FROM \"public\".\"Items\""
        );
        assert_eq!(
            select_sql("s", "t", &[col("id")], Some("(x > 1) OR (y = 2)")),
            "SELECT \"id\" FROM \"s\".\"t\" WHERE ((x > 1) OR (y = 2))"
        );
    }
}
