//! The durable outbox: what the sinks must still deliver, on disk, until
//! their servers confirm it.
//!
//! # What
//!
//! An [`Outbox`] is a queue of opaque records (a sink encodes its
//! [`MqttMessage`](crate::model::MqttMessage)s or
//! [`Point`](crate::model::Point)s with [`record`]), each under a monotonic
//! `u64` sequence number and stamped with its enqueue time. A file holds one
//! queue ([`Outbox::open`]) or several ([`OutboxGroup`]: the host's durable
//! log, `<data_dir>/outbox/log.redb` with a queue per sink, see
//! [`log_path`]); the queues of a file are written in shared transactions,
//! so records for several of them commit together or not at all
//! ([`OutboxGroup::append`]). Nothing here knows what a record means.
//!
//! * [`Outbox::append`] writes a batch in one transaction (group commit) and
//!   returns the batch's sequence numbers, a contiguous range;
//! * [`Outbox::peek`], [`Outbox::peek_range`], [`Outbox::peek_newest`] read
//!   without removing, and [`Drain`] keeps the two read positions a sink
//!   needs to send live data first and the backlog paced;
//! * [`Outbox::ack`] removes what the server confirmed (many in one
//!   transaction);
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
//! appends and acks are batched.
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
//!   returns (with the evictions and expiries it made). Acks and the
//!   background thread's expiries are non-durable commits made durable at
//!   most `fsync_interval_ms` later (by the next append or the background
//!   thread): a crash can only bring back items already delivered
//!   (redelivery: at-least-once), never lose one.
//! * `fsync = "interval"`: appends are non-durable too, and a durable commit
//!   happens at most every `fsync_interval_ms`. A crash of the process or the
//!   machine loses the appends of the last interval (up to
//!   `fsync_interval_ms` of data). Use it when the disk cannot take one fsync
//!   per batch (SD cards) and that window is acceptable.
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

mod cursor;
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

/// What a full queue does to the next message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Wait: backpressure up to the serial ports (nothing dropped by the host).
    #[default]
    Block,
    /// Evict the oldest queued item, counted in `sink_dropped{sink,reason}`:
    /// `queue_full_drop_oldest` for the in-memory MQTT queue,
    /// `outbox_overflow` for a durable outbox.
    DropOldest,
}

pub use cursor::Drain;

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

/// `fsync` policy, see the module documentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Every append is durable when it returns.
    #[default]
    Always,
    /// A durable commit at most every `fsync_interval_ms`; a crash loses up
    /// to that much of the latest appends.
    Interval,
}

/// Settings of one sink's outbox (`[mqtt.outbox]`, `[influx.outbox]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Bound on record bytes plus [`ITEM_OVERHEAD`] per item (default 256 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: NonZeroU64,
    /// Items older than this are dropped (metric reason `outbox_expired`);
    /// none by default.
    #[serde(default)]
    pub max_age_secs: Option<NonZeroU64>,
    /// What a full outbox does to an append: `block` (default) or `drop_oldest`.
    #[serde(default)]
    pub when_full: QueueFullPolicy,
    /// `always` (default) or `interval`.
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// With `interval`: the longest time between durable commits. With
    /// `always`: how long acks, evictions and expiries may stay non-durable.
    /// Default 1000.
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval_ms: NonZeroU64,
}

fn default_max_bytes() -> NonZeroU64 {
    NonZeroU64::new(256 << 20).unwrap_or(NonZeroU64::MIN)
}

fn default_fsync_interval() -> NonZeroU64 {
    NonZeroU64::new(1000).unwrap_or(NonZeroU64::MIN)
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            max_age_secs: None,
            when_full: QueueFullPolicy::Block,
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: default_fsync_interval(),
        }
    }
}

impl OutboxConfig {
    fn interval(&self) -> Duration {
        Duration::from_millis(self.fsync_interval_ms.get())
    }
}

/// The file of an outbox named `name` under `data_dir`:
/// `<data_dir>/outbox/<name>.redb`. Each sink had such a file of its own
/// before the sinks shared the durable log ([`log_path`]).
pub fn path_in(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("outbox").join(format!("{name}.redb"))
}

/// The durable log under `data_dir`, one file with a queue per sink:
/// `<data_dir>/outbox/log.redb`.
pub fn log_path(data_dir: &Path) -> PathBuf {
    path_in(data_dir, "log")
}

/// Everything that can go wrong; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Another process has the file open (another sluice on the same data dir?).
    #[error(
        "outbox {path}: in use by another process (is another sluice running on this data dir?)"
    )]
    InUse {
        /// The outbox file.
        path: PathBuf,
    },
    /// The disk (or quota) is full; nothing of the failed operation was kept.
    #[error("outbox {path}: {op} failed, no space left on the device: {source}")]
    NoSpace {
        /// The outbox file.
        path: PathBuf,
        /// `open`, `append`, `ack`, `flush`, `expire`, `read`.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Another I/O error.
    #[error("outbox {path}: {op} failed: {source}")]
    Io {
        /// The outbox file.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// An error reported by redb that is not plain I/O.
    #[error("outbox {path}: {op} failed: {source}")]
    Store {
        /// The outbox file.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// `when_full = "block"` and the batch does not fit now; nothing was written.
    #[error("outbox {path}: full ({depth_bytes} of {max_bytes} bytes used, {needed} needed)")]
    Full {
        /// The outbox file.
        path: PathBuf,
        /// Bytes the batch needs.
        needed: u64,
        /// Bytes in use.
        depth_bytes: u64,
        /// The bound.
        max_bytes: u64,
    },
    /// The batch is larger than `max_bytes` and can never be stored.
    #[error("outbox {path}: a batch of {needed} bytes can never fit in max_bytes = {max_bytes}")]
    TooLarge {
        /// The outbox file.
        path: PathBuf,
        /// Bytes the batch needs.
        needed: u64,
        /// The bound.
        max_bytes: u64,
    },
    /// Written by a newer sluice; left untouched.
    #[error(
        "outbox {path}: format {found} was written by a newer sluice (this one reads up to {FORMAT_VERSION}); the file was left untouched"
    )]
    UnsupportedFormat {
        /// The outbox file.
        path: PathBuf,
        /// The format found.
        found: u32,
    },
    /// One stored item is shorter than its header; the caller may `ack` it
    /// away (and count it) to get past it.
    #[error("outbox {path}: item {seq} is damaged ({len} bytes)")]
    CorruptItem {
        /// The outbox file.
        path: PathBuf,
        /// Its sequence number.
        seq: u64,
        /// Its stored length.
        len: usize,
    },
    /// The file is not a consistent outbox (reported by `verify`/`inspect`;
    /// `open` quarantines such files instead).
    #[error("outbox {path}: damaged: {detail}")]
    Corrupt {
        /// The outbox file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl OutboxError {
    /// A short stable label (for a metric or a log field).
    pub fn reason(&self) -> &'static str {
        match self {
            OutboxError::InUse { .. } => "in_use",
            OutboxError::NoSpace { .. } => "no_space",
            OutboxError::Io { .. } => "io",
            OutboxError::Store { .. } => "store",
            OutboxError::Full { .. } => "full",
            OutboxError::TooLarge { .. } => "too_large",
            OutboxError::UnsupportedFormat { .. } => "unsupported_format",
            OutboxError::CorruptItem { .. } => "corrupt_item",
            OutboxError::Corrupt { .. } => "corrupt",
        }
    }

    /// Whether the disk (or a quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, OutboxError::NoSpace { .. })
    }

    fn from_redb(path: &Path, op: &'static str, err: redb::Error) -> Self {
        let path = path.to_owned();
        match err {
            redb::Error::Io(source) if is_no_space(&source) => {
                OutboxError::NoSpace { path, op, source }
            }
            redb::Error::Io(source) => OutboxError::Io { path, op, source },
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                OutboxError::InUse { path }
            }
            other => OutboxError::Store {
                path,
                op,
                source: Box::new(other),
            },
        }
    }
}

