//! Postgres connection settings and the SQL-facing helpers every command shares.
//!
//! The URL is parsed once into a [`PgTarget`]; everything that shows a target to a person
//! (logs, errors, `config show`) goes through its `Display`, which never includes the
//! password. Errors from tokio-postgres are turned into [`PgError`] here, with the server's
//! SQLSTATE kept so callers can decide on codes (see [`sqlstate`] for the two replication
//! cases that also read the message).

pub mod ident;
pub mod replication_session;
pub mod sqlstate;
pub mod ssl;
pub mod tls_connect;
pub mod version;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode as TpSslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, Connection, Socket};

use ssl::{SslMode, SslOptions, Step};
use tls_connect::{RustlsConnect, RustlsStream};

/// Application name ds-sync reports to the server (visible in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "ds-sync";

/// How long to wait for a TCP connection to the server before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A tokio-postgres connection of ds-sync (TLS or plain), to be driven by its owner.
pub type PgConnection = Connection<Socket, RustlsStream<Socket>>;

/// Errors of the Postgres layer.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection URL could not be parsed. The reason never contains the password.
    #[error("invalid Postgres URL: {reason}")]
    InvalidUrl { reason: String },
    /// The server could not be reached or refused the login.
    #[error("could not connect to {target}: {reason}")]
    Connect {
        target: String,
        reason: String,
        hint: Option<String>,
        /// The server's SQLSTATE when it refused the login (`None`: it was not reached).
        code: Option<SqlState>,
    },
    /// The TLS settings cannot be used (a certificate or key file missing or unreadable).
    #[error("could not connect to {target}: {source}")]
    Tls {
        target: String,
        #[source]
        source: crate::tls::TlsError,
    },
    /// A statement failed.
    #[error("{context}: {reason}")]
    Query {
        context: String,
        reason: String,
        code: Option<SqlState>,
        /// Trying again can succeed (the class of the SQLSTATE, see [`sqlstate`]).
        transient: bool,
    },
}

impl PgError {
    /// Wraps a failed statement with what ds-sync was doing at the time.
    pub fn query(context: impl Into<String>, err: &tokio_postgres::Error) -> Self {
        PgError::Query {
            context: context.into(),
            reason: describe(err),
            code: err.code().cloned(),
            transient: is_transient(err),
        }
    }

    /// The SQLSTATE the server answered with, when the error came from the server.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            PgError::Query { code, .. } | PgError::Connect { code, .. } => code.as_ref(),
            PgError::InvalidUrl { .. } | PgError::Tls { .. } => None,
        }
    }

    /// Whether trying again on a new connection can succeed: the server was not reached,
    /// the connection was lost, or the server is shutting down, starting or out of
    /// resources. A refused login (wrong password, unknown database), TLS settings that
    /// cannot work and refused statements are definite.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::InvalidUrl { .. } | PgError::Tls { .. } => false,
            PgError::Connect { code, .. } => code.as_ref().is_none_or(is_transient_code),
            PgError::Query { transient, .. } => *transient,
        }
    }

    /// What to do about it, when there is something specific to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            PgError::Connect { hint, .. } => hint.clone(),
            PgError::Tls { .. } => Some(
                "Check the sslrootcert, sslcert and sslkey paths in the URL (or PGSSLROOTCERT, PGSSLCERT, PGSSLKEY): each must be a readable PEM file.".into(),
            ),
            _ => None,
        }
    }
}

pub use sqlstate::{ErrorClass, classify, classify_code, sqlstate_in_message};
pub use version::{ServerVersion, server_version};

/// Whether a SQLSTATE says trying again can succeed (see [`sqlstate`] for each class).
pub fn is_transient_code(code: &SqlState) -> bool {
    classify_code(code).is_transient()
}

/// Whether a tokio-postgres error is worth a retry (on a new connection where needed): the
/// connection is closed or broke (I/O), or the server's SQLSTATE is transient (see
/// [`sqlstate`]).
pub fn is_transient(err: &tokio_postgres::Error) -> bool {
    classify(err).is_transient()
}

