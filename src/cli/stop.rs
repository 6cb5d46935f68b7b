//! Stopping `run` and `dev`: the first SIGTERM/SIGINT asks for a graceful stop (finish what
//! is in flight); a second one, or the shutdown timeout running out while a server is down or
//! stalled, abandons the work in flight (a hard stop: nothing is lost, the next start resumes
//! from the slot's confirmed position and the stored offsets); a process still running a few
//! seconds after a hard stop is ended by a watchdog thread, whatever it waits for.
//!
//! ```text
//!  signal ─▶ shutdown ──(second signal | timeout)──▶ hard_stop ──(HARD_EXIT_AFTER)──▶ exit 6
//!               │                                       │
//!               └─ finished in time: exit 0             └─ finished: exit 6 (abandoned)
//! ```

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{CliError, exit};

/// How long after a hard stop the process may take to end before the watchdog exits it.
pub(super) const HARD_EXIT_AFTER: Duration = Duration::from_secs(5);

/// Default of `--shutdown-timeout-ms`.
pub(super) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the work in flight was abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HardStop {
    SecondSignal,
    Timeout(Duration),
}

impl std::fmt::Display for HardStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HardStop::SecondSignal => write!(f, "a second stop signal"),
            HardStop::Timeout(t) => write!(
                f,
                "the shutdown timeout of {} ms passed (--shutdown-timeout-ms)",
                t.as_millis()
            ),
        }
    }
}

/// The stop tokens of one process and why a hard stop happened.
#[derive(Debug, Clone)]
pub(super) struct Stop {
    /// Graceful: stop reading, finish and confirm what is in flight.
    pub shutdown: CancellationToken,
    /// Abandon what is in flight.
    pub hard_stop: CancellationToken,
    reason: Arc<OnceLock<HardStop>>,
}

impl Stop {
    fn new() -> Stop {
        Stop {
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            reason: Arc::new(OnceLock::new()),
        }
    }

    /// Installs the SIGTERM/SIGINT handlers (before anything else happens, so a signal that
    /// arrives while commands still connect or start servers is a graceful stop too).
    pub(super) fn install(timeout: Duration) -> Stop {
        use tokio::signal::unix::{SignalKind, signal};
        let stop = Stop::new();
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("cannot install signal handlers");
            return stop;
        };
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!(
                timeout_ms = timeout.as_millis() as u64,
                "signal received: finishing what is in flight (signal again to stop at once)"
            );
            s.shutdown.cancel();
            let reason = tokio::select! {
                _ = term.recv() => HardStop::SecondSignal,
                _ = int.recv() => HardStop::SecondSignal,
                () = tokio::time::sleep(timeout) => HardStop::Timeout(timeout),
            };
            if s.abandon(reason) {
                watchdog(reason);
            }
        });
        stop
    }

    /// Abandons the work in flight; false when that happened already.
    fn abandon(&self, reason: HardStop) -> bool {
        if self.reason.set(reason).is_err() {
            return false;
        }
        tracing::warn!(%reason, "stopping now: abandoning the work in flight (nothing is lost: the next start resumes from the slot's confirmed position and the stored ingest offsets)");
        self.hard_stop.cancel();
        true
    }

    /// The command's result, said as it is: after a hard stop, success or an interrupted
    /// capture is [`CliError::Abandoned`] (exit code 6).
    pub(super) fn outcome(&self, result: Result<(), CliError>) -> Result<(), CliError> {
        let Some(reason) = self.reason.get() else {
            return result;
        };
        match result {
            Ok(()) | Err(CliError::Capture(crate::capture::CaptureError::Interrupted)) => {
                Err(CliError::Abandoned(reason.to_string()))
            }
            Err(e) => Err(e),
        }
    }
}

/// Ends the process [`HARD_EXIT_AFTER`] from now unless it ended by itself: on a thread of
/// its own, so that nothing the runtime waits for can hold it up.
fn watchdog(reason: HardStop) {
    std::thread::spawn(move || {
        std::thread::sleep(HARD_EXIT_AFTER);
        tracing::error!(
            after_s = HARD_EXIT_AFTER.as_secs(),
            "still running after the hard stop; exiting now"
        );
        eprintln!("error: stopped after {reason} without finishing the work in flight");
        std::process::exit(i32::from(exit::ABANDONED));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hard_stop_turns_success_into_abandoned_and_keeps_other_errors() {
        let stop = Stop::new();
        assert!(stop.outcome(Ok(())).is_ok());
        stop.shutdown.cancel();
        assert!(stop.abandon(HardStop::Timeout(Duration::from_millis(1500))));
        assert!(
            !stop.abandon(HardStop::SecondSignal),
            "the first reason stays"
        );
        assert!(stop.hard_stop.is_cancelled());
        let e = stop.outcome(Ok(())).unwrap_err();
        assert_eq!(e.exit_code(), exit::ABANDONED);
        assert!(e.to_string().contains("1500 ms"), "{e}");
        let other = stop
            .outcome(Err(CliError::Invalid("x".into())))
            .unwrap_err();
        assert_eq!(other.exit_code(), exit::ERROR);
    }
}
