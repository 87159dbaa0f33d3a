//! What goes out: MQTT messages and InfluxDB points.

use std::fmt;
use std::str::FromStr;

/// MQTT quality of service.
///
/// The default is [`Qos::AtMostOnce`], as in MQTT itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Qos {
    /// QoS 0: fire and forget.
    #[default]
    AtMostOnce,
    /// QoS 1: acknowledged by the broker (PUBACK); may be duplicated.
    AtLeastOnce,
    /// QoS 2: exactly-once handshake (PUBREC/PUBREL/PUBCOMP).
    ExactlyOnce,
}

impl Qos {
    /// The QoS for an MQTT level number (0, 1 or 2); `None` for anything else.
    pub fn from_level(level: u8) -> Option<Self> {
        match level {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }

    /// The MQTT level number: 0, 1 or 2.
    pub fn level(self) -> u8 {
        self as u8
    }
}

/// Parses `"0"`, `"1"` or `"2"`, so that `config.parse::<Qos>("qos")` works.
impl FromStr for Qos {
    type Err = ParseQosError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<u8>()
            .ok()
            .and_then(Qos::from_level)
            .ok_or(ParseQosError)
    }
}

/// The error from parsing a [`Qos`] that is not `0`, `1` or `2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseQosError;

impl fmt::Display for ParseQosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected an MQTT QoS level: 0, 1 or 2")
    }
}

impl std::error::Error for ParseQosError {}

/// A message for the host to publish to the MQTT broker.
///
/// Build it with [`Message::new`] and the chained setters; the fields are
/// public so tests can inspect them directly.
///
/// ```
/// use sluice_sdk::{Message, Qos};
///
/// let m = Message::new("plant/boiler/temperature", "71.5")
///     .qos(Qos::AtLeastOnce)
///     .retain(true);
/// assert_eq!(m.payload, b"71.5");
/// assert!(m.retain);
/// ```
///
/// The host validates the topic (UTF-8, no `+`/`#` wildcards, length) and the
/// payload size; an invalid message is dead-lettered, never sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The MQTT topic.
    pub topic: String,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The quality of service; [`Qos::AtMostOnce`] unless set.
    pub qos: Qos,
    /// Whether the broker keeps it as the topic's last known value; `false`
    /// unless set.
    pub retain: bool,
}

impl Message {
    /// A message on `topic` with `payload` (a `&str`, `String`, `&[u8]`,
    /// `Vec<u8>`, ...), QoS 0, not retained.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos: Qos::AtMostOnce,
            retain: false,
        }
    }

    /// Sets the quality of service.
    #[must_use]
    pub fn qos(mut self, qos: Qos) -> Self {
        self.qos = qos;
        self
    }

    /// Sets the retain flag: the broker keeps the message as the topic's last
    /// known value (use it for sensor values, not for events or counters).
    #[must_use]
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }
}

/// A typed InfluxDB field value.
///
/// Every Rust number, `bool` and string type converts into it with `From`,
/// so [`Point::field`] takes plain values: floats become [`Float`](Self::Float),
/// signed integers [`Int`](Self::Int), unsigned integers
/// [`Uint`](Self::Uint).
///
/// InfluxDB rejects a write whose field type differs from the one already
/// stored for that field, so keep each field's type fixed.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// A 64-bit float.
    Float(f64),
    /// A signed 64-bit integer.
    Int(i64),
    /// An unsigned 64-bit integer.
    Uint(u64),
    /// A boolean.
    Boolean(bool),
    /// A string.
    Text(String),
}

macro_rules! field_value_from {
    ($case:ident($target:ty): $($source:ty),*) => {$(
        impl From<$source> for FieldValue {
            fn from(v: $source) -> Self {
                FieldValue::$case(<$target>::from(v))
            }
        }
    )*};
}

field_value_from!(Float(f64): f64, f32);
field_value_from!(Int(i64): i64, i32, i16, i8);
field_value_from!(Uint(u64): u64, u32, u16, u8);
field_value_from!(Boolean(bool): bool);
field_value_from!(Text(String): String, &str);