fn is_no_space(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::StorageFull
        || err.kind() == io::ErrorKind::QuotaExceeded
        || err.raw_os_error() == Some(nix::libc::ENOSPC)
        || err.raw_os_error() == Some(nix::libc::EDQUOT)
}

/// Converts redb's many error types into `redb::Error` inside transactions,
/// beside our own errors.
enum TxError {
    Outbox(OutboxError),
    Redb(redb::Error),
}

macro_rules! redb_into_tx_error {
    ($($t:ty),*) => {$(
        impl From<$t> for TxError {
            fn from(err: $t) -> Self {
                TxError::Redb(err.into())
            }
        }
    )*};
}
redb_into_tx_error!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::SetDurabilityError,
    redb::DatabaseError
);

impl From<OutboxError> for TxError {
    fn from(err: OutboxError) -> Self {
        TxError::Outbox(err)
    }
}

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
    fsync: FsyncPolicy,
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

#[derive(Default)]
struct Writer {
    /// When the oldest non-durable commit not yet made durable happened.
    pending_since: Option<Instant>,
    /// A commit failed: close and reopen before the next write.
    broken: bool,
    /// File length right after the last compaction (0: none yet); the next
    /// one waits until the file has grown by [`SHRINK_ABOVE_BYTES`] since, so
    /// a file that cannot get smaller is not compacted on every tick.
    compacted_len: u64,
    /// Per queue, by index.
    marks: Vec<Marks>,
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
}

struct OpenedQueue {
    meta: Meta,
    items: u64,
    oldest_ms: Option<u64>,
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

/// Opens the file with these queues and starts its background thread.
fn open_store(
    path: &Path,
    queues: &[(&str, OutboxConfig)],
    clock: Clock,
    auto_expire: bool,
) -> Result<OutboxGroup, OutboxError> {
    let started = Instant::now();
    let name = path
        .file_stem()
        .map_or_else(|| "outbox".into(), |s| s.to_string_lossy().into_owned());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| OutboxError::Io {
            path: path.to_owned(),
            op: "create directory",
            source,
        })?;
    }
    let keys: Vec<(String, String)> = queues.iter().map(|(q, _)| queue_keys(q)).collect();
    let mut quarantined = None;
    let opened = match open_file(path, &keys) {
        Ok(opened) => opened,
        Err(OpenFailure::Fatal(err)) => return Err(err),
        Err(OpenFailure::Corrupt(reason)) => {
            let q = quarantine(path, &reason, (clock)())?;
            tracing::error!(
                outbox = %name,
                path = %path.display(),
                moved_to = %q.moved_to.display(),
                file_bytes = q.file_bytes,
                reason = %reason,
                "outbox file is unreadable: moved it aside and started an empty outbox; \
                 the items it held will not be delivered"
            );
            quarantined = Some(q);
            match open_file(path, &keys) {
                Ok(opened) => opened,
                Err(OpenFailure::Fatal(err)) => return Err(err),
                Err(OpenFailure::Corrupt(reason)) => {
                    return Err(OutboxError::Corrupt {
                        path: path.to_owned(),
                        detail: format!("a new, empty outbox file is unusable: {reason}"),
                    });
                }
            }
        }
    };
    let open_time = started.elapsed();
    let total_items: u64 = opened.queues.iter().map(|q| q.items).sum();
    if opened.repaired {
        tracing::warn!(
            outbox = %name,
            path = %path.display(),
            items = total_items,
            took_ms = open_time.as_millis() as u64,
            "outbox was not closed cleanly; recovered its last durable state"
        );
    } else {
        tracing::debug!(outbox = %name, items = total_items, "outbox opened");
    }
    let fsync = if queues.iter().any(|(_, c)| c.fsync == FsyncPolicy::Always) {
        FsyncPolicy::Always
    } else {
        FsyncPolicy::Interval
    };
    let interval = queues
        .iter()
        .map(|(_, c)| c.interval())
        .min()
        .unwrap_or(Duration::from_secs(1));
    let mut writer = Writer::default();
    let mut queue_list = Vec::with_capacity(queues.len());
    for (index, (((queue_name, config), (items_table, state_key)), found)) in
        queues.iter().zip(keys).zip(opened.queues).enumerate()
    {
        let stats = OutboxStats {
            depth_items: found.items,
            depth_bytes: found.meta.depth_bytes,
            max_bytes: config.max_bytes.get(),
            oldest_enqueued_ms: found.oldest_ms,
            next_seq: found.meta.next_seq,
            ..OutboxStats::default()
        };
        let (appended_tx, _) = tokio::sync::watch::channel(found.meta.next_seq);
        writer.marks.push(Marks {
            seq_floor: found.meta.next_seq,
            ..Marks::default()
        });
        queue_list.push(Arc::new(Queue {
            index,
            name: if queue_name.is_empty() {
                name.clone()
            } else {
                (*queue_name).to_owned()
            },
            items_table,
            state_key,
            config: config.clone(),
            state: Mutex::new(stats),
            room: Condvar::new(),
            appended_tx,
            recovery: Recovery {
                repaired: opened.repaired,
                quarantined: quarantined.clone(),
                items: found.items,
                bytes: found.meta.depth_bytes,
                open_time,
            },
        }));
    }
    let store = Arc::new(Store {
        path: path.to_owned(),
        name: name.clone(),
        fsync,
        interval,
        clock,
        auto_expire,
        db: RwLock::new(Some(opened.db)),
        writer: Mutex::new(writer),
        stop: Mutex::new(false),
        wake: Condvar::new(),
        queues: queue_list,
    });
    let worker = store.clone();
    let flusher = std::thread::Builder::new()
        .name(format!("outbox-{name}"))
        .spawn(move || worker.run_flusher())
        .map_err(|source| OutboxError::Io {
            path: path.to_owned(),
            op: "start flusher thread",
            source,
        })?;
    let file = Arc::new(FileOwner {
        store: store.clone(),
        flusher: Mutex::new(Some(flusher)),
    });
    Ok(OutboxGroup {
        queues: store
            .queues
            .iter()
            .map(|queue| Outbox {
                file: file.clone(),
                queue: queue.clone(),
            })
            .collect(),
    })
}

/// Depth facts read inside a transaction, applied to the stats after commit.
struct Tally {
    items: u64,
    oldest_ms: Option<u64>,
}

impl Tally {
    fn of(items: &impl ReadableTable<u64, &'static [u8]>) -> Result<Tally, redb::StorageError> {
        let oldest_ms = items
            .first()?
            .and_then(|(_, v)| split_value(v.value()).map(|(ts, _)| ts));
        Ok(Tally {
            items: items.len()?,
            oldest_ms,
        })
    }

    fn apply(self, s: &mut OutboxStats, meta: Meta) {
        s.depth_items = self.items;
        s.oldest_enqueued_ms = self.oldest_ms;
        s.depth_bytes = meta.depth_bytes;
        s.next_seq = meta.next_seq;
    }
}