/// A human description of a tokio-postgres error: the server's message, SQLSTATE, detail
/// and hint for server errors; the certificate problem for a failed TLS handshake; the
/// whole cause chain otherwise.
pub fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut out = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            out.push_str(&format!("; detail: {detail}"));
        }
        if let Some(hint) = db.hint() {
            out.push_str(&format!("; hint: {hint}"));
        }
        return out;
    }
    if let Some(problem) = crate::tls::certificate_problem(err) {
        return format!("TLS handshake failed: {problem}");
    }
    error_chain(err)
}

/// An error with its whole cause chain, each cause once (`outer: inner: root`), for errors
/// whose own message leaves out why (I/O, TLS, protocol).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(&format!(": {text}"));
        }
        source = cause.source();
    }
    out
}

/// A parsed Postgres connection target.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
    ssl: SslOptions,
    /// The URL named no `application_name`: ds-sync names each of its connections.
    own_application_name: bool,
}

/// One failed connection attempt.
struct Attempt {
    step: Step,
    tls_used: bool,
    error: tokio_postgres::Error,
}

impl PgTarget {
    /// Parses a `postgres://` / `postgresql://` URL or a `key=value` connection string,
    /// TLS parameters included; the environment is not consulted.
    ///
    /// When the URL carries no password, `fallback_password` (e.g. `PGPASSWORD`) is used.
    pub fn parse(url: &str, fallback_password: Option<&str>) -> Result<Self, PgError> {
        let env = |k: &str| (k == "PGPASSWORD").then(|| fallback_password.map(str::to_owned))?;
        Self::parse_env(url, &env)
    }

    /// Parses a connection string the way libpq does with its environment: `PGPASSWORD`
    /// for a password the string lacks, `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and
    /// `PGSSLKEY` under the string's own TLS parameters, and the default certificate files
    /// under `$HOME/.postgresql`.
    pub fn parse_env(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, PgError> {
        let extracted = ssl::extract(url);
        let mut config = Config::from_str(&extracted.rest).map_err(|e| PgError::InvalidUrl {
            // The parser's messages name options and positions, never option values.
            reason: e.to_string(),
        })?;
        let ssl = SslOptions::resolve(&extracted.ssl, env)
            .map_err(|reason| PgError::InvalidUrl { reason })?;
        if config.get_hosts().is_empty() {
            return Err(PgError::InvalidUrl {
                reason: "no host given (e.g. postgres://user@localhost:5432/db)".into(),
            });
        }
        if config.get_user().is_none() {
            return Err(PgError::InvalidUrl {
                reason: "no user given (e.g. postgres://user@localhost:5432/db)".into(),
            });
        }
        if config.get_password().is_none()
            && let Some(pw) = env("PGPASSWORD").filter(|p| !p.is_empty())
        {
            config.password(pw);
        }
        let own_application_name = config.get_application_name().is_none();
        if own_application_name {
            config.application_name(APPLICATION_NAME);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        apply_keepalive_defaults(&mut config, &extracted.keys);
        Ok(PgTarget {
            config,
            ssl,
            own_application_name,
        })
    }

    /// The same target with `name` (`ds-sync/<role>`) as `application_name`, so each of
    /// ds-sync's connections can be told apart in `pg_stat_activity`; an `application_name`
    /// given in the URL is kept as it is.
    #[must_use]
    pub fn with_application_name(&self, name: &str) -> PgTarget {
        let mut target = self.clone();
        if self.own_application_name {
            target.config.application_name(name);
        }
        target
    }

    /// The `application_name` connections report.
    pub fn application_name(&self) -> &str {
        self.config
            .get_application_name()
            .unwrap_or(APPLICATION_NAME)
    }

    /// The tokio-postgres configuration (TLS aside: see [`Self::ssl`]).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The TLS settings.
    pub fn ssl(&self) -> &SslOptions {
        &self.ssl
    }

    /// Whether the first host is a Unix-domain socket directory (never TLS, as libpq).
    pub fn is_unix_socket(&self) -> bool {
        matches!(self.config.get_hosts().first(), Some(Host::Unix(_)))
    }

    /// First host name (or socket directory).
    pub fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        }
    }

