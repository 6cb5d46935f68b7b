//! Every message kind, decoded from bytes a real PostgreSQL 15 sent.

use std::collections::HashSet;

use bytes::Bytes;

use super::super::{
    Begin, Commit, DecodeError, MessageKind, PgOutputMessage as M, RelationCache, ReplicaIdentity,
    TupleData, TupleValue, decode,
};
use super::{all_fixture_messages, decode_fixture, fixture, text, texts};

/// Type oids from `pg_type.dat`.
const INT4: u32 = 23;
const TEXT: u32 = 25;
const BOOL: u32 = 16;
const NUMERIC: u32 = 1700;
const JSONB: u32 = 3802;
const TIMESTAMPTZ: u32 = 1184;
const BYTEA: u32 = 17;
const INT4_ARRAY: u32 = 1007;

/// '2024-01-02 03:04:05+00' in microseconds since 2000-01-01 UTC.
const ORIGIN_COMMIT_TIME: i64 = 757_479_845_000_000;

fn assert_transaction(begin: &Begin, commit: &Commit) {
    assert_eq!(commit.commit_lsn, begin.final_lsn, "commit LSN vs begin");
    assert!(
        commit.end_lsn > commit.commit_lsn,
        "end LSN past commit: {commit:?}"
    );
    assert_eq!(
        commit.commit_time, begin.commit_time,
        "commit time vs begin"
    );
    assert_eq!(commit.flags, 0);
    assert!(begin.xid > 0);
}

#[test]
fn types_fixture_describes_the_enum_type_and_the_relation() {
    let msgs = decode_fixture("types.hex");
    let [
        M::Begin(b),
        M::Type(ty),
        M::Relation(rel),
        M::Insert(_),
        M::Insert(_),
        M::Commit(c),
    ] = msgs.as_slice()
    else {
        panic!("unexpected message sequence: {msgs:#?}");
    };
    assert_transaction(b, c);
    assert_eq!(
        (ty.namespace.as_str(), ty.name.as_str()),
        ("public", "fx_mood")
    );
    assert!(ty.oid >= 16384, "a user type oid, got {}", ty.oid);

    assert_eq!(
        (rel.namespace.as_str(), rel.name.as_str()),
        ("public", "fx_types")
    );
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    let columns: Vec<(&str, u32, bool)> = rel
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid, c.is_key()))
        .collect();
    let expected = [
        ("id", INT4, true),
        ("i", INT4, false),
        ("t", TEXT, false),
        ("b", BOOL, false),
        ("n", NUMERIC, false),
        ("j", JSONB, false),
        ("ts", TIMESTAMPTZ, false),
        ("raw", BYTEA, false),
        ("arr", INT4_ARRAY, false),
        ("mood", ty.oid, false),
    ];
    assert_eq!(columns, expected);
    // numeric(10, 2): ((10 << 16) | 2) + VARHDRSZ.
    assert_eq!(rel.columns[4].type_modifier, (10 << 16 | 2) + 4);
    assert_eq!(rel.columns[2].type_modifier, -1);
}

#[test]
fn types_fixture_inserts_text_values_and_nulls() {
    let msgs = decode_fixture("types.hex");
    let [_, _, M::Relation(rel), M::Insert(i1), M::Insert(i2), _] = msgs.as_slice() else {
        panic!("unexpected message sequence: {msgs:#?}");
    };
    assert_eq!((i1.relation_oid, i2.relation_oid), (rel.oid, rel.oid));
    assert_eq!(rel.check_tuple(&i1.new_tuple), Ok(()));
    let values = [
        "1",
        "42",
        "héllo",
        "t",
        "12.50",
        r#"{"a": [1, 2]}"#,
        "2024-01-02 03:04:05+00",
        r"\x00ff10",
        "{1,2,3}",
        "happy",
    ];
    assert_eq!(texts(&i1.new_tuple), values.map(Some));
    let mut second = vec![None; 10];
    second[0] = Some("2");
    assert_eq!(texts(&i2.new_tuple), second, "an insert of NULLs");
}

