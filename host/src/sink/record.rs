//! The bytes of one outbox item: an [`MqttMessage`] or a [`Point`] in a
//! compact, versioned binary form.
//!
//! The outbox itself stores opaque bytes; the sinks use these helpers to
//! turn what they queue into bytes and back. Hand-written rather than
//! serde + postcard: the model types have no serde derives (and need none
//! elsewhere), the format must stay readable by every later version of the
//! host (a file written today is read after an upgrade), and a hand-written
//! decoder checks every length against the bytes that are really there, so a
//! damaged record is an error, never a huge allocation or a panic.
//!
//! # Format, version 1
//!
//! Every record starts with a kind byte and a version byte. Integers marked
//! *varint* are unsigned LEB128 (at most 10 bytes, no overlong or
//! overflowing encodings); strings are a varint length and UTF-8 bytes.
//!
//! ```text
//! MQTT message   'M' 0x01  flags  topic:string  payload:rest-of-record
//!                flags: bits 0-1 QoS (0, 1, 2), bit 2 retain, others 0
//! Point          'P' 0x01  flags  [timestamp: i64 LE if flags bit 0]
//!                measurement:string
//!                tag count:varint   { key:string value:string }*
//!                field count:varint { key:string type:u8 value }*
//!                flags: bit 0 timestamp present, others 0
//!                type 0 float (f64 LE bits), 1 int (zigzag varint),
//!                     2 uint (varint), 3 false, 4 true (no value),
//!                     5 text (string)
//! ```
//!
//! The MQTT payload takes the rest of the record, so a message costs its
//! topic and payload plus 4–5 bytes. A new layout gets a new version byte;
//! decoders keep reading every older version.

use crate::model::{CompactString, FieldValue, MqttMessage, Point, Qos};
use crate::output::{FieldRef, MessageRef, PointLike};

/// Kind byte of an MQTT message record.
pub const KIND_MQTT: u8 = b'M';
/// Kind byte of a point record.
pub const KIND_POINT: u8 = b'P';
/// The version this host writes (and the newest it reads).
pub const VERSION: u8 = 1;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record ends before a field it announces.
    #[error("record truncated: {0} missing")]
    Truncated(&'static str),
    /// The kind byte is neither `M` nor `P`, or not the one asked for.
    #[error("record kind {found:#04x}, expected {expected}")]
    WrongKind {
        /// The kind byte found.
        found: u8,
        /// What the caller expected.
        expected: &'static str,
    },
    /// Written by a newer host.
    #[error("record version {0} is newer than this host reads ({VERSION})")]
    UnsupportedVersion(u8),
    /// Flag bits that no version defines, or QoS 3.
    #[error("invalid flags {0:#04x}")]
    InvalidFlags(u8),
    /// A varint longer than 10 bytes or above `u64::MAX`.
    #[error("invalid varint")]
    InvalidVarint,
    /// A string that is not UTF-8.
    #[error("{0} is not UTF-8")]
    InvalidUtf8(&'static str),
    /// An unknown field type byte.
    #[error("unknown field type {0}")]
    InvalidFieldType(u8),
    /// Bytes after the last field of a point.
    #[error("{0} unexpected bytes after the record")]
    TrailingBytes(usize),
}

/// A decoded record of either kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// An MQTT message.
    Mqtt(MqttMessage),
    /// An InfluxDB point.
    Point(Point),
}

/// Decodes a record of either kind (used by `sluice outbox verify`).
pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
    match bytes.first() {
        Some(&KIND_MQTT) => decode_mqtt(bytes).map(Record::Mqtt),
        Some(&KIND_POINT) => decode_point(bytes).map(Record::Point),
        Some(&found) => Err(RecordError::WrongKind {
            found,
            expected: "'M' or 'P'",
        }),
        None => Err(RecordError::Truncated("kind")),
    }
}

/// Appends the record of `message` to `out`.
pub fn encode_mqtt(message: MessageRef<'_>, out: &mut Vec<u8>) {
    out.reserve(message.topic.len() + message.payload.len() + 8);
    out.push(KIND_MQTT);
    out.push(VERSION);
    out.push(message.qos.level() | if message.retain { 0b100 } else { 0 });
    put_bytes(out, message.topic.as_bytes());
    out.extend_from_slice(message.payload);
}

