//! TRUNCATE resets every stream the table ever wrote to, and a transaction's numbering
//! depends on the WAL alone (README, "TRUNCATE").

use ds_sync::ds::DsClient;
use ds_sync::embedded::DsServerOptions;
use serde_json::json;

use crate::kit::{
    CaptureProcess, Scenario, materialize, scenario, start_streaming, wait_confirmed,
    wait_streaming, wal_now,
};

const ROUTE: [&str; 4] = [
    "--tables",
    "orders",
    "--route",
    "orders=orders/{customer_id}",
];

/// The keys a client holds after reading the stream.
async fn keys(client: &DsClient, stream: &str) -> Vec<String> {
    let messages = client.read_all(stream).await.unwrap_or_default();
    materialize(&messages).into_keys().map(|(_, k)| k).collect()
}

/// Runs capture until everything committed so far is confirmed, then stops it.
async fn capture_until_now(s: &Scenario) {
    let capture = CaptureProcess::start(&s.db, &s.server.url(), &ROUTE).await;
    wait_streaming(&s.db).await;
    let now = wal_now(&s.sql).await;
    wait_confirmed(&s.sql, &s.db.slot("cap"), &now, &capture).await;
    capture.stop_ok().await;
}

/// Per-key streams written by the initial snapshot and by an earlier run are all reset by a
/// TRUNCATE in a later run, so a client ends with exactly the table.
#[tokio::test]
async fn truncate_resets_streams_of_earlier_runs_and_snapshots() {
    let s = scenario(
        "trunc_runs",
        "CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL, note text); \
         INSERT INTO orders SELECT g, 5, 'snap' FROM generate_series(1001, 1006) g;",
        DsServerOptions::default(),
    )
    .await;
    let first = start_streaming(&s.db, &s.server.url(), &ROUTE).await;
    s.sql
        .batch_execute("INSERT INTO orders SELECT g, g % 3, 'old' FROM generate_series(1, 30) g")
        .await
        .unwrap();
    let now = wal_now(&s.sql).await;
    wait_confirmed(&s.sql, &s.db.slot("cap"), &now, &first).await;
    first.stop_ok().await;
    for c in 0..3 {
        assert_eq!(keys(&s.client, &format!("orders/{c}")).await.len(), 10);
    }
    assert_eq!(
        keys(&s.client, "orders/5").await.len(),
        6,
        "the snapshot's rows"
    );

    s.sql
        .batch_execute("BEGIN; TRUNCATE orders; INSERT INTO orders VALUES (100, 1, 'new'); COMMIT;")
        .await
        .unwrap();
    capture_until_now(&s).await;
    assert_eq!(keys(&s.client, "orders/1").await, ["100"]);
    for stream in ["orders/0", "orders/2", "orders/5"] {
        assert_eq!(
            keys(&s.client, stream).await,
            Vec::<String>::new(),
            "{stream} was reset: {:?}",
            s.client.read_all(stream).await.unwrap()
        );
    }
}

/// A TRUNCATE transaction replayed by a session that knows more streams than the one that
/// first sent it (here: the slot is set back to before it, as after a crash before the
/// confirmation) numbers its rows identically, so the replay is recognised and nothing is
/// doubled.
#[tokio::test]
async fn a_replayed_truncate_numbers_its_rows_identically() {
    let s = scenario(
        "trunc_replay",
        "CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL, note text)",
        DsServerOptions::default(),
    )
    .await;
    let slot = s.db.slot("cap");
    let backup = s.db.slot("backup");
    let first = start_streaming(&s.db, &s.server.url(), &ROUTE).await;
    s.sql
        .batch_execute("INSERT INTO orders SELECT g, g % 3, 'a' FROM generate_series(1, 9) g")
        .await
        .unwrap();
    let now = wal_now(&s.sql).await;
    wait_confirmed(&s.sql, &slot, &now, &first).await;
    first.stop_ok().await;
    // The position the replay starts from: before the update below.
    s.sql
        .execute(
            "SELECT pg_copy_logical_replication_slot($1, $2)",
            &[&slot, &backup],
        )
        .await
        .unwrap();
    s.sql
        .batch_execute("UPDATE orders SET note = 'b'")
        .await
        .unwrap();
    capture_until_now(&s).await;
    // A new process: its session has not seen orders/0..2 when it reads the TRUNCATE.
    s.sql
        .batch_execute(
            "BEGIN; TRUNCATE orders; INSERT INTO orders VALUES (100, 7, 'x'), (101, 7, 'y'); COMMIT;",
        )
        .await
        .unwrap();
    capture_until_now(&s).await;
    let before = s.client.read_all("orders/7").await.unwrap();
    // Back to before the update: the replay sees orders/0..2 written before the TRUNCATE.
    // The walsender of the process that stopped may hold the slot a moment longer.
    crate::kit::wait_until(
        "the slot released by its walsender",
        std::time::Duration::from_secs(60),
        || async {
            let active: bool = s
                .sql
                .query_one(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .unwrap()
                .get(0);
            (!active).then_some(())
        },
    )
    .await;
    s.sql
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    s.sql
        .execute(
            "SELECT pg_copy_logical_replication_slot($1, $2)",
            &[&backup, &slot],
        )
        .await
        .unwrap();
    s.sql
        .execute("SELECT pg_drop_replication_slot($1)", &[&backup])
        .await
        .unwrap();
    capture_until_now(&s).await;
    let after = s.client.read_all("orders/7").await.unwrap();
    assert_eq!(after, before, "the replay added nothing to orders/7");
    let ids: Vec<&serde_json::Value> = after.iter().map(|m| &m["value"]["id"]).collect();
    assert_eq!(ids, [&json!(100), &json!(101)], "{after:?}");
    for c in 0..3 {
        assert_eq!(
            keys(&s.client, &format!("orders/{c}")).await,
            Vec::<String>::new()
        );
    }
    assert_eq!(keys(&s.client, "orders/7").await, ["100", "101"]);
}
