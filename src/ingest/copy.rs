//! Rows to PostgreSQL's binary COPY format, and the statements that go with them: the COPY
//! itself, dead letters, the checked offset upsert, and the probe that finds the rows `jsonb`
//! refuses. Shared by the commit writer (many streams' small batches in one transaction) and
//! catch-up reads (one stream's backlog copied while it arrives).
//!
//! The encoding is done here rather than through a generic `ToSql` writer so that the rows
//! go out in large chunks of known size ([`CHUNK_BYTES`]) whose memory is accounted for, and
//! so that the payload is sent as the text that arrived (`jsonb` binary input is a version
//! byte and the JSON text: PostgreSQL parses the original, nothing is re-serialized).
//!
//! ```text
//!  header  "PGCOPY\n\xff\r\n\0", flags 0, extension 0
//!  tuple   6 fields: stream_name, event_key, event_type, operation, payload (jsonb), ds_offset
//!          each: i32 length (-1 for NULL), then the bytes
//!  trailer i16 -1
//! ```

use std::collections::HashSet;
use std::pin::Pin;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::types::Type;
use tokio_postgres::{CopyInSink, ToStatement, Transaction};

use super::decode::{DeadLetter, Row};

/// The COPY statement all rows go through.
pub const COPY_SQL: &str = "COPY public.session_events \
    (stream_name, event_key, event_type, operation, payload, ds_offset) FROM STDIN (FORMAT binary)";
/// Encoded rows are sent once this many bytes are ready.
pub const CHUNK_BYTES: usize = 256 * 1024;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
const FIELDS: i16 = 6;
/// `jsonb` binary format version.
const JSONB_VERSION: u8 = 1;

/// A buffer of encoded COPY data: the header first, then tuples, then the trailer.
#[derive(Debug)]
pub struct CopyBuf {
    buf: BytesMut,
}

impl Default for CopyBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl CopyBuf {
    /// A buffer that starts with the COPY header.
    #[must_use]
    pub fn new() -> CopyBuf {
        let mut buf = BytesMut::with_capacity(64);
        buf.put_slice(SIGNATURE);
        buf.put_i32(0);
        buf.put_i32(0);
        CopyBuf { buf }
    }

    /// Encodes one row of `stream` committed at `ds_offset` (the row's own offset wins).
    pub fn row(&mut self, stream: &str, row: &Row, ds_offset: &str) {
        let ds_offset = row.ds_offset.as_deref().unwrap_or(ds_offset);
        self.buf
            .reserve(row.payload.len() + stream.len() + ds_offset.len() + 64);
        self.buf.put_i16(FIELDS);
        put_text(&mut self.buf, Some(stream.as_bytes()));
        put_text(&mut self.buf, row.event_key().as_deref().map(str::as_bytes));
        put_text(
            &mut self.buf,
            row.event_type().as_deref().map(str::as_bytes),
        );
        put_text(&mut self.buf, row.operation().as_deref().map(str::as_bytes));
        self.buf.put_i32(field_len(row.payload.len() + 1));
        self.buf.put_u8(JSONB_VERSION);
        self.buf.put_slice(row.payload.as_bytes());
        put_text(&mut self.buf, Some(ds_offset.as_bytes()));
    }

    /// Ends the COPY data.
    pub fn trailer(&mut self) {
        self.buf.put_i16(-1);
    }

    /// Bytes encoded and not taken yet.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes held (capacity).
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Takes what is encoded so far, to be sent.
    pub fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }
}

/// A length as the i32 of the wire format (saturated; PostgreSQL refuses a field of 1 GB
/// or more anyway, and no message that size gets this far).
fn field_len(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

fn put_text(buf: &mut BytesMut, text: Option<&[u8]>) {
    match text {
        Some(t) => {
            buf.put_i32(field_len(t.len()));
            buf.put_slice(t);
        }
        None => buf.put_i32(-1),
    }
}

/// One COPY statement in progress: rows are encoded into a [`CopyBuf`] and sent in
/// [`CHUNK_BYTES`] chunks; `finish` sends the rest and the trailer.
pub struct CopyIn {
    sink: Pin<Box<CopyInSink<Bytes>>>,
    buf: CopyBuf,
    rows: usize,
}

impl CopyIn {
    /// Starts `COPY ... FROM STDIN (FORMAT binary)` in `tx`: `statement` is [`COPY_SQL`],
    /// or the statement prepared from it once per connection (a busy writer saves the
    /// round trip that preparing it costs in every transaction).
    ///
    /// # Errors
    ///
    /// The server's refusal.
    pub async fn start<T>(
        tx: &Transaction<'_>,
        statement: &T,
    ) -> Result<CopyIn, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        let sink = tx.copy_in::<_, Bytes>(statement).await?;
        Ok(CopyIn {
            sink: Box::pin(sink),
            buf: CopyBuf::new(),
            rows: 0,
        })
    }

    /// Adds a row; sends a chunk once enough is encoded.
    ///
    /// # Errors
    ///
    /// The connection failed, or the server refused the COPY (it reports that when the data
    /// is sent, at the latest at `finish`).
    pub async fn row(
        &mut self,
        stream: &str,
        row: &Row,
        ds_offset: &str,
    ) -> Result<(), tokio_postgres::Error> {
        self.buf.row(stream, row, ds_offset);
        self.rows += 1;
        if self.buf.len() >= CHUNK_BYTES {
            let chunk = self.buf.take();
            self.sink.send(chunk).await?;
        }
        Ok(())
    }

    /// Bytes encoded and not sent yet.
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Rows added so far.
    #[must_use]
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Sends the rest and ends the COPY.
    ///
    /// # Errors
    ///
    /// As [`row`](Self::row).
    pub async fn finish(mut self) -> Result<u64, tokio_postgres::Error> {
        self.buf.trailer();
        let chunk = self.buf.take();
        self.sink.send(chunk).await?;
        self.sink.as_mut().finish().await
    }
}

