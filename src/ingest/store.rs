//! The subscription store: which streams ingest follows, kept in `ds_sync.subscriptions` so
//! that `ds-sync subscribe` / `unsubscribe` change a running ds-sync without a restart.
//!
//! Every change is followed by `NOTIFY ds_sync_subscriptions` in the same transaction; the
//! supervisor LISTENs and also re-reads the table every second, so a change is picked up
//! within a second even when a notification is lost with a connection. `generation` grows
//! on each `subscribe`, which restarts a subscription that stopped (closed stream, 410).

use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

use super::IngestError;
use crate::pg::PgError;

/// The channel `subscribe` / `unsubscribe` notify.
pub const CHANNEL: &str = "ds_sync_subscriptions";

/// One stream ingest should follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub stream: String,
    pub generation: i64,
    /// The last committed offset; `None` before the first commit.
    pub offset: Option<String>,
}

/// What `subscribe` did for one stream.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Subscribed {
    pub stream: String,
    /// False when it was subscribed already (it is restarted).
    pub created: bool,
    /// The stored offset was removed: ingest starts from the beginning of the stream.
    pub offset_reset: bool,
}

/// One row of `ds-sync subscriptions`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SubscriptionInfo {
    pub stream: String,
    pub status: String,
    pub error: Option<String>,
    /// The last committed offset.
    pub offset: Option<String>,
    pub up_to_date: bool,
    pub last_event_at: Option<String>,
    pub state_at: Option<String>,
    pub dead_letters: i64,
    /// Bytes its subscription holds in memory, and the most it held since it started.
    pub buffered_bytes: i64,
    pub peak_buffered_bytes: i64,
    /// The instance that follows it (`None`: none yet), where that runs, and until when its
    /// lease holds without another heartbeat.
    pub owner: Option<String>,
    pub owner_host: Option<String>,
    pub owner_pid: Option<i32>,
    pub lease_until: Option<String>,
    /// Whether the owner is live (its lease runs and its session is connected); a
    /// subscription whose owner is not is taken by another instance at its next tick.
    pub owner_live: bool,
}

/// Checks that a stream name can be subscribed: non-empty, no empty, `.` or `..` segment.
///
/// # Errors
///
/// [`IngestError::InvalidStream`] saying what is wrong.
pub fn validate_stream(stream: &str) -> Result<(), IngestError> {
    let invalid = |reason: &str| IngestError::InvalidStream {
        stream: stream.to_owned(),
        reason: reason.to_owned(),
    };
    if stream.is_empty() {
        return Err(invalid("it is empty"));
    }
    if stream
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(invalid("it has an empty, '.' or '..' path segment"));
    }
    if stream.chars().any(char::is_control) {
        return Err(invalid("it contains a control character"));
    }
    Ok(())
}

fn q(context: &str) -> impl Fn(tokio_postgres::Error) -> PgError + '_ {
    move |e| PgError::query(context, &e)
}

/// Subscribes each stream (or restarts its subscription), optionally forgetting its offset.
///
/// # Errors
///
/// An invalid stream name, or a failed statement.
pub async fn subscribe(
    client: &mut Client,
    streams: &[String],
    reset_offset: bool,
) -> Result<Vec<Subscribed>, IngestError> {
    for s in streams {
        validate_stream(s)?;
    }
    let tx = client
        .transaction()
        .await
        .map_err(q("starting a transaction"))?;
    let mut out = Vec::with_capacity(streams.len());
    for stream in streams {
        let row = tx
            .query_one(
                "INSERT INTO ds_sync.subscriptions AS s (stream_name) VALUES ($1) \
                 ON CONFLICT (stream_name) DO UPDATE SET generation = s.generation + 1, \
                 status = 'pending', error = NULL, up_to_date = false, state_at = now() \
                 RETURNING (xmax = 0)",
                &[stream],
            )
            .await
            .map_err(q("storing a subscription"))?;
        let offset_reset = reset_offset
            && tx
                .execute(
                    "DELETE FROM ds_sync.stream_offsets WHERE stream_name = $1",
                    &[stream],
                )
                .await
                .map_err(q("removing a stored offset"))?
                > 0;
        out.push(Subscribed {
            stream: stream.clone(),
            created: row.get(0),
            offset_reset,
        });
    }
    notify(&tx).await?;
    tx.commit().await.map_err(q("committing subscriptions"))?;
    Ok(out)
}

/// Adds the streams that are not subscribed yet, leaving existing subscriptions alone (the
/// streams named by `run --ingest` and the config file).
///
/// # Errors
///
/// An invalid stream name, or a failed statement.
pub async fn add_missing(client: &Client, streams: &[String]) -> Result<(), IngestError> {
    for s in streams {
        validate_stream(s)?;
    }
    if streams.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "INSERT INTO ds_sync.subscriptions (stream_name) SELECT unnest($1::text[]) \
             ON CONFLICT (stream_name) DO NOTHING",
            &[&streams],
        )
        .await
        .map_err(q("storing subscriptions"))?;
    Ok(())
}

