//! Transactions the walsender streams while they still run (`--pgoutput-protocol 2`),
//! held until they end.
//!
//! ```text
//!  S xid ─▶ I/U/D/R/... (xid or a subxact's id) ─▶ E     (blocks, interleaved by xid)
//!                      │
//!                      ▼ append                   c xid: replay, in order, as one
//!  Held: one log per xid ─ memory, or a spill file        transaction at its commit LSN
//!        + where each subtransaction starts               A xid: drop the log
//!                                                          A xid sub: cut at sub's start
//! ```
//!
//! Nothing of a streamed transaction is sent before its Stream Commit: only then is its
//! commit LSN known, and `Stream-Seq` is `(commit LSN, index)`, so the replay numbers the
//! transaction exactly as a non-streamed one (or a replay after a restart, when the
//! walsender streams every unconfirmed transaction again from its first block).
//!
//! Memory is bounded: logs stay in memory while all of them together hold less than the
//! bound; the log that crosses it moves to an anonymous temporary file (deleted by the OS
//! when closed) and grows there. A log is a sequence of frames, `u32` length then the
//! message without its transaction id (tag and body), so a replay decodes it as v1.
//!
//! A subtransaction's abort (`ROLLBACK TO SAVEPOINT`) cuts the log where that
//! subtransaction's first message was: PostgreSQL nests subtransactions and streams in WAL
//! order, so everything after that point belongs to it or to its own subtransactions. The
//! schema messages (Relation, Type) cut with it are appended again: pgoutput counts a schema
//! as sent for the whole transaction and does not send it twice.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use bytes::Bytes;

use crate::pgoutput::{DecodeError, MessageKind, StreamAbort, StreamStart, split_streamed};

/// Default bound of the memory held by streamed transactions before they spill to files.
/// PostgreSQL streams a transaction only once it passed `logical_decoding_work_mem` (64 MB
/// by default), so nearly every streamed transaction spills anyway; the bound is kept small
/// so that holding one adds little to the peak RSS of its replay (`bench memory -- \
/// --pgoutput-protocol 2`: the replay's queues and POSTs are the peak).
pub const DEFAULT_MEMORY_BYTES: usize = 1 << 20;

