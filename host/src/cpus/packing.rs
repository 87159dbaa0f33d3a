//! Keeping sluice's threads on one core while its load fits there.
//!
//! A frame wakes its pipeline's worker thread, then the async side. When
//! those wake-ups cross cores a frame costs about 1.6 times the CPU time it
//! costs with every thread on one core (BENCHMARKS.md, "One core"), but one
//! core is a cap: a busy box needs the others. So, unless the operator fixed
//! the CPUs (`--cpus`), a governor looks once a second at what the last
//! second cost and
//! * keeps every thread to the idlest allowed core after a few quiet seconds
//!   (less than [`PACK_BELOW`] of a core used);
//! * lets them use every allowed CPU again as soon as sluice uses more than
//!   [`SPREAD_ABOVE`] of its core, or its core is busy (idle less than
//!   [`BUSY_IDLE`] of the second: another process works there) while another
//!   is mostly idle.
//!
//! A packing that did not last doubles the quiet time the next one needs, so
//! a load that comes and goes does not move the threads back and forth.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::errno::Errno;
use nix::sched::sched_setaffinity;
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::CpuList;

/// Share of one core above which sluice's threads spread again.
pub const SPREAD_ABOVE: f64 = 0.5;
/// Share of one core below which a second counts as quiet.
pub const PACK_BELOW: f64 = 0.25;
/// Quiet seconds before the first packing (and after a packing that lasted).
const FIRST_HOLD: u32 = 3;
/// The most quiet seconds a packing can come to need.
const LONGEST_HOLD: u32 = 300;
/// A packing shorter than this (in seconds) doubles the next one's hold.
const SHORT_PACKING: u32 = 60;
/// A packing longer than this (in seconds) resets the hold.
const LONG_PACKING: u32 = 600;
/// A core idle less than this share of the second is busy.
pub const BUSY_IDLE: f64 = 0.2;
/// A core idle more than this share of the second could take the threads.
const IDLE: f64 = 0.5;
/// How often the governor looks.
const PERIOD: Duration = Duration::from_secs(1);

/// Why the threads moved, the `reason` of `sluice_cpu_placement_changes_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ChangeLabel {
    reason: &'static str,
}

/// What made the governor move the threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Packed: quiet long enough.
    Quiet,
    /// Spread: more than [`SPREAD_ABOVE`] of the core used.
    Load,
    /// Spread: their core was busy while another was idle.
    Contention,
}

impl Reason {
    /// The metric's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Quiet => "quiet",
            Reason::Load => "load",
            Reason::Contention => "contention",
        }
    }
}

struct PlacementMetrics {
    cpus: Gauge,
    changes: Family<ChangeLabel, Counter>,
}

/// Process-wide, like the placement itself: every host's registry shows them.
static METRICS: LazyLock<PlacementMetrics> = LazyLock::new(|| PlacementMetrics {
    cpus: Gauge::default(),
    changes: Family::default(),
});

/// Registers `sluice_cpus_in_use` and `sluice_cpu_placement_changes_total`.
pub fn register(registry: &mut Registry) {
    // Before the governor's first look, or without one (`--cpus`): the
    // CPUs the process was given.
    if METRICS.cpus.get() == 0
        && let Ok(allowed) = super::allowed()
    {
        METRICS.cpus.set(allowed.cpus().len() as i64);
    }
    registry.register(
        "cpus_in_use",
        "CPUs sluice's threads may run on now (1 while packed onto one core)",
        METRICS.cpus.clone(),
    );
    registry.register(
        "cpu_placement_changes",
        "Times the threads were packed onto one core (quiet) or spread again (load, contention)",
        METRICS.changes.clone(),
    );
}

/// What one second cost, as the governor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Its length in seconds.
    pub seconds: f64,
    /// CPU time used by all of sluice's threads, in seconds.
    pub ran: f64,
    /// Idle time of each CPU sluice may use, in seconds: `(cpu, idle)`.
    pub idle: Vec<(usize, f64)>,
}

/// A move of the threads the governor decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Keep every thread to this CPU.
    Pack(usize),
    /// Let every thread use every allowed CPU again.
    Spread(Reason),
}

/// The decisions, apart from reading and setting anything.
#[derive(Debug)]
pub struct Governor {
    /// The CPU the threads are kept to, if packed.
    packed_on: Option<usize>,
    /// Quiet windows in a row while spread.
    quiet: u32,
    /// Quiet windows the next packing needs.
    hold: u32,
    /// Windows since the last packing.
    packed_for: u32,
}

