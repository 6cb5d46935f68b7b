//! Ingest shared across instances (README, "HA and scaling"): several `ds-sync run
//! --no-capture` on one database each follow their share of the stored subscriptions, one
//! owner per subscription; a joining instance takes its share from the others, a killed
//! one's streams move at once, a paused one's when its lease runs out; events POSTed
//! throughout land exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ds_sync::embedded::DsServerOptions;
use tokio_util::sync::CancellationToken;

use crate::kit::fault_proxy::FaultProxy;
use crate::kit::ingest::{PATIENCE, Setup, setup};
use crate::kit::prom::Scrape;
use crate::kit::{CaptureProcess, Wait, http, wait_until};

/// Idle pooled connections one instance's DS client keeps (`max_idle_per_host`), on top of
/// one SSE connection per stream it follows.
const POOL_IDLE: usize = 8;

/// One instance, reaching the DS server through a proxy of its own that counts its
/// connections.
struct Instance {
    process: Option<CaptureProcess>,
    proxy: FaultProxy,
    /// Where it serves `/metrics`.
    metrics: String,
}

impl Instance {
    async fn start(s: &Setup, streams: &[String], ttl: &str) -> Instance {
        let proxy = FaultProxy::for_url(&s.server.url())
            .await
            .expect("fault proxy");
        let list = streams.join(",");
        let args = [
            "--no-capture",
            "--ingest",
            list.as_str(),
            "--ingest-lease-ttl",
            ttl,
            "--listen",
            "127.0.0.1:0",
        ];
        let process = CaptureProcess::start(&s.db, &proxy.url(), &args).await;
        let metrics = format!("http://{}/metrics", process.listen_addr().await);
        Instance {
            process: Some(process),
            proxy,
            metrics,
        }
    }

    /// The streams it runs a subscription for (those with a status in its `/metrics`), and
    /// the subscriptions it says it owns.
    async fn followed(&self) -> Result<(BTreeSet<String>, Option<f64>), String> {
        let (status, body) = http(hyper::Method::GET, &self.metrics, &[], b"").await;
        let body = String::from_utf8_lossy(&body).into_owned();
        if status != 200 {
            return Err(format!("/metrics answered {status}: {body}"));
        }
        let scrape = Scrape::parse(&body)?;
        let followed = scrape
            .samples("ds_sync_ingest_stream_status")
            .filter_map(|s| s.labels.get("stream").cloned())
            .collect();
        Ok((followed, scrape.value("ds_sync_ingest_owned_streams", &[])))
    }

    fn pid(&self) -> i32 {
        self.process
            .as_ref()
            .and_then(CaptureProcess::pid)
            .expect("running") as i32
    }

    fn process(&self) -> &CaptureProcess {
        self.process.as_ref().expect("running")
    }
}

/// Posts one event at a time, round robin over `streams`, each with a key of its own, until
/// stopped; returns how many it posted.
fn spawn_poster(
    s: &Setup,
    streams: Vec<String>,
    stop: CancellationToken,
) -> (tokio::task::JoinHandle<u64>, Arc<AtomicU64>) {
    let ds = s.ds.clone();
    let posted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&posted);
    let task = tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.is_cancelled() {
            let stream = &streams[n as usize % streams.len()];
            let body = format!(r#"[{{"key":"e{n}","n":{n}}}]"#);
            ds.append(stream, Bytes::from(body), None)
                .await
                .unwrap_or_else(|e| panic!("POST to {stream}: {e}"));
            n += 1;
            count.store(n, Ordering::Release);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        n
    });
    (task, posted)
}

