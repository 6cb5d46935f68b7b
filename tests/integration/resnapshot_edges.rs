//! Snapshot while streaming, the edge cases: a chunk sent again after a reconnect, a TRUNCATE
//! between a chunk's watermarks, a finished request replayed after a restart, tables added to
//! the publication while capture was stopped, and unchanged TOAST values inside a window.
//!
//! Where a change must fall between a chunk's watermarks, the test places it there with locks
//! ([`Gate`]): capture's low watermark waits for an advisory lock (taken by a test trigger),
//! its chunk read for a lock on the table, and its high watermark for a lock on
//! `ds_sync.signals`, so the change commits after the chunk was read and before the high
//! watermark, every time. The low watermark is held first because capture's catalog look-up
//! before it also waits for a lock on the table on PostgreSQL 16 and later.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use ds_sync::ds::DsClient;
use ds_sync::embedded::DsServerOptions;

use crate::kit::{
    Scenario, TestDb, backend_pid, control, materialize_by_key, read, request_snapshot, scenario,
    start_streaming, wait_converged, wait_snapshot_done, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// The debug line capture logs when it placed a chunk at its high watermark.
const PLACED: &str = "chunk placed at its high watermark";

/// A [`Scenario`] whose database has `items (id, v)` with rows 1 to `rows`, all `v = 0`.
async fn items_scenario(label: &str, rows: i32) -> Scenario {
    let ddl = format!(
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL); \
         INSERT INTO items SELECT g, 0 FROM generate_series(1, {rows}) g;"
    );
    scenario(label, &ddl, DsServerOptions::default()).await
}

/// Waits until a statement containing `statement` waits for a lock that `holder` holds.
async fn wait_blocked_by(
    sql: &tokio_postgres::Client,
    holder: &tokio_postgres::Client,
    statement: &str,
    what: &str,
) {
    let pid = backend_pid(holder).await;
    wait_until(what, LONG, || async {
        let n: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE $1 = ANY(pg_blocking_pids(pid)) AND strpos(query, $2) > 0",
                &[&pid, &statement],
            )
            .await
            .ok()?
            .get(0);
        (n > 0).then_some(())
    })
    .await;
}

/// The advisory lock a low watermark's insert waits for (see [`gate_low_sql`]).
const LOW_LOCK: i64 = 7_217_001;

/// A test trigger: inserting a low watermark waits for [`LOW_LOCK`] (held by [`Gate`] until
/// the table is locked), so the chunk read that follows it is the one waiting for the table.
fn gate_low_sql() -> String {
    format!(
        "CREATE OR REPLACE FUNCTION public.gate_low() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.kind = 'low' THEN PERFORM pg_advisory_xact_lock({LOW_LOCK}); END IF; \
         RETURN NEW; END $$; \
         DROP TRIGGER IF EXISTS gate_low ON ds_sync.signals; \
         CREATE TRIGGER gate_low BEFORE INSERT ON ds_sync.signals \
         FOR EACH ROW EXECUTE FUNCTION public.gate_low();"
    )
}

/// A chunk of a requested snapshot held after its read and before its high watermark.
struct Gate {
    high: tokio_postgres::Client,
}

impl Gate {
    /// Requests a snapshot of `table` and returns once capture wrote the chunk's low
    /// watermark, read the chunk, and waits to write its high watermark.
    async fn hold(db: &TestDb, sql: &tokio_postgres::Client, table: &str) -> Gate {
        sql.batch_execute(&gate_low_sql()).await.unwrap();
        let low = db.client().await;
        low.batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({LOW_LOCK})"))
            .await
            .unwrap();
        request_snapshot(sql, db, &format!("public.{table}")).await;
        wait_blocked_by(
            sql,
            &low,
            "ds_sync.signals",
            "capture's low watermark to wait for the advisory lock",
        )
        .await;
        let reads = db.client().await;
        reads
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
            ))
            .await
            .unwrap();
        low.batch_execute("COMMIT").await.unwrap();
        wait_blocked_by(
            sql,
            &reads,
            "txid_current_snapshot",
            "capture's chunk read to wait for the table lock",
        )
        .await;
        let high = db.client().await;
        high.batch_execute("BEGIN; LOCK TABLE ds_sync.signals IN SHARE MODE")
            .await
            .unwrap();
        reads.batch_execute("COMMIT").await.unwrap();
        wait_blocked_by(
            sql,
            &high,
            "ds_sync.signals",
            "capture's high watermark to wait for the signal lock",
        )
        .await;
        Gate { high }
    }

    /// Lets capture write the high watermark.
    async fn release(self) {
        self.high.batch_execute("COMMIT").await.unwrap();
    }
}

