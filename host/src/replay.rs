//! `sluice replay`: feed capture files through the configured pipelines'
//! transforms and sinks — to re-decode history after fixing a transform, or
//! to test a config without hardware.
//!
//! Each capture file names the pipeline that recorded it; its frames go to
//! that pipeline of `--config` (or to `--pipeline`), with their recorded
//! receive times (points without a timestamp get the original time). Only
//! the pipelines being fed are started; nothing is read from serial ports
//! and nothing is captured. `--speed recorded` keeps the original pace,
//! `max` (default) goes as fast as the pipeline takes the frames
//! (backpressure). When every file is done the host drains and flushes as on
//! SIGTERM, then exits.
//!
//! So that a replay can run next to the live host, it uses MQTT client id
//! `<client_id>-replay` and state directory `<data_dir>/replay`.
//! `--stdout` prints what would leave the box as JSON lines instead of
//! sending it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PipelineConfig};
use crate::jsonout;
use crate::metrics::{Metrics, PipelineMetrics};
use crate::model::Frame;
use crate::runtime::{ModuleCache, Runtime};
use crate::source::Source;
use crate::source::capture::{CaptureReader, Tail};

/// Replay pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Speed {
    /// The recorded intervals between frames.
    Recorded,
    /// As fast as the pipelines take them.
    Max,
}

/// `sluice replay` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Capture files, oldest first (e.g. gw.cap.2 gw.cap.1 gw.cap).
    #[arg(required = true)]
    pub captures: Vec<PathBuf>,
    /// The config whose pipelines (transforms, sinks) decode the frames.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Pace of the replay.
    #[arg(long, value_enum, default_value_t = Speed::Max)]
    pub speed: Speed,
    /// With `--speed recorded`: the longest wait between two frames, in
    /// seconds (a clock jump in the capture, e.g. NTP after a boot without
    /// RTC, must not stall the replay).
    #[arg(long, default_value_t = 60.0)]
    pub max_gap: f64,
    /// Feed every capture to this pipeline (default: the pipeline named in
    /// each capture file).
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Print messages and points as JSON lines instead of sending them to
    /// the sinks.
    #[arg(long)]
    pub stdout: bool,
}

/// Which capture files feed which pipeline, and the progress of the feeds.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    inner: Arc<PlanInner>,
}

#[derive(Debug)]
struct PlanInner {
    files: BTreeMap<String, Vec<PathBuf>>,
    speed: Speed,
    max_gap: Duration,
    /// Feeds not finished yet.
    running: AtomicUsize,
    /// Cancelled when every feed has finished.
    done: CancellationToken,
    frames: AtomicU64,
    problems: Mutex<Vec<String>>,
}