/// Subscriptions per live owner's pid, and how many have no live owner.
async fn owners(sql: &tokio_postgres::Client) -> Result<(BTreeMap<i32, i64>, i64), String> {
    let rows = sql
        .query(
            "SELECT l.pid, count(*) FROM ds_sync.subscriptions s \
             LEFT JOIN ds_sync.live_ingest_instances l ON l.instance_id = s.owner \
             GROUP BY l.pid",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut owned = BTreeMap::new();
    let mut orphans = 0;
    for r in rows {
        match r.get::<_, Option<i32>>(0) {
            Some(pid) => {
                owned.insert(pid, r.get(1));
            }
            None => orphans = r.get(1),
        }
    }
    Ok((owned, orphans))
}

/// Waits until exactly the instances `pids` own every subscription, each `per` of them.
#[track_caller]
fn wait_owned<'a>(
    s: &'a Setup,
    pids: Vec<i32>,
    per: &'a [i64],
    what: &'a str,
) -> impl Future<Output = ()> + 'a {
    Wait::new(what, PATIENCE).until(move || {
        let pids = pids.clone();
        async move {
            let (owned, orphans) = owners(&s.sql).await?;
            let counts: Vec<i64> = pids
                .iter()
                .map(|p| owned.get(p).copied().unwrap_or(0))
                .collect();
            if orphans == 0 && owned.len() == pids.len() && counts == per {
                Ok(())
            } else {
                Err(format!(
                    "owned per pid {owned:?} (want {pids:?} with {per:?}), {orphans} without a live owner"
                ))
            }
        }
    })
}

/// The streams a live instance with process id `pid` owns.
async fn owned_by(sql: &tokio_postgres::Client, pid: i32) -> Result<BTreeSet<String>, String> {
    let rows = sql
        .query(
            "SELECT s.stream_name FROM ds_sync.subscriptions s \
             JOIN ds_sync.live_ingest_instances l ON l.instance_id = s.owner WHERE l.pid = $1",
            &[&pid],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Waits until each instance runs a subscription for exactly the streams it owns, and
/// holds one connection to the DS server per stream it owns and at most its idle pool
/// besides (about one SSE connection per stream in all, not one per stream and instance).
#[track_caller]
fn wait_followed<'a>(s: &'a Setup, instances: &'a [&'a Instance]) -> impl Future<Output = ()> + 'a {
    Wait::new("each instance to follow exactly what it owns", PATIENCE).until(move || async move {
        let mut seen = Vec::new();
        let mut fits = true;
        for i in instances {
            let owned = owned_by(&s.sql, i.pid()).await?;
            let (followed, says) = i.followed().await?;
            let open = i.proxy.open();
            let n = owned.len();
            fits &=
                followed == owned && says == Some(n as f64) && (n..=n + POOL_IDLE).contains(&open);
            seen.push(format!(
                "{n} owned, {} followed ({} not owned), {open} connections",
                followed.len(),
                followed.difference(&owned).count()
            ));
        }
        if fits { Ok(()) } else { Err(seen.join("; ")) }
    })
}

/// Waits until every posted event is stored, then checks each landed exactly once.
async fn expect_exactly_once(s: &Setup, posted: u64) {
    let sql = &s.sql;
    wait_until(format!("all {posted} events"), PATIENCE * 2, || async {
        let c: i64 = sql
            .query_one("SELECT count(*) FROM session_events", &[])
            .await
            .ok()?
            .get(0);
        assert!(c <= posted as i64, "{c} rows for {posted} events");
        (c == posted as i64).then_some(())
    })
    .await;
    let row = sql
        .query_one(
            "SELECT count(*), count(DISTINCT event_key), \
                    count(*) FILTER (WHERE event_key <> 'e' || (payload->>'n')) \
             FROM session_events",
            &[],
        )
        .await
        .unwrap();
    let (rows, distinct, misplaced): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (rows, distinct, misplaced),
        (posted as i64, posted as i64, 0),
        "every event exactly once"
    );
}

async fn streams(s: &Setup, prefix: &str, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}/{i}")).collect();
    for name in &names {
        s.ds.ensure_stream(name).await.expect("PUT");
    }
    names
}

