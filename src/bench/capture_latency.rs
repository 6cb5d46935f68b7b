//! `capture-latency`: one-row transactions at a steady rate; each row's latency runs from its
//! commit returning to the writer to an SSE reader receiving it.
//!
//! ```text
//!  phase 1, --rate:       writers ─INSERT─▶ PG ─▶ ds-sync ─POST─▶ DS ─SSE─▶ reader   checked
//!  phase 2, --peak-rate:  the same, faster, on the same process and stream      figures
//!  floor, --rate:         writers ─POST one-row array─▶ DS ─SSE─▶ reader         the DS
//!                                                                              server's own
//! ```
//!
//! The ds-sync child writes when it received, posted and saw acknowledged each transaction
//! (`observe::timeline`), so the report splits each row's latency into stages
//! ([`super::timeline`]) and holds ds-sync's own share (commit to acknowledged) to its own
//! target. The floor is what the same DS server and SSE reader cost without ds-sync: the
//! end-to-end target is 10 ms, or 1.2x the floor where the floor itself is above that.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::BenchError;
use super::capture::{Ctx, spawn_run_with_env};
use super::latency::{self, Stamps};
use super::report::Report;
use super::stack::DsSyncProcess;
use super::timeline::{self, ChildStages, Xids};
use super::workload::{self, Phase};
use crate::ds::DsClient;
use crate::sse::{ArrayItem, DsItem};

/// Target: p99 from commit to the SSE reader at `--rate`, in ms ...
const E2E_P99_TARGET_MS: f64 = 10.0;
/// ... or this many times the DS server's floor, where the floor's p99 is above it.
const FLOOR_FACTOR: f64 = 1.2;
/// Target: p99 of ds-sync's own share (commit to acknowledged by the DS server), in ms.
const SHARE_P99_TARGET_MS: f64 = 5.0;
/// Writer connections per 500 transactions/s of the peak phase (at least `--writers`).
const PEAK_TXN_PER_WRITER: u32 = 500;

/// Runs the scenario; see the module documentation.
pub(super) async fn latency(ctx: &Ctx<'_>, report: &mut Report) -> Result<(), BenchError> {
    let sql = ctx.stack.sql().await?;
    let phase = Phase::create(&sql, "bench_live").await?;
    let slot = phase.slot(&sql, "dssync").await?;
    let per_phase = |rate: u32| (f64::from(rate) * ctx.opts.duration.as_secs_f64()) as usize;
    let (total, peak_total) = (per_phase(ctx.opts.rate), per_phase(ctx.opts.peak_rate));
    let last = total + peak_total;
    let stamps = Stamps::new(last);
    let xids = Arc::new(Xids::new(last));
    ctx.stack.ds.ensure_stream(&phase.stream()).await?;
    let file = ctx.dir.join("timeline.txt");
    let env = [(crate::observe::timeline::ENV, file.as_os_str())];
    let mut process = spawn_run_with_env(ctx, &phase, &slot, "ds-sync.log", &[], &env)?;
    let reader = tokio::spawn(read_stream(
        ctx.stack.ds.clone(),
        phase.stream(),
        Arc::clone(&stamps),
        Some(Arc::clone(&xids)),
    ));
    // Row 0 is the warm-up: ds-sync is streaming once it arrives.
    let run = Run {
        ctx,
        phase: &phase,
        stamps: &stamps,
    };
    run.write(0..=0, 1, 1, &mut process).await?;
    let wrote = run
        .write(1..=total, ctx.opts.rate, ctx.opts.writers, &mut process)
        .await?;
    let peak_wrote = if peak_total > 0 {
        let writers = ctx
            .opts
            .writers
            .max((ctx.opts.peak_rate / PEAK_TXN_PER_WRITER) as usize);
        let range = total + 1..=last;
        Some((
            run.write(range, ctx.opts.peak_rate, writers, &mut process)
                .await?,
            writers,
        ))
    } else {
        None
    };
    // The child's timeline is flushed every 100 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.abort();
    process.stop().await?;
    let child = ChildStages::read(&file)?;
    let floor = floor(ctx, total).await?;
    report.figure("target rate", f64::from(ctx.opts.rate), "txn/s");
    report.figure("achieved rate", total as f64 / wrote.as_secs_f64(), "txn/s");
    report.figure("transactions", total as f64, "txn");
    let at_rate = Rows {
        stamps: &stamps,
        xids: &xids,
        child: &child,
    };
    let e2e = at_rate.report(report, 1..total + 1, "")?;
    let e2e_target = E2E_P99_TARGET_MS.max(FLOOR_FACTOR * floor.p99);
    report.check("p99 commit to SSE", e2e, "ms", Some(e2e_target), true);
    report.figure("DS server floor p50 (POST to SSE)", floor.p50, "ms");
    report.figure("DS server floor p99 (POST to SSE)", floor.p99, "ms");
    report.latencies.push(floor);
    if let Some((took, writers)) = peak_wrote {
        let label = format!(" at {} txn/s", ctx.opts.peak_rate);
        report.figure(
            &format!("achieved rate{label} ({writers} writers)"),
            peak_total as f64 / took.as_secs_f64(),
            "txn/s",
        );
        let p99 = at_rate.report(report, total + 1..last + 1, &label)?;
        report.figure(&format!("p99 commit to SSE{label}"), p99, "ms");
    }
    report.notes.push(notes(ctx.opts.writers, e2e_target));
    Ok(())
}

