//! State reporting: what each subscription is doing, written to `ds_sync.subscriptions` for
//! `ds-sync subscriptions` to show.
//!
//! Subscriptions send a [`StateUpdate`] only when their status changes; the reporter keeps
//! the latest per stream and writes them about four times a second on a connection of its
//! own, so a thousand subscriptions changing state at once cost one statement. State is
//! informational: when the channel is full or the write fails, an update is dropped with a
//! log line, never blocking ingest. Offsets are not reported here: the writer stores them
//! in the commit transaction itself. `last_event_at` is the time the reporter learned of a
//! commit that stored rows or dead letters (within a quarter second of it).
//!
//! Memory figures are read, not sent: each subscription registers its
//! [`StreamMemory`], and about once a second the reporter writes the bytes each stream holds
//! and the most it held (`buffered_bytes`, `peak_buffered_bytes`) for the streams whose
//! figures changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::memory::StreamMemory;
use crate::pg::PgTarget;

/// How often collected updates are written.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Updates queued before new ones are dropped.
const QUEUE: usize = 8192;
/// How often memory figures are written (when they changed).
const MEMORY_EVERY: Duration = Duration::from_secs(1);

/// What a subscription is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Opening the SSE connection.
    Connecting,
    /// Connected and committing what arrives.
    Streaming,
    /// The stream does not exist (404); polled with backoff until it appears.
    Waiting,
    /// A transient failure; reconnecting with backoff from the committed offset.
    Retrying,
    /// The stream is closed and everything up to its end is committed.
    Closed,
    /// Reading a data event too large to hold again by a catch-up read, streamed into
    /// PostgreSQL.
    CatchingUp,
    /// Stopped for a reason reconnecting cannot fix (410); see the error.
    Failed,
}

impl Status {
    /// The name stored in `ds_sync.subscriptions.status`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connecting => "connecting",
            Status::Streaming => "streaming",
            Status::Waiting => "waiting",
            Status::Retrying => "retrying",
            Status::Closed => "closed",
            Status::CatchingUp => "catching-up",
            Status::Failed => "failed",
        }
    }
}

/// One change of a subscription's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateUpdate {
    pub stream: String,
    pub status: Status,
    pub error: Option<String>,
    pub up_to_date: bool,
    /// A commit stored events since the last update.
    pub stored_events: bool,
}

/// Each stream's memory figures, as registered by its subscription.
type MemoryWatch = Arc<Mutex<HashMap<String, Weak<StreamMemory>>>>;

/// The sending side, cloned into every subscription.
#[derive(Debug, Clone)]
pub struct StateSender {
    tx: mpsc::Sender<StateUpdate>,
    memory: MemoryWatch,
}

impl StateSender {
    /// Queues an update; drops it (with a debug log) when the reporter is behind.
    pub fn send(&self, update: StateUpdate) {
        if let Err(e) = self.tx.try_send(update) {
            tracing::debug!(error = %e, "subscription state update dropped");
        }
    }

    /// Registers a subscription's memory figures (replacing an earlier subscription's).
    pub fn watch_memory(&self, stream: &str, figures: Arc<StreamMemory>) {
        if let Ok(mut m) = self.memory.lock() {
            m.insert(stream.to_owned(), Arc::downgrade(&figures));
        }
    }
}

/// The receiving end: updates, and the registered memory figures.
#[derive(Debug)]
pub struct StateReceiver {
    rx: mpsc::Receiver<StateUpdate>,
    memory: MemoryWatch,
}

/// A channel for updates and the receiving end for [`report`].
#[must_use]
pub fn channel() -> (StateSender, StateReceiver) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let memory = MemoryWatch::default();
    (
        StateSender {
            tx,
            memory: Arc::clone(&memory),
        },
        StateReceiver { rx, memory },
    )
}

