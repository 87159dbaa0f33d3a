//! The InfluxDB sink: exact line protocol, batched, gzip'd writes over the
//! v1, v2 or v3 HTTP API, retries that never drop data, and a dead-letter
//! file for what the server refuses.
//!
//! * [`crate::config::influx`] — `[influx]`, secrets from env/file.
//! * [`line_protocol`] — the encoder (escaping, types, precision).
//! * [`writer`] — batching, bounded in-flight batches, retry/split/isolate,
//!   settlement events ([`writer::DeliveryHook`]).
//! * [`transport`] — the HTTP request (reqwest) and `Retry-After`.
//! * [`crate::sink::dead_letter`] — `<data_dir>/dead-letter/influx.jsonl`, rotated.
//!
//! [`InfluxSink::start`] wires them: in memory, the pipelines' points go
//! through a bounded channel (backpressure when InfluxDB is slow or away) to
//! the writer task. Shutdown: drop the sender, then [`InfluxSink::finish`]
//! waits for every batch to settle, up to a deadline after which the rest
//! is dead-lettered (`shutdown_undelivered`).
//!
//! With a durable queue in the [`SinkContext`], the outbox is in front:
//!
//! ```text
//! router ─► DurableQueue (outbox, group commit) ─► feeder task ─► writer ─► InfluxDB
//!                 ▲                                   │ writer seq → outbox seq
//!                 └──────────── ack ◄── DeliveryHook ◄┘ (delivered or dead-lettered)
//! ```
//!
//! A point leaves the outbox only once the writer settled it. An InfluxDB
//! outage then fills the outbox on disk (bounded by `[influx.outbox]`)
//! instead of the router's channel, so it no longer holds up MQTT. At
//! shutdown nothing is dead-lettered for lack of time: what is unsettled at
//! the deadline stays in the outbox and is written after the next start
//! (rewriting a point with the same series and timestamp is idempotent).

pub mod line_protocol;
pub mod transport;
pub mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::influx::InfluxConfig;
use crate::metrics::SinkDrop;
use crate::model::Sink;
use crate::sync::lock;

use crate::metrics::Metrics;
use crate::model::Point;
use crate::outbox::{Drain, Item, OutboxError};
use crate::sink::SinkContext;
use crate::sink::dead_letter::DeadLetters;
use crate::sink::durable::DurableQueue;
use crate::sink::record;
use transport::HttpTransport;
use writer::{DeliveryHook, NoHook, Shared, WriterSettings};

