//! The edge node's session task: one rumqttc event loop (MQTT 3.1.1, clean
//! session, NDEATH as the will), driven by this task alone.
//!
//! Every request goes straight into the event loop's `pending` queue in
//! the order it must be written, so nothing can overtake the births: after
//! a CONNACK (rumqttc clears `pending` for a new session) come the
//! subscriptions, then — once the primary host is online, if one is
//! configured — NBIRTH and the DBIRTHs, then data. Each batch of data is
//! followed by an UNSUBSCRIBE of a filter the node never subscribed; its
//! UNSUBACK proves the broker read everything before it, which confirms
//! the batch (QoS 0 has no acknowledgement of its own).
//!
//! `bdSeq` counts connections (0–255, kept in `<data_dir>/sparkplug/bdseq`
//! across restarts); the will registered with a connection and that
//! connection's NBIRTH carry the same value.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use rumqttc::{Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS, Request};
use tokio_util::sync::CancellationToken;

use super::node::{EdgeNode, NAMESPACE, Outgoing as Message, REBIRTH, Sample};
use super::proto::{DataType, Metric, Payload, Value};
use super::queue::Queue;
use crate::backoff::Backoff;
use crate::config::MqttConfig;
use crate::config::sparkplug::SparkplugConfig;
use crate::metrics::{Metrics, SinkDrop};
use crate::model::Sink;
use crate::ratelimit::RateLimiter;
use crate::sink::mqtt::CommandRoute;
use crate::sink::mqtt::commands::route_command;
use crate::sink::mqtt::link::{BrokerAccess, PACKET_OVERHEAD, network_options};

/// Points read from the queue per batch (one confirmation each).
const BATCH: usize = 256;
/// Batches written and not yet confirmed, at most.
const BATCHES_IN_FLIGHT: usize = 4;
/// A connection that lasted this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No connection (connecting, or waiting to retry).
    Disconnected,
    /// Connected; the subscriptions are on their way.
    Subscribing,
    /// Subscribed; the primary host is not online.
    WaitingForHost,
    /// Born: data flows.
    Online,
    /// NDEATH and DISCONNECT written or on their way.
    Leaving,
}

/// The edge node's session.
pub(super) struct Session {
    eventloop: EventLoop,
    node: EdgeNode,
    queue: Queue,
    metrics: Arc<Metrics>,
    backoff: Backoff,
    endpoint: String,
    /// `spBv1.0/<group>/NCMD/<edge>` and `.../DCMD/<edge>/+`.
    command_filters: [String; 2],
    /// `spBv1.0/STATE/<primary host>`.
    state_topic: Option<String>,
    /// Where `bdSeq` is kept (none without `data_dir`).
    bd_seq_file: Option<PathBuf>,
    /// The `bdSeq` of the next connection.
    bd_seq: u8,
    /// `command_topic`: where NCMD/DCMD metrics go as downlink commands.
    command_topic: Option<String>,
    /// The pipelines' downlink routes.
    routes: Vec<CommandRoute>,
    /// `[mqtt] max_payload_bytes`: larger messages are not sent (rumqttc
    /// would fail the connection on them, again after every reconnect).
    max_payload: usize,
    warnings: RateLimiter,
}

/// What the session tracks of the data it sent.
#[derive(Default)]
struct Delivery {
    /// The last item handed to the connection.
    cursor: Option<u64>,
    /// The last item confirmed (reading restarts after it).
    confirmed: Option<u64>,
    /// Items written and not yet confirmed, in order.
    unconfirmed: VecDeque<u64>,
    /// For each UNSUBSCRIBE written: the last item before it.
    barriers: VecDeque<Option<u64>>,
    /// Items below this sequence number waited for the births: historical.
    live_from: u64,
    /// The queue's next sequence number when a read last found nothing
    /// new: no read until it moves (a read of the log is not free).
    exhausted_at: Option<u64>,
}

