//! A standby on the slot lock (README, "Standby"): a second `ds-sync run` on a busy slot
//! waits, says `standby` in its log and `/readyz`, and takes over when the active process
//! is killed, or hangs; every row reaches the stream once and in order throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use ds_sync::embedded::DsServerOptions;

use crate::kit::{
    CaptureProcess, Scenario, scenario, start_streaming, streaming_pid, wait_keys_exactly,
    wait_streaming_anew, wait_until,
};

/// Inserts 1, 2, 3, ... one row per transaction until stopped; returns the last key.
fn spawn_inserts(
    url: String,
    stop: tokio_util::sync::CancellationToken,
) -> (Arc<AtomicI32>, tokio::task::JoinHandle<i32>) {
    let last = Arc::new(AtomicI32::new(0));
    let counter = Arc::clone(&last);
    let task = tokio::spawn(async move {
        let sql = crate::kit::connect(&url).await;
        let mut key = 0;
        while !stop.is_cancelled() {
            key += 1;
            sql.execute("INSERT INTO s VALUES ($1)", &[&key])
                .await
                .unwrap();
            counter.store(key, Ordering::Release);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        key
    });
    (last, task)
}

/// `/readyz` of a process started with `--listen 127.0.0.1:0`: status and body.
async fn readyz(p: &CaptureProcess) -> (u16, serde_json::Value) {
    let url = format!("http://{}/readyz", p.listen_addr().await);
    let (status, body) = crate::kit::http(hyper::Method::GET, &url, &[], b"").await;
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status.as_u16(), body)
}

/// Waits until `p` says it is a standby in its log and in `/readyz` (200, capture state
/// `standby`: see README, "Standby").
async fn wait_standby(p: &CaptureProcess) {
    p.wait_log("standby: another ds-sync holds the slot lock")
        .await;
    let (status, body) = wait_until(
        "/readyz of the standby to say standby",
        Duration::from_secs(30),
        || async {
            let (status, body) = readyz(p).await;
            (body["capture"]["state"] == "standby" && body["ds_server"]["ready"] == true)
                .then_some((status, body))
        },
    )
    .await;
    assert_eq!(status, 200, "a standby is ready: {body}");
    let reason = body["capture"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("holds the lock of slot"), "{body}");
}

const ARGS: [&str; 4] = ["--tables", "s", "--listen", "127.0.0.1:0"];

#[tokio::test]
async fn standbys_take_over_killed_processes_under_writes_with_every_row_once() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "standby_kill",
        "CREATE TABLE s (id int PRIMARY KEY)",
        DsServerOptions::default(),
    )
    .await;
    let slot = db.slot("cap");
    let mut active = start_streaming(&db, &server.url(), &ARGS).await;
    let mut walsender = streaming_pid(&sql, &slot).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (last, writer) = spawn_inserts(db.url.clone(), stop.clone());
    for round in 0..3 {
        let standby = CaptureProcess::start(&db, &server.url(), &ARGS).await;
        wait_standby(&standby).await;
        assert_eq!(
            streaming_pid(&sql, &slot).await.unwrap(),
            walsender,
            "round {round}: the standby left the active process alone"
        );
        let before = last.load(Ordering::Acquire);
        active.kill().await;
        walsender = Some(wait_streaming_anew(&sql, &slot, walsender).await);
        assert!(
            standby.log().contains("took the slot lock"),
            "round {round}:\n{}",
            standby.log()
        );
        // Rows written across the failover arrive (the writer never paused).
        wait_until(
            "the writer to go on past the failover",
            Duration::from_secs(30),
            || async { (last.load(Ordering::Acquire) > before + 20).then_some(()) },
        )
        .await;
        active = standby;
    }
    stop.cancel();
    let n = writer.await.unwrap();
    wait_keys_exactly(&client, "pg-s", i64::from(n)).await;
    active.stop_ok().await;
}

#[tokio::test]
async fn a_hung_active_is_broken_after_the_timeout_and_fenced_when_it_resumes() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "standby_hung",
        "CREATE TABLE s (id int PRIMARY KEY)",
        DsServerOptions::default(),
    )
    .await;
    let insert = |from: i32, to: i32| {
        let sql = &sql;
        async move {
            sql.execute(
                "INSERT INTO s SELECT generate_series($1::int, $2::int)",
                &[&from, &to],
            )
            .await
            .unwrap();
        }
    };
    let slot = db.slot("cap");
    let args = ["--tables", "s", "--standby-takeover-after-ms", "1500"];
    let old = start_streaming(&db, &server.url(), &args).await;
    let walsender = streaming_pid(&sql, &slot).await.unwrap();
    insert(1, 50).await;
    wait_keys_exactly(&client, "pg-s", i64::from(50)).await;
    let standby = CaptureProcess::start(&db, &server.url(), &args).await;
    standby
        .wait_log("standby: another ds-sync holds the slot lock")
        .await;
    // A live active is left alone well past the timeout: it keeps renewing its lease.
    let since: f64 = sql
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .await
        .unwrap()
        .get(0);
    wait_until(
        "the active to renew its lease 3 s after the standby started",
        Duration::from_secs(30),
        || async {
            let until: Option<f64> = sql
                .query_one(
                    "SELECT extract(epoch FROM lease_until)::float8 FROM ds_sync.slot_owners \
                     WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .ok()?
                .get(0);
            until.filter(|u| *u > since + 6.0)
        },
    )
    .await;
    assert_eq!(
        streaming_pid(&sql, &slot).await.unwrap(),
        walsender,
        "the live active kept the slot:\n{}",
        standby.log()
    );
    assert!(!standby.log().contains("looks hung"), "{}", standby.log());

    old.freeze();
    insert(51, 100).await;
    wait_streaming_anew(&sql, &slot, walsender).await;
    wait_keys_exactly(&client, "pg-s", i64::from(100)).await;
    let log = standby.log();
    assert!(log.contains("looks hung"), "{log}");

    old.resume();
    let code = old.wait_exit("after it was taken over").await;
    assert_eq!(code, 7, "exit code 7 (taken over):\n{}", old.log());
    insert(101, 150).await;
    wait_keys_exactly(&client, "pg-s", i64::from(150)).await;
    assert_eq!(
        standby.log_count("streaming changes"),
        1,
        "the standby kept its slot once it took it:\n{}",
        standby.log()
    );
    standby.stop_ok().await;
}

#[tokio::test]
async fn a_lost_lock_stops_streaming_until_the_lock_is_held_again() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "standby_lost_lock",
        "CREATE TABLE s (id int PRIMARY KEY)",
        DsServerOptions::default(),
    )
    .await;
    let slot = db.slot("cap");
    let capture = start_streaming(&db, &server.url(), &["--tables", "s"]).await;
    let walsender = streaming_pid(&sql, &slot).await.unwrap();
    sql.execute("INSERT INTO s SELECT generate_series(1, 20)", &[])
        .await
        .unwrap();
    wait_keys_exactly(&client, "pg-s", i64::from(20)).await;
    let ended: i64 = sql
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'ds-sync/slot-lock'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ended, 1, "one lock session");
    // Streaming stopped (its walsender went) and resumed once the lock was held again.
    wait_streaming_anew(&sql, &slot, walsender).await;
    let log = capture.log();
    assert!(log.contains("lost the lock of slot"), "{log}");
    sql.execute("INSERT INTO s SELECT generate_series(21, 40)", &[])
        .await
        .unwrap();
    wait_keys_exactly(&client, "pg-s", i64::from(40)).await;
    capture.stop_ok().await;
}
