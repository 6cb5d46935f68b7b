//! Per-stream batching: messages wait here until a POST may carry them.
//!
//! Rules, in the order they matter:
//! * **One POST in flight per stream.** `Stream-Seq` must arrive in order, and so must the
//!   rows; different streams proceed in parallel.
//! * **Natural batching.** A committed transaction's messages are sent as soon as their
//!   stream is idle; while a POST is in flight, later messages gather into the next batch
//!   (up to `max_messages` / `max_bytes`). Idle streams get latency of one round trip,
//!   busy ones get large batches. An optional linger holds small batches a little longer.
//! * **Huge transactions stream through.** A batch that reaches a bound is sealed and sent
//!   even before its transaction's Commit, so memory stays bounded.
//! * **Recovery mode.** After a (re)start, the stream may already hold some of the messages
//!   being replayed, with unknown batch boundaries. Until the server accepts the first POST
//!   of a stream, that stream's batches hold one message each: each already-written message
//!   is refused by its sequence number alone, and no accepted POST can mix old and new.
//! * **A full buffer never stalls.** A transaction fanned out over many streams can fill
//!   the buffer bound before its Commit with no stream's batch at a bound: nothing would be
//!   sendable, nothing in flight, and reading would stop for good. [`Queues::relieve`]
//!   breaks that: when the held bytes reach the bound and no POST is in flight, it seals the
//!   largest open batches until at least half of the held bytes are sendable (largest first:
//!   the fewest POSTs free the most memory; half: enough POSTs to use the in-flight
//!   parallelism, and room to read on once they are acknowledged). Sending an open
//!   transaction's messages before its Commit is what a huge single-stream transaction does
//!   anyway; the ledger still confirms only whole transactions. A stream in recovery mode
//!   seals every message as it comes, so it always has something sendable or in flight and
//!   never needs relief.
//!
//! Each message carries its position [`Seq`] `(commit LSN, index in transaction)`:
//! deterministic, so a replay recomputes the same values, and increasing in stream order. A
//! batch's `Stream-Seq` is its last message's position (see `seq`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::ledger::TxId;
pub use super::seq::Seq;

/// One serialized State Protocol message on its way to a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    pub json: Bytes,
    pub tx: TxId,
    pub seq: Seq,
}

/// Messages for one POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub stream: Arc<str>,
    pub messages: Vec<OutMessage>,
    pub bytes: usize,
}

impl Batch {
    /// The POST body: a JSON array of the messages.
    pub fn body(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.bytes + self.messages.len() + 2);
        out.put_u8(b'[');
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(&m.json);
        }
        out.put_u8(b']');
        out.freeze()
    }

    /// The batch's `Stream-Seq`: its last message's.
    pub fn seq(&self) -> Option<Seq> {
        self.messages.last().map(|m| m.seq)
    }

    /// Messages per transaction, for the ledger.
    pub fn tx_counts(&self) -> Vec<(TxId, u64)> {
        let mut runs: Vec<(TxId, u64)> = Vec::new();
        for m in &self.messages {
            match runs.last_mut() {
                Some((tx, n)) if *tx == m.tx => *n += 1,
                _ => runs.push((m.tx, 1)),
            }
        }
        runs
    }

    /// Halves a batch the server found too large; `None` for a single message.
    pub fn split(mut self) -> Option<(Batch, Batch)> {
        if self.messages.len() < 2 {
            return None;
        }
        let tail = self.messages.split_off(self.messages.len() / 2);
        let size = |m: &[OutMessage]| m.iter().map(|m| m.json.len()).sum();
        let second = Batch {
            stream: Arc::clone(&self.stream),
            bytes: size(&tail),
            messages: tail,
        };
        self.bytes = size(&self.messages);
        Some((self, second))
    }
}

/// Batch bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_messages: usize,
    pub max_bytes: usize,
    /// How long a committed, non-full batch may wait for more messages.
    pub linger: Duration,
}

impl Limits {
    /// Default of `--batch-max-messages`.
    pub const DEFAULT_MAX_MESSAGES: usize = 1000;
    /// Default of `--batch-max-bytes`.
    pub const DEFAULT_MAX_BYTES: usize = 1 << 20;
    /// Default of `--linger-ms`: a committed batch leaves at once.
    pub const DEFAULT_LINGER: Duration = Duration::ZERO;
}

