//! Results: what a run keeps (`results.json`), the summaries and ratios
//! computed from it, and `report.md` with its charts.
//!
//! Aggregation across rounds: latency percentiles pool every frame of every
//! round; CPU and context switches per frame are totals over total frames;
//! CPU share and steady RSS are medians; peak RSS is the largest; throughput
//! is the best round (the machine is shared, so a slower round measures the
//! neighbours); a fixed rate counts as kept up only if every round kept it
//! up.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::run::{Percentiles, RunResult, StartupResult, StepResult};
use crate::sut::{Paths, Sut};

/// The machine and the software versions of a run.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Machine {
    /// `date -u`.
    pub date: String,
    /// CPU model.
    pub cpu: String,
    /// Online cores.
    pub cores: usize,
    /// MemTotal, GiB.
    pub memory_gib: f64,
    /// `uname -sr`.
    pub kernel: String,
    /// /proc/loadavg at the start.
    pub load_at_start: String,
    /// /proc/loadavg at the end.
    #[serde(default)]
    pub load_at_end: String,
    /// sluice's git commit (+ `-dirty` with uncommitted changes).
    pub sluice_commit: String,
    /// The sluice binary measured, relative to the repository when inside it.
    #[serde(default)]
    pub sluice_binary: String,
    /// Versions of mosquitto, node, Node-RED, the serial node, Python, paho, pyserial.
    pub versions: BTreeMap<String, String>,
}

impl Machine {
    /// Reads what it can; anything unreadable stays empty.
    pub fn collect(repo: &Path, paths: &Paths) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mut versions = BTreeMap::new();
        let mut version = |name: &str, program: &Path, args: &[&str]| {
            if let Some(v) = output(program, args) {
                versions.insert(name.to_owned(), v);
            }
        };
        if let Ok(mosquitto) = crate::util::program("mosquitto") {
            // `mosquitto -h` prints "mosquitto version 2.0.11" first and exits 3.
            version("mosquitto", &mosquitto, &["-h"]);
        }
        version("node", &paths.node_bin, &["--version"]);
        let py = paths.python_bin();
        version("python", &py, &["--version"]);
        version(
            "paho-mqtt",
            &py,
            &["-c", "import paho.mqtt; print(paho.mqtt.__version__)"],
        );
        version(
            "pyserial",
            &py,
            &["-c", "import serial; print(serial.__version__)"],
        );
        for (name, pkg) in [
            ("node-red", "node-red"),
            ("node-red-node-serialport", "node-red-node-serialport"),
            ("serialport", "serialport"),
        ] {
            let file = paths
                .peers_dir
                .join("node_modules")
                .join(pkg)
                .join("package.json");
            if let Some(v) = std::fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|j| j["version"].as_str().map(str::to_owned))
            {
                versions.insert(name.to_owned(), v);
            }
        }
        let git = Path::new("git");
        let commit = output_in(git, &["rev-parse", "--short=12", "HEAD"], repo).unwrap_or_default();
        let dirty = output_in(
            git,
            &[
                "status",
                "--porcelain",
                "--",
                "host",
                "guest-sdk",
                "transforms",
                "wit",
            ],
            repo,
        )
        .map(|s| !s.is_empty())
        .unwrap_or(false);
        Machine {
            date: output(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / 1024.0 / 1024.0),
            kernel: output(Path::new("uname"), &["-sr"]).unwrap_or_default(),
            load_at_start: loadavg(),
            load_at_end: String::new(),
            sluice_commit: if dirty {
                format!("{commit} + uncommitted changes in host/")
            } else {
                commit
            },
            sluice_binary: paths
                .sluice_bin
                .strip_prefix(repo)
                .unwrap_or(&paths.sluice_bin)
                .display()
                .to_string(),
            versions,
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn output(program: &Path, args: &[&str]) -> Option<String> {
    output_in(program, args, Path::new("."))
}

fn output_in(program: &Path, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let line = text.lines().next()?.trim();
    let line = line.strip_prefix("mosquitto version ").unwrap_or(line);
    let line = line.strip_prefix("Python ").unwrap_or(line);
    Some(line.to_owned())
}

/// Pooled latency of one system in one phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pooled {
    /// Phase id.
    pub phase: String,
    /// System.
    pub sut: Sut,
    /// Percentiles over every measured frame of every round.
    pub latency: Option<Percentiles>,
}

/// Everything a run produced (`results.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// Machine and versions.
    pub machine: Machine,
    /// How the run was started.
    pub command: String,
    /// Rounds.
    pub rounds: usize,
    /// Step-duration scale.
    pub scale: f64,
    /// Every (system, phase, round).
    pub runs: Vec<RunResult>,
    /// sluice start-up runs.
    pub startup: Vec<StartupResult>,
    /// Pooled latencies of the fixed-rate phases.
    pub pooled: Vec<Pooled>,
    /// Wall time of the whole run.
    pub wall_secs: f64,
    /// Raw latencies by (phase, system), for pooling; not saved.
    #[serde(skip)]
    pub raw: BTreeMap<(String, Sut), Vec<u64>>,
}

