//! Delivering one batch to its stream: retries until the DS server has it.
//!
//! Transient failures (5xx, 429, timeouts, refused connections) are retried with capped
//! exponential backoff and jitter, forever: a batch is never dropped and never
//! acknowledged before the server has it. A missing stream is created and the POST retried.
//! "Too large" goes back to the loop, which splits the batch. Anything else stops capture
//! with the stream named.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ds::{AppendOutcome, Backoff, DsClient, DsError};

use super::batch::{Batch, Queues};
use super::error::CaptureError;

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
    /// Hard stop requested while retrying; the batch was not delivered.
    Cancelled,
}

/// The POSTs of one set of [`Queues`] (the capture loop's, or a snapshot writer's): at most
/// `max_in_flight` at once, each stream created before this process's first POST to it.
pub struct Deliveries {
    ds: DsClient,
    in_flight: JoinSet<(Batch, Delivery)>,
    permits: Arc<Semaphore>,
    ensured: HashSet<Arc<str>>,
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
        }
    }

    /// True when no POST is running.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Starts a POST for every batch of `queues` that may go now.
    pub fn dispatch(&mut self, queues: &mut Queues) {
        for batch in queues.take_ready(Instant::now()) {
            let client = self.ds.clone();
            let permits = Arc::clone(&self.permits);
            let hard_stop = self.hard_stop.clone();
            let ensure = !self.ensured.contains(&batch.stream);
            self.in_flight.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let delivery = deliver(&client, &batch, ensure, &hard_stop).await;
                (batch, delivery)
            });
        }
    }

    /// Waits for one POST to finish and books it in `queues`: `Some(batch)` when the server
    /// holds the batch (for the caller's acknowledgements), `None` when it was split and
    /// queued again. `None` from the outer option when no POST is running.
    pub async fn next(
        &mut self,
        queues: &mut Queues,
    ) -> Option<Result<Option<Batch>, CaptureError>> {
        let joined = self.in_flight.join_next().await?;
        Some(match joined {
            Ok((batch, delivery)) => self.delivered(queues, batch, delivery),
            Err(e) => Err(CaptureError::Replication {
                reason: format!("a delivery task failed: {e}"),
                transient: false,
            }),
        })
    }

    /// Waits for every POST still running, booking none of them.
    pub async fn drain(&mut self) {
        while self.in_flight.join_next().await.is_some() {}
    }

    fn delivered(
        &mut self,
        queues: &mut Queues,
        batch: Batch,
        delivery: Delivery,
    ) -> Result<Option<Batch>, CaptureError> {
        match delivery {
            Delivery::Written | Delivery::AlreadyWritten => {
                let accepted = matches!(delivery, Delivery::Written);
                if !accepted {
                    tracing::debug!(stream = %batch.stream, messages = batch.messages.len(), "already in the stream, skipped");
                }
                self.ensured.insert(Arc::clone(&batch.stream));
                queues.finished(&batch, accepted);
                Ok(Some(batch))
            }
            Delivery::TooLarge(error) => match batch.clone().split() {
                Some((a, b)) => {
                    tracing::info!(stream = %batch.stream, messages = batch.messages.len(), "batch too large for the server, splitting");
                    queues.requeue_front(vec![a, b]);
                    Ok(None)
                }
                None => Err(too_large(&batch, &error)),
            },
            Delivery::Failed(source) => Err(CaptureError::Ds {
                stream: batch.stream.to_string(),
                source,
            }),
            Delivery::Cancelled => Err(CaptureError::Interrupted),
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
/// this process has not used yet.
async fn deliver(
    client: &DsClient,
    batch: &Batch,
    ensure_first: bool,
    hard_stop: &CancellationToken,
) -> Delivery {
    let body = batch.body();
    let seq = batch.seq().map(|s| s.header());
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut attempt = 0u32;
    let mut ensure = ensure_first;
    loop {
        attempt += 1;
        if ensure {
            match client.ensure_stream(&batch.stream).await {
                Ok(()) => ensure = false,
                Err(e) if e.is_transient() => {
                    if !wait(&mut backoff, &batch.stream, attempt, &e, hard_stop).await {
                        return Delivery::Cancelled;
                    }
                    continue;
                }
                Err(e) => return Delivery::Failed(e),
            }
        }
        let result = client
            .append(&batch.stream, body.clone(), seq.as_deref())
            .await;
        crate::observe::capture().post(&batch.stream, &result, batch.messages.len(), body.len());
        let error = match result {
            Ok(AppendOutcome::Written { .. }) => return Delivery::Written,
            Ok(AppendOutcome::AlreadyWritten) => return Delivery::AlreadyWritten,
            Err(e @ DsError::TooLarge { .. }) => return Delivery::TooLarge(e),
            // Created just now and gone again (deleted meanwhile): back off like any
            // other failure instead of spinning.
            Err(e @ DsError::NotFound { .. }) if attempt > 1 => {
                ensure = true;
                if !wait(&mut backoff, &batch.stream, attempt, &e, hard_stop).await {
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
        if !wait(&mut backoff, &batch.stream, attempt, &error, hard_stop).await {
            return Delivery::Cancelled;
        }
    }
}

/// Sleeps before the next attempt; false when a hard stop came first.
async fn wait(
    backoff: &mut Backoff,
    stream: &str,
    attempt: u32,
    error: &DsError,
    hard_stop: &CancellationToken,
) -> bool {
    let delay = backoff.next_delay();
    tracing::warn!(
        stream, attempt, retry_in_ms = delay.as_millis() as u64,
        error = %error, "delivery failed, retrying"
    );
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = hard_stop.cancelled() => false,
    }
}
