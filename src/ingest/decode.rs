//! Data events to rows, without I/O: the field mapping of the sync-layer document and every
//! way stream data can fail to become a `session_events` row.
//!
//! A DS data event carries a JSON array of messages. Each element becomes one row whose
//! `payload` is the element's own text, byte for byte (never re-serialized, so numbers keep
//! their precision); `event_key` / `event_type` / `operation` are read from it when it is an
//! object. Anything that cannot be stored becomes a [`DeadLetter`] instead: the whole event
//! when it is not UTF-8, not JSON or not an array; one element when it is over the size
//! limit or PostgreSQL's `jsonb` would refuse it (`\u0000`). Nothing is dropped silently.
//!
//! The size limit applies per message, not per event: a server may merge a whole backlog
//! into one data event, and good messages must not be refused for sharing it with others.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Most bytes of refused data kept in a dead letter; longer data keeps its first bytes.
pub const DEAD_LETTER_RAW_MAX: usize = 64 * 1024;

/// One `session_events` row, before the stream name and offset are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub event_key: Option<String>,
    pub event_type: Option<String>,
    pub operation: Option<String>,
    /// The message as it arrived (JSON text).
    pub payload: String,
    /// The offset of the control event that ended its data event (`ds_offset`); set when
    /// that control event arrives (see [`Pending::seal`]). `None`: the commit's offset.
    pub ds_offset: Option<Arc<str>>,
}

/// Data that could not be stored as rows, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub error: String,
    /// The data, or its first [`DEAD_LETTER_RAW_MAX`] bytes when `truncated`.
    pub raw: Vec<u8>,
    /// Length of the whole data in bytes.
    pub size: usize,
    pub truncated: bool,
    /// As [`Row::ds_offset`].
    pub ds_offset: Option<Arc<str>>,
}

impl DeadLetter {
    /// A dead letter for `data`, keeping at most [`DEAD_LETTER_RAW_MAX`] bytes of it.
    #[must_use]
    pub fn new(error: impl Into<String>, data: &[u8]) -> DeadLetter {
        let kept = data.len().min(DEAD_LETTER_RAW_MAX);
        DeadLetter {
            error: error.into(),
            raw: data[..kept].to_vec(),
            size: data.len(),
            truncated: kept < data.len(),
            ds_offset: None,
        }
    }
}

/// Rows and dead letters held until the next control event commits them, in stream order
/// per kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub rows: Vec<Row>,
    pub dead: Vec<DeadLetter>,
}

impl Pending {
    /// Decodes one data event into the pending batch; messages over `max_message_bytes`
    /// become dead letters. Rows are pushed straight here: a backlog merged into one event
    /// may carry a million messages, and a separate vector for them would be built, then
    /// copied, at twice the memory.
    pub fn push_data(&mut self, data: &[u8], max_message_bytes: usize) {
        let text = match std::str::from_utf8(data) {
            Ok(t) => t,
            Err(e) => {
                let error = format!(
                    "data is not valid UTF-8 (invalid byte at position {})",
                    e.valid_up_to()
                );
                self.dead.push(DeadLetter::new(error, data));
                return;
            }
        };
        let elements = match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(v) => v,
            Err(e) => {
                self.dead
                    .push(DeadLetter::new(not_an_array(text, &e), data));
                return;
            }
        };
        for (index, element) in elements.into_iter().enumerate() {
            let size = element.get().len();
            if size > max_message_bytes {
                self.dead.push(DeadLetter::new(
                    format!(
                        "message {index} of the data event has {size} bytes, over the limit of \
                         {max_message_bytes} bytes (--ingest-max-event-bytes)"
                    ),
                    element.get().as_bytes(),
                ));
                continue;
            }
            match row(element) {
                Ok(row) => self.rows.push(row),
                Err(why) => self.dead.push(DeadLetter::new(
                    format!("message {index} of the data event: {why}"),
                    element.get().as_bytes(),
                )),
            }
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.dead.is_empty()
    }

    /// Takes everything pending, leaving the batch empty.
    pub fn take(&mut self) -> Pending {
        std::mem::take(self)
    }

