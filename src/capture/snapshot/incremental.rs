//! Incremental snapshots while capture streams (`ds-sync snapshot --table T`, and tables
//! that join the publication later), in the watermark style: no exported snapshot, no pause.
//!
//! ```text
//!  request row ──(decoded)──▶ queue ──▶ for each key-ordered chunk, one at a time:
//!    INSERT low ─▶ SELECT chunk (plain connection) ─▶ INSERT high
//!    decoding low..high: keys of the table's streamed changes are noted
//!    decoding high: chunk rows whose key was not noted become inserts of high's transaction
//!    high's transaction acknowledged by the DS server ─▶ next chunk (or `done`)
//! ```
//!
//! **Why it is right.** A change committed between the watermarks is at least as new as the
//! chunk's view of its row, so the chunk's row is dropped; every other chunk row is exactly
//! the row's state at high, and it is placed at high's position: earlier changes sort before
//! it, later ones after. Snapshot rows are inserts read as upserts; a row is never deleted
//! by a re-snapshot, so rows deleted while a table was not captured stay in a client's
//! state (see README, "Re-snapshot").
//!
//! It needs the chunk's read to see every transaction decoded before low. PostgreSQL makes a
//! commit visible only after writing it to the WAL, so one that is still finishing (a wait
//! for a synchronous standby keeps it there) can be decoded before low and missed by the read;
//! such a chunk is read again (see `visibility`).
//!
//! **Exactly once.** Chunk rows take `Stream-Seq` `(high's commit LSN, i)`. The chunk is held
//! until the DS server acknowledges high's transaction, so a reconnect that replays high
//! re-sends the same rows with the same sequences. After a crash the chunk is gone: the
//! request resumes at the start of the last chunk that began (every earlier one was
//! acknowledged before the next began), with new watermarks; the resent rows sort after
//! everything already sent. Watermarks of an earlier process are ignored when replayed.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::lsn::Lsn;
use crate::pg::{PgError, PgTarget};
use crate::pgoutput::{Relation, TupleData, TupleValue};
use crate::waits::Monitor;

use super::super::error::CaptureError;
use super::super::message::{self, RowMessage};
use super::super::source;
use super::catalog::{self, SnapshotTable};
use super::error::SnapshotError;
use super::signals::{self, Mark, SignalKind, Unfinished};
use super::visibility::{InProgress, RecentCommits};
use super::window::Window;

/// See the module documentation.
pub struct Incremental {
    slot: String,
    publication: String,
    chunk_rows: usize,
    /// Snapshot tables capture sees for the first time.
    new_tables: bool,
    signal_oid: Option<u32>,
    queue: VecDeque<Unfinished>,
    queued: HashSet<i64>,
    known_tables: HashSet<String>,
    active: Option<Active>,
    /// The tables the last decoded commits changed: what a chunk's read may have missed.
    recent: RecentCommits,
    /// The backend of the current session's SQL connection, whose chunk reads can wait
    /// for locks (0: unknown), and the connection that looks up what they wait for.
    backend_pid: i32,
    monitor: Monitor,
}

/// What a decoded signal row is to the session that decoded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// The high watermark of the chunk in progress: take it with
    /// [`Incremental::chunk_messages`].
    HighWatermark,
    /// A keepalive probe (see `capture::keepalive`), with its id.
    Probe(i64),
    /// Anything else: a request, a low watermark, a row of another slot or process.
    Other,
}

struct Active {
    request: i64,
    table: SnapshotTable,
    after: Option<Vec<String>>,
    chunk: Option<Chunk>,
    /// The table's changes between the chunk's watermarks; kept until the chunk is
    /// acknowledged, so that a reconnect which replays only part of the window (from after
    /// the low watermark) places the chunk exactly as the first time.
    window: Option<Window>,
    /// The transaction that carries the chunk's rows, and its end once committed.
    emitted_in: Option<Lsn>,
    confirm_at: Option<Lsn>,
    /// Chunks read again in a row because their read missed a commit, and when the next
    /// read may start.
    misses: u32,
    not_before: Option<Instant>,
}

struct Chunk {
    low: i64,
    high: i64,
    rows: Vec<Vec<Option<String>>>,
    /// The chunk's last key; `None` when it was the table's last chunk.
    end: Option<Vec<String>>,
    /// Its rows were not placed (the low watermark was never decoded, or the read missed
    /// a commit): read it again.
    again: bool,
    /// The transactions the read could not see.
    in_progress: InProgress,
    /// Where the low watermark was decoded among the recent commits.
    low_mark: Option<u64>,
}

