//! The edge node's Sparkplug state and the messages that follow from it.
//!
//! What was born (each device's metrics: name, alias, type, last value),
//! the message sequence number `seq` and the session's `bdSeq`. Given a
//! run of points it says what to publish, in order: data messages by
//! alias, and before any metric the host application has not seen (or
//! whose type changed) the birth that declares it — a DBIRTH for a
//! device's metric, a whole rebirth (NBIRTH and every DBIRTH) for the edge
//! node's own. Pure, no I/O: the session task ([`super::session`]) decides
//! when, this decides what.

use std::collections::HashMap;

use prost::Message as _;

use super::proto::{DataType, Metric, Payload, Value};
use crate::config::sparkplug::{FORBIDDEN_IN_ID, MetricNaming, SparkplugConfig};
use crate::model::{CompactString, FieldValue, Point};

/// The namespace of Sparkplug B topics.
pub const NAMESPACE: &str = "spBv1.0";
/// The edge node metric a host application sets to ask for the births.
pub const REBIRTH: &str = "Node Control/Rebirth";
/// The metric that ties an NBIRTH to its NDEATH.
pub const BD_SEQ: &str = "bdSeq";
/// Most metrics in one data message.
const MAX_METRICS_PER_MESSAGE: usize = 256;
/// Points share a data message while it stays below this many bytes (well
/// below the default `mqtt.max_payload_bytes`).
const MAX_SHARED_MESSAGE_BYTES: usize = 64 << 10;
/// Devices and metrics the node keeps (births carry them all): a transform
/// that names a new device or metric in every frame must not grow the host
/// or its births without bound. What goes over is refused and counted.
const MAX_DEVICES: usize = 1_000;
const MAX_METRICS: usize = 10_000;

/// A message to publish (QoS 0, not retained, as Sparkplug wants births and
/// data).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Its topic.
    pub topic: String,
    /// The encoded [`Payload`].
    pub payload: Vec<u8>,
}

/// One point to publish, and whether it is sent later than it was made
/// (store and forward: `is_historical`).
pub struct Sample<'a> {
    /// The point.
    pub point: &'a Point,
    /// Flag its metrics historical.
    pub historical: bool,
}

/// The edge node.
pub struct EdgeNode {
    group_id: String,
    edge_node_id: String,
    device_tag: String,
    naming: MetricNaming,
    bd_seq: u64,
    seq: u8,
    next_alias: u64,
    /// The edge node's own metrics (points without the device tag).
    node: MetricSet,
    /// Devices in the order they appeared (births in that order).
    devices: Vec<(String, MetricSet)>,
    /// Metrics known, all devices and the node together.
    metric_count: usize,
    /// Values refused since [`EdgeNode::take_refused`] (over the limits).
    refused: u64,
}

#[derive(Default)]
struct MetricSet {
    metrics: Vec<Known>,
    by_name: HashMap<String, usize>,
}

struct Known {
    name: String,
    alias: u64,
    datatype: DataType,
    value: Value,
    timestamp: u64,
    historical: bool,
}

/// Which part of the edge node a point belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    Node,
    Device(usize),
}

/// A data message being filled.
struct Pending {
    target: Target,
    metrics: Vec<Metric>,
    /// The metrics' encoded size.
    bytes: usize,
}

impl EdgeNode {
    /// An edge node with nothing born yet.
    pub fn new(config: &SparkplugConfig) -> Result<EdgeNode, String> {
        Ok(EdgeNode {
            group_id: config.group_id.clone(),
            edge_node_id: config.edge_node_id.clone(),
            device_tag: config.device_tag.clone(),
            naming: MetricNaming::parse(&config.metric_name)?,
            bd_seq: 0,
            seq: 0,
            // Alias 0 is left unused: some hosts read 0 as "no alias".
            next_alias: 1,
            node: MetricSet::default(),
            devices: Vec::new(),
            metric_count: 0,
            refused: 0,
        })
    }

    /// The session's birth/death sequence number (0–255), in the next
    /// NBIRTH and the NDEATH.
    pub fn set_bd_seq(&mut self, bd_seq: u8) {
        self.bd_seq = u64::from(bd_seq);
    }

    /// `spBv1.0/<group>/<kind>/<edge node>`.
    pub fn node_topic(&self, kind: &str) -> String {
        format!("{NAMESPACE}/{}/{kind}/{}", self.group_id, self.edge_node_id)
    }

