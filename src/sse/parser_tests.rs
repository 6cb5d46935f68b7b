//! Unit tests for the SSE parser: framing rules, chunking invariance, memory bounds.

use crate::test_rng::XorShift;
use bytes::Bytes;

use super::fuzz::fuzz_parse;
use super::parser::{MAX_EVENT_TYPE_BYTES, PREVIEW_BYTES, SseEvent, SseItem, SseParser};

const BIG: usize = 1 << 20;

/// Every framing feature at once: BOM, all line ends, comments, ids, retry, unknown fields,
/// an event without data, multi-byte UTF-8, non-UTF-8 data and an oversized event.
const SAMPLE: &[u8] = b"\xEF\xBB\xBF: hello\r\n\
event: data\r\ndata:[1,\r\ndata: 2]\r\n\r\n\
event: ignored\rid: 7\r\r\
data\ndata:  two spaces\nfoo: bar\nretry: 1500\n\n\
event: caf\xC3\xA9\ndata: \xFF\xFE\x80\r\n\n\
event: big\ndata: 0123456789012345678901234567890123456789\ndata: x\n\n\
:\ndata: last\r";

fn parse_chunks<'a>(max: usize, chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<SseItem> {
    let mut parser = SseParser::new(max);
    let mut items = Vec::new();
    for chunk in chunks {
        parser.push(chunk);
        items.extend(std::iter::from_fn(|| parser.next_event()));
    }
    items
}

fn parse(input: &[u8]) -> Vec<SseItem> {
    parse_chunks(BIG, [input])
}

fn event(event_type: &str, data: &[u8]) -> SseItem {
    event_with_id(event_type, data, None)
}

fn event_with_id(event_type: &str, data: &[u8], id: Option<&str>) -> SseItem {
    SseItem::Event(SseEvent {
        event_type: event_type.to_owned(),
        data: Bytes::copy_from_slice(data),
        id: id.map(str::to_owned),
    })
}

fn sample_items() -> Vec<SseItem> {
    parse_chunks(32, [SAMPLE])
}

#[test]
fn sample_parses_as_expected() {
    let want = vec![
        SseItem::Comment,
        event("data", b"[1,\n2]"),
        SseItem::Retry(1500),
        event_with_id("message", b"\n two spaces", Some("7")),
        event_with_id("caf\u{e9}", b"\xFF\xFE\x80", Some("7")),
        SseItem::Oversized {
            event_type: "big".to_owned(),
            size: 42,
            preview: Bytes::from_static(b"0123456789012345678901234567890123456789\nx"),
        },
        SseItem::Comment,
    ];
    assert_eq!(sample_items(), want);
}

#[test]
fn every_two_way_split_matches_unsplit() {
    let want = sample_items();
    for at in 0..=SAMPLE.len() {
        let (a, b) = SAMPLE.split_at(at);
        assert_eq!(parse_chunks(32, [a, b]), want, "split at {at}");
    }
}

#[test]
fn every_three_way_split_matches_unsplit() {
    let want = sample_items();
    for i in 0..=SAMPLE.len() {
        for j in i..=SAMPLE.len() {
            let chunks = [&SAMPLE[..i], &SAMPLE[i..j], &SAMPLE[j..]];
            assert_eq!(parse_chunks(32, chunks), want, "split at {i} and {j}");
        }
    }
}

#[test]
fn one_byte_at_a_time_matches_unsplit() {
    assert_eq!(parse_chunks(32, SAMPLE.chunks(1)), sample_items());
}

#[test]
fn multi_line_data_is_joined_with_lf() {
    let got = parse(b"data: a\ndata: b\ndata:\ndata: c\n\n");
    assert_eq!(got, vec![event("message", b"a\nb\n\nc")]);
}

#[test]
fn one_optional_space_after_colon_is_stripped() {
    assert_eq!(parse(b"data:x\n\n"), vec![event("message", b"x")]);
    assert_eq!(parse(b"data: x\n\n"), vec![event("message", b"x")]);
    assert_eq!(parse(b"data:  x \n\n"), vec![event("message", b" x ")]);
    assert_eq!(
        parse(b"event:data\n\tdata:\tx\ndata:\tx\n\n"),
        vec![event("data", b"\tx")]
    );
}

