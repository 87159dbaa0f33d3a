//! Test vectors a module ships with: `NAME.vectors.jsonl` beside
//! `NAME.wasm`, run against a fresh instance of the new module (with the
//! pipeline's config) before it is allowed to take over.
//!
//! One JSON object per line; blank lines are skipped:
//!
//! ```json
//! {"name": "temperature", "input": "{\"seq\":7,\"n1\":{\"t\":21.5}}",
//!  "expect": {"messages": [{"topic": "iiot/n1/temperature", "payload": "21.5", "qos": 1, "retain": true}]}}
//! {"input_base64": "AAEC", "expect": {"error": "malformed"}}
//! {"input": "{}", "expect": {"messages": [], "points": [{"measurement": "environment",
//!   "tags": {"node": "n1"}, "fields": {"temperature": 21.5}}]}}
//! ```
//!
//! * `input` (UTF-8 text) or `input_base64` (any bytes): the frame's data,
//!   exactly (no line ending is added). `received_at_ns` is optional.
//! * `expect.error`: the frame must be refused, with `malformed`,
//!   `unsupported`, `invalid_config`, `internal`, `trap` (any trap) or `any`.
//! * otherwise `expect.messages` and/or `expect.points`: a list given must
//!   match what the transform emitted exactly — same count, same order. In a
//!   message, `topic` is required; `payload` (text) or `payload_base64`,
//!   `qos` and `retain` are compared when given. In a point, `measurement`
//!   is required; `tags` (all of them), `fields` (all of them) and
//!   `timestamp_ns` are compared when given. A number matches a field of any
//!   numeric type with the same value (`21` matches the float 21.0), a
//!   string matches a text field, a boolean a boolean field. A list that is
//!   not given is not checked.
//! * Whatever the vector says, every output must also pass the host's own
//!   validation (topic rules, payload size, finite floats): a vector that
//!   makes the module emit something the host would refuse fails.
//!
//! Unknown keys are errors, so a typo cannot make a vector check nothing.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use crate::model::{FieldValue, Frame, MqttMessage, Point, now_ns};
use crate::output::{PointLike, TransformOutput};
use crate::runtime::{GuestErrorKind, ProcessError, TransformInstance};

/// At most this many vectors per module.
pub const MAX_VECTORS: usize = 10_000;
/// Failures quoted in a rejection (the count is always complete).
const QUOTED_FAILURES: usize = 5;

/// Vectors that could not be read, or that the module failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VectorError {
    /// A line is not a valid vector.
    #[error("test vectors, line {line}: {message}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// More than [`MAX_VECTORS`].
    #[error("more than {MAX_VECTORS} test vectors")]
    TooMany,
    /// The module did not produce what the vectors expect.
    #[error("{failed} of {total} test vectors failed: {}", quoted.join("; "))]
    Failed {
        /// Vectors that failed.
        failed: usize,
        /// Vectors run.
        total: usize,
        /// The first few failures, each naming its line.
        quoted: Vec<String>,
    },
}

/// One vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Vector {
    /// 1-based line in the file.
    pub line: usize,
    /// Optional label.
    pub name: Option<String>,
    /// The frame's data.
    pub input: Vec<u8>,
    /// The frame's receive time (`None`: now).
    pub received_at_ns: Option<u64>,
    /// What must come out.
    pub expect: Expect,
}

/// What a vector expects.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// The frame is refused.
    Error(ErrorKind),
    /// The frame decodes to these outputs (`None`: not checked).
    Output {
        /// Expected messages.
        messages: Option<Vec<ExpectedMessage>>,
        /// Expected points.
        points: Option<Vec<ExpectedPoint>>,
    },
}

/// Which refusal a vector expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A guest error of this kind.
    Guest(GuestErrorKind),
    /// Any trap.
    Trap,
    /// Any refusal.
    Any,
}

