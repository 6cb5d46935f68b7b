//! What capture tests start from and wait on: a [`Scenario`] (a cluster of its own, the
//! test's tables, an in-process DS server), capture streaming, and slot positions.

use std::future::Future;
use std::time::Duration;

use ds_sync::embedded::LocalPostgres;

use super::cluster::{TestDb, own_cluster_db};
use super::process::CaptureProcess;
use super::wait::{Wait, wait_until};

/// The WAL position now: a slot confirmed at or past it has every earlier commit delivered.
pub async fn wal_now(sql: &tokio_postgres::Client) -> String {
    sql.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Whether the slot confirmed `lsn`.
pub async fn slot_passed(sql: &tokio_postgres::Client, slot: &str, lsn: &str) -> bool {
    sql.query_one(
        "SELECT coalesce(bool_or(confirmed_flush_lsn >= $2::text::pg_lsn), false) \
         FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot, &lsn],
    )
    .await
    .unwrap()
    .get(0)
}

/// The position the slot confirmed, for failure messages.
async fn confirmed(sql: &tokio_postgres::Client, slot: &str) -> String {
    let row = sql
        .query_opt(
            "SELECT coalesce(confirmed_flush_lsn::text, 'none') FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await;
    match row {
        Ok(Some(row)) => format!("the slot confirmed {}", row.get::<_, String>(0)),
        Ok(None) => "no such slot".into(),
        Err(e) => format!("error reading the slot: {e}"),
    }
}

/// Waits until the capture slot confirmed `lsn` (panics with the log's tail after 300 s).
#[track_caller]
pub fn wait_confirmed<'a>(
    sql: &'a tokio_postgres::Client,
    slot: &'a str,
    lsn: &'a str,
    capture: &'a CaptureProcess,
) -> impl Future<Output = ()> + 'a {
    Wait::new(
        format!("the slot to confirm {lsn} (capture stalled?)"),
        Duration::from_secs(300),
    )
    .every(Duration::from_millis(200))
    .log_of(capture)
    .until(move || async move {
        if slot_passed(sql, slot, lsn).await {
            Ok(())
        } else {
            Err(confirmed(sql, slot).await)
        }
    })
}

/// Starts `ds-sync run` and waits until it streams.
pub async fn start_streaming(db: &TestDb, ds_url: &str, args: &[&str]) -> CaptureProcess {
    let capture = CaptureProcess::start(db, ds_url, args).await;
    wait_streaming(db).await;
    capture
}

/// Waits until capture holds its slot (it is streaming), so later writes are captured.
pub async fn wait_streaming(db: &TestDb) {
    let client = db.client().await;
    wait_slot_streaming(&client, &db.slot("cap")).await;
}

/// The pid of the walsender through which ds-sync streams from `slot`, if one does: held by
/// the streaming connection, not by the snapshot's session (which holds the slot while it
/// creates it).
pub async fn streaming_pid(
    sql: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<i32>, String> {
    let row = sql
        .query_opt(
            "SELECT s.active_pid FROM pg_replication_slots s \
             JOIN pg_stat_activity a ON a.pid = s.active_pid \
             WHERE s.slot_name = $1 AND s.active AND a.application_name = 'ds-sync'",
            &[&slot],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.map(|r| r.get(0)))
}

/// Waits until `slot` is held by ds-sync's streaming connection (over any SQL client, e.g.
/// one over TLS).
#[track_caller]
pub fn wait_slot_streaming<'a>(
    sql: &'a tokio_postgres::Client,
    slot: &'a str,
) -> impl Future<Output = ()> + 'a {
    let streams = wait_streaming_anew(sql, slot, None);
    async move {
        streams.await;
    }
}

/// Waits until ds-sync streams from `slot` over a walsender other than `previous` (a new
/// session, after a reconnect or a takeover) and returns its pid.
#[track_caller]
pub fn wait_streaming_anew<'a>(
    sql: &'a tokio_postgres::Client,
    slot: &'a str,
    previous: Option<i32>,
) -> impl Future<Output = i32> + 'a {
    let what = match previous {
        Some(pid) => format!("ds-sync to stream from {slot} again (not over walsender {pid})"),
        None => format!("capture to hold its slot {slot}"),
    };
    wait_until(what, Duration::from_secs(90), move || async move {
        match streaming_pid(sql, slot).await? {
            Some(pid) if Some(pid) != previous => Ok(pid),
            Some(pid) => Err(format!("still walsender {pid}")),
            None => Err("no ds-sync connection streams from the slot".to_string()),
        }
    })
}

/// What a capture test starts from: a cluster of its own, a database with the test's
/// tables, an in-process DS server and a client for it.
pub struct Scenario {
    pub server: super::TestServer,
    pub client: ds_sync::ds::DsClient,
    pub db: TestDb,
    pub sql: tokio_postgres::Client,
    pub pg: LocalPostgres,
}

/// Sets a [`Scenario`] up, running `ddl` in the new database.
pub async fn scenario(label: &str, ddl: &str, ds: ds_sync::embedded::DsServerOptions) -> Scenario {
    let server = super::TestServer::start(ds).await;
    let client =
        ds_sync::ds::DsClient::new(&server.url(), ds_sync::ds::ClientOptions::default()).unwrap();
    let (pg, db) = own_cluster_db(label).await;
    let sql = db.client().await;
    sql.batch_execute(ddl)
        .await
        .unwrap_or_else(|e| panic!("test schema for {label}: {e}"));
    Scenario {
        server,
        client,
        db,
        sql,
        pg,
    }
}

/// A snapshot request for `table` (`schema.name`) on capture's slot, as `ds-sync snapshot`
/// writes it. Written directly where a test holds a lock on the table: the command's own
/// catalog check waits for it too (PostgreSQL 16 on).
pub async fn request_snapshot(sql: &tokio_postgres::Client, db: &TestDb, table: &str) {
    sql.execute(
        "INSERT INTO ds_sync.signals (slot_name, kind, table_name) VALUES ($1, 'snapshot', $2)",
        &[&db.slot("cap"), &table],
    )
    .await
    .unwrap();
}

/// Waits until a requested snapshot of `table` is done (its `done` signal is written;
/// panics after 180 s); fails at once if capture exits meanwhile.
#[track_caller]
pub fn wait_snapshot_done<'a>(
    sql: &'a tokio_postgres::Client,
    table: &'a str,
    capture: &'a CaptureProcess,
) -> impl Future<Output = ()> + 'a {
    Wait::new(
        format!("the snapshot of {table} to finish"),
        Duration::from_secs(180),
    )
    .every(Duration::from_millis(100))
    .while_running(capture)
    .until(move || async move {
        let signals: Vec<(String, i64)> = sql
            .query(
                "SELECT kind, count(*) FROM ds_sync.signals WHERE table_name = $1 GROUP BY kind",
                &[&table],
            )
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if signals.iter().any(|(kind, _)| kind == "done") {
            Ok(())
        } else {
            Err(format!("signals of {table}: {signals:?}"))
        }
    })
}
