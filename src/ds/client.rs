//! [`DsClient`]: one DS server, its streams, and the operations ds-sync needs on them.
//!
//! Each call is one HTTP request on a pooled keep-alive connection, bounded by the
//! per-request timeout from sending to the last body byte (SSE: to the response head only).
//! An SSE subscription is the exception: it opens a connection of its own (see
//! [`DsClient::subscribe`] for why).
//! `https://` servers are reached over rustls ([`DsAccess`] holds the trust anchors and the
//! client certificate), every socket has TCP keepalive ([`crate::keepalive`]), and every
//! request, SSE and HEAD included, carries the configured headers (`Authorization: Bearer`,
//! `--ds-header`).
//! Nothing is retried here: whether and when to retry depends on what the caller was doing
//! (a WAL writer replays with `Stream-Seq`, a reader reconnects from its committed offset),
//! so the client reports [`DsError::is_transient`] and the caller drives a
//! [`Backoff`](super::Backoff).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;
use tokio::time::Instant;

use super::DsError;
use super::access::DsAccess;
use super::body::Body;
use super::catch_up::CatchUpRead;
use super::reply::ServerReply;
use super::status::{
    AppendOutcome, Failure, STREAM_CLOSED, STREAM_NEXT_OFFSET, STREAM_SEQ, STREAM_UP_TO_DATE,
    classify_append, classify_status, header_is_true, header_str,
};
use super::subscription::SseSubscription;
use super::url::{encode_component, normalize_base, stream_url};
use crate::pg::error_chain;

/// Content type of every stream ds-sync creates and writes (DS JSON mode).
pub const JSON: &str = "application/json";
/// Content type of an SSE response.
pub const EVENT_STREAM: &str = "text/event-stream";
/// The offset before the first message.
pub const OFFSET_START: &str = "-1";

/// Timeouts and pool limits.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Bound on one request, from sending it to its last body byte (SSE: to its head).
    pub request_timeout: Duration,
    /// Idle keep-alive connections are closed after this long, before servers or proxies
    /// close them under a request.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per host.
    pub max_idle_per_host: usize,
    /// Largest SSE event accepted. One server sends a whole backlog as one data event, so
    /// this must exceed the largest backlog a reader may catch up on.
    pub max_sse_event_bytes: usize,
    /// TLS material and the headers every request carries.
    pub access: DsAccess,
}

impl ClientOptions {
    /// Default of `--request-timeout-ms`.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            pool_idle_timeout: Duration::from_secs(30),
            max_idle_per_host: 8,
            max_sse_event_bytes: 64 << 20,
            access: DsAccess::default(),
        }
    }
}

/// One catch-up read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadBatch {
    /// The messages from the requested offset on (JSON mode: one value per message).
    pub messages: Vec<Value>,
    /// Where the next read starts.
    pub next_offset: String,
    /// The read reached the tail (`Stream-Up-To-Date: true`); not the end of the stream.
    pub up_to_date: bool,
    /// The stream is closed and the read reached its end (`Stream-Closed: true`).
    pub closed: bool,
}

/// A client for one DS server. Cloning is cheap and clones share the connection pool.
#[derive(Clone)]
pub struct DsClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// SSE subscriptions only: a connection per subscription, never taken from the pool or
    /// given back to it (see [`DsClient::subscribe`]).
    sse: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: Arc<str>,
    headers: Arc<[(hyper::header::HeaderName, HeaderValue)]>,
    request_timeout: Duration,
    max_sse_event_bytes: usize,
}

impl fmt::Debug for DsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DsClient")
            .field("base", &self.base)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// A response read to its end.
