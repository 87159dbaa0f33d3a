//! A tiny fixed-window rate limiter for log lines.
//!
//! Per-frame problems (a malformed frame, a guest log call) can repeat
//! thousands of times a second; logging each one would bury the signal and
//! wear the SD card of an edge box. Counters carry the exact numbers, the log
//! carries the first few per window plus a count of what was suppressed.
//! (Hand-written because it is 30 lines and needs no clock abstraction;
//! `governor` would add a dependency tree for the same thing.)

use std::time::{Duration, Instant};

/// Allows at most `burst` events per `window`.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    window: Duration,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl RateLimiter {
    /// A limiter allowing `burst` events per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether an event may be logged now.
    pub fn allow(&mut self) -> bool {
        self.check().is_some()
    }

    /// Like [`allow`](Self::allow), but returns how many events were
    /// suppressed since the last allowed one, so the caller can say so.
    pub fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        let expired = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= self.window);
        if expired {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_burst_then_counts_suppressed() {
        let mut limiter = RateLimiter::new(2, Duration::from_secs(3600));
        assert_eq!(limiter.check(), Some(0));
        assert_eq!(limiter.check(), Some(0));
        assert_eq!(limiter.check(), None);
        assert_eq!(limiter.check(), None);
        assert_eq!(limiter.suppressed, 2);
    }

    #[test]
    fn new_window_reports_suppressed() {
        let mut limiter = RateLimiter::new(1, Duration::ZERO);
        assert_eq!(limiter.check(), Some(0));
        // A zero window expires at once: every call starts a new window.
        assert_eq!(limiter.check(), Some(0));
        let mut limiter = RateLimiter::new(0, Duration::ZERO);
        assert_eq!(limiter.check(), None);
        limiter.burst = 1;
        assert_eq!(limiter.check(), Some(1));
    }
}
