//! The commit writer: the one task that writes ingested events, owning its Postgres
//! connection.
//!
//! ```text
//!  subscription ─┐ Commit{stream, prev → next offset, rows, dead letters}
//!  subscription ─┼──────────▶ [bounded queue] ──▶ one transaction per batch:
//!  subscription ─┘                                  COPY session_events (binary)
//!        ▲                                          INSERT dead_letters
//!        └──────── reply after COMMIT ───────────── UPSERT stream_offsets (checked)
//! ```
//!
//! Whatever is queued when a transaction starts goes into it (up to a row limit), one
//! offset per stream, so many small streams share one commit. A subscription considers its
//! offset committed only when the reply arrives after COMMIT.
//!
//! **The offset upsert is checked**: each stream's row is only moved from the offset the
//! subscription started from. If another process moved it, the transaction is rolled back
//! and the subscription resumes from the stored offset, so two writers never store an event
//! twice.
//!
//! **Failures**: after a lost connection (or an unknown COMMIT outcome) the writer
//! reconnects and tells each subscription of the batch the offset that is actually stored,
//! so it resumes from the truth. When PostgreSQL refuses data (`jsonb` rejecting a value
//! the decoder let through), the rows are probed one by one and the refused ones become
//! dead letters; any other refusal stops ingest with the server's message.

use std::collections::HashSet;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, Statement, Transaction};
use tokio_util::sync::CancellationToken;

use super::IngestError;
use super::copy::{self, is_data_error};
use super::decode::{DeadLetter, Row};
use super::memory::Charge;
use crate::ds::Backoff;
use crate::pg::{PgError, PgTarget, describe};

/// One stream's rows and dead letters, committed with the offset of the control event
/// that closed them.
#[derive(Debug)]
pub struct Commit {
    pub stream: String,
    /// The offset stored now (`None`: no row yet); the upsert checks it.
    pub prev_offset: Option<String>,
    pub next_offset: String,
    pub rows: Vec<Row>,
    pub dead: Vec<DeadLetter>,
    /// The memory the rows hold, given back once the writer is done with them.
    pub charge: Option<Charge>,
    pub reply: oneshot::Sender<CommitOutcome>,
}

impl Commit {
    /// Answers the subscription, after giving the commit's memory back.
    fn answer(self, outcome: CommitOutcome) {
        let Commit { reply, charge, .. } = self;
        drop(charge);
        let _ = reply.send(outcome);
    }
}

/// The writer's answer to one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Stored with its offset.
    Committed,
    /// Nothing of it was stored; resume from `committed`, the offset stored now.
    Retry {
        committed: Option<String>,
        reason: String,
    },
    /// Ingest is stopping (or stopped with an error of its own).
    Stopped,
}

/// Where the writer's answer to one commit arrives.
#[derive(Debug)]
pub struct Answer(oneshot::Receiver<CommitOutcome>);

impl Answer {
    /// The reply side for a [`Commit`] and the answer it sends.
    #[must_use]
    pub fn channel() -> (oneshot::Sender<CommitOutcome>, Answer) {
        let (reply, answer) = oneshot::channel();
        (reply, Answer(answer))
    }

    /// Waits for the answer; a writer that is gone without answering has stopped.
    pub async fn landed(&mut self) -> CommitOutcome {
        (&mut self.0).await.unwrap_or(CommitOutcome::Stopped)
    }
}

/// Limits of one transaction.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// Rows (and dead letters) in one transaction, unless one stream's batch alone is larger.
    pub max_rows: usize,
    /// Commits queued before subscriptions wait (back-pressure).
    pub queue: usize,
}

impl WriterOptions {
    /// Default of `--ingest-batch-max-rows`.
    pub const DEFAULT_MAX_ROWS: usize = 10_000;
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_rows: Self::DEFAULT_MAX_ROWS,
            queue: 1024,
        }
    }
}

