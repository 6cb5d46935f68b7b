//! Ingest when the network or PostgreSQL misbehave: a connection that goes silent without
//! closing (through the fault proxy), a control event that arrives while a commit is in
//! flight, and a PostgreSQL outage while events keep arriving. Also the fault proxy's own
//! behaviour, which other tests rely on.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use ds_sync::embedded::{DsServer, DsServerOptions};
use ds_sync::ingest::DEFAULT_MAX_EVENT_BYTES;
use ds_sync::ingest::memory::READ_HEADROOM;

use crate::kit::fault_proxy::FaultProxy;
use crate::kit::http::stream_request;
use crate::kit::ingest::{Ingest, PATIENCE, Setup};
use crate::kit::{CaptureProcess, own_cluster_db, test_db, wait_until};

/// An echo server for the proxy's own test.
async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn echo(s: &mut TcpStream, text: &[u8], within: Duration) -> Option<Vec<u8>> {
    s.write_all(text).await.ok()?;
    let mut got = vec![0u8; text.len()];
    tokio::time::timeout(within, s.read_exact(&mut got))
        .await
        .ok()?
        .ok()?;
    Some(got)
}

#[tokio::test]
async fn the_fault_proxy_relays_freezes_delays_and_cuts() {
    let proxy = FaultProxy::start(echo_server().await)
        .await
        .expect("fault proxy");
    let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(
        echo(&mut a, b"one", PATIENCE).await.as_deref(),
        Some(&b"one"[..])
    );
    proxy.freeze();
    assert_eq!(
        echo(&mut a, b"two", Duration::from_millis(300)).await,
        None,
        "a frozen connection relays nothing"
    );
    let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(
        echo(&mut b, b"new", PATIENCE).await.as_deref(),
        Some(&b"new"[..]),
        "a connection opened after the freeze flows"
    );
    proxy.resume();
    let mut late = vec![0u8; 3];
    tokio::time::timeout(PATIENCE, a.read_exact(&mut late))
        .await
        .expect("the held bytes arrive after resume")
        .unwrap();
    assert_eq!(late, b"two");
    proxy.set_delay(Duration::from_millis(200));
    let started = tokio::time::Instant::now();
    echo(&mut a, b"slow", PATIENCE).await.expect("delayed echo");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "delayed both ways"
    );
    proxy.set_delay(Duration::ZERO);
    proxy.partition();
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(echo(&mut c, b"p", Duration::from_millis(300)).await, None);
    proxy.heal();
    proxy.cut();
    let mut buf = [0u8; 8];
    let after_cut = tokio::time::timeout(PATIENCE, a.read(&mut buf))
        .await
        .expect("a cut is noticed at once");
    assert!(
        matches!(after_cut, Ok(0) | Err(_)),
        "the connection ended: {after_cut:?}"
    );
    assert_eq!(proxy.accepted(), 3);
}

