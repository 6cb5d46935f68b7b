//! The pgoutput v1 messages as typed values, named after the wire protocol.
//!
//! Field names follow PostgreSQL's "Logical Replication Message Formats"
//! (`final_lsn`, `commit_lsn`, `end_lsn`, ...). Times are the server's
//! `TimestampTz`: microseconds since 2000-01-01 00:00:00 UTC. Column values
//! are slices of the message buffer, never copies.

use bytes::Bytes;

/// The tag byte of every pgoutput v1 message, with its protocol name.
///
/// Errors carry it so that they say which message failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Begin,
    Commit,
    Origin,
    Relation,
    Type,
    Insert,
    Update,
    Delete,
    Truncate,
    Message,
    StreamStart,
    StreamStop,
    StreamCommit,
    StreamAbort,
}

impl MessageKind {
    /// Every kind, in the order of the protocol documentation.
    pub const ALL: [MessageKind; 10] = [
        MessageKind::Begin,
        MessageKind::Commit,
        MessageKind::Origin,
        MessageKind::Relation,
        MessageKind::Type,
        MessageKind::Insert,
        MessageKind::Update,
        MessageKind::Delete,
        MessageKind::Truncate,
        MessageKind::Message,
    ];

    /// The messages protocol version 2 adds for transactions streamed while they run
    /// (`streaming 'on'`).
    pub const STREAM: [MessageKind; 4] = [
        MessageKind::StreamStart,
        MessageKind::StreamStop,
        MessageKind::StreamCommit,
        MessageKind::StreamAbort,
    ];

    /// The kind for a tag byte, or `None` if pgoutput (v1, or v2's streaming) has no such
    /// message.
    pub fn from_tag(tag: u8) -> Option<MessageKind> {
        Self::ALL
            .into_iter()
            .chain(Self::STREAM)
            .find(|kind| kind.tag() == tag)
    }

    /// Whether a message of this kind carries a transaction id after its tag inside a
    /// stream block (v2): the changes and what describes them.
    pub fn streamable(self) -> bool {
        matches!(
            self,
            MessageKind::Relation
                | MessageKind::Type
                | MessageKind::Insert
                | MessageKind::Update
                | MessageKind::Delete
                | MessageKind::Truncate
                | MessageKind::Message
        )
    }

    /// The tag byte that starts this message on the wire.
    pub fn tag(self) -> u8 {
        match self {
            MessageKind::Begin => b'B',
            MessageKind::Commit => b'C',
            MessageKind::Origin => b'O',
            MessageKind::Relation => b'R',
            MessageKind::Type => b'Y',
            MessageKind::Insert => b'I',
            MessageKind::Update => b'U',
            MessageKind::Delete => b'D',
            MessageKind::Truncate => b'T',
            MessageKind::Message => b'M',
            MessageKind::StreamStart => b'S',
            MessageKind::StreamStop => b'E',
            MessageKind::StreamCommit => b'c',
            MessageKind::StreamAbort => b'A',
        }
    }

    /// The protocol's name for this message.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Begin => "Begin",
            MessageKind::Commit => "Commit",
            MessageKind::Origin => "Origin",
            MessageKind::Relation => "Relation",
            MessageKind::Type => "Type",
            MessageKind::Insert => "Insert",
            MessageKind::Update => "Update",
            MessageKind::Delete => "Delete",
            MessageKind::Truncate => "Truncate",
            MessageKind::Message => "Message",
            MessageKind::StreamStart => "Stream Start",
            MessageKind::StreamStop => "Stream Stop",
            MessageKind::StreamCommit => "Stream Commit",
            MessageKind::StreamAbort => "Stream Abort",
        }
    }
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ('{}')", self.name(), char::from(self.tag()))
    }
}

/// One decoded pgoutput v1 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMessage),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(LogicalMessage),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
}

impl PgOutputMessage {
    /// Which message this is.
    pub fn kind(&self) -> MessageKind {
        match self {
            PgOutputMessage::Begin(_) => MessageKind::Begin,
            PgOutputMessage::Commit(_) => MessageKind::Commit,
            PgOutputMessage::Origin(_) => MessageKind::Origin,
            PgOutputMessage::Relation(_) => MessageKind::Relation,
            PgOutputMessage::Type(_) => MessageKind::Type,
            PgOutputMessage::Insert(_) => MessageKind::Insert,
            PgOutputMessage::Update(_) => MessageKind::Update,
            PgOutputMessage::Delete(_) => MessageKind::Delete,
            PgOutputMessage::Truncate(_) => MessageKind::Truncate,
            PgOutputMessage::Message(_) => MessageKind::Message,
            PgOutputMessage::StreamStart(_) => MessageKind::StreamStart,
            PgOutputMessage::StreamStop => MessageKind::StreamStop,
            PgOutputMessage::StreamCommit(_) => MessageKind::StreamCommit,
            PgOutputMessage::StreamAbort(_) => MessageKind::StreamAbort,
        }
    }
}

/// `B`: the start of a committed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: u64,
    /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
    pub xid: u32,
}

/// `C`: the end of the transaction opened by the last [`Begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Unused by PostgreSQL so far (always 0).
    pub flags: u8,
    /// The LSN of the commit record; equals the [`Begin::final_lsn`].
    pub commit_lsn: u64,
    /// The LSN just past the commit record: where to resume after it.
    pub end_lsn: u64,
    /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
}

