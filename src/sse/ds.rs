//! Durable Streams meaning of SSE events: `event: data` carries a JSON array of messages
//! (split by [`ArraySplitter`](super::ArraySplitter) as it arrives), `event: control` carries
//! the offset to commit from ([`parse_control`]). Anything else is skipped by DS readers.

use serde::Deserialize;

/// Event type of a DS data event.
pub const DATA_EVENT: &str = "data";
/// Event type of a DS control event.
pub const CONTROL_EVENT: &str = "control";
/// Bytes of an event's data quoted in error messages.
const ERROR_PREVIEW_BYTES: usize = 120;

/// Body of a DS control event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Control {
    /// Opaque offset to resume from; commit buffered data with it.
    pub stream_next_offset: String,
    /// Cursor for CDN collapsing; pass it back on long-poll reconnects.
    #[serde(default)]
    pub stream_cursor: Option<String>,
    /// The reader has caught up with the tail (not end of stream).
    #[serde(default)]
    pub up_to_date: bool,
    /// The stream is closed: nothing more will come, do not reconnect.
    #[serde(default)]
    pub stream_closed: bool,
}

/// A control event that cannot be committed from.
#[derive(Debug, thiserror::Error)]
pub enum DsEventError {
    /// The data is not a JSON object of the control shape.
    #[error("control event data is not a valid control object ({error}); data: {preview:?}")]
    InvalidControl {
        error: serde_json::Error,
        preview: String,
    },
    /// The object has no usable `streamNextOffset`.
    #[error("control event lacks a non-empty streamNextOffset; data: {preview:?}")]
    MissingNextOffset { preview: String },
}

/// The wire shape, lenient about `streamNextOffset` so that its absence is told apart from
/// malformed JSON.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawControl {
    #[serde(default)]
    stream_next_offset: Option<String>,
    #[serde(default)]
    stream_cursor: Option<String>,
    #[serde(default)]
    up_to_date: bool,
    #[serde(default)]
    stream_closed: bool,
}

/// Reads the data of a control event.
///
/// # Errors
///
/// [`DsEventError::InvalidControl`] if it is not a JSON object of the control shape,
/// [`DsEventError::MissingNextOffset`] if it has no non-empty `streamNextOffset`.
pub fn parse_control(data: &[u8]) -> Result<Control, DsEventError> {
    let raw: RawControl =
        serde_json::from_slice(data).map_err(|error| DsEventError::InvalidControl {
            error,
            preview: preview(data),
        })?;
    match raw.stream_next_offset {
        Some(offset) if !offset.is_empty() => Ok(Control {
            stream_next_offset: offset,
            stream_cursor: raw.stream_cursor,
            up_to_date: raw.up_to_date,
            stream_closed: raw.stream_closed,
        }),
        _ => Err(DsEventError::MissingNextOffset {
            preview: preview(data),
        }),
    }
}

/// The start of `data` as text for error messages, marked when cut short.
fn preview(data: &[u8]) -> String {
    let cut = data.len().min(ERROR_PREVIEW_BYTES);
    let mut text = String::from_utf8_lossy(&data[..cut]).into_owned();
    if cut < data.len() {
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::{ArrayItem, DsDecoder, DsItem};

    /// The exact frames from the DS reference, section 3.
    const SAMPLE: &str = concat!(
        "event: data\n",
        r#"data:[{"type":"user-action","key":"event-1","operation":"click","data":{"button":"submit"}}]"#,
        "\n\n",
        "event: control\n",
        r#"data:{"streamNextOffset":"0000000000000000_0000000000000242","streamCursor":"3347636","upToDate":true}"#,
        "\n\n",
    );

    #[test]
    fn reference_sample_is_a_message_then_a_control() {
        let mut d = DsDecoder::new(1 << 20, 1 << 20);
        d.push(SAMPLE.as_bytes());
        let got: Vec<DsItem> = std::iter::from_fn(|| d.next_item())
            .map(|i| i.expect("sample items decode"))
            .collect();
        let message = r#"{"type":"user-action","key":"event-1","operation":"click","data":{"button":"submit"}}"#;
        let control = Control {
            stream_next_offset: "0000000000000000_0000000000000242".to_owned(),
            stream_cursor: Some("3347636".to_owned()),
            up_to_date: true,
            stream_closed: false,
        };
        assert_eq!(
            got,
            vec![
                DsItem::Array(ArrayItem::Element {
                    index: 0,
                    text: message.as_bytes().to_vec()
                }),
                DsItem::DataEnd,
                DsItem::Control(control)
            ]
        );
    }

    #[test]
    fn control_with_stream_closed_and_unknown_fields() {
        let data = r#"{"streamNextOffset":"0000000000000003_00000000000000ea","streamClosed":true,"extra":[1]}"#;
        let got = parse_control(data.as_bytes()).expect("valid control");
        let want = Control {
            stream_next_offset: "0000000000000003_00000000000000ea".to_owned(),
            stream_cursor: None,
            up_to_date: false,
            stream_closed: true,
        };
        assert_eq!(got, want);
    }

    #[test]
    fn malformed_control_json_is_an_error_with_preview() {
        let err = parse_control(b"{\"streamNextOffset\":").expect_err("malformed");
        assert!(
            matches!(err, DsEventError::InvalidControl { .. }),
            "wrong kind: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.starts_with("control event data is not a valid control object ("));
        assert!(msg.contains(r#"data: "{\"streamNextOffset\":""#), "{msg}");
    }

    #[test]
    fn control_without_offset_is_an_error() {
        for data in [
            r#"{"upToDate":true}"#,
            r#"{"streamNextOffset":""}"#,
            "{\"streamNextOffset\":null}",
        ] {
            let err = parse_control(data.as_bytes()).expect_err("no offset");
            assert!(
                matches!(err, DsEventError::MissingNextOffset { .. }),
                "{data}: wrong kind {err:?}"
            );
        }
    }

    #[test]
    fn control_with_non_string_offset_is_invalid() {
        let err = parse_control(br#"{"streamNextOffset":42}"#).expect_err("number");
        assert!(
            matches!(err, DsEventError::InvalidControl { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn error_preview_is_cut_short() {
        let long = format!("not json {}", "x".repeat(500));
        let err = parse_control(long.as_bytes()).expect_err("not json");
        let msg = err.to_string();
        assert!(msg.ends_with("...\""), "{msg}");
        assert!(msg.len() < 300, "preview not bounded: {} bytes", msg.len());
    }
}
