//! Column values: PostgreSQL text output to JSON.
//!
//! pgoutput v1 in text mode sends each column as the text of the type's output function,
//! and the Relation message gives the column's type oid. [`text_to_json`] turns that pair
//! into the `serde_json::Value` posted to the stream. It is pure: no catalog look-ups, no
//! I/O, no panics, whatever the text.
//!
//! ```text
//! (type oid, text) ──kind_of──▶ ValueKind ──▶ JSON value
//!        │                          ▲
//!        └─element_type─▶ array ──▶ │ each element by its element type's kind
//! ```
//!
//! Design choices, each also in [`MAPPING_TABLE_MD`]:
//!
//! * **Never lose data.** Text that does not read as its type says (a malformed array,
//!   `jsonb` that does not parse, an integer that does not fit) becomes a JSON string of
//!   the text exactly as sent, never `null` and never an error. A consumer can always get
//!   back what PostgreSQL sent.
//! * **Exact decimals stay strings.** `numeric` is arbitrary precision and `money` is
//!   locale formatted (`-$1,234,567.89`); as JSON numbers both would pass through a reader's
//!   `f64`, so they are strings exactly as sent, `NaN` and `Infinity` included. Integers
//!   and floats are numbers: a float's text is the shortest one that reads back to the same
//!   value, so it survives `f64`. JSON has no `NaN` or infinities, so those floats are the
//!   strings `"NaN"`, `"Infinity"` and `"-Infinity"`. `jsonb` documents are nested, unless
//!   one of their numbers would change on the way (see `json.rs`).
//! * **Times are ISO-8601 strings.** The replication connection uses DateStyle ISO, so
//!   dates (`2024-01-02`) and times (`03:04:05.5`, `03:04:05+05:30`) already are; a
//!   timestamp's space becomes `T` and a `timestamptz` offset `+00` becomes `+00:00`, while
//!   historical offsets in seconds (`+05:53:28`) are kept. BC values (`0044-03-15 BC`) and
//!   `infinity`/`-infinity` have no plain ISO-8601 form and stay as PostgreSQL sent them.
//! * **bytea is lowercase hex without `\x`** ([`BYTEA_ENCODING_DOC`]). Hex is what
//!   PostgreSQL itself prints (so a value compares by eye with `psql`, and SQL's
//!   `decode(v, 'hex')` reverses it), it costs no decoding of the default output, and it
//!   needs no extra crate; base64 would be a third shorter, which matters less than being
//!   the same text people already see.
//! * **Arrays become JSON arrays**, nested per dimension, with `null` for NULL elements and
//!   each element converted by its element type. Lower bounds (`[0:1]=`) are dropped.
//! * **Everything else is a string as sent**: character types, `uuid`, network and bit
//!   types, `interval`, ranges, geometry, and every oid that is not built in (enums,
//!   domains, composites, extension types), whose meaning only the catalog knows.

mod array;
mod bytea;
mod datetime;
mod json;
pub mod oids;
#[cfg(test)]
mod tests;

use serde_json::{Number, Value};

/// How `bytea` values appear in the JSON, for documentation and `--help`.
pub const BYTEA_ENCODING_DOC: &str = r"bytea values are lowercase hex strings without PostgreSQL's \x prefix, e.g. \x0aff is sent as 0aff";