    fn device_topic(&self, kind: &str, device: &str) -> String {
        format!(
            "{NAMESPACE}/{}/{kind}/{}/{device}",
            self.group_id, self.edge_node_id
        )
    }

    /// The NDEATH payload (the MQTT will, and what a clean stop publishes).
    pub fn death(&self) -> Vec<u8> {
        Payload {
            timestamp: Some(now_ms()),
            metrics: vec![bd_seq_metric(self.bd_seq)],
            seq: None,
        }
        .encode_to_vec()
    }

    /// The births: NBIRTH (`seq` 0, `bdSeq`, the rebirth control, the edge
    /// node's metrics) and a DBIRTH for every device, each with every
    /// metric's last value.
    pub fn births(&mut self) -> Vec<Outgoing> {
        self.seq = 0;
        let now = now_ms();
        let mut metrics = vec![
            bd_seq_metric(self.bd_seq),
            Metric {
                name: Some(REBIRTH.into()),
                timestamp: Some(now),
                datatype: Some(DataType::Boolean as u32),
                value: Some(Value::Boolean(false)),
                ..Metric::default()
            },
        ];
        metrics.extend(self.node.metrics.iter().map(Known::birth));
        let mut out = vec![Outgoing {
            topic: self.node_topic("NBIRTH"),
            payload: self.payload(now, metrics),
        }];
        for index in 0..self.devices.len() {
            if !self.devices[index].1.metrics.is_empty() {
                out.push(self.device_birth(index, now));
            }
        }
        out
    }

    /// Values refused for the limits on devices and metrics since the last
    /// call.
    pub fn take_refused(&mut self) -> u64 {
        std::mem::take(&mut self.refused)
    }

    fn device_birth(&mut self, index: usize, now: u64) -> Outgoing {
        let (device, set) = &self.devices[index];
        let topic = self.device_topic("DBIRTH", device);
        let metrics = set.metrics.iter().map(Known::birth).collect();
        Outgoing {
            topic,
            payload: self.payload(now, metrics),
        }
    }

