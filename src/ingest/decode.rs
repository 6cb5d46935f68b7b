//! Messages to rows, without I/O: the field mapping of the sync-layer document and every
//! way stream data can fail to become a `session_events` row.
//!
//! A DS data event (or a catch-up read's body) is a JSON array of messages, split into its
//! elements as it arrives by [`ArraySplitter`]. Each element becomes one row whose `payload`
//! is the element's own text, byte for byte (never re-serialized, so numbers keep their
//! precision); `event_key` / `event_type` / `operation` are located in it when it is an
//! object (as spans of the payload, so a row holds its text once). Anything that cannot be
//! stored becomes a [`DeadLetter`] instead, per message: an element that is not UTF-8, not
//! JSON, empty, over the size limit, or that PostgreSQL's `jsonb` would refuse (`\u0000`);
//! and, once per data event, what cannot be split into elements (data that is not an array,
//! an array not closed, bytes after it). Nothing is dropped silently, and one bad message
//! does not take the others of its event down.
//!
//! The size limit applies per message, not per event: a server may merge a whole backlog
//! into one data event, and good messages must not be refused for sharing it with others.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::sse::{ArrayItem, ArraySplitter};

/// Most bytes of refused data kept in a dead letter; longer data keeps its first bytes.
pub const DEAD_LETTER_RAW_MAX: usize = crate::sse::array::PREFIX_BYTES;
/// What one heap allocation costs beyond its bytes (allocator bookkeeping and rounding), for
/// memory accounting.
const ALLOC_OVERHEAD: usize = 32;

/// Where a column's text is in a row's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// `payload[start..end]` is the text as it is: a string's content without escapes, or
    /// the JSON text of a value that is not a string.
    Plain(usize, usize),
    /// `payload[start..end]` is a JSON string literal with escapes (quotes included), checked
    /// when the row was decoded; its text is the unescaped string.
    Escaped(usize, usize),
}

/// One `session_events` row, before the stream name and offset are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The message as it arrived (JSON text).
    pub payload: String,
    pub event_key: Option<Span>,
    pub event_type: Option<Span>,
    pub operation: Option<Span>,
    /// The offset of the control event that ended its data event (`ds_offset`); set when
    /// that control event arrives (see [`Pending::seal`]). `None`: the commit's offset.
    pub ds_offset: Option<Arc<str>>,
}

impl Row {
    /// The text of a column located in the payload.
    #[must_use]
    pub fn text(&self, span: Option<Span>) -> Option<Cow<'_, str>> {
        match span? {
            Span::Plain(a, b) => self.payload.get(a..b).map(Cow::Borrowed),
            Span::Escaped(a, b) => {
                let literal = self.payload.get(a..b)?;
                serde_json::from_str::<String>(literal).ok().map(Cow::Owned)
            }
        }
    }

    #[must_use]
    pub fn event_key(&self) -> Option<Cow<'_, str>> {
        self.text(self.event_key)
    }

    #[must_use]
    pub fn event_type(&self) -> Option<Cow<'_, str>> {
        self.text(self.event_type)
    }

    #[must_use]
    pub fn operation(&self) -> Option<Cow<'_, str>> {
        self.text(self.operation)
    }

    /// Bytes the row holds on the heap.
    #[must_use]
    pub fn heap_size(&self) -> usize {
        self.payload.capacity() + ALLOC_OVERHEAD
    }

    /// Bytes the row holds in memory, itself included.
    #[must_use]
    pub fn memory_size(&self) -> usize {
        self.heap_size() + std::mem::size_of::<Row>()
    }
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
        DeadLetter::with_prefix(error, data.to_vec(), data.len())
    }

    /// A dead letter for data of `size` bytes of which `prefix` was kept.
    #[must_use]
    pub fn with_prefix(error: impl Into<String>, mut prefix: Vec<u8>, size: usize) -> DeadLetter {
        prefix.truncate(DEAD_LETTER_RAW_MAX);
        prefix.shrink_to_fit();
        DeadLetter {
            error: error.into(),
            truncated: prefix.len() < size,
            raw: prefix,
            size,
            ds_offset: None,
        }
    }

    /// Bytes the dead letter holds on the heap.
    #[must_use]
    pub fn heap_size(&self) -> usize {
        self.raw.capacity() + self.error.capacity() + 2 * ALLOC_OVERHEAD
    }

    /// Bytes the dead letter holds in memory, itself included.
    #[must_use]
    pub fn memory_size(&self) -> usize {
        self.heap_size() + std::mem::size_of::<DeadLetter>()
    }
}

