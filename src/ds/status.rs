//! What a DS response means, from its status code and headers alone: no I/O, no error text.
//!
//! Servers word their errors differently (one answers `application/problem+json` with a
//! `code`, the others plain text), so the body is only ever quoted, never read for meaning.
//! The one ambiguous answer is 409 to an append: it means "closed" when the response carries
//! `Stream-Closed: true`, "content type mismatch" or "`Stream-Seq` not above the last one"
//! otherwise. A writer that sends `Stream-Seq` and created the stream itself with the same
//! content type (a PUT with another one is refused with 409, see
//! [`DsClient::ensure_stream`](super::DsClient::ensure_stream)) can therefore read that 409 as
//! "this chunk is already in the stream": on replay after a crash, it skips the chunk.

use hyper::StatusCode;
use hyper::header::HeaderMap;

/// Response header carrying the offset after the last message (the tail).
pub const STREAM_NEXT_OFFSET: &str = "stream-next-offset";
/// Response header set to `true` when the stream is closed.
pub const STREAM_CLOSED: &str = "stream-closed";
/// Request header carrying the writer's sequence value, compared bytewise by the server.
pub const STREAM_SEQ: &str = "stream-seq";
/// Response header set to `true` when a read reached the tail.
pub const STREAM_UP_TO_DATE: &str = "stream-up-to-date";

/// The result of an append the server did not refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The body was appended; `next_offset` is the stream's new tail, when the server said.
    Written { next_offset: Option<String> },
    /// 409 to an append that carried `Stream-Seq`, on an open stream: the server has already
    /// accepted this sequence value (or a later one), so the chunk is in the stream.
    AlreadyWritten,
}

/// The meaning of a refused request, before the stream name and body are attached
/// (see [`DsError`](super::DsError) for the variants these become).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 404.
    NotFound,
    /// 413.
    TooLarge,
    /// 409 with `Stream-Closed: true`.
    Closed,
    /// 410.
    Gone,
    /// Other 4xx, and 1xx/3xx, which this client never asks for.
    Rejected,
    /// 5xx, 408, 429.
    Transient,
}

/// Classifies any response: `Ok` for 2xx, otherwise what the refusal means.
///
/// # Errors
///
/// The [`Failure`] of a non-2xx status.
pub fn classify_status(status: StatusCode, headers: &HeaderMap) -> Result<(), Failure> {
    if status.is_success() {
        return Ok(());
    }
    Err(match status {
        StatusCode::NOT_FOUND => Failure::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE => Failure::TooLarge,
        StatusCode::GONE => Failure::Gone,
        StatusCode::CONFLICT if header_is_true(headers, STREAM_CLOSED) => Failure::Closed,
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => Failure::Transient,
        s if s.is_server_error() => Failure::Transient,
        _ => Failure::Rejected,
    })
}

/// Classifies the response to an append (`POST`). `seq_given` says whether the request
/// carried `Stream-Seq`; only then is a 409 on an open stream [`AppendOutcome::AlreadyWritten`].
///
/// # Errors
///
/// The [`Failure`] of a refused append.
pub fn classify_append(
    status: StatusCode,
    headers: &HeaderMap,
    seq_given: bool,
) -> Result<AppendOutcome, Failure> {
    if status == StatusCode::CONFLICT && seq_given && !header_is_true(headers, STREAM_CLOSED) {
        return Ok(AppendOutcome::AlreadyWritten);
    }
    classify_status(status, headers)?;
    Ok(AppendOutcome::Written {
        next_offset: header_str(headers, STREAM_NEXT_OFFSET).map(str::to_owned),
    })
}

/// A header's value as text, `None` when absent, not visible ASCII, or empty.
pub(crate) fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Whether a boolean protocol header says `true` (case-insensitive, as servers parse it).
pub(crate) fn header_is_true(headers: &HeaderMap, name: &str) -> bool {
    header_str(headers, name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).expect("valid status code")
    }

    #[test]
    fn success_reads_the_next_offset() {
        for code in [200, 204] {
            let got = classify_append(
                status(code),
                &headers(&[("stream-next-offset", "0_42")]),
                true,
            );
            assert_eq!(
                got,
                Ok(AppendOutcome::Written {
                    next_offset: Some("0_42".into())
                }),
                "status {code}"
            );
        }
        let got = classify_append(status(204), &HeaderMap::new(), false);
        assert_eq!(got, Ok(AppendOutcome::Written { next_offset: None }));
    }

    #[test]
    fn conflict_with_seq_on_open_stream_is_already_written() {
        let got = classify_append(status(409), &HeaderMap::new(), true);
        assert_eq!(got, Ok(AppendOutcome::AlreadyWritten));
        let got = classify_append(status(409), &headers(&[("stream-closed", "false")]), true);
        assert_eq!(got, Ok(AppendOutcome::AlreadyWritten));
    }

    #[test]
    fn conflict_on_closed_stream_is_closed_with_or_without_seq() {
        for value in ["true", "TRUE", " true "] {
            let h = headers(&[("stream-closed", value)]);
            assert_eq!(classify_append(status(409), &h, true), Err(Failure::Closed));
            assert_eq!(
                classify_append(status(409), &h, false),
                Err(Failure::Closed)
            );
        }
    }

    #[test]
    fn conflict_without_seq_is_rejected() {
        let got = classify_append(status(409), &HeaderMap::new(), false);
        assert_eq!(got, Err(Failure::Rejected));
    }

    #[test]
    fn status_table() {
        let cases = [
            (404, Failure::NotFound),
            (413, Failure::TooLarge),
            (410, Failure::Gone),
            (400, Failure::Rejected),
            (403, Failure::Rejected),
            (301, Failure::Rejected),
            (408, Failure::Transient),
            (429, Failure::Transient),
            (500, Failure::Transient),
            (503, Failure::Transient),
            (507, Failure::Transient),
        ];
        for (code, want) in cases {
            for seq in [false, true] {
                let got = classify_append(status(code), &HeaderMap::new(), seq);
                assert_eq!(got, Err(want), "status {code}, seq given: {seq}");
            }
            assert_eq!(classify_status(status(code), &HeaderMap::new()), Err(want));
        }
        assert_eq!(classify_status(status(201), &HeaderMap::new()), Ok(()));
    }
}
