//! Property tests of the capture path without I/O (proptest): the capture loop's
//! bookkeeping, [`Queues`] and [`Ledger`] wired as `pipeline` wires them, against a
//! simulated WAL (transactions that replay from the slot's position after a reconnect) and a
//! simulated DS server (which refuses a `Stream-Seq` not above the stream's last, as real
//! ones do).
//!
//! ```text
//!  Wal ──receive──▶ Ledger + Queues ──take_ready──▶ in flight ──deliver──▶ Server
//!   ▲                   │ advance / keepalive                                 │
//!   └──── slot ◀────────┘                         reconnect: land or not ◀────┘
//! ```
//!
//! Random interleavings of writes, receives, keepalives, deliveries (some refused as too
//! large and split), reconnects (POSTs in flight land or not) and graceful shutdowns must
//! never let the slot pass a transaction whose messages are not all in the server, never
//! put a stream's messages out of order or twice, and in the end deliver everything.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::batch::{Batch, Limits, OutMessage, Queues, Seq};
use super::ledger::Ledger;
use crate::lsn::Lsn;

const STREAMS: [&str; 3] = ["a", "b", "c"];
/// Small, so that backpressure and `Queues::relieve` come into play.
const MAX_BUFFER_BYTES: usize = 120;
const LIMITS: Limits = Limits {
    max_messages: 3,
    max_bytes: 80,
    linger: Duration::ZERO,
};

#[derive(Debug, Clone)]
enum Step {
    /// The application commits a transaction with one message per entry (its stream).
    Write { streams: Vec<u8> },
    /// WAL of other databases: the position moves with nothing to send.
    Noise { gap: u8 },
    /// The session reads up to `n` replication events (unless the buffer is full).
    Receive { n: u8 },
    /// A keepalive at the position the server has sent up to.
    Keepalive,
    /// The `pick`-th POST in flight finishes: stored, or refused as too large.
    Deliver { pick: u8, too_large: bool },
    /// The connection is lost: each POST in flight reached the server or not (bit i of
    /// `landed`), and a new session starts from the slot's position.
    Reconnect { landed: u8 },
    /// A graceful stop (deliver what was read, confirm), then a new session.
    Shutdown,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => prop::collection::vec(0..3u8, 0..6).prop_map(|streams| Step::Write { streams }),
        1 => any::<u8>().prop_map(|gap| Step::Noise { gap }),
        6 => (1..6u8).prop_map(|n| Step::Receive { n }),
        2 => Just(Step::Keepalive),
        6 => (any::<u8>(), prop::bool::weighted(0.15))
            .prop_map(|(pick, too_large)| Step::Deliver { pick, too_large }),
        1 => any::<u8>().prop_map(|landed| Step::Reconnect { landed }),
        1 => Just(Step::Shutdown),
    ]
}

#[derive(Debug)]
struct WalTx {
    commit: u64,
    end: u64,
    /// Stream of each message, in order.
    messages: Vec<usize>,
}

/// A DS server: each stream's stored message positions, in append order.
#[derive(Debug, Default)]
struct Server {
    streams: HashMap<String, Vec<Seq>>,
}

impl Server {
    /// Appends the batch unless its `Stream-Seq` is not above the stream's last (then it is
    /// "already written"); true when appended.
    fn post(&mut self, batch: &Batch) -> bool {
        let stored = self.streams.entry(batch.stream.to_string()).or_default();
        let Some(seq) = batch.seq() else {
            return true;
        };
        if stored.last().is_some_and(|last| *last >= seq) {
            return false;
        }
        stored.extend(batch.messages.iter().map(|m| m.seq));
        true
    }

    fn holds(&self, stream: &str, seq: Seq) -> bool {
        self.streams
            .get(stream)
            .is_some_and(|s| s.binary_search(&seq).is_ok())
    }
}

/// One replication session's state, as `pipeline::Session` holds it.
struct Session {
    ledger: Ledger,
    queues: Queues,
    in_flight: Vec<Batch>,
    /// The transaction being read: its WAL index and the next event's phase (0: Begin,
    /// 1..=n: message n-1, n+1: Commit).
    cursor: (usize, usize),
    /// Position the session started from (the slot's, at connect).
    start: u64,
}