impl Incremental {
    /// Applies the schema, publishes the signal table and loads unfinished requests.
    pub async fn start(
        sql: &Client,
        target: &PgTarget,
        slot: &str,
        publication: &str,
        chunk_rows: usize,
        new_tables: bool,
    ) -> Result<Incremental, CaptureError> {
        signals::ensure_published(sql, publication).await?;
        let mut queue: VecDeque<Unfinished> = signals::unfinished(sql, slot).await?.into();
        let known = if new_tables {
            tables_at_start(sql, slot, publication, &mut queue).await?
        } else {
            HashSet::new()
        };
        Ok(Incremental {
            slot: slot.to_string(),
            publication: publication.to_string(),
            chunk_rows: chunk_rows.max(1),
            new_tables,
            signal_oid: None,
            queued: queue.iter().map(|u| u.request).collect(),
            queue,
            known_tables: known,
            active: None,
            recent: RecentCommits::default(),
            backend_pid: 0,
            monitor: Monitor::new(target),
        })
    }

    /// A new session's SQL connection: its backend is the one whose chunk reads can wait
    /// for locks, named in reports of such waits.
    pub async fn attach(&mut self, sql: &Client) -> Result<(), CaptureError> {
        self.backend_pid = crate::waits::backend_pid(sql).await?;
        Ok(())
    }

    /// True (and remembered) when `rel` is the signal table.
    pub fn is_signal_relation(&mut self, rel: &Relation) -> bool {
        let yes = signals::is_signal_table(&rel.namespace, &rel.name);
        if yes {
            self.signal_oid = Some(rel.oid);
        }
        yes
    }

    pub fn is_signal(&self, oid: u32) -> bool {
        self.signal_oid == Some(oid)
    }

    /// A table's Relation message: a table seen for the first time gets a snapshot request.
    pub async fn relation_seen(&mut self, sql: &Client, table: &str) -> Result<(), CaptureError> {
        if !self.new_tables || self.known_tables.contains(table) {
            return Ok(());
        }
        signals::record_table(sql, &self.slot, table).await?;
        let id = signals::request(sql, &self.slot, table).await?;
        tracing::info!(
            table,
            request = id,
            "a table joined the publication; snapshotting it"
        );
        self.known_tables.insert(table.to_string());
        Ok(())
    }

    /// A decoded signal row: a request is queued, a low watermark opens the chunk's
    /// window; what it is to the session is returned.
    pub fn signal(&mut self, relation: &Relation, tuple: &TupleData) -> Decoded {
        let texts: Vec<(&str, Option<&str>)> = relation
            .columns
            .iter()
            .zip(&tuple.columns)
            .map(|(c, v)| {
                let text = match v {
                    TupleValue::Text(b) => std::str::from_utf8(b).ok(),
                    _ => None,
                };
                (c.name.as_str(), text)
            })
            .collect();
        let Some(sig) = signals::parse_signal(&texts) else {
            return Decoded::Other;
        };
        if sig.slot != self.slot {
            return Decoded::Other;
        }
        match sig.kind {
            SignalKind::Request => {
                if self.queued.insert(sig.id) {
                    tracing::info!(table = %sig.table, request = sig.id, "snapshot requested");
                    self.queue.push_back(Unfinished {
                        request: sig.id,
                        table: sig.table,
                        resume_after: None,
                    });
                }
                Decoded::Other
            }
            SignalKind::Low => {
                if let Some(a) = &mut self.active
                    && let Some(chunk) = a.chunk.as_mut().filter(|c| c.low == sig.id)
                {
                    chunk.low_mark = Some(self.recent.mark());
                    a.window.get_or_insert_with(Window::default).open();
                }
                Decoded::Other
            }
            SignalKind::High
                if self
                    .active
                    .as_ref()
                    .and_then(|a| a.chunk.as_ref())
                    .is_some_and(|c| c.high == sig.id) =>
            {
                Decoded::HighWatermark
            }
            SignalKind::High | SignalKind::Done => Decoded::Other,
            SignalKind::Probe => Decoded::Probe(sig.id),
        }
    }

    /// A streamed change, noted while the table's chunk is between its watermarks.
    pub fn change(&mut self, oid: u32, row: &RowMessage) {
        if let Some(window) = self.window_of(oid) {
            window.change(row);
        }
    }

