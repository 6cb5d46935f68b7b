//! `bytea` text output to a lowercase hex string without the `\x` prefix.
//!
//! PostgreSQL writes bytea in one of two forms, chosen by the `bytea_output` setting of
//! the sending session: `hex` (the default since 9.0), `\x0a0bff`, and `escape`, where
//! printable ASCII stands for itself, `\\` is a backslash and `\ooo` an octal byte
//! (`ab\\c\000\377`). A role or database can set `escape`, so both are read and both give
//! the same hex, and the JSON never depends on that setting.

use std::fmt::Write as _;

/// The hex of the bytes that `text` encodes, or `None` when it is neither form.
pub(super) fn to_hex(text: &str) -> Option<String> {
    match text.strip_prefix("\\x") {
        Some(hex) => {
            let valid = hex.len() % 2 == 0 && hex.bytes().all(|b| b.is_ascii_hexdigit());
            valid.then(|| hex.to_ascii_lowercase())
        }
        None => escape_to_hex(text.as_bytes()),
    }
}

/// Decodes the `escape` form, as PostgreSQL's `byteain` does, straight into hex.
fn escape_to_hex(text: &[u8]) -> Option<String> {
    let mut hex = String::with_capacity(text.len() * 2);
    let mut rest = text;
    while let Some((&first, tail)) = rest.split_first() {
        let (byte, consumed) = match (first, tail) {
            (b'\\', [b'\\', ..]) => (b'\\', 2),
            (b'\\', [a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', ..]) => {
                (((a - b'0') << 6) | ((b - b'0') << 3) | (c - b'0'), 4)
            }
            (b'\\', _) => return None,
            (byte, _) => (byte, 1),
        };
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
        rest = &rest[consumed..];
    }
    Some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_form_loses_its_prefix() {
        assert_eq!(to_hex("\\x0a0bff").as_deref(), Some("0a0bff"));
        assert_eq!(to_hex("\\x").as_deref(), Some(""));
        assert_eq!(to_hex("\\xDEADbeef").as_deref(), Some("deadbeef"));
    }

    #[test]
    fn escape_form_is_decoded_to_the_same_hex() {
        // PostgreSQL 15, bytea_output = escape, of E'ab\\\\c\\000\\001\\377 ~'::bytea.
        let sent = "ab\\\\c\\000\\001\\377 ~";
        assert_eq!(to_hex(sent).as_deref(), Some("61625c630001ff207e"));
        assert_eq!(to_hex("").as_deref(), Some(""));
    }

    #[test]
    fn malformed_text_is_rejected() {
        for sent in [
            "\\x0", "\\x0g", "\\xé0", "a\\", "\\400", "\\07", "\\8", "\\x 0",
        ] {
            assert_eq!(to_hex(sent), None, "bytea {sent:?}");
        }
    }
}
