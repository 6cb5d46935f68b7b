//! Messages for changes recorded from PostgreSQL 15 (`src/pgoutput/fixtures/`).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use super::*;
use crate::pgoutput::{PgOutputMessage as M, decode};

/// Decodes a recorded fixture file (one hex message per line, `#` comments).
fn recorded(text: &str) -> Vec<M> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let bytes: Vec<u8> = (0..line.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex fixture"))
                .collect();
            decode(&Bytes::from(bytes)).expect("recorded messages decode")
        })
        .collect()
}

/// Every message the changes of a recorded fixture make, with `primary_key` for its table.
fn recorded_messages(text: &str, primary_key: Option<Vec<String>>) -> Vec<RowMessage> {
    let (mut table, mut meta, mut rows) = (None, None, Vec::new());
    for message in recorded(text) {
        match &message {
            M::Begin(begin) => meta = Some(TxMeta::from_begin(begin)),
            M::Relation(rel) => {
                table = Some(TableInfo::new(Arc::new(rel.clone()), primary_key.clone()))
            }
            _ => {}
        }
        let Some(change) = ChangeRef::from_message(&message) else {
            continue;
        };
        let (table, meta) = (
            table.as_ref().expect("relation first"),
            meta.expect("begin first"),
        );
        assert_eq!(change.relation_oid(), table.relation.oid);
        let built = super::tests::checked_build(table, &change, &meta)
            .unwrap_or_else(|err| panic!("{err}"));
        for row in &built {
            assert_eq!(row.message["headers"]["lsn"], meta.commit_lsn.to_string());
            assert_eq!(row.message["headers"]["txid"], meta.xid.to_string());
        }
        rows.extend(built);
    }
    rows
}

#[test]
fn recorded_composite_key_changes() {
    let rows = recorded_messages(
        include_str!("../../pgoutput/fixtures/composite_key.hex"),
        None,
    );
    let shapes: Vec<(&str, &str, Option<&Value>)> = rows
        .iter()
        .map(|row| {
            (
                row.operation.as_str(),
                row.message["key"].as_str().unwrap_or_default(),
                row.message.get("value"),
            )
        })
        .collect();
    let (a2, a3) = (
        json!({"region": "eu", "id": 1, "val": "a2"}),
        json!({"region": "eu", "id": 3, "val": "a2"}),
    );
    assert_eq!(
        shapes,
        [
            ("update", r#"["eu","1"]"#, Some(&a2)),
            ("delete", r#"["eu","1"]"#, None),
            ("insert", r#"["eu","3"]"#, Some(&a3)),
            ("delete", r#"["us","2"]"#, None),
        ]
    );
    assert_eq!(
        Value::Object(rows[3].columns().clone()),
        json!({"region": "us", "id": 2})
    );
    assert!(
        rows.iter()
            .all(|row| row.message.get("old_value").is_none()),
        "no 'O' tuples"
    );
}

#[test]
fn recorded_full_identity_and_toast_changes() {
    let full = include_str!("../../pgoutput/fixtures/full_identity.hex");
    let rows = recorded_messages(full, Some(vec!["id".to_owned()]));
    let ops: Vec<Operation> = rows.iter().map(|row| row.operation).collect();
    assert_eq!(ops, [Operation::Update, Operation::Delete]);
    assert_eq!(
        rows[0].message["old_value"],
        json!({"id": 1, "note": "one"})
    );
    assert_eq!(
        rows[1].message["old_value"],
        json!({"id": 2, "note": "two"})
    );
    assert_eq!(
        recorded_messages(full, None).len(),
        3,
        "keyed by every column, the update moves the key"
    );

    let rows = recorded_messages(include_str!("../../pgoutput/fixtures/toast.hex"), None);
    let [row] = rows.as_slice() else {
        panic!("one update expected: {rows:#?}")
    };
    assert_eq!(row.message["value"], json!({"id": 1, "counter": 1}));
    assert_eq!(row.message["headers"]["unchanged_toast"], json!(["big"]));
}
