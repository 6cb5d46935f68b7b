//! A primary and a physical standby, for failover slots: the standby is made from a base
//! backup taken by the low-level API (`pg_backup_start`, a file copy, `pg_backup_stop`),
//! streams from the primary through a physical slot, and can be promoted.
//!
//! Failover slots exist from PostgreSQL 17 on, whose binaries come from `tests/pg`
//! (installed by `.ci/run`); a missing install fails the test with the command to run.

use std::path::{Path, PathBuf};

use ds_sync::embedded::{LocalPostgres, PostgresOptions};

use super::{TestDb, Wait, connect, start_cluster, test_db_in, wait_until};

/// The physical slot the standby streams through.
pub const PHYSICAL_SLOT: &str = "standby_1";

/// The binaries of PostgreSQL `major` installed in `tests/pg` (14, 16, 17, 18).
pub fn pg_bin(major: u32) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/pg/node_modules/pg{major}/native/bin"));
    assert!(
        dir.join("postgres").is_file() && dir.join("initdb").is_file(),
        "PostgreSQL {major} binaries are missing at {}: run `bash .ci/run`, or \
         `(cd tests/pg && npm ci --ignore-scripts) && node tests/pg/link.js`",
        dir.display()
    );
    dir
}

/// A primary, a database in it, and its streaming standby (which has the database too).
pub struct Pair {
    pub primary: LocalPostgres,
    pub db: TestDb,
    pub standby: LocalPostgres,
    /// The same database, on the standby's port.
    pub standby_db: TestDb,
}

/// Starts a primary of PostgreSQL `major`, creates a database named after `label` and runs
/// `ddl` in it, then builds a standby of it that synchronizes failover slots (hot standby
/// feedback and `sync_replication_slots` on, as in production). The primary then waits for
/// the standby before logical walsenders send WAL (`synchronized_standby_slots`).
pub async fn primary_with_standby(major: u32, label: &str, ddl: &str) -> Pair {
    let bin = pg_bin(major);
    let opts = PostgresOptions {
        bin_dir: Some(bin.clone()),
        ..PostgresOptions::default()
    };
    let primary = tokio::task::spawn_blocking(move || start_cluster(&opts))
        .await
        .expect("starting the primary");
    let db = test_db_in(&primary, label).await;
    db.client()
        .await
        .batch_execute(ddl)
        .await
        .unwrap_or_else(|e| panic!("test schema for {label}: {e}"));
    let admin = connect(&db.admin_url).await;
    admin
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true)",
            &[&PHYSICAL_SLOT],
        )
        .await
        .expect("creating the physical slot");
    let standby = base_backup(&primary, &admin, &db, bin).await;
    for statement in [
        format!("ALTER SYSTEM SET synchronized_standby_slots = '{PHYSICAL_SLOT}'"),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin
            .batch_execute(&statement)
            .await
            .expect("making logical walsenders wait for the standby");
    }
    let standby_db = TestDb {
        name: db.name.clone(),
        url: db
            .url
            .replace(&format!(":{}/", db.port), &format!(":{}/", standby.port())),
        admin_url: db
            .admin_url
            .replace(&format!(":{}/", db.port), &format!(":{}/", standby.port())),
        port: standby.port(),
        password: db.password.clone(),
    };
    let pair = Pair {
        primary,
        db,
        standby,
        standby_db,
    };
    pair.wait_replayed().await;
    pair
}

/// The standby: the primary's files copied between `pg_backup_start` and `pg_backup_stop`
/// (the backup label written from what the latter returns), started in standby mode.
async fn base_backup(
    primary: &LocalPostgres,
    admin: &tokio_postgres::Client,
    db: &TestDb,
    bin: PathBuf,
) -> LocalPostgres {
    admin
        .execute("SELECT pg_backup_start('ds-sync test standby', true)", &[])
        .await
        .expect("pg_backup_start");
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres password={} dbname={} application_name=standby_1",
        db.port, db.password, db.name
    );
    let settings = [
        ("hot_standby", "on".to_owned()),
        ("hot_standby_feedback", "on".to_owned()),
        ("sync_replication_slots", "on".to_owned()),
        ("primary_slot_name", PHYSICAL_SLOT.to_owned()),
        ("primary_conninfo", conninfo),
    ];
    let opts = PostgresOptions {
        bin_dir: Some(bin),
        settings: settings
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        ..PostgresOptions::default()
    };
    let mut standby = LocalPostgres::copy_of(primary, &opts).expect("copying the primary");
    let row = admin
        .query_one(
            "SELECT labelfile, spcmapfile FROM pg_backup_stop(false)",
            &[],
        )
        .await
        .expect("pg_backup_stop");
    let label: String = row.get(0);
    standby
        .write_data_file("backup_label", &label)
        .expect("writing backup_label");
    standby
        .write_data_file("standby.signal", "")
        .expect("writing standby.signal");
    tokio::task::spawn_blocking(move || {
        standby.start_on_free_port().expect("starting the standby");
        standby
    })
    .await
    .expect("starting the standby")
}

impl Pair {
    /// Waits until the standby has replayed everything the primary wrote so far.
    pub async fn wait_replayed(&self) {
        let primary = connect(&self.db.admin_url).await;
        let target: String = primary
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("reading the primary's position")
            .get(0);
        let standby = connect(&self.standby_db.admin_url).await;
        wait_until(
            "the standby to replay the primary's WAL",
            std::time::Duration::from_secs(60),
            || async {
                let caught_up: Option<bool> = standby
                    .query_one(
                        "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                        &[&target],
                    )
                    .await
                    .ok()
                    .and_then(|r| r.get(0));
                caught_up.unwrap_or(false).then_some(())
            },
        )
        .await;
    }

    /// Synchronizes the failover slots to the standby until `slot` is there, persistent,
    /// with the primary's confirmed position; returns that position. `nudge` is run in the
    /// primary's database between attempts: a write that capture streams.
    pub async fn sync_slot(&self, slot: &str, nudge: &str) -> String {
        let primary = connect(&self.db.admin_url).await;
        let db = connect(&self.db.url).await;
        let standby = connect(&self.standby_db.url).await;
        let (primary, db, standby) = (&primary, &db, &standby);
        Wait::new(
            "the failover slot to be synchronized to the standby",
            std::time::Duration::from_secs(60),
        )
        .every(std::time::Duration::from_millis(300))
        .until(|| async move {
            let want: String = primary
                .query_one(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
                     WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            // The standby's slot stays temporary while the slot's catalog xmin is older than
            // what the standby can keep (PostgreSQL declines to sync a slot that could need
            // removed rows): a running-transactions record, once decoded and confirmed,
            // moves the slot's xmin on. `nudge`, a captured write, makes capture confirm a position past that record at
            // once (an idle slot's position moves only now and then).
            primary
                .batch_execute("SELECT pg_log_standby_snapshot()")
                .await
                .map_err(|e| e.to_string())?;
            db.batch_execute(nudge).await.map_err(|e| e.to_string())?;
            let row = standby
                .query_opt(
                    "SELECT confirmed_flush_lsn::text, synced, temporary \
                     FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .map_err(|e| e.to_string())?;
            let seen = row.map(|r| {
                let flags: (Option<String>, bool, bool) = (r.get(0), r.get(1), r.get(2));
                flags
            });
            match seen {
                Some((Some(got), true, false)) if got == want => Ok(want),
                other => Err(format!(
                    "primary at {want}, standby has {other:?}\nstandby log:\n{}",
                    self.standby.log_tail()
                )),
            }
        })
        .await
    }
}
