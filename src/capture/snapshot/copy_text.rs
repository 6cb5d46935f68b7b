//! One line of `COPY ... TO STDOUT` in text format, split into column texts. Pure.
//!
//! Columns are separated by tab; `\N` is NULL; a backslash escapes `\b \f \n \r \t \v \\`,
//! an octal byte (`\0` to `\377`) or a hex byte (`\x41`). The texts are those of the
//! types' output functions, exactly what pgoutput sends for the same values, so snapshot
//! rows go through the same conversion as streamed ones.

use std::borrow::Cow;

/// Why a COPY line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyTextError {
    #[error("column {column} is not valid UTF-8 after unescaping")]
    InvalidUtf8 { column: usize },
    #[error("column {column} ends with a lone backslash")]
    TrailingBackslash { column: usize },
}

/// Splits `line` (without its trailing newline) into column texts, `None` for NULL.
pub fn parse_line(line: &[u8]) -> Result<Vec<Option<Cow<'_, str>>>, CopyTextError> {
    line.split(|b| *b == b'\t')
        .enumerate()
        .map(|(column, field)| parse_field(field, column))
        .collect()
}

fn parse_field(field: &[u8], column: usize) -> Result<Option<Cow<'_, str>>, CopyTextError> {
    if field == b"\\N" {
        return Ok(None);
    }
    let utf8 = |bytes| String::from_utf8(bytes).map_err(|_| CopyTextError::InvalidUtf8 { column });
    if !field.contains(&b'\\') {
        return std::str::from_utf8(field)
            .map(|s| Some(Cow::Borrowed(s)))
            .map_err(|_| CopyTextError::InvalidUtf8 { column });
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&next) = field.get(i) else {
            return Err(CopyTextError::TrailingBackslash { column });
        };
        i += 1;
        match next {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((value & 0xff) as u8);
            }
            b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = 0u8;
                for _ in 0..2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d as u8;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(value);
            }
            other => out.push(other),
        }
    }
    utf8(out).map(|s| Some(Cow::Owned(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<Option<String>> {
        parse_line(line.as_bytes())
            .unwrap()
            .into_iter()
            .map(|c| c.map(Cow::into_owned))
            .collect()
    }

    #[test]
    fn columns_split_on_tabs_and_null_is_backslash_n() {
        assert_eq!(
            texts("1\thello\t\\N\t"),
            vec![
                Some("1".into()),
                Some("hello".into()),
                None,
                Some("".into())
            ]
        );
    }

    #[test]
    fn escapes_are_undone() {
        assert_eq!(
            texts("a\\tb\\nc\\\\d\\re\\bf\\fg\\vh"),
            vec![Some("a\tb\nc\\d\re\u{8}f\u{c}g\u{b}h".into())]
        );
        assert_eq!(texts("\\101\\x42\\7"), vec![Some("AB\u{7}".into())]);
        assert_eq!(
            texts("\\\\N"),
            vec![Some("\\N".into())],
            "an escaped backslash is not NULL"
        );
        assert_eq!(texts("é\\tü"), vec![Some("é\tü".into())]);
    }

    #[test]
    fn broken_input_is_a_clear_error() {
        assert_eq!(
            parse_line(b"ok\tbad\\").unwrap_err(),
            CopyTextError::TrailingBackslash { column: 1 }
        );
        assert_eq!(
            parse_line(b"\xff").unwrap_err(),
            CopyTextError::InvalidUtf8 { column: 0 }
        );
        assert_eq!(
            parse_line(b"x\\377").unwrap_err(),
            CopyTextError::InvalidUtf8 { column: 0 }
        );
    }
}
