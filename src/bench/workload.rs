//! Loads and the measuring around them: a table with its publication and slots, a backlog
//! written before any consumer runs, the `pg_recvlogical` ceiling, and a drain timed by
//! polling the stream's message count.

use std::process::Stdio;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio_postgres::Client;

use super::BenchError;
use super::report::Series;
use super::stack::{DsSyncProcess, Stack};
use super::tail::TailCounter;
use crate::embedded::find_postgres_bin_dir;

/// How often a drain polls the stream's message count; the drain time's resolution.
const POLL: Duration = Duration::from_millis(20);
/// Width of one throughput sample.
const SAMPLE: Duration = Duration::from_millis(250);
/// A drain that makes no progress for this long has failed.
const STALL: Duration = Duration::from_secs(120);

/// One bench table, its publication, and the slots its consumers read.
pub(super) struct Phase {
    pub table: String,
    pub publication: String,
}

impl Phase {
    /// Creates `table` (ids, text, a numeric and a timestamp: a typical row of ~120 bytes)
    /// and a publication for it.
    pub(super) async fn create(sql: &Client, table: &str) -> Result<Phase, BenchError> {
        let publication = format!("{table}_pub");
        sql.batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {publication}; DROP TABLE IF EXISTS {table}; \
             CREATE TABLE {table} (id BIGINT PRIMARY KEY, title TEXT NOT NULL, body TEXT, \
             amount NUMERIC(12,2), created_at TIMESTAMPTZ NOT NULL DEFAULT now()); \
             CREATE PUBLICATION {publication} FOR TABLE {table}"
        ))
        .await
        .map_err(|e| BenchError::sql(&format!("creating {table}"), &e))?;
        Ok(Phase {
            table: table.to_owned(),
            publication,
        })
    }

    /// A pgoutput slot at the current WAL position, dropped first if a previous run left it.
    pub(super) async fn slot(&self, sql: &Client, consumer: &str) -> Result<String, BenchError> {
        let name = format!("{}_{consumer}", self.table);
        sql.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| BenchError::sql("dropping an old bench slot", &e))?;
        sql.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await
        .map_err(|e| BenchError::sql(&format!("creating slot {name}"), &e))?;
        Ok(name)
    }

    /// `rows` rows in one transaction.
    pub(super) async fn write_one_transaction(
        &self,
        sql: &Client,
        rows: u64,
    ) -> Result<(), BenchError> {
        sql.execute(
            &format!(
                "INSERT INTO {} (id, title, body, amount) SELECT g, 'title ' || g, \
                 repeat('lorem ipsum ', 5) || g, g * 1.25 FROM generate_series(1, $1::bigint) g",
                self.table
            ),
            &[&(rows as i64)],
        )
        .await
        .map_err(|e| BenchError::sql("writing the backlog", &e))?;
        Ok(())
    }

    /// `txns` one-row transactions, committed server-side in a loop.
    pub(super) async fn write_transactions(
        &self,
        sql: &Client,
        txns: u64,
    ) -> Result<(), BenchError> {
        sql.batch_execute(&format!(
            "DO $$ BEGIN FOR g IN 1..{txns} LOOP \
               INSERT INTO {} (id, title, body, amount) VALUES \
                 (g, 'title ' || g, repeat('lorem ipsum ', 5) || g, g * 1.25); \
               COMMIT; \
             END LOOP; END $$",
            self.table
        ))
        .await
        .map_err(|e| BenchError::sql("writing one-row transactions", &e))?;
        Ok(())
    }

    /// The stream ds-sync writes this table to (`--stream-template bench-{table}`).
    pub(super) fn stream(&self) -> String {
        format!("bench-{}", self.table)
    }
}

/// The server's current WAL insert position, as text.
pub(super) async fn current_lsn(sql: &Client) -> Result<String, BenchError> {
    let row = sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| BenchError::sql("reading the WAL position", &e))?;
    Ok(row.get(0))
}

