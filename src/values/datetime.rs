//! `timestamp` and `timestamptz` text output (DateStyle ISO) to ISO-8601.
//!
//! PostgreSQL writes `2024-01-02 03:04:05.123456+00`: a space between date and time, and
//! the UTC offset as `±HH`, `±HH:MM`, or `±HH:MM:SS` for historical local mean time
//! (`+05:53:28`). ISO-8601 wants a `T` and at least `±HH:MM`, so the space becomes `T` and
//! a bare hour gets `:00`; second-level offsets are kept whole rather than rounded.
//!
//! Only text of exactly that shape is rewritten. Everything else is returned unchanged:
//! `infinity`, `-infinity`, BC values (`0044-03-15 10:00:00 BC`, which ISO-8601 can only
//! express with a signed astronomical year) and any other DateStyle's output. Years past
//! 9999 (`12345-01-01 00:00:00`) keep their five digits.

/// `2024-01-02 03:04:05.5` → `2024-01-02T03:04:05.5`; other text unchanged.
pub(super) fn timestamp(text: &str) -> String {
    iso_timestamp(text).map_or_else(|| text.to_owned(), |parts| parts.concat())
}

/// `2024-01-02 03:04:05+00` → `2024-01-02T03:04:05+00:00`; other text unchanged.
pub(super) fn timestamptz(text: &str) -> String {
    iso_timestamptz(text).map_or_else(|| text.to_owned(), |parts| parts.concat())
}

/// The pieces of a `timestamp`'s ISO-8601 form, in order, when `text` has the shape that
/// is rewritten. Every piece is ASCII digits and separators: it needs no JSON escaping.
pub(super) fn iso_timestamp(text: &str) -> Option<[&str; 4]> {
    match split(text)? {
        (date, time, "") => Some([date, "T", time, ""]),
        _ => None,
    }
}

/// As [`iso_timestamp`], for a `timestamptz`: the offset gets `:00` when it is a bare hour.
pub(super) fn iso_timestamptz(text: &str) -> Option<[&str; 5]> {
    let (date, time, offset) = split(text)?;
    if !is_offset(offset) {
        return None;
    }
    match offset.len() {
        3 => Some([date, "T", time, offset, ":00"]),
        6 | 9 => Some([date, "T", time, offset, ""]),
        _ => None,
    }
}

/// Splits `YYYY-MM-DD HH:MM:SS[.f...]rest` into date, time and rest; `None` when the
/// date or time is not in that form.
fn split(text: &str) -> Option<(&str, &str, &str)> {
    let (date, rest) = text.split_once(' ')?;
    let time_len = time_len(rest.as_bytes())?;
    let (time, rest) = rest.split_at_checked(time_len)?;
    is_date(date).then_some((date, time, rest))
}

fn all_digits(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit)
}

/// `YYYY-MM-DD`, with four or more year digits.
fn is_date(date: &str) -> bool {
    let b = date.as_bytes();
    let Some(year_len) = b.len().checked_sub(6) else {
        return false;
    };
    year_len >= 4
        && all_digits(&b[..year_len])
        && b[year_len] == b'-'
        && all_digits(&b[year_len + 1..year_len + 3])
        && b[year_len + 3] == b'-'
        && all_digits(&b[year_len + 4..])
}

/// Length of a leading `HH:MM:SS` with optional `.fraction`, if `b` starts with one.
fn time_len(b: &[u8]) -> Option<usize> {
    let hms = b.get(..8)?;
    let shaped = all_digits(&hms[0..2])
        && hms[2] == b':'
        && all_digits(&hms[3..5])
        && hms[5] == b':'
        && all_digits(&hms[6..8]);
    if !shaped {
        return None;
    }
    if b.get(8) != Some(&b'.') {
        return Some(8);
    }
    let fraction = b[9..].iter().take_while(|d| d.is_ascii_digit()).count();
    (fraction > 0).then_some(9 + fraction)
}

/// `±HH`, `±HH:MM` or `±HH:MM:SS`.
fn is_offset(offset: &str) -> bool {
    let b = offset.as_bytes();
    let Some((sign, rest)) = b.split_first() else {
        return false;
    };
    matches!(sign, b'+' | b'-')
        && rest.len() % 3 == 2
        && rest.chunks(3).all(|chunk| match chunk {
            [h, l] => h.is_ascii_digit() && l.is_ascii_digit(),
            [h, l, b':'] => h.is_ascii_digit() && l.is_ascii_digit(),
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_gets_a_t_separator() {
        let cases = [
            ("2024-01-02 03:04:05.123456", "2024-01-02T03:04:05.123456"),
            ("2024-01-02 03:04:05", "2024-01-02T03:04:05"),
            ("2024-01-02 03:04:05.5", "2024-01-02T03:04:05.5"),
            ("12345-01-01 00:00:00", "12345-01-01T00:00:00"),
        ];
        for (sent, expected) in cases {
            assert_eq!(timestamp(sent), expected, "timestamp {sent:?}");
        }
    }

    #[test]
    fn timestamptz_offsets_are_normalised() {
        let cases = [
            (
                "2024-01-02 03:04:05.123456+00",
                "2024-01-02T03:04:05.123456+00:00",
            ),
            ("2024-06-01 05:30:00+05:30", "2024-06-01T05:30:00+05:30"),
            (
                "2024-05-31 21:30:00.25-02:30",
                "2024-05-31T21:30:00.25-02:30",
            ),
            (
                "1800-01-01 05:53:28+05:53:28",
                "1800-01-01T05:53:28+05:53:28",
            ),
            (
                "1850-05-31 19:03:58-04:56:02",
                "1850-05-31T19:03:58-04:56:02",
            ),
            ("2024-01-02 03:04:05-08", "2024-01-02T03:04:05-08:00"),
        ];
        for (sent, expected) in cases {
            assert_eq!(timestamptz(sent), expected, "timestamptz {sent:?}");
        }
    }

    #[test]
    fn special_and_foreign_values_are_kept() {
        let kept = [
            "infinity",
            "-infinity",
            "0044-03-15 10:00:00 BC",
            "0044-03-15 15:53:28+05:53:28 BC",
            "Tue Jan 02 03:04:05 2024 PST",
            "01/02/2024 03:04:05",
            "2024-01-02 03:04:05.",
            "2024-01-02 03:04",
            "2024-1-02 03:04:05",
            "2024-01-02 03:04:05+5",
            "2024-01-02 03:04:05+05:3",
            "2024-01-02 03:04:05+05:30:",
            "",
            " ",
        ];
        for sent in kept {
            assert_eq!(timestamptz(sent), sent, "timestamptz {sent:?}");
            assert_eq!(timestamp(sent), sent, "timestamp {sent:?}");
        }
        // A timestamp never carries an offset, so one is not a timestamp's text.
        assert_eq!(
            timestamp("2024-01-02 03:04:05+00"),
            "2024-01-02 03:04:05+00"
        );
    }
}
