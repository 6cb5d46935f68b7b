//! `ds-sync run` end to end: a real cluster, the real binary, a real DS server in-process.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use ds_sync::ds::DsClient;
use ds_sync::embedded::DsServerOptions;
use ds_sync::sse::{ArrayItem, DsItem};

use crate::kit::{CaptureProcess, Scenario, Wait, read, scenario, start_streaming, wait_until};

const LONG: Duration = Duration::from_secs(60);

/// Waits until the stream holds at least `n` messages and returns them; fails when no new
/// message arrives for [`LONG`] (a slow machine only slows the wait, a stall fails it).
async fn wait_messages(
    client: &DsClient,
    stream: &str,
    n: usize,
    capture: &CaptureProcess,
) -> Vec<Value> {
    let waited = Wait::new(format!("{n} messages in {stream}"), LONG)
        .stalled_after(LONG)
        .log_of(capture)
        .try_until(|| async {
            let m = read(client, stream).await;
            if m.len() >= n {
                return Ok(m);
            }
            let tail: Vec<&Value> = m.iter().rev().take(5).collect();
            Err(format!("{} messages, the last ones: {tail:#?}", m.len()))
        })
        .await;
    match waited {
        Ok(messages) => messages,
        Err(failure) => panic!("{failure}\n{}", replication_state(capture.db_url()).await),
    }
}

/// Publications, walsenders and slots of the database at `url`, for failure messages.
async fn replication_state(url: &str) -> String {
    let sql = crate::kit::connect(url).await;
    let mut out = String::new();
    for (title, query) in [
        (
            "publications",
            "SELECT format('%s %s.%s', pubname, schemaname, tablename) FROM pg_publication_tables",
        ),
        (
            "walsenders",
            "SELECT format('%s %s sent=%s write=%s flush=%s', application_name, state, sent_lsn, write_lsn, flush_lsn) FROM pg_stat_replication",
        ),
        (
            "slots",
            "SELECT format('%s active=%s confirmed=%s', slot_name, active, confirmed_flush_lsn) FROM pg_replication_slots",
        ),
    ] {
        let rows: Vec<String> = sql
            .query(query, &[])
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        out.push_str(&format!("--- {title} ---\n{}\n", rows.join("\n")));
    }
    out
}

fn ops(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            m["headers"]["operation"]
                .as_str()
                .unwrap_or("control")
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn the_sync_layer_check_a_row_reaches_pg_items_over_sse_within_a_second() {
    let Scenario { server, client, db, sql, pg: _pg } =
        scenario("cap_syncdoc", "CREATE TABLE items (id SERIAL PRIMARY KEY, title TEXT NOT NULL, body TEXT, created_at TIMESTAMPTZ DEFAULT NOW())", DsServerOptions::default()).await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "items"]).await;
    client.ensure_stream("pg-items").await.unwrap();
    let mut sse = client
        .subscribe("pg-items", "now")
        .await
        .expect("SSE subscription");
    let inserted = Instant::now();
    sql.batch_execute("INSERT INTO items (title, body) VALUES ('hello', 'world')")
        .await
        .unwrap();
    let data = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match sse.next().await {
                Some(Ok(DsItem::Array(ArrayItem::Element { text, .. }))) => return text,
                Some(Ok(_)) => continue,
                other => panic!("SSE ended: {other:?}"),
            }
        }
    })
    .await
    .expect("the row arrives over SSE");
    let latency = inserted.elapsed();
    let row: Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(row["type"], "items");
    assert_eq!(row["key"], "1");
    assert_eq!(row["value"]["title"], "hello");
    assert_eq!(row["headers"]["operation"], "insert");
    assert!(
        latency < Duration::from_secs(1),
        "the sync-layer document's bound: took {latency:?}"
    );
    capture.stop_ok().await;
}

