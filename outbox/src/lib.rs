//! The durable outbox: what the sinks must still deliver, on disk, until
//! their servers confirm it.
//!
//! # What
//!
//! An [`Outbox`] is a queue of opaque records (a sink encodes its
//! messages or points, `sluice::sink::record`), each under a monotonic
//! `u64` sequence number and stamped with its enqueue time. A file holds one
//! queue ([`Outbox::open`]) or several ([`OutboxGroup`]: the host's durable
//! log, `<data_dir>/outbox/log.redb` with a queue per sink, see
//! [`log_path`]); the queues of a file are written in shared transactions,
//! so records for several of them commit together or not at all
//! ([`OutboxGroup::append`]). Nothing here knows what a record means.
//!
//! * [`Outbox::append`] writes a batch atomically (one journal entry or
//!   one transaction: group commit) and returns the batch's sequence
//!   numbers, a contiguous range;
//! * [`Outbox::peek`], [`Outbox::peek_range`], [`Outbox::peek_newest`] read
//!   without removing, and [`Drain`] keeps the two read positions a sink
//!   needs to send live data first and the backlog paced;
//! * [`Outbox::ack`] removes what the server confirmed (staged items in
//!   memory, stored ones many in one transaction);
//! * bounds: `max_bytes` (required) and `max_age_secs` (optional TTL); when
//!   full, `block` (append returns [`OutboxError::Full`], the caller waits with
//!   [`Outbox::wait_for_room`] and so applies backpressure) or `drop_oldest`
//!   (the oldest items are evicted in the same transaction). Every eviction
//!   and expiry is counted in [`OutboxStats`] and logged once per episode.
//!
//! # Why redb
//!
//! An embedded, pure-Rust, copy-on-write B-tree with checksummed pages and
//! atomic commits (no C toolchain, unlike SQLite; far less code of our own
//! than a segment log, which would need the same crash testing). An item is
//! a key/value pair, so removal in any order (InfluxDB settles batches out of
//! order) is a delete, with no compaction of our own. The price: every commit
//! rewrites the B-tree path it touched (a few 4 KiB pages), which is why
//! appends and acks are batched, and why with a journal most items never
//! reach it (see Durability).
//!
//! # Durability (`fsync`)
//!
//! redb offers two levels per commit, and nothing in between:
//! `Durability::Immediate` (fsync before `commit` returns; one fsync per
//! commit, "1-phase + checksum") and `Durability::None` (the commit is
//! visible to this process but **not on disk as far as recovery is
//! concerned**: after *any* crash — `kill -9` included, not only power loss —
//! the file reopens at the last durable commit; non-durable commits made
//! after it are gone, consistently and all together).
//!
//! * `fsync = "always"` (default): every append is durable when `append`
//!   returns (with the evictions and expiries it made). The append writes
//!   its records to the file's **journal** (`NAME.journal`: one contiguous
//!   write and one `fdatasync`, about half the CPU of a durable redb
//!   commit, which rewrites scattered B-tree pages) and keeps them in
//!   memory, *staged*, with no redb transaction; the acks the append
//!   carries ride in the same journal entry. Most items are acked while
//!   staged and never written to redb. The staged rest goes to redb with
//!   the next transaction the file needs (a bound to enforce, an expiry),
//!   at the latest with a durable redb commit — a *checkpoint* — when the
//!   journal is full and at close, which retires the journal. Opening the
//!   file replays what the journal holds beyond the last checkpoint, less
//!   what its acks confirmed (see `journal`). Acks with no append to carry
//!   them are journaled within `fsync_interval_ms`; evictions and the
//!   background thread's expiries are not journaled and become durable
//!   with a checkpoint within `fsync_interval_ms`. So a crash can only bring
//!   back items already delivered (redelivery: at-least-once) or evicted,
//!   never lose one.
//! * `fsync = "interval"`: appends are non-durable too, with no journal, and
//!   a checkpoint happens at most every `fsync_interval_ms`. A crash of the
//!   process or the machine loses the appends of the last interval (up to
//!   `fsync_interval_ms` of data). Use it when the disk cannot take one
//!   fsync per batch (SD cards) and that window is acceptable.
//!
//! With `always`, the cost of durability is one fsync per `append` call, so
//! the caller should batch: a dedicated writer thread per file that takes
//! everything queued in its channel (up to a few thousand items) and appends
//! it in one call gets large batches under load and one fsync of latency
//! when idle. That is the recommended way to call the outbox from tokio
//! (rather than `spawn_blocking` per call, which would contend on redb's
//! single writer and lose the batching). Reads are cheap and never wait for a
//! writer's fsync; `spawn_blocking` is fine for them.
//!
//! # Crashes and damage
//!
//! redb recovers by itself after an unclean shutdown: of its two commit
//! slots, the newest whose checksums verify wins, so the file reopens at its
//! last durable commit. [`Recovery::repaired`] reports that the previous run
//! did not close the file (a `clean` flag the outbox sets on close and clears
//! on open).
//!
//! Every open also runs redb's integrity check (the checksum of every page),
//! which costs a read of the whole file per start (see `benches/outbox.rs`
//! for the time at 1 M items). Without it, redb trusts a file it closed
//! cleanly, and a page damaged since (bit rot, a copy gone wrong) makes redb
//! *panic* later, when the page is read — tested: that would crash-loop the
//! host. With it, the damage is a `Corrupted` error at open.
//!
//! A file redb cannot open as a consistent database — garbage, a foreign
//! file, a damaged page, a file cut short or extended (redb checks the file
//! length against its layout), a panic inside redb while opening — is
//! **moved aside** to `NAME.corrupt-<unix ms>` with an ERROR log naming its
//! size, and the outbox starts empty ([`Recovery::quarantined`]): the host
//! must never crash-loop on its own data, and the file is kept for
//! inspection, never deleted. redb cannot salvage part of a damaged file, so
//! one bad page costs the whole queue; that is counted as one event (the
//! caller should export it), not item by item. Truncating the tail, which a
//! log format survives, is such damage for redb; a crash or power loss is
//! not (redb orders its writes and fsyncs so that a torn commit is rolled
//! back — the `SIGKILL` tests check every confirmed item survives). A file
//! another process holds ([`OutboxError::InUse`]), an I/O error, or a newer
//! format ([`OutboxError::UnsupportedFormat`]) is an error, not a
//! quarantine, and the file is left alone.
//!
//! A failed write (full disk, I/O error) returns an [`OutboxError`] naming
//! the file, the operation and the OS error ([`OutboxError::NoSpace`] for a
//! full disk); the transaction is rolled back and what was committed before
//! is intact. redb refuses further writes on a database after a failed
//! commit, so the outbox closes and reopens the file (redb repairs it) before
//! the next operation; until that succeeds every call returns the error. A
//! commit that fails *may* still have become durable (redb says so), so a
//! caller retrying a failed append can create duplicates — never a loss.
//!
//! The journal adds its size (`journal::JOURNAL_BYTES`, 4 MiB, written
//! once at creation) to the disk, and that much free space is what
//! reopening after a crash on a full disk may need (the replayed records go
//! into redb's pages); the staged items take about as much memory at most.
//! A torn
//! journal entry (a crash during its write) was never confirmed to the
//! caller and is skipped whole: it holds every queue's records of one
//! append, under one checksum. A damaged file's journal is moved aside with
//! it.
//!
//! The file is opened in redb's exclusive mode: one process at a time. A
//! second host on the same data dir gets [`OutboxError::InUse`], and
//! `sluice outbox inspect|verify` ([`inspect`], [`verify`]) need the host
//! stopped.
//!
//! # Sequence numbers and accounting
//!
//! Sequence numbers increase across restarts (the next one is stored with
//! every commit), except that `fsync = "interval"` may reuse the numbers of
//! appends lost in a crash. `max_bytes` bounds the sum of record lengths plus
//! [`ITEM_OVERHEAD`] per item; the file is larger than that by redb's page
//! overhead and free pages, so keep a margin on the disk ("Disk space"
//! below). The counters in [`OutboxStats`] count since [`Outbox::open`];
//! depth and sequence numbers come from the file.
//!
//! # Disk space
//!
//! During an outage the file grows with the backlog, in steps, to about
//! twice the record bytes while it fills (redb allocates ahead, and a
//! commit's copy-on-write pages are freed only by a later one). Acks free
//! pages that later appends reuse, so the file does not grow beyond what
//! the largest backlog needed, but redb gives space back to the file system
//! only from the end of the file, which a drained queue rarely frees. So the
//! background thread compacts a drained file ([`SHRINK_ABOVE_BYTES`],
//! [`SHRINK_FREE_RATIO`]): the hundreds of MiB an outage left shrink back to
//! a few MiB within a second of the backlog being delivered
//! ([`OutboxStats::compactions`] counts it).