impl Results {
    /// Adds a run's fixed-rate latencies to the pool and recomputes its percentiles.
    pub fn absorb_latencies(&mut self, run: &RunResult) {
        let key = (run.phase.clone(), run.sut);
        let pool = self.raw.entry(key).or_default();
        for step in run.steps.iter().filter(|s| s.kind == "rate") {
            pool.extend_from_slice(&step.latencies_ns);
        }
        let mut copy = pool.clone();
        let latency = Percentiles::of(&mut copy);
        self.pooled
            .retain(|p| !(p.phase == run.phase && p.sut == run.sut));
        self.pooled.push(Pooled {
            phase: run.phase.clone(),
            sut: run.sut,
            latency,
        });
    }

    fn runs(&self, phase: &str, sut: Sut) -> impl Iterator<Item = &RunResult> {
        let phase = phase.to_owned();
        self.runs
            .iter()
            .filter(move |r| r.phase == phase && r.sut == sut)
    }

    fn suts(&self) -> Vec<Sut> {
        Sut::ALL
            .into_iter()
            .filter(|s| self.runs.iter().any(|r| r.sut == *s))
            .collect()
    }

    fn errors(&self, phase: &str, sut: Sut) -> Vec<String> {
        self.runs(phase, sut)
            .filter_map(|r| r.error.as_ref())
            .map(|e| e.lines().next().unwrap_or_default().to_owned())
            .collect()
    }
}

