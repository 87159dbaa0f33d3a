//! A Modbus source: polls the devices of `[pipeline.modbus]` over TCP or on
//! the pipeline's serial bus (RTU) with `tokio-modbus`, and hands each
//! answer to the pipeline as a frame.
//!
//! The frame is the answer with what it answers, in the layout
//! `sluice_sdk::modbus::Reading` parses: format 1, unit id, function code,
//! 0, start address (u16 BE), count (u16 BE), then the registers (u16 BE
//! each) or the bits packed as on the wire.
//!
//! One request at a time on the link (an RTU bus has one master and no
//! addressing of answers; a TCP gateway often serialises anyway), the one
//! due first, so every device gets its turn. A device that does not answer
//! is asked again right away up to `retries` times, then counted failed and
//! left alone for a backoff (doubling up to `backoff_max_ms`) so a dead
//! device does not take the bus from live ones; an exception is an answer
//! (counted by code), not a failure — except a TCP gateway's "the device
//! did not answer" (codes 10 and 11). On RTU, bytes that came back without
//! forming a frame whose CRC checks are a `crc_error`, not a `timeout`:
//! `tokio-modbus` skips such bytes silently, so the poller watches what the
//! line received ([`Watched`]). A failed link is reopened with the same
//! backoff. With a durable log the next request waits until the last
//! answer is committed, as a serial port's next read does
//! ([`crate::ticket`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll as TaskPoll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::client::{Client as _, Context, Reader as _, Writer as _};
use tokio_modbus::prelude::SlaveContext as _;
use tokio_util::sync::CancellationToken;

use crate::config::modbus::{ModbusConfig, Poll, Table};
use crate::config::{PipelineConfig, SerialConfig};
use crate::metrics::Metrics;
use crate::metrics::modbus::ModbusMetrics;
use crate::metrics::serial::{DownlinkDrop, SerialMetrics};
use crate::model::{Frame, now_ns};
use crate::ratelimit::RateLimiter;
use crate::source::ReadAhead;
use crate::source::serial::DownlinkSender;
use crate::source::serial::downlink::{self, Command};
use crate::ticket::{FrameTicket, FrameTickets};

/// The frame layout's version (byte 0).
const FORMAT: u8 = 1;
/// Exceptions by which a TCP gateway says the device behind it did not
/// answer (path unavailable, target failed to respond): a dead device, as
/// a timeout is on a bus of our own.
const GATEWAY_NO_ANSWER: [u8; 2] = [0x0A, 0x0B];

/// A poller, prepared but not polling yet.
pub struct PreparedPoller {
    pipeline: Arc<str>,
    config: ModbusConfig,
    serial: Option<SerialConfig>,
    metrics: ModbusMetrics,
    downlink: DownlinkSender,
    commands: mpsc::Receiver<Command>,
    serial_metrics: SerialMetrics,
}

/// Prepares the poller of `pipeline` (which has `[pipeline.modbus]`).
pub fn prepare(pipeline: &PipelineConfig, metrics: &Metrics) -> anyhow::Result<PreparedPoller> {
    let Some(config) = pipeline.modbus.clone() else {
        anyhow::bail!("pipeline {:?}: no [pipeline.modbus]", pipeline.name);
    };
    let name: Arc<str> = pipeline.name.as_str().into();
    let serial_metrics = metrics.serial(&pipeline.name);
    let (downlink, commands) = downlink::channel(
        name.clone(),
        config.downlink_queue.get(),
        serial_metrics.clone(),
    );
    Ok(PreparedPoller {
        pipeline: name,
        serial: pipeline.serial.clone().filter(|_| config.tcp.is_none()),
        config,
        metrics: metrics.modbus(&pipeline.name),
        downlink,
        commands,
        serial_metrics,
    })
}

impl PreparedPoller {
    /// Where write commands for these devices go.
    pub fn downlink(&self) -> &DownlinkSender {
        &self.downlink
    }