mod config;
mod cursor;
mod error;
mod inspect;
mod journal;
mod open;
mod store;
#[cfg(test)]
mod tests;

use std::io;
use std::num::NonZeroU64;
use std::ops::{Bound, Range, RangeBounds};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadableDatabase as _, ReadableTable, ReadableTableMetadata as _,
    TableDefinition,
};
use serde::Deserialize;

pub use config::{
    FsyncPolicy, MAX_COMMIT_LINGER_MS, OutboxConfig, QueueFullPolicy, log_path, path_in,
};
pub use cursor::Drain;
pub use error::OutboxError;
use error::TxError;
pub use inspect::{InspectReport, VerifyReport, inspect, verify};
use journal::{Journal, JournalPart};
use open::*;
use store::*;

/// Bookkeeping: [`META_FORMAT`] and [`META_STATE`].
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// `u32` LE: the layout version of this file.
const META_FORMAT: &str = "format";
/// Next sequence number (u64 LE) ++ bytes counted against `max_bytes` (u64 LE).
const META_STATE: &str = "state";
/// One byte: 1 after a clean close, 0 while open.
const META_CLEAN: &str = "clean";

/// The layout version this host writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// What an item costs against `max_bytes` besides its record: key and
/// enqueue time.
pub const ITEM_OVERHEAD: u64 = 16;
/// redb's page cache per outbox (its default, 1 GiB, is for servers).
const CACHE_BYTES: usize = 16 << 20;
/// How often the background thread wakes at most to expire items.
const MAINTENANCE_TICK: Duration = Duration::from_secs(1);
/// A file at least this large, and at least [`SHRINK_FREE_RATIO`] times
/// what it holds, is compacted by the background thread (see "Disk space").
const SHRINK_ABOVE_BYTES: u64 = 8 << 20;
/// See [`SHRINK_ABOVE_BYTES`].
const SHRINK_FREE_RATIO: u64 = 8;

