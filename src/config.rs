//! Effective settings: command-line flags, environment variables, a TOML file, defaults.
//!
//! Precedence is flag > environment > file > default. clap already merges a flag with its
//! environment variable; [`merge`] adds the file and the default, for every option, and
//! keeps where each value came from so `ds-sync config show` can tell. The shared options
//! are merged here ([`Settings`]); those of `run` in `cli::options`, with the same merge. `POSTGRES_URL` and `DS_SERVER_URL` are
//! the names the sync-layer document uses; `DATABASE_URL` is accepted after `POSTGRES_URL`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pg::PgTarget;

/// Default DS server (the DS default port on this machine).
pub const DEFAULT_DS_SERVER_URL: &str = "http://127.0.0.1:4437";
/// Default replication slot name.
pub const DEFAULT_SLOT: &str = "ds_sync";
/// Default publication name.
pub const DEFAULT_PUBLICATION: &str = "ds_sync";
/// Default log line format.
pub const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
/// Default format of command output.
pub const DEFAULT_OUTPUT: OutputFormat = OutputFormat::Table;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Command output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Table,
    Json,
}

/// Keys accepted in the `--config` TOML file. Unknown keys are an error, so a typo never
/// silently falls back to a default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub postgres_url: Option<String>,
    pub ds_server_url: Option<String>,
    pub ds_token: Option<String>,
    pub ds_token_file: Option<PathBuf>,
    pub ds_headers: Option<Vec<String>>,
    pub ds_ca_file: Option<PathBuf>,
    pub ds_client_cert: Option<PathBuf>,
    pub ds_client_key: Option<PathBuf>,
    pub slot: Option<String>,
    pub publication: Option<String>,
    pub log_format: Option<LogFormat>,
    pub output: Option<OutputFormat>,
    /// Address of the metrics and health endpoints (`run`, `dev`) and of `health`.
    pub listen: Option<String>,
    /// `[capture]`: defaults for `ds-sync run` / `ds-sync dev`.
    #[serde(default)]
    pub capture: CaptureFile,
    /// `[ingest]`: defaults for the ingest side of `ds-sync run`.
    #[serde(default)]
    pub ingest: IngestFile,
}

/// The `[ingest]` section of the config file; each key mirrors a `run` option.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestFile {
    /// Streams to ingest (added to the stored subscriptions).
    pub streams: Option<Vec<String>>,
    pub max_event_bytes: Option<usize>,
    pub batch_max_rows: Option<usize>,
    pub max_buffer_bytes: Option<usize>,
    /// A duration such as `"60s"`, `"2m"` or `"500ms"` (see [`parse_duration`]).
    pub idle_timeout: Option<String>,
    /// `run --ingest-lease-ttl`, e.g. `"15s"`.
    pub lease_ttl: Option<String>,
    /// `run --retention`: a duration such as `"30d"` (see [`parse_duration`]).
    pub retention: Option<String>,
    /// `run --dead-letter-retention`, e.g. `"90d"`.
    pub dead_letter_retention: Option<String>,
    /// `run --retention-interval`, e.g. `"10m"`.
    pub retention_interval: Option<String>,
}

/// Reads a duration, as humantime does (`60s`, `2m`, `500ms`, `30d`, `2w`, `90min`,
/// `7days 12h`), or a bare whole number of seconds; it must be above zero. One grammar for
/// every duration option, so a value that works for one works for all.
///
/// # Errors
///
/// A message that quotes the input and says what is accepted.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let parsed = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse()
            .map(std::time::Duration::from_secs)
            .map_err(|e| e.to_string())
    } else {
        humantime::parse_duration(t).map_err(|e| e.to_string())
    };
    match parsed {
        Ok(d) if d.is_zero() => Err(format!("{text:?}: the duration must be above zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "{text:?} is not a duration ({e}): give a number and a unit, e.g. 60s, 500ms, 2m, 12h, 30d, 2w or '7days 12h'"
        )),
    }
}

