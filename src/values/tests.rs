//! Conversions of text recorded from PostgreSQL 15.18 (DateStyle ISO, bytea_output hex,
//! extra_float_digits 1), selected without casts so that psql printed each type's own
//! output function, exactly as pgoutput sends it.

use super::oids::*;
use super::*;
use crate::test_rng::XorShift;
use serde_json::json;

/// Asserts each `(type oid, text sent, expected JSON)` case.
fn check(cases: &[(u32, &str, Value)]) {
    for (oid, sent, expected) in cases {
        let got = text_to_json(*oid, sent);
        assert_eq!(
            &got,
            expected,
            "oid {oid} ({:?}) text {sent:?}",
            kind_of(*oid)
        );
        writes_the_same_bytes(*oid, sent);
    }
}

/// [`write_text_as_json`] writes exactly the serialization of [`text_to_json`]'s value.
fn writes_the_same_bytes(oid: u32, text: &str) {
    let mut written = b"[".to_vec();
    write_text_as_json(oid, text, &mut written);
    let mut expected = b"[".to_vec();
    serde_json::to_writer(&mut expected, &text_to_json(oid, text)).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&written),
        String::from_utf8_lossy(&expected),
        "oid {oid} ({:?}) text {text:?}",
        kind_of(oid)
    );
}

/// The value when it must stay the string PostgreSQL sent.
fn sent(text: &str) -> Value {
    Value::String(text.to_owned())
}

#[test]
fn bools_and_integers() {
    check(&[
        (BOOL, "t", json!(true)),
        (BOOL, "f", json!(false)),
        (BOOL, "true", sent("true")),
        (INT2, "32767", json!(32767)),
        (INT4, "-2147483648", json!(-2147483648_i64)),
        (INT8, "9223372036854775807", json!(i64::MAX)),
        (INT8, "-9223372036854775808", json!(i64::MIN)),
        (INT8, "99999999999999999999", sent("99999999999999999999")),
        (OID, "4294967295", json!(4294967295_u32)),
        (INT4, "", sent("")),
        (INT4, "12a", sent("12a")),
    ]);
}

#[test]
fn floats_and_their_special_values() {
    check(&[
        (FLOAT4, "0.1", json!(0.1)),
        (FLOAT4, "3.4028235e+38", json!(3.4028235e38)),
        (FLOAT4, "1e-45", json!(1e-45)),
        (FLOAT4, "NaN", sent("NaN")),
        (FLOAT8, "Infinity", sent("Infinity")),
        (FLOAT8, "-Infinity", sent("-Infinity")),
        (FLOAT8, "0.1", json!(0.1)),
        (FLOAT8, "1e+300", json!(1e300)),
        (FLOAT8, "1.7976931348623157e+308", json!(f64::MAX)),
        (FLOAT8, "5e-324", json!(5e-324)),
        (FLOAT8, "-0", json!(-0.0)),
        (FLOAT8, "123456789.125", json!(123456789.125)),
        (FLOAT8, "1.5e-07", json!(1.5e-7)),
        (FLOAT8, "1e+400", sent("1e+400")),
        (FLOAT8, "bogus", sent("bogus")),
    ]);
    // The number prints back as the shortest text of the same value.
    assert_eq!(text_to_json(FLOAT4, "0.1").to_string(), "0.1");
    assert_eq!(text_to_json(FLOAT8, "1.5e-07").to_string(), "1.5e-7");
}

#[test]
fn numeric_and_money_are_exact_strings() {
    let big = "123456789012345678901234567890.123456789";
    check(&[
        (NUMERIC, big, sent(big)),
        (NUMERIC, "NaN", sent("NaN")),
        (NUMERIC, "Infinity", sent("Infinity")),
        (NUMERIC, "-Infinity", sent("-Infinity")),
        (NUMERIC, "1.5000", sent("1.5000")),
        (
            NUMERIC,
            "0.00000000000000000001",
            sent("0.00000000000000000001"),
        ),
        (MONEY, "$12.34", sent("$12.34")),
        (MONEY, "-$1,234,567.89", sent("-$1,234,567.89")),
    ]);
}

