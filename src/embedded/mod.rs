//! Throwaway infrastructure for the test suite and `ds-sync dev`: a private PostgreSQL
//! cluster in a temp directory and a Durable Streams server in this process.
//!
//! Both are real servers, not stand-ins: the cluster is `initdb` + `postgres` from the
//! machine's PostgreSQL installation, and the DS server is the `durable-streams-server` crate
//! serving its own router on a loopback port.

mod ds_server;
mod postgres;
mod spawn;

pub use ds_server::{DsServer, DsServerOptions, DsServerTls, RouterLayer};
pub use postgres::{LocalPostgres, PostgresOptions, PostgresSsl, find_postgres_bin_dir};

/// Errors of the embedded servers.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH or under \
         /usr/lib/postgresql/*/bin"
    )]
    NoPostgresBinaries,
    #[error("running as root, and there is no unprivileged 'postgres' user to run the cluster as")]
    NoUnprivilegedUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("initdb failed ({status}): {output}")]
    Initdb { status: String, output: String },
    #[error("postgres did not become ready: {reason}\n--- server log (tail) ---\n{log}")]
    PostgresStart { reason: String, log: String },
    #[error("the DS server could not start: {0}")]
    DsServer(String),
}

impl EmbeddedError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            EmbeddedError::NoPostgresBinaries => Some(
                "Install PostgreSQL with `apt-get install -y postgresql` (Debian/Ubuntu), or set DS_SYNC_PG_BIN to the directory holding initdb and postgres.".into(),
            ),
            EmbeddedError::NoUnprivilegedUser => Some(
                "Create one with `useradd --system --no-create-home postgres`, or run as a normal user.".into(),
            ),
            _ => None,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedError {
        let what = what.into();
        move |source| EmbeddedError::Io { what, source }
    }
}
