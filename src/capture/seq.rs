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

impl StreamSeq {
    /// `seq` in `epoch`. Epochs are recorded as positive numbers; a negative one (never
    /// written by ds-sync) counts as 0, as earlier versions printed it.
    pub fn new(seq: Seq, epoch: Option<i64>) -> StreamSeq {
        StreamSeq {
            epoch: epoch.map(|e| e.max(0).unsigned_abs()),
            seq,
        }
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
}
