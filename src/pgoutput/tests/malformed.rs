//! Broken messages: each fails with the error that states what is wrong.

use bytes::Bytes;

use super::super::{DecodeError, MessageKind, decode};
use super::{all_fixture_messages, fixture};

/// The first recorded message of `kind` in a fixture file.
fn recorded(name: &str, kind: MessageKind) -> Vec<u8> {
    fixture(name)
        .into_iter()
        .find(|buf| buf.first() == Some(&kind.tag()))
        .unwrap_or_else(|| panic!("{name} has no {kind} message"))
        .to_vec()
}

/// `buf` with `bytes` written over it from `offset` on.
fn patched(mut buf: Vec<u8>, offset: usize, bytes: &[u8]) -> Bytes {
    buf[offset..offset + bytes.len()].copy_from_slice(bytes);
    Bytes::from(buf)
}

/// alter.hex's first Insert: tag, oid (1..5), 'N' (5), ncols (6..8) = 1,
/// kind 't' (8), length (9..13) = 1, "1" (13).
fn small_insert() -> Vec<u8> {
    let insert = recorded("alter.hex", MessageKind::Insert);
    assert_eq!(
        insert[5..],
        [b'N', 0, 1, b't', 0, 0, 0, 1, b'1'],
        "fixture layout"
    );
    insert
}

/// alter.hex's first Relation: tag, oid (1..5), "public\0" (5..12),
/// "fx_alter\0" (12..21), 'd' (21), ncols (22..24) = 1, one column (24..36).
fn small_relation() -> Vec<u8> {
    let relation = recorded("alter.hex", MessageKind::Relation);
    assert_eq!(
        &relation[5..24],
        b"public\0fx_alter\0d\0\x01",
        "fixture layout"
    );
    assert_eq!(relation.len(), 36, "fixture layout");
    relation
}

fn assert_truncation(name: &str, kind: MessageKind, len: usize, err: &DecodeError) {
    match *err {
        DecodeError::Empty => assert_eq!(len, 0, "{name}: Empty for {len} bytes"),
        DecodeError::Truncated {
            message,
            offset,
            needed,
            available,
        } => {
            assert_eq!(message, kind, "{name}: cut at {len}: {err}");
            assert!(offset >= 1, "{name}: cut at {len}: {err}");
            assert_eq!(offset + available, len, "{name}: cut at {len}: {err}");
            assert!(needed > available, "{name}: cut at {len}: {err}");
        }
        DecodeError::MissingNul { message, offset } => {
            assert_eq!(message, kind, "{name}: cut at {len}: {err}");
            assert!(offset < len, "{name}: cut at {len}: {err}");
        }
        _ => panic!("{name}: cut at {len}: not a truncation error: {err}"),
    }
}

#[test]
fn every_prefix_of_every_recorded_message_fails_as_truncated() {
    let mut checked = 0;
    for (name, full) in all_fixture_messages() {
        let kind = decode(&full).expect("recorded message decodes").kind();
        for len in 0..full.len() {
            let err = decode(&full.slice(..len))
                .expect_err("a strict prefix of a message is never a message");
            assert_truncation(name, kind, len, &err);
            checked += 1;
        }
    }
    assert!(checked > 2_000, "only {checked} prefixes checked");
}

#[test]
fn begin_truncation_names_the_field_that_is_cut() {
    let begin = fixture("types.hex").swap_remove(0);
    assert_eq!(begin.len(), 21);
    for len in 1..begin.len() {
        let (offset, needed) = match len {
            1..9 => (1, 8),  // final_lsn
            9..17 => (9, 8), // commit_time
            _ => (17, 4),    // xid
        };
        let expected = DecodeError::Truncated {
            message: MessageKind::Begin,
            offset,
            needed,
            available: len - offset,
        };
        assert_eq!(decode(&begin.slice(..len)), Err(expected), "cut at {len}");
    }
}

