//! The effective options of `run` and `dev`, and what `config show` prints of them: every
//! option merged once, by [`crate::config::merge_or`] (flag, or its environment variable,
//! over the config file's key over the default), keeping where its value came from.
//!
//! One line per option in [`CaptureOptions::resolve`] / [`IngestOptions::resolve`] names its
//! clap id (the flag `--batch-max-messages` is id `batch_max_messages`; its env var is on
//! the field in `args`), its file key (`[capture] batch_max_messages`; ingest options drop
//! their `ingest_` prefix in the `[ingest]` section) and its default, a constant next to the
//! configuration type that owns it.

use std::time::Duration;

use serde::Serialize;

use crate::capture::CaptureConfig;
use crate::capture::batch::Limits;
use crate::capture::route::Router;
use crate::capture::slot_lost::OnSlotLost;
use crate::capture::snapshot::{SnapshotMode, SnapshotOptions};
use crate::capture::source::{PgoutputProtocol, SourceConfig};
use crate::config::{
    ArgSources, CaptureFile, CliValue, IngestFile, Source, Sourced, merge_or, parse_duration,
};
use crate::ds::ClientOptions;
use crate::ingest::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_LEASE_TTL, DEFAULT_MAX_BUFFER_BYTES, DEFAULT_MAX_EVENT_BYTES,
    WriterOptions,
};
use crate::publication::{IdentityPolicy, ToastMode};
use crate::retention::maintain::Maintenance;

use super::CliError;
use super::args::{CaptureArgs, IngestArgs};
use super::stop::DEFAULT_SHUTDOWN_TIMEOUT;

/// Every option of `run` and `dev` with its value and source, as the file's sections name
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunOptions {
    pub capture: CaptureOptions,
    pub ingest: IngestOptions,
}

impl RunOptions {
    /// Merges `args` (sources in `cli`) with the file's `[capture]` and `[ingest]`.
    pub fn resolve(
        args: &CaptureArgs,
        cli: &ArgSources,
        capture: &CaptureFile,
        ingest: &IngestFile,
    ) -> Result<RunOptions, CliError> {
        Ok(RunOptions {
            capture: CaptureOptions::resolve(args, cli, capture),
            ingest: IngestOptions::resolve(&args.ingest, cli, ingest)?,
        })
    }
}

/// The capture options (`[capture]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaptureOptions {
    pub tables: Sourced<Vec<String>>,
    pub insert_only: Sourced<Vec<String>>,
    pub toast: Sourced<ToastMode>,
    pub keep_replica_identity: Sourced<bool>,
    pub stream_template: Sourced<String>,
    /// `TABLE=TEMPLATE`: the file's routes, then the flags' (a flag's table replaces the
    /// file's route for it); the source is the highest layer that gave one.
    pub routes: Sourced<Vec<String>>,
    pub takeover: Sourced<bool>,
    pub failover_slot: Sourced<bool>,
    pub standby_takeover_after_ms: Sourced<u64>,
    pub batch_max_messages: Sourced<usize>,
    pub batch_max_bytes: Sourced<usize>,
    pub linger_ms: Sourced<u64>,
    pub max_buffer_bytes: Sourced<usize>,
    pub max_in_flight: Sourced<usize>,
    pub request_timeout_ms: Sourced<u64>,
    pub snapshot: Sourced<SnapshotMode>,
    pub snapshot_workers: Sourced<usize>,
    pub snapshot_chunk_rows: Sourced<usize>,
    pub on_slot_lost: Sourced<OnSlotLost>,
    pub pgoutput_protocol: Sourced<PgoutputProtocol>,
    pub metrics_stream_labels: Sourced<bool>,
    pub shutdown_timeout_ms: Sourced<u64>,
}

