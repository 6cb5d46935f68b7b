//! TLS to PostgreSQL the libpq way, against clusters with `ssl = on` and a `hostssl`-only
//! `pg_hba.conf`: every connection kind (SQL, the exported-snapshot replication session,
//! snapshot workers, the replication stream, ingest) with `verify-full`; certificates of
//! another CA refused with the problem named; `sslmode` semantics as libpq's; client
//! certificates.

use std::time::Duration;

use serde_json::{Value, json};

use ds_sync::capture::source::{SourceConfig, connect as replication_connect};
use ds_sync::ds::{ClientOptions, DsClient};
use ds_sync::embedded::{DsServer, DsServerOptions, LocalPostgres};
use ds_sync::lsn::Lsn;
use ds_sync::pg::PgTarget;
use ds_sync::pg::replication_session::{ReplicationSession, SessionError};

use crate::kit::tls::{HBA_TLS_ONLY, Pki, create_db, tls_cluster, url};
use crate::kit::{CaptureProcess, TestDb, run_ds_sync, wait_slot_streaming, wait_until};

fn test_db(pg: &LocalPostgres, name: &str, host: &str, params: &str) -> TestDb {
    TestDb {
        name: name.to_owned(),
        url: url(pg, host, name, params),
        admin_url: url(pg, host, "postgres", params),
        port: pg.port(),
        password: pg.password().to_owned(),
    }
}

/// Waits until `stream` holds inserts of the ids `1..=n`.
async fn wait_rows(ds: &DsClient, stream: &str, n: i64) {
    wait_until(
        &format!("{n} rows in {stream}"),
        Duration::from_secs(60),
        || async {
            let messages = ds.read_all(stream).await.ok()?;
            let ids: Vec<i64> = messages
                .iter()
                .filter_map(|m| m["value"]["id"].as_i64())
                .collect();
            (1..=n).all(|i| ids.contains(&i)).then_some(())
        },
    )
    .await;
}

/// Capture (initial snapshot with two workers, then streaming) and ingest through one
/// `ds-sync run`, with `sslmode` and friends as given, against a TLS-only cluster.
async fn capture_and_ingest(
    pg: &LocalPostgres,
    sql: &tokio_postgres::Client,
    db: &TestDb,
    env: &[(&str, &str)],
) {
    sql.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, title text); \
         INSERT INTO items SELECT g, 'before ' || g FROM generate_series(1, 40) g; \
         CREATE TABLE notes (id int PRIMARY KEY); INSERT INTO notes VALUES (1);",
    )
    .await
    .unwrap();
    let server = DsServer::start(DsServerOptions::default()).await.unwrap();
    let ds = DsClient::new(&server.url(), ClientOptions::default()).unwrap();
    let capture = CaptureProcess::start_with_env(
        db,
        &server.url(),
        &[
            "--tables",
            "items,notes",
            "--snapshot-workers",
            "2",
            "--ingest",
            "sessions/tls",
        ],
        env,
    )
    .await;
    wait_rows(&ds, "pg-items", 40).await;
    wait_rows(&ds, "pg-notes", 1).await;
    wait_slot_streaming(sql, &db.slot("cap")).await;
    sql.execute("INSERT INTO items VALUES (41, 'after')", &[])
        .await
        .unwrap();
    wait_rows(&ds, "pg-items", 41).await;
    ds.ensure_stream("sessions/tls").await.unwrap();
    ds.append(
        "sessions/tls",
        json!([{"key": "e1", "type": "t"}]).to_string().into(),
        None,
    )
    .await
    .unwrap();
    wait_until(
        "the event in session_events",
        Duration::from_secs(60),
        || async {
            let n: i64 = sql
                .query_one(
                    "SELECT count(*) FROM session_events WHERE stream_name = 'sessions/tls'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (n == 1).then_some(())
        },
    )
    .await;
    let plain: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name LIKE 'ds-sync%' AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0, "every ds-sync connection uses TLS");
    let log = capture.stop_ok().await;
    assert!(!log.contains(pg.password()), "the password is never logged");
    let rows: Vec<Value> = ds.read_all("pg-items").await.unwrap();
    assert!(
        rows.iter()
            .any(|m| m["headers"]["control"] == "snapshot-end"),
        "the snapshot finished: {rows:?}"
    );
}

#[tokio::test]
async fn capture_and_ingest_run_with_verify_full() {
    let pki = Pki::new(&["localhost"]);
    let pg = tls_cluster(&pki, HBA_TLS_ONLY).await;
    create_db(&pg, "tls_full").await;
    let params = format!("sslmode=verify-full&sslrootcert={}", pki.path(&pki.ca_file));
    let db = test_db(&pg, "tls_full", "localhost", &params);
    let sql = crate::kit::tls::client(&pg, "tls_full").await;
    capture_and_ingest(&pg, &sql, &db, &[]).await;
}

