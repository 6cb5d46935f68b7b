//! `failover`: two `ds-sync run` on one slot, one active and one standby (README,
//! "Standby"), while a writer inserts one-row transactions at `--rate`. The active process
//! is SIGKILLed `--runs` times; each time a new standby is started first, so the processes
//! alternate. Measured per failover, from the SIGKILL: until the standby's walsender holds
//! the slot (streaming), and until the first row inserted after the kill is in the stream.
//! At the end every key must be in the stream once, in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::BenchError;
use super::capture::{Ctx, spawn_run};
use super::report::{Latency, Report};
use super::stack::DsSyncProcess;
use super::tail::TailCounter;
use super::workload::Phase;

/// Target: from SIGKILL of the active process to the standby streaming, worst failover.
const TAKEOVER_TARGET_MS: f64 = 2000.0;
/// Longest a single wait of the scenario may take.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Runs the scenario.
pub(super) async fn run(ctx: &Ctx<'_>, report: &mut Report) -> Result<(), BenchError> {
    let sql = ctx.stack.sql().await?;
    let phase = Phase::create(&sql, "failover").await?;
    let slot = phase.slot(&sql, "dssync").await?;
    let spawn = |n: u32| {
        spawn_run(
            ctx,
            &phase,
            &slot,
            &format!("ds-sync-failover-{n}.log"),
            &["--snapshot", "never"],
        )
    };
    let mut active = spawn(0)?;
    let mut walsender = wait_walsender(&sql, &slot, None, &mut active).await?;
    let stop = CancellationToken::new();
    let last = Arc::new(AtomicI64::new(0));
    let mut writer = tokio::spawn(write_rows(
        ctx.stack.sql().await?,
        phase.table.clone(),
        ctx.opts.rate,
        Arc::clone(&last),
        stop.clone(),
    ));
    let mut streaming = super::latency::histogram()?;
    let mut delivering = super::latency::histogram()?;
    let mut counter = TailCounter::new(&ctx.stack.ds, &phase.stream());
    for n in 1..=ctx.opts.runs {
        let mut standby = spawn(n)?;
        wait_standby(&mut standby).await?;
        if writer.is_finished() {
            return Err(writer_ended(writer.await));
        }
        let inserted = last.load(Ordering::Acquire);
        active.kill().await;
        let killed = Instant::now();
        walsender = wait_walsender(&sql, &slot, walsender, &mut standby).await?;
        record(&mut streaming, killed.elapsed());
        wait_count(&mut counter, inserted as u64 + 1, &mut standby).await?;
        record(&mut delivering, killed.elapsed());
        tracing::info!(failover = n, "the standby took over");
        active = standby;
    }
    stop.cancel();
    let written = match (&mut writer).await {
        Ok(Ok(written)) => written,
        other => return Err(writer_ended(other)),
    };
    wait_count(&mut counter, written as u64, &mut active).await?;
    active.stop().await?;
    let (lost, duplicated, disordered) = audit(ctx, &phase.stream(), written).await?;
    describe(ctx, report, written, [&streaming, &delivering]);
    report.check("keys lost", lost as f64, "keys", Some(0.0), true);
    report.check(
        "keys duplicated",
        duplicated as f64,
        "keys",
        Some(0.0),
        true,
    );
    report.check(
        "keys out of order",
        disordered as f64,
        "keys",
        Some(0.0),
        true,
    );
    Ok(())
}

/// The figures, latencies and the target line.
fn describe(
    ctx: &Ctx<'_>,
    report: &mut Report,
    written: i64,
    [streaming, delivering]: [&hdrhistogram::Histogram<u64>; 2],
) {
    report.figure("failovers", f64::from(ctx.opts.runs), "");
    report.figure("rows written (one per transaction)", written as f64, "rows");
    report.figure("write rate asked", f64::from(ctx.opts.rate), "rows/s");
    let streaming = Latency::from_histogram("SIGKILL to standby streaming", streaming);
    let delivering = Latency::from_histogram("SIGKILL to first new row in the stream", delivering);
    report.check(
        "SIGKILL to standby streaming, worst",
        streaming.max,
        "ms",
        Some(TAKEOVER_TARGET_MS),
        true,
    );
    report.latencies.push(streaming);
    report.latencies.push(delivering);
    report.notes.push(
        "Streaming: the standby's walsender holds the slot. The first new row waits, in \
         addition, for the killed process's last slot lease to run out (at most 3 s after \
         its last renewal: README, \"Fencing\"), so that a process that only looked dead \
         cannot double a message."
            .into(),
    );
}

