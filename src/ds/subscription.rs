//! [`SseSubscription`]: the body of one `live=sse` response, as classified DS events.
//!
//! Body chunks go through the project's pure [`SseParser`] and [`classify`]; keepalive
//! comments and `retry:` fields are consumed here. The subscription does not reconnect: when
//! the server ends the body (it may at any time; one server does every 60 s) `next` returns
//! `None`, and the caller subscribes again from the offset of the last control event it
//! committed. There is no timeout on the body; a caller that wants to detect a silent peer
//! wraps `next` in its own idle timeout (servers send keepalive comments, e.g. every 15 s).

use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::DsError;
use super::client::transient;
use crate::pg::error_chain;
use crate::sse::{DsEvent, SseItem, SseParser, classify};

/// An open SSE response; see the module documentation.
#[derive(Debug)]
pub struct SseSubscription {
    stream: String,
    url: String,
    body: Incoming,
    parser: SseParser,
    max_event_bytes: usize,
    ended: bool,
}

impl SseSubscription {
    pub(crate) fn new(
        stream: &str,
        url: String,
        body: Incoming,
        max_event_bytes: usize,
    ) -> SseSubscription {
        SseSubscription {
            stream: stream.to_owned(),
            url,
            body,
            parser: SseParser::new(max_event_bytes),
            max_event_bytes,
            ended: false,
        }
    }

    /// The stream subscribed to.
    #[must_use]
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The next DS event: [`DsEvent::Data`] (buffer it), [`DsEvent::Control`] (commit the
    /// buffered data with its offset), or [`DsEvent::Other`] (skip it). `None` when the
    /// server ended the response.
    ///
    /// An error is [`DsError::Transient`] when the connection broke (the subscription has
    /// ended), [`DsError::InvalidResponse`] for a control event without a usable offset and
    /// [`DsError::EventTooLarge`] for an event over the limit. After either of the last two,
    /// data buffered since the last control must not be committed: drop the subscription
    /// and subscribe again from the last committed offset. The exception is an oversized
    /// `data` event: parsing goes on after it, so a caller may record it (its size and
    /// preview) in place of the data and keep reading, as ingest does with dead letters.
    pub async fn next(&mut self) -> Option<Result<DsEvent, DsError>> {
        loop {
            while let Some(item) = self.parser.next_event() {
                match item {
                    SseItem::Event(event) => {
                        return Some(classify(event).map_err(|e| self.invalid(&e)));
                    }
                    SseItem::Oversized {
                        event_type,
                        size,
                        preview,
                    } => {
                        return Some(Err(DsError::EventTooLarge {
                            stream: self.stream.clone(),
                            event_type,
                            size,
                            limit: self.max_event_bytes,
                            preview,
                        }));
                    }
                    SseItem::Comment | SseItem::Retry(_) => {}
                }
            }
            if self.ended {
                return None;
            }
            match self.body.frame().await {
                None => {
                    // An event not closed by a blank line is incomplete: never dispatched.
                    self.ended = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.ended = true;
                    let reason = format!("sse body broke: {}", error_chain(&e));
                    return Some(Err(transient(&self.stream, self.url.clone(), reason)));
                }
                Some(Ok(frame)) => {
                    // Trailers carry nothing for DS; only data frames are parsed.
                    if let Ok(data) = frame.into_data() {
                        self.parser.push(&data);
                    }
                }
            }
        }
    }

    fn invalid(&self, error: &crate::sse::DsEventError) -> DsError {
        DsError::InvalidResponse {
            stream: self.stream.clone(),
            url: self.url.clone(),
            reason: error.to_string(),
        }
    }
}