/// An expected message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedMessage {
    /// Topic.
    pub topic: String,
    /// Payload, when checked.
    pub payload: Option<Vec<u8>>,
    /// QoS level, when checked.
    pub qos: Option<u8>,
    /// Retain flag, when checked.
    pub retain: Option<bool>,
}

/// An expected point.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedPoint {
    /// Measurement.
    pub measurement: String,
    /// All tags, when checked.
    pub tags: Option<BTreeMap<String, String>>,
    /// All fields, when checked.
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
    /// Timestamp, when checked.
    pub timestamp_ns: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVector {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    input_base64: Option<String>,
    #[serde(default)]
    received_at_ns: Option<u64>,
    expect: RawExpect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    messages: Option<Vec<RawMessage>>,
    #[serde(default)]
    points: Option<Vec<RawPoint>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    topic: String,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    qos: Option<u8>,
    #[serde(default)]
    retain: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    measurement: String,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    fields: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    timestamp_ns: Option<i64>,
}

fn base64_decode(text: &str, what: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("{what} is not base64: {e}"))
}

fn convert(raw: RawVector, line: usize) -> Result<Vector, String> {
    let input = match (raw.input, raw.input_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(b64)) => base64_decode(&b64, "input_base64")?,
        _ => return Err("give exactly one of `input` and `input_base64`".into()),
    };
    let expect = match raw.expect.error {
        Some(kind) => {
            if raw.expect.messages.is_some() || raw.expect.points.is_some() {
                return Err("`expect.error` cannot be combined with messages or points".into());
            }
            Expect::Error(match kind.as_str() {
                "malformed" => ErrorKind::Guest(GuestErrorKind::Malformed),
                "unsupported" => ErrorKind::Guest(GuestErrorKind::Unsupported),
                "invalid_config" => ErrorKind::Guest(GuestErrorKind::InvalidConfig),
                "internal" => ErrorKind::Guest(GuestErrorKind::Internal),
                "trap" => ErrorKind::Trap,
                "any" => ErrorKind::Any,
                other => {
                    return Err(format!(
                        "expect.error {other:?} is not one of malformed, unsupported, invalid_config, internal, trap, any"
                    ));
                }
            })
        }
        None => {
            if raw.expect.messages.is_none() && raw.expect.points.is_none() {
                return Err("`expect` needs `error`, `messages` or `points`".into());
            }
            let messages = raw
                .expect
                .messages
                .map(|list| {
                    list.into_iter()
                        .map(|m| {
                            let payload = match (m.payload, m.payload_base64) {
                                (Some(text), None) => Some(text.into_bytes()),
                                (None, Some(b64)) => Some(base64_decode(&b64, "payload_base64")?),
                                (None, None) => None,
                                (Some(_), Some(_)) => {
                                    return Err(
                                        "give `payload` or `payload_base64`, not both".to_string()
                                    );
                                }
                            };
                            if m.qos.is_some_and(|q| q > 2) {
                                return Err("qos must be 0, 1 or 2".into());
                            }
                            Ok(ExpectedMessage {
                                topic: m.topic,
                                payload,
                                qos: m.qos,
                                retain: m.retain,
                            })
                        })
                        .collect::<Result<Vec<_>, String>>()
                })
                .transpose()?;
            let points = raw.expect.points.map(|list| {
                list.into_iter()
                    .map(|p| ExpectedPoint {
                        measurement: p.measurement,
                        tags: p.tags,
                        fields: p.fields,
                        timestamp_ns: p.timestamp_ns,
                    })
                    .collect()
            });
            Expect::Output { messages, points }
        }
    };
    Ok(Vector {
        line,
        name: raw.name,
        input,
        received_at_ns: raw.received_at_ns,
        expect,
    })
}

