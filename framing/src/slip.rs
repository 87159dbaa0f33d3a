//! SLIP framing (RFC 1055): frames end with `END` (0xC0); inside a frame
//! `END` is sent as `ESC ESC_END` (0xDB 0xDC) and `ESC` as `ESC ESC_ESC`
//! (0xDB 0xDD).
//!
//! A stream decoder: input is consumed as it arrives and only the decoded
//! frame is kept (memory bounded by the maximum frame). Rules:
//!
//! * `END` with nothing before it is not a frame and not a drop — RFC 1055
//!   senders start every packet with `END` to flush line noise, and the RFC
//!   tells receivers to ignore empty packets. (So an empty payload cannot be
//!   sent over SLIP; [`Framer::encode`](super::Framer::encode) refuses it.)
//! * `ESC` followed by anything but `ESC_END`/`ESC_ESC` is a protocol
//!   violation. RFC 1055's sample code keeps the byte; sluice drops the
//!   frame as `slip_invalid` (it is corrupt, and a CRC-less frame would
//!   otherwise be delivered wrong). The frame is skipped up to the next `END`.
//! * more decoded bytes than the limit → the rest of the frame is discarded
//!   up to the next `END` and reported as `frame_oversized`.

use bytes::{Buf, BytesMut};

use super::{FramingDrop, Step};

/// Frame end.
pub const END: u8 = 0xC0;
/// Escape.
pub const ESC: u8 = 0xDB;
/// `ESC ESC_END` stands for a data `END`.
pub const ESC_END: u8 = 0xDC;
/// `ESC ESC_ESC` stands for a data `ESC`.
pub const ESC_ESC: u8 = 0xDD;

/// Streaming SLIP decoder.
#[derive(Debug)]
pub struct SlipDecoder {
    /// Largest decoded frame (payload + CRC).
    limit: usize,
    frame: Vec<u8>,
    /// Wire bytes of the current frame consumed so far.
    wire: usize,
    /// The previous byte was `ESC`.
    escaped: bool,
    /// Skipping to the next `END`, and why.
    discarding: Option<FramingDrop>,
}

impl SlipDecoder {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            frame: Vec::new(),
            wire: 0,
            escaped: false,
            discarding: None,
        }
    }

    fn reset(&mut self) {
        self.frame = Vec::new();
        self.wire = 0;
        self.escaped = false;
        self.discarding = None;
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.frame.len() + bytes.len() > self.limit {
            self.discarding = Some(FramingDrop::Oversized);
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
            if let Some(reason) = self.discarding {
                return match memchr::memchr(END, buf) {
                    Some(i) => {
                        buf.advance(i + 1);
                        let bytes = self.wire + i + 1;
                        self.reset();
                        Some(Step::Drop(reason, bytes))
                    }
                    None => {
                        self.wire += buf.len();
                        buf.clear();
                        None
                    }
                };
            }
            if self.escaped {
                self.escaped = false;
                let byte = buf[0];
                buf.advance(1);
                self.wire += 1;
                match byte {
                    ESC_END => self.push(&[END]),
                    ESC_ESC => self.push(&[ESC]),
                    END => {
                        // The frame ended right after an ESC.
                        let bytes = self.wire;
                        self.reset();
                        return Some(Step::Drop(FramingDrop::SlipInvalid, bytes));
                    }
                    _ => self.discarding = Some(FramingDrop::SlipInvalid),
                }
                continue;
            }
            // Copy plain bytes up to the next END or ESC.
            let special = memchr::memchr2(END, ESC, buf).unwrap_or(buf.len());
            if special > 0 {
                self.push(&buf[..special]);
                buf.advance(special);
                self.wire += special;
                continue;
            }
            let byte = buf[0];
            buf.advance(1);
            self.wire += 1;
            if byte == ESC {
                self.escaped = true;
                continue;
            }
            // END.
            if self.wire == 1 {
                // Nothing before it: a flushing END, not a frame.
                self.reset();
                continue;
            }
            let data = std::mem::take(&mut self.frame);
            let wire = self.wire;
            self.reset();
            return Some(Step::Frame { data, wire });
        }
    }

    /// At the end of the stream: a frame in progress is truncated.
    pub(super) fn eof(&mut self, buf: &mut BytesMut) -> Option<Step> {
        let bytes = self.wire + buf.len();
        let reason = self.discarding.unwrap_or(FramingDrop::Truncated);
        buf.clear();
        self.reset();
        (bytes > 0).then_some(Step::Drop(reason, bytes))
    }
}

/// Appends `data` as a SLIP packet: a leading `END` (RFC 1055: flushes any
/// line noise into an empty packet the receiver ignores), the escaped bytes,
/// and the closing `END`.
pub fn encode(data: &[u8], dst: &mut BytesMut) {
    dst.reserve(data.len() + data.len() / 8 + 2);
    dst.extend_from_slice(&[END]);
    let mut rest = data;
    while let Some(i) = memchr::memchr2(END, ESC, rest) {
        dst.extend_from_slice(&rest[..i]);
        let escaped = if rest[i] == END { ESC_END } else { ESC_ESC };
        dst.extend_from_slice(&[ESC, escaped]);
        rest = &rest[i + 1..];
    }
    dst.extend_from_slice(rest);
    dst.extend_from_slice(&[END]);
}
