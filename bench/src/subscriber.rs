//! The independent subscriber: a rumqttc client on its own thread,
//! subscribed to `iiot/#` with QoS 1, that timestamps every message as it
//! comes off the socket and assigns it to a frame.
//!
//! Every system under test publishes a frame's messages in the order the
//! values appear in the line, `iiot/stats/seq` (payload: the frame's
//! sequence number) first; one publisher connection and one subscriber
//! connection keep that order through the broker. So a `seq` message opens
//! frame `seq`, and the next ten messages belong to it. A frame is
//! *complete* when its eleventh message arrives; that time minus the
//! frame's write time is its end-to-end latency.
//!
//! Retained messages (delivered at subscribe time, left by an earlier
//! system under test) are skipped: live messages reach an existing
//! subscription with the retain flag clear (MQTT 3.1.1).
//!
//! It also subscribes to `spBv1.0/#` (QoS 0, as Sparkplug publishes): a
//! frame's Sparkplug data is *complete* when the message carrying its
//! `gateway_stats/seq` arrives (the edge node's NDATA, the frame's last
//! message; the first frame's value comes in the births).

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::feed::MESSAGES_PER_FRAME;
use crate::sparkplug;
use crate::util::mono_ns;

const SEQ_TOPIC: &str = "iiot/stats/seq";

/// What the subscriber has seen, indexed by `seq - first_seq`.
#[derive(Debug)]
pub struct Collected {
    first_seq: u64,
    /// Messages assigned to each frame.
    pub counts: Vec<u8>,
    /// When each frame completed ([`mono_ns`]; 0 = not yet).
    pub done_ns: Vec<u64>,
    /// The frame the next message belongs to.
    current: Option<usize>,
    /// Frames completed so far.
    pub completed: u64,
    /// Messages assigned to a frame.
    pub messages: u64,
    /// Messages before any `seq` message, or after one out of range.
    pub unassigned: u64,
    /// `seq` messages with a number outside the expected range.
    pub out_of_range: u64,
    /// Messages beyond a frame's eleven (duplicates or reordering).
    pub surplus: u64,
    /// Retained messages skipped.
    pub retained_skipped: u64,
    /// When the last message arrived.
    pub last_ns: u64,
    /// Frames (indices) being waited for…
    watch: std::ops::Range<usize>,
    /// …and how many of them are complete.
    watch_completed: usize,
    /// Connection errors after the subscription was up.
    pub errors: Vec<String>,
    /// When each frame's Sparkplug data arrived ([`mono_ns`]; 0 = not yet).
    pub sparkplug_done_ns: Vec<u64>,
    /// The alias of `gateway_stats/seq`, from the last birth declaring it.
    sparkplug_seq_alias: Option<u64>,
}

impl Collected {
    fn new(first_seq: u64, capacity: usize) -> Self {
        Collected {
            first_seq,
            counts: vec![0; capacity],
            done_ns: vec![0; capacity],
            current: None,
            completed: 0,
            messages: 0,
            unassigned: 0,
            out_of_range: 0,
            surplus: 0,
            retained_skipped: 0,
            last_ns: 0,
            watch: 0..0,
            watch_completed: 0,
            errors: Vec::new(),
            sparkplug_done_ns: vec![0; capacity],
            sparkplug_seq_alias: None,
        }
    }

    fn record(&mut self, topic: &str, payload: &[u8], retain: bool, now: u64) {
        if retain {
            self.retained_skipped += 1;
            return;
        }
        if topic.starts_with("spBv1.0/") {
            self.record_sparkplug(payload, now);
            return;
        }
        self.last_ns = now;
        if topic == SEQ_TOPIC {
            let seq = std::str::from_utf8(payload)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok());
            self.current = seq
                .and_then(|s| s.checked_sub(self.first_seq))
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < self.counts.len());
            if self.current.is_none() {
                self.out_of_range += 1;
            }
        }
        let Some(i) = self.current else {
            self.unassigned += 1;
            return;
        };
        self.messages += 1;
        let count = &mut self.counts[i];
        *count = count.saturating_add(1);
        if u32::from(*count) == MESSAGES_PER_FRAME {
            self.done_ns[i] = now;
            self.completed += 1;
            if self.watch.contains(&i) {
                self.watch_completed += 1;
            }
        } else if u32::from(*count) > MESSAGES_PER_FRAME {
            self.surplus += 1;
        }
    }

    /// A Sparkplug message: a birth names the alias of the frame's
    /// sequence number; the metric with that alias marks its frame.
    fn record_sparkplug(&mut self, payload: &[u8], now: u64) {
        use prost::Message as _;
        let Ok(payload) = sparkplug::Payload::decode(payload) else {
            return;
        };
        for metric in payload.metrics {
            if metric.name.as_deref() == Some(sparkplug::SEQ_METRIC) {
                self.sparkplug_seq_alias = metric.alias;
            } else if metric.alias.is_none() || metric.alias != self.sparkplug_seq_alias {
                continue;
            }
            let frame = metric
                .long_value
                .and_then(|seq| seq.checked_sub(self.first_seq))
                .and_then(|i| usize::try_from(i).ok());
            if let Some(done) = frame.and_then(|i| self.sparkplug_done_ns.get_mut(i))
                && *done == 0
            {
                *done = now;
            }
        }
    }

    /// The index of frame `seq`.
    pub fn index(&self, seq: u64) -> usize {
        usize::try_from(seq - self.first_seq).unwrap_or(usize::MAX)
    }
}

