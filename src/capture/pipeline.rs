//! The capture loop: replication events in, batches out, acknowledgements back to the slot.
//! What happens before it (connect, schema, publication, slot, snapshot) is `startup`'s;
//! [`run`] reconnects, going through `startup::attempt` each time.
//!
//! ```text
//!  walsender ─▶ pgwire-replication ─▶ decode ─▶ message ─▶ route ─▶ Queues ─▶ deliver (POST)
//!      ▲                                                     │                    │
//!      └──── update_applied_lsn ◀── Ledger ◀─────────────────┴──── acknowledged ◀─┘
//! ```
//!
//! One `select!` loop owns all state. Its priorities, in order:
//! 1. finished deliveries (they free streams and move the ledger);
//! 2. shutdown (stop reading, deliver what is held, confirm, exit);
//! 3. lingering batches whose time has come;
//! 4. the next replication event, only while held bytes stay under the buffer bound
//!    (under backpressure ds-sync stops reading instead of buffering without limit; the
//!    replication worker keeps feedback flowing meanwhile, so the server does not time out).
//!    A full buffer with nothing sendable makes open batches sendable (`Queues::relieve`),
//!    so a transaction of any shape passes.
//!    While a streamed transaction (`--pgoutput-protocol 2`) is replayed after its Stream
//!    Commit, its held messages take the place of replication events, under the same bound,
//!    and no event is read until the replay ends: transactions stay in commit order.
//!
//! LSN rules: a transaction is confirmed to the server only when all its messages, in every
//! stream, are acknowledged by the DS server, and only after every earlier transaction is
//! (see `ledger`). Keepalive positions are confirmed while nothing is in flight.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::ds::{Backoff, DsClient};
use crate::lsn::Lsn;
use crate::pgoutput::{PgOutputMessage, StreamCommit, Truncate, decode};

use super::batch::{Limits, OutMessage, Queues, Seq};
use super::error::CaptureError;
use super::fence::Fence;
use super::keepalive::KeepaliveProbe;
use super::ledger::{Ledger, TxId};
use super::message::{self, ChangeRef, RowMessage, TableInfo, TxHeaders, TxMeta};
use super::route::{RouteError, Router};
use super::sender::{Deliveries, Landed};
use super::slot_lost::{self, OnSlotLost};
use super::snapshot::incremental::{Decoded, Incremental};
use super::source::{self, SourceConfig};
use super::standby::SlotLock;
use super::startup::{self, Ready, Resume};
use super::streamed::{self, Replay, Streamed};
use super::streams::StreamBook;

/// Everything capture needs.
pub struct CaptureConfig {
    pub source: SourceConfig,
    pub ds: DsClient,
    pub router: Router,
    pub limits: Limits,
    /// Stop reading WAL while this many bytes of messages are held.
    pub max_buffer_bytes: usize,
    /// POSTs in flight at once, over all streams.
    pub max_in_flight: usize,
    /// When and how to snapshot the published tables before streaming.
    pub snapshot: super::snapshot::SnapshotOptions,
    /// Keeps updates whole for tables seen while streaming (see `whole_rows`).
    pub whole_rows: super::whole_rows::WholeRows,
    /// What to do when the server invalidated the slot (see `slot_lost`).
    pub on_slot_lost: OnSlotLost,
    /// How long the slot lock's holder may look hung before a standby ends its session
    /// (see `standby`).
    pub standby_takeover_after: std::time::Duration,
}

impl CaptureConfig {
    /// Default of `--max-buffer-bytes`: the read-ahead that keeps the slot busy while
    /// batches are in flight, small enough for the peak RSS target (bench/NOTES.md).
    pub const DEFAULT_MAX_BUFFER_BYTES: usize = 8 << 20;
    /// Default of `--max-in-flight`.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
    /// Default of `--on-slot-lost`: stop, and let the operator decide.
    pub const DEFAULT_ON_SLOT_LOST: OnSlotLost = OnSlotLost::Error;
    /// Default of `--standby-takeover-after-ms`.
    pub const DEFAULT_STANDBY_TAKEOVER_AFTER: std::time::Duration =
        super::standby::DEFAULT_TAKEOVER_AFTER;
    /// Default of `--metrics-stream-labels`: no per-stream series.
    pub const DEFAULT_METRICS_STREAM_LABELS: bool = false;
}

