//! A partitioned table is captured as the table the application writes to: one stream
//! (`pg-ev`), `type` `ev`, keyed by `ev`'s primary key, in the initial snapshot, while
//! streaming, through `snapshot --table ev`, and for a partition attached later.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use ds_sync::embedded::DsServerOptions;

use crate::kit::official_client::{table_rows, wait_for_rows};
use crate::kit::{Scenario, scenario, start_streaming};

const LONG: Duration = Duration::from_secs(90);

const EV: &str = "\
    CREATE TABLE ev (id int, at date, body text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at); \
    CREATE TABLE ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01'); \
    CREATE TABLE ev_2026 PARTITION OF ev FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); \
    ALTER TABLE ev_2026 ALTER COLUMN body SET STORAGE EXTERNAL; \
    INSERT INTO ev VALUES (1, '2025-03-01', 'a'), (2, '2025-09-01', 'b'), \
                          (3, '2026-03-01', repeat('c', 5000)), (4, '2026-09-01', 'd');";

/// `ev` as ds-sync keys it: a two-column key is a JSON array of the texts.
async fn ev_rows(sql: &tokio_postgres::Client) -> BTreeMap<String, Value> {
    let rows = table_rows(sql, "ev", "json_build_array(t.id::text, t.at::text)").await;
    rows.into_iter()
        .map(|(k, v)| (k.replace(", ", ","), v))
        .collect()
}

#[tokio::test]
async fn a_partitioned_table_streams_as_itself_through_snapshot_changes_and_attach() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario("parts_ev", EV, DsServerOptions::default()).await;
    let base = server.url();
    let capture = start_streaming(&db, &base, &["--tables", "public.ev"]).await;
    let state = wait_for_rows(&base, "pg-ev", "ev", &ev_rows(&sql).await, LONG, || {
        capture.log()
    })
    .await;
    assert_eq!(
        state.state.keys().collect::<Vec<_>>(),
        ["ev"],
        "rows of both partitions have type ev"
    );
    // Changes in either partition, one leaving a TOASTed body unchanged, one moving a row
    // from one partition to the other.
    sql.batch_execute(
        "INSERT INTO ev VALUES (5, '2025-05-05', 'e'), (6, '2026-06-06', 'f'); \
         UPDATE ev SET at = '2026-01-15' WHERE id = 1; \
         UPDATE ev SET id = 30 WHERE id = 3; DELETE FROM ev WHERE id = 4;",
    )
    .await
    .unwrap();
    wait_for_rows(&base, "pg-ev", "ev", &ev_rows(&sql).await, LONG, || {
        capture.log()
    })
    .await;
    // A partition attached later: its existing rows are not changes (a snapshot sends them),
    // later changes are ev's, whole. PostgreSQL 14's pgoutput keeps a table that had a change
    // decoded before it was attached unpublished for the rest of the session (README,
    // "Compatibility"), so there the row is written to it only once it is attached.
    let written_before_attach = crate::kit::server_major(&sql).await >= 15;
    let before = "INSERT INTO ev_2027 VALUES (7, '2027-02-02', repeat('g', 5000));";
    let (early, late) = if written_before_attach {
        (before, "")
    } else {
        ("", before)
    };
    sql.batch_execute(&format!(
        "CREATE TABLE ev_2027 (LIKE ev INCLUDING ALL); \
         ALTER TABLE ev_2027 ALTER COLUMN body SET STORAGE EXTERNAL; {early} \
         ALTER TABLE ev ATTACH PARTITION ev_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01'); \
         INSERT INTO ev VALUES (8, '2027-08-08', repeat('h', 5000)); {late}",
    ))
    .await
    .unwrap();
    let mut expected = ev_rows(&sql).await;
    if written_before_attach {
        expected.remove(r#"["7","2027-02-02"]"#);
    }
    wait_for_rows(&base, "pg-ev", "ev", &expected, LONG, || capture.log()).await;
    sql.batch_execute("UPDATE ev SET id = id WHERE id = 8")
        .await
        .unwrap();
    wait_for_rows(&base, "pg-ev", "ev", &expected, LONG, || capture.log()).await;
    let attached: String = sql
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE relname = 'ev_2027'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        attached, "f",
        "the attached partition got REPLICA IDENTITY FULL"
    );
    // `snapshot --table ev` reads the partitioned table, the attached partition's old rows too.
    let run = db
        .ds_sync(&[
            "snapshot",
            "--table",
            "ev",
            "--slot",
            &db.slot("cap"),
            "--publication",
            "cap_pub",
        ])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_for_rows(&base, "pg-ev", "ev", &ev_rows(&sql).await, LONG, || {
        capture.log()
    })
    .await;
    for partition in ["pg-ev_2025", "pg-ev_2026", "pg-ev_2027"] {
        assert_eq!(
            client.head(partition).await.unwrap(),
            None,
            "no partition has a stream of its own"
        );
    }
    capture.stop_ok().await;
}