/// What one part of an append did, before the stats know it.
struct PartDone {
    appended: Appended,
    acked: u64,
    tally: Tally,
}

impl Store {
    fn flush_due(&self, w: &Writer) -> bool {
        w.pending_since
            .is_some_and(|t| t.elapsed() >= self.interval)
    }

    /// Runs `body` in a write transaction with every queue's [`Meta`] (by
    /// queue index), writes the metas back and commits. Returns the body's
    /// value and the new metas.
    fn write<R>(
        &self,
        w: &mut Writer,
        op: &'static str,
        durable: bool,
        closing: bool,
        body: impl FnOnce(&redb::WriteTransaction, &mut [Meta]) -> Result<R, TxError>,
    ) -> Result<(R, Vec<Meta>), OutboxError> {
        self.ensure_open(w)?;
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = guard.as_ref() else {
            return Err(self.closed_error(op));
        };
        let marks = &w.marks;
        let result = (|| -> Result<(R, Vec<Meta>), TxError> {
            let mut txn = db.begin_write()?;
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })?;
            let (value, metas) = {
                let meta_table = txn.open_table(META)?;
                let mut metas = Vec::with_capacity(self.queues.len());
                for (queue, marks) in self.queues.iter().zip(marks) {
                    let mut meta = match meta_table.get(queue.state_key.as_str())? {
                        Some(v) => Meta::from_bytes(v.value()),
                        None => None,
                    }
                    .ok_or_else(|| OutboxError::Corrupt {
                        path: self.path.clone(),
                        detail: format!("the state record of {} is missing or damaged", queue.name),
                    })?;
                    meta.next_seq = meta.next_seq.max(marks.seq_floor);
                    metas.push(meta);
                }
                // Closed while the body runs, which may write to it too.
                drop(meta_table);
                let value = body(&txn, &mut metas)?;
                let mut meta_table = txn.open_table(META)?;
                for (queue, meta) in self.queues.iter().zip(&metas) {
                    meta_table.insert(queue.state_key.as_str(), meta.to_bytes().as_slice())?;
                }
                if closing {
                    meta_table.insert(META_CLEAN, [1u8].as_slice())?;
                }
                (value, metas)
            };
            txn.commit()?;
            Ok((value, metas))
        })();
        drop(guard);
        match result {
            Ok(done) => {
                for (marks, meta) in w.marks.iter_mut().zip(&done.1) {
                    marks.seq_floor = meta.next_seq;
                }
                if durable {
                    w.pending_since = None;
                    for queue in &self.queues {
                        lock(&queue.state).durable_commits += 1;
                    }
                } else {
                    w.pending_since.get_or_insert_with(Instant::now);
                }
                Ok(done)
            }
            Err(TxError::Outbox(err)) => Err(err),
            Err(TxError::Redb(err)) => {
                // redb refuses further writes after a failed commit; reopen
                // (which repairs) before the next operation.
                w.broken = true;
                for queue in &self.queues {
                    lock(&queue.state).write_errors += 1;
                }
                Err(OutboxError::from_redb(&self.path, op, err))
            }
        }
    }

    fn closed_error(&self, op: &'static str) -> OutboxError {
        OutboxError::Store {
            path: self.path.clone(),
            op,
            source: Box::new(redb::Error::DatabaseClosed),
        }
    }

    /// Reopens the file after a failed commit (or a failed reopen).
    fn ensure_open(&self, w: &mut Writer) -> Result<(), OutboxError> {
        if !w.broken {
            return Ok(());
        }
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // Close the old handle first: the file lock allows one at a time.
        if let Some(old) = slot.take() {
            let _ = old.close();
        }
        let keys: Vec<(String, String)> = self
            .queues
            .iter()
            .map(|q| (q.items_table.clone(), q.state_key.clone()))
            .collect();
        let opened = open_file(&self.path, &keys).map_err(|failure| match failure {
            OpenFailure::Fatal(err) => err,
            OpenFailure::Corrupt(detail) => OutboxError::Corrupt {
                path: self.path.clone(),
                detail,
            },
        })?;
        *slot = Some(opened.db);
        drop(slot);
        w.broken = false;
        // Pending non-durable commits were lost or made durable by the
        // repair; either way nothing is pending now.
        w.pending_since = None;
        for ((queue, found), marks) in self.queues.iter().zip(opened.queues).zip(&w.marks) {
            let mut s = lock(&queue.state);
            s.depth_items = found.items;
            s.depth_bytes = found.meta.depth_bytes;
            s.oldest_enqueued_ms = found.oldest_ms;
            s.next_seq = found.meta.next_seq.max(marks.seq_floor);
            let lost = marks.seq_floor.saturating_sub(found.meta.next_seq);
            s.lost_on_reopen += lost;
            drop(s);
            if lost > 0 {
                tracing::error!(outbox = %queue.name, lost, first = found.meta.next_seq,
                    "a failed write took back what was appended since the last durable commit (fsync = \"interval\"): those items are lost unless already delivered");
            }
            queue.room.notify_all();
            tracing::info!(outbox = %queue.name, items = found.items, "outbox reopened after a failed write");
        }
        Ok(())
    }

    fn flush_locked(&self, w: &mut Writer) -> Result<(), OutboxError> {
        if w.pending_since.is_none() && !w.broken {
            return Ok(());
        }
        self.durable_commit(w, "flush", false)
    }

    /// An otherwise empty durable commit; `closing` marks the file closed
    /// cleanly.
    fn durable_commit(
        &self,
        w: &mut Writer,
        op: &'static str,
        closing: bool,
    ) -> Result<(), OutboxError> {
        let (tallies, metas) = self.write(w, op, true, closing, |txn, _| {
            let mut tallies = Vec::with_capacity(self.queues.len());
            for queue in &self.queues {
                tallies.push(Tally::of(&txn.open_table(queue.items())?)?);
            }
            Ok(tallies)
        })?;
        for ((queue, tally), meta) in self.queues.iter().zip(tallies).zip(metas) {
            tally.apply(&mut lock(&queue.state), meta);
        }
        Ok(())
    }

    /// The append of [`OutboxGroup::append`].
    fn append(&self, parts: &[Part<'_>]) -> Result<Vec<Appended>, OutboxError> {
        let parts: Vec<Part<'_>> = parts
            .iter()
            .copied()
            .filter(|(index, _, _)| *index < self.queues.len())
            .collect();
        let acks: Vec<(usize, &[u64])> = parts.iter().map(|&(i, _, acks)| (i, acks)).collect();
        for &(index, records, _) in &parts {
            let needed: u64 = records.iter().map(|r| cost(r.len())).sum();
            let max_bytes = self.queues[index].config.max_bytes.get();
            if needed > max_bytes {
                self.ack(&acks)?;
                return Err(OutboxError::TooLarge {
                    path: self.path.clone(),
                    needed,
                    max_bytes,
                });
            }
        }
        if parts.iter().all(|(_, records, _)| records.is_empty()) {
            self.ack(&acks)?;
            return Ok(parts
                .iter()
                .map(|&(index, _, _)| {
                    let next = lock(&self.queues[index].state).next_seq;
                    Appended {
                        seqs: next..next,
                        evicted: 0,
                        expired: 0,
                    }
                })
                .collect());
        }
        let mut w = lock(&self.writer);
        let durable = self.fsync == FsyncPolicy::Always || self.flush_due(&w);
        let now = (self.clock)();
        let mut full_queue = None;
        let result = self.write(&mut w, "append", durable, false, |txn, metas| {
            let mut done = Vec::with_capacity(parts.len());
            for &(index, records, acks) in &parts {
                let queue = &self.queues[index];
                let mut items = txn.open_table(queue.items())?;
                let meta = &mut metas[index];
                let part = queue.append_in(&mut items, meta, records, acks, now, &self.path);
                if let Err(TxError::Outbox(OutboxError::Full { .. })) = &part {
                    full_queue = Some(index);
                }
                done.push(part?);
            }
            Ok(done)
        });
        match result {
            Ok((done, metas)) => {
                let mut appended = Vec::with_capacity(done.len());
                let mut to_notify = Vec::with_capacity(done.len());
                for (&(index, _, _), part) in parts.iter().zip(done) {
                    let queue = &self.queues[index];
                    let meta = metas[index];
                    let records_n = part.appended.seqs.end - part.appended.seqs.start;
                    {
                        let mut s = lock(&queue.state);
                        s.acked += part.acked;
                        s.appended += records_n;
                        s.dropped_overflow += part.appended.evicted;
                        s.dropped_expired += part.appended.expired;
                        part.tally.apply(&mut s, meta);
                    }
                    let marks = &mut w.marks[index];
                    queue.note_expired(marks, part.appended.expired);
                    // An episode (of evictions or refusals) ends once the
                    // queue is back under half its bound: while deliveries
                    // free room item by item, appends alternate between
                    // fitting and not, and each of those must not be a new
                    // episode (and warning).
                    let relieved = meta.depth_bytes <= queue.config.max_bytes.get() / 2;
                    queue.note_overflow(marks, part.appended.evicted, relieved);
                    if relieved && let Some(refused) = marks.blocked_episode.take() {
                        tracing::info!(
                            outbox = %queue.name,
                            refused,
                            "outbox has room again; appends resumed"
                        );
                    }
                    to_notify.push((index, part.acked > 0, meta.next_seq));
                    appended.push(part.appended);
                }
                drop(w);
                for (index, acked, next_seq) in to_notify {
                    let queue = &self.queues[index];
                    queue.appended_tx.send_replace(next_seq);
                    if acked {
                        queue.room.notify_all();
                    }
                }
                Ok(appended)
            }
            Err(err @ OutboxError::Full { .. }) => {
                if let Some(index) = full_queue {
                    let queue = &self.queues[index];
                    lock(&queue.state).refused_full += 1;
                    let episode = w.marks[index].blocked_episode.get_or_insert(0);
                    if *episode == 0 {
                        tracing::warn!(
                            outbox = %queue.name,
                            max_bytes = queue.config.max_bytes.get(),
                            "outbox full: appends wait for deliveries (when_full = block)"
                        );
                    }
                    *episode += 1;
                }
                drop(w);
                // The refusal rolled the acks back with the append.
                self.ack(&acks)?;
                Err(err)
            }
            Err(err) => Err(err),
        }
    }

    /// Removes acked items from several queues in one transaction (unknown
    /// ones are ignored); returns how many were removed.
    fn ack(&self, acks: &[(usize, &[u64])]) -> Result<u64, OutboxError> {
        let acks: Vec<(usize, &[u64])> = acks
            .iter()
            .copied()
            .filter(|(index, seqs)| !seqs.is_empty() && *index < self.queues.len())
            .collect();
        if acks.is_empty() {
            return Ok(0);
        }
        let mut w = lock(&self.writer);
        let durable = self.flush_due(&w);
        let (done, metas) = self.write(&mut w, "ack", durable, false, |txn, metas| {
            let mut done = Vec::with_capacity(acks.len());
            for &(index, seqs) in &acks {
                let queue = &self.queues[index];
                let mut items = txn.open_table(queue.items())?;
                let removed = remove_in(&mut items, &mut metas[index], seqs)?;
                done.push((removed, Tally::of(&items)?));
            }
            Ok(done)
        })?;
        drop(w);
        let mut total = 0;
        for (&(index, _), (removed, tally)) in acks.iter().zip(done) {
            let queue = &self.queues[index];
            let mut s = lock(&queue.state);
            s.acked += removed;
            tally.apply(&mut s, metas[index]);
            drop(s);
            queue.room.notify_all();
            total += removed;
        }
        Ok(total)
    }

    fn expire(&self, queue: &Queue) -> Result<u64, OutboxError> {
        let Some(max_age) = queue.config.max_age_secs else {
            return Ok(0);
        };
        let mut w = lock(&self.writer);
        let now = (self.clock)();
        // Look first: an empty pass should not cost a commit.
        let due = lock(&queue.state)
            .oldest_enqueued_ms
            .is_some_and(|oldest| oldest < now.saturating_sub(max_age.get().saturating_mul(1000)));
        if !due {
            queue.note_expired(&mut w.marks[queue.index], 0);
            return Ok(0);
        }
        let durable = self.flush_due(&w);
        let ((expired, tally), metas) =
            self.write(&mut w, "expire", durable, false, |txn, metas| {
                let mut items = txn.open_table(queue.items())?;
                let expired = queue.expire_in(&mut items, &mut metas[queue.index], now)?;
                Ok((expired, Tally::of(&items)?))
            })?;
        {
            let mut s = lock(&queue.state);
            s.dropped_expired += expired;
            tally.apply(&mut s, metas[queue.index]);
        }
        queue.note_expired(&mut w.marks[queue.index], expired);
        drop(w);
        queue.room.notify_all();
        Ok(expired)
    }

    fn read(
        &self,
        queue: &Queue,
        range: impl RangeBounds<u64>,
        newest_first: bool,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        let mut out = Vec::new();
        if max_items == 0 {
            return Ok(out);
        }
        let range = (
            clone_bound(range.start_bound()),
            clone_bound(range.end_bound()),
        );
        let guard = self.read_guard()?;
        let Some(db) = guard.as_ref() else {
            return Err(self.closed_error("read"));
        };
        let redb_err = |e: redb::Error| OutboxError::from_redb(&self.path, "read", e);
        let txn = db.begin_read().map_err(|e| redb_err(e.into()))?;
        let table = txn
            .open_table(queue.items())
            .map_err(|e| redb_err(e.into()))?;
        let iter = table.range(range).map_err(|e| redb_err(e.into()))?;
        let iter: Box<dyn Iterator<Item = _>> = if newest_first {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        };
        let mut bytes = 0usize;
        for entry in iter {
            let (k, v) = entry.map_err(|e| redb_err(e.into()))?;
            let seq = k.value();
            let value = v.value();
            let Some((enqueued_ms, record)) = split_value(value) else {
                return Err(OutboxError::CorruptItem {
                    path: self.path.clone(),
                    seq,
                    len: value.len(),
                });
            };
            if !out.is_empty() && bytes + record.len() > max_bytes {
                break;
            }
            bytes += record.len();
            out.push(Item {
                seq,
                enqueued_ms,
                record: record.to_vec(),
            });
            if out.len() >= max_items {
                break;
            }
        }
        Ok(out)
    }

    /// The database for reading; reopens it first if a write broke it.
    fn read_guard(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, OutboxError> {
        {
            let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
            if guard.is_some() {
                return Ok(guard);
            }
        }
        let mut w = lock(&self.writer);
        self.ensure_open(&mut w)?;
        drop(w);
        Ok(self.db.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// See [`Outbox::absorb`].
    fn absorb(&self, queue: &Queue, legacy: &Path) -> Result<u64, OutboxError> {
        let marker = format!("{}.absorbed", queue.state_key);
        let read_marker = || -> Result<Option<u64>, OutboxError> {
            let guard = self.read_guard()?;
            let Some(db) = guard.as_ref() else {
                return Err(self.closed_error("absorb"));
            };
            let err = |e: redb::Error| OutboxError::from_redb(&self.path, "absorb", e);
            let txn = db.begin_read().map_err(|e| err(e.into()))?;
            let table = txn.open_table(META).map_err(|e| err(e.into()))?;
            let value = table.get(marker.as_str()).map_err(|e| err(e.into()))?;
            Ok(value.and_then(|v| <[u8; 8]>::try_from(v.value()).ok().map(u64::from_le_bytes)))
        };
        let set_marker = |value: Option<u64>| -> Result<(), OutboxError> {
            let mut w = lock(&self.writer);
            self.write(&mut w, "absorb", true, false, |txn, _| {
                let mut table = txn.open_table(META)?;
                match value {
                    Some(seq) => table.insert(marker.as_str(), seq.to_le_bytes().as_slice())?,
                    None => table.remove(marker.as_str())?,
                };
                Ok(())
            })?;
            Ok(())
        };
        let mut done = read_marker()?;
        if !legacy.exists() {
            // Finished before, and the file deleted: forget the position (a
            // new legacy file would count from 0 again).
            if done.is_some() {
                set_marker(None)?;
            }
            return Ok(0);
        }
        let old = Outbox::open_with(
            legacy,
            OutboxConfig {
                max_bytes: NonZeroU64::MAX,
                ..OutboxConfig::default()
            },
            self.clock.clone(),
            false,
        )?;
        let mut moved = 0u64;
        loop {
            let chunk = old.peek(done, 4096, 16 << 20)?;
            let Some(last) = chunk.last().map(|item| item.seq) else {
                break;
            };
            let mut w = lock(&self.writer);
            let ((), metas) = self.write(&mut w, "absorb", true, false, |txn, metas| {
                let mut items = txn.open_table(queue.items())?;
                let meta = &mut metas[queue.index];
                let mut value = Vec::new();
                for item in &chunk {
                    value.clear();
                    value.extend_from_slice(&item.enqueued_ms.to_le_bytes());
                    value.extend_from_slice(&item.record);
                    items.insert(meta.next_seq, value.as_slice())?;
                    meta.next_seq += 1;
                    meta.depth_bytes += cost(item.record.len());
                }
                let tally = Tally::of(&items)?;
                drop(items);
                txn.open_table(META)?
                    .insert(marker.as_str(), last.to_le_bytes().as_slice())?;
                let mut s = lock(&queue.state);
                s.appended += chunk.len() as u64;
                tally.apply(&mut s, *meta);
                Ok(())
            })?;
            drop(w);
            queue.appended_tx.send_replace(metas[queue.index].next_seq);
            moved += chunk.len() as u64;
            done = Some(last);
        }
        old.close()?;
        remove_durably(legacy)?;
        set_marker(None)?;
        if moved > 0 {
            tracing::info!(outbox = %queue.name, from = %legacy.display(), items = moved,
                "moved the items of an outbox file of the previous layout into the shared outbox");
        }
        Ok(moved)
    }

    /// The background thread: makes non-durable commits durable within
    /// `fsync_interval_ms`, expires items, retries a broken file.
    fn run_flusher(&self) {
        let mut errors = crate::ratelimit::RateLimiter::new(1, Duration::from_secs(60));
        loop {
            let wait = {
                let w = lock(&self.writer);
                match w.pending_since {
                    Some(since) => self.interval.saturating_sub(since.elapsed()),
                    None => MAINTENANCE_TICK,
                }
                .min(MAINTENANCE_TICK)
            };
            {
                let stop = lock(&self.stop);
                if *stop {
                    return;
                }
                let (stop, _) = self
                    .wake
                    .wait_timeout(stop, wait)
                    .unwrap_or_else(PoisonError::into_inner);
                if *stop {
                    return;
                }
            }
            let mut result = Ok(0);
            if self.auto_expire {
                for queue in &self.queues {
                    result = result.and_then(|_| self.expire(queue));
                }
            }
            let result = result.and_then(|_| {
                let mut w = lock(&self.writer);
                if self.flush_due(&w) || w.broken {
                    self.flush_locked(&mut w)
                } else {
                    Ok(())
                }
            });
            let result = result.and_then(|()| self.shrink_if_drained());
            if let Err(err) = result
                && let Some(suppressed) = errors.check()
            {
                tracing::error!(
                    outbox = %self.name,
                    error = %err,
                    suppressed,
                    "outbox background flush or compaction failed; retrying"
                );
            }
        }
    }

    /// Gives a drained file's free pages back to the file system: when the
    /// file is larger than [`SHRINK_ABOVE_BYTES`] and [`SHRINK_FREE_RATIO`]
    /// times what it holds, compacts it (redb moves the live pages to the
    /// front and truncates the free tail). Appends, acks and reads wait for
    /// it; with little left in the file that is short (BENCHMARKS.md).
    fn shrink_if_drained(&self) -> Result<(), OutboxError> {
        let held = || {
            self.queues
                .iter()
                .map(|q| lock(&q.state).depth_bytes)
                .sum::<u64>()
                .max(1)
        };
        let file_len = || std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let worth_it = |len: u64, w: &Writer| {
            len > SHRINK_ABOVE_BYTES
                && len / SHRINK_FREE_RATIO >= held()
                && len > w.compacted_len.saturating_add(SHRINK_ABOVE_BYTES)
        };
        let mut w = lock(&self.writer);
        let before = file_len();
        if w.broken || !worth_it(before, &w) {
            return Ok(());
        }
        let started = Instant::now();
        // The write lock waits for reads in progress and keeps new ones out:
        // compaction needs no live transaction.
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = slot.as_mut() else {
            return Ok(());
        };
        let compacted = db.compact();
        drop(slot);
        match compacted {
            Ok(_) => {}
            Err(err @ redb::CompactionError::Storage(_)) => {
                // Nothing was lost (compaction commits like any write), but
                // the handle may be unusable: reopen before the next write.
                w.broken = true;
                for queue in &self.queues {
                    lock(&queue.state).write_errors += 1;
                }
                return Err(OutboxError::from_redb(&self.path, "compact", err.into()));
            }
            Err(err) => {
                // A live transaction or savepoint (none of ours outlives its
                // call): try again once the file has grown.
                w.compacted_len = before;
                return Err(OutboxError::from_redb(&self.path, "compact", err.into()));
            }
        }
        // Compaction's commits are durable, so whatever was pending is too.
        w.pending_since = None;
        let after = file_len();
        w.compacted_len = after;
        for queue in &self.queues {
            lock(&queue.state).compactions += 1;
        }
        tracing::info!(
            outbox = %self.name,
            before_mib = before as f64 / (1 << 20) as f64,
            after_mib = after as f64 / (1 << 20) as f64,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "outbox drained: compacted its file"
        );
        Ok(())
    }
}

/// Removes the items with these sequence numbers (unknown ones are
/// ignored) and returns how many were removed.
fn remove_in(
    items: &mut redb::Table<'_, u64, &'static [u8]>,
    meta: &mut Meta,
    seqs: &[u64],
) -> Result<u64, TxError> {
    let mut removed = 0;
    for &seq in seqs {
        if let Some(value) = items.remove(seq)? {
            meta.depth_bytes = meta
                .depth_bytes
                .saturating_sub(cost(value.value().len().saturating_sub(8)));
            removed += 1;
        }
    }
    Ok(removed)
}

impl Queue {
    /// One queue's part of an append: acks, expiries, room, the records.
    fn append_in(
        &self,
        items: &mut redb::Table<'_, u64, &'static [u8]>,
        meta: &mut Meta,
        records: &[&[u8]],
        acks: &[u64],
        now: u64,
        path: &Path,
    ) -> Result<PartDone, TxError> {
        let acked = remove_in(items, meta, acks)?;
        let mut appended = Appended {
            seqs: meta.next_seq..meta.next_seq,
            evicted: 0,
            expired: 0,
        };
        if !records.is_empty() {
            appended.expired = self.expire_in(items, meta, now)?;
            let needed: u64 = records.iter().map(|r| cost(r.len())).sum();
            let max_bytes = self.config.max_bytes.get();
            while meta.depth_bytes + needed > max_bytes {
                if self.config.when_full == QueueFullPolicy::Block {
                    return Err(OutboxError::Full {
                        path: path.to_owned(),
                        needed,
                        depth_bytes: meta.depth_bytes,
                        max_bytes,
                    }
                    .into());
                }
                let Some((_, value)) = items.pop_first()? else {
                    break;
                };
                meta.depth_bytes = meta
                    .depth_bytes
                    .saturating_sub(cost(value.value().len().saturating_sub(8)));
                appended.evicted += 1;
            }
            let first = meta.next_seq;
            let mut value = Vec::new();
            for record in records {
                value.clear();
                value.extend_from_slice(&now.to_le_bytes());
                value.extend_from_slice(record);
                items.insert(meta.next_seq, value.as_slice())?;
                meta.next_seq += 1;
                meta.depth_bytes += cost(record.len());
            }
            appended.seqs = first..meta.next_seq;
        }
        Ok(PartDone {
            appended,
            acked,
            tally: Tally::of(items)?,
        })
    }

    /// Pops expired items off the head. Enqueue times follow the wall clock,
    /// so a clock set back can leave an older item behind a newer one; it
    /// expires when it reaches the head.
    fn expire_in(
        &self,
        items: &mut redb::Table<'_, u64, &'static [u8]>,
        meta: &mut Meta,
        now: u64,
    ) -> Result<u64, TxError> {
        let Some(max_age) = self.config.max_age_secs else {
            return Ok(0);
        };
        let cutoff = now.saturating_sub(max_age.get().saturating_mul(1000));
        let mut expired = 0;
        loop {
            let len = match items.first()? {
                Some((_, v)) => match split_value(v.value()) {
                    Some((ts, record)) if ts < cutoff => Some(record.len()),
                    Some(_) => None,
                    // Damaged: let the reader report it.
                    None => None,
                },
                None => None,
            };
            let Some(len) = len else {
                break;
            };
            items.pop_first()?;
            meta.depth_bytes = meta.depth_bytes.saturating_sub(cost(len));
            expired += 1;
        }
        Ok(expired)
    }

    fn note_expired(&self, marks: &mut Marks, expired: u64) {
        if expired > 0 {
            let episode = marks.expiry_episode.get_or_insert(0);
            if *episode == 0 {
                tracing::warn!(
                    outbox = %self.name,
                    max_age_secs = self.config.max_age_secs.map_or(0, NonZeroU64::get),
                    "outbox items are expiring undelivered (max_age_secs); counted as dropped"
                );
            }
            *episode += expired;
        } else if let Some(total) = marks.expiry_episode.take() {
            tracing::info!(
                outbox = %self.name,
                expired = total,
                "outbox items stopped expiring"
            );
        }
    }

    fn note_overflow(&self, marks: &mut Marks, evicted: u64, relieved: bool) {
        if evicted > 0 {
            let episode = marks.overflow_episode.get_or_insert(0);
            if *episode == 0 {
                tracing::warn!(
                    outbox = %self.name,
                    max_bytes = self.config.max_bytes.get(),
                    "outbox full: dropping the oldest items (when_full = drop_oldest) until deliveries make room"
                );
            }
            *episode += evicted;
        } else if relieved && let Some(total) = marks.overflow_episode.take() {
            tracing::info!(
                outbox = %self.name,
                dropped = total,
                "outbox has room again; oldest items dropped in this episode"
            );
        }
    }
}

/// Deletes a file and makes the deletion durable (a missing file is fine).
fn remove_durably(path: &Path) -> Result<(), OutboxError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(OutboxError::Io {
                path: path.to_owned(),
                op: "remove",
                source,
            });
        }
    }
    sync_parent_dir(path)
}

