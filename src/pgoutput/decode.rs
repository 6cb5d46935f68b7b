//! Message bodies: one function per pgoutput v1 message, in wire order.
//!
//! `decode` reads the tag, hands the rest to the body function through a
//! [`Reader`], then insists the buffer is used up. Counts from the wire only
//! bound a `Vec`'s capacity after being capped by the bytes that remain, so a
//! forged count cannot make the decoder allocate more than the input's size.

use bytes::Bytes;

use super::error::DecodeError;
use super::messages::{
    Begin, Column, Commit, Delete, Insert, LogicalMessage, MessageKind, Origin, PgOutputMessage,
    Relation, ReplicaIdentity, StreamAbort, StreamCommit, StreamStart, StreamedChange, Truncate,
    TupleData, TupleValue, TypeMessage, Update,
};
use super::reader::Reader;

/// The fewest bytes one Relation column can take: flags, an empty name's NUL,
/// type oid and type modifier.
const MIN_COLUMN_LEN: usize = 1 + 1 + 4 + 4;

/// Decodes one complete pgoutput message (the payload of one XLogData): v1's, and the
/// stream markers of v2. A message inside a stream block goes through [`split_streamed`]
/// first.
///
/// Column values and logical message contents are slices of `buf`. Fails on
/// empty input, an unknown tag, any field past the end of `buf` and any byte
/// left over after the message.
pub fn decode(buf: &Bytes) -> Result<PgOutputMessage, DecodeError> {
    let &tag = buf.first().ok_or(DecodeError::Empty)?;
    let kind = MessageKind::from_tag(tag).ok_or(DecodeError::UnknownTag { tag })?;
    let mut reader = Reader::after_tag(buf, kind);
    let message = match kind {
        MessageKind::Begin => PgOutputMessage::Begin(begin(&mut reader)?),
        MessageKind::Commit => PgOutputMessage::Commit(commit(&mut reader)?),
        MessageKind::Origin => PgOutputMessage::Origin(origin(&mut reader)?),
        MessageKind::Relation => PgOutputMessage::Relation(relation(&mut reader)?),
        MessageKind::Type => PgOutputMessage::Type(type_message(&mut reader)?),
        MessageKind::Insert => PgOutputMessage::Insert(insert(&mut reader)?),
        MessageKind::Update => PgOutputMessage::Update(update(&mut reader)?),
        MessageKind::Delete => PgOutputMessage::Delete(delete(&mut reader)?),
        MessageKind::Truncate => PgOutputMessage::Truncate(truncate(&mut reader)?),
        MessageKind::Message => PgOutputMessage::Message(logical_message(&mut reader)?),
        MessageKind::StreamStart => PgOutputMessage::StreamStart(stream_start(&mut reader)?),
        MessageKind::StreamStop => PgOutputMessage::StreamStop,
        MessageKind::StreamCommit => PgOutputMessage::StreamCommit(stream_commit(&mut reader)?),
        MessageKind::StreamAbort => PgOutputMessage::StreamAbort(stream_abort(&mut reader)?),
    };
    reader.finish()?;
    Ok(message)
}

/// Splits one message of a stream block (v2, between Stream Start and Stream Stop) into its
/// kind, the (sub)transaction id after the tag, and the body; `tag` + `body` is the message
/// as [`decode`] reads it. Only the body is left undecoded: the caller keeps it until the
/// transaction commits. Fails on empty input, an unknown tag, a message that never carries
/// an id (Begin, Commit, Origin, the stream markers) and an id cut short.
pub fn split_streamed(buf: &[u8]) -> Result<StreamedChange<'_>, DecodeError> {
    let &tag = buf.first().ok_or(DecodeError::Empty)?;
    let kind = MessageKind::from_tag(tag).ok_or(DecodeError::UnknownTag { tag })?;
    if !kind.streamable() {
        return Err(DecodeError::NotStreamable { message: kind });
    }
    let Some((xid, body)) = buf[1..].split_first_chunk::<4>() else {
        return Err(DecodeError::Truncated {
            message: kind,
            offset: 1,
            needed: 4,
            available: buf.len() - 1,
        });
    };
    Ok(StreamedChange {
        kind,
        xid: u32::from_be_bytes(*xid),
        body,
    })
}

/// The body of a fuzz target: decodes arbitrary bytes and discards the result.
///
/// Any input must return, never panic. A `cargo fuzz` target needs nothing
/// more than `fuzz_target!(|data: &[u8]| pgoutput::fuzz_decode(data));`; the
/// unit tests run the same body over mutated recorded messages.
pub fn fuzz_decode(data: &[u8]) {
    let _ = decode(&Bytes::copy_from_slice(data));
    // The same bytes as a message of a stream block: split, then decoded as v1.
    if let Ok(change) = split_streamed(data) {
        let mut joined = Vec::with_capacity(data.len());
        joined.push(change.kind.tag());
        joined.extend_from_slice(change.body);
        let _ = decode(&Bytes::from(joined));
    }
}

fn begin(r: &mut Reader<'_>) -> Result<Begin, DecodeError> {
    Ok(Begin {
        final_lsn: r.u64()?,
        commit_time: r.i64()?,
        xid: r.u32()?,
    })
}

fn commit(r: &mut Reader<'_>) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8()?,
        commit_lsn: r.u64()?,
        end_lsn: r.u64()?,
        commit_time: r.i64()?,
    })
}

fn origin(r: &mut Reader<'_>) -> Result<Origin, DecodeError> {
    Ok(Origin {
        commit_lsn: r.u64()?,
        name: r.cstring()?,
    })
}

