//! Leases: which running ingest instance follows which subscription, so that several
//! `ds-sync run` share the stored subscriptions instead of each reading them all.
//!
//! ```text
//!  every tick (≤ 1 s):  UPSERT ingest_instances SET lease_until = now() + TTL   (heartbeat:
//!                       one statement renews every lease this instance holds)
//!                       read subscriptions with their owner, and how many instances live
//!                       decide: share = ceil(subscriptions / live instances)
//!                         under it ─▶ claim free ones (no owner, or an owner not live)
//!                         over it  ─▶ stop a few tasks (between commits), then release them
//!                       run a task for each subscription owned, stop the others
//! ```
//!
//! A subscription's lease is its `owner` column: it holds while the owning instance is live,
//! that is while its row's `lease_until` (the database's clock) has not passed and its
//! listening session is still connected (view `ds_sync.live_ingest_instances`). A killed
//! instance's streams are taken at the next tick of the others; a hung one's once its lease
//! runs out. An instance that cannot renew for a whole TTL stops its own tasks, since others
//! may have taken them; one whose streams were taken stops those tasks at its next tick.
//! Neither is needed for exactly once: the commit transaction moves a stream's offset only
//! from the offset its task started from, so two instances on one stream cannot both store
//! an event (see [`writer`](super::writer)).
//!
//! Balance without thrash: an instance claims only while under its share and releases only
//! while over it, at most a quarter of its share per tick, so the fleet settles with no
//! instance over `ceil(n / live)` and stays there. A new instance that sees others live
//! claims from its second tick on, so that instances started one after another have seen
//! each other by then; a lone one claims at once (a single sidecar does not wait a tick).

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::store::Wanted;
use crate::pg::PgError;

/// Default `--ingest-lease-ttl`: a hung instance's streams move after at most this long.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// Longest time between heartbeats (a shorter TTL beats three times per TTL).
const TICK_CEILING: Duration = Duration::from_secs(1);
/// Shortest time between heartbeats.
const TICK_FLOOR: Duration = Duration::from_millis(100);

/// How often an instance with lease time `ttl` renews and rebalances.
#[must_use]
pub fn tick_every(ttl: Duration) -> Duration {
    (ttl / 3).clamp(TICK_FLOOR, TICK_CEILING)
}

/// What the instances register: a random id, and where it runs for people to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub host: String,
    pub pid: u32,
}

impl Instance {
    /// This process, under a fresh id (a restarted process is a new instance).
    #[must_use]
    pub fn this_process() -> Instance {
        let pid = std::process::id();
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(pid);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".to_owned());
        Instance {
            id: format!("{:016x}", h.finish()),
            host,
            pid,
        }
    }
}

/// Who follows one subscription, as this instance sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Me,
    /// Another live instance.
    Other,
    /// Nobody, or an instance that is not live any more: it may be claimed.
    Free,
}

/// Every subscription with its owner, and how many instances are live.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub rows: Vec<(Wanted, Owner)>,
    /// Live instances, this one included.
    pub live: usize,
}

impl View {
    /// The figures the balance is decided on.
    #[must_use]
    pub fn counts(&self) -> Counts {
        let count = |o: Owner| self.rows.iter().filter(|(_, w)| *w == o).count();
        Counts {
            total: self.rows.len(),
            live: self.live,
            mine: count(Owner::Me),
            free: count(Owner::Free),
        }
    }

    /// The subscriptions this instance owns, by stream name.
    #[must_use]
    pub fn mine(&self) -> Vec<Wanted> {
        let mut mine: Vec<Wanted> = self
            .rows
            .iter()
            .filter(|(_, o)| *o == Owner::Me)
            .map(|(w, _)| w.clone())
            .collect();
        mine.sort_by(|a, b| a.stream.cmp(&b.stream));
        mine
    }
}

/// What the balance is decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Subscriptions stored.
    pub total: usize,
    /// Live instances, this one included.
    pub live: usize,
    /// Subscriptions this instance owns.
    pub mine: usize,
    /// Subscriptions nobody live owns.
    pub free: usize,
}

/// What one tick does: claim up to `claim` free subscriptions, or release `release` owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    pub claim: usize,
    pub release: usize,
}