    /// A control event ended the data so far: it is committed with `offset`.
    pub fn seal(&mut self, offset: &str) {
        let offset: Arc<str> = Arc::from(offset);
        for r in self.rows.iter_mut().filter(|r| r.ds_offset.is_none()) {
            r.ds_offset = Some(Arc::clone(&offset));
        }
        for d in self.dead.iter_mut().filter(|d| d.ds_offset.is_none()) {
            d.ds_offset = Some(Arc::clone(&offset));
        }
    }

    /// Appends `other` after what is here. An empty batch (the usual case: the last one
    /// was just handed to the writer) takes `other`'s vectors instead of copying them.
    pub fn append(&mut self, mut other: Pending) {
        if self.is_empty() {
            *self = other;
            return;
        }
        self.rows.append(&mut other.rows);
        self.dead.append(&mut other.dead);
    }
}

/// Why `text` did not read as an array: not JSON at all, or JSON of another kind.
fn not_an_array(text: &str, array_error: &serde_json::Error) -> String {
    match serde_json::from_str::<IgnoredAny>(text) {
        Err(e) => format!("data is not valid JSON: {e}"),
        Ok(_) => {
            let kind = match text.trim_start().as_bytes().first() {
                Some(b'{') => "an object",
                Some(b'"') => "a string",
                Some(b't' | b'f') => "a boolean",
                Some(b'n') => "null",
                _ => "a number",
            };
            format!("data is {kind}, not a JSON array of messages ({array_error})")
        }
    }
}

/// One element as a row, or why it cannot be stored.
fn row(element: &RawValue) -> Result<Row, String> {
    let text = element.get();
    if has_nul_escape(text) {
        return Err("it contains \\u0000, which PostgreSQL jsonb cannot store".into());
    }
    let fields = if text.starts_with('{') {
        serde_json::from_str::<Fields<'_>>(text).map_err(|e| e.to_string())?
    } else {
        Fields::default()
    };
    let operation = match fields.operation {
        Some(op) => field_text(op)?,
        None => None,
    };
    let operation = match (operation, fields.headers) {
        (Some(op), _) => Some(op),
        (None, Some(h)) if h.get().starts_with('{') => {
            let headers = serde_json::from_str::<Fields<'_>>(h.get()).map_err(|e| e.to_string())?;
            headers.operation.map(field_text).transpose()?.flatten()
        }
        (None, _) => None,
    };
    Ok(Row {
        event_key: fields.key.map(field_text).transpose()?.flatten(),
        event_type: fields.kind.map(field_text).transpose()?.flatten(),
        operation,
        payload: text.to_owned(),
        ds_offset: None,
    })
}

/// A field as column text: strings as they are, null as NULL, anything else as its JSON.
fn field_text(raw: &RawValue) -> Result<Option<String>, String> {
    let text = raw.get();
    if text == "null" {
        Ok(None)
    } else if text.starts_with('"') {
        serde_json::from_str::<String>(text)
            .map(Some)
            .map_err(|e| e.to_string())
    } else {
        Ok(Some(text.to_owned()))
    }
}

