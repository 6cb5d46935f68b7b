//! Durable Streams meaning of parsed SSE events: `event: data` carries a JSON array of
//! messages, `event: control` carries the offset to commit from. Anything else is passed on
//! as [`DsEvent::Other`] for the caller to log and skip.

use bytes::Bytes;
use serde::Deserialize;

use super::parser::SseEvent;

/// Event type of a DS data event.
pub const DATA_EVENT: &str = "data";
/// Event type of a DS control event.
pub const CONTROL_EVENT: &str = "control";
/// Bytes of an event's data quoted in error messages.
const ERROR_PREVIEW_BYTES: usize = 120;

/// A DS event, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DsEvent {
    /// `event: data`: a JSON array of messages, not validated here. Buffer it until the next
    /// control event.
    Data(Bytes),
    /// `event: control`: the offset the preceding data events end at.
    Control(Control),
    /// Any other event type.
    Other { event_type: String, data: Bytes },
}

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

/// Classifies one parsed event by its type. Only control events can fail: a control without
/// an offset carries nothing a reader could resume from.
///
/// # Errors
///
/// [`DsEventError::InvalidControl`] if a control event's data is not a JSON object of the
/// control shape, [`DsEventError::MissingNextOffset`] if it has no non-empty
/// `streamNextOffset`.
pub fn classify(ev: SseEvent) -> Result<DsEvent, DsEventError> {
    match ev.event_type.as_str() {
        DATA_EVENT => Ok(DsEvent::Data(ev.data)),
        CONTROL_EVENT => parse_control(&ev.data).map(DsEvent::Control),
        _ => Ok(DsEvent::Other {
            event_type: ev.event_type,
            data: ev.data,
        }),
    }
}

fn parse_control(data: &[u8]) -> Result<Control, DsEventError> {
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
    use crate::sse::parser::{SseItem, SseParser};

    /// The exact frames from the DS reference, section 3.
    const SAMPLE: &str = concat!(
        "event: data\n",
        r#"data:[{"type":"user-action","key":"event-1","operation":"click","data":{"button":"submit"}}]"#,
        "\n\n",
        "event: control\n",
        r#"data:{"streamNextOffset":"0000000000000000_0000000000000242","streamCursor":"3347636","upToDate":true}"#,
        "\n\n",
    );

    fn event(event_type: &str, data: &str) -> SseEvent {
        SseEvent {
            event_type: event_type.to_owned(),
            data: Bytes::copy_from_slice(data.as_bytes()),
            id: None,
        }
    }

    fn classify_all(stream: &str) -> Vec<DsEvent> {
        let mut parser = SseParser::new(1 << 20);
        parser.push(stream.as_bytes());
        std::iter::from_fn(|| parser.next_event())
            .map(|item| match item {
                SseItem::Event(ev) => classify(ev).expect("sample events classify"),
                other => panic!("expected only events, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn reference_sample_is_data_then_control() {
        let got = classify_all(SAMPLE);
        let data = r#"[{"type":"user-action","key":"event-1","operation":"click","data":{"button":"submit"}}]"#;
        let control = Control {
            stream_next_offset: "0000000000000000_0000000000000242".to_owned(),
            stream_cursor: Some("3347636".to_owned()),
            up_to_date: true,
            stream_closed: false,
        };
        assert_eq!(
            got,
            vec![DsEvent::Data(Bytes::from(data)), DsEvent::Control(control)]
        );
    }

    #[test]
    fn control_with_stream_closed_and_unknown_fields() {
        let data = r#"{"streamNextOffset":"0000000000000003_00000000000000ea","streamClosed":true,"extra":[1]}"#;
        let got = classify(event("control", data)).expect("valid control");
        let want = Control {
            stream_next_offset: "0000000000000003_00000000000000ea".to_owned(),
            stream_cursor: None,
            up_to_date: false,
            stream_closed: true,
        };
        assert_eq!(got, DsEvent::Control(want));
    }

    #[test]
    fn malformed_control_json_is_an_error_with_preview() {
        let err = classify(event("control", "{\"streamNextOffset\":")).expect_err("malformed");
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
            let err = classify(event("control", data)).expect_err("no offset");
            assert!(
                matches!(err, DsEventError::MissingNextOffset { .. }),
                "{data}: wrong kind {err:?}"
            );
        }
    }

    #[test]
    fn control_with_non_string_offset_is_invalid() {
        let err = classify(event("control", r#"{"streamNextOffset":42}"#)).expect_err("number");
        assert!(
            matches!(err, DsEventError::InvalidControl { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn error_preview_is_cut_short() {
        let long = format!("not json {}", "x".repeat(500));
        let err = classify(event("control", &long)).expect_err("not json");
        let msg = err.to_string();
        assert!(msg.ends_with("...\""), "{msg}");
        assert!(msg.len() < 300, "preview not bounded: {} bytes", msg.len());
    }

    #[test]
    fn other_event_types_pass_through() {
        let got = classify(event("message", "hello")).expect("other");
        assert_eq!(
            got,
            DsEvent::Other {
                event_type: "message".to_owned(),
                data: Bytes::from("hello")
            }
        );
        let got = classify(event("data", "\u{0}not json")).expect("data is not validated");
        assert_eq!(got, DsEvent::Data(Bytes::from("\u{0}not json")));
    }
}
