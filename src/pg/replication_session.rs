//! A minimal replication-protocol session: log in with `replication=database`, create a
//! logical slot that exports a snapshot, keep the session idle while other connections read
//! inside that snapshot, then terminate.
//!
//! ```text
//!  StartupMessage(replication=database) ─▶ auth (SCRAM-SHA-256 | MD5 | cleartext) ─▶ ReadyForQuery
//!  Query CREATE_REPLICATION_SLOT "s" LOGICAL pgoutput (SNAPSHOT 'export')
//!      ◀─ RowDescription, DataRow(slot_name, consistent_point, snapshot_name, output_plugin)
//!      ◀─ CommandComplete, ReadyForQuery
//!  (idle: the exported snapshot lives exactly as long as this session does nothing else)
//!  Terminate
//! ```
//!
//! The streaming library ds-sync uses cannot export a snapshot, and tokio-postgres has no
//! replication mode, so this speaks the protocol itself on top of `postgres-protocol`. The
//! message handling is pure ([`Auth`], [`ExportedSlot::from_row`], [`ServerError::from_fields`])
//! and the I/O around it is a thin loop. Passwords never appear in errors or logs: errors
//! name the target through [`PgTarget`]'s `Display`, which leaves the password out.

use std::time::Duration;

use crate::lsn::Lsn;
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::{DataRowBody, ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::Host;

use super::PgTarget;
use super::ident::{NameError, quote, validate_slot_name};
use super::ssl::{SslOptions, Step};
use super::tls_connect::{handshake, server_name};

/// An error the server sent, with the fields that matter for deciding and reporting.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerError {
    pub severity: String,
    /// SQLSTATE, e.g. `42710` for a slot that already exists.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    /// Reads an ErrorResponse's fields.
    pub fn from_fields(body: &ErrorResponseBody) -> ServerError {
        let mut out = ServerError::default();
        let mut fields = body.fields();
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'V' => out.severity = value,
                b'S' if out.severity.is_empty() => out.severity = value,
                b'C' => out.code = value,
                b'M' => out.message = value,
                b'D' => out.detail = Some(value),
                b'H' => out.hint = Some(value),
                _ => {}
            }
        }
        out
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

/// Errors of the replication session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("replication session to {target}: cannot connect: {reason}")]
    Connect { target: String, reason: String },
    #[error("replication session to {target}: the server asks for a password and none was given")]
    NoPassword { target: String },
    #[error(
        "replication session to {target}: the server asks for {method} authentication, which \
         ds-sync's replication session does not speak; allow scram-sha-256, md5 or password \
         for replication connections in pg_hba.conf"
    )]
    UnsupportedAuth { target: String, method: String },
    #[error("replication session to {target}: authentication failed: {reason}")]
    Auth { target: String, reason: String },
    #[error("replication session to {target}: {context}: {error}")]
    Server {
        target: String,
        context: String,
        error: ServerError,
    },
    #[error("replication session to {target}: protocol error: {reason}")]
    Protocol { target: String, reason: String },
    #[error("replication session to {target}: the server closed the connection {context}")]
    Closed { target: String, context: String },
    /// TLS was required and the server declined it, or the handshake failed (the reason
    /// names the certificate problem).
    #[error("replication session to {target}: TLS: {reason}")]
    Tls {
        target: String,
        reason: String,
        hint: Option<String>,
    },
    /// The TLS settings cannot be used (a certificate or key file).
    #[error("replication session to {target}: {source}")]
    TlsSettings {
        target: String,
        #[source]
        source: crate::tls::TlsError,
    },
    #[error(transparent)]
    InvalidName(#[from] NameError),
}

impl SessionError {
    /// The server's SQLSTATE, when the server refused something.
    pub fn code(&self) -> Option<&str> {
        match self {
            SessionError::Server { error, .. } => Some(&error.code),
            _ => None,
        }
    }