impl CaptureOptions {
    fn resolve(a: &CaptureArgs, cli: &ArgSources, f: &CaptureFile) -> CaptureOptions {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        CaptureOptions {
            tables: merge_or(
                cli.value("tables", a.tables.clone()),
                f.tables.clone(),
                vec![],
            ),
            insert_only: merge_or(
                cli.value("insert_only", a.insert_only.clone()),
                f.insert_only.clone(),
                vec![],
            ),
            toast: merge_or(
                cli.value("toast", a.toast),
                f.toast,
                IdentityPolicy::DEFAULT_TOAST,
            ),
            keep_replica_identity: merge_or(
                cli.value("keep_replica_identity", Some(a.keep_replica_identity)),
                f.keep_replica_identity,
                IdentityPolicy::DEFAULT_KEEP_REPLICA_IDENTITY,
            ),
            stream_template: merge_or(
                cli.value("stream_template", a.stream_template.clone()),
                f.stream_template.clone(),
                Router::DEFAULT_TEMPLATE.to_owned(),
            ),
            routes: routes(cli.value("routes", Some(a.routes.clone())), f),
            takeover: merge_or(
                cli.value("takeover", Some(a.takeover)),
                f.takeover,
                SourceConfig::DEFAULT_TAKEOVER,
            ),
            failover_slot: merge_or(
                cli.value("failover_slot", Some(a.failover_slot)),
                f.failover_slot,
                SourceConfig::DEFAULT_FAILOVER,
            ),
            standby_takeover_after_ms: merge_or(
                cli.value("standby_takeover_after_ms", a.standby_takeover_after_ms),
                f.standby_takeover_after_ms,
                millis(CaptureConfig::DEFAULT_STANDBY_TAKEOVER_AFTER),
            ),
            batch_max_messages: merge_or(
                cli.value("batch_max_messages", a.batch_max_messages),
                f.batch_max_messages,
                Limits::DEFAULT_MAX_MESSAGES,
            ),
            batch_max_bytes: merge_or(
                cli.value("batch_max_bytes", a.batch_max_bytes),
                f.batch_max_bytes,
                Limits::DEFAULT_MAX_BYTES,
            ),
            linger_ms: merge_or(
                cli.value("linger_ms", a.linger_ms),
                f.linger_ms,
                millis(Limits::DEFAULT_LINGER),
            ),
            max_buffer_bytes: merge_or(
                cli.value("max_buffer_bytes", a.max_buffer_bytes),
                f.max_buffer_bytes,
                CaptureConfig::DEFAULT_MAX_BUFFER_BYTES,
            ),
            max_in_flight: merge_or(
                cli.value("max_in_flight", a.max_in_flight),
                f.max_in_flight,
                CaptureConfig::DEFAULT_MAX_IN_FLIGHT,
            ),
            request_timeout_ms: merge_or(
                cli.value("request_timeout_ms", a.request_timeout_ms),
                f.request_timeout_ms,
                millis(ClientOptions::DEFAULT_REQUEST_TIMEOUT),
            ),
            snapshot: merge_or(
                cli.value("snapshot", a.snapshot),
                f.snapshot,
                SnapshotOptions::DEFAULT_MODE,
            ),
            snapshot_workers: merge_or(
                cli.value("snapshot_workers", a.snapshot_workers),
                f.snapshot_workers,
                SnapshotOptions::DEFAULT_WORKERS,
            ),
            snapshot_chunk_rows: merge_or(
                cli.value("snapshot_chunk_rows", a.snapshot_chunk_rows),
                f.snapshot_chunk_rows,
                SnapshotOptions::DEFAULT_CHUNK_ROWS,
            ),
            on_slot_lost: merge_or(
                cli.value("on_slot_lost", a.on_slot_lost),
                f.on_slot_lost,
                CaptureConfig::DEFAULT_ON_SLOT_LOST,
            ),
            pgoutput_protocol: merge_or(
                cli.value("pgoutput_protocol", a.pgoutput_protocol),
                f.pgoutput_protocol,
                SourceConfig::DEFAULT_PROTOCOL,
            ),
            metrics_stream_labels: merge_or(
                cli.value("metrics_stream_labels", Some(a.metrics_stream_labels)),
                f.metrics_stream_labels,
                CaptureConfig::DEFAULT_METRICS_STREAM_LABELS,
            ),
            shutdown_timeout_ms: merge_or(
                cli.value("shutdown_timeout_ms", a.shutdown_timeout_ms),
                f.shutdown_timeout_ms,
                millis(DEFAULT_SHUTDOWN_TIMEOUT),
            ),
        }
    }

    /// `--shutdown-timeout-ms` as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms.value)
    }
}

