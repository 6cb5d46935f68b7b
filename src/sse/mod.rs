//! Server-Sent Events as Durable Streams servers send them, decoded as the bytes arrive: a
//! pure, incremental SSE parser ([`parser`]), a splitter of JSON arrays into their messages
//! ([`array`]), both together as the DS reading of a body ([`decoder`]), and the control
//! event's shape ([`ds`]). No I/O here: the HTTP client pushes body chunks in and acts on the
//! items that come out.
//!
//! ```text
//! body chunks ─push─► SseParser ─┬─► Comment, Retry ───► keepalive, ignored
//!                   (event: data ├─► Data pieces ─► ArraySplitter ─► one item per message
//!                    streamed)   │                                   DataEnd
//!                                ├─► event: control ──► Control: commit what came before
//!                                │                      with its streamNextOffset
//!                                ├─► other events ────► skipped
//!                                └─► Oversized ───────► a buffered event over its limit
//! ```
//!
//! **Offsets come only from control events.** DS servers send no `id:` lines; the
//! `streamNextOffset` of `event: control` is the only position a reader can resume from,
//! and it is opaque (never parsed, only compared bytewise). A control whose offset cannot be
//! read is an error, not something to skip: committing past it would lose its data.
//!
//! **Messages come out one by one, as they arrive.** Servers send one or several
//! `event: data` frames and then one control for all of them (one merges a whole backlog into
//! a single data event of any size, another sends data, data, data, control). The data of a
//! data event is never buffered whole: each message is handed out once complete, and the
//! caller decides what to hold until the control (ingest commits them in one transaction
//! with the control's offset, so the stored offset never runs ahead of the stored rows).
//!
//! **Memory is bounded.** The parser never holds a whole line nor a streamed event; the
//! splitter holds one message at a time (past its limit only a prefix); an event the parser
//! buffers (controls, other types) is counted past its limit and reported as
//! [`SseItem::Oversized`], and parsing goes on.

pub mod array;
pub mod decoder;
pub mod ds;
mod fuzz;
pub mod parser;
#[cfg(test)]
mod parser_tests;

pub use array::{ArrayItem, ArraySplitter};
pub use decoder::{DsDecoder, DsItem};
pub use ds::{Control, DsEventError, parse_control};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use fuzz::chunks as fuzz_chunks;
pub use fuzz::{fuzz_decode, fuzz_parse};
pub use parser::{SseEvent, SseItem, SseParser};
