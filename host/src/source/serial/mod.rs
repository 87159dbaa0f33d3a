//! The serial port task: open, read, frame, write downlink commands, reopen
//! when the device vanishes.
//!
//! ```text
//!            ┌──────────── port task (one per pipeline, async) ────────────┐
//! device ──► │ read ─► framer ─► frames ──(bounded: channel_capacity)──────┼─► transform worker
//!            │   ▲                  └─► capture (bounded, never waits)     │
//!            │   └─ write ◄─ encode ◄─ downlink queue (bounded) ◄──────────┼── DownlinkSender
//!            └──────────────────────────────────────────────────────────────┘
//! ```
//!
//! * **Never gives up on a port.** A missing device (not plugged in yet,
//!   unplugged, a USB adapter re-enumerating, a symlink pointing nowhere) is
//!   retried with exponential backoff and jitter between
//!   `serial.reconnect_min_ms` and `serial.reconnect_max_ms`; reading resumes
//!   at most `reconnect_max_ms` after the path is back. The log says so once
//!   per change of state (lost, cannot open for a new reason, open again),
//!   never once per attempt. `serial.required = true` makes a port that
//!   cannot be opened at start-up fatal instead ([`prepare`]).
//! * **A partial frame is not a frame.** When the device vanishes (EOF, read
//!   error) or the host stops, the bytes of an unfinished frame are counted
//!   as `frames_dropped{reason="frame_truncated"}`; every complete frame read
//!   before is delivered.
//! * **Backpressure.** A frame waits for room in the pipeline's channel; the
//!   port is not read meanwhile, so the kernel's tty buffer holds the bytes.
//!   With a durable log the port also reads no further until every frame of
//!   its last read is committed ([`crate::ticket`]): a crash then loses at
//!   most that read, not the pipeline's queues.
//!   When that overflows the bytes are lost; drivers that count it
//!   (`TIOCGICOUNT`, see [`line_errors`]) move `serial_line_errors`.
//!   Downlink commands are still written while a frame waits.
//! * **Downlink** ([`downlink`]): commands are framed with the port's framer
//!   and written between reads, in order, each within
//!   `serial.write_timeout_ms`.

pub mod downlink;
pub mod line_errors;

pub mod open;
pub mod port;

use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Decoder as _;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{PipelineConfig, SerialConfig, SerialParity};
use crate::metrics::serial::{DownlinkDrop, SerialMetrics};
use crate::metrics::{FrameDrop, Metrics, PipelineMetrics};
use crate::model::{Frame, now_ns};
use crate::ratelimit::RateLimiter;
use crate::source::ReadAhead;
use crate::source::capture::CaptureHandle;
use crate::ticket::{FrameTicket, FrameTickets};
use port::Port;
use sluice_framing::{Framer, FramerEvent, FramingDrop};

pub use downlink::{DownlinkError, DownlinkSender};
pub use open::OpenError;

use downlink::Command;
use line_errors::LineCounts;

/// Bytes read at a time: with a durable log, the most a kill -9 can lose
/// of what the port took from the kernel.
pub const READ_CHUNK: usize = 8 << 10;
/// How often the UART error counters are read while the port is open.
const LINE_POLL: Duration = Duration::from_secs(1);
/// A session that lasted this long resets the reopen backoff (a device that
/// flaps faster keeps backing off).
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// A port ready to start: settings checked, required port opened, downlink
/// queue and capture created. Nothing is read until [`spawn`](Self::spawn).
pub struct PreparedPort {
    task: PortTask,
    initial: Option<open::Opened>,
    downlink: DownlinkSender,
}

/// A running port task.
pub struct StartedPort {
    /// Ends after shutdown (or when the pipeline's worker is gone), once the
    /// capture file is flushed.
    pub task: tokio::task::JoinHandle<()>,
    /// Where downlink commands for this port go.
    pub downlink: DownlinkSender,
}

