//! DB → stream: row changes from a logical replication slot into Durable Streams.
//!
//! ```text
//!  source ──▶ pgoutput::decode ──▶ message (State Protocol) ──▶ route ──▶ batch ──▶ sender
//!    ▲                                                                              │
//!    └──────────────── ledger: confirm only what the DS server acknowledged ◀───────┘
//! ```
//!
//! * [`startup`]: the order capture starts in (connect, schema, publication, slot decision,
//!   snapshot, stream), one function that reads top to bottom.
//! * [`source`]: publication and slot setup, the replication connection, catalog lookups.
//! * [`message`]: decoded rows to State Protocol change messages (pure).
//! * [`route`]: table (and column values) to stream name (pure).
//! * [`seq`]: a message's position `(commit LSN, index)` and its `Stream-Seq` text (pure).
//! * [`batch`]: per-stream batching, one POST in flight per stream, recovery mode.
//! * [`sender`]: one POST with retries until the server has it.
//! * [`ledger`]: which WAL positions may be confirmed (pure).
//! * [`streamed`]: transactions streamed while they run (`--pgoutput-protocol 2`), held
//!   until their Stream Commit (replayed then as one transaction) or Stream Abort.
//! * [`streams`]: what is recorded about a stream before capture writes to it (the table →
//!   stream registry for TRUNCATE, the stream's tail for the source check).
//! * [`identity`]: the source incarnation, so a 409 counts as "already written" only when
//!   it is provably this source's own write.
//! * [`adopt`]: handing a stream written by another source to this one.
//! * [`standby`]: one active process per slot through a session advisory lock; the others
//!   wait as standbys and take over when its session ends (or hangs).
//! * [`fence`]: a process that was taken over sends nothing more and stops.
//! * [`slot_lost`]: `--on-slot-lost`: stop, or recreate the slot, reset and snapshot again.
//! * [`pipeline`]: the loop that ties them together, and reconnection.
//! * [`keepalive`]: when a keepalive's WAL position may be confirmed, and the probe row that
//!   guards it.
//! * [`whole_rows`]: REPLICA IDENTITY FULL for tables seen while streaming; reports updates
//!   that arrive without unchanged TOASTed values.
//!
//! Exactly once: every message carries `(commit LSN, index in its transaction)`, which a
//! replay recomputes identically; each POST sends its last message's value as
//! `Stream-Seq`, so the server refuses what it already holds, and the slot only advances
//! past transactions the server acknowledged in full.

pub mod adopt;
pub mod batch;
mod error;
pub mod fence;
pub mod identity;
mod keepalive;
pub mod ledger;
#[cfg(test)]
mod ledger_props;
pub mod message;
mod pipeline;
#[cfg(test)]
mod pipeline_props;
pub mod route;
mod sender;
pub mod seq;
pub mod slot_lost;
pub mod snapshot;
pub mod source;
pub mod standby;
pub mod startup;
pub mod streamed;
pub mod streams;
pub mod whole_rows;

pub use error::CaptureError;
pub use pipeline::{CaptureConfig, run};
