//! The snapshot's side of delivery: rows from the readers into per-stream batches, with
//! sequence numbers that sort before every change the slot streams.
//!
//! Each stream's snapshot section is `[reset] snapshot-start, insert..., snapshot-end`.
//! Its messages carry `Seq { commit_lsn: consistent_point.prev(), index: 0, 1, 2, ... }`,
//! counted per stream in the order they are queued, which is the order they are POSTed
//! (one POST in flight per stream). Changes the slot streams commit at or after the
//! consistent point, so their sequences are higher; a later snapshot (restart, `always`)
//! has a higher consistent point, so its messages sort after everything before it.
//! Several readers may feed one stream (routes that map tables to one stream): the counter
//! is per stream, not per table, so that stays increasing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::ds::DsClient;
use crate::lsn::Lsn;

use super::super::batch::{Limits, OutMessage, Queues, Seq};
use super::super::error::CaptureError;
use super::super::fence::Fence;
use super::super::identity::SourceIdentity;
use super::super::message::{self, SnapshotControl};
use super::super::sender::{Deliveries, Landed};
use super::super::streams::StreamBook;
use super::error::SnapshotError;
use super::state;

/// Where streams a snapshot writes to are recorded before their first message, and the
/// guards of its deliveries (see `sender`).
pub struct StreamRecord<'a> {
    pub sql: &'a Client,
    pub slot: &'a str,
    pub fence: Fence,
    pub identity: Arc<SourceIdentity>,
}

/// Per-stream sequence numbers of one snapshot. Pure.
#[derive(Debug)]
pub struct SnapshotSeqs {
    base: Lsn,
    next: HashMap<Arc<str>, u32>,
}

impl SnapshotSeqs {
    /// Sequences just below `consistent_point`.
    pub fn new(consistent_point: Lsn) -> SnapshotSeqs {
        SnapshotSeqs {
            base: consistent_point.prev(),
            next: HashMap::new(),
        }
    }

    /// The next sequence of `stream`; an error past `u32::MAX` messages in one stream.
    pub fn next(&mut self, stream: &Arc<str>) -> Result<Seq, CaptureError> {
        let counter = self.next.entry(Arc::clone(stream)).or_insert(0);
        let index = *counter;
        *counter = counter
            .checked_add(1)
            .ok_or_else(|| SnapshotError::TooManyMessages {
                stream: stream.to_string(),
            })?;
        Ok(Seq {
            commit_lsn: self.base,
            index,
        })
    }
}

/// Queues, delivery tasks and the snapshot framing of each stream.
pub struct Writer<'a> {
    queues: Queues,
    seqs: SnapshotSeqs,
    deliveries: Deliveries,
    /// Streams framed so far, in first-touch order.
    touched: Vec<Arc<str>>,
    touched_set: HashSet<Arc<str>>,
    /// Send `reset` before `snapshot-start` (the stream may hold older rows).
    reset: bool,
    record: Option<StreamRecord<'a>>,
    book: Option<StreamBook>,
    /// The table and stream key of the last row: a table's rows come in runs to one
    /// stream, and a pair once touched needs nothing more (noting it again changes
    /// nothing), so a run skips the look-ups.
    last: Option<(Arc<str>, Arc<str>)>,
    pub rows: u64,
}

