//! One stream's subscription: catch-up reads of what the stream holds (see
//! [`catch_up`](super::catch_up)), then SSE from the committed offset, each message decoded
//! as it arrives and held until its control event, then handed to the writer; the offset
//! advances only after the writer's COMMIT.
//!
//! ```text
//!   catch up ─▶ subscribe(offset) ─▶ message ─▶ decode, hold ─┐
//!        ▲                           control ─▶ Commit ─▶ writer ─┴─▶ reply: offset = next
//!        │                                                        (or the stored offset)
//!        ├── server ended the body / transient failure / idle timeout: again
//!        ├── a data event too large to hold: again (the catch-up stores it)
//!        ├── 404: wait for the stream (polled with backoff)
//!        └── 410: stop with the way out; streamClosed: finish, recorded as closed
//! ```
//!
//! The read loop's priorities, in order: stop when asked (between commits, never inside
//! one); never advance the offset past data that is not stored (rows or dead letters); stay
//! under the memory bound (see [`memory`](super::memory): at the bound, stop reading and let
//! the writer free what waits for it, or drop rows that wait for their control event and
//! read them again by catch-up); keep going on any per-stream trouble, reporting it in the
//! subscription's state.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::catch_up::CatchUpEnd;
use super::decode::{Pending, decode};
use super::ledger::{Ledger, Reached};
use super::memory::{Budget, Full, ITEM_HEADROOM, Meter, OVERFLOW_WAIT, READ_HEADROOM};
use super::state::{StateSender, StateUpdate, Status};
use super::writer::{Answer, Commit, CommitOutcome};
use crate::ds::{Backoff, BodyRead, DsClient, DsError, OFFSET_START, SseSubscription};
use crate::pg::PgTarget;
use crate::sse::DsItem;

/// How often a stream waiting for room looks again, should a release go unnoticed.
const ROOM_RECHECK: Duration = Duration::from_millis(100);

/// How often a subscription waiting for its stream to be created says so.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Says that a subscription waits for its stream to be created: when the wait starts, then
/// every [`WAIT_LOG_EVERY`].
#[derive(Default)]
struct WaitLog {
    since: Option<tokio::time::Instant>,
    next: Option<tokio::time::Instant>,
}

impl WaitLog {
    fn waiting(&mut self, stream: &str) {
        let now = tokio::time::Instant::now();
        let since = *self.since.get_or_insert(now);
        if self.next.is_some_and(|at| now < at) {
            return;
        }
        tracing::info!(
            stream,
            waited_s = since.elapsed().as_secs(),
            "stream does not exist yet; waiting for it (it is ingested once a client creates it; `ds-sync unsubscribe {stream}` stops waiting)"
        );
        self.next = Some(now + WAIT_LOG_EVERY);
    }
}

/// What every subscription shares.
#[derive(Debug)]
pub struct Shared {
    pub ds: DsClient,
    pub target: PgTarget,
    pub writer: mpsc::Sender<Commit>,
    pub state: StateSender,
    /// Largest message stored; larger ones become dead letters.
    pub max_event_bytes: usize,
    /// No byte on a connection for this long: it is presumed dead and reopened.
    pub idle_timeout: Duration,
    pub budget: Arc<Budget>,
    /// The connection catch-up reads write on, one catch-up at a time.
    pub lane: Mutex<Option<Client>>,
}

/// How one SSE connection ended.
pub(super) enum End {
    /// The server ended the body; `progressed` if anything was committed on it.
    ServerEnded { progressed: bool },
    /// No byte for the idle timeout.
    Idle(Duration),
    /// The stream is closed and committed to its end.
    StreamClosed,
    /// Asked to stop, or the writer is gone.
    Stopped,
    /// Reconnect after a backoff.
    Retry(String),
    /// A data event does not fit in memory: read it again by catch-up.
    Overflow(Full),
}

/// Runs one subscription until `stop`, the stream's end, or a 410.
pub async fn run(
    stream: String,
    offset: Option<String>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    crate::observe::ingest().offset(&stream, offset.as_deref());
    let meter = shared.budget.meter();
    shared.state.watch_memory(&stream, meter.figures());
    let mut sub = Subscription {
        stream,
        offset,
        shared,
        status: None,
        up_to_date: false,
        meter,
        wait_log: WaitLog::default(),
    };
    sub.run(&stop).await;
}

