//! The initial snapshot: rows that exist before capture starts reach the streams, followed
//! by every change after them, with no gap and no duplicate between the two.
//!
//! ```text
//!  replication session: CREATE_REPLICATION_SLOT .. (SNAPSHOT 'export') ─▶ consistent point C, snapshot S
//!        │ (idle: S lives as long as the session)
//!  readers ×N: BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT S; COPY (SELECT cols FROM t WHERE filter)
//!        │ rows ─▶ bounded channel ─▶ writer: [reset] snapshot-start, insert.., snapshot-end
//!        ▼                                    Stream-Seq (C-1, n) per stream
//!  session ends; streaming starts at C: every change committed at or after C, Stream-Seq (lsn ≥ C, i)
//! ```
//!
//! The snapshot shows exactly the transactions committed before C, and the slot streams
//! exactly those committed from C on, so the hand-off has neither gap nor overlap. Snapshot
//! messages sort below every streamed change, and the DS server refuses a sequence that is
//! not above the stream's last, so a replayed POST is skipped like a replayed change.
//!
//! **Crash mid-snapshot.** An exported snapshot dies with its session, so a snapshot cannot
//! resume. `ds_sync.snapshots` is marked `running` before the slot is created and `done`
//! after the last row is acknowledged. A start that finds `running` drops the slot, creates
//! it again with a fresh snapshot and snapshots again, sending `reset` first to every
//! stream the slot's tables wrote to: those of earlier snapshots (recorded in
//! `ds_sync.snapshot_streams` before a stream's first message) and those of changes
//! (`ds_sync.table_streams`). The new consistent point is higher, so the whole new section
//! sorts after the partial one: a client that applies `reset` ends with the table.
//!
//! **Modes** ([`SnapshotMode`]): `initial` snapshots when `run` creates the slot (and
//! after an unfinished snapshot); `always` recreates the slot and snapshots on every start;
//! `never` only streams. A lost slot with `--on-slot-lost recreate` is recreated and
//! snapshotted in every mode (see `slot_lost`).

mod catalog;
mod copy_text;
mod error;
pub mod incremental;
mod progress;
mod reader;
pub mod signals;
mod state;
mod visibility;
mod window;
mod writer;

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::ds::DsClient;
use crate::lsn::Lsn;
use crate::pg::replication_session::{ExportedSlot, ReplicationSession};
use crate::slot;

use super::batch::Limits;
use super::error::CaptureError;
use super::fence::Fence;
use super::identity;
use super::message::pg_now_micros;
use super::pipeline::CaptureConfig;
use super::source;
use super::startup::Ready;

pub use catalog::{SIGNAL_SCHEMA, SnapshotTable, published_tables};
pub use copy_text::{CopyTextError, parse_line};
pub use error::SnapshotError;
pub use reader::ReadContext;
pub use state::{Reason, Recorded, decide};
pub use writer::SnapshotSeqs;

use reader::Item;
use writer::{StreamRecord, Writer};

/// When `run` snapshots the published tables.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    Initial,
    Always,
    Never,
}

/// Snapshot settings of `run`.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotOptions {
    pub mode: SnapshotMode,
    /// Tables read in parallel.
    pub workers: usize,
    /// Rows per chunk of a snapshot taken while streaming.
    pub chunk_rows: usize,
}

impl SnapshotOptions {
    /// Default of `--snapshot`.
    pub const DEFAULT_MODE: SnapshotMode = SnapshotMode::Initial;
    /// Default of `--snapshot-workers`.
    pub const DEFAULT_WORKERS: usize = 4;
    /// Default of `--snapshot-chunk-rows`.
    pub const DEFAULT_CHUNK_ROWS: usize = 1000;
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            mode: Self::DEFAULT_MODE,
            workers: Self::DEFAULT_WORKERS,
            chunk_rows: Self::DEFAULT_CHUNK_ROWS,
        }
    }
}

/// Why and how a start snapshots, as `startup` decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub reason: Reason,
    /// The slot exists: it is dropped before it is created again.
    pub exists: bool,
    /// Streams may hold older rows (the slot existed, or a snapshot was recorded): each gets
    /// a `reset` first, those earlier snapshots and changes wrote to included.
    pub reset: bool,
}

impl Plan {
    /// The plan for `reason`, from whether the slot `exists` and what `ds_sync.snapshots`
    /// says of it. Pure.
    pub fn new(reason: Reason, exists: bool, recorded: Recorded) -> Plan {
        Plan {
            reason,
            exists,
            reset: exists || recorded != Recorded::Never,
        }
    }
}

