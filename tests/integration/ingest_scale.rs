//! A thousand streams ingested by one process, every event exactly once.

use bytes::Bytes;
use ds_sync::embedded::DsServerOptions;
use ds_sync::ingest::DEFAULT_MAX_EVENT_BYTES;
use tokio::task::JoinSet;

use crate::kit::ingest::{Ingest, PATIENCE, setup};
use crate::kit::wait_until;

const STREAMS: usize = 1000;

async fn post_to_all(ds: &ds_sync::ds::DsClient, names: &[String], round: usize, create: bool) {
    let mut tasks = JoinSet::new();
    for chunk in names.chunks(50) {
        let ds = ds.clone();
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            for name in chunk {
                if create {
                    ds.ensure_stream(&name).await.expect("PUT");
                }
                let body = format!(r#"[{{"key":"{name}-{round}","round":{round}}}]"#);
                ds.append(&name, Bytes::from(body), None)
                    .await
                    .expect("POST");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("poster task");
    }
}

#[tokio::test]
async fn a_thousand_streams_land_exactly_once() {
    let s = setup("ing_scale", DsServerOptions::default()).await;
    let names: Vec<String> = (0..STREAMS).map(|i| format!("scale/{i}")).collect();
    post_to_all(&s.ds, &names, 0, true).await;
    post_to_all(&s.ds, &names, 1, false).await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let ingest = Ingest::start(&s.db, &s.server.url(), &refs, DEFAULT_MAX_EVENT_BYTES).await;
    let sql = &s.sql;
    let expect = |n: usize| async move {
        wait_until(&format!("{n} rows"), PATIENCE * 4, || async {
            let c: i64 = sql
                .query_one("SELECT count(*) FROM session_events", &[])
                .await
                .ok()?
                .get(0);
            assert!(c <= n as i64, "{c} rows, more than {n}");
            (c == n as i64).then_some(())
        })
        .await;
    };
    expect(2 * STREAMS).await;
    // Live events on every stream while all thousand are subscribed.
    post_to_all(&s.ds, &names, 2, false).await;
    expect(3 * STREAMS).await;
    let row = s
        .sql
        .query_one(
            "SELECT count(DISTINCT stream_name), count(DISTINCT event_key), \
                    count(*) FILTER (WHERE event_key <> stream_name || '-' || (payload->>'round')) \
             FROM session_events",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), STREAMS as i64);
    assert_eq!(row.get::<_, i64>(1), 3 * STREAMS as i64);
    assert_eq!(
        row.get::<_, i64>(2),
        0,
        "a row landed under the wrong stream"
    );
    for name in names.iter().step_by(97) {
        s.wait_caught_up(name).await;
    }
    wait_until(
        "every subscription to report streaming",
        PATIENCE,
        || async {
            let n: i64 = sql
                .query_one(
                    "SELECT count(*) FROM ds_sync.subscriptions WHERE status = 'streaming'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (n == STREAMS as i64).then_some(())
        },
    )
    .await;
    ingest.stop().await;
}
