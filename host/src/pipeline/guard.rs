//! What the transform worker decides on its own, frame by frame, without a
//! round trip to anything: the canary after a swap, the quarantine of a
//! module that keeps trapping, and the per-version counters both feed.
//!
//! These are plain state machines (no clock of their own, no I/O), driven
//! by [`crate::pipeline`]'s worker and unit-tested here with made-up
//! instants.
//!
//! # Canary
//!
//! After a swap the worker keeps the replaced instance and watches the new
//! version's first `frames` frames (or `max_duration`, whichever ends
//! first). A frame *fails* when the transform returned an error, trapped,
//! or was skipped by the quarantine. The new version is rolled back — by
//! the worker, between two frames, to the instance it kept — when its
//! failure rate over the window exceeds
//!
//! ```text
//! limit = max(max_failure_rate, baseline + max_failure_rate / 2)
//! ```
//!
//! where `baseline` is the old version's failure rate over its last
//! `frames` frames. So a version is blamed only for failures the old one
//! did not have: on a noisy line where the old decoder already refused 30 %
//! of the frames, the new one is rolled back above 40 %, not at 31 %
//! (binomial noise over 200 frames is about ±4 %). The decision is taken as
//! soon as it is certain (failures above `limit × frames` cannot come back
//! under the limit), so a module that traps on every frame costs about
//! `limit × frames` frames, not the whole window. A window that times out
//! with fewer than [`MIN_CANARY_FRAMES`] frames passes: too little
//! evidence to blame anyone.
//!
//! # Quarantine
//!
//! `after_traps` consecutive traps (or failures to re-instantiate after
//! one) put the version in quarantine: for `backoff` the worker does not
//! call it at all — every frame is counted as `quarantined` and
//! dead-lettered with its raw bytes — then one frame is let through as a
//! probe. A probe that traps doubles the backoff (up to `backoff_max`); one
//! that does not releases the quarantine. Re-instantiating a trapped
//! instance runs `init` again, so without this a module that traps on
//! everything would cost an instantiation per frame.

pub use crate::config::hotswap::{CanaryPolicy, QuarantinePolicy};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A canary window that times out with fewer frames than this passes.
pub const MIN_CANARY_FRAMES: u64 = 20;

/// A canary's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CanaryDecision {
    /// The new version stays.
    Pass,
    /// Roll back to the kept instance.
    RollBack,
}

/// The running canary of one swap.
#[derive(Debug, Clone)]
pub struct Canary {
    policy: CanaryPolicy,
    baseline: f64,
    started: Instant,
    frames: u64,
    failures: u64,
}

impl Canary {
    /// Starts watching at `now`; `baseline` is the old version's failure
    /// rate over its recent frames.
    pub fn new(policy: CanaryPolicy, baseline: f64, now: Instant) -> Canary {
        Canary {
            policy,
            baseline,
            started: now,
            frames: 0,
            failures: 0,
        }
    }

    /// The rate above which the version is rolled back.
    pub fn limit(&self) -> f64 {
        let rate = self.policy.max_failure_rate;
        rate.max(self.baseline + rate / 2.0)
    }

    /// The old version's failure rate this canary compares with.
    pub fn baseline(&self) -> f64 {
        self.baseline
    }

    /// Frames seen so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Failed frames so far.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// The failure rate so far (0 before the first frame).
    pub fn rate(&self) -> f64 {
        if self.frames == 0 {
            0.0
        } else {
            self.failures as f64 / self.frames as f64
        }
    }

    /// Counts one frame; `Some` once the outcome is decided.
    pub fn record(&mut self, failed: bool, now: Instant) -> Option<CanaryDecision> {
        self.frames += 1;
        if failed {
            self.failures += 1;
        }
        let limit = self.limit();
        let window = self.policy.frames.max(1);
        if self.failures as f64 > limit * window as f64 {
            return Some(CanaryDecision::RollBack);
        }
        let timed_out = now.saturating_duration_since(self.started) >= self.policy.max_duration;
        if self.frames >= window || timed_out {
            if self.frames < MIN_CANARY_FRAMES.min(window) {
                return Some(CanaryDecision::Pass);
            }
            return Some(if self.rate() > limit {
                CanaryDecision::RollBack
            } else {
                CanaryDecision::Pass
            });
        }
        None
    }
}