/// Makes a rename or removal of `path` durable: fsync of its directory.
fn sync_parent_dir(path: &Path) -> Result<(), OutboxError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| OutboxError::Io {
                path: path.to_owned(),
                op: "sync the directory",
                source,
            })?;
    }
    Ok(())
}

fn clone_bound(bound: Bound<&u64>) -> Bound<u64> {
    match bound {
        Bound::Included(v) => Bound::Included(*v),
        Bound::Excluded(v) => Bound::Excluded(*v),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state behind these locks is only changed after a commit, in
    // statements that cannot panic halfway; a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Whether an open error means "this file is not a usable database" (move
/// it aside) rather than "cannot open it now" (report).
fn classify_open_error(path: &Path, err: redb::Error) -> OpenFailure {
    match err {
        redb::Error::Corrupted(detail) => OpenFailure::Corrupt(detail),
        redb::Error::UpgradeRequired(v) => {
            OpenFailure::Corrupt(format!("redb file format {v} needs an upgrade"))
        }
        redb::Error::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
            OpenFailure::Corrupt(e.to_string())
        }
        redb::Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            OpenFailure::Corrupt(format!("truncated: {e}"))
        }
        redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. } => {
            OpenFailure::Corrupt(format!("not a sluice outbox: {err}"))
        }
        redb::Error::ValueTooLarge(_) => OpenFailure::Corrupt(err.to_string()),
        other => OpenFailure::Fatal(OutboxError::from_redb(path, "open", other)),
    }
}

