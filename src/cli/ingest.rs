//! The ingest side of the CLI: `run`'s ingest options merged into an [`IngestConfig`], both
//! directions run side by side, and `subscribe` / `unsubscribe` / `subscriptions`.

use std::io::Write;
use std::sync::Arc;

use comfy_table::{Table, presets::ASCII_NO_BORDERS};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::capture::{self, CaptureConfig};
use crate::config::{OutputFormat, Settings};
use crate::ds::{ClientOptions, DsClient};
use crate::ingest::store::{self, SubscriptionInfo};
use crate::ingest::{self, IngestConfig, WriterOptions};
use crate::pg::PgTarget;
use crate::retention::maintain::{self, Maintenance};

use super::CliError;
use super::args::IngestArgs;
use super::options::IngestOptions;
use super::output::Printer;

/// HEAD requests `subscriptions` sends at once.
const HEAD_CONCURRENCY: usize = 16;
/// Bound on one HEAD, so an unreachable DS server does not stall the report for long.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The ingest configuration of `run`, or `None` when ingest should not run: `--no-ingest`,
/// or capture runs and no stream is named or stored.
pub(super) async fn config(
    opts: &IngestOptions,
    args: &IngestArgs,
    settings: &Settings,
    target: &PgTarget,
    shutdown: &CancellationToken,
) -> Result<Option<IngestConfig>, CliError> {
    if args.no_ingest {
        return Ok(None);
    }
    let streams = opts.streams.value.clone();
    if streams.is_empty() && !args.no_capture {
        let Some(client) = connect_at_start(target, shutdown).await? else {
            return Ok(None);
        };
        if !store::has_subscriptions(&client).await? {
            return Ok(None);
        }
    }
    let cfg = IngestConfig::new(
        target.clone(),
        &settings.ds_server_url.value,
        streams,
        opts.max_event_bytes.value,
    )?
    .with_access(settings.ds_access()?)?;
    Ok(Some(with_limits(cfg, opts)?))
}

/// The rows per transaction, the memory bound and the idle timeout, checked.
fn with_limits(mut cfg: IngestConfig, opts: &IngestOptions) -> Result<IngestConfig, CliError> {
    cfg.writer = WriterOptions {
        max_rows: opts.batch_max_rows.value.max(1),
        ..cfg.writer
    };
    cfg.max_buffer_bytes = opts.max_buffer_bytes.value;
    cfg.idle_timeout = opts.idle_timeout.value.0;
    cfg.lease_ttl = opts.lease_ttl.value.0;
    cfg.limits()?;
    Ok(cfg)
}

/// Stream `dev` ingests unless streams are named.
const DEV_STREAM: &str = "sessions";

/// The ingest side of `ds-sync dev`: the demo stream (created so that clients can POST to it
/// at once) or the named streams; prints how to try it.
pub(super) async fn dev_config(
    opts: &IngestOptions,
    args: &IngestArgs,
    target: &PgTarget,
    ds_url: &str,
    access: crate::ds::DsAccess,
) -> Result<Option<IngestConfig>, CliError> {
    if args.no_ingest {
        return Ok(None);
    }
    let streams = if opts.streams.value.is_empty() {
        vec![DEV_STREAM.to_owned()]
    } else {
        opts.streams.value.clone()
    };
    let max = opts.max_event_bytes.value;
    let cfg = IngestConfig::new(target.clone(), ds_url, streams, max)?.with_access(access)?;
    let cfg = with_limits(cfg, opts)?;
    for s in &cfg.streams {
        cfg.ds.ensure_stream(s).await?;
    }
    let url = cfg.ds.stream_url(&cfg.streams[0]);
    eprintln!(
        "Ingest runs too: events POSTed to {streams} land in session_events.\n\
         \x20 curl -X POST '{url}' -H 'Content-Type: application/json' \\\n\
         \x20   -d '[{{\"key\":\"event-1\",\"type\":\"user-action\",\"operation\":\"click\",\"data\":{{\"button\":\"submit\"}}}}]'\n\
         \x20 then: SELECT stream_name, event_key, event_type, operation, ds_offset FROM session_events;\n",
        streams = cfg.streams.join(", ")
    );
    Ok(Some(cfg))
}