impl Counts {
    /// This instance's fair share: `ceil(total / live)`.
    #[must_use]
    pub fn share(&self) -> usize {
        self.total.div_ceil(self.live.max(1))
    }
}

/// The balance: under the share, claim what is free up to it; over it, release at most a
/// quarter of the share per tick (so a joining instance's share moves over a few ticks,
/// not in one burst of reconnections); at it, nothing. Pure.
#[must_use]
pub fn decide(c: Counts) -> Decision {
    let share = c.share();
    if c.mine < share {
        Decision {
            claim: (share - c.mine).min(c.free),
            release: 0,
        }
    } else if c.mine > share {
        Decision {
            claim: 0,
            release: (c.mine - share).min(share.div_ceil(4).max(1)),
        }
    } else {
        Decision::default()
    }
}

fn q(context: &str) -> impl Fn(tokio_postgres::Error) -> PgError + '_ {
    move |e| PgError::query(context, &e)
}

/// This instance's leases.
#[derive(Debug)]
pub struct Leases {
    instance: Instance,
    ttl: Duration,
    /// When the last renewal that succeeded was sent.
    renewed_at: Option<Instant>,
    /// When the first one was.
    registered_at: Option<Instant>,
}

impl Leases {
    #[must_use]
    pub fn new(instance: Instance, ttl: Duration) -> Leases {
        Leases {
            instance,
            ttl,
            renewed_at: None,
            registered_at: None,
        }
    }

    #[must_use]
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// How long a lease lasts after a renewal.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The heartbeat: registers this instance (on `client`'s session, which must be the one
    /// that lives as long as the instance) and renews every lease it holds.
    ///
    /// # Errors
    ///
    /// A failed statement.
    pub async fn renew(&mut self, client: &Client) -> Result<(), PgError> {
        let sent = Instant::now();
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let pid = i32::try_from(self.instance.pid).unwrap_or(i32::MAX);
        client
            .execute(
                "INSERT INTO ds_sync.ingest_instances AS i \
                     (instance_id, host, pid, backend_pid, backend_start, lease_until) \
                 SELECT $1, $2, $3, pg_backend_pid(), a.backend_start, \
                        now() + $4::int8 * interval '1 millisecond' \
                 FROM (SELECT (SELECT backend_start FROM pg_stat_activity \
                               WHERE pid = pg_backend_pid()) AS backend_start) a \
                 ON CONFLICT (instance_id) DO UPDATE SET backend_pid = EXCLUDED.backend_pid, \
                     backend_start = EXCLUDED.backend_start, heartbeat_at = now(), \
                     lease_until = EXCLUDED.lease_until",
                &[&self.instance.id, &self.instance.host, &pid, &ttl_ms],
            )
            .await
            .map_err(q("renewing this instance's ingest leases"))?;
        self.renewed_at = Some(sent);
        self.registered_at.get_or_insert(sent);
        Ok(())
    }

    /// Whether this instance may claim, `live` instances being live by its last view: at
    /// once when it is the only one (a lone instance, the usual sidecar, starts ingesting
    /// without waiting), otherwise from its second tick on, so that instances started
    /// together see each other before they claim, instead of the first taking everything
    /// and handing most of it back. (The second tick may come a little under a tick after
    /// the first: a tenth of one is allowed.)
    #[must_use]
    pub fn may_claim(&self, live: usize) -> bool {
        live <= 1
            || self
                .registered_at
                .is_some_and(|at| at.elapsed() >= tick_every(self.ttl).mul_f64(0.9))
    }

    /// Whether the leases may have run out: no renewal succeeded for a whole TTL (others
    /// may have taken the streams).
    #[must_use]
    pub fn lapsed(&self) -> bool {
        self.renewed_at.is_some_and(|at| at.elapsed() >= self.ttl)
    }