/// The `[capture]` section of the config file; each key mirrors a `run` option.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureFile {
    pub tables: Option<Vec<String>>,
    pub insert_only: Option<Vec<String>>,
    pub toast: Option<crate::publication::ToastMode>,
    pub keep_replica_identity: Option<bool>,
    pub stream_template: Option<String>,
    /// Table → stream template.
    pub routes: Option<std::collections::BTreeMap<String, String>>,
    pub takeover: Option<bool>,
    pub failover_slot: Option<bool>,
    pub standby_takeover_after_ms: Option<u64>,
    pub batch_max_messages: Option<usize>,
    pub batch_max_bytes: Option<usize>,
    pub linger_ms: Option<u64>,
    pub max_buffer_bytes: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub snapshot: Option<crate::capture::snapshot::SnapshotMode>,
    pub snapshot_workers: Option<usize>,
    pub snapshot_chunk_rows: Option<usize>,
    pub on_slot_lost: Option<crate::capture::slot_lost::OnSlotLost>,
    pub pgoutput_protocol: Option<crate::capture::source::PgoutputProtocol>,
    pub metrics_stream_labels: Option<bool>,
    pub shutdown_timeout_ms: Option<u64>,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
    Unset,
}

/// A value that is never shown: `Debug` and `Serialize` (hence `config show`) print
/// `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// `--ds-header` lines; shown as `Name: <redacted>`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct HeaderLines(pub Vec<String>);

impl HeaderLines {
    fn shown(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|h| match h.split_once(':') {
                Some((name, _)) => format!("{}: <redacted>", name.trim()),
                None => "<redacted>".to_owned(),
            })
            .collect()
    }
}

impl fmt::Debug for HeaderLines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.shown()).finish()
    }
}

impl Serialize for HeaderLines {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.shown().serialize(s)
    }
}

/// One resolved value with its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

/// What clap produced for one option: the value and whether it came from the flag or env.
#[derive(Debug, Clone)]
pub struct CliValue<T> {
    pub value: Option<T>,
    pub source: Option<Source>,
}

impl<T> Default for CliValue<T> {
    fn default() -> Self {
        CliValue {
            value: None,
            source: None,
        }
    }
}

/// The command line's view of the shared options (flag or env already merged by clap).
#[derive(Debug, Clone, Default)]
pub struct CliValues {
    pub postgres_url: CliValue<String>,
    pub ds_server_url: CliValue<String>,
    pub ds_token: CliValue<String>,
    pub ds_token_file: CliValue<PathBuf>,
    pub ds_headers: CliValue<Vec<String>>,
    pub ds_ca_file: CliValue<PathBuf>,
    pub ds_client_cert: CliValue<PathBuf>,
    pub ds_client_key: CliValue<PathBuf>,
    pub slot: CliValue<String>,
    pub publication: CliValue<String>,
    pub log_format: CliValue<LogFormat>,
    pub output: CliValue<OutputFormat>,
    pub listen: CliValue<String>,
}

/// Errors of configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("invalid config file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("no Postgres URL given")]
    MissingPostgresUrl,
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error("DS server settings: {0}")]
    Ds(String),
}

impl ConfigError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            ConfigError::MissingPostgresUrl => Some(
                "Pass --postgres-url, or set POSTGRES_URL (or DATABASE_URL), or postgres_url in the --config file.".into(),
            ),
            ConfigError::Parse { .. } => Some(
                "Accepted keys: postgres_url, ds_server_url, ds_token, ds_token_file, ds_headers, ds_ca_file, ds_client_cert, ds_client_key, slot, publication, log_format, output, listen, a [capture] and an [ingest] section (see the README).".into(),
            ),
            ConfigError::Pg(e) => e.hint(),
            _ => None,
        }
    }
}

