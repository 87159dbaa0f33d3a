//! A pipeline: frames from one source through one transform to the sinks.
//!
//! ```text
//! port task ──(bounded)──► transform worker (OS thread) ──► router ──► sinks' queues
//!     ▲                        ▲        │ encode-command
//!     └──(downlink queue)──────┼────────┘
//!           MQTT commands ──(bounded, try_send)
//! ```
//!
//! The transform runs on a dedicated OS thread: a guest call is synchronous
//! and may take up to its deadline, and it must never stall the async
//! runtime that drives the ports and the MQTT connection. The worker also
//! routes the outputs into the sinks' bounded queues (or the durable log),
//! so a frame crosses one hand-off between the port and the sinks. The frame
//! channel and the sinks' queues are bounded, so a slow sink slows the
//! worker, which slows the port task, which leaves bytes in the kernel's
//! serial buffer (backpressure, no unbounded growth).
//!
//! The worker is also where the host checks what the untrusted transform
//! returned: every message and point is validated; a refused one is counted
//! by reason and logged (rate-limited), never sent.
//!
//! Hot swap ([`crate::hotswap`]) happens here too, because only this thread
//! knows where one frame ends and the next begins: a [`SwapOrder`] is served
//! between two frames (a move of a ready instance, nothing compiled or
//! initialised here), the replaced instance is kept while the new version is
//! on probation ([`crate::pipeline::guard::Canary`]) so that a failing canary
//! is rolled back on the spot, and a version that keeps trapping is
//! quarantined ([`crate::pipeline::guard::Quarantine`]). Frames a trap, the
//! quarantine or a canary version refused are dead-lettered with their raw
//! bytes (a capture file `sluice replay` reads) when a dead-letter capture
//! is configured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::oneshot;

pub mod guard;

pub use crate::router::{Emission, Emitter};

use crate::metrics::serial::{DownlinkDrop, SerialMetrics};
use crate::metrics::{FrameDrop, PipelineMetrics};
use crate::model::{DownlinkCommand, Frame, InvalidOutput};
use crate::output::PointLike;
use crate::ratelimit::RateLimiter;
use crate::runtime::{ProcessError, TransformInstance};
use crate::source::capture::CaptureHandle;
use crate::source::serial::DownlinkSender;
use crate::ticket::FrameTicket;
use guard::{
    Canary, CanaryDecision, CanaryPolicy, Quarantine, QuarantineEvent, QuarantinePolicy,
    RecentOutcomes, VersionStats,
};

/// Settings the worker needs besides its instance.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Pipeline name (logs).
    pub pipeline: Arc<str>,
    /// Largest MQTT payload accepted.
    pub max_payload: usize,
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
    /// Replace the transform instance (hot swap, config reload).
    Swap(SwapOrder),
}

/// Which version an instance is: the manager's version number and the
/// counters the worker keeps for it.
#[derive(Debug, Clone, Default)]
pub struct VersionTag {
    /// Version number (per pipeline, from 1).
    pub id: u64,
    /// Its counters.
    pub stats: Arc<VersionStats>,
}

/// Replace the transform instance. The new instance is ready (compiled,
/// instantiated, `init` done, test vectors passed): the switch itself is a
/// move, so each frame is processed by exactly one version and frames keep
/// their order.
pub struct SwapOrder {
    /// The new instance.
    pub instance: Box<TransformInstance>,
    /// Its version.
    pub version: VersionTag,
    /// Watch the new version and roll back to the replaced one if it fails
    /// (`None`: no canary; the replaced instance is handed back at once).
    pub canary: Option<(CanaryPolicy, oneshot::Sender<CanaryVerdict>)>,
    /// Answered once the swap happened.
    pub done: oneshot::Sender<SwapDone>,
}

/// The answer to a [`SwapOrder`].
pub struct SwapDone {
    /// The version that was replaced.
    pub replaced: u64,
    /// The replaced instance when no canary keeps it (to be dropped off the
    /// worker thread).
    pub released: Option<Box<TransformInstance>>,
    /// How long the worker held frames for the swap itself.
    pub pause: Duration,
}

/// How a canary ended. Instances that are no longer needed ride along so
/// they are dropped off the worker thread.
pub enum CanaryVerdict {
    /// The new version stays.
    Passed {
        /// Frames in the window.
        frames: u64,
        /// Failed frames among them.
        failures: u64,
        /// The replaced instance, no longer needed.
        released: Box<TransformInstance>,
    },
    /// The new version failed and the worker went back to the one it
    /// replaced.
    RolledBack {
        /// Frames the new version saw.
        frames: u64,
        /// Failed frames among them.
        failures: u64,
        /// The old version's failure rate before the swap.
        baseline: f64,
        /// The version active again.
        to: u64,
        /// The failed instance.
        released: Box<TransformInstance>,
    },
    /// Another swap came before the canary ended.
    Superseded {
        /// The instance the canary kept, no longer needed.
        released: Box<TransformInstance>,
    },
}

