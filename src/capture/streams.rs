//! The stream registry: what capture records about streams before it writes to them.
//!
//! * **Table → stream** (`ds_sync.table_streams`): every stream a table writes to, so that
//!   a TRUNCATE resets each of them, including streams of earlier runs, of snapshots and
//!   per-key streams this process never saw. A pair is recorded before the stream's first
//!   message from the table is POSTed: new pairs are noted as messages are queued and
//!   written in one statement before the next dispatch, and a set in memory keeps known
//!   pairs from being written again. No round trip per message.
//! * **Stream admission** (`ds_sync.source_streams`): before this source incarnation's first
//!   POST to a stream on this DS server, the stream's tail offset (HEAD; the stream is
//!   created first when missing) is recorded. A 409 on a stream whose tail never moved past
//!   it is not ours (see `identity`). Admission also creates the stream, so deliveries need
//!   no PUT of their own.
//! * **Epochs** (`ds_sync.stream_epochs`): a stream adopted by `ds-sync stream adopt` gets
//!   `Stream-Seq` values with the epoch as a prefix (see `batch::Seq::header_in`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::ds::{Backoff, DsClient, DsError};
use crate::pg::PgError;

use super::error::CaptureError;
use super::identity::SourceIdentity;

/// What a delivery needs to know about its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The tail before this incarnation's first POST.
    pub tail_before: String,
    /// The stream's epoch, once adopted.
    pub epoch: Option<i64>,
}

/// HEADs and PUTs of an admission round in flight at once.
const ADMIT_PARALLEL: usize = 16;

/// See the module documentation.
pub struct StreamBook {
    slot: String,
    ds: DsClient,
    identity: Arc<SourceIdentity>,
    tables: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// Tables whose recorded streams were read from the database.
    loaded: HashSet<Arc<str>>,
    pending_pairs: Vec<(Arc<str>, Arc<str>)>,
    admitted: HashMap<Arc<str>, Arc<StreamInfo>>,
    pending_streams: HashSet<Arc<str>>,
    hard_stop: CancellationToken,
}

impl StreamBook {
    pub fn new(
        slot: &str,
        ds: DsClient,
        identity: Arc<SourceIdentity>,
        hard_stop: &CancellationToken,
    ) -> StreamBook {
        StreamBook {
            slot: slot.to_string(),
            ds,
            identity,
            tables: HashMap::new(),
            loaded: HashSet::new(),
            pending_pairs: Vec::new(),
            admitted: HashMap::new(),
            pending_streams: HashSet::new(),
            hard_stop: hard_stop.clone(),
        }
    }

    pub fn identity(&self) -> &Arc<SourceIdentity> {
        &self.identity
    }

    /// A message of `table` is queued for `stream`: records the pair and admits the stream
    /// at the next [`StreamBook::flush`] when they are new. `table` is `None` for messages
    /// that belong to no table (snapshot frames of earlier snapshots' streams).
    pub fn note(&mut self, table: Option<&str>, stream: &str) {
        if let Some(table) = table {
            let streams = match self.tables.get_mut(table) {
                Some(s) => s,
                None => self.tables.entry(Arc::from(table)).or_default(),
            };
            if !streams.contains(stream) {
                let stream: Arc<str> = Arc::from(stream);
                streams.insert(Arc::clone(&stream));
                let (table, _) = self.tables.get_key_value(table).expect("inserted above");
                self.pending_pairs.push((Arc::clone(table), stream));
            }
        }
        if !self.admitted.contains_key(stream) && !self.pending_streams.contains(stream) {
            self.pending_streams.insert(Arc::from(stream));
        }
    }

    /// Every stream `table` has written to: recorded ones and those noted since.
    pub async fn streams_of(
        &mut self,
        sql: &Client,
        table: &str,
    ) -> Result<Vec<Arc<str>>, CaptureError> {
        if !self.loaded.contains(table) {
            let rows = sql
                .query(
                    "SELECT stream_name FROM ds_sync.table_streams \
                     WHERE slot_name = $1 AND table_name = $2",
                    &[&self.slot, &table],
                )
                .await
                .map_err(|e| PgError::query("reading ds_sync.table_streams", &e))?;
            let set = self.tables.entry(Arc::from(table)).or_default();
            for r in rows {
                let s: String = r.get(0);
                set.insert(Arc::from(s.as_str()));
            }
            self.loaded.insert(Arc::from(table));
        }
        let mut out: Vec<Arc<str>> = self
            .tables
            .get(table)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        out.sort();
        Ok(out)
    }

    /// What deliveries to `stream` need; `None` until it is admitted.
    pub fn info(&self, stream: &str) -> Option<Arc<StreamInfo>> {
        self.admitted.get(stream).cloned()
    }

