//! The host's own data model: frames in, MQTT messages and points out.
//!
//! These types are deliberately independent of the WIT bindings (which belong
//! to `sluice-runtime`) and of rumqttc/reqwest (which belong to the sinks):
//! everything between a source and a sink speaks this vocabulary. The topic
//! rules here, with a message's and a point's rules in `output`
//! (`MessageRef::validate`, `PointLike::validate`, for owned values too),
//! are the host's last word on what a transform returned — a transform is
//! untrusted, so nothing it emits reaches a sink unchecked.

use std::sync::Arc;

pub use bytes::Bytes;
pub use compact_str::CompactString;

use crate::ticket::FrameTicket;

/// One frame as split by a framer, before any transform saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The pipeline the frame was read by.
    pub source: Arc<str>,
    /// Receive time, nanoseconds since the Unix epoch.
    pub received_at_ns: u64,
    /// The raw bytes without framing; not necessarily UTF-8.
    pub data: Vec<u8>,
    /// Settles the frame for its port when the last copy is dropped (see
    /// [`crate::ticket`]); `FrameTicket::none()` outside a port.
    pub ticket: FrameTicket,
}

impl Frame {
    /// A frame no port waits for (see [`crate::ticket`]).
    pub fn new(source: Arc<str>, received_at_ns: u64, data: Vec<u8>) -> Self {
        Self {
            source,
            received_at_ns,
            data,
            ticket: FrameTicket::none(),
        }
    }
}

/// MQTT quality of service, as chosen by the transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Qos {
    /// QoS 0.
    AtMostOnce,
    /// QoS 1.
    AtLeastOnce,
    /// QoS 2.
    ExactlyOnce,
}

impl Qos {
    /// The QoS for a numeric level; `None` above 2.
    pub fn from_u8(level: u8) -> Option<Qos> {
        match level {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }

    /// The numeric level (0, 1, 2).
    pub fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }
}

/// A message bound for the MQTT broker.
///
/// Built so that turning a transform's output into messages costs no
/// allocation per message: topics (like every name and text value here)
/// are [`CompactString`]s, stored inline up to 24 bytes, and the payloads
/// of a frame's messages are views of one shared buffer that holds them
/// alone (freed with the last of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttMessage {
    /// Publish topic (validated by [`validate_topic`] before it is sent).
    pub topic: CompactString,
    /// Payload bytes.
    pub payload: Bytes,
    /// Quality of service.
    pub qos: Qos,
    /// Retain flag.
    pub retain: bool,
}

/// A typed InfluxDB field value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// 64-bit float; must be finite to be written.
    Float(f64),
    /// Signed integer (`i` suffix in line protocol).
    Int(i64),
    /// Unsigned integer (`u` suffix in line protocol).
    UInt(u64),
    /// Boolean.
    Bool(bool),
    /// String.
    Text(CompactString),
}

/// A point bound for InfluxDB.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Measurement name.
    pub measurement: CompactString,
    /// Tags in the order the transform gave them (the encoder sorts them).
    pub tags: Vec<(CompactString, CompactString)>,
    /// Fields; at least one is required.
    pub fields: Vec<(CompactString, FieldValue)>,
    /// Nanoseconds since the epoch; `None` means "the frame's receive time".
    pub timestamp_ns: Option<i64>,
}

