//! [`SseSubscription`]: the body of one `live=sse` response, decoded into DS items as its
//! bytes arrive.
//!
//! Body chunks go through the project's pure [`DsDecoder`]: each message of a data event
//! comes out on its own as soon as it is complete ([`DsItem::Array`]), then
//! [`DsItem::DataEnd`], then the control event with the offset they end at. The subscription
//! does not reconnect: when the server ends the body (it may at any time; one server does
//! every 60 s) the read says so, and the caller subscribes again from the offset of the last
//! control event it committed.
//!
//! Reading is in the caller's hands, so that it can stop reading (and let TCP push back on
//! the server) while it holds as much as it may: [`SseSubscription::next_buffered`] decodes
//! what has arrived without touching the socket, [`SseSubscription::read`] reads one more
//! chunk, waiting at most the idle timeout for it. [`SseSubscription::next`] does both for
//! callers that do not bound memory.

use std::time::Duration;

use super::DsError;
use super::body::{Body, BodyRead};
use super::client::transient;
use crate::sse::{DsDecoder, DsEventError, DsItem};

/// An open SSE response; see the module documentation.
#[derive(Debug)]
pub struct SseSubscription {
    body: Body,
    decoder: DsDecoder,
    max_event_bytes: usize,
}

impl SseSubscription {
    pub(crate) fn new(body: Body, max_message_bytes: usize, max_event_bytes: usize) -> Self {
        SseSubscription {
            body,
            decoder: DsDecoder::new(max_message_bytes, max_event_bytes),
            max_event_bytes,
        }
    }

    /// The stream subscribed to.
    #[must_use]
    pub fn stream(&self) -> &str {
        self.body.stream()
    }

    /// Messages over `max_message_bytes` come out as
    /// [`ArrayItem::TooLarge`](crate::sse::ArrayItem::TooLarge) (by default the client's
    /// SSE event limit). Set it before reading.
    #[must_use]
    pub fn with_message_limit(mut self, max_message_bytes: usize) -> Self {
        self.decoder = self.decoder.with_message_limit(max_message_bytes);
        self
    }

    /// Bounds every wait for the next chunk (`None`: wait as long as the server keeps the
    /// connection open).
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.body.set_idle_timeout(timeout);
        self
    }

    /// The next item decoded from the bytes received so far, without reading; `None` when
    /// more bytes are needed.
    ///
    /// Data events come as their messages ([`DsItem::Array`]), then [`DsItem::DataEnd`];
    /// [`DsItem::Oversized`] is a data event that could not be streamed and outgrew the
    /// buffered-event limit.
    ///
    /// # Errors
    ///
    /// [`DsError::InvalidResponse`] for a control event without a usable offset and
    /// [`DsError::EventTooLarge`] for a control event over the limit. Data since the last
    /// control must not be committed then: drop the subscription and subscribe again from
    /// the last committed offset.
    pub fn next_buffered(&mut self) -> Option<Result<DsItem, DsError>> {
        match self.decoder.next_item()? {
            Ok(DsItem::Oversized { event_type, size }) if event_type == "control" => {
                Some(Err(DsError::EventTooLarge {
                    stream: self.stream().to_owned(),
                    event_type,
                    size,
                    limit: self.max_event_bytes,
                    preview: bytes::Bytes::new(),
                }))
            }
            Ok(item) => Some(Ok(item)),
            Err(e) => Some(Err(self.invalid(&e))),
        }
    }

    /// Reads the next chunk of the body into the decoder.
    ///
    /// # Errors
    ///
    /// [`DsError::Transient`] when the connection broke (the subscription has ended).
    pub async fn read(&mut self) -> Result<BodyRead, DsError> {
        let read = self.body.read().await?;
        if let BodyRead::Data(chunk) = &read {
            self.decoder.push(chunk);
        }
        Ok(read)
    }

    /// The next item, reading as needed; `None` when the server ended the response (an event
    /// not closed by a blank line is incomplete and never dispatched).
    ///
    /// # Errors
    ///
    /// As [`next_buffered`](Self::next_buffered) and [`read`](Self::read), and
    /// [`DsError::Transient`] when the idle timeout passed without a byte.
    pub async fn next(&mut self) -> Option<Result<DsItem, DsError>> {
        loop {
            if let Some(item) = self.next_buffered() {
                return Some(item);
            }
            match self.read().await {
                Ok(BodyRead::Data(_)) => {}
                Ok(BodyRead::Ended) => return None,
                Ok(BodyRead::Idle(after)) => {
                    let reason = format!("no byte for {after:?}; the connection is presumed dead");
                    return Some(Err(transient(
                        self.stream(),
                        self.body.url().to_owned(),
                        reason,
                    )));
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Whether a data event is in progress (some of its data arrived, not its end).
    #[must_use]
    pub fn in_data_event(&self) -> bool {
        self.decoder.in_data_event()
    }

    /// Bytes the decoder holds (received, not yet handed out as items).
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.decoder.buffered_bytes()
    }

    fn invalid(&self, error: &DsEventError) -> DsError {
        DsError::InvalidResponse {
            stream: self.stream().to_owned(),
            url: self.body.url().to_owned(),
            reason: error.to_string(),
        }
    }
}
