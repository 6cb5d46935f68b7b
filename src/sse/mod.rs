//! Server-Sent Events as Durable Streams servers send them: a pure, incremental parser
//! ([`parser`]) and the DS reading of its events ([`ds`]). No I/O here: the HTTP client
//! pushes body chunks in and acts on the items that come out.
//!
//! ```text
//! body chunks ─push─► SseParser ─┬─► Comment, Retry ──► keepalive, ignored
//!                                ├─► Oversized ───────► reported; the caller decides
//!                                └─► Event ─► classify ─┬─► Data ─────► buffer rows
//!                                                       ├─► Control ──► commit buffered rows
//!                                                       │               with streamNextOffset
//!                                                       ├─► Other ────► skipped
//!                                                       └─► error ────► nothing to commit from
//! ```
//!
//! **Offsets come only from control events.** DS servers send no `id:` lines; the
//! `streamNextOffset` of `event: control` is the only position a reader can resume from,
//! and it is opaque (never parsed, only compared bytewise). A control whose offset cannot be
//! read is an error, not something to skip: committing past it would lose its data.
//!
//! **Data is buffered until a control.** Servers send one or several `event: data` frames
//! and then one control for all of them (one merges a backlog into a single data event,
//! another sends data, data, data, control). Rows are committed in one transaction with the
//! control's offset, so the stored offset never runs ahead of the stored rows: a crash or a
//! dropped connection before the control loses only uncommitted rows, which are read again
//! from the last committed offset.
//!
//! **Memory is bounded.** The parser never holds a whole line; an event larger than its limit
//! is counted and reported as [`SseItem::Oversized`] with a preview, and parsing goes on.

pub mod ds;
mod fuzz;
pub mod parser;
#[cfg(test)]
mod parser_tests;

pub use ds::{Control, DsEvent, DsEventError, classify};
pub use fuzz::fuzz_parse;
pub use parser::{SseEvent, SseItem, SseParser};
