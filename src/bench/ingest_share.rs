//! `ingest-share`: `--streams` subscriptions shared by `--instances` `ds-sync run
//! --no-capture` (README, "HA and scaling"). Measured: how long the instances take to
//! share the streams out, the subscriptions and DS connections each holds, the events per
//! second they store while `--writers` clients POST one event at a time to streams in turn
//! for `--duration` s, and, after one instance is SIGKILLed, how long until its streams
//! have a live owner again and until each streams from its new owner; then another is
//! paused (SIGSTOP) until its lease runs out and its streams move, and resumed until the
//! shares are even again. At the end one more event goes to every stream, and every event
//! must be stored exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinSet;

use super::BenchError;
use super::capture::Ctx;
use super::report::Report;
use super::stack::DsSyncProcess;
use super::workload::Bar;

/// Target: a killed instance's streams have a live owner again within this long (the
/// requirement is 30 s for a dead instance; a killed one's session ends at once).
const TAKEOVER_TARGET_MS: f64 = 30_000.0;
/// Longest a single wait of the scenario may take.
const WAIT_LIMIT: Duration = Duration::from_secs(600);
/// Requests in flight while streams are created.
const CREATE_CONCURRENCY: usize = 64;
/// Idle pooled connections an instance's DS client keeps besides its SSE connections.
const POOL_IDLE: usize = 8;
/// The lease TTL the instances run with.
const LEASE_TTL: &str = "15s";

/// Runs the scenario.
pub(super) async fn run(ctx: &Ctx<'_>, report: &mut Report) -> Result<(), BenchError> {
    let (streams, count) = (ctx.opts.streams, ctx.opts.instances.max(2));
    let names: Vec<String> = (0..streams).map(|i| format!("share/{i}")).collect();
    create_streams(ctx, &names).await?;
    let sql = ctx.stack.sql().await?;
    subscribe(ctx, &names).await?;
    let started = Instant::now();
    let mut instances = Vec::with_capacity(count);
    for n in 0..count {
        instances.push(spawn(ctx, n)?);
    }
    let share = streams.div_ceil(count);
    wait_owned(
        &sql,
        &mut instances,
        share,
        count,
        "the streams to be shared out",
    )
    .await?;
    report.figure("time to share the streams out", secs(started), "s");
    let held = wait_connections(ctx, &sql, &mut instances).await?;
    describe_holdings(report, &sql, &instances, &held).await?;
    let (posted, stored_in) = load(ctx, &sql, &names, &mut instances).await?;
    report.figure("events posted under load", posted as f64, "events");
    report.figure(
        "events stored per second",
        posted as f64 / stored_in,
        "events/s",
    );
    kill_one(report, &sql, &mut instances, streams).await?;
    if instances.len() >= 2 {
        pause_one(report, &sql, &mut instances, streams).await?;
    }
    let last = post_round(ctx, &names, posted).await?;
    wait_stored(&sql, last, &mut instances).await?;
    audit(report, &sql, last).await?;
    for i in instances {
        i.stop().await?;
    }
    Ok(())
}

/// SIGKILLs the first instance; measures until its streams have a live owner again and
/// until each streams from it.
async fn kill_one(
    report: &mut Report,
    sql: &tokio_postgres::Client,
    instances: &mut Vec<DsSyncProcess>,
    streams: usize,
) -> Result<(), BenchError> {
    let victim = instances.remove(0);
    let (moved, at) = streams_of(sql, victim.pid()).await?;
    let killed = Instant::now();
    victim.kill().await;
    let survivors = instances.len();
    let share = streams.div_ceil(survivors);
    let what = "the killed instance's streams to move";
    wait_owned(sql, instances, share, survivors, what).await?;
    let owned_again = killed.elapsed();
    wait_streaming(sql, &moved, &at, instances).await?;
    describe_takeover(report, moved.len(), owned_again, killed.elapsed());
    Ok(())
}

