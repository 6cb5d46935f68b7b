//! Stream → database ("ingest"): events that clients POST to DS streams land in
//! `public.session_events`, exactly once, across restarts.
//!
//! ```text
//!  ds_sync.subscriptions ──LISTEN/1 s──▶ supervisor ──spawns──▶ subscription (one per stream
//!  + ingest_instances      leases: owns a share    │             this instance owns)
//!                                                                 │ catch-up reads (GET) from
//!                                                                 │ the stored offset, then SSE;
//!                                                                 │ messages: decode, hold
//!                                                                 ▼ control / end of read: Commit
//!  session_events + dead_letters + stream_offsets ◀── one txn ── writer (one connection)
//!                                     ▲            replies after COMMIT; offset advances
//!                                     └── one txn per read ── lane: a large catch-up read,
//!                                                             copied while it arrives
//!  subscriptions.status / error / memory ◀── state reporter (≈4 writes/s)
//! ```
//!
//! **Commit rule.** Rows are written with binary COPY together with the stream's new offset
//! in one transaction: rows of SSE data events once their control event arrives, rows of a
//! catch-up read once its body is complete (its offset comes in its headers, so a large one
//! is copied while it arrives, see [`catch_up`]). Batches of many streams share one
//! transaction, each with its own offset. A restart reads the stored offsets and resumes
//! there: nothing is lost, nothing is stored twice. The offset upsert checks the previous
//! offset, so even two processes ingesting one stream cannot double a row.
//!
//! **Shared across instances**: several processes running ingest on one database each
//! follow about their share of the subscriptions, one owner per subscription, by leases
//! renewed with a heartbeat (see [`lease`]); a killed instance's streams move at once, a
//! hung one's after `--ingest-lease-ttl`.
//!
//! **Memory is bounded** by `--ingest-max-buffer-bytes`, per stream and in total (see
//! [`memory`]): at the bound a subscription stops reading its socket, and a data event that
//! cannot be held until its control event is read again by a catch-up read. A connection
//! silent for `--ingest-idle-timeout` is presumed dead and reopened from the committed
//! offset.
//!
//! **Bad input loses nothing.** A message that is not UTF-8, not JSON, over the size limit,
//! or refused by PostgreSQL, and data that cannot be split into messages, go to
//! `ds_sync.dead_letters` in the transaction that advances the offset past them; the other
//! messages are stored.
//!
//! Modules: [`decode`] (pure mapping and validation), [`ledger`] (one connection's
//! bookkeeping), [`copy`] (binary COPY and the statements around it), [`writer`] (the
//! transaction), [`subscription`] (one stream's SSE loop), [`catch_up`] (reads of what the
//! stream holds; `lane` writes the large ones), [`memory`] (the bound), [`supervisor`] (tasks
//! follow the table), [`lease`] (who follows which subscription), [`store`] (the table),
//! [`state`] (status reporting), [`guard`] (loop safety).

pub mod catch_up;
pub mod copy;
pub mod decode;
mod error;
pub mod guard;
mod lane;
pub mod lease;
pub mod ledger;
#[cfg(test)]
mod ledger_props;
pub mod memory;
pub mod state;
pub mod store;
pub mod subscription;
pub mod supervisor;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use error::IngestError;
pub use lease::DEFAULT_LEASE_TTL;
pub use memory::{DEFAULT_MAX_BUFFER_BYTES, MemoryLimits};
pub use writer::WriterOptions;

use crate::ds::{ClientOptions, DsAccess, DsClient, DsError};
use crate::pg::PgTarget;

/// Default largest message stored; larger ones become dead letters.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 << 20;
/// Default idle timeout: servers send keepalive comments (one every 15 s) and close SSE
/// connections about every 60 s, so a connection silent this long is dead.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest SSE event the reader buffers whole: control events, and a data event whose
/// `event:` line follows its data (others are streamed, whatever their size). A larger data
/// event is read again by catch-up.
const BUFFERED_EVENT_BYTES: usize = 1 << 20;

/// Everything ingest needs.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub target: PgTarget,
    pub ds: DsClient,
    /// Streams to subscribe at start (added to the stored subscriptions).
    pub streams: Vec<String>,
    /// Largest message stored; larger ones become dead letters.
    pub max_event_bytes: usize,
    /// Bound on everything ingest holds (see [`memory`]).
    pub max_buffer_bytes: usize,
    /// A connection without a byte for this long is reopened.
    pub idle_timeout: Duration,
    /// A subscription owned by an instance that stopped renewing its leases for this long
    /// moves to another instance (see [`lease`]).
    pub lease_ttl: Duration,
    pub writer: WriterOptions,
}