/// Runs capture until `shutdown` (graceful) or `hard_stop` (second signal, or the shutdown
/// timeout), reconnecting on transient failures: every connection capture holds (SQL,
/// replication, snapshot readers) is opened again after a backoff that is waited, and
/// streaming resumes from the slot's confirmed position. Each connection goes through
/// [`startup::attempt`].
pub async fn run(
    cfg: &CaptureConfig,
    shutdown: &CancellationToken,
    hard_stop: &CancellationToken,
) -> Result<(), CaptureError> {
    // Taken (its epoch raised) before the slot is created, dropped or streamed from.
    let fence = Fence::new(&cfg.source.target, &cfg.source.slot);
    let mut backoff = Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(10),
    );
    // One active process per slot; held across reconnects (see `standby`).
    let mut lock = SlotLock::new(
        &cfg.source.target,
        &cfg.source.slot,
        cfg.standby_takeover_after,
        cfg.source.takeover,
    );
    let mut resume = Resume::default();
    loop {
        let stops = (shutdown, hard_stop);
        let attempt = startup::attempt(cfg, &fence, &mut lock, &mut resume, &mut backoff, stops);
        let error = match attempt.await {
            Ok(SessionEnd::Stopped) => return Ok(()),
            Ok(SessionEnd::ServerEnded) => {
                crate::observe::capture().server_ended();
                None
            }
            Err(CaptureError::SlotLost(slot)) => {
                if cfg.on_slot_lost == OnSlotLost::Error {
                    slot_lost::announce(&slot, OnSlotLost::Error);
                    return Err(CaptureError::SlotLost(slot));
                }
                // The next attempt starts from the top: it drops and recreates the slot.
                resume = Resume::after_slot_lost();
                continue;
            }
            Err(e) if e.is_transient() => Some(e),
            Err(e) => return Err(e),
        };
        if wait_or_stop(&mut backoff, error.as_ref(), shutdown).await {
            tracing::info!(
                "stopped while reconnecting; the next start resumes from the slot's confirmed position"
            );
            return Ok(());
        }
    }
}

/// What streaming works with, as startup left it.
pub(super) struct Streaming<'a> {
    pub sql: &'a Client,
    pub fence: &'a Fence,
    pub ready: &'a Ready,
    pub incremental: &'a mut Incremental,
    pub keepalive: KeepaliveProbe,
    /// Cancelled when the slot lock is lost: streaming stops.
    pub lock_lost: CancellationToken,
}

/// Streams changes until the session ends, then waits for deliveries still running; after a
/// graceful stop the slot's position is written over SQL and the fence released. Returns
/// how the session ended and the position confirmed by then.
pub(super) async fn stream(
    cfg: &CaptureConfig,
    streaming: Streaming<'_>,
    repl: ReplicationClient,
    (shutdown, hard_stop): (&CancellationToken, &CancellationToken),
) -> (Result<SessionEnd, CaptureError>, Lsn) {
    let (sql, fence, start) = (streaming.sql, streaming.fence, streaming.ready.start);
    crate::observe::capture().session_started();
    tracing::info!(slot = %cfg.source.slot, %start, "streaming changes");
    let mut session = Session::new(cfg, streaming, hard_stop);
    let result = session.run(repl, shutdown).await;
    let confirmed = session.ledger.confirmed().max(start);
    session.drain().await;
    crate::observe::capture().session_ended();
    if let Ok(SessionEnd::Stopped) = result {
        tokio::select! {
            () = confirm_at_exit(sql, &cfg.source.slot, confirmed) => {}
            () = hard_stop.cancelled() => return (Err(CaptureError::Interrupted), confirmed),
        }
        fence.release(sql).await;
    }
    (result, confirmed)
}