/// `pg_recvlogical` reading `slot` to `end_lsn` into /dev/null: the walsender's decoding
/// speed with no work on the consumer side. Returns the wall time.
pub(super) async fn recvlogical_ceiling(
    stack: &Stack,
    slot: &str,
    publication: &str,
    end_lsn: &str,
) -> Result<Duration, BenchError> {
    recvlogical_ceiling_with(
        stack,
        slot,
        publication,
        end_lsn,
        &["-o", "proto_version=1"],
    )
    .await
}

/// As [`recvlogical_ceiling`], with the plugin options `protocol` (e.g. `-o proto_version=2
/// -o streaming=on`) instead of version 1's.
pub(super) async fn recvlogical_ceiling_with(
    stack: &Stack,
    slot: &str,
    publication: &str,
    end_lsn: &str,
    protocol: &[&str],
) -> Result<Duration, BenchError> {
    let publication = format!("publication_names={publication}");
    let args = ["--slot", slot, "--start", "--no-loop", "--endpos", end_lsn];
    let output = ["-f", "/dev/null", "-o", &publication];
    run_client(
        stack,
        "pg_recvlogical",
        &[&args[..], protocol, &output[..]].concat(),
    )
    .await
}

/// `psql -c COMMAND` (stopping at the first error); returns the wall time.
pub(super) async fn psql(stack: &Stack, command: &str) -> Result<Duration, BenchError> {
    run_client(
        stack,
        "psql",
        &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command],
    )
    .await
}

