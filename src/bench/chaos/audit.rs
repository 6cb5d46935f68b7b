//! The chaos run's verdict: what the writers committed against what the streams hold, and
//! what the streams hold against what `session_events` holds. Pure comparisons here; the
//! reads are in the scenario.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use serde_json::Value;

use super::writer::{Change, Op, TABLES, stream_of};

/// Lost, duplicated, reordered and unexpected items of one comparison.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Tally {
    /// Items there should be.
    pub expected: u64,
    /// Items read (duplicates included).
    pub found: u64,
    /// Expected items never found.
    pub lost: u64,
    /// Reads of an item beyond its first.
    pub duplicated: u64,
    /// Items found before one that should have come before them.
    pub reordered: u64,
    /// Items found that should not exist (a change never committed, an event in no stream,
    /// a message in the wrong stream).
    pub unexpected: u64,
}

impl Tally {
    pub(super) fn add(&mut self, other: Tally) {
        self.expected += other.expected;
        self.found += other.found;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.unexpected += other.unexpected;
    }
}

/// Compares one sequence read back with the sequence it should be: every item exactly once,
/// in the same order. Items are unique in `expected`.
pub(super) fn compare<T: Eq + Hash + Clone>(expected: &[T], found: &[T]) -> Tally {
    let position: HashMap<&T, usize> = expected.iter().enumerate().map(|(i, t)| (t, i)).collect();
    let mut seen = HashSet::new();
    let mut tally = Tally {
        expected: expected.len() as u64,
        found: found.len() as u64,
        ..Tally::default()
    };
    let mut last: Option<usize> = None;
    for item in found {
        let Some(&at) = position.get(item) else {
            tally.unexpected += 1;
            continue;
        };
        if !seen.insert(item) {
            tally.duplicated += 1;
            continue;
        }
        if last.is_some_and(|l| at < l) {
            tally.reordered += 1;
        }
        last = Some(last.map_or(at, |l| l.max(at)));
    }
    tally.lost = expected.iter().filter(|t| !seen.contains(t)).count() as u64;
    tally
}

/// A row change as a stream message names it.
type ChangeId = (Op, i64);

/// One capture message read back: its row and change, or why it cannot be read.
fn message_change(m: &Value) -> Option<(usize, i64, ChangeId)> {
    let table = TABLES.iter().position(|t| m["type"] == *t)?;
    let id: i64 = m["key"].as_str()?.parse().ok()?;
    let op = Op::parse(m["headers"]["operation"].as_str()?)?;
    let row = if op == Op::Delete {
        &m["old_value"]
    } else {
        &m["value"]
    };
    let rev = row["rev"]
        .as_i64()
        .or_else(|| row["rev"].as_str().and_then(|s| s.parse().ok()))?;
    Some((table, id, (op, rev)))
}

/// What the capture streams hold against the writers' ledger: per row, every committed
/// change exactly once and in commit order, in the row's stream. Also counts messages whose
/// commit LSN is below the one before them in the same stream (`lsn_breaks`).
pub(super) fn capture(changes: &[Change], streams: &HashMap<String, Vec<Value>>) -> (Tally, u64) {
    let mut expected: HashMap<(usize, i64), Vec<ChangeId>> = HashMap::new();
    for c in changes {
        expected
            .entry((c.table, c.id))
            .or_default()
            .push((c.op, c.rev));
    }
    let mut found: HashMap<(usize, i64), Vec<ChangeId>> = HashMap::new();
    let mut tally = Tally::default();
    let mut lsn_breaks = 0;
    for (stream, messages) in streams {
        let mut last_lsn = None;
        for m in messages {
            if m["headers"]["control"].is_string() {
                continue;
            }
            let lsn = m["headers"]["lsn"]
                .as_str()
                .and_then(|s| s.parse::<crate::lsn::Lsn>().ok());
            if lsn.is_some() && last_lsn.is_some() && lsn < last_lsn {
                lsn_breaks += 1;
            }
            last_lsn = lsn.or(last_lsn);
            match message_change(m) {
                Some((table, id, change)) if stream_of(table, id) == *stream => {
                    found.entry((table, id)).or_default().push(change);
                }
                _ => {
                    tally.unexpected += 1;
                    tally.found += 1;
                }
            }
        }
    }
    for (row, want) in &expected {
        tally.add(compare(want, found.get(row).map_or(&[][..], Vec::as_slice)));
    }
    for (row, got) in &found {
        if !expected.contains_key(row) {
            tally.add(compare(&[], got));
        }
    }
    (tally, lsn_breaks)
}