    /// Starts polling: frames go to `frames` until `stop`.
    pub fn spawn(
        self,
        frames: mpsc::Sender<Frame>,
        stop: CancellationToken,
        read_ahead: ReadAhead,
    ) -> tokio::task::JoinHandle<()> {
        let tickets = match read_ahead {
            ReadAhead::Queues => None,
            ReadAhead::UntilSettled(in_flight) => Some(FrameTickets::new(in_flight)),
        };
        let poller = Poller {
            schedule: Schedule::new(&self.config),
            pipeline: self.pipeline,
            config: self.config,
            serial: self.serial,
            metrics: self.metrics,
            frames,
            stop,
            tickets,
            commands: self.commands,
            commands_open: true,
            serial_metrics: self.serial_metrics,
            warn_limit: RateLimiter::new(5, Duration::from_secs(60)),
        };
        tokio::spawn(poller.run())
    }
}

struct Poller {
    pipeline: Arc<str>,
    config: ModbusConfig,
    serial: Option<SerialConfig>,
    metrics: ModbusMetrics,
    frames: mpsc::Sender<Frame>,
    stop: CancellationToken,
    tickets: Option<FrameTickets>,
    schedule: Schedule,
    /// Write commands, sent before the next poll.
    commands: mpsc::Receiver<Command>,
    /// False once every sender of `commands` is gone.
    commands_open: bool,
    /// The downlink's counters (`sluice_downlink_*`).
    serial_metrics: SerialMetrics,
    warn_limit: RateLimiter,
}

/// What became of one request.
enum Outcome {
    Answer(Vec<u8>),
    /// The device answered with an exception (it is alive).
    Exception(u8),
    /// No answer in time.
    Timeout,
    /// RTU: bytes came back in time, but no frame whose CRC checks (a
    /// damaged answer, or one cut short).
    CrcError,
    /// An answer that does not belong to the request (a late answer to an
    /// earlier one, a damaged frame): the link is reopened.
    Mismatch(String),
    /// The link failed.
    Transport(String),
}

impl Outcome {
    /// The metric's result for a request that got no valid answer (the ones
    /// retried), `None` for any other outcome.
    fn no_answer(&self) -> Option<&'static str> {
        match self {
            Outcome::Timeout => Some("timeout"),
            Outcome::CrcError => Some("crc_error"),
            _ => None,
        }
    }
}