/// What `run` keeps up beside the directions: partitions ahead of time (whenever ingest
/// runs) and pruning with `--retention` / `--dead-letter-retention`. `None` when there is
/// nothing to do.
pub(super) fn maintenance(
    opts: &IngestOptions,
    target: &PgTarget,
    ingest_runs: bool,
) -> Option<Maintenance> {
    let events = opts.retention.value.map(|d| d.0);
    let dead_letters = opts.dead_letter_retention.value.map(|d| d.0);
    if !ingest_runs && events.is_none() && dead_letters.is_none() {
        return None;
    }
    Some(Maintenance {
        target: target.clone(),
        events,
        dead_letters,
        every: opts.retention_interval.value.0,
    })
}

/// Runs capture, ingest, or both side by side, with the metrics and health endpoints when
/// `--listen` is set; when one direction fails the other is stopped gracefully and the first
/// error is returned.
pub(super) async fn run_directions(
    capture: Option<CaptureConfig>,
    ingest: Option<IngestConfig>,
    maintenance: Option<Maintenance>,
    settings: &Settings,
    shutdown: &CancellationToken,
    hard_stop: &CancellationToken,
) -> Result<(), CliError> {
    let observer = match &settings.listen {
        Some(listen) => observe(&listen.value, capture.as_ref(), ingest.as_ref(), shutdown).await?,
        None => None,
    };
    let retention = maintenance.map(|m| {
        let stop = shutdown.clone();
        tokio::spawn(async move { maintain::run(&m, &stop).await })
    });
    let result = directions(capture, ingest, settings, shutdown, hard_stop).await;
    if let Some(task) = retention {
        task.abort();
    }
    if let Some(o) = observer {
        o.stop().await;
    }
    result
}

/// Starts the endpoints and pollers for the directions that run.
async fn observe(
    listen: &str,
    capture: Option<&CaptureConfig>,
    ingest: Option<&IngestConfig>,
    shutdown: &CancellationToken,
) -> Result<Option<crate::observe::Observer>, CliError> {
    let Some(ds) = capture
        .map(|c| c.ds.clone())
        .or(ingest.map(|i| i.ds.clone()))
    else {
        return Ok(None);
    };
    let cfg = crate::observe::ObserveConfig {
        listen: listen.to_owned(),
        slot: capture.map(|c| (c.source.target.clone(), c.source.slot.clone())),
        ds,
        ingest_ds: ingest.map(|i| i.ds.clone()),
        capture: capture.is_some(),
    };
    Ok(Some(crate::observe::Observer::start(cfg, shutdown).await?))
}

