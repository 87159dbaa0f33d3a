//! The serial port task: open, read, frame, reopen when the device vanishes.
//!
//! The task never gives up on a port: a missing device (not plugged in yet,
//! unplugged, a USB adapter re-enumerating) is retried with backoff, and the
//! log says so once per state change, not once per attempt. Frames go to the
//! pipeline through a bounded channel; when it is full the task stops reading
//! and the kernel's buffer holds the bytes (backpressure).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::SerialConfig;
use crate::metrics::PipelineMetrics;
use crate::model::{Frame, now_ns};
use crate::source::framing::{FramerEvent, LineFramer};

/// Why a read session ended.
enum SessionEnd {
    Shutdown,
    PipelineClosed,
    Lost(String),
}

/// Reads `config.path` until `shutdown`, sending frames to `frames`.
pub async fn run(
    pipeline: Arc<str>,
    config: SerialConfig,
    frames: mpsc::Sender<Frame>,
    metrics: PipelineMetrics,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    // Whether the last state we logged was "unavailable", to log once per change.
    let mut reported_unavailable = false;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let opened =
            tokio_serial::new(config.path.to_string_lossy(), config.baud.get()).open_native_async();
        match opened {
            Ok(stream) => {
                tracing::info!(pipeline = &*pipeline, path = %config.path.display(), "serial port open");
                backoff.reset();
                let framer = LineFramer::new(config.max_frame_bytes.get());
                let framed = FramedRead::new(stream, framer);
                match read_session(&pipeline, framed, &frames, &metrics, &shutdown).await {
                    SessionEnd::Shutdown | SessionEnd::PipelineClosed => return,
                    SessionEnd::Lost(why) => {
                        tracing::warn!(pipeline = &*pipeline, path = %config.path.display(),
                            reason = %why, "serial port lost; reopening with backoff");
                        reported_unavailable = true;
                    }
                }
            }
            Err(err) => {
                if !reported_unavailable {
                    tracing::warn!(pipeline = &*pipeline, path = %config.path.display(),
                        error = %err, "cannot open serial port; retrying with backoff");
                    reported_unavailable = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn read_session<R: tokio::io::AsyncRead + Unpin>(
    pipeline: &Arc<str>,
    mut framed: FramedRead<R, LineFramer>,
    frames: &mpsc::Sender<Frame>,
    metrics: &PipelineMetrics,
    shutdown: &CancellationToken,
) -> SessionEnd {
    loop {
        let next = tokio::select! {
            next = framed.next() => next,
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
        };
        match next {
            Some(Ok(FramerEvent::Frame(data))) => {
                metrics.frames_received.inc();
                let frame = Frame {
                    source: pipeline.clone(),
                    received_at_ns: now_ns(),
                    data,
                };
                if frames.send(frame).await.is_err() {
                    return SessionEnd::PipelineClosed;
                }
            }
            Some(Ok(FramerEvent::Dropped { reason, bytes })) => {
                metrics.frame_dropped(reason.reason());
                tracing::debug!(
                    pipeline = &**pipeline,
                    reason = reason.reason(),
                    bytes,
                    "framer dropped bytes"
                );
            }
            Some(Err(err)) => return SessionEnd::Lost(err.to_string()),
            None => return SessionEnd::Lost("end of stream".into()),
        }
    }
}