/// Runs a PostgreSQL client program against the stack's database (the password in
/// `PGPASSWORD`, never on the command line); returns the wall time.
async fn run_client(stack: &Stack, tool: &str, args: &[&str]) -> Result<Duration, BenchError> {
    let bin = postgres_tool(tool)?;
    let t = stack.target();
    let started = Instant::now();
    let out = tokio::process::Command::new(&bin)
        .args(["-h", &t.host(), "-p", &t.port().to_string(), "-U", t.user()])
        .args(["-d", t.dbname()])
        .args(args)
        .env("PGPASSWORD", t.password().unwrap_or_default())
        .envs(t.ssl_env())
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| BenchError::Ceiling(format!("running {}: {e}", bin.display())))?;
    if !out.status.success() {
        return Err(BenchError::Ceiling(format!(
            "{tool} exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(started.elapsed())
}

/// A client program of the PostgreSQL installation the clusters come from: next to
/// `postgres`, next to what `postgres` links to, or on PATH.
fn postgres_tool(name: &str) -> Result<std::path::PathBuf, BenchError> {
    let dir = find_postgres_bin_dir()?;
    let mut candidates = vec![dir.join(name)];
    if let Ok(real) = std::fs::canonicalize(dir.join("postgres"))
        && let Some(parent) = real.parent()
    {
        candidates.push(parent.join(name));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        BenchError::Ceiling(format!(
            "{name} was not found next to postgres ({}) or on PATH; it ships with the \
                 PostgreSQL server package",
            dir.display()
        ))
    })
}

/// What a drain measured.
pub(super) struct Drain {
    /// From starting the consumer to the last message landing in the stream.
    pub elapsed: Duration,
    /// From starting the consumer to the poll that first saw a message.
    pub first_seen: Option<Duration>,
    /// Messages per second over time.
    pub series: Series,
    /// Peak RSS in kB (ds-sync only).
    pub peak_rss_kb: Option<u64>,
    /// RSS over time in MB (ds-sync only).
    pub rss: Series,
    /// CPU seconds the consumer used (ds-sync only).
    pub cpu_secs: Option<f64>,
    /// CPU seconds of the runner (the in-process DS server, and the polling) meanwhile.
    pub runner_cpu_secs: Option<f64>,
    /// CPU seconds of the walsender that served the consumer's slot (ds-sync only).
    pub walsender_cpu_secs: Option<f64>,
}

/// Polls `stream` until it holds `expected` messages; the time is that of the poll that
/// first saw the last message. With `process`, also samples its memory and checks it lives.
pub(super) async fn wait_drained(
    stack: &Stack,
    stream: &str,
    expected: u64,
    started: Instant,
    mut process: Option<&mut DsSyncProcess>,
    label: &str,
    progress: bool,
) -> Result<Drain, BenchError> {
    let mut counter = TailCounter::new(&stack.ds, stream);
    let bar = Bar::new(label, expected, progress);
    let mut series = Series {
        name: label.to_owned(),
        unit: "rows/s".into(),
        points: vec![(0.0, 0.0)],
    };
    let mut rss = Series {
        name: format!("{label} RSS"),
        unit: "MB".into(),
        points: Vec::new(),
    };
    let (mut last_sample, mut last_count) = (Instant::now(), 0u64);
    let mut last_change = Instant::now();
    let mut first_seen = None;
    loop {
        let count = counter.count().await?;
        let now = Instant::now();
        if count > 0 && first_seen.is_none() {
            first_seen = Some(now.duration_since(started));
        }
        if count != last_count || count == 0 {
            bar.set(count);
        }
        if count != last_count {
            last_change = now;
        }
        if let Some(p) = process.as_deref_mut() {
            p.check_alive()?;
            if let Some((cur, _)) = p.memory_kb() {
                rss.points
                    .push((started.elapsed().as_secs_f64(), cur as f64 / 1024.0));
            }
        }
        if now.duration_since(last_sample) >= SAMPLE || count >= expected {
            let dt = now.duration_since(last_sample).as_secs_f64();
            series.points.push((
                started.elapsed().as_secs_f64(),
                (count - last_count.min(count)) as f64 / dt.max(1e-6),
            ));
            (last_sample, last_count) = (now, count);
        }
        if count >= expected {
            bar.finish();
            let (peak_rss_kb, cpu_secs) = match process {
                Some(p) => (p.memory_kb().map(|m| m.1), p.cpu_seconds()),
                None => (None, None),
            };
            return Ok(Drain {
                elapsed: now.duration_since(started),
                first_seen,
                series,
                peak_rss_kb,
                rss,
                cpu_secs,
                runner_cpu_secs: None,
                walsender_cpu_secs: None,
            });
        }
        if now.duration_since(last_change) > STALL {
            return Err(BenchError::Timeout {
                what: format!("draining into stream {stream}"),
                secs: STALL.as_secs(),
                detail: format!("stuck at {count} of {expected} messages"),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `slot` confirmed `lsn`: proof that the consumer let the slot advance past
/// what it delivered (not part of the timed drain: confirmations go out once a second).
pub(super) async fn wait_confirmed(sql: &Client, slot: &str, lsn: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = sql
            .query_one(
                "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false) \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot, &lsn],
            )
            .await
            .map_err(|e| BenchError::sql("reading the slot position", &e))?;
        if row.get::<_, bool>(0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout {
                what: format!("slot {slot} confirming {lsn}"),
                secs: 60,
                detail: "every message is in the stream, yet the slot did not advance".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A progress bar on a terminal, a log line every few seconds otherwise.
pub(super) struct Bar {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    last_log: std::cell::Cell<Instant>,
}

impl Bar {
    pub(super) fn new(label: &str, total: u64, progress: bool) -> Bar {
        let bar = progress.then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg:>22} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(label.to_owned());
            b
        });
        Bar {
            bar,
            label: label.to_owned(),
            total,
            last_log: std::cell::Cell::new(Instant::now()),
        }
    }

    pub(super) fn set(&self, n: u64) {
        match &self.bar {
            Some(b) => b.set_position(n),
            None if self.last_log.get().elapsed() >= Duration::from_secs(5) => {
                self.last_log.set(Instant::now());
                tracing::info!(phase = %self.label, done = n, total = self.total, "bench progress");
            }
            None => {}
        }
    }

    pub(super) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