/// Opens or creates the database, checks the layout, reads each queue's
/// meta (`keys`: items table and state key per queue). A panic inside redb
/// (it trusts a file closed cleanly) is a corrupt file.
fn open_file(path: &Path, keys: &[(String, String)]) -> Result<Opened, OpenFailure> {
    match catch_unwind(AssertUnwindSafe(|| open_file_inner(path, keys))) {
        Ok(result) => result,
        Err(payload) => Err(OpenFailure::Corrupt(format!(
            "redb panicked while opening it: {}",
            panic_message(payload.as_ref())
        ))),
    }
}

fn open_file_inner(path: &Path, keys: &[(String, String)]) -> Result<Opened, OpenFailure> {
    // A file redb closed cleanly is trusted by a plain open, and a page
    // damaged since then makes redb panic when it is read (tested), long
    // after the open. Checking every page's checksum on open turns that into
    // a `Corrupted` error here, where the file can be moved aside. It costs a
    // read of the whole file per start.
    let mut builder = redb::Builder::new();
    builder
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(true);
    let db = builder
        .create(path)
        .map_err(|e| classify_open_error(path, e.into()))?;
    let fail = |e: redb::Error| classify_open_error(path, e);
    let txn = db.begin_write().map_err(|e| fail(e.into()))?;
    let (queues, repaired) = {
        let mut meta_table = txn.open_table(META).map_err(|e| fail(e.into()))?;
        let format = meta_table
            .get(META_FORMAT)
            .map_err(|e| fail(e.into()))?
            .map(|v| v.value().to_vec());
        let clean = meta_table
            .get(META_CLEAN)
            .map_err(|e| fail(e.into()))?
            .map(|v| v.value() == [1]);
        let repaired = format.is_some() && clean != Some(true);
        match &format {
            None => {}
            Some(raw) => {
                let version = <[u8; 4]>::try_from(raw.as_slice())
                    .map(u32::from_le_bytes)
                    .map_err(|_| OpenFailure::Corrupt("damaged format record".into()))?;
                if version > FORMAT_VERSION {
                    return Err(OpenFailure::Fatal(OutboxError::UnsupportedFormat {
                        path: path.to_owned(),
                        found: version,
                    }));
                }
                if version == 0 {
                    return Err(OpenFailure::Corrupt("format record says 0".into()));
                }
            }
        }
        let mut queues = Vec::with_capacity(keys.len());
        for (items_table, state_key) in keys {
            let items_table = txn
                .open_table(TableDefinition::<u64, &[u8]>::new(items_table))
                .map_err(|e| fail(e.into()))?;
            let items = items_table.len().map_err(|e| fail(e.into()))?;
            let stored = meta_table
                .get(state_key.as_str())
                .map_err(|e| fail(e.into()))?
                .map(|v| v.value().to_vec());
            let last = items_table
                .last()
                .map_err(|e| fail(e.into()))?
                .map(|(k, _)| k.value());
            let oldest_ms = match items_table.first().map_err(|e| fail(e.into()))? {
                Some((k, v)) => match split_value(v.value()) {
                    Some((ts, _)) => Some(ts),
                    None => {
                        return Err(OpenFailure::Corrupt(format!(
                            "item {} is damaged ({} bytes)",
                            k.value(),
                            v.value().len()
                        )));
                    }
                },
                None => None,
            };
            let meta = match (&format, stored) {
                (None, stored) => {
                    if items > 0 || stored.is_some() {
                        return Err(OpenFailure::Corrupt(
                            "items but no format record: not a sluice outbox".into(),
                        ));
                    }
                    Meta::default()
                }
                // A queue new to this file.
                (Some(_), None) if items == 0 => Meta::default(),
                (Some(_), stored) => {
                    let mut meta = stored
                        .as_deref()
                        .and_then(Meta::from_bytes)
                        .ok_or_else(|| OpenFailure::Corrupt("damaged state record".into()))?;
                    if let Some(last) = last {
                        meta.next_seq = meta.next_seq.max(last.saturating_add(1));
                    }
                    if items == 0 {
                        meta.depth_bytes = 0;
                    }
                    meta
                }
            };
            meta_table
                .insert(state_key.as_str(), meta.to_bytes().as_slice())
                .map_err(|e| fail(e.into()))?;
            queues.push(OpenedQueue {
                meta,
                items,
                oldest_ms,
            });
        }
        if format.is_none() {
            meta_table
                .insert(META_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())
                .map_err(|e| fail(e.into()))?;
        }
        meta_table
            .insert(META_CLEAN, [0u8].as_slice())
            .map_err(|e| fail(e.into()))?;
        (queues, repaired)
    };
    txn.commit().map_err(|e| fail(e.into()))?;
    Ok(Opened {
        db,
        queues,
        repaired,
    })
}

