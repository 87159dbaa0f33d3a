//! The box's durable log: one outbox file whose queues the sinks share,
//! and the one thread that writes it.
//!
//! ```text
//! push_frame([(mqtt, record), (influx, record), …]) ─(bounded channel)─► writer thread ─ one transaction per batch ─► outbox file
//! DurableQueue::ack(seq) ─(pending acks, per queue)────────────────────►      │          (queues mqtt, influx)
//!                                                                              └─ next_seq (watch, per queue) ─► each sink's reader
//! ```
//!
//! * **A frame is atomic.** Everything a frame emitted — its MQTT messages
//!   and its points — reaches the writer as one unit and is committed in one
//!   transaction with the rest of its batch, so a crash keeps all of a
//!   frame or none of it. Each sink then reads its own queue through its
//!   own cursor and acks its own items.
//! * **Group commit.** The writer thread takes everything queued (up to
//!   [`MAX_BATCH`] records) and appends it in one transaction. Commits
//!   start at least `commit_linger_ms` (1.5 ms) apart: after one, the
//!   thread sleeps out the rest before it looks again, and frames sent
//!   meanwhile wake nothing; a frame after a quiet spell commits at once. With 0 a
//!   commit waits only for the frames still on their way from the ports.
//!   With `fsync = "always"` one disk sync (of the outbox's journal) serves
//!   every sink and every frame that arrived meanwhile. Acks ride along with
//!   every append; with no append coming they are applied on their own
//!   within [`ACK_IDLE`] (the outbox keeps its newest items in memory until
//!   a checkpoint, so acking them costs no disk write, see
//!   `sluice_outbox::journal`). One thread owns all writes because redb
//!   has a single writer: concurrent appends would serialise on its lock
//!   and lose the batching.
//! * **Backpressure.** With `when_full = "block"` a full queue makes the
//!   writer wait for acks (it keeps applying them while it waits); the
//!   channel fills and pushes wait, which slows the pipelines and leaves
//!   bytes in the serial driver. A frame is not split to let one sink's
//!   part through: while either queue is full, both wait. With
//!   `drop_oldest` the full queue evicts its oldest items, counted in
//!   `sluice_sink_dropped_total{reason="outbox_overflow"}`.
//! * **Write failures** (disk full, I/O errors) are never turned into silent
//!   loss: the writer logs one ERROR per episode and retries the same batch
//!   with backoff, blocking upstream like a full outbox.
//! * **What a crash can lose**: only frames still in the channel or in the
//!   batch being written (not yet committed), never part of a frame. Each
//!   frame's ticket is dropped after its commit, and its port reads on only
//!   then ([`crate::ticket`]), so that is at most each port's last read.
//!   Everything committed is sent again after a restart until its sink
//!   confirms it (at-least-once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};

use crate::metrics::{Metrics, SinkDrop};
use crate::model::Sink;
use crate::outbox::{Item, MAX_COMMIT_LINGER_MS, Outbox, OutboxError, OutboxGroup, Part};
use crate::sync::lock;
use crate::ticket::{FrameTicket, InFlight};

/// Records appended in one transaction at most.
pub const MAX_BATCH: usize = 2048;
/// Frames waiting for the writer thread (as many as the pipelines may hand
/// the router: a frame can carry up to `max_output_bytes_per_frame`).
const CHANNEL: usize = 256;
/// With `commit_linger_ms = 0`, how long a commit waits at most for the
/// frames on their way from the ports ([`InFlight`]: the rest of a read of
/// several frames, other ports' frames in their pipelines). A port reads on
/// only after the commit, so with none on the way nothing more can come.
const IN_FLIGHT_WAIT: Duration = Duration::from_millis(1);
/// How long acks wait at most for an append to carry them while none
/// comes. The writer is not woken for each (that would cost a wake-up per
/// delivered message): it finds them when it next works or wakes.
const ACK_IDLE: Duration = Duration::from_millis(50);
/// Acks that wake the writer, however recent: room for a full queue.
const ACK_BATCH_ITEMS: usize = 1024;

/// What a frame adds to the log: records by queue index.
pub type FrameRecords = Vec<(usize, Vec<u8>)>;

/// The durable log: a handle to push whole frames, and the queues.
pub struct DurableLog {
    log: Arc<Log>,
}

/// One sink's queue in the [`DurableLog`]. Cheap to share (`Arc`).
pub struct DurableQueue {
    log: Arc<Log>,
    index: usize,
}

