//! Fuzz entry for the SSE parser: one input drives both the stream and how it is chunked.

use super::parser::{MAX_EVENT_TYPE_BYTES, MAX_ID_BYTES, PREVIEW_BYTES, SseItem, SseParser};

/// Longest chunk [`fuzz_parse`] feeds.
const MAX_CHUNK: usize = 23;

/// Parses `data` twice, whole and in data-derived chunks, and panics if the results differ
/// or the chunked parser's buffers outgrow their bound. The first byte picks a small event
/// limit (so the oversized path is hit) and salts the chunk lengths; the rest is the stream.
///
/// # Panics
///
/// On a parser bug: that is what a fuzzer looks for. Any input is otherwise accepted.
pub fn fuzz_parse(data: &[u8]) {
    let Some((&knob, stream)) = data.split_first() else {
        return;
    };
    let max_event_bytes = usize::from(knob % 64) * 8;
    let mut whole = SseParser::new(max_event_bytes);
    let expected: Vec<SseItem> = whole.feed(stream).collect();

    let bound = max_event_bytes
        + 2 * (MAX_CHUNK + PREVIEW_BYTES + MAX_EVENT_TYPE_BYTES + MAX_ID_BYTES)
        + 64;
    let mut parser = SseParser::new(max_event_bytes);
    let mut got = Vec::with_capacity(expected.len());
    let mut rest = stream;
    let mut step = 0;
    while !rest.is_empty() {
        let salt = stream.get(step).copied().unwrap_or(0) ^ knob;
        let len = (1 + usize::from(salt) % MAX_CHUNK).min(rest.len());
        let (chunk, tail) = rest.split_at(len);
        got.extend(parser.feed(chunk));
        let used = parser.buffered_capacity();
        assert!(used <= bound, "parser holds {used} bytes, bound is {bound}");
        rest = tail;
        step += 1;
    }
    assert_eq!(got, expected, "chunked parse differs from whole parse");
}
