//! Adopting a stream another source wrote: the way out of a `ForeignWrite` stop.
//!
//! A stream whose last `Stream-Seq` was written by another database refuses this database's
//! lower values for good. `ds-sync stream adopt S` hands it to this database:
//!
//! ```text
//!  1. ds_sync.stream_epochs: S gets epoch E (microseconds since 1970, above any earlier E)
//!  2. ds_sync.source_streams: S's tail records are dropped (the next run records anew)
//!  3. POST [{"headers":{"control":"reset"}}] to S with Stream-Seq  e<E>0000000000000000..0
//!     (clients drop what the other source wrote)
//!  4. next `ds-sync run`: every POST to S carries e<E><lsn><index>, above every value
//!     without an epoch; the tables routed to S are snapshotted again (while streaming),
//!     so S ends up holding this database's rows
//! ```
//!
//! The other source must stop writing S: its values sort below the epoch's, so it would
//! meet the same refusal (and, being already known to S, could not tell it apart from its
//! own replay).

use serde_json::json;
use tokio_postgres::Client;

use crate::ds::{AppendOutcome, DsClient};
use crate::lsn::Lsn;
use crate::pg::PgError;

use super::batch::Seq;
use super::error::CaptureError;
use super::pipeline::CaptureConfig;
use super::route::Template;
use super::snapshot::{published_tables, signals};

/// What `adopt` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub stream: String,
    pub epoch: i64,
}

/// Adopts `stream` for this database (steps 1 to 3 of the module documentation).
pub async fn adopt(sql: &Client, ds: &DsClient, stream: &str) -> Result<Adopted, CaptureError> {
    let epoch: i64 = sql
        .query_one(
            "INSERT INTO ds_sync.stream_epochs AS e (stream_name, epoch) \
             VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000000)::int8) \
             ON CONFLICT (stream_name) DO UPDATE SET \
               epoch = GREATEST(e.epoch + 1, EXCLUDED.epoch), resnapshot_pending = true, \
               adopted_at = now() \
             RETURNING epoch",
            &[&stream],
        )
        .await
        .map_err(|e| PgError::query("recording the stream's epoch", &e))?
        .get(0);
    sql.execute(
        "DELETE FROM ds_sync.source_streams WHERE stream_name = $1",
        &[&stream],
    )
    .await
    .map_err(|e| PgError::query("clearing the stream's tail records", &e))?;
    let ds_err = |source| CaptureError::Ds {
        stream: stream.to_string(),
        source,
    };
    ds.ensure_stream(stream).await.map_err(ds_err)?;
    let reset = serde_json::to_vec(&json!([super::message::reset_message()]))
        .unwrap_or_default()
        .into();
    let first = Seq {
        commit_lsn: Lsn::ZERO,
        index: 0,
    }
    .header_in(Some(epoch));
    match ds
        .append(stream, reset, Some(&first))
        .await
        .map_err(ds_err)?
    {
        AppendOutcome::Written { .. } => {}
        AppendOutcome::AlreadyWritten => {
            return Err(CaptureError::ForeignWrite {
                stream: stream.to_string(),
                seq: first,
                lsn: "0/0".into(),
                source_id: "ds-sync stream adopt (a newer epoch is already in the stream)".into(),
            });
        }
    }
    Ok(Adopted {
        stream: stream.to_string(),
        epoch,
    })
}

/// At capture start: requests a snapshot (while streaming) of every published table whose
/// route can produce a stream adopted since the last start, then clears the marks.
pub async fn resnapshot_adopted(sql: &Client, cfg: &CaptureConfig) -> Result<(), CaptureError> {
    let pending: Vec<String> = sql
        .query(
            "SELECT stream_name FROM ds_sync.stream_epochs WHERE resnapshot_pending",
            &[],
        )
        .await
        .map_err(|e| PgError::query("reading ds_sync.stream_epochs", &e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let tables = published_tables(sql, &cfg.source.publication).await?;
    for table in &tables {
        let template = cfg.router.template_for(&table.info);
        if pending.iter().any(|s| may_route_to(template, s)) {
            let name = table.info.qualified_name();
            let id = signals::request(sql, &cfg.source.slot, &name).await?;
            tracing::info!(table = %name, request = id, "snapshotting a table routed to an adopted stream");
        }
    }
    sql.execute(
        "UPDATE ds_sync.stream_epochs SET resnapshot_pending = false WHERE stream_name = ANY($1)",
        &[&pending],
    )
    .await
    .map_err(|e| PgError::query("updating ds_sync.stream_epochs", &e))?;
    Ok(())
}

/// Whether `template` can produce `stream`: its literal text in order, each placeholder
/// standing for one or more characters of one path segment. Pure. It may say yes for a
/// table that never writes there (`{table}` is not checked against the name): the price is
/// one extra snapshot of upserts.
pub fn may_route_to(template: &Template, stream: &str) -> bool {
    let parts = split(template.as_str());
    matches(&parts, stream)
}

enum Part<'a> {
    Literal(&'a str),
    Placeholder,
}

fn split(template: &str) -> Vec<Part<'_>> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(&rest[..open]));
        }
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
        parts.push(Part::Placeholder);
        rest = &rest[close..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest));
    }
    parts
}

fn matches(parts: &[Part<'_>], text: &str) -> bool {
    match parts.split_first() {
        None => text.is_empty(),
        Some((Part::Literal(l), rest)) => text
            .strip_prefix(l)
            .is_some_and(|after| matches(rest, after)),
        Some((Part::Placeholder, rest)) => {
            let segment_end = text.find('/').unwrap_or(text.len());
            (1..=segment_end).any(|n| matches(rest, &text[n..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Template {
        Template::parse(s).unwrap()
    }

    #[test]
    fn templates_match_the_streams_they_can_produce() {
        assert!(may_route_to(&t("pg-{table}"), "pg-items"));
        assert!(!may_route_to(&t("pg-{table}"), "items"));
        assert!(may_route_to(&t("orders/{customer_id}"), "orders/7"));
        assert!(!may_route_to(&t("orders/{customer_id}"), "orders/7/x"));
        assert!(!may_route_to(&t("orders/{customer_id}"), "orders/"));
        assert!(may_route_to(&t("all"), "all"));
        assert!(!may_route_to(&t("all"), "all2"));
        assert!(may_route_to(&t("t/{a}-{b}/x"), "t/1-2-3/x"));
        assert!(!may_route_to(&t("t/{a}-{b}/x"), "t/12/x"));
    }
}
