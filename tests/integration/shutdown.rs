//! A stop signal always stops, and backoff really waits: capture and ingest, each with
//! PostgreSQL down and with the DS server down, and capture with PostgreSQL stalled. The process must exit within a bound after
//! SIGTERM, with an exit code and a log line that say how, and its log must show retries
//! spaced by their backoff (a few lines in a few seconds), never a storm.

use std::time::{Duration, Instant};

use ds_sync::embedded::DsServerOptions;

use crate::kit::{
    CaptureProcess, Scenario, TestDb, Wait, scenario, start_streaming, test_db, wait_until,
};

/// How long the log is watched for retries while a server is down.
const WATCH: Duration = Duration::from_secs(4);

/// Retry lines that many seconds of backoff (200 ms doubling, full jitter) can produce; a
/// loop that does not wait writes thousands.
const MAX_RETRY_LINES: usize = 15;

/// Sends SIGTERM and returns the exit code and how long the process took to exit.
async fn sigterm(process: CaptureProcess, bound: Duration) -> (i32, Duration, String) {
    let started = Instant::now();
    if let Some(pid) = process.pid() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    let code = Wait::new(
        format!("ds-sync to exit within {bound:?} of SIGTERM"),
        bound,
    )
    .every(Duration::from_millis(20))
    .context(|| {
        let log = process.log();
        format!(
            "{} log lines; the last ones:\n{}",
            log.lines().count(),
            process.log_tail(20)
        )
    })
    .until(|| async { process.try_exit() })
    .await;
    (code, started.elapsed(), process.log())
}

/// Counts `needle` in the log over [`WATCH`] and checks it stays a handful.
async fn watch_retries(process: &CaptureProcess, needle: &str) {
    let before = process.log_count(needle);
    tokio::time::sleep(WATCH).await;
    let during = process.log_count(needle) - before;
    assert!(
        during <= MAX_RETRY_LINES,
        "{during} {needle:?} lines in {WATCH:?}: the backoff is not waited"
    );
}

fn stopped_pg(pg: &mut ds_sync::embedded::LocalPostgres) {
    tokio::task::block_in_place(|| pg.stop());
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_with_postgres_down_waits_its_backoff_and_stops_at_once() {
    let Scenario {
        server,
        db,
        sql,
        mut pg,
        ..
    } = scenario(
        "stop_cap_pg",
        "CREATE TABLE s (id int PRIMARY KEY)",
        DsServerOptions::default(),
    )
    .await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "s"]).await;
    drop(sql);
    stopped_pg(&mut pg);
    capture.wait_log("capture interrupted").await;
    watch_retries(&capture, "capture interrupted").await;
    let (code, took, log) = sigterm(capture, Duration::from_secs(5)).await;
    assert_eq!(code, 0, "nothing was in flight: a graceful stop\n{log}");
    assert!(
        log.contains("stopped while reconnecting"),
        "the log says how it stopped:\n{log}"
    );
    let total = log.matches("capture interrupted").count();
    assert!(total <= 2 * MAX_RETRY_LINES, "{total} retry lines in all");
    eprintln!("capture, Postgres down: exited {code} {took:?} after SIGTERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_with_the_ds_server_down_gives_up_after_the_shutdown_timeout() {
    let Scenario {
        mut server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "stop_cap_ds",
        "CREATE TABLE s (id int PRIMARY KEY)",
        DsServerOptions::default(),
    )
    .await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "s"]).await;
    // A first row makes the stream known to this source, so what follows are POST retries.
    sql.batch_execute("INSERT INTO s VALUES (0)").await.unwrap();
    wait_until("the first row", Duration::from_secs(60), || async {
        (!crate::kit::read(&client, "pg-s").await.is_empty()).then_some(())
    })
    .await;
    server.stop().await;
    sql.batch_execute("INSERT INTO s SELECT generate_series(1, 10)")
        .await
        .unwrap();
    let lsn: String = sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    capture.wait_log("delivery failed, retrying").await;
    watch_retries(&capture, "delivery failed, retrying").await;
    // The default shutdown timeout (10 s), then at most a few seconds to exit.
    let (code, took, log) = sigterm(capture, Duration::from_secs(18)).await;
    assert_eq!(code, 6, "abandoned after the shutdown timeout\n{log}");
    assert!(
        took >= Duration::from_secs(9),
        "the timeout was waited: {took:?}"
    );
    assert!(
        log.contains("the shutdown timeout of 10000 ms passed"),
        "the log says why it stopped:\n{log}"
    );
    let passed: bool = sql
        .query_one(
            "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&db.slot("cap"), &lsn],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!passed, "the slot did not move past the undelivered rows");
}

/// Every process of a cluster stopped with SIGSTOP: a stalled server, whose connections stay
/// open and never answer. The processes are continued when this drops.
struct Frozen(Vec<i32>);

