//! The initial snapshot end to end: real cluster, real binary, real DS server in-process.
//!
//! Streams are checked the way a client uses them: materialized by key in stream order,
//! applying `reset`, and compared with the table.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use ds_sync::embedded::DsServerOptions;
use ds_sync::lsn::Lsn;
use ds_sync::pg::PgTarget;
use ds_sync::pg::replication_session::ReplicationSession;

use crate::kit::{
    CaptureProcess, ITEMS, Scenario, control, materialize_by_key, read, scenario, spawn_writer,
    wait_converged, wait_until,
};

const LONG: Duration = Duration::from_secs(120);

/// The messages after the last `reset` (or all), checked: one framed snapshot section in
/// which every key appears once, then changes in which every update of a key raises `v`
/// by exactly one (nothing missing, nothing doubled).
fn check_last_section(messages: &[Value]) -> usize {
    let start = messages
        .iter()
        .rposition(|m| control(m) == Some("reset"))
        .map_or(0, |i| i + 1);
    let section = &messages[start..];
    assert_eq!(
        control(&section[0]),
        Some("snapshot-start"),
        "{:?}",
        &section[..3.min(section.len())]
    );
    let end = section
        .iter()
        .position(|m| control(m) == Some("snapshot-end"))
        .expect("a snapshot-end");
    let mut seen = HashSet::new();
    let mut v: HashMap<String, i64> = HashMap::new();
    for m in &section[1..end] {
        assert_eq!(m["headers"]["operation"], "insert", "{m}");
        let key = m["key"].as_str().unwrap().to_string();
        assert!(seen.insert(key.clone()), "key {key} twice in the snapshot");
        v.insert(key, m["value"]["v"].as_i64().unwrap());
    }
    for m in &section[end + 1..] {
        assert!(control(m).is_none(), "no control after the snapshot: {m}");
        let key = m["key"].as_str().unwrap().to_string();
        match m["headers"]["operation"].as_str().unwrap() {
            "insert" => {
                assert!(!v.contains_key(&key), "insert of existing key {key}");
                v.insert(key, m["value"]["v"].as_i64().unwrap());
            }
            "update" => {
                let now = m["value"]["v"].as_i64().unwrap();
                let before = v.insert(key.clone(), now);
                assert_eq!(
                    before,
                    Some(now - 1),
                    "key {key}: update to {now} after {before:?}"
                );
            }
            "delete" => {
                assert!(v.remove(&key).is_some(), "delete of unknown key {key}");
            }
            other => panic!("unexpected operation {other}"),
        }
    }
    end - 1
}

