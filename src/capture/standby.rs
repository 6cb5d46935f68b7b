//! One active capture per slot, the others on standby, through Postgres alone: a session
//! advisory lock keyed by the slot, held on a connection of its own for as long as the
//! process captures.
//!
//! ```text
//!  start ─▶ pg_try_advisory_lock(CLASS, key(slot)) ── granted ──▶ fence.take ─▶ stream
//!                 │ held by another session                         (epoch + 1)
//!                 ▼
//!  standby: try again every 100 ms; every second look at the holder:
//!      its lease lapsed and no walsender of the slot answered ─ for --standby-takeover-after-ms
//!      ──▶ pg_terminate_backend(holder's lock session, its walsender) ─▶ try again
//! ```
//!
//! The active process's end releases the lock at once: a killed process's socket is closed
//! by the kernel and its backend ends; a clean stop closes it. The standby then takes the
//! lock within one poll and raises the slot's epoch (see `fence`), so a holder that was
//! only paused sends nothing more when it resumes.
//!
//! The lock's loss ends streaming: the connection's end, or a heartbeat unanswered for
//! [`HEARTBEAT_TIMEOUT`], cancels `Held::lost`, which the capture loop watches; the next attempt
//! waits for the lock again (and stops with "taken over" when another process raised the
//! epoch meanwhile).
//!
//! A holder counts as hung only when both hold: its lease in `ds_sync.slot_owners` was not
//! renewed (a live process renews it every 500 ms from a task of its own, whatever
//! capture is doing: a snapshot, a backoff) and no walsender of the slot answered within
//! [`ANSWER_WITHIN`] (ds-sync's replication connection answers every second). A paused
//! (SIGSTOP) or wedged process fails both; a busy or reconnecting one fails neither.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::pg::{PgError, PgTarget};

use super::error::CaptureError;
use super::fence::Fence;

/// `application_name` of the connection that holds (or waits for) the lock.
pub const APPLICATION_NAME: &str = "ds-sync/slot-lock";
/// The first key of the two-key advisory lock (`pg_advisory_lock(int4, int4)`), the same for
/// every slot: "DSLK". The second is [`slot_key`]. The two-key form never meets a one-key
/// (`bigint`) lock such as the schema migrations'.
pub const LOCK_CLASS: i32 = 0x4453_4C4B;
/// How often a standby asks for the lock.
pub const POLL_EVERY: Duration = Duration::from_millis(100);
/// How often a standby looks at the holder to see whether it hangs.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);
/// A walsender that answered within this long counts as alive.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// How often the holder checks its lock connection.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long that check may take before the lock counts as lost: lenient, since a slow
/// database is not a lost lock (the lease guards the POSTs meanwhile).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of `--standby-takeover-after-ms`.
pub const DEFAULT_TAKEOVER_AFTER: Duration = Duration::from_secs(10);

