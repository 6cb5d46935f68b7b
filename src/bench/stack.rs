//! The servers a scenario runs against, and ds-sync itself as a child process.
//!
//! ds-sync runs as a separate process (this executable, `run ...`) so that its memory and CPU
//! are its own and the figures are those of the shipped binary, not of a library call inside
//! the runner. Postgres is a throwaway cluster tuned the same way for every consumer it is
//! compared with; the DS server is served in this process unless a URL is given.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::BenchError;
use crate::ds::{ClientOptions, DsAccess, DsClient};
use crate::embedded::{DsServer, DsServerOptions, LocalPostgres, PostgresOptions};
use crate::pg::PgTarget;

/// Server settings for throughput runs: no checkpoint in the middle of a backlog, WAL
/// segments kept for recycling across the checkpoints between measured phases (creating and
/// zero-filling new ones would slow whichever phase wrote first), room for the slots a
/// scenario creates. Every consumer in a run reads the same cluster.
const PG_SETTINGS: &[(&str, &str)] = &[
    ("max_wal_size", "8GB"),
    ("min_wal_size", "4GB"),
    ("shared_buffers", "512MB"),
    ("max_replication_slots", "16"),
    ("max_wal_senders", "16"),
    ("wal_sender_timeout", "0"),
];

/// A Postgres and a DS server, throwaway or given.
pub(super) struct Stack {
    local_pg: Option<Arc<Mutex<LocalPostgres>>>,
    /// Behind a lock so that a scenario holding `&Stack` can restart it.
    ds_server: Option<tokio::sync::Mutex<DsServer>>,
    target: PgTarget,
    pub ds_url: String,
    pub ds: DsClient,
    /// Credentials and TLS files of a given DS server, passed to the ds-sync child.
    ds_access: DsAccess,
}

impl Stack {
    /// Starts what is not given; `ds_access` applies to a given DS server only.
    pub(super) async fn start(
        target: Option<PgTarget>,
        ds_url: Option<String>,
        ds_access: DsAccess,
    ) -> Result<Stack, BenchError> {
        let local_pg = match target {
            Some(_) => None,
            None => Some(
                tokio::task::spawn_blocking(|| {
                    LocalPostgres::start(&PostgresOptions {
                        settings: PG_SETTINGS
                            .iter()
                            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                            .collect(),
                        ..PostgresOptions::default()
                    })
                })
                .await
                .map_err(|e| BenchError::Setup(format!("starting PostgreSQL: {e}")))??,
            ),
        };
        let local_pg = local_pg.map(|pg| Arc::new(Mutex::new(pg)));
        let target = match (target, &local_pg) {
            (Some(t), _) => t,
            (None, Some(pg)) => PgTarget::parse(&lock(pg).url("postgres"), None)
                .map_err(|e| BenchError::Setup(format!("the local cluster's URL: {e}")))?,
            (None, None) => unreachable!("a cluster is started when no target is given"),
        };
        let (ds_server, ds_access) = match ds_url {
            Some(_) => (None, ds_access),
            None => (
                Some(DsServer::start(DsServerOptions::default()).await?),
                DsAccess::default(),
            ),
        };
        let ds_url =
            ds_url.unwrap_or_else(|| ds_server.as_ref().map(DsServer::url).unwrap_or_default());
        let ds_server = ds_server.map(tokio::sync::Mutex::new);
        let ds = DsClient::new(
            &ds_url,
            ClientOptions {
                access: ds_access.clone(),
                ..ClientOptions::default()
            },
        )?;
        Ok(Stack {
            local_pg,
            ds_server,
            target,
            ds_url,
            ds,
            ds_access,
        })
    }

    /// A new SQL connection.
    pub(super) async fn sql(&self) -> Result<tokio_postgres::Client, BenchError> {
        Ok(self.target.connect().await?)
    }

    pub(super) fn target(&self) -> &PgTarget {
        &self.target
    }

    /// A `key=value` connection string without the password (which goes in `PGPASSWORD`)
    /// and the TLS settings (which go in `PGSSL*`), so it never shows in a process listing.
    fn conninfo(&self) -> String {
        self.conninfo_at(&self.target.host(), self.target.port())
    }

    /// [`conninfo`](Self::conninfo) for another address of the same server (a proxy in
    /// front of it).
    pub(super) fn conninfo_at(&self, host: &str, port: u16) -> String {
        let t = &self.target;
        format!(
            "host={host} port={port} user={} dbname={}",
            t.user(),
            t.dbname()
        )
    }

    /// True when the runner started the DS server (its offsets encode message counts).
    pub(super) fn embedded_ds(&self) -> bool {
        self.ds_server.is_some()
    }

    /// True when the runner started Postgres.
    pub(super) fn embedded_pg(&self) -> bool {
        self.local_pg.is_some()
    }

    /// Stops the throwaway cluster (fast shutdown: clients are disconnected); its data stays
    /// for [`start_postgres_again`](Self::start_postgres_again).
    pub(super) async fn stop_postgres(&self) -> Result<(), BenchError> {
        let pg = self.own_postgres()?;
        tokio::task::spawn_blocking(move || lock(&pg).stop())
            .await
            .map_err(|e| BenchError::Setup(format!("stopping PostgreSQL: {e}")))
    }

    /// Starts the throwaway cluster again on the same port, with the same data.
    pub(super) async fn start_postgres_again(&self) -> Result<(), BenchError> {
        let pg = self.own_postgres()?;
        tokio::task::spawn_blocking(move || lock(&pg).start_again())
            .await
            .map_err(|e| BenchError::Setup(format!("starting PostgreSQL: {e}")))??;
        Ok(())
    }

