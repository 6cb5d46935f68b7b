//! The chaos run's outcome: both directions read back and audited ([`Verdict`]), and the
//! report's figures, checks and notes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::super::BenchError;
use super::super::capture::Ctx;
use super::super::report::Report;
use super::faults::{Done, Fault, Plan};
use super::supervisor::Supervisor;
use super::{CATCH_UP_LIMIT, audit, producer, writer};

/// The audit of both directions.
pub(super) struct Verdict {
    capture: audit::Tally,
    lsn_breaks: u64,
    ingest: audit::Tally,
    acked_missing: u64,
    unacked_in_stream: u64,
}

impl Verdict {
    pub(super) async fn read(
        ctx: &Ctx<'_>,
        changes: &[writer::Change],
        sent: &[producer::Sent],
    ) -> Result<Verdict, BenchError> {
        let mut streams = HashMap::new();
        let mut names: Vec<String> = (0..writer::GROUPS)
            .map(|g| format!("chaos-c/{g}"))
            .collect();
        names.extend(["chaos-chaos_a".into(), "chaos-chaos_b".into()]);
        for name in names {
            let messages = match ctx.stack.ds.head(&name).await? {
                Some(_) => ctx.stack.ds.read_all(&name).await?,
                None => Vec::new(),
            };
            streams.insert(name, messages);
        }
        let (capture, lsn_breaks) = audit::capture(changes, &streams);
        let sql = ctx.stack.sql().await?;
        let mut ingest = audit::Tally::default();
        let (mut acked_missing, mut unacked_in_stream) = (0, 0);
        for s in sent {
            let in_stream = numbers(
                ctx.stack
                    .ds
                    .read_all(&s.stream)
                    .await?
                    .iter()
                    .map(|m| m["key"].as_str().map(str::to_owned)),
            );
            let stored = numbers(
                sql.query(
                    "SELECT event_key FROM public.session_events WHERE stream_name = $1 \
                     ORDER BY id",
                    &[&s.stream],
                )
                .await
                .map_err(|e| BenchError::sql("reading session_events", &e))?
                .iter()
                .map(|r| r.get::<_, Option<String>>(0)),
            );
            let (tally, missing) = audit::ingest(&in_stream, &stored, &s.acked);
            let unacked: std::collections::HashSet<u64> = s.unacked.iter().copied().collect();
            unacked_in_stream += in_stream.iter().filter(|n| unacked.contains(n)).count() as u64;
            ingest.add(tally);
            acked_missing += missing;
        }
        Ok(Verdict {
            capture,
            lsn_breaks,
            ingest,
            acked_missing,
            unacked_in_stream,
        })
    }
}

/// Event numbers of keys made by [`producer::event_key`]; a key that is not one is 0 (no
/// event has that number, so the audit counts it as unexpected).
fn numbers(keys: impl Iterator<Item = Option<String>>) -> Vec<u64> {
    keys.map(|k| k.as_deref().and_then(producer::event_number).unwrap_or(0))
        .collect()
}

/// What the run did, for the report.
pub(super) struct Facts<'a> {
    pub plan: Plan,
    pub done: Done,
    pub load_secs: f64,
    pub caught_up: Option<Duration>,
    pub ledgers: &'a [writer::Ledger],
    pub sent: &'a [producer::Sent],
    pub supervisor: &'a Supervisor<'a>,
}

pub(super) fn describe(ctx: &Ctx<'_>, report: &mut Report, f: &Facts<'_>, v: &Verdict) {
    report.notes.push(format!(
        "Seed {} (`--seed {}` gives the same fault schedule and load choices).",
        ctx.opts.seed, ctx.opts.seed
    ));
    report.figure("load with faults", f.load_secs, "s");
    match f.caught_up {
        Some(d) => report.figure("catch-up after the faults", d.as_secs_f64(), "s"),
        None => report.notes.push(format!(
            "ds-sync did not catch up within {} s; the audit ran anyway.",
            CATCH_UP_LIMIT.as_secs()
        )),
    }
    let d = f.done;
    report.check(
        "SIGKILLs of ds-sync",
        f64::from(d.kills),
        "",
        Some(f64::from(f.plan.kills)),
        false,
    );
    report.check(
        "PostgreSQL restarts (-m immediate)",
        f64::from(d.pg_restarts),
        "",
        Some(f64::from(f.plan.pg_restarts)),
        false,
    );
    report.check(
        "DS server restarts",
        f64::from(d.ds_restarts),
        "",
        Some(f64::from(f.plan.ds_restarts)),
        false,
    );
    report.figure("connection cuts, PostgreSQL", f64::from(d.pg_cuts), "");
    report.figure("connection cuts, DS server", f64::from(d.ds_cuts), "");
    report.figure(
        "connection freezes, PostgreSQL",
        f64::from(d.pg_freezes),
        "",
    );
    report.figure("connection freezes, DS server", f64::from(d.ds_freezes), "");
    report.figure(
        "ds-sync processes started",
        f64::from(f.supervisor.started),
        "",
    );
    report.figure(
        "ds-sync exits of its own (restarted)",
        f.supervisor.own_exits.len() as f64,
        "",
    );
    describe_load(report, f, v);
    describe_verdict(report, v);
    for exit in f.supervisor.own_exits.iter().take(5) {
        report.notes.push(format!("```\n{exit}\n```"));
    }
    report.notes.push(NOTE.into());
}

