//! Host metrics (Prometheus data model, `prometheus-client`).
//!
//! Invariant: every item that leaves the system other than by delivery moves
//! a `*_dropped_total{reason}` counter. Labels are pipeline/sink and reason,
//! never topic (unbounded cardinality).
//!
//! Hot-path counters are resolved once per pipeline ([`PipelineMetrics`]);
//! a `prometheus_client` counter handle is an `Arc` to one atomic, so
//! incrementing it costs one atomic add, no label lookup.

pub mod modbus;
pub mod serial;
pub mod sparkplug;

use std::borrow::Cow;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::model::{InvalidOutput, Sink};
use crate::sync::lock;
use sluice_framing::FramingDrop;

/// `{pipeline}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabel {
    /// Pipeline name.
    pub pipeline: String,
}

/// `{pipeline, reason}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// Pipeline name.
    pub pipeline: String,
    /// Stable reason label.
    pub reason: String,
}

/// `{sink, reason}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkDropLabel {
    /// Sink name (`mqtt`, `influx`).
    pub sink: &'static str,
    /// Stable reason label.
    pub reason: Cow<'static, str>,
}

/// `{sink}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    /// Sink name (`mqtt`, `influx`).
    pub sink: String,
}

/// All metric families of one host.
pub struct Metrics {
    registry: Mutex<Registry>,
    frames_received: Family<PipelineLabel, Counter>,
    frames_dropped: Family<DropLabel, Counter>,
    messages_emitted: Family<PipelineLabel, Counter>,
    points_emitted: Family<PipelineLabel, Counter>,
    outputs_dropped: Family<DropLabel, Counter>,
    transform_seconds: Family<PipelineLabel, Histogram>,
    /// Hot swap: deploys by outcome, swap pauses, quarantines.
    hotswap: HotswapMetrics,
    /// Messages handed to the MQTT client.
    pub mqtt_queued: Counter,
    /// Messages confirmed: PubAck (QoS 1), PubComp (QoS 2), or written (QoS 0).
    pub mqtt_delivered: Counter,
    /// Connection attempts that failed and established connections that broke.
    pub mqtt_connection_errors: Counter,
    /// Messages sent again after a reconnect (possible duplicates at subscribers).
    pub mqtt_retransmitted: Counter,
    /// MQTT dead letters that could not be written to their file.
    pub mqtt_dead_letter_write_failures: Counter,
    /// Messages waiting in the host's MQTT queue.
    pub mqtt_backlog: Gauge,
    /// 1 while connected to the broker.
    pub mqtt_connected: Gauge,
    sink_dropped: Family<SinkDropLabel, Counter>,
    /// Items in a sink's durable outbox (not yet confirmed), by sink.
    outbox_items: Family<SinkLabel, Gauge>,
    /// Bytes counted against a sink's outbox bound, by sink.
    outbox_bytes: Family<SinkLabel, Gauge>,
    /// Output accepted by a sink (appended to its outbox, or queued in
    /// memory without one) → confirmed by the broker/database, by sink; see
    /// [`Metrics::end_to_end`].
    end_to_end_seconds: Family<SinkLabel, Histogram>,
    /// The InfluxDB writer (`sluice_influx_*`).
    pub influx: InfluxMetrics,
    /// Serial ports, downlink and capture (`source::serial::metrics`).
    serial: serial::SerialFamilies,
    /// Modbus pollers.
    modbus: modbus::ModbusFamilies,
    /// The Sparkplug B edge node (`sluice_sparkplug_*`).
    pub sparkplug: sparkplug::SparkplugMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let frames_received = Family::<PipelineLabel, Counter>::default();
        let frames_dropped = Family::<DropLabel, Counter>::default();
        let messages_emitted = Family::<PipelineLabel, Counter>::default();
        let points_emitted = Family::<PipelineLabel, Counter>::default();
        let outputs_dropped = Family::<DropLabel, Counter>::default();
        let transform_seconds = Family::<PipelineLabel, Histogram>::new_with_constructor(|| {
            // 1 µs .. ~4 s
            Histogram::new(exponential_buckets(1e-6, 4.0, 12))
        });
        let sink_dropped = Family::<SinkDropLabel, Counter>::default();
        let end_to_end_seconds = Family::<SinkLabel, Histogram>::new_with_constructor(|| {
            // 100 µs .. ~7 min
            Histogram::new(exponential_buckets(1e-4, 4.0, 12))
        });
        let mqtt_queued = Counter::default();
        let mqtt_delivered = Counter::default();
        let mqtt_connection_errors = Counter::default();
        let mqtt_retransmitted = Counter::default();
        let mqtt_dead_letter_write_failures = Counter::default();
        let mqtt_backlog = Gauge::default();
        let mqtt_connected = Gauge::default();
        registry.register(
            "frames_received",
            "Frames read from sources",
            frames_received.clone(),
        );
        registry.register(
            "frames_dropped",
            "Frames that produced no output, by reason (decode errors, traps, framing)",
            frames_dropped.clone(),
        );
        registry.register(
            "messages_emitted",
            "Valid MQTT messages produced by transforms",
            messages_emitted.clone(),
        );
        registry.register(
            "points_emitted",
            "Valid points produced by transforms",
            points_emitted.clone(),
        );
        registry.register(
            "outputs_dropped",
            "Messages and points refused by host validation, by reason",
            outputs_dropped.clone(),
        );
        registry.register(
            "transform_call_seconds",
            "Wall time of one transform call",
            transform_seconds.clone(),
        );
        registry.register(
            "mqtt_queued",
            "Messages handed to the MQTT client",
            mqtt_queued.clone(),
        );
        registry.register(
            "mqtt_delivered",
            "Messages confirmed by the broker (PubAck/PubComp; QoS 0 when written)",
            mqtt_delivered.clone(),
        );
        registry.register(
            "mqtt_connection_errors",
            "Failed MQTT connection attempts and broken connections",
            mqtt_connection_errors.clone(),
        );
        registry.register(
            "mqtt_retransmitted",
            "MQTT messages sent again after a reconnect (possible duplicates)",
            mqtt_retransmitted.clone(),
        );
        registry.register(
            "mqtt_dead_letter_write_failures",
            "MQTT dead letters that could not be written to their file (counted, lost)",
            mqtt_dead_letter_write_failures.clone(),
        );
        registry.register(
            "mqtt_backlog",
            "Messages waiting in the host's MQTT queue",
            mqtt_backlog.clone(),
        );
        registry.register(
            "mqtt_connected",
            "1 while connected to the MQTT broker",
            mqtt_connected.clone(),
        );
        registry.register(
            "sink_dropped",
            "Items a sink gave up on, by reason",
            sink_dropped.clone(),
        );
        let outbox_items = Family::<SinkLabel, Gauge>::default();
        let outbox_bytes = Family::<SinkLabel, Gauge>::default();
        registry.register(
            "outbox_items",
            "Items in the sink's durable outbox, not yet confirmed by the sink",
            outbox_items.clone(),
        );
        registry.register(
            "outbox_bytes",
            "Bytes counted against the sink's outbox bound (max_bytes)",
            outbox_bytes.clone(),
        );
        registry.register(
            "end_to_end_seconds",
            "Time from an output entering a sink (its durable outbox, or its in-memory queue) to its confirmation by the broker or database, outages included",
            end_to_end_seconds.clone(),
        );
        let influx = InfluxMetrics::register(&mut registry);
        let serial = serial::SerialFamilies::register(&mut registry);
        let modbus = modbus::ModbusFamilies::register(&mut registry);
        let hotswap = HotswapMetrics::register(&mut registry);
        let sparkplug = sparkplug::SparkplugMetrics::register(&mut registry);
        crate::cpus::packing::register(&mut registry);
        Self {
            sparkplug,
            hotswap,
            registry: Mutex::new(registry),
            frames_received,
            frames_dropped,
            messages_emitted,
            points_emitted,
            outputs_dropped,
            transform_seconds,
            mqtt_queued,
            mqtt_delivered,
            mqtt_connection_errors,
            mqtt_retransmitted,
            mqtt_dead_letter_write_failures,
            mqtt_backlog,
            mqtt_connected,
            sink_dropped,
            outbox_items,
            outbox_bytes,
            end_to_end_seconds,
            influx,
            serial,
            modbus,
        }
    }

    /// The delivery latency histogram of `sink` (output accepted → confirmed;
    /// the transform call before it is `transform_seconds`); resolve once,
    /// then [`Metrics::observe_since`] per confirmation.
    pub fn end_to_end(&self, sink: &str) -> Histogram {
        self.end_to_end_seconds
            .get_or_create(&SinkLabel {
                sink: sink.to_owned(),
            })
            .clone()
    }

    /// Observes the seconds from `since_ns` (ns since the Unix epoch) to now
    /// in `histogram`; a clock that went backwards counts as 0.
    pub fn observe_since(histogram: &Histogram, since_ns: u64) {
        let elapsed = crate::model::now_ns().saturating_sub(since_ns);
        histogram.observe(elapsed as f64 / 1e9);
    }

    /// Pre-resolved serial, downlink and capture counters for one pipeline.
    pub fn serial(&self, pipeline: &str) -> serial::SerialMetrics {
        self.serial.pipeline(pipeline)
    }

    /// The Modbus counters of one pipeline.
    pub fn modbus(&self, pipeline: &str) -> modbus::ModbusMetrics {
        self.modbus.pipeline(pipeline)
    }

    /// Pre-resolved counters for one pipeline.
    pub fn pipeline(&self, name: &str) -> PipelineMetrics {
        let label = PipelineLabel {
            pipeline: name.to_owned(),
        };
        PipelineMetrics {
            name: name.to_owned(),
            frames_received: self.frames_received.get_or_create(&label).clone(),
            messages_emitted: self.messages_emitted.get_or_create(&label).clone(),
            points_emitted: self.points_emitted.get_or_create(&label).clone(),
            transform_seconds: self.transform_seconds.get_or_create(&label).clone(),
            frames_dropped: self.frames_dropped.clone(),
            outputs_dropped: self.outputs_dropped.clone(),
            quarantined: self.hotswap.quarantines.get_or_create(&label).clone(),
        }
    }

    /// The hot-swap families (`sluice_transform_deploys_total`, …).
    pub fn hotswap(&self) -> HotswapMetrics {
        self.hotswap.clone()
    }

    /// Counts an item a sink gave up on.
    pub fn sink_dropped(&self, sink: Sink, reason: SinkDrop) {
        self.sink_dropped_by(sink, reason, 1);
    }

    /// Counts `n` items `sink` gave up on for `reason`.
    pub fn sink_dropped_by(&self, sink: Sink, reason: SinkDrop, n: u64) {
        self.sink_dropped
            .get_or_create(&SinkDropLabel {
                sink: sink.as_str(),
                reason: reason.label(sink),
            })
            .inc_by(n);
    }

    /// Sets the depth of `sink`'s durable outbox.
    pub fn outbox_depth(&self, sink: Sink, items: u64, bytes: u64) {
        let label = SinkLabel {
            sink: sink.as_str().to_owned(),
        };
        self.outbox_items
            .get_or_create(&label)
            .set(i64::try_from(items).unwrap_or(i64::MAX));
        self.outbox_bytes
            .get_or_create(&label)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = lock(&self.registry);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// Totals for the gateway stats message and the demo's summary line:
    /// every counter summed over its labels, plus drops by reason.
    pub fn stats_json(&self) -> serde_json::Value {
        let mut totals = serde_json::Map::new();
        let mut drops = serde_json::Map::new();
        for line in self.encode().lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let Some(name) = name.strip_prefix("sluice_") else {
                continue;
            };
            let name = name.strip_suffix("_total").unwrap_or(name);
            if name.ends_with("_bucket") || name.ends_with("_sum") || name.ends_with("_count") {
                continue;
            }
            if name.ends_with("dropped") {
                if let Some(reason) = label_value(labels, "reason") {
                    let slot = drops.entry(reason.to_owned()).or_insert(0u64.into());
                    let sum = slot.as_u64().unwrap_or(0) + value as u64;
                    *slot = sum.into();
                }
                continue;
            }
            let slot = totals.entry(name.to_owned()).or_insert(0u64.into());
            let sum = slot.as_u64().unwrap_or(0) + value as u64;
            *slot = sum.into();
        }
        totals.insert("dropped".into(), serde_json::Value::Object(drops));
        serde_json::Value::Object(totals)
    }

    /// Current value of `frames_dropped{pipeline, reason}` (for tests and stats).
    pub fn frames_dropped_count(&self, pipeline: &str, reason: &str) -> u64 {
        self.frames_dropped
            .get_or_create(&DropLabel {
                pipeline: pipeline.to_owned(),
                reason: reason.to_owned(),
            })
            .get()
    }

    /// Current value of `outputs_dropped{pipeline, reason}`.
    pub fn outputs_dropped_count(&self, pipeline: &str, reason: &str) -> u64 {
        self.outputs_dropped
            .get_or_create(&DropLabel {
                pipeline: pipeline.to_owned(),
                reason: reason.to_owned(),
            })
            .get()
    }
}

