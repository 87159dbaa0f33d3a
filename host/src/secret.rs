//! Secrets (passwords, tokens): read once at start-up from an environment
//! variable or a file named in the config, never from the config text itself,
//! and never printed — [`Secret`]'s `Debug` and `Display` are redacted.
//! Shared by every sink that authenticates (MQTT, InfluxDB).

use std::fmt;
use std::path::PathBuf;

/// A credential read at start-up. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that needs it (a header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secret could not be read at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// `*_env` names a variable that is unset or empty.
    #[error("{key}: environment variable {var} is not set or empty")]
    EnvMissing {
        /// The config key.
        key: &'static str,
        /// The variable name.
        var: String,
    },
    /// `*_file` could not be read or is empty.
    #[error("{key}: cannot read {path}: {reason}")]
    File {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why (never the content).
        reason: String,
    },
}

/// Reads a secret from the environment variable `env_var` (config key
/// `env_key`) or the file `file` (config key `file_key`); `None` when neither
/// is configured. A trailing newline in the file is ignored.
pub fn read_secret(
    env_key: &'static str,
    env_var: &Option<String>,
    file_key: &'static str,
    file: &Option<PathBuf>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, SecretError> {
    if let Some(var) = env_var {
        return match env(var).filter(|v| !v.is_empty()) {
            Some(value) => Ok(Some(Secret(value))),
            None => Err(SecretError::EnvMissing {
                key: env_key,
                var: var.clone(),
            }),
        };
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|err| SecretError::File {
            key: file_key,
            path: path.clone(),
            reason: err.kind().to_string(),
        })?;
        let value = text.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            return Err(SecretError::File {
                key: file_key,
                path: path.clone(),
                reason: "the file is empty".into(),
            });
        }
        return Ok(Some(Secret(value.to_owned())));
    }
    Ok(None)
}
