//! PostgreSQL for the tests: one shared cluster per test binary, clusters of their own for
//! tests that need one, and a fresh database per test.
//!
//! The shared cluster lives in a static (one per test binary); statics are never dropped, so
//! an `atexit` hook stops it and removes its directory when the test binary exits, panicking
//! tests included. If the binary is killed outright, the server still dies with it (see
//! `ds_sync::embedded`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use ds_sync::embedded::{LocalPostgres, PostgresOptions};

use super::process::{Run, run_ds_sync};

struct Shared {
    port: u16,
    password: String,
    server: Mutex<Option<LocalPostgres>>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

extern "C" fn stop_shared_cluster() {
    if let Some(shared) = SHARED.get()
        && let Ok(mut server) = shared.server.lock()
    {
        server.take();
    }
}

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let pg = start_cluster(&PostgresOptions::default());
        // SAFETY: registering a plain extern "C" function with no arguments.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(stop_shared_cluster);
        }
        Shared {
            port: pg.port(),
            password: pg.password().to_string(),
            server: Mutex::new(Some(pg)),
        }
    })
}

/// Starts a private cluster, or fails the test with the error and its hint.
pub fn start_cluster(opts: &PostgresOptions) -> LocalPostgres {
    match LocalPostgres::start(opts) {
        Ok(pg) => pg,
        Err(e) => panic!(
            "cannot start a PostgreSQL cluster for the tests: {e}\n{}",
            e.hint().unwrap_or_default()
        ),
    }
}

/// A fresh database in some cluster.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// Superuser URL of the cluster's `postgres` database (for CREATE DATABASE etc.).
    pub admin_url: String,
    pub port: u16,
    pub password: String,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A database named after the test, in the shared cluster.
pub async fn test_db(label: &str) -> TestDb {
    let s = shared();
    create_db(s.port, &s.password, label).await
}

/// A database in a cluster of its own, for tests that run a logical decoding consumer.
///
/// With decoders of other databases of the same cluster streaming, a slot created at that
/// moment was seen (about one run in five) to stream nothing for its publication: pgoutput
/// skipped every transaction (cause not established; see the README's known issue).
/// Capture tests therefore do not share a cluster. The cluster stops when the returned
/// value drops.
pub async fn own_cluster_db(label: &str) -> (LocalPostgres, TestDb) {
    let pg = tokio::task::spawn_blocking(|| start_cluster(&PostgresOptions::default()))
        .await
        .expect("starting a cluster");
    let db = create_db(pg.port(), pg.password(), label).await;
    (pg, db)
}

/// A database named after the test, in a given cluster.
pub async fn test_db_in(pg: &LocalPostgres, label: &str) -> TestDb {
    create_db(pg.port(), pg.password(), label).await
}

async fn create_db(port: u16, password: &str, label: &str) -> TestDb {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("t_{label}_{n}");
    let url_for = |db: &str| format!("postgres://postgres:{password}@127.0.0.1:{port}/{db}");
    let admin_url = url_for("postgres");
    let admin = connect(&admin_url).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
    TestDb {
        url: url_for(&name),
        name,
        admin_url,
        port,
        password: password.to_string(),
    }
}

/// Connects with tokio-postgres, driving the connection on a task.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test cluster: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

impl TestDb {
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// A slot name unique in the cluster (slots are cluster-wide, databases are not).
    pub fn slot(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.name)
    }

    /// Runs `ds-sync` against this database with a clean environment.
    pub async fn ds_sync(&self, args: &[&str]) -> Run {
        run_ds_sync(args, &[("POSTGRES_URL", self.url.as_str())]).await
    }
}

/// The pid of `client`'s backend (a session a test holds a lock or a transaction in).
pub async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("reading the backend pid")
        .get(0)
}

/// The major version of the server `client` is connected to (the matrix in `.ci/run` runs the
/// end-to-end tests on several).
pub async fn server_major(client: &tokio_postgres::Client) -> i32 {
    ds_sync::pg::server_version(client)
        .await
        .expect("reading the server version")
        .major()
}

/// Whether the server has row filters and column lists in publications (PostgreSQL 15+).
pub async fn has_row_filters(client: &tokio_postgres::Client) -> bool {
    ds_sync::pg::server_version(client)
        .await
        .expect("reading the server version")
        .has_row_filters()
}

/// What `ds-sync` says when a row filter or column list meets an older server.
pub const NEEDS_PG15: &str = "needs PostgreSQL 15 or later";
