//! Reads the `packed-output` buffer of `sluice:transform@0.2.0`: one frame's
//! messages and points, encoded with postcard in the layout the WIT file
//! documents (`wit/v0.2.0/transform.wit`).
//!
//! The mirror types below are the wire layout and nothing else: field order
//! and variant order are the format, so they never change; the host's
//! [`model`] types are free to. The guest SDK writes the same layout in
//! `guest-sdk/src/packed.rs`; the tests here decode the SDK's pinned sample
//! (which its encoder must produce) and round-trip what the SDK encodes.
//!
//! A buffer is untrusted guest output: anything that does not decode to
//! exactly one output (truncated, trailing bytes, a QoS above 2, invalid
//! UTF-8) is a contract violation for the frame, and it is read one value
//! at a time so that a list over its limit, or text over the frame's
//! budget, is refused before the host allocates for it
//! ([`super::output`]). What decodes is then checked like any 0.1.0 output
//! ([`model::MqttMessage::validate`], [`model::Point::validate`]).

use serde::Deserialize;

use super::output::{Budget, Limit, OutputError};
use sluice_core::model::{self, Bytes, CompactString, TransformOutput, guest_text};

/// Decodes one frame's output, refusing it as soon as it goes over a limit
/// of `budget` (before the host allocates what goes over).
///
/// The frame's payloads are copied into one buffer that holds nothing
/// else, and each message's payload is a view of it: one allocation for
/// them all, and a message waiting in a queue keeps alive at most its
/// siblings' payloads, never the rest of the output (points, say).
/// Short text is stored inline ([`model::MqttMessage`]).
pub fn decode(bytes: &[u8], budget: &mut Budget) -> Result<TransformOutput, OutputError> {
    let mut input = Input(bytes);
    let text = |slice: &[u8]| {
        CompactString::from_utf8(slice).map_err(|e| {
            OutputError::Contract(format!("packed output: text that is not UTF-8 ({e})"))
        })
    };
    let count = input.count(budget, Limit::Messages)?;
    let mut wire = Vec::with_capacity(count);
    for _ in 0..count {
        let m: WireMessage<'_> = input.take()?;
        let topic = text(m.topic)?;
        let qos = model::Qos::from_u8(m.qos).ok_or_else(|| {
            OutputError::Contract(format!(
                "packed output: QoS {} on topic \"{}\"",
                m.qos,
                guest_text(&topic)
            ))
        })?;
        budget.charge(m.topic.len() + m.payload.len())?;
        wire.push((topic, m.payload, qos, m.retain));
    }
    let mut payloads = Vec::with_capacity(wire.iter().map(|(_, p, ..)| p.len()).sum());
    for (_, payload, ..) in &wire {
        payloads.extend_from_slice(payload);
    }
    let payloads = Bytes::from(payloads);
    let mut start = 0;
    let messages = wire
        .into_iter()
        .map(|(topic, payload, qos, retain)| {
            let end = start + payload.len();
            let payload = payloads.slice(start..end);
            start = end;
            model::MqttMessage {
                topic,
                payload,
                qos,
                retain,
            }
        })
        .collect();
    let count = input.count(budget, Limit::Points)?;
    let mut points = Vec::with_capacity(count);
    for _ in 0..count {
        let measurement: &[u8] = input.take()?;
        budget.charge(measurement.len())?;
        let measurement = text(measurement)?;
        let count = input.count(budget, Limit::TagsPerPoint)?;
        let mut tags = Vec::with_capacity(count);
        for _ in 0..count {
            let (key, value): (&[u8], &[u8]) = input.take()?;
            budget.charge(key.len() + value.len())?;
            tags.push((text(key)?, text(value)?));
        }
        let count = input.count(budget, Limit::FieldsPerPoint)?;
        let mut fields = Vec::with_capacity(count);
        for _ in 0..count {
            let (key, value): (&[u8], WireValue<'_>) = input.take()?;
            budget.charge(key.len() + value.text_len())?;
            let value = match value {
                WireValue::Float(v) => model::FieldValue::Float(v),
                WireValue::Int(v) => model::FieldValue::Int(v),
                WireValue::Uint(v) => model::FieldValue::UInt(v),
                WireValue::Boolean(v) => model::FieldValue::Bool(v),
                WireValue::Text(v) => model::FieldValue::Text(text(v)?),
            };
            fields.push((text(key)?, value));
        }
        let timestamp_ns: Option<i64> = input.take()?;
        points.push(model::Point {
            measurement,
            tags,
            fields,
            timestamp_ns,
        });
    }
    if !input.0.is_empty() {
        return Err(OutputError::Contract(format!(
            "packed output: {} bytes after the end of the output",
            input.0.len()
        )));
    }
    Ok(TransformOutput { messages, points })
}

/// The unread rest of a buffer, read one postcard value at a time.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take<T: Deserialize<'a>>(&mut self) -> Result<T, OutputError> {
        let (value, rest) = postcard::take_from_bytes(self.0)
            .map_err(|e| OutputError::Contract(format!("packed output: {e}")))?;
        self.0 = rest;
        Ok(value)
    }

    /// A list's length (postcard: a varint), checked against its limit
    /// before anything is allocated for it.
    fn count(&mut self, budget: &mut Budget, limit: Limit) -> Result<usize, OutputError> {
        let count: usize = self.take()?;
        budget.items(limit, count)?;
        Ok(count)
    }
}

