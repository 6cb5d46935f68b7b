//! Capture under faults: the DS server going away, SIGKILL at random moments, a stale
//! walsender holding the slot, a change the server will never accept, SIGTERM.

use std::time::Duration;

use ds_sync::ds::DsClient;
use ds_sync::embedded::DsServerOptions;

use crate::kit::{
    CaptureProcess, Rng, Scenario, Wait, scenario, start_streaming, stream_keys, streaming_pid,
    wait_streaming_anew, wait_until, wal_now,
};

const LONG: Duration = Duration::from_secs(90);

/// Waits until the stream holds `n` messages, then checks they are exactly 1..=n in order.
async fn expect_exactly_once(client: &DsClient, stream: &str, n: i64, capture: &CaptureProcess) {
    let got = Wait::new(format!("{n} messages in {stream}"), LONG)
        .context(|| format!("--- ds-sync log (tail) ---\n{}", capture.log_tail(30)))
        .until(|| async {
            let k = stream_keys(client, stream).await;
            if k.len() as i64 >= n {
                Ok(k)
            } else {
                Err(format!("{} there; {}", k.len(), describe_difference(&k, n)))
            }
        })
        .await;
    // Then nothing more arrives: a message after these would be a duplicate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_after = stream_keys(client, stream).await;
    assert_eq!(
        got_after.len(),
        got.len(),
        "messages kept arriving: duplicates"
    );
    let expected: Vec<i64> = (1..=n).collect();
    if got != expected {
        let dups = got.len() as i64 - n;
        let first_bad = got.iter().zip(&expected).position(|(a, b)| a != b);
        panic!(
            "stream differs from the committed rows: {} messages for {n} rows ({dups} extra), first difference at index {first_bad:?}: {}",
            got.len(),
            describe_difference(&got, n)
        );
    }
}

/// Missing and repeated keys, as ranges, for failure messages.
fn describe_difference(got: &[i64], n: i64) -> String {
    let mut seen = std::collections::HashMap::new();
    for k in got {
        *seen.entry(*k).or_insert(0) += 1;
    }
    let missing: Vec<i64> = (1..=n).filter(|k| !seen.contains_key(k)).collect();
    let repeated: Vec<i64> = (1..=n)
        .filter(|k| seen.get(k).is_some_and(|c| *c > 1))
        .collect();
    let out_of_order = got.windows(2).position(|w| w[1] <= w[0]);
    format!(
        "missing {} (first {:?}), repeated {} (first {:?}), first out of order at {out_of_order:?}",
        missing.len(),
        &missing[..missing.len().min(10)],
        repeated.len(),
        &repeated[..repeated.len().min(10)]
    )
}

#[tokio::test]
async fn the_ds_server_going_away_loses_nothing() {
    let Scenario {
        mut server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "fault_outage",
        "CREATE TABLE o (id int PRIMARY KEY)",
        DsServerOptions::default(),
    )
    .await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "o"]).await;
    sql.batch_execute("INSERT INTO o SELECT generate_series(1, 100)")
        .await
        .unwrap();
    wait_until("the first rows", LONG, || async {
        (crate::kit::stream_keys(&client, "pg-o").await.len() == 100).then_some(())
    })
    .await;
    server.stop().await;
    for i in 101..=200 {
        sql.execute("INSERT INTO o VALUES ($1)", &[&i])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.start_again().await.unwrap();
    expect_exactly_once(&client, "pg-o", 200, &capture).await;
    let log = capture.stop_ok().await;
    assert!(
        log.contains("retrying"),
        "the outage was noticed and retried:\n{log}"
    );
}