struct Log {
    group: OutboxGroup,
    sides: Vec<Side>,
    in_flight: InFlight,
    frames: Mutex<Option<mpsc::Sender<(FrameRecords, FrameTicket)>>>,
    wake: Arc<Notify>,
    /// Bumped after every batch the writer finished (appended or refused).
    batches: watch::Sender<u64>,
    stop: Arc<AtomicBool>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

/// A queue's bookkeeping on this side of the outbox.
struct Side {
    sink: Sink,
    /// Acks not yet applied.
    pending_acks: Mutex<Vec<u64>>,
    /// Records pushed and not yet appended (or refused): in the channel or
    /// the batch being written.
    in_transit: AtomicU64,
    /// Takes no more records.
    sealed: AtomicBool,
    closed: AtomicBool,
    /// (overflow, expired, lost on reopen) drops already exported as
    /// metrics.
    exported: Mutex<(u64, u64, u64)>,
}

impl DurableLog {
    /// Starts the writer thread for `group`, whose queues belong to `sinks`
    /// (same order).
    pub fn start(
        group: OutboxGroup,
        sinks: &[Sink],
        metrics: Arc<Metrics>,
    ) -> std::io::Result<DurableLog> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let (tx, rx) = mpsc::channel(CHANNEL);
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let sides = sinks
            .iter()
            .map(|&sink| Side {
                sink,
                pending_acks: Mutex::new(Vec::new()),
                in_transit: AtomicU64::new(0),
                sealed: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                exported: Mutex::new((0, 0, 0)),
            })
            .collect();
        let in_flight = InFlight::default();
        // One writer for every queue: the shortest linger any asks for.
        let linger = (0..sinks.len())
            .filter_map(|index| group.queue(index))
            .map(|queue| {
                queue
                    .config()
                    .commit_linger_ms
                    .clamp(0.0, MAX_COMMIT_LINGER_MS)
            })
            .reduce(f64::min)
            // NaN clamps to NaN: no spacing rather than a panic.
            .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
            .unwrap_or(Duration::ZERO);
        let log = Arc::new(Log {
            group,
            sides,
            in_flight: in_flight.clone(),
            frames: Mutex::new(Some(tx)),
            wake: wake.clone(),
            batches: watch::Sender::new(0),
            stop: stop.clone(),
            writer: Mutex::new(None),
            metrics,
        });
        let weak = Arc::downgrade(&log);
        let name = sinks
            .iter()
            .map(|sink| sink.as_str())
            .collect::<Vec<_>>()
            .join("+");
        let thread = std::thread::Builder::new()
            .name(format!("outbox-{name}"))
            .spawn(move || runtime.block_on(run(weak, rx, wake, stop, in_flight, linger)))?;
        *lock(&log.writer) = Some(thread);
        Ok(DurableLog { log })
    }

    /// The count of frames on their way to this log, for the ports that
    /// feed it.
    pub fn in_flight(&self) -> InFlight {
        self.log.in_flight.clone()
    }

    /// The queue opened `index`-th, if there is one.
    pub fn queue(&self, index: usize) -> Option<Arc<DurableQueue>> {
        (index < self.log.sides.len()).then(|| {
            Arc::new(DurableQueue {
                log: self.log.clone(),
                index,
            })
        })
    }

    /// Queues one frame's records (for any queues) to be committed together;
    /// waits while the writer is behind (backpressure). `ticket` is dropped
    /// once they are committed. Returns false, and takes nothing, when a
    /// queue it names was sealed.
    pub async fn push_frame(&self, records: FrameRecords, ticket: FrameTicket) -> bool {
        self.log.push_frame(records, ticket).await
    }
}

