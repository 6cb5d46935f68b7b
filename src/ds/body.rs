//! [`Body`]: the body of a streaming response (SSE or a catch-up read) read one frame at a
//! time, with an idle timeout.
//!
//! A TCP path can stop relaying bytes without closing (a NAT or load balancer dropping its
//! state): no FIN, no RST, the socket simply stays quiet. TCP keepalive notices after minutes;
//! a reader that expects keepalive comments every few seconds can notice much sooner. So
//! every wait for the next frame is bounded by the idle timeout, and reaching it is reported
//! as [`BodyRead::Idle`], not as an error: the caller decides (ingest reconnects from its
//! committed offset and says why).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::DsError;
use super::client::transient;
use crate::pg::error_chain;

/// What one read of the body gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRead {
    /// A chunk of the body.
    Data(Bytes),
    /// The server ended the body.
    Ended,
    /// No byte arrived within the idle timeout; the connection is presumed dead.
    Idle(Duration),
}

/// A response body read frame by frame.
#[derive(Debug)]
pub(crate) struct Body {
    stream: String,
    url: String,
    body: Incoming,
    idle_timeout: Option<Duration>,
    ended: bool,
}

impl Body {
    pub(crate) fn new(stream: &str, url: String, body: Incoming) -> Body {
        Body {
            stream: stream.to_owned(),
            url,
            body,
            idle_timeout: None,
            ended: false,
        }
    }

    pub(crate) fn stream(&self) -> &str {
        &self.stream
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.idle_timeout = timeout;
    }

    /// The next data frame (trailers carry nothing for DS and are skipped).
    ///
    /// # Errors
    ///
    /// [`DsError::Transient`] when the connection broke; the body has ended then.
    pub(crate) async fn read(&mut self) -> Result<BodyRead, DsError> {
        loop {
            if self.ended {
                return Ok(BodyRead::Ended);
            }
            let frame = match self.idle_timeout {
                Some(limit) => match tokio::time::timeout(limit, self.body.frame()).await {
                    Ok(frame) => frame,
                    Err(_) => return Ok(BodyRead::Idle(limit)),
                },
                None => self.body.frame().await,
            };
            match frame {
                None => {
                    self.ended = true;
                    return Ok(BodyRead::Ended);
                }
                Some(Err(e)) => {
                    self.ended = true;
                    let reason = format!("the response body broke: {}", error_chain(&e));
                    return Err(transient(&self.stream, self.url.clone(), reason));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        return Ok(BodyRead::Data(data));
                    }
                }
            }
        }
    }
}
