//! `ds-sync prune` and `run --retention`: ingested rows older than a duration (by
//! `received_at`) and dead letters older than another (by `created_at`) are removed.
//!
//! Rows go in batches of at most `batch_rows`, each its own short transaction that locks
//! only the rows it deletes, so ingest's COPY goes on beside it. On a table partitioned by
//! `init --partition-by`, partitions whose whole range is older than the cutoff are dropped
//! first (no row is read; see `partitions`), then the older rows of the partition the
//! cutoff falls in (and of the default partition) are deleted in batches like the others.
//! With `--stream`, only those streams' rows are deleted and no partition is dropped.
//! `ds_sync.stream_offsets` is never touched: ingest resumes after the last event it
//! stored, pruned or not, and never reads a pruned event again.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::RetentionError;
use super::partitions::{self, Form};
use crate::pg::PgError;

/// Rows deleted per statement unless told otherwise.
pub const DEFAULT_BATCH_ROWS: i64 = 10_000;

/// What to prune.
#[derive(Debug, Clone)]
pub struct PruneRequest {
    /// Events older than this (by `received_at`); `None` leaves events alone.
    pub older_than: Option<Duration>,
    /// Only these streams (events and dead letters); empty: every stream.
    pub streams: Vec<String>,
    /// Dead letters older than this (by `created_at`); `None` leaves them alone.
    pub dead_letters_older_than: Option<Duration>,
    /// Rows per DELETE statement.
    pub batch_rows: i64,
    /// Show a progress bar (when stderr is a terminal).
    pub progress: bool,
}

/// What a prune did, for its summary line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneSummary {
    /// Events received before this moment (UTC) were pruned.
    pub cutoff: Option<String>,
    pub partitions_dropped: Vec<String>,
    /// The planner's estimate of the rows the dropped partitions held.
    pub rows_in_dropped_partitions_estimate: i64,
    pub rows_deleted: u64,
    pub batches: u64,
    pub dead_letters_cutoff: Option<String>,
    pub dead_letters_deleted: u64,
    pub seconds: f64,
}

impl PruneSummary {
    /// The summary line.
    #[must_use]
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(cutoff) = &self.cutoff {
            let mut events = format!(
                "session_events received before {cutoff}: deleted {} rows in {} batches",
                self.rows_deleted, self.batches
            );
            if !self.partitions_dropped.is_empty() {
                events.push_str(&format!(
                    ", dropped {} partitions (about {} rows: {})",
                    self.partitions_dropped.len(),
                    self.rows_in_dropped_partitions_estimate,
                    self.partitions_dropped.join(", ")
                ));
            }
            parts.push(events);
        }
        if let Some(cutoff) = &self.dead_letters_cutoff {
            parts.push(format!(
                "dead letters created before {cutoff}: deleted {}",
                self.dead_letters_deleted
            ));
        }
        format!("pruned {} in {:.1}s", parts.join("; "), self.seconds)
    }
}

