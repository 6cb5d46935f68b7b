//! `snapshot`: existing rows read inside the slot's exported snapshot and delivered to DS,
//! next to `psql \copy (SELECT ...) TO '/dev/null'` of the same table: the speed at which
//! Postgres can hand the rows out at all.

use super::BenchError;
use super::capture::{Ctx, spawn_run};
use super::report::Report;
use super::workload::{self, Phase};

/// Target: the snapshot delivers at least this fraction of the `psql \copy` rate.
const SNAPSHOT_TARGET: f64 = 0.8;

/// `snapshot`: `rows` existing rows, one table.
pub(super) async fn run(ctx: &Ctx<'_>, report: &mut Report) -> Result<(), BenchError> {
    let rows = ctx.opts.rows;
    let sql = ctx.stack.sql().await?;
    let phase = Phase::create(&sql, "bench_snap").await?;
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
    let mut process = spawn_run(
        ctx,
        &phase,
        &slot,
        "ds-sync-snapshot.log",
        &["--snapshot", "initial"],
    )?;
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
    let (c, d) = (copy.as_secs_f64(), drain.elapsed.as_secs_f64());
    report.figure("rows", rows as f64, "rows");
    report.figure("psql \\copy to /dev/null", rows as f64 / c, "rows/s");
    report.figure("ds-sync snapshot into DS", rows as f64 / d, "rows/s");
    report.figure("psql \\copy time", c, "s");
    report.figure("ds-sync snapshot time", d, "s");
    if let Some(cpu) = drain.cpu_secs {
        report.figure("ds-sync CPU", cpu, "s");
    }
    if let Some(kb) = drain.peak_rss_kb {
        report.figure("ds-sync peak RSS", kb as f64 / 1024.0, "MB");
    }
    report.check(
        "ds-sync snapshot / psql \\copy throughput",
        c / d,
        "x",
        Some(SNAPSHOT_TARGET),
        false,
    );
    report.series.push(drain.series);
    report.notes.push(
        "ds-sync's time runs from its start (slot creation with an exported snapshot \
         included) to the poll that sees snapshot-end in the DS stream."
            .into(),
    );
    Ok(())
}
