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

use crate::sse::ArrayItem;

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

    /// Decodes a whole data event at once (tests).
    #[cfg(test)]
    pub fn push_data(&mut self, data: &[u8], max_message_bytes: usize) {
        let mut split = crate::sse::ArraySplitter::new(max_message_bytes);
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
#[path = "decode_tests.rs"]
mod tests;