/// Whether a JSON text contains the escape `\u0000` (backslashes only occur in strings, and
/// each one escapes the character after it).
fn has_nul_escape(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000") {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// The top-level fields ingest reads; later duplicates win, as in `jsonb`.
#[derive(Default)]
struct Fields<'a> {
    key: Option<&'a RawValue>,
    kind: Option<&'a RawValue>,
    operation: Option<&'a RawValue>,
    headers: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields::default();
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            let slot = match name.as_ref() {
                "key" => &mut fields.key,
                "type" => &mut fields.kind,
                "operation" => &mut fields.operation,
                "headers" => &mut fields.headers,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<&'de RawValue>()?);
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    fn decode(data: &[u8], max_message_bytes: usize) -> Pending {
        let mut p = Pending::default();
        p.push_data(data, max_message_bytes);
        p
    }

    fn one_row(data: &str) -> Row {
        let d = decode(data.as_bytes(), LIMIT);
        assert!(d.dead.is_empty(), "unexpected dead letters: {:?}", d.dead);
        assert_eq!(d.rows.len(), 1, "{data}");
        d.rows.into_iter().next().unwrap_or_else(|| unreachable!())
    }

    fn only_dead(data: &[u8]) -> DeadLetter {
        let d = decode(data, LIMIT);
        assert!(d.rows.is_empty(), "unexpected rows: {:?}", d.rows);
        assert_eq!(d.dead.len(), 1);
        d.dead.into_iter().next().unwrap_or_else(|| unreachable!())
    }

    #[test]
    fn the_sync_layer_example_maps_as_documented() {
        let msg = r#"{"key":"event-1","type":"user-action","operation":"click","data":{"button":"submit"}}"#;
        let row = one_row(&format!("[{msg}]"));
        assert_eq!(row.event_key.as_deref(), Some("event-1"));
        assert_eq!(row.event_type.as_deref(), Some("user-action"));
        assert_eq!(row.operation.as_deref(), Some("click"));
        assert_eq!(row.payload, msg);
    }

    #[test]
    fn operation_falls_back_to_headers() {
        let row = one_row(r#"[{"type":"items","key":"1","headers":{"operation":"insert"}}]"#);
        assert_eq!(row.operation.as_deref(), Some("insert"));
        let row = one_row(r#"[{"operation":"top","headers":{"operation":"inner"}}]"#);
        assert_eq!(row.operation.as_deref(), Some("top"));
        let row = one_row(r#"[{"operation":null,"headers":{"operation":"inner"}}]"#);
        assert_eq!(row.operation.as_deref(), Some("inner"));
        let row = one_row(r#"[{"headers":"not an object"}]"#);
        assert_eq!(row.operation, None);
    }

    #[test]
    fn any_json_value_is_a_row_with_null_fields() {
        let d = decode(
            br#"[1, "two", null, [3], true, {"other": 1}, 1e400]"#,
            LIMIT,
        );
        assert!(d.dead.is_empty(), "{:?}", d.dead);
        let payloads: Vec<&str> = d.rows.iter().map(|r| r.payload.as_str()).collect();
        assert_eq!(
            payloads,
            [
                "1",
                "\"two\"",
                "null",
                "[3]",
                "true",
                r#"{"other": 1}"#,
                "1e400"
            ]
        );
        assert!(
            d.rows
                .iter()
                .all(|r| r.event_key.is_none() && r.event_type.is_none() && r.operation.is_none())
        );
    }

    #[test]
    fn non_string_fields_keep_their_json_text() {
        let row = one_row(r#"[{"key":42,"type":{"a":1},"operation":true}]"#);
        assert_eq!(row.event_key.as_deref(), Some("42"));
        assert_eq!(row.event_type.as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(row.operation.as_deref(), Some("true"));
    }

    #[test]
    fn escaped_strings_are_unescaped_and_duplicates_take_the_last() {
        let row = one_row(r#"[{"key":"a\"b\u00e9","key":"second","type":"t\nx"}]"#);
        assert_eq!(row.event_key.as_deref(), Some("second"));
        assert_eq!(row.event_type.as_deref(), Some("t\nx"));
    }

    #[test]
    fn big_numbers_keep_their_digits() {
        let row = one_row(r#"[{"n":123456789012345678901234567890.000000000000000001}]"#);
        assert!(
            row.payload
                .contains("123456789012345678901234567890.000000000000000001")
        );
    }

    #[test]
    fn invalid_json_is_a_dead_letter() {
        let d = only_dead(b"[{\"key\": ");
        assert!(d.error.starts_with("data is not valid JSON"), "{}", d.error);
        assert_eq!(d.raw, b"[{\"key\": ");
        assert_eq!(d.size, 9);
        assert!(!d.truncated);
    }

    #[test]
    fn json_that_is_not_an_array_is_a_dead_letter() {
        for (data, kind) in [
            (&br#"{"key":"x"}"#[..], "an object"),
            (b"42", "a number"),
            (b"\"s\"", "a string"),
            (b"null", "null"),
        ] {
            let d = only_dead(data);
            assert!(
                d.error
                    .starts_with(&format!("data is {kind}, not a JSON array")),
                "{}",
                d.error
            );
        }
    }

    #[test]
    fn non_utf8_is_a_dead_letter_with_the_raw_bytes() {
        let data = b"[\"ok\", \"\xff\xfe\"]";
        let d = only_dead(data);
        assert_eq!(
            d.error,
            "data is not valid UTF-8 (invalid byte at position 8)"
        );
        assert_eq!(d.raw, data);
    }

    #[test]
    fn nul_escapes_dead_letter_only_their_element() {
        let d = decode(
            br#"[{"key":"a"},{"key":"b\u0000"},{"key":"c\\u0000"}]"#,
            LIMIT,
        );
        let keys: Vec<_> = d.rows.iter().map(|r| r.event_key.clone()).collect();
        assert_eq!(keys, [Some("a".into()), Some("c\\u0000".into())]);
        assert_eq!(d.dead.len(), 1);
        assert!(d.dead[0].error.starts_with("message 1 of the data event"));
        assert_eq!(d.dead[0].raw, br#"{"key":"b\u0000"}"#);
    }

    #[test]
    fn nul_escape_detection_respects_escaped_backslashes() {
        assert!(has_nul_escape(r#""\u0000""#));
        assert!(!has_nul_escape(r#""\\u0000""#));
        assert!(has_nul_escape(r#""\\\u0000""#));
        assert!(!has_nul_escape(r#""\u0001""#));
        assert!(!has_nul_escape("\"\\"));
    }

    #[test]
    fn empty_array_gives_nothing() {
        assert_eq!(decode(b"[]", LIMIT), Pending::default());
        assert_eq!(decode(b" [ ] ", LIMIT), Pending::default());
    }

    #[test]
    fn large_dead_letters_keep_a_bounded_prefix() {
        let data = vec![b'x'; DEAD_LETTER_RAW_MAX + 10];
        let d = only_dead(&data);
        assert_eq!(d.raw.len(), DEAD_LETTER_RAW_MAX);
        assert_eq!(d.size, DEAD_LETTER_RAW_MAX + 10);
        assert!(d.truncated);
    }

    #[test]
    fn messages_over_the_limit_dead_letter_alone() {
        let big = format!(r#"{{"key":"big","pad":"{}"}}"#, "x".repeat(100));
        let data = format!(r#"[{{"key":"small"}},{big},{{"key":"after"}}]"#);
        let d = decode(data.as_bytes(), 50);
        let keys: Vec<_> = d.rows.iter().map(|r| r.event_key.clone()).collect();
        assert_eq!(keys, [Some("small".into()), Some("after".into())]);
        assert_eq!(d.dead.len(), 1);
        assert_eq!(
            d.dead[0].error,
            format!(
                "message 1 of the data event has {} bytes, over the limit of 50 bytes \
                 (--ingest-max-event-bytes)",
                big.len()
            )
        );
        assert_eq!(d.dead[0].raw, big.as_bytes());
        assert_eq!(
            decode(big.as_bytes(), 50).dead.len(),
            1,
            "a non-array is refused anyway"
        );
    }

    #[test]
    fn sealing_gives_each_row_its_own_control_offset() {
        let mut ready = Pending::default();
        let mut p = Pending::default();
        p.push_data(br#"[{"key":"a"},{"key":"b"}]"#, LIMIT);
        p.push_data(b"not json", LIMIT);
        p.seal("off-1");
        ready.append(p.take());
        p.push_data(br#"[{"key":"c"}]"#, LIMIT);
        p.seal("off-2");
        ready.append(p.take());
        let offsets: Vec<_> = ready.rows.iter().map(|r| r.ds_offset.as_deref()).collect();
        assert_eq!(offsets, [Some("off-1"), Some("off-1"), Some("off-2")]);
        assert_eq!(ready.dead[0].ds_offset.as_deref(), Some("off-1"));
        ready.seal("off-3");
        assert_eq!(
            ready.rows[2].ds_offset.as_deref(),
            Some("off-2"),
            "sealed once"
        );
    }

    #[test]
    fn pending_collects_until_taken() {
        let mut p = Pending::default();
        assert!(p.is_empty());
        p.push_data(br#"[{"key":"a"}]"#, LIMIT);
        p.push_data(b"nope", LIMIT);
        let taken = p.take();
        assert!(p.is_empty());
        assert_eq!(taken.rows.len(), 1);
        assert_eq!(taken.dead.len(), 1);
    }
}
