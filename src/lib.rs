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
//! * [`pg`]: connection targets (password never shown), SQL identifier safety.
//! * [`slot`], [`publication`]: replication slot and publication management.
//! * [`schema`]: `ds-sync init`: embedded `sql/` and the server prerequisite checks.
//! * [`pgoutput`]: the pure pgoutput v1 decoder and relation cache.
//! * [`values`]: PostgreSQL text-format values to JSON, by type oid.
//! * [`sse`]: the pure SSE parser and Durable Streams event classification.
//! * [`embedded`]: a throwaway local PostgreSQL cluster and an in-process DS server, used by
//!   the test suite and by `ds-sync dev`.

pub mod cli;
pub mod config;
pub mod embedded;
pub mod pg;
pub mod pgoutput;
pub mod publication;
pub mod schema;
pub mod slot;
pub mod sse;
#[cfg(test)]
mod test_rng;
pub mod values;
