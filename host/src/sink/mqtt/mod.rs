//! The MQTT sink (rumqttc, MQTT 3.1.1 or 5): delivery the host can prove.
//!
//! rumqttc's `publish().await` only means "queued in the client"; a message
//! is delivered when the broker acknowledges it (PubAck for QoS 1, PubComp
//! for QoS 2). This module keeps its own copy of every message from the
//! moment the pipeline hands it over until that acknowledgement, so nothing
//! rumqttc forgets is lost:
//!
//! ```text
//! submit() ─► backlog (bounded; block | drop_oldest) ─┐
//!             or the durable outbox ──────────────────┴─► connection task ─► event loop's queue ─► broker
//!                                                          tracker: pkid → message, acks settle
//! ```
//!
//! * **One task owns the event loop.** It moves messages into rumqttc's
//!   `pending` queue itself, each QoS 1/2 publish under a packet id the sink
//!   chose from the ids that are free ([`tracker`]), and polls. rumqttc's
//!   request channel is not used: what is in it cannot be seen or taken back,
//!   and rumqttc drains it into a queue it clears when the broker lost the
//!   session. Correctness does not depend on the order of rumqttc's events:
//!   an acknowledgement names the one message sent under its id.
//! * **Waking the poll.** New messages arrive while `poll` waits for the
//!   network; the task then drops that `poll` future, which is safe only at
//!   that point: with rumqttc's queue empty a `poll` can be inside a read
//!   (buffered by its codec), a flush of acks or pings (the bytes stay
//!   buffered), never inside the write of a publish. So it drops `poll` only
//!   when its queue was empty when `poll` began (checked against rumqttc
//!   0.25.1, pinned and patched: `vendor/rumqttc/SLUICE-PATCH.md`).
//! * **Connection lost.** The task applies the events rumqttc still
//!   buffered from the old connection (acks that did arrive), takes our
//!   publishes back out of rumqttc's queue and stages every unconfirmed
//!   message again, oldest first. A re-send of something that was written
//!   is a possible duplicate (`mqtt_retransmitted`). A message the broker
//!   closes the connection on every time is probed alone and then set aside
//!   (`tracker.rs`): dead-lettered to `<data_dir>/dead-letter/mqtt.jsonl`,
//!   `sink_dropped{sink="mqtt",reason="broker_disconnects"}`.
//! * **Persistent session** (`clean_session = false`, stable client id). A
//!   broker that lost the session (restarted without persistence) forgot
//!   QoS 2 exchanges past PubRec; those are sent again too.
//! * **Order**: one FIFO from submit to the wire; re-sends go before
//!   anything newer, so per-topic order holds for QoS 1/2.
//! * **Downlink commands**: pipelines with `[pipeline.downlink]` give a topic
//!   filter; the connection task subscribes on every connect (with the
//!   session kept, the broker also keeps the subscription; re-subscribing is
//!   harmless) and hands each matching incoming publish to that pipeline's
//!   worker with `try_send` (never waits; a full queue is counted). rumqttc
//!   acknowledges the publish when it is received, so a command is "at most
//!   once" past the host's queue. Retained commands are ignored unless the
//!   pipeline accepts them: a retained `open valve` would otherwise be
//!   executed again on every reconnect.
//! * **Status**: a retained `online` birth message on every connect, a
//!   retained `offline` last will (and an explicit `offline` on clean
//!   shutdown, since DISCONNECT suppresses the will).
//!
//! * **Refusals** (MQTT 5): an acknowledgement with an error reason code
//!   (an ACL denial is `not_authorized`) settles the message as *refused*,
//!   not delivered: counted in `sink_dropped{sink="mqtt",reason="refused_<code>"}`
//!   and logged with the topic (rate-limited), and not re-sent — the broker
//!   would refuse it again. A message larger than the broker's announced
//!   maximum packet size is refused by the host before it is sent
//!   (`exceeds_broker_max_packet`), because rumqttc would otherwise fail the
//!   connection on it after every reconnect.
//!
//! Known limits: MQTT 3.1.1 gives no reason codes, so a publish an ACL denies
//! is acknowledged like any other (mosquitto drops it silently); use MQTT 5
//! where the broker supports it. With a `data_dir`, data messages wait in the durable
//! outbox (`sink/durable.rs`) until confirmed and survive a crash; without
//! one, the in-memory backlog is lost if the host dies.
//!
//! The protocol differences live in `link.rs`, the connection task in
//! `connection.rs`, the routing of downlink commands in `commands.rs`.

