//! The one error type of the pgoutput layer.
//!
//! Every decoding failure is definite: the same bytes always fail the same
//! way, so a caller should stop and report, not retry. Offsets count bytes
//! from the start of the message (the tag byte is offset 0).

use super::messages::MessageKind;

/// Why a pgoutput message could not be decoded or does not fit its relation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer holds no bytes at all, not even a tag.
    #[error("empty message: expected a tag byte")]
    Empty,

    /// The first byte is not a pgoutput v1 message tag.
    #[error("unknown message tag 0x{tag:02x} ({})", printable(*tag))]
    UnknownTag { tag: u8 },

    /// A field, or the data a length field announces, runs past the end of
    /// the message.
    #[error(
        "truncated {message} message: field at offset {offset} needs {needed} bytes, \
         {available} available"
    )]
    Truncated {
        message: MessageKind,
        offset: usize,
        needed: usize,
        available: usize,
    },

    /// A NUL-terminated string runs to the end of the message without a NUL.
    #[error(
        "unterminated string at offset {offset} of {message} message: no NUL byte before the end"
    )]
    MissingNul { message: MessageKind, offset: usize },

    /// A name or prefix is not valid UTF-8.
    #[error("invalid UTF-8 in string at offset {offset} of {message} message")]
    InvalidUtf8 { message: MessageKind, offset: usize },

    /// A column value's kind byte is none of `n`, `u`, `t`, `b`.
    #[error(
        "unknown tuple value kind 0x{kind:02x} ({}) at offset {offset} of {message} message",
        printable(*kind)
    )]
    UnknownTupleKind {
        message: MessageKind,
        offset: usize,
        kind: u8,
    },

    /// A byte that selects what follows (`N`, `K`, `O`) has another value.
    #[error(
        "unexpected byte 0x{found:02x} ({}) at offset {offset} of {message} message, expected {expected}",
        printable(*found)
    )]
    UnexpectedMarker {
        message: MessageKind,
        offset: usize,
        found: u8,
        expected: &'static str,
    },

    /// A replica identity byte is none of `d`, `n`, `f`, `i`.
    #[error(
        "unknown replica identity 0x{value:02x} ({}) at offset {offset} of {message} message",
        printable(*value)
    )]
    UnknownReplicaIdentity {
        message: MessageKind,
        offset: usize,
        value: u8,
    },

    /// A signed column count is below zero.
    #[error("negative column count {count} at offset {offset} of {message} message")]
    NegativeCount {
        message: MessageKind,
        offset: usize,
        count: i16,
    },

    /// Bytes remain after a complete message.
    #[error("trailing bytes after a complete {message} message: {remaining} from offset {offset}")]
    TrailingBytes {
        message: MessageKind,
        offset: usize,
        remaining: usize,
    },

    /// A message that never carries a transaction id was found inside a stream block.
    #[error("{message} message inside a stream block (between Stream Start and Stream Stop)")]
    NotStreamable { message: MessageKind },

    /// A tuple's column count differs from its relation's.
    #[error(
        "tuple has {tuple_columns} columns but relation {relation} (oid {relation_oid}) has \
         {relation_columns}"
    )]
    ColumnCountMismatch {
        relation_oid: u32,
        /// `namespace.name`.
        relation: String,
        relation_columns: usize,
        tuple_columns: usize,
    },

    /// A change names a relation no Relation message has described.
    #[error("change refers to relation oid {relation_oid} but no Relation message described it")]
    UnknownRelation { relation_oid: u32 },
}

/// Shows a byte as a quoted ASCII character when it is printable, else says it is not.
fn printable(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("'{}'", char::from(byte))
    } else {
        "not printable".to_owned()
    }
}