/// A queue for commits and its receiving end for [`run`].
#[must_use]
pub fn channel(opts: WriterOptions) -> (mpsc::Sender<Commit>, mpsc::Receiver<Commit>) {
    mpsc::channel(opts.queue.max(1))
}

/// Writes commits until every sender is gone. `hard_stop` abandons a transaction in
/// progress (it is rolled back; nothing is lost).
///
/// # Errors
///
/// [`IngestError::Write`] when PostgreSQL refuses a write for a reason a retry cannot fix.
pub async fn run(
    target: PgTarget,
    mut rx: mpsc::Receiver<Commit>,
    opts: WriterOptions,
    hard_stop: CancellationToken,
) -> Result<(), IngestError> {
    let mut client = target.connect().await?;
    // The COPY statement, prepared once per connection (a failed transaction drops it).
    let mut copy_statement: Option<Statement> = None;
    let mut carry: Option<Commit> = None;
    let mut backoff = Backoff::default();
    loop {
        let first = match carry.take() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(c) => c,
                None => return Ok(()),
            },
        };
        let mut batch = vec![first];
        carry = fill(&mut rx, &mut batch, opts.max_rows);
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            r = write_batch(&mut client, &mut copy_statement, &mut batch) => r,
            () = hard_stop.cancelled() => {
                fail_all(batch, &CommitOutcome::Stopped);
                return Ok(());
            }
        };
        match outcome {
            Ok(()) => {
                backoff.reset();
                crate::observe::ingest().stored(&batch, started.elapsed());
                for c in batch {
                    c.answer(CommitOutcome::Committed);
                }
            }
            Err(Failure::Fatal(reason)) => {
                fail_all(batch, &CommitOutcome::Stopped);
                return Err(IngestError::Write { reason });
            }
            Err(Failure::Retry(reason)) => {
                crate::observe::ingest().writer_failed(&reason);
                tracing::warn!(%reason, commits = batch.len(), "ingest transaction failed; resuming from the stored offsets");
                // The connection may be replaced: prepare again on the one that serves.
                copy_statement = None;
                client =
                    reply_stored(&target, client, batch, &reason, &mut backoff, &hard_stop).await?;
            }
        }
    }
}

/// Adds queued commits to `batch` up to `max_rows`; a second commit of a stream already in
/// the batch (or one over the limit) is handed back to start the next batch.
fn fill(
    rx: &mut mpsc::Receiver<Commit>,
    batch: &mut Vec<Commit>,
    max_rows: usize,
) -> Option<Commit> {
    let mut rows: usize = batch.iter().map(weight).sum();
    let mut streams: HashSet<String> = batch.iter().map(|c| c.stream.clone()).collect();
    while rows < max_rows {
        let Ok(next) = rx.try_recv() else {
            return None;
        };
        if streams.contains(&next.stream) || rows + weight(&next) > max_rows {
            return Some(next);
        }
        rows += weight(&next);
        streams.insert(next.stream.clone());
        batch.push(next);
    }
    None
}

fn weight(c: &Commit) -> usize {
    c.rows.len() + c.dead.len() + 1
}

fn fail_all(batch: Vec<Commit>, why: &CommitOutcome) {
    for c in batch {
        c.answer(why.clone());
    }
}

/// How a transaction failed.
enum Failure {
    /// Nothing was stored (or the outcome is unknown): resume from the stored offsets.
    Retry(String),
    /// PostgreSQL refuses this write for good.
    Fatal(String),
}

