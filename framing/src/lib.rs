//! Framers: split a serial byte stream into frames.
//!
//! A framer is a `tokio_util` [`Decoder`] whose items are [`FramerEvent`]s:
//! either a frame, or a report that bytes were discarded and why. Reporting
//! drops as items (rather than errors) keeps the stream alive — a noisy line
//! must never stop the port — and lets the port task count every drop with a
//! stable reason label ([`FramingDrop::reason`]).
//!
//! The framing of a port is configured with [`FramingConfig`] (the
//! `framing` key of `[pipeline.serial]`) and built into a [`Framer`]:
//!
//! | `kind` | a frame is | module |
//! |---|---|---|
//! | `newline` | bytes up to a delimiter (default `\n`, a trailing `\r` removed) | [`newline`] |
//! | `cobs` | a COBS-encoded block ended by `0x00` (Cheshire & Baker) | [`cobs`] |
//! | `slip` | a SLIP packet ended by `END` (RFC 1055) | [`slip`] |
//! | `length_prefixed` | a length header (u8, u16 BE/LE, u32 BE/LE) then that many bytes | [`counted`] |
//! | `fixed` | exactly `size` bytes | [`counted`] |
//! | `idle_gap` | bytes until the line is silent for a gap (Modbus RTU's 3.5 characters) | [`idle`] |
//!
//! Every framing can check and strip a CRC trailer ([`CrcKind`], see
//! [`crc`] for what it covers and its byte order), and every framing has a
//! maximum frame size: an oversized or corrupt frame is dropped, counted, and
//! the framer resynchronises at the next boundary without losing the good
//! frames after it. Memory stays bounded by the maximum frame size plus one
//! read chunk whatever the input. The host never interprets payloads: framers
//! split bytes, invalid UTF-8 is just bytes.
//!
//! # Using it from a port task
//!
//! ```text
//! let framer = config.framing.build(config.max_frame_bytes.get(), config.baud.get());
//! // Either: every framing, idle gaps included.
//! let mut reader = FrameReader::new(stream, framer);
//! while let Some(event) = reader.next().await { … }
//! // Or, for framings without an idle gap (framer.idle_gap().is_none()):
//! let framed = tokio_util::codec::FramedRead::new(stream, framer);
//! ```
//!
//! `FramedRead` cannot end an idle-gap frame (it only calls the decoder when
//! bytes arrive); [`FrameReader`] does: when the line has been silent for
//! [`Framer::idle_gap`] it calls [`Framer::on_idle`]. Downlink writes use
//! [`Framer::encode`].
//!
//! A crate of its own, with no knowledge of ports, pipelines or sinks:
//! `fuzz/` builds it without the host (and wasmtime), in seconds.

pub mod cobs;
pub mod counted;
pub mod crc;
pub mod idle;
pub mod newline;
mod reader;
pub mod slip;

#[cfg(test)]
mod tests;

use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::BytesMut;
use serde::Deserialize;
use tokio_util::codec::Decoder;

pub use self::crc::CrcKind;
pub use self::reader::FrameReader;

/// Why a framer discarded bytes. [`reason`](Self::reason) is the stable
/// label of the drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FramingDrop {
    /// A frame longer than the maximum; its bytes were skipped up to the
    /// next boundary.
    Oversized,
    /// A frame with no content (a blank line, an empty COBS frame, a zero
    /// length header).
    Empty,
    /// A partial frame when the stream ended (device vanished mid-frame).
    Truncated,
    /// The frame's CRC trailer did not match (or the frame was shorter than
    /// the CRC). For length-prefixed and fixed framings this also counts the
    /// bytes skipped while hunting for the next good frame.
    CrcMismatch,
    /// A COBS frame ended (`0x00`) inside a block.
    CobsInvalid,
    /// A SLIP `ESC` not followed by `ESC_END` / `ESC_ESC`.
    SlipInvalid,
    /// A length header outside the possible range (more than the maximum
    /// frame, or less than the header itself); the bytes skipped while
    /// hunting for the next plausible header are counted with it.
    LengthInvalid,
}