    /// What to do about it, when there is something specific to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            SessionError::Tls { hint, .. } => hint.clone(),
            SessionError::TlsSettings { .. } => Some(
                "Check the sslrootcert, sslcert and sslkey paths: each must be a readable PEM file.".into(),
            ),
            _ => None,
        }
    }

    /// The server was reached and refused (login error, failed handshake): libpq's
    /// `allow`/`prefer` then try the other way.
    fn refused(&self) -> bool {
        matches!(self, SessionError::Auth { .. } | SessionError::Tls { .. })
    }

    /// Whether a new session can succeed: the server was not reached, the connection was
    /// lost, or the server ended the session for a reason of its own (see
    /// [`super::is_transient_code`]).
    pub fn is_transient(&self) -> bool {
        match self {
            SessionError::Connect { .. } | SessionError::Closed { .. } => true,
            SessionError::Server { error, .. } => {
                super::is_transient_code(&tokio_postgres::error::SqlState::from_code(&error.code))
            }
            _ => false,
        }
    }
}

/// The result row of `CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedSlot {
    pub slot_name: String,
    /// Changes that commit at or after this LSN are streamed by the slot; everything before
    /// is in the snapshot.
    pub consistent_point: Lsn,
    /// For `SET TRANSACTION SNAPSHOT`; valid while the session stays idle.
    pub snapshot_name: String,
    pub output_plugin: String,
}

impl ExportedSlot {
    /// Reads the four text columns of the result row.
    pub fn from_row(row: &[Option<String>]) -> Result<ExportedSlot, String> {
        let [Some(slot), Some(point), Some(snapshot), Some(plugin)] = row else {
            return Err(format!(
                "expected slot_name, consistent_point, snapshot_name and output_plugin, got {} \
                 columns{}",
                row.len(),
                if row.iter().any(Option::is_none) {
                    " with NULLs"
                } else {
                    ""
                }
            ));
        };
        let consistent_point = point
            .parse::<Lsn>()
            .map_err(|e| format!("consistent_point: {e}"))?;
        Ok(ExportedSlot {
            slot_name: slot.clone(),
            consistent_point,
            snapshot_name: snapshot.clone(),
            output_plugin: plugin.clone(),
        })
    }
}

/// The command that creates a logical pgoutput slot exporting its snapshot. PostgreSQL 15
/// takes the option list; 14 only the older keyword. `failover` (PostgreSQL 17+, checked
/// by the caller) makes it a failover slot.
pub fn create_slot_command(
    slot: &str,
    server_version_num: i32,
    failover: bool,
) -> Result<String, NameError> {
    validate_slot_name(slot)?;
    let name = quote(slot);
    Ok(if failover {
        format!(
            "CREATE_REPLICATION_SLOT {name} LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)"
        )
    } else if server_version_num >= 150_000 {
        format!("CREATE_REPLICATION_SLOT {name} LOGICAL pgoutput (SNAPSHOT 'export')")
    } else {
        format!("CREATE_REPLICATION_SLOT {name} LOGICAL pgoutput EXPORT_SNAPSHOT")
    })
}

/// The command that turns failover on for an existing slot (PostgreSQL 17+).
pub fn alter_failover_command(slot: &str) -> Result<String, NameError> {
    validate_slot_name(slot)?;
    Ok(format!(
        "ALTER_REPLICATION_SLOT {} (FAILOVER true)",
        quote(slot)
    ))
}

/// What the login exchange needs to send next.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthReply {
    /// Bytes to send, then wait for the next message.
    Send(BytesMut),
    /// Nothing to send: keep reading.
    Wait,
    /// Authentication is over (AuthenticationOk); keep reading until ReadyForQuery.
    Done,
}

/// Why the login exchange cannot go on.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthFailure {
    NoPassword,
    Unsupported(String),
    Failed(String),
}

/// The login exchange as a pure state machine: backend messages in, frontend bytes out.
pub struct Auth {
    user: String,
    password: Option<Vec<u8>>,
    scram: Option<ScramSha256>,
}

impl Auth {
    pub fn new(user: &str, password: Option<&[u8]>) -> Auth {
        Auth {
            user: user.to_owned(),
            password: password.map(<[u8]>::to_vec),
            scram: None,
        }
    }

