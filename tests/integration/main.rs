//! Integration tests: every test runs against a real PostgreSQL cluster (one per test
//! binary, a fresh database per test) and, where it needs one, a real Durable Streams server
//! started in-process. CLI tests run the `ds-sync` binary itself.

mod kit;

mod bench;
mod capture;
mod capture_faults;
mod cli;
mod dev;
mod ds_client;
mod harness;
mod ingest;
mod ingest_cli;
mod ingest_kit;
mod ingest_scale;
mod init;
mod publication;
mod reconnect;
mod resnapshot;
mod resnapshot_edges;
mod shutdown;
mod slot;
mod snapshot;
mod waits;
