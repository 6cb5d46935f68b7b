//! The ingest load: one producer per stream POSTing one to five numbered events at a time
//! straight to the DS server (not through the fault proxy), and the ledger of which POSTs
//! the server acknowledged. A POST that failed (the server restarting) may or may not have
//! been appended; the audit takes the stream itself as the truth for those.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::faults::Rng;
use crate::ds::DsClient;

/// Ingested streams.
pub(super) const STREAMS: usize = 4;

/// The name of ingested stream `i`.
pub(super) fn stream(i: usize) -> String {
    format!("chaos-in/{i}")
}

/// An event's key: its stream and number, unique in the run.
pub(super) fn event_key(stream: &str, n: u64) -> String {
    format!("{stream}#{n}")
}

/// The number in a key made by [`event_key`].
pub(super) fn event_number(key: &str) -> Option<u64> {
    key.rsplit_once('#')?.1.parse().ok()
}

/// What one producer sent.
#[derive(Debug, Default)]
pub(super) struct Sent {
    pub stream: String,
    /// Numbers of events in POSTs the server acknowledged.
    pub acked: Vec<u64>,
    /// Numbers of events in POSTs that failed (appended or not).
    pub unacked: Vec<u64>,
    pub posts: u64,
    pub failed_posts: u64,
}

/// POSTs to `stream` `rate` times per second until `stop`.
pub(super) async fn produce(
    ds: DsClient,
    stream: String,
    rate: u32,
    seed: u64,
    stop: CancellationToken,
) -> Sent {
    let mut rng = Rng::new(seed);
    let mut sent = Sent {
        stream,
        ..Sent::default()
    };
    let every = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = Instant::now();
    let mut next = 1u64;
    while !stop.is_cancelled() {
        let count = 1 + rng.below(5);
        let numbers: Vec<u64> = (next..next + count).collect();
        next += count;
        let events: Vec<_> = numbers
            .iter()
            .map(|n| {
                json!({
                    "key": event_key(&sent.stream, *n),
                    "type": "chaos",
                    "operation": "insert",
                    "data": {"n": n},
                })
            })
            .collect();
        let body = Bytes::from(serde_json::to_vec(&events).unwrap_or_default());
        sent.posts += 1;
        match ds.append(&sent.stream, body, None).await {
            Ok(_) => sent.acked.extend(numbers),
            Err(_) => {
                sent.failed_posts += 1;
                sent.unacked.extend(numbers);
            }
        }
        let due = every.mul_f64(sent.posts as f64);
        tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
    }
    sent
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_event_key_gives_its_number_back() {
        let key = super::event_key("chaos-in/3", 42);
        assert_eq!(super::event_number(&key), Some(42));
        assert_eq!(super::event_number("no number"), None);
    }
}