impl From<isize> for FieldValue {
    fn from(v: isize) -> Self {
        FieldValue::Int(v as i64)
    }
}

impl From<usize> for FieldValue {
    fn from(v: usize) -> Self {
        FieldValue::Uint(v as u64)
    }
}

/// A point for the host to write to InfluxDB.
///
/// ```
/// use sluice_sdk::{FieldValue, Point};
///
/// let p = Point::new("environment")
///     .tag("node", "boiler")
///     .field("temperature", 71.5)
///     .field("alarms", 2i64)
///     .field("ok", true);
/// assert_eq!(p.tag_value("node"), Some("boiler"));
/// assert_eq!(p.field_value("alarms"), Some(&FieldValue::Int(2)));
/// assert_eq!(p.timestamp_ns, None); // the host uses the frame's receive time
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The measurement name.
    pub measurement: String,
    /// Tags as `(key, value)`, in the order they were added.
    pub tags: Vec<(String, String)>,
    /// Fields as `(key, value)`, in the order they were added. A point needs
    /// at least one field for InfluxDB to accept it.
    pub fields: Vec<(String, FieldValue)>,
    /// Nanoseconds since the Unix epoch; when `None` the host uses the frame's
    /// receive time.
    pub timestamp_ns: Option<i64>,
}

impl Point {
    /// A point of `measurement` with no tags, no fields and no timestamp.
    pub fn new(measurement: impl Into<String>) -> Self {
        Point {
            measurement: measurement.into(),
            tags: Vec::new(),
            fields: Vec::new(),
            timestamp_ns: None,
        }
    }

    /// Adds a tag.
    #[must_use]
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.push((key.into(), value.into()));
        self
    }

    /// Adds a field; `value` is anything that converts into a
    /// [`FieldValue`]: `27.6`, `3i64`, `7u64`, `true`, `"text"`.
    #[must_use]
    pub fn field(mut self, key: impl Into<String>, value: impl Into<FieldValue>) -> Self {
        self.fields.push((key.into(), value.into()));
        self
    }

    /// Sets the timestamp, in nanoseconds since the Unix epoch. Without one
    /// the host uses the frame's receive time.
    #[must_use]
    pub fn timestamp_ns(mut self, timestamp_ns: i64) -> Self {
        self.timestamp_ns = Some(timestamp_ns);
        self
    }

    /// The value of the tag `key` (the last one, if added twice).
    pub fn tag_value(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of the field `key` (the last one, if added twice).
    pub fn field_value(&self, key: &str) -> Option<&FieldValue> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// Everything one frame produced: what [`Transform::process`] appends to.
///
/// If `process` returns an error, whatever it appended for that frame is
/// discarded, so a transform can publish as it decodes and still fail late.
///
/// [`Transform::process`]: crate::Transform::process
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    messages: Vec<Message>,
    points: Vec<Point>,
}

impl Output {
    /// An empty output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues an MQTT message.
    pub fn publish(&mut self, message: Message) {
        self.messages.push(message);
    }

    /// Queues an InfluxDB point.
    pub fn point(&mut self, point: Point) {
        self.points.push(point);
    }

    /// Reserves room for at least `messages` more messages and `points` more
    /// points, to avoid regrowing when the count is known up front.
    pub fn reserve(&mut self, messages: usize, points: usize) {
        self.messages.reserve(messages);
        self.points.reserve(points);
    }

    /// The messages queued so far, in order.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The points queued so far, in order.
    pub fn points(&self) -> &[Point] {
        &self.points
    }