#[test]
fn text_values_are_slices_of_the_input() {
    let buf = fixture("types.hex").swap_remove(3);
    let M::Insert(insert) = decode(&buf).expect("recorded insert decodes") else {
        panic!("fixture line 4 is the first insert");
    };
    let input = buf.as_ptr_range();
    for value in &insert.new_tuple.columns {
        let TupleValue::Text(bytes) = value else {
            panic!("all values are text: {value:?}");
        };
        assert!(input.contains(&bytes.as_ptr()), "{bytes:?} was copied");
    }
}

#[test]
fn binary_fixture_carries_binary_values() {
    let msgs = decode_fixture("types_binary.hex");
    let [
        M::Begin(_),
        M::Type(_),
        M::Relation(rel),
        M::Insert(i1),
        M::Insert(i2),
        M::Commit(_),
    ] = msgs.as_slice()
    else {
        panic!("unexpected message sequence: {msgs:#?}");
    };
    assert_eq!(rel.check_tuple(&i1.new_tuple), Ok(()));
    let binary = |value: &TupleValue| match value {
        TupleValue::Binary(bytes) => bytes.clone(),
        other => panic!("expected a binary value, got {other:?}"),
    };
    let cols = &i1.new_tuple.columns;
    assert_eq!(
        binary(&cols[0]),
        Bytes::from_static(&[0, 0, 0, 1]),
        "int4 id"
    );
    assert_eq!(
        binary(&cols[1]),
        Bytes::from_static(&[0, 0, 0, 42]),
        "int4 i"
    );
    assert_eq!(binary(&cols[2]), Bytes::from("héllo"), "text t");
    assert_eq!(binary(&cols[3]), Bytes::from_static(&[1]), "bool b");
    assert_eq!(
        binary(&cols[7]),
        Bytes::from_static(&[0x00, 0xff, 0x10]),
        "bytea raw"
    );
    assert_eq!(binary(&cols[9]), Bytes::from("happy"), "enum mood");
    assert_eq!(
        binary(&i2.new_tuple.columns[0]),
        Bytes::from_static(&[0, 0, 0, 2])
    );
    assert!(
        i2.new_tuple.columns[1..]
            .iter()
            .all(|v| *v == TupleValue::Null)
    );
}

#[test]
fn full_identity_sends_whole_old_rows() {
    let msgs = decode_fixture("full_identity.hex");
    let [
        M::Begin(b1),
        M::Relation(rel),
        M::Update(u),
        M::Commit(c1),
        M::Begin(b2),
        M::Delete(d),
        M::Commit(c2),
    ] = msgs.as_slice()
    else {
        panic!("unexpected message sequence: {msgs:#?}");
    };
    assert_transaction(b1, c1);
    assert_transaction(b2, c2);
    assert!(b2.final_lsn > b1.final_lsn && b2.xid > b1.xid);
    assert_eq!(rel.name, "fx_full");
    assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
    assert!(
        rel.columns.iter().all(|c| c.is_key()),
        "FULL flags every column"
    );

    assert_eq!((u.relation_oid, &u.key_tuple), (rel.oid, &None));
    let old = u.old_tuple.as_ref().expect("an 'O' old tuple");
    assert_eq!(texts(old), [Some("1"), Some("one")]);
    assert_eq!(texts(&u.new_tuple), [Some("1"), Some("uno")]);

    assert_eq!((d.relation_oid, &d.key_tuple), (rel.oid, &None));
    let old = d.old_tuple.as_ref().expect("an 'O' old tuple");
    assert_eq!(texts(old), [Some("2"), Some("two")]);
}