impl Frozen {
    fn cluster(pg: &ds_sync::embedded::LocalPostgres) -> Frozen {
        let postmaster = pg.pid().expect("the cluster runs") as i32;
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        for pid in &pids {
            signal(*pid, nix::sys::signal::Signal::SIGSTOP);
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            signal(*pid, nix::sys::signal::Signal::SIGCONT);
        }
    }
}

fn signal(pid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

/// A stalled server answers nothing, so even the graceful stop's last step (writing the slot's
/// position) never returns: the shutdown timeout ends it, and the process exits all the same.
#[tokio::test(flavor = "multi_thread")]
async fn capture_with_postgres_stalled_still_stops_within_a_bound() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg,
    } = scenario(
        "stop_cap_stall",
        "CREATE TABLE s (id int PRIMARY KEY)",
        DsServerOptions::default(),
    )
    .await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "s"]).await;
    // The slot is held from its creation on, before the initial snapshot is sent: a stop
    // there writes nothing to Postgres. A row in the stream shows capture streams.
    sql.batch_execute("INSERT INTO s VALUES (1)").await.unwrap();
    wait_until("the row in the stream", Duration::from_secs(60), || async {
        let rows = crate::kit::materialize_by_key(&crate::kit::read(&client, "pg-s").await);
        (rows.len() == 1).then_some(())
    })
    .await;
    let frozen = Frozen::cluster(&pg);
    // The shutdown timeout (10 s), then the watchdog's 5 s at most.
    let (code, took, log) = sigterm(capture, Duration::from_secs(20)).await;
    drop(frozen);
    assert_eq!(code, 6, "abandoned after the shutdown timeout\n{log}");
    assert!(
        log.contains("the shutdown timeout of 10000 ms passed"),
        "the log says why it stopped:\n{log}"
    );
    eprintln!("capture, Postgres stalled: exited {code} {took:?} after SIGTERM");
}

/// `ds-sync run --no-capture` ingesting `stream` from `ds_url` into `db`, once the
/// subscription streams.
async fn start_ingest(db: &TestDb, ds_url: &str, stream: &str) -> CaptureProcess {
    let process = CaptureProcess::start(db, ds_url, &["--no-capture", "--ingest", stream]).await;
    let sql = db.client().await;
    Wait::new(
        format!("the subscription to {stream} to stream"),
        Duration::from_secs(30),
    )
    .while_running(&process)
    .until(|| async {
        let status = sql
            .query_opt(
                "SELECT status FROM ds_sync.subscriptions WHERE stream_name = $1",
                &[&stream],
            )
            .await
            .map_err(|e| e.to_string())?
            .map(|row| row.get::<_, String>(0));
        match status.as_deref() {
            Some("streaming") => Ok(()),
            other => Err(format!("status {other:?}")),
        }
    })
    .await;
    process
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_with_postgres_down_gives_up_after_the_shutdown_timeout() {
    let Scenario {
        server,
        client,
        db,
        sql,
        mut pg,
    } = scenario("stop_ing_pg", "SELECT 1", DsServerOptions::default()).await;
    client.ensure_stream("events").await.unwrap();
    let ingest = start_ingest(&db, &server.url(), "events").await;
    drop(sql);
    stopped_pg(&mut pg);
    client
        .append(
            "events",
            bytes::Bytes::from_static(br#"[{"key":"a"}]"#),
            None,
        )
        .await
        .unwrap();
    ingest.wait_log("ingest cannot reach PostgreSQL").await;
    watch_retries(&ingest, "ingest cannot reach PostgreSQL").await;
    let (code, took, log) = sigterm(ingest, Duration::from_secs(18)).await;
    assert_eq!(code, 6, "the event could not be stored: abandoned\n{log}");
    assert!(
        log.contains("the shutdown timeout of 10000 ms passed"),
        "the log says why it stopped:\n{log}"
    );
    eprintln!("ingest, Postgres down: exited {code} {took:?} after SIGTERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_with_the_ds_server_down_waits_its_backoff_and_stops_at_once() {
    let mut server = ds_sync::embedded::DsServer::start(DsServerOptions::default())
        .await
        .unwrap();
    let client =
        ds_sync::ds::DsClient::new(&server.url(), ds_sync::ds::ClientOptions::default()).unwrap();
    client.ensure_stream("events").await.unwrap();
    let db = test_db("stop_ing_ds").await;
    let ingest = start_ingest(&db, &server.url(), "events").await;
    server.stop().await;
    ingest.wait_log("retrying").await;
    watch_retries(&ingest, "retrying").await;
    let (code, took, log) = sigterm(ingest, Duration::from_secs(5)).await;
    assert_eq!(code, 0, "nothing was in flight: a graceful stop\n{log}");
    eprintln!("ingest, DS server down: exited {code} {took:?} after SIGTERM");
}
