//! ds-sync keeps PostgreSQL and a Durable Streams (DS) server in sync in both directions.
//!
//! ```text
//!   Postgres WAL ──slot/pgoutput──▶ decode ──▶ State Protocol JSON ──POST──▶ DS streams
//!   DS streams ──SSE──▶ parse ──▶ binary COPY + offset, one transaction ──▶ session_events
//! ```
//!
//! Modules, one per concern:
//! * [`cli`]: the command line, configuration precedence, exit codes.
//! * [`config`]: flag > env > file > default.
//! * [`pg`]: connection targets (password never shown), libpq's TLS settings, keepalive,
//!   SQL identifier safety.
//! * [`keepalive`]: TCP keepalive on every socket to Postgres and the DS server.
//! * [`tls`]: rustls pieces shared by the Postgres connections and the DS client.
//! * [`lsn`]: WAL positions: their `X/Y` text (a malformed one is an error), order, arithmetic.
//! * [`slot`], [`publication`]: replication slot and publication management.
//! * [`schema`]: `ds-sync init`: embedded `sql/` and the server prerequisite checks.
//! * [`pgoutput`]: the pure pgoutput v1 decoder and relation cache.
//! * [`values`]: PostgreSQL text-format values to JSON, by type oid.
//! * [`sse`]: the pure SSE parser and Durable Streams event classification.
//! * [`ds`]: the Durable Streams HTTP client: create, append with `Stream-Seq`, read,
//!   subscribe over SSE; errors classified as transient or permanent from status codes.
//! * [`capture`]: DB → stream: the replication loop, LSN ledger, batching, delivery.
//! * [`ingest`]: stream → DB: SSE subscriptions, binary COPY with the offset in the same
//!   transaction, dead letters, subscriptions that change at run time.
//! * [`retention`]: `ds-sync prune`, `run --retention`, `init --partition-by`: old
//!   `session_events` rows and dead letters removed in bounded batches or whole partitions.
//! * `bench`: `ds-sync bench`, the load-test runner: scenarios next to their ceilings (cargo
//!   feature `bench`, off by default: not part of the sidecar binary).
//! * [`observe`]: Prometheus metrics, `/livez` and `/readyz` on `--listen`, `ds-sync health`.
//! * [`waits`]: long waits log which sessions they wait for and what to do.
//! * `fuzzing`: one fuzz entry point per parser (cargo feature `fuzzing`, used by the
//!   cargo-fuzz crate in `fuzz/`; its unit test replays the corpora and found crashes).
//! * [`embedded`]: a throwaway local PostgreSQL cluster and an in-process DS server, used by
//!   the test suite and by `ds-sync dev`.

#[cfg(feature = "bench")]
pub mod bench;
pub mod capture;
pub mod cli;
pub mod config;
pub mod ds;
pub mod embedded;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod ingest;
pub mod keepalive;
pub mod lsn;
pub mod observe;
pub mod pg;
pub mod pgoutput;
pub mod publication;
pub mod retention;
pub mod schema;
pub mod slot;
pub mod sse;
#[cfg(test)]
mod test_rng;
pub mod tls;
pub mod values;
pub mod waits;

/// The README quotes the documented encodings; these tests keep it from drifting.
#[cfg(test)]
mod readme_tests {
    const README: &str = include_str!("../README.md");

    fn flat(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn readme_quotes_the_value_mapping_and_encodings() {
        let readme = flat(README);
        for (name, doc) in [
            ("values::MAPPING_TABLE_MD", crate::values::MAPPING_TABLE_MD),
            (
                "KEY_ENCODING_DOC",
                crate::capture::message::KEY_ENCODING_DOC,
            ),
            (
                "UNCHANGED_TOAST_DOC",
                crate::capture::message::UNCHANGED_TOAST_DOC,
            ),
            ("STREAM_NAME_DOC", crate::capture::route::STREAM_NAME_DOC),
            ("TOAST_MODE_DOC", crate::publication::TOAST_MODE_DOC),
        ] {
            assert!(
                readme.contains(&flat(doc)),
                "README.md does not quote {name}"
            );
        }
    }
}
