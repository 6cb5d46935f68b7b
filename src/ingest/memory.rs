//! Bounded memory: what ingest holds, per stream and in total, and the rule that keeps it
//! under the bound (`--ingest-max-buffer-bytes`).
//!
//! What a stream holds: the bytes its SSE connection has received and not decoded yet, the
//! message being assembled, rows and dead letters waiting for their control event or for
//! their commit (until the writer's COMMIT), and, during a catch-up read, the COPY chunk
//! being encoded. Each subscription reports its figure to its [`Meter`] after every step;
//! rows handed to the writer travel with a [`Charge`] that gives their bytes back when the
//! writer is done with them. The [`Budget`] sums all streams.
//!
//! **The rule.** A stream reads its socket again only while it and all streams together
//! stay a read's headroom ([`READ_HEADROOM`]) under their bounds, and decodes a received
//! message only while an item's headroom ([`ITEM_HEADROOM`]) remains. At the bound it stops
//! reading, so TCP pushes back on the server. What it holds then frees itself: rows that
//! have their control event are committed by the writer. Rows still waiting for theirs
//! cannot be committed, so a stream never waits on those: when its own data event does not
//! fit (more than [`EVENT_HOLD_BYTES`], or the stream's bound), or the total stays full for
//! [`OVERFLOW_WAIT`], it drops them and the connection and reads the same data again with a
//! catch-up read, which streams it into PostgreSQL instead of holding it (see `catch_up`).
//!
//! The check comes before each read, so streams that read at the same moment can together
//! pass the total by what those reads bring (one chunk each, at most about 400 KiB). While a
//! message is encoded for COPY it exists twice for a moment, which no figure shows.
//!
//! The per-stream bound is half the total, but at least one message of
//! `--ingest-max-event-bytes` plus a read's headroom; a total that cannot hold that is
//! refused at start. The HTTP client's own read buffer (one per connection, at most about
//! 400 KiB, reused) is not counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Default bound on everything ingest holds.
pub const DEFAULT_MAX_BUFFER_BYTES: usize = 32 << 20;
/// Room checked before reading the next chunk of a body: the chunk (the HTTP client reads
/// at most about 400 KiB at once), its copies through the SSE parser and the splitter, and
/// the rows and dead letters it becomes.
pub const READ_HEADROOM: usize = 2 << 20;
/// Room checked before decoding one more received message: its copy and row, or a dead
/// letter's kept bytes.
pub const ITEM_HEADROOM: usize = 160 * 1024;
/// Most bytes of one data event's rows held until its control event: a larger event is
/// read by catch-up instead, which stores it as it arrives (holding it would only delay it,
/// and a server that sends a backlog as one event would have it read twice over).
pub const EVENT_HOLD_BYTES: usize = 4 << 20;
/// How long a stream holding rows that wait for their control event waits for room in the
/// total before it drops them and reads them again by catch-up.
pub const OVERFLOW_WAIT: Duration = Duration::from_secs(1);

/// The bounds, checked for consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Bound on what all streams hold together.
    pub total: usize,
    /// Bound on what one stream holds.
    pub per_stream: usize,
    /// Most of one data event held until its control event (see [`EVENT_HOLD_BYTES`]).
    pub event_hold: usize,
}

impl MemoryLimits {
    /// The bounds for a total of `total` bytes when messages may have `max_message_bytes`.
    ///
    /// # Errors
    ///
    /// A message saying the total cannot hold one message plus a read's headroom.
    pub fn new(total: usize, max_message_bytes: usize) -> Result<MemoryLimits, String> {
        let least = max_message_bytes.saturating_add(READ_HEADROOM);
        if total < least {
            return Err(format!(
                "--ingest-max-buffer-bytes {total} cannot hold one message of \
                 --ingest-max-event-bytes {max_message_bytes} plus {READ_HEADROOM} bytes of read \
                 headroom: it must be at least {least}"
            ));
        }
        let per_stream = (total / 2).max(least);
        Ok(MemoryLimits {
            total,
            per_stream,
            event_hold: EVENT_HOLD_BYTES.min(per_stream - READ_HEADROOM),
        })
    }
}

/// Why a stream may not read or decode more now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The stream itself is at its bound.
    Stream,
    /// All streams together are at the total bound.
    Total,
}

/// What all streams hold together.
#[derive(Debug)]
pub struct Budget {
    limits: MemoryLimits,
    held: AtomicUsize,
    peak: AtomicUsize,
    released: Notify,
}

impl Budget {
    #[must_use]
    pub fn new(limits: MemoryLimits) -> Arc<Budget> {
        Arc::new(Budget {
            limits,
            held: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            released: Notify::new(),
        })
    }

    #[must_use]
    pub fn limits(&self) -> MemoryLimits {
        self.limits
    }

    /// Bytes held by all streams now.
    #[must_use]
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The most all streams held at once.
    #[must_use]
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// A meter for one stream.
    #[must_use]
    pub fn meter(self: &Arc<Self>) -> Meter {
        Meter {
            budget: Arc::clone(self),
            stream: Arc::new(StreamMemory::default()),
            local: 0,
        }
    }

    /// Waits until some stream gives bytes back.
    pub async fn released(&self) {
        self.released.notified().await;
    }