/// A running subscriber.
pub struct Subscriber {
    state: Arc<Mutex<Collected>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Connects, subscribes, and returns once the broker acknowledged the
    /// subscription. Frames `first_seq .. first_seq + capacity` are tracked.
    pub fn start(
        port: u16,
        client_id: &str,
        first_seq: u64,
        capacity: usize,
    ) -> Result<Subscriber> {
        let state = Arc::new(Mutex::new(Collected::new(first_seq, capacity)));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::clone(&state);
        let client_id = client_id.to_owned();
        let thread = std::thread::Builder::new()
            .name("subscriber".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("tokio runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(run(port, client_id, shared, ready_tx, stop_rx));
            })
            .context("spawning the subscriber thread")?;
        let outcome = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("the subscriber got no SUBACK within 10 s"))?;
        outcome.map_err(|e| anyhow!("subscriber: {e}"))?;
        Ok(Subscriber {
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Runs `f` on the collected state (under the subscriber's lock: keep it short).
    pub fn with<T>(&self, f: impl FnOnce(&Collected) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Waits until `f` holds, polling every 2 ms, at most `timeout`.
    pub fn wait_until(&self, timeout: Duration, f: impl Fn(&Collected) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.with(&f) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until frames `first_seq .. first_seq + count` are all complete,
    /// or nothing arrived for `idle`, or `cap` passed. Returns whether all
    /// completed.
    pub fn wait_frames(&self, first_seq: u64, count: u64, idle: Duration, cap: Duration) -> bool {
        let want = self.with_mut(|c| {
            let start = c.index(first_seq).min(c.counts.len());
            let end = start
                .saturating_add(usize::try_from(count).unwrap_or(usize::MAX))
                .min(c.counts.len());
            c.watch = start..end;
            c.watch_completed = c.done_ns[start..end].iter().filter(|&&t| t != 0).count();
            end - start
        });
        let deadline = Instant::now() + cap;
        let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        let started = mono_ns();
        loop {
            let (done, last) = self.with(|c| (c.watch_completed, c.last_ns));
            if done >= want {
                return true;
            }
            let now = mono_ns();
            if now.saturating_sub(last.max(started)) > idle_ns || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn with_mut<T>(&self, f: impl FnOnce(&mut Collected) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Disconnects and returns everything collected.
    pub fn finish(mut self) -> Collected {
        self.shutdown();
        let empty = Collected::new(0, 0);
        std::mem::replace(
            &mut *self.state.lock().unwrap_or_else(PoisonError::into_inner),
            empty,
        )
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn run(
    port: u16,
    client_id: String,
    state: Arc<Mutex<Collected>>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    // No Nagle: the subscriber's PUBACKs must not wait for the broker's
    // delayed ACK, or the broker's in-flight window to it stalls for 40 ms
    // whenever messages come in bursts, and that is measured as latency.
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let filters = [
        rumqttc::SubscribeFilter::new("iiot/#".into(), QoS::AtLeastOnce),
        rumqttc::SubscribeFilter::new("spBv1.0/#".into(), QoS::AtMostOnce),
    ];
    if let Err(e) = client.subscribe_many(filters).await {
        let _ = ready.send(Err(format!("subscribe request: {e}")));
        return;
    }
    let mut ready = Some(ready);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = mono_ns();
                    state
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(&p.topic, &p.payload, p.retain, now);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Err(format!("connecting to 127.0.0.1:{port}: {e}")));
                        return;
                    }
                    state
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .errors
                        .push(e.to_string());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(c: &mut Collected, seq: u64, messages: u32, now: u64) {
        c.record(SEQ_TOPIC, seq.to_string().as_bytes(), false, now);
        for _ in 1..messages {
            c.record("iiot/node1/temperature", b"27.6", false, now);
        }
    }

    #[test]
    fn assigns_messages_to_the_frame_opened_by_its_seq_message() {
        let mut c = Collected::new(10, 5);
        c.record("iiot/node1/temperature", b"1", true, 1); // retained: skipped
        c.record("iiot/node1/temperature", b"1", false, 1); // before any seq
        frame(&mut c, 10, 11, 100);
        frame(&mut c, 11, 10, 200); // one lost
        frame(&mut c, 12, 12, 300); // one surplus
        frame(&mut c, 99, 11, 400); // out of range
        assert_eq!(c.retained_skipped, 1);
        assert_eq!(c.unassigned, 1 + 11);
        assert_eq!(c.out_of_range, 1);
        assert_eq!(c.completed, 2);
        assert_eq!(c.surplus, 1);
        assert_eq!(&c.counts[..3], &[11, 10, 12]);
        assert_eq!(&c.done_ns[..3], &[100, 0, 300]);
        assert_eq!(c.messages, 33);
    }
}
