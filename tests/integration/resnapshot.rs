//! Snapshots taken while capture streams: `ds-sync snapshot --table T`, tables added to the
//! publication later, and a crash in the middle of one. Real cluster, real binary, real DS
//! server in-process.
//!
//! Streams are checked in order, the way a client applies them: every streamed update
//! raises `v` by exactly one, inserts are of absent keys, deletes of present ones, and every
//! re-sent snapshot row equals the row's current state in the stream (it never overrides a
//! newer change, never brings back a deleted row). At the end the stream equals the table.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use ds_sync::embedded::DsServerOptions;

use crate::kit::{
    CaptureProcess, ITEMS, Scenario, TestDb, control, scenario, spawn_writer, start_streaming,
    wait_converged, wait_snapshot_done, wait_until,
};

const LONG: Duration = Duration::from_secs(180);

/// Checks the stream in order (see the module documentation); returns how many snapshot
/// rows came after the first snapshot section (the re-sent ones).
fn check_in_order(messages: &[Value]) -> usize {
    let mut v: HashMap<String, i64> = HashMap::new();
    let first_end = messages
        .iter()
        .position(|m| control(m) == Some("snapshot-end"));
    let mut resent = 0;
    for (i, m) in messages.iter().enumerate() {
        assert_ne!(control(m), Some("reset"), "no reset is sent: {m}");
        if control(m).is_some() {
            continue;
        }
        let key = m["key"].as_str().unwrap().to_string();
        let now = m["value"]["v"].as_i64();
        let snapshot_row = m["headers"]["txid"].is_null();
        let initial = first_end.is_some_and(|end| i < end);
        match m["headers"]["operation"].as_str().unwrap() {
            "insert" if snapshot_row && !initial => {
                resent += 1;
                assert_eq!(
                    v.get(&key).copied(),
                    now,
                    "message {i}: a re-sent row of key {key} differs from the stream's state"
                );
            }
            "insert" => {
                assert!(
                    v.insert(key.clone(), now.unwrap()).is_none(),
                    "message {i}: insert of existing key {key}"
                );
            }
            "update" => {
                let now = now.unwrap();
                let before = v.insert(key.clone(), now);
                assert_eq!(
                    before,
                    Some(now - 1),
                    "message {i}: key {key} update to {now}"
                );
            }
            "delete" => {
                assert!(
                    v.remove(&key).is_some(),
                    "message {i}: delete of unknown key {key}"
                );
            }
            other => panic!("unexpected operation {other}"),
        }
    }
    resent
}

async fn request(db: &TestDb, table: &str) {
    db.ds_sync(&[
        "snapshot",
        "--table",
        table,
        "--slot",
        &db.slot("cap"),
        "--publication",
        "cap_pub",
    ])
    .await
    .ok();
}

#[tokio::test]
async fn a_table_is_sent_again_while_it_and_others_keep_changing() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "resnap_live",
        &format!(
            "{ITEMS} CREATE TABLE orders (id int PRIMARY KEY, v int NOT NULL); \
                  INSERT INTO orders SELECT g, 0 FROM generate_series(1, 100) g;"
        ),
        DsServerOptions::default(),
    )
    .await;
    let args = ["--tables", "items,orders", "--snapshot-chunk-rows", "700"];
    let capture = start_streaming(&db, &server.url(), &args).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = spawn_writer(db.url.clone(), stop.clone());
    request(&db, "items").await;
    for id in 101..=150 {
        sql.execute("INSERT INTO orders VALUES ($1, 0)", &[&id])
            .await
            .unwrap();
        sql.execute("UPDATE orders SET v = v + 1 WHERE id = $1", &[&(id - 100)])
            .await
            .unwrap();
    }
    wait_snapshot_done(&sql, "public.items", &capture).await;
    stop.cancel();
    assert!(writer.await.unwrap() > 0);
    let messages = wait_converged(&client, "pg-items", &sql, "items", &capture).await;
    let resent = check_in_order(&messages);
    assert!(resent >= 15_000, "only {resent} rows were sent again");
    let orders = wait_converged(&client, "pg-orders", &sql, "orders", &capture).await;
    assert_eq!(check_in_order(&orders), 0, "orders were not re-sent");
    let low: i64 = sql
        .query_one(
            "SELECT count(*) FROM ds_sync.signals WHERE kind = 'low'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(low >= 20_000 / 700, "chunked: {low} chunks");
    capture.stop_ok().await;
}