    fn add(&self, n: usize) {
        let now = self.held.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
        self.released.notify_waiters();
    }
}

/// One stream's figures, shared with the state reporter and with its charges.
#[derive(Debug, Default)]
pub struct StreamMemory {
    held: AtomicUsize,
    peak: AtomicUsize,
}

impl StreamMemory {
    /// Bytes the stream holds now.
    #[must_use]
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The most the stream held at once.
    #[must_use]
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        let now = self.held.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }
}

/// One stream's accounting: what the subscription holds itself (`local`), plus what its
/// charges carry.
#[derive(Debug)]
pub struct Meter {
    budget: Arc<Budget>,
    stream: Arc<StreamMemory>,
    local: usize,
}

impl Meter {
    /// Sets what the subscription holds itself now.
    pub fn set_local(&mut self, bytes: usize) {
        if bytes > self.local {
            let more = bytes - self.local;
            self.stream.add(more);
            self.budget.add(more);
        } else if bytes < self.local {
            let less = self.local - bytes;
            self.stream.sub(less);
            self.budget.sub(less);
        }
        self.local = bytes;
    }

    /// Moves `bytes` of what the subscription holds into a charge that travels with them
    /// (to the writer) and gives them back when dropped.
    pub fn charge(&mut self, bytes: usize) -> Charge {
        let bytes = bytes.min(self.local);
        self.local -= bytes;
        Charge {
            bytes,
            stream: Arc::clone(&self.stream),
            budget: Arc::clone(&self.budget),
        }
    }

    /// Whether `headroom` more bytes fit, and if not, which bound is in the way.
    pub fn room(&self, headroom: usize) -> Result<(), Full> {
        let limits = self.budget.limits;
        if self.stream.held().saturating_add(headroom) > limits.per_stream {
            Err(Full::Stream)
        } else if self.budget.held().saturating_add(headroom) > limits.total {
            Err(Full::Total)
        } else {
            Ok(())
        }
    }

    /// Bytes the stream holds, charges included.
    #[must_use]
    pub fn held(&self) -> usize {
        self.stream.held()
    }

    /// The stream's figures, for reporting.
    #[must_use]
    pub fn figures(&self) -> Arc<StreamMemory> {
        Arc::clone(&self.stream)
    }

    #[must_use]
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.set_local(0);
    }
}

/// Bytes handed on with rows; given back when dropped.
#[derive(Debug)]
pub struct Charge {
    bytes: usize,
    stream: Arc<StreamMemory>,
    budget: Arc<Budget>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.stream.sub(self.bytes);
        self.budget.sub(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_total_must_hold_a_message_and_a_read() {
        let err = MemoryLimits::new(10 * MIB, 16 * MIB).expect_err("too small");
        assert!(err.contains("must be at least 18874368"), "{err}");
        let l = MemoryLimits::new(32 * MIB, 16 * MIB).unwrap();
        assert_eq!(l.per_stream, 18 * MIB, "one message and a read");
        assert_eq!(l.event_hold, 4 * MIB);
        let l = MemoryLimits::new(64 * MIB, MIB).unwrap();
        assert_eq!(l.per_stream, 32 * MIB, "half the total");
        let l = MemoryLimits::new(3 * MIB, MIB / 2).unwrap();
        assert_eq!(l.event_hold, l.per_stream - READ_HEADROOM);
    }

    #[test]
    fn local_bytes_and_charges_add_up_and_are_given_back() {
        let budget = Budget::new(MemoryLimits::new(8 * MIB, MIB).unwrap());
        let mut a = budget.meter();
        let mut b = budget.meter();
        a.set_local(3 * MIB);
        b.set_local(MIB);
        assert_eq!(budget.held(), 4 * MIB);
        let charge = a.charge(2 * MIB);
        a.set_local(MIB / 2);
        assert_eq!(a.held(), 2 * MIB + MIB / 2, "the charge still counts");
        assert_eq!(budget.held(), 3 * MIB + MIB / 2);
        drop(charge);
        assert_eq!(a.held(), MIB / 2);
        assert_eq!(budget.held(), MIB + MIB / 2);
        assert_eq!(budget.peak(), 4 * MIB);
        assert_eq!(a.figures().peak(), 3 * MIB);
        drop(a);
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn room_names_the_bound_in_the_way() {
        let budget = Budget::new(MemoryLimits::new(8 * MIB, MIB).unwrap());
        let mut a = budget.meter();
        let mut b = budget.meter();
        assert_eq!(a.room(READ_HEADROOM), Ok(()));
        a.set_local(3 * MIB);
        assert_eq!(a.room(READ_HEADROOM), Err(Full::Stream), "4 MiB per stream");
        b.set_local(3 * MIB);
        let c = budget.meter();
        assert_eq!(c.room(READ_HEADROOM), Ok(()));
        assert_eq!(c.room(3 * MIB), Err(Full::Total));
    }

    #[tokio::test]
    async fn a_release_wakes_waiters() {
        let budget = Budget::new(MemoryLimits::new(8 * MIB, MIB).unwrap());
        let mut a = budget.meter();
        a.set_local(MIB);
        let charge = a.charge(MIB);
        let waiter = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { budget.released().await })
        };
        tokio::task::yield_now().await;
        drop(charge);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
