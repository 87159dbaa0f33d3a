//! A source that feeds capture files to their pipelines (`sluice replay`),
//! at their recorded pace or as fast as the pipelines take them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::PipelineConfig;
use crate::metrics::{Metrics, PipelineMetrics};
use crate::model::Frame;
use crate::source::capture::{CaptureReader, Tail};

/// Replay pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Speed {
    /// The recorded intervals between frames.
    Recorded,
    /// As fast as the pipelines take them.
    Max,
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
                let frame = Frame::new(self.pipeline.clone(), record.received_at_ns, record.data);
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