/// Why the host refused something a transform emitted. The variant names are
/// stable: they are used as the `reason` label of the drop counters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOutput {
    /// Empty topic.
    #[error("empty topic")]
    EmptyTopic,
    /// Topic longer than MQTT's 65535-byte limit.
    #[error("topic is {0} bytes, more than MQTT's 65535")]
    TopicTooLong(usize),
    /// `+` or `#` in a publish topic.
    #[error("wildcard character in publish topic {0:?}")]
    WildcardInTopic(String),
    /// U+0000 is forbidden in MQTT topics.
    #[error("NUL character in topic {0:?}")]
    NulInTopic(String),
    /// A control character (U+0001–U+001F, U+007F–U+009F) or a Unicode
    /// non-character: MQTT says topics should not hold them, and brokers
    /// (mosquitto) drop the connection of a client that sends one.
    #[error("character {character:?} in topic {topic:?}: brokers refuse it")]
    ForbiddenCharInTopic {
        /// The topic, made safe to print.
        topic: String,
        /// The first such character.
        character: char,
    },
    /// Topics starting with `$` are reserved for the broker.
    #[error("topic {0:?} starts with '$', which is reserved for the broker")]
    ReservedTopic(String),
    /// Payload larger than the configured maximum.
    #[error("payload is {size} bytes, more than the maximum of {max}")]
    PayloadTooLarge {
        /// Actual size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A point with an empty measurement name.
    #[error("point has an empty measurement name")]
    EmptyMeasurement,
    /// A point without fields cannot be written.
    #[error("point {0:?} has no fields")]
    NoFields(String),
    /// Empty tag key or value, or empty field key.
    #[error("point {0:?} has an empty tag or field key, or an empty tag value")]
    EmptyKey(String),
    /// NaN and infinities are refused by InfluxDB.
    #[error("field {field:?} of point {measurement:?} is not a finite number ({value})")]
    NonFiniteField {
        /// The measurement.
        measurement: String,
        /// The field key.
        field: String,
        /// The value as text.
        value: String,
    },
}

impl InvalidOutput {
    /// The label used for the drop counter.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidOutput::EmptyTopic => "empty_topic",
            InvalidOutput::TopicTooLong(_) => "topic_too_long",
            InvalidOutput::WildcardInTopic(_) => "wildcard_topic",
            InvalidOutput::NulInTopic(_) => "nul_in_topic",
            InvalidOutput::ForbiddenCharInTopic { .. } => "forbidden_char_in_topic",
            InvalidOutput::ReservedTopic(_) => "reserved_topic",
            InvalidOutput::PayloadTooLarge { .. } => "payload_too_large",
            InvalidOutput::EmptyMeasurement => "empty_measurement",
            InvalidOutput::NoFields(_) => "point_without_fields",
            InvalidOutput::EmptyKey(_) => "empty_key",
            InvalidOutput::NonFiniteField { .. } => "non_finite_field",
        }
    }
}

/// Checks a publish topic against the MQTT 3.1.1/5 rules (4.7 in both specs).
///
/// Empty levels (`a//b`) are legal in MQTT and therefore accepted.
pub fn validate_topic(topic: &str) -> Result<(), InvalidOutput> {
    if topic.is_empty() {
        return Err(InvalidOutput::EmptyTopic);
    }
    if topic.len() > usize::from(u16::MAX) {
        return Err(InvalidOutput::TopicTooLong(topic.len()));
    }
    if topic.contains(['+', '#']) {
        return Err(InvalidOutput::WildcardInTopic(guest_text(topic)));
    }
    if topic.contains('\0') {
        return Err(InvalidOutput::NulInTopic(guest_text(topic)));
    }
    if let Some(character) = topic.chars().find(|&c| forbidden_in_topic(c)) {
        return Err(InvalidOutput::ForbiddenCharInTopic {
            topic: guest_text(topic),
            character,
        });
    }
    if topic.starts_with('$') {
        return Err(InvalidOutput::ReservedTopic(guest_text(topic)));
    }
    Ok(())
}

/// What MQTT 3.1.1 and 5 (1.5.3/1.5.4) say a topic should not contain
/// besides U+0000: the control characters U+0001–U+001F and U+007F–U+009F,
/// and the Unicode non-characters (U+FDD0–U+FDEF and the last two code
/// points of every plane).
fn forbidden_in_topic(c: char) -> bool {
    let code = u32::from(c);
    c.is_control() || (0xFDD0..=0xFDEF).contains(&code) || code & 0xFFFE == 0xFFFE
}