/// What the worker does besides running the transform: canary baseline,
/// quarantine, dead letters, swap-pause histogram. [`Default`]: quarantine
/// with the default policy, no dead letters.
#[derive(Default)]
pub struct WorkerGuard {
    /// The first instance's version.
    pub version: VersionTag,
    /// When a trapping version is quarantined.
    pub quarantine: QuarantinePolicy,
    /// Frames remembered for the canary baseline (the canary window).
    pub baseline_frames: usize,
    /// Where refused frames go with their raw bytes (`None`: counted only).
    pub dead_letter: Option<CaptureHandle>,
    /// Observes each swap's pause (`sluice_transform_swap_pause_seconds`).
    pub swap_pause: Option<Histogram>,
}

/// Everything a pipeline's worker thread is started with.
pub struct WorkerSpec {
    /// Pipeline name and output limits.
    pub settings: WorkerSettings,
    /// The transform it runs.
    pub instance: TransformInstance,
    /// Frames from the source.
    pub frames: mpsc::Receiver<Frame>,
    /// Downlink commands in, encoded bytes out (`None`: no downlink).
    pub downlink: Option<WorkerDownlink>,
    /// Swap orders and the like, served between two frames (`None`: none
    /// will come).
    pub control: Option<mpsc::Receiver<WorkerControl>>,
    /// Where each frame's outputs go (routed on the worker's thread).
    pub emissions: Emitter,
    /// The pipeline's counters.
    pub metrics: PipelineMetrics,
    /// Version, quarantine, dead letters.
    pub guard: WorkerGuard,
}

impl WorkerSpec {
    /// Runs the worker on its own thread until `frames` closes and all its
    /// emissions are handed over. Returns the thread handle.
    ///
    /// The thread drives an executor of its own (futures-executor's
    /// `block_on`, not a tokio runtime: see the comment there), only to
    /// wait on frames, commands and control at once; the guest calls
    /// themselves are synchronous and run on this thread. Control comes
    /// first, then commands (rare, and an operator's command should not
    /// queue behind a busy uplink), then frames.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        let WorkerSpec {
            settings,
            instance,
            frames,
            downlink,
            control,
            emissions,
            metrics,
            guard,
        } = self;
        // Without a control channel: one whose sender is gone at once.
        let control = control.unwrap_or_else(|| mpsc::channel(1).1);
        std::thread::Builder::new()
            .name(format!("transform-{}", settings.pipeline))
            .spawn(move || {
                let WorkerGuard {
                    version,
                    quarantine,
                    baseline_frames,
                    dead_letter,
                    swap_pause,
                } = guard;
                let worker = Worker {
                    warn_limit: RateLimiter::new(5, Duration::from_secs(10)),
                    settings,
                    active: Active {
                        instance: Box::new(instance),
                        version,
                    },
                    emissions,
                    metrics,
                    canary: None,
                    recent: RecentOutcomes::new(baseline_frames.max(1)),
                    quarantine: Quarantine::new(quarantine),
                    quarantine_policy: quarantine,
                    dead_letter,
                    swap_pause,
                };
                // futures-executor's `block_on` parks this thread while nothing
                // is ready. Not a tokio runtime, on purpose: wasmtime-wasi's
                // synchronous bindings run their I/O with `block_on` on the
                // *current* tokio runtime when there is one (e.g. a Rust guest
                // writing its panic message to stderr before it aborts), and
                // that panics inside a runtime's own thread — which killed the
                // worker on the first guest panic. Without a runtime context
                // here, wasmtime-wasi uses its own. Everything the worker awaits
                // (tokio mpsc channels, oneshots) only needs a waker.
                futures_executor::block_on(worker.run(frames, downlink, control));
            })
    }
}

/// The instance serving frames, and its version.
struct Active {
    instance: Box<TransformInstance>,
    version: VersionTag,
}

/// A version on probation, with the instance it replaced.
struct RunningCanary {
    canary: Canary,
    previous: Active,
    verdict: oneshot::Sender<CanaryVerdict>,
}

