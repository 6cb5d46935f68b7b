//! Incremental splitter of a JSON array into its elements' texts: a DS data event (or a
//! catch-up read's body) is `[msg, msg, ...]`, and a server may send a whole backlog as one
//! (a million messages make about 100 MB). The splitter hands out each element as soon as its
//! last byte arrives, so nothing larger than one element is ever held.
//!
//! Bytes in ([`ArraySplitter::push`], split anywhere), [`ArrayItem`]s out
//! ([`ArraySplitter::next_item`]), no I/O. It is lexical only: it follows strings (with their
//! escapes) and bracket depth to find the commas and the `]` that end elements at the top
//! level; whether an element is valid JSON is for the caller to decide, element by element,
//! so one bad message does not take its neighbours down. What cannot be split (the data is
//! not an array, the array is not closed, bytes follow it) is reported once, at
//! [`ArraySplitter::finish`], with the first [`PREFIX_BYTES`] of the offending bytes.
//!
//! Memory: the current element (never more than the size limit; past it only its first
//! [`PREFIX_BYTES`] are kept while the rest is counted), the pushed chunk not yet scanned, and
//! the kept prefix of data that is not an array.

use bytes::Bytes;

/// Bytes kept of data that cannot be stored (an oversized element, data that is not an
/// array, bytes after the array).
pub const PREFIX_BYTES: usize = 64 * 1024;
/// Element buffers up to this capacity are reused; an element is copied out of it.
const RETAIN_BYTES: usize = 64 * 1024;
/// The element buffer grows by doubling, but by at most this much at a time, so that one
/// pushed chunk never makes it grow by much more than the chunk itself.
const MAX_GROWTH: usize = 1 << 20;

/// What the splitter yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArrayItem {
    /// One element's text, without the JSON whitespace around it. It may be empty (`[1,,2]`,
    /// `[1,]`) and is not validated.
    Element { index: usize, text: Vec<u8> },
    /// An element over the size limit: its size and its first [`PREFIX_BYTES`] bytes.
    TooLarge {
        index: usize,
        size: usize,
        prefix: Vec<u8>,
    },
    /// The data does not start with `[` (after whitespace): all of it, as a prefix and a size.
    NotArray { prefix: Vec<u8>, size: usize },
    /// The data ended inside the array; `prefix` / `size` are the unfinished element's.
    Unterminated {
        index: usize,
        prefix: Vec<u8>,
        size: usize,
    },
    /// Bytes other than whitespace after the array's closing `]`.
    Trailing { prefix: Vec<u8>, size: usize },
}

/// Where the splitter is in the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the opening `[`.
    Start,
    /// After `[`: an element or `]`.
    Open,
    /// After a top-level `,`: an element.
    Comma,
    /// Inside an element.
    Element,
    /// After the closing `]`: whitespace only.
    Closed,
    /// The data is not an array: everything is kept as the prefix.
    NotArray,
    /// Non-whitespace followed the array: everything from there is kept as the prefix.
    Trailing,
}

