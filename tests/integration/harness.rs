//! The test harness's own servers are real: the cluster does logical decoding, and the DS
//! server speaks the protocol and survives a stop/start with its data.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use ds_sync::embedded::{DsServer, DsServerOptions};

use crate::kit::{http, test_db};

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
