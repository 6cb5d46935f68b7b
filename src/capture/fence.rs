//! Fencing: at most one capture process appends to the streams of a slot at a time.
//!
//! `--takeover` terminates the walsender of a process that holds the slot, but a process
//! that is paused (SIGSTOP, a long GC-like stall, a network partition) is still alive: when
//! it resumes it would POST what it held, after its successor started. Its batches carry
//! the same `Stream-Seq` values as the successor's, but not the same batch boundaries, so a
//! late batch could append messages the successor already wrote (a duplicate, out of order).
//!
//! ```text
//!  taking the slot (before creating, dropping or streaming from it; not while merely
//!  waiting for a slot another walsender holds, unless --takeover):
//!         UPDATE ds_sync.slot_owners SET epoch = epoch + 1   ─▶ my epoch; the previous
//!         owner's lease_until tells how long to wait before the first POST
//!  every 500 ms: UPDATE .. SET lease_until = now() + 3 s WHERE epoch = mine
//!         1 row  ─▶ POSTs allowed until (time the UPDATE was sent) + 3 s
//!         0 rows ─▶ fenced: a later process took the slot; stop (exit code 6)
//!  before every POST attempt: wait until the lease is valid (or stop when fenced)
//! ```
//!
//! The successor waits until the predecessor's last lease has run out (measured on the
//! database's clock, then waited on its own), so by the time it posts, the predecessor's
//! local lease, which started when its renewal was sent and so ends no later, has expired
//! too: every later POST attempt of the predecessor stops at its lease check. The remaining
//! window (README, "Fencing"): a request that passed its lease check and was then delayed
//! for longer than the rest of the lease before its bytes reached the DS server.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::pg::{PgError, PgTarget};

use super::error::CaptureError;

/// How long one renewal lets a process POST: six renewals long, so a loaded machine or a
/// slow database delays renewals without pausing POSTs; also the longest a successor waits.
pub const LEASE: Duration = Duration::from_millis(3000);
/// `application_name` of the connection that renews the lease.
pub const APPLICATION_NAME: &str = "ds-sync/fence";
/// How often the lease is renewed.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);

/// This process's claim on a slot. Cheap to clone.
#[derive(Clone)]
pub struct Fence {
    inner: Arc<Inner>,
}

struct Inner {
    slot: String,
    target: PgTarget,
    /// This process's epoch; 0 until it takes the slot.
    epoch: AtomicI64,
    base: Instant,
    /// Nanoseconds after `base` from which POSTs may start (the predecessor's lease ran out).
    valid_from: AtomicU64,
    /// Nanoseconds after `base` until which the lease holds.
    valid_until: AtomicU64,
    renewed: Notify,
    fenced: CancellationToken,
    /// Who fenced us, for the error.
    successor: std::sync::Mutex<Option<(i64, String)>>,
    stop: CancellationToken,
}

