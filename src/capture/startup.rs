//! Capture's startup, in the order it happens: [`attempt`] reads top to bottom.
//!
//! ```text
//!  connect ─▶ schema ─▶ slot lock ─▶ publication ─▶ slot decision ─────────▶ snapshot ─▶ stream
//!                      (standby:                   create (missing)        (per --snapshot,
//!                       waits here;                adopt (exists)           and after a lost
//!                       then the fence)            lost: error, or recreate or unfinished one)
//! ```
//!
//! The slot lock (see `standby`) comes before anything that changes the publication or the
//! slot, so only one process of a slot does. A reconnect after a lost connection (the slot,
//! and its snapshot, already settled by this process) goes from connect through the lock
//! (still held, unless its connection was lost too) straight to stream, from the slot's
//! confirmed position; only a slot found lost while streaming (`--on-slot-lost recreate`)
//! starts over from the top.

use std::sync::Arc;

use pgwire_replication::ReplicationClient;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::ds::Backoff;
use crate::lsn::Lsn;
use crate::slot::{self, SlotInfo};

use super::error::CaptureError;
use super::fence::Fence;
use super::identity::{self, SourceIdentity};
use super::keepalive::KeepaliveProbe;
use super::pipeline::{self, CaptureConfig, SessionEnd};
use super::slot_lost::{self, OnSlotLost};
use super::snapshot::incremental::Incremental;
use super::snapshot::{self, Reason, SnapshotMode};
use super::source;
use super::standby::SlotLock;

/// `application_name` of capture's SQL connection.
pub const APPLICATION_NAME: &str = "ds-sync/capture";

/// What outlives a connection: where streaming resumes, and snapshots taken while
/// streaming (so a reconnect re-sends a chunk the DS server has not acknowledged with the
/// same sequences).
#[derive(Default)]
pub(super) struct Resume {
    /// Set once the slot (and its initial snapshot) is ready.
    ready: Option<Ready>,
    incremental: Option<Incremental>,
    /// The slot was found lost after streaming began (`--on-slot-lost recreate`): the next
    /// start recreates it, whatever the server says of it by then.
    slot_lost: bool,
}

impl Resume {
    /// After the slot was found lost while streaming: the next attempt starts from the top.
    pub(super) fn after_slot_lost() -> Resume {
        Resume {
            slot_lost: true,
            ..Resume::default()
        }
    }
}

/// Where streaming starts, and the slot's incarnation (see `identity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub start: Lsn,
    pub identity: Arc<SourceIdentity>,
}

/// What this start does with the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotDecision {
    /// It does not exist: create it and stream from its first position (`--snapshot never`).
    Create,
    /// It exists: stream from its confirmed position.
    Adopt,
    /// (Re)create it with an exported snapshot and copy the tables first.
    Snapshot(snapshot::Plan),
}

/// One connection's worth of capture, from connecting to the end of streaming. Each step is
/// a function below; a reconnect skips from connect to stream.
pub(super) async fn attempt(
    cfg: &CaptureConfig,
    fence: &Fence,
    lock: &mut SlotLock,
    resume: &mut Resume,
    backoff: &mut Backoff,
    stops: (&CancellationToken, &CancellationToken),
) -> Result<SessionEnd, CaptureError> {
    let Some(mut sql) = connect(cfg, stops.0).await? else {
        return Ok(SessionEnd::Stopped);
    };
    if resume.ready.is_none() {
        apply_schema(&mut sql).await?;
    }
    let Some(lock_lost) = lock.hold(fence, stops.0).await? else {
        return Ok(SessionEnd::Stopped);
    };
    let ready = match resume.ready.clone() {
        Some(ready) => resume_from_slot(&sql, cfg, ready).await?,
        None => {
            ensure_publication(&sql, cfg).await?;
            let ready = match decide_slot(&sql, cfg, resume.slot_lost).await? {
                SlotDecision::Create => create_slot(&sql, cfg).await?,
                SlotDecision::Adopt => adopt_slot(&sql, cfg).await?,
                SlotDecision::Snapshot(plan) => {
                    match snapshot::take(&sql, cfg, fence, &plan, stops).await? {
                        Some(ready) => ready,
                        None => return Ok(SessionEnd::Stopped),
                    }
                }
            };
            resume.slot_lost = false;
            ready
        }
    };
    resume.ready = Some(ready.clone());
    let incremental = incremental_snapshots(&sql, cfg, &mut resume.incremental).await?;
    let Some(repl) = open_replication(&sql, cfg, fence, ready.start, stops.0).await? else {
        return Ok(SessionEnd::Stopped);
    };
    let keepalive = send_keepalive_probe(&sql, cfg).await?;
    let session = pipeline::Streaming {
        sql: &sql,
        fence,
        ready: &ready,
        incremental,
        keepalive,
        lock_lost,
    };
    let (end, confirmed) = pipeline::stream(cfg, session, repl, stops).await;
    resume.ready = Some(Ready {
        start: confirmed,
        ..ready.clone()
    });
    if confirmed > ready.start {
        backoff.reset();
    }
    end
}