    /// A TRUNCATE of these tables: a chunk of one of them between its watermarks is dropped.
    pub fn truncated(&mut self, oids: &[u32]) {
        for oid in oids {
            if let Some(window) = self.window_of(*oid) {
                window.truncate();
            }
        }
    }

    /// When [`Incremental::poll`] has a chunk to read again after a pause: the capture loop
    /// wakes then even if nothing else happens.
    pub fn wake_at(&self) -> Option<Instant> {
        self.active
            .as_ref()
            .filter(|a| a.chunk.is_none())
            .and_then(|a| a.not_before)
    }

    /// Whether changes of table `oid` must reach [`Incremental::change`] as messages: from
    /// the low watermark of the table's first chunk on (the window decides what it keeps).
    pub fn watches(&self, oid: u32) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| a.table.info.relation.oid == oid && a.window.is_some())
    }

    fn window_of(&mut self, oid: u32) -> Option<&mut Window> {
        let a = self.active.as_mut()?;
        if a.table.info.relation.oid != oid {
            return None;
        }
        a.window.as_mut()
    }

    /// The chunk's rows not changed between the watermarks, as insert messages of the
    /// transaction `tx` (high's), plus the table they belong to.
    pub fn chunk_messages(
        &mut self,
        tx: Lsn,
        time_micros: i64,
    ) -> Result<(u32, std::sync::Arc<message::TableInfo>, Vec<RowMessage>), CaptureError> {
        let Some(a) = &mut self.active else {
            return Err(SnapshotError::HighWatermarkWithoutChunk.into());
        };
        let info = std::sync::Arc::clone(&a.table.info);
        let mut out = Vec::new();
        a.emitted_in = Some(tx);
        let (Some(window), Some(chunk)) = (a.window.as_mut(), a.chunk.as_mut()) else {
            // Never seen open, so what changed in between is unknown: nothing of the chunk
            // is sent, and it is read again.
            tracing::warn!(table = %info.qualified_name(), "a chunk's high watermark without its low one; reading the chunk again");
            if let Some(chunk) = a.chunk.as_mut() {
                chunk.again = true;
            }
            return Ok((info.relation.oid, info, out));
        };
        window.close();
        let missed = chunk.low_mark.map_or_else(Vec::new, |mark| {
            self.recent
                .missed(mark, info.relation.oid, &chunk.in_progress)
        });
        if !missed.is_empty() {
            a.misses += 1;
            tracing::warn!(
                table = %info.qualified_name(),
                transactions = ?missed,
                reads = a.misses,
                "a transaction streamed before the chunk's low watermark was not yet visible to the chunk's read \
                 (committed in the WAL, still finishing: for example waiting for a synchronous standby); \
                 reading the chunk again once it is, instead of sending rows older than the streamed change"
            );
            chunk.again = true;
            return Ok((info.relation.oid, info, out));
        }
        a.misses = 0;
        for values in &chunk.rows {
            let values: Vec<Option<&str>> = values.iter().map(|v| v.as_deref()).collect();
            let msg = message::snapshot_insert(&info, &values, tx, time_micros)?;
            out.extend(window.place(msg));
        }
        if window.truncated() {
            tracing::info!(table = %info.qualified_name(), rows = chunk.rows.len(), "the table was truncated between a chunk's watermarks; the chunk is dropped");
        }
        tracing::debug!(table = %info.qualified_name(), rows = out.len(), changed = window.changed(), "chunk placed at its high watermark");
        Ok((info.relation.oid, info, out))
    }

    /// A transaction committed, having changed `tables`: the chunk's transaction now has
    /// an end to wait for, and a later chunk's read can be checked against it.
    pub fn committed(&mut self, tx: Lsn, xid: u32, tables: &[u32], end_lsn: Lsn) {
        self.recent.committed(xid, tables);
        if let Some(a) = &mut self.active
            && a.emitted_in == Some(tx)
        {
            a.confirm_at = Some(end_lsn);
        }
    }

    /// Moves the work on: starts the next request, finishes a chunk the DS server has
    /// acknowledged (everything up to `confirmed`), issues the next chunk.
    pub async fn poll(&mut self, sql: &Client, confirmed: Lsn) -> Result<(), CaptureError> {
        loop {
            let Some(a) = &mut self.active else {
                let Some(next) = self.queue.front().cloned() else {
                    return Ok(());
                };
                // Its catalog look-up waits for a lock on the table too (from PostgreSQL 16
                // on). The request leaves the queue only once looked up: a connection lost
                // meanwhile leaves it to the next session.
                let what = format!("looking up {} for its snapshot", next.table);
                let (pid, monitor) = (self.backend_pid, &mut self.monitor);
                let starting = begin(sql, &self.publication, &self.slot, next);
                self.active = monitor.report_lock_waits(starting, pid, &what).await?;
                self.queue.pop_front();
                continue;
            };
            if let Some(end) = a.confirm_at {
                if confirmed < end {
                    return Ok(());
                }
                let chunk = a.chunk.take();
                a.confirm_at = None;
                a.emitted_in = None;
                a.window = None;
                match chunk {
                    // `after` stays: the same chunk is read again, after a pause that grows
                    // while its reads keep missing a commit.
                    Some(c) if c.again => {
                        a.not_before = Some(Instant::now() + retry_delay(a.misses));
                    }
                    Some(Chunk { end: Some(end), .. }) => a.after = Some(end),
                    _ => {
                        let (request, table) = (a.request, a.table.info.qualified_name());
                        signals::mark(sql, Mark::done(&self.slot, &table, request)).await?;
                        tracing::info!(table, request, "snapshot done");
                        self.queued.remove(&request);
                        self.active = None;
                        continue;
                    }
                }
            }
            if a.chunk.is_some() || a.not_before.is_some_and(|t| Instant::now() < t) {
                return Ok(());
            }
            a.not_before = None;
            let (pid, monitor) = (self.backend_pid, &mut self.monitor);
            let what = format!("reading a chunk of {}", a.table.info.qualified_name());
            let reading = issue(sql, &self.slot, a, self.chunk_rows);
            a.chunk = Some(monitor.report_lock_waits(reading, pid, &what).await?);
            return Ok(());
        }
    }
}

