//! Readiness: whether this process does its job right now, for `/readyz` and
//! `ds-sync health`.
//!
//! Ready means every enabled direction runs and the DS server answered recently:
//! * capture: taking its snapshot or streaming, which both mean this process holds the slot
//!   (a replication session that started streaming has acquired it; the snapshot's session
//!   created it), or waiting as a standby for the slot lock (`standby`: a standby is
//!   working as intended, and an orchestrator must neither restart it nor stall a rollout
//!   on it); not while starting, reconnecting or stopping, nor while it recreates a lost
//!   slot (`recreating_slot`, snapshot included: the streams were reset and are incomplete
//!   until it streams again);
//! * ingest: running, and its writer's last transaction did not fail;
//! * DS server: the last probe (every [`super::pollers::PROBE_EVERY`]) got an answer within
//!   [`ANSWER_MAX_AGE`]. An idle capture sends nothing, so the probe is what notices a
//!   server that stopped answering.
//!
//! A lost slot is also reported on its own (`slot_lost`: which slot, how often, when last,
//! what capture did), from the moment it is found for as long as the process runs, so that
//! a healed loss stays visible after capture is ready again.
//!
//! [`report`] is a pure function of the recorded state and the time, so the rules are
//! tested without servers.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::capture::lock;

/// The DS server counts as answering while its last answer is at most this old.
pub const ANSWER_MAX_AGE: Duration = Duration::from_secs(12);

/// Where capture is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CapturePhase {
    Starting,
    /// Another process holds the slot lock; this one takes over when it ends. Ready: a
    /// standby does its job, and an orchestrator that restarts or holds back unready
    /// instances must leave it be (README, "Standby").
    Standby,
    Snapshot,
    Streaming,
    Reconnecting,
    /// The slot was lost: capture drops and recreates it and snapshots again.
    RecreatingSlot,
    Stopped,
}

/// Where ingest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestPhase {
    Starting,
    Running,
    /// The writer's transaction failed; it reconnects and resumes.
    Retrying,
    Stopped,
}

#[derive(Debug, Clone)]
struct Probe {
    last_answer: Option<Instant>,
    error: Option<String>,
}

/// The last lost slot this process found.
#[derive(Debug, Clone)]
struct SlotLost {
    slot: String,
    times: u64,
    at: Instant,
    action: &'static str,
}

/// The recorded state. Cloned out of the lock to be evaluated.
#[derive(Debug, Clone)]
pub struct State {
    capture: Option<(CapturePhase, Option<String>)>,
    ingest: Option<(IngestPhase, Option<String>)>,
    probe: Probe,
    stopping: bool,
    slot_lost: Option<SlotLost>,
}

/// Readiness state, written by the hooks and pollers.
#[derive(Debug)]
pub struct Readiness {
    state: Mutex<State>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            state: Mutex::new(State {
                capture: None,
                ingest: None,
                probe: Probe {
                    last_answer: None,
                    error: None,
                },
                stopping: false,
                slot_lost: None,
            }),
        }
    }
}

impl Readiness {
    /// Which directions this process runs; each starts in its starting phase.
    pub fn enable(&self, capture: bool, ingest: bool) {
        let mut s = lock(&self.state);
        s.capture = capture.then_some((CapturePhase::Starting, None));
        s.ingest = ingest.then_some((IngestPhase::Starting, None));
        s.stopping = false;
    }

    /// Capture moved to `phase` (`reason`: why it is not streaming).
    pub fn capture(&self, phase: CapturePhase, reason: Option<String>) {
        let mut s = lock(&self.state);
        if s.capture.is_some() {
            s.capture = Some((phase, reason));
        }
    }

    /// An initial snapshot started (capture holds the slot it created). The snapshot of a
    /// recreated slot stays `recreating_slot`.
    pub fn capture_snapshot(&self) {
        let mut s = lock(&self.state);
        if let Some((phase, _)) = &s.capture
            && *phase != CapturePhase::RecreatingSlot
        {
            s.capture = Some((CapturePhase::Snapshot, None));
        }
    }

    /// The server invalidated `slot`; `action` is what capture does about it (`recreate`:
    /// not ready until it streams again; `error`: it stops).
    pub fn slot_lost(&self, slot: &str, action: &'static str) {
        let mut s = lock(&self.state);
        let times = s.slot_lost.as_ref().map_or(0, |l| l.times) + 1;
        s.slot_lost = Some(SlotLost {
            slot: slot.to_owned(),
            times,
            at: Instant::now(),
            action,
        });
        if action == "recreate" && s.capture.is_some() {
            let reason = format!(
                "replication slot '{slot}' was lost: dropping and recreating it, resetting its streams and taking a fresh snapshot"
            );
            s.capture = Some((CapturePhase::RecreatingSlot, Some(reason)));
        }
    }