/// The SQL connection every step uses (the replication connection is opened last, by
/// [`open_replication`]). `None` when a shutdown came first.
async fn connect(
    cfg: &CaptureConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Client>, CaptureError> {
    let target = cfg.source.target.with_application_name(APPLICATION_NAME);
    Ok(unless_stopped(shutdown, target.connect())
        .await
        .transpose()?)
}

/// A reconnect: the slot was settled by an earlier connection of this process, so streaming
/// resumes at its confirmed position (or where this process got to, if further). A slot
/// lost meanwhile is an error here, handled by `run`.
async fn resume_from_slot(
    sql: &Client,
    cfg: &CaptureConfig,
    ready: Ready,
) -> Result<Ready, CaptureError> {
    let confirmed = source::confirmed_position(sql, &cfg.source.slot).await?;
    Ok(Ready {
        start: ready.start.max(confirmed),
        identity: ready.identity,
    })
}

/// The migrations in `sql/`: everything the later steps record lives in `ds_sync` (snapshot
/// bookkeeping, the fence, the source identity, the signal table and the probe).
async fn apply_schema(sql: &mut Client) -> Result<(), CaptureError> {
    crate::schema::apply(sql).await?;
    Ok(())
}

/// The publication before the slot: pgoutput on PostgreSQL 15 stops with "publication does
/// not exist" when it decodes a change from before the publication, and a slot created
/// before an insert-only companion publication would stop the same way.
async fn ensure_publication(sql: &Client, cfg: &CaptureConfig) -> Result<(), CaptureError> {
    source::ensure_publication(sql, &cfg.source).await
}

/// Decides what this start does with the slot, from what the server and
/// `ds_sync.snapshots` say. A lost slot (`known_lost`: found so while streaming) is an error
/// under `--on-slot-lost error`, and under `recreate` it is recreated with a snapshot
/// whatever the mode (announced here). Otherwise `--snapshot` decides (see
/// [`snapshot::decide`]): `never` streams from the slot as it is (created when missing).
async fn decide_slot(
    sql: &Client,
    cfg: &CaptureConfig,
    known_lost: bool,
) -> Result<SlotDecision, CaptureError> {
    let slot_name = cfg.source.slot.as_str();
    if cfg.source.failover {
        check_failover(sql, slot_name).await?;
    }
    let found = slot::find(sql, slot_name).await?;
    let exists = found.is_some();
    let lost = known_lost || found.as_ref().is_some_and(SlotInfo::is_lost);
    if lost && cfg.on_slot_lost == OnSlotLost::Error {
        return Err(CaptureError::SlotLost(slot_name.to_owned()));
    }
    let stream_as_is = if exists {
        SlotDecision::Adopt
    } else {
        SlotDecision::Create
    };
    if cfg.snapshot.mode == SnapshotMode::Never && !lost {
        return Ok(stream_as_is);
    }
    let recorded = snapshot::recorded(sql, slot_name).await?;
    let reason = if lost {
        slot_lost::announce(slot_name, OnSlotLost::Recreate);
        Some(Reason::SlotLost)
    } else {
        snapshot::decide(cfg.snapshot.mode, exists, recorded)
    };
    Ok(match reason {
        Some(reason) => SlotDecision::Snapshot(snapshot::Plan::new(reason, exists, recorded)),
        None => stream_as_is,
    })
}

/// `--failover-slot` on a server without failover slots is refused before the slot is
/// touched. On one with them, a primary that does not wait for its standbys
/// (`synchronized_standby_slots` empty) may stream changes a promoted standby never
/// received: said once, as a warning.
async fn check_failover(sql: &Client, slot_name: &str) -> Result<(), CaptureError> {
    slot::check_failover_supported(sql, slot_name).await?;
    let waits_for: String = sql
        .query_one("SELECT current_setting('synchronized_standby_slots')", &[])
        .await
        .map_err(|e| crate::pg::PgError::query("reading synchronized_standby_slots", &e))?
        .get(0);
    if waits_for.trim().is_empty() {
        tracing::warn!(slot = %slot_name, "synchronized_standby_slots is empty: changes may be streamed before a physical standby has them, and a standby promoted then would lack changes the streams hold; set it to the standbys' physical slots");
    }
    Ok(())
}

/// The slot is missing and no snapshot is wanted: created now, as a new source incarnation.
/// (Created by someone else meanwhile, it is checked and used as it is.)
async fn create_slot(sql: &Client, cfg: &CaptureConfig) -> Result<Ready, CaptureError> {
    let start = source::ensure_slot(sql, &cfg.source).await?;
    let identity = identity::created(sql, &cfg.source.slot, start).await?;
    Ok(Ready { start, identity })
}

/// The slot exists: checked to be a pgoutput slot of this database, streamed from its
/// confirmed position, as the incarnation recorded for it (a new one when this server does
/// not match the record).
async fn adopt_slot(sql: &Client, cfg: &CaptureConfig) -> Result<Ready, CaptureError> {
    let start = source::ensure_slot(sql, &cfg.source).await?;
    let identity = identity::establish(sql, &cfg.source.target, &cfg.source.slot, start).await?;
    Ok(Ready { start, identity })
}

/// The snapshots taken while streaming, set up before the replication connection so that
/// their requests are decoded by it: those of this process carried over a reconnect, or on
/// the first connection the unfinished requests, the tables that joined the publication
/// while capture was stopped, and those routed to streams adopted since the last start.
/// Either way they now read chunks on this connection.
async fn incremental_snapshots<'r>(
    sql: &Client,
    cfg: &CaptureConfig,
    kept: &'r mut Option<Incremental>,
) -> Result<&'r mut Incremental, CaptureError> {
    let incremental = match kept.take() {
        Some(incremental) => incremental,
        None => {
            let incremental = Incremental::start(
                sql,
                &cfg.source.target,
                &cfg.source.slot,
                &cfg.source.publication,
                cfg.snapshot.chunk_rows,
                cfg.snapshot.mode != SnapshotMode::Never,
            )
            .await?;
            super::adopt::resnapshot_adopted(sql, cfg).await?;
            incremental
        }
    };
    let incremental = kept.insert(incremental);
    incremental.attach(sql).await?;
    Ok(incremental)
}

