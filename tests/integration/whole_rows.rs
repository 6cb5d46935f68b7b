//! What a real State Protocol client holds: streams read with the official TypeScript client
//! (`@durable-streams/state`'s `MaterializedState`, which replaces a row with `value` on
//! every update) must end up equal to the table, through the initial snapshot, updates that
//! leave TOASTed values unchanged, key changes and TRUNCATE.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use ds_sync::embedded::DsServerOptions;

use crate::kit::official_client::{self, table_rows, wait_for_rows};
use crate::kit::{CaptureProcess, Scenario, scenario, start_streaming, wait_until};

const LONG: Duration = Duration::from_secs(90);

/// 20 documents whose body is stored out of line (TOASTed) and never compressed away.
const DOCS: &str = "\
    CREATE TABLE docs (id int PRIMARY KEY, title text NOT NULL, body text); \
    ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL; \
    INSERT INTO docs SELECT g, 'doc ' || g, repeat(md5(g::text), 400) FROM generate_series(1, 20) g;";

async fn wait_table(
    base: &str,
    stream: &str,
    type_name: &str,
    sql: &tokio_postgres::Client,
    table: &str,
    capture: &CaptureProcess,
) -> official_client::ClientState {
    let expected: BTreeMap<String, Value> = table_rows(sql, table, "t.id").await;
    wait_for_rows(base, stream, type_name, &expected, LONG, || capture.log()).await
}

#[tokio::test]
async fn the_official_client_holds_whole_rows_after_updates_that_leave_toast_unchanged() {
    let Scenario {
        server,
        db,
        sql,
        pg: _pg,
        ..
    } = scenario("whole_toast", DOCS, DsServerOptions::default()).await;
    let base = server.url();
    let capture = start_streaming(&db, &base, &["--tables", "docs"]).await;
    // The initial snapshot: every document, whole.
    let state = wait_table(&base, "pg-docs", "docs", &sql, "docs", &capture).await;
    assert_eq!(
        state.controls,
        ["snapshot-start", "snapshot-end"],
        "the snapshot is framed"
    );
    assert_eq!(state.messages, 22, "20 rows between the two frames");
    // The case: half the rows updated, their large body unchanged (not resent in WAL).
    sql.batch_execute("UPDATE docs SET title = title || ' (edited)' WHERE id % 2 = 0")
        .await
        .unwrap();
    let state = wait_table(&base, "pg-docs", "docs", &sql, "docs", &capture).await;
    let rows = state.rows("docs");
    assert_eq!(rows.len(), 20);
    assert!(
        rows.values()
            .all(|r| r["body"].as_str().is_some_and(|b| b.len() == 12_800)),
        "every row keeps its body: {:?}",
        rows.values().filter(|r| r["body"].is_null()).count()
    );
    let messages = crate::kit::read(
        &ds_sync::ds::DsClient::new(&base, Default::default()).unwrap(),
        "pg-docs",
    )
    .await;
    assert!(
        messages
            .iter()
            .all(|m| m["headers"].get("unchanged_toast").is_none()),
        "no update was sent without its unchanged values"
    );
    let log = capture.stop_ok().await;
    assert!(
        log.contains("set replica identity full on an application table")
            && log.contains("public.docs"),
        "the change to the table is logged:\n{log}"
    );
}