/// A connection for a start-up check of `run` (stored subscriptions, the loop guard).
/// PostgreSQL that cannot be reached (down, restarting, a connection cut) is waited for the
/// way the running directions wait for it, not taken as a reason to exit: retried with
/// backoff, one line per attempt. `None` when a signal ends the wait (nothing is in flight
/// yet, so `run` stops with code 0).
async fn connect_at_start(
    target: &PgTarget,
    shutdown: &CancellationToken,
) -> Result<Option<tokio_postgres::Client>, CliError> {
    let mut backoff = crate::ds::Backoff::new(crate::ds::DEFAULT_INITIAL, crate::ds::DEFAULT_MAX);
    loop {
        match target.connect().await {
            Ok(client) => return Ok(Some(client)),
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "cannot reach PostgreSQL at start; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn run_capture(
    c: &CaptureConfig,
    shutdown: &CancellationToken,
    hard_stop: &CancellationToken,
) -> Result<(), CliError> {
    let r = capture::run(c, shutdown, hard_stop).await;
    let reason = r.as_ref().err().map(ToString::to_string);
    crate::observe::readiness().capture(crate::observe::readiness::CapturePhase::Stopped, reason);
    Ok(r?)
}

async fn run_ingest(
    i: &IngestConfig,
    shutdown: &CancellationToken,
    hard_stop: &CancellationToken,
) -> Result<(), CliError> {
    let r = ingest::run(i, shutdown, hard_stop).await;
    let reason = r.as_ref().err().map(ToString::to_string);
    crate::observe::readiness().ingest(crate::observe::readiness::IngestPhase::Stopped, reason);
    Ok(r?)
}

async fn directions(
    capture: Option<CaptureConfig>,
    ingest: Option<IngestConfig>,
    settings: &Settings,
    shutdown: &CancellationToken,
    hard_stop: &CancellationToken,
) -> Result<(), CliError> {
    let publication = &settings.publication.value;
    match (capture, ingest) {
        (None, None) => Err(CliError::Invalid(
            "--no-capture together with --no-ingest leaves nothing to run".into(),
        )),
        (Some(c), None) => run_capture(&c, shutdown, hard_stop).await,
        (None, Some(i)) => {
            let Some(client) = connect_at_start(&i.target, shutdown).await? else {
                return Ok(());
            };
            if let Some(how) = ingest::guard::sink_published(&client, publication, &[]).await? {
                tracing::warn!(%publication, %how, "public.session_events is in a capture publication: a capture process using it would echo ingested rows back into streams");
            }
            drop(client);
            run_ingest(&i, shutdown, hard_stop).await
        }
        (Some(c), Some(i)) => {
            let Some(client) = connect_at_start(&i.target, shutdown).await? else {
                return Ok(());
            };
            ingest::guard::refuse_loop(&client, publication, &c.source.tables).await?;
            drop(client);
            let capture = async {
                let r = run_capture(&c, shutdown, hard_stop).await;
                if r.is_err() {
                    shutdown.cancel();
                }
                r
            };
            let ingest = async {
                let r = run_ingest(&i, shutdown, hard_stop).await;
                if r.is_err() {
                    shutdown.cancel();
                }
                r
            };
            let (c, i) = tokio::join!(capture, ingest);
            c?;
            i?;
            Ok(())
        }
    }
}

/// `ds-sync subscribe`.
pub(super) async fn subscribe(
    streams: &[String],
    reset_offset: bool,
    settings: &Settings,
    out: &Printer,
) -> Result<(), CliError> {
    let mut client = super::commands::target(settings)?.connect().await?;
    crate::schema::apply(&mut client).await?;
    let done = store::subscribe(&mut client, streams, reset_offset).await?;
    for s in &done {
        let verb = if s.created {
            "subscribed"
        } else {
            "subscribed again (restarting)"
        };
        let reset = if s.offset_reset {
            "; stored offset removed"
        } else {
            ""
        };
        out.message(&format!("{verb} {}{reset}", s.stream), &s.stream)?;
    }
    Ok(())
}

/// `ds-sync unsubscribe`.
pub(super) async fn unsubscribe(
    streams: &[String],
    settings: &Settings,
    out: &Printer,
) -> Result<(), CliError> {
    let mut client = super::commands::target(settings)?.connect().await?;
    crate::schema::apply(&mut client).await?;
    for (stream, was) in store::unsubscribe(&mut client, streams).await? {
        let text = if was {
            format!("unsubscribed {stream} (its offset stays stored)")
        } else {
            format!("{stream} was not subscribed")
        };
        out.message(&text, &stream)?;
    }
    Ok(())
}

/// One line of `ds-sync subscriptions`.
#[derive(Debug, Serialize)]
struct Line {
    #[serde(flatten)]
    info: SubscriptionInfo,
    /// The stream's tail offset (HEAD), `None` when it does not exist or HEAD failed.
    tail: Option<String>,
    /// Whether the committed offset has reached the tail; `None` when unknown.
    caught_up: Option<bool>,
    /// Why the tail is unknown.
    tail_error: Option<String>,
}

/// `ds-sync subscriptions`.
pub(super) async fn subscriptions(settings: &Settings, out: &Printer) -> Result<(), CliError> {
    let mut client = super::commands::target(settings)?.connect().await?;
    crate::schema::apply(&mut client).await?;
    let infos = store::list(&client).await?;
    let ds = DsClient::new(
        &settings.ds_server_url.value,
        ClientOptions {
            request_timeout: HEAD_TIMEOUT,
            access: settings.ds_access()?,
            ..ClientOptions::default()
        },
    )?;
    let lines = with_tails(&ds, infos).await;
    if settings.output.value == OutputFormat::Json {
        let text =
            serde_json::to_string_pretty(&lines).map_err(|e| CliError::Output(e.to_string()))?;
        return emit(&text);
    }
    if lines.is_empty() {
        return out.message("no subscriptions", "");
    }
    emit(&table(&lines).to_string())
}

async fn with_tails(ds: &DsClient, infos: Vec<SubscriptionInfo>) -> Vec<Line> {
    let limit = Arc::new(Semaphore::new(HEAD_CONCURRENCY));
    let mut tasks = Vec::with_capacity(infos.len());
    for info in infos {
        let ds = ds.clone();
        let limit = Arc::clone(&limit);
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            let (tail, tail_error) = match ds.head(&info.stream).await {
                Ok(Some(t)) => (Some(t), None),
                Ok(None) => (None, Some("the stream does not exist".to_owned())),
                Err(e) => (None, Some(e.to_string())),
            };
            let caught_up = tail
                .as_deref()
                .map(|t| info.offset.as_deref().is_some_and(|o| o >= t));
            Line {
                info,
                tail,
                caught_up,
                tail_error,
            }
        }));
    }
    let mut lines = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(line) = t.await {
            lines.push(line);
        }
    }
    lines
}

