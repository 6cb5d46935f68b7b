//! A Durable Streams server in this process: the `durable-streams-server` crate's own router
//! and in-memory storage, served on a loopback port.
//!
//! The storage outlives the listener, so `stop` followed by `start_again` simulates an outage
//! that loses connections but not data, on the same URL.
//!
//! With [`DsServerTls`] it serves HTTPS (and mutual TLS with a client CA) the way the
//! crate's own binary does: the crate builds the rustls server configuration from its
//! transport settings, axum-server serves it. A [`RouterLayer`] wraps the router, e.g. with
//! an authentication check in front of the real server.
//!
//! Every accepted connection has `TCP_NODELAY`: an SSE event is a small write, and with
//! Nagle's algorithm on it waits for the client's ACK of the previous one, which a client
//! that only receives may delay; events then arrive in bursts, milliseconds late.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum_server::accept::NoDelayAcceptor;
use durable_streams_server::config::TransportMode;
use durable_streams_server::{Config, InMemoryStorage, build_router_with_ready};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::EmbeddedError;

/// Wraps the server's router (e.g. adds middleware in front of it).
pub type RouterLayer = Arc<dyn Fn(axum::Router) -> axum::Router + Send + Sync>;

/// HTTPS settings of the embedded server.
#[derive(Debug, Clone)]
pub struct DsServerTls {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// With a client CA, clients must present a certificate it signed (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Limits and timings of the embedded server.
#[derive(Clone)]
pub struct DsServerOptions {
    /// Cap on all streams together, in bytes.
    pub max_total_bytes: u64,
    /// Cap on one stream, in bytes.
    pub max_stream_bytes: u64,
    /// The server closes SSE connections after this many seconds (clients reconnect).
    pub sse_reconnect_interval_secs: u64,
    /// Long-poll timeout in seconds.
    pub long_poll_timeout_secs: u64,
    /// Loopback port to serve on; 0 picks a free one.
    pub port: u16,
    /// Serve HTTPS instead of HTTP.
    pub tls: Option<DsServerTls>,
    /// Applied to the router before it is served.
    pub layer: Option<RouterLayer>,
}

impl fmt::Debug for DsServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DsServerOptions")
            .field("max_total_bytes", &self.max_total_bytes)
            .field("max_stream_bytes", &self.max_stream_bytes)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("layer", &self.layer.as_ref().map(|_| "<router layer>"))
            .finish_non_exhaustive()
    }
}

impl Default for DsServerOptions {
    /// Limits raised far above what tests and `dev` write.
    fn default() -> Self {
        DsServerOptions {
            max_total_bytes: 16 << 30,
            max_stream_bytes: 8 << 30,
            sse_reconnect_interval_secs: 60,
            long_poll_timeout_secs: 5,
            port: 0,
            tls: None,
            layer: None,
        }
    }
}

/// A running (or stopped, restartable) in-process DS server.
pub struct DsServer {
    storage: Arc<InMemoryStorage>,
    config: Config,
    addr: SocketAddr,
    layer: Option<RouterLayer>,
    running: Option<Running>,
}

/// A serving listener: the router's shutdown token, axum-server's handle, the task.
struct Running {
    token: CancellationToken,
    handle: axum_server::Handle<SocketAddr>,
    task: JoinHandle<()>,
}

impl DsServer {
    /// Starts the server on a free loopback port.
    pub async fn start(opts: DsServerOptions) -> Result<DsServer, EmbeddedError> {
        let mut config = Config::default();
        config.server.bind_address = "127.0.0.1:0".into();
        config.limits.max_memory_bytes = opts.max_total_bytes;
        config.limits.max_stream_bytes = opts.max_stream_bytes;
        config.transport.connection.sse_reconnect_interval_secs = opts.sse_reconnect_interval_secs;
        config.transport.connection.long_poll_timeout_secs = opts.long_poll_timeout_secs;
        if let Some(tls) = &opts.tls {
            let path = |p: &PathBuf| Some(p.display().to_string());
            config.transport.mode = if tls.client_ca.is_some() {
                TransportMode::Mtls
            } else {
                TransportMode::Tls
            };
            config.transport.tls.cert_path = path(&tls.cert);
            config.transport.tls.key_path = path(&tls.key);
            config.transport.tls.client_ca_path = tls.client_ca.as_ref().and_then(path);
        }
        let storage = Arc::new(InMemoryStorage::new(
            opts.max_total_bytes,
            opts.max_stream_bytes,
        ));
        let mut server = DsServer {
            storage,
            config,
            addr: SocketAddr::from(([127, 0, 0, 1], opts.port)),
            layer: opts.layer.clone(),
            running: None,
        };
        server.serve().await?;
        Ok(server)
    }

    async fn serve(&mut self) -> Result<(), EmbeddedError> {
        let listener = std::net::TcpListener::bind(self.addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| EmbeddedError::DsServer(format!("binding {}: {e}", self.addr)))?;
        self.addr = listener
            .local_addr()
            .map_err(|e| EmbeddedError::DsServer(e.to_string()))?;
        let token = CancellationToken::new();
        let mut app =
            build_router_with_ready(Arc::clone(&self.storage), &self.config, None, token.clone());
        if let Some(layer) = &self.layer {
            app = layer(app);
        }
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        let handle = axum_server::Handle::new();
        let started = if self.config.transport.mode.uses_tls() {
            crate::tls::provider();
            let tls = durable_streams_server::startup::build_tls_server_config(&self.config)
                .map_err(|e| EmbeddedError::DsServer(e.to_string()))?;
            let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
            axum_server::from_tcp_rustls(listener, tls).map(|server| {
                let server = server
                    .map(|tls| tls.acceptor(NoDelayAcceptor::new()))
                    .handle(handle.clone());
                tokio::spawn(async move { report(server.serve(service).await) })
            })
        } else {
            axum_server::from_tcp(listener).map(|server| {
                let server = server
                    .acceptor(NoDelayAcceptor::new())
                    .handle(handle.clone());
                tokio::spawn(async move { report(server.serve(service).await) })
            })
        };
        let task = started.map_err(|e| EmbeddedError::DsServer(e.to_string()))?;
        self.running = Some(Running {
            token,
            handle,
            task,
        });
        Ok(())
    }

    /// The base URL, e.g. `http://127.0.0.1:41234` (`https://` when serving TLS).
    pub fn url(&self) -> String {
        let scheme = if self.config.transport.mode.uses_tls() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The URL of one stream.
    pub fn stream_url(&self, name: &str) -> String {
        format!("{}/v1/stream/{name}", self.url())
    }

    /// Stops accepting connections and ends open ones (SSE included). Data is kept.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.token.cancel();
            running
                .handle
                .graceful_shutdown(Some(Duration::from_secs(1)));
            let abort = running.task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), running.task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// Serves again on the same port, with the same streams.
    pub async fn start_again(&mut self) -> Result<(), EmbeddedError> {
        if self.running.is_none() {
            self.serve().await?;
        }
        Ok(())
    }
}

impl Drop for DsServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.token.cancel();
            running.handle.shutdown();
            running.task.abort();
        }
    }
}

fn report(result: std::io::Result<()>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "embedded DS server stopped with an error");
    }
}