/// Parses a `.vectors.jsonl` text.
pub fn parse(text: &str) -> Result<Vec<Vector>, VectorError> {
    let mut vectors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        if vectors.len() == MAX_VECTORS {
            return Err(VectorError::TooMany);
        }
        let raw: RawVector = serde_json::from_str(line).map_err(|e| VectorError::Parse {
            line: number,
            message: e.to_string(),
        })?;
        vectors.push(convert(raw, number).map_err(|message| VectorError::Parse {
            line: number,
            message,
        })?);
    }
    Ok(vectors)
}

/// Runs `vectors` through `instance` (frames from `source`); outputs must
/// also pass the host's validation with `max_payload`. Returns how many ran.
pub fn run(
    instance: &mut TransformInstance,
    vectors: &[Vector],
    source: &str,
    max_payload: usize,
) -> Result<usize, VectorError> {
    let source: std::sync::Arc<str> = source.into();
    let mut failures = Vec::new();
    for vector in vectors {
        let frame = Frame::new(
            source.clone(),
            vector.received_at_ns.unwrap_or_else(now_ns),
            vector.input.clone(),
        );
        let result = instance.process(frame).map_err(|rejected| rejected.error);
        if let Err(why) = check(&vector.expect, &result, max_payload) {
            let label = match &vector.name {
                Some(name) => format!("line {} ({name})", vector.line),
                None => format!("line {}", vector.line),
            };
            // `why` quotes what the module emitted.
            failures.push(crate::model::guest_text(&format!("{label}: {why}")));
        }
    }
    if failures.is_empty() {
        return Ok(vectors.len());
    }
    let failed = failures.len();
    failures.truncate(QUOTED_FAILURES);
    Err(VectorError::Failed {
        failed,
        total: vectors.len(),
        quoted: failures,
    })
}

fn describe(result: &Result<TransformOutput, ProcessError>) -> String {
    match result {
        Ok(output) => format!(
            "{} message(s) {}, {} point(s)",
            output.message_count(),
            output
                .messages()
                .take(3)
                .map(|m| format!("{}={:?}", m.topic, String::from_utf8_lossy(m.payload)))
                .collect::<Vec<_>>()
                .join(" "),
            output.point_count()
        ),
        Err(error) => format!("refused ({}: {error})", error.reason()),
    }
}

fn check(
    expect: &Expect,
    result: &Result<TransformOutput, ProcessError>,
    max_payload: usize,
) -> Result<(), String> {
    match (expect, result) {
        (Expect::Error(kind), Err(error)) => {
            let matches = match (kind, error) {
                (ErrorKind::Any, _) => true,
                (ErrorKind::Trap, ProcessError::Trap { .. }) => true,
                (ErrorKind::Guest(want), ProcessError::Guest(got)) => got.kind == *want,
                _ => false,
            };
            if matches {
                Ok(())
            } else {
                Err(format!("expected error {kind:?}, got {}", describe(result)))
            }
        }
        (Expect::Error(kind), Ok(_)) => {
            Err(format!("expected error {kind:?}, got {}", describe(result)))
        }
        (Expect::Output { .. }, Err(_)) => {
            Err(format!("expected output, got {}", describe(result)))
        }
        (Expect::Output { messages, points }, Ok(output)) => {
            for message in output.messages() {
                message
                    .validate(max_payload)
                    .map_err(|e| format!("the host would refuse a message: {e}"))?;
            }
            for point in output.points() {
                point
                    .validate()
                    .map_err(|e| format!("the host would refuse a point: {e}"))?;
            }
            if let Some(expected) = messages {
                check_list(expected, &output.owned_messages(), "message", check_message)?;
            }
            if let Some(expected) = points {
                check_list(expected, &output.owned_points(), "point", check_point)?;
            }
            Ok(())
        }
    }
}

fn check_list<E, G>(
    expected: &[E],
    got: &[G],
    what: &str,
    check_one: fn(&E, &G) -> Result<(), String>,
) -> Result<(), String> {
    if expected.len() != got.len() {
        return Err(format!(
            "expected {} {what}(s), got {}",
            expected.len(),
            got.len()
        ));
    }
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        check_one(e, g).map_err(|why| format!("{what} {}: {why}", i + 1))?;
    }
    Ok(())
}

