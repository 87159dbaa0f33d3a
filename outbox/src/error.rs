//! What can go wrong, each naming the file.

use super::*;

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

    pub(crate) fn from_redb(path: &Path, op: &'static str, err: redb::Error) -> Self {
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

pub(crate) fn is_no_space(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::StorageFull
        || err.kind() == io::ErrorKind::QuotaExceeded
        || err.raw_os_error() == Some(nix::libc::ENOSPC)
        || err.raw_os_error() == Some(nix::libc::EDQUOT)
}

/// Converts redb's many error types into `redb::Error` inside transactions,
/// beside our own errors.
pub(crate) enum TxError {
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