#[tokio::test]
async fn a_table_added_to_the_publication_later_is_snapshotted() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "resnap_new_table",
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL); INSERT INTO items VALUES (1, 0); \
         CREATE TABLE extra (id int PRIMARY KEY, v int NOT NULL); \
         INSERT INTO extra SELECT g, 0 FROM generate_series(1, 2500) g;",
        DsServerOptions::default(),
    )
    .await;
    let args = ["--tables", "items", "--snapshot-chunk-rows", "300"];
    let capture = start_streaming(&db, &server.url(), &args).await;
    db.ds_sync(&["publication", "add", "cap_pub", "--tables", "extra"])
        .await
        .ok();
    sql.batch_execute("UPDATE extra SET v = v + 1 WHERE id <= 10; INSERT INTO extra VALUES (5000, 0); INSERT INTO items VALUES (2, 0)")
        .await
        .unwrap();
    wait_snapshot_done(&sql, "public.extra", &capture).await;
    sql.batch_execute(
        "UPDATE extra SET v = v + 1 WHERE id <= 5; DELETE FROM extra WHERE id = 2500",
    )
    .await
    .unwrap();
    let messages = wait_converged(&client, "pg-extra", &sql, "extra", &capture).await;
    let snapshot_rows = messages
        .iter()
        .filter(|m| m["headers"]["txid"].is_null() && control(m).is_none())
        .count();
    assert!(snapshot_rows >= 2490, "{snapshot_rows} snapshot rows");
    wait_converged(&client, "pg-items", &sql, "items", &capture).await;
    capture.stop_ok().await;
}

#[tokio::test]
async fn a_crash_mid_resnapshot_resumes_at_the_unfinished_chunk() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario("resnap_crash", ITEMS, DsServerOptions::default()).await;
    let slow = [
        "--tables",
        "items",
        "--snapshot-chunk-rows",
        "200",
        "--batch-max-messages",
        "5",
    ];
    let capture = start_streaming(&db, &server.url(), &slow).await;
    wait_converged(&client, "pg-items", &sql, "items", &capture).await;
    request(&db, "items").await;
    let count = |kind: &'static str| {
        let sql = &sql;
        async move {
            sql.query_one(
                "SELECT count(*) FROM ds_sync.signals WHERE kind = $1",
                &[&kind],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    wait_until("a few chunks", LONG, || async {
        (count("low").await >= 5).then_some(())
    })
    .await;
    let log = capture.kill().await;
    assert_eq!(
        count("done").await,
        0,
        "the re-snapshot finished before the kill\n{log}"
    );
    let before: i64 = sql
        .query_one("SELECT max(id) FROM ds_sync.signals", &[])
        .await
        .unwrap()
        .get(0);
    sql.batch_execute(
        "UPDATE items SET v = v + 1 WHERE id <= 10; DELETE FROM items WHERE id > 19990",
    )
    .await
    .unwrap();
    let capture = CaptureProcess::start(
        &db,
        &server.url(),
        &["--tables", "items", "--snapshot-chunk-rows", "200"],
    )
    .await;
    wait_snapshot_done(&sql, "public.items", &capture).await;
    let resumed: Option<Vec<String>> = sql
        .query_one(
            "SELECT chunk_start FROM ds_sync.signals WHERE kind = 'low' AND id > $1 ORDER BY id LIMIT 1",
            &[&before],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        resumed.is_some(),
        "the restart resumed from a chunk, not from the first key"
    );
    let messages = wait_converged(&client, "pg-items", &sql, "items", &capture).await;
    let resent = check_in_order(&messages);
    assert!(resent >= 19_000, "{resent} rows re-sent");
    capture.stop_ok().await;
}

#[tokio::test]
async fn snapshot_refuses_unpublished_and_keyless_tables_with_a_reason() {
    let db = crate::kit::test_db("resnap_refuse").await;
    let sql = db.client().await;
    sql.batch_execute(
        "CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE keyless (v int); \
         CREATE TABLE other (id int PRIMARY KEY); \
         CREATE PUBLICATION refuse_pub FOR TABLE keyed, keyless",
    )
    .await
    .unwrap();
    let run = |table: &'static str| {
        let db = &db;
        async move {
            db.ds_sync(&["snapshot", "--table", table, "--publication", "refuse_pub"])
                .await
        }
    };
    let other = run("other").await;
    assert_ne!(other.code, 0);
    assert!(
        other.stderr.contains("not in publication 'refuse_pub'"),
        "{}",
        other.stderr
    );
    let keyless = run("keyless").await;
    assert_ne!(keyless.code, 0);
    assert!(
        keyless.stderr.contains("no primary key"),
        "{}",
        keyless.stderr
    );
    let requests: i64 = sql
        .query_one("SELECT count(*) FROM ds_sync.signals", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(requests, 0, "a refused table leaves no request");
    run("keyed").await.ok();
    let table: String = sql
        .query_one(
            "SELECT table_name FROM ds_sync.signals WHERE kind = 'snapshot'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(table, "public.keyed");
}
