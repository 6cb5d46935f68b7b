//! `json` and `jsonb` text to a nested JSON value, without losing any number.
//!
//! `jsonb` stores numbers as `numeric`, so a document can hold
//! `123456789012345678901234567890` or `0.1000000000000000055511151231257827`.
//! `serde_json` (without its `arbitrary_precision` feature) reads every number that is not
//! an `i64`/`u64` into an `f64`, which would silently change such values. So each number
//! in the text is checked first: a document in which one number would not print back as
//! the same decimal value is kept as its text, like a document that does not parse. A
//! number's spelling may still change where its value does not (`2.50` becomes `2.5`,
//! `1E3` becomes `1000.0`), and a `json` (not `jsonb`) object with a repeated key keeps only
//! the last one, as every JSON reader does.

use serde_json::Value;
use std::sync::OnceLock;

/// The parsed document, or the text itself when it does not parse or would lose a digit.
pub(super) fn to_json(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(value) if numbers_are_kept() || every_number_fits(text) => value,
        _ => Value::String(text.to_owned()),
    }
}

/// Whether `serde_json` is built to keep numbers as written (`arbitrary_precision`), in
/// which case no number can be lost and the check is skipped.
fn numbers_are_kept() -> bool {
    static KEPT: OnceLock<bool> = OnceLock::new();
    *KEPT.get_or_init(|| {
        let probe = "0.10000000000000000000001";
        serde_json::from_str::<Value>(probe)
            .and_then(|value| serde_json::to_string(&value))
            .is_ok_and(|printed| printed == probe)
    })
}

/// Whether every number token outside strings in the (valid JSON) `text` survives the
/// trip through `serde_json` with its value unchanged.
fn every_number_fits(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut pos = 0;
    let mut in_string = false;
    while let Some(&b) = bytes.get(pos) {
        pos += 1;
        match (in_string, b) {
            (true, b'\\') => pos += 1,
            (_, b'"') => in_string = !in_string,
            (false, b'-' | b'0'..=b'9') => {
                let start = pos - 1;
                while bytes
                    .get(pos)
                    .is_some_and(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                {
                    pos += 1;
                }
                if !text.get(start..pos).is_some_and(number_fits) {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

/// Whether the JSON number `token` reads back as the same value from `serde_json`.
fn number_fits(token: &str) -> bool {
    if token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok() {
        return true;
    }
    // serde_json's own reading must be the correctly rounded one (it can be one unit in
    // the last place off without its `float_roundtrip` feature) ...
    let (Ok(exact), Ok(read)) = (token.parse::<f64>(), serde_json::from_str::<f64>(token)) else {
        return false;
    };
    // ... and that f64, printed shortest as serde_json prints it, must be the same decimal.
    exact.is_finite()
        && exact.to_bits() == read.to_bits()
        && decimal(token).is_some_and(|d| Some(d) == decimal(&format!("{exact:e}")))
}

/// A decimal number as (negative, significant digits, exponent of the first digit),
/// normalised so that equal values compare equal: `0.0150` and `1.5e-2` are both
/// `(false, "15", -2)`; every zero is `(false, "", 0)`.
fn decimal(token: &str) -> Option<(bool, String, i64)> {
    let (negative, unsigned) = match token.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, token),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let significant = digits.trim_start_matches('0');
    let leading_zeros = i64::try_from(digits.len() - significant.len()).ok()?;
    let significant = significant.trim_end_matches('0');
    if significant.is_empty() {
        return Some((false, String::new(), 0));
    }
    let int_len = i64::try_from(int.len()).ok()?;
    let first = exponent.checked_add(int_len - 1 - leading_zeros)?;
    Some((negative, significant.to_owned(), first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_are_nested() {
        // PostgreSQL 15 output of '{"b": 1, "a": [1, 2.50, null, true]}'::jsonb.
        let sent = r#"{"a": [1, 2.50, null, true], "b": 1}"#;
        assert_eq!(to_json(sent), json!({"a": [1, 2.5, null, true], "b": 1}));
        assert_eq!(to_json(r#""s""#), json!("s"));
        assert_eq!(to_json("null"), Value::Null);
        assert_eq!(to_json(r#"{"a":1,  "a":2}"#), json!({"a": 2}));
        assert_eq!(
            to_json("[-0.5, 1e-7, 1.7976931348623157e+308]"),
            json!([-0.5, 1e-7, f64::MAX])
        );
    }

    #[test]
    fn numbers_an_f64_cannot_carry_keep_the_text() {
        let kept = [
            "123456789012345678901234567890",
            r#"{"a": 0.1000000000000000055511151231257827}"#,
            r#"{"x": 1e400}"#,
            "[1e-400]",
            r#"{"s": "1e400 in a string is fine", "n": 12345678901234567.5}"#,
        ];
        for sent in kept {
            assert_eq!(to_json(sent), Value::String(sent.to_owned()), "json {sent}");
        }
        assert_eq!(to_json(r#"{"s": "1e400"}"#), json!({"s": "1e400"}));
    }

    #[test]
    fn invalid_documents_keep_the_text() {
        for sent in ["", "{", "{\"a\": }", "[1,]", "tru", "\"\\u12\""] {
            assert_eq!(
                to_json(sent),
                Value::String(sent.to_owned()),
                "json {sent:?}"
            );
        }
    }

    #[test]
    fn decimals_compare_by_value() {
        assert_eq!(decimal("0.0150"), decimal("1.5e-2"));
        assert_eq!(decimal("1500"), decimal("1.5E+3"));
        assert_eq!(decimal("-0.0"), decimal("0e5"));
        assert_ne!(decimal("1.5"), decimal("-1.5"));
        assert_ne!(decimal("1.5"), decimal("15"));
        assert_eq!(decimal("1e99999999999999999999"), None);
    }
}