struct Worker {
    settings: WorkerSettings,
    active: Active,
    emissions: Emitter,
    metrics: PipelineMetrics,
    warn_limit: RateLimiter,
    canary: Option<RunningCanary>,
    recent: RecentOutcomes,
    quarantine: Quarantine,
    quarantine_policy: QuarantinePolicy,
    dead_letter: Option<CaptureHandle>,
    swap_pause: Option<Histogram>,
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
                    Some(WorkerControl::Swap(order)) => self.swap(order),
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
                link.metrics.downlink_dropped(DownlinkDrop::Shutdown);
            }
        }
        // A canary still running at shutdown just ends: its verdict sender
        // is dropped with it. Dead letters are written out before the
        // thread ends.
        if let Some(dead_letter) = self.dead_letter.take() {
            dead_letter.close_blocking();
        }
    }

    /// Serves a swap order between two frames.
    fn swap(&mut self, order: SwapOrder) {
        let started = Instant::now();
        let SwapOrder {
            instance,
            version,
            canary,
            done,
        } = order;
        let baseline = self.recent.rate();
        let superseded = self.canary.take();
        let old = std::mem::replace(&mut self.active, Active { instance, version });
        self.recent.clear();
        self.reset_quarantine(&old);
        let replaced = old.version.id;
        let from = old
            .instance
            .module()
            .hash()
            .get(..12)
            .unwrap_or_default()
            .to_owned();
        let released = match canary {
            Some((policy, verdict)) => {
                self.canary = Some(RunningCanary {
                    canary: Canary::new(policy, baseline, Instant::now()),
                    previous: old,
                    verdict,
                });
                None
            }
            None => Some(old.instance),
        };
        let pause = started.elapsed();
        if let Some(histogram) = &self.swap_pause {
            histogram.observe(pause.as_secs_f64());
        }
        tracing::info!(
            pipeline = &*self.settings.pipeline,
            from,
            to = self
                .active
                .instance
                .module()
                .hash()
                .get(..12)
                .unwrap_or_default(),
            version = self.active.version.id,
            pause_us = pause.as_micros() as u64,
            "transform swapped"
        );
        if let Some(running) = superseded {
            let _ = running.verdict.send(CanaryVerdict::Superseded {
                released: running.previous.instance,
            });
        }
        let _ = done.send(SwapDone {
            replaced,
            released,
            pause,
        });
    }

    /// A new version starts with a clean quarantine state.
    fn reset_quarantine(&mut self, old: &Active) {
        old.version.stats.set_quarantined(false);
        self.quarantine = Quarantine::new(self.quarantine_policy);
    }

    /// Accounts for one frame's outcome: canary, baseline. Runs after the
    /// frame's outputs were handed over, so a rollback happens between two
    /// frames.
    fn after_frame(&mut self, failed: bool, now: Instant) {
        self.recent.push(failed);
        let Some(running) = &mut self.canary else {
            return;
        };
        match running.canary.record(failed, now) {
            None => {}
            Some(CanaryDecision::Pass) => {
                if let Some(running) = self.canary.take() {
                    tracing::info!(
                        pipeline = &*self.settings.pipeline,
                        version = self.active.version.id,
                        frames = running.canary.frames(),
                        failures = running.canary.failures(),
                        "canary passed"
                    );
                    let _ = running.verdict.send(CanaryVerdict::Passed {
                        frames: running.canary.frames(),
                        failures: running.canary.failures(),
                        released: running.previous.instance,
                    });
                }
            }
            Some(CanaryDecision::RollBack) => {
                if let Some(running) = self.canary.take() {
                    self.roll_back(running);
                }
            }
        }
    }

    /// The canary failed: back to the instance it kept, now.
    fn roll_back(&mut self, running: RunningCanary) {
        let started = Instant::now();
        let RunningCanary {
            canary,
            previous,
            verdict,
        } = running;
        let failed = std::mem::replace(&mut self.active, previous);
        self.recent.clear();
        self.reset_quarantine(&failed);
        let pause = started.elapsed();
        if let Some(histogram) = &self.swap_pause {
            histogram.observe(pause.as_secs_f64());
        }
        tracing::error!(
            pipeline = &*self.settings.pipeline,
            failed_version = failed.version.id,
            restored_version = self.active.version.id,
            frames = canary.frames(),
            failures = canary.failures(),
            rate = canary.rate(),
            baseline = canary.baseline(),
            limit = canary.limit(),
            "canary failed: transform version {} refused {} of its first {} frames ({:.0} %, limit {:.0} %); rolled back to version {}",
            failed.version.id,
            canary.failures(),
            canary.frames(),
            canary.rate() * 100.0,
            canary.limit() * 100.0,
            self.active.version.id,
        );
        let _ = verdict.send(CanaryVerdict::RolledBack {
            frames: canary.frames(),
            failures: canary.failures(),
            baseline: canary.baseline(),
            to: self.active.version.id,
            released: failed.instance,
        });
    }

    /// Hands a refused frame to the dead-letter capture (never waits).
    fn dead_letter(&self, frame: &Frame) {
        if let Some(dead_letter) = &self.dead_letter {
            dead_letter.record(frame);
            self.active.version.stats.dead_lettered();
        }
    }

    fn log_quarantine(&self, event: QuarantineEvent) {
        let pipeline = &*self.settings.pipeline;
        let version = self.active.version.id;
        let stats = &self.active.version.stats;
        match event {
            QuarantineEvent::Entered { backoff } => {
                stats.set_quarantined(true);
                self.metrics.quarantined.inc();
                tracing::error!(
                    pipeline,
                    version,
                    backoff_ms = backoff.as_millis() as u64,
                    after_traps = self.quarantine_policy.after_traps,
                    "transform quarantined: it trapped on {} frames in a row; frames are dead-lettered, not processed, until a probe frame goes through",
                    self.quarantine_policy.after_traps
                );
            }
            QuarantineEvent::Extended { backoff } => {
                tracing::warn!(
                    pipeline,
                    version,
                    backoff_ms = backoff.as_millis() as u64,
                    "transform still trapping; quarantine extended"
                );
            }
            QuarantineEvent::Released => {
                stats.set_quarantined(false);
                tracing::info!(pipeline, version, "transform released from quarantine");
            }
        }
    }

    /// Runs the transform on one frame and hands over what it emitted.
    /// Returns false when the sinks are gone (shutdown).
    async fn process(&mut self, mut frame: Frame) -> bool {
        let received_at_ns = frame.received_at_ns;
        // Travels with the outputs; dropped here with a refused frame.
        let ticket = std::mem::take(&mut frame.ticket);
        let now = Instant::now();
        let stats = self.active.version.stats.clone();
        stats.frame();
        if !self.quarantine.admit(now) {
            self.metrics.frame_dropped(FrameDrop::Quarantined);
            stats.failed("quarantined");
            self.dead_letter(&frame);
            self.after_frame(true, now);
            return true;
        }
        let started = Instant::now();
        let result = self.active.instance.process(frame);
        let elapsed = started.elapsed();
        stats.call(elapsed);
        self.metrics
            .transform_seconds
            .observe(elapsed.as_secs_f64());
        let output = match result {
            Ok(output) => output,
            Err(rejected) => {
                let reason = rejected.error.reason();
                self.metrics.frame_dropped(FrameDrop::Transform(reason));
                stats.failed(reason);
                let trapped = matches!(
                    rejected.error,
                    ProcessError::Trap { .. } | ProcessError::Reinstantiate(_)
                );
                let over_limit = matches!(rejected.error, ProcessError::OverLimit(_));
                if trapped || over_limit || self.canary.is_some() {
                    self.dead_letter(&rejected.frame);
                }
                if let Some(event) = self.quarantine.record(trapped, now) {
                    self.log_quarantine(event);
                }
                if let Some(suppressed) = self.warn_limit.check() {
                    log_rejection(
                        &self.settings.pipeline,
                        &rejected.error,
                        &rejected.frame.data,
                        suppressed,
                    );
                }
                self.after_frame(true, now);
                return true;
            }
        };
        if let Some(event) = self.quarantine.record(false, now) {
            self.log_quarantine(event);
        }
        match self.emit(output, received_at_ns, ticket).await {
            Some(refused) => {
                // Output the host refused counts against a canary too.
                self.after_frame(refused, now);
                true
            }
            None => false,
        }
    }

    /// Validates and hands over one frame's outputs, in order. Returns
    /// whether the host refused any of them, or `None` when the sinks are
    /// gone (shutdown).
    async fn emit(
        &mut self,
        mut output: crate::output::TransformOutput,
        received_at_ns: u64,
        ticket: FrameTicket,
    ) -> Option<bool> {
        let mut refused = false;
        let max_payload = self.settings.max_payload;
        output.retain_messages(|message| match message.validate(max_payload) {
            Ok(()) => true,
            Err(invalid) => {
                refused = true;
                self.refuse_output(&invalid, "message");
                false
            }
        });
        output.retain_points(|point| match point.validate() {
            Ok(()) => true,
            Err(invalid) => {
                refused = true;
                self.refuse_output(&invalid, "point");
                false
            }
        });
        output.stamp_points(i64::try_from(received_at_ns).unwrap_or(i64::MAX));
        self.metrics
            .messages_emitted
            .inc_by(output.message_count() as u64);
        self.metrics
            .points_emitted
            .inc_by(output.point_count() as u64);
        if !output.is_empty() && !self.emissions.emit(Emission { output, ticket }).await {
            return None;
        }
        Some(refused)
    }

    fn refuse_output(&mut self, invalid: &InvalidOutput, what: &str) {
        self.metrics.output_dropped(invalid);
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
            link.metrics.downlink_dropped(DownlinkDrop::NoPort);
            return;
        };
        match self
            .active
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
                link.metrics
                    .downlink_dropped(DownlinkDrop::TransformRejected);
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
    let preview = crate::model::guest_text(&String::from_utf8_lossy(shown));
    tracing::warn!(
        pipeline,
        reason = error.reason(),
        bytes = data.len(),
        suppressed,
        frame = %preview,
        "frame dropped: {error}"
    );
}