/// One stored item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Its sequence number.
    pub seq: u64,
    /// When it was appended, ms since the Unix epoch.
    pub enqueued_ms: u64,
    /// The record, as appended.
    pub record: Vec<u8>,
}

/// What [`Outbox::append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The sequence numbers of the batch, in order (one per record).
    pub seqs: Range<u64>,
    /// Older items evicted to make room (`drop_oldest`), already counted in
    /// [`OutboxStats::dropped_overflow`].
    pub evicted: u64,
    /// Items found expired and dropped in the same transaction.
    pub expired: u64,
}

/// A snapshot of an outbox's state and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Items stored.
    pub depth_items: u64,
    /// Bytes counted against `max_bytes` (records + [`ITEM_OVERHEAD`] each).
    pub depth_bytes: u64,
    /// The bound.
    pub max_bytes: u64,
    /// Enqueue time of the oldest item, ms since the epoch.
    pub oldest_enqueued_ms: Option<u64>,
    /// The sequence number the next appended item gets.
    pub next_seq: u64,
    /// Items appended since open.
    pub appended: u64,
    /// Items removed by `ack` since open.
    pub acked: u64,
    /// Items evicted by `drop_oldest` since open.
    pub dropped_overflow: u64,
    /// Items dropped for age since open.
    pub dropped_expired: u64,
    /// Appends refused with [`OutboxError::Full`] since open.
    pub refused_full: u64,
    /// Failed writes (commit or flush errors) since open.
    pub write_errors: u64,
    /// Durable commits (fsyncs) since open.
    pub durable_commits: u64,
    /// Times the background thread compacted the drained file since open.
    pub compactions: u64,
    /// Items appended after the last durable commit that a failed commit
    /// took back (`fsync = "interval"`: the file reopens at its last durable
    /// commit). At most this many are lost: some may have been delivered,
    /// or acked, before.
    pub lost_on_reopen: u64,
}

