//! Delimiter framing: a frame is the bytes before a delimiter.
//!
//! The default is `\n` with one optional `\r` before it removed (text lines
//! from any terminal-ish device); a configured delimiter is any non-empty
//! byte string, matched exactly (`"\r\n"`, `"\u0000"`, `[0xAA, 0x55]`).
//!
//! Resynchronisation is by construction: the next delimiter always starts a
//! new frame. A run longer than the limit without a delimiter is discarded
//! as it arrives (only `delimiter.len() - 1` bytes are kept, in case the
//! delimiter straddles two reads) and reported once, as `frame_oversized`,
//! when the delimiter finally comes.

use bytes::{Buf, BytesMut};
use memchr::memmem;

use super::{EncodeError, FramingDrop, Step};

/// Splits on a delimiter.
#[derive(Debug)]
pub struct Newline {
    delimiter: Vec<u8>,
    finder: memmem::Finder<'static>,
    /// Remove one `\r` before the delimiter (default newline framing).
    strip_cr: bool,
    /// Largest raw frame (payload + CRC).
    limit: usize,
    /// How far the buffer has been searched already.
    scanned: usize,
    /// Bytes of an oversized frame discarded so far (`Some` while discarding).
    discarding: Option<usize>,
}

impl Newline {
    /// `delimiter` must not be empty (the caller guarantees it).
    pub(super) fn new(delimiter: Vec<u8>, strip_cr: bool, limit: usize) -> Self {
        let delimiter = if delimiter.is_empty() {
            vec![b'\n']
        } else {
            delimiter
        };
        Self {
            finder: memmem::Finder::new(&delimiter).into_owned(),
            delimiter,
            strip_cr,
            limit,
            scanned: 0,
            discarding: None,
        }
    }

    fn find(&self, haystack: &[u8]) -> Option<usize> {
        match self.delimiter.as_slice() {
            [b] => memchr::memchr(*b, haystack),
            _ => self.finder.find(haystack),
        }
    }

    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Option<Step> {
        let dlen = self.delimiter.len();
        loop {
            let start = self.scanned.min(buf.len());
            let found = self.find(&buf[start..]).map(|i| i + start);
            match (found, self.discarding) {
                (Some(end), Some(discarded)) => {
                    buf.advance(end + dlen);
                    self.scanned = 0;
                    self.discarding = None;
                    return Some(Step::Drop(FramingDrop::Oversized, discarded + end + dlen));
                }
                (None, Some(discarded)) => {
                    // Keep only what could be the start of a delimiter.
                    let drop = buf.len().saturating_sub(dlen - 1);
                    buf.advance(drop);
                    self.discarding = Some(discarded + drop);
                    self.scanned = 0;
                    return None;
                }
                (Some(end), None) => {
                    let line = buf.split_to(end + dlen);
                    self.scanned = 0;
                    let mut content = &line[..end];
                    if self.strip_cr
                        && let [rest @ .., b'\r'] = content
                    {
                        content = rest;
                    }
                    if content.len() > self.limit {
                        return Some(Step::Drop(FramingDrop::Oversized, line.len()));
                    }
                    return Some(Step::Frame {
                        data: content.to_vec(),
                        wire: line.len(),
                    });
                }
                (None, None) => {
                    // A delimiter starting after `limit (+ '\r')` bytes would
                    // end an oversized frame: start discarding now.
                    let room = self.limit.saturating_add(usize::from(self.strip_cr) + dlen);
                    if buf.len() >= room {
                        self.discarding = Some(0);
                        continue;
                    }
                    self.scanned = buf.len().saturating_sub(dlen - 1);
                    return None;
                }
            }
        }
    }

    /// At the end of the stream: whatever is left is a partial frame.
    pub(super) fn eof(&mut self, buf: &mut BytesMut) -> Option<Step> {
        self.scanned = 0;
        let rest = buf.len();
        buf.clear();
        match self.discarding.take() {
            Some(n) => Some(Step::Drop(FramingDrop::Oversized, n + rest)),
            None if rest > 0 => Some(Step::Drop(FramingDrop::Truncated, rest)),
            None => None,
        }
    }

    /// Appends `raw` (payload + CRC) and the delimiter, if that decodes back
    /// to `raw`.
    pub(super) fn encode(&self, raw: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
        let mut wire = Vec::with_capacity(raw.len() + self.delimiter.len());
        wire.extend_from_slice(raw);
        wire.extend_from_slice(&self.delimiter);
        // The first delimiter must be the one appended (this also catches a
        // payload ending with part of a multi-byte delimiter).
        if self.find(&wire) != Some(raw.len()) || (self.strip_cr && raw.last() == Some(&b'\r')) {
            return Err(EncodeError::ContainsDelimiter);
        }
        dst.extend_from_slice(&wire);
        Ok(())
    }
}