/// Prepares the port of `pipeline`. With `serial.required = true` the port is
/// opened now, and an error names the key. Must run inside a tokio runtime.
pub fn prepare(pipeline: &PipelineConfig, metrics: &Metrics) -> anyhow::Result<PreparedPort> {
    let name: Arc<str> = pipeline.name.as_str().into();
    let serial_metrics = metrics.serial(&pipeline.name);
    let Some(config) = pipeline.serial.clone() else {
        anyhow::bail!("pipeline {:?}: no [pipeline.serial]", pipeline.name);
    };
    let initial = if config.required {
        match open::open(&config) {
            Ok(opened) => Some(opened),
            Err(err) => {
                serial_metrics.open_failed(err.reason());
                anyhow::bail!(
                    "pipeline {:?}: serial port {} {err}; serial.required = true, so sluice \
                     does not start without it (set required = false to wait for the device)",
                    pipeline.name,
                    config.path.display()
                );
            }
        }
    } else {
        None
    };
    let capture = pipeline
        .capture
        .as_ref()
        .map(|capture| CaptureHandle::start(name.clone(), capture, serial_metrics.clone()))
        .transpose()?;
    let (downlink, commands) = downlink::channel(
        name.clone(),
        config.downlink_queue.get(),
        serial_metrics.clone(),
    );
    Ok(PreparedPort {
        task: PortTask {
            pipeline: name,
            config,
            frames: None,
            metrics: metrics.pipeline(&pipeline.name),
            serial: serial_metrics,
            commands,
            commands_open: true,
            next_write: Instant::now(),
            capture,
            shutdown: CancellationToken::new(),
            tickets: None,
            warn_limit: RateLimiter::new(5, Duration::from_secs(60)),
            lost_limit: RateLimiter::new(3, Duration::from_secs(60)),
        },
        initial,
        downlink,
    })
}

impl PreparedPort {
    /// The downlink queue of this port.
    pub fn downlink(&self) -> &DownlinkSender {
        &self.downlink
    }

    /// Starts reading: frames go to `frames` until `shutdown`.
    pub fn spawn(
        self,
        frames: mpsc::Sender<Frame>,
        shutdown: CancellationToken,
        read_ahead: ReadAhead,
    ) -> StartedPort {
        let mut task = self.task;
        task.frames = Some(frames);
        task.shutdown = shutdown;
        task.tickets = match read_ahead {
            ReadAhead::Queues => None,
            ReadAhead::UntilSettled(in_flight) => Some(FrameTickets::new(in_flight)),
        };
        let initial = self.initial;
        StartedPort {
            task: tokio::spawn(task.run(initial)),
            downlink: self.downlink,
        }
    }
}

/// Prepares and starts the port of `pipeline` in one step.
pub fn start(
    pipeline: &PipelineConfig,
    frames: mpsc::Sender<Frame>,
    metrics: &Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<StartedPort> {
    Ok(prepare(pipeline, metrics)?.spawn(frames, shutdown, ReadAhead::Queues))
}

/// Returns once every frame of `tickets` is settled (never without).
async fn settled(tickets: &Option<FrameTickets>) {
    match tickets {
        Some(tickets) => tickets.settled().await,
        None => std::future::pending().await,
    }
}

/// Why a read session ended.
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    PipelineClosed,
    Lost(String),
}

struct PortTask {
    pipeline: Arc<str>,
    config: SerialConfig,
    /// Set by [`PreparedPort::spawn`].
    frames: Option<mpsc::Sender<Frame>>,
    metrics: PipelineMetrics,
    serial: SerialMetrics,
    commands: mpsc::Receiver<Command>,
    /// False once every [`DownlinkSender`] is gone (so `recv` is not polled
    /// in a loop returning `None`).
    commands_open: bool,
    /// Idle-gap framing: the line must stay silent until then after a
    /// downlink frame, so the next command waits (reading does not).
    next_write: Instant,
    capture: Option<CaptureHandle>,
    shutdown: CancellationToken,
    /// With a durable log: the frames of the last read not settled yet
    /// (no read until they are).
    tickets: Option<FrameTickets>,
    /// Downlink problems and line errors.
    warn_limit: RateLimiter,
    /// "Port lost" (a flapping device must not flood the log).
    lost_limit: RateLimiter,
}

