//! `naive`: the sync-layer document's example design, on the same backlog as ds-sync.
//!
//! A bridge as that document sketches it: read each change, POST it alone as a one-element
//! JSON array, no `Stream-Seq`, confirm the slot after each transaction. It runs in the
//! runner's process, on its own slot, against the same table and the same DS server as
//! ds-sync, so the figure that matters is ds-sync's throughput over the naive one.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent};
use serde_json::{Map, Value};

use super::BenchError;
use super::capture::{Ctx, ds_sync_drain};
use super::report::Report;
use super::workload::{self, Bar, Phase};
use crate::pgoutput::{PgOutputMessage, RelationCache, TupleValue, decode};

/// `naive`: both directions, each design on the same load.
pub(super) async fn run(ctx: &Ctx<'_>, report: &mut Report) -> Result<(), BenchError> {
    capture(ctx, report).await?;
    ingest(ctx, report).await
}

/// Capture: both designs drain `txns` rows written in one transaction.
async fn capture(ctx: &Ctx<'_>, report: &mut Report) -> Result<(), BenchError> {
    let rows = ctx.opts.txns;
    let sql = ctx.stack.sql().await?;
    let phase = Phase::create(&sql, "bench_naive").await?;
    let naive_slot = phase.slot(&sql, "naive").await?;
    let ds_slot = phase.slot(&sql, "dssync").await?;
    phase.write_one_transaction(&sql, rows).await?;
    let end = workload::current_lsn(&sql).await?;
    let naive = naive_drain(ctx, &phase, &naive_slot, rows).await?;
    let drain = ds_sync_drain(ctx, &phase, &ds_slot, rows, &end, "ds-sync").await?;
    let (n, d) = (naive.as_secs_f64(), drain.elapsed.as_secs_f64());
    report.figure("capture rows", rows as f64, "rows");
    report.figure(
        "capture, naive: one POST per change",
        rows as f64 / n,
        "rows/s",
    );
    report.figure("capture, ds-sync", rows as f64 / d, "rows/s");
    report.check(
        "capture: ds-sync / naive throughput",
        n / d,
        "x",
        None,
        false,
    );
    report.series.push(drain.series);
    report.notes.push(
        "The naive capture also has no Stream-Seq: a retried POST after a timeout would \
         duplicate, and a failed one would be lost. It is measured here for speed only."
            .into(),
    );
    Ok(())
}

/// Ingest: the same `txns` events, one INSERT per event (naive) or binary COPY (ds-sync).
async fn ingest(ctx: &Ctx<'_>, report: &mut Report) -> Result<(), BenchError> {
    let events = ctx.opts.txns;
    let stream = "naive-ingest";
    super::ingest::preload(ctx.stack, stream, events, ctx.opts.progress).await?;
    let sql = ctx.stack.sql().await?;
    let naive = naive_ingest(ctx, &sql, stream, events).await?;
    let ds_sync = super::ingest::timed_ingest(ctx, stream, events).await?;
    let (n, d) = (naive.as_secs_f64(), ds_sync.as_secs_f64());
    report.figure("ingest events", events as f64, "events");
    report.figure(
        "ingest, naive: one INSERT per event",
        events as f64 / n,
        "rows/s",
    );
    report.figure("ingest, ds-sync", events as f64 / d, "rows/s");
    report.check(
        "ingest: ds-sync / naive throughput",
        n / d,
        "x",
        None,
        false,
    );
    Ok(())
}

