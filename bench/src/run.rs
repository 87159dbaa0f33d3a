//! One run: one system under test, started fresh, through one phase's
//! steps, with its own pty and its own subscriber.
//!
//! 1. A pty and a subscriber (`iiot/#`, QoS 1) are set up; probe frame 1 is
//!    written into the pty *before* the system starts, so the time from
//!    spawn to that frame's last message at the subscriber is the start-up
//!    time. Further probes follow every 20 ms from 0.1 s after the spawn:
//!    some systems discard what was waiting in the port when they open it
//!    (pyserial flushes the input buffer), or what they read before their
//!    MQTT connection is up; for those the start-up time is accurate to
//!    ±20 ms.
//! 2. 5 s of warm-up frames at 200 frames/s, all delivered before
//!    measuring: long enough for what a system adjusts after its start
//!    (a JIT; sluice packs its threads onto one core after 3 quiet seconds).
//! 3. Each step writes its frames (fixed rate or burst), waits until every
//!    frame is complete (or 2 s pass without a message, or 20 s in all),
//!    and reads the process's CPU time, memory and context switches
//!    before and after.
//! 4. In the InfluxDB phase, the run's database is counted until it holds
//!    four points per frame that arrived complete over MQTT, or stops
//!    growing for 3 s (20 s at most); then again after the stop, which
//!    flushes what a system still held.
//! 5. The system is stopped (SIGTERM) before the next one starts.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::broker::Mosquitto;
use crate::feed::{FeedPlan, MESSAGES_PER_FRAME, Pace, Pty, feed};
use crate::influx::{Influxd, POINTS_PER_FRAME};
use crate::procfs::{self, ProcSample};
use crate::subscriber::{Collected, Subscriber};
use crate::sut::{InfluxTarget, Launch, Paths, Proc, Sut, spawn};
use crate::util::mono_ns;

/// Warm-up frames after start-up, before any step (5 s at [`WARMUP_RATE`]).
const WARMUP_FRAMES: u64 = 1000;
/// Frames per second of the warm-up.
const WARMUP_RATE: f64 = 200.0;
/// A step's frames must all arrive within this after its last write…
const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// …and the whole wait is capped at this (a system that reads a burst
/// into memory may take a while to publish it).
const DRAIN_CAP: Duration = Duration::from_secs(45);
/// A burst ends after this many frames (or its duration), which bounds
/// what a system can queue in memory and so the drain.
const MAX_BURST_FRAMES: u64 = 10_000;
/// A fixed-rate step is "kept up" if, with zero loss, its last frame
/// arrived at most this long after it was due (first write + (n − 1) /
/// rate): whatever backlog built up on the way — in the pty, in the system,
/// in the broker — was gone by the end. A short stall that the system
/// catches up with passes; a rate it cannot carry does not.
const MAX_LATE_MS: f64 = 250.0;
/// Frames per second no burst can exceed (sizes the subscriber's arrays;
/// several times what any system here reaches).
const MAX_BURST_RATE: f64 = 50_000.0;
/// Verification rates of the zero-loss search, as fractions of the burst
/// rate, tried in order until one is kept up.
pub const VERIFY_FRACTIONS: [f64; 4] = [0.9, 0.75, 0.6, 0.45];

/// What a step does.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum StepSpec {
    /// `rate` frames/s for `secs`.
    Rate {
        /// Frames per second.
        rate: f64,
        /// Seconds of schedule.
        secs: f64,
    },
    /// As fast as the system reads, for `secs`; then fixed-rate
    /// verification at [`VERIFY_FRACTIONS`] of the delivered rate.
    Search {
        /// Seconds of burst.
        burst_secs: f64,
        /// Seconds of each verification.
        verify_secs: f64,
    },
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
pub struct Percentiles {
    /// Frames measured.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// From latencies in nanoseconds (sorted here).
    pub fn of(latencies: &mut [u64]) -> Option<Percentiles> {
        if latencies.is_empty() {
            return None;
        }
        latencies.sort_unstable();
        let at = |q: f64| {
            // Nearest rank.
            let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            latencies[rank - 1] as f64 / 1e6
        };
        Some(Percentiles {
            n: latencies.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: latencies[latencies.len() - 1] as f64 / 1e6,
        })
    }
}

