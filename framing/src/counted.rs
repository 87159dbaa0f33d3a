//! Counted framings: length-prefixed and fixed-size frames.
//!
//! Length-prefixed, on the wire:
//!
//! ```text
//! [header_offset bytes][length header][body …………………… [CRC]]
//!  kept in the frame     removed       kept             checked, removed
//! ```
//!
//! The length counts the body (CRC included), or, with
//! `length_includes_header`, the whole frame from its first byte. The frame
//! delivered is the offset bytes followed by the body without its CRC, so
//! [`Framer::encode`](super::Framer::encode) of that frame writes the same
//! bytes back. Fixed: every frame is `size` bytes (CRC included).
//!
//! # Resynchronisation: hunting
//!
//! A stream of counted frames has no delimiter to resynchronise on, so
//! after a failure the framer *hunts*: it discards one byte and tries to
//! read a frame at the next position, until one passes. The checks are:
//!
//! * a length outside what a frame can be (more than the maximum, less than
//!   the CRC, less than the header when it includes it) → `length_invalid`;
//! * a CRC that does not match → `crc_mismatch`.
//!
//! The bytes skipped during one hunt are reported as one drop with the
//! reason that started it, just before the next good frame (or at the end of
//! the stream). A hunt never skips more than one byte per failed position,
//! so the good frame after a corrupt one is always found. Without a CRC only
//! the length can be judged, so garbage with a plausible length is delivered
//! as a frame: configure a CRC for noisy lines.
//!
//! The price of hunting: each position waits until its declared length has
//! arrived, so a corrupt length can delay the frames after it by up to the
//! maximum frame size of line time, and each try costs a CRC over up to the
//! maximum frame. Set `max_frame_bytes` to the protocol's real maximum.

use bytes::{Buf, BytesMut};

use super::{CrcKind, EncodeError, FramingDrop, LengthHeader, Step};

/// The geometry of a counted frame.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// A length header after `offset` bytes.
    Prefixed {
        /// Header width and byte order.
        header: LengthHeader,
        /// Bytes before the header.
        offset: usize,
        /// The length counts the offset bytes and the header too.
        includes_header: bool,
    },
    /// Exactly `size` bytes per frame, CRC included.
    Fixed {
        /// Wire bytes per frame.
        size: usize,
    },
}

enum Candidate {
    /// The frame at the start of the buffer is not complete yet.
    NeedMore,
    /// There is no valid frame at the start of the buffer.
    Invalid(FramingDrop),
    /// A valid frame of `total` wire bytes starts the buffer.
    Valid { total: usize },
}

/// Length-prefixed or fixed-size framer.
#[derive(Debug)]
pub struct Counted {
    shape: Shape,
    crc: Option<CrcKind>,
    /// Largest payload delivered.
    max_frame: usize,
    /// A hunt in progress: why it started and how many bytes it skipped.
    hunt: Option<(FramingDrop, usize)>,
    /// The frame found at the end of a hunt, after its drop was reported.
    pending: Option<Step>,
}

impl Counted {
    pub(super) fn new(shape: Shape, crc: Option<CrcKind>, max_frame: usize) -> Self {
        Self {
            shape,
            crc,
            max_frame,
            hunt: None,
            pending: None,
        }
    }

    fn crc_len(&self) -> usize {
        self.crc.map_or(0, CrcKind::width)
    }

    fn candidate(&self, buf: &[u8]) -> Candidate {
        let crc_len = self.crc_len();
        let total = match self.shape {
            Shape::Prefixed {
                header,
                offset,
                includes_header,
            } => {
                let Some(value) = buf.get(offset..).and_then(|rest| header.read(rest)) else {
                    return Candidate::NeedMore;
                };
                let before = offset + header.width();
                let body = usize::try_from(value).ok().and_then(|v| {
                    if includes_header {
                        v.checked_sub(before)
                    } else {
                        Some(v)
                    }
                });
                match body {
                    Some(body)
                        if body >= crc_len
                            && offset
                                .checked_add(body - crc_len)
                                .is_some_and(|n| n <= self.max_frame) =>
                    {
                        before + body
                    }
                    _ => return Candidate::Invalid(FramingDrop::LengthInvalid),
                }
            }
            Shape::Fixed { size } => size,
        };
        if buf.len() < total {
            return Candidate::NeedMore;
        }
        if let Some(crc) = self.crc
            && !crc.verify(&buf[..total])
        {
            return Candidate::Invalid(FramingDrop::CrcMismatch);
        }
        Candidate::Valid { total }
    }

