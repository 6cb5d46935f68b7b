//! ds-sync under chaos: one `run` (capture and ingest) whose connections go through the
//! fault proxies, started again after every SIGKILL and after any exit of its own (as a
//! service manager would), each process logging to a file of its own.

use std::ffi::OsString;
use std::path::PathBuf;

use super::super::BenchError;
use super::super::capture::Ctx;
use super::super::fault_proxy::FaultProxy;
use super::super::stack::{DsSyncProcess, tail};
use super::producer;

/// `ds-sync run`'s arguments (before the bench's `-- ARGS`).
fn run_args() -> Vec<String> {
    let ingest: Vec<String> = (0..producer::STREAMS).map(producer::stream).collect();
    [
        "run",
        "--slot",
        "chaos_slot",
        "--publication",
        "chaos_pub",
        "--stream-template",
        "chaos-{table}",
        "--route",
        "chaos_c=chaos-c/{grp}",
        "--snapshot",
        "never",
        "--ingest",
        &ingest.join(","),
        "--ingest-idle-timeout",
        "2s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The running process and what happened to its predecessors.
pub(super) struct Supervisor<'a> {
    ctx: &'a Ctx<'a>,
    env: Vec<(&'static str, OsString)>,
    logs: PathBuf,
    process: Option<DsSyncProcess>,
    pub started: u32,
    /// Exits the bench did not cause, with the end of the log of each.
    pub own_exits: Vec<String>,
    /// Own exits in a row of processes that ran less than [`QUICK_EXIT`].
    quick_exits: u32,
}

/// A process that exits on its own sooner than this after its start counts towards
/// [`QUICK_EXITS_LIMIT`].
const QUICK_EXIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Quick exits in a row that end the run: ds-sync cannot start at all (e.g. an argument
/// after `--` it refuses), and restarting it would only loop.
const QUICK_EXITS_LIMIT: u32 = 5;

impl<'a> Supervisor<'a> {
    /// Ready to start ds-sync against the two proxies.
    pub(super) fn new(
        ctx: &'a Ctx<'a>,
        pg: &FaultProxy,
        ds: &FaultProxy,
    ) -> Result<Supervisor<'a>, BenchError> {
        let logs = ctx.dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| BenchError::io(&logs, &e))?;
        let conninfo = ctx.stack.conninfo_at("127.0.0.1", pg.port());
        Ok(Supervisor {
            ctx,
            env: vec![
                ("POSTGRES_URL", conninfo.into()),
                ("DS_SERVER_URL", ds.url().into()),
            ],
            logs,
            process: None,
            started: 0,
            own_exits: Vec::new(),
            quick_exits: 0,
        })
    }

    /// Starts a new process (the previous one must be gone).
    pub(super) fn start(&mut self) -> Result<(), BenchError> {
        self.started += 1;
        let mut args = run_args();
        args.extend(self.ctx.opts.ds_sync_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &std::ffi::OsStr)> =
            self.env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
        let log = self.logs.join(format!("ds-sync-{:03}.log", self.started));
        self.process = Some(DsSyncProcess::spawn_with_env(
            &self.ctx.opts.exe,
            self.ctx.stack,
            &args,
            &log,
            &env,
        )?);
        Ok(())
    }

    /// Restarts the process if it exited on its own, recording why.
    pub(super) fn keep_running(&mut self) -> Result<(), BenchError> {
        let Some(process) = self.process.as_mut() else {
            return self.start();
        };
        if let Err(BenchError::DsSyncExited { status, log }) = process.check_alive() {
            if process.started.elapsed() < QUICK_EXIT {
                self.quick_exits += 1;
            } else {
                self.quick_exits = 0;
            }
            if self.quick_exits >= QUICK_EXITS_LIMIT {
                return Err(BenchError::DsSyncExited { status, log });
            }
            tracing::warn!(%status, "ds-sync exited on its own; starting it again");
            self.own_exits.push(format!(
                "process {} exited ({status}):\n{log}",
                self.started
            ));
            self.process = None;
            return self.start();
        }
        Ok(())
    }

    /// SIGKILL (no chance to flush or confirm anything).
    pub(super) async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill().await;
        }
    }

    /// SIGTERM, and the graceful shutdown's outcome.
    pub(super) async fn stop(&mut self) -> Result<(), BenchError> {
        match self.process.take() {
            Some(process) => process.stop().await,
            None => Ok(()),
        }
    }

    /// The end of the current process's log.
    pub(super) fn log_tail(&self) -> String {
        tail(&self.logs.join(format!("ds-sync-{:03}.log", self.started)))
    }
}