/// The mapping of each [`ValueKind`] to JSON, as a Markdown table for the README.
pub const MAPPING_TABLE_MD: &str = "\
| kind | PostgreSQL types | JSON value |
|---|---|---|
| `Bool` | `bool` | `true` / `false` |
| `Integer` | `int2`, `int4`, `int8`, `oid` | number |
| `Float` | `float4`, `float8` | number; `NaN`, `Infinity`, `-Infinity` as those strings |
| `Numeric` | `numeric` | string exactly as sent: `\"1.5000\"`, `\"NaN\"`, `\"Infinity\"` |
| `Money` | `money` | string as sent, formatted by `lc_monetary`: `\"-$1,234.50\"` |
| `Json` | `json`, `jsonb` | the document, nested; its text as a string if it does not parse or holds a number an `f64` cannot carry exactly |
| `Date` | `date` | string as sent: `\"2024-01-02\"` |
| `Time` | `time`, `timetz` | string as sent: `\"03:04:05.123456\"`, `\"03:04:05+05:30\"` |
| `Timestamp` | `timestamp` | ISO-8601 string: `\"2024-01-02T03:04:05.123456\"` |
| `TimestampTz` | `timestamptz` | ISO-8601 string: `\"2024-01-02T03:04:05.123456+00:00\"`; offsets `±HH:MM`, or `±HH:MM:SS` when PostgreSQL gives seconds |
| `Bytea` | `bytea` | lowercase hex string without `\\x`: `\"0a0bff\"` |
| `Array` | arrays of all built-in types | array, nested per dimension; `null` for NULL elements; elements by their own kind; lower bounds dropped |
| `Text` | `text`, `varchar`, `bpchar`, `char`, `name`, `uuid`, `inet`, `cidr`, `macaddr`, `xml`, `interval`, `bit`, `varbit`, `tsvector`, ranges, geometry, other built-in types | string as sent |
| `Other` | any oid that is not built in: enums, domains, composites, extension types | string as sent |

Dates and timestamps that are BC (`\"0044-03-15 BC\"`) or `infinity` / `-infinity` are sent as \
the strings PostgreSQL sent. Any value whose text does not read as its type is sent as that text.
";

/// Which JSON mapping a type oid gets; see [`MAPPING_TABLE_MD`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueKind {
    Bool,
    Integer,
    Float,
    Numeric,
    Money,
    Json,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Bytea,
    Array,
    Text,
    Other,
}

impl ValueKind {
    /// Every kind, in the order of [`MAPPING_TABLE_MD`]. A new variant must be added here;
    /// the match in [`ValueKind::name`] fails to compile until it is named.
    pub const ALL: [ValueKind; 14] = [
        Self::Bool,
        Self::Integer,
        Self::Float,
        Self::Numeric,
        Self::Money,
        Self::Json,
        Self::Date,
        Self::Time,
        Self::Timestamp,
        Self::TimestampTz,
        Self::Bytea,
        Self::Array,
        Self::Text,
        Self::Other,
    ];

    /// The variant's name, as written in the first column of [`MAPPING_TABLE_MD`].
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bool => "Bool",
            Self::Integer => "Integer",
            Self::Float => "Float",
            Self::Numeric => "Numeric",
            Self::Money => "Money",
            Self::Json => "Json",
            Self::Date => "Date",
            Self::Time => "Time",
            Self::Timestamp => "Timestamp",
            Self::TimestampTz => "TimestampTz",
            Self::Bytea => "Bytea",
            Self::Array => "Array",
            Self::Text => "Text",
            Self::Other => "Other",
        }
    }
}

/// The mapping that values of `type_oid` get.
pub const fn kind_of(type_oid: u32) -> ValueKind {
    use oids::*;
    match type_oid {
        BOOL => ValueKind::Bool,
        INT2 | INT4 | INT8 | OID => ValueKind::Integer,
        FLOAT4 | FLOAT8 => ValueKind::Float,
        NUMERIC => ValueKind::Numeric,
        MONEY => ValueKind::Money,
        JSON | JSONB => ValueKind::Json,
        DATE => ValueKind::Date,
        TIME | TIMETZ => ValueKind::Time,
        TIMESTAMP => ValueKind::Timestamp,
        TIMESTAMPTZ => ValueKind::TimestampTz,
        BYTEA => ValueKind::Bytea,
        _ if oids::array_element(type_oid).is_some() => ValueKind::Array,
        _ if oids::is_builtin(type_oid) => ValueKind::Text,
        _ => ValueKind::Other,
    }
}

/// The element type of the built-in array type `array_oid`; `None` for any other oid,
/// including arrays of types that are not built in.
pub const fn element_type(array_oid: u32) -> Option<u32> {
    oids::array_element(array_oid)
}

/// Converts one column value, as pgoutput sends it in text mode, to JSON.
///
/// `text` is the output of the type's output function; SQL NULL and unchanged TOAST
/// values never reach here, since pgoutput marks them without sending text.
pub fn text_to_json(type_oid: u32, text: &str) -> Value {
    match element_type(type_oid) {
        Some(element) => {
            let convert = |item: &str| scalar_to_json(element, item);
            array::parse(text, oids::array_delimiter(element), &convert)
                .unwrap_or_else(|| Value::String(text.to_owned()))
        }
        None => scalar_to_json(type_oid, text),
    }
}

