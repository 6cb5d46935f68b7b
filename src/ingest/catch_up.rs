//! Catch-up reads: how a data event too large to hold until its control event gets stored.
//!
//! On SSE, the offset that rows are committed with (and that fills their `ds_offset`) comes
//! in the control event *after* the data, so rows must wait for it. A backlog sent as one
//! 100 MB event cannot wait in memory. A plain read of the stream from the committed offset
//! answers with the offset it ends at in its headers, before its body; so its rows can be
//! copied into PostgreSQL while the body arrives, in one transaction that stores that
//! offset at the end:
//!
//! ```text
//!  GET ?offset=committed ─▶ Stream-Next-Offset: N ─▶ BEGIN
//!        body [m, m, m, …] ─▶ split ─▶ decode ─▶ COPY chunks (dead letters between them)
//!        end of body ─────────────────────────▶ offset committed → N (checked), COMMIT
//! ```
//!
//! The commit rule holds: rows become durable only with the offset that covers them, and
//! the checked upsert refuses the commit if another process moved the offset. Reads repeat
//! until one says `Stream-Up-To-Date`; then the subscription goes back to SSE from there.
//! One catch-up runs at a time, on a connection of its own (the "lane"), so that commits of
//! other streams never wait behind a backlog.
//!
//! When PostgreSQL refuses a row (a value `jsonb` will not take), the transaction is lost;
//! the same read is done again carefully: each chunk of rows is copied behind a savepoint,
//! and a chunk that is refused is probed row by row so that only the refused rows become
//! dead letters. Only streams in JSON mode can be read this way (others answer with their
//! messages run together).

use std::sync::Arc;

use tokio_postgres::{Client, Transaction};
use tokio_util::sync::CancellationToken;

use super::copy::{self, CHUNK_BYTES, CopyIn, is_data_error};
use super::decode::{DeadLetter, Decoded, Row, decode};
use super::memory::{Full, READ_HEADROOM};
use super::state::Status;
use super::subscription::{Subscription, with_hint};
use crate::ds::{Backoff, BodyRead, CatchUpRead, DsError, OFFSET_START};
use crate::pg::{PgTarget, describe};

/// Dead letters of a catch-up are inserted once they hold this many bytes.
const DEAD_FLUSH_BYTES: usize = 256 * 1024;

/// How a catch-up ended.
pub(super) enum CatchUpEnd {
    /// Caught up: subscribe again from the new offset.
    Done,
    /// The stream is closed and stored to its end.
    Closed,
    /// The stream is not in JSON mode.
    NotJson,
    /// The stream does not exist (any more).
    NotFound,
    Stopped,
    /// Transient trouble; the offset is the stored one.
    Retry(String),
    /// Stop the subscription with this error.
    Failed(String),
}

/// Why one catch-up transaction did not commit.
enum Lost {
    /// The read broke or went silent: nothing was stored.
    Read(String),
    /// PostgreSQL refused a row.
    Refused(String),
    /// The connection failed or the server refused the transaction otherwise; whether the
    /// COMMIT happened is not known.
    Pg(String),
    /// The stored offset was not the one the read started from.
    OffsetMoved,
}

