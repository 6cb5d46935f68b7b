//! Log output of the binary: plain text without ANSI escapes when stderr is a pipe, colours
//! only on a terminal (a pseudo-terminal here) and not with NO_COLOR, and JSON lines with
//! the documented fields.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ds_sync::embedded::{DsServer, DsServerOptions};

use crate::kit::{TestDb, test_db};

/// Where the child's stderr goes.
enum Stderr {
    Pipe,
    Terminal,
}

/// A pseudo-terminal: the controller side and the path of the terminal side.
fn open_pty() -> (std::fs::File, std::fs::File) {
    // SAFETY: plain libc calls on a descriptor this function owns; ptsname_r writes into a
    // buffer of the given length.
    #[allow(unsafe_code)]
    unsafe {
        let controller = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(
            controller >= 0,
            "posix_openpt: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::grantpt(controller), 0, "grantpt");
        assert_eq!(libc::unlockpt(controller), 0, "unlockpt");
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(
            libc::ptsname_r(controller, name.as_mut_ptr(), name.len()),
            0
        );
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        let terminal = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {path}: {e}"));
        (
            std::fs::File::from(OwnedFd::from_raw_fd(controller)),
            terminal,
        )
    }
}

/// Runs `ds-sync run --no-capture --ingest logs/x` until it logs that it ingests, stops it,
/// and returns what it wrote to stderr.
async fn ingest_log(db: &TestDb, ds_url: &str, stderr: Stderr, env: &[(&str, &str)]) -> String {
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ds-sync"));
    cmd.args(["run", "--no-capture", "--ingest", "logs/x"])
        .env_remove("NO_COLOR")
        .env_remove("DS_SYNC_LOG_FORMAT")
        .env("POSTGRES_URL", &db.url)
        .env("DS_SERVER_URL", ds_url)
        .env("RUST_LOG", "ds_sync=info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    let mut reader: Box<dyn Read + Send> = match stderr {
        Stderr::Pipe => {
            cmd.stderr(Stdio::piped());
            Box::new(std::io::empty())
        }
        Stderr::Terminal => {
            let (controller, terminal) = open_pty();
            cmd.stderr(Stdio::from(terminal));
            Box::new(controller)
        }
    };
    let mut child = cmd.spawn().expect("starting ds-sync");
    if let Some(pipe) = child.stderr.take() {
        let fd = pipe.into_owned_fd().unwrap();
        reader = Box::new(std::fs::File::from(fd));
    }
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    crate::kit::wait_until(
        "the ingesting log line",
        Duration::from_secs(60),
        || async { text().contains("ingesting").then_some(()) },
    )
    .await;
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("ds-sync stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "ds-sync exits 0:\n{}", text());
    text()
}

#[tokio::test]
async fn text_logs_have_colours_only_on_a_terminal_without_no_color() {
    let db = test_db("logs_text").await;
    let server = DsServer::start(DsServerOptions::default()).await.unwrap();
    let piped = ingest_log(&db, &server.url(), Stderr::Pipe, &[]).await;
    assert!(
        !piped.contains('\u{1b}'),
        "no escape codes when stderr is a pipe:\n{piped:?}"
    );
    let terminal = ingest_log(&db, &server.url(), Stderr::Terminal, &[]).await;
    assert!(
        terminal.contains("\u{1b}["),
        "colours on a terminal:\n{terminal:?}"
    );
    let no_color = ingest_log(&db, &server.url(), Stderr::Terminal, &[("NO_COLOR", "1")]).await;
    assert!(
        !no_color.contains('\u{1b}'),
        "NO_COLOR turns colours off:\n{no_color:?}"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_documented_fields() {
    let db = test_db("logs_json").await;
    let server = DsServer::start(DsServerOptions::default()).await.unwrap();
    let log = ingest_log(
        &db,
        &server.url(),
        Stderr::Pipe,
        &[("DS_SYNC_LOG_FORMAT", "json")],
    )
    .await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        for field in ds_sync::cli::JSON_LOG_FIELDS {
            assert!(line[field].is_string(), "{field} in {line}");
        }
    }
    let ingesting = lines
        .iter()
        .find(|l| l["message"] == "ingesting")
        .expect("the ingesting line");
    assert_eq!(
        ingesting["stream"], "logs/x",
        "event fields at the top level"
    );
    assert_eq!(ingesting["level"], "INFO");
}