/// The failure rate of the active version over its last `capacity` frames
/// (the canary's baseline at the next swap).
#[derive(Debug, Clone)]
pub struct RecentOutcomes {
    ring: VecDeque<bool>,
    capacity: usize,
    failures: usize,
}

impl RecentOutcomes {
    /// Remembers the last `capacity` outcomes (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, 100_000);
        RecentOutcomes {
            ring: VecDeque::with_capacity(capacity),
            capacity,
            failures: 0,
        }
    }

    /// Adds one outcome.
    pub fn push(&mut self, failed: bool) {
        if self.ring.len() == self.capacity && self.ring.pop_front() == Some(true) {
            self.failures -= 1;
        }
        self.ring.push_back(failed);
        if failed {
            self.failures += 1;
        }
    }

    /// Failure rate over what is remembered (0 when empty).
    pub fn rate(&self) -> f64 {
        if self.ring.is_empty() {
            0.0
        } else {
            self.failures as f64 / self.ring.len() as f64
        }
    }

    /// Forgets everything (a new version became active).
    pub fn clear(&mut self) {
        self.ring.clear();
        self.failures = 0;
    }
}

/// A change of quarantine state (each is logged once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineEvent {
    /// The version traps repeatedly; frames are skipped for `backoff`.
    Entered {
        /// How long frames are skipped before the next probe.
        backoff: Duration,
    },
    /// A probe trapped; skipping again, longer.
    Extended {
        /// The new backoff.
        backoff: Duration,
    },
    /// A probe went through; the version runs normally again.
    Released,
}

/// Quarantine state of the active version.
#[derive(Debug, Clone)]
pub struct Quarantine {
    policy: QuarantinePolicy,
    consecutive: u32,
    backoff: Duration,
    /// `Some` while quarantined: frames before this instant are skipped.
    until: Option<Instant>,
}

impl Quarantine {
    /// Not quarantined.
    pub fn new(policy: QuarantinePolicy) -> Self {
        Quarantine {
            policy,
            consecutive: 0,
            backoff: policy.backoff,
            until: None,
        }
    }

    /// Whether the version is quarantined now.
    pub fn active(&self) -> bool {
        self.until.is_some()
    }

    /// Whether the next frame may be given to the transform (`false`: skip
    /// it, it is quarantined).
    pub fn admit(&self, now: Instant) -> bool {
        self.until.is_none_or(|until| now >= until)
    }

    /// Records the outcome of a frame the transform was given.
    pub fn record(&mut self, trapped: bool, now: Instant) -> Option<QuarantineEvent> {
        if !trapped {
            self.consecutive = 0;
            self.backoff = self.policy.backoff;
            return self.until.take().map(|_| QuarantineEvent::Released);
        }
        self.consecutive = self.consecutive.saturating_add(1);
        if self.until.is_some() {
            // A probe trapped.
            self.backoff = (self.backoff * 2).min(self.policy.backoff_max);
            self.until = Some(now + self.backoff);
            return Some(QuarantineEvent::Extended {
                backoff: self.backoff,
            });
        }
        if self.policy.after_traps > 0 && self.consecutive >= self.policy.after_traps {
            self.backoff = self.policy.backoff;
            self.until = Some(now + self.backoff);
            return Some(QuarantineEvent::Entered {
                backoff: self.backoff,
            });
        }
        None
    }
}

/// The reasons a frame can fail, in the order [`VersionStats`] counts them:
/// [`crate::runtime::ProcessError::reason`]'s labels plus `quarantined`.
pub const FAILURE_REASONS: [&str; 13] = [
    "decode_malformed",
    "decode_unsupported",
    "decode_invalid_config",
    "decode_internal",
    "trap_timeout",
    "trap_memory_limit",
    "trap_stack_overflow",
    "trap_panic",
    "trap_memory_fault",
    "trap_other",
    "contract_violation",
    "instance_unavailable",
    "quarantined",
];