/// Writes updates until every sender is gone (or `hard_stop`), then writes what is left.
pub async fn report(target: PgTarget, receiver: StateReceiver, hard_stop: CancellationToken) {
    let StateReceiver { mut rx, memory } = receiver;
    let mut reporter = Reporter::new(target, memory);
    let mut open = true;
    while open {
        match reporter.gather(&mut rx, &hard_stop).await {
            Gathered::Due => {}
            Gathered::AllSendersGone => open = false,
            Gathered::HardStop => return,
        }
        reporter.record_memory(!open).await;
        if reporter.flush(open, &hard_stop).await.is_err() {
            return;
        }
    }
}

/// What one flush period of [`Reporter::gather`] ended with.
enum Gathered {
    /// The period is over: time to write.
    Due,
    /// Every sender is gone: write what is left, then end.
    AllSendersGone,
    HardStop,
}

/// `hard_stop` came while a write was in progress.
struct Stopped;

/// The reporter's state between flushes: the latest update per stream, the memory figures
/// written last, its connection and how it is doing at writing.
struct Reporter {
    target: PgTarget,
    memory: MemoryWatch,
    client: Option<Client>,
    latest: HashMap<String, StateUpdate>,
    written: HashMap<String, (usize, usize)>,
    memory_due: tokio::time::Instant,
    /// The last write failed (said once per outage).
    failing: bool,
    /// After a failure, when the next write may be tried.
    retry_at: Option<tokio::time::Instant>,
    backoff: crate::ds::Backoff,
}

impl Reporter {
    fn new(target: PgTarget, memory: MemoryWatch) -> Reporter {
        Reporter {
            target,
            memory,
            client: None,
            latest: HashMap::new(),
            written: HashMap::new(),
            memory_due: tokio::time::Instant::now() + MEMORY_EVERY,
            failing: false,
            retry_at: None,
            backoff: crate::ds::Backoff::default(),
        }
    }

    /// Collects updates for one flush period, keeping the latest per stream (and whether
    /// any of them stored events).
    async fn gather(
        &mut self,
        rx: &mut mpsc::Receiver<StateUpdate>,
        hard_stop: &CancellationToken,
    ) -> Gathered {
        let deadline = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return Gathered::Due,
                () = hard_stop.cancelled() => return Gathered::HardStop,
                msg = rx.recv() => match msg {
                    Some(u) => self.keep(u),
                    None => return Gathered::AllSendersGone,
                },
            }
        }
    }

    fn keep(&mut self, mut u: StateUpdate) {
        match self.latest.get_mut(&u.stream) {
            Some(old) => {
                u.stored_events |= old.stored_events;
                *old = u;
            }
            None => {
                self.latest.insert(u.stream.clone(), u);
            }
        }
    }

    /// Writes the memory figures that changed, once a second (and on the last pass).
    async fn record_memory(&mut self, last: bool) {
        if tokio::time::Instant::now() < self.memory_due && !last {
            return;
        }
        self.memory_due = tokio::time::Instant::now() + MEMORY_EVERY;
        let figures = changed_memory(&self.memory, &mut self.written);
        if !figures.is_empty()
            && let Err(e) = write_memory(&self.target, &mut self.client, &figures).await
        {
            tracing::debug!(error = %e, "cannot record ingest memory figures");
            self.client = None;
            for (stream, _, _) in figures {
                self.written.remove(&stream);
            }
        }
    }

    /// Writes the collected states. After a failure, the next try waits its backoff (a
    /// flush is due 4 times a second); the last flush, once every sender is gone (`open`
    /// false), is always tried.
    async fn flush(&mut self, open: bool, hard_stop: &CancellationToken) -> Result<(), Stopped> {
        let backing_off = self
            .retry_at
            .is_some_and(|at| tokio::time::Instant::now() < at);
        if self.latest.is_empty() || (open && backing_off) {
            return Ok(());
        }
        let batch: Vec<StateUpdate> = self.latest.drain().map(|(_, u)| u).collect();
        let outcome = tokio::select! {
            () = hard_stop.cancelled() => return Err(Stopped),
            outcome = write(&self.target, &mut self.client, &batch) => outcome,
        };
        match outcome {
            Ok(()) => self.recorded(),
            Err(e) => self.failed(&e, batch),
        }
        Ok(())
    }

    fn recorded(&mut self) {
        if self.failing {
            tracing::info!("subscription state is recorded again");
            self.failing = false;
            self.retry_at = None;
            self.backoff.reset();
        }
    }

    /// Schedules the next try; the states wait for it unless a newer one replaces them
    /// meanwhile. Said once per outage, not on every flush.
    fn failed(&mut self, e: &crate::pg::PgError, batch: Vec<StateUpdate>) {
        self.retry_at = Some(tokio::time::Instant::now() + self.backoff.next_delay());
        if self.failing {
            tracing::debug!(error = %e, "still cannot record subscription state");
        } else {
            tracing::warn!(error = %e, updates = batch.len(), "cannot record subscription state; retrying");
        }
        self.failing = true;
        self.client = None;
        for u in batch {
            self.latest.entry(u.stream.clone()).or_insert(u);
        }
    }
}

