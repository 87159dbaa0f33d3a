//! sluice transform for the LoRa gateway's JSON telemetry lines.
//!
//! The gateway prints one JSON object per line:
//!
//! ```text
//! {"seq":1042,"n1":{"t":27.6,"h":54.1,"bat":3.71},"n2":{"t":26.0,"h":50.2,"bat":3.65},"sig":{"rssi":-39,"snr":9.5},"stats":{"rx":1201,"crc_err":3}}
//! ```
//!
//! # MQTT messages
//!
//! One topic per value, the payload being the number **exactly as written in
//! the JSON** (`26.0` stays `26.0`, `-39` stays `-39`). `<prefix>` is
//! `iiot` by default, `<node>` the node's name (below). QoS is the `qos`
//! setting (1 by default) for every message.
//!
//! | JSON            | topic                         | retain |
//! |-----------------|-------------------------------|--------|
//! | `n<k>.t`        | `<prefix>/<node>/temperature` | yes    |
//! | `n<k>.h`        | `<prefix>/<node>/humidity`    | yes    |
//! | `n<k>.bat`      | `<prefix>/<node>/battery`     | yes    |
//! | `sig.rssi`      | `<prefix>/signal/rssi`        | yes    |
//! | `sig.snr`       | `<prefix>/signal/snr`         | yes    |
//! | `stats.rx`      | `<prefix>/stats/rx`           | no     |
//! | `stats.crc_err` | `<prefix>/stats/crc_err`      | no     |
//! | `seq`           | `<prefix>/stats/seq`          | no     |
//!
//! Sensor values are retained (a new subscriber sees the last reading);
//! counters are not. Messages come out in the order the values appear in the
//! line.
//!
//! # InfluxDB points
//!
//! None carries a timestamp: the host stamps them with the frame's receive
//! time.
//!
//! | measurement     | tags          | fields                                          |
//! |-----------------|---------------|-------------------------------------------------|
//! | `environment`   | `node=<node>` | `temperature`, `humidity`, `battery`: float     |
//! | `signal`        |               | `rssi`: integer, `snr`: float                   |
//! | `gateway_stats` |               | `rx`, `crc_err`, `seq`: integer                 |
//!
//! One `environment` point per node, after the node's object; `signal` after
//! `sig`; `gateway_stats` last, as it gathers `stats` and the top-level
//! `seq`.
//!
//! **Every field has a fixed type**, whatever the JSON number looks like,
//! because InfluxDB refuses a write whose field type differs from the one it
//! already stored. Float fields accept any JSON number (`26` is written as the
//! float 26.0); integer fields accept only integer literals (`-39`), and
//! `-39.0` or `1e3` there is a `Malformed` error.
//!
//! # Decoding rules
//!
//! * Top-level keys `n` followed by digits (`n1`, `n2`, `n17`) are nodes.
//!   Other unknown keys, at any level, are ignored (forward compatibility).
//! * Missing values are skipped, never zero-filled; a JSON `null` counts as
//!   missing. A section with no known value produces no point.
//! * Leading and trailing whitespace, including `\r`, is ignored.
//! * Everything else is an [`Error::Malformed`] that names the culprit:
//!   invalid UTF-8, not JSON, a top level that is not an object, a section
//!   that is not an object (`` `n1` ``), a value of the wrong type
//!   (`` `n1.t`: expected a number, found a string ``), an integer field with
//!   a fraction or out of the `i64` range, a float out of range.
//!
//! # Configuration
//!
//! | key         | default        | meaning                                                  |
//! |-------------|----------------|----------------------------------------------------------|
//! | `prefix`    | `iiot`         | first topic level(s), e.g. `plant/line1`                 |
//! | `qos`       | `1`            | MQTT QoS of every message: `0`, `1` or `2`               |
//! | `node.n<k>` | `node<k>`      | name of node `n<k>` in topics and in the `node` tag      |
//!
//! So by default `n1` is `node1`; with `node.n1 = "boiler"` its temperature
//! goes to `iiot/boiler/temperature`, tagged `node=boiler`. The prefix must be
//! non-empty, without `+`, `#` or a leading or trailing `/`; a node name must
//! be a single topic level (non-empty, no `/`, `+` or `#`). Any other key is
//! rejected, to catch typos. Invalid configuration is an
//! [`Error::InvalidConfig`] naming the key.
//!
//! # Downlink commands
//!
//! A command published to `<prefix>/cmd/<node>/<name>` becomes one JSON line
//! for the gateway (the host adds the port's framing, a newline):
//!
//! ```text
//! iiot/cmd/node1/interval  30             →  {"to":"n1","cmd":"interval","arg":30}
//! iiot/cmd/node2/led       {"on":true}    →  {"to":"n2","cmd":"led","arg":{"on":true}}
//! iiot/cmd/node1/label     boiler room    →  {"to":"n1","cmd":"label","arg":"boiler room"}
//! iiot/cmd/node1/reboot    (empty)        →  {"to":"n1","cmd":"reboot"}
//! ```
//!
//! A payload that is JSON is passed as is; other UTF-8 text becomes a JSON
//! string. Refused (never written): a topic outside `<prefix>/cmd/`, an
//! unknown node name, a command name other than letters, digits, `_`, `-`,
//! or a payload that is not UTF-8.
//!
//! # Use from native code
//!
//! The crate is also an `rlib`, so tests and benchmarks run it natively:
//!
//! ```
//! use json_telemetry::{JsonTelemetry, SAMPLE_LINE};
//! use sluice_sdk::{Config, Frame, Transform};
//!
//! let mut transform = JsonTelemetry::init(&Config::new())?;
//! let out = sluice_sdk::process(&mut transform, &Frame::from_data(SAMPLE_LINE))?;
//! assert_eq!(out.messages().len(), 11);
//! assert_eq!(out.points().len(), 4);
//! # Ok::<(), sluice_sdk::Error>(())
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use sluice_sdk::{
    Command, Config, Error, FieldValue, Frame, Message, Output, Point, Qos, Transform,
};

