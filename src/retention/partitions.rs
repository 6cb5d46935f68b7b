//! `session_events` partitioned by `received_at`: the table `init --partition-by` makes, the
//! partitions `run` creates ahead of time, and whole partitions `prune` drops.
//!
//! Every DDL statement that touches the parent runs with a short `lock_timeout` and is
//! retried, so a long ingest transaction makes it wait and try again instead of queueing
//! every later COPY behind an exclusive lock. New partitions are made as plain tables and
//! attached (`ATTACH PARTITION` needs only `SHARE UPDATE EXCLUSIVE` on the parent, so COPY
//! goes on); dropping detaches first. A default partition takes any row no ranged partition
//! covers, so a missing partition never makes ingest fail.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient};

use super::RetentionError;
use super::interval::{self, DEFAULT_PARTITION, PartitionInterval};
use crate::pg::PgError;
use crate::pg::ident::quote;

/// Partitions created beyond the current one.
pub const AHEAD: u32 = 3;
/// How long one DDL statement waits for its lock before it gives up and tries again.
const LOCK_TIMEOUT: &str = "2s";
/// Tries of one DDL statement before it is reported as busy.
const LOCK_ATTEMPTS: u32 = 5;
/// The key of `ds_sync.partitioning` for this table.
const TABLE_KEY: &str = "public.session_events";

/// What `public.session_events` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Missing,
    Plain,
    /// Partitioned; `None` when not by ds-sync (no record in `ds_sync.partitioning`).
    Partitioned(Option<PartitionInterval>),
}

/// What `init --partition-by` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    /// The (empty or missing) plain table was replaced by a partitioned one.
    Created,
    /// It was already partitioned by that interval.
    Kept,
}

/// Reads the table's form (the schema must be applied).
///
/// # Errors
///
/// A failed catalog query.
pub async fn form(client: &impl GenericClient) -> Result<Form, PgError> {
    let row = client
        .query_one(
            "SELECT (SELECT relkind::text FROM pg_class WHERE oid = to_regclass('public.session_events')), \
                    (SELECT part_interval FROM ds_sync.partitioning WHERE table_name = $1)",
            &[&TABLE_KEY],
        )
        .await
        .map_err(|e| PgError::query("reading the form of public.session_events", &e))?;
    let kind: Option<String> = row.get(0);
    let recorded: Option<String> = row.get(1);
    Ok(match kind.as_deref() {
        None => Form::Missing,
        Some("p") => Form::Partitioned(recorded.as_deref().and_then(PartitionInterval::parse)),
        Some(_) => Form::Plain,
    })
}

/// Makes `session_events` partitioned by `interval`: an empty (or missing) plain table is
/// replaced; one with rows is refused with the way to migrate.
///
/// # Errors
///
/// [`RetentionError::NotEmpty`], [`RetentionError::OtherInterval`], [`RetentionError::NotOurs`],
/// or a failed statement.
pub async fn partition(
    client: &mut Client,
    interval: PartitionInterval,
) -> Result<Partitioning, RetentionError> {
    let asked = interval.as_str();
    let tx = client
        .transaction()
        .await
        .map_err(|e| PgError::query("starting the partitioning transaction", &e))?;
    let q = |what: &'static str| move |e: tokio_postgres::Error| PgError::query(what, &e);
    tx.batch_execute("SET LOCAL lock_timeout = '5s'")
        .await
        .map_err(q("setting lock_timeout"))?;
    match form(&tx).await? {
        Form::Partitioned(Some(i)) if i == interval => return Ok(Partitioning::Kept),
        Form::Partitioned(Some(existing)) => {
            return Err(RetentionError::OtherInterval {
                existing: existing.as_str(),
                asked,
            });
        }
        Form::Partitioned(None) => return Err(RetentionError::NotOurs),
        Form::Plain => {
            tx.batch_execute("LOCK TABLE public.session_events IN ACCESS EXCLUSIVE MODE")
                .await
                .map_err(q("locking public.session_events"))?;
            let has_rows: bool = tx
                .query_one("SELECT EXISTS (SELECT 1 FROM public.session_events)", &[])
                .await
                .map_err(q("looking for rows in public.session_events"))?
                .get(0);
            if has_rows {
                return Err(RetentionError::NotEmpty { asked });
            }
            tx.batch_execute("DROP TABLE public.session_events")
                .await
                .map_err(q("dropping the empty plain public.session_events"))?;
        }
        Form::Missing => {}
    }
    tx.batch_execute(CREATE_PARTITIONED)
        .await
        .map_err(q("creating the partitioned public.session_events"))?;
    tx.execute(
        "INSERT INTO ds_sync.partitioning (table_name, part_interval) VALUES ($1, $2) \
         ON CONFLICT (table_name) DO UPDATE SET part_interval = EXCLUDED.part_interval, created_at = now()",
        &[&TABLE_KEY, &asked],
    )
    .await
    .map_err(q("recording the partition interval"))?;
    let now = db_now(&tx).await?;
    for range in interval::wanted(interval, now, AHEAD) {
        let sql = format!(
            "CREATE TABLE public.{} PARTITION OF public.session_events {}",
            quote(&range.name()),
            range.bounds_sql()
        );
        tx.batch_execute(&sql)
            .await
            .map_err(q("creating a partition of public.session_events"))?;
    }
    tx.commit()
        .await
        .map_err(q("committing the partitioned public.session_events"))?;
    Ok(Partitioning::Created)
}

