//! Errors of the capture path, classified where they arise: transient ones make the loop
//! reconnect and resume from the slot's confirmed position; the rest stop capture with a
//! hint.

use crate::ds::DsError;
use crate::lsn::LsnParseError;
use crate::pg::PgError;
use crate::pgoutput::DecodeError;
use crate::publication::PublicationError;
use crate::slot::SlotError;

use super::message::MessageError;
use super::route::RouteError;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error(transparent)]
    Publication(#[from] PublicationError),
    #[error("publication '{0}' does not exist and no --tables were given to create it")]
    NoPublication(String),
    #[error("replication slot '{0}' is lost: the server removed WAL it still needed")]
    SlotLost(String),
    #[error("replication slot '{slot}' is held by walsender pid {pid} ({holder})")]
    SlotBusy {
        slot: String,
        pid: i32,
        /// Who that is: application, client, since when.
        holder: String,
    },
    /// The server gave a position that is not an LSN: never taken as 0, which would start
    /// from (or confirm) the wrong place.
    #[error("{what}: {source}")]
    BadLsn {
        /// Where the text came from: the query or column.
        what: String,
        #[source]
        source: LsnParseError,
    },
    #[error("replication connection: {reason}")]
    Replication { reason: String, transient: bool },
    #[error("cannot decode pgoutput message at {lsn}: {source}")]
    Decode {
        lsn: String,
        #[source]
        source: DecodeError,
    },
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("stream {stream}: {source}")]
    Ds {
        stream: String,
        #[source]
        source: DsError,
    },
    /// 413 for a batch of one change. The server's words say which limit: usually the
    /// stream is full, not the change too large.
    #[error(
        "the DS server refused a change as too large: table {table}, key {key}, {bytes} bytes, stream {stream}{}",
        reply.as_ref().map(|r| format!("; the server said: {r}")).unwrap_or_default()
    )]
    RowTooLarge {
        stream: String,
        table: String,
        key: String,
        bytes: usize,
        reply: Option<Box<crate::ds::ServerReply>>,
    },
    #[error("stopped before every change in flight was delivered (hard stop)")]
    Interrupted,
    /// Boxed: the server's error fields would make every capture result large.
    #[error(transparent)]
    Session(Box<crate::pg::replication_session::SessionError>),
    #[error("snapshot {table}: {reason}")]
    Snapshot { table: String, reason: String },
    /// The exported snapshot a reader needs is gone: the replication session that held it
    /// was lost. The snapshot is taken again.
    #[error("snapshot {table}: the exported snapshot is gone ({reason})")]
    SnapshotGone { table: String, reason: String },
    #[error(
        "slot '{slot}' was taken over by {successor} (epoch {successor_epoch}; this process had epoch {epoch}): stopped without sending anything more"
    )]
    Fenced {
        slot: String,
        epoch: i64,
        successor_epoch: i64,
        successor: String,
    },
    #[error(
        "stream {stream} holds writes this source did not make: the DS server refused Stream-Seq {seq} as not above the stream's last, and nothing this source ({source_id}) sent to the stream was ever appended; the slot stays before commit {lsn}"
    )]
    ForeignWrite {
        stream: String,
        seq: String,
        lsn: String,
        source_id: String,
    },
}

fn publication_transient(e: &PublicationError) -> bool {
    match e {
        PublicationError::Pg(e) => e.is_transient(),
        PublicationError::Lookup(crate::pg::ident::LookupError::Pg(e)) => e.is_transient(),
        _ => false,
    }
}

/// The hint for a change the server will not take: the DS client's hint for the limit the
/// server named; for a request over the limit, a single change cannot be split further, so
/// the way out is a larger limit or a narrower row.
fn row_too_large_hint(reply: Option<&crate::ds::ServerReply>) -> String {
    use crate::ds::TooLargeKind;
    match reply.map(crate::ds::ServerReply::too_large_kind) {
        Some(TooLargeKind::Request) => "This one change is larger than the server (or a proxy in front of it) accepts in one request: raise that request size limit, or leave the large column out with a publication column list.".to_owned(),
        _ => crate::ds::too_large_hint(reply),
    }
}

impl From<crate::pg::replication_session::SessionError> for CaptureError {
    fn from(e: crate::pg::replication_session::SessionError) -> Self {
        CaptureError::Session(Box::new(e))
    }
}

impl CaptureError {
    /// Whether reconnecting and resuming from the slot's confirmed position can help.
    pub fn is_transient(&self) -> bool {
        match self {
            CaptureError::Replication { transient, .. } => *transient,
            CaptureError::Pg(e) => e.is_transient(),
            CaptureError::Slot(SlotError::Pg(e)) => e.is_transient(),
            CaptureError::Publication(e) => publication_transient(e),
            CaptureError::Session(e) => e.is_transient(),
            CaptureError::SlotBusy { .. } => true,
            CaptureError::SnapshotGone { .. } => true,
            _ => false,
        }
    }

    /// A sentence saying what to do next.
    pub fn hint(&self) -> Option<String> {
        match self {
            CaptureError::NoPublication(p) => Some(format!(
                "Pass --tables a,b to create it, or create it with `ds-sync publication create {p} --tables ...`."
            )),
            CaptureError::SlotLost(s) => Some(format!(
                "A lost slot cannot be resumed: the changes in the removed WAL are gone. Start with `--on-slot-lost recreate` (env DS_SYNC_ON_SLOT_LOST=recreate) to drop and recreate slot {s}, reset every stream its tables wrote to and take a fresh snapshot (clients see a reset and the whole table again); or drop it yourself (`ds-sync slot drop {s}`) and start again. To keep it from happening again, raise max_slot_wal_keep_size or keep ds-sync running."
            )),
            CaptureError::SlotBusy { pid, .. } => Some(format!(
                "Another consumer holds the slot. Stop it, or pass --takeover to terminate pid {pid}."
            )),
            CaptureError::RowTooLarge { reply, .. } => Some(row_too_large_hint(reply.as_deref())),
            CaptureError::Ds { source, .. } => source.hint(),
            CaptureError::Fenced { .. } => Some(
                "Another ds-sync captures from this slot now; leave it running and do not restart this one with --takeover unless the other is gone."
                    .into(),
            ),
            CaptureError::ForeignWrite { stream, .. } => Some(format!(
                "The stream was written from another database (or a restore of this one with lower WAL positions). To hand it to this database run `ds-sync stream adopt {stream}` (it sends a reset, numbers this database's writes above every earlier one and re-snapshots the tables routed there), or delete the stream on the DS server, then start ds-sync again."
            )),
            CaptureError::BadLsn { .. } => Some(
                "PostgreSQL prints positions as X/Y (two hex numbers); a server or proxy that changes that form is not supported. Report the text above.".into(),
            ),
            CaptureError::Slot(e) => e.hint(),
            CaptureError::Publication(e) => e.hint(),
            CaptureError::Pg(e) => e.hint(),
            CaptureError::Session(e) => e.hint(),
            _ => None,
        }
    }
}
