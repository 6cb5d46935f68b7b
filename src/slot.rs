//! Replication slot management: create, drop, list and inspect logical slots.
//!
//! A slot is the server's promise to keep WAL until ds-sync confirms it. The status shown
//! here is what an operator needs to judge that promise: how far behind the slot is (lag in
//! bytes against the current WAL position), whether the server still keeps its WAL
//! (`wal_status`), and how much more WAL may pile up before the slot is lost
//! (`safe_wal_size`).

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Row};

use crate::lsn::{Lsn, LsnParseError};
use crate::pg::ident::{NameError, validate_slot_name};
use crate::pg::{PgError, PgTarget};
use crate::waits;

/// The output plugin ds-sync decodes.
pub const PLUGIN: &str = "pgoutput";

/// How long `slot drop --force` waits for a terminated walsender to release its slot.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of slot management.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("replication slot '{0}' does not exist")]
    NotFound(String),
    #[error("replication slot '{0}' already exists")]
    AlreadyExists(String),
    #[error(
        "replication slot '{name}' exists but is not a pgoutput slot of this database \
         (plugin {plugin}, database {database})"
    )]
    Incompatible {
        name: String,
        plugin: String,
        database: String,
    },
    #[error("replication slot '{name}' is active: walsender pid {pid} holds it")]
    Active { name: String, pid: i32 },
    #[error("replication slot '{name}' is still held by pid {pid} after terminating its walsender")]
    StillActive { name: String, pid: i32 },
    #[error("the server does not allow logical replication slots: {reason}")]
    WalLevel { reason: String },
    /// The server reported a position ds-sync cannot read: never taken as 0, which would
    /// start from (or confirm) the wrong place.
    #[error("replication slot '{slot}': {column} from pg_replication_slots: {source}")]
    BadLsn {
        slot: String,
        column: &'static str,
        #[source]
        source: LsnParseError,
    },
    /// `failover` asked of a server before PostgreSQL 17.
    #[error(
        "replication slot '{name}': failover slots need PostgreSQL 17 or later; this server is {version}"
    )]
    FailoverNeedsNewerServer { name: String, version: String },
    /// The replication command that turns `failover` on for an existing slot failed.
    #[error("replication slot '{name}': turning failover on failed: {reason}")]
    FailoverAlter { name: String, reason: String },
    #[error(transparent)]
    Pg(#[from] PgError),
}

impl SlotError {
    /// A sentence telling the operator what to do next, when there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            SlotError::NotFound(_) => Some("List slots with `ds-sync slot list`.".into()),
            SlotError::AlreadyExists(_) => {
                Some("Pass --if-not-exists to accept an existing slot.".into())
            }
            SlotError::Incompatible { .. } => Some(
                "Choose another slot name with --slot, or drop that slot if it is unused.".into(),
            ),
            SlotError::Active { pid, .. } => Some(format!(
                "Stop the consumer that holds it, or pass --force to terminate pid {pid}."
            )),
            SlotError::StillActive { .. } => Some(
                "A consumer keeps reconnecting to this slot: stop it first, then drop the slot."
                    .into(),
            ),
            SlotError::WalLevel { .. } => Some(
                "Set wal_level = logical and restart the server; `ds-sync init` checks all prerequisites."
                    .into(),
            ),
            SlotError::FailoverNeedsNewerServer { .. } => Some(
                "Run without --failover-slot (the slot then does not survive a promotion of a physical standby), or upgrade the server.".into(),
            ),
            SlotError::FailoverAlter { .. } => Some(
                "The slot must be idle to be altered: stop the consumer that holds it, or drop and recreate the slot with --failover.".into(),
            ),
            SlotError::BadLsn { .. } => Some(
                "PostgreSQL prints positions as X/Y (two hex numbers); a server or proxy that changes that form is not supported. Report the text above.".into(),
            ),
            _ => None,
        }
    }
}