/// What one item of a data event becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Row(Row),
    Dead(DeadLetter),
}

impl Decoded {
    /// Bytes it holds on the heap.
    #[must_use]
    pub fn heap_size(&self) -> usize {
        match self {
            Decoded::Row(r) => r.heap_size(),
            Decoded::Dead(d) => d.heap_size(),
        }
    }
}

/// Decodes one item of a data event: an element becomes a row, or a dead letter saying why
/// it cannot be stored; what could not be split is a dead letter.
#[must_use]
pub fn decode(item: ArrayItem, max_message_bytes: usize) -> Decoded {
    match item {
        ArrayItem::Element { index, text } => match element(index, text) {
            Ok(row) => Decoded::Row(row),
            Err(dead) => Decoded::Dead(dead),
        },
        ArrayItem::TooLarge {
            index,
            size,
            prefix,
        } => Decoded::Dead(DeadLetter::with_prefix(
            format!(
                "message {index} of the data event has {size} bytes, over the limit of \
                 {max_message_bytes} bytes (--ingest-max-event-bytes)"
            ),
            prefix,
            size,
        )),
        ArrayItem::NotArray { prefix, size } => Decoded::Dead(DeadLetter::with_prefix(
            not_an_array(&prefix, size),
            prefix,
            size,
        )),
        ArrayItem::Unterminated {
            index,
            prefix,
            size,
        } => Decoded::Dead(DeadLetter::with_prefix(
            format!(
                "the data event ends inside message {index}: its JSON array is not closed \
                 (the message's bytes are kept)"
            ),
            prefix,
            size,
        )),
        ArrayItem::Trailing { prefix, size } => Decoded::Dead(DeadLetter::with_prefix(
            format!(
                "the data event continues after the end of its JSON array ({size} more bytes, \
                 kept here)"
            ),
            prefix,
            size,
        )),
    }
}

/// One element as a row, or the dead letter that says why it cannot be stored.
fn element(index: usize, text: Vec<u8>) -> Result<Row, DeadLetter> {
    let payload = match String::from_utf8(text) {
        Ok(p) => p,
        Err(e) => {
            let error = format!(
                "message {index} of the data event is not valid UTF-8 (invalid byte at \
                 position {})",
                e.utf8_error().valid_up_to()
            );
            return Err(DeadLetter::new(error, e.as_bytes()));
        }
    };
    if payload.is_empty() {
        let error = format!(
            "message {index} of the data event is empty (two commas in a row, or a comma \
             before the closing ']')"
        );
        return Err(DeadLetter::new(error, b""));
    }
    match row(payload) {
        Ok(row) => Ok(row),
        Err((why, payload)) => Err(DeadLetter::new(
            format!("message {index} of the data event: {why}"),
            payload.as_bytes(),
        )),
    }
}