async fn wait_initial_snapshot(sql: &tokio_postgres::Client) {
    wait_until("the initial snapshot to finish", LONG, || async {
        let state: Option<String> = sql
            .query_opt("SELECT state FROM ds_sync.snapshots", &[])
            .await
            .ok()??
            .get(0);
        (state.as_deref() == Some("done")).then_some(())
    })
    .await;
}

/// `v` of the row `key` as a client of `stream` holds it.
async fn stream_v(client: &DsClient, stream: &str, key: &str) -> Option<i64> {
    materialize_by_key(&read(client, stream).await)
        .get(key)
        .and_then(|row| row["v"].as_i64())
}

/// A reconnect after the high watermark was decoded, while the chunk's rows are not yet
/// acknowledged, sends the chunk again from its held rows. The replay starts after the low
/// watermark (the last position confirmed), so it does not see the window open again: the
/// rows changed in the window must still be left out, with the same sequences as before.
/// With one stream per row, row 1's stream shows whether the chunk's older copy of row 1
/// was appended after its newer update.
#[tokio::test]
async fn a_chunk_sent_again_after_a_reconnect_still_leaves_out_rows_changed_in_its_window() {
    let Scenario {
        mut server,
        client,
        db,
        sql,
        pg: _pg,
    } = items_scenario("edge_resend", 20).await;
    let args = ["--tables", "items", "--route", "items=items/{id}"];
    let capture = start_streaming(&db, &server.url(), &args).await;
    wait_initial_snapshot(&sql).await;
    let gate = Gate::hold(&db, &sql, "items").await;
    sql.batch_execute("UPDATE items SET v = v + 1 WHERE id = 1")
        .await
        .unwrap();
    // Nothing after the low watermark can be acknowledged now, so the slot's confirmed
    // position stays at the low watermark's end and the replay starts inside the window.
    server.stop().await;
    let placed = capture.log_count(PLACED);
    gate.release().await;
    capture.wait_log_count(PLACED, placed + 1).await;
    sql.execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
         WHERE slot_name = $1 AND active",
        &[&db.slot("cap")],
    )
    .await
    .unwrap();
    server.start_again().await.unwrap();
    wait_snapshot_done(&sql, "public.items", &capture).await;
    assert!(
        capture.log_count(PLACED) >= placed + 2,
        "the chunk was placed again after the reconnect:\n{}",
        capture.log()
    );
    for id in 1..=20 {
        let stream = format!("items/{id}");
        let want = if id == 1 { 1 } else { 0 };
        assert_eq!(
            stream_v(&client, &stream, &id.to_string()).await,
            Some(want),
            "{stream}: {:?}\n{}",
            read(&client, &stream).await,
            capture.log()
        );
    }
    capture.stop_ok().await;
}

/// Rows a chunk read before a TRUNCATE of its table are gone when the high watermark places
/// them: the chunk is discarded, and rows written after the TRUNCATE arrive as changes.
#[tokio::test]
async fn a_truncate_between_a_chunks_watermarks_discards_the_chunk() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = items_scenario("edge_truncate", 50).await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "items"]).await;
    wait_initial_snapshot(&sql).await;
    let gate = Gate::hold(&db, &sql, "items").await;
    sql.batch_execute("TRUNCATE items; INSERT INTO items VALUES (7, 5)")
        .await
        .unwrap();
    gate.release().await;
    wait_snapshot_done(&sql, "public.items", &capture).await;
    let messages = wait_converged(&client, "pg-items", &sql, "items", &capture).await;
    let reset = messages
        .iter()
        .rposition(|m| control(m) == Some("reset"))
        .expect("the TRUNCATE's reset");
    let after: Vec<&Value> = messages[reset + 1..].iter().collect();
    assert_eq!(
        after.len(),
        1,
        "only the insert follows the reset: {after:?}"
    );
    capture.stop_ok().await;
}

