//! Retention of `session_events`: pruning old rows and dead letters, and the optional
//! partitioning by `received_at` that makes pruning a matter of dropping tables.
//!
//! * [`interval`]: partition intervals, ranges and names (pure).
//! * [`partitions`]: the partitioned table `init --partition-by` makes, partitions created
//!   ahead of time, expired ones dropped, every DDL with a short lock timeout.
//! * [`prune`]: `ds-sync prune`: whole partitions, then bounded DELETE batches.
//! * [`maintain`]: what `run` does periodically.
//!
//! Offsets in `ds_sync.stream_offsets` are never touched, so ingest never reads a pruned
//! event again.

pub mod error;
pub mod interval;
pub mod maintain;
pub mod partitions;
pub mod prune;

pub use error::RetentionError;
pub use interval::PartitionInterval;