/// The record of `message` as a new vector.
pub fn mqtt_to_vec(message: MessageRef<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_mqtt(message, &mut out);
    out
}

/// Decodes an MQTT message record.
pub fn decode_mqtt(bytes: &[u8]) -> Result<MqttMessage, RecordError> {
    let mut r = Reader::new(bytes);
    r.header(KIND_MQTT, "'M' (MQTT message)")?;
    let flags = r.u8("flags")?;
    if flags & !0b111 != 0 {
        return Err(RecordError::InvalidFlags(flags));
    }
    let qos = match flags & 0b11 {
        0 => Qos::AtMostOnce,
        1 => Qos::AtLeastOnce,
        2 => Qos::ExactlyOnce,
        _ => return Err(RecordError::InvalidFlags(flags)),
    };
    let topic = r.string("topic")?;
    Ok(MqttMessage {
        topic,
        payload: r.rest().to_vec().into(),
        qos,
        retain: flags & 0b100 != 0,
    })
}

/// Appends the record of `point` to `out`.
pub fn encode_point(point: &impl PointLike, out: &mut Vec<u8>) {
    out.push(KIND_POINT);
    out.push(VERSION);
    match point.timestamp_ns() {
        Some(ts) => {
            out.push(1);
            out.extend_from_slice(&ts.to_le_bytes());
        }
        None => out.push(0),
    }
    put_bytes(out, point.measurement().as_bytes());
    put_varint(out, point.tags().len() as u64);
    for (key, value) in point.tags() {
        put_bytes(out, key.as_bytes());
        put_bytes(out, value.as_bytes());
    }
    put_varint(out, point.fields().len() as u64);
    for (key, value) in point.fields() {
        put_bytes(out, key.as_bytes());
        match value {
            FieldRef::Float(f) => {
                out.push(0);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            FieldRef::Int(i) => {
                out.push(1);
                put_varint(out, ((i << 1) ^ (i >> 63)) as u64);
            }
            FieldRef::UInt(u) => {
                out.push(2);
                put_varint(out, u);
            }
            FieldRef::Bool(b) => out.push(if b { 4 } else { 3 }),
            FieldRef::Text(s) => {
                out.push(5);
                put_bytes(out, s.as_bytes());
            }
        }
    }
}

/// The record of `point` as a new vector.
pub fn point_to_vec(point: &impl PointLike) -> Vec<u8> {
    let mut out = Vec::new();
    encode_point(point, &mut out);
    out
}

/// Decodes a point record.
pub fn decode_point(bytes: &[u8]) -> Result<Point, RecordError> {
    let mut r = Reader::new(bytes);
    r.header(KIND_POINT, "'P' (point)")?;
    let flags = r.u8("flags")?;
    if flags & !1 != 0 {
        return Err(RecordError::InvalidFlags(flags));
    }
    let timestamp_ns = if flags & 1 != 0 {
        let raw = r.take(8, "timestamp")?;
        let mut le = [0u8; 8];
        le.copy_from_slice(raw);
        Some(i64::from_le_bytes(le))
    } else {
        None
    };
    let measurement = r.string("measurement")?;
    // Every tag takes at least 2 bytes and every field 2, so a count above
    // what is left is a lie; checking it first bounds the allocation.
    let tag_count = r.count(2, "tag count")?;
    let mut tags = Vec::with_capacity(tag_count);
    for _ in 0..tag_count {
        let key = r.string("tag key")?;
        let value = r.string("tag value")?;
        tags.push((key, value));
    }
    let field_count = r.count(2, "field count")?;
    let mut fields = Vec::with_capacity(field_count);
    for _ in 0..field_count {
        let key = r.string("field key")?;
        let value = match r.u8("field type")? {
            0 => {
                let raw = r.take(8, "float field")?;
                let mut le = [0u8; 8];
                le.copy_from_slice(raw);
                FieldValue::Float(f64::from_bits(u64::from_le_bytes(le)))
            }
            1 => {
                let z = r.varint("int field")?;
                FieldValue::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            2 => FieldValue::UInt(r.varint("uint field")?),
            3 => FieldValue::Bool(false),
            4 => FieldValue::Bool(true),
            5 => FieldValue::Text(r.string("text field")?),
            other => return Err(RecordError::InvalidFieldType(other)),
        };
        fields.push((key, value));
    }
    if !r.rest().is_empty() {
        return Err(RecordError::TrailingBytes(r.rest().len()));
    }
    Ok(Point {
        measurement,
        tags,
        fields,
        timestamp_ns,
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A cursor over a record that refuses to read past its end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn header(&mut self, kind: u8, expected: &'static str) -> Result<(), RecordError> {
        let found = self.u8("kind")?;
        if found != kind {
            return Err(RecordError::WrongKind { found, expected });
        }
        match self.u8("version")? {
            VERSION => Ok(()),
            0 => Err(RecordError::InvalidFlags(0)),
            newer => Err(RecordError::UnsupportedVersion(newer)),
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RecordError> {
        if self.bytes.len() < n {
            return Err(RecordError::Truncated(what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, RecordError> {
        Ok(self.take(1, what)?[0])
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, RecordError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.u8(what)?;
            let bits = u64::from(byte & 0x7f);
            // The 10th byte may only carry the top bit of a u64.
            if i == 9 && byte > 1 {
                return Err(RecordError::InvalidVarint);
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                // Overlong: a zero final byte after the first.
                if i > 0 && byte == 0 {
                    return Err(RecordError::InvalidVarint);
                }
                return Ok(value);
            }
        }
        Err(RecordError::InvalidVarint)
    }

    /// A count of elements that take at least `min_bytes` each.
    fn count(&mut self, min_bytes: usize, what: &'static str) -> Result<usize, RecordError> {
        let n = self.varint(what)?;
        let max = (self.bytes.len() / min_bytes) as u64;
        if n > max {
            return Err(RecordError::Truncated(what));
        }
        usize::try_from(n).map_err(|_| RecordError::Truncated(what))
    }

    fn string(&mut self, what: &'static str) -> Result<CompactString, RecordError> {
        let len = self.varint(what)?;
        let len = usize::try_from(len).map_err(|_| RecordError::Truncated(what))?;
        let raw = self.take(len, what)?;
        CompactString::from_utf8(raw).map_err(|_| RecordError::InvalidUtf8(what))
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message() -> MqttMessage {
        MqttMessage {
            topic: "plant/line1/temp".into(),
            payload: b"{\"t\":21.5}".to_vec().into(),
            qos: Qos::AtLeastOnce,
            retain: true,
        }
    }

    fn point() -> Point {
        Point {
            measurement: "env".into(),
            tags: vec![("node".into(), "n1".into()), ("room".into(), "ü 1".into())],
            fields: vec![
                ("t".into(), FieldValue::Float(-21.25)),
                ("n".into(), FieldValue::Int(-5)),
                ("big".into(), FieldValue::Int(i64::MIN)),
                ("u".into(), FieldValue::UInt(u64::MAX)),
                ("ok".into(), FieldValue::Bool(true)),
                ("bad".into(), FieldValue::Bool(false)),
                ("s".into(), FieldValue::Text("a \"b\"".into())),
            ],
            timestamp_ns: Some(1_700_000_000_123_456_789),
        }
    }

    #[test]
    fn mqtt_round_trip_and_size() {
        let m = message();
        let bytes = mqtt_to_vec(m.as_ref());
        assert_eq!(bytes.len(), 3 + 1 + m.topic.len() + m.payload.len());
        assert_eq!(decode_mqtt(&bytes), Ok(m.clone()));
        assert_eq!(decode(&bytes), Ok(Record::Mqtt(m)));
    }

    #[test]
    fn point_round_trip() {
        let p = point();
        let bytes = point_to_vec(&p);
        assert_eq!(decode_point(&bytes), Ok(p.clone()));
        let no_ts = Point {
            timestamp_ns: None,
            ..p
        };
        assert_eq!(decode_point(&point_to_vec(&no_ts)), Ok(no_ts));
    }

    #[test]
    fn golden_bytes_stay_readable() {
        // Version 1 as written by this host; a later host must still read it.
        let mqtt = [b'M', 1, 0b110, 3, b'a', b'/', b'b', 0xff, 0x00];
        assert_eq!(
            decode_mqtt(&mqtt),
            Ok(MqttMessage {
                topic: "a/b".into(),
                payload: vec![0xff, 0x00].into(),
                qos: Qos::ExactlyOnce,
                retain: true,
            })
        );
        let p = [
            b'P', 1, 1, 42, 0, 0, 0, 0, 0, 0, 0, 1, b'm', 0, 1, 1, b'f', 1, 3,
        ];
        assert_eq!(
            decode_point(&p),
            Ok(Point {
                measurement: "m".into(),
                tags: vec![],
                fields: vec![("f".into(), FieldValue::Int(-2))],
                timestamp_ns: Some(42),
            })
        );
    }

    #[test]
    fn damaged_records_are_errors() {
        let m = mqtt_to_vec(message().as_ref());
        assert!(matches!(
            decode_point(&m),
            Err(RecordError::WrongKind { .. })
        ));
        let mut newer = m.clone();
        newer[1] = 2;
        assert_eq!(decode_mqtt(&newer), Err(RecordError::UnsupportedVersion(2)));
        let mut qos3 = m.clone();
        qos3[2] = 3;
        assert_eq!(decode_mqtt(&qos3), Err(RecordError::InvalidFlags(3)));
        assert_eq!(decode(&[]), Err(RecordError::Truncated("kind")));
        // A huge tag count in a short record is refused before allocating.
        let lie = [b'P', 1, 0, 1, b'm', 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(decode_point(&lie), Err(RecordError::Truncated("tag count")));
        // Overlong and overflowing varints.
        assert_eq!(
            decode_mqtt(&[b'M', 1, 0, 0x80, 0x00]),
            Err(RecordError::InvalidVarint)
        );
        let mut overflow = vec![b'M', 1, 0];
        overflow.extend_from_slice(&[0xff; 9]);
        overflow.push(0x02);
        assert_eq!(decode_mqtt(&overflow), Err(RecordError::InvalidVarint));
        let mut trailing = point_to_vec(&point());
        trailing.push(0);
        assert_eq!(decode_point(&trailing), Err(RecordError::TrailingBytes(1)));
    }

    #[test]
    fn every_truncation_of_a_point_is_an_error() {
        let bytes = point_to_vec(&point());
        for len in 0..bytes.len() {
            assert!(decode_point(&bytes[..len]).is_err(), "len {len}");
        }
    }

    fn field_value() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(FieldValue::Float),
            any::<i64>().prop_map(FieldValue::Int),
            any::<u64>().prop_map(FieldValue::UInt),
            any::<bool>().prop_map(FieldValue::Bool),
            ".{0,8}".prop_map(|s| FieldValue::Text(s.into())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn points_round_trip(
            measurement in ".{1,12}",
            tags in proptest::collection::vec((".{1,6}", ".{1,6}"), 0..4),
            fields in proptest::collection::vec((".{1,6}", field_value()), 1..5),
            timestamp_ns in proptest::option::of(any::<i64>()),
        ) {
            let p = Point {
                measurement: measurement.into(),
                tags: tags.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
                fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
                timestamp_ns,
            };
            prop_assert_eq!(decode_point(&point_to_vec(&p)), Ok(p));
        }

        #[test]
        fn messages_round_trip(
            topic in ".{1,40}",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            qos in 0u8..3,
            retain in any::<bool>(),
        ) {
            let qos = [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce][usize::from(qos)];
            let m = MqttMessage { topic: topic.into(), payload: payload.into(), qos, retain };
            prop_assert_eq!(decode_mqtt(&mqtt_to_vec(m.as_ref())), Ok(m));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
            let mut p = vec![b'P', 1];
            p.extend_from_slice(&bytes);
            let _ = decode(&p);
        }
    }
}
