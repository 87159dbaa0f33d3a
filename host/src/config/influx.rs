//! `[influx]`: where and how points are written.
//!
//! Plain values only (no reqwest types). Secrets are never in the file: the
//! file names an environment variable (`token_env`, `password_env`) or a file
//! (`token_file`, `password_file`), read once at start-up into a [`Secret`]
//! whose `Debug`/`Display` print `<redacted>`.

use std::num::{NonZeroU16, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secret::read_secret;
pub use crate::secret::{Secret, SecretError as CredentialError};

/// Which InfluxDB write API to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersion {
    /// InfluxDB 1.x: `POST /write?db=&rp=&precision=`, basic auth.
    #[default]
    V1,
    /// InfluxDB 2.x: `POST /api/v2/write?org=&bucket=&precision=`, `Authorization: Token`.
    V2,
    /// InfluxDB 3.x: `POST /api/v3/write_lp?db=&precision=`, `Authorization: Bearer`.
    V3,
}

/// Timestamp precision of the written lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Nanoseconds.
    #[default]
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
}

impl Precision {
    /// Nanoseconds per unit.
    pub fn divisor(self) -> i64 {
        match self {
            Precision::Ns => 1,
            Precision::Us => 1_000,
            Precision::Ms => 1_000_000,
            Precision::S => 1_000_000_000,
        }
    }

    /// The value of the `precision` query parameter for `api`.
    pub fn query_value(self, api: ApiVersion) -> &'static str {
        match (api, self) {
            // v3 (InfluxDB 3 Core/Enterprise) names the units in full.
            (ApiVersion::V3, Precision::Ns) => "nanosecond",
            (ApiVersion::V3, Precision::Us) => "microsecond",
            (ApiVersion::V3, Precision::Ms) => "millisecond",
            (ApiVersion::V3, Precision::S) => "second",
            (_, Precision::Ns) => "ns",
            // v1 spells microseconds `u`; v2 spells them `us`.
            (ApiVersion::V1, Precision::Us) => "u",
            (_, Precision::Us) => "us",
            (_, Precision::Ms) => "ms",
            (_, Precision::S) => "s",
        }
    }
}

/// How `u64` fields are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsignedMode {
    /// Line protocol's `u` suffix (InfluxDB 2.x and 3.x).
    Native,
    /// As a signed integer (`i`); values above `i64::MAX` are refused
    /// (counted, dead-lettered). InfluxDB 1.x (tested: 1.6.7) rejects `u`
    /// with "invalid number", so this is the default for `api = "v1"`.
    Integer,
}

