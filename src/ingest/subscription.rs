//! One stream's subscription: SSE from the last committed offset, rows held until a control
//! event, then handed to the writer and the offset advanced only after its COMMIT.
//!
//! ```text
//!   subscribe(offset) ─▶ data ─▶ decode into pending ─┐
//!        ▲               control ─▶ Commit ─▶ writer ─┴─▶ reply: offset = next
//!        │                                                 (or the stored offset)
//!        └── server ended the body / transient failure: backoff, resubscribe
//!            404: wait for the stream (polled with backoff)
//!            410: stop with the way out; streamClosed: finish, recorded as closed
//! ```
//!
//! The loop's priorities, in order: stop when asked (between commits, never inside one);
//! never advance the offset past data that is not stored (rows or dead letters); keep going
//! on any per-stream trouble, reporting it in the subscription's state.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::decode::Pending;
use super::state::{StateSender, StateUpdate, Status};
use super::writer::{Commit, CommitFailed};
use crate::ds::{Backoff, DsClient, DsError, OFFSET_START, SseSubscription};
use crate::sse::{Control, DsEvent};

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
    pub writer: mpsc::Sender<Commit>,
    pub state: StateSender,
    /// Largest data event stored; larger ones become dead letters.
    pub max_event_bytes: usize,
}

/// How one SSE connection ended.
enum End {
    /// The server ended the body; `progressed` if anything was committed on it.
    ServerEnded { progressed: bool },
    /// The stream is closed and committed to its end.
    StreamClosed,
    /// Asked to stop, or the writer is gone.
    Stopped,
    /// Reconnect after a backoff.
    Retry(String),
    /// Stop this subscription (`failed`) until it is subscribed again; the offset stays.
    Failed(String),
}

/// Data ended by control events, waiting for the commit in flight to finish.
#[derive(Default)]
struct Ready {
    batch: Pending,
    /// The latest control event: the commit's offset and flags.
    control: Option<Control>,
}

/// A commit handed to the writer.
struct InFlight {
    answer: oneshot::Receiver<Result<(), CommitFailed>>,
    next_offset: String,
    up_to_date: bool,
    closed: bool,
    stored_events: bool,
}

/// Runs one subscription until `stop`, the stream's end, or a 410.
pub async fn run(
    stream: String,
    offset: Option<String>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    crate::observe::ingest().offset(&stream, offset.as_deref());
    let mut sub = Subscription {
        stream,
        offset,
        shared,
        status: None,
        up_to_date: false,
    };
    sub.run(&stop).await;
}

struct Subscription {
    stream: String,
    offset: Option<String>,
    shared: Arc<Shared>,
    /// Last reported (status, error).
    status: Option<(Status, Option<String>)>,
    up_to_date: bool,
}