fn notes(writers: usize, target: f64) -> String {
    format!(
        "{writers} writer connections pace one-row INSERTs (autocommit) to the target rate; \
         latency runs from the INSERT returning to the writer to the row arriving at an SSE \
         reader of the stream (same process, same clock). The stages come from the ds-sync \
         child's own record of each transaction (its Commit decoded, its POST started, the \
         POST acknowledged), joined to the rows by xid; times on the Unix clock of this \
         machine, a stage that ends before it starts counts as 1 µs (the WAL can reach \
         ds-sync before the INSERT returns to the writer). ds-sync's share is commit to \
         acknowledged. The DS server floor is measured afterwards at the same rate: one-row \
         JSON arrays POSTed by as many senders straight to a new stream of the same server, \
         from the start of the POST to the same kind of SSE reader. The end-to-end target is \
         {E2E_P99_TARGET_MS} ms or {FLOOR_FACTOR}x the floor's p99, whichever is larger \
         ({target:.2} ms in this run). The peak phase (figures only) writes on the same \
         process and stream right after the first, with one writer per \
         {PEAK_TXN_PER_WRITER} txn/s."
    )
}

/// The writing side of the run.
struct Run<'a> {
    ctx: &'a Ctx<'a>,
    phase: &'a Phase,
    stamps: &'a Arc<Stamps>,
}

impl Run<'_> {
    /// Writes rows `items` at `rate` over `writers` connections, then waits for all of them
    /// to reach the reader; the time the writing took.
    async fn write(
        &self,
        items: std::ops::RangeInclusive<usize>,
        rate: u32,
        writers: usize,
        process: &mut DsSyncProcess,
    ) -> Result<Duration, BenchError> {
        let mut senders = Vec::with_capacity(writers);
        for _ in 0..writers.max(1) {
            senders.push((self.ctx.stack.sql().await?, self.phase.table.clone()));
        }
        let (first, last) = (*items.start(), *items.end());
        let count = (last + 1 - first) as u64;
        let bar = workload::Bar::new("writing", count, self.ctx.opts.progress);
        let wrote = latency::paced(
            senders,
            rate,
            items,
            self.stamps,
            Some(&mut *process),
            &bar,
            |s, id| async move { insert_row(&s.0, &s.1, id).await },
        )
        .await?;
        let timeout = Duration::from_secs(120).max(Duration::from_secs(count / 100));
        self.stamps
            .wait_arrived(first..last + 1, timeout, Some(process), "rows")
            .await?;
        Ok(wrote)
    }
}

/// The rows of one phase, with what the child recorded.
struct Rows<'a> {
    stamps: &'a Stamps,
    xids: &'a Xids,
    child: &'a ChildStages,
}

