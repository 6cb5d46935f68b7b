//! `ds-sync bench`: the load-test runner.
//!
//! Each scenario starts its own throwaway Postgres and DS server (unless URLs are given),
//! runs ds-sync as a child process against them, and measures it next to a ceiling or a
//! baseline taken in the same run on the same servers, so that the figure that matters is a
//! ratio and a noisy machine moves both sides alike.
//!
//! * [`stack`]: the servers, and ds-sync as a child process (RSS, CPU).
//! * [`capture`]: `capture-drain`, `memory` (ceiling: `pg_recvlogical`), `capture-latency`.
//! * [`ingest`]: `ingest-drain` (ceiling: `psql \copy ... FROM` in binary format),
//!   `ingest-latency` and `ingest-outage` (PostgreSQL stopped while events arrive).
//! * [`snapshot`]: the initial snapshot (baseline: `psql \copy` of the same table).
//! * [`failover`]: a standby taking over from a killed `run` under writes.
//! * [`chaos`]: both directions under load through SIGKILLs, server restarts and network
//!   faults ([`fault_proxy`]), then every change and event checked exactly once.
//! * [`ingest_share`]: many subscriptions shared by several ingest instances, one killed.
//! * [`naive`]: the sync-layer document's example design on the same load.
//! * [`report`]: table, JSON, Markdown and SVG charts.

// Everything here is the runner's own; only `run`, its options and its report leave it.
#![warn(unreachable_pub)]

mod capture;
mod capture_latency;
mod chaos;
mod failover;
pub mod fault_proxy;
mod ingest;
mod ingest_share;
mod latency;
mod naive;
pub mod report;
mod snapshot;
mod stack;
pub mod table_form;
mod tail;
mod timeline;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use report::Report;

/// A bench scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// A backlog (one large transaction, then many one-row transactions) drained from the
    /// slot into DS; ceiling: pg_recvlogical over the same WAL
    CaptureDrain,
    /// A steady write rate; commit to visible to an SSE reader (p50/p95/p99/max)
    CaptureLatency,
    /// A stream's backlog of events into session_events; ceiling: psql \copy FROM of the
    /// same rows in binary format
    IngestDrain,
    /// A steady POST rate; POST to row committed in Postgres (p50/p95/p99/max)
    IngestLatency,
    /// PostgreSQL down for --duration s while --rows events arrive: peak RSS, catch-up
    /// time, every event exactly once
    IngestOutage,
    /// Peak RSS of ds-sync while a large transaction passes
    Memory,
    /// The sync-layer document's example design (one unbatched POST per change, no
    /// sequence numbers) on the capture-drain load, next to ds-sync
    Naive,
    /// Existing rows of one table through the initial snapshot into DS; baseline: psql
    /// \copy of the same table to /dev/null
    Snapshot,
    /// Two `run` on one slot under --rate one-row transactions per second; the active one
    /// SIGKILLed --runs times: time until the standby streams and until a new row arrives,
    /// every key exactly once and in order
    Failover,
    /// Capture and ingest under load while ds-sync is SIGKILLed --kills times, PostgreSQL
    /// restarted with -m immediate, the DS server restarted and connections cut and frozen,
    /// for --duration s (seeded by --seed); then every change and event checked exactly once
    Chaos,
    /// --streams subscriptions shared by --instances `run --no-capture`: connections per
    /// instance, events/s under --writers POSTing for --duration s, time until a SIGKILLed
    /// instance's streams are owned and connected again, every event exactly once
    IngestShare,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::CaptureDrain => "capture-drain",
            Scenario::CaptureLatency => "capture-latency",
            Scenario::IngestDrain => "ingest-drain",
            Scenario::IngestLatency => "ingest-latency",
            Scenario::IngestOutage => "ingest-outage",
            Scenario::Memory => "memory",
            Scenario::Naive => "naive",
            Scenario::Snapshot => "snapshot",
            Scenario::Failover => "failover",
            Scenario::Chaos => "chaos",
            Scenario::IngestShare => "ingest-share",
        }
    }
}

/// What to run, how big, where to write.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub scenario: Scenario,
    /// Rows of the large transaction (drain, memory, naive).
    pub rows: u64,
    /// One-row transactions (drain).
    pub txns: u64,
    /// Transactions per second (latency scenarios).
    pub rate: u32,
    /// `capture-latency`'s second, higher rate (0: none).
    pub peak_rate: u32,
    /// How long the steady load runs (latency scenarios).
    pub duration: Duration,
    /// Results go to `<out>/<scenario>-<timestamp>/`.
    pub out: PathBuf,
    /// Use this Postgres instead of a throwaway cluster.
    pub postgres: Option<crate::pg::PgTarget>,
    /// Use this DS server instead of an in-process one.
    pub ds_url: Option<String>,
    /// TLS files and headers for the given DS server (the runner's own requests and the
    /// ds-sync child's).
    pub ds_access: crate::ds::DsAccess,
    /// The ds-sync executable to measure.
    pub exe: PathBuf,
    /// Show progress bars (a terminal) or log lines.
    pub progress: bool,
    /// The command line, for the report.
    pub command: String,
    /// Extra arguments for `ds-sync run` (e.g. batch limits being tuned).
    pub ds_sync_args: Vec<String>,
    /// Writer connections of the latency scenarios.
    pub writers: usize,
    /// Drains of the memory scenario (each peak reported, the worst checked).
    pub runs: u32,
    /// Forms of `session_events` `ingest-drain` measures, one drain each, in this order.
    pub table_forms: Vec<table_form::TableForm>,
    /// SIGKILLs of the chaos run (its other faults are in proportion).
    pub kills: u32,
    /// Seed of the chaos run's fault schedule and load.
    pub seed: u64,
    /// Subscriptions `ingest-share` shares out.
    pub streams: usize,
    /// Ingest instances `ingest-share` runs.
    pub instances: usize,
}

