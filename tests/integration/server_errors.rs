//! Errors say what the server said: with `durable-streams-server`'s default stream limit
//! (10 MiB), a full stream stops capture with the server's own words and the hint about the
//! stream's limit, not about the size of the request.

use ds_sync::embedded::DsServerOptions;

use crate::kit::{Scenario, scenario, start_streaming};

#[tokio::test]
async fn a_full_stream_stops_capture_with_the_servers_words_and_the_fitting_hint() {
    let limits = durable_streams_server::Config::default().limits;
    let opts = DsServerOptions {
        max_stream_bytes: limits.max_stream_bytes,
        ..DsServerOptions::default()
    };
    assert_eq!(
        opts.max_stream_bytes,
        10 << 20,
        "the server's default stream limit"
    );
    let Scenario {
        server,
        db,
        sql,
        pg: _pg,
        ..
    } = scenario(
        "errors_full",
        "CREATE TABLE items (id int PRIMARY KEY, title text, body text)",
        opts,
    )
    .await;
    let capture = start_streaming(&db, &server.url(), &["--tables", "items"]).await;
    // About 1 KiB per message: the stream is full after roughly 9,000 of these 12,000 rows.
    sql.batch_execute(
        "INSERT INTO items SELECT g, 'item ' || g, repeat('x', 1000) FROM generate_series(1, 12000) g",
    )
    .await
    .unwrap();
    let code = capture.wait_exit("when the stream is full").await;
    let log = capture.log();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("stream pg-items; the server said: 413 Payload Too Large: Stream size limit exceeded (code PAYLOAD_TOO_LARGE, type /errors/payload-too-large)"),
        "the error quotes the server:\n{log}"
    );
    assert!(
        log.contains("The stream is full") && log.contains("DS_LIMITS__MAX_STREAM_BYTES"),
        "the hint names the stream's limit:\n{log}"
    );
    assert!(
        !log.contains("request size limit"),
        "and not the request size:\n{log}"
    );
}