/// Why the sink did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A secret could not be read.
    #[error(transparent)]
    Credentials(#[from] crate::config::influx::CredentialError),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// No `data_dir` and no home directory to keep dead letters in.
    #[error("influx: set data_dir (dead letters are kept in <data_dir>/dead-letter/)")]
    NoDataDir,
    /// The dead-letter file could not be created.
    #[error("influx: cannot open the dead-letter file {path}: {source}")]
    DeadLetters {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The running writer.
pub struct InfluxSink {
    task: tokio::task::JoinHandle<()>,
    give_up: CancellationToken,
    metrics: Arc<Metrics>,
    /// With the durable outbox: the queue, the feeder task and when
    /// shutdown stops waiting.
    durable: Option<DurableParts>,
    /// The writer's channel (see [`InfluxSink::writer_queue`]).
    writer_queue: mpsc::WeakSender<Point>,
}

struct DurableParts {
    queue: Arc<DurableQueue>,
    feeder: tokio::task::JoinHandle<()>,
    stop_feeding: CancellationToken,
    deadline: Mutex<Option<tokio::time::Instant>>,
}

/// Where the router puts points.
#[derive(Clone)]
pub enum InfluxInput {
    /// Straight into the writer's bounded channel.
    Direct(mpsc::Sender<Point>),
    /// Into the durable outbox (the feeder hands them to the writer).
    Durable(Arc<DurableQueue>),
}

impl InfluxInput {
    /// Queues `point`, waiting while the queue is full (backpressure).
    /// False when the sink has stopped.
    pub async fn send(&self, point: Point) -> bool {
        match self {
            InfluxInput::Direct(tx) => tx.send(point).await.is_ok(),
            InfluxInput::Durable(queue) => queue.push(record::point_to_vec(&point)).await,
        }
    }
}

/// Maps the writer's sequence numbers (assigned in the order the feeder
/// sends) to outbox sequence numbers, and acks settled points.
struct OutboxHook {
    /// Writer sequence number → (outbox sequence number, when it was
    /// appended to the outbox, ms since the Unix epoch).
    outbox_seq: Mutex<HashMap<u64, (u64, u64)>>,
    /// `end_to_end_seconds{sink="influx"}`, observed for written points.
    latency: prometheus_client::metrics::histogram::Histogram,
    queue: Arc<DurableQueue>,
    /// Wakes the feeder when points settled (room in its window).
    settled: tokio::sync::Notify,
}

impl OutboxHook {
    fn settle(&self, seqs: &[u64], written: bool) {
        let mut map = lock(&self.outbox_seq);
        for seq in seqs {
            if let Some((outbox_seq, enqueued_ms)) = map.remove(seq) {
                self.queue.ack(outbox_seq);
                if written {
                    Metrics::observe_since(&self.latency, enqueued_ms.saturating_mul(1_000_000));
                }
            }
        }
        drop(map);
        self.settled.notify_one();
    }

    /// Points handed to the writer and not settled yet.
    fn unsettled(&self) -> usize {
        lock(&self.outbox_seq).len()
    }
}

impl DeliveryHook for OutboxHook {
    fn delivered(&self, seqs: &[u64]) {
        self.settle(seqs, true);
    }
    fn dead_lettered(&self, seqs: &[u64]) {
        self.settle(seqs, false);
    }
}

/// How the feeder paces: its window and the backlog's rate.
#[derive(Debug, Clone, Copy)]
struct Pacing {
    /// Points handed to the writer and not settled, at most: what the writer
    /// can have in batches (`batch_lines × (max_batches_in_flight + 1)`).
    /// During an outage this much waits in the writer's memory; the rest
    /// stays in the outbox and, once behind by more than a window, becomes
    /// backlog.
    window: usize,
    /// Backlog points per second; `None` = unlimited.
    backfill_per_sec: Option<u32>,
    /// Live reads at most this often: the writer holds lines for
    /// `flush_interval_ms` anyway, so reading after every commit of the
    /// log would cost a wake-up per commit and gain nothing.
    live_every: Duration,
}

impl Pacing {
    fn from_config(config: &InfluxConfig) -> Pacing {
        Pacing {
            window: config
                .batch_lines
                .get()
                .saturating_mul(config.max_batches_in_flight.get().saturating_add(1)),
            backfill_per_sec: (config.backfill_points_per_sec > 0)
                .then_some(config.backfill_points_per_sec),
            live_every: (Duration::from_millis(config.flush_interval_ms.get()) / 20)
                .min(MAX_LIVE_EVERY),
        }
    }
}

/// A token bucket for the backlog: `per_sec` tokens a second, at most one
/// second's worth saved up.
struct Bucket {
    per_sec: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    fn new(per_sec: u32) -> Bucket {
        Bucket {
            per_sec: f64::from(per_sec),
            tokens: 0.0,
            at: tokio::time::Instant::now(),
        }
    }

    /// Whole tokens available now.
    fn available(&mut self) -> usize {
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec.max(1.0));
        self.tokens as usize
    }

    fn take(&mut self, n: usize) {
        self.tokens = (self.tokens - n as f64).max(0.0);
    }

    /// How long until the next token.
    fn next_in(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens).max(0.0) / self.per_sec).min(1.0))
    }
}

