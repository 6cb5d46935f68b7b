//! The capture load: writers inserting, updating and deleting rows of the published tables
//! in transactions of one to twenty changes, each writer on keys of its own, and the ledger
//! of what they committed.
//!
//! A commit that failed is not simply dropped: PostgreSQL may have committed it before the
//! connection broke (the reply to COMMIT lost in a crash). Each transaction therefore also
//! inserts its number into `chaos_txns` (not published); after a failure the writer
//! reconnects and looks the number up, and the transaction's changes join the ledger only if
//! it is there. The ledger is thus exactly what PostgreSQL committed, in commit order per
//! key (a key is written by one writer only, one transaction at a time).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::super::BenchError;
use super::super::stack::Stack;
use super::faults::Rng;

/// The published tables; `chaos_c` is routed per `grp` (see [`stream_of`]).
pub(super) const TABLES: [&str; 3] = ["chaos_a", "chaos_b", "chaos_c"];
/// Groups of `chaos_c`, one stream each.
pub(super) const GROUPS: i64 = 4;
/// Keys per table per writer.
const KEYS: i64 = 300;
/// How long a writer keeps trying to reach PostgreSQL before the run fails.
const RECONNECT_LIMIT: Duration = Duration::from_secs(120);

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub(super) fn parse(text: &str) -> Option<Op> {
        match text {
            "insert" => Some(Op::Insert),
            "update" => Some(Op::Update),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One committed row change. `rev` is unique per insert and update (the row's new `rev`);
/// a delete carries the `rev` of the row it deleted, so `(op, rev)` names one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Change {
    pub table: usize,
    pub id: i64,
    pub op: Op,
    pub rev: i64,
}

/// The stream a row's changes go to (`--stream-template chaos-{table}`, and
/// `--route chaos_c=chaos-c/{grp}` with `grp = id % 4`).
pub(super) fn stream_of(table: usize, id: i64) -> String {
    if table == 2 {
        format!("chaos-c/{}", id % GROUPS)
    } else {
        format!("chaos-{}", TABLES[table])
    }
}

/// What one writer committed.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// In commit order.
    pub changes: Vec<Change>,
    pub txns: u64,
    /// Transactions whose commit failed yet were found committed.
    pub in_doubt_committed: u64,
    /// Transactions that failed and were not committed.
    pub failed: u64,
}

/// Creates the tables (REPLICA IDENTITY FULL, so that a delete carries the row's `rev`), the
/// unpublished `chaos_txns`, and the publication.
pub(super) async fn create_tables(sql: &tokio_postgres::Client) -> Result<(), BenchError> {
    let mut ddl = String::from(
        "DROP PUBLICATION IF EXISTS chaos_pub; DROP TABLE IF EXISTS chaos_txns; \
         CREATE TABLE chaos_txns (id BIGINT PRIMARY KEY);",
    );
    for t in TABLES {
        let _ = write!(
            ddl,
            "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id BIGINT PRIMARY KEY, \
             grp BIGINT NOT NULL, rev BIGINT NOT NULL, body TEXT NOT NULL); \
             ALTER TABLE {t} REPLICA IDENTITY FULL;"
        );
    }
    let _ = write!(
        ddl,
        "CREATE PUBLICATION chaos_pub FOR TABLE {}",
        TABLES.join(", ")
    );
    sql.batch_execute(&ddl)
        .await
        .map_err(|e| BenchError::sql("creating the chaos tables", &e))
}

/// One writer's state: the rows of its keys that exist, its counters.
struct Writer {
    n: i64,
    rng: Rng,
    rows: HashSet<(usize, i64)>,
    next_rev: i64,
    next_txn: i64,
}

impl Writer {
    /// The changes and the SQL of the next transaction (not applied to `rows` yet).
    fn next_transaction(&mut self) -> (i64, Vec<Change>, String) {
        let ops = if self.rng.chance(15) {
            5 + self.rng.below(16)
        } else {
            1 + self.rng.below(3)
        };
        let mut rows = self.rows.clone();
        let mut changes = Vec::new();
        let mut sql = String::from("BEGIN;");
        for _ in 0..ops {
            let table = self.rng.below(TABLES.len() as u64) as usize;
            let id = self.n * 1_000_000 + 1 + self.rng.below(KEYS as u64) as i64;
            let t = TABLES[table];
            self.next_rev += 1;
            let rev = self.n * 1_000_000_000_000 + self.next_rev;
            let change = if !rows.contains(&(table, id)) {
                let body = self.body(rev);
                let _ = write!(
                    sql,
                    "INSERT INTO {t} (id, grp, rev, body) VALUES ({id}, {}, {rev}, '{body}');",
                    id % GROUPS
                );
                rows.insert((table, id));
                Change {
                    table,
                    id,
                    op: Op::Insert,
                    rev,
                }
            } else if self.rng.chance(70) {
                let body = self.body(rev);
                let _ = write!(
                    sql,
                    "UPDATE {t} SET rev = {rev}, body = '{body}' WHERE id = {id};"
                );
                Change {
                    table,
                    id,
                    op: Op::Update,
                    rev,
                }
            } else {
                let _ = write!(sql, "DELETE FROM {t} WHERE id = {id};");
                rows.remove(&(table, id));
                let rev = last_rev(&changes, table, id).unwrap_or(-1);
                Change {
                    table,
                    id,
                    op: Op::Delete,
                    rev,
                }
            };
            changes.push(change);
        }
        self.next_txn += 1;
        let txn = self.n * 1_000_000_000_000 + self.next_txn;
        let _ = write!(sql, "INSERT INTO chaos_txns (id) VALUES ({txn}); COMMIT;");
        (txn, changes, sql)
    }

    /// Mostly short; now and then a value large enough to be TOASTed.
    fn body(&mut self, rev: i64) -> String {
        if self.rng.chance(5) {
            format!("{rev}-{}", "toast".repeat(800))
        } else {
            format!("body {rev}")
        }
    }

    fn apply(&mut self, changes: &[Change]) {
        for c in changes {
            match c.op {
                Op::Insert | Op::Update => self.rows.insert((c.table, c.id)),
                Op::Delete => self.rows.remove(&(c.table, c.id)),
            };
        }
    }
}

/// The `rev` a row has after `changes`, if they wrote it.
fn last_rev(changes: &[Change], table: usize, id: i64) -> Option<i64> {
    changes
        .iter()
        .rev()
        .find(|c| c.table == table && c.id == id && c.op != Op::Delete)
        .map(|c| c.rev)
}

/// Writes `rate` transactions per second as writer `n` until `stop`; returns its ledger.
pub(super) async fn write(
    stack: &Stack,
    n: i64,
    rate: u32,
    seed: u64,
    stop: CancellationToken,
) -> Result<Ledger, BenchError> {
    let mut w = Writer {
        n,
        rng: Rng::new(seed ^ (n as u64).wrapping_mul(0x51ED)),
        rows: HashSet::new(),
        next_rev: 0,
        next_txn: 0,
    };
    let mut ledger = Ledger::default();
    let mut revs: std::collections::HashMap<(usize, i64), i64> = std::collections::HashMap::new();
    let every = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = Instant::now();
    let mut sql = connect(stack).await?;
    while !stop.is_cancelled() {
        let (txn, mut changes, text) = w.next_transaction();
        fill_deleted_revs(&mut changes, &revs);
        let committed = match sql.batch_execute(&text).await {
            Ok(()) => true,
            Err(e) if is_lost(&e) => {
                let (client, found) = resolve(stack, txn).await?;
                sql = client;
                if found {
                    ledger.in_doubt_committed += 1;
                } else {
                    ledger.failed += 1;
                }
                found
            }
            Err(e) => return Err(BenchError::sql("writing a chaos transaction", &e)),
        };
        if committed {
            w.apply(&changes);
            for c in &changes {
                revs.insert((c.table, c.id), c.rev);
            }
            ledger.txns += 1;
            ledger.changes.extend(changes);
        }
        let due = every.mul_f64((ledger.txns + ledger.failed) as f64);
        tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
    }
    Ok(ledger)
}

/// A delete of a row written by an earlier transaction names that row's last `rev`.
fn fill_deleted_revs(changes: &mut [Change], revs: &std::collections::HashMap<(usize, i64), i64>) {
    for c in changes.iter_mut() {
        if c.op == Op::Delete && c.rev == -1 {
            c.rev = revs.get(&(c.table, c.id)).copied().unwrap_or(-1);
        }
    }
}

/// A failure that may have left the transaction committed or not: the connection broke or
/// the server went away. Anything else is a bug of the runner.
fn is_lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed() || crate::pg::is_transient(e)
}

/// Connects, retrying while PostgreSQL is down (a restart in progress).
async fn connect(stack: &Stack) -> Result<tokio_postgres::Client, BenchError> {
    let started = Instant::now();
    loop {
        match stack.sql().await {
            Ok(c) => return Ok(c),
            Err(e) if started.elapsed() > RECONNECT_LIMIT => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Whether transaction `txn` committed, on a new connection (returned), asked again until
/// PostgreSQL answers (it may go down again meanwhile).
async fn resolve(stack: &Stack, txn: i64) -> Result<(tokio_postgres::Client, bool), BenchError> {
    let started = Instant::now();
    loop {
        let sql = connect(stack).await?;
        match sql
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM chaos_txns WHERE id = $1)",
                &[&txn],
            )
            .await
        {
            Ok(row) => return Ok((sql, row.get(0))),
            Err(e) if is_lost(&e) && started.elapsed() < RECONNECT_LIMIT => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(BenchError::sql("looking up a transaction in doubt", &e)),
        }
    }
}