    fn password(&self) -> Result<&[u8], AuthFailure> {
        self.password.as_deref().ok_or(AuthFailure::NoPassword)
    }

    /// Answers one authentication message; other messages are not this machine's business
    /// and get [`AuthReply::Wait`].
    pub fn step(&mut self, msg: &Message) -> Result<AuthReply, AuthFailure> {
        let io = |e: std::io::Error| AuthFailure::Failed(e.to_string());
        let mut buf = BytesMut::new();
        match msg {
            Message::AuthenticationOk => return Ok(AuthReply::Done),
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(self.password()?, &mut buf).map_err(io)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(self.user.as_bytes(), self.password()?, body.salt());
                frontend::password_message(hash.as_bytes(), &mut buf).map_err(io)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut scram = false;
                while let Some(m) = mechanisms.next().map_err(io)? {
                    scram |= m == SCRAM_SHA_256;
                }
                if !scram {
                    return Err(AuthFailure::Unsupported(
                        "SASL without SCRAM-SHA-256".into(),
                    ));
                }
                let client = ScramSha256::new(self.password()?, ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), &mut buf)
                    .map_err(io)?;
                self.scram = Some(client);
            }
            Message::AuthenticationSaslContinue(body) => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| AuthFailure::Failed("SASL continue before SASL start".into()))?;
                scram.update(body.data()).map_err(io)?;
                frontend::sasl_response(scram.message(), &mut buf).map_err(io)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| AuthFailure::Failed("SASL final before SASL start".into()))?;
                scram.finish(body.data()).map_err(|e| {
                    AuthFailure::Failed(format!("the server's SCRAM signature is wrong: {e}"))
                })?;
                return Ok(AuthReply::Wait);
            }
            Message::AuthenticationKerberosV5 => return unsupported("Kerberos V5"),
            Message::AuthenticationScmCredential => return unsupported("SCM credential"),
            Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                return unsupported("GSSAPI");
            }
            Message::AuthenticationSspi => return unsupported("SSPI"),
            _ => return Ok(AuthReply::Wait),
        }
        Ok(AuthReply::Send(buf))
    }
}

fn unsupported(method: &str) -> Result<AuthReply, AuthFailure> {
    Err(AuthFailure::Unsupported(method.to_owned()))
}

