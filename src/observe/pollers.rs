//! The timers behind the metrics that nothing in the pipeline sees by itself:
//!
//! * the slot (every [`SLOT_EVERY`], on a SQL connection of its own): lag behind the current
//!   WAL position, WAL retained, `wal_status`, `safe_wal_size`, the confirmed position;
//! * the DS server (every [`PROBE_EVERY`], bounded by [`PROBE_TIMEOUT`]): `GET /healthz`, for
//!   readiness and `ds_sync_ds_server_up`; an idle capture sends nothing, so this is what
//!   notices a server that stopped answering;
//! * ingest tails (every [`TAIL_EVERY`], [`TAIL_CONCURRENCY`] HEADs at once): how far each
//!   subscription is behind.
//!
//! A poll that fails is logged once per outage and retried on the next tick; pollers never
//! stop the process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::ds::{DsClient, DsError};
use crate::pg::{PgError, PgTarget};

/// How often the slot is read.
pub const SLOT_EVERY: Duration = Duration::from_secs(5);
/// How often the DS server is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// How long a probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often ingest tails are read.
pub const TAIL_EVERY: Duration = Duration::from_secs(10);
/// HEAD requests in flight at once.
pub const TAIL_CONCURRENCY: usize = 8;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    pub slot: String,
}

/// `pg_replication_slots.wal_status`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum WalStatus {
    reserved,
    extended,
    unreserved,
    lost,
}

const WAL_STATUSES: [WalStatus; 4] = [
    WalStatus::reserved,
    WalStatus::extended,
    WalStatus::unreserved,
    WalStatus::lost,
];

impl WalStatus {
    fn parse(s: &str) -> Option<WalStatus> {
        WAL_STATUSES.into_iter().find(|w| format!("{w:?}") == s)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WalStatusLabels {
    pub slot: String,
    pub status: WalStatus,
}

/// The slot's state as the server reports it.
#[derive(Debug, Default)]
pub struct SlotMetrics {
    lag: Family<SlotLabels, Gauge>,
    retained: Family<SlotLabels, Gauge>,
    safe_wal_size: Family<SlotLabels, Gauge>,
    confirmed_lsn: Family<SlotLabels, Gauge>,
    current_lsn: Family<SlotLabels, Gauge>,
    active: Family<SlotLabels, Gauge>,
    wal_status: Family<WalStatusLabels, Gauge>,
}

/// One reading of `pg_replication_slots` for the slot.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotReading {
    pub lag_bytes: Option<i64>,
    pub retained_bytes: Option<i64>,
    pub safe_wal_size: Option<i64>,
    pub wal_status: Option<String>,
    pub active: bool,
    pub confirmed_lsn: Option<i64>,
    pub current_lsn: Option<i64>,
}

const SLOT_SQL: &str = "\
    SELECT pg_wal_lsn_diff(cur.lsn, s.confirmed_flush_lsn)::int8, \
           pg_wal_lsn_diff(cur.lsn, s.restart_lsn)::int8, \
           s.safe_wal_size, s.wal_status, s.active, \
           pg_wal_lsn_diff(s.confirmed_flush_lsn, '0/0')::int8, \
           pg_wal_lsn_diff(cur.lsn, '0/0')::int8 \
    FROM pg_replication_slots s, \
         (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                      ELSE pg_current_wal_lsn() END AS lsn) cur \
    WHERE s.slot_name = $1";

impl SlotMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "slot_lag_bytes",
            "WAL bytes between the server's current position and the slot's confirmed_flush_lsn",
            self.lag.clone(),
        );
        r.register(
            "slot_retained_wal_bytes",
            "WAL bytes the slot makes the server keep (current position - restart_lsn)",
            self.retained.clone(),
        );
        r.register(
            "slot_safe_wal_size_bytes",
            "WAL bytes that may still be written before the slot is in danger of being lost (absent when max_slot_wal_keep_size is unlimited)",
            self.safe_wal_size.clone(),
        );
        r.register(
            "slot_confirmed_lsn_bytes",
            "The slot's confirmed_flush_lsn as the server records it: a restart resumes there",
            self.confirmed_lsn.clone(),
        );
        r.register(
            "slot_server_lsn_bytes",
            "The server's current WAL position (replay position on a standby)",
            self.current_lsn.clone(),
        );
        r.register(
            "slot_active",
            "1 when a walsender holds the slot",
            self.active.clone(),
        );
        r.register(
            "slot_wal_status",
            "1 for the slot's wal_status (reserved, extended, unreserved, lost), 0 for the others",
            self.wal_status.clone(),
        );
    }

    /// Publishes a reading; `None` (the slot does not exist) removes the slot's series.
    pub fn set(&self, slot: &str, reading: Option<&SlotReading>) {
        let labels = SlotLabels {
            slot: slot.to_owned(),
        };
        let Some(r) = reading else {
            for f in self.families() {
                f.remove(&labels);
            }
            for status in WAL_STATUSES {
                self.wal_status.remove(&WalStatusLabels {
                    slot: slot.to_owned(),
                    status,
                });
            }
            return;
        };
        let values = [
            r.lag_bytes,
            r.retained_bytes,
            r.safe_wal_size,
            r.confirmed_lsn,
            r.current_lsn,
            Some(i64::from(r.active)),
        ];
        for (family, value) in self.families().into_iter().zip(values) {
            match value {
                Some(v) => {
                    family.get_or_create(&labels).set(v);
                }
                None => {
                    family.remove(&labels);
                }
            }
        }
        let current = r.wal_status.as_deref().and_then(WalStatus::parse);
        for status in WAL_STATUSES {
            let labels = WalStatusLabels {
                slot: slot.to_owned(),
                status,
            };
            self.wal_status
                .get_or_create(&labels)
                .set(i64::from(current == Some(status)));
        }
    }

    fn families(&self) -> [&Family<SlotLabels, Gauge>; 6] {
        [
            &self.lag,
            &self.retained,
            &self.safe_wal_size,
            &self.confirmed_lsn,
            &self.current_lsn,
            &self.active,
        ]
    }
}