#[tokio::test]
async fn client_certificates_authenticate_every_connection() {
    let pki = Pki::new(&["localhost"]);
    let pg = tls_cluster(&pki, &["hostssl all postgres 127.0.0.1/32 cert"]).await;
    let (cert, key) = pki.client("postgres");
    let (cert, key, ca) = (pki.path(&cert), pki.path(&key), pki.path(&pki.ca_file));
    let with_cert = format!("sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}");
    let admin = PgTarget::parse(&url(&pg, "localhost", "postgres", &with_cert), None).unwrap();
    admin
        .connect()
        .await
        .unwrap()
        .batch_execute("CREATE DATABASE tls_cert")
        .await
        .unwrap();

    // Without a certificate the server refuses, and says so.
    let no_cert = format!("sslmode=verify-full&sslrootcert={ca}");
    let run = run_ds_sync(
        &["slot", "list"],
        &[("POSTGRES_URL", &url(&pg, "localhost", "tls_cert", &no_cert))],
    )
    .await
    .expect_code(1);
    assert!(run.stderr.contains("certificate"), "{}", run.stderr);

    // With one, from the environment and without a password, everything works.
    let sql = PgTarget::parse(&url(&pg, "localhost", "tls_cert", &with_cert), None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let db = TestDb {
        name: "tls_cert".into(),
        url: format!("postgres://postgres@localhost:{}/tls_cert", pg.port()),
        admin_url: String::new(),
        port: pg.port(),
        password: String::new(),
    };
    let env = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", ca.as_str()),
        ("PGSSLCERT", cert.as_str()),
        ("PGSSLKEY", key.as_str()),
    ];
    capture_and_ingest(&pg, &sql, &db, &env).await;
}

#[tokio::test]
async fn a_certificate_of_another_ca_is_refused_on_every_connection_kind() {
    let pki = Pki::new(&["localhost"]);
    let pg = tls_cluster(&pki, HBA_TLS_ONLY).await;
    let good = PgTarget::parse(&url(&pg, "127.0.0.1", "postgres", "sslmode=require"), None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    good.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION other_ca_pub FOR TABLE t",
    )
    .await
    .unwrap();
    good.batch_execute("SELECT pg_create_logical_replication_slot('other_ca_slot', 'pgoutput')")
        .await
        .unwrap();
    let other = format!(
        "sslmode=verify-full&sslrootcert={}",
        pki.path(&pki.other_ca_file)
    );
    let named = "not signed by a trusted certificate authority";
    // Another CA, and the system's trust store (which does not hold the test's CA).
    for params in [other.as_str(), "sslrootcert=system"] {
        let wrong = PgTarget::parse(&url(&pg, "localhost", "postgres", params), None).unwrap();
        let e = wrong.connect().await.expect_err("SQL connection");
        assert!(e.to_string().contains(named), "{params}: {e}");
        assert!(e.hint().unwrap().contains("sslrootcert"), "{:?}", e.hint());

        let e = match ReplicationSession::connect(&wrong).await {
            Ok(_) => panic!("{params}: the replication session must refuse the certificate"),
            Err(e) => e,
        };
        assert!(matches!(e, SessionError::Tls { .. }), "{params}: {e}");
        assert!(e.to_string().contains(named), "{params}: {e}");

        let cfg = SourceConfig {
            target: wrong,
            slot: "other_ca_slot".into(),
            publication: "other_ca_pub".into(),
            tables: Vec::new(),
            insert_only: Vec::new(),
            policy: Default::default(),
            takeover: false,
            failover: false,
            protocol: Default::default(),
        };
        let e = match replication_connect(&good, &cfg, Lsn::ZERO).await {
            Ok(_) => panic!("{params}: the replication stream must refuse the certificate"),
            Err(e) => e,
        };
        assert!(e.to_string().contains("UnknownIssuer"), "{params}: {e}");
        assert!(!e.is_transient(), "a wrong CA is not retried: {e}");
    }

    let wrong_url = url(&pg, "localhost", "postgres", &other);
    let run = run_ds_sync(&["slot", "list"], &[("POSTGRES_URL", &wrong_url)])
        .await
        .expect_code(1);
    assert!(run.stderr.contains(named), "{}", run.stderr);
    assert!(run.stderr.contains("hint: sslrootcert"), "{}", run.stderr);
    assert!(!run.stderr.contains(pg.password()), "{}", run.stderr);
}

