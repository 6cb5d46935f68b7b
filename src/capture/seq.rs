//! A message's position in the replication stream, and the `Stream-Seq` text it is sent with.
//!
//! Every message capture sends has a position `(commit LSN, index in the transaction)`:
//! deterministic, so a replay after a restart recomputes the same values, and increasing in
//! stream order (snapshot rows take the position just below the consistent point, see
//! `snapshot::writer`). A batch is POSTed with its last message's position as `Stream-Seq`,
//! and the DS server refuses a value that is not above the stream's last one: that is how a
//! replay is skipped. The server compares the values bytewise, so the text is fixed width:
//!
//! ```text
//!  <commit LSN, 16 uppercase hex digits><index, 10 decimal digits>        0000000016B374D80000000003
//!  e<epoch, 16 uppercase hex digits><the same 26 characters>              e0000000000000002 0000…
//! ```
//!
//! The second form is a stream's epoch (`ds-sync stream adopt`): `e` sorts above every hex
//! digit, so every value of an epoch sorts above every value without one, and a later epoch
//! above an earlier one, whichever database wrote them. Streams written by earlier versions
//! hold exactly these texts, so the format never changes; [`StreamSeq`]'s order is the
//! bytewise order of its text.

use std::fmt;
use std::str::FromStr;

use crate::lsn::Lsn;

/// The position of one message in the replication stream. Ordered by commit LSN, then index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq {
    pub commit_lsn: Lsn,
    pub index: u32,
}

impl Seq {
    /// The `Stream-Seq` header value without an epoch.
    pub fn header(&self) -> String {
        StreamSeq::new(*self, None).to_string()
    }

    /// The header in a stream's epoch (`None`: the stream was never adopted); see the
    /// module documentation.
    pub fn header_in(&self, epoch: Option<i64>) -> String {
        StreamSeq::new(*self, epoch).to_string()
    }
}

/// A `Stream-Seq` value: a position, in an epoch or not. Its order (derived: no epoch below
/// any epoch, then epoch, then position) is the bytewise order of its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamSeq {
    epoch: Option<u64>,
    seq: Seq,
}

/// Hex digits of the epoch and of the commit LSN; decimal digits of the index.
const HEX_WIDTH: usize = 16;
const INDEX_WIDTH: usize = 10;
const PLAIN_LEN: usize = HEX_WIDTH + INDEX_WIDTH;
const EPOCH_LEN: usize = 1 + HEX_WIDTH + PLAIN_LEN;

impl StreamSeq {
    /// `seq` in `epoch`. Epochs are recorded as positive numbers; a negative one (never
    /// written by ds-sync) counts as 0, as earlier versions printed it.
    pub fn new(seq: Seq, epoch: Option<i64>) -> StreamSeq {
        StreamSeq {
            epoch: epoch.map(|e| e.max(0).unsigned_abs()),
            seq,
        }
    }

    /// The message position.
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// The stream's epoch, when it was adopted.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }
}

impl fmt::Display for StreamSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(epoch) = self.epoch {
            write!(f, "e{epoch:016X}")?;
        }
        let Seq { commit_lsn, index } = self.seq;
        write!(f, "{:016X}{index:010}", commit_lsn.as_u64())
    }
}

/// A text that is not a `Stream-Seq` value ds-sync writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{text}' is not a ds-sync Stream-Seq ({reason}): expected 16 uppercase hex digits of a commit LSN and 10 decimal digits of an index, optionally after 'e' and 16 uppercase hex digits of an epoch"
)]
pub struct StreamSeqParseError {
    /// The text as given (cut to 64 characters).
    pub text: String,
    pub reason: &'static str,
}

/// Exactly `HEX_WIDTH` uppercase hex digits: only the form [`StreamSeq`] prints, so that a
/// parsed value prints back byte for byte.
fn upper_hex(digits: &str) -> Option<u64> {
    let ok = digits.len() == HEX_WIDTH
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    ok.then(|| u64::from_str_radix(digits, 16).ok())?
}

fn parse_plain(text: &str) -> Result<Seq, &'static str> {
    if text.len() != PLAIN_LEN {
        return Err("wrong length");
    }
    let (lsn, index) = text.split_at(HEX_WIDTH);
    let commit_lsn = upper_hex(lsn).ok_or("bad commit LSN digits")?;
    if !index.bytes().all(|b| b.is_ascii_digit()) {
        return Err("bad index digits");
    }
    let index = index.parse().map_err(|_| "index above 4294967295")?;
    Ok(Seq {
        commit_lsn: Lsn::from_u64(commit_lsn),
        index,
    })
}

impl FromStr for StreamSeq {
    type Err = StreamSeqParseError;