#[test]
fn lf_crlf_cr_and_mixed_line_ends() {
    let want = vec![event("e", b"a\nb"), event("message", b"c")];
    for stream in [
        &b"event: e\ndata: a\ndata: b\n\ndata: c\n\n"[..],
        b"event: e\r\ndata: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n",
        b"event: e\rdata: a\rdata: b\r\rdata: c\r\r",
        b"event: e\rdata: a\r\ndata: b\n\r\ndata: c\r\r\n",
    ] {
        assert_eq!(
            parse(stream),
            want,
            "stream {:?}",
            String::from_utf8_lossy(stream)
        );
    }
}

#[test]
fn cr_at_chunk_end_then_lf_is_one_line_end() {
    let got = parse_chunks(BIG, [&b"data: a\r"[..], b"\ndata: b\r", b"\n\r", b"\n"]);
    assert_eq!(got, vec![event("message", b"a\nb")]);
    // A CR followed by an empty chunk still waits for the next byte.
    let got = parse_chunks(BIG, [&b"data: a\r"[..], b"", b"\n", b"\r", b"\r"]);
    assert_eq!(got, vec![event("message", b"a")]);
}

#[test]
fn comments_are_reported_and_do_not_break_events() {
    let got = parse(b": keepalive\n:\ndata: a\n:: inside\ndata: b\n\n");
    let want = vec![
        SseItem::Comment,
        SseItem::Comment,
        SseItem::Comment,
        event("message", b"a\nb"),
    ];
    assert_eq!(got, want);
}