pub(super) struct Subscription {
    pub(super) stream: String,
    pub(super) offset: Option<String>,
    pub(super) shared: Arc<Shared>,
    /// Last reported (status, error).
    status: Option<(Status, Option<String>)>,
    up_to_date: bool,
    pub(super) meter: Meter,
    /// When "does not exist yet" was last said.
    wait_log: WaitLog,
}

impl Subscription {
    async fn run(&mut self, stop: &CancellationToken) {
        let mut backoff = Backoff::default();
        let mut waiting = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        // Until a catch-up read says the stream is not in JSON mode.
        let mut json = true;
        loop {
            self.report(Status::Connecting, None);
            if json {
                let delay = match self.catch_up(stop).await {
                    CatchUpEnd::Done => None,
                    CatchUpEnd::NotJson => {
                        json = false;
                        None
                    }
                    CatchUpEnd::Closed => {
                        self.closed();
                        return;
                    }
                    CatchUpEnd::Stopped => return,
                    CatchUpEnd::NotFound => Some(self.waiting(&mut waiting)),
                    CatchUpEnd::Retry(reason) => {
                        tracing::warn!(stream = %self.stream, offset = %self.from(), %reason, "catch-up read failed; retrying");
                        self.report(Status::Retrying, Some(reason));
                        Some(backoff.next_delay())
                    }
                    CatchUpEnd::Failed(error) => {
                        self.failed(error);
                        return;
                    }
                };
                if let Some(delay) = delay {
                    if pause(stop, delay).await {
                        return;
                    }
                    continue;
                }
            }
            let from = self.from();
            let opened = tokio::select! {
                () = stop.cancelled() => return,
                r = self.shared.ds.subscribe(&self.stream, &from) => r,
            };
            let delay = match opened {
                Ok(sse) => {
                    waiting.reset();
                    self.wait_log = WaitLog::default();
                    self.report(Status::Streaming, None);
                    let opened_at = Instant::now();
                    let sse = sse
                        .with_message_limit(self.shared.max_event_bytes)
                        .with_idle_timeout(Some(self.shared.idle_timeout));
                    let end = self.read(sse, stop).await;
                    // The connection and what it held are gone: a stale figure would keep
                    // the next read (a catch-up) waiting for room that never comes.
                    self.meter.set_local(0);
                    match self.after(end, opened_at, &mut backoff, json) {
                        Some(delay) => delay,
                        None => return,
                    }
                }
                Err(DsError::NotFound { .. }) => self.waiting(&mut waiting),
                Err(DsError::Gone { .. }) => {
                    self.failed(self.gone_message(&from));
                    return;
                }
                Err(e) => {
                    let reason = with_hint(&e);
                    tracing::warn!(stream = %self.stream, offset = %from, error = %reason, "cannot subscribe; retrying");
                    self.report(Status::Retrying, Some(reason));
                    backoff.next_delay()
                }
            };
            if pause(stop, delay).await {
                return;
            }
        }
    }

    fn from(&self) -> String {
        self.offset
            .clone()
            .unwrap_or_else(|| OFFSET_START.to_owned())
    }

    /// What to do after a connection ended: the delay before the next one, or `None` when
    /// the subscription is over.
    fn after(
        &mut self,
        end: End,
        opened_at: Instant,
        backoff: &mut Backoff,
        json: bool,
    ) -> Option<Duration> {
        match end {
            End::ServerEnded { progressed } => {
                // A connection that lived a while and ended cleanly is the server's routine
                // close, not a failure.
                if progressed || opened_at.elapsed() > Duration::from_secs(1) {
                    backoff.reset();
                }
                tracing::debug!(stream = %self.stream, offset = ?self.offset, "sse connection ended by the server; resubscribing");
                Some(backoff.next_delay() / 4)
            }
            End::Idle(after) => {
                if opened_at.elapsed() > after * 2 {
                    backoff.reset();
                }
                let reason = format!(
                    "no byte (data, control or keepalive) for {after:?}: the connection is \
                     presumed dead; reconnecting from the committed offset"
                );
                tracing::info!(stream = %self.stream, offset = %self.from(), idle_timeout = ?after, "{reason}");
                self.report(Status::Retrying, Some(reason));
                Some(backoff.next_delay() / 4)
            }
            End::StreamClosed => self.closed(),
            End::Stopped => None,
            End::Retry(reason) => {
                tracing::warn!(stream = %self.stream, offset = ?self.offset, %reason, "ingest reconnecting");
                self.report(Status::Retrying, Some(reason));
                Some(backoff.next_delay())
            }
            End::Overflow(full) => self.overflowed(full, backoff, json),
        }
    }