/// The slot's position after a graceful stop. Failing to write it loses nothing: the
/// changes delivered after it are sent again on the next start and skipped by the server.
async fn confirm_at_exit(sql: &Client, slot: &str, confirmed: Lsn) {
    match source::advance_slot(sql, slot, confirmed).await {
        Ok(()) => tracing::info!(%confirmed, "stopped"),
        Err(e) => tracing::warn!(
            error = %e,
            delivered = %confirmed,
            "stopped; the slot's position could not be updated, so changes delivered after it are read again on the next start and skipped by the DS server"
        ),
    }
}

/// Waits the next backoff delay before reconnecting; true when `shutdown` came first (or
/// had come already): the caller stops instead of reconnecting.
async fn wait_or_stop(
    backoff: &mut Backoff,
    error: Option<&CaptureError>,
    shutdown: &CancellationToken,
) -> bool {
    if shutdown.is_cancelled() {
        if let Some(e) = error {
            tracing::warn!(error = %e, "capture interrupted while stopping");
        }
        return true;
    }
    let delay = backoff.next_delay();
    let retry_in_ms = delay.as_millis() as u64;
    match error {
        Some(e) => {
            crate::observe::capture().reconnect(e);
            let error = match e.hint() {
                Some(hint) => format!("{e}. {hint}"),
                None => e.to_string(),
            };
            tracing::warn!(%error, retry_in_ms, "capture interrupted, resuming from the slot's confirmed position");
        }
        None => tracing::warn!(
            retry_in_ms,
            "the server ended the replication stream; resuming from the slot's confirmed position"
        ),
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = shutdown.cancelled() => true,
    }
}

/// Why a session ended without error.
pub(super) enum SessionEnd {
    Stopped,
    ServerEnded,
}

/// The transaction being received.
struct OpenTx {
    id: TxId,
    meta: TxMeta,
    /// The index of the next message. Messages take consecutive indexes in WAL order, except
    /// that the resets of one TRUNCATE share one: so the numbering depends on the WAL alone,
    /// never on which streams are known, and a replay numbers a transaction identically.
    next_index: u32,
    /// The headers its messages share, written at its first change written straight to JSON.
    headers: Option<TxHeaders>,
    /// The relations it changed, each once: a snapshot chunk read while this transaction
    /// was still invisible is checked against them (`Incremental::committed`).
    tables: Vec<u32>,
}

impl OpenTx {
    /// Takes the next index.
    fn take_index(&mut self) -> Result<u32, CaptureError> {
        let index = self.next_index;
        self.next_index = index
            .checked_add(1)
            .ok_or_else(|| CaptureError::TooManyMessages {
                tx: self.id.to_string(),
            })?;
        Ok(index)
    }

    /// Notes that a change of relation `oid` belongs to this transaction.
    fn touch(&mut self, oid: u32) {
        if self.tables.last() != Some(&oid) && !self.tables.contains(&oid) {
            self.tables.push(oid);
        }
    }

    fn headers(&mut self) -> &TxHeaders {
        self.headers
            .get_or_insert_with(|| TxHeaders::new(&self.meta))
    }
}

/// One replication connection's worth of state.
struct Session<'a> {
    cfg: &'a CaptureConfig,
    sql: &'a Client,
    ledger: Ledger,
    queues: Queues,
    tables: HashMap<u32, Arc<TableInfo>>,
    /// Streams each table has written to (recorded before their first message), for
    /// TRUNCATE's resets; stream admission for the source check.
    book: StreamBook,
    fence: Fence,
    tx: Option<OpenTx>,
    deliveries: Deliveries,
    hard_stop: CancellationToken,
    /// Snapshots taken while streaming; outlives sessions, so a reconnect re-sends a chunk
    /// the DS server has not acknowledged with the same sequences.
    snap: &'a mut Incremental,
    /// When a keepalive's position may be confirmed.
    keepalive: KeepaliveProbe,
    /// Cancelled when the slot lock is lost.
    lock_lost: CancellationToken,
    /// Transactions streamed while they run (`--pgoutput-protocol 2`), until they end.
    streamed: Streamed,
    /// The streamed transaction being replayed after its Stream Commit: read in steps, under
    /// the same buffer bound as the replication stream, which is not read meanwhile.
    replay: Option<(Replay, StreamCommit)>,
    /// The last table whose rows went straight to JSON and its stream (see
    /// `Session::fixed_stream`), while that `TableInfo` is its relation's current one.
    fixed: Option<(Arc<TableInfo>, Arc<str>)>,
}