#[test]
fn id_persists_across_events_and_empty_id_resets() {
    let got = parse(b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: x\x00y\ndata: d\n\n");
    let want = vec![
        event_with_id("message", b"a", Some("1")),
        event_with_id("message", b"b", Some("1")),
        event("message", b"c"),
        event("message", b"d"),
    ];
    assert_eq!(got, want);
}

#[test]
fn retry_is_parsed_only_when_all_digits() {
    let got = parse(b"retry: 10\nretry: 1x\nretry:\nretry: 99999999999999999999999\nretry:0\n");
    assert_eq!(got, vec![SseItem::Retry(10), SseItem::Retry(0)]);
}

#[test]
fn unknown_fields_and_case_mismatches_are_ignored() {
    let got = parse(b"foo: bar\nData: no\ndatax: no\nevents: no\nidentity: no\ndata: yes\n\n");
    assert_eq!(got, vec![event("message", b"yes")]);
}

#[test]
fn line_without_colon_is_a_field_with_empty_value() {
    let got = parse(b"data\ndata\n\nevent\ndata: x\n\n");
    assert_eq!(got, vec![event("message", b"\n"), event("message", b"x")]);
}

#[test]
fn bom_is_skipped_once_even_when_split() {
    let want = vec![event("message", b"a")];
    assert_eq!(parse(b"\xEF\xBB\xBFdata: a\n\n"), want);
    let split = [&b"\xEF"[..], b"", b"\xBB", b"\xBFdata: a\n\n"];
    assert_eq!(parse_chunks(BIG, split), want);
    // A second BOM is part of the field name, so that line is an unknown field.
    assert_eq!(
        parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n"),
        vec![event("message", b"b")]
    );
}

#[test]
fn partial_bom_is_replayed_as_input() {
    for split in 0..=2 {
        let stream = b"\xEF\xBBdata: a\n\ndata: b\n\n";
        let (a, b) = stream.split_at(split);
        let got = parse_chunks(BIG, [a, b]);
        assert_eq!(got, vec![event("message", b"b")], "split at {split}");
    }
}

#[test]
fn event_without_data_is_not_dispatched_and_resets_type() {
    let got = parse(b"event: control\n\ndata: x\n\nevent: a\nid: 1\n\nevent: b\ndata: y\n\n");
    let want = vec![event("message", b"x"), event_with_id("b", b"y", Some("1"))];
    assert_eq!(got, want);
}

#[test]
fn incomplete_event_at_end_of_input_is_not_dispatched() {
    assert_eq!(parse(b"data: a\n"), vec![]);
    assert_eq!(parse(b"data: a\n\ndata: b"), vec![event("message", b"a")]);
}

#[test]
fn data_at_the_limit_is_kept_and_one_byte_more_is_oversized() {
    assert_eq!(
        parse_chunks(4, [&b"data: abcd\n\n"[..]]),
        vec![event("message", b"abcd")]
    );
    let got = parse_chunks(4, [&b"data: ab\ndata: cd\n\ndata: ok\n\n"[..]]);
    let want = vec![
        SseItem::Oversized {
            event_type: "message".to_owned(),
            size: 5,
            preview: Bytes::from_static(b"ab\ncd"),
        },
        event("message", b"ok"),
    ];
    assert_eq!(got, want);
}

#[test]
fn oversized_event_is_bounded_then_parsing_continues() {
    let mut stream = b"event: data\n".to_vec();
    for _ in 0..100 {
        stream.extend_from_slice(b"data: ");
        stream.extend(std::iter::repeat_n(b'x', 1000));
        stream.push(b'\n');
    }
    stream.extend_from_slice(b"\nevent: control\ndata: ok\n\n");
    let max = 1024;
    let mut parser = SseParser::new(max);
    let mut got = Vec::new();
    for chunk in stream.chunks(500) {
        got.extend(parser.feed(chunk));
        let used = parser.buffered_capacity();
        assert!(
            used <= max + 1000 + 3 * PREVIEW_BYTES,
            "parser holds {used} bytes"
        );
    }
    let want = vec![
        SseItem::Oversized {
            event_type: "data".to_owned(),
            size: 100 * 1000 + 99,
            preview: Bytes::from(vec![b'x'; PREVIEW_BYTES]),
        },
        event("control", b"ok"),
    ];
    assert_eq!(got, want);
}

#[test]
fn overlong_lines_without_newline_are_counted_not_stored() {
    let mut parser = SseParser::new(1024);
    let filler = vec![b'y'; 4096];
    let mut got = Vec::new();
    for head in [&b"data: "[..], b": comment ", b"unknown-field: "] {
        parser.push(head);
        for _ in 0..256 {
            got.extend(parser.feed(&filler));
            let used = parser.buffered_capacity();
            assert!(
                used <= 2 * 4096 + 1024 + 3 * PREVIEW_BYTES,
                "parser holds {used} bytes"
            );
        }
        parser.push(b"\n");
    }
    got.extend(parser.feed(b"\ndata: fine\n\n"));
    let want = vec![
        SseItem::Comment,
        SseItem::Oversized {
            event_type: "message".to_owned(),
            size: 256 * 4096,
            preview: Bytes::from(vec![b'y'; PREVIEW_BYTES]),
        },
        event("message", b"fine"),
    ];
    assert_eq!(got, want);
}

#[test]
fn overlong_event_type_makes_event_oversized_and_overlong_id_is_ignored() {
    let long_type = "e".repeat(MAX_EVENT_TYPE_BYTES + 50);
    let long_id = "i".repeat(1000);
    let stream = format!("id: a\nid: {long_id}\nevent: {long_type}\ndata: x\n\ndata: y\n\n");
    let got = parse(stream.as_bytes());
    let want = vec![
        SseItem::Oversized {
            event_type: "e".repeat(MAX_EVENT_TYPE_BYTES),
            size: 1,
            preview: Bytes::from_static(b"x"),
        },
        event_with_id("message", b"y", Some("a")),
    ];
    assert_eq!(got, want);
}

#[test]
fn non_utf8_data_bytes_are_preserved() {
    let got = parse(b"data: \xFF\x00\xC3\ndata:\xE2\x82\n\n");
    assert_eq!(got, vec![event("message", b"\xFF\x00\xC3\n\xE2\x82")]);
}

#[test]
fn undrained_pushes_are_compacted_and_parse_the_same() {
    let mut parser = SseParser::new(BIG);
    parser.push(b"data: a\n\ndata: b\n\n");
    assert_eq!(parser.next_event(), Some(event("message", b"a")));
    parser.push(b"data: c\n\n");
    let rest: Vec<_> = std::iter::from_fn(|| parser.next_event()).collect();
    assert_eq!(rest, vec![event("message", b"b"), event("message", b"c")]);
}

#[test]
fn feed_leaves_untaken_items_queued() {
    let mut parser = SseParser::new(BIG);
    let first = parser.feed(b"data: a\n\ndata: b\n\n").next();
    assert_eq!(first, Some(event("message", b"a")));
    let rest: Vec<_> = parser.feed(b"data: c\n\n").collect();
    assert_eq!(rest, vec![event("message", b"b"), event("message", b"c")]);
}

/// A random valid stream and the items it must parse into.
fn random_stream(rng: &mut XorShift) -> (Vec<u8>, Vec<SseItem>) {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut want = Vec::new();
    let mut last_id: Option<String> = None;
    for _ in 0..rng.below(6) {
        let first_line = lines.len();
        let mut data_lines: Vec<Vec<u8>> = Vec::new();
        for _ in 0..rng.below(8) {
            let line = random_line(rng, &mut want, &mut last_id, &mut data_lines);
            lines.push(line);
        }
        let event_type = *rng.pick(&[None, Some("data"), Some("control"), Some("\u{e9}")]);
        if let Some(t) = event_type {
            let at = first_line + rng.below(lines.len() - first_line + 1);
            lines.insert(at, format!("event: {t}").into_bytes());
        }
        lines.push(Vec::new());
        if !data_lines.is_empty() {
            let data = data_lines.join(&b'\n');
            let event_type = event_type.unwrap_or("message");
            want.push(event_with_id(event_type, &data, last_id.as_deref()));
        }
    }
    (frame(rng, &lines), want)
}

/// One non-blank line of an event; records what it contributes to the expected items.
fn random_line(
    rng: &mut XorShift,
    want: &mut Vec<SseItem>,
    last_id: &mut Option<String>,
    data_lines: &mut Vec<Vec<u8>>,
) -> Vec<u8> {
    const VALUE_BYTES: &[u8] = b"ab :{}\"\xFF\xC3\xA9\x00\t";
    let value: Vec<u8> = (0..rng.below(12)).map(|_| *rng.pick(VALUE_BYTES)).collect();
    match rng.below(6) {
        0 => {
            want.push(SseItem::Comment);
            [b":", &value[..]].concat()
        }
        1 => {
            let ms = rng.next() % 100_000;
            want.push(SseItem::Retry(ms));
            format!("retry: {ms}").into_bytes()
        }
        2 => {
            let id = (rng.next() % 1000).to_string();
            *last_id = Some(id.clone());
            format!("id:{id}").into_bytes()
        }
        3 => [b"unknown:", &value[..]].concat(),
        _ => {
            let space = value.first() == Some(&b' ') || rng.below(2) == 0;
            let head: &[u8] = if space { b"data: " } else { b"data:" };
            let line = [head, &value[..]].concat();
            data_lines.push(value);
            line
        }
    }
}

/// Joins lines with random line ends, optionally behind a BOM. A CR end is never followed by
/// a blank line ended by LF, which would read as one CRLF.
fn frame(rng: &mut XorShift, lines: &[Vec<u8>]) -> Vec<u8> {
    const ENDS: [&[u8]; 3] = [b"\n", b"\r\n", b"\r"];
    let mut out = Vec::new();
    if rng.below(4) == 0 {
        out.extend_from_slice(b"\xEF\xBB\xBF");
    }
    let mut prev_cr = false;
    for line in lines {
        let mut end = *rng.pick(&ENDS);
        if prev_cr && line.is_empty() && end == b"\n" {
            end = b"\r\n";
        }
        out.extend_from_slice(line);
        out.extend_from_slice(end);
        prev_cr = end == b"\r";
    }
    out
}

/// Splits `stream` at random points (empty chunks included).
fn random_chunks<'a>(rng: &mut XorShift, stream: &'a [u8]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let len = rng.below(rest.len().min(40) + 1);
        let (chunk, tail) = rest.split_at(len);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

#[test]
fn random_valid_streams_parse_the_same_however_chunked() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for round in 0..2000 {
        let (stream, want) = random_stream(&mut rng);
        assert_eq!(parse(&stream), want, "round {round}: whole stream");
        let chunks = random_chunks(&mut rng, &stream);
        assert_eq!(parse_chunks(BIG, chunks), want, "round {round}: chunked");
        fuzz_parse(&[&[rng.next() as u8][..], &stream].concat());
    }
}

#[test]
fn random_byte_soups_never_panic() {
    const INTERESTING: &[u8] = b"\r\n\r\n:: data event id retry\xEF\xBB\xBF\xFF\x00x";
    let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
    for _ in 0..3000 {
        let len = rng.below(300);
        let soup: Vec<u8> = if rng.below(2) == 0 {
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            (0..len).map(|_| *rng.pick(INTERESTING)).collect()
        };
        fuzz_parse(&soup);
        let chunks = random_chunks(&mut rng, &soup);
        assert_eq!(parse_chunks(64, chunks), parse_chunks(64, [&soup[..]]));
    }
}

#[test]
fn fuzz_parse_accepts_trivial_inputs() {
    fuzz_parse(b"");
    fuzz_parse(b"\x00");
    fuzz_parse(SAMPLE);
}