    /// First port, 5432 when none was given.
    pub fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    /// The login role.
    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or("postgres")
    }

    /// The password, when one was given.
    pub fn password(&self) -> Option<String> {
        self.config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// The database name; Postgres defaults it to the user name.
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or_else(|| self.user())
    }

    /// Opens a connection and drives it on a background task.
    pub async fn connect(&self) -> Result<Client, PgError> {
        let (client, connection) = self.connect_raw().await?;
        let target = self.to_string();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%target, error = %describe(&e), "postgres connection closed");
            }
        });
        Ok(client)
    }

    /// Opens a connection, TLS as `sslmode` says, and returns it for the caller to drive
    /// (e.g. to receive notifications). Attempts follow libpq: `allow` tries plain first
    /// and TLS when the server refuses; `prefer` tries TLS first and plain when the TLS
    /// connection was refused or its handshake failed.
    pub async fn connect_raw(&self) -> Result<(Client, PgConnection), PgError> {
        let mut failed: Vec<Attempt> = Vec::new();
        for &step in self.ssl.steps(self.is_unix_socket()) {
            if let Some(last) = failed.last() {
                let refused = last.error.as_db_error().is_some()
                    || crate::tls::find_rustls_error(&last.error).is_some();
                if !SslOptions::retry_after(last.step, last.tls_used, refused) {
                    break;
                }
            }
            match self.attempt(step).await? {
                Ok(pair) => return Ok(pair),
                Err(attempt) => failed.push(attempt),
            }
        }
        Err(self.connect_error(&failed))
    }

    /// One attempt; the outer error is a TLS setting that cannot work at all.
    async fn attempt(
        &self,
        step: Step,
    ) -> Result<Result<(Client, PgConnection), Attempt>, PgError> {
        let mut config = self.config.clone();
        let tls = match step {
            Step::Plain => {
                config.ssl_mode(TpSslMode::Disable);
                None
            }
            Step::TlsIfOffered | Step::Tls => {
                config.ssl_mode(if step == Step::Tls {
                    TpSslMode::Require
                } else {
                    TpSslMode::Prefer
                });
                Some(self.ssl.rustls_config().map_err(|source| PgError::Tls {
                    target: self.to_string(),
                    source,
                })?)
            }
        };
        let connector = RustlsConnect::new(tls);
        Ok(match config.connect(connector.clone()).await {
            Ok(pair) => Ok(pair),
            Err(error) => Err(Attempt {
                step,
                tls_used: connector.tls_used(),
                error,
            }),
        })
    }

    fn connect_error(&self, failed: &[Attempt]) -> PgError {
        let label = |a: &Attempt| match (a.step, a.tls_used) {
            (Step::Plain, _) | (Step::TlsIfOffered, false) => "without TLS",
            _ => "with TLS",
        };
        let reason = match failed {
            [only] => describe(&only.error),
            many => many
                .iter()
                .map(|a| format!("{}: {}", label(a), describe(&a.error)))
                .collect::<Vec<_>>()
                .join("; then "),
        };
        PgError::Connect {
            target: self.to_string(),
            reason,
            hint: failed.iter().find_map(|a| connect_hint(a, self.ssl.mode)),
            code: failed.iter().rev().find_map(|a| a.error.code().cloned()),
        }
    }

    /// The TLS settings as libpq environment variables, for child processes.
    pub fn ssl_env(&self) -> Vec<(&'static str, String)> {
        self.ssl.env_vars()
    }
}

/// ds-sync's keepalive ([`crate::keepalive`]) for every connection, unless the URL chose its
/// own `keepalives*` settings.
fn apply_keepalive_defaults(config: &mut Config, given: &[String]) {
    let given = |k: &str| given.iter().any(|g| g == k);
    if !given("keepalives") {
        config.keepalives(true);
    }
    if !given("keepalives_idle") {
        config.keepalives_idle(crate::keepalive::IDLE);
    }
    if !given("keepalives_interval") {
        config.keepalives_interval(crate::keepalive::INTERVAL);
    }
    if !given("keepalives_retries") {
        config.keepalives_retries(crate::keepalive::RETRIES);
    }
}