impl Subscription {
    async fn run(&mut self, stop: &CancellationToken) {
        let mut backoff = Backoff::default();
        let mut waiting = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        let mut wait_log = WaitLog::default();
        loop {
            self.report(Status::Connecting, None);
            let from = self
                .offset
                .clone()
                .unwrap_or_else(|| OFFSET_START.to_owned());
            let opened = tokio::select! {
                () = stop.cancelled() => return,
                r = self.shared.ds.subscribe(&self.stream, &from) => r,
            };
            let delay = match opened {
                Ok(sse) => {
                    waiting.reset();
                    wait_log = WaitLog::default();
                    self.report(Status::Streaming, None);
                    let opened_at = tokio::time::Instant::now();
                    match self.read(sse, stop).await {
                        End::ServerEnded { progressed } => {
                            // A connection that lived a while and ended cleanly is the
                            // server's routine close, not a failure.
                            if progressed || opened_at.elapsed() > Duration::from_secs(1) {
                                backoff.reset();
                            }
                            tracing::debug!(stream = %self.stream, offset = %from, "sse connection ended by the server; resubscribing");
                            backoff.next_delay() / 4
                        }
                        End::StreamClosed => {
                            tracing::info!(stream = %self.stream, offset = ?self.offset, "stream closed; subscription finished");
                            self.report(Status::Closed, None);
                            return;
                        }
                        End::Stopped => return,
                        End::Retry(reason) => {
                            tracing::warn!(stream = %self.stream, offset = ?self.offset, %reason, "ingest reconnecting");
                            self.report(Status::Retrying, Some(reason));
                            backoff.next_delay()
                        }
                        End::Failed(error) => {
                            tracing::error!(stream = %self.stream, offset = ?self.offset, "{error}");
                            self.report(Status::Failed, Some(error));
                            return;
                        }
                    }
                }
                Err(DsError::NotFound { .. }) => {
                    wait_log.waiting(&self.stream);
                    self.report(
                        Status::Waiting,
                        Some("the stream does not exist yet".into()),
                    );
                    waiting.next_delay()
                }
                Err(DsError::Gone { .. }) => {
                    let error = self.gone_message(&from);
                    tracing::error!(stream = %self.stream, offset = %from, "{error}");
                    self.report(Status::Failed, Some(error));
                    return;
                }
                Err(e) => {
                    let mut reason = e.to_string();
                    if let Some(hint) = e.hint() {
                        reason = format!("{reason}. {hint}");
                    }
                    tracing::warn!(stream = %self.stream, offset = %from, error = %reason, "cannot subscribe; retrying");
                    self.report(Status::Retrying, Some(reason));
                    backoff.next_delay()
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn gone_message(&self, from: &str) -> String {
        format!(
            "the server no longer has stream {:?} from offset {from} (410: deleted, or the \
             offset is before its retention window); events after that offset may be lost. \
             To resume from the oldest retained event run `ds-sync subscribe {} --reset-offset` \
             (rows already stored stay; rows still retained on the server before them would be \
             stored again)",
            self.stream, self.stream
        )
    }

    fn oversized_message(&self, size: usize, limit: usize) -> String {
        format!(
            "the server sent {size} bytes in one SSE data event (servers send a backlog as one \
             event), over the reader's limit of {limit} bytes; nothing after offset {} was \
             stored and the subscription stopped. Raise --ingest-max-event-bytes (the reader \
             accepts 4 x that, at least 256 MiB), restart ds-sync, and run `ds-sync subscribe {}`",
            self.offset.as_deref().unwrap_or(OFFSET_START),
            self.stream
        )
    }

    /// Reads one SSE connection to its end. One commit is in flight at a time; while it
    /// runs, later events keep arriving and gather into the next one (each row keeps the
    /// offset of its own control event), so a busy stream commits in batches instead of
    /// queueing one transaction per event behind the last.
    async fn read(&mut self, mut sse: SseSubscription, stop: &CancellationToken) -> End {
        let mut pending = Pending::default();
        let mut ready = Ready::default();
        let mut in_flight: Option<InFlight> = None;
        let mut progressed = false;
        loop {
            if in_flight.is_none()
                && let Some(control) = ready.control.take()
            {
                match self.send(ready.batch.take(), control).await {
                    Ok(f) => in_flight = Some(f),
                    Err(end) => return end,
                }
            }
            let answer = async {
                match in_flight.as_mut() {
                    Some(f) => (&mut f.answer).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                () = stop.cancelled() => return End::Stopped,
                answer = answer => {
                    let Some(f) = in_flight.take() else { continue };
                    match self.finish(answer, f) {
                        Ok(true) => return End::StreamClosed,
                        Ok(false) => progressed = true,
                        Err(end) => return end,
                    }
                    continue;
                }
                ev = sse.next() => ev,
            };
            let end = match event {
                None => End::ServerEnded { progressed },
                Some(Ok(DsEvent::Data(data))) => {
                    crate::observe::ingest().event(&self.stream);
                    pending.push_data(&data, self.shared.max_event_bytes);
                    continue;
                }
                Some(Ok(DsEvent::Control(control))) => {
                    let latest = ready
                        .control
                        .as_ref()
                        .map(|c| c.stream_next_offset.as_str())
                        .or(in_flight.as_ref().map(|f| f.next_offset.as_str()))
                        .or(self.offset.as_deref());
                    let moved = latest != Some(control.stream_next_offset.as_str());
                    if moved || !pending.is_empty() {
                        pending.seal(&control.stream_next_offset);
                        ready.batch.append(pending.take());
                        ready.control = Some(control);
                    } else if in_flight.is_none() && ready.control.is_none() {
                        self.committed(control.up_to_date, false);
                        if control.stream_closed {
                            return End::StreamClosed;
                        }
                    }
                    continue;
                }
                Some(Ok(DsEvent::Other { event_type, .. })) => {
                    tracing::debug!(stream = %self.stream, %event_type, "skipping an sse event of unknown type");
                    continue;
                }
                Some(Err(DsError::EventTooLarge {
                    event_type,
                    size,
                    limit,
                    ..
                })) if event_type == crate::sse::ds::DATA_EVENT => {
                    End::Failed(self.oversized_message(size, limit))
                }
                Some(Err(e)) => End::Retry(format!(
                    "{e} (after committed offset {})",
                    self.offset.as_deref().unwrap_or(OFFSET_START)
                )),
            };
            // The connection is over: what was already ended by a control event is stored
            // before reconnecting, so the next subscription starts after it.
            return match self.settle(in_flight, ready).await {
                Some(closed_or_failed) => closed_or_failed,
                None => end,
            };
        }
    }

    /// Hands a batch to the writer; its reply is awaited by [`Self::finish`].
    async fn send(&mut self, batch: Pending, control: Control) -> Result<InFlight, End> {
        let (reply, answer) = oneshot::channel();
        let stored_events = !batch.is_empty();
        let commit = Commit {
            stream: self.stream.clone(),
            prev_offset: self.offset.clone(),
            next_offset: control.stream_next_offset.clone(),
            rows: batch.rows,
            dead: batch.dead,
            reply,
        };
        if self.shared.writer.send(commit).await.is_err() {
            return Err(End::Stopped);
        }
        Ok(InFlight {
            answer,
            next_offset: control.stream_next_offset,
            up_to_date: control.up_to_date,
            closed: control.stream_closed,
            stored_events,
        })
    }

    /// The writer's answer: the offset moves on (`Ok(closed)`), or the subscription ends.
    fn finish(
        &mut self,
        answer: Result<Result<(), CommitFailed>, oneshot::error::RecvError>,
        f: InFlight,
    ) -> Result<bool, End> {
        match answer {
            Ok(Ok(())) => {
                crate::observe::ingest().offset(&self.stream, Some(&f.next_offset));
                self.offset = Some(f.next_offset);
                self.committed(f.up_to_date, f.stored_events);
                Ok(f.closed)
            }
            Ok(Err(CommitFailed::Retry { committed, reason })) => {
                self.offset = committed;
                Err(End::Retry(reason))
            }
            Ok(Err(CommitFailed::Stopped)) | Err(_) => Err(End::Stopped),
        }
    }

    /// Waits for the commit in flight, then commits what is ready; `Some` when that ends
    /// the subscription otherwise than the caller's reason (closed, a failed commit).
    async fn settle(&mut self, in_flight: Option<InFlight>, mut ready: Ready) -> Option<End> {
        let mut next = in_flight;
        loop {
            if let Some(mut f) = next.take() {
                let answer = (&mut f.answer).await;
                match self.finish(answer, f) {
                    Ok(true) => return Some(End::StreamClosed),
                    Ok(false) => {}
                    Err(end) => return Some(end),
                }
            }
            let control = ready.control.take()?;
            match self.send(ready.batch.take(), control).await {
                Ok(f) => next = Some(f),
                Err(end) => return Some(end),
            }
        }
    }

    fn report(&mut self, status: Status, error: Option<String>) {
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

    /// Reports a control event: whether it reached the tail, and whether its commit
    /// stored events (rows or dead letters).
    fn committed(&mut self, up_to_date: bool, stored_events: bool) {
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