/// Whether `filter` is a valid MQTT subscription filter: non-empty, at most
/// 65535 bytes, no NUL or other character brokers refuse
/// ([`validate_topic`]), `+` only as a whole level, `#` only as the whole
/// last level.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty()
        || filter.len() > usize::from(u16::MAX)
        || filter.chars().any(|c| c == '\0' || forbidden_in_topic(c))
    {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, level)| match *level {
        "+" => true,
        "#" => i == last,
        other => !other.contains(['+', '#']),
    })
}

/// Whether `topic` (a publish topic) matches the subscription `filter`
/// (MQTT 3.1.1 §4.7; `$`-topics are not matched by leading wildcards).
pub fn topic_matches_filter(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    let mut filter_levels = filter.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The most of a guest's text the host keeps (error messages, log lines,
/// names in refusals).
pub const GUEST_TEXT_MAX: usize = 1024;

/// Text from a transform (or a device) made safe to print — in a log line,
/// an API answer, a refusal: control characters and the Unicode line
/// and paragraph separators escaped (`\n`, `\u{1b}`…), and at most
/// [`GUEST_TEXT_MAX`] bytes of that kept (whole characters; `…` appended
/// when cut).
pub fn guest_text(text: &str) -> String {
    let mut safe = String::with_capacity(text.len().min(GUEST_TEXT_MAX) + 3);
    for c in text.chars() {
        let escape = c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
        let len = if escape {
            c.escape_default().count()
        } else {
            c.len_utf8()
        };
        if safe.len() + len > GUEST_TEXT_MAX {
            safe.push('…');
            break;
        }
        if escape {
            safe.extend(c.escape_default());
        } else {
            safe.push(c);
        }
    }
    safe
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `ns` since the Unix epoch as an RFC 3339 UTC timestamp, with nine
/// fractional digits when `nanos` is set (`1970-01-01T00:00:00.000000000Z`)
/// or whole seconds otherwise. Hand-written (Howard Hinnant's
/// civil-from-days) to avoid a date crate for two log/JSON fields.
pub fn rfc3339(ns: u64, nanos: bool) -> String {
    let secs = ns / 1_000_000_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (hour, minute, second) = (rem / 3600, rem / 60 % 60, rem % 60);
    if nanos {
        let fraction = ns % 1_000_000_000;
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{fraction:09}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
    }
}

/// Where a frame's outputs leave the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sink {
    /// The MQTT broker (messages).
    Mqtt,
    /// InfluxDB (points).
    Influx,
    /// The Sparkplug B edge node (points, on its own MQTT connection).
    Sparkplug,
}

impl Sink {
    /// The name in metric labels, logs and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Mqtt => "mqtt",
            Sink::Influx => "influx",
            Sink::Sparkplug => "sparkplug",
        }
    }
}