/// The streams whose figures changed since they were last written.
fn changed_memory(
    memory: &MemoryWatch,
    written: &mut HashMap<String, (usize, usize)>,
) -> Vec<(String, usize, usize)> {
    let Ok(mut m) = memory.lock() else {
        return Vec::new();
    };
    m.retain(|_, w| w.strong_count() > 0);
    let mut out = Vec::new();
    for (stream, w) in m.iter() {
        let Some(figures) = w.upgrade() else { continue };
        let now = (figures.held(), figures.peak());
        if written.get(stream) != Some(&now) {
            written.insert(stream.clone(), now);
            out.push((stream.clone(), now.0, now.1));
        }
    }
    out
}

async fn write_memory(
    target: &PgTarget,
    client: &mut Option<Client>,
    figures: &[(String, usize, usize)],
) -> Result<(), crate::pg::PgError> {
    let c = match client {
        Some(c) if !c.is_closed() => c,
        _ => client.insert(target.connect().await?),
    };
    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let streams: Vec<&str> = figures.iter().map(|f| f.0.as_str()).collect();
    let held: Vec<i64> = figures.iter().map(|f| as_i64(f.1)).collect();
    let peak: Vec<i64> = figures.iter().map(|f| as_i64(f.2)).collect();
    c.execute(
        "UPDATE ds_sync.subscriptions s SET buffered_bytes = u.held, peak_buffered_bytes = u.peak \
         FROM unnest($1::text[], $2::int8[], $3::int8[]) AS u(stream_name, held, peak) \
         WHERE s.stream_name = u.stream_name",
        &[&streams, &held, &peak],
    )
    .await
    .map_err(|e| crate::pg::PgError::query("recording ingest memory figures", &e))?;
    Ok(())
}

async fn write(
    target: &PgTarget,
    client: &mut Option<Client>,
    batch: &[StateUpdate],
) -> Result<(), crate::pg::PgError> {
    let c = match client {
        Some(c) if !c.is_closed() => c,
        _ => client.insert(target.connect().await?),
    };
    let streams: Vec<&str> = batch.iter().map(|u| u.stream.as_str()).collect();
    let statuses: Vec<&str> = batch.iter().map(|u| u.status.as_str()).collect();
    let errors: Vec<Option<&str>> = batch.iter().map(|u| u.error.as_deref()).collect();
    let up: Vec<bool> = batch.iter().map(|u| u.up_to_date).collect();
    let stored: Vec<bool> = batch.iter().map(|u| u.stored_events).collect();
    c.execute(
        "UPDATE ds_sync.subscriptions s SET status = u.status, error = u.error, \
             up_to_date = u.up_to_date, state_at = now(), \
             last_event_at = CASE WHEN u.stored THEN now() ELSE s.last_event_at END \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::bool[]) \
             AS u(stream_name, status, error, up_to_date, stored) \
         WHERE s.stream_name = u.stream_name",
        &[&streams, &statuses, &errors, &up, &stored],
    )
    .await
    .map_err(|e| crate::pg::PgError::query("recording subscription state", &e))?;
    Ok(())
}
