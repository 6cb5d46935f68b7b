//! The DS reading of an SSE body, item by item as its bytes arrive: the SSE parser streams
//! the data of `event: data` events into the [`ArraySplitter`], so each message of a data
//! event comes out as soon as its last byte is in, and a backlog sent as one 100 MB event is
//! never held whole. Control events are small and parsed whole.
//!
//! ```text
//! body bytes ─push─► SseParser ─┬─ Data pieces ─► ArraySplitter ─► Array(element …) … DataEnd
//!                   (streaming  ├─ event: control ──────────────► Control
//!                    "data")    ├─ other event types ───────────► Other
//!                               └─ buffered event over its limit ► Oversized
//! ```
//!
//! A data event whose `event:` line comes after its first data line cannot be streamed (its
//! type is unknown while its data arrives); it is buffered up to the parser's limit and split
//! when it ends, or reported as [`DsItem::Oversized`]. Pure: no I/O, and any byte sequence
//! gives items or typed errors, never a panic.

use super::array::{ArrayItem, ArraySplitter};
use super::ds::{CONTROL_EVENT, Control, DATA_EVENT, DsEventError, parse_control};
use super::parser::{SseItem, SseParser};

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DsItem {
    /// An element of the current data event, or what of it could not be split.
    Array(ArrayItem),
    /// The current data event ended; its items came before.
    DataEnd,
    /// A control event: the offset the data since the last control ends at.
    Control(Control),
    /// An event of another type (skipped by DS readers).
    Other { event_type: String },
    /// A buffered event over the limit: a control too large to read, or a data event that
    /// could not be streamed (its `event:` line came after its data).
    Oversized { event_type: String, size: usize },
}

/// SSE parser and array splitter together; see the module documentation.
#[derive(Debug)]
pub struct DsDecoder {
    sse: SseParser,
    array: ArraySplitter,
    /// The current data event's bytes are all in the splitter: finish it once drained.
    closing: bool,
    /// The splitter is finished: [`DsItem::DataEnd`] is next.
    ending: bool,
}

impl DsDecoder {
    /// A decoder whose messages over `max_message_bytes` come out as
    /// [`ArrayItem::TooLarge`], and whose buffered (not streamed) events are limited to
    /// `max_buffered_event_bytes`.
    #[must_use]
    pub fn new(max_message_bytes: usize, max_buffered_event_bytes: usize) -> DsDecoder {
        DsDecoder {
            sse: SseParser::new(max_buffered_event_bytes).streaming(DATA_EVENT),
            array: ArraySplitter::new(max_message_bytes),
            closing: false,
            ending: false,
        }
    }

    /// The same decoder with another message limit (before any byte was pushed).
    #[must_use]
    pub fn with_message_limit(mut self, max_message_bytes: usize) -> DsDecoder {
        self.array = ArraySplitter::new(max_message_bytes);
        self
    }

    /// Appends body bytes. Drain [`next_item`](Self::next_item) until `None` before pushing again.
    pub fn push(&mut self, chunk: &[u8]) {
        self.sse.push(chunk);
    }

    /// The next item from the bytes pushed so far; `None` when more are needed.
    ///
    /// # Errors
    ///
    /// A control event that cannot be read (see [`DsEventError`]); decoding goes on after it.
    pub fn next_item(&mut self) -> Option<Result<DsItem, DsEventError>> {
        loop {
            if let Some(item) = self.array.next_item() {
                return Some(Ok(DsItem::Array(item)));
            }
            if self.closing {
                self.closing = false;
                self.ending = true;
                if let Some(item) = self.array.finish() {
                    return Some(Ok(DsItem::Array(item)));
                }
            }
            if self.ending {
                self.ending = false;
                return Some(Ok(DsItem::DataEnd));
            }
            match self.sse.next_event()? {
                SseItem::Data(piece) => self.array.push(piece),
                SseItem::DataEnd => self.closing = true,
                SseItem::Event(ev) if ev.event_type == DATA_EVENT => {
                    self.array.push(ev.data);
                    self.closing = true;
                }
                SseItem::Event(ev) if ev.event_type == CONTROL_EVENT => {
                    return Some(parse_control(&ev.data).map(DsItem::Control));
                }
                SseItem::Event(ev) => {
                    return Some(Ok(DsItem::Other {
                        event_type: ev.event_type,
                    }));
                }
                SseItem::Oversized {
                    event_type, size, ..
                } => return Some(Ok(DsItem::Oversized { event_type, size })),
                SseItem::Comment | SseItem::Retry(_) => {}
            }
        }
    }

    /// Whether a data event is in progress (some of its data arrived, not its end).
    #[must_use]
    pub fn in_data_event(&self) -> bool {
        !self.array.is_idle() || self.closing || self.ending
    }

    /// Bytes held by the parser and the splitter.
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.sse.buffered_capacity() + self.array.buffered_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<DsItem> {
        let mut d = DsDecoder::new(1 << 20, 4096);
        let mut out = Vec::new();
        for chunk in chunks {
            d.push(chunk);
            while let Some(item) = d.next_item() {
                out.push(item.expect("valid items"));
            }
        }
        out
    }

