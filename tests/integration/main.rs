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
mod fault_proxy;
mod harness;
mod ingest;
mod ingest_cli;
mod ingest_faults;
mod ingest_kit;
mod ingest_memory;
mod ingest_scale;
mod init;
mod publication;
mod resnapshot;
mod slot;
mod snapshot;