/// What the server knows about one slot, with its lag computed against the current WAL
/// position.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlotInfo {
    pub slot_name: String,
    pub plugin: Option<String>,
    pub slot_type: String,
    pub database: Option<String>,
    pub temporary: bool,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush_lsn: Option<Lsn>,
    /// Bytes of WAL between the slot's confirmed position and the server's current position.
    pub lag_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost` (NULL for slots that never reserved WAL).
    pub wal_status: Option<String>,
    /// Bytes that can still be written before the slot is in danger of being lost; NULL when
    /// `max_slot_wal_keep_size` is unlimited.
    pub safe_wal_size: Option<i64>,
    /// Synchronized to physical standbys, so that a promoted standby keeps it (PostgreSQL
    /// 17+; NULL before).
    pub failover: Option<bool>,
    /// A copy kept in sync from the primary (on a standby, PostgreSQL 17+; NULL before).
    pub synced: Option<bool>,
}

impl SlotInfo {
    /// A lost slot can never be resumed: its WAL is gone.
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }

    /// The row of [`SLOTS_SQL`]; a position that is not an LSN is an error naming it.
    fn from_row(row: &Row) -> Result<Self, SlotError> {
        let slot_name: String = row.get("slot_name");
        let lsn = |column: &'static str| position(&slot_name, column, row.get(column));
        Ok(SlotInfo {
            restart_lsn: lsn("restart_lsn")?,
            confirmed_flush_lsn: lsn("confirmed_flush_lsn")?,
            slot_name,
            plugin: row.get("plugin"),
            slot_type: row.get("slot_type"),
            database: row.get("database"),
            temporary: row.get("temporary"),
            active: row.get("active"),
            active_pid: row.get("active_pid"),
            lag_bytes: row.get("lag_bytes"),
            wal_status: row.get("wal_status"),
            safe_wal_size: row.get("safe_wal_size"),
            failover: row.get("failover"),
            synced: row.get("synced"),
        })
    }
}

/// A position column of `pg_replication_slots` (NULL for a slot that never reserved WAL);
/// text that is not an LSN is an error naming the slot and the column. Pure.
fn position(
    slot: &str,
    column: &'static str,
    text: Option<&str>,
) -> Result<Option<Lsn>, SlotError> {
    text.map(str::parse::<Lsn>)
        .transpose()
        .map_err(|source| SlotError::BadLsn {
            slot: slot.to_owned(),
            column,
            source,
        })
}

/// The current WAL position on a primary, or the replayed position on a standby (where
/// `pg_current_wal_lsn()` is not allowed).
const SLOTS_SQL: &str = "\
    SELECT s.slot_name::text AS slot_name, s.plugin::text AS plugin, \
           s.slot_type::text AS slot_type, s.database::text AS database, s.temporary, \
           s.active, s.active_pid, s.restart_lsn::text AS restart_lsn, \
           s.confirmed_flush_lsn::text AS confirmed_flush_lsn, \
           pg_wal_lsn_diff(cur.lsn, COALESCE(s.confirmed_flush_lsn, s.restart_lsn))::int8 \
             AS lag_bytes, \
           s.wal_status, s.safe_wal_size, \
           (to_jsonb(s) ->> 'failover')::bool AS failover, \
           (to_jsonb(s) ->> 'synced')::bool AS synced \
    FROM pg_replication_slots s, \
         (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                      ELSE pg_current_wal_lsn() END AS lsn) cur \
    WHERE $1::text IS NULL OR s.slot_name = $1::text \
    ORDER BY s.slot_name";

/// Every slot of the cluster, ordered by name.
pub async fn list(client: &Client) -> Result<Vec<SlotInfo>, SlotError> {
    let rows = client
        .query(SLOTS_SQL, &[&None::<String>])
        .await
        .map_err(|e| PgError::query("listing replication slots", &e))?;
    rows.iter().map(SlotInfo::from_row).collect()
}

/// One slot by name, or `None` when it does not exist.
pub async fn find(client: &Client, name: &str) -> Result<Option<SlotInfo>, SlotError> {
    validate_slot_name(name)?;
    let row = client
        .query_opt(SLOTS_SQL, &[&Some(name)])
        .await
        .map_err(|e| PgError::query(format!("reading replication slot '{name}'"), &e))?;
    row.as_ref().map(SlotInfo::from_row).transpose()
}

/// One slot by name; a missing slot is an error.
pub async fn status(client: &Client, name: &str) -> Result<SlotInfo, SlotError> {
    find(client, name)
        .await?
        .ok_or_else(|| SlotError::NotFound(name.to_string()))
}

/// The outcome of `create`.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    /// False when `--if-not-exists` found the slot already there.
    pub created: bool,
    pub slot: SlotInfo,
}

/// How [`create`] makes a slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreateSlot {
    /// The server drops it when the creating session ends.
    pub temporary: bool,
    /// An existing compatible slot of that name is accepted.
    pub if_not_exists: bool,
    /// Synchronized to physical standbys (`failover = true`, PostgreSQL 17+), so that a
    /// promoted standby keeps it and capture resumes there.
    pub failover: bool,
}

/// Refuses `failover` on a server that has no failover slots, naming its version.
///
/// # Errors
///
/// The server is older than PostgreSQL 17, or its version could not be read.
pub async fn check_failover_supported(client: &Client, name: &str) -> Result<(), SlotError> {
    let version = crate::pg::server_version(client).await?;
    if version.has_failover_slots() {
        return Ok(());
    }
    Err(SlotError::FailoverNeedsNewerServer {
        name: name.to_owned(),
        version: version.text,
    })
}

/// Creates a logical pgoutput slot in the connected database.
///
/// A temporary slot lives only as long as `client`'s session.
pub async fn create(client: &Client, name: &str, how: CreateSlot) -> Result<Created, SlotError> {
    validate_slot_name(name)?;
    if how.failover {
        check_failover_supported(client, name).await?;
    }
    let result = if how.failover {
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1::text::name, $2::text::name, $3, \
                 false, true)",
                &[&name, &PLUGIN, &how.temporary],
            )
            .await
    } else {
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1::text::name, $2::text::name, $3)",
                &[&name, &PLUGIN, &how.temporary],
            )
            .await
    };
    let created = match result {
        Ok(_) => true,
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => {
            if !how.if_not_exists {
                return Err(SlotError::AlreadyExists(name.to_string()));
            }
            false
        }
        Err(e) if e.code() == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) => {
            return Err(SlotError::WalLevel {
                reason: crate::pg::describe(&e),
            });
        }
        Err(e) => {
            return Err(PgError::query(format!("creating replication slot '{name}'"), &e).into());
        }
    };
    let slot = status(client, name).await?;
    if !created {
        check_compatible(client, &slot).await?;
    }
    Ok(Created { created, slot })
}

/// [`create`], logging every few seconds which transactions the creation waits for (read on
/// a second connection to `target`, opened once the wait is long). An existing slot
/// without failover gets it turned on when `how` asks for it.
pub async fn create_reporting(
    client: &Client,
    target: &PgTarget,
    name: &str,
    how: CreateSlot,
) -> Result<Created, SlotError> {
    let mut created = create_waiting(client, target, name, how).await?;
    if how.failover && created.slot.failover == Some(false) {
        enable_failover(target, name).await?;
        tracing::info!(slot = %name, "turned failover on for the existing slot");
        created.slot = status(client, name).await?;
    }
    Ok(created)
}

/// `ALTER_REPLICATION_SLOT name (FAILOVER true)`: a replication command (there is no SQL
/// function for it), refused by the server while a consumer holds the slot.
async fn enable_failover(target: &PgTarget, name: &str) -> Result<(), SlotError> {
    let alter = |reason: String| SlotError::FailoverAlter {
        name: name.to_owned(),
        reason,
    };
    let command = crate::pg::replication_session::alter_failover_command(name)?;
    let mut session = crate::pg::replication_session::ReplicationSession::connect(target)
        .await
        .map_err(|e| alter(e.to_string()))?;
    let result = session
        .simple_query(&command, "turning failover on")
        .await
        .map_err(|e| alter(e.to_string()));
    session.terminate().await;
    result.map(|_| ())
}

async fn create_waiting(
    client: &Client,
    target: &PgTarget,
    name: &str,
    how: CreateSlot,
) -> Result<Created, SlotError> {
    let pid = waits::backend_pid(client).await?;
    let mut monitor = waits::Monitor::new(target);
    let what = creating(name);
    waits::reporting(
        create(client, name, how),
        waits::REPORT_EVERY,
        async |waited| {
            let advice = waits::SLOT_CREATION_ADVICE;
            monitor
                .report(pid, Some(waited), &what, waited, advice)
                .await;
        },
    )
    .await
}

/// What slot creation is called in reports of its wait.
pub fn creating(name: &str) -> String {
    format!("creating replication slot '{name}'")
}

/// An existing slot is only usable when it is a pgoutput slot of the connected database.
async fn check_compatible(client: &Client, slot: &SlotInfo) -> Result<(), SlotError> {
    let db: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| PgError::query("reading the current database", &e))?
        .get(0);
    let plugin = slot
        .plugin
        .clone()
        .unwrap_or_else(|| "none (physical)".into());
    let database = slot.database.clone().unwrap_or_else(|| "none".into());
    if plugin != PLUGIN || database != db {
        return Err(SlotError::Incompatible {
            name: slot.slot_name.clone(),
            plugin,
            database,
        });
    }
    Ok(())
}

/// The outcome of `drop`.
#[derive(Debug, Clone, Serialize)]
pub struct Dropped {
    pub slot_name: String,
    /// The walsender pid that `--force` terminated, if any.
    pub terminated_pid: Option<i32>,
}

/// Drops a slot. An active slot is refused unless `force`, which terminates the walsender
/// that holds it and waits for the slot to be released.
pub async fn drop(client: &Client, name: &str, force: bool) -> Result<Dropped, SlotError> {
    let deadline = tokio::time::Instant::now() + RELEASE_TIMEOUT;
    let mut terminated_pid = None;
    loop {
        let slot = status(client, name).await?;
        if let (true, Some(pid)) = (slot.active, slot.active_pid) {
            if !force {
                return Err(SlotError::Active {
                    name: name.to_string(),
                    pid,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SlotError::StillActive {
                    name: name.to_string(),
                    pid,
                });
            }
            if terminated_pid != Some(pid) {
                terminate(client, pid).await?;
                terminated_pid = Some(pid);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        match client
            .execute("SELECT pg_drop_replication_slot($1::text::name)", &[&name])
            .await
        {
            Ok(_) => {
                return Ok(Dropped {
                    slot_name: name.to_string(),
                    terminated_pid,
                });
            }
            // The slot was taken between our check and the drop: look again.
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
                return Err(SlotError::NotFound(name.to_string()));
            }
            Err(e) => {
                return Err(
                    PgError::query(format!("dropping replication slot '{name}'"), &e).into(),
                );
            }
        }
    }
}

async fn terminate(client: &Client, pid: i32) -> Result<(), SlotError> {
    tracing::info!(pid, "terminating the walsender that holds the slot");
    client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .map_err(|e| PgError::query(format!("terminating walsender pid {pid}"), &e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_a_bad_one_names_the_slot_and_column() {
        assert_eq!(position("s", "restart_lsn", None).unwrap(), None);
        assert_eq!(
            position("s", "restart_lsn", Some("0/16B3748")).unwrap(),
            Some(Lsn::from_u64(0x16B_3748))
        );
        let err = position("s1", "confirmed_flush_lsn", Some("16-B374D848")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("'s1'")
                && text.contains("confirmed_flush_lsn")
                && text.contains("'16-B374D848'"),
            "{text}"
        );
        assert!(err.hint().is_some());
    }
}
