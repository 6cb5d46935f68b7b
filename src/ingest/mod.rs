//! Stream → database ("ingest"): events that clients POST to DS streams land in
//! `public.session_events`, exactly once, across restarts.
//!
//! ```text
//!  ds_sync.subscriptions ──LISTEN/1 s──▶ supervisor ──spawns──▶ subscription (one per stream)
//!                                                                 │ SSE from stored offset
//!                                                                 │ data: decode, hold
//!                                                                 ▼ control: Commit
//!  session_events + dead_letters + stream_offsets ◀── one txn ── writer (one connection)
//!                                                  replies after COMMIT; offset advances
//!  subscriptions.status / error / up_to_date ◀── state reporter (≈4 writes/s)
//! ```
//!
//! **Commit rule.** Rows of data events are held until the next control event, then
//! written with binary COPY together with the stream's new offset in one transaction
//! (batches of many streams share one, each with its own offset). A restart reads the
//! stored offsets and resumes there: nothing is lost, nothing is stored twice. The offset
//! upsert checks the previous offset, so even two processes ingesting one stream cannot
//! double a row.
//!
//! **Bad input loses nothing.** Data that is not UTF-8, not JSON, not an array, over the
//! size limit, or refused by `jsonb` goes to `ds_sync.dead_letters` in the transaction that
//! advances the offset past it.
//!
//! Modules: [`decode`] (pure mapping and validation), [`writer`] (the transaction),
//! [`subscription`] (one stream's SSE loop), [`supervisor`] (tasks follow the table),
//! [`store`] (the table), [`state`] (status reporting), [`guard`] (loop safety).

pub mod decode;
mod error;
pub mod guard;
pub mod state;
pub mod store;
pub mod subscription;
pub mod supervisor;
pub mod writer;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use error::IngestError;
pub use writer::WriterOptions;

use crate::ds::{ClientOptions, DsAccess, DsClient, DsError};
use crate::pg::PgTarget;

/// Default largest message stored; larger ones become dead letters.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 << 20;
/// Smallest limit on one SSE data event: servers merge a backlog into one event (a million
/// small events make about 100 MB).
const MIN_SSE_EVENT_BYTES: usize = 256 << 20;

/// Everything ingest needs.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub target: PgTarget,
    /// The DS client; its SSE event limit is [`sse_event_limit`] of `max_event_bytes`.
    pub ds: DsClient,
    /// Streams to subscribe at start (added to the stored subscriptions).
    pub streams: Vec<String>,
    /// Largest message stored; larger ones become dead letters.
    pub max_event_bytes: usize,
    pub writer: WriterOptions,
}

impl IngestConfig {
    /// A configuration with a DS client for `ds_url` and default writer limits.
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
        let max_event_bytes = max_event_bytes.max(1);
        let ds = DsClient::new(
            ds_url,
            ClientOptions {
                max_sse_event_bytes: sse_event_limit(max_event_bytes),
                ..ClientOptions::default()
            },
        )?;
        Ok(IngestConfig {
            target,
            ds,
            streams,
            max_event_bytes,
            writer: WriterOptions::default(),
        })
    }
}

impl IngestConfig {
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
                max_sse_event_bytes: sse_event_limit(self.max_event_bytes),
                access,
                ..ClientOptions::default()
            },
        )?;
        Ok(self)
    }
}

/// The largest SSE data event read: four messages' worth, at least 256 MiB, since one event
/// may carry a whole backlog. A larger event stops its subscription (`failed`) without
/// moving the offset: it is valid data, and storing it as a dead letter would keep only a
/// preview of thousands of events.
#[must_use]
pub fn sse_event_limit(max_event_bytes: usize) -> usize {
    max_event_bytes.saturating_mul(4).max(MIN_SSE_EVENT_BYTES)
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
    let mut client = cfg.target.connect().await?;
    crate::schema::apply(&mut client).await?;
    store::add_missing(&client, &cfg.streams).await?;
    drop(client);
    let (commits, commit_rx) = writer::channel(cfg.writer);
    let (state, state_rx) = state::channel();
    let shared = Arc::new(subscription::Shared {
        ds: cfg.ds.clone(),
        writer: commits,
        state,
        max_event_bytes: cfg.max_event_bytes,
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
    let supervisor = supervisor::supervise(
        cfg.target.with_application_name("ds-sync/ingest-listen"),
        shared,
        stop.clone(),
    );
    tokio::pin!(supervisor);
    tracing::info!("ingest running");
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
    match result {
        Ok(r) => r,
        Err(e) => Err(IngestError::Write {
            reason: format!("the writer task failed: {e}"),
        }),
    }
}