impl Session {
    pub(super) fn new(
        mqtt: &MqttConfig,
        config: &SparkplugConfig,
        queue: Queue,
        metrics: Arc<Metrics>,
        data_dir: Option<&Path>,
        routes: Vec<CommandRoute>,
    ) -> anyhow::Result<Session> {
        let node = EdgeNode::new(config).map_err(|e| anyhow::anyhow!("mqtt.sparkplug: {e}"))?;
        let access = BrokerAccess::read(mqtt)?;
        let client_id = config.effective_client_id(&mqtt.effective_client_id());
        let mut options = MqttOptions::new(client_id, mqtt.host.clone(), mqtt.port);
        options.set_keep_alive(Duration::from_secs(u64::from(mqtt.keep_alive_secs.get())));
        // Sparkplug 3.0: an edge node's session is clean.
        options.set_clean_session(true);
        let max_payload = mqtt.max_payload_bytes.get();
        let max_packet = max_payload.saturating_add(PACKET_OVERHEAD);
        options.set_max_packet_size(max_packet, max_packet);
        if let Some((username, password)) = access.credentials {
            options.set_credentials(username, password);
        }
        if let Some(transport) = access.transport {
            options.set_transport(transport);
        }
        let mut eventloop = EventLoop::new(options, 1);
        eventloop.set_network_options(network_options());
        let bd_seq_file = data_dir.map(|dir| dir.join("sparkplug").join("bdseq"));
        // The next connection's bdSeq follows the last one used.
        let bd_seq = match bd_seq_file.as_deref().map(std::fs::read_to_string) {
            Some(Ok(text)) => text.trim().parse::<u8>().map_or(0, |b| b.wrapping_add(1)),
            _ => 0,
        };
        let commands = |kind: &str, tail: &str| {
            format!(
                "{NAMESPACE}/{}/{kind}/{}{tail}",
                config.group_id, config.edge_node_id
            )
        };
        Ok(Session {
            eventloop,
            node,
            queue,
            metrics,
            backoff: Backoff::new(
                Duration::from_millis(mqtt.reconnect_min_ms.get()),
                Duration::from_millis(mqtt.reconnect_max_ms.get()),
            ),
            endpoint: format!("{}:{}", mqtt.host, mqtt.port),
            command_filters: [commands("NCMD", ""), commands("DCMD", "/+")],
            state_topic: config
                .primary_host()
                .map(|host| format!("{NAMESPACE}/STATE/{host}")),
            bd_seq_file,
            bd_seq,
            command_topic: config.command_topic.clone(),
            routes,
            max_payload,
            warnings: RateLimiter::new(5, Duration::from_secs(10)),
        })
    }

