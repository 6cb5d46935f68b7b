//! Streams as a client sees them: reading one whole, materializing it by the State
//! Protocol, and waiting until it equals a table. Also the `(id, v)` workload whose tables
//! [`wait_converged`] compares: [`ITEMS`] and [`spawn_writer`].

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use ds_sync::ds::DsClient;

use super::process::CaptureProcess;
use super::wait::Wait;

/// All messages of a stream (empty when it does not exist yet).
pub async fn read(client: &DsClient, stream: &str) -> Vec<Value> {
    client.read_all(stream).await.unwrap_or_default()
}

/// The control of a message (`reset`, `snapshot-start`, ...), if it is one.
pub fn control(m: &Value) -> Option<&str> {
    m["headers"]["control"].as_str()
}

/// The keys of a stream's messages in order (a key that is not a number reads as -1).
pub async fn stream_keys(client: &DsClient, stream: &str) -> Vec<i64> {
    read(client, stream)
        .await
        .iter()
        .map(|m| m["key"].as_str().and_then(|k| k.parse().ok()).unwrap_or(-1))
        .collect()
}

/// Waits until the keys of `stream` are exactly `1..=n`, once each and in order; fails at
/// once when what arrived so far is not a prefix of that (a key doubled, lost or out of
/// order), and after 120 s.
#[track_caller]
pub fn wait_keys_exactly<'a>(
    client: &'a DsClient,
    stream: &'a str,
    n: i64,
) -> impl Future<Output = ()> + 'a {
    let expected: Vec<i64> = (1..=n).collect();
    let wait = Wait::new(
        format!("keys 1..={n} in {stream}, once each and in order"),
        Duration::from_secs(120),
    );
    async move {
        wait.until(|| async {
            let got = stream_keys(client, stream).await;
            assert!(
                got.len() <= expected.len() && got[..] == expected[..got.len()],
                "{stream} differs from 1..={n}: {got:?}"
            );
            (got == expected).then_some(())
        })
        .await;
    }
}

/// A client's view of a stream, as the State Protocol defines it: `reset` drops everything,
/// inserts and updates set `(type, key)` to `value`, deletes remove it; snapshot frames
/// change nothing.
pub fn materialize(messages: &[Value]) -> BTreeMap<(String, String), Value> {
    let mut state = BTreeMap::new();
    for m in messages {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        if control(m) == Some("reset") {
            state.clear();
            continue;
        }
        let id = (text(&m["type"]), text(&m["key"]));
        match m["headers"]["operation"].as_str() {
            Some("insert" | "update") => {
                state.insert(id, m["value"].clone());
            }
            Some("delete") => {
                state.remove(&id);
            }
            _ => {}
        }
    }
    state
}

/// [`materialize`] for a stream of one type: key → value (messages without a key are
/// skipped).
pub fn materialize_by_key(messages: &[Value]) -> BTreeMap<String, Value> {
    let mut rows = BTreeMap::new();
    for m in messages {
        if control(m) == Some("reset") {
            rows.clear();
            continue;
        }
        let Some(key) = m["key"].as_str() else {
            continue;
        };
        match m["headers"]["operation"].as_str() {
            Some("insert" | "update") => {
                rows.insert(key.to_string(), m["value"].clone());
            }
            Some("delete") => {
                rows.remove(key);
            }
            _ => {}
        }
    }
    rows
}

/// The table as `key → {id, v}`.
async fn table_rows(sql: &tokio_postgres::Client, table: &str) -> BTreeMap<String, Value> {
    sql.query(&format!("SELECT id, v FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let (id, v): (i32, i32) = (r.get(0), r.get(1));
            (id.to_string(), serde_json::json!({"id": id, "v": v}))
        })
        .collect()
}

/// Only `id` and `v` of each materialized row.
fn id_v(rows: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    rows.iter()
        .map(|(k, v)| (k.clone(), serde_json::json!({"id": v["id"], "v": v["v"]})))
        .collect()
}

/// How a materialized stream differs from the table, for failure messages.
fn difference(got: &BTreeMap<String, Value>, expected: &BTreeMap<String, Value>) -> String {
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    let changed: Vec<_> = expected
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, _)| k)
        .take(5)
        .collect();
    format!(
        "{} rows vs {} in the table, missing {missing:?}, extra {extra:?}, different {changed:?}",
        got.len(),
        expected.len()
    )
}

/// Waits until `stream`, materialized, equals `table` (`id` and `v`) and returns its
/// messages; panics after 120 s with the difference and the log.
#[track_caller]
pub fn wait_converged<'a>(
    client: &'a DsClient,
    stream: &'a str,
    sql: &'a tokio_postgres::Client,
    table: &'a str,
    capture: &'a CaptureProcess,
) -> impl Future<Output = Vec<Value>> + 'a {
    Wait::new(
        format!("stream {stream} to match table {table}"),
        Duration::from_secs(120),
    )
    .every(Duration::from_millis(200))
    .log_of(capture)
    .until(move || async move {
        let messages = read(client, stream).await;
        let expected = table_rows(sql, table).await;
        let got = id_v(&materialize_by_key(&messages));
        if got == expected {
            Ok(messages)
        } else {
            Err(difference(&got, &expected))
        }
    })
}

/// `items (id, v, pad)` with 20,000 rows, for [`spawn_writer`].
pub const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, pad text); \
    INSERT INTO items SELECT g, 0, repeat('x', 50) FROM generate_series(1, 20000) g;";

/// Updates, inserts and deletes rows of `items` until told to stop; returns how many
/// statements ran.
pub fn spawn_writer(
    url: String,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let sql = super::connect(&url).await;
        let mut n = 0u64;
        let mut next_id = 1_000_000;
        while !stop.is_cancelled() {
            let id = (n * 7919 % 20_000) as i32 + 1;
            sql.execute("UPDATE items SET v = v + 1 WHERE id = $1", &[&id])
                .await
                .unwrap();
            if n.is_multiple_of(10) {
                sql.execute("INSERT INTO items VALUES ($1, 0)", &[&next_id])
                    .await
                    .unwrap();
                next_id += 1;
            }
            if n.is_multiple_of(25) {
                let gone = (n * 104_729 % 20_000) as i32 + 1;
                sql.execute("DELETE FROM items WHERE id = $1", &[&gone])
                    .await
                    .unwrap();
            }
            n += 1;
        }
        n
    })
}