#[test]
fn a_value_cut_short_reports_its_announced_length() {
    let insert = Bytes::from(recorded("types.hex", MessageKind::Insert));
    // Third column: kind 't' at 21, length 6 at 22..26, "héllo" at 26..32.
    assert_eq!(
        &insert[21..32],
        b"t\0\0\0\x06h\xc3\xa9llo",
        "fixture layout"
    );
    let err = decode(&insert.slice(..28)).expect_err("cut inside a value");
    let expected = DecodeError::Truncated {
        message: MessageKind::Insert,
        offset: 26,
        needed: 6,
        available: 2,
    };
    assert_eq!(err, expected);
    assert_eq!(
        err.to_string(),
        "truncated Insert ('I') message: field at offset 26 needs 6 bytes, 2 available"
    );
}

#[test]
fn empty_input_and_unknown_tags_fail() {
    assert_eq!(decode(&Bytes::new()), Err(DecodeError::Empty));
    for tag in [b'Z', b'a', b'P', b'K', 0, 0xff] {
        let buf = Bytes::from(vec![tag, 0, 0, 0, 1]);
        assert_eq!(decode(&buf), Err(DecodeError::UnknownTag { tag }));
    }
    let err = decode(&Bytes::from_static(b"Z")).expect_err("unknown tag");
    assert_eq!(err.to_string(), "unknown message tag 0x5a ('Z')");
}

#[test]
fn unknown_tuple_kind_fails_at_its_offset() {
    let buf = patched(small_insert(), 8, b"x");
    let expected = DecodeError::UnknownTupleKind {
        message: MessageKind::Insert,
        offset: 8,
        kind: b'x',
    };
    assert_eq!(decode(&buf), Err(expected));
}

#[test]
fn huge_lengths_and_counts_fail_without_allocating() {
    let value = patched(small_insert(), 9, &u32::MAX.to_be_bytes());
    let expected = DecodeError::Truncated {
        message: MessageKind::Insert,
        offset: 13,
        needed: u32::MAX as usize,
        available: 1,
    };
    assert_eq!(decode(&value), Err(expected));

    let mut message = fixture("messages.hex")[2].to_vec();
    assert!(message.ends_with(b"\0\0\0\x07content"), "fixture layout");
    let len_at = message.len() - b"content".len() - 4;
    message[len_at..len_at + 4].copy_from_slice(&0x7fff_ffff_u32.to_be_bytes());
    let err = decode(&Bytes::from(message)).expect_err("content length too large");
    assert!(
        matches!(
            err,
            DecodeError::Truncated {
                needed: 0x7fff_ffff,
                ..
            }
        ),
        "{err}"
    );

    let columns = patched(small_relation(), 22, &i16::MAX.to_be_bytes());
    let err = decode(&columns).expect_err("32767 columns in 12 bytes");
    assert!(
        matches!(err, DecodeError::Truncated { offset: 36, .. }),
        "{err}"
    );

    let tuple = patched(small_insert(), 6, &i16::MAX.to_be_bytes());
    let err = decode(&tuple).expect_err("32767 values in 6 bytes");
    assert!(
        matches!(err, DecodeError::Truncated { offset: 14, .. }),
        "{err}"
    );

    let truncate = Bytes::from_static(b"T\xff\xff\xff\xff\x00\x00\x00\x40\x00");
    let expected = DecodeError::Truncated {
        message: MessageKind::Truncate,
        offset: 10,
        needed: 4,
        available: 0,
    };
    assert_eq!(decode(&truncate), Err(expected));
}

#[test]
fn negative_column_counts_fail() {
    let tuple = patched(small_insert(), 6, &(-1_i16).to_be_bytes());
    let expected = DecodeError::NegativeCount {
        message: MessageKind::Insert,
        offset: 6,
        count: -1,
    };
    assert_eq!(decode(&tuple), Err(expected));

    let relation = patched(small_relation(), 22, &i16::MIN.to_be_bytes());
    let expected = DecodeError::NegativeCount {
        message: MessageKind::Relation,
        offset: 22,
        count: i16::MIN,
    };
    assert_eq!(decode(&relation), Err(expected));
}

