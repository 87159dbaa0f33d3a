//! The connection task: the one owner of rumqttc's event loop. It takes
//! messages from the backlog or the outbox, hands them over under the
//! tracker's packet ids, polls, settles acknowledgements and refusals, and
//! reconnects with backoff; why it works this way is in the `sink::mqtt` docs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::commands::route_command;
use super::link::{Link, LinkEvent, Refusal};
use super::tracker::Tracker;
use super::{BIRTH, Entry, Shared};
use crate::backoff::Backoff;
use crate::metrics::{Metrics, SinkDrop};
use crate::model::Sink;
use crate::ratelimit::RateLimiter;
use crate::sink::dead_letter::{Content, DeadLetter};
use crate::sink::durable::DurableQueue;
use crate::sink::record;
use crate::sync::lock;

/// A connection that lasted this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

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
    /// The outbox's next sequence number when a read last found nothing
    /// more: until it changes, reading again would find nothing either.
    exhausted_at: Option<u64>,
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
    // Taken before the read: an append during it changes the value.
    let next_seq = feed.appended.as_mut().map(|a| *a.borrow_and_update());
    if !closed && next_seq.is_some() && next_seq == feed.exhausted_at {
        return 0;
    }
    // Items read stay in the outbox (and in `unconfirmed`) until acked.
    let mut batch = Vec::new();
    let read = read_outbox(shared, durable, &mut feed.cursor, &mut batch);
    // Only an empty read says there is nothing more: a short one may have
    // stopped at the byte limit.
    feed.exhausted_at = read.filter(|&n| n == 0).and(next_seq);
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
/// does not decode is counted, removed and skipped. Returns how many items
/// were read (`None` if the read failed).
fn read_outbox(
    shared: &Shared,
    durable: &DurableQueue,
    cursor: &mut Option<u64>,
    batch: &mut Vec<Entry>,
) -> Option<usize> {
    let items = match durable.read_after(*cursor, TAKE_BATCH) {
        Ok(items) => items,
        Err(err) => {
            tracing::error!(error = %err, "MQTT outbox: cannot read; retrying");
            return None;
        }
    };
    let read = items.len();
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
    Some(read)
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
/// acknowledgements, reconnects with backoff (see the `sink::mqtt` docs).
pub(super) async fn drive_connection(
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
        exhausted_at: None,
    };
    let mut connected_at: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    let mut warnings = RateLimiter::new(5, Duration::from_secs(10));
    let mut disconnecting = false;
    loop {
        let connected = connected_at.is_some();
        // A frame's acknowledgements arrive together, and rumqttc returns
        // them one `poll` at a time: the ones it already holds are applied
        // in a row, without handing over, locking or selecting between
        // them (the same order as polling).
        let buffered = if connected {
            link.next_buffered()
        } else {
            None
        };
        let event = if let Some(event) = buffered {
            Ok(event)
        } else {
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
            // rumqttc's queue empty (`sink::mqtt` docs).
            let interruptible = connected
                && !disconnecting
                && link.pending_len() == 0
                && (lock(&shared.tracker).has_free_id() || shutting_down);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                event = link.poll() => event,
                () = new_work(&shared, &mut feed), if interruptible => continue,
            }
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
        } => {
            route_command(&shared.routes, &topic, &payload, retain, warnings);
        }
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

/// Removes an acknowledged entry from the tracker with `take` and counts it
/// as delivered, or as refused when the broker said so, then wakes
/// [`MqttSink::flush`](super::MqttSink::flush) if nothing is left unconfirmed. The entry is counted
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
