//! Fuzz entry points: one function per parser that meets bytes from outside, each running
//! the parser on arbitrary input and checking what must hold whatever the input.
//!
//! ```text
//!  fuzz/fuzz_targets/<target>.rs ──(cargo fuzz, feature `fuzzing`)──┐
//!  fuzz/corpus/<target>/*, fuzz/regressions/<target>/* ──(cargo test)─┴─▶ TARGETS[target](bytes)
//! ```
//!
//! The coverage-guided fuzzer (`fuzz/`, a cargo-fuzz crate of its own, nightly) calls these
//! through the `fuzzing` feature; the unit test below replays every file of the corpora and
//! of the regressions through the same functions on stable, so a crash once found stays
//! fixed without a nightly toolchain. An entry panics only on a bug: a parser that panicked,
//! or a broken invariant (the message says which).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::capture::message::{self, ChangeRef, Operation, RowMessage, TableInfo, TxMeta};
use crate::capture::route::{self, RouteError, Router, Template};
use crate::ingest::decode::{self as ingest_decode_mod, DEAD_LETTER_RAW_MAX, Decoded, Pending};
use crate::lsn::Lsn;
use crate::pgoutput::{self, Column, PgOutputMessage, Relation, ReplicaIdentity};
use crate::sse::ArraySplitter;

/// A fuzz entry point: any bytes in, a panic only on a bug.
pub type Entry = fn(&[u8]);

/// Every target by name: the names of `fuzz/fuzz_targets/*.rs` and of the corpus folders.
pub const TARGETS: [(&str, Entry); 5] = [
    ("pgoutput", pgoutput),
    ("sse", sse),
    ("ingest_decode", ingest_decode),
    ("stream_template", stream_template),
    ("config_file", config_file),
];

/// Replication messages, framed as `u16` big-endian length + bytes (a short tail is the
/// last frame), decoded one by one as capture does: Relations kept by oid, row changes of a
/// known relation turned into State Protocol messages and routed with the default
/// template. Nothing may panic; decoding is deterministic; a built message serializes, to
/// the very bytes the direct writer (`message::encode`) writes for it.
pub fn pgoutput(data: &[u8]) {
    pgoutput::fuzz_decode(data);
    let router = Router::new(
        Template::parse(Router::DEFAULT_TEMPLATE).expect("the default template parses"),
        Vec::new(),
    )
    .expect("one default route");
    let mut tables: HashMap<u32, TableInfo> = HashMap::new();
    let mut meta = TxMeta {
        xid: 0,
        commit_lsn: Lsn::from_u64(0),
        commit_time_micros: 0,
    };
    for frame in frames(data) {
        let buf = Bytes::copy_from_slice(frame);
        let Ok(decoded) = pgoutput::decode(&buf) else {
            continue;
        };
        assert_eq!(
            pgoutput::decode(&buf).as_ref(),
            Ok(&decoded),
            "decoding is deterministic"
        );
        match &decoded {
            PgOutputMessage::Relation(rel) => {
                let table = TableInfo::new(Arc::new(rel.clone()), None);
                tables.insert(rel.oid, table);
            }
            PgOutputMessage::Begin(begin) => meta = TxMeta::from_begin(begin),
            other => {
                if let Some(change) = ChangeRef::from_message(other)
                    && let Some(table) = tables.get(&relation_of(&change))
                {
                    build_rows(&router, table, &change, &meta);
                }
            }
        }
    }
}

fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [a, b, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(rest.len());
        let (frame, tail) = rest.split_at(len);
        out.push(frame);
        data = tail;
    }
    out
}

fn relation_of(change: &ChangeRef<'_>) -> u32 {
    match change {
        ChangeRef::Insert(i) => i.relation_oid,
        ChangeRef::Update(u) => u.relation_oid,
        ChangeRef::Delete(d) => d.relation_oid,
    }
}

fn build_rows(router: &Router, table: &TableInfo, change: &ChangeRef<'_>, meta: &TxMeta) {
    let encoded = message::encode(table, change, &message::TxHeaders::new(meta));
    let rows = match (message::build(table, change, meta), encoded) {
        (Ok(rows), Ok(encoded)) => {
            assert_eq!(
                rows.len(),
                encoded.len(),
                "both writers write every message"
            );
            rows.into_iter().zip(encoded).collect::<Vec<_>>()
        }
        (Err(tree), Err(direct)) => {
            assert_eq!(tree, direct, "both writers fail alike");
            return;
        }
        (tree, direct) => panic!("the writers disagree: {tree:?} against {direct:?}"),
    };
    for (row, direct) in rows {
        let json = serde_json::to_vec(&row.message).expect("a built message serializes");
        assert_eq!(
            json, direct.json,
            "the direct writer writes the tree's bytes"
        );
        serde_json::from_slice::<Value>(&json).expect("a serialized message is JSON");
        if let Err(e) = router.stream_for(table, &row) {
            assert!(
                !matches!(e, RouteError::InvalidStreamName { .. }),
                "the default template made an invalid stream name: {e}"
            );
        }
    }
}