impl ReplayPlan {
    /// A plan feeding `files` (by pipeline name) at `speed`; at recorded
    /// speed no wait between two frames is longer than `max_gap`.
    pub fn new(files: BTreeMap<String, Vec<PathBuf>>, speed: Speed, max_gap: Duration) -> Self {
        let running = files.len();
        let done = CancellationToken::new();
        if running == 0 {
            done.cancel();
        }
        ReplayPlan {
            inner: Arc::new(PlanInner {
                files,
                speed,
                max_gap,
                running: AtomicUsize::new(running),
                done,
                frames: AtomicU64::new(0),
                problems: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Cancelled when every feed has finished.
    pub fn done(&self) -> CancellationToken {
        self.inner.done.clone()
    }

    /// Frames fed so far.
    pub fn frames(&self) -> u64 {
        self.inner.frames.load(Ordering::Relaxed)
    }

    /// Damaged tails and unreadable files met so far.
    pub fn problems(&self) -> Vec<String> {
        self.inner
            .problems
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// The feed of `pipeline` (part of [`Source::prepare`]).
    pub fn prepare(
        &self,
        pipeline: &PipelineConfig,
        metrics: &Metrics,
    ) -> anyhow::Result<PreparedFeed> {
        let files = self
            .inner
            .files
            .get(&pipeline.name)
            .cloned()
            .with_context(|| format!("pipeline {:?} has no capture to replay", pipeline.name))?;
        Ok(PreparedFeed {
            plan: self.clone(),
            pipeline: pipeline.name.as_str().into(),
            files,
            metrics: metrics.pipeline(&pipeline.name),
        })
    }

    fn problem(&self, text: String) {
        tracing::warn!("{text}");
        if let Ok(mut problems) = self.inner.problems.lock() {
            problems.push(text);
        }
    }
}

/// One pipeline's capture feed, ready to start.
pub struct PreparedFeed {
    plan: ReplayPlan,
    pipeline: Arc<str>,
    files: Vec<PathBuf>,
    metrics: PipelineMetrics,
}

/// Marks a feed finished however it ends.
struct FinishGuard(ReplayPlan);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        if self.0.inner.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.inner.done.cancel();
        }
    }
}

impl PreparedFeed {
    /// Feeds the files on a blocking thread until they end or `stop`.
    pub fn spawn(
        self,
        frames: mpsc::Sender<Frame>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::task::spawn_blocking(move || {
            let _finished = FinishGuard(self.plan.clone());
            self.feed(&frames, &stop);
        })
    }

    fn feed(&self, frames: &mpsc::Sender<Frame>, stop: &CancellationToken) {
        // (when the previous frame was due, its recorded time)
        let mut clock: Option<(Instant, u64)> = None;
        for path in &self.files {
            let mut reader = match CaptureReader::open(path) {
                Ok(reader) => reader,
                Err(err) => {
                    self.plan.problem(format!("cannot replay: {err}"));
                    continue;
                }
            };
            loop {
                let record = match reader.next_record() {
                    Ok(Some(record)) => record,
                    Ok(None) => break,
                    Err(err) => {
                        self.plan
                            .problem(format!("{}: read failed: {err}", path.display()));
                        break;
                    }
                };
                if self.plan.inner.speed == Speed::Recorded {
                    let (previous_due, previous) =
                        clock.unwrap_or((Instant::now(), record.received_at_ns));
                    // Backwards in time: no wait; a jump forward: capped.
                    let gap = Duration::from_nanos(record.received_at_ns.saturating_sub(previous))
                        .min(self.plan.inner.max_gap);
                    let due = previous_due.checked_add(gap).unwrap_or(previous_due);
                    clock = Some((due, record.received_at_ns));
                    if !sleep_until(due, stop) {
                        return;
                    }
                }
                if stop.is_cancelled() {
                    return;
                }
                self.metrics.frames_received.inc();
                let frame = Frame {
                    source: self.pipeline.clone(),
                    received_at_ns: record.received_at_ns,
                    data: record.data,
                };
                if frames.blocking_send(frame).is_err() {
                    return;
                }
                self.plan.inner.frames.fetch_add(1, Ordering::Relaxed);
            }
            match reader.tail() {
                Some(Tail::Torn { offset, bytes }) => self.plan.problem(format!(
                    "{}: incomplete last record ({bytes} bytes at offset {offset}) ignored",
                    path.display()
                )),
                Some(Tail::Corrupt { offset, bytes }) => self.plan.problem(format!(
                    "{}: record failing its CRC at offset {offset}; {bytes} bytes ignored",
                    path.display()
                )),
                _ => {}
            }
            let skipped = reader.skipped();
            if skipped.stretches > 0 {
                self.plan.problem(format!("{}: {skipped}", path.display()));
            }
        }
    }
}

/// Sleeps until `due` in short steps; false if `stop` fired meanwhile.
fn sleep_until(due: Instant, stop: &CancellationToken) -> bool {
    loop {
        if stop.is_cancelled() {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(Duration::from_millis(50)));
    }
}

/// Which pipeline each capture goes to: `--pipeline`, or the one named in
/// its header; every target must exist in the config.
fn plan_files(
    args: &ReplayArgs,
    config: &Config,
) -> anyhow::Result<BTreeMap<String, Vec<PathBuf>>> {
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for path in &args.captures {
        let reader = CaptureReader::open(path)?;
        let target = args
            .pipeline
            .clone()
            .unwrap_or_else(|| reader.header().pipeline.clone());
        if !config.pipelines.iter().any(|p| p.name == target) {
            let names: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
            bail!(
                "{}: recorded by pipeline {:?}, which {} does not have (it has {names:?}); \
                 use --pipeline NAME",
                path.display(),
                target,
                args.config.display()
            );
        }
        files.entry(target).or_default().push(path.clone());
    }
    Ok(files)
}

/// The config as a replay runs it: only the fed pipelines, no capture, its
/// own MQTT client id and state directory.
fn replay_config(mut config: Config, files: &BTreeMap<String, Vec<PathBuf>>) -> Config {
    config.pipelines.retain(|p| files.contains_key(&p.name));
    for pipeline in &mut config.pipelines {
        pipeline.capture = None;
    }
    if let Some(mqtt) = &mut config.mqtt {
        mqtt.client_id = Some(format!("{}-replay", mqtt.effective_client_id()));
    }
    if let Some(dir) = &mut config.data_dir {
        *dir = dir.join("replay");
    }
    config
}

/// Runs `sluice replay`; returns the exit code.
pub async fn run(args: ReplayArgs, shutdown: CancellationToken) -> anyhow::Result<u8> {
    let config = Config::load(&args.config)?;
    let files = plan_files(&args, &config)?;
    let config = replay_config(config, &files);
    if !(0.0..=86_400.0).contains(&args.max_gap) {
        bail!("--max-gap must be between 0 and 86400 seconds");
    }
    let plan = ReplayPlan::new(files, args.speed, Duration::from_secs_f64(args.max_gap));
    let started = Instant::now();
    let stop = shutdown.child_token();
    let done = plan.done();
    let stopper = stop.clone();
    tokio::spawn(async move {
        done.cancelled().await;
        stopper.cancel();
    });
    if args.stdout {
        print_run(&config, &plan, stop).await?;
    } else {
        crate::app::run_from(config, Source::Replay(plan.clone()), stop).await?;
    }
    let problems = plan.problems();
    eprintln!(
        "replayed {} frames in {:.1} s{}",
        plan.frames(),
        started.elapsed().as_secs_f64(),
        if shutdown.is_cancelled() {
            " (interrupted)"
        } else {
            ""
        }
    );
    for problem in &problems {
        eprintln!("  - {problem}");
    }
    Ok(u8::from(!problems.is_empty() || shutdown.is_cancelled()))
}

/// `--stdout`: the pipelines without sinks; every emission printed.
async fn print_run(
    config: &Config,
    plan: &ReplayPlan,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let runtime = Runtime::new(ModuleCache::new(config.cache_dir()))?;
    let (emit_tx, mut emit_rx) = mpsc::channel(1024);
    let pipelines = crate::app::start_pipelines_from(
        config,
        &runtime,
        &metrics,
        emit_tx,
        stop,
        &Source::Replay(plan.clone()),
        crate::app::CommandQueues::new(),
    )?;
    let printer = tokio::spawn(async move {
        use std::io::Write as _;
        let mut out = std::io::stdout();
        'frames: while let Some(emission) = emit_rx.recv().await {
            let lines = (emission.messages.iter().map(jsonout::message))
                .chain(emission.points.iter().map(jsonout::point));
            for line in lines {
                if writeln!(out, "{line}").is_err() {
                    break 'frames;
                }
            }
        }
    });
    pipelines.join().await;
    let _ = printer.await;
    let dropped = metrics.stats_json()["dropped"].clone();
    if dropped.as_object().is_some_and(|d| !d.is_empty()) {
        eprintln!("dropped by reason: {dropped}");
    }
    Ok(())
}