/// A request whose `done` row exists is not run again when its signal is decoded once more.
/// The replay is made real: a copy of the slot taken before the request stands in for a slot
/// whose confirmed position had not reached the request when capture stopped.
#[tokio::test]
async fn a_finished_request_does_not_run_again_when_replayed_after_a_restart() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = items_scenario("edge_replay", 30).await;
    let args = ["--tables", "items", "--snapshot-chunk-rows", "10"];
    let slot = db.slot("cap");
    let backup = db.slot("bak");
    start_streaming(&db, &server.url(), &args)
        .await
        .stop_ok()
        .await;
    sql.execute(
        "SELECT pg_copy_logical_replication_slot($1, $2)",
        &[&slot, &backup],
    )
    .await
    .unwrap();
    request_snapshot(&sql, &db, "public.items").await;
    let capture = start_streaming(&db, &server.url(), &args).await;
    wait_snapshot_done(&sql, "public.items", &capture).await;
    capture.stop_ok().await;
    let chunks = lows(&sql).await;
    assert!(chunks >= 3, "the request ran in chunks: {chunks}");
    sql.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    sql.execute(
        "SELECT pg_copy_logical_replication_slot($1, $2)",
        &[&backup, &slot],
    )
    .await
    .unwrap();
    sql.execute("SELECT pg_drop_replication_slot($1)", &[&backup])
        .await
        .unwrap();
    let capture = start_streaming(&db, &server.url(), &args).await;
    // A row written after the replayed request: once it is in the stream, capture decoded
    // the request and acted on it (a new chunk's low watermark is written before the next
    // delivery starts).
    sql.batch_execute("INSERT INTO items VALUES (1000, 0)")
        .await
        .unwrap();
    wait_until("the row after the replayed request", LONG, || async {
        materialize_by_key(&read(&client, "pg-items").await)
            .contains_key("1000")
            .then_some(())
    })
    .await;
    let log = capture.stop_ok().await;
    assert_eq!(
        lows(&sql).await,
        chunks,
        "the finished request ran again:\n{log}"
    );
}

async fn lows(sql: &tokio_postgres::Client) -> i64 {
    sql.query_one(
        "SELECT count(*) FROM ds_sync.signals WHERE kind = 'low'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Runs capture once with `initial_args`, adds `extra` to the publication while it is
/// stopped, starts it again with `capture_args`, and expects `extra`'s rows in `pg-extra`
/// without any change to `extra` (which would announce the table with a Relation message).
async fn expect_added_table_snapshotted(
    scenario: &Scenario,
    initial_args: &[&str],
    capture_args: &[&str],
) {
    let Scenario {
        server,
        client,
        db,
        sql,
        ..
    } = scenario;
    start_streaming(db, &server.url(), initial_args)
        .await
        .stop_ok()
        .await;
    db.ds_sync(&["publication", "add", "cap_pub", "--tables", "extra"])
        .await
        .ok();
    let capture = start_streaming(db, &server.url(), capture_args).await;
    wait_snapshot_done(sql, "public.extra", &capture).await;
    let messages = wait_converged(client, "pg-extra", sql, "extra", &capture).await;
    assert_eq!(messages.len(), 300, "each row once: {}", messages.len());
    capture.stop_ok().await;
}

const EXTRA: &str = "CREATE TABLE extra (id int PRIMARY KEY, v int NOT NULL); \
    INSERT INTO extra SELECT g, 0 FROM generate_series(1, 300) g;";

/// No change of the new table needs to happen for it to be snapshotted.
#[tokio::test]
async fn a_table_added_while_capture_was_stopped_is_snapshotted_at_start() {
    let s = scenario(
        "edge_added",
        &format!("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL); {EXTRA}"),
        DsServerOptions::default(),
    )
    .await;
    expect_added_table_snapshotted(&s, &["--tables", "items"], &["--tables", "items"]).await;
}

/// An initial snapshot of a publication without tables still counts: a table added later is
/// new, not one the (empty) snapshot covered.
#[tokio::test]
async fn a_table_added_after_an_initial_snapshot_of_no_tables_is_snapshotted() {
    let s = scenario(
        "edge_added_empty",
        &format!("{EXTRA} CREATE PUBLICATION cap_pub;"),
        DsServerOptions::default(),
    )
    .await;
    expect_added_table_snapshotted(&s, &[], &[]).await;
}

/// `rows` as a client holds them when it applies `headers.unchanged_toast` (columns left out
/// of `value` keep their previous values).
fn materialize_toast(messages: &[Value]) -> BTreeMap<String, serde_json::Map<String, Value>> {
    let mut rows: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for m in messages {
        let Some(key) = m["key"].as_str() else {
            continue;
        };
        match m["headers"]["operation"].as_str() {
            Some("insert" | "update") => {
                let row = rows.entry(key.to_string()).or_default();
                let kept: Vec<String> = m["headers"]["unchanged_toast"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|c| c.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                row.retain(|column, _| kept.contains(column));
                for (column, value) in m["value"].as_object().unwrap() {
                    row.insert(column.clone(), value.clone());
                }
            }
            Some("delete") => {
                rows.remove(key);
            }
            _ => {}
        }
    }
    rows
}

/// An update between the watermarks that leaves a TOASTed column unchanged is sent without
/// it; the chunk's copy of the row, which has it, must not be lost for that.
#[tokio::test]
async fn an_unchanged_toast_value_inside_a_window_is_not_lost() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "edge_toast",
        "CREATE TABLE docs (id int PRIMARY KEY, v int NOT NULL, body text); \
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL; \
         INSERT INTO docs SELECT g, 0, repeat(md5(g::text), 200) FROM generate_series(1, 5) g;",
        DsServerOptions::default(),
    )
    .await;
    // The stream starts empty: the snapshot request is how a client first gets the rows.
    let args = [
        "--tables",
        "docs",
        "--snapshot",
        "never",
        "--toast",
        "partial",
    ];
    let capture = start_streaming(&db, &server.url(), &args).await;
    let gate = Gate::hold(&db, &sql, "docs").await;
    sql.batch_execute("UPDATE docs SET v = v + 1 WHERE id = 1")
        .await
        .unwrap();
    gate.release().await;
    wait_snapshot_done(&sql, "public.docs", &capture).await;
    let table: BTreeMap<String, (i64, String)> = sql
        .query("SELECT id, v, body FROM docs", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let (id, v, body): (i32, i32, String) = (r.get(0), r.get(1), r.get(2));
            (id.to_string(), (i64::from(v), body))
        })
        .collect();
    let messages = read(&client, "pg-docs").await;
    let update = messages
        .iter()
        .find(|m| m["headers"]["operation"] == "update")
        .expect("the update");
    assert_eq!(
        update["headers"]["unchanged_toast"],
        serde_json::json!(["body"]),
        "the update leaves the TOASTed body out (the case under test): {update}"
    );
    let held: BTreeMap<String, (i64, String)> = materialize_toast(&messages)
        .into_iter()
        .map(|(k, row)| {
            let v = row.get("v").and_then(Value::as_i64).unwrap_or(-1);
            let body = row
                .get("body")
                .and_then(Value::as_str)
                .unwrap_or("<missing>");
            (k, (v, body.to_string()))
        })
        .collect();
    assert!(
        held == table,
        "the client's rows differ from the table: {:?}\n{}",
        held.iter()
            .map(|(k, (v, b))| format!("{k}: v={v} body={}", &b[..b.len().min(12)]))
            .collect::<Vec<_>>(),
        capture.log()
    );
    capture.stop_ok().await;
}