/// A line as the gateway prints it, for tests and benchmarks.
pub const SAMPLE_LINE: &str = r#"{"seq":1042,"n1":{"t":27.6,"h":54.1,"bat":3.71},"n2":{"t":26.0,"h":50.2,"bat":3.65},"sig":{"rssi":-39,"snr":9.5},"stats":{"rx":1201,"crc_err":3}}"#;

/// The transform. Create it with [`Transform::init`].
#[derive(Debug, Clone)]
pub struct JsonTelemetry {
    prefix: String,
    qos: Qos,
    /// `(json key, name)` overrides from `node.<key>` settings.
    node_names: Vec<(String, String)>,
}

sluice_sdk::export!(JsonTelemetry);

impl Transform for JsonTelemetry {
    fn init(config: &Config) -> Result<Self, Error> {
        let mut node_names: Vec<(String, String)> = Vec::new();
        for (key, value) in config.iter() {
            match key {
                "prefix" | "qos" => {}
                _ => match key.strip_prefix("node.") {
                    Some(node) if is_node_key(node) => {
                        check_topic_level(key, value)?;
                        node_names.retain(|(k, _)| k != node);
                        node_names.push((node.to_owned(), value.to_owned()));
                    }
                    Some(_) => {
                        return Err(Error::invalid_config(format!(
                            "`{key}`: a node key is `n` followed by digits, like `node.n1`"
                        )));
                    }
                    None => {
                        return Err(Error::invalid_config(format!(
                            "unknown key `{key}` (known: `prefix`, `qos`, `node.n<k>`)"
                        )));
                    }
                },
            }
        }

        let prefix = config.get_or("prefix", "iiot");
        check_prefix(prefix)?;
        Ok(JsonTelemetry {
            prefix: prefix.to_owned(),
            qos: config.parse_or("qos", Qos::AtLeastOnce)?,
            node_names,
        })
    }

