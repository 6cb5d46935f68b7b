//! `ds-sync bench`: a tiny run of real scenarios (own throwaway Postgres, in-process DS
//! server, ds-sync as a child), checking the report says what was measured. Speed itself is
//! measured by the benchmarks, never asserted here.

use serde_json::Value;

use crate::kit::run_ds_sync;

fn figure(result: &Value, name: &str) -> f64 {
    result["figures"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == name))
        .and_then(|f| f["value"].as_f64())
        .unwrap_or_else(|| panic!("no figure {name:?} in {result:#}"))
}

fn only_report_dir(out: &std::path::Path) -> std::path::PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(out)
        .expect("results dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(dirs.len(), 1, "one report directory: {dirs:?}");
    dirs[0].clone()
}

/// The `result.json` of the one report written under `out`.
fn only_result(out: &std::path::Path) -> Value {
    let report = only_report_dir(out);
    serde_json::from_slice(&std::fs::read(report.join("result.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn capture_drain_smoke_run_writes_a_complete_report() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let run = run_ds_sync(
        &[
            "bench",
            "capture-drain",
            "--rows",
            "300",
            "--txns",
            "40",
            "--out",
            dir,
        ],
        &[],
    )
    .await
    .ok();
    assert!(
        run.stdout.contains("ds-sync / pg_recvlogical throughput"),
        "{}",
        run.stdout
    );
    let report = only_report_dir(out.path());
    for file in ["result.json", "report.md", "throughput.svg"] {
        assert!(
            report.join(file).is_file(),
            "{file} missing in {}",
            report.display()
        );
    }
    let result: Value =
        serde_json::from_slice(&std::fs::read(report.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["scenario"], "capture-drain");
    for what in ["300 rows in one transaction", "40 one-row transactions"] {
        assert!(figure(&result, &format!("{what}: ds-sync")) > 0.0);
        assert!(figure(&result, &format!("{what}: pg_recvlogical")) > 0.0);
        assert!(figure(&result, &format!("{what}: ds-sync peak RSS")) > 1.0);
    }
    for what in [
        "pg_recvlogical v1 time",
        "pg_recvlogical v2 streaming time",
        "ds-sync v2 time",
    ] {
        assert!(figure(&result, &format!("v2: 300 rows in one transaction: {what}")) > 0.0);
    }
    for version in ["v1", "v2"] {
        let name =
            format!("live: 300 rows in one transaction: commit to delivered, ds-sync {version}");
        assert!(figure(&result, &name) > 0.0);
    }
    // The large transaction's first phase also has pg_recvlogical with version 2, and
    // ds-sync's time to its first message.
    for what in [
        "pg_recvlogical v2 streaming time",
        "ds-sync start to first message in the stream",
    ] {
        assert!(figure(&result, &format!("300 rows in one transaction: {what}")) > 0.0);
    }
    let checks = result["checks"].as_array().unwrap();
    // Each phase's ratio, the large transaction's (version 1 and version 2) against
    // pg_recvlogical v2 streaming too.
    assert_eq!(checks.len(), 5, "{checks:#?}");
    assert!(checks.iter().all(|c| c["value"].as_f64().unwrap() > 0.0));
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("![throughput.svg](throughput.svg)"), "{md}");
    assert!(
        md.contains("* command: `ds-sync bench capture-drain"),
        "{md}"
    );
}

#[tokio::test]
async fn capture_latency_smoke_run_measures_every_row() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let run = run_ds_sync(
        &[
            "bench",
            "capture-latency",
            "--rate",
            "50",
            "--duration",
            "2",
            "--writers",
            "2",
            "--peak-rate",
            "100",
            "--out",
            dir,
        ],
        &[],
    )
    .await
    .ok();
    assert!(run.stdout.contains("commit to SSE p99"), "{}", run.stdout);
    let report = only_report_dir(out.path());
    let result: Value =
        serde_json::from_slice(&std::fs::read(report.join("result.json")).unwrap()).unwrap();
    let latency = &result["latencies"][0];
    assert_eq!(latency["count"], 100, "{latency:#}");
    let (p50, max) = (
        latency["p50"].as_f64().unwrap(),
        latency["max"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && max >= p50, "{latency:#}");
    assert!(report.join("latency.svg").is_file());
    // Every row's way split into the child's stages, the DS server's floor beside it, and
    // the second phase at --peak-rate.
    let named = |name: &str| {
        result["latencies"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["name"] == name))
            .unwrap_or_else(|| panic!("no latency {name:?} in {result:#}"))
            .clone()
    };
    for stage in [
        "commit to received by ds-sync",
        "received to POST started",
        "POST started to acknowledged",
        "acknowledged to SSE",
        "commit to acknowledged (ds-sync's share)",
        "POST to SSE (DS server floor)",
    ] {
        assert_eq!(named(stage)["count"], 100, "{stage}");
    }
    assert_eq!(named("commit to SSE at 100 txn/s")["count"], 200);
    assert_eq!(named("acknowledged to SSE at 100 txn/s")["count"], 200);
    let share = check_value(&result, "p99 commit to acknowledged (ds-sync's share)");
    let e2e = check_value(&result, "p99 commit to SSE");
    // The reader may see a row a moment before ds-sync reads the POST's answer, so the share
    // can pass the end to end by that moment; a wrong clock or join would be far off.
    assert!(
        share > 0.0 && share <= e2e + 5.0,
        "share {share}, end to end {e2e}"
    );
}

fn check_value(result: &Value, name: &str) -> f64 {
    result["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .and_then(|c| c["value"].as_f64())
        .unwrap_or_else(|| panic!("no check {name:?} in {result:#}"))
}

#[tokio::test]
async fn ingest_drain_and_outage_smoke_runs_report_peak_rss() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("drain");
    let run = run_ds_sync(
        &[
            "bench",
            "ingest-drain",
            "--rows",
            "3000",
            "--out",
            dir.to_str().unwrap(),
        ],
        &[],
    )
    .await
    .ok();
    assert!(run.stdout.contains("ds-sync peak RSS"), "{}", run.stdout);
    let result = only_result(&dir);
    assert!(check_value(&result, "ds-sync peak RSS (VmHWM)") > 1.0);
    assert!(figure(&result, "ds-sync ingest") > 0.0);

    let dir = out.path().join("outage");
    let run = run_ds_sync(
        &[
            "bench",
            "ingest-outage",
            "--rows",
            "3000",
            "--duration",
            "2",
            "--out",
            dir.to_str().unwrap(),
        ],
        &[],
    )
    .await
    .ok();
    assert!(
        run.stdout.contains("catch-up after PostgreSQL is back"),
        "{}",
        run.stdout
    );
    let result = only_result(&dir);
    assert_eq!(figure(&result, "events during the outage"), 3000.0);
    assert!(figure(&result, "outage") >= 2.0);
    assert!(check_value(&result, "ds-sync peak RSS (VmHWM)") > 1.0);
}

#[tokio::test]
async fn ingest_drain_measures_every_table_form_in_one_run() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("forms");
    let run = run_ds_sync(
        &[
            "bench",
            "ingest-drain",
            "--rows",
            "1500",
            "--table-forms",
            "plain,partitioned,unindexed",
            "--out",
            dir.to_str().unwrap(),
        ],
        &[],
    )
    .await
    .ok();
    let result = only_result(&dir);
    for form in ["plain", "partitioned", "unindexed"] {
        assert!(
            figure(&result, &format!("ds-sync ingest ({form})")) > 0.0,
            "{}",
            run.stdout
        );
        assert!(
            figure(
                &result,
                &format!("psql \\copy FROM (FORMAT binary) ({form})")
            ) > 0.0
        );
    }
    assert_eq!(figure(&result, "events"), 1500.0);
}

