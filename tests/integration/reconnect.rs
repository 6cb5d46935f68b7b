//! Lost Postgres connections are transient: terminating any backend capture holds (its SQL
//! connection, idle or inside a re-snapshot; a snapshot reader; the exported snapshot's
//! session) makes it reconnect with backoff and go on, never exit. The walsender case is in
//! `capture_faults`, ingest's connections in `ingest`.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use ds_sync::ds::DsClient;
use ds_sync::embedded::DsServerOptions;

use crate::kit::{
    CaptureProcess, Scenario, Wait, control, materialize_by_key, read, scenario, start_streaming,
    wait_converged, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// Terminates the backends of this database that `filter` (SQL over `pg_stat_activity` as
/// `a`) picks; returns how many.
async fn terminate(sql: &tokio_postgres::Client, filter: &str) -> i64 {
    sql.query_one(
        &format!(
            "SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity a \
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND ({filter})"
        ),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until `check` holds for the stream's messages; fails at once if capture exits.
#[track_caller]
fn wait_stream<'a>(
    client: &'a DsClient,
    stream: &'a str,
    what: &str,
    capture: &'a CaptureProcess,
    check: impl Fn(&[Value]) -> bool + 'a,
) -> impl Future<Output = Vec<Value>> + 'a {
    let wait = Wait::new(what, LONG).while_running(capture);
    async move {
        wait.until(|| async {
            let messages = read(client, stream).await;
            if check(&messages) {
                Ok(messages)
            } else {
                Err(format!("{} messages", messages.len()))
            }
        })
        .await
    }
}

/// The reproduction: the idle SQL connection is terminated (idle_session_timeout, a
/// pooler or a DBA), then a schema change makes capture look the table up again.
#[tokio::test]
async fn a_terminated_sql_connection_is_reconnected_and_capture_goes_on() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "reconnect_sql",
        "CREATE TABLE items (id int PRIMARY KEY, title text)",
        DsServerOptions::default(),
    )
    .await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "items"]).await;
    for round in 0..2 {
        let killed = terminate(
            &sql,
            "a.backend_type = 'client backend' AND a.application_name = 'ds-sync/capture'",
        )
        .await;
        assert_eq!(killed, 1, "round {round}: capture's SQL connection");
        let id = round + 1;
        sql.batch_execute(&format!(
            "ALTER TABLE items ADD COLUMN extra{round} int; \
             INSERT INTO items (id, title, extra{round}) VALUES ({id}, 'a', 7)"
        ))
        .await
        .unwrap();
        let key = id.to_string();
        let column = format!("extra{round}");
        wait_stream(
            &client,
            "pg-items",
            "the row after the schema change",
            &capture,
            |m| {
                materialize_by_key(m)
                    .get(&key)
                    .is_some_and(|row| row[&column] == 7)
            },
        )
        .await;
    }
    let log = capture.stop_ok().await;
    assert!(
        log.contains("capture interrupted"),
        "the lost connection was noticed and retried:\n{log}"
    );
}

/// Capture's SQL connection ends while it reads a chunk of a snapshot taken while streaming
/// (held there by a lock, so the moment is certain, and the wait names the lock's holder):
/// the request resumes after reconnecting.
#[tokio::test]
async fn a_connection_lost_inside_a_snapshot_while_streaming_resumes_it() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "reconnect_chunk",
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL); \
         INSERT INTO items SELECT g, 0 FROM generate_series(1, 500) g;",
        DsServerOptions::default(),
    )
    .await;
    let args = ["--tables", "items", "--snapshot-chunk-rows", "100"];
    let capture = start_streaming(&db, &server.url(), &args).await;
    let lock = db.client().await;
    lock.batch_execute("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    crate::kit::request_snapshot(&sql, &db, "public.items").await;
    let blocked = wait_until(
        "capture's chunk read to wait for the lock",
        LONG,
        || async {
            let pid: i32 = sql
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'ds-sync%' \
                 AND wait_event_type = 'Lock' AND datname = current_database()",
                    &[],
                )
                .await
                .ok()??
                .get(0);
            Some(pid)
        },
    )
    .await;
    // A read that waits says for whom.
    let holder = crate::kit::backend_pid(&lock).await;
    // Up to PostgreSQL 15 the chunk's read waits; from 16 on, the catalog look-up before
    // it (`pg_publication_tables` locks the table).
    let waiting = if crate::kit::server_major(&sql).await >= 16 {
        "looking up public.items for its snapshot"
    } else {
        "reading a chunk of public.items"
    };
    let said = format!("{waiting} waits for the transaction of pid {holder} ");
    wait_until("capture to say who holds the lock", LONG, || async {
        capture.log().contains(&said).then_some(())
    })
    .await;
    assert_eq!(terminate(&sql, &format!("a.pid = {blocked}")).await, 1);
    lock.batch_execute("COMMIT").await.unwrap();
    wait_until("the snapshot to finish", LONG, || async {
        let done: i64 = sql
            .query_one(
                "SELECT count(*) FROM ds_sync.signals WHERE kind = 'done'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (done == 1).then_some(())
    })
    .await;
    assert_eq!(
        capture.try_exit(),
        None,
        "capture runs on:\n{}",
        capture.log()
    );
    let messages = wait_converged(&client, "pg-items", &sql, "items", &capture).await;
    let resent = messages
        .iter()
        .filter(|m| m["headers"]["txid"].is_null() && control(m).is_none())
        .count();
    assert!(
        resent >= 1000,
        "the initial snapshot and the re-snapshot: {resent} rows"
    );
    capture.stop_ok().await;
}

/// A snapshot reader and the exported snapshot's session end in the middle of the initial
/// snapshot: capture takes the snapshot again (a reset, then the rows) instead of exiting.
/// The DS server is down meanwhile, so the reader is certainly still copying: the writer
/// holds at most `--max-buffer-bytes`, and the reader waits for room.
#[tokio::test]
async fn lost_snapshot_connections_make_capture_take_the_snapshot_again() {
    let Scenario {
        mut server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "reconnect_snapshot",
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, pad text); \
         INSERT INTO items SELECT g, 0, repeat('x', 50) FROM generate_series(1, 100000) g;",
        DsServerOptions::default(),
    )
    .await;
    server.stop().await;
    let args = ["--tables", "items", "--max-buffer-bytes", "100000"];
    let capture = CaptureProcess::start(&db, &server.url(), &args).await;
    wait_until("a snapshot reader copying", LONG, || async {
        let n: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name LIKE 'ds-sync%' AND query LIKE 'COPY (%' \
                 AND state = 'active'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (n > 0).then_some(())
    })
    .await;
    let killed = terminate(
        &sql,
        "(a.application_name LIKE 'ds-sync%' AND a.query LIKE 'COPY (%') \
         OR a.application_name IN ('ds-sync/snapshot', 'ds-sync-snapshot')",
    )
    .await;
    assert_eq!(killed, 2, "the reader and the exporting session");
    server.start_again().await.unwrap();
    wait_stream(
        &client,
        "pg-items",
        "a new snapshot after a reset",
        &capture,
        |m| {
            let Some(reset) = m.iter().position(|m| control(m) == Some("reset")) else {
                return false;
            };
            m[reset..].iter().any(|m| m["key"].is_string())
        },
    )
    .await;
    let log = capture.stop_ok().await;
    for said in [
        "capture interrupted",
        "the previous snapshot did not finish",
    ] {
        assert!(log.contains(said), "{said:?} is not in the log:\n{log}");
    }
}
