//! The MQTT sink (rumqttc).
//!
//! Two tasks, because rumqttc's event loop must be polled continuously and a
//! task that publishes must never be the one polling (it would deadlock when
//! the request channel fills):
//!
//! * the **publisher** ([`MqttSink::run_publisher`]) takes validated messages
//!   from the pipelines and hands them to the client; when the client's
//!   bounded request queue is full it waits, which backs pressure up to the
//!   ports;
//! * the **connection** task polls the event loop, counts confirmations
//!   (PubAck for QoS 1, PubComp for QoS 2, the write itself for QoS 0) and
//!   reconnects with jittered exponential backoff, logging once per state
//!   change.
//!
//! The session is persistent (`clean_session = false`, stable client id), so
//! the broker keeps our subscriptions and rumqttc re-sends unacknowledged
//! messages after a reconnect.
//!
//! Known gap (tracked for the durable-outbox work): if the broker lost our
//! session (restart without persistence), rumqttc discards the unacknowledged
//! messages it still held; the host does not yet keep its own copy.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::MqttConfig;
use crate::metrics::Metrics;
use crate::model::{MqttMessage, Qos};

/// Bytes allowed in a PUBLISH packet beyond the payload: fixed header,
/// topic (up to 65535 + 2 length bytes) and packet id.
const PACKET_OVERHEAD: usize = 65_535 + 16;

/// A connected (or connecting) MQTT client.
pub struct MqttSink {
    client: AsyncClient,
    metrics: Arc<Metrics>,
}

impl MqttSink {
    /// Creates the client and spawns the connection task.
    pub fn start(
        config: &MqttConfig,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> (MqttSink, tokio::task::JoinHandle<()>) {
        let mut options = MqttOptions::new(
            config.effective_client_id(),
            config.host.clone(),
            config.port,
        );
        options.set_keep_alive(Duration::from_secs(u64::from(config.keep_alive_secs.get())));
        options.set_clean_session(false);
        options.set_inflight(config.max_inflight.get());
        let max_packet = config
            .max_payload_bytes
            .get()
            .saturating_add(PACKET_OVERHEAD);
        options.set_max_packet_size(max_packet, max_packet);
        let (client, eventloop) = AsyncClient::new(options, usize::from(config.max_inflight.get()));
        let backoff = Backoff::new(
            Duration::from_millis(config.reconnect_min_ms.get()),
            Duration::from_millis(config.reconnect_max_ms.get()),
        );
        let endpoint = format!("{}:{}", config.host, config.port);
        let task = tokio::spawn(drive_connection(
            eventloop,
            backoff,
            endpoint,
            metrics.clone(),
            stop,
        ));
        (MqttSink { client, metrics }, task)
    }

    /// Publishes every message from `messages` until the channel closes.
    pub async fn run_publisher(&self, mut messages: mpsc::Receiver<MqttMessage>) {
        while let Some(message) = messages.recv().await {
            let qos = match message.qos {
                Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
                Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
                Qos::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
            };
            match self
                .client
                .publish(message.topic, qos, message.retain, message.payload)
                .await
            {
                Ok(()) => {
                    self.metrics.mqtt_queued.inc();
                }
                Err(err) => {
                    // Only happens when the connection task is gone (shutdown).
                    self.metrics.sink_dropped("mqtt", "client_closed");
                    tracing::error!(error = %err, "MQTT client closed; message lost");
                }
            }
        }
    }

    /// Waits until every queued message is confirmed, or `timeout` passes.
    /// Returns how many were still unconfirmed.
    pub async fn flush(&self, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pending = self
                .metrics
                .mqtt_queued
                .get()
                .saturating_sub(self.metrics.mqtt_delivered.get());
            if pending == 0 || tokio::time::Instant::now() >= deadline {
                return pending;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends DISCONNECT (the broker then does not publish our last will).
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}

async fn drive_connection(
    mut eventloop: EventLoop,
    mut backoff: Backoff,
    endpoint: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut connected = false;
    let mut failing = false;
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = stop.cancelled() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected = true;
                failing = false;
                backoff.reset();
                metrics.mqtt_connected.set(1);
                tracing::info!(broker = %endpoint, session_present = ack.session_present, "MQTT connected");
            }
            Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                metrics.mqtt_delivered.inc();
            }
            Ok(Event::Outgoing(Outgoing::Publish(0))) => {
                // QoS 0 has packet id 0: written to the socket is all we get.
                metrics.mqtt_delivered.inc();
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                metrics.mqtt_connected.set(0);
                return;
            }
            Ok(_) => {}
            Err(err) => {
                metrics.mqtt_connected.set(0);
                metrics.mqtt_connect_failures.inc();
                if connected {
                    tracing::warn!(broker = %endpoint, error = %err, "MQTT connection lost; reconnecting with backoff");
                } else if !failing {
                    tracing::warn!(broker = %endpoint, error = %err, "cannot connect to MQTT broker; retrying with backoff");
                }
                connected = false;
                failing = true;
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}