/// Reads the slot once.
pub async fn read_slot(client: &Client, slot: &str) -> Result<Option<SlotReading>, PgError> {
    let row = client
        .query_opt(SLOT_SQL, &[&slot])
        .await
        .map_err(|e| PgError::query(format!("reading replication slot '{slot}'"), &e))?;
    Ok(row.map(|r| SlotReading {
        lag_bytes: r.get(0),
        retained_bytes: r.get(1),
        safe_wal_size: r.get(2),
        wal_status: r.get(3),
        active: r.get(4),
        confirmed_lsn: r.get(5),
        current_lsn: r.get(6),
    }))
}

/// Reads the slot every [`SLOT_EVERY`] until `stop`.
pub async fn poll_slot(target: PgTarget, slot: String, stop: CancellationToken) {
    let mut client: Option<Client> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(SLOT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = match client.as_ref().filter(|c| !c.is_closed()) {
            Some(c) => read_slot(c, &slot).await,
            None => match target.connect().await {
                Ok(c) => read_slot(client.insert(c), &slot).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(reading) => {
                if failing {
                    tracing::info!(%slot, "reading the slot's state again");
                    failing = false;
                }
                super::metrics().slot.set(&slot, reading.as_ref());
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(%slot, error = %e, "cannot read the slot's state for metrics; retrying");
                }
                failing = true;
                client = None;
            }
        }
    }
}

/// The probe's error text, without the empty stream name the client puts in front.
fn probe_error(e: &DsError) -> String {
    match e {
        DsError::Transient { url, reason, .. } => format!("{url}: {reason}"),
        other => other.to_string(),
    }
}

/// Probes the DS server every [`PROBE_EVERY`] until `stop`; the first probe goes at once.
pub async fn probe_ds(ds: DsClient, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = tokio::time::timeout(PROBE_TIMEOUT, ds.ping()).await;
        let m = super::metrics();
        match result {
            Ok(Ok(_)) => {
                if failing {
                    tracing::info!(server = %ds.base_url(), "the DS server answers again");
                    failing = false;
                }
                m.readiness.ds_answered(Instant::now());
                m.ds_server_up.set(1);
            }
            Ok(Err(e)) => {
                let error = probe_error(&e);
                if !failing {
                    tracing::warn!(server = %ds.base_url(), %error, "the DS server does not answer");
                }
                failing = true;
                m.readiness.ds_failed(error);
                m.ds_server_up.set(0);
            }
            Err(_) => {
                let error = format!(
                    "{}/healthz: no answer within {PROBE_TIMEOUT:?}",
                    ds.base_url()
                );
                if !failing {
                    tracing::warn!(server = %ds.base_url(), %error, "the DS server does not answer");
                }
                failing = true;
                m.readiness.ds_failed(error);
                m.ds_server_up.set(0);
            }
        }
    }
}

/// Reads the tail of every subscribed stream every [`TAIL_EVERY`] until `stop`.
pub async fn poll_tails(ds: DsClient, stop: CancellationToken) {
    let mut tick = tokio::time::interval(TAIL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let limit = Arc::new(Semaphore::new(TAIL_CONCURRENCY));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut heads = tokio::task::JoinSet::new();
        for stream in super::ingest().tail_targets() {
            let (ds, limit) = (ds.clone(), Arc::clone(&limit));
            heads.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let tail = tokio::time::timeout(PROBE_TIMEOUT, ds.head(&stream)).await;
                match tail {
                    Ok(Ok(tail)) => {
                        super::ingest().tail(&stream, tail.as_deref(), Instant::now());
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%stream, error = %e, "cannot read the stream's tail")
                    }
                    Err(_) => tracing::debug!(%stream, "reading the stream's tail timed out"),
                }
            });
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = async { while heads.join_next().await.is_some() {} } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_status_is_a_state_set_and_a_missing_slot_has_no_series() {
        let m = SlotMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        let reading = SlotReading {
            lag_bytes: Some(10),
            retained_bytes: Some(20),
            safe_wal_size: None,
            wal_status: Some("extended".into()),
            active: true,
            confirmed_lsn: Some(100),
            current_lsn: Some(110),
        };
        m.set("s", Some(&reading));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains("slot_wal_status{slot=\"s\",status=\"extended\"} 1"),
            "{out}"
        );
        assert!(out.contains("slot_wal_status{slot=\"s\",status=\"reserved\"} 0"));
        assert!(out.contains("slot_lag_bytes{slot=\"s\"} 10"));
        assert!(
            !out.contains("slot_safe_wal_size_bytes{"),
            "unlimited: no sample"
        );
        m.set("s", None);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &r).unwrap();
        assert!(!out.contains("slot=\"s\""), "{out}");
    }
}