#[tokio::test]
async fn memory_with_several_runs_checks_the_worst_peak() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    run_ds_sync(
        &[
            "bench", "memory", "--rows", "500", "--runs", "2", "--out", dir,
        ],
        &[],
    )
    .await
    .ok();
    let result = only_result(out.path());
    let peaks = [1, 2].map(|run| figure(&result, &format!("ds-sync peak RSS (run {run})")));
    assert!(peaks.iter().all(|p| *p > 1.0), "{peaks:?}");
    assert!(figure(&result, "drain (run 2)") > 0.0);
    let worst = check_value(&result, "ds-sync peak RSS (VmHWM), worst of 2 runs");
    assert_eq!(worst, peaks[0].max(peaks[1]), "{result:#}");
}

#[tokio::test]
async fn ingest_drain_with_several_runs_checks_the_median_ratio() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let run = run_ds_sync(
        &[
            "bench",
            "ingest-drain",
            "--rows",
            "1500",
            "--runs",
            "3",
            "--out",
            dir,
        ],
        &[],
    )
    .await
    .ok();
    let result = only_result(out.path());
    let ratios = [
        "run 1, ds-sync first",
        "run 2, ceiling first",
        "run 3, ds-sync first",
    ]
    .map(|run| figure(&result, &format!("ds-sync / psql ratio ({run})")));
    assert!(
        ratios.iter().all(|r| *r > 0.0),
        "{ratios:?}\n{}",
        run.stdout
    );
    let mut sorted = ratios;
    sorted.sort_by(f64::total_cmp);
    let median = check_value(
        &result,
        "ds-sync ingest / psql binary COPY throughput, median of 3 runs",
    );
    assert_eq!(median, sorted[1], "{result:#}");
    assert_eq!(
        figure(&result, "ds-sync / psql ratio, lowest of 3"),
        sorted[0]
    );
    assert_eq!(
        figure(&result, "ds-sync / psql ratio, highest of 3"),
        sorted[2]
    );
    assert!(check_value(&result, "ds-sync peak RSS (VmHWM), worst of 3 runs") > 1.0);
}