impl Fence {
    /// A fence for `slot` that does not hold it yet: see [`Fence::take`].
    pub fn new(target: &PgTarget, slot: &str) -> Fence {
        Fence {
            inner: Arc::new(Inner {
                slot: slot.to_string(),
                // Its own connection, told apart in pg_stat_activity.
                target: target.with_application_name(APPLICATION_NAME),
                epoch: AtomicI64::new(0),
                base: Instant::now(),
                valid_from: AtomicU64::new(u64::MAX),
                valid_until: AtomicU64::new(0),
                renewed: Notify::new(),
                fenced: CancellationToken::new(),
                successor: std::sync::Mutex::new(None),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// Takes the slot before using it (creating, dropping or streaming from it): raises its
    /// epoch, so a process that had it stops at its next lease renewal, and starts renewing
    /// a lease of this process's own from a task with its own connection. The first POST
    /// waits until the predecessor's lease has run out.
    ///
    /// Without `takeover`, a slot another walsender holds is not taken (the caller waits
    /// for it), so a process that waits never fences the one it waits for. Once taken, this
    /// checks the slot is still ours: `Err` when a later process took it.
    pub async fn take(&self, sql: &Client, takeover: bool) -> Result<(), CaptureError> {
        if self.inner.epoch.load(Ordering::Acquire) != 0 {
            return self.check(sql).await;
        }
        if !takeover
            && crate::slot::find(sql, &self.inner.slot)
                .await?
                .is_some_and(|s| s.active)
        {
            return Ok(());
        }
        let owner = format!(
            "{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
            std::process::id()
        );
        let row = sql
            .query_one(
                "INSERT INTO ds_sync.slot_owners AS o (slot_name, epoch, owner) VALUES ($1, 1, $2) \
                 ON CONFLICT (slot_name) DO UPDATE SET epoch = o.epoch + 1, owner = EXCLUDED.owner, \
                   prev_lease_until = o.lease_until, lease_until = NULL, taken_at = now() \
                 RETURNING epoch, \
                   GREATEST(0, EXTRACT(EPOCH FROM (prev_lease_until - clock_timestamp())) * 1000)::float8",
                &[&self.inner.slot, &owner],
            )
            .await
            .map_err(|e| PgError::query("taking the slot in ds_sync.slot_owners", &e))?;
        let epoch: i64 = row.get(0);
        let wait_ms: Option<f64> = row.get(1);
        let wait = Duration::from_millis(wait_ms.unwrap_or(0.0).ceil() as u64);
        let from = (Instant::now() + wait - self.inner.base).as_nanos() as u64;
        self.inner.valid_from.store(from, Ordering::Release);
        self.inner.epoch.store(epoch, Ordering::Release);
        let slot = &self.inner.slot;
        if wait.is_zero() {
            tracing::debug!(slot, epoch, "took the slot");
        } else {
            tracing::info!(
                slot,
                epoch,
                wait_ms = wait.as_millis() as u64,
                "took the slot; waiting for the previous owner's lease to run out before the first POST"
            );
        }
        let own = self.inner.target.connect().await?;
        self.renew(&own).await?;
        tokio::spawn(renew_loop(Arc::downgrade(&self.inner), own));
        Ok(())
    }

    /// This process's epoch; 0 before it took the slot.
    pub fn epoch(&self) -> i64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// Cancelled once a later process took the slot.
    pub fn fenced(&self) -> &CancellationToken {
        &self.inner.fenced
    }

    /// The error to stop with once fenced.
    pub fn error(&self) -> CaptureError {
        let (epoch, owner) = self
            .inner
            .successor
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .unwrap_or((self.epoch() + 1, "another process".into()));
        CaptureError::Fenced {
            slot: self.inner.slot.clone(),
            epoch: self.epoch(),
            successor_epoch: epoch,
            successor: owner,
        }
    }

    /// Waits until a POST may start; `Err` once fenced.
    pub async fn admit(&self) -> Result<(), CaptureError> {
        loop {
            if self.inner.fenced.is_cancelled() {
                return Err(self.error());
            }
            let now = (Instant::now() - self.inner.base).as_nanos();
            let from = self.inner.valid_from.load(Ordering::Acquire);
            if from != u64::MAX && now < u128::from(from) {
                let at = self.inner.base + Duration::from_nanos(from);
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = self.inner.fenced.cancelled() => {}
                }
                continue;
            }
            let until = self.inner.valid_until.load(Ordering::Acquire);
            if from != u64::MAX && now < u128::from(until) {
                return Ok(());
            }
            let renewed = self.inner.renewed.notified();
            tokio::select! {
                _ = renewed => {}
                _ = self.inner.fenced.cancelled() => {}
                _ = tokio::time::sleep(RENEW_EVERY) => {}
            }
        }
    }

    /// Fails when a later process took the slot (checked on the database, not only the
    /// lease): called before reconnecting, so a fenced process never terminates its
    /// successor's walsender.
    pub async fn check(&self, sql: &Client) -> Result<(), CaptureError> {
        let row = sql
            .query_opt(
                "SELECT epoch, owner FROM ds_sync.slot_owners WHERE slot_name = $1",
                &[&self.inner.slot],
            )
            .await
            .map_err(|e| PgError::query("reading ds_sync.slot_owners", &e))?;
        match row {
            Some(r) if r.get::<_, i64>(0) != self.epoch() => {
                self.fence_by(r.get(0), r.get(1));
                Err(self.error())
            }
            _ => Ok(()),
        }
    }

    /// Gives the lease back at a clean stop, so the next start need not wait for it.
    pub async fn release(&self, sql: &Client) {
        self.inner.stop.cancel();
        let _ = sql
            .execute(
                "UPDATE ds_sync.slot_owners SET lease_until = NULL WHERE slot_name = $1 AND epoch = $2",
                &[&self.inner.slot, &self.epoch()],
            )
            .await;
    }

    fn fence_by(&self, epoch: i64, owner: String) {
        if let Ok(mut s) = self.inner.successor.lock() {
            *s = Some((epoch, owner));
        }
        if !self.inner.fenced.is_cancelled() {
            tracing::error!(slot = %self.inner.slot, epoch = self.epoch(), successor_epoch = epoch, "another process took the slot over: stopping");
        }
        self.inner.fenced.cancel();
    }

    /// One renewal: extends the lease from the moment the UPDATE was sent.
    async fn renew(&self, sql: &Client) -> Result<(), CaptureError> {
        let sent = Instant::now();
        let row = sql
            .query_opt(
                "UPDATE ds_sync.slot_owners SET lease_until = clock_timestamp() + $3::float8 * interval '1 millisecond' \
                 WHERE slot_name = $1 AND epoch = $2 RETURNING epoch",
                &[&self.inner.slot, &self.epoch(), &(LEASE.as_millis() as f64)],
            )
            .await
            .map_err(|e| PgError::query("renewing the lease in ds_sync.slot_owners", &e))?;
        if row.is_none() {
            self.check(sql).await?;
            self.fence_by(
                0,
                "nobody (its row in ds_sync.slot_owners was removed)".into(),
            );
            return Err(self.error());
        }
        let until = (sent + LEASE - self.inner.base).as_nanos() as u64;
        let before = self.inner.valid_until.fetch_max(until, Ordering::AcqRel);
        let sent_at = (sent - self.inner.base).as_nanos() as u64;
        if before != 0 && before < sent_at {
            tracing::warn!(slot = %self.inner.slot, lapsed_ms = (sent_at - before) / 1_000_000, "the slot lease was renewed late: POSTs waited meanwhile");
        }
        self.inner.renewed.notify_waiters();
        Ok(())
    }
}

/// Renews the lease until stopped, fenced or dropped, reconnecting when the connection is
/// lost (meanwhile the lease runs out and POSTs wait).
async fn renew_loop(inner: std::sync::Weak<Inner>, mut sql: Client) {
    loop {
        let Some(fence) = inner.upgrade().map(|inner| Fence { inner }) else {
            return;
        };
        let (stop, fenced) = (fence.inner.stop.clone(), fence.inner.fenced.clone());
        drop(fence);
        tokio::select! {
            _ = tokio::time::sleep(RENEW_EVERY) => {}
            _ = stop.cancelled() => return,
            _ = fenced.cancelled() => return,
        }
        let Some(fence) = inner.upgrade().map(|inner| Fence { inner }) else {
            return;
        };
        if sql.is_closed() {
            match fence.inner.target.connect().await {
                Ok(c) => sql = c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the slot lease: POSTs wait until it is renewed");
                    continue;
                }
            }
        }
        match fence.renew(&sql).await {
            Ok(()) => {}
            Err(CaptureError::Fenced { .. }) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the slot lease: POSTs wait until it is renewed")
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
