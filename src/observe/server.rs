//! The HTTP endpoints on `--listen ADDR`, and the pollers that run beside them.
//!
//! * `GET /metrics`: every metric, Prometheus text format 0.0.4, or OpenMetrics when the
//!   scraper's `Accept` asks for `application/openmetrics-text`.
//! * `GET /livez`: 200 whenever the runtime answers (the process works; a wedged runtime
//!   answers nothing, which is what a liveness probe detects).
//! * `GET /readyz`: 200 when ready, 503 otherwise, with a JSON body saying which check is
//!   not ready and why (see [`super::readiness`]).

use std::net::SocketAddr;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ds::DsClient;
use crate::pg::PgTarget;

use super::registry::Format;

/// What the observer watches.
#[derive(Debug, Clone)]
pub struct ObserveConfig {
    /// `--listen`: `IP:PORT` or `HOST:PORT`; port 0 picks a free one.
    pub listen: String,
    /// Capture's database and slot, when capture runs.
    pub slot: Option<(PgTarget, String)>,
    /// The client whose server is probed (capture's, else ingest's).
    pub ds: DsClient,
    /// Ingest's client, when ingest runs: its subscriptions' tails are read.
    pub ingest_ds: Option<DsClient>,
    /// Whether capture runs (readiness requires it to stream).
    pub capture: bool,
}

/// Errors of the observer.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("cannot listen on {addr} (--listen): {reason}")]
    Bind { addr: String, reason: String },
}

impl ObserveError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ObserveError::Bind { .. } => Some(
                "Choose a free IP:PORT for --listen (DS_SYNC_LISTEN), e.g. 0.0.0.0:9464 in a container or 127.0.0.1:9464 on a host.".into(),
            ),
        }
    }
}

/// The running endpoints and pollers; stopped when dropped.
#[derive(Debug)]
pub struct Observer {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Observer {
    /// Binds `cfg.listen`, then serves the endpoints and starts the pollers. `shutdown`
    /// (the process's graceful stop) turns readiness off at once.
    pub async fn start(
        cfg: ObserveConfig,
        shutdown: &CancellationToken,
    ) -> Result<Observer, ObserveError> {
        let bind_error = |reason: String| ObserveError::Bind {
            addr: cfg.listen.clone(),
            reason,
        };
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .map_err(|e| bind_error(e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| bind_error(e.to_string()))?;
        super::readiness().enable(cfg.capture, cfg.ingest_ds.is_some());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let serve_stop = stop.clone();
        tasks.spawn(async move {
            let result = axum::serve(listener, router())
                .with_graceful_shutdown(serve_stop.cancelled_owned())
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "the metrics and health endpoints stopped");
            }
        });
        let (s, shutdown) = (stop.clone(), shutdown.clone());
        tasks.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => super::readiness().stopping(),
                () = s.cancelled() => {}
            }
        });
        tasks.spawn(super::pollers::probe_ds(cfg.ds, stop.clone()));
        if let Some((target, slot)) = cfg.slot {
            tasks.spawn(super::pollers::poll_slot(target, slot, stop.clone()));
        }
        if let Some(ds) = cfg.ingest_ds {
            tasks.spawn(super::pollers::poll_tails(ds, stop.clone()));
        }
        tracing::info!("metrics and health endpoints on http://{addr} (/metrics, /livez, /readyz)");
        Ok(Observer { addr, stop, tasks })
    }

    /// The address actually bound (the port `:0` picked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and polling.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.cancel();
        self.tasks.abort_all();
    }
}

fn router() -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
}

async fn metrics(headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    let body = super::metrics().encode(format);
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

async fn livez() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
        .into_response()
}

async fn readyz() -> Response {
    let state = super::readiness().state();
    let report = super::readiness::report(&state, std::time::Instant::now());
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&report).unwrap_or_else(|_| "{}".into());
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body + "\n",
    )
        .into_response()
}
