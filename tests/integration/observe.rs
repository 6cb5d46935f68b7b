//! Metrics and health: `/metrics` parsed strictly and checked against the work done,
//! `/readyz` following the DS server, and `ds-sync health`'s exit codes.

use std::future::Future;
use std::time::{Duration, Instant};

use ds_sync::embedded::DsServerOptions;

use crate::kit::prom::Scrape;
use crate::kit::{self, CaptureProcess, Wait, run_ds_sync, scenario, wait_streaming, wait_until};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, title text);\
                     INSERT INTO items VALUES (1, 'a'), (2, 'b');";

/// GET `url` with an `Accept` header: status, content type, body.
async fn get(url: &str, accept: &str) -> (u16, String, String) {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let req = hyper::Request::get(url)
        .header("accept", accept)
        .body(Empty::new())
        .unwrap();
    let res = client
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn scrape(addr: &str) -> Scrape {
    scrape_text(addr).await.0
}

/// One scrape, parsed, and its text.
async fn scrape_text(addr: &str) -> (Scrape, String) {
    let (status, content_type, body) = get(&format!("http://{addr}/metrics"), "*/*").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let scrape = Scrape::parse(&body)
        .unwrap_or_else(|e| panic!("/metrics is not valid text format: {e}\n{body}"));
    (scrape, body)
}

/// Scrapes until `check` holds, then returns that scrape (panics with the last body).
#[track_caller]
fn scrape_until<'a>(
    addr: &'a str,
    what: &str,
    check: impl Fn(&Scrape) -> bool + 'a,
) -> impl Future<Output = Scrape> + 'a {
    let wait = Wait::new(format!("{what} in /metrics"), Duration::from_secs(60))
        .every(Duration::from_millis(200));
    async move {
        wait.until(|| async {
            let (scrape, body) = scrape_text(addr).await;
            if check(&scrape) {
                Ok(scrape)
            } else {
                Err(format!("/metrics:\n{body}"))
            }
        })
        .await
    }
}