    fn payload(&mut self, now: u64, metrics: Vec<Metric>) -> Vec<u8> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        Payload {
            timestamp: Some(now),
            metrics,
            seq: Some(u64::from(seq)),
        }
        .encode_to_vec()
    }

    /// The messages that publish `samples`, in order. The births come
    /// first: a DBIRTH for each device with a metric the host application
    /// has not seen (or whose type changed), a whole rebirth (NBIRTH and
    /// every DBIRTH) if the edge node itself has one. A birth carries the
    /// value that made it, which no data message repeats. Data goes by
    /// alias; consecutive points of one device share a message while no
    /// metric repeats. A metric that changes its type within `samples`
    /// splits them, so each value goes out under the type it has.
    pub fn publish<'a>(&mut self, samples: impl IntoIterator<Item = Sample<'a>>) -> Vec<Outgoing> {
        let samples: Vec<Sample<'a>> = samples.into_iter().collect();
        let names: Vec<Vec<String>> = samples
            .iter()
            .map(|sample| {
                let point = sample.point;
                let name = |field: &CompactString| {
                    self.naming.name(&point.measurement, &point.tags, field)
                };
                point.fields.iter().map(|(field, _)| name(field)).collect()
            })
            .collect();
        let mut out = Vec::new();
        let mut start = 0;
        while start < samples.len() {
            let end = start + self.run_length(&samples[start..], &names[start..]);
            self.publish_run(&samples[start..end], &names[start..end], &mut out);
            start = end;
        }
        out
    }

    /// How many of `samples` (at least one) use each metric under one type.
    fn run_length(&mut self, samples: &[Sample<'_>], names: &[Vec<String>]) -> usize {
        let mut types: HashMap<(Target, &str), DataType> = HashMap::new();
        for (index, (sample, names)) in samples.iter().zip(names).enumerate() {
            let Some(target) = self.target_of(sample.point) else {
                continue;
            };
            for ((_, value), name) in sample.point.fields.iter().zip(names) {
                let datatype = typed(value).0;
                match types.entry((target.clone(), name.as_str())) {
                    std::collections::hash_map::Entry::Occupied(seen) => {
                        if *seen.get() != datatype && index > 0 {
                            return index;
                        }
                    }
                    std::collections::hash_map::Entry::Vacant(new) => {
                        new.insert(datatype);
                    }
                }
            }
        }
        samples.len()
    }

    fn publish_run(
        &mut self,
        samples: &[Sample<'_>],
        names: &[Vec<String>],
        out: &mut Vec<Outgoing>,
    ) {
        let now = now_ms();
        // Births: what is new or changed its type, with the value that did.
        // For the rest, which metric each value is data of.
        let mut data_of: Vec<(Option<Target>, Vec<Option<usize>>)> = Vec::new();
        let mut node_born = false;
        let mut devices_born = Vec::new();
        for (sample, names) in samples.iter().zip(names) {
            let Some(target) = self.target_of(sample.point) else {
                self.refused += sample.point.fields.len() as u64;
                data_of.push((None, Vec::new()));
                continue;
            };
            let timestamp = timestamp_ms(sample.point, now);
            let known_metrics = self.metric_count;
            let (set, next_alias) = self.parts(&target);
            let (mut added, mut refused) = (0, 0);
            let mut metrics = Vec::with_capacity(names.len());
            for ((_, value), name) in sample.point.fields.iter().zip(names) {
                let (datatype, value) = typed(value);
                match set.by_name.get(name.as_str()) {
                    Some(&index) if set.metrics[index].datatype == datatype => {
                        metrics.push(Some(index));
                        continue;
                    }
                    Some(&index) => {
                        let known = &mut set.metrics[index];
                        known.datatype = datatype;
                        known.value = value;
                        known.timestamp = timestamp;
                        known.historical = sample.historical;
                    }
                    None if known_metrics + added >= MAX_METRICS => {
                        refused += 1;
                        metrics.push(None);
                        continue;
                    }
                    None => {
                        added += 1;
                        set.by_name.insert(name.clone(), set.metrics.len());
                        set.metrics.push(Known {
                            name: name.clone(),
                            alias: *next_alias,
                            datatype,
                            value,
                            timestamp,
                            historical: sample.historical,
                        });
                        *next_alias += 1;
                    }
                }
                // In the birth.
                metrics.push(None);
                match target {
                    Target::Node => node_born = true,
                    Target::Device(device) if !devices_born.contains(&device) => {
                        devices_born.push(device)
                    }
                    Target::Device(_) => {}
                }
            }
            self.metric_count += added;
            self.refused += refused;
            data_of.push((Some(target), metrics));
        }
        if node_born {
            out.extend(self.births());
        } else {
            for device in devices_born {
                out.push(self.device_birth(device, now));
            }
        }
        // Data.
        let mut pending: Option<Pending> = None;
        for (sample, (target, metrics)) in samples.iter().zip(data_of) {
            let Some(target) = target else {
                continue;
            };
            let timestamp = timestamp_ms(sample.point, now);
            let (set, _) = self.parts(&target);
            let mut data = Vec::with_capacity(metrics.len());
            for ((_, value), index) in sample.point.fields.iter().zip(metrics) {
                let Some(index) = index else {
                    continue;
                };
                let known = &mut set.metrics[index];
                known.value = typed(value).1;
                known.timestamp = timestamp;
                known.historical = sample.historical;
                data.push(known.data());
            }
            if data.is_empty() {
                continue;
            }
            let bytes: usize = data.iter().map(|m| m.encoded_len() + 4).sum();
            let fits = pending.as_ref().is_some_and(|p| {
                p.target == target
                    && p.metrics.len() + data.len() <= MAX_METRICS_PER_MESSAGE
                    && p.bytes + bytes <= MAX_SHARED_MESSAGE_BYTES
                    && !data
                        .iter()
                        .any(|m| p.metrics.iter().any(|q| q.alias == m.alias))
            });
            if !fits && let Some(message) = pending.take() {
                out.push(self.data_message(message, now));
            }
            match &mut pending {
                Some(message) => {
                    message.metrics.extend(data);
                    message.bytes += bytes;
                }
                None => {
                    pending = Some(Pending {
                        target,
                        metrics: data,
                        bytes,
                    })
                }
            }
        }
        if let Some(message) = pending {
            out.push(self.data_message(message, now));
        }
    }

    fn data_message(&mut self, message: Pending, now: u64) -> Outgoing {
        let topic = match message.target {
            Target::Node => self.node_topic("NDATA"),
            Target::Device(index) => self.device_topic("DDATA", &self.devices[index].0),
        };
        Outgoing {
            topic,
            payload: self.payload(now, message.metrics),
        }
    }

    /// The metrics of `target` and the alias counter, at once.
    fn parts(&mut self, target: &Target) -> (&mut MetricSet, &mut u64) {
        let set = match target {
            Target::Node => &mut self.node,
            Target::Device(device) => &mut self.devices[*device].1,
        };
        (set, &mut self.next_alias)
    }

    /// A metric this node declared, by name or alias: its name and type.
    /// `device` `None` is the edge node itself.
    pub fn declared(
        &self,
        device: Option<&str>,
        name: Option<&str>,
        alias: Option<u64>,
    ) -> Option<(String, DataType)> {
        let set = match device {
            None => &self.node,
            Some(device) => &self.devices.iter().find(|(d, _)| d == device)?.1,
        };
        let known = match name {
            Some(name) => &set.metrics[*set.by_name.get(name)?],
            None => set.metrics.iter().find(|m| Some(m.alias) == alias)?,
        };
        Some((known.name.clone(), known.datatype))
    }

    /// The edge node's id.
    pub fn edge_node_id(&self) -> &str {
        &self.edge_node_id
    }

    /// The device a point belongs to (created on first sight), or the node;
    /// none for a new device over [`MAX_DEVICES`].
    fn target_of(&mut self, point: &Point) -> Option<Target> {
        let Some((_, value)) = point
            .tags
            .iter()
            .find(|(key, value)| *key == self.device_tag && !value.is_empty())
        else {
            return Some(Target::Node);
        };
        let device = device_id(value);
        match self.devices.iter().position(|(d, _)| *d == device) {
            Some(index) => Some(Target::Device(index)),
            None if self.devices.len() >= MAX_DEVICES => None,
            None => {
                self.devices.push((device, MetricSet::default()));
                Some(Target::Device(self.devices.len() - 1))
            }
        }
    }
}

impl Known {
    fn birth(&self) -> Metric {
        Metric {
            name: Some(self.name.clone()),
            ..self.data()
        }
    }

    fn data(&self) -> Metric {
        Metric {
            name: None,
            alias: Some(self.alias),
            timestamp: Some(self.timestamp),
            datatype: Some(self.datatype as u32),
            is_historical: self.historical.then_some(true),
            is_transient: None,
            is_null: None,
            value: Some(self.value.clone()),
        }
    }
}

fn bd_seq_metric(bd_seq: u64) -> Metric {
    Metric {
        name: Some(BD_SEQ.into()),
        timestamp: Some(now_ms()),
        datatype: Some(DataType::Int64 as u32),
        value: Some(Value::Long(bd_seq)),
        ..Metric::default()
    }
}

/// A field's Sparkplug type and value: float → Double, int → Int64 (two's
/// complement in the 64 bits of `long_value`), uint → UInt64, bool →
/// Boolean, text → String.
fn typed(value: &FieldValue) -> (DataType, Value) {
    match value {
        FieldValue::Float(v) => (DataType::Double, Value::Double(*v)),
        FieldValue::Int(v) => (DataType::Int64, Value::Long(*v as u64)),
        FieldValue::UInt(v) => (DataType::UInt64, Value::Long(*v)),
        FieldValue::Bool(v) => (DataType::Boolean, Value::Boolean(*v)),
        FieldValue::Text(v) => (DataType::String, Value::String(v.to_string())),
    }
}

/// A tag value as a device id: the characters that are topic syntax
/// (`/`, `+`, `#`) become `_`.
fn device_id(value: &str) -> String {
    value.replace(FORBIDDEN_IN_ID, "_")
}

/// A point's time in ms since the epoch (`now` if it has none).
fn timestamp_ms(point: &Point, now: u64) -> u64 {
    point
        .timestamp_ns
        .and_then(|ns| u64::try_from(ns / 1_000_000).ok())
        .unwrap_or(now)
}

fn now_ms() -> u64 {
    crate::model::now_ns() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SparkplugConfig {
        toml::from_str(
            r#"
            group_id = "plant"
            edge_node_id = "gw"
            "#,
        )
        .expect("config")
    }

    fn point(node: Option<&str>, fields: &[(&str, FieldValue)], ms: i64) -> Point {
        Point {
            measurement: "environment".into(),
            tags: node
                .map(|n| vec![("node".into(), n.into())])
                .unwrap_or_default(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).into(), v.clone()))
                .collect(),
            timestamp_ns: Some(ms * 1_000_000),
        }
    }

    fn live(points: &[Point]) -> Vec<Sample<'_>> {
        points
            .iter()
            .map(|point| Sample {
                point,
                historical: false,
            })
            .collect()
    }

    fn decode(out: &Outgoing) -> Payload {
        Payload::decode(out.payload.as_slice()).expect("decodes")
    }

    fn kinds(out: &[Outgoing]) -> Vec<&str> {
        out.iter()
            .map(|o| o.topic.split('/').nth(2).expect("kind"))
            .collect()
    }

    #[test]
    fn births_declare_bd_seq_and_rebirth_then_data_uses_aliases() {
        let mut node = EdgeNode::new(&config()).expect("node");
        node.set_bd_seq(7);
        let births = node.births();
        assert_eq!(kinds(&births), ["NBIRTH"]);
        assert_eq!(births[0].topic, "spBv1.0/plant/NBIRTH/gw");
        let nbirth = decode(&births[0]);
        assert_eq!(nbirth.seq, Some(0));
        let names: Vec<_> = nbirth.metrics.iter().map(|m| m.name.as_deref()).collect();
        assert_eq!(names, [Some(BD_SEQ), Some(REBIRTH)]);
        assert_eq!(nbirth.metrics[0].value, Some(Value::Long(7)));

        let t = FieldValue::Float(27.5);
        let first = [point(Some("n1"), &[("t", t.clone())], 1000)];
        let out = node.publish(live(&first));
        assert_eq!(
            kinds(&out),
            ["DBIRTH"],
            "a new metric is born, not sent as data"
        );
        assert_eq!(out[0].topic, "spBv1.0/plant/DBIRTH/gw/n1");
        let dbirth = decode(&out[0]);
        assert_eq!(dbirth.seq, Some(1));
        let metric = &dbirth.metrics[0];
        assert_eq!(metric.name.as_deref(), Some("environment/t"));
        assert_eq!(metric.datatype, Some(DataType::Double as u32));
        assert_eq!(metric.value, Some(Value::Double(27.5)));
        assert_eq!(metric.timestamp, Some(1000));
        let alias = metric.alias.expect("alias");

        let second = [point(Some("n1"), &[("t", FieldValue::Float(28.0))], 2000)];
        let out = node.publish(live(&second));
        assert_eq!(kinds(&out), ["DDATA"]);
        let ddata = decode(&out[0]);
        assert_eq!(ddata.seq, Some(2));
        assert_eq!(ddata.metrics[0].name, None);
        assert_eq!(ddata.metrics[0].alias, Some(alias));
        assert_eq!(ddata.metrics[0].value, Some(Value::Double(28.0)));
    }

    #[test]
    fn a_type_change_rebirths_the_device_and_a_new_node_metric_rebirths_everything() {
        let mut node = EdgeNode::new(&config()).expect("node");
        node.births();
        let p = [point(Some("n1"), &[("t", FieldValue::Float(1.0))], 1)];
        node.publish(live(&p));
        let p = [point(Some("n1"), &[("t", FieldValue::Int(-3))], 2)];
        let out = node.publish(live(&p));
        assert_eq!(kinds(&out), ["DBIRTH"]);
        let metric = &decode(&out[0]).metrics[0];
        assert_eq!(metric.datatype, Some(DataType::Int64 as u32));
        assert_eq!(metric.value, Some(Value::Long((-3i64) as u64)));

        let p = [point(None, &[("rssi", FieldValue::Int(-40))], 3)];
        let out = node.publish(live(&p));
        assert_eq!(kinds(&out), ["NBIRTH", "DBIRTH"]);
        assert_eq!(decode(&out[0]).seq, Some(0), "a rebirth starts at seq 0");
        assert_eq!(decode(&out[1]).seq, Some(1));
        let names: Vec<_> = decode(&out[0])
            .metrics
            .iter()
            .map(|m| m.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, [BD_SEQ, REBIRTH, "environment/rssi"]);
    }

    #[test]
    fn points_of_one_device_share_a_message_until_a_metric_repeats() {
        let mut node = EdgeNode::new(&config()).expect("node");
        node.births();
        let birth = [
            point(Some("n1"), &[("t", FieldValue::Float(1.0))], 1),
            point(Some("n1"), &[("h", FieldValue::Float(1.0))], 1),
        ];
        node.publish(live(&birth));
        let points = [
            point(Some("n1"), &[("t", FieldValue::Float(2.0))], 2),
            point(Some("n1"), &[("h", FieldValue::Float(2.0))], 2),
            point(Some("n1"), &[("t", FieldValue::Float(3.0))], 3),
        ];
        let out = node.publish(live(&points));
        assert_eq!(kinds(&out), ["DDATA", "DDATA"]);
        assert_eq!(decode(&out[0]).metrics.len(), 2);
        assert_eq!(decode(&out[1]).metrics.len(), 1);
        let seqs: Vec<_> = out.iter().map(|o| decode(o).seq).collect();
        assert_eq!(
            seqs,
            [Some(2), Some(3)],
            "NBIRTH 0, one DBIRTH for both new metrics 1"
        );
    }

    #[test]
    fn historical_samples_are_flagged_and_seq_wraps_after_255() {
        let mut node = EdgeNode::new(&config()).expect("node");
        node.births();
        let p = [point(None, &[("x", FieldValue::Bool(true))], 1)];
        node.publish(live(&p));
        let mut last = None;
        for i in 0..300 {
            let p = [point(None, &[("x", FieldValue::Bool(i % 2 == 0))], 2 + i)];
            let out = node.publish([Sample {
                point: &p[0],
                historical: true,
            }]);
            let payload = decode(&out[0]);
            assert_eq!(payload.metrics[0].is_historical, Some(true));
            let seq = payload.seq.expect("seq");
            if let Some(last) = last {
                assert_eq!(seq, (last + 1) % 256);
            }
            last = Some(seq);
        }
    }

    #[test]
    fn a_batch_is_born_once_and_a_type_change_inside_it_splits_it() {
        let mut node = EdgeNode::new(&config()).expect("node");
        node.births();
        let points = [
            point(Some("n1"), &[("t", FieldValue::Float(1.0))], 1),
            point(Some("n2"), &[("t", FieldValue::Float(2.0))], 1),
            point(None, &[("rssi", FieldValue::Int(-40))], 1),
            point(Some("n1"), &[("t", FieldValue::Float(3.0))], 2),
            point(Some("n1"), &[("t", FieldValue::Text("off".into()))], 3),
        ];
        let out = node.publish(live(&points));
        // One rebirth for everything new, data for what the births did not
        // carry, then a DBIRTH for the new type of n1's `t`, which carries
        // the text.
        assert_eq!(
            kinds(&out),
            ["NBIRTH", "DBIRTH", "DBIRTH", "DDATA", "DBIRTH"]
        );
        let ddata = decode(&out[3]);
        assert_eq!(ddata.metrics[0].value, Some(Value::Double(3.0)));
        let dbirth = decode(&out[4]);
        assert_eq!(dbirth.metrics[0].datatype, Some(DataType::String as u32));
        assert_eq!(dbirth.metrics[0].value, Some(Value::String("off".into())));
        let seqs: Vec<_> = out.iter().map(|o| decode(o).seq.expect("seq")).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn devices_and_metrics_beyond_the_limits_are_refused_and_counted() {
        let mut node = EdgeNode::new(&config()).expect("node");
        node.births();
        let many: Vec<Point> = (0..MAX_DEVICES + 5)
            .map(|i| point(Some(&format!("d{i}")), &[("t", FieldValue::Float(1.0))], 1))
            .collect();
        let out = node.publish(live(&many));
        assert_eq!(
            out.len(),
            MAX_DEVICES,
            "a DBIRTH per device within the limit"
        );
        assert_eq!(node.take_refused(), 5);
        assert_eq!(node.take_refused(), 0, "taken");
        let wide = point(
            None,
            &(0..MAX_METRICS)
                .map(|i| (format!("f{i}"), FieldValue::Int(1)))
                .collect::<Vec<_>>()
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect::<Vec<_>>(),
            2,
        );
        node.publish(live(std::slice::from_ref(&wide)));
        assert_eq!(
            node.take_refused(),
            MAX_DEVICES as u64,
            "metrics over the limit"
        );
        let births = node.births();
        assert_eq!(births.len(), 1 + MAX_DEVICES);
    }

    #[test]
    fn device_ids_lose_topic_syntax() {
        let mut node = EdgeNode::new(&config()).expect("node");
        node.births();
        let p = [point(Some("a/b+#"), &[("t", FieldValue::Float(1.0))], 1)];
        let out = node.publish(live(&p));
        assert_eq!(out[0].topic, "spBv1.0/plant/DBIRTH/gw/a_b__");
    }
}