#[tokio::test]
async fn sigkill_at_random_moments_under_load_loses_and_duplicates_nothing() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "fault_kill",
        "CREATE TABLE k (id int PRIMARY KEY, pad text)",
        DsServerOptions::default(),
    )
    .await;
    let seed = Rng::clock_seed();
    eprintln!("sigkill test seed {seed}");
    let mut rng = Rng(seed);
    // The slot must exist before the first write: rows committed before it are the
    // snapshot's business, not the stream's.
    let first = start_streaming(&db, &server.url(), &["--tables", "k"]).await;
    let mut first = Some(first);

    let writer_db = db.client().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer_stop = stop.clone();
    let writer = tokio::spawn(async move {
        let mut next = 1i32;
        let mut wrng = Rng(seed ^ 0x5555);
        while !writer_stop.is_cancelled() {
            let rows = 1 + wrng.below(20) as i32;
            let sql = format!(
                "INSERT INTO k SELECT g, repeat('p', 50) FROM generate_series({next}, {}) g",
                next + rows - 1
            );
            writer_db.batch_execute(&sql).await.unwrap();
            next += rows;
            if wrng.below(4) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        next - 1
    });

    for round in 0..4 {
        let capture = match first.take() {
            Some(c) => c,
            None => CaptureProcess::start(&db, &server.url(), &["--tables", "k"]).await,
        };
        let alive = 300 + rng.below(1500);
        tokio::time::sleep(Duration::from_millis(alive)).await;
        let log = capture.kill().await;
        assert!(!log.contains("panicked"), "round {round}:\n{log}");
        // The walsender notices the dead client on its own; --takeover is not needed.
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
    }
    stop.cancel();
    let last = writer.await.unwrap() as i64;
    assert!(
        last > 100,
        "the writer wrote too little to test anything: {last}"
    );
    // A walsender of a killed process may still hold the slot until it notices.
    let stale = streaming_pid(&sql, &db.slot("cap")).await.unwrap();
    let capture = CaptureProcess::start(&db, &server.url(), &["--tables", "k", "--takeover"]).await;
    // Everything may already be in the stream; stop it only once it runs.
    wait_streaming_anew(&sql, &db.slot("cap"), stale).await;
    expect_exactly_once(&client, "pg-k", last, &capture).await;
    let (code, log) = capture.stop().await;
    assert_eq!(code, 0, "seed {seed}:\n{log}");
}

#[tokio::test]
async fn takeover_terminates_a_stale_walsender() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "fault_takeover",
        "CREATE TABLE s (id int PRIMARY KEY)",
        DsServerOptions::default(),
    )
    .await;
    let first = start_streaming(&db, &server.url(), &["--tables", "s"]).await;
    let slot = db.slot("cap");
    let holder: i32 = sql
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    // A second instance without --takeover waits as a standby and says for whom.
    let waiting = CaptureProcess::start(&db, &server.url(), &["--tables", "s"]).await;
    waiting
        .wait_log("standby: another ds-sync holds the slot lock")
        .await;
    assert!(
        waiting.log().contains(&format!("walsender pid {holder}")),
        "the standby names the holder's walsender:\n{}",
        waiting.log()
    );
    assert_eq!(
        waiting.try_exit(),
        None,
        "it keeps waiting instead of exiting"
    );
    let _ = waiting.kill().await;
    // A hung instance: its walsender stays connected and holds the slot.
    first.freeze();
    let frozen = first;
    let second = CaptureProcess::start(&db, &server.url(), &["--tables", "s", "--takeover"]).await;
    wait_until("the slot to move to a new walsender", LONG, || async {
        let row = sql
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&slot],
            )
            .await
            .ok()
            .flatten()?;
        (row.get::<_, i32>(0) != holder).then_some(())
    })
    .await;
    let _ = frozen.kill().await;
    sql.batch_execute("INSERT INTO s VALUES (1)").await.unwrap();
    expect_exactly_once(&client, "pg-s", 1, &second).await;
    second.stop_ok().await;
}