/// One measured step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepResult {
    /// `rate`, `burst` or `verify`.
    pub kind: String,
    /// The schedule's rate (fixed-rate steps).
    pub target_rate: Option<f64>,
    /// Frames written (pty) or published (bare).
    pub frames_written: u64,
    /// Frames whose eleven messages all arrived.
    pub frames_complete: u64,
    /// Messages that should have arrived.
    pub messages_expected: u64,
    /// Messages that did (at most eleven counted per frame).
    pub messages_received: u64,
    /// `expected - received`.
    pub messages_lost: u64,
    /// Messages beyond eleven for a frame (duplicates).
    pub messages_surplus: u64,
    /// Written frames / (last write − first write).
    pub written_rate: f64,
    /// Complete frames / (last completion − first write).
    pub delivered_rate: f64,
    /// The largest delay of a write behind schedule.
    pub max_lag_ms: f64,
    /// Last completion − last write.
    pub drain_ms: f64,
    /// Fixed rate: last completion − when the last frame was due.
    #[serde(default)]
    pub late_ms: f64,
    /// Zero loss; for a fixed rate also: every frame written and the last
    /// one delivered ≤ 250 ms after it was due.
    pub kept_up: bool,
    /// Write → last message of the frame.
    pub latency: Option<Percentiles>,
    /// Write → the frame's Sparkplug data (only with a Sparkplug edge node).
    #[serde(default)]
    pub sparkplug_latency: Option<Percentiles>,
    /// CPU seconds of the system under test over the step.
    pub cpu_secs: f64,
    /// CPU microseconds per complete frame.
    pub cpu_us_per_frame: f64,
    /// CPU seconds / wall seconds (1.0 = one core).
    pub cpu_cores: f64,
    /// Context switches (voluntary + involuntary) of the system under
    /// test's threads over the step; a thread that exited during the step
    /// takes its switches with it. `None` in results from before this was
    /// measured.
    #[serde(default)]
    pub ctx_switches: Option<u64>,
    /// Context switches per complete frame (`None` without complete frames).
    #[serde(default)]
    pub ctx_switches_per_frame: Option<f64>,
    /// sluice: the mean wall time of a transform call over the step, µs
    /// (`sluice_transform_call_seconds`); a call after the process slept
    /// costs several times what it costs in a loop.
    #[serde(default)]
    pub transform_call_us: Option<f64>,
    /// CPU microseconds per complete frame of each kind of thread (by
    /// name, `tokio-rt-worker`, `transform-<pipeline>`, …), the busiest
    /// first; threads that exited during the step are missing.
    #[serde(default)]
    pub cpu_us_per_frame_by_thread: Vec<(String, f64)>,
    /// The broker's CPU seconds / wall seconds.
    pub broker_cores: f64,
    /// The bench's own (generator + subscriber) CPU seconds / wall seconds.
    pub bench_cores: f64,
    /// The machine's 1-minute load average at the end of the step.
    #[serde(default)]
    pub load_1m: f64,
    /// VmRSS at the end of the step, KiB.
    pub rss_kib: u64,
    /// VmHWM at the end of the step, KiB.
    pub hwm_kib: u64,
    /// The first few frames that did not arrive complete: `seq (messages/11)`.
    #[serde(default)]
    pub incomplete: Vec<String>,
    /// Raw latencies (ns), for pooling across rounds; not serialized.
    #[serde(skip)]
    pub latencies_ns: Vec<u64>,
}