/// `O`: the transaction was replayed from another node (replication origin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN on the origin server.
    pub commit_lsn: u64,
    pub name: String,
}

/// How UPDATE and DELETE identify the old row (`relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key columns, if any.
    Default,
    /// `n`: nothing; UPDATE and DELETE carry no old values.
    Nothing,
    /// `f`: the whole old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The identity for its `relreplident` byte, or `None` for any other byte.
    pub fn from_byte(byte: u8) -> Option<ReplicaIdentity> {
        match byte {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }
}

/// `R`: the schema of a published table. Sent before the first change of the
/// table in a session and again after every schema change: replace, never merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    /// The schema name; empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

/// One column of a [`Relation`], in table order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Bit 1 marks a column of the replica identity (see [`Column::is_key`]).
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod`: -1 when the type has no modifier.
    pub type_modifier: i32,
}

impl Column {
    /// Whether the column is part of the replica identity ("key").
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// `Y`: a non-built-in type used by a column of the next [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    pub oid: u32,
    /// The schema name; empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
}

/// `I`: a new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub relation_oid: u32,
    pub new_tuple: TupleData,
}

/// `U`: a changed row. At most one of `key_tuple` and `old_tuple` is present:
/// `key_tuple` (`K`) when the replica identity columns changed, `old_tuple`
/// (`O`) for REPLICA IDENTITY FULL, neither otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub relation_oid: u32,
    /// `K`: the old key; non-key columns are [`TupleValue::Null`].
    pub key_tuple: Option<TupleData>,
    /// `O`: the whole old row.
    pub old_tuple: Option<TupleData>,
    pub new_tuple: TupleData,
}

/// `D`: a deleted row. Exactly one of `key_tuple` (`K`) and `old_tuple` (`O`)
/// is present, as for [`Update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub relation_oid: u32,
    /// `K`: the old key; non-key columns are [`TupleValue::Null`].
    pub key_tuple: Option<TupleData>,
    /// `O`: the whole old row.
    pub old_tuple: Option<TupleData>,
}

/// `T`: one TRUNCATE statement over one or more tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
    pub options: u8,
    pub relation_oids: Vec<u32>,
}

impl Truncate {
    /// TRUNCATE ... CASCADE.
    pub fn cascade(&self) -> bool {
        self.options & 1 != 0
    }

    /// TRUNCATE ... RESTART IDENTITY.
    pub fn restart_identity(&self) -> bool {
        self.options & 2 != 0
    }
}

/// `M`: a message written with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Bit 1: transactional (see [`LogicalMessage::transactional`]).
    pub flags: u8,
    pub lsn: u64,
    pub prefix: String,
    /// Arbitrary bytes, a slice of the message buffer.
    pub content: Bytes,
}

impl LogicalMessage {
    /// Whether the message belongs to the enclosing transaction (it then
    /// arrives between Begin and Commit) rather than being sent at once.
    pub fn transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// `S` (v2): a block of an in-progress transaction's changes follows, up to the next
/// Stream Stop. Every change in the block carries the transaction id after its tag (see
/// [`StreamedChange`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    /// The top-level transaction the block belongs to.
    pub xid: u32,
    /// The transaction's first block: nothing of it was sent before in this session.
    pub first_segment: bool,
}

/// `c` (v2): the streamed transaction `xid` committed; its blocks, less what Stream Abort
/// discarded, are the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: u32,
    /// Unused by PostgreSQL so far (always 0).
    pub flags: u8,
    /// The LSN of the commit record: what a non-streamed Begin calls `final_lsn`.
    pub commit_lsn: u64,
    /// The LSN just past the commit record: where to resume after it.
    pub end_lsn: u64,
    /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
}

/// `A` (v2): the streamed transaction `xid` rolled back, whole (`subxact_xid == xid`) or one
/// subtransaction of it (a `ROLLBACK TO SAVEPOINT`): only that subtransaction's changes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: u32,
    pub subxact_xid: u32,
}

impl StreamAbort {
    /// Whether the whole transaction rolled back rather than one subtransaction of it.
    pub fn is_top_level(&self) -> bool {
        self.xid == self.subxact_xid
    }
}

/// One message of a stream block as sent: its tag, the (sub)transaction id that follows
/// the tag, and the body after it. `tag` and `body` together are the message as a
/// non-streamed transaction carries it, for [`decode`](super::decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamedChange<'a> {
    pub kind: MessageKind,
    /// The (sub)transaction that made the change: a subtransaction's own id when it was
    /// made under a SAVEPOINT, which Stream Abort then names.
    pub xid: u32,
    pub body: &'a [u8],
}

/// The column values of one row, in [`Relation::columns`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData {
    pub columns: Vec<TupleValue>,
}

/// One column value of a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: a TOASTed value the UPDATE did not change. Its value was not sent:
    /// never treat it as NULL or empty.
    UnchangedToast,
    /// `t`: the value in the type's text output format.
    Text(Bytes),
    /// `b`: the value in the type's binary send format (`binary 'true'`).
    Binary(Bytes),
}
