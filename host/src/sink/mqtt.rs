//! The MQTT sink (rumqttc, MQTT 3.1.1): delivery the host can prove.
//!
//! rumqttc's `publish().await` only means "queued in the client"; a message
//! is delivered when the broker acknowledges it (PubAck for QoS 1, PubComp
//! for QoS 2). This module tracks every message from the moment the pipeline
//! hands it over until that acknowledgement, and keeps its own copy until
//! then, so nothing rumqttc forgets is lost:
//!
//! ```text
//! submit() ─► backlog (bounded; block | drop_oldest) ─► publisher task ─► rumqttc channel ─► event loop ─► broker
//!                                                          │ awaiting (handed over, no packet id yet)
//!                          connection task (polls) ◄───────┘ Outgoing::Publish(pkid) → in flight(pkid)
//!                                                            PubAck/PubComp(pkid)   → delivered
//! ```
//!
//! * **Two tasks**: the publisher hands messages to the client; the
//!   connection task polls the event loop and never publishes through the
//!   client channel (that would deadlock when it is full). What the
//!   connection task must send itself (birth message, re-sends) it puts
//!   directly into the event loop's `pending` queue.
//! * **Packet-id mapping**: the event loop takes requests in FIFO order and
//!   emits `Outgoing::Publish(pkid)` as it writes each one, so the n-th new
//!   packet id belongs to the n-th message in `awaiting`. A `Publish` event for
//!   a packet id that is already in flight is a retransmission (a possible
//!   duplicate at the subscriber), counted in `mqtt_retransmitted`.
//! * **Persistent session** (`clean_session = false`, stable client id): on a
//!   reconnect with `session_present`, rumqttc re-sends what was in flight.
//!   If the broker lost the session (`session_present = false`), rumqttc drops
//!   those messages; we re-send our copies, oldest first, ahead of newer ones.
//! * **Order**: one FIFO from submit to the wire, so per-topic order holds
//!   (re-sends after a reconnect come before anything newer).
//! * **Status**: a retained `online` birth message on every connect, a
//!   retained `offline` last will (and an explicit `offline` on clean
//!   shutdown, since DISCONNECT suppresses the will).
//!
//! Known limits: MQTT 3.1.1 gives no reason codes, so a publish an ACL denies
//! is acknowledged like any other (mosquitto drops it silently); MQTT 5 is
//! not implemented yet. The backlog is in memory: a host crash loses it (the
//! durable outbox is the next step).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet,
    Publish, QoS, Request, TlsConfiguration, Transport,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{MqttConfig, QueueFullPolicy};
use crate::metrics::Metrics;
use crate::model::{MqttMessage, Qos};

/// Bytes allowed in a PUBLISH packet beyond the payload: fixed header,
/// topic (up to 65535 + 2 length bytes) and packet id.
const PACKET_OVERHEAD: usize = 65_535 + 16;
/// A connection that lasted this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

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
}

/// One message on its way to the broker.
#[derive(Debug, Clone)]
struct Entry {
    topic: String,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    /// Status messages (birth/offline) are not counted as data.
    status: bool,
    /// Submission order, to re-send lost messages in their original order.
    seq: u64,
}

impl Entry {
    fn data(message: MqttMessage) -> Self {
        Entry {
            topic: message.topic,
            payload: Bytes::from(message.payload),
            qos: match message.qos {
                Qos::AtMostOnce => QoS::AtMostOnce,
                Qos::AtLeastOnce => QoS::AtLeastOnce,
                Qos::ExactlyOnce => QoS::ExactlyOnce,
            },
            retain: message.retain,
            status: false,
            seq: 0,
        }
    }