/// A hint for a failed attempt: a certificate problem, or a plain connection refused by a
/// server that wants TLS.
fn connect_hint(a: &Attempt, mode: SslMode) -> Option<String> {
    if let Some(e) = crate::tls::find_rustls_error(&a.error) {
        return Some(tls_hint(e));
    }
    let refused_plain =
        !a.tls_used && a.error.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    (refused_plain && mode <= SslMode::Prefer).then(|| {
        format!(
            "The server refused a connection without TLS (sslmode={mode}); it may accept only TLS (hostssl lines in pg_hba.conf). Set sslmode=verify-full with sslrootcert (or sslmode=require) in the URL or PGSSLMODE."
        )
    })
}

/// What to do about a failed handshake.
pub fn tls_hint(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "sslrootcert must name the PEM file of the CA that signed the server's certificate (or `system` for a publicly trusted one).".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "Connect with a host name the server's certificate names, or use sslmode=verify-ca to check the chain only.".into()
        }
        rustls::Error::AlertReceived(_) => {
            "Give a client certificate the server trusts with sslcert and sslkey (or PGSSLCERT and PGSSLKEY).".into()
        }
        _ => "Check the server's certificate and the sslmode, sslrootcert, sslcert and sslkey settings.".into(),
    }
}

/// Shows the target as a URL without the password, with `sslmode` when it is not libpq's
/// default `prefer`.
impl fmt::Display for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.host();
        let (user, port, db) = (self.user(), self.port(), self.dbname());
        if host.starts_with('/') {
            write!(f, "postgres://{user}@[{host}]:{port}/{db}")?;
        } else {
            write!(f, "postgres://{user}@{host}:{port}/{db}")?;
        }
        if self.ssl.mode != SslMode::Prefer {
            write!(f, "?sslmode={}", self.ssl.mode)?;
        }
        Ok(())
    }
}