    /// Every subscription with its stored offset and owner.
    ///
    /// # Errors
    ///
    /// A failed statement.
    pub async fn view(&self, client: &Client) -> Result<View, PgError> {
        let rows = client
            .query(
                "WITH live AS MATERIALIZED (SELECT instance_id FROM ds_sync.live_ingest_instances) \
                 SELECT s.stream_name, s.generation, o.ds_offset, s.owner, \
                        s.owner IN (SELECT instance_id FROM live), \
                        (SELECT count(*) FROM live) \
                 FROM ds_sync.subscriptions s \
                 LEFT JOIN ds_sync.stream_offsets o USING (stream_name)",
                &[],
            )
            .await
            .map_err(q("reading subscriptions and their owners"))?;
        let mut view = View::default();
        for r in &rows {
            let owner: Option<String> = r.get(3);
            let live: Option<bool> = r.get(4);
            let owner = match (owner, live) {
                (Some(o), _) if o == self.instance.id => Owner::Me,
                (Some(_), Some(true)) => Owner::Other,
                _ => Owner::Free,
            };
            let wanted = Wanted {
                stream: r.get(0),
                generation: r.get(1),
                offset: r.get(2),
            };
            view.rows.push((wanted, owner));
            view.live = usize::try_from(r.get::<_, i64>(5)).unwrap_or(0);
        }
        view.live = view.live.max(1);
        Ok(view)
    }