    fn element(index: usize, text: &str) -> DsItem {
        DsItem::Array(ArrayItem::Element {
            index,
            text: text.as_bytes().to_vec(),
        })
    }

    const STREAM: &[u8] = b": keepalive\n\n\
        event: data\ndata:[{\"key\":\"a\"},\ndata: {\"key\":\"b\"}]\n\n\
        event: control\ndata:{\"streamNextOffset\":\"0_2\",\"upToDate\":true}\n\n\
        event: presence\ndata: hi\n\n\
        data:[3]\nevent: data\n\n";

    fn want() -> Vec<DsItem> {
        vec![
            element(0, r#"{"key":"a"}"#),
            element(1, r#"{"key":"b"}"#),
            DsItem::DataEnd,
            DsItem::Control(Control {
                stream_next_offset: "0_2".into(),
                stream_cursor: None,
                up_to_date: true,
                stream_closed: false,
            }),
            DsItem::Other {
                event_type: "presence".into(),
            },
            element(0, "3"),
            DsItem::DataEnd,
        ]
    }

    #[test]
    fn data_elements_come_out_then_the_control() {
        assert_eq!(decode_chunks([STREAM]), want());
    }

    #[test]
    fn every_split_gives_the_same_items() {
        for at in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(at);
            assert_eq!(decode_chunks([a, b]), want(), "split at {at}");
        }
        assert_eq!(decode_chunks(STREAM.chunks(1)), want());
    }

    #[test]
    fn elements_come_out_before_the_data_event_ends() {
        let mut d = DsDecoder::new(1 << 20, 4096);
        d.push(b"event: data\ndata:[1,2,");
        let got: Vec<_> = std::iter::from_fn(|| d.next_item())
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, vec![element(0, "1"), element(1, "2")]);
        d.push(b"3]\n\n");
        let got: Vec<_> = std::iter::from_fn(|| d.next_item())
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, vec![element(2, "3"), DsItem::DataEnd]);
    }

    #[test]
    fn an_empty_data_event_and_a_broken_one_are_reported() {
        let got = decode_chunks([&b"event: data\ndata:\n\nevent: data\ndata: [1,\n\n"[..]]);
        assert_eq!(
            got,
            vec![
                DsItem::Array(ArrayItem::NotArray {
                    prefix: vec![],
                    size: 0
                }),
                DsItem::DataEnd,
                element(0, "1"),
                DsItem::Array(ArrayItem::Unterminated {
                    index: 1,
                    prefix: vec![],
                    size: 0
                }),
                DsItem::DataEnd,
            ]
        );
    }

    #[test]
    fn a_huge_streamed_data_event_is_not_limited_by_the_buffered_limit() {
        let mut d = DsDecoder::new(1 << 20, 64);
        d.push(b"event: data\ndata:[");
        let mut n = 0;
        for i in 0..10_000 {
            let sep = if i == 0 { "" } else { "," };
            d.push(format!("{sep}{{\"n\":{i}}}").as_bytes());
            while let Some(item) = d.next_item() {
                assert!(matches!(item, Ok(DsItem::Array(ArrayItem::Element { .. }))));
                n += 1;
            }
            assert!(d.buffered_bytes() < 1024, "{}", d.buffered_bytes());
        }
        d.push(b"]\n\n");
        let rest: Vec<_> = std::iter::from_fn(|| d.next_item())
            .map(Result::unwrap)
            .collect();
        assert_eq!(rest.len(), 2, "{rest:?}");
        assert_eq!(n + 1, 10_000);
    }

    #[test]
    fn buffered_events_over_the_limit_are_oversized_and_bad_controls_are_errors() {
        let mut d = DsDecoder::new(1 << 20, 8);
        d.push(b"data: [1,2,3,4,5]\nevent: data\n\nevent: control\ndata: {}\n\n");
        let first = d.next_item().map(Result::unwrap);
        assert_eq!(
            first,
            Some(DsItem::Oversized {
                event_type: "data".into(),
                size: 11
            })
        );
        assert!(matches!(
            d.next_item(),
            Some(Err(DsEventError::MissingNextOffset { .. }))
        ));
        assert!(d.next_item().is_none());
    }

    #[test]
    fn random_streams_decode_the_same_however_chunked() {
        const PIECES: [&[u8]; 12] = [
            b"event: data\n",
            b"event: control\n",
            b"data:",
            b"data: [",
            b"{\"k\":\"a,]\"}",
            b",",
            b"]",
            b"\n",
            b"\r\n",
            b"{\"streamNextOffset\":\"1\"}",
            b": ka\n",
            b"\"\\\"",
        ];
        let mut rng = crate::test_rng::XorShift(0x5DEE_CE66_D1B5_4A32);
        for _ in 0..3000 {
            let mut stream = vec![rng.next() as u8];
            for _ in 0..rng.below(40) {
                stream.extend_from_slice(PIECES[rng.below(PIECES.len())]);
            }
            crate::sse::fuzz_decode(&stream);
        }
        crate::sse::fuzz_decode(b"");
        crate::sse::fuzz_decode(STREAM);
    }
}
