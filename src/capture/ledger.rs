//! The LSN ledger: which WAL positions may be confirmed to the server.
//!
//! A transaction's rows may go to several streams, in several POSTs, and one POST may carry
//! rows of several transactions. The slot may only move past a transaction once every one
//! of its messages has been acknowledged by the DS server, and only in commit order: the
//! ledger keeps transactions in the order they committed, counts each one's unacknowledged
//! messages, and confirms the end LSN of the longest fully acknowledged prefix.
//!
//! While nothing is in flight, keepalive positions are confirmed too, so a slot whose
//! publication sees no writes (only other tables change) never holds WAL back.
//!
//! Positions only move forward: a confirmation is never lower than the previous one.

use std::collections::VecDeque;

use crate::lsn::Lsn;

/// A transaction, identified by its commit LSN (unique and increasing in a replication
/// stream).
pub type TxId = Lsn;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    id: TxId,
    /// Set when the Commit message arrived.
    end_lsn: Option<Lsn>,
    /// Messages routed but not yet acknowledged by the DS server.
    pending: u64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: VecDeque<Entry>,
    confirmed: Lsn,
}

impl Ledger {
    /// A ledger that has confirmed everything up to `start` (the slot's confirmed position).
    pub fn new(start: Lsn) -> Ledger {
        Ledger {
            entries: VecDeque::new(),
            confirmed: start,
        }
    }

    /// The highest position confirmed so far.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// True while some transaction is open or has unacknowledged messages.
    pub fn in_flight(&self) -> bool {
        !self.entries.is_empty()
    }

    /// A transaction began. Ids must increase.
    pub fn begin(&mut self, id: TxId) {
        debug_assert!(
            self.entries.back().is_none_or(|e| e.id < id),
            "transaction ids must increase"
        );
        self.entries.push_back(Entry {
            id,
            end_lsn: None,
            pending: 0,
        });
    }

    fn entry_mut(&mut self, id: TxId) -> Option<&mut Entry> {
        // Entries are sorted by id, so a binary search finds it.
        let index = self.entries.binary_search_by_key(&id, |e| e.id).ok()?;
        self.entries.get_mut(index)
    }

    /// `n` more messages of transaction `id` were routed to some stream.
    pub fn add_pending(&mut self, id: TxId, n: u64) {
        if let Some(e) = self.entry_mut(id) {
            e.pending += n;
        }
    }

    /// The transaction's Commit arrived: it is complete once its messages are acknowledged.
    pub fn commit(&mut self, id: TxId, end_lsn: Lsn) {
        if let Some(e) = self.entry_mut(id) {
            e.end_lsn = Some(end_lsn);
        }
    }

    /// The DS server acknowledged `n` messages of transaction `id`.
    pub fn acked(&mut self, id: TxId, n: u64) {
        if let Some(e) = self.entry_mut(id) {
            debug_assert!(e.pending >= n, "more acknowledgements than messages");
            e.pending = e.pending.saturating_sub(n);
        }
    }

    /// Drops the open (uncommitted) transaction at the end, when the replication stream is
    /// interrupted before its Commit.
    pub fn abandon_open(&mut self) {
        while self.entries.back().is_some_and(|e| e.end_lsn.is_none()) {
            self.entries.pop_back();
        }
    }

    /// Pops fully acknowledged transactions off the front; returns the new confirmed position
    /// when it moved.
    pub fn advance(&mut self) -> Option<Lsn> {
        let before = self.confirmed;
        while let Some(front) = self.entries.front() {
            match front.end_lsn {
                Some(end) if front.pending == 0 => {
                    self.confirmed = self.confirmed.max(end);
                    self.entries.pop_front();
                }
                _ => break,
            }
        }
        (self.confirmed > before).then_some(self.confirmed)
    }

