//! Capture scale-out (README, "HA and scaling"): table groups of one database, each with its
//! own publication and slot, each run by its own `ds-sync run`. Both stream at once, each
//! only its own tables; one killed and restarted mid-way loses and doubles nothing, and
//! the other is not disturbed.

use ds_sync::embedded::DsServerOptions;

use crate::kit::{
    CaptureProcess, Scenario, scenario, streaming_pid, wait_keys_exactly, wait_slot_streaming,
    wait_streaming_anew,
};

const DDL: &str = "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)";

/// Inserts keys `keys` into `table`, ten rows per transaction.
async fn insert(sql: &tokio_postgres::Client, table: &str, keys: std::ops::RangeInclusive<i32>) {
    let keys: Vec<i32> = keys.collect();
    for chunk in keys.chunks(10) {
        let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
        sql.execute(
            &format!("INSERT INTO {table} SELECT generate_series($1::int, $2::int)"),
            &[&first, &last],
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn two_table_groups_stream_on_their_own_slots_each_exactly_once() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario("groups", DDL, DsServerOptions::default()).await;
    let group = |name: &str| (db.slot(name), format!("pub_{name}"));
    let ((slot_a, pub_a), (slot_b, pub_b)) = (group("a"), group("b"));
    let start = async |slot: &str, publication: &str, table: &str| {
        CaptureProcess::start_on(
            &db,
            &server.url(),
            (slot, publication),
            &["--tables", table],
            &[],
        )
        .await
    };
    let capture_a = start(&slot_a, &pub_a, "a").await;
    let capture_b = start(&slot_b, &pub_b, "b").await;
    wait_slot_streaming(&sql, &slot_a).await;
    wait_slot_streaming(&sql, &slot_b).await;
    let published: Vec<(String, String)> = sql
        .query(
            "SELECT pubname::text, tablename::text FROM pg_publication_tables \
             WHERE pubname IN ($1, $2) AND schemaname = 'public' ORDER BY 1, 2",
            &[&pub_a, &pub_b],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        published,
        vec![(pub_a.clone(), "a".into()), (pub_b.clone(), "b".into())],
        "each group's publication holds its own table only (and ds_sync.signals)"
    );
    insert(&sql, "a", 1..=200).await;
    insert(&sql, "b", 1..=200).await;
    // Group a's process dies with its rows in flight; group b goes on meanwhile.
    let walsender_b = streaming_pid(&sql, &slot_b).await.unwrap();
    assert!(walsender_b.is_some(), "group b streams");
    capture_a.kill().await;
    insert(&sql, "a", 201..=400).await;
    insert(&sql, "b", 201..=400).await;
    wait_keys_exactly(&client, "pg-b", 400).await;
    let capture_a = start(&slot_a, &pub_a, "a").await;
    wait_streaming_anew(&sql, &slot_a, None).await;
    insert(&sql, "a", 401..=500).await;
    insert(&sql, "b", 401..=500).await;
    wait_keys_exactly(&client, "pg-a", 500).await;
    wait_keys_exactly(&client, "pg-b", 500).await;
    assert_eq!(
        streaming_pid(&sql, &slot_b).await.unwrap(),
        walsender_b,
        "group b streamed on the same session throughout"
    );
    capture_a.stop_ok().await;
    capture_b.stop_ok().await;
}
