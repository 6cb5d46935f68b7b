//! `--takeover` fences the process it takes over (README, "Fencing"): a paused process
//! that resumes after its successor started sends nothing more and stops, and the two do
//! not fight over the slot.

use ds_sync::embedded::DsServerOptions;

use crate::kit::{
    CaptureProcess, Scenario, scenario, start_streaming, streaming_pid, wait_keys_exactly,
    wait_streaming_anew,
};

async fn insert(sql: &tokio_postgres::Client, from: i32, to: i32) {
    sql.execute(
        "INSERT INTO s SELECT generate_series($1::int, $2::int)",
        &[&from, &to],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_paused_process_resumed_after_a_takeover_sends_nothing_and_stops() {
    let Scenario {
        mut server,
        client,
        db,
        sql,
        pg: _pg,
    } = scenario(
        "fence_pause",
        "CREATE TABLE s (id int PRIMARY KEY)",
        DsServerOptions::default(),
    )
    .await;
    let args = ["--tables", "s", "--takeover"];
    let old = start_streaming(&db, &server.url(), &args).await;
    insert(&sql, 1, 50).await;
    wait_keys_exactly(&client, "pg-s", 50).await;
    // The old process holds undelivered rows, retrying, when it is paused.
    server.stop().await;
    let retries = old.log_count("delivery failed, retrying");
    insert(&sql, 51, 100).await;
    old.wait_log_count("delivery failed, retrying", retries + 1)
        .await;
    old.freeze();
    server.start_again().await.unwrap();

    let walsender = streaming_pid(&sql, &db.slot("cap")).await.unwrap();
    assert!(
        walsender.is_some(),
        "the paused process still holds the slot"
    );
    let new = CaptureProcess::start(&db, &server.url(), &args).await;
    wait_streaming_anew(&sql, &db.slot("cap"), walsender).await;
    insert(&sql, 101, 150).await;
    wait_keys_exactly(&client, "pg-s", 150).await;

    old.resume();
    let code = old.wait_exit("after it was taken over").await;
    let log = old.log();
    assert_eq!(code, 7, "exit code 7 (taken over):\n{log}");
    assert!(log.contains("was taken over"), "{log}");
    insert(&sql, 151, 200).await;
    wait_keys_exactly(&client, "pg-s", 200).await;
    assert_eq!(
        new.log_count("streaming changes"),
        1,
        "the new process kept its slot (no reconnect):\n{}",
        new.log()
    );
    new.stop_ok().await;
}
