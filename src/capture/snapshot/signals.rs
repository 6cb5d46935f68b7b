//! `ds_sync.signals` (sql/005_signals.sql): snapshot requests and chunk watermarks, written on
//! a plain SQL connection and read back, in WAL order, from the replication stream.

use tokio_postgres::Client;

use crate::pg::PgError;
use crate::pg::ident::quote;
use crate::publication;

use super::super::error::CaptureError;
use super::catalog::SIGNAL_SCHEMA;

/// The signal table's name, as pgoutput's Relation message names it.
pub const SIGNAL_TABLE: &str = "signals";

/// One decoded signal row (the columns capture acts on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub id: i64,
    pub slot: String,
    pub kind: SignalKind,
    pub table: String,
}

/// What a signal row says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalKind {
    Request,
    Low,
    High,
    Done,
    /// A capture session's check that the slot decodes the publication's changes.
    Probe,
}

impl SignalKind {
    /// The `kind` text of a signal row.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Request => "snapshot",
            SignalKind::Low => "low",
            SignalKind::High => "high",
            SignalKind::Done => "done",
            SignalKind::Probe => "probe",
        }
    }

    pub fn parse(text: &str) -> Option<SignalKind> {
        Some(match text {
            "snapshot" => SignalKind::Request,
            "low" => SignalKind::Low,
            "high" => SignalKind::High,
            "done" => SignalKind::Done,
            "probe" => SignalKind::Probe,
            _ => return None,
        })
    }
}

/// Inserts a probe row for `slot` (see `capture::keepalive`); its id.
pub async fn probe(sql: &Client, slot: &str) -> Result<i64, PgError> {
    let row = sql
        .query_one(
            "INSERT INTO ds_sync.signals (slot_name, kind, table_name) \
             VALUES ($1, 'probe', '') RETURNING id",
            &[&slot],
        )
        .await
        .map_err(|e| PgError::query("inserting a probe signal", &e))?;
    Ok(row.get(0))
}

/// Reads a signal from an inserted row's text values, by column name (so a column added
/// later does not shift the others). `None` for a row that is not a well-formed signal.
pub fn parse_signal(columns: &[(&str, Option<&str>)]) -> Option<Signal> {
    let get = |name: &str| {
        columns
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| *v)
    };
    Some(Signal {
        id: get("id")?.parse().ok()?,
        slot: get("slot_name")?.to_string(),
        kind: SignalKind::parse(get("kind")?)?,
        table: get("table_name")?.to_string(),
    })
}

/// Whether a relation is the signal table.
pub fn is_signal_table(schema: &str, name: &str) -> bool {
    schema == SIGNAL_SCHEMA && name == SIGNAL_TABLE
}

/// Adds the signal table to the publication unless it is there (or the publication covers
/// all tables). Must happen before a signal is written, or pgoutput skips it.
pub async fn ensure_published(sql: &Client, publication_name: &str) -> Result<(), CaptureError> {
    let info = publication::show(sql, publication_name)
        .await
        .map_err(CaptureError::from)?;
    let listed = info
        .tables
        .iter()
        .any(|t| is_signal_table(&t.schema, &t.table));
    if info.all_tables || listed {
        return Ok(());
    }
    sql.batch_execute(&format!(
        "ALTER PUBLICATION {} ADD TABLE {}.{}",
        quote(publication_name),
        quote(SIGNAL_SCHEMA),
        quote(SIGNAL_TABLE)
    ))
    .await
    .map_err(|e| PgError::query("adding ds_sync.signals to the publication", &e))?;
    Ok(())
}

/// Inserts a snapshot request for `table` (`schema.name`); returns its id.
pub async fn request(sql: &Client, slot: &str, table: &str) -> Result<i64, PgError> {
    let row = sql
        .query_one(
            "INSERT INTO ds_sync.signals (slot_name, kind, table_name) \
             VALUES ($1, 'snapshot', $2) RETURNING id",
            &[&slot, &table],
        )
        .await
        .map_err(|e| PgError::query("inserting a snapshot request", &e))?;
    Ok(row.get(0))
}

/// A watermark or `done` row of a snapshot request, as [`mark`] writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark<'a> {
    pub slot: &'a str,
    pub kind: SignalKind,
    /// `schema.name` of the table the request snapshots.
    pub table: &'a str,
    pub request: i64,
    /// The key the chunk starts after (`None`: the table's start).
    pub start: Option<&'a [String]>,
    /// The chunk's last key (`None`: the chunk reaches the table's end).
    pub end: Option<&'a [String]>,
}