struct Exchange {
    url: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl DsClient {
    /// A client for the server at `base_url` (`http://host:port`, optionally with a path
    /// prefix). No connection is made until the first request.
    ///
    /// # Errors
    ///
    /// [`DsError::InvalidUrl`] if the URL is not a usable `http://` or `https://` URL;
    /// [`DsError::Settings`] when the CA file or client certificate of an `https://` server
    /// cannot be read.
    pub fn new(base_url: &str, opts: ClientOptions) -> Result<DsClient, DsError> {
        let base = normalize_base(base_url)?;
        let connector = connector(&base, &opts)?;
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(opts.pool_idle_timeout)
            .pool_max_idle_per_host(opts.max_idle_per_host)
            .build(connector.clone());
        let sse = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Ok(DsClient {
            http,
            sse,
            base: base.into(),
            headers: opts.access.headers().to_vec().into(),
            request_timeout: opts.request_timeout,
            max_sse_event_bytes: opts.max_sse_event_bytes,
        })
    }

    /// The base URL, normalized (no trailing slash).
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `{base}/v1/stream/{name}`, each `/`-separated segment of the name percent-encoded.
    #[must_use]
    pub fn stream_url(&self, stream: &str) -> String {
        stream_url(&self.base, stream)
    }

    /// Creates the stream in JSON mode, or accepts it as it is if it already exists with
    /// that content type (PUT is an idempotent ensure: 201 or 200), so that appends can go.
    ///
    /// This is also what makes a 409 to an append with `Stream-Seq` unambiguous: a stream of
    /// another content type, which would answer appends with 409 too, is refused here.
    ///
    /// # Errors
    ///
    /// [`DsError::Rejected`] with status 409 if it exists with another configuration;
    /// [`DsError::Closed`] if it exists but is closed (the server answers 200 with
    /// `Stream-Closed: true`); [`DsError::Transient`] on 5xx, 429, timeouts and connection
    /// failures.
    pub async fn ensure_stream(&self, stream: &str) -> Result<(), DsError> {
        let req = self.request(Method::PUT, stream, self.stream_url(stream), Bytes::new())?;
        let ex = self.exchange(stream, with_json(req)).await?;
        classify_status(ex.status, &ex.headers).map_err(|f| ex.error(f, stream, 0))?;
        if header_is_true(&ex.headers, STREAM_CLOSED) {
            return Err(DsError::Closed {
                stream: stream.to_owned(),
                reply: None,
            });
        }
        Ok(())
    }

    /// [`ensure_stream`](Self::ensure_stream), returning the stream's tail offset: from the
    /// PUT's `Stream-Next-Offset` when the server sends one, else from a HEAD.
    ///
    /// # Errors
    ///
    /// As [`ensure_stream`](Self::ensure_stream) and [`head`](Self::head).
    pub async fn ensure_stream_tail(&self, stream: &str) -> Result<String, DsError> {
        let req = self.request(Method::PUT, stream, self.stream_url(stream), Bytes::new())?;
        let ex = self.exchange(stream, with_json(req)).await?;
        classify_status(ex.status, &ex.headers).map_err(|f| ex.error(f, stream, 0))?;
        if header_is_true(&ex.headers, STREAM_CLOSED) {
            return Err(DsError::Closed {
                stream: stream.to_owned(),
                reply: None,
            });
        }
        if let Some(tail) = header_str(&ex.headers, STREAM_NEXT_OFFSET) {
            return Ok(tail.to_owned());
        }
        match self.head(stream).await? {
            Some(tail) => Ok(tail),
            None => Err(DsError::NotFound {
                stream: stream.to_owned(),
                reply: None,
            }),
        }
    }

    /// Appends `body` (a JSON value or array; an array is stored as one message per
    /// element) in one atomic POST. With `seq`, the request carries `Stream-Seq: <seq>` and a
    /// refusal of that sequence value is [`AppendOutcome::AlreadyWritten`], not an error.
    ///
    /// # Errors
    ///
    /// [`DsError::NotFound`], [`DsError::TooLarge`], [`DsError::Closed`], [`DsError::Gone`],
    /// [`DsError::Rejected`] (e.g. 400 for `[]` or invalid JSON), [`DsError::Transient`].
    pub async fn append(
        &self,
        stream: &str,
        body: Bytes,
        seq: Option<&str>,
    ) -> Result<AppendOutcome, DsError> {
        let sent = body.len();
        let mut req =
            with_json(self.request(Method::POST, stream, self.stream_url(stream), body)?);
        if let Some(seq) = seq {
            let value = HeaderValue::from_str(seq).map_err(|_| DsError::InvalidRequest {
                stream: stream.to_owned(),
                reason: format!("Stream-Seq {seq:?} is not a valid header value"),
            })?;
            req.headers_mut().insert(STREAM_SEQ, value);
        }
        let ex = self.exchange(stream, req).await?;
        let outcome = classify_append(ex.status, &ex.headers, seq.is_some())
            .map_err(|f| ex.error(f, stream, sent))?;
        if outcome == AppendOutcome::AlreadyWritten {
            tracing::debug!(stream, seq, "append refused as already written");
        }
        Ok(outcome)
    }

    /// The stream's tail offset (`Stream-Next-Offset` of a HEAD), `None` if the stream does
    /// not exist.
    ///
    /// # Errors
    ///
    /// [`DsError::Gone`], [`DsError::Transient`], [`DsError::InvalidResponse`] when the
    /// server sends no offset, and the other refusals.
    pub async fn head(&self, stream: &str) -> Result<Option<String>, DsError> {
        let req = self.request(Method::HEAD, stream, self.stream_url(stream), Bytes::new())?;
        let ex = self.exchange(stream, req).await?;
        if ex.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        classify_status(ex.status, &ex.headers).map_err(|f| ex.error(f, stream, 0))?;
        ex.next_offset(stream).map(Some)
    }

    /// Whether the server answers: `GET {base}/healthz`. Any status below 500 counts (a
    /// server without that endpoint answers 404, which still shows it serves requests).
    ///
    /// # Errors
    ///
    /// [`DsError::Transient`] when the server cannot be reached, does not answer within the
    /// request timeout, or answers with a 5xx status.
    pub async fn ping(&self) -> Result<StatusCode, DsError> {
        let url = format!("{}/healthz", self.base);
        let req = self.request(Method::GET, "", url, Bytes::new())?;
        let ex = self.exchange("", req).await?;
        if ex.status.is_server_error() {
            return Err(ex.error(Failure::Transient, "", 0));
        }
        Ok(ex.status)
    }

    /// One catch-up read from `offset` (opaque; [`OFFSET_START`] for the beginning).
    ///
    /// # Errors
    ///
    /// [`DsError::NotFound`], [`DsError::Gone`] (offset before retention), [`DsError::Rejected`]
    /// (malformed offset), [`DsError::Transient`], [`DsError::InvalidResponse`] when the body
    /// is not a JSON array or the offset header is missing.
    pub async fn read(&self, stream: &str, offset: &str) -> Result<ReadBatch, DsError> {
        let url = format!(
            "{}?offset={}",
            self.stream_url(stream),
            encode_component(offset)
        );
        let req = self.request(Method::GET, stream, url, Bytes::new())?;
        let ex = self.exchange(stream, req).await?;
        classify_status(ex.status, &ex.headers).map_err(|f| ex.error(f, stream, 0))?;
        let next_offset = ex.next_offset(stream)?;
        let messages = if ex.status == StatusCode::NO_CONTENT || ex.body.is_empty() {
            Vec::new()
        } else {
            serde_json::from_slice::<Vec<Value>>(&ex.body)
                .map_err(|e| ex.invalid(stream, format!("read body is not a JSON array: {e}")))?
        };
        Ok(ReadBatch {
            messages,
            next_offset,
            up_to_date: header_is_true(&ex.headers, STREAM_UP_TO_DATE),
            closed: header_is_true(&ex.headers, STREAM_CLOSED),
        })
    }

    /// Every message of the stream, read from the beginning until up to date. For tests and
    /// tooling: it holds the whole stream in memory.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read), and [`DsError::InvalidResponse`] if a read that is not up to
    /// date does not advance the offset.
    pub async fn read_all(&self, stream: &str) -> Result<Vec<Value>, DsError> {
        let mut offset = OFFSET_START.to_owned();
        let mut all = Vec::new();
        loop {
            let batch = self.read(stream, &offset).await?;
            all.extend(batch.messages);
            if batch.up_to_date || batch.closed {
                return Ok(all);
            }
            if batch.next_offset == offset {
                return Err(DsError::InvalidResponse {
                    stream: stream.to_owned(),
                    url: self.stream_url(stream),
                    reason: format!(
                        "read from offset {offset:?} is not up to date yet did not advance"
                    ),
                });
            }
            offset = batch.next_offset;
        }
    }

    /// Opens an SSE subscription from `offset`. The response head is bounded by the request
    /// timeout, the body is not: the server keeps it open and closes it when it likes.
    ///
    /// The subscription opens a connection of its own, never an idle pooled one. A pooled
    /// connection has carried requests and their responses, so the kernel acknowledges what
    /// it receives with delayed ACKs; a server that leaves Nagle's algorithm on then holds
    /// each small SSE write until the previous one is acknowledged, and events arrive in
    /// bursts several milliseconds late (measured: `bench ingest-latency` p50 10 ms instead
    /// of 3 ms). A connection that only ever receives after its one request is acknowledged
    /// at once.
    ///
    /// # Errors
    ///
    /// The refusals of [`read`](Self::read), [`DsError::Transient`] when the server cannot
    /// be reached or does not answer in time, [`DsError::InvalidResponse`] when the answer is
    /// not `text/event-stream`.
    pub async fn subscribe(&self, stream: &str, offset: &str) -> Result<SseSubscription, DsError> {
        let url = format!(
            "{}?offset={}&live=sse",
            self.stream_url(stream),
            encode_component(offset)
        );
        let mut req = self.request(Method::GET, stream, url, Bytes::new())?;
        req.headers_mut()
            .insert(ACCEPT, HeaderValue::from_static(EVENT_STREAM));
        let deadline = Instant::now() + self.request_timeout;
        let (url, res) = self.send_on(&self.sse, stream, req, deadline).await?;
        if !res.status().is_success() {
            let ex = self.finish(stream, url, res, deadline).await?;
            let failure = classify_status(ex.status, &ex.headers)
                .err()
                .unwrap_or(Failure::Rejected);
            return Err(ex.error(failure, stream, 0));
        }
        let content_type = header_str(res.headers(), CONTENT_TYPE.as_str()).unwrap_or("");
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if !media_type.eq_ignore_ascii_case(EVENT_STREAM) {
            return Err(DsError::InvalidResponse {
                stream: stream.to_owned(),
                url,
                reason: format!(
                    "status {} with content type {content_type:?}, expected {EVENT_STREAM}",
                    res.status()
                ),
            });
        }
        Ok(SseSubscription::new(
            Body::new(stream, url, res.into_body()),
            self.max_sse_event_bytes,
            self.max_sse_event_bytes,
        ))
    }

    /// Opens a catch-up read from `offset` whose body is read as it arrives, split into
    /// messages (those over `max_message_bytes` are reported, not kept). The response head
    /// is awaited for `head_timeout` (a server may prepare a whole backlog before it
    /// answers), the body only by the caller's idle timeout: a backlog may take long to
    /// arrive.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    pub async fn read_stream(
        &self,
        stream: &str,
        offset: &str,
        max_message_bytes: usize,
        head_timeout: Duration,
    ) -> Result<CatchUpRead, DsError> {
        let url = format!(
            "{}?offset={}",
            self.stream_url(stream),
            encode_component(offset)
        );
        let req = self.request(Method::GET, stream, url.clone(), Bytes::new())?;
        let head_timeout = head_timeout.max(self.request_timeout);
        let res = match tokio::time::timeout(head_timeout, self.http.request(req)).await {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => return Err(transient(stream, url, error_chain(&e))),
            Err(_) => {
                let reason = format!("no response within {head_timeout:?}");
                return Err(transient(stream, url, reason));
            }
        };
        let deadline = Instant::now() + self.request_timeout;
        if !res.status().is_success() {
            let ex = self.finish(stream, url, res, deadline).await?;
            let failure = classify_status(ex.status, &ex.headers)
                .err()
                .unwrap_or(Failure::Rejected);
            return Err(ex.error(failure, stream, 0));
        }
        CatchUpRead::new(stream, url, res, max_message_bytes)
    }

