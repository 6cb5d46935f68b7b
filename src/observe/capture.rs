//! Capture and snapshot metrics, and the hooks the capture code calls.
//!
//! Positions are WAL byte positions (an LSN as a number): `received` is the last position
//! the walsender sent, `acknowledged` the position up to which the DS server holds every
//! change (what ds-sync reports to the server as flushed), and the slot poller adds the
//! slot's `confirmed_flush_lsn` as the server recorded it. Commit-to-acknowledged latency
//! runs from a transaction's commit time (the server's clock) to the moment the ledger
//! confirms it, so it covers decoding, batching, the POSTs and their retries.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use pgwire_replication::ReplicationEvent;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::ds::{AppendOutcome, DsError};
use crate::lsn::Lsn;

use super::readiness::CapturePhase;
use super::registry::{Direction, ReconnectLabels};

/// Most capture streams that get a series of their own with `--metrics-stream-labels`;
/// later streams share `stream="_other"`.
pub const MAX_STREAM_SERIES: usize = 10_000;
/// The label value of streams past [`MAX_STREAM_SERIES`].
pub const OTHER_STREAM: &str = "_other";
/// Transactions remembered for the latency histogram; past this (a backlog of many small
/// transactions) the oldest are dropped from the measurement, never from delivery.
const MAX_PENDING_COMMITS: usize = 1 << 20;

/// What happened to a row: the State Protocol `operation`, or a TRUNCATE.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Op {
    insert,
    update,
    delete,
    truncate,
}

