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