/// One system through one phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// The system.
    pub sut: Sut,
    /// The phase id.
    pub phase: String,
    /// Round (0-based).
    pub round: usize,
    /// Position in this phase's order within the round.
    pub position: usize,
    /// Spawn → first frame's last message at the subscriber (bare: spawn
    /// → connected).
    pub startup_ms: Option<f64>,
    /// Measured steps.
    pub steps: Vec<StepResult>,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
    /// Subscriber anomalies: messages with no frame, `seq` out of range,
    /// connection errors.
    pub anomalies: Vec<String>,
    /// The InfluxDB phase: what reached the database.
    #[serde(default)]
    pub influx: Option<InfluxCheck>,
}

/// What a run stored in InfluxDB.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InfluxCheck {
    /// Four per frame that arrived complete over MQTT (probes, warm-up and
    /// steps).
    pub points_expected: u64,
    /// Counted in the run's database before the system was stopped.
    pub points_stored: u64,
    /// Counted again after the stop (what a clean shutdown flushed).
    pub points_after_stop: u64,
    /// From the end of the last step until the count settled.
    pub settle_ms: f64,
}

impl InfluxCheck {
    /// Points that never arrived, counting the shutdown's flush.
    pub fn lost(&self) -> u64 {
        self.points_expected
            .saturating_sub(self.points_stored.max(self.points_after_stop))
    }
}

/// Everything a run needs.
pub struct RunContext<'a> {
    /// Paths.
    pub paths: &'a Paths,
    /// The broker.
    pub broker: &'a Mosquitto,
    /// This run's scratch directory.
    pub run_dir: &'a Path,
    /// Unique id (client ids).
    pub run_id: &'a str,
    /// The InfluxDB server, when the phase writes points.
    pub influx: Option<&'a Influxd>,
}

/// The frames a step may write at most, so the subscriber's arrays fit.
fn step_capacity(spec: StepSpec) -> u64 {
    match spec {
        StepSpec::Rate { rate, secs } => (rate * secs).ceil() as u64,
        StepSpec::Search {
            burst_secs,
            verify_secs,
        } => (MAX_BURST_RATE * (burst_secs + verify_secs * VERIFY_FRACTIONS.len() as f64)) as u64,
    }
}

/// Runs `sut` through `steps`.
pub fn run(
    ctx: &RunContext<'_>,
    sut: Sut,
    qos: u8,
    spec: StepSpec,
    phase: &str,
    round: usize,
    position: usize,
) -> RunResult {
    let mut result = RunResult {
        sut,
        phase: phase.to_owned(),
        round,
        position,
        startup_ms: None,
        steps: Vec::new(),
        error: None,
        anomalies: Vec::new(),
        influx: None,
    };
    if let Err(e) = run_inner(ctx, sut, qos, spec, &mut result) {
        result.error = Some(format!("{e:#}"));
    }
    result
}

/// The system and how to feed it.
struct Target {
    proc: Proc,
    pty: Option<Pty>,
}

impl Target {
    /// Runs one step of writing; returns per-frame write times and the lag.
    fn write(
        &mut self,
        first_seq: u64,
        pace: Pace,
        frames: u64,
        secs: f64,
    ) -> Result<(Vec<u64>, u64)> {
        let max = Duration::from_secs_f64(match pace {
            Pace::Burst => secs,
            // Time for a slow reader to fall behind visibly, not forever.
            Pace::Rate(_) => secs * 1.5 + 2.0,
        });
        match &mut self.pty {
            Some(pty) => {
                let fed = feed(
                    pty,
                    FeedPlan {
                        first_seq,
                        frames,
                        pace,
                        max_duration: max,
                    },
                )?;
                Ok((fed.times, fed.max_lag_ns))
            }
            None => {
                let step = self.proc.bare_step(first_seq, pace, frames, max)?;
                Ok((step.times, step.max_lag_ns))
            }
        }
    }
}

