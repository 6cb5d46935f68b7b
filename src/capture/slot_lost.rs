//! A lost slot: what `run` does when the server invalidated its replication slot.
//!
//! With `max_slot_wal_keep_size` set, PostgreSQL invalidates a slot that fell too far behind
//! (`pg_replication_slots.wal_status = 'lost'`) and removes the WAL it still needed; from
//! then on `START_REPLICATION` fails ("can no longer get changes from replication slot",
//! SQLSTATE 55000). The changes in that WAL are gone for good, so the slot can never be
//! resumed and the streams can no longer be brought up to date change by change.
//!
//! ```text
//!  detected: at start (wal_status = 'lost'), on reconnect (the same), or when
//!            START_REPLICATION refuses the slot as invalidated
//!     │
//!     ├─ --on-slot-lost error (default): stop, exit 5, the way out in the hint
//!     └─ --on-slot-lost recreate: warn; drop the slot; create it with an exported
//!        snapshot; `reset` every stream the slot's tables ever wrote to
//!        (ds_sync.snapshot_streams ∪ ds_sync.table_streams); snapshot; stream on
//! ```
//!
//! Recreating goes through the snapshot path of a crash mid-snapshot (see `snapshot`): the
//! snapshot is marked `running` before the slot is dropped, so a crash during the recovery
//! is finished by the next start; its messages sort above everything sent before (the new
//! consistent point is past every earlier commit). Clients see a `reset` and the whole
//! table again. It is not the default: a re-snapshot costs a full read of every published
//! table and every client starts over, and a slot that keeps being lost needs a larger
//! `max_slot_wal_keep_size` or a consumer that keeps up, which an operator should decide.

use tokio_postgres::error::SqlState;

use super::error::ReplicationFailure;

/// What `run` does when the server invalidated its slot.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OnSlotLost {
    /// Stop with an error; the operator decides.
    Error,
    /// Drop and recreate the slot, reset the streams, snapshot again.
    Recreate,
}

impl OnSlotLost {
    pub fn as_str(self) -> &'static str {
        match self {
            OnSlotLost::Error => "error",
            OnSlotLost::Recreate => "recreate",
        }
    }
}

/// Whether a failure of the replication connection says the slot was invalidated: a server
/// error with SQLSTATE 55000 (object not in prerequisite state) in the words of PostgreSQL
/// 15-16 ("can no longer get changes from replication slot"), 17+ ("can no longer access
/// replication slot") or 14 ("cannot read from logical replication slot ... has been
/// invalidated"). 55000 also says other things (`wal_level` too low), so the wording tells
/// them apart. Pure.
pub fn is_lost(failure: &ReplicationFailure) -> bool {
    let Some(message) = failure.server_message() else {
        return false;
    };
    let lower = message.to_ascii_lowercase();
    failure.code == Some(SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
        && (lower.contains("can no longer")
            || lower.contains("has been invalidated")
            || lower.contains("cannot read from logical replication slot"))
}

/// Logs and counts a lost slot; `recreate` says what happens next.
pub fn announce(slot: &str, policy: OnSlotLost) {
    crate::observe::capture().slot_lost(slot, policy);
    match policy {
        OnSlotLost::Recreate => tracing::warn!(
            slot,
            on_slot_lost = policy.as_str(),
            "replication slot is lost (the server removed WAL it still needed; the changes in it are gone): recreating it, sending reset to every stream its tables wrote to and taking a fresh snapshot"
        ),
        OnSlotLost::Error => tracing::error!(
            slot,
            on_slot_lost = policy.as_str(),
            "replication slot is lost (the server removed WAL it still needed): stopping"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(msg: &str) -> ReplicationFailure {
        ReplicationFailure::new(pgwire_replication::PgWireError::Server(msg.to_owned()))
    }

    #[test]
    fn invalidation_errors_of_every_supported_version_are_recognised() {
        for msg in [
            "ERROR: can no longer get changes from replication slot \"s\" (SQLSTATE 55000)",
            "ERROR: can no longer access replication slot \"s\" (SQLSTATE 55000)",
            "ERROR: cannot read from logical replication slot \"s\": This slot has been invalidated because it exceeded the maximum reserved size. (SQLSTATE 55000)",
        ] {
            assert!(is_lost(&failure(msg)), "{msg}");
        }
        for msg in [
            "ERROR: replication slot \"s\" is active for PID 7 (SQLSTATE 55006)",
            "ERROR: replication slot \"s\" does not exist (SQLSTATE 42704)",
            "ERROR: logical decoding requires wal_level >= logical (SQLSTATE 55000)",
            "ERROR: can no longer get changes from replication slot \"s\" (SQLSTATE 42704)",
            "ERROR: can no longer get changes from replication slot \"s\"",
        ] {
            assert!(!is_lost(&failure(msg)), "{msg}");
        }
        let io = std::io::Error::other("can no longer (SQLSTATE 55000)");
        let io = ReplicationFailure::new(pgwire_replication::PgWireError::Io(io.into()));
        assert!(!is_lost(&io), "only a server error says the slot is lost");
    }

    #[test]
    fn the_default_is_to_stop_and_the_config_file_names_the_action() {
        assert_eq!(
            super::super::pipeline::CaptureConfig::DEFAULT_ON_SLOT_LOST,
            OnSlotLost::Error
        );
        let file: crate::config::FileConfig =
            toml::from_str("[capture]\non_slot_lost = \"recreate\"\n").unwrap();
        assert_eq!(file.capture.on_slot_lost, Some(OnSlotLost::Recreate));
        assert!(
            toml::from_str::<crate::config::FileConfig>("[capture]\non_slot_lost = \"heal\"\n")
                .is_err()
        );
    }
}
