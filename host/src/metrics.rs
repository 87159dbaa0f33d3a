//! Host metrics (Prometheus data model, `prometheus-client`).
//!
//! Invariant: every item that leaves the system other than by delivery moves
//! a `*_dropped_total{reason}` counter. Labels are pipeline/sink and reason,
//! never topic (unbounded cardinality).
//!
//! Hot-path counters are resolved once per pipeline ([`PipelineMetrics`]);
//! a `prometheus_client` counter handle is an `Arc` to one atomic, so
//! incrementing it costs one atomic add, no label lookup.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    pub sink: String,
    /// Stable reason label.
    pub reason: String,
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
    /// Messages handed to the MQTT client.
    pub mqtt_queued: Counter,
    /// Messages confirmed: PubAck (QoS 1), PubComp (QoS 2), or written (QoS 0).
    pub mqtt_delivered: Counter,
    /// Connection attempts that failed.
    pub mqtt_connect_failures: Counter,
    /// 1 while connected to the broker.
    pub mqtt_connected: Gauge,
    sink_dropped: Family<SinkDropLabel, Counter>,
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
        let mqtt_queued = Counter::default();
        let mqtt_delivered = Counter::default();
        let mqtt_connect_failures = Counter::default();
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
            "mqtt_connect_failures",
            "Failed MQTT connection attempts",
            mqtt_connect_failures.clone(),
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
        Self {
            registry: Mutex::new(registry),
            frames_received,
            frames_dropped,
            messages_emitted,
            points_emitted,
            outputs_dropped,
            transform_seconds,
            mqtt_queued,
            mqtt_delivered,
            mqtt_connect_failures,
            mqtt_connected,
            sink_dropped,
        }
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
        }
    }

    /// Counts an item a sink gave up on.
    pub fn sink_dropped(&self, sink: &str, reason: &str) {
        self.sink_dropped
            .get_or_create(&SinkDropLabel {
                sink: sink.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
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
}

impl PipelineMetrics {
    /// Counts a frame that produced nothing.
    pub fn frame_dropped(&self, reason: &str) {
        self.frames_dropped
            .get_or_create(&DropLabel {
                pipeline: self.name.clone(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts an output the host refused.
    pub fn output_dropped(&self, reason: &str) {
        self.outputs_dropped
            .get_or_create(&DropLabel {
                pipeline: self.name.clone(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}