/// The text columns of a DataRow.
pub fn row_texts(row: &DataRowBody) -> Result<Vec<Option<String>>, String> {
    let buf = row.buffer();
    let mut ranges = row.ranges();
    let mut out = Vec::new();
    while let Some(range) = ranges.next().map_err(|e| e.to_string())? {
        out.push(range.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
    }
    Ok(out)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open replication-protocol session.
pub struct ReplicationSession {
    io: Box<dyn Io>,
    buf: BytesMut,
    target: String,
    server_version_num: i32,
    backend_pid: i32,
}

/// `application_name` of the session (see `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "ds-sync/snapshot";

impl ReplicationSession {
    /// Connects and logs in with `replication=database`, TLS as the target's `sslmode`
    /// says (the attempts of [`SslOptions::steps`]). When attempts fail, the error of the
    /// one that used TLS is returned: it says more than a plain connection's refusal.
    pub async fn connect(target: &PgTarget) -> Result<ReplicationSession, SessionError> {
        let mut failed: Vec<(Step, bool, SessionError)> = Vec::new();
        for &step in target.ssl().steps(target.is_unix_socket()) {
            if let Some((last, tls_used, e)) = failed.last()
                && !SslOptions::retry_after(*last, *tls_used, e.refused())
            {
                break;
            }
            match Self::attempt(target, step).await {
                Ok(session) => return Ok(session),
                Err((tls_used, e)) => failed.push((step, tls_used, e)),
            }
        }
        let pick = failed.iter().rposition(|(_, tls_used, _)| *tls_used);
        let index = pick.unwrap_or(failed.len().saturating_sub(1));
        Err(failed.swap_remove(index).2)
    }

    /// One attempt; the flag says whether TLS was used.
    async fn attempt(
        target: &PgTarget,
        step: Step,
    ) -> Result<ReplicationSession, (bool, SessionError)> {
        let name = target.to_string();
        let timeout = target
            .config()
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        let (io, tls_used) = tokio::time::timeout(timeout, open(target, step))
            .await
            .map_err(|_| {
                let reason = format!("timed out after {timeout:?}");
                (
                    false,
                    SessionError::Connect {
                        target: name.clone(),
                        reason,
                    },
                )
            })?
            .map_err(|e| (false, e))?;
        let mut session = ReplicationSession {
            io,
            buf: BytesMut::with_capacity(8192),
            target: name,
            server_version_num: 0,
            backend_pid: 0,
        };
        session.login(target).await.map_err(|e| (tls_used, e))?;
        Ok(session)
    }

    /// `server_version_num` as the server reported it at login (e.g. 150004).
    pub fn server_version_num(&self) -> i32 {
        self.server_version_num
    }

    /// The pid of the server process serving this session (0 if the server did not say).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    async fn login(&mut self, target: &PgTarget) -> Result<(), SessionError> {
        let mut startup = BytesMut::new();
        let params = [
            ("user", target.user()),
            ("database", target.dbname()),
            ("replication", "database"),
            ("application_name", APPLICATION_NAME),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut startup)
            .map_err(|e| self.protocol(e.to_string()))?;
        self.send(startup).await?;
        let password = target.password();
        let mut auth = Auth::new(target.user(), password.as_deref().map(str::as_bytes));
        loop {
            let msg = self.next_message("during login").await?;
            match &msg {
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => {
                    return Err(SessionError::Auth {
                        target: self.target.clone(),
                        reason: ServerError::from_fields(body).to_string(),
                    });
                }
                Message::BackendKeyData(key) => {
                    self.backend_pid = key.process_id();
                    continue;
                }
                Message::ParameterStatus(p) => {
                    if p.name().ok() == Some("server_version") {
                        self.server_version_num = p.value().map(version_num).unwrap_or(0);
                    }
                    continue;
                }
                _ => {}
            }
            match auth.step(&msg) {
                Ok(AuthReply::Send(bytes)) => self.send(bytes).await?,
                Ok(AuthReply::Wait | AuthReply::Done) => {}
                Err(failure) => return Err(self.auth_error(failure)),
            }
        }
    }

    fn auth_error(&self, failure: AuthFailure) -> SessionError {
        let target = self.target.clone();
        match failure {
            AuthFailure::NoPassword => SessionError::NoPassword { target },
            AuthFailure::Unsupported(method) => SessionError::UnsupportedAuth { target, method },
            AuthFailure::Failed(reason) => SessionError::Auth { target, reason },
        }
    }

    /// Creates a logical pgoutput slot with an exported snapshot. The session must stay
    /// idle afterwards for as long as the snapshot is in use.
    pub async fn create_slot_exporting_snapshot(
        &mut self,
        slot: &str,
        failover: bool,
    ) -> Result<ExportedSlot, SessionError> {
        let command = create_slot_command(slot, self.server_version_num, failover)?;
        let context = format!("creating replication slot '{slot}' with an exported snapshot");
        let rows = self.simple_query(&command, &context).await?;
        let row = rows
            .first()
            .ok_or_else(|| self.protocol(format!("{context}: no result row")))?;
        ExportedSlot::from_row(row).map_err(|reason| self.protocol(format!("{context}: {reason}")))
    }

    /// Runs one simple-protocol statement and returns its rows as text.
    pub async fn simple_query(
        &mut self,
        sql: &str,
        context: &str,
    ) -> Result<Vec<Vec<Option<String>>>, SessionError> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf).map_err(|e| self.protocol(e.to_string()))?;
        self.send(buf).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next_message(context).await? {
                Message::DataRow(row) => {
                    rows.push(row_texts(&row).map_err(|e| self.protocol(e))?);
                }
                Message::ErrorResponse(body) => error = Some(ServerError::from_fields(&body)),
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(error) => Err(SessionError::Server {
                target: self.target.clone(),
                context: context.to_owned(),
                error,
            }),
            None => Ok(rows),
        }
    }

    /// Says goodbye; the exported snapshot ends with the session.
    pub async fn terminate(mut self) {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        let _ = self.send(buf).await;
        let _ = self.io.shutdown().await;
    }

    async fn send(&mut self, bytes: BytesMut) -> Result<(), SessionError> {
        let result = self.io.write_all(&bytes).await;
        result.map_err(|e| SessionError::Closed {
            target: self.target.clone(),
            context: format!("while sending ({e})"),
        })
    }

    async fn next_message(&mut self, context: &str) -> Result<Message, SessionError> {
        loop {
            match Message::parse(&mut self.buf) {
                Ok(Some(msg)) => return Ok(msg),
                Ok(None) => {}
                Err(e) => return Err(self.protocol(e.to_string())),
            }
            let n = self.io.read_buf(&mut self.buf).await.unwrap_or(0);
            if n == 0 {
                return Err(SessionError::Closed {
                    target: self.target.clone(),
                    context: context.to_owned(),
                });
            }
        }
    }

    fn protocol(&self, reason: String) -> SessionError {
        SessionError::Protocol {
            target: self.target.clone(),
            reason,
        }
    }
}