#[tokio::test]
async fn every_operation_and_type_arrives_as_committed() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "cap_types",
        "CREATE TYPE mood AS ENUM ('ok', 'great'); \
         CREATE TABLE t (id int8 PRIMARY KEY, b bool, i2 int2, i4 int4, f4 float4, f8 float8, \
           n numeric, txt text, vc varchar(10), u uuid, j json, jb jsonb, d date, tm time, \
           ts timestamp, tz timestamptz, by bytea, ia int4[], ta text[], m mood, nothing text)",
        DsServerOptions::default(),
    )
    .await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "t"]).await;
    sql.batch_execute(
        "SET TIME ZONE 'UTC'; \
         INSERT INTO t VALUES (1, true, 2, 4, 1.5, 'NaN', 123456789012345678901234567890.123, \
           'text \"q\"', 'vc', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}', '{\"b\": null}', \
           '2024-02-29', '13:14:15', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05+00', \
           '\\x0102ff', '{1,NULL,3}', '{\"a b\",\"c,d\",NULL}', 'great', NULL); \
         UPDATE t SET txt = 'changed', f8 = '-Infinity' WHERE id = 1; \
         DELETE FROM t WHERE id = 1;",
    )
    .await
    .unwrap();
    let m = wait_messages(&client, "pg-t", 3, &capture).await;
    assert_eq!(ops(&m), ["insert", "update", "delete"]);
    let v = &m[0]["value"];
    let expected = json!({
        "id": 1, "b": true, "i2": 2, "i4": 4, "f4": 1.5, "f8": "NaN",
        "n": "123456789012345678901234567890.123", "txt": "text \"q\"", "vc": "vc",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "j": {"a": [1, 2]}, "jb": {"b": null},
        "d": "2024-02-29", "tm": "13:14:15", "ts": "2024-01-02T03:04:05.123456",
        "tz": "2024-01-02T03:04:05+00:00", "by": "0102ff", "ia": [1, null, 3],
        "ta": ["a b", "c,d", null], "m": "great", "nothing": null
    });
    assert_eq!(v, &expected);
    assert_eq!(m[1]["value"]["txt"], "changed");
    assert_eq!(m[1]["value"]["f8"], "-Infinity");
    assert_eq!(m[2]["key"], "1");
    for msg in &m {
        assert_eq!(msg["type"], "t");
        assert!(
            msg["headers"]["txid"].is_string() && msg["headers"]["lsn"].is_string(),
            "{msg}"
        );
        assert!(
            msg["headers"]["timestamp"].as_str().unwrap().ends_with('Z'),
            "{msg}"
        );
    }
    capture.stop_ok().await;
}

