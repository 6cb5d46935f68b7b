//! Snapshot inserts written straight to JSON: the very bytes `serde_json::to_vec` gives for
//! the message of [`snapshot_insert`](super::snapshot_insert), without building that message
//! first.
//!
//! A snapshot writes a million rows with one `lsn` and one `timestamp`. Building each row as
//! a `serde_json::Value` (a map per row and one for its headers, every column name copied,
//! the headers formatted again) and then serializing it cost most of the snapshot's CPU.
//! Here the parts every row of a table shares (the headers, `type`, the column names in the
//! order a JSON map writes them) are written once, and a row adds only its key and values.
//! The bytes are the same either way (a test compares them), so a snapshot written this way
//! and one written through the message tree cannot be told apart by a client.

use crate::lsn::Lsn;

use crate::values::write_str;

use super::identity::encode_key;
use super::{Cell, MessageError, Operation, TableInfo, format_commit_time};

/// Writes one table's snapshot inserts. Build one per table and snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotEncoder {
    table: TableInfo,
    /// `{"headers":{...},"key":`: everything before the key.
    head: Vec<u8>,
}

impl SnapshotEncoder {
    /// The encoder of `table`'s rows, with the snapshot's position and time in their headers.
    pub fn new(table: &TableInfo, lsn: Lsn, time_micros: i64) -> SnapshotEncoder {
        let mut head = br#"{"headers":{"lsn":"#.to_vec();
        write_str(&lsn.to_string(), &mut head);
        head.extend_from_slice(br#","operation":"#);
        write_str(Operation::Insert.as_str(), &mut head);
        head.extend_from_slice(br#","timestamp":"#);
        write_str(&format_commit_time(time_micros), &mut head);
        head.extend_from_slice(br#"},"key":"#);
        SnapshotEncoder {
            table: table.clone(),
            head,
        }
    }

    /// Appends the insert message of one row (its values as COPY text, `None` for NULL) to
    /// `out`.
    ///
    /// # Errors
    ///
    /// As [`snapshot_insert`](super::snapshot_insert): a row whose column count does not
    /// match the table's, or whose key cannot be computed.
    pub fn encode(&self, values: &[Option<&str>], out: &mut Vec<u8>) -> Result<(), MessageError> {
        let columns = &self.table.relation.columns;
        if values.len() != columns.len() {
            return Err(MessageError::SnapshotColumns {
                table: self.table.qualified_name(),
                expected: columns.len(),
                got: values.len(),
            });
        }
        let cells: Vec<Cell<'_>> = values
            .iter()
            .map(|v| v.map_or(Cell::Null, Cell::Text))
            .collect();
        let key = encode_key(&self.table, &cells, Operation::Insert)?;
        out.extend_from_slice(&self.head);
        write_str(&key, out);
        let shape = &self.table.json;
        shape.write_type(out);
        out.extend_from_slice(br#","value":"#);
        shape.write_object(&self.table, &cells, out);
        out.push(b'}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::capture::message::snapshot_insert;
    use crate::pgoutput::{Column, Relation, ReplicaIdentity};

    fn table(schema: &str, columns: &[(&str, u32, bool)]) -> TableInfo {
        let relation = Relation {
            oid: 16384,
            namespace: schema.into(),
            name: "t \"quoted\"".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|(name, type_oid, key)| Column {
                    flags: u8::from(*key),
                    name: (*name).into(),
                    type_oid: *type_oid,
                    type_modifier: -1,
                })
                .collect(),
        };
        TableInfo::new(Arc::new(relation), None)
    }

    fn both(table: &TableInfo, values: &[Option<&str>]) -> (Vec<u8>, Vec<u8>) {
        let (lsn, time) = (Lsn::from_u64(0x1_6B37_48FF), 812_345_678_901_234);
        let tree = snapshot_insert(table, values, lsn, time).unwrap();
        let mut direct = Vec::new();
        SnapshotEncoder::new(table, lsn, time)
            .encode(values, &mut direct)
            .unwrap();
        (serde_json::to_vec(&tree.message).unwrap(), direct)
    }

    #[test]
    fn the_bytes_are_those_of_the_message_tree() {
        // int4, text, jsonb, bool, numeric, float8, int4[], timestamptz, bytea.
        let t = table(
            "app",
            &[
                ("id", 23, true),
                ("Title", 25, false),
                ("body", 3802, false),
                ("done", 16, false),
                ("price", 1700, false),
                ("ratio", 701, false),
                ("tags", 1007, false),
                ("at", 1184, false),
                ("blob", 17, false),
                ("ä \"odd\" name", 25, false),
            ],
        );
        let rows: [[Option<&str>; 10]; 3] = [
            [
                Some("1"),
                Some("a \"quote\", a \\ backslash,\na newline, \u{1F600} and \u{7}"),
                Some(r#"{"nested": [1, 2.5, null, "x"]}"#),
                Some("t"),
                Some("12345678901234567890.123"),
                Some("NaN"),
                Some("{1,NULL,3}"),
                Some("2024-02-29 23:59:59.999999+00"),
                Some("\\xdeadbeef"),
                Some(""),
            ],
            [
                Some("-2"),
                None,
                None,
                Some("f"),
                None,
                Some("-Infinity"),
                Some("{}"),
                None,
                None,
                None,
            ],
            [
                Some("3"),
                Some("[not a key array]"),
                Some("[]"),
                None,
                Some("0"),
                Some("1e-300"),
                None,
                Some("infinity"),
                Some("\\x"),
                Some("plain"),
            ],
        ];
        for row in &rows {
            let (tree, direct) = both(&t, row);
            assert_eq!(
                String::from_utf8_lossy(&direct),
                String::from_utf8_lossy(&tree)
            );
        }
    }

    #[test]
    fn composite_keyless_and_public_tables_match_too() {
        let composite = table(
            "public",
            &[("b", 25, true), ("a", 23, true), ("v", 25, false)],
        );
        let (tree, direct) = both(&composite, &[Some("[x]"), Some("7"), None]);
        assert_eq!(direct, tree);
        let keyless = table("public", &[("note", 25, false), ("n", 20, false)]);
        let (tree, direct) = both(&keyless, &[Some("hello"), Some("9007199254740993")]);
        assert_eq!(direct, tree);
        let empty = table("s", &[]);
        let (tree, direct) = both(&empty, &[]);
        assert_eq!(direct, tree);
    }

    #[test]
    fn a_row_of_the_wrong_width_is_refused() {
        let t = table("public", &[("id", 23, true), ("v", 25, false)]);
        let encoder = SnapshotEncoder::new(&t, Lsn::from_u64(1), 0);
        let mut out = Vec::new();
        let err = encoder.encode(&[Some("1")], &mut out).unwrap_err();
        assert!(matches!(
            err,
            MessageError::SnapshotColumns {
                expected: 2,
                got: 1,
                ..
            }
        ));
        assert!(out.is_empty(), "nothing is written for a refused row");
    }
}
