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

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::pg::PgTarget;

/// How often collected updates are written.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Updates queued before new ones are dropped.
const QUEUE: usize = 8192;

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

/// The sending side, cloned into every subscription.
#[derive(Debug, Clone)]
pub struct StateSender {
    tx: mpsc::Sender<StateUpdate>,
}

impl StateSender {
    /// Queues an update; drops it (with a debug log) when the reporter is behind.
    pub fn send(&self, update: StateUpdate) {
        if let Err(e) = self.tx.try_send(update) {
            tracing::debug!(error = %e, "subscription state update dropped");
        }
    }
}

/// A channel for updates and the receiving end for [`report`].
#[must_use]
pub fn channel() -> (StateSender, mpsc::Receiver<StateUpdate>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (StateSender { tx }, rx)
}

/// Writes updates until every sender is gone (or `hard_stop`), then writes what is left.
pub async fn report(
    target: PgTarget,
    mut rx: mpsc::Receiver<StateUpdate>,
    hard_stop: CancellationToken,
) {
    let mut latest: HashMap<String, StateUpdate> = HashMap::new();
    let mut client: Option<Client> = None;
    let mut open = true;
    let mut failing = false;
    let mut retry_at = None;
    let mut backoff = crate::ds::Backoff::default();
    while open {
        let deadline = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => break,
                () = hard_stop.cancelled() => return,
                msg = rx.recv() => match msg {
                    Some(mut u) => match latest.get_mut(&u.stream) {
                        Some(old) => {
                            u.stored_events |= old.stored_events;
                            *old = u;
                        }
                        None => {
                            latest.insert(u.stream.clone(), u);
                        }
                    },
                    None => { open = false; break; }
                },
            }
        }
        // After a failure, the next try waits its backoff (a flush is due 4 times a second);
        // the last flush, once every sender is gone, is always tried.
        let backing_off = retry_at.is_some_and(|at| tokio::time::Instant::now() < at);
        if latest.is_empty() || (open && backing_off) {
            continue;
        }
        let batch: Vec<StateUpdate> = latest.drain().map(|(_, u)| u).collect();
        let written = tokio::select! {
            () = hard_stop.cancelled() => return,
            written = write(&target, &mut client, &batch) => written,
        };
        match written {
            Ok(()) if failing => {
                tracing::info!("subscription state is recorded again");
                failing = false;
                retry_at = None;
                backoff.reset();
            }
            Ok(()) => {}
            Err(e) => {
                retry_at = Some(tokio::time::Instant::now() + backoff.next_delay());
                // Said once per outage, not on every flush; the states wait for the next
                // try unless a newer one replaces them meanwhile.
                if failing {
                    tracing::debug!(error = %e, "still cannot record subscription state");
                } else {
                    tracing::warn!(error = %e, updates = batch.len(), "cannot record subscription state; retrying");
                }
                failing = true;
                client = None;
                for u in batch {
                    latest.entry(u.stream.clone()).or_insert(u);
                }
            }
        }
    }
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