/// A Server-Sent Events body, parsed by the SSE parser and decoded as DS events, each whole
/// and in chunks: the results must be the same, and memory stays within its bound (see
/// `sse::fuzz`).
pub fn sse(data: &[u8]) {
    crate::sse::fuzz_parse(data);
    crate::sse::fuzz_decode(data);
}

/// The data of a DS data event as ingest reads it: split into messages (whole and in
/// chunks, with the same result), each message decoded into a row or a dead letter. The
/// first byte picks the message size limit and salts the chunks. Checks: a row's payload is
/// JSON without `\u0000` and its located columns can be read; a dead letter says why and
/// keeps at most its limit; when serde_json reads the data as an array of messages within
/// the limit, every row is its message's text, in order.
pub fn ingest_decode(data: &[u8]) {
    let Some((&knob, body)) = data.split_first() else {
        return;
    };
    let max = if knob & 0x80 != 0 {
        1 << 20
    } else {
        1 + usize::from(knob & 0x3f) * 8
    };
    let whole = split_decode(&[body], max);
    let chunked = split_decode(&crate::sse::fuzz_chunks(knob, body), max);
    assert_eq!(chunked, whole, "chunked split differs from whole split");
    for decoded in &whole {
        check_decoded(decoded);
    }
    compare_with_serde(body, max, &whole);
    let mut pending = Pending::default();
    for decoded in whole {
        pending.push(decoded);
    }
    pending.seal("0_1");
    let sealed = |o: &Option<Arc<str>>| o.as_deref() == Some("0_1");
    assert!(pending.rows.iter().all(|r| sealed(&r.ds_offset)));
    assert!(pending.dead.iter().all(|d| sealed(&d.ds_offset)));
}

fn split_decode(chunks: &[&[u8]], max: usize) -> Vec<Decoded> {
    let mut splitter = ArraySplitter::new(max);
    let mut out = Vec::new();
    for chunk in chunks {
        splitter.push(Bytes::copy_from_slice(chunk));
        while let Some(item) = splitter.next_item() {
            out.push(ingest_decode_mod::decode(item, max));
        }
    }
    if let Some(item) = splitter.finish() {
        out.push(ingest_decode_mod::decode(item, max));
    }
    out
}

fn check_decoded(decoded: &Decoded) {
    match decoded {
        Decoded::Row(row) => {
            serde_json::from_str::<serde::de::IgnoredAny>(&row.payload)
                .expect("a row's payload is JSON");
            if let Ok(value) = serde_json::from_str::<Value>(&row.payload) {
                assert!(
                    !holds_nul(&value),
                    "a row holds \\u0000, which jsonb refuses: {:?}",
                    row.payload
                );
            }
            for span in [row.event_key, row.event_type, row.operation] {
                assert!(
                    span.is_none() || row.text(span).is_some(),
                    "a located column cannot be read back: {span:?} in {:?}",
                    row.payload
                );
            }
        }
        Decoded::Dead(dead) => {
            assert!(!dead.error.is_empty(), "a dead letter says why");
            assert!(dead.raw.len() <= DEAD_LETTER_RAW_MAX);
            assert!(dead.raw.len() <= dead.size);
            assert_eq!(dead.truncated, dead.raw.len() < dead.size);
        }
    }
}

/// Whether a JSON value holds U+0000 in a string or an object key.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

fn compare_with_serde(body: &[u8], max: usize, decoded: &[Decoded]) {
    let Ok(messages) = serde_json::from_slice::<Vec<&RawValue>>(body) else {
        return;
    };
    if messages.iter().any(|m| m.get().len() > max) {
        return;
    }
    assert_eq!(
        decoded.len(),
        messages.len(),
        "one row or dead letter per message of a valid array"
    );
    for (message, item) in messages.iter().zip(decoded) {
        match item {
            Decoded::Row(row) => assert_eq!(row.payload, message.get(), "a row is its message"),
            Decoded::Dead(dead) => assert!(
                message.get().contains("\\u"),
                "a message serde_json reads without \\u escapes became a dead letter: {} ({})",
                message.get(),
                dead.error
            ),
        }
    }
}

