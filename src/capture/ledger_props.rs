//! Property tests of the LSN ledger against a reference model (proptest).
//!
//! Random interleavings of begin, route, acknowledge, commit, keepalive, abandon and advance
//! drive [`Ledger`] and a deliberately naive model of the same rules side by side: the
//! confirmed positions must agree after every step, and independently of the model, no
//! confirmed position may pass a transaction whose messages were not all acknowledged.
//! The whole capture path (queues, a simulated DS server, reconnects) is `pipeline_props`.

use proptest::prelude::*;

use super::ledger::Ledger;
use crate::lsn::Lsn;

/// One step of a replication session as the ledger sees it.
#[derive(Debug, Clone)]
enum Step {
    /// A transaction begins (its commit LSN some way past the WAL position).
    Begin { gap: u8 },
    /// `n` messages of the open transaction were routed to streams.
    Route { n: u8 },
    /// The open transaction's Commit arrived.
    Commit,
    /// The DS server acknowledged up to `n` messages of the `pick`-th unacknowledged one.
    Ack { pick: u8, n: u8 },
    /// A keepalive `ahead` bytes past the WAL position.
    Keepalive { ahead: u8 },
    /// The stream broke before the open transaction's Commit.
    Abandon,
    /// The loop asks for the confirmable position.
    Advance,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => any::<u8>().prop_map(|gap| Step::Begin { gap }),
        4 => (0..4u8).prop_map(|n| Step::Route { n }),
        3 => Just(Step::Commit),
        5 => (any::<u8>(), 1..4u8).prop_map(|(pick, n)| Step::Ack { pick, n }),
        2 => any::<u8>().prop_map(|ahead| Step::Keepalive { ahead }),
        1 => Just(Step::Abandon),
        3 => Just(Step::Advance),
    ]
}

/// A transaction as the model tracks it.
#[derive(Debug, Clone)]
struct Tx {
    id: u64,
    end: Option<u64>,
    routed: u64,
    acked: u64,
    /// Dropped by an abandon: the server sends it again after a reconnect.
    abandoned: bool,
    /// Its end was confirmed.
    confirmed: bool,
}

impl Tx {
    fn done(&self) -> bool {
        self.end.is_some() && self.routed == self.acked
    }
}

/// The rules, written the plain way: every transaction ever seen in one list with flags;
/// walking it in order, done transactions are confirmed up to the first unfinished one;
/// keepalives count when nothing is left unconfirmed.
#[derive(Debug, Default)]
struct Model {
    txs: Vec<Tx>,
    confirmed: u64,
    /// WAL position: past every LSN seen.
    wal: u64,
}

impl Model {
    fn open(&mut self) -> Option<&mut Tx> {
        self.txs
            .iter_mut()
            .rev()
            .find(|t| !t.abandoned && t.end.is_none())
    }

    /// Transactions not confirmed yet, in commit order.
    fn unconfirmed(&self) -> impl Iterator<Item = &Tx> {
        self.txs.iter().filter(|t| !t.abandoned && !t.confirmed)
    }

    fn in_flight(&self) -> bool {
        self.unconfirmed().next().is_some()
    }

    fn advance(&mut self) {
        for tx in self.txs.iter_mut().filter(|t| !t.abandoned && !t.confirmed) {
            if !tx.done() {
                break;
            }
            tx.confirmed = true;
            self.confirmed = self.confirmed.max(tx.end.unwrap_or(0));
        }
    }
}

/// Applies `step` to both, comparing the ledger's answers with the model's.
fn apply(step: &Step, ledger: &mut Ledger, model: &mut Model) {
    let at = Lsn::from_u64;
    match *step {
        Step::Begin { gap } => {
            if model.open().is_some() {
                return;
            }
            let id = model.wal + 1 + u64::from(gap);
            model.wal = id;
            ledger.begin(at(id));
            model.txs.push(Tx {
                id,
                end: None,
                routed: 0,
                acked: 0,
                abandoned: false,
                confirmed: false,
            });
        }
        Step::Route { n } => {
            if let Some(tx) = model.open() {
                tx.routed += u64::from(n);
                let id = tx.id;
                ledger.add_pending(at(id), u64::from(n));
            }
        }
        Step::Commit => {
            let end = model.wal + 8;
            if let Some(tx) = model.open() {
                tx.end = Some(end);
                let id = tx.id;
                model.wal = end;
                ledger.commit(at(id), at(end));
            }
        }
        Step::Ack { pick, n } => {
            let waiting: Vec<usize> = (0..model.txs.len())
                .filter(|&i| !model.txs[i].abandoned && model.txs[i].acked < model.txs[i].routed)
                .collect();
            if waiting.is_empty() {
                return;
            }
            let tx = &mut model.txs[waiting[usize::from(pick) % waiting.len()]];
            let n = u64::from(n).min(tx.routed - tx.acked);
            tx.acked += n;
            ledger.acked(at(tx.id), n);
        }
        Step::Keepalive { ahead } => {
            let wal_end = model.wal + u64::from(ahead);
            model.wal = wal_end;
            let answer = ledger.keepalive(at(wal_end));
            let expected = (!model.in_flight() && wal_end > model.confirmed).then_some(wal_end);
            assert_eq!(answer.map(Lsn::as_u64), expected, "keepalive at {wal_end}");
            if let Some(c) = expected {
                model.confirmed = c;
            }
        }
        Step::Abandon => {
            ledger.abandon_open();
            if let Some(tx) = model.open() {
                tx.abandoned = true;
            }
        }
        Step::Advance => {
            let before = model.confirmed;
            model.advance();
            let expected = (model.confirmed > before).then_some(model.confirmed);
            assert_eq!(ledger.advance().map(Lsn::as_u64), expected, "advance");
        }
    }
}

/// Whatever the model says: every transaction that began below the confirmed position was
/// committed and fully acknowledged (one dropped by an abandon is sent again after the
/// reconnect only if it lies at or above the confirmed position).
fn check_safe(model: &Model, confirmed: u64) {
    for tx in &model.txs {
        if tx.id < confirmed {
            assert!(
                tx.done(),
                "confirmed {confirmed} passes transaction {} ({} of {} messages acknowledged, \
                 committed: {}, abandoned: {})",
                tx.id,
                tx.acked,
                tx.routed,
                tx.end.is_some(),
                tx.abandoned
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The ledger confirms what the model confirms, and never a position past a transaction
    /// whose messages were not all acknowledged; confirmed positions never go back.
    #[test]
    fn model_ledger_confirms_only_acknowledged_prefixes(steps in prop::collection::vec(step(), 1..120)) {
        let mut ledger = Ledger::new(Lsn::from_u64(0));
        let mut model = Model::default();
        let mut last = 0;
        for step in &steps {
            apply(step, &mut ledger, &mut model);
            let confirmed = ledger.confirmed().as_u64();
            prop_assert_eq!(confirmed, model.confirmed, "after {:?}", step);
            prop_assert!(confirmed >= last, "confirmed went back from {} to {}", last, confirmed);
            prop_assert_eq!(ledger.in_flight(), model.in_flight(), "after {:?}", step);
            check_safe(&model, confirmed);
            last = confirmed;
            if matches!(step, Step::Abandon) {
                // The session ends here; what follows a reconnect is `pipeline_props`'s.
                break;
            }
        }
    }
}