pub(crate) mod commands;
mod connection;
pub(crate) mod link;
mod tracker;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::MqttConfig;
use crate::metrics::{Metrics, SinkDrop};
use crate::model::{CompactString, MqttMessage, Qos, Sink};
use crate::outbox::QueueFullPolicy;
use crate::ratelimit::RateLimiter;
use crate::sink::SinkContext;
use crate::sink::dead_letter::DeadLetters;
use crate::sink::durable::DurableQueue;
use crate::sink::record;
use crate::sync::lock;
pub use commands::CommandRoute;
use connection::drive_connection;
use tracker::Tracker;

/// The payload of the birth message (retained on the status topic).
const BIRTH: &[u8] = b"online";

/// Errors that prevent the sink from starting.
#[derive(Debug, thiserror::Error)]
pub enum MqttSetupError {
    /// A secret or certificate file could not be read.
    #[error("mqtt.{key}: cannot read {path}: {source}")]
    ReadFile {
        /// The config key.
        key: &'static str,
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The password could not be read.
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    /// The dead-letter file could not be opened.
    #[error("cannot open the MQTT dead-letter file {}: {source}", path.display())]
    DeadLetters {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One message on its way to the broker.
#[derive(Debug, Clone)]
struct Entry {
    topic: CompactString,
    payload: Bytes,
    qos: Qos,
    retain: bool,
    /// Status messages (birth/offline) are not counted as data.
    status: bool,
    /// Submission order, to re-send lost messages in their original order.
    seq: u64,
    /// Its sequence number in the durable outbox (acked on confirmation).
    durable: Option<u64>,
    /// When the sink accepted it (ns since the Unix epoch; ms resolution
    /// for outbox items), for the delivery latency histogram.
    accepted_ns: u64,
    /// The packet id it went out under, kept until it is confirmed.
    pkid: Option<u16>,
    /// Written to a connection at least once (a re-send may duplicate it).
    written: bool,
    /// Written on the current connection.
    written_now: bool,
    /// Connections that broke with this the oldest message written and
    /// not acknowledged, and failed probes (see `tracker.rs`).
    strikes: u8,
    failed_probes: u8,
}

impl Entry {
    fn data(message: MqttMessage) -> Self {
        Entry {
            topic: message.topic,
            payload: message.payload,
            qos: message.qos,
            retain: message.retain,
            status: false,
            seq: 0,
            durable: None,
            accepted_ns: crate::model::now_ns(),
            pkid: None,
            written: false,
            written_now: false,
            strikes: 0,
            failed_probes: 0,
        }
    }

    fn status(topic: &str, payload: &'static [u8]) -> Self {
        Entry {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: Qos::AtLeastOnce,
            retain: true,
            status: true,
            seq: 0,
            durable: None,
            accepted_ns: 0,
            pkid: None,
            written: false,
            written_now: false,
            strikes: 0,
            failed_probes: 0,
        }
    }

    /// The `online` message of a connection (not re-sent on another).
    fn is_birth(&self) -> bool {
        self.status && *self.payload == *BIRTH
    }

    /// An upper bound of its PUBLISH packet's size: fixed header (1 + up to
    /// 4 length bytes), topic length and bytes, packet id, MQTT 5 property
    /// length (none set), payload.
    fn packet_size(&self) -> usize {
        1 + 4 + 2 + self.topic.len() + 2 + 1 + self.payload.len()
    }
}

/// The bounded queue in front of the client.
struct Backlog {
    queue: VecDeque<Entry>,
    closed: bool,
    /// Inside a "queue full, dropping" episode (one warning per episode).
    dropping: bool,
    /// Next submission sequence number.
    next_seq: u64,
}

struct Shared {
    backlog: Mutex<Backlog>,
    /// Signalled when the backlog gains an entry or closes, and when the
    /// sink asks the connection task to disconnect.
    filled: Notify,
    /// Signalled when the backlog loses an entry.
    drained: Notify,
    /// Signalled when the tracker runs empty (everything handed over is
    /// confirmed); [`MqttSink::flush`] waits on it.
    settled: Notify,
    tracker: Mutex<Tracker>,
    capacity: usize,
    policy: QueueFullPolicy,
    metrics: Arc<Metrics>,
    status_topic: String,
    /// Downlink subscriptions, in the order of the SUBSCRIBE's filters.
    routes: Vec<CommandRoute>,
    /// The durable outbox, when the host has a data directory: data
    /// messages go there instead of `backlog` (which then carries only the
    /// status messages) and are removed when confirmed.
    durable: Option<Arc<DurableQueue>>,
    /// Everything in the sealed outbox was taken (shutdown): what is
    /// unconfirmed is then all in the tracker.
    outbox_handed_over: AtomicBool,
    /// Shutdown: send DISCONNECT and stop.
    disconnect: AtomicBool,
    /// One past the sequence number of the last outbox item taken (0: none).
    outbox_taken: AtomicU64,
    /// The broker's maximum packet size from its last CONNACK (MQTT 5;
    /// 0 = none announced).
    broker_max_packet: AtomicU32,
    /// Rate limit of the per-message refusal warnings.
    refusal_warnings: Mutex<RateLimiter>,
    /// `end_to_end_seconds{sink="mqtt"}`.
    latency: prometheus_client::metrics::histogram::Histogram,
    /// Where messages set aside go (with a data directory).
    dead_letters: Option<DeadLetters>,
}

/// Bounds of the MQTT dead-letter files (only messages a broker disconnects
/// on go there: few, but their payloads can be large).
const DEAD_LETTER_MAX_BYTES: u64 = 64 << 20;
const DEAD_LETTER_MAX_FILES: u16 = 4;

/// The MQTT sink: submit messages, flush, shut down.
pub struct MqttSink {
    shared: Arc<Shared>,
    connection: tokio::task::JoinHandle<()>,
    connection_stop: CancellationToken,
}

impl MqttSink {
    /// Connects (in the background) and starts the publisher, subscribing
    /// to the pipelines' downlink command topics (handing matching messages
    /// to `routes`). With `context.durable`, data messages wait there until
    /// the broker confirms them, and those already there (from before a
    /// restart) are sent first. With a `data_dir`, messages set aside go to
    /// `<data_dir>/dead-letter/mqtt.jsonl`.
    pub fn start(
        config: &MqttConfig,
        context: SinkContext,
        routes: Vec<CommandRoute>,
    ) -> Result<MqttSink, MqttSetupError> {
        let SinkContext {
            metrics,
            data_dir,
            durable,
        } = context;
        let data_dir = data_dir.as_deref();
        // rustls needs one process-wide crypto provider; several crates here
        // could each bring one, so choose explicitly (a second call is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client_id = config.effective_client_id();
        let status_topic = format!("{}/status/{}", config.status_topic_prefix, client_id);
        let link = link::connect(config, client_id, &status_topic)?;
        let latency = metrics.end_to_end("mqtt");
        let dead_letters = match data_dir {
            Some(dir) => {
                let path = dir.join("dead-letter").join("mqtt.jsonl");
                Some(
                    DeadLetters::open(
                        Sink::Mqtt,
                        &path,
                        DEAD_LETTER_MAX_BYTES,
                        DEAD_LETTER_MAX_FILES,
                        metrics.mqtt_dead_letter_write_failures.clone(),
                    )
                    .map_err(|source| MqttSetupError::DeadLetters { path, source })?,
                )
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            backlog: Mutex::new(Backlog {
                queue: VecDeque::new(),
                closed: false,
                dropping: false,
                next_seq: 0,
            }),
            filled: Notify::new(),
            drained: Notify::new(),
            settled: Notify::new(),
            tracker: Mutex::new(Tracker::new(config.max_inflight.get())),
            capacity: config.queue_capacity.get(),
            policy: config.queue_full,
            metrics,
            status_topic,
            routes,
            outbox_handed_over: AtomicBool::new(false),
            disconnect: AtomicBool::new(false),
            outbox_taken: AtomicU64::new(0),
            broker_max_packet: AtomicU32::new(0),
            refusal_warnings: Mutex::new(RateLimiter::new(5, Duration::from_secs(10))),
            latency,
            durable,
            dead_letters,
        });
        if let Some(durable) = &shared.durable {
            let waiting = durable.outbox().stats().depth_items;
            if waiting > 0 {
                // Sent before the restart perhaps, not confirmed: possible duplicates.
                shared.metrics.mqtt_retransmitted.inc_by(waiting);
                tracing::info!(
                    waiting,
                    "MQTT outbox: sending messages left from the previous run"
                );
            }
        }
        let backoff = Backoff::new(
            Duration::from_millis(config.reconnect_min_ms.get()),
            Duration::from_millis(config.reconnect_max_ms.get()),
        );
        let endpoint = format!("{}:{}", config.host, config.port);
        let connection_stop = CancellationToken::new();
        let connection = tokio::spawn(drive_connection(
            link,
            backoff,
            endpoint,
            shared.clone(),
            connection_stop.clone(),
            config.max_inflight.get(),
        ));
        Ok(MqttSink {
            shared,
            connection,
            connection_stop,
        })
    }

    /// Queues a validated message. With the `block` policy this waits while
    /// the backlog is full (backpressure); with `drop_oldest` it evicts the
    /// oldest queued message (counted) and returns at once.
    pub async fn submit(&self, message: MqttMessage) {
        self.submit_all(std::iter::once(message)).await;
    }

    /// [`submit`](Self::submit) for several messages, in order: queued
    /// together, so the connection task is woken once for them, not once
    /// per message.
    pub async fn submit_all(&self, messages: impl IntoIterator<Item = MqttMessage>) {
        match &self.shared.durable {
            Some(durable) => {
                for message in messages {
                    if !durable.push(record::mqtt_to_vec(message.as_ref())).await {
                        self.shared
                            .metrics
                            .sink_dropped(Sink::Mqtt, SinkDrop::OutboxClosed);
                    }
                }
            }
            None => self.push_all(messages.into_iter().map(Entry::data)).await,
        }
    }

    async fn push_all(&self, entries: impl Iterator<Item = Entry>) {
        let shared = &self.shared;
        let drop_oldest = shared.policy == QueueFullPolicy::DropOldest;
        let mut entries = entries.peekable();
        while entries.peek().is_some() {
            let space = shared.drained.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut backlog = lock(&shared.backlog);
                let mut queued = false;
                while let Some(mut entry) =
                    entries.next_if(|_| drop_oldest || backlog.queue.len() < shared.capacity)
                {
                    if backlog.queue.len() < shared.capacity {
                        backlog.dropping = false;
                    } else if let Some(evicted) = backlog.queue.pop_front() {
                        shared
                            .metrics
                            .sink_dropped(Sink::Mqtt, SinkDrop::QueueFullDropOldest);
                        if !backlog.dropping {
                            backlog.dropping = true;
                            tracing::warn!(capacity = shared.capacity, topic = %evicted.topic,
                                "MQTT backlog full: dropping the oldest messages (policy drop_oldest) until it drains");
                        }
                    }
                    entry.seq = backlog.next_seq;
                    backlog.next_seq += 1;
                    backlog.queue.push_back(entry);
                    queued = true;
                }
                if queued {
                    shared.metrics.mqtt_backlog.set(backlog.queue.len() as i64);
                    drop(backlog);
                    shared.filled.notify_one();
                }
            }
            if entries.peek().is_some() {
                // `block`: wait until the connection task took some.
                space.await;
            }
        }
    }

    /// Messages queued or handed to the client but not yet confirmed. With
    /// an outbox not yet handed over whole, an upper bound: what is on its
    /// way into it and its items, some of which may be with the client
    /// already.
    pub fn unconfirmed(&self) -> usize {
        let in_outbox = match &self.shared.durable {
            Some(durable) if !self.shared.outbox_handed_over.load(Ordering::SeqCst) => {
                // Not yet taken by the connection task: on its way into the
                // outbox, or stored after the last item taken. (What was
                // taken is in the tracker until confirmed.) In this order:
                // a record that leaves transit is stored first, and one the
                // task takes is staged before `outbox_taken` moves past it.
                let in_transit = durable.in_transit();
                let taken = self.shared.outbox_taken.load(Ordering::SeqCst);
                let after = taken.checked_sub(1);
                let unread = match durable.read_after(after, 1) {
                    Ok(rest) if rest.is_empty() => 0,
                    _ => durable.outbox().next_seq().saturating_sub(taken).max(1),
                };
                in_transit + unread
            }
            _ => 0,
        };
        lock(&self.shared.backlog).queue.len()
            + lock(&self.shared.tracker).unconfirmed()
            + usize::try_from(in_outbox).unwrap_or(usize::MAX)
    }

    /// Whether unconfirmed messages survive a stop (they wait in the
    /// durable outbox).
    pub fn is_durable(&self) -> bool {
        self.shared.durable.is_some()
    }

    /// Waits until every message submitted so far is confirmed, or `timeout`
    /// passes. Returns how many are still unconfirmed (0: all delivered).
    pub async fn flush(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let settled = self.shared.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let unconfirmed = self.unconfirmed();
            if unconfirmed == 0 {
                return 0;
            }
            // Records on their way into the outbox are not signalled when
            // they arrive: with one, look again now and then.
            let wake_at = match &self.shared.durable {
                Some(_) => deadline.min(tokio::time::Instant::now() + Duration::from_millis(1)),
                None => deadline,
            };
            if tokio::time::timeout_at(wake_at, settled).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return self.unconfirmed();
            }
        }
    }

