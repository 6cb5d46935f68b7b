//! One row change in, State Protocol change messages out. Pure: no I/O, no catalog.
//!
//! ```text
//!  Insert ──────────────────────────────────▶ insert {type, key, value, headers}
//!  Update, same key ────────────────────────▶ update {type, key, value, old_value?, headers}
//!  Update, key changed ('K' or 'O' differs) ▶ delete {old key} then insert {new key}
//!  Delete ('K' or 'O') ─────────────────────▶ delete {type, key, old_value?, headers}
//!  TRUNCATE ────────────────────────────────▶ reset_message(), sent by the caller
//! ```
//!
//! A DS client materializes rows by (`type`, `key`) and applies messages in stream order, so
//! everything here serves one goal: replaying the messages must leave the client with exactly
//! the rows PostgreSQL has, and never with a value PostgreSQL did not send.
//!
//! * **Type** is the table name for schema `public`, `schema.table` otherwise.
//! * **Key columns** are the primary key (looked up by the caller) when the replica identity
//!   carries it, else the replica identity columns, else every column ([`TableInfo::new`]).
//!   The key must be computable for deletes too, which only carry the identity.
//! * **Key** encoding: [`KEY_ENCODING_DOC`].
//! * **Values** go through [`crate::values::text_to_json`] by column type; SQL NULL is `null`.
//! * **Unchanged TOAST**: [`UNCHANGED_TOAST_DOC`].
//! * **Deletes** have no `value` member at all (the State Protocol allows omitted or null;
//!   omitted cannot be mistaken for a row whose value is null). `old_value` is present only
//!   when the whole old row was sent (REPLICA IDENTITY FULL).
//! * **Key changes**: an update whose old key (from its 'K' or 'O' tuple) differs from its new
//!   key becomes a delete of the old key followed by an insert of the new one, so a client
//!   keyed by (type, key) does not keep the old row. Keys are compared as encoded, so a 'K'
//!   tuple sent only because a key column is TOASTed stays a plain update.
//! * **Headers**: `operation`, `txid` (the xid as a string), `timestamp` (commit time, RFC
//!   3339 UTC with microseconds), `lsn` (the commit LSN as PostgreSQL prints it, `0/16B3748`),
//!   and `unchanged_toast` when needed. All rows of a transaction share `txid`, `timestamp`
//!   and `lsn`.

use std::fmt;

use serde_json::{Map, Value};

use crate::lsn::Lsn;
use crate::pgoutput::{
    Begin, DecodeError, Delete, Insert, PgOutputMessage, TupleData, TupleValue, Update,
};
use crate::values::text_to_json;

mod direct;
mod identity;
mod snapshot;
mod time;

pub use direct::{EncodedRow, TxHeaders, encode};
pub use identity::{KEY_ENCODING_DOC, TableInfo};
pub use snapshot::SnapshotEncoder;
pub use time::{PG_EPOCH_UNIX_SECS, format_commit_time, pg_micros_at, pg_now_micros};

use identity::encode_key;

/// What happens to TOASTed columns an UPDATE did not change, for docs and `--help`.
pub const UNCHANGED_TOAST_DOC: &str = "\
An UPDATE does not resend a large (TOASTed) value it did not change. ds-sync never emits null \
for such a column: it takes the value from the old row, which PostgreSQL sends with REPLICA \
IDENTITY FULL (set where needed by the default --toast complete). Only when the old row was not \
sent (--toast partial, or WAL written before the table's replica identity became FULL) it leaves \
the column out of value and names it in headers.unchanged_toast, a JSON array of column names; \
the client must keep its previous value.";

/// The transaction a change belongs to, from its Begin message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxMeta {
    pub xid: u32,
    /// The LSN of the commit record (`Begin::final_lsn`).
    pub commit_lsn: Lsn,
    /// Microseconds since 2000-01-01 00:00:00 UTC (the PostgreSQL epoch).
    pub commit_time_micros: i64,
}

impl TxMeta {
    pub fn from_begin(begin: &Begin) -> TxMeta {
        TxMeta {
            xid: begin.xid,
            commit_lsn: Lsn::from_u64(begin.final_lsn),
            commit_time_micros: begin.commit_time,
        }
    }
}

