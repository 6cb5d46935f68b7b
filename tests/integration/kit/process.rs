//! The `ds-sync` binary under test: one-shot commands ([`run_ds_sync`], [`Run`]) and
//! long-running `ds-sync run` processes ([`CaptureProcess`]) whose log goes to a file.

use std::process::Output;
use std::time::Duration;

use super::cluster::TestDb;
use super::wait::Wait;

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
    /// Behind a lock so that [`Self::try_exit`] works on a shared reference (a wait can
    /// watch the process while the test uses it).
    child: std::sync::Mutex<tokio::process::Child>,
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
        Self::start_on(db, ds_url, (&db.slot("cap"), "cap_pub"), args, env).await
    }

    /// [`Self::start_with_env`] with a slot and publication of the caller's choosing (several
    /// table groups in one database, each with its own).
    pub async fn start_on(
        db: &TestDb,
        ds_url: &str,
        (slot, publication): (&str, &str),
        args: &[&str],
        env: &[(&str, &str)],
    ) -> CaptureProcess {
        let mut all = vec!["run", "--slot", slot, "--publication", publication];
        all.extend_from_slice(args);
        let mut env = env.to_vec();
        env.insert(0, ("DS_SERVER_URL", ds_url));
        Self::spawn(db, &all, &env)
    }

    /// Any `ds-sync` command for `db` in the background, its log kept like `run`'s (one
    /// that waits, e.g. `snapshot` behind a table lock).
    pub fn spawn(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> CaptureProcess {
        let log = tempfile::NamedTempFile::new().expect("capture log file");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ds-sync"));
        cmd.args(args)
            .env_remove("DATABASE_URL")
            .env("POSTGRES_URL", &db.url)
            .env(
                "RUST_LOG",
                std::env::var("DS_SYNC_TEST_LOG").unwrap_or_else(|_| "ds_sync=debug".into()),
            )
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().expect("capture log file"))
            .kill_on_drop(true);
        let child = cmd.spawn().expect("starting ds-sync");
        CaptureProcess {
            child: std::sync::Mutex::new(child),
            log,
            db_url: db.url.clone(),
        }
    }

    /// Waits until the log contains `needle`: the process got that far. Only for what the
    /// log alone says (the line is the behaviour under test, or nothing else shows the
    /// moment); where the database or a stream says the same, wait on that instead.
    #[track_caller]
    pub fn wait_log<'a>(&'a self, needle: &'a str) -> impl Future<Output = ()> + 'a {
        self.wait_log_count(needle, 1)
    }

    /// How many times the log says `needle` so far.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until the log says `needle` at least `n` times; with `n` one more than
    /// [`Self::log_count`] before an action, it waits for what that action caused rather
    /// than passing on an earlier line. Panics with the log after 60 s.
    #[track_caller]
    pub fn wait_log_count<'a>(
        &'a self,
        needle: &'a str,
        n: usize,
    ) -> impl Future<Output = ()> + 'a {
        Wait::new(
            format!("{needle:?} {n} time(s) in the ds-sync log"),
            Duration::from_secs(60),
        )
        .log_of(self)
        .until(move || async move {
            let count = self.log_count(needle);
            if count >= n {
                Ok(())
            } else {
                Err(format!("{count} time(s)"))
            }
        })
    }

    /// The address the process serves its endpoints on (`--listen`), from its log line: with
    /// port 0 the log is the only place that says which port it got.
    pub async fn listen_addr(&self) -> String {
        const NEEDLE: &str = "metrics and health endpoints on http://";
        self.wait_log(NEEDLE).await;
        let log = self.log();
        let at = log.find(NEEDLE).expect("logged") + NEEDLE.len();
        log[at..]
            .split(|c: char| c.is_whitespace())
            .next()
            .expect("an address")
            .to_owned()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child()?.id()
    }

    /// The database it captures from.
    pub fn db_url(&self) -> &str {
        &self.db_url
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, then the exit code (panics after 60 s).
    pub async fn stop(mut self) -> (i32, String) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = tokio::time::timeout(
            Duration::from_secs(60),
            self.child.get_mut().expect("child lock").wait(),
        )
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
        let _ = self.child.get_mut().expect("child lock").kill().await;
        self.log()
    }

    /// SIGSTOP: the process stays connected but does nothing, like a hung instance.
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT: a frozen process goes on where it stopped.
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    fn child(&self) -> Option<std::sync::MutexGuard<'_, tokio::process::Child>> {
        self.child.lock().ok()
    }

    /// The exit code if the process has ended.
    pub fn try_exit(&self) -> Option<i32> {
        self.child()?
            .try_wait()
            .ok()
            .flatten()
            .map(|s| s.code().unwrap_or(-1))
    }

    /// Waits until the process ends by itself (panics with `what` and the log after 90 s)
    /// and returns its exit code.
    #[track_caller]
    pub fn wait_exit<'a>(&'a self, what: &str) -> impl Future<Output = i32> + 'a {
        Wait::new(format!("ds-sync to stop {what}"), Duration::from_secs(90))
            .log_of(self)
            .until(
                move || async move { self.try_exit().ok_or_else(|| "still running".to_string()) },
            )
    }
}