/// Writes one batch, turning rows PostgreSQL refuses into dead letters and trying again.
async fn write_batch(
    client: &mut Client,
    copy_statement: &mut Option<Statement>,
    batch: &mut [Commit],
) -> Result<(), Failure> {
    let outcome = match transaction(client, copy_statement, batch).await {
        Ok(outcome) => outcome,
        Err(e) if is_data_error(&e) && !client.is_closed() => {
            let moved = isolate_refused_rows(client, batch).await?;
            if moved == 0 {
                return Err(Failure::Fatal(describe(&e)));
            }
            transaction(client, copy_statement, batch)
                .await
                .map_err(|e| classify(client, &e))?
        }
        Err(e) => return Err(classify(client, &e)),
    };
    match outcome {
        Outcome::Committed => Ok(()),
        Outcome::OffsetMoved(streams) => {
            tracing::warn!(
                ?streams,
                "stored offset moved under ingest (another ds-sync ingesting the same stream?)"
            );
            Err(Failure::Retry(format!(
                "the stored offset of {} moved under this process",
                streams.join(", ")
            )))
        }
    }
}

/// What a transaction that ran to its end did.
enum Outcome {
    Committed,
    /// Rolled back: these streams' stored offsets were not the ones the commits started from.
    OffsetMoved(Vec<String>),
}

/// Retry or stop, by the class of the error (see [`crate::pg::sqlstate`]): a transaction
/// that lost a race, a lost connection or a server going away is retried from the stored
/// offsets; so is any failure on a connection that is closed now (the outcome of the
/// transaction is unknown). Refused data that the jsonb probe cannot find, a constraint
/// that refuses a row and any other refusal stop ingest with the server's message: trying
/// the same rows again would fail the same way.
fn classify(client: &Client, e: &tokio_postgres::Error) -> Failure {
    let reason = describe(e);
    if client.is_closed() || crate::pg::classify(e).is_transient() {
        Failure::Retry(reason)
    } else {
        Failure::Fatal(reason)
    }
}

/// The transaction itself: COPY, dead letters, checked offset upserts. It touches no row
/// the state reporter writes, so the two never wait for each other.
async fn transaction(
    client: &mut Client,
    copy_statement: &mut Option<Statement>,
    batch: &[Commit],
) -> Result<Outcome, tokio_postgres::Error> {
    let copy = match copy_statement.take() {
        Some(statement) => statement,
        None => client.prepare(copy::COPY_SQL).await?,
    };
    let tx = client.transaction().await?;
    copy_rows(&tx, &copy, batch).await?;
    let mut dead = Vec::new();
    for c in batch {
        for d in &c.dead {
            dead.push((c.stream.as_str(), d, c.next_offset.as_str()));
        }
    }
    copy::insert_dead_letters(&tx, &dead).await?;
    let moves: Vec<(&str, Option<&str>, &str)> = batch
        .iter()
        .map(|c| {
            (
                c.stream.as_str(),
                c.prev_offset.as_deref(),
                c.next_offset.as_str(),
            )
        })
        .collect();
    let moved = copy::upsert_offsets(&tx, &moves).await?;
    if moved.len() < batch.len() {
        let lost = batch
            .iter()
            .map(|c| c.stream.clone())
            .filter(|s| !moved.contains(s))
            .collect();
        tx.rollback().await?;
        *copy_statement = Some(copy);
        return Ok(Outcome::OffsetMoved(lost));
    }
    tx.commit().await?;
    *copy_statement = Some(copy);
    Ok(Outcome::Committed)
}

async fn copy_rows(
    tx: &Transaction<'_>,
    copy: &Statement,
    batch: &[Commit],
) -> Result<(), tokio_postgres::Error> {
    let mut rows = Vec::with_capacity(batch.iter().map(|c| c.rows.len()).sum());
    for c in batch {
        for r in &c.rows {
            rows.push((c.stream.as_str(), r, c.next_offset.as_str()));
        }
    }
    copy::copy_rows(tx, copy, &rows).await?;
    Ok(())
}

