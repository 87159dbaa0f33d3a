//! Serial-port test support: the real port task (or whole pipelines) in
//! process, on real pseudo-terminals, with every wait bounded.
//!
//! * [`PortHarness`] — one port task (`sluice::source::serial`) on its own
//!   tokio runtime, its frames in a channel the test reads, its counters in
//!   a [`Metrics`] the test can query.
//! * [`MasterReader`] — collects what the host writes to a pty (downlink).
//! * [`Link`] — a udev-style symlink in a temp dir, re-pointed at new ptys
//!   to simulate unplug/replug.
//! * [`eventually`] — polls a condition until a deadline.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice::config::{Config, PipelineConfig};
use sluice::metrics::Metrics;
use sluice::metrics::serial::SerialMetrics;
use sluice::model::Frame;
use sluice::pty::Pty;
use sluice::source::serial::DownlinkSender;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The deadline for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `condition` every 10 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, condition: impl FnMut() -> bool) -> bool {
    crate::eventually_every(timeout, Duration::from_millis(10), condition)
}

/// A one-pipeline config: `[pipeline.serial]` gets `path` and the TOML
/// key/values in `serial_extra` (e.g. `"max_frame_bytes = 64"`); `extra` is
/// appended to the `[[pipeline]]` table (e.g. a capture table).
pub fn pipeline_config(name: &str, path: &Path, serial_extra: &str, extra: &str) -> PipelineConfig {
    let text = format!(
        "version = 1\n[[pipeline]]\nname = \"{name}\"\ntransform = {{ module = \"unused.wasm\" }}\n\
         {extra}\n[pipeline.serial]\npath = {path}\n{serial_extra}\n",
        path = toml::Value::String(path.display().to_string()),
    );
    let mut config =
        Config::parse(Path::new("test.toml"), &text, |_| None).expect("test config parses");
    let problems: Vec<String> = config
        .validate()
        .into_iter()
        .filter(|p| !p.contains("transform.module"))
        .collect();
    assert!(problems.is_empty(), "test config is invalid: {problems:?}");
    config.pipelines.remove(0)
}

/// One real port task, in process.
pub struct PortHarness {
    /// The pipeline's name.
    pub name: String,
    /// The host's metrics.
    pub metrics: Arc<Metrics>,
    /// The port's downlink queue.
    pub downlink: DownlinkSender,
    frames: mpsc::Receiver<Frame>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    runtime: tokio::runtime::Runtime,
}

impl PortHarness {
    /// Starts the port task of `pipeline`; frames wait in a channel of
    /// `pipeline.channel_capacity`.
    pub fn start(pipeline: &PipelineConfig) -> anyhow::Result<PortHarness> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let metrics = Arc::new(Metrics::new());
        let (tx, frames) = mpsc::channel(pipeline.channel_capacity.get());
        let stop = CancellationToken::new();
        let started = runtime.block_on(async {
            sluice::source::serial::start(pipeline, tx, &metrics, stop.clone())
        })?;
        Ok(PortHarness {
            name: pipeline.name.clone(),
            metrics,
            downlink: started.downlink,
            frames,
            stop,
            task: Some(started.task),
            runtime,
        })
    }

    /// The next frame's bytes, if one arrives within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        self.recv_frame(timeout).map(|f| f.data)
    }

    /// The next frame, if one arrives within `timeout`.
    pub fn recv_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let frames = &mut self.frames;
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, frames.recv()).await })
            .ok()
            .flatten()
    }

    /// `n` frames (fewer if the deadline passes first).
    pub fn recv_n(&mut self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Some(frame) => out.push(frame),
                None => break,
            }
        }
        out
    }

    /// A frame arriving within `wait`, which a test expects not to happen.
    pub fn unexpected_frame(&mut self, wait: Duration) -> Option<Vec<u8>> {
        self.recv(wait)
    }

    /// Serial, downlink and capture counters.
    pub fn serial(&self) -> SerialMetrics {
        self.metrics.serial(&self.name)
    }

    /// `frames_dropped{reason}`.
    pub fn dropped(&self, reason: &str) -> u64 {
        self.metrics.frames_dropped_count(&self.name, reason)
    }

    /// `frames_received`.
    pub fn received(&self) -> u64 {
        self.metrics.pipeline(&self.name).frames_received.get()
    }

    /// Whether the port is open now.
    pub fn is_open(&self) -> bool {
        self.serial().port_open.get() == 1
    }

    /// Waits until the port has been opened `n` times in total.
    pub fn wait_opens(&self, n: u64) -> bool {
        let serial = self.serial();
        eventually(WAIT, || {
            serial.opens.get() >= n && serial.port_open.get() == 1
        })
    }

    /// Runs `f` inside the harness's runtime (for async APIs).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// Stops the port task (as on SIGTERM) and waits for it, bounded;
    /// returns whether it stopped in time.
    pub fn stop(&mut self) -> bool {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => self
                .runtime
                .block_on(async { tokio::time::timeout(WAIT, task).await })
                .is_ok(),
            None => true,
        }
    }
}

impl Drop for PortHarness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Collects everything the host writes to a pty's master.
pub struct MasterReader {
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl MasterReader {
    /// Starts reading `pty`'s master on a thread (until the pty closes).
    pub fn start(pty: &Pty) -> MasterReader {
        let mut master = pty.master.try_clone().expect("clone pty master");
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let sink = bytes.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("not poisoned")
                    .extend_from_slice(&buf[..n]);
            }
        });
        MasterReader { bytes }
    }

    /// What arrived so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().expect("not poisoned").clone()
    }

    /// Waits until at least `n` bytes arrived; returns what arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<u8> {
        eventually(timeout, || {
            self.bytes.lock().expect("not poisoned").len() >= n
        });
        self.bytes()
    }
}

/// A symlink standing for a device path (as a udev rule makes one).
pub struct Link {
    /// The symlink's path (what the config names).
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Link {
    /// A path in a fresh temp dir; nothing there yet.
    pub fn new() -> Link {
        let dir = tempfile::tempdir().expect("tempdir");
        Link {
            path: dir.path().join("ttySENSOR0"),
            _dir: dir,
        }
    }

    /// Points the link at `pty`'s slave ("plugged in").
    pub fn plug(&self, pty: &Pty) {
        sluice::sim::point_symlink(&self.path, &pty.path).expect("point symlink");
    }

    /// Removes the link, as udev does when the device goes. Call it before
    /// dropping the pty: a link left pointing at `/dev/pts/N` would lead
    /// to whatever pty a test running in parallel opens next under that
    /// number.
    pub fn unplug(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Points the link at a path in its own directory that does not exist
    /// (a symlink to nowhere no other test can fill).
    pub fn dangle(&self) {
        let nowhere = self.path.with_file_name("gone");
        sluice::sim::point_symlink(&self.path, &nowhere).expect("point symlink");
    }
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes `bytes` to the pty's master on a thread (a full pty buffer blocks
/// the writer, not the test).
pub fn write_in_background(pty: &Pty, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    use std::io::Write as _;
    let mut master = pty.master.try_clone().expect("clone pty master");
    std::thread::spawn(move || {
        let _ = master.write_all(&bytes);
    })
}