/// Reads the outbox and hands the points to the writer, recording which
/// writer sequence number each got: live first, backlog paced.
///
/// * Points that were in the outbox at start-up are backlog; so are points
///   that piled up while the writer could not keep up (InfluxDB away): when
///   the feeder finds more than a window of unsent live points, it defers
///   them to the backlog ([`Drain::defer_live`]) and serves points appended
///   after that moment first.
/// * The backlog is handed out oldest first, at most `backfill_per_sec`,
///   and only while less than half the window is unsettled, so new points
///   always find room. Points carry their own timestamps, so InfluxDB does
///   not care in which order they are written.
/// * Acks stay per point: a point leaves the outbox only when settled.
///
/// Ends when the queue is sealed and every live point was handed over (the
/// backlog stays in the outbox for the next start), or on `stop`.
async fn feed(
    queue: Arc<DurableQueue>,
    points: mpsc::Sender<Point>,
    hook: Arc<OutboxHook>,
    metrics: Arc<Metrics>,
    pacing: Pacing,
    stop: CancellationToken,
) {
    let outbox = queue.outbox();
    let mut appended = queue.appended();
    let mut drain = Drain::new(outbox.next_seq());
    let mut bucket = pacing.backfill_per_sec.map(Bucket::new);
    let mut handover = Handover {
        points,
        hook: hook.clone(),
        metrics,
        queue: queue.clone(),
        writer_seq: 0,
        stop: stop.clone(),
    };
    let mut backlog_logged = outbox.stats().depth_items > 0;
    let mut last_live_read = tokio::time::Instant::now();
    loop {
        appended.borrow_and_update();
        let settled = hook.settled.notified();
        tokio::pin!(settled);
        settled.as_mut().enable();
        let sealed = queue.is_sealed();
        let mut handed = 0;
        let mut live_left = false;
        let unsettled = hook.unsettled();
        if unsettled < pacing.window {
            let next_seq = outbox.next_seq();
            if !sealed && drain.live_lag(next_seq) > pacing.window as u64 {
                let deferred = drain.defer_live(next_seq);
                backlog_logged = true;
                tracing::info!(
                    behind = deferred,
                    backfill_points_per_sec = pacing.backfill_per_sec.unwrap_or(0),
                    "InfluxDB outbox: fell behind; writing new points first, the backlog paced"
                );
            }
            let room = (pacing.window - unsettled).min(READ_BATCH);
            let live = drain.next_live(outbox, room, READ_BYTES);
            let live = read_or_log(live);
            if !live.is_empty() {
                last_live_read = tokio::time::Instant::now();
            }
            live_left = live.len() == room;
            handed += live.len();
            if !handover.hand(live).await {
                return;
            }
        }
        let unsettled = hook.unsettled();
        let mut backlog_wait = None;
        if !sealed && !drain.backlog_done() && unsettled < pacing.window / 2 {
            let mut n = (pacing.window / 2 - unsettled).min(READ_BATCH);
            if let Some(bucket) = &mut bucket {
                n = n.min(bucket.available());
                if n == 0 {
                    backlog_wait = Some(bucket.next_in());
                }
            }
            if n > 0 {
                let items = read_or_log(drain.next_backlog(outbox, n, READ_BYTES));
                if let Some(bucket) = &mut bucket {
                    bucket.take(items.len());
                }
                handed += items.len();
                if !handover.hand(items).await {
                    return;
                }
                if drain.backlog_done() && backlog_logged {
                    backlog_logged = false;
                    tracing::info!("InfluxDB outbox: backlog handed to the writer");
                }
            }
        }
        if handed > 0 || live_left {
            continue;
        }
        if sealed {
            return;
        }
        let pause = backlog_wait.unwrap_or(Duration::from_millis(100));
        tokio::select! {
            _ = appended.changed() => {
                let next_read = last_live_read + pacing.live_every;
                tokio::select! {
                    _ = tokio::time::sleep_until(next_read), if !queue.is_sealed() => {}
                    _ = stop.cancelled() => return,
                }
            }
            _ = &mut settled => {}
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Items read from the outbox at once.
const READ_BATCH: usize = 256;
/// See [`Pacing::live_every`]: a twentieth of the flush interval, at most
/// this.
const MAX_LIVE_EVERY: Duration = Duration::from_millis(50);
/// Bytes read from the outbox at once.
const READ_BYTES: usize = 4 << 20;

fn read_or_log(items: Result<Vec<Item>, OutboxError>) -> Vec<Item> {
    items.unwrap_or_else(|err| {
        tracing::error!(error = %err, "InfluxDB outbox: cannot read; retrying");
        Vec::new()
    })
}

/// What hands points to the writer: its channel, the sequence numbers it
/// assigned, and where to report what it could not decode.
struct Handover {
    points: mpsc::Sender<Point>,
    hook: Arc<OutboxHook>,
    metrics: Arc<Metrics>,
    queue: Arc<DurableQueue>,
    writer_seq: u64,
    stop: CancellationToken,
}

impl Handover {
    /// Hands `items` to the writer; false when the writer is gone or on
    /// `stop`.
    async fn hand(&mut self, items: Vec<Item>) -> bool {
        for item in items {
            match record::decode_point(&item.record) {
                Ok(point) => {
                    lock(&self.hook.outbox_seq)
                        .insert(self.writer_seq, (item.seq, item.enqueued_ms));
                    self.writer_seq += 1;
                    tokio::select! {
                        sent = self.points.send(point) => if sent.is_err() { return false },
                        _ = self.stop.cancelled() => return false,
                    }
                }
                Err(err) => {
                    self.metrics
                        .sink_dropped(Sink::Influx, SinkDrop::OutboxCorruptRecord);
                    tracing::error!(seq = item.seq, error = %err, "InfluxDB outbox: undecodable record dropped");
                    self.queue.ack(item.seq);
                }
            }
        }
        true
    }
}

impl InfluxSink {
    /// Reads the secrets, opens the dead-letter file and starts the writer;
    /// with `context.durable`, the outbox in front of it (points found there
    /// from a previous run are written first). Returns the sink and the
    /// router's input; the writer finishes when the input is dropped (and,
    /// with the outbox, the feeder stopped by [`finish`](Self::finish)).
    pub fn start(
        config: &InfluxConfig,
        context: SinkContext,
    ) -> Result<(InfluxSink, InfluxInput), StartError> {
        let SinkContext {
            metrics,
            data_dir,
            durable,
        } = context;
        match durable {
            Some(queue) => Self::start_durable(config, data_dir.as_deref(), metrics, queue),
            None => {
                let (sink, points) =
                    Self::start_writer(config, data_dir.as_deref(), metrics, Arc::new(NoHook))?;
                Ok((sink, InfluxInput::Direct(points)))
            }
        }
    }

    /// The writer's own channel, weakly (for readiness: how full it is).
    pub fn writer_queue(&self) -> mpsc::WeakSender<Point> {
        self.writer_queue.clone()
    }

    /// The writer, telling `hook` about every settled point; returns the
    /// sender of its channel.
    fn start_writer(
        config: &InfluxConfig,
        data_dir: Option<&Path>,
        metrics: Arc<Metrics>,
        hook: Arc<dyn DeliveryHook>,
    ) -> Result<(InfluxSink, mpsc::Sender<Point>), StartError> {
        let credentials = config.credentials(|name| std::env::var(name).ok())?;
        let transport = HttpTransport::new(config, &credentials)?;
        let dir = data_dir
            .map(Path::to_owned)
            .or_else(crate::config::default_state_dir)
            .ok_or(StartError::NoDataDir)?;
        let path = InfluxConfig::dead_letter_path(&dir);
        let dead_letters = DeadLetters::open(
            Sink::Influx,
            &path,
            config.dead_letter_max_bytes.get(),
            config.dead_letter_max_files.get(),
            metrics.influx.dead_letter_write_failures.clone(),
        )
        .map_err(|source| StartError::DeadLetters {
            path: path.clone(),
            source,
        })?;
        tracing::info!(url = %transport.url(), api = ?config.api, batch_lines = config.batch_lines.get(),
            gzip = config.gzip, dead_letters = %path.display(), "InfluxDB writer started");
        let give_up = CancellationToken::new();
        let shared = Shared::new(
            transport,
            WriterSettings::from_config(config),
            metrics.clone(),
            Arc::new(dead_letters),
            hook,
            give_up.clone(),
        );
        let (tx, rx) = mpsc::channel(config.channel_capacity.get());
        let task = tokio::spawn(writer::run(rx, shared));
        Ok((
            InfluxSink {
                task,
                give_up,
                metrics,
                durable: None,
                writer_queue: tx.downgrade(),
            },
            tx,
        ))
    }

    /// [`start`](Self::start) with `queue` (the durable outbox) in front of
    /// the writer, and a feeder task between them.
    fn start_durable(
        config: &InfluxConfig,
        data_dir: Option<&Path>,
        metrics: Arc<Metrics>,
        queue: Arc<DurableQueue>,
    ) -> Result<(InfluxSink, InfluxInput), StartError> {
        let hook = Arc::new(OutboxHook {
            outbox_seq: Mutex::new(HashMap::new()),
            latency: metrics.end_to_end("influx"),
            queue: queue.clone(),
            settled: tokio::sync::Notify::new(),
        });
        let waiting = queue.outbox().stats().depth_items;
        if waiting > 0 {
            tracing::info!(
                waiting,
                backfill_points_per_sec = config.backfill_points_per_sec,
                "InfluxDB outbox: points left from the previous run are backlog; new points go first"
            );
        }
        let (mut sink, points) =
            Self::start_writer(config, data_dir, metrics.clone(), hook.clone())?;
        let stop_feeding = CancellationToken::new();
        let feeder = tokio::spawn(feed(
            queue.clone(),
            points,
            hook,
            metrics,
            Pacing::from_config(config),
            stop_feeding.clone(),
        ));
        sink.durable = Some(DurableParts {
            queue: queue.clone(),
            feeder,
            stop_feeding,
            deadline: Mutex::new(None),
        });
        Ok((sink, InfluxInput::Durable(queue)))
    }

    /// From now on, lines still unconfirmed `timeout` later are dead-lettered
    /// instead of retried (call when shutdown starts, so a dead server cannot
    /// hold shutdown — or the pipelines it backs up — forever).
    pub fn give_up_after(&self, timeout: Duration) {
        if let Some(durable) = &self.durable {
            // Nothing is given up: what is unsettled then stays in the outbox.
            *lock(&durable.deadline) = Some(tokio::time::Instant::now() + timeout);
            return;
        }
        let give_up = self.give_up.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            give_up.cancel();
        });
    }

    /// Waits until the writer settled everything (the sender must be dropped).
    /// With the outbox: until everything queued is settled or the deadline
    /// (see [`give_up_after`](Self::give_up_after)) passes; the rest stays
    /// in the outbox.
    pub async fn finish(mut self) {
        if let Some(durable) = self.durable.take() {
            let deadline = lock(&durable.deadline)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(5));
            let _ = tokio::time::timeout_at(deadline, durable.queue.seal()).await;
            let mut feeder = durable.feeder;
            if tokio::time::timeout_at(deadline, &mut feeder)
                .await
                .is_err()
            {
                durable.stop_feeding.cancel();
                let _ = feeder.await;
            }
            // The feeder held the last sender: the writer now drains.
            if tokio::time::timeout_at(deadline, &mut self.task)
                .await
                .is_err()
            {
                self.task.abort();
                let _ = (&mut self.task).await;
            }
            durable.queue.close().await;
            let stats = durable.queue.outbox().stats();
            tracing::info!(
                delivered = self.metrics.influx.points_delivered.get(),
                left_in_outbox = stats.depth_items,
                "InfluxDB writer stopped"
            );
            return;
        }
        if let Err(err) = (&mut self.task).await {
            tracing::error!(error = %err, "the InfluxDB writer task failed");
        }
        self.give_up.cancel();
        tracing::info!(
            delivered = self.metrics.influx.points_delivered.get(),
            "InfluxDB writer stopped"
        );
    }
}