/// The State Protocol `headers.operation` of a change message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Insert,
    Update,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A borrowed row change from the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeRef<'a> {
    Insert(&'a Insert),
    Update(&'a Update),
    Delete(&'a Delete),
}

impl<'a> ChangeRef<'a> {
    /// The row change a decoded message carries, or `None` for every other message.
    pub fn from_message(message: &'a PgOutputMessage) -> Option<ChangeRef<'a>> {
        match message {
            PgOutputMessage::Insert(insert) => Some(ChangeRef::Insert(insert)),
            PgOutputMessage::Update(update) => Some(ChangeRef::Update(update)),
            PgOutputMessage::Delete(delete) => Some(ChangeRef::Delete(delete)),
            _ => None,
        }
    }

    pub fn relation_oid(&self) -> u32 {
        match self {
            ChangeRef::Insert(insert) => insert.relation_oid,
            ChangeRef::Update(update) => update.relation_oid,
            ChangeRef::Delete(delete) => delete.relation_oid,
        }
    }
}

/// One State Protocol change message and the column values the router may use.
#[derive(Debug, Clone, PartialEq)]
pub struct RowMessage {
    /// `headers.operation` of `message`, typed.
    pub operation: Operation,
    /// The whole message object, ready to append.
    pub message: Value,
    /// Routing values that `message` does not hold (a delete's key-only old row); empty
    /// otherwise: [`RowMessage::columns`] then reads them from `message`, so a row's values
    /// are not copied for every message.
    pub extra_columns: Map<String, Value>,
}

impl RowMessage {
    /// Column values for routing: the new row's, plus old or key values for columns the new
    /// row lacks; for a delete, only the old or key values that were actually sent.
    pub fn columns(&self) -> &Map<String, Value> {
        match self
            .message
            .get("value")
            .or_else(|| self.message.get("old_value"))
        {
            Some(Value::Object(columns)) => columns,
            _ => &self.extra_columns,
        }
    }
}

/// Which tuple of a change an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TupleRole {
    /// `N`: the new row.
    New,
    /// `O`: the whole old row.
    Old,
    /// `K`: the old key.
    Key,
}

impl fmt::Display for TupleRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TupleRole::New => "new",
            TupleRole::Old => "old",
            TupleRole::Key => "key",
        })
    }
}

/// Why a row change could not become a message. All are definite: the same change fails
/// the same way again, so the caller should stop and report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("{tuple} tuple does not fit table {table}: {mismatch}")]
    ColumnCount {
        table: String,
        tuple: TupleRole,
        mismatch: DecodeError,
    },

    #[error(
        "column {column} of table {table} ({tuple} tuple) is not valid UTF-8; the replication \
         connection must use client_encoding UTF8"
    )]
    InvalidUtf8 {
        table: String,
        column: String,
        tuple: TupleRole,
    },

    #[error(
        "column {column} of table {table} ({tuple} tuple) arrived in binary format; ds-sync \
         reads text values only. Start replication without the binary option."
    )]
    BinaryValue {
        table: String,
        column: String,
        tuple: TupleRole,
    },

    #[error(
        "key column {column} of table {table} was not sent with the {operation}. Make the \
         primary key the replica identity, or set REPLICA IDENTITY FULL."
    )]
    KeyUnavailable {
        table: String,
        column: String,
        operation: Operation,
    },

    #[error("delete from table {table} carries neither a key nor an old tuple")]
    MissingOldTuple { table: String },

    #[error("snapshot row of table {table} has {got} columns, the table publishes {expected}")]
    SnapshotColumns {
        table: String,
        expected: usize,
        got: usize,
    },
}

/// Whether a snapshot control message opens or closes the initial copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotControl {
    Start,
    End,
}

impl SnapshotControl {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotControl::Start => "snapshot-start",
            SnapshotControl::End => "snapshot-end",
        }
    }
}

/// `{"headers":{"control":"reset"}}`: clients drop what they materialized (TRUNCATE).
pub fn reset_message() -> Value {
    control_message("reset")
}

/// `{"headers":{"control":"snapshot-start"}}` or `snapshot-end`, around an initial copy.
pub fn snapshot_control(kind: SnapshotControl) -> Value {
    control_message(kind.as_str())
}

fn control_message(control: &str) -> Value {
    serde_json::json!({ "headers": { "control": control } })
}

/// The messages for one row change: one, or two (delete then insert) when an update
/// changes the key. [`encode`] writes the same messages as JSON without building them.
pub fn build(
    table: &TableInfo,
    change: &ChangeRef<'_>,
    meta: &TxMeta,
) -> Result<Vec<RowMessage>, MessageError> {
    let planned = plan(table, change)?;
    Ok(planned
        .into_iter()
        .map(|p| match p {
            Planned::Row {
                operation,
                key,
                new,
                old_value,
            } => {
                let old_value = old_value.map(|cells| to_object(table, &cells));
                row_message(table, meta, operation, key, &new, old_value)
            }
            Planned::Delete { key, old } => delete_message(table, meta, key, &old),
        })
        .collect())
}

/// What a row change becomes, decided once for both writers ([`build`] and [`encode`]).
enum Planned<'a> {
    /// An insert or update: the new row (absent values filled from the old row where it
    /// has them), and the whole old row when an update of the same key carries it.
    Row {
        operation: Operation,
        key: String,
        new: Vec<Cell<'a>>,
        old_value: Option<Vec<Cell<'a>>>,
    },
    /// A delete of the old row's key.
    Delete { key: String, old: OldRow<'a> },
}