    fn request(
        &self,
        method: Method,
        stream: &str,
        url: String,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, DsError> {
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .body(Full::new(body))
            .map_err(|e| DsError::InvalidRequest {
                stream: stream.to_owned(),
                reason: format!("cannot build a request for {url}: {e}"),
            })?;
        for (name, value) in self.headers.iter() {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        Ok(req)
    }

    /// Sends `req` and reads the whole response, all before `request_timeout` runs out.
    async fn exchange(&self, stream: &str, req: Request<Full<Bytes>>) -> Result<Exchange, DsError> {
        let method = req.method().clone();
        let deadline = Instant::now() + self.request_timeout;
        let (url, res) = self.send(stream, req, deadline).await?;
        let ex = self.finish(stream, url, res, deadline).await?;
        tracing::trace!(stream, %method, status = ex.status.as_u16(), "ds request");
        Ok(ex)
    }

    /// Sends `req` and waits for the response head until `deadline`.
    async fn send(
        &self,
        stream: &str,
        req: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<(String, Response<Incoming>), DsError> {
        self.send_on(&self.http, stream, req, deadline).await
    }

    /// [`send`](Self::send) through the given client (the pooled one, or the SSE one).
    async fn send_on(
        &self,
        http: &Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
        stream: &str,
        req: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<(String, Response<Incoming>), DsError> {
        let url = req.uri().to_string();
        match tokio::time::timeout_at(deadline, http.request(req)).await {
            Ok(Ok(res)) => Ok((url, res)),
            Ok(Err(e)) => Err(request_error(stream, url, &e)),
            Err(_) => {
                let reason = format!("no response within {:?}", self.request_timeout);
                Err(transient(stream, url, reason))
            }
        }
    }

    /// Reads the body of `res` until `deadline`.
    async fn finish(
        &self,
        stream: &str,
        url: String,
        res: Response<Incoming>,
        deadline: Instant,
    ) -> Result<Exchange, DsError> {
        let (parts, body) = res.into_parts();
        match tokio::time::timeout_at(deadline, body.collect()).await {
            Ok(Ok(collected)) => Ok(Exchange {
                url,
                status: parts.status,
                headers: parts.headers,
                body: collected.to_bytes(),
            }),
            Ok(Err(e)) => match tls_failure(stream, &url, &e) {
                Some(tls) => Err(tls),
                None => Err(transient(
                    stream,
                    url,
                    format!("reading the body: {}", error_chain(&e)),
                )),
            },
            Err(_) => {
                let reason = format!("body not complete within {:?}", self.request_timeout);
                Err(transient(stream, url, reason))
            }
        }
    }
}

impl Exchange {
    /// The error for a refused request; `sent_bytes` is the request body's size. What the
    /// server said goes into the message; the failure was decided from the status alone.
    fn error(&self, failure: Failure, stream: &str, sent_bytes: usize) -> DsError {
        let stream = stream.to_owned();
        let reply = || Box::new(ServerReply::parse(self.status, &self.headers, &self.body));
        match failure {
            Failure::NotFound => DsError::NotFound {
                stream,
                reply: Some(reply()),
            },
            Failure::TooLarge => DsError::TooLarge {
                stream,
                bytes: sent_bytes,
                reply: Some(reply()),
            },
            Failure::Closed => DsError::Closed {
                stream,
                reply: Some(reply()),
            },
            Failure::Gone => DsError::Gone {
                stream,
                reply: Some(reply()),
            },
            Failure::Rejected => DsError::Rejected {
                stream,
                reply: reply(),
            },
            Failure::Transient => DsError::Transient {
                stream,
                url: self.url.clone(),
                reason: reply().to_string(),
            },
        }
    }

    fn invalid(&self, stream: &str, reason: String) -> DsError {
        DsError::InvalidResponse {
            stream: stream.to_owned(),
            url: self.url.clone(),
            reason,
        }
    }

    /// The `Stream-Next-Offset` header, which every successful response carries.
    fn next_offset(&self, stream: &str) -> Result<String, DsError> {
        header_str(&self.headers, STREAM_NEXT_OFFSET)
            .map(str::to_owned)
            .ok_or_else(|| {
                let reason = format!("status {} without a Stream-Next-Offset header", self.status);
                self.invalid(stream, reason)
            })
    }
}

/// The connector: TCP with keepalive, and rustls for `https://` bases.
fn connector(base: &str, opts: &ClientOptions) -> Result<HttpsConnector<HttpConnector>, DsError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(opts.request_timeout));
    http.set_keepalive(Some(crate::keepalive::IDLE));
    http.set_keepalive_interval(Some(crate::keepalive::INTERVAL));
    http.set_keepalive_retries(Some(crate::keepalive::RETRIES));
    let tls = if base.starts_with("https://") {
        opts.access.tls_config().map_err(|e| DsError::Settings {
            reason: e.to_string(),
        })?
    } else {
        // Never used: plain http bases never start a handshake.
        crate::tls::client_config(
            rustls::RootCertStore::empty(),
            crate::tls::Verify::Full,
            None,
        )
        .map_err(|e| DsError::Settings {
            reason: e.to_string(),
        })?
    };
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// A failed request: a certificate problem stops (someone must change a certificate or a
/// setting), everything else is worth a retry.
fn request_error(stream: &str, url: String, e: &hyper_util::client::legacy::Error) -> DsError {
    tls_failure(stream, &url, e).unwrap_or_else(|| transient(stream, url, error_chain(e)))
}

fn tls_failure(stream: &str, url: &str, e: &(dyn std::error::Error + 'static)) -> Option<DsError> {
    let found = crate::tls::find_rustls_error(e)?;
    crate::tls::is_certificate_error(found).then(|| DsError::Tls {
        stream: stream.to_owned(),
        url: url.to_owned(),
        reason: crate::tls::describe_rustls(found),
    })
}

fn with_json(mut req: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    req.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    req
}

pub(crate) fn transient(stream: &str, url: String, reason: String) -> DsError {
    DsError::Transient {
        stream: stream.to_owned(),
        url,
        reason,
    }
}
