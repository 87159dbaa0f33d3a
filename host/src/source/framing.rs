//! Framers: split a serial byte stream into frames.
//!
//! A framer is a `tokio_util` [`Decoder`] whose items are [`FramerEvent`]s:
//! either a frame, or a report that bytes were discarded and why. Reporting
//! drops as items (rather than errors) keeps the stream alive — a noisy line
//! must never stop the port — and lets the port task count every drop.
//!
//! Every framer has a maximum frame size. An oversized frame is dropped and
//! the framer resynchronises at the next delimiter without losing the good
//! frames after it. The host never interprets payloads: invalid UTF-8 is just
//! bytes.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

/// Why a framer discarded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingDrop {
    /// A frame longer than the maximum; its bytes were skipped up to the
    /// next delimiter.
    Oversized,
    /// A frame with no content (e.g. a blank line).
    Empty,
    /// A partial frame when the stream ended (device vanished mid-frame).
    Truncated,
}

impl FramingDrop {
    /// Stable label for the drop counter.
    pub fn reason(self) -> &'static str {
        match self {
            FramingDrop::Oversized => "frame_oversized",
            FramingDrop::Empty => "frame_empty",
            FramingDrop::Truncated => "frame_truncated",
        }
    }
}

/// What a framer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramerEvent {
    /// A complete frame, delimiter removed.
    Frame(Vec<u8>),
    /// Bytes were discarded.
    Dropped {
        /// Why.
        reason: FramingDrop,
        /// How many bytes (including the delimiter).
        bytes: usize,
    },
}

/// Newline framing: frames end with `\n`; a trailing `\r` is removed.
#[derive(Debug)]
pub struct LineFramer {
    max_frame: usize,
    /// How far the buffer has been searched for a delimiter already.
    scanned: usize,
    /// Bytes of an oversized frame discarded so far (`Some` while discarding).
    discarding: Option<usize>,
}

impl LineFramer {
    /// A framer that refuses frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            max_frame,
            scanned: 0,
            discarding: None,
        }
    }
}

impl Decoder for LineFramer {
    type Item = FramerEvent;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<FramerEvent>, std::io::Error> {
        loop {
            let newline = buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| i + self.scanned);
            match (newline, self.discarding) {
                (Some(end), Some(discarded)) => {
                    buf.advance(end + 1);
                    self.scanned = 0;
                    self.discarding = None;
                    return Ok(Some(FramerEvent::Dropped {
                        reason: FramingDrop::Oversized,
                        bytes: discarded + end + 1,
                    }));
                }
                (None, Some(discarded)) => {
                    // Throw away what we have; keep looking for the delimiter.
                    self.discarding = Some(discarded + buf.len());
                    buf.clear();
                    self.scanned = 0;
                    return Ok(None);
                }
                (Some(end), None) => {
                    let line = buf.split_to(end + 1);
                    self.scanned = 0;
                    let mut content = &line[..end];
                    if let [rest @ .., b'\r'] = content {
                        content = rest;
                    }
                    if content.len() > self.max_frame {
                        return Ok(Some(FramerEvent::Dropped {
                            reason: FramingDrop::Oversized,
                            bytes: line.len(),
                        }));
                    }
                    if content.is_empty() {
                        return Ok(Some(FramerEvent::Dropped {
                            reason: FramingDrop::Empty,
                            bytes: line.len(),
                        }));
                    }
                    return Ok(Some(FramerEvent::Frame(content.to_vec())));
                }
                (None, None) => {
                    // +1: room for a trailing '\r' that will be stripped.
                    if buf.len() > self.max_frame + 1 {
                        self.discarding = Some(0);
                        continue;
                    }
                    self.scanned = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<FramerEvent>, std::io::Error> {
        // A partial line at EOF is the device vanishing mid-frame: the bytes
        // are incomplete, so they are reported as dropped, not delivered.
        match self.decode(buf)? {
            Some(event) => Ok(Some(event)),
            None if buf.is_empty() && self.discarding.is_none() => Ok(None),
            None => {
                let (reason, discarded) = match self.discarding.take() {
                    Some(n) => (FramingDrop::Oversized, n),
                    None => (FramingDrop::Truncated, 0),
                };
                let bytes = buf.len() + discarded;
                buf.clear();
                self.scanned = 0;
                Ok(Some(FramerEvent::Dropped { reason, bytes }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(framer: &mut LineFramer, chunks: &[&[u8]]) -> Vec<FramerEvent> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(event) = framer.decode(&mut buf).expect("infallible") {
                out.push(event);
            }
        }
        out
    }

    fn frame(s: &str) -> FramerEvent {
        FramerEvent::Frame(s.as_bytes().to_vec())
    }

    #[test]
    fn splits_lines_across_chunks() {
        let events = run(
            &mut LineFramer::new(64),
            &[b"ab", b"c\nde", b"f\r\n", b"\n", b"g\xff\n"],
        );
        assert_eq!(
            events,
            vec![
                frame("abc"),
                frame("def"),
                FramerEvent::Dropped {
                    reason: FramingDrop::Empty,
                    bytes: 1
                },
                FramerEvent::Frame(b"g\xff".to_vec()),
            ]
        );
    }

    #[test]
    fn oversized_frame_is_dropped_and_framer_resyncs() {
        let big = vec![b'x'; 100];
        let events = run(
            &mut LineFramer::new(10),
            &[b"ok1\n", &big, &big, b"tail\nok2\n"],
        );
        assert_eq!(
            events,
            vec![
                frame("ok1"),
                FramerEvent::Dropped {
                    reason: FramingDrop::Oversized,
                    bytes: 205
                },
                frame("ok2"),
            ]
        );
    }

    #[test]
    fn frame_of_exactly_max_size_passes_with_crlf() {
        let events = run(&mut LineFramer::new(3), &[b"abc\r\n", b"abcd\n"]);
        assert_eq!(
            events,
            vec![
                frame("abc"),
                FramerEvent::Dropped {
                    reason: FramingDrop::Oversized,
                    bytes: 5
                }
            ]
        );
    }

    #[test]
    fn partial_frame_at_eof_is_reported() {
        let mut framer = LineFramer::new(64);
        let mut buf = BytesMut::from(&b"done\nhalf"[..]);
        assert_eq!(
            framer.decode_eof(&mut buf).expect("ok"),
            Some(frame("done"))
        );
        assert_eq!(
            framer.decode_eof(&mut buf).expect("ok"),
            Some(FramerEvent::Dropped {
                reason: FramingDrop::Truncated,
                bytes: 4
            })
        );
        assert_eq!(framer.decode_eof(&mut buf).expect("ok"), None);
    }
}
