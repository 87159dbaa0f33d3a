//! `sluice demo`: the whole data path on one machine with nothing installed.
//!
//! A simulated sensor gateway writes JSON telemetry into a pseudo-terminal;
//! the host reads the pty like any serial port, runs the real json-telemetry
//! transform in the sandbox, validates what it emits, and prints each MQTT
//! message and point as a JSON line (the same shape as
//! `sluice transform test`), with a summary on stderr.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::start_pipelines;
use crate::config::Config;
use crate::jsonout;
use crate::metrics::Metrics;
use crate::pipeline::Emission;
use crate::pty::Pty;
use crate::runtime::{ModuleCache, Runtime};
use crate::sim::Telemetry;

/// `sluice demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Frames per second the simulated node sends.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Stop after this many frames (default: run until Ctrl-C).
    #[arg(long)]
    pub frames: Option<u64>,
    /// The transform component; default: build transforms/json-telemetry
    /// from this source tree.
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Print only the summary, not every message and point.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs the demo until `args.frames` are through or `shutdown` fires.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a positive number of frames per second");
    }
    let module = match &args.module {
        Some(path) => path.clone(),
        None => build_json_telemetry()?,
    };
    let pty = Pty::open().context("cannot open a pseudo-terminal")?;
    let config = demo_config(&pty.path, &module)?;

    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::new(ModuleCache::new(ModuleCache::default_dir()))?;
    let (emit_tx, emit_rx) = mpsc::channel(1024);
    let stop = shutdown.child_token();
    let pipelines = start_pipelines(&config, &runtime, &metrics, emit_tx, stop.clone())?;
    eprintln!(
        "sluice demo: simulated node → {} → json-telemetry (wasm) → stdout; Ctrl-C stops",
        pty.path.display()
    );

    let sent = Arc::new(AtomicU64::new(0));
    let (all_sent_tx, all_sent) = tokio::sync::oneshot::channel();
    let simulator = spawn_simulator(
        pty,
        args.rate,
        args.frames,
        sent.clone(),
        all_sent_tx,
        stop.clone(),
    )?;
    let printer = tokio::spawn(print_emissions(emit_rx, args.quiet));

    let summary_metrics = metrics.clone();
    let summary_sent = sent.clone();
    let summary = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tick.tick().await;
            eprintln!(
                "{}",
                summary_line(&summary_metrics, summary_sent.load(Ordering::Relaxed))
            );
        }
    });

    // The simulator says when it has sent --frames; give the pipeline a
    // moment to read the last bytes, then drain.
    tokio::select! {
        Ok(()) = all_sent => tokio::time::sleep(Duration::from_millis(500)).await,
        _ = shutdown.cancelled() => {}
    }
    stop.cancel();
    pipelines.join().await;
    let _ = tokio::task::spawn_blocking(move || simulator.join()).await;
    let (messages, points) = printer.await.unwrap_or_default();
    summary.abort();
    eprintln!("{}", summary_line(&metrics, sent.load(Ordering::Relaxed)));
    eprintln!("done: {messages} messages and {points} points left the sandbox");
    Ok(())
}

fn summary_line(metrics: &Metrics, sent: u64) -> String {
    let stats = metrics.stats_json();
    let count = |key: &str| stats[key].as_u64().unwrap_or(0);
    let dropped: u64 = stats["dropped"]
        .as_object()
        .map(|d| d.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    format!(
        "frames sent {sent}, received {}; messages {}, points {}; dropped or refused {dropped} {}",
        count("frames_received"),
        count("messages_emitted"),
        count("points_emitted"),
        stats["dropped"],
    )
}

/// A one-pipeline config for the pty and module, through the normal parser.
fn demo_config(port: &Path, module: &Path) -> anyhow::Result<Config> {
    let quote = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let text = format!(
        "version = 1\n\
         [[pipeline]]\n\
         name = \"demo\"\n\
         serial = {{ path = {} }}\n\
         transform = {{ module = {}, config = {{ prefix = \"iiot\" }} }}\n",
        quote(port),
        quote(module)
    );
    Ok(Config::parse(Path::new("<demo>"), &text, |_| None)?)
}

/// Builds transforms/json-telemetry of this source tree; returns its component.
fn build_json_telemetry() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../transforms");
    if !dir.is_dir() {
        bail!(
            "no transforms/ directory at {}; pass --module",
            dir.display()
        );
    }
    eprintln!("building the json-telemetry transform (cargo, wasm32-wasip2)…");
    let artifacts = crate::cli::transform::build(&dir)?;
    artifacts
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "json_telemetry.wasm"))
        .context("the transforms build produced no json_telemetry.wasm")
}

fn spawn_simulator(
    pty: Pty,
    rate: f64,
    frames: Option<u64>,
    sent: Arc<AtomicU64>,
    all_sent: tokio::sync::oneshot::Sender<()>,
    stop: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("simulated-node".into())
        .spawn(move || {
            let mut pty = pty;
            let mut telemetry = Telemetry::new(1);
            let period = Duration::from_secs_f64(1.0 / rate);
            let mut next = std::time::Instant::now();
            while !stop.is_cancelled() && frames.is_none_or(|n| sent.load(Ordering::Relaxed) < n) {
                let mut line = telemetry.next_line();
                line.push('\n');
                if let Err(err) = pty.master.write_all(line.as_bytes()) {
                    eprintln!("simulated node: write failed: {err}");
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                next += period;
                if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let _ = all_sent.send(());
            // Keep the pty open until the host has read everything.
            while !stop.is_cancelled() {
                std::thread::sleep(Duration::from_millis(50));
            }
        })
}

async fn print_emissions(mut emissions: mpsc::Receiver<Emission>, quiet: bool) -> (u64, u64) {
    let (mut messages, mut points) = (0, 0);
    while let Some(emission) = emissions.recv().await {
        let value = match &emission {
            Emission::Message(m) => {
                messages += 1;
                jsonout::message(m)
            }
            Emission::Point(p) => {
                points += 1;
                jsonout::point(p)
            }
        };
        if !quiet {
            println!("{value}");
        }
    }
    (messages, points)
}
