//! `chaos`: both directions under load while everything around ds-sync fails, then every
//! change and every event checked exactly once.
//!
//! ```text
//!   writers ──SQL──▶ PostgreSQL ◀──proxy──▶ ds-sync run ◀──proxy──▶ DS server ◀── producers
//!   (ledger)          (restarted -m immediate)  (SIGKILLed)          (restarted)   (ledger)
//! ```
//!
//! Writers insert, update and delete rows of three published tables (six streams, one table
//! routed per group) in transactions of one to twenty changes; producers POST numbered
//! events to four streams that the same `ds-sync run` ingests into `session_events`. Only
//! ds-sync goes through the fault proxies ([`super::fault_proxy`]); the load and the audit
//! talk to the servers directly. On a schedule drawn from `--seed` ([`faults::schedule`]):
//! `--kills` SIGKILLs of ds-sync (started again each time), PostgreSQL stopped with
//! `-m immediate` and started again, the DS server stopped and started again (streams
//! kept), ds-sync's connections cut (RST) and frozen (longer than the ingest idle timeout).
//! Then the load stops, the faults end, ds-sync catches up and stops with SIGTERM, and
//! [`audit`] compares: the writers' ledger of committed changes with the capture streams
//! (each change once, per row in commit order, in its row's stream), and the ingested
//! streams with `session_events` (each event once, in stream order).

mod audit;
mod faults;
mod producer;
mod supervisor;
mod writer;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::BenchError;
use super::capture::Ctx;
use super::fault_proxy::FaultProxy;
use super::report::Report;
use faults::{Done, Fault, Plan, Side};
use supervisor::Supervisor;

/// Transactions per second of each writer.
const WRITER_RATE: u32 = 40;
/// Writers (each on keys of its own).
const WRITERS: i64 = 2;
/// POSTs per second to each ingested stream.
const PRODUCER_RATE: u32 = 15;
/// Longest the catch-up after the faults may take before the audit runs anyway.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(300);

/// The proxies in front of the two servers.
struct Proxies {
    pg: FaultProxy,
    ds: FaultProxy,
}

impl Proxies {
    fn side(&self, side: Side) -> &FaultProxy {
        match side {
            Side::Postgres => &self.pg,
            Side::Ds => &self.ds,
        }
    }
}

/// Runs the scenario.
pub(super) async fn run(ctx: &Ctx<'_>, report: &mut Report) -> Result<(), BenchError> {
    let seed = ctx.opts.seed;
    let plan = Plan::for_kills(ctx.opts.kills);
    set_up(ctx).await?;
    let proxies = start_proxies(ctx).await?;
    let mut supervisor = Supervisor::new(ctx, &proxies.pg, &proxies.ds)?;
    supervisor.start()?;
    let stop = CancellationToken::new();
    let mut writers = Vec::new();
    for n in 0..WRITERS {
        let (stack, stop) = (ctx.stack, stop.clone());
        writers.push(writer::write(stack, n + 1, WRITER_RATE, seed, stop));
    }
    let writers = futures_util::future::join_all(writers);
    let producers: Vec<_> = (0..producer::STREAMS)
        .map(|i| {
            let seed = seed.wrapping_add(i as u64 + 1);
            let (ds, name, stop) = (ctx.stack.ds.clone(), producer::stream(i), stop.clone());
            tokio::spawn(producer::produce(ds, name, PRODUCER_RATE, seed, stop))
        })
        .collect();
    let schedule = faults::schedule(seed, ctx.opts.duration, plan);
    let chaos = async {
        let done = strike(ctx, &schedule, &proxies, &mut supervisor).await;
        stop.cancel();
        done
    };
    let load_started = Instant::now();
    let (done, ledgers) = tokio::join!(chaos, writers);
    let done = done?;
    let load_secs = load_started.elapsed().as_secs_f64();
    let ledgers = ledgers.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut sent = Vec::new();
    for p in producers {
        sent.push(
            p.await
                .map_err(|e| BenchError::Setup(format!("a producer failed: {e}")))?,
        );
    }
    let changes: Vec<_> = ledgers
        .iter()
        .flat_map(|l| l.changes.iter().copied())
        .collect();
    let caught_up = catch_up(ctx, &changes, &mut supervisor).await?;
    if let Err(e) = supervisor.stop().await {
        report.notes.push(format!("ds-sync's final SIGTERM: {e}"));
    }
    let verdict = Verdict::read(ctx, &changes, &sent).await?;
    let facts = Facts {
        plan,
        done,
        load_secs,
        caught_up,
        ledgers: &ledgers,
        sent: &sent,
        supervisor: &supervisor,
    };
    describe(ctx, report, &facts, &verdict);
    write_schedule(ctx, &schedule)?;
    Ok(())
}

