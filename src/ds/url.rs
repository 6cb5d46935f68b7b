//! Stream URLs: `{base}/v1/stream/{name}` with each `/`-separated segment of the name
//! percent-encoded, and offsets percent-encoded in the query.
//!
//! Names keep their `/` (servers route `/v1/stream/sessions/42` to the stream
//! `sessions/42`), and each segment is encoded exactly as JavaScript's `encodeURIComponent`
//! encodes it (everything but `A-Z a-z 0-9 - _ . ! ~ * ' ( )`, as UTF-8 bytes, with upper-case
//! hex), so a name with spaces, `?`, `#`, `%` or non-ASCII reaches the server unchanged. The
//! byte-for-byte match matters: `durable-streams-server` decodes the path, but the Node
//! reference server and the upstream Rust server key streams by the raw path, where `!` and
//! `%21` would be two streams. A client that builds the URL the ordinary way therefore reaches
//! the same stream on every server. Offsets are opaque; they are encoded the same way so that
//! no server format can break the query.

use hyper::Uri;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::DsError;

/// Path under which every DS server serves its streams.
pub const STREAM_PATH: &str = "/v1/stream";

/// What `encodeURIComponent` encodes: everything but `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Checks a DS server base URL and returns it without a trailing slash.
///
/// `http://` and `https://` are accepted.
///
/// # Errors
///
/// [`DsError::InvalidUrl`] for an unparsable URL, another scheme, a missing host, or a query
/// or fragment.
pub(super) fn normalize_base(base: &str) -> Result<String, DsError> {
    let invalid = |reason: &str| DsError::InvalidUrl {
        url: base.to_owned(),
        reason: reason.to_owned(),
    };
    if base.contains('#') {
        return Err(invalid("a base URL cannot have a fragment"));
    }
    let uri: Uri = base
        .trim()
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s.to_owned(),
        Some(other) => return Err(invalid(&format!("unsupported scheme {other:?}"))),
        None => return Err(invalid("missing scheme; expected http://host:port")),
    };
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(invalid("missing host"));
    };
    if uri.query().is_some() {
        return Err(invalid("a base URL cannot have a query"));
    }
    let path = uri.path().trim_end_matches('/');
    Ok(format!("{scheme}://{authority}{path}"))
}

/// `{base}/v1/stream/{name}`, `base` as returned by [`normalize_base`].
#[must_use]
pub(super) fn stream_url(base: &str, stream: &str) -> String {
    let mut url = String::with_capacity(base.len() + STREAM_PATH.len() + stream.len() + 8);
    url.push_str(base);
    url.push_str(STREAM_PATH);
    for segment in stream.split('/') {
        url.push('/');
        url.extend(utf8_percent_encode(segment, COMPONENT));
    }
    url
}

/// A query value, percent-encoded.
#[must_use]
pub(super) fn encode_component(value: &str) -> String {
    utf8_percent_encode(value, COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_with_or_without_trailing_slash() {
        for base in [
            "http://127.0.0.1:4437",
            "http://127.0.0.1:4437/",
            " http://127.0.0.1:4437// ",
        ] {
            assert_eq!(
                normalize_base(base).unwrap(),
                "http://127.0.0.1:4437",
                "{base}"
            );
        }
        assert_eq!(
            normalize_base("http://ds.internal/prefix/").unwrap(),
            "http://ds.internal/prefix"
        );
        assert_eq!(
            normalize_base("https://ds.internal:8443/").unwrap(),
            "https://ds.internal:8443"
        );
    }

    #[test]
    fn bad_bases_are_invalid_urls() {
        for (base, why) in [
            ("ftp://ds.example", "unsupported scheme"),
            ("127.0.0.1:4437", "missing scheme"),
            ("http://ds.example/?a=b", "query"),
            ("http://ds.example/#top", "fragment"),
            ("http://", "http://"),
            ("not a url", "not a url"),
        ] {
            match normalize_base(base) {
                Err(DsError::InvalidUrl { url, reason }) => {
                    assert_eq!(url, base);
                    let msg = DsError::InvalidUrl { url, reason }.to_string();
                    assert!(msg.contains(why), "{base}: {msg}");
                }
                other => panic!("{base}: expected InvalidUrl, got {other:?}"),
            }
        }
    }

    #[test]
    fn names_keep_slashes_and_encode_the_rest() {
        let base = "http://h:1";
        assert_eq!(stream_url(base, "orders"), "http://h:1/v1/stream/orders");
        assert_eq!(
            stream_url(base, "sessions/42"),
            "http://h:1/v1/stream/sessions/42"
        );
        assert_eq!(
            stream_url(base, "a b/c?d#e%f"),
            "http://h:1/v1/stream/a%20b/c%3Fd%23e%25f"
        );
        assert_eq!(stream_url(base, "é-._~"), "http://h:1/v1/stream/%C3%A9-._~");
        // encodeURIComponent("a!*'()@$&+,;=: b%2F") in JavaScript:
        assert_eq!(
            stream_url(base, "x/a!*'()@$&+,;=: b%2F"),
            "http://h:1/v1/stream/x/a!*'()%40%24%26%2B%2C%3B%3D%3A%20b%252F"
        );
        let url = stream_url(base, "x y/z+w:1");
        assert!(url.parse::<Uri>().is_ok(), "{url} must be a valid URI");
    }

    #[test]
    fn offsets_are_encoded_for_the_query() {
        assert_eq!(encode_component("-1"), "-1");
        assert_eq!(
            encode_component("0000000000000000_0000000000000242"),
            "0000000000000000_0000000000000242"
        );
        assert_eq!(encode_component("a+b&c=d e"), "a%2Bb%26c%3Dd%20e");
    }
}