    fn closed(&mut self) -> Option<Duration> {
        tracing::info!(stream = %self.stream, offset = ?self.offset, "stream closed; subscription finished");
        self.report(Status::Closed, None);
        None
    }

    fn failed(&mut self, error: String) -> Option<Duration> {
        tracing::error!(stream = %self.stream, offset = ?self.offset, "{error}");
        self.report(Status::Failed, Some(error));
        None
    }

    /// A data event did not fit: the next connection starts with a catch-up read, which
    /// stores it as it arrives. A stream that cannot be read so stops, or waits for room.
    fn overflowed(&mut self, full: Full, backoff: &mut Backoff, json: bool) -> Option<Duration> {
        let limits = self.shared.budget.limits();
        tracing::info!(
            stream = %self.stream,
            offset = %self.from(),
            bound = if full == Full::Stream { limits.event_hold } else { limits.total },
            which = if full == Full::Stream { "data event" } else { "total" },
            "a data event does not fit in the ingest buffer; reading it again by a catch-up read stored as it arrives"
        );
        if json {
            backoff.reset();
            return Some(Duration::ZERO);
        }
        if full == Full::Stream {
            return self.failed(self.oversized_message());
        }
        let reason = "the ingest buffer is full (all streams together) and this stream is not \
                      in JSON mode, so it cannot be read by catch-up; retrying"
            .to_owned();
        self.report(Status::Retrying, Some(reason));
        Some(backoff.next_delay())
    }

    fn waiting(&mut self, waiting: &mut Backoff) -> Duration {
        self.wait_log.waiting(&self.stream);
        self.report(
            Status::Waiting,
            Some("the stream does not exist yet".into()),
        );
        waiting.next_delay()
    }

    pub(super) fn gone_message(&self, from: &str) -> String {
        format!(
            "the server no longer has stream {:?} from offset {from} (410: deleted, or the \
             offset is before its retention window); events after that offset may be lost. \
             To resume from the oldest retained event run `ds-sync subscribe {} --reset-offset` \
             (rows already stored stay; rows still retained on the server before them would be \
             stored again)",
            self.stream, self.stream
        )
    }

    fn oversized_message(&self) -> String {
        format!(
            "stream {:?} is not in JSON mode and sent a data event larger than this stream's \
             share of the ingest buffer ({} bytes); such a stream cannot be read by catch-up, \
             so nothing after offset {} was stored and the subscription stopped. Raise \
             --ingest-max-buffer-bytes (a stream may hold half of it), restart ds-sync, and run \
             `ds-sync subscribe {}`",
            self.stream,
            self.shared.budget.limits().per_stream,
            self.from(),
            self.stream
        )
    }