fn table(lines: &[Line]) -> Table {
    let mut table = Table::new();
    table.load_style(ASCII_NO_BORDERS).set_header(vec![
        "stream",
        "status",
        "offset",
        "tail",
        "lag",
        "last event",
        "dead letters",
        "buffered (peak)",
        "owner",
        "lease until",
        "error",
    ]);
    let dash = || "-".to_owned();
    for l in lines {
        let lag = match (l.caught_up, &l.tail_error) {
            (Some(true), _) => "caught up".to_owned(),
            (Some(false), _) => "behind".to_owned(),
            (None, Some(e)) => format!("unknown: {e}"),
            (None, None) => dash(),
        };
        table.add_row(vec![
            l.info.stream.clone(),
            l.info.status.clone(),
            l.info.offset.clone().unwrap_or_else(dash),
            l.tail.clone().unwrap_or_else(dash),
            lag,
            l.info.last_event_at.clone().unwrap_or_else(dash),
            l.info.dead_letters.to_string(),
            format!(
                "{} ({})",
                bytes(l.info.buffered_bytes),
                bytes(l.info.peak_buffered_bytes)
            ),
            owner(&l.info),
            l.info.lease_until.clone().unwrap_or_else(dash),
            l.info.error.clone().unwrap_or_else(dash),
        ]);
    }
    table
}

/// The owning instance for people: `host/pid (id)`, marked when it is not live.
fn owner(info: &SubscriptionInfo) -> String {
    let Some(id) = &info.owner else {
        return "-".to_owned();
    };
    let host = info.owner_host.as_deref().unwrap_or("?");
    let pid = info
        .owner_pid
        .map_or_else(|| "?".to_owned(), |p| p.to_string());
    let gone = if info.owner_live { "" } else { ", not live" };
    format!("{host}/{pid} ({id}{gone})")
}

/// A byte count for people: B, KiB or MiB.
fn bytes(n: i64) -> String {
    const KIB: i64 = 1024;
    match n {
        n if n >= KIB * KIB => format!("{:.1} MiB", n as f64 / (KIB * KIB) as f64),
        n if n >= KIB => format!("{:.1} KiB", n as f64 / KIB as f64),
        n => format!("{n} B"),
    }
}

fn emit(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").map_err(|e| CliError::Output(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(owner: Option<&str>, live: bool) -> SubscriptionInfo {
        SubscriptionInfo {
            stream: "s".into(),
            status: "streaming".into(),
            error: None,
            offset: None,
            up_to_date: true,
            last_event_at: None,
            state_at: None,
            dead_letters: 0,
            buffered_bytes: 0,
            peak_buffered_bytes: 0,
            owner: owner.map(str::to_owned),
            owner_host: owner.map(|_| "web-1".to_owned()),
            owner_pid: owner.map(|_| 42),
            lease_until: None,
            owner_live: live,
        }
    }

    #[test]
    fn the_owner_reads_as_host_pid_and_id_marked_when_not_live() {
        assert_eq!(owner(&info(None, false)), "-");
        assert_eq!(owner(&info(Some("ab12"), true)), "web-1/42 (ab12)");
        assert_eq!(
            owner(&info(Some("ab12"), false)),
            "web-1/42 (ab12, not live)"
        );
    }
}