#[tokio::test]
async fn a_change_larger_than_the_server_accepts_stops_with_table_and_key() {
    let small = DsServerOptions {
        max_stream_bytes: 16 * 1024,
        ..DsServerOptions::default()
    };
    let Scenario {
        server,
        db,
        sql,
        pg: _pg,
        ..
    } = scenario(
        "fault_large",
        "CREATE TABLE l (id int PRIMARY KEY, big text)",
        small,
    )
    .await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "l"]).await;
    sql.execute("INSERT INTO l VALUES (42, $1)", &[&"y".repeat(64 * 1024)])
        .await
        .unwrap();
    // Past the commit and (nearly) nothing else: WAL written later, by the server's own
    // housekeeping, must not make a slot confirmed past the change look held.
    let committed: String = sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let code = capture.wait_exit("on the oversized change").await;
    let log = capture.log();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("table l") && log.contains("key 42"),
        "the error names table and key:\n{log}"
    );
    assert!(
        !passed(&sql, &db.slot("cap"), &committed).await,
        "the slot did not move past the undelivered change"
    );
}

/// A batch the server refuses with 413 is split and its halves retried in order: when the
/// stream's limit falls in the middle of a transaction, everything before the limit arrives,
/// once and in order, and ds-sync stops naming the first row that no longer fits.
#[tokio::test]
async fn a_refused_batch_is_split_and_delivers_its_prefix_in_order() {
    let small = DsServerOptions {
        max_stream_bytes: 16 * 1024,
        ..DsServerOptions::default()
    };
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "fault_split",
        "CREATE TABLE s (id int PRIMARY KEY, body text)",
        small,
    )
    .await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "s"]).await;
    // A first accepted POST ends recovery mode (one message per POST after a start), so the
    // transaction below leaves as one batch.
    sql.execute("INSERT INTO s VALUES (0, 'first')", &[])
        .await
        .unwrap();
    wait_until("the first row in the stream", LONG, || async {
        (client.read_all("pg-s").await.map(|m| m.len()).unwrap_or(0) == 1).then_some(())
    })
    .await;
    sql.execute(
        "INSERT INTO s SELECT g, repeat('z', 600) FROM generate_series(1, 60) g",
        &[],
    )
    .await
    .unwrap();
    let code = capture.wait_exit("at the stream limit").await;
    let log = capture.log();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("splitting"),
        "the refused batch was split:\n{log}"
    );
    let ids: Vec<i64> = client
        .read_all("pg-s")
        .await
        .unwrap()
        .iter()
        .map(|m| m["value"]["id"].as_i64().expect("an id"))
        .collect();
    let last = ids.len() as i64 - 1;
    assert!(
        (15..60).contains(&last),
        "more rows than one split half fit in 16 KiB: {ids:?}"
    );
    assert_eq!(ids, (0..=last).collect::<Vec<_>>(), "in order, once each");
    let next = last + 1;
    assert!(
        log.contains("table s") && log.contains(&format!("key {next}")),
        "the error names the first row that did not fit (key {next}):\n{log}"
    );
}

#[tokio::test]
async fn sigterm_delivers_then_confirms_everything() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "fault_sigterm",
        "CREATE TABLE g (id int PRIMARY KEY)",
        DsServerOptions::default(),
    )
    .await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "g"]).await;
    sql.batch_execute("INSERT INTO g SELECT generate_series(1, 5000)")
        .await
        .unwrap();
    expect_exactly_once(&client, "pg-g", 5000, &capture).await;
    // The commit LSN of the transaction (other databases share the cluster's WAL, so the
    // server's current position says nothing about this slot).
    let messages = client.read_all("pg-g").await.unwrap();
    let commit_lsn = messages[4999]["headers"]["lsn"]
        .as_str()
        .unwrap()
        .to_string();
    let log = capture.stop_ok().await;
    let confirmed_past: bool = sql
        .query_one(
            "SELECT confirmed_flush_lsn > $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
            &[&commit_lsn, &db.slot("cap")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        confirmed_past,
        "the slot confirms every delivered change on shutdown:\n{log}"
    );
}