/// What `session_events` holds for one stream (event numbers in `id` order) against the
/// stream (event numbers in stream order): every event exactly once, in order. Events the
/// server acknowledged but the stream lacks count as lost too (`acked_missing`).
pub(super) fn ingest(in_stream: &[u64], stored: &[u64], acked: &[u64]) -> (Tally, u64) {
    let present: HashSet<u64> = in_stream.iter().copied().collect();
    let acked_missing = acked.iter().filter(|n| !present.contains(n)).count() as u64;
    let mut tally = compare(in_stream, stored);
    tally.lost += acked_missing;
    (tally, acked_missing)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_kind_of_difference_is_counted() {
        assert_eq!(
            compare(&[1, 2, 3], &[1, 2, 3]),
            Tally {
                expected: 3,
                found: 3,
                ..Tally::default()
            }
        );
        let t = compare(&[1, 2, 3, 4], &[1, 3, 3, 2, 9]);
        assert_eq!(
            (t.lost, t.duplicated, t.reordered, t.unexpected),
            (1, 1, 1, 1),
            "{t:?}"
        );
        let t = compare(&[1, 2, 3], &[3, 1, 2]);
        assert_eq!((t.lost, t.reordered), (0, 2), "{t:?}");
    }

    fn message(table: &str, id: i64, op: &str, rev: i64, lsn: &str) -> Value {
        let row = json!({"id": id, "rev": rev});
        let mut m = json!({"type": table, "key": id.to_string(),
            "headers": {"operation": op, "lsn": lsn}});
        if op == "delete" {
            m["old_value"] = row;
        } else {
            m["value"] = row;
        }
        m
    }

    #[test]
    fn capture_messages_are_held_to_the_ledger() {
        let changes = [
            Change {
                table: 0,
                id: 1,
                op: Op::Insert,
                rev: 10,
            },
            Change {
                table: 0,
                id: 1,
                op: Op::Update,
                rev: 11,
            },
            Change {
                table: 0,
                id: 1,
                op: Op::Delete,
                rev: 11,
            },
            Change {
                table: 2,
                id: 5,
                op: Op::Insert,
                rev: 12,
            },
        ];
        let a = vec![
            message("chaos_a", 1, "insert", 10, "0/10"),
            message("chaos_a", 1, "update", 11, "0/20"),
            message("chaos_a", 1, "delete", 11, "0/30"),
        ];
        let c = vec![message("chaos_c", 5, "insert", 12, "0/30")];
        let mut streams =
            HashMap::from([("chaos-chaos_a".to_owned(), a), ("chaos-c/1".to_owned(), c)]);
        let (t, breaks) = capture(&changes, &streams);
        assert_eq!(
            (t.expected, t.found, t.lost, t.duplicated, t.unexpected),
            (4, 4, 0, 0, 0)
        );
        assert_eq!((t.reordered, breaks), (0, 0));
        let a = streams.get_mut("chaos-chaos_a").unwrap();
        a.swap(0, 1);
        a.push(message("chaos_a", 1, "delete", 11, "0/30"));
        streams.insert(
            "chaos-c/2".into(),
            vec![message("chaos_c", 6, "insert", 13, "0/40")],
        );
        let (t, breaks) = capture(&changes, &streams);
        assert_eq!(
            (t.reordered, t.duplicated, t.unexpected),
            (1, 1, 1),
            "{t:?}"
        );
        assert_eq!(breaks, 1);
    }

    #[test]
    fn a_message_in_the_wrong_stream_is_unexpected_and_its_change_lost() {
        let changes = [Change {
            table: 2,
            id: 5,
            op: Op::Insert,
            rev: 12,
        }];
        let streams = HashMap::from([(
            "chaos-c/2".to_owned(),
            vec![message("chaos_c", 5, "insert", 12, "0/30")],
        )]);
        let (t, _) = capture(&changes, &streams);
        assert_eq!((t.lost, t.unexpected), (1, 1), "{t:?}");
    }

    #[test]
    fn ingest_counts_acknowledged_events_missing_from_the_stream_as_lost() {
        let (t, missing) = ingest(&[1, 2, 3], &[1, 2, 3], &[1, 2, 3, 4]);
        assert_eq!((t.lost, missing), (1, 1));
        let (t, _) = ingest(&[1, 2, 3], &[1, 2, 2, 3], &[]);
        assert_eq!((t.lost, t.duplicated), (0, 1));
    }
}
