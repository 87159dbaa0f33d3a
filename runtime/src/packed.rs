//! Reads the `packed-output` buffer of `sluice:transform@0.2.0`: one frame's
//! messages and points, encoded with postcard in the layout the WIT file
//! documents (`wit/v0.2.0/transform.wit`).
//!
//! The guest SDK writes the layout (`guest-sdk/src/packed.rs`) and the host
//! reads it in place ([`sluice_core::output`]), both by hand: with no copy
//! left, reading is the whole cost, and postcard's serde path took twice as
//! long as reading the five postcard wire types the layout uses (varints,
//! zigzag varints, bytes with a length, little-endian `f64`, one-byte
//! `bool`/`Option` tags). The tests decode the SDK's pinned sample (which
//! its encoder must produce) and round-trip what the SDK encodes.
//!
//! A buffer is untrusted guest output: anything that does not decode to
//! exactly one output (truncated, trailing bytes, a QoS above 2, invalid
//! UTF-8) is a contract violation for the frame. It is read one value at a
//! time, so a list over its limit, or text over the frame's budget, is
//! refused as soon as it is seen ([`super::output`]). What decodes is then
//! checked like any 0.1.0 output ([`sluice_core::output::MessageRef::validate`],
//! [`sluice_core::output::PointLike::validate`]).

use super::output::{Budget, Limit, OutputError};
use sluice_core::model::{self, guest_text};
use sluice_core::output::{BadPart, FieldAt, OutputBuilder, Span, TransformOutput};

/// Indexes one frame's output in the buffer the guest returned, refusing
/// it as soon as it goes over a limit of `budget`.
///
/// Nothing is copied: the output's parts are read where they lie in
/// `bytes`. The budget is charged as if each part were copied out, so the
/// limits mean what they always meant.
pub fn decode(bytes: Vec<u8>, budget: &mut Budget) -> Result<TransformOutput, OutputError> {
    let mut input = Input {
        builder: OutputBuilder::new(bytes),
        at: 0,
    };
    let count = input.count(budget, Limit::Messages)?;
    input.builder.reserve_messages(count);
    for _ in 0..count {
        let topic = input.bytes("topic")?;
        let payload = input.bytes("payload")?;
        let qos = input.byte("qos")?;
        let retain = input.flag("retain")?;
        budget.charge(topic.len() + payload.len())?;
        let qos = model::Qos::from_u8(qos).ok_or_else(|| {
            let topic = String::from_utf8_lossy(input.bytes_of(topic));
            contract(format!("QoS {qos} on topic \"{}\"", guest_text(&topic)))
        })?;
        input
            .builder
            .message(topic, payload, qos, retain)
            .map_err(bad_part)?;
    }
    let count = input.count(budget, Limit::Points)?;
    input.builder.reserve_points(count);
    for _ in 0..count {
        let measurement = input.bytes("measurement")?;
        budget.charge(measurement.len())?;
        // The timestamp comes last on the wire, the point first here: it
        // is set once the point's tags and fields are read.
        input.builder.point(measurement, None).map_err(bad_part)?;
        let count = input.count(budget, Limit::TagsPerPoint)?;
        input.builder.reserve_tags(count);
        for _ in 0..count {
            let (key, value) = (input.bytes("tag key")?, input.bytes("tag value")?);
            budget.charge(key.len() + value.len())?;
            input.builder.tag(key, value).map_err(bad_part)?;
        }
        let count = input.count(budget, Limit::FieldsPerPoint)?;
        input.builder.reserve_fields(count);
        for _ in 0..count {
            let key = input.bytes("field key")?;
            // The variants' order is their number on the wire.
            let value = match input.varint("field type")? {
                0 => FieldAt::Float(f64::from_le_bytes(input.array("float field")?)),
                1 => FieldAt::Int(unzigzag(input.varint("int field")?)),
                2 => FieldAt::UInt(input.varint("uint field")?),
                3 => FieldAt::Bool(input.flag("boolean field")?),
                4 => {
                    let text = input.bytes("text field")?;
                    budget.charge(text.len())?;
                    FieldAt::Text(text)
                }
                other => return Err(contract(format!("field type {other}"))),
            };
            budget.charge(key.len())?;
            input.builder.field(key, value).map_err(bad_part)?;
        }
        let timestamp_ns = match input.byte("timestamp")? {
            0 => None,
            1 => Some(unzigzag(input.varint("timestamp")?)),
            other => return Err(contract(format!("timestamp tag {other}"))),
        };
        input.builder.set_timestamp(timestamp_ns);
    }
    let rest = input.builder.data().len() - input.at;
    if rest != 0 {
        return Err(contract(format!(
            "{rest} bytes after the end of the output"
        )));
    }
    Ok(input.builder.finish())
}