fn lsn_number(text: &str) -> f64 {
    let (hi, lo) = text.split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32 | u64::from_str_radix(lo, 16).unwrap()) as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_the_work_capture_and_ingest_did() {
    let sc = scenario("obs_metrics", ITEMS, DsServerOptions::default()).await;
    sc.client.ensure_stream("events").await.unwrap();
    let p = CaptureProcess::start(
        &sc.db,
        &sc.server.url(),
        &[
            "--tables",
            "items",
            "--listen",
            "127.0.0.1:0",
            "--ingest",
            "events",
        ],
    )
    .await;
    wait_streaming(&sc.db).await;
    let addr = p.listen_addr().await;
    let slot = sc.db.slot("cap");

    let s = scrape_until(&addr, "the snapshot's two rows", |s| {
        s.value("ds_sync_snapshot_rows_total", &[("kind", "initial")]) == Some(2.0)
    })
    .await;
    let tables = s.value("ds_sync_snapshot_tables", &[]).unwrap();
    assert!(tables >= 1.0);
    assert_eq!(s.value("ds_sync_snapshot_tables_done", &[]), Some(tables));
    assert_eq!(s.value("ds_sync_snapshot_running", &[]), Some(0.0));
    assert_eq!(
        s.value("ds_sync_capture_buffer_limit_bytes", &[]),
        Some(8388608.0)
    );

    for statement in [
        "INSERT INTO items VALUES (3, 'c'), (4, 'd'), (5, 'e')",
        "UPDATE items SET title = 'z' WHERE id IN (1, 2)",
        "DELETE FROM items WHERE id = 5",
    ] {
        sc.sql.batch_execute(statement).await.unwrap();
    }
    let row = sc
        .sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap();
    let after = lsn_number(&row.get::<_, String>(0));

    let s = scrape_until(&addr, "every change acknowledged", |s| {
        s.value("ds_sync_capture_acknowledged_lsn_bytes", &[])
            .unwrap_or(0.0)
            >= after
            && s.value("ds_sync_capture_buffered_bytes", &[]) == Some(0.0)
    })
    .await;
    let changes = |op| {
        s.value(
            "ds_sync_capture_changes_total",
            &[("table", "items"), ("op", op)],
        )
    };
    assert_eq!(changes("insert"), Some(3.0));
    assert_eq!(changes("update"), Some(2.0));
    assert_eq!(changes("delete"), Some(1.0));
    let received = s.value("ds_sync_capture_received_lsn_bytes", &[]).unwrap();
    assert!(received >= after, "received {received} < {after}");
    // Everything in the stream was written by a counted POST: snapshot-start, 2 rows,
    // snapshot-end, then 6 changes.
    let in_stream = sc.client.read_all("pg-items").await.unwrap().len() as f64;
    assert_eq!(in_stream, 10.0);
    assert_eq!(
        s.value("ds_sync_capture_batch_messages_sum", &[]),
        Some(in_stream)
    );
    let written = s
        .value("ds_sync_capture_posts_total", &[("outcome", "written")])
        .unwrap();
    assert_eq!(
        s.value("ds_sync_capture_batch_messages_count", &[]),
        Some(written)
    );
    assert!(s.value("ds_sync_capture_batch_bytes_sum", &[]).unwrap() > in_stream * 10.0);
    // Three transactions carried changes; each one's latency was observed once.
    assert_eq!(
        s.value("ds_sync_capture_commit_to_ack_seconds_count", &[]),
        Some(3.0)
    );
    assert!(s.value("ds_sync_capture_transactions_total", &[]).unwrap() >= 3.0);

    let s = scrape_until(&addr, "the slot's confirmed position", |s| {
        s.value("ds_sync_slot_confirmed_lsn_bytes", &[("slot", &slot)])
            .unwrap_or(0.0)
            >= after
    })
    .await;
    assert_eq!(
        s.value(
            "ds_sync_slot_wal_status",
            &[("slot", &slot), ("status", "reserved")]
        ),
        Some(1.0)
    );
    assert_eq!(
        s.value(
            "ds_sync_slot_wal_status",
            &[("slot", &slot), ("status", "lost")]
        ),
        Some(0.0)
    );
    assert_eq!(
        s.value("ds_sync_slot_active", &[("slot", &slot)]),
        Some(1.0)
    );
    assert!(
        s.value("ds_sync_slot_lag_bytes", &[("slot", &slot)])
            .unwrap()
            >= 0.0
    );
    assert!(
        s.value("ds_sync_slot_retained_wal_bytes", &[("slot", &slot)])
            .unwrap()
            >= 0.0
    );

    // Ingest: two rows and one message jsonb refuses (a dead letter).
    let events = sc.client.stream_url("events");
    let json = [("content-type", "application/json")];
    for body in [
        &br#"[{"key":"a","type":"t"},{"key":"b","type":"t"}]"#[..],
        &br#"[{"key":"c","v":"\u0000"}]"#[..],
    ] {
        let (status, _) = kit::http(hyper::Method::POST, &events, &json, body).await;
        assert!(status.is_success(), "POST to events: {status}");
    }
    let s = scrape_until(&addr, "the ingested rows and the dead letter", |s| {
        s.value("ds_sync_ingest_rows_total", &[("stream", "events")]) == Some(2.0)
            && s.value("ds_sync_ingest_dead_letters_total", &[("stream", "events")]) == Some(1.0)
    })
    .await;
    let stored: i64 = sc
        .sql
        .query_one(
            "SELECT count(*) FROM session_events WHERE stream_name = 'events'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 2);
    assert!(
        s.value("ds_sync_ingest_events_total", &[("stream", "events")])
            .unwrap()
            >= 1.0
    );
    assert!(s.value("ds_sync_ingest_transactions_total", &[]).unwrap() >= 1.0);
    assert_eq!(
        s.value(
            "ds_sync_ingest_stream_status",
            &[("stream", "events"), ("status", "streaming")]
        ),
        Some(1.0)
    );
    let s = scrape_until(&addr, "ingest caught up with the tail", |s| {
        s.value("ds_sync_ingest_caught_up", &[("stream", "events")]) == Some(1.0)
    })
    .await;
    assert_eq!(
        s.value("ds_sync_ingest_lag_seconds", &[("stream", "events")]),
        Some(0.0)
    );
    assert_eq!(s.value("ds_sync_ds_server_up", &[]), Some(1.0));

    let (status, _, body) = get(&format!("http://{addr}/livez"), "*/*").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = get(&format!("http://{addr}/readyz"), "*/*").await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["capture"]["state"], "streaming");
    assert_eq!(report["ingest"]["state"], "running");
    let (_, content_type, body) = get(
        &format!("http://{addr}/metrics"),
        "application/openmetrics-text;version=1.0.0",
    )
    .await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(body.trim_end().ends_with("# EOF"));
    p.stop_ok().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_the_ds_server_and_health_exits_accordingly() {
    let mut sc = scenario("obs_ready", ITEMS, DsServerOptions::default()).await;
    let p = CaptureProcess::start(
        &sc.db,
        &sc.server.url(),
        &["--tables", "items", "--listen", "127.0.0.1:0"],
    )
    .await;
    let addr = p.listen_addr().await;
    let readyz = format!("http://{addr}/readyz");
    let base = format!("http://{addr}");
    let ready = |want: u16| {
        let readyz = readyz.clone();
        async move {
            let (status, _, body) = get(&readyz, "*/*").await;
            (status == want).then_some(body)
        }
    };
    wait_until("/readyz to answer 200", Duration::from_secs(60), || {
        ready(200)
    })
    .await;
    let ok = run_ds_sync(&["health", "--url", &base], &[]).await.ok();
    assert!(ok.stdout.contains("ready"), "{ok:?}");
    run_ds_sync(&["health"], &[("DS_SYNC_LISTEN", addr.as_str())])
        .await
        .ok();

    sc.server.stop().await;
    let stopped = Instant::now();
    let body = wait_until("/readyz to answer 503", Duration::from_secs(20), || {
        ready(503)
    })
    .await;
    assert!(
        stopped.elapsed() <= Duration::from_secs(15),
        "503 only after {:?}",
        stopped.elapsed()
    );
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], false);
    assert_eq!(report["ds_server"]["ready"], false, "{body}");
    assert_eq!(report["capture"]["ready"], true, "{body}");
    let down = run_ds_sync(&["health", "--url", &base], &[])
        .await
        .expect_code(1);
    assert!(
        down.stderr.contains("not ready: ds_server: not answering"),
        "{}",
        down.stderr
    );
    let s = scrape(&addr).await;
    assert_eq!(s.value("ds_sync_ds_server_up", &[]), Some(0.0));

    sc.server.start_again().await.unwrap();
    let back = Instant::now();
    wait_until(
        "/readyz to answer 200 again",
        Duration::from_secs(20),
        || ready(200),
    )
    .await;
    assert!(
        back.elapsed() <= Duration::from_secs(15),
        "200 only after {:?}",
        back.elapsed()
    );
    run_ds_sync(&["health", "--url", &base], &[]).await.ok();
    p.stop_ok().await;
}