/// Counter handles for one pipeline.
#[derive(Clone)]
pub struct PipelineMetrics {
    name: String,
    /// Frames read.
    pub frames_received: Counter,
    /// Valid messages emitted.
    pub messages_emitted: Counter,
    /// Valid points emitted.
    pub points_emitted: Counter,
    /// Transform call latency.
    pub transform_seconds: Histogram,
    frames_dropped: Family<DropLabel, Counter>,
    outputs_dropped: Family<DropLabel, Counter>,
    /// Times the active transform was quarantined (trapping repeatedly).
    pub quarantined: Counter,
}

impl PipelineMetrics {
    /// Counts a frame that produced nothing.
    pub fn frame_dropped(&self, reason: FrameDrop) {
        self.frames_dropped
            .get_or_create(&DropLabel {
                pipeline: self.name.clone(),
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts an output the host refused.
    pub fn output_dropped(&self, invalid: &InvalidOutput) {
        self.outputs_dropped
            .get_or_create(&DropLabel {
                pipeline: self.name.clone(),
                reason: invalid.reason().to_owned(),
            })
            .inc();
    }
}

/// Why a frame produced nothing (`sluice_frames_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameDrop {
    /// The framer dropped the bytes (CRC, oversized, truncated, …).
    Framing(FramingDrop),
    /// The framer failed; the bytes it held were dropped.
    FramerError,
    /// The pipeline had stopped (shutdown) before the frame was handed over.
    PipelineStopped,
    /// The transform is quarantined (the frame is dead-lettered).
    Quarantined,
    /// The transform or the sandbox refused it (a `ProcessError`'s reason).
    Transform(&'static str),
}

impl FrameDrop {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameDrop::Framing(drop) => drop.reason(),
            FrameDrop::FramerError => "framing_error",
            FrameDrop::PipelineStopped => "pipeline_stopped",
            FrameDrop::Quarantined => "quarantined",
            FrameDrop::Transform(reason) => reason,
        }
    }
}

/// The value of `key` in a Prometheus label set `a="x",b="y"}`.
fn label_value<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels
        .trim_end_matches('}')
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Why a sink gave up on an item: the `reason` of
/// `sluice_sink_dropped_total{sink, reason}`. Every item that leaves a sink
/// other than by delivery is counted under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkDrop {
    /// The transform emitted it and no such sink is configured.
    NotConfigured,
    /// The InfluxDB writer had stopped (shutdown).
    WriterStopped,
    /// The InfluxDB writer's task failed (a bug; logged).
    WriterTaskFailed,
    /// The durable log was closed (shutdown) before it was stored.
    OutboxClosed,
    /// A stored record could not be decoded (a damaged file).
    OutboxCorruptRecord,
    /// A frame's records for the sink exceed its whole outbox.
    OutboxItemTooLarge,
    /// Evicted from a full outbox (`when_full = "drop_oldest"`).
    OutboxOverflow,
    /// Older than the outbox's `max_age_secs`.
    OutboxExpired,
    /// Lost with a commit that failed and could not be repeated.
    OutboxWriteFailed,
    /// Evicted from the full in-memory MQTT queue (`drop_oldest`).
    QueueFullDropOldest,
    /// The broker closes the connection on it, again and again (set aside).
    BrokerDisconnects,
    /// The broker refused it with this MQTT 5 reason code (snake case).
    Refused(&'static str),
    /// The InfluxDB server refused it (400): a dead letter.
    ServerRejected,
    /// Line protocol cannot say it exactly (the encoder's reason, e.g.
    /// `empty_measurement`): a dead letter.
    Unencodable(&'static str),
    /// Larger than the server takes: an InfluxDB request, a Sparkplug
    /// message over `mqtt.max_payload_bytes`.
    TooLarge,
    /// Still undelivered to InfluxDB when the shutdown deadline came.
    ShutdownUndelivered,
    /// A Sparkplug value of a new device or metric beyond the edge node's
    /// limits (1,000 devices, 10,000 metrics).
    TooManyMetrics,
}

impl SinkDrop {
    /// The metric label (and the dead-letter file's `reason`). Static but
    /// for a refusal's code: counting a drop allocates nothing.
    pub fn label(self, sink: Sink) -> Cow<'static, str> {
        let label = match self {
            SinkDrop::NotConfigured => match sink {
                Sink::Mqtt => "no_mqtt_sink_configured",
                Sink::Influx => "no_influx_sink_configured",
                Sink::Sparkplug => "no_sparkplug_sink_configured",
            },
            SinkDrop::Refused(code) => return Cow::Owned(format!("refused_{code}")),
            SinkDrop::Unencodable(reason) => reason,
            SinkDrop::WriterStopped => "writer_stopped",
            SinkDrop::WriterTaskFailed => "writer_task_failed",
            SinkDrop::OutboxClosed => "outbox_closed",
            SinkDrop::OutboxCorruptRecord => "outbox_corrupt_record",
            SinkDrop::OutboxItemTooLarge => "outbox_item_too_large",
            SinkDrop::OutboxOverflow => "outbox_overflow",
            SinkDrop::OutboxExpired => "outbox_expired",
            SinkDrop::OutboxWriteFailed => "outbox_write_failed",
            SinkDrop::QueueFullDropOldest => "queue_full_drop_oldest",
            SinkDrop::BrokerDisconnects => "broker_disconnects",
            SinkDrop::ServerRejected => "server_rejected",
            SinkDrop::TooLarge => "too_large",
            SinkDrop::ShutdownUndelivered => "shutdown_undelivered",
            SinkDrop::TooManyMetrics => "too_many_metrics",
        };
        Cow::Borrowed(label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_json_sums_counters_and_groups_drops() {
        let metrics = Metrics::new();
        let a = metrics.pipeline("a");
        let b = metrics.pipeline("b");
        a.frames_received.inc_by(3);
        b.frames_received.inc_by(4);
        a.frame_dropped(FrameDrop::Transform("decode_malformed"));
        b.frame_dropped(FrameDrop::Transform("decode_malformed"));
        a.output_dropped(&InvalidOutput::EmptyTopic);
        metrics.mqtt_delivered.inc_by(7);
        let stats = metrics.stats_json();
        assert_eq!(stats["frames_received"], 7);
        assert_eq!(stats["mqtt_delivered"], 7);
        assert_eq!(stats["dropped"]["decode_malformed"], 2);
        assert_eq!(stats["dropped"]["empty_topic"], 1);
    }

    #[test]
    fn end_to_end_histogram_is_per_sink() {
        let metrics = Metrics::new();
        metrics.end_to_end("mqtt").observe(0.002);
        let text = metrics.encode();
        assert!(
            text.contains("sluice_end_to_end_seconds_count{sink=\"mqtt\"} 1"),
            "{text}"
        );
    }
}

/// `{outcome}` of one InfluxDB write request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok`, `partial`, `rejected`, `too_large`, `retry`, `unauthorized`, `not_found`, `misconfigured`.
    pub outcome: String,
}

/// Metrics of the InfluxDB writer. Dropped points are counted in
/// `sluice_sink_dropped_total{sink="influx",reason}` (each one is also in the
/// dead-letter file).
#[derive(Clone)]
pub struct InfluxMetrics {
    /// Points encoded into batches.
    pub points_encoded: Counter,
    /// Points the server confirmed (2xx, or not named in a partial write).
    pub points_delivered: Counter,
    /// Write requests by outcome.
    pub requests: Family<OutcomeLabel, Counter>,
    /// Time from a batch being flushed to every line of it being settled.
    pub batch_seconds: Histogram,
    /// Wall time of one write request.
    pub request_seconds: Histogram,
    /// Batches being written now.
    pub batches_in_flight: Gauge,
    /// Dead letters that could not be written to the dead-letter file.
    pub dead_letter_write_failures: Counter,
}

impl InfluxMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = InfluxMetrics {
            points_encoded: Counter::default(),
            points_delivered: Counter::default(),
            requests: Family::default(),
            // 1 ms .. ~4.5 h
            batch_seconds: Histogram::new(exponential_buckets(1e-3, 4.0, 12)),
            // 1 ms .. ~17 min
            request_seconds: Histogram::new(exponential_buckets(1e-3, 4.0, 11)),
            batches_in_flight: Gauge::default(),
            dead_letter_write_failures: Counter::default(),
        };
        registry.register(
            "influx_points_encoded",
            "Points encoded into InfluxDB write batches",
            m.points_encoded.clone(),
        );
        registry.register(
            "influx_points_delivered",
            "Points confirmed by InfluxDB",
            m.points_delivered.clone(),
        );
        registry.register(
            "influx_requests",
            "InfluxDB write requests by outcome",
            m.requests.clone(),
        );
        registry.register(
            "influx_batch_seconds",
            "Time from flushing a batch until all its lines are delivered or dead-lettered",
            m.batch_seconds.clone(),
        );
        registry.register(
            "influx_request_seconds",
            "Wall time of one InfluxDB write request",
            m.request_seconds.clone(),
        );
        registry.register(
            "influx_batches_in_flight",
            "Batches being written to InfluxDB",
            m.batches_in_flight.clone(),
        );
        registry.register(
            "influx_dead_letter_write_failures",
            "Dead letters that could not be written to the dead-letter file",
            m.dead_letter_write_failures.clone(),
        );
        m
    }

