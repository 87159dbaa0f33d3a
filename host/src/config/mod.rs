//! The host configuration: TOML, versioned, strict.
//!
//! * Unknown keys are errors (`deny_unknown_fields`): a typo must not silently
//!   fall back to a default on a box nobody looks at.
//! * `${VAR}` / `${VAR:-default}` are substituted first ([`interpolate`]), so
//!   one file serves a real box, docker-compose and the tests.
//! * Sizes and durations that must not be zero are `NonZero*`.
//! * Parsing stops at the first syntax or type error (toml names its line and
//!   column); semantic checks ([`Config::validate`]) report every problem at once.
//! * Library types (rumqttc, wasmtime) never appear here; the modules that own
//!   them map these plain values.

pub mod interpolate;

use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use interpolate::InterpolationError;

/// The only config format version this host reads.
pub const CONFIG_VERSION: u32 = 1;

/// A config load failure, meant to be shown to an operator as is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `${VAR}` substitution failed.
    #[error("{path}: {source}")]
    Interpolate {
        /// The config path.
        path: PathBuf,
        /// What went wrong.
        source: InterpolationError,
    },
    /// TOML syntax or type error (names the line, column and key).
    #[error("{path}: {source}")]
    Parse {
        /// The config path.
        path: PathBuf,
        /// toml's error, which quotes the offending line.
        source: Box<toml::de::Error>,
    },
    /// Semantic problems, all of them.
    #[error("{path}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The config path.
        path: PathBuf,
        /// One line per problem, each naming its key.
        problems: Vec<String>,
    },
}

/// The whole host configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Config format version; must be [`CONFIG_VERSION`].
    pub version: u32,
    /// Where the host keeps state (compiled-module cache now; outbox later).
    /// Relative paths are relative to the config file.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The MQTT connection; without it, messages are counted and discarded.
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
    /// Sandbox limits applied to every transform unless a pipeline overrides them.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The pipelines: one source → one transform → the sinks.
    #[serde(rename = "pipeline", default)]
    pub pipelines: Vec<PipelineConfig>,
}

/// `[mqtt]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Client id; stable across restarts so the broker keeps our session.
    /// Default: `sluice-<hostname>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Keep-alive interval in seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: NonZeroU16,
    /// Largest payload the host will publish; bigger messages are dead-lettered.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: NonZeroUsize,
    /// Maximum QoS 1/2 messages awaiting acknowledgement.
    #[serde(default = "default_inflight")]
    pub max_inflight: NonZeroU16,
    /// Reconnect backoff: first delay, in milliseconds.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: NonZeroU64,
    /// Reconnect backoff: largest delay, in milliseconds.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: NonZeroU64,
}

fn default_mqtt_port() -> u16 {
    1883
}
fn default_keep_alive() -> NonZeroU16 {
    NonZeroU16::new(30).unwrap_or(NonZeroU16::MIN)
}
fn default_max_payload() -> NonZeroUsize {
    NonZeroUsize::new(256 << 10).unwrap_or(NonZeroUsize::MIN)
}
fn default_inflight() -> NonZeroU16 {
    NonZeroU16::new(100).unwrap_or(NonZeroU16::MIN)
}
fn default_reconnect_min() -> NonZeroU64 {
    NonZeroU64::new(200).unwrap_or(NonZeroU64::MIN)
}
fn default_reconnect_max() -> NonZeroU64 {
    NonZeroU64::new(30_000).unwrap_or(NonZeroU64::MIN)
}

impl MqttConfig {
    /// The client id to use: configured, or `sluice-<hostname>`.
    pub fn effective_client_id(&self) -> String {
        self.client_id.clone().unwrap_or_else(|| {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into());
            format!("sluice-{host}")
        })
    }
}

/// `[limits]` and `[pipeline.limits]`: the sandbox budget per transform call.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Wall-clock budget per call, in milliseconds.
    #[serde(default = "default_call_timeout")]
    pub call_timeout_ms: NonZeroU64,
    /// Linear memory cap per transform instance, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: NonZeroU32,
}

fn default_call_timeout() -> NonZeroU64 {
    NonZeroU64::new(100).unwrap_or(NonZeroU64::MIN)
}
fn default_memory_mb() -> NonZeroU32 {
    NonZeroU32::new(32).unwrap_or(NonZeroU32::MIN)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            call_timeout_ms: default_call_timeout(),
            memory_mb: default_memory_mb(),
        }
    }
}

impl From<LimitsConfig> for crate::runtime::Limits {
    fn from(l: LimitsConfig) -> Self {
        crate::runtime::Limits {
            call_timeout: Duration::from_millis(l.call_timeout_ms.get()),
            memory_bytes: usize::try_from(l.memory_mb.get())
                .unwrap_or(usize::MAX)
                .saturating_mul(1 << 20),
        }
    }
}

/// `[[pipeline]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Unique name; used in metrics labels and as the frame's `source`.
    pub name: String,
    /// The serial port this pipeline reads.
    pub serial: SerialConfig,
    /// The transform that decodes its frames.
    pub transform: TransformConfig,
    /// Overrides of the global `[limits]`.
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
    /// Frames buffered between the port and the transform; when full, the
    /// port task stops reading (backpressure) and the OS buffers the rest.
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: NonZeroUsize,
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
}