/// Why data that is not an array was refused: not UTF-8, not JSON, or JSON of another kind
/// (read from the whole data when it was all kept, else from its first bytes).
fn not_an_array(prefix: &[u8], size: usize) -> String {
    if size > prefix.len() {
        let first = prefix
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .map_or_else(
                || "whitespace".to_owned(),
                |b| format!("{:?}", char::from(*b)),
            );
        return format!(
            "data is not a JSON array of messages (it starts with {first}; {size} bytes, \
             the first {} kept)",
            prefix.len()
        );
    }
    let text = match std::str::from_utf8(prefix) {
        Ok(t) => t,
        Err(e) => {
            return format!(
                "data is not valid UTF-8 (invalid byte at position {})",
                e.valid_up_to()
            );
        }
    };
    let array_error = match serde_json::from_str::<Vec<&RawValue>>(text) {
        Err(e) => e,
        Ok(_) => return "data is not a JSON array of messages".into(),
    };
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

/// One message as a row, or why it cannot be stored (with the payload back).
fn row(payload: String) -> Result<Row, (String, String)> {
    match fields(&payload) {
        Ok((event_key, event_type, operation)) => Ok(Row {
            payload,
            event_key,
            event_type,
            operation,
            ds_offset: None,
        }),
        Err(why) => Err((why, payload)),
    }
}

type Spans = (Option<Span>, Option<Span>, Option<Span>);

/// Checks a message and locates its `key`, `type` and `operation` (else
/// `headers.operation`).
fn fields(text: &str) -> Result<Spans, String> {
    if !text.starts_with('{') {
        serde_json::from_str::<IgnoredAny>(text)
            .map_err(|e| format!("it is not valid JSON: {e}"))?;
        if has_nul_escape(text) {
            return Err(NUL_REFUSED.into());
        }
        return Ok((None, None, None));
    }
    let fields = serde_json::from_str::<Fields<'_>>(text)
        .map_err(|e| format!("it is not valid JSON: {e}"))?;
    if has_nul_escape(text) {
        return Err(NUL_REFUSED.into());
    }
    let mut operation = fields
        .operation
        .map(|op| span(text, op))
        .transpose()?
        .flatten();
    if operation.is_none()
        && let Some(h) = fields.headers
        && h.get().starts_with('{')
    {
        let headers = serde_json::from_str::<Fields<'_>>(h.get()).map_err(|e| e.to_string())?;
        operation = headers
            .operation
            .map(|op| span(text, op))
            .transpose()?
            .flatten();
    }
    Ok((
        fields.key.map(|k| span(text, k)).transpose()?.flatten(),
        fields.kind.map(|k| span(text, k)).transpose()?.flatten(),
        operation,
    ))
}

const NUL_REFUSED: &str = "it contains \\u0000, which PostgreSQL jsonb cannot store";

/// Where a field's value is in `payload` (of which `raw` is a slice): strings by their
/// content, null as NULL, anything else as its JSON text.
fn span(payload: &str, raw: &RawValue) -> Result<Option<Span>, String> {
    let text = raw.get();
    let start = (text.as_ptr() as usize)
        .checked_sub(payload.as_ptr() as usize)
        .filter(|s| s + text.len() <= payload.len())
        .ok_or("a field lies outside its message")?;
    let end = start + text.len();
    if text == "null" {
        Ok(None)
    } else if !text.starts_with('"') {
        Ok(Some(Span::Plain(start, end)))
    } else if text.contains('\\') {
        serde_json::from_str::<String>(text).map_err(|e| e.to_string())?;
        Ok(Some(Span::Escaped(start, end)))
    } else {
        Ok(Some(Span::Plain(start + 1, end - 1)))
    }
}

/// Whether a JSON text contains the escape `\u0000` (backslashes only occur in strings, and
/// each one escapes the character after it).
fn has_nul_escape(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(k) = memchr::memchr(b'\\', &bytes[i..]) {
        i += k;
        if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000") {
            return true;
        }
        i += 2;
        if i >= bytes.len() {
            break;
        }
    }
    false
}

/// Rows and dead letters held until the next control event commits them, in stream order
/// per kind, with the bytes they hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub rows: Vec<Row>,
    pub dead: Vec<DeadLetter>,
    /// Bytes the rows and dead letters hold on the heap.
    heap: usize,
}

