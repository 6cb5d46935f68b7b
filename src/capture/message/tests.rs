//! Message shapes on hand-built relations and on changes recorded from PostgreSQL 15.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use super::*;
use crate::pgoutput::{Column, PgOutputMessage as M, Relation, ReplicaIdentity};

const INT4: u32 = 23;
const TEXT: u32 = 25;
const JSONB: u32 = 3802;

const META: TxMeta = TxMeta {
    xid: 731,
    commit_lsn: Lsn::from_u64(0x16B_3748),
    commit_time_micros: 757_479_845_123_456,
};

fn headers(operation: &str) -> Value {
    json!({
        "operation": operation,
        "txid": "731",
        "timestamp": "2024-01-02T03:04:05.123456Z",
        "lsn": "0/16B3748",
    })
}

fn column(name: &str, type_oid: u32, key: bool) -> Column {
    Column {
        flags: u8::from(key),
        name: name.to_owned(),
        type_oid,
        type_modifier: -1,
    }
}

fn relation(namespace: &str, identity: ReplicaIdentity, columns: Vec<Column>) -> Arc<Relation> {
    Arc::new(Relation {
        oid: 16_400,
        namespace: namespace.to_owned(),
        name: "items".to_owned(),
        replica_identity: identity,
        columns,
    })
}

/// public.items (id int4 primary key, name text, doc jsonb), default identity.
fn items() -> TableInfo {
    let columns = vec![
        column("id", INT4, true),
        column("name", TEXT, false),
        column("doc", JSONB, false),
    ];
    let relation = relation("public", ReplicaIdentity::Default, columns);
    TableInfo::new(relation, Some(vec!["id".to_owned()]))
}

fn text(value: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(value.as_bytes()))
}

fn tuple(columns: Vec<TupleValue>) -> TupleData {
    TupleData { columns }
}

fn insert(columns: Vec<TupleValue>) -> Insert {
    Insert {
        relation_oid: 16_400,
        new_tuple: tuple(columns),
    }
}

fn update(key: Option<TupleData>, old: Option<TupleData>, new: Vec<TupleValue>) -> Update {
    Update {
        relation_oid: 16_400,
        key_tuple: key,
        old_tuple: old,
        new_tuple: tuple(new),
    }
}

fn delete(key: Option<TupleData>, old: Option<TupleData>) -> Delete {
    Delete {
        relation_oid: 16_400,
        key_tuple: key,
        old_tuple: old,
    }
}

/// The messages of one change, panicking with the error if it fails.
fn messages(table: &TableInfo, change: ChangeRef<'_>) -> Vec<RowMessage> {
    checked_build(table, &change, &META).unwrap_or_else(|err| panic!("{change:?} failed: {err}"))
}

