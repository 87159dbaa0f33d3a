//! What an outbox is configured with, and where its files live.

use super::*;

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

/// `fsync` policy, see the module documentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Every append is durable when it returns.
    #[default]
    Always,
    /// A durable commit at most every `fsync_interval_ms`; a crash of the
    /// process loses nothing (appends are written, not synced), a power cut
    /// up to that much of the latest appends.
    Interval,
}

/// Settings of one sink's outbox (`[mqtt.outbox]`, `[influx.outbox]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Read by the host's log writer, not here: commits start at least
    /// this far apart, in milliseconds (fractions allowed), so frames that arrive
    /// meanwhile share one (less CPU per frame, more latency); a frame after
    /// a quiet spell commits at once. With 0 a commit waits only for frames
    /// already on their way from the ports. At most
    /// [`MAX_COMMIT_LINGER_MS`]; default 1.5.
    #[serde(default = "default_commit_linger")]
    pub commit_linger_ms: f64,
}

/// The longest `commit_linger_ms`.
pub const MAX_COMMIT_LINGER_MS: f64 = 100.0;

fn default_commit_linger() -> f64 {
    1.5
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
            commit_linger_ms: default_commit_linger(),
        }
    }
}

impl OutboxConfig {
    pub(crate) fn interval(&self) -> Duration {
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