impl FramingDrop {
    /// Stable label for the drop counter.
    pub fn reason(self) -> &'static str {
        match self {
            FramingDrop::Oversized => "frame_oversized",
            FramingDrop::Empty => "frame_empty",
            FramingDrop::Truncated => "frame_truncated",
            FramingDrop::CrcMismatch => "crc_mismatch",
            FramingDrop::CobsInvalid => "cobs_invalid",
            FramingDrop::SlipInvalid => "slip_invalid",
            FramingDrop::LengthInvalid => "length_invalid",
        }
    }
}

impl fmt::Display for FramingDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// What a framer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramerEvent {
    /// A complete frame: delimiter, escapes, length header and CRC removed.
    Frame(Vec<u8>),
    /// Bytes were discarded.
    Dropped {
        /// Why.
        reason: FramingDrop,
        /// How many bytes of the line (including delimiters and escapes).
        bytes: usize,
    },
}

/// `framing = { kind = "…", … }` in `[pipeline.serial]`. Default: newline.
///
/// Every variant takes an optional `crc` ([`CrcKind`]): checked, then
/// stripped; a mismatch drops the frame as `crc_mismatch`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FramingConfig {
    /// Frames end with `delimiter`. Without one, `\n` with an optional `\r`
    /// before it (removed); with one, exactly those bytes.
    Newline {
        /// Any non-empty byte string: a TOML string (`"\r\n"`, `"\u0000"`)
        /// or an array of byte values (`[0xAA, 0x55]`).
        #[serde(default)]
        delimiter: Option<ByteString>,
        /// Optional CRC trailer (binary, so it must never contain the
        /// delimiter; better suited to the binary framings).
        #[serde(default)]
        crc: Option<CrcKind>,
    },
    /// Consistent Overhead Byte Stuffing, frames ended by `0x00`.
    Cobs {
        /// Optional CRC of the payload, appended before COBS encoding.
        #[serde(default)]
        crc: Option<CrcKind>,
    },
    /// RFC 1055 SLIP, frames ended by `END` (0xC0).
    Slip {
        /// Optional CRC of the payload, appended before SLIP escaping.
        #[serde(default)]
        crc: Option<CrcKind>,
    },
    /// `header_offset` bytes (kept in the frame), a length header (removed),
    /// then the body. The length counts the bytes after the header (CRC
    /// included), or the whole frame from its first byte when
    /// `length_includes_header`.
    LengthPrefixed {
        /// The header's width and byte order.
        header: LengthHeader,
        /// Bytes before the header (e.g. an address), delivered as the start
        /// of the frame.
        #[serde(default)]
        header_offset: usize,
        /// Whether the length counts the offset bytes and the header too.
        #[serde(default)]
        length_includes_header: bool,
        /// Optional CRC over everything before it (offset bytes, header and
        /// body), as Modbus does.
        #[serde(default)]
        crc: Option<CrcKind>,
    },
    /// Frames of exactly `size` bytes on the wire (CRC included).
    Fixed {
        /// Bytes per frame, CRC trailer included.
        size: NonZeroUsize,
        /// Optional CRC over the first `size - crc` bytes.
        #[serde(default)]
        crc: Option<CrcKind>,
    },
    /// A frame ends when the line has been silent for a gap: `gap_ms`, or
    /// `gap_chars` character times at the port's baud rate (Modbus RTU:
    /// 3.5). Exactly one of the two.
    IdleGap {
        /// The gap in milliseconds (fractions allowed).
        #[serde(default)]
        gap_ms: Option<f64>,
        /// The gap in character times (11 bits each); above 19200 baud the
        /// Modbus fixed value of 0.5 ms per character applies.
        #[serde(default)]
        gap_chars: Option<f64>,
        /// Optional CRC over the frame (Modbus RTU: `crc16_modbus`).
        #[serde(default)]
        crc: Option<CrcKind>,
    },
}

impl Default for FramingConfig {
    fn default() -> Self {
        FramingConfig::Newline {
            delimiter: None,
            crc: None,
        }
    }
}

/// The length header of [`FramingConfig::LengthPrefixed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthHeader {
    /// One byte.
    U8,
    /// Two bytes, most significant first.
    U16Be,
    /// Two bytes, least significant first.
    U16Le,
    /// Four bytes, most significant first.
    U32Be,
    /// Four bytes, least significant first.
    U32Le,
}

