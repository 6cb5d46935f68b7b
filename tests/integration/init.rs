//! `ds-sync init` against real clusters.

use ds_sync::embedded::PostgresOptions;

use crate::kit::{connect, run_ds_sync, start_cluster, test_db, test_db_in};

#[tokio::test]
async fn init_twice_applies_once_and_creates_the_documented_table() {
    let db = test_db("init_twice").await;
    let first = db.ds_sync(&["init", "--output", "json"]).await.ok().json();
    let applied: Vec<bool> = first["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["applied_now"].as_bool().unwrap())
        .collect();
    assert!(
        !applied.is_empty() && applied.iter().all(|a| *a),
        "{first:#}"
    );
    assert!(
        first["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true),
        "{first:#}"
    );

    let second = db.ds_sync(&["init"]).await.ok();
    assert!(
        second.stdout.contains("already applied"),
        "{}",
        second.stdout
    );
    let schema_lines: Vec<&str> = second
        .stdout
        .lines()
        .filter(|l| l.starts_with("schema"))
        .collect();
    assert_eq!(schema_lines.len(), applied.len(), "{}", second.stdout);
    assert!(
        schema_lines.iter().all(|l| l.ends_with("already applied")),
        "{}",
        second.stdout
    );
    assert!(!second.stdout.contains("FAIL"), "{}", second.stdout);

    let client = db.client().await;
    let columns: Vec<(String, String)> = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = 'session_events' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = [
        ("id", "integer"),
        ("stream_name", "text"),
        ("event_key", "text"),
        ("event_type", "text"),
        ("operation", "text"),
        ("payload", "jsonb"),
        ("ds_offset", "text"),
        ("received_at", "timestamp with time zone"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(columns, expected);
    let recorded: i64 = client
        .query_one("SELECT count(*) FROM ds_sync.migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded as usize, applied.len());
}

#[tokio::test]
async fn init_adopts_a_session_events_table_created_by_hand() {
    let db = test_db("init_adopt").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE session_events (id SERIAL PRIMARY KEY, stream_name TEXT NOT NULL, \
             event_key TEXT, event_type TEXT, operation TEXT, payload JSONB NOT NULL, \
             ds_offset TEXT, received_at TIMESTAMPTZ DEFAULT NOW()); \
             INSERT INTO session_events (stream_name, payload) VALUES ('s', '{}');",
        )
        .await
        .unwrap();
    db.ds_sync(&["init"]).await.ok();
    let kept: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM session_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "existing rows are kept");
}

#[tokio::test]
async fn init_reports_wal_level_replica_with_its_fix() {
    let pg = start_cluster(&PostgresOptions {
        wal_level: "replica".into(),
        ..PostgresOptions::default()
    });
    let db = test_db_in(&pg, "init_replica").await;
    let run = db.ds_sync(&["init"]).await.expect_code(3);
    assert!(
        run.stdout
            .contains("wal_level is 'replica': set wal_level = logical and restart the server"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("prerequisite"), "{}", run.stderr);
    let slot = db.ds_sync(&["slot", "create", "x"]).await.expect_code(1);
    assert!(
        slot.stderr.contains("wal_level = logical"),
        "slot create explains too: {}",
        slot.stderr
    );
}

#[tokio::test]
async fn init_reports_a_role_without_replication() {
    let db = test_db("init_role").await;
    let admin = connect(&db.url).await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE app_{n} LOGIN PASSWORD 'pw'; ALTER DATABASE {n} OWNER TO app_{n}; \
             GRANT CREATE ON SCHEMA public TO app_{n};",
            n = db.name
        ))
        .await
        .unwrap();
    let url = format!(
        "postgres://app_{n}:pw@127.0.0.1:{p}/{n}",
        n = db.name,
        p = db.port
    );
    let run = run_ds_sync(&["init"], &[("POSTGRES_URL", &url)])
        .await
        .expect_code(3);
    assert!(
        run.stdout
            .contains(&format!("ALTER ROLE \"app_{}\" REPLICATION", db.name)),
        "{}",
        run.stdout
    );
}
