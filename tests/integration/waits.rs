//! Waits that say what they wait for: slot creation held up by an open transaction names it
//! (pid, application, state, age) every few seconds and says what to do, and a stop signal
//! ends the wait.

use std::time::Duration;

use ds_sync::embedded::DsServerOptions;

use crate::kit::{CaptureProcess, Scenario, scenario, start_streaming, wait_streaming, wait_until};

const WAITS: &str = "waits for the transaction of pid";

/// An application session that wrote and then sits idle inside its transaction.
async fn open_transaction(db: &crate::kit::TestDb) -> (tokio_postgres::Client, i32) {
    let blocker = db.client().await;
    blocker
        .batch_execute("SET application_name = 'app-worker'; BEGIN; INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    let pid = crate::kit::backend_pid(&blocker).await;
    (blocker, pid)
}

/// The initial snapshot's slot creation (replication protocol, exported snapshot).
#[tokio::test]
async fn slot_creation_names_the_transaction_it_waits_for_and_a_signal_ends_the_wait() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "wait_slot",
        "CREATE TABLE items (id int PRIMARY KEY)",
        DsServerOptions::default(),
    )
    .await;
    let (blocker, pid) = open_transaction(&db).await;
    let capture = CaptureProcess::start(&db, &server.url(), &["--tables", "items"]).await;
    let needle = format!("{WAITS} {pid} ");
    capture.wait_log(&needle).await;
    let log = capture.log();
    let line = log.lines().find(|l| l.contains(&needle)).unwrap();
    for part in ["app-worker", "idle in transaction", "pg_terminate_backend"] {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }
    // Said again while the wait goes on.
    capture.wait_log_count(&needle, 2).await;
    let (code, log) = stop_within(capture, Duration::from_secs(10)).await;
    assert_eq!(code, 0, "a graceful stop during slot creation\n{log}");
    blocker.batch_execute("COMMIT").await.unwrap();
    // The next start takes the snapshot, the committed row included, and streams.
    let capture = start_streaming(&db, &server.url(), &["--tables", "items"]).await;
    sql.batch_execute("INSERT INTO items VALUES (2)")
        .await
        .unwrap();
    wait_until(
        "both rows in the stream",
        Duration::from_secs(60),
        || async {
            let rows = crate::kit::materialize_by_key(&crate::kit::read(&client, "pg-items").await);
            (rows.len() == 2).then_some(())
        },
    )
    .await;
    capture.stop_ok().await;
}

/// `--snapshot never`: the slot is created over SQL.
#[tokio::test]
async fn slot_creation_over_sql_names_the_transaction_it_waits_for() {
    let Scenario {
        server,
        db,
        pg: _pg,
        ..
    } = scenario(
        "wait_slot_sql",
        "CREATE TABLE items (id int PRIMARY KEY)",
        DsServerOptions::default(),
    )
    .await;
    let (blocker, pid) = open_transaction(&db).await;
    let capture = CaptureProcess::start(
        &db,
        &server.url(),
        &["--tables", "items", "--snapshot", "never"],
    )
    .await;
    capture.wait_log(&format!("{WAITS} {pid} ")).await;
    blocker.batch_execute("COMMIT").await.unwrap();
    wait_streaming(&db).await;
    capture.stop_ok().await;
}

async fn stop_within(process: CaptureProcess, bound: Duration) -> (i32, String) {
    let started = std::time::Instant::now();
    let (code, log) = process.stop().await;
    assert!(
        started.elapsed() < bound,
        "took {:?} to stop:\n{log}",
        started.elapsed()
    );
    (code, log)
}

/// `ds-sync snapshot --table` behind a lock on the table. From PostgreSQL 16 on, its check
/// of the table's publication entry waits for that lock: the command names the holder every
/// few seconds and goes on once it is released. Before 16 the check does not wait.
#[tokio::test]
async fn a_snapshot_request_behind_a_table_lock_names_the_holder() {
    let db = crate::kit::test_db("wait_snap_request").await;
    let sql = db.client().await;
    sql.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY); CREATE PUBLICATION lock_pub FOR TABLE items",
    )
    .await
    .unwrap();
    let holder = db.client().await;
    holder
        .batch_execute(
            "SET application_name = 'app-migration'; BEGIN; \
             LOCK TABLE items IN ACCESS EXCLUSIVE MODE",
        )
        .await
        .unwrap();
    let pid = crate::kit::backend_pid(&holder).await;
    let request = CaptureProcess::spawn(
        &db,
        &["snapshot", "--table", "items", "--publication", "lock_pub"],
        &[],
    );
    if crate::kit::server_major(&sql).await >= 16 {
        let needle = format!("{WAITS} {pid} ");
        request.wait_log(&needle).await;
        let log = request.log();
        let line = log.lines().find(|l| l.contains(&needle)).unwrap();
        for part in [
            "checking items for a snapshot",
            "app-migration",
            "pg_terminate_backend",
        ] {
            assert!(line.contains(part), "{part:?} missing from: {line}");
        }
        assert_eq!(
            request.try_exit(),
            None,
            "it returned while the lock was held"
        );
        holder.batch_execute("COMMIT").await.unwrap();
    }
    let code = request.wait_exit("after its request").await;
    assert_eq!(code, 0, "{}", request.log());
    let requests: i64 = sql
        .query_one(
            "SELECT count(*) FROM ds_sync.signals \
             WHERE kind = 'snapshot' AND table_name = 'public.items'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(requests, 1);
    holder.batch_execute("COMMIT").await.unwrap();
}