#[tokio::test]
async fn snapshot_is_held_to_the_slower_of_copy_and_post() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let run = run_ds_sync(&["bench", "snapshot", "--rows", "3000", "--out", dir], &[])
        .await
        .ok();
    let result = only_result(out.path());
    let copy = figure(&result, "psql \\copy to /dev/null");
    let post = figure(&result, "POST of the same messages (1 MiB, one in flight)");
    let ds_sync = figure(&result, "ds-sync snapshot into DS");
    assert!(copy > 0.0 && post > 0.0 && ds_sync > 0.0, "{}", run.stdout);
    let ratio = check_value(
        &result,
        "ds-sync snapshot / ceiling (the slower of \\copy and POST) throughput",
    );
    let expected = ds_sync / copy.min(post);
    assert!(
        (ratio - expected).abs() <= expected * 1e-6,
        "ratio {ratio}, expected {expected}: {result:#}"
    );
}

/// With `--runs 3`: every run's ratio is listed, and the median one is reported and checked,
/// with that run's rates.
#[tokio::test]
async fn snapshot_runs_check_the_median_run() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    run_ds_sync(
        &[
            "bench", "snapshot", "--rows", "2000", "--runs", "3", "--out", dir,
        ],
        &[],
    )
    .await
    .ok();
    let result = only_result(out.path());
    let mut ratios: Vec<f64> = (1..=3)
        .map(|n| figure(&result, &format!("run {n}: ds-sync / ceiling throughput")))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let checked = check_value(
        &result,
        "ds-sync snapshot / ceiling (the slower of \\copy and POST) throughput (median run)",
    );
    assert!(
        (checked - ratios[1]).abs() <= ratios[1] * 1e-9,
        "checked {checked}, runs {ratios:?}: {result:#}"
    );
    let copy = figure(&result, "psql \\copy to /dev/null (median run)");
    let post = figure(
        &result,
        "POST of the same messages (1 MiB, one in flight) (median run)",
    );
    let ds_sync = figure(&result, "ds-sync snapshot into DS (median run)");
    let expected = ds_sync / copy.min(post);
    assert!(
        (checked - expected).abs() <= expected * 1e-6,
        "ratio {checked}, from the median run's rates {expected}: {result:#}"
    );
}

