//! `ds-sync init`: the schema ds-sync needs, and the server settings it depends on.
//!
//! The SQL lives in `sql/` as numbered files, embedded at build time. Each file is applied
//! once, in order, inside one transaction that holds an advisory lock, and recorded in
//! `ds_sync.migrations`; the files are themselves idempotent (`IF NOT EXISTS`) so that a
//! database where someone created `session_events` by hand is adopted, not broken.

use serde::Serialize;
use tokio_postgres::Client;

use crate::pg::PgError;

/// One embedded SQL file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every schema change ds-sync knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "001_session_events",
        sql: include_str!("../sql/001_session_events.sql"),
    },
    Migration {
        version: 2,
        name: "002_ds_sync_bookkeeping",
        sql: include_str!("../sql/002_ds_sync_bookkeeping.sql"),
    },
    Migration {
        version: 3,
        name: "003_ingest",
        sql: include_str!("../sql/003_ingest.sql"),
    },
    Migration {
        version: 4,
        name: "004_snapshot",
        sql: include_str!("../sql/004_snapshot.sql"),
    },
    Migration {
        version: 5,
        name: "005_signals",
        sql: include_str!("../sql/005_signals.sql"),
    },
    Migration {
        version: 6,
        name: "006_probe",
        sql: include_str!("../sql/006_probe.sql"),
    },
    Migration {
        version: 7,
        name: "007_capture_guards",
        sql: include_str!("../sql/007_capture_guards.sql"),
    },
    Migration {
        version: 8,
        name: "008_snapshot_baselines",
        sql: include_str!("../sql/008_snapshot_baselines.sql"),
    },
    Migration {
        version: 9,
        name: "009_ingest_memory",
        sql: include_str!("../sql/009_ingest_memory.sql"),
    },
    Migration {
        version: 11,
        name: "011_session_events_indexes",
        sql: include_str!("../sql/011_session_events_indexes.sql"),
    },
    Migration {
        version: 12,
        name: "012_ingest_leases",
        sql: include_str!("../sql/012_ingest_leases.sql"),
    },
];

/// Serializes concurrent `init` runs (the value spells "ds-sync" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x64_73_2d_73_79_6e_63;

const BOOTSTRAP_SQL: &str = "\
    CREATE SCHEMA IF NOT EXISTS ds_sync; \
    CREATE TABLE IF NOT EXISTS ds_sync.migrations ( \
        version INT PRIMARY KEY, \
        name TEXT NOT NULL, \
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now())";

/// What `apply` did with one migration.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MigrationStatus {
    pub name: String,
    /// True when this run applied it; false when it was already there.
    pub applied_now: bool,
}

/// Applies every migration the database lacks, atomically.
pub async fn apply(client: &mut Client) -> Result<Vec<MigrationStatus>, PgError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| PgError::query("starting the schema transaction", &e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(|e| PgError::query("taking the schema lock", &e))?;
    tx.batch_execute(BOOTSTRAP_SQL)
        .await
        .map_err(|e| PgError::query("creating schema ds_sync", &e))?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM ds_sync.migrations", &[])
        .await
        .map_err(|e| PgError::query("reading ds_sync.migrations", &e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut statuses = Vec::with_capacity(MIGRATIONS.len());
    for m in MIGRATIONS {
        let applied_now = !done.contains(&m.version);
        if applied_now {
            tx.batch_execute(m.sql)
                .await
                .map_err(|e| PgError::query(format!("applying sql/{}.sql", m.name), &e))?;
            tx.execute(
                "INSERT INTO ds_sync.migrations (version, name) VALUES ($1, $2)",
                &[&m.version, &m.name],
            )
            .await
            .map_err(|e| PgError::query("recording a migration", &e))?;
        }
        statuses.push(MigrationStatus {
            name: m.name.to_string(),
            applied_now,
        });
    }
    tx.commit()
        .await
        .map_err(|e| PgError::query("committing the schema", &e))?;
    Ok(statuses)
}

/// One prerequisite of the server or role.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What the server reported.
    pub value: String,
    /// How to fix it, when it failed.
    pub fix: Option<String>,
}

/// The server's settings, as read in one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    pub version_num: i32,
    pub version: String,
    pub wal_level: String,
    pub max_replication_slots: i32,
    pub used_replication_slots: i64,
    pub max_wal_senders: i32,
    pub role: String,
    pub role_can_replicate: bool,
}