    fn to_request(&self) -> Request {
        let mut publish = Publish::from_bytes(self.topic.clone(), self.qos, self.payload.clone());
        publish.retain = self.retain;
        Request::Publish(publish)
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

/// What has been handed to rumqttc and is not yet confirmed.
#[derive(Default)]
struct Tracker {
    /// Handed to the client, no packet id yet (FIFO, the event loop's order).
    awaiting: VecDeque<Entry>,
    /// Written with a packet id, waiting for PubAck / PubRec.
    in_flight: HashMap<u16, Entry>,
    /// QoS 2 after PubRec, waiting for PubComp.
    releasing: HashMap<u16, Entry>,
    /// How many of `awaiting` (the oldest) sit in rumqttc's `pending` queue
    /// rather than its channel; those are lost if the session is.
    drained: usize,
}

impl Tracker {
    fn unconfirmed(&self) -> usize {
        self.awaiting.len() + self.in_flight.len() + self.releasing.len()
    }
}

struct Shared {
    backlog: Mutex<Backlog>,
    /// Signalled when the backlog gains an entry or closes.
    filled: Notify,
    /// Signalled when the backlog loses an entry.
    drained: Notify,
    tracker: Mutex<Tracker>,
    capacity: usize,
    policy: QueueFullPolicy,
    metrics: Arc<Metrics>,
    status_topic: String,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks is a bug; keep serving rather than
    // poisoning the whole sink.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The MQTT sink: submit messages, flush, shut down.
pub struct MqttSink {
    shared: Arc<Shared>,
    client: AsyncClient,
    publisher: tokio::task::JoinHandle<()>,
    connection: tokio::task::JoinHandle<()>,
    connection_stop: CancellationToken,
}

impl MqttSink {
    /// Connects (in the background) and starts the publisher.
    pub fn start(config: &MqttConfig, metrics: Arc<Metrics>) -> Result<MqttSink, MqttSetupError> {
        // rustls needs one process-wide crypto provider; several crates here
        // could each bring one, so choose explicitly (a second call is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client_id = config.effective_client_id();
        let status_topic = format!("{}/status/{}", config.status_topic_prefix, client_id);
        let mut options = MqttOptions::new(client_id, config.host.clone(), config.port);
        options.set_keep_alive(Duration::from_secs(u64::from(config.keep_alive_secs.get())));
        options.set_clean_session(false);
        options.set_inflight(config.max_inflight.get());
        let max_packet = config
            .max_payload_bytes
            .get()
            .saturating_add(PACKET_OVERHEAD);
        options.set_max_packet_size(max_packet, max_packet);
        options.set_last_will(LastWill::new(
            status_topic.clone(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(username) = &config.username {
            let password = crate::secret::read_secret(
                "mqtt.password_env",
                &config.password_env,
                "mqtt.password_file",
                &config.password_file,
                &|var| std::env::var(var).ok(),
            )?;
            let password = password.map(|p| p.expose().to_owned()).unwrap_or_default();
            options.set_credentials(username.clone(), password);
        }
        if let Some(tls) = &config.tls {
            let read = |key: &'static str, path: &std::path::Path| {
                std::fs::read(path).map_err(|source| MqttSetupError::ReadFile {
                    key,
                    path: path.display().to_string(),
                    source,
                })
            };
            let ca = read("tls.ca_file", &tls.ca_file)?;
            let client_auth = match (&tls.client_cert_file, &tls.client_key_file) {
                (Some(cert), Some(key)) => Some((
                    read("tls.client_cert_file", cert)?,
                    read("tls.client_key_file", key)?,
                )),
                _ => None,
            };
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth,
            }));
        }
        // A small client channel: what is offline should wait in our backlog,
        // where the overflow policy applies, not in rumqttc.
        let (client, eventloop) = AsyncClient::new(options, 16);
        let shared = Arc::new(Shared {
            backlog: Mutex::new(Backlog {
                queue: VecDeque::new(),
                closed: false,
                dropping: false,
                next_seq: 0,
            }),
            filled: Notify::new(),
            drained: Notify::new(),
            tracker: Mutex::new(Tracker::default()),
            capacity: config.queue_capacity.get(),
            policy: config.queue_full,
            metrics,
            status_topic,
        });
        let backoff = Backoff::new(
            Duration::from_millis(config.reconnect_min_ms.get()),
            Duration::from_millis(config.reconnect_max_ms.get()),
        );
        let endpoint = format!("{}:{}", config.host, config.port);
        let connection_stop = CancellationToken::new();
        let connection = tokio::spawn(drive_connection(
            eventloop,
            backoff,
            endpoint,
            shared.clone(),
            connection_stop.clone(),
        ));
        let publisher = tokio::spawn(run_publisher(shared.clone(), client.clone()));
        Ok(MqttSink {
            shared,
            client,
            publisher,
            connection,
            connection_stop,
        })
    }

    /// Queues a validated message. With the `block` policy this waits while
    /// the backlog is full (backpressure); with `drop_oldest` it evicts the
    /// oldest queued message (counted) and returns at once.
    pub async fn submit(&self, message: MqttMessage) {
        self.push(Entry::data(message)).await;
    }

    async fn push(&self, mut entry: Entry) {
        let shared = &self.shared;
        loop {
            let space = shared.drained.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut backlog = lock(&shared.backlog);
                entry.seq = backlog.next_seq;
                if backlog.queue.len() < shared.capacity {
                    backlog.next_seq += 1;
                    backlog.queue.push_back(entry);
                    backlog.dropping = false;
                    shared.metrics.mqtt_backlog.set(backlog.queue.len() as i64);
                    drop(backlog);
                    shared.filled.notify_one();
                    return;
                }
                if shared.policy == QueueFullPolicy::DropOldest {
                    if let Some(evicted) = backlog.queue.pop_front() {
                        shared
                            .metrics
                            .sink_dropped("mqtt", "queue_full_drop_oldest");
                        if !backlog.dropping {
                            backlog.dropping = true;
                            tracing::warn!(capacity = shared.capacity, topic = %evicted.topic,
                                "MQTT backlog full: dropping the oldest messages (policy drop_oldest) until it drains");
                        }
                    }
                    backlog.next_seq += 1;
                    backlog.queue.push_back(entry);
                    drop(backlog);
                    shared.filled.notify_one();
                    return;
                }
            }
            space.await;
        }
    }

    /// Messages queued or handed to the client but not yet confirmed.
    pub fn unconfirmed(&self) -> usize {
        lock(&self.shared.backlog).queue.len() + lock(&self.shared.tracker).unconfirmed()
    }

    /// Publishes `offline` (retained), stops taking messages, waits up to
    /// `timeout` for the broker to confirm everything, then disconnects.
    /// Returns how many messages were still unconfirmed.
    pub async fn shutdown(mut self, timeout: Duration) -> usize {
        let offline = Entry {
            topic: self.shared.status_topic.clone(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            status: true,
            seq: 0,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        // Bounded: with `block` and a full backlog the broker may be gone.
        let _ = tokio::time::timeout_at(deadline, self.push(offline)).await;
        lock(&self.shared.backlog).closed = true;
        self.shared.filled.notify_one();
        let _ = tokio::time::timeout_at(deadline, &mut self.publisher).await;
        let mut unconfirmed = self.unconfirmed();
        while unconfirmed > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            unconfirmed = self.unconfirmed();
        }
        let _ = self.client.try_disconnect();
        if tokio::time::timeout(Duration::from_secs(1), &mut self.connection)
            .await
            .is_err()
        {
            self.connection_stop.cancel();
        }
        unconfirmed
    }
}

/// Moves entries from the backlog to the client, oldest first.
async fn run_publisher(shared: Arc<Shared>, client: AsyncClient) {
    loop {
        let filled = shared.filled.notified();
        tokio::pin!(filled);
        filled.as_mut().enable();
        let next = {
            let mut backlog = lock(&shared.backlog);
            let next = backlog.queue.pop_front();
            shared.metrics.mqtt_backlog.set(backlog.queue.len() as i64);
            match next {
                Some(entry) => Some(entry),
                None if backlog.closed => return,
                None => None,
            }
        };
        let Some(entry) = next else {
            filled.await;
            continue;
        };
        shared.drained.notify_one();
        // Record it before the event loop can see it (FIFO mapping).
        lock(&shared.tracker).awaiting.push_back(entry.clone());
        if !entry.status {
            shared.metrics.mqtt_queued.inc();
        }
        if let Err(err) = client
            .publish_bytes(entry.topic, entry.qos, entry.retain, entry.payload)
            .await
        {
            // Only when the event loop is gone (shutdown).
            shared.metrics.sink_dropped("mqtt", "client_closed");
            tracing::error!(error = %err, "MQTT client closed; message lost");
            return;
        }
    }
}

async fn drive_connection(
    mut eventloop: EventLoop,
    mut backoff: Backoff,
    endpoint: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let metrics = &shared.metrics;
    let mut connected_at: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = stop.cancelled() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected_at = Some(Instant::now());
                last_error = None;
                metrics.mqtt_connected.set(1);
                let resent = on_connected(&shared, &mut eventloop, ack.session_present);
                tracing::info!(broker = %endpoint, session_present = ack.session_present, resent,
                    "MQTT connected");
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let entry = lock(&shared.tracker).in_flight.remove(&ack.pkid);
                confirm(metrics, entry);
            }
            Ok(Event::Incoming(Packet::PubRec(rec))) => {
                let mut tracker = lock(&shared.tracker);
                if let Some(entry) = tracker.in_flight.remove(&rec.pkid) {
                    tracker.releasing.insert(rec.pkid, entry);
                }
            }
            Ok(Event::Incoming(Packet::PubComp(comp))) => {
                let entry = lock(&shared.tracker).releasing.remove(&comp.pkid);
                confirm(metrics, entry);
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut tracker = lock(&shared.tracker);
                if pkid != 0 && tracker.in_flight.contains_key(&pkid) {
                    metrics.mqtt_retransmitted.inc();
                } else if let Some(entry) = tracker.awaiting.pop_front() {
                    tracker.drained = tracker.drained.saturating_sub(1);
                    if pkid == 0 {
                        drop(tracker);
                        // QoS 0: written is all the protocol offers.
                        confirm(metrics, Some(entry));
                    } else {
                        tracker.in_flight.insert(pkid, entry);
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                metrics.mqtt_connected.set(0);
                return;
            }
            Ok(_) => {}
            Err(err) => {
                metrics.mqtt_connected.set(0);
                metrics.mqtt_connection_errors.inc();
                if let Some(since) = connected_at.take() {
                    restore_order(&mut eventloop, &mut lock(&shared.tracker));
                    if since.elapsed() >= STABLE_CONNECTION {
                        backoff.reset();
                    }
                    tracing::warn!(broker = %endpoint, error = %describe(&err),
                        "MQTT connection lost; reconnecting with backoff");
                    last_error = Some(describe(&err));
                } else {
                    let text = describe(&err);
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(broker = %endpoint, error = %text,
                            "cannot connect to MQTT broker; retrying with backoff");
                        last_error = Some(text);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// After an established connection broke, rumqttc has put into `pending` the
/// requests not yet written (packet id 0: the oldest entries of `awaiting`)
/// and, *after* whatever `pending` still held, the unacknowledged publishes.
/// The latter are older than anything still waiting, so this puts them back
/// in front, in submission order (PubRels first), and records how many
/// `awaiting` entries now sit in `pending` (lost if the session is).
fn restore_order(eventloop: &mut EventLoop, tracker: &mut Tracker) {
    let mut releases = Vec::new();
    let mut replays = Vec::new();
    let mut fresh = Vec::new();
    let mut other = Vec::new();
    for request in std::mem::take(&mut eventloop.pending) {
        match &request {
            Request::PubRel(_) => releases.push(request),
            Request::Publish(p) if p.pkid != 0 => {
                let seq = tracker.in_flight.get(&p.pkid).map_or(u64::MAX, |e| e.seq);
                replays.push((seq, request));
            }
            Request::Publish(_) => fresh.push(request),
            _ => other.push(request),
        }
    }
    replays.sort_by_key(|(seq, _)| *seq);
    tracker.drained = fresh.len();
    eventloop.pending.extend(releases);
    eventloop
        .pending
        .extend(replays.into_iter().map(|(_, r)| r));
    eventloop.pending.extend(fresh);
    eventloop.pending.extend(other);
}

/// After a ConnAck: re-send what a lost session dropped, then the birth
/// message. Returns how many data messages were re-sent.
fn on_connected(shared: &Shared, eventloop: &mut EventLoop, session_present: bool) -> usize {
    let mut tracker = lock(&shared.tracker);
    let mut resent = 0;
    let mut in_pending = tracker.drained;
    if !session_present {
        // rumqttc cleared its pending queue: everything in flight and every
        // drained request is gone from it. Re-send our copies, oldest first.
        let mut lost: Vec<Entry> = tracker.in_flight.drain().map(|(_, e)| e).collect();
        lost.extend(tracker.releasing.drain().map(|(_, e)| e));
        let drained = tracker.drained.min(tracker.awaiting.len());
        lost.extend(tracker.awaiting.drain(..drained));
        // Packet ids wrap around; submission order is the true order.
        lost.sort_by_key(|e| e.seq);
        resent = lost.iter().filter(|e| !e.status).count();
        if resent > 0 {
            shared.metrics.mqtt_retransmitted.inc_by(resent as u64);
            tracing::warn!(
                resent,
                "broker did not keep our session; re-sending unconfirmed messages"
            );
        }
        for entry in lost.iter() {
            eventloop.pending.push_back(entry.to_request());
        }
        in_pending = lost.len();
        for entry in lost.into_iter().rev() {
            tracker.awaiting.push_front(entry);
        }
    }
    // Birth message, after the re-sends (pending is sent before anything new).
    let birth = Entry {
        topic: shared.status_topic.clone(),
        payload: Bytes::from_static(b"online"),
        qos: QoS::AtLeastOnce,
        retain: true,
        status: true,
        seq: 0,
    };
    eventloop.pending.push_back(birth.to_request());
    let at = in_pending.min(tracker.awaiting.len());
    tracker.awaiting.insert(at, birth);
    tracker.drained = at + 1;
    resent
}

fn confirm(metrics: &Metrics, entry: Option<Entry>) {
    if let Some(entry) = entry
        && !entry.status
    {
        metrics.mqtt_delivered.inc();
    }
}

/// A one-line reason an operator can act on.
fn describe(err: &ConnectionError) -> String {
    match err {
        ConnectionError::ConnectionRefused(code) => {
            format!(
                "broker refused the connection: {code:?} (check credentials, client id and ACLs)"
            )
        }
        ConnectionError::Io(e) => format!("network: {e}"),
        other => other.to_string(),
    }
}