/// What [`Outbox::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The previous run did not close the file (crash, kill, power loss);
    /// its last durable state was recovered.
    pub repaired: bool,
    /// The file was unreadable and moved aside; the outbox started empty.
    pub quarantined: Option<Quarantined>,
    /// Items found.
    pub items: u64,
    /// Bytes found (as counted against `max_bytes`).
    pub bytes: u64,
    /// Of the items found, those the journal restored: appended (and
    /// confirmed durable) after the last checkpoint of a run that crashed.
    pub from_journal: u64,
    /// How long opening (and any repair) took.
    pub open_time: Duration,
}

/// A file moved aside by [`Outbox::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Where it is now.
    pub moved_to: PathBuf,
    /// Its size.
    pub file_bytes: u64,
    /// Why it could not be opened.
    pub reason: String,
}

/// Milliseconds since the epoch; replaceable in tests.
type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}

/// A durable, bounded queue of records for one sink. See the module docs.
///
/// All methods take `&self` and may be called from several threads; writes
/// to a file are serialised, reads run beside them. Dropping the last queue
/// of a file stops the file's background thread, makes pending commits
/// durable and closes it; [`close`](Self::close) does the same and reports
/// errors.
pub struct Outbox {
    file: Arc<FileOwner>,
    queue: Arc<Queue>,
}

/// Several queues in one file ([`OutboxGroup::open`]): records for several
/// of them commit in one transaction ([`OutboxGroup::append`]).
pub struct OutboxGroup {
    queues: Vec<Outbox>,
}

/// Owns a file's background thread; dropped with the file's last
/// [`Outbox`], it shuts the file down.
struct FileOwner {
    store: Arc<Store>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

/// One file: a redb database holding one or more queues.
struct Store {
    path: PathBuf,
    /// The file's stem, for logs.
    name: String,
    interval: Duration,
    clock: Clock,
    /// Whether the background thread expires items.
    auto_expire: bool,
    /// `None` after a failed reopen; the next operation tries again.
    db: RwLock<Option<Database>>,
    /// Serialises write transactions and holds durability bookkeeping.
    writer: Mutex<Writer>,
    stop: Mutex<bool>,
    wake: Condvar,
    queues: Vec<Arc<Queue>>,
}

/// One queue of a file.
struct Queue {
    index: usize,
    /// For logs: the queue's name, or the file's stem for the one queue of
    /// a file of the previous layout.
    name: String,
    items_table: String,
    state_key: String,
    config: OutboxConfig,
    /// What `stats()` returns; `room` is notified when it shrinks.
    state: Mutex<OutboxStats>,
    room: Condvar,
    appended_tx: tokio::sync::watch::Sender<u64>,
    recovery: Recovery,
    /// Appends durable through the journal and not yet in redb (see
    /// `store::Store::stage`).
    staged: Mutex<Staged>,
}

/// A queue's staged items: the newest of the queue (every sequence number
/// above those in redb), each in the journal of the current generation.
/// Written to redb by the next transaction of the file (at the latest the
/// checkpoint that retires the journal), or removed unwritten when acked
/// first.
#[derive(Default)]
struct Staged {
    /// By sequence number: enqueue time and record.
    items: std::collections::BTreeMap<u64, (u64, Vec<u8>)>,
    /// What they count in `depth_bytes`.
    bytes: u64,
}

impl Queue {
    fn items(&self) -> TableDefinition<'_, u64, &'static [u8]> {
        TableDefinition::new(&self.items_table)
    }
}

/// Where queue `name` lives in the file: its items table and its state key
/// in [`META`]. The unnamed queue is the layout of a file that holds one
/// queue (what each sink had before the outboxes shared a file).
fn queue_keys(name: &str) -> (String, String) {
    if name.is_empty() {
        ("items".into(), META_STATE.into())
    } else {
        (format!("{name}.items"), format!("{name}.{META_STATE}"))
    }
}

struct Writer {
    /// When the oldest non-durable commit or unsynced journal entry not yet
    /// made durable happened.
    pending_since: Option<Instant>,
    /// A commit failed: close and reopen before the next write.
    broken: bool,
    /// File length right after the last compaction (0: none yet); the next
    /// one waits until the file has grown by [`SHRINK_ABOVE_BYTES`] since, so
    /// a file that cannot get smaller is not compacted on every tick.
    compacted_len: u64,
    /// Per queue, by index.
    marks: Vec<Marks>,
    /// Where appends survive a crash between checkpoints (see `journal`).
    journal: Journal,
    /// Since when acks wait for the journal (`Marks::unjournaled_acks`).
    unjournaled_since: Option<Instant>,
}

impl Writer {
    /// After a journal entry: one that was not synced (`fsync =
    /// "interval"`) becomes durable with the next checkpoint, due within
    /// `fsync_interval_ms`.
    fn after_journal_entry(&mut self) {
        if !self.journal.syncs() {
            self.pending_since.get_or_insert_with(Instant::now);
        }
    }
}

/// A queue's episodes (one warning each) and sequence floor.
#[derive(Default)]
struct Marks {
    /// Items evicted in the current overflow episode.
    overflow_episode: Option<u64>,
    /// Items expired in the current expiry episode.
    expiry_episode: Option<u64>,
    /// Appends refused in the current blocked episode.
    blocked_episode: Option<u64>,
    /// The highest next sequence number a commit of this process has made.
    /// A failed commit with `fsync = "interval"` reopens the file at its last
    /// durable commit, whose next sequence number may be lower; the numbers
    /// between were handed out already (cursors, acks in flight) and must
    /// not be handed out again, so every write starts from at least this.
    seq_floor: u64,
    /// Acks applied without a journal entry (acks alone cost no sync): the
    /// next entry carries them, or the background thread writes one.
    unjournaled_acks: Vec<u64>,
}

/// What the file says of a queue: next sequence number and bytes in use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Meta {
    next_seq: u64,
    depth_bytes: u64,
}

