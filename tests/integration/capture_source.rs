//! A stream written from another database: capture stops instead of confirming past rows
//! the DS server refused, and `ds-sync stream adopt` is the way out (README, "Source
//! identity").

use ds_sync::embedded::DsServerOptions;

use crate::kit::{
    CaptureProcess, Scenario, materialize, own_cluster_db, run_ds_sync, scenario, slot_passed,
    start_streaming, wait_confirmed, wal_now,
};

const TABLE: &str = "CREATE TABLE items (id int PRIMARY KEY, title text)";

#[tokio::test]
async fn a_fresh_database_behind_a_written_stream_stops_and_adoption_delivers() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario("src_old", TABLE, DsServerOptions::default()).await;
    // The first database is further along its WAL than a fresh cluster will be.
    for _ in 0..3 {
        sql.batch_execute(
            "CREATE TABLE pad AS SELECT 1 AS x; DROP TABLE pad; SELECT pg_switch_wal();",
        )
        .await
        .unwrap();
    }
    let old = start_streaming(&db, &server.url(), &["--tables", "items"]).await;
    sql.batch_execute("INSERT INTO items VALUES (1, 'from the old database')")
        .await
        .unwrap();
    let now = wal_now(&sql).await;
    wait_confirmed(&sql, &db.slot("cap"), &now, &old).await;
    old.stop_ok().await;

    // A fresh database (a restore, a new cluster) captured into the same DS server.
    let (_pg2, fresh) = own_cluster_db("src_fresh").await;
    let fresh_sql = fresh.client().await;
    fresh_sql.batch_execute(TABLE).await.unwrap();
    let capture = start_streaming(&fresh, &server.url(), &["--tables", "items"]).await;
    fresh_sql
        .batch_execute("INSERT INTO items VALUES (2, 'from the fresh database')")
        .await
        .unwrap();
    let committed = wal_now(&fresh_sql).await;
    let code = capture.wait_exit("on the foreign stream").await;
    let log = capture.log();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("stream pg-items holds writes this source did not make")
            && log.contains("incarnation")
            && log.contains("ds-sync stream adopt pg-items"),
        "the error names the stream, the source and the way out:\n{log}"
    );
    assert!(
        !slot_passed(&fresh_sql, &fresh.slot("cap"), &committed).await,
        "the slot did not move past the refused row"
    );
    let messages = client.read_all("pg-items").await.unwrap();
    assert_eq!(
        messages.len(),
        1,
        "nothing of the fresh database arrived: {messages:?}"
    );

    // The way out: adopt the stream, start again.
    let env = [
        ("POSTGRES_URL", fresh.url.as_str()),
        ("DS_SERVER_URL", &server.url()),
    ];
    let adopted = run_ds_sync(&["stream", "adopt", "pg-items"], &env)
        .await
        .ok();
    assert!(adopted.stdout.contains("adopted pg-items"), "{adopted:?}");
    let capture = CaptureProcess::start(&fresh, &server.url(), &["--tables", "items"]).await;
    crate::kit::wait_until(
        "the fresh row and the re-snapshot in pg-items",
        std::time::Duration::from_secs(120),
        || async {
            let messages = client.read_all("pg-items").await.ok()?;
            let state = materialize(&messages);
            let snapshot_done = messages
                .iter()
                .any(|m| m["headers"]["operation"] == "insert" && m["headers"]["txid"].is_null());
            (state.len() == 1 && snapshot_done).then_some(state)
        },
    )
    .await;
    let state = materialize(&client.read_all("pg-items").await.unwrap());
    let values: Vec<&serde_json::Value> = state.values().collect();
    assert_eq!(values.len(), 1);
    assert_eq!(values[0]["title"], "from the fresh database", "{state:?}");
    let now = wal_now(&fresh_sql).await;
    wait_confirmed(&fresh_sql, &fresh.slot("cap"), &now, &capture).await;
    capture.stop_ok().await;
}

/// After an upgrade, a stream written by the earlier version past the slot's confirmed
/// position (a crash before the confirmation) is replayed without a false alarm: the
/// migration marked the slot as written by the earlier version, and 409s for changes from
/// before the upgrade count as that version's writes.
#[tokio::test]
async fn a_stream_written_before_the_upgrade_is_replayed_without_a_false_alarm() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario("src_upgrade", TABLE, DsServerOptions::default()).await;
    let slot = db.slot("cap");
    // What an earlier version left: its publication and slot, no ds_sync bookkeeping yet.
    sql.batch_execute("CREATE PUBLICATION cap_pub FOR TABLE items")
        .await
        .unwrap();
    sql.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&slot],
    )
    .await
    .unwrap();
    sql.batch_execute("INSERT INTO items VALUES (1, 'written before the upgrade')")
        .await
        .unwrap();
    // The commit LSN of that transaction, from its pgoutput Begin message.
    let begin: Vec<u8> = sql
        .query_one(
            "SELECT substr(data, 2, 8) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', 'cap_pub') WHERE get_byte(data, 0) = 66 \
             LIMIT 1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    let lsn = u64::from_be_bytes(begin.try_into().unwrap());
    // The earlier version delivered it with its Stream-Seq, then died before confirming.
    client.ensure_stream("pg-items").await.unwrap();
    let old = serde_json::json!([{"type": "items", "key": "1",
        "value": {"id": 1, "title": "written before the upgrade"},
        "headers": {"operation": "insert"}}]);
    client
        .append(
            "pg-items",
            serde_json::to_vec(&old).unwrap().into(),
            Some(&format!("{lsn:016X}{:010}", 0)),
        )
        .await
        .unwrap();
    let capture = start_streaming(
        &db,
        &server.url(),
        &["--tables", "items", "--snapshot", "never"],
    )
    .await;
    sql.batch_execute("INSERT INTO items VALUES (2, 'after the upgrade')")
        .await
        .unwrap();
    let now = wal_now(&sql).await;
    wait_confirmed(&sql, &slot, &now, &capture).await;
    let messages = client.read_all("pg-items").await.unwrap();
    let keys: Vec<&str> = messages
        .iter()
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["1", "2"],
        "the replayed row is skipped, once: {messages:?}"
    );
    let log = capture.stop_ok().await;
    assert!(!log.contains("holds writes"), "no false alarm:\n{log}");
}