/// The error of a writer that ended before it was stopped (or failed when stopped).
fn writer_ended(result: Result<Result<i64, BenchError>, tokio::task::JoinError>) -> BenchError {
    match result {
        Ok(Err(e)) => e,
        Ok(Ok(_)) => BenchError::Setup("the writer stopped early".into()),
        Err(e) => BenchError::Setup(format!("the writer task failed: {e}")),
    }
}

fn record(h: &mut hdrhistogram::Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).max(1));
}

/// Inserts one row per transaction at `rate` per second until `stop`; returns the last key.
async fn write_rows(
    sql: tokio_postgres::Client,
    table: String,
    rate: u32,
    last: Arc<AtomicI64>,
    stop: CancellationToken,
) -> Result<i64, BenchError> {
    let insert = format!("INSERT INTO {table} (id, title) VALUES ($1::int8, 'row')");
    let every = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = Instant::now();
    let mut key: i64 = 0;
    while !stop.is_cancelled() {
        key += 1;
        sql.execute(&insert, &[&key])
            .await
            .map_err(|e| BenchError::sql("inserting a row", &e))?;
        last.store(key, Ordering::Release);
        let due = every.mul_f64(key as f64);
        tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
    }
    Ok(key)
}

/// Waits until a ds-sync walsender other than `previous` holds `slot`; returns its pid.
async fn wait_walsender(
    sql: &tokio_postgres::Client,
    slot: &str,
    previous: Option<i32>,
    process: &mut DsSyncProcess,
) -> Result<Option<i32>, BenchError> {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let row = sql
            .query_opt(
                "SELECT s.active_pid FROM pg_replication_slots s \
                 JOIN pg_stat_activity a ON a.pid = s.active_pid \
                 WHERE s.slot_name = $1 AND a.application_name = 'ds-sync'",
                &[&slot],
            )
            .await
            .map_err(|e| BenchError::sql("reading the slot's walsender", &e))?;
        let pid: Option<i32> = row.map(|r| r.get(0));
        if pid.is_some() && pid != previous {
            return Ok(pid);
        }
        process.check_alive()?;
        if Instant::now() > deadline {
            return Err(timeout(
                "a ds-sync walsender on the slot",
                format!("{pid:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the new process says it is a standby.
async fn wait_standby(process: &mut DsSyncProcess) -> Result<(), BenchError> {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !process.log_contains("standby: another ds-sync holds the slot lock") {
        process.check_alive()?;
        if Instant::now() > deadline {
            return Err(timeout(
                "the new process to wait as a standby",
                String::new(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until the stream holds at least `n` messages.
async fn wait_count(
    counter: &mut TailCounter,
    n: u64,
    process: &mut DsSyncProcess,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let count = counter.count().await?;
        if count >= n {
            return Ok(());
        }
        process.check_alive()?;
        if Instant::now() > deadline {
            return Err(timeout(
                &format!("{n} messages in the stream"),
                format!("{count} so far"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn timeout(what: &str, detail: String) -> BenchError {
    BenchError::Timeout {
        what: what.to_owned(),
        secs: WAIT_LIMIT.as_secs(),
        detail,
    }
}

/// Reads the whole stream: keys 1..=`written` lost, duplicated, and out of order (a key
/// not above the one before it).
async fn audit(
    ctx: &Ctx<'_>,
    stream: &str,
    written: i64,
) -> Result<(usize, usize, usize), BenchError> {
    let messages = ctx.stack.ds.read_all(stream).await?;
    let keys: Vec<i64> = messages
        .iter()
        .filter_map(|m| m["key"].as_str().and_then(|k| k.parse().ok()))
        .collect();
    Ok(count_faults(&keys, written))
}

/// Lost, duplicated and out-of-order keys of `keys` against 1..=`written`. Pure.
fn count_faults(keys: &[i64], written: i64) -> (usize, usize, usize) {
    let mut seen = std::collections::HashSet::new();
    let duplicated = keys.iter().filter(|k| !seen.insert(**k)).count();
    let lost = (1..=written).filter(|k| !seen.contains(k)).count();
    let disordered = keys.windows(2).filter(|w| w[1] <= w[0]).count();
    (lost, duplicated, disordered)
}

#[cfg(test)]
mod tests {
    #[test]
    fn faults_are_counted_against_every_key() {
        assert_eq!(super::count_faults(&[1, 2, 3], 3), (0, 0, 0));
        assert_eq!(super::count_faults(&[1, 3, 3], 3), (1, 1, 1));
        assert_eq!(super::count_faults(&[2, 1], 3), (1, 0, 1));
    }
}