#[tokio::test]
async fn existing_rows_then_concurrent_changes_arrive_once_each() {
    let Scenario { server, client, db, sql, pg: _pg } = scenario(
        "snap_concurrent",
        &format!(
            "{ITEMS} CREATE TABLE orders (id int PRIMARY KEY, v int NOT NULL, status text NOT NULL, secret text); \
             INSERT INTO orders SELECT g, 0, CASE WHEN g % 2 = 0 THEN 'draft' ELSE 'paid' END, 's' \
             FROM generate_series(1, 100) g; \
             CREATE UNIQUE INDEX orders_id_status ON orders (id, status); \
             ALTER TABLE orders REPLICA IDENTITY USING INDEX orders_id_status;"
        ),
        DsServerOptions::default(),
    )
    .await;
    let mut create = vec![
        "publication",
        "create",
        "cap_pub",
        "--tables",
        "items,orders",
    ];
    // Row filters and column lists exist from PostgreSQL 15 on; before, orders is whole.
    let filters = crate::kit::has_row_filters(&sql).await;
    if filters {
        create.extend([
            "--row-filter",
            "orders=status <> 'draft'",
            "--columns",
            "orders=id,v,status",
        ]);
    }
    // PostgreSQL refuses UPDATE with a row filter on columns outside the replica identity
    // (hence the index identity), and with FULL and a column list (hence partial rows).
    create.extend(["--toast", "partial"]);
    db.ds_sync(&create).await.ok();
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = spawn_writer(db.url.clone(), stop.clone());
    let capture = CaptureProcess::start(
        &db,
        &server.url(),
        &["--snapshot-workers", "2", "--toast", "partial"],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let statements = writer.await.unwrap();
    assert!(statements > 0);
    let messages = wait_converged(&client, "pg-items", &sql, "items", &capture).await;
    let snapshot_rows = check_last_section(&messages);
    assert!(
        snapshot_rows >= 19_000,
        "the snapshot held {snapshot_rows} rows"
    );
    assert!(
        messages.iter().all(|m| control(m) != Some("reset")),
        "a first snapshot sends no reset"
    );
    let orders = read(&client, "pg-orders").await;
    assert_eq!(control(&orders[0]), Some("snapshot-start"));
    assert_eq!(control(orders.last().unwrap()), Some("snapshot-end"));
    let rows = materialize_by_key(&orders);
    if filters {
        assert_eq!(rows.len(), 50, "the row filter keeps the paid half");
        for value in rows.values() {
            assert_eq!(value["status"], "paid");
            assert!(
                value.get("secret").is_none(),
                "the column list drops secret: {value}"
            );
        }
    } else {
        assert_eq!(rows.len(), 100, "every row of orders, unfiltered");
    }
    let first = &messages[1];
    assert!(first["headers"]["lsn"].is_string() && first["headers"]["timestamp"].is_string());
    let state: String = sql
        .query_one("SELECT state FROM ds_sync.snapshots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "done");
    sql.batch_execute("UPDATE orders SET v = v + 1")
        .await
        .expect("the application's updates of the filtered table keep working");
    capture.stop_ok().await;
}

#[tokio::test]
async fn a_crash_mid_snapshot_is_followed_by_reset_and_a_whole_snapshot() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "snap_crash",
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, pad text); \
         INSERT INTO items SELECT g, 0, repeat('x', 50) FROM generate_series(1, 100000) g;",
        DsServerOptions::default(),
    )
    .await;
    let slow = ["--tables", "items", "--batch-max-messages", "10"];
    let capture = CaptureProcess::start(&db, &server.url(), &slow).await;
    let partial = wait_until("part of the snapshot", LONG, || async {
        let m = read(&client, "pg-items").await;
        (m.len() > 2000).then_some(m)
    })
    .await;
    let log = capture.kill().await;
    assert!(
        partial.iter().all(|m| control(m) != Some("snapshot-end")),
        "the snapshot ended before the kill; the test needs a slower snapshot\n{log}"
    );
    sql.batch_execute("UPDATE items SET v = v + 1 WHERE id <= 10; DELETE FROM items WHERE id > 99990; INSERT INTO items VALUES (200001, 0)")
        .await
        .unwrap();
    let state: String = sql
        .query_one("SELECT state FROM ds_sync.snapshots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "running");
    let capture = CaptureProcess::start(&db, &server.url(), &["--tables", "items"]).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = spawn_writer(db.url.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    writer.await.unwrap();
    let messages = wait_converged(&client, "pg-items", &sql, "items", &capture).await;
    let resets = messages
        .iter()
        .filter(|m| control(m) == Some("reset"))
        .count();
    assert_eq!(resets, 1, "one reset before the new snapshot");
    let rows = check_last_section(&messages);
    assert!(rows >= 99_000, "the new snapshot is whole: {rows} rows");
    capture.stop_ok().await;
}

#[tokio::test]
async fn never_streams_only_and_always_snapshots_again_with_a_reset() {
    let Scenario { server, client, db, sql, pg: _pg } = scenario(
        "snap_modes",
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL); INSERT INTO items VALUES (1, 0), (2, 0);",
        DsServerOptions::default(),
    )
    .await;
    let capture = crate::kit::start_streaming(
        &db,
        &server.url(),
        &["--tables", "items", "--snapshot", "never"],
    )
    .await;
    sql.batch_execute("INSERT INTO items VALUES (3, 0)")
        .await
        .unwrap();
    let m = wait_until("the insert", LONG, || async {
        let m = read(&client, "pg-items").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(m.len(), 1, "never: no snapshot, only the change: {m:?}");
    assert_eq!(m[0]["key"], "3");
    capture.stop_ok().await;
    sql.batch_execute("DELETE FROM items WHERE id = 1")
        .await
        .unwrap();
    let capture = CaptureProcess::start(
        &db,
        &server.url(),
        &["--tables", "items", "--snapshot", "always"],
    )
    .await;
    wait_converged(&client, "pg-items", &sql, "items", &capture).await;
    // The rows can match the table before `snapshot-end` is written: wait for the frame.
    let messages = wait_until("snapshot-end after the reset", LONG, || async {
        let m = read(&client, "pg-items").await;
        let reset = m.iter().position(|m| control(m) == Some("reset"))?;
        m[reset..]
            .iter()
            .any(|m| control(m) == Some("snapshot-end"))
            .then_some(m)
    })
    .await;
    let reset = messages
        .iter()
        .position(|m| control(m) == Some("reset"))
        .expect("a reset");
    assert_eq!(control(&messages[reset + 1]), Some("snapshot-start"));
    assert_eq!(check_last_section(&messages), 2);
    capture.stop_ok().await;
}

#[tokio::test]
async fn the_replication_session_exports_a_snapshot_other_connections_can_use() {
    let Scenario {
        db, sql, pg: _pg, ..
    } = scenario(
        "snap_session",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
        DsServerOptions::default(),
    )
    .await;
    let target = PgTarget::parse(&db.url, None).unwrap();
    let mut session = ReplicationSession::connect(&target)
        .await
        .expect("scram login");
    assert!(session.server_version_num() >= 140_000);
    let slot = db.slot("sess");
    let exported = session
        .create_slot_exporting_snapshot(&slot, false)
        .await
        .unwrap();
    assert_eq!(exported.slot_name, slot);
    assert_eq!(exported.output_plugin, "pgoutput");
    assert!(exported.consistent_point > Lsn::ZERO);
    sql.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    let reader = db.client().await;
    reader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{}'",
            exported.snapshot_name
        ))
        .await
        .unwrap();
    let n: i64 = reader
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the snapshot predates the second insert");
    let again = session
        .create_slot_exporting_snapshot(&slot, false)
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some("42710"), "{again}");
    session.terminate().await;
    let wrong = PgTarget::parse(&db.url.replace(&db.password, "wrong-password"), None).unwrap();
    let err = match ReplicationSession::connect(&wrong).await {
        Ok(_) => panic!("a wrong password logs in"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("wrong-password"), "the password leaks: {err}");
}
