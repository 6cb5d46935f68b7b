//! Fuzz entries for the SSE parser and the DS decoder: one input drives both the stream and
//! how it is chunked, and the chunked result must equal the whole one.

use super::array::PREFIX_BYTES;
use super::decoder::{DsDecoder, DsItem};
use super::parser::{MAX_EVENT_TYPE_BYTES, MAX_ID_BYTES, PREVIEW_BYTES, SseItem, SseParser};

/// Longest chunk the fuzz entries feed.
const MAX_CHUNK: usize = 23;

/// Splits `stream` into data-derived chunks of 1 to [`MAX_CHUNK`] bytes, so the fuzzer
/// steers the cuts (also the cuts of `crate::fuzzing`'s chunked parses).
pub(crate) fn chunks(knob: u8, stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    let mut step = 0;
    while !rest.is_empty() {
        let salt = stream.get(step).copied().unwrap_or(0) ^ knob;
        let len = (1 + usize::from(salt) % MAX_CHUNK).min(rest.len());
        let (chunk, tail) = rest.split_at(len);
        out.push(chunk);
        rest = tail;
        step += 1;
    }
    out
}

/// Merges adjacent [`SseItem::Data`] pieces: how a streamed event's data is cut depends on
/// the chunking, its bytes do not.
fn joined(items: Vec<SseItem>) -> Vec<SseItem> {
    let mut out: Vec<SseItem> = Vec::with_capacity(items.len());
    for item in items {
        if let (SseItem::Data(piece), Some(SseItem::Data(prev))) = (&item, out.last_mut()) {
            *prev = [&prev[..], &piece[..]].concat().into();
            continue;
        }
        out.push(item);
    }
    out
}

/// Parses `data` twice, whole and in data-derived chunks, and panics if the results differ
/// or the chunked parser's buffers outgrow their bound. The first byte picks a small event
/// limit (so the oversized path is hit), whether `data` events are streamed, and salts the
/// chunk lengths; the rest is the stream.
///
/// # Panics
///
/// On a parser bug: that is what a fuzzer looks for. Any input is otherwise accepted.
pub fn fuzz_parse(data: &[u8]) {
    let Some((&knob, stream)) = data.split_first() else {
        return;
    };
    let max_event_bytes = usize::from(knob % 64) * 8;
    let new = || {
        let p = SseParser::new(max_event_bytes);
        if knob & 0x80 != 0 {
            p.streaming("data")
        } else {
            p
        }
    };
    let mut whole = new();
    let expected = joined(whole.feed(stream).collect());

    let bound = max_event_bytes
        + 2 * (MAX_CHUNK + PREVIEW_BYTES + MAX_EVENT_TYPE_BYTES + MAX_ID_BYTES)
        + 64;
    let mut parser = new();
    let mut got = Vec::with_capacity(expected.len());
    for chunk in chunks(knob, stream) {
        got.extend(parser.feed(chunk));
        let used = parser.buffered_capacity();
        assert!(used <= bound, "parser holds {used} bytes, bound is {bound}");
    }
    assert_eq!(
        joined(got),
        expected,
        "chunked parse differs from whole parse"
    );
}

/// Decodes `data` as a DS SSE body twice, whole and in data-derived chunks, and panics if
/// the items differ or the chunked decoder holds more than its bound. The first byte picks
/// small limits and salts the chunk lengths.
///
/// # Panics
///
/// On a decoder bug. Any input is otherwise accepted.
pub fn fuzz_decode(data: &[u8]) {
    let Some((&knob, stream)) = data.split_first() else {
        return;
    };
    let max_message = usize::from(knob % 16) * 4;
    let max_buffered = usize::from(knob / 16) * 8;
    let decode_all = |d: &mut DsDecoder, out: &mut Vec<String>| {
        while let Some(item) = d.next_item() {
            out.push(match item {
                Ok(DsItem::Array(a)) => format!("{a:?}"),
                Ok(other) => format!("{other:?}"),
                Err(e) => format!("error {e}"),
            });
        }
    };
    let mut whole = DsDecoder::new(max_message, max_buffered);
    let mut expected = Vec::new();
    whole.push(stream);
    decode_all(&mut whole, &mut expected);

    let bound = 3 * MAX_CHUNK
        + max_buffered
        + max_message
        + 2 * PREFIX_BYTES
        + 3 * (PREVIEW_BYTES + MAX_EVENT_TYPE_BYTES + MAX_ID_BYTES)
        + 1024;
    let mut d = DsDecoder::new(max_message, max_buffered);
    let mut got = Vec::new();
    for chunk in chunks(knob, stream) {
        d.push(chunk);
        decode_all(&mut d, &mut got);
        let used = d.buffered_bytes();
        assert!(
            used <= bound,
            "decoder holds {used} bytes, bound is {bound}"
        );
    }
    assert_eq!(got, expected, "chunked decode differs from whole decode");
}