/// A stream template on the first line, placeholder values on the next ones. A template
/// that parses renders every value to a valid stream name, and with one column placeholder,
/// distinct values (and NULL) make distinct names.
pub fn stream_template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let source = lines.next().unwrap_or_default();
    let _ = route::parse_route_option(source);
    let template = match Template::parse(source) {
        Ok(t) => t,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert_eq!(template.as_str(), source);
    let mut columns: Vec<String> = template.columns().map(str::to_owned).collect();
    columns.sort();
    columns.dedup();
    let table = table_with(&columns);
    let router = Router::new(template, Vec::new()).expect("one default route");
    router
        .validate(&table)
        .expect("every placeholder is a column");
    let values: Vec<Value> = lines
        .take(4)
        .map(|v| Value::String(v.to_owned()))
        .chain([Value::Null])
        .collect();
    let mut names: Vec<(String, &Value)> = Vec::new();
    for value in &values {
        let row = row_with(&columns, value);
        let name = router
            .stream_for(&table, &row)
            .unwrap_or_else(|e| panic!("{source:?} with {value}: {e}"));
        names.push((name, value));
    }
    if columns.len() == 1 {
        for (i, (a, va)) in names.iter().enumerate() {
            for (b, vb) in &names[i + 1..] {
                assert!(a != b || va == vb, "{va} and {vb} share stream {a:?}");
            }
        }
    }
}

fn table_with(columns: &[String]) -> TableInfo {
    let columns = columns
        .iter()
        .map(|name| Column {
            flags: 1,
            name: name.clone(),
            type_oid: 25,
            type_modifier: -1,
        })
        .collect();
    let relation = Relation {
        oid: 1,
        namespace: "public".into(),
        name: "items".into(),
        replica_identity: ReplicaIdentity::Default,
        columns,
    };
    TableInfo::new(Arc::new(relation), None)
}

fn row_with(columns: &[String], value: &Value) -> RowMessage {
    let values: serde_json::Map<String, Value> =
        columns.iter().map(|c| (c.clone(), value.clone())).collect();
    RowMessage {
        operation: Operation::Insert,
        message: serde_json::json!({ "value": values }),
        extra_columns: serde_json::Map::new(),
    }
}

/// A `--config` file: parsed, and when it parses, merged into settings and every value
/// read as its option would read it (durations, templates, routes, the Postgres URL, the
/// DS headers). Errors, never panics; a refused file's error has a hint.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut file = match crate::config::parse_file_text(text, std::path::Path::new("fuzz.toml")) {
        Ok(file) => file,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(e.hint().is_some(), "a refused file has a hint");
            return;
        }
    };
    let ingest = &file.ingest;
    for duration in [
        &ingest.idle_timeout,
        &ingest.lease_ttl,
        &ingest.retention,
        &ingest.dead_letter_retention,
        &ingest.retention_interval,
    ]
    .into_iter()
    .flatten()
    {
        if let Err(e) = crate::config::parse_duration(duration) {
            assert!(!e.is_empty());
        }
    }
    let capture = &file.capture;
    if let Some(template) = &capture.stream_template {
        let _ = Template::parse(template);
    }
    for (table, template) in capture.routes.iter().flatten() {
        let _ = route::parse_route_option(&format!("{table}={template}"));
    }
    // The token file would be read from disk; the fuzzer exercises the rest.
    file.ds_token_file = None;
    let settings =
        crate::config::Settings::resolve(crate::config::CliValues::default(), file, &|_| None);
    let _ = settings.postgres(&|_| None);
    let _ = settings.ds_access();
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{Entry, TARGETS};

    /// Every file under `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`, replayed
    /// through its target: the corpora the fuzzer kept and the crashes it found stay
    /// passing in every `cargo test`, without a nightly toolchain.
    #[test]
    fn fuzz_corpora_and_regressions_replay_without_a_panic() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        for (name, entry) in TARGETS {
            let corpus = replay(&root.join("corpus").join(name), entry);
            assert!(corpus > 0, "fuzz/corpus/{name} is empty or missing");
            replay(&root.join("regressions").join(name), entry);
        }
    }

    fn replay(dir: &Path, entry: Entry) -> usize {
        let Ok(files) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut count = 0;
        for file in files {
            let path = file.expect("a readable directory entry").path();
            let data = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(|| entry(&data));
            assert!(outcome.is_ok(), "{} panics", path.display());
            count += 1;
        }
        count
    }
}
