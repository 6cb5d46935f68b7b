//! Delivering one batch to its stream: retries until the DS server has it.
//!
//! Transient failures (5xx, 429, timeouts, refused connections) are retried with capped
//! exponential backoff and jitter while the session lasts: a batch is never dropped and
//! never acknowledged before the server has it. When the session ends (its replication
//! connection is gone), retries stop: the next session replays from the slot. A missing
//! stream is created and the POST retried. "Too large" goes back to the loop, which splits
//! the batch. Anything else stops capture with the stream named.
//!
//! Two guards run before and after each POST:
//! * the **fence** (`fence`): no attempt starts unless this process holds a valid lease on
//!   the slot, so a process that was taken over never appends after its successor started;
//! * the **source check** (`identity`): a 409 ("not above the stream's last Stream-Seq") is
//!   "already written" only when the stream's tail moved since before this source's first
//!   POST to it; otherwise the stream's last write is another source's and capture stops
//!   (`ForeignWrite`) instead of skipping the row.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ds::{AppendOutcome, Backoff, DsClient, DsError};

use super::batch::{Batch, Queues};
use super::error::CaptureError;
use super::fence::Fence;
use super::identity::SourceIdentity;
use super::streams::{StreamBook, StreamInfo};

/// How a delivery ended.
#[derive(Debug)]
pub enum Delivery {
    /// The server appended the batch.
    Written,
    /// The server already held it (its sequence was not above the stream's last).
    AlreadyWritten,
    /// The server refused it as too large: split it, or give up on a single message (the
    /// error says what the server said).
    TooLarge(DsError),
    /// A permanent error: capture stops.
    Failed(DsError),
    /// Hard stop requested, or the session ended, while retrying; the batch was not
    /// delivered.
    Cancelled,
    /// Refused by its sequence, and the stream's last write is not this source's.
    Foreign { seq: String },
    /// Another process took the slot over: nothing more may be sent.
    Fenced(Box<CaptureError>),
}

/// What became of the POST [`Deliveries::next`] waited for.
#[derive(Debug)]
pub enum Landed {
    /// The server holds the batch: its messages can be acknowledged.
    Held(Batch),
    /// The server refused it as too large; its halves are queued again.
    Split,
    /// No POST was in flight.
    Idle,
}

/// The POSTs of one set of [`Queues`] (the capture loop's, or a snapshot writer's): at most
/// `max_in_flight` at once, each stream created before this process's first POST to it.
pub struct Deliveries {
    ds: DsClient,
    in_flight: JoinSet<(Batch, Delivery)>,
    permits: Arc<Semaphore>,
    ensured: HashSet<Arc<str>>,
    hard_stop: CancellationToken,
    /// Cancelled when the session ends: retries stop.
    session: CancellationToken,
    fence: Option<Fence>,
    identity: Option<Arc<SourceIdentity>>,
}

/// What one delivery task checks besides the POST itself.
#[derive(Clone)]
struct Guard {
    info: Option<Arc<StreamInfo>>,
    fence: Option<Fence>,
    identity: Option<Arc<SourceIdentity>>,
    session: CancellationToken,
    hard_stop: CancellationToken,
}

impl Deliveries {
    pub fn new(ds: DsClient, max_in_flight: usize, hard_stop: &CancellationToken) -> Deliveries {
        Deliveries {
            ds,
            in_flight: JoinSet::new(),
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            ensured: HashSet::new(),
            hard_stop: hard_stop.clone(),
            session: CancellationToken::new(),
            fence: None,
            identity: None,
        }
    }

    /// Deliveries that wait for the fence's lease before each attempt and check 409s
    /// against the source identity (see the module documentation).
    pub fn guarded(mut self, fence: Option<Fence>, identity: Option<Arc<SourceIdentity>>) -> Self {
        self.fence = fence;
        self.identity = identity;
        self
    }