    /// Runs until `stop`: then, if online, sends what is queued, waits for
    /// its confirmation, publishes NDEATH and disconnects.
    pub(super) async fn run(mut self, stop: CancellationToken) {
        let mut phase = Phase::Disconnected;
        let mut delivery = Delivery::default();
        let mut host_online: Option<(bool, u64)> = None;
        let mut appended = self.queue.appended();
        let mut connected_at: Option<Instant> = None;
        let mut last_error: Option<String> = None;
        self.arm_will();
        loop {
            let stopping = stop.is_cancelled();
            if phase == Phase::Online {
                self.hand_over(&mut delivery);
                if stopping && delivery.unconfirmed.is_empty() && self.eventloop.pending.is_empty()
                {
                    self.leave();
                    phase = Phase::Leaving;
                }
            } else if stopping && phase != Phase::Leaving {
                // Not online: nothing can be sent; what is queued stays.
                return;
            }
            // Dropping `poll` is safe only while rumqttc has nothing of
            // ours still to write.
            let idle = self.eventloop.pending.is_empty();
            let wants_work = phase == Phase::Online && delivery.barriers.len() < BATCHES_IN_FLIGHT;
            let event = tokio::select! {
                biased;
                _ = stop.cancelled(), if idle && !stopping => continue,
                event = self.eventloop.poll() => event,
                _ = appended.changed(), if idle && wants_work => continue,
            };
            match event {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    connected_at = Some(Instant::now());
                    last_error = None;
                    self.node.set_bd_seq(self.bd_seq);
                    tracing::info!(broker = %self.endpoint, bd_seq = self.bd_seq,
                        "Sparkplug edge node connected");
                    self.subscribe();
                    phase = Phase::Subscribing;
                }
                Ok(Event::Incoming(Incoming::SubAck(ack))) if phase == Phase::Subscribing => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|code| matches!(code, rumqttc::SubscribeReasonCode::Failure))
                    {
                        tracing::error!(
                            "Sparkplug: the broker refused a subscription (ACL?): no commands, and with a primary host no births, until it allows NCMD, DCMD and STATE"
                        );
                    }
                    // With a primary host, its retained STATE follows the
                    // SUBACK and decides.
                    if self.state_topic.is_none() || host_online.is_some_and(|(online, _)| online) {
                        self.be_born(&mut delivery);
                        phase = Phase::Online;
                    } else {
                        phase = Phase::WaitingForHost;
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    if Some(publish.topic.as_str()) == self.state_topic.as_deref() {
                        let Some(state) = host_state(&publish.payload, host_online) else {
                            continue;
                        };
                        host_online = Some(state);
                        match (phase, state.0) {
                            (Phase::WaitingForHost, true) => {
                                self.be_born(&mut delivery);
                                phase = Phase::Online;
                            }
                            (Phase::Online, false) => {
                                tracing::info!(
                                    "Sparkplug primary host offline: NDEATH, reconnecting"
                                );
                                self.leave();
                                phase = Phase::Leaving;
                            }
                            _ => {}
                        }
                    } else if self.command(&publish.topic, &publish.payload)
                        && phase == Phase::Online
                    {
                        self.rebirth();
                    }
                }
                Ok(Event::Incoming(Incoming::UnsubAck(_))) => self.confirmed(&mut delivery),
                Ok(Event::Outgoing(Outgoing::Disconnect)) if stopping => {
                    self.metrics.sparkplug.online.set(0);
                    return;
                }
                Ok(_) => {}
                Err(error) => {
                    let text = error.to_string();
                    if phase != Phase::Disconnected {
                        // UNSUBACKs read before the break still confirm.
                        let buffered: Vec<Event> = self.eventloop.state.events.drain(..).collect();
                        for event in buffered {
                            if matches!(event, Event::Incoming(Incoming::UnsubAck(_))) {
                                self.confirmed(&mut delivery);
                            }
                        }
                        self.connection_lost(&mut delivery);
                        // The next connection learns the host's state anew.
                        host_online = None;
                        if connected_at
                            .take()
                            .is_some_and(|t| t.elapsed() >= STABLE_CONNECTION)
                        {
                            self.backoff.reset();
                        }
                        if phase != Phase::Leaving {
                            tracing::warn!(broker = %self.endpoint, error = %text,
                                "Sparkplug connection lost; reconnecting with backoff");
                        }
                        phase = Phase::Disconnected;
                        if stopping {
                            return;
                        }
                        self.arm_will();
                    } else {
                        self.eventloop.state.events.clear();
                        if last_error.as_deref() != Some(text.as_str()) {
                            tracing::warn!(broker = %self.endpoint, error = %text,
                                "Sparkplug: cannot connect to the broker; retrying with backoff");
                            last_error = Some(text);
                        }
                        if stopping {
                            return;
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(self.backoff.next_delay()) => {}
                        _ = stop.cancelled(), if !stopping => {}
                    }
                }
            }
        }
    }

    /// Registers NDEATH with the next connection's `bdSeq` as the will, and
    /// keeps that `bdSeq` for a restart.
    fn arm_will(&mut self) {
        self.node.set_bd_seq(self.bd_seq);
        if let Some(path) = &self.bd_seq_file
            && let Err(error) = write_bd_seq(path, self.bd_seq)
        {
            tracing::warn!(path = %path.display(), %error,
                "Sparkplug: cannot keep bdSeq; a restart starts again from 0");
        }
        let will = LastWill::new(
            self.node.node_topic("NDEATH"),
            self.node.death(),
            QoS::AtLeastOnce,
            false,
        );
        self.eventloop.mqtt_options.set_last_will(will);
    }

    fn subscribe(&mut self) {
        let mut filters: Vec<rumqttc::SubscribeFilter> = self
            .command_filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
            .collect();
        if let Some(state) = &self.state_topic {
            filters.push(rumqttc::SubscribeFilter::new(
                state.clone(),
                QoS::AtLeastOnce,
            ));
        }
        self.push(Request::Subscribe(rumqttc::Subscribe::new_many(filters)));
    }

    /// Publishes the births; what waited until now is historical.
    fn be_born(&mut self, delivery: &mut Delivery) {
        delivery.live_from = self.queue.next_seq();
        self.rebirth();
        self.metrics.sparkplug.online.set(1);
        tracing::info!("Sparkplug edge node born");
    }

    fn rebirth(&mut self) {
        let births = self.node.births();
        self.publish_all(births);
    }

    /// NDEATH (the will is dropped by a clean DISCONNECT), then DISCONNECT.
    fn leave(&mut self) {
        let death = self.node.death();
        self.publish_all(vec![Message {
            topic: self.node.node_topic("NDEATH"),
            payload: death,
        }]);
        self.push(Request::Disconnect(rumqttc::Disconnect));
        self.metrics.sparkplug.online.set(0);
    }

    /// Reads the next batch, publishes it and a confirmation request.
    fn hand_over(&mut self, delivery: &mut Delivery) {
        if !self.eventloop.pending.is_empty() || delivery.barriers.len() >= BATCHES_IN_FLIGHT {
            return;
        }
        let next = self.queue.next_seq();
        if delivery.exhausted_at == Some(next) {
            return;
        }
        let items = self.queue.read_after(delivery.cursor, BATCH);
        let Some(last) = items.last().map(|item| item.seq) else {
            // (A short read is not proof: a read also stops at a size.)
            delivery.exhausted_at = Some(next);
            return;
        };
        let live_from = delivery.live_from;
        let messages = self.node.publish(items.iter().map(|item| Sample {
            point: &item.point,
            historical: item.seq < live_from,
        }));
        self.publish_all(messages);
        let refused = self.node.take_refused();
        if refused > 0 {
            self.metrics
                .sink_dropped_by(Sink::Sparkplug, SinkDrop::TooManyMetrics, refused);
            if let Some(suppressed) = self.warnings.check() {
                tracing::warn!(
                    refused,
                    suppressed,
                    "Sparkplug: values of devices or metrics beyond the edge node's limits (1,000 devices, 10,000 metrics) are dropped"
                );
            }
        }
        delivery
            .unconfirmed
            .extend(items.iter().map(|item| item.seq));
        delivery.cursor = Some(last);
        self.barrier(delivery);
    }

    /// An UNSUBSCRIBE of a filter never subscribed: its UNSUBACK confirms
    /// what was written before it.
    fn barrier(&mut self, delivery: &mut Delivery) {
        let filter = format!("{}/confirm", self.command_filters[0]);
        self.push(Request::Unsubscribe(rumqttc::Unsubscribe::new(filter)));
        delivery.barriers.push_back(delivery.cursor);
    }

    /// The oldest barrier came back: its items leave the queue.
    fn confirmed(&mut self, delivery: &mut Delivery) {
        let Some(Some(through)) = delivery.barriers.pop_front() else {
            return;
        };
        let mut done = Vec::new();
        while let Some(&seq) = delivery.unconfirmed.front()
            && seq <= through
        {
            done.push(seq);
            delivery.unconfirmed.pop_front();
        }
        self.metrics.sparkplug.delivered.inc_by(done.len() as u64);
        delivery.confirmed = Some(through);
        self.queue.confirm(done);
    }

    /// The connection broke: what was not confirmed is read again after the
    /// next births; the next connection has the next `bdSeq`.
    fn connection_lost(&mut self, delivery: &mut Delivery) {
        self.metrics.sparkplug.online.set(0);
        self.metrics
            .sparkplug
            .resent
            .inc_by(delivery.unconfirmed.len() as u64);
        delivery.unconfirmed.clear();
        delivery.barriers.clear();
        delivery.cursor = delivery.confirmed;
        delivery.exhausted_at = None;
        self.eventloop.pending.clear();
        self.bd_seq = self.bd_seq.wrapping_add(1);
    }

    /// An NCMD or DCMD: true if it asks for a rebirth. The other metrics
    /// go to the pipelines as downlink commands. A payload that does not
    /// decode, and metrics that go nowhere, are counted.
    fn command(&mut self, topic: &str, payload: &[u8]) -> bool {
        // NCMD, or DCMD for the device its last level names.
        let device = (topic != self.command_filters[0])
            .then(|| topic.rsplit('/').next())
            .flatten();
        let Ok(command) = Payload::decode(payload) else {
            self.metrics.sparkplug.command_dropped("malformed");
            if let Some(suppressed) = self.warnings.check() {
                tracing::warn!(
                    topic,
                    suppressed,
                    "Sparkplug: a command that does not decode is ignored"
                );
            }
            return false;
        };
        let mut rebirth = false;
        for metric in &command.metrics {
            if device.is_none() && metric.name.as_deref() == Some(REBIRTH) {
                match metric.value {
                    Some(Value::Boolean(true)) => rebirth = true,
                    _ => self.metrics.sparkplug.command_dropped("malformed"),
                }
                continue;
            }
            if let Err(reason) = self.downlink(device, metric) {
                self.metrics.sparkplug.command_dropped(reason);
                if let Some(suppressed) = self.warnings.check() {
                    tracing::warn!(topic, metric = ?metric.name, reason, suppressed,
                        "Sparkplug: a command metric is not acted on");
                }
            }
        }
        rebirth
    }

    /// Hands one command metric to the pipelines: on `command_topic`, its
    /// value as JSON. Typed by the command, else by this node's birth.
    fn downlink(&mut self, device: Option<&str>, metric: &Metric) -> Result<(), &'static str> {
        let template = self.command_topic.as_ref().ok_or("not_routed")?;
        let declared = self
            .node
            .declared(device, metric.name.as_deref(), metric.alias);
        let name = match (&metric.name, &declared) {
            (Some(name), _) => name.clone(),
            (None, Some((name, _))) => name.clone(),
            (None, None) => return Err("unknown_metric"),
        };
        let datatype = metric
            .datatype
            .and_then(DataType::from_number)
            .or(declared.map(|(_, datatype)| datatype));
        let payload = json_value(metric, datatype).ok_or("unsupported_value")?;
        let topic = template
            .replace("{device}", device.unwrap_or(self.node.edge_node_id()))
            .replace("{metric}", &name);
        crate::model::validate_topic(&topic).map_err(|_| "invalid_topic")?;
        match route_command(
            &self.routes,
            &topic,
            payload.as_bytes(),
            false,
            &mut self.warnings,
        ) {
            0 => Err("no_pipeline"),
            _ => Ok(()),
        }
    }

    fn publish_all(&mut self, messages: Vec<Message>) {
        for message in messages {
            let kind = message.topic.split('/').nth(2).unwrap_or_default();
            if message.payload.len() > self.max_payload {
                // Counted per message: its points are not told apart here.
                self.metrics
                    .sink_dropped(Sink::Sparkplug, SinkDrop::TooLarge);
                tracing::error!(topic = %message.topic, bytes = message.payload.len(),
                    max = self.max_payload,
                    "Sparkplug: a {kind} larger than mqtt.max_payload_bytes is not sent");
                continue;
            }
            self.metrics.sparkplug.published(kind);
            let publish = rumqttc::Publish::from_bytes(
                message.topic,
                QoS::AtMostOnce,
                message.payload.into(),
            );
            self.push(Request::Publish(publish));
        }
    }

    fn push(&mut self, request: Request) {
        self.eventloop.pending.push_back(request);
    }
}