impl Rows<'_> {
    /// Adds the end-to-end distribution and the stages of `items` to the report (the share
    /// checked at the first rate only); the end-to-end p99.
    fn report(
        &self,
        report: &mut Report,
        items: std::ops::Range<usize>,
        label: &str,
    ) -> Result<f64, BenchError> {
        let e2e = self
            .stamps
            .latency(&format!("commit to SSE{label}"), items.clone())?;
        let p99 = e2e.p99;
        let (stages, complete) =
            timeline::stages(self.child, self.stamps, self.xids, items.clone(), label)?;
        report.figure(
            &format!("rows with every stage recorded{label}"),
            complete as f64,
            "rows",
        );
        if complete < items.len() {
            return Err(BenchError::Report(format!(
                "only {complete} of {} rows{label} have every stage in the ds-sync timeline",
                items.len()
            )));
        }
        for stage in &stages {
            report.figure(&format!("p99 {}", stage.name), stage.p99, "ms");
        }
        if let Some(share) = stages.last()
            && label.is_empty()
        {
            report.check(
                "p99 commit to acknowledged (ds-sync's share)",
                share.p99,
                "ms",
                Some(SHARE_P99_TARGET_MS),
                true,
            );
        }
        report.latencies.push(e2e);
        report.latencies.extend(stages);
        Ok(p99)
    }
}

/// The DS server's own latency at `total` POSTs over the run's duration: one-row arrays
/// straight to a new stream, from the start of each POST to the SSE reader.
async fn floor(ctx: &Ctx<'_>, total: usize) -> Result<super::report::Latency, BenchError> {
    let stream = "bench-floor".to_owned();
    let ds = ctx.stack.ds.clone();
    ds.ensure_stream(&stream).await?;
    let stamps = Stamps::new(total);
    let reader = tokio::spawn(read_stream(
        ds.clone(),
        stream.clone(),
        Arc::clone(&stamps),
        None,
    ));
    let senders: Vec<_> = (0..ctx.opts.writers.max(1))
        .map(|_| (ds.clone(), stream.clone(), Arc::clone(&stamps)))
        .collect();
    let bar = workload::Bar::new("floor", total as u64 + 1, ctx.opts.progress);
    let send = |s: Arc<(DsClient, String, Arc<Stamps>)>, id: usize| async move {
        s.2.sent(id);
        let body = format!(
            r#"[{{"type":"floor","key":"{id}","value":{{"id":{id}}},"headers":{{"operation":"insert"}}}}]"#
        );
        s.0.append(&s.1, Bytes::from(body), None).await?;
        Ok(())
    };
    latency::paced(senders, ctx.opts.rate, 0..=total, &stamps, None, &bar, send).await?;
    stamps
        .wait_arrived(0..total + 1, Duration::from_secs(120), None, "floor rows")
        .await?;
    reader.abort();
    stamps.latency("POST to SSE (DS server floor)", 1..total + 1)
}

async fn insert_row(
    sql: &tokio_postgres::Client,
    table: &str,
    id: usize,
) -> Result<(), BenchError> {
    sql.execute(
        &format!("INSERT INTO {table} (id, title) VALUES ($1, 'live')"),
        &[&(id as i64)],
    )
    .await
    .map_err(|e| BenchError::sql("writing a row", &e))?;
    Ok(())
}

/// Follows the stream over SSE and stamps each row id on arrival (and its xid, when asked);
/// reconnects from the last control offset when the server ends the response.
async fn read_stream(
    ds: DsClient,
    stream: String,
    stamps: Arc<Stamps>,
    xids: Option<Arc<Xids>>,
) -> Result<(), BenchError> {
    let mut offset = crate::ds::OFFSET_START.to_owned();
    loop {
        let mut sub = ds.subscribe(&stream, &offset).await?;
        while let Some(event) = sub.next().await {
            match event? {
                DsItem::Array(ArrayItem::Element { text, .. }) => {
                    let Ok(m) = serde_json::from_slice::<serde_json::Value>(&text) else {
                        continue;
                    };
                    let id = m["value"]["id"]
                        .as_u64()
                        .or_else(|| m["value"]["id"].as_str().and_then(|s| s.parse().ok()));
                    let Some(id) = id else { continue };
                    stamps.arrived(id);
                    let xid = m["headers"]["txid"].as_str().and_then(|s| s.parse().ok());
                    if let (Some(xids), Some(xid)) = (&xids, xid) {
                        xids.set(id, xid);
                    }
                }
                DsItem::Control(c) => offset = c.stream_next_offset,
                _ => {}
            }
        }
    }
}
