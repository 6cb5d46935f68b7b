//! `--pgoutput-protocol 2`: transactions larger than `logical_decoding_work_mem` (64kB in
//! these clusters) streamed by the walsender while they run, held by ds-sync and sent at
//! their commit. Each test checks through `pg_stat_replication_slots.stream_txns` that the
//! walsender really streamed (with version 1 it stays 0 and the tests fail there).

use std::time::Duration;

use ds_sync::embedded::DsServerOptions;

use crate::kit::{
    CaptureProcess, Scenario, scenario, start_streaming, stream_keys, streaming_pid,
    wait_keys_exactly, wait_streaming_anew, wait_until,
};

const V2: [&str; 2] = ["--pgoutput-protocol", "2"];
/// Table `k` delivered in small POSTs one at a time, so that its delivery takes a while.
const SLOW_K: [&str; 6] = [
    "--tables",
    "k",
    "--batch-max-messages",
    "50",
    "--max-in-flight",
    "1",
];

/// A [`scenario`] whose cluster streams any transaction past 64kB of decoded changes.
async fn streaming_scenario(label: &str, ddl: &str) -> Scenario {
    let s = scenario(label, ddl, DsServerOptions::default()).await;
    s.sql
        .batch_execute("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
        .await
        .expect("ALTER SYSTEM");
    s.sql
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let db = &s.db;
    wait_until(
        "logical_decoding_work_mem to be 64kB",
        Duration::from_secs(10),
        || async {
            let fresh = db.client().await;
            let row = fresh
                .query_one("SHOW logical_decoding_work_mem", &[])
                .await
                .map_err(|e| e.to_string())?;
            let value: String = row.get(0);
            (value == "64kB").then_some(()).ok_or(value)
        },
    )
    .await;
    s
}

/// Transactions the walsender of `slot` streamed while they ran.
async fn streamed_txns(sql: &tokio_postgres::Client, slot: &str) -> i64 {
    sql.query_one(
        "SELECT coalesce(sum(stream_txns), 0)::int8 FROM pg_stat_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until the walsender of `slot` streamed at least `n` transactions.
async fn wait_streamed(sql: &tokio_postgres::Client, slot: &str, n: i64) {
    wait_until(
        format!("{n} streamed transactions on {slot}"),
        Duration::from_secs(60),
        || async {
            let got = streamed_txns(sql, slot).await;
            (got >= n).then_some(()).ok_or(format!("{got} streamed"))
        },
    )
    .await;
}

#[tokio::test]
async fn a_transaction_larger_than_work_mem_is_held_until_commit_then_arrives_whole() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = streaming_scenario("v2_big", "CREATE TABLE big (id int PRIMARY KEY, v text)").await;
    let capture = start_streaming(
        &db,
        &server.url(),
        &[&["--tables", "big"][..], &V2].concat(),
    )
    .await;
    let writer = db.client().await;
    // 100,000 rows: past the 1 MiB ds-sync holds in memory, so the transaction spills.
    writer
        .batch_execute(
            "BEGIN; INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 100000) g",
        )
        .await
        .unwrap();
    wait_streamed(&sql, &db.slot("cap"), 1).await;
    assert!(
        stream_keys(&client, "pg-big").await.is_empty(),
        "nothing of a transaction is sent before its commit"
    );
    writer.batch_execute("COMMIT").await.unwrap();
    wait_keys_exactly(&client, "pg-big", 100_000).await;
    let log = capture.stop_ok().await;
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test]
async fn rolled_back_transactions_and_savepoints_in_a_stream_deliver_nothing() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = streaming_scenario("v2_abort", "CREATE TABLE t (id int PRIMARY KEY, pad text)").await;
    let capture =
        start_streaming(&db, &server.url(), &[&["--tables", "t"][..], &V2].concat()).await;
    let rows = |from: i32, to: i32| {
        format!("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series({from}, {to}) g;")
    };
    // A whole streamed transaction rolled back.
    sql.batch_execute(&format!("BEGIN; {} ROLLBACK;", rows(100_001, 105_000)))
        .await
        .unwrap();
    // A streamed transaction with a rolled-back savepoint (and one nested in it), and a
    // released one that stays.
    sql.batch_execute(&format!(
        "BEGIN; {} SAVEPOINT a; {} SAVEPOINT b; {} ROLLBACK TO a; {} SAVEPOINT c; {} RELEASE c; COMMIT;",
        rows(1, 3000),
        rows(200_001, 203_000),
        rows(300_001, 303_000),
        rows(3001, 6000),
        rows(6001, 9000),
    ))
    .await
    .unwrap();
    sql.batch_execute("INSERT INTO t VALUES (9001, 'after')")
        .await
        .unwrap();
    wait_keys_exactly(&client, "pg-t", 9001).await;
    assert!(
        streamed_txns(&sql, &db.slot("cap")).await >= 2,
        "both transactions were streamed"
    );
    capture.stop_ok().await;
}

#[tokio::test]
async fn interleaved_streamed_transactions_arrive_whole_in_commit_order() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = streaming_scenario(
        "v2_interleaved",
        "CREATE TABLE t (id int PRIMARY KEY, pad text)",
    )
    .await;
    let capture =
        start_streaming(&db, &server.url(), &[&["--tables", "t"][..], &V2].concat()).await;
    let (a, b) = (db.client().await, db.client().await);
    let rows = |from: i32, to: i32| {
        format!("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series({from}, {to}) g")
    };
    // `a` begins first and commits last: its rows (6001..12000) come after all of b's.
    a.batch_execute(&format!("BEGIN; {}", rows(6001, 9000)))
        .await
        .unwrap();
    b.batch_execute(&format!("BEGIN; {}", rows(1, 3000)))
        .await
        .unwrap();
    a.batch_execute(&rows(9001, 12_000)).await.unwrap();
    b.batch_execute(&rows(3001, 6000)).await.unwrap();
    wait_streamed(&sql, &db.slot("cap"), 2).await;
    b.batch_execute("COMMIT").await.unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    wait_keys_exactly(&client, "pg-t", 12_000).await;
    capture.stop_ok().await;
}

