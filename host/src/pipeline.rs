//! A pipeline: frames from one source through one transform to the sinks.
//!
//! ```text
//! port task ──(bounded)──► transform worker (OS thread) ──(bounded)──► emissions
//! ```
//!
//! The transform runs on a dedicated OS thread: a guest call is synchronous
//! and may take up to its deadline, and it must never stall the async
//! runtime that drives the ports and the MQTT connection. Both channels are
//! bounded, so a slow sink slows the worker, which slows the port task, which
//! leaves bytes in the kernel's serial buffer (backpressure, no unbounded
//! growth).
//!
//! The worker is also where the host checks what the untrusted transform
//! returned: every message and point is validated; a refused one is counted
//! by reason and logged (rate-limited), never sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::metrics::PipelineMetrics;
use crate::model::{Frame, MqttMessage, Point};
use crate::ratelimit::RateLimiter;
use crate::runtime::{ProcessError, TransformInstance};

/// What a pipeline hands to the sinks, in the order the transform emitted it.
#[derive(Debug, Clone, PartialEq)]
pub enum Emission {
    /// A validated MQTT message.
    Message(MqttMessage),
    /// A validated point; `timestamp_ns` is always set (frame receive time
    /// when the transform gave none).
    Point(Point),
}

/// Settings the worker needs besides its instance.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Pipeline name (logs).
    pub pipeline: Arc<str>,
    /// Largest MQTT payload accepted.
    pub max_payload: usize,
}

/// Runs the transform worker on its own thread until `frames` closes and all
/// its emissions are handed over. Returns the thread handle.
pub fn spawn_worker(
    settings: WorkerSettings,
    mut instance: TransformInstance,
    mut frames: mpsc::Receiver<Frame>,
    emissions: mpsc::Sender<Emission>,
    metrics: PipelineMetrics,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("transform-{}", settings.pipeline))
        .spawn(move || {
            let mut warn_limit = RateLimiter::new(5, Duration::from_secs(10));
            while let Some(frame) = frames.blocking_recv() {
                let received_at_ns = frame.received_at_ns;
                let started = Instant::now();
                let result = instance.process(frame);
                metrics
                    .transform_seconds
                    .observe(started.elapsed().as_secs_f64());
                match result {
                    Ok(output) => {
                        for message in output.messages {
                            match message.validate(settings.max_payload) {
                                Ok(()) => {
                                    metrics.messages_emitted.inc();
                                    if emissions.blocking_send(Emission::Message(message)).is_err()
                                    {
                                        return;
                                    }
                                }
                                Err(invalid) => {
                                    metrics.output_dropped(invalid.reason());
                                    if let Some(suppressed) = warn_limit.check() {
                                        tracing::warn!(
                                            pipeline = &*settings.pipeline,
                                            reason = invalid.reason(),
                                            suppressed,
                                            "transform emitted an invalid message: {invalid}"
                                        );
                                    }
                                }
                            }
                        }
                        for mut point in output.points {
                            match point.validate() {
                                Ok(()) => {
                                    metrics.points_emitted.inc();
                                    point.timestamp_ns.get_or_insert(
                                        i64::try_from(received_at_ns).unwrap_or(i64::MAX),
                                    );
                                    if emissions.blocking_send(Emission::Point(point)).is_err() {
                                        return;
                                    }
                                }
                                Err(invalid) => {
                                    metrics.output_dropped(invalid.reason());
                                    if let Some(suppressed) = warn_limit.check() {
                                        tracing::warn!(
                                            pipeline = &*settings.pipeline,
                                            reason = invalid.reason(),
                                            suppressed,
                                            "transform emitted an invalid point: {invalid}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                    Err(rejected) => {
                        metrics.frame_dropped(rejected.error.reason());
                        if let Some(suppressed) = warn_limit.check() {
                            log_rejection(
                                &settings.pipeline,
                                &rejected.error,
                                &rejected.frame.data,
                                suppressed,
                            );
                        }
                    }
                }
            }
        })
}

fn log_rejection(pipeline: &str, error: &ProcessError, data: &[u8], suppressed: u64) {
    const SHOWN: usize = 64;
    let shown = &data[..data.len().min(SHOWN)];
    let preview = String::from_utf8_lossy(shown);
    tracing::warn!(
        pipeline,
        reason = error.reason(),
        bytes = data.len(),
        suppressed,
        frame = %preview,
        "frame dropped: {error}"
    );
}