#[tokio::test]
async fn the_official_client_holds_the_table_through_key_changes_and_truncate() {
    let Scenario {
        server,
        db,
        sql,
        pg: _pg,
        ..
    } = scenario(
        "whole_keys",
        "CREATE TABLE t (id int PRIMARY KEY, v text, n int); \
         INSERT INTO t SELECT g, 'v' || g, g FROM generate_series(1, 10) g;",
        DsServerOptions::default(),
    )
    .await;
    let base = server.url();
    let capture = start_streaming(&db, &base, &["--tables", "t"]).await;
    wait_table(&base, "pg-t", "t", &sql, "t", &capture).await;
    sql.batch_execute(
        "UPDATE t SET id = id + 100 WHERE id <= 3; \
         BEGIN; UPDATE t SET id = 1 WHERE id = 101; UPDATE t SET id = 101 WHERE id = 4; COMMIT; \
         UPDATE t SET v = 'changed', id = 50 WHERE id = 5; DELETE FROM t WHERE id = 6;",
    )
    .await
    .unwrap();
    let state = wait_table(&base, "pg-t", "t", &sql, "t", &capture).await;
    assert!(state.rows("t").contains_key("50") && !state.rows("t").contains_key("5"));
    // TRUNCATE within the run: the client drops what it held, then takes the new rows.
    sql.batch_execute("TRUNCATE t; INSERT INTO t VALUES (7, 'after', 1), (8, 'after', 2);")
        .await
        .unwrap();
    let state = wait_table(&base, "pg-t", "t", &sql, "t", &capture).await;
    assert_eq!(state.rows("t").len(), 2);
    assert_eq!(state.controls.last().map(String::as_str), Some("reset"));
    capture.stop_ok().await;
}

#[tokio::test]
async fn a_table_added_to_the_publication_while_streaming_gets_whole_rows_too() {
    let Scenario {
        server,
        db,
        sql,
        pg: _pg,
        ..
    } = scenario(
        "whole_late",
        &format!("CREATE TABLE first (id int PRIMARY KEY); {}", DOCS),
        DsServerOptions::default(),
    )
    .await;
    let base = server.url();
    let capture = start_streaming(&db, &base, &["--tables", "first"]).await;
    let identity = || async {
        sql.query_one(
            "SELECT relreplident::text FROM pg_class WHERE relname = 'docs'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0)
    };
    assert_eq!(identity().await, "d", "docs is not published yet");
    // Added by hand: capture sees it at its first change.
    sql.batch_execute(
        "ALTER PUBLICATION cap_pub ADD TABLE docs; INSERT INTO docs VALUES (21, 'late', 'x');",
    )
    .await
    .unwrap();
    wait_until("docs to get REPLICA IDENTITY FULL", LONG, || async {
        (identity().await == "f").then_some(())
    })
    .await;
    sql.batch_execute("UPDATE docs SET title = 'edited' WHERE id <= 5")
        .await
        .unwrap();
    // The late table is snapshotted while streaming, and its updates are whole.
    let state = wait_table(&base, "pg-docs", "docs", &sql, "docs", &capture).await;
    assert_eq!(state.rows("docs").len(), 21);
    capture.stop_ok().await;
}

/// An existing slot holds updates written before the table became FULL: they reach clients
/// without the unchanged value (never null), capture says so and how to repair, and
/// `ds-sync snapshot --table` repairs it.
#[tokio::test]
async fn updates_written_before_full_are_reported_and_a_snapshot_makes_them_whole() {
    let Scenario {
        server,
        db,
        sql,
        pg: _pg,
        ..
    } = scenario("whole_backlog", DOCS, DsServerOptions::default()).await;
    let base = server.url();
    let slot = db.slot("cap");
    db.ds_sync(&[
        "publication",
        "create",
        "cap_pub",
        "--tables",
        "docs",
        "--toast",
        "partial",
    ])
    .await
    .ok();
    db.ds_sync(&["slot", "create", &slot]).await.ok();
    sql.batch_execute("UPDATE docs SET title = 'before' WHERE id <= 5")
        .await
        .unwrap();
    let capture = start_streaming(&db, &base, &[]).await;
    capture
        .wait_log("updates reached clients without unchanged TOASTed values")
        .await;
    assert!(
        capture
            .log()
            .contains("ds-sync snapshot --table public.docs"),
        "the warning names the fix:\n{}",
        capture.log()
    );
    let partial = official_client::try_read(&base, "pg-docs", &[])
        .await
        .unwrap();
    let rows = partial.rows("docs");
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(
        rows.values()
            .all(|r| r.get("body").is_none() && r["title"] == "before"),
        "left out, never null: {rows:?}"
    );
    db.ds_sync(&[
        "snapshot",
        "--table",
        "docs",
        "--slot",
        &slot,
        "--publication",
        "cap_pub",
    ])
    .await
    .ok();
    wait_table(&base, "pg-docs", "docs", &sql, "docs", &capture).await;
    capture.stop_ok().await;
}