/// Copies `rows` of `stream` (whose offset is `ds_offset` unless a row has its own).
///
/// # Errors
///
/// As [`CopyIn::row`].
pub async fn copy_rows<T>(
    tx: &Transaction<'_>,
    statement: &T,
    rows: &[(&str, &Row, &str)],
) -> Result<u64, tokio_postgres::Error>
where
    T: ?Sized + ToStatement,
{
    if rows.is_empty() {
        return Ok(0);
    }
    let mut copy = CopyIn::start(tx, statement).await?;
    for (stream, row, ds_offset) in rows {
        copy.row(stream, row, ds_offset).await?;
    }
    copy.finish().await
}

/// Inserts dead letters, each of `stream` with its own offset or `ds_offset`, and logs each.
///
/// # Errors
///
/// The statement failed.
pub async fn insert_dead_letters(
    tx: &Transaction<'_>,
    dead: &[(&str, &DeadLetter, &str)],
) -> Result<(), tokio_postgres::Error> {
    let dead: Vec<(&str, &DeadLetter, &str)> = dead
        .iter()
        .map(|&(s, d, o)| (s, d, d.ds_offset.as_deref().unwrap_or(o)))
        .collect();
    if dead.is_empty() {
        return Ok(());
    }
    for (stream, d, offset) in &dead {
        tracing::warn!(%stream, %offset, error = %d.error, size = d.size, "dead letter");
    }
    let streams: Vec<&str> = dead.iter().map(|(s, _, _)| *s).collect();
    let offsets: Vec<&str> = dead.iter().map(|(_, _, o)| *o).collect();
    let errors: Vec<&str> = dead.iter().map(|(_, d, _)| d.error.as_str()).collect();
    let raws: Vec<&[u8]> = dead.iter().map(|(_, d, _)| d.raw.as_slice()).collect();
    let sizes: Vec<i64> = dead
        .iter()
        .map(|(_, d, _)| i64::try_from(d.size).unwrap_or(i64::MAX))
        .collect();
    let truncated: Vec<bool> = dead.iter().map(|(_, d, _)| d.truncated).collect();
    // Typed parameters: Parse, Bind and Execute go in one round trip (no prepare first).
    tx.query_typed(
        "INSERT INTO ds_sync.dead_letters (stream_name, ds_offset, error, raw, size, truncated) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::int8[], $6::bool[])",
        &[
            (&streams, Type::TEXT_ARRAY),
            (&offsets, Type::TEXT_ARRAY),
            (&errors, Type::TEXT_ARRAY),
            (&raws, Type::BYTEA_ARRAY),
            (&sizes, Type::INT8_ARRAY),
            (&truncated, Type::BOOL_ARRAY),
        ],
    )
    .await?;
    Ok(())
}

