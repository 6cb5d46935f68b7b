//! The integration test kit: every helper the tests share, in one place.
//!
//! * [`cluster`]: PostgreSQL: the shared cluster, clusters of their own, a fresh [`TestDb`]
//!   per test, [`connect`].
//! * [`process`]: the `ds-sync` binary: one-shot runs ([`run_ds_sync`], [`Run`]) and a
//!   running `ds-sync run` ([`CaptureProcess`]: its log, signals, exit).
//! * [`wait`]: the one way to wait for a condition ([`wait_until`], [`Wait`] for a stall
//!   timeout, a process that must keep running, context on failure).
//! * [`capture`]: capture scenarios ([`Scenario`]), capture streaming ([`start_streaming`],
//!   [`wait_streaming_anew`] after a reconnect or takeover), slot positions ([`wal_now`],
//!   [`wait_confirmed`]), requested snapshots ([`wait_snapshot_done`]).
//! * [`stream`]: streams as a client sees them ([`read`], [`materialize`],
//!   [`wait_converged`]) and the `items` workload ([`ITEMS`], [`spawn_writer`]).
//! * [`http`]: raw HTTP to the DS server.
//! * [`ingest`]: ingest running in the test process ([`ingest::Ingest`]) and queries on what
//!   it stored ([`ingest::Setup`]).
//! * [`tls`]: certificates made by the test, a TLS-only cluster.
//! * [`fault_proxy`]: a TCP proxy that freezes, partitions, delays and cuts connections (the
//!   library's, `ds_sync::bench::fault_proxy`, which `bench chaos` uses too).
//! * [`official_client`]: the official TypeScript client as an oracle (node).
//! * [`physical`]: a primary with a physical standby made by a base backup (failover slots).
//! * [`prom`]: a strict parser of what `/metrics` serves.
//!
//! * [`Rng`] (here): a seeded generator for tests that act at random moments.
//!
//! The most used names are re-exported here (`crate::kit::{scenario, wait_until, ...}`);
//! the specialised modules are used by path (`crate::kit::ingest::Setup`). The kit itself
//! is tested in `harness.rs`.
//!
//! Tests wait on conditions, never sleep and hope: a row, a slot position, a stream's
//! messages, `/metrics`, through [`wait_until`] or a kit helper built on it. The ds-sync log
//! is waited on only where the line is the behaviour under test or nothing else shows the
//! moment (e.g. the port a `--listen 127.0.0.1:0` server got).

#![allow(dead_code)]

pub mod capture;
pub mod cluster;
pub mod ds_server;
pub mod http;
pub mod ingest;
pub mod official_client;
pub mod physical;
pub mod process;
pub mod prom;
pub mod stream;
pub mod tls;
pub mod wait;

pub use capture::{
    Scenario, request_snapshot, scenario, slot_passed, start_streaming, streaming_pid,
    wait_confirmed, wait_slot_streaming, wait_snapshot_done, wait_streaming, wait_streaming_anew,
    wal_now,
};
pub use cluster::{
    NEEDS_PG15, TestDb, backend_pid, connect, has_row_filters, own_cluster_db, server_major,
    start_cluster, test_db, test_db_in,
};
pub use ds_server::TestServer;
pub use ds_sync::bench::fault_proxy;
pub use http::http;
pub use process::{CaptureProcess, Run, run_ds_sync};
pub use stream::{
    ITEMS, control, materialize, materialize_by_key, read, spawn_writer, stream_keys,
    wait_converged, wait_keys_exactly,
};
pub use wait::{Wait, wait_until};

/// A seeded xorshift for tests that act at random moments; they print the seed, so a
/// failing run can be told apart. The state must not be zero.
pub struct Rng(pub u64);

impl Rng {
    /// An odd seed from the clock.
    pub fn clock_seed() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1)
    }

    /// The next number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