impl<'a> Mark<'a> {
    /// The low watermark of the chunk after `start`.
    pub fn low(slot: &'a str, table: &'a str, request: i64, start: Option<&'a [String]>) -> Self {
        Mark {
            slot,
            kind: SignalKind::Low,
            table,
            request,
            start,
            end: None,
        }
    }

    /// The high watermark of the chunk after `start`, which ends at `end`.
    pub fn high(
        slot: &'a str,
        table: &'a str,
        request: i64,
        start: Option<&'a [String]>,
        end: Option<&'a [String]>,
    ) -> Self {
        Mark {
            kind: SignalKind::High,
            end,
            ..Mark::low(slot, table, request, start)
        }
    }

    /// The request is finished (or skipped).
    pub fn done(slot: &'a str, table: &'a str, request: i64) -> Self {
        Mark {
            kind: SignalKind::Done,
            ..Mark::low(slot, table, request, None)
        }
    }
}

/// Inserts a watermark (or `done`) row; returns its id. Each call is its own transaction,
/// so its commit orders it in the WAL.
pub async fn mark(sql: &Client, mark: Mark<'_>) -> Result<i64, PgError> {
    let kind = mark.kind.as_str();
    let row = sql
        .query_one(
            "INSERT INTO ds_sync.signals \
             (slot_name, kind, table_name, request_id, chunk_start, chunk_end) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[
                &mark.slot,
                &kind,
                &mark.table,
                &mark.request,
                &mark.start,
                &mark.end,
            ],
        )
        .await
        .map_err(|e| PgError::query(format!("inserting a {kind} signal"), &e))?;
    Ok(row.get(0))
}

/// Whether request `request` has its `done` row.
pub async fn is_done(sql: &Client, request: i64) -> Result<bool, PgError> {
    let row = sql
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM ds_sync.signals WHERE request_id = $1 AND kind = 'done')",
            &[&request],
        )
        .await
        .map_err(|e| PgError::query("reading whether a snapshot request is done", &e))?;
    Ok(row.get(0))
}

/// A request not finished yet, with where it resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub request: i64,
    pub table: String,
    /// The start of the last chunk that began: every chunk before it was acknowledged by
    /// the DS server before it was issued, so this is where the request resumes.
    pub resume_after: Option<Vec<String>>,
}

/// The slot's requests without a `done` row, oldest first.
pub async fn unfinished(sql: &Client, slot: &str) -> Result<Vec<Unfinished>, PgError> {
    let rows = sql
        .query(
            "SELECT r.id, r.table_name, \
               (SELECT l.chunk_start FROM ds_sync.signals l \
                WHERE l.request_id = r.id AND l.kind = 'low' ORDER BY l.id DESC LIMIT 1) \
             FROM ds_sync.signals r \
             WHERE r.slot_name = $1 AND r.kind = 'snapshot' AND NOT EXISTS ( \
               SELECT 1 FROM ds_sync.signals d WHERE d.request_id = r.id AND d.kind = 'done') \
             ORDER BY r.id",
            &[&slot],
        )
        .await
        .map_err(|e| PgError::query("reading unfinished snapshot requests", &e))?;
    Ok(rows
        .iter()
        .map(|r| Unfinished {
            request: r.get(0),
            table: r.get(1),
            resume_after: r.get(2),
        })
        .collect())
}

/// Tables a snapshot of the slot covered (see `ds_sync.snapshot_tables`).
pub async fn snapshotted_tables(sql: &Client, slot: &str) -> Result<Vec<String>, PgError> {
    let rows = sql
        .query(
            "SELECT table_name FROM ds_sync.snapshot_tables WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| PgError::query("reading ds_sync.snapshot_tables", &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether the slot's `ds_sync.snapshot_tables` is complete (see
/// sql/008_snapshot_baselines.sql).
pub async fn has_baseline(sql: &Client, slot: &str) -> Result<bool, PgError> {
    let row = sql
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM ds_sync.snapshot_baselines WHERE slot_name = $1)",
            &[&slot],
        )
        .await
        .map_err(|e| PgError::query("reading ds_sync.snapshot_baselines", &e))?;
    Ok(row.get(0))
}

