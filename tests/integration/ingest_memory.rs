//! Ingest under its memory bound: a backlog far larger than the bound (sent by the server as
//! one SSE data event) is stored while it arrives, bad messages in it included, and a stream
//! that cannot be read that way stops with the way out.

use ds_sync::embedded::DsServerOptions;
use ds_sync::ingest::MemoryLimits;

use crate::kit::http::{create_stream, post_raw};
use crate::kit::ingest::{Ingest, PATIENCE, Setup, setup};
use crate::kit::{TestDb, connect, test_db, wait_until};

const MAX_EVENT: usize = 64 << 10;

fn message(i: usize) -> String {
    format!(
        r#"{{"key":"k{i}","type":"backlog","i":{i},"pad":"{}"}}"#,
        "b".repeat(120)
    )
}

/// A JSON array of messages `from..from + n`.
fn batch(from: usize, n: usize) -> String {
    let msgs: Vec<String> = (from..from + n).map(message).collect();
    format!("[{}]", msgs.join(","))
}

/// A database in LATIN1: PostgreSQL refuses text it cannot convert (a character outside
/// Latin-1), valid JSON though it is. That is how a message the server accepted can still be
/// refused by the database.
async fn latin1_db(label: &str) -> TestDb {
    let base = test_db(label).await;
    let name = format!("{}_latin1", base.name);
    connect(&base.admin_url)
        .await
        .batch_execute(&format!(
            "CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ))
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    TestDb {
        url: base.url.replace(&base.name, &name),
        name,
        ..base
    }
}

#[tokio::test]
async fn a_backlog_far_larger_than_the_bound_is_stored_as_it_arrives() {
    const BOUND: usize = 3 << 20;
    let server = ds_sync::embedded::DsServer::start(DsServerOptions::default())
        .await
        .unwrap();
    let s = Setup::from_parts(latin1_db("ing_backlog").await, server).await;
    s.ds.ensure_stream("backlog").await.unwrap();
    // About 4 MB of messages, with three bad ones among them: one the database refuses (a
    // character LATIN1 does not have), one ds-sync refuses (\u0000), one over
    // --ingest-max-event-bytes.
    let mut next = 0;
    for _ in 0..10 {
        s.post("backlog", &batch(next, 1000)).await;
        next += 1000;
    }
    s.post(
        "backlog",
        r#"[{"key":"refused","v":"snow \u2603"},{"key":"nul","v":"\u0000"}]"#,
    )
    .await;
    s.post(
        "backlog",
        &format!(r#"[{{"key":"huge","pad":"{}"}}]"#, "h".repeat(MAX_EVENT)),
    )
    .await;
    for _ in 0..10 {
        s.post("backlog", &batch(next, 1000)).await;
        next += 1000;
    }
    let tail = s.ds.head("backlog").await.unwrap().unwrap();
    let ingest = Ingest::start_with(&s.db, &s.server.url(), &["backlog"], MAX_EVENT, |cfg| {
        cfg.max_buffer_bytes = BOUND;
    })
    .await;
    s.wait_rows("backlog", next as i64).await;
    s.wait_caught_up("backlog").await;
    s.expect_exactly_once("backlog", "i", next as i64).await;
    let offsets: Vec<Option<String>> = s
        .sql
        .query(
            "SELECT DISTINCT ds_offset FROM session_events WHERE stream_name = 'backlog'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        offsets,
        [Some(tail)],
        "every row carries the offset that committed it"
    );
    let dead: Vec<(String, String)> = s
        .sql
        .query(
            "SELECT convert_from(substring(raw from 1 for 20), 'UTF8'), error \
             FROM ds_sync.dead_letters ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(dead.len(), 3, "{dead:#?}");
    let of = |key: &str| {
        dead.iter()
            .find(|(raw, _)| raw.contains(key))
            .map(|(_, e)| e.as_str())
            .unwrap_or_else(|| panic!("no dead letter for {key}: {dead:#?}"))
    };
    assert!(
        of("refused").starts_with("PostgreSQL refused the message as jsonb"),
        "{dead:#?}"
    );
    assert!(of("nul").contains("\\u0000"));
    assert!(of("huge").contains("over the limit of 65536 bytes"));
    let limits = MemoryLimits::new(BOUND, MAX_EVENT).unwrap();
    wait_until("the memory figures to be recorded", PATIENCE, || async {
        (s.peak_buffered("backlog").await > 0).then_some(())
    })
    .await;
    let peak = s.peak_buffered("backlog").await as usize;
    assert!(
        peak <= limits.per_stream,
        "held {peak} bytes, over the stream's bound of {}",
        limits.per_stream
    );
    // Back on SSE: a live event arrives.
    s.wait_status("backlog", "streaming").await;
    s.post("backlog", &batch(next, 1)).await;
    s.wait_rows("backlog", next as i64 + 1).await;
    ingest.stop().await;
}

/// A stream of another content type cannot be read by catch-up (its messages come run
/// together); one of its data events that does not fit in a stream's share of the buffer
/// stops the subscription with the way out, storing nothing past the committed offset. With
/// a larger bound and `subscribe`, it is read whole.
#[tokio::test]
async fn a_text_stream_event_over_a_streams_share_stops_with_the_way_out() {
    let s = setup("ing_text_big", DsServerOptions::default()).await;
    let base = s.server.url();
    create_stream(&base, "text", "text/plain").await;
    post_raw(&base, "text", "text/plain", batch(0, 10_000).as_bytes()).await;
    let small = Ingest::start_with(&s.db, &base, &["text"], MAX_EVENT, |cfg| {
        cfg.max_buffer_bytes = 5 << 19;
    })
    .await;
    s.wait_status("text", "failed").await;
    let error = s.subscription_error("text").await;
    assert!(
        error.contains("is not in JSON mode")
            && error.contains("Raise --ingest-max-buffer-bytes")
            && error.contains("ds-sync subscribe text"),
        "{error}"
    );
    assert_eq!(s.count("text").await, 0);
    assert_eq!(
        s.stored_offset("text").await,
        None,
        "the offset did not move"
    );
    let dead: i64 = s
        .sql
        .query_one("SELECT count(*) FROM ds_sync.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "valid events are not dead letters");
    small.stop().await;
    let large = Ingest::start_with(&s.db, &base, &[], MAX_EVENT, |cfg| {
        cfg.max_buffer_bytes = 32 << 20;
    })
    .await;
    s.sql
        .execute(
            "UPDATE ds_sync.subscriptions SET generation = generation + 1 WHERE stream_name = 'text'",
            &[],
        )
        .await
        .unwrap();
    s.wait_rows("text", 10_000).await;
    s.expect_exactly_once("text", "i", 10_000).await;
    large.stop().await;
}
