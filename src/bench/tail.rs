//! How many messages a DS stream holds, polled while a consumer fills it.
//!
//! The embedded server's offsets are `<message count, 16 hex>_<byte offset, 16 hex>`, so a
//! HEAD is enough to count. Other servers' offsets are opaque: there the counter reads what was
//! appended since its last poll (costly, but correct).

use super::BenchError;
use crate::ds::{DsClient, OFFSET_START};

/// Counts messages in one stream.
pub(super) struct TailCounter {
    ds: DsClient,
    stream: String,
    /// Offset and count of the last incremental read, for opaque offsets.
    read_pos: (String, u64),
}

/// The message count an embedded-server offset encodes, if it is one.
pub(super) fn count_in_offset(offset: &str) -> Option<u64> {
    let (seq, bytes) = offset.split_once('_')?;
    if seq.len() != 16 || bytes.len() != 16 {
        return None;
    }
    u64::from_str_radix(bytes, 16).ok()?;
    u64::from_str_radix(seq, 16).ok()
}

impl TailCounter {
    pub(super) fn new(ds: &DsClient, stream: &str) -> TailCounter {
        TailCounter {
            ds: ds.clone(),
            stream: stream.to_owned(),
            read_pos: (OFFSET_START.to_owned(), 0),
        }
    }

    /// Messages in the stream now (0 while it does not exist).
    pub(super) async fn count(&mut self) -> Result<u64, BenchError> {
        let Some(offset) = self.ds.head(&self.stream).await? else {
            return Ok(0);
        };
        if let Some(n) = count_in_offset(&offset) {
            return Ok(n);
        }
        loop {
            let batch = self.ds.read(&self.stream, &self.read_pos.0).await?;
            self.read_pos.1 += batch.messages.len() as u64;
            let advanced = batch.next_offset != self.read_pos.0;
            self.read_pos.0 = batch.next_offset;
            if batch.up_to_date || batch.closed || !advanced {
                return Ok(self.read_pos.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::count_in_offset;

    #[test]
    fn embedded_offsets_carry_the_message_count() {
        assert_eq!(
            count_in_offset("00000000000f4240_0000000001312d00"),
            Some(1_000_000)
        );
        assert_eq!(count_in_offset("-1"), None);
        assert_eq!(count_in_offset("abc_def"), None);
        assert_eq!(count_in_offset("zzzzzzzzzzzzzzzz_0000000000000000"), None);
    }
}
