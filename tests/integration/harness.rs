//! The test kit itself: its servers are real (the cluster does logical decoding, the DS
//! server speaks the protocol and survives a stop/start with its data), and its waits fail
//! saying what they awaited, where, and what they saw.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use ds_sync::embedded::{DsServer, DsServerOptions};

use crate::kit::{Wait, http, test_db, wait_until};

async fn call(method: Method, url: &str, body: &str) -> (StatusCode, String) {
    let (status, body) = http(
        method,
        url,
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_embedded_ds_server_speaks_the_protocol_and_keeps_data_across_a_restart() {
    let mut ds = DsServer::start(DsServerOptions::default()).await.unwrap();
    let url = ds.stream_url("harness/check");
    assert_eq!(call(Method::PUT, &url, "").await.0, StatusCode::CREATED);
    assert_eq!(
        call(Method::PUT, &url, "").await.0,
        StatusCode::OK,
        "PUT is an idempotent ensure"
    );
    assert_eq!(
        call(Method::POST, &url, r#"[{"a":1},{"b":2}]"#).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(Method::POST, &url, "[]").await.0,
        StatusCode::BAD_REQUEST
    );

    ds.stop().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let down = client
        .get(format!("{url}?offset=-1").parse().unwrap())
        .await;
    assert!(down.is_err(), "a stopped server refuses connections");

    ds.start_again().await.unwrap();
    let (status, body) = call(Method::GET, &format!("{url}?offset=-1"), "").await;
    assert_eq!(status, StatusCode::OK);
    let messages: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(messages, serde_json::json!([{"a":1},{"b":2}]));
}

#[tokio::test]
async fn the_cluster_decodes_logical_replication() {
    let db = test_db("harness_logical").await;
    let client = db.client().await;
    let slot = db.slot("probe");
    client
        .batch_execute("CREATE TABLE t (id int primary key); CREATE PUBLICATION p FOR TABLE t;")
        .await
        .unwrap();
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    let changes: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', 'p') WHERE substr(data, 1, 1) = 'I'",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(changes, 2, "two inserts decoded by pgoutput");
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "postgres");
}

/// The cluster runs the PostgreSQL the run asked for: `DS_SYNC_PG_MAJOR` (set by `.ci/run`'s
/// version matrix next to `DS_SYNC_PG_BIN`) names the major version, so a matrix run that
/// silently fell back to the system's server fails here. Without it, the server must be one
/// ds-sync supports (14 or later).
#[tokio::test]
async fn the_cluster_runs_the_requested_postgresql_version() {
    let db = test_db("harness_version").await;
    let client = db.client().await;
    let major = crate::kit::server_major(&client).await;
    match std::env::var("DS_SYNC_PG_MAJOR") {
        Ok(want) => assert_eq!(
            major.to_string(),
            want,
            "DS_SYNC_PG_BIN={:?} runs PostgreSQL {major}",
            std::env::var("DS_SYNC_PG_BIN").unwrap_or_default()
        ),
        Err(_) => assert!(
            major >= 14,
            "PostgreSQL {major} is older than ds-sync supports"
        ),
    }
}

/// The scenarios' DS server is the one `DS_SYNC_TEST_DS_SERVER` names (the DS server matrix
/// in `.ci/run`), and it keeps a stream across a restart.
#[tokio::test]
async fn the_scenarios_run_on_the_requested_ds_server() {
    use crate::kit::ds_server::{Kind, TestServer};
    let mut server = TestServer::start(DsServerOptions::default()).await;
    let kind = Kind::from_env();
    assert_eq!(
        matches!(server, TestServer::Embedded(_)),
        kind == Kind::Embedded,
        "asked for {kind:?}"
    );
    let url = server.stream_url("harness-kind");
    let (status, _) = call(Method::PUT, &url, "").await;
    assert!(status.is_success(), "PUT {url}: {status}");
    let (status, _) = call(Method::POST, &url, r#"[{"a":1}]"#).await;
    assert!(status.is_success(), "POST {url}: {status}");
    server.stop().await;
    server.start_again().await.unwrap();
    let (status, body) = call(Method::GET, &format!("{url}?offset=-1"), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let messages: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        messages[0]["a"], 1,
        "the stream survived the restart: {body}"
    );
    assert_eq!(messages.as_array().map(Vec::len), Some(1), "{body}");
}

/// The message a wait panicked with.
async fn failure_of(wait: impl std::future::Future<Output = ()> + Send + 'static) -> String {
    let err = tokio::spawn(wait).await.expect_err("the wait fails");
    let payload = err.into_panic();
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .expect("a panic message")
}

#[tokio::test]
async fn a_wait_that_times_out_says_what_it_awaited_where_and_what_it_saw() {
    let probe = || async { Err::<(), _>("41 answers".to_string()) };
    let message = failure_of(wait_until("the answer", Duration::from_millis(150), probe)).await;
    for part in [
        "timed out after 150ms waiting for the answer",
        "tests/integration/harness.rs:",
        "last seen: 41 answers",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    // Option and bool probes end the wait as soon as they hold.
    let mut n = 0;
    let got = wait_until("the third poll", Duration::from_secs(5), || {
        n += 1;
        let now = n;
        async move { (now >= 3).then_some(now) }
    })
    .await;
    assert_eq!(got, 3);
    wait_until("true", Duration::from_secs(5), || async { true }).await;
}

#[tokio::test]
async fn a_stall_aware_wait_fails_only_when_what_it_sees_stops_changing() {
    // Progress every poll for longer than the stall timeout: the wait goes on and succeeds.
    let started = Instant::now();
    let waited = Wait::new("a slow count", Duration::from_millis(100))
        .stalled_after(Duration::from_millis(100))
        .until(|| async {
            let ms = started.elapsed().as_millis();
            if ms >= 400 {
                Ok(())
            } else {
                Err(format!("{} polls", ms / 20))
            }
        });
    waited.await;
    // No change: it fails, saying so.
    let stalled = Wait::new("a stuck count", Duration::from_millis(100))
        .stalled_after(Duration::from_millis(100))
        .until(|| async { Err::<(), _>("7 polls".to_string()) });
    let message = failure_of(stalled).await;
    assert!(
        message.contains("nothing changed for 100ms waiting for a stuck count")
            && message.contains("last seen: 7 polls"),
        "{message}"
    );
}