#[tokio::test]
async fn a_lost_replication_connection_resumes_from_the_confirmed_position() {
    let Scenario {
        server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "fault_reconnect",
        "CREATE TABLE r (id int PRIMARY KEY)",
        DsServerOptions::default(),
    )
    .await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "r"]).await;
    sql.batch_execute("INSERT INTO r SELECT generate_series(1, 50)")
        .await
        .unwrap();
    let slot = db.slot("cap");
    for round in 0..3 {
        // The server ends the walsender, as a failover or an admin would.
        sql.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&slot],
        )
        .await
        .unwrap();
        let first = 51 + round * 50;
        sql.execute(
            "INSERT INTO r SELECT generate_series($1::int, $1::int + 49)",
            &[&first],
        )
        .await
        .unwrap();
    }
    expect_exactly_once(&client, "pg-r", 200, &capture).await;
    let log = capture.stop_ok().await;
    assert!(
        log.contains("resuming from the slot's confirmed position"),
        "the lost connection was noticed:\n{log}"
    );
}

/// A session whose probe row never comes back decoded (here: the signal table was taken out
/// of the publication, standing in for a slot that skips the publication's changes) confirms
/// no keepalive position, so the slot cannot move past skipped changes, and says so in the
/// log; once the probe of a later session comes back, confirmations resume.
#[tokio::test]
async fn a_session_whose_probe_is_not_decoded_holds_the_slot() {
    let Scenario {
        server,
        db,
        sql,
        pg: _pg,
        ..
    } = scenario(
        "fault_probe",
        "CREATE TABLE p (id int PRIMARY KEY); CREATE TABLE unpublished (id int)",
        DsServerOptions::default(),
    )
    .await;
    let slot = db.slot("cap");
    let capture = start_streaming(&db, &server.url(), &["--tables", "p"]).await;
    sql.batch_execute("ALTER PUBLICATION cap_pub DROP TABLE ds_sync.signals")
        .await
        .unwrap();
    restart_walsender(&sql, &slot).await;
    // The new session may still confirm the end of a transaction it read again (the
    // previous session's probe, if that session ended before confirming it): that WAL was
    // written before this point. Nothing written after it may be confirmed.
    let before = wal_now(&sql).await;
    sql.batch_execute("INSERT INTO unpublished SELECT generate_series(1, 20000)")
        .await
        .unwrap();
    let wal = wal_now(&sql).await;
    // A warning logged after the writes, not an earlier one: keepalives past them had time
    // to move the slot.
    let warned = capture.log_count(MISSING_PROBE);
    capture.wait_log_count(MISSING_PROBE, warned + 1).await;
    let confirmed_now = confirmed(&sql, &slot).await;
    let held: bool = sql
        .query_one(
            "SELECT $1::text::pg_lsn <= $2::text::pg_lsn",
            &[&confirmed_now, &before],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        held,
        "keepalives moved the slot to {confirmed_now}, past {before} (before the unpublished \
         writes), although the probe never came back:\n{}",
        capture.log()
    );
    assert!(!passed(&sql, &slot, &wal).await);
    sql.batch_execute("ALTER PUBLICATION cap_pub ADD TABLE ds_sync.signals")
        .await
        .unwrap();
    restart_walsender(&sql, &slot).await;
    wait_until("confirmations to resume", LONG, || async {
        passed(&sql, &slot, &wal).await.then_some(())
    })
    .await;
    capture.stop_ok().await;
}

const MISSING_PROBE: &str = "the probe row has not come back";

async fn confirmed(sql: &tokio_postgres::Client, slot: &str) -> String {
    sql.query_one(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}

async fn passed(sql: &tokio_postgres::Client, slot: &str, lsn: &str) -> bool {
    sql.query_one(
        "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots \
         WHERE slot_name = $1",
        &[&slot, &lsn],
    )
    .await
    .unwrap()
    .get(0)
}

/// Ends capture's walsender and waits until capture streams again over a new one.
async fn restart_walsender(sql: &tokio_postgres::Client, slot: &str) {
    let walsender = streaming_pid(sql, slot).await.unwrap();
    assert!(walsender.is_some(), "capture streams from {slot}");
    sql.execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
         WHERE slot_name = $1 AND active",
        &[&slot],
    )
    .await
    .unwrap();
    wait_streaming_anew(sql, slot, walsender).await;
}