    /// Stops the throwaway cluster the way `pg_ctl stop -m immediate` does (a crash: no
    /// checkpoint, crash recovery at the next start); its data stays.
    pub(super) async fn crash_postgres(&self) -> Result<(), BenchError> {
        let pg = self.own_postgres()?;
        tokio::task::spawn_blocking(move || lock(&pg).stop_immediately())
            .await
            .map_err(|e| BenchError::Setup(format!("stopping PostgreSQL: {e}")))
    }

    /// Stops the in-process DS server (open connections end, new ones are refused); its
    /// streams stay for [`start_ds_server_again`](Self::start_ds_server_again).
    pub(super) async fn stop_ds_server(&self) -> Result<(), BenchError> {
        self.own_ds_server()?.lock().await.stop().await;
        Ok(())
    }

    /// Serves the in-process DS server again on the same port, with the same streams.
    pub(super) async fn start_ds_server_again(&self) -> Result<(), BenchError> {
        Ok(self.own_ds_server()?.lock().await.start_again().await?)
    }

    fn own_ds_server(&self) -> Result<&tokio::sync::Mutex<DsServer>, BenchError> {
        self.ds_server.as_ref().ok_or_else(|| {
            BenchError::Setup(
                "this scenario restarts the DS server, so it needs the in-process one: run it \
                 without --ds-server-url"
                    .into(),
            )
        })
    }

    fn own_postgres(&self) -> Result<Arc<Mutex<LocalPostgres>>, BenchError> {
        self.local_pg.clone().ok_or_else(|| {
            BenchError::Setup(
                "this scenario stops PostgreSQL, so it needs the throwaway cluster: run it \
                 without --postgres-url"
                    .into(),
            )
        })
    }
}

fn lock(pg: &Mutex<LocalPostgres>) -> std::sync::MutexGuard<'_, LocalPostgres> {
    pg.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`: with the
/// in-process DS server, most of it is the server's.
pub(super) fn own_cpu_seconds() -> Option<f64> {
    proc_cpu_seconds("self")
}

/// CPU time (user + system) process `pid` has used (another user's process too: `/proc/PID/stat`
/// is world-readable).
pub(super) fn pid_cpu_seconds(pid: i32) -> Option<f64> {
    proc_cpu_seconds(&pid.to_string())
}

fn proc_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz.max(1.0))
}

/// A running `ds-sync` child process.
pub(super) struct DsSyncProcess {
    child: Child,
    pid: u32,
    pub started: Instant,
    log: PathBuf,
}

impl DsSyncProcess {
    /// Runs `ds-sync ARGS` against the stack, logging to `log`.
    pub(super) fn spawn(
        exe: &Path,
        stack: &Stack,
        args: &[&str],
        log: &Path,
    ) -> Result<DsSyncProcess, BenchError> {
        DsSyncProcess::spawn_with_env(exe, stack, args, log, &[])
    }

    /// As [`spawn`](Self::spawn), with `env` set in the child too.
    pub(super) fn spawn_with_env(
        exe: &Path,
        stack: &Stack,
        args: &[&str],
        log: &Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<DsSyncProcess, BenchError> {
        let file = std::fs::File::create(log)
            .map_err(|e| BenchError::Setup(format!("creating {}: {e}", log.display())))?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env("POSTGRES_URL", stack.conninfo())
            .env("PGPASSWORD", stack.target.password().unwrap_or_default())
            .env("DS_SERVER_URL", &stack.ds_url)
            .env("DS_SYNC_LOG_FORMAT", "text")
            .envs(stack.target.ssl_env())
            .envs(stack.ds_access.child_env())
            .env_remove("DATABASE_URL")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::Setup(format!("starting {}: {e}", exe.display())))?;
        let pid = child.id().unwrap_or_default();
        Ok(DsSyncProcess {
            child,
            pid,
            started,
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` (SIGSTOP pauses the process as a hung one, SIGCONT resumes it).
    pub(super) fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), signal);
    }

    /// Resident memory now and at its peak, in kB, from `/proc/PID/status`.
    pub(super) fn memory_kb(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// CPU time (user + system) used so far, from `/proc/PID/stat`.
    pub(super) fn cpu_seconds(&self) -> Option<f64> {
        proc_cpu_seconds(&self.pid.to_string())
    }

    /// Fails when the process already exited (a broken run must not look like a slow one).
    pub(super) fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(BenchError::DsSyncExited {
                status: status.to_string(),
                log: tail(&self.log),
            }),
            _ => Ok(()),
        }
    }

    /// SIGKILL, then wait: no chance to flush or confirm anything (a crash).
    pub(super) async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Whether the log says `needle` so far.
    pub(super) fn log_contains(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|text| text.contains(needle))
    }

    /// SIGTERM, then wait (graceful shutdown confirms the slot).
    pub(super) async fn stop(mut self) -> Result<(), BenchError> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => Err(BenchError::DsSyncExited {
                status: s.to_string(),
                log: tail(&self.log),
            }),
            _ => {
                let _ = self.child.kill().await;
                Err(BenchError::DsSyncExited {
                    status: "did not stop within 60 s of SIGTERM".into(),
                    log: tail(&self.log),
                })
            }
        }
    }
}

/// The last lines of a log file, for error messages.
pub(super) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