#[derive(Debug)]
struct StreamQueue {
    open: Vec<OutMessage>,
    open_bytes: usize,
    /// The open batch holds committed messages and may be sent.
    flushable: bool,
    opened_at: Option<Instant>,
    sealed: VecDeque<Batch>,
    in_flight: bool,
    recovering: bool,
}

impl StreamQueue {
    fn new() -> StreamQueue {
        StreamQueue {
            open: Vec::new(),
            open_bytes: 0,
            flushable: false,
            opened_at: None,
            sealed: VecDeque::new(),
            in_flight: false,
            recovering: true,
        }
    }

    fn seal(&mut self, stream: &Arc<str>) {
        if self.open.is_empty() {
            return;
        }
        self.sealed.push_back(Batch {
            stream: Arc::clone(stream),
            messages: std::mem::take(&mut self.open),
            bytes: std::mem::take(&mut self.open_bytes),
        });
        self.flushable = false;
        self.opened_at = None;
    }
}

/// Merges consecutive batches of one stream, in order, up to the limits: after recovery
/// mode ends, a backlog queued one message per batch leaves in full batches.
fn coalesce(batches: VecDeque<Batch>, limits: Limits) -> VecDeque<Batch> {
    let mut out: VecDeque<Batch> = VecDeque::new();
    for batch in batches {
        match out.back_mut() {
            Some(last)
                if last.messages.len() + batch.messages.len() <= limits.max_messages
                    && last.bytes + batch.bytes <= limits.max_bytes =>
            {
                last.bytes += batch.bytes;
                last.messages.extend(batch.messages);
            }
            _ => out.push_back(batch),
        }
    }
    out
}

/// All streams' queues. Memory held: [`Queues::buffered_bytes`].
#[derive(Debug)]
pub struct Queues {
    limits: Limits,
    streams: HashMap<Arc<str>, StreamQueue>,
    /// Streams that hold unsent messages.
    waiting: HashSet<Arc<str>>,
    buffered: usize,
    /// Streams that may have become sendable since the last `take_ready` (a sealed batch, a
    /// commit, a finished or requeued POST), and lingering ones. `take_ready` looks at these
    /// only, so with thousands of streams a finished POST costs one stream's check, not a
    /// scan over every waiting stream.
    candidates: HashSet<Arc<str>>,
    /// Streams with a POST in flight.
    in_flight: usize,
}

impl Queues {
    pub fn new(limits: Limits) -> Queues {
        Queues {
            limits,
            streams: HashMap::new(),
            waiting: HashSet::new(),
            buffered: 0,
            candidates: HashSet::new(),
            in_flight: 0,
        }
    }

    /// True while some stream has a POST in flight.
    pub fn has_in_flight(&self) -> bool {
        self.in_flight > 0
    }

    /// The buffer rule (see the module documentation): when `bound` bytes or more are held
    /// and no POST is in flight, seals the largest open batches until at least half of the
    /// held bytes are sendable. Returns how many batches it sealed; 0 when the rule does not
    /// apply. Call it after [`Queues::take_ready`] found nothing to send.
    pub fn relieve(&mut self, bound: usize) -> usize {
        if self.buffered < bound || self.in_flight > 0 {
            return 0;
        }
        let sendable: usize = self
            .waiting
            .iter()
            .filter_map(|k| self.streams.get(k))
            .map(|q| q.sealed.iter().map(|b| b.bytes).sum::<usize>())
            .sum();
        let target = self.buffered / 2;
        if sendable >= target.max(1) {
            return 0;
        }
        let mut open: Vec<(usize, Arc<str>)> = self
            .waiting
            .iter()
            .filter_map(|k| self.streams.get(k).map(|q| (q.open_bytes, Arc::clone(k))))
            .filter(|(bytes, _)| *bytes > 0)
            .collect();
        open.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut freed = sendable;
        let mut sealed = 0;
        for (bytes, key) in open {
            if freed >= target.max(1) {
                break;
            }
            if let Some(q) = self.streams.get_mut(&key) {
                q.seal(&key);
                freed += bytes;
                sealed += 1;
                self.candidates.insert(key);
            }
        }
        sealed
    }

    /// Bytes of messages held, sent or not, until their POST completes.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// True when no message is waiting or in flight.
    pub fn is_idle(&self) -> bool {
        self.buffered == 0
    }