/// Moves a damaged file aside as `NAME.corrupt-<unix ms>`.
fn quarantine(path: &Path, reason: &str, now_ms: u64) -> Result<Quarantined, OutboxError> {
    let io_err = |op, source| OutboxError::Io {
        path: path.to_owned(),
        op,
        source,
    };
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{now_ms}"));
    let moved_to = path.with_file_name(name);
    std::fs::rename(path, &moved_to).map_err(|e| io_err("move a damaged file aside", e))?;
    // Make the rename durable before a new file takes the name.
    sync_parent_dir(path)?;
    Ok(Quarantined {
        moved_to,
        file_bytes,
        reason: reason.to_owned(),
    })
}

/// What `sluice outbox inspect` shows of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectReport {
    /// The queue's name (empty in a file of the previous layout, which
    /// holds one queue).
    pub queue: String,
    /// Items stored.
    pub items: u64,
    /// Bytes counted against `max_bytes`.
    pub bytes: u64,
    /// Enqueue time of the oldest item, ms since the epoch.
    pub oldest_enqueued_ms: Option<u64>,
    /// Sequence numbers stored, oldest and newest.
    pub seq_range: Option<(u64, u64)>,
    /// The next sequence number.
    pub next_seq: u64,
    /// Size of the file.
    pub file_bytes: u64,
}