fn describe_load(report: &mut Report, f: &Facts<'_>, v: &Verdict) {
    let sum = |g: fn(&writer::Ledger) -> u64| f.ledgers.iter().map(g).sum::<u64>() as f64;
    report.figure("transactions committed", sum(|l| l.txns), "txns");
    report.figure(
        "row changes committed (capture)",
        v.capture.expected as f64,
        "changes",
    );
    report.figure(
        "capture messages read back",
        v.capture.found as f64,
        "messages",
    );
    report.figure(
        "commits that failed yet had committed (found afterwards)",
        sum(|l| l.in_doubt_committed),
        "txns",
    );
    report.figure(
        "transactions that failed (not committed)",
        sum(|l| l.failed),
        "txns",
    );
    let sent = |g: fn(&producer::Sent) -> u64| f.sent.iter().map(g).sum::<u64>() as f64;
    report.figure(
        "POSTs acknowledged (ingest load)",
        sent(|s| s.posts - s.failed_posts),
        "",
    );
    report.figure(
        "POSTs failed (DS server down)",
        sent(|s| s.failed_posts),
        "",
    );
    report.figure(
        "events acknowledged",
        sent(|s| s.acked.len() as u64),
        "events",
    );
    report.figure(
        "events of failed POSTs found in the stream anyway",
        v.unacked_in_stream as f64,
        "events",
    );
    report.figure(
        "events in the ingested streams (checked)",
        v.ingest.expected as f64,
        "events",
    );
    report.figure(
        "session_events rows of those streams",
        v.ingest.found as f64,
        "rows",
    );
}

fn describe_verdict(report: &mut Report, v: &Verdict) {
    let zero = |report: &mut Report, name: &str, value: u64, unit: &str| {
        report.check(name, value as f64, unit, Some(0.0), true);
    };
    zero(report, "capture: changes lost", v.capture.lost, "changes");
    zero(
        report,
        "capture: changes duplicated",
        v.capture.duplicated,
        "changes",
    );
    zero(
        report,
        "capture: changes out of order (per row)",
        v.capture.reordered,
        "changes",
    );
    zero(
        report,
        "capture: messages not committed or in the wrong stream",
        v.capture.unexpected,
        "messages",
    );
    zero(
        report,
        "capture: commit LSN going back within a stream",
        v.lsn_breaks,
        "messages",
    );
    zero(report, "ingest: events lost", v.ingest.lost, "events");
    zero(
        report,
        "ingest: events duplicated",
        v.ingest.duplicated,
        "events",
    );
    zero(
        report,
        "ingest: events out of stream order",
        v.ingest.reordered,
        "events",
    );
    zero(
        report,
        "ingest: rows of no event in the stream",
        v.ingest.unexpected,
        "rows",
    );
    report.figure(
        "ingest: acknowledged events missing from the DS stream (the server's loss, included above)",
        v.acked_missing as f64,
        "events",
    );
}

const NOTE: &str = "Load: 2 writers at 40 transactions/s each (1 to 3 changes, 15% of \
    transactions 5 to 20 changes over several tables and streams) on 3 tables (REPLICA \
    IDENTITY FULL), routed to 6 streams; 4 producers at 15 POSTs/s of 1 to 5 events, ingested \
    by the same `ds-sync run`. ds-sync reaches PostgreSQL and the DS server through fault \
    proxies; the load and the audit do not. A commit that failed is looked up afterwards (its \
    transaction number in an unpublished table) and counted as committed when it is there. \
    The fault schedule (seeded) is in `faults.txt`, each ds-sync process's log in `logs/`.";

/// The schedule, one fault a line, next to the report.
pub(super) fn write_schedule(
    ctx: &Ctx<'_>,
    schedule: &[(Duration, Fault)],
) -> Result<(), BenchError> {
    let mut text = format!("seed {}\n", ctx.opts.seed);
    for (at, fault) in schedule {
        let _ = writeln!(text, "{:>8.1} s  {fault}", at.as_secs_f64());
    }
    let path = ctx.dir.join("faults.txt");
    std::fs::write(&path, text).map_err(|e| BenchError::io(&path, &e))
}