/// A fixed-rate phase, summarised for one system.
#[derive(Debug, Clone)]
pub struct RateSummary {
    /// Every round kept up (zero loss, on schedule, drained).
    pub kept_up: bool,
    /// Messages lost over all rounds.
    pub lost: u64,
    /// Median delivered frames/s.
    pub delivered_rate: f64,
    /// Pooled latency.
    pub latency: Option<Percentiles>,
    /// p99 of each round, in round order.
    pub p99_by_round: Vec<f64>,
    /// Latest arrival of a step's last frame after it was due, ms.
    pub late_ms: f64,
    /// Median 1-minute load average at the end of the step.
    pub load_1m: f64,
    /// Total CPU / total frames, µs.
    pub cpu_us_per_frame: f64,
    /// Total context switches / total frames, over the rounds that counted
    /// them.
    pub ctx_switches_per_frame: Option<f64>,
    /// Median CPU share (1.0 = one core).
    pub cpu_cores: f64,
    /// Median broker CPU share.
    pub broker_cores: f64,
    /// Median VmRSS at the end, MiB.
    pub rss_mib: f64,
    /// Largest VmHWM, MiB.
    pub hwm_mib: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A table row for a system whose runs of `phase` all failed: the first
/// error, then `empty` empty cells.
fn failed_row(md: &mut String, results: &Results, phase: &str, sut: Sut, empty: usize) {
    if let Some(error) = results.errors(phase, sut).first() {
        let _ = writeln!(
            md,
            "| {} | failed: {} |{}",
            sut.label(),
            error.replace('|', "\\|"),
            " |".repeat(empty)
        );
    }
}

/// The InfluxDB phase: MQTT as in the latency tables, plus what reached the
/// database.
fn influx_table(md: &mut String, results: &Results, suts: &[Sut]) {
    const PHASE: &str = "influx-1000";
    if !suts
        .iter()
        .any(|&s| results.runs(PHASE, s).next().is_some())
    {
        return;
    }
    let _ = writeln!(md, "\n## With InfluxDB too: 1000 frames/s (QoS 1)\n");
    let _ = writeln!(
        md,
        "The same gateway writing each frame's four points to a real influxd (1.x, a database \
         per run) as well as the eleven MQTT messages: sluice with its InfluxDB writer \
         (default batches: 5000 lines or 1 s), Node-RED with node-red-contrib-influxdb's \
         `influxdb out` (one write per frame), Python with a `POST /write` per frame \
         (urllib, in the read loop), the bare publisher with pre-formatted lines in \
         sluice's batches. *Points*: four per frame that arrived complete over MQTT, \
         against what the database held once the count settled (or after the system's \
         shutdown flush, if more), all rounds. CPU and switches are the system's own over \
         the step (until its MQTT messages were in), not influxd's.\n"
    );
    let _ = writeln!(
        md,
        "| system | kept up | lost msgs | p99 ms (median of rounds) | CPU % of a core | CPU µs/frame | × sluice | switches/frame | points expected | points stored | points lost | settled after ms | steady RSS MiB |"
    );
    let _ = writeln!(
        md,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &sut in suts {
        let Some(s) = rate_summary(results, PHASE, sut) else {
            failed_row(md, results, PHASE, sut, 11);
            continue;
        };
        let checks: Vec<_> = results
            .runs(PHASE, sut)
            .filter_map(|r| r.influx.as_ref())
            .collect();
        let expected: u64 = checks.iter().map(|c| c.points_expected).sum();
        let stored: u64 = checks
            .iter()
            .map(|c| c.points_stored.max(c.points_after_stop))
            .sum();
        let lost: u64 = checks.iter().map(|c| c.lost()).sum();
        let settle = median(checks.iter().map(|c| c.settle_ms).collect());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {:.0} | {:.1} |",
            sut.label(),
            if s.kept_up {
                "yes".to_owned()
            } else {
                format!("**no** (last frame {:.0} ms late)", s.late_ms)
            },
            s.lost,
            median(s.p99_by_round.clone()),
            s.cpu_cores * 100.0,
            s.cpu_us_per_frame,
            fmt_ratio(paired_ratio(
                results,
                PHASE,
                sut,
                Sut::Sluice,
                metric::cpu_per_frame
            )),
            num(s.ctx_switches_per_frame, 1),
            expected,
            stored,
            if lost == 0 {
                "0".to_owned()
            } else {
                format!("**{lost}**")
            },
            settle,
            s.rss_mib,
        );
    }
}

/// Summary of a fixed-rate phase for `sut`, if any round measured it.
pub fn rate_summary(results: &Results, phase: &str, sut: Sut) -> Option<RateSummary> {
    let steps: Vec<&StepResult> = results
        .runs(phase, sut)
        .filter_map(|r| r.steps.iter().find(|s| s.kind == "rate"))
        .collect();
    if steps.is_empty() {
        return None;
    }
    let failed_rounds = results
        .runs(phase, sut)
        .filter(|r| r.steps.is_empty())
        .count();
    let cpu: f64 = steps.iter().map(|s| s.cpu_secs).sum();
    let frames: u64 = steps.iter().map(|s| s.frames_complete).sum();
    // Results from before switches were counted have none.
    let (switches, switch_frames) = steps
        .iter()
        .filter_map(|s| Some((s.ctx_switches?, s.frames_complete)))
        .fold((0u64, 0u64), |(n, f), (sn, sf)| (n + sn, f + sf));
    Some(RateSummary {
        kept_up: failed_rounds == 0 && steps.iter().all(|s| s.kept_up),
        lost: steps.iter().map(|s| s.messages_lost).sum(),
        delivered_rate: median(steps.iter().map(|s| s.delivered_rate).collect()),
        latency: results
            .pooled
            .iter()
            .find(|p| p.phase == phase && p.sut == sut)
            .and_then(|p| p.latency),
        cpu_us_per_frame: if frames > 0 {
            cpu * 1e6 / frames as f64
        } else {
            0.0
        },
        ctx_switches_per_frame: (switch_frames > 0).then(|| switches as f64 / switch_frames as f64),
        p99_by_round: steps
            .iter()
            .filter_map(|s| s.latency.map(|l| l.p99))
            .collect(),
        late_ms: steps.iter().map(|s| s.late_ms).fold(0.0, f64::max),
        load_1m: median(steps.iter().map(|s| s.load_1m).collect()),
        cpu_cores: median(steps.iter().map(|s| s.cpu_cores).collect()),
        broker_cores: median(steps.iter().map(|s| s.broker_cores).collect()),
        rss_mib: median(steps.iter().map(|s| s.rss_kib as f64 / 1024.0).collect()),
        hwm_mib: steps
            .iter()
            .map(|s| s.hwm_kib as f64 / 1024.0)
            .fold(0.0, f64::max),
    })
}

/// A zero-loss search, summarised for one system.
#[derive(Debug, Clone)]
pub struct SearchSummary {
    /// Burst: delivered frames/s, median of the rounds.
    pub burst_rate: f64,
    /// Messages lost in the bursts (all rounds).
    pub burst_lost: u64,
    /// The highest verified rate of each round (None: none kept up).
    pub sustained_by_round: Vec<Option<f64>>,
    /// Median of the rounds that kept one up.
    pub sustained: Option<f64>,
    /// Median p99 at those rates.
    pub sustained_p99: Option<f64>,
    /// Median CPU share at those rates.
    pub sustained_cores: Option<f64>,
}

/// The highest fixed rate a search run kept up.
fn sustained_step(run: &RunResult) -> Option<&StepResult> {
    run.steps
        .iter()
        .filter(|s| s.kind == "verify" && s.kept_up)
        .max_by(|a, b| {
            a.target_rate
                .unwrap_or(0.0)
                .total_cmp(&b.target_rate.unwrap_or(0.0))
        })
}

fn burst_rate(run: &RunResult) -> Option<f64> {
    run.steps
        .iter()
        .find(|s| s.kind == "burst")
        .map(|s| s.delivered_rate)
}

fn sustained_rate(run: &RunResult) -> Option<f64> {
    // A run that measured a burst but kept no rate up sustained nothing.
    burst_rate(run)?;
    Some(
        sustained_step(run)
            .and_then(|s| s.target_rate)
            .unwrap_or(0.0),
    )
}

/// Summary of a search phase for `sut`, if any round measured it.
pub fn search_summary(results: &Results, phase: &str, sut: Sut) -> Option<SearchSummary> {
    let runs: Vec<&RunResult> = results.runs(phase, sut).collect();
    let bursts: Vec<f64> = runs.iter().filter_map(|r| burst_rate(r)).collect();
    if bursts.is_empty() {
        return None;
    }
    let sustained: Vec<&StepResult> = runs.iter().filter_map(|r| sustained_step(r)).collect();
    let some = |v: Vec<f64>| (!v.is_empty()).then(|| median(v));
    Some(SearchSummary {
        burst_rate: median(bursts),
        burst_lost: runs
            .iter()
            .flat_map(|r| r.steps.iter().filter(|s| s.kind == "burst"))
            .map(|s| s.messages_lost)
            .sum(),
        sustained_by_round: runs
            .iter()
            .map(|r| sustained_step(r).and_then(|s| s.target_rate))
            .collect(),
        sustained: some(sustained.iter().filter_map(|s| s.target_rate).collect()),
        sustained_p99: some(
            sustained
                .iter()
                .filter_map(|s| s.latency.map(|l| l.p99))
                .collect(),
        ),
        sustained_cores: some(sustained.iter().map(|s| s.cpu_cores).collect()),
    })
}

/// `metric(a) / metric(b)` in each round where both were measured, and
/// the median of those ratios: systems measured back to back in a round
/// share that round's conditions on a busy machine, so their ratio is
/// steadier than the ratio of two medians.
pub fn paired_ratio(
    results: &Results,
    phase: &str,
    a: Sut,
    b: Sut,
    metric: impl Fn(&RunResult) -> Option<f64>,
) -> Option<f64> {
    let ratios: Vec<f64> = results
        .runs(phase, a)
        .filter_map(|ra| {
            let rb = results.runs(phase, b).find(|rb| rb.round == ra.round)?;
            let (va, vb) = (metric(ra)?, metric(rb)?);
            (vb > 0.0).then_some(va / vb)
        })
        .collect();
    (!ratios.is_empty()).then(|| median(ratios))
}

/// Per-round metrics of the fixed-rate and search phases.
pub mod metric {
    use crate::run::RunResult;