    /// Adds a message to its stream's open batch, sealing the batch at a bound.
    pub fn push(&mut self, stream: &str, msg: OutMessage) {
        let key: Arc<str> = match self.streams.get_key_value(stream) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(stream),
        };
        let limits = self.limits;
        let q = self
            .streams
            .entry(Arc::clone(&key))
            .or_insert_with(StreamQueue::new);
        self.buffered += msg.json.len();
        q.open_bytes += msg.json.len();
        q.open.push(msg);
        q.opened_at.get_or_insert_with(Instant::now);
        if q.recovering || q.open.len() >= limits.max_messages || q.open_bytes >= limits.max_bytes {
            q.seal(&key);
            self.candidates.insert(Arc::clone(&key));
        }
        self.waiting.insert(key);
    }

    /// The current transaction committed: every open batch may now be sent.
    pub fn commit(&mut self) {
        for key in &self.waiting {
            if let Some(q) = self.streams.get_mut(key) {
                q.flushable = !q.open.is_empty();
                if q.flushable {
                    self.candidates.insert(Arc::clone(key));
                }
            }
        }
    }

    /// Takes the batches that may be sent now (at most one per idle stream), marking their
    /// streams busy.
    pub fn take_ready(&mut self, now: Instant) -> Vec<Batch> {
        if self.candidates.is_empty() {
            return Vec::new();
        }
        let mut ready = Vec::new();
        let mut keep = Vec::new();
        for key in std::mem::take(&mut self.candidates) {
            let Some(q) = self.streams.get_mut(&key) else {
                continue;
            };
            if q.in_flight {
                // `finished` makes it a candidate again.
                continue;
            }
            let lingered = q
                .opened_at
                .is_some_and(|t| now.duration_since(t) >= self.limits.linger);
            if q.sealed.is_empty() && q.flushable && lingered {
                q.seal(&key);
            }
            if let Some(batch) = q.sealed.pop_front() {
                q.in_flight = true;
                self.in_flight += 1;
                ready.push(batch);
            } else if q.flushable {
                // Lingering: looked at again at the next call.
                keep.push(key);
                continue;
            }
            if q.sealed.is_empty() && q.open.is_empty() {
                self.waiting.remove(&key);
            }
        }
        self.candidates.extend(keep);
        ready
    }

    /// When the next lingering batch becomes sendable, if any waits.
    pub fn next_linger_deadline(&self) -> Option<Instant> {
        if self.limits.linger.is_zero() {
            // Without linger, a committed batch goes at the next `take_ready` after the
            // commit or after its stream's POST finishes: there is nothing to wait for.
            return None;
        }
        self.waiting
            .iter()
            .filter_map(|k| self.streams.get(k))
            .filter(|q| !q.in_flight && q.flushable)
            .filter_map(|q| q.opened_at.map(|t| t + self.limits.linger))
            .min()
    }

    /// A POST finished (written or already written): the stream may send again. `accepted`
    /// ends the stream's recovery mode.
    pub fn finished(&mut self, batch: &Batch, accepted: bool) {
        self.buffered = self.buffered.saturating_sub(batch.bytes);
        if let Some(q) = self.streams.get_mut(&batch.stream) {
            if q.in_flight {
                q.in_flight = false;
                self.in_flight -= 1;
            }
            if accepted && q.recovering {
                q.recovering = false;
                // The one-message batches queued while recovering may travel together now.
                q.sealed = coalesce(std::mem::take(&mut q.sealed), self.limits);
            }
            if !q.open.is_empty() || !q.sealed.is_empty() {
                self.waiting.insert(Arc::clone(&batch.stream));
                self.candidates.insert(Arc::clone(&batch.stream));
            }
        }
    }

    /// Puts a batch back at the front of its stream (after a 413 split, the halves).
    pub fn requeue_front(&mut self, batches: Vec<Batch>) {
        for batch in batches.into_iter().rev() {
            let key = Arc::clone(&batch.stream);
            if let Some(q) = self.streams.get_mut(&key) {
                if q.in_flight {
                    q.in_flight = false;
                    self.in_flight -= 1;
                }
                q.sealed.push_front(batch);
                self.candidates.insert(Arc::clone(&key));
                self.waiting.insert(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    fn msg(tx: u64, index: u32, text: &str) -> OutMessage {
        let tx = Lsn::from_u64(tx);
        OutMessage {
            json: Bytes::from(text.to_string()),
            tx,
            seq: Seq {
                commit_lsn: tx,
                index,
            },
        }
    }

    fn queues(max_messages: usize) -> Queues {
        Queues::new(Limits {
            max_messages,
            max_bytes: 1 << 20,
            linger: Duration::ZERO,
        })
    }

    /// Leaves recovery mode for `stream` as a first accepted POST would.
    fn recovered(q: &mut Queues, stream: &str) {
        q.push(stream, msg(1, 0, "{}"));
        let b = q.take_ready(Instant::now());
        q.finished(&b[0], true);
    }

    #[test]
    fn body_is_a_json_array_and_split_halves_it() {
        let batch = Batch {
            stream: Arc::from("s"),
            messages: vec![
                msg(1, 0, "{\"a\":1}"),
                msg(1, 1, "{\"b\":2}"),
                msg(2, 0, "3"),
            ],
            bytes: 15,
        };
        let v: serde_json::Value = serde_json::from_slice(&batch.body()).unwrap();
        assert_eq!(v, serde_json::json!([{"a":1},{"b":2},3]));
        let at = Lsn::from_u64;
        assert_eq!(batch.tx_counts(), vec![(at(1), 2), (at(2), 1)]);
        assert_eq!(
            batch.seq(),
            Some(Seq {
                commit_lsn: at(2),
                index: 0
            })
        );
        let (a, b) = batch.split().unwrap();
        assert_eq!((a.messages.len(), b.messages.len()), (1, 2));
        assert_eq!(a.bytes + b.bytes, 15);
        assert!(a.split().is_none());
    }

    #[test]
    fn messages_queued_while_recovering_leave_together_once_accepted() {
        let mut q = queues(3);
        for i in 0..8 {
            q.push("s", msg(5, i, "x"));
        }
        q.commit();
        let first = q.take_ready(Instant::now());
        assert_eq!(first[0].messages.len(), 1, "recovering: one message");
        q.finished(&first[0], true);
        let mut sizes = Vec::new();
        let mut seqs = Vec::new();
        loop {
            let batch = q.take_ready(Instant::now());
            let Some(b) = batch.first() else { break };
            sizes.push(b.messages.len());
            seqs.extend(b.messages.iter().map(|m| m.seq.index));
            q.finished(b, true);
        }
        assert_eq!(sizes, vec![3, 3, 1], "merged up to the message limit");
        assert_eq!(seqs, (1..8).collect::<Vec<_>>(), "in order, none lost");
        assert!(q.is_idle());
    }

    #[test]
    fn recovery_mode_sends_one_message_per_post_until_accepted() {
        let mut q = queues(100);
        q.push("s", msg(5, 0, "a"));
        q.push("s", msg(5, 1, "b"));
        q.commit();
        let first = q.take_ready(Instant::now());
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].messages.len(), 1);
        assert!(
            q.take_ready(Instant::now()).is_empty(),
            "one POST in flight per stream"
        );
        q.finished(&first[0], false);
        let second = q.take_ready(Instant::now());
        assert_eq!(
            second[0].messages.len(),
            1,
            "still recovering after a refusal"
        );
        q.finished(&second[0], true);
        q.push("s", msg(6, 0, "c"));
        q.push("s", msg(6, 1, "d"));
        q.commit();
        let third = q.take_ready(Instant::now());
        assert_eq!(
            third[0].messages.len(),
            2,
            "normal batching after acceptance"
        );
    }

    #[test]
    fn messages_gather_while_a_post_is_in_flight() {
        let mut q = queues(100);
        recovered(&mut q, "s");
        q.push("s", msg(2, 0, "a"));
        q.commit();
        let first = q.take_ready(Instant::now());
        for tx in 3..8 {
            q.push("s", msg(tx, 0, "x"));
            q.commit();
            assert!(q.take_ready(Instant::now()).is_empty());
        }
        q.finished(&first[0], true);
        let next = q.take_ready(Instant::now());
        assert_eq!(next[0].messages.len(), 5);
        assert_eq!(next[0].tx_counts().len(), 5);
    }

    #[test]
    fn uncommitted_messages_wait_unless_a_bound_is_reached() {
        let mut q = queues(3);
        recovered(&mut q, "s");
        q.push("s", msg(2, 0, "a"));
        q.push("s", msg(2, 1, "b"));
        assert!(
            q.take_ready(Instant::now()).is_empty(),
            "transaction still open"
        );
        q.push("s", msg(2, 2, "c"));
        let full = q.take_ready(Instant::now());
        assert_eq!(
            full[0].messages.len(),
            3,
            "a full batch goes before the commit"
        );
        assert_eq!(q.buffered_bytes(), 3);
        q.finished(&full[0], true);
        assert!(q.is_idle());
    }

    #[test]
    fn streams_proceed_independently_and_requeue_keeps_order() {
        let mut q = queues(100);
        recovered(&mut q, "a");
        recovered(&mut q, "b");
        q.push("a", msg(3, 0, "1"));
        q.push("b", msg(3, 1, "2"));
        q.commit();
        let mut ready = q.take_ready(Instant::now());
        assert_eq!(ready.len(), 2);
        ready.sort_by(|x, y| x.stream.cmp(&y.stream));
        let a = ready.remove(0);
        q.requeue_front(vec![a.clone()]);
        let again = q.take_ready(Instant::now());
        assert_eq!(again, vec![a]);
    }

    /// The fan-out stall: an open transaction spread over many streams fills the buffer with
    /// no batch at a bound. The rule seals the largest open batches, at least half of the
    /// held bytes, and only while nothing is in flight.
    #[test]
    fn a_full_buffer_with_nothing_in_flight_makes_the_largest_open_batches_sendable() {
        let mut q = queues(1000);
        for s in ["a", "b", "c", "d"] {
            recovered(&mut q, s);
        }
        let sizes = [("a", 40), ("b", 10), ("c", 30), ("d", 20)];
        for (stream, n) in sizes {
            for i in 0..n {
                q.push(stream, msg(7, i, "x"));
            }
        }
        assert_eq!(q.buffered_bytes(), 100);
        assert!(q.take_ready(Instant::now()).is_empty(), "transaction open");
        assert_eq!(q.relieve(101), 0, "under the bound: nothing to do");
        assert_eq!(q.relieve(100), 2, "a (40) and c (30): 70 >= half of 100");
        let mut ready = q.take_ready(Instant::now());
        ready.sort_by(|x, y| x.stream.cmp(&y.stream));
        let streams: Vec<&str> = ready.iter().map(|b| &*b.stream).collect();
        assert_eq!(streams, ["a", "c"], "largest first");
        assert_eq!(ready[0].messages.len(), 40);
        assert_eq!(q.relieve(1), 0, "POSTs in flight: they will free memory");
        for b in &ready {
            q.finished(b, true);
        }
        assert_eq!(q.buffered_bytes(), 30);
        q.push("b", msg(7, 10, "x"));
        q.commit();
        let rest = q.take_ready(Instant::now());
        let total: usize = rest.iter().map(|b| b.messages.len()).sum();
        assert_eq!(total, 31, "the commit sends everything else");
    }

    #[test]
    fn the_first_relief_seals_enough_when_the_largest_is_small() {
        let mut q = queues(1000);
        for i in 0..100u32 {
            let s = format!("s{i}");
            recovered(&mut q, &s);
            q.push(&s, msg(9, i, "xx"));
        }
        assert_eq!(q.relieve(200), 50, "half of 100 equal batches");
        assert_eq!(q.take_ready(Instant::now()).len(), 50);
    }

    /// Streams in recovery mode seal every message, so a full buffer of them always has
    /// something to send and the rule has nothing to add.
    #[test]
    fn recovering_streams_never_need_relief_and_drain() {
        let mut q = queues(1000);
        for i in 0..1000u32 {
            for j in 0..10 {
                q.push(&format!("s{i}"), msg(3, i * 10 + j, "x"));
            }
        }
        assert_eq!(q.relieve(1), 0, "everything is already sendable");
        let mut sent = 0;
        let mut posts = 0;
        loop {
            let ready = q.take_ready(Instant::now());
            if ready.is_empty() {
                break;
            }
            for b in &ready {
                sent += b.messages.len();
                posts += 1;
                q.finished(b, true);
            }
        }
        assert_eq!(sent, 10_000);
        assert_eq!(posts, 2000, "one message, then the other nine together");
        assert!(q.is_idle() && !q.has_in_flight());
    }

    #[test]
    fn linger_holds_small_committed_batches() {
        let mut q = Queues::new(Limits {
            max_messages: 100,
            max_bytes: 1 << 20,
            linger: Duration::from_millis(50),
        });
        recovered(&mut q, "s");
        let t0 = Instant::now();
        q.push("s", msg(2, 0, "a"));
        q.commit();
        assert!(q.take_ready(t0).is_empty());
        let deadline = q.next_linger_deadline().expect("a lingering batch");
        assert_eq!(q.take_ready(deadline + Duration::from_millis(1)).len(), 1);
    }
}