#[test]
fn composite_key_sends_key_tuples_only_when_needed() {
    let msgs = decode_fixture("composite_key.hex");
    let [
        M::Begin(_),
        M::Relation(rel),
        M::Update(u1),
        M::Commit(_),
        M::Begin(_),
        M::Update(u2),
        M::Commit(_),
        M::Begin(_),
        M::Delete(d),
        M::Commit(_),
    ] = msgs.as_slice()
    else {
        panic!("unexpected message sequence: {msgs:#?}");
    };
    assert_eq!(rel.name, "fx_ck");
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    let columns: Vec<(&str, bool, u32)> = rel
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.is_key(), c.type_oid))
        .collect();
    assert_eq!(
        columns,
        [
            ("region", true, TEXT),
            ("id", true, INT4),
            ("val", false, TEXT)
        ]
    );

    assert_eq!(
        (&u1.key_tuple, &u1.old_tuple),
        (&None, &None),
        "key unchanged"
    );
    assert_eq!(texts(&u1.new_tuple), [Some("eu"), Some("1"), Some("a2")]);

    let key = u2
        .key_tuple
        .as_ref()
        .expect("a 'K' tuple when the key changes");
    assert_eq!(u2.old_tuple, None);
    assert_eq!(
        texts(key),
        [Some("eu"), Some("1"), None],
        "non-key columns are null"
    );
    assert_eq!(texts(&u2.new_tuple), [Some("eu"), Some("3"), Some("a2")]);

    let key = d.key_tuple.as_ref().expect("a 'K' tuple");
    assert_eq!((d.relation_oid, &d.old_tuple), (rel.oid, &None));
    assert_eq!(texts(key), [Some("us"), Some("2"), None]);
}

#[test]
fn toast_update_marks_the_unsent_value() {
    let msgs = decode_fixture("toast.hex");
    let [M::Begin(_), M::Relation(rel), M::Update(u), M::Commit(_)] = msgs.as_slice() else {
        panic!("unexpected message sequence: {msgs:#?}");
    };
    assert_eq!(rel.columns[2].name, "big");
    assert_eq!((&u.key_tuple, &u.old_tuple), (&None, &None));
    let cols = &u.new_tuple.columns;
    assert_eq!((text(&cols[0]), text(&cols[1])), (Some("1"), Some("1")));
    assert_eq!(cols[2], TupleValue::UnchangedToast);
}

#[test]
fn truncate_carries_options_and_every_relation() {
    let msgs = decode_fixture("truncate.hex");
    let [
        M::Begin(_),
        M::Relation(a),
        M::Relation(b),
        M::Truncate(t1),
        M::Commit(_),
        M::Begin(_),
        M::Relation(a2),
        M::Truncate(t2),
        M::Commit(_),
    ] = msgs.as_slice()
    else {
        panic!("unexpected message sequence: {msgs:#?}");
    };
    assert_eq!(
        (a.name.as_str(), b.name.as_str()),
        ("fx_trunc_a", "fx_trunc_b")
    );
    assert_eq!(
        (t1.options, t1.cascade(), t1.restart_identity()),
        (3, true, true)
    );
    assert_eq!(t1.relation_oids, [a.oid, b.oid]);
    assert_eq!(
        (t2.options, t2.cascade(), t2.restart_identity()),
        (0, false, false)
    );
    assert_eq!(t2.relation_oids, [a2.oid]);
    assert_eq!(a2.oid, a.oid);
}

#[test]
fn logical_messages_keep_prefix_content_and_flags() {
    let msgs = decode_fixture("messages.hex");
    let [
        M::Message(loose),
        M::Begin(b),
        M::Message(inner),
        M::Commit(c),
    ] = msgs.as_slice()
    else {
        panic!("unexpected message sequence: {msgs:#?}");
    };
    assert_transaction(b, c);
    assert!(!loose.transactional());
    assert_eq!(loose.prefix, "ds-sync");
    assert_eq!(loose.content, Bytes::from_static(&[0x00, 0xff]));
    assert!(loose.lsn < b.final_lsn, "sent before the later transaction");

    assert!(inner.transactional());
    assert_eq!(inner.prefix, "prefix");
    assert_eq!(inner.content, Bytes::from_static(b"content"));
    assert!(inner.lsn <= c.commit_lsn);
}