impl DurableQueue {
    /// A log of one queue for `sink` (the queue's own file).
    pub fn start(
        sink: Sink,
        outbox: Outbox,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<DurableQueue> {
        let group = OutboxGroup::single(outbox);
        let log = DurableLog::start(group, &[sink], metrics)?;
        Ok(DurableQueue {
            log: log.log,
            index: 0,
        })
    }

    fn side(&self) -> &Side {
        &self.log.sides[self.index]
    }

    /// The outbox (stats, reading).
    pub fn outbox(&self) -> &Outbox {
        self.log
            .group
            .queue(self.index)
            .expect("a DurableQueue is made only for a queue of its log")
    }

    /// Queues `record` for appending; waits while the writer is behind
    /// (backpressure). Returns false after [`seal`](Self::seal).
    pub async fn push(&self, record: Vec<u8>) -> bool {
        self.log
            .push_frame(vec![(self.index, record)], FrameTicket::none())
            .await
    }

    /// Records pushed and not yet in the outbox.
    pub fn in_transit(&self) -> u64 {
        self.side().in_transit.load(Ordering::SeqCst)
    }

    /// Marks `seq` as confirmed by the sink; removed with the next batch.
    /// Never waits (called from the task that polls the MQTT event loop).
    pub fn ack(&self, seq: u64) {
        let waiting = {
            let mut pending = lock(&self.side().pending_acks);
            pending.push(seq);
            pending.len()
        };
        // Only a pile of them wakes the writer (see `ACK_IDLE`).
        if waiting == ACK_BATCH_ITEMS {
            self.log.wake.notify_one();
        }
    }

    /// Up to `max_items` stored items after `after` (from the oldest if
    /// `None`), oldest first. A short read on the calling thread.
    pub fn read_after(
        &self,
        after: Option<u64>,
        max_items: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        self.outbox().peek(after, max_items, 4 << 20)
    }

    /// Changes whenever records were appended (the outbox's next sequence
    /// number).
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.outbox().subscribe()
    }

    /// Stops taking records and waits until every record pushed so far is
    /// appended. Acks are still applied until [`close`](Self::close).
    pub async fn seal(&self) {
        self.side().sealed.store(true, Ordering::SeqCst);
        let mut batches = self.log.batches.subscribe();
        let _ = batches.wait_for(|_| self.in_transit() == 0).await;
    }

    /// Whether [`seal`](Self::seal) completed.
    pub fn is_sealed(&self) -> bool {
        self.side().sealed.load(Ordering::SeqCst) && self.in_transit() == 0
    }

    /// Seals and applies the pending acks durably. The last queue of the
    /// log to close also stops the writer thread.
    pub async fn close(&self) {
        self.seal().await;
        self.side().closed.store(true, Ordering::SeqCst);
        let last = self
            .log
            .sides
            .iter()
            .all(|side| side.closed.load(Ordering::SeqCst));
        let log = self.log.clone();
        let sink = self.side().sink;
        let finished = tokio::task::spawn_blocking(move || {
            if last {
                lock(&log.frames).take();
                log.stop.store(true, Ordering::SeqCst);
                log.wake.notify_one();
                let thread = lock(&log.writer).take();
                if let Some(thread) = thread
                    && thread.join().is_err()
                {
                    tracing::error!(%sink, "the outbox writer thread panicked");
                }
            }
            log.apply_acks();
            log.export_depth();
            log.group.queue(0).map_or(Ok(()), |outbox| outbox.flush())
        })
        .await;
        match finished {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(%sink, error = %err, "outbox: final flush failed"),
            Err(err) => tracing::error!(%sink, error = %err, "outbox: closing failed"),
        }
    }
}

