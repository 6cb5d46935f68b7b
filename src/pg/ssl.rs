//! libpq's TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) read from the
//! connection string and the `PGSSL*` environment variables, and what they mean for each
//! connection attempt.
//!
//! tokio-postgres knows only `sslmode=disable|prefer|require` and refuses the other
//! parameters as unknown options, so they are taken out of the string here ([`extract`])
//! before tokio-postgres parses the rest. The same [`SslOptions`] then drive all three
//! connection kinds: tokio-postgres (SQL, snapshot workers, ingest), the hand-written
//! replication session (exported snapshot) and the replication stream (pgwire-replication).
//!
//! | `sslmode` | attempts, in order | server certificate check |
//! |---|---|---|
//! | `disable` | plain | - |
//! | `allow` | plain; TLS if the server refused the plain one | chain when a root certificate is there, else none |
//! | `prefer` (default) | TLS when the server offers it; plain if that TLS connection failed | chain when a root certificate is there, else none |
//! | `require` | TLS | chain when a root certificate is there (libpq: like `verify-ca`), else none |
//! | `verify-ca` | TLS | chain (a root certificate is required) |
//! | `verify-full` | TLS | chain and host name (a root certificate is required) |
//!
//! A root certificate is `sslrootcert` (a PEM file, or `system` for the system's trust
//! store, which makes `verify-full` the default and refuses weaker modes), else
//! `~/.postgresql/root.crt` when it exists. The client certificate is `sslcert`/`sslkey`,
//! else `~/.postgresql/postgresql.crt`/`.key` when they exist. The connection string wins
//! over `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY`. Unix-domain sockets never
//! use TLS (as libpq). Unlike libpq, a file named explicitly must exist: a missing root
//! certificate never silently turns `require` into "encrypt only".

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::ClientConfig;

use crate::tls::{self, TlsError, Verify};

/// Keys this module handles; tokio-postgres never sees them.
const SSL_KEYS: [&str; 5] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslnegotiation",
];

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// The system's trust store (`sslrootcert=system`).
    System,
}

/// The TLS parameters as given in the connection string (before the environment and the
/// defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslParams {
    pub mode: Option<String>,
    pub root_cert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub negotiation: Option<String>,
}

impl SslParams {
    fn set(&mut self, key: &str, value: String) {
        let slot = match key {
            "sslmode" => &mut self.mode,
            "sslrootcert" => &mut self.root_cert,
            "sslcert" => &mut self.cert,
            "sslkey" => &mut self.key,
            _ => &mut self.negotiation,
        };
        *slot = Some(value);
    }
}

/// A connection string split into what tokio-postgres parses and what this module does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// The string without the TLS parameters.
    pub rest: String,
    pub ssl: SslParams,
    /// Every parameter key given (to tell defaults from explicit settings).
    pub keys: Vec<String>,
}

/// Takes the TLS parameters out of a `postgres://` URL or a `key=value` string. A string
/// this cannot read is returned whole, for tokio-postgres to report what is wrong with it.
pub fn extract(conn: &str) -> Extracted {
    let whole = || Extracted {
        rest: conn.to_owned(),
        ssl: SslParams::default(),
        keys: Vec::new(),
    };
    let is_url = ["postgres://", "postgresql://"]
        .iter()
        .any(|p| conn.starts_with(p));
    let parsed = if is_url {
        extract_url(conn)
    } else {
        extract_key_values(conn)
    };
    parsed.unwrap_or_else(whole)
}

/// URL form: the query starts at the first `?` after the credentials (as tokio-postgres
/// and libpq read it); `key=value` pairs are split on `&` and percent-decoded.
fn extract_url(conn: &str) -> Option<Extracted> {
    let after_creds = conn.find('@').map_or(0, |at| at + 1);
    let Some(q) = conn[after_creds..].find('?').map(|i| i + after_creds) else {
        return Some(Extracted {
            rest: conn.to_owned(),
            ssl: SslParams::default(),
            keys: Vec::new(),
        });
    };
    let mut ssl = SslParams::default();
    let mut keys = Vec::new();
    let mut kept = Vec::new();
    for pair in conn[q + 1..].split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=')?;
        let key = decode(raw_key)?;
        if SSL_KEYS.contains(&key.as_str()) {
            ssl.set(&key, decode(raw_value)?);
        } else {
            kept.push(pair);
        }
        keys.push(key);
    }
    let mut rest = conn[..q].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Some(Extracted { rest, ssl, keys })
}

