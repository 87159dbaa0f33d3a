//! A sink's durable queue: the [`Outbox`] plus the thread that writes it.
//!
//! ```text
//! push(record) ─(bounded channel)─► writer thread ─ append + pending acks (one transaction per batch) ─► outbox
//! ack(seq) ────(pending acks)──────►      │
//!                                         └─ next_seq (watch) ─► the sink's reader: read_after(cursor)
//! ```
//!
//! * **Group commit.** The writer thread takes everything queued (up to
//!   [`MAX_BATCH`]) and appends it in one transaction, so with
//!   `fsync = "always"` the cost of a disk sync is shared by every message
//!   that arrived meanwhile. The acks pending at that moment are removed
//!   in the same transaction ([`Outbox::append_and_ack`]): a commit costs
//!   about the same with one change or two, so this halves the commits
//!   (and the fsyncs under `always`); acks with no append to share wait
//!   `ACK_LINGER` (10 ms) before a commit of their own. One thread owns
//!   all writes because redb has a single writer: concurrent appends would
//!   serialise on its lock and lose the batching.
//! * **Backpressure.** With `when_full = "block"` a full outbox makes the
//!   writer wait for acks (it keeps applying them while it waits); the
//!   channel fills and [`DurableQueue::push`] waits, which slows the
//!   pipelines and leaves bytes in the serial driver. With `drop_oldest` the
//!   outbox evicts the oldest items, counted in
//!   `sluice_sink_dropped_total{reason="outbox_overflow"}`.
//! * **Write failures** (disk full, I/O errors) are never turned into silent
//!   loss: the writer logs one ERROR per episode and retries the same batch
//!   with backoff, blocking upstream like a full outbox.
//! * **What a crash can lose**: only records still in the channel or in the
//!   batch being written (not yet committed) — the same window as frames in
//!   the pipeline's queues. Everything committed is sent again after a
//!   restart until its sink confirms it (at-least-once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};

use crate::metrics::Metrics;
use crate::outbox::{Item, Outbox, OutboxError};

/// Records appended in one transaction at most.
pub const MAX_BATCH: usize = 2048;
/// Records waiting for the writer thread.
const CHANNEL: usize = 4096;
/// How long acks wait for an append to share its commit before they get
/// one of their own. Longer only delays freeing their room (and a crash in
/// between sends them again, as with any unconfirmed item).
const ACK_LINGER: Duration = Duration::from_millis(10);

/// The durable queue of one sink. Cheap to share (`Arc`).
pub struct DurableQueue {
    sink: &'static str,
    records: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    pending_acks: Arc<Mutex<Vec<u64>>>,
    wake: Arc<Notify>,
    outbox: Arc<Outbox>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// True once every pushed record is appended after [`seal`](Self::seal).
    drained: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
    /// Records pushed and not yet appended (or refused): in the channel or
    /// the batch being written.
    in_transit: Arc<AtomicU64>,
}

impl DurableQueue {
    /// Starts the writer thread for `outbox` (the queue of sink `sink`).
    pub fn start(
        sink: &'static str,
        outbox: Outbox,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<DurableQueue> {
        let outbox = Arc::new(outbox);
        let (tx, rx) = mpsc::channel(CHANNEL);
        let pending_acks = Arc::new(Mutex::new(Vec::new()));
        let wake = Arc::new(Notify::new());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let (drained_tx, drained) = watch::channel(false);
        let stop = Arc::new(AtomicBool::new(false));
        let in_transit = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            in_transit: in_transit.clone(),
            sink,
            outbox: outbox.clone(),
            pending_acks: pending_acks.clone(),
            wake: wake.clone(),
            metrics,
            drained: drained_tx,
            stop: stop.clone(),
            exported: Mutex::new((0, 0, 0)),
        };
        let thread = std::thread::Builder::new()
            .name(format!("outbox-{sink}"))
            .spawn(move || runtime.block_on(writer.run(rx)))?;
        Ok(DurableQueue {
            sink,
            records: Mutex::new(Some(tx)),
            pending_acks,
            wake,
            outbox,
            writer: Mutex::new(Some(thread)),
            drained,
            stop,
            in_transit,
        })
    }