/// Incremental JSON array splitter; see the module documentation.
#[derive(Debug)]
pub struct ArraySplitter {
    max_element_bytes: usize,
    input: Bytes,
    pos: usize,
    phase: Phase,
    index: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
    element: Vec<u8>,
    /// Full size of the current element, counted also once storing stopped.
    size: usize,
    /// Whitespace at the end of `size`: it may trail the element's value (before its `,` or
    /// `]`), and then it is not the message's, so it does not count against the limit.
    trailing_ws: usize,
    /// Kept bytes of data that is not an array, or of what follows the array.
    rest: Vec<u8>,
    rest_size: usize,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl ArraySplitter {
    /// A splitter that reports elements over `max_element_bytes` as [`ArrayItem::TooLarge`].
    #[must_use]
    pub fn new(max_element_bytes: usize) -> ArraySplitter {
        ArraySplitter {
            max_element_bytes,
            input: Bytes::new(),
            pos: 0,
            phase: Phase::Start,
            index: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            element: Vec::new(),
            size: 0,
            trailing_ws: 0,
            rest: Vec::new(),
            rest_size: 0,
        }
    }

    /// Appends a chunk of the data. Drain [`next_item`](Self::next_item) until `None` first: a chunk
    /// not scanned yet is kept whole, so pushing again copies it.
    pub fn push(&mut self, chunk: Bytes) {
        if self.pos >= self.input.len() {
            self.input = chunk;
        } else {
            let mut joined = Vec::with_capacity(self.input.len() - self.pos + chunk.len());
            joined.extend_from_slice(&self.input[self.pos..]);
            joined.extend_from_slice(&chunk);
            self.input = Bytes::from(joined);
        }
        self.pos = 0;
    }

    /// The next complete element from the bytes pushed so far; `None` when more are needed.
    pub fn next_item(&mut self) -> Option<ArrayItem> {
        while self.pos < self.input.len() {
            let item = match self.phase {
                Phase::Start => self.start(),
                Phase::Open | Phase::Comma => self.between(),
                Phase::Element => self.scan_element(),
                Phase::Closed => self.closed(),
                Phase::NotArray | Phase::Trailing => {
                    let input = self.input.clone();
                    self.keep_rest(&input[self.pos..]);
                    self.pos = input.len();
                    None
                }
            };
            if item.is_some() {
                return item;
            }
        }
        self.release_input();
        None
    }

    /// The data ended: what it left unfinished, if anything. The splitter is then ready for
    /// the next data.
    pub fn finish(&mut self) -> Option<ArrayItem> {
        let item = match self.phase {
            Phase::Start | Phase::NotArray => Some(ArrayItem::NotArray {
                prefix: std::mem::take(&mut self.rest),
                size: self.rest_size,
            }),
            Phase::Open | Phase::Comma | Phase::Element => {
                let mut prefix = std::mem::take(&mut self.element);
                prefix.truncate(PREFIX_BYTES);
                Some(ArrayItem::Unterminated {
                    index: self.index,
                    prefix,
                    size: self.size,
                })
            }
            Phase::Closed => None,
            Phase::Trailing => Some(ArrayItem::Trailing {
                prefix: std::mem::take(&mut self.rest),
                size: self.rest_size,
            }),
        };
        let max = self.max_element_bytes;
        *self = ArraySplitter::new(max);
        item
    }

    /// Whether no data has been pushed since the last [`finish`](Self::finish).
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Start && self.rest_size == 0 && self.pos >= self.input.len()
    }

