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

pub mod admin;
pub mod broker;
pub mod hotswap;
pub mod influx;
pub mod interpolate;
mod limits;
pub mod modbus;
mod pipeline;
pub mod sparkplug;

use std::num::{NonZeroU16, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use interpolate::InterpolationError;
pub use limits::{LimitsConfig, LimitsOverride};
pub use pipeline::{
    BAUD_RANGE, CaptureConfig, DownlinkConfig, PipelineConfig, ScalarValue, SerialConfig,
    SerialFlowControl, SerialParity, TransformConfig,
};

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
    /// Where the host keeps state: the compiled-module cache, the durable
    /// outboxes (`outbox/`), dead letters.
    /// Relative paths are relative to the config file.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The MQTT connection; without it, messages are counted and discarded.
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
    /// The InfluxDB writer; without it, points are counted and discarded.
    #[serde(default)]
    pub influx: Option<influx::InfluxConfig>,
    /// The admin HTTP API (`[admin]`; on by default, loopback).
    #[serde(default)]
    pub admin: admin::AdminConfig,
    /// The embedded MQTT broker (`[broker]`; off by default).
    #[serde(default)]
    pub broker: broker::BrokerConfig,
    /// Transform hot swap (`[hotswap]`: watched directory, canary,
    /// quarantine, history).
    #[serde(default)]
    pub hotswap: hotswap::HotswapConfig,
    /// Sandbox limits applied to every transform unless a pipeline overrides them.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How long an orderly shutdown (SIGTERM, SIGINT) may take before the
    /// process exits anyway, in seconds ([`crate::shutdown`]).
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: NonZeroU64,
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
    /// Protocol version: `"3.1.1"` or `"5"`. MQTT 5 makes the broker say
    /// why it refused a publish (e.g. an ACL denial), which the host counts
    /// and logs instead of taking it for a delivery.
    #[serde(default)]
    pub protocol: MqttProtocol,
    /// MQTT 5: how long the broker keeps our session (subscriptions and
    /// in-flight messages) after a disconnect, in seconds. MQTT 3.1.1
    /// sessions (`clean_session = false`) last as long as the broker allows.
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
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
    /// Username; the password comes from `password_env` or `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the password (never logged).
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (trailing newline ignored; never logged).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS (`mqtts://`); absent means plain TCP.
    #[serde(default)]
    pub tls: Option<MqttTlsConfig>,
    /// Status topics are `<prefix>/status/<client_id>` (birth `online`,
    /// last will `offline`, both retained).
    #[serde(default = "default_status_prefix")]
    pub status_topic_prefix: String,
    /// Seconds between gateway stats messages on
    /// `<prefix>/status/<client_id>/stats` (0 = off).
    #[serde(default = "default_stats_interval")]
    pub stats_interval_secs: u64,
    /// Messages the host holds in memory while the broker is slow or away
    /// (only without the durable outbox, i.e. without `data_dir` or with
    /// `durable = false`).
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: NonZeroUsize,
    /// What to do when that in-memory queue is full.
    #[serde(default)]
    pub queue_full: crate::outbox::QueueFullPolicy,
    /// Keep every message in the durable log (`<data_dir>/outbox/log.redb`,
    /// queue `mqtt`) until the broker confirms it; needs `data_dir`.
    /// Default true.
    #[serde(default = "default_true")]
    pub durable: bool,
    /// The outbox's bounds, full policy and fsync policy (`[mqtt.outbox]`).
    #[serde(default)]
    pub outbox: crate::outbox::OutboxConfig,
    /// `[mqtt.sparkplug]`: also a Sparkplug B edge node (the points).
    #[serde(default)]
    pub sparkplug: Option<sparkplug::SparkplugConfig>,
}

/// The MQTT protocol version the sink speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum MqttProtocol {
    /// MQTT 3.1.1: no reason codes; a broker drops a denied publish silently.
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5: reason codes on every acknowledgement.
    #[serde(rename = "5")]
    V5,
}

/// `[mqtt.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// PEM file with the CA certificate(s) that sign the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate, for mutual TLS.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM client private key, for mutual TLS.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

fn default_status_prefix() -> String {
    "sluice".into()
}
fn default_stats_interval() -> u64 {
    60
}
fn default_queue_capacity() -> NonZeroUsize {
    NonZeroUsize::new(100_000).unwrap_or(NonZeroUsize::MIN)
}

