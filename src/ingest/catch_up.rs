//! Catch-up reads: how a subscription stores what the stream already holds (a backlog) before
//! it follows the tail over SSE, and how it stores a data event too large to hold.
//!
//! On SSE, the offset that rows are committed with (and that fills their `ds_offset`) comes
//! in the control event *after* the data, so rows must wait for it; a backlog sent as one
//! 100 MB event cannot wait in memory. A plain read of the stream from the committed offset
//! answers with the offset it ends at in its headers, before its body. So its rows can be
//! written while the body arrives and committed with that offset once it is complete:
//!
//! ```text
//!  GET ?offset=committed ─▶ Stream-Next-Offset: N
//!    body [m, m, …] ─▶ split ─▶ decode ─▶ held (small) ──────────────▶ writer: one Commit
//!                                          │ over the event hold          (batched with
//!                                          ▼                               other streams)
//!                          the lane: BEGIN, COPY what is held, then each chunk as it
//!                          arrives (dead letters between COPY statements), offset → N
//!                          (checked), COMMIT
//! ```
//!
//! The commit rule holds either way: rows become durable only with the offset that covers
//! them, and the checked upsert refuses the commit if another process moved the offset.
//! Reads repeat until one says `Stream-Up-To-Date`. A read whose rows fit in the event hold
//! goes to the writer like SSE rows, so a thousand streams with a few events each share
//! transactions; a larger one moves to the "lane", a connection of its own where one
//! catch-up at a time copies while it reads, so that other streams' commits never wait behind
//! a backlog. A read that cannot get the lane soon drops what it holds and waits for the lane
//! holding nothing, then reads again.
//!
//! When PostgreSQL refuses a row on the lane (a value its `jsonb` or the database encoding
//! will not take), the transaction is lost; the same read is done again carefully: each chunk
//! of rows is copied behind a savepoint, and a refused chunk is probed row by row so that only
//! the refused rows become dead letters. Only streams in JSON mode can be read this way
//! (others answer with their messages run together): for them the subscription goes straight
//! to SSE.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::MutexGuard;
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::copy::{self, is_data_error};
use super::decode::{Decoded, Pending, decode};
use super::lane::Out;
use super::memory::{Full, OVERFLOW_WAIT, READ_HEADROOM};
use super::state::Status;
use super::subscription::{Subscription, with_hint};
use super::writer::{Answer, Commit, CommitOutcome};
use crate::ds::{Backoff, BodyRead, CatchUpRead, DsError, OFFSET_START};
use crate::pg::{PgTarget, describe};

/// How a catch-up ended.
pub(super) enum CatchUpEnd {
    /// Up to date: follow the tail over SSE from the new offset.
    Done,
    /// The stream is closed and stored to its end.
    Closed,
    /// The stream is not in JSON mode: it can only be read over SSE.
    NotJson,
    /// The stream does not exist (yet, or any more).
    NotFound,
    Stopped,
    /// Transient trouble; the offset is the stored one.
    Retry(String),
    /// Stop the subscription with this error.
    Failed(String),
}

/// Why one catch-up read did not commit.
enum Lost {
    /// The read broke or went silent: nothing was stored.
    Read(String),
    /// PostgreSQL refused a row on the lane.
    Refused(String),
    /// The connection failed or the server refused the transaction otherwise; whether the
    /// COMMIT happened is not known.
    Pg(String),
    /// The stored offset was not the one the read started from.
    OffsetMoved,
    /// The writer's transaction failed; the offset is the stored one.
    Writer(String),
    /// The read outgrew the event hold and the lane stayed busy: read again on the lane.
    LaneBusy,
    Stopped,
}

/// The lane's connection while this subscription holds the lane.
type Lane<'a> = MutexGuard<'a, Option<Client>>;

