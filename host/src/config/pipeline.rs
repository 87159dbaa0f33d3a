//! `[[pipeline]]` and its subsections (`serial`, `transform`, `capture`,
//! `downlink`): the types, their defaults and their checks, including the
//! ones across pipelines (a port or capture file used twice).

use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;

use serde::Deserialize;

use super::limits::{LimitsConfig, LimitsOverride};
use super::modbus::ModbusConfig;

/// `[[pipeline]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Unique name; used in metrics labels and as the frame's `source`.
    pub name: String,
    /// The serial port this pipeline reads (with `modbus` over RTU: the
    /// bus, its framing unused). Absent only for Modbus TCP.
    #[serde(default)]
    pub serial: Option<SerialConfig>,
    /// Poll Modbus devices instead of listening to the line
    /// ([`ModbusConfig`]).
    #[serde(default)]
    pub modbus: Option<ModbusConfig>,
    /// The transform that decodes its frames.
    pub transform: TransformConfig,
    /// Overrides of the global `[limits]`, key by key
    /// ([`PipelineConfig::effective_limits`]).
    #[serde(default)]
    pub limits: Option<LimitsOverride>,
    /// Frames buffered between the port and the transform; when full, the
    /// port task stops reading (backpressure) and the OS buffers the rest.
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: NonZeroUsize,
    /// Record every frame this pipeline reads to a capture file, for
    /// `sluice replay` (`source/capture.rs`). Absent: no capture.
    #[serde(default)]
    pub capture: Option<CaptureConfig>,
    /// Commands from MQTT to the device (`[pipeline.downlink]`). Absent: the
    /// pipeline subscribes to nothing.
    #[serde(default)]
    pub downlink: Option<DownlinkConfig>,
}

impl PipelineConfig {
    /// The sandbox limits of this pipeline's transform: the global `[limits]`
    /// with the keys `[pipeline.limits]` gives replaced.
    pub fn effective_limits(&self, global: LimitsConfig) -> LimitsConfig {
        self.limits.map_or(global, |o| o.over(global))
    }
}

/// `[pipeline.downlink]`: MQTT messages on `topic` (a filter) are handed to
/// the transform's `encode-command`; the bytes it returns are framed like the
/// port's input and written to the serial line, in arrival order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownlinkConfig {
    /// The MQTT topic filter to subscribe to, e.g. `iiot/cmd/node1/#`.
    pub topic: String,
    /// Subscription QoS (0, 1 or 2).
    #[serde(default = "default_downlink_qos")]
    pub qos: u8,
    /// Commands waiting for the transform; when full, new ones are refused
    /// and counted (`downlink_dropped{reason="command_queue_full"}`).
    #[serde(default = "default_downlink_commands")]
    pub queue: NonZeroUsize,
    /// Accept retained messages (default false). A retained command would be
    /// re-delivered on every (re)subscribe and executed again, so by default
    /// they are ignored and counted (`reason="retained"`).
    #[serde(default)]
    pub accept_retained: bool,
}

fn default_downlink_qos() -> u8 {
    1
}
fn default_downlink_commands() -> NonZeroUsize {
    NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN)
}

/// `[pipeline.capture]`: an append-only, size-bounded, rotated record of
/// the frames a pipeline read, with their receive times.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// The capture file; rotated files get `.1`, `.2`, … (`.1` is the newest).
    /// Relative paths are relative to the config file.
    pub path: PathBuf,
    /// Rotate when the file would grow beyond this many bytes.
    #[serde(default = "default_capture_max_bytes")]
    pub max_bytes: NonZeroU64,
    /// Rotated files kept besides the current one (0: start over when full).
    #[serde(default = "default_capture_keep")]
    pub keep: u32,
}

fn default_capture_max_bytes() -> NonZeroU64 {
    NonZeroU64::new(64 << 20).unwrap_or(NonZeroU64::MIN)
}
fn default_capture_keep() -> u32 {
    3
}

fn default_channel_capacity() -> NonZeroUsize {
    NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN)
}