fn default_mqtt_port() -> u16 {
    1883
}
fn default_session_expiry() -> u32 {
    // A week: long enough for any outage the outbox is sized for.
    7 * 24 * 3600
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
fn default_true() -> bool {
    true
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

fn default_shutdown_timeout() -> NonZeroU64 {
    NonZeroU64::new(10).unwrap_or(NonZeroU64::MIN)
}

/// Where state goes without `data_dir`: `$XDG_STATE_HOME/sluice` or
/// `~/.local/state/sluice` (InfluxDB dead letters, `sluice outbox` lookups).
pub fn default_state_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("sluice"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|home| {
            PathBuf::from(home)
                .join(".local")
                .join("state")
                .join("sluice")
        })
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
        if let Some(mqtt) = &mut self.mqtt {
            if let Some(path) = &mut mqtt.password_file {
                resolve(path);
            }
            if let Some(tls) = &mut mqtt.tls {
                resolve(&mut tls.ca_file);
                for path in [&mut tls.client_cert_file, &mut tls.client_key_file]
                    .into_iter()
                    .flatten()
                {
                    resolve(path);
                }
            }
        }
        if let Some(influx) = &mut self.influx {
            influx.resolve_paths(base);
        }
        self.admin.resolve_paths(base);
        self.hotswap.resolve_paths(base);
        for pipeline in &mut self.pipelines {
            resolve(&mut pipeline.transform.module);
            if let Some(capture) = &mut pipeline.capture {
                resolve(&mut capture.path);
            }
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
            if mqtt.password_env.is_some() && mqtt.password_file.is_some() {
                problems
                    .push("mqtt.password_env: give password_env or password_file, not both".into());
            }
            if mqtt.username.is_none()
                && (mqtt.password_env.is_some() || mqtt.password_file.is_some())
            {
                problems.push("mqtt.username: a password is configured but no username".into());
            }
            if crate::model::validate_topic(&format!("{}/status/x", mqtt.status_topic_prefix))
                .is_err()
            {
                problems.push(format!(
                    "mqtt.status_topic_prefix: {:?} is not a valid topic prefix",
                    mqtt.status_topic_prefix
                ));
            }
            if let Some(sparkplug) = &mqtt.sparkplug {
                problems.extend(sparkplug.validate());
            }
            if let Some(tls) = &mqtt.tls {
                if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
                    problems.push("mqtt.tls.client_cert_file: mutual TLS needs both client_cert_file and client_key_file".into());
                }
                for (key, path) in [
                    ("ca_file", Some(&tls.ca_file)),
                    ("client_cert_file", tls.client_cert_file.as_ref()),
                    ("client_key_file", tls.client_key_file.as_ref()),
                ] {
                    if let Some(path) = path
                        && !path.is_file()
                    {
                        problems.push(format!("mqtt.tls.{key}: {} is not a file", path.display()));
                    }
                }
            }
            if mqtt.reconnect_min_ms > mqtt.reconnect_max_ms {
                problems
                    .push("mqtt.reconnect_min_ms: must not exceed mqtt.reconnect_max_ms".into());
            }
        }
        if let Some(influx) = &self.influx {
            problems.extend(influx.validate());
        }
        let outboxes = [
            ("mqtt", self.mqtt.as_ref().map(|m| &m.outbox)),
            ("influx", self.influx.as_ref().map(|i| &i.outbox)),
        ];
        for (sink, outbox) in outboxes {
            if let Some(outbox) = outbox
                && !(0.0..=crate::outbox::MAX_COMMIT_LINGER_MS).contains(&outbox.commit_linger_ms)
            {
                problems.push(format!(
                    "{sink}.outbox.commit_linger_ms: 0 to {} (ms), not {}",
                    crate::outbox::MAX_COMMIT_LINGER_MS,
                    outbox.commit_linger_ms
                ));
            }
        }
        problems.extend(self.admin.validate());
        problems.extend(self.hotswap.validate());
        problems.extend(pipeline::validate(
            &self.pipelines,
            self.mqtt.is_some() || self.broker.embedded,
        ));
        problems
    }

    /// Largest MQTT payload the pipelines accept.
    pub fn max_payload_bytes(&self) -> usize {
        self.mqtt
            .as_ref()
            .map_or(default_max_payload(), |m| m.max_payload_bytes)
            .get()
    }

    /// The sinks whose data goes through the durable log, with their
    /// outbox settings; empty without `data_dir` (no log then).
    pub fn durable_sinks(&self) -> Vec<(crate::model::Sink, crate::outbox::OutboxConfig)> {
        let mut sinks = Vec::new();
        if self.data_dir.is_none() {
            return sinks;
        }
        if let Some(mqtt) = self.mqtt.as_ref().filter(|m| m.durable) {
            sinks.push((crate::model::Sink::Mqtt, mqtt.outbox.clone()));
        }
        if let Some(influx) = self.influx.as_ref().filter(|i| i.durable) {
            sinks.push((crate::model::Sink::Influx, influx.outbox.clone()));
        }
        if let Some(mqtt) = self.mqtt.as_ref().filter(|m| m.durable)
            && let Some(sparkplug) = &mqtt.sparkplug
        {
            sinks.push((crate::model::Sink::Sparkplug, sparkplug.outbox.clone()));
        }
        sinks
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

    fn first_serial(c: &Config) -> &SerialConfig {
        c.pipelines[0].serial.as_ref().expect("a serial port")
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
        assert_eq!(first_serial(&c).baud.get(), 115_200);
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
    fn pipeline_limits_override_the_global_limits_key_by_key() {
        let text = MINIMAL.replace(
            "[[pipeline]]",
            "[limits]\ncall_timeout_ms = 40\nmemory_mb = 8\n[[pipeline]]",
        );
        // (pipeline.limits table, expected call_timeout_ms, memory_mb)
        for (table, timeout, memory) in [
            ("", 40, 8),
            // Only memory_mb overridden: the timeout stays the global 40 ms
            // (it used to fall back to the 100 ms default).
            ("[pipeline.limits]\nmemory_mb = 64\n", 40, 64),
            ("[pipeline.limits]\ncall_timeout_ms = 250\n", 250, 8),
            (
                "[pipeline.limits]\nmemory_mb = 64\ncall_timeout_ms = 250\n",
                250,
                64,
            ),
        ] {
            let c = parse(&format!("{text}{table}")).expect("parses");
            let limits = c.pipelines[0].effective_limits(c.limits);
            assert_eq!(
                (limits.call_timeout_ms.get(), limits.memory_mb.get()),
                (timeout, memory),
                "{table}"
            );
        }
        let typo = format!("{text}[pipeline.limits]\nmemory = 64\n");
        let err = parse(&typo).unwrap_err().to_string();
        assert!(err.contains("unknown field `memory`"), "{err}");
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
    fn commit_linger_is_bounded() {
        let with = |linger: &str| {
            let text = MINIMAL.replace(
                "host = \"127.0.0.1\"\n",
                &format!("host = \"127.0.0.1\"\noutbox = {{ commit_linger_ms = {linger} }}\n"),
            );
            parse(&text).expect("parses").validate()
        };
        for fine in ["0", "2", "0.5", "100.0"] {
            let problems = with(fine);
            assert!(
                !problems.iter().any(|p| p.contains("commit_linger_ms")),
                "{fine}: {problems:?}"
            );
        }
        for bad in ["500", "-1", "nan", "inf"] {
            let problems = with(bad);
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with("mqtt.outbox.commit_linger_ms: 0 to 100")),
                "{bad}: {problems:?}"
            );
        }
    }

    #[test]
    fn downlink_settings_are_checked() {
        let with = |downlink: &str| {
            let text = format!("{MINIMAL}downlink = {{ {downlink} }}\n");
            parse(&text).expect("parses")
        };
        let c = with(r#"topic = "iiot/cmd/#""#);
        let d = c.pipelines[0].downlink.as_ref().expect("has downlink");
        assert_eq!((d.qos, d.queue.get(), d.accept_retained), (1, 256, false));
        let problems = c.validate();
        assert!(
            !problems.iter().any(|p| p.contains("downlink")),
            "{problems:?}"
        );
        let problems = with(r#"topic = "iiot/#/x", qos = 3"#).validate();
        for key in ["pipeline[0].downlink.topic:", "pipeline[0].downlink.qos:"] {
            assert!(problems.iter().any(|p| p.starts_with(key)), "{problems:?}");
        }
        let no_mqtt = format!("{MINIMAL}downlink = {{ topic = \"a/b\" }}\n")
            .replace("[mqtt]\nhost = \"127.0.0.1\"\n", "");
        let problems = parse(&no_mqtt).expect("parses").validate();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("pipeline[0].downlink: commands arrive over MQTT")),
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

    #[test]
    fn serial_settings_have_defaults_and_parse() {
        let c = parse(MINIMAL).expect("parses");
        let s = first_serial(&c);
        assert_eq!(
            (s.data_bits, s.parity, s.stop_bits, s.flow_control),
            (8, SerialParity::None, 1, SerialFlowControl::None)
        );
        assert!(s.exclusive && !s.required);
        assert!(c.pipelines[0].capture.is_none());
        let text = MINIMAL.replace(
            "path = \"/dev/ttyUSB0\"",
            "path = \"/dev/x\", data_bits = 7, parity = \"even\", stop_bits = 2, \
             flow_control = \"hardware\", exclusive = false, required = true",
        );
        let c = parse(&text).expect("parses");
        let s = first_serial(&c);
        assert_eq!(
            (s.data_bits, s.parity, s.stop_bits, s.flow_control),
            (7, SerialParity::Even, 2, SerialFlowControl::Hardware)
        );
        assert!(!s.exclusive && s.required);
    }

    #[test]
    fn bad_serial_settings_are_named() {
        let text = MINIMAL.replace(
            "path = \"/dev/ttyUSB0\"",
            "path = \"/dev/x\", parity = \"mark\"",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("unknown variant `mark`") && err.contains("none"),
            "{err}"
        );
        let text = MINIMAL.replace(
            "path = \"/dev/ttyUSB0\"",
            "path = \"/dev/x\", data_bits = 9, stop_bits = 3, baud = 20000000, \
             reconnect_min_ms = 10, reconnect_max_ms = 5",
        );
        let problems = parse(&text).expect("parses").validate();
        for key in [
            "pipeline[0].serial.data_bits: must be 5, 6, 7 or 8, not 9",
            "pipeline[0].serial.stop_bits: must be 1 or 2, not 3",
            "pipeline[0].serial.baud: 20000000 is outside",
            "pipeline[0].serial.reconnect_min_ms:",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "{key}: {problems:?}"
            );
        }
    }

    #[test]
    fn shared_ports_and_capture_files_are_refused() {
        let pipeline = |name: &str, port: &str| {
            format!(
                "[[pipeline]]\nname = \"{name}\"\nserial = {{ path = \"{port}\" }}\n\
                 transform = {{ module = \"t.wasm\" }}\ncapture = {{ path = \"same.cap\", max_bytes = 100 }}\n"
            )
        };
        let text = format!(
            "version = 1\n{}{}{}",
            pipeline("a", "/dev/x"),
            pipeline("b", "/dev/y"),
            pipeline("c", "/dev/x")
        );
        let problems = parse(&text).expect("parses").validate();
        assert!(
            problems
                .iter()
                .any(|p| p == "pipeline[2].serial.path: /dev/x is already read by pipeline[0]"),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(
                |p| p == "pipeline[1].capture.path: same.cap is already written by pipeline[0]"
            ),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("pipeline[0].capture.max_bytes: must be at least")),
            "{problems:?}"
        );
    }

    #[test]
    fn framing_defaults_to_newline_and_its_problems_name_the_pipeline() {
        use sluice_framing::{CrcKind, FramingConfig};
        let c = parse(MINIMAL).expect("parses");
        assert_eq!(first_serial(&c).framing, FramingConfig::default());
        let text = MINIMAL.replace(
            "path = \"/dev/ttyUSB0\"",
            "path = \"/dev/x\", max_frame_bytes = 8, \
             framing = { kind = \"fixed\", size = 20, crc = \"crc16_modbus\" }",
        );
        let c = parse(&text).expect("parses");
        assert_eq!(first_serial(&c).framing.crc(), Some(CrcKind::Crc16Modbus));
        let problems = c.validate();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("pipeline[0].serial.framing.size: 20 is more than")),
            "{problems:?}"
        );
        let text = MINIMAL.replace(
            "path = \"/dev/ttyUSB0\"",
            "path = \"/dev/x\", framing = { kind = \"cobs\", delimiter = \"x\" }",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `delimiter`"), "{err}");
    }
}
