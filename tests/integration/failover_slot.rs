//! Failover slots (README, "HA and scaling"): `slot create --failover` and `run
//! --failover-slot` make a slot that PostgreSQL 17+ synchronizes to physical standbys, refused
//! with the version named on older servers; capture resumes on a promoted standby from the
//! synchronized slot, every row once and in order.

use ds_sync::embedded::DsServerOptions;

use crate::kit::physical::{Pair, primary_with_standby};
use crate::kit::{
    CaptureProcess, TestServer, server_major, test_db, wait_keys_exactly, wait_streaming,
};

/// `(failover, synced)` of `slot` as `slot list` shows it.
async fn slot_flags(db: &crate::kit::TestDb, slot: &str) -> (serde_json::Value, serde_json::Value) {
    let list = db
        .ds_sync(&["slot", "list", "--output", "json"])
        .await
        .ok()
        .json();
    let s = list
        .as_array()
        .and_then(|a| a.iter().find(|s| s["slot_name"] == slot))
        .unwrap_or_else(|| panic!("slot {slot} missing from {list:#}"))
        .clone();
    (s["failover"].clone(), s["synced"].clone())
}

/// On the suite's server: refused with the version named before PostgreSQL 17 (by `slot
/// create` and by `run`, which then creates no slot); made a failover slot from 17 on.
#[tokio::test]
async fn failover_is_refused_before_postgresql_17_and_made_from_it() {
    let db = test_db("failover_refused").await;
    let sql = db.client().await;
    sql.batch_execute("CREATE TABLE s (id int PRIMARY KEY)")
        .await
        .unwrap();
    let slot = db.slot("f");
    let run = db
        .ds_sync(&["slot", "create", &slot, "--failover", "--output", "json"])
        .await;
    if server_major(&sql).await >= 17 {
        let created = run.ok().json();
        assert_eq!(created["slot"]["failover"], true, "{created:#}");
        return;
    }
    let run = run.expect_code(1);
    assert!(
        run.stderr
            .contains("failover slots need PostgreSQL 17 or later")
            && run.stderr.contains("--failover-slot"),
        "{}",
        run.stderr
    );
    let server = TestServer::start(DsServerOptions::default()).await;
    let capture =
        CaptureProcess::start(&db, &server.url(), &["--tables", "s", "--failover-slot"]).await;
    assert_eq!(capture.wait_exit("refusing --failover-slot").await, 1);
    assert!(
        capture
            .log()
            .contains("failover slots need PostgreSQL 17 or later"),
        "{}",
        capture.log()
    );
    let slots = sql
        .query(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name LIKE $1",
            &[&format!("{}%", db.name)],
        )
        .await
        .unwrap();
    assert!(slots.is_empty(), "no slot is created when refused");
}

/// PostgreSQL 17: `slot create --failover` makes a failover slot, and with
/// `--if-not-exists` turns failover on for an existing ordinary one.
#[tokio::test]
async fn slot_create_makes_or_turns_on_a_failover_slot_on_postgresql_17() {
    let Pair { db, .. } = &primary_with_standby(17, "failover_create", "SELECT 1").await;
    let fresh = db.slot("fresh");
    let created = db
        .ds_sync(&["slot", "create", &fresh, "--failover", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(created["slot"]["failover"], true, "{created:#}");
    let plain = db.slot("plain");
    db.ds_sync(&["slot", "create", &plain]).await.ok();
    assert_eq!(slot_flags(db, &plain).await.0, false);
    db.ds_sync(&["slot", "create", &plain, "--if-not-exists", "--failover"])
        .await
        .ok();
    assert_eq!(slot_flags(db, &plain).await.0, true);
}

const DDL: &str = "CREATE TABLE s (id int PRIMARY KEY); CREATE TABLE tick (id serial PRIMARY KEY)";

/// The whole failover: capture with `--failover-slot` on a primary, the slot synchronized to
/// a standby, more rows captured after that sync (so the standby's copy lags what the DS
/// server has), ds-sync killed and the primary stopped, the standby promoted and written to,
/// and capture started on it: rows 1..=70 once each and in order (the lagging rows replayed
/// from the synchronized slot are recognised as written before the promotion).
#[tokio::test]
async fn capture_resumes_on_a_promoted_standby_from_the_failover_slot() {
    let server = TestServer::start(DsServerOptions::default()).await;
    let client =
        ds_sync::ds::DsClient::new(&server.url(), ds_sync::ds::ClientOptions::default()).unwrap();
    let mut pair = primary_with_standby(17, "failover_promote", DDL).await;
    let slot = pair.db.slot("cap");
    let args = [
        "--tables",
        "s,tick",
        "--failover-slot",
        "--snapshot",
        "never",
    ];
    let active = CaptureProcess::start(&pair.db, &server.url(), &args).await;
    wait_streaming(&pair.db).await;
    let sql = pair.db.client().await;
    let insert = async |sql: &tokio_postgres::Client, keys: std::ops::RangeInclusive<i32>| {
        for k in keys {
            sql.execute("INSERT INTO s VALUES ($1)", &[&k])
                .await
                .unwrap();
        }
    };
    insert(&sql, 1..=50).await;
    wait_keys_exactly(&client, "pg-s", 50).await;
    assert_eq!(slot_flags(&pair.db, &slot).await.0, true);
    pair.sync_slot(&slot, "INSERT INTO tick DEFAULT VALUES")
        .await;
    insert(&sql, 51..=60).await;
    wait_keys_exactly(&client, "pg-s", 60).await;
    pair.wait_replayed().await;
    let active_log = active.kill().await;
    // The primary waits for the standby (the kit sets synchronized_standby_slots): no warning.
    assert!(
        !active_log.contains("synchronized_standby_slots is empty"),
        "{active_log}"
    );
    drop(sql);
    pair.primary.stop();
    let standby = pair.standby_db.client().await;
    standby
        .execute("SELECT pg_promote(true, 60)", &[])
        .await
        .expect("promoting the standby");
    insert(&standby, 61..=70).await;
    let resumed = CaptureProcess::start(&pair.standby_db, &server.url(), &args).await;
    wait_keys_exactly(&client, "pg-s", 70).await;
    assert!(
        resumed
            .log()
            .contains("promoted from the recorded timeline"),
        "{}",
        resumed.log()
    );
    // The promoted standby waits for no standby of its own: ds-sync says so.
    assert!(
        resumed
            .log()
            .contains("synchronized_standby_slots is empty"),
        "{}",
        resumed.log()
    );
    resumed.stop_ok().await;
}
