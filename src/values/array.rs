//! Parser for PostgreSQL's array text format, as written by `array_out`.
//!
//! ```text
//! [0:1][1:2]=          optional lower/upper bounds, only when a lower bound is not 1
//! {{1,NULL},{"a b",x}} braces per dimension, elements split by the type's delimiter
//! ```
//!
//! `array_out` quotes an element when it is empty, equals `NULL` in any case, or contains
//! a brace, a quote, a backslash, the delimiter or white space; inside quotes `\` escapes
//! the next character. An unquoted `NULL` (any case) is SQL NULL, a quoted one is the
//! string. The bounds prefix carries no data a JSON array can hold, so it is dropped.
//!
//! The parser is strict about shape, because it only ever reads `array_out`'s output:
//! sub-arrays and scalars never mix at one level, sibling sub-arrays have one shape, and
//! nesting stops at PostgreSQL's `MAXDIM` (6), which also bounds the recursion on hostile
//! input. Anything else is malformed and yields `None`; the caller then keeps the text.

use serde_json::Value;

/// PostgreSQL's `MAXDIM`: the most dimensions an array may have.
const MAX_DIMS: usize = 6;

/// Parses `text` as an array whose elements are separated by `delimiter` (an ASCII byte)
/// and converts each non-NULL element with `element`. `None` when `text` is malformed.
pub(super) fn parse<F>(text: &str, delimiter: u8, element: &F) -> Option<Value>
where
    F: Fn(&str) -> Value,
{
    let body = strip_bounds(text)?;
    let mut parser = Parser {
        text: body,
        pos: 0,
        delimiter,
    };
    parser.skip_space();
    let (values, _) = parser.array(element, 1)?;
    parser.skip_space();
    (parser.pos == body.len()).then_some(Value::Array(values))
}

/// Drops a leading `[lo:hi]...=` dimension decoration, checking its syntax.
fn strip_bounds(text: &str) -> Option<&str> {
    if !text.starts_with('[') {
        return Some(text);
    }
    let (dims, body) = text.split_once('=')?;
    let inner = dims.strip_prefix('[')?.strip_suffix(']')?;
    let well_formed = inner.split("][").all(|bound| {
        bound
            .split_once(':')
            .is_some_and(|(lower, upper)| is_integer(lower) && is_integer(upper))
    });
    well_formed.then_some(body)
}

fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The elements of one dimension and its shape: its length, then its sub-arrays' shape.
type Shaped = (Vec<Value>, Vec<usize>);

/// One element of a dimension before the shape check.
enum Item {
    Nested(Vec<Value>, Vec<usize>),
    Scalar(Value),
}

struct Parser<'a> {
    text: &'a str,
    /// Byte offset of the next unread byte; always on a character boundary, because
    /// the parser only steps over ASCII bytes or whole characters.
    pos: usize,
    delimiter: u8,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// Parses `{...}` at `pos`, the `depth`-th dimension.
    fn array<F: Fn(&str) -> Value>(&mut self, element: &F, depth: usize) -> Option<Shaped> {
        if depth > MAX_DIMS || self.peek() != Some(b'{') {
            return None;
        }
        self.pos += 1;
        self.skip_space();
        let mut items = Vec::new();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Some((Vec::new(), vec![0]));
        }
        loop {
            self.skip_space();
            let item = match self.peek()? {
                b'{' => {
                    let (values, shape) = self.array(element, depth + 1)?;
                    Item::Nested(values, shape)
                }
                b'"' => Item::Scalar(element(&self.quoted()?)),
                _ => Item::Scalar(self.unquoted()?.map_or(Value::Null, element)),
            };
            items.push(item);
            self.skip_space();
            let separator = self.peek()?;
            self.pos += 1;
            if separator == b'}' {
                return rectangular(items);
            }
            if separator != self.delimiter {
                return None;
            }
        }
    }

    /// Reads a quoted element starting at the opening quote, undoing backslash escapes.
    fn quoted(&mut self) -> Option<String> {
        let start = self.pos + 1;
        let mut out = String::new();
        let mut chars = self.text.get(start..)?.char_indices();
        while let Some((offset, c)) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?.1),
                '"' => {
                    self.pos = start + offset + 1;
                    return Some(out);
                }
                c => out.push(c),
            }
        }
        None
    }

    /// Reads an unquoted element: `Some(None)` for NULL, `None` when malformed.
    fn unquoted(&mut self) -> Option<Option<&str>> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b == self.delimiter || b == b'}' {
                break;
            }
            if matches!(b, b'{' | b'"' | b'\\') {
                return None;
            }
            self.pos += 1;
        }
        let token = self.text.get(start..self.pos)?.trim_ascii();
        if token.is_empty() {
            None
        } else if token.eq_ignore_ascii_case("NULL") {
            Some(None)
        } else {
            Some(Some(token))
        }
    }
}

