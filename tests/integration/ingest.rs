//! Ingest (stream → `session_events`) against a real PostgreSQL and a real DS server: the
//! sync-layer document's own check, SSE framing over a real connection, reconnects, dead
//! letters, streams that appear late, and closed streams.

use std::time::Duration;

use ds_sync::embedded::DsServerOptions;
use ds_sync::ingest::DEFAULT_MAX_EVENT_BYTES;

use crate::kit::http::{create_stream, post_raw, stream_request};
use crate::kit::ingest::{Ingest, setup};
use crate::kit::wait_until;

/// payload text, event_key, event_type, operation
type Stored = (String, Option<String>, Option<String>, Option<String>);

const EXAMPLE: &str =
    r#"[{"key":"event-1","type":"user-action","operation":"click","data":{"button":"submit"}}]"#;

#[tokio::test]
async fn the_sync_layer_example_lands_with_its_mapping() {
    let s = setup("ing_example", DsServerOptions::default()).await;
    s.ds.ensure_stream("sessions").await.unwrap();
    let ingest = Ingest::start(
        &s.db,
        &s.server.url(),
        &["sessions"],
        DEFAULT_MAX_EVENT_BYTES,
    )
    .await;
    s.wait_status("sessions", "streaming").await;
    let posted = std::time::Instant::now();
    s.post("sessions", EXAMPLE).await;
    s.wait_rows("sessions", 1).await;
    eprintln!("example row stored {:?} after the POST", posted.elapsed());
    let tail = s.ds.head("sessions").await.unwrap().unwrap();
    let row = s
        .sql
        .query_one(
            "SELECT stream_name, event_key, event_type, operation, ds_offset, \
                    payload = $1::text::jsonb->0, received_at IS NOT NULL \
             FROM session_events",
            &[&EXAMPLE],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "sessions");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("event-1"));
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("user-action")
    );
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("click"));
    assert_eq!(
        row.get::<_, Option<String>>(4),
        Some(tail.clone()),
        "ds_offset is the committing offset"
    );
    assert!(row.get::<_, bool>(5), "payload is the whole message");
    assert!(row.get::<_, bool>(6));
    s.wait_caught_up("sessions").await;
    ingest.stop().await;
}

