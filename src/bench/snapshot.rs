//! `snapshot`: existing rows read inside the slot's exported snapshot and delivered to DS,
//! next to a ceiling made of the two things the path cannot go faster than, both measured in
//! the same run: `psql \copy (SELECT ...) TO '/dev/null'` of the same table (the speed at
//! which Postgres hands the rows out at all), and the very messages ds-sync wrote, read back
//! and POSTed again in 1 MiB JSON arrays with one POST in flight, as ds-sync delivers one
//! stream (the speed at which the DS server stores them). The ceiling is the slower of the
//! two.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::BenchError;
use super::capture::{Ctx, spawn_run};
use super::report::Report;
use super::workload::{self, Phase};

/// Target: the snapshot delivers at least this fraction of the ceiling's rate.
const SNAPSHOT_TARGET: f64 = 0.8;
/// The size of the ceiling's POSTs: ds-sync's default batch size.
const POST_BYTES: usize = 1 << 20;

/// One run's measures.
struct SnapshotRun {
    copy: Duration,
    post: Duration,
    /// ds-sync from its start to the poll that saw snapshot-end.
    drain: workload::Drain,
    /// ds-sync from the poll that first saw a message to the one that saw the last.
    delivering: Duration,
}

impl SnapshotRun {
    /// ds-sync's rate over the ceiling's (the slower of \copy and POST).
    fn ratio(&self) -> f64 {
        self.copy.max(self.post).as_secs_f64() / self.drain.elapsed.as_secs_f64()
    }
}

/// `snapshot`: `rows` existing rows, one table, `--runs` times (each run a table and a
/// stream of its own); the median run's ratio is checked.
pub(super) async fn run(ctx: &Ctx<'_>, report: &mut Report) -> Result<(), BenchError> {
    let runs = ctx.opts.runs.max(1);
    let mut done = Vec::new();
    for n in 1..=runs {
        let table = if runs == 1 {
            "bench_snap".to_owned()
        } else {
            format!("bench_snap_{n}")
        };
        let one = snapshot_once(ctx, &table).await?;
        if runs > 1 {
            report.figure(
                &format!("run {n}: ds-sync / ceiling throughput"),
                one.ratio(),
                "x",
            );
        }
        done.push(one);
    }
    let worst_rss = done.iter().filter_map(|r| r.drain.peak_rss_kb).max();
    done.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    let median = done.swap_remove(done.len() / 2);
    report_run(ctx, report, median, worst_rss, runs);
    Ok(())
}

/// One table of `rows` rows: \copy, then ds-sync's snapshot of it, then the POST ceiling on
/// the messages ds-sync wrote.
async fn snapshot_once(ctx: &Ctx<'_>, table: &str) -> Result<SnapshotRun, BenchError> {
    let rows = ctx.opts.rows;
    let sql = ctx.stack.sql().await?;
    let phase = Phase::create(&sql, table).await?;
    phase.write_one_transaction(&sql, rows).await?;
    sql.batch_execute(&format!("VACUUM ANALYZE {}", phase.table))
        .await
        .map_err(|e| BenchError::sql("vacuuming the table", &e))?;
    let copy = workload::psql(
        ctx.stack,
        &format!("\\copy (SELECT * FROM {}) TO '/dev/null'", phase.table),
    )
    .await?;
    let slot = format!("{}_dssync", phase.table);
    let log = format!("ds-sync-{table}.log");
    let mut process = spawn_run(ctx, &phase, &slot, &log, &["--snapshot", "initial"])?;
    let started = process.started;
    // snapshot-start, the rows, snapshot-end.
    let drain = workload::wait_drained(
        ctx.stack,
        &phase.stream(),
        rows + 2,
        started,
        Some(&mut process),
        "ds-sync snapshot",
        ctx.opts.progress,
    )
    .await?;
    process.stop().await?;
    let delivering = drain
        .elapsed
        .saturating_sub(drain.first_seen.unwrap_or_default());
    let batches = read_back(ctx, &phase.stream()).await?;
    let post = post_ceiling(ctx, &batches, &format!("{}-post-ceiling", phase.stream())).await?;
    Ok(SnapshotRun {
        copy,
        post,
        drain,
        delivering,
    })
}