    /// Reads one SSE connection to its end. One commit is in flight at a time; while it
    /// runs, later events keep arriving and gather into the next one (each row keeps the
    /// offset of its own control event), so a busy stream commits in batches instead of
    /// queueing one transaction per event behind the last.
    async fn read(&mut self, mut sse: SseSubscription, stop: &CancellationToken) -> End {
        let mut ledger = Ledger::default();
        let mut answer: Option<Answer> = None;
        let mut progressed = false;
        let mut full_since: Option<Instant> = None;
        loop {
            if answer.is_none()
                && let Some((batch, next)) = ledger.next_commit()
            {
                match self.send(batch, next).await {
                    Ok(rx) => answer = Some(rx),
                    Err(end) => return end,
                }
            }
            self.meter
                .set_local(sse.buffered_bytes() + ledger.held_bytes());
            let room = self.meter.room(ITEM_HEADROOM);
            if room.is_ok()
                && let Some(item) = sse.next_buffered()
            {
                full_since = None;
                let end = match self.item(item, &mut ledger) {
                    Ok(()) if ledger.unsealed_bytes() <= self.shared.budget.limits().event_hold => {
                        continue;
                    }
                    Ok(()) => End::Overflow(Full::Stream),
                    Err(end) => end,
                };
                return self.settle(ledger, answer, end).await;
            }
            let room = room.and_then(|()| self.meter.room(READ_HEADROOM));
            if room.is_err() {
                let since = *full_since.get_or_insert_with(Instant::now);
                if let Some(full) = self.must_drop(&sse, &ledger, room, since) {
                    return self.settle(ledger, answer, End::Overflow(full)).await;
                }
            } else {
                full_since = None;
            }
            let has_answer = answer.is_some();
            let landed = async {
                match answer.as_mut() {
                    Some(rx) => rx.landed().await,
                    None => std::future::pending().await,
                }
            };
            let budget = Arc::clone(&self.shared.budget);
            tokio::select! {
                () = stop.cancelled() => return self.stopped(answer, &mut ledger).await,
                landed = landed, if has_answer => {
                    answer = None;
                    match self.finish(landed, &mut ledger) {
                        Ok(true) => return End::StreamClosed,
                        Ok(false) => progressed = true,
                        Err(end) => return end,
                    }
                }
                () = budget.released(), if room.is_err() => {}
                () = tokio::time::sleep(ROOM_RECHECK), if room.is_err() => {}
                read = sse.read(), if room.is_ok() => {
                    let end = match read {
                        Ok(BodyRead::Data(_)) => continue,
                        Ok(BodyRead::Ended) => End::ServerEnded { progressed },
                        Ok(BodyRead::Idle(after)) => End::Idle(after),
                        Err(e) => self.retry(&e),
                    };
                    // The connection is over: what was already ended by a control event is
                    // stored before reconnecting, so the next subscription starts after it.
                    return self.settle(ledger, answer, end).await;
                }
            }
        }
    }

    /// At the bound (`room` failed, since `since`): whether the rows waiting for their
    /// control event must be dropped and read again by catch-up, because the data event does
    /// not fit in the stream's bound or the total stayed full too long. Otherwise the stream
    /// waits for commits to free memory.
    fn must_drop(
        &self,
        sse: &SseSubscription,
        ledger: &Ledger,
        room: Result<(), Full>,
        since: Instant,
    ) -> Option<Full> {
        let full = room.err()?;
        let unsealed = sse.in_data_event() || ledger.has_unsealed();
        let own = sse.buffered_bytes() + ledger.unsealed_bytes();
        let too_big = own + READ_HEADROOM > self.shared.budget.limits().per_stream;
        let too_long = full == Full::Total && since.elapsed() >= OVERFLOW_WAIT;
        (unsealed && (too_big || too_long)).then_some(full)
    }

    /// One decoded item; `Err` ends the connection.
    fn item(&mut self, item: Result<DsItem, DsError>, ledger: &mut Ledger) -> Result<(), End> {
        match item {
            Ok(DsItem::Array(item)) => ledger.push(decode(item, self.shared.max_event_bytes)),
            Ok(DsItem::DataEnd) => crate::observe::ingest().event(&self.stream),
            Ok(DsItem::Control(control)) => {
                if let Reached::Now { up_to_date, closed } =
                    ledger.control(control, self.offset.as_deref())
                {
                    self.committed(up_to_date, false);
                    if closed {
                        return Err(End::StreamClosed);
                    }
                }
            }
            Ok(DsItem::Other { event_type }) => {
                tracing::debug!(stream = %self.stream, %event_type, "skipping an sse event of unknown type");
            }
            Ok(DsItem::Oversized { event_type, size })
                if event_type == crate::sse::ds::DATA_EVENT =>
            {
                tracing::debug!(stream = %self.stream, size, "a data event that cannot be streamed outgrew the sse buffer");
                return Err(End::Overflow(Full::Stream));
            }
            Ok(DsItem::Oversized { event_type, size }) => {
                tracing::debug!(stream = %self.stream, %event_type, size, "skipping an oversized sse event of unknown type");
            }
            Err(e) => return Err(self.retry(&e)),
        }
        Ok(())
    }