impl Subscription {
    /// Reads from the committed offset until up to date, storing each read; see the module
    /// documentation.
    pub(super) async fn catch_up(&mut self, stop: &CancellationToken) -> CatchUpEnd {
        let shared = Arc::clone(&self.shared);
        let mut lane: Option<Lane<'_>> = None;
        let mut careful = false;
        loop {
            let from = self
                .offset
                .clone()
                .unwrap_or_else(|| OFFSET_START.to_owned());
            let opened = tokio::select! {
                () = stop.cancelled() => return CatchUpEnd::Stopped,
                r = shared.ds.read_stream(&self.stream, &from, shared.max_event_bytes, shared.idle_timeout) => r,
            };
            let read = match opened {
                Ok(read) => read.with_idle_timeout(Some(shared.idle_timeout)),
                Err(DsError::NotFound { .. }) => return CatchUpEnd::NotFound,
                Err(DsError::Gone { .. }) => return CatchUpEnd::Failed(self.gone_message(&from)),
                Err(e) => return CatchUpEnd::Retry(with_hint(&e)),
            };
            if !read.json {
                return CatchUpEnd::NotJson;
            }
            let (next, up_to_date, closed) =
                (read.next_offset.clone(), read.up_to_date, read.closed);
            if self.offset.as_deref() == Some(next.as_str()) {
                return if closed {
                    CatchUpEnd::Closed
                } else {
                    CatchUpEnd::Done
                };
            }
            let stored = self
                .store_read(read, &shared.lane, &mut lane, careful, stop)
                .await;
            self.meter.set_local(0);
            match stored {
                Ok(rows) => {
                    if lane.is_some() {
                        tracing::info!(stream = %self.stream, from = %from, offset = %next, rows, "backlog stored by a catch-up read");
                    }
                    self.offset = Some(next);
                    self.committed(up_to_date, rows > 0);
                    if closed {
                        return CatchUpEnd::Closed;
                    }
                    if up_to_date {
                        return CatchUpEnd::Done;
                    }
                }
                Err(Lost::LaneBusy) => {
                    // Holding nothing now: wait for the lane, then read again on it.
                    lane = tokio::select! {
                        () = stop.cancelled() => return CatchUpEnd::Stopped,
                        l = shared.lane.lock() => Some(l),
                    };
                }
                Err(Lost::Refused(reason)) if !careful => {
                    tracing::warn!(stream = %self.stream, offset = %from, %reason, "PostgreSQL refused a row of a catch-up read; reading it again, finding the refused rows");
                    careful = true;
                }
                Err(lost) => {
                    if let (Lost::Pg(_), Some(l)) = (&lost, lane.as_mut()) {
                        **l = None;
                    }
                    return self.lost(lost, &from, stop).await;
                }
            }
        }
    }

    /// How a catch-up that lost its read ends.
    async fn lost(&mut self, lost: Lost, from: &str, stop: &CancellationToken) -> CatchUpEnd {
        let reason = match lost {
            Lost::Refused(reason) => {
                return CatchUpEnd::Failed(format!(
                    "PostgreSQL refuses a catch-up read of stream {:?} from offset {from}, and \
                     no single row of it: {reason}",
                    self.stream
                ));
            }
            Lost::Read(reason) | Lost::Writer(reason) => return CatchUpEnd::Retry(reason),
            Lost::Stopped => return CatchUpEnd::Stopped,
            Lost::LaneBusy => return CatchUpEnd::Retry("the catch-up lane stayed busy".into()),
            Lost::Pg(reason) => reason,
            Lost::OffsetMoved => "the stored offset moved under this process (another ds-sync \
                                  ingesting the same stream?)"
                .into(),
        };
        // Whether the COMMIT happened is not known: resume from what is stored.
        if self.resolve_offset(stop).await {
            CatchUpEnd::Retry(reason)
        } else {
            CatchUpEnd::Stopped
        }
    }