impl Poller {
    async fn run(mut self) {
        let mut link_failures = 0u32;
        while !self.stop.is_cancelled() {
            let context = tokio::select! {
                () = self.stop.cancelled() => break,
                opened = self.open() => opened,
            };
            let (mut context, line) = match context {
                Ok(opened) => {
                    link_failures = 0;
                    self.metrics.connected.set(1);
                    opened
                }
                Err(err) => {
                    self.metrics.connect_failures.inc();
                    let wait = backoff(&self.config, link_failures);
                    link_failures += 1;
                    if link_failures == 1 {
                        tracing::warn!(pipeline = &*self.pipeline, error = %err,
                            "cannot open the Modbus link; retrying with backoff");
                    }
                    tokio::select! {
                        () = self.stop.cancelled() => break,
                        () = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            let lost = self.poll_until_lost(&mut context, line.as_deref()).await;
            self.metrics.connected.set(0);
            let _ = context.disconnect().await;
            if let Some(why) = lost {
                tracing::warn!(pipeline = &*self.pipeline, reason = %why,
                    "Modbus link lost; reopening");
            }
        }
        self.metrics.connected.set(0);
        downlink::drain_dropped(
            &mut self.commands,
            &self.serial_metrics,
            DownlinkDrop::Shutdown,
        );
    }

    /// Opens the link; on RTU also the count of bytes the line received.
    async fn open(&self) -> anyhow::Result<(Context, Option<Arc<AtomicU64>>)> {
        let timeout = Duration::from_millis(self.config.timeout_ms.get());
        match (&self.config.tcp, &self.serial) {
            (Some(address), _) => {
                let resolved: Vec<SocketAddr> = tokio::net::lookup_host(address).await?.collect();
                let Some(first) = resolved.first() else {
                    anyhow::bail!("{address} resolves to no address");
                };
                let connect = tokio_modbus::client::tcp::connect(*first);
                Ok((tokio::time::timeout(timeout, connect).await??, None))
            }
            (None, Some(serial)) => {
                let opened = super::serial::open::open(serial)
                    .map_err(|e| anyhow::anyhow!("serial port {}: {e}", serial.path.display()))?;
                let received = Arc::new(AtomicU64::new(0));
                let line = Watched {
                    inner: opened.port,
                    received: received.clone(),
                };
                Ok((tokio_modbus::client::rtu::attach(line), Some(received)))
            }
            (None, None) => anyhow::bail!("neither modbus.tcp nor [pipeline.serial]"),
        }
    }

    /// Polls until the link fails (returns why) or the host stops (None).
    async fn poll_until_lost(
        &mut self,
        context: &mut Context,
        line: Option<&AtomicU64>,
    ) -> Option<String> {
        // RTU: at least 3.5 characters of silence between frames.
        let silence = self.serial.as_ref().map(|s| silent_interval(s.baud.get()));
        let mut last_answer: Option<Instant> = None;
        loop {
            let (slot, due) = self.schedule.next(Instant::now())?;
            let mut due = due;
            if let (Some(silence), Some(last)) = (silence, last_answer) {
                due = due.max(last + silence);
            }
            // A write command goes before the next poll. A poll already due
            // does not go through the timer, which would round its wait up
            // to the next millisecond.
            let command = loop {
                if due <= Instant::now() {
                    if self.stop.is_cancelled() {
                        return None;
                    }
                    break self.commands.try_recv().ok();
                }
                tokio::select! {
                    () = self.stop.cancelled() => return None,
                    () = tokio::time::sleep_until(due) => break None,
                    command = self.commands.recv(), if self.commands_open => match command {
                        Some(command) => break Some(command),
                        // Every sender is gone (the host is stopping).
                        None => self.commands_open = false,
                    },
                }
            };
            if let Some(command) = command {
                if let (Some(silence), Some(last)) = (silence, last_answer) {
                    tokio::time::sleep_until(last + silence).await;
                }
                if let Some(why) = self.write(context, command).await {
                    return Some(why);
                }
                last_answer = Some(Instant::now());
                continue;
            }
            if let Some(tickets) = &self.tickets {
                tokio::select! {
                    () = self.stop.cancelled() => return None,
                    () = tickets.settled() => {}
                }
            }
            let poll = self.schedule.polls[slot].poll;
            let mut attempts = 0;
            let outcome = loop {
                let outcome = self.request(context, &poll, line).await;
                last_answer = Some(Instant::now());
                let Some(result) = outcome.no_answer() else {
                    break outcome;
                };
                if attempts == self.config.retries || self.stop.is_cancelled() {
                    break outcome;
                }
                attempts += 1;
                self.metrics.poll(poll.unit, result);
                if let Some(silence) = silence {
                    tokio::time::sleep(silence).await;
                }
            };
            let now = Instant::now();
            match outcome {
                Outcome::Answer(data) => {
                    self.metrics.poll(poll.unit, "ok");
                    self.schedule.answered(slot, now);
                    if !self.deliver(&poll, &data).await {
                        return None;
                    }
                }
                Outcome::Exception(code) => {
                    self.metrics.poll(poll.unit, &format!("exception_{code}"));
                    if GATEWAY_NO_ANSWER.contains(&code) {
                        self.schedule.failed(slot, now, &self.config);
                    } else {
                        self.schedule.answered(slot, now);
                    }
                }
                Outcome::Timeout | Outcome::CrcError => {
                    let result = outcome.no_answer().unwrap_or("timeout");
                    self.metrics.poll(poll.unit, result);
                    let wait = self.schedule.failed(slot, now, &self.config);
                    tracing::debug!(
                        pipeline = &*self.pipeline,
                        unit = poll.unit,
                        result,
                        backoff_ms = wait.as_millis() as u64,
                        "Modbus device gave no valid answer"
                    );
                }
                Outcome::Mismatch(why) => {
                    self.metrics.poll(poll.unit, "mismatch");
                    self.schedule.failed(slot, now, &self.config);
                    return Some(why);
                }
                Outcome::Transport(why) => {
                    self.metrics.poll(poll.unit, "transport");
                    self.schedule.failed(slot, now, &self.config);
                    return Some(why);
                }
            }
        }
    }

    async fn request(
        &self,
        context: &mut Context,
        poll: &Poll,
        line: Option<&AtomicU64>,
    ) -> Outcome {
        context.set_slave(tokio_modbus::Slave(poll.unit));
        let received_before = line.map(|l| l.load(Ordering::Relaxed));
        let timeout = Duration::from_millis(self.config.timeout_ms.get());
        let (address, count) = (poll.address, poll.count);
        let call = async {
            Ok(match poll.table {
                Table::Coils => context.read_coils(address, count).await?.map(pack_bits),
                Table::DiscreteInputs => context
                    .read_discrete_inputs(address, count)
                    .await?
                    .map(pack_bits),
                Table::Holding => context
                    .read_holding_registers(address, count)
                    .await?
                    .map(pack_words),
                Table::Input => context
                    .read_input_registers(address, count)
                    .await?
                    .map(pack_words),
            })
        };
        let result: Result<_, tokio_modbus::Error> = match tokio::time::timeout(timeout, call).await
        {
            Ok(result) => result,
            Err(_) => {
                let received_after = line.map(|l| l.load(Ordering::Relaxed));
                return if received_after == received_before {
                    Outcome::Timeout
                } else {
                    Outcome::CrcError
                };
            }
        };
        match result {
            Ok(Ok(data)) => Outcome::Answer(data),
            Ok(Err(exception)) => Outcome::Exception(exception.into()),
            Err(tokio_modbus::Error::Protocol(err)) => Outcome::Mismatch(err.to_string()),
            Err(tokio_modbus::Error::Transport(err))
                if err.kind() == std::io::ErrorKind::InvalidData =>
            {
                Outcome::Mismatch(err.to_string())
            }
            Err(tokio_modbus::Error::Transport(err)) => Outcome::Transport(err.to_string()),
        }
    }

    /// Sends one write command; returns why the link failed, if it did.
    async fn write(&mut self, context: &mut Context, command: Command) -> Option<String> {
        let max_age = self.config.downlink_max_age_ms;
        let age = command.queued_at.elapsed();
        if max_age > 0 && age > Duration::from_millis(max_age) {
            let detail = format!("queued {} ms ago", age.as_millis());
            self.downlink_problem(DownlinkDrop::Expired, &detail);
            return None;
        }
        let write = match WriteCommand::parse(&command.payload) {
            Ok(write) => write,
            Err(why) => {
                self.downlink_problem(DownlinkDrop::InvalidCommand, &why);
                return None;
            }
        };
        context.set_slave(tokio_modbus::Slave(write.unit));
        let timeout = Duration::from_millis(self.config.timeout_ms.get());
        let call = async {
            match &write.values {
                WriteValues::Coil(on) => context.write_single_coil(write.address, *on).await,
                WriteValues::Register(word) => {
                    context.write_single_register(write.address, *word).await
                }
                WriteValues::Coils(bits) => context.write_multiple_coils(write.address, bits).await,
                WriteValues::Registers(words) => {
                    context.write_multiple_registers(write.address, words).await
                }
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(Ok(()))) => {
                self.serial_metrics.downlink_written.inc();
                tracing::debug!(
                    pipeline = &*self.pipeline,
                    unit = write.unit,
                    address = write.address,
                    "Modbus write done"
                );
                None
            }
            Ok(Ok(Err(exception))) => {
                let code: u8 = exception.into();
                let detail = format!("unit {} answered exception {code}", write.unit);
                self.downlink_problem(DownlinkDrop::DeviceException, &detail);
                None
            }
            Err(_) => {
                let detail = format!("unit {} did not answer", write.unit);
                self.downlink_problem(DownlinkDrop::WriteTimeout, &detail);
                None
            }
            Ok(Err(err)) => {
                self.downlink_problem(DownlinkDrop::WriteFailed, &err.to_string());
                Some(format!("write failed: {err}"))
            }
        }
    }

    fn downlink_problem(&mut self, reason: DownlinkDrop, detail: &str) {
        self.serial_metrics.downlink_dropped(reason);
        if let Some(suppressed) = self.warn_limit.check() {
            tracing::warn!(
                pipeline = &*self.pipeline,
                reason = reason.as_str(),
                suppressed,
                "Modbus write not done: {detail}"
            );
        }
    }

    /// Hands one answer to the pipeline; false once the pipeline is gone.
    async fn deliver(&self, poll: &Poll, data: &[u8]) -> bool {
        let mut bytes = Vec::with_capacity(8 + data.len());
        bytes.extend_from_slice(&[FORMAT, poll.unit, poll.table.function(), 0]);
        bytes.extend_from_slice(&poll.address.to_be_bytes());
        bytes.extend_from_slice(&poll.count.to_be_bytes());
        bytes.extend_from_slice(data);
        let frame = Frame {
            source: self.pipeline.clone(),
            received_at_ns: now_ns(),
            data: bytes,
            ticket: self
                .tickets
                .as_ref()
                .map_or_else(FrameTicket::none, FrameTickets::issue),
        };
        tokio::select! {
            () = self.stop.cancelled() => false,
            sent = self.frames.send(frame) => sent.is_ok(),
        }
    }
}

/// A write command as a transform encodes it (`sluice_sdk::modbus::Write`):
/// format 1, unit id, function (5, 6, 15, 16), 0, address (u16 BE), count
/// (u16 BE), then one byte 0/1 (5), a u16 (6), bits packed as on the wire
/// (15) or count u16s (16).
#[derive(Debug, Clone, PartialEq, Eq)]
struct WriteCommand {
    unit: u8,
    address: u16,
    values: WriteValues,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum WriteValues {
    Coil(bool),
    Register(u16),
    Coils(Vec<bool>),
    Registers(Vec<u16>),
}

/// The protocol's limits on one write of several registers or coils.
const MAX_WRITE_REGISTERS: usize = 123;
const MAX_WRITE_COILS: usize = 1968;

impl WriteCommand {
    fn parse(bytes: &[u8]) -> Result<WriteCommand, String> {
        let Some((head, data)) = bytes.split_first_chunk::<8>() else {
            return Err(format!(
                "{} bytes, shorter than the 8-byte header",
                bytes.len()
            ));
        };
        let [format, unit, function, reserved, a0, a1, c0, c1] = *head;
        if format != FORMAT || reserved != 0 {
            return Err(format!(
                "format {format}, reserved {reserved}: not a format-1 write"
            ));
        }
        let address = u16::from_be_bytes([a0, a1]);
        let count = usize::from(u16::from_be_bytes([c0, c1]));
        if address as usize + count > 65_536 {
            return Err(format!("address {address} + count {count} is past 65535"));
        }
        let values = match (function, count, data) {
            (5, 1, [0]) => WriteValues::Coil(false),
            (5, 1, [1]) => WriteValues::Coil(true),
            (6, 1, [hi, lo]) => WriteValues::Register(u16::from_be_bytes([*hi, *lo])),
            (15, 1..=MAX_WRITE_COILS, data) if data.len() == count.div_ceil(8) => {
                WriteValues::Coils(
                    (0..count)
                        .map(|i| data[i / 8] & (1 << (i % 8)) != 0)
                        .collect(),
                )
            }
            (16, 1..=MAX_WRITE_REGISTERS, data) if data.len() == 2 * count => {
                WriteValues::Registers(
                    data.chunks_exact(2)
                        .map(|w| u16::from_be_bytes([w[0], w[1]]))
                        .collect(),
                )
            }
            _ => {
                return Err(format!(
                    "function {function}, count {count}, {} data bytes: not a valid write",
                    data.len()
                ));
            }
        };
        Ok(WriteCommand {
            unit,
            address,
            values,
        })
    }
}

/// A serial port that counts the bytes it receives: how the poller tells
/// a damaged answer from none at all.
#[derive(Debug)]
struct Watched<T> {
    inner: T,
    received: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> TaskPoll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        self.received.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> TaskPoll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> TaskPoll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> TaskPoll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn pack_words(words: Vec<u16>) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// Bits as on the wire: bit 0 of byte 0 is the first address.
fn pack_bits(bits: Vec<bool>) -> Vec<u8> {
    let mut bytes = vec![0u8; bits.len().div_ceil(8)];
    for (i, _) in bits.iter().enumerate().filter(|(_, on)| **on) {
        bytes[i / 8] |= 1 << (i % 8);
    }
    bytes
}

/// 3.5 characters of 11 bits at `baud`, and 1.75 ms above 19200 baud (the
/// Modbus serial line specification).
fn silent_interval(baud: u32) -> Duration {
    if baud > 19_200 {
        Duration::from_micros(1750)
    } else {
        Duration::from_micros(38_500_000 / u64::from(baud.max(1)))
    }
}

/// The delay after `failures` consecutive failures.
fn backoff(config: &ModbusConfig, failures: u32) -> Duration {
    let ms = config
        .backoff_min_ms
        .get()
        .saturating_mul(1u64 << failures.min(20))
        .min(config.backoff_max_ms.get());
    Duration::from_millis(ms)
}

/// When each poll is due, and which devices are backing off.
struct Schedule {
    polls: Vec<Slot>,
    /// Per unit: consecutive failures, and until when it is left alone.
    devices: BTreeMap<u8, (u32, Option<Instant>)>,
}

struct Slot {
    poll: Poll,
    due: Instant,
}

impl Schedule {
    fn new(config: &ModbusConfig) -> Self {
        let now = Instant::now();
        Self {
            polls: config
                .plan()
                .into_iter()
                .map(|poll| Slot { poll, due: now })
                .collect(),
            devices: BTreeMap::new(),
        }
    }

    /// The slot due first (a device backing off counts from its end), and
    /// when. Ties go to the earlier slot, so each device gets its turn.
    fn next(&self, now: Instant) -> Option<(usize, Instant)> {
        self.polls
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let resume = self
                    .devices
                    .get(&slot.poll.unit)
                    .and_then(|(_, until)| *until)
                    .unwrap_or(now);
                (i, slot.due.max(resume))
            })
            .min_by_key(|&(i, due)| (due, i))
    }

    /// Its next turn: one interval after this one, or now if that has
    /// passed already (a slow bus skips turns rather than bunching them).
    fn answered(&mut self, slot: usize, now: Instant) {
        let unit = self.polls[slot].poll.unit;
        self.devices.remove(&unit);
        self.reschedule(slot, now);
    }

    /// Counts a failure of the slot's device and leaves it alone for the
    /// backoff; returns the backoff.
    fn failed(&mut self, slot: usize, now: Instant, config: &ModbusConfig) -> Duration {
        let unit = self.polls[slot].poll.unit;
        let entry = self.devices.entry(unit).or_insert((0, None));
        let wait = backoff(config, entry.0);
        entry.0 += 1;
        entry.1 = Some(now + wait);
        self.reschedule(slot, now);
        wait
    }

    fn reschedule(&mut self, slot: usize, now: Instant) {
        let slot = &mut self.polls[slot];
        let interval = Duration::from_millis(slot.poll.interval_ms);
        slot.due = (slot.due + interval).max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_packed_as_on_the_wire() {
        let bits = [true, false, true, false, false, false, false, false, true];
        assert_eq!(pack_bits(bits.to_vec()), [0b0000_0101, 0b0000_0001]);
        assert_eq!(pack_words(vec![0x0102, 0xfffe]), [1, 2, 0xff, 0xfe]);
    }

    #[test]
    fn write_commands_parse_and_bad_ones_are_refused() {
        let parse = WriteCommand::parse;
        let write = |unit, address, values| WriteCommand {
            unit,
            address,
            values,
        };
        assert_eq!(
            parse(&[1, 7, 5, 0, 0, 3, 0, 1, 1]),
            Ok(write(7, 3, WriteValues::Coil(true)))
        );
        assert_eq!(
            parse(&[1, 1, 6, 0, 0, 10, 0, 1, 0x12, 0x34]),
            Ok(write(1, 10, WriteValues::Register(0x1234)))
        );
        assert_eq!(
            parse(&[1, 1, 15, 0, 0, 0, 0, 9, 0b0000_0101, 1]),
            Ok(write(
                1,
                0,
                WriteValues::Coils(vec![
                    true, false, true, false, false, false, false, false, true
                ])
            ))
        );
        assert_eq!(
            parse(&[1, 2, 16, 0, 0, 4, 0, 2, 0, 1, 0x11, 0x70]),
            Ok(write(2, 4, WriteValues::Registers(vec![1, 0x1170])))
        );
        for bad in [
            &[1, 1, 6, 0, 0, 10][..],                     // short
            &[2, 1, 6, 0, 0, 10, 0, 1, 0, 1],             // format 2
            &[1, 1, 5, 0, 0, 3, 0, 1, 2],                 // a coil of 2
            &[1, 1, 3, 0, 0, 0, 0, 1, 0, 1],              // a read
            &[1, 1, 16, 0, 0, 0, 0, 2, 0, 1],             // count 2, one register
            &[1, 1, 16, 0, 0xff, 0xff, 0, 2, 0, 1, 0, 2], // past 65535
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn silence_follows_the_serial_line_specification() {
        assert_eq!(silent_interval(9600), Duration::from_micros(4010));
        assert_eq!(silent_interval(115_200), Duration::from_micros(1750));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_device_backs_off_and_the_others_keep_their_turns() {
        let config: ModbusConfig = toml::from_str(
            r#"
            tcp = "127.0.0.1:502"
            backoff_min_ms = 1000
            backoff_max_ms = 4000
            [[device]]
            unit = 1
            read = [{ table = "holding", address = 0, count = 2, interval_ms = 100 }]
            [[device]]
            unit = 2
            read = [{ table = "holding", address = 0, count = 2, interval_ms = 100 }]
            "#,
        )
        .expect("parses");
        let mut schedule = Schedule::new(&config);
        let start = Instant::now();
        let mut turns = Vec::new();
        let mut now = start;
        // Unit 1 never answers; unit 2 always does.
        while now < start + Duration::from_secs(8) {
            let (slot, due) = schedule.next(now).expect("a slot");
            now = now.max(due);
            let unit = schedule.polls[slot].poll.unit;
            turns.push((unit, now.duration_since(start).as_millis()));
            if unit == 1 {
                schedule.failed(slot, now, &config);
            } else {
                schedule.answered(slot, now);
            }
        }
        let dead: Vec<u128> = turns.iter().filter(|t| t.0 == 1).map(|t| t.1).collect();
        // Asked at 0, then after 1 s, 2 s, 4 s, 4 s (capped).
        assert_eq!(dead, [0, 1000, 3000, 7000]);
        let live = turns.iter().filter(|t| t.0 == 2).count();
        assert!(
            (79..=81).contains(&live),
            "unit 2 polled {live} times in 8 s"
        );
    }
}