/// `[influx]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL, e.g. `http://127.0.0.1:8086` (a path prefix is kept).
    pub url: String,
    /// Write API: `v1` (default), `v2` or `v3`.
    #[serde(default)]
    pub api: ApiVersion,
    /// Database (v1, v3).
    #[serde(default)]
    pub database: Option<String>,
    /// Retention policy (v1, optional).
    #[serde(default)]
    pub retention_policy: Option<String>,
    /// Organization (v2).
    #[serde(default)]
    pub org: Option<String>,
    /// Bucket (v2).
    #[serde(default)]
    pub bucket: Option<String>,
    /// Timestamp precision: `ns` (default), `us`, `ms`, `s`.
    #[serde(default)]
    pub precision: Precision,
    /// How `u64` fields are written; default `integer` for v1, `native` otherwise.
    #[serde(default)]
    pub unsigned: Option<UnsignedMode>,
    /// v1 basic-auth user name.
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the v1 password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the v1 password (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the API token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding the API token (trailing newline ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Flush a batch at this many lines.
    #[serde(default = "default_batch_lines")]
    pub batch_lines: NonZeroUsize,
    /// Flush a batch before it exceeds this many (uncompressed) bytes.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: NonZeroUsize,
    /// Flush a non-empty batch this long after its first line, in milliseconds.
    #[serde(default = "default_flush_interval")]
    pub flush_interval_ms: NonZeroU64,
    /// gzip request bodies.
    #[serde(default = "default_true")]
    pub gzip: bool,
    /// Batches being written at once; the writer holds no more than this
    /// (plus the one it is filling).
    #[serde(default = "default_in_flight")]
    pub max_batches_in_flight: NonZeroUsize,
    /// Points queued between the pipelines and the writer; when full, the
    /// pipelines wait (backpressure).
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: NonZeroUsize,
    /// Keep every point in the durable log (`<data_dir>/outbox/log.redb`,
    /// queue `influx`) until InfluxDB confirmed or refused it; needs
    /// `data_dir`. Default true.
    #[serde(default = "default_durable")]
    pub durable: bool,
    /// The outbox's bounds, full policy and fsync policy (`[influx.outbox]`).
    #[serde(default)]
    pub outbox: crate::outbox::OutboxConfig,
    /// With the outbox: after an outage (or a restart with points left over)
    /// new points are written first and the backlog at most this many points
    /// per second; 0 = as fast as InfluxDB takes it (still after new points).
    /// A key of `[influx]`, not `[influx.outbox]`, because that table is the
    /// outbox settings shared with MQTT, which always drains oldest first.
    #[serde(default = "default_backfill")]
    pub backfill_points_per_sec: u32,
    /// Timeout of one write request, in milliseconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: NonZeroU64,
    /// Retry backoff (5xx, 429, connection errors): first delay, in milliseconds.
    #[serde(default = "default_retry_min")]
    pub retry_min_ms: NonZeroU64,
    /// Retry backoff: largest delay, in milliseconds.
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: NonZeroU64,
    /// Retry interval after 401/403/404 (bad credentials, missing database),
    /// in milliseconds.
    #[serde(default = "default_auth_retry")]
    pub auth_retry_ms: NonZeroU64,
    /// Size at which the dead-letter file is rotated, in bytes.
    #[serde(default = "default_dead_letter_bytes")]
    pub dead_letter_max_bytes: NonZeroU64,
    /// Dead-letter files kept, the current one included.
    #[serde(default = "default_dead_letter_files")]
    pub dead_letter_max_files: NonZeroU16,
}

fn default_true() -> bool {
    true
}
fn default_batch_lines() -> NonZeroUsize {
    NonZeroUsize::new(5000).unwrap_or(NonZeroUsize::MIN)
}
fn default_batch_bytes() -> NonZeroUsize {
    NonZeroUsize::new(1 << 20).unwrap_or(NonZeroUsize::MIN)
}
fn default_flush_interval() -> NonZeroU64 {
    NonZeroU64::new(1000).unwrap_or(NonZeroU64::MIN)
}
fn default_in_flight() -> NonZeroUsize {
    NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN)
}
fn default_durable() -> bool {
    true
}
fn default_backfill() -> u32 {
    5000
}

fn default_channel_capacity() -> NonZeroUsize {
    NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN)
}
fn default_request_timeout() -> NonZeroU64 {
    NonZeroU64::new(10_000).unwrap_or(NonZeroU64::MIN)
}
fn default_retry_min() -> NonZeroU64 {
    NonZeroU64::new(100).unwrap_or(NonZeroU64::MIN)
}
fn default_retry_max() -> NonZeroU64 {
    NonZeroU64::new(30_000).unwrap_or(NonZeroU64::MIN)
}
fn default_auth_retry() -> NonZeroU64 {
    NonZeroU64::new(30_000).unwrap_or(NonZeroU64::MIN)
}
fn default_dead_letter_bytes() -> NonZeroU64 {
    NonZeroU64::new(16 << 20).unwrap_or(NonZeroU64::MIN)
}
fn default_dead_letter_files() -> NonZeroU16 {
    NonZeroU16::new(5).unwrap_or(NonZeroU16::MIN)
}

/// How requests authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No `Authorization` header.
    None,
    /// HTTP basic auth (v1).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
    /// `Authorization: Token …` (v2, and v1 against InfluxDB 2's v1-compatible API).
    Token(Secret),
    /// `Authorization: Bearer …` (v3).
    Bearer(Secret),
}

impl InfluxConfig {
    /// The effective unsigned mode.
    pub fn unsigned_mode(&self) -> UnsignedMode {
        self.unsigned.unwrap_or(match self.api {
            ApiVersion::V1 => UnsignedMode::Integer,
            ApiVersion::V2 | ApiVersion::V3 => UnsignedMode::Native,
        })
    }