/// Reads the depth of each queue of an outbox file without changing it. Fails with
/// [`OutboxError::InUse`] while a host has it open, and with a `Store`
/// error (`RepairAborted`) if it needs the repair that opening it does.
pub fn inspect(path: &Path) -> Result<Vec<InspectReport>, OutboxError> {
    let file_bytes = std::fs::metadata(path)
        .map_err(|source| OutboxError::Io {
            path: path.to_owned(),
            op: "inspect",
            source,
        })?
        .len();
    let run = || -> Result<Vec<InspectReport>, OutboxError> {
        let err = |e: redb::Error| OutboxError::from_redb(path, "inspect", e);
        match redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .open_read_only(path)
        {
            Ok(db) => inspect_db(&db, path, file_bytes),
            // Left by a crash: redb wants to repair it, which read-only
            // cannot. Repair a private copy instead, so inspecting never
            // changes the file a stopped host will reopen.
            Err(redb::DatabaseError::RepairAborted) => {
                let copy = tempfile::NamedTempFile::new().map_err(|source| OutboxError::Io {
                    path: path.to_owned(),
                    op: "inspect (copy for repair)",
                    source,
                })?;
                std::fs::copy(path, copy.path()).map_err(|source| OutboxError::Io {
                    path: path.to_owned(),
                    op: "inspect (copy for repair)",
                    source,
                })?;
                let db = redb::Builder::new()
                    .set_cache_size(CACHE_BYTES)
                    .open(copy.path())
                    .map_err(|e| err(e.into()))?;
                inspect_db(&db, path, file_bytes)
            }
            Err(e) => Err(err(e.into())),
        }
    };
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|payload| {
        Err(OutboxError::Corrupt {
            path: path.to_owned(),
            detail: format!("redb panicked: {}", panic_message(payload.as_ref())),
        })
    })
}

