//! Helpers of the ingest tests: ingest running in this process against a test database and
//! an in-process DS server, raw HTTP for what the DS client does not send (other content
//! types, closing a stream), and queries on what ingest stored.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use ds_sync::ds::{ClientOptions, DsClient};
use ds_sync::embedded::{DsServer, DsServerOptions};
use ds_sync::ingest::{self, IngestConfig, IngestError};
use ds_sync::pg::PgTarget;

use crate::kit::{TestDb, Wait, test_db, wait_until};

/// Generous bound for things that take well under a second when all is well.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Ingest running in this process.
pub struct Ingest {
    pub shutdown: CancellationToken,
    pub hard_stop: CancellationToken,
    handle: JoinHandle<Result<(), IngestError>>,
}

impl Ingest {
    pub async fn start(
        db: &TestDb,
        ds_url: &str,
        streams: &[&str],
        max_event_bytes: usize,
    ) -> Ingest {
        Ingest::start_with(db, ds_url, streams, max_event_bytes, |_| {}).await
    }

    /// Starts ingest with a configuration changed by `tune` (memory bound, idle timeout).
    pub async fn start_with(
        db: &TestDb,
        ds_url: &str,
        streams: &[&str],
        max_event_bytes: usize,
        tune: impl FnOnce(&mut IngestConfig),
    ) -> Ingest {
        let target = PgTarget::parse(&db.url, None).expect("test db url");
        let streams = streams.iter().map(|s| (*s).to_owned()).collect();
        let mut cfg = IngestConfig::new(target, ds_url, streams, max_event_bytes).expect("config");
        tune(&mut cfg);
        let shutdown = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let (s, h) = (shutdown.clone(), hard_stop.clone());
        let handle = tokio::spawn(async move { ingest::run(&cfg, &s, &h).await });
        Ingest {
            shutdown,
            hard_stop,
            handle,
        }
    }

    /// Waits for ingest to stop on its own with an error; panics when it is still running
    /// after [`PATIENCE`] or ends without one.
    pub async fn failure(self) -> IngestError {
        let result = tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("ingest stops with an error")
            .expect("ingest task");
        match result {
            Ok(()) => panic!("ingest ended without an error"),
            Err(e) => e,
        }
    }

    /// Graceful stop; panics if ingest failed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("ingest stops after shutdown")
            .expect("ingest task");
        if let Err(e) = result {
            panic!("ingest failed: {e}");
        }
    }
}

/// A test database, a DS server and a client for it.
pub struct Setup {
    pub db: TestDb,
    pub sql: tokio_postgres::Client,
    pub server: super::TestServer,
    pub ds: DsClient,
}

pub async fn setup(label: &str, opts: DsServerOptions) -> Setup {
    let server = super::TestServer::start(opts).await;
    let ds = DsClient::new(&server.url(), ClientOptions::default()).expect("ds client");
    let db = test_db(label).await;
    let sql = db.client().await;
    Setup {
        db,
        sql,
        server,
        ds,
    }
}

impl Setup {
    /// A setup around a database and a DS server made by the test (e.g. a database in a
    /// cluster of its own).
    pub async fn from_parts(db: TestDb, server: DsServer) -> Setup {
        let server = super::TestServer::from(server);
        let ds = DsClient::new(&server.url(), ClientOptions::default()).expect("ds client");
        let sql = db.client().await;
        Setup {
            db,
            sql,
            server,
            ds,
        }
    }

    pub async fn post(&self, stream: &str, body: &str) {
        self.ds
            .append(stream, Bytes::from(body.to_owned()), None)
            .await
            .unwrap_or_else(|e| panic!("POST to {stream}: {e}"));
    }

    /// Rows of one stream.
    pub async fn count(&self, stream: &str) -> i64 {
        self.sql
            .query_one(
                "SELECT count(*) FROM session_events WHERE stream_name = $1",
                &[&stream],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0)
    }

    /// Waits until `stream` has exactly `n` rows (panics if it gets more).
    #[track_caller]
    pub fn wait_rows<'a>(&'a self, stream: &'a str, n: i64) -> impl Future<Output = ()> + 'a {
        wait_until(
            format!("{n} rows of {stream}"),
            PATIENCE,
            move || async move {
                let got = self.count(stream).await;
                assert!(got <= n, "{stream}: {got} rows, expected {n}");
                if got == n {
                    Ok(())
                } else {
                    Err(format!("{got} rows"))
                }
            },
        )
    }

    /// Waits until the subscription reports `status`.
    #[track_caller]
    pub fn wait_status<'a>(
        &'a self,
        stream: &'a str,
        status: &'a str,
    ) -> impl Future<Output = ()> + 'a {
        wait_until(
            format!("{stream} to be {status}"),
            PATIENCE,
            move || async move {
                let row = self
                    .sql
                    .query_opt(
                        "SELECT status FROM ds_sync.subscriptions WHERE stream_name = $1",
                        &[&stream],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                match row.map(|r| r.get::<_, String>(0)) {
                    Some(now) if now == status => Ok(()),
                    Some(now) => Err(format!("status {now}")),
                    None => Err("no subscription".into()),
                }
            },
        )
    }

    /// `event_key` of the rows of one stream, in the order they were stored.
    pub async fn event_keys(&self, stream: &str) -> Vec<Option<String>> {
        self.sql
            .query(
                "SELECT event_key FROM session_events WHERE stream_name = $1 ORDER BY id",
                &[&stream],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// The error a subscription stopped with.
    pub async fn subscription_error(&self, stream: &str) -> String {
        self.sql
            .query_one(
                "SELECT error FROM ds_sync.subscriptions WHERE stream_name = $1",
                &[&stream],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// The most a stream's subscription held in memory, as it reports it.
    pub async fn peak_buffered(&self, stream: &str) -> i64 {
        self.sql
            .query_one(
                "SELECT peak_buffered_bytes FROM ds_sync.subscriptions WHERE stream_name = $1",
                &[&stream],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Every row of a stream is there once: `n` rows, `n` distinct `payload->>field` values.
    pub async fn expect_exactly_once(&self, stream: &str, field: &str, n: i64) {
        let row = self
            .sql
            .query_one(
                "SELECT count(*), count(DISTINCT payload->>$2) FROM session_events \
                 WHERE stream_name = $1",
                &[&stream, &field],
            )
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, i64>(0), row.get::<_, i64>(1)),
            (n, n),
            "{stream}: rows and distinct {field} values"
        );
    }

    /// The stored offset of a stream.
    pub async fn stored_offset(&self, stream: &str) -> Option<String> {
        self.sql
            .query_opt(
                "SELECT ds_offset FROM ds_sync.stream_offsets WHERE stream_name = $1",
                &[&stream],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0))
    }

    /// Waits until the stored offset of `stream` is its tail.
    #[track_caller]
    pub fn wait_caught_up<'a>(&'a self, stream: &'a str) -> impl Future<Output = ()> + 'a {
        let wait = Wait::new(format!("{stream} committed up to its tail"), PATIENCE);
        async move {
            let tail = self
                .ds
                .head(stream)
                .await
                .expect("HEAD")
                .expect("stream exists");
            wait.until(|| async {
                match self.stored_offset(stream).await {
                    Some(offset) if offset == tail => Ok(()),
                    other => Err(format!("stored offset {other:?}, tail {tail}")),
                }
            })
            .await;
        }
    }
}