struct World {
    wal: Vec<WalTx>,
    /// End of the WAL.
    wal_pos: u64,
    server: Server,
    /// The slot's confirmed position (every confirmation reaches it at once: the worst case).
    slot: u64,
    session: Session,
}

impl World {
    fn new() -> World {
        World {
            wal: Vec::new(),
            wal_pos: 100,
            server: Server::default(),
            slot: 100,
            session: Session::connect(&[], 100),
        }
    }

    fn apply(&mut self, step: &Step) {
        match step {
            Step::Write { streams } => {
                let commit = self.wal_pos + 16;
                let end = commit + 8;
                self.wal_pos = end;
                let messages = streams.iter().map(|&s| usize::from(s)).collect();
                self.wal.push(WalTx {
                    commit,
                    end,
                    messages,
                });
            }
            Step::Noise { gap } => self.wal_pos += u64::from(*gap),
            Step::Receive { n } => {
                for _ in 0..*n {
                    if !self.receive() {
                        break;
                    }
                }
            }
            Step::Keepalive => self.keepalive(),
            Step::Deliver { pick, too_large } => self.deliver(usize::from(*pick), *too_large),
            Step::Reconnect { landed } => self.reconnect(*landed),
            Step::Shutdown => self.shutdown(),
        }
        self.settle();
    }