    /// The fixed-rate step.
    fn rate_step(run: &RunResult) -> Option<&crate::run::StepResult> {
        run.steps.iter().find(|s| s.kind == "rate")
    }

    /// CPU µs per frame of the fixed-rate step.
    pub fn cpu_per_frame(run: &RunResult) -> Option<f64> {
        rate_step(run)
            .filter(|s| s.frames_complete > 0)
            .map(|s| s.cpu_us_per_frame)
    }

    /// p99 of the fixed-rate step.
    pub fn p99(run: &RunResult) -> Option<f64> {
        rate_step(run).and_then(|s| s.latency.map(|l| l.p99))
    }

    /// Burst delivered frames/s.
    pub fn burst(run: &RunResult) -> Option<f64> {
        super::burst_rate(run)
    }

    /// Highest verified rate (0 when none was kept up).
    pub fn sustained(run: &RunResult) -> Option<f64> {
        super::sustained_rate(run)
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "—".into(), |r| format!("{r:.2}×"))
}

/// Median start-up of `sut` over all its runs (ms).
pub fn startup_ms(results: &Results, sut: Sut) -> Option<f64> {
    let v: Vec<f64> = results
        .runs
        .iter()
        .filter(|r| r.sut == sut)
        .filter_map(|r| r.startup_ms)
        .collect();
    (!v.is_empty()).then(|| median(v))
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.decimals$}"))
}

fn rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// One progress line for a run.
pub fn run_line(r: &RunResult) -> String {
    let mut line = format!(
        "{:<12} {:<24} start {:>8} ms",
        r.phase,
        r.sut.label(),
        num(r.startup_ms, 0)
    );
    for s in &r.steps {
        let _ = write!(
            line,
            " | {}{} {}/{} frames, lost {}, {} f/s, p99 {} ms, {:.1} µs/frame, {} switches/frame, {:.0}% cpu{}",
            s.kind,
            s.target_rate
                .map(|r| format!("@{r:.0}"))
                .unwrap_or_default(),
            s.frames_complete,
            s.frames_written,
            s.messages_lost,
            rate(s.delivered_rate),
            num(s.latency.map(|l| l.p99), 2),
            s.cpu_us_per_frame,
            num(s.ctx_switches_per_frame, 1),
            s.cpu_cores * 100.0,
            if s.kept_up { "" } else { " (not kept up)" }
        );
        if let Some(call) = s.transform_call_us {
            let _ = write!(line, ", transform call {call:.1} µs");
        }
        let threads: Vec<String> = s
            .cpu_us_per_frame_by_thread
            .iter()
            .filter(|(_, us)| *us > 0.0)
            .map(|(name, us)| format!("{name} {us:.1}"))
            .collect();
        if threads.len() > 1 {
            let _ = write!(line, " (µs/frame by thread: {})", threads.join(", "));
        }
        if let Some(sparkplug) = s.sparkplug_latency {
            let _ = write!(
                line,
                ", Sparkplug {}/{} frames, p99 {} ms",
                sparkplug.n,
                s.frames_written,
                num(Some(sparkplug.p99), 2)
            );
        }
    }
    if let Some(c) = &r.influx {
        let _ = write!(
            line,
            " | influx {}/{} points ({} after stop, {} lost), settled in {:.0} ms",
            c.points_stored,
            c.points_expected,
            c.points_after_stop,
            c.lost(),
            c.settle_ms
        );
    }
    if let Some(e) = &r.error {
        let _ = write!(line, " | ERROR {}", e.lines().next().unwrap_or_default());
    }
    for s in r.steps.iter().filter(|s| !s.incomplete.is_empty()) {
        let _ = write!(line, " | incomplete: {}", s.incomplete.join(", "));
    }
    line
}