impl<'a> Writer<'a> {
    pub fn new(
        ds: DsClient,
        limits: Limits,
        max_in_flight: usize,
        consistent_point: Lsn,
        reset: bool,
        record: Option<StreamRecord<'a>>,
        hard_stop: &CancellationToken,
    ) -> Writer<'a> {
        let mut deliveries = Deliveries::new(ds.clone(), max_in_flight, hard_stop);
        let book = record.as_ref().map(|r| {
            deliveries = Deliveries::new(ds.clone(), max_in_flight, hard_stop)
                .guarded(Some(r.fence.clone()), Some(Arc::clone(&r.identity)));
            StreamBook::new(r.slot, ds.clone(), Arc::clone(&r.identity), hard_stop)
        });
        Writer {
            queues: Queues::new(limits),
            seqs: SnapshotSeqs::new(consistent_point),
            deliveries,
            touched: Vec::new(),
            touched_set: HashSet::new(),
            reset,
            record,
            book,
            last: None,
            rows: 0,
        }
    }

    pub fn buffered_bytes(&self) -> usize {
        self.queues.buffered_bytes()
    }

    /// Frames `stream` on first use: records it, then `[reset] snapshot-start`. `table`
    /// writes to it (`None` for streams of earlier snapshots framed for their reset).
    pub async fn touch(
        &mut self,
        table: Option<&str>,
        stream: &str,
    ) -> Result<Arc<str>, CaptureError> {
        if let Some(book) = &mut self.book {
            book.note(table, stream);
        }
        if let Some(key) = self.touched_set.get(stream) {
            return Ok(Arc::clone(key));
        }
        if let Some(record) = &self.record {
            state::record_stream(record.sql, record.slot, stream).await?;
        }
        let key: Arc<str> = Arc::from(stream);
        if self.reset {
            self.push_json(&key, &message::reset_message())?;
        }
        self.push_json(&key, &message::snapshot_control(SnapshotControl::Start))?;
        self.touched.push(Arc::clone(&key));
        self.touched_set.insert(Arc::clone(&key));
        Ok(key)
    }

    /// Queues one row of `table`.
    pub async fn row(
        &mut self,
        table: &str,
        stream: &str,
        json: Bytes,
    ) -> Result<(), CaptureError> {
        let key = match &self.last {
            Some((t, key)) if **t == *table && **key == *stream => Arc::clone(key),
            _ => {
                let key = self.touch(Some(table), stream).await?;
                self.last = Some((Arc::from(table), Arc::clone(&key)));
                key
            }
        };
        let seq = self.seqs.next(&key)?;
        self.queues.push(
            &key,
            OutMessage {
                json,
                tx: Lsn::ZERO,
                seq,
            },
        );
        self.rows += 1;
        Ok(())
    }

    fn push_json(&mut self, key: &Arc<str>, value: &serde_json::Value) -> Result<(), CaptureError> {
        let json = Bytes::from(serde_json::to_vec(value).unwrap_or_default());
        let seq = self.seqs.next(key)?;
        self.queues.push(
            key,
            OutMessage {
                json,
                tx: Lsn::ZERO,
                seq,
            },
        );
        Ok(())
    }

    /// Queues `snapshot-end` on every framed stream.
    pub fn end(&mut self) -> Result<(), CaptureError> {
        let end = message::snapshot_control(SnapshotControl::End);
        for key in self.touched.clone() {
            self.push_json(&key, &end)?;
        }
        self.queues.commit();
        Ok(())
    }

    /// Everything queued so far may be sent.
    pub fn commit(&mut self) {
        self.queues.commit();
    }

    /// True when nothing is queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.deliveries.is_empty() && self.queues.is_idle()
    }

    /// Records new streams, then starts every POST that may go now.
    pub async fn dispatch(&mut self) -> Result<(), CaptureError> {
        if let (Some(book), Some(record)) = (&mut self.book, &self.record) {
            book.flush(record.sql).await?;
        }
        self.deliveries
            .dispatch(&mut self.queues, self.book.as_ref());
        Ok(())
    }

    /// Waits for one POST to finish and books it (nothing to wait for when none is in
    /// flight).
    pub async fn next_delivery(&mut self) -> Result<Landed, CaptureError> {
        self.deliveries.next(&mut self.queues).await
    }

    pub fn has_in_flight(&self) -> bool {
        !self.deliveries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_seqs_sit_below_the_consistent_point_and_count_per_stream() {
        let mut seqs = SnapshotSeqs::new(Lsn::from_u64(0x1_0000_0010));
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let a0 = seqs.next(&a).unwrap();
        let a1 = seqs.next(&a).unwrap();
        let b0 = seqs.next(&b).unwrap();
        assert_eq!((a0.index, a1.index, b0.index), (0, 1, 0));
        assert!(a0 < a1);
        let first_change = Seq {
            commit_lsn: Lsn::from_u64(0x1_0000_0010),
            index: 0,
        };
        assert!(a1 < first_change && b0 < first_change);
        let mut later = SnapshotSeqs::new(Lsn::from_u64(0x1_0000_0011));
        assert!(
            later.next(&a).unwrap() > a1,
            "a later snapshot sorts after this one"
        );
        assert!(a1.header() < first_change.header());
    }
}
