//! The `ds-sync` command: argument parsing, configuration, logging, dispatch and exit codes.
//!
//! Layer errors are typed; this is the edge where they become a message, an optional hint
//! and a documented exit code (see `ds-sync --help`).

pub mod args;
#[cfg(feature = "bench")]
mod bench;
mod commands;
mod ingest;
mod options;
mod output;
mod run;
mod stop;

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::config::{
    ArgSources, CliValue, CliValues, ConfigError, FileConfig, LogFormat, Settings, Source,
};
use crate::publication::PublicationError;
use crate::slot::SlotError;
use args::{Cli, GlobalArgs};

/// Documented exit codes.
pub mod exit {
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const PREREQUISITES: u8 = 3;
    pub const SLOT_NOT_FOUND: u8 = 4;
    pub const SLOT_LOST: u8 = 5;
    /// `run` / `dev` stopped by a second signal or the shutdown timeout before the work in
    /// flight was finished (nothing is lost).
    pub const ABANDONED: u8 = 6;
    /// `run`: another ds-sync took the slot over (a standby, or `--takeover`); this one stopped sending.
    pub const FENCED: u8 = 7;
}

/// What to do when `ds-sync bench` is asked of a binary built without the runner.
const BENCH_NOT_BUILT_HINT: &str = "The load-test runner is the cargo feature `bench`, left out of the sidecar binary: run it from a checkout of ds-sync with `cargo run --release --features bench -- bench SCENARIO ...` (README, \"Benchmarks\").";