/// Moves each stream's stored offset from its previous value to the next; returns the
/// streams whose offset moved (one missing had another stored offset: another process).
///
/// # Errors
///
/// The statement failed.
pub async fn upsert_offsets(
    tx: &Transaction<'_>,
    moves: &[(&str, Option<&str>, &str)],
) -> Result<HashSet<String>, tokio_postgres::Error> {
    let streams: Vec<&str> = moves.iter().map(|m| m.0).collect();
    let prev: Vec<Option<&str>> = moves.iter().map(|m| m.1).collect();
    let next: Vec<&str> = moves.iter().map(|m| m.2).collect();
    // Typed parameters: one round trip per transaction instead of a prepare and an execute.
    let rows = tx
        .query_typed(
            "WITH input AS ( \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS i(stream_name, next, prev)) \
             INSERT INTO ds_sync.stream_offsets AS o (stream_name, ds_offset) \
             SELECT stream_name, next FROM input \
             ON CONFLICT (stream_name) DO UPDATE SET ds_offset = EXCLUDED.ds_offset, updated_at = now() \
             WHERE o.ds_offset = (SELECT prev FROM input WHERE input.stream_name = EXCLUDED.stream_name) \
             RETURNING o.stream_name",
            &[
                (&streams, Type::TEXT_ARRAY),
                (&next, Type::TEXT_ARRAY),
                (&prev, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether PostgreSQL refused the data itself (`jsonb` input, a value out of range, a
/// program limit): then the rows it refuses can be found and set aside.
#[must_use]
pub fn is_data_error(e: &tokio_postgres::Error) -> bool {
    crate::pg::classify(e) == crate::pg::ErrorClass::Data
}

/// Probes each row's payload as `jsonb` (on a connection with no failed transaction) and
/// turns the refused ones into dead letters; returns the rows kept and the dead letters.
///
/// # Errors
///
/// A failure that is not about the data.
pub async fn probe_rows(
    client: &impl tokio_postgres::GenericClient,
    rows: Vec<Row>,
) -> Result<(Vec<Row>, Vec<DeadLetter>), tokio_postgres::Error> {
    let mut kept = Vec::with_capacity(rows.len());
    let mut dead = Vec::new();
    for row in rows {
        match client
            .execute("SELECT $1::text::jsonb", &[&row.payload])
            .await
        {
            Ok(_) => kept.push(row),
            Err(e) if is_data_error(&e) => {
                let error = format!(
                    "PostgreSQL refused the message as jsonb: {}",
                    crate::pg::describe(&e)
                );
                let mut d = DeadLetter::new(error, row.payload.as_bytes());
                d.ds_offset = row.ds_offset;
                dead.push(d);
            }
            Err(e) => return Err(e),
        }
    }
    Ok((kept, dead))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::Pending;

    fn row_of(message: &str) -> Row {
        let mut p = Pending::default();
        p.push_data(format!("[{message}]").as_bytes(), 1 << 20);
        assert!(p.dead.is_empty(), "{:?}", p.dead);
        p.rows.remove(0)
    }

    /// Reads one field of the tuple at `pos`; returns it and the position after it.
    fn field(buf: &[u8], pos: usize) -> (Option<&[u8]>, usize) {
        let len = i32::from_be_bytes(buf[pos..pos + 4].try_into().unwrap());
        if len < 0 {
            return (None, pos + 4);
        }
        let end = pos + 4 + len as usize;
        (Some(&buf[pos + 4..end]), end)
    }

    #[test]
    fn a_row_encodes_as_a_binary_copy_tuple() {
        let row = row_of(r#"{"key":"k\"1","type":7,"headers":{"operation":"insert"}}"#);
        let mut c = CopyBuf::new();
        c.row("s/1", &row, "0_9");
        c.trailer();
        let buf = c.take();
        assert_eq!(&buf[..11], SIGNATURE);
        assert_eq!(&buf[11..19], &[0; 8]);
        assert_eq!(i16::from_be_bytes([buf[19], buf[20]]), 6);
        let mut pos = 21;
        let mut fields = Vec::new();
        for _ in 0..6 {
            let (f, next) = field(&buf, pos);
            fields.push(f.map(<[u8]>::to_vec));
            pos = next;
        }
        assert_eq!(fields[0].as_deref(), Some(&b"s/1"[..]));
        assert_eq!(fields[1].as_deref(), Some(&b"k\"1"[..]), "unescaped key");
        assert_eq!(fields[2].as_deref(), Some(&b"7"[..]));
        assert_eq!(fields[3].as_deref(), Some(&b"insert"[..]));
        let payload = fields[4].clone().unwrap();
        assert_eq!(payload[0], 1, "jsonb version byte");
        assert_eq!(&payload[1..], row.payload.as_bytes());
        assert_eq!(fields[5].as_deref(), Some(&b"0_9"[..]));
        assert_eq!(&buf[pos..], &(-1i16).to_be_bytes());
    }

    #[test]
    fn null_fields_and_a_row_offset_of_its_own() {
        let mut row = row_of("[1]");
        row.ds_offset = Some("own".into());
        let mut c = CopyBuf::new();
        c.row("s", &row, "commit");
        let buf = c.take();
        let mut pos = 21;
        let mut fields = Vec::new();
        for _ in 0..6 {
            let (f, next) = field(&buf, pos);
            fields.push(f.map(<[u8]>::to_vec));
            pos = next;
        }
        assert_eq!(fields[1..4], [None, None, None]);
        assert_eq!(fields[5].as_deref(), Some(&b"own"[..]));
        assert_eq!(pos, buf.len());
    }

    #[test]
    fn take_leaves_an_empty_buffer_for_more_tuples() {
        let row = row_of("1");
        let mut c = CopyBuf::new();
        c.row("s", &row, "o");
        let first = c.take();
        assert!(c.is_empty());
        c.row("s", &row, "o");
        let second = c.take();
        assert_eq!(first.len(), 19 + second.len(), "the header only once");
    }
}
