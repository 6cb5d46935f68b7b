//! Ingest metrics, per subscribed stream, and the hooks the ingest code calls.
//!
//! Streams are labels here because subscriptions are named one by one by an operator (and
//! removed with `unsubscribe`, which drops their series). How far a stream's ingest is
//! behind is measured in time, since DS offsets are opaque: a poller reads each stream's
//! tail with HEAD every [`super::pollers::TAIL_EVERY`]; once the committed offset reaches a
//! tail read at time T, ingest is at most `now - T` behind ([`TailTracker`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::ingest::state::Status;
use crate::ingest::writer::Commit;

use super::capture::lock;
use super::readiness::IngestPhase;
use super::registry::{Direction, ReconnectLabels};

/// Tail samples kept per stream that ingest has not reached yet; past this, every second
/// one is dropped (coarser, still bounded).
const MAX_SAMPLES: usize = 64;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

/// A subscription's status, as `ds-sync subscriptions` shows it.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum StatusLabel {
    connecting,
    catching_up,
    streaming,
    waiting,
    retrying,
    closed,
    failed,
}

impl From<Status> for StatusLabel {
    fn from(s: Status) -> StatusLabel {
        match s {
            Status::Connecting => StatusLabel::connecting,
            Status::CatchingUp => StatusLabel::catching_up,
            Status::Streaming => StatusLabel::streaming,
            Status::Waiting => StatusLabel::waiting,
            Status::Retrying => StatusLabel::retrying,
            Status::Closed => StatusLabel::closed,
            Status::Failed => StatusLabel::failed,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub stream: String,
    pub status: StatusLabel,
}

/// How far ingest of one stream is behind its tail, from tail offsets read over time.
/// Offsets are compared bytewise, as the protocol orders them. Pure (time is passed in).
#[derive(Debug)]
pub struct TailTracker {
    /// The committed offset (`None`: nothing committed yet).
    committed: Option<String>,
    /// When the committed offset last reached a tail that was read (or when watching began).
    reached_at: Instant,
    /// Tails read that the committed offset has not reached, oldest first.
    pending: VecDeque<(Instant, String)>,
    /// Whether the last tail read was reached; `None` before the first read or when the
    /// stream does not exist.
    caught_up: Option<bool>,
}

impl TailTracker {
    pub fn new(now: Instant) -> TailTracker {
        TailTracker {
            committed: None,
            reached_at: now,
            pending: VecDeque::new(),
            caught_up: None,
        }
    }

    fn reached(&self, tail: &str) -> bool {
        self.committed.as_deref().is_some_and(|c| c >= tail)
    }

    /// Ingest committed up to `offset`.
    pub fn committed(&mut self, offset: Option<&str>) {
        self.committed = offset.map(str::to_owned);
        while let Some((at, tail)) = self.pending.front() {
            if !self.reached(tail) {
                break;
            }
            self.reached_at = self.reached_at.max(*at);
            self.pending.pop_front();
        }
        if self.pending.is_empty() && self.caught_up == Some(false) {
            self.caught_up = Some(true);
        }
    }

    /// HEAD read the stream's tail at `now` (`None`: the stream does not exist).
    pub fn tail(&mut self, tail: Option<&str>, now: Instant) {
        let Some(tail) = tail else {
            self.caught_up = None;
            return;
        };
        if self.reached(tail) {
            self.pending.clear();
            self.reached_at = now;
            self.caught_up = Some(true);
            return;
        }
        self.caught_up = Some(false);
        if self.pending.len() >= MAX_SAMPLES {
            let mut keep = false;
            self.pending.retain(|_| {
                keep = !keep;
                keep
            });
        }
        self.pending.push_back((now, tail.to_owned()));
    }

    /// Whether the last tail read was reached.
    pub fn caught_up(&self) -> Option<bool> {
        self.caught_up
    }

    /// How long ingest has been behind: zero when caught up, otherwise the time since the
    /// newest tail the committed offset reached was read.
    pub fn lag(&self, now: Instant) -> Option<Duration> {
        match self.caught_up? {
            true => Some(Duration::ZERO),
            false => Some(now.saturating_duration_since(self.reached_at)),
        }
    }
}

#[derive(Debug)]
struct StreamState {
    status: Option<StatusLabel>,
    tail: TailTracker,
}

/// Ingest's metrics. See the README's "Metrics and health" for what each one means.
#[derive(Debug)]
pub struct IngestMetrics {
    pub(super) events: Family<StreamLabels, Counter>,
    pub(super) rows: Family<StreamLabels, Counter>,
    pub(super) dead_letters: Family<StreamLabels, Counter>,
    pub(super) transactions: Counter,
    pub(super) transaction_seconds: Histogram,
    pub(super) caught_up: Family<StreamLabels, Gauge>,
    pub(super) lag_seconds: Family<StreamLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub(super) status: Family<StatusLabels, Gauge>,
    pub(super) reconnects: Family<ReconnectLabels, Counter>,
    /// Subscriptions this instance owns, and the live instances it sees (see
    /// [`crate::ingest::lease`]).
    pub(super) owned: Gauge,
    pub(super) live_instances: Gauge,
    streams: Mutex<HashMap<String, StreamState>>,
}

impl IngestMetrics {
    pub(super) fn new(reconnects: Family<ReconnectLabels, Counter>) -> IngestMetrics {
        IngestMetrics {
            events: Family::default(),
            rows: Family::default(),
            dead_letters: Family::default(),
            transactions: Counter::default(),
            transaction_seconds: Histogram::new(super::registry::LATENCY_BUCKETS),
            caught_up: Family::default(),
            lag_seconds: Family::default(),
            status: Family::default(),
            reconnects,
            owned: Gauge::default(),
            live_instances: Gauge::default(),
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// A lease tick: the subscriptions this instance owns now, and the live instances.
    pub fn leases(&self, owned: usize, live_instances: usize) {
        self.owned.set(i64::try_from(owned).unwrap_or(i64::MAX));
        self.live_instances
            .set(i64::try_from(live_instances).unwrap_or(i64::MAX));
    }

    /// Ingest started: its writer and subscriptions run.
    pub fn running(&self) {
        super::readiness().ingest(IngestPhase::Running, None);
    }

    /// A subscription reported a new status. Entering `connecting` again is a reconnect,
    /// whose cause is the status it leaves (`streaming`: the server ended the response,
    /// `retrying`: an error, `waiting`: the stream did not exist yet).
    pub fn status(&self, stream: &str, status: Status) {
        let new = StatusLabel::from(status);
        let old = {
            let mut streams = lock(&self.streams);
            let state = streams
                .entry(stream.to_owned())
                .or_insert_with(|| StreamState {
                    status: None,
                    tail: TailTracker::new(Instant::now()),
                });
            state.status.replace(new)
        };
        if let Some(old) = old {
            self.status.remove(&StatusLabels {
                stream: stream.to_owned(),
                status: old,
            });
            if new == StatusLabel::connecting {
                self.count_reconnect(match old {
                    StatusLabel::streaming => "server_closed",
                    StatusLabel::waiting => "stream_missing",
                    _ => "error",
                });
            }
        }
        let labels = StatusLabels {
            stream: stream.to_owned(),
            status: new,
        };
        self.status.get_or_create(&labels).set(1);
    }

    /// An SSE data event of `stream` arrived.
    pub fn event(&self, stream: &str) {
        self.events.get_or_create(&stream_labels(stream)).inc();
    }

    /// `stream`'s committed offset is now `offset` (at start: the stored one).
    pub fn offset(&self, stream: &str, offset: Option<&str>) {
        let mut streams = lock(&self.streams);
        let state = streams
            .entry(stream.to_owned())
            .or_insert_with(|| StreamState {
                status: None,
                tail: TailTracker::new(Instant::now()),
            });
        state.tail.committed(offset);
        self.publish_lag(stream, &state.tail, Instant::now());
    }

    /// A transaction that took `elapsed` stored these commits.
    pub fn stored(&self, batch: &[Commit], elapsed: Duration) {
        self.transactions.inc();
        self.transaction_seconds.observe(elapsed.as_secs_f64());
        for c in batch {
            let labels = stream_labels(&c.stream);
            if !c.rows.is_empty() {
                self.rows.get_or_create(&labels).inc_by(c.rows.len() as u64);
            }
            if !c.dead.is_empty() {
                self.dead_letters
                    .get_or_create(&labels)
                    .inc_by(c.dead.len() as u64);
            }
        }
        super::readiness().ingest_writer_ok();
    }

    /// A catch-up read copied on its own connection stored `rows` rows and `dead` dead
    /// letters of `stream` in one transaction.
    pub fn copied(&self, stream: &str, rows: u64, dead: u64) {
        self.transactions.inc();
        let labels = stream_labels(stream);
        if rows > 0 {
            self.rows.get_or_create(&labels).inc_by(rows);
        }
        if dead > 0 {
            self.dead_letters.get_or_create(&labels).inc_by(dead);
        }
    }

    /// The writer's transaction failed; it reconnects and resumes from the stored offsets.
    pub fn writer_failed(&self, reason: &str) {
        self.count_reconnect("postgres");
        super::readiness().ingest(IngestPhase::Retrying, Some(reason.to_owned()));
    }

    /// `stream` was unsubscribed: its series go away.
    pub fn forget(&self, stream: &str) {
        let state = lock(&self.streams).remove(stream);
        let labels = stream_labels(stream);
        for family in [&self.events, &self.rows, &self.dead_letters] {
            family.remove(&labels);
        }
        self.caught_up.remove(&labels);
        self.lag_seconds.remove(&labels);
        if let Some(status) = state.and_then(|s| s.status) {
            self.status.remove(&StatusLabels {
                stream: stream.to_owned(),
                status,
            });
        }
    }

    /// The streams whose tail the poller should read.
    pub(super) fn tail_targets(&self) -> Vec<String> {
        lock(&self.streams).keys().cloned().collect()
    }

    /// The poller read `stream`'s tail.
    pub(super) fn tail(&self, stream: &str, tail: Option<&str>, now: Instant) {
        let mut streams = lock(&self.streams);
        if let Some(state) = streams.get_mut(stream) {
            state.tail.tail(tail, now);
            self.publish_lag(stream, &state.tail, now);
        }
    }

    fn publish_lag(&self, stream: &str, tracker: &TailTracker, now: Instant) {
        let labels = stream_labels(stream);
        match (tracker.caught_up(), tracker.lag(now)) {
            (Some(up), Some(lag)) => {
                self.caught_up.get_or_create(&labels).set(i64::from(up));
                self.lag_seconds
                    .get_or_create(&labels)
                    .set(lag.as_secs_f64());
            }
            _ => {
                self.caught_up.remove(&labels);
                self.lag_seconds.remove(&labels);
            }
        }
    }

    fn count_reconnect(&self, cause: &'static str) {
        self.reconnects
            .get_or_create(&ReconnectLabels {
                direction: Direction::ingest,
                cause,
            })
            .inc();
    }
}

fn stream_labels(stream: &str) -> StreamLabels {
    StreamLabels {
        stream: stream.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_up_when_the_committed_offset_reaches_the_tail() {
        let t0 = Instant::now();
        let mut t = TailTracker::new(t0);
        assert_eq!(t.caught_up(), None, "unknown before the first HEAD");
        t.committed(Some("0_5"));
        t.tail(Some("0_5"), t0 + Duration::from_secs(10));
        assert_eq!(t.caught_up(), Some(true));
        assert_eq!(t.lag(t0 + Duration::from_secs(11)), Some(Duration::ZERO));
    }

    #[test]
    fn lag_is_the_age_of_the_newest_tail_reached() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = TailTracker::new(t0);
        t.committed(Some("0_1"));
        t.tail(Some("0_3"), at(10));
        t.tail(Some("0_6"), at(20));
        assert_eq!(t.caught_up(), Some(false));
        assert_eq!(
            t.lag(at(25)),
            Some(Duration::from_secs(25)),
            "never reached"
        );
        t.committed(Some("0_4"));
        assert_eq!(
            t.lag(at(25)),
            Some(Duration::from_secs(15)),
            "reached the 10 s tail"
        );
        t.committed(Some("0_6"));
        assert_eq!(t.caught_up(), Some(true), "every tail read is reached");
        assert_eq!(t.lag(at(30)), Some(Duration::ZERO));
    }

    #[test]
    fn a_missing_stream_has_no_lag_and_samples_stay_bounded() {
        let t0 = Instant::now();
        let mut t = TailTracker::new(t0);
        t.tail(None, t0);
        assert_eq!(t.lag(t0), None);
        for i in 0..1000u64 {
            t.tail(Some(&format!("1_{i:06}")), t0 + Duration::from_secs(i));
        }
        assert!(t.pending.len() <= MAX_SAMPLES);
        t.committed(Some("1_000999"));
        assert_eq!(t.caught_up(), Some(true));
    }
}
