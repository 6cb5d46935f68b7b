//! `capture-latency`'s timeline: where a row's time goes between its commit returning to the
//! writer and its arrival at the SSE reader.
//!
//! ```text
//!  commit returned ─▶ received ─▶ POST started ─▶ acknowledged ─▶ seen by the SSE reader
//!   (bench stamp)     (ds-sync: Commit decoded, POST, answer:          (bench stamp)
//!                      `observe::timeline`, in the child's file)
//! ```
//!
//! The child writes its stages per transaction, keyed by commit LSN, and the `R` line ties
//! the LSN to the xid; the reader takes each row's xid from its message's `headers.txid`.
//! Both processes read the Unix clock of the same machine. The WAL can reach ds-sync before
//! the writer's INSERT returns (the walsender sends once the commit is flushed, the reply to
//! the writer may come later), so "commit → received" can be zero: such rows count as 1 µs.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use super::BenchError;
use super::latency::Stamps;
use super::report::Latency;

/// Each item's transaction id, as its message's `headers.txid` said (0: not seen).
pub(super) struct Xids(Vec<AtomicU32>);

impl Xids {
    /// Room for items `0..=last`.
    pub(super) fn new(last: usize) -> Xids {
        Xids((0..=last).map(|_| AtomicU32::new(0)).collect())
    }

    /// Records `item`'s xid; items out of range are someone else's.
    pub(super) fn set(&self, item: u64, xid: u32) {
        if let Some(slot) = usize::try_from(item).ok().and_then(|i| self.0.get(i)) {
            slot.store(xid, Ordering::Relaxed);
        }
    }

    fn get(&self, item: usize) -> Option<u32> {
        self.0
            .get(item)
            .map(|x| x.load(Ordering::Relaxed))
            .filter(|&x| x != 0)
    }
}

/// What the child wrote: per transaction, when it was received, first posted and first
/// acknowledged (µs on the Unix clock).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ChildStages {
    /// xid → (commit LSN, received).
    received: HashMap<u32, (u64, u64)>,
    posted: HashMap<u64, u64>,
    acknowledged: HashMap<u64, u64>,
}

impl ChildStages {
    /// Reads the child's timeline file.
    pub(super) fn read(path: &Path) -> Result<ChildStages, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, &e))?;
        ChildStages::parse(&text)
            .map_err(|line| BenchError::Report(format!("{}: bad line {line:?}", path.display())))
    }

    /// Parses the lines `R lsn xid us`, `P lsn us` and `A lsn us`; the first stamp of each
    /// kind counts. A last line cut short (the child stopped mid-write) is ignored.
    fn parse(text: &str) -> Result<ChildStages, String> {
        let mut out = ChildStages::default();
        let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
        for line in complete.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            match (f.first().copied(), f.len()) {
                (Some("R"), 4) => {
                    let (Some(lsn), Some(xid), Some(at)) = (num(1), num(2), num(3)) else {
                        return Err(line.to_owned());
                    };
                    let xid = u32::try_from(xid).map_err(|_| line.to_owned())?;
                    out.received.entry(xid).or_insert((lsn, at));
                }
                (Some(kind @ ("P" | "A")), 3) => {
                    let (Some(lsn), Some(at)) = (num(1), num(2)) else {
                        return Err(line.to_owned());
                    };
                    let map = if kind == "P" {
                        &mut out.posted
                    } else {
                        &mut out.acknowledged
                    };
                    map.entry(lsn).or_insert(at);
                }
                _ => return Err(line.to_owned()),
            }
        }
        Ok(out)
    }

    /// An item's five times: commit returned, received, posted, acknowledged, seen.
    fn times(&self, stamps: &Stamps, xids: &Xids, item: usize) -> Option<[u64; 5]> {
        let (Some(sent), Some(seen)) = stamps.unix_us(item) else {
            return None;
        };
        let (lsn, received) = *self.received.get(&xids.get(item)?)?;
        let posted = *self.posted.get(&lsn)?;
        let acknowledged = *self.acknowledged.get(&lsn)?;
        Some([sent, received, posted, acknowledged, seen])
    }
}

/// The stages, by name and the indexes of their start and end in [`ChildStages::times`].
const STAGES: [(&str, usize, usize); 5] = [
    ("commit to received by ds-sync", 0, 1),
    ("received to POST started", 1, 2),
    ("POST started to acknowledged", 2, 3),
    ("acknowledged to SSE", 3, 4),
    ("commit to acknowledged (ds-sync's share)", 0, 3),
];

/// The distribution of each stage over `items` (`label` appended to each name), and how
/// many items had every stage recorded.
pub(super) fn stages(
    child: &ChildStages,
    stamps: &Stamps,
    xids: &Xids,
    items: Range<usize>,
    label: &str,
) -> Result<(Vec<Latency>, usize), BenchError> {
    let mut hists = STAGES
        .iter()
        .map(|_| super::latency::histogram())
        .collect::<Result<Vec<_>, _>>()?;
    let mut complete = 0;
    for item in items {
        let Some(t) = child.times(stamps, xids, item) else {
            continue;
        };
        complete += 1;
        for (h, (_, from, to)) in hists.iter_mut().zip(STAGES) {
            h.saturating_record(t[to].saturating_sub(t[from]).max(1));
        }
    }
    let latencies = hists
        .iter()
        .zip(STAGES)
        .map(|(h, (name, _, _))| Latency::from_histogram(&format!("{name}{label}"), h))
        .collect();
    Ok((latencies, complete))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stamp_of_each_stage_counts_and_a_cut_last_line_is_ignored() {
        let text = "R 100 7 1000\nP 100 1200\nP 100 1900\nA 100 1500\nR 100 7 5000\nA 1";
        let c = ChildStages::parse(text).unwrap();
        assert_eq!(c.received[&7], (100, 1000));
        assert_eq!(c.posted[&100], 1200);
        assert_eq!(c.acknowledged[&100], 1500);
    }

    #[test]
    fn a_malformed_line_is_named() {
        assert_eq!(
            ChildStages::parse("R 100 x 1\n"),
            Err("R 100 x 1".to_owned())
        );
        assert_eq!(ChildStages::parse("Q 1 2\n"), Err("Q 1 2".to_owned()));
    }

    #[test]
    fn stages_join_the_bench_stamps_to_the_child_times_by_xid_and_lsn() {
        let stamps = Stamps::new(2);
        stamps.sent(1);
        stamps.arrived(1);
        stamps.sent(2);
        let (sent, seen) = stamps.unix_us(1);
        let (sent, seen) = (sent.unwrap(), seen.unwrap());
        let xids = Xids::new(2);
        xids.set(1, 42);
        xids.set(2, 43);
        let text = format!(
            "R 9 42 {}\nP 9 {}\nA 9 {}\nR 10 43 1\n",
            sent + 100,
            sent + 300,
            sent + 600
        );
        let child = ChildStages::parse(&text).unwrap();
        let (l, complete) = stages(&child, &stamps, &xids, 1..3, "").unwrap();
        assert_eq!(complete, 1, "item 2 has no POST and did not arrive");
        assert_eq!(l[0].count, 1);
        assert!((l[0].p50 - 0.1).abs() < 0.001, "{}", l[0].p50);
        assert!((l[1].p50 - 0.2).abs() < 0.001, "{}", l[1].p50);
        assert!((l[4].p50 - 0.6).abs() < 0.001, "{}", l[4].p50);
        let seen_after_ack = seen.saturating_sub(sent + 600).max(1) as f64 / 1000.0;
        assert!((l[3].p50 - seen_after_ack).abs() < 0.01, "{}", l[3].p50);
    }
}
