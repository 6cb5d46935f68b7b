//! Ingest through the `ds-sync` binary: subscriptions changed while it runs, the
//! subscriptions report, loop safety, and SIGKILL at random moments.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use ds_sync::embedded::DsServerOptions;

use crate::kit::ingest::{PATIENCE, setup};
use crate::kit::{CaptureProcess, Rng, Run, TestDb, http, run_ds_sync, wait_until};

async fn cli(db: &TestDb, ds_url: &str, args: &[&str]) -> Run {
    run_ds_sync(
        args,
        &[("POSTGRES_URL", db.url.as_str()), ("DS_SERVER_URL", ds_url)],
    )
    .await
}

/// Waits until `/metrics` has (or no longer has) series of the stream `live1`.
#[track_caller]
fn wait_live1_series(metrics: &str, present: bool) -> impl Future<Output = ()> + '_ {
    let what = if present {
        "series of live1 in /metrics"
    } else {
        "live1's series to leave /metrics (its ingest stopped)"
    };
    wait_until(what, PATIENCE, move || async move {
        let (status, body) = http(hyper::Method::GET, metrics, &[], b"").await;
        let body = String::from_utf8_lossy(&body).into_owned();
        if status == hyper::StatusCode::OK && body.contains("stream=\"live1\"") == present {
            Ok(())
        } else {
            Err(format!("{status}:\n{body}"))
        }
    })
}