/// Looks the request's table up; a table that is gone from the publication or cannot be
/// chunked ends the request with a warning (capture goes on).
async fn begin(
    sql: &Client,
    publication: &str,
    slot: &str,
    req: Unfinished,
) -> Result<Option<Active>, CaptureError> {
    // A request decoded again (a restart or reconnect resuming before its row) that was
    // finished meanwhile is not run again.
    if signals::is_done(sql, req.request).await? {
        tracing::debug!(table = %req.table, request = req.request, "snapshot request already done");
        return Ok(None);
    }
    let found = catalog::published_tables(sql, publication)
        .await?
        .into_iter()
        .find(|t| t.info.qualified_name() == req.table);
    let problem = match &found {
        None => Some(format!(
            "it is not in publication '{}' any more",
            publication
        )),
        Some(t) => match chunkable(sql, t).await? {
            Chunking::Possible => None,
            Chunking::Impossible(why) => Some(why),
        },
    };
    match (found, problem) {
        (Some(table), None) => {
            tracing::info!(table = %req.table, request = req.request, resume_after = ?req.resume_after, "snapshotting while streaming");
            Ok(Some(Active {
                request: req.request,
                table,
                after: req.resume_after,
                chunk: None,
                window: None,
                emitted_in: None,
                confirm_at: None,
                misses: 0,
                not_before: None,
            }))
        }
        (_, problem) => {
            tracing::warn!(table = %req.table, request = req.request, reason = problem.unwrap_or_default(), "snapshot request skipped");
            signals::mark(sql, Mark::done(slot, &req.table, req.request)).await?;
            Ok(None)
        }
    }
}

/// The tables a snapshot of the slot covered, after queueing a request for every published
/// table none did: it joined the publication while capture was stopped, and no change of it
/// may ever announce it. A slot without a baseline (not snapshotted by ds-sync, or from before
/// the baseline existed) takes the tables published now as covered.
async fn tables_at_start(
    sql: &Client,
    slot: &str,
    publication: &str,
    queue: &mut VecDeque<Unfinished>,
) -> Result<HashSet<String>, CaptureError> {
    let published: Vec<String> = catalog::published_tables(sql, publication)
        .await?
        .iter()
        .map(|t| t.info.qualified_name())
        .collect();
    if !signals::has_baseline(sql, slot).await? {
        for name in &published {
            signals::record_table(sql, slot, name).await?;
        }
        signals::record_baseline(sql, slot).await?;
        return Ok(published.into_iter().collect());
    }
    // Changes of a table outside the publication were not captured: once it is published
    // again, it is snapshotted again.
    signals::forget_unpublished(sql, slot, &published).await?;
    let mut known: HashSet<String> = signals::snapshotted_tables(sql, slot)
        .await?
        .into_iter()
        .collect();
    for name in published {
        if known.contains(&name) {
            continue;
        }
        signals::record_table(sql, slot, &name).await?;
        let request = signals::request(sql, slot, &name).await?;
        tracing::info!(table = %name, request, "a table joined the publication while capture was stopped; snapshotting it");
        queue.push_back(Unfinished {
            request,
            table: name.clone(),
            resume_after: None,
        });
        known.insert(name);
    }
    Ok(known)
}