/// A TCP path that stops relaying without closing (no FIN, no RST) must not leave the
/// subscription "streaming" forever: after the idle timeout it reconnects, and an event
/// posted meanwhile is ingested exactly once.
#[tokio::test]
async fn a_silent_connection_is_reopened_and_the_event_lands_once() {
    let server = DsServer::start(DsServerOptions::default()).await.unwrap();
    let proxy = FaultProxy::for_url(&server.url())
        .await
        .expect("fault proxy");
    let db = test_db("ing_idle").await;
    let s = Setup::from_parts(db, server).await;
    s.ds.ensure_stream("quiet").await.unwrap();
    let process = CaptureProcess::start(
        &s.db,
        &proxy.url(),
        &[
            "--no-capture",
            "--ingest",
            "quiet",
            "--ingest-idle-timeout",
            "1500ms",
        ],
    )
    .await;
    s.wait_status("quiet", "streaming").await;
    s.post("quiet", r#"[{"key":"before"}]"#).await;
    s.wait_rows("quiet", 1).await;
    let connections = proxy.accepted();
    proxy.freeze();
    s.post("quiet", r#"[{"key":"during"}]"#).await;
    s.wait_rows("quiet", 2).await;
    s.wait_caught_up("quiet").await;
    assert!(
        proxy.accepted() > connections,
        "the event came over a new connection"
    );
    let log = process.stop_ok().await;
    assert!(
        log.contains("no byte (data, control or keepalive) for 1.5s"),
        "the log says why it reconnected:\n{log}"
    );
    assert_eq!(
        s.event_keys("quiet").await,
        [Some("before".to_owned()), Some("during".to_owned())]
    );
}

/// Waits until a backend of the test database waits for a lock (the writer, blocked).
async fn wait_lock_waiter(s: &Setup) {
    wait_until(
        "the ingest commit to wait for the lock",
        PATIENCE,
        || async {
            let n: i64 = s
                .sql
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name LIKE 'ds-sync%' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (n > 0).then_some(())
        },
    )
    .await;
}

/// A control event that arrives while a commit is in flight and moves nothing still counts:
/// here the server's `streamClosed`, sent while the commit of the last event waits for a
/// lock. When the commit lands the subscription is closed at once; before, the flag was
/// dropped and only another request found the stream closed. (The `upToDate` flag is kept
/// the same way; this server sends it on every control, so only the unit tests of the
/// ledger can show it kept.)
#[tokio::test]
async fn a_control_during_a_commit_keeps_its_flags() {
    let server = DsServer::start(DsServerOptions::default()).await.unwrap();
    let proxy = FaultProxy::for_url(&server.url())
        .await
        .expect("fault proxy");
    let s = Setup::from_parts(test_db("ing_flags").await, server).await;
    s.ds.ensure_stream("flags").await.unwrap();
    let ingest = Ingest::start(&s.db, &proxy.url(), &["flags"], DEFAULT_MAX_EVENT_BYTES).await;
    s.post("flags", r#"[{"key":"first"}]"#).await;
    s.wait_rows("flags", 1).await;
    s.wait_caught_up("flags").await;
    let mut locker = s.db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM ds_sync.stream_offsets WHERE stream_name = 'flags' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    s.post("flags", r#"[{"key":"last"}]"#).await;
    wait_lock_waiter(&s).await;
    let status = stream_request(
        &s.server.url(),
        "POST",
        "flags",
        &[
            ("Content-Type", "application/json"),
            ("Stream-Closed", "true"),
        ],
        b"",
    )
    .await;
    assert!(status == 204 || status == 200, "closing: {status}");
    // The server sends the closing control (same offset, streamClosed) while the commit
    // waits; it is in ingest's socket once the proxy relayed it.
    wait_until("the closing control to be relayed", PATIENCE, || async {
        (proxy.sent_by_target(br#""streamClosed":true"#) > 0).then_some(())
    })
    .await;
    let requests = proxy.sent_by_clients(b"GET /v1/stream/flags");
    lock.commit().await.unwrap();
    s.wait_status("flags", "closed").await;
    s.wait_caught_up("flags").await;
    assert_eq!(s.count("flags").await, 2);
    assert_eq!(
        proxy.sent_by_clients(b"GET /v1/stream/flags"),
        requests,
        "the close was taken from the control that came during the commit, not from a \
         request after it"
    );
    ingest.stop().await;
}

/// PostgreSQL goes away while events keep arriving: ingest holds no more than its bound
/// (it stops reading), and once the cluster is back every event is stored exactly once.
#[tokio::test]
async fn a_postgres_outage_holds_memory_to_the_bound_and_loses_nothing() {
    // About 9 MB of rows in 300 small data events arrive while PostgreSQL is down.
    postgres_outage("ing_outage", 300, 100).await;
}

/// The same with data events of a thousand messages: what the stream held when the commit
/// failed must not stay counted against it, or the catch-up read after the outage waits
/// for room forever.
#[tokio::test]
async fn a_postgres_outage_with_large_events_resumes_and_loses_nothing() {
    postgres_outage("ing_outage_large", 90, 1000).await;
}

/// PostgreSQL stops after 100 rows; `posts` data events of `per_post` messages each arrive
/// while it is down, more than the bound; then it starts again.
async fn postgres_outage(name: &str, posts: usize, per_post: usize) {
    const BOUND: usize = 8 << 20;
    const MAX_EVENT: usize = 64 << 10;
    let server = DsServer::start(DsServerOptions::default()).await.unwrap();
    let (mut pg, db) = own_cluster_db(name).await;
    let s = Setup::from_parts(db, server).await;
    s.ds.ensure_stream("outage").await.unwrap();
    let ingest = Ingest::start_with(&s.db, &s.server.url(), &["outage"], MAX_EVENT, |cfg| {
        cfg.max_buffer_bytes = BOUND;
    })
    .await;
    let post = |from: usize, n: usize| {
        let msgs: Vec<String> = (from..from + n)
            .map(|i| format!(r#"{{"key":"k{i}","i":{i},"pad":"{}"}}"#, "p".repeat(100)))
            .collect();
        format!("[{}]", msgs.join(","))
    };
    s.post("outage", &post(0, 100)).await;
    s.wait_rows("outage", 100).await;
    pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let mut next = 100;
    for _ in 0..posts {
        s.post("outage", &post(next, per_post)).await;
        next += per_post;
    }
    pg = tokio::task::spawn_blocking(move || {
        pg.start_again().expect("the cluster starts again");
        pg
    })
    .await
    .unwrap();
    let sql = s.db.client().await;
    wait_until(
        &format!("{next} rows after the outage"),
        PATIENCE * 4,
        || async {
            let n: i64 = sql
                .query_one(
                    "SELECT count(*) FROM session_events WHERE stream_name = 'outage'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            assert!(n <= next as i64, "{n} rows, more than {next}");
            (n == next as i64).then_some(())
        },
    )
    .await;
    let s = Setup { sql, ..s };
    s.wait_caught_up("outage").await;
    s.expect_exactly_once("outage", "i", next as i64).await;
    let limits = ds_sync::ingest::MemoryLimits::new(BOUND, MAX_EVENT).unwrap();
    wait_until("the memory figures to be recorded", PATIENCE, || async {
        (s.peak_buffered("outage").await > 0).then_some(())
    })
    .await;
    let peak = s.peak_buffered("outage").await as usize;
    assert!(
        peak <= limits.per_stream,
        "held {peak} bytes, over the stream's bound of {}",
        limits.per_stream
    );
    assert!(
        peak + READ_HEADROOM >= limits.per_stream,
        "the outage filled the buffer up to where reading stops (peak {peak} bytes), so the \
         bound was what held it"
    );
    ingest.stop().await;
    drop(pg);
}