/// The settings every command starts from.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// Kept private: only [`Settings::postgres`] turns it into a target, and only the
    /// redacted form is ever shown.
    #[serde(skip)]
    postgres_url: Option<Sourced<String>>,
    pub ds_server_url: Sourced<String>,
    /// Sent as `Authorization: Bearer ...`; shown redacted.
    pub ds_token: Option<Sourced<Secret>>,
    /// A file holding the token (read when the token itself is not given).
    pub ds_token_file: Option<Sourced<PathBuf>>,
    /// Extra request headers; values shown redacted.
    pub ds_headers: Sourced<HeaderLines>,
    pub ds_ca_file: Option<Sourced<PathBuf>>,
    pub ds_client_cert: Option<Sourced<PathBuf>>,
    pub ds_client_key: Option<Sourced<PathBuf>>,
    pub slot: Sourced<String>,
    pub publication: Sourced<String>,
    pub log_format: Sourced<LogFormat>,
    pub output: Sourced<OutputFormat>,
    /// `--listen`: where `run` and `dev` serve metrics and health (off when unset).
    pub listen: Option<Sourced<String>>,
    /// The file's `[capture]` section, merged with `run`'s flags by that command.
    #[serde(skip)]
    pub capture_file: CaptureFile,
    /// The file's `[ingest]` section.
    #[serde(skip)]
    pub ingest_file: IngestFile,
    /// Where the command's own options got their values on the command line (its flags and
    /// their env vars), for merging them with the file's sections (see `cli::options`).
    #[serde(skip)]
    pub arg_sources: ArgSources,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("postgres_url", &"<redacted>")
            .field("ds_server_url", &self.ds_server_url)
            .field("ds_token", &self.ds_token)
            .field("ds_headers", &self.ds_headers)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .finish()
    }
}

/// Looks up environment variables; a parameter so tests need not touch the process env.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Settings {
    /// Merges the command line, the environment (`DATABASE_URL`, `PGPASSWORD`), the file and
    /// the defaults.
    pub fn resolve(cli: CliValues, file: FileConfig, env: EnvLookup<'_>) -> Settings {
        let postgres_url = match merge(cli.postgres_url, None) {
            Some(v) => Some(v),
            None => match env("DATABASE_URL").filter(|s| !s.is_empty()) {
                Some(url) => Some(Sourced {
                    value: url,
                    source: Source::Env,
                }),
                None => file.postgres_url.map(|value| Sourced {
                    value,
                    source: Source::File,
                }),
            },
        };
        Settings {
            postgres_url,
            ds_server_url: merge_or(
                cli.ds_server_url,
                file.ds_server_url,
                DEFAULT_DS_SERVER_URL.into(),
            ),
            ds_token: merge(
                CliValue {
                    value: cli.ds_token.value.map(Secret),
                    source: cli.ds_token.source,
                },
                file.ds_token.map(Secret),
            ),
            ds_token_file: merge(cli.ds_token_file, file.ds_token_file),
            ds_headers: merge_or(
                CliValue {
                    value: cli
                        .ds_headers
                        .value
                        .filter(|h| !h.is_empty())
                        .map(HeaderLines),
                    source: cli.ds_headers.source,
                },
                file.ds_headers.map(HeaderLines),
                HeaderLines::default(),
            ),
            ds_ca_file: merge(cli.ds_ca_file, file.ds_ca_file),
            ds_client_cert: merge(cli.ds_client_cert, file.ds_client_cert),
            ds_client_key: merge(cli.ds_client_key, file.ds_client_key),
            slot: merge_or(cli.slot, file.slot, DEFAULT_SLOT.into()),
            publication: merge_or(
                cli.publication,
                file.publication,
                DEFAULT_PUBLICATION.into(),
            ),
            log_format: merge_or(cli.log_format, file.log_format, DEFAULT_LOG_FORMAT),
            output: merge_or(cli.output, file.output, DEFAULT_OUTPUT),
            listen: merge(cli.listen, file.listen),
            capture_file: file.capture,
            ingest_file: file.ingest,
            arg_sources: ArgSources::default(),
        }
    }

    /// The Postgres target, with libpq's environment under the URL: `PGPASSWORD` for a
    /// password it lacks, `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`.
    pub fn postgres(&self, env: EnvLookup<'_>) -> Result<PgTarget, ConfigError> {
        let url = self
            .postgres_url
            .as_ref()
            .ok_or(ConfigError::MissingPostgresUrl)?;
        Ok(PgTarget::parse_env(&url.value, env)?)
    }

    /// How to reach the DS server beyond its URL: TLS files and request headers (the token
    /// from `ds_token`, else read from `ds_token_file`).
    pub fn ds_access(&self) -> Result<crate::ds::DsAccess, ConfigError> {
        let token = match (&self.ds_token, &self.ds_token_file) {
            (Some(t), _) => Some(t.value.expose().to_owned()),
            (None, Some(file)) => Some(read_token_file(&file.value)?),
            (None, None) => None,
        };
        let path = |p: &Option<Sourced<PathBuf>>| p.as_ref().map(|p| p.value.clone());
        let tls = crate::ds::DsTls {
            ca_file: path(&self.ds_ca_file),
            client_cert: path(&self.ds_client_cert),
            client_key: path(&self.ds_client_key),
        };
        crate::ds::DsAccess::new(tls, token.as_deref(), &self.ds_headers.value.0)
            .map_err(ConfigError::Ds)
    }

    /// Where the Postgres URL came from (`Unset` when none was given).
    pub fn postgres_url_source(&self) -> Source {
        self.postgres_url
            .as_ref()
            .map_or(Source::Unset, |u| u.source)
    }
}