#[tokio::test]
async fn failover_smoke_run_counts_every_key_once() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let run = run_ds_sync(
        &[
            "bench", "failover", "--runs", "2", "--rate", "100", "--out", dir,
        ],
        &[],
    )
    .await
    .ok();
    let result = only_result(out.path());
    assert_eq!(result["scenario"], "failover", "{}", run.stdout);
    assert_eq!(figure(&result, "failovers"), 2.0);
    assert!(figure(&result, "rows written (one per transaction)") > 0.0);
    let checks = result["checks"].as_array().unwrap();
    for name in ["keys lost", "keys duplicated", "keys out of order"] {
        let check = checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name:?}: {checks:#?}"));
        assert_eq!(check["value"].as_f64(), Some(0.0), "{name}: {result:#}");
    }
    let latencies = result["latencies"].as_array().unwrap();
    assert_eq!(latencies.len(), 2, "{latencies:#?}");
    assert!(latencies.iter().all(|l| l["count"] == 2), "{latencies:#?}");
}

#[tokio::test]
async fn chaos_smoke_run_loses_and_doubles_nothing_through_every_kind_of_fault() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let run = run_ds_sync(
        &[
            "bench",
            "chaos",
            "--duration",
            "25",
            "--kills",
            "3",
            "--seed",
            "5",
            "--out",
            dir,
        ],
        &[],
    )
    .await
    .ok();
    let result = only_result(out.path());
    assert_eq!(result["scenario"], "chaos", "{}", run.stdout);
    for (name, at_least) in [
        ("SIGKILLs of ds-sync", 3.0),
        ("PostgreSQL restarts (-m immediate)", 1.0),
        ("DS server restarts", 1.0),
    ] {
        assert!(check_value(&result, name) >= at_least, "{name}: {result:#}");
    }
    for name in [
        "connection cuts, PostgreSQL",
        "connection cuts, DS server",
        "connection freezes, PostgreSQL",
        "connection freezes, DS server",
    ] {
        assert!(figure(&result, name) >= 1.0, "{name}: {result:#}");
    }
    assert!(figure(&result, "row changes committed (capture)") > 0.0);
    assert!(figure(&result, "events in the ingested streams (checked)") > 0.0);
    for name in [
        "capture: changes lost",
        "capture: changes duplicated",
        "capture: changes out of order (per row)",
        "capture: messages not committed or in the wrong stream",
        "capture: commit LSN going back within a stream",
        "ingest: events lost",
        "ingest: events duplicated",
        "ingest: events out of stream order",
        "ingest: rows of no event in the stream",
    ] {
        assert_eq!(check_value(&result, name), 0.0, "{name}: {result:#}");
    }
    let report = only_report_dir(out.path());
    let faults = std::fs::read_to_string(report.join("faults.txt")).unwrap();
    assert!(faults.starts_with("seed 5\n"), "{faults}");
}

#[tokio::test]
async fn ingest_share_smoke_run_stores_every_event_once() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let args = [
        "bench",
        "ingest-share",
        "--streams",
        "12",
        "--instances",
        "3",
        "--duration",
        "1",
        "--out",
        dir,
    ];
    let run = run_ds_sync(&args, &[]).await.ok();
    let result = only_result(out.path());
    assert_eq!(result["scenario"], "ingest-share", "{}", run.stdout);
    assert_eq!(figure(&result, "streams"), 12.0);
    for n in 0..3 {
        let owned = figure(&result, &format!("instance {n}: subscriptions owned"));
        assert_eq!(owned, 4.0, "a third of the streams each: {result:#}");
        let held = figure(&result, &format!("instance {n}: DS connections"));
        assert!(
            held >= owned,
            "an SSE connection per stream owned: {result:#}"
        );
    }
    assert_eq!(figure(&result, "streams of the killed instance"), 4.0);
    assert!(figure(&result, "events posted under load") > 0.0);
    let checks = result["checks"].as_array().unwrap();
    for name in ["events lost", "events stored twice"] {
        let check = checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name:?}: {checks:#?}"));
        assert_eq!(check["value"].as_f64(), Some(0.0), "{name}: {result:#}");
    }
}
