//! Commits a chunk's read could not see although capture streamed them before the chunk's
//! low watermark (pure).
//!
//! PostgreSQL writes a commit record to the WAL before it makes the transaction visible to
//! other sessions' snapshots. In between, logical decoding may already send the commit. The
//! gap is usually microseconds (the committing backend is descheduled), but a commit waiting
//! for a synchronous standby stays invisible for the whole wait. So a transaction can come
//! before the low watermark in the WAL, and be streamed to clients, while the chunk's read
//! (taken after the low watermark committed) still sees the rows as they were before it.
//! Placed at the high watermark, those older copies would overwrite the streamed change in
//! every client.
//!
//! Such a transaction was still running in the read's snapshot: its xid is in the
//! snapshot's in-progress list, which the read returns with its rows
//! (`txid_current_snapshot()`, the statement's own snapshot). Capture keeps the last
//! [`RecentCommits::CAPACITY`] pairs of (transaction, table changed) it decoded. A chunk whose
//! table was changed, before its low watermark, by a transaction the read saw in progress is
//! read again later instead of placed.

use std::collections::{HashSet, VecDeque};

/// The transactions in progress for a chunk's read, by the 32-bit xid that pgoutput's
/// Begin and Stream Commit messages carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InProgress(HashSet<u32>);

impl InProgress {
    /// Parses `txid_current_snapshot()`'s text, `xmin:xmax:xip,xip,...`, whose ids carry
    /// the xid epoch in their high 32 bits. Transactions from `xmax` on began after the
    /// read, so they committed after the low watermark: only the list matters.
    pub fn parse(text: &str) -> Result<InProgress, String> {
        let bad = || format!("'{text}' is not a transaction snapshot (xmin:xmax:xip,...)");
        let mut parts = text.split(':');
        let (Some(_xmin), Some(_xmax), Some(list), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let ids = list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u64>().map(|id| id as u32).map_err(|_| bad()))
            .collect::<Result<HashSet<u32>, String>>()?;
        Ok(InProgress(ids))
    }

    fn contains(&self, xid: u32) -> bool {
        self.0.contains(&xid)
    }
}

/// The last decoded commits, as (xid, relation oid) for every table each one changed,
/// oldest first.
#[derive(Debug, Default)]
pub struct RecentCommits {
    entries: VecDeque<(u32, u32)>,
    /// How many pairs were ever pushed: positions count from here.
    pushed: u64,
}

impl RecentCommits {
    /// Pairs kept (512 KiB). A transaction that stays invisible for longer than this many
    /// later (transaction, table) pairs goes unnoticed.
    pub const CAPACITY: usize = 65_536;

    /// A transaction `xid` committed, having changed `tables`.
    pub fn committed(&mut self, xid: u32, tables: &[u32]) {
        for &oid in tables {
            if self.entries.len() == Self::CAPACITY {
                self.entries.pop_front();
            }
            self.entries.push_back((xid, oid));
            self.pushed += 1;
        }
    }

    /// The position after every commit decoded so far (taken at a low watermark).
    pub fn mark(&self) -> u64 {
        self.pushed
    }

    /// The transactions that changed `table`, were decoded before `mark`, and were in
    /// progress for the chunk's read: the read missed them.
    pub fn missed(&self, mark: u64, table: u32, in_progress: &InProgress) -> Vec<u32> {
        let first = self.pushed - self.entries.len() as u64;
        let before = mark.saturating_sub(first).min(self.entries.len() as u64) as usize;
        let mut missed: Vec<u32> = self
            .entries
            .range(..before)
            .filter(|&&(xid, oid)| oid == table && in_progress.contains(xid))
            .map(|&(xid, _)| xid)
            .collect();
        // A reconnect's replay records a transaction again, not next to its first record.
        missed.sort_unstable();
        missed.dedup();
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_text_gives_its_in_progress_xids_without_their_epoch() {
        let s = InProgress::parse("4294967396:4294967410:4294967397,4294967400").unwrap();
        assert_eq!(s, InProgress([101, 104].into_iter().collect()));
        assert_eq!(
            InProgress::parse("730:730:").unwrap(),
            InProgress::default()
        );
        for bad in ["", "1:2", "1:2:x", "1:2:3:4"] {
            assert!(InProgress::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_commits_of_the_table_before_the_mark_and_in_progress_are_missed() {
        let mut recent = RecentCommits::default();
        recent.committed(10, &[500]);
        recent.committed(11, &[600, 500]);
        recent.committed(12, &[600]);
        let mark = recent.mark();
        recent.committed(13, &[500]);
        let running = InProgress([11, 12, 13].into_iter().collect());
        assert_eq!(recent.missed(mark, 500, &running), vec![11]);
        assert_eq!(recent.missed(mark, 600, &running), vec![11, 12]);
        assert!(recent.missed(mark, 700, &running).is_empty());
        let mut replayed = RecentCommits::default();
        replayed.committed(11, &[500]);
        replayed.committed(12, &[500]);
        replayed.committed(11, &[500]);
        assert_eq!(
            replayed.missed(replayed.mark(), 500, &running),
            vec![11, 12]
        );
        // After the mark: inside the window, which handles it.
        assert!(recent.missed(0, 500, &running).is_empty());
        assert!(recent.missed(mark, 500, &InProgress::default()).is_empty());
    }

    #[test]
    fn old_commits_fall_out_and_marks_before_them_still_work() {
        let mut recent = RecentCommits::default();
        for xid in 0..(RecentCommits::CAPACITY as u32 + 10) {
            recent.committed(xid, &[1]);
        }
        let running = InProgress([5, 20, 70_000].into_iter().collect());
        assert_eq!(recent.entries.len(), RecentCommits::CAPACITY);
        // xid 5 is gone; 20 is kept; 70,000 never committed.
        assert_eq!(recent.missed(recent.mark(), 1, &running), vec![20]);
        assert!(recent.missed(3, 1, &running).is_empty());
    }
}
