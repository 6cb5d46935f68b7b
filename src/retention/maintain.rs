//! What `run` does beside capture and ingest: creates partitions of a partitioned
//! `session_events` ahead of time, and with `--retention` / `--dead-letter-retention` prunes
//! at every pass. A pass that fails (PostgreSQL away, a lock held too long) is logged and
//! done again at the next one: retention never stops the service.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::RetentionError;
use super::partitions::{self, Form};
use super::prune::{self, DEFAULT_BATCH_ROWS, PruneRequest};
use crate::pg::PgTarget;

/// What `run` keeps up.
#[derive(Debug, Clone)]
pub struct Maintenance {
    pub target: PgTarget,
    /// `--retention`: prune events older than this.
    pub events: Option<Duration>,
    /// `--dead-letter-retention`: prune dead letters older than this.
    pub dead_letters: Option<Duration>,
    /// Time between passes.
    pub every: Duration,
}

impl Maintenance {
    /// Default of `--retention-interval`.
    pub const DEFAULT_EVERY: Duration = Duration::from_secs(600);
}

/// Runs a pass now and then every `every`, until `shutdown`.
pub async fn run(m: &Maintenance, shutdown: &CancellationToken) {
    // Ingest applies the schema as it starts, at the same moment as the first pass: the
    // first pass applies it too (idempotent, under the schema lock) rather than read
    // tables that may not exist yet. Later passes find it in place.
    let mut schema_applied = false;
    loop {
        if let Err(e) = pass(m, &mut schema_applied).await {
            tracing::warn!(error = %e, retry_in_s = m.every.as_secs(), "retention pass failed; trying again at the next pass");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(m.every) => {}
        }
    }
}

/// One pass: partitions ahead, then pruning.
async fn pass(m: &Maintenance, schema_applied: &mut bool) -> Result<(), RetentionError> {
    let mut client = m
        .target
        .with_application_name("ds-sync/retention")
        .connect()
        .await?;
    if !*schema_applied {
        crate::schema::apply(&mut client).await?;
        *schema_applied = true;
    }
    // A partition that cannot be made (the default partition already holds rows of its
    // range, a lock held too long) must not stop pruning: rows then go to the default
    // partition, and prune still empties it.
    if let Form::Partitioned(Some(interval)) = partitions::form(&client).await?
        && let Err(e) = partitions::ensure(&mut client, interval).await
    {
        let hint = e.hint().unwrap_or_default();
        tracing::warn!(error = %e, %hint, "creating partitions of session_events ahead of time failed; rows without a partition go to session_events_default");
    }
    if m.events.is_none() && m.dead_letters.is_none() {
        return Ok(());
    }
    let req = PruneRequest {
        older_than: m.events,
        streams: Vec::new(),
        dead_letters_older_than: m.dead_letters,
        batch_rows: DEFAULT_BATCH_ROWS,
        progress: false,
    };
    let summary = prune::prune(&mut client, &req).await?;
    tracing::info!(
        rows_deleted = summary.rows_deleted,
        partitions_dropped = summary.partitions_dropped.len(),
        dead_letters_deleted = summary.dead_letters_deleted,
        cutoff = summary.cutoff.as_deref().unwrap_or(""),
        "retention pass done"
    );
    Ok(())
}