    /// Reads one event; false when there is none or the buffer is full.
    fn receive(&mut self) -> bool {
        let s = &mut self.session;
        if s.queues.buffered_bytes() >= MAX_BUFFER_BYTES {
            return false;
        }
        let (index, phase) = s.cursor;
        let Some(tx) = self.wal.get(index) else {
            return false;
        };
        let id = Lsn::from_u64(tx.commit);
        if phase == 0 {
            s.ledger.begin(id);
        } else if phase <= tx.messages.len() {
            let i = phase - 1;
            let seq = Seq {
                commit_lsn: id,
                index: u32::try_from(i).expect("few messages"),
            };
            let json = Bytes::from(format!(r#"{{"tx":{},"i":{i}}}"#, tx.commit));
            s.ledger.add_pending(id, 1);
            s.queues
                .push(STREAMS[tx.messages[i]], OutMessage { json, tx: id, seq });
        } else {
            s.ledger.commit(id, Lsn::from_u64(tx.end));
            s.queues.commit();
            s.cursor = (index + 1, 0);
            return true;
        }
        s.cursor.1 += 1;
        true
    }

    /// The walsender has sent everything before its position: the end of the transaction
    /// being sent (mid-transaction), the last sent one's end, or the WAL's end when all is
    /// sent. Confirmed only without an open transaction (the probe is taken as seen).
    fn keepalive(&mut self) {
        let s = &mut self.session;
        let (index, phase) = s.cursor;
        let wal_end = match self.wal.get(index) {
            None => self.wal_pos,
            Some(tx) if phase > 0 => tx.end,
            Some(_) => index
                .checked_sub(1)
                .map_or(s.start, |i| self.wal[i].end.max(s.start)),
        };
        if phase == 0
            && let Some(lsn) = s.ledger.keepalive(Lsn::from_u64(wal_end))
        {
            self.slot = self.slot.max(lsn.as_u64());
        }
    }

    fn deliver(&mut self, pick: usize, too_large: bool) {
        let s = &mut self.session;
        if s.in_flight.is_empty() {
            return;
        }
        let batch = s.in_flight.remove(pick % s.in_flight.len());
        if too_large && let Some((first, second)) = batch.clone().split() {
            s.queues.requeue_front(vec![first, second]);
            return;
        }
        let accepted = self.server.post(&batch);
        s.queues.finished(&batch, accepted);
        for (tx, n) in batch.tx_counts() {
            s.ledger.acked(tx, n);
        }
    }

    fn reconnect(&mut self, landed: u8) {
        for (i, batch) in self.session.in_flight.drain(..).enumerate() {
            if landed & (1 << (i % 8)) != 0 {
                self.server.post(&batch);
            }
        }
        self.session = Session::connect(&self.wal, self.slot);
    }

    /// `pipeline::Session::run` once stopping: every open batch sendable, deliveries run
    /// to the end, the open transaction abandoned, the position confirmed.
    fn shutdown(&mut self) {
        self.session.queues.commit();
        for _ in 0..10_000 {
            self.settle();
            if self.session.in_flight.is_empty() && self.session.queues.is_idle() {
                break;
            }
            self.deliver(0, false);
        }
        let s = &mut self.session;
        assert!(
            s.in_flight.is_empty() && s.queues.is_idle(),
            "shutdown could not deliver everything it held"
        );
        s.ledger.abandon_open();
        s.ledger.advance();
        self.slot = self.slot.max(s.ledger.confirmed().as_u64());
        self.session = Session::connect(&self.wal, self.slot);
    }

    /// What the loop does between events: send what is ready (relieving a full buffer),
    /// confirm what the ledger allows.
    fn settle(&mut self) {
        let s = &mut self.session;
        s.in_flight.extend(s.queues.take_ready(Instant::now()));
        if s.queues.relieve(MAX_BUFFER_BYTES) > 0 {
            s.in_flight.extend(s.queues.take_ready(Instant::now()));
        }
        if let Some(lsn) = s.ledger.advance() {
            self.slot = self.slot.max(lsn.as_u64());
        }
    }

    /// Reads and delivers everything, then stops gracefully.
    fn finish(&mut self) {
        for _ in 0..100_000 {
            if !self.session.in_flight.is_empty() {
                self.deliver(0, false);
            } else if !self.receive() {
                break;
            }
            self.settle();
        }
        self.shutdown();
    }

    /// The safety rules, after every step.
    fn check(&self) {
        for (name, stored) in &self.server.streams {
            assert!(
                stored.windows(2).all(|w| w[0] < w[1]),
                "stream {name} holds messages out of order or twice: {stored:?}"
            );
        }
        for tx in self.wal.iter().filter(|t| t.commit < self.slot) {
            for (i, &stream) in tx.messages.iter().enumerate() {
                let seq = Seq {
                    commit_lsn: Lsn::from_u64(tx.commit),
                    index: u32::try_from(i).expect("few messages"),
                };
                assert!(
                    self.server.holds(STREAMS[stream], seq),
                    "the slot is at {} but message {i} of transaction {} is not in stream {}",
                    self.slot,
                    tx.commit,
                    STREAMS[stream]
                );
            }
        }
    }

    /// After [`World::finish`]: every stream holds exactly its messages, in WAL order, and
    /// the slot is past the last transaction.
    fn check_complete(&self) {
        for (s, name) in STREAMS.iter().enumerate() {
            let expected: Vec<Seq> = self
                .wal
                .iter()
                .flat_map(|tx| {
                    tx.messages
                        .iter()
                        .enumerate()
                        .filter(move |(_, stream)| **stream == s)
                        .map(move |(i, _)| Seq {
                            commit_lsn: Lsn::from_u64(tx.commit),
                            index: u32::try_from(i).expect("few messages"),
                        })
                })
                .collect();
            let stored = self.server.streams.get(*name).cloned().unwrap_or_default();
            assert_eq!(stored, expected, "stream {name}");
        }
        if let Some(last) = self.wal.last() {
            assert!(
                self.slot >= last.end,
                "slot {} before {}",
                self.slot,
                last.end
            );
        }
    }
}

impl Session {
    /// A session starting at `slot`: the server sends again every transaction whose commit
    /// is at or past it.
    fn connect(wal: &[WalTx], slot: u64) -> Session {
        let first = wal
            .iter()
            .position(|t| t.commit >= slot)
            .unwrap_or(wal.len());
        Session {
            ledger: Ledger::new(Lsn::from_u64(slot)),
            queues: Queues::new(LIMITS),
            in_flight: Vec::new(),
            cursor: (first, 0),
            start: slot,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The slot never passes a message the server does not hold, streams stay in order
    /// without duplicates, and once everything is read and delivered each stream holds
    /// exactly its messages.
    #[test]
    fn model_capture_never_confirms_unacknowledged_messages_nor_reorders(
        steps in prop::collection::vec(step(), 1..100)
    ) {
        let mut world = World::new();
        for step in &steps {
            world.apply(step);
            world.check();
        }
        world.finish();
        world.check();
        world.check_complete();
    }
}