    /// Resolves relative secret-file paths against the config's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        for path in [&mut self.token_file, &mut self.password_file]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// Every semantic problem, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match reqwest::Url::parse(&self.url) {
            Ok(url) => {
                if !matches!(url.scheme(), "http" | "https") {
                    problems.push(format!(
                        "influx.url: scheme must be http or https, not {:?}",
                        url.scheme()
                    ));
                }
                if url.host_str().is_none_or(str::is_empty) {
                    problems.push("influx.url: has no host".into());
                }
                if !url.username().is_empty() || url.password().is_some() {
                    problems.push(
                        "influx.url: must not contain credentials (use username/password_env or token_env)"
                            .into(),
                    );
                }
                if url.query().is_some() || url.fragment().is_some() {
                    problems.push("influx.url: must not have a query or fragment".into());
                }
            }
            Err(err) => problems.push(format!("influx.url: {:?} is not a URL: {err}", self.url)),
        }
        let non_empty = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
        let mut require = |key: &str, value: &Option<String>, api: &str| {
            if !non_empty(value) {
                problems.push(format!("influx.{key}: required for api = \"{api}\""));
            }
        };
        match self.api {
            ApiVersion::V1 => require("database", &self.database, "v1"),
            ApiVersion::V2 => {
                require("org", &self.org, "v2");
                require("bucket", &self.bucket, "v2");
            }
            ApiVersion::V3 => require("database", &self.database, "v3"),
        }
        let api = match self.api {
            ApiVersion::V1 => "v1",
            ApiVersion::V2 => "v2",
            ApiVersion::V3 => "v3",
        };
        let mut not_for = |key: &str, present: bool, allowed: &[ApiVersion]| {
            if present && !allowed.contains(&self.api) {
                problems.push(format!("influx.{key}: not used with api = \"{api}\""));
            }
        };
        use ApiVersion::{V1, V2, V3};
        not_for("database", self.database.is_some(), &[V1, V3]);
        not_for("retention_policy", self.retention_policy.is_some(), &[V1]);
        not_for("org", self.org.is_some(), &[V2]);
        not_for("bucket", self.bucket.is_some(), &[V2]);
        not_for("username", self.username.is_some(), &[V1]);
        not_for("password_env", self.password_env.is_some(), &[V1]);
        not_for("password_file", self.password_file.is_some(), &[V1]);
        if self.token_env.is_some() && self.token_file.is_some() {
            problems.push("influx.token_env: set token_env or token_file, not both".into());
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            problems
                .push("influx.password_env: set password_env or password_file, not both".into());
        }
        let has_password = self.password_env.is_some() || self.password_file.is_some();
        let has_token = self.token_env.is_some() || self.token_file.is_some();
        if self.username.is_some() && !has_password {
            problems.push("influx.username: needs password_env or password_file".into());
        }
        if has_password && self.username.is_none() && self.api == ApiVersion::V1 {
            problems.push("influx.password_env: needs username".into());
        }
        if self.username.is_some() && has_token {
            problems.push("influx.token_env: use either username/password or a token".into());
        }
        if self.api == ApiVersion::V2 && !has_token {
            problems.push("influx.token_env: api = \"v2\" needs token_env or token_file".into());
        }
        if matches!(self.username.as_deref(), Some("")) {
            problems.push("influx.username: must not be empty".into());
        }
        if self.retry_min_ms > self.retry_max_ms {
            problems.push("influx.retry_min_ms: must not exceed influx.retry_max_ms".into());
        }
        problems
    }

    /// Reads the configured secrets (once, at start-up).
    pub fn credentials(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Credentials, CredentialError> {
        let token = read_secret(
            "influx.token_env",
            &self.token_env,
            "influx.token_file",
            &self.token_file,
            &env,
        )?;
        let password = read_secret(
            "influx.password_env",
            &self.password_env,
            "influx.password_file",
            &self.password_file,
            &env,
        )?;
        Ok(match (self.api, token, &self.username, password) {
            (ApiVersion::V3, Some(token), _, _) => Credentials::Bearer(token),
            (_, Some(token), _, _) => Credentials::Token(token),
            (_, None, Some(username), Some(password)) => Credentials::Basic {
                username: username.clone(),
                password,
            },
            _ => Credentials::None,
        })
    }

    /// The dead-letter file: `<data_dir>/dead-letter/influx.jsonl`.
    pub fn dead_letter_path(data_dir: &Path) -> PathBuf {
        data_dir.join("dead-letter").join("influx.jsonl")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> InfluxConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn defaults() {
        let c = parse("url = \"http://127.0.0.1:8086\"\ndatabase = \"x\"\n");
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.api, ApiVersion::V1);
        assert_eq!(c.batch_lines.get(), 5000);
        assert_eq!(c.flush_interval_ms.get(), 1000);
        assert!(c.gzip);
        assert_eq!(c.unsigned_mode(), UnsignedMode::Integer);
        assert_eq!(
            c.credentials(|_| None).expect("no secrets"),
            Credentials::None
        );
    }

    #[test]
    fn problems_name_their_keys() {
        let cases: &[(&str, &str)] = &[
            ("url = \"ftp://x\"\ndatabase = \"d\"", "influx.url:"),
            ("url = \"not a url\"\ndatabase = \"d\"", "influx.url:"),
            ("url = \"http://u:p@x\"\ndatabase = \"d\"", "influx.url:"),
            ("url = \"http://x\"", "influx.database:"),
            (
                "url = \"http://x\"\napi = \"v2\"\nbucket = \"b\"\ntoken_env = \"T\"",
                "influx.org:",
            ),
            (
                "url = \"http://x\"\napi = \"v2\"\norg = \"o\"\nbucket = \"b\"",
                "influx.token_env:",
            ),
            (
                "url = \"http://x\"\napi = \"v3\"\norg = \"o\"\ndatabase = \"d\"",
                "influx.org:",
            ),
            (
                "url = \"http://x\"\ndatabase = \"d\"\nusername = \"u\"",
                "influx.username:",
            ),
            (
                "url = \"http://x\"\ndatabase = \"d\"\ntoken_env = \"A\"\ntoken_file = \"f\"",
                "influx.token_env:",
            ),
            (
                "url = \"http://x\"\ndatabase = \"d\"\nretry_min_ms = 10\nretry_max_ms = 5",
                "influx.retry_min_ms:",
            ),
        ];
        for (text, key) in cases {
            let problems = parse(text).validate();
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "{text:?}: {problems:?}"
            );
        }
    }

    #[test]
    fn unknown_and_zero_values_are_refused() {
        let err = toml::from_str::<InfluxConfig>("url = \"http://x\"\ndatabse = \"d\"")
            .expect_err("typo");
        assert!(err.to_string().contains("databse"), "{err}");
        let err = toml::from_str::<InfluxConfig>("url = \"http://x\"\nbatch_lines = 0")
            .expect_err("zero");
        assert!(err.to_string().contains("batch_lines"), "{err}");
    }

    #[test]
    fn the_host_config_validates_and_resolves_influx() {
        let text = "version = 1\n[influx]\nurl = \"http://x:8086\"\napi = \"v2\"\n\
                    org = \"o\"\ntoken_file = \"secrets/token\"\n";
        let mut config =
            crate::config::Config::parse(Path::new("/etc/sluice/c.toml"), text, |_| None)
                .expect("parses");
        let problems = config.validate();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("influx.bucket: required")),
            "{problems:?}"
        );
        let influx = config.influx.as_mut().expect("[influx]");
        influx.resolve_paths(Path::new("/etc/sluice"));
        assert_eq!(
            influx.token_file.as_deref(),
            Some(Path::new("/etc/sluice/secrets/token"))
        );
        let err = crate::config::Config::parse(
            Path::new("c.toml"),
            "version = 1\n[influx]\nurl = \"http://x\"\ndatabase = \"d\"\ntoken = \"inline\"\n",
            |_| None,
        )
        .expect_err("inline secrets are not a key");
        assert!(err.to_string().contains("unknown field `token`"), "{err}");
    }

    #[test]
    fn secrets_come_from_env_or_file_and_never_print() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cr3t-token\n").expect("write");
        let mut c = parse(
            "url = \"http://x\"\napi = \"v2\"\norg = \"o\"\nbucket = \"b\"\ntoken_file = \"token\"",
        );
        c.resolve_paths(dir.path());
        let creds = c.credentials(|_| None).expect("reads the file");
        assert_eq!(creds, Credentials::Token(Secret::new("s3cr3t-token")));
        let shown = format!("{creds:?} {c:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");

        let c =
            parse("url = \"http://x\"\ndatabase = \"d\"\nusername = \"u\"\npassword_env = \"PW\"");
        let creds = c
            .credentials(|n| (n == "PW").then(|| "hunter2".to_string()))
            .expect("reads env");
        let Credentials::Basic { username, password } = &creds else {
            panic!("basic auth expected, got {creds:?}")
        };
        assert_eq!((username.as_str(), password.expose()), ("u", "hunter2"));
        assert!(!format!("{creds:?} {password}").contains("hunter2"));

        let err = c.credentials(|_| None).expect_err("unset variable");
        assert_eq!(
            err.to_string(),
            "influx.password_env: environment variable PW is not set or empty"
        );
        let c = parse("url = \"http://x\"\napi = \"v3\"\ndatabase = \"d\"\ntoken_env = \"T\"");
        let creds = c.credentials(|_| Some("tok".into())).expect("env");
        assert_eq!(creds, Credentials::Bearer(Secret::new("tok")));
    }
}