/// A signed integer from postcard's zigzag encoding.
fn unzigzag(zigzag: u64) -> i64 {
    (zigzag >> 1) as i64 ^ -((zigzag & 1) as i64)
}

fn contract(what: String) -> OutputError {
    OutputError::Contract(format!("packed output: {what}"))
}

fn bad_part(bad: BadPart) -> OutputError {
    contract(bad.to_string())
}

/// The buffer being indexed and how far it is read.
struct Input {
    builder: OutputBuilder,
    at: usize,
}

impl Input {
    #[inline]
    fn byte(&mut self, what: &str) -> Result<u8, OutputError> {
        let byte = *(self.builder.data().get(self.at))
            .ok_or_else(|| contract(format!("the buffer ends in a {what}")))?;
        self.at += 1;
        Ok(byte)
    }

    /// A one-byte `bool`: 0 or 1.
    #[inline]
    fn flag(&mut self, what: &str) -> Result<bool, OutputError> {
        match self.byte(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(contract(format!("{what} is {other}, not a bool"))),
        }
    }

    #[inline]
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], OutputError> {
        let bytes = (self.builder.data().get(self.at..self.at + N))
            .ok_or_else(|| contract(format!("the buffer ends in a {what}")))?;
        self.at += N;
        Ok(bytes.try_into().unwrap_or([0; N]))
    }

    /// An unsigned LEB128 varint of at most 64 bits.
    #[inline(always)]
    fn varint(&mut self, what: &str) -> Result<u64, OutputError> {
        // Nearly every varint here is a length or a count below 128.
        match self.builder.data().get(self.at) {
            Some(&byte) if byte < 0x80 => {
                self.at += 1;
                Ok(u64::from(byte))
            }
            _ => self.long_varint(what),
        }
    }

    /// [`Self::varint`] the long way, for one of more than a byte.
    fn long_varint(&mut self, what: &str) -> Result<u64, OutputError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte(what)?;
            // The tenth byte may only carry the 64th bit.
            if shift == 63 && byte > 1 {
                break;
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(contract(format!("{what} is not a 64-bit varint")))
    }

    /// Bytes with their length before them, where they lie.
    #[inline]
    fn bytes(&mut self, what: &str) -> Result<Span, OutputError> {
        let len = self.varint(what)?;
        let span = usize::try_from(len)
            .ok()
            .and_then(|len| self.builder.span_at(self.at..self.at.checked_add(len)?))
            .ok_or_else(|| contract(format!("a {len}-byte {what} past the end of the buffer")))?;
        self.at += span.len();
        Ok(span)
    }

    /// A list's length, checked against its limit before anything is
    /// reserved for it.
    #[inline]
    fn count(&mut self, budget: &mut Budget, limit: Limit) -> Result<usize, OutputError> {
        let count = self.varint("count")?;
        budget.items(limit, usize::try_from(count).unwrap_or(usize::MAX))?;
        Ok(count as usize)
    }

    #[inline]
    fn bytes_of(&self, span: Span) -> &[u8] {
        &self.builder.data()[span.start()..span.start() + span.len()]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::OutputLimits;
    use sluice_core::model::{FieldValue, MqttMessage, Point, Qos};
    use sluice_core::output::{FieldRef, PointLike as _};

    /// Decodes within the default limits; errors as their text.
    fn decode(bytes: &[u8]) -> Result<TransformOutput, String> {
        super::decode(bytes.to_vec(), &mut Budget::new(OutputLimits::default()))
            .map_err(|e| e.to_string())
    }

    /// The SDK's pinned sample (its encoder test checks it produces these
    /// bytes): what every 0.2.0 module built so far sends.
    const GOLDEN_HEX: &str = sluice_sdk::__private::PACKED_GOLDEN_HEX;

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn golden() -> TransformOutput {
        TransformOutput::from_parts(
            &[
                MqttMessage {
                    topic: "a/b".into(),
                    payload: b"27".to_vec().into(),
                    qos: Qos::AtLeastOnce,
                    retain: true,
                },
                MqttMessage {
                    topic: "c".into(),
                    payload: vec![0xff, 0x00, 0x01].into(),
                    qos: Qos::AtMostOnce,
                    retain: false,
                },
            ],
            &[Point {
                measurement: "env".into(),
                tags: vec![("node".into(), "n1".into())],
                fields: vec![
                    ("t".into(), FieldValue::Float(27.6)),
                    ("i".into(), FieldValue::Int(-39)),
                    ("u".into(), FieldValue::UInt(65536)),
                    ("o".into(), FieldValue::Bool(true)),
                    ("s".into(), FieldValue::Text("é".into())),
                ],
                timestamp_ns: Some(1_000_000_000),
            }],
        )
    }

    #[test]
    fn decodes_the_pinned_encoding() {
        assert_eq!(decode(&unhex(GOLDEN_HEX)).unwrap(), golden());
    }

    #[test]
    fn a_frames_payloads_share_one_buffer_that_holds_nothing_else() {
        use sluice_sdk::{Message, Output, Point as SdkPoint};
        let mut out = Output::new();
        out.publish(Message::new("a", "27.6"));
        out.publish(Message::new("b", "54.1"));
        // A large point: a message waiting in a queue must not keep it alive.
        out.point(SdkPoint::new("m").field("text", "x".repeat(100_000)));
        let output = decode(&sluice_sdk::__private::encode_output(&out)).unwrap();
        let output = output.owned_messages();
        let (a, b) = (&output[0].payload, &output[1].payload);
        assert_eq!((&a[..], &b[..]), (&b"27.6"[..], &b"54.1"[..]));
        assert_eq!(a.as_ptr_range().end, b.as_ptr(), "views of one buffer");
        // The last view left owns the buffer: its size is the payloads'.
        let last = a.clone();
        drop(output);
        let backing = last.try_into_mut().expect("the only view").capacity();
        assert!(backing < 1000, "a payload keeps {backing} bytes alive");
    }

    #[test]
    fn an_empty_output_is_two_zero_counts() {
        assert_eq!(decode(&[0, 0]).unwrap(), TransformOutput::default());
    }

    #[test]
    fn refuses_what_is_not_exactly_one_output() {
        let golden = unhex(GOLDEN_HEX);
        // Truncated anywhere.
        for len in 0..golden.len() {
            let err = decode(&golden[..len]).unwrap_err();
            assert!(err.starts_with("packed output: "), "{len}: {err}");
        }
        // Something after the output.
        let mut long = golden.clone();
        long.push(0);
        assert_eq!(
            decode(&long).unwrap_err(),
            "packed output: 1 bytes after the end of the output"
        );
    }

    #[test]
    fn refuses_a_qos_above_two_invalid_utf8_and_malformed_values() {
        // One message on "t", payload "", QoS 3.
        let err = decode(&[1, 1, b't', 0, 3, 0, 0]).unwrap_err();
        assert_eq!(err, "packed output: QoS 3 on topic \"t\"");
        // A topic that is not UTF-8.
        let err = decode(&[1, 1, 0xff, 0, 0, 0, 0]).unwrap_err();
        assert!(err.starts_with("packed output: "), "{err}");
        // An unknown field-value variant.
        let err = decode(&[0, 1, 1, b'm', 0, 1, 1, b'f', 9, 0]).unwrap_err();
        assert!(err.starts_with("packed output: "), "{err}");
        // A retain flag that is not a bool.
        let err = decode(&[1, 1, b't', 0, 0, 2, 0]).unwrap_err();
        assert_eq!(err, "packed output: retain is 2, not a bool");
        // A timestamp tag that is neither None nor Some.
        let err = decode(&[0, 1, 1, b'm', 0, 0, 2]).unwrap_err();
        assert_eq!(err, "packed output: timestamp tag 2");
        // A count longer than a 64-bit varint.
        let mut long = vec![0xff; 10];
        long.push(0);
        let err = decode(&long).unwrap_err();
        assert_eq!(err, "packed output: count is not a 64-bit varint");
    }

    /// Decodes each of `samples`, untrusted: either every part of the
    /// output reads, its text valid UTF-8 (the output hands text out
    /// without checking it again), or the refusal has a reason. Both must
    /// happen.
    fn each_is_read_or_refused(samples: impl Iterator<Item = Vec<u8>>) {
        let utf8 = |text: &str| assert!(std::str::from_utf8(text.as_bytes()).is_ok());
        let (mut read, mut refused) = (0, 0);
        for bytes in samples {
            match super::decode(bytes, &mut Budget::new(OutputLimits::default())) {
                Ok(output) => {
                    for m in output.messages() {
                        utf8(m.topic);
                    }
                    for p in output.points() {
                        utf8(p.measurement());
                        for (key, value) in p.tags() {
                            utf8(key);
                            utf8(value);
                        }
                        for (key, value) in p.fields() {
                            utf8(key);
                            if let FieldRef::Text(text) = value {
                                utf8(text);
                            }
                        }
                    }
                    // The rest (payloads, numbers, timestamps) reads too.
                    let _ = (output.owned_messages(), output.owned_points());
                    read += 1;
                }
                Err(OutputError::Contract(why)) => {
                    assert!(why.starts_with("packed output: "), "{why}");
                    refused += 1;
                }
                Err(OutputError::OverLimit { .. }) => refused += 1,
            }
        }
        assert!(read > 0 && refused > 0, "read {read}, refused {refused}");
    }

    /// Every one-byte change of the pinned sample: never a panic, never
    /// text that is not UTF-8.
    #[test]
    fn any_byte_changed_is_read_or_refused() {
        let golden = unhex(GOLDEN_HEX);
        each_is_read_or_refused((0..golden.len()).flat_map(|at| {
            let golden = golden.clone();
            (0..=255u8).map(move |value| {
                let mut bytes = golden.clone();
                bytes[at] = value;
                bytes
            })
        }));
    }

    /// What a fuzzer would try, seeded so a failure reproduces: several
    /// bytes changed at once, cuts, insertions, a span copied elsewhere
    /// (lengths and counts that point past or into other parts).
    #[test]
    fn mangled_samples_are_read_or_refused() {
        let golden = unhex(GOLDEN_HEX);
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below.max(1) as u64) as usize
        };
        let mangled = std::iter::repeat_with(move || {
            let mut bytes = golden.clone();
            for _ in 0..1 + next(4) {
                let at = next(bytes.len() + 1);
                match next(5) {
                    0 if at < bytes.len() => bytes[at] = next(256) as u8,
                    1 => bytes.truncate(at),
                    2 => bytes.insert(at, next(256) as u8),
                    3 if !bytes.is_empty() => {
                        let from = next(bytes.len());
                        let len = next(bytes.len() - from + 1).min(16);
                        let copied = bytes[from..from + len].to_vec();
                        bytes.splice(at..at, copied);
                    }
                    _ => bytes.extend((0..next(8)).map(|_| 0x80 | next(128) as u8)),
                }
            }
            bytes
        });
        each_is_read_or_refused(mangled.take(100_000));
    }

    #[test]
    fn a_huge_claimed_count_is_an_error_not_an_allocation() {
        // "4 billion messages" in a 6-byte buffer.
        let err = decode(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0]).unwrap_err();
        assert!(err.contains("4294967295 messages (at most 1000)"), "{err}");
    }

    #[test]
    fn round_trips_what_the_sdk_encodes() {
        use sluice_sdk::{Message, Output, Point as SdkPoint, Qos as SdkQos};
        let mut out = Output::new();
        out.publish(Message::new("plant/ünï/temp", "21.5").qos(SdkQos::ExactlyOnce));
        out.publish(Message::new("bin", vec![0u8; 70_000]).retain(true));
        out.point(
            SdkPoint::new("m")
                .tag("k", "v w")
                .field("f", f64::MIN_POSITIVE)
                .field("i", i64::MIN)
                .field("u", u64::MAX)
                .field("b", false)
                .field("s", "line\nbreak")
                .timestamp_ns(-1),
        );
        out.point(SdkPoint::new("empty"));
        let bytes = sluice_sdk::__private::encode_output(&out);
        let decoded = decode(&bytes).unwrap();
        let messages = decoded.owned_messages();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].topic, "plant/ünï/temp");
        assert_eq!(messages[0].payload, &b"21.5"[..]);
        assert_eq!(messages[0].qos, Qos::ExactlyOnce);
        assert!(!messages[0].retain);
        assert_eq!(messages[1].payload, vec![0u8; 70_000]);
        assert_eq!(messages[1].qos, Qos::AtMostOnce);
        assert!(messages[1].retain);
        assert_eq!(
            decoded.owned_points(),
            [
                Point {
                    measurement: "m".into(),
                    tags: vec![("k".into(), "v w".into())],
                    fields: vec![
                        ("f".into(), FieldValue::Float(f64::MIN_POSITIVE)),
                        ("i".into(), FieldValue::Int(i64::MIN)),
                        ("u".into(), FieldValue::UInt(u64::MAX)),
                        ("b".into(), FieldValue::Bool(false)),
                        ("s".into(), FieldValue::Text("line\nbreak".into())),
                    ],
                    timestamp_ns: Some(-1),
                },
                Point {
                    measurement: "empty".into(),
                    tags: vec![],
                    fields: vec![],
                    timestamp_ns: None,
                },
            ]
        );
    }

    /// The layout as postcard 1.x writes it from mirror types: how every
    /// SDK before the hand-written writer packed an output, so what modules
    /// built with one still send.
    mod postcard_layout {
        use serde::Serialize;

        #[derive(Serialize)]
        pub struct Output<'a> {
            pub messages: Vec<Message<'a>>,
            pub points: Vec<Point<'a>>,
        }

        #[derive(Serialize)]
        pub struct Message<'a> {
            pub topic: &'a str,
            pub payload: &'a serde_bytes::Bytes,
            pub qos: u8,
            pub retain: bool,
        }

        #[derive(Serialize)]
        pub struct Point<'a> {
            pub measurement: &'a str,
            pub tags: Vec<(&'a str, &'a str)>,
            pub fields: Vec<(&'a str, Value<'a>)>,
            pub timestamp_ns: Option<i64>,
        }

        #[derive(Serialize)]
        pub enum Value<'a> {
            Float(f64),
            Int(i64),
            Uint(u64),
            Boolean(bool),
            Text(&'a str),
        }
    }

    #[test]
    fn reads_and_writes_what_postcard_writes() {
        use postcard_layout::{Message, Output, Point, Value};
        use sluice_sdk::{
            Message as SdkMessage, Output as SdkOutput, Point as SdkPoint, Qos as SdkQos,
        };
        let long = "ü".repeat(100);
        let payload = vec![7u8; 70_000];
        let mut fields = vec![
            ("f", Value::Float(-0.0)),
            ("i", Value::Int(i64::MIN)),
            ("j", Value::Int(i64::MAX)),
            ("k", Value::Int(-1)),
            ("u", Value::Uint(u64::MAX)),
            ("v", Value::Uint(128)),
            ("b", Value::Boolean(false)),
            ("t", Value::Text(&long)),
            ("", Value::Text("")),
        ];
        for n in 0..130 {
            fields.push(("n", Value::Uint(n)));
        }
        let wire = Output {
            messages: vec![
                Message {
                    topic: &long,
                    payload: serde_bytes::Bytes::new(&payload),
                    qos: 2,
                    retain: true,
                },
                Message {
                    topic: "",
                    payload: serde_bytes::Bytes::new(b""),
                    qos: 0,
                    retain: false,
                },
            ],
            points: vec![
                Point {
                    measurement: "m",
                    tags: vec![("k", "v"), (&long, &long)],
                    fields,
                    timestamp_ns: Some(i64::MIN),
                },
                Point {
                    measurement: "none",
                    tags: vec![],
                    fields: vec![],
                    timestamp_ns: None,
                },
            ],
        };
        let postcard = postcard::to_allocvec(&wire).unwrap();

        // The SDK writes the same bytes.
        let mut sdk = SdkOutput::new();
        sdk.publish(
            SdkMessage::new(long.as_str(), payload.clone())
                .qos(SdkQos::ExactlyOnce)
                .retain(true),
        );
        sdk.publish(SdkMessage::new("", ""));
        let mut point = SdkPoint::new("m")
            .tag("k", "v")
            .tag(long.as_str(), long.as_str());
        point = point
            .field("f", -0.0)
            .field("i", i64::MIN)
            .field("j", i64::MAX)
            .field("k", -1i64)
            .field("u", u64::MAX)
            .field("v", 128u64)
            .field("b", false)
            .field("t", long.as_str())
            .field("", "");
        for n in 0..130u64 {
            point = point.field("n", n);
        }
        sdk.point(point.timestamp_ns(i64::MIN));
        sdk.point(SdkPoint::new("none"));
        assert!(
            sluice_sdk::__private::encode_output(&sdk) == postcard,
            "the SDK's bytes differ"
        );

        // The host reads them.
        let limits = OutputLimits {
            fields_per_point: 1000,
            ..OutputLimits::default()
        };
        let output = super::decode(postcard, &mut Budget::new(limits)).unwrap();
        let messages: Vec<_> = output.messages().collect();
        assert_eq!(messages.len(), 2);
        assert_eq!(
            (messages[0].topic, messages[0].payload),
            (long.as_str(), &payload[..])
        );
        assert_eq!(
            (messages[0].qos, messages[0].retain),
            (Qos::ExactlyOnce, true)
        );
        assert_eq!((messages[1].topic, messages[1].payload.len()), ("", 0));
        let points = output.owned_points();
        assert_eq!(
            points[0].tags[1],
            (long.as_str().into(), long.as_str().into())
        );
        let fields: Vec<_> = points[0]
            .fields
            .iter()
            .take(9)
            .map(|(_, v)| v.clone())
            .collect();
        assert_eq!(
            fields,
            [
                FieldValue::Float(-0.0),
                FieldValue::Int(i64::MIN),
                FieldValue::Int(i64::MAX),
                FieldValue::Int(-1),
                FieldValue::UInt(u64::MAX),
                FieldValue::UInt(128),
                FieldValue::Bool(false),
                FieldValue::Text(long.as_str().into()),
                FieldValue::Text("".into()),
            ]
        );
        assert_eq!(points[0].fields.len(), 139);
        assert_eq!(points[0].fields[138], ("n".into(), FieldValue::UInt(129)));
        assert_eq!(points[0].timestamp_ns, Some(i64::MIN));
        assert_eq!((points[1].fields.len(), points[1].timestamp_ns), (0, None));
    }

    #[test]
    fn lists_over_their_limits_are_refused_before_allocation() {
        let limits = OutputLimits {
            messages: 2,
            points: 1,
            tags_per_point: 3,
            fields_per_point: 1,
            bytes: 1 << 20,
        };
        let read = |bytes: &[u8]| super::decode(bytes.to_vec(), &mut Budget::new(limits));
        let over = |limit, asked| OutputError::OverLimit {
            limit,
            asked,
            max: match limit {
                Limit::Messages => 2,
                Limit::TagsPerPoint => 3,
                _ => 1,
            },
        };
        // Three empty-topic messages: refused on the count alone.
        assert_eq!(read(&[3]), Err(over(Limit::Messages, 3)));
        // A point claiming 13.6 M empty tags in a few bytes (the count is a
        // varint: 13,600,000 = 0x80 | 0x00, 0x80 | 0x0a, 0x80 | 0x3e, 0x06).
        let mut many_tags = vec![0, 1, 1, b'm'];
        many_tags.extend([0x80, 0x8a, 0xbe, 0x06]);
        assert_eq!(read(&many_tags), Err(over(Limit::TagsPerPoint, 13_600_000)));
        assert_eq!(read(&[0, 2]), Err(over(Limit::Points, 2)));
        assert_eq!(
            read(&[0, 1, 1, b'm', 0, 2]),
            Err(over(Limit::FieldsPerPoint, 2))
        );
    }

    #[test]
    fn text_and_payloads_are_charged_to_the_frames_budget() {
        use sluice_sdk::{Message, Output};
        let mut out = Output::new();
        out.publish(Message::new("t", vec![0u8; 1000]));
        out.publish(Message::new("t", vec![0u8; 1000]));
        let bytes = sluice_sdk::__private::encode_output(&out);
        // Two messages: 2 × 32 + 2 × (1 + 1000) bytes.
        let exactly = 2 * crate::output::ITEM_BYTES + 2 * 1001;
        let within = |bytes_limit| OutputLimits {
            bytes: bytes_limit,
            ..OutputLimits::default()
        };
        assert!(super::decode(bytes.clone(), &mut Budget::new(within(exactly))).is_ok());
        let err = super::decode(bytes, &mut Budget::new(within(exactly - 1))).unwrap_err();
        assert!(
            matches!(
                err,
                OutputError::OverLimit {
                    limit: Limit::Bytes,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