/// Counters of one transform version, shared by the worker (which counts)
/// and the manager (which reports them in `GET /transforms`). Relaxed
/// atomics: a handful of adds per frame.
#[derive(Debug, Default)]
pub struct VersionStats {
    frames: AtomicU64,
    failed: [AtomicU64; FAILURE_REASONS.len()],
    calls: AtomicU64,
    call_ns: AtomicU64,
    dead_lettered: AtomicU64,
    quarantined: AtomicBool,
}

impl VersionStats {
    /// Counts one frame given to this version (processed or skipped).
    pub fn frame(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one guest call and its wall time.
    pub fn call(&self, elapsed: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.call_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Counts a failed frame by reason (unknown reasons count as `trap_other`).
    pub fn failed(&self, reason: &str) {
        let index = FAILURE_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(9);
        self.failed[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a frame handed to the dead-letter capture.
    pub fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets whether the version is quarantined now.
    pub fn set_quarantined(&self, on: bool) {
        self.quarantined.store(on, Ordering::Relaxed);
    }

    /// Frames given to this version.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Failed frames, all reasons.
    pub fn failures(&self) -> u64 {
        self.failed.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// A JSON view for the admin API.
    pub fn view(&self) -> VersionStatsView {
        let failed_by_reason = FAILURE_REASONS
            .iter()
            .zip(&self.failed)
            .map(|(reason, count)| (*reason, count.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let calls = self.calls.load(Ordering::Relaxed);
        let mean_call_us = if calls == 0 {
            0.0
        } else {
            self.call_ns.load(Ordering::Relaxed) as f64 / calls as f64 / 1e3
        };
        VersionStatsView {
            frames: self.frames(),
            failed: self.failures(),
            failed_by_reason,
            calls,
            mean_call_us: (mean_call_us * 10.0).round() / 10.0,
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            quarantined: self.quarantined.load(Ordering::Relaxed),
        }
    }
}

/// A version's counters as `GET /transforms` shows them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VersionStatsView {
    frames: u64,
    failed: u64,
    /// Only the reasons that occurred.
    failed_by_reason: std::collections::BTreeMap<&'static str, u64>,
    calls: u64,
    mean_call_us: f64,
    dead_lettered: u64,
    quarantined: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CanaryPolicy {
        CanaryPolicy {
            frames: 200,
            max_duration: Duration::from_secs(300),
            max_failure_rate: 0.2,
        }
    }

    #[test]
    fn a_clean_version_passes_at_the_end_of_the_window() {
        let now = Instant::now();
        let mut canary = Canary::new(policy(), 0.0, now);
        for i in 0..199 {
            // 10 % failures: under the 20 % limit.
            assert_eq!(canary.record(i % 10 == 0, now), None, "frame {i}");
        }
        assert_eq!(canary.record(false, now), Some(CanaryDecision::Pass));
    }

    #[test]
    fn half_failing_rolls_back_as_soon_as_it_is_certain() {
        let now = Instant::now();
        let mut canary = Canary::new(policy(), 0.0, now);
        let mut frames = 0;
        let decision = loop {
            frames += 1;
            if let Some(d) = canary.record(frames % 2 == 0, now) {
                break d;
            }
        };
        assert_eq!(decision, CanaryDecision::RollBack);
        // 41 failures > 0.2 × 200: decided after 82 frames, not 200.
        assert_eq!(frames, 82);
    }

    #[test]
    fn the_old_versions_failures_are_not_blamed_on_the_new_one() {
        let now = Instant::now();
        // The old decoder refused 30 % (a noisy line): the limit is 40 %.
        let mut canary = Canary::new(policy(), 0.3, now);
        assert!((canary.limit() - 0.4).abs() < 1e-9);
        let mut decision = None;
        for i in 0..200 {
            decision = canary.record(i % 3 == 0, now); // 33 %
            if decision.is_some() {
                break;
            }
        }
        assert_eq!(decision, Some(CanaryDecision::Pass));
        let mut canary = Canary::new(policy(), 0.3, now);
        let mut decision = None;
        for i in 0..200 {
            decision = canary.record(i % 2 == 0, now); // 50 %
            if decision.is_some() {
                break;
            }
        }
        assert_eq!(decision, Some(CanaryDecision::RollBack));
    }

    #[test]
    fn a_timed_out_window_decides_on_what_it_saw() {
        let start = Instant::now();
        let later = start + Duration::from_secs(301);
        let mut canary = Canary::new(policy(), 0.0, start);
        for _ in 0..30 {
            assert_eq!(canary.record(false, start), None);
        }
        for _ in 0..20 {
            assert_eq!(canary.record(true, start), None);
        }
        // 21 of 51 failed (41 %) when the time is up.
        assert_eq!(canary.record(true, later), Some(CanaryDecision::RollBack));
        // Too few frames to judge: passes.
        let mut canary = Canary::new(policy(), 0.0, start);
        assert_eq!(canary.record(true, later), Some(CanaryDecision::Pass));
    }

    #[test]
    fn recent_outcomes_slide() {
        let mut recent = RecentOutcomes::new(4);
        assert_eq!(recent.rate(), 0.0);
        for failed in [true, true, false, false] {
            recent.push(failed);
        }
        assert!((recent.rate() - 0.5).abs() < 1e-9);
        recent.push(false);
        recent.push(false);
        assert_eq!(recent.rate(), 0.0);
        recent.push(true);
        assert!((recent.rate() - 0.25).abs() < 1e-9);
        recent.clear();
        assert_eq!(recent.rate(), 0.0);
    }

    #[test]
    fn quarantine_backs_off_and_releases() {
        let policy = QuarantinePolicy {
            after_traps: 3,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3),
        };
        let t0 = Instant::now();
        let mut q = Quarantine::new(policy);
        assert_eq!(q.record(true, t0), None);
        assert_eq!(q.record(false, t0), None, "a success resets the count");
        assert_eq!(q.record(true, t0), None);
        assert_eq!(q.record(true, t0), None);
        assert_eq!(
            q.record(true, t0),
            Some(QuarantineEvent::Entered {
                backoff: Duration::from_secs(1)
            })
        );
        assert!(q.active());
        assert!(!q.admit(t0 + Duration::from_millis(999)));
        let probe = t0 + Duration::from_secs(1);
        assert!(q.admit(probe));
        assert_eq!(
            q.record(true, probe),
            Some(QuarantineEvent::Extended {
                backoff: Duration::from_secs(2)
            })
        );
        assert!(!q.admit(probe + Duration::from_millis(1999)));
        let probe = probe + Duration::from_secs(2);
        assert_eq!(
            q.record(true, probe),
            Some(QuarantineEvent::Extended {
                backoff: Duration::from_secs(3)
            }),
            "capped at backoff_max"
        );
        let probe = probe + Duration::from_secs(3);
        assert!(q.admit(probe));
        assert_eq!(q.record(false, probe), Some(QuarantineEvent::Released));
        assert!(!q.active());
        assert!(q.admit(probe));
    }

    #[test]
    fn quarantine_can_be_disabled() {
        let mut q = Quarantine::new(QuarantinePolicy {
            after_traps: 0,
            ..QuarantinePolicy::default()
        });
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(q.record(true, now), None);
        }
        assert!(q.admit(now));
    }

    #[test]
    fn version_stats_count_by_reason() {
        let stats = VersionStats::default();
        stats.frame();
        stats.frame();
        stats.failed("trap_panic");
        stats.failed("no_such_reason");
        stats.call(Duration::from_micros(3));
        let json = serde_json::to_value(stats.view()).expect("serializes");
        assert_eq!(json["frames"], 2);
        assert_eq!(json["failed"], 2);
        assert_eq!(json["failed_by_reason"]["trap_panic"], 1);
        assert_eq!(json["failed_by_reason"]["trap_other"], 1);
        assert_eq!(json["mean_call_us"], 3.0);
    }
}