/// Whether a table can be read in key-ordered chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunking {
    Possible,
    /// Why not, with the way out.
    Impossible(String),
}

/// Whether a table can be read in key-ordered chunks: it needs a primary key whose columns
/// are all published.
pub async fn chunkable(sql: &Client, table: &SnapshotTable) -> Result<Chunking, CaptureError> {
    let pk = source::primary_key(sql, table.info.relation.oid).await?;
    let Some(pk) = pk else {
        return Ok(Chunking::Impossible("it has no primary key to read it in chunks by; add one (ALTER TABLE .. ADD PRIMARY KEY)".into()));
    };
    let keys: Vec<&str> = table
        .info
        .key_columns
        .iter()
        .map(|&i| table.info.relation.columns[i].name.as_str())
        .collect();
    if keys.len() != pk.len() || keys.iter().zip(&pk).any(|(a, b)| a != b) {
        return Ok(Chunking::Impossible(format!(
            "its primary key ({}) is not fully in the publication's column list",
            pk.join(", ")
        )));
    }
    Ok(Chunking::Possible)
}

/// The pause before reading a chunk again after `misses` reads in a row missed a commit:
/// from 100 ms, doubling, at most 5 s (a commit waiting for a standby may wait long).
fn retry_delay(misses: u32) -> Duration {
    match misses {
        0 => Duration::ZERO,
        n => Duration::from_millis((100u64 << (n - 1).min(6)).min(5_000)),
    }
}

/// Low watermark, the chunk's read, high watermark: three transactions, in this order.
async fn issue(sql: &Client, slot: &str, a: &Active, limit: usize) -> Result<Chunk, CaptureError> {
    let name = a.table.info.qualified_name();
    let after = a.after.as_deref();
    let low = signals::mark(sql, Mark::low(slot, &name, a.request, after)).await?;
    let keys: Vec<&str> = a
        .table
        .info
        .key_columns
        .iter()
        .map(|&i| a.table.info.relation.columns[i].name.as_str())
        .collect();
    let query = signals::chunk_sql(&a.table.select, &keys, after, limit);
    let mut snapshot = None;
    let rows: Vec<Vec<Option<String>>> = sql
        .simple_query(&query)
        .await
        .map_err(|e| PgError::query(format!("reading a chunk of {name}"), &e))?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                snapshot = snapshot.take().or_else(|| r.get(0).map(str::to_string));
                Some((1..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect();
    // No rows, no snapshot: an empty chunk has nothing to overwrite anything with.
    let in_progress = match snapshot {
        Some(text) => {
            InProgress::parse(&text).map_err(|reason| SnapshotError::BadChunkSnapshot {
                table: name.clone(),
                reason,
            })?
        }
        None => InProgress::default(),
    };
    let end = if rows.len() < limit {
        None
    } else {
        rows.last().map(|r: &Vec<Option<String>>| {
            a.table
                .info
                .key_columns
                .iter()
                .map(|&i| r[i].clone().unwrap_or_default())
                .collect::<Vec<String>>()
        })
    };
    let high = signals::mark(
        sql,
        Mark::high(slot, &name, a.request, after, end.as_deref()),
    )
    .await?;
    tracing::debug!(table = %name, rows = rows.len(), low, high, "chunk read between watermarks");
    Ok(Chunk {
        low,
        high,
        rows,
        end,
        again: false,
        in_progress,
        low_mark: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_read_again_waits_longer_each_time_up_to_five_seconds() {
        let delays: Vec<u64> = [0, 1, 2, 3, 6, 7, 40, u32::MAX]
            .into_iter()
            .map(|misses| retry_delay(misses).as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 100, 200, 400, 3_200, 5_000, 5_000, 5_000]);
    }
}