/// The snapshotting start: the slot (re)created with an exported snapshot (it must be
/// created this way: the exported snapshot is what the tables are read in), the published
/// tables copied as of its consistent point, the snapshot recorded as done. Streaming
/// starts at the consistent point (or the slot's position, if it moved on since). `None`
/// when a shutdown came first: the next start snapshots again.
pub async fn take(
    sql: &Client,
    cfg: &CaptureConfig,
    fence: &Fence,
    plan: &Plan,
    (shutdown, hard_stop): (&CancellationToken, &CancellationToken),
) -> Result<Option<Ready>, CaptureError> {
    let slot_name = cfg.source.slot.as_str();
    tracing::info!(
        slot = slot_name,
        reason = plan.reason.as_str(),
        "taking a snapshot of the published tables"
    );
    let Some((session, exported)) = recreate_slot(sql, cfg, fence, plan.exists, shutdown).await?
    else {
        tracing::info!(
            "stopped while the slot was being created; the next start takes the snapshot"
        );
        return Ok(None);
    };
    let point = exported.consistent_point;
    tracing::info!(slot = slot_name, consistent_point = %point, "created replication slot with an exported snapshot");
    state::set_point(sql, slot_name, point).await?;
    let identity = identity::created(sql, slot_name, point).await?;
    let job = copy_job(sql, cfg, &exported, plan.reset).await?;
    let names: Vec<String> = job.tables.iter().map(|t| t.info.qualified_name()).collect();
    let record = StreamRecord {
        sql,
        slot: slot_name,
        fence: fence.clone(),
        identity: Arc::clone(&identity),
    };
    let end = copy(job, Some(record), shutdown, hard_stop).await;
    session.terminate().await;
    match end? {
        CopyEnd::Done { rows } => {
            let start = record_done(sql, slot_name, rows, &names).await?;
            Ok(Some(Ready {
                start: start.max(point),
                identity,
            }))
        }
        CopyEnd::Stopped => {
            tracing::info!("stopped during the snapshot; the next start takes it again");
            Ok(None)
        }
    }
}

/// What `ds_sync.snapshots` says about the slot.
pub async fn recorded(sql: &Client, slot: &str) -> Result<Recorded, CaptureError> {
    Ok(state::load(sql, slot).await?)
}

/// Marks the snapshot running, drops the slot when it `exists`, takes the fence and
/// creates the slot again on a replication session that exports its snapshot. The session
/// must stay open (and idle) while the snapshot is read. `None` when `shutdown` came first.
async fn recreate_slot(
    sql: &Client,
    cfg: &CaptureConfig,
    fence: &Fence,
    exists: bool,
    shutdown: &CancellationToken,
) -> Result<Option<(ReplicationSession, ExportedSlot)>, CaptureError> {
    let slot_name = cfg.source.slot.as_str();
    state::begin(sql, slot_name).await?;
    if exists {
        source::drop_slot(sql, &cfg.source).await?;
    }
    // The slot is gone now: taking it raises the epoch, fencing any process that had it.
    fence.take(sql, cfg.source.takeover).await?;
    let mut session = ReplicationSession::connect(&cfg.source.target).await?;
    let exported = create_slot(sql, &mut session, &cfg.source, shutdown).await?;
    Ok(exported.map(|exported| (session, exported)))
}

/// What the snapshot copies and where: the published tables (each checked against the
/// routes) read in the exported snapshot, with a `reset` first to every stream an earlier
/// snapshot or the slot's changes wrote to when `reset`.
async fn copy_job(
    sql: &Client,
    cfg: &CaptureConfig,
    exported: &ExportedSlot,
    reset: bool,
) -> Result<CopyJob, CaptureError> {
    let slot_name = cfg.source.slot.as_str();
    let reset_streams = if reset {
        state::streams(sql, slot_name).await?
    } else {
        Vec::new()
    };
    let tables = catalog::published_tables(sql, &cfg.source.publication).await?;
    for table in &tables {
        cfg.router.validate(&table.info)?;
    }
    Ok(CopyJob {
        read: ReadContext {
            target: cfg.source.target.clone(),
            snapshot: Some(exported.snapshot_name.clone()),
            router: Arc::new(cfg.router.clone()),
            lsn: exported.consistent_point,
            time_micros: pg_now_micros(),
        },
        tables,
        ds: cfg.ds.clone(),
        limits: cfg.limits,
        max_in_flight: cfg.max_in_flight,
        max_buffer_bytes: cfg.max_buffer_bytes,
        workers: cfg.snapshot.workers,
        consistent_point: exported.consistent_point,
        reset,
        reset_streams,
    })
}

/// Records a finished snapshot: done with its row count, its tables (for snapshots taken
/// while streaming) and the signal baseline. Returns the slot's confirmed position.
async fn record_done(
    sql: &Client,
    slot_name: &str,
    rows: u64,
    tables: &[String],
) -> Result<Lsn, CaptureError> {
    state::finish(sql, slot_name, rows).await?;
    for name in tables {
        signals::record_table(sql, slot_name, name).await?;
    }
    signals::record_baseline(sql, slot_name).await?;
    source::confirmed_position(sql, slot_name).await
}