fn decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// `key=value` form, tokenized as tokio-postgres does (values optionally single-quoted,
/// backslash escapes); the TLS pairs are cut out of the original text.
fn extract_key_values(conn: &str) -> Option<Extracted> {
    let mut ssl = SslParams::default();
    let mut keys = Vec::new();
    let mut kept: Vec<&str> = Vec::new();
    let mut rest = conn;
    loop {
        let trimmed = rest.trim_start();
        if trimmed.is_empty() {
            break;
        }
        let start = conn.len() - trimmed.len();
        let (key, value, len) = key_value(trimmed)?;
        if SSL_KEYS.contains(&key) {
            ssl.set(key, value);
        } else {
            kept.push(&conn[start..start + len]);
        }
        keys.push(key.to_owned());
        rest = &trimmed[len..];
    }
    Some(Extracted {
        rest: kept.join(" "),
        ssl,
        keys,
    })
}

/// One `key = value` at the start of `s`: the key, the unescaped value, and the length of
/// the text it took.
fn key_value(s: &str) -> Option<(&str, String, usize)> {
    let key_len = s.find(|c: char| c.is_whitespace() || c == '=')?;
    let key = &s[..key_len];
    let after_key = s[key_len..].trim_start();
    let after_eq = after_key.strip_prefix('=')?.trim_start();
    let value_start = s.len() - after_eq.len();
    let mut value = String::new();
    let mut chars = after_eq.char_indices();
    let quoted = after_eq.starts_with('\'');
    if quoted {
        chars.next();
    }
    let mut end = after_eq.len();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => value.push(chars.next()?.1),
            '\'' if quoted => return Some((key, value, value_start + i + 1)),
            c if c.is_whitespace() && !quoted => {
                end = i;
                break;
            }
            c => value.push(c),
        }
    }
    if quoted || value.is_empty() {
        return None;
    }
    Some((key, value, value_start + end))
}

/// Resolved TLS settings of one Postgres target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslOptions {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for SslOptions {
    /// libpq's default: `prefer`, no certificates.
    fn default() -> Self {
        SslOptions {
            mode: SslMode::Prefer,
            root_cert: None,
            cert: None,
            key: None,
        }
    }
}

/// What one connection attempt does about TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No TLS.
    Plain,
    /// TLS when the server accepts the SSLRequest, plain when it declines.
    TlsIfOffered,
    /// TLS or fail.
    Tls,
}

