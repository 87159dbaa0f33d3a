//! A pipeline: frames from one source through one transform to the sinks.
//!
//! ```text
//! port task ──(bounded)──► transform worker (OS thread) ──(bounded)──► emissions
//!     ▲                        ▲        │ encode-command
//!     └──(downlink queue)──────┼────────┘
//!           MQTT commands ──(bounded, try_send)
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
use crate::model::{Frame, InvalidOutput, MqttMessage, Point};
use crate::ratelimit::RateLimiter;
use crate::runtime::{ProcessError, TransformInstance};
use crate::source::serial::{DownlinkSender, SerialMetrics};

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

/// A command for a pipeline's device, as it arrived over MQTT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownlinkCommand {
    /// The topic it was published to (matched the pipeline's filter).
    pub topic: String,
    /// The payload, uninterpreted.
    pub payload: Vec<u8>,
}

/// The downlink side of a worker: commands in, encoded bytes out to the port.
#[derive(Debug)]
pub struct WorkerDownlink {
    /// Commands routed to this pipeline by the MQTT sink.
    pub commands: mpsc::Receiver<DownlinkCommand>,
    /// The port's downlink queue (`None` under `sluice replay`: commands are
    /// counted as dropped, reason `no_port`).
    pub port: Option<DownlinkSender>,
    /// Where drops are counted (`sluice_serial_downlink_dropped_total`).
    pub metrics: SerialMetrics,
}

/// An order for a running worker, served between two frames.
pub enum WorkerControl {
    /// Replace the transform instance (hot swap, config reload). The new
    /// instance is ready (compiled, instantiated, `init` done): the switch
    /// itself is a move, so each frame is processed by exactly one version
    /// and frames keep their order. `done` gets the instance that was
    /// replaced (kept for rollback, or dropped).
    Swap {
        /// The new instance.
        instance: Box<TransformInstance>,
        /// Answered once the swap happened.
        done: tokio::sync::oneshot::Sender<Box<TransformInstance>>,
    },
}

/// Runs the transform worker on its own thread until `frames` closes and all
/// its emissions are handed over. Returns the thread handle.
///
/// The thread drives a small current-thread tokio runtime of its own (no I/O
/// or timer drivers), only to wait on frames and commands at once; the guest
/// calls themselves are synchronous and run on this thread. Commands are
/// served first: they are rare, and an operator's command should not queue
/// behind a busy uplink.
pub fn spawn_worker(
    settings: WorkerSettings,
    instance: TransformInstance,
    frames: mpsc::Receiver<Frame>,
    downlink: Option<WorkerDownlink>,
    emissions: mpsc::Sender<Emission>,
    metrics: PipelineMetrics,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (_control_tx, control) = mpsc::channel(1);
    spawn_controlled_worker(
        settings, instance, frames, downlink, control, emissions, metrics,
    )
}

/// [`spawn_worker`] that also obeys `control` (served before commands and
/// frames, i.e. between two frames).
pub fn spawn_controlled_worker(
    settings: WorkerSettings,
    instance: TransformInstance,
    frames: mpsc::Receiver<Frame>,
    downlink: Option<WorkerDownlink>,
    control: mpsc::Receiver<WorkerControl>,
    emissions: mpsc::Sender<Emission>,
    metrics: PipelineMetrics,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    std::thread::Builder::new()
        .name(format!("transform-{}", settings.pipeline))
        .spawn(move || {
            let worker = Worker {
                warn_limit: RateLimiter::new(5, Duration::from_secs(10)),
                settings,
                instance,
                emissions,
                metrics,
            };
            runtime.block_on(worker.run(frames, downlink, control));
        })
}

struct Worker {
    settings: WorkerSettings,
    instance: TransformInstance,
    emissions: mpsc::Sender<Emission>,
    metrics: PipelineMetrics,
    warn_limit: RateLimiter,
}

/// The next command, or never once the command channel closed (so a
/// pipeline without downlink just waits for frames).
async fn next_command(downlink: &mut Option<WorkerDownlink>) -> DownlinkCommand {
    if let Some(link) = downlink
        && let Some(command) = link.commands.recv().await
    {
        return command;
    }
    std::future::pending().await
}

