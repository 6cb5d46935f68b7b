//! WAL positions (LSNs): one type that owns their text, order and arithmetic.
//!
//! PostgreSQL prints an LSN as two hex numbers, the high and low 32 bits, `16/B374D848`
//! (uppercase, no leading zeros). Every LSN ds-sync reads as text (a slot's
//! `confirmed_flush_lsn` and `restart_lsn`, a consistent point, the positions recorded in
//! `ds_sync.sources`) is parsed here, and a
//! malformed one is a [`LsnParseError`], never a silent 0: a zero start position would make
//! the server stream from the slot's own position while ds-sync believed it was elsewhere,
//! and a zero confirmation would hold WAL back for good. Every LSN ds-sync writes as text
//! (`$1::text::pg_lsn`, logs, CLI output, message headers) goes through [`Lsn`]'s
//! `Display`, so the server and an operator read the same form.

use std::fmt;
use std::str::FromStr;

/// A WAL position. Ordered as PostgreSQL orders `pg_lsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(u64);

impl Lsn {
    /// `0/0`: before any WAL.
    pub const ZERO: Lsn = Lsn(0);

    /// The position with this byte offset in the WAL.
    pub const fn from_u64(value: u64) -> Lsn {
        Lsn(value)
    }

    /// The byte offset in the WAL.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The position just below this one (`0/0` stays `0/0`). Snapshot rows take the
    /// position just below the consistent point, so they sort below every streamed change.
    pub const fn prev(self) -> Lsn {
        Lsn(self.0.saturating_sub(1))
    }

    /// The offset as a Prometheus gauge holds it (an `i64`): positions past `i64::MAX`,
    /// which no real WAL reaches, saturate instead of wrapping to negative.
    pub fn as_i64_saturating(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// A position the server computed as a byte offset (`(lsn - '0/0'::pg_lsn)::int8`);
    /// `None` for a negative number, which no `pg_lsn` gives.
    pub fn from_i64(value: i64) -> Option<Lsn> {
        u64::try_from(value).ok().map(Lsn)
    }
}

/// A text that is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{text}' is not an LSN: expected two hexadecimal numbers of 1 to 8 digits separated by '/', as in 16/B374D848"
)]
pub struct LsnParseError {
    /// The text as given (cut to 64 characters).
    pub text: String,
}

impl LsnParseError {
    fn new(text: &str) -> LsnParseError {
        LsnParseError {
            text: text.chars().take(64).collect(),
        }
    }
}

/// One half of `X/Y`: 1 to 8 hex digits, nothing else (no sign, no spaces).
fn half(digits: &str) -> Option<u64> {
    let ok = (1..=8).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| u64::from_str_radix(digits, 16).ok())?
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    /// Parses PostgreSQL's `X/Y` form (either case).
    fn from_str(text: &str) -> Result<Lsn, LsnParseError> {
        let (high, low) = text
            .split_once('/')
            .ok_or_else(|| LsnParseError::new(text))?;
        match (half(high), half(low)) {
            (Some(high), Some(low)) => Ok(Lsn(high << 32 | low)),
            _ => Err(LsnParseError::new(text)),
        }
    }
}

impl fmt::Display for Lsn {
    /// PostgreSQL's form: `16/B374D848`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// As text, the way PostgreSQL prints it (`ds-sync slot list --format json`).
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl From<pgwire_replication::Lsn> for Lsn {
    fn from(lsn: pgwire_replication::Lsn) -> Lsn {
        Lsn(lsn.as_u64())
    }
}

impl From<Lsn> for pgwire_replication::Lsn {
    fn from(lsn: Lsn) -> pgwire_replication::Lsn {
        pgwire_replication::Lsn::from_u64(lsn.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_postgres() {
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
        assert_eq!(Lsn::from_u64(0x16B_3748).to_string(), "0/16B3748");
        assert_eq!(Lsn::from_u64(0x1_0000_00AB).to_string(), "1/AB");
        assert_eq!(Lsn::from_u64(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parse_and_print_round_trip() {
        let mut rng = crate::test_rng::XorShift(0x5DEE_CE66_D1B5_4A32);
        for lsn in [0, 1, 0xFFFF_FFFF, 0x1_0000_0000, u64::MAX]
            .into_iter()
            .chain((0..1000).map(|_| rng.next()))
        {
            let lsn = Lsn::from_u64(lsn);
            assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn), "{lsn}");
        }
        assert_eq!("16/b374d848".parse(), Ok(Lsn::from_u64(0x16_B374_D848)));
        assert_eq!(
            "00000016/0000000A".parse(),
            Ok(Lsn::from_u64(0x16_0000_000A))
        );
    }

    #[test]
    fn bad_text_is_an_error_that_quotes_it() {
        for bad in [
            "",
            "/",
            "0",
            "0/",
            "/0",
            "16/B374D848/1",
            "G/0",
            "0/-1",
            "+1/0",
            " 1/0",
            "1/0 ",
            "123456789/0",
            "0/123456789",
            "1.5/0",
        ] {
            let err = bad.parse::<Lsn>().expect_err(bad);
            assert_eq!(err.text, bad);
            assert!(err.to_string().contains(&format!("'{bad}'")), "{err}");
        }
        let long = "9".repeat(100);
        assert_eq!(long.parse::<Lsn>().unwrap_err().text.len(), 64);
    }

    #[test]
    fn orders_as_positions() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.prev(), a);
        assert_eq!(Lsn::ZERO.prev(), Lsn::ZERO);
    }

    #[test]
    fn converts_to_and_from_the_replication_client() {
        let ours = Lsn::from_u64(0x16_B374_D848);
        let theirs: pgwire_replication::Lsn = ours.into();
        assert_eq!(theirs.to_string(), ours.to_string());
        assert_eq!(Lsn::from(theirs), ours);
    }

    #[test]
    fn gauge_and_server_offsets() {
        assert_eq!(Lsn::from_u64(u64::MAX).as_i64_saturating(), i64::MAX);
        assert_eq!(Lsn::from_u64(42).as_i64_saturating(), 42);
        assert_eq!(Lsn::from_i64(42), Some(Lsn::from_u64(42)));
        assert_eq!(Lsn::from_i64(-1), None);
    }

    #[test]
    fn serializes_as_text() {
        let json = serde_json::to_string(&Lsn::from_u64(0x1_0000_00AB)).unwrap();
        assert_eq!(json, "\"1/AB\"");
    }
}
