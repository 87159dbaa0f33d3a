//! The fuzz harness shared by every target.
//!
//! The first input bytes choose the framing's parameters (maximum frame,
//! read size, CRC, header, …), the rest is the line. [`check`] then asserts
//! what the framers promise for *any* input:
//!
//! * no panic (decoding, `on_idle`, EOF, encoding);
//! * every delivered frame is non-empty and at most the maximum;
//! * the buffer never holds more than the bound (maximum frame plus framing
//!   overhead plus one read), however long the input runs without a
//!   boundary;
//! * EOF consumes everything;
//! * every delivered frame, encoded again and decoded by a fresh framer,
//!   comes back unchanged (when the framing can encode it).

pub use sluice_framing as framing;

use std::num::NonZeroUsize;

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::framing::{ByteString, CrcKind, Framer, FramerEvent, FramingConfig, LengthHeader};

/// Reads parameter bytes off the front of the input (zeros when short).
struct Params<'a>(&'a [u8]);

impl<'a> Params<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn crc(&mut self) -> Option<CrcKind> {
        match self.byte() % 4 {
            0 => None,
            1 => Some(CrcKind::Crc16Modbus),
            2 => Some(CrcKind::Crc16CcittFalse),
            _ => Some(CrcKind::Crc32),
        }
    }
    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// Decodes `input` in reads of `read` bytes and checks the invariants.
pub fn check(config: &FramingConfig, max: usize, read: usize, input: &[u8]) {
    let mut framer = config.build(max, 9600);
    let bound = 2 * max + 16;
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let take = |event: FramerEvent, frames: &mut Vec<Vec<u8>>| {
        if let FramerEvent::Frame(data) = event {
            assert!(
                !data.is_empty() && data.len() <= max,
                "frame of {}",
                data.len()
            );
            frames.push(data);
        }
    };
    for (i, piece) in input.chunks(read.max(1)).enumerate() {
        buf.extend_from_slice(piece);
        while let Some(event) = framer.decode(&mut buf).expect("infallible") {
            take(event, &mut frames);
        }
        assert!(
            buf.len() <= bound + piece.len(),
            "buffer {} > {}",
            buf.len(),
            bound + piece.len()
        );
        if i % 3 == 2
            && let Some(event) = framer.on_idle(&mut buf)
        {
            take(event, &mut frames);
        }
    }
    while let Some(event) = framer.decode_eof(&mut buf).expect("infallible") {
        take(event, &mut frames);
    }
    assert!(buf.is_empty(), "EOF left {} bytes", buf.len());

    for frame in frames {
        round_trip(config, max, &frame);
    }
    // Encoding arbitrary bytes must not panic either, and round-trips.
    round_trip(config, max, input);
}

/// If `framer.encode(payload)` succeeds, a fresh framer decodes it back.
fn round_trip(config: &FramingConfig, max: usize, payload: &[u8]) {
    let mut framer: Framer = config.build(max, 9600);
    let mut wire = BytesMut::new();
    if framer.encode(payload, &mut wire).is_err() {
        return;
    }
    let mut events = Vec::new();
    while let Some(event) = framer.decode(&mut wire).expect("infallible") {
        events.push(event);
    }
    events.extend(framer.on_idle(&mut wire));
    while let Some(event) = framer.decode_eof(&mut wire).expect("infallible") {
        events.push(event);
    }
    assert_eq!(events, [FramerEvent::Frame(payload.to_vec())]);
}

fn common(p: &mut Params) -> (usize, usize) {
    let max = 1 + usize::from(p.byte()) * 2;
    let read = 1 + usize::from(p.byte() % 64);
    (max, read)
}

/// `newline`, with the default or a 1–3 byte delimiter.
pub fn fuzz_newline(data: &[u8]) {
    let mut p = Params(data);
    let (max, read) = common(&mut p);
    let crc = p.crc();
    let delimiter = match p.byte() % 4 {
        0 => None,
        n => Some(ByteString((0..n).map(|_| p.byte() % 4 + b'\n').collect())),
    };
    check(
        &FramingConfig::Newline { delimiter, crc },
        max,
        read,
        p.rest(),
    );
}

/// `cobs`.
pub fn fuzz_cobs(data: &[u8]) {
    let mut p = Params(data);
    let (max, read) = common(&mut p);
    let crc = p.crc();
    check(&FramingConfig::Cobs { crc }, max, read, p.rest());
}

/// `slip`.
pub fn fuzz_slip(data: &[u8]) {
    let mut p = Params(data);
    let (max, read) = common(&mut p);
    let crc = p.crc();
    check(&FramingConfig::Slip { crc }, max, read, p.rest());
}

/// `length_prefixed`, every header, offsets 0–7, both length conventions.
pub fn fuzz_length_prefixed(data: &[u8]) {
    let mut p = Params(data);
    let (max, read) = common(&mut p);
    let crc = p.crc();
    let header = match p.byte() % 5 {
        0 => LengthHeader::U8,
        1 => LengthHeader::U16Be,
        2 => LengthHeader::U16Le,
        3 => LengthHeader::U32Be,
        _ => LengthHeader::U32Le,
    };
    let flags = p.byte();
    let config = FramingConfig::LengthPrefixed {
        header,
        header_offset: usize::from(flags % 8),
        length_includes_header: flags & 0x80 != 0,
        crc,
    };
    check(&config, max, read, p.rest());
}

/// `fixed`, sizes 1–64 (invalid combinations with a CRC included: `build`
/// must cope).
pub fn fuzz_fixed(data: &[u8]) {
    let mut p = Params(data);
    let (max, read) = common(&mut p);
    let crc = p.crc();
    let size = NonZeroUsize::new(1 + usize::from(p.byte() % 64)).unwrap_or(NonZeroUsize::MIN);
    check(&FramingConfig::Fixed { size, crc }, max, read, p.rest());
}

/// `idle_gap` (the harness calls `on_idle` every third read).
pub fn fuzz_idle_gap(data: &[u8]) {
    let mut p = Params(data);
    let (max, read) = common(&mut p);
    let crc = p.crc();
    let config = FramingConfig::IdleGap {
        gap_ms: Some(f64::from(p.byte())),
        gap_chars: None,
        crc,
    };
    check(&config, max, read, p.rest());
}