    /// True when no POST is running.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Starts a POST for every batch of `queues` that may go now. With a `book`, every
    /// stream must have been admitted (`StreamBook::flush`) before.
    pub fn dispatch(&mut self, queues: &mut Queues, book: Option<&StreamBook>) {
        for batch in queues.take_ready(Instant::now()) {
            let client = self.ds.clone();
            let permits = Arc::clone(&self.permits);
            let info = book.and_then(|b| b.info(&batch.stream));
            let ensure = info.is_none() && !self.ensured.contains(&batch.stream);
            let guard = Guard {
                info,
                fence: self.fence.clone(),
                identity: self.identity.clone(),
                session: self.session.clone(),
                hard_stop: self.hard_stop.clone(),
            };
            self.in_flight.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let delivery = deliver(&client, &batch, ensure, &guard).await;
                (batch, delivery)
            });
        }
    }

    /// Waits for one POST to finish and books it in `queues`.
    pub async fn next(&mut self, queues: &mut Queues) -> Result<Landed, CaptureError> {
        match self.in_flight.join_next().await {
            None => Ok(Landed::Idle),
            Some(Ok((batch, delivery))) => self.delivered(queues, batch, delivery),
            Some(Err(e)) => Err(CaptureError::DeliveryTask(e)),
        }
    }

    /// Stops retrying and waits for every POST still running (at most one request each),
    /// booking none of them: the session is over, the next one replays from the slot.
    pub async fn drain(&mut self) {
        self.session.cancel();
        while self.in_flight.join_next().await.is_some() {}
    }

    fn delivered(
        &mut self,
        queues: &mut Queues,
        batch: Batch,
        delivery: Delivery,
    ) -> Result<Landed, CaptureError> {
        match delivery {
            Delivery::Written | Delivery::AlreadyWritten => {
                let accepted = matches!(delivery, Delivery::Written);
                if !accepted {
                    tracing::debug!(stream = %batch.stream, messages = batch.messages.len(), "already in the stream, skipped");
                }
                self.ensured.insert(Arc::clone(&batch.stream));
                queues.finished(&batch, accepted);
                Ok(Landed::Held(batch))
            }
            Delivery::TooLarge(error) => match batch.clone().split() {
                Some((a, b)) => {
                    tracing::info!(stream = %batch.stream, messages = batch.messages.len(), "batch too large for the server, splitting");
                    queues.requeue_front(vec![a, b]);
                    Ok(Landed::Split)
                }
                None => Err(too_large(&batch, &error)),
            },
            Delivery::Failed(source) => Err(CaptureError::Ds {
                stream: batch.stream.to_string(),
                source,
            }),
            Delivery::Cancelled => Err(CaptureError::Interrupted),
            Delivery::Fenced(e) => Err(*e),
            Delivery::Foreign { seq } => Err(CaptureError::ForeignWrite {
                stream: batch.stream.to_string(),
                seq,
                lsn: batch
                    .seq()
                    .map_or_else(String::new, |s| s.commit_lsn.to_string()),
                source_id: self
                    .identity
                    .as_ref()
                    .map_or_else(|| "unknown".into(), |i| i.describe()),
            }),
        }
    }
}

/// A single message the server refuses as too large: the error names its row and quotes
/// the server, whose words tell a full stream from a request over the size limit.
fn too_large(batch: &Batch, error: &DsError) -> CaptureError {
    let msg: serde_json::Value = batch
        .messages
        .first()
        .and_then(|m| serde_json::from_slice(&m.json).ok())
        .unwrap_or_default();
    let text = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    CaptureError::RowTooLarge {
        stream: batch.stream.to_string(),
        table: text(&msg["type"]),
        key: text(&msg["key"]),
        bytes: batch.bytes,
        reply: error.reply().cloned().map(Box::new),
    }
}