/// Tables, publication, slot, ds-sync's schema (for `session_events`), ingested streams.
async fn set_up(ctx: &Ctx<'_>) -> Result<(), BenchError> {
    let mut sql = ctx.stack.sql().await?;
    writer::create_tables(&sql).await?;
    crate::schema::apply(&mut sql)
        .await
        .map_err(|e| BenchError::Setup(format!("applying the schema: {e}")))?;
    sql.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = 'chaos_slot'",
        &[],
    )
    .await
    .map_err(|e| BenchError::sql("dropping an old chaos slot", &e))?;
    sql.execute(
        "SELECT pg_create_logical_replication_slot('chaos_slot', 'pgoutput')",
        &[],
    )
    .await
    .map_err(|e| BenchError::sql("creating the chaos slot", &e))?;
    for i in 0..producer::STREAMS {
        ctx.stack.ds.ensure_stream(&producer::stream(i)).await?;
    }
    Ok(())
}

async fn start_proxies(ctx: &Ctx<'_>) -> Result<Proxies, BenchError> {
    let t = ctx.stack.target();
    let pg_addr = tokio::net::lookup_host((t.host(), t.port()))
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| BenchError::Setup(format!("cannot resolve {}", t.host())))?;
    let proxy_error = |e: std::io::Error| BenchError::Setup(format!("starting a fault proxy: {e}"));
    Ok(Proxies {
        pg: FaultProxy::start(pg_addr).await.map_err(proxy_error)?,
        ds: FaultProxy::for_url(&ctx.stack.ds_url)
            .await
            .map_err(proxy_error)?,
    })
}

/// Carries out the schedule, keeping ds-sync running between faults. A freeze does not
/// hold the schedule up: its connections thaw `hold` later, whatever strikes meanwhile (a
/// SIGKILL of a process whose connections are frozen leaves its PostgreSQL sessions, the
/// slot's walsender and lock among them, alive until the thaw).
async fn strike(
    ctx: &Ctx<'_>,
    schedule: &[(Duration, Fault)],
    proxies: &Proxies,
    supervisor: &mut Supervisor<'_>,
) -> Result<Done, BenchError> {
    let started = Instant::now();
    let mut done = Done::default();
    let mut thaws: Vec<(Duration, Side)> = Vec::new();
    for &(at, fault) in schedule {
        idle_until(started, at, &mut thaws, proxies, supervisor).await?;
        tracing::info!(at = ?started.elapsed(), "fault: {fault}");
        if let Fault::Freeze { side, hold } = fault {
            proxies.side(side).freeze();
            thaws.push((started.elapsed() + hold, side));
        } else {
            act(ctx, fault, proxies, supervisor).await?;
        }
        done.count(fault);
    }
    idle_until(started, ctx.opts.duration, &mut thaws, proxies, supervisor).await?;
    thaw(&mut thaws, Duration::MAX, proxies);
    Ok(done)
}

/// Until `at` after `started`: ds-sync kept running, frozen connections thawed when due.
async fn idle_until(
    started: Instant,
    at: Duration,
    thaws: &mut Vec<(Duration, Side)>,
    proxies: &Proxies,
    supervisor: &mut Supervisor<'_>,
) -> Result<(), BenchError> {
    while started.elapsed() < at {
        supervisor.keep_running()?;
        thaw(thaws, started.elapsed(), proxies);
        let left = at.saturating_sub(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100).min(left)).await;
    }
    Ok(())
}