impl SslOptions {
    /// Applies the environment (`PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`) under
    /// the connection string's values, and libpq's default files under `$HOME/.postgresql`.
    pub fn resolve(
        given: &SslParams,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SslOptions, String> {
        let pick = |url: &Option<String>, var: &str| {
            url.clone().or_else(|| env(var)).filter(|v| !v.is_empty())
        };
        if let Some(n) = given.negotiation.as_deref().filter(|n| *n != "postgres") {
            return Err(format!(
                "sslnegotiation {n:?} is not supported; ds-sync negotiates TLS with an SSLRequest (sslnegotiation=postgres)"
            ));
        }
        let root_cert = pick(&given.root_cert, "PGSSLROOTCERT").map(|r| {
            if r == "system" {
                RootCert::System
            } else {
                RootCert::File(PathBuf::from(r))
            }
        });
        let mode = match pick(&given.mode, "PGSSLMODE") {
            Some(m) => m.parse::<SslMode>()?,
            None if root_cert == Some(RootCert::System) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full (got {mode}): the system's trust store \
                 vouches for host names, so a weaker check is refused, as libpq does"
            ));
        }
        if mode == SslMode::Disable {
            return Ok(SslOptions {
                mode,
                ..SslOptions::default()
            });
        }
        let home_file = |name: &str| {
            env("HOME")
                .map(|h| Path::new(&h).join(".postgresql").join(name))
                .filter(|p| p.is_file())
        };
        let root_cert = root_cert.or_else(|| home_file("root.crt").map(RootCert::File));
        if mode >= SslMode::VerifyCa && root_cert.is_none() {
            return Err(format!(
                "sslmode={mode} needs a root certificate to check the server's certificate against: \
                 set sslrootcert to the CA file that signed it, or sslrootcert=system for the \
                 system's trust store (~/.postgresql/root.crt does not exist)"
            ));
        }
        let (cert, key) = client_identity(
            pick(&given.cert, "PGSSLCERT"),
            pick(&given.key, "PGSSLKEY"),
            home_file,
        )?;
        Ok(SslOptions {
            mode,
            root_cert,
            cert,
            key,
        })
    }

    /// The attempts of one connection, in order. A later attempt is made only when the
    /// earlier one reached the server and was refused (see [`Self::retry_after`]).
    pub fn steps(&self, unix_socket: bool) -> &'static [Step] {
        if unix_socket {
            return &[Step::Plain];
        }
        match self.mode {
            SslMode::Disable => &[Step::Plain],
            SslMode::Allow => &[Step::Plain, Step::Tls],
            SslMode::Prefer => &[Step::TlsIfOffered, Step::Plain],
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => &[Step::Tls],
        }
    }

    /// Whether the next step is worth trying after `step` failed: the server was reached
    /// and refused (`refused`: a server error or a failed handshake), and for `prefer` the
    /// failed attempt actually used TLS (a server that declined TLS was already tried plain).
    pub fn retry_after(step: Step, tls_used: bool, refused: bool) -> bool {
        refused && (step != Step::TlsIfOffered || tls_used)
    }

    /// How the server certificate is checked when TLS is used.
    pub fn verify(&self) -> Verify {
        match self.mode {
            SslMode::VerifyFull => Verify::Full,
            SslMode::VerifyCa => Verify::Chain,
            _ if self.root_cert.is_some() => Verify::Chain,
            _ => Verify::None,
        }
    }

    /// The rustls configuration for one connection (files are read now, so rotated ones are
    /// picked up by the next connection).
    pub fn rustls_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let roots = match &self.root_cert {
            Some(RootCert::File(path)) => {
                tls::roots_from_file("root certificate file (sslrootcert)", path)?
            }
            Some(RootCert::System) => tls::system_roots()?,
            None => rustls::RootCertStore::empty(),
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((
                tls::load_certs("client certificate file (sslcert)", cert)?,
                tls::load_key("client key file (sslkey)", key)?,
            )),
            _ => None,
        };
        Ok(Arc::new(tls::client_config(
            roots,
            self.verify(),
            identity,
        )?))
    }

    /// The same settings for pgwire-replication's TLS, which takes file paths. Its `Require`
    /// checks nothing, `VerifyCa` the chain, `VerifyFull` chain and name; the SNI name is set
    /// to the host so that an IP address is checked against the certificate's IP names.
    pub fn pgwire(&self, host: &str) -> Result<pgwire_replication::TlsConfig, TlsError> {
        use pgwire_replication::SslMode as P;
        let ca_pem_path = match &self.root_cert {
            Some(RootCert::File(path)) => {
                // Read it now, so a bad file gets the same error as on the other connections.
                tls::roots_from_file("root certificate file (sslrootcert)", path)?;
                Some(path.clone())
            }
            Some(RootCert::System) => Some(tls::system_bundle_file()?),
            None => None,
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls::load_certs("client certificate file (sslcert)", cert)?;
            tls::load_key("client key file (sslkey)", key)?;
        }
        tls::provider();
        Ok(pgwire_replication::TlsConfig {
            mode: match self.verify() {
                Verify::None => P::Require,
                Verify::Chain => P::VerifyCa,
                Verify::Full => P::VerifyFull,
            },
            ca_pem_path,
            sni_hostname: Some(host.to_owned()),
            client_cert_pem_path: self.cert.clone(),
            client_key_pem_path: self.key.clone(),
        })
    }

    /// The settings as libpq environment variables, for child processes (bench, psql).
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("PGSSLMODE", self.mode.as_str().to_owned())];
        match &self.root_cert {
            Some(RootCert::File(p)) => out.push(("PGSSLROOTCERT", p.display().to_string())),
            Some(RootCert::System) => out.push(("PGSSLROOTCERT", "system".into())),
            None => {}
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            out.push(("PGSSLCERT", cert.display().to_string()));
            out.push(("PGSSLKEY", key.display().to_string()));
        }
        out
    }
}

/// `sslcert`/`sslkey`: given ones must come as a pair (the other may be libpq's default
/// file); with neither, both default files are used when both exist.
fn client_identity(
    cert: Option<String>,
    key: Option<String>,
    home_file: impl Fn(&str) -> Option<PathBuf>,
) -> Result<(Option<PathBuf>, Option<PathBuf>), String> {
    let cert = cert.map(PathBuf::from);
    let key = key.map(PathBuf::from);
    match (cert, key) {
        (None, None) => match (home_file("postgresql.crt"), home_file("postgresql.key")) {
            (Some(c), Some(k)) => Ok((Some(c), Some(k))),
            _ => Ok((None, None)),
        },
        (Some(c), Some(k)) => Ok((Some(c), Some(k))),
        (Some(c), None) => match home_file("postgresql.key") {
            Some(k) => Ok((Some(c), Some(k))),
            None => Err(
                "sslcert is set but sslkey is not (and ~/.postgresql/postgresql.key does not exist): \
                 give the client certificate's private key with sslkey"
                    .into(),
            ),
        },
        (None, Some(k)) => match home_file("postgresql.crt") {
            Some(c) => Ok((Some(c), Some(k))),
            None => Err(
                "sslkey is set but sslcert is not (and ~/.postgresql/postgresql.crt does not exist): \
                 give the client certificate with sslcert"
                    .into(),
            ),
        },
    }
}

#[cfg(test)]
mod tests;