/// Probes every row's payload as `jsonb` and moves the refused ones to dead letters.
/// Returns how many were moved.
async fn isolate_refused_rows(client: &Client, batch: &mut [Commit]) -> Result<usize, Failure> {
    let mut moved = 0;
    for c in batch.iter_mut() {
        let rows = std::mem::take(&mut c.rows);
        let (kept, dead) = copy::probe_rows(client, rows)
            .await
            .map_err(|e| classify(client, &e))?;
        moved += dead.len();
        c.rows = kept;
        c.dead.extend(dead);
    }
    Ok(moved)
}

/// Tells each commit of a failed batch the offset stored now, so it resumes from there;
/// reconnects (with backoff, until `hard_stop`) until the offsets can be read.
async fn reply_stored(
    target: &PgTarget,
    mut client: Client,
    batch: Vec<Commit>,
    reason: &str,
    backoff: &mut Backoff,
    hard_stop: &CancellationToken,
) -> Result<Client, IngestError> {
    loop {
        if !client.is_closed() {
            match stored_offsets(&client, &batch).await {
                Ok(stored) => {
                    for (c, committed) in batch.into_iter().zip(stored) {
                        let reason = reason.to_owned();
                        c.answer(CommitOutcome::Retry { committed, reason });
                    }
                    return Ok(client);
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the stored offsets"),
            }
        }
        let delay = backoff.next_delay();
        let connected = tokio::select! {
            connected = async {
                tokio::time::sleep(delay).await;
                target.connect().await
            } => connected,
            () = hard_stop.cancelled() => {
                fail_all(batch, &CommitOutcome::Stopped);
                return Ok(client);
            }
        };
        match connected {
            Ok(c) => client = c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.ceiling(), "ingest cannot reach PostgreSQL")
            }
        }
    }
}

async fn stored_offsets(client: &Client, batch: &[Commit]) -> Result<Vec<Option<String>>, PgError> {
    let streams: Vec<&str> = batch.iter().map(|c| c.stream.as_str()).collect();
    super::store::offsets(client, &streams).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(stream: &str, rows: usize) -> Commit {
        let (reply, _) = oneshot::channel();
        Commit {
            stream: stream.to_owned(),
            prev_offset: None,
            next_offset: "1".to_owned(),
            rows: (0..rows)
                .map(|i| Row {
                    payload: format!("{{\"key\":{i}}}"),
                    event_key: None,
                    event_type: None,
                    operation: None,
                    ds_offset: None,
                })
                .collect(),
            dead: Vec::new(),
            charge: None,
            reply,
        }
    }

    fn streams(batch: &[Commit]) -> Vec<&str> {
        batch.iter().map(|c| c.stream.as_str()).collect()
    }

    #[test]
    fn a_batch_takes_what_is_queued_one_commit_per_stream() {
        let (tx, mut rx) = channel(WriterOptions::default());
        for s in ["b", "c", "a", "d"] {
            tx.try_send(commit(s, 2)).unwrap();
        }
        let mut batch = vec![commit("a", 1)];
        let carry = fill(&mut rx, &mut batch, 100);
        assert_eq!(streams(&batch), ["a", "b", "c"]);
        let carry = carry.expect("the second commit of a waits for the next batch");
        assert_eq!(carry.stream, "a");
        assert_eq!(rx.try_recv().map(|c| c.stream).ok().as_deref(), Some("d"));
    }

    #[test]
    fn a_batch_stops_at_the_row_limit() {
        let (tx, mut rx) = channel(WriterOptions::default());
        tx.try_send(commit("b", 5)).unwrap();
        tx.try_send(commit("c", 5)).unwrap();
        let mut batch = vec![commit("a", 3)];
        let carry = fill(&mut rx, &mut batch, 12);
        assert_eq!(streams(&batch), ["a", "b"]);
        assert_eq!(carry.map(|c| c.stream).as_deref(), Some("c"));
        let mut alone = vec![commit("big", 50)];
        assert!(fill(&mut rx, &mut alone, 12).is_none());
        assert_eq!(
            alone.len(),
            1,
            "one stream's batch over the limit still goes alone"
        );
    }
}