fn plan<'a>(table: &TableInfo, change: &ChangeRef<'a>) -> Result<Vec<Planned<'a>>, MessageError> {
    match *change {
        ChangeRef::Insert(insert) => {
            let new = read_tuple(table, &insert.new_tuple, TupleRole::New)?;
            let key = encode_key(table, &new, Operation::Insert)?;
            Ok(vec![Planned::Row {
                operation: Operation::Insert,
                key,
                new,
                old_value: None,
            }])
        }
        ChangeRef::Update(update) => plan_update(table, update),
        ChangeRef::Delete(delete) => {
            let old = match (&delete.old_tuple, &delete.key_tuple) {
                (Some(old), _) => OldRow::read(table, old, TupleRole::Old)?,
                (None, Some(key)) => OldRow::read(table, key, TupleRole::Key)?,
                (None, None) => {
                    let table = table.qualified_name();
                    return Err(MessageError::MissingOldTuple { table });
                }
            };
            let key = encode_key(table, &old.cells, Operation::Delete)?;
            Ok(vec![Planned::Delete { key, old }])
        }
    }
}

/// An insert message for a row read by a snapshot: the same `type`, key and values a
/// streamed insert of that row would carry, so a client materializing by (`type`, `key`)
/// sees one row. `headers` has `operation`, `lsn` (the snapshot's position) and
/// `timestamp` (when the snapshot was taken), and no `txid`.
pub fn snapshot_insert(
    table: &TableInfo,
    values: &[Option<&str>],
    lsn: Lsn,
    time_micros: i64,
) -> Result<RowMessage, MessageError> {
    if values.len() != table.relation.columns.len() {
        return Err(MessageError::SnapshotColumns {
            table: table.qualified_name(),
            expected: table.relation.columns.len(),
            got: values.len(),
        });
    }
    let cells: Vec<Cell<'_>> = values
        .iter()
        .map(|v| v.map_or(Cell::Null, Cell::Text))
        .collect();
    let key = encode_key(table, &cells, Operation::Insert)?;
    let mut message = row_message(
        table,
        &TxMeta {
            xid: 0,
            commit_lsn: lsn,
            commit_time_micros: time_micros,
        },
        Operation::Insert,
        key,
        &cells,
        None,
    );
    if let Some(headers) = message
        .message
        .get_mut("headers")
        .and_then(Value::as_object_mut)
    {
        headers.remove("txid");
    }
    Ok(message)
}

fn plan_update<'a>(
    table: &TableInfo,
    update: &'a Update,
) -> Result<Vec<Planned<'a>>, MessageError> {
    let old = match (&update.old_tuple, &update.key_tuple) {
        (Some(old), _) => Some(OldRow::read(table, old, TupleRole::Old)?),
        (None, Some(key)) => Some(OldRow::read(table, key, TupleRole::Key)?),
        (None, None) => None,
    };
    let mut new = read_tuple(table, &update.new_tuple, TupleRole::New)?;
    if let Some(old) = &old {
        fill_absent(&mut new, &old.cells);
    }
    let new_key = encode_key(table, &new, Operation::Update)?;
    let Some(old) = old else {
        return Ok(vec![Planned::Row {
            operation: Operation::Update,
            key: new_key,
            new,
            old_value: None,
        }]);
    };
    let old_key = encode_key(table, &old.cells, Operation::Update)?;
    if old_key != new_key {
        let insert = Planned::Row {
            operation: Operation::Insert,
            key: new_key,
            new,
            old_value: None,
        };
        return Ok(vec![Planned::Delete { key: old_key, old }, insert]);
    }
    let old_value = old.full.then_some(old.cells);
    Ok(vec![Planned::Row {
        operation: Operation::Update,
        key: new_key,
        new,
        old_value,
    }])
}

/// One column of a tuple, its text checked as UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell<'a> {
    Null,
    Text(&'a str),
    /// Not sent: an unchanged TOAST value, or a non-key column of a 'K' tuple.
    Absent,
}

/// The old side of an update or delete: a whole old row ('O') or only its key ('K').
struct OldRow<'a> {
    cells: Vec<Cell<'a>>,
    full: bool,
}

impl<'a> OldRow<'a> {
    fn read(
        table: &TableInfo,
        tuple: &'a TupleData,
        role: TupleRole,
    ) -> Result<OldRow<'a>, MessageError> {
        let cells = read_tuple(table, tuple, role)?;
        Ok(OldRow {
            cells,
            full: role == TupleRole::Old,
        })
    }
}