/// A STATE message of the primary host (Sparkplug 3.0: JSON `{"online":
/// bool, "timestamp": ms}`), unless it is older than the one already seen
/// or not readable.
fn host_state(payload: &[u8], seen: Option<(bool, u64)>) -> Option<(bool, u64)> {
    #[derive(serde::Deserialize)]
    struct State {
        online: bool,
        timestamp: u64,
    }
    let state: State = match serde_json::from_slice(payload) {
        Ok(state) => state,
        Err(error) => {
            tracing::warn!(%error, "Sparkplug: a STATE message that is not {{\"online\", \"timestamp\"}} JSON is ignored");
            return None;
        }
    };
    if seen.is_some_and(|(_, timestamp)| state.timestamp < timestamp) {
        return None;
    }
    Some((state.online, state.timestamp))
}

/// A command metric's value as JSON: integers with the sign their type
/// gives them (Sparkplug carries them unsigned), null for `is_null`; none
/// for bytes and numbers JSON cannot write (NaN, infinities).
fn json_value(metric: &Metric, datatype: Option<DataType>) -> Option<String> {
    use DataType::{Int8, Int16, Int32, Int64};
    if metric.is_null == Some(true) {
        return Some("null".into());
    }
    let float = |v: f64| serde_json::Number::from_f64(v).map(|n| n.to_string());
    Some(match (metric.value.as_ref()?, datatype) {
        (Value::Boolean(b), _) => b.to_string(),
        (Value::Int(v), Some(Int8)) => (*v as i8).to_string(),
        (Value::Int(v), Some(Int16)) => (*v as i16).to_string(),
        (Value::Int(v), Some(Int32)) => (*v as i32).to_string(),
        (Value::Int(v), _) => v.to_string(),
        (Value::Long(v), Some(Int64)) => (*v as i64).to_string(),
        (Value::Long(v), _) => v.to_string(),
        (Value::Float(v), _) => float(f64::from(*v))?,
        (Value::Double(v), _) => float(*v)?,
        (Value::String(text), _) => serde_json::Value::from(text.as_str()).to_string(),
        (Value::Bytes(_), _) => return None,
    })
}

