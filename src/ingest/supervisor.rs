//! The subscription supervisor: keeps one task per subscribed stream this instance owns,
//! following `ds_sync.subscriptions` as it changes and sharing it with the other instances
//! (see [`lease`](super::lease)).
//!
//! Every tick (at most a second, three per lease TTL) and whenever `ds-sync subscribe` /
//! `unsubscribe` NOTIFY its LISTEN connection, it renews its leases on that connection,
//! reads the table with each row's owner, claims or releases subscriptions to keep its
//! share, and reconciles its tasks with what it owns. A new row starts a task from the
//! stored offset; a removed row, or one another instance owns now, stops its task (between
//! commits; the offset stays stored); a row whose generation grew (subscribed again)
//! restarts it from the stored offset. A task that finished (closed stream, 410) is left
//! finished until its generation grows. When the leases could not be renewed for a whole
//! TTL, every task stops until they are.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;

use super::lease::{self, Counts, Leases};
use super::store::{self, Wanted};
use super::subscription::{self, Shared};
use crate::ds::Backoff;
use crate::pg::{PgError, PgTarget, describe};

struct Running {
    generation: i64,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// Supervises subscriptions until `shutdown`, then stops every task, waits for them and
/// gives the leases back.
pub async fn supervise(
    target: PgTarget,
    shared: Arc<Shared>,
    mut leases: Leases,
    shutdown: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    let mut client: Option<Client> = None;
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut tick = tokio::time::interval(lease::tick_every(leases.ttl()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outage = Outage::default();
    tracing::info!(instance = %leases.instance().id, ttl = ?leases.ttl(), "ingest instance registering");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            () = wake.notified() => {}
        }
        if leases.lapsed() && !running.is_empty() {
            tracing::warn!(ttl = ?leases.ttl(), streams = running.len(), "ingest leases not renewed for a whole ttl: other instances may take these streams; stopping them until the leases are renewed");
            stop_all(running.drain().map(|(_, r)| r).collect()).await;
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
        match round(c, &mut leases, &mut running, &shared, &shutdown).await {
            Ok(()) => outage.ended(),
            Err(e) => outage.failed(&e),
        }
    }
    stop_all(running.into_values().collect()).await;
    if let Some(c) = client.as_ref().filter(|c| !c.is_closed())
        && let Err(e) = leases.retire(c).await
    {
        tracing::warn!(error = %e, "cannot give the ingest leases back; other instances take them when they run out");
    }
}

/// One tick: renew, read, balance, reconcile.
async fn round(
    c: &Client,
    leases: &mut Leases,
    running: &mut HashMap<String, Running>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> Result<(), PgError> {
    leases.renew(c).await?;
    let view = leases.view(c).await?;
    let counts = view.counts();
    let decision = lease::decide(counts);
    let mut mine = view.mine();
    if decision.release > 0 {
        let gone = mine.split_off(mine.len() - decision.release);
        release(c, leases, running, gone, counts).await?;
    }
    if decision.claim > 0 && leases.may_claim(counts.live) {
        mine.extend(claim(c, leases, decision.claim, counts).await?);
    }
    crate::observe::ingest().leases(mine.len(), counts.live);
    reconcile(c, running, mine, shared, shutdown).await;
    Ok(())
}

/// Stops the tasks of `gone` (each after its commit in flight), then gives their leases up.
async fn release(
    c: &Client,
    leases: &Leases,
    running: &mut HashMap<String, Running>,
    gone: Vec<Wanted>,
    counts: Counts,
) -> Result<(), PgError> {
    let names: Vec<String> = gone.into_iter().map(|w| w.stream).collect();
    let stopping: Vec<Running> = names.iter().filter_map(|s| running.remove(s)).collect();
    stop_all(stopping).await;
    for s in &names {
        crate::observe::ingest().forget(s);
    }
    leases.release(c, &names).await?;
    tracing::info!(
        released = names.len(),
        owned = counts.mine - names.len(),
        share = counts.share(),
        live_instances = counts.live,
        "released subscriptions over this instance's share"
    );
    Ok(())
}

/// Claims up to `n` free subscriptions; returns them with their stored offsets.
async fn claim(
    c: &Client,
    leases: &Leases,
    n: usize,
    counts: Counts,
) -> Result<Vec<Wanted>, PgError> {
    let claimed = leases.claim(c, n).await?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<&str> = claimed.iter().map(|(s, _)| s.as_str()).collect();
    let offsets = store::offsets(c, &names).await?;
    leases.forget_gone(c).await?;
    tracing::info!(
        claimed = claimed.len(),
        owned = counts.mine + claimed.len(),
        share = counts.share(),
        live_instances = counts.live,
        "claimed subscriptions"
    );
    Ok(claimed
        .into_iter()
        .zip(offsets)
        .map(|((stream, generation), offset)| Wanted {
            stream,
            generation,
            offset,
        })
        .collect())
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

/// Starts, stops and restarts tasks so that they match `wanted` (what this instance owns).
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
    let mut stopping = Vec::with_capacity(removed.len());
    for stream in removed {
        if let Some(r) = running.remove(&stream) {
            tracing::info!(%stream, "unsubscribed, or owned by another instance now; stopping its ingest");
            stopping.push(r);
            crate::observe::ingest().forget(&stream);
        }
    }
    stop_all(stopping).await;
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

/// Stops tasks together: each is told first, then each is waited for.
async fn stop_all(tasks: Vec<Running>) {
    for r in &tasks {
        r.stop.cancel();
    }
    for r in tasks {
        let _ = r.handle.await;
    }
}
