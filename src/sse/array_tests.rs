//! Unit tests of the JSON array splitter: elements at every chunk boundary, nesting and
//! strings, limits, malformed data, memory.

use bytes::Bytes;
use serde_json::value::RawValue;

use super::{ArrayItem, ArraySplitter, PREFIX_BYTES};
use crate::test_rng::XorShift;

const BIG: usize = 1 << 20;

/// Every item of `chunks` pushed one after the other, `finish` included.
fn split_chunks<'a>(max: usize, chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<ArrayItem> {
    let mut s = ArraySplitter::new(max);
    let mut items = Vec::new();
    for chunk in chunks {
        s.push(Bytes::copy_from_slice(chunk));
        items.extend(std::iter::from_fn(|| s.next_item()));
    }
    items.extend(s.finish());
    items
}

fn split(data: &[u8]) -> Vec<ArrayItem> {
    split_chunks(BIG, [data])
}

fn texts(items: &[ArrayItem]) -> Vec<String> {
    items
        .iter()
        .map(|i| match i {
            ArrayItem::Element { text, .. } => String::from_utf8_lossy(text).into_owned(),
            other => panic!("not an element: {other:?}"),
        })
        .collect()
}

const SAMPLE: &[u8] = br#" [ {"key":"a,b]","n":[1,{"x":"}"}]}, "s\"q\\",
  [[]] ,null,1e400 ,{"e":"\u00e9 \\\" ]"} ]
"#;

fn sample_texts() -> Vec<&'static str> {
    vec![
        r#"{"key":"a,b]","n":[1,{"x":"}"}]}"#,
        r#""s\"q\\""#,
        "[[]]",
        "null",
        "1e400",
        r#"{"e":"\u00e9 \\\" ]"}"#,
    ]
}

#[test]
fn elements_are_split_at_top_level_commas_only() {
    assert_eq!(texts(&split(SAMPLE)), sample_texts());
}

#[test]
fn every_two_way_split_gives_the_same_elements() {
    let want = split(SAMPLE);
    for at in 0..=SAMPLE.len() {
        let (a, b) = SAMPLE.split_at(at);
        assert_eq!(split_chunks(BIG, [a, b]), want, "split at {at}");
    }
}

#[test]
fn every_three_way_split_gives_the_same_elements() {
    let want = split(SAMPLE);
    for i in 0..=SAMPLE.len() {
        for j in i..=SAMPLE.len() {
            let chunks = [&SAMPLE[..i], &SAMPLE[i..j], &SAMPLE[j..]];
            assert_eq!(split_chunks(BIG, chunks), want, "split at {i} and {j}");
        }
    }
}

#[test]
fn one_byte_at_a_time_gives_the_same_elements() {
    assert_eq!(split_chunks(BIG, SAMPLE.chunks(1)), split(SAMPLE));
}

#[test]
fn empty_arrays_give_nothing() {
    for data in [&b"[]"[..], b" [ ] ", b"\n[\r\n]\t"] {
        assert_eq!(split(data), vec![], "{data:?}");
    }
}

#[test]
fn elements_are_numbered_and_empty_ones_are_reported() {
    let items = split(b"[1,,2, ]");
    let want = vec![
        ArrayItem::Element {
            index: 0,
            text: b"1".to_vec(),
        },
        ArrayItem::Element {
            index: 1,
            text: vec![],
        },
        ArrayItem::Element {
            index: 2,
            text: b"2".to_vec(),
        },
        ArrayItem::Element {
            index: 3,
            text: vec![],
        },
    ];
    assert_eq!(items, want);
    assert_eq!(texts(&split(b"[,1]")), ["", "1"]);
}

#[test]
fn data_that_is_not_an_array_is_reported_whole_at_the_end() {
    for data in [&br#"{"key":"x"}"#[..], b"42", b"  not json", b"", b"  "] {
        let items = split(data);
        assert_eq!(
            items,
            vec![ArrayItem::NotArray {
                prefix: data.to_vec(),
                size: data.len()
            }],
            "{data:?}"
        );
    }
}

#[test]
fn a_long_non_array_keeps_a_prefix_and_counts_the_rest() {
    let data = vec![b'x'; PREFIX_BYTES * 3 + 7];
    let items = split_chunks(BIG, data.chunks(1000));
    let [ArrayItem::NotArray { prefix, size }] = &items[..] else {
        panic!("{items:?}")
    };
    assert_eq!(prefix.len(), PREFIX_BYTES);
    assert_eq!(*size, data.len());
}

