//! A bounds-checked cursor over one message buffer.
//!
//! Every read checks the remaining length first and reports the message kind
//! and offset on failure, so the decoder itself holds no index arithmetic.
//! Slices handed out are `Bytes::slice`s of the input: no copies.

use bytes::Bytes;

use super::error::DecodeError;
use super::messages::MessageKind;

/// A read position in a message whose tag has already been recognized.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    message: MessageKind,
}

impl<'a> Reader<'a> {
    /// A reader positioned just after the tag byte.
    pub(crate) fn after_tag(buf: &'a Bytes, message: MessageKind) -> Reader<'a> {
        Reader {
            buf,
            pos: 1,
            message,
        }
    }

    pub(crate) fn message(&self) -> MessageKind {
        self.message
    }

    /// The offset of the next byte to read.
    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    /// How many bytes are left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    fn truncated(&self, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            message: self.message,
            offset: self.pos,
            needed,
            available: self.remaining(),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        match self.rest().split_first_chunk::<N>() {
            Some((head, _)) => {
                self.pos += N;
                Ok(*head)
            }
            None => Err(self.truncated(N)),
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.array::<1>().map(|[byte]| byte)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, DecodeError> {
        self.array().map(i16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn i32(&mut self) -> Result<i32, DecodeError> {
        self.array().map(i32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }

    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        self.array().map(i64::from_be_bytes)
    }

    /// The next `len` bytes as a zero-copy slice of the input. The length is
    /// checked against what remains before anything is taken.
    pub(crate) fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(self.truncated(len));
        }
        let start = self.pos;
        self.pos += len;
        Ok(self.buf.slice(start..self.pos))
    }

    /// A u32 length followed by that many bytes.
    pub(crate) fn length_prefixed(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u32()?;
        // On a target where usize is narrower than u32 the length cannot fit
        // in memory anyway: saturate so that `bytes` reports it as truncated.
        self.bytes(usize::try_from(len).unwrap_or(usize::MAX))
    }

    /// A NUL-terminated UTF-8 string; the NUL is consumed, not returned.
    ///
    /// With nothing left to read the message is plainly truncated; with bytes
    /// left but no NUL among them the string is unterminated.
    pub(crate) fn cstring(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = self.rest();
        if rest.is_empty() {
            return Err(self.truncated(1));
        }
        let Some(nul) = rest.iter().position(|&byte| byte == 0) else {
            return Err(DecodeError::MissingNul {
                message: self.message,
                offset: start,
            });
        };
        let text = std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::InvalidUtf8 {
            message: self.message,
            offset: start,
        })?;
        self.pos += nul + 1;
        Ok(text.to_owned())
    }

    /// Succeeds only if the whole buffer has been read.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            remaining => Err(DecodeError::TrailingBytes {
                message: self.message,
                offset: self.pos,
                remaining,
            }),
        }
    }
}