/// The naive sink: SSE from the start, one autocommit INSERT per event, into a table like
/// `session_events`.
async fn naive_ingest(
    ctx: &Ctx<'_>,
    sql: &tokio_postgres::Client,
    stream: &str,
    events: u64,
) -> Result<Duration, BenchError> {
    sql.batch_execute(
        "DROP TABLE IF EXISTS public.bench_naive_events; \
         CREATE TABLE public.bench_naive_events (id SERIAL PRIMARY KEY, stream_name TEXT NOT NULL, \
         event_key TEXT, event_type TEXT, operation TEXT, payload JSONB NOT NULL, ds_offset TEXT, \
         received_at TIMESTAMPTZ DEFAULT NOW())",
    )
    .await
    .map_err(|e| BenchError::sql("creating the naive sink", &e))?;
    let insert = sql
        .prepare(
            "INSERT INTO public.bench_naive_events \
             (stream_name, event_key, event_type, operation, payload) VALUES ($1, $2, $3, $4, ($5::text)::jsonb)",
        )
        .await
        .map_err(|e| BenchError::sql("preparing the naive insert", &e))?;
    let bar = Bar::new("naive ingest", events, ctx.opts.progress);
    let started = Instant::now();
    let mut sub = ctx
        .stack
        .ds
        .subscribe(stream, crate::ds::OFFSET_START)
        .await?;
    let mut stored = 0u64;
    while stored < events {
        let Some(event) = sub.next().await else {
            return Err(BenchError::Setup(
                "naive ingest: the server ended the SSE response".into(),
            ));
        };
        let crate::sse::DsItem::Array(crate::sse::ArrayItem::Element { text, .. }) = event? else {
            continue;
        };
        let v: Value = serde_json::from_slice(&text)
            .map_err(|e| BenchError::Setup(format!("naive ingest: {e}")))?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        sql.execute(
            &insert,
            &[
                &stream,
                &text("key"),
                &text("type"),
                &text("operation"),
                &v.to_string(),
            ],
        )
        .await
        .map_err(|e| BenchError::sql("naive insert", &e))?;
        stored += 1;
        bar.set(stored);
    }
    bar.finish();
    Ok(started.elapsed())
}

/// The naive bridge: decode, one POST per row, awaited in turn.
async fn naive_drain(
    ctx: &Ctx<'_>,
    phase: &Phase,
    slot: &str,
    rows: u64,
) -> Result<Duration, BenchError> {
    let t = ctx.stack.target();
    let cfg = ReplicationConfig::new(
        t.host(),
        t.user(),
        t.password().unwrap_or_default(),
        t.dbname(),
        slot,
        phase.publication.clone(),
    )
    .with_port(t.port());
    let stream = format!("naive-{}", phase.table);
    ctx.stack.ds.ensure_stream(&stream).await?;
    let started = Instant::now();
    let mut repl = ReplicationClient::connect(cfg)
        .await
        .map_err(|e| BenchError::Setup(format!("naive consumer: {e}")))?;
    let mut relations = RelationCache::new();
    let bar = Bar::new("naive", rows, ctx.opts.progress);
    let mut posted = 0u64;
    while posted < rows {
        let event = repl
            .recv()
            .await
            .map_err(|e| BenchError::Setup(format!("naive consumer: {e}")))?;
        match event {
            Some(ReplicationEvent::XLogData { data, .. }) => {
                let Some(row) = row_json(&data, &mut relations)? else {
                    continue;
                };
                let body =
                    Bytes::from(serde_json::to_vec(&Value::Array(vec![row])).unwrap_or_default());
                ctx.stack.ds.append(&stream, body, None).await?;
                posted += 1;
                bar.set(posted);
            }
            Some(ReplicationEvent::Commit { end_lsn, .. }) => {
                repl.update_applied_lsn(end_lsn);
            }
            Some(_) => {}
            None => {
                return Err(BenchError::Setup(
                    "naive consumer: replication ended".into(),
                ));
            }
        }
    }
    bar.finish();
    Ok(started.elapsed())
}

/// An inserted row as `{"column": "text value"}`; other messages give `None`.
fn row_json(data: &Bytes, relations: &mut RelationCache) -> Result<Option<Value>, BenchError> {
    let msg = decode(data).map_err(|e| BenchError::Setup(format!("naive consumer: {e}")))?;
    match msg {
        PgOutputMessage::Relation(rel) => {
            relations.insert(rel);
            Ok(None)
        }
        PgOutputMessage::Insert(ins) => {
            let rel = relations
                .resolve(ins.relation_oid, &ins.new_tuple)
                .map_err(|e| BenchError::Setup(format!("naive consumer: {e}")))?;
            let mut obj = Map::new();
            for (col, v) in rel.columns.iter().zip(&ins.new_tuple.columns) {
                let value = match v {
                    TupleValue::Text(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
                    _ => Value::Null,
                };
                obj.insert(col.name.clone(), value);
            }
            Ok(Some(Value::Object(obj)))
        }
        _ => Ok(None),
    }
}