    fn process(&mut self, frame: &Frame, out: &mut Output) -> Result<(), Error> {
        let text = frame.text()?;
        let mut de = serde_json::Deserializer::from_str(text);
        let mut stats = GatewayStats::default();
        out.reserve(11, 4);
        de.deserialize_map(TopVisitor {
            t: self,
            out: &mut *out,
            stats: &mut stats,
        })
        .and_then(|()| de.end())
        .map_err(json_error)?;

        if let Some(seq) = stats.seq {
            stats.fields.push(("seq".to_owned(), FieldValue::Int(seq)));
        }
        if !stats.fields.is_empty() {
            out.point(Point {
                measurement: "gateway_stats".to_owned(),
                tags: Vec::new(),
                fields: stats.fields,
                timestamp_ns: None,
            });
        }
        Ok(())
    }

    /// `<prefix>/cmd/<node>/<name>` with payload `P` becomes the line
    /// `{"to":"n<k>","cmd":"<name>","arg":P}` (see the crate docs).
    fn encode_command(&mut self, command: &Command) -> Result<Vec<u8>, Error> {
        let rest = command
            .topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix("/cmd/"))
            .ok_or_else(|| {
                Error::unsupported(format!(
                    "command topics are `{}/cmd/<node>/<command>`, not `{}`",
                    self.prefix, command.topic
                ))
            })?;
        let (node, name) = rest.split_once('/').ok_or_else(|| {
            Error::malformed(format!(
                "`{}`: no command name after the node",
                command.topic
            ))
        })?;
        let key = self
            .node_key(node)
            .ok_or_else(|| Error::malformed(format!("unknown node `{node}`")))?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::malformed(format!(
                "command name `{name}`: use letters, digits, `_` and `-`"
            )));
        }
        let payload = command.payload.as_slice();
        let arg = if payload.iter().all(u8::is_ascii_whitespace) {
            None
        } else if let Ok(raw) = serde_json::from_slice::<&RawValue>(payload) {
            Some(raw.get().to_owned())
        } else {
            let text = command.text()?;
            Some(serde_json::Value::from(text.trim()).to_string())
        };
        let mut line = format!(r#"{{"to":"{key}","cmd":"{name}""#);
        if let Some(arg) = arg {
            line.push_str(r#","arg":"#);
            line.push_str(&arg);
        }
        line.push('}');
        Ok(line.into_bytes())
    }
}

impl JsonTelemetry {
    /// `<prefix>/<level>/<metric>`, allocated once at its exact size.
    fn topic(&self, level: &str, metric: &str) -> String {
        let mut topic = String::with_capacity(self.prefix.len() + level.len() + metric.len() + 2);
        topic.push_str(&self.prefix);
        topic.push('/');
        topic.push_str(level);
        topic.push('/');
        topic.push_str(metric);
        topic
    }

    /// The JSON key (`n<k>`) of the node named `name` in topics.
    fn node_key(&self, name: &str) -> Option<String> {
        if let Some((key, _)) = self.node_names.iter().find(|(_, n)| n == name) {
            return Some(key.clone());
        }
        let key = format!("n{}", name.strip_prefix("node")?);
        // `node3` is n3's name only if n3 was not renamed.
        (is_node_key(&key) && !self.node_names.iter().any(|(k, _)| *k == key)).then_some(key)
    }

    /// The configured name of node `key` (`n<digits>`), or `node<digits>`.
    fn node_name(&self, key: &str) -> String {
        match self.node_names.iter().find(|(k, _)| k == key) {
            Some((_, name)) => name.clone(),
            None => {
                let digits = key.strip_prefix('n').unwrap_or(key);
                let mut name = String::with_capacity(4 + digits.len());
                name.push_str("node");
                name.push_str(digits);
                name
            }
        }
    }
}

