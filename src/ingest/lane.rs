//! The lane's writing: where the rows and dead letters of a catch-up read that is copied
//! while it arrives go, inside the read's one transaction (see [`catch_up`](super::catch_up)).
//!
//! Fast mode streams every row through one COPY statement; dead letters, which need an
//! INSERT, are gathered and inserted between COPY statements once they hold
//! [`DEAD_FLUSH_BYTES`]. Careful mode (after PostgreSQL refused a row of the same read) copies
//! a chunk of rows at a time behind a savepoint, and probes a refused chunk row by row, each
//! probe behind a savepoint of its own, so that only the refused rows become dead letters.

use tokio_postgres::Transaction;

use super::copy::{self, CHUNK_BYTES, CopyIn, is_data_error};
use super::decode::{DeadLetter, Decoded, Row};
use crate::pg::describe;

/// Dead letters are inserted once they hold this many bytes.
const DEAD_FLUSH_BYTES: usize = 256 * 1024;

/// Where a lane catch-up's rows and dead letters go: one COPY streaming all rows (dead
/// letters inserted between COPY statements), or, carefully, a chunk at a time behind
/// savepoints.
pub(super) struct Out<'a> {
    stream: &'a str,
    offset: &'a str,
    careful: bool,
    copy: Option<CopyIn>,
    chunk: Vec<Row>,
    chunk_bytes: usize,
    dead: Vec<DeadLetter>,
    dead_bytes: usize,
    /// Dead letters among `stored`.
    dead_stored: u64,
    stored: u64,
}

impl<'a> Out<'a> {
    pub(super) fn new(stream: &'a str, offset: &'a str, careful: bool) -> Out<'a> {
        Out {
            stream,
            offset,
            careful,
            copy: None,
            chunk: Vec::new(),
            chunk_bytes: 0,
            dead: Vec::new(),
            dead_bytes: 0,
            dead_stored: 0,
            stored: 0,
        }
    }

    pub(super) fn buffered_bytes(&self) -> usize {
        self.copy.as_ref().map_or(0, CopyIn::buffered_bytes) + self.chunk_bytes + self.dead_bytes
    }

    pub(super) async fn push(
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
                    self.copy = Some(CopyIn::start(tx, copy::COPY_SQL).await?);
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
        if let Some(copy) = self.copy.take() {
            self.stored += copy.finish().await?;
        }
        self.flush_chunk(tx).await?;
        let (stream, offset) = (self.stream, self.offset);
        let refs: Vec<_> = self.dead.iter().map(|d| (stream, d, offset)).collect();
        copy::insert_dead_letters(tx, &refs).await?;
        self.stored += refs.len() as u64;
        self.dead_stored += refs.len() as u64;
        self.dead.clear();
        self.dead_bytes = 0;
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
        let (stream, offset) = (self.stream, self.offset);
        tx.batch_execute("SAVEPOINT catch_up_chunk").await?;
        let refs: Vec<_> = rows.iter().map(|r| (stream, r, offset)).collect();
        match copy::copy_rows(tx, copy::COPY_SQL, &refs).await {
            Ok(n) => {
                self.stored += n;
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
        self.stored += copy::copy_rows(tx, copy::COPY_SQL, &refs).await?;
        tx.batch_execute("RELEASE SAVEPOINT catch_up_chunk").await
    }

    /// Everything held goes in; the rows and dead letters stored, and how many of them
    /// are dead letters.
    pub(super) async fn finish(
        mut self,
        tx: &Transaction<'_>,
    ) -> Result<(u64, u64), tokio_postgres::Error> {
        self.flush_dead(tx).await?;
        Ok((self.stored, self.dead_stored))
    }
}
