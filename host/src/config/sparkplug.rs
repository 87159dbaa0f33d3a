//! `[mqtt.sparkplug]`: sluice as a Sparkplug B edge node (see
//! [`crate::sink::sparkplug`]).

use std::num::NonZeroUsize;

use serde::Deserialize;

use crate::model::CompactString;

/// `[mqtt.sparkplug]`: publish the transforms' points as Sparkplug B metrics
/// of edge node `edge_node_id` in group `group_id`, on a connection of its
/// own to the `[mqtt]` broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugConfig {
    /// The Sparkplug group (`spBv1.0/<group_id>/...`).
    pub group_id: String,
    /// The edge node: this host.
    pub edge_node_id: String,
    /// The point tag that names the device a point belongs to (`DBIRTH` /
    /// `DDATA` of `<edge_node_id>/<tag value>`); points without it are the
    /// edge node's own metrics (`NBIRTH` / `NDATA`). Default `node`.
    #[serde(default = "default_device_tag")]
    pub device_tag: String,
    /// How a metric is named: `{measurement}` and `{field}` are replaced,
    /// and `{tag:<key>}` by the point's tag `<key>` (empty without it).
    /// Default `{measurement}/{field}` (a folder per measurement in
    /// Ignition).
    #[serde(default = "default_metric_name")]
    pub metric_name: String,
    /// The primary host application's id: births and data go out only
    /// while `spBv1.0/STATE/<primary_host_id>` says it is online; in
    /// between, data waits and is sent after the next births, flagged
    /// historical. Empty means none (so the id can come from an
    /// environment variable with an empty default).
    #[serde(default)]
    pub primary_host_id: Option<String>,
    /// Where NCMD and DCMD metrics go: each becomes a downlink command on
    /// this topic (`{device}`: the device, or the edge node for NCMD;
    /// `{metric}`: the metric's name), its value as JSON for the payload,
    /// handed to the pipeline whose `[pipeline.downlink] topic` matches.
    /// None: commands other than the rebirth request are counted and
    /// ignored.
    #[serde(default)]
    pub command_topic: Option<String>,
    /// MQTT client id of the edge node's connection. Default: the `[mqtt]`
    /// client id with `-sparkplug` appended.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Points held in memory while the broker or the primary host is away
    /// (without the durable log); a full queue makes the pipelines wait.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: NonZeroUsize,
    /// The durable log's queue `sparkplug` (`[mqtt.sparkplug.outbox]`),
    /// used with `data_dir` when `[mqtt] durable` is on.
    #[serde(default)]
    pub outbox: crate::outbox::OutboxConfig,
}

fn default_device_tag() -> String {
    "node".into()
}
fn default_metric_name() -> String {
    "{measurement}/{field}".into()
}
fn default_queue_capacity() -> NonZeroUsize {
    NonZeroUsize::new(100_000).unwrap_or(NonZeroUsize::MIN)
}

/// Characters a Sparkplug id (group, edge node, device, host) must not
/// contain: they are topic levels.
pub const FORBIDDEN_IN_ID: [char; 3] = ['/', '+', '#'];

