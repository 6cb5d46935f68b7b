//! Delivering one batch to its stream: retries until the DS server has it.
//!
//! Transient failures (5xx, 429, timeouts, refused connections) are retried with capped
//! exponential backoff and jitter, forever: a batch is never dropped and never
//! acknowledged before the server has it. A missing stream is created and the POST retried.
//! "Too large" goes back to the loop, which splits the batch. Anything else stops capture
//! with the stream named.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ds::{AppendOutcome, Backoff, DsClient, DsError};

use super::batch::Batch;

/// How a delivery ended.
#[derive(Debug)]
pub enum Delivery {
    /// The server appended the batch.
    Written,
    /// The server already held it (its sequence was not above the stream's last).
    AlreadyWritten,
    /// The server refused it as too large: split it, or give up on a single message.
    TooLarge,
    /// A permanent error: capture stops.
    Failed(DsError),
    /// Hard stop requested while retrying; the batch was not delivered.
    Cancelled,
}

/// Posts `batch`, creating the stream when needed and retrying transient failures.
///
/// `ensure_first` creates the stream (an idempotent PUT) before the first POST to a stream
/// this process has not used yet.
pub async fn deliver(
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
        let error = match result {
            Ok(AppendOutcome::Written { .. }) => return Delivery::Written,
            Ok(AppendOutcome::AlreadyWritten) => return Delivery::AlreadyWritten,
            Err(DsError::TooLarge { .. }) => return Delivery::TooLarge,
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