fn default_baud() -> NonZeroU32 {
    NonZeroU32::new(115_200).unwrap_or(NonZeroU32::MIN)
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

impl Config {
    /// Reads, interpolates (from the process environment), parses and
    /// validates a config file. Relative paths are resolved against the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, |name| std::env::var(name).ok())
    }

    /// Like [`load`](Self::load) with an explicit environment (for tests).
    pub fn load_with_env(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(path, &text, env)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            });
        }
        Ok(config)
    }

    /// Interpolates and parses `text` (no validation, no path resolution).
    pub fn parse(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text =
            interpolate::interpolate(text, env).map_err(|source| ConfigError::Interpolate {
                path: path.to_owned(),
                source,
            })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(dir) = &mut self.data_dir {
            resolve(dir);
        }
        for pipeline in &mut self.pipelines {
            resolve(&mut pipeline.transform.module);
        }
    }

    /// Every semantic problem, each naming its key. Empty means valid.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.version != CONFIG_VERSION {
            problems.push(format!(
                "version: this host reads config version {CONFIG_VERSION}, the file says {}",
                self.version
            ));
        }
        if let Some(mqtt) = &self.mqtt {
            if mqtt.host.trim().is_empty() {
                problems.push("mqtt.host: must not be empty".into());
            }
            if mqtt.port == 0 {
                problems.push("mqtt.port: must not be 0".into());
            }
            if let Some(id) = &mqtt.client_id
                && (id.is_empty() || id.len() > 65535)
            {
                problems.push("mqtt.client_id: must be 1 to 65535 bytes".into());
            }
            if mqtt.reconnect_min_ms > mqtt.reconnect_max_ms {
                problems
                    .push("mqtt.reconnect_min_ms: must not exceed mqtt.reconnect_max_ms".into());
            }
        }
        if self.pipelines.is_empty() {
            problems.push("pipeline: at least one [[pipeline]] is required".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
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
            if p.serial.path.as_os_str().is_empty() {
                problems.push(format!("{key}.serial.path: must not be empty"));
            }
            if !p.transform.module.is_file() {
                problems.push(format!(
                    "{key}.transform.module: {} is not a file",
                    p.transform.module.display()
                ));
            }
        }
        problems
    }

    /// Largest MQTT payload the pipelines accept.
    pub fn max_payload_bytes(&self) -> usize {
        self.mqtt
            .as_ref()
            .map_or(default_max_payload(), |m| m.max_payload_bytes)
            .get()
    }

    /// The directory for compiled-module artifacts.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        match &self.data_dir {
            Some(dir) => Some(dir.join("cache")),
            None => crate::runtime::ModuleCache::default_dir(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text, |_| None)
    }

    const MINIMAL: &str = r#"
version = 1
[mqtt]
host = "127.0.0.1"
[[pipeline]]
name = "gw"
serial = { path = "/dev/ttyUSB0" }
transform = { module = "t.wasm", config = { prefix = "iiot", qos = 1, on = true, ratio = 0.5 } }
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).expect("parses");
        assert_eq!(c.mqtt.as_ref().map(|m| m.port), Some(1883));
        assert_eq!(c.pipelines[0].serial.baud.get(), 115_200);
        assert_eq!(c.limits.call_timeout_ms.get(), 100);
        assert_eq!(
            c.pipelines[0].transform.init_pairs(),
            vec![
                ("on".to_string(), "true".to_string()),
                ("prefix".into(), "iiot".into()),
                ("qos".into(), "1".into()),
                ("ratio".into(), "0.5".into()),
            ]
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = MINIMAL.replace("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nhots = 1");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `hots`"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn zero_baud_is_refused() {
        let text = MINIMAL.replace("path = \"/dev/ttyUSB0\"", "path = \"/dev/x\", baud = 0");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("baud") || err.contains("nonzero"), "{err}");
    }

    #[test]
    fn nested_transform_config_is_refused() {
        let text = MINIMAL.replace("qos = 1", "qos = [1]");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("a string, number or boolean"), "{err}");
    }

    #[test]
    fn validate_reports_every_problem() {
        let text = MINIMAL
            .replace("version = 1", "version = 2")
            .replace("name = \"gw\"", "name = \"bad name\"");
        let c = parse(&text).expect("parses");
        let problems = c.validate();
        assert!(
            problems.iter().any(|p| p.starts_with("version:")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("pipeline[0].name:")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("pipeline[0].transform.module:")),
            "{problems:?}"
        );
    }

    #[test]
    fn env_interpolation_feeds_typed_values() {
        let text = "version = 1\n[mqtt]\nhost = \"${H:-localhost}\"\nport = ${P:-1883}\n";
        let c = Config::parse(Path::new("x.toml"), text, |n| {
            (n == "P").then(|| "1999".into())
        })
        .expect("parses");
        let mqtt = c.mqtt.expect("has [mqtt]");
        assert_eq!(mqtt.host, "localhost");
        assert_eq!(mqtt.port, 1999);
    }
}