/// Removes subscriptions; returns, per stream, whether it was subscribed. Stored offsets
/// are kept, so subscribing again resumes where ingest stopped.
///
/// # Errors
///
/// A failed statement.
pub async fn unsubscribe(
    client: &mut Client,
    streams: &[String],
) -> Result<Vec<(String, bool)>, IngestError> {
    let tx = client
        .transaction()
        .await
        .map_err(q("starting a transaction"))?;
    let mut out = Vec::with_capacity(streams.len());
    for stream in streams {
        let n = tx
            .execute(
                "DELETE FROM ds_sync.subscriptions WHERE stream_name = $1",
                &[stream],
            )
            .await
            .map_err(q("removing a subscription"))?;
        out.push((stream.clone(), n > 0));
    }
    notify(&tx).await?;
    tx.commit().await.map_err(q("committing subscriptions"))?;
    Ok(out)
}

async fn notify(client: &impl GenericClient) -> Result<(), PgError> {
    client
        .execute("SELECT pg_notify($1, '')", &[&CHANNEL])
        .await
        .map_err(q("notifying running ds-sync processes"))?;
    Ok(())
}

/// Every subscription with its stored offset.
///
/// # Errors
///
/// A failed statement.
pub async fn wanted(client: &Client) -> Result<Vec<Wanted>, PgError> {
    let rows = client
        .query(
            "SELECT s.stream_name, s.generation, o.ds_offset FROM ds_sync.subscriptions s \
             LEFT JOIN ds_sync.stream_offsets o USING (stream_name)",
            &[],
        )
        .await
        .map_err(q("reading subscriptions"))?;
    Ok(rows
        .iter()
        .map(|r| Wanted {
            stream: r.get(0),
            generation: r.get(1),
            offset: r.get(2),
        })
        .collect())
}

/// The committed offset of one stream.
///
/// # Errors
///
/// A failed statement.
pub async fn offset(client: &Client, stream: &str) -> Result<Option<String>, PgError> {
    let row = client
        .query_opt(
            "SELECT ds_offset FROM ds_sync.stream_offsets WHERE stream_name = $1",
            &[&stream],
        )
        .await
        .map_err(q("reading a stored offset"))?;
    Ok(row.map(|r| r.get(0)))
}

/// The committed offsets of `streams`, in their order, read in one statement (a failed
/// batch may hold thousands of streams).
///
/// # Errors
///
/// A failed statement.
pub async fn offsets(client: &Client, streams: &[&str]) -> Result<Vec<Option<String>>, PgError> {
    let rows = client
        .query(
            "SELECT o.ds_offset FROM unnest($1::text[]) WITH ORDINALITY AS i(stream_name, n) \
             LEFT JOIN ds_sync.stream_offsets o USING (stream_name) ORDER BY i.n",
            &[&streams],
        )
        .await
        .map_err(q("reading stored offsets"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether any subscription is stored (false when the schema is not there yet).
///
/// # Errors
///
/// A failed statement.
pub async fn has_subscriptions(client: &Client) -> Result<bool, PgError> {
    let row = client
        .query_one(
            "SELECT to_regclass('ds_sync.subscriptions') IS NOT NULL",
            &[],
        )
        .await
        .map_err(q("looking for ds_sync.subscriptions"))?;
    if !row.get::<_, bool>(0) {
        return Ok(false);
    }
    let row = client
        .query_one("SELECT EXISTS (SELECT 1 FROM ds_sync.subscriptions)", &[])
        .await
        .map_err(q("reading subscriptions"))?;
    Ok(row.get(0))
}

/// Every subscription with its state, committed offset, dead-letter count and owner.
///
/// # Errors
///
/// A failed statement.
pub async fn list(client: &Client) -> Result<Vec<SubscriptionInfo>, PgError> {
    let rows = client
        .query(
            "SELECT s.stream_name, s.status, s.error, o.ds_offset, s.up_to_date, \
                    s.last_event_at::text, s.state_at::text, \
                    (SELECT count(*) FROM ds_sync.dead_letters d WHERE d.stream_name = s.stream_name), \
                    s.buffered_bytes, s.peak_buffered_bytes, \
                    s.owner, i.host, i.pid, i.lease_until::text, \
                    s.owner IS NOT NULL AND s.owner IN \
                        (SELECT instance_id FROM ds_sync.live_ingest_instances) \
             FROM ds_sync.subscriptions s LEFT JOIN ds_sync.stream_offsets o USING (stream_name) \
             LEFT JOIN ds_sync.ingest_instances i ON i.instance_id = s.owner \
             ORDER BY s.stream_name",
            &[],
        )
        .await
        .map_err(q("reading subscriptions"))?;
    Ok(rows
        .iter()
        .map(|r| SubscriptionInfo {
            stream: r.get(0),
            status: r.get(1),
            error: r.get(2),
            offset: r.get(3),
            up_to_date: r.get(4),
            last_event_at: r.get(5),
            state_at: r.get(6),
            dead_letters: r.get(7),
            buffered_bytes: r.get(8),
            peak_buffered_bytes: r.get(9),
            owner: r.get(10),
            owner_host: r.get(11),
            owner_pid: r.get(12),
            lease_until: r.get(13),
            owner_live: r.get(14),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_checked() {
        assert!(validate_stream("sessions/42").is_ok());
        assert!(validate_stream("pg-items").is_ok());
        for bad in ["", "/a", "a/", "a//b", "a/./b", "..", "a\nb"] {
            let e = validate_stream(bad).expect_err(bad);
            assert!(e.to_string().starts_with("invalid stream name"), "{e}");
            assert!(e.hint().is_some());
        }
    }
}
