//! `ds-sync slot ...` against a real cluster.

use std::time::Duration;

use ds_sync::embedded::PostgresOptions;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig};

use crate::kit::{TestDb, start_cluster, test_db, test_db_in, wait_until};

fn find<'a>(list: &'a serde_json::Value, slot: &str) -> &'a serde_json::Value {
    list.as_array()
        .expect("slot list is a JSON array")
        .iter()
        .find(|s| s["slot_name"] == slot)
        .unwrap_or_else(|| panic!("slot {slot} missing from {list:#}"))
}

#[tokio::test]
async fn create_list_status_drop() {
    let db = test_db("slot_cycle").await;
    let slot = db.slot("a");
    let run = db
        .ds_sync(&["slot", "create", &slot, "--output", "json"])
        .await
        .ok();
    let created = run.json();
    assert_eq!(created["created"], true);
    assert_eq!(created["slot"]["plugin"], "pgoutput");
    assert_eq!(created["slot"]["database"], db.name.as_str());

    let list = db
        .ds_sync(&["slot", "list", "--output", "json"])
        .await
        .ok()
        .json();
    let s = find(&list, &slot);
    assert_eq!(s["active"], false);
    assert_eq!(s["wal_status"], "reserved");
    assert!(s["confirmed_flush_lsn"].as_str().unwrap().contains('/'));

    let table = db.ds_sync(&["slot", "status", &slot]).await.ok();
    assert!(
        table.stdout.contains(&slot) && table.stdout.contains("reserved"),
        "{}",
        table.stdout
    );

    let dropped = db.ds_sync(&["slot", "drop", &slot]).await.ok();
    assert!(
        dropped.stdout.contains(&format!("dropped slot {slot}")),
        "{}",
        dropped.stdout
    );
    let missing = db.ds_sync(&["slot", "status", &slot]).await.expect_code(4);
    assert!(
        missing.stderr.contains("does not exist"),
        "{}",
        missing.stderr
    );
    db.ds_sync(&["slot", "drop", &slot]).await.expect_code(4);
}

#[tokio::test]
async fn lag_grows_after_writes() {
    let db = test_db("slot_lag").await;
    let slot = db.slot("lag");
    db.ds_sync(&["slot", "create", &slot]).await.ok();
    let lag = |list: &serde_json::Value| {
        find(list, &slot)["lag_bytes"]
            .as_i64()
            .expect("lag_bytes is a number")
    };
    let before = lag(&db
        .ds_sync(&["slot", "list", "--output", "json"])
        .await
        .ok()
        .json());

    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE filler (id int, t text); \
             INSERT INTO filler SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g;",
        )
        .await
        .unwrap();
    let after = lag(&db
        .ds_sync(&["slot", "list", "--output", "json"])
        .await
        .ok()
        .json());
    assert!(
        after >= before + 500_000,
        "lag should grow by the ~600 kB just written: before {before}, after {after}"
    );
}

#[tokio::test]
async fn invalid_names_are_refused_before_reaching_the_server() {
    let db = test_db("slot_names").await;
    for bad in ["Bad-Name", "x;drop", &"a".repeat(64)] {
        let run = db.ds_sync(&["slot", "create", bad]).await.expect_code(1);
        assert!(
            run.stderr.contains("invalid slot name") && run.stderr.contains("a-z, 0-9 and _"),
            "{bad}: {}",
            run.stderr
        );
    }
}

#[tokio::test]
async fn already_exists_and_if_not_exists() {
    let db = test_db("slot_exists").await;
    let slot = db.slot("dup");
    db.ds_sync(&["slot", "create", &slot]).await.ok();
    let run = db.ds_sync(&["slot", "create", &slot]).await.expect_code(1);
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);
    assert!(
        run.stderr.contains("--if-not-exists"),
        "the hint names the option: {}",
        run.stderr
    );
    let run = db
        .ds_sync(&[
            "slot",
            "create",
            &slot,
            "--if-not-exists",
            "--output",
            "json",
        ])
        .await
        .ok();
    assert_eq!(run.json()["created"], false);
}