/// Creates the slot with an exported snapshot, logging every few seconds which transactions
/// the creation waits for (read on `sql`, idle meanwhile). `None` when `shutdown` came first:
/// the session's walsender, which would go on waiting and could still create the slot, is
/// terminated.
async fn create_slot(
    sql: &Client,
    session: &mut ReplicationSession,
    source: &source::SourceConfig,
    shutdown: &CancellationToken,
) -> Result<Option<ExportedSlot>, CaptureError> {
    let slot_name = source.slot.as_str();
    let pid = session.backend_pid();
    let what = slot::creating(slot_name);
    let creating = crate::waits::reporting(
        session.create_slot_exporting_snapshot(slot_name, source.failover),
        crate::waits::REPORT_EVERY,
        async |waited| match crate::waits::blockers(sql, pid, Some(waited)).await {
            Ok(found) => crate::waits::log_blockers(
                &what,
                waited,
                &found,
                crate::waits::SLOT_CREATION_ADVICE,
            ),
            Err(e) => {
                tracing::warn!(waited_s = waited.as_secs(), error = %e, "{what} is taking long; cannot look up what it waits for")
            }
        },
    );
    tokio::select! {
        biased;
        created = creating => Ok(Some(created?)),
        () = shutdown.cancelled() => {
            if pid != 0
                && let Err(e) = sql.execute("SELECT pg_terminate_backend($1)", &[&pid]).await
            {
                tracing::warn!(pid, error = %crate::pg::describe(&e), "cannot end the walsender creating the slot");
            }
            Ok(None)
        }
    }
}

/// One snapshot copy: what to read and where to deliver it.
pub struct CopyJob {
    pub read: ReadContext,
    pub tables: Vec<SnapshotTable>,
    pub ds: DsClient,
    pub limits: Limits,
    pub max_in_flight: usize,
    pub max_buffer_bytes: usize,
    /// Tables read at once.
    pub workers: usize,
    /// Snapshot messages sort just below this position.
    pub consistent_point: Lsn,
    /// Send `reset` before each stream's `snapshot-start`.
    pub reset: bool,
    /// Streams framed (and reset) even when no row goes to them now.
    pub reset_streams: Vec<String>,
}

/// How a copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyEnd {
    /// Every row and frame was acknowledged by the DS server.
    Done { rows: u64 },
    /// Shutdown before the end.
    Stopped,
}

/// Reads the job's tables in parallel and delivers their rows; returns once the DS server
/// acknowledged everything.
async fn copy(
    job: CopyJob,
    record: Option<StreamRecord<'_>>,
    shutdown: &CancellationToken,
    hard_stop: &CancellationToken,
) -> Result<CopyEnd, CaptureError> {
    let estimate = job.tables.iter().map(|t| t.estimated_rows).sum();
    let progress = progress::Progress::start(estimate);
    crate::observe::snapshot().started(job.tables.len(), estimate);
    let mut writer = Writer::new(
        job.ds.clone(),
        job.limits,
        job.max_in_flight,
        job.consistent_point,
        job.reset,
        record,
        hard_stop,
    );
    for stream in &job.reset_streams {
        writer.touch(None, stream).await?;
    }
    writer.commit();
    let workers = job.workers.max(1);
    let (tx, mut rx) = mpsc::channel::<Item>(workers * 4);
    let mut readers = spawn_readers(&job, &tx, workers);
    drop(tx);
    let mut reading = true;
    loop {
        writer.dispatch().await?;
        crate::observe::capture().buffered(writer.buffered_bytes());
        if !reading && writer.is_idle() {
            break;
        }
        let room = writer.buffered_bytes() < job.max_buffer_bytes;
        tokio::select! {
            biased;
            done = writer.next_delivery(), if writer.has_in_flight() => {
                done?;
            }
            _ = hard_stop.cancelled() => return Err(CaptureError::Interrupted),
            _ = shutdown.cancelled() => return Ok(CopyEnd::Stopped),
            item = rx.recv(), if reading && room => match item {
                // An empty table's stream is framed only when it may hold older rows that
                // the reset must clear; otherwise a table without rows sends nothing.
                Some(Item::Touch(table, stream)) => {
                    if job.reset {
                        writer.touch(Some(&table), &stream).await?;
                        writer.commit();
                    }
                }
                Some(Item::Rows(rows)) => {
                    let n = rows.len() as u64;
                    for row in rows {
                        writer.row(&row.table, &row.stream, row.json).await?;
                    }
                    writer.commit();
                    progress.add(n);
                    crate::observe::snapshot().rows(n);
                }
                None => {
                    // Every reader dropped its sender: collect their results before the
                    // frames close, so a failed table never looks finished.
                    while let Some(joined) = readers.join_next().await {
                        joined.map_err(SnapshotError::ReaderTask)??;
                    }
                    reading = false;
                    writer.end()?;
                }
            },
        }
    }
    let rows = writer.rows;
    progress.finish();
    crate::observe::snapshot().finished();
    Ok(CopyEnd::Done { rows })
}

fn spawn_readers(
    job: &CopyJob,
    tx: &mpsc::Sender<Item>,
    workers: usize,
) -> JoinSet<Result<(), CaptureError>> {
    let permits = Arc::new(Semaphore::new(workers));
    let mut readers = JoinSet::new();
    for table in job.tables.iter().cloned() {
        let (ctx, tx, permits) = (job.read.clone(), tx.clone(), Arc::clone(&permits));
        readers.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let rows = reader::read_table(&ctx, &table, &tx).await?;
            crate::observe::snapshot().table_done();
            tracing::debug!(table = %table.info.qualified_name(), rows, "table read");
            Ok(())
        });
    }
    readers
}
