//! The one error type of the DS client, decided from status codes and headers where the
//! response arrives, so that callers only ask one question: retry ([`DsError::is_transient`])
//! or stop and tell the operator ([`DsError::hint`]).

/// Longest server error body quoted in a [`DsError::Rejected`] message, in characters.
pub const BODY_PREVIEW_CHARS: usize = 200;

/// A failed DS operation. Every variant names the stream it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DsError {
    /// 404: the stream does not exist (yet).
    #[error("stream {stream:?} does not exist")]
    NotFound { stream: String },
    /// 413: the append would exceed the server's size limit for the stream or the server.
    #[error("stream {stream:?} refused an append of {bytes} bytes as too large")]
    TooLarge { stream: String, bytes: usize },
    /// 409 with `Stream-Closed: true`: the stream takes no more appends.
    #[error("stream {stream:?} is closed")]
    Closed { stream: String },
    /// 410: the stream was deleted, or the offset lies before its retention window.
    #[error("stream {stream:?} is gone (deleted, or the offset is before its retention window)")]
    Gone { stream: String },
    /// Any other 4xx (and unexpected 1xx/3xx): retrying the same request cannot succeed.
    #[error(
        "stream {stream:?}: the server refused the request with status {status}: {body_preview}"
    )]
    Rejected {
        stream: String,
        status: u16,
        body_preview: String,
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
            DsError::NotFound { stream }
            | DsError::TooLarge { stream, .. }
            | DsError::Closed { stream }
            | DsError::Gone { stream }
            | DsError::Rejected { stream, .. }
            | DsError::Transient { stream, .. }
            | DsError::InvalidResponse { stream, .. }
            | DsError::EventTooLarge { stream, .. }
            | DsError::InvalidRequest { stream, .. }
            | DsError::Tls { stream, .. } => Some(stream),
            DsError::InvalidUrl { .. } | DsError::Settings { .. } => None,
        }
    }

    /// What to do about it, as a full sentence.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            DsError::NotFound { .. } => {
                "Create the stream first (ds-sync creates the streams it writes with PUT), or check the stream name."
            }
            DsError::TooLarge { .. } => {
                "Send smaller batches, or raise the server's limits (for durable-streams-server: DS_LIMITS__MAX_STREAM_BYTES and DS_LIMITS__MAX_MEMORY_BYTES)."
            }
            DsError::Closed { .. } => {
                "A closed stream accepts no more data: write to a new stream, or delete and recreate this one."
            }
            DsError::Gone { .. } => {
                "The stream was deleted or its data expired: recreate the stream and re-snapshot, or resume readers from offset -1."
            }
            DsError::Rejected { status: 409, .. } => {
                "The stream exists with another configuration (content type or TTL): delete it or use another stream name."
            }
            DsError::Rejected {
                status: 401 | 403, ..
            } => {
                "The server refused access: give its credentials with --ds-token (sent as a bearer token) or --ds-header 'Name: value', and check the DS server URL."
            }
            DsError::Rejected { .. } => {
                "The server found the request invalid; check the stream name and the server's protocol version, and report the body above if it persists."
            }
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

/// `body` as one line of at most [`BODY_PREVIEW_CHARS`] characters, for error messages.
pub(crate) fn body_preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .take(BODY_PREVIEW_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > BODY_PREVIEW_CHARS {
        out.push_str("...");
    }
    if out.trim().is_empty() {
        out = "(empty body)".to_owned();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_errors_are_transient() {
        let transient = DsError::Transient {
            stream: "s".into(),
            url: "http://h/v1/stream/s".into(),
            reason: "connection refused".into(),
        };
        assert!(transient.is_transient());
        assert!(transient.hint().is_none());
        let closed = DsError::Closed { stream: "s".into() };
        assert!(!closed.is_transient());
        assert!(closed.hint().is_some_and(|h| h.ends_with('.')));
    }

    #[test]
    fn messages_are_lowercase_and_name_the_stream() {
        let errors = [
            DsError::NotFound {
                stream: "a/b".into(),
            },
            DsError::TooLarge {
                stream: "a/b".into(),
                bytes: 5,
            },
            DsError::Gone {
                stream: "a/b".into(),
            },
            DsError::Rejected {
                stream: "a/b".into(),
                status: 400,
                body_preview: "bad".into(),
            },
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(msg.starts_with("stream \"a/b\""), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
            assert_eq!(e.stream(), Some("a/b"));
        }
    }

    #[test]
    fn rejected_hint_depends_on_status() {
        let rejected = |status| DsError::Rejected {
            stream: "s".into(),
            status,
            body_preview: String::new(),
        };
        let conflict = rejected(409).hint().unwrap_or_default();
        assert!(conflict.contains("another configuration"), "{conflict}");
        let bad = rejected(400).hint().unwrap_or_default();
        assert!(bad.contains("invalid"), "{bad}");
    }

    #[test]
    fn body_preview_is_one_bounded_line() {
        assert_eq!(body_preview(b"line1\nline2"), "line1 line2");
        assert_eq!(body_preview(b""), "(empty body)");
        let long = body_preview("é".repeat(500).as_bytes());
        assert_eq!(long.chars().count(), BODY_PREVIEW_CHARS + 3);
        assert!(long.ends_with("..."));
    }
}