#[test]
fn an_unclosed_array_reports_its_unfinished_element() {
    let items = split(br#"[1, {"a": [2"#);
    assert_eq!(
        items,
        vec![
            ArrayItem::Element {
                index: 0,
                text: b"1".to_vec()
            },
            ArrayItem::Unterminated {
                index: 1,
                prefix: br#"{"a": [2"#.to_vec(),
                size: 8
            },
        ]
    );
    assert_eq!(
        split(b"[1,"),
        vec![
            ArrayItem::Element {
                index: 0,
                text: b"1".to_vec()
            },
            ArrayItem::Unterminated {
                index: 1,
                prefix: vec![],
                size: 0
            },
        ]
    );
    assert!(matches!(
        &split(br#"["open string]"#)[..],
        [ArrayItem::Unterminated { index: 0, .. }]
    ));
}

#[test]
fn bytes_after_the_array_are_reported() {
    let items = split(b"[1] \n[2]");
    assert_eq!(
        items,
        vec![
            ArrayItem::Element {
                index: 0,
                text: b"1".to_vec()
            },
            ArrayItem::Trailing {
                prefix: b"[2]".to_vec(),
                size: 3
            },
        ]
    );
    assert_eq!(texts(&split(b"[1]  \r\n ")), ["1"]);
}

#[test]
fn mismatched_brackets_stay_inside_their_element() {
    // Lexically `}` and `]` both close; validation of the element refuses the mismatch.
    let items = split(br#"[{"a":1],2]"#);
    assert_eq!(texts(&items), [r#"{"a":1]"#, "2"]);
}

#[test]
fn an_element_over_the_limit_keeps_a_prefix_and_the_next_ones_follow() {
    let big = format!(r#"{{"pad":"{}"}}"#, "y".repeat(PREFIX_BYTES + 100));
    let data = format!(r#"[{{"a":1}},{big},{{"b":2}}]"#);
    let items = split_chunks(1000, data.as_bytes().chunks(777));
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(
        items[0],
        ArrayItem::Element {
            index: 0,
            text: br#"{"a":1}"#.to_vec()
        }
    );
    let ArrayItem::TooLarge {
        index,
        size,
        prefix,
    } = &items[1]
    else {
        panic!("{:?}", items[1])
    };
    assert_eq!((*index, *size), (1, big.len()));
    assert_eq!(prefix[..], big.as_bytes()[..PREFIX_BYTES]);
    assert_eq!(
        items[2],
        ArrayItem::Element {
            index: 2,
            text: br#"{"b":2}"#.to_vec()
        }
    );
}

#[test]
fn an_element_at_the_limit_is_kept() {
    let items = split_chunks(5, [&b"[12345,123456]"[..]]);
    assert_eq!(
        items[0],
        ArrayItem::Element {
            index: 0,
            text: b"12345".to_vec()
        }
    );
    assert!(matches!(items[1], ArrayItem::TooLarge { size: 6, .. }));
}

/// Found by the fuzzer: whitespace after a message (before its `,` or `]`) is not the
/// message's, and a message within the limit is kept however much whitespace follows it, in
/// one chunk or byte by byte.
#[test]
fn whitespace_after_an_element_does_not_count_against_the_limit() {
    let data = format!(
        "[1, \"two\"{}, \"three\"{}]",
        "\n".repeat(40),
        " ".repeat(9)
    );
    for chunk in [data.len(), 1, 3] {
        let items = split_chunks(7, data.as_bytes().chunks(chunk));
        assert_eq!(
            texts(&items),
            ["1", "\"two\"", "\"three\""],
            "chunks of {chunk}"
        );
    }
    let items = split_chunks(4, [format!("[\"two\"{}]", " ".repeat(9)).as_bytes()]);
    assert!(
        matches!(items[..], [ArrayItem::TooLarge { size: 5, .. }]),
        "an element over the limit is counted without its whitespace: {items:?}"
    );
}

#[test]
fn finish_resets_for_the_next_data() {
    let mut s = ArraySplitter::new(BIG);
    s.push(Bytes::from_static(b"[1,"));
    assert!(s.next_item().is_some());
    assert!(matches!(s.finish(), Some(ArrayItem::Unterminated { .. })));
    s.push(Bytes::from_static(b"[7]"));
    assert_eq!(
        s.next_item(),
        Some(ArrayItem::Element {
            index: 0,
            text: b"7".to_vec()
        })
    );
    assert_eq!(s.finish(), None);
}

#[test]
fn a_huge_array_streams_with_bounded_memory() {
    let mut s = ArraySplitter::new(BIG);
    let element = br#"{"key":"event-1","type":"user-action","data":{"n":1}}"#;
    let mut data = b"[".to_vec();
    for i in 0..100_000 {
        if i > 0 {
            data.push(b',');
        }
        data.extend_from_slice(element);
    }
    data.push(b']');
    let mut count = 0;
    for chunk in data.chunks(64 * 1024) {
        s.push(Bytes::copy_from_slice(chunk));
        while let Some(item) = s.next_item() {
            assert!(matches!(item, ArrayItem::Element { ref text, .. } if text == element));
            count += 1;
            assert!(
                s.buffered_bytes() <= 64 * 1024 + 1024,
                "{}",
                s.buffered_bytes()
            );
        }
        assert!(s.buffered_bytes() <= 1024, "{}", s.buffered_bytes());
    }
    assert_eq!(s.finish(), None);
    assert_eq!(count, 100_000);
}

#[test]
fn an_oversized_element_is_counted_not_stored() {
    let mut s = ArraySplitter::new(1 << 16);
    s.push(Bytes::from_static(b"[\""));
    let filler = Bytes::from(vec![b'z'; 1 << 16]);
    for _ in 0..64 {
        s.push(filler.clone());
        assert!(s.next_item().is_none());
        assert!(
            s.buffered_bytes() <= 3 * (1 << 16) + PREFIX_BYTES,
            "{}",
            s.buffered_bytes()
        );
    }
    s.push(Bytes::from_static(b"\"]"));
    assert!(
        matches!(s.next_item(), Some(ArrayItem::TooLarge { size, .. }) if size == 64 * (1 << 16) + 2)
    );
}

/// A random JSON value with odd strings and whitespace.
fn random_value(rng: &mut XorShift, depth: usize) -> String {
    const STRINGS: [&str; 6] = [
        r#""""#,
        r#""a,b""#,
        r#""]}[{""#,
        r#""\"\\""#,
        r#""é\u0041""#,
        r#""\\\"]""#,
    ];
    let ws = |rng: &mut XorShift| rng.pick(&["", " ", "\n", "\r\n\t"]).to_string();
    match if depth > 3 {
        rng.below(4)
    } else {
        rng.below(6)
    } {
        0 => rng.pick(&["null", "true", "-1.5e3", "0"]).to_string(),
        1..=3 => rng.pick(&STRINGS).to_string(),
        4 => {
            let items: Vec<String> = (0..rng.below(4))
                .map(|_| format!("{}{}{}", ws(rng), random_value(rng, depth + 1), ws(rng)))
                .collect();
            format!("[{}]", items.join(","))
        }
        _ => {
            let items: Vec<String> = (0..rng.below(4))
                .map(|_| {
                    let key = rng.pick(&STRINGS).to_string();
                    format!("{key}{}:{}", ws(rng), random_value(rng, depth + 1))
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
    }
}

#[test]
fn random_arrays_split_as_serde_json_reads_them() {
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    for round in 0..500 {
        let n = rng.below(6);
        let values: Vec<String> = (0..n).map(|_| random_value(&mut rng, 0)).collect();
        let data = format!(" [ {} ]\n", values.join(" ,\n"));
        let want: Vec<String> = serde_json::from_str::<Vec<&RawValue>>(&data)
            .unwrap_or_else(|e| panic!("round {round}: {e}: {data}"))
            .iter()
            .map(|v| v.get().to_owned())
            .collect();
        let mut chunks = Vec::new();
        let mut rest = data.as_bytes();
        while !rest.is_empty() {
            let len = rng.below(rest.len().min(13) + 1);
            let (c, t) = rest.split_at(len);
            chunks.push(c);
            rest = t;
        }
        assert_eq!(
            texts(&split_chunks(BIG, chunks)),
            want,
            "round {round}: {data}"
        );
    }
}

#[test]
fn random_byte_soups_never_panic_and_do_not_depend_on_chunking() {
    const INTERESTING: &[u8] = b"[]{},\"\\ \n:x1";
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3000 {
        let len = rng.below(200);
        let soup: Vec<u8> = (0..len).map(|_| *rng.pick(INTERESTING)).collect();
        let whole = split_chunks(16, [&soup[..]]);
        let chunked = split_chunks(16, soup.chunks(1 + rng.below(7)));
        assert_eq!(whole, chunked, "{:?}", String::from_utf8_lossy(&soup));
    }
}