#[tokio::test]
async fn multi_table_transactions_arrive_in_commit_order_and_alter_table_just_works() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "cap_order",
        "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text);",
        DsServerOptions::default(),
    )
    .await;
    let capture = start_streaming(
        &db,
        &server.url(),
        &["--tables", "a,b", "--stream-template", "all"],
    )
    .await;
    sql.batch_execute(
        "BEGIN; INSERT INTO a VALUES (1, 'a1'); INSERT INTO b VALUES (1, 'b1'); COMMIT; \
         BEGIN; INSERT INTO b VALUES (2, 'b2'); INSERT INTO a VALUES (2, 'a2'); COMMIT; \
         ALTER TABLE a ADD COLUMN extra int DEFAULT 7; INSERT INTO a VALUES (3, 'a3', 8); \
         ALTER TABLE a RENAME COLUMN v TO w; INSERT INTO a VALUES (4, 'a4', 9); \
         ALTER TABLE a DROP COLUMN extra; ALTER TABLE a ALTER COLUMN w TYPE int USING 5; INSERT INTO a VALUES (5, 6);",
    )
    .await
    .unwrap();
    let m = wait_messages(&client, "all", 7, &capture).await;
    let seen: Vec<(String, String)> = m
        .iter()
        .map(|x| {
            (
                x["type"].as_str().unwrap().into(),
                x["key"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expect: Vec<(String, String)> = [
        ("a", "1"),
        ("b", "1"),
        ("b", "2"),
        ("a", "2"),
        ("a", "3"),
        ("a", "4"),
        ("a", "5"),
    ]
    .iter()
    .map(|(t, k)| (t.to_string(), k.to_string()))
    .collect();
    assert_eq!(seen, expect);
    assert_eq!(m[4]["value"], json!({"id": 3, "v": "a3", "extra": 8}));
    assert_eq!(m[5]["value"], json!({"id": 4, "w": "a4", "extra": 9}));
    assert_eq!(m[6]["value"], json!({"id": 5, "w": 6}));
    capture.stop_ok().await;
}

#[tokio::test]
async fn a_table_renamed_while_streaming_sends_its_next_rows_to_its_new_stream() {
    // The stream of a `{table}` route is rendered once per table, not per row: a rename
    // (a new Relation message) must render it again, within one transaction too.
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "cap_rename",
        "CREATE TABLE a (id int PRIMARY KEY, v text);",
        DsServerOptions::default(),
    )
    .await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "a"]).await;
    sql.batch_execute(
        "INSERT INTO a VALUES (1, 'x'); \
         BEGIN; INSERT INTO a VALUES (2, 'y'); ALTER TABLE a RENAME TO c; \
         INSERT INTO c VALUES (3, 'z'); COMMIT; INSERT INTO c VALUES (4, 'w');",
    )
    .await
    .unwrap();
    // The rows written under the new name lead its stream (whatever ds-sync sends there
    // after them, such as a snapshot of the table under its new name).
    let renamed = wait_messages(&client, "pg-c", 2, &capture).await;
    let keys: Vec<&str> = renamed.iter().map(|m| m["key"].as_str().unwrap()).collect();
    assert_eq!(keys[..2], ["3", "4"], "{renamed:?}");
    assert!(renamed.iter().all(|m| m["type"] == "c"), "{renamed:?}");
    let before = wait_messages(&client, "pg-a", 2, &capture).await;
    let keys: Vec<&str> = before.iter().map(|m| m["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["1", "2"]);
    capture.stop_ok().await;
}

#[tokio::test]
async fn with_partial_toast_an_unchanged_toast_value_is_left_out_never_null() {
    let Scenario { server, client, db, sql, pg: _pg } =
        scenario("cap_toast", "CREATE TABLE plain (id int PRIMARY KEY, n int, big text); \
         CREATE TABLE full_ident (id int PRIMARY KEY, n int, big text); ALTER TABLE full_ident REPLICA IDENTITY FULL; \
         ALTER TABLE plain ALTER COLUMN big SET STORAGE EXTERNAL; ALTER TABLE full_ident ALTER COLUMN big SET STORAGE EXTERNAL;", DsServerOptions::default()).await;
    // `--toast partial`: ds-sync leaves replica identities alone (the default sets FULL on
    // plain, see official_client::toast_*).
    let capture = start_streaming(
        &db,
        &server.url(),
        &["--tables", "plain,full_ident", "--toast", "partial"],
    )
    .await;
    let big = "x".repeat(10_000);
    for table in ["plain", "full_ident"] {
        sql.execute(&format!("INSERT INTO {table} VALUES (1, 0, $1)"), &[&big])
            .await
            .unwrap();
        sql.batch_execute(&format!("UPDATE {table} SET n = 1 WHERE id = 1"))
            .await
            .unwrap();
    }
    let plain = wait_messages(&client, "pg-plain", 2, &capture).await;
    let update = &plain[1]["value"];
    assert_eq!(update["n"], 1);
    assert!(
        update.get("big").is_none(),
        "an unsent TOAST value is left out, never null: {update}"
    );
    assert_eq!(plain[1]["headers"]["unchanged_toast"], json!(["big"]));
    let full = wait_messages(&client, "pg-full_ident", 2, &capture).await;
    assert_eq!(
        full[1]["value"]["big"].as_str().map(str::len),
        Some(10_000),
        "taken from the old row"
    );
    assert!(full[1]["headers"].get("unchanged_toast").is_none());
    capture.stop_ok().await;
}

#[tokio::test]
async fn truncate_sends_reset_and_per_key_routing_fans_out() {
    let Scenario { server, client, db, sql, pg: _pg } =
        scenario("cap_route", "CREATE TABLE sessions (id int PRIMARY KEY, session_id text NOT NULL, v int); ALTER TABLE sessions REPLICA IDENTITY FULL;", DsServerOptions::default()).await;
    let capture = start_streaming(
        &db,
        &server.url(),
        &[
            "--tables",
            "sessions",
            "--route",
            "sessions=sessions/{session_id}",
        ],
    )
    .await;
    sql.batch_execute(
        "INSERT INTO sessions VALUES (1, 'a', 1), (2, 'b', 1), (3, 'a/x', 1); \
         DELETE FROM sessions WHERE id = 2; TRUNCATE sessions;",
    )
    .await
    .unwrap();
    let a = wait_messages(&client, "sessions/a", 2, &capture).await;
    assert_eq!(a[0]["key"], "1");
    assert_eq!(a[1]["headers"]["control"], "reset", "{a:?}");
    let b = wait_messages(&client, "sessions/b", 3, &capture).await;
    assert_eq!(ops(&b), ["insert", "delete", "control"]);
    let slash = wait_messages(&client, "sessions/a%2Fx", 1, &capture).await;
    assert_eq!(slash[0]["value"]["session_id"], "a/x");
    capture.stop_ok().await;
}

#[tokio::test]
async fn a_100k_row_transaction_arrives_whole_and_in_order() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "cap_big",
        "CREATE TABLE big (id int PRIMARY KEY, v text)",
        DsServerOptions::default(),
    )
    .await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "big"]).await;
    sql.batch_execute("INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
        .await
        .unwrap();
    let m = wait_messages(&client, "pg-big", 100_000, &capture).await;
    assert_eq!(m.len(), 100_000);
    for (i, msg) in m.iter().enumerate() {
        assert_eq!(msg["key"], (i + 1).to_string(), "message {i} out of order");
    }
    capture.stop_ok().await;
}

#[tokio::test]
async fn writes_to_unpublished_tables_advance_the_slot() {
    let Scenario {
        server,
        client: _client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "cap_idle",
        "CREATE TABLE published (id int PRIMARY KEY); CREATE TABLE other (id int);",
        DsServerOptions::default(),
    )
    .await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "published"]).await;
    let slot = db.slot("cap");
    let confirmed = || async {
        let row = sql
            .query_one("SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let before = confirmed().await;
    sql.batch_execute("INSERT INTO other SELECT generate_series(1, 20000)")
        .await
        .unwrap();
    let current: i64 = sql
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_until(
        "confirmed_flush_lsn to pass the unpublished writes",
        LONG,
        || async {
            let now = confirmed().await;
            (now >= current && now > before).then_some(())
        },
    )
    .await;
    capture.stop_ok().await;
}
