//! Keepalive positions: when a replication keepalive's WAL position may be confirmed to the
//! slot, and the probe that guards it. (TCP keepalive on sockets is `crate::keepalive`.)
//!
//! ```text
//!  session starts ─▶ INSERT probe row into ds_sync.signals (published with the tables)
//!  keepalive(wal_end) ─▶ confirmed only when: no transaction open, nothing in flight
//!                        (`Ledger::keepalive`), and this session's probe came back decoded
//! ```
//!
//! While nothing is in flight, confirming a keepalive's position lets an idle slot release
//! its WAL. That is only safe once the slot is known to decode the publication's changes: a
//! slot that skips them (seen once on PostgreSQL 15, see the README) would move past
//! changes it never sent. The probe row is one of those changes; until it comes back the
//! slot holds its WAL instead, and a warning every [`WARN_AFTER`] says so. The same holds for
//! transactions that arrive without a message: PostgreSQL before 15 sends a Begin and Commit
//! for every transaction, published or not, so their commit positions are confirmed only
//! once the probe came back too (the pipeline forgets them until then).

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::lsn::Lsn;

use super::error::CaptureError;
use super::ledger::Ledger;
use super::snapshot::signals;

/// How long a probe may stay unseen before each warning.
const WARN_AFTER: Duration = Duration::from_secs(10);

/// One session's keepalive guard: the probe row in flight, until it comes back decoded.
pub struct KeepaliveProbe {
    slot: String,
    publication: String,
    pending: Option<Pending>,
}

/// A probe row in flight.
struct Pending {
    id: i64,
    sent: Instant,
    warn_at: Instant,
}

impl KeepaliveProbe {
    /// Inserts this session's probe row on `sql`. A lost connection is an error (capture
    /// reconnects); an insert the server refuses is logged and the session goes on without
    /// the guard, confirming keepalive positions as it would once the probe came back.
    pub async fn send(
        sql: &Client,
        slot: &str,
        publication: &str,
    ) -> Result<KeepaliveProbe, CaptureError> {
        let pending = match signals::probe(sql, slot).await {
            Ok(id) => {
                let now = Instant::now();
                Some(Pending {
                    id,
                    sent: now,
                    warn_at: now + WARN_AFTER,
                })
            }
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot insert the probe row; keepalive positions are confirmed without it");
                None
            }
        };
        Ok(KeepaliveProbe {
            slot: slot.to_owned(),
            publication: publication.to_owned(),
            pending,
        })
    }

    /// The position a keepalive lets capture confirm, if any: none while a transaction is
    /// open (`tx_open`), while this session's probe has not come back, or while the ledger
    /// has anything in flight (see [`Ledger::keepalive`]).
    pub fn confirmable(&self, tx_open: bool, ledger: &mut Ledger, wal_end: Lsn) -> Option<Lsn> {
        if tx_open || self.pending.is_some() {
            return None;
        }
        ledger.keepalive(wal_end)
    }

    /// True until this session's probe came back decoded.
    pub fn awaiting_probe(&self) -> bool {
        self.pending.is_some()
    }

    /// A probe row was decoded: when it is this session's, the slot decodes the publication.
    pub fn decoded(&mut self, id: i64) {
        if self.pending.as_ref().is_some_and(|p| p.id == id) {
            tracing::debug!(
                probe = id,
                "probe decoded: the slot decodes the publication"
            );
            self.pending = None;
        }
    }

    /// When the next warning about a missing probe is due.
    pub fn warning_at(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.warn_at)
    }

    /// Logs that the probe has not come back, and when to say so again.
    pub fn warn_missing(&mut self) {
        if let Some(p) = &mut self.pending {
            tracing::warn!(
                probe = p.id,
                waited_s = p.sent.elapsed().as_secs(),
                slot = %self.slot,
                publication = %self.publication,
                "the probe row has not come back from the slot: either a large transaction is \
                 still being decoded, or the slot skips this publication's changes. Keepalive \
                 positions are not confirmed meanwhile, so nothing is skipped for good; if this \
                 goes on while the server is idle, restart ds-sync"
            );
            p.warn_at = Instant::now() + WARN_AFTER;
        }
    }

    #[cfg(test)]
    fn pending(id: i64) -> KeepaliveProbe {
        let now = Instant::now();
        KeepaliveProbe {
            slot: "s".into(),
            publication: "p".into(),
            pending: Some(Pending {
                id,
                sent: now,
                warn_at: now + WARN_AFTER,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_are_confirmed_only_once_this_sessions_probe_came_back() {
        let at = Lsn::from_u64;
        let mut ledger = Ledger::new(at(100));
        let mut probe = KeepaliveProbe::pending(7);
        assert_eq!(probe.confirmable(false, &mut ledger, at(200)), None);
        probe.decoded(6);
        assert_eq!(
            probe.confirmable(false, &mut ledger, at(200)),
            None,
            "another session's probe"
        );
        assert!(probe.warning_at().is_some());
        probe.decoded(7);
        assert!(probe.warning_at().is_none());
        assert_eq!(
            probe.confirmable(true, &mut ledger, at(200)),
            None,
            "a transaction is open"
        );
        assert_eq!(
            probe.confirmable(false, &mut ledger, at(200)),
            Some(at(200))
        );
    }
}