    /// The payload of a valid frame of `total` bytes at the start of `buf`.
    fn payload(&self, buf: &[u8], total: usize) -> Vec<u8> {
        let end = total - self.crc_len();
        match self.shape {
            Shape::Prefixed { header, offset, .. } => {
                let mut data = Vec::with_capacity(end - header.width());
                data.extend_from_slice(&buf[..offset]);
                data.extend_from_slice(&buf[offset + header.width()..end]);
                data
            }
            Shape::Fixed { .. } => buf[..end].to_vec(),
        }
    }

    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Option<Step> {
        if let Some(step) = self.pending.take() {
            return Some(step);
        }
        loop {
            match self.candidate(buf) {
                Candidate::NeedMore => return None,
                Candidate::Invalid(reason) => {
                    buf.advance(1);
                    self.hunt.get_or_insert((reason, 0)).1 += 1;
                }
                Candidate::Valid { total } => {
                    let data = self.payload(buf, total);
                    buf.advance(total);
                    let frame = Step::Frame { data, wire: total };
                    return match self.hunt.take() {
                        Some((reason, skipped)) => {
                            self.pending = Some(frame);
                            Some(Step::Drop(reason, skipped))
                        }
                        None => Some(frame),
                    };
                }
            }
        }
    }

    /// At the end of the stream (called when [`decode`](Self::decode) needs
    /// more). While hunting, the position waiting for more was garbage
    /// anyway, so the hunt goes on through the rest of the buffer and still
    /// finds the good frames in it. In sync, what is left is a partial frame
    /// — or garbage whose first bytes read as a length, with good frames
    /// behind it: with a CRC to tell them apart, the rest is hunted the same
    /// way (the skipped bytes are `truncated`); without one it is all
    /// `truncated`.
    pub(super) fn eof(&mut self, buf: &mut BytesMut) -> Option<Step> {
        if let Some(step) = self.pending.take() {
            return Some(step);
        }
        let (reason, mut skipped) = match self.hunt.take() {
            Some(hunt) => hunt,
            None if self.crc.is_some() && !buf.is_empty() => (FramingDrop::Truncated, 0),
            None => {
                let rest = buf.len();
                buf.clear();
                return (rest > 0).then_some(Step::Drop(FramingDrop::Truncated, rest));
            }
        };
        while !buf.is_empty() {
            if let Candidate::Valid { total } = self.candidate(buf) {
                let data = self.payload(buf, total);
                buf.advance(total);
                self.pending = Some(Step::Frame { data, wire: total });
                break;
            }
            buf.advance(1);
            skipped += 1;
        }
        Some(Step::Drop(reason, skipped))
    }

    /// Appends the wire form of `payload` (non-empty, at most the maximum).
    pub(super) fn encode(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
        let crc_len = self.crc_len();
        let start = dst.len();
        match self.shape {
            Shape::Prefixed {
                header,
                offset,
                includes_header,
            } => {
                if payload.len() < offset {
                    return Err(EncodeError::ShorterThanOffset {
                        len: payload.len(),
                        offset,
                    });
                }
                let (prefix, body) = payload.split_at(offset);
                let mut value = (body.len() + crc_len) as u64;
                if includes_header {
                    value += (offset + header.width()) as u64;
                }
                if value > header.max_value() {
                    return Err(EncodeError::LengthOverflow { len: value });
                }
                dst.extend_from_slice(prefix);
                header.write(value, dst);
                dst.extend_from_slice(body);
            }
            Shape::Fixed { size } => {
                let expected = size.saturating_sub(crc_len);
                if payload.len() != expected {
                    return Err(EncodeError::WrongSize {
                        len: payload.len(),
                        expected,
                    });
                }
                dst.extend_from_slice(payload);
            }
        }
        if let Some(crc) = self.crc {
            let mut trailer = Vec::with_capacity(crc_len);
            crc.append(&dst[start..], &mut trailer);
            dst.extend_from_slice(&trailer);
        }
        Ok(())
    }
}