#[test]
fn alter_table_mid_transaction_resends_the_relation() {
    let msgs = decode_fixture("alter.hex");
    let [
        M::Begin(_),
        M::Relation(r1),
        M::Insert(i1),
        M::Relation(r2),
        M::Insert(i2),
        M::Commit(_),
    ] = msgs.as_slice()
    else {
        panic!("unexpected message sequence: {msgs:#?}");
    };
    let mut cache = RelationCache::new();
    cache.insert(r1.clone());
    let rel = cache
        .resolve(i1.relation_oid, &i1.new_tuple)
        .expect("1 column");
    assert_eq!(rel.columns.len(), 1);
    assert_eq!(texts(&i1.new_tuple), [Some("1")]);
    assert!(
        cache.resolve(i2.relation_oid, &i2.new_tuple).is_err(),
        "old schema"
    );

    let previous = cache.insert(r2.clone()).expect("same oid replaced");
    assert_eq!((previous.oid, cache.len()), (r2.oid, 1));
    let rel = cache
        .resolve(i2.relation_oid, &i2.new_tuple)
        .expect("2 columns");
    assert_eq!(
        (rel.columns[1].name.as_str(), rel.columns[1].type_oid),
        ("extra", TEXT)
    );
    assert!(!rel.columns[1].is_key());
    assert_eq!(texts(&i2.new_tuple), [Some("2"), Some("added")]);
    assert!(matches!(
        r1.check_tuple(&i2.new_tuple),
        Err(DecodeError::ColumnCountMismatch {
            relation_columns: 1,
            tuple_columns: 2,
            ..
        })
    ));
}

#[test]
fn origin_names_the_upstream_and_its_commit_lsn() {
    let msgs = decode_fixture("origin.hex");
    let [
        M::Begin(b),
        M::Origin(o),
        M::Relation(rel),
        M::Insert(i),
        M::Commit(c),
    ] = msgs.as_slice()
    else {
        panic!("unexpected message sequence: {msgs:#?}");
    };
    assert_transaction(b, c);
    assert_eq!(o.name, "fx_upstream");
    assert_eq!(
        o.commit_lsn, 0x016B_3748,
        "the LSN given to pg_replication_origin_xact_setup"
    );
    assert_eq!(
        b.commit_time, ORIGIN_COMMIT_TIME,
        "the origin's commit time"
    );
    assert_eq!((rel.name.as_str(), i.relation_oid), ("fx_origin", rel.oid));
    assert_eq!(texts(&i.new_tuple), [Some("7")]);
}

/// The relation and the tuples of a change message.
fn change_tuples(msg: &M) -> Option<(u32, Vec<&TupleData>)> {
    match msg {
        M::Insert(i) => Some((i.relation_oid, vec![&i.new_tuple])),
        M::Update(u) => {
            let mut tuples: Vec<_> = u.key_tuple.iter().chain(&u.old_tuple).collect();
            tuples.push(&u.new_tuple);
            Some((u.relation_oid, tuples))
        }
        M::Delete(d) => Some((
            d.relation_oid,
            d.key_tuple.iter().chain(&d.old_tuple).collect(),
        )),
        _ => None,
    }
}

/// Replays every fixture as a stream: transactions pair up, every change
/// resolves against the latest Relation, and every message kind occurs.
#[test]
fn every_fixture_replays_as_a_consistent_stream() {
    let mut cache = RelationCache::new();
    let mut open: Option<Begin> = None;
    let mut seen = HashSet::new();
    for (name, buf) in all_fixture_messages() {
        let msg = decode(&buf).unwrap_or_else(|err| panic!("{name}: {err}"));
        seen.insert(msg.kind());
        match &msg {
            M::Begin(b) => assert!(open.replace(*b).is_none(), "{name}: nested Begin"),
            M::Commit(c) => {
                let b = open
                    .take()
                    .unwrap_or_else(|| panic!("{name}: Commit without Begin"));
                assert_transaction(&b, c);
            }
            M::Relation(rel) => {
                cache.insert(rel.clone());
            }
            M::Delete(d) => {
                assert!(
                    d.key_tuple.is_some() != d.old_tuple.is_some(),
                    "{name}: {d:?}"
                );
            }
            M::Truncate(t) => {
                assert!(t.relation_oids.iter().all(|oid| cache.get(*oid).is_some()));
            }
            _ => {}
        }
        if let Some((oid, tuples)) = change_tuples(&msg) {
            assert!(open.is_some(), "{name}: change outside a transaction");
            for tuple in tuples {
                cache
                    .resolve(oid, tuple)
                    .unwrap_or_else(|err| panic!("{name}: {err}"));
            }
        }
    }
    assert!(open.is_none(), "a transaction was left open");
    let missing: Vec<_> = MessageKind::ALL
        .iter()
        .filter(|k| !seen.contains(k))
        .collect();
    assert!(missing.is_empty(), "no fixture has {missing:?}");
}