/// One progress line for a start-up run.
pub fn startup_line(r: &StartupResult) -> String {
    format!(
        "startup ({}, binary {}): ready {} ms, first frame {} ms, RSS {:.1} MiB \
         (anon {:.1}, file {:.1}), peak {:.1} MiB, idle {} wake-ups/s{}",
        r.cache,
        r.binary_pages,
        num(r.ready_ms, 1),
        num(r.first_frame_ms, 1),
        r.rss_kib as f64 / 1024.0,
        r.rss_anon_kib as f64 / 1024.0,
        r.rss_file_kib as f64 / 1024.0,
        r.hwm_kib as f64 / 1024.0,
        num(r.idle_wakeups_per_s, 1),
        r.error
            .as_ref()
            .map(|e| format!(" ERROR {e}"))
            .unwrap_or_default()
    )
}

/// A target and whether it was met.
pub struct Target {
    /// The target, as the issue states it.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met, not met, or not measured.
    pub verdict: &'static str,
}

/// The targets against this run's numbers.
pub fn targets(results: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    };
    out.push(Target {
        target: "Wasm transform ≤ 2× the same decode compiled natively".into(),
        measured: "not measured end to end; see \"Transform call: native vs Wasm\" (`cargo bench -p sluice --bench transform`)".into(),
        verdict: "see there",
    });
    for (phase, qos) in [("search-qos1", 1), ("search-qos0", 0)] {
        for sut in [Sut::Sluice, Sut::SluiceDurable, Sut::SluiceDurableInterval] {
            let s = search_summary(results, phase, sut).and_then(|s| s.sustained);
            let b = search_summary(results, phase, Sut::Bare).and_then(|s| s.sustained);
            let r = paired_ratio(results, phase, sut, Sut::Bare, metric::sustained);
            let burst = paired_ratio(results, phase, sut, Sut::Bare, metric::burst);
            out.push(Target {
                target: format!(
                    "Throughput ≥ 90% of the bare publisher's zero-loss frames/s, QoS {qos} ({})",
                    sut.label()
                ),
                measured: format!(
                    "sustained {} vs {} frames/s (medians); per-round ratio {} (bursts: {})",
                    num(s, 0),
                    num(b, 0),
                    r.map_or("—".into(), |r| format!("{:.1}%", r * 100.0)),
                    burst.map_or("—".into(), |r| format!("{:.1}%", r * 100.0)),
                ),
                verdict: verdict(r.map(|r| r >= 0.9)),
            });
        }
    }
    let cpu = |sut| rate_summary(results, "rate-1000", sut).map(|s| s.cpu_us_per_frame);
    let (sl, bare, nr) = (cpu(Sut::Sluice), cpu(Sut::Bare), cpu(Sut::NodeRed));
    let vs_bare = paired_ratio(
        results,
        "rate-1000",
        Sut::Sluice,
        Sut::Bare,
        metric::cpu_per_frame,
    );
    let vs_nr = paired_ratio(
        results,
        "rate-1000",
        Sut::Sluice,
        Sut::NodeRed,
        metric::cpu_per_frame,
    );
    out.push(Target {
        target: "CPU per frame at 1000 frames/s ≤ 1.5× the bare publisher's".into(),
        measured: format!(
            "{} vs {} µs/frame; per-round ratio {}",
            num(sl, 1),
            num(bare, 1),
            fmt_ratio(vs_bare)
        ),
        verdict: verdict(vs_bare.map(|r| r <= 1.5)),
    });
    out.push(Target {
        target: "CPU per frame at 1000 frames/s ≤ 1/5 of Node-RED's".into(),
        measured: format!(
            "{} vs {} µs/frame; per-round ratio {}",
            num(sl, 1),
            num(nr, 1),
            fmt_ratio(vs_nr)
        ),
        verdict: verdict(vs_nr.map(|r| r <= 0.2)),
    });
    for (sut, limit) in [
        (Sut::Sluice, 1.5),
        (Sut::SluiceDurable, 5.0),
        (Sut::SluiceDurableInterval, 5.0),
    ] {
        let summary = rate_summary(results, "rate-1000", sut);
        let p99 = summary.as_ref().map(|s| median(s.p99_by_round.clone()));
        let bare_p99 =
            rate_summary(results, "rate-1000", Sut::Bare).map(|s| median(s.p99_by_round));
        out.push(Target {
            target: format!(
                "p99 end-to-end at 1000 frames/s, QoS 1 ≤ {limit} ms ({})",
                sut.label()
            ),
            measured: format!(
                "{} ms (median of the rounds' p99; the bare publisher: {} ms)",
                num(p99, 1),
                num(bare_p99, 1)
            ),
            verdict: verdict(p99.map(|p| p <= limit)),
        });
    }
    let cached: Vec<&StartupResult> = results
        .startup
        .iter()
        .filter(|s| s.cache == "cached" && s.error.is_none())
        .collect();
    // The verdict is taken with the binary read from disk (how a box that
    // starts sluice at boot runs it); the figure with the binary's pages as
    // the build left them in the page cache is shown next to it.
    let mib = |kib: u64| kib as f64 / 1024.0;
    let (from_disk, as_found): (Vec<&StartupResult>, Vec<&StartupResult>) = cached
        .iter()
        .partition(|s| s.binary_pages == crate::run::READ_FROM_DISK);
    let median_of = |rows: &[&StartupResult], f: &dyn Fn(&StartupResult) -> u64| {
        (!rows.is_empty()).then(|| median(rows.iter().map(|s| mib(f(s))).collect()))
    };
    let judged = if from_disk.is_empty() {
        &as_found
    } else {
        &from_disk
    };
    let rss = median_of(judged, &|s| s.rss_kib);
    let mut measured = format!(
        "{} MiB (anon {}, file {})",
        num(rss, 1),
        num(median_of(judged, &|s| s.rss_anon_kib), 1),
        num(median_of(judged, &|s| s.rss_file_kib), 1)
    );
    if !from_disk.is_empty() {
        measured.push_str(" with the binary read from disk");
        if !as_found.is_empty() {
            let _ = write!(
                measured,
                "; {} MiB (file {}) with its pages as the build left them",
                num(median_of(&as_found, &|s| s.rss_kib), 1),
                num(median_of(&as_found, &|s| s.rss_file_kib), 1)
            );
        }
    }
    out.push(Target {
        target: "Steady RSS ≤ 16 MB with three transforms loaded from the .cwasm cache".into(),
        measured,
        verdict: verdict(rss.map(|r| r * 1.048_576 <= 16.0)),
    });
    let ready =
        (!cached.is_empty()).then(|| median(cached.iter().filter_map(|s| s.ready_ms).collect()));
    out.push(Target {
        target: "Start-up to ready ≤ 50 ms (three transforms, cached)".into(),
        measured: format!("{} ms", num(ready, 1)),
        verdict: verdict(ready.map(|r| r <= 50.0)),
    });
    out
}