impl Default for Governor {
    fn default() -> Self {
        Self {
            packed_on: None,
            quiet: 0,
            hold: FIRST_HOLD,
            packed_for: 0,
        }
    }
}

impl Governor {
    /// What to do after `window`.
    pub fn step(&mut self, window: &Window) -> Option<Change> {
        let load = window.ran / window.seconds;
        match self.packed_on {
            Some(cpu) => {
                self.packed_for += 1;
                let share = |idle: f64| idle / window.seconds;
                let contended = window
                    .idle
                    .iter()
                    .any(|&(c, idle)| c == cpu && share(idle) < BUSY_IDLE)
                    && window
                        .idle
                        .iter()
                        .any(|&(c, idle)| c != cpu && share(idle) > IDLE);
                let reason = if load > SPREAD_ABOVE {
                    Reason::Load
                } else if contended {
                    Reason::Contention
                } else {
                    return None;
                };
                if self.packed_for < SHORT_PACKING {
                    self.hold = (self.hold * 2).min(LONGEST_HOLD);
                } else if self.packed_for >= LONG_PACKING {
                    self.hold = FIRST_HOLD;
                }
                self.packed_on = None;
                self.quiet = 0;
                Some(Change::Spread(reason))
            }
            None => {
                if load >= PACK_BELOW {
                    self.quiet = 0;
                    return None;
                }
                self.quiet += 1;
                if self.quiet < self.hold {
                    return None;
                }
                // The idlest; of equals the highest-numbered (the first
                // CPUs usually take the interrupts).
                let (cpu, _) = window
                    .idle
                    .iter()
                    .copied()
                    .max_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))?;
                self.packed_on = Some(cpu);
                self.packed_for = 0;
                Some(Change::Pack(cpu))
            }
        }
    }
}

/// Governs where sluice's threads run until `shutdown`, within the CPUs the
/// process may use now. Does nothing if that is a single CPU.
pub async fn govern(shutdown: CancellationToken) {
    let allowed = match super::allowed() {
        Ok(allowed) => allowed,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the CPUs sluice may use; not packing its threads");
            return;
        }
    };
    METRICS.cpus.set(allowed.cpus().len() as i64);
    if allowed.cpus().len() < 2 {
        return;
    }
    let mut governor = Governor::default();
    let sampler = Sampler::new(&allowed, PROC_STAT);
    let mut last = match sampler.sample() {
        Ok(sample) => sample,
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "cannot measure sluice's load; not packing its threads");
            return;
        }
    };
    // Threads started while the last move went over them kept the old set.
    let mut sweep_again: Option<CpuList> = None;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + PERIOD, PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Some(set) = sweep_again.take()
            && let Err(err) = keep_threads_to(&set)
        {
            give_up(&allowed, &err);
            return;
        }
        // Blind, the governor could neither see a load to spread for nor a
        // busy core: it lets the threads use every CPU and stops.
        let now = match sampler.sample() {
            Ok(sample) => sample,
            Err(err) => {
                give_up(&allowed, &err.context("measuring sluice's load"));
                return;
            }
        };
        let window = now.since(&last);
        last = now;
        tracing::trace!(?window, "cpu placement window");
        let Some(change) = governor.step(&window) else {
            continue;
        };
        let (set, reason) = match change {
            Change::Pack(cpu) => {
                tracing::info!(
                    cpu,
                    used = format_args!("{:.3}", window.ran / window.seconds),
                    "keeping sluice's threads to one core while its load fits there"
                );
                (CpuList(vec![cpu]), Reason::Quiet)
            }
            Change::Spread(reason) => {
                tracing::info!(
                    cpus = %allowed,
                    reason = reason.as_str(),
                    used = format_args!("{:.3}", window.ran / window.seconds),
                    "letting sluice's threads use every CPU again"
                );
                (allowed.clone(), reason)
            }
        };
        if let Err(err) = keep_threads_to(&set) {
            give_up(&allowed, &err);
            return;
        }
        METRICS.cpus.set(set.cpus().len() as i64);
        METRICS
            .changes
            .get_or_create(&ChangeLabel {
                reason: reason.as_str(),
            })
            .inc();
        sweep_again = Some(set);
    }
}

/// A move or a measurement failed (a cpuset narrowed under sluice, say):
/// spread and stop.
fn give_up(allowed: &CpuList, err: &anyhow::Error) {
    tracing::warn!(error = %format!("{err:#}"), "cannot govern sluice's threads; leaving them on every CPU");
    let _ = keep_threads_to(allowed);
    METRICS.cpus.set(allowed.cpus().len() as i64);
}

