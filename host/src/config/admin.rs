//! `[admin]`: where the admin HTTP API listens and where its bearer token
//! comes from. The token is a secret like the sinks' passwords: only from an
//! environment variable or a file, read once at start-up ([`crate::secret`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secret::{Secret, SecretError};

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin API (default true).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Listen address; default `127.0.0.1:9180` (loopback only). Port 0
    /// picks a free port, which is logged.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Environment variable holding the bearer token for mutating endpoints.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding that token (trailing newline ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// `GET /ready` answers 503 while a durable outbox holds more than this
    /// fraction of its `max_bytes` (default 0.8; 0 < x ≤ 1).
    #[serde(default = "default_ready_outbox_fraction")]
    pub ready_outbox_fraction: f64,
}

/// `admin.ready_outbox_fraction` by default.
pub const DEFAULT_READY_OUTBOX_FRACTION: f64 = 0.8;

fn default_ready_outbox_fraction() -> f64 {
    DEFAULT_READY_OUTBOX_FRACTION
}

fn default_enabled() -> bool {
    true
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9180))
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: default_enabled(),
            listen: default_listen(),
            token_env: None,
            token_file: None,
            ready_outbox_fraction: DEFAULT_READY_OUTBOX_FRACTION,
        }
    }
}

impl AdminConfig {
    /// Problems with this section, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.token_env.is_some() && self.token_file.is_some() {
            problems.push("admin.token_env: set token_env or token_file, not both".into());
        }
        if self.token_env.as_deref().is_some_and(str::is_empty) {
            problems.push("admin.token_env: must name an environment variable".into());
        }
        // Written so that NaN fails too.
        if !(self.ready_outbox_fraction > 0.0 && self.ready_outbox_fraction <= 1.0) {
            problems.push(format!(
                "admin.ready_outbox_fraction: {} is not in (0, 1]",
                self.ready_outbox_fraction
            ));
        }
        problems
    }

    /// Makes a relative `token_file` relative to the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(path) = &mut self.token_file
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
    }

    /// Reads the token (`None`: none configured, mutating endpoints refuse).
    pub fn token(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Secret>, SecretError> {
        crate::secret::read_secret(
            "admin.token_env",
            &self.token_env,
            "admin.token_file",
            &self.token_file,
            &env,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_loopback_enabled_no_token() {
        let config: AdminConfig = toml::from_str("").expect("empty section");
        assert!(config.enabled);
        assert_eq!(config.listen.to_string(), "127.0.0.1:9180");
        assert!(
            config
                .token(|_| None)
                .expect("no token configured")
                .is_none()
        );
        assert!(config.validate().is_empty());
    }

    #[test]
    fn unknown_keys_and_double_sources_are_refused() {
        let err = toml::from_str::<AdminConfig>("token = \"x\"").expect_err("inline token");
        assert!(err.to_string().contains("unknown field"), "{err}");
        let config: AdminConfig =
            toml::from_str("token_env = \"A\"\ntoken_file = \"/t\"").expect("parses");
        assert_eq!(config.validate().len(), 1);
    }

    #[test]
    fn ready_outbox_fraction_is_a_fraction() {
        let config: AdminConfig = toml::from_str("").expect("empty section");
        assert_eq!(config.ready_outbox_fraction, 0.8);
        for ok in ["1.0", "0.5", "0.001"] {
            let config: AdminConfig =
                toml::from_str(&format!("ready_outbox_fraction = {ok}")).expect("parses");
            assert!(config.validate().is_empty(), "{ok}");
        }
        for bad in ["0.0", "-0.5", "1.01", "nan", "inf"] {
            let config: AdminConfig =
                toml::from_str(&format!("ready_outbox_fraction = {bad}")).expect("parses");
            let problems = config.validate();
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert!(
                problems[0].starts_with("admin.ready_outbox_fraction: ")
                    && problems[0].ends_with(" is not in (0, 1]"),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn token_from_env_is_redacted() {
        let config: AdminConfig = toml::from_str("token_env = \"ADMIN_TOKEN\"").expect("parses");
        let token = config
            .token(|var| (var == "ADMIN_TOKEN").then(|| "s3cret".to_owned()))
            .expect("set")
            .expect("configured");
        assert_eq!(token.expose(), "s3cret");
        assert!(!format!("{token:?} {token}").contains("s3cret"));
        assert!(
            config.token(|_| None).is_err(),
            "unset variable is an error"
        );
    }
}
