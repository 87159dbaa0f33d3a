//! Serial-side metric families: port state, line errors, downlink, capture.
//!
//! Registered once in [`crate::metrics::Metrics`]; the port task gets a
//! [`SerialMetrics`] with its pipeline's counters pre-resolved.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{DropLabel, PipelineLabel};

/// `{pipeline, kind}` for UART line errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LineErrorLabel {
    /// Pipeline name.
    pub pipeline: String,
    /// `overrun`, `buf_overrun`, `frame`, `parity`, `brk`.
    pub kind: String,
}

/// The serial metric families of one host.
#[derive(Debug, Default)]
pub struct SerialFamilies {
    port_open: Family<PipelineLabel, Gauge>,
    opens: Family<PipelineLabel, Counter>,
    open_failures: Family<DropLabel, Counter>,
    bytes_received: Family<PipelineLabel, Counter>,
    line_errors: Family<LineErrorLabel, Counter>,
    downlink_written: Family<PipelineLabel, Counter>,
    downlink_dropped: Family<DropLabel, Counter>,
    capture_records: Family<PipelineLabel, Counter>,
    capture_dropped: Family<DropLabel, Counter>,
}

impl SerialFamilies {
    /// Creates the families and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let f = Self::default();
        registry.register(
            "serial_port_open",
            "1 while the pipeline's serial port is open",
            f.port_open.clone(),
        );
        registry.register(
            "serial_opens",
            "Successful opens of the serial port (reconnects are opens after the first)",
            f.opens.clone(),
        );
        registry.register(
            "serial_open_failures",
            "Failed attempts to open the serial port, by reason",
            f.open_failures.clone(),
        );
        registry.register(
            "serial_bytes_received",
            "Bytes read from the serial port",
            f.bytes_received.clone(),
        );
        registry.register(
            "serial_line_errors",
            "UART error counters (TIOCGICOUNT) since the port was opened; overrun and \
             buf_overrun are bytes lost before the host could read them",
            f.line_errors.clone(),
        );
        registry.register(
            "downlink_written",
            "Downlink commands written to the serial port",
            f.downlink_written.clone(),
        );
        registry.register(
            "downlink_dropped",
            "Downlink commands not written, by reason",
            f.downlink_dropped.clone(),
        );
        registry.register(
            "capture_records",
            "Frames written to the capture file",
            f.capture_records.clone(),
        );
        registry.register(
            "capture_dropped",
            "Frames not written to the capture file, by reason (the frame itself was still processed)",
            f.capture_dropped.clone(),
        );
        f
    }

    /// Pre-resolved counters for one pipeline.
    pub fn pipeline(&self, name: &str) -> SerialMetrics {
        let label = PipelineLabel {
            pipeline: name.to_owned(),
        };
        SerialMetrics {
            name: name.to_owned(),
            port_open: self.port_open.get_or_create(&label).clone(),
            opens: self.opens.get_or_create(&label).clone(),
            bytes_received: self.bytes_received.get_or_create(&label).clone(),
            downlink_written: self.downlink_written.get_or_create(&label).clone(),
            capture_records: self.capture_records.get_or_create(&label).clone(),
            open_failures: self.open_failures.clone(),
            line_errors: self.line_errors.clone(),
            downlink_dropped: self.downlink_dropped.clone(),
            capture_dropped: self.capture_dropped.clone(),
        }
    }
}

/// Serial counter handles for one pipeline.
#[derive(Clone, Debug)]
pub struct SerialMetrics {
    name: String,
    /// 1 while the port is open.
    pub port_open: Gauge,
    /// Successful opens.
    pub opens: Counter,
    /// Bytes read.
    pub bytes_received: Counter,
    /// Downlink commands written.
    pub downlink_written: Counter,
    /// Frames written to the capture file.
    pub capture_records: Counter,
    open_failures: Family<DropLabel, Counter>,
    line_errors: Family<LineErrorLabel, Counter>,
    downlink_dropped: Family<DropLabel, Counter>,
    capture_dropped: Family<DropLabel, Counter>,
}

impl SerialMetrics {
    /// Metrics that belong to no registry (tests, tools).
    pub fn detached(name: &str) -> Self {
        SerialFamilies::default().pipeline(name)
    }

    fn drop_label(&self, reason: &str) -> DropLabel {
        DropLabel {
            pipeline: self.name.clone(),
            reason: reason.to_owned(),
        }
    }

