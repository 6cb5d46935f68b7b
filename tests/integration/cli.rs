//! The binary's own behaviour: configuration precedence, help, errors without passwords.

use crate::kit::run_ds_sync;

fn setting<'a>(show: &'a serde_json::Value, key: &str) -> (&'a str, &'a str) {
    (
        show[key]["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing: {show:#}")),
        show[key]["source"].as_str().unwrap(),
    )
}

#[tokio::test]
async fn precedence_is_flag_then_env_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ds-sync.toml");
    std::fs::write(
        &file,
        "slot = \"file_slot\"\npublication = \"file_pub\"\nds_server_url = \"http://file:1\"\n\
         postgres_url = \"postgres://fileuser:filesecret@filehost/db\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let run = run_ds_sync(
        &[
            "config",
            "show",
            "--output",
            "json",
            "--config",
            file,
            "--slot",
            "flag_slot",
        ],
        &[
            ("DS_SYNC_SLOT", "env_slot"),
            ("DS_SYNC_PUBLICATION", "env_pub"),
        ],
    )
    .await
    .ok();
    let show = run.json();
    assert_eq!(setting(&show, "slot"), ("flag_slot", "flag"));
    assert_eq!(setting(&show, "publication"), ("env_pub", "env"));
    assert_eq!(setting(&show, "ds_server_url"), ("http://file:1", "file"));
    assert_eq!(setting(&show, "log_format"), ("text", "default"));
    assert_eq!(
        setting(&show, "postgres_url"),
        ("postgres://fileuser@filehost:5432/db", "file")
    );
    assert!(
        !run.stdout.contains("filesecret"),
        "the password is never printed"
    );

    let run = run_ds_sync(
        &["config", "show", "--output", "json", "--config", file],
        &[("DATABASE_URL", "postgres://envuser:envsecret@envhost/db")],
    )
    .await
    .ok();
    assert_eq!(
        setting(&run.json(), "postgres_url"),
        ("postgres://envuser@envhost:5432/db", "env")
    );
    let run = run_ds_sync(
        &["config", "show", "--output", "json", "--config", file],
        &[
            ("DATABASE_URL", "postgres://envuser@envhost/db"),
            ("POSTGRES_URL", "postgres://pguser@pghost/db"),
        ],
    )
    .await
    .ok();
    assert_eq!(
        setting(&run.json(), "postgres_url").0,
        "postgres://pguser@pghost:5432/db"
    );
}

