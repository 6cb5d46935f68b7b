//! [`CatchUpRead`]: a plain (non-live) read of a stream from an offset, with its body split
//! into messages as it arrives.
//!
//! A catch-up read answers with the offset it ends at in its headers (`Stream-Next-Offset`),
//! before the first byte of the body. That is what lets a reader store a large backlog while
//! it arrives: every message of the body belongs to that offset, so rows can be written from
//! the first message on and committed with the offset once the body is complete. (On SSE the
//! offset comes in the control event after the data.) In JSON mode the body is a JSON array
//! of messages, split by the same [`ArraySplitter`] as SSE data; a stream of another content
//! type answers with its messages concatenated, which cannot be told apart, so such a read
//! reports `json == false` and is of no use for that.

use std::time::Duration;

use hyper::Response;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;

use super::DsError;
use super::body::{Body, BodyRead};
use super::client::JSON;
use super::status::{
    STREAM_CLOSED, STREAM_NEXT_OFFSET, STREAM_UP_TO_DATE, header_is_true, header_str,
};
use crate::sse::{ArrayItem, ArraySplitter};

/// An open catch-up read; see the module documentation.
#[derive(Debug)]
pub struct CatchUpRead {
    body: Body,
    splitter: ArraySplitter,
    /// Where the read ends: the offset to store with its messages.
    pub next_offset: String,
    /// The read reached the tail.
    pub up_to_date: bool,
    /// The stream is closed and the read reached its end.
    pub closed: bool,
    /// The body is a JSON array of messages (the stream is in JSON mode).
    pub json: bool,
    received: usize,
    ended: bool,
    finished: bool,
}

impl CatchUpRead {
    pub(crate) fn new(
        stream: &str,
        url: String,
        res: Response<Incoming>,
        max_message_bytes: usize,
    ) -> Result<CatchUpRead, DsError> {
        let headers = res.headers();
        let Some(next_offset) = header_str(headers, STREAM_NEXT_OFFSET).map(str::to_owned) else {
            return Err(DsError::InvalidResponse {
                stream: stream.to_owned(),
                url,
                reason: format!(
                    "status {} without a Stream-Next-Offset header",
                    res.status()
                ),
            });
        };
        let media_type = header_str(headers, CONTENT_TYPE.as_str())
            .and_then(|t| t.split(';').next())
            .unwrap_or("")
            .trim();
        let read = CatchUpRead {
            up_to_date: header_is_true(headers, STREAM_UP_TO_DATE),
            closed: header_is_true(headers, STREAM_CLOSED),
            json: media_type.eq_ignore_ascii_case(JSON),
            next_offset,
            body: Body::new(stream, url, res.into_body()),
            splitter: ArraySplitter::new(max_message_bytes),
            received: 0,
            ended: false,
            finished: false,
        };
        Ok(read)
    }

    /// Bounds every wait for the next chunk of the body.
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.body.set_idle_timeout(timeout);
        self
    }

    /// The next message (or what could not be split) from the bytes received so far;
    /// `None` when more are needed, or when the body is done (see [`done`](Self::done)).
    pub fn next_buffered(&mut self) -> Option<ArrayItem> {
        if let Some(item) = self.splitter.next_item() {
            return Some(item);
        }
        if self.ended && !self.finished {
            self.finished = true;
            // An empty body is an empty read, not data that is not an array.
            if self.received > 0 {
                return self.splitter.finish();
            }
        }
        None
    }

    /// Whether the whole body was read and every item handed out.
    #[must_use]
    pub fn done(&self) -> bool {
        self.finished
    }

    /// Reads the next chunk of the body.
    ///
    /// # Errors
    ///
    /// [`DsError::Transient`] when the connection broke.
    pub async fn read(&mut self) -> Result<BodyRead, DsError> {
        let read = self.body.read().await?;
        match &read {
            BodyRead::Data(chunk) => {
                self.received += chunk.len();
                self.splitter.push(chunk.clone());
            }
            BodyRead::Ended => self.ended = true,
            BodyRead::Idle(_) => {}
        }
        Ok(read)
    }

    /// Bytes the splitter holds.
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.splitter.buffered_bytes()
    }
}