#[tokio::test]
async fn sigkill_mid_stream_and_mid_delivery_loses_and_duplicates_nothing() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = streaming_scenario("v2_kill", "CREATE TABLE k (id int PRIMARY KEY, pad text)").await;
    let args = [&SLOW_K[..], &V2].concat();
    let restart = [&args[..], &["--takeover"]].concat();
    let slot = db.slot("cap");
    let first = start_streaming(&db, &server.url(), &args).await;
    let writer = db.client().await;
    writer
        .batch_execute(
            "BEGIN; INSERT INTO k SELECT g, repeat('p', 50) FROM generate_series(1, 40000) g",
        )
        .await
        .unwrap();
    wait_streamed(&sql, &slot, 1).await;
    // Mid-stream: ds-sync holds blocks of the open transaction.
    let log = first.kill().await;
    assert!(!log.contains("panicked"), "{log}");
    writer
        .batch_execute(
            "INSERT INTO k SELECT g, repeat('p', 50) FROM generate_series(40001, 60000) g; COMMIT",
        )
        .await
        .unwrap();

    let stale = streaming_pid(&sql, &slot).await.unwrap();
    let second = CaptureProcess::start(&db, &server.url(), &restart).await;
    wait_streaming_anew(&sql, &slot, stale).await;
    let delivered = wait_until(
        "some of the transaction delivered",
        Duration::from_secs(60),
        || async {
            let n = stream_keys(&client, "pg-k").await.len();
            (n > 0).then_some(n).ok_or("none yet".to_string())
        },
    )
    .await;
    // Mid-delivery.
    let log = second.kill().await;
    assert!(!log.contains("panicked"), "{log}");
    eprintln!("killed after {delivered} of 60000 messages were delivered");
    assert!(
        delivered < 60_000,
        "the kill came after the whole delivery ({delivered})"
    );

    // The rest with the default batching: a slow machine only slows the wait.
    let stale = streaming_pid(&sql, &slot).await.unwrap();
    let last = [&["--tables", "k", "--takeover"][..], &V2].concat();
    let third = CaptureProcess::start(&db, &server.url(), &last).await;
    wait_streaming_anew(&sql, &slot, stale).await;
    wait_keys_exactly(&client, "pg-k", 60_000).await;
    // Nothing more arrives: a message after these would be a duplicate.
    sql.batch_execute("INSERT INTO k VALUES (60001, 'after')")
        .await
        .unwrap();
    wait_keys_exactly(&client, "pg-k", 60_001).await;
    third.stop_ok().await;
}

#[tokio::test]
async fn a_restart_with_the_other_protocol_mid_delivery_keeps_exactly_once() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = streaming_scenario("v2_switch", "CREATE TABLE k (id int PRIMARY KEY, pad text)").await;
    let slow = SLOW_K;
    let slot = db.slot("cap");
    let first = start_streaming(&db, &server.url(), &slow).await;
    sql.batch_execute("INSERT INTO k SELECT g, repeat('p', 50) FROM generate_series(1, 30000) g")
        .await
        .unwrap();
    let delivered = wait_until(
        "some of the transaction delivered",
        Duration::from_secs(60),
        || async {
            let n = stream_keys(&client, "pg-k").await.len();
            (n > 0).then_some(n).ok_or("none yet".to_string())
        },
    )
    .await;
    // Version 1 delivered part of it; version 2 streams it again and sends the rest.
    let log = first.kill().await;
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        delivered < 30_000,
        "the kill came after the whole delivery ({delivered})"
    );
    let stale = streaming_pid(&sql, &slot).await.unwrap();
    let restart = [&["--tables", "k", "--takeover"][..], &V2].concat();
    let second = CaptureProcess::start(&db, &server.url(), &restart).await;
    wait_streaming_anew(&sql, &slot, stale).await;
    wait_keys_exactly(&client, "pg-k", 30_000).await;
    assert!(
        streamed_txns(&sql, &slot).await >= 1,
        "version 2 streamed the transaction"
    );
    second.stop_ok().await;
}