    /// Bytes held: the unscanned chunk, the element so far, the kept prefix.
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.input.len() + self.element.capacity() + self.rest.capacity()
    }

    fn release_input(&mut self) {
        self.input = Bytes::new();
        self.pos = 0;
    }

    fn start(&mut self) -> Option<ArrayItem> {
        let bytes = &self.input[self.pos..];
        let ws = bytes.iter().take_while(|&&b| is_ws(b)).count();
        let input = self.input.clone();
        self.keep_rest(&input[self.pos..self.pos + ws]);
        self.pos += ws;
        match input.get(self.pos) {
            Some(b'[') => {
                self.pos += 1;
                self.rest = Vec::new();
                self.rest_size = 0;
                self.phase = Phase::Open;
            }
            Some(_) => self.phase = Phase::NotArray,
            None => {}
        }
        None
    }

    /// After `[` or `,`: skips whitespace, then an element starts, or the array closes.
    fn between(&mut self) -> Option<ArrayItem> {
        let bytes = &self.input[self.pos..];
        let ws = bytes.iter().take_while(|&&b| is_ws(b)).count();
        self.pos += ws;
        let b = *self.input.get(self.pos)?;
        match (b, self.phase) {
            (b']', Phase::Open) => {
                self.pos += 1;
                self.phase = Phase::Closed;
                None
            }
            (b']', _) => {
                self.pos += 1;
                self.phase = Phase::Closed;
                Some(self.emit())
            }
            (b',', _) => {
                self.pos += 1;
                self.phase = Phase::Comma;
                Some(self.emit())
            }
            _ => {
                self.phase = Phase::Element;
                None
            }
        }
    }

    fn closed(&mut self) -> Option<ArrayItem> {
        let bytes = &self.input[self.pos..];
        let ws = bytes.iter().take_while(|&&b| is_ws(b)).count();
        self.pos += ws;
        if self.pos < self.input.len() {
            self.phase = Phase::Trailing;
        }
        None
    }

    /// Scans the current element up to its end (a top-level `,` or `]`) or the end of input.
    fn scan_element(&mut self) -> Option<ArrayItem> {
        let input = self.input.clone();
        let bytes = &input[self.pos..];
        let mut i = 0;
        let mut end = None;
        while i < bytes.len() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                    None => i = bytes.len(),
                    Some(k) => {
                        i += k;
                        if bytes[i] == b'\\' {
                            self.escaped = true;
                        } else {
                            self.in_string = false;
                        }
                        i += 1;
                    }
                }
                continue;
            }
            match bytes[i] {
                b'"' => self.in_string = true,
                b'[' | b'{' => self.depth = self.depth.saturating_add(1),
                b']' | b',' if self.depth == 0 => {
                    end = Some(bytes[i]);
                    break;
                }
                b']' | b'}' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
            i += 1;
        }
        self.append(&bytes[..i]);
        self.pos += i;
        let closer = end?;
        self.pos += 1;
        self.phase = if closer == b']' {
            Phase::Closed
        } else {
            Phase::Comma
        };
        Some(self.emit())
    }

    /// Adds element bytes, keeping only a prefix once the element is over the limit.
    /// Whitespace that may trail the value is kept only up to the limit or [`PREFIX_BYTES`],
    /// whichever is larger: when more follows it, the element is over the limit anyway, and
    /// its prefix is whole.
    fn append(&mut self, bytes: &[u8]) {
        let was_over = self.over();
        self.size = self.size.saturating_add(bytes.len());
        self.trailing_ws = match bytes.iter().rposition(|&b| !is_ws(b)) {
            Some(last) => bytes.len() - 1 - last,
            None => self.trailing_ws.saturating_add(bytes.len()),
        };
        if self.over() {
            let room = PREFIX_BYTES.saturating_sub(self.element.len());
            self.element
                .extend_from_slice(&bytes[..room.min(bytes.len())]);
            if !was_over {
                self.element.truncate(PREFIX_BYTES);
                self.element.shrink_to_fit();
            }
            return;
        }
        let fits = self
            .max_element_bytes
            .max(PREFIX_BYTES)
            .saturating_sub(self.element.len());
        let bytes = &bytes[..bytes.len().min(fits)];
        let needed = self.element.len() + bytes.len();
        if needed > self.element.capacity() {
            let cap = self.element.capacity();
            let target = needed.max(cap + cap.min(MAX_GROWTH)).max(256);
            self.element.reserve_exact(target - self.element.len());
        }
        self.element.extend_from_slice(bytes);
    }

    /// Whether the element, without the whitespace that may trail it, is over the limit.
    fn over(&self) -> bool {
        self.size - self.trailing_ws > self.max_element_bytes
    }

    /// The element just ended (its closer consumed).
    fn emit(&mut self) -> ArrayItem {
        let index = self.index;
        self.index += 1;
        let over = self.over();
        let size = std::mem::take(&mut self.size) - std::mem::take(&mut self.trailing_ws);
        self.depth = 0;
        self.in_string = false;
        self.escaped = false;
        if over {
            let mut prefix = std::mem::take(&mut self.element);
            prefix.truncate(PREFIX_BYTES.min(size));
            return ArrayItem::TooLarge {
                index,
                size,
                prefix,
            };
        }
        let trimmed = self
            .element
            .iter()
            .rposition(|&b| !is_ws(b))
            .map_or(0, |p| p + 1);
        self.element.truncate(trimmed);
        let text = if self.element.capacity() <= RETAIN_BYTES {
            let text = self.element.clone();
            self.element.clear();
            text
        } else {
            let mut text = std::mem::take(&mut self.element);
            text.shrink_to_fit();
            text
        };
        ArrayItem::Element { index, text }
    }

    fn keep_rest(&mut self, bytes: &[u8]) {
        self.rest_size = self.rest_size.saturating_add(bytes.len());
        let room = PREFIX_BYTES.saturating_sub(self.rest.len());
        self.rest.extend_from_slice(&bytes[..room.min(bytes.len())]);
    }
}

#[cfg(test)]
#[path = "array_tests.rs"]
mod tests;
