//! The DS server a scenario talks to: the embedded `durable-streams-server` crate by default,
//! or another server as a child process, chosen by `DS_SYNC_TEST_DS_SERVER` (the DS server
//! matrix in `.ci/run`):
//!
//! | value | server |
//! |---|---|
//! | unset, `embedded` | `durable-streams-server` 0.3.0, in-process |
//! | `upstream` | the upstream Rust server (`durable-streams` 0.1.5), installed by `.ci/run` into `tests/ds-upstream` |
//! | `node` | the Node reference server (`@durable-streams/server` 0.3.7, `tests/node/ds-server.mjs`) |
//!
//! A child server keeps its streams in a directory of its own, so stopping and starting it
//! again (on the same port) keeps them, as the embedded server does. A test that needs the
//! embedded server's own options (limits, TLS, a router layer) cannot run on another server
//! and says so.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ds_sync::embedded::{DsServer, DsServerOptions};
use tokio::process::{Child, Command};

/// Which server `DS_SYNC_TEST_DS_SERVER` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Embedded,
    Upstream,
    Node,
}

impl Kind {
    /// The server this run uses.
    pub fn from_env() -> Kind {
        match std::env::var("DS_SYNC_TEST_DS_SERVER").as_deref() {
            Err(_) | Ok("" | "embedded") => Kind::Embedded,
            Ok("upstream") => Kind::Upstream,
            Ok("node") => Kind::Node,
            Ok(other) => {
                panic!("DS_SYNC_TEST_DS_SERVER={other:?}: expected embedded, upstream or node")
            }
        }
    }
}

/// A DS server for one test.
// One per test: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum TestServer {
    Embedded(DsServer),
    Child(ChildServer),
}

impl TestServer {
    /// Starts the server this run uses (see the module documentation).
    pub async fn start(opts: DsServerOptions) -> TestServer {
        match Kind::from_env() {
            Kind::Embedded => TestServer::Embedded(DsServer::start(opts).await.expect("DS server")),
            kind => {
                assert!(
                    plain(&opts),
                    "this test sets the embedded DS server's options ({opts:?}), which a \
                     {kind:?} server does not have: it is not part of the DS server matrix"
                );
                TestServer::Child(ChildServer::start(kind).await)
            }
        }
    }

    /// The base URL (streams are under `/v1/stream/`).
    pub fn url(&self) -> String {
        match self {
            TestServer::Embedded(s) => s.url(),
            TestServer::Child(c) => format!("http://127.0.0.1:{}", c.port),
        }
    }

    /// The URL of one stream.
    pub fn stream_url(&self, name: &str) -> String {
        format!("{}/v1/stream/{name}", self.url())
    }

    /// Stops serving; the streams are kept.
    pub async fn stop(&mut self) {
        match self {
            TestServer::Embedded(s) => s.stop().await,
            TestServer::Child(c) => c.stop().await,
        }
    }

    /// Serves again on the same port, with the same streams.
    pub async fn start_again(&mut self) -> Result<(), String> {
        match self {
            TestServer::Embedded(s) => s.start_again().await.map_err(|e| e.to_string()),
            TestServer::Child(c) => {
                c.spawn().await;
                Ok(())
            }
        }
    }
}

impl From<DsServer> for TestServer {
    fn from(server: DsServer) -> TestServer {
        TestServer::Embedded(server)
    }
}

/// Options a child server can stand in for: only the defaults (with any limits, which the
/// child servers do not have).
fn plain(opts: &DsServerOptions) -> bool {
    let d = DsServerOptions::default();
    opts.tls.is_none()
        && opts.layer.is_none()
        && opts.port == 0
        && opts.max_stream_bytes == d.max_stream_bytes
        && opts.max_total_bytes == d.max_total_bytes
        && opts.sse_reconnect_interval_secs == d.sse_reconnect_interval_secs
}

/// A DS server running as a child process.
pub struct ChildServer {
    kind: Kind,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ChildServer {
    async fn start(kind: Kind) -> ChildServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = ChildServer {
            kind,
            port,
            dir: tempfile::tempdir().expect("a data directory"),
            child: None,
        };
        server.spawn().await;
        server
    }

    fn command(&self) -> Command {
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("the server's data directory");
        let port = self.port.to_string();
        match self.kind {
            Kind::Upstream => {
                let bin: PathBuf = [
                    env!("CARGO_MANIFEST_DIR"),
                    "tests",
                    "ds-upstream",
                    "bin",
                    "durable-streams-server",
                ]
                .iter()
                .collect();
                let mut c = Command::new(bin);
                c.args(["--host", "127.0.0.1", "--port", &port, "--data-dir"])
                    .arg(&data)
                    .args(["--long-poll-timeout-ms", "2000"]);
                c
            }
            Kind::Node => {
                let script: PathBuf =
                    [env!("CARGO_MANIFEST_DIR"), "tests", "node", "ds-server.mjs"]
                        .iter()
                        .collect();
                let mut c = Command::new("node");
                c.arg(script).arg(&port).arg(&data);
                c
            }
            Kind::Embedded => unreachable!("the embedded server runs in-process"),
        }
    }

    /// Starts the process and waits until it accepts connections.
    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("server log");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the {:?} DS server: {e} (`bash .ci/run` installs it)",
                    self.kind
                )
            });
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the {:?} DS server exited ({status}):\n{}",
                    self.kind,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the {:?} DS server did not listen on {addr} within 30 s:\n{}",
            self.kind,
            self.log()
        );
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}