/// The replication stream at `start`, once the fence is taken, or checked to be still ours:
/// a process taken over never reconnects (and so never takes the slot back with
/// `--takeover`). Last of the steps, so that a slot held by this connection's walsender is
/// never held while an earlier step fails. `None` when a shutdown came first.
async fn open_replication(
    sql: &Client,
    cfg: &CaptureConfig,
    fence: &Fence,
    start: Lsn,
    shutdown: &CancellationToken,
) -> Result<Option<ReplicationClient>, CaptureError> {
    fence.take(sql, cfg.source.takeover).await?;
    unless_stopped(shutdown, source::connect(sql, &cfg.source, start))
        .await
        .transpose()
}

/// The probe that guards confirming keepalive positions (see `keepalive`), sent once the
/// replication stream is open so that it is decoded by it.
async fn send_keepalive_probe(
    sql: &Client,
    cfg: &CaptureConfig,
) -> Result<KeepaliveProbe, CaptureError> {
    KeepaliveProbe::send(sql, &cfg.source.slot, &cfg.source.publication).await
}

/// `fut`'s output, or `None` when `shutdown` comes first.
pub(super) async fn unless_stopped<F: std::future::Future>(
    shutdown: &CancellationToken,
    fut: F,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        out = fut => Some(out),
    }
}