    /// Writes new table → stream pairs and admits new streams; called before every dispatch
    /// so nothing is POSTed before its records exist.
    pub async fn flush(&mut self, sql: &Client) -> Result<(), CaptureError> {
        if !self.pending_pairs.is_empty() {
            let tables: Vec<&str> = self.pending_pairs.iter().map(|(t, _)| &**t).collect();
            let streams: Vec<&str> = self.pending_pairs.iter().map(|(_, s)| &**s).collect();
            sql.execute(
                "INSERT INTO ds_sync.table_streams (slot_name, table_name, stream_name) \
                 SELECT $1, t, s FROM unnest($2::text[], $3::text[]) AS p(t, s) \
                 ON CONFLICT DO NOTHING",
                &[&self.slot, &tables, &streams],
            )
            .await
            .map_err(|e| PgError::query("recording streams in ds_sync.table_streams", &e))?;
            self.pending_pairs.clear();
        }
        if !self.pending_streams.is_empty() {
            self.admit(sql).await?;
        }
        Ok(())
    }

    async fn admit(&mut self, sql: &Client) -> Result<(), CaptureError> {
        let streams: Vec<String> = self.pending_streams.iter().map(|s| s.to_string()).collect();
        let server = self.ds.base_url().to_string();
        let rows = sql
            .query(
                "SELECT n.s, r.tail_before, e.epoch FROM unnest($3::text[]) AS n(s) \
                 LEFT JOIN ds_sync.source_streams r ON r.incarnation = $1 AND r.ds_server = $2 \
                   AND r.stream_name = n.s \
                 LEFT JOIN ds_sync.stream_epochs e ON e.stream_name = n.s",
                &[&self.identity.incarnation, &server, &streams],
            )
            .await
            .map_err(|e| PgError::query("reading ds_sync.source_streams", &e))?;
        let mut missing: Vec<(String, Option<i64>)> = Vec::new();
        for r in rows {
            let (stream, tail, epoch): (String, Option<String>, Option<i64>) =
                (r.get(0), r.get(1), r.get(2));
            match tail {
                Some(tail_before) => {
                    let info = StreamInfo { tail_before, epoch };
                    self.admitted
                        .insert(Arc::from(stream.as_str()), Arc::new(info));
                }
                None => missing.push((stream, epoch)),
            }
        }
        let ds = self.ds.clone();
        let hard_stop = self.hard_stop.clone();
        let tails: Vec<(String, Option<i64>, Result<String, CaptureError>)> =
            futures_util::stream::iter(missing)
                .map(|(stream, epoch)| {
                    let (ds, hard_stop) = (ds.clone(), hard_stop.clone());
                    async move {
                        let tail = current_tail(&ds, &stream, &hard_stop).await;
                        (stream, epoch, tail)
                    }
                })
                .buffer_unordered(ADMIT_PARALLEL)
                .collect()
                .await;
        let mut names = Vec::with_capacity(tails.len());
        let mut offsets = Vec::with_capacity(tails.len());
        for (stream, epoch, tail) in tails {
            let tail = tail?;
            names.push(stream.clone());
            offsets.push(tail.clone());
            let info = StreamInfo {
                tail_before: tail,
                epoch,
            };
            self.admitted
                .insert(Arc::from(stream.as_str()), Arc::new(info));
        }
        if !names.is_empty() {
            sql.execute(
                "INSERT INTO ds_sync.source_streams (incarnation, ds_server, stream_name, tail_before) \
                 SELECT $1, $2, s, t FROM unnest($3::text[], $4::text[]) AS p(s, t) \
                 ON CONFLICT DO NOTHING",
                &[&self.identity.incarnation, &server, &names, &offsets],
            )
            .await
            .map_err(|e| PgError::query("recording stream tails in ds_sync.source_streams", &e))?;
            tracing::debug!(streams = names.len(), "streams admitted for this source");
        }
        self.pending_streams.clear();
        Ok(())
    }
}

/// The stream's tail offset, creating the stream when it does not exist; transient failures
/// are retried until a hard stop.
async fn current_tail(
    ds: &DsClient,
    stream: &str,
    hard_stop: &CancellationToken,
) -> Result<String, CaptureError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        match ds.ensure_stream_tail(stream).await {
            Ok(tail) => return Ok(tail),
            Err(e) if e.is_transient() => wait(&mut backoff, stream, &e, hard_stop).await?,
            Err(source) => {
                return Err(CaptureError::Ds {
                    stream: stream.to_string(),
                    source,
                });
            }
        }
    }
}

async fn wait(
    backoff: &mut Backoff,
    stream: &str,
    e: &DsError,
    hard_stop: &CancellationToken,
) -> Result<(), CaptureError> {
    let delay = backoff.next_delay();
    tracing::warn!(stream, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot read the stream's tail, retrying");
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = hard_stop.cancelled() => Err(CaptureError::Interrupted),
    }
}