/// Checks that one dimension is all scalars or all sub-arrays of one shape, and returns
/// it with its own shape (its length, then the shape of its sub-arrays).
fn rectangular(items: Vec<Item>) -> Option<Shaped> {
    let inner = |item: &Item| match item {
        Item::Scalar(_) => None,
        Item::Nested(_, shape) => Some(shape.clone()),
    };
    let first = items.first().map(inner).unwrap_or_default();
    if items.iter().any(|item| inner(item) != first) {
        return None;
    }
    let mut shape = vec![items.len()];
    shape.extend(first.unwrap_or_default());
    let values = items
        .into_iter()
        .map(|item| match item {
            Item::Scalar(value) => value,
            Item::Nested(values, _) => Value::Array(values),
        })
        .collect();
    Some((values, shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strings(text: &str) -> Option<Value> {
        parse(text, b',', &|item: &str| Value::String(item.to_owned()))
    }

    #[test]
    fn malformed_arrays_are_rejected() {
        let malformed = [
            "",
            "{",
            "}",
            "{1,2",
            "{1,,2}",
            "{1,}",
            "{,1}",
            "1,2",
            "{1}x",
            "{{1},2}",
            "{1,{2}}",
            "{{1,2},{3}}",
            "{{{1},{2}},{{3,4},{5,6}}}",
            r#"{"a}"#,
            r#"{a"b}"#,
            r#"{a\b}"#,
            r#"{"a"b}"#,
            "{a{b}",
            "[0:1]{1,2}",
            "[x:1]={1}",
            "[0:1]=",
            "[]={}",
            "[0:1]=x",
            "[0:1]",
            "{{{{{{{1}}}}}}}",
        ];
        for text in malformed {
            assert_eq!(strings(text), None, "array {text:?}");
        }
    }

    #[test]
    fn shapes_and_bounds() {
        assert_eq!(strings("{{{{{{1}}}}}}"), Some(json!([[[[[["1"]]]]]])));
        assert_eq!(strings("{{},{}}"), Some(json!([[], []])));
        assert_eq!(
            strings("[-2:-1][3:4]={{a,b},{c,d}}"),
            Some(json!([["a", "b"], ["c", "d"]]))
        );
        assert_eq!(strings(" { a , \"b\" } "), Some(json!(["a", "b"])));
        let deep = format!("{}{}", "{".repeat(100_000), "}".repeat(100_000));
        assert_eq!(strings(&deep), None);
    }

    #[test]
    fn quoting_and_nulls() {
        let text = r#"{"a,b","c\"d","e\\f","NULL",NULL,null,"",é}"#;
        let expected = json!(["a,b", "c\"d", "e\\f", "NULL", null, null, "", "é"]);
        assert_eq!(strings(text), Some(expected));
    }

    #[test]
    fn the_delimiter_is_the_element_types() {
        let boxes = "{(1,1),(0,0);(3,3),(2,2)}";
        let parsed = parse(boxes, b';', &|item: &str| Value::String(item.to_owned()));
        assert_eq!(parsed, Some(json!(["(1,1),(0,0)", "(3,3),(2,2)"])));
        assert_eq!(
            strings(boxes),
            Some(json!(["(1", "1)", "(0", "0);(3", "3)", "(2", "2)"]))
        );
    }
}
