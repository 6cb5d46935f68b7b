//! What both latency scenarios share: per-item send and arrival times, senders paced to a
//! rate, waiting for arrivals, and the distribution.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::BenchError;
use super::report::Latency;
use super::stack::DsSyncProcess;
use super::workload::Bar;

/// Target p99 for `ingest-latency`, POST to committed row at 2,000 events/s.
pub(super) const INGEST_P99_TARGET_MS: f64 = 10.0;

/// A histogram of latencies in µs, 1 µs to 10 minutes, 3 significant digits: what every
/// latency of the reports is recorded in (see `Latency::from_histogram`).
pub(super) fn histogram() -> Result<hdrhistogram::Histogram<u64>, BenchError> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| BenchError::Report(e.to_string()))
}

/// Per-item times in µs since `base`, indexed by item number (0: not yet).
pub(super) struct Stamps {
    base: Instant,
    /// `base` on the Unix clock, in µs: to line stamps up with another process's times.
    base_unix_us: u64,
    sent: Vec<AtomicU64>,
    arrived: Vec<AtomicU64>,
}

impl Stamps {
    /// Room for items `0..=last`.
    pub(super) fn new(last: usize) -> Arc<Stamps> {
        let slots = || (0..=last).map(|_| AtomicU64::new(0)).collect();
        let base_unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Arc::new(Stamps {
            base: Instant::now(),
            base_unix_us,
            sent: slots(),
            arrived: slots(),
        })
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_micros() as u64 + 1
    }

    /// Records the first send of `item`: a sender that stamps before its request keeps that
    /// stamp when `paced` stamps again after it.
    pub(super) fn sent(&self, item: usize) {
        let _ =
            self.sent[item].compare_exchange(0, self.now(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// When `item` was sent and when it arrived, on the Unix clock in µs (`None`: not yet).
    pub(super) fn unix_us(&self, item: usize) -> (Option<u64>, Option<u64>) {
        let at = |v: &AtomicU64| match v.load(Ordering::Relaxed) {
            0 => None,
            t => Some(self.base_unix_us + t - 1),
        };
        (at(&self.sent[item]), at(&self.arrived[item]))
    }

    /// Records the first arrival of `item`; items out of range are someone else's.
    pub(super) fn arrived(&self, item: u64) {
        if let Some(slot) = usize::try_from(item).ok().and_then(|i| self.arrived.get(i)) {
            let _ = slot.compare_exchange(0, self.now(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn sent_count(&self) -> u64 {
        self.sent
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) > 0)
            .count() as u64
    }

    /// Waits until every item of `items` arrived; fails when ds-sync exits or `timeout`
    /// passes first.
    pub(super) async fn wait_arrived(
        &self,
        items: Range<usize>,
        timeout: Duration,
        mut process: Option<&mut DsSyncProcess>,
        what: &str,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = items
                .clone()
                .filter(|&i| self.arrived[i].load(Ordering::Relaxed) == 0)
                .count();
            if missing == 0 {
                return Ok(());
            }
            if let Some(p) = process.as_deref_mut() {
                p.check_alive()?;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout {
                    what: format!("{what} arriving"),
                    secs: timeout.as_secs(),
                    detail: format!("{missing} of {} never arrived", items.len()),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The distribution of arrival minus send time over `items`.
    pub(super) fn latency(&self, name: &str, items: Range<usize>) -> Result<Latency, BenchError> {
        let mut h = histogram()?;
        for i in items {
            let sent = self.sent[i].load(Ordering::Relaxed);
            let arrived = self.arrived[i].load(Ordering::Relaxed);
            h.saturating_record(arrived.saturating_sub(sent).max(1));
        }
        Ok(Latency::from_histogram(name, &h))
    }
}

/// Sends `items` at `rate` per second over all `senders` together (one task each, every one
/// paced to its share), stamping each item when its send returns (unless the sender stamped
/// it first). Returns the time the sending took.
pub(super) async fn paced<S, F, Fut>(
    senders: Vec<S>,
    rate: u32,
    items: std::ops::RangeInclusive<usize>,
    stamps: &Arc<Stamps>,
    mut process: Option<&mut DsSyncProcess>,
    bar: &Bar,
    send: F,
) -> Result<Duration, BenchError>
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, usize) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = Result<(), BenchError>> + Send,
{
    let count = senders.len().max(1);
    let period = Duration::from_secs_f64(count as f64 / f64::from(rate.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (w, sender) in senders.into_iter().enumerate() {
        let (sender, stamps, items) = (Arc::new(sender), Arc::clone(stamps), items.clone());
        tasks.spawn(async move {
            let mut next = Instant::now();
            for item in ((items.start() + w)..=*items.end()).step_by(count) {
                tokio::time::sleep_until(next.into()).await;
                send(Arc::clone(&sender), item).await?;
                stamps.sent(item);
                next += period;
            }
            Ok::<(), BenchError>(())
        });
    }
    while !tasks.is_empty() {
        tokio::select! {
            r = tasks.join_next() => if let Some(r) = r {
                r.map_err(|e| BenchError::Setup(format!("sender task: {e}")))??;
            },
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                if let Some(p) = process.as_deref_mut() {
                    p.check_alive()?;
                }
                bar.set(stamps.sent_count());
            }
        }
    }
    bar.finish();
    Ok(started.elapsed())
}