impl LengthHeader {
    /// Width of the header in bytes.
    pub fn width(self) -> usize {
        match self {
            LengthHeader::U8 => 1,
            LengthHeader::U16Be | LengthHeader::U16Le => 2,
            LengthHeader::U32Be | LengthHeader::U32Le => 4,
        }
    }

    /// The largest value the header can hold.
    pub fn max_value(self) -> u64 {
        match self {
            LengthHeader::U8 => u8::MAX.into(),
            LengthHeader::U16Be | LengthHeader::U16Le => u16::MAX.into(),
            LengthHeader::U32Be | LengthHeader::U32Le => u32::MAX.into(),
        }
    }

    /// Reads the header from the start of `bytes` (`None` if too short).
    pub fn read(self, bytes: &[u8]) -> Option<u64> {
        Some(match self {
            LengthHeader::U8 => (*bytes.first()?).into(),
            LengthHeader::U16Be => u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?).into(),
            LengthHeader::U16Le => u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?).into(),
            LengthHeader::U32Be => u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?).into(),
            LengthHeader::U32Le => u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?).into(),
        })
    }

    /// Appends `value` (which must fit, see [`max_value`](Self::max_value)).
    fn write(self, value: u64, dst: &mut BytesMut) {
        // Truncating casts are guarded by the callers' `max_value` check.
        match self {
            LengthHeader::U8 => dst.extend_from_slice(&[value as u8]),
            LengthHeader::U16Be => dst.extend_from_slice(&(value as u16).to_be_bytes()),
            LengthHeader::U16Le => dst.extend_from_slice(&(value as u16).to_le_bytes()),
            LengthHeader::U32Be => dst.extend_from_slice(&(value as u32).to_be_bytes()),
            LengthHeader::U32Le => dst.extend_from_slice(&(value as u32).to_le_bytes()),
        }
    }
}

/// A byte string from the config: a TOML string (its UTF-8 bytes) or an
/// array of integers 0–255 (for bytes a string cannot spell, ≥ 0x80).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteString(pub Vec<u8>);