#[tokio::test]
async fn health_without_a_running_ds_sync_fails_with_the_reason() {
    let down = run_ds_sync(&["health", "--url", "http://127.0.0.1:1"], &[])
        .await
        .expect_code(1);
    assert!(
        down.stderr
            .contains("not ready: cannot reach http://127.0.0.1:1/readyz"),
        "{}",
        down.stderr
    );
    let unset = run_ds_sync(&["health"], &[]).await.expect_code(1);
    assert!(unset.stderr.contains("--listen"), "{}", unset.stderr);
}

#[tokio::test]
async fn listening_on_a_taken_address_is_an_error() {
    let db = kit::test_db("obs_bind").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = run_ds_sync(
        &["run", "--no-capture", "--listen", &addr],
        &[("POSTGRES_URL", db.url.as_str())],
    )
    .await
    .expect_code(1);
    assert!(
        run.stderr.contains(&format!("cannot listen on {addr}")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint:"), "{}", run.stderr);
}

#[tokio::test]
async fn config_show_names_the_listen_address_and_its_source() {
    let run = run_ds_sync(
        &["config", "show", "--output", "json"],
        &[("DS_SYNC_LISTEN", "0.0.0.0:9464")],
    )
    .await
    .ok();
    let show = run.json();
    assert_eq!(show["listen"]["value"], "0.0.0.0:9464", "{show}");
    assert_eq!(show["listen"]["source"], "env");
    let run = run_ds_sync(&["config", "show", "--output", "json"], &[])
        .await
        .ok();
    let show = run.json();
    assert_eq!(show["listen"]["value"], serde_json::Value::Null, "{show}");
    assert_eq!(show["listen"]["source"], "unset");
    let table = run_ds_sync(&["config", "show"], &[]).await.ok();
    assert!(table.stdout.contains("listen"), "{}", table.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_says_standby_while_another_process_holds_the_slot() {
    let sc = scenario("obs_slot", ITEMS, DsServerOptions::default()).await;
    let first = CaptureProcess::start(&sc.db, &sc.server.url(), &["--tables", "items"]).await;
    wait_streaming(&sc.db).await;
    let second = CaptureProcess::start(
        &sc.db,
        &sc.server.url(),
        &["--tables", "items", "--listen", "127.0.0.1:0"],
    )
    .await;
    let readyz = format!("http://{}/readyz", second.listen_addr().await);
    let standby = wait_until(
        "/readyz to say standby and name the lock's holder",
        Duration::from_secs(60),
        || async {
            let (status, _, body) = get(&readyz, "*/*").await;
            (body.contains("\"standby\"") && body.contains("\"ds_server\":{\"ready\":true"))
                .then_some((status, body))
        },
    )
    .await;
    let (status, body) = standby;
    assert_eq!(status, 200, "a standby is ready: {body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["capture"]["state"], "standby", "{body}");
    let reason = report["capture"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("holds the lock of slot"), "{body}");
    let metrics = format!("http://{}/metrics", second.listen_addr().await);
    let (_, _, text) = get(&metrics, "*/*").await;
    assert!(text.contains("ds_sync_capture_standby 1"), "{text}");
    first.stop_ok().await;
    wait_until(
        "/readyz to say streaming once the first process stopped",
        Duration::from_secs(60),
        || async {
            let (status, _, body) = get(&readyz, "*/*").await;
            (status == 200 && body.contains("\"streaming\"")).then_some(())
        },
    )
    .await;
    second.stop_ok().await;
}

#[test]
fn the_strict_parser_refuses_malformed_scrapes() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\\\"q\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    let s = Scrape::parse(good).unwrap();
    assert_eq!(s.value("a_total", &[("x", "1\"q")]), Some(3.0));
    for bad in [
        "a 1\n",                                 // no TYPE
        "# TYPE a counter\na 1\n",               // counter without _total
        "# TYPE a gauge\na{x=1} 1\n",            // unquoted label
        "# TYPE a gauge\na 1 2 3\n",             // trailing text
        "# TYPE a gauge\n# TYPE b gauge\na 1\n", // sample outside its family
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# TYPE a gauge\na one\n",
        "# random comment\n",
    ] {
        assert!(Scrape::parse(bad).is_err(), "accepted: {bad:?}");
    }
}
