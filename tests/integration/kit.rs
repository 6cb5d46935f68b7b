//! The test kit: a shared PostgreSQL cluster, a fresh database per test, and a runner for
//! the `ds-sync` binary.
//!
//! The shared cluster lives in a static (one per test binary); statics are never dropped, so
//! an `atexit` hook stops it and removes its directory when the test binary exits, panicking
//! tests included. If the binary is killed outright, the server still dies with it (see
//! `ds_sync::embedded`).

#![allow(dead_code)]

use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use ds_sync::embedded::{LocalPostgres, PostgresOptions};

struct Shared {
    port: u16,
    password: String,
    server: Mutex<Option<LocalPostgres>>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

extern "C" fn stop_shared_cluster() {
    if let Some(shared) = SHARED.get()
        && let Ok(mut server) = shared.server.lock()
    {
        server.take();
    }
}

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let pg = start_cluster(&PostgresOptions::default());
        // SAFETY: registering a plain extern "C" function with no arguments.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(stop_shared_cluster);
        }
        Shared {
            port: pg.port(),
            password: pg.password().to_string(),
            server: Mutex::new(Some(pg)),
        }
    })
}

/// Starts a private cluster, or fails the test with the error and its hint.
pub fn start_cluster(opts: &PostgresOptions) -> LocalPostgres {
    match LocalPostgres::start(opts) {
        Ok(pg) => pg,
        Err(e) => panic!(
            "cannot start a PostgreSQL cluster for the tests: {e}\n{}",
            e.hint().unwrap_or_default()
        ),
    }
}

/// A fresh database in some cluster.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// Superuser URL of the cluster's `postgres` database (for CREATE DATABASE etc.).
    pub admin_url: String,
    pub port: u16,
    pub password: String,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A database named after the test, in the shared cluster.
pub async fn test_db(label: &str) -> TestDb {
    let s = shared();
    create_db(s.port, &s.password, label).await
}

/// A database in a cluster of its own, for tests that run a logical decoding consumer.
///
/// With decoders of other databases of the same cluster streaming, a slot created at that
/// moment was seen (about one run in five) to stream nothing for its publication: pgoutput
/// skipped every transaction (cause not established; see the README's known issue).
/// Capture tests therefore do not share a cluster. The cluster stops when the returned
/// value drops.
pub async fn own_cluster_db(label: &str) -> (LocalPostgres, TestDb) {
    let pg = tokio::task::spawn_blocking(|| start_cluster(&PostgresOptions::default()))
        .await
        .expect("starting a cluster");
    let db = create_db(pg.port(), pg.password(), label).await;
    (pg, db)
}

/// A database named after the test, in a given cluster.
pub async fn test_db_in(pg: &LocalPostgres, label: &str) -> TestDb {
    create_db(pg.port(), pg.password(), label).await
}

async fn create_db(port: u16, password: &str, label: &str) -> TestDb {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("t_{label}_{n}");
    let url_for = |db: &str| format!("postgres://postgres:{password}@127.0.0.1:{port}/{db}");
    let admin_url = url_for("postgres");
    let admin = connect(&admin_url).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
    TestDb {
        url: url_for(&name),
        name,
        admin_url,
        port,
        password: password.to_string(),
    }
}

/// Connects with tokio-postgres, driving the connection on a task.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test cluster: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

impl TestDb {
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// A slot name unique in the cluster (slots are cluster-wide, databases are not).
    pub fn slot(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.name)
    }

    /// Runs `ds-sync` against this database with a clean environment.
    pub async fn ds_sync(&self, args: &[&str]) -> Run {
        run_ds_sync(args, &[("POSTGRES_URL", self.url.as_str())]).await
    }
}

/// The outcome of one `ds-sync` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with the whole output unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit code {code}, got {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    pub fn ok(self) -> Run {
        self.expect_code(0)
    }

    /// Parses stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs the binary with only the given environment variables of ds-sync's own.
