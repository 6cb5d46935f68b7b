//! The messages of protocol version 2's streaming, built by hand after PostgreSQL's
//! "Logical Replication Message Formats": the four stream markers, and a change inside a
//! stream block whose transaction id comes off so that the rest decodes as v1.

use bytes::Bytes;

use super::super::{
    DecodeError, MessageKind, PgOutputMessage, StreamAbort, StreamCommit, StreamStart, decode,
    split_streamed,
};

fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

#[test]
fn stream_start_and_stop_decode() {
    let mut buf = vec![b'S'];
    buf.extend(be32(741));
    buf.push(1);
    assert_eq!(
        decode(&Bytes::from(buf.clone())),
        Ok(PgOutputMessage::StreamStart(StreamStart {
            xid: 741,
            first_segment: true
        }))
    );
    buf[5] = 0;
    let PgOutputMessage::StreamStart(start) = decode(&Bytes::from(buf)).unwrap() else {
        panic!("not a Stream Start");
    };
    assert!(
        !start.first_segment,
        "a later block is not the first segment"
    );
    assert_eq!(
        decode(&Bytes::from_static(b"E")),
        Ok(PgOutputMessage::StreamStop)
    );
    let err = decode(&Bytes::from_static(b"Ex")).expect_err("Stream Stop has no body");
    assert!(
        matches!(
            err,
            DecodeError::TrailingBytes {
                message: MessageKind::StreamStop,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn stream_commit_decodes_its_lsns_and_time() {
    let mut buf = vec![b'c'];
    buf.extend(be32(741));
    buf.push(0);
    buf.extend(0x0000_0001_0000_0010_u64.to_be_bytes());
    buf.extend(0x0000_0001_0000_0048_u64.to_be_bytes());
    buf.extend(812_345_678_i64.to_be_bytes());
    assert_eq!(
        decode(&Bytes::from(buf.clone())),
        Ok(PgOutputMessage::StreamCommit(StreamCommit {
            xid: 741,
            flags: 0,
            commit_lsn: 0x0000_0001_0000_0010,
            end_lsn: 0x0000_0001_0000_0048,
            commit_time: 812_345_678,
        }))
    );
    for len in 1..buf.len() {
        let err = decode(&Bytes::copy_from_slice(&buf[..len])).expect_err("cut short");
        assert!(
            matches!(
                err,
                DecodeError::Truncated {
                    message: MessageKind::StreamCommit,
                    ..
                }
            ),
            "{len} bytes: {err:?}"
        );
    }
}

#[test]
fn stream_abort_tells_a_subtransaction_from_the_whole() {
    let mut buf = vec![b'A'];
    buf.extend(be32(741));
    buf.extend(be32(742));
    let PgOutputMessage::StreamAbort(abort) = decode(&Bytes::from(buf)).unwrap() else {
        panic!("not a Stream Abort");
    };
    assert_eq!(
        abort,
        StreamAbort {
            xid: 741,
            subxact_xid: 742
        }
    );
    assert!(!abort.is_top_level());
    assert!(
        StreamAbort {
            xid: 741,
            subxact_xid: 741
        }
        .is_top_level()
    );
}

#[test]
fn a_streamed_insert_loses_its_xid_and_decodes_as_v1() {
    // Insert into relation 16384 of one text column "hi".
    let v1: &[u8] = &[
        b'I', 0, 0, 0x40, 0, b'N', 0, 1, b't', 0, 0, 0, 2, b'h', b'i',
    ];
    let mut streamed = vec![b'I'];
    streamed.extend(be32(745));
    streamed.extend(&v1[1..]);
    let change = split_streamed(&streamed).expect("split");
    assert_eq!(change.kind, MessageKind::Insert);
    assert_eq!(change.xid, 745);
    let mut joined = vec![change.kind.tag()];
    joined.extend(change.body);
    assert_eq!(joined, v1);
    assert_eq!(
        decode(&Bytes::from(joined)),
        decode(&Bytes::from_static(v1))
    );
}

#[test]
fn split_streamed_rejects_what_never_carries_an_xid_and_short_ids() {
    assert_eq!(split_streamed(b""), Err(DecodeError::Empty));
    assert_eq!(
        split_streamed(b"Z1234"),
        Err(DecodeError::UnknownTag { tag: b'Z' })
    );
    for kind in [MessageKind::Begin, MessageKind::Commit, MessageKind::Origin]
        .into_iter()
        .chain(MessageKind::STREAM)
    {
        assert_eq!(
            split_streamed(&[kind.tag(), 0, 0, 0, 1]),
            Err(DecodeError::NotStreamable { message: kind }),
        );
    }
    assert_eq!(
        split_streamed(b"M\0\0"),
        Err(DecodeError::Truncated {
            message: MessageKind::Message,
            offset: 1,
            needed: 4,
            available: 2
        })
    );
    // A logical message in a block: the id comes off, the flags byte stays.
    let change = split_streamed(b"M\0\0\x02\xe9\x01rest").expect("split");
    assert_eq!((change.xid, change.body), (745, &b"\x01rest"[..]));
}

#[test]
fn every_tag_has_one_kind() {
    let mut tags: Vec<u8> = MessageKind::ALL
        .into_iter()
        .chain(MessageKind::STREAM)
        .map(MessageKind::tag)
        .collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(
        tags.len(),
        MessageKind::ALL.len() + MessageKind::STREAM.len()
    );
}
