//! Waits that explain themselves: work that can wait on other sessions for a long time
//! (creating a replication slot, reading a chunk behind a lock) logs, every few seconds,
//! which sessions it waits for and what to do about them.
//!
//! ```text
//!  work ─────────────────────────────────────────────▶ done
//!    every REPORT_EVERY: report(waited) ─▶ pg_stat_activity / pg_locks / pg_prepared_xacts
//!                                          ─▶ one log line per blocking session
//! ```
//!
//! **Who blocks whom.** A session waiting for a heavyweight lock (a row, a table, another
//! transaction's id) names its holders in `pg_blocking_pids`. Creating a logical slot also
//! waits for every transaction that had an xid when it started (the slot's first snapshot
//! needs them finished): those are sessions whose `backend_xid` is set and whose transaction
//! began before the wait, and prepared transactions, in any database of the cluster.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;

use crate::pg::{PgError, PgTarget};

/// How often a wait is reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Lines logged per report at most; the rest are counted.
const MAX_LINES: usize = 10;

/// Runs `work`; every `every` until it finishes, `report` is called with how long it has
/// waited so far (meanwhile `work` is not polled, which only delays noticing its end).
pub async fn reporting<T>(
    work: impl Future<Output = T>,
    every: Duration,
    mut report: impl AsyncFnMut(Duration),
) -> T {
    let started = Instant::now();
    let mut work = std::pin::pin!(work);
    let mut next = started + every;
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            () = tokio::time::sleep_until(next) => {
                report(started.elapsed()).await;
                next = Instant::now() + every;
            }
        }
    }
}

/// A session another one waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocker {
    /// 0 for a prepared transaction.
    pub pid: i32,
    /// `application_name`, or `prepared transaction <gid>`.
    pub application_name: String,
    /// `pg_stat_activity.state` (`idle in transaction`, `active`, ...), or `prepared`.
    pub state: String,
    pub database: String,
    /// Where it connects from (`local` for a Unix socket), or the prepared transaction's
    /// owner.
    pub client: String,
    /// How long its transaction has been open, in seconds.
    pub transaction_age_s: u64,
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pid == 0 {
            return write!(
                f,
                "{} (owner {}, database {}, prepared {} s ago)",
                self.application_name, self.client, self.database, self.transaction_age_s
            );
        }
        let app = if self.application_name.is_empty() {
            "(no application_name)"
        } else {
            &self.application_name
        };
        write!(
            f,
            "the transaction of pid {} (application {app}, {}, database {}, client {}, open {} s)",
            self.pid, self.state, self.database, self.client, self.transaction_age_s
        )
    }
}

const BLOCKERS_SQL: &str = "\
    SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.state, ''), \
           coalesce(a.datname::text, ''), coalesce(a.client_addr::text, 'local'), \
           coalesce(extract(epoch FROM now() - a.xact_start), 0)::float8 \
    FROM pg_stat_activity a \
    WHERE a.pid <> $1 AND a.pid <> pg_backend_pid() \
      AND (a.pid = ANY(pg_blocking_pids($1)) \
           OR ($2::float8 IS NOT NULL AND a.backend_xid IS NOT NULL \
               AND a.xact_start <= now() - make_interval(secs => $2::float8))) \
    UNION ALL \
    SELECT 0, 'prepared transaction ' || quote_literal(p.gid), 'prepared', p.database::text, p.owner::text, \
           extract(epoch FROM now() - p.prepared)::float8 \
    FROM pg_prepared_xacts p \
    WHERE $2::float8 IS NOT NULL AND p.prepared <= now() - make_interval(secs => $2::float8) \
    ORDER BY 6 DESC";

/// The sessions backend `pid` waits for: the holders of locks it waits for and, with
/// `xids_older_than`, every session (and prepared transaction) whose transaction has an xid
/// and began at least that long ago. Read on `monitor`, another connection.
pub async fn blockers(
    monitor: &Client,
    pid: i32,
    xids_older_than: Option<Duration>,
) -> Result<Vec<Blocker>, PgError> {
    let older: Option<f64> = xids_older_than.map(|d| d.as_secs_f64());
    let rows = monitor
        .query(BLOCKERS_SQL, &[&pid, &older])
        .await
        .map_err(|e| PgError::query("reading the sessions a wait depends on", &e))?;
    Ok(rows
        .iter()
        .map(|r| Blocker {
            pid: r.get(0),
            application_name: r.get(1),
            state: r.get(2),
            database: r.get(3),
            client: r.get(4),
            transaction_age_s: r.get::<_, f64>(5).max(0.0) as u64,
        })
        .collect())
}