    /// Takes up to `n` subscriptions nobody live owns; returns them with their generation
    /// (rows another instance is claiming at the same moment are skipped, not waited for).
    ///
    /// # Errors
    ///
    /// A failed statement.
    pub async fn claim(&self, client: &Client, n: usize) -> Result<Vec<(String, i64)>, PgError> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "WITH free AS ( \
                     SELECT s.stream_name FROM ds_sync.subscriptions s \
                     WHERE s.owner IS NULL \
                        OR s.owner NOT IN (SELECT instance_id FROM ds_sync.live_ingest_instances) \
                     LIMIT $2 FOR UPDATE OF s SKIP LOCKED) \
                 UPDATE ds_sync.subscriptions s SET owner = $1, owned_since = now() \
                 FROM free WHERE s.stream_name = free.stream_name \
                 RETURNING s.stream_name, s.generation",
                &[&self.instance.id, &n],
            )
            .await
            .map_err(q("claiming subscriptions"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Gives up `streams` (their tasks must be stopped first, so that their offsets are
    /// stored).
    ///
    /// # Errors
    ///
    /// A failed statement.
    pub async fn release(&self, client: &Client, streams: &[String]) -> Result<(), PgError> {
        client
            .execute(
                "UPDATE ds_sync.subscriptions SET owner = NULL, owned_since = NULL \
                 WHERE owner = $1 AND stream_name = ANY($2)",
                &[&self.instance.id, &streams],
            )
            .await
            .map_err(q("releasing subscriptions"))?;
        Ok(())
    }

    /// Forgets instances that are not live and own nothing (a killed one, once its streams
    /// were taken).
    ///
    /// # Errors
    ///
    /// A failed statement.
    pub async fn forget_gone(&self, client: &Client) -> Result<(), PgError> {
        client
            .execute(
                "DELETE FROM ds_sync.ingest_instances i \
                 WHERE i.instance_id NOT IN (SELECT instance_id FROM ds_sync.live_ingest_instances) \
                   AND NOT EXISTS (SELECT 1 FROM ds_sync.subscriptions s WHERE s.owner = i.instance_id)",
                &[],
            )
            .await
            .map_err(q("forgetting ingest instances that are gone"))?;
        Ok(())
    }

    /// A clean stop: every lease given back and the instance unregistered, in one
    /// statement, so that the others take its streams at their next tick (the tasks must be
    /// stopped first).
    ///
    /// # Errors
    ///
    /// A failed statement.
    pub async fn retire(&self, client: &Client) -> Result<(), PgError> {
        client
            .execute(
                "WITH released AS ( \
                     UPDATE ds_sync.subscriptions SET owner = NULL, owned_since = NULL \
                     WHERE owner = $1) \
                 DELETE FROM ds_sync.ingest_instances WHERE instance_id = $1",
                &[&self.instance.id],
            )
            .await
            .map_err(q("giving back this instance's ingest leases"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(total: usize, live: usize, mine: usize, free: usize) -> Counts {
        Counts {
            total,
            live,
            mine,
            free,
        }
    }

    #[test]
    fn a_lone_instance_takes_everything() {
        assert_eq!(
            decide(counts(60, 1, 0, 60)),
            Decision {
                claim: 60,
                release: 0
            }
        );
    }

    #[test]
    fn an_instance_claims_only_up_to_its_share_and_only_what_is_free() {
        assert_eq!(decide(counts(60, 3, 0, 60)).claim, 20);
        assert_eq!(decide(counts(60, 3, 15, 60)).claim, 5);
        // The others hold everything: nothing to claim until they release.
        assert_eq!(decide(counts(60, 3, 0, 0)), Decision::default());
        assert_eq!(decide(counts(60, 3, 10, 4)).claim, 4);
        // A share rounds up, so every subscription finds room.
        assert_eq!(decide(counts(61, 3, 20, 1)).claim, 1);
    }

    #[test]
    fn an_instance_over_its_share_releases_gradually() {
        // A third instance joined two that split 60: share 20, excess 10, 5 per tick.
        assert_eq!(
            decide(counts(60, 3, 30, 0)),
            Decision {
                claim: 0,
                release: 5
            }
        );
        assert_eq!(decide(counts(60, 3, 25, 0)).release, 5);
        assert_eq!(decide(counts(60, 3, 21, 0)).release, 1);
        // At least one per tick, however small the share.
        assert_eq!(decide(counts(2, 4, 2, 0)).release, 1);
    }

    #[test]
    fn at_the_share_nothing_moves() {
        for (total, live) in [(60, 3), (61, 3), (10_000, 4), (3, 4), (0, 2)] {
            let share = counts(total, live, 0, 0).share();
            assert_eq!(
                decide(counts(total, live, share, 0)),
                Decision::default(),
                "{total} over {live}"
            );
        }
    }

    /// Instances that each follow `decide`, ticking in turn, settle with no one over the
    /// share and every subscription owned, and then stay put.
    #[test]
    fn a_fleet_settles_and_stays() {
        for (total, live) in [(60, 3), (61, 4), (10_000, 4), (5, 7)] {
            let mut mine = vec![0usize; live];
            mine[0] = total;
            let mut settled_at = None;
            for round in 0..100 {
                let before = mine.clone();
                for i in 0..live {
                    let free = total - mine.iter().sum::<usize>();
                    let d = decide(counts(total, live, mine[i], free));
                    mine[i] = mine[i] + d.claim - d.release;
                }
                if mine == before && settled_at.is_none() {
                    settled_at = Some(round);
                }
                if settled_at.is_some() {
                    assert_eq!(mine, before, "moved again after settling: {total}/{live}");
                }
            }
            let share = total.div_ceil(live);
            assert!(
                settled_at.is_some_and(|r| r < 20),
                "{total}/{live}: {mine:?}"
            );
            assert_eq!(mine.iter().sum::<usize>(), total, "{mine:?}");
            assert!(mine.iter().all(|m| *m <= share), "{mine:?}");
        }
    }

    #[test]
    fn heartbeats_come_three_times_per_ttl_within_bounds() {
        assert_eq!(tick_every(Duration::from_secs(15)), Duration::from_secs(1));
        assert_eq!(tick_every(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(
            tick_every(Duration::from_millis(900)),
            Duration::from_millis(300)
        );
        assert_eq!(
            tick_every(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn a_lone_instance_claims_at_once_and_one_among_others_from_its_second_tick() {
        let mut leases = Leases::new(Instance::this_process(), Duration::from_secs(15));
        leases.registered_at = Some(std::time::Instant::now());
        assert!(leases.may_claim(1), "alone: no wait");
        assert!(!leases.may_claim(2), "among others: not on the first tick");
        leases.registered_at = Some(std::time::Instant::now() - Duration::from_millis(950));
        assert!(
            leases.may_claim(2),
            "the second tick may come a little early"
        );
    }

    #[test]
    fn instances_get_distinct_ids() {
        let (a, b) = (Instance::this_process(), Instance::this_process());
        assert_ne!(a.id, b.id);
        assert_eq!(a.pid, std::process::id());
        assert!(!a.host.is_empty());
    }
}