/// Writes `report.md` and the charts into `out`.
pub fn write(results: &Results, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, svg) in crate::svg::charts(results) {
        let path = out.join(name);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    let path = out.join("report.md");
    std::fs::write(&path, markdown(results)).with_context(|| format!("writing {}", path.display()))
}

/// The report.
pub fn markdown(results: &Results) -> String {
    let mut md = String::new();
    let m = &results.machine;
    let _ = writeln!(
        md,
        "# sluice end to end: Node-RED, Python and a bare publisher\n"
    );
    let _ = writeln!(
        md,
        "Run of {} — `{}` — {} round(s), {:.0} s in all. Generated by `sluice-bench`; \
         raw numbers in `results.json`.\n",
        m.date, results.command, results.rounds, results.wall_secs
    );
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(
        md,
        "* {} cores ({}), {:.0} GiB, {}; load average {} at the start, {} at the end \
         (other work shares the machine: compare ratios within a run, not absolute numbers \
         across runs).",
        m.cores, m.cpu, m.memory_gib, m.kernel, m.load_at_start, m.load_at_end
    );
    // `target/<profile>/sluice` names its cargo profile.
    let profile = Path::new(&m.sluice_binary)
        .parent()
        .and_then(Path::file_name)
        .map(|p| format!(", the `{}` profile", p.to_string_lossy()))
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "* sluice {} (`{}`{profile}).",
        m.sluice_commit,
        if m.sluice_binary.is_empty() {
            "target/release/sluice"
        } else {
            &m.sluice_binary
        }
    );
    let versions: Vec<String> = m.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(md, "* {}.", versions.join(", "));
    let _ = writeln!(
        md,
        "* The generator (bench), the system under test, mosquitto and the subscriber \
         (bench) share the cores.\n"
    );
    md.push_str(&tables(results));
    let _ = writeln!(md, "\n## Every run\n");
    let _ = writeln!(
        md,
        "| round | phase | pos | system | start-up ms | step | frames complete / written | lost msgs | delivered f/s | max lag ms | drain ms | p50 ms | p99 ms | CPU µs/frame | switches/frame | transform call µs | CPU % | broker % | bench % | RSS MiB | error |"
    );
    let _ = writeln!(
        md,
        "|---:|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for r in &results.runs {
        let error = r
            .error
            .as_ref()
            .map(|e| e.lines().next().unwrap_or_default().replace('|', "\\|"))
            .unwrap_or_default();
        if r.steps.is_empty() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | | | | | | | | | | | | | | | | {} |",
                r.round,
                r.phase,
                r.position,
                r.sut.label(),
                num(r.startup_ms, 0),
                error
            );
        }
        for (i, s) in r.steps.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {}{} | {} / {} | {} | {} | {:.1} | {:.0} | {} | {} | {:.1} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {} |",
                r.round,
                r.phase,
                r.position,
                r.sut.label(),
                if i == 0 {
                    num(r.startup_ms, 0)
                } else {
                    String::new()
                },
                s.kind,
                s.target_rate
                    .map(|t| format!(" @{t:.0}"))
                    .unwrap_or_default(),
                s.frames_complete,
                s.frames_written,
                s.messages_lost,
                rate(s.delivered_rate),
                s.max_lag_ms,
                s.drain_ms,
                num(s.latency.map(|l| l.p50), 2),
                num(s.latency.map(|l| l.p99), 2),
                s.cpu_us_per_frame,
                num(s.ctx_switches_per_frame, 1),
                num(s.transform_call_us, 1),
                s.cpu_cores * 100.0,
                s.broker_cores * 100.0,
                s.bench_cores * 100.0,
                s.rss_kib as f64 / 1024.0,
                if i + 1 == r.steps.len() {
                    error.as_str()
                } else {
                    ""
                }
            );
        }
    }
    let anomalies: Vec<String> = results
        .runs
        .iter()
        .flat_map(|r| {
            r.anomalies
                .iter()
                .map(move |a| format!("* {} {} round {}: {a}", r.phase, r.sut.label(), r.round))
        })
        .collect();
    if !anomalies.is_empty() {
        let _ = writeln!(md, "\nSubscriber anomalies:\n\n{}", anomalies.join("\n"));
    }
    md
}