impl PortTask {
    async fn run(mut self, mut initial: Option<open::Opened>) {
        let mut backoff = Backoff::new(
            Duration::from_millis(self.config.reconnect_min_ms.get()),
            Duration::from_millis(self.config.reconnect_max_ms.get()),
        );
        // The reason of the last failure logged: a repeat is not logged again.
        let mut logged_failure: Option<&'static str> = None;
        let mut told_differences = false;
        let mut failed_attempts: u64 = 0;
        let path = self.config.path.display().to_string();
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let opened = match initial.take() {
                Some(opened) => Ok(opened),
                None => open::open(&self.config),
            };
            match opened {
                Ok(opened) => {
                    self.serial.opens.inc();
                    self.serial.port_open.set(1);
                    tracing::info!(
                        pipeline = &*self.pipeline,
                        path,
                        baud = self.config.baud.get(),
                        failed_attempts,
                        "serial port open"
                    );
                    if !opened.differences.is_empty() && !told_differences {
                        tracing::warn!(pipeline = &*self.pipeline, path,
                            differences = %opened.differences.join("; "),
                            "the serial port did not take every setting (a pty always reports 8N1)");
                        told_differences = true;
                    }
                    failed_attempts = 0;
                    let started = Instant::now();
                    let end = self.session(opened.port).await;
                    self.serial.port_open.set(0);
                    if started.elapsed() >= STABLE_SESSION {
                        backoff.reset();
                    }
                    match end {
                        SessionEnd::Shutdown | SessionEnd::PipelineClosed => break,
                        SessionEnd::Lost(why) => {
                            if let Some(suppressed) = self.lost_limit.check() {
                                tracing::warn!(pipeline = &*self.pipeline, path, reason = %why,
                                    suppressed, "serial port lost; reopening with backoff");
                            }
                            // The device being away is implied: do not log
                            // the first "missing" again.
                            logged_failure = Some(OpenError::Missing.reason());
                        }
                    }
                }
                Err(err) => {
                    failed_attempts += 1;
                    self.serial.open_failed(err.reason());
                    if logged_failure == Some(err.reason()) {
                        tracing::debug!(pipeline = &*self.pipeline, path, error = %err,
                            "cannot open serial port (still)");
                    } else if err.is_config_problem() {
                        tracing::error!(pipeline = &*self.pipeline, path, error = %err,
                            reason = err.reason(), "cannot use serial port; retrying with backoff");
                    } else {
                        tracing::warn!(pipeline = &*self.pipeline, path, error = %err,
                            reason = err.reason(), "cannot open serial port; retrying with backoff");
                    }
                    logged_failure = Some(err.reason());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = self.shutdown.cancelled() => break,
            }
        }
        self.serial.port_open.set(0);
        downlink::drain_dropped(&mut self.commands, &self.serial, DownlinkDrop::Shutdown);
        if let Some(capture) = self.capture.take() {
            capture.close().await;
        }
    }

    /// Reads one opened port until it is lost, the host stops, or the
    /// pipeline is gone.
    async fn session(&mut self, mut port: Port) -> SessionEnd {
        let mut framer = self.build_framer();
        // The same count `frame` issues from; a handle of its own so the
        // select below can wait on it while other arms borrow `self`.
        let tickets = self.tickets.clone();
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut lines = LineWatch::start(port.as_raw_fd(), &self.pipeline);
        let mut tick = tokio::time::interval_at(Instant::now() + LINE_POLL, LINE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let gap = framer.idle_gap();
        let mut last_read: Option<Instant> = None;
        // Bytes the framer may hold is bounded by the maximum frame; this is
        // a safety net against a framer bug, not a normal path.
        let hard_cap = self.config.max_frame_bytes.get().saturating_mul(4) + 4 * READ_CHUNK;
        let end = 'session: loop {
            // Every complete frame already buffered goes out first.
            let delivering = tickets.as_ref().map(FrameTickets::delivering);
            loop {
                match framer.decode(&mut buf) {
                    Ok(Some(event)) => {
                        if let Err(end) = self.handle(event, &mut port, &framer).await {
                            break 'session end;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        self.metrics.frame_dropped(FrameDrop::FramerError);
                        tracing::warn!(pipeline = &*self.pipeline, error = %err, bytes = buf.len(),
                            "framer error; buffered bytes dropped");
                        buf.clear();
                        framer = self.build_framer();
                        break;
                    }
                }
            }
            drop(delivering);
            if buf.len() > hard_cap {
                self.metrics
                    .frame_dropped(FrameDrop::Framing(FramingDrop::Oversized));
                buf.clear();
                framer = self.build_framer();
            }
            let idle_at = gap.zip(last_read).map(|(gap, at)| at + gap);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break SessionEnd::Shutdown,
                // One read takes at most READ_CHUNK (what a crash can lose).
                read = port.read_into(&mut buf), if self.may_read() => match read {
                    Ok(0) => break SessionEnd::Lost("end of stream (the device hung up)".into()),
                    Ok(n) => {
                        self.serial.bytes_received.inc_by(n as u64);
                        last_read = Some(Instant::now());
                    }
                    Err(err) => break SessionEnd::Lost(format!("read failed: {err}")),
                },
                command = self.commands.recv(), if self.may_write() => match command {
                    Some(command) => {
                        if let Err(end) = self.write_command(&mut port, &framer, command).await {
                            break end;
                        }
                    }
                    None => self.commands_open = false,
                },
                _ = tokio::time::sleep_until(self.next_write), if !self.may_write() && self.commands_open => {}
                _ = tokio::time::sleep_until(idle_at.unwrap_or_else(Instant::now)), if idle_at.is_some() => {
                    last_read = None;
                    if let Some(event) = framer.on_idle(&mut buf)
                        && let Err(end) = self.handle(event, &mut port, &framer).await
                    {
                        break end;
                    }
                }
                _ = settled(&tickets), if !self.may_read() => {}
                _ = tick.tick() => lines.poll(&self.serial, &self.pipeline, &mut self.warn_limit),
            }
        };
        lines.poll(&self.serial, &self.pipeline, &mut self.warn_limit);
        self.finish_buffer(&mut framer, &mut buf, &end).await;
        end
    }

