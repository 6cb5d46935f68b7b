//! What a DS server said when it refused a request, read from the response body for the
//! error message only. Pure: status, headers and body in, a [`ServerReply`] out.
//!
//! `durable-streams-server` answers with RFC 9457 problem details
//! (`application/problem+json`: `type`, `title`, `status`, `code`, `detail`); the other
//! servers answer with a line of plain text. Decisions (retry, split, stop) are taken from
//! the status code and headers elsewhere ([`super::status`]); the reply only makes the
//! message say what the server said, and picks the hint that fits a 413
//! ([`ServerReply::too_large_kind`]), where the status alone cannot tell a full stream from
//! a request over the size limit.

use std::fmt;

use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderMap};
use serde_json::Value;

use super::error::BODY_PREVIEW_CHARS;

/// The media type of RFC 9457 problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A refusal as the server worded it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerReply {
    /// The HTTP status code.
    pub status: u16,
    /// Problem details' `title`.
    pub title: Option<String>,
    /// Problem details' `code` (e.g. `PAYLOAD_TOO_LARGE`).
    pub code: Option<String>,
    /// Problem details' `type` (a URI reference, e.g. `/errors/payload-too-large`).
    pub problem_type: Option<String>,
    /// Problem details' `detail` (e.g. `Stream size limit exceeded`).
    pub detail: Option<String>,
    /// The body as one bounded line, when it was not problem details.
    pub text: Option<String>,
}

/// Which limit a 413 hit, as far as the server's words tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooLargeKind {
    /// The stream holds as much as the server keeps for one stream.
    StreamFull,
    /// The server's storage for all streams together is full.
    ServerFull,
    /// The request body was over the server's (or a proxy's) request limit.
    Request,
    /// The server did not say.
    Unknown,
}

impl ServerReply {
    /// Reads a refused response. Problem details are taken from a body that is
    /// `application/problem+json`, or any JSON object carrying one of their fields (some
    /// servers label them `application/json`); anything else is kept as bounded text.
    pub fn parse(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ServerReply {
        let mut reply = ServerReply {
            status: status.as_u16(),
            ..ServerReply::default()
        };
        let declared = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with(PROBLEM_JSON));
        if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) {
            let field = |name: &str| fields.get(name).and_then(Value::as_str).map(bounded);
            reply.title = field("title");
            reply.code = field("code");
            reply.problem_type = field("type");
            reply.detail = field("detail");
            let any = reply.title.is_some() || reply.code.is_some() || reply.detail.is_some();
            if declared || any {
                return reply;
            }
        }
        let text = bounded(&String::from_utf8_lossy(body));
        reply.text = (!text.trim().is_empty()).then_some(text);
        reply
    }

    /// Which limit a 413 hit, from the server's own words (`code`, `title`, `detail`, text).
    pub fn too_large_kind(&self) -> TooLargeKind {
        let said = [&self.code, &self.title, &self.detail, &self.text]
            .into_iter()
            .flatten()
            .map(|s| s.to_ascii_lowercase().replace('_', " "))
            .collect::<Vec<_>>()
            .join(" ");
        if said.contains("stream size") || said.contains("stream limit") {
            TooLargeKind::StreamFull
        } else if said.contains("memory limit") || said.contains("storage") {
            TooLargeKind::ServerFull
        } else if said.contains("request") || said.contains("body") || said.contains("length limit")
        {
            TooLargeKind::Request
        } else {
            TooLargeKind::Unknown
        }
    }
}

impl fmt::Display for ServerReply {
    /// `413 Payload Too Large: Stream size limit exceeded (code PAYLOAD_TOO_LARGE, type
    /// /errors/payload-too-large)`, or `409 Conflict: Sequence conflict` for plain text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        let reason = StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason());
        match (&self.title, reason) {
            (Some(title), _) => write!(f, " {title}")?,
            (None, Some(reason)) => write!(f, " {reason}")?,
            (None, None) => {}
        }
        match (&self.detail, &self.text) {
            (Some(detail), _) => write!(f, ": {detail}")?,
            (None, Some(text)) => write!(f, ": {text}")?,
            (None, None) if self.code.is_none() => write!(f, " (empty body)")?,
            (None, None) => {}
        }
        match (&self.code, &self.problem_type) {
            (Some(code), Some(kind)) => write!(f, " (code {code}, type {kind})"),
            (Some(code), None) => write!(f, " (code {code})"),
            (None, Some(kind)) => write!(f, " (type {kind})"),
            (None, None) => Ok(()),
        }
    }
}

/// One line of at most [`BODY_PREVIEW_CHARS`] characters.
fn bounded(text: &str) -> String {
    let mut out: String = text
        .trim()
        .chars()
        .take(BODY_PREVIEW_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.trim().chars().count() > BODY_PREVIEW_CHARS {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn parse(status: u16, content_type: Option<&'static str>, body: &str) -> ServerReply {
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        ServerReply::parse(
            StatusCode::from_u16(status).unwrap(),
            &headers,
            body.as_bytes(),
        )
    }

    #[test]
    fn problem_details_are_read_field_by_field() {
        let reply = parse(
            413,
            Some("application/problem+json"),
            r#"{"type":"/errors/payload-too-large","title":"Payload Too Large","status":413,
                "code":"PAYLOAD_TOO_LARGE","detail":"Stream size limit exceeded",
                "instance":"/v1/stream/pg-items"}"#,
        );
        assert_eq!(reply.code.as_deref(), Some("PAYLOAD_TOO_LARGE"));
        assert_eq!(reply.detail.as_deref(), Some("Stream size limit exceeded"));
        assert_eq!(reply.text, None);
        assert_eq!(
            reply.to_string(),
            "413 Payload Too Large: Stream size limit exceeded \
             (code PAYLOAD_TOO_LARGE, type /errors/payload-too-large)"
        );
        assert_eq!(reply.too_large_kind(), TooLargeKind::StreamFull);
    }

    #[test]
    fn plain_text_is_kept_as_one_bounded_line() {
        let reply = parse(409, Some("text/plain"), "Sequence conflict\n");
        assert_eq!(reply.to_string(), "409 Conflict: Sequence conflict");
        let long = parse(400, None, &"x\n".repeat(500));
        let text = long.text.unwrap();
        assert!(!text.contains('\n') && text.ends_with("..."), "{text}");
        assert_eq!(
            parse(404, None, "").to_string(),
            "404 Not Found (empty body)"
        );
        let json_not_problem = parse(400, Some("application/json"), r#"{"a":1}"#);
        assert_eq!(json_not_problem.text.as_deref(), Some(r#"{"a":1}"#));
    }

    #[test]
    fn the_kind_of_413_follows_the_servers_words() {
        let kind = |detail: &str| {
            let body = serde_json::json!({"code": "PAYLOAD_TOO_LARGE", "detail": detail});
            parse(413, Some(PROBLEM_JSON), &body.to_string()).too_large_kind()
        };
        assert_eq!(kind("Stream size limit exceeded"), TooLargeKind::StreamFull);
        assert_eq!(kind("Memory limit exceeded"), TooLargeKind::ServerFull);
        assert_eq!(
            parse(413, None, "length limit exceeded").too_large_kind(),
            TooLargeKind::Request
        );
        assert_eq!(
            parse(413, None, "Request Entity Too Large").too_large_kind(),
            TooLargeKind::Request
        );
        assert_eq!(parse(413, None, "").too_large_kind(), TooLargeKind::Unknown);
    }
}
