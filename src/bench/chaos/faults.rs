//! The chaos run's faults: a schedule drawn from a seed (the same seed gives the same
//! faults at the same moments), and the acts that carry each one out on the stack, the
//! fault proxies and the ds-sync process.

use std::fmt;
use std::time::Duration;

/// How many faults of each kind a run gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    pub kills: u32,
    pub pg_restarts: u32,
    pub ds_restarts: u32,
    pub cuts: u32,
    pub freezes: u32,
}

impl Plan {
    /// `kills` SIGKILLs, and the other kinds in proportion: a PostgreSQL and a DS server
    /// restart per 10 kills (at least 3 each once there are 10 kills or more), a connection
    /// cut and a freeze per 5 kills (at least 2 of each, so that both proxies get one).
    pub(super) fn for_kills(kills: u32) -> Plan {
        let restarts = if kills >= 10 {
            kills.div_ceil(10).max(3)
        } else {
            1
        };
        Plan {
            kills,
            pg_restarts: restarts,
            ds_restarts: restarts,
            cuts: kills.div_ceil(5).max(2),
            freezes: kills.div_ceil(5).max(2),
        }
    }
}

/// Which connections a proxy fault hits: ds-sync's to PostgreSQL or to the DS server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Postgres,
    Ds,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Postgres => "PostgreSQL",
            Side::Ds => "DS server",
        })
    }
}

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// SIGKILL of ds-sync, started again after `pause`.
    Kill { pause: Duration },
    /// PostgreSQL stopped with `-m immediate`, started again after `down`.
    PgRestart { down: Duration },
    /// The DS server stopped (streams kept), started again after `down`.
    DsRestart { down: Duration },
    /// Every open connection of ds-sync to `side` reset.
    Cut(Side),
    /// Every open connection of ds-sync to `side` frozen (no FIN, no RST) for `hold`.
    Freeze { side: Side, hold: Duration },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill { pause } => write!(f, "SIGKILL ds-sync, restart after {pause:?}"),
            Fault::PgRestart { down } => {
                write!(f, "PostgreSQL stop -m immediate, start after {down:?}")
            }
            Fault::DsRestart { down } => write!(f, "DS server stop, start after {down:?}"),
            Fault::Cut(side) => write!(f, "cut ds-sync's connections to the {side}"),
            Fault::Freeze { side, hold } => {
                write!(f, "freeze ds-sync's connections to the {side} for {hold:?}")
            }
        }
    }
}

/// A seeded generator (splitmix64): the schedule and the load's choices are reproducible
/// from the seed the report gives.
#[derive(Debug, Clone)]
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// A duration between `lo` and `hi` (whole milliseconds).
    pub(super) fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }

    /// True with probability `percent` / 100.
    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Longest a freeze holds; at least the ingest idle timeout the run sets, so that frozen SSE
/// connections are given up by ds-sync rather than resumed.
pub(super) const FREEZE_RANGE: (Duration, Duration) =
    (Duration::from_millis(2500), Duration::from_millis(6000));
/// How long a restarted server stays down.
const DOWN_RANGE: (Duration, Duration) = (Duration::from_millis(300), Duration::from_millis(4000));
/// How long ds-sync stays dead after a SIGKILL.
const PAUSE_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_millis(500));

/// The faults of a run of `duration`, sorted by when they strike (from the load's start).
/// SIGKILLs are spread evenly (one in each equal slice of the run, at a random moment in
/// it); the other faults strike at random moments. Faults run one after the other, so one
/// that takes longer than the gap to the next delays it.
pub(super) fn schedule(seed: u64, duration: Duration, plan: Plan) -> Vec<(Duration, Fault)> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let window = duration.mul_f64(0.9);
    if plan.kills > 0 {
        let slice = window / plan.kills;
        for i in 0..plan.kills {
            let at = slice * i + rng.between(Duration::ZERO, slice);
            let pause = rng.between(PAUSE_RANGE.0, PAUSE_RANGE.1);
            out.push((at, Fault::Kill { pause }));
        }
    }
    let random_at = |rng: &mut Rng| rng.between(duration / 20, window);
    for _ in 0..plan.pg_restarts {
        let down = rng.between(DOWN_RANGE.0, DOWN_RANGE.1);
        out.push((random_at(&mut rng), Fault::PgRestart { down }));
    }
    for _ in 0..plan.ds_restarts {
        let down = rng.between(DOWN_RANGE.0, DOWN_RANGE.1);
        out.push((random_at(&mut rng), Fault::DsRestart { down }));
    }
    for i in 0..plan.cuts {
        out.push((random_at(&mut rng), Fault::Cut(alternate(i))));
    }
    for i in 0..plan.freezes {
        let hold = rng.between(FREEZE_RANGE.0, FREEZE_RANGE.1);
        let side = alternate(i);
        out.push((random_at(&mut rng), Fault::Freeze { side, hold }));
    }
    out.sort_by_key(|(at, _)| *at);
    out
}

fn alternate(i: u32) -> Side {
    if i.is_multiple_of(2) {
        Side::Postgres
    } else {
        Side::Ds
    }
}

/// How many faults of each kind were carried out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Done {
    pub kills: u32,
    pub pg_restarts: u32,
    pub ds_restarts: u32,
    pub pg_cuts: u32,
    pub ds_cuts: u32,
    pub pg_freezes: u32,
    pub ds_freezes: u32,
}

impl Done {
    pub(super) fn count(&mut self, fault: Fault) {
        match fault {
            Fault::Kill { .. } => self.kills += 1,
            Fault::PgRestart { .. } => self.pg_restarts += 1,
            Fault::DsRestart { .. } => self.ds_restarts += 1,
            Fault::Cut(Side::Postgres) => self.pg_cuts += 1,
            Fault::Cut(Side::Ds) => self.ds_cuts += 1,
            Fault::Freeze {
                side: Side::Postgres,
                ..
            } => self.pg_freezes += 1,
            Fault::Freeze { side: Side::Ds, .. } => self.ds_freezes += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_and_every_planned_fault() {
        let plan = Plan::for_kills(50);
        assert_eq!((plan.pg_restarts, plan.ds_restarts), (5, 5));
        let run = Duration::from_secs(600);
        let a = schedule(7, run, plan);
        assert_eq!(a, schedule(7, run, plan));
        assert_ne!(a, schedule(8, run, plan));
        let mut done = Done::default();
        for (_, f) in &a {
            done.count(*f);
        }
        assert_eq!(done.kills, 50);
        assert_eq!((done.pg_restarts, done.ds_restarts), (5, 5));
        assert_eq!(done.pg_cuts + done.ds_cuts, 10);
        assert!(done.pg_cuts > 0 && done.ds_cuts > 0 && done.pg_freezes > 0);
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0), "sorted");
        assert!(a.iter().all(|(at, _)| *at <= run));
    }

    #[test]
    fn small_runs_still_get_each_kind_of_fault() {
        let plan = Plan::for_kills(3);
        assert_eq!(
            plan,
            Plan {
                kills: 3,
                pg_restarts: 1,
                ds_restarts: 1,
                cuts: 2,
                freezes: 2
            }
        );
        assert_eq!(Plan::for_kills(10).pg_restarts, 3);
    }

    #[test]
    fn durations_stay_in_their_range() {
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            let d = rng.between(Duration::from_millis(10), Duration::from_millis(20));
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(20));
        }
        assert_eq!(rng.below(0), 0);
    }
}