    /// At the end of a session: complete frames still buffered are
    /// delivered (unless the pipeline is gone), the partial rest is counted.
    async fn finish_buffer(&mut self, framer: &mut Framer, buf: &mut BytesMut, end: &SessionEnd) {
        let deliver = !matches!(end, SessionEnd::PipelineClosed);
        // Each decode_eof call consumes bytes or returns None; the bound is
        // a guard against a framer that does neither.
        for _ in 0..=buf.len() {
            match framer.decode_eof(buf) {
                Ok(Some(FramerEvent::Frame(data))) => {
                    let frame = self.frame(data);
                    let sent = match (&self.frames, deliver) {
                        (Some(frames), true) => frames.send(frame).await.is_ok(),
                        _ => false,
                    };
                    if !sent {
                        self.metrics.frame_dropped(FrameDrop::PipelineStopped);
                    }
                }
                Ok(Some(FramerEvent::Dropped { reason, .. })) => {
                    self.metrics.frame_dropped(FrameDrop::Framing(reason));
                }
                Ok(None) => break,
                Err(_) => {
                    self.metrics
                        .frame_dropped(FrameDrop::Framing(FramingDrop::Truncated));
                    break;
                }
            }
        }
        if !buf.is_empty() {
            // Only a misbehaving framer leaves bytes behind.
            self.metrics
                .frame_dropped(FrameDrop::Framing(FramingDrop::Truncated));
            buf.clear();
        }
    }

    fn build_framer(&self) -> Framer {
        self.config
            .framing
            .build(self.config.max_frame_bytes.get(), self.config.baud.get())
    }

    fn frame(&self, data: Vec<u8>) -> Frame {
        Frame {
            source: self.pipeline.clone(),
            received_at_ns: now_ns(),
            data,
            ticket: self
                .tickets
                .as_ref()
                .map_or_else(FrameTicket::none, FrameTickets::issue),
        }
    }

    /// Whether the port may read: always, or with a durable log once every
    /// frame of the last read is settled.
    fn may_read(&self) -> bool {
        self.tickets.as_ref().is_none_or(FrameTickets::all_settled)
    }

    /// A framer event: a frame is captured and delivered, a drop counted.
    async fn handle(
        &mut self,
        event: FramerEvent,
        port: &mut Port,
        framer: &Framer,
    ) -> Result<(), SessionEnd> {
        match event {
            FramerEvent::Frame(data) => {
                self.metrics.frames_received.inc();
                let frame = self.frame(data);
                if let Some(capture) = &self.capture {
                    capture.record(&frame);
                }
                self.deliver(frame, port, framer).await
            }
            FramerEvent::Dropped { reason, bytes } => {
                self.metrics.frame_dropped(FrameDrop::Framing(reason));
                tracing::debug!(
                    pipeline = &*self.pipeline,
                    reason = reason.reason(),
                    bytes,
                    "framer dropped bytes"
                );
                Ok(())
            }
        }
    }

    /// Waits for room in the pipeline's channel (backpressure), writing
    /// downlink commands meanwhile.
    async fn deliver(
        &mut self,
        frame: Frame,
        port: &mut Port,
        framer: &Framer,
    ) -> Result<(), SessionEnd> {
        let Some(frames) = self.frames.clone() else {
            return Err(SessionEnd::PipelineClosed);
        };
        loop {
            tokio::select! {
                biased;
                permit = frames.reserve() => {
                    return match permit {
                        Ok(permit) => {
                            permit.send(frame);
                            Ok(())
                        }
                        Err(_) => {
                            self.metrics.frame_dropped(FrameDrop::PipelineStopped);
                            Err(SessionEnd::PipelineClosed)
                        }
                    };
                }
                command = self.commands.recv(), if self.may_write() => match command {
                    Some(command) => self.write_command(port, framer, command).await?,
                    None => self.commands_open = false,
                },
                _ = tokio::time::sleep_until(self.next_write), if !self.may_write() && self.commands_open => {}
            }
        }
    }

