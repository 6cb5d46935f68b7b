//! Tests of the decoder on messages recorded from PostgreSQL 15 (`fixtures/`),
//! on hand-broken messages and on pseudo-random mutations of both.

mod fuzz;
mod malformed;
mod recorded;
mod streaming;

use bytes::Bytes;

use super::{PgOutputMessage, TupleData, TupleValue, decode};

/// Every fixture file, by name. Regenerate them with `fixtures/record.sql`.
const FIXTURES: [(&str, &str); 9] = [
    ("types.hex", include_str!("../fixtures/types.hex")),
    (
        "types_binary.hex",
        include_str!("../fixtures/types_binary.hex"),
    ),
    (
        "full_identity.hex",
        include_str!("../fixtures/full_identity.hex"),
    ),
    (
        "composite_key.hex",
        include_str!("../fixtures/composite_key.hex"),
    ),
    ("toast.hex", include_str!("../fixtures/toast.hex")),
    ("truncate.hex", include_str!("../fixtures/truncate.hex")),
    ("messages.hex", include_str!("../fixtures/messages.hex")),
    ("alter.hex", include_str!("../fixtures/alter.hex")),
    ("origin.hex", include_str!("../fixtures/origin.hex")),
];

/// The raw messages of one fixture file, in recorded order.
fn fixture(name: &str) -> Vec<Bytes> {
    let (_, text) = FIXTURES
        .iter()
        .find(|(file, _)| *file == name)
        .unwrap_or_else(|| panic!("no fixture named {name}"));
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| Bytes::from(hex(name, line)))
        .collect()
}

/// The raw messages of every fixture file.
fn all_fixture_messages() -> Vec<(&'static str, Bytes)> {
    FIXTURES
        .iter()
        .flat_map(|(name, _)| fixture(name).into_iter().map(move |m| (*name, m)))
        .collect()
}

/// Decodes a whole fixture file; every recorded message must decode.
fn decode_fixture(name: &str) -> Vec<PgOutputMessage> {
    fixture(name)
        .iter()
        .enumerate()
        .map(|(i, buf)| {
            decode(buf).unwrap_or_else(|err| panic!("{name} message {i} failed to decode: {err}"))
        })
        .collect()
}

fn hex(name: &str, line: &str) -> Vec<u8> {
    assert!(line.len().is_multiple_of(2), "{name}: odd hex line {line}");
    (0..line.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&line[i..i + 2], 16)
                .unwrap_or_else(|_| panic!("{name}: bad hex at {i} in {line}"))
        })
        .collect()
}

/// A tuple value as UTF-8 text, or `None` for NULL; panics on anything else.
fn text(value: &TupleValue) -> Option<&str> {
    match value {
        TupleValue::Null => None,
        TupleValue::Text(bytes) => {
            Some(std::str::from_utf8(bytes).expect("text values are UTF-8 in a UTF8 database"))
        }
        other => panic!("expected a text value or NULL, got {other:?}"),
    }
}

/// All values of a tuple as text, NULL as `None`.
fn texts(tuple: &TupleData) -> Vec<Option<&str>> {
    tuple.columns.iter().map(text).collect()
}