impl IngestConfig {
    /// A configuration with a DS client for `ds_url` and default limits.
    ///
    /// # Errors
    ///
    /// [`DsError::InvalidUrl`] for an unusable DS server URL.
    pub fn new(
        target: PgTarget,
        ds_url: &str,
        streams: Vec<String>,
        max_event_bytes: usize,
    ) -> Result<IngestConfig, DsError> {
        let ds = DsClient::new(
            ds_url,
            ClientOptions {
                max_sse_event_bytes: BUFFERED_EVENT_BYTES,
                ..ClientOptions::default()
            },
        )?;
        Ok(IngestConfig {
            target,
            ds,
            streams,
            max_event_bytes: max_event_bytes.max(1),
            max_buffer_bytes: DEFAULT_MAX_BUFFER_BYTES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            lease_ttl: DEFAULT_LEASE_TTL,
            writer: WriterOptions::default(),
        })
    }

    /// The same configuration with the DS server reached through `access` (TLS files and
    /// the headers every request carries).
    ///
    /// # Errors
    ///
    /// [`DsError::Settings`] when the TLS files of an `https://` server cannot be read.
    pub fn with_access(mut self, access: DsAccess) -> Result<IngestConfig, DsError> {
        self.ds = DsClient::new(
            self.ds.base_url(),
            ClientOptions {
                max_sse_event_bytes: BUFFERED_EVENT_BYTES,
                access,
                ..ClientOptions::default()
            },
        )?;
        Ok(self)
    }

    /// The memory bounds.
    ///
    /// # Errors
    ///
    /// [`IngestError::Config`] when the buffer bound cannot hold one message.
    pub fn limits(&self) -> Result<MemoryLimits, IngestError> {
        MemoryLimits::new(self.max_buffer_bytes, self.max_event_bytes)
            .map_err(|reason| IngestError::Config { reason })
    }
}

/// Runs ingest until `shutdown` (the transaction in progress is committed, then it stops)
/// or `hard_stop` (the transaction in progress is abandoned and rolled back).
///
/// # Errors
///
/// Setup failures (schema, invalid stream names) and writes PostgreSQL refuses for good.
pub async fn run(
    cfg: &IngestConfig,
    shutdown: &CancellationToken,
    hard_stop: &CancellationToken,
) -> Result<(), IngestError> {
    let limits = cfg.limits()?;
    let mut client = cfg.target.connect().await?;
    crate::schema::apply(&mut client).await?;
    store::add_missing(&client, &cfg.streams).await?;
    drop(client);
    let (commits, commit_rx) = writer::channel(cfg.writer);
    let (state, state_rx) = state::channel();
    let budget = memory::Budget::new(limits);
    let shared = Arc::new(subscription::Shared {
        ds: cfg.ds.clone(),
        target: cfg.target.clone(),
        writer: commits,
        state,
        max_event_bytes: cfg.max_event_bytes,
        idle_timeout: cfg.idle_timeout,
        budget: Arc::clone(&budget),
        lane: tokio::sync::Mutex::new(None),
    });
    let mut writer = tokio::spawn(writer::run(
        cfg.target.with_application_name("ds-sync/ingest-writer"),
        commit_rx,
        cfg.writer,
        hard_stop.clone(),
    ));
    let reporter = tokio::spawn(state::report(
        cfg.target.with_application_name("ds-sync/ingest-state"),
        state_rx,
        hard_stop.clone(),
    ));
    let stop = shutdown.child_token();
    let leases = lease::Leases::new(lease::Instance::this_process(), cfg.lease_ttl);
    let supervisor = supervisor::supervise(
        cfg.target.with_application_name("ds-sync/ingest-listen"),
        shared,
        leases,
        stop.clone(),
    );
    tokio::pin!(supervisor);
    tracing::info!(
        max_buffer_bytes = limits.total,
        stream_buffer_bytes = limits.per_stream,
        idle_timeout = ?cfg.idle_timeout,
        "ingest running"
    );
    crate::observe::ingest().running();
    let result = tokio::select! {
        () = &mut supervisor => (&mut writer).await,
        w = &mut writer => {
            stop.cancel();
            supervisor.await;
            w
        }
    };
    let _ = reporter.await;
    tracing::info!(
        peak_buffered_bytes = budget.peak(),
        max_buffer_bytes = limits.total,
        "ingest stopped"
    );
    match result {
        Ok(r) => r,
        Err(e) => Err(IngestError::Write {
            reason: format!("the writer task failed: {e}"),
        }),
    }
}