/// Sets the affinity of every thread of this process.
fn keep_threads_to(cpus: &CpuList) -> anyhow::Result<()> {
    let set = cpus.set()?;
    for tid in threads()? {
        match sched_setaffinity(Pid::from_raw(tid), &set) {
            // It ended since the listing.
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => anyhow::bail!("keeping thread {tid} to CPUs {cpus}: {err}"),
        }
    }
    Ok(())
}

/// The ids of this process's threads.
fn threads() -> anyhow::Result<Vec<i32>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// Cumulative figures, read at one moment.
struct Sample {
    at: Instant,
    ran: Duration,
    /// Idle time of each allowed CPU so far, in seconds.
    idle: Vec<(usize, f64)>,
}

impl Sample {
    fn since(&self, earlier: &Sample) -> Window {
        Window {
            seconds: self.at.duration_since(earlier.at).as_secs_f64().max(1e-3),
            ran: self.ran.saturating_sub(earlier.ran).as_secs_f64(),
            idle: self
                .idle
                .iter()
                .map(|&(cpu, now)| {
                    let before = earlier
                        .idle
                        .iter()
                        .find(|(c, _)| *c == cpu)
                        .map_or(now, |&(_, idle)| idle);
                    (cpu, (now - before).max(0.0))
                })
                .collect(),
        }
    }
}

const PROC_STAT: &str = "/proc/stat";

/// Reads the process's CPU time and the CPUs' idle time.
struct Sampler {
    allowed: Vec<usize>,
    /// `/proc/stat`, or a stand-in in tests.
    stat_path: &'static str,
    /// The unit of `/proc/stat` (`USER_HZ`).
    ticks_per_second: f64,
}

impl Sampler {
    fn new(allowed: &CpuList, stat_path: &'static str) -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
        Self {
            allowed: allowed.cpus().to_vec(),
            stat_path,
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
        }
    }

    /// Fails unless the process's CPU time and some allowed CPU's idle time
    /// could be read (a CPU taken offline drops out of `/proc/stat`).
    fn sample(&self) -> anyhow::Result<Sample> {
        let at = Instant::now();
        let ran = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
            .map(Duration::from)
            .context("reading the process's CPU clock")?;
        let stat = std::fs::read_to_string(self.stat_path)
            .with_context(|| format!("reading {}", self.stat_path))?;
        let idle: Vec<(usize, f64)> = parse_idle(&stat)
            .filter(|(cpu, _)| self.allowed.contains(cpu))
            .map(|(cpu, ticks)| (cpu, ticks as f64 / self.ticks_per_second))
            .collect();
        if idle.is_empty() {
            anyhow::bail!(
                "{} has no idle time of the CPUs sluice may use",
                self.stat_path
            );
        }
        Ok(Sample { at, ran, idle })
    }
}