impl std::fmt::Display for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command for a pipeline's device, as it arrived over MQTT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownlinkCommand {
    /// The topic it was published to (matched the pipeline's filter).
    pub topic: String,
    /// The payload, uninterpreted.
    pub payload: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::PointLike;

    #[test]
    fn guest_text_is_cut_and_cannot_forge_a_log_line() {
        assert_eq!(guest_text("plain ünï"), "plain ünï");
        assert_eq!(
            guest_text("a\nb\r\u{1b}[31m\u{2028}"),
            "a\\nb\\r\\u{1b}[31m\\u{2028}"
        );
        let long = "é".repeat(GUEST_TEXT_MAX);
        let cut = guest_text(&long);
        assert!(
            cut.len() <= GUEST_TEXT_MAX + '…'.len_utf8(),
            "{}",
            cut.len()
        );
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn topic_rules() {
        let cases: &[(&str, Option<&str>)] = &[
            ("iiot/node1/temperature", None),
            ("a//b", None),
            ("/leading", None),
            ("ünïcödé/ok", None),
            ("", Some("empty_topic")),
            ("a/+/b", Some("wildcard_topic")),
            ("a/#", Some("wildcard_topic")),
            ("a\0b", Some("nul_in_topic")),
            ("hostile/ctl/\u{1}", Some("forbidden_char_in_topic")),
            ("a/\u{1f}", Some("forbidden_char_in_topic")),
            ("a/\u{7f}", Some("forbidden_char_in_topic")),
            ("a/\u{9f}", Some("forbidden_char_in_topic")),
            ("a/\u{fdd0}", Some("forbidden_char_in_topic")),
            ("a/\u{ffff}", Some("forbidden_char_in_topic")),
            ("a/\u{1fffe}", Some("forbidden_char_in_topic")),
            ("a/\u{a0}\u{fffd}\u{10fffd}", None),
            ("$SYS/x", Some("reserved_topic")),
        ];
        for (topic, want) in cases {
            let got = validate_topic(topic).err().map(|e| e.reason());
            assert_eq!(got, *want, "topic {topic:?}");
        }
        let long = "a".repeat(65536);
        assert_eq!(
            validate_topic(&long).map_err(|e| e.reason()),
            Err("topic_too_long")
        );
        assert!(validate_topic(&"a".repeat(65535)).is_ok());
    }

    #[test]
    fn payload_limit() {
        let msg = MqttMessage {
            topic: "t".into(),
            payload: vec![0; 11].into(),
            qos: Qos::AtLeastOnce,
            retain: false,
        };
        assert!(msg.validate(11).is_ok());
        assert_eq!(
            msg.validate(10),
            Err(InvalidOutput::PayloadTooLarge { size: 11, max: 10 })
        );
    }

    #[test]
    fn point_rules() {
        let ok = Point {
            measurement: "m".into(),
            tags: vec![("node".into(), "n1".into())],
            fields: vec![("t".into(), FieldValue::Float(1.5))],
            timestamp_ns: None,
        };
        assert!(ok.validate().is_ok());
        let mut nan = ok.clone();
        nan.fields[0].1 = FieldValue::Float(f64::NAN);
        assert_eq!(nan.validate().unwrap_err().reason(), "non_finite_field");
        let mut inf = ok.clone();
        inf.fields[0].1 = FieldValue::Float(f64::NEG_INFINITY);
        assert_eq!(inf.validate().unwrap_err().reason(), "non_finite_field");
        let mut none = ok.clone();
        none.fields.clear();
        assert_eq!(
            none.validate().unwrap_err().reason(),
            "point_without_fields"
        );
        let mut empty_tag = ok.clone();
        empty_tag.tags[0].1 = "".into();
        assert_eq!(empty_tag.validate().unwrap_err().reason(), "empty_key");
        let mut empty_m = ok;
        empty_m.measurement = "".into();
        assert_eq!(
            empty_m.validate().unwrap_err().reason(),
            "empty_measurement"
        );
    }

    #[test]
    fn topic_filters_validate_and_match_like_the_spec() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "a//b",
            "/",
            "iiot/cmd/node1/#",
        ] {
            assert!(valid_topic_filter(ok), "{ok:?}");
        }
        for bad in [
            "",
            "a/#/b",
            "a#",
            "a/b+",
            "#/a",
            "a\0b",
            "a/\u{1}",
            "a/\u{ffff}/#",
        ] {
            assert!(!valid_topic_filter(bad), "{bad:?}");
        }
        let cases = [
            ("iiot/cmd/node1/#", "iiot/cmd/node1/valve", true),
            ("iiot/cmd/node1/#", "iiot/cmd/node1", true),
            ("iiot/cmd/node1/#", "iiot/cmd/node2/valve", false),
            ("iiot/+/x", "iiot/a/x", true),
            ("iiot/+/x", "iiot/a/b/x", false),
            ("iiot/+", "iiot/", true),
            ("+/x", "/x", true),
            ("#", "$SYS/broker", false),
            ("$SYS/#", "$SYS/broker", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(
                topic_matches_filter(topic, filter),
                want,
                "{filter} vs {topic}"
            );
        }
    }
}
