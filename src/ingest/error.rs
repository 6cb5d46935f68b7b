//! Errors of the ingest layer. Per-stream trouble (a 404, a broken connection, a 410) is not
//! an error of ingest as a whole: it is reported in the subscription's state and retried or
//! parked there. What reaches [`IngestError`] stops ingest: the database refuses writes,
//! the configuration is unsafe, or a setup step failed.

use crate::pg::PgError;

/// Why ingest stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Ds(#[from] crate::ds::DsError),
    /// Ingesting into a table that capture publishes would send every row back to a stream.
    #[error(
        "public.session_events is in the capture publication {publication} ({how}): ingested rows would be captured and echoed back into the streams"
    )]
    Loop { publication: String, how: String },
    /// A write the database refuses for a reason retrying cannot change.
    #[error("writing ingested events failed: {reason}")]
    Write { reason: String },
    /// Options that do not fit together.
    #[error("invalid ingest options: {reason}")]
    Config { reason: String },
    /// A stream name ingest cannot use.
    #[error("invalid stream name {stream:?}: {reason}")]
    InvalidStream { stream: String, reason: String },
}

impl IngestError {
    /// What to do about it, as a full sentence.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        match self {
            IngestError::Loop { publication, .. } => Some(format!(
                "Remove the sink table from the publication (`ds-sync publication remove {publication} --tables public.session_events`; a FOR ALL TABLES publication must be recreated with a table list), or run one direction per process with --no-capture / --no-ingest."
            )),
            IngestError::Write { .. } => Some(
                "Check that the ds-sync role may INSERT into public.session_events and write the ds_sync schema (`ds-sync init` creates both); ingest resumes from the last committed offsets when restarted.".into(),
            ),
            IngestError::Ds(e) => e.hint(),
            IngestError::InvalidStream { .. } => Some(
                "Give the stream name as it appears after /v1/stream/ in its URL, without a leading or trailing '/'.".into(),
            ),
            IngestError::Config { .. } => Some(
                "Raise --ingest-max-buffer-bytes, or lower --ingest-max-event-bytes (messages larger than it become dead letters).".into(),
            ),
            IngestError::Pg(e) => e.hint(),
        }
    }
}
