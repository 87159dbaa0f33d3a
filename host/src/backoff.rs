//! Exponential backoff with jitter, for reconnect loops (serial ports, MQTT).
//!
//! Delays grow from `min` doubling up to `max`; each delay is drawn uniformly
//! from `[min, current]` ("full jitter" with a floor), so a fleet of boxes
//! that lost the same broker does not reconnect in lock-step, and a retry
//! never spins faster than `min`.

use std::time::Duration;

/// Backoff state for one reconnect loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Delays between `min` and `max` (`max` is raised to `min` if smaller).
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            current: min,
        }
    }

    /// The next delay to wait; grows the ceiling for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        if ceiling <= self.min {
            return self.min;
        }
        let span = (ceiling - self.min).as_nanos();
        let offset = rand::random::<u64>() as u128 % (span + 1);
        self.min + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
    }

    /// Back to the shortest delay (after a connection proved stable).
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_bounds_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        let mut b = Backoff::new(min, max);
        assert_eq!(b.next_delay(), min);
        let mut ceilings = vec![];
        for _ in 0..20 {
            let ceiling = b.current;
            let d = b.next_delay();
            assert!(
                d >= min && d <= ceiling,
                "{d:?} not in [{min:?}, {ceiling:?}]"
            );
            ceilings.push(ceiling);
        }
        assert_eq!(*ceilings.last().expect("20 items"), max);
        b.reset();
        assert_eq!(b.next_delay(), min);
    }

    #[test]
    fn max_below_min_is_clamped() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.next_delay(), Duration::from_secs(2));
        assert_eq!(b.next_delay(), Duration::from_secs(2));
    }
}