impl Log {
    async fn push_frame(&self, records: FrameRecords, ticket: FrameTicket) -> bool {
        if records.is_empty() {
            return true;
        }
        let sender = lock(&self.frames).clone();
        let Some(sender) = sender else {
            return false;
        };
        // Counted until the writer has them; uncounted again if the frame
        // is refused, the send fails or this future is dropped first.
        struct Unsent<'a> {
            log: &'a Log,
            counts: Vec<(usize, u64)>,
        }
        impl Drop for Unsent<'_> {
            fn drop(&mut self) {
                for &(index, n) in &self.counts {
                    self.log.sides[index]
                        .in_transit
                        .fetch_sub(n, Ordering::SeqCst);
                }
                if !self.counts.is_empty() {
                    // A seal may be waiting for these.
                    self.log.batches.send_modify(|n| *n += 1);
                }
            }
        }
        let mut unsent = Unsent {
            log: self,
            counts: Vec::new(),
        };
        for (index, _) in &records {
            let Some(side) = self.sides.get(*index) else {
                return false;
            };
            side.in_transit.fetch_add(1, Ordering::SeqCst);
            match unsent.counts.iter_mut().find(|(i, _)| i == index) {
                Some((_, n)) => *n += 1,
                None => unsent.counts.push((*index, 1)),
            }
        }
        // Checked after counting: a seal that starts now waits for this.
        if unsent
            .counts
            .iter()
            .any(|&(index, _)| self.sides[index].sealed.load(Ordering::SeqCst))
        {
            return false;
        }
        let sent = sender.send((records, ticket)).await.is_ok();
        if sent {
            unsent.counts.clear();
        }
        sent
    }

    /// The pending acks of every queue.
    fn take_acks(&self) -> Vec<Vec<u64>> {
        self.sides
            .iter()
            .map(|side| std::mem::take(&mut *lock(&side.pending_acks)))
            .collect()
    }

    fn restore_acks(&self, acks: Vec<Vec<u64>>) {
        for (side, acks) in self.sides.iter().zip(acks) {
            lock(&side.pending_acks).extend(acks);
        }
    }

    /// Whether any queue holds items (which acks may confirm).
    fn holds_items(&self) -> bool {
        (0..self.sides.len())
            .filter_map(|index| self.group.queue(index))
            .any(|queue| queue.stats().depth_items > 0)
    }

    fn has_pending_acks(&self) -> bool {
        self.sides
            .iter()
            .any(|side| !lock(&side.pending_acks).is_empty())
    }

    fn apply_acks(&self) {
        let acks = self.take_acks();
        let parts: Vec<(usize, &[u64])> = acks
            .iter()
            .enumerate()
            .filter(|(_, acks)| !acks.is_empty())
            .map(|(index, acks)| (index, acks.as_slice()))
            .collect();
        if parts.is_empty() {
            return;
        }
        if let Err(err) = self.group.ack(&parts) {
            // The items stay and are sent again after a restart: a
            // duplicate, never a loss.
            tracing::warn!(error = %err, items = parts.iter().map(|p| p.1.len()).sum::<usize>(),
                "outbox: could not remove confirmed items; they may be sent again");
        }
    }

    /// Appends `batch` (whole frames) with the pending acks in one commit,
    /// waiting (and applying acks meanwhile) while a queue is full under
    /// `block` or the disk refuses the write.
    async fn append(&self, batch: &[FrameRecords]) {
        let mut by_queue: Vec<Vec<&[u8]>> = vec![Vec::new(); self.sides.len()];
        for frame in batch {
            for (index, record) in frame {
                by_queue[*index].push(record);
            }
        }
        let mut failing = false;
        let mut full = false;
        let mut delay = Duration::from_millis(10);
        loop {
            let acks = self.take_acks();
            let parts: Vec<Part<'_>> = by_queue
                .iter()
                .zip(&acks)
                .enumerate()
                .filter(|(_, (records, acks))| !records.is_empty() || !acks.is_empty())
                .map(|(index, (records, acks))| (index, records.as_slice(), acks.as_slice()))
                .collect();
            let appended = self.group.append(&parts);
            drop(parts);
            if appended.as_ref().is_err_and(|err| {
                !matches!(err, OutboxError::Full { .. } | OutboxError::TooLarge { .. })
            }) {
                // Not applied: try them again with the next commit.
                self.restore_acks(acks);
            }
            match appended {
                Ok(_) => {
                    // Evictions and expiries are in the outbox's stats,
                    // which `export_depth` turns into `sink_dropped` (once).
                    if failing {
                        tracing::info!("outbox: writes succeed again");
                    }
                    if full {
                        tracing::debug!("outbox: room again; taking new data");
                    }
                    return;
                }
                Err(OutboxError::Full { max_bytes, .. }) => {
                    if !full {
                        full = true;
                        // The outbox warns once per episode (not per batch).
                        tracing::debug!(
                            max_bytes,
                            "outbox full (when_full = block): holding new data until the sink confirms older data"
                        );
                    }
                    delay = Duration::from_millis(10);
                }
                Err(OutboxError::TooLarge { .. }) if batch.len() > 1 => {
                    // Halve and try the parts (one frame alone is then
                    // handled below).
                    let (a, b) = batch.split_at(batch.len() / 2);
                    Box::pin(self.append(a)).await;
                    Box::pin(self.append(b)).await;
                    return;
                }
                Err(err @ OutboxError::TooLarge { .. }) => {
                    self.refuse_too_large(batch, &err).await;
                    return;
                }
                Err(err) => {
                    if !failing {
                        failing = true;
                        tracing::error!(error = %err,
                            "outbox: cannot store data; holding it and retrying (pipelines slow down)");
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
            // The next attempt carries the acks that arrive meanwhile.
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.wake.notified() => {}
            }
            self.export_depth();
        }
    }

    /// One frame whose records for some queue exceed that queue's whole
    /// bound: those records are dropped (counted), the rest is appended.
    async fn refuse_too_large(&self, batch: &[FrameRecords], err: &OutboxError) {
        let mut kept = FrameRecords::new();
        for (index, side) in self.sides.iter().enumerate() {
            let records: Vec<&(usize, Vec<u8>)> = batch
                .iter()
                .flatten()
                .filter(|(i, _)| *i == index)
                .collect();
            let needed: u64 = records
                .iter()
                .map(|(_, r)| r.len() as u64 + crate::outbox::ITEM_OVERHEAD)
                .sum();
            let max_bytes = self
                .group
                .queue(index)
                .map_or(u64::MAX, |q| q.config().max_bytes.get());
            if needed > max_bytes {
                self.metrics.sink_dropped_by(
                    side.sink,
                    SinkDrop::OutboxItemTooLarge,
                    records.len() as u64,
                );
                tracing::error!(sink = %side.sink, error = %err, items = records.len(),
                    "outbox: a frame's output larger than the whole outbox was dropped");
            } else {
                kept.extend(records.into_iter().cloned());
            }
        }
        if !kept.is_empty() {
            Box::pin(self.append(&[kept])).await;
        }
    }

    /// Exports each queue's depth, and the drops the outbox counted since
    /// the last export (evictions on append, expiries on append or by its
    /// own background thread) as `sink_dropped{reason}`.
    fn export_depth(&self) {
        for (index, side) in self.sides.iter().enumerate() {
            let Some(outbox) = self.group.queue(index) else {
                continue;
            };
            let stats = outbox.stats();
            self.metrics
                .outbox_depth(side.sink, stats.depth_items, stats.depth_bytes);
            let mut exported = lock(&side.exported);
            let overflow = stats.dropped_overflow.saturating_sub(exported.0);
            let expired = stats.dropped_expired.saturating_sub(exported.1);
            let lost = stats.lost_on_reopen.saturating_sub(exported.2);
            if overflow > 0 {
                self.metrics
                    .sink_dropped_by(side.sink, SinkDrop::OutboxOverflow, overflow);
            }
            if expired > 0 {
                self.metrics
                    .sink_dropped_by(side.sink, SinkDrop::OutboxExpired, expired);
            }
            if lost > 0 {
                self.metrics
                    .sink_dropped_by(side.sink, SinkDrop::OutboxWriteFailed, lost);
            }
            *exported = (
                stats.dropped_overflow,
                stats.dropped_expired,
                stats.lost_on_reopen,
            );
        }
    }
}

/// Frames taken by the writer and not committed yet.
#[derive(Default)]
struct Batch {
    frames: Vec<FrameRecords>,
    /// Their tickets, dropped once they are committed.
    tickets: Vec<FrameTicket>,
    records: usize,
}

impl Batch {
    fn add(&mut self, (frame, ticket): (FrameRecords, FrameTicket)) {
        ticket.land();
        self.records += frame.len();
        self.frames.push(frame);
        self.tickets.push(ticket);
    }
}

/// Adds the frames already in the channel to `batch` (up to [`MAX_BATCH`]
/// records); `open` turns false once every sender is gone.
fn take_ready(
    frames: &mut mpsc::Receiver<(FrameRecords, FrameTicket)>,
    batch: &mut Batch,
    open: &mut bool,
) {
    while *open && batch.records < MAX_BATCH {
        match frames.try_recv() {
            Ok(frame) => batch.add(frame),
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => *open = false,
        }
    }
}

/// The writer thread's loop. It holds the log only while it works on a
/// batch, so dropping every handle ends it.
async fn run(
    log: Weak<Log>,
    mut frames: mpsc::Receiver<(FrameRecords, FrameTicket)>,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    in_flight: InFlight,
    linger: Duration,
) {
    let mut batch = Batch::default();
    let mut open = true;
    let mut last_commit: Option<std::time::Instant> = None;
    loop {
        if let Some(at) = last_commit.take() {
            // Commits start one `linger` apart: apply the acks that came
            // (off the next commit's path: InfluxDB's come by the thousand),
            // then sleep out the rest before looking for frames (the
            // thread's only work; a frame sent meanwhile wakes nothing). A
            // frame after a quiet spell commits at once.
            if let Some(log) = log.upgrade() {
                log.apply_acks();
            }
            let left = linger.saturating_sub(at.elapsed());
            if !left.is_zero() {
                std::thread::sleep(left);
            }
            take_ready(&mut frames, &mut batch, &mut open);
        }
        if batch.frames.is_empty() {
            if !open && stop.load(Ordering::SeqCst) {
                break;
            }
            // Acks can come while the queues hold anything: they wait for
            // the next frame, or this tick.
            let acks_expected = log
                .upgrade()
                .is_some_and(|log| log.has_pending_acks() || log.holds_items());
            let tick = if acks_expected {
                ACK_IDLE
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                biased;
                frame = frames.recv(), if open => match frame {
                    Some(frame) => batch.add(frame),
                    None => open = false,
                },
                _ = wake.notified() => {}
                // Expiries by the outbox's own thread reach the metrics.
                _ = tokio::time::sleep(tick) => {}
            }
        }
        let Some(log) = log.upgrade() else {
            break;
        };
        if !batch.frames.is_empty() && open && linger.is_zero() {
            // No linger: only the frames already on their way from the
            // ports share the commit.
            let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
            while batch.records < MAX_BATCH && !in_flight.is_empty() {
                tokio::select! {
                    biased;
                    frame = frames.recv() => match frame {
                        Some(frame) => batch.add(frame),
                        None => {
                            open = false;
                            break;
                        }
                    },
                    () = in_flight.emptied() => {}
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        take_ready(&mut frames, &mut batch, &mut open);
        if batch.frames.is_empty() {
            log.apply_acks();
        } else {
            let started = std::time::Instant::now();
            log.append(&batch.frames).await;
            // After the commit: a reader adding this to the outbox's
            // depth may count a record twice, never miss one.
            for frame in batch.frames.drain(..) {
                for (index, _) in frame {
                    log.sides[index].in_transit.fetch_sub(1, Ordering::SeqCst);
                }
            }
            // The frames are safe: their ports may read on.
            batch.tickets.clear();
            batch.records = 0;
            if !linger.is_zero() {
                last_commit = Some(started);
            }
        }
        log.batches.send_modify(|n| *n += 1);
        log.export_depth();
        if !open {
            // Sealed queues wait for this; nothing more can arrive.
            log.batches.send_modify(|n| *n += 1);
        }
    }
    if let Some(log) = log.upgrade() {
        log.apply_acks();
        log.export_depth();
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;
    use crate::outbox::{OutboxConfig, QueueFullPolicy};

    /// A linger that is not a number (a config built in code, past the
    /// file's validation) means no spacing; it used to panic the writer's
    /// start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_linger_that_is_not_a_number_does_not_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = OutboxConfig {
            commit_linger_ms: f64::NAN,
            ..OutboxConfig::default()
        };
        let outbox = Outbox::open(dir.path().join("x.redb"), config).expect("open");
        let queue =
            DurableQueue::start(Sink::Mqtt, outbox, Arc::new(Metrics::new())).expect("start");
        assert!(queue.push(b"record".to_vec()).await);
        queue.close().await;
        assert_eq!(queue.outbox().stats().appended, 1);
    }

    /// Every eviction is counted once in `sink_dropped` (it used to be
    /// counted on append and again from the outbox's stats).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn evictions_are_counted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = OutboxConfig {
            max_bytes: NonZeroU64::new(4096).expect("non-zero"),
            when_full: QueueFullPolicy::DropOldest,
            ..OutboxConfig::default()
        };
        let outbox = Outbox::open(dir.path().join("x.redb"), config).expect("open");
        let metrics = Arc::new(Metrics::new());
        let queue = DurableQueue::start(Sink::Mqtt, outbox, metrics.clone()).expect("start");
        for i in 0..1000u32 {
            assert!(queue.push(i.to_le_bytes().repeat(8)).await);
        }
        queue.close().await;
        let evicted = queue.outbox().stats().dropped_overflow;
        assert!(evicted > 0, "the outbox overflowed");
        let line = format!(
            r#"sluice_sink_dropped_total{{sink="mqtt",reason="outbox_overflow"}} {evicted}"#
        );
        let text = metrics.encode();
        assert!(text.contains(&line), "want {line} in:\n{text}");
    }
}