pub async fn run_ds_sync(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ds-sync"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("DS_SYNC_")
            || k.starts_with("POSTGRES_")
            || k == "DATABASE_URL"
            || k.starts_with("PG")
            || k == "DS_SERVER_URL"
        {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out: Output = cmd.output().await.expect("running the ds-sync binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A `ds-sync run` process under test. Its stderr goes to a file, shown when a test fails.
pub struct CaptureProcess {
    child: tokio::process::Child,
    log: tempfile::NamedTempFile,
    db_url: String,
}

impl CaptureProcess {
    /// Starts `ds-sync run` for `db` against the DS server at `ds_url`, with a slot and
    /// publication named after the database.
    pub async fn start(db: &TestDb, ds_url: &str, args: &[&str]) -> CaptureProcess {
        Self::start_with_env(db, ds_url, args, &[]).await
    }

    /// [`Self::start`] with more environment variables.
    pub async fn start_with_env(
        db: &TestDb,
        ds_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> CaptureProcess {
        let log = tempfile::NamedTempFile::new().expect("capture log file");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ds-sync"));
        cmd.arg("run")
            .args(["--slot", &db.slot("cap"), "--publication", "cap_pub"])
            .args(args)
            .env_remove("DATABASE_URL")
            .env("POSTGRES_URL", &db.url)
            .env("DS_SERVER_URL", ds_url)
            .env(
                "RUST_LOG",
                std::env::var("DS_SYNC_TEST_LOG").unwrap_or_else(|_| "ds_sync=debug".into()),
            )
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().expect("capture log file"))
            .kill_on_drop(true);
        let child = cmd.spawn().expect("starting ds-sync run");
        CaptureProcess {
            child,
            log,
            db_url: db.url.clone(),
        }
    }

    /// Waits until the log contains `needle`: the process got that far (e.g. its signal
    /// handlers are installed once it streams or ingests).
    pub async fn wait_log(&self, needle: &str) {
        self.wait_log_count(needle, 1).await;
    }

    /// How many times the log says `needle` so far.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until the log says `needle` at least `n` times; with `n` one more than
    /// [`Self::log_count`] before an action, it waits for what that action caused rather
    /// than passing on an earlier line. Panics with the log after 60 s.
    pub async fn wait_log_count(&self, needle: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.log_count(needle) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {needle:?} {n} time(s) in the ds-sync log:\n{}",
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The database it captures from.
    pub fn db_url(&self) -> &str {
        &self.db_url
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// SIGTERM, then the exit code (panics after 60 s).
    pub async fn stop(mut self) -> (i32, String) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let status = tokio::time::timeout(std::time::Duration::from_secs(60), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("ds-sync did not stop after SIGTERM:\n{}", self.log()))
            .expect("waiting for ds-sync");
        (status.code().unwrap_or(-1), self.log())
    }

    /// SIGTERM, then checks it exited 0; returns the log.
    pub async fn stop_ok(self) -> String {
        let (code, log) = self.stop().await;
        assert_eq!(code, 0, "ds-sync run exits 0 on SIGTERM:\n{log}");
        log
    }

    /// SIGKILL: no chance to flush or confirm anything.
    pub async fn kill(mut self) -> String {
        let _ = self.child.kill().await;
        self.log()
    }

    /// SIGSTOP: the process stays connected but does nothing, like a hung instance.
    pub fn freeze(&self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGSTOP,
            );
        }
    }

    /// SIGCONT: a frozen process goes on where it stopped.
    pub fn resume(&self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }

    /// The exit code if the process has ended.
    pub fn try_exit(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .map(|s| s.code().unwrap_or(-1))
    }

    /// Waits until the process ends by itself (panics with `what` and the log after 90 s)
    /// and returns its exit code.
    pub async fn wait_exit(&mut self, what: &str) -> i32 {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            if let Some(code) = self.try_exit() {
                return code;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ds-sync did not stop {what}:\n{}",
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// A seeded xorshift for tests that act at random moments; they print the seed, so a
/// failing run can be told apart. The state must not be zero.
pub struct Rng(pub u64);

impl Rng {
    /// An odd seed from the clock.
    pub fn clock_seed() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1)
    }

    /// The next number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Sends one HTTP request (for what the DS client does not send: other content types,
/// closing or deleting a stream) and returns the status and the body.
pub async fn http(
    method: hyper::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (hyper::StatusCode, bytes::Bytes) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(bytes::Bytes::copy_from_slice(body)))
        .unwrap();
    let res = client
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("request to {url}: {e}"));
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("response from {url}: {e}"))
        .to_bytes();
    (status, body)
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A client's view of a stream, as the State Protocol defines it: `reset` drops everything,
/// inserts and updates set `(type, key)` to `value`, deletes remove it; snapshot frames
/// change nothing.
pub fn materialize(
    messages: &[serde_json::Value],
) -> std::collections::BTreeMap<(String, String), serde_json::Value> {
    let mut state = std::collections::BTreeMap::new();
    for m in messages {
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        if m["headers"]["control"] == "reset" {
            state.clear();
            continue;
        }
        let id = (text(&m["type"]), text(&m["key"]));
        match m["headers"]["operation"].as_str() {
            Some("insert") | Some("update") => {
                state.insert(id, m["value"].clone());
            }
            Some("delete") => {
                state.remove(&id);
            }
            _ => {}
        }
    }
    state
}

/// The WAL position now: a slot confirmed at or past it has every earlier commit delivered.
pub async fn wal_now(sql: &tokio_postgres::Client) -> String {
    sql.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Whether the slot confirmed `lsn`.
pub async fn slot_passed(sql: &tokio_postgres::Client, slot: &str, lsn: &str) -> bool {
    sql.query_one(
        "SELECT coalesce(bool_or(confirmed_flush_lsn >= $2::text::pg_lsn), false) \
         FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot, &lsn],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until the capture slot confirmed `lsn` (panics with the log's tail after 300 s).
pub async fn wait_confirmed(
    sql: &tokio_postgres::Client,
    slot: &str,
    lsn: &str,
    capture: &CaptureProcess,
) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(300);
    while !slot_passed(sql, slot, lsn).await {
        if tokio::time::Instant::now() > deadline {
            let log = capture.log();
            let lines: Vec<&str> = log.lines().collect();
            panic!(
                "the slot did not confirm {lsn} (capture stalled?):\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Starts `ds-sync run` and waits until it streams.
pub async fn start_streaming(db: &TestDb, ds_url: &str, args: &[&str]) -> CaptureProcess {
    let capture = CaptureProcess::start(db, ds_url, args).await;
    wait_streaming(db).await;
    capture
}

/// Waits until capture holds its slot (it is streaming), so later writes are captured.
pub async fn wait_streaming(db: &TestDb) {
    let client = db.client().await;
    let slot = db.slot("cap");
    wait_for(
        "capture to hold its slot",
        std::time::Duration::from_secs(90),
        || async {
            let row = client
                // Held by the streaming connection, not by the snapshot's session (which
                // holds the slot while it creates it).
                .query_opt(
                    "SELECT s.active FROM pg_replication_slots s \
                     JOIN pg_stat_activity a ON a.pid = s.active_pid \
                     WHERE s.slot_name = $1 AND a.application_name = 'ds-sync'",
                    &[&slot],
                )
                .await
                .ok()
                .flatten()?;
            row.get::<_, bool>(0).then_some(())
        },
    )
    .await;
}

/// What a capture test starts from: a cluster of its own, a database with the test's
/// tables, an in-process DS server and a client for it.
pub struct Scenario {
    pub server: ds_sync::embedded::DsServer,
    pub client: ds_sync::ds::DsClient,
    pub db: TestDb,
    pub sql: tokio_postgres::Client,
    pub pg: LocalPostgres,
}

/// Sets a [`Scenario`] up, running `ddl` in the new database.
pub async fn scenario(label: &str, ddl: &str, ds: ds_sync::embedded::DsServerOptions) -> Scenario {
    let server = ds_sync::embedded::DsServer::start(ds)
        .await
        .expect("DS server");
    let client =
        ds_sync::ds::DsClient::new(&server.url(), ds_sync::ds::ClientOptions::default()).unwrap();
    let (pg, db) = own_cluster_db(label).await;
    let sql = db.client().await;
    sql.batch_execute(ddl)
        .await
        .unwrap_or_else(|e| panic!("test schema for {label}: {e}"));
    Scenario {
        server,
        client,
        db,
        sql,
        pg,
    }
}

/// The keys of a stream's messages in order (a key that is not a number reads as -1).
pub async fn stream_keys(client: &ds_sync::ds::DsClient, stream: &str) -> Vec<i64> {
    client
        .read_all(stream)
        .await
        .unwrap_or_default()
        .iter()
        .map(|m| m["key"].as_str().and_then(|k| k.parse().ok()).unwrap_or(-1))
        .collect()
}
