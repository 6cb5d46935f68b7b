//! Integration tests: every test runs against a real PostgreSQL cluster (one per test
//! binary, a fresh database per test) and, where it needs one, a real Durable Streams server
//! started in-process. CLI tests run the `ds-sync` binary itself; end-to-end tests read the
//! streams with the official TypeScript client (`kit::official_client`, node). Every helper
//! the tests share is in `kit` (its header says what is where).

mod kit;

mod app_writes;
mod bench;
mod capture;
mod capture_fanout;
mod capture_faults;
mod capture_fence;
mod capture_groups;
mod capture_source;
mod capture_standby;
mod capture_streaming;
mod capture_truncate;
mod cli;
mod dev;
mod docker;
mod ds_auth;
mod ds_client;
mod ds_tls;
mod failover_slot;
mod harness;
mod ingest;
mod ingest_cli;
mod ingest_faults;
mod ingest_memory;
mod ingest_scale;
mod ingest_share;
mod init;
mod keepalive;
mod logs;
mod observe;
mod partitions;
mod publication;
mod publication_rules;
mod reconnect;
mod resnapshot;
mod resnapshot_edges;
mod retention;
mod server_errors;
mod shutdown;
mod slot;
mod slot_lost;
mod snapshot;
mod stream_names;
mod tls_pg;
mod waits;
mod whole_rows;
