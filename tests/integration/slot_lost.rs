//! A slot the server invalidated (`wal_status = 'lost'`, past `max_slot_wal_keep_size`):
//! by default `run` stops with an error naming the slot and the option; with
//! `--on-slot-lost recreate` it drops and recreates the slot, resets every stream the tables
//! ever wrote to (per-key streams that only changes wrote to included), snapshots again and
//! streams on, so that the official client ends up holding exactly the table, and says so in
//! its log, `/metrics` and `/readyz`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use ds_sync::embedded::{DsServer, DsServerOptions, PostgresOptions};

use crate::kit::official_client::{self, table_rows, wait_for_rows};
use crate::kit::{
    self, CaptureProcess, TestDb, start_cluster, test_db_in, wait_confirmed, wait_streaming,
    wait_until, wal_now,
};

const LONG: Duration = Duration::from_secs(90);

/// `items` is routed per key (`items/{id}`), `notes` to one stream (`pg-notes`).
const SCHEMA: &str = "\
    CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL); \
    CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL); \
    CREATE TABLE pad (t text); \
    INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 4) g; \
    INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 3) g;";

const ROUTE: &str = "items=items/{id}";

/// A cluster that keeps at most 1 MB of WAL for a slot (1 MB segments), so a stopped
/// consumer loses its slot after a few segments.
async fn small_wal_cluster(label: &str) -> (ds_sync::embedded::LocalPostgres, TestDb) {
    let pg = tokio::task::spawn_blocking(|| {
        start_cluster(&PostgresOptions {
            initdb_args: vec!["--wal-segsize=1".into()],
            settings: vec![
                ("max_slot_wal_keep_size".into(), "1MB".into()),
                ("min_wal_size".into(), "2MB".into()),
                ("max_wal_size".into(), "4MB".into()),
            ],
            ..PostgresOptions::default()
        })
    })
    .await
    .expect("starting a cluster");
    let db = test_db_in(&pg, label).await;
    (pg, db)
}

/// Writes WAL (into the unpublished `pad`) and checkpoints until the server marks the
/// slot lost.
async fn lose_slot(sql: &tokio_postgres::Client, slot: &str) {
    wait_until(
        "the server to mark the slot lost (wal_status = 'lost')",
        LONG,
        || async {
            sql.batch_execute(
                "INSERT INTO pad SELECT repeat(md5(g::text), 30) FROM generate_series(1, 300) g; \
                 SELECT pg_switch_wal(); \
                 INSERT INTO pad SELECT repeat(md5(g::text), 30) FROM generate_series(1, 300) g; \
                 SELECT pg_switch_wal(); CHECKPOINT;",
            )
            .await
            .expect("writing WAL");
            let status: Option<String> = sql
                .query_one(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .expect("reading the slot")
                .get(0);
            (status.as_deref() == Some("lost")).then_some(())
        },
    )
    .await;
}

/// Captures both tables (snapshot, then changes that create per-key streams of their own),
/// stops, and makes changes (deletes among them) while the slot is lost.
async fn captured_then_lost(db: &TestDb, base: &str) -> tokio_postgres::Client {
    let sql = db.client().await;
    sql.batch_execute(SCHEMA).await.expect("test schema");
    let capture =
        CaptureProcess::start(db, base, &["--tables", "items,notes", "--route", ROUTE]).await;
    wait_streaming(db).await;
    // items/5 and items/6 are written by changes only, never by a snapshot.
    sql.batch_execute("INSERT INTO items VALUES (5, 'item 5'), (6, 'item 6')")
        .await
        .unwrap();
    let lsn = wal_now(&sql).await;
    wait_confirmed(&sql, &db.slot("cap"), &lsn, &capture).await;
    capture.stop_ok().await;
    lose_slot(&sql, &db.slot("cap")).await;
    sql.batch_execute(
        "DELETE FROM items WHERE id IN (2, 5); UPDATE items SET title = 'edited' WHERE id = 3; \
         INSERT INTO items VALUES (7, 'item 7'); \
         DELETE FROM notes WHERE id = 1; INSERT INTO notes VALUES (4, 'note 4');",
    )
    .await
    .unwrap();
    sql
}

#[tokio::test]
async fn a_lost_slot_stops_run_with_the_slot_and_the_option_named() {
    let server = DsServer::start(DsServerOptions::default()).await.unwrap();
    let (_pg, db) = small_wal_cluster("slot_lost_err").await;
    let _sql = captured_then_lost(&db, &server.url()).await;
    let capture = CaptureProcess::start(
        &db,
        &server.url(),
        &["--tables", "items,notes", "--route", ROUTE],
    )
    .await;
    let code = capture.wait_exit("on a lost slot").await;
    let log = capture.log();
    assert_eq!(code, 5, "the documented exit code of a lost slot:\n{log}");
    let slot = db.slot("cap");
    assert!(
        log.contains(&format!("replication slot '{slot}' is lost")),
        "the error names the slot:\n{log}"
    );
    assert!(
        log.contains("--on-slot-lost recreate"),
        "the hint names the option:\n{log}"
    );
    let sql = db.client().await;
    let status: Option<String> = sql
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        status.as_deref(),
        Some("lost"),
        "without the option the slot is left alone"
    );
}