fn run_inner(
    ctx: &RunContext<'_>,
    sut: Sut,
    qos: u8,
    spec: StepSpec,
    result: &mut RunResult,
) -> Result<()> {
    let probes_max = 7_000u64;
    let capacity = 1 + probes_max + WARMUP_FRAMES + step_capacity(spec);
    let sub = Subscriber::start(
        ctx.broker.port,
        &format!("bench-sub-{}", ctx.run_id),
        1,
        usize::try_from(capacity).context("capacity")?,
    )?;
    let mut pty = if sut.reads_pty() {
        Some(Pty::open()?)
    } else {
        None
    };
    let influx = match ctx.influx {
        Some(server) => {
            let database = format!("run_{}", ctx.run_id.replace('-', "_"));
            server.create_database(&database)?;
            Some((
                server,
                InfluxTarget {
                    port: server.port,
                    database,
                },
            ))
        }
        None => None,
    };
    let mut next_seq = 1u64;
    if let Some(pty) = &mut pty {
        write_frames(pty, next_seq, 1)?;
        next_seq += 1;
    }
    let proc = spawn(Launch {
        sut,
        paths: ctx.paths,
        broker_port: ctx.broker.port,
        pty: pty.as_ref().map(|p| p.path.as_path()),
        qos,
        run_dir: ctx.run_dir,
        run_id: ctx.run_id,
        sluice_pipelines: None,
        sluice_data_dir: None,
        influx: influx.as_ref().map(|(_, target)| target),
    })?;
    let mut target = Target { proc, pty };

    // Start-up.
    let spawned = target.proc.spawned_ns;
    if sut.reads_pty() {
        let deadline = mono_ns() + u64::try_from(sut.startup_timeout().as_nanos()).unwrap_or(0);
        let mut last_probe = mono_ns();
        loop {
            let first_done = sub.with(|c| first_done_ns(c, next_seq));
            if let Some(done) = first_done {
                result.startup_ms = Some((done.saturating_sub(spawned)) as f64 / 1e6);
                break;
            }
            if !target.proc.alive() {
                bail!(
                    "{} exited during start-up:\n{}",
                    sut.label(),
                    target.proc.log_tail()
                );
            }
            let now = mono_ns();
            if now > deadline {
                bail!(
                    "no frame came through {} within {:?} of starting it; its log:\n{}",
                    sut.label(),
                    sut.startup_timeout(),
                    target.proc.log_tail()
                );
            }
            if now - spawned > 100_000_000 && now - last_probe > 20_000_000 && next_seq < probes_max
            {
                if let Some(pty) = &mut target.pty {
                    write_frames(pty, next_seq, 1)?;
                }
                next_seq += 1;
                last_probe = now;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    } else {
        let ready = target.proc.bare_wait_ready(sut.startup_timeout())?;
        result.startup_ms = Some((ready - spawned) as f64 / 1e6);
    }

    // The other probes: through, or discarded by the system (1 s of quiet).
    sub.wait_frames(
        1,
        next_seq - 1,
        Duration::from_secs(1),
        Duration::from_secs(30),
    );

    // Warm-up: JIT compilers, connection buffers, allocator pools.
    let warmup_first = next_seq;
    target.write(
        next_seq,
        Pace::Rate(WARMUP_RATE),
        WARMUP_FRAMES,
        WARMUP_FRAMES as f64 / WARMUP_RATE,
    )?;
    next_seq += WARMUP_FRAMES;
    if !sub.wait_frames(
        warmup_first,
        WARMUP_FRAMES,
        Duration::from_secs(5),
        Duration::from_secs(30),
    ) {
        let seen = sub.with(|c| {
            format!(
                "{} frames complete, {} messages, {} unassigned, {} seq out of range",
                c.completed, c.messages, c.unassigned, c.out_of_range
            )
        });
        bail!(
            "{} did not deliver the {WARMUP_FRAMES} warm-up frames (subscriber: {seen}); its log:\n{}",
            sut.label(),
            target.proc.log_tail()
        );
    }

    match spec {
        StepSpec::Rate { rate, secs } => {
            let frames = (rate * secs).round() as u64;
            let step = measure(
                ctx,
                &sub,
                &mut target,
                next_seq,
                Pace::Rate(rate),
                frames,
                secs,
                "rate",
            )?;
            result.steps.push(step);
        }
        StepSpec::Search {
            burst_secs,
            verify_secs,
        } => {
            let frames = ((MAX_BURST_RATE * burst_secs) as u64).min(MAX_BURST_FRAMES);
            let burst = measure(
                ctx,
                &sub,
                &mut target,
                next_seq,
                Pace::Burst,
                frames,
                burst_secs,
                "burst",
            )?;
            next_seq += burst.frames_written;
            let capacity = burst.delivered_rate;
            result.steps.push(burst);
            for fraction in VERIFY_FRACTIONS {
                let rate = (capacity * fraction).floor().max(1.0);
                let frames = (rate * verify_secs).round() as u64;
                let step = measure(
                    ctx,
                    &sub,
                    &mut target,
                    next_seq,
                    Pace::Rate(rate),
                    frames,
                    verify_secs,
                    "verify",
                )?;
                next_seq += step.frames_written;
                let kept_up = step.kept_up;
                result.steps.push(step);
                if kept_up {
                    break;
                }
            }
        }
    }
    let mut influx_check = None;
    if let Some((server, influx)) = &influx {
        let expected = sub.with(|c| c.completed) * POINTS_PER_FRAME;
        let start = mono_ns();
        let mut stored = server.count_points(&influx.database)?;
        let mut changed = start;
        while stored < expected
            && mono_ns() - changed < 3_000_000_000
            && mono_ns() - start < 20_000_000_000
        {
            std::thread::sleep(Duration::from_millis(100));
            let now = server.count_points(&influx.database)?;
            if now != stored {
                (stored, changed) = (now, mono_ns());
            }
        }
        influx_check = Some(InfluxCheck {
            points_expected: expected,
            points_stored: stored,
            points_after_stop: 0,
            settle_ms: (changed - start) as f64 / 1e6,
        });
    }
    target.proc.stop();
    if let (Some((server, influx)), Some(check)) = (&influx, &mut influx_check) {
        check.points_after_stop = server.count_points(&influx.database)?;
    }
    result.influx = influx_check;
    let collected = sub.finish();
    if collected.unassigned > 0 {
        result.anomalies.push(format!(
            "{} messages before any seq message",
            collected.unassigned
        ));
    }
    if collected.out_of_range > 0 {
        result.anomalies.push(format!(
            "{} seq messages out of range",
            collected.out_of_range
        ));
    }
    for e in collected.errors.iter().take(3) {
        result.anomalies.push(format!("subscriber: {e}"));
    }
    Ok(())
}

/// When frame `below` − 1 or any earlier probe completed, if one did.
fn first_done_ns(c: &Collected, below: u64) -> Option<u64> {
    (1..below)
        .map(|seq| c.done_ns[c.index(seq)])
        .filter(|&t| t != 0)
        .min()
}

fn write_frames(pty: &mut Pty, first_seq: u64, frames: u64) -> Result<()> {
    feed(
        pty,
        FeedPlan {
            first_seq,
            frames,
            pace: Pace::Burst,
            max_duration: Duration::from_secs(5),
        },
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn measure(
    ctx: &RunContext<'_>,
    sub: &Subscriber,
    target: &mut Target,
    first_seq: u64,
    pace: Pace,
    frames: u64,
    secs: f64,
    kind: &str,
) -> Result<StepResult> {
    let own = std::process::id();
    let calls0 = target.proc.transform_calls();
    let threads0 = target.proc.cpu_by_thread();
    let (s0, b0, o0, t0) = (
        target.proc.sample()?,
        procfs::sample(ctx.broker.pid())?,
        procfs::sample(own)?,
        mono_ns(),
    );
    let (times, max_lag_ns) = target.write(first_seq, pace, frames, secs)?;
    let written = times.len() as u64;
    sub.wait_frames(first_seq, written, DRAIN_IDLE, DRAIN_CAP);
    let (s1, b1, o1, t1) = (
        target.proc.sample().unwrap_or(ProcSample {
            cpu_secs: s0.cpu_secs,
            context_switches: s0.context_switches,
            ..ProcSample::default()
        }),
        procfs::sample(ctx.broker.pid())?,
        procfs::sample(own)?,
        mono_ns(),
    );
    let wall = (t1 - t0) as f64 / 1e9;
    let thread_secs: Vec<(String, f64)> = target
        .proc
        .cpu_by_thread()
        .into_iter()
        .map(|(name, secs)| {
            let before = threads0.get(&name).copied().unwrap_or(0.0);
            (name, (secs - before).max(0.0))
        })
        .collect();
    let transform_call_us =
        calls0
            .zip(target.proc.transform_calls())
            .and_then(|((secs0, n0), (secs1, n1))| {
                (n1 > n0).then(|| (secs1 - secs0) * 1e6 / (n1 - n0))
            });

    let mut sparkplug_ns: Vec<u64> = sub.with(|c| {
        times
            .iter()
            .enumerate()
            .filter_map(|(k, &written_at)| {
                let done = c.sparkplug_done_ns[c.index(first_seq + k as u64)];
                (done != 0).then(|| done.saturating_sub(written_at))
            })
            .collect()
    });
    let (received, surplus, complete, last_done, latencies) = sub.with(|c| {
        let mut received = 0u64;
        let mut surplus = 0u64;
        let mut complete = 0u64;
        let mut last_done = 0u64;
        let mut latencies = Vec::with_capacity(times.len());
        for (k, &written_at) in times.iter().enumerate() {
            let i = c.index(first_seq + k as u64);
            let count = u64::from(c.counts[i]);
            received += count.min(u64::from(MESSAGES_PER_FRAME));
            surplus += count.saturating_sub(u64::from(MESSAGES_PER_FRAME));
            let done = c.done_ns[i];
            if done != 0 {
                complete += 1;
                last_done = last_done.max(done);
                latencies.push(done.saturating_sub(written_at));
            }
        }
        (received, surplus, complete, last_done, latencies)
    });
    let incomplete: Vec<String> = sub.with(|c| {
        (0..written)
            .map(|k| first_seq + k)
            .filter(|&seq| c.done_ns[c.index(seq)] == 0)
            .take(5)
            .map(|seq| format!("{seq} ({}/{MESSAGES_PER_FRAME})", c.counts[c.index(seq)]))
            .collect()
    });
    let expected = written * u64::from(MESSAGES_PER_FRAME);
    let first_write = times.first().copied().unwrap_or(t0);
    let last_write = times.last().copied().unwrap_or(t0);
    let write_secs = (last_write - first_write) as f64 / 1e9;
    let delivered_secs = last_done.saturating_sub(first_write) as f64 / 1e9;
    let drain_ms = last_done.saturating_sub(last_write) as f64 / 1e6;
    let max_lag_ms = max_lag_ns as f64 / 1e6;
    let lost = expected.saturating_sub(received);
    let target_rate = match pace {
        Pace::Rate(r) => Some(r),
        Pace::Burst => None,
    };
    let late_ms = match target_rate {
        Some(rate) if written > 0 => {
            let due = first_write as f64 + (written - 1) as f64 * 1e9 / rate;
            (last_done as f64 - due) / 1e6
        }
        _ => 0.0,
    };
    // Bursts fill every queue on purpose: only zero loss counts there.
    let kept_up = lost == 0
        && complete == written
        && (target_rate.is_none() || (written == frames && late_ms <= MAX_LATE_MS));
    let cpu_secs = (s1.cpu_secs - s0.cpu_secs).max(0.0);
    let ctx_switches = s1.context_switches.saturating_sub(s0.context_switches);
    let mut latencies_ns = latencies;
    let latency = Percentiles::of(&mut latencies_ns);
    Ok(StepResult {
        kind: kind.to_owned(),
        target_rate,
        frames_written: written,
        frames_complete: complete,
        messages_expected: expected,
        messages_received: received,
        messages_lost: lost,
        messages_surplus: surplus,
        written_rate: if write_secs > 0.0 {
            written as f64 / write_secs
        } else {
            0.0
        },
        delivered_rate: if delivered_secs > 0.0 {
            complete as f64 / delivered_secs
        } else {
            0.0
        },
        max_lag_ms,
        drain_ms,
        late_ms,
        kept_up,
        latency,
        sparkplug_latency: Percentiles::of(&mut sparkplug_ns),
        cpu_secs,
        cpu_us_per_frame: if complete > 0 {
            cpu_secs * 1e6 / complete as f64
        } else {
            0.0
        },
        cpu_cores: cpu_secs / wall,
        ctx_switches: Some(ctx_switches),
        ctx_switches_per_frame: (complete > 0).then(|| ctx_switches as f64 / complete as f64),
        transform_call_us,
        cpu_us_per_frame_by_thread: per_frame_by_thread(thread_secs, complete),
        broker_cores: (b1.cpu_secs - b0.cpu_secs) / wall,
        bench_cores: (o1.cpu_secs - o0.cpu_secs) / wall,
        load_1m: load_average(),
        rss_kib: s1.rss_kib,
        hwm_kib: s1.hwm_kib,
        incomplete,
        latencies_ns,
    })
}

/// Each thread kind's CPU seconds over a step as microseconds per complete
/// frame, the busiest first (none without complete frames).
fn per_frame_by_thread(mut secs: Vec<(String, f64)>, complete: u64) -> Vec<(String, f64)> {
    if complete == 0 {
        return Vec::new();
    }
    secs.sort_by(|a, b| b.1.total_cmp(&a.1));
    secs.into_iter()
        .map(|(name, secs)| (name, secs * 1e6 / complete as f64))
        .collect()
}

/// The 1-minute load average (0 if unreadable).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|l| l.parse().ok()))
        .unwrap_or(0.0)
}

/// sluice only: start-up to `/ready` and memory with three transforms
/// (json-telemetry twice with different configs, cayenne-lpp), each on its
/// own pty; the json-telemetry gateway is fed 100 frames/s for 3 s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartupResult {
    /// `cold` (empty cache: compiles) or `cached` (`.cwasm` cache).
    pub cache: String,
    /// How the sluice binary's pages were in the page cache: `as found`
    /// (usually as the build wrote them) or `read from disk` (evicted just
    /// before the spawn, as after a reboot); see
    /// [`crate::procfs::evict_from_page_cache`].
    #[serde(default)]
    pub binary_pages: String,
    /// Spawn → `GET /ready` answers 200 (MQTT connected).
    pub ready_ms: Option<f64>,
    /// Spawn → first frame's last message at the subscriber.
    pub first_frame_ms: Option<f64>,
    /// VmRSS after 3 s at 100 frames/s, KiB.
    pub rss_kib: u64,
    /// VmHWM then, KiB.
    pub hwm_kib: u64,
    /// RssAnon then, KiB: what the process itself allocated.
    #[serde(default)]
    pub rss_anon_kib: u64,
    /// RssFile then, KiB: mapped pages of the binary and the libraries.
    #[serde(default)]
    pub rss_file_kib: u64,
    /// CPU seconds from spawn to ready.
    pub startup_cpu_ms: f64,
    /// Context switches per second of all its threads once the feed
    /// stopped: how often an idle host wakes a core.
    #[serde(default)]
    pub idle_wakeups_per_s: Option<f64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Quiet time before the idle wake-ups are counted (the epoch ticker
/// sleeps after an idle second), and how long they are counted.
const IDLE_SETTLE: Duration = Duration::from_millis(1500);
const IDLE_WINDOW: Duration = Duration::from_secs(3);

/// [`StartupResult::binary_pages`] of a run that evicted the binary first.
pub const READ_FROM_DISK: &str = "read from disk";

/// Runs the start-up measurement once: `cold` with an empty `.cwasm` cache,
/// `evict` with the sluice binary dropped from the page cache first.
pub fn startup(ctx: &RunContext<'_>, cold: bool, evict: bool) -> StartupResult {
    let mut result = StartupResult {
        cache: if cold { "cold" } else { "cached" }.into(),
        binary_pages: if evict { READ_FROM_DISK } else { "as found" }.into(),
        ready_ms: None,
        first_frame_ms: None,
        rss_kib: 0,
        hwm_kib: 0,
        rss_anon_kib: 0,
        rss_file_kib: 0,
        startup_cpu_ms: 0.0,
        idle_wakeups_per_s: None,
        error: None,
    };
    if evict && let Err(e) = crate::procfs::evict_from_page_cache(&ctx.paths.sluice_bin) {
        result.error = Some(format!("{e:#}"));
        return result;
    }
    if let Err(e) = startup_inner(ctx, cold, &mut result) {
        result.error = Some(format!("{e:#}"));
    }
    result
}

fn startup_inner(ctx: &RunContext<'_>, cold: bool, result: &mut StartupResult) -> Result<()> {
    use crate::sut::SluicePipeline;
    let sub = Subscriber::start(
        ctx.broker.port,
        &format!("bench-sub-{}", ctx.run_id),
        1,
        1000,
    )?;
    let mut gateway = Pty::open()?;
    let plant2 = Pty::open()?;
    let lpp = Pty::open()?;
    write_frames(&mut gateway, 1, 1)?;
    let cold_dir = ctx.run_dir.join("cold-data");
    let proc = spawn(Launch {
        sut: Sut::Sluice,
        paths: ctx.paths,
        broker_port: ctx.broker.port,
        pty: None,
        qos: 1,
        run_dir: ctx.run_dir,
        run_id: ctx.run_id,
        sluice_pipelines: Some(vec![
            SluicePipeline::gateway(&gateway.path, "iiot", 1),
            SluicePipeline::gateway(&plant2.path, "plant2", 1),
            SluicePipeline::cayenne(&lpp.path),
        ]),
        sluice_data_dir: cold.then(|| cold_dir.clone()),
        influx: None,
    })?;
    let mut target = Target {
        proc,
        pty: Some(gateway),
    };
    let ready = target.proc.wait_ready_http(Duration::from_secs(30))?;
    let at_ready = target.proc.sample()?;
    result.ready_ms = Some((ready - target.proc.spawned_ns) as f64 / 1e6);
    result.startup_cpu_ms = at_ready.cpu_secs * 1e3;
    if sub.wait_until(Duration::from_secs(10), |c| c.done_ns[0] != 0) {
        result.first_frame_ms =
            Some((sub.with(|c| c.done_ns[0]) - target.proc.spawned_ns) as f64 / 1e6);
    }
    target.write(2, Pace::Rate(100.0), 300, 3.0)?;
    sub.wait_frames(2, 300, DRAIN_IDLE, DRAIN_CAP);
    let s = target.proc.sample()?;
    result.rss_kib = s.rss_kib;
    result.hwm_kib = s.hwm_kib;
    result.rss_anon_kib = s.rss_anon_kib;
    result.rss_file_kib = s.rss_file_kib;
    std::thread::sleep(IDLE_SETTLE);
    let before = target.proc.sample()?.context_switches;
    std::thread::sleep(IDLE_WINDOW);
    let after = target.proc.sample()?.context_switches;
    result.idle_wakeups_per_s =
        Some(after.saturating_sub(before) as f64 / IDLE_WINDOW.as_secs_f64());
    target.proc.stop();
    drop(sub);
    if cold {
        let _ = std::fs::remove_dir_all(&cold_dir);
    }
    Ok(())
}