    /// Publishes `offline` (retained), stops taking messages, waits up to
    /// `timeout` for the broker to confirm everything, then disconnects.
    /// Returns how many messages were still unconfirmed.
    pub async fn shutdown(mut self, timeout: Duration) -> usize {
        let offline = Entry::status(&self.shared.status_topic, b"offline");
        let deadline = tokio::time::Instant::now() + timeout;
        // Bounded: with `block` and a full backlog the broker may be gone.
        let _ = tokio::time::timeout_at(deadline, self.push_all(std::iter::once(offline))).await;
        if let Some(durable) = &self.shared.durable {
            // Everything submitted is appended before the publisher may stop.
            let _ = tokio::time::timeout_at(deadline, durable.seal()).await;
        }
        lock(&self.shared.backlog).closed = true;
        self.shared.filled.notify_one();
        let unconfirmed = self
            .flush(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
        self.shared.disconnect.store(true, Ordering::SeqCst);
        self.shared.filled.notify_one();
        if tokio::time::timeout(Duration::from_secs(1), &mut self.connection)
            .await
            .is_err()
        {
            self.connection_stop.cancel();
        }
        if let Some(durable) = &self.shared.durable {
            // Applies the last acks; the rest stays for the next start.
            durable.close().await;
        }
        unconfirmed
    }
}
