//! What retention and partitioning can fail with, each with what to do.

use crate::pg::PgError;

/// A retention, partitioning or prune failure.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Pg(#[from] PgError),
    /// `init --partition-by` on a plain `session_events` that holds rows.
    #[error(
        "public.session_events already holds rows and is not partitioned: --partition-by {asked} cannot turn it into a partitioned table in place"
    )]
    NotEmpty { asked: &'static str },
    /// `init --partition-by` with another interval than the table was made with.
    #[error(
        "public.session_events is partitioned by {existing}; --partition-by {asked} cannot change that"
    )]
    OtherInterval {
        existing: &'static str,
        asked: &'static str,
    },
    /// The table is partitioned, but not by `ds-sync init --partition-by`.
    #[error(
        "public.session_events is partitioned, but not by ds-sync init --partition-by: ds-sync neither creates nor drops its partitions"
    )]
    NotOurs,
    /// A DDL statement kept waiting for a lock that other sessions held.
    #[error("{what}: the lock on public.session_events was not free within {attempts} tries")]
    Busy { what: String, attempts: u32 },
}

impl RetentionError {
    /// A sentence saying what to do next.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        match self {
            RetentionError::Pg(e) => e.hint(),
            RetentionError::NotEmpty { asked } => Some(format!(
                "Move the rows into a partitioned table (see the README, \"Partitioning session_events\"): stop ingest, \
                 ALTER TABLE public.session_events RENAME TO session_events_old; ALTER SEQUENCE session_events_id_seq RENAME TO session_events_old_id_seq; \
                 run `ds-sync init --partition-by {asked}`; \
                 INSERT INTO public.session_events SELECT * FROM session_events_old; \
                 SELECT setval(pg_get_serial_sequence('public.session_events', 'id'), (SELECT max(id) FROM session_events_old)); \
                 DROP TABLE session_events_old; then start ingest again. Or keep the plain table: `ds-sync prune` works on it too."
            )),
            RetentionError::OtherInterval { .. } => Some(
                "Run init without --partition-by (the table keeps its interval), or move the rows into a new table as for a plain table (README, \"Partitioning session_events\").".into(),
            ),
            RetentionError::NotOurs => Some(
                "Create and drop its partitions yourself; `ds-sync prune` still deletes old rows in batches. Or move the rows into a table made by `ds-sync init --partition-by` (README, \"Partitioning session_events\").".into(),
            ),
            RetentionError::Busy { .. } => Some(
                "A long transaction on session_events holds it (see pg_locks / pg_stat_activity); nothing was changed. Try again; `run` tries again at its next pass.".into(),
            ),
        }
    }
}