/// `[pipeline.serial]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Device path, e.g. `/dev/ttyUSB0` or a udev symlink.
    pub path: PathBuf,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: NonZeroU32,
    /// Frames longer than this are dropped (counted) and the framer
    /// resynchronises at the next delimiter.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: NonZeroUsize,
    /// How the byte stream is split into frames (default: newline); see
    /// [`FramingConfig`](sluice_framing::FramingConfig).
    #[serde(default)]
    pub framing: sluice_framing::FramingConfig,
    /// Data bits per character: 5, 6, 7 or 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Parity: `none`, `odd` or `even`.
    #[serde(default)]
    pub parity: SerialParity,
    /// Stop bits: 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Flow control: `none`, `software` (XON/XOFF) or `hardware` (RTS/CTS).
    #[serde(default)]
    pub flow_control: SerialFlowControl,
    /// Open the port exclusively (`TIOCEXCL` and an exclusive `flock`), so a
    /// second program cannot read the same device.
    #[serde(default = "super::default_true")]
    pub exclusive: bool,
    /// `true`: start-up fails when the port cannot be opened. `false`: a port
    /// missing at start-up is retried like an unplugged one.
    #[serde(default)]
    pub required: bool,
    /// Reopen backoff after an unplug or a failed open: first delay (ms).
    #[serde(default = "default_serial_reconnect_min")]
    pub reconnect_min_ms: NonZeroU64,
    /// Reopen backoff: largest delay (ms); with the path back, reading
    /// resumes at most this long later.
    #[serde(default = "default_serial_reconnect_max")]
    pub reconnect_max_ms: NonZeroU64,
    /// Downlink: how long one framed command may take to be written (ms).
    #[serde(default = "default_write_timeout")]
    pub write_timeout_ms: NonZeroU64,
    /// Downlink: commands held while the port is busy or disconnected; when
    /// full, new commands are refused and counted (`queue_full`).
    #[serde(default = "default_downlink_queue")]
    pub downlink_queue: NonZeroUsize,
    /// Downlink: a command older than this when its turn comes is not
    /// written (counted as `expired`), so a stale command is not sent to a
    /// device that was replugged much later. 0: no limit.
    #[serde(default = "default_downlink_max_age")]
    pub downlink_max_age_ms: u64,
}

/// Serial parity setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialParity {
    /// No parity bit.
    #[default]
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Serial flow control setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialFlowControl {
    /// None.
    #[default]
    None,
    /// XON/XOFF in band (unsuitable for binary framings: 0x11/0x13 are eaten).
    Software,
    /// RTS/CTS lines.
    Hardware,
}

/// Baud rates accepted at config time; whether the device can do it is
/// checked when the port is opened.
pub const BAUD_RANGE: std::ops::RangeInclusive<u32> = 50..=16_000_000;

fn default_baud() -> NonZeroU32 {
    NonZeroU32::new(115_200).unwrap_or(NonZeroU32::MIN)
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_serial_reconnect_min() -> NonZeroU64 {
    NonZeroU64::new(100).unwrap_or(NonZeroU64::MIN)
}
fn default_serial_reconnect_max() -> NonZeroU64 {
    NonZeroU64::new(5_000).unwrap_or(NonZeroU64::MIN)
}
fn default_write_timeout() -> NonZeroU64 {
    NonZeroU64::new(1_000).unwrap_or(NonZeroU64::MIN)
}
fn default_downlink_queue() -> NonZeroUsize {
    NonZeroUsize::new(64).unwrap_or(NonZeroUsize::MIN)
}
fn default_downlink_max_age() -> u64 {
    30_000
}
fn default_max_frame() -> NonZeroUsize {
    NonZeroUsize::new(64 << 10).unwrap_or(NonZeroUsize::MIN)
}

/// `[pipeline.transform]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// Path to the transform component (`.wasm`); relative to the config file.
    pub module: PathBuf,
    /// Key/values handed to the transform's `init`.
    #[serde(default)]
    pub config: BTreeMap<String, ScalarValue>,
}

impl TransformConfig {
    /// The config as the key/value list `init` takes.
    pub fn init_pairs(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect()
    }
}

/// A transform config value: a string, number or boolean, passed as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalarValue(pub String);

