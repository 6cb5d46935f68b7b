//! The Postgres side of capture: the publication and slot made to exist, the replication
//! connection opened, and the catalog lookups decoding needs. The order they are used in is
//! `startup`'s.

use std::time::Duration;

use pgwire_replication::{ReplicationClient, ReplicationConfig, TlsConfig};
use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::pg::ssl::{SslOptions, Step};
use crate::pg::{PgError, PgTarget};
use crate::publication::{self, IdentityPolicy, PublicationError, Request, TableSpec};
use crate::slot;

use super::error::{CaptureError, ReplicationFailure};

/// Where capture reads from.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub target: PgTarget,
    pub slot: String,
    pub publication: String,
    /// Tables to create the publication with (or add to it) when given.
    pub tables: Vec<String>,
    /// Tables to publish insert-only (in the publication's `_insert_only` companion).
    pub insert_only: Vec<String>,
    /// Whole rows in updates, and whether ds-sync may set a table's replica identity.
    pub policy: IdentityPolicy,
    /// Terminate a stale walsender that holds the slot.
    pub takeover: bool,
    /// Create the slot as a failover slot, or turn failover on for the existing one
    /// (PostgreSQL 17+).
    pub failover: bool,
    /// The pgoutput protocol version to ask for (`--pgoutput-protocol`).
    pub protocol: PgoutputProtocol,
}

impl SourceConfig {
    /// Default of `--takeover`: a held slot is waited for, never taken.
    pub const DEFAULT_TAKEOVER: bool = false;
    /// Default of `--failover-slot`: an ordinary slot, which works on every version.
    pub const DEFAULT_FAILOVER: bool = false;
    /// Default of `--pgoutput-protocol`: version 1, which decodes a transaction whole at its
    /// commit. Version 2's streaming is opt-in: `bench capture-drain` showed it no faster
    /// (delivery, not decoding, bounds a large transaction), see the README.
    pub const DEFAULT_PROTOCOL: PgoutputProtocol = PgoutputProtocol::V1;

    /// How the slot is created.
    pub fn create_slot(&self) -> slot::CreateSlot {
        slot::CreateSlot {
            temporary: false,
            if_not_exists: true,
            failover: self.failover,
        }
    }
}

/// The pgoutput protocol version capture asks the walsender for.
///
/// With version 1 the walsender decodes a transaction whole before sending any of it, so
/// one large transaction arrives at the speed of a single decoding pass after its commit.
/// Version 2 with `streaming 'on'` (PostgreSQL 14+) sends a transaction larger than
/// `logical_decoding_work_mem` while it runs; ds-sync holds it (see `streamed`) and sends
/// it at its commit, with the same `Stream-Seq` values version 1 gives it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub enum PgoutputProtocol {
    /// Version 1: transactions sent whole after their commit.
    #[default]
    #[value(name = "1")]
    V1,
    /// Version 2 with streaming of in-progress transactions (PostgreSQL 14+; version 1 on
    /// older servers).
    #[value(name = "2")]
    V2,
}

impl PgoutputProtocol {
    /// The first `server_version_num` with protocol version 2 (streaming).
    pub const STREAMING_FROM: i32 = 140_000;

    pub fn as_str(self) -> &'static str {
        match self {
            PgoutputProtocol::V1 => "1",
            PgoutputProtocol::V2 => "2",
        }
    }
}

impl TryFrom<u8> for PgoutputProtocol {
    type Error = String;

    fn try_from(v: u8) -> Result<Self, Self::Error> {
        match v {
            1 => Ok(PgoutputProtocol::V1),
            2 => Ok(PgoutputProtocol::V2),
            other => Err(format!(
                "pgoutput protocol {other} is not supported: use 1 or 2"
            )),
        }
    }
}

impl From<PgoutputProtocol> for u8 {
    fn from(p: PgoutputProtocol) -> u8 {
        match p {
            PgoutputProtocol::V1 => 1,
            PgoutputProtocol::V2 => 2,
        }
    }
}

