//! Retention of session_events: `init --partition-by`, the indexes readers need, `prune`
//! (batches, whole partitions, dead letters, bad input), `run --retention`, and pruning
//! while ingest runs (every event not pruned is there exactly once, and nothing pruned is
//! read again after a restart).

use std::time::Duration;

use ds_sync::embedded::DsServerOptions;

use crate::kit::ingest::{Ingest, PATIENCE, Setup, setup};
use crate::kit::{CaptureProcess, TestDb, test_db, wait_until};

/// The sync-layer document's columns, in order, with their types and nullability
/// (received_at is NOT NULL only when it is the partition key).
async fn columns(sql: &tokio_postgres::Client) -> Vec<(String, String)> {
    sql.query(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = 'public.session_events'::regclass AND attnum > 0 AND NOT attisdropped \
         ORDER BY attnum",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn document_columns() -> Vec<(String, String)> {
    [
        ("id", "integer"),
        ("stream_name", "text"),
        ("event_key", "text"),
        ("event_type", "text"),
        ("operation", "text"),
        ("payload", "jsonb"),
        ("ds_offset", "text"),
        ("received_at", "timestamp with time zone"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect()
}

async fn primary_key(sql: &tokio_postgres::Client) -> String {
    sql.query_one(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE conrelid = 'public.session_events'::regclass AND contype = 'p'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

async fn index_defs(sql: &tokio_postgres::Client) -> Vec<String> {
    sql.query(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'session_events' \
         ORDER BY indexname",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn partitions(sql: &tokio_postgres::Client) -> Vec<String> {
    sql.query(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'public.session_events'::regclass ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The name ds-sync gives the day partition `days` ago (negative: ahead), on the database's
/// clock.
async fn day_partition(sql: &tokio_postgres::Client, days: i32) -> String {
    sql.query_one(
        "SELECT 'session_events_p' || to_char((now() AT TIME ZONE 'UTC')::date - $1::int, 'YYYYMMDD')",
        &[&days],
    )
    .await
    .unwrap()
    .get(0)
}

/// Creates by hand the day partition `days` ago, as a long-running ds-sync would have.
async fn past_day_partition(sql: &tokio_postgres::Client, days: i32) -> String {
    let name = day_partition(sql, days).await;
    let bounds: (String, String) = {
        let r = sql
            .query_one(
                "SELECT to_char((now() AT TIME ZONE 'UTC')::date - $1::int, 'YYYY-MM-DD'), \
                        to_char((now() AT TIME ZONE 'UTC')::date - $1::int + 1, 'YYYY-MM-DD')",
                &[&days],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    sql.batch_execute(&format!(
        "CREATE TABLE public.{name} PARTITION OF public.session_events \
         FOR VALUES FROM ('{} 00:00:00+00') TO ('{} 00:00:00+00')",
        bounds.0, bounds.1
    ))
    .await
    .unwrap();
    name
}

/// Moves the rows of `stream` whose `n` is at most `upto` to `age` ago.
async fn age_rows(sql: &tokio_postgres::Client, stream: &str, upto: i64, age: &str) {
    sql.execute(
        &format!(
            "UPDATE session_events SET received_at = now() - interval '{age}' \
             WHERE stream_name = $1 AND (payload->>'n')::bigint <= $2"
        ),
        &[&stream, &upto],
    )
    .await
    .unwrap();
}

fn events(from: i64, to: i64) -> String {
    let items: Vec<String> = (from..=to)
        .map(|n| format!(r#"{{"key":"k{n}","n":{n}}}"#))
        .collect();
    format!("[{}]", items.join(","))
}

/// The `n` of every row of `stream`, sorted.
async fn stored_ns(sql: &tokio_postgres::Client, stream: &str) -> Vec<i64> {
    sql.query(
        "SELECT (payload->>'n')::bigint FROM session_events WHERE stream_name = $1 ORDER BY 1",
        &[&stream],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn init_without_partitioning_keeps_the_documents_table_and_adds_the_indexes() {
    let db = test_db("ret_plain").await;
    let out = db.ds_sync(&["init", "--output", "json"]).await;
    assert!(out.code == 0 || out.code == 3, "{out:?}");
    assert_eq!(
        out.json()["session_events"]["form"],
        "plain",
        "{}",
        out.stdout
    );
    let sql = db.client().await;
    assert_eq!(columns(&sql).await, document_columns());
    assert_eq!(primary_key(&sql).await, "PRIMARY KEY (id)");
    let relkind: String = sql
        .query_one(
            "SELECT relkind::text FROM pg_class WHERE oid = 'public.session_events'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(relkind, "r");
    let defs = index_defs(&sql).await;
    assert!(
        defs.iter()
            .any(|d| d.contains("session_events_stream_id_idx") && d.contains("(stream_name, id)")),
        "{defs:#?}"
    );
    assert!(
        defs.iter()
            .any(|d| d.contains("session_events_received_at_idx") && d.contains("(received_at)")),
        "{defs:#?}"
    );
    // The readers' queries use them.
    sql.batch_execute("SET enable_seqscan = off").await.unwrap();
    for (query, index) in [
        (
            "EXPLAIN SELECT * FROM session_events WHERE stream_name = 's' ORDER BY id LIMIT 10",
            "session_events_stream_id_idx",
        ),
        (
            "EXPLAIN SELECT * FROM session_events WHERE received_at > now() - interval '1 hour'",
            "session_events_received_at_idx",
        ),
    ] {
        let plan: Vec<String> = sql
            .query(query, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            plan.join("\n").contains(index),
            "{query}:\n{}",
            plan.join("\n")
        );
    }
}

#[tokio::test]
async fn init_partition_by_day_makes_a_partitioned_table_that_ingest_copies_into() {
    let s = setup("ret_part", DsServerOptions::default()).await;
    let out = s.db.ds_sync(&["init", "--partition-by", "day"]).await;
    assert!(out.code == 0 || out.code == 3, "{out:?}");
    assert!(
        out.stdout
            .contains("partitioned by day of received_at (created now)"),
        "{}",
        out.stdout
    );
    let sql = &s.sql;
    assert_eq!(columns(sql).await, document_columns());
    assert_eq!(primary_key(sql).await, "PRIMARY KEY (id, received_at)");
    let today = day_partition(sql, 0).await;
    let parts = partitions(sql).await;
    for days in 0..=3 {
        let name = day_partition(sql, -days).await;
        assert!(parts.contains(&name), "{name} in {parts:?}");
    }
    assert!(
        parts.contains(&"session_events_default".to_owned()),
        "{parts:?}"
    );
    let defs = index_defs(sql).await;
    assert!(
        defs.iter().any(|d| d.contains("(stream_name, id)")),
        "{defs:#?}"
    );
    assert!(
        defs.iter().any(|d| d.contains("(received_at)")),
        "{defs:#?}"
    );
    // Again: kept as it is.
    let again = s.db.ds_sync(&["init", "--partition-by", "day"]).await;
    assert!(
        again.stdout.contains("partitioned by day of received_at\n"),
        "{}",
        again.stdout
    );

    s.ds.ensure_stream("p").await.unwrap();
    let ingest = Ingest::start(&s.db, &s.server.url(), &["p"], 1 << 20).await;
    s.post("p", &events(1, 50)).await;
    s.wait_rows("p", 50).await;
    s.expect_exactly_once("p", "n", 50).await;
    let homes: Vec<String> = sql
        .query(
            "SELECT DISTINCT tableoid::regclass::text FROM session_events",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(homes, [today], "rows go to the current day's partition");
    ingest.stop().await;
}

#[tokio::test]
async fn partitioning_a_plain_table_with_rows_is_refused_with_the_way_to_migrate() {
    let db = test_db("ret_refuse").await;
    db.ds_sync(&["init"]).await.ok();
    let sql = db.client().await;
    sql.batch_execute("INSERT INTO session_events (stream_name, payload) VALUES ('s', '{}')")
        .await
        .unwrap();
    let out = db
        .ds_sync(&["init", "--partition-by", "month"])
        .await
        .expect_code(1);
    assert!(
        out.stderr
            .contains("already holds rows and is not partitioned"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("RENAME TO session_events_old"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("init --partition-by month"),
        "{}",
        out.stderr
    );
    let kept: i64 = sql
        .query_one("SELECT count(*) FROM session_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "nothing changed");
    assert_eq!(primary_key(&sql).await, "PRIMARY KEY (id)");

    // Another interval than the table was made with.
    let db = test_db("ret_refuse2").await;
    db.ds_sync(&["init", "--partition-by", "week"]).await.ok();
    let out = db
        .ds_sync(&["init", "--partition-by", "day"])
        .await
        .expect_code(1);
    assert!(
        out.stderr.contains("is partitioned by week"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn durations_that_do_not_parse_are_refused_with_what_is_accepted() {
    let db = test_db("ret_dur").await;
    for args in [
        &["prune", "--older-than", "3x"][..],
        &["prune", "--older-than", "ten days"][..],
        &["prune", "--dead-letters-older-than", "0s"][..],
        &["run", "--no-capture", "--retention", "soon"][..],
    ] {
        let out = db.ds_sync(args).await.expect_code(2);
        assert!(
            out.stderr.contains("not a duration") || out.stderr.contains("above zero"),
            "{args:?}: {}",
            out.stderr
        );
    }
    let out = db.ds_sync(&["prune"]).await.expect_code(2);
    assert!(out.stderr.contains("--older-than"), "{}", out.stderr);
}

#[tokio::test]
async fn prune_deletes_old_rows_in_batches_and_never_rereads_them() {
    let s = setup("ret_prune", DsServerOptions::default()).await;
    s.db.ds_sync(&["init"]).await.ok();
    for stream in ["a", "b"] {
        s.ds.ensure_stream(stream).await.unwrap();
    }
    let ingest = Ingest::start(&s.db, &s.server.url(), &["a", "b"], 1 << 20).await;
    s.post("a", &events(1, 30)).await;
    s.post("b", &events(1, 10)).await;
    s.wait_rows("a", 30).await;
    s.wait_rows("b", 10).await;
    s.wait_caught_up("a").await;
    ingest.stop().await;
    age_rows(&s.sql, "a", 20, "2 days").await;
    age_rows(&s.sql, "b", 10, "2 days").await;
    s.sql
        .batch_execute(
            "INSERT INTO ds_sync.dead_letters (stream_name, ds_offset, error, raw, size, truncated, created_at) VALUES \
             ('a', '0', 'old', '\\x00', 1, false, now() - interval '100 days'), \
             ('a', '0', 'new', '\\x00', 1, false, now())",
        )
        .await
        .unwrap();
    let offset_a = s.stored_offset("a").await;

    // Only stream a, in batches of 7: 20 rows take 3 statements.
    let out =
        s.db.ds_sync(&[
            "prune",
            "--older-than",
            "1d",
            "--stream",
            "a",
            "--batch-rows",
            "7",
            "--output",
            "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(out["rows_deleted"], 20, "{out:#}");
    assert_eq!(out["batches"], 3, "{out:#}");
    assert_eq!(stored_ns(&s.sql, "a").await, (21..=30).collect::<Vec<_>>());
    assert_eq!(s.count("b").await, 10, "other streams are left alone");

    let out =
        s.db.ds_sync(&[
            "prune",
            "--older-than",
            "36h",
            "--dead-letters-older-than",
            "90d",
        ])
        .await
        .ok();
    assert!(
        out.stdout.contains("deleted 10 rows")
            && out.stdout.contains("dead letters created before"),
        "{}",
        out.stdout
    );
    assert_eq!(s.count("b").await, 0);
    let errors: Vec<String> = s
        .sql
        .query("SELECT error FROM ds_sync.dead_letters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(errors, ["new"]);
    assert_eq!(
        s.stored_offset("a").await,
        offset_a,
        "offsets are not touched"
    );

    // A restart resumes after the last stored event: pruned events are not read again.
    let ingest = Ingest::start(&s.db, &s.server.url(), &["a", "b"], 1 << 20).await;
    s.post("a", &events(31, 32)).await;
    s.post("b", &events(11, 11)).await;
    s.wait_rows("a", 12).await;
    s.wait_rows("b", 1).await;
    s.wait_caught_up("a").await;
    s.wait_caught_up("b").await;
    assert_eq!(stored_ns(&s.sql, "a").await, (21..=32).collect::<Vec<_>>());
    // b's subscription ran (its new event is there) and read none of its pruned events.
    assert_eq!(stored_ns(&s.sql, "b").await, vec![11]);
    ingest.stop().await;
}

#[tokio::test]
async fn prune_drops_whole_partitions_then_deletes_the_rest_in_batches() {
    let s = setup("ret_drop", DsServerOptions::default()).await;
    s.db.ds_sync(&["init", "--partition-by", "day"]).await.ok();
    s.ds.ensure_stream("d").await.unwrap();
    let ingest = Ingest::start(&s.db, &s.server.url(), &["d"], 1 << 20).await;
    s.post("d", &events(1, 40)).await;
    s.wait_rows("d", 40).await;
    ingest.stop().await;
    let old = past_day_partition(&s.sql, 5).await;
    // 1..=10 move into the partition of 5 days ago, 11..=20 into the default partition
    // (no partition covers 3 days ago), 21..=40 stay today.
    age_rows(&s.sql, "d", 10, "5 days").await;
    s.sql
        .execute(
            "UPDATE session_events SET received_at = now() - interval '3 days' \
             WHERE (payload->>'n')::bigint BETWEEN 11 AND 20",
            &[],
        )
        .await
        .unwrap();
    let in_old: i64 = s
        .sql
        .query_one(&format!("SELECT count(*) FROM public.{old}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_old, 10);

    let out =
        s.db.ds_sync(&["prune", "--older-than", "1d", "--output", "json"])
            .await
            .ok()
            .json();
    assert_eq!(
        out["partitions_dropped"],
        serde_json::json!([old]),
        "{out:#}"
    );
    assert_eq!(
        out["rows_deleted"], 10,
        "the default partition's old rows: {out:#}"
    );
    assert!(!partitions(&s.sql).await.contains(&old));
    assert_eq!(stored_ns(&s.sql, "d").await, (21..=40).collect::<Vec<_>>());
    let today = day_partition(&s.sql, 0).await;
    assert!(
        partitions(&s.sql).await.contains(&today),
        "the current partition stays"
    );
}

/// Prunes repeatedly while events arrive and ingest copies them; afterwards every event not
/// pruned is there exactly once, and a restart reads none of the pruned ones again.
async fn prune_while_ingesting(s: &Setup, partitioned: bool) {
    const OLD: i64 = 200;
    const NEW: i64 = 400;
    let stream = "busy";
    s.ds.ensure_stream(stream).await.unwrap();
    let ingest = Ingest::start(&s.db, &s.server.url(), &[stream], 1 << 20).await;
    s.post(stream, &events(1, OLD)).await;
    s.wait_rows(stream, OLD).await;
    if partitioned {
        past_day_partition(&s.sql, 4).await;
    }
    age_rows(&s.sql, stream, OLD, "4 days").await;

    let poster = {
        let ds = s.ds.clone();
        tokio::spawn(async move {
            let mut n = OLD + 1;
            while n <= OLD + NEW {
                let last = (n + 9).min(OLD + NEW);
                ds.append(stream, bytes::Bytes::from(events(n, last)), None)
                    .await
                    .expect("POST");
                n = last + 1;
            }
        })
    };
    let mut dropped = 0;
    for _ in 0..3 {
        let out =
            s.db.ds_sync(&[
                "prune",
                "--older-than",
                "1d",
                "--batch-rows",
                "25",
                "--output",
                "json",
            ])
            .await
            .ok()
            .json();
        dropped += out["partitions_dropped"].as_array().map_or(0, Vec::len);
    }
    poster.await.unwrap();
    assert_eq!(
        dropped,
        usize::from(partitioned),
        "the old partition is dropped once"
    );
    s.wait_rows(stream, NEW).await;
    s.wait_caught_up(stream).await;
    assert_eq!(
        stored_ns(&s.sql, stream).await,
        (OLD + 1..=OLD + NEW).collect::<Vec<_>>()
    );
    ingest.stop().await;

    let ingest = Ingest::start(&s.db, &s.server.url(), &[stream], 1 << 20).await;
    s.post(stream, &events(OLD + NEW + 1, OLD + NEW + 1)).await;
    s.wait_rows(stream, NEW + 1).await;
    s.wait_caught_up(stream).await;
    assert_eq!(
        stored_ns(&s.sql, stream).await,
        (OLD + 1..=OLD + NEW + 1).collect::<Vec<_>>()
    );
    ingest.stop().await;
}

#[tokio::test]
async fn prune_while_ingest_runs_keeps_every_other_event_exactly_once() {
    let s = setup("ret_busy", DsServerOptions::default()).await;
    s.db.ds_sync(&["init"]).await.ok();
    prune_while_ingesting(&s, false).await;
}

#[tokio::test]
async fn prune_while_ingest_runs_into_a_partitioned_table() {
    let s = setup("ret_busy_p", DsServerOptions::default()).await;
    s.db.ds_sync(&["init", "--partition-by", "day"]).await.ok();
    prune_while_ingesting(&s, true).await;
}

async fn count_where(db: &TestDb, sql_text: &str) -> i64 {
    db.client()
        .await
        .query_one(sql_text, &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn run_prunes_periodically_and_creates_partitions_ahead() {
    let s = setup("ret_run", DsServerOptions::default()).await;
    s.db.ds_sync(&["init", "--partition-by", "day"]).await.ok();
    let ahead = day_partition(&s.sql, -3).await;
    s.sql
        .batch_execute(&format!("DROP TABLE public.{ahead}"))
        .await
        .unwrap();
    let insert_old = "INSERT INTO session_events (stream_name, payload, received_at) \
                      SELECT 'hand', '{}', now() - interval '2 hours' FROM generate_series(1, 5); \
                      INSERT INTO ds_sync.dead_letters (stream_name, ds_offset, error, raw, size, truncated, created_at) \
                      VALUES ('hand', '0', 'old', '\\x00', 1, false, now() - interval '3 hours')";
    s.sql.batch_execute(insert_old).await.unwrap();
    let process = CaptureProcess::start(
        &s.db,
        &s.server.url(),
        &[
            "--no-capture",
            "--retention",
            "1h",
            "--dead-letter-retention",
            "2h",
            "--retention-interval",
            "1s",
        ],
    )
    .await;
    let db = &s.db;
    wait_until(
        "the partition ahead to be created again",
        PATIENCE,
        || async {
            partitions(&db.client().await)
                .await
                .contains(&ahead)
                .then_some(())
        },
    )
    .await;
    let gone = || async {
        let rows = count_where(db, "SELECT count(*) FROM session_events").await;
        let letters = count_where(db, "SELECT count(*) FROM ds_sync.dead_letters").await;
        (rows == 0 && letters == 0).then_some(())
    };
    wait_until("old rows and dead letters pruned at start", PATIENCE, gone).await;
    // Later passes prune what aged since; recent rows stay.
    s.sql.batch_execute(insert_old).await.unwrap();
    s.sql
        .batch_execute(
            "INSERT INTO session_events (stream_name, payload) VALUES ('hand', '{\"recent\":1}')",
        )
        .await
        .unwrap();
    wait_until("old rows pruned by a later pass", PATIENCE, || async {
        let old = count_where(
            db,
            "SELECT count(*) FROM session_events WHERE payload = '{}'",
        )
        .await;
        let letters = count_where(db, "SELECT count(*) FROM ds_sync.dead_letters").await;
        (old == 0 && letters == 0).then_some(())
    })
    .await;
    assert_eq!(
        count_where(db, "SELECT count(*) FROM session_events").await,
        1
    );
    process.wait_log("retention pass done").await;
    tokio::time::timeout(Duration::from_secs(30), process.stop_ok())
        .await
        .expect("run stops within 30 s of SIGTERM");
}

/// `run` with ingest on a database where nothing was set up yet: ingest applies the schema
/// as it starts, and the first retention pass, at the same moment, must not fail on tables
/// that do not exist yet.
#[tokio::test]
async fn the_first_retention_pass_on_a_fresh_database_does_not_fail() {
    let db = test_db("ret_fresh").await;
    let server = ds_sync::embedded::DsServer::start(DsServerOptions::default())
        .await
        .unwrap();
    let process = CaptureProcess::start(
        &db,
        &server.url(),
        &["--no-capture", "--ingest", "fresh", "--retention", "1h"],
    )
    .await;
    wait_until("the first retention pass to end", PATIENCE, || async {
        let log = process.log();
        (log.contains("retention pass done") || log.contains("retention pass failed")).then_some(())
    })
    .await;
    let log = process.log();
    assert!(
        !log.contains("retention pass failed"),
        "the first pass failed:\n{log}"
    );
    let (code, log) = process.stop().await;
    assert_eq!(code, 0, "{log}");
}