/// Two instances split 60 streams; a third joins and takes its share from them (each then
/// holds 20, about 60 SSE connections in all instead of 180); one is SIGKILLed and its
/// streams move to the other two. Events posted all along land exactly once.
#[tokio::test]
async fn instances_share_sixty_streams_and_a_killed_ones_move() {
    let s = setup("ing_share", DsServerOptions::default()).await;
    let names = streams(&s, "share", 60).await;
    let stop = CancellationToken::new();
    let (poster, posted) = spawn_poster(&s, names.clone(), stop.clone());
    let a = Instance::start(&s, &names, "3s").await;
    let b = Instance::start(&s, &names, "3s").await;
    wait_owned(
        &s,
        vec![a.pid(), b.pid()],
        &[30, 30],
        "two instances with 30 each",
    )
    .await;
    let mut c = Instance::start(&s, &names, "3s").await;
    wait_owned(
        &s,
        vec![a.pid(), b.pid(), c.pid()],
        &[20, 20, 20],
        "the joining instance to take its share",
    )
    .await;
    wait_followed(&s, &[&a, &b, &c]).await;

    let before = posted.load(Ordering::Acquire);
    let killed = Instant::now();
    c.process.take().expect("running").kill().await;
    wait_owned(
        &s,
        vec![a.pid(), b.pid()],
        &[30, 30],
        "the killed instance's streams to move",
    )
    .await;
    eprintln!(
        "the killed instance's streams moved within {:?}",
        killed.elapsed()
    );
    wait_followed(&s, &[&a, &b]).await;
    // Events posted after the kill to the streams it held land too.
    let after = before + 120;
    wait_until("events posted after the kill", PATIENCE, || async {
        posted.load(Ordering::Acquire) >= after
    })
    .await;
    stop.cancel();
    let total = poster.await.expect("poster");
    expect_exactly_once(&s, total).await;
    let shown = crate::kit::run_ds_sync(
        &["subscriptions", "--output", "json"],
        &[
            ("POSTGRES_URL", s.db.url.as_str()),
            ("DS_SERVER_URL", s.server.url().as_str()),
        ],
    )
    .await
    .ok()
    .json();
    let pids: Vec<i64> = shown
        .as_array()
        .expect("a list")
        .iter()
        .map(|l| {
            assert_eq!(l["owner_live"], true, "{l}");
            assert!(
                l["owner"].is_string() && l["lease_until"].is_string(),
                "{l}"
            );
            l["owner_pid"].as_i64().expect("an owner pid")
        })
        .collect();
    assert!(
        pids.iter()
            .all(|p| [a.pid(), b.pid()].contains(&(*p as i32))),
        "subscriptions shows the two live owners: {pids:?}"
    );
    a.process.expect("running").stop_ok().await;
    b.process.expect("running").stop_ok().await;
}

/// A paused (SIGSTOP) instance keeps its session but stops renewing: its streams move when
/// its lease runs out. Resumed, it stops what it lost, takes its share back from the other,
/// and nothing is stored twice.
#[tokio::test]
async fn a_paused_instance_loses_its_streams_and_doubles_nothing_when_resumed() {
    let s = setup("ing_share_pause", DsServerOptions::default()).await;
    let names = streams(&s, "pause", 10).await;
    let stop = CancellationToken::new();
    let (poster, posted) = spawn_poster(&s, names.clone(), stop.clone());
    let a = Instance::start(&s, &names, "2s").await;
    let b = Instance::start(&s, &names, "2s").await;
    wait_owned(
        &s,
        vec![a.pid(), b.pid()],
        &[5, 5],
        "two instances with 5 each",
    )
    .await;
    b.process().freeze();
    wait_owned(
        &s,
        vec![a.pid()],
        &[10],
        "the paused instance's streams to move when its lease runs out",
    )
    .await;
    let before = posted.load(Ordering::Acquire);
    wait_until("events posted while it is paused", PATIENCE, || async {
        posted.load(Ordering::Acquire) >= before + 100
    })
    .await;
    b.process().resume();
    wait_owned(
        &s,
        vec![a.pid(), b.pid()],
        &[5, 5],
        "the resumed instance to take its share back",
    )
    .await;
    let before = posted.load(Ordering::Acquire);
    wait_until("events posted after it resumed", PATIENCE, || async {
        posted.load(Ordering::Acquire) >= before + 100
    })
    .await;
    stop.cancel();
    let total = poster.await.expect("poster");
    expect_exactly_once(&s, total).await;
    a.process.expect("running").stop_ok().await;
    let log = b.process.expect("running").stop_ok().await;
    assert!(
        log.contains("ingest leases not renewed for a whole ttl"),
        "the resumed instance says it stopped its streams"
    );
}