/// Opens the socket (keepalive on) and, for TLS steps, sends the SSLRequest and does the
/// handshake. Returns the stream and whether it is TLS.
async fn open(target: &PgTarget, step: Step) -> Result<(Box<dyn Io>, bool), SessionError> {
    let name = target.to_string();
    let connect_error = |e: std::io::Error| SessionError::Connect {
        target: name.clone(),
        reason: e.to_string(),
    };
    if let Some(Host::Unix(dir)) = target.config().get_hosts().first() {
        let path = dir.join(format!(".s.PGSQL.{}", target.port()));
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(connect_error)?;
        return Ok((Box::new(stream), false));
    }
    let config =
        match step {
            Step::Plain => None,
            Step::Tls | Step::TlsIfOffered => Some(target.ssl().rustls_config().map_err(
                |source| SessionError::TlsSettings {
                    target: name.clone(),
                    source,
                },
            )?),
        };
    let mut stream = tokio::net::TcpStream::connect((target.host(), target.port()))
        .await
        .map_err(connect_error)?;
    stream.set_nodelay(true).map_err(connect_error)?;
    crate::keepalive::enable(&stream).map_err(connect_error)?;
    let Some(config) = config else {
        return Ok((Box::new(stream), false));
    };
    if !ssl_request(&mut stream).await.map_err(connect_error)? {
        if step == Step::TlsIfOffered {
            return Ok((Box::new(stream), false));
        }
        return Err(SessionError::Tls {
            target: name,
            reason: format!(
                "the server does not accept TLS connections, and sslmode={} requires TLS",
                target.ssl().mode
            ),
            hint: Some("Turn ssl on in the server's configuration, or lower sslmode.".into()),
        });
    }
    let host = server_name(&target.host()).map_err(connect_error)?;
    match handshake(stream, config, host).await {
        Ok(tls) => Ok((Box::new(tls), true)),
        Err(e) => Err(SessionError::Tls {
            target: name,
            hint: crate::tls::find_rustls_error(&e).map(super::tls_hint),
            reason: crate::tls::certificate_problem(&e).map_or_else(
                || format!("handshake failed: {e}"),
                |p| format!("handshake failed: {p}"),
            ),
        }),
    }
}

/// Sends an SSLRequest; `true` when the server answers `S` (go on with TLS).
async fn ssl_request(stream: &mut tokio::net::TcpStream) -> std::io::Result<bool> {
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    stream.write_all(&buf).await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => Ok(true),
        b'N' => Ok(false),
        other => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected answer {other:#04x} to the SSLRequest"),
        )),
    }
}

/// `15.4` → 150004, `14.10 (Debian ...)` → 140010; 0 when unreadable.
pub fn version_num(version: &str) -> i32 {
    let digits: String = version
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = digits.split('.').map(|p| p.parse::<i32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    major * 10_000 + minor
}

#[cfg(test)]
mod tests;