/// Logs what `what` (e.g. "creating replication slot 'ds_sync'") has waited `waited` for:
/// one line per blocker (at most [`MAX_LINES`]) with `advice`, or a line saying no session
/// blocks it.
pub fn log_blockers(what: &str, waited: Duration, blockers: &[Blocker], advice: &str) {
    let waited_s = waited.as_secs();
    if blockers.is_empty() {
        tracing::warn!(
            waited_s,
            "{what} is taking long; no session holds it up (the server may be busy or waiting for WAL)"
        );
        return;
    }
    for b in blockers.iter().take(MAX_LINES) {
        tracing::warn!(waited_s, pid = b.pid, "{what} waits for {b}: {advice}");
    }
    if blockers.len() > MAX_LINES {
        tracing::warn!(
            waited_s,
            more = blockers.len() - MAX_LINES,
            "{what} waits for more sessions"
        );
    }
}

/// The pid of `client`'s backend: the one a [`Monitor`] reports the waits of.
pub async fn backend_pid(client: &Client) -> Result<i32, PgError> {
    let row = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(|e| PgError::query("reading the backend pid", &e))?;
    Ok(row.get(0))
}

/// A connection of its own for looking up what a wait depends on (the waiting connection is
/// busy), opened at the first report.
pub struct Monitor {
    target: PgTarget,
    client: Option<Client>,
}

/// `application_name` of the monitor connection.
pub const MONITOR_APPLICATION_NAME: &str = "ds-sync/monitor";

impl Monitor {
    pub fn new(target: &PgTarget) -> Monitor {
        Monitor {
            target: target.with_application_name(MONITOR_APPLICATION_NAME),
            client: None,
        }
    }

    /// Logs what backend `pid`, doing `what`, has waited `waited` for (see [`blockers`]).
    pub async fn report(
        &mut self,
        pid: i32,
        xids_older_than: Option<Duration>,
        what: &str,
        waited: Duration,
        advice: &str,
    ) {
        let found = match &self.client {
            Some(c) if !c.is_closed() => blockers(c, pid, xids_older_than).await,
            _ => match self.target.connect().await {
                Ok(c) => blockers(self.client.insert(c), pid, xids_older_than).await,
                Err(e) => Err(e),
            },
        };
        match found {
            Ok(found) => log_blockers(what, waited, &found, advice),
            Err(e) => tracing::warn!(
                waited_s = waited.as_secs(),
                error = %e,
                "{what} is taking long; cannot look up what it waits for"
            ),
        }
    }

    /// Runs `work` on the connection of backend `pid`, saying every [`REPORT_EVERY`] who
    /// holds the lock it waits for: a lock on a table (an ALTER TABLE, or one queued behind
    /// a long transaction) holds up whatever reads it. `pid` 0 (unknown) reports nothing.
    pub async fn report_lock_waits<T>(
        &mut self,
        work: impl Future<Output = T>,
        pid: i32,
        what: &str,
    ) -> T {
        reporting(work, REPORT_EVERY, async |waited| {
            if pid != 0 {
                self.report(pid, None, what, waited, LOCK_ADVICE).await;
            }
        })
        .await
    }
}

/// What to do about a transaction that holds up slot creation.
pub const SLOT_CREATION_ADVICE: &str = "creating a logical replication slot waits until \
    every transaction that was running when it started has ended. Commit or roll that \
    transaction back; end an abandoned session with SELECT pg_terminate_backend(pid), a \
    prepared one with ROLLBACK PREPARED or COMMIT PREPARED";

/// What to do about a session that holds a lock ds-sync waits for.
pub const LOCK_ADVICE: &str = "it holds a lock ds-sync needs. Commit or roll its \
    transaction back; end an abandoned session with SELECT pg_terminate_backend(pid)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blockers_read_as_sentences() {
        let mut b = Blocker {
            pid: 42,
            application_name: "app-worker".into(),
            state: "idle in transaction".into(),
            database: "app".into(),
            client: "10.0.0.7".into(),
            transaction_age_s: 95,
        };
        assert_eq!(
            b.to_string(),
            "the transaction of pid 42 (application app-worker, idle in transaction, database app, client 10.0.0.7, open 95 s)"
        );
        b.pid = 0;
        b.application_name = "prepared transaction 'tx1'".into();
        b.client = "app_owner".into();
        assert_eq!(
            b.to_string(),
            "prepared transaction 'tx1' (owner app_owner, database app, prepared 95 s ago)"
        );
    }

    #[tokio::test]
    async fn reports_come_while_the_work_waits_and_stop_when_it_ends() {
        let mut reports = Vec::new();
        let out = reporting(
            async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                "done"
            },
            Duration::from_millis(20),
            async |waited: Duration| reports.push(waited),
        )
        .await;
        assert_eq!(out, "done");
        assert!(!reports.is_empty(), "a long wait is reported");
        assert!(reports.windows(2).all(|w| w[0] < w[1]), "{reports:?}");
        assert!(reports[0] >= Duration::from_millis(20), "{reports:?}");
    }

    #[tokio::test]
    async fn quick_work_is_never_reported() {
        let mut reports = 0;
        let out = reporting(async { 7 }, REPORT_EVERY, async |_| reports += 1).await;
        assert_eq!((out, reports), (7, 0));
    }
}