#[tokio::test]
async fn subscribe_and_unsubscribe_while_running() {
    let s = setup("ing_cli_subs", DsServerOptions::default()).await;
    let url = s.server.url();
    let process =
        CaptureProcess::start(&s.db, &url, &["--no-capture", "--listen", "127.0.0.1:0"]).await;
    let metrics = format!("http://{}/metrics", process.listen_addr().await);
    for stream in ["live1", "live2"] {
        s.ds.ensure_stream(stream).await.unwrap();
    }
    let out = cli(&s.db, &url, &["subscribe", "live1"]).await.ok();
    assert!(out.stdout.contains("subscribed live1"), "{}", out.stdout);
    s.post("live1", r#"[{"key":"one"}]"#).await;
    s.wait_rows("live1", 1).await;
    s.wait_caught_up("live1").await;
    s.wait_status("live1", "streaming").await;
    let sql = &s.sql;
    wait_until("live1's last event time", PATIENCE, || async {
        let row = sql
            .query_one(
                "SELECT last_event_at IS NOT NULL FROM ds_sync.subscriptions WHERE stream_name = 'live1'",
                &[],
            )
            .await
            .ok()?;
        row.get::<_, bool>(0).then_some(())
    })
    .await;

    wait_until("live1's memory figures", PATIENCE, || async {
        (s.peak_buffered("live1").await > 0).then_some(())
    })
    .await;
    let report = cli(&s.db, &url, &["subscriptions", "--output", "json"])
        .await
        .ok()
        .json();
    let line = &report[0];
    assert_eq!(line["stream"], "live1", "{report:#}");
    assert_eq!(line["status"], "streaming", "{report:#}");
    assert_eq!(line["caught_up"], true, "{report:#}");
    assert_eq!(line["offset"], line["tail"], "{report:#}");
    assert_eq!(line["dead_letters"], 0, "{report:#}");
    assert!(
        line["peak_buffered_bytes"].as_i64() > Some(0)
            && line["buffered_bytes"].as_i64() <= line["peak_buffered_bytes"].as_i64(),
        "{report:#}"
    );
    assert!(line["last_event_at"].is_string(), "{report:#}");
    let table = cli(&s.db, &url, &["subscriptions"]).await.ok();
    assert!(
        table.stdout.contains("live1")
            && table.stdout.contains("caught up")
            && table.stdout.contains("buffered (peak)"),
        "{}",
        table.stdout
    );

    wait_live1_series(&metrics, true).await;
    let out = cli(&s.db, &url, &["unsubscribe", "live1"]).await.ok();
    assert!(out.stdout.contains("unsubscribed live1"), "{}", out.stdout);
    // Once its ingest stopped, its series are gone: after that, live1's events wait in the
    // stream.
    wait_live1_series(&metrics, false).await;
    s.post("live1", r#"[{"key":"while-unsubscribed"}]"#).await;
    cli(&s.db, &url, &["subscribe", "live2"]).await.ok();
    s.post("live2", r#"[{"key":"two"}]"#).await;
    s.wait_rows("live2", 1).await;
    assert_eq!(
        s.count("live1").await,
        1,
        "an unsubscribed stream was still ingested"
    );

    // Subscribing again resumes from the stored offset: the event lands, once.
    cli(&s.db, &url, &["subscribe", "live1"]).await.ok();
    s.wait_rows("live1", 2).await;
    s.wait_caught_up("live1").await;
    process.stop_ok().await;
    assert_eq!(s.count("live1").await, 2);
}

#[tokio::test]
async fn ingest_into_a_published_sink_table_is_refused() {
    let s = setup("ing_cli_loop", DsServerOptions::default()).await;
    let url = s.server.url();
    s.db.ds_sync(&["init"]).await.ok();
    s.sql
        .batch_execute("CREATE PUBLICATION everything FOR ALL TABLES")
        .await
        .unwrap();
    let run = cli(
        &s.db,
        &url,
        &["run", "--publication", "everything", "--ingest", "x"],
    )
    .await
    .expect_code(1);
    assert!(
        run.stderr.contains(
            "error: public.session_events is in the capture publication everything (FOR ALL TABLES)"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("echoed back"), "{}", run.stderr);
    assert!(
        run.stderr.contains("hint: Remove the sink table"),
        "{}",
        run.stderr
    );

    let run = cli(
        &s.db,
        &url,
        &["run", "--tables", "items,session_events", "--ingest", "x"],
    )
    .await
    .expect_code(1);
    assert!(
        run.stderr.contains("--tables names session_events"),
        "{}",
        run.stderr
    );
    let slots: i64 = s
        .sql
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "refused before capture created anything");
}

#[tokio::test]
async fn sigkill_at_random_moments_stores_every_event_exactly_once() {
    let s = setup("ing_cli_kill", DsServerOptions::default()).await;
    let url = s.server.url();
    s.ds.ensure_stream("hammer").await.unwrap();
    let seed = Rng::clock_seed();
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);

    let stop_posting = tokio_util::sync::CancellationToken::new();
    let poster = {
        let ds = s.ds.clone();
        let stop = stop_posting.clone();
        let mut rng = Rng(seed.rotate_left(17) | 1);
        tokio::spawn(async move {
            let mut next_id = 0u64;
            while !stop.is_cancelled() {
                let n = 1 + rng.below(20);
                let msgs: Vec<String> = (next_id..next_id + n)
                    .map(|id| format!(r#"{{"key":"k{id}","type":"hammer","id":{id}}}"#))
                    .collect();
                ds.append("hammer", Bytes::from(format!("[{}]", msgs.join(","))), None)
                    .await
                    .expect("POST");
                next_id += n;
                tokio::time::sleep(Duration::from_millis(rng.below(8))).await;
            }
            next_id
        })
    };
    let args = ["--no-capture", "--ingest", "hammer"];
    for round in 0..5 {
        let process = CaptureProcess::start(&s.db, &url, &args).await;
        let alive = 200 + rng.below(1500);
        tokio::time::sleep(Duration::from_millis(alive)).await;
        let stored = s.count("hammer").await;
        eprintln!("round {round}: killing after {alive} ms with {stored} rows stored");
        process.kill().await;
    }
    stop_posting.cancel();
    let total = poster.await.unwrap();
    let process = CaptureProcess::start(&s.db, &url, &args).await;
    // The last kill may have come after every event was stored: then the counts below hold
    // at once, and a SIGTERM before ds-sync installed its handlers would end it by signal.
    process.wait_log("ingest running").await;
    let sql = &s.sql;
    wait_until(&format!("all {total} events"), PATIENCE * 4, || async {
        let c: i64 = sql
            .query_one("SELECT count(*) FROM session_events", &[])
            .await
            .ok()?
            .get(0);
        (c >= total as i64).then_some(())
    })
    .await;
    s.wait_caught_up("hammer").await;
    process.stop_ok().await;
    let row = s
        .sql
        .query_one(
            "SELECT count(*), count(DISTINCT (payload->>'id')::bigint), \
                    min((payload->>'id')::bigint), max((payload->>'id')::bigint) \
             FROM session_events WHERE stream_name = 'hammer'",
            &[],
        )
        .await
        .unwrap();
    let (count, distinct, min, max): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        (count, distinct, min, max),
        (total as i64, total as i64, 0, total as i64 - 1),
        "seed {seed}"
    );
    // Offsets only grow with the stream order of the events.
    let regressions: i64 = s
        .sql
        .query_one(
            "SELECT count(*) FROM (SELECT ds_offset COLLATE \"C\" < lag(ds_offset COLLATE \"C\") \
                 OVER (ORDER BY (payload->>'id')::bigint) AS back FROM session_events) t WHERE back",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(regressions, 0, "seed {seed}");
}

#[tokio::test]
async fn ingest_limits_that_cannot_hold_a_message_are_refused_at_start() {
    let s = setup("ing_cli_limits", DsServerOptions::default()).await;
    let url = s.server.url();
    let run = cli(
        &s.db,
        &url,
        &[
            "run",
            "--no-capture",
            "--ingest",
            "x",
            "--ingest-max-buffer-bytes",
            "1000000",
        ],
    )
    .await
    .expect_code(1);
    assert!(
        run.stderr.contains("error: invalid ingest options: --ingest-max-buffer-bytes 1000000 cannot hold one message of --ingest-max-event-bytes 16777216"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hint: Raise --ingest-max-buffer-bytes"),
        "{}",
        run.stderr
    );
    let run = run_ds_sync(
        &["run", "--no-capture", "--ingest", "x"],
        &[
            ("POSTGRES_URL", s.db.url.as_str()),
            ("DS_SERVER_URL", url.as_str()),
            ("DS_SYNC_INGEST_IDLE_TIMEOUT", "soon"),
        ],
    )
    .await
    .expect_code(2);
    assert!(
        run.stderr.contains("\"soon\" is not a duration"),
        "{}",
        run.stderr
    );
}

/// `run` with both directions, started while PostgreSQL is down, waits for it (a line per
/// attempt) and then captures and ingests. It used to exit with code 1 at its first start-up
/// check (`bench chaos` found it: a start whose connection to PostgreSQL was cut).
#[tokio::test]
async fn run_started_while_postgres_is_down_waits_for_it() {
    let server = ds_sync::embedded::DsServer::start(DsServerOptions::default())
        .await
        .unwrap();
    let (mut pg, db) = crate::kit::own_cluster_db("run_pg_down").await;
    db.client()
        .await
        .batch_execute("CREATE TABLE items (id BIGINT PRIMARY KEY, title TEXT)")
        .await
        .unwrap();
    pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let args = ["--tables", "items", "--ingest", "inbox"];
    let process = CaptureProcess::start(&db, &server.url(), &args).await;
    process.wait_log("cannot reach PostgreSQL at start").await;
    assert_eq!(process.try_exit(), None, "{}", process.log());
    let _pg = tokio::task::spawn_blocking(move || {
        pg.start_again().expect("the cluster starts again");
        pg
    })
    .await
    .unwrap();
    let s = crate::kit::ingest::Setup::from_parts(db, server).await;
    s.ds.ensure_stream("inbox").await.unwrap();
    s.post("inbox", r#"[{"key":"e1"}]"#).await;
    s.sql
        .batch_execute("INSERT INTO items VALUES (1, 'one')")
        .await
        .unwrap();
    s.wait_rows("inbox", 1).await;
    // The row comes by the initial snapshot or by streaming, whichever the slot's creation
    // put it in; between the snapshot's controls (key -1) either way.
    wait_until("row 1 in pg-items", PATIENCE, || async {
        let keys = crate::kit::stream_keys(&s.ds, "pg-items").await;
        let rows: Vec<i64> = keys.into_iter().filter(|k| *k != -1).collect();
        assert!(rows.len() <= 1, "{rows:?}");
        (rows == [1]).then_some(())
    })
    .await;
    assert_eq!(process.try_exit(), None, "{}", process.log());
    process.stop_ok().await;
}