/// Why a streamed transaction could not be held or replayed.
#[derive(Debug, thiserror::Error)]
pub enum StreamedError {
    /// A stream block's message is not one pgoutput v2 sends there.
    #[error("stream block of transaction {xid}: {source}")]
    Decode {
        xid: u32,
        #[source]
        source: DecodeError,
    },
    /// A change, or a Stream Stop, arrived outside a stream block.
    #[error("{what} outside a stream block")]
    OutsideBlock { what: &'static str },
    /// A later block, or a Stream Commit, of a transaction whose first block this session
    /// did not see.
    #[error("{what} of streamed transaction {xid}, whose first block this session did not see")]
    UnknownTransaction { what: &'static str, xid: u32 },
    /// The spill file could not be written or read back.
    #[error("streamed transaction {xid}: {what} its spill file in {dir}: {source}")]
    Spill {
        xid: u32,
        what: &'static str,
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

impl StreamedError {
    /// Whether reconnecting can help: a confused stream is read again from the slot's
    /// confirmed position, where the walsender starts every open transaction afresh. Spill
    /// failures (a full or unwritable disk) need the operator.
    pub fn is_transient(&self) -> bool {
        !matches!(self, StreamedError::Spill { .. })
    }
}

/// Every in-progress streamed transaction of one replication session.
pub struct Streamed {
    held: HashMap<u32, Held>,
    /// The transaction of the open stream block.
    current: Option<u32>,
    /// Bytes of all in-memory logs.
    memory: usize,
    memory_limit: usize,
    spill_dir: PathBuf,
}

impl Streamed {
    /// Holds up to `memory_limit` bytes in memory; beyond, logs go to files in `spill_dir`.
    pub fn new(memory_limit: usize, spill_dir: PathBuf) -> Streamed {
        Streamed {
            held: HashMap::new(),
            current: None,
            memory: 0,
            memory_limit,
            spill_dir,
        }
    }

    /// Whether any transaction is in progress (held, not yet committed or aborted).
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Bytes held in memory over all transactions.
    pub fn memory_bytes(&self) -> usize {
        self.memory
    }

    /// A Stream Start: the messages up to the next Stream Stop belong to `start.xid`.
    pub fn start(&mut self, start: StreamStart) -> Result<(), StreamedError> {
        if start.first_segment {
            if let Some(old) = self.held.remove(&start.xid) {
                self.memory -= old.log.memory_bytes();
            }
            self.held.insert(start.xid, Held::default());
        } else if !self.held.contains_key(&start.xid) {
            return Err(StreamedError::UnknownTransaction {
                what: "a later stream block",
                xid: start.xid,
            });
        }
        self.current = Some(start.xid);
        Ok(())
    }

    /// A Stream Stop: the block ends.
    pub fn stop(&mut self) -> Result<(), StreamedError> {
        self.current
            .take()
            .map(|_| ())
            .ok_or(StreamedError::OutsideBlock {
                what: "a Stream Stop",
            })
    }

    /// Whether a stream block is open: the next message is one of its changes.
    pub fn in_block(&self) -> bool {
        self.current.is_some()
    }

    /// One message of the open block, as sent (with its transaction id).
    pub fn append(&mut self, data: &[u8]) -> Result<(), StreamedError> {
        let xid = self
            .current
            .ok_or(StreamedError::OutsideBlock { what: "a change" })?;
        let change =
            split_streamed(data).map_err(|source| StreamedError::Decode { xid, source })?;
        // A Stream Abort inside the block would have dropped it: never from PostgreSQL.
        let held = self
            .held
            .get_mut(&xid)
            .ok_or(StreamedError::UnknownTransaction {
                what: "a change",
                xid,
            })?;
        let at = held.log.len();
        if change.xid != xid && !held.subxacts.iter().any(|(sub, _)| *sub == change.xid) {
            held.subxacts.push((change.xid, at));
        }
        if matches!(change.kind, MessageKind::Relation | MessageKind::Type) {
            let mut message = vec![change.kind.tag()];
            message.extend_from_slice(change.body);
            held.schema.push((at, message));
        }
        let before = held.log.memory_bytes();
        held.log
            .push(change.kind.tag(), change.body)
            .map_err(|e| spill_error(xid, "writing", &self.spill_dir, e))?;
        self.memory = self.memory - before + held.log.memory_bytes();
        if self.memory > self.memory_limit && held.log.memory_bytes() > 0 {
            let moved = held.log.memory_bytes();
            held.log
                .spill(&self.spill_dir)
                .map_err(|e| spill_error(xid, "creating", &self.spill_dir, e))?;
            self.memory -= moved;
            tracing::debug!(xid, bytes = moved, "streamed transaction spilled to a file");
        }
        Ok(())
    }

    /// A Stream Abort: the whole transaction goes, or the aborted subtransaction's part.
    pub fn abort(&mut self, abort: StreamAbort) -> Result<(), StreamedError> {
        if abort.is_top_level() {
            if let Some(held) = self.held.remove(&abort.xid) {
                self.memory -= held.log.memory_bytes();
            }
            return Ok(());
        }
        let Some(held) = self.held.get_mut(&abort.xid) else {
            return Ok(());
        };
        let Some(i) = held
            .subxacts
            .iter()
            .position(|(sub, _)| *sub == abort.subxact_xid)
        else {
            // Nothing of it was streamed.
            return Ok(());
        };
        let before = held.log.memory_bytes();
        held.cut(i)
            .map_err(|e| spill_error(abort.xid, "cutting", &self.spill_dir, e))?;
        self.memory = self.memory - before + held.log.memory_bytes();
        Ok(())
    }

    /// A Stream Commit: the transaction's messages, in order, for a replay.
    pub fn commit(&mut self, xid: u32) -> Result<Replay, StreamedError> {
        let held = self
            .held
            .remove(&xid)
            .ok_or(StreamedError::UnknownTransaction {
                what: "the Stream Commit",
                xid,
            })?;
        self.memory -= held.log.memory_bytes();
        let dir = &self.spill_dir;
        held.log
            .into_replay(xid, dir.clone())
            .map_err(|e| spill_error(xid, "reading", dir, e))
    }
}

fn spill_error(
    xid: u32,
    what: &'static str,
    dir: &std::path::Path,
    source: std::io::Error,
) -> StreamedError {
    StreamedError::Spill {
        xid,
        what,
        dir: dir.display().to_string(),
        source,
    }
}

/// One in-progress transaction.
#[derive(Default)]
struct Held {
    log: Log,
    /// Each subtransaction with the log position of its first message, in that order.
    subxacts: Vec<(u32, u64)>,
    /// The Relation and Type messages with their positions: kept through subtransaction
    /// aborts.
    schema: Vec<(u64, Vec<u8>)>,
}

impl Held {
    /// Cuts the log where subtransaction `i` began, forgets it and those after it, and
    /// appends again the schema messages that were cut.
    fn cut(&mut self, i: usize) -> std::io::Result<()> {
        let at = self.subxacts[i].1;
        self.subxacts.truncate(i);
        self.log.truncate(at)?;
        let cut = self
            .schema
            .split_off(self.schema.partition_point(|(pos, _)| *pos < at));
        for (_, message) in cut {
            let pos = self.log.len();
            self.log.push(message[0], &message[1..])?;
            self.schema.push((pos, message));
        }
        Ok(())
    }
}

/// Frames of `u32` length and message, in memory or in a file.
enum Log {
    Memory(Vec<u8>),
    File { file: BufWriter<File>, len: u64 },
}

impl Default for Log {
    fn default() -> Log {
        Log::Memory(Vec::new())
    }
}

impl Log {
    fn len(&self) -> u64 {
        match self {
            Log::Memory(buf) => buf.len() as u64,
            Log::File { len, .. } => *len,
        }
    }

    fn memory_bytes(&self) -> usize {
        match self {
            Log::Memory(buf) => buf.capacity(),
            Log::File { .. } => 0,
        }
    }

    fn push(&mut self, tag: u8, body: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(body.len() + 1).map_err(std::io::Error::other)?;
        match self {
            Log::Memory(buf) => {
                buf.extend_from_slice(&len.to_be_bytes());
                buf.push(tag);
                buf.extend_from_slice(body);
            }
            Log::File { file, len: total } => {
                file.write_all(&len.to_be_bytes())?;
                file.write_all(&[tag])?;
                file.write_all(body)?;
                *total += 4 + u64::from(len);
            }
        }
        Ok(())
    }

    /// Moves an in-memory log to a new anonymous file in `dir`.
    fn spill(&mut self, dir: &std::path::Path) -> std::io::Result<()> {
        let Log::Memory(buf) = self else {
            return Ok(());
        };
        let mut file = BufWriter::with_capacity(SPILL_WRITE_BUFFER, tempfile::tempfile_in(dir)?);
        file.write_all(buf)?;
        let len = buf.len() as u64;
        *self = Log::File { file, len };
        Ok(())
    }

    fn truncate(&mut self, at: u64) -> std::io::Result<()> {
        match self {
            Log::Memory(buf) => buf.truncate(usize::try_from(at).unwrap_or(usize::MAX)),
            Log::File { file, len } => {
                file.flush()?;
                file.get_mut().set_len(at)?;
                file.get_mut().seek(SeekFrom::Start(at))?;
                *len = at;
            }
        }
        Ok(())
    }

    fn into_replay(self, xid: u32, dir: PathBuf) -> std::io::Result<Replay> {
        let source = match self {
            Log::Memory(buf) => Source::Memory(Bytes::from(buf)),
            Log::File { file, .. } => {
                let mut file = file.into_inner().map_err(|e| e.into_error())?;
                file.seek(SeekFrom::Start(0))?;
                Source::File(BufReader::with_capacity(SPILL_READ_BUFFER, file))
            }
        };
        Ok(Replay { xid, dir, source })
    }
}

const SPILL_WRITE_BUFFER: usize = 256 << 10;
const SPILL_READ_BUFFER: usize = 256 << 10;

/// A committed streamed transaction's messages, read back one at a time (a large one is
/// never all in memory at once when it spilled).
pub struct Replay {
    xid: u32,
    /// Where the spill file is, for errors.
    dir: PathBuf,
    source: Source,
}

enum Source {
    Memory(Bytes),
    File(BufReader<File>),
}

impl Replay {
    /// The transaction's id.
    pub fn xid(&self) -> u32 {
        self.xid
    }

    /// The next message (tag and body, as [`decode`](crate::pgoutput::decode) reads it), or
    /// `None` after the last.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, StreamedError> {
        let xid = self.xid;
        match &mut self.source {
            Source::Memory(buf) => {
                let Some((len, _)) = buf.split_first_chunk::<4>() else {
                    return Ok(None);
                };
                let len = u32::from_be_bytes(*len) as usize;
                let mut frame = buf.split_to(4 + len);
                Ok(Some(frame.split_off(4)))
            }
            Source::File(file) => {
                let mut len = [0u8; 4];
                match file.read_exact(&mut len) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                    Err(e) => return Err(spill_error(xid, "reading", &self.dir, e)),
                }
                let mut message = vec![0u8; u32::from_be_bytes(len) as usize];
                file.read_exact(&mut message)
                    .map_err(|e| spill_error(xid, "reading", &self.dir, e))?;
                Ok(Some(Bytes::from(message)))
            }
        }
    }
}

#[cfg(test)]
mod tests;