/// Errors of the runner.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench setup failed: {0}")]
    Setup(String),
    #[error(transparent)]
    Embedded(#[from] crate::embedded::EmbeddedError),
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error(transparent)]
    Ds(#[from] crate::ds::DsError),
    #[error("ds-sync exited during the run ({status}); its log ends with:\n{log}")]
    DsSyncExited { status: String, log: String },
    #[error("{what} did not finish within {secs} s: {detail}")]
    Timeout {
        what: String,
        secs: u64,
        detail: String,
    },
    #[error("the ceiling tool failed: {0}")]
    Ceiling(String),
    #[error("cannot write the report: {0}")]
    Report(String),
    #[error("{0}")]
    ChecksFailed(String),
}

impl BenchError {
    fn io(path: &Path, e: &std::io::Error) -> BenchError {
        BenchError::Report(format!("{}: {e}", path.display()))
    }

    fn sql(what: &str, e: &tokio_postgres::Error) -> BenchError {
        BenchError::Pg(crate::pg::PgError::query(what.to_owned(), e))
    }
}

/// Runs one scenario and writes its report; returns it and the directory it went to.
pub async fn run(opts: &BenchOptions) -> Result<(Report, PathBuf), BenchError> {
    let started = Instant::now();
    let stack = stack::Stack::start(
        opts.postgres.clone(),
        opts.ds_url.clone(),
        opts.ds_access.clone(),
    )
    .await?;
    let dir = opts.out.join(format!(
        "{}-{}",
        opts.scenario.name(),
        chrono::Local::now().format("%Y%m%d-%H%M%S")
    ));
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(&dir, &e))?;
    let mut report = new_report(opts, &stack).await?;
    report.notes.push(format!(
        "Servers: {} PostgreSQL, {} DS server.",
        if stack.embedded_pg() {
            "a throwaway local"
        } else {
            "the given"
        },
        if stack.embedded_ds() {
            "the in-process durable-streams-server"
        } else {
            "the given"
        },
    ));
    let ctx = capture::Ctx {
        opts,
        stack: &stack,
        dir: &dir,
    };
    match opts.scenario {
        Scenario::CaptureDrain => capture::drain(&ctx, &mut report).await?,
        Scenario::CaptureLatency => capture_latency::latency(&ctx, &mut report).await?,
        Scenario::IngestDrain => ingest::drain(&ctx, &mut report).await?,
        Scenario::IngestLatency => ingest::latency(&ctx, &mut report).await?,
        Scenario::IngestOutage => ingest::outage(&ctx, &mut report).await?,
        Scenario::Memory => capture::memory(&ctx, &mut report).await?,
        Scenario::Naive => naive::run(&ctx, &mut report).await?,
        Scenario::Snapshot => snapshot::run(&ctx, &mut report).await?,
        Scenario::Failover => failover::run(&ctx, &mut report).await?,
        Scenario::Chaos => chaos::run(&ctx, &mut report).await?,
        Scenario::IngestShare => ingest_share::run(&ctx, &mut report).await?,
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    report.write(&dir)?;
    Ok((report, dir))
}

async fn new_report(opts: &BenchOptions, stack: &stack::Stack) -> Result<Report, BenchError> {
    let sql = stack.sql().await?;
    let postgres: String = sql
        .query_one("SELECT version()", &[])
        .await
        .map_err(|e| BenchError::sql("reading the server version", &e))?
        .get(0);
    let postgres = postgres
        .split(" on ")
        .next()
        .unwrap_or(&postgres)
        .to_owned();
    Ok(Report {
        scenario: opts.scenario.name().into(),
        command: opts.command.clone(),
        started_at: chrono::Local::now().to_rfc3339(),
        duration_secs: 0.0,
        machine: machine(postgres),
        figures: Vec::new(),
        checks: Vec::new(),
        series: Vec::new(),
        latencies: Vec::new(),
        notes: Vec::new(),
    })
}

fn machine(postgres: String) -> report::Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".into(), |(_, v)| v.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    report::Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gb: mem_kb / 1024.0 / 1024.0,
        kernel,
        postgres,
        build: if cfg!(debug_assertions) {
            "debug (figures are not representative; use --release)".into()
        } else {
            "release".into()
        },
    }
}
