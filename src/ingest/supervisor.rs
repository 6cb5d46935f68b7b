//! The subscription supervisor: keeps one task per subscribed stream, following
//! `ds_sync.subscriptions` as it changes.
//!
//! It re-reads the table every second and whenever `ds-sync subscribe` / `unsubscribe`
//! NOTIFY its LISTEN connection. A new row starts a task from the stored offset; a removed
//! row stops its task (between commits; the offset stays stored); a row whose generation
//! grew (subscribed again) restarts it from the stored offset. A task that finished (closed
//! stream, 410) is left finished until its generation grows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;

use super::store::{self, Wanted};
use super::subscription::{self, Shared};
use crate::ds::Backoff;
use crate::pg::{PgError, PgTarget, describe};

/// How often the table is re-read even without a notification.
const REREAD_EVERY: Duration = Duration::from_secs(1);

struct Running {
    generation: i64,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// Supervises subscriptions until `shutdown`, then stops every task and waits for them.
pub async fn supervise(target: PgTarget, shared: Arc<Shared>, shutdown: CancellationToken) {
    let wake = Arc::new(Notify::new());
    let mut client: Option<Client> = None;
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut tick = tokio::time::interval(REREAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outage = Outage::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            () = wake.notified() => {}
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            if !outage.may_try() {
                continue;
            }
            let connecting = listen(&target, Arc::clone(&wake));
            let connected = tokio::select! {
                () = shutdown.cancelled() => break,
                connected = connecting => connected,
            };
            match connected {
                Ok(c) => client = Some(c),
                Err(e) => {
                    outage.failed(&e);
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        match store::wanted(c).await {
            Ok(wanted) => {
                outage.ended();
                reconcile(c, &mut running, wanted, &shared, &shutdown).await;
            }
            Err(e) => outage.failed(&e),
        }
    }
    for r in running.values() {
        r.stop.cancel();
    }
    for (_, r) in running {
        let _ = r.handle.await;
    }
}

/// Reading the subscriptions failing: retried with backoff (not on every tick), said once
/// per outage and once when it ends.
#[derive(Debug, Default)]
struct Outage {
    since: Option<tokio::time::Instant>,
    next_try: Option<tokio::time::Instant>,
    backoff: Backoff,
}

impl Outage {
    fn may_try(&self) -> bool {
        self.next_try
            .is_none_or(|at| tokio::time::Instant::now() >= at)
    }

    fn failed(&mut self, e: &PgError) {
        let delay = self.backoff.next_delay();
        self.next_try = Some(tokio::time::Instant::now() + delay);
        if self.since.is_none() {
            self.since = Some(tokio::time::Instant::now());
            tracing::warn!(error = %e, "cannot read subscriptions; retrying with backoff (running subscriptions go on)");
        } else {
            tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "still cannot read subscriptions");
        }
    }

    fn ended(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                after_s = since.elapsed().as_secs(),
                "subscriptions are read again"
            );
        }
        self.next_try = None;
        self.backoff.reset();
    }
}

/// A connection that LISTENs for subscription changes and wakes the supervisor.
async fn listen(target: &PgTarget, wake: Arc<Notify>) -> Result<Client, PgError> {
    let (client, mut connection) = target.connect_raw().await?;
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %describe(&e), "subscription listener connection closed");
                    break;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {}", store::CHANNEL))
        .await
        .map_err(|e| PgError::query("listening for subscription changes", &e))?;
    Ok(client)
}

/// Starts, stops and restarts tasks so that they match `wanted`.
async fn reconcile(
    client: &Client,
    running: &mut HashMap<String, Running>,
    wanted: Vec<Wanted>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) {
    let wanted: HashMap<String, Wanted> =
        wanted.into_iter().map(|w| (w.stream.clone(), w)).collect();
    let removed: Vec<String> = running
        .keys()
        .filter(|s| !wanted.contains_key(*s))
        .cloned()
        .collect();
    for stream in removed {
        if let Some(r) = running.remove(&stream) {
            tracing::info!(%stream, "unsubscribed; stopping its ingest");
            stop(r).await;
            crate::observe::ingest().forget(&stream);
        }
    }
    for (stream, w) in wanted {
        let offset = match running.get(&stream) {
            Some(r) if r.generation == w.generation => continue,
            Some(_) => {
                if let Some(r) = running.remove(&stream) {
                    tracing::info!(%stream, "subscribed again; restarting its ingest");
                    stop(r).await;
                }
                // The stopped task may have committed since `wanted` was read.
                match store::offset(client, &stream).await {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(%stream, error = %e, "cannot read the stored offset; retrying");
                        continue;
                    }
                }
            }
            None => w.offset,
        };
        tracing::info!(%stream, offset = offset.as_deref().unwrap_or(crate::ds::OFFSET_START), "ingesting");
        let stop = shutdown.child_token();
        let handle = tokio::spawn(subscription::run(
            stream.clone(),
            offset,
            Arc::clone(shared),
            stop.clone(),
        ));
        running.insert(
            stream,
            Running {
                generation: w.generation,
                stop,
                handle,
            },
        );
    }
}

async fn stop(r: Running) {
    r.stop.cancel();
    let _ = r.handle.await;
}
