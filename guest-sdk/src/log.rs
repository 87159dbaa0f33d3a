//! Logging through the host.
//!
//! In a component these call the host's `log` import, which tags the line
//! with the pipeline and rate-limits it, so a transform that logs on every
//! frame cannot flood the box. Natively (unit tests, benchmarks) they write to
//! stderr, where `cargo test` captures them like `eprintln!`.
//!
//! ```
//! use sluice_sdk::log;
//!
//! log::info("calibration table loaded");
//! log::warn(&format!("sensor {} out of range", 3));
//! ```

use std::fmt;

/// How important a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging information.
    Debug,
    /// Normal operation worth noting.
    Info,
    /// Something unexpected that the transform handled.
    Warn,
    /// Something failed.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}

/// Logs `message` at `level`.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::__bindings::sluice::transform::log as wit;
        let level = match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        eprintln!("[{level}] {message}");
    }
}

/// Logs `message` at [`Level::Trace`].
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Logs `message` at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Logs `message` at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs `message` at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs `message` at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_display_and_order() {
        assert_eq!(Level::Warn.to_string(), "WARN");
        assert!(Level::Trace < Level::Error);
        // Natively these only write to stderr; they must not panic.
        trace("t");
        debug("d");
        info("i");
        warn("w");
        error("e");
    }
}