/// The lock's second key: FNV-1a (32 bits) of `ds-sync/slot/<slot>`, so every version and
/// platform computes the same one. Pure.
pub fn slot_key(slot: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in "ds-sync/slot/".bytes().chain(slot.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// This process's claim to be the slot's one active capture, kept across reconnects.
pub struct SlotLock {
    target: PgTarget,
    slot: String,
    key: i32,
    /// How long a holder may look hung before a standby ends its session.
    takeover_after: Duration,
    /// `--takeover`: end the holder's session at once instead of waiting.
    takeover: bool,
    held: Option<Held>,
}

/// The lock, held on its own connection.
struct Held {
    client: Arc<Client>,
    /// Cancelled when the connection ended or stopped answering.
    lost: CancellationToken,
    /// Stops the connection's task (closing it releases the lock).
    stop: CancellationToken,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl SlotLock {
    pub fn new(target: &PgTarget, slot: &str, takeover_after: Duration, takeover: bool) -> Self {
        SlotLock {
            target: target.with_application_name(APPLICATION_NAME),
            slot: slot.to_owned(),
            key: slot_key(slot),
            takeover_after,
            takeover,
            held: None,
        }
    }

    /// Holds the lock, waiting as a standby while another session has it, then takes the
    /// fence on the lock's connection (raising the epoch: a predecessor that only paused
    /// is fenced). Returns the token cancelled when the lock is lost; `None` when
    /// `shutdown` came first. A process whose slot was taken over meanwhile gets
    /// [`CaptureError::Fenced`] instead of waiting.
    pub async fn hold(
        &mut self,
        fence: &Fence,
        shutdown: &CancellationToken,
    ) -> Result<Option<CancellationToken>, CaptureError> {
        if let Some(held) = &self.held {
            if !held.lost.is_cancelled() {
                return Ok(Some(held.lost.clone()));
            }
            tracing::warn!(slot = %self.slot, "the slot lock was lost (its connection ended); waiting for it again");
        }
        self.held = None;
        let Some(held) = self.acquire(fence, shutdown).await? else {
            return Ok(None);
        };
        // The lock makes this process the slot's one capture: the fence is taken whether or
        // not a walsender of the previous holder still holds the slot.
        fence.take(&held.client, true).await?;
        let lost = held.lost.clone();
        self.held = Some(held);
        Ok(Some(lost))
    }

    /// Connects and takes the lock, waiting for it as a standby. `None` on shutdown.
    async fn acquire(
        &self,
        fence: &Fence,
        shutdown: &CancellationToken,
    ) -> Result<Option<Held>, CaptureError> {
        let held = self.connect().await?;
        if fence.epoch() != 0 {
            // Held the slot before: stop if another process took it since.
            fence.check(&held.client).await?;
        }
        if self.try_lock(&held.client).await? {
            return Ok(Some(held));
        }
        let waited = Instant::now();
        self.announce_standby(&held.client).await;
        let mut hung = HungClock::default();
        let mut next_look = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(None),
                () = fence.fenced().cancelled() => return Err(fence.error()),
                () = held.lost.cancelled() => return Err(CaptureError::LockLost { slot: self.slot.clone() }),
                () = tokio::time::sleep(POLL_EVERY) => {}
            }
            if self.try_lock(&held.client).await? {
                let waited_ms = waited.elapsed().as_millis() as u64;
                tracing::info!(slot = %self.slot, waited_ms, "took the slot lock: this process is now the active capture");
                crate::observe::capture().took_over();
                return Ok(Some(held));
            }
            if Instant::now() >= next_look {
                next_look = Instant::now() + LOOK_EVERY;
                self.look_at_holder(&held.client, &mut hung).await?;
            }
        }
    }

    /// The lock's connection, with a task that drives it and cancels `lost` when it ends
    /// or a heartbeat goes unanswered.
    async fn connect(&self) -> Result<Held, CaptureError> {
        let (client, connection) = self.target.connect_raw().await?;
        let client = Arc::new(client);
        let (lost, stop) = (CancellationToken::new(), CancellationToken::new());
        let watched = (Arc::clone(&client), lost.clone(), stop.clone());
        tokio::spawn(async move {
            let (client, lost, stop) = watched;
            let mut connection = std::pin::pin!(connection);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = &mut connection => break,
                    alive = heartbeat(&client) => {
                        if !alive {
                            break;
                        }
                    }
                }
            }
            lost.cancel();
        });
        Ok(Held { client, lost, stop })
    }

    async fn try_lock(&self, client: &Client) -> Result<bool, CaptureError> {
        let row = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&LOCK_CLASS, &self.key],
            )
            .await
            .map_err(|e| PgError::query("taking the slot lock (pg_try_advisory_lock)", &e))?;
        Ok(row.get(0))
    }

    /// Says once that this process waits as a standby, and who holds the lock.
    async fn announce_standby(&self, client: &Client) {
        let holder = match self.holder(client).await {
            Ok(Some(h)) => h.describe(),
            Ok(None) => "a session that just released it".to_owned(),
            Err(e) => format!("unknown: {e}"),
        };
        tracing::info!(slot = %self.slot, %holder, "standby: another ds-sync holds the slot lock; taking over when its session ends");
        crate::observe::capture().standby(&self.slot, &holder);
    }

    /// One look at the holder: ends its session (and its walsender) once it has looked
    /// hung for `takeover_after`, or at once with `--takeover`.
    async fn look_at_holder(
        &self,
        client: &Client,
        hung: &mut HungClock,
    ) -> Result<(), CaptureError> {
        let Some(holder) = self.holder(client).await? else {
            return Ok(());
        };
        let after = if self.takeover {
            Duration::ZERO
        } else {
            self.takeover_after
        };
        let Some(silent_for) = hung.look(holder.pid, holder.silent(), Instant::now(), after) else {
            return Ok(());
        };
        let (holder_text, silent_s) = (holder.describe(), silent_for.as_secs());
        if self.takeover {
            tracing::warn!(slot = %self.slot, holder = %holder_text, "--takeover: ending the session of the slot lock's holder");
        } else {
            tracing::warn!(slot = %self.slot, holder = %holder_text, silent_s, "the ds-sync holding the slot lock looks hung (its lease lapsed and no walsender of the slot answered): ending its session");
        }
        self.terminate(client, &holder).await
    }

    /// Ends the holder's lock session and its walsender. A refusal (a role that may not
    /// signal the holder's) is logged, and the standby goes on waiting.
    async fn terminate(&self, client: &Client, holder: &Holder) -> Result<(), CaptureError> {
        for pid in std::iter::once(holder.pid).chain(holder.walsender) {
            let done = client
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await;
            if let Err(e) = done {
                let e = PgError::query(format!("terminating backend pid {pid}"), &e);
                if e.is_transient() {
                    return Err(e.into());
                }
                tracing::warn!(slot = %self.slot, pid, error = %e, "cannot end the hung holder's session: waiting on; the role needs to be the holder's or a member of pg_signal_backend");
            }
        }
        Ok(())
    }

    /// The session holding the lock, what it is, and whether it answers.
    async fn holder(&self, client: &Client) -> Result<Option<Holder>, CaptureError> {
        let row = client
            .query_opt(
                HOLDER_SQL,
                &[
                    &LOCK_CLASS,
                    &self.key,
                    &self.slot,
                    &(ANSWER_WITHIN.as_millis() as f64),
                ],
            )
            .await
            .map_err(|e| PgError::query("reading the slot lock's holder (pg_locks)", &e))?;
        Ok(row.map(|r| Holder {
            pid: r.get(0),
            application: r.get(1),
            client: r.get(2),
            connected_s: r.get(3),
            walsender: r.get(4),
            walsender_answers: r.get(5),
            leased: r.get(6),
        }))
    }
}

