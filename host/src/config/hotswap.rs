//! `[hotswap]`: how transforms are deployed on a running host (watched
//! directory, limits of the admin API upload), how a new version is put on
//! probation (canary), when a trapping one is quarantined, and how much
//! history is kept. Every key is optional; the defaults are what
//! docs/transforms.md documents.

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `[hotswap]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotswapConfig {
    /// A directory watched for `PIPELINE.wasm` files: a file renamed into
    /// it deploys to the pipeline of that name. Absent: no watching.
    #[serde(default)]
    pub watch_dir: Option<PathBuf>,
    /// Quiet time after the last change to a file before it is deployed.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// Largest module `PUT /transforms/{name}` accepts, in bytes.
    #[serde(default = "default_max_module_bytes")]
    pub max_module_bytes: NonZeroUsize,
    /// Versions listed per pipeline (older ones are forgotten).
    #[serde(default = "default_history")]
    pub history: NonZeroUsize,
    /// Compiled modules kept in memory for rollback: the active version and
    /// the ones a rollback would return to, this many in all.
    #[serde(default = "default_keep_modules")]
    pub keep_modules: NonZeroUsize,
    /// Frames a new version is watched for after a swap (0: no canary).
    #[serde(default = "default_canary_frames")]
    pub canary_frames: u64,
    /// The canary ends after this long even with fewer frames.
    #[serde(default = "default_canary_secs")]
    pub canary_secs: NonZeroU64,
    /// Failure rate (errors, traps, refused output) above which a new
    /// version is rolled back (see `pipeline::guard` for the exact rule).
    #[serde(default = "default_canary_max_failure_rate")]
    pub canary_max_failure_rate: f64,
    /// Consecutive traps that quarantine a transform (0: never).
    #[serde(default = "default_quarantine_after_traps")]
    pub quarantine_after_traps: u32,
    /// First quarantine backoff.
    #[serde(default = "default_quarantine_backoff_ms")]
    pub quarantine_backoff_ms: NonZeroU64,
    /// Longest quarantine backoff.
    #[serde(default = "default_quarantine_backoff_max_ms")]
    pub quarantine_backoff_max_ms: NonZeroU64,
    /// Write frames a trap, the quarantine or a canary version refused to
    /// `<data_dir>/dead-letter/<pipeline>.cap` (a capture file).
    #[serde(default = "default_dead_letter")]
    pub dead_letter: bool,
    /// Rotate a dead-letter capture at this size.
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: NonZeroU64,
}

fn default_debounce_ms() -> u64 {
    500
}
fn default_max_module_bytes() -> NonZeroUsize {
    NonZeroUsize::new(32 << 20).unwrap_or(NonZeroUsize::MIN)
}
fn default_history() -> NonZeroUsize {
    NonZeroUsize::new(20).unwrap_or(NonZeroUsize::MIN)
}
fn default_keep_modules() -> NonZeroUsize {
    NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN)
}
fn default_canary_frames() -> u64 {
    200
}
fn default_canary_secs() -> NonZeroU64 {
    NonZeroU64::new(300).unwrap_or(NonZeroU64::MIN)
}
fn default_canary_max_failure_rate() -> f64 {
    0.2
}
fn default_quarantine_after_traps() -> u32 {
    10
}
fn default_quarantine_backoff_ms() -> NonZeroU64 {
    NonZeroU64::new(1000).unwrap_or(NonZeroU64::MIN)
}
fn default_quarantine_backoff_max_ms() -> NonZeroU64 {
    NonZeroU64::new(60_000).unwrap_or(NonZeroU64::MIN)
}
fn default_dead_letter() -> bool {
    true
}
fn default_dead_letter_max_bytes() -> NonZeroU64 {
    NonZeroU64::new(16 << 20).unwrap_or(NonZeroU64::MIN)
}

impl Default for HotswapConfig {
    fn default() -> Self {
        HotswapConfig {
            watch_dir: None,
            debounce_ms: default_debounce_ms(),
            max_module_bytes: default_max_module_bytes(),
            history: default_history(),
            keep_modules: default_keep_modules(),
            canary_frames: default_canary_frames(),
            canary_secs: default_canary_secs(),
            canary_max_failure_rate: default_canary_max_failure_rate(),
            quarantine_after_traps: default_quarantine_after_traps(),
            quarantine_backoff_ms: default_quarantine_backoff_ms(),
            quarantine_backoff_max_ms: default_quarantine_backoff_max_ms(),
            dead_letter: default_dead_letter(),
            dead_letter_max_bytes: default_dead_letter_max_bytes(),
        }
    }
}

impl HotswapConfig {
    /// Problems with this section, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(dir) = &self.watch_dir
            && !dir.is_dir()
        {
            problems.push(format!(
                "hotswap.watch_dir: {} is not a directory",
                dir.display()
            ));
        }
        let rate = self.canary_max_failure_rate;
        if !(rate > 0.0 && rate <= 1.0) {
            problems.push(format!(
                "hotswap.canary_max_failure_rate: {rate} is not in (0, 1]"
            ));
        }
        if self.quarantine_backoff_ms > self.quarantine_backoff_max_ms {
            problems.push(
                "hotswap.quarantine_backoff_ms: must not exceed quarantine_backoff_max_ms".into(),
            );
        }
        problems
    }

    /// Makes a relative `watch_dir` relative to the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(dir) = &mut self.watch_dir
            && dir.is_relative()
        {
            *dir = base.join(&*dir);
        }
    }

    /// The canary policy (`None` when `canary_frames = 0`).
    pub fn canary(&self) -> Option<CanaryPolicy> {
        (self.canary_frames > 0).then(|| CanaryPolicy {
            frames: self.canary_frames,
            max_duration: Duration::from_secs(self.canary_secs.get()),
            max_failure_rate: self.canary_max_failure_rate,
        })
    }

    /// The quarantine policy.
    pub fn quarantine(&self) -> QuarantinePolicy {
        QuarantinePolicy {
            after_traps: self.quarantine_after_traps,
            backoff: Duration::from_millis(self.quarantine_backoff_ms.get()),
            backoff_max: Duration::from_millis(self.quarantine_backoff_max_ms.get()),
        }
    }

    /// The debounce of the watched directory.
    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }
}

/// How a swapped-in version is watched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanaryPolicy {
    /// Frames in the window.
    pub frames: u64,
    /// The window ends after this long even with fewer frames.
    pub max_duration: Duration,
    /// Failure rate (0..=1) above which the new version is rolled back.
    pub max_failure_rate: f64,
}

/// When a trapping version is quarantined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantinePolicy {
    /// Consecutive traps that start a quarantine (0: never).
    pub after_traps: u32,
    /// First backoff.
    pub backoff: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

impl Default for QuarantinePolicy {
    fn default() -> Self {
        QuarantinePolicy {
            after_traps: 10,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let config: HotswapConfig = toml::from_str("").expect("empty section");
        assert!(config.validate().is_empty());
        assert_eq!(config.canary().map(|c| c.frames), Some(200));
        assert_eq!(config.quarantine().after_traps, 10);
        let config: HotswapConfig =
            toml::from_str("canary_frames = 0\ncanary_max_failure_rate = 1.5").expect("parses");
        assert!(config.canary().is_none());
        assert_eq!(config.validate().len(), 1);
        let err = toml::from_str::<HotswapConfig>("watchdir = \"x\"").expect_err("typo");
        assert!(err.to_string().contains("unknown field"), "{err}");
        let config: HotswapConfig =
            toml::from_str("watch_dir = \"/nonexistent/sluice\"").expect("parses");
        assert!(config.validate()[0].starts_with("hotswap.watch_dir"));
    }
}
