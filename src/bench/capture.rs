//! Capture scenarios: `capture-drain` and `memory` (a backlog drained from the slot, next to
//! `pg_recvlogical` on an identical slot over the same WAL); `capture-latency` is in
//! [`super::capture_latency`].

use std::path::Path;

use super::report::Report;
use super::stack::{DsSyncProcess, Stack};
use super::workload::{self, Drain, Phase};
use super::{BenchError, BenchOptions};

/// What every scenario gets.
pub(super) struct Ctx<'a> {
    pub opts: &'a BenchOptions,
    pub stack: &'a Stack,
    pub dir: &'a Path,
}

/// Target: ds-sync drains one-row transactions at least at this fraction of the
/// `pg_recvlogical` rate.
const DRAIN_TARGET: f64 = 0.8;
/// Target: ds-sync (with either protocol version) drains a large transaction at least this
/// many times `pg_recvlogical`'s version-1 rate (which decodes the transaction whole first).
const STREAMING_V1_TARGET: f64 = 1.5;
/// Target: ds-sync (with either protocol version) drains a large transaction at least at
/// this fraction of `pg_recvlogical`'s rate with version 2 and streaming.
const STREAMING_V2_TARGET: f64 = 0.9;
/// Target: peak RSS while a 1M-row transaction passes, in MB.
const RSS_TARGET_MB: f64 = 64.0;

/// Starts ds-sync on `phase`'s publication and slot and times the drain of `expected` rows.
pub(super) async fn ds_sync_drain(
    ctx: &Ctx<'_>,
    phase: &Phase,
    slot: &str,
    expected: u64,
    end_lsn: &str,
    label: &str,
) -> Result<Drain, BenchError> {
    ds_sync_drain_with(ctx, phase, (slot, expected, end_lsn), label, &[]).await
}

/// As [`ds_sync_drain`], with `extra` arguments for `ds-sync run`.
async fn ds_sync_drain_with(
    ctx: &Ctx<'_>,
    phase: &Phase,
    (slot, expected, end_lsn): (&str, u64, &str),
    label: &str,
    extra: &[&str],
) -> Result<Drain, BenchError> {
    let runner_cpu = super::stack::own_cpu_seconds();
    let mut process = spawn_run(
        ctx,
        phase,
        slot,
        &format!("ds-sync-{}.log", phase.table),
        extra,
    )?;
    let started = process.started;
    let mut drain = workload::wait_drained(
        ctx.stack,
        &phase.stream(),
        expected,
        started,
        Some(&mut process),
        label,
        ctx.opts.progress,
    )
    .await?;
    drain.runner_cpu_secs = super::stack::own_cpu_seconds()
        .zip(runner_cpu)
        .map(|(now, before)| now - before);
    let sql = ctx.stack.sql().await?;
    drain.walsender_cpu_secs = walsender_cpu(&sql, slot).await?;
    workload::wait_confirmed(&sql, slot, end_lsn).await?;
    process.stop().await?;
    Ok(drain)
}

/// Runs `work` (a client draining `slot`) and samples its walsender's CPU every 100 ms: the
/// walsender exits with the client, so the figure is the last sample (up to 100 ms short).
async fn sampling_walsender<T>(
    sql: &tokio_postgres::Client,
    slot: &str,
    work: impl std::future::Future<Output = T>,
) -> (T, Option<f64>) {
    let mut work = std::pin::pin!(work);
    let mut last = None;
    loop {
        tokio::select! {
            out = &mut work => return (out, last),
            () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                if let Ok(Some(cpu)) = walsender_cpu(sql, slot).await {
                    last = Some(cpu);
                }
            }
        }
    }
}

/// CPU seconds used so far by the walsender serving `slot` (it started when its client
/// connected, so this is its share of the drain); `None` when the slot has no walsender now.
async fn walsender_cpu(
    sql: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<f64>, BenchError> {
    let row = sql
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| BenchError::sql("reading the slot's walsender", &e))?;
    let pid: Option<i32> = row.and_then(|r| r.get(0));
    Ok(pid.and_then(super::stack::pid_cpu_seconds))
}

/// Starts `ds-sync run` on `phase`'s publication and `slot`, streaming to `bench-{table}`,
/// with `extra` and the bench's `-- ARGS` appended; its log goes to `log` in the results.
pub(super) fn spawn_run(
    ctx: &Ctx<'_>,
    phase: &Phase,
    slot: &str,
    log: &str,
    extra: &[&str],
) -> Result<DsSyncProcess, BenchError> {
    spawn_run_with_env(ctx, phase, slot, log, extra, &[])
}