/// Records that the slot's `ds_sync.snapshot_tables` is complete.
pub async fn record_baseline(sql: &Client, slot: &str) -> Result<(), PgError> {
    sql.execute(
        "INSERT INTO ds_sync.snapshot_baselines (slot_name) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&slot],
    )
    .await
    .map_err(|e| PgError::query("recording a snapshot baseline", &e))?;
    Ok(())
}

/// Forgets the snapshots of tables that are not in `published` any more.
pub async fn forget_unpublished(
    sql: &Client,
    slot: &str,
    published: &[String],
) -> Result<(), PgError> {
    sql.execute(
        "DELETE FROM ds_sync.snapshot_tables WHERE slot_name = $1 AND table_name <> ALL($2)",
        &[&slot, &published],
    )
    .await
    .map_err(|e| PgError::query("forgetting snapshots of unpublished tables", &e))?;
    Ok(())
}

/// Records that a snapshot covers `table`.
pub async fn record_table(sql: &Client, slot: &str, table: &str) -> Result<(), PgError> {
    sql.execute(
        "INSERT INTO ds_sync.snapshot_tables (slot_name, table_name) VALUES ($1, $2) \
         ON CONFLICT DO NOTHING",
        &[&slot, &table],
    )
    .await
    .map_err(|e| PgError::query("recording a snapshotted table", &e))?;
    Ok(())
}

/// `SELECT` of the chunk after `after` (by key, ascending), at most `limit` rows, from the
/// table's published-columns query. Key values are quoted literals of unknown type, which
/// PostgreSQL reads as the key columns' types. Each row starts with a column that only the
/// first row fills: the statement's own snapshot (`txid_current_snapshot()`), which says
/// what transactions the read could not see (see `visibility`).
pub fn chunk_sql(select: &str, keys: &[&str], after: Option<&[String]>, limit: usize) -> String {
    let cols: Vec<String> = keys.iter().map(|k| format!("s.{}", quote(k))).collect();
    let cols = cols.join(", ");
    let mut sql = format!(
        "SELECT CASE WHEN row_number() OVER (ORDER BY {cols}) = 1 \
         THEN (SELECT txid_current_snapshot()::text) END, s.* FROM ({select}) s"
    );
    if let Some(after) = after {
        let values: Vec<String> = after.iter().map(|v| literal(v)).collect();
        sql.push_str(&format!(" WHERE ROW({cols}) > ROW({})", values.join(", ")));
    }
    sql.push_str(&format!(" ORDER BY {cols} LIMIT {limit}"));
    sql
}

/// A string literal (standard_conforming_strings is on since PostgreSQL 9.1).
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_queries_page_by_key() {
        let first = chunk_sql(
            "SELECT \"id\", \"v\" FROM \"public\".\"t\"",
            &["id"],
            None,
            10,
        );
        assert_eq!(
            first,
            "SELECT CASE WHEN row_number() OVER (ORDER BY s.\"id\") = 1 THEN (SELECT txid_current_snapshot()::text) END, \
             s.* FROM (SELECT \"id\", \"v\" FROM \"public\".\"t\") s ORDER BY s.\"id\" LIMIT 10"
        );
        let next = chunk_sql(
            "SELECT a, b FROM t",
            &["a", "b"],
            Some(&["1".into(), "it's".into()]),
            5,
        );
        assert_eq!(
            next,
            "SELECT CASE WHEN row_number() OVER (ORDER BY s.\"a\", s.\"b\") = 1 THEN (SELECT txid_current_snapshot()::text) END, \
             s.* FROM (SELECT a, b FROM t) s WHERE ROW(s.\"a\", s.\"b\") > ROW('1', 'it''s') \
             ORDER BY s.\"a\", s.\"b\" LIMIT 5"
        );
    }

    #[test]
    fn signals_are_read_by_column_name() {
        let row = [
            ("created_at", Some("2026-01-01")),
            ("kind", Some("high")),
            ("id", Some("42")),
            ("slot_name", Some("s")),
            ("table_name", Some("public.items")),
        ];
        let s = parse_signal(&row).unwrap();
        assert_eq!(
            (s.id, s.kind, s.table.as_str()),
            (42, SignalKind::High, "public.items")
        );
        assert!(parse_signal(&[("id", Some("x"))]).is_none());
        assert!(SignalKind::parse("other").is_none());
        for kind in [
            SignalKind::Request,
            SignalKind::Low,
            SignalKind::High,
            SignalKind::Done,
            SignalKind::Probe,
        ] {
            assert_eq!(SignalKind::parse(kind.as_str()), Some(kind));
        }
    }
}
