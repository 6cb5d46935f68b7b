//! Unit tests of message decoding: the field mapping, spans, dead letters per message,
//! what cannot be split, memory accounting.

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
    let msg =
        r#"{"key":"event-1","type":"user-action","operation":"click","data":{"button":"submit"}}"#;
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
