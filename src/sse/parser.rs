//! Incremental `text/event-stream` parser (WHATWG HTML, "interpreting an event stream").
//!
//! Bytes in, [`SseItem`]s out, no I/O. [`SseParser::push`] appends a chunk split anywhere
//! (inside a CRLF pair, a UTF-8 sequence or the BOM); [`SseParser::next_event`] parses on
//! demand and returns the next item, or `None` when it needs more bytes. Every byte is
//! examined once: a line is never buffered whole. Its field name (at most five bytes matter)
//! is held in a small array, and its value is routed as it arrives to where it belongs: the
//! event's data buffer, the event-type or id buffer, a retry accumulator, or nowhere
//! (comments, unknown fields). Memory is therefore bounded by the largest pushed chunk plus
//! `max_event_bytes` plus a few fixed caps, whatever the peer sends.
//!
//! **Streamed events.** A parser made with [`SseParser::streaming`] does not buffer the data
//! of events of one type: when such an event's `event:` line comes before its first `data:`
//! line (as every DS server sends it), its data is handed out as it arrives, in
//! [`SseItem::Data`] pieces (the `\n` between data lines included), and the blank line that
//! ends it is [`SseItem::DataEnd`]. No size limit applies to it: the caller consumes it as it
//! comes. An event whose `event:` line follows a data line is buffered like any other.
//!
//! Departures from the browser algorithm, all deliberate: data stays bytes (the caller
//! decides whether it is UTF-8); an event whose data outgrows `max_event_bytes`, or whose
//! `event:` value outgrows [`MAX_EVENT_TYPE_BYTES`], is reported as [`SseItem::Oversized`]
//! instead of being delivered; an `id:` value longer than [`MAX_ID_BYTES`] is ignored; a
//! streamed event keeps the type it had at its first data line.

use std::collections::VecDeque;

use bytes::Bytes;