fn write_bd_seq(path: &Path, bd_seq: u8) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, format!("{bd_seq}\n"))?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(value: Value, datatype: Option<DataType>) -> (Metric, Option<DataType>) {
        let metric = Metric {
            value: Some(value),
            ..Metric::default()
        };
        (metric, datatype)
    }

    #[test]
    fn command_values_become_json_with_the_sign_their_type_gives_them() {
        let cases = [
            (metric(Value::Int(253), Some(DataType::Int8)), Some("-3")),
            (
                metric(Value::Int(0xFFFF_FFFD), Some(DataType::Int8)),
                Some("-3"),
            ),
            (
                metric(Value::Int(0xFFFF_FFFD), Some(DataType::Int32)),
                Some("-3"),
            ),
            (metric(Value::Int(253), Some(DataType::UInt8)), Some("253")),
            (
                metric(Value::Long(u64::MAX - 2), Some(DataType::Int64)),
                Some("-3"),
            ),
            (
                metric(Value::Long(u64::MAX), None),
                Some("18446744073709551615"),
            ),
            (metric(Value::Double(2.5), None), Some("2.5")),
            (metric(Value::Double(f64::NAN), None), None),
            (metric(Value::Boolean(true), None), Some("true")),
            (
                metric(Value::String("a \"b\"".into()), None),
                Some(r#""a \"b\"""#),
            ),
            (metric(Value::Bytes(vec![1]), None), None),
        ];
        for ((metric, datatype), want) in cases {
            assert_eq!(
                json_value(&metric, datatype).as_deref(),
                want,
                "{:?} as {datatype:?}",
                metric.value
            );
        }
        let null = Metric {
            is_null: Some(true),
            ..Metric::default()
        };
        assert_eq!(json_value(&null, None).as_deref(), Some("null"));
    }

    #[test]
    fn a_stale_or_unreadable_state_is_ignored() {
        let state = |online: bool, timestamp: u64| {
            format!(r#"{{"online":{online},"timestamp":{timestamp}}}"#).into_bytes()
        };
        assert_eq!(host_state(&state(true, 5), None), Some((true, 5)));
        assert_eq!(host_state(&state(false, 4), Some((true, 5))), None);
        assert_eq!(
            host_state(&state(false, 6), Some((true, 5))),
            Some((false, 6))
        );
        assert_eq!(host_state(b"ONLINE", None), None);
    }
}
