//! Row changes written straight to JSON: the very bytes `serde_json::to_vec` gives for the
//! messages of [`build`](super::build), without building them first.
//!
//! Capture turns every row change into a message. Built as a `serde_json::Value` tree, a
//! row costs a map for the message, one for its headers and one for its values, every
//! column name and the `type` copied, the transaction's `lsn`, `timestamp` and `txid`
//! formatted again, and then the walk that serializes it and the frees: most of ds-sync's
//! CPU in a large transaction, on a machine it shares with PostgreSQL and often the DS
//! server. Here what a table's rows share (the column names in the order a JSON map writes
//! them, the `type`) is kept with its [`TableInfo`], what a transaction's rows share is
//! written once ([`TxHeaders`]), and a row adds only its key and values.
//!
//! [`plan`](super::plan) makes every decision (key, key change, old value, unchanged TOAST)
//! for both writers, so they differ only in how they write; tests and the `pgoutput` fuzz
//! target compare the bytes of the two.

use crate::values::{write_str, write_text_as_json};

use super::{Cell, ChangeRef, MessageError, Operation, Planned, TableInfo, TxMeta};
use super::{format_commit_time, plan};

/// The JSON shape of a table's messages: computed once per Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonShape {
    /// `,"type":"...": between the key (or old value) and the value.
    type_member: Vec<u8>,
    /// Each column's index and its `"name":`, sorted as a JSON map writes its keys (by
    /// name); of columns sharing a name (which PostgreSQL does not allow, but a Relation
    /// message could say) the later one first, since a map keeps the later one's value.
    columns: Vec<(usize, Vec<u8>)>,
}

impl JsonShape {
    pub(super) fn new(type_name: &str, names: &[&str]) -> JsonShape {
        let mut type_member = br#","type":"#.to_vec();
        write_str(type_name, &mut type_member);
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by(|&a, &b| names[a].cmp(names[b]).then(b.cmp(&a)));
        let columns = order
            .into_iter()
            .map(|i| {
                let mut name = Vec::with_capacity(names[i].len() + 3);
                write_str(names[i], &mut name);
                name.push(b':');
                (i, name)
            })
            .collect();
        JsonShape {
            type_member,
            columns,
        }
    }

    /// Appends `,"type":"..."`.
    pub(super) fn write_type(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.type_member);
    }

    /// Appends the sent values of a row as a JSON object, as `to_object` and `serde_json`
    /// write it: sorted by name, absent columns left out, a name written once (with the
    /// later sent column's value).
    pub(super) fn write_object(&self, table: &TableInfo, cells: &[Cell<'_>], out: &mut Vec<u8>) {
        let columns = &table.relation.columns;
        out.push(b'{');
        let mut last: Option<&[u8]> = None;
        for (index, name) in &self.columns {
            let text = match cells.get(*index).copied().unwrap_or(Cell::Absent) {
                Cell::Absent => continue,
                _ if last == Some(name.as_slice()) => continue,
                Cell::Null => None,
                Cell::Text(text) => Some(text),
            };
            if last.is_some() {
                out.push(b',');
            }
            last = Some(name);
            out.extend_from_slice(name);
            match text {
                Some(text) => write_text_as_json(columns[*index].type_oid, text, out),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
    }
}

/// The headers every message of one transaction shares, written once per transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxHeaders {
    /// `{"headers":{"lsn":"...","operation":`
    head: Vec<u8>,
    /// `,"timestamp":"...","txid":"..."`
    tail: Vec<u8>,
}

impl TxHeaders {
    pub fn new(meta: &TxMeta) -> TxHeaders {
        let mut head = br#"{"headers":{"lsn":"#.to_vec();
        write_str(&meta.commit_lsn.to_string(), &mut head);
        head.extend_from_slice(br#","operation":"#);
        let mut tail = br#","timestamp":"#.to_vec();
        write_str(&format_commit_time(meta.commit_time_micros), &mut tail);
        tail.extend_from_slice(br#","txid":"#);
        write_str(&meta.xid.to_string(), &mut tail);
        TxHeaders { head, tail }
    }
}

/// One message written as JSON, and what the caller needs besides the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRow<'t> {
    pub operation: Operation,
    pub json: Vec<u8>,
    /// The columns named in `headers.unchanged_toast` (empty when it is left out).
    pub unchanged_toast: Vec<&'t str>,
}

/// The messages of one row change as JSON: the same bytes, in the same order, as
/// serializing each message of [`build`](super::build).
///
/// # Errors
///
/// As [`build`](super::build).
pub fn encode<'t>(
    table: &'t TableInfo,
    change: &ChangeRef<'_>,
    headers: &TxHeaders,
) -> Result<Vec<EncodedRow<'t>>, MessageError> {
    let planned = plan(table, change)?;
    let mut rows = Vec::with_capacity(planned.len());
    for p in planned {
        rows.push(match p {
            Planned::Row {
                operation,
                key,
                new,
                old_value,
            } => {
                let message = Message {
                    operation,
                    key: &key,
                    old_value: old_value.as_deref(),
                    value: Some(&new),
                };
                write(table, headers, &message)
            }
            Planned::Delete { key, old } => {
                let message = Message {
                    operation: Operation::Delete,
                    key: &key,
                    old_value: old.full.then_some(old.cells.as_slice()),
                    value: None,
                };
                write(table, headers, &message)
            }
        });
    }
    Ok(rows)
}

/// What one message holds besides the transaction's headers and the table's `type`.
struct Message<'m, 'c> {
    operation: Operation,
    key: &'m str,
    old_value: Option<&'m [Cell<'c>]>,
    /// The new row; `None` for a delete, which has no `value`.
    value: Option<&'m [Cell<'c>]>,
}

/// The members in the order a JSON map writes them: `headers` (with `unchanged_toast`
/// naming the new row's absent columns), `key`, `old_value`, `type`, `value`.
fn write<'t>(
    table: &'t TableInfo,
    headers: &TxHeaders,
    message: &Message<'_, '_>,
) -> EncodedRow<'t> {
    let shape = &table.json;
    let unchanged_toast: Vec<&'t str> = match message.value {
        Some(new) => (table.relation.columns.iter().zip(new))
            .filter(|(_, cell)| **cell == Cell::Absent)
            .map(|(column, _)| column.name.as_str())
            .collect(),
        None => Vec::new(),
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&headers.head);
    write_str(message.operation.as_str(), &mut out);
    out.extend_from_slice(&headers.tail);
    if !unchanged_toast.is_empty() {
        out.extend_from_slice(br#","unchanged_toast":["#);
        for (n, name) in unchanged_toast.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            write_str(name, &mut out);
        }
        out.push(b']');
    }
    out.extend_from_slice(br#"},"key":"#);
    write_str(message.key, &mut out);
    if let Some(old) = message.old_value {
        out.extend_from_slice(br#","old_value":"#);
        shape.write_object(table, old, &mut out);
    }
    shape.write_type(&mut out);
    if let Some(new) = message.value {
        out.extend_from_slice(br#","value":"#);
        shape.write_object(table, new, &mut out);
    }
    out.push(b'}');
    EncodedRow {
        operation: message.operation,
        json: out,
        unchanged_toast,
    }
}
