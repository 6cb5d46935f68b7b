//! `run` and `dev` never break the application's writes: a table PostgreSQL would refuse
//! UPDATE and DELETE on once published is refused before the publication is touched, and
//! `--insert-only` captures such a table's inserts while its updates keep working.

use std::time::Duration;

use ds_sync::embedded::DsServerOptions;

use crate::kit::{Scenario, TestDb, scenario, start_streaming, test_db, wait_until};

const TABLES: &str = "\
    CREATE TABLE items (id int PRIMARY KEY, title text); \
    CREATE TABLE nokey (x int, note text); \
    INSERT INTO items VALUES (1, 'a'); INSERT INTO nokey VALUES (1, 'a');";

async fn updates_work(sql: &tokio_postgres::Client, when: &str) {
    for statement in [
        "UPDATE items SET title = title || '!'",
        "UPDATE nokey SET x = x + 1",
        "DELETE FROM nokey WHERE x > 1000",
    ] {
        if let Err(e) = sql.batch_execute(statement).await {
            panic!("{when}: the application's `{statement}` failed: {e:?}");
        }
    }
}

async fn nothing_created(db: &TestDb, slot: &str) {
    let sql = db.client().await;
    let publications: i64 = sql
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(publications, 0, "no publication was created");
    let slots: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "no slot was created");
}

#[tokio::test]
async fn run_and_dev_refuse_a_keyless_table_before_touching_the_publication() {
    let db = test_db("writes_refuse").await;
    let sql = db.client().await;
    sql.batch_execute(TABLES).await.unwrap();
    let slot = db.slot("refuse");
    for command in ["run", "dev"] {
        let run = db
            .ds_sync(&[
                command,
                "--tables",
                "public.nokey",
                "--slot",
                &slot,
                "--ds-server-url",
                "http://127.0.0.1:9",
                "--no-ingest",
            ])
            .await
            .expect_code(1);
        assert!(
            run.stderr.contains(
                "error: table public.nokey has no primary key (which its replica identity \
                 DEFAULT would use): published with its updates and deletes, every UPDATE and \
                 DELETE on public.nokey would fail"
            ) && run.stderr.contains("--insert-only public.nokey"),
            "{command}: {}",
            run.stderr
        );
        nothing_created(&db, &slot).await;
        updates_work(&sql, &format!("after `{command}` refused")).await;
    }
}

#[tokio::test]
async fn an_insert_only_table_streams_its_inserts_and_keeps_its_updates_working() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario("writes_inserts", TABLES, DsServerOptions::default()).await;
    let capture = start_streaming(
        &db,
        &server.url(),
        &["--tables", "items", "--insert-only", "nokey"],
    )
    .await;
    updates_work(&sql, "while capture runs").await;
    sql.batch_execute("INSERT INTO nokey VALUES (7, 'seven'); TRUNCATE nokey;")
        .await
        .unwrap();
    let messages = wait_until(
        "the insert and the reset",
        Duration::from_secs(60),
        || async {
            let m = crate::kit::read(&client, "pg-nokey").await;
            (m.len() >= 5).then_some(m)
        },
    )
    .await;
    let ops: Vec<&str> = messages
        .iter()
        .map(|m| {
            m["headers"]["operation"]
                .as_str()
                .or(m["headers"]["control"].as_str())
                .unwrap_or("?")
        })
        .collect();
    // The snapshot's row, the insert, TRUNCATE's reset; no update, no delete.
    assert_eq!(
        ops,
        [
            "snapshot-start",
            "insert",
            "snapshot-end",
            "insert",
            "reset"
        ],
        "{messages:#?}"
    );
    assert_eq!(messages[3]["value"]["note"], "seven");
    updates_work(&sql, "after the inserts").await;
    capture.stop_ok().await;
}