/// Checks a tuple against its relation and reads every value. In a 'K' tuple the columns
/// outside the replica identity are placeholders, not NULLs, so they read as absent.
fn read_tuple<'a>(
    table: &TableInfo,
    tuple: &'a TupleData,
    role: TupleRole,
) -> Result<Vec<Cell<'a>>, MessageError> {
    let relation = &table.relation;
    relation
        .check_tuple(tuple)
        .map_err(|mismatch| MessageError::ColumnCount {
            table: table.qualified_name(),
            tuple: role,
            mismatch,
        })?;
    let cells = relation.columns.iter().zip(&tuple.columns);
    cells
        .map(|(column, value)| match value {
            _ if role == TupleRole::Key && !column.is_key() => Ok(Cell::Absent),
            TupleValue::Null => Ok(Cell::Null),
            TupleValue::UnchangedToast => Ok(Cell::Absent),
            TupleValue::Text(bytes) => {
                std::str::from_utf8(bytes)
                    .map(Cell::Text)
                    .map_err(|_| MessageError::InvalidUtf8 {
                        table: table.qualified_name(),
                        column: column.name.clone(),
                        tuple: role,
                    })
            }
            TupleValue::Binary(_) => Err(MessageError::BinaryValue {
                table: table.qualified_name(),
                column: column.name.clone(),
                tuple: role,
            }),
        })
        .collect()
}

/// Takes each value the new row lacks (unchanged TOAST) from the old row, if it has it.
fn fill_absent<'a>(new: &mut [Cell<'a>], old: &[Cell<'a>]) {
    for (cell, old) in new.iter_mut().zip(old) {
        if *cell == Cell::Absent {
            *cell = *old;
        }
    }
}

/// The sent values of a row as a JSON object, absent columns left out.
fn to_object(table: &TableInfo, cells: &[Cell<'_>]) -> Map<String, Value> {
    let columns = table.relation.columns.iter().zip(cells);
    columns
        .filter_map(|(column, cell)| {
            let value = match *cell {
                Cell::Null => Value::Null,
                Cell::Text(text) => text_to_json(column.type_oid, text),
                Cell::Absent => return None,
            };
            Some((column.name.clone(), value))
        })
        .collect()
}

/// An insert or update message; the new row's absent columns are named in
/// `headers.unchanged_toast`.
fn row_message(
    table: &TableInfo,
    meta: &TxMeta,
    operation: Operation,
    key: String,
    new: &[Cell<'_>],
    old_value: Option<Map<String, Value>>,
) -> RowMessage {
    let columns = to_object(table, new);
    let unchanged: Vec<Value> = (table.relation.columns.iter().zip(new))
        .filter(|(_, cell)| **cell == Cell::Absent)
        .map(|(column, _)| Value::String(column.name.clone()))
        .collect();
    let mut headers = headers(operation, meta);
    if !unchanged.is_empty() {
        headers.insert("unchanged_toast".to_owned(), Value::Array(unchanged));
    }
    let mut message = Map::new();
    message.insert("type".to_owned(), Value::String(table.type_name.clone()));
    message.insert("key".to_owned(), Value::String(key));
    message.insert("value".to_owned(), Value::Object(columns));
    if let Some(old_value) = old_value {
        message.insert("old_value".to_owned(), Value::Object(old_value));
    }
    message.insert("headers".to_owned(), Value::Object(headers));
    RowMessage {
        operation,
        message: Value::Object(message),
        extra_columns: Map::new(),
    }
}

/// A delete of the old row's key: no `value`, `old_value` only for a whole old row.
fn delete_message(table: &TableInfo, meta: &TxMeta, key: String, old: &OldRow<'_>) -> RowMessage {
    let mut columns = to_object(table, &old.cells);
    let mut message = Map::new();
    message.insert("type".to_owned(), Value::String(table.type_name.clone()));
    message.insert("key".to_owned(), Value::String(key));
    if old.full {
        let old_value = std::mem::take(&mut columns);
        message.insert("old_value".to_owned(), Value::Object(old_value));
    }
    let headers = headers(Operation::Delete, meta);
    message.insert("headers".to_owned(), Value::Object(headers));
    RowMessage {
        operation: Operation::Delete,
        message: Value::Object(message),
        extra_columns: columns,
    }
}

fn headers(operation: Operation, meta: &TxMeta) -> Map<String, Value> {
    let mut headers = Map::new();
    let mut put = |name: &str, value: String| headers.insert(name.to_owned(), Value::String(value));
    put("operation", operation.as_str().to_owned());
    put("txid", meta.xid.to_string());
    put("timestamp", format_commit_time(meta.commit_time_micros));
    put("lsn", meta.commit_lsn.to_string());
    headers
}

#[cfg(test)]
mod recorded;
#[cfg(test)]
mod tests;