/// The sync-layer document's columns; `received_at` is the partition key, so it is NOT NULL
/// and part of the primary key. The indexes are those of sql/011 on the plain table.
const CREATE_PARTITIONED: &str = "\
    CREATE TABLE public.session_events ( \
        id SERIAL, \
        stream_name TEXT NOT NULL, \
        event_key TEXT, \
        event_type TEXT, \
        operation TEXT, \
        payload JSONB NOT NULL, \
        ds_offset TEXT, \
        received_at TIMESTAMPTZ NOT NULL DEFAULT NOW(), \
        PRIMARY KEY (id, received_at) \
    ) PARTITION BY RANGE (received_at); \
    CREATE TABLE public.session_events_default PARTITION OF public.session_events DEFAULT; \
    CREATE INDEX session_events_stream_id_idx ON public.session_events (stream_name, id); \
    CREATE INDEX session_events_received_at_idx ON public.session_events (received_at);";

/// The database's clock.
async fn db_now(client: &impl GenericClient) -> Result<DateTime<Utc>, PgError> {
    let micros: i64 = client
        .query_one("SELECT (extract(epoch FROM now()) * 1000000)::bigint", &[])
        .await
        .map_err(|e| PgError::query("reading the database's clock", &e))?
        .get(0);
    Ok(DateTime::from_timestamp_micros(micros).unwrap_or_default())
}

/// The partitions of the table, by name.
async fn children(client: &impl GenericClient) -> Result<Vec<String>, PgError> {
    Ok(children_sized(client)
        .await?
        .into_iter()
        .map(|c| c.0)
        .collect())
}

/// The partitions of `public.session_events` with their estimated row counts
/// (`pg_class.reltuples`), in one catalog query.
async fn children_sized(client: &impl GenericClient) -> Result<Vec<(String, f32)>, PgError> {
    let rows = client
        .query(
            "SELECT c.relname::text, greatest(c.reltuples, 0) FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'public.session_events'::regclass ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| PgError::query("listing the partitions of public.session_events", &e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Creates the current partition and [`AHEAD`] after it where missing; returns their names.
///
/// # Errors
///
/// A failed statement, or [`RetentionError::Busy`].
pub async fn ensure(
    client: &mut Client,
    interval: PartitionInterval,
) -> Result<Vec<String>, RetentionError> {
    let existing = children(client).await?;
    let now = db_now(client).await?;
    let mut created = Vec::new();
    for range in interval::wanted(interval, now, AHEAD) {
        let name = range.name();
        if existing.contains(&name) {
            continue;
        }
        let table = format!("public.{}", quote(&name));
        let sql = format!(
            "CREATE TABLE {table} (LIKE public.session_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS); \
             ALTER TABLE public.session_events ATTACH PARTITION {table} {}",
            range.bounds_sql()
        );
        with_lock_retries(client, &sql, &format!("creating partition {name}")).await?;
        tracing::info!(partition = %name, "created a partition of session_events ahead of time");
        created.push(name);
    }
    Ok(created)
}

/// A partition that holds only rows older than a cutoff.
#[derive(Debug, Clone)]
pub struct Expired {
    pub name: String,
    /// The planner's row estimate (`reltuples`), 0 when never analyzed.
    pub estimated_rows: i64,
}

/// The partitions whose whole range ends at or before `cutoff_epoch` (seconds since 1970).
///
/// # Errors
///
/// A failed catalog query.
pub async fn expired(
    client: &impl GenericClient,
    interval: PartitionInterval,
    cutoff_epoch: f64,
) -> Result<Vec<Expired>, PgError> {
    let mut out = Vec::new();
    for (name, estimated_rows) in children_sized(client).await? {
        let Some(range) = interval::parse_name(interval, &name) else {
            continue;
        };
        #[allow(clippy::cast_precision_loss)]
        if (range.end_epoch() as f64) <= cutoff_epoch {
            #[allow(clippy::cast_possible_truncation)]
            out.push(Expired {
                name,
                estimated_rows: estimated_rows as i64,
            });
        }
    }
    Ok(out)
}

/// Detaches and drops one partition (never the default one).
///
/// # Errors
///
/// A failed statement, or [`RetentionError::Busy`].
pub async fn drop_partition(client: &mut Client, name: &str) -> Result<(), RetentionError> {
    if name == DEFAULT_PARTITION {
        return Ok(());
    }
    let table = format!("public.{}", quote(name));
    let sql =
        format!("ALTER TABLE public.session_events DETACH PARTITION {table}; DROP TABLE {table}");
    with_lock_retries(client, &sql, &format!("dropping partition {name}")).await
}

/// Runs `sql` in a transaction with a short lock timeout, trying again while the lock is
/// taken, so it never waits long in the lock queue ahead of ingest's COPY.
async fn with_lock_retries(
    client: &mut Client,
    sql: &str,
    what: &str,
) -> Result<(), RetentionError> {
    for attempt in 1..=LOCK_ATTEMPTS {
        let tx = client
            .transaction()
            .await
            .map_err(|e| PgError::query(what, &e))?;
        let result = async move {
            tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                .await?;
            tx.batch_execute(sql).await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                tracing::info!(
                    what,
                    attempt,
                    "lock on session_events not free; trying again"
                );
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            }
            Err(e) => return Err(PgError::query(what.to_owned(), &e).into()),
        }
    }
    Err(RetentionError::Busy {
        what: what.to_owned(),
        attempts: LOCK_ATTEMPTS,
    })
}
