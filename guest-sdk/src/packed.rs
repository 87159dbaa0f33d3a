//! The `packed-output` buffer of `sluice:transform@0.2.0`: a frame's
//! messages and points, encoded with postcard in the layout the WIT file
//! documents (`wit/v0.2.0/transform.wit`).
//!
//! Why a buffer: lifting 0.1.0's tree of records, lists and strings out of
//! the guest's memory one value at a time, with an allocation for every
//! string, was more than half of the cost of a call. One buffer is one copy.
//!
//! The layout is a contract with every host that loads 0.2.0 modules, so it
//! lives here in private mirror types, not in the public [`Message`] and
//! [`Point`]: reordering a public struct's fields must not change the wire.
//! The host decodes it in `runtime/src/packed.rs`; one pinned sample
//! ([`GOLDEN_HEX`]) is checked against this encoder and that decoder.

use serde::ser::{Serialize, Serializer};

use crate::{Error, FieldValue, Message, Point};

/// Encodes one frame's output.
pub(crate) fn encode(messages: &[Message], points: &[Point]) -> Result<Vec<u8>, Error> {
    let wire = WireOutput {
        messages: Messages(messages),
        points: Points(points),
    };
    postcard::to_extend(&wire, Vec::with_capacity(size_hint(messages, points)))
        .map_err(|e| Error::internal(format!("cannot encode the output: {e}")))
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

#[derive(serde::Serialize)]
struct WireOutput<'a> {
    messages: Messages<'a>,
    points: Points<'a>,
}

struct Messages<'a>(&'a [Message]);

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|m| WireMessage {
            topic: &m.topic,
            payload: serde_bytes::Bytes::new(&m.payload),
            qos: m.qos.level(),
            retain: m.retain,
        }))
    }
}

#[derive(serde::Serialize)]
struct WireMessage<'a> {
    topic: &'a str,
    /// A byte string (length, then the bytes), not a sequence of `u8`s
    /// encoded one by one.
    payload: &'a serde_bytes::Bytes,
    qos: u8,
    retain: bool,
}

struct Points<'a>(&'a [Point]);

impl Serialize for Points<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|p| WirePoint {
            measurement: &p.measurement,
            tags: Tags(&p.tags),
            fields: Fields(&p.fields),
            timestamp_ns: p.timestamp_ns,
        }))
    }
}

#[derive(serde::Serialize)]
struct WirePoint<'a> {
    measurement: &'a str,
    tags: Tags<'a>,
    fields: Fields<'a>,
    timestamp_ns: Option<i64>,
}

struct Tags<'a>(&'a [(String, String)]);

impl Serialize for Tags<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

struct Fields<'a>(&'a [(String, FieldValue)]);

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(k, v)| {
            let value = match v {
                FieldValue::Float(v) => WireValue::Float(*v),
                FieldValue::Int(v) => WireValue::Int(*v),
                FieldValue::Uint(v) => WireValue::Uint(*v),
                FieldValue::Boolean(v) => WireValue::Boolean(*v),
                FieldValue::Text(v) => WireValue::Text(v),
            };
            (k.as_str(), value)
        }))
    }
}

/// The variants' order is their number on the wire.
#[derive(serde::Serialize)]
enum WireValue<'a> {
    Float(f64),
    Int(i64),
    Uint(u64),
    Boolean(bool),
    Text(&'a str),
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
        let bytes = encode(&messages, &points).unwrap();
        assert_eq!(hex(&bytes), GOLDEN_HEX);
    }

    #[test]
    fn an_empty_output_is_two_zero_counts() {
        assert_eq!(encode(&[], &[]).unwrap(), [0, 0]);
    }

    #[test]
    fn the_size_hint_covers_typical_outputs() {
        let (messages, points) = golden_output();
        let bytes = encode(&messages, &points).unwrap();
        assert!(size_hint(&messages, &points) >= bytes.len());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
