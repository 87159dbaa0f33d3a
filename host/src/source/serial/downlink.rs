//! Downlink: bytes for the device, handed to the port task.
//!
//! A [`DownlinkSender`] is the only way in: a bounded queue into the port
//! task of one pipeline. It carries payloads that are already encoded (by the
//! transform's encode entry point) but not yet framed; the port task frames
//! each with the port's framer and writes it between reads, in queue order,
//! with a write timeout.
//!
//! * The queue holds `serial.downlink_queue` commands, including while the
//!   port is disconnected (they are written after the reopen).
//! * [`try_send`](DownlinkSender::try_send) never waits: with the queue full
//!   the command is refused and counted (`downlink_dropped{reason="queue_full"}`).
//!   This is the one to call from an MQTT event loop, which must not block.
//!   [`send`](DownlinkSender::send) waits for room instead.
//! * A command older than `serial.downlink_max_age_ms` when its turn comes is
//!   not written (`expired`); one the framer cannot encode is not written
//!   (`encode_failed`); a failed or timed-out write is counted
//!   (`write_failed`, `write_timeout`); commands still queued when the host
//!   stops are counted (`shutdown`). Written ones count as `downlink_written`.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::metrics::serial::{DownlinkDrop, SerialMetrics};

/// One queued command.
#[derive(Debug)]
pub(crate) struct Command {
    pub payload: Vec<u8>,
    pub queued_at: Instant,
}

/// Why a command was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownlinkError {
    /// The queue is full (the port is slow or disconnected); counted.
    #[error("downlink queue of pipeline {0:?} is full; command dropped")]
    QueueFull(Arc<str>),
    /// The port task has stopped (host shutting down); counted.
    #[error("the port task of pipeline {0:?} has stopped; command dropped")]
    Stopped(Arc<str>),
}

/// The sending side of one pipeline's downlink queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DownlinkSender {
    pipeline: Arc<str>,
    tx: mpsc::Sender<Command>,
    metrics: SerialMetrics,
}

impl DownlinkSender {
    /// The pipeline whose port this writes to.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// Queues `payload` (encoded, not framed) without waiting. Refused and
    /// counted when the queue is full or the port task stopped.
    pub fn try_send(&self, payload: Vec<u8>) -> Result<(), DownlinkError> {
        let command = Command {
            payload,
            queued_at: Instant::now(),
        };
        self.tx.try_send(command).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => {
                self.metrics.downlink_dropped(DownlinkDrop::QueueFull);
                DownlinkError::QueueFull(self.pipeline.clone())
            }
            mpsc::error::TrySendError::Closed(_) => {
                self.metrics.downlink_dropped(DownlinkDrop::PortStopped);
                DownlinkError::Stopped(self.pipeline.clone())
            }
        })
    }

    /// Queues `payload`, waiting while the queue is full.
    pub async fn send(&self, payload: Vec<u8>) -> Result<(), DownlinkError> {
        let command = Command {
            payload,
            queued_at: Instant::now(),
        };
        self.tx.send(command).await.map_err(|_| {
            self.metrics.downlink_dropped(DownlinkDrop::PortStopped);
            DownlinkError::Stopped(self.pipeline.clone())
        })
    }

    /// Commands waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// A downlink queue of `capacity` commands for `pipeline`.
pub(crate) fn channel(
    pipeline: Arc<str>,
    capacity: usize,
    metrics: SerialMetrics,
) -> (DownlinkSender, mpsc::Receiver<Command>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        DownlinkSender {
            pipeline,
            tx,
            metrics,
        },
        rx,
    )
}

/// Counts every command still queued as dropped for `reason` (the receiver
/// is closed first, so nothing new arrives).
pub(crate) fn drain_dropped(
    rx: &mut mpsc::Receiver<Command>,
    metrics: &SerialMetrics,
    reason: DownlinkDrop,
) {
    rx.close();
    while rx.try_recv().is_ok() {
        metrics.downlink_dropped(reason);
    }
}