impl<'de> Deserialize<'de> for ByteString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ByteString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of byte values (0-255)")
            }
            fn visit_str<E>(self, v: &str) -> Result<ByteString, E> {
                Ok(ByteString(v.as_bytes().to_vec()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ByteString, A::Error> {
                let mut bytes = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                Ok(ByteString(bytes))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Bits per character on the wire for `gap_chars`: start, 8 data, parity or
/// a second stop, stop (Modbus RTU's definition).
const BITS_PER_CHAR: f64 = 11.0;
/// Above this baud rate Modbus RTU fixes the character time instead of
/// scaling it (t3.5 = 1.75 ms, i.e. 0.5 ms per character).
const MODBUS_FIXED_BAUD: u32 = 19_200;
/// Largest `header_offset` accepted.
const MAX_HEADER_OFFSET: usize = 1 << 16;
/// Longest idle gap accepted, so a typo cannot stall a port for hours.
const MAX_GAP: Duration = Duration::from_secs(60);

impl FramingConfig {
    /// The CRC configured, if any.
    pub fn crc(&self) -> Option<CrcKind> {
        match self {
            FramingConfig::Newline { crc, .. }
            | FramingConfig::Cobs { crc }
            | FramingConfig::Slip { crc }
            | FramingConfig::LengthPrefixed { crc, .. }
            | FramingConfig::Fixed { crc, .. }
            | FramingConfig::IdleGap { crc, .. } => *crc,
        }
    }

    /// The configured `kind`, as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            FramingConfig::Newline { .. } => "newline",
            FramingConfig::Cobs { .. } => "cobs",
            FramingConfig::Slip { .. } => "slip",
            FramingConfig::LengthPrefixed { .. } => "length_prefixed",
            FramingConfig::Fixed { .. } => "fixed",
            FramingConfig::IdleGap { .. } => "idle_gap",
        }
    }

    /// Every problem with this framing for a port with these settings, each
    /// starting with the key below `[pipeline.serial]` (`framing.…`).
    pub fn validate(&self, max_frame_bytes: usize, baud: u32) -> Vec<String> {
        let mut problems = Vec::new();
        let crc_len = self.crc().map_or(0, CrcKind::width);
        match self {
            FramingConfig::Newline { delimiter, .. } => {
                if delimiter.as_ref().is_some_and(|d| d.0.is_empty()) {
                    problems.push("framing.delimiter: must not be empty".into());
                }
            }
            FramingConfig::Cobs { .. } | FramingConfig::Slip { .. } => {}
            FramingConfig::LengthPrefixed { header_offset, .. } => {
                if *header_offset > max_frame_bytes {
                    problems.push(format!(
                        "framing.header_offset: {header_offset} is more than max_frame_bytes ({max_frame_bytes})"
                    ));
                }
                if *header_offset > MAX_HEADER_OFFSET {
                    problems.push(format!(
                        "framing.header_offset: must be at most {MAX_HEADER_OFFSET}"
                    ));
                }
            }
            FramingConfig::Fixed { size, crc } => {
                if size.get() <= crc_len {
                    problems.push(format!(
                        "framing.size: {size} leaves no payload after the {}-byte {} trailer",
                        crc_len,
                        crc.map_or("", CrcKind::name)
                    ));
                }
                if size.get().saturating_sub(crc_len) > max_frame_bytes {
                    problems.push(format!(
                        "framing.size: {size} is more than max_frame_bytes ({max_frame_bytes}) plus the CRC"
                    ));
                }
            }
            FramingConfig::IdleGap {
                gap_ms, gap_chars, ..
            } => match (gap_ms, gap_chars) {
                (Some(_), Some(_)) => {
                    problems.push("framing: set gap_ms or gap_chars, not both".into())
                }
                (None, None) => problems.push(
                    "framing: idle_gap needs gap_ms or gap_chars (Modbus RTU: gap_chars = 3.5)"
                        .into(),
                ),
                (Some(v), None) | (None, Some(v)) => {
                    let key = if gap_ms.is_some() {
                        "gap_ms"
                    } else {
                        "gap_chars"
                    };
                    if !(v.is_finite() && *v > 0.0) {
                        problems.push(format!("framing.{key}: must be a positive number"));
                    } else if self.gap(baud).is_none_or(|g| g > MAX_GAP) {
                        problems.push(format!(
                            "framing.{key}: the gap must be at most {} s",
                            MAX_GAP.as_secs()
                        ));
                    }
                }
            },
        }
        problems
    }

    /// The idle gap of an `idle_gap` framing at `baud`.
    fn gap(&self, baud: u32) -> Option<Duration> {
        let FramingConfig::IdleGap {
            gap_ms, gap_chars, ..
        } = self
        else {
            return None;
        };
        let secs = match (gap_ms, gap_chars) {
            (Some(ms), _) => ms / 1000.0,
            (None, chars) => {
                let chars = chars.unwrap_or(3.5);
                if baud > MODBUS_FIXED_BAUD {
                    chars * 0.000_5
                } else {
                    chars * BITS_PER_CHAR / f64::from(baud.max(1))
                }
            }
        };
        Duration::try_from_secs_f64(secs).ok()
    }

    /// Builds the framer for a port. `max_frame_bytes` is the largest
    /// payload delivered (CRC and framing bytes not counted), `baud` the
    /// port's rate (used by `gap_chars`).
    ///
    /// Never panics: call [`validate`](Self::validate) first; values it
    /// refuses are clamped here (an empty delimiter becomes `\n`, a bad gap
    /// becomes 3.5 characters).
    pub fn build(&self, max_frame_bytes: usize, baud: u32) -> Framer {
        let max_frame = max_frame_bytes.max(1);
        let crc = self.crc();
        let crc_len = crc.map_or(0, CrcKind::width);
        // Largest raw frame (payload + CRC) a framer needs to hold.
        let limit = max_frame.saturating_add(crc_len);
        let kind = match self {
            FramingConfig::Newline { delimiter, .. } => match delimiter {
                Some(d) if !d.0.is_empty() => {
                    Kind::Newline(Box::new(newline::Newline::new(d.0.clone(), false, limit)))
                }
                _ => Kind::Newline(Box::new(newline::Newline::new(vec![b'\n'], true, limit))),
            },
            FramingConfig::Cobs { .. } => Kind::Cobs(cobs::CobsDecoder::new(limit)),
            FramingConfig::Slip { .. } => Kind::Slip(slip::SlipDecoder::new(limit)),
            FramingConfig::LengthPrefixed {
                header,
                header_offset,
                length_includes_header,
                ..
            } => Kind::Counted(counted::Counted::new(
                counted::Shape::Prefixed {
                    header: *header,
                    offset: (*header_offset).min(max_frame).min(MAX_HEADER_OFFSET),
                    includes_header: *length_includes_header,
                },
                crc,
                max_frame,
            )),
            FramingConfig::Fixed { size, .. } => Kind::Counted(counted::Counted::new(
                counted::Shape::Fixed {
                    size: size.get().clamp(crc_len + 1, limit),
                },
                crc,
                max_frame,
            )),
            FramingConfig::IdleGap { .. } => {
                let gap = self
                    .gap(baud)
                    .filter(|g| !g.is_zero() && *g <= MAX_GAP)
                    .or_else(|| {
                        FramingConfig::IdleGap {
                            gap_ms: None,
                            gap_chars: Some(3.5),
                            crc: None,
                        }
                        .gap(baud)
                    })
                    .unwrap_or(Duration::from_millis(4));
                Kind::Idle(idle::Idle::new(limit, gap))
            }
        };
        Framer {
            kind,
            crc,
            max_frame,
        }
    }
}

/// Why [`Framer::encode`] refused a payload: it would not come back out of
/// the framer as the same frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Zero-length frames are dropped by every framer.
    #[error("empty frame")]
    Empty,
    /// More than `max_frame_bytes`.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The framer's maximum.
        max: usize,
    },
    /// A newline-framed payload (or its CRC) contains the delimiter, or ends
    /// with `\r` under the default newline framing.
    #[error("payload contains the frame delimiter")]
    ContainsDelimiter,
    /// A fixed-size framing needs exactly `expected` payload bytes.
    #[error("fixed framing needs {expected} payload bytes, got {len}")]
    WrongSize {
        /// Payload length.
        len: usize,
        /// Payload bytes per frame.
        expected: usize,
    },
    /// A length-prefixed payload must start with the `header_offset` bytes.
    #[error("payload of {len} bytes is shorter than the header offset {offset}")]
    ShorterThanOffset {
        /// Payload length.
        len: usize,
        /// The configured `header_offset`.
        offset: usize,
    },
    /// The length does not fit the configured header.
    #[error("length {len} does not fit the length header")]
    LengthOverflow {
        /// The length that would be written.
        len: u64,
    },
}