    /// The outbox (stats, reading).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Queues `record` for appending; waits while the writer is behind
    /// (backpressure). Returns false after [`close`](Self::close).
    pub async fn push(&self, record: Vec<u8>) -> bool {
        let sender = lock(&self.records).clone();
        let Some(sender) = sender else {
            return false;
        };
        // Counted until the writer has it; uncounted again if the send
        // fails or this future is dropped before it completes.
        struct Unsent<'a>(&'a AtomicU64);
        impl Drop for Unsent<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.in_transit.fetch_add(1, Ordering::SeqCst);
        let unsent = Unsent(&self.in_transit);
        let sent = sender.send(record).await.is_ok();
        if sent {
            std::mem::forget(unsent);
        }
        sent
    }

    /// Records pushed and not yet in the outbox.
    pub fn in_transit(&self) -> u64 {
        self.in_transit.load(Ordering::SeqCst)
    }

    /// Marks `seq` as confirmed by the sink; removed with the next batch.
    /// Never waits (called from the task that polls the MQTT event loop).
    pub fn ack(&self, seq: u64) {
        lock(&self.pending_acks).push(seq);
        self.wake.notify_one();
    }

    /// Up to `max_items` stored items after `after` (from the oldest if
    /// `None`), oldest first. A short read on the calling thread.
    pub fn read_after(
        &self,
        after: Option<u64>,
        max_items: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        self.outbox.peek(after, max_items, 4 << 20)
    }

    /// Changes whenever records were appended (the outbox's next sequence
    /// number).
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.outbox.subscribe()
    }

    /// Stops taking records and waits until every record pushed so far is
    /// appended. Acks are still applied until [`close`](Self::close).
    pub async fn seal(&self) {
        lock(&self.records).take();
        let mut drained = self.drained.clone();
        let _ = drained.wait_for(|done| *done).await;
    }

    /// Whether [`seal`](Self::seal) completed.
    pub fn is_sealed(&self) -> bool {
        *self.drained.borrow()
    }

    /// Seals, applies the pending acks, stops the writer thread and makes
    /// everything durable.
    pub async fn close(&self) {
        self.seal().await;
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let thread = lock(&self.writer).take();
        if let Some(thread) = thread {
            let sink = self.sink;
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!(sink, "the outbox writer thread panicked");
            }
        }
        if let Err(err) = self.outbox.flush() {
            tracing::error!(sink = self.sink, error = %err, "outbox: final flush failed");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

struct Writer {
    sink: &'static str,
    outbox: Arc<Outbox>,
    pending_acks: Arc<Mutex<Vec<u64>>>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    drained: watch::Sender<bool>,
    stop: Arc<AtomicBool>,
    in_transit: Arc<AtomicU64>,
    /// (overflow, expired, lost on reopen) drops already exported as
    /// metrics.
    exported: Mutex<(u64, u64, u64)>,
}

impl Writer {
    async fn run(self, mut records: mpsc::Receiver<Vec<u8>>) {
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(MAX_BATCH);
        let mut open = true;
        loop {
            if batch.is_empty() {
                if !open {
                    let _ = self.drained.send(true);
                    if self.stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
                tokio::select! {
                    biased;
                    record = records.recv(), if open => match record {
                        Some(record) => batch.push(record),
                        None => open = false,
                    },
                    _ = self.wake.notified() => {}
                    // Expiries by the outbox's own thread reach the metrics.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            if batch.is_empty() && open && !lock(&self.pending_acks).is_empty() {
                // Woken by acks alone: give them ACK_LINGER to ride along
                // with the next append instead of a commit of their own.
                if let Ok(Some(record)) = tokio::time::timeout(ACK_LINGER, records.recv()).await {
                    batch.push(record);
                }
            }
            while open && batch.len() < MAX_BATCH {
                match records.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if batch.is_empty() {
                self.apply_acks();
            } else {
                self.append(&batch).await;
                // After the commit: a reader adding this to the outbox's
                // depth may count a record twice, never miss one.
                self.in_transit
                    .fetch_sub(batch.len() as u64, Ordering::SeqCst);
                batch.clear();
            }
            self.export_depth();
        }
        self.apply_acks();
        self.export_depth();
    }

    fn apply_acks(&self) {
        let acks = std::mem::take(&mut *lock(&self.pending_acks));
        if acks.is_empty() {
            return;
        }
        if let Err(err) = self.outbox.ack(&acks) {
            // The items stay and are sent again after a restart: a
            // duplicate, never a loss.
            tracing::warn!(sink = self.sink, error = %err, items = acks.len(),
                "outbox: could not remove confirmed items; they may be sent again");
        }
    }

    /// Appends `batch` with the pending acks (one commit), waiting (and
    /// applying acks meanwhile) while the outbox is full under `block` or
    /// the disk refuses the write.
    async fn append(&self, batch: &[Vec<u8>]) {
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        let mut failing = false;
        let mut full = false;
        let mut delay = Duration::from_millis(10);
        loop {
            let acks = std::mem::take(&mut *lock(&self.pending_acks));
            let appended = self.outbox.append_and_ack(&refs, &acks);
            if appended.as_ref().is_err_and(|err| {
                !matches!(err, OutboxError::Full { .. } | OutboxError::TooLarge { .. })
            }) {
                // Not applied: try them again with the next commit.
                lock(&self.pending_acks).extend(acks);
            }
            match appended {
                Ok(_) => {
                    // Evictions and expiries are in the outbox's stats,
                    // which `export_depth` turns into `sink_dropped` (once).
                    if failing {
                        tracing::info!(sink = self.sink, "outbox: writes succeed again");
                    }
                    if full {
                        tracing::debug!(sink = self.sink, "outbox: room again; taking new data");
                    }
                    return;
                }
                Err(OutboxError::Full { max_bytes, .. }) => {
                    if !full {
                        full = true;
                        // The outbox warns once per episode (not per batch).
                        tracing::debug!(
                            sink = self.sink,
                            max_bytes,
                            "outbox full (when_full = block): holding new data until the sink confirms older data"
                        );
                    }
                    delay = Duration::from_millis(10);
                }
                Err(OutboxError::TooLarge { .. }) if batch.len() > 1 => {
                    // Halve and try the parts (one item alone is then refused below).
                    let (a, b) = batch.split_at(batch.len() / 2);
                    Box::pin(self.append(a)).await;
                    Box::pin(self.append(b)).await;
                    return;
                }
                Err(err @ OutboxError::TooLarge { .. }) => {
                    self.metrics
                        .sink_dropped(self.sink, "outbox_item_too_large");
                    tracing::error!(sink = self.sink, error = %err,
                        "outbox: an item larger than the whole outbox was dropped");
                    return;
                }
                Err(err) => {
                    if !failing {
                        failing = true;
                        tracing::error!(sink = self.sink, error = %err,
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

    /// Exports the depth, and the drops the outbox counted since the last
    /// export (evictions on append, expiries on append or by its own
    /// background thread) as `sink_dropped{reason}`.
    fn export_depth(&self) {
        let stats = self.outbox.stats();
        self.metrics
            .outbox_depth(self.sink, stats.depth_items, stats.depth_bytes);
        let mut exported = lock(&self.exported);
        let overflow = stats.dropped_overflow.saturating_sub(exported.0);
        let expired = stats.dropped_expired.saturating_sub(exported.1);
        let lost = stats.lost_on_reopen.saturating_sub(exported.2);
        if overflow > 0 {
            self.metrics
                .sink_dropped_by(self.sink, "outbox_overflow", overflow);
        }
        if expired > 0 {
            self.metrics
                .sink_dropped_by(self.sink, "outbox_expired", expired);
        }
        if lost > 0 {
            self.metrics
                .sink_dropped_by(self.sink, "outbox_write_failed", lost);
        }
        *exported = (
            stats.dropped_overflow,
            stats.dropped_expired,
            stats.lost_on_reopen,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;
    use crate::outbox::{OutboxConfig, QueueFullPolicy};

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
        let queue = DurableQueue::start("mqtt", outbox, metrics.clone()).expect("start");
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
