//! The one error type of the DS client, decided from status codes and headers where the
//! response arrives, so that callers only ask one question: retry ([`DsError::is_transient`])
//! or stop and tell the operator ([`DsError::hint`]). Every refusal carries what the server
//! said ([`ServerReply`]: its problem details or its text), quoted in the message.

use super::reply::{ServerReply, TooLargeKind};

/// Longest server error body quoted in a [`DsError::Rejected`] message, in characters.
pub const BODY_PREVIEW_CHARS: usize = 200;

/// A failed DS operation. Every variant names the stream it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DsError {
    /// 404: the stream does not exist (yet).
    #[error("stream {stream:?} does not exist{}", said(reply))]
    NotFound {
        stream: String,
        reply: Option<Box<ServerReply>>,
    },
    /// 413: the append would exceed a size limit of the server: the stream's, the server's,
    /// or the request's.
    #[error(
        "stream {stream:?} refused an append of {bytes} bytes as too large{}",
        said(reply)
    )]
    TooLarge {
        stream: String,
        bytes: usize,
        reply: Option<Box<ServerReply>>,
    },
    /// 409 with `Stream-Closed: true` (or a PUT answered with it): no more appends.
    #[error("stream {stream:?} is closed{}", said(reply))]
    Closed {
        stream: String,
        reply: Option<Box<ServerReply>>,
    },
    /// 410: the stream was deleted, or the offset lies before its retention window.
    #[error(
        "stream {stream:?} is gone (deleted, or the offset is before its retention window){}",
        said(reply)
    )]
    Gone {
        stream: String,
        reply: Option<Box<ServerReply>>,
    },
    /// Any other 4xx (and unexpected 1xx/3xx): retrying the same request cannot succeed.
    #[error("stream {stream:?}: the server refused the request: {reply}")]
    Rejected {
        stream: String,
        reply: Box<ServerReply>,
    },
    /// 5xx, 408, 429, timeouts, refused or reset connections, broken bodies: retry later.
    #[error("stream {stream:?}: transient failure at {url}: {reason}")]
    Transient {
        stream: String,
        url: String,
        reason: String,
    },
    /// The response does not follow the protocol (missing `Stream-Next-Offset`, a read body
    /// that is not a JSON array, an SSE control event without an offset, ...).
    #[error("stream {stream:?}: unexpected response from {url}: {reason}")]
    InvalidResponse {
        stream: String,
        url: String,
        reason: String,
    },
    /// An SSE event larger than the client's limit; its data was not kept.
    #[error(
        "stream {stream:?}: an SSE {event_type:?} event of {size} bytes exceeds the limit of \
         {limit} bytes"
    )]
    EventTooLarge {
        stream: String,
        event_type: String,
        size: usize,
        limit: usize,
        /// The first bytes of the data (the SSE parser's preview), for dead letters.
        preview: bytes::Bytes,
    },
    /// The caller passed something that cannot be sent (e.g. a `Stream-Seq` value that is
    /// not a valid header value).
    #[error("stream {stream:?}: invalid request: {reason}")]
    InvalidRequest { stream: String, reason: String },
    /// The DS server base URL cannot be used.
    #[error("invalid DS server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A TLS handshake failed on a certificate: the server's (not trusted, wrong name,
    /// expired) or ours (missing or refused for mutual TLS).
    #[error("stream {stream:?}: TLS to {url} failed: {reason}")]
    Tls {
        stream: String,
        url: String,
        reason: String,
    },
    /// The TLS or header settings for the DS server cannot be used.
    #[error("DS server settings: {reason}")]
    Settings { reason: String },
}

impl DsError {
    /// Whether the same request may succeed later (server restarting, overloaded, network
    /// blip). Everything else needs a change somewhere before a retry makes sense.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, DsError::Transient { .. })
    }

    /// The stream the error concerns (`None` for a bad base URL).
    #[must_use]
    pub fn stream(&self) -> Option<&str> {
        match self {
            DsError::NotFound { stream, .. }
            | DsError::TooLarge { stream, .. }
            | DsError::Closed { stream, .. }
            | DsError::Gone { stream, .. }
            | DsError::Rejected { stream, .. }
            | DsError::Transient { stream, .. }
            | DsError::InvalidResponse { stream, .. }
            | DsError::EventTooLarge { stream, .. }
            | DsError::InvalidRequest { stream, .. }
            | DsError::Tls { stream, .. } => Some(stream),
            DsError::InvalidUrl { .. } | DsError::Settings { .. } => None,
        }
    }

    /// What the server said, for refusals that came with a response.
    #[must_use]
    pub fn reply(&self) -> Option<&ServerReply> {
        match self {
            DsError::NotFound { reply, .. }
            | DsError::TooLarge { reply, .. }
            | DsError::Closed { reply, .. }
            | DsError::Gone { reply, .. } => reply.as_deref(),
            DsError::Rejected { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// What to do about it, as a full sentence.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            DsError::NotFound { .. } => {
                "Create the stream first (ds-sync creates the streams it writes with PUT), or check the stream name."
            }
            DsError::TooLarge { reply, .. } => return Some(too_large_hint(reply.as_deref())),
            DsError::Closed { .. } => {
                "A closed stream accepts no more data: write to a new stream, or delete and recreate this one."
            }
            DsError::Gone { .. } => {
                "The stream was deleted or its data expired: recreate the stream and re-snapshot, or resume readers from offset -1."
            }
            DsError::Rejected { reply, .. } => match reply.status {
                409 => {
                    "The stream exists with another configuration (content type or TTL): delete it or use another stream name."
                }
                401 | 403 => {
                    "The server refused access: give its credentials with --ds-token (sent as a bearer token) or --ds-header 'Name: value', and check the DS server URL."
                }
                _ => {
                    "The server found the request invalid; check the stream name and the server's protocol version, and report what the server said if it persists."
                }
            },
            DsError::Transient { .. } => return None,
            DsError::InvalidResponse { .. } => {
                "Check that ds_server_url points at a Durable Streams server and not at another service or proxy."
            }
            DsError::EventTooLarge { .. } => {
                "Raise ClientOptions::max_sse_event_bytes, or read the stream in catch-up mode, which has no per-event limit."
            }
            DsError::InvalidRequest { .. } => {
                "This is a bug in the caller: Stream-Seq values must be visible ASCII."
            }
            DsError::InvalidUrl { .. } => {
                "Give ds_server_url as http://host:port or https://host:port, optionally with a path prefix and without a query."
            }
            DsError::Tls { .. } => {
                "Give --ds-ca-file the PEM file of the CA that signed the server's certificate (the system's trust store is used without it), check the host name in the DS server URL, and for mutual TLS give --ds-client-cert and --ds-client-key."
            }
            DsError::Settings { .. } => {
                "Check --ds-ca-file, --ds-client-cert, --ds-client-key and --ds-header (or their environment variables and config-file keys)."
            }
        };
        Some(hint.to_owned())
    }
}