/// The file's `[capture.routes]` as `TABLE=TEMPLATE`, then the `--route` flags; a flag's
/// table replaces the file's route for it.
fn routes(flags: CliValue<Vec<String>>, f: &CaptureFile) -> Sourced<Vec<String>> {
    let file: Option<Vec<String>> = f
        .routes
        .as_ref()
        .map(|r| r.iter().map(|(t, tpl)| format!("{t}={tpl}")).collect());
    let flags = CliValue {
        value: flags.value.filter(|v| !v.is_empty()),
        source: flags.source,
    };
    let source = highest(&flags, file.is_some());
    let mut value = file.unwrap_or_default();
    for raw in flags.value.unwrap_or_default() {
        let table = raw.split_once('=').map_or(raw.as_str(), |(t, _)| t.trim());
        value.retain(|r| r.split_once('=').map(|(t, _)| t.trim()) != Some(table));
        value.push(raw);
    }
    Sourced { value, source }
}

/// A duration as `config show` prints it (`1m`, `10m`, `30days`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown(pub Duration);

impl Serialize for Shown {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// The ingest options (`[ingest]`, whose keys drop the flags' `ingest_` prefix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngestOptions {
    /// Streams of the file's key and of the flags together (both are added to the stored
    /// subscriptions); the source is the highest layer that named one.
    pub streams: Sourced<Vec<String>>,
    pub max_event_bytes: Sourced<usize>,
    pub batch_max_rows: Sourced<usize>,
    pub max_buffer_bytes: Sourced<usize>,
    pub idle_timeout: Sourced<Shown>,
    pub lease_ttl: Sourced<Shown>,
    /// `None`: keep everything.
    pub retention: Sourced<Option<Shown>>,
    /// `None`: keep every dead letter.
    pub dead_letter_retention: Sourced<Option<Shown>>,
    pub retention_interval: Sourced<Shown>,
}

impl IngestOptions {
    fn resolve(a: &IngestArgs, cli: &ArgSources, f: &IngestFile) -> Result<Self, CliError> {
        let duration = |id: &str, flag: Option<Duration>, key: &str, file: &Option<String>| {
            let file = file
                .as_deref()
                .map(|t| parse_duration(t).map_err(|e| invalid_key(key, &e)))
                .transpose()?;
            Ok::<_, CliError>(merge_or(
                cli.value(id, flag.map(|d| Some(Shown(d)))),
                file.map(|d| Some(Shown(d))),
                None,
            ))
        };
        let required = |d: Sourced<Option<Shown>>, default: Duration| Sourced {
            value: d.value.unwrap_or(Shown(default)),
            source: d.source,
        };
        Ok(IngestOptions {
            streams: streams(cli.value("streams", Some(a.streams.clone())), f),
            max_event_bytes: merge_or(
                cli.value("ingest_max_event_bytes", a.ingest_max_event_bytes),
                f.max_event_bytes,
                DEFAULT_MAX_EVENT_BYTES,
            ),
            batch_max_rows: merge_or(
                cli.value("ingest_batch_max_rows", a.ingest_batch_max_rows),
                f.batch_max_rows,
                WriterOptions::DEFAULT_MAX_ROWS,
            ),
            max_buffer_bytes: merge_or(
                cli.value("ingest_max_buffer_bytes", a.ingest_max_buffer_bytes),
                f.max_buffer_bytes,
                DEFAULT_MAX_BUFFER_BYTES,
            ),
            idle_timeout: required(
                duration(
                    "ingest_idle_timeout",
                    a.ingest_idle_timeout,
                    "idle_timeout",
                    &f.idle_timeout,
                )?,
                DEFAULT_IDLE_TIMEOUT,
            ),
            lease_ttl: required(
                duration(
                    "ingest_lease_ttl",
                    a.ingest_lease_ttl,
                    "lease_ttl",
                    &f.lease_ttl,
                )?,
                DEFAULT_LEASE_TTL,
            ),
            retention: duration("retention", a.retention, "retention", &f.retention)?,
            dead_letter_retention: duration(
                "dead_letter_retention",
                a.dead_letter_retention,
                "dead_letter_retention",
                &f.dead_letter_retention,
            )?,
            retention_interval: required(
                duration(
                    "retention_interval",
                    a.retention_interval,
                    "retention_interval",
                    &f.retention_interval,
                )?,
                Maintenance::DEFAULT_EVERY,
            ),
        })
    }
}

fn invalid_key(key: &str, e: &str) -> CliError {
    CliError::Invalid(format!("[ingest] {key}: {e}"))
}