/// Appends the JSON of one column value to `out`: the same bytes as serializing
/// [`text_to_json`]'s value, without building it. The snapshot writes every row this way,
/// so the kinds most rows hold (numbers, text, times) are written straight from the text;
/// the rest go through the value.
pub fn write_text_as_json(type_oid: u32, text: &str, out: &mut Vec<u8>) {
    if element_type(type_oid).is_none() {
        match kind_of(type_oid) {
            ValueKind::Bool => return write_bool(text, out),
            ValueKind::Integer => return write_integer(text, out),
            ValueKind::Timestamp => return write_quoted(datetime::iso_timestamp(text), text, out),
            ValueKind::TimestampTz => {
                return write_quoted(datetime::iso_timestamptz(text), text, out);
            }
            ValueKind::Numeric
            | ValueKind::Money
            | ValueKind::Date
            | ValueKind::Time
            | ValueKind::Text
            | ValueKind::Other => return write_str(text, out),
            ValueKind::Float | ValueKind::Json | ValueKind::Bytea | ValueKind::Array => {}
        }
    }
    // Writing a `Value` to a `Vec` cannot fail.
    let _ = serde_json::to_writer(out, &text_to_json(type_oid, text));
}

/// Appends `text` as a JSON string, escaped as `serde_json` escapes a `Value::String`.
pub fn write_str(text: &str, out: &mut Vec<u8>) {
    // Writing a `str` to a `Vec` cannot fail.
    let _ = serde_json::to_writer(out, text);
}

fn write_bool(text: &str, out: &mut Vec<u8>) {
    match text {
        "t" => out.extend_from_slice(b"true"),
        "f" => out.extend_from_slice(b"false"),
        _ => write_str(text, out),
    }
}

fn write_integer(text: &str, out: &mut Vec<u8>) {
    // As `scalar_to_json`: the number as `serde_json` writes it, which may differ from the
    // text (`+5`, `007`), else the text.
    if let Ok(n) = text.parse::<i64>() {
        let _ = serde_json::to_writer(out, &n);
    } else if let Ok(n) = text.parse::<u64>() {
        let _ = serde_json::to_writer(out, &n);
    } else {
        write_str(text, out);
    }
}

/// The ISO-8601 `pieces` between quotes (they need no escaping), or `text` as sent.
fn write_quoted<const N: usize>(pieces: Option<[&str; N]>, text: &str, out: &mut Vec<u8>) {
    match pieces {
        Some(pieces) => {
            out.push(b'"');
            for piece in pieces {
                out.extend_from_slice(piece.as_bytes());
            }
            out.push(b'"');
        }
        None => write_str(text, out),
    }
}

/// Converts a value of a type that is not an array type.
fn scalar_to_json(type_oid: u32, text: &str) -> Value {
    let as_sent = || Value::String(text.to_owned());
    match kind_of(type_oid) {
        ValueKind::Bool => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => as_sent(),
        },
        ValueKind::Integer => match (text.parse::<i64>(), text.parse::<u64>()) {
            (Ok(n), _) => Value::from(n),
            (_, Ok(n)) => Value::from(n),
            _ => as_sent(),
        },
        // `str::parse` also reads `NaN` and `Infinity`; `from_f64` refuses them, so they
        // (and anything out of range) stay as sent.
        ValueKind::Float => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map_or_else(as_sent, Value::Number),
        ValueKind::Json => json::to_json(text),
        ValueKind::Timestamp => Value::String(datetime::timestamp(text)),
        ValueKind::TimestampTz => Value::String(datetime::timestamptz(text)),
        ValueKind::Bytea => bytea::to_hex(text).map_or_else(as_sent, Value::String),
        ValueKind::Numeric
        | ValueKind::Money
        | ValueKind::Date
        | ValueKind::Time
        | ValueKind::Array
        | ValueKind::Text
        | ValueKind::Other => as_sent(),
    }
}