impl From<crate::capture::message::Operation> for Op {
    fn from(op: crate::capture::message::Operation) -> Op {
        use crate::capture::message::Operation as O;
        match op {
            O::Insert => Op::insert,
            O::Update => Op::update,
            O::Delete => Op::delete,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    pub table: String,
    pub op: Op,
}

/// How one POST attempt ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// The server appended the batch.
    written,
    /// The server already held it (a replay after a restart, refused by its `Stream-Seq`).
    already_written,
    /// 413: the batch is split, or a single change stops capture.
    too_large,
    /// 5xx, 429, timeout, refused connection, 404 before the stream is created: retried.
    transient_failure,
    /// A refusal retrying cannot fix: capture stops.
    failed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

/// The outcome of one POST attempt. Pure.
pub fn outcome(result: &Result<AppendOutcome, DsError>) -> Outcome {
    match result {
        Ok(AppendOutcome::Written { .. }) => Outcome::written,
        Ok(AppendOutcome::AlreadyWritten) => Outcome::already_written,
        Err(DsError::TooLarge { .. }) => Outcome::too_large,
        Err(DsError::NotFound { .. }) => Outcome::transient_failure,
        Err(e) if e.is_transient() => Outcome::transient_failure,
        Err(_) => Outcome::failed,
    }
}

/// The WAL position an event carries, if any. Pure.
pub fn event_position(event: &ReplicationEvent) -> Option<Lsn> {
    let lsn = match event {
        ReplicationEvent::KeepAlive { wal_end, .. } => *wal_end,
        ReplicationEvent::Begin { final_lsn, .. } => *final_lsn,
        ReplicationEvent::XLogData {
            wal_start, wal_end, ..
        } => (*wal_start).max(*wal_end),
        ReplicationEvent::Commit { end_lsn, .. } => *end_lsn,
        ReplicationEvent::Message { lsn, .. } => *lsn,
        ReplicationEvent::StoppedAt { reached } => *reached,
    };
    Some(Lsn::from(lsn)).filter(|l| *l > Lsn::ZERO)
}

/// Seconds from a commit time (microseconds since 2000-01-01) to `now`; never negative
/// (the database server's clock may run ahead of this host's). Pure.
pub fn commit_age_seconds(commit_time_micros: i64, now: SystemTime) -> f64 {
    let age = crate::capture::message::pg_micros_at(now) - commit_time_micros;
    (age.max(0) as f64) / 1e6
}

/// Transactions committed but not yet acknowledged, oldest first, for the latency
/// histogram. Pure.
#[derive(Debug, Default)]
pub struct PendingCommits {
    queue: VecDeque<(Lsn, i64)>,
}

impl PendingCommits {
    /// Remembers a transaction that ends at `end_lsn` and committed at `commit_time_micros`.
    pub fn push(&mut self, end_lsn: Lsn, commit_time_micros: i64) {
        if self.queue.len() >= MAX_PENDING_COMMITS {
            self.queue.pop_front();
        }
        self.queue.push_back((end_lsn, commit_time_micros));
    }

    /// The commit times of the transactions that end at or before `acknowledged`.
    pub fn acknowledged(&mut self, acknowledged: Lsn) -> Vec<i64> {
        let mut done = Vec::new();
        while let Some(&(end, time)) = self.queue.front() {
            if end > acknowledged {
                break;
            }
            done.push(time);
            self.queue.pop_front();
        }
        done
    }

    /// A new replication session replays what was not acknowledged: forget it.
    pub fn clear(&mut self) {
        self.queue.clear();
    }
}

/// Capture's metrics. See the README's "Metrics and health" for what each one means.
#[derive(Debug)]
pub struct CaptureMetrics {
    pub(super) changes: Family<ChangeLabels, Counter>,
    pub(super) transactions: Counter,
    pub(super) posts: Family<OutcomeLabels, Counter>,
    pub(super) batch_messages: Histogram,
    pub(super) batch_bytes: Histogram,
    pub(super) commit_to_ack: Histogram,
    pub(super) received_lsn: Gauge,
    pub(super) acknowledged_lsn: Gauge,
    pub(super) buffered_bytes: Gauge,
    pub(super) buffer_limit_bytes: Gauge,
    pub(super) stream_messages: Family<StreamLabels, Counter>,
    pub(super) reconnects: Family<ReconnectLabels, Counter>,
    pub(super) slot_lost: Counter,
    /// 1 while this process waits for the slot lock as a standby.
    pub(super) standby: Gauge,
    stream_labels: AtomicBool,
    labelled_streams: Mutex<HashSet<String>>,
    pending: Mutex<PendingCommits>,
}

impl CaptureMetrics {
    pub(super) fn new(reconnects: Family<ReconnectLabels, Counter>) -> CaptureMetrics {
        CaptureMetrics {
            changes: Family::default(),
            transactions: Counter::default(),
            posts: Family::default(),
            batch_messages: Histogram::new(super::registry::COUNT_BUCKETS),
            batch_bytes: Histogram::new(super::registry::BYTE_BUCKETS),
            commit_to_ack: Histogram::new(super::registry::LATENCY_BUCKETS),
            received_lsn: Gauge::default(),
            acknowledged_lsn: Gauge::default(),
            buffered_bytes: Gauge::default(),
            buffer_limit_bytes: Gauge::default(),
            stream_messages: Family::default(),
            reconnects,
            slot_lost: Counter::default(),
            standby: Gauge::default(),
            stream_labels: AtomicBool::new(false),
            labelled_streams: Mutex::new(HashSet::new()),
            pending: Mutex::new(PendingCommits::default()),
        }
    }

    /// Capture is configured: the buffer bound, and whether per-stream series are wanted.
    pub fn configured(&self, max_buffer_bytes: usize, stream_labels: bool) {
        self.buffer_limit_bytes
            .set(saturating_i64(max_buffer_bytes as u64));
        self.stream_labels.store(stream_labels, Ordering::Relaxed);
    }

    /// A replication event arrived.
    pub fn received(&self, event: &ReplicationEvent) {
        if let Some(lsn) = event_position(event) {
            self.received_lsn.set(lsn.as_i64_saturating());
        }
    }

    /// A transaction's Commit arrived; `messages` of its changes were routed to streams.
    pub fn committed(&self, end_lsn: Lsn, commit_time_micros: i64, messages: u32) {
        self.transactions.inc();
        if messages > 0 {
            lock(&self.pending).push(end_lsn, commit_time_micros);
        }
    }

    /// A row change was routed (one per message: an UPDATE of a key counts as a delete and
    /// an insert, as it is sent).
    pub fn change(&self, table: &str, op: impl Into<Op>) {
        let labels = ChangeLabels {
            table: table.to_owned(),
            op: op.into(),
        };
        self.changes.get_or_create(&labels).inc();
    }

    /// A TRUNCATE of `table` was sent as a reset.
    pub fn truncated(&self, table: &str) {
        self.change(table, Op::truncate);
    }

    /// The DS server holds every change up to `lsn`; the slot is told so.
    pub fn acknowledged(&self, lsn: Lsn) {
        self.acknowledged_lsn.set(lsn.as_i64_saturating());
        let done = lock(&self.pending).acknowledged(lsn);
        let now = SystemTime::now();
        for time in done {
            self.commit_to_ack.observe(commit_age_seconds(time, now));
        }
    }

    /// Bytes of changes held (sent or not) until their POST completes.
    pub fn buffered(&self, bytes: usize) {
        self.buffered_bytes.set(saturating_i64(bytes as u64));
    }

    /// One POST attempt of `messages` messages (`bytes` of body) to `stream` ended.
    pub fn post(
        &self,
        stream: &str,
        result: &Result<AppendOutcome, DsError>,
        messages: usize,
        bytes: usize,
    ) {
        let outcome = outcome(result);
        self.posts.get_or_create(&OutcomeLabels { outcome }).inc();
        if outcome == Outcome::written {
            self.batch_messages.observe(messages as f64);
            self.batch_bytes.observe(bytes as f64);
        }
        let held = matches!(outcome, Outcome::written | Outcome::already_written);
        if held && self.stream_labels.load(Ordering::Relaxed) {
            let stream = self.stream_label(stream);
            self.stream_messages
                .get_or_create(&StreamLabels { stream })
                .inc_by(messages as u64);
        }
    }

    fn stream_label(&self, stream: &str) -> String {
        let mut seen = lock(&self.labelled_streams);
        if seen.contains(stream) {
            return stream.to_owned();
        }
        if seen.len() >= MAX_STREAM_SERIES {
            return OTHER_STREAM.to_owned();
        }
        if seen.len() + 1 == MAX_STREAM_SERIES {
            tracing::warn!(
                limit = MAX_STREAM_SERIES,
                "capture streams past this many share the metrics label stream=\"_other\""
            );
        }
        seen.insert(stream.to_owned());
        stream.to_owned()
    }

    /// A replication session started streaming: this process holds the slot.
    pub fn session_started(&self) {
        lock(&self.pending).clear();
        super::readiness().capture(CapturePhase::Streaming, None);
    }

    /// The replication session ended; capture reconnects (or stops).
    pub fn session_ended(&self) {
        super::readiness().capture(CapturePhase::Reconnecting, None);
    }

    /// Capture is interrupted by `error` and resumes after a backoff.
    pub fn reconnect(&self, error: &crate::capture::CaptureError) {
        let cause = reconnect_cause(error);
        self.count_reconnect(cause);
        super::readiness().capture(CapturePhase::Reconnecting, Some(error.to_string()));
    }

    /// The server ended the replication stream; capture resumes at once.
    pub fn server_ended(&self) {
        self.count_reconnect("server_ended");
        super::readiness().capture(
            CapturePhase::Reconnecting,
            Some("the server ended the replication stream".into()),
        );
    }

    /// The server invalidated the slot; `policy` says whether capture recreates it (not
    /// ready until it streams again) or stops.
    pub fn slot_lost(&self, slot: &str, policy: crate::capture::slot_lost::OnSlotLost) {
        self.slot_lost.inc();
        super::readiness().slot_lost(slot, policy.as_str());
    }

    /// Capture waits as a standby: another process holds the slot lock (`holder` says who).
    /// Ready: a standby does its job (see `readiness`).
    pub fn standby(&self, slot: &str, holder: &str) {
        self.standby.set(1);
        let reason = format!(
            "another ds-sync holds the lock of slot '{slot}' ({holder}); this one takes over when that session ends"
        );
        super::readiness().capture(CapturePhase::Standby, Some(reason));
    }

    /// This process took the slot lock after waiting as a standby; it starts capturing.
    pub fn took_over(&self) {
        self.standby.set(0);
        super::readiness().capture(CapturePhase::Starting, None);
    }

    fn count_reconnect(&self, cause: &'static str) {
        self.reconnects
            .get_or_create(&ReconnectLabels {
                direction: Direction::capture,
                cause,
            })
            .inc();
    }
}

/// The `cause` label of a capture reconnect. Pure.
pub fn reconnect_cause(error: &crate::capture::CaptureError) -> &'static str {
    use crate::capture::CaptureError as E;
    match error {
        E::Replication(_) | E::OutsideTransaction => "replication_connection",
        E::Pg(crate::pg::PgError::Connect { .. }) => "postgres_unreachable",
        E::Pg(_) => "postgres_error",
        E::SlotBusy { .. } => "slot_busy",
        E::LockLost { .. } => "slot_lock_lost",
        E::Ds { .. } => "ds_server",
        _ => "other",
    }
}

/// Snapshot progress: the initial snapshot's tables and rows, and rows sent by snapshots
/// taken while streaming.
#[derive(Debug, Default)]
pub struct SnapshotMetrics {
    pub(super) rows: Family<KindLabels, Counter>,
    pub(super) running: Gauge,
    pub(super) tables: Gauge,
    pub(super) tables_done: Gauge,
    pub(super) estimated_rows: Gauge,
}

/// Which snapshot sent a row.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Kind {
    /// The snapshot taken with the slot (`--snapshot initial|always`).
    initial,
    /// `ds-sync snapshot --table`, or a table added to the publication later.
    incremental,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: Kind,
}

