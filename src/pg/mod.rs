//! Postgres connection settings and the SQL-facing helpers every command shares.
//!
//! The URL is parsed once into a [`PgTarget`]; everything that shows a target to a person
//! (logs, errors, `config show`) goes through its `Display`, which never includes the
//! password. Errors from tokio-postgres are turned into [`PgError`] here, with the server's
//! SQLSTATE kept so callers can decide on codes, never on message text.

pub mod ident;
pub mod replication_session;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

/// Application name ds-sync reports to the server (visible in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "ds-sync";

/// How long to wait for a TCP connection to the server before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
        /// The server's SQLSTATE when it refused the login (`None`: it was not reached).
        code: Option<SqlState>,
    },
    /// A statement failed.
    #[error("{context}: {reason}")]
    Query {
        context: String,
        reason: String,
        code: Option<SqlState>,
        /// The connection was lost or the server is going away: see [`is_transient`].
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

    /// A failed connection attempt to `target`.
    pub fn connect(target: &PgTarget, err: &tokio_postgres::Error) -> Self {
        PgError::Connect {
            target: target.to_string(),
            reason: describe(err),
            code: err.code().cloned(),
        }
    }

    /// The SQLSTATE the server answered with, when the error came from the server.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            PgError::Query { code, .. } | PgError::Connect { code, .. } => code.as_ref(),
            PgError::InvalidUrl { .. } => None,
        }
    }

    /// Whether trying again on a new connection can succeed: the server was not reached,
    /// the connection was lost, or the server is shutting down, starting or out of
    /// resources. A refused login (wrong password, unknown database) and refused
    /// statements are definite.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::InvalidUrl { .. } => false,
            PgError::Connect { code, .. } => code.as_ref().is_none_or(is_transient_code),
            PgError::Query { transient, .. } => *transient,
        }
    }
}

/// SQLSTATEs that say the connection or the server, not the statement, failed: class 08
/// (connection exception), 57P01-57P03 (terminated by an administrator, crash shutdown,
/// cannot connect now) and class 53 (insufficient resources, too many connections).
const TRANSIENT_CODES: &[SqlState] = &[
    SqlState::CONNECTION_EXCEPTION,
    SqlState::CONNECTION_DOES_NOT_EXIST,
    SqlState::CONNECTION_FAILURE,
    SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
    SqlState::SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION,
    SqlState::TRANSACTION_RESOLUTION_UNKNOWN,
    SqlState::PROTOCOL_VIOLATION,
    SqlState::ADMIN_SHUTDOWN,
    SqlState::CRASH_SHUTDOWN,
    SqlState::CANNOT_CONNECT_NOW,
    SqlState::INSUFFICIENT_RESOURCES,
    SqlState::DISK_FULL,
    SqlState::OUT_OF_MEMORY,
    SqlState::TOO_MANY_CONNECTIONS,
    SqlState::CONFIGURATION_LIMIT_EXCEEDED,
];

/// Whether a SQLSTATE is one of [`TRANSIENT_CODES`].
pub fn is_transient_code(code: &SqlState) -> bool {
    TRANSIENT_CODES.contains(code)
}

/// Whether a tokio-postgres error is worth a retry on a new connection: the connection is
/// closed, broke (I/O), or the server answered with a [`TRANSIENT_CODES`] SQLSTATE.
pub fn is_transient(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    match err.code() {
        Some(code) => is_transient_code(code),
        None => {
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                if cause.is::<std::io::Error>() {
                    return true;
                }
                source = cause.source();
            }
            false
        }
    }
}

/// A human description of a tokio-postgres error: the server's message, SQLSTATE, detail
/// and hint for server errors; the whole cause chain otherwise.
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
    /// The URL named no `application_name`: ds-sync names each of its connections.
    own_application_name: bool,
}

impl PgTarget {
    /// Parses a `postgres://` / `postgresql://` URL or a `key=value` connection string.
    ///
    /// When the URL carries no password, `fallback_password` (e.g. `PGPASSWORD`) is used.
    pub fn parse(url: &str, fallback_password: Option<&str>) -> Result<Self, PgError> {
        let mut config = Config::from_str(url).map_err(|e| PgError::InvalidUrl {
            // The parser's messages name options and positions, never option values.
            reason: e.to_string(),
        })?;
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
            && let Some(pw) = fallback_password
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
        Ok(PgTarget {
            config,
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

    /// The tokio-postgres configuration.
    pub fn config(&self) -> &Config {
        &self.config
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
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| PgError::connect(self, &e))?;
        let target = self.to_string();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%target, error = %describe(&e), "postgres connection closed");
            }
        });
        Ok(client)
    }
}

/// Shows the target as a URL without the password.
impl fmt::Display for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.host();
        if host.starts_with('/') {
            write!(
                f,
                "postgres://{}@[{}]:{}/{}",
                self.user(),
                host,
                self.port(),
                self.dbname()
            )
        } else {
            write!(
                f,
                "postgres://{}@{}:{}/{}",
                self.user(),
                host,
                self.port(),
                self.dbname()
            )
        }
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
    fn lost_connections_and_a_going_away_server_are_transient_refusals_are_not() {
        for code in [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_FAILURE,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::OUT_OF_MEMORY,
        ] {
            assert!(is_transient_code(&code), "{}", code.code());
        }
        for code in [
            SqlState::INVALID_PASSWORD,
            SqlState::UNDEFINED_TABLE,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::QUERY_CANCELED,
            SqlState::UNIQUE_VIOLATION,
        ] {
            assert!(!is_transient_code(&code), "{}", code.code());
        }
        let refused = |code: Option<SqlState>| PgError::Connect {
            target: "t".into(),
            reason: "r".into(),
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