impl Meta {
    fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.next_seq.to_le_bytes());
        out[8..].copy_from_slice(&self.depth_bytes.to_le_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Meta> {
        if bytes.len() != 16 {
            return None;
        }
        Some(Meta {
            next_seq: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            depth_bytes: u64::from_le_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

/// The enqueue time and record of a stored value, if it is long enough.
fn split_value(value: &[u8]) -> Option<(u64, &[u8])> {
    let (ts, record) = value.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*ts), record))
}

fn cost(record_len: usize) -> u64 {
    record_len as u64 + ITEM_OVERHEAD
}

/// What an open of the file yielded.
struct Opened {
    db: Database,
    /// Per queue, in the order asked for.
    queues: Vec<OpenedQueue>,
    repaired: bool,
    /// The journal generation this open started.
    journal_generation: u64,
}

struct OpenedQueue {
    meta: Meta,
    items: u64,
    oldest_ms: Option<u64>,
    /// Of `items`, those the journal gave back.
    replayed: u64,
}

/// Why an open failed: give up, or move the file aside.
enum OpenFailure {
    Fatal(OutboxError),
    Corrupt(String),
}

/// Records for (and acks of) one queue of a group, by index
/// ([`OutboxGroup::append`]).
pub type Part<'a> = (usize, &'a [&'a [u8]], &'a [u64]);

impl Outbox {
    /// Opens (or creates) the outbox at `path`, a file holding this one
    /// queue, recovering after a crash and quarantining a damaged file (see
    /// the module docs). Creates the parent directory. The file's stem names
    /// the outbox in logs.
    pub fn open(path: impl AsRef<Path>, config: OutboxConfig) -> Result<Outbox, OutboxError> {
        Self::open_with(path.as_ref(), config, system_clock(), true)
    }

    /// `open` with a clock, and with or without the background expiry (tests).
    pub(crate) fn open_with(
        path: &Path,
        config: OutboxConfig,
        clock: Clock,
        auto_expire: bool,
    ) -> Result<Outbox, OutboxError> {
        let group = open_store(path, &[("", config)], clock, auto_expire)?;
        Ok(group
            .queues
            .into_iter()
            .next()
            .expect("one queue was asked for"))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.file.store.path
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &OutboxConfig {
        &self.queue.config
    }

    /// What opening found (repair, quarantine, depth).
    pub fn recovery(&self) -> &Recovery {
        &self.queue.recovery
    }

    /// A snapshot of depth and counters.
    pub fn stats(&self) -> OutboxStats {
        lock(&self.queue.state).clone()
    }

    /// The sequence number the next appended item will get: the split point
    /// between backlog and live data for a [`Drain`].
    pub fn next_seq(&self) -> u64 {
        lock(&self.queue.state).next_seq
    }

    /// A watch of [`next_seq`](Self::next_seq), updated after every append,
    /// so an async delivery loop can wait for new items.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.queue.appended_tx.subscribe()
    }

    /// Appends `records` in one transaction, oldest first, and returns their
    /// sequence numbers. Expired items are dropped first; if the batch does
    /// not fit, `drop_oldest` evicts the oldest items in the same transaction
    /// and `block` returns [`OutboxError::Full`] without writing anything. A
    /// batch larger than `max_bytes` is [`OutboxError::TooLarge`] in both.
    pub fn append(&self, records: &[&[u8]]) -> Result<Appended, OutboxError> {
        self.append_and_ack(records, &[])
    }

    /// [`append`](Self::append) and [`ack`](Self::ack) in one transaction:
    /// the acked items are removed first (so they make room), then the
    /// records are appended. A commit costs the same whether it carries one
    /// change or both, and the durable queue's writer has both most of the
    /// time, so this halves its commits. The acks are applied even when the
    /// append is refused ([`OutboxError::Full`], [`OutboxError::TooLarge`]);
    /// after any other error they are not (as with `ack`, which can be
    /// retried).
    pub fn append_and_ack(&self, records: &[&[u8]], acks: &[u64]) -> Result<Appended, OutboxError> {
        let mut appended = self
            .file
            .store
            .append(&[(self.queue.index, records, acks)])?;
        Ok(appended.remove(0))
    }

    /// Removes the items with these sequence numbers (delivered or settled),
    /// in one transaction; unknown ones (already removed, evicted, expired)
    /// are ignored. Returns how many were removed. Durable within
    /// `fsync_interval_ms` (a crash before that redelivers them).
    pub fn ack(&self, seqs: &[u64]) -> Result<u64, OutboxError> {
        self.file.store.ack(&[(self.queue.index, seqs)])
    }

    /// Drops items older than `max_age_secs` now (the background thread
    /// does this every second, and every append does it too). Returns how
    /// many were dropped.
    pub fn expire(&self) -> Result<u64, OutboxError> {
        self.file.store.expire(&self.queue)
    }

    /// Makes every commit so far durable (one fsync if anything is pending).
    /// For shutdown, or before reporting something as stored.
    pub fn flush(&self) -> Result<(), OutboxError> {
        let store = &self.file.store;
        let mut w = lock(&store.writer);
        store.flush_locked(&mut w)
    }

    /// Waits until `bytes` more would fit (for `block`: after
    /// [`OutboxError::Full`], pass its `needed`), or `timeout` passes.
    /// Returns whether it fits now.
    pub fn wait_for_room(&self, bytes: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = lock(&self.queue.state);
        loop {
            if s.depth_bytes.saturating_add(bytes) <= s.max_bytes {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .queue
                .room
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Up to `max_items` items after `after` (all from the oldest if
    /// `None`), oldest first, stopping before `max_bytes` of records are
    /// exceeded — but always at least one item if there is one.
    pub fn peek(
        &self,
        after: Option<u64>,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        let start = match after {
            None => 0,
            Some(seq) => match seq.checked_add(1) {
                Some(start) => start,
                None => return Ok(Vec::new()),
            },
        };
        self.read(start.., false, max_items, max_bytes)
    }

    /// Like [`peek`](Self::peek), within `range` of sequence numbers.
    pub fn peek_range(
        &self,
        range: impl RangeBounds<u64>,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        self.read(range, false, max_items, max_bytes)
    }

    /// The newest items before `before` (all if `None`), newest first.
    pub fn peek_newest(
        &self,
        before: Option<u64>,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        match before {
            None => self.read(.., true, max_items, max_bytes),
            Some(end) => self.read(..end, true, max_items, max_bytes),
        }
    }

    fn read(
        &self,
        range: impl RangeBounds<u64>,
        newest_first: bool,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        self.file
            .store
            .read(&self.queue, range, newest_first, max_items, max_bytes)
    }

    /// Moves every item of `legacy` — a file of the layout before the sinks
    /// shared one (a single queue) — into this queue, oldest first, with its
    /// enqueue time, then deletes the file. Each chunk commits with the last
    /// legacy sequence number it moved, so a crash midway neither loses nor
    /// repeats an item. The items are taken whatever this queue's bound (the
    /// old file had the same one); appends wait or evict until deliveries
    /// make room. Returns how many items moved; 0 when there is no file.
    pub fn absorb(&self, legacy: &Path) -> Result<u64, OutboxError> {
        self.file.store.absorb(&self.queue, legacy)
    }

    /// Flushes, stops the background thread and closes the file, reporting
    /// errors that dropping would only log. With other queues of the file
    /// still open, the file stays open until the last one goes.
    pub fn close(self) -> Result<(), OutboxError> {
        match Arc::try_unwrap(self.file) {
            Ok(mut owner) => owner.shutdown(),
            Err(_) => Ok(()),
        }
    }
}

impl OutboxGroup {
    /// Opens (or creates) a file holding one queue per `(name, config)`
    /// (names non-empty, unique). The file has one fsync policy: `always` if
    /// any queue asks for it, and the shortest `fsync_interval_ms`.
    pub fn open(
        path: impl AsRef<Path>,
        queues: &[(&str, OutboxConfig)],
    ) -> Result<OutboxGroup, OutboxError> {
        open_store(path.as_ref(), queues, system_clock(), true)
    }

    /// The group of a file opened with one queue ([`Outbox::open`]).
    pub fn single(outbox: Outbox) -> OutboxGroup {
        OutboxGroup {
            queues: vec![outbox],
        }
    }

    /// The queue opened `index`-th.
    pub fn queue(&self, index: usize) -> Option<&Outbox> {
        self.queues.get(index)
    }

    /// Appends records to (and removes acked items from) several queues of
    /// the file in **one transaction**: everything is committed, or nothing
    /// (parts name queues by index). Per part, as
    /// [`Outbox::append_and_ack`]; a part that is [`OutboxError::TooLarge`]
    /// or [`OutboxError::Full`] refuses the whole transaction (the acks are
    /// applied all the same).
    pub fn append(&self, parts: &[Part<'_>]) -> Result<Vec<Appended>, OutboxError> {
        match self.queues.first() {
            Some(first) => first.file.store.append(parts),
            None => Ok(Vec::new()),
        }
    }

    /// Removes acked items from several queues in one transaction.
    pub fn ack(&self, acks: &[(usize, &[u64])]) -> Result<u64, OutboxError> {
        match self.queues.first() {
            Some(first) => first.file.store.ack(acks),
            None => Ok(0),
        }
    }
}

impl FileOwner {
    fn shutdown(&mut self) -> Result<(), OutboxError> {
        let Some(flusher) = lock(&self.flusher).take() else {
            return Ok(());
        };
        let store = &*self.store;
        *lock(&store.stop) = true;
        store.wake.notify_all();
        let _ = flusher.join();
        let mut w = lock(&store.writer);
        let flushed = store.durable_commit(&mut w, "close", true);
        let db = store
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let closed = match db {
            Some(db) => db
                .close()
                .map_err(|e| OutboxError::from_redb(&store.path, "close", e.into())),
            None => Ok(()),
        };
        flushed.and(closed)
    }
}

impl Drop for FileOwner {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            tracing::error!(outbox = %self.store.name, error = %err, "closing the outbox failed");
        }
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.file.store.path)
            .field("queue", &self.queue.name)
            .field("config", &self.queue.config)
            .finish_non_exhaustive()
    }
}