/// Reads the facts the checks judge.
pub async fn server_facts(client: &Client) -> Result<ServerFacts, PgError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'), \
                    current_setting('wal_level'), \
                    current_setting('max_replication_slots')::int, \
                    (SELECT count(*) FROM pg_replication_slots), \
                    current_setting('max_wal_senders')::int, \
                    current_user::text, \
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await
        .map_err(|e| PgError::query("reading server settings", &e))?;
    Ok(ServerFacts {
        version_num: row.get(0),
        version: row.get(1),
        wal_level: row.get(2),
        max_replication_slots: row.get(3),
        used_replication_slots: row.get(4),
        max_wal_senders: row.get(5),
        role: row.get(6),
        role_can_replicate: row.get::<_, Option<bool>>(7).unwrap_or(false),
    })
}

/// Judges the facts: each failed check carries the fix to apply.
pub fn checks(f: &ServerFacts) -> Vec<Check> {
    let check = |name, ok: bool, value: String, fix: String| Check {
        name,
        ok,
        value,
        fix: (!ok).then_some(fix),
    };
    vec![
        check(
            "server_version",
            f.version_num >= 140000,
            f.version.clone(),
            format!(
                "server version {} is too old: ds-sync needs PostgreSQL 14 or newer",
                f.version
            ),
        ),
        check(
            "wal_level",
            f.wal_level == "logical",
            f.wal_level.clone(),
            format!(
                "wal_level is '{}': set wal_level = logical and restart the server",
                f.wal_level
            ),
        ),
        check(
            "max_replication_slots",
            f.max_replication_slots > 0
                && f.used_replication_slots < i64::from(f.max_replication_slots),
            format!(
                "{} ({} in use)",
                f.max_replication_slots, f.used_replication_slots
            ),
            format!(
                "max_replication_slots is {} with {} in use: set max_replication_slots = {} (or more) and restart the server",
                f.max_replication_slots,
                f.used_replication_slots,
                (f.used_replication_slots + 10).max(10)
            ),
        ),
        check(
            "max_wal_senders",
            f.max_wal_senders > 0,
            f.max_wal_senders.to_string(),
            "max_wal_senders is 0: set max_wal_senders = 10 (or more) and restart the server"
                .into(),
        ),
        check(
            "replication_role",
            f.role_can_replicate,
            format!("role {}", f.role),
            format!(
                "role '{}' lacks the REPLICATION attribute: run ALTER ROLE {} REPLICATION as a superuser",
                f.role,
                crate::pg::ident::quote(&f.role)
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ServerFacts {
        ServerFacts {
            version_num: 150018,
            version: "15.18".into(),
            wal_level: "logical".into(),
            max_replication_slots: 10,
            used_replication_slots: 1,
            max_wal_senders: 10,
            role: "app".into(),
            role_can_replicate: true,
        }
    }

    #[test]
    fn a_good_server_passes_every_check() {
        assert!(checks(&good()).iter().all(|c| c.ok && c.fix.is_none()));
    }

    #[test]
    fn each_failure_names_its_fix() {
        let mut f = good();
        f.wal_level = "replica".into();
        f.version_num = 130000;
        f.version = "13.4".into();
        f.max_replication_slots = 2;
        f.used_replication_slots = 2;
        f.max_wal_senders = 0;
        f.role_can_replicate = false;
        let failed: Vec<Check> = checks(&f).into_iter().filter(|c| !c.ok).collect();
        assert_eq!(failed.len(), 5);
        let fixes: Vec<String> = failed.into_iter().map(|c| c.fix.unwrap()).collect();
        assert!(fixes.contains(
            &"wal_level is 'replica': set wal_level = logical and restart the server".to_string()
        ));
        assert!(
            fixes
                .iter()
                .any(|f| f.contains("ALTER ROLE \"app\" REPLICATION"))
        );
        assert!(fixes.iter().any(|f| f.contains("PostgreSQL 14 or newer")));
        assert!(
            fixes
                .iter()
                .any(|f| f.contains("max_replication_slots = 12"))
        );
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        // Strictly increasing (branches reserve version numbers, so one may lag behind).
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert!(i == 0 || MIGRATIONS[i - 1].version < m.version);
            assert!(m.name.starts_with(&format!("{:03}_", m.version)));
        }
    }
}
