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
//! The protocol differences live in `link.rs`.

mod link;
mod tracker;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::MqttConfig;
use crate::metrics::serial::SerialMetrics;
use crate::metrics::{Metrics, SinkDrop};
use crate::model::{DownlinkCommand, MqttMessage, Qos, Sink};
use crate::outbox::QueueFullPolicy;
use crate::ratelimit::RateLimiter;
use crate::sink::dead_letter::{Content, DeadLetter, DeadLetters};
use crate::sink::durable::DurableQueue;
use crate::sink::record;
use crate::sync::lock;
use link::{Link, LinkEvent, Refusal};
use tracker::Tracker;

/// The payload of the birth message (retained on the status topic).
const BIRTH: &[u8] = b"online";

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
    /// The dead-letter file could not be opened.
    #[error("cannot open the MQTT dead-letter file {}: {source}", path.display())]
    DeadLetters {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Where the commands for one pipeline go (see the module docs).
#[derive(Debug)]
pub struct CommandRoute {
    /// The pipeline (logs).
    pub pipeline: String,
    /// The topic filter subscribed to.
    pub filter: String,
    /// Subscription QoS.
    pub qos: Qos,
    /// Hand over retained messages too.
    pub accept_retained: bool,
    /// The pipeline worker's command queue.
    pub commands: mpsc::Sender<DownlinkCommand>,
    /// Where refused commands are counted.
    pub metrics: SerialMetrics,
}

/// One message on its way to the broker.
#[derive(Debug, Clone)]
struct Entry {
    topic: String,
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
            payload: Bytes::from(message.payload),
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
            topic: topic.to_owned(),
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
    /// Connects (in the background) and starts the publisher.
    pub fn start(config: &MqttConfig, metrics: Arc<Metrics>) -> Result<MqttSink, MqttSetupError> {
        Self::start_with(config, metrics, Vec::new(), None, None)
    }

    /// [`start`](Self::start), also subscribing to the pipelines' downlink
    /// command topics (handing matching messages to `routes`), and keeping
    /// data messages in `durable` until the broker confirms them. Messages
    /// already in `durable` (from before a restart) are sent first. With a
    /// `data_dir`, messages set aside go to `<data_dir>/dead-letter/mqtt.jsonl`.
    pub fn start_with(
        config: &MqttConfig,
        metrics: Arc<Metrics>,
        routes: Vec<CommandRoute>,
        durable: Option<Arc<DurableQueue>>,
        data_dir: Option<&std::path::Path>,
    ) -> Result<MqttSink, MqttSetupError> {
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
        match &self.shared.durable {
            Some(durable) => {
                if !durable.push(record::mqtt_to_vec(&message)).await {
                    self.shared
                        .metrics
                        .sink_dropped(Sink::Mqtt, SinkDrop::OutboxClosed);
                }
            }
            None => self.push(Entry::data(message)).await,
        }
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
                            .sink_dropped(Sink::Mqtt, SinkDrop::QueueFullDropOldest);
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
        let _ = tokio::time::timeout_at(deadline, self.push(offline)).await;
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

/// Entries taken from the backlog or the outbox per round.
const TAKE_BATCH: usize = 64;

/// Requests kept in rumqttc's queue: enough to keep the connection busy
/// between polls, few enough that the sink keeps the rest.
const PENDING_TARGET: usize = 32;

/// Where the connection task takes new messages from.
struct Feed {
    /// The last outbox item taken.
    cursor: Option<u64>,
    /// Changes when the outbox grew.
    appended: Option<tokio::sync::watch::Receiver<u64>>,
}

/// Tops up rumqttc's queue from the tracker, taking more from the backlog
/// or the outbox whenever the tracker has nothing staged.
fn hand_over(shared: &Shared, link: &mut Link, feed: &mut Feed) {
    loop {
        let room = PENDING_TARGET.saturating_sub(link.pending_len());
        if room == 0 {
            return;
        }
        let mut tracker = lock(&shared.tracker);
        let mut handed = 0;
        while handed < room {
            let Some((pkid, entry)) = tracker.hand_over() else {
                break;
            };
            link.push_publish(pkid, entry);
            handed += 1;
        }
        if handed == room || tracker.has_staged() {
            // The queue or the window is full.
            return;
        }
        drop(tracker);
        if take(shared, feed) == 0 {
            return;
        }
    }
}

/// Stages the next messages, oldest first: the in-memory backlog (status
/// messages, and data without an outbox), then the durable outbox after the
/// last item taken. Returns how many were taken (some may have been refused
/// at once, see [`stage`]).
fn take(shared: &Shared, feed: &mut Feed) -> usize {
    let closed = {
        let mut backlog = lock(&shared.backlog);
        let taken = backlog.queue.len().min(TAKE_BATCH);
        if taken > 0 {
            let batch: Vec<Entry> = backlog.queue.drain(..taken).collect();
            shared.metrics.mqtt_backlog.set(backlog.queue.len() as i64);
            // Staged before the backlog is unlocked, so `unconfirmed` (and
            // with it `flush`) never misses a message between the two.
            stage(shared, batch);
            drop(backlog);
            shared.drained.notify_waiters();
            return taken;
        }
        backlog.closed
    };
    let Some(durable) = &shared.durable else {
        return 0;
    };
    if let Some(appended) = &mut feed.appended {
        appended.borrow_and_update();
    }
    // Items read stay in the outbox (and in `unconfirmed`) until acked.
    let mut batch = Vec::new();
    read_outbox(shared, durable, &mut feed.cursor, &mut batch);
    // Read from the outbox itself, so items it evicted or expired before
    // they were taken are not waited for.
    if batch.is_empty()
        && closed
        && durable.is_sealed()
        && durable
            .read_after(feed.cursor, 1)
            .is_ok_and(|rest| rest.is_empty())
    {
        shared.outbox_handed_over.store(true, Ordering::SeqCst);
    }
    let taken = batch.len();
    stage(shared, batch);
    // Only now: until staged, `unconfirmed` counts them as unread.
    if let Some(last) = feed.cursor {
        shared.outbox_taken.store(last + 1, Ordering::SeqCst);
    }
    taken
}

/// Hands taken messages to the tracker, after refusing those the broker
/// announced it would refuse.
fn stage(shared: &Shared, mut batch: Vec<Entry>) {
    refuse_oversized(shared, &mut batch);
    let data = batch.iter().filter(|e| !e.status).count();
    shared.metrics.mqtt_queued.inc_by(data as u64);
    lock(&shared.tracker).stage(batch);
}

/// Waits until there may be something new to take: the backlog was
/// filled, the outbox grew, or (while shutting down) now and then, since
/// sealing the outbox does not append.
async fn new_work(shared: &Shared, feed: &mut Feed) {
    let closed = lock(&shared.backlog).closed;
    let filled = shared.filled.notified();
    match &mut feed.appended {
        Some(appended) => {
            tokio::select! {
                _ = filled => {}
                changed = appended.changed() => {
                    if changed.is_err() {
                        // The outbox is gone (shutdown): nothing more comes from it.
                        feed.appended = None;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(50)), if closed => {}
            }
        }
        None => filled.await,
    }
}

/// Reads the next outbox items after `cursor` into `batch`. A record that
/// does not decode is counted, removed and skipped.
fn read_outbox(
    shared: &Shared,
    durable: &DurableQueue,
    cursor: &mut Option<u64>,
    batch: &mut Vec<Entry>,
) {
    let items = match durable.read_after(*cursor, TAKE_BATCH) {
        Ok(items) => items,
        Err(err) => {
            tracing::error!(error = %err, "MQTT outbox: cannot read; retrying");
            return;
        }
    };
    for item in items {
        *cursor = Some(item.seq);
        match record::decode_mqtt(&item.record) {
            Ok(message) => {
                let mut entry = Entry::data(message);
                entry.seq = item.seq;
                entry.durable = Some(item.seq);
                entry.accepted_ns = item.enqueued_ms.saturating_mul(1_000_000);
                batch.push(entry);
            }
            Err(err) => {
                shared
                    .metrics
                    .sink_dropped(Sink::Mqtt, SinkDrop::OutboxCorruptRecord);
                tracing::error!(seq = item.seq, error = %err, "MQTT outbox: undecodable record dropped");
                durable.ack(item.seq);
            }
        }
    }
}

/// Refuses (counts, logs, settles) the entries of `batch` that exceed the
/// broker's announced maximum packet size: rumqttc would fail the
/// connection on such a packet, and again after every reconnect.
fn refuse_oversized(shared: &Shared, batch: &mut Vec<Entry>) {
    let max = shared.broker_max_packet.load(Ordering::Relaxed) as usize;
    if max == 0 || batch.iter().all(|e| e.packet_size() <= max) {
        return;
    }
    batch.retain(|entry| {
        if entry.packet_size() <= max {
            return true;
        }
        let refusal = Refusal {
            code: "exceeds_broker_max_packet",
            reason: Some(format!(
                "packet of up to {} bytes, the broker accepts {max}",
                entry.packet_size()
            )),
        };
        refused(shared, entry, &refusal);
        false
    });
}

/// The connection task: hands messages to the event loop, polls it, settles
/// acknowledgements, reconnects with backoff (see the module docs).
async fn drive_connection(
    mut link: Link,
    mut backoff: Backoff,
    endpoint: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
    max_inflight: u16,
) {
    let metrics = &shared.metrics;
    let mut feed = Feed {
        cursor: None,
        appended: shared.durable.as_ref().map(|d| d.appended()),
    };
    let mut connected_at: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    let mut warnings = RateLimiter::new(5, Duration::from_secs(10));
    let mut disconnecting = false;
    loop {
        let connected = connected_at.is_some();
        let shutting_down = shared.disconnect.load(Ordering::SeqCst);
        if connected && shutting_down && !disconnecting {
            link.push_disconnect();
            disconnecting = true;
        } else if connected && !disconnecting {
            hand_over(&shared, &mut link, &mut feed);
        } else if !connected && shutting_down {
            return;
        }
        // Dropping `poll` for new work is safe only when it starts with
        // rumqttc's queue empty (module docs).
        let interruptible = connected
            && !disconnecting
            && link.pending_len() == 0
            && (lock(&shared.tracker).has_free_id() || shutting_down);
        let event = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            event = link.poll() => event,
            () = new_work(&shared, &mut feed), if interruptible => continue,
        };
        match event {
            Ok(LinkEvent::Connected {
                session_present,
                max_packet_size,
                receive_max,
            }) => {
                connected_at = Some(Instant::now());
                last_error = None;
                metrics.mqtt_connected.set(1);
                shared
                    .broker_max_packet
                    .store(max_packet_size.unwrap_or(0), Ordering::Relaxed);
                let window = receive_max.map_or(max_inflight, |r| r.clamp(1, max_inflight));
                let resent = {
                    let mut tracker = lock(&shared.tracker);
                    let resent = tracker.connected(session_present, window);
                    tracker.stage_after_resends(Entry::status(&shared.status_topic, BIRTH));
                    resent
                };
                metrics.mqtt_retransmitted.inc_by(resent as u64);
                if !shared.routes.is_empty() {
                    link.push_subscribe(&shared.routes);
                }
                if !session_present && resent > 0 {
                    tracing::warn!(
                        resent,
                        "broker did not keep our session; re-sending unconfirmed messages"
                    );
                }
                tracing::info!(broker = %endpoint, session_present, resent, "MQTT connected");
            }
            Ok(event) => {
                if !apply(&shared, event, &mut warnings) {
                    metrics.mqtt_connected.set(0);
                    return;
                }
            }
            Err(text) => {
                metrics.mqtt_connected.set(0);
                metrics.mqtt_connection_errors.inc();
                if let Some(since) = connected_at.take() {
                    // What rumqttc read before the break (acks that did
                    // arrive) belongs to the old connection: apply it before
                    // taking the rest back.
                    for event in link.take_buffered_events() {
                        apply(&shared, event, &mut warnings);
                    }
                    link.drop_pending_publishes();
                    let poisoned = lock(&shared.tracker).connection_lost();
                    for entry in poisoned {
                        set_aside(&shared, &entry);
                    }
                    disconnecting = false;
                    if since.elapsed() >= STABLE_CONNECTION {
                        backoff.reset();
                    }
                    tracing::warn!(broker = %endpoint, error = %text,
                        "MQTT connection lost; reconnecting with backoff");
                    last_error = Some(text);
                } else {
                    // A failed connect leaves nothing that belongs to us.
                    link.take_buffered_events();
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

/// Applies one event of an established connection. Returns false when the
/// connection task should stop (our DISCONNECT was written).
fn apply(shared: &Shared, event: LinkEvent, warnings: &mut RateLimiter) -> bool {
    match event {
        LinkEvent::PubAck { pkid, refusal } => settle(shared, |t| t.acked(pkid), refusal),
        LinkEvent::PubRec {
            pkid,
            refusal: Some(refusal),
        } => {
            // Refused: no PubRel follows, the exchange ends here.
            settle(shared, |t| t.acked(pkid), Some(refusal));
        }
        LinkEvent::PubRec {
            pkid,
            refusal: None,
        } => lock(&shared.tracker).received(pkid),
        LinkEvent::PubComp { pkid } => settle(shared, |t| t.completed(pkid), None),
        LinkEvent::Sent(pkid) => {
            let written = lock(&shared.tracker).sent(pkid);
            if written.is_some() {
                // QoS 0: written is all the protocol offers.
                settle(shared, |_| written, None);
            }
        }
        LinkEvent::Command {
            topic,
            payload,
            retain,
        } => route_command(shared, &topic, &payload, retain, warnings),
        LinkEvent::SubAck(granted) => {
            for (granted, route) in granted.iter().zip(&shared.routes) {
                if *granted {
                    tracing::info!(pipeline = %route.pipeline, filter = %route.filter,
                        "downlink subscribed");
                } else {
                    tracing::error!(pipeline = %route.pipeline, filter = %route.filter,
                        "the broker refused the downlink subscription (ACL?); no commands will arrive");
                }
            }
        }
        LinkEvent::Disconnected => return false,
        LinkEvent::Connected { .. } | LinkEvent::Other => {}
    }
    true
}

/// Hands an incoming publish to every pipeline whose filter matches, without
/// waiting (this runs in the task that polls the event loop).
fn route_command(
    shared: &Shared,
    topic: &str,
    payload: &[u8],
    retain: bool,
    warnings: &mut RateLimiter,
) {
    for route in &shared.routes {
        if !crate::model::topic_matches_filter(topic, &route.filter) {
            continue;
        }
        if retain && !route.accept_retained {
            route.metrics.downlink_dropped("retained");
            if let Some(suppressed) = warnings.check() {
                tracing::warn!(pipeline = %route.pipeline, topic, suppressed,
                    "retained downlink command ignored (set downlink.accept_retained to take them)");
            }
            continue;
        }
        let command = DownlinkCommand {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
        };
        match route.commands.try_send(command) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                route.metrics.downlink_dropped("command_queue_full");
                if let Some(suppressed) = warnings.check() {
                    tracing::warn!(pipeline = %route.pipeline, topic, suppressed,
                        "downlink command dropped: the transform's command queue is full");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                route.metrics.downlink_dropped("shutdown");
            }
        }
    }
}

/// Removes an acknowledged entry from the tracker with `take` and counts it
/// as delivered, or as refused when the broker said so, then wakes
/// [`MqttSink::flush`] if nothing is left unconfirmed. The entry is counted
/// before the tracker lock is released: a flush that finds the tracker
/// empty (woken, or looking on its own) always sees the outcome.
fn settle(
    shared: &Shared,
    take: impl FnOnce(&mut Tracker) -> Option<Entry>,
    refusal: Option<Refusal>,
) {
    let mut tracker = lock(&shared.tracker);
    let entry = take(&mut tracker);
    let settled = tracker.unconfirmed() == 0;
    match (refusal, &entry) {
        (Some(refusal), Some(entry)) => refused(shared, entry, &refusal),
        _ => confirm(shared, entry),
    }
    drop(tracker);
    if settled {
        shared.settled.notify_waiters();
    }
}

fn confirm(shared: &Shared, entry: Option<Entry>) {
    if let Some(entry) = entry
        && !entry.status
    {
        shared.metrics.mqtt_delivered.inc();
        Metrics::observe_since(&shared.latency, entry.accepted_ns);
        if let (Some(seq), Some(durable)) = (entry.durable, &shared.durable) {
            durable.ack(seq);
        }
    }
}

/// A message the broker disconnects on (`tracker.rs`): dead-lettered with
/// its bytes when there is a data directory, counted, logged, removed from
/// the outbox; the messages behind it flow again.
fn set_aside(shared: &Shared, entry: &Entry) {
    match &shared.dead_letters {
        Some(letters) => letters.write(
            &[DeadLetter {
                reason: SinkDrop::BrokerDisconnects,
                status: None,
                message: "the broker closed the connection on this message every time it was sent",
                content: Content::Message {
                    topic: &entry.topic,
                    payload: &entry.payload,
                    qos: entry.qos as u8,
                    retain: entry.retain,
                },
            }],
            &shared.metrics,
        ),
        None => shared
            .metrics
            .sink_dropped(Sink::Mqtt, SinkDrop::BrokerDisconnects),
    }
    tracing::error!(topic = %entry.topic, bytes = entry.payload.len(),
        dead_letters = shared.dead_letters.as_ref().map(|d| d.path().display().to_string()),
        "the MQTT broker closes the connection on this message: set aside; the messages behind it go on");
    if let (Some(seq), Some(durable)) = (entry.durable, &shared.durable) {
        durable.ack(seq);
    }
}

/// A message the broker (or the broker's announced limit) refused: counted
/// by reason, logged with its topic (rate-limited), and removed from the
/// outbox — sending it again would be refused again.
fn refused(shared: &Shared, entry: &Entry, refusal: &Refusal) {
    shared
        .metrics
        .sink_dropped(Sink::Mqtt, SinkDrop::Refused(refusal.code));
    if let Some(suppressed) = lock(&shared.refusal_warnings).check() {
        tracing::warn!(topic = %entry.topic, code = refusal.code,
            reason = refusal.reason.as_deref().unwrap_or(""), suppressed,
            "the MQTT broker refused a publish; it is counted and not sent again");
    }
    if let (Some(seq), Some(durable)) = (entry.durable, &shared.durable) {
        durable.ack(seq);
    }
}
