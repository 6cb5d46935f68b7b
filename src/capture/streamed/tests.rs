//! The store of streamed transactions on hand-built stream blocks: order, interleaving,
//! aborts of whole transactions and of subtransactions, and the spill to a file.

use bytes::Bytes;

use super::{Streamed, StreamedError};
use crate::pgoutput::{StreamAbort, StreamStart};

const TOP: u32 = 700;
const OTHER: u32 = 800;

/// An Insert as a stream block carries it: tag, `xid`, then a body naming `row`.
fn insert(xid: u32, row: &str) -> Vec<u8> {
    let mut m = vec![b'I'];
    m.extend(xid.to_be_bytes());
    m.extend(row.as_bytes());
    m
}

/// A Relation in a stream block (its body is opaque to the store).
fn relation(xid: u32, name: &str) -> Vec<u8> {
    let mut m = vec![b'R'];
    m.extend(xid.to_be_bytes());
    m.extend(name.as_bytes());
    m
}

fn start(s: &mut Streamed, xid: u32, first_segment: bool) {
    s.start(StreamStart { xid, first_segment }).expect("start");
}

/// The replayed messages as text: the tag, then the body.
fn replay(s: &mut Streamed, xid: u32) -> Vec<String> {
    let mut r = s.commit(xid).expect("commit");
    let mut out = Vec::new();
    while let Some(m) = r.next_message().expect("read") {
        out.push(text(&m));
    }
    out
}

fn text(m: &Bytes) -> String {
    format!("{}{}", char::from(m[0]), String::from_utf8_lossy(&m[1..]))
}

fn stores() -> [(&'static str, Streamed); 2] {
    let dir = std::env::temp_dir();
    [
        ("in memory", Streamed::new(usize::MAX, dir.clone())),
        ("spilled", Streamed::new(0, dir)),
    ]
}

#[test]
fn blocks_of_two_interleaved_transactions_replay_each_whole_and_in_order() {
    for (name, mut s) in stores() {
        start(&mut s, TOP, true);
        s.append(&insert(TOP, "a1")).unwrap();
        s.stop().unwrap();
        start(&mut s, OTHER, true);
        s.append(&insert(OTHER, "b1")).unwrap();
        s.stop().unwrap();
        start(&mut s, TOP, false);
        s.append(&insert(TOP, "a2")).unwrap();
        s.stop().unwrap();
        assert_eq!(replay(&mut s, OTHER), ["Ib1"], "{name}");
        assert_eq!(replay(&mut s, TOP), ["Ia1", "Ia2"], "{name}");
        assert!(s.is_empty(), "{name}: both transactions left");
        assert_eq!(s.memory_bytes(), 0, "{name}");
    }
}

#[test]
fn a_whole_abort_drops_the_transaction() {
    for (name, mut s) in stores() {
        start(&mut s, TOP, true);
        s.append(&insert(TOP, "a1")).unwrap();
        s.stop().unwrap();
        s.abort(StreamAbort {
            xid: TOP,
            subxact_xid: TOP,
        })
        .unwrap();
        assert!(s.is_empty(), "{name}");
        let err = s.commit(TOP).err().expect("nothing to commit");
        assert!(
            matches!(err, StreamedError::UnknownTransaction { xid: TOP, .. }),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn a_subtransaction_abort_drops_its_changes_and_its_children_only() {
    for (name, mut s) in stores() {
        start(&mut s, TOP, true);
        s.append(&insert(TOP, "before")).unwrap();
        s.append(&insert(701, "sub")).unwrap();
        s.append(&relation(702, "t2")).unwrap();
        s.append(&insert(702, "nested")).unwrap();
        s.stop().unwrap();
        start(&mut s, TOP, false);
        s.append(&insert(701, "sub again")).unwrap();
        s.stop().unwrap();
        // ROLLBACK TO the savepoint of 701, which 702 was nested in.
        s.abort(StreamAbort {
            xid: TOP,
            subxact_xid: 701,
        })
        .unwrap();
        start(&mut s, TOP, false);
        s.append(&insert(TOP, "after")).unwrap();
        s.append(&insert(703, "kept sub")).unwrap();
        s.stop().unwrap();
        // A subtransaction that streamed nothing.
        s.abort(StreamAbort {
            xid: TOP,
            subxact_xid: 799,
        })
        .unwrap();
        assert_eq!(
            replay(&mut s, TOP),
            ["Ibefore", "Rt2", "Iafter", "Ikept sub"],
            "{name}: the Relation of the cut part stays, its changes go"
        );
    }
}

#[test]
fn a_later_block_of_an_unknown_transaction_is_an_error() {
    let (_, mut s) = stores().into_iter().next().unwrap();
    let err = s
        .start(StreamStart {
            xid: TOP,
            first_segment: false,
        })
        .expect_err("no first block");
    assert!(
        err.is_transient(),
        "reconnecting reads the transaction again"
    );
    assert!(err.to_string().contains("700"), "{err}");
    let err = s.append(&insert(TOP, "x")).expect_err("no block open");
    assert!(matches!(err, StreamedError::OutsideBlock { .. }), "{err:?}");
    assert!(matches!(s.stop(), Err(StreamedError::OutsideBlock { .. })));
}

#[test]
fn a_message_that_never_carries_an_xid_fails_in_a_block() {
    let (_, mut s) = stores().into_iter().next().unwrap();
    start(&mut s, TOP, true);
    let err = s.append(b"B12345678").expect_err("Begin in a block");
    assert!(
        matches!(err, StreamedError::Decode { xid: TOP, .. }),
        "{err:?}"
    );
}

#[test]
fn memory_stays_under_the_bound_by_spilling() {
    let mut s = Streamed::new(1000, std::env::temp_dir());
    start(&mut s, TOP, true);
    for i in 0..500 {
        s.append(&insert(TOP, &format!("row {i:04}"))).unwrap();
        assert!(
            s.memory_bytes() <= 1000 + 64,
            "{} bytes held after {i}",
            s.memory_bytes()
        );
    }
    s.stop().unwrap();
    let rows = replay(&mut s, TOP);
    assert_eq!(rows.len(), 500);
    assert_eq!(rows[0], "Irow 0000");
    assert_eq!(rows[499], "Irow 0499");
}