/// As [`spawn_run`], with `env` set in the child too.
pub(super) fn spawn_run_with_env(
    ctx: &Ctx<'_>,
    phase: &Phase,
    slot: &str,
    log: &str,
    extra: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<DsSyncProcess, BenchError> {
    let mut args = vec![
        "run",
        "--slot",
        slot,
        "--publication",
        &phase.publication,
        "--stream-template",
        "bench-{table}",
    ];
    args.extend_from_slice(extra);
    args.extend(ctx.opts.ds_sync_args.iter().map(String::as_str));
    DsSyncProcess::spawn_with_env(&ctx.opts.exe, ctx.stack, &args, &ctx.dir.join(log), env)
}

/// A backlog written while its slots wait, then drained by `pg_recvlogical` (with version 1,
/// and for the large transaction with version 2 and streaming too) and by ds-sync.
async fn drain_phase(
    ctx: &Ctx<'_>,
    report: &mut Report,
    table: &str,
    rows: u64,
    one_transaction: bool,
) -> Result<Drain, BenchError> {
    let sql = ctx.stack.sql().await?;
    let phase = Phase::create(&sql, table).await?;
    let ceiling_slot = phase.slot(&sql, "ceiling").await?;
    let v2_slot = if one_transaction {
        Some(phase.slot(&sql, "ceiling_v2").await?)
    } else {
        None
    };
    let ds_slot = phase.slot(&sql, "dssync").await?;
    let what = if one_transaction {
        format!("{rows} rows in one transaction")
    } else {
        format!("{rows} one-row transactions")
    };
    tracing::info!("writing the backlog: {what}");
    if one_transaction {
        phase.write_one_transaction(&sql, rows).await?;
    } else {
        phase.write_transactions(&sql, rows).await?;
    }
    let end = workload::current_lsn(&sql).await?;
    let ceiling_run =
        workload::recvlogical_ceiling(ctx.stack, &ceiling_slot, &phase.publication, &end);
    let (ceiling, ceiling_walsender) = sampling_walsender(&sql, &ceiling_slot, ceiling_run).await;
    let ceiling = ceiling?;
    let streaming_ceiling = match &v2_slot {
        Some(slot) => Some(
            workload::recvlogical_ceiling_with(
                ctx.stack,
                slot,
                &phase.publication,
                &end,
                &STREAMING,
            )
            .await?,
        ),
        None => None,
    };
    let drain = ds_sync_drain(
        ctx,
        &phase,
        &ds_slot,
        rows,
        &end,
        &format!("ds-sync {table}"),
    )
    .await?;
    let (c, d) = (ceiling.as_secs_f64(), drain.elapsed.as_secs_f64());
    report.figure(
        &format!("{what}: pg_recvlogical"),
        rows as f64 / c,
        "rows/s",
    );
    report.figure(&format!("{what}: ds-sync"), rows as f64 / d, "rows/s");
    report.figure(&format!("{what}: pg_recvlogical time"), c, "s");
    report.figure(&format!("{what}: ds-sync time"), d, "s");
    if let Some(cpu) = drain.cpu_secs {
        report.figure(&format!("{what}: ds-sync CPU"), cpu, "s");
    }
    if let (Some(cpu), true) = (drain.runner_cpu_secs, ctx.stack.embedded_ds()) {
        report.figure(&format!("{what}: DS server (in-process) CPU"), cpu, "s");
    }
    if let (true, Some(cpu)) = (one_transaction, ceiling_walsender) {
        let label = format!("{what}: walsender CPU (pg_recvlogical's slot, sampled)");
        report.figure(&label, cpu, "s");
    }
    // With an external DS server its CPU is not the runner's, and the bound is unknown.
    if one_transaction && ctx.stack.embedded_ds() {
        cpu_bound(report, &what, &drain, c);
    }
    if let Some(kb) = drain.peak_rss_kb {
        report.figure(
            &format!("{what}: ds-sync peak RSS"),
            kb as f64 / 1024.0,
            "MB",
        );
    }
    // With version 1 nothing arrives before the walsender decoded the whole transaction.
    if let (true, Some(first)) = (one_transaction, drain.first_seen) {
        let first = first.as_secs_f64();
        let label = format!("{what}: ds-sync start to first message in the stream");
        report.figure(&label, first, "s");
        let label = format!("{what}: ds-sync first message to last");
        report.figure(&label, d - first, "s");
    }
    let v1_target = if one_transaction {
        STREAMING_V1_TARGET
    } else {
        DRAIN_TARGET
    };
    report.check(
        &format!("{what}: ds-sync / pg_recvlogical throughput"),
        c / d,
        "x",
        Some(v1_target),
        false,
    );
    if let Some(v2) = streaming_ceiling.map(|t| t.as_secs_f64()) {
        report.figure(
            &format!("{what}: pg_recvlogical v2 streaming time"),
            v2,
            "s",
        );
        report.check(
            &format!("{what}: ds-sync / pg_recvlogical v2 streaming throughput"),
            v2 / d,
            "x",
            Some(STREAMING_V2_TARGET),
            false,
        );
    }
    Ok(drain)
}

/// The CPU the drain needed, set against the machine: ds-sync, the DS server and the
/// walsender together, spread over every core, is the shortest the drain could take at this
/// CPU cost, so `ceiling` (`pg_recvlogical`'s time) over it is the best ratio reachable
/// without spending less CPU somewhere. With version 1 there is a tighter bound: until the
/// first message the walsender decodes alone (one process: at most one core), so at most
/// that long of the CPU can have been spent before it, and the rest is spread from there.
fn cpu_bound(report: &mut Report, what: &str, drain: &Drain, ceiling: f64) {
    let Some(walsender) = drain.walsender_cpu_secs else {
        return;
    };
    report.figure(
        &format!("{what}: walsender CPU (ds-sync's slot)"),
        walsender,
        "s",
    );
    let (Some(own), Some(server)) = (drain.cpu_secs, drain.runner_cpu_secs) else {
        return;
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let total = own + server + walsender;
    report.figure(
        &format!("{what}: CPU of ds-sync + DS server + walsender / {cores} cores"),
        total / cores,
        "s",
    );
    report.figure(
        &format!("{what}: best ds-sync / pg_recvlogical at this CPU, every core busy"),
        ceiling * cores / total,
        "x",
    );
    if let Some(first) = drain.first_seen.map(|f| f.as_secs_f64()) {
        let bound = first + (total - first.min(total)) / cores;
        report.figure(
            &format!("{what}: best at this CPU, the walsender alone until the first message"),
            ceiling / bound,
            "x",
        );
    }
}

/// `pg_recvlogical`'s options for pgoutput version 2 with in-progress transactions streamed.
const STREAMING: [&str; 4] = ["-o", "proto_version=2", "-o", "streaming=on"];

/// `capture-drain`.
pub(super) async fn drain(ctx: &Ctx<'_>, report: &mut Report) -> Result<(), BenchError> {
    let big = drain_phase(ctx, report, "bench_big", ctx.opts.rows, true).await?;
    report.series.push(big.series);
    let small = drain_phase(ctx, report, "bench_small", ctx.opts.txns, false).await?;
    report.series.push(small.series);
    let streamed = streaming_phase(ctx, report, "bench_big_v2", ctx.opts.rows).await?;
    report.series.push(streamed.series);
    live_phase(ctx, report, ctx.opts.rows).await?;
    report.notes.push(
        "Each phase writes its backlog while two slots wait at the same position; \
         pg_recvlogical (pgoutput v1 to /dev/null, --endpos at the backlog's end) and \
         ds-sync then drain one slot each; the first phase (the large transaction, drained \
         by ds-sync with its default, version 1) has a third slot, drained by \
         pg_recvlogical with `proto_version=2, streaming=on`. ds-sync's time runs from its \
         start to the poll that sees the last message in the DS stream (20 ms resolution); \
         the run then checks \
         that its slot confirmed the backlog's end. The `v2` phase writes the large \
         transaction again, for three slots: pg_recvlogical with version 1, pg_recvlogical \
         with `proto_version=2, streaming=on`, and ds-sync `--pgoutput-protocol 2` (which \
         holds the streamed blocks, spilling past 1 MiB, and sends them at the commit). \
         Since nothing can be sent before the commit, the `v2` phase also times what \
         delivery alone costs in the same run: the messages ds-sync wrote, read back and \
         gathered into 1 MiB JSON arrays beforehand, POSTed one at a time to a new stream on \
         the same DS server. The bound is ds-sync's time to its first message (the commit) \
         plus that POST time: the best a path that delivers at the commit could do. \
         The `live` figures write the large transaction while ds-sync already streams \
         (version 1, then version 2, each on a table and slot of its own) and time its \
         commit to the poll that sees its last message."
            .into(),
    );
    Ok(())
}

/// The large transaction with pgoutput version 2's streaming: ds-sync `--pgoutput-protocol
/// 2` next to `pg_recvlogical` with version 1 and with version 2, each on its own slot over
/// the same WAL.
async fn streaming_phase(
    ctx: &Ctx<'_>,
    report: &mut Report,
    table: &str,
    rows: u64,
) -> Result<Drain, BenchError> {
    let sql = ctx.stack.sql().await?;
    let phase = Phase::create(&sql, table).await?;
    let v1_slot = phase.slot(&sql, "ceiling").await?;
    let v2_slot = phase.slot(&sql, "ceiling_v2").await?;
    let ds_slot = phase.slot(&sql, "dssync").await?;
    tracing::info!("writing the backlog: {rows} rows in one transaction, for version 2");
    phase.write_one_transaction(&sql, rows).await?;
    let end = workload::current_lsn(&sql).await?;
    let publication = &phase.publication;
    let v1 = workload::recvlogical_ceiling(ctx.stack, &v1_slot, publication, &end).await?;
    let v2 = workload::recvlogical_ceiling_with(ctx.stack, &v2_slot, publication, &end, &STREAMING)
        .await?;
    let label = "ds-sync --pgoutput-protocol 2";
    let extra = ["--pgoutput-protocol", "2"];
    let drain = ds_sync_drain_with(ctx, &phase, (&ds_slot, rows, &end), label, &extra).await?;
    // What delivery alone costs: the same messages POSTed again, after the fact.
    let batches = super::snapshot::read_back(ctx, &phase.stream()).await?;
    let post_stream = format!("{}-post-ceiling", phase.stream());
    let post = super::snapshot::post_ceiling(ctx, &batches, &post_stream).await?;
    let (v1, v2, d, p) = (
        v1.as_secs_f64(),
        v2.as_secs_f64(),
        drain.elapsed.as_secs_f64(),
        post.as_secs_f64(),
    );
    let what = format!("v2: {rows} rows in one transaction");
    report.figure(&format!("{what}: pg_recvlogical v1 time"), v1, "s");
    report.figure(
        &format!("{what}: pg_recvlogical v2 streaming time"),
        v2,
        "s",
    );
    report.figure(&format!("{what}: ds-sync v2 time"), d, "s");
    report.figure(
        &format!("{what}: POST of the same messages (1 MiB, one in flight) time"),
        p,
        "s",
    );
    if let Some(first) = drain.first_seen {
        streaming_bound(report, &what, (v1, v2, d, p), first.as_secs_f64());
    }
    report.figure(&format!("{what}: ds-sync v2"), rows as f64 / d, "rows/s");
    if let Some(kb) = drain.peak_rss_kb {
        report.figure(
            &format!("{what}: ds-sync v2 peak RSS"),
            kb as f64 / 1024.0,
            "MB",
        );
    }
    report.check(
        &format!("{what}: ds-sync v2 / pg_recvlogical v1 throughput"),
        v1 / d,
        "x",
        Some(STREAMING_V1_TARGET),
        false,
    );
    report.check(
        &format!("{what}: ds-sync v2 / pg_recvlogical v2 throughput"),
        v2 / d,
        "x",
        Some(STREAMING_V2_TARGET),
        false,
    );
    Ok(drain)
}

/// What delivering at the commit costs: nothing reaches DS before the Stream Commit, so
/// after it comes at least the time the DS server takes to store the messages (`p`, the
/// POST of the same arrays). The best ratios such a path could reach are those of ds-sync's
/// own time to the commit (`first`: start to the first message in the stream) plus `p`.
fn streaming_bound(
    report: &mut Report,
    what: &str,
    (v1, v2, d, p): (f64, f64, f64, f64),
    first: f64,
) {
    report.figure(
        &format!("{what}: ds-sync v2 start to first message in the stream"),
        first,
        "s",
    );
    report.figure(
        &format!("{what}: ds-sync v2 first message to last"),
        d - first,
        "s",
    );
    report.figure(
        &format!("{what}: ds-sync v2 first message to last / POST of the same messages"),
        (d - first) / p,
        "x",
    );
    let bound = first + p;
    report.figure(
        &format!("{what}: bound if delivery cost only the POSTs, / pg_recvlogical v1"),
        v1 / bound,
        "x",
    );
    report.figure(
        &format!("{what}: bound if delivery cost only the POSTs, / pg_recvlogical v2"),
        v2 / bound,
        "x",
    );
}

/// `memory`: RSS of ds-sync while one large transaction passes.
pub(super) async fn memory(ctx: &Ctx<'_>, report: &mut Report) -> Result<(), BenchError> {
    let sql = ctx.stack.sql().await?;
    let rows = ctx.opts.rows;
    let runs = ctx.opts.runs.max(1);
    let mut worst: Option<(f64, super::report::Series)> = None;
    report.figure("rows in the transaction", rows as f64, "rows");
    for run in 1..=runs {
        let table = if runs == 1 {
            "bench_mem".to_owned()
        } else {
            format!("bench_mem_{run}")
        };
        let phase = Phase::create(&sql, &table).await?;
        let slot = phase.slot(&sql, "dssync").await?;
        phase.write_one_transaction(&sql, rows).await?;
        let end = workload::current_lsn(&sql).await?;
        let drain = ds_sync_drain(ctx, &phase, &slot, rows, &end, "ds-sync").await?;
        let peak_mb = drain.peak_rss_kb.unwrap_or_default() as f64 / 1024.0;
        let suffix = if runs == 1 {
            String::new()
        } else {
            format!(" (run {run})")
        };
        report.figure(
            &format!("drain{suffix}"),
            rows as f64 / drain.elapsed.as_secs_f64(),
            "rows/s",
        );
        if runs > 1 {
            report.figure(&format!("ds-sync peak RSS{suffix}"), peak_mb, "MB");
        }
        if worst.as_ref().is_none_or(|(w, _)| peak_mb > *w) {
            worst = Some((peak_mb, drain.rss));
        }
    }
    let Some((peak_mb, rss)) = worst else {
        return Ok(());
    };
    let name = if runs == 1 {
        "ds-sync peak RSS (VmHWM)".to_owned()
    } else {
        format!("ds-sync peak RSS (VmHWM), worst of {runs} runs")
    };
    report.check(&name, peak_mb, "MB", Some(RSS_TARGET_MB), true);
    report.series.push(rss);
    report.notes.push(
        "Peak RSS is the child process's VmHWM from /proc after the drain (with several runs, \
         each drains its own table and transaction, and the worst peak is checked); the chart \
         samples VmRSS every 20 ms (of the worst run)."
            .into(),
    );
    Ok(())
}

/// The large transaction written while ds-sync streams, with version 1 and with version 2:
/// from its COMMIT to its last message in the DS stream. Figures only: what version 2 saves
/// is the walsender's decoding after the commit, which a drained backlog cannot show.
async fn live_phase(ctx: &Ctx<'_>, report: &mut Report, rows: u64) -> Result<(), BenchError> {
    let mut times = Vec::new();
    for (version, table) in [("1", "bench_live_v1"), ("2", "bench_live_v2")] {
        let sql = ctx.stack.sql().await?;
        let phase = Phase::create(&sql, table).await?;
        let slot = phase.slot(&sql, "dssync").await?;
        let log = format!("ds-sync-{table}.log");
        let extra = ["--pgoutput-protocol", version];
        let mut process = spawn_run(ctx, &phase, &slot, &log, &extra)?;
        wait_slot_active(&sql, &slot).await?;
        tracing::info!(
            "writing {rows} rows in one transaction while ds-sync (version {version}) streams"
        );
        phase.write_one_transaction(&sql, rows).await?;
        let committed = std::time::Instant::now();
        let label = format!("live ds-sync v{version}");
        let drain = workload::wait_drained(
            ctx.stack,
            &phase.stream(),
            rows,
            committed,
            Some(&mut process),
            &label,
            ctx.opts.progress,
        )
        .await?;
        process.stop().await?;
        let secs = drain.elapsed.as_secs_f64();
        report.figure(
            &format!(
                "live: {rows} rows in one transaction: commit to delivered, ds-sync v{version}"
            ),
            secs,
            "s",
        );
        times.push(secs);
    }
    if let [v1, v2] = times[..] {
        report.figure(
            &format!("live: {rows} rows in one transaction: ds-sync v1 / v2 commit to delivered"),
            v1 / v2,
            "x",
        );
    }
    Ok(())
}

/// Waits until a consumer holds `slot` (ds-sync streams from it), so that what is written
/// next is read as it is written.
async fn wait_slot_active(sql: &tokio_postgres::Client, slot: &str) -> Result<(), BenchError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let active: bool = sql
            .query_one(
                "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| BenchError::sql("reading the slot", &e))?
            .get(0);
        if active {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(BenchError::Timeout {
                what: format!("ds-sync streaming from {slot}"),
                secs: 60,
                detail: "the slot stayed inactive".into(),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