#[tokio::test]
async fn sslmode_behaves_as_in_libpq() {
    // The server's certificate names localhost only, and hba takes TLS only.
    let pki = Pki::new(&["localhost"]);
    let pg = tls_cluster(&pki, HBA_TLS_ONLY).await;
    let ca = pki.path(&pki.ca_file);
    let other = pki.path(&pki.other_ca_file);
    let target = |host: &str, params: &str| {
        PgTarget::parse(&url(&pg, host, "postgres", params), None).unwrap()
    };
    let ok = [
        (
            "127.0.0.1",
            String::new(),
            "prefer (default): TLS, unverified",
        ),
        (
            "127.0.0.1",
            "sslmode=allow".into(),
            "allow: plain refused, then TLS",
        ),
        (
            "127.0.0.1",
            "sslmode=require".into(),
            "require: encryption only",
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-ca&sslrootcert={ca}"),
            "verify-ca: no name check",
        ),
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            "verify-full",
        ),
    ];
    for (host, params, what) in &ok {
        let t = target(host, params);
        if let Err(e) = t.connect().await {
            panic!("{what}: SQL connection failed: {e}");
        }
        if let Err(e) = ReplicationSession::connect(&t).await {
            panic!("{what}: replication session failed: {e}");
        }
    }
    let refused = [
        (
            "127.0.0.1",
            format!("sslmode=require&sslrootcert={other}"),
            "not signed by a trusted",
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            "not valid for the host name",
        ),
        (
            "127.0.0.1",
            "sslmode=disable".to_owned(),
            "no pg_hba.conf entry",
        ),
    ];
    for (host, params, why) in &refused {
        let e = target(host, params).connect().await.expect_err(params);
        assert!(e.to_string().contains(why), "{params}: {e}");
    }

    // The replication stream falls back like the others (allow: plain, then TLS).
    let sql = target("127.0.0.1", "sslmode=require")
        .connect()
        .await
        .unwrap();
    sql.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION modes_pub FOR TABLE t",
    )
    .await
    .unwrap();
    sql.batch_execute("SELECT pg_create_logical_replication_slot('modes_slot', 'pgoutput')")
        .await
        .unwrap();
    for params in ["sslmode=allow", "sslmode=prefer"] {
        let cfg = SourceConfig {
            target: target("127.0.0.1", params),
            slot: "modes_slot".into(),
            publication: "modes_pub".into(),
            tables: Vec::new(),
            insert_only: Vec::new(),
            policy: Default::default(),
            takeover: false,
            failover: false,
            protocol: Default::default(),
        };
        let mut stream = replication_connect(&sql, &cfg, Lsn::ZERO)
            .await
            .unwrap_or_else(|e| panic!("{params}: replication stream: {e}"));
        stream.shutdown().await.ok();
        wait_until(
            "the slot to be released",
            Duration::from_secs(30),
            || async {
                let active: bool = sql
                    .query_one(
                        "SELECT active FROM pg_replication_slots WHERE slot_name = 'modes_slot'",
                        &[],
                    )
                    .await
                    .ok()?
                    .get(0);
                (!active).then_some(())
            },
        )
        .await;
    }

    // A plain connection refused by a TLS-only server says what to set.
    let run = run_ds_sync(
        &["slot", "list"],
        &[(
            "POSTGRES_URL",
            &url(&pg, "127.0.0.1", "postgres", "sslmode=disable"),
        )],
    )
    .await
    .expect_code(1);
    assert!(
        run.stderr.contains("no pg_hba.conf entry"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: The server refused a connection without TLS"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("sslmode=verify-full"), "{}", run.stderr);
}

/// With `sslmode=prefer`, a server that declines TLS and then breaks the plain connection
/// (restarting, or a cut) is a transient failure that capture retries, not the TLS attempt's
/// definite refusal. `bench chaos` found it: ds-sync exited with "server does not support
/// TLS" when its connections to PostgreSQL were cut as it reconnected.
#[tokio::test]
async fn a_plain_attempt_broken_after_tls_was_declined_is_retried() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_pg, db) = crate::kit::own_cluster_db("prefer_broken").await;
    let sql = db.client().await;
    sql.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION broken_pub FOR TABLE t",
    )
    .await
    .unwrap();
    sql.batch_execute("SELECT pg_create_logical_replication_slot('broken_slot', 'pgoutput')")
        .await
        .unwrap();
    // Declines every SSLRequest ('N'); closes every other connection on its first bytes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                if socket.read_exact(&mut head).await.is_ok()
                    && head == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]
                {
                    let _ = socket.write_all(b"N").await;
                    let _ = socket.read(&mut head).await;
                }
            });
        }
    });
    let url = format!("postgres://postgres:pw@127.0.0.1:{port}/postgres?sslmode=prefer");
    let cfg = SourceConfig {
        target: PgTarget::parse(&url, None).unwrap(),
        slot: "broken_slot".into(),
        publication: "broken_pub".into(),
        tables: Vec::new(),
        insert_only: Vec::new(),
        policy: Default::default(),
        takeover: false,
        failover: false,
        protocol: Default::default(),
    };
    let e = match replication_connect(&sql, &cfg, Lsn::ZERO).await {
        Ok(_) => panic!("the fake server streams nothing"),
        Err(e) => e,
    };
    assert!(e.is_transient(), "a broken connection is retried: {e}");
}