    fn retry(&self, e: &DsError) -> End {
        End::Retry(format!("{e} (after committed offset {})", self.from()))
    }

    /// Hands a batch to the writer with the bytes it holds; its reply is awaited by the
    /// read loop.
    async fn send(&mut self, batch: Pending, next_offset: String) -> Result<Answer, End> {
        let (reply, answer) = Answer::channel();
        let charge = self.meter.charge(batch.bytes());
        let commit = Commit {
            stream: self.stream.clone(),
            prev_offset: self.offset.clone(),
            next_offset,
            rows: batch.rows,
            dead: batch.dead,
            charge: Some(charge),
            reply,
        };
        if self.shared.writer.send(commit).await.is_err() {
            return Err(End::Stopped);
        }
        Ok(answer)
    }

    /// The writer's answer: the offset moves on (`Ok(closed)`), or the subscription ends.
    fn finish(&mut self, answer: CommitOutcome, ledger: &mut Ledger) -> Result<bool, End> {
        let Some(sent) = ledger.landed() else {
            return Err(End::Stopped);
        };
        match answer {
            CommitOutcome::Committed => {
                crate::observe::ingest().offset(&self.stream, Some(&sent.next_offset));
                self.offset = Some(sent.next_offset);
                self.committed(sent.up_to_date, sent.stored_events);
                Ok(sent.closed)
            }
            CommitOutcome::Retry { committed, reason } => {
                self.offset = committed;
                Err(End::Retry(reason))
            }
            CommitOutcome::Stopped => Err(End::Stopped),
        }
    }

    /// Asked to stop: the commit in flight is waited for (the writer answers it, or says it
    /// stopped), so that the stored offset is final when the task ends and an instance that
    /// takes the stream over starts from it.
    async fn stopped(&mut self, answer: Option<Answer>, ledger: &mut Ledger) -> End {
        if let Some(mut rx) = answer {
            let landed = rx.landed().await;
            let _ = self.finish(landed, ledger);
        }
        End::Stopped
    }

    /// Waits for the commit in flight, then commits what is ready; ends with `end` unless
    /// that ends the subscription otherwise (closed, a failed commit).
    async fn settle(&mut self, mut ledger: Ledger, mut answer: Option<Answer>, end: End) -> End {
        loop {
            if let Some(mut rx) = answer.take() {
                let landed = rx.landed().await;
                match self.finish(landed, &mut ledger) {
                    Ok(true) => return End::StreamClosed,
                    Ok(false) => {}
                    Err(other) => return other,
                }
            }
            let Some((batch, next)) = ledger.next_commit() else {
                return end;
            };
            match self.send(batch, next).await {
                Ok(rx) => answer = Some(rx),
                Err(other) => return other,
            }
        }
    }

    pub(super) fn report(&mut self, status: Status, error: Option<String>) {
        let now = (status, error);
        if self.status.as_ref() == Some(&now) {
            return;
        }
        if now.0 != Status::Streaming {
            self.up_to_date = false;
        }
        crate::observe::ingest().status(&self.stream, now.0);
        self.shared.state.send(StateUpdate {
            stream: self.stream.clone(),
            status: now.0,
            error: now.1.clone(),
            up_to_date: self.up_to_date,
            stored_events: false,
        });
        self.status = Some(now);
    }

    /// Reports a committed position: whether it reached the tail, and whether its commit
    /// stored events (rows or dead letters).
    pub(super) fn committed(&mut self, up_to_date: bool, stored_events: bool) {
        if self.up_to_date == up_to_date && !stored_events {
            return;
        }
        self.up_to_date = up_to_date;
        if let Some((status, error)) = self.status.clone() {
            self.shared.state.send(StateUpdate {
                stream: self.stream.clone(),
                status,
                error,
                up_to_date,
                stored_events,
            });
        }
    }
}

/// Sleeps for `delay`; true when asked to stop first.
async fn pause(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// An error with its hint, as one sentence for the subscription's state.
pub(super) fn with_hint(e: &DsError) -> String {
    match e.hint() {
        Some(hint) => format!("{e}. {hint}"),
        None => e.to_string(),
    }
}
