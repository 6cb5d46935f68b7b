//! The Durable Streams HTTP client: everything ds-sync says to a DS server goes through
//! [`DsClient`].
//!
//! ```text
//!  WAL writer ── ensure_stream (PUT) ──┐               status + headers only
//!             ── append (POST + seq) ──┤              ┌─ 2xx ────────────────▶ Ok
//!  ingest ───── subscribe (SSE) ───────┼─▶ DsClient ─▶┼─ 409 + seq, open ─────▶ AlreadyWritten
//!         ───── read_stream (catch-up) ┤   (pooled,   ├─ 404 409 410 413 4xx ─▶ stop, hint
//!  tooling ──── head, read, read_all ──┘   timeouts)  └─ 5xx 429 timeout ─────▶ Transient: retry
//! ```
//!
//! **Status codes decide, never error text.** The servers ds-sync supports word their errors
//! differently (problem+json with a `code` on one, plain text on the others), but agree on
//! status codes and protocol headers. So a response is classified in one pure function
//! ([`classify_append`], [`classify_status`]) from its status and headers; the body is read
//! only for the message ([`ServerReply`]: the problem details' `title`, `code`, `type` and
//! `detail`, or the text) and for the hint of a 413 (a full stream or a large request). Transient versus permanent is decided there, where it is known, so
//! callers retry with [`Backoff`] or stop with [`DsError::hint`] without inspecting anything.
//!
//! **Exactly-once appends.** A writer that sends a deterministic `Stream-Seq` (a zero-padded
//! commit LSN plus chunk number) gets [`AppendOutcome::AlreadyWritten`] for a chunk the
//! server already holds, so replaying WAL after a crash writes no duplicates.
//!
//! **Offsets are opaque.** They are passed through, percent-encoded in queries, and compared
//! bytewise by callers; never parsed.

mod access;
mod backoff;
mod body;
mod catch_up;
mod client;
mod error;
mod reply;
mod status;
mod subscription;
mod url;

pub use access::{DsAccess, DsTls, parse_header};
pub use backoff::{Backoff, DEFAULT_INITIAL, DEFAULT_MAX};
pub use body::BodyRead;
pub use catch_up::CatchUpRead;
pub use client::{ClientOptions, DsClient, EVENT_STREAM, JSON, OFFSET_START, ReadBatch};
pub use error::{BODY_PREVIEW_CHARS, DsError, too_large_hint};
pub use reply::{PROBLEM_JSON, ServerReply, TooLargeKind};
pub use status::{
    AppendOutcome, Failure, STREAM_CLOSED, STREAM_NEXT_OFFSET, STREAM_SEQ, STREAM_UP_TO_DATE,
    classify_append, classify_status,
};
pub use subscription::SseSubscription;
pub use url::STREAM_PATH;
