//! Ingest scenarios: `ingest-drain` (a stream's backlog into `session_events`, next to
//! `psql \copy ... FROM ... WITH (FORMAT binary)` of the same rows, peak RSS included),
//! `ingest-latency` (POST returned to row committed, under a steady POST rate) and
//! `ingest-outage` (PostgreSQL down while events keep arriving: peak RSS, recovery, exactly
//! once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use super::BenchError;
use super::capture::Ctx;
use super::latency::{self, Stamps};
use super::report::{Report, Series};
use super::stack::{DsSyncProcess, Stack};
use super::table_form::{self, TableForm};
use super::tail::count_in_offset;
use super::workload::{self, Bar};
use crate::ds::DsClient;

/// Target: ingest drains at least this fraction of the binary-COPY rate.
const DRAIN_TARGET: f64 = 0.9;
/// Target: peak RSS while a backlog of a million events drains, in MB.
const DRAIN_RSS_TARGET_MB: f64 = 64.0;
/// Target: peak RSS through an outage while 300,000 events arrive, in MB.
const OUTAGE_RSS_TARGET_MB: f64 = 96.0;
/// Events per POST while preloading a backlog.
const PRELOAD_BATCH: u64 = 1000;

/// One event of the sync-layer document's shape, numbered.
pub(super) fn event(n: u64) -> serde_json::Value {
    json!({
        "key": format!("event-{n}"),
        "type": "user-action",
        "operation": "click",
        "data": {"button": "submit", "n": n},
    })
}

/// Appends `count` events to `stream` (numbered from 1), `PRELOAD_BATCH` per POST.
pub(super) async fn preload(
    stack: &Stack,
    stream: &str,
    count: u64,
    progress: bool,
) -> Result<(), BenchError> {
    stack.ds.ensure_stream(stream).await?;
    let bar = Bar::new("preloading events", count, progress);
    let mut n = 1;
    while n <= count {
        let last = (n + PRELOAD_BATCH - 1).min(count);
        let batch: Vec<_> = (n..=last).map(event).collect();
        let body = Bytes::from(serde_json::to_vec(&batch).unwrap_or_default());
        stack.ds.append(stream, body, None).await?;
        bar.set(last);
        n = last + 1;
    }
    bar.finish();
    Ok(())
}

/// Starts `ds-sync run --no-capture --ingest STREAM`.
fn start_ingest(ctx: &Ctx<'_>, stream: &str, log: &str) -> Result<DsSyncProcess, BenchError> {
    let mut args = vec!["run", "--no-capture", "--ingest", stream];
    args.extend(ctx.opts.ds_sync_args.iter().map(String::as_str));
    DsSyncProcess::spawn(&ctx.opts.exe, ctx.stack, &args, &ctx.dir.join(log))
}

/// The offset ds-sync committed for `stream`, if any.
async fn committed_offset(
    sql: &tokio_postgres::Client,
    stream: &str,
) -> Result<Option<String>, BenchError> {
    let row = sql
        .query_opt(
            "SELECT ds_offset FROM ds_sync.stream_offsets WHERE stream_name = $1",
            &[&stream],
        )
        .await;
    match row {
        Ok(row) => Ok(row.map(|r| r.get(0))),
        // Before ds-sync applied its schema the table does not exist yet.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(BenchError::sql("reading the committed offset", &e)),
    }
}

/// Runs ds-sync ingest on a preloaded stream until its tail offset is committed; the time.
pub(super) async fn timed_ingest(
    ctx: &Ctx<'_>,
    stream: &str,
    rows: u64,
) -> Result<Duration, BenchError> {
    Ok(ingest_until_tail(ctx, stream, rows).await?.elapsed)
}

/// What one ingest drain measured.
struct IngestDrain {
    elapsed: Duration,
    series: Series,
    cpu: Option<f64>,
    rss: Option<(u64, u64)>,
}