/// The file's streams, then those of the flags that it lacks.
fn streams(flags: CliValue<Vec<String>>, f: &IngestFile) -> Sourced<Vec<String>> {
    let flags = CliValue {
        value: flags.value.filter(|v| !v.is_empty()),
        source: flags.source,
    };
    let source = highest(&flags, f.streams.is_some());
    let mut value = f.streams.clone().unwrap_or_default();
    for s in flags.value.unwrap_or_default() {
        if !value.contains(&s) {
            value.push(s);
        }
    }
    Sourced { value, source }
}

/// The source of an option whose layers add up (routes, streams): the highest that gave a
/// value.
fn highest<T>(flags: &CliValue<T>, in_file: bool) -> Source {
    match (&flags.value, in_file) {
        (Some(_), _) => flags.source.unwrap_or(Source::Flag),
        (None, true) => Source::File,
        (None, false) => Source::Default,
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, CommandFactory, FromArgMatches};
    use serde_json::Value;

    use super::super::args::{Cli, Command};
    use super::*;
    use crate::config::FileConfig;

    /// `run`'s switches that choose the directions: neither env nor file, nothing to merge.
    const DIRECTIONS: [&str; 2] = ["no_capture", "no_ingest"];

    /// A value other than the default for each option: on the command line, and in TOML.
    fn sample(id: &str) -> Option<(&'static str, &'static str)> {
        Some(match id {
            "tables" => ("a,b", r#"["a", "b"]"#),
            "insert_only" => ("c", r#"["c"]"#),
            "toast" => ("partial", r#""partial""#),
            "stream_template" => ("s/{table}", r#""s/{table}""#),
            "routes" => ("items=r/{id}", ""),
            "batch_max_messages" => ("7", "7"),
            "batch_max_bytes" => ("7000", "7000"),
            "linger_ms" => ("5", "5"),
            "max_buffer_bytes" => ("9000", "9000"),
            "max_in_flight" => ("3", "3"),
            "request_timeout_ms" => ("1234", "1234"),
            "snapshot" => ("never", r#""never""#),
            "snapshot_workers" => ("2", "2"),
            "snapshot_chunk_rows" => ("50", "50"),
            "on_slot_lost" => ("recreate", r#""recreate""#),
            "pgoutput_protocol" => ("2", "2"),
            "shutdown_timeout_ms" => ("2500", "2500"),
            "standby_takeover_after_ms" => ("4000", "4000"),
            "keep_replica_identity" | "takeover" | "failover_slot" | "metrics_stream_labels" => {
                ("", "true")
            }
            "streams" => ("s1", r#"["s1"]"#),
            "ingest_max_event_bytes" => ("1024", "1024"),
            "ingest_batch_max_rows" => ("77", "77"),
            "ingest_max_buffer_bytes" => ("65536", "65536"),
            "ingest_idle_timeout" => ("90s", r#""90s""#),
            "ingest_lease_ttl" => ("5s", r#""5s""#),
            "retention" => ("30d", r#""30d""#),
            "dead_letter_retention" => ("90d", r#""90d""#),
            "retention_interval" => ("5m", r#""5m""#),
            _ => return None,
        })
    }

    /// Every option of `run` that is merged: (clap id, flag, section, file key).
    fn options() -> Vec<(String, String, &'static str, String)> {
        let ingest: Vec<String> = IngestArgs::augment_args(clap::Command::new("ingest"))
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").expect("run");
        let mut found = Vec::new();
        for arg in run.get_arguments() {
            let id = arg.get_id().to_string();
            if arg.is_global_set() || id == "help" || DIRECTIONS.contains(&id.as_str()) {
                continue;
            }
            let flag = format!("--{}", arg.get_long().expect("a long flag"));
            let (section, key) = if ingest.contains(&id) {
                (
                    "ingest",
                    id.strip_prefix("ingest_").unwrap_or(&id).to_owned(),
                )
            } else {
                ("capture", id.clone())
            };
            found.push((id, flag, section, key));
        }
        found
    }

    fn resolve(argv: &[String], toml: &str) -> Value {
        let matches = Cli::command()
            .try_get_matches_from(argv)
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let sources = super::super::arg_sources(&matches);
        let Command::Run { capture } = Cli::from_arg_matches(&matches).unwrap().command else {
            panic!("not run");
        };
        let file: FileConfig = toml::from_str(toml).unwrap_or_else(|e| panic!("{toml}: {e}"));
        let opts = RunOptions::resolve(&capture, &sources, &file.capture, &file.ingest)
            .unwrap_or_else(|e| panic!("{e}"));
        serde_json::to_value(opts).unwrap()
    }

    fn flags(options: &[(String, String, &str, String)]) -> Vec<String> {
        let mut argv = vec!["ds-sync".to_owned(), "run".to_owned()];
        for (id, flag, _, _) in options {
            let (value, _) = sample(id).unwrap();
            argv.push(flag.clone());
            if !value.is_empty() {
                argv.push(value.to_owned());
            }
        }
        argv
    }

    fn file(options: &[(String, String, &str, String)]) -> String {
        let mut sections = [("capture", String::new()), ("ingest", String::new())];
        for (id, _, section, key) in options {
            let (_, toml) = sample(id).unwrap();
            let text = &mut sections.iter_mut().find(|(s, _)| s == section).unwrap().1;
            if !toml.is_empty() {
                text.push_str(&format!("{key} = {toml}\n"));
            }
        }
        let [(_, capture), (_, ingest)] = sections;
        format!("[capture]\n{capture}[ingest]\n{ingest}[capture.routes]\nitems = \"r/{{id}}\"\n")
    }

    /// Catches an option merged by hand: each one of `run`'s options, set only as a flag,
    /// only in the file, or both, shows up in the effective options with that source, and
    /// the file's value reads as the flag's.
    #[test]
    fn every_option_of_run_is_merged_once_with_its_source() {
        let options = options();
        let missing: Vec<&str> = options
            .iter()
            .filter(|(id, ..)| sample(id).is_none())
            .map(|(id, ..)| id.as_str())
            .collect();
        assert!(
            missing.is_empty(),
            "options without a sample here (and perhaps without a line in cli::options): {missing:?}"
        );
        let run = ["ds-sync".to_owned(), "run".to_owned()];
        let defaults = resolve(&run, "");
        let by_flag = resolve(&flags(&options), "");
        let by_file = resolve(&run, &file(&options));
        let by_both = resolve(&flags(&options), &file(&options));
        for (id, _, section, key) in &options {
            let at = |v: &Value| v[*section][key.as_str()].clone();
            let shown = at(&by_flag);
            assert!(
                shown.is_object(),
                "--{id} is not among the effective options as {section}.{key}"
            );
            assert_eq!(at(&defaults)["source"], "default", "{id}");
            assert_eq!(shown["source"], "flag", "{id}");
            assert_ne!(
                shown["value"],
                at(&defaults)["value"],
                "{id}: sample is the default"
            );
            assert_eq!(at(&by_file)["source"], "file", "{id}");
            assert_eq!(
                at(&by_file)["value"],
                shown["value"],
                "{id}: file reads as the flag"
            );
            assert_eq!(at(&by_both)["source"], "flag", "{id}: flag over file");
        }
        let shown: usize = ["capture", "ingest"]
            .iter()
            .map(|s| by_flag[*s].as_object().map_or(0, serde_json::Map::len))
            .sum();
        assert_eq!(shown, options.len(), "an effective option without a flag");
    }

    /// The README's option tables name each of `run`'s options with the env var `--help`
    /// gives it and its file key.
    #[test]
    fn the_readme_tables_name_each_option_with_its_env_var_and_file_key() {
        const README: &str = include_str!("../../README.md");
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").expect("run");
        for (id, flag, section, key) in options() {
            let row = README
                .lines()
                .find(|l| {
                    l.strip_prefix(&format!("| `{flag}"))
                        .is_some_and(|rest| rest.starts_with([' ', '`']))
                })
                .unwrap_or_else(|| panic!("README has no table row for {flag}"));
            let arg = run.get_arguments().find(|a| a.get_id() == id.as_str());
            if let Some(env) = arg.and_then(clap::Arg::get_env) {
                let env = format!("`{}`", env.to_string_lossy());
                assert!(
                    row.contains(&env),
                    "README's row for {flag} lacks {env}: {row}"
                );
            }
            assert!(
                row.contains(&format!("`{key}")) || row.contains(&format!("[{section}.{key}]")),
                "README's row for {flag} lacks its [{section}] key {key}: {row}"
            );
        }
    }
}