fn check_message(expected: &ExpectedMessage, got: &MqttMessage) -> Result<(), String> {
    if got.topic != expected.topic {
        return Err(format!(
            "topic {:?}, expected {:?}",
            got.topic, expected.topic
        ));
    }
    if let Some(payload) = &expected.payload
        && *payload != got.payload
    {
        return Err(format!(
            "payload {:?}, expected {:?}",
            String::from_utf8_lossy(&got.payload),
            String::from_utf8_lossy(payload)
        ));
    }
    if let Some(qos) = expected.qos
        && qos != got.qos.level()
    {
        return Err(format!("qos {}, expected {qos}", got.qos.level()));
    }
    if let Some(retain) = expected.retain
        && retain != got.retain
    {
        return Err(format!("retain {}, expected {retain}", got.retain));
    }
    Ok(())
}

fn field_matches(expected: &serde_json::Value, got: &FieldValue) -> bool {
    use serde_json::Value;
    match (expected, got) {
        (Value::Bool(e), FieldValue::Bool(g)) => e == g,
        (Value::String(e), FieldValue::Text(g)) => g == e,
        (Value::Number(e), FieldValue::Float(g)) => e.as_f64() == Some(*g),
        (Value::Number(e), FieldValue::Int(g)) => {
            e.as_i64() == Some(*g) || e.as_f64() == Some(*g as f64) && e.as_i64().is_none()
        }
        (Value::Number(e), FieldValue::UInt(g)) => {
            e.as_u64() == Some(*g) || e.as_f64() == Some(*g as f64) && e.as_u64().is_none()
        }
        _ => false,
    }
}