/// `; the server said: <reply>` when there is a reply, for messages.
fn said(reply: &Option<Box<ServerReply>>) -> String {
    reply
        .as_ref()
        .map(|r| format!("; the server said: {r}"))
        .unwrap_or_default()
}

/// The hint for a 413, chosen by what the server said it ran out of: a full stream needs a
/// higher stream limit (smaller requests would not help), a large request a smaller batch.
#[must_use]
pub fn too_large_hint(reply: Option<&ServerReply>) -> String {
    let kind = reply.map_or(TooLargeKind::Unknown, ServerReply::too_large_kind);
    match kind {
        TooLargeKind::StreamFull => "The stream is full: the server keeps at most a fixed number of bytes per stream (durable-streams-server: DS_LIMITS__MAX_STREAM_BYTES, 10 MiB by default), and the size of this request is not the problem. Raise that limit (with in-memory storage also DS_LIMITS__MAX_MEMORY_BYTES), give the stream a retention the server enforces, or spread the table over several streams with --route.",
        TooLargeKind::ServerFull => "The server's storage for all streams together is full (durable-streams-server: DS_LIMITS__MAX_MEMORY_BYTES): raise it, or delete streams that are no longer read.",
        TooLargeKind::Request => "The request was larger than the server (or a proxy in front of it) accepts in one request: lower --batch-max-bytes, or raise that request size limit.",
        TooLargeKind::Unknown => "The server did not say which limit was hit. If the stream already holds a lot, it is likely its per-stream size limit (durable-streams-server: DS_LIMITS__MAX_STREAM_BYTES, 10 MiB by default); otherwise the request size limit of the server or a proxy in front of it.",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, detail: &str) -> Option<Box<ServerReply>> {
        Some(Box::new(ServerReply {
            status,
            code: Some("PAYLOAD_TOO_LARGE".into()),
            detail: Some(detail.into()),
            ..ServerReply::default()
        }))
    }

    #[test]
    fn only_transient_errors_are_transient() {
        let transient = DsError::Transient {
            stream: "s".into(),
            url: "http://h/v1/stream/s".into(),
            reason: "connection refused".into(),
        };
        assert!(transient.is_transient());
        assert!(transient.hint().is_none());
        let closed = DsError::Closed {
            stream: "s".into(),
            reply: None,
        };
        assert!(!closed.is_transient());
        assert!(closed.hint().is_some_and(|h| h.ends_with('.')));
    }

    #[test]
    fn messages_are_lowercase_name_the_stream_and_quote_the_server() {
        let errors = [
            DsError::NotFound {
                stream: "a/b".into(),
                reply: None,
            },
            DsError::TooLarge {
                stream: "a/b".into(),
                bytes: 5,
                reply: reply(413, "Stream size limit exceeded"),
            },
            DsError::Gone {
                stream: "a/b".into(),
                reply: None,
            },
            DsError::Rejected {
                stream: "a/b".into(),
                reply: Box::new(ServerReply {
                    status: 400,
                    text: Some("bad".into()),
                    ..ServerReply::default()
                }),
            },
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(msg.starts_with("stream \"a/b\""), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
            assert_eq!(e.stream(), Some("a/b"));
            if let Some(reply) = e.reply() {
                assert!(msg.ends_with(&reply.to_string()), "{msg}");
            }
        }
    }

    #[test]
    fn rejected_hint_depends_on_status() {
        let rejected = |status| DsError::Rejected {
            stream: "s".into(),
            reply: Box::new(ServerReply {
                status,
                ..ServerReply::default()
            }),
        };
        let conflict = rejected(409).hint().unwrap_or_default();
        assert!(conflict.contains("another configuration"), "{conflict}");
        let bad = rejected(400).hint().unwrap_or_default();
        assert!(bad.contains("invalid"), "{bad}");
    }

    #[test]
    fn too_large_hint_fits_the_limit_the_server_named() {
        let hint = |detail: &str| {
            DsError::TooLarge {
                stream: "s".into(),
                bytes: 1166,
                reply: reply(413, detail),
            }
            .hint()
            .unwrap_or_default()
        };
        let full = hint("Stream size limit exceeded");
        assert!(
            full.contains("stream is full") && full.contains("MAX_STREAM_BYTES"),
            "{full}"
        );
        assert!(full.contains("not the problem"), "{full}");
        let request = hint("request body length limit exceeded");
        assert!(request.contains("--batch-max-bytes"), "{request}");
        let unknown = too_large_hint(None);
        assert!(unknown.contains("did not say"), "{unknown}");
    }
}