/// Bytes of an oversized event's data kept as its preview.
pub const PREVIEW_BYTES: usize = 256;
/// Longest `event:` value kept; a longer one makes its event [`SseItem::Oversized`].
pub const MAX_EVENT_TYPE_BYTES: usize = 256;
/// Longest `id:` value kept; a longer `id:` line is ignored.
pub const MAX_ID_BYTES: usize = 256;
/// Event type of an event without an `event:` field.
pub const DEFAULT_EVENT_TYPE: &str = "message";

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];
/// Longest field name the parser knows (`event`, `retry`); longer names are unknown fields.
const NAME_CAP: usize = 5;
/// Input capacity kept between chunks; a larger buffer is shrunk once it has been drained.
const INPUT_RETAIN_BYTES: usize = 64 * 1024;
/// Smallest allocation for an event's data buffer.
const DATA_MIN_CAPACITY: usize = 64;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` value, [`DEFAULT_EVENT_TYPE`] when the event had none.
    pub event_type: String,
    /// The `data:` values joined with `\n`, as raw bytes.
    pub data: Bytes,
    /// The last event id seen on the stream so far (ids persist across events, as in the
    /// spec); `None` if no `id:` line was seen or the last one was empty.
    pub id: Option<String>,
}

/// What the parser yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A complete event with at least one `data:` line.
    Event(SseEvent),
    /// An event that outgrew the limits; its data was counted, not kept.
    Oversized {
        /// The event type (truncated to [`MAX_EVENT_TYPE_BYTES`] if that was the excess).
        event_type: String,
        /// Length in bytes of the event's joined data.
        size: usize,
        /// The first [`PREVIEW_BYTES`] bytes of the data.
        preview: Bytes,
    },
    /// A comment line (`:` first), as servers send for keepalives. The text is not kept.
    Comment,
    /// A valid `retry:` field (reconnection time in milliseconds).
    Retry(u64),
    /// A piece of a streamed event's data (see the module documentation). Pieces follow each
    /// other in order; their concatenation is the event's data.
    Data(Bytes),
    /// A streamed event with data ended (a blank line). It may have had no [`SseItem::Data`]
    /// piece, when its only data line was empty.
    DataEnd,
}

/// Incremental SSE parser; see the module documentation.
#[derive(Debug)]
pub struct SseParser {
    /// Pushed bytes; `input[pos..]` is not parsed yet.
    input: Vec<u8>,
    pos: usize,
    /// Bytes of the BOM matched so far at the stream start; `None` once decided.
    bom_matched: Option<usize>,
    /// The previous line ended with CR: a LF that follows belongs to it.
    after_cr: bool,
    state: State,
}

impl SseParser {
    /// A parser for one connection. Events whose data exceeds `max_event_bytes` are
    /// reported as [`SseItem::Oversized`].
    #[must_use]
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            input: Vec::new(),
            pos: 0,
            bom_matched: Some(0),
            after_cr: false,
            state: State::new(max_event_bytes),
        }
    }

    /// Appends a chunk. Drain [`next_event`](Self::next_event) until `None` before pushing
    /// again to keep memory bounded by the chunk size.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
            if self.input.capacity() > INPUT_RETAIN_BYTES {
                self.input.shrink_to(INPUT_RETAIN_BYTES);
            }
        } else if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        let chunk = self.skip_bom(chunk);
        self.input.extend_from_slice(chunk);
    }

    /// The same parser, handing out the data of events of type `event_type` as it arrives
    /// instead of buffering it (see the module documentation).
    #[must_use]
    pub fn streaming(mut self, event_type: &str) -> Self {
        self.state.event.streamed_type = Some(event_type.as_bytes().into());
        self
    }

    /// Pushes `chunk` and returns its items: `push` followed by draining `next_event`.
    /// Items not taken from the iterator stay queued for the next call.
    pub fn feed<'p>(&'p mut self, chunk: &[u8]) -> impl Iterator<Item = SseItem> + use<'p> {
        self.push(chunk);
        std::iter::from_fn(move || self.next_event())
    }

    /// Parses on until the next item is complete; `None` means more bytes are needed.
    pub fn next_event(&mut self) -> Option<SseItem> {
        loop {
            if let Some(item) = self.state.event.queue.pop_front() {
                return Some(item);
            }
            if self.pos >= self.input.len() {
                return None;
            }
            if self.after_cr {
                self.after_cr = false;
                if self.input[self.pos] == b'\n' {
                    self.pos += 1;
                    continue;
                }
            }
            let rest = &self.input[self.pos..];
            let Some(eol) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.state.feed(rest);
                self.pos = self.input.len();
                continue;
            };
            self.state.feed(&rest[..eol]);
            self.after_cr = rest[eol] == b'\r';
            self.pos += eol + 1;
            if let Some(item) = self.state.end_line() {
                self.state.event.queue.push_back(item);
            }
        }
    }

    /// Total capacity of the parser's buffers in bytes, for memory accounting and tests.
    #[must_use]
    pub fn buffered_capacity(&self) -> usize {
        self.input.capacity() + self.state.buffered_capacity()
    }

    /// Drops a leading UTF-8 BOM (once, possibly split over chunks). Bytes held back as a
    /// possible BOM prefix are replayed into the input when the stream turns out otherwise.
    fn skip_bom<'c>(&mut self, chunk: &'c [u8]) -> &'c [u8] {
        let Some(held) = self.bom_matched else {
            return chunk;
        };
        let mut matched = held;
        let mut used = 0;
        while matched < BOM.len() && used < chunk.len() && chunk[used] == BOM[matched] {
            matched += 1;
            used += 1;
        }
        if matched == BOM.len() {
            self.bom_matched = None;
        } else if used == chunk.len() {
            self.bom_matched = Some(matched);
        } else {
            self.bom_matched = None;
            self.input.extend_from_slice(&BOM[..matched]);
        }
        &chunk[used..]
    }
}

/// Which field the current line's value goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Data,
    Event,
    Id,
    Retry,
    Comment,
    Ignored,
}

/// Parsing state carried from line to line.
#[derive(Debug)]
struct State {
    /// `Some(field)` once the current line's colon was seen.
    field: Option<Field>,
    /// Field name bytes of the current line (only the first [`NAME_CAP`] are kept).
    name: [u8; NAME_CAP],
    name_len: usize,
    /// One space right after the colon is still to be stripped.
    strip_space: bool,
    event: EventBuffer,
    id: Vec<u8>,
    id_too_long: bool,
    last_id: Option<String>,
    /// Value of the current `retry:` line so far; `None` once it is not a valid number.
    retry: Option<u64>,
    retry_len: usize,
}

impl State {
    fn new(max_event_bytes: usize) -> Self {
        Self {
            field: None,
            name: [0; NAME_CAP],
            name_len: 0,
            strip_space: false,
            event: EventBuffer::new(max_event_bytes),
            id: Vec::new(),
            id_too_long: false,
            last_id: None,
            retry: None,
            retry_len: 0,
        }
    }

    fn buffered_capacity(&self) -> usize {
        self.event.buffered_capacity() + self.id.capacity()
    }

    /// Consumes part of a line (no CR or LF in `seg`).
    fn feed(&mut self, mut seg: &[u8]) {
        let field = match self.field {
            Some(field) => field,
            None => {
                let Some(colon) = seg.iter().position(|&b| b == b':') else {
                    self.push_name(seg);
                    return;
                };
                self.push_name(&seg[..colon]);
                seg = &seg[colon + 1..];
                let field = if self.name_len == 0 {
                    Field::Comment
                } else {
                    self.named_field()
                };
                self.begin_field(field);
                self.field = Some(field);
                self.strip_space = true;
                field
            }
        };
        if self.strip_space && !seg.is_empty() {
            self.strip_space = false;
            if seg[0] == b' ' {
                seg = &seg[1..];
            }
        }
        self.append_value(field, seg);
    }

    /// Ends the current line; a blank line dispatches the pending event.
    fn end_line(&mut self) -> Option<SseItem> {
        let field = match self.field.take() {
            Some(field) => field,
            None if self.name_len == 0 => return self.event.dispatch(self.last_id.as_deref()),
            None => {
                // A line without a colon: the whole line is the name, the value is empty.
                let field = self.named_field();
                self.begin_field(field);
                field
            }
        };
        self.name_len = 0;
        self.strip_space = false;
        self.finish_field(field)
    }

    fn push_name(&mut self, bytes: &[u8]) {
        if let Some(room) = self.name.get_mut(self.name_len..) {
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
        }
        self.name_len = self.name_len.saturating_add(bytes.len());
    }

    fn named_field(&self) -> Field {
        match self.name.get(..self.name_len) {
            Some(b"data") => Field::Data,
            Some(b"event") => Field::Event,
            Some(b"id") => Field::Id,
            Some(b"retry") => Field::Retry,
            _ => Field::Ignored,
        }
    }

    fn begin_field(&mut self, field: Field) {
        match field {
            Field::Data => self.event.begin_data_line(),
            Field::Event => self.event.begin_event_type(),
            Field::Id => {
                self.id.clear();
                self.id_too_long = false;
            }
            Field::Retry => {
                self.retry = Some(0);
                self.retry_len = 0;
            }
            Field::Comment | Field::Ignored => {}
        }
    }

    fn append_value(&mut self, field: Field, bytes: &[u8]) {
        match field {
            Field::Data => self.event.append_data(bytes),
            Field::Event => self.event.append_event_type(bytes),
            Field::Id if self.id.len() + bytes.len() > MAX_ID_BYTES => self.id_too_long = true,
            Field::Id => self.id.extend_from_slice(bytes),
            Field::Retry => {
                self.retry_len = self.retry_len.saturating_add(bytes.len());
                for &b in bytes {
                    self.retry = self.retry.and_then(|v| match b {
                        b'0'..=b'9' => v.checked_mul(10)?.checked_add(u64::from(b - b'0')),
                        _ => None,
                    });
                }
            }
            Field::Comment | Field::Ignored => {}
        }
    }

    fn finish_field(&mut self, field: Field) -> Option<SseItem> {
        match field {
            Field::Comment => Some(SseItem::Comment),
            Field::Retry if self.retry_len > 0 => self.retry.take().map(SseItem::Retry),
            Field::Id if !self.id_too_long && !self.id.contains(&0) => {
                self.last_id =
                    (!self.id.is_empty()).then(|| String::from_utf8_lossy(&self.id).into_owned());
                None
            }
            _ => None,
        }
    }
}

/// The event being assembled: data, size accounting, event type.
#[derive(Debug)]
struct EventBuffer {
    max_bytes: usize,
    /// Joined data so far; never longer than `max_bytes`, empty once oversized.
    data: Vec<u8>,
    has_data: bool,
    /// Length of the joined data, counted even after storing stopped.
    size: usize,
    oversized: bool,
    preview: Vec<u8>,
    event_type: Vec<u8>,
    /// Events of this type are streamed, not buffered.
    streamed_type: Option<Box<[u8]>>,
    /// The current event is streamed: its data goes to `queue` as it arrives.
    streaming: bool,
    /// Items ready to be handed out, in order (a line yields at most a few).
    queue: VecDeque<SseItem>,
}

impl EventBuffer {
    fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            data: Vec::new(),
            has_data: false,
            size: 0,
            oversized: false,
            preview: Vec::new(),
            event_type: Vec::new(),
            streamed_type: None,
            streaming: false,
            queue: VecDeque::new(),
        }
    }

    fn buffered_capacity(&self) -> usize {
        let queued: usize = self
            .queue
            .iter()
            .map(|item| match item {
                SseItem::Data(b) => b.len(),
                _ => 0,
            })
            .sum();
        self.data.capacity() + self.preview.capacity() + self.event_type.capacity() + queued
    }

    fn begin_data_line(&mut self) {
        if self.has_data {
            self.append_data(b"\n");
        } else {
            self.streaming = !self.oversized
                && self
                    .streamed_type
                    .as_deref()
                    .is_some_and(|t| *t == self.event_type[..]);
        }
        self.has_data = true;
    }

    fn append_data(&mut self, bytes: &[u8]) {
        if self.streaming {
            if !bytes.is_empty() {
                self.queue
                    .push_back(SseItem::Data(Bytes::copy_from_slice(bytes)));
            }
            return;
        }
        self.size = self.size.saturating_add(bytes.len());
        if !self.oversized && self.size > self.max_bytes {
            self.mark_oversized();
        }
        if self.oversized {
            let room = PREVIEW_BYTES.saturating_sub(self.preview.len());
            self.preview
                .extend_from_slice(&bytes[..room.min(bytes.len())]);
            return;
        }
        // Grow by doubling, but never past the limit: capacity stays <= max_bytes.
        let needed = self.data.len() + bytes.len();
        if needed > self.data.capacity() {
            let target = needed
                .max(self.data.capacity() * 2)
                .max(DATA_MIN_CAPACITY)
                .min(self.max_bytes);
            self.data.reserve_exact(target - self.data.len());
        }
        self.data.extend_from_slice(bytes);
    }

    fn begin_event_type(&mut self) {
        if !self.streaming {
            self.event_type.clear();
        }
    }

    fn append_event_type(&mut self, bytes: &[u8]) {
        if self.streaming {
            return;
        }
        let room = MAX_EVENT_TYPE_BYTES - self.event_type.len();
        if bytes.len() > room {
            self.event_type.extend_from_slice(&bytes[..room]);
            self.mark_oversized();
        } else {
            self.event_type.extend_from_slice(bytes);
        }
    }

    /// Stops storing data: keeps a preview and frees the data buffer.
    fn mark_oversized(&mut self) {
        if self.oversized {
            return;
        }
        self.oversized = true;
        self.preview.clear();
        self.preview.reserve_exact(PREVIEW_BYTES);
        let kept = self.data.len().min(PREVIEW_BYTES);
        self.preview.extend_from_slice(&self.data[..kept]);
        self.data = Vec::new();
    }

    /// Blank line: yields the event if it had data, and resets for the next one either way.
    fn dispatch(&mut self, last_id: Option<&str>) -> Option<SseItem> {
        let item = if !self.has_data {
            None
        } else if self.streaming {
            Some(SseItem::DataEnd)
        } else if self.oversized {
            Some(SseItem::Oversized {
                event_type: self.event_type_string(),
                size: self.size,
                preview: Bytes::copy_from_slice(&self.preview),
            })
        } else {
            Some(SseItem::Event(SseEvent {
                event_type: self.event_type_string(),
                data: Bytes::from(std::mem::take(&mut self.data)),
                id: last_id.map(str::to_owned),
            }))
        };
        self.has_data = false;
        self.streaming = false;
        self.oversized = false;
        self.size = 0;
        self.data.clear();
        self.preview.clear();
        self.event_type.clear();
        item
    }

    fn event_type_string(&self) -> String {
        if self.event_type.is_empty() {
            DEFAULT_EVENT_TYPE.to_owned()
        } else {
            String::from_utf8_lossy(&self.event_type).into_owned()
        }
    }
}