impl SparkplugConfig {
    /// Problems with this section, each as `mqtt.sparkplug.<key>: ...`.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut id = |key: &str, value: &str| {
            if value.is_empty() {
                problems.push(format!("mqtt.sparkplug.{key}: must not be empty"));
            } else if value.contains(FORBIDDEN_IN_ID) {
                problems.push(format!(
                    "mqtt.sparkplug.{key}: \"{value}\" is a topic level and must not contain '/', '+' or '#'"
                ));
            }
        };
        id("group_id", &self.group_id);
        id("edge_node_id", &self.edge_node_id);
        if let Some(host) = self.primary_host() {
            id("primary_host_id", host);
        }
        if self.device_tag.is_empty() {
            problems.push("mqtt.sparkplug.device_tag: must not be empty".into());
        }
        if !self.metric_name.contains("{field}") {
            problems.push(format!(
                "mqtt.sparkplug.metric_name: \"{}\" must contain {{field}}, or the fields of a point would share one name",
                self.metric_name
            ));
        }
        if let Some(topic) = &self.command_topic {
            let example = topic
                .replace("{device}", "device")
                .replace("{metric}", "metric");
            if !topic.contains("{metric}") {
                problems.push(format!(
                    "mqtt.sparkplug.command_topic: \"{topic}\" must contain {{metric}}"
                ));
            } else if crate::model::validate_topic(&example).is_err() {
                problems.push(format!(
                    "mqtt.sparkplug.command_topic: \"{topic}\" is not a valid topic"
                ));
            }
        }
        if let Err(problem) = MetricNaming::parse(&self.metric_name) {
            problems.push(format!("mqtt.sparkplug.metric_name: {problem}"));
        }
        problems
    }

    /// The primary host application's id, if one is configured.
    pub fn primary_host(&self) -> Option<&str> {
        self.primary_host_id.as_deref().filter(|id| !id.is_empty())
    }

    /// The client id of the edge node's connection.
    pub fn effective_client_id(&self, mqtt_client_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("{mqtt_client_id}-sparkplug"))
    }
}

/// A parsed `metric_name` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricNaming(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Measurement,
    Field,
    Tag(String),
}

impl MetricNaming {
    /// Parses a template: text with `{measurement}`, `{field}` and
    /// `{tag:<key>}`; `{{` and `}}` are literal braces.
    pub fn parse(template: &str) -> Result<MetricNaming, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while let Some(c) = rest.chars().next() {
            if rest.starts_with("{{") || rest.starts_with("}}") {
                text.push(c);
                rest = &rest[2..];
                continue;
            }
            if c == '}' {
                return Err(format!("unmatched '}}' in \"{template}\""));
            }
            if c != '{' {
                text.push(c);
                rest = &rest[c.len_utf8()..];
                continue;
            }
            let Some(end) = rest.find('}') else {
                return Err(format!("unclosed '{{' in \"{template}\""));
            };
            let piece = match &rest[1..end] {
                "measurement" => Piece::Measurement,
                "field" => Piece::Field,
                name => match name.strip_prefix("tag:") {
                    Some(key) if !key.is_empty() => Piece::Tag(key.to_owned()),
                    _ => {
                        return Err(format!(
                            "unknown placeholder {{{name}}}: use {{measurement}}, {{field}} or {{tag:<key>}}"
                        ));
                    }
                },
            };
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(piece);
            rest = &rest[end + 1..];
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(MetricNaming(pieces))
    }

    /// The metric name of `field` of a point.
    pub fn name(
        &self,
        measurement: &str,
        tags: &[(CompactString, CompactString)],
        field: &str,
    ) -> String {
        let mut name = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => name.push_str(text),
                Piece::Measurement => name.push_str(measurement),
                Piece::Field => name.push_str(field),
                Piece::Tag(key) => {
                    if let Some((_, value)) = tags.iter().find(|(k, _)| k == key) {
                        name.push_str(value);
                    }
                }
            }
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_names_metrics_from_measurement_field_and_tags() {
        let tags = vec![("node".into(), "node1".into())];
        let naming = MetricNaming::parse("{measurement}/{field}").expect("parses");
        assert_eq!(
            naming.name("environment", &tags, "temperature"),
            "environment/temperature"
        );
        let naming = MetricNaming::parse("{tag:node} {{x}}: {field}").expect("parses");
        assert_eq!(naming.name("m", &tags, "t"), "node1 {x}: t");
        assert_eq!(naming.name("m", &[], "t"), " {x}: t");
    }

    #[test]
    fn a_bad_template_says_what_is_wrong() {
        for (template, says) in [
            ("{measurement", "unclosed"),
            ("{field}}", "unmatched"),
            ("{device}/{field}", "unknown placeholder {device}"),
            ("{tag:}/{field}", "unknown placeholder {tag:}"),
        ] {
            let error = MetricNaming::parse(template).expect_err(template);
            assert!(error.contains(says), "{template}: {error}");
        }
    }
}