fn is_node_key(key: &str) -> bool {
    match key.strip_prefix('n') {
        Some(digits) => !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

fn check_prefix(prefix: &str) -> Result<(), Error> {
    let problem = if prefix.is_empty() {
        "must not be empty"
    } else if prefix.contains(['+', '#', '\0']) {
        "must not contain `+`, `#` or NUL"
    } else if prefix.starts_with('/') || prefix.ends_with('/') {
        "must not start or end with `/`"
    } else {
        return Ok(());
    };
    Err(Error::invalid_config(format!(
        "`prefix` = {prefix:?}: {problem}"
    )))
}

fn check_topic_level(key: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.contains(['/', '+', '#', '\0']) {
        return Err(Error::invalid_config(format!(
            "`{key}` = {value:?}: a node name must be a non-empty topic level without `/`, `+`, `#` or NUL"
        )));
    }
    Ok(())
}

fn json_error(e: serde_json::Error) -> Error {
    match e.classify() {
        serde_json::error::Category::Data => Error::malformed(e.to_string()),
        _ => Error::malformed(format!("not valid JSON: {e}")),
    }
}

/// What gets an InfluxDB type, and where a value goes.
#[derive(Clone, Copy)]
enum Kind {
    Float,
    Int,
}

/// One known value of a section.
struct Metric {
    /// The key in the JSON.
    json: &'static str,
    /// The topic's last level and the InfluxDB field key.
    name: &'static str,
    kind: Kind,
    retain: bool,
}

const NODE_METRICS: &[Metric] = &[
    Metric {
        json: "t",
        name: "temperature",
        kind: Kind::Float,
        retain: true,
    },
    Metric {
        json: "h",
        name: "humidity",
        kind: Kind::Float,
        retain: true,
    },
    Metric {
        json: "bat",
        name: "battery",
        kind: Kind::Float,
        retain: true,
    },
];

const SIGNAL_METRICS: &[Metric] = &[
    Metric {
        json: "rssi",
        name: "rssi",
        kind: Kind::Int,
        retain: true,
    },
    Metric {
        json: "snr",
        name: "snr",
        kind: Kind::Float,
        retain: true,
    },
];

const STATS_METRICS: &[Metric] = &[
    Metric {
        json: "rx",
        name: "rx",
        kind: Kind::Int,
        retain: false,
    },
    Metric {
        json: "crc_err",
        name: "crc_err",
        kind: Kind::Int,
        retain: false,
    },
];

type Fields = Vec<(String, FieldValue)>;

/// `gateway_stats` gathers two places of the line, so it is built last.
#[derive(Default)]
struct GatewayStats {
    fields: Fields,
    seq: Option<i64>,
}

/// A JSON path for error messages, formatted only when an error happens.
#[derive(Clone, Copy)]
struct Path<'a>(&'a str, Option<&'a str>);

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            None => write!(f, "`{}`", self.0),
            Some(child) => write!(f, "`{}.{}`", self.0, child),
        }
    }
}

/// Checks that a raw JSON value is a number and returns its text.
fn number_text<'de, E: de::Error>(raw: &'de RawValue, path: Path<'_>) -> Result<&'de str, E> {
    let text = raw.get();
    let found = match text.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => return Ok(text),
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        _ => "something else",
    };
    Err(E::custom(format_args!(
        "{path}: expected a number, found {found}"
    )))
}

/// The typed field value of a number's text.
fn field_value<E: de::Error>(text: &str, kind: Kind, path: Path<'_>) -> Result<FieldValue, E> {
    match kind {
        Kind::Float => match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(FieldValue::Float(v)),
            _ => Err(E::custom(format_args!(
                "{path}: number {text} out of range"
            ))),
        },
        Kind::Int => int_value(text, path).map(FieldValue::Int),
    }
}

fn int_value<E: de::Error>(text: &str, path: Path<'_>) -> Result<i64, E> {
    if text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return Err(E::custom(format_args!(
            "{path}: expected an integer, found {text}"
        )));
    }
    text.parse::<i64>()
        .map_err(|_| E::custom(format_args!("{path}: integer {text} out of range")))
}

/// The top-level object.
struct TopVisitor<'a> {
    t: &'a JsonTelemetry,
    out: &'a mut Output,
    stats: &'a mut GatewayStats,
}

enum TopKey<'de> {
    Seq,
    Sig,
    Stats,
    Node(Cow<'de, str>),
    Other,
}

struct TopKeySeed;

impl<'de> DeserializeSeed<'de> for TopKeySeed {
    type Value = TopKey<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for TopKeySeed {
    type Value = TopKey<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(match classify_top_key(key) {
            Some(known) => known,
            None if is_node_key(key) => TopKey::Node(Cow::Borrowed(key)),
            None => TopKey::Other,
        })
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        // Only keys with escape sequences get here; rare, so copying is fine.
        Ok(match classify_top_key(key) {
            Some(known) => known,
            None if is_node_key(key) => TopKey::Node(Cow::Owned(key.to_owned())),
            None => TopKey::Other,
        })
    }
}

