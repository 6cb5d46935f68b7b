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
mod verdict;
mod writer;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::BenchError;
use super::capture::Ctx;
use super::fault_proxy::FaultProxy;
use super::report::Report;
use faults::{Done, Fault, Plan, Side};
use supervisor::Supervisor;
use verdict::{Facts, Verdict, describe, write_schedule};

/// Transactions per second of each writer.
const WRITER_RATE: u32 = 40;
/// Writers (each on keys of its own).
const WRITERS: i64 = 2;
/// POSTs per second to each ingested stream.
const PRODUCER_RATE: u32 = 15;
/// Longest the catch-up after the faults may take before the audit runs anyway.
pub(super) const CATCH_UP_LIMIT: Duration = Duration::from_secs(300);

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