fn check_point(expected: &ExpectedPoint, got: &Point) -> Result<(), String> {
    if got.measurement != expected.measurement {
        return Err(format!(
            "measurement {:?}, expected {:?}",
            got.measurement, expected.measurement
        ));
    }
    if let Some(tags) = &expected.tags {
        let got_tags: BTreeMap<String, String> = (got.tags.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if *tags != got_tags {
            return Err(format!("tags {got_tags:?}, expected {tags:?}"));
        }
    }
    if let Some(fields) = &expected.fields {
        if fields.len() != got.fields.len() {
            return Err(format!(
                "{} field(s), expected {}",
                got.fields.len(),
                fields.len()
            ));
        }
        for (key, value) in &got.fields {
            match fields.get(&**key) {
                Some(want) if field_matches(want, value) => {}
                Some(want) => {
                    return Err(format!("field {key:?} is {value:?}, expected {want}"));
                }
                None => return Err(format!("unexpected field {key:?}")),
            }
        }
    }
    if let Some(timestamp) = expected.timestamp_ns
        && got.timestamp_ns != Some(timestamp)
    {
        return Err(format!(
            "timestamp_ns {:?}, expected {timestamp}",
            got.timestamp_ns
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Qos;
    use crate::runtime::GuestError;

    fn message(topic: &str, payload: &str) -> MqttMessage {
        MqttMessage {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec().into(),
            qos: Qos::AtLeastOnce,
            retain: true,
        }
    }

    #[test]
    fn parses_every_form_and_names_the_bad_line() {
        let text = r#"{"name":"t","input":"a","expect":{"messages":[{"topic":"x/y","payload":"1","qos":1,"retain":true}]}}

{"input_base64":"AAEC","expect":{"error":"malformed"}}
{"input":"b","received_at_ns":5,"expect":{"points":[{"measurement":"m","tags":{"k":"v"},"fields":{"f":1.5}}]}}"#;
        let vectors = parse(text).expect("parses");
        assert_eq!(vectors.len(), 3);
        assert_eq!(vectors[1].line, 3);
        assert_eq!(vectors[1].input, vec![0, 1, 2]);
        assert_eq!(
            vectors[1].expect,
            Expect::Error(ErrorKind::Guest(GuestErrorKind::Malformed))
        );
        assert_eq!(vectors[2].received_at_ns, Some(5));

        for (bad, needle) in [
            (r#"{"input":"a","expect":{}}"#, "needs"),
            (r#"{"expect":{"error":"any"}}"#, "exactly one"),
            (r#"{"input":"a","expect":{"error":"boom"}}"#, "not one of"),
            (
                r#"{"input":"a","expect":{"error":"any"},"extra":1}"#,
                "unknown field",
            ),
            (
                r#"{"input":"a","expect":{"messages":[{"topic":"t","qos":3}]}}"#,
                "qos",
            ),
            ("not json", "expected"),
        ] {
            let err = parse(&format!("\n{bad}")).expect_err(bad);
            let VectorError::Parse { line, message } = &err else {
                panic!("{err:?}");
            };
            assert_eq!(*line, 2);
            assert!(message.contains(needle), "{bad}: {message}");
        }
    }

    #[test]
    fn outputs_are_compared_exactly_where_given() {
        let expect = |json: &str| {
            parse(&format!(r#"{{"input":"x","expect":{json}}}"#)).expect("parses")[0]
                .expect
                .clone()
        };
        let output = TransformOutput::from_parts(
            &[message("a/b", "1"), message("a/c", "2")],
            &[Point {
                measurement: "m".into(),
                tags: vec![("node".into(), "n1".into())],
                fields: vec![
                    ("t".into(), FieldValue::Float(21.0)),
                    ("n".into(), FieldValue::Int(3)),
                    ("ok".into(), FieldValue::Bool(true)),
                ],
                timestamp_ns: None,
            }],
        );
        let ok = Ok(output.clone());
        let pass = |json: &str| check(&expect(json), &ok, 1024);
        assert_eq!(
            pass(r#"{"messages":[{"topic":"a/b","payload":"1"},{"topic":"a/c"}]}"#),
            Ok(())
        );
        assert!(
            pass(r#"{"messages":[{"topic":"a/b"}]}"#)
                .expect_err("count")
                .contains("expected 1 message(s), got 2")
        );
        assert!(
            pass(r#"{"messages":[{"topic":"a/b","qos":0},{"topic":"a/c"}]}"#)
                .expect_err("qos")
                .contains("qos 1, expected 0")
        );
        assert_eq!(
            pass(
                r#"{"points":[{"measurement":"m","tags":{"node":"n1"},"fields":{"t":21,"n":3,"ok":true}}]}"#
            ),
            Ok(())
        );
        assert!(
            pass(r#"{"points":[{"measurement":"m","fields":{"t":21.5,"n":3,"ok":true}}]}"#)
                .expect_err("value")
                .contains("field \"t\"")
        );
        assert!(pass(r#"{"error":"any"}"#).is_err());

        let refused: Result<TransformOutput, ProcessError> = Err(ProcessError::Guest(GuestError {
            kind: GuestErrorKind::Malformed,
            message: "bad".into(),
        }));
        assert_eq!(
            check(&expect(r#"{"error":"malformed"}"#), &refused, 1024),
            Ok(())
        );
        assert_eq!(check(&expect(r#"{"error":"any"}"#), &refused, 1024), Ok(()));
        assert!(check(&expect(r#"{"error":"trap"}"#), &refused, 1024).is_err());
        assert!(check(&expect(r#"{"messages":[]}"#), &refused, 1024).is_err());
    }

    #[test]
    fn output_the_host_would_refuse_fails_the_vector() {
        let expect = parse(r#"{"input":"x","expect":{"messages":[{"topic":"a/#"}]}}"#)
            .expect("parses")[0]
            .expect
            .clone();
        let output = Ok(TransformOutput::from_parts(&[message("a/#", "1")], &[]));
        let err = check(&expect, &output, 1024).expect_err("wildcard");
        assert!(err.contains("the host would refuse"), "{err}");
    }
}
