//! Every metric family, registered once under the `ds_sync_` prefix, and the two text
//! encodings `/metrics` serves: the Prometheus text format 0.0.4 (the default) and
//! OpenMetrics (when the scraper asks for it in `Accept`).
//!
//! Names follow Prometheus conventions: counters end in `_total` (added by the encoder),
//! byte quantities in `_bytes`, durations in `_seconds`; WAL positions are byte positions
//! (`_lsn_bytes`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::capture::{CaptureMetrics, SnapshotMetrics};
use super::ingest::IngestMetrics;
use super::pollers::SlotMetrics;
use super::readiness::Readiness;

/// Buckets of message counts per POST.
pub const COUNT_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0,
];
/// Buckets of bytes per POST: 256 B to 16 MiB, ×4.
pub const BYTE_BUCKETS: [f64; 9] = [
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
];
/// Buckets of latencies: 1 ms to 60 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Which direction a reconnect belongs to.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    capture,
    ingest,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconnectLabels {
    pub direction: Direction,
    pub cause: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// The process's metrics, readiness state and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    pub capture: CaptureMetrics,
    pub snapshot: SnapshotMetrics,
    pub ingest: IngestMetrics,
    pub slot: SlotMetrics,
    pub readiness: Readiness,
    pub(super) ds_server_up: Gauge,
    registry: Registry,
}

