//! COBS framing (Cheshire & Baker, "Consistent Overhead Byte Stuffing",
//! 1999): frames are COBS-encoded and end with `0x00`, which never occurs
//! inside an encoded frame.
//!
//! An encoded frame is a sequence of blocks. Each block starts with a code
//! byte `n` (1–255) followed by `n - 1` data bytes; a block with `n < 255`
//! stands for its data plus one zero byte, except the last block of the
//! frame, whose zero is implied away. So `[]` encodes as `01 00`, `[00]` as
//! `01 01 00`, `[11 22 00 33]` as `03 11 22 02 33 00`.
//!
//! Decoding is a stream decoder: input bytes are consumed as they arrive and
//! only the decoded frame is kept, so memory is bounded by the maximum frame
//! whatever the line sends. Rules:
//!
//! * `0x00` inside a block (before its `n - 1` data bytes) → `cobs_invalid`;
//! * more decoded bytes than the limit → the rest of the frame, up to the
//!   next `0x00`, is discarded and reported as `frame_oversized`;
//! * `0x00` with nothing before it (two delimiters in a row, or a leading
//!   delimiter the sender uses to flush line noise) is not a frame and not a
//!   drop: it is how COBS senders resynchronise their receivers;
//! * `01 00`, the encoding of an empty frame, is reported as `frame_empty`.
//!
//! Line noise that contains no `0x00` merges into the next frame and makes
//! it invalid (caught by `cobs_invalid` or, reliably, by a CRC); senders that
//! also *start* every frame with `0x00` confine noise to its own segment.
//! [`encode`] does that (one byte per frame), as SLIP senders do with `END`.

use bytes::{Buf, BytesMut};

use super::{FramingDrop, Step};

/// Streaming COBS decoder.
#[derive(Debug)]
pub struct CobsDecoder {
    /// Largest decoded frame (payload + CRC).
    limit: usize,
    /// The frame decoded so far.
    frame: Vec<u8>,
    /// Wire bytes of the current frame consumed so far.
    wire: usize,
    /// The current block's code byte (0: no block yet in this frame).
    code: u8,
    /// Data bytes still to come in the current block.
    remaining: usize,
    /// Set while skipping to the next `0x00` after an oversized frame.
    discarding: bool,
}

impl CobsDecoder {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            frame: Vec::new(),
            wire: 0,
            code: 0,
            remaining: 0,
            discarding: false,
        }
    }

    fn reset(&mut self) {
        self.frame = Vec::new();
        self.wire = 0;
        self.code = 0;
        self.remaining = 0;
        self.discarding = false;
    }

    /// Appends decoded bytes, switching to discarding if they overflow.
    fn push(&mut self, bytes: &[u8]) {
        if self.frame.len() + bytes.len() > self.limit {
            self.discarding = true;
            self.frame = Vec::new();
        } else {
            self.frame.extend_from_slice(bytes);
        }
    }

    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Option<Step> {
        loop {
            if buf.is_empty() {
                return None;
            }
            if self.discarding {
                return match memchr::memchr(0, buf) {
                    Some(i) => {
                        buf.advance(i + 1);
                        let bytes = self.wire + i + 1;
                        self.reset();
                        Some(Step::Drop(FramingDrop::Oversized, bytes))
                    }
                    None => {
                        self.wire += buf.len();
                        buf.clear();
                        None
                    }
                };
            }
            if self.remaining > 0 {
                // Inside a block: copy data bytes up to the block's end.
                let take = self.remaining.min(buf.len());
                match memchr::memchr(0, &buf[..take]) {
                    Some(i) => {
                        // The frame ended inside a block.
                        buf.advance(i + 1);
                        let bytes = self.wire + i + 1;
                        self.reset();
                        return Some(Step::Drop(FramingDrop::CobsInvalid, bytes));
                    }
                    None => {
                        self.push(&buf[..take]);
                        buf.advance(take);
                        self.wire += take;
                        self.remaining -= take;
                        continue;
                    }
                }
            }
            // At a block boundary: a delimiter or the next code byte.
            let byte = buf[0];
            buf.advance(1);
            self.wire += 1;
            if byte == 0 {
                if self.code == 0 {
                    // An empty segment: a resynchronising delimiter.
                    self.reset();
                    continue;
                }
                let data = std::mem::take(&mut self.frame);
                let wire = self.wire;
                self.reset();
                return Some(Step::Frame { data, wire });
            }
            if self.code != 0 && self.code != 0xFF {
                self.push(&[0]);
            }
            self.code = byte;
            self.remaining = usize::from(byte) - 1;
        }
    }

    /// At the end of the stream: a frame in progress is truncated.
    pub(super) fn eof(&mut self, buf: &mut BytesMut) -> Option<Step> {
        let bytes = self.wire + buf.len();
        let reason = if self.discarding {
            FramingDrop::Oversized
        } else {
            FramingDrop::Truncated
        };
        buf.clear();
        self.reset();
        (bytes > 0).then_some(Step::Drop(reason, bytes))
    }
}

/// Appends a `0x00` (flushing any line noise into a segment of its own),
/// the COBS encoding of `data`, and the closing `0x00`.
pub fn encode(data: &[u8], dst: &mut BytesMut) {
    dst.reserve(data.len() + data.len() / 254 + 3);
    dst.extend_from_slice(&[0]);
    // Each block: up to 254 non-zero bytes, ended by a zero or the 254 limit.
    let mut rest = data;
    loop {
        let run = rest.iter().take(254).position(|&b| b == 0);
        match run {
            Some(i) => {
                // `i` data bytes then a zero: code i + 1.
                dst.extend_from_slice(&[(i + 1) as u8]);
                dst.extend_from_slice(&rest[..i]);
                rest = &rest[i + 1..];
                // A zero at the very end still needs a final (empty) block.
                if rest.is_empty() {
                    dst.extend_from_slice(&[1]);
                    break;
                }
            }
            None if rest.len() >= 254 => {
                dst.extend_from_slice(&[0xFF]);
                dst.extend_from_slice(&rest[..254]);
                rest = &rest[254..];
                if rest.is_empty() {
                    break;
                }
            }
            None => {
                dst.extend_from_slice(&[(rest.len() + 1) as u8]);
                dst.extend_from_slice(rest);
                break;
            }
        }
    }
    dst.extend_from_slice(&[0]);
}
