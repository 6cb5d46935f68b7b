//! Waiting on a condition: the one way tests wait for something to happen.
//!
//! A probe (an async closure) is polled until it reports the condition or a deadline
//! passes. The probe says what it saw each time (`Result<T, String>`: `Ok` ends the wait,
//! `Err` describes what was there instead; `Option` and `bool` probes work too, with less
//! to say), so a timeout panics with what was awaited, where the test waited, and the last
//! thing seen, plus whatever context the test attached (e.g. the ds-sync log).
//!
//! * [`wait_until`]: the common case, a condition and a timeout.
//! * [`Wait`]: the same with options: a stall timeout (fail only when what is seen stops
//!   changing, so a slow machine slows the wait and a stall fails it), a process that must
//!   stay alive meanwhile, context for the failure message, another poll interval.
//!
//! Both are `#[track_caller]` functions returning a future, so the location in a timeout's
//! message is the test's line (or that of the kit helper's caller, when the helper is
//! `#[track_caller]` too), not this file's.

#![allow(dead_code)]

use std::future::Future;
use std::panic::Location;
use std::time::Duration;

use tokio::time::Instant;

use super::process::CaptureProcess;

/// How often a condition is polled unless a wait says otherwise.
pub const POLL: Duration = Duration::from_millis(50);

/// What a probe reports: the value that ends the wait, or a description of what it saw.
pub trait Probe {
    type Output;
    fn seen(self) -> Result<Self::Output, String>;
}

impl<T> Probe for Result<T, String> {
    type Output = T;
    fn seen(self) -> Result<T, String> {
        self
    }
}

impl<T> Probe for Option<T> {
    type Output = T;
    fn seen(self) -> Result<T, String> {
        self.ok_or_else(|| "not yet".to_string())
    }
}

impl Probe for bool {
    type Output = ();
    fn seen(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("not yet".into()) }
    }
}

/// Polls `probe` until it reports the condition and returns its value; panics after
/// `timeout` with `what`, the caller's location and the last thing the probe saw.
#[track_caller]
pub fn wait_until<'a, P, F, Fut>(
    what: impl Into<String>,
    timeout: Duration,
    probe: F,
) -> impl Future<Output = P::Output> + 'a
where
    P: Probe + 'a,
    F: FnMut() -> Fut + 'a,
    Fut: Future<Output = P> + 'a,
{
    Wait::new(what, timeout).until(probe)
}

/// A wait with options; [`Wait::until`] runs it.
pub struct Wait<'a> {
    what: String,
    at: &'static Location<'static>,
    timeout: Duration,
    stall: bool,
    poll: Duration,
    alive: Option<&'a CaptureProcess>,
    context: Vec<Box<dyn Fn() -> String + Send + Sync + 'a>>,
}

impl<'a> Wait<'a> {
    /// A wait for `what` of at most `timeout`, located at the caller.
    #[track_caller]
    pub fn new(what: impl Into<String>, timeout: Duration) -> Wait<'a> {
        Wait {
            what: what.into(),
            at: Location::caller(),
            timeout,
            stall: false,
            poll: POLL,
            alive: None,
            context: Vec::new(),
        }
    }

    /// Fails only when what the probe sees has not changed for `timeout` (progress restarts
    /// the clock). The probe's description must change with progress and only with it.
    pub fn stalled_after(mut self, timeout: Duration) -> Wait<'a> {
        self.timeout = timeout;
        self.stall = true;
        self
    }

    /// Polls every `poll` instead of every [`POLL`].
    pub fn every(mut self, poll: Duration) -> Wait<'a> {
        self.poll = poll;
        self
    }

    /// Fails at once, with its log, if `process` exits during the wait; its log is shown on
    /// a timeout too.
    pub fn while_running(mut self, process: &'a CaptureProcess) -> Wait<'a> {
        self.alive = Some(process);
        self.log_of(process)
    }

    /// Shows `process`'s log (its last 60 lines) on failure.
    pub fn log_of(self, process: &'a CaptureProcess) -> Wait<'a> {
        self.context(move || format!("--- ds-sync log (tail) ---\n{}", process.log_tail(60)))
    }

    /// Adds `context` (evaluated on failure only) to the failure message.
    pub fn context(mut self, context: impl Fn() -> String + Send + Sync + 'a) -> Wait<'a> {
        self.context.push(Box::new(context));
        self
    }

    /// Polls `probe` until it reports the condition and returns its value, or panics.
    pub async fn until<P, F, Fut>(self, probe: F) -> P::Output
    where
        P: Probe,
        F: FnMut() -> Fut,
        Fut: Future<Output = P>,
    {
        match self.try_until(probe).await {
            Ok(value) => value,
            Err(message) => panic!("{message}"),
        }
    }

    /// [`Self::until`], but a failure is returned (the whole message, context included) for
    /// the caller to add what only it can gather, e.g. with queries, before it panics.
    pub async fn try_until<P, F, Fut>(self, mut probe: F) -> Result<P::Output, String>
    where
        P: Probe,
        F: FnMut() -> Fut,
        Fut: Future<Output = P>,
    {
        let mut deadline = Instant::now() + self.timeout;
        let mut last: Option<String> = None;
        loop {
            let seen = match probe().await.seen() {
                Ok(value) => return Ok(value),
                Err(seen) => seen,
            };
            if let Some(code) = self.alive.and_then(CaptureProcess::try_exit) {
                return Err(self.failure(&format!("ds-sync exited ({code})"), &seen));
            }
            if self.stall && last.as_ref() != Some(&seen) {
                deadline = Instant::now() + self.timeout;
            }
            if Instant::now() >= deadline {
                let how = if self.stall {
                    format!("nothing changed for {:?}", self.timeout)
                } else {
                    format!("timed out after {:?}", self.timeout)
                };
                return Err(self.failure(&how, &seen));
            }
            last = Some(seen);
            tokio::time::sleep(self.poll).await;
        }
    }

    fn failure(&self, how: &str, seen: &str) -> String {
        let mut message = format!(
            "{how} waiting for {} (at {})\nlast seen: {seen}",
            self.what, self.at
        );
        for context in &self.context {
            message.push('\n');
            message.push_str(&context());
        }
        message
    }
}
