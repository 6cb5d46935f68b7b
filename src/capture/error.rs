//! Errors of the capture path, classified where they arise: transient ones make the loop
//! reconnect and resume from the slot's confirmed position; the rest stop capture with a
//! hint.

use tokio_postgres::error::SqlState;

use crate::ds::DsError;
use crate::lsn::LsnParseError;
use crate::pg::PgError;
use crate::pgoutput::DecodeError;
use crate::publication::PublicationError;
use crate::slot::SlotError;

use super::message::MessageError;
use super::route::RouteError;
use super::snapshot::SnapshotError;

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
    /// The replication stream failed (see [`ReplicationFailure`]).
    #[error("replication connection: {0}")]
    Replication(ReplicationFailure),
    /// The TLS settings cannot be used for the replication connection (a certificate or key
    /// file).
    #[error("replication connection: TLS settings: {0}")]
    ReplicationTls(#[source] crate::tls::TlsError),
    /// The slot has no confirmed position yet (still being created, or not a logical slot):
    /// read again after a backoff, never a start from 0/0.
    #[error(
        "replication slot '{slot}' has no confirmed_flush_lsn yet (still being created, or not a logical slot)"
    )]
    NoConfirmedPosition { slot: String },
    /// pgoutput sent a row change between transactions: this session lost track of the
    /// stream, and resuming from the slot's confirmed position is the safe answer.
    #[error("replication connection: a row change arrived outside a transaction")]
    OutsideTransaction,
    /// A transaction has more messages than a `Stream-Seq` index can number.
    #[error(
        "replication connection: transaction {tx} has more than {} messages",
        u32::MAX
    )]
    TooManyMessages { tx: String },
    /// A transaction streamed while it ran could not be held or replayed.
    #[error("replication connection: {0}")]
    Streamed(#[from] super::streamed::StreamedError),
    /// A change message could not be serialized as JSON.
    #[error("replication connection: cannot serialize a message: {0}")]
    Serialize(#[source] serde_json::Error),
    /// A task delivering batches to the DS server panicked or was aborted.
    #[error("replication connection: a delivery task failed: {0}")]
    DeliveryTask(#[source] tokio::task::JoinError),
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
    /// The connection holding the slot lock ended or stopped answering: streaming stops
    /// (only the lock's holder may stream) and the next attempt waits for the lock again.
    #[error("lost the lock of slot '{slot}' (its connection ended or stopped answering)")]
    LockLost { slot: String },
    /// Boxed: the server's error fields would make every capture result large.
    #[error(transparent)]
    Session(Box<crate::pg::replication_session::SessionError>),
    /// A snapshot failed (see [`SnapshotError`], which decides whether to try again).
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
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

/// A failure of the replication stream library, with the SQLSTATE of a server error read
/// once from its text (the library hands the server's error over as a string).
#[derive(Debug)]
pub struct ReplicationFailure {
    pub error: pgwire_replication::PgWireError,
    /// The server's SQLSTATE, for [`pgwire_replication::PgWireError::Server`].
    pub code: Option<SqlState>,
}

impl ReplicationFailure {
    #[must_use]
    pub fn new(error: pgwire_replication::PgWireError) -> ReplicationFailure {
        let code = match &error {
            pgwire_replication::PgWireError::Server(msg) => crate::pg::sqlstate_in_message(msg),
            _ => None,
        };
        ReplicationFailure { error, code }
    }

    /// The server's message, for a server error.
    #[must_use]
    pub fn server_message(&self) -> Option<&str> {
        match &self.error {
            pgwire_replication::PgWireError::Server(msg) => Some(msg),
            _ => None,
        }
    }

    /// Whether a new replication connection can succeed: the connection broke (I/O) or its
    /// worker ended; the server answered with a transient SQLSTATE (see
    /// [`crate::pg::sqlstate`]) or said the slot is held by another walsender (55006, waited
    /// for). Authentication, TLS and protocol failures are definite. A server error without a
    /// code is matched on PostgreSQL's wording of a held slot, the one case worth waiting for.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        use pgwire_replication::PgWireError as E;
        match (&self.error, &self.code) {
            (E::Io(_) | E::Task(_), _) => true,
            (E::Server(_), Some(code)) => {
                *code == SqlState::OBJECT_IN_USE || crate::pg::is_transient_code(code)
            }
            (E::Server(msg), None) => msg.contains("is active for PID"),
            _ => false,
        }
    }
}

impl std::fmt::Display for ReplicationFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl From<pgwire_replication::PgWireError> for CaptureError {
    fn from(e: pgwire_replication::PgWireError) -> Self {
        CaptureError::Replication(ReplicationFailure::new(e))
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
            CaptureError::Replication(failure) => failure.is_transient(),
            CaptureError::OutsideTransaction | CaptureError::NoConfirmedPosition { .. } => true,
            CaptureError::Pg(e) => e.is_transient(),
            CaptureError::Slot(SlotError::Pg(e)) => e.is_transient(),
            CaptureError::Publication(e) => publication_transient(e),
            CaptureError::Session(e) => e.is_transient(),
            CaptureError::SlotBusy { .. } | CaptureError::LockLost { .. } => true,
            CaptureError::Snapshot(e) => e.is_transient(),
            CaptureError::Streamed(e) => e.is_transient(),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pgwire_replication::PgWireError;

    use super::*;

    #[test]
    fn replication_failures_are_classified_by_their_sqlstate() {
        let server = |m: &str| PgWireError::Server(m.to_owned());
        let table = [
            (
                server("replication slot \"s\" is active for PID 7 (SQLSTATE 55006)"),
                true,
            ),
            (server("replication slot \"s\" is active for PID 7"), true),
            (
                server("terminating connection due to administrator command (SQLSTATE 57P01)"),
                true,
            ),
            (
                server("the database system is starting up (SQLSTATE 57P03)"),
                true,
            ),
            (
                server("sorry, too many clients already (SQLSTATE 53300)"),
                true,
            ),
            (server("could not serialize access (SQLSTATE 40001)"), true),
            (
                server("publication \"p\" does not exist (SQLSTATE 42704)"),
                false,
            ),
            (
                server("logical decoding requires wal_level >= logical (SQLSTATE 55000)"),
                false,
            ),
            (
                server("a message quoting (SQLSTATE 57P01) then (SQLSTATE 42501)"),
                false,
            ),
            (server("no code"), false),
            (
                PgWireError::Io(Arc::new(std::io::Error::other("reset"))),
                true,
            ),
            (PgWireError::Task("worker ended".into()), true),
            (
                PgWireError::Auth("password authentication failed".into()),
                false,
            ),
            (PgWireError::Protocol("unexpected message".into()), false),
        ];
        for (error, transient) in table {
            let text = error.to_string();
            let e = CaptureError::from(error);
            assert_eq!(e.is_transient(), transient, "{text}");
            assert_eq!(e.to_string(), format!("replication connection: {text}"));
        }
    }
}