/// Waits until the official client holds, in each of the per-key streams of `ids`, the
/// `items` row of that key, or nothing once the row is gone.
async fn wait_items(
    base: &str,
    sql: &tokio_postgres::Client,
    capture: &CaptureProcess,
    ids: &[i32],
) {
    let table = table_rows(sql, "items", "t.id").await;
    for &id in ids {
        let expected: BTreeMap<String, Value> = table
            .get(&id.to_string())
            .map(|row| BTreeMap::from([(id.to_string(), row.clone())]))
            .unwrap_or_default();
        let stream = format!("items/{id}");
        wait_for_rows(base, &stream, "items", &expected, LONG, || capture.log()).await;
    }
}

#[tokio::test]
async fn recreate_heals_a_lost_slot_and_the_official_client_holds_the_table() {
    let server = DsServer::start(DsServerOptions::default()).await.unwrap();
    let base = server.url();
    let (_pg, db) = small_wal_cluster("slot_lost_fix").await;
    let sql = captured_then_lost(&db, &base).await;
    let capture = CaptureProcess::start(
        &db,
        &base,
        &[
            "--tables",
            "items,notes",
            "--route",
            ROUTE,
            "--on-slot-lost",
            "recreate",
            "--listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    wait_streaming(&db).await;
    wait_items(&base, &sql, &capture, &[1, 2, 3, 4, 5, 6, 7]).await;
    let notes = table_rows(&sql, "notes", "t.id").await;
    assert_eq!(notes.len(), 3, "notes 2, 3 and 4");
    let state = wait_for_rows(&base, "pg-notes", "notes", &notes, LONG, || capture.log()).await;
    assert!(
        state.controls.contains(&"reset".to_owned()),
        "the client saw a reset: {:?}",
        state.controls
    );
    let gone = official_client::try_read(&base, "items/5", &[])
        .await
        .unwrap();
    assert!(
        gone.controls.contains(&"reset".to_owned()),
        "a stream only changes wrote to is reset too: {:?}",
        gone.controls
    );
    // Streaming goes on after the new snapshot.
    sql.batch_execute("DELETE FROM items WHERE id = 1; INSERT INTO notes VALUES (5, 'note 5')")
        .await
        .unwrap();
    wait_items(&base, &sql, &capture, &[1, 2, 3, 4, 5, 6, 7]).await;
    let notes = table_rows(&sql, "notes", "t.id").await;
    wait_for_rows(&base, "pg-notes", "notes", &notes, LONG, || capture.log()).await;
    let slot = db.slot("cap");
    let status: Option<String> = sql
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(status.as_deref(), Some("lost"), "the slot was recreated");
    let addr = capture.listen_addr().await;
    let (status, body) = kit::http(
        hyper::Method::GET,
        &format!("http://{addr}/metrics"),
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&body).into_owned();
    let scrape = crate::kit::prom::Scrape::parse(&metrics)
        .unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{metrics}"));
    assert_eq!(
        scrape.value("ds_sync_slot_lost_total", &[]),
        Some(1.0),
        "one lost slot counted:\n{metrics}"
    );
    let readyz = wait_until("/readyz to answer 200", LONG, || async {
        let (status, body) = kit::http(
            hyper::Method::GET,
            &format!("http://{addr}/readyz"),
            &[],
            b"",
        )
        .await;
        (status == 200).then_some(body)
    })
    .await;
    let readyz: Value = serde_json::from_slice(&readyz).unwrap();
    assert_eq!(readyz["slot_lost"]["slot"], slot.as_str(), "{readyz}");
    assert_eq!(readyz["slot_lost"]["times"], 1, "{readyz}");
    assert_eq!(readyz["slot_lost"]["action"], "recreate", "{readyz}");
    let log = capture.stop_ok().await;
    assert!(
        log.contains("WARN") && log.contains("recreating it"),
        "the recreation is logged as a warning:\n{log}"
    );
}

/// The slot is invalidated while `run` holds it: the server terminates its walsender, the
/// reconnect finds the slot lost, and capture recreates it without a restart.
#[tokio::test]
async fn a_slot_lost_while_running_is_recreated_without_a_restart() {
    let server = DsServer::start(DsServerOptions::default()).await.unwrap();
    let base = server.url();
    let (_pg, db) = small_wal_cluster("slot_lost_live").await;
    let sql = db.client().await;
    sql.batch_execute(SCHEMA).await.expect("test schema");
    let args = [
        "--tables",
        "items,notes",
        "--route",
        ROUTE,
        "--on-slot-lost",
        "recreate",
    ];
    let capture = CaptureProcess::start(&db, &base, &args).await;
    wait_streaming(&db).await;
    wait_items(&base, &sql, &capture, &[1, 2, 3, 4]).await;
    // Frozen, it confirms nothing while the WAL piles up past max_slot_wal_keep_size.
    capture.freeze();
    sql.batch_execute("DELETE FROM items WHERE id = 2; DELETE FROM notes WHERE id = 1")
        .await
        .unwrap();
    lose_slot(&sql, &db.slot("cap")).await;
    sql.batch_execute("DELETE FROM items WHERE id = 3; INSERT INTO items VALUES (7, 'item 7')")
        .await
        .unwrap();
    capture.resume();
    capture.wait_log("recreating it").await;
    wait_streaming(&db).await;
    wait_items(&base, &sql, &capture, &[1, 2, 3, 4, 7]).await;
    let notes = table_rows(&sql, "notes", "t.id").await;
    wait_for_rows(&base, "pg-notes", "notes", &notes, LONG, || capture.log()).await;
    sql.batch_execute("DELETE FROM items WHERE id = 4")
        .await
        .unwrap();
    wait_items(&base, &sql, &capture, &[1, 2, 3, 4, 7]).await;
    capture.stop_ok().await;
}