/// The framer of one port, built by [`FramingConfig::build`].
#[derive(Debug)]
pub struct Framer {
    kind: Kind,
    crc: Option<CrcKind>,
    max_frame: usize,
}

#[derive(Debug)]
enum Kind {
    Newline(Box<newline::Newline>),
    Cobs(cobs::CobsDecoder),
    Slip(slip::SlipDecoder),
    Counted(counted::Counted),
    Idle(idle::Idle),
}

/// What a framing module hands to [`Framer`]: a raw frame (CRC still
/// attached unless the module checked it) or a drop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A frame; `wire` is how many bytes of the line it took.
    Frame { data: Vec<u8>, wire: usize },
    /// Bytes discarded.
    Drop(FramingDrop, usize),
}

impl Framer {
    /// The largest payload this framer delivers.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The CRC checked on every frame, if any.
    pub fn crc(&self) -> Option<CrcKind> {
        self.crc
    }

    /// For an idle-gap framing, how long the line must be silent to end a
    /// frame; `None` for every other framing.
    pub fn idle_gap(&self) -> Option<Duration> {
        match &self.kind {
            Kind::Idle(idle) => Some(idle.gap()),
            _ => None,
        }
    }

    /// Called by the port task when the line was silent for
    /// [`idle_gap`](Self::idle_gap): ends the frame in `buf`. Returns `None`
    /// for other framings, or when there is nothing to end.
    pub fn on_idle(&mut self, buf: &mut BytesMut) -> Option<FramerEvent> {
        match &mut self.kind {
            Kind::Idle(idle) => {
                let step = idle.on_idle(buf)?;
                Some(self.finish(step))
            }
            _ => None,
        }
    }