impl Pending {
    /// Bytes held: the rows' and dead letters' own, and the vectors holding them (their
    /// spare capacity included).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.heap
            + self.rows.capacity() * std::mem::size_of::<Row>()
            + self.dead.capacity() * std::mem::size_of::<DeadLetter>()
    }

    /// Adds what one item of a data event became.
    pub fn push(&mut self, decoded: Decoded) {
        self.heap += decoded.heap_size();
        match decoded {
            Decoded::Row(r) => self.rows.push(r),
            Decoded::Dead(d) => self.dead.push(d),
        }
    }

    /// Decodes a whole data event at once (tests and callers that hold it anyway).
    pub fn push_data(&mut self, data: &[u8], max_message_bytes: usize) {
        let mut split = ArraySplitter::new(max_message_bytes);
        split.push(bytes::Bytes::copy_from_slice(data));
        while let Some(item) = split.next_item() {
            self.push(decode(item, max_message_bytes));
        }
        if let Some(item) = split.finish() {
            self.push(decode(item, max_message_bytes));
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
        self.heap += other.heap;
    }
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
        assert_eq!(row.event_key().as_deref(), Some("event-1"));
        assert_eq!(row.event_type().as_deref(), Some("user-action"));
        assert_eq!(row.operation().as_deref(), Some("click"));
        assert_eq!(row.payload, msg);
    }

    #[test]
    fn operation_falls_back_to_headers() {
        let row = one_row(r#"[{"type":"items","key":"1","headers":{"operation":"insert"}}]"#);
        assert_eq!(row.operation().as_deref(), Some("insert"));
        let row = one_row(r#"[{"operation":"top","headers":{"operation":"inner"}}]"#);
        assert_eq!(row.operation().as_deref(), Some("top"));
        let row = one_row(r#"[{"operation":null,"headers":{"operation":"inner"}}]"#);
        assert_eq!(row.operation().as_deref(), Some("inner"));
        let row = one_row(r#"[{"headers":"not an object"}]"#);
        assert_eq!(row.operation(), None);
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
        assert_eq!(row.event_key().as_deref(), Some("42"));
        assert_eq!(row.event_type().as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(row.operation().as_deref(), Some("true"));
    }

    #[test]
    fn escaped_strings_are_unescaped_and_duplicates_take_the_last() {
        let row = one_row(r#"[{"key":"a\"b\u00e9","key":"second","type":"t\nx"}]"#);
        assert_eq!(row.event_key().as_deref(), Some("second"));
        assert_eq!(row.event_type().as_deref(), Some("t\nx"));
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
    fn an_unclosed_array_keeps_its_messages_and_dead_letters_the_unfinished_one() {
        let d = decode(b"[{\"key\":\"a\"}, {\"key\": ", LIMIT);
        assert_eq!(d.rows.len(), 1);
        assert_eq!(d.dead.len(), 1);
        let dead = &d.dead[0];
        assert!(
            dead.error
                .starts_with("the data event ends inside message 1: its JSON array is not closed"),
            "{}",
            dead.error
        );
        assert_eq!(dead.raw, b"{\"key\": ");
        assert_eq!((dead.size, dead.truncated), (8, false));
    }

    #[test]
    fn an_invalid_message_is_a_dead_letter_and_its_neighbours_are_rows() {
        let d = decode(
            br#"[{"key":"a"}, {"key": nope}, {"key":"c"}, 1 2, ,{"key":"d"}]"#,
            LIMIT,
        );
        let keys: Vec<_> = d
            .rows
            .iter()
            .map(|r| r.event_key().map(Cow::into_owned))
            .collect();
        assert_eq!(keys, [Some("a".into()), Some("c".into()), Some("d".into())]);
        let errors: Vec<&str> = d.dead.iter().map(|d| d.error.as_str()).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("message 1 of the data event: it is not valid JSON"),
            "{}",
            errors[0]
        );
        assert_eq!(d.dead[0].raw, br#"{"key": nope}"#);
        assert!(errors[1].starts_with("message 3 of the data event: it is not valid JSON"));
        assert_eq!(d.dead[1].raw, b"1 2");
        assert!(errors[2].starts_with("message 4 of the data event is empty"));
    }

    #[test]
    fn bytes_after_the_array_are_a_dead_letter() {
        let d = decode(b"[1] [2]", LIMIT);
        assert_eq!(d.rows.len(), 1);
        assert_eq!(d.dead.len(), 1);
        assert!(
            d.dead[0]
                .error
                .starts_with("the data event continues after the end of its JSON array"),
            "{}",
            d.dead[0].error
        );
        assert_eq!(d.dead[0].raw, b"[2]");
    }

    #[test]
    fn text_that_is_not_json_is_a_dead_letter() {
        let d = only_dead(b"this is not json");
        assert!(d.error.starts_with("data is not valid JSON"), "{}", d.error);
        assert_eq!(d.raw, b"this is not json");
        assert_eq!(d.size, 16);
        assert!(!d.truncated);
        let d = only_dead(b"");
        assert!(d.error.starts_with("data is not valid JSON"), "{}", d.error);
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
    fn non_utf8_dead_letters_only_its_message() {
        let data = b"[\"ok\", \"\xff\xfe\"]";
        let d = decode(data, LIMIT);
        assert_eq!(d.rows.len(), 1);
        assert_eq!(d.dead.len(), 1);
        assert_eq!(
            d.dead[0].error,
            "message 1 of the data event is not valid UTF-8 (invalid byte at position 1)"
        );
        assert_eq!(d.dead[0].raw, b"\"\xff\xfe\"");
        let d = only_dead(b"\xff[1]");
        assert_eq!(
            d.error,
            "data is not valid UTF-8 (invalid byte at position 0)"
        );
    }

    #[test]
    fn nul_escapes_dead_letter_only_their_element() {
        let d = decode(
            br#"[{"key":"a"},{"key":"b\u0000"},{"key":"c\\u0000"}]"#,
            LIMIT,
        );
        let keys: Vec<_> = d
            .rows
            .iter()
            .map(|r| r.event_key().map(Cow::into_owned))
            .collect();
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
        let keys: Vec<_> = d
            .rows
            .iter()
            .map(|r| r.event_key().map(Cow::into_owned))
            .collect();
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

    #[test]
    fn fields_are_spans_of_the_payload_and_escaped_ones_are_unescaped() {
        let row = one_row(r#"[{"key":"plain","type":"t\"q","operation":7}]"#);
        assert!(matches!(row.event_key, Some(Span::Plain(..))), "{row:?}");
        assert!(matches!(row.event_type, Some(Span::Escaped(..))), "{row:?}");
        assert_eq!(row.event_key().as_deref(), Some("plain"));
        assert_eq!(row.event_type().as_deref(), Some("t\"q"));
        assert_eq!(row.operation().as_deref(), Some("7"));
    }

    #[test]
    fn a_field_that_does_not_unescape_is_a_dead_letter() {
        let d = only_dead(br#"[{"key":"\ud800"}]"#);
        assert!(
            d.error.starts_with("message 0 of the data event: "),
            "{}",
            d.error
        );
    }

    #[test]
    fn pending_counts_the_bytes_it_holds() {
        let mut p = Pending::default();
        p.push_data(br#"[{"key":"a"}, "x", nope]"#, LIMIT);
        let heap: usize = p.rows.iter().map(Row::heap_size).sum::<usize>()
            + p.dead.iter().map(DeadLetter::heap_size).sum::<usize>();
        let vectors = p.rows.capacity() * std::mem::size_of::<Row>()
            + p.dead.capacity() * std::mem::size_of::<DeadLetter>();
        assert_eq!(p.bytes(), heap + vectors);
        assert!(p.bytes() >= 2 * std::mem::size_of::<Row>() + 3 * ALLOC_OVERHEAD);
        let mut q = Pending::default();
        q.push_data(b"[1]", LIMIT);
        let before = p.bytes();
        p.append(q);
        assert!(p.bytes() > before);
        let taken = p.take();
        assert_eq!(p.bytes(), 0);
        assert!(taken.bytes() > before);
    }
}