/// `(cpu, idle + iowait ticks)` of each `cpuN` line of `/proc/stat`.
fn parse_idle(stat: &str) -> impl Iterator<Item = (usize, u64)> + '_ {
    stat.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let cpu = fields.next()?.strip_prefix("cpu")?.parse().ok()?;
        let times: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
        Some((cpu, times.get(3)? + times.get(4).copied().unwrap_or(0)))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn window(ran: f64) -> Window {
        Window {
            seconds: 1.0,
            ran,
            idle: vec![(0, 0.5), (1, 0.9)],
        }
    }

    /// Steps `governor` through `windows` identical ones; the changes.
    fn run(governor: &mut Governor, windows: usize, w: &Window) -> Vec<Change> {
        (0..windows).filter_map(|_| governor.step(w)).collect()
    }

    #[test]
    fn packs_onto_the_idlest_cpu_after_quiet_seconds() {
        let mut governor = Governor::default();
        let quiet = window(0.05);
        assert!(run(&mut governor, FIRST_HOLD as usize - 1, &quiet).is_empty());
        assert_eq!(governor.step(&quiet), Some(Change::Pack(1)));
        // Stays packed while quiet.
        assert!(run(&mut governor, 100, &quiet).is_empty());
    }

    #[test]
    fn of_equally_idle_cpus_takes_the_last() {
        let mut governor = Governor::default();
        let mut quiet = window(0.05);
        quiet.idle = vec![(0, 0.9), (1, 0.9), (2, 0.4)];
        assert_eq!(
            run(&mut governor, FIRST_HOLD as usize, &quiet),
            [Change::Pack(1)]
        );
    }

    #[test]
    fn a_busy_second_restarts_the_quiet_count() {
        let mut governor = Governor::default();
        let (quiet, busy) = (window(0.05), window(0.3));
        run(&mut governor, FIRST_HOLD as usize - 1, &quiet);
        assert_eq!(governor.step(&busy), None);
        assert!(run(&mut governor, FIRST_HOLD as usize - 1, &quiet).is_empty());
        assert_eq!(governor.step(&quiet), Some(Change::Pack(1)));
    }

    #[test]
    fn spreads_on_load_and_on_a_busy_core_while_another_is_idle() {
        for (busy, reason) in [
            (window(SPREAD_ABOVE + 0.01), Reason::Load),
            (
                Window {
                    idle: vec![(0, 0.9), (1, 0.1)],
                    ..window(0.1)
                },
                Reason::Contention,
            ),
        ] {
            let mut governor = Governor::default();
            run(&mut governor, FIRST_HOLD as usize, &window(0.05));
            assert_eq!(governor.step(&busy), Some(Change::Spread(reason)));
        }
    }

    #[test]
    fn a_busy_core_is_no_reason_to_spread_when_no_other_is_idle() {
        let mut governor = Governor::default();
        run(&mut governor, FIRST_HOLD as usize, &window(0.05));
        for idle in [vec![(0, 0.4), (1, 0.1)], vec![(0, 0.9), (1, 0.3)]] {
            let w = Window {
                idle,
                ..window(0.1)
            };
            assert_eq!(governor.step(&w), None, "{w:?}");
        }
    }

    #[test]
    fn a_short_packing_doubles_the_next_hold_and_a_long_one_resets_it() {
        let mut governor = Governor::default();
        let (quiet, busy) = (window(0.05), window(0.9));
        run(&mut governor, FIRST_HOLD as usize, &quiet);
        assert_eq!(governor.step(&busy), Some(Change::Spread(Reason::Load)));
        // Twice the quiet seconds this time.
        let hold = 2 * FIRST_HOLD as usize;
        assert!(run(&mut governor, hold - 1, &quiet).is_empty());
        assert_eq!(governor.step(&quiet), Some(Change::Pack(1)));
        // Packed long enough: the hold goes back to the first.
        run(&mut governor, LONG_PACKING as usize, &quiet);
        assert_eq!(governor.step(&busy), Some(Change::Spread(Reason::Load)));
        assert_eq!(
            run(&mut governor, FIRST_HOLD as usize, &quiet),
            [Change::Pack(1)]
        );
    }

    #[test]
    fn the_hold_stops_growing() {
        let mut governor = Governor::default();
        let (quiet, busy) = (window(0.05), window(0.9));
        for _ in 0..20 {
            let hold = governor.hold as usize;
            assert_eq!(run(&mut governor, hold, &quiet), [Change::Pack(1)]);
            governor.step(&busy);
        }
        assert_eq!(governor.hold, LONGEST_HOLD);
    }

    #[test]
    fn reads_idle_and_iowait_per_cpu() {
        let stat = "cpu  10 0 5 700 30 0 0 0 0 0\n\
                    cpu0 5 0 2 300 10 0 0 0 0 0\n\
                    cpu1 5 0 3 400 20 0 0 0 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(parse_idle(stat).collect::<Vec<_>>(), [(0, 310), (1, 420)]);
    }

    #[test]
    fn samples_this_process() {
        let sampler = Sampler::new(&super::super::allowed().unwrap(), PROC_STAT);
        let first = sampler.sample().unwrap();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        let window = sampler.sample().unwrap().since(&first);
        assert!(window.ran >= 0.02, "{window:?}");
        assert_eq!(window.idle.len(), sampler.allowed.len());
    }

    #[test]
    fn a_sample_without_the_cpus_idle_times_is_an_error() {
        let allowed = super::super::allowed().unwrap();
        let missing = Sampler::new(&allowed, "/nonexistent/stat");
        let err = format!("{:#}", missing.sample().err().unwrap());
        assert!(err.starts_with("reading /nonexistent/stat"), "{err}");
        // A file without the per-CPU lines (`/proc/self/stat` is one line).
        let unparsable = Sampler::new(&allowed, "/proc/self/stat");
        let err = format!("{:#}", unparsable.sample().err().unwrap());
        assert!(err.contains("has no idle time"), "{err}");
    }
}