/// Debug output is the redacted URL too, so `{:?}` in a log line can never leak a password.
impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgTarget({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_hides_password() {
        let t = PgTarget::parse("postgres://alice:s3cr3t@db.example:6543/app", None).unwrap();
        assert_eq!(t.to_string(), "postgres://alice@db.example:6543/app");
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert_eq!(t.password().as_deref(), Some("s3cr3t"));
        assert_eq!(t.port(), 6543);
        assert_eq!(t.dbname(), "app");
    }

    #[test]
    fn fallback_password_only_when_url_has_none() {
        let t = PgTarget::parse("postgres://alice@h/db", Some("fromenv")).unwrap();
        assert_eq!(t.password().as_deref(), Some("fromenv"));
        let t = PgTarget::parse("postgres://alice:inurl@h/db", Some("fromenv")).unwrap();
        assert_eq!(t.password().as_deref(), Some("inurl"));
    }

    #[test]
    fn parse_errors_never_echo_the_password() {
        for url in [
            "postgres://alice:topsecret@h:notaport/db",
            "postgres://alice:topsecret@h/db?bogus_option=1",
            "postgres://:topsecret@h/db",
        ] {
            if let Err(e) = PgTarget::parse(url, None) {
                assert!(!e.to_string().contains("topsecret"), "{url}: {e}");
            }
        }
        assert!(PgTarget::parse("postgres://alice:topsecret@h:notaport/db", None).is_err());
    }

    #[test]
    fn libpq_tls_parameters_are_accepted() {
        let t = PgTarget::parse(
            "postgres://alice:s3cr3t@db.example/app?sslmode=verify-full&sslrootcert=/etc/ca.pem&sslcert=/c.pem&sslkey=/k.pem&application_name=x",
            None,
        )
        .expect("the parameters tokio-postgres refuses are handled");
        assert_eq!(t.ssl().mode, SslMode::VerifyFull);
        assert_eq!(t.config().get_application_name(), Some("x"));
        assert_eq!(
            t.to_string(),
            "postgres://alice@db.example:5432/app?sslmode=verify-full"
        );
        let kv = PgTarget::parse("host=h user=u sslmode=require password=pw", None).unwrap();
        assert_eq!(kv.ssl().mode, SslMode::Require);
        assert_eq!(kv.password().as_deref(), Some("pw"));
    }

    #[test]
    fn the_environment_supplies_tls_settings_under_the_url() {
        let env = |k: &str| match k {
            "PGSSLMODE" => Some("disable".to_owned()),
            "PGPASSWORD" => Some("envpw".to_owned()),
            _ => None,
        };
        let t = PgTarget::parse_env("postgres://u@h/db", &env).unwrap();
        assert_eq!(t.ssl().mode, SslMode::Disable);
        assert_eq!(t.password().as_deref(), Some("envpw"));
        let t = PgTarget::parse_env("postgres://u@h/db?sslmode=require", &env).unwrap();
        assert_eq!(t.ssl().mode, SslMode::Require);
        let t = PgTarget::parse("postgres://u@h/db", None).unwrap();
        assert_eq!(
            t.ssl().mode,
            SslMode::Prefer,
            "parse() reads no environment"
        );
    }

    #[test]
    fn keepalive_is_on_unless_the_url_sets_it() {
        let t = PgTarget::parse("postgres://u@h/db", None).unwrap();
        assert!(t.config().get_keepalives());
        assert_eq!(t.config().get_keepalives_idle(), crate::keepalive::IDLE);
        assert_eq!(
            t.config().get_keepalives_interval(),
            Some(crate::keepalive::INTERVAL)
        );
        assert_eq!(
            t.config().get_keepalives_retries(),
            Some(crate::keepalive::RETRIES)
        );
        let own = PgTarget::parse("postgres://u@h/db?keepalives_idle=7", None).unwrap();
        assert_eq!(own.config().get_keepalives_idle(), Duration::from_secs(7));
    }

    #[test]
    fn tls_parameter_errors_never_echo_the_password() {
        for url in [
            "postgres://alice:topsecret@h/db?sslmode=bogus",
            "postgres://alice:topsecret@h/db?sslmode=verify-full",
            "postgres://alice:topsecret@h/db?sslcert=/c.pem",
            "host=h user=alice password=topsecret sslmode=verify-ca",
        ] {
            let e = PgTarget::parse(url, None).unwrap_err();
            assert!(!e.to_string().contains("topsecret"), "{url}: {e}");
        }
    }

    #[test]
    fn refused_logins_are_definite_an_unreached_or_busy_server_is_not() {
        let refused = |code: Option<SqlState>| PgError::Connect {
            target: "t".into(),
            reason: "r".into(),
            hint: None,
            code,
        };
        assert!(refused(None).is_transient(), "not reached: try again");
        assert!(refused(Some(SqlState::CANNOT_CONNECT_NOW)).is_transient());
        assert!(!refused(Some(SqlState::INVALID_PASSWORD)).is_transient());
        assert!(!refused(Some(SqlState::INVALID_CATALOG_NAME)).is_transient());
        let url = PgError::InvalidUrl { reason: "x".into() };
        assert!(!url.is_transient());
    }

    #[test]
    fn each_connection_names_itself_unless_the_url_names_them_all() {
        let t = PgTarget::parse("postgres://a@h/db", None).unwrap();
        assert_eq!(t.application_name(), "ds-sync");
        assert_eq!(
            t.with_application_name("ds-sync/capture")
                .application_name(),
            "ds-sync/capture"
        );
        let named = PgTarget::parse("postgres://a@h/db?application_name=app", None).unwrap();
        assert_eq!(
            named
                .with_application_name("ds-sync/capture")
                .application_name(),
            "app"
        );
    }

    #[test]
    fn missing_user_is_rejected_with_an_example() {
        let e = PgTarget::parse("postgres://localhost/db", None).unwrap_err();
        assert!(e.to_string().contains("no user"), "{e}");
    }
}