/// SIGSTOPs the first instance (hung: its session lives on); measures until its streams
/// have a live owner again (its lease ran out), then SIGCONTs it and measures until the
/// shares are even again.
async fn pause_one(
    report: &mut Report,
    sql: &tokio_postgres::Client,
    instances: &mut [DsSyncProcess],
    streams: usize,
) -> Result<(), BenchError> {
    let all = instances.len();
    let (moved, _) = streams_of(sql, instances[0].pid()).await?;
    instances[0].signal(nix::sys::signal::Signal::SIGSTOP);
    let paused = Instant::now();
    let what = "the paused instance's streams to move";
    wait_owned(sql, instances, streams.div_ceil(all - 1), all - 1, what).await?;
    let moved_after = paused.elapsed();
    instances[0].signal(nix::sys::signal::Signal::SIGCONT);
    let resumed = Instant::now();
    let what = "the resumed instance to take its share back";
    wait_owned(sql, instances, streams.div_ceil(all), all, what).await?;
    report.figure(
        "streams of the paused instance",
        moved.len() as f64,
        "streams",
    );
    report.check(
        "SIGSTOP to every stream owned by a live instance",
        moved_after.as_secs_f64() * 1000.0,
        "ms",
        Some(TAKEOVER_TARGET_MS),
        true,
    );
    report.figure(
        "SIGCONT to the shares even again",
        resumed.elapsed().as_secs_f64() * 1000.0,
        "ms",
    );
    Ok(())
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

fn spawn(ctx: &Ctx<'_>, n: usize) -> Result<DsSyncProcess, BenchError> {
    let mut args = vec!["run", "--no-capture", "--ingest-lease-ttl", LEASE_TTL];
    args.extend(ctx.opts.ds_sync_args.iter().map(String::as_str));
    let log = ctx.dir.join(format!("ds-sync-share-{n}.log"));
    DsSyncProcess::spawn(&ctx.opts.exe, ctx.stack, &args, &log)
}

async fn create_streams(ctx: &Ctx<'_>, names: &[String]) -> Result<(), BenchError> {
    let bar = Bar::new("creating streams", names.len() as u64, ctx.opts.progress);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for chunk in names.chunks(names.len().div_ceil(CREATE_CONCURRENCY).max(1)) {
        let (ds, chunk, done) = (ctx.stack.ds.clone(), chunk.to_vec(), Arc::clone(&done));
        tasks.spawn(async move {
            for name in chunk {
                ds.ensure_stream(&name).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), BenchError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        bar.set(done.load(Ordering::Relaxed));
        r.map_err(|e| BenchError::Setup(format!("a stream creator failed: {e}")))??;
    }
    bar.finish();
    Ok(())
}

/// Stores the subscriptions (the schema first), as `ds-sync subscribe` would.
async fn subscribe(ctx: &Ctx<'_>, names: &[String]) -> Result<(), BenchError> {
    let mut client = ctx.stack.target().connect().await?;
    crate::schema::apply(&mut client).await?;
    crate::ingest::store::add_missing(&client, names)
        .await
        .map_err(|e| BenchError::Setup(format!("storing the subscriptions: {e}")))
}

/// Subscriptions per live owner's process id, and how many have no live owner.
async fn owners(sql: &tokio_postgres::Client) -> Result<(BTreeMap<i32, usize>, usize), BenchError> {
    let rows = sql
        .query(
            "SELECT l.pid, count(*) FROM ds_sync.subscriptions s \
             LEFT JOIN ds_sync.live_ingest_instances l ON l.instance_id = s.owner GROUP BY l.pid",
            &[],
        )
        .await
        .map_err(|e| BenchError::sql("reading the owners of the subscriptions", &e))?;
    let mut owned = BTreeMap::new();
    let mut orphans = 0;
    for r in rows {
        let n = usize::try_from(r.get::<_, i64>(1)).unwrap_or(0);
        match r.get::<_, Option<i32>>(0) {
            Some(pid) => {
                owned.insert(pid, n);
            }
            None => orphans = n,
        }
    }
    Ok((owned, orphans))
}

/// The streams the instance with process id `pid` owns, and the database's clock now.
async fn streams_of(
    sql: &tokio_postgres::Client,
    pid: u32,
) -> Result<(Vec<String>, String), BenchError> {
    let rows = sql
        .query(
            "SELECT s.stream_name FROM ds_sync.subscriptions s \
             JOIN ds_sync.ingest_instances i ON i.instance_id = s.owner WHERE i.pid = $1",
            &[&(pid as i32)],
        )
        .await
        .map_err(|e| BenchError::sql("reading an instance's streams", &e))?;
    let now: String = sql
        .query_one("SELECT clock_timestamp()::text", &[])
        .await
        .map_err(|e| BenchError::sql("reading the database's clock", &e))?
        .get(0);
    Ok((rows.iter().map(|r| r.get(0)).collect(), now))
}

/// Waits until each of `moved` reports `streaming` in a state written after `since` (by
/// its new owner).
async fn wait_streaming(
    sql: &tokio_postgres::Client,
    moved: &[String],
    since: &str,
    instances: &mut [DsSyncProcess],
) -> Result<(), BenchError> {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let n: i64 = sql
            .query_one(
                "SELECT count(*) FROM ds_sync.subscriptions WHERE stream_name = ANY($1) \
                 AND status = 'streaming' AND state_at > $2::text::timestamptz",
                &[&moved, &since],
            )
            .await
            .map_err(|e| BenchError::sql("reading the moved streams' state", &e))?
            .get(0);
        if n as usize >= moved.len() {
            return Ok(());
        }
        for i in instances.iter_mut() {
            i.check_alive()?;
        }
        if Instant::now() > deadline {
            return Err(timeout(
                "the moved streams to stream again",
                format!("{n} of {}", moved.len()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn owned_by(sql: &tokio_postgres::Client) -> Result<BTreeMap<i32, usize>, BenchError> {
    Ok(owners(sql).await?.0)
}

/// Waits until `live` instances own every subscription, none over `share`.
async fn wait_owned(
    sql: &tokio_postgres::Client,
    instances: &mut [DsSyncProcess],
    share: usize,
    live: usize,
    what: &str,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let (owned, orphans) = owners(sql).await?;
        if orphans == 0 && owned.len() == live && owned.values().all(|n| *n <= share) {
            return Ok(());
        }
        for i in instances.iter_mut() {
            i.check_alive()?;
        }
        if Instant::now() > deadline {
            return Err(timeout(
                what,
                format!("{owned:?} owned per pid, {orphans} without a live owner"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until each instance holds at least one connection to the DS server per stream it
/// owns; returns the connections each holds.
async fn wait_connections(
    ctx: &Ctx<'_>,
    sql: &tokio_postgres::Client,
    instances: &mut [DsSyncProcess],
) -> Result<Vec<usize>, BenchError> {
    let port = ds_port(&ctx.stack.ds_url)?;
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let owned = owned_by(sql).await?;
        let remote = sockets_to_port(port);
        let held: Vec<usize> = instances
            .iter()
            .map(|i| connections(i.pid(), &remote))
            .collect();
        let enough = instances
            .iter()
            .zip(&held)
            .all(|(i, h)| *h >= owned.get(&(i.pid() as i32)).copied().unwrap_or(0));
        if enough {
            return Ok(held);
        }
        for i in instances.iter_mut() {
            i.check_alive()?;
        }
        if Instant::now() > deadline {
            return Err(timeout(
                "a DS connection per stream",
                format!("{held:?} per instance"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ds_port(url: &str) -> Result<u16, BenchError> {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .ok_or_else(|| BenchError::Setup(format!("no port in the DS server URL {url}")))
}

/// The socket inodes of TCP connections to `port` (any address), from `/proc/net/tcp*`.
fn sockets_to_port(port: u16) -> std::collections::HashSet<u64> {
    let mut inodes = std::collections::HashSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // State 01: established.
            if remote_port == Some(port)
                && fields.get(3) == Some(&"01")
                && let Some(inode) = fields.get(9).and_then(|i| i.parse().ok())
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// How many of `pid`'s open sockets are among `remote`.
fn connections(pid: u32, remote: &std::collections::HashSet<u64>) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .filter(|inode| remote.contains(inode))
        .count()
}

async fn describe_holdings(
    report: &mut Report,
    sql: &tokio_postgres::Client,
    instances: &[DsSyncProcess],
    held: &[usize],
) -> Result<(), BenchError> {
    let owned = owned_by(sql).await?;
    report.figure("streams", owned.values().sum::<usize>() as f64, "streams");
    report.figure("instances", instances.len() as f64, "");
    for (n, (i, conns)) in instances.iter().zip(held).enumerate() {
        let own = owned.get(&(i.pid() as i32)).copied().unwrap_or(0);
        report.figure(
            &format!("instance {n}: subscriptions owned"),
            own as f64,
            "streams",
        );
        report.figure(
            &format!("instance {n}: DS connections"),
            *conns as f64,
            "connections",
        );
    }
    report.figure(
        "DS connections in all",
        held.iter().sum::<usize>() as f64,
        "connections",
    );
    report.notes.push(format!(
        "DS connections: established TCP connections of each instance to the DS server \
         (from /proc), one SSE connection per stream it owns plus up to {POOL_IDLE} idle \
         pooled ones; before ingest was shared, each instance held one per stream ({} in \
         all here).",
        instances.len() * owned.values().sum::<usize>()
    ));
    Ok(())
}

/// `--writers` clients POST one event at a time, to streams in turn, for `--duration` s;
/// returns how many were posted and the seconds from the first POST to the last row stored.
async fn load(
    ctx: &Ctx<'_>,
    sql: &tokio_postgres::Client,
    names: &[String],
    instances: &mut [DsSyncProcess],
) -> Result<(u64, f64), BenchError> {
    let next = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + ctx.opts.duration;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..ctx.opts.writers {
        let (ds, names, next) = (ctx.stack.ds.clone(), names.to_vec(), Arc::clone(&next));
        tasks.spawn(async move {
            while Instant::now() < until {
                let n = next.fetch_add(1, Ordering::Relaxed);
                post(&ds, &names[n as usize % names.len()], n).await?;
            }
            Ok::<(), BenchError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| BenchError::Setup(format!("a poster failed: {e}")))??;
    }
    let posted = next.load(Ordering::Relaxed);
    wait_stored(sql, posted, instances).await?;
    Ok((posted, secs(started)))
}

async fn post(ds: &crate::ds::DsClient, stream: &str, n: u64) -> Result<(), BenchError> {
    let body = format!(r#"[{{"key":"e{n}","n":{n}}}]"#);
    ds.append(stream, Bytes::from(body), None).await?;
    Ok(())
}

/// One event to every stream, numbered from `from`; returns the number of events posted
/// in all.
async fn post_round(ctx: &Ctx<'_>, names: &[String], from: u64) -> Result<u64, BenchError> {
    let mut tasks = JoinSet::new();
    let per = names.len().div_ceil(CREATE_CONCURRENCY).max(1);
    for (c, chunk) in names.chunks(per).enumerate() {
        let (ds, chunk) = (ctx.stack.ds.clone(), chunk.to_vec());
        let base = from + (c * per) as u64;
        tasks.spawn(async move {
            for (i, name) in chunk.iter().enumerate() {
                post(&ds, name, base + i as u64).await?;
            }
            Ok::<(), BenchError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| BenchError::Setup(format!("a poster failed: {e}")))??;
    }
    Ok(from + names.len() as u64)
}

async fn stored(sql: &tokio_postgres::Client) -> Result<u64, BenchError> {
    let n: i64 = sql
        .query_one("SELECT count(*) FROM public.session_events", &[])
        .await
        .map_err(|e| BenchError::sql("counting stored events", &e))?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Waits until `n` events are stored.
async fn wait_stored(
    sql: &tokio_postgres::Client,
    n: u64,
    instances: &mut [DsSyncProcess],
) -> Result<(), BenchError> {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let have = stored(sql).await?;
        if have >= n {
            return Ok(());
        }
        for i in instances.iter_mut() {
            i.check_alive()?;
        }
        if Instant::now() > deadline {
            return Err(timeout(
                &format!("{n} events stored"),
                format!("{have} so far"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn describe_takeover(
    report: &mut Report,
    owned: usize,
    owned_again: Duration,
    reconnected: Duration,
) {
    report.figure("streams of the killed instance", owned as f64, "streams");
    report.check(
        "SIGKILL to every stream owned by a live instance",
        owned_again.as_secs_f64() * 1000.0,
        "ms",
        Some(TAKEOVER_TARGET_MS),
        true,
    );
    report.figure(
        "SIGKILL to every moved stream streaming again (as reported, in 250 ms steps)",
        reconnected.as_secs_f64() * 1000.0,
        "ms",
    );
    report.notes.push(format!(
        "The instances run with --ingest-lease-ttl {LEASE_TTL}: a killed instance's session \
         ends with it, so its streams are free at once and taken at the survivors' next tick \
         (about a second); a paused (SIGSTOP) one's session lives on, so its streams move \
         when its lease runs out (the TTL after its last renewal, plus a tick)."
    ));
}

/// Every event stored exactly once: rows and distinct keys against the events posted.
async fn audit(
    report: &mut Report,
    sql: &tokio_postgres::Client,
    posted: u64,
) -> Result<(), BenchError> {
    let row = sql
        .query_one(
            "SELECT count(*), count(DISTINCT event_key) FROM public.session_events",
            &[],
        )
        .await
        .map_err(|e| BenchError::sql("auditing the stored events", &e))?;
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
    let posted = posted as i64;
    report.check(
        "events lost",
        (posted - distinct).max(0) as f64,
        "events",
        Some(0.0),
        true,
    );
    report.check(
        "events stored twice",
        (rows - distinct) as f64,
        "events",
        Some(0.0),
        true,
    );
    Ok(())
}

fn timeout(what: &str, detail: String) -> BenchError {
    BenchError::Timeout {
        what: what.to_owned(),
        secs: WAIT_LIMIT.as_secs(),
        detail,
    }
}
