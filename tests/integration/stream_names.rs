//! Per-key streams a client can find: the official client builds the URL the ordinary way
//! (`encodeURIComponent` of each value; the README's rule for the few escaped values) and
//! reads exactly the rows of that value.

use std::time::Duration;

use serde_json::json;

use ds_sync::embedded::DsServerOptions;

use crate::kit::official_client::try_read;
use crate::kit::{Scenario, scenario, start_streaming, wait_until};

#[tokio::test]
async fn the_official_client_finds_every_per_key_stream() {
    let Scenario {
        server,
        db,
        sql,
        pg: _pg,
        ..
    } = scenario(
        "names_keys",
        "CREATE TABLE s (id int PRIMARY KEY, who text NOT NULL, v int)",
        DsServerOptions::default(),
    )
    .await;
    let base = server.url();
    let capture =
        start_streaming(&db, &base, &["--tables", "s", "--route", "s=x/{who}/{id}"]).await;
    // (value, what the client's URL path is after /v1/stream/ when the value is ordinary)
    let values: [(&str, Option<&str>); 8] = [
        ("a b", Some("x/a%20b/1")),
        ("ann@example.com", Some("x/ann%40example.com/2")),
        (
            "Grüße, 日本",
            Some("x/Gr%C3%BC%C3%9Fe%2C%20%E6%97%A5%E6%9C%AC/3"),
        ),
        ("x!*'()~", Some("x/x!*'()~/4")),
        ("a/b c", None),
        ("", None),
        ("50%", None),
        ("..", None),
    ];
    for (i, (who, _)) in values.iter().enumerate() {
        sql.execute("INSERT INTO s VALUES ($1, $2, 7)", &[&(i as i32 + 1), who])
            .await
            .unwrap();
    }
    for (i, (who, plain)) in values.iter().enumerate() {
        let id = (i + 1).to_string();
        let state = wait_until(
            &format!("the official client to read the stream of {who:?}"),
            Duration::from_secs(60),
            || async {
                try_read(&base, "x/{}/{}", &[who, &id])
                    .await
                    .ok()
                    .filter(|s| !s.rows("s").is_empty())
            },
        )
        .await;
        assert_eq!(
            state.rows("s"),
            [(id.clone(), json!({"id": i + 1, "who": who, "v": 7}))].into(),
            "the stream of {who:?} holds exactly its row"
        );
        if let Some(path) = plain {
            assert_eq!(
                state.url,
                format!("{base}/v1/stream/{path}"),
                "an ordinary value is found with encodeURIComponent alone"
            );
        }
    }
    // A value with a slash, encoded once without the README's escape, names the stream
    // x/a/b c/5 once the server decodes %2F: none exists, and no other value's rows leak.
    let naive = try_read(&base, "x/a%2Fb%20c/5", &[]).await;
    assert!(
        naive.as_ref().is_err_and(|e| e.contains("404")),
        "x/a/b c/5 must not exist: {naive:?}"
    );
    capture.stop_ok().await;
}