/// Prunes what `req` asks for.
///
/// # Errors
///
/// A failed statement, or [`RetentionError::Busy`] when a partition could not be dropped.
pub async fn prune(
    client: &mut Client,
    req: &PruneRequest,
) -> Result<PruneSummary, RetentionError> {
    let started = Instant::now();
    let mut summary = PruneSummary::default();
    if let Some(age) = req.older_than {
        let (cutoff, text) = cutoff(client, age).await?;
        summary.cutoff = Some(text);
        if req.streams.is_empty()
            && let Form::Partitioned(Some(interval)) = partitions::form(client).await?
        {
            for p in partitions::expired(client, interval, cutoff).await? {
                partitions::drop_partition(client, &p.name).await?;
                tracing::info!(partition = %p.name, "dropped an expired partition of session_events");
                summary.rows_in_dropped_partitions_estimate += p.estimated_rows;
                summary.partitions_dropped.push(p.name);
            }
        }
        let (rows, batches) = delete_events(client, req, cutoff).await?;
        summary.rows_deleted = rows;
        summary.batches = batches;
    }
    if let Some(age) = req.dead_letters_older_than {
        let (cutoff, text) = cutoff(client, age).await?;
        summary.dead_letters_cutoff = Some(text);
        summary.dead_letters_deleted = delete_dead_letters(client, req, cutoff).await?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// `now() - age` on the database's clock: seconds since 1970, and as text (UTC).
async fn cutoff(client: &Client, age: Duration) -> Result<(f64, String), PgError> {
    let secs = age.as_secs_f64();
    let row = client
        .query_one(
            "SELECT extract(epoch FROM now() - make_interval(secs => $1))::float8, \
                    to_char((now() - make_interval(secs => $1)) AT TIME ZONE 'UTC', \
                            'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
            &[&secs],
        )
        .await
        .map_err(|e| PgError::query("computing the prune cutoff", &e))?;
    Ok((row.get(0), row.get(1)))
}

const EVENTS_WHERE: &str = "received_at < to_timestamp($1)";

async fn delete_events(
    client: &Client,
    req: &PruneRequest,
    cutoff: f64,
) -> Result<(u64, u64), PgError> {
    let filter = if req.streams.is_empty() {
        EVENTS_WHERE.to_owned()
    } else {
        format!("{EVENTS_WHERE} AND stream_name = ANY($2)")
    };
    let limit = if req.streams.is_empty() { "$2" } else { "$3" };
    let delete = format!(
        "DELETE FROM public.session_events e USING ( \
             SELECT id, received_at FROM public.session_events WHERE {filter} LIMIT {limit}) d \
         WHERE e.id = d.id AND e.received_at = d.received_at"
    );
    let count = format!("SELECT count(*) FROM public.session_events WHERE {filter}");
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&cutoff];
    if !req.streams.is_empty() {
        params.push(&req.streams);
    }
    batches(client, req, "session_events", &count, &delete, params).await
}

async fn delete_dead_letters(
    client: &Client,
    req: &PruneRequest,
    cutoff: f64,
) -> Result<u64, PgError> {
    let mut filter = "created_at < to_timestamp($1)".to_owned();
    let limit = if req.streams.is_empty() {
        "$2"
    } else {
        filter.push_str(" AND stream_name = ANY($2)");
        "$3"
    };
    let delete = format!(
        "DELETE FROM ds_sync.dead_letters WHERE id IN ( \
             SELECT id FROM ds_sync.dead_letters WHERE {filter} LIMIT {limit})"
    );
    let count = format!("SELECT count(*) FROM ds_sync.dead_letters WHERE {filter}");
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&cutoff];
    if !req.streams.is_empty() {
        params.push(&req.streams);
    }
    Ok(
        batches(client, req, "dead letters", &count, &delete, params)
            .await?
            .0,
    )
}

/// Runs `delete` (whose last parameter is the batch size) until a batch deletes fewer rows
/// than that; each statement commits on its own. Returns rows and statements.
async fn batches(
    client: &Client,
    req: &PruneRequest,
    what: &str,
    count: &str,
    delete: &str,
    mut params: Vec<&(dyn ToSql + Sync)>,
) -> Result<(u64, u64), PgError> {
    let bar = if req.progress && std::io::stderr().is_terminal() {
        let total: i64 = client
            .query_one(count, &params)
            .await
            .map_err(|e| PgError::query(format!("counting {what} to prune"), &e))?
            .get(0);
        Some(bar(what, total))
    } else {
        None
    };
    let batch = req.batch_rows.max(1);
    params.push(&batch);
    let (mut rows, mut statements) = (0u64, 0u64);
    loop {
        let n = client
            .execute(delete, &params)
            .await
            .map_err(|e| PgError::query(format!("deleting a batch of {what}"), &e))?;
        rows += n;
        statements += 1;
        if let Some(b) = &bar {
            b.inc(n);
        }
        if n < batch.unsigned_abs() {
            break;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok((rows, statements))
}

fn bar(what: &str, total: i64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total.max(0).unsigned_abs()),
        ProgressDrawTarget::stderr(),
    );
    let template = format!(
        "prune {what} {{bar:30}} {{human_pos}}/{{human_len}} rows  {{per_sec}}  ETA {{eta}}"
    );
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_names_what_went() {
        let s = PruneSummary {
            cutoff: Some("2026-11-02T12:00:00Z".into()),
            partitions_dropped: vec!["session_events_p20261005".into()],
            rows_in_dropped_partitions_estimate: 2400,
            rows_deleted: 120,
            batches: 2,
            dead_letters_cutoff: Some("2026-09-01T00:00:00Z".into()),
            dead_letters_deleted: 3,
            seconds: 0.84,
        };
        assert_eq!(
            s.line(),
            "pruned session_events received before 2026-11-02T12:00:00Z: deleted 120 rows in 2 batches, \
             dropped 1 partitions (about 2400 rows: session_events_p20261005); \
             dead letters created before 2026-09-01T00:00:00Z: deleted 3 in 0.8s"
        );
    }
}