    fn kind_label(&self, kind: &str) -> LineErrorLabel {
        LineErrorLabel {
            pipeline: self.name.clone(),
            kind: kind.to_owned(),
        }
    }

    /// Counts a failed open.
    pub fn open_failed(&self, reason: &str) {
        self.open_failures
            .get_or_create(&self.drop_label(reason))
            .inc();
    }

    /// Failed opens so far with `reason`.
    pub fn open_failures(&self, reason: &str) -> u64 {
        self.open_failures
            .get_or_create(&self.drop_label(reason))
            .get()
    }

    /// Adds `n` UART errors of `kind`.
    pub fn line_errors_add(&self, kind: &str, n: u64) {
        self.line_errors
            .get_or_create(&self.kind_label(kind))
            .inc_by(n);
    }

    /// UART errors of `kind` so far.
    pub fn line_errors(&self, kind: &str) -> u64 {
        self.line_errors.get_or_create(&self.kind_label(kind)).get()
    }

    /// Counts a downlink command that was not written.
    pub fn downlink_dropped(&self, reason: DownlinkDrop) {
        self.downlink_dropped
            .get_or_create(&self.drop_label(reason.as_str()))
            .inc();
    }

    /// Downlink commands dropped with `reason` so far.
    pub fn downlink_dropped_count(&self, reason: &str) -> u64 {
        self.downlink_dropped
            .get_or_create(&self.drop_label(reason))
            .get()
    }

    /// Counts a frame that did not make it into the capture file.
    pub fn capture_dropped(&self, reason: CaptureDrop) {
        self.capture_dropped
            .get_or_create(&self.drop_label(reason.as_str()))
            .inc();
    }

    /// Capture records dropped with `reason` so far.
    pub fn capture_dropped_count(&self, reason: &str) -> u64 {
        self.capture_dropped
            .get_or_create(&self.drop_label(reason))
            .get()
    }
}

/// Why a downlink command was not written
/// (`sluice_downlink_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownlinkDrop {
    /// A retained message on a command topic (refused unless
    /// `accept_retained`).
    Retained,
    /// The pipeline's command queue was full.
    CommandQueueFull,
    /// The host was stopping.
    Shutdown,
    /// Under `sluice replay`: there is no port to write to.
    NoPort,
    /// The transform refused to encode it.
    TransformRejected,
    /// The port's downlink queue was full.
    QueueFull,
    /// The port task had stopped.
    PortStopped,
    /// It waited in the queue longer than the command's deadline.
    Expired,
    /// The framer could not frame it.
    EncodeFailed,
    /// The write failed (the device is probably gone).
    WriteFailed,
    /// Not written within `serial.write_timeout_ms`.
    WriteTimeout,
    /// Modbus: not a write command the poller can send.
    InvalidCommand,
    /// Modbus: the device answered the write with an exception.
    DeviceException,
}

impl DownlinkDrop {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DownlinkDrop::Retained => "retained",
            DownlinkDrop::CommandQueueFull => "command_queue_full",
            DownlinkDrop::Shutdown => "shutdown",
            DownlinkDrop::NoPort => "no_port",
            DownlinkDrop::TransformRejected => "transform_rejected",
            DownlinkDrop::QueueFull => "queue_full",
            DownlinkDrop::PortStopped => "port_stopped",
            DownlinkDrop::Expired => "expired",
            DownlinkDrop::EncodeFailed => "encode_failed",
            DownlinkDrop::WriteFailed => "write_failed",
            DownlinkDrop::WriteTimeout => "write_timeout",
            DownlinkDrop::InvalidCommand => "invalid_command",
            DownlinkDrop::DeviceException => "device_exception",
        }
    }
}

/// Why a frame is missing from its capture file
/// (`sluice_capture_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureDrop {
    /// The capture writer's queue was full.
    QueueFull,
    /// The capture writer had stopped.
    WriterStopped,
    /// Writing the file failed.
    WriteFailed,
    /// The capture file could not be opened.
    Unavailable,
}

impl CaptureDrop {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureDrop::QueueFull => "queue_full",
            CaptureDrop::WriterStopped => "writer_stopped",
            CaptureDrop::WriteFailed => "write_failed",
            CaptureDrop::Unavailable => "unavailable",
        }
    }
}