/// What capture logs when a chunk's read missed a commit that came before its low watermark.
const NOT_VISIBLE: &str = "not yet visible to the chunk's read";

/// PostgreSQL writes a commit to the WAL before it makes the commit visible to other
/// sessions, and a commit waiting for a synchronous standby stays invisible for the whole
/// wait while logical decoding already sends it. Such an update is streamed before a chunk's
/// low watermark, yet the chunk's read still sees the row as it was before: placed at the high
/// watermark, that older copy would overwrite the update in every client. The chunk is read
/// again once the update is visible, and the client ends with the table's rows.
#[tokio::test]
async fn a_commit_streamed_before_a_chunk_but_not_visible_to_its_read_is_not_overwritten() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = items_scenario("edge_invisible", 20).await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "items"]).await;
    wait_initial_snapshot(&sql).await;
    // A standby that never connects: a commit of a session that asks for it waits forever,
    // committed in the WAL and invisible. Every other session commits locally.
    for setting in [
        "ALTER SYSTEM SET synchronous_standby_names = 'never_connects'",
        "ALTER SYSTEM SET synchronous_commit = 'local'",
        "SELECT pg_reload_conf()",
    ] {
        sql.batch_execute(setting).await.unwrap();
    }
    let waiting = db.client().await;
    let waiting_pid = backend_pid(&waiting).await;
    let update = tokio::spawn(async move {
        waiting
            .batch_execute("SET synchronous_commit = on; UPDATE items SET v = 7 WHERE id <= 5")
            .await
    });
    wait_until("the waiting update to reach the stream", LONG, || async {
        (stream_v(&client, "pg-items", "1").await == Some(7)).then_some(())
    })
    .await;
    let seen: i32 = sql
        .query_one("SELECT v FROM items WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        seen, 0,
        "the update is streamed but not visible yet (the case under test)"
    );
    let placed = capture.log_count(PLACED);
    request_snapshot(&sql, &db, "public.items").await;
    wait_until("the chunk to be placed or read again", LONG, || async {
        (capture.log_count(PLACED) > placed || capture.log().contains(NOT_VISIBLE)).then_some(())
    })
    .await;
    sql.execute("SELECT pg_cancel_backend($1)", &[&waiting_pid])
        .await
        .unwrap();
    update
        .await
        .unwrap()
        .expect("a cancelled wait for a standby leaves the update committed");
    wait_snapshot_done(&sql, "public.items", &capture).await;
    wait_converged(&client, "pg-items", &sql, "items", &capture).await;
    assert!(
        capture.log().contains(NOT_VISIBLE),
        "capture says why it read the chunk again:\n{}",
        capture.log()
    );
    capture.stop_ok().await;
}
