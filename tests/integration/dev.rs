//! `ds-sync dev`: the README's main-job command, with nothing but PostgreSQL installed.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use ds_sync::ds::{ClientOptions, DsClient};

use crate::kit::wait_until;

/// Pulls `prefix ... '<value>'` out of the banner line that starts with `prefix`.
fn quoted_after(banner: &str, prefix: &str) -> String {
    let line = banner
        .lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no '{prefix}' line in:\n{banner}"));
    line.split('\'')
        .nth(1)
        .unwrap_or_else(|| panic!("no quoted value in {line}"))
        .to_string()
}

#[tokio::test]
async fn dev_runs_capture_on_throwaway_servers_and_cleans_up() {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ds-sync"));
    cmd.arg("dev")
        .env_remove("POSTGRES_URL")
        .env_remove("DATABASE_URL")
        .env_remove("DS_SERVER_URL")
        .env("DS_SYNC_SLOT", "dev_smoke_slot")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("starting ds-sync dev");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut banner = String::new();
    let read_banner = async {
        while let Ok(Some(line)) = lines.next_line().await {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("Ctrl-C stops capture") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read_banner)
        .await
        .expect("the dev banner");
    let psql_url = quoted_after(&banner, "psql");
    let sse = quoted_after(&banner, "curl");
    let stream_url = sse.split('?').next().unwrap();
    let base = stream_url.split("/v1/stream/").next().unwrap();
    assert!(stream_url.ends_with("/v1/stream/pg-items"), "{banner}");

    let (client, conn) = tokio_postgres::connect(&psql_url, tokio_postgres::NoTls)
        .await
        .expect("the printed psql URL works");
    tokio::spawn(conn);
    client
        .batch_execute("INSERT INTO items (title, body) VALUES ('hello', 'world')")
        .await
        .unwrap();
    let ds = DsClient::new(base, ClientOptions::default()).unwrap();
    let messages = wait_until(
        "the demo row in pg-items",
        Duration::from_secs(60),
        || async {
            let m = ds.read_all("pg-items").await.ok()?;
            (!m.is_empty()).then_some(m)
        },
    )
    .await;
    assert_eq!(messages[0]["value"]["title"], "hello");
    drop(client);

    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let rest = async {
        let mut tail = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            tail.push_str(&line);
            tail.push('\n');
        }
        tail
    };
    let tail = tokio::time::timeout(Duration::from_secs(60), rest)
        .await
        .expect("dev exits after Ctrl-C");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{tail}");
    assert!(tail.contains("throwaway servers removed"), "{tail}");
    assert!(
        tokio_postgres::connect(&psql_url, tokio_postgres::NoTls)
            .await
            .is_err(),
        "the throwaway cluster is gone"
    );
}

#[tokio::test]
async fn dev_without_capture_only_serves_the_throwaway_servers() {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ds-sync"));
    cmd.args(["dev", "--no-capture"])
        .env_remove("POSTGRES_URL")
        .env_remove("DATABASE_URL")
        .env_remove("DS_SERVER_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("starting ds-sync dev --no-capture");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut banner = String::new();
    let read_banner = async {
        while let Ok(Some(line)) = lines.next_line().await {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("ingest running") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read_banner)
        .await
        .expect("the dev banner");
    assert!(banner.contains("without capture"), "{banner}");
    let psql_url = quoted_after(&banner, "psql");
    let (client, conn) = tokio_postgres::connect(&psql_url, tokio_postgres::NoTls)
        .await
        .expect("the printed psql URL works");
    tokio::spawn(conn);
    let slots: i64 = client
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "no capture, so no slot");
    client
        .batch_execute("SELECT 1 FROM items")
        .await
        .expect("the demo table exists for a capture to use");
    drop(client);
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(_)) = lines.next_line().await {}
        child.wait().await
    })
    .await
    .expect("dev exits after Ctrl-C")
    .unwrap();
    assert!(status.success());
}