/// [`build`], checked against [`encode`]: the same messages byte for byte (and the same
/// `unchanged_toast` names), or the same error. Every case of these tests goes through it.
pub(super) fn checked_build(
    table: &TableInfo,
    change: &ChangeRef<'_>,
    meta: &TxMeta,
) -> Result<Vec<RowMessage>, MessageError> {
    let built = build(table, change, meta);
    let encoded = encode(table, change, &TxHeaders::new(meta));
    match (&built, encoded) {
        (Ok(rows), Ok(encoded)) => {
            assert_eq!(rows.len(), encoded.len(), "{change:?}");
            for (row, direct) in rows.iter().zip(encoded) {
                let tree = serde_json::to_string(&row.message).expect("serializes");
                assert_eq!(String::from_utf8_lossy(&direct.json), tree);
                assert_eq!(direct.operation, row.operation);
                let named: Vec<&str> = row.message["headers"]["unchanged_toast"]
                    .as_array()
                    .map(|names| names.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                assert_eq!(direct.unchanged_toast, named);
            }
        }
        (Err(tree), Err(direct)) => assert_eq!(tree, &direct),
        (tree, direct) => panic!("the writers disagree: {tree:?} against {direct:?}"),
    }
    built
}

/// The only message of one change.
fn one(table: &TableInfo, change: ChangeRef<'_>) -> RowMessage {
    let mut rows = messages(table, change);
    assert_eq!(rows.len(), 1, "expected one message, got {rows:#?}");
    rows.remove(0)
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn insert_converts_values_by_type_and_stamps_the_transaction() {
    let row = insert(vec![text("42"), TupleValue::Null, text(r#"{"a": [1, 2]}"#)]);
    let row = one(&items(), ChangeRef::Insert(&row));
    let value = json!({"id": 42, "name": null, "doc": {"a": [1, 2]}});
    let expected =
        json!({"type": "items", "key": "42", "value": value, "headers": headers("insert")});
    assert_eq!(row.message, expected);
    assert_eq!(row.operation, Operation::Insert);
    assert_eq!(*row.columns(), object(value), "routing sees the new row");
}

#[test]
fn type_names_qualify_schemas_other_than_public() {
    assert_eq!(items().type_name, "items");
    let app = relation(
        "app",
        ReplicaIdentity::Default,
        vec![column("id", INT4, true)],
    );
    let table = TableInfo::new(app, None);
    assert_eq!(
        (table.type_name.as_str(), table.qualified_name()),
        ("app.items", "app.items".to_owned())
    );
}

#[test]
fn update_without_old_tuple_is_one_update_without_old_value() {
    let change = update(None, None, vec![text("42"), text("b"), TupleValue::Null]);
    let row = one(&items(), ChangeRef::Update(&change));
    let value = json!({"id": 42, "name": "b", "doc": null});
    let expected =
        json!({"type": "items", "key": "42", "value": value, "headers": headers("update")});
    assert_eq!(row.message, expected);
}

/// fx_full (id int, note text) with REPLICA IDENTITY FULL flags both columns as key.
fn full_identity_table(primary_key: Option<&str>) -> TableInfo {
    let columns = vec![column("id", INT4, true), column("note", TEXT, true)];
    let relation = relation("public", ReplicaIdentity::Full, columns);
    TableInfo::new(relation, primary_key.map(|pk| vec![pk.to_owned()]))
}

#[test]
fn primary_key_wins_over_full_identity_flags() {
    assert_eq!(full_identity_table(Some("id")).key_columns, [0]);
    assert_eq!(
        full_identity_table(None).key_columns,
        [0, 1],
        "no primary key: the identity"
    );
    let stale_pk = full_identity_table(Some("gone"));
    assert_eq!(
        stale_pk.key_columns,
        [0, 1],
        "a primary key column the relation lacks"
    );
}

#[test]
fn primary_key_outside_an_index_identity_yields_to_the_identity() {
    let columns = vec![column("id", INT4, false), column("code", TEXT, true)];
    let relation = relation("public", ReplicaIdentity::Index, columns);
    let table = TableInfo::new(relation, Some(vec!["id".to_owned()]));
    assert_eq!(table.key_columns, [1], "deletes carry only the identity");
}

#[test]
fn keyless_table_keys_by_every_column() {
    let columns = vec![column("a", INT4, false), column("b", TEXT, false)];
    let table = TableInfo::new(relation("public", ReplicaIdentity::Default, columns), None);
    assert_eq!(table.key_columns, [0, 1]);
    let row = one(
        &table,
        ChangeRef::Insert(&insert(vec![text("1"), text("x")])),
    );
    assert_eq!(row.message["key"], r#"["1","x"]"#);
    let nothing = TableInfo::new(table.relation.clone(), Some(vec!["b".to_owned()]));
    assert_eq!(
        nothing.key_columns,
        [1],
        "no flagged column: the primary key is used"
    );
}

#[test]
fn full_update_of_a_non_key_column_carries_old_value() {
    let table = full_identity_table(Some("id"));
    let old = tuple(vec![text("1"), text("one")]);
    let change = update(None, Some(old), vec![text("1"), text("uno")]);
    let row = one(&table, ChangeRef::Update(&change));
    let expected = json!({
        "type": "items", "key": "1",
        "value": {"id": 1, "note": "uno"}, "old_value": {"id": 1, "note": "one"},
        "headers": headers("update"),
    });
    assert_eq!(row.message, expected);
}

#[test]
fn update_that_changes_the_key_is_a_delete_then_an_insert() {
    let table = full_identity_table(None);
    let old = tuple(vec![text("1"), text("one")]);
    let change = update(None, Some(old), vec![text("1"), text("uno")]);
    let rows = messages(&table, ChangeRef::Update(&change));
    let ops: Vec<Operation> = rows.iter().map(|row| row.operation).collect();
    assert_eq!(ops, [Operation::Delete, Operation::Insert]);
    let expected_delete = json!({
        "type": "items", "key": r#"["1","one"]"#,
        "old_value": {"id": 1, "note": "one"}, "headers": headers("delete"),
    });
    assert_eq!(rows[0].message, expected_delete);
    assert_eq!(
        *rows[0].columns(),
        object(json!({"id": 1, "note": "one"})),
        "routed by the old row"
    );
    let expected_insert = json!({
        "type": "items", "key": r#"["1","uno"]"#,
        "value": {"id": 1, "note": "uno"}, "headers": headers("insert"),
    });
    assert_eq!(rows[1].message, expected_insert);
}

#[test]
fn delete_has_no_value_and_old_value_only_for_a_whole_old_row() {
    let key = tuple(vec![text("7"), TupleValue::Null, TupleValue::Null]);
    let row = one(&items(), ChangeRef::Delete(&delete(Some(key), None)));
    let expected = json!({"type": "items", "key": "7", "headers": headers("delete")});
    assert_eq!(row.message, expected);
    assert_eq!(
        *row.columns(),
        object(json!({"id": 7})),
        "placeholders of 'K' are not values"
    );

    let table = full_identity_table(Some("id"));
    let old = tuple(vec![text("2"), TupleValue::Null]);
    let row = one(&table, ChangeRef::Delete(&delete(None, Some(old))));
    let expected = json!({
        "type": "items", "key": "2", "old_value": {"id": 2, "note": null}, "headers": headers("delete"),
    });
    assert_eq!(row.message, expected);

    let err = checked_build(&items(), &ChangeRef::Delete(&delete(None, None)), &META);
    assert_eq!(
        err,
        Err(MessageError::MissingOldTuple {
            table: "public.items".to_owned()
        })
    );
}

#[test]
fn unchanged_toast_without_old_row_is_left_out_and_named() {
    let change = update(
        None,
        None,
        vec![text("42"), TupleValue::UnchangedToast, text("[1]")],
    );
    let row = one(&items(), ChangeRef::Update(&change));
    let value = &row.message["value"];
    assert_eq!(value, &json!({"id": 42, "doc": [1]}));
    assert!(
        value.get("name").is_none(),
        "an unsent value must not appear, not even as null"
    );
    assert_eq!(row.message["headers"]["unchanged_toast"], json!(["name"]));
    assert!(
        !row.columns().contains_key("name"),
        "routing must not see it either"
    );
}

#[test]
fn unchanged_toast_is_taken_from_the_old_row() {
    let table = full_identity_table(Some("id"));
    let old = tuple(vec![text("1"), text("long text")]);
    let change = update(None, Some(old), vec![text("1"), TupleValue::UnchangedToast]);
    let row = one(&table, ChangeRef::Update(&change));
    assert_eq!(row.message["value"], json!({"id": 1, "note": "long text"}));
    assert!(row.message["headers"].get("unchanged_toast").is_none());
    assert_eq!(row.columns()["note"], "long text");
}

#[test]
fn toasted_key_sent_as_key_tuple_stays_a_plain_update() {
    let columns = vec![column("id", TEXT, true), column("n", INT4, false)];
    let table = TableInfo::new(relation("public", ReplicaIdentity::Default, columns), None);
    let key = tuple(vec![text("long-key"), TupleValue::Null]);
    let change = update(Some(key), None, vec![TupleValue::UnchangedToast, text("2")]);
    let row = one(&table, ChangeRef::Update(&change));
    let expected = json!({
        "type": "items", "key": "long-key", "value": {"id": "long-key", "n": 2}, "headers": headers("update"),
    });
    assert_eq!(row.message, expected);
}

#[test]
fn keys_are_plain_text_or_json_arrays_and_never_collide() {
    let single = TableInfo::new(
        relation(
            "public",
            ReplicaIdentity::Default,
            vec![column("k", TEXT, true)],
        ),
        None,
    );
    let key_of = |value: TupleValue| {
        let row = one(&single, ChangeRef::Insert(&insert(vec![value])));
        row.message["key"]
            .as_str()
            .expect("a string key")
            .to_owned()
    };
    assert_eq!(key_of(text("a/b")), "a/b");
    assert_eq!(key_of(text("42")), "42");
    assert_eq!(key_of(text("")), r#"[""]"#);
    assert_eq!(key_of(TupleValue::Null), "[null]");
    assert_eq!(
        key_of(text(r#"[""]"#)),
        r#"["[\"\"]"]"#,
        "text that looks like an array key"
    );
    assert_eq!(key_of(text("[null]")), r#"["[null]"]"#);

    let cells = [Cell::Text("7"), Cell::Text("x,y"), Cell::Null];
    let columns = vec![
        column("a", INT4, true),
        column("b", TEXT, true),
        column("c", TEXT, true),
    ];
    let table = TableInfo::new(relation("public", ReplicaIdentity::Default, columns), None);
    let key = encode_key(&table, &cells, Operation::Insert);
    assert_eq!(key.as_deref(), Ok(r#"["7","x,y",null]"#));
}

#[test]
fn key_column_that_was_not_sent_is_an_error() {
    let change = update(
        None,
        None,
        vec![TupleValue::UnchangedToast, text("b"), TupleValue::Null],
    );
    let err =
        checked_build(&items(), &ChangeRef::Update(&change), &META).expect_err("no key value");
    let expected = MessageError::KeyUnavailable {
        table: "public.items".to_owned(),
        column: "id".to_owned(),
        operation: Operation::Update,
    };
    assert_eq!(err, expected);
    assert!(
        err.to_string()
            .starts_with("key column id of table public.items was not sent")
    );
}

#[test]
fn invalid_utf8_binary_values_and_wrong_widths_are_typed_errors() {
    let bad = TupleValue::Text(Bytes::from_static(b"\xff\xfe"));
    let err = checked_build(
        &items(),
        &ChangeRef::Insert(&insert(vec![text("1"), bad, TupleValue::Null])),
        &META,
    );
    let (table, column) = ("public.items".to_owned(), "name".to_owned());
    let tuple_role = TupleRole::New;
    assert_eq!(
        err,
        Err(MessageError::InvalidUtf8 {
            table,
            column,
            tuple: tuple_role
        })
    );

    let old = tuple(vec![
        TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 1])),
        TupleValue::Null,
    ]);
    let change = update(None, Some(old), vec![text("1"), text("x")]);
    let err = checked_build(
        &full_identity_table(Some("id")),
        &ChangeRef::Update(&change),
        &META,
    );
    let (table, column) = ("public.items".to_owned(), "id".to_owned());
    assert_eq!(
        err,
        Err(MessageError::BinaryValue {
            table,
            column,
            tuple: TupleRole::Old
        })
    );

    let err = checked_build(
        &items(),
        &ChangeRef::Insert(&insert(vec![text("1")])),
        &META,
    )
    .expect_err("1 of 3");
    assert!(
        matches!(
            &err,
            MessageError::ColumnCount {
                tuple: TupleRole::New,
                mismatch: DecodeError::ColumnCountMismatch {
                    tuple_columns: 1,
                    relation_columns: 3,
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "new tuple does not fit table public.items: tuple has 1 columns but relation public.items (oid 16400) has 3"
    );
}

#[test]
fn control_messages() {
    assert_eq!(reset_message(), json!({"headers": {"control": "reset"}}));
    assert_eq!(
        snapshot_control(SnapshotControl::Start),
        json!({"headers": {"control": "snapshot-start"}})
    );
    assert_eq!(
        snapshot_control(SnapshotControl::End),
        json!({"headers": {"control": "snapshot-end"}})
    );
}

#[test]
fn change_ref_reads_row_changes_only() {
    let msg = M::Insert(insert(vec![text("1")]));
    assert!(matches!(
        ChangeRef::from_message(&msg),
        Some(ChangeRef::Insert(_))
    ));
    let truncate = M::Truncate(crate::pgoutput::Truncate {
        options: 0,
        relation_oids: vec![1],
    });
    assert_eq!(ChangeRef::from_message(&truncate), None);
}

#[test]
fn both_writers_agree_on_odd_names_and_a_name_sent_twice() {
    // PostgreSQL does not allow two columns of one name, but a Relation message can say
    // so: the map keeps the later sent value, and the bytes must follow it.
    let columns = vec![
        column("v", TEXT, false),
        column("id", INT4, true),
        column("v", TEXT, false),
        column("ä \"q\"\n", JSONB, false),
    ];
    let table = TableInfo::new(relation("app", ReplicaIdentity::Full, columns), None);
    let both = vec![text("a"), text("1"), text("b"), text(r#"{"k": [1, "x"]}"#)];
    let row = one(&table, ChangeRef::Insert(&insert(both)));
    assert_eq!(row.message["value"]["v"], "b");
    let later_unsent = vec![
        text("a"),
        text("1"),
        TupleValue::UnchangedToast,
        TupleValue::Null,
    ];
    let row = one(&table, ChangeRef::Update(&update(None, None, later_unsent)));
    assert_eq!(row.message["value"]["v"], "a");
    assert_eq!(row.message["headers"]["unchanged_toast"], json!(["v"]));
    let old = tuple(vec![text("o"), text("1"), text("p"), text("[]")]);
    let change = update(
        None,
        Some(old),
        vec![text("n"), text("1"), text("m"), text("2")],
    );
    let row = one(&table, ChangeRef::Update(&change));
    assert_eq!(row.message["old_value"]["v"], "p");
}