    /// Stores one read: held and handed to the writer while it fits in the event hold, on
    /// the lane once it does not.
    async fn store_read<'l>(
        &mut self,
        mut read: CatchUpRead,
        lane_lock: &'l tokio::sync::Mutex<Option<Client>>,
        lane: &mut Option<Lane<'l>>,
        careful: bool,
        stop: &CancellationToken,
    ) -> Result<u64, Lost> {
        let mut held = Pending::default();
        if lane.is_none() {
            let hold = self.shared.budget.limits().event_hold;
            loop {
                if held.bytes() > hold {
                    break;
                }
                match self.next_item(&mut read, held.bytes(), stop).await? {
                    Some(item) => held.push(decode(item, self.shared.max_event_bytes)),
                    None if read.done() => {
                        return self.commit_held(held, &read.next_offset, stop).await;
                    }
                    None => break,
                }
                self.meter.set_local(read.buffered_bytes() + held.bytes());
            }
            // Over the hold (or short of room): this read goes to the lane.
            let waited = tokio::time::timeout(OVERFLOW_WAIT, lane_lock.lock()).await;
            match waited {
                Ok(l) => *lane = Some(l),
                Err(_) => return Err(Lost::LaneBusy),
            }
            self.report(Status::CatchingUp, None);
        }
        let Some(conn) = lane.as_mut() else {
            return Err(Lost::LaneBusy);
        };
        let client = connected(conn, &self.shared.target)
            .await
            .map_err(Lost::Pg)?;
        tokio::select! {
            () = stop.cancelled() => Err(Lost::Stopped),
            r = self.copy_read(client, read, held, careful) => r,
        }
    }

    /// The next item of the read, reading more as needed; `None` when the body is done, or
    /// when this read should move to the lane (no room for `OVERFLOW_WAIT` while holding
    /// rows).
    async fn next_item(
        &mut self,
        read: &mut CatchUpRead,
        holding: usize,
        stop: &CancellationToken,
    ) -> Result<Option<crate::sse::ArrayItem>, Lost> {
        let mut full_since: Option<Instant> = None;
        loop {
            if let Some(item) = read.next_buffered() {
                return Ok(Some(item));
            }
            if read.done() {
                return Ok(None);
            }
            if let Err(full) = self.meter.room(READ_HEADROOM) {
                let since = *full_since.get_or_insert_with(Instant::now);
                if holding > 0 && (full == Full::Stream || since.elapsed() >= OVERFLOW_WAIT) {
                    return Ok(None);
                }
                let budget = Arc::clone(&self.shared.budget);
                tokio::select! {
                    () = stop.cancelled() => return Err(Lost::Stopped),
                    () = budget.released() => {}
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
            full_since = None;
            let got = tokio::select! {
                () = stop.cancelled() => return Err(Lost::Stopped),
                r = read.read() => r,
            };
            match got {
                Ok(BodyRead::Data(_) | BodyRead::Ended) => {}
                Ok(BodyRead::Idle(after)) => {
                    return Err(Lost::Read(format!(
                        "the catch-up read sent no byte for {after:?}"
                    )));
                }
                Err(e) => return Err(Lost::Read(e.to_string())),
            }
        }
    }

    /// A read small enough to hold goes to the writer like the rows of an SSE control.
    async fn commit_held(
        &mut self,
        held: Pending,
        next: &str,
        stop: &CancellationToken,
    ) -> Result<u64, Lost> {
        let rows = (held.rows.len() + held.dead.len()) as u64;
        let (reply, mut answer) = Answer::channel();
        let commit = Commit {
            stream: self.stream.clone(),
            prev_offset: self.offset.clone(),
            next_offset: next.to_owned(),
            charge: Some(self.meter.charge(held.bytes())),
            rows: held.rows,
            dead: held.dead,
            reply,
        };
        if self.shared.writer.send(commit).await.is_err() {
            return Err(Lost::Stopped);
        }
        let landed = tokio::select! {
            () = stop.cancelled() => return Err(Lost::Stopped),
            a = answer.landed() => a,
        };
        match landed {
            CommitOutcome::Committed => Ok(rows),
            CommitOutcome::Retry { committed, reason } => {
                self.offset = committed;
                Err(Lost::Writer(reason))
            }
            CommitOutcome::Stopped => Err(Lost::Stopped),
        }
    }

    /// One read on the lane, in one transaction: what was held first, then the rest of the
    /// body as it arrives; the rows and dead letters stored.
    async fn copy_read(
        &mut self,
        client: &mut Client,
        mut read: CatchUpRead,
        held: Pending,
        careful: bool,
    ) -> Result<u64, Lost> {
        let pg = |e: tokio_postgres::Error| {
            if is_data_error(&e) {
                Lost::Refused(describe(&e))
            } else {
                Lost::Pg(describe(&e))
            }
        };
        let next = read.next_offset.clone();
        let stream = self.stream.clone();
        let tx = client.transaction().await.map_err(pg)?;
        let mut out = Out::new(&stream, &next, careful);
        for row in held.rows {
            out.push(&tx, Decoded::Row(row)).await.map_err(pg)?;
        }
        for dead in held.dead {
            out.push(&tx, Decoded::Dead(dead)).await.map_err(pg)?;
        }
        loop {
            if let Some(item) = read.next_buffered() {
                out.push(&tx, decode(item, self.shared.max_event_bytes))
                    .await
                    .map_err(pg)?;
            } else if read.done() {
                break;
            } else {
                self.wait_for_room().await;
                match read.read().await {
                    Ok(BodyRead::Data(_) | BodyRead::Ended) => {}
                    Ok(BodyRead::Idle(after)) => {
                        return Err(Lost::Read(format!(
                            "the catch-up read sent no byte for {after:?}"
                        )));
                    }
                    Err(e) => return Err(Lost::Read(e.to_string())),
                }
            }
            self.meter
                .set_local(read.buffered_bytes() + out.buffered_bytes());
        }
        let (stored, dead) = out.finish(&tx).await.map_err(pg)?;
        let moves = [(stream.as_str(), self.offset.as_deref(), next.as_str())];
        let moved = copy::upsert_offsets(&tx, &moves).await.map_err(pg)?;
        if moved.is_empty() {
            let _ = tx.rollback().await;
            return Err(Lost::OffsetMoved);
        }
        tx.commit().await.map_err(pg)?;
        crate::observe::ingest().copied(&stream, stored - dead, dead);
        Ok(stored)
    }

    /// Waits while all streams together leave no room for another read (on the lane this
    /// stream's own buffers are flushed as they fill, so its own bound is not in the way).
    async fn wait_for_room(&self) {
        let budget = Arc::clone(&self.shared.budget);
        while self.meter.room(READ_HEADROOM) == Err(Full::Total) {
            tokio::select! {
                () = budget.released() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Reads the offset actually stored (after a transaction whose outcome is unknown),
    /// retrying until PostgreSQL answers; false when asked to stop first.
    pub(super) async fn resolve_offset(&mut self, stop: &CancellationToken) -> bool {
        let mut backoff = Backoff::default();
        loop {
            let found = async {
                let client = self.shared.target.connect().await?;
                super::store::offset(&client, &self.stream).await
            };
            match found.await {
                Ok(offset) => {
                    self.offset = offset;
                    return true;
                }
                Err(e) => {
                    tracing::warn!(stream = %self.stream, error = %e, "cannot read the stored offset; retrying");
                    self.report(Status::Retrying, Some(e.to_string()));
                }
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}

/// The lane's connection, opened again when it is missing or closed.
async fn connected<'c>(
    lane: &'c mut Option<Client>,
    target: &PgTarget,
) -> Result<&'c mut Client, String> {
    if lane.as_ref().is_none_or(Client::is_closed) {
        *lane = Some(target.connect().await.map_err(|e| e.to_string())?);
    }
    lane.as_mut().ok_or_else(|| "no connection".to_owned())
}