/// Creates the slot when it is missing, or checks that the existing one is a pgoutput slot
/// of this database; returns its confirmed position. Called after [`ensure_publication`]:
/// pgoutput on PostgreSQL 15 stops with "publication does not exist" when it decodes a
/// change from before the publication.
pub async fn ensure_slot(sql: &Client, cfg: &SourceConfig) -> Result<Lsn, CaptureError> {
    let created = slot::create_reporting(sql, &cfg.target, &cfg.slot, cfg.create_slot()).await?;
    if created.created {
        tracing::info!(slot = %cfg.slot, "created replication slot");
    }
    confirmed_position(sql, &cfg.slot).await
}

/// Creates the publication (and its insert-only companion) from `tables` and `insert_only`,
/// or adds the tables it lacks, after checking that publishing them breaks none of the
/// application's writes; sets REPLICA IDENTITY FULL where whole rows need it (see
/// [`publication::ensure`]). Every change is logged.
pub async fn ensure_publication(sql: &Client, cfg: &SourceConfig) -> Result<(), CaptureError> {
    let specs = |tables: &[String]| tables.iter().map(|t| TableSpec::named(t)).collect();
    let req = Request {
        tables: specs(&cfg.tables),
        insert_only: specs(&cfg.insert_only),
        policy: cfg.policy,
    };
    let changes = match publication::ensure(sql, &cfg.publication, &req, Some(&cfg.slot)).await {
        Err(PublicationError::NotFound(p)) => return Err(CaptureError::NoPublication(p)),
        other => other?,
    };
    if changes.created {
        tracing::info!(publication = %cfg.publication, tables = changes.added.len(), "created publication");
    } else if !changes.added.is_empty() {
        tracing::info!(publication = %cfg.publication, tables = %changes.added.join(", "), "added tables to publication");
    }
    if changes.via_root {
        tracing::info!(publication = %cfg.publication, "publishing partitions through their partitioned tables (publish_via_partition_root)");
    }
    Ok(())
}

/// The slot's confirmed position; a lost slot is an error, and so is text that is not an LSN
/// (`slot::status` names the slot and column). A logical slot has one once its creation
/// finished; a NULL (a slot still being created, or replaced by a physical one) is a
/// transient error, read again after a backoff, never a start from 0/0.
pub async fn confirmed_position(sql: &Client, slot_name: &str) -> Result<Lsn, CaptureError> {
    let info = slot::status(sql, slot_name).await?;
    if info.is_lost() {
        return Err(CaptureError::SlotLost(slot_name.to_string()));
    }
    info.confirmed_flush_lsn
        .ok_or_else(|| CaptureError::NoConfirmedPosition {
            slot: slot_name.to_owned(),
        })
}