/// The holder of the lock (`$1`, `$2`) in this database, its walsender on slot `$3` and
/// whether that answered within `$4` ms, and whether the slot's lease is current.
const HOLDER_SQL: &str = "\
    SELECT l.pid, coalesce(nullif(a.application_name, ''), '(none)'), \
           coalesce(a.client_addr::text, 'local'), \
           coalesce(extract(epoch FROM now() - a.backend_start), 0)::int8, \
           s.active_pid, \
           coalesce((SELECT r.reply_time > now() - $4::float8 * interval '1 millisecond' \
                     FROM pg_stat_replication r WHERE r.pid = s.active_pid), false), \
           EXISTS (SELECT 1 FROM ds_sync.slot_owners o \
                   WHERE o.slot_name = $3::text AND o.lease_until > clock_timestamp()) \
    FROM pg_locks l \
    LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
    LEFT JOIN pg_replication_slots s ON s.slot_name::text = $3::text AND s.active \
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
      AND l.classid::int8 = ($1::int4::int8 & 4294967295) \
      AND l.objid::int8 = ($2::int4::int8 & 4294967295) \
    LIMIT 1";

/// The session holding the slot lock, as a standby sees it.
#[derive(Debug, Clone)]
struct Holder {
    pid: i32,
    application: String,
    client: String,
    connected_s: i64,
    /// The walsender holding the slot, if one does.
    walsender: Option<i32>,
    walsender_answers: bool,
    /// The slot's lease in `ds_sync.slot_owners` is current.
    leased: bool,
}