#[test]
fn strings_need_a_nul_and_valid_utf8() {
    let origin = Bytes::from_static(b"O\0\0\0\0\x01\x6b\x37\x48fx_upstream");
    let expected = DecodeError::MissingNul {
        message: MessageKind::Origin,
        offset: 9,
    };
    assert_eq!(decode(&origin), Err(expected));

    let namespace = patched(small_relation(), 5, &[0xff]);
    let expected = DecodeError::InvalidUtf8 {
        message: MessageKind::Relation,
        offset: 5,
    };
    assert_eq!(decode(&namespace), Err(expected));

    let name = patched(small_relation(), 14, &[0xc3, 0x28]);
    let expected = DecodeError::InvalidUtf8 {
        message: MessageKind::Relation,
        offset: 12,
    };
    assert_eq!(decode(&name), Err(expected));
}

#[test]
fn trailing_bytes_after_any_recorded_message_fail() {
    for (name, full) in all_fixture_messages() {
        let kind = decode(&full).expect("recorded message decodes").kind();
        for extra in [&[0_u8][..], b"N\0\0"] {
            let mut buf = full.to_vec();
            buf.extend_from_slice(extra);
            let expected = DecodeError::TrailingBytes {
                message: kind,
                offset: full.len(),
                remaining: extra.len(),
            };
            assert_eq!(decode(&Bytes::from(buf)), Err(expected), "{name}");
        }
    }
}

#[test]
fn wrong_markers_and_replica_identities_fail() {
    let insert = patched(small_insert(), 5, b"K");
    let err = decode(&insert).expect_err("an Insert carries only 'N'");
    assert!(
        matches!(
            err,
            DecodeError::UnexpectedMarker {
                offset: 5,
                found: b'K',
                ..
            }
        ),
        "{err}"
    );

    let mut delete = recorded("full_identity.hex", MessageKind::Delete);
    delete[5] = b'N';
    let err = decode(&Bytes::from(delete)).expect_err("a Delete has no new tuple");
    let DecodeError::UnexpectedMarker {
        message,
        offset,
        found,
        ..
    } = err
    else {
        panic!("not an unexpected marker: {err}");
    };
    assert_eq!((message, offset, found), (MessageKind::Delete, 5, b'N'));

    // full_identity.hex's Update: 'O', old tuple (6..22), then 'N' at 22.
    let update = recorded("full_identity.hex", MessageKind::Update);
    assert_eq!((update[5], update[22]), (b'O', b'N'), "fixture layout");
    let err = decode(&patched(update, 22, b"O")).expect_err("two old tuples");
    assert!(
        matches!(err, DecodeError::UnexpectedMarker { offset: 22, .. }),
        "{err}"
    );

    let relation = patched(small_relation(), 21, b"x");
    let expected = DecodeError::UnknownReplicaIdentity {
        message: MessageKind::Relation,
        offset: 21,
        value: b'x',
    };
    assert_eq!(decode(&relation), Err(expected));
}

#[test]
fn error_messages_are_lowercase_fragments() {
    let errors = [
        decode(&Bytes::new()),
        decode(&Bytes::from_static(b"Z")),
        decode(&Bytes::from_static(b"B\0")),
        decode(&patched(small_insert(), 8, b"x")),
        decode(&patched(small_insert(), 6, &[0xff, 0xff])),
        decode(&patched(small_insert(), 5, b"K")),
        decode(&patched(small_relation(), 5, &[0xff])),
        decode(&patched(small_relation(), 21, b"x")),
        decode(&Bytes::from_static(b"O\0\0\0\0\0\0\0\0abc")),
        decode(&Bytes::from_static(b"T\0\0\0\0\0\0")),
    ];
    for result in errors {
        let text = result.expect_err("every input is broken").to_string();
        assert!(text.starts_with(|c: char| c.is_ascii_lowercase()), "{text}");
        assert!(!text.ends_with('.'), "{text}");
    }
}