    /// A keepalive reported the server's position. Confirmed only while nothing is in
    /// flight: everything before it has then been delivered.
    pub fn keepalive(&mut self, wal_end: Lsn) -> Option<Lsn> {
        if self.in_flight() || wal_end <= self.confirmed {
            return None;
        }
        self.confirmed = wal_end;
        Some(wal_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: u64) -> Lsn {
        Lsn::from_u64(n)
    }

    #[test]
    fn confirms_only_acknowledged_prefixes_in_commit_order() {
        let mut l = Ledger::new(at(100));
        l.begin(at(200));
        l.add_pending(at(200), 2);
        l.commit(at(200), at(210));
        l.begin(at(300));
        l.add_pending(at(300), 1);
        l.commit(at(300), at(310));
        assert_eq!(l.advance(), None, "nothing acknowledged yet");
        l.acked(at(300), 1);
        assert_eq!(
            l.advance(),
            None,
            "a later transaction cannot pass an earlier one"
        );
        l.acked(at(200), 1);
        assert_eq!(
            l.advance(),
            None,
            "half of the first transaction is not enough"
        );
        l.acked(at(200), 1);
        assert_eq!(l.advance(), Some(at(310)));
        assert!(!l.in_flight());
        assert_eq!(l.confirmed(), at(310));
    }

    #[test]
    fn an_uncommitted_transaction_is_never_confirmed() {
        let mut l = Ledger::new(at(0));
        l.begin(at(50));
        l.add_pending(at(50), 1);
        l.acked(at(50), 1);
        assert_eq!(l.advance(), None, "its Commit has not arrived");
        l.commit(at(50), at(60));
        assert_eq!(l.advance(), Some(at(60)));
    }

    #[test]
    fn empty_transactions_confirm_at_commit() {
        let mut l = Ledger::new(at(0));
        l.begin(at(10));
        l.commit(at(10), at(20));
        assert_eq!(l.advance(), Some(at(20)));
    }

    #[test]
    fn keepalives_confirm_only_when_idle() {
        let mut l = Ledger::new(at(100));
        assert_eq!(l.keepalive(at(150)), Some(at(150)));
        assert_eq!(l.keepalive(at(140)), None, "never backwards");
        l.begin(at(200));
        assert_eq!(l.keepalive(at(500)), None, "a transaction is open");
        l.commit(at(200), at(210));
        l.add_pending(at(200), 1);
        assert_eq!(l.keepalive(at(500)), None, "a message is unacknowledged");
        l.acked(at(200), 1);
        assert_eq!(l.advance(), Some(at(210)));
        assert_eq!(l.keepalive(at(500)), Some(at(500)));
    }

    #[test]
    fn abandoning_drops_only_the_open_tail() {
        let mut l = Ledger::new(at(0));
        l.begin(at(10));
        l.commit(at(10), at(11));
        l.add_pending(at(10), 1);
        l.begin(at(20));
        l.add_pending(at(20), 5);
        l.abandon_open();
        assert!(l.in_flight(), "the committed transaction stays");
        l.acked(at(10), 1);
        assert_eq!(l.advance(), Some(at(11)));
        assert!(!l.in_flight());
    }

    #[test]
    fn unknown_ids_are_ignored() {
        let mut l = Ledger::new(at(0));
        l.acked(at(99), 1);
        l.add_pending(at(99), 1);
        l.commit(at(99), at(100));
        assert_eq!(l.advance(), None);
        assert!(!l.in_flight());
    }

    #[test]
    fn many_interleaved_transactions_confirm_exactly_once_each() {
        let mut l = Ledger::new(at(0));
        for i in 1..=100u64 {
            l.begin(at(i * 10));
            l.add_pending(at(i * 10), i % 3);
            l.commit(at(i * 10), at(i * 10 + 5));
        }
        // Acknowledge in reverse order: nothing may confirm until the first is done.
        for i in (2..=100u64).rev() {
            l.acked(at(i * 10), i % 3);
            assert!(l.advance().is_none_or(|c| c <= at(15)));
        }
        l.acked(at(10), 1);
        assert_eq!(l.advance(), Some(at(1005)));
    }
}