fn relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let oid = r.u32()?;
    let namespace = r.cstring()?;
    let name = r.cstring()?;
    let identity_offset = r.offset();
    let identity = r.u8()?;
    let replica_identity =
        ReplicaIdentity::from_byte(identity).ok_or(DecodeError::UnknownReplicaIdentity {
            message: r.message(),
            offset: identity_offset,
            value: identity,
        })?;
    let count = column_count(r)?;
    let mut columns = Vec::with_capacity(count.min(r.remaining() / MIN_COLUMN_LEN));
    for _ in 0..count {
        columns.push(Column {
            flags: r.u8()?,
            name: r.cstring()?,
            type_oid: r.u32()?,
            type_modifier: r.i32()?,
        });
    }
    Ok(Relation {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn type_message(r: &mut Reader<'_>) -> Result<TypeMessage, DecodeError> {
    Ok(TypeMessage {
        oid: r.u32()?,
        namespace: r.cstring()?,
        name: r.cstring()?,
    })
}

fn insert(r: &mut Reader<'_>) -> Result<Insert, DecodeError> {
    let relation_oid = r.u32()?;
    expect_marker(r, b'N', "'N' (new tuple)")?;
    Ok(Insert {
        relation_oid,
        new_tuple: tuple(r)?,
    })
}

fn update(r: &mut Reader<'_>) -> Result<Update, DecodeError> {
    let relation_oid = r.u32()?;
    let marker_offset = r.offset();
    let (key_tuple, old_tuple) = match r.u8()? {
        b'K' => (Some(tuple(r)?), None),
        b'O' => (None, Some(tuple(r)?)),
        b'N' => {
            return Ok(Update {
                relation_oid,
                key_tuple: None,
                old_tuple: None,
                new_tuple: tuple(r)?,
            });
        }
        found => {
            return Err(DecodeError::UnexpectedMarker {
                message: r.message(),
                offset: marker_offset,
                found,
                expected: "'K' (key), 'O' (old tuple) or 'N' (new tuple)",
            });
        }
    };
    expect_marker(r, b'N', "'N' (new tuple)")?;
    Ok(Update {
        relation_oid,
        key_tuple,
        old_tuple,
        new_tuple: tuple(r)?,
    })
}

fn delete(r: &mut Reader<'_>) -> Result<Delete, DecodeError> {
    let relation_oid = r.u32()?;
    let marker_offset = r.offset();
    let (key_tuple, old_tuple) = match r.u8()? {
        b'K' => (Some(tuple(r)?), None),
        b'O' => (None, Some(tuple(r)?)),
        found => {
            return Err(DecodeError::UnexpectedMarker {
                message: r.message(),
                offset: marker_offset,
                found,
                expected: "'K' (key) or 'O' (old tuple)",
            });
        }
    };
    Ok(Delete {
        relation_oid,
        key_tuple,
        old_tuple,
    })
}

fn truncate(r: &mut Reader<'_>) -> Result<Truncate, DecodeError> {
    let count = r.u32()?;
    let options = r.u8()?;
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    let mut relation_oids = Vec::with_capacity(count.min(r.remaining() / 4));
    for _ in 0..count {
        relation_oids.push(r.u32()?);
    }
    Ok(Truncate {
        options,
        relation_oids,
    })
}

fn logical_message(r: &mut Reader<'_>) -> Result<LogicalMessage, DecodeError> {
    Ok(LogicalMessage {
        flags: r.u8()?,
        lsn: r.u64()?,
        prefix: r.cstring()?,
        content: r.length_prefixed()?,
    })
}

fn stream_start(r: &mut Reader<'_>) -> Result<StreamStart, DecodeError> {
    Ok(StreamStart {
        xid: r.u32()?,
        first_segment: r.u8()? == 1,
    })
}

fn stream_commit(r: &mut Reader<'_>) -> Result<StreamCommit, DecodeError> {
    Ok(StreamCommit {
        xid: r.u32()?,
        flags: r.u8()?,
        commit_lsn: r.u64()?,
        end_lsn: r.u64()?,
        commit_time: r.i64()?,
    })
}

fn stream_abort(r: &mut Reader<'_>) -> Result<StreamAbort, DecodeError> {
    Ok(StreamAbort {
        xid: r.u32()?,
        subxact_xid: r.u32()?,
    })
}

/// TupleData: a column count, then per column a kind byte and maybe a value.
fn tuple(r: &mut Reader<'_>) -> Result<TupleData, DecodeError> {
    let count = column_count(r)?;
    // Every column takes at least its kind byte.
    let mut columns = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        let kind_offset = r.offset();
        let value = match r.u8()? {
            b'n' => TupleValue::Null,
            b'u' => TupleValue::UnchangedToast,
            b't' => TupleValue::Text(r.length_prefixed()?),
            b'b' => TupleValue::Binary(r.length_prefixed()?),
            kind => {
                return Err(DecodeError::UnknownTupleKind {
                    message: r.message(),
                    offset: kind_offset,
                    kind,
                });
            }
        };
        columns.push(value);
    }
    Ok(TupleData { columns })
}

/// An i16 column count, rejected when negative.
fn column_count(r: &mut Reader<'_>) -> Result<usize, DecodeError> {
    let offset = r.offset();
    let count = r.i16()?;
    usize::try_from(count).map_err(|_| DecodeError::NegativeCount {
        message: r.message(),
        offset,
        count,
    })
}

/// Consumes one byte that must equal `wanted`.
fn expect_marker(
    r: &mut Reader<'_>,
    wanted: u8,
    expected: &'static str,
) -> Result<(), DecodeError> {
    let offset = r.offset();
    match r.u8()? {
        found if found == wanted => Ok(()),
        found => Err(DecodeError::UnexpectedMarker {
            message: r.message(),
            offset,
            found,
            expected,
        }),
    }
}