async fn ingest_until_tail(
    ctx: &Ctx<'_>,
    stream: &str,
    rows: u64,
) -> Result<IngestDrain, BenchError> {
    let tail = ctx
        .stack
        .ds
        .head(stream)
        .await?
        .ok_or_else(|| BenchError::Setup("the preloaded stream vanished".into()))?;
    let sql = ctx.stack.sql().await?;
    let mut process = start_ingest(ctx, stream, &format!("ds-sync-ingest-{stream}.log"))?;
    let started = process.started;
    let bar = Bar::new("ds-sync ingest", rows, ctx.opts.progress);
    let mut series = Series {
        name: "ds-sync ingest".into(),
        unit: "rows/s".into(),
        points: vec![(0.0, 0.0)],
    };
    let (mut last_t, mut last_n) = (Instant::now(), 0u64);
    let elapsed = loop {
        process.check_alive()?;
        let offset = committed_offset(&sql, stream).await?;
        let now = Instant::now();
        if let Some(n) = offset.as_deref().and_then(count_in_offset) {
            bar.set(n);
            if now.duration_since(last_t) >= Duration::from_millis(250) {
                let dt = now.duration_since(last_t).as_secs_f64();
                series.points.push((
                    started.elapsed().as_secs_f64(),
                    (n - last_n.min(n)) as f64 / dt,
                ));
                (last_t, last_n) = (now, n);
            }
        }
        if offset.as_deref() == Some(tail.as_str()) {
            break now.duration_since(started);
        }
        if started.elapsed() > Duration::from_secs(900) {
            return Err(BenchError::Timeout {
                what: "ingesting the backlog".into(),
                secs: 900,
                detail: format!("committed offset {offset:?}, tail {tail}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    bar.finish();
    let (cpu, rss) = (process.cpu_seconds(), process.memory_kb());
    process.stop().await?;
    check_stored(&sql, stream, rows).await?;
    Ok(IngestDrain {
        elapsed,
        series,
        cpu,
        rss,
    })
}

async fn check_stored(
    sql: &tokio_postgres::Client,
    stream: &str,
    rows: u64,
) -> Result<(), BenchError> {
    let stored: i64 = sql
        .query_one(
            "SELECT count(*) FROM public.session_events WHERE stream_name = $1",
            &[&stream],
        )
        .await
        .map_err(|e| BenchError::sql("counting ingested rows", &e))?
        .get(0);
    if stored as u64 != rows {
        return Err(BenchError::Setup(format!(
            "ingest stored {stored} rows for {rows} events"
        )));
    }
    Ok(())
}

/// `ingest-drain`: the same backlog drained once per table form (`--table-forms`), each
/// next to binary COPY into the same table.
pub(super) async fn drain(ctx: &Ctx<'_>, report: &mut Report) -> Result<(), BenchError> {
    let rows = ctx.opts.rows;
    let stream = "bench-ingest";
    preload(ctx.stack, stream, rows, ctx.opts.progress).await?;
    let file = ctx.dir.join("ceiling.copy");
    warm_up(ctx, stream, &file).await?;
    let forms = &ctx.opts.table_forms;
    let only_plain = forms.as_slice() == [TableForm::Plain];
    for form in forms {
        let label = if only_plain {
            String::new()
        } else {
            format!(" ({})", form.name())
        };
        drain_one(ctx, report, stream, *form, &label, &file).await?;
    }
    let _ = std::fs::remove_file(&file);
    report.notes.push(
        "The backlog is POSTed before ds-sync starts. ds-sync's time runs from its start to \
         the poll (20 ms) that finds the stream's tail offset committed in \
         ds_sync.stream_offsets. A drain that is not measured comes first: the ceiling's \
         input is the very rows it stored (\\copy ... TO ... WITH (FORMAT binary)), and the \
         WAL segments it creates are recycled by the measured phases (on a new cluster, \
         whichever phase ran first also paid for creating and zero-filling them). The ceiling \
         empties session_events and times \\copy ... FROM of those rows into it: the same \
         table, indexes, defaults and partitions. Each measured phase starts on an empty \
         table (made anew) right after a CHECKPOINT. \
         With --runs N each table form is drained N times, odd runs ds-sync first, even runs \
         the ceiling first; the median run's ratio is checked and the lowest and highest are \
         given."
            .into(),
    );
    if !only_plain {
        report.notes.push(
            "Table forms, in the order run, on the same servers and backlog: plain is \
             session_events as `ds-sync init` makes it (primary key, (stream_name, id) and \
             (received_at) indexes); unindexed is the same without those two indexes (their \
             cost); partitioned is `init --partition-by day` (primary key (id, received_at), \
             the same indexes on every partition). Before each drain the table is made anew, \
             empty, and ingest's offset for the stream is forgotten."
                .into(),
        );
    }
    Ok(())
}

/// What one run of a drain measured: ds-sync's drain and the ceiling's copy of its rows.
struct DrainRun {
    drain: IngestDrain,
    copy: Duration,
}

impl DrainRun {
    fn ratio(&self) -> f64 {
        self.copy.as_secs_f64() / self.drain.elapsed.as_secs_f64()
    }
}

/// The preloaded backlog drained into the table as it is, next to its ceiling, `--runs`
/// times. Every measured phase starts on an empty table right after a CHECKPOINT, so that
/// neither inherits the other's dirty pages; with several runs the order alternates (odd
/// runs ds-sync first, even runs the ceiling first) and the median ratio is checked.
async fn drain_one(
    ctx: &Ctx<'_>,
    report: &mut Report,
    stream: &str,
    form: TableForm,
    label: &str,
    file: &std::path::Path,
) -> Result<(), BenchError> {
    let runs = ctx.opts.runs.max(1);
    let mut sql = ctx.stack.sql().await?;
    let mut done: Vec<DrainRun> = Vec::new();
    for run in 1..=runs {
        table_form::reset(&mut sql, form, stream).await?;
        let ceiling_first = run % 2 == 0;
        let mut copy = None;
        if ceiling_first {
            copy = Some(binary_copy_ceiling(ctx, &sql, file).await?);
            table_form::reset(&mut sql, form, stream).await?;
        }
        checkpoint(&sql).await?;
        let drain = ingest_until_tail(ctx, stream, ctx.opts.rows).await?;
        let copy = match copy {
            Some(copy) => copy,
            None => binary_copy_ceiling(ctx, &sql, file).await?,
        };
        done.push(DrainRun { drain, copy });
    }
    report_drain(report, ctx.opts.rows, label, done);
    Ok(())
}

/// The figures of one table form's runs: each run's ratio when there are several, the
/// median run's rates and times, the worst peak RSS, and the median ratio checked.
fn report_drain(report: &mut Report, rows: u64, label: &str, mut done: Vec<DrainRun>) {
    let runs = done.len();
    if runs > 1 {
        for (i, run) in done.iter().enumerate() {
            report.figure(
                &format!("ds-sync / psql ratio{label} (run {}{})", i + 1, order(i)),
                run.ratio(),
                "x",
            );
        }
    }
    let worst_rss = done
        .iter()
        .filter_map(|r| r.drain.rss.map(|(_, peak)| peak))
        .max();
    done.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    let (low, high) = (done[0].ratio(), done[runs - 1].ratio());
    let median = done.swap_remove(runs / 2);
    let (c, d) = (
        median.copy.as_secs_f64(),
        median.drain.elapsed.as_secs_f64(),
    );
    if label.is_empty() || report.figures.iter().all(|f| f.name != "events") {
        report.figure("events", rows as f64, "events");
    }
    let of = if runs > 1 { " (median run)" } else { "" };
    report.figure(
        &format!("psql \\copy FROM (FORMAT binary){label}{of}"),
        rows as f64 / c,
        "rows/s",
    );
    report.figure(
        &format!("ds-sync ingest{label}{of}"),
        rows as f64 / d,
        "rows/s",
    );
    report.figure(&format!("psql \\copy time{label}{of}"), c, "s");
    report.figure(&format!("ds-sync ingest time{label}{of}"), d, "s");
    if let Some(cpu) = median.drain.cpu {
        report.figure(&format!("ds-sync CPU{label}{of}"), cpu, "s");
    }
    if let Some(peak) = worst_rss {
        let worst = if runs > 1 {
            format!(", worst of {runs} runs")
        } else {
            String::new()
        };
        report.check(
            &format!("ds-sync peak RSS (VmHWM){label}{worst}"),
            peak as f64 / 1024.0,
            "MB",
            Some(DRAIN_RSS_TARGET_MB),
            true,
        );
    }
    if runs > 1 {
        report.figure(
            &format!("ds-sync / psql ratio{label}, lowest of {runs}"),
            low,
            "x",
        );
        report.figure(
            &format!("ds-sync / psql ratio{label}, highest of {runs}"),
            high,
            "x",
        );
    }
    let median_of = if runs > 1 {
        format!(", median of {runs} runs")
    } else {
        String::new()
    };
    report.check(
        &format!("ds-sync ingest / psql binary COPY throughput{label}{median_of}"),
        median.ratio(),
        "x",
        Some(DRAIN_TARGET),
        false,
    );
    let mut series = median.drain.series;
    series.name.push_str(label);
    report.series.push(series);
}

/// Which side of run `i` (from 0) went first.
fn order(i: usize) -> &'static str {
    if i % 2 == 1 {
        ", ceiling first"
    } else {
        ", ds-sync first"
    }
}

/// A drain that is not measured, into `session_events` as `ds-sync init` makes it: its rows,
/// exported to `file`, are the ceiling's input, and the WAL segments it creates are there to
/// be recycled by the measured phases, so that no phase pays for creating them.
async fn warm_up(ctx: &Ctx<'_>, stream: &str, file: &std::path::Path) -> Result<(), BenchError> {
    let mut sql = ctx.stack.sql().await?;
    table_form::reset(&mut sql, TableForm::Plain, stream).await?;
    ingest_until_tail(ctx, stream, ctx.opts.rows).await?;
    export_stored(ctx, stream, file).await
}

/// Writes dirty pages out, so that the next measured phase starts clean.
async fn checkpoint(sql: &tokio_postgres::Client) -> Result<(), BenchError> {
    sql.batch_execute("CHECKPOINT")
        .await
        .map_err(|e| BenchError::sql("checkpointing before a measured phase", &e))
}

/// The columns ds-sync fills, in its COPY's order.
const COPY_COLUMNS: &str = "stream_name, event_key, event_type, operation, payload, ds_offset";

/// Exports the rows ds-sync stored for `stream` in binary COPY format: the ceiling's input.
async fn export_stored(
    ctx: &Ctx<'_>,
    stream: &str,
    file: &std::path::Path,
) -> Result<(), BenchError> {
    workload::psql(
        ctx.stack,
        &format!(
            "\\copy (SELECT {COPY_COLUMNS} FROM public.session_events WHERE stream_name = \
             '{stream}') TO '{}' WITH (FORMAT binary)",
            file.display()
        ),
    )
    .await?;
    Ok(())
}

/// Empties `session_events`, checkpoints, then times `psql \copy FROM` of the exported rows
/// into it (the same form, indexes and partitions).
async fn binary_copy_ceiling(
    ctx: &Ctx<'_>,
    sql: &tokio_postgres::Client,
    file: &std::path::Path,
) -> Result<Duration, BenchError> {
    sql.batch_execute("TRUNCATE public.session_events")
        .await
        .map_err(|e| BenchError::sql("emptying session_events for the ceiling", &e))?;
    checkpoint(sql).await?;
    let started = Instant::now();
    workload::psql(
        ctx.stack,
        &format!(
            "\\copy public.session_events ({COPY_COLUMNS}) FROM '{}' WITH (FORMAT binary)",
            file.display()
        ),
    )
    .await?;
    Ok(started.elapsed())
}

/// Waits until ds-sync committed the tail of `stream` (fails if it exits or 900 s pass).
async fn wait_committed(
    ctx: &Ctx<'_>,
    process: &mut DsSyncProcess,
    stream: &str,
    what: &str,
) -> Result<(), BenchError> {
    let tail = ctx.stack.ds.head(stream).await?.unwrap_or_default();
    let started = Instant::now();
    let mut sql: Option<tokio_postgres::Client> = None;
    loop {
        process.check_alive()?;
        if sql.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            sql = ctx.stack.sql().await.ok();
        }
        if let Some(c) = &sql
            && committed_offset(c, stream).await.ok().flatten().as_deref() == Some(tail.as_str())
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(900) {
            return Err(BenchError::Timeout {
                what: what.into(),
                secs: 900,
                detail: format!("tail {tail}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `ingest-outage`: ds-sync ingests a live stream; PostgreSQL stops for `duration` while
/// `rows` events arrive at an even pace, then starts again. Peak RSS through it all, the
/// time to catch up once PostgreSQL is back, and every event exactly once.
pub(super) async fn outage(ctx: &Ctx<'_>, report: &mut Report) -> Result<(), BenchError> {
    let stream = "bench-ingest-outage";
    let rows = ctx.opts.rows;
    ctx.stack.ds.ensure_stream(stream).await?;
    let mut process = start_ingest(ctx, stream, "ds-sync-ingest-outage.log")?;
    post(&ctx.stack.ds, stream, 0).await?;
    wait_committed(ctx, &mut process, stream, "the warm-up event").await?;
    let mut rss = Series {
        name: "ds-sync RSS".into(),
        unit: "MB".into(),
        points: Vec::new(),
    };
    ctx.stack.stop_postgres().await?;
    let down = Instant::now();
    let bar = Bar::new("posting during the outage", rows, ctx.opts.progress);
    let batches = rows.div_ceil(PRELOAD_BATCH).max(1);
    let pace = ctx.opts.duration.div_f64(batches as f64);
    let mut n = 1;
    while n <= rows {
        let last = (n + PRELOAD_BATCH - 1).min(rows);
        let batch: Vec<_> = (n..=last).map(event).collect();
        let body = Bytes::from(serde_json::to_vec(&batch).unwrap_or_default());
        ctx.stack.ds.append(stream, body, None).await?;
        bar.set(last);
        process.check_alive()?;
        if let Some((now_kb, _)) = process.memory_kb() {
            rss.points
                .push((down.elapsed().as_secs_f64(), now_kb as f64 / 1024.0));
        }
        let due = pace.mul_f64(n.div_ceil(PRELOAD_BATCH) as f64);
        tokio::time::sleep(due.saturating_sub(down.elapsed())).await;
        n = last + 1;
    }
    bar.finish();
    tokio::time::sleep(ctx.opts.duration.saturating_sub(down.elapsed())).await;
    let outage = down.elapsed();
    ctx.stack.start_postgres_again().await?;
    let back = Instant::now();
    wait_committed(ctx, &mut process, stream, "catching up after the outage").await?;
    let recovery = back.elapsed();
    let (cpu, peak) = (process.cpu_seconds(), process.memory_kb().map(|m| m.1));
    process.stop().await?;
    let sql = ctx.stack.sql().await?;
    check_exactly_once(&sql, stream, rows + 1).await?;
    report.figure("events during the outage", rows as f64, "events");
    report.figure("outage", outage.as_secs_f64(), "s");
    report.figure(
        "catch-up after PostgreSQL is back",
        recovery.as_secs_f64(),
        "s",
    );
    if let Some(cpu) = cpu {
        report.figure("ds-sync CPU", cpu, "s");
    }
    if let Some(peak) = peak {
        report.check(
            "ds-sync peak RSS (VmHWM)",
            peak as f64 / 1024.0,
            "MB",
            Some(OUTAGE_RSS_TARGET_MB),
            true,
        );
    }
    report.series.push(rss);
    report.notes.push(format!(
        "ds-sync ingests one live stream; after a warm-up event is committed the throwaway \
         PostgreSQL is stopped (fast shutdown), {rows} events are POSTed in batches of \
         {PRELOAD_BATCH} spread over the outage, and PostgreSQL starts again on the same port. \
         Catch-up time runs from the restart to the poll (20 ms) that finds the stream's tail \
         offset committed. Every event is then checked to be stored exactly once. Peak RSS is \
         the child's VmHWM; the chart samples VmRSS after each POST."
    ));
    Ok(())
}

/// Fails unless `stream` holds exactly `events` rows with distinct event numbers.
async fn check_exactly_once(
    sql: &tokio_postgres::Client,
    stream: &str,
    events: u64,
) -> Result<(), BenchError> {
    let row = sql
        .query_one(
            "SELECT count(*), count(DISTINCT payload->'data'->>'n') \
             FROM public.session_events WHERE stream_name = $1",
            &[&stream],
        )
        .await
        .map_err(|e| BenchError::sql("counting ingested rows", &e))?;
    let (count, distinct): (i64, i64) = (row.get(0), row.get(1));
    if count as u64 != events || distinct as u64 != events {
        return Err(BenchError::Setup(format!(
            "ingest stored {count} rows ({distinct} distinct events) for {events} events"
        )));
    }
    Ok(())
}

/// `ingest-latency`: `rate` single-event POSTs per second for `duration`; each event's
/// latency runs from its POST returning to a poller seeing its row committed.
pub(super) async fn latency(ctx: &Ctx<'_>, report: &mut Report) -> Result<(), BenchError> {
    let stream = "bench-ingest-live";
    ctx.stack.ds.ensure_stream(stream).await?;
    let total = (f64::from(ctx.opts.rate) * ctx.opts.duration.as_secs_f64()) as usize;
    let stamps = Stamps::new(total);
    let mut process = start_ingest(ctx, stream, "ds-sync-ingest.log")?;
    let poller = tokio::spawn(poll_rows(ctx.stack.sql().await?, Arc::clone(&stamps)));
    // Event 0 is the warm-up: ingest is running once its row is there.
    post(&ctx.stack.ds, stream, 0).await?;
    stamps
        .wait_arrived(
            0..1,
            Duration::from_secs(60),
            Some(&mut process),
            "the warm-up event",
        )
        .await?;
    let writers = ctx.opts.writers.max(1);
    let bar = Bar::new("posting", total as u64, ctx.opts.progress);
    let posted = latency::paced(
        vec![ctx.stack.ds.clone(); writers],
        ctx.opts.rate,
        1..=total,
        &stamps,
        Some(&mut process),
        &bar,
        move |ds, n| async move { post(&ds, stream, n).await },
    )
    .await?;
    stamps
        .wait_arrived(
            1..total + 1,
            Duration::from_secs(120),
            Some(&mut process),
            "events",
        )
        .await?;
    poller.abort();
    process.stop().await?;
    let l = stamps.latency("POST to committed row", 1..total + 1)?;
    report.figure("target rate", f64::from(ctx.opts.rate), "events/s");
    report.figure(
        "achieved rate",
        total as f64 / posted.as_secs_f64(),
        "events/s",
    );
    report.figure("events", total as f64, "events");
    report.check(
        "p99 POST to committed row",
        l.p99,
        "ms",
        Some(latency::INGEST_P99_TARGET_MS),
        true,
    );
    report.latencies.push(l);
    report.notes.push(format!(
        "{writers} tasks pace single-event POSTs to the target rate; latency runs from the \
         POST returning to a poller (a query every millisecond for rows with a higher id) \
         seeing the committed row: up to ~1 ms of it is the poll interval."
    ));
    Ok(())
}

async fn post(ds: &DsClient, stream: &str, n: usize) -> Result<(), BenchError> {
    let body = Bytes::from(serde_json::to_vec(&[event(n as u64)]).unwrap_or_default());
    ds.append(stream, body, None).await?;
    Ok(())
}

/// Polls `session_events` for new rows and stamps each event number on first sight.
async fn poll_rows(sql: tokio_postgres::Client, stamps: Arc<Stamps>) -> Result<(), BenchError> {
    let mut last_id = 0i32;
    loop {
        let rows = match sql
            .query(
                "SELECT id, (payload->'data'->>'n')::bigint FROM public.session_events \
                 WHERE id > $1 ORDER BY id",
                &[&last_id],
            )
            .await
        {
            Ok(rows) => rows,
            // Until ds-sync created its schema.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        for r in rows {
            last_id = r.get(0);
            if let Some(n) = r
                .get::<_, Option<i64>>(1)
                .and_then(|n| u64::try_from(n).ok())
            {
                stamps.arrived(n);
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