impl SnapshotMetrics {
    /// A snapshot of `tables` tables (about `estimated_rows` rows) started.
    pub fn started(&self, tables: usize, estimated_rows: u64) {
        self.running.set(1);
        self.tables.set(saturating_i64(tables as u64));
        self.tables_done.set(0);
        self.estimated_rows.set(saturating_i64(estimated_rows));
        super::readiness().capture_snapshot();
    }

    /// `n` rows of the snapshot were queued for delivery.
    pub fn rows(&self, n: u64) {
        self.rows
            .get_or_create(&KindLabels {
                kind: Kind::initial,
            })
            .inc_by(n);
    }

    /// One table was read to its end.
    pub fn table_done(&self) {
        self.tables_done.inc();
    }

    /// The snapshot ended (every row acknowledged, or stopped).
    pub fn finished(&self) {
        self.running.set(0);
    }

    /// A chunk of a snapshot taken while streaming queued `n` rows.
    pub fn chunk_rows(&self, n: usize) {
        self.rows
            .get_or_create(&KindLabels {
                kind: Kind::incremental,
            })
            .inc_by(n as u64);
    }
}

pub(super) fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latency_is_measured_from_commit_to_acknowledgement_in_order() {
        let mut p = PendingCommits::default();
        let at = Lsn::from_u64;
        p.push(at(100), 1);
        p.push(at(200), 2);
        p.push(at(300), 3);
        assert_eq!(p.acknowledged(at(99)), Vec::<i64>::new());
        assert_eq!(p.acknowledged(at(250)), vec![1, 2]);
        p.clear();
        assert!(p.acknowledged(at(u64::MAX)).is_empty());
    }

    #[test]
    fn commit_age_counts_from_the_postgres_epoch_and_is_never_negative() {
        let commit = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800 + 10);
        let now = commit + Duration::from_millis(250);
        assert!((commit_age_seconds(10_000_000, now) - 0.25).abs() < 1e-9);
        assert_eq!(
            commit_age_seconds(10_000_000, commit - Duration::from_secs(5)),
            0.0
        );
    }

    #[test]
    fn stream_labels_are_opt_in_and_bounded() {
        let m = CaptureMetrics::new(Family::default());
        let written = Ok(AppendOutcome::Written { next_offset: None });
        let labels = |s: &str| StreamLabels { stream: s.into() };
        m.post("s/1", &written, 3, 10);
        assert!(
            m.stream_messages.get(&labels("s/1")).is_none(),
            "off by default"
        );
        m.configured(1 << 20, true);
        m.post("s/1", &written, 3, 10);
        m.post("s/1", &Ok(AppendOutcome::AlreadyWritten), 2, 10);
        assert_eq!(m.stream_messages.get_or_create(&labels("s/1")).get(), 5);
        for i in 0..MAX_STREAM_SERIES + 5 {
            m.post(&format!("k/{i}"), &written, 1, 10);
        }
        assert_eq!(lock(&m.labelled_streams).len(), MAX_STREAM_SERIES);
        let last = format!("k/{}", MAX_STREAM_SERIES + 4);
        assert!(m.stream_messages.get(&labels(&last)).is_none());
        assert_eq!(
            m.stream_messages.get_or_create(&labels(OTHER_STREAM)).get(),
            6
        );
        assert_eq!(m.buffer_limit_bytes.get(), 1 << 20);
    }

    #[test]
    fn post_outcomes_follow_the_client_errors() {
        let written = Ok(AppendOutcome::Written { next_offset: None });
        assert_eq!(outcome(&written), Outcome::written);
        assert_eq!(
            outcome(&Ok(AppendOutcome::AlreadyWritten)),
            Outcome::already_written
        );
        let too_large = Err(DsError::TooLarge {
            stream: "s".into(),
            bytes: 1,
            reply: None,
        });
        assert_eq!(outcome(&too_large), Outcome::too_large);
        let closed = Err(DsError::Closed {
            stream: "s".into(),
            reply: None,
        });
        assert_eq!(outcome(&closed), Outcome::failed);
    }
}
