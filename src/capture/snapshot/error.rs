//! What can go wrong in a snapshot, beyond the database and the DS server (whose errors keep
//! their own types), each variant saying what failed; whether trying again can help is
//! decided here, where the failures arise.

use super::copy_text::CopyTextError;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The exported snapshot a reader opens is gone: the replication session that exported
    /// it ended (a lost connection). The snapshot is taken again from the start.
    #[error(
        "snapshot of {table}: the exported snapshot is gone (the replication session that exported it ended): {server}"
    )]
    ExportGone {
        table: String,
        /// The server's words.
        server: String,
    },
    /// The server named its exported snapshot in a form ds-sync does not quote into SQL.
    #[error("the server gave an unexpected exported snapshot name {name:?}")]
    BadSnapshotName { name: String },
    /// A line of a table's `COPY ... TO STDOUT` that is not COPY text.
    #[error("snapshot of {table}: a COPY line cannot be read: {source}")]
    BadCopyLine {
        table: String,
        #[source]
        source: CopyTextError,
    },
    /// A snapshot row could not be serialized as JSON.
    #[error("snapshot of {table}: cannot serialize a row: {source}")]
    Serialize {
        table: String,
        #[source]
        source: serde_json::Error,
    },
    /// A task reading a table panicked or was aborted.
    #[error("snapshot: a table reader task failed: {0}")]
    ReaderTask(#[source] tokio::task::JoinError),
    /// One stream would get more snapshot messages than a `Stream-Seq` index can number.
    #[error("snapshot: more than {} messages for stream {stream}", u32::MAX)]
    TooManyMessages { stream: String },
    /// A snapshot taken while streaming decoded its high watermark with no chunk in
    /// progress: this process lost track of its own signals.
    #[error("snapshot while streaming: a high watermark arrived with no chunk in progress")]
    HighWatermarkWithoutChunk,
    /// A chunk's read returned something other than a transaction snapshot where
    /// `txid_current_snapshot()` was asked for.
    #[error("snapshot while streaming: reading a chunk of {table}: {reason}")]
    BadChunkSnapshot { table: String, reason: String },
}

impl SnapshotError {
    /// Whether taking the snapshot again (after a reconnect) can succeed: only when the
    /// exported snapshot went with its session. The others would fail the same way again.
    pub fn is_transient(&self) -> bool {
        matches!(self, SnapshotError::ExportGone { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_says_what_failed_and_only_a_lost_export_is_retried() {
        let bad_line = super::super::copy_text::parse_line(b"a\\").unwrap_err();
        let serialize = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let cases = [
            (
                SnapshotError::ExportGone {
                    table: "public.items".into(),
                    server: "invalid snapshot identifier".into(),
                },
                "snapshot of public.items: the exported snapshot is gone (the replication session that exported it ended): invalid snapshot identifier",
                true,
            ),
            (
                SnapshotError::BadSnapshotName { name: "x'".into() },
                "the server gave an unexpected exported snapshot name \"x'\"",
                false,
            ),
            (
                SnapshotError::BadCopyLine {
                    table: "public.items".into(),
                    source: bad_line,
                },
                "snapshot of public.items: a COPY line cannot be read: ",
                false,
            ),
            (
                SnapshotError::Serialize {
                    table: "public.items".into(),
                    source: serialize,
                },
                "snapshot of public.items: cannot serialize a row: ",
                false,
            ),
            (
                SnapshotError::TooManyMessages {
                    stream: "pg-items".into(),
                },
                "snapshot: more than 4294967295 messages for stream pg-items",
                false,
            ),
            (
                SnapshotError::HighWatermarkWithoutChunk,
                "snapshot while streaming: a high watermark arrived with no chunk in progress",
                false,
            ),
            (
                SnapshotError::BadChunkSnapshot {
                    table: "public.items".into(),
                    reason: "'x' is not a transaction snapshot (xmin:xmax:xip,...)".into(),
                },
                "snapshot while streaming: reading a chunk of public.items: 'x' is not a transaction snapshot",
                false,
            ),
        ];
        for (error, text, transient) in cases {
            let shown = error.to_string();
            assert!(
                shown.starts_with(text),
                "{shown:?} does not start with {text:?}"
            );
            assert_eq!(error.is_transient(), transient, "{shown}");
            let capture = crate::capture::CaptureError::from(error);
            assert_eq!(capture.to_string(), shown, "shown as it is by capture");
            assert_eq!(capture.is_transient(), transient, "{shown}");
        }
    }
}