    fn from_str(text: &str) -> Result<StreamSeq, StreamSeqParseError> {
        let parsed = match text.strip_prefix('e') {
            _ if !text.is_ascii() => Err("not ASCII"),
            Some(rest) if text.len() == EPOCH_LEN => {
                let (epoch, plain) = rest.split_at(HEX_WIDTH);
                upper_hex(epoch)
                    .ok_or("bad epoch digits")
                    .and_then(|epoch| Ok((Some(epoch), parse_plain(plain)?)))
            }
            Some(_) => Err("wrong length"),
            None => parse_plain(text).map(|seq| (None, seq)),
        };
        parsed
            .map(|(epoch, seq)| StreamSeq { epoch, seq })
            .map_err(|reason| StreamSeqParseError {
                text: text.chars().take(64).collect(),
                reason,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(commit_lsn: u64, index: u32) -> Seq {
        Seq {
            commit_lsn: Lsn::from_u64(commit_lsn),
            index,
        }
    }

    #[test]
    fn seq_headers_sort_like_positions() {
        let a = seq(0x1_0000_0000, 9).header();
        let b = seq(0x1_0000_0000, 10).header();
        let c = seq(0x2_0000_0000, 0).header();
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(a.len(), 26);
        let low = seq(0, 0);
        let high = seq(u64::MAX, u32::MAX);
        assert!(
            low.header_in(Some(1)) > high.header(),
            "an epoch sorts above any plain value"
        );
        assert!(
            low.header_in(Some(2)) > high.header_in(Some(1)),
            "later epochs sort higher"
        );
        assert!(low.header_in(Some(1)) < high.header_in(Some(1)));
        assert_eq!(low.header_in(None), low.header());
    }

    /// The exact texts earlier versions sent (and streams hold): the format never changes.
    #[test]
    fn text_is_the_format_streams_already_hold() {
        assert_eq!(
            seq(0x16_B374_D848, 3).header(),
            "00000016B374D8480000000003"
        );
        assert_eq!(
            seq(0, 0).header_in(Some(2)),
            "e000000000000000200000000000000000000000000"
        );
        assert_eq!(
            seq(u64::MAX, u32::MAX).header(),
            "FFFFFFFFFFFFFFFF4294967295"
        );
        assert_eq!(seq(1, 0).header_in(Some(-5)), seq(1, 0).header_in(Some(0)));
    }

    #[test]
    fn parse_and_print_round_trip() {
        let mut rng = crate::test_rng::XorShift(0x5DEE_CE66_D1B5_4A32);
        for _ in 0..1000 {
            let s = seq(rng.next(), rng.next() as u32);
            let epoch = match rng.below(3) {
                0 => None,
                1 => Some(0),
                _ => Some((rng.next() >> 1) as i64),
            };
            let value = StreamSeq::new(s, epoch);
            let text = value.to_string();
            assert_eq!(text.parse::<StreamSeq>(), Ok(value), "{text}");
            assert_eq!(value.seq(), s);
            assert_eq!(value.epoch(), epoch.map(|e| e as u64));
        }
    }

    #[test]
    fn order_is_the_order_of_the_text() {
        let mut rng = crate::test_rng::XorShift(0x0123_4567_89AB_CDEF);
        let mut values: Vec<StreamSeq> = (0..500)
            .map(|_| {
                // Few distinct parts, so equal prefixes (same epoch, same LSN) are common.
                let s = seq(rng.below(4) as u64 * 0xFFFF_FFFF, rng.below(12) as u32);
                let epoch = [None, Some(1), Some(2), Some(16)][rng.below(4)];
                StreamSeq::new(s, epoch)
            })
            .collect();
        values.sort();
        for pair in values.windows(2) {
            let (a, b) = (pair[0].to_string(), pair[1].to_string());
            assert!(a <= b, "{a} sorts after {b} as text");
            assert_eq!(pair[0] == pair[1], a == b);
        }
    }

    #[test]
    fn bad_text_is_an_error_that_says_why() {
        for (bad, reason) in [
            ("", "wrong length"),
            ("00000016B374D848000000000", "wrong length"),
            ("00000016B374D84800000000033", "wrong length"),
            ("00000016b374d8480000000003", "bad commit LSN digits"),
            ("0000 016B374D8480000000003", "bad commit LSN digits"),
            ("00000016B374D84800000000x3", "bad index digits"),
            ("00000016B374D848+000000003", "bad index digits"),
            ("00000016B374D8489999999999", "index above 4294967295"),
            ("e00000000000000020000000000000000000000000", "wrong length"),
            (
                "e000000000000000G00000000000000000000000000",
                "bad epoch digits",
            ),
            (
                "x000000000000000200000000000000000000000000",
                "wrong length",
            ),
            ("0000000000000000é00000000", "not ASCII"),
        ] {
            let err = bad.parse::<StreamSeq>().expect_err(bad);
            assert_eq!((err.text.as_str(), err.reason), (bad, reason));
            assert!(err.to_string().contains(&format!("'{bad}'")), "{err}");
        }
    }
}
