//! Observability: Prometheus metrics, liveness and readiness, served on `--listen ADDR`.
//!
//! ```text
//!  capture / snapshot / ingest ──hooks (one line each)──▶ Metrics (process-wide, atomics)
//!                                                            ▲         │
//!  pollers on timers: slot (own SQL connection, 5 s) ────────┤         ▼
//!                     DS server probe (GET /healthz, 5 s) ───┤   GET /metrics (text 0.0.4
//!                     ingest tails (HEAD, 10 s) ─────────────┘   or OpenMetrics), /livez,
//!                                                                /readyz (JSON), `ds-sync health`
//! ```
//!
//! This module owns every metric and every piece of readiness state. The code that does the
//! work only calls small typed functions ([`capture`], [`snapshot`], [`ingest`]) at the
//! points where something happens; each call is cheap (atomics, or a short lock on a map
//! keyed by a bounded label set), so the hooks stay in place whether or not `--listen` is
//! given, and nothing is measured twice.
//!
//! The registry is process-wide: one ds-sync process runs one capture and one ingest.
//!
//! **Label cardinality.** Labels are bounded by configuration, never by data: `table` (the
//! published tables), `op`, `outcome` and `cause` (fixed sets), `slot` (one), and `stream`
//! only for ingest subscriptions, which an operator names one by one. Capture streams can be
//! per key (thousands), so capture metrics carry no stream label unless
//! `--metrics-stream-labels` asks for one family of them, and even then at most
//! [`capture::MAX_STREAM_SERIES`] streams get their own series.
//!
//! * [`registry`]: the metric families and their text encodings.
//! * [`capture`], [`ingest`]: the hooks and the state behind them.
//! * [`readiness`]: what `/readyz` answers, as a pure function of recorded state.
//! * [`pollers`]: the slot, DS server and ingest tail timers.
//! * [`server`]: the HTTP endpoints; [`health`]: the `ds-sync health` client.
//! * [`timeline`]: per-transaction stage times for the latency bench (bench builds only).

pub mod capture;
pub mod health;
pub mod ingest;
pub mod pollers;
pub mod readiness;
pub mod registry;
pub mod server;
pub mod timeline;

use std::sync::OnceLock;

pub use capture::{CaptureMetrics, SnapshotMetrics};
pub use ingest::IngestMetrics;
pub use readiness::Readiness;
pub use registry::Metrics;
pub use server::{ObserveConfig, ObserveError, Observer};

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics and readiness state.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// Capture hooks: `crate::observe::capture().change(..)`.
pub fn capture() -> &'static CaptureMetrics {
    &metrics().capture
}

/// Snapshot hooks (initial and incremental).
pub fn snapshot() -> &'static SnapshotMetrics {
    &metrics().snapshot
}

/// Ingest hooks.
pub fn ingest() -> &'static IngestMetrics {
    &metrics().ingest
}

/// Readiness state, for the CLI that starts and stops directions.
pub fn readiness() -> &'static Readiness {
    &metrics().readiness
}