/// Text is read as bytes (postcard writes `str` and bytes alike) and
/// checked for UTF-8 once, as it is copied out.
#[derive(Deserialize)]
struct WireMessage<'a> {
    topic: &'a [u8],
    payload: &'a [u8],
    qos: u8,
    retain: bool,
}

/// The variants' order is their number on the wire.
#[derive(Deserialize)]
enum WireValue<'a> {
    Float(f64),
    Int(i64),
    Uint(u64),
    Boolean(bool),
    Text(&'a [u8]),
}

impl WireValue<'_> {
    fn text_len(&self) -> usize {
        match self {
            WireValue::Text(text) => text.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::OutputLimits;
    use sluice_core::model::{FieldValue, MqttMessage, Point, Qos};

    /// Decodes within the default limits; errors as their text.
    fn decode(bytes: &[u8]) -> Result<TransformOutput, String> {
        super::decode(bytes, &mut Budget::new(OutputLimits::default())).map_err(|e| e.to_string())
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
        TransformOutput {
            messages: vec![
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
            points: vec![Point {
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
        }
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
        let output = decode(&sluice_sdk::__private::encode_output(&out).unwrap()).unwrap();
        let (a, b) = (&output.messages[0].payload, &output.messages[1].payload);
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
    fn refuses_a_qos_above_two_and_invalid_utf8() {
        // One message on "t", payload "", QoS 3.
        let err = decode(&[1, 1, b't', 0, 3, 0, 0]).unwrap_err();
        assert_eq!(err, "packed output: QoS 3 on topic \"t\"");
        // A topic that is not UTF-8.
        let err = decode(&[1, 1, 0xff, 0, 0, 0, 0]).unwrap_err();
        assert!(err.starts_with("packed output: "), "{err}");
        // An unknown field-value variant.
        let err = decode(&[0, 1, 1, b'm', 0, 1, 1, b'f', 9, 0]).unwrap_err();
        assert!(err.starts_with("packed output: "), "{err}");
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
        let bytes = sluice_sdk::__private::encode_output(&out).unwrap();
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.messages.len(), 2);
        assert_eq!(decoded.messages[0].topic, "plant/ünï/temp");
        assert_eq!(decoded.messages[0].payload, &b"21.5"[..]);
        assert_eq!(decoded.messages[0].qos, Qos::ExactlyOnce);
        assert!(!decoded.messages[0].retain);
        assert_eq!(decoded.messages[1].payload, vec![0u8; 70_000]);
        assert_eq!(decoded.messages[1].qos, Qos::AtMostOnce);
        assert!(decoded.messages[1].retain);
        assert_eq!(
            decoded.points,
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

    #[test]
    fn lists_over_their_limits_are_refused_before_allocation() {
        let limits = OutputLimits {
            messages: 2,
            points: 1,
            tags_per_point: 3,
            fields_per_point: 1,
            bytes: 1 << 20,
        };
        let read = |bytes: &[u8]| super::decode(bytes, &mut Budget::new(limits));
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
        let bytes = sluice_sdk::__private::encode_output(&out).unwrap();
        // Two messages: 2 × 32 + 2 × (1 + 1000) bytes.
        let exactly = 2 * crate::output::ITEM_BYTES + 2 * 1001;
        let within = |bytes_limit| OutputLimits {
            bytes: bytes_limit,
            ..OutputLimits::default()
        };
        assert!(super::decode(&bytes, &mut Budget::new(within(exactly))).is_ok());
        let err = super::decode(&bytes, &mut Budget::new(within(exactly - 1))).unwrap_err();
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
