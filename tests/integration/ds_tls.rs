//! HTTPS to the DS server: the embedded `durable-streams-server` serving TLS and mutual TLS
//! with certificates made by the test. Capture and ingest over HTTPS with a private CA and a
//! client certificate; a certificate of another CA, and a missing client certificate,
//! refused with the problem named.

use std::time::Duration;

use serde_json::json;

use ds_sync::ds::{ClientOptions, DsAccess, DsClient, DsError, DsTls};
use ds_sync::embedded::{DsServer, DsServerOptions, DsServerTls};

use crate::kit::tls::Pki;
use crate::kit::{CaptureProcess, own_cluster_db, run_ds_sync, wait_until};

async fn https_server(pki: &Pki, mutual: bool) -> DsServer {
    let server = DsServer::start(DsServerOptions {
        tls: Some(DsServerTls {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: mutual.then(|| pki.ca_file.clone()),
        }),
        ..DsServerOptions::default()
    })
    .await
    .expect("HTTPS DS server");
    assert!(
        server.url().starts_with("https://127.0.0.1:"),
        "{}",
        server.url()
    );
    server
}

fn client(server: &DsServer, tls: DsTls) -> DsClient {
    let access = DsAccess::new(tls, None, &[]).unwrap();
    let opts = ClientOptions {
        request_timeout: Duration::from_secs(5),
        access,
        ..ClientOptions::default()
    };
    DsClient::new(&server.url(), opts).unwrap()
}

#[tokio::test]
async fn the_client_speaks_the_protocol_over_https_with_a_private_ca() {
    let pki = Pki::new(&["127.0.0.1"]);
    let server = https_server(&pki, false).await;
    let ds = client(
        &server,
        DsTls {
            ca_file: Some(pki.ca_file.clone()),
            ..DsTls::default()
        },
    );
    ds.ensure_stream("https/a").await.unwrap();
    ds.append("https/a", json!([{"n": 1}]).to_string().into(), None)
        .await
        .unwrap();
    assert!(ds.head("https/a").await.unwrap().is_some(), "HEAD");
    assert_eq!(ds.read_all("https/a").await.unwrap(), [json!({"n": 1})]);
    let mut sse = ds.subscribe("https/a", "-1").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), sse.next())
        .await
        .expect("an SSE event over HTTPS");
    assert!(
        matches!(first, Some(Ok(_))),
        "SSE over HTTPS delivers events: {first:?}"
    );
}

#[tokio::test]
async fn a_server_certificate_of_another_ca_is_refused_with_the_problem_named() {
    let pki = Pki::new(&["127.0.0.1"]);
    let server = https_server(&pki, false).await;
    for (what, tls) in [
        (
            "another CA",
            DsTls {
                ca_file: Some(pki.other_ca_file.clone()),
                ..DsTls::default()
            },
        ),
        ("the system's trust store", DsTls::default()),
    ] {
        let err = client(&server, tls).head("x").await.expect_err(what);
        assert!(matches!(err, DsError::Tls { .. }), "{what}: {err:?}");
        assert!(
            err.to_string()
                .contains("not signed by a trusted certificate authority"),
            "{what}: {err}"
        );
        assert!(!err.is_transient(), "{what}: retrying cannot help");
        assert!(err.hint().unwrap().contains("--ds-ca-file"), "{what}");
    }

    // ds-sync run stops with that error and the hint.
    let (_pg, db) = own_cluster_db("ds_tls_wrong_ca").await;
    db.client()
        .await
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    let other = pki.path(&pki.other_ca_file);
    let run = run_ds_sync(
        &[
            "run",
            "--tables",
            "items",
            "--slot",
            &db.slot("cap"),
            "--publication",
            "cap_pub",
            "--ds-ca-file",
            &other,
        ],
        &[("POSTGRES_URL", &db.url), ("DS_SERVER_URL", &server.url())],
    )
    .await
    .expect_code(1);
    assert!(
        run.stderr
            .contains("not signed by a trusted certificate authority"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hint: Give --ds-ca-file"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new(&["127.0.0.1"]);
    let server = https_server(&pki, true).await;
    let ca = Some(pki.ca_file.clone());
    let without = client(
        &server,
        DsTls {
            ca_file: ca.clone(),
            ..DsTls::default()
        },
    );
    let err = without.head("x").await.expect_err("no client certificate");
    assert!(matches!(err, DsError::Tls { .. }), "{err:?}");
    assert!(
        err.to_string().contains("refused the client certificate"),
        "{err}"
    );
    let (cert, key) = pki.client("ds-sync");
    let with = client(
        &server,
        DsTls {
            ca_file: ca,
            client_cert: Some(cert),
            client_key: Some(key),
        },
    );
    assert_eq!(
        with.head("x").await.unwrap(),
        None,
        "404: reached the server"
    );
}

#[tokio::test]
async fn capture_and_ingest_run_over_mutual_tls() {
    let pki = Pki::new(&["127.0.0.1"]);
    let server = https_server(&pki, true).await;
    let (cert, key) = pki.client("ds-sync");
    let reader = client(
        &server,
        DsTls {
            ca_file: Some(pki.ca_file.clone()),
            client_cert: Some(cert.clone()),
            client_key: Some(key.clone()),
        },
    );
    let (_pg, db) = own_cluster_db("ds_mtls").await;
    let sql = db.client().await;
    sql.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 20)",
    )
    .await
    .unwrap();
    let (ca, cert, key) = (pki.path(&pki.ca_file), pki.path(&cert), pki.path(&key));
    let capture = CaptureProcess::start_with_env(
        &db,
        &server.url(),
        &[
            "--tables",
            "items",
            "--ingest",
            "sessions/mtls",
            "--ds-ca-file",
            &ca,
        ],
        &[
            ("DS_SYNC_DS_CLIENT_CERT", &cert),
            ("DS_SYNC_DS_CLIENT_KEY", &key),
        ],
    )
    .await;
    let ids = |messages: Vec<serde_json::Value>| -> Vec<i64> {
        messages
            .iter()
            .filter_map(|m| m["value"]["id"].as_i64())
            .collect()
    };
    wait_until(
        "20 snapshot rows over HTTPS",
        Duration::from_secs(60),
        || async { (ids(reader.read_all("pg-items").await.ok()?).len() == 20).then_some(()) },
    )
    .await;
    crate::kit::wait_streaming(&db).await;
    sql.execute("INSERT INTO items VALUES (21)", &[])
        .await
        .unwrap();
    wait_until(
        "the streamed row over HTTPS",
        Duration::from_secs(60),
        || async {
            ids(reader.read_all("pg-items").await.ok()?)
                .contains(&21)
                .then_some(())
        },
    )
    .await;
    reader.ensure_stream("sessions/mtls").await.unwrap();
    reader
        .append(
            "sessions/mtls",
            json!([{"key": "k", "type": "t"}]).to_string().into(),
            None,
        )
        .await
        .unwrap();
    wait_until(
        "the event ingested over HTTPS",
        Duration::from_secs(60),
        || async {
            let n: i64 = sql
                .query_one(
                    "SELECT count(*) FROM session_events WHERE stream_name = 'sessions/mtls'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (n == 1).then_some(())
        },
    )
    .await;
    capture.stop_ok().await;
}