#[tokio::test]
async fn a_bad_config_file_is_named_with_the_offending_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "slto = \"typo\"\n").unwrap();
    let run = run_ds_sync(&["config", "show", "--config", file.to_str().unwrap()], &[])
        .await
        .expect_code(1);
    assert!(
        run.stderr.contains("bad.toml") && run.stderr.contains("slto"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Accepted keys"), "{}", run.stderr);
    let run = run_ds_sync(&["config", "show", "--config", "/nonexistent/x.toml"], &[])
        .await
        .expect_code(1);
    assert!(run.stderr.contains("/nonexistent/x.toml"), "{}", run.stderr);
}

#[tokio::test]
async fn connection_errors_never_show_the_password() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://someone:hunter2secret@127.0.0.1:{closed}/db");
    let run = run_ds_sync(&["slot", "list", "--postgres-url", &url], &[])
        .await
        .expect_code(1);
    assert!(
        run.stderr
            .contains("could not connect to postgres://someone@127.0.0.1"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2secret") && !run.stdout.contains("hunter2secret"));
    let run = run_ds_sync(
        &["slot", "list"],
        &[(
            "POSTGRES_URL",
            "postgres://someone:hunter2secret@127.0.0.1:notaport/db",
        )],
    )
    .await
    .expect_code(1);
    assert!(
        run.stderr.contains("invalid Postgres URL"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2secret"), "{}", run.stderr);
}

#[tokio::test]
async fn missing_url_says_how_to_give_one() {
    let run = run_ds_sync(&["slot", "list"], &[]).await.expect_code(1);
    assert!(
        run.stderr.contains("no Postgres URL given") && run.stderr.contains("POSTGRES_URL"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn help_explains_commands_with_examples_and_exit_codes() {
    let top = run_ds_sync(&["--help"], &[]).await.ok();
    for needle in [
        "slot",
        "publication",
        "init",
        "Exit codes",
        "POSTGRES_URL",
        "DS_SERVER_URL",
    ] {
        assert!(
            top.stdout.contains(needle),
            "top-level help lacks {needle}:\n{}",
            top.stdout
        );
    }
    let env_secret = run_ds_sync(&["--help"], &[("POSTGRES_URL", "postgres://u:envpw@h/db")])
        .await
        .ok();
    assert!(
        !env_secret.stdout.contains("envpw"),
        "help never shows the URL from the environment"
    );
    for sub in [
        &["slot", "create", "--help"][..],
        &["slot", "drop", "--help"],
        &["publication", "create", "--help"],
        &["init", "--help"],
    ] {
        let run = run_ds_sync(sub, &[]).await.ok();
        assert!(
            run.stdout.contains("Example"),
            "{sub:?} help has no example:\n{}",
            run.stdout
        );
    }
    run_ds_sync(&["slot", "nosuch"], &[]).await.expect_code(2);
}

#[tokio::test]
async fn json_logs_are_json() {
    let run = run_ds_sync(
        &["slot", "list", "--log-format", "json"],
        &[
            ("POSTGRES_URL", "postgres://u@127.0.0.1:1/db"),
            ("RUST_LOG", "ds_sync=debug"),
        ],
    )
    .await
    .expect_code(1);
    for line in run.stderr.lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
}

/// The `THP_enabled` line of a process's `/proc/PID/status`.
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no THP_enabled line in /proc/{pid}/status"))
}

/// ds-sync opts out of transparent huge pages (its allocator's eagerly committed arenas
/// would otherwise become resident 2 MiB at a time), unless `MIMALLOC_ALLOW_THP` is set.
#[tokio::test]
async fn the_process_runs_without_transparent_huge_pages() {
    let db = crate::kit::test_db("thp").await;
    db.client()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("creating the table");
    let server = ds_sync::embedded::DsServer::start(ds_sync::embedded::DsServerOptions::default())
        .await
        .expect("DS server");
    let sql = db.client().await;
    let mut walsender = None;
    for (env, expected) in [(&[][..], "0"), (&[("MIMALLOC_ALLOW_THP", "1")][..], "1")] {
        let run =
            crate::kit::CaptureProcess::start_with_env(&db, &server.url(), &["--tables", "t"], env)
                .await;
        let pid = run.pid().expect("the process's id");
        walsender = Some(crate::kit::wait_streaming_anew(&sql, &db.slot("cap"), walsender).await);
        assert_eq!(
            thp_enabled(pid),
            expected,
            "THP_enabled of ds-sync run with {env:?}"
        );
        run.stop_ok().await;
    }
}

/// An environment value other than the default for each of `run`'s options with an env var.
fn env_sample(id: &str) -> Option<&'static str> {
    Some(match id {
        "tables" => "a,b",
        "insert_only" => "c",
        "toast" => "partial",
        "stream_template" => "s/{table}",
        "batch_max_messages" => "7",
        "batch_max_bytes" => "7000",
        "linger_ms" => "5",
        "max_buffer_bytes" => "9000",
        "max_in_flight" => "3",
        "request_timeout_ms" => "1234",
        "snapshot" => "never",
        "snapshot_workers" => "2",
        "snapshot_chunk_rows" => "50",
        "on_slot_lost" => "recreate",
        "pgoutput_protocol" => "2",
        "shutdown_timeout_ms" => "2500",
        "standby_takeover_after_ms" => "4000",
        "keep_replica_identity" | "takeover" | "failover_slot" | "metrics_stream_labels" => "true",
        "streams" => "s1",
        "ingest_max_event_bytes" => "1024",
        "ingest_batch_max_rows" => "77",
        "ingest_max_buffer_bytes" => "65536",
        "ingest_idle_timeout" => "90s",
        "ingest_lease_ttl" => "5s",
        "retention" => "30d",
        "dead_letter_retention" => "90d",
        "retention_interval" => "5m",
        _ => return None,
    })
}

/// `config show` lists each of `run`'s options that has an environment variable, with the
/// source `env` when only the environment sets it, and still `env` over a config file that
/// sets it too (a switch set to false in the environment included).
#[tokio::test]
async fn config_show_lists_every_run_option_set_by_env_with_its_source() {
    use clap::CommandFactory;
    let cmd = ds_sync::cli::args::Cli::command();
    let run = cmd.find_subcommand("run").unwrap();
    let ingest_prefix = |id: &str| id.strip_prefix("ingest_").map(str::to_owned);
    let mut env: Vec<(String, String, String)> = Vec::new();
    for arg in run.get_arguments().filter(|a| !a.is_global_set()) {
        let Some(var) = arg.get_env() else { continue };
        let id = arg.get_id().as_str();
        let value = env_sample(id).unwrap_or_else(|| panic!("no sample for --{id} here"));
        let path = match ingest_prefix(id) {
            Some(key) => format!("ingest.{key}"),
            None if [
                "streams",
                "retention",
                "dead_letter_retention",
                "retention_interval",
            ]
            .contains(&id) =>
            {
                format!("ingest.{id}")
            }
            None => format!("capture.{id}"),
        };
        env.push((var.to_string_lossy().into_owned(), value.to_owned(), path));
    }
    assert!(
        env.len() >= 20,
        "run's options with an env var: {}",
        env.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ds-sync.toml");
    std::fs::write(
        &file,
        "[capture]\nbatch_max_messages = 99\ntakeover = true\n[ingest]\nidle_timeout = \"3m\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let vars: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v, _)| (k.as_str(), v.as_str()))
        .collect();
    for extra in [&[][..], &["--config", file][..]] {
        let args = [&["config", "show", "--output", "json"][..], extra].concat();
        let show = run_ds_sync(&args, &vars).await.ok().json();
        for (var, value, path) in &env {
            let (section, key) = path.split_once('.').unwrap();
            let option = &show[section][key];
            assert_eq!(
                option["source"], "env",
                "{var} ({path}) with {args:?}: {show:#}"
            );
            assert_ne!(option["value"], serde_json::Value::Null, "{var}: {value}");
        }
    }
    let off = [("DS_SYNC_TAKEOVER", "false")];
    let show = run_ds_sync(
        &["config", "show", "--output", "json", "--config", file],
        &off,
    )
    .await
    .ok()
    .json();
    assert_eq!(show["capture"]["takeover"]["value"], false, "{show:#}");
    assert_eq!(show["capture"]["takeover"]["source"], "env");
    assert_eq!(show["capture"]["batch_max_messages"]["value"], 99);
    assert_eq!(show["capture"]["batch_max_messages"]["source"], "file");
    assert_eq!(show["ingest"]["idle_timeout"]["value"], "3m");
    assert_eq!(show["capture"]["linger_ms"]["source"], "default");
}