#[tokio::test]
async fn any_json_value_is_stored_and_headers_operation_is_used() {
    let s = setup("ing_values", DsServerOptions::default()).await;
    s.ds.ensure_stream("mixed").await.unwrap();
    let ingest = Ingest::start(&s.db, &s.server.url(), &["mixed"], DEFAULT_MAX_EVENT_BYTES).await;
    s.post(
        "mixed",
        r#"[1, "text", null, [1,2], {"type":"items","key":"7","headers":{"operation":"update"}}]"#,
    )
    .await;
    s.wait_rows("mixed", 5).await;
    let rows = s
        .sql
        .query(
            "SELECT payload::text, event_key, event_type, operation FROM session_events ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<Stored> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(got[0], ("1".into(), None, None, None));
    assert_eq!(got[1], ("\"text\"".into(), None, None, None));
    assert_eq!(got[2], ("null".into(), None, None, None));
    assert_eq!(got[3], ("[1, 2]".into(), None, None, None));
    assert_eq!(
        (
            got[4].1.as_deref(),
            got[4].2.as_deref(),
            got[4].3.as_deref()
        ),
        (Some("7"), Some("items"), Some("update"))
    );
    ingest.stop().await;
}

#[tokio::test]
async fn multi_line_and_large_split_frames_over_a_real_connection() {
    let s = setup("ing_frames", DsServerOptions::default()).await;
    let base = s.server.url();
    // A text stream sends each message as it is: a pretty-printed array arrives as one
    // event of several `data:` lines, joined again by the parser.
    create_stream(&base, "pretty", "text/plain").await;
    let ingest = Ingest::start(&s.db, &base, &["pretty", "big"], DEFAULT_MAX_EVENT_BYTES).await;
    let pretty = "[\n  {\"key\": \"a\",\n   \"type\": \"multi\"},\r\n  {\"key\": \"b\"}\r]";
    post_raw(&base, "pretty", "text/plain", pretty.as_bytes()).await;
    s.wait_rows("pretty", 2).await;
    assert_eq!(
        s.event_keys("pretty").await,
        [Some("a".to_owned()), Some("b".to_owned())]
    );

    // A JSON stream with a backlog of ~1 MB arrives as one data event, read in many chunks.
    s.ds.ensure_stream("big").await.unwrap();
    let filler = "x".repeat(1000);
    for batch in 0..10 {
        let msgs: Vec<String> = (0..100)
            .map(|i| format!(r#"{{"key":"{}","pad":"{filler}"}}"#, batch * 100 + i))
            .collect();
        s.post("big", &format!("[{}]", msgs.join(","))).await;
    }
    s.wait_rows("big", 1000).await;
    let distinct: i64 = s
        .sql
        .query_one(
            "SELECT count(DISTINCT event_key) FROM session_events WHERE stream_name = 'big' \
             AND length(payload->>'pad') = 1000",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, 1000);
    ingest.stop().await;
}

#[tokio::test]
async fn reconnects_when_the_server_closes_connections_every_second() {
    let opts = DsServerOptions {
        sse_reconnect_interval_secs: 1,
        ..DsServerOptions::default()
    };
    let mut s = setup("ing_reconnect", opts).await;
    s.ds.ensure_stream("flaky").await.unwrap();
    let ingest = Ingest::start(&s.db, &s.server.url(), &["flaky"], DEFAULT_MAX_EVENT_BYTES).await;
    let mut n = 0;
    for round in 0..6 {
        for _ in 0..5 {
            s.post("flaky", &format!(r#"[{{"key":"{n}"}}]"#)).await;
            n += 1;
        }
        // Idle longer than the server's interval: it closes the SSE connection.
        tokio::time::sleep(Duration::from_millis(if round % 2 == 0 {
            1500
        } else {
            300
        }))
        .await;
    }
    s.wait_rows("flaky", n).await;
    let dupes: i64 = s
        .sql
        .query_one(
            "SELECT count(*) - count(DISTINCT event_key) FROM session_events WHERE stream_name = 'flaky'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dupes, 0, "an event was stored twice");
    s.wait_caught_up("flaky").await;
    // The server also going away entirely and coming back loses nothing, doubles nothing.
    s.server.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.server.start_again().await.unwrap();
    s.ds.append(
        "flaky",
        bytes::Bytes::from_static(br#"[{"key":"after-restart"}]"#),
        None,
    )
    .await
    .unwrap();
    s.wait_rows("flaky", n + 1).await;
    ingest.stop().await;
}

#[tokio::test]
async fn bad_input_goes_to_dead_letters_while_good_events_flow() {
    let s = setup("ing_dead", DsServerOptions::default()).await;
    let base = s.server.url();
    create_stream(&base, "bad", "text/plain").await;
    s.ds.ensure_stream("huge").await.unwrap();
    let ingest = Ingest::start(&s.db, &base, &["bad", "huge"], 4096).await;
    post_raw(&base, "bad", "text/plain", b"[{\"key\":\"good-1\"}]").await;
    post_raw(&base, "bad", "text/plain", b"this is not json").await;
    post_raw(&base, "bad", "text/plain", b"{\"key\":\"not an array\"}").await;
    post_raw(
        &base,
        "bad",
        "text/plain",
        br#"[{"key":"nul\u0000"},{"key":"good-2"}]"#,
    )
    .await;
    post_raw(&base, "bad", "text/plain", b"[{\"key\":\"good-3\"}]").await;
    s.post(
        "huge",
        &format!(r#"[{{"key":"too-big","pad":"{}"}}]"#, "y".repeat(8000)),
    )
    .await;
    s.post("huge", r#"[{"key":"small"}]"#).await;

    s.wait_rows("bad", 3).await;
    s.wait_rows("huge", 1).await;
    s.wait_caught_up("bad").await;
    s.wait_caught_up("huge").await;
    assert_eq!(
        s.event_keys("bad").await,
        [
            Some("good-1".into()),
            Some("good-2".into()),
            Some("good-3".into())
        ]
    );
    let dead = s
        .sql
        .query(
            "SELECT d.stream_name, d.error, d.raw, d.size, d.truncated, d.ds_offset IS NOT NULL \
             FROM ds_sync.dead_letters d ORDER BY d.id",
            &[],
        )
        .await
        .unwrap();
    let dead: Vec<(String, String, Vec<u8>, i64, bool, bool)> = dead
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert_eq!(dead.len(), 4, "{dead:#?}");
    let of = |stream: &str| dead.iter().filter(|d| d.0 == stream).collect::<Vec<_>>();
    let bad = of("bad");
    assert_eq!(bad.len(), 3);
    assert!(
        bad[0].1.starts_with("data is not valid JSON"),
        "{}",
        bad[0].1
    );
    assert_eq!(bad[0].2, b"this is not json");
    assert!(
        bad[1].1.starts_with("data is an object, not a JSON array"),
        "{}",
        bad[1].1
    );
    assert!(bad[2].1.contains("\\u0000"), "{}", bad[2].1);
    assert_eq!(bad[2].2, br#"{"key":"nul\u0000"}"#);
    let huge = of("huge");
    assert_eq!(huge.len(), 1);
    assert!(
        huge[0].1.contains("over the limit of 4096 bytes"),
        "{}",
        huge[0].1
    );
    assert!(huge[0].3 > 8000, "its size is recorded: {}", huge[0].3);
    assert!(String::from_utf8_lossy(&huge[0].2).contains("too-big"));
    assert!(dead.iter().all(|d| d.5));
    ingest.stop().await;
}

#[tokio::test]
async fn a_stream_created_after_ingest_started_is_picked_up() {
    let s = setup("ing_late", DsServerOptions::default()).await;
    let ingest = Ingest::start(&s.db, &s.server.url(), &["late"], DEFAULT_MAX_EVENT_BYTES).await;
    s.wait_status("late", "waiting").await;
    s.ds.ensure_stream("late").await.unwrap();
    s.post("late", r#"[{"key":"first"},{"key":"second"}]"#)
        .await;
    s.wait_rows("late", 2).await;
    s.wait_status("late", "streaming").await;
    ingest.stop().await;
}

#[tokio::test]
async fn a_closed_stream_finishes_its_subscription() {
    let s = setup("ing_closed", DsServerOptions::default()).await;
    let base = s.server.url();
    s.ds.ensure_stream("ending").await.unwrap();
    let ingest = Ingest::start(&s.db, &base, &["ending"], DEFAULT_MAX_EVENT_BYTES).await;
    s.post("ending", r#"[{"key":"last"}]"#).await;
    let status = stream_request(
        &base,
        "POST",
        "ending",
        &[
            ("Content-Type", "application/json"),
            ("Stream-Closed", "true"),
        ],
        b"",
    )
    .await;
    assert!(
        status == 204 || status == 200,
        "closing the stream: {status}"
    );
    s.wait_status("ending", "closed").await;
    assert_eq!(s.count("ending").await, 1);
    s.wait_caught_up("ending").await;
    ingest.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_from_the_stored_offset() {
    let s = setup("ing_resume", DsServerOptions::default()).await;
    s.ds.ensure_stream("resume").await.unwrap();
    let url = s.server.url();
    let first = Ingest::start(&s.db, &url, &["resume"], DEFAULT_MAX_EVENT_BYTES).await;
    s.post("resume", r#"[{"key":"1"},{"key":"2"}]"#).await;
    s.wait_rows("resume", 2).await;
    s.wait_caught_up("resume").await;
    first.stop().await;
    s.post("resume", r#"[{"key":"3"}]"#).await;
    let second = Ingest::start(&s.db, &url, &["resume"], DEFAULT_MAX_EVENT_BYTES).await;
    s.wait_rows("resume", 3).await;
    s.wait_caught_up("resume").await;
    second.stop().await;
    assert_eq!(s.count("resume").await, 3);
}

#[tokio::test]
async fn a_gone_stream_stops_its_subscription_with_the_way_out() {
    // The server keeps an open SSE connection to a deleted stream until its idle close;
    // the reconnect after it gets the 410.
    let opts = DsServerOptions {
        sse_reconnect_interval_secs: 1,
        ..DsServerOptions::default()
    };
    let s = setup("ing_gone", opts).await;
    let base = s.server.url();
    s.ds.ensure_stream("doomed").await.unwrap();
    s.post("doomed", r#"[{"key":"kept"}]"#).await;
    // A fork keeps the deleted source as a tombstone, which the server answers with 410.
    let status = stream_request(
        &base,
        "PUT",
        "doomed-fork",
        &[
            ("Content-Type", "application/json"),
            ("Stream-Forked-From", "/v1/stream/doomed"),
        ],
        b"",
    )
    .await;
    assert!(status == 201 || status == 200, "fork: {status}");
    let ingest = Ingest::start(&s.db, &base, &["doomed"], DEFAULT_MAX_EVENT_BYTES).await;
    s.wait_rows("doomed", 1).await;
    let status = stream_request(&base, "DELETE", "doomed", &[], b"").await;
    assert_eq!(status, 204, "delete");
    s.wait_status("doomed", "failed").await;
    let error = s.subscription_error("doomed").await;
    assert!(error.contains("(410: deleted"), "{error}");
    assert!(
        error.contains("ds-sync subscribe doomed --reset-offset"),
        "{error}"
    );
    assert_eq!(s.count("doomed").await, 1, "what was committed stays");
    ingest.stop().await;
}

#[tokio::test]
async fn a_constraint_that_refuses_a_row_stops_ingest_with_its_name() {
    let s = setup("ing_constraint", DsServerOptions::default()).await;
    s.ds.ensure_stream("twice").await.unwrap();
    let ingest = Ingest::start(&s.db, &s.server.url(), &["twice"], DEFAULT_MAX_EVENT_BYTES).await;
    s.post("twice", r#"[{"key":"once"}]"#).await;
    s.wait_rows("twice", 1).await;
    s.wait_caught_up("twice").await;
    let stored = s.stored_offset("twice").await;
    // A rule of the operator's own: a second row with the same key is refused. Retrying the
    // same row cannot succeed, so ingest stops and says which constraint refused it.
    s.sql
        .batch_execute("CREATE UNIQUE INDEX session_events_key_once ON session_events (event_key)")
        .await
        .unwrap();
    s.post("twice", r#"[{"key":"once"}]"#).await;
    let error = ingest.failure().await;
    assert!(
        matches!(error, ds_sync::ingest::IngestError::Write { .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(text.contains("session_events_key_once"), "{text}");
    assert!(text.contains("SQLSTATE 23505"), "{text}");
    assert_eq!(s.count("twice").await, 1, "what was committed stays");
    assert_eq!(
        s.stored_offset("twice").await,
        stored,
        "the offset stays before the refused row, for a restart to resume from"
    );
}

#[tokio::test]
async fn messages_postgres_refuses_become_dead_letters_alone() {
    let s = setup("ing_refused", DsServerOptions::default()).await;
    let base = s.server.url();
    create_stream(&base, "odd", "text/plain").await;
    let ingest = Ingest::start(&s.db, &base, &["odd"], DEFAULT_MAX_EVENT_BYTES).await;
    // Lone surrogate escapes are valid JSON text to serde_json, but jsonb refuses them: a
    // high one, a low one (in a value and as a whole message), and one in the key, which
    // ingest reads itself and refuses before PostgreSQL sees it.
    post_raw(
        &base,
        "odd",
        "text/plain",
        br#"[{"key":"before"},{"key":"lone","v":"\ud800"},{"key":"low","v":"\udc00"},"\udc00",{"key":"\udc00"},{"key":"after"}]"#,
    )
    .await;
    post_raw(&base, "odd", "text/plain", br#"[{"key":"next"}]"#).await;
    s.wait_rows("odd", 3).await;
    s.wait_caught_up("odd").await;
    let keys: Vec<Option<String>> = s
        .sql
        .query("SELECT event_key FROM session_events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        keys,
        [
            Some("before".into()),
            Some("after".into()),
            Some("next".into())
        ]
    );
    let mut dead: Vec<(Vec<u8>, String)> = s
        .sql
        .query("SELECT raw, error FROM ds_sync.dead_letters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    dead.sort();
    let raws: Vec<&[u8]> = dead.iter().map(|(raw, _)| raw.as_slice()).collect();
    assert_eq!(
        raws,
        [
            &br#""\udc00""#[..],
            br#"{"key":"\udc00"}"#,
            br#"{"key":"lone","v":"\ud800"}"#,
            br#"{"key":"low","v":"\udc00"}"#,
        ]
    );
    for (raw, error) in &dead {
        let by_postgres = raw.as_slice() != br#"{"key":"\udc00"}"#;
        if by_postgres {
            assert!(
                error.starts_with("PostgreSQL refused the message as jsonb"),
                "{error}"
            );
        } else {
            assert!(error.contains("of the data event"), "{error}");
        }
    }
    ingest.stop().await;
}

#[tokio::test]
async fn lost_postgres_connections_lose_and_double_nothing() {
    let s = setup("ing_pgloss", DsServerOptions::default()).await;
    s.ds.ensure_stream("steady").await.unwrap();
    let ingest = Ingest::start(&s.db, &s.server.url(), &["steady"], DEFAULT_MAX_EVENT_BYTES).await;
    s.wait_status("steady", "streaming").await;
    let mut id = 0;
    for round in 0..6 {
        for _ in 0..10 {
            let msgs: Vec<String> = (id..id + 5).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
            s.post("steady", &format!("[{}]", msgs.join(","))).await;
            id += 5;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if round % 2 == 0 {
            // Every connection ingest holds, mid-stream, once it has reconnected after the
            // last round (its connections come back after a backoff).
            wait_until(
                "ingest to hold a PostgreSQL connection to terminate",
                Duration::from_secs(30),
                || async {
                    let killed: i64 = s
                        .sql
                        .query_one(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                             WHERE datname = current_database() \
                               AND application_name LIKE 'ds-sync%'",
                            &[],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    (killed > 0).then_some(killed)
                },
            )
            .await;
        }
    }
    s.wait_rows("steady", id).await;
    s.wait_caught_up("steady").await;
    let row = s
        .sql
        .query_one(
            "SELECT count(DISTINCT (payload->>'id')::int), min((payload->>'id')::int), \
                    max((payload->>'id')::int) FROM session_events",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i32>(1),
            row.get::<_, i32>(2)
        ),
        (id, 0, id as i32 - 1)
    );
    ingest.stop().await;
}
