//! Transactions fanned out over many streams: the buffer bound is reached before the Commit
//! with no stream's batch at a bound, and capture must still pass them (README, "A full
//! buffer never stalls").

use serde_json::Value;

use ds_sync::ds::DsClient;
use ds_sync::embedded::DsServerOptions;

use crate::kit::{Scenario, scenario, start_streaming, wait_confirmed, wal_now};

/// `(operation, id)` of each message of a stream, in stream order.
async fn ops_and_ids(client: &DsClient, stream: &str) -> Vec<(String, i64)> {
    client
        .read_all(stream)
        .await
        .unwrap_or_else(|e| panic!("reading {stream}: {e}"))
        .iter()
        .map(|m: &Value| {
            (
                m["headers"]["operation"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
                m["value"]["id"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// The case, scaled: per-key routing, every stream's share of one big UPDATE far
/// below the batch bounds, the whole transaction well above the buffer bound. 20,000 rows
/// over 400 customers with a 4 MiB bound instead of 100,000 over 2,000 with 16 MiB: the same
/// shape (50 messages of ~600 bytes per stream, the transaction ~3 times the bound) in a
/// fifth of the time.
// Multi-threaded: the in-process DS server takes thousands of POSTs while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_update_fanned_out_over_per_key_streams_passes_the_buffer_bound() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "fanout_update",
        "CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL, note text)",
        DsServerOptions::default(),
    )
    .await;
    let capture = start_streaming(
        &db,
        &server.url(),
        &[
            "--tables",
            "orders",
            "--route",
            "orders=orders/{customer_id}",
            "--max-buffer-bytes",
            "4194304",
        ],
    )
    .await;
    let slot = db.slot("cap");
    sql.batch_execute(
        "INSERT INTO orders SELECT g, g % 400, repeat('n', 400) FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    let inserted = wal_now(&sql).await;
    wait_confirmed(&sql, &slot, &inserted, &capture).await;
    sql.batch_execute("UPDATE orders SET note = repeat('u', 400)")
        .await
        .unwrap();
    let updated = wal_now(&sql).await;
    wait_confirmed(&sql, &slot, &updated, &capture).await;
    for customer in 0..400i64 {
        let stream = format!("orders/{customer}");
        let got = ops_and_ids(&client, &stream).await;
        let mut ids: Vec<i64> = (0..50)
            .map(|i| customer + 400 * i)
            .map(|id| if id == 0 { 20000 } else { id })
            .collect();
        ids.sort_unstable();
        let expected: Vec<(String, i64)> = ids
            .iter()
            .map(|id| ("insert".to_string(), *id))
            .chain(ids.iter().map(|id| ("update".to_string(), *id)))
            .collect();
        assert_eq!(got, expected, "stream {stream}: every row once, in order");
    }
    capture.stop_ok().await;
}

/// 10,000 streams × 10 rows in one transaction, twice: first with every stream new (recovery
/// mode: one message per POST until the first is accepted), then with every stream past
/// recovery (the open batches stay below every bound while the buffer fills).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_times_ten_rows_in_one_transaction_drain() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "fanout_wide",
        "CREATE TABLE fan (id int PRIMARY KEY, k int NOT NULL, v text)",
        DsServerOptions::default(),
    )
    .await;
    let capture = start_streaming(
        &db,
        &server.url(),
        &["--tables", "fan", "--route", "fan=fan/{k}"],
    )
    .await;
    let slot = db.slot("cap");
    for round in 0..2 {
        let first = round * 100_000 + 1;
        sql.execute(
            "INSERT INTO fan SELECT g, g % 10000, repeat('v', 120) \
             FROM generate_series($1::int, $1::int + 99999) g",
            &[&first],
        )
        .await
        .unwrap();
        let lsn = wal_now(&sql).await;
        wait_confirmed(&sql, &slot, &lsn, &capture).await;
    }
    let mut checked = 0;
    for k in 0..10_000i64 {
        let stream = format!("fan/{k}");
        let got: Vec<i64> = ops_and_ids(&client, &stream)
            .await
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        let mut expected: Vec<i64> = (0..20)
            .map(|i| k + 10_000 * i)
            .map(|id| if id == 0 { 200_000 } else { id })
            .collect();
        expected.sort_unstable();
        assert_eq!(got, expected, "stream {stream}: every row once, in order");
        checked += 1;
    }
    assert_eq!(checked, 10_000);
    capture.stop_ok().await;
}
