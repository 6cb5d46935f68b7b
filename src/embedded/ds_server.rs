//! A Durable Streams server in this process: the `durable-streams-server` crate's own router
//! and in-memory storage, served on a loopback port.
//!
//! The storage outlives the listener, so `stop` followed by `start_again` simulates an outage
//! that loses connections but not data, on the same URL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use durable_streams_server::{Config, InMemoryStorage, build_router_with_ready};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::EmbeddedError;

/// Limits and timings of the embedded server.
#[derive(Debug, Clone)]
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
        }
    }
}

/// A running (or stopped, restartable) in-process DS server.
pub struct DsServer {
    storage: Arc<InMemoryStorage>,
    config: Config,
    addr: SocketAddr,
    running: Option<(CancellationToken, JoinHandle<()>)>,
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
        let storage = Arc::new(InMemoryStorage::new(
            opts.max_total_bytes,
            opts.max_stream_bytes,
        ));
        let mut server = DsServer {
            storage,
            config,
            addr: SocketAddr::from(([127, 0, 0, 1], opts.port)),
            running: None,
        };
        server.serve().await?;
        Ok(server)
    }

    async fn serve(&mut self) -> Result<(), EmbeddedError> {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|e| EmbeddedError::DsServer(format!("binding {}: {e}", self.addr)))?;
        self.addr = listener
            .local_addr()
            .map_err(|e| EmbeddedError::DsServer(e.to_string()))?;
        let token = CancellationToken::new();
        let app =
            build_router_with_ready(Arc::clone(&self.storage), &self.config, None, token.clone());
        let shutdown = token.clone();
        let handle = tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            let result = axum::serve(listener, service)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "embedded DS server stopped with an error");
            }
        });
        self.running = Some((token, handle));
        Ok(())
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of one stream.
    pub fn stream_url(&self, name: &str) -> String {
        format!("{}/v1/stream/{name}", self.url())
    }

    /// Stops accepting connections and ends open ones (SSE included). Data is kept.
    pub async fn stop(&mut self) {
        if let Some((token, handle)) = self.running.take() {
            token.cancel();
            let abort = handle.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), handle)
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
        if let Some((token, handle)) = self.running.take() {
            token.cancel();
            handle.abort();
        }
    }
}