/// The token in a file (a mounted secret), without the trailing newline.
fn read_token_file(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::Ds(format!(
            "cannot read the DS token file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::Ds(format!(
            "the DS token file {} is empty",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

/// The one merge every option goes through: the flag (or its environment variable, which
/// clap has already put in its place, `cli.source` saying which) over the file's key;
/// `None` when neither gives a value.
pub fn merge<T>(cli: CliValue<T>, file: Option<T>) -> Option<Sourced<T>> {
    match (cli.value, file) {
        (Some(value), _) => Some(Sourced {
            value,
            source: cli.source.unwrap_or(Source::Flag),
        }),
        (None, Some(value)) => Some(Sourced {
            value,
            source: Source::File,
        }),
        (None, None) => None,
    }
}

/// [`merge`] over the default: flag > env > file > default.
pub fn merge_or<T>(cli: CliValue<T>, file: Option<T>, default: T) -> Sourced<T> {
    merge(cli, file).unwrap_or(Sourced {
        value: default,
        source: Source::Default,
    })
}

/// Where each option of the command being run got a value on the command line, by clap
/// id: its flag or its environment variable. An option that is absent has no entry, so a
/// switch left off (`false`) falls through to the file and the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgSources(std::collections::BTreeMap<String, Source>);

impl ArgSources {
    /// Records that option `id` got its value from `source` (the flag or its env var).
    pub fn insert(&mut self, id: &str, source: Source) {
        self.0.insert(id.to_owned(), source);
    }

    /// Option `id`'s value as the command line gave it, for [`merge`]: `None` unless the
    /// flag or its environment variable set it.
    pub fn value<T>(&self, id: &str, value: Option<T>) -> CliValue<T> {
        match self.0.get(id) {
            Some(&source) => CliValue {
                value,
                source: Some(source),
            },
            None => CliValue::default(),
        }
    }
}

/// Reads and parses the `--config` file.
pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse_file_text(&text, path)
}

/// Parses the text of a `--config` file; `path` only names it in errors. Pure, so the
/// fuzzer and tests can feed it text.
pub fn parse_file_text(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        reason: e.message().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_ages_read_as_humantime_and_bad_ones_say_what_is_accepted() {
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(parse_duration("30d"), Ok(day * 30));
        assert_eq!(parse_duration(" 2w "), Ok(day * 14));
        assert_eq!(
            parse_duration("7days 12h"),
            Ok(day * 7 + std::time::Duration::from_secs(12 * 3600))
        );
        let err = parse_duration("3x").unwrap_err();
        assert!(
            err.contains("\"3x\" is not a duration") && err.contains("30d"),
            "{err}"
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("0s").unwrap_err().contains("above zero"));
    }

    fn flag<T>(v: T) -> CliValue<T> {
        CliValue {
            value: Some(v),
            source: Some(Source::Flag),
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn merge_takes_the_flag_or_env_then_the_file_then_the_default() {
        let env = |v| CliValue {
            value: Some(v),
            source: Some(Source::Env),
        };
        let shown = |s: Sourced<i32>| (s.value, s.source);
        assert_eq!(shown(merge_or(flag(1), Some(2), 3)), (1, Source::Flag));
        assert_eq!(shown(merge_or(env(1), Some(2), 3)), (1, Source::Env));
        assert_eq!(
            shown(merge_or(CliValue::default(), Some(2), 3)),
            (2, Source::File)
        );
        assert_eq!(
            shown(merge_or(CliValue::default(), None, 3)),
            (3, Source::Default)
        );
    }

    #[test]
    fn a_switch_left_off_falls_through_to_the_file() {
        let mut sources = ArgSources::default();
        let off = sources.value("takeover", Some(false));
        assert!(merge_or(off, Some(true), false).value);
        sources.insert("takeover", Source::Env);
        let env_off = sources.value("takeover", Some(false));
        let merged = merge_or(env_off, Some(true), false);
        assert_eq!((merged.value, merged.source), (false, Source::Env));
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let file = FileConfig {
            slot: Some("from_file".into()),
            publication: Some("pub_file".into()),
            ..FileConfig::default()
        };
        let cli = CliValues {
            slot: flag("from_flag".into()),
            ..CliValues::default()
        };
        let s = Settings::resolve(cli, file, &no_env);
        assert_eq!(s.slot.value, "from_flag");
        assert_eq!(s.slot.source, Source::Flag);
        assert_eq!(s.publication.value, "pub_file");
        assert_eq!(s.publication.source, Source::File);
        assert_eq!(s.ds_server_url.value, DEFAULT_DS_SERVER_URL);
        assert_eq!(s.ds_server_url.source, Source::Default);
    }

    #[test]
    fn postgres_url_falls_back_to_database_url_then_file() {
        let env = |k: &str| (k == "DATABASE_URL").then(|| "postgres://u@envhost/db".to_string());
        let file = FileConfig {
            postgres_url: Some("postgres://u@filehost/db".into()),
            ..FileConfig::default()
        };
        let s = Settings::resolve(CliValues::default(), file.clone(), &env);
        assert_eq!(s.postgres(&env).unwrap().host(), "envhost");
        assert_eq!(s.postgres_url_source(), Source::Env);
        let s = Settings::resolve(CliValues::default(), file, &no_env);
        assert_eq!(s.postgres(&no_env).unwrap().host(), "filehost");
        let cli = CliValues {
            postgres_url: CliValue {
                value: Some("postgres://u@pghost/db".into()),
                source: Some(Source::Env),
            },
            ..CliValues::default()
        };
        let s = Settings::resolve(cli, FileConfig::default(), &env);
        assert_eq!(s.postgres(&env).unwrap().host(), "pghost");
    }

    #[test]
    fn missing_url_is_an_error_with_a_hint() {
        let s = Settings::resolve(CliValues::default(), FileConfig::default(), &no_env);
        let e = s.postgres(&no_env).unwrap_err();
        assert!(matches!(e, ConfigError::MissingPostgresUrl));
        assert!(e.hint().unwrap().contains("POSTGRES_URL"));
    }

    #[test]
    fn debug_never_shows_the_url() {
        let cli = CliValues {
            postgres_url: flag("postgres://u:hunter2@h/db".into()),
            ..CliValues::default()
        };
        let s = Settings::resolve(cli, FileConfig::default(), &no_env);
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&s).unwrap().contains("hunter2"));
    }

    #[test]
    fn ds_credentials_are_never_shown() {
        let cli = CliValues {
            ds_token: flag("tok-s3cret".into()),
            ds_headers: flag(vec!["X-Api-Key: k3y-s3cret".into()]),
            ..CliValues::default()
        };
        let s = Settings::resolve(cli, FileConfig::default(), &no_env);
        let json = serde_json::to_string(&s).unwrap();
        let debug = format!("{s:?}");
        for shown in [&json, &debug] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        assert!(json.contains("X-Api-Key: <redacted>"), "{json}");
        let access = s.ds_access().unwrap();
        assert_eq!(access.headers().len(), 2, "bearer token and the header");
    }

    #[test]
    fn ds_settings_come_from_the_file_and_the_token_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "from-file\n").unwrap();
        let f: FileConfig = toml::from_str(&format!(
            "ds_token_file = {:?}\nds_headers = [\"X-Tenant: acme\"]\nds_ca_file = \"/ca.pem\"\n",
            token.display().to_string()
        ))
        .unwrap();
        let s = Settings::resolve(CliValues::default(), f, &no_env);
        assert_eq!(s.ds_headers.source, Source::File);
        let access = s.ds_access().unwrap();
        let auth = access.headers()[0].1.to_str().unwrap().to_owned();
        assert_eq!(auth, "Bearer from-file");
        assert_eq!(access.tls.ca_file, Some(PathBuf::from("/ca.pem")));
        let cli = CliValues {
            ds_headers: flag(vec!["X-Tenant: flag".into()]),
            ..CliValues::default()
        };
        let f: FileConfig = toml::from_str("ds_headers = [\"X-Tenant: file\"]\n").unwrap();
        let s = Settings::resolve(cli, f, &no_env);
        assert_eq!(s.ds_headers.value.0, ["X-Tenant: flag"], "flag over file");
    }

    #[test]
    fn file_reads_the_capture_section_as_the_readme_shows_it() {
        let f: FileConfig = toml::from_str(
            "[capture]\ntables = [\"items\", \"sessions\"]\nlinger_ms = 5\n\
             [capture.routes]\nsessions = \"sessions/{session_id}\"\n",
        )
        .unwrap();
        assert_eq!(
            f.capture.tables,
            Some(vec!["items".into(), "sessions".into()])
        );
        assert_eq!(f.capture.linger_ms, Some(5));
        let routes = f.capture.routes.unwrap();
        assert_eq!(routes["sessions"], "sessions/{session_id}");
        assert!(toml::from_str::<FileConfig>("[capture]\nlinger = 5\n").is_err());
    }

    #[test]
    fn file_reads_the_ingest_section() {
        let f: FileConfig = toml::from_str(
            "[ingest]\nstreams = [\"sessions/1\", \"sessions/2\"]\nmax_event_bytes = 1024\n\
             batch_max_rows = 50\nmax_buffer_bytes = 4096\nidle_timeout = \"90s\"\n",
        )
        .unwrap();
        assert_eq!(
            f.ingest.streams,
            Some(vec!["sessions/1".into(), "sessions/2".into()])
        );
        assert_eq!(f.ingest.max_event_bytes, Some(1024));
        assert_eq!(f.ingest.batch_max_rows, Some(50));
        assert_eq!(f.ingest.max_buffer_bytes, Some(4096));
        assert_eq!(f.ingest.idle_timeout.as_deref(), Some("90s"));
        assert!(toml::from_str::<FileConfig>("[ingest]\nstream = [\"x\"]\n").is_err());
    }

    #[test]
    fn listen_comes_from_the_flag_or_the_file_and_is_off_by_default() {
        let f: FileConfig =
            toml::from_str("listen = \"0.0.0.0:9464\"\n[capture]\nmetrics_stream_labels = true\n")
                .unwrap();
        assert_eq!(f.capture.metrics_stream_labels, Some(true));
        let s = Settings::resolve(CliValues::default(), f.clone(), &no_env);
        let listen = s.listen.clone().unwrap();
        assert_eq!(
            (listen.value.as_str(), listen.source),
            ("0.0.0.0:9464", Source::File)
        );
        let cli = CliValues {
            listen: CliValue {
                value: Some("127.0.0.1:1".into()),
                source: Some(Source::Env),
            },
            ..CliValues::default()
        };
        let s = Settings::resolve(cli, f, &no_env);
        assert_eq!(s.listen.unwrap().source, Source::Env);
        let off = Settings::resolve(CliValues::default(), FileConfig::default(), &no_env);
        assert!(off.listen.is_none());
    }

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        use std::time::Duration;
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 500ms "), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "1.5", "-1s", "10 dayz", "0s", "0"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // One grammar with the retention options (humantime): these read as durations now.
        assert_eq!(parse_duration("10 days"), Ok(Duration::from_secs(864_000)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn file_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "slot = \"a\"\nslto = \"typo\"\n").unwrap();
        let e = load_file(&path).unwrap_err();
        assert!(e.to_string().contains("slto"), "{e}");
        std::fs::write(&path, "slot = \"a\"\nlog_format = \"json\"\n").unwrap();
        let f = load_file(&path).unwrap();
        assert_eq!(f.log_format, Some(LogFormat::Json));
    }
}