impl Holder {
    /// Hung-looking: no lease renewed, no walsender answering.
    fn silent(&self) -> bool {
        !self.leased && !self.walsender_answers
    }

    fn describe(&self) -> String {
        let walsender = match self.walsender {
            Some(pid) => format!("walsender pid {pid}"),
            None => "no walsender on the slot".to_owned(),
        };
        format!(
            "pid {}, application {}, client {}, connected {} s ago, {walsender}",
            self.pid, self.application, self.client, self.connected_s
        )
    }
}

/// How long the same holder has looked hung, across looks. Pure.
#[derive(Debug, Default)]
pub struct HungClock {
    /// The holder's pid and when it was first seen silent.
    since: Option<(i32, Instant)>,
}

impl HungClock {
    /// Records one look at holder `pid`; returns how long it has been silent once that
    /// reaches `after`. A holder that answers, or a different holder, starts over.
    pub fn look(
        &mut self,
        pid: i32,
        silent: bool,
        now: Instant,
        after: Duration,
    ) -> Option<Duration> {
        if !silent {
            self.since = None;
            return None;
        }
        let since = match self.since {
            Some((p, since)) if p == pid => since,
            _ => {
                self.since = Some((pid, now));
                now
            }
        };
        let silent_for = now.saturating_duration_since(since);
        (silent_for >= after).then_some(silent_for)
    }
}

/// One heartbeat after [`HEARTBEAT`]: false when the query failed or took longer than
/// [`HEARTBEAT_TIMEOUT`].
async fn heartbeat(client: &Client) -> bool {
    tokio::time::sleep(HEARTBEAT).await;
    matches!(
        tokio::time::timeout(HEARTBEAT_TIMEOUT, client.simple_query("SELECT 1")).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_stable_and_differs_per_slot() {
        assert_eq!(slot_key("ds_sync"), slot_key("ds_sync"));
        assert_ne!(slot_key("ds_sync"), slot_key("ds_sync2"));
        // FNV-1a (32 bits) of "ds-sync/slot/a", computed outside ds-sync: a fixed value, so
        // that any change of the key (and so of the lock two versions would take) shows.
        assert_eq!(slot_key("a"), -849_116_455);
    }

    #[test]
    fn a_holder_is_broken_only_after_staying_silent_for_the_timeout() {
        let t0 = Instant::now();
        let after = Duration::from_secs(10);
        let mut clock = HungClock::default();
        assert_eq!(clock.look(7, true, t0, after), None);
        assert_eq!(
            clock.look(7, true, t0 + Duration::from_secs(9), after),
            None
        );
        // It answered once: the count starts over.
        assert_eq!(
            clock.look(7, false, t0 + Duration::from_secs(10), after),
            None
        );
        assert_eq!(
            clock.look(7, true, t0 + Duration::from_secs(11), after),
            None
        );
        assert_eq!(
            clock.look(7, true, t0 + Duration::from_secs(20), after),
            None
        );
        assert_eq!(
            clock.look(7, true, t0 + Duration::from_secs(21), after),
            Some(Duration::from_secs(10))
        );
        // A new holder is given its own time.
        assert_eq!(
            clock.look(8, true, t0 + Duration::from_secs(22), after),
            None
        );
        assert_eq!(
            clock.look(8, true, t0 + Duration::from_secs(22), Duration::ZERO),
            Some(Duration::ZERO)
        );
    }
}