impl Worker {
    async fn run(
        mut self,
        mut frames: mpsc::Receiver<Frame>,
        mut downlink: Option<WorkerDownlink>,
        mut control: mpsc::Receiver<WorkerControl>,
    ) {
        let mut control_open = true;
        loop {
            tokio::select! {
                biased;
                order = control.recv(), if control_open => match order {
                    Some(WorkerControl::Swap { instance, done }) => {
                        let old = std::mem::replace(&mut self.instance, *instance);
                        tracing::info!(pipeline = &*self.settings.pipeline,
                            from = &old.module().hash()[..12],
                            to = &self.instance.module().hash()[..12], "transform swapped");
                        let _ = done.send(Box::new(old));
                    }
                    None => control_open = false,
                },
                command = next_command(&mut downlink) => {
                    if let Some(link) = &downlink {
                        self.encode_command(command, link);
                    }
                }
                frame = frames.recv() => match frame {
                    Some(frame) => {
                        if !self.process(frame).await {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        if let Some(mut link) = downlink {
            link.commands.close();
            while link.commands.try_recv().is_ok() {
                link.metrics.downlink_dropped("shutdown");
            }
        }
    }

    /// Runs the transform on one frame and hands over what it emitted.
    /// Returns false when the sinks are gone (shutdown).
    async fn process(&mut self, frame: Frame) -> bool {
        let received_at_ns = frame.received_at_ns;
        let started = Instant::now();
        let result = self.instance.process(frame);
        self.metrics
            .transform_seconds
            .observe(started.elapsed().as_secs_f64());
        let output = match result {
            Ok(output) => output,
            Err(rejected) => {
                self.metrics.frame_dropped(rejected.error.reason());
                if let Some(suppressed) = self.warn_limit.check() {
                    log_rejection(
                        &self.settings.pipeline,
                        &rejected.error,
                        &rejected.frame.data,
                        suppressed,
                    );
                }
                return true;
            }
        };
        for message in output.messages {
            match message.validate(self.settings.max_payload) {
                Ok(()) => {
                    self.metrics.messages_emitted.inc();
                    if self
                        .emissions
                        .send(Emission::Message(message))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
                Err(invalid) => self.refuse_output(&invalid, "message"),
            }
        }
        for mut point in output.points {
            match point.validate() {
                Ok(()) => {
                    self.metrics.points_emitted.inc();
                    point
                        .timestamp_ns
                        .get_or_insert(i64::try_from(received_at_ns).unwrap_or(i64::MAX));
                    if self.emissions.send(Emission::Point(point)).await.is_err() {
                        return false;
                    }
                }
                Err(invalid) => self.refuse_output(&invalid, "point"),
            }
        }
        true
    }

    fn refuse_output(&mut self, invalid: &InvalidOutput, what: &str) {
        self.metrics.output_dropped(invalid.reason());
        if let Some(suppressed) = self.warn_limit.check() {
            tracing::warn!(
                pipeline = &*self.settings.pipeline,
                reason = invalid.reason(),
                suppressed,
                "transform emitted an invalid {what}: {invalid}"
            );
        }
    }

    /// Has the transform encode `command` and queues the bytes for the port.
    /// A refusal (by the transform or a full queue) is counted and logged;
    /// nothing is written then.
    fn encode_command(&mut self, command: DownlinkCommand, link: &WorkerDownlink) {
        let pipeline = &*self.settings.pipeline;
        let Some(port) = &link.port else {
            link.metrics.downlink_dropped("no_port");
            return;
        };
        match self
            .instance
            .encode_command(&command.topic, &command.payload)
        {
            Ok(bytes) => {
                if let Err(err) = port.try_send(bytes) {
                    // Counted by the sender.
                    if let Some(suppressed) = self.warn_limit.check() {
                        tracing::warn!(pipeline, topic = %command.topic, suppressed,
                            "downlink command not queued: {err}");
                    }
                }
            }
            Err(error) => {
                link.metrics.downlink_dropped("transform_rejected");
                if let Some(suppressed) = self.warn_limit.check() {
                    tracing::warn!(pipeline, topic = %command.topic, reason = error.reason(),
                        suppressed, "transform refused a downlink command: {error}");
                }
            }
        }
    }
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