/// Which text format to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The format a scraper asks for in its `Accept` header.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let reconnects = Family::<ReconnectLabels, Counter>::default();
        let m = Metrics {
            capture: CaptureMetrics::new(reconnects.clone()),
            snapshot: SnapshotMetrics::default(),
            ingest: IngestMetrics::new(reconnects.clone()),
            slot: SlotMetrics::default(),
            readiness: Readiness::default(),
            ds_server_up: Gauge::default(),
            registry: Registry::with_prefix("ds_sync"),
        };
        let mut registry = Registry::with_prefix("ds_sync");
        let info = Family::<VersionLabels, Gauge>::default();
        info.get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        registry.register("build_info", "ds-sync's version; always 1", info);
        registry.register(
            "ds_server_up",
            "1 when the DS server answered the last probe (GET /healthz every 5 s), 0 otherwise",
            m.ds_server_up.clone(),
        );
        registry.register(
            "reconnects",
            "Reconnects by direction and cause",
            reconnects,
        );
        register_capture(&mut registry, &m.capture);
        register_snapshot(&mut registry, &m.snapshot);
        m.slot.register(&mut registry);
        register_ingest(&mut registry, &m.ingest);
        Metrics { registry, ..m }
    }

    /// Every metric, encoded in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut out = String::new();
        let result = match format {
            Format::Text => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn register_capture(r: &mut Registry, c: &CaptureMetrics) {
    r.register(
        "capture_changes",
        "Row changes captured, by table and operation (truncate: resets sent)",
        c.changes.clone(),
    );
    r.register(
        "capture_transactions",
        "Transactions received from the slot",
        c.transactions.clone(),
    );
    r.register(
        "capture_posts",
        "POST attempts to the DS server by outcome: written, already_written (a replay the server refused by Stream-Seq), too_large (413), transient_failure (retried), failed (capture stops)",
        c.posts.clone(),
    );
    r.register(
        "capture_batch_messages",
        "Messages per POST the server wrote",
        c.batch_messages.clone(),
    );
    r.register(
        "capture_batch_bytes",
        "Body bytes per POST the server wrote",
        c.batch_bytes.clone(),
    );
    r.register(
        "capture_commit_to_ack_seconds",
        "Seconds from a transaction's commit (database clock) until the DS server acknowledged all its changes",
        c.commit_to_ack.clone(),
    );
    r.register(
        "capture_received_lsn_bytes",
        "WAL position of the last message received from the walsender",
        c.received_lsn.clone(),
    );
    r.register(
        "capture_acknowledged_lsn_bytes",
        "WAL position up to which the DS server holds every change (reported to the server as flushed)",
        c.acknowledged_lsn.clone(),
    );
    r.register(
        "capture_buffered_bytes",
        "Bytes of changes held until their POST completes",
        c.buffered_bytes.clone(),
    );
    r.register(
        "capture_buffer_limit_bytes",
        "--max-buffer-bytes: reading WAL pauses while this much is held",
        c.buffer_limit_bytes.clone(),
    );
    r.register(
        "slot_lost",
        "Times the server invalidated the slot (wal_status lost: max_slot_wal_keep_size exceeded), whether capture then stopped (--on-slot-lost error) or recreated it (recreate)",
        c.slot_lost.clone(),
    );
    r.register(
        "capture_standby",
        "1 while this process waits as a standby: another ds-sync holds the slot lock",
        c.standby.clone(),
    );
    r.register(
        "capture_stream_messages",
        "Messages the DS server holds, per capture stream (only with --metrics-stream-labels; streams past 10000 share stream=\"_other\")",
        c.stream_messages.clone(),
    );
}

fn register_snapshot(r: &mut Registry, s: &SnapshotMetrics) {
    r.register(
        "snapshot_rows",
        "Snapshot rows queued for delivery: kind=initial (with the slot) or incremental (while streaming)",
        s.rows.clone(),
    );
    r.register(
        "snapshot_running",
        "1 while the initial snapshot runs",
        s.running.clone(),
    );
    r.register(
        "snapshot_tables",
        "Tables in the current (or last) initial snapshot",
        s.tables.clone(),
    );
    r.register(
        "snapshot_tables_done",
        "Tables of that snapshot read to their end",
        s.tables_done.clone(),
    );
    r.register(
        "snapshot_estimated_rows",
        "The planner's row estimate of that snapshot's tables",
        s.estimated_rows.clone(),
    );
}

fn register_ingest(r: &mut Registry, i: &IngestMetrics) {
    r.register(
        "ingest_events",
        "SSE data events received, per stream",
        i.events.clone(),
    );
    r.register(
        "ingest_rows",
        "Rows committed into session_events, per stream",
        i.rows.clone(),
    );
    r.register(
        "ingest_dead_letters",
        "Messages committed into ds_sync.dead_letters, per stream",
        i.dead_letters.clone(),
    );
    r.register(
        "ingest_transactions",
        "Ingest transactions committed",
        i.transactions.clone(),
    );
    r.register(
        "ingest_transaction_seconds",
        "Seconds per committed ingest transaction (COPY, dead letters, offsets, COMMIT)",
        i.transaction_seconds.clone(),
    );
    r.register(
        "ingest_caught_up",
        "1 when the committed offset reached the tail HEAD read last, per stream",
        i.caught_up.clone(),
    );
    r.register(
        "ingest_lag_seconds",
        "Seconds ingest is behind the stream's tail (0 when caught up), per stream; resolution 10 s",
        i.lag_seconds.clone(),
    );
    r.register(
        "ingest_stream_status",
        "1 for each subscription's current status",
        i.status.clone(),
    );
    r.register(
        "ingest_owned_streams",
        "Subscriptions this instance owns (ingest is shared among the instances on one database)",
        i.owned.clone(),
    );
    r.register(
        "ingest_live_instances",
        "Ingest instances live on this database, as this one saw at its last lease tick",
        i.live_instances.clone(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions_in_both_formats() {
        let m = Metrics::new();
        m.capture.change("items", super::super::capture::Op::insert);
        let text = m.encode(Format::Text);
        assert!(
            text.contains("# TYPE ds_sync_capture_changes_total counter"),
            "{text}"
        );
        assert!(text.contains("ds_sync_capture_changes_total{table=\"items\",op=\"insert\"} 1"));
        assert!(text.contains("ds_sync_build_info{version="));
        assert!(!text.contains("# EOF"));
        let om = m.encode(Format::OpenMetrics);
        assert!(om.trim_end().ends_with("# EOF"), "{om}");
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text;version=1.0.0")),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Text);
    }
}