/// Resumes the frozen connections whose time is up (at `now`).
fn thaw(thaws: &mut Vec<(Duration, Side)>, now: Duration, proxies: &Proxies) {
    thaws.retain(|(due, side)| {
        if *due <= now {
            proxies.side(*side).resume();
        }
        *due > now
    });
}

/// One fault other than a freeze, until its end (a restarted server serving again).
async fn act(
    ctx: &Ctx<'_>,
    fault: Fault,
    proxies: &Proxies,
    supervisor: &mut Supervisor<'_>,
) -> Result<(), BenchError> {
    match fault {
        Fault::Kill { pause } => {
            supervisor.kill().await;
            tokio::time::sleep(pause).await;
            supervisor.start()?;
        }
        Fault::PgRestart { down } => {
            ctx.stack.crash_postgres().await?;
            tokio::time::sleep(down).await;
            ctx.stack.start_postgres_again().await?;
        }
        Fault::DsRestart { down } => {
            ctx.stack.stop_ds_server().await?;
            tokio::time::sleep(down).await;
            ctx.stack.start_ds_server_again().await?;
        }
        Fault::Cut(side) => proxies.side(side).cut(),
        Fault::Freeze { side, .. } => proxies.side(side).freeze(),
    }
    Ok(())
}

/// Waits until every committed change is in the capture streams and every ingested stream's
/// tail is committed; the time it took, or `None` when [`CATCH_UP_LIMIT`] passed first (the
/// audit then says what is missing).
async fn catch_up(
    ctx: &Ctx<'_>,
    changes: &[writer::Change],
    supervisor: &mut Supervisor<'_>,
) -> Result<Option<Duration>, BenchError> {
    let mut want: HashMap<String, u64> = HashMap::new();
    for c in changes {
        *want.entry(writer::stream_of(c.table, c.id)).or_default() += 1;
    }
    let started = Instant::now();
    while started.elapsed() < CATCH_UP_LIMIT {
        supervisor.keep_running()?;
        if caught_up(ctx, &want).await.unwrap_or(false) {
            return Ok(Some(started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tracing::warn!(log = %supervisor.log_tail(), "ds-sync did not catch up");
    Ok(None)
}

async fn caught_up(ctx: &Ctx<'_>, want: &HashMap<String, u64>) -> Result<bool, BenchError> {
    for (stream, n) in want {
        if super::tail::TailCounter::new(&ctx.stack.ds, stream)
            .count()
            .await?
            < *n
        {
            return Ok(false);
        }
    }
    let sql = ctx.stack.sql().await?;
    for i in 0..producer::STREAMS {
        let stream = producer::stream(i);
        let tail = ctx.stack.ds.head(&stream).await?;
        let committed: Option<String> = sql
            .query_opt(
                "SELECT ds_offset FROM ds_sync.stream_offsets WHERE stream_name = $1",
                &[&stream],
            )
            .await
            .map_err(|e| BenchError::sql("reading an ingest offset", &e))?
            .map(|r| r.get(0));
        if committed != tail {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The audit of both directions.
struct Verdict {
    capture: audit::Tally,
    lsn_breaks: u64,
    ingest: audit::Tally,
    acked_missing: u64,
    unacked_in_stream: u64,
}

impl Verdict {
    async fn read(
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
struct Facts<'a> {
    plan: Plan,
    done: Done,
    load_secs: f64,
    caught_up: Option<Duration>,
    ledgers: &'a [writer::Ledger],
    sent: &'a [producer::Sent],
    supervisor: &'a Supervisor<'a>,
}

fn describe(ctx: &Ctx<'_>, report: &mut Report, f: &Facts<'_>, v: &Verdict) {
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
fn write_schedule(ctx: &Ctx<'_>, schedule: &[(Duration, Fault)]) -> Result<(), BenchError> {
    let mut text = format!("seed {}\n", ctx.opts.seed);
    for (at, fault) in schedule {
        let _ = writeln!(text, "{:>8.1} s  {fault}", at.as_secs_f64());
    }
    let path = ctx.dir.join("faults.txt");
    std::fs::write(&path, text).map_err(|e| BenchError::io(&path, &e))
}