impl Subscription {
    /// Reads from the committed offset until up to date, storing each read in one
    /// transaction; see the module documentation.
    pub(super) async fn catch_up(&mut self, stop: &CancellationToken) -> CatchUpEnd {
        self.report(Status::CatchingUp, None);
        let shared = Arc::clone(&self.shared);
        let mut lane = tokio::select! {
            () = stop.cancelled() => return CatchUpEnd::Stopped,
            lane = shared.lane.lock() => lane,
        };
        let mut careful = false;
        loop {
            let from = self
                .offset
                .clone()
                .unwrap_or_else(|| OFFSET_START.to_owned());
            let opened = tokio::select! {
                () = stop.cancelled() => return CatchUpEnd::Stopped,
                r = shared.ds.read_stream(&self.stream, &from, shared.max_event_bytes) => r,
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
            let client = match connected(&mut lane, &shared.target).await {
                Ok(c) => c,
                Err(reason) => return CatchUpEnd::Retry(reason),
            };
            let stored = tokio::select! {
                () = stop.cancelled() => return CatchUpEnd::Stopped,
                r = self.store_read(client, read, careful) => r,
            };
            self.meter.set_local(0);
            match stored {
                Ok(rows) => {
                    tracing::info!(stream = %self.stream, from = %from, offset = %next, rows, "caught up by a catch-up read");
                    self.offset = Some(next);
                    self.committed(up_to_date, true);
                    if closed {
                        return CatchUpEnd::Closed;
                    }
                    if up_to_date {
                        return CatchUpEnd::Done;
                    }
                }
                Err(Lost::Refused(reason)) if !careful => {
                    tracing::warn!(stream = %self.stream, offset = %from, %reason, "PostgreSQL refused a row of a catch-up read; reading it again, finding the refused rows");
                    careful = true;
                }
                Err(Lost::Refused(reason)) => {
                    return CatchUpEnd::Failed(format!(
                        "PostgreSQL refuses a catch-up read of stream {:?} from offset {from}, \
                         and no single row of it: {reason}",
                        self.stream
                    ));
                }
                Err(Lost::Read(reason)) => return CatchUpEnd::Retry(reason),
                Err(Lost::Pg(reason)) => {
                    *lane = None;
                    return match self.resolve_offset(stop).await {
                        true => CatchUpEnd::Retry(reason),
                        false => CatchUpEnd::Stopped,
                    };
                }
                Err(Lost::OffsetMoved) => {
                    let moved = "the stored offset moved under this process (another ds-sync \
                                 ingesting the same stream?)";
                    return match self.resolve_offset(stop).await {
                        true => CatchUpEnd::Retry(moved.into()),
                        false => CatchUpEnd::Stopped,
                    };
                }
            }
        }
    }

    /// One read in one transaction; the rows stored.
    async fn store_read(
        &mut self,
        client: &mut Client,
        mut read: CatchUpRead,
        careful: bool,
    ) -> Result<u64, Lost> {
        let pg = |e: tokio_postgres::Error| {
            if is_data_error(&e) {
                Lost::Refused(describe(&e))
            } else {
                Lost::Pg(describe(&e))
            }
        };
        let tx = client.transaction().await.map_err(pg)?;
        let next = read.next_offset.clone();
        let stream = self.stream.clone();
        let mut out = Out::new(&stream, &next, careful);
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
        let rows = out.finish(&tx).await.map_err(pg)?;
        let moves = [(stream.as_str(), self.offset.as_deref(), next.as_str())];
        let moved = copy::upsert_offsets(&tx, &moves).await.map_err(pg)?;
        if moved.is_empty() {
            let _ = tx.rollback().await;
            return Err(Lost::OffsetMoved);
        }
        tx.commit().await.map_err(pg)?;
        Ok(rows)
    }

    /// Waits while all streams together leave no room for another read (this stream's own
    /// buffers are flushed as they fill, so its own bound is not in the way).
    async fn wait_for_room(&self) {
        let budget = Arc::clone(&self.shared.budget);
        while self.meter.room(READ_HEADROOM) == Err(Full::Total) {
            tokio::select! {
                () = budget.released() => {}
                () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
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

/// Where a catch-up's rows and dead letters go: one COPY streaming all rows (dead letters
/// inserted between COPY statements), or, carefully, a chunk at a time behind savepoints.
struct Out<'a> {
    stream: &'a str,
    offset: &'a str,
    careful: bool,
    copy: Option<CopyIn>,
    chunk: Vec<Row>,
    chunk_bytes: usize,
    dead: Vec<DeadLetter>,
    dead_bytes: usize,
    rows: u64,
}

impl<'a> Out<'a> {
    fn new(stream: &'a str, offset: &'a str, careful: bool) -> Out<'a> {
        Out {
            stream,
            offset,
            careful,
            copy: None,
            chunk: Vec::new(),
            chunk_bytes: 0,
            dead: Vec::new(),
            dead_bytes: 0,
            rows: 0,
        }
    }

    fn buffered_bytes(&self) -> usize {
        self.copy.as_ref().map_or(0, CopyIn::buffered_bytes) + self.chunk_bytes + self.dead_bytes
    }

    async fn push(
        &mut self,
        tx: &Transaction<'_>,
        decoded: Decoded,
    ) -> Result<(), tokio_postgres::Error> {
        match decoded {
            Decoded::Row(row) if self.careful => {
                self.chunk_bytes += row.memory_size();
                self.chunk.push(row);
                if self.chunk_bytes >= CHUNK_BYTES {
                    self.flush_chunk(tx).await?;
                }
            }
            Decoded::Row(row) => {
                if self.copy.is_none() {
                    self.copy = Some(CopyIn::start(tx).await?);
                }
                if let Some(copy) = self.copy.as_mut() {
                    copy.row(self.stream, &row, self.offset).await?;
                }
            }
            Decoded::Dead(dead) => {
                self.dead_bytes += dead.memory_size();
                self.dead.push(dead);
                if self.dead_bytes >= DEAD_FLUSH_BYTES {
                    self.flush_dead(tx).await?;
                }
            }
        }
        Ok(())
    }

    /// Ends the COPY in progress, then inserts the dead letters held.
    async fn flush_dead(&mut self, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
        self.end_copy().await?;
        self.flush_chunk(tx).await?;
        let (stream, offset) = (self.stream, self.offset);
        let refs: Vec<_> = self.dead.iter().map(|d| (stream, d, offset)).collect();
        copy::insert_dead_letters(tx, &refs).await?;
        self.dead.clear();
        self.dead_bytes = 0;
        Ok(())
    }

    async fn end_copy(&mut self) -> Result<(), tokio_postgres::Error> {
        if let Some(copy) = self.copy.take() {
            self.rows += copy.finish().await?;
        }
        Ok(())
    }

    /// Careful mode: copies the chunk behind a savepoint; a refused chunk is probed row by
    /// row and copied again without the refused rows, which become dead letters.
    async fn flush_chunk(&mut self, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.chunk);
        self.chunk_bytes = 0;
        tx.batch_execute("SAVEPOINT catch_up_chunk").await?;
        let (stream, offset) = (self.stream, self.offset);
        let refs: Vec<_> = rows.iter().map(|r| (stream, r, offset)).collect();
        match copy::copy_rows(tx, &refs).await {
            Ok(n) => {
                self.rows += n;
                return tx.batch_execute("RELEASE SAVEPOINT catch_up_chunk").await;
            }
            Err(e) if is_data_error(&e) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT catch_up_chunk")
                    .await?;
            }
            Err(e) => return Err(e),
        }
        let mut kept = Vec::with_capacity(rows.len());
        for row in rows {
            tx.batch_execute("SAVEPOINT catch_up_probe").await?;
            match tx.execute("SELECT $1::text::jsonb", &[&row.payload]).await {
                Ok(_) => {
                    tx.batch_execute("RELEASE SAVEPOINT catch_up_probe").await?;
                    kept.push(row);
                }
                Err(e) if is_data_error(&e) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT catch_up_probe")
                        .await?;
                    let error =
                        format!("PostgreSQL refused the message as jsonb: {}", describe(&e));
                    let dead = DeadLetter::new(error, row.payload.as_bytes());
                    self.dead_bytes += dead.memory_size();
                    self.dead.push(dead);
                }
                Err(e) => return Err(e),
            }
        }
        let refs: Vec<_> = kept.iter().map(|r| (stream, r, offset)).collect();
        self.rows += copy::copy_rows(tx, &refs).await?;
        tx.batch_execute("RELEASE SAVEPOINT catch_up_chunk").await
    }

    /// Everything held goes in; the rows stored.
    async fn finish(mut self, tx: &Transaction<'_>) -> Result<u64, tokio_postgres::Error> {
        self.flush_dead(tx).await?;
        Ok(self.rows)
    }
}
