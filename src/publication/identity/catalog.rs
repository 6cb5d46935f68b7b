//! The catalog side of replica identity: reading [`RelationFacts`] and setting REPLICA
//! IDENTITY FULL.

use tokio_postgres::Client;

use crate::pg::PgError;

use super::{Identity, RelationFacts, TableFacts};

/// What the catalog says about relations: identity, key, replicated and TOASTable columns.
const FACTS_SQL: &str = "\
    SELECT c.oid, n.nspname::text, c.relname::text, c.relkind = 'p', c.relreplident::text, \
      CASE c.relreplident \
        WHEN 'f' THEN (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) \
        WHEN 'n' THEN NULL \
        ELSE (SELECT array_agg(a.attname::text ORDER BY k.n) \
            FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
            WHERE i.indrelid = c.oid AND CASE c.relreplident WHEN 'i' THEN i.indisreplident \
                                                            ELSE i.indisprimary END) \
      END, \
      coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
            AND a.attgenerated = ''), '{}'), \
      coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
            AND a.attgenerated = '' AND a.attstorage <> 'p'), '{}') \
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE c.oid = ANY($1::oid[]) \
    ORDER BY n.nspname, c.relname";

/// Reads [`RelationFacts`] of some relations.
async fn relations(sql: &Client, oids: &[u32]) -> Result<Vec<RelationFacts>, PgError> {
    let rows = sql
        .query(FACTS_SQL, &[&oids])
        .await
        .map_err(|e| PgError::query("reading the replica identity of tables", &e))?;
    Ok(rows
        .iter()
        .map(|r| RelationFacts {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            partitioned: r.get(3),
            identity: Identity::from_relreplident(r.get(4)),
            key: r.get(5),
            columns: r.get(6),
            toastable: r.get(7),
        })
        .collect())
}

/// The facts of one table and, when it is partitioned, of its leaf partitions.
///
/// # Errors
///
/// [`PgError`] when the catalog cannot be read; a table that does not exist (any more) is an
/// error naming its oid.
pub async fn table_facts(sql: &Client, oid: u32) -> Result<TableFacts, PgError> {
    let table = relations(sql, &[oid])
        .await?
        .pop()
        .ok_or_else(|| PgError::Query {
            context: format!("reading relation {oid}"),
            reason: "it does not exist".into(),
            code: None,
            transient: false,
        })?;
    let partitions = if table.partitioned {
        let leaves: Vec<u32> = sql
            .query(
                "SELECT relid::oid FROM pg_partition_tree($1::oid::regclass) WHERE isleaf",
                &[&oid],
            )
            .await
            .map_err(|e| {
                PgError::query(
                    format!("listing the partitions of {}", table.display_name()),
                    &e,
                )
            })?
            .iter()
            .map(|r| r.get::<_, u32>(0))
            .collect();
        relations(sql, &leaves).await?
    } else {
        Vec::new()
    };
    Ok(TableFacts { table, partitions })
}

/// How long `ALTER TABLE .. REPLICA IDENTITY FULL` may wait for its lock: while it waits,
/// the application's queries on the table queue behind it.
pub const ALTER_LOCK_TIMEOUT: &str = "5s";

/// Sets REPLICA IDENTITY FULL on each relation, logging every change. Each is its own
/// short transaction with a lock timeout.
///
/// # Errors
///
/// [`PgError`] naming the table, e.g. when its lock was not granted in time.
pub async fn set_full(
    sql: &Client,
    relations: &[&RelationFacts],
    why: &str,
) -> Result<(), PgError> {
    for relation in relations {
        let name = relation.display_name();
        let statement = format!(
            "BEGIN; SET LOCAL lock_timeout = '{ALTER_LOCK_TIMEOUT}'; \
             ALTER TABLE {} REPLICA IDENTITY FULL; COMMIT",
            relation.quoted()
        );
        if let Err(e) = sql.batch_execute(&statement).await {
            let _ = sql.batch_execute("ROLLBACK").await;
            return Err(PgError::query(
                format!(
                    "setting REPLICA IDENTITY FULL on {name} (waited at most \
                     {ALTER_LOCK_TIMEOUT} for its lock; retry, or run ALTER TABLE {name} \
                     REPLICA IDENTITY FULL yourself)"
                ),
                &e,
            ));
        }
        tracing::info!(
            table = %name,
            previous = %relation.identity,
            reason = why,
            "set replica identity full on an application table (--keep-replica-identity turns this off)"
        );
    }
    Ok(())
}
