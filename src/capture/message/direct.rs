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

use crate::values::write_text_as_json;

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
        put_str(&mut type_member, type_name);
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by(|&a, &b| names[a].cmp(names[b]).then(b.cmp(&a)));
        let columns = order
            .into_iter()
            .map(|i| {
                let mut name = Vec::with_capacity(names[i].len() + 3);
                put_str(&mut name, names[i]);
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
            let cell = cells.get(*index).copied().unwrap_or(Cell::Absent);
            if cell == Cell::Absent || last == Some(name.as_slice()) {
                continue;
            }
            if last.is_some() {
                out.push(b',');
            }
            last = Some(name);
            out.extend_from_slice(name);
            match cell {
                Cell::Text(text) => write_text_as_json(columns[*index].type_oid, text, out),
                Cell::Null | Cell::Absent => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
    }
}

/// The headers every message of one transaction shares, written once per transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxHeaders {
    meta: TxMeta,
    /// `{"headers":{"lsn":"...","operation":`
    head: Vec<u8>,
    /// `,"timestamp":"...","txid":"..."`
    tail: Vec<u8>,
}

impl TxHeaders {
    pub fn new(meta: &TxMeta) -> TxHeaders {
        let mut head = br#"{"headers":{"lsn":"#.to_vec();
        put_str(&mut head, &meta.commit_lsn.to_string());
        head.extend_from_slice(br#","operation":"#);
        let mut tail = br#","timestamp":"#.to_vec();
        put_str(&mut tail, &format_commit_time(meta.commit_time_micros));
        tail.extend_from_slice(br#","txid":"#);
        put_str(&mut tail, &meta.xid.to_string());
        TxHeaders {
            meta: *meta,
            head,
            tail,
        }
    }

    /// The transaction these headers are of.
    pub fn meta(&self) -> &TxMeta {
        &self.meta
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
            } => write_row(table, headers, operation, &key, &new, old_value.as_deref()),
            Planned::Delete { key, old } => {
                let old_value = old.full.then_some(old.cells.as_slice());
                write_delete(table, headers, &key, old_value)
            }
        });
    }
    Ok(rows)
}

fn write_row<'t>(
    table: &'t TableInfo,
    headers: &TxHeaders,
    operation: Operation,
    key: &str,
    new: &[Cell<'_>],
    old_value: Option<&[Cell<'_>]>,
) -> EncodedRow<'t> {
    let shape = &table.json;
    let unchanged_toast: Vec<&'t str> = (table.relation.columns.iter().zip(new))
        .filter(|(_, cell)| **cell == Cell::Absent)
        .map(|(column, _)| column.name.as_str())
        .collect();
    let mut out = Vec::with_capacity(256);
    write_head(headers, operation, &mut out);
    if !unchanged_toast.is_empty() {
        out.extend_from_slice(br#","unchanged_toast":["#);
        for (n, name) in unchanged_toast.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            put_str(&mut out, name);
        }
        out.push(b']');
    }
    write_key(key, &mut out);
    if let Some(old) = old_value {
        out.extend_from_slice(br#","old_value":"#);
        shape.write_object(table, old, &mut out);
    }
    shape.write_type(&mut out);
    out.extend_from_slice(br#","value":"#);
    shape.write_object(table, new, &mut out);
    out.push(b'}');
    EncodedRow {
        operation,
        json: out,
        unchanged_toast,
    }
}

fn write_delete<'t>(
    table: &'t TableInfo,
    headers: &TxHeaders,
    key: &str,
    old_value: Option<&[Cell<'_>]>,
) -> EncodedRow<'t> {
    let mut out = Vec::with_capacity(160);
    write_head(headers, Operation::Delete, &mut out);
    write_key(key, &mut out);
    if let Some(old) = old_value {
        out.extend_from_slice(br#","old_value":"#);
        table.json.write_object(table, old, &mut out);
    }
    table.json.write_type(&mut out);
    out.push(b'}');
    EncodedRow {
        operation: Operation::Delete,
        json: out,
        unchanged_toast: Vec::new(),
    }
}

/// `{"headers":{"lsn":..,"operation":..,"timestamp":..,"txid":..`, left open for
/// `unchanged_toast`.
fn write_head(headers: &TxHeaders, operation: Operation, out: &mut Vec<u8>) {
    out.extend_from_slice(&headers.head);
    put_str(out, operation.as_str());
    out.extend_from_slice(&headers.tail);
}

/// Closes the headers and appends `,"key":"..."`.
fn write_key(key: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(br#"},"key":"#);
    put_str(out, key);
}

/// Appends `text` as a JSON string, escaped as `serde_json` escapes it.
pub(super) fn put_str(out: &mut Vec<u8>, text: &str) {
    // Writing a string to a `Vec` cannot fail.
    let _ = serde_json::to_writer(out, text);
}