#[tokio::test]
async fn if_not_exists_refuses_a_slot_of_another_database() {
    let a = test_db("slot_other_a").await;
    let b = test_db("slot_other_b").await;
    let slot = a.slot("shared");
    a.ds_sync(&["slot", "create", &slot]).await.ok();
    let run = b
        .ds_sync(&["slot", "create", &slot, "--if-not-exists"])
        .await
        .expect_code(1);
    assert!(
        run.stderr.contains("not a pgoutput slot of this database"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&a.name),
        "names the other database: {}",
        run.stderr
    );
}

#[tokio::test]
async fn temporary_slot_is_gone_after_the_command() {
    let db = test_db("slot_temp").await;
    let slot = db.slot("tmp");
    let run = db
        .ds_sync(&["slot", "create", &slot, "--temporary"])
        .await
        .ok();
    assert!(run.stdout.contains("temporary"), "{}", run.stdout);
    db.ds_sync(&["slot", "status", &slot]).await.expect_code(4);
}

/// Holds a slot the way a consumer does: a real replication connection streaming from it.
async fn hold_slot(db: &TestDb, slot: &str) -> ReplicationClient {
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE held (id int primary key); CREATE PUBLICATION held_pub FOR TABLE held;",
        )
        .await
        .unwrap();
    let cfg = ReplicationConfig::new(
        "127.0.0.1",
        "postgres",
        db.password.clone(),
        db.name.clone(),
        slot,
        "held_pub",
    )
    .with_port(db.port)
    .with_start_lsn(Lsn::ZERO);
    let repl = ReplicationClient::connect(cfg)
        .await
        .expect("replication connection");
    wait_until(
        format!("slot {slot} to become active"),
        Duration::from_secs(10),
        || async {
            client
                .query_one(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        },
    )
    .await;
    repl
}

#[tokio::test]
async fn dropping_an_active_slot_needs_force() {
    let db = test_db("slot_active").await;
    let slot = db.slot("busy");
    db.ds_sync(&["slot", "create", &slot]).await.ok();
    let _consumer = hold_slot(&db, &slot).await;
    let status = db
        .ds_sync(&["slot", "status", &slot, "--output", "json"])
        .await
        .ok()
        .json();
    let pid = status[0]["active_pid"]
        .as_i64()
        .expect("an active slot has a pid");

    let refused = db.ds_sync(&["slot", "drop", &slot]).await.expect_code(1);
    assert!(
        refused
            .stderr
            .contains(&format!("walsender pid {pid} holds it")),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    db.ds_sync(&["slot", "status", &slot]).await.ok();

    let forced = db
        .ds_sync(&["slot", "drop", &slot, "--force", "--output", "json"])
        .await
        .ok();
    assert_eq!(forced.json()["terminated_pid"], pid);
    db.ds_sync(&["slot", "status", &slot]).await.expect_code(4);
}

#[tokio::test]
async fn a_slot_past_max_slot_wal_keep_size_is_reported_lost() {
    let pg = start_cluster(&PostgresOptions {
        initdb_args: vec!["--wal-segsize=1".into()],
        settings: vec![
            ("max_slot_wal_keep_size".into(), "1MB".into()),
            ("min_wal_size".into(), "2MB".into()),
            ("max_wal_size".into(), "4MB".into()),
        ],
        ..PostgresOptions::default()
    });
    let db = test_db_in(&pg, "slot_lost").await;
    let slot = db.slot("old");
    db.ds_sync(&["slot", "create", &slot]).await.ok();
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE w (t text)")
        .await
        .unwrap();
    for _ in 0..8 {
        client
            .batch_execute("INSERT INTO w SELECT repeat('x', 1000) FROM generate_series(1, 300); SELECT pg_switch_wal();")
            .await
            .unwrap();
    }
    client.batch_execute("CHECKPOINT").await.unwrap();
    let run = db
        .ds_sync(&["slot", "status", &slot, "--output", "json"])
        .await
        .expect_code(5);
    assert_eq!(run.json()[0]["wal_status"], "lost");
    assert!(run.stderr.contains("is lost"), "{}", run.stderr);
    assert!(
        run.stderr.contains("re-snapshot"),
        "the hint gives the way back: {}",
        run.stderr
    );
}
