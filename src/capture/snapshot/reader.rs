//! Reading one table inside the exported snapshot: `COPY (SELECT ...) TO STDOUT` on a
//! connection of its own, each line turned into a serialized insert message and its
//! stream, handed to the writer in chunks over a bounded channel (a full channel stops the
//! COPY, so memory stays bounded whatever the table's size).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;

use crate::lsn::Lsn;
use crate::pg::{PgError, PgTarget};

use super::super::error::CaptureError;
use super::super::message::{self, RowMessage, SnapshotEncoder};
use super::super::route::Router;
use super::catalog::SnapshotTable;
use super::copy_text::parse_line;
use super::error::SnapshotError;

/// `application_name` of reader connections.
pub const APPLICATION_NAME: &str = "ds-sync/snapshot-reader";

/// Rows per chunk sent to the writer.
const CHUNK_ROWS: usize = 500;
/// Room a row's message takes beyond its COPY text (headers, names, quotes), reserved up
/// front so that most rows are written without growing their buffer.
const JSON_OVERHEAD: usize = 256;

/// One row, ready to queue.
#[derive(Debug)]
pub struct SnapRow {
    /// The table's qualified name (for the table → stream registry).
    pub table: Arc<str>,
    pub stream: Arc<str>,
    pub json: Bytes,
}

/// What readers tell the writer.
#[derive(Debug)]
pub enum Item {
    /// The table (first) writes to this stream (second) whatever its rows: it gets its
    /// snapshot frame even when the table is empty.
    Touch(Arc<str>, String),
    Rows(Vec<SnapRow>),
}

/// Where and how readers read.
#[derive(Debug, Clone)]
pub struct ReadContext {
    pub target: PgTarget,
    /// `SET TRANSACTION SNAPSHOT` name; `None` reads in a snapshot of the reader's own.
    pub snapshot: Option<String>,
    pub router: Arc<Router>,
    /// `headers.lsn` of snapshot rows.
    pub lsn: Lsn,
    /// `headers.timestamp` of snapshot rows (µs since 2000-01-01).
    pub time_micros: i64,
}

/// Reads every published row of `table` into `tx`.
pub async fn read_table(
    ctx: &ReadContext,
    table: &SnapshotTable,
    tx: &mpsc::Sender<Item>,
) -> Result<u64, CaptureError> {
    let name = table.info.qualified_name();
    let sql = ctx
        .target
        .with_application_name(APPLICATION_NAME)
        .connect()
        .await?;
    sql.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| PgError::query(format!("opening the snapshot to read {name}"), &e))?;
    if let Some(snapshot) = &ctx.snapshot {
        let set = format!("SET TRANSACTION SNAPSHOT {}", snapshot_literal(snapshot)?);
        sql.batch_execute(&set).await.map_err(|e| {
            // The exporting session ended (lost connection): the snapshot is taken again.
            if e.code() == Some(&SqlState::INVALID_PARAMETER_VALUE) {
                CaptureError::from(SnapshotError::ExportGone {
                    table: name.clone(),
                    server: crate::pg::describe(&e),
                })
            } else {
                PgError::query(format!("opening the snapshot to read {name}"), &e).into()
            }
        })?;
    }
    let table_name: Arc<str> = Arc::from(name.as_str());
    let fixed: Option<Arc<str>> = fixed_stream(&ctx.router, table).map(Arc::from);
    if let Some(stream) = &fixed {
        send(tx, Item::Touch(Arc::clone(&table_name), stream.to_string())).await?;
    }
    // Rows of a table whose stream does not depend on their values are written straight to
    // JSON; the others are built as messages for the router to read.
    let encoder = fixed
        .as_ref()
        .map(|_| SnapshotEncoder::new(&table.info, ctx.lsn, ctx.time_micros));
    let fast = fixed.as_ref().zip(encoder.as_ref());
    let copy = format!("COPY ({}) TO STDOUT", table.select);
    let stream = sql
        .copy_out(copy.as_str())
        .await
        .map_err(|e| PgError::query(format!("reading {name}"), &e))?;
    futures_util::pin_mut!(stream);
    let mut pending = BytesMut::new();
    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
    let mut rows = 0u64;
    while let Some(data) = stream.next().await {
        let data = data.map_err(|e| PgError::query(format!("reading {name}"), &e))?;
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line = pending.split_to(end + 1);
            chunk.push(row(ctx, table, &table_name, &line[..end], fast)?);
            rows += 1;
            if chunk.len() >= CHUNK_ROWS {
                send(tx, Item::Rows(std::mem::take(&mut chunk))).await?;
            }
        }
    }
    if !chunk.is_empty() {
        send(tx, Item::Rows(chunk)).await?;
    }
    let _ = sql.batch_execute("COMMIT").await;
    Ok(rows)
}

/// One COPY line as a row ready to queue: through `fast` (the table's fixed stream and its
/// encoder) when there is one, else built as a message and routed.
fn row(
    ctx: &ReadContext,
    table: &SnapshotTable,
    table_name: &Arc<str>,
    line: &[u8],
    fast: Option<(&Arc<str>, &SnapshotEncoder)>,
) -> Result<SnapRow, CaptureError> {
    let texts = parse_line(line).map_err(|source| SnapshotError::BadCopyLine {
        table: table.info.qualified_name(),
        source,
    })?;
    let values: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
    let values = if table.info.relation.columns.is_empty() {
        Vec::new()
    } else {
        values
    };
    if let Some((stream, encoder)) = fast {
        let mut json = Vec::with_capacity(line.len() + JSON_OVERHEAD);
        encoder.encode(&values, &mut json)?;
        return Ok(SnapRow {
            table: Arc::clone(table_name),
            stream: Arc::clone(stream),
            json: Bytes::from(json),
        });
    }
    let msg = message::snapshot_insert(&table.info, &values, ctx.lsn, ctx.time_micros)?;
    let stream = ctx.router.stream_for(&table.info, &msg)?;
    let json = serde_json::to_vec(&msg.message).map_err(|source| SnapshotError::Serialize {
        table: table.info.qualified_name(),
        source,
    })?;
    Ok(SnapRow {
        table: Arc::clone(table_name),
        stream: Arc::from(stream),
        json: Bytes::from(json),
    })
}

/// The table's stream when its template does not depend on row values.
fn fixed_stream(router: &Router, table: &SnapshotTable) -> Option<String> {
    let empty = RowMessage {
        operation: message::Operation::Insert,
        message: serde_json::Value::Null,
        extra_columns: serde_json::Map::new(),
    };
    router.stream_for(&table.info, &empty).ok()
}

async fn send(tx: &mpsc::Sender<Item>, item: Item) -> Result<(), CaptureError> {
    tx.send(item).await.map_err(|_| CaptureError::Interrupted)
}

/// Snapshot names are server-made (`00000003-0000001B-1`); anything else is refused rather
/// than quoted into SQL.
pub fn snapshot_literal(name: &str) -> Result<String, SnapshotError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(SnapshotError::BadSnapshotName {
            name: name.to_owned(),
        });
    }
    Ok(format!("'{name}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_server_made_snapshot_names_are_used() {
        assert_eq!(
            snapshot_literal("00000003-0000001B-1").unwrap(),
            "'00000003-0000001B-1'"
        );
        assert!(snapshot_literal("x'; DROP TABLE t; --").is_err());
        assert!(snapshot_literal("").is_err());
    }
}