impl<'a> Session<'a> {
    fn new(
        cfg: &'a CaptureConfig,
        streaming: Streaming<'a>,
        hard_stop: &CancellationToken,
    ) -> Session<'a> {
        let Streaming {
            sql,
            fence,
            ready,
            incremental,
            keepalive,
            lock_lost,
        } = streaming;
        let identity = &ready.identity;
        Session {
            cfg,
            sql,
            ledger: Ledger::new(ready.start),
            queues: Queues::new(cfg.limits),
            tables: HashMap::new(),
            book: StreamBook::new(
                &cfg.source.slot,
                cfg.ds.clone(),
                Arc::clone(identity),
                hard_stop,
            ),
            fence: fence.clone(),
            tx: None,
            deliveries: Deliveries::new(cfg.ds.clone(), cfg.max_in_flight, hard_stop)
                .guarded(Some(fence.clone()), Some(Arc::clone(identity))),
            hard_stop: hard_stop.clone(),
            snap: incremental,
            keepalive,
            lock_lost,
            streamed: Streamed::new(streamed::DEFAULT_MEMORY_BYTES, std::env::temp_dir()),
            replay: None,
            fixed: None,
        }
    }

    async fn run(
        &mut self,
        mut repl: ReplicationClient,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, CaptureError> {
        let mut stopping = false;
        loop {
            if !stopping {
                self.snap.poll(self.sql, self.ledger.confirmed()).await?;
            }
            // Records of new streams first: nothing is POSTed before them.
            self.book.flush(self.sql).await?;
            self.deliveries.dispatch(&mut self.queues, Some(&self.book));
            // A full buffer with nothing in flight would stop reading for good: see
            // `Queues::relieve`.
            if self.queues.relieve(self.cfg.max_buffer_bytes) > 0 {
                tracing::debug!(
                    held = self.queues.buffered_bytes(),
                    "buffer full before a commit: sending open batches"
                );
                self.deliveries.dispatch(&mut self.queues, Some(&self.book));
            }
            if stopping && self.deliveries.is_empty() && self.queues.is_idle() {
                self.ledger.abandon_open();
                self.ledger.advance();
                crate::observe::capture().acknowledged(self.ledger.confirmed());
                repl.update_applied_lsn(self.ledger.confirmed().into());
                // The server may not answer (it is stopping, or the network is gone): the
                // position is also written over SQL at exit.
                if tokio::time::timeout(REPLICATION_STOP_TIMEOUT, repl.shutdown())
                    .await
                    .is_err()
                {
                    repl.abort();
                }
                return Ok(SessionEnd::Stopped);
            }
            crate::observe::capture().buffered(self.queues.buffered_bytes());
            let reading = !stopping && self.queues.buffered_bytes() < self.cfg.max_buffer_bytes;
            let linger = self.queues.next_linger_deadline();
            let probe_warning = self.keepalive.warning_at();
            let snapshot_wake = self.snap.wake_at();
            tokio::select! {
                biased;
                done = self.deliveries.next(&mut self.queues), if !self.deliveries.is_empty() => {
                    if let Landed::Held(batch) = done? {
                        for (tx, n) in batch.tx_counts() {
                            self.ledger.acked(tx, n);
                        }
                    }
                }
                _ = self.hard_stop.cancelled() => return Err(CaptureError::Interrupted),
                _ = self.fence.fenced().cancelled() => return Err(self.fence.error()),
                _ = self.lock_lost.cancelled() => {
                    return Err(CaptureError::LockLost { slot: self.cfg.source.slot.clone() });
                }
                _ = shutdown.cancelled(), if !stopping => {
                    tracing::info!("stopping: delivering the changes already read");
                    stopping = true;
                    self.queues.commit();
                }
                _ = sleep_until(linger), if linger.is_some() => {}
                _ = sleep_until(probe_warning), if probe_warning.is_some() => {
                    self.keepalive.warn_missing();
                }
                // A chunk to read again after its pause: `poll` at the top of the loop.
                _ = sleep_until(snapshot_wake), if snapshot_wake.is_some() && !stopping => {}
                () = std::future::ready(()), if reading && self.replay.is_some() => {
                    self.replay_some().await?;
                }
                event = repl.recv(), if reading && self.replay.is_none() => {
                    if let Some(end) = self.received(event, &mut repl).await? {
                        return Ok(end);
                    }
                }
            }
            if let Some(lsn) = self.ledger.advance() {
                crate::observe::capture().acknowledged(lsn);
                repl.update_applied_lsn(lsn.into());
            }
        }
    }

    /// Handles one received event, then every event already waiting (up to
    /// [`READ_AHEAD`]), so that a backlog of small transactions leaves in full batches
    /// instead of one POST per commit. When nothing is waiting it returns at once: a quiet
    /// stream's change is sent without delay.
    async fn received(
        &mut self,
        first: pgwire_replication::Result<Option<ReplicationEvent>>,
        repl: &mut ReplicationClient,
    ) -> Result<Option<SessionEnd>, CaptureError> {
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(event) = next.take() {
            match event {
                Ok(Some(event)) => self.event(event, repl).await?,
                Ok(None) => return Ok(Some(SessionEnd::ServerEnded)),
                Err(e) => return Err(CaptureError::from(e)),
            }
            handled += 1;
            // A Stream Commit's replay comes before any later event.
            if handled < READ_AHEAD
                && self.replay.is_none()
                && self.queues.buffered_bytes() < self.cfg.max_buffer_bytes
            {
                next = poll_once(repl.recv());
            }
        }
        Ok(None)
    }

    /// Waits for deliveries still running (they finish or are cancelled by a hard stop), so
    /// a new session never races an old POST on the same stream.
    async fn drain(&mut self) {
        self.deliveries.drain().await;
    }

    async fn event(
        &mut self,
        event: ReplicationEvent,
        repl: &ReplicationClient,
    ) -> Result<(), CaptureError> {
        crate::observe::capture().received(&event);
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => self.begin(final_lsn.into(), xid, commit_time_micros),
            ReplicationEvent::Commit { end_lsn, .. } => self.commit(end_lsn.into()),
            ReplicationEvent::XLogData {
                data, wal_start, ..
            } => self.xlog(&data, wal_start.into()).await?,
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                // A streamed transaction in progress counts as open: its position is
                // confirmed with its commit, like a non-streamed one's.
                let tx_open = self.tx.is_some() || !self.streamed.is_empty();
                if let Some(lsn) =
                    self.keepalive
                        .confirmable(tx_open, &mut self.ledger, wal_end.into())
                {
                    crate::observe::capture().acknowledged(lsn);
                    repl.update_applied_lsn(lsn.into());
                }
            }
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    /// Opens the transaction whose commit record is at `id` (a Begin, or a Stream Commit
    /// before its replay).
    fn begin(&mut self, id: Lsn, xid: u32, commit_time_micros: i64) {
        self.ledger.begin(id);
        self.tx = Some(OpenTx {
            id,
            meta: TxMeta {
                xid,
                commit_lsn: id,
                commit_time_micros,
            },
            next_index: 0,
            headers: None,
            tables: Vec::new(),
        });
    }

    /// Closes the open transaction (a Commit, or the end of a streamed one's replay).
    fn commit(&mut self, end_lsn: Lsn) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        tracing::debug!(commit_lsn = %tx.id, messages = tx.next_index, "transaction read");
        crate::observe::timeline::received(tx.id, tx.meta.xid);
        crate::observe::capture().committed(end_lsn, tx.meta.commit_time_micros, tx.next_index);
        if tx.next_index == 0 && self.keepalive.awaiting_probe() {
            // A transaction without messages (PostgreSQL before 15 sends one for every
            // commit, published or not) is a position like a keepalive's: confirmed only
            // once this session's probe came back.
            self.ledger.abandon_open();
        } else {
            self.ledger.commit(tx.id, end_lsn);
        }
        self.snap.committed(tx.id, tx.meta.xid, &tx.tables, end_lsn);
        self.queues.commit();
    }

    /// One XLogData payload: a change of the open stream block is held (see `streamed`);
    /// the stream markers move the held transactions; anything else is handled at once.
    async fn xlog(&mut self, data: &Bytes, at: Lsn) -> Result<(), CaptureError> {
        if self.streamed.in_block() && data.first() != Some(&b'E') {
            return Ok(self.streamed.append(data)?);
        }
        let msg = decode(data).map_err(|source| CaptureError::Decode {
            lsn: at.to_string(),
            source,
        })?;
        match msg {
            PgOutputMessage::StreamStart(start) => self.streamed.start(start)?,
            PgOutputMessage::StreamStop => self.streamed.stop()?,
            PgOutputMessage::StreamAbort(abort) => self.streamed.abort(abort)?,
            PgOutputMessage::StreamCommit(commit) => {
                let replay = self.streamed.commit(commit.xid)?;
                self.begin(
                    Lsn::from_u64(commit.commit_lsn),
                    commit.xid,
                    commit.commit_time,
                );
                self.replay = Some((replay, commit));
            }
            msg => self.message(msg).await?,
        }
        Ok(())
    }

    /// Replays up to [`READ_AHEAD`] messages of the committed streamed transaction, while
    /// held bytes stay under the buffer bound; commits it after its last message.
    async fn replay_some(&mut self) -> Result<(), CaptureError> {
        for _ in 0..READ_AHEAD {
            if self.queues.buffered_bytes() >= self.cfg.max_buffer_bytes {
                return Ok(());
            }
            let Some((replay, commit)) = self.replay.as_mut() else {
                return Ok(());
            };
            let at = Lsn::from_u64(commit.commit_lsn);
            match replay.next_message()? {
                Some(data) => {
                    let msg = decode(&data).map_err(|source| CaptureError::Decode {
                        lsn: at.to_string(),
                        source,
                    })?;
                    self.message(msg).await?;
                }
                None => {
                    let end_lsn = Lsn::from_u64(commit.end_lsn);
                    self.replay = None;
                    self.commit(end_lsn);
                }
            }
        }
        Ok(())
    }

    /// One decoded message of a transaction (non-streamed, or replayed).
    async fn message(&mut self, msg: PgOutputMessage) -> Result<(), CaptureError> {
        match msg {
            PgOutputMessage::Relation(rel) => {
                let oid = rel.oid;
                tracing::debug!(oid, table = %rel.name, columns = rel.columns.len(), "relation");
                let pk = source::primary_key(self.sql, oid).await?;
                let rel = Arc::new(rel);
                let signal = self.snap.is_signal_relation(&rel);
                let table = TableInfo::new(rel, pk);
                if !signal {
                    self.cfg.router.validate(&table)?;
                    let (source, whole) = (&self.cfg.source, &self.cfg.whole_rows);
                    whole.relation(self.sql, source, &table).await;
                    self.snap
                        .relation_seen(self.sql, &table.qualified_name())
                        .await?;
                }
                self.tables.insert(oid, Arc::new(table));
            }
            PgOutputMessage::Insert(ref i) if self.snap.is_signal(i.relation_oid) => {
                self.signal(i)?
            }
            PgOutputMessage::Update(ref u) if self.snap.is_signal(u.relation_oid) => {}
            PgOutputMessage::Delete(ref d) if self.snap.is_signal(d.relation_oid) => {}
            PgOutputMessage::Insert(ref i) => self.change(i.relation_oid, ChangeRef::Insert(i))?,
            PgOutputMessage::Update(ref u) => self.change(u.relation_oid, ChangeRef::Update(u))?,
            PgOutputMessage::Delete(ref d) => self.change(d.relation_oid, ChangeRef::Delete(d))?,
            PgOutputMessage::Truncate(ref t) => self.truncate(t).await?,
            other => tracing::debug!(kind = %other.kind(), "message ignored"),
        }
        Ok(())
    }

    /// The transaction a change belongs to. pgoutput v1 sends changes only between Begin and
    /// Commit; anything else means this session lost track of the stream, and resuming from
    /// the slot's confirmed position is the safe answer (never dropping the change).
    fn open_tx(&mut self) -> Result<&mut OpenTx, CaptureError> {
        self.tx.as_mut().ok_or(CaptureError::OutsideTransaction)
    }

    fn table(&self, oid: u32) -> Result<Arc<TableInfo>, CaptureError> {
        self.tables
            .get(&oid)
            .cloned()
            .ok_or_else(|| CaptureError::Decode {
                lsn: self
                    .tx
                    .as_ref()
                    .map(|t| t.id.to_string())
                    .unwrap_or_default(),
                source: crate::pgoutput::DecodeError::UnknownRelation { relation_oid: oid },
            })
    }

    fn change(&mut self, oid: u32, change: ChangeRef<'_>) -> Result<(), CaptureError> {
        let table = self.table(oid)?;
        self.open_tx()?.touch(oid);
        if !self.snap.watches(oid)
            && let Some(stream) = self.fixed_stream(&table)
        {
            return self.change_direct(&table, &change, stream);
        }
        let meta = self.open_tx()?.meta;
        let name = table.qualified();
        for row in message::build(&table, &change, &meta)? {
            self.cfg.whole_rows.change(&self.cfg.source, &table, &row);
            self.snap.change(oid, &row);
            let stream = self.cfg.router.stream_for(&table, &row)?;
            let index = self.open_tx()?.take_index()?;
            self.enqueue(name, &stream, &row, index)?;
            crate::observe::capture().change(&table.type_name, row.operation);
        }
        Ok(())
    }

    /// The stream every row of `table` goes to when its route names no column
    /// (`Router::fixed_stream`), rendered once per table instead of once per row. A Relation
    /// message replaces the table's `TableInfo`, so the kept stream is used only while
    /// `table` is the very one it was rendered for.
    fn fixed_stream(&mut self, table: &Arc<TableInfo>) -> Option<Result<Arc<str>, RouteError>> {
        if let Some((kept, stream)) = &self.fixed
            && Arc::ptr_eq(kept, table)
        {
            return Some(Ok(Arc::clone(stream)));
        }
        let stream: Arc<str> = match self.cfg.router.fixed_stream(table)? {
            Ok(stream) => Arc::from(stream),
            Err(e) => return Some(Err(e)),
        };
        self.fixed = Some((Arc::clone(table), Arc::clone(&stream)));
        Some(Ok(stream))
    }

    /// A change written straight to JSON (`message::encode`, the same bytes as the message
    /// trees of `change`): when its stream does not depend on the row and no incremental
    /// snapshot window watches its table, nothing needs the message as a tree, and building
    /// one per row was most of capture's CPU.
    fn change_direct(
        &mut self,
        table: &TableInfo,
        change: &ChangeRef<'_>,
        stream: Result<Arc<str>, RouteError>,
    ) -> Result<(), CaptureError> {
        let rows = message::encode(table, change, self.open_tx()?.headers())?;
        // After the message, as in `change`: a change that fails both ways reports the same.
        let stream = stream?;
        for row in rows {
            let whole_rows = &self.cfg.whole_rows;
            whole_rows.unchanged(&self.cfg.source, table, &row.unchanged_toast);
            let index = self.open_tx()?.take_index()?;
            self.enqueue_json(table.qualified(), &stream, Bytes::from(row.json), index)?;
            crate::observe::capture().change(&table.type_name, row.operation);
        }
        Ok(())
    }

    /// A signal row: never sent anywhere; our high watermark places its chunk's rows here.
    fn signal(&mut self, insert: &crate::pgoutput::Insert) -> Result<(), CaptureError> {
        let relation = Arc::clone(&self.table(insert.relation_oid)?.relation);
        match self.snap.signal(&relation, &insert.new_tuple) {
            Decoded::HighWatermark => {}
            Decoded::Probe(id) => {
                self.keepalive.decoded(id);
                return Ok(());
            }
            Decoded::Other => return Ok(()),
        }
        let tx = self.open_tx()?.meta;
        let (_oid, table, rows) = self
            .snap
            .chunk_messages(tx.commit_lsn, tx.commit_time_micros)?;
        crate::observe::snapshot().chunk_rows(rows.len());
        let name = table.qualified_name();
        for row in rows {
            let stream = self.cfg.router.stream_for(&table, &row)?;
            let index = self.open_tx()?.take_index()?;
            self.enqueue(&name, &stream, &row, index)?;
        }
        Ok(())
    }

    /// A TRUNCATE: one `reset` to every stream any of its tables has ever written to (this
    /// run, earlier runs, snapshots; `ds_sync.table_streams`) and to each table's fixed
    /// stream. Every reset of the TRUNCATE takes the same index, so the numbering of the
    /// rest of the transaction does not depend on how many streams are known.
    async fn truncate(&mut self, t: &Truncate) -> Result<(), CaptureError> {
        self.snap.truncated(&t.relation_oids);
        // A reset has no row: only templates without column placeholders can place it, so
        // streams are also taken from those the table has written to.
        let reset = RowMessage {
            operation: message::Operation::Delete,
            message: message::reset_message(),
            extra_columns: serde_json::Map::new(),
        };
        let mut targets: Vec<(String, Arc<str>)> = Vec::new();
        let mut seen: HashSet<Arc<str>> = HashSet::new();
        for oid in &t.relation_oids {
            if self.snap.is_signal(*oid) {
                continue;
            }
            let table = self.table(*oid)?;
            let name = table.qualified_name();
            let mut streams = self.book.streams_of(self.sql, &name).await?;
            if let Ok(stream) = self.cfg.router.stream_for(&table, &reset) {
                streams.push(Arc::from(stream.as_str()));
            }
            crate::observe::capture().truncated(&table.type_name);
            for stream in streams {
                if seen.insert(Arc::clone(&stream)) {
                    targets.push((name.clone(), stream));
                }
            }
        }
        if targets.is_empty() {
            return Ok(());
        }
        let index = self.open_tx()?.take_index()?;
        targets.sort_by(|a, b| a.1.cmp(&b.1));
        tracing::debug!(
            streams = targets.len(),
            "truncate: resetting every stream of the table"
        );
        for (table, stream) in targets {
            self.enqueue(&table, &stream, &reset, index)?;
        }
        Ok(())
    }

    fn enqueue(
        &mut self,
        table: &str,
        stream: &str,
        row: &RowMessage,
        index: u32,
    ) -> Result<(), CaptureError> {
        let json = serde_json::to_vec(&row.message)
            .map(Bytes::from)
            .map_err(CaptureError::Serialize)?;
        self.enqueue_json(table, stream, json, index)
    }

    fn enqueue_json(
        &mut self,
        table: &str,
        stream: &str,
        json: Bytes,
        index: u32,
    ) -> Result<(), CaptureError> {
        let tx = self.open_tx()?;
        let id = tx.id;
        let seq = Seq {
            commit_lsn: id,
            index,
        };
        self.ledger.add_pending(id, 1);
        self.book.note(Some(table), stream);
        self.queues.push(stream, OutMessage { json, tx: id, seq });
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// How long a graceful end of the replication stream may take.
const REPLICATION_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Events handled in one go before batches are dispatched again.
const READ_AHEAD: usize = 4096;

/// The future's output if it is ready now, without waiting. Only for cancel-safe futures
/// (a channel receive): a pending one is dropped and nothing is lost.
fn poll_once<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}
