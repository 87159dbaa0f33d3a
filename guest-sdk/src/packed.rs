//! The `packed-output` buffer of `sluice:transform@0.2.0`: a frame's
//! messages and points, encoded with postcard in the layout the WIT file
//! documents (`wit/v0.2.0/transform.wit`).
//!
//! Why a buffer: lifting 0.1.0's tree of records, lists and strings out of
//! the guest's memory one value at a time, with an allocation for every
//! string, was more than half of the cost of a call. One buffer is one copy.
//!
//! The layout is a contract with every host that loads 0.2.0 modules. It
//! uses five of postcard's wire types (varints, zigzag varints, bytes with
//! their length, little-endian `f64`, one-byte `bool` and `Option` tags), so
//! it is written by hand: through postcard's serde path, packing took a
//! tenth of a whole call inside the sandbox, and the SDK needs neither serde
//! nor postcard for anything else. The host decodes it in
//! `runtime/src/packed.rs`; one pinned sample ([`GOLDEN_HEX`]) is checked
//! against this encoder and that decoder.

use crate::{FieldValue, Message, Point};

/// Encodes one frame's output.
pub(crate) fn encode(messages: &[Message], points: &[Point]) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_hint(messages, points));
    varint(&mut out, messages.len() as u64);
    for m in messages {
        bytes(&mut out, m.topic.as_bytes());
        bytes(&mut out, &m.payload);
        out.push(m.qos.level());
        out.push(u8::from(m.retain));
    }
    varint(&mut out, points.len() as u64);
    for p in points {
        bytes(&mut out, p.measurement.as_bytes());
        varint(&mut out, p.tags.len() as u64);
        for (key, value) in &p.tags {
            bytes(&mut out, key.as_bytes());
            bytes(&mut out, value.as_bytes());
        }
        varint(&mut out, p.fields.len() as u64);
        for (key, value) in &p.fields {
            bytes(&mut out, key.as_bytes());
            // The variants' order is their number on the wire.
            match value {
                FieldValue::Float(v) => {
                    out.push(0);
                    out.extend_from_slice(&v.to_le_bytes());
                }
                FieldValue::Int(v) => {
                    out.push(1);
                    varint(&mut out, zigzag(*v));
                }
                FieldValue::Uint(v) => {
                    out.push(2);
                    varint(&mut out, *v);
                }
                FieldValue::Boolean(v) => out.extend_from_slice(&[3, u8::from(*v)]),
                FieldValue::Text(v) => {
                    out.push(4);
                    bytes(&mut out, v.as_bytes());
                }
            }
        }
        match p.timestamp_ns {
            None => out.push(0),
            Some(ts) => {
                out.push(1);
                varint(&mut out, zigzag(ts));
            }
        }
    }
    out
}

/// An unsigned LEB128 varint.
#[inline(always)]
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A signed integer as postcard writes it: zigzag, then a varint.
fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Bytes (or a string's bytes), their length first.
#[inline(always)]
fn bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Room for the whole buffer, so it is allocated once: the strings plus a
/// few bytes of lengths and tags per item (an estimate; the `Vec` grows if
/// it is short).
fn size_hint(messages: &[Message], points: &[Point]) -> usize {
    let messages: usize = messages
        .iter()
        .map(|m| m.topic.len() + m.payload.len() + 8)
        .sum();
    let points: usize = points
        .iter()
        .map(|p| {
            let tags: usize = p.tags.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
            let fields: usize = p
                .fields
                .iter()
                .map(|(k, v)| {
                    k.len()
                        + 12
                        + match v {
                            FieldValue::Text(t) => t.len(),
                            _ => 0,
                        }
                })
                .sum();
            p.measurement.len() + tags + fields + 16
        })
        .sum();
    messages + points + 8
}

/// A sample output's encoding (the output is in this module's tests), in
/// hex: the SDK's encoder must produce it and the host's decoder must read
/// it (`runtime/src/packed.rs`). Changing it means changing the format,
/// which breaks every 0.2.0 module already built.
pub(crate) const GOLDEN_HEX: &str = concat!(
    // 2 messages
    "02",
    // "a/b", b"27", QoS 1, retained
    "03612f62023237",
    "0101",
    // "c", [ff 00 01], QoS 0, not retained
    "0163",
    "03ff0001",
    "0000",
    // 1 point: "env", 1 tag (node=n1), 5 fields
    "01",
    "03656e76",
    "01046e6f6465026e31",
    "05",
    // t = float 27.6 (variant 0, f64 little-endian)
    "0174009a99999999993b40",
    // i = int -39 (variant 1, zigzag varint)
    "0169014d",
    // u = uint 65536 (variant 2, varint)
    "017502808004",
    // o = boolean true (variant 3)
    "016f0301",
    // s = text "é" (variant 4, length then UTF-8)
    "01730402c3a9",
    // timestamp: Some(1_000_000_000 ns), zigzag varint
    "0180a8d6b907",
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Qos;

    fn golden_output() -> (Vec<Message>, Vec<Point>) {
        let messages = vec![
            Message::new("a/b", "27").qos(Qos::AtLeastOnce).retain(true),
            Message::new("c", [0xffu8, 0x00, 0x01]),
        ];
        let points = vec![
            Point::new("env")
                .tag("node", "n1")
                .field("t", 27.6)
                .field("i", -39i64)
                .field("u", 65536u64)
                .field("o", true)
                .field("s", "é")
                .timestamp_ns(1_000_000_000),
        ];
        (messages, points)
    }

    #[test]
    fn the_encoding_is_pinned() {
        let (messages, points) = golden_output();
        let bytes = encode(&messages, &points);
        assert_eq!(hex(&bytes), GOLDEN_HEX);
    }

    #[test]
    fn an_empty_output_is_two_zero_counts() {
        assert_eq!(encode(&[], &[]), [0, 0]);
    }

    #[test]
    fn the_size_hint_covers_typical_outputs() {
        let (messages, points) = golden_output();
        let bytes = encode(&messages, &points);
        assert!(size_hint(&messages, &points) >= bytes.len());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
