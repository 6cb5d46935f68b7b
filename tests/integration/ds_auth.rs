//! DS auth: the embedded DS server (a real `durable-streams-server` router) behind a real
//! authentication gate, an axum middleware in the same process that answers 401 unless a
//! request carries `Authorization: Bearer <token>` and `X-Tenant: acme`. ds-sync with
//! `--ds-token` and `--ds-header` captures, ingests and reports through it; the token is
//! never printed.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use ds_sync::ds::{ClientOptions, DsAccess, DsClient, DsTls};
use ds_sync::embedded::{DsServer, DsServerOptions, RouterLayer};

use crate::kit::{CaptureProcess, http, own_cluster_db, run_ds_sync, wait_until};

const TOKEN: &str = "tok-4c1f9e-very-secret";

/// Methods of the requests the gate let through, and how many it refused.
#[derive(Default)]
struct Gate {
    passed: BTreeSet<String>,
    refused: usize,
}

fn gated_server_options(gate: Arc<Mutex<Gate>>) -> DsServerOptions {
    let layer: RouterLayer = Arc::new(move |router| {
        let gate = Arc::clone(&gate);
        router.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let gate = Arc::clone(&gate);
                async move { check(&gate, req, next).await }
            },
        ))
    });
    DsServerOptions {
        layer: Some(layer),
        ..DsServerOptions::default()
    }
}

fn authorized(req: &Request) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    header("authorization") == Some(&format!("Bearer {TOKEN}"))
        && header("x-tenant") == Some("acme")
}

async fn check(gate: &Mutex<Gate>, req: Request, next: Next) -> Response {
    if !authorized(&req) {
        gate.lock().unwrap().refused += 1;
        return (StatusCode::UNAUTHORIZED, "missing or wrong credentials").into_response();
    }
    gate.lock().unwrap().passed.insert(req.method().to_string());
    next.run(req).await
}

#[tokio::test]
async fn ds_sync_passes_a_real_auth_gate_and_never_prints_the_token() {
    let gate = Arc::new(Mutex::new(Gate::default()));
    let server = DsServer::start(gated_server_options(Arc::clone(&gate)))
        .await
        .unwrap();
    let stream_url = server.stream_url("sessions/auth");
    for (method, url) in [
        (hyper::Method::PUT, stream_url.clone()),
        (hyper::Method::HEAD, stream_url.clone()),
        (
            hyper::Method::GET,
            format!("{stream_url}?offset=-1&live=sse"),
        ),
    ] {
        let (status, _) = http(method.clone(), &url, &[], b"").await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} without the token"
        );
    }
    let refused_before = gate.lock().unwrap().refused;

    let (_pg, db) = own_cluster_db("ds_auth").await;
    let sql = db.client().await;
    sql.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 10)",
    )
    .await
    .unwrap();
    let access = DsAccess::new(DsTls::default(), Some(TOKEN), &["X-Tenant: acme".into()]).unwrap();
    let reader = DsClient::new(
        &server.url(),
        ClientOptions {
            access,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let capture = CaptureProcess::start_with_env(
        &db,
        &server.url(),
        &[
            "--tables",
            "items",
            "--ingest",
            "sessions/auth",
            "--ds-header",
            "X-Tenant: acme",
        ],
        &[("DS_SYNC_DS_TOKEN", TOKEN)],
    )
    .await;
    let ids = |messages: Vec<serde_json::Value>| -> usize {
        messages
            .iter()
            .filter(|m| m["value"]["id"].is_i64())
            .count()
    };
    wait_until(
        "the snapshot through the gate",
        Duration::from_secs(60),
        || async { (ids(reader.read_all("pg-items").await.ok()?) == 10).then_some(()) },
    )
    .await;
    crate::kit::wait_streaming(&db).await;
    sql.execute("INSERT INTO items VALUES (11)", &[])
        .await
        .unwrap();
    wait_until(
        "the streamed row through the gate",
        Duration::from_secs(60),
        || async { (ids(reader.read_all("pg-items").await.ok()?) == 11).then_some(()) },
    )
    .await;
    reader.ensure_stream("sessions/auth").await.unwrap();
    reader
        .append(
            "sessions/auth",
            json!([{"key": "k", "type": "t"}]).to_string().into(),
            None,
        )
        .await
        .unwrap();
    wait_until(
        "the event ingested through the gate",
        Duration::from_secs(60),
        || async {
            let n: i64 = sql
                .query_one(
                    "SELECT count(*) FROM session_events WHERE stream_name = 'sessions/auth'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (n == 1).then_some(())
        },
    )
    .await;

    // `subscriptions` asks HEAD through the gate, with the token from the environment and
    // the header from it too.
    let env = [
        ("POSTGRES_URL", db.url.as_str()),
        ("DS_SERVER_URL", &server.url()),
        ("DS_SYNC_DS_TOKEN", TOKEN),
        ("DS_SYNC_DS_HEADERS", "X-Tenant: acme"),
        ("RUST_LOG", "ds_sync=trace"),
    ];
    let subs = run_ds_sync(&["subscriptions", "--output", "json"], &env)
        .await
        .ok();
    let line = &subs.json()[0];
    assert!(line["tail"].is_string(), "HEAD passed the gate: {line}");
    let show = run_ds_sync(
        &["config", "show", "--output", "json", "--ds-token", TOKEN],
        &env,
    )
    .await
    .ok();
    assert_eq!(show.json()["ds_token"]["value"], "<redacted>");
    assert_eq!(
        show.json()["ds_headers"]["value"],
        json!(["X-Tenant: <redacted>"])
    );
    let table = run_ds_sync(&["config", "show"], &env).await.ok();
    let help = run_ds_sync(&["run", "--help"], &env).await.ok();
    let log = capture.stop_ok().await;

    let g = gate.lock().unwrap();
    for method in ["PUT", "POST", "GET", "HEAD"] {
        assert!(
            g.passed.contains(method),
            "{method} passed the gate: {:?}",
            g.passed
        );
    }
    assert_eq!(
        g.refused, refused_before,
        "ds-sync never sent a request without credentials"
    );
    for (what, text) in [
        ("capture log", log.as_str()),
        ("subscriptions", &format!("{}{}", subs.stdout, subs.stderr)),
        ("config show --output json", &show.stdout),
        ("config show", &table.stdout),
        ("--help", &help.stdout),
    ] {
        assert!(
            !text.contains(TOKEN),
            "the token shows in the {what}:\n{text}"
        );
        assert!(
            !text.contains("X-Tenant: acme"),
            "the header value shows in the {what}"
        );
    }
}

#[tokio::test]
async fn a_refused_token_stops_capture_with_a_hint() {
    let gate = Arc::new(Mutex::new(Gate::default()));
    let server = DsServer::start(gated_server_options(gate)).await.unwrap();
    let (_pg, db) = own_cluster_db("ds_auth_refused").await;
    db.client()
        .await
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    let run = run_ds_sync(
        &[
            "run",
            "--tables",
            "items",
            "--slot",
            &db.slot("cap"),
            "--publication",
            "cap_pub",
            "--ds-token",
            "not-the-token",
            "--ds-header",
            "X-Tenant: acme",
        ],
        &[("POSTGRES_URL", &db.url), ("DS_SERVER_URL", &server.url())],
    )
    .await
    .expect_code(1);
    assert!(run.stderr.contains("401"), "{}", run.stderr);
    assert!(run.stderr.contains("--ds-token"), "{}", run.stderr);
    assert!(!run.stderr.contains("not-the-token"), "{}", run.stderr);
}