/// Everything a command can fail with, at the edge.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error(transparent)]
    Publication(#[from] PublicationError),
    #[error(
        "{failed} prerequisite check(s) failed; the schema was applied, but capture will not work until they are fixed"
    )]
    Prerequisites { failed: usize },
    #[error("replication slot '{0}' is lost: the server removed WAL it still needed")]
    SlotLost(String),
    #[error("cannot write output: {0}")]
    Output(String),
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    #[error(transparent)]
    Embedded(#[from] crate::embedded::EmbeddedError),
    #[error(transparent)]
    Ds(#[from] crate::ds::DsError),
    #[cfg(feature = "bench")]
    #[error(transparent)]
    Bench(#[from] crate::bench::BenchError),
    #[error("this ds-sync was built without the load-test runner (`ds-sync bench`)")]
    BenchNotBuilt,
    #[error(transparent)]
    Ingest(#[from] crate::ingest::IngestError),
    #[error(transparent)]
    Observe(#[from] crate::observe::ObserveError),
    #[error(transparent)]
    Health(#[from] crate::observe::health::HealthError),
    #[error(transparent)]
    Retention(#[from] crate::retention::RetentionError),
    #[error("{0}")]
    Invalid(String),
    #[error("stopped after {0} without finishing the work in flight")]
    Abandoned(String),
}

impl CliError {
    /// The documented exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Slot(SlotError::NotFound(_)) => exit::SLOT_NOT_FOUND,
            CliError::SlotLost(_) => exit::SLOT_LOST,
            CliError::Capture(crate::capture::CaptureError::SlotLost(_)) => exit::SLOT_LOST,
            CliError::Prerequisites { .. } => exit::PREREQUISITES,
            CliError::Abandoned(_) => exit::ABANDONED,
            CliError::Capture(crate::capture::CaptureError::Fenced { .. }) => exit::FENCED,
            _ => exit::ERROR,
        }
    }

    /// A sentence saying what to do next.
    pub fn hint(&self) -> Option<String> {
        match self {
            CliError::Config(e) => e.hint(),
            CliError::Pg(e) => e.hint(),
            CliError::Slot(e) => e.hint(),
            CliError::Publication(e) => e.hint(),
            CliError::Capture(e) => e.hint(),
            CliError::Embedded(e) => e.hint(),
            CliError::Ds(e) => e.hint(),
            CliError::Ingest(e) => e.hint(),
            CliError::Observe(e) => e.hint(),
            CliError::Health(e) => e.hint(),
            CliError::Retention(e) => e.hint(),
            CliError::Abandoned(_) => Some(
                "Nothing is lost: the next start resumes capture from the slot's confirmed position and ingest from the stored offsets. A server was down or stalled; raise --shutdown-timeout-ms to give it longer.".into(),
            ),
            CliError::BenchNotBuilt => Some(BENCH_NOT_BUILT_HINT.into()),
            CliError::SlotLost(name) => Some(format!(
                "A lost slot cannot be resumed: drop it (`ds-sync slot drop {name}`), create it again and re-snapshot the tables."
            )),
            _ => None,
        }
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let env = |k: &str| std::env::var(k).ok();
    let settings = match settings(&cli.global, &matches, &env) {
        Ok(s) => s,
        Err(e) => return report(&e.into()),
    };
    init_logging(settings.log_format.value);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    let result = runtime.block_on(commands::run(cli.command, &settings));
    // Tasks still blocked (a connection attempt, a blocking call) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

fn report(e: &CliError) -> ExitCode {
    eprintln!("error: {e}");
    if let Some(hint) = e.hint() {
        eprintln!("hint: {hint}");
    }
    ExitCode::from(e.exit_code())
}

/// Resolves settings from the parsed command line, the environment and the config file.
fn settings(
    global: &GlobalArgs,
    matches: &ArgMatches,
    env: crate::config::EnvLookup<'_>,
) -> Result<Settings, ConfigError> {
    let file = match &global.config {
        Some(path) => crate::config::load_file(path)?,
        None => FileConfig::default(),
    };
    let cli = CliValues {
        postgres_url: cli_value(matches, "postgres_url", global.postgres_url.clone()),
        ds_server_url: cli_value(matches, "ds_server_url", global.ds_server_url.clone()),
        ds_token: cli_value(matches, "ds_token", global.ds_token.clone()),
        ds_token_file: cli_value(matches, "ds_token_file", global.ds_token_file.clone()),
        ds_headers: cli_value(
            matches,
            "ds_headers",
            Some(global.ds_headers.clone()).filter(|h| !h.is_empty()),
        ),
        ds_ca_file: cli_value(matches, "ds_ca_file", global.ds_ca_file.clone()),
        ds_client_cert: cli_value(matches, "ds_client_cert", global.ds_client_cert.clone()),
        ds_client_key: cli_value(matches, "ds_client_key", global.ds_client_key.clone()),
        slot: cli_value(matches, "slot", global.slot.clone()),
        publication: cli_value(matches, "publication", global.publication.clone()),
        log_format: cli_value(matches, "log_format", global.log_format),
        output: cli_value(matches, "output", global.output),
        listen: cli_value(matches, "listen", global.listen.clone()),
    };
    let mut settings = Settings::resolve(cli, file, env);
    settings.arg_sources = arg_sources(matches);
    Ok(settings)
}

/// Where the command's own options (those of the deepest subcommand) got their values:
/// given as a flag, or taken from the environment by clap. Absent options are left out.
pub(crate) fn arg_sources(matches: &ArgMatches) -> ArgSources {
    let mut m = matches;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    let mut sources = ArgSources::default();
    for id in m.ids() {
        match m.value_source(id.as_str()) {
            Some(ValueSource::CommandLine) => sources.insert(id.as_str(), Source::Flag),
            Some(ValueSource::EnvVariable) => sources.insert(id.as_str(), Source::Env),
            _ => {}
        }
    }
    sources
}

/// Global options may be given after the subcommand; clap records their source on the
/// deepest matches, so look there first.
fn cli_value<T>(matches: &ArgMatches, id: &str, value: Option<T>) -> CliValue<T> {
    let mut m = matches;
    let mut source = m.value_source(id);
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
        if let Some(s) = m.value_source(id) {
            source = Some(s);
        }
    }
    let source = match source {
        Some(ValueSource::CommandLine) => Some(Source::Flag),
        Some(ValueSource::EnvVariable) => Some(Source::Env),
        _ => None,
    };
    CliValue { value, source }
}

/// Logs go to stderr (stdout carries command output), filtered by `RUST_LOG`. The in-process
/// DS server (`dev`, `bench`) logs every 404 as a warning; readers polling for a stream that
/// does not exist yet make those routine, so only its errors are shown by default.
///
/// Text lines are coloured only when stderr is a terminal and `NO_COLOR` is unset or empty,
/// so files, pipes and `docker logs` get plain text. JSON is one object per line with the
/// event's fields at the top level (see [`JSON_LOG_FIELDS`]).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("ds_sync=info,durable_streams_server=error,warn"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs(std::io::stderr().is_terminal(), no_color));
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("warning: logging not initialised: {e}");
    }
}

/// The keys of a JSON log line, documented in the README for log shippers.
pub const JSON_LOG_FIELDS: [&str; 4] = ["timestamp", "level", "target", "message"];

/// Colour (ANSI escapes) only for a person at a terminal who did not ask for none.
fn colour_logs(stderr_is_terminal: bool, no_color: bool) -> bool {
    stderr_is_terminal && !no_color
}

#[cfg(test)]
mod tests {
    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(super::colour_logs(true, false));
        assert!(!super::colour_logs(false, false));
        assert!(!super::colour_logs(true, true));
    }

    #[test]
    fn bench_without_the_runner_says_how_to_build_it() {
        let e = super::CliError::BenchNotBuilt;
        assert_eq!(e.exit_code(), super::exit::ERROR);
        assert!(e.to_string().contains("ds-sync bench"), "{e}");
        let hint = e.hint().expect("a hint");
        assert!(
            hint.contains("cargo run --release --features bench -- bench"),
            "{hint}"
        );
    }
}