    /// Appends `payload` framed for the wire (delimiter, escaping, header and
    /// CRC as configured): the exact inverse of decoding. An idle-gap frame
    /// is the payload and CRC; the writer must then keep the line silent for
    /// the gap.
    pub fn encode(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
        if payload.is_empty() {
            return Err(EncodeError::Empty);
        }
        if payload.len() > self.max_frame {
            return Err(EncodeError::TooLarge {
                len: payload.len(),
                max: self.max_frame,
            });
        }
        match &self.kind {
            Kind::Newline(n) => {
                let mut raw = payload.to_vec();
                if let Some(crc) = self.crc {
                    crc.append(payload, &mut raw);
                }
                n.encode(&raw, dst)
            }
            Kind::Cobs(_) => {
                let mut raw = payload.to_vec();
                if let Some(crc) = self.crc {
                    crc.append(payload, &mut raw);
                }
                cobs::encode(&raw, dst);
                Ok(())
            }
            Kind::Slip(_) => {
                let mut raw = payload.to_vec();
                if let Some(crc) = self.crc {
                    crc.append(payload, &mut raw);
                }
                slip::encode(&raw, dst);
                Ok(())
            }
            Kind::Counted(c) => c.encode(payload, dst),
            Kind::Idle(_) => {
                let start = dst.len();
                dst.extend_from_slice(payload);
                if let Some(crc) = self.crc {
                    let mut trailer = Vec::with_capacity(crc.width());
                    crc.append(&dst[start..], &mut trailer);
                    dst.extend_from_slice(&trailer);
                }
                Ok(())
            }
        }
    }

    /// Turns a module's step into an event: CRC check and strip, empty and
    /// size checks.
    fn finish(&self, step: Step) -> FramerEvent {
        let (mut data, wire) = match step {
            Step::Drop(reason, bytes) => return FramerEvent::Dropped { reason, bytes },
            Step::Frame { data, wire } => (data, wire),
        };
        let drop = |reason| FramerEvent::Dropped {
            reason,
            bytes: wire,
        };
        if data.is_empty() {
            return drop(FramingDrop::Empty);
        }
        // Length-prefixed and fixed framers check the CRC themselves (it
        // decides where they resynchronise).
        if let (Some(crc), false) = (self.crc, matches!(self.kind, Kind::Counted(_))) {
            if !crc.verify(&data) {
                return drop(FramingDrop::CrcMismatch);
            }
            data.truncate(data.len() - crc.width());
            if data.is_empty() {
                return drop(FramingDrop::Empty);
            }
        }
        if data.len() > self.max_frame {
            return drop(FramingDrop::Oversized);
        }
        FramerEvent::Frame(data)
    }

    fn step(&mut self, buf: &mut BytesMut) -> Option<Step> {
        match &mut self.kind {
            Kind::Newline(n) => n.decode(buf),
            Kind::Cobs(c) => c.decode(buf),
            Kind::Slip(s) => s.decode(buf),
            Kind::Counted(c) => c.decode(buf),
            Kind::Idle(i) => i.decode(buf),
        }
    }

    fn step_eof(&mut self, buf: &mut BytesMut) -> Option<Step> {
        match &mut self.kind {
            Kind::Newline(n) => n.eof(buf),
            Kind::Cobs(c) => c.eof(buf),
            Kind::Slip(s) => s.eof(buf),
            Kind::Counted(c) => c.eof(buf),
            Kind::Idle(i) => i.eof(buf),
        }
    }
}

impl Decoder for Framer {
    type Item = FramerEvent;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<FramerEvent>, std::io::Error> {
        Ok(self.step(buf).map(|step| self.finish(step)))
    }

    /// A partial frame at the end of the stream is the device vanishing
    /// mid-frame: it is reported as `frame_truncated`, not delivered.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<FramerEvent>, std::io::Error> {
        if let Some(step) = self.step(buf) {
            return Ok(Some(self.finish(step)));
        }
        Ok(self.step_eof(buf).map(|step| self.finish(step)))
    }
}