    /// Whether nothing was queued.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.points.is_empty()
    }

    /// Takes the messages and points out.
    pub fn into_parts(self) -> (Vec<Message>, Vec<Point>) {
        (self.messages, self.points)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn qos_levels_round_trip() {
        for level in 0..=2 {
            let qos = Qos::from_level(level).unwrap();
            assert_eq!(qos.level(), level);
        }
        assert_eq!(Qos::from_level(3), None);
        assert_eq!(Qos::default(), Qos::AtMostOnce);
    }

    #[test]
    fn qos_from_str() {
        assert_eq!("0".parse(), Ok(Qos::AtMostOnce));
        assert_eq!(" 1 ".parse(), Ok(Qos::AtLeastOnce));
        assert_eq!("2".parse(), Ok(Qos::ExactlyOnce));
        assert_eq!("3".parse::<Qos>(), Err(ParseQosError));
        assert_eq!("one".parse::<Qos>(), Err(ParseQosError));
        assert_eq!(
            ParseQosError.to_string(),
            "expected an MQTT QoS level: 0, 1 or 2"
        );
    }

    #[test]
    fn message_builder_defaults_and_setters() {
        let m = Message::new("a/b", "x");
        assert_eq!(m.topic, "a/b");
        assert_eq!(m.payload, b"x");
        assert_eq!(m.qos, Qos::AtMostOnce);
        assert!(!m.retain);

        let m = Message::new(String::from("t"), vec![1u8, 2])
            .qos(Qos::ExactlyOnce)
            .retain(true);
        assert_eq!(m.payload, [1, 2]);
        assert_eq!(m.qos, Qos::ExactlyOnce);
        assert!(m.retain);

        // Every common payload type is accepted.
        let _ = Message::new("t", String::from("s"));
        let _ = Message::new("t", &b"bytes"[..]);
        let _ = Message::new("t", b"array");
        let _ = Message::new("t", [0u8; 4]);
    }

    #[test]
    fn point_builder_keeps_order_and_types() {
        let p = Point::new("environment")
            .tag("node", "node1")
            .tag("site", String::from("north"))
            .field("temperature", 27.6)
            .field("count", 3i64)
            .field("ok", true)
            .field("raw", 7u64)
            .field("note", "text")
            .field("small", 1.5f32)
            .field("i32", -4i32)
            .field("u8", 200u8)
            .field("len", 5usize)
            .timestamp_ns(1_700_000_000_000_000_000);
        assert_eq!(p.measurement, "environment");
        assert_eq!(
            p.tags,
            [
                ("node".to_string(), "node1".to_string()),
                ("site".to_string(), "north".to_string())
            ]
        );
        let keys: Vec<_> = p.fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "temperature",
                "count",
                "ok",
                "raw",
                "note",
                "small",
                "i32",
                "u8",
                "len"
            ]
        );
        assert_eq!(p.field_value("temperature"), Some(&FieldValue::Float(27.6)));
        assert_eq!(p.field_value("count"), Some(&FieldValue::Int(3)));
        assert_eq!(p.field_value("ok"), Some(&FieldValue::Boolean(true)));
        assert_eq!(p.field_value("raw"), Some(&FieldValue::Uint(7)));
        assert_eq!(
            p.field_value("note"),
            Some(&FieldValue::Text("text".into()))
        );
        assert_eq!(p.field_value("small"), Some(&FieldValue::Float(1.5)));
        assert_eq!(p.field_value("i32"), Some(&FieldValue::Int(-4)));
        assert_eq!(p.field_value("u8"), Some(&FieldValue::Uint(200)));
        assert_eq!(p.field_value("len"), Some(&FieldValue::Uint(5)));
        assert_eq!(p.field_value("missing"), None);
        assert_eq!(p.tag_value("site"), Some("north"));
        assert_eq!(p.tag_value("missing"), None);
        assert_eq!(p.timestamp_ns, Some(1_700_000_000_000_000_000));
        assert_eq!(FieldValue::from(-1isize), FieldValue::Int(-1));
    }

    #[test]
    fn output_collects_in_order() {
        let mut out = Output::new();
        assert!(out.is_empty());
        out.reserve(2, 1);
        out.publish(Message::new("a", "1"));
        out.publish(Message::new("b", "2"));
        out.point(Point::new("m").field("v", 1i64));
        assert!(!out.is_empty());
        let topics: Vec<_> = out.messages().iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["a", "b"]);
        assert_eq!(out.points().len(), 1);
        let (messages, points) = out.into_parts();
        assert_eq!((messages.len(), points.len()), (2, 1));
    }
}