#[test]
fn textual_and_unknown_types_are_strings_as_sent() {
    check(&[
        (BPCHAR, "ab   ", sent("ab   ")),
        (CHAR, "x", sent("x")),
        (NAME, "nm", sent("nm")),
        (TEXT, "", sent("")),
        (VARCHAR, "é ✓", sent("é ✓")),
        (
            UUID,
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            sent("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ),
        (INET, "10.0.0.1", sent("10.0.0.1")),
        (INET, "::1", sent("::1")),
        (CIDR, "10.0.0.0/8", sent("10.0.0.0/8")),
        (MACADDR, "08:00:2b:01:02:03", sent("08:00:2b:01:02:03")),
        (XML, "<a>x</a>", sent("<a>x</a>")),
        (
            INTERVAL,
            "1 year 2 mons 3 days 04:05:06.7",
            sent("1 year 2 mons 3 days 04:05:06.7"),
        ),
        (BIT, "1010", sent("1010")),
        (VARBIT, "101", sent("101")),
        (TSVECTOR, "'a' 'cat' 'fat'", sent("'a' 'cat' 'fat'")),
        (INT2VECTOR, "1 2", sent("1 2")),
        (UNKNOWN, "x", sent("x")),
        (16_385, "happy", sent("happy")),
        (u32::MAX, "{1,2}", sent("{1,2}")),
    ]);
    assert_eq!(kind_of(16_385), ValueKind::Other);
    assert_eq!(kind_of(UUID), ValueKind::Text);
}

#[test]
fn json_documents_are_nested() {
    check(&[
        (
            JSONB,
            r#"{"a": [1, 2.50, null, true], "b": 1}"#,
            json!({"a": [1, 2.5, null, true], "b": 1}),
        ),
        (JSON, r#"{"a":1,  "a":2}"#, json!({"a": 2})),
        (
            JSONB,
            "123456789012345678901234567890",
            sent("123456789012345678901234567890"),
        ),
        (JSON, r#"{"x": 1e400}"#, sent(r#"{"x": 1e400}"#)),
        (JSON, "{not json", sent("{not json")),
    ]);
}

#[test]
fn dates_and_times_are_iso_8601() {
    check(&[
        (
            TIMESTAMPTZ,
            "2024-01-02 03:04:05.123456+00",
            json!("2024-01-02T03:04:05.123456+00:00"),
        ),
        (
            TIMESTAMPTZ,
            "1800-01-01 05:53:28+05:53:28",
            json!("1800-01-01T05:53:28+05:53:28"),
        ),
        (
            TIMESTAMPTZ,
            "2024-05-31 21:30:00.25-02:30",
            json!("2024-05-31T21:30:00.25-02:30"),
        ),
        (
            TIMESTAMPTZ,
            "1930-06-01 01:19:32+01:19:32",
            json!("1930-06-01T01:19:32+01:19:32"),
        ),
        (
            TIMESTAMPTZ,
            "0044-03-15 10:00:00+00 BC",
            sent("0044-03-15 10:00:00+00 BC"),
        ),
        (TIMESTAMPTZ, "-infinity", sent("-infinity")),
        (
            TIMESTAMP,
            "2024-01-02 03:04:05",
            json!("2024-01-02T03:04:05"),
        ),
        (
            TIMESTAMP,
            "2024-01-02 03:04:05.5",
            json!("2024-01-02T03:04:05.5"),
        ),
        (
            TIMESTAMP,
            "0044-03-15 10:00:00 BC",
            sent("0044-03-15 10:00:00 BC"),
        ),
        (
            TIMESTAMP,
            "12345-01-01 00:00:00",
            json!("12345-01-01T00:00:00"),
        ),
        (DATE, "2024-01-02", sent("2024-01-02")),
        (DATE, "0044-03-15 BC", sent("0044-03-15 BC")),
        (DATE, "infinity", sent("infinity")),
        (TIME, "03:04:05.123456", sent("03:04:05.123456")),
        (TIME, "24:00:00", sent("24:00:00")),
        (TIMETZ, "03:04:05+05:30", sent("03:04:05+05:30")),
        (TIMETZ, "03:04:05+00", sent("03:04:05+00")),
    ]);
}

#[test]
fn bytea_is_lowercase_hex() {
    check(&[
        (BYTEA, "\\x0a0bff", json!("0a0bff")),
        (BYTEA, "\\x", json!("")),
        (
            BYTEA,
            "ab\\\\c\\000\\001\\377 ~",
            json!("61625c630001ff207e"),
        ),
        (BYTEA, "\\xz", sent("\\xz")),
    ]);
    assert!(BYTEA_ENCODING_DOC.contains("hex"), "{BYTEA_ENCODING_DOC}");
}

#[test]
fn scalar_arrays() {
    check(&[
        (BOOL_ARRAY, "{t,NULL,f}", json!([true, null, false])),
        (INT2_ARRAY, "{1,2,NULL}", json!([1, 2, null])),
        (INT4_ARRAY, "{{1,2},{3,4}}", json!([[1, 2], [3, 4]])),
        (INT8_ARRAY, "[0:1]={1,2}", json!([1, 2])),
        (
            INT4_ARRAY,
            "[0:1][-1:0]={{1,NULL},{NULL,4}}",
            json!([[1, null], [null, 4]]),
        ),
        (
            INT4_ARRAY,
            "{{{1},{2}},{{3},{4}}}",
            json!([[[1], [2]], [[3], [4]]]),
        ),
        (INT4_ARRAY, "{}", json!([])),
        (
            FLOAT4_ARRAY,
            "{0.1,NaN,Infinity}",
            json!([0.1, "NaN", "Infinity"]),
        ),
        (NUMERIC_ARRAY, "{1.10,NaN}", json!(["1.10", "NaN"])),
        (MONEY_ARRAY, "{$1.50,-$2.00}", json!(["$1.50", "-$2.00"])),
        (VARCHAR_ARRAY, "{x,NULL}", json!(["x", null])),
        (BPCHAR_ARRAY, r#"{"ab  "}"#, json!(["ab  "])),
        (
            DATE_ARRAY,
            "{2024-01-02,infinity}",
            json!(["2024-01-02", "infinity"]),
        ),
        (TIME_ARRAY, "{03:04:05}", json!(["03:04:05"])),
        (
            TIMESTAMP_ARRAY,
            r#"{"2024-01-02 03:04:05.1"}"#,
            json!(["2024-01-02T03:04:05.1"]),
        ),
        (
            TIMESTAMPTZ_ARRAY,
            r#"{"2024-01-02 03:04:05+00",NULL}"#,
            json!(["2024-01-02T03:04:05+00:00", null]),
        ),
        (BYTEA_ARRAY, r#"{"\\x00ff","\\x"}"#, json!(["00ff", ""])),
        (INT4RANGE_ARRAY, r#"{"[1,2)",NULL}"#, json!(["[1,2)", null])),
        (
            BOX_ARRAY,
            "{(1,1),(0,0);(3,3),(2,2)}",
            json!(["(1,1),(0,0)", "(3,3),(2,2)"]),
        ),
    ]);
}

#[test]
fn text_arrays_with_quoting() {
    // PostgreSQL 15 output of array['a b','c"d','NULL','','x,y','{br}','back\slash','null',
    // ' lead','é','plain',E'tab\there',E'nl\nhere']::text[].
    let sent_text = "{\"a b\",\"c\\\"d\",\"NULL\",\"\",\"x,y\",\"{br}\",\"back\\\\slash\",\"null\",\
                     \" lead\",é,plain,\"tab\there\",\"nl\nhere\"}";
    let expected = json!([
        "a b",
        "c\"d",
        "NULL",
        "",
        "x,y",
        "{br}",
        "back\\slash",
        "null",
        " lead",
        "é",
        "plain",
        "tab\there",
        "nl\nhere"
    ]);
    check(&[
        (TEXT_ARRAY, sent_text, expected),
        (
            TEXT_ARRAY,
            r#"{{a,b},{NULL,"\""}}"#,
            json!([["a", "b"], [null, "\""]]),
        ),
        (TEXT_ARRAY, "{null,Null}", json!([null, null])),
        (TEXT_ARRAY, r#"{"",""}"#, json!(["", ""])),
        (
            UUID_ARRAY,
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            json!(["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
        ),
    ]);
}

#[test]
fn json_arrays_nest_documents() {
    check(&[
        (
            JSONB_ARRAY,
            r#"{"{\"a\": 1}","[1, \"x,}\"]","null","\"s\""}"#,
            json!([{"a": 1}, [1, "x,}"], null, "s"]),
        ),
        (JSON_ARRAY, r#"{"{\"a\":1}",NULL}"#, json!([{"a": 1}, null])),
    ]);
}

#[test]
fn malformed_arrays_keep_the_text() {
    // The parser's own tests (array.rs) cover the malformed shapes one by one.
    for text in ["{1,2", "{{1},2}", "[0:1]{1,2}", "{{{{{{{1}}}}}}}", "1,2"] {
        assert_eq!(
            text_to_json(INT4_ARRAY, text),
            sent(text),
            "int4[] {text:?}"
        );
    }
    // Elements that do not read as their type stay strings inside the array.
    assert_eq!(
        text_to_json(INT4_ARRAY, "{1,x,1;2}"),
        json!([1, "x", "1;2"])
    );
}

#[test]
fn element_types_and_kinds() {
    let arrays = [
        (1000, BOOL),
        (1005, INT2),
        (1007, INT4),
        (1016, INT8),
        (1021, FLOAT4),
        (1022, FLOAT8),
        (1231, NUMERIC),
        (1009, TEXT),
        (1015, VARCHAR),
        (1014, BPCHAR),
        (2951, UUID),
        (199, JSON),
        (3807, JSONB),
        (1182, DATE),
        (1183, TIME),
        (1115, TIMESTAMP),
        (1185, TIMESTAMPTZ),
        (1001, BYTEA),
        (1020, BOX),
        (271, XID8),
    ];
    for (array, element) in arrays {
        assert_eq!(element_type(array), Some(element), "element of {array}");
        assert_eq!(kind_of(array), ValueKind::Array, "kind of {array}");
    }
    for not_array in [BOOL, TEXT, INT2VECTOR, OIDVECTOR, UNKNOWN, 0, 16_385] {
        assert_eq!(element_type(not_array), None, "element of {not_array}");
    }
}

#[test]
fn every_kind_has_a_row_in_the_table_and_an_oid() {
    let sample_oids = [
        BOOL,
        INT4,
        FLOAT8,
        NUMERIC,
        MONEY,
        JSONB,
        DATE,
        TIME,
        TIMESTAMP,
        TIMESTAMPTZ,
        BYTEA,
        INT4_ARRAY,
        TEXT,
        16_385,
    ];
    for kind in ValueKind::ALL {
        let row = format!("\n| `{}` |", kind.name());
        assert_eq!(
            MAPPING_TABLE_MD.matches(&row).count(),
            1,
            "row for {kind:?}"
        );
        assert!(
            sample_oids.iter().any(|&oid| kind_of(oid) == kind),
            "no oid of {kind:?}"
        );
    }
    let rows = MAPPING_TABLE_MD
        .lines()
        .filter(|line| line.starts_with("| `"))
        .count();
    assert_eq!(rows, ValueKind::ALL.len(), "table rows");
}

#[test]
fn garbage_never_panics() {
    const PIECES: &[&str] = &[
        "{",
        "}",
        "\"",
        "\\",
        ",",
        ";",
        "[",
        "]",
        ":",
        "=",
        "-",
        "+",
        ".",
        "e",
        "E",
        " ",
        "\t",
        "\n",
        "NULL",
        "null",
        "t",
        "f",
        "NaN",
        "Infinity",
        "\\x",
        "0",
        "1",
        "9",
        "a",
        "ff",
        "é",
        "✓",
        "\u{0}",
        "BC",
        "T",
        "2024-01-02",
        "2024-01-02 03:04:05.5+00",
        "2024-01-02 03:04:05-08:30",
        "03:04:05",
        "+05:30",
        "\\377",
        "{\"a\": 1}",
        "1e400",
        "123456789012345678901234567890",
        "[0:1]=",
    ];
    let mut oids: Vec<u32> = (0..7000).filter(|&oid| oids::is_builtin(oid)).collect();
    oids.extend([0, 16_385, u32::MAX]);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for round in 0..20_000 {
        let len = rng.below(24);
        let mut text: String = (0..len).map(|_| PIECES[rng.below(PIECES.len())]).collect();
        if rng.below(2) == 0 {
            // Half the inputs look like arrays, to reach past the parser's first byte.
            text = format!("{{{text}}}");
        }
        let oid = oids[round % oids.len()];
        writes_the_same_bytes(oid, &text);
        writes_the_same_bytes(oids[rng.below(oids.len())], &text);
    }
    // Deep nesting is bounded, not recursed into.
    let deep = format!("{}{}", "{".repeat(100_000), "}".repeat(100_000));
    assert_eq!(text_to_json(INT4_ARRAY, &deep), sent(&deep));
}