fn classify_top_key<'de>(key: &str) -> Option<TopKey<'de>> {
    match key {
        "seq" => Some(TopKey::Seq),
        "sig" => Some(TopKey::Sig),
        "stats" => Some(TopKey::Stats),
        _ => None,
    }
}

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object at the top level")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let t = self.t;
        while let Some(key) = map.next_key_seed(TopKeySeed)? {
            match key {
                TopKey::Seq => {
                    if let Some(raw) = map.next_value::<Option<&'de RawValue>>()? {
                        let path = Path("seq", None);
                        let text = number_text(raw, path)?;
                        self.stats.seq = Some(int_value(text, path)?);
                        self.out.publish(
                            Message::new(t.topic("stats", "seq"), text)
                                .qos(t.qos)
                                .retain(false),
                        );
                    }
                }
                TopKey::Sig => {
                    let fields = map.next_value_seed(SectionSeed {
                        t,
                        out: &mut *self.out,
                        key: "sig",
                        level: "signal",
                        metrics: SIGNAL_METRICS,
                    })?;
                    if !fields.is_empty() {
                        self.out.point(Point {
                            measurement: "signal".to_owned(),
                            tags: Vec::new(),
                            fields,
                            timestamp_ns: None,
                        });
                    }
                }
                TopKey::Stats => {
                    let fields = map.next_value_seed(SectionSeed {
                        t,
                        out: &mut *self.out,
                        key: "stats",
                        level: "stats",
                        metrics: STATS_METRICS,
                    })?;
                    self.stats.fields = fields;
                }
                TopKey::Node(key) => {
                    let name = t.node_name(&key);
                    let fields = map.next_value_seed(SectionSeed {
                        t,
                        out: &mut *self.out,
                        key: &key,
                        level: &name,
                        metrics: NODE_METRICS,
                    })?;
                    if !fields.is_empty() {
                        self.out.point(Point {
                            measurement: "environment".to_owned(),
                            tags: vec![("node".to_owned(), name)],
                            fields,
                            timestamp_ns: None,
                        });
                    }
                }
                TopKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A nested object (`n1`, `sig`, `stats`): publishes each known value as it
/// goes and returns the point's fields.
struct SectionSeed<'a> {
    t: &'a JsonTelemetry,
    out: &'a mut Output,
    /// The section's key in the JSON, for error messages.
    key: &'a str,
    /// The topic level for this section.
    level: &'a str,
    metrics: &'static [Metric],
}

impl<'de> DeserializeSeed<'de> for SectionSeed<'_> {
    type Value = Fields;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Fields, D::Error> {
        // `null` is a missing section; anything else must be an object.
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for SectionSeed<'_> {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} to be an object", Path(self.key, None))
    }

    fn visit_none<E: de::Error>(self) -> Result<Fields, E> {
        Ok(Fields::new())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Fields, E> {
        Ok(Fields::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Fields, D::Error> {
        deserializer.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields::with_capacity(self.metrics.len());
        while let Some(index) = map.next_key_seed(MetricKeySeed(self.metrics))? {
            let Some(metric) = index.map(|i| &self.metrics[i]) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let Some(raw) = map.next_value::<Option<&'de RawValue>>()? else {
                continue;
            };
            let path = Path(self.key, Some(metric.json));
            let text = number_text(raw, path)?;
            let value = field_value(text, metric.kind, path)?;
            self.out.publish(
                Message::new(self.t.topic(self.level, metric.name), text)
                    .qos(self.t.qos)
                    .retain(metric.retain),
            );
            fields.push((metric.name.to_owned(), value));
        }
        Ok(fields)
    }
}

/// A key inside a section: the index of the known metric, or `None`.
struct MetricKeySeed(&'static [Metric]);

impl<'de> DeserializeSeed<'de> for MetricKeySeed {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for MetricKeySeed {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|m| m.json == key))
    }
}

#[cfg(test)]
mod tests;