    /// Ingest moved to `phase`.
    pub fn ingest(&self, phase: IngestPhase, reason: Option<String>) {
        let mut s = lock(&self.state);
        if s.ingest.is_some() {
            s.ingest = Some((phase, reason));
        }
    }

    /// The ingest writer committed: a failure before is over.
    pub fn ingest_writer_ok(&self) {
        let mut s = lock(&self.state);
        if let Some((IngestPhase::Retrying, _)) = s.ingest {
            s.ingest = Some((IngestPhase::Running, None));
        }
    }

    /// The DS server answered the probe.
    pub fn ds_answered(&self, at: Instant) {
        let mut s = lock(&self.state);
        s.probe.last_answer = Some(at);
        s.probe.error = None;
    }

    /// The probe got no usable answer.
    pub fn ds_failed(&self, error: String) {
        lock(&self.state).probe.error = Some(error);
    }

    /// Whether the last probe got an answer (for the `ds_server_up` gauge).
    pub fn ds_up(&self, now: Instant) -> bool {
        ds_check(&lock(&self.state).probe, now).ready
    }

    /// A shutdown began: not ready any more, whatever else holds.
    pub fn stopping(&self) {
        lock(&self.state).stopping = true;
    }

    /// The recorded state.
    pub fn state(&self) -> State {
        lock(&self.state).clone()
    }
}

/// One check of the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub ready: bool,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_answer_seconds_ago: Option<f64>,
}

/// The `/readyz` body.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub ready: bool,
    /// One line per check that is not ready, e.g. `ds_server: no answer ...`.
    pub not_ready: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest: Option<Check>,
    pub ds_server: Check,
    /// Present once this process found its slot lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot_lost: Option<SlotLostReport>,
}

/// A lost slot, as `/readyz` reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlotLostReport {
    pub slot: String,
    /// How often this process found it lost.
    pub times: u64,
    pub last_seconds_ago: f64,
    /// `recreate` or `error` (`--on-slot-lost`).
    pub action: String,
}

/// Evaluates the state at `now`. Pure.
pub fn report(state: &State, now: Instant) -> Report {
    let capture = state.capture.as_ref().map(|(phase, reason)| {
        let ready = matches!(
            phase,
            CapturePhase::Snapshot | CapturePhase::Streaming | CapturePhase::Standby
        );
        check(ready, phase, reason.clone())
    });
    let ingest = state
        .ingest
        .as_ref()
        .map(|(phase, reason)| check(*phase == IngestPhase::Running, phase, reason.clone()));
    let ds_server = ds_check(&state.probe, now);
    let mut not_ready = Vec::new();
    if state.stopping {
        not_ready.push("process: stopping (a shutdown signal was received)".to_owned());
    }
    for (name, c) in [("capture", &capture), ("ingest", &ingest)] {
        if let Some(c) = c.as_ref().filter(|c| !c.ready) {
            not_ready.push(line(name, c));
        }
    }
    if !ds_server.ready {
        not_ready.push(line("ds_server", &ds_server));
    }
    let slot_lost = state.slot_lost.as_ref().map(|l| SlotLostReport {
        slot: l.slot.clone(),
        times: l.times,
        last_seconds_ago: (now.saturating_duration_since(l.at).as_secs_f64() * 10.0).round() / 10.0,
        action: l.action.to_owned(),
    });
    Report {
        ready: not_ready.is_empty(),
        not_ready,
        capture,
        ingest,
        ds_server,
        slot_lost,
    }
}