/// The queues of a file: their names, from the state records in [`META`].
fn queue_names(
    meta_table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<String>, redb::StorageError> {
    let mut names = Vec::new();
    for entry in meta_table.iter()? {
        let (key, _) = entry?;
        let key = key.value();
        if key == META_STATE {
            names.push(String::new());
        } else if let Some(name) = key.strip_suffix(&format!(".{META_STATE}")) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// The [`inspect`] reports of an open database, one per queue.
fn inspect_db(
    db: &impl redb::ReadableDatabase,
    path: &Path,
    file_bytes: u64,
) -> Result<Vec<InspectReport>, OutboxError> {
    let err = |e: redb::Error| OutboxError::from_redb(path, "inspect", e);
    let txn = db.begin_read().map_err(|e| err(e.into()))?;
    let meta_table = txn.open_table(META).map_err(|e| err(e.into()))?;
    let names = queue_names(&meta_table).map_err(|e| err(e.into()))?;
    if names.is_empty() {
        return Err(OutboxError::Corrupt {
            path: path.to_owned(),
            detail: "no state record: not a sluice outbox".into(),
        });
    }
    let mut reports = Vec::with_capacity(names.len());
    for name in names {
        let (items_table, state_key) = queue_keys(&name);
        let meta = meta_table
            .get(state_key.as_str())
            .map_err(|e| err(e.into()))?
            .and_then(|v| Meta::from_bytes(v.value()))
            .ok_or_else(|| OutboxError::Corrupt {
                path: path.to_owned(),
                detail: format!("damaged state record of queue {name:?}"),
            })?;
        let items = match txn.open_table(TableDefinition::<u64, &[u8]>::new(&items_table)) {
            Ok(items) => items,
            // A queue whose table was never written.
            Err(redb::TableError::TableDoesNotExist(_)) => {
                reports.push(InspectReport {
                    queue: name,
                    items: 0,
                    bytes: 0,
                    oldest_enqueued_ms: None,
                    seq_range: None,
                    next_seq: meta.next_seq,
                    file_bytes,
                });
                continue;
            }
            Err(e) => return Err(err(e.into())),
        };
        let first = items.first().map_err(|e| err(e.into()))?;
        let last = items.last().map_err(|e| err(e.into()))?;
        let oldest_enqueued_ms = first
            .as_ref()
            .and_then(|(_, v)| split_value(v.value()).map(|(ts, _)| ts));
        let seq_range = first
            .zip(last)
            .map(|((a, _), (b, _))| (a.value(), b.value()));
        reports.push(InspectReport {
            queue: name,
            items: items.len().map_err(|e| err(e.into()))?,
            bytes: meta.depth_bytes,
            oldest_enqueued_ms,
            seq_range,
            next_seq: meta.next_seq,
            file_bytes,
        });
    }
    Ok(reports)
}

/// What `sluice outbox verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The last process that had the file open closed it (false: it
    /// crashed or was killed; opening the file recovered its last durable
    /// state, as starting the host would).
    pub closed_cleanly: bool,
    /// redb's integrity check found a problem and repaired it.
    pub repaired: bool,
    /// Items read.
    pub items: u64,
    /// Their bytes, as counted against `max_bytes`.
    pub bytes: u64,
    /// Problems found (undecodable records, wrong bookkeeping), at most 20
    /// described; `problem_count` counts them all.
    pub problems: Vec<String>,
    /// Number of problems.
    pub problem_count: u64,
}

/// Checks an outbox file: redb's integrity check (checksums of every page;
/// repairs what a crash left, as opening would), then reads every item,
/// passes its record to `decode`, and checks the bookkeeping. Needs the file
/// to itself ([`OutboxError::InUse`] while a host runs). Does not create the
/// file and never moves it.
pub fn verify(
    path: &Path,
    decode: impl Fn(&[u8]) -> Result<(), String>,
) -> Result<VerifyReport, OutboxError> {
    let run = || -> Result<VerifyReport, OutboxError> {
        let err = |e: redb::Error| OutboxError::from_redb(path, "verify", e);
        let corrupt = |detail: String| OutboxError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        let mut db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .open(path)
            .map_err(|e| match classify_open_error(path, e.into()) {
                OpenFailure::Corrupt(detail) => corrupt(detail),
                OpenFailure::Fatal(err) => err,
            })?;
        let passed = match db.check_integrity() {
            Ok(passed) => passed,
            Err(e) => {
                return Err(match classify_open_error(path, e.into()) {
                    OpenFailure::Corrupt(detail) => corrupt(detail),
                    OpenFailure::Fatal(err) => err,
                });
            }
        };
        let mut report = VerifyReport {
            repaired: !passed,
            ..VerifyReport::default()
        };
        let problem = |report: &mut VerifyReport, text: String| {
            report.problem_count += 1;
            if report.problems.len() < 20 {
                report.problems.push(text);
            }
        };
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let meta_table = txn
            .open_table(META)
            .map_err(|e| corrupt(format!("not a sluice outbox: {e}")))?;
        let format = meta_table
            .get(META_FORMAT)
            .map_err(|e| err(e.into()))?
            .map(|v| v.value().to_vec());
        match format.as_deref().map(<[u8; 4]>::try_from) {
            Some(Ok(raw)) if u32::from_le_bytes(raw) == FORMAT_VERSION => {}
            Some(Ok(raw)) => {
                return Err(OutboxError::UnsupportedFormat {
                    path: path.to_owned(),
                    found: u32::from_le_bytes(raw),
                });
            }
            _ => return Err(corrupt("no valid format record".into())),
        }
        report.closed_cleanly = meta_table
            .get(META_CLEAN)
            .map_err(|e| err(e.into()))?
            .is_some_and(|v| v.value() == [1]);
        let names = queue_names(&meta_table).map_err(|e| err(e.into()))?;
        if names.is_empty() {
            return Err(corrupt("no valid state record".into()));
        }
        for name in names {
            // Problems name the queue when the file holds several.
            let label = if name.is_empty() {
                String::new()
            } else {
                format!("queue {name}: ")
            };
            let (items_table, state_key) = queue_keys(&name);
            let meta = meta_table
                .get(state_key.as_str())
                .map_err(|e| err(e.into()))?
                .and_then(|v| Meta::from_bytes(v.value()))
                .ok_or_else(|| corrupt(format!("{label}no valid state record")))?;
            let items = match txn.open_table(TableDefinition::<u64, &[u8]>::new(&items_table)) {
                Ok(items) => items,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(corrupt(format!("not a sluice outbox: {e}"))),
            };
            let mut last_seq = None;
            let mut bytes = 0;
            for entry in items.iter().map_err(|e| err(e.into()))? {
                let (k, v) = entry.map_err(|e| err(e.into()))?;
                let seq = k.value();
                last_seq = Some(seq);
                report.items += 1;
                match split_value(v.value()) {
                    Some((_, record)) => {
                        bytes += cost(record.len());
                        if let Err(why) = decode(record) {
                            problem(&mut report, format!("{label}item {seq}: {why}"));
                        }
                    }
                    None => problem(
                        &mut report,
                        format!("{label}item {seq}: damaged ({} bytes)", v.value().len()),
                    ),
                }
            }
            report.bytes += bytes;
            if bytes != meta.depth_bytes {
                let text = format!(
                    "{label}the state record counts {} bytes, the items add up to {bytes}",
                    meta.depth_bytes
                );
                problem(&mut report, text);
            }
            if let Some(last) = last_seq
                && last >= meta.next_seq
            {
                problem(
                    &mut report,
                    format!(
                        "{label}item {last} is not below the next sequence number {}",
                        meta.next_seq
                    ),
                );
            }
        }
        Ok(report)
    };
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|payload| {
        Err(OutboxError::Corrupt {
            path: path.to_owned(),
            detail: format!("redb panicked: {}", panic_message(payload.as_ref())),
        })
    })
}