    /// Frames and writes one downlink command. A failed write ends the
    /// session (the device is probably gone); everything else is counted
    /// and the session goes on.
    async fn write_command(
        &mut self,
        port: &mut Port,
        framer: &Framer,
        command: Command,
    ) -> Result<(), SessionEnd> {
        let max_age = self.config.downlink_max_age_ms;
        let age = command.queued_at.elapsed();
        if max_age > 0 && age > Duration::from_millis(max_age) {
            self.downlink_problem(
                DownlinkDrop::Expired,
                &format!("queued {} ms ago", age.as_millis()),
            );
            return Ok(());
        }
        let mut wire = BytesMut::with_capacity(command.payload.len() + 16);
        if let Err(err) = framer.encode(&command.payload, &mut wire) {
            self.downlink_problem(DownlinkDrop::EncodeFailed, &err.to_string());
            return Ok(());
        }
        let timeout = Duration::from_millis(self.config.write_timeout_ms.get());
        match tokio::time::timeout(timeout, port.write_all(&wire)).await {
            Ok(Ok(())) => {
                self.serial.downlink_written.inc();
                tracing::debug!(
                    pipeline = &*self.pipeline,
                    bytes = wire.len(),
                    "downlink command written"
                );
                if let Some(gap) = framer.idle_gap() {
                    // An idle-gap frame ends with silence: no next command
                    // until the bytes are on the wire and the gap has passed.
                    let silence = self.wire_time(wire.len()).saturating_add(gap);
                    self.next_write = Instant::now()
                        .checked_add(silence)
                        .unwrap_or_else(Instant::now);
                }
                Ok(())
            }
            Ok(Err(err)) => {
                self.downlink_problem(DownlinkDrop::WriteFailed, &err.to_string());
                Err(SessionEnd::Lost(format!("write failed: {err}")))
            }
            Err(_elapsed) => {
                self.downlink_problem(
                    DownlinkDrop::WriteTimeout,
                    &format!(
                        "not written within {} ms (flow control? device not reading?)",
                        timeout.as_millis()
                    ),
                );
                Ok(())
            }
        }
    }

    /// Whether a downlink command may be taken from the queue now.
    fn may_write(&self) -> bool {
        self.commands_open && Instant::now() >= self.next_write
    }

    fn downlink_problem(&mut self, reason: DownlinkDrop, detail: &str) {
        self.serial.downlink_dropped(reason);
        if let Some(suppressed) = self.warn_limit.check() {
            tracing::warn!(
                pipeline = &*self.pipeline,
                reason = reason.as_str(),
                suppressed,
                "downlink command not written: {detail}"
            );
        }
    }

    /// How long `bytes` take on the line at the configured settings.
    fn wire_time(&self, bytes: usize) -> Duration {
        let parity = u32::from(self.config.parity != SerialParity::None);
        let bits_per_char =
            1 + u32::from(self.config.data_bits) + parity + u32::from(self.config.stop_bits);
        let bits = (bytes as f64) * f64::from(bits_per_char);
        // At most a minute: payloads are bounded by max_frame_bytes anyway.
        Duration::try_from_secs_f64(bits / f64::from(self.config.baud.get().max(1)))
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(60))
    }
}

/// Follows the UART error counters of one session.
struct LineWatch {
    fd: RawFd,
    last: Option<LineCounts>,
}

impl LineWatch {
    fn start(fd: RawFd, pipeline: &str) -> Self {
        let last = match line_errors::read(fd) {
            Ok(Some(counts)) => Some(counts),
            Ok(None) => {
                tracing::debug!(
                    pipeline,
                    "the port has no UART error counters (TIOCGICOUNT); overruns cannot be detected"
                );
                None
            }
            Err(err) => {
                tracing::debug!(pipeline, error = %err, "cannot read UART error counters");
                None
            }
        };
        LineWatch { fd, last }
    }

    fn poll(&mut self, metrics: &SerialMetrics, pipeline: &str, warn_limit: &mut RateLimiter) {
        let Some(last) = self.last else { return };
        let Ok(Some(now)) = line_errors::read(self.fd) else {
            return;
        };
        let increase = now.increase_since(&last);
        self.last = Some(now);
        for (kind, n) in line_errors::KINDS.iter().zip(increase.0) {
            if n > 0 {
                metrics.line_errors_add(kind, n);
            }
        }
        if (increase.lost() > 0 || increase.line() > 0)
            && let Some(suppressed) = warn_limit.check()
        {
            tracing::warn!(
                pipeline,
                lost = increase.lost(),
                line_errors = increase.line(),
                suppressed,
                "serial data lost (UART/driver overrun: the host did not read fast enough) or \
                 line errors (framing/parity/break: check baud, parity and stop bits)"
            );
        }
    }
}