/// Drops the slot before a snapshot recreates it. A walsender of a killed instance may
/// hold it for a moment, so an active slot is waited for briefly; one that stays held is
/// an error unless `takeover`.
pub(crate) async fn drop_slot(sql: &Client, cfg: &SourceConfig) -> Result<(), CaptureError> {
    for attempt in 0..100 {
        let info = slot::status(sql, &cfg.slot).await?;
        if !info.active {
            break;
        }
        if attempt == 0 {
            let pid = info.active_pid.unwrap_or(0);
            let holder = describe_backend(sql, pid).await;
            tracing::info!(slot = %cfg.slot, pid, %holder, "waiting up to 10 s for the walsender holding the slot to release it before the slot is dropped");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slot::drop(sql, &cfg.slot, cfg.takeover).await?;
    tracing::info!(slot = %cfg.slot, "dropped replication slot to snapshot again");
    Ok(())
}

/// How long a slot held by a walsender is waited for before it counts as busy: the
/// walsender of a process that just died (its lock released, a standby taking over) ends a
/// moment after its client's socket closed.
const SLOT_RELEASE_GRACE: Duration = Duration::from_secs(2);

/// Waits for the slot to be free (briefly: see [`SLOT_RELEASE_GRACE`]), terminating its
/// holder with `takeover`.
async fn claim_slot(sql: &Client, cfg: &SourceConfig) -> Result<(), CaptureError> {
    let mut info = slot::status(sql, &cfg.slot).await?;
    let released_by = std::time::Instant::now() + SLOT_RELEASE_GRACE;
    while info.active && std::time::Instant::now() < released_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
        info = slot::status(sql, &cfg.slot).await?;
    }
    let (true, Some(pid)) = (info.active, info.active_pid) else {
        return Ok(());
    };
    if !cfg.takeover {
        return Err(CaptureError::SlotBusy {
            slot: cfg.slot.clone(),
            pid,
            holder: describe_backend(sql, pid).await,
        });
    }
    tracing::warn!(slot = %cfg.slot, pid, "taking the slot over: terminating its walsender");
    sql.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .map_err(|e| PgError::query(format!("terminating walsender pid {pid}"), &e))?;
    for _ in 0..100 {
        if !slot::status(sql, &cfg.slot).await?.active {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(CaptureError::SlotBusy {
        slot: cfg.slot.clone(),
        pid,
        holder: describe_backend(sql, pid).await,
    })
}

/// Who a backend is, for messages about waiting for it: its application, client and how
/// long it has been connected (from `pg_stat_activity`); empty when it cannot be read.
pub(crate) async fn describe_backend(sql: &Client, pid: i32) -> String {
    let row = sql
        .query_opt(
            "SELECT coalesce(nullif(application_name, ''), '(none)'), coalesce(client_addr::text, 'local'), extract(epoch FROM now() - backend_start)::int8 FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await;
    match row {
        Ok(Some(r)) => format!(
            "application {}, client {}, connected {} s ago",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2)
        ),
        _ => String::from("not in pg_stat_activity"),
    }
}

/// Opens the replication stream at `start` (the slot's confirmed position), TLS as the
/// target's `sslmode` says: the attempts of [`SslOptions::steps`], a later one only when the
/// server refused the earlier one. pgwire-replication opens the socket itself and has no
/// keepalive setting; its standby status update every second keeps data flowing, so a dead
/// server shows as unacknowledged data (TCP retransmission timeout) rather than silence.
pub async fn connect(
    sql: &Client,
    cfg: &SourceConfig,
    start: Lsn,
) -> Result<ReplicationClient, CaptureError> {
    claim_slot(sql, cfg).await?;
    // The publication and, when it exists, its insert-only companion.
    let publications = publication::decoded_names(sql, &cfg.publication).await?;
    let streaming = streaming(sql, cfg.protocol).await?;
    let t = &cfg.target;
    let mut failed: Vec<(Step, CaptureError, bool)> = Vec::new();
    for &step in t.ssl().steps(t.is_unix_socket()) {
        if let Some((last, _, refused)) = failed.last()
            && !SslOptions::retry_after(*last, *last != Step::Plain, *refused)
        {
            break;
        }
        let tls = match step {
            Step::Plain => TlsConfig::disabled(),
            Step::Tls | Step::TlsIfOffered => t
                .ssl()
                .pgwire(&t.host())
                .map_err(CaptureError::ReplicationTls)?,
        };
        match start_stream(cfg, (start, streaming), &publications, tls).await {
            Ok(client) => return Ok(client),
            Err(e) => {
                let failure = ReplicationFailure::new(e);
                if super::slot_lost::is_lost(&failure) {
                    return Err(CaptureError::SlotLost(cfg.slot.clone()));
                }
                let refused = !matches!(failure.error, pgwire_replication::PgWireError::Io(_));
                failed.push((step, CaptureError::Replication(failure), refused));
            }
        }
    }
    Err(failed.swap_remove(reported(&failed)).1)
}

/// Which failed attempt [`connect`] reports. One that failed transiently (the connection
/// broke: a server restarting, a cut) comes first, so that capture retries: a server that
/// declined TLS and then lost the plain connection must not stop capture with the TLS
/// attempt's definite "server does not support TLS". Otherwise the TLS attempt's error,
/// which says more than a plain connection's refusal.
fn reported(failed: &[(Step, CaptureError, bool)]) -> usize {
    failed
        .iter()
        .rposition(|(_, e, _)| e.is_transient())
        .or_else(|| failed.iter().position(|(step, _, _)| *step != Step::Plain))
        .unwrap_or(failed.len().saturating_sub(1))
}

/// Whether to stream in-progress transactions: asked for, and the server has version 2
/// (an older one refuses `proto_version '2'`, so it gets version 1 and a warning).
async fn streaming(sql: &Client, protocol: PgoutputProtocol) -> Result<bool, CaptureError> {
    if protocol == PgoutputProtocol::V1 {
        return Ok(false);
    }
    let version = crate::pg::server_version(sql).await?;
    if version.num < PgoutputProtocol::STREAMING_FROM {
        tracing::warn!(server = %version.text, "--pgoutput-protocol 2 needs PostgreSQL 14 or newer; using version 1");
        return Ok(false);
    }
    Ok(true)
}

async fn start_stream(
    cfg: &SourceConfig,
    (start, streaming): (Lsn, bool),
    publications: &[String],
    tls: TlsConfig,
) -> Result<ReplicationClient, pgwire_replication::PgWireError> {
    let t = &cfg.target;
    let repl_cfg = ReplicationConfig::new(
        t.host(),
        t.user(),
        t.password().unwrap_or_default(),
        t.dbname(),
        cfg.slot.clone(),
        publications.to_vec(),
    )
    .with_port(t.port())
    .with_tls(tls)
    .with_start_lsn(start.into())
    .with_ack_lsn(start.into())
    .with_status_interval(Duration::from_secs(1))
    .with_wakeup_interval(Duration::from_secs(1))
    .with_buffer_size(4096)
    .with_streaming(streaming)
    .with_application_name("ds-sync");
    let mut client = ReplicationClient::connect(repl_cfg).await?;
    client.wait_started().await?;
    Ok(client)
}

/// The primary key of a table, in key order, or `None` without one.
pub async fn primary_key(sql: &Client, oid: u32) -> Result<Option<Vec<String>>, CaptureError> {
    let row = sql
        .query_opt(
            "SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum)) \
             FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1 AND i.indisprimary GROUP BY i.indexrelid",
            &[&oid],
        )
        .await
        .map_err(|e| PgError::query(format!("reading the primary key of relation {oid}"), &e))?;
    Ok(row.map(|r| r.get(0)))
}

/// Makes sure the slot's confirmed position reached `lsn` at shutdown. The replication
/// worker reports positions on its own schedule; when its last report did not land, the
/// slot is advanced over SQL once the walsender has released it. Failing that is not an
/// error: the changes since the slot's position are delivered and will be recognised and
/// skipped on the next start.
pub async fn advance_slot(sql: &Client, slot_name: &str, lsn: Lsn) -> Result<(), CaptureError> {
    for _ in 0..100 {
        let info = slot::status(sql, slot_name).await?;
        if info
            .confirmed_flush_lsn
            .is_some_and(|confirmed| confirmed >= lsn)
        {
            return Ok(());
        }
        if !info.active {
            sql.execute(
                "SELECT pg_replication_slot_advance($1::text::name, $2::text::pg_lsn)",
                &[&slot_name, &lsn.to_string()],
            )
            .await
            .map_err(|e| PgError::query(format!("advancing slot '{slot_name}'"), &e))?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(slot = slot_name, delivered = %lsn, "the slot's position was not updated before exit; delivered changes after it will be skipped on the next start");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::PgoutputProtocol;

    #[derive(Debug, serde::Deserialize)]
    struct File {
        pgoutput_protocol: PgoutputProtocol,
    }

    #[test]
    fn the_protocol_is_a_number_in_the_file_and_only_1_or_2() {
        let read = |text: &str| toml::from_str::<File>(text).map(|f| f.pgoutput_protocol);
        assert_eq!(read("pgoutput_protocol = 2").unwrap(), PgoutputProtocol::V2);
        assert_eq!(read("pgoutput_protocol = 1").unwrap(), PgoutputProtocol::V1);
        let err = read("pgoutput_protocol = 3").unwrap_err().to_string();
        assert!(
            err.contains("pgoutput protocol 3 is not supported: use 1 or 2"),
            "{err}"
        );
        assert_eq!(
            PgoutputProtocol::default(),
            super::SourceConfig::DEFAULT_PROTOCOL
        );
        assert_eq!(u8::from(PgoutputProtocol::V2), 2);
    }
}