    /// Counts one request outcome.
    pub fn request(&self, outcome: &str) {
        self.requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Current value of `influx_requests{outcome}`.
    pub fn requests_count(&self, outcome: &str) -> u64 {
        self.requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .get()
    }
}

/// `{pipeline, outcome}` of one transform deploy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeployLabel {
    /// Pipeline name.
    pub pipeline: String,
    /// `activated`, `unchanged`, `rolled_back`, `auto_rolled_back`, or why
    /// a module was rejected (`invalid_module`, `not_a_component`,
    /// `wrong_contract`, `init_failed`, `vectors_failed`, …).
    pub outcome: String,
}

/// Metrics of transform hot swap (`crate::hotswap`).
#[derive(Clone)]
pub struct HotswapMetrics {
    /// Deploys, rollbacks and rejections, by pipeline and outcome.
    pub deploys: Family<DeployLabel, Counter>,
    /// Time the worker held frames for one swap or rollback.
    pub swap_pause_seconds: Family<PipelineLabel, Histogram>,
    /// Quarantines of a repeatedly trapping transform.
    pub quarantines: Family<PipelineLabel, Counter>,
    /// The active version number per pipeline.
    pub active_version: Family<PipelineLabel, Gauge>,
}

impl HotswapMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = HotswapMetrics {
            deploys: Family::default(),
            swap_pause_seconds: Family::new_with_constructor(|| {
                // 1 µs .. ~4 s
                Histogram::new(exponential_buckets(1e-6, 4.0, 12))
            }),
            quarantines: Family::default(),
            active_version: Family::default(),
        };
        registry.register(
            "transform_deploys",
            "Transform deploys, rollbacks and rejected modules, by outcome",
            m.deploys.clone(),
        );
        registry.register(
            "transform_swap_pause_seconds",
            "Time a pipeline held its frames to swap the transform (compile and init excluded)",
            m.swap_pause_seconds.clone(),
        );
        registry.register(
            "transform_quarantines",
            "Times a repeatedly trapping transform was quarantined",
            m.quarantines.clone(),
        );
        registry.register(
            "transform_active_version",
            "Version number of the transform each pipeline runs",
            m.active_version.clone(),
        );
        m
    }

    /// Counts one deploy outcome.
    pub fn deploy(&self, pipeline: &str, outcome: &str) {
        self.deploys
            .get_or_create(&DeployLabel {
                pipeline: pipeline.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Current value of `transform_deploys{pipeline, outcome}`.
    pub fn deploys_count(&self, pipeline: &str, outcome: &str) -> u64 {
        self.deploys
            .get_or_create(&DeployLabel {
                pipeline: pipeline.to_owned(),
                outcome: outcome.to_owned(),
            })
            .get()
    }

    /// The swap-pause histogram of `pipeline`.
    pub fn swap_pause(&self, pipeline: &str) -> Histogram {
        self.swap_pause_seconds
            .get_or_create(&PipelineLabel {
                pipeline: pipeline.to_owned(),
            })
            .clone()
    }

    /// Sets the active version of `pipeline`.
    pub fn set_active_version(&self, pipeline: &str, version: u64) {
        self.active_version
            .get_or_create(&PipelineLabel {
                pipeline: pipeline.to_owned(),
            })
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }
}