impl<'de> Deserialize<'de> for ScalarValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ScalarValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<ScalarValue, E> {
                Ok(ScalarValue(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ScalarValue, E> {
                Ok(ScalarValue(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<ScalarValue, E> {
                Ok(ScalarValue(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ScalarValue, E> {
                Ok(ScalarValue(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<ScalarValue, E> {
                Ok(ScalarValue(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Every problem of the `[[pipeline]]` sections, each naming its key.
/// `commands_over_mqtt`: an MQTT connection or the embedded broker is
/// configured, so a downlink has something to subscribe with.
pub(super) fn validate(pipelines: &[PipelineConfig], commands_over_mqtt: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if pipelines.is_empty() {
        problems.push("pipeline: at least one [[pipeline]] is required".into());
    }
    let mut seen = std::collections::HashSet::new();
    for (i, p) in pipelines.iter().enumerate() {
        let key = format!("pipeline[{i}]");
        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            problems.push(format!(
                "{key}.name: {:?} must be non-empty and use only letters, digits, '-', '_', '.'",
                p.name
            ));
        } else if !seen.insert(p.name.as_str()) {
            problems.push(format!("{key}.name: {:?} is used twice", p.name));
        }
        match (&p.serial, &p.modbus) {
            (Some(serial), _) => validate_serial(&key, serial, &mut problems),
            (None, Some(modbus)) if modbus.tcp.is_some() => {}
            (None, _) => problems.push(format!(
                "{key}.serial: every pipeline reads a serial port, except one polling Modbus TCP (modbus.tcp)"
            )),
        }
        if let Some(modbus) = &p.modbus {
            if modbus.tcp.is_some() && p.serial.is_some() {
                problems.push(format!(
                    "{key}.modbus.tcp: a pipeline polls Modbus over TCP or over its serial port (RTU), not both"
                ));
            }
            if p.capture.is_some() {
                problems.push(format!(
                    "{key}.capture: a Modbus pipeline has no byte stream to capture"
                ));
            }
            problems.extend(modbus.validate(&format!("{key}.modbus"), modbus.tcp.is_none()));
        }
        if let Some(capture) = &p.capture {
            validate_capture(&key, capture, &mut problems);
        }
        if let Some(downlink) = &p.downlink {
            if !crate::model::valid_topic_filter(&downlink.topic) {
                problems.push(format!(
                    "{key}.downlink.topic: {:?} is not a valid MQTT topic filter",
                    downlink.topic
                ));
            }
            if downlink.qos > 2 {
                problems.push(format!(
                    "{key}.downlink.qos: {} is not 0, 1 or 2",
                    downlink.qos
                ));
            }
            if !commands_over_mqtt {
                problems.push(format!(
                    "{key}.downlink: commands arrive over MQTT; configure [mqtt] or [broker] embedded = true"
                ));
            }
        }
        if !p.transform.module.is_file() {
            problems.push(format!(
                "{key}.transform.module: {} is not a file",
                p.transform.module.display()
            ));
        }
    }
    validate_shared_paths(pipelines, &mut problems);
    problems
}

/// `[pipeline.serial]` settings (the framing is checked with the framing).
fn validate_serial(key: &str, serial: &SerialConfig, problems: &mut Vec<String>) {
    if serial.path.as_os_str().is_empty() {
        problems.push(format!("{key}.serial.path: must not be empty"));
    }
    if !BAUD_RANGE.contains(&serial.baud.get()) {
        problems.push(format!(
            "{key}.serial.baud: {} is outside {}..={}",
            serial.baud,
            BAUD_RANGE.start(),
            BAUD_RANGE.end()
        ));
    }
    if !(5..=8).contains(&serial.data_bits) {
        problems.push(format!(
            "{key}.serial.data_bits: must be 5, 6, 7 or 8, not {}",
            serial.data_bits
        ));
    }
    if !matches!(serial.stop_bits, 1 | 2) {
        problems.push(format!(
            "{key}.serial.stop_bits: must be 1 or 2, not {}",
            serial.stop_bits
        ));
    }
    if serial.reconnect_min_ms > serial.reconnect_max_ms {
        problems.push(format!(
            "{key}.serial.reconnect_min_ms: must not exceed {key}.serial.reconnect_max_ms"
        ));
    }
    problems.extend(
        serial
            .framing
            .validate(serial.max_frame_bytes.get(), serial.baud.get())
            .into_iter()
            .map(|problem| format!("{key}.serial.{problem}")),
    );
}

/// Smallest `max_bytes` of a capture file (header plus a few frames).
const CAPTURE_MIN_BYTES: u64 = 64 << 10;

/// `[pipeline.capture]`
fn validate_capture(key: &str, capture: &CaptureConfig, problems: &mut Vec<String>) {
    if capture.path.as_os_str().is_empty() {
        problems.push(format!("{key}.capture.path: must not be empty"));
    } else if capture.path.is_dir() {
        problems.push(format!(
            "{key}.capture.path: {} is a directory; name a file",
            capture.path.display()
        ));
    }
    if capture.max_bytes.get() < CAPTURE_MIN_BYTES {
        problems.push(format!(
            "{key}.capture.max_bytes: must be at least {CAPTURE_MIN_BYTES}"
        ));
    }
    if capture.keep > 1000 {
        problems.push(format!(
            "{key}.capture.keep: at most 1000 rotated files, not {}",
            capture.keep
        ));
    }
}

/// Two pipelines must not read the same port or write the same capture file.
fn validate_shared_paths(pipelines: &[PipelineConfig], problems: &mut Vec<String>) {
    let mut serial_paths = std::collections::HashMap::new();
    let mut capture_paths = std::collections::HashMap::new();
    for (i, p) in pipelines.iter().enumerate() {
        if let Some(serial) = &p.serial
            && let Some(first) = serial_paths.insert(serial.path.as_path(), i)
        {
            serial_paths.insert(serial.path.as_path(), first);
            problems.push(format!(
                "pipeline[{i}].serial.path: {} is already read by pipeline[{first}]",
                serial.path.display()
            ));
        }
        if let Some(capture) = &p.capture
            && let Some(first) = capture_paths.insert(capture.path.as_path(), i)
        {
            capture_paths.insert(capture.path.as_path(), first);
            problems.push(format!(
                "pipeline[{i}].capture.path: {} is already written by pipeline[{first}]",
                capture.path.display()
            ));
        }
    }
}