/// The median run's figures and check.
fn report_run(
    ctx: &Ctx<'_>,
    report: &mut Report,
    run: SnapshotRun,
    worst_rss_kb: Option<u64>,
    runs: u32,
) {
    let rows = ctx.opts.rows as f64;
    let (c, p, d) = (
        run.copy.as_secs_f64(),
        run.post.as_secs_f64(),
        run.drain.elapsed.as_secs_f64(),
    );
    let median = if runs > 1 { " (median run)" } else { "" };
    report.figure("rows", rows, "rows");
    report.figure(
        &format!("psql \\copy to /dev/null{median}"),
        rows / c,
        "rows/s",
    );
    report.figure(
        &format!("POST of the same messages (1 MiB, one in flight){median}"),
        rows / p,
        "rows/s",
    );
    report.figure(
        &format!("ds-sync snapshot into DS{median}"),
        rows / d,
        "rows/s",
    );
    report.figure("psql \\copy time", c, "s");
    report.figure("POST time", p, "s");
    report.figure("ds-sync snapshot time", d, "s");
    report.figure(
        "ds-sync from the first message in the stream to the last",
        run.delivering.as_secs_f64(),
        "s",
    );
    if let Some(cpu) = run.drain.cpu_secs {
        report.figure("ds-sync CPU", cpu, "s");
    }
    if let Some(kb) = worst_rss_kb {
        let worst = if runs > 1 { ", worst run" } else { "" };
        report.figure(
            &format!("ds-sync peak RSS{worst}"),
            kb as f64 / 1024.0,
            "MB",
        );
    }
    report.figure("ds-sync snapshot / psql \\copy throughput", c / d, "x");
    report.check(
        &format!("ds-sync snapshot / ceiling (the slower of \\copy and POST) throughput{median}"),
        run.ratio(),
        "x",
        Some(SNAPSHOT_TARGET),
        false,
    );
    report.series.push(run.drain.series);
    report.notes.push(
        "ds-sync's time runs from its start (slot creation with an exported snapshot \
         included) to the poll that sees snapshot-end in the DS stream. The ceiling is the \
         slower of two measures taken in the same run: \\copy of the table to /dev/null, \
         and the messages ds-sync wrote (snapshot-start, the rows, snapshot-end), read back \
         and gathered into 1 MiB JSON arrays beforehand, POSTed to a new stream on the same \
         DS server one at a time (ds-sync delivers one stream with one POST in flight); that \
         time runs from the first POST to the last answer. With --runs N each run has a \
         table and streams of its own; the run with the median ratio is reported and \
         checked, and the peak RSS is the worst run's."
            .into(),
    );
}

/// Reads back every message of `stream` and gathers them into JSON arrays of at most
/// [`POST_BYTES`] (a message larger than that goes alone), ready to POST.
pub(super) async fn read_back(ctx: &Ctx<'_>, stream: &str) -> Result<Vec<Bytes>, BenchError> {
    let mut batches = Vec::new();
    let mut batch = BytesMut::with_capacity(POST_BYTES);
    let mut offset = crate::ds::OFFSET_START.to_owned();
    loop {
        let mut read = ctx
            .stack
            .ds
            .read_stream(stream, &offset, usize::MAX, Duration::from_secs(60))
            .await?;
        loop {
            while let Some(item) = read.next_buffered() {
                let crate::sse::ArrayItem::Element { text, .. } = item else {
                    return Err(BenchError::Setup(format!(
                        "reading back {stream:?}: not a JSON array of messages"
                    )));
                };
                if !batch.is_empty() && batch.len() + text.len() + 2 > POST_BYTES {
                    batches.push(close_array(&mut batch));
                }
                batch.put_u8(if batch.is_empty() { b'[' } else { b',' });
                batch.put_slice(&text);
            }
            if read.done() {
                break;
            }
            read.read().await?;
        }
        let advanced = read.next_offset != offset;
        offset = read.next_offset.clone();
        if read.up_to_date || read.closed || !advanced {
            break;
        }
    }
    if !batch.is_empty() {
        batches.push(close_array(&mut batch));
    }
    Ok(batches)
}

/// Ends the JSON array being gathered in `batch` and takes it, leaving `batch` empty.
fn close_array(batch: &mut BytesMut) -> Bytes {
    batch.put_u8(b']');
    batch.split().freeze()
}

/// POSTs `batches` to a new stream one at a time; the time from the first POST to the last
/// answer.
pub(super) async fn post_ceiling(
    ctx: &Ctx<'_>,
    batches: &[Bytes],
    stream: &str,
) -> Result<Duration, BenchError> {
    ctx.stack.ds.ensure_stream(stream).await?;
    let started = Instant::now();
    for body in batches {
        ctx.stack.ds.append(stream, body.clone(), None).await?;
    }
    Ok(started.elapsed())
}