/// Posts `batch`, creating the stream when needed and retrying transient failures.
///
/// `ensure_first` creates the stream (an idempotent PUT) before the first POST to a stream
/// this process has not used yet and that was not admitted (admission creates it).
async fn deliver(client: &DsClient, batch: &Batch, ensure_first: bool, guard: &Guard) -> Delivery {
    let body = batch.body();
    let epoch = guard.info.as_ref().and_then(|i| i.epoch);
    let seq = batch.seq().map(|s| s.header_in(epoch));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut attempt = 0u32;
    let mut ensure = ensure_first;
    loop {
        attempt += 1;
        if let Some(stop) = admit(guard).await {
            return stop;
        }
        if ensure {
            match client.ensure_stream(&batch.stream).await {
                Ok(()) => ensure = false,
                Err(e) if e.is_transient() => {
                    if !wait(&mut backoff, &batch.stream, attempt, &e, guard).await {
                        return Delivery::Cancelled;
                    }
                    continue;
                }
                Err(e) => return Delivery::Failed(e),
            }
        }
        let commits = || batch.messages.iter().map(|m| m.seq.commit_lsn);
        crate::observe::timeline::posted(commits());
        let result = client
            .append(&batch.stream, body.clone(), seq.as_deref())
            .await;
        crate::observe::capture().post(&batch.stream, &result, batch.messages.len(), body.len());
        let error = match result {
            Ok(AppendOutcome::Written { .. }) => {
                crate::observe::timeline::acknowledged(commits());
                return Delivery::Written;
            }
            Ok(AppendOutcome::AlreadyWritten) => match refused(client, batch, guard).await {
                Ok(true) => return Delivery::AlreadyWritten,
                Ok(false) => {
                    return Delivery::Foreign {
                        seq: seq.unwrap_or_default(),
                    };
                }
                Err(e) => e,
            },
            Err(e @ DsError::TooLarge { .. }) => return Delivery::TooLarge(e),
            // Created just now and gone again (deleted meanwhile): back off like any
            // other failure instead of spinning.
            Err(e @ DsError::NotFound { .. }) if attempt > 1 => {
                ensure = true;
                if !wait(&mut backoff, &batch.stream, attempt, &e, guard).await {
                    return Delivery::Cancelled;
                }
                continue;
            }
            Err(DsError::NotFound { .. }) => {
                tracing::info!(stream = %batch.stream, "stream missing: creating it");
                ensure = true;
                continue;
            }
            Err(e) => e,
        };
        if !error.is_transient() {
            return Delivery::Failed(error);
        }
        if !wait(&mut backoff, &batch.stream, attempt, &error, guard).await {
            return Delivery::Cancelled;
        }
    }
}

/// Waits for the fence's lease; `Some` when the attempt must not happen.
async fn admit(guard: &Guard) -> Option<Delivery> {
    let fence = guard.fence.as_ref()?;
    tokio::select! {
        r = fence.admit() => r.err().map(|e| Delivery::Fenced(Box::new(e))),
        _ = guard.session.cancelled() => Some(Delivery::Cancelled),
        _ = guard.hard_stop.cancelled() => Some(Delivery::Cancelled),
    }
}

/// A 409 to our `Stream-Seq`: true when it is provably a replay of this source's own write
/// (the stream's tail moved since before our first POST to it), or may be one written before
/// an upgrade (see `identity`); false when the stream's last write is another source's.
async fn refused(client: &DsClient, batch: &Batch, guard: &Guard) -> Result<bool, DsError> {
    let (Some(info), Some(identity)) = (&guard.info, &guard.identity) else {
        return Ok(true);
    };
    let tail = client.head(&batch.stream).await?;
    let moved = tail.as_deref() != Some(info.tail_before.as_str());
    let lenient = batch
        .seq()
        .is_some_and(|s| identity.lenient_for(s.commit_lsn));
    if !moved && lenient {
        tracing::info!(stream = %batch.stream, "already in the stream, written before this incarnation was recorded (an upgrade or a promotion)");
    }
    Ok(moved || lenient)
}

/// Sleeps before the next attempt; false when a hard stop or the session's end came first.
async fn wait(
    backoff: &mut Backoff,
    stream: &str,
    attempt: u32,
    error: &DsError,
    guard: &Guard,
) -> bool {
    let delay = backoff.next_delay();
    tracing::warn!(
        stream, attempt, retry_in_ms = delay.as_millis() as u64,
        error = %error, "delivery failed, retrying"
    );
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = guard.hard_stop.cancelled() => false,
        _ = guard.session.cancelled() => false,
    }
}