fn check(ready: bool, phase: &impl Serialize, reason: Option<String>) -> Check {
    let state = serde_json::to_value(phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    Check {
        ready,
        state,
        reason,
        last_answer_seconds_ago: None,
    }
}

fn line(name: &str, c: &Check) -> String {
    match &c.reason {
        Some(r) => format!("{name}: {} ({r})", c.state),
        None => format!("{name}: {}", c.state),
    }
}

fn ds_check(probe: &Probe, now: Instant) -> Check {
    let age = probe.last_answer.map(|t| now.saturating_duration_since(t));
    let fresh = age.is_some_and(|a| a <= ANSWER_MAX_AGE);
    let (ready, state, reason) = match (&probe.error, fresh, age) {
        (None, true, _) => (true, "answering", None),
        (None, false, None) => (false, "not probed yet", None),
        (None, false, Some(a)) => (
            false,
            "not answering",
            Some(format!("last answer {} s ago", a.as_secs())),
        ),
        (Some(e), _, _) => (false, "not answering", Some(e.clone())),
    };
    Check {
        ready,
        state: state.to_owned(),
        reason,
        last_answer_seconds_ago: age.map(|a| (a.as_secs_f64() * 10.0).round() / 10.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_state(now: Instant) -> Readiness {
        let r = Readiness::default();
        r.enable(true, true);
        r.capture(CapturePhase::Streaming, None);
        r.ingest(IngestPhase::Running, None);
        r.ds_answered(now);
        r
    }

    #[test]
    fn ready_when_every_enabled_direction_runs_and_the_server_answers() {
        let now = Instant::now();
        let r = ready_state(now);
        let rep = report(&r.state(), now);
        assert!(rep.ready, "{rep:?}");
        assert!(rep.not_ready.is_empty());
        let only_ingest = Readiness::default();
        only_ingest.enable(false, true);
        only_ingest.ingest(IngestPhase::Running, None);
        only_ingest.capture(CapturePhase::Streaming, None);
        only_ingest.ds_answered(now);
        let rep = report(&only_ingest.state(), now);
        assert!(rep.ready && rep.capture.is_none(), "{rep:?}");
    }

    #[test]
    fn each_failing_check_is_named() {
        let now = Instant::now();
        let r = ready_state(now);
        r.capture(CapturePhase::Reconnecting, Some("connection reset".into()));
        r.ds_failed("connection refused".into());
        let rep = report(&r.state(), now);
        assert!(!rep.ready);
        assert_eq!(
            rep.not_ready,
            vec![
                "capture: reconnecting (connection reset)".to_owned(),
                "ds_server: not answering (connection refused)".to_owned()
            ]
        );
        r.ingest(IngestPhase::Retrying, Some("db down".into()));
        r.ingest_writer_ok();
        assert!(report(&r.state(), now).ingest.unwrap().ready);
    }

    #[test]
    fn an_old_answer_is_not_enough_and_a_snapshot_counts_as_running() {
        let now = Instant::now();
        let r = ready_state(now);
        r.capture_snapshot();
        assert!(report(&r.state(), now).ready);
        let later = now + ANSWER_MAX_AGE + Duration::from_secs(1);
        let rep = report(&r.state(), later);
        assert!(!rep.ready);
        assert_eq!(rep.ds_server.state, "not answering");
        let fresh = Readiness::default();
        fresh.enable(true, false);
        let rep = report(&fresh.state(), now);
        assert_eq!(rep.not_ready.len(), 2, "{rep:?}");
        r.stopping();
        assert!(!report(&r.state(), now).ready);
    }

    #[test]
    fn a_standby_is_ready_and_says_so() {
        let now = Instant::now();
        let r = ready_state(now);
        r.capture(
            CapturePhase::Standby,
            Some("another ds-sync holds it".into()),
        );
        let rep = report(&r.state(), now);
        assert!(rep.ready, "{rep:?}");
        let capture = rep.capture.expect("capture is reported");
        assert_eq!(capture.state, "standby");
        assert_eq!(capture.reason.as_deref(), Some("another ds-sync holds it"));
        r.ds_failed("refused".into());
        assert!(
            !report(&r.state(), now).ready,
            "a standby needs the DS server too"
        );
    }

    #[test]
    fn a_lost_slot_is_not_ready_until_streaming_and_stays_reported() {
        let now = Instant::now();
        let r = ready_state(now);
        assert!(report(&r.state(), now).slot_lost.is_none());
        r.slot_lost("s", "recreate");
        r.capture_snapshot();
        let rep = report(&r.state(), now);
        assert!(!rep.ready, "{rep:?}");
        assert_eq!(rep.capture.as_ref().unwrap().state, "recreating_slot");
        assert!(rep.not_ready[0].contains("'s' was lost"), "{rep:?}");
        r.capture(CapturePhase::Streaming, None);
        let rep = report(&r.state(), now + Duration::from_secs(3));
        assert!(rep.ready, "{rep:?}");
        let lost = rep.slot_lost.expect("still reported");
        assert_eq!((lost.slot.as_str(), lost.times), ("s", 1));
        assert_eq!(lost.action, "recreate");
        assert!(lost.last_seconds_ago >= 3.0);
        r.slot_lost("s", "error");
        assert_eq!(report(&r.state(), now).slot_lost.unwrap().times, 2);
    }
}