/// The summary tables and chart links (also what BENCHMARKS.md quotes).
pub fn tables(results: &Results) -> String {
    let mut md = String::new();
    let suts = results.suts();

    let _ = writeln!(md, "## Throughput: zero-loss search\n");
    let _ = writeln!(md, "![throughput](throughput.svg)\n");
    let _ = writeln!(
        md,
        "*burst*: frames written back to back for 3 s or 10,000 frames, as fast as the system \
         reads the pty (the pty pushes back, like hardware flow control); delivered frames/s = \
         complete frames / (last message − first write). *sustained*: the highest fixed rate \
         (0.9, 0.75, 0.6 or 0.45 × the burst rate, tried in that order) kept up for 3 s: zero \
         loss, and the last frame delivered ≤ 250 ms after it was due (first write + \
         (n − 1) / rate), so whatever backlog built up on the way was gone by the end. *× bare*, *× sluice*: the ratio within each round (the systems \
         ran back to back), median over the rounds; a round where nothing was kept up counts \
         as 0.\n"
    );
    let _ = writeln!(
        md,
        "| system | burst frames/s | lost in bursts | sustained frames/s, QoS 1, each round | sustained (median) | × bare | × sluice | p99 there ms | CPU there % | sustained frames/s, QoS 0, each round | × bare (QoS 0) |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let rounds = |v: &[Option<f64>]| {
        v.iter()
            .map(|r| r.map_or("none".into(), rate))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for &sut in &suts {
        let Some(s) = search_summary(results, "search-qos1", sut) else {
            let errors = results.errors("search-qos1", sut);
            if !errors.is_empty() {
                let _ = writeln!(
                    md,
                    "| {} | failed: {} |{}",
                    sut.label(),
                    errors[0].replace('|', "\\|"),
                    " |".repeat(9)
                );
            }
            continue;
        };
        let q0 = search_summary(results, "search-qos0", sut);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            sut.label(),
            rate(s.burst_rate),
            s.burst_lost,
            rounds(&s.sustained_by_round),
            s.sustained.map_or("—".into(), rate),
            fmt_ratio(paired_ratio(
                results,
                "search-qos1",
                sut,
                Sut::Bare,
                metric::sustained
            )),
            fmt_ratio(paired_ratio(
                results,
                "search-qos1",
                sut,
                Sut::Sluice,
                metric::sustained
            )),
            num(s.sustained_p99, 1),
            num(s.sustained_cores.map(|c| c * 100.0), 0),
            q0.as_ref()
                .map_or("—".into(), |q| rounds(&q.sustained_by_round)),
            if q0.is_some() {
                fmt_ratio(paired_ratio(
                    results,
                    "search-qos0",
                    sut,
                    Sut::Bare,
                    metric::sustained,
                ))
            } else {
                "—".into()
            },
        );
    }

    for (phase, title) in [
        ("rate-100", "100 frames/s"),
        ("rate-1000", "1000 frames/s"),
        ("rate-10000", "10,000 frames/s"),
    ] {
        let _ = writeln!(md, "\n## Latency at {title} (QoS 1)\n");
        let _ = writeln!(
            md,
            "Generator write → the frame's 11th message at the subscriber. p99: each round's, and \
             their median; p50, p90, p99.9, max: every frame of every round pooled; *× sluice*: \
             the ratio within each round, median over the rounds. *Kept up*: zero loss and the last frame delivered ≤ 250 ms after it was \
             due. Where a system did not keep up, the pty pushed back on the generator (the bare \
             publisher: its client queue did) and latency counts from the delayed write, so \
             those percentiles understate the delay and are not comparable. \
             *switches/frame*: the system's voluntary and involuntary context switches over \
             its threads (`/proc/<pid>/task/*/status`), per frame. \
             *load*: the machine's 1-minute load average after the step (median).\n"
        );
        let _ = writeln!(
            md,
            "| system | kept up | delivered frames/s | lost msgs | p99 ms (median of rounds) | p99 each round | × sluice | p50 ms | p90 ms | p99.9 ms | max ms | CPU % of a core | CPU µs/frame | × sluice | switches/frame | broker CPU % | steady RSS MiB | peak RSS MiB | load |"
        );
        let _ = writeln!(
            md,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for &sut in &suts {
            let Some(s) = rate_summary(results, phase, sut) else {
                failed_row(&mut md, results, phase, sut, 17);
                continue;
            };
            let l = s.latency;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                sut.label(),
                if s.kept_up {
                    "yes".to_owned()
                } else {
                    format!("**no** (last frame {:.0} ms late)", s.late_ms)
                },
                rate(s.delivered_rate),
                s.lost,
                median(s.p99_by_round.clone()),
                s.p99_by_round
                    .iter()
                    .map(|p| format!("{p:.1}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                fmt_ratio(paired_ratio(results, phase, sut, Sut::Sluice, metric::p99)),
                num(l.map(|l| l.p50), 2),
                num(l.map(|l| l.p90), 2),
                num(l.map(|l| l.p999), 2),
                num(l.map(|l| l.max), 2),
                s.cpu_cores * 100.0,
                s.cpu_us_per_frame,
                fmt_ratio(paired_ratio(
                    results,
                    phase,
                    sut,
                    Sut::Sluice,
                    metric::cpu_per_frame
                )),
                num(s.ctx_switches_per_frame, 1),
                s.broker_cores * 100.0,
                s.rss_mib,
                s.hwm_mib,
                s.load_1m,
            );
        }
        if phase == "rate-1000" {
            let _ = writeln!(
                md,
                "\n![latency](latency.svg)\n\n![resources](resources.svg)"
            );
        }
    }

    influx_table(&mut md, results, &suts);

    let _ = writeln!(md, "\n## Start-up\n");
    let _ = writeln!(
        md,
        "Spawn → the first frame's last message at the subscriber (the frame was written \
         into the pty before the spawn), median over every run; the bare publisher: spawn → \
         connected.\n"
    );
    let _ = writeln!(md, "| system | start-up ms | × sluice |");
    let _ = writeln!(md, "|---|---:|---:|");
    let sl = startup_ms(results, Sut::Sluice);
    for &sut in &suts {
        let s = startup_ms(results, sut);
        let r = match (s, sl) {
            (Some(s), Some(sl)) if sl > 0.0 => Some(s / sl),
            _ => None,
        };
        let _ = writeln!(md, "| {} | {} | {} |", sut.label(), num(s, 0), fmt_ratio(r));
    }
    if !results.startup.is_empty() {
        let _ = writeln!(
            md,
            "\nsluice with three transforms (json-telemetry twice with different configs, \
             cayenne-lpp), each on its own pty; ready = spawn → `GET /ready` answers 200 \
             (transforms loaded, MQTT connected); RSS after 3 s of 100 frames/s on one of them; \
             idle wake-ups: context switches per second of all its threads over 3 s, 1.5 s \
             after that feed stopped. \
             \"read from disk\": the binary was dropped from the page cache before the spawn \
             (as after a reboot); \"as found\": its pages as the page cache had them, usually \
             as the build left them (the kernel maps cached pages around each fault, so the \
             file-backed part depends on what is cached).\n"
        );
        let _ = writeln!(
            md,
            "| cache | binary's pages | ready ms | first frame ms | CPU ms to ready (10 ms ticks) \
             | RSS MiB | anon MiB | file MiB | peak RSS MiB | idle wake-ups/s |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for s in &results.startup {
            if let Some(e) = &s.error {
                let _ = writeln!(
                    md,
                    "| {} | {} | failed: {} | | | | | | | |",
                    s.cache,
                    s.binary_pages,
                    e.lines().next().unwrap_or_default()
                );
                continue;
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                s.cache,
                s.binary_pages,
                num(s.ready_ms, 1),
                num(s.first_frame_ms, 1),
                s.startup_cpu_ms,
                s.rss_kib as f64 / 1024.0,
                s.rss_anon_kib as f64 / 1024.0,
                s.rss_file_kib as f64 / 1024.0,
                s.hwm_kib as f64 / 1024.0,
                num(s.idle_wakeups_per_s, 1)
            );
        }
    }

    let _ = writeln!(md, "\n## Targets\n");
    let _ = writeln!(md, "| target | measured | verdict |");
    let _ = writeln!(md, "|---|---|---|");
    for t in targets(results) {
        let _ = writeln!(md, "| {} | {} | {} |", t.target, t.measured, t.verdict);
    }
    md
}
