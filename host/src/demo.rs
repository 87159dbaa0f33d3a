//! `sluice demo`: the whole data path on one machine with nothing installed.
//!
//! A simulated sensor gateway writes JSON telemetry into a pseudo-terminal;
//! the host, started as `sluice run` starts it ([`crate::app::run_with`]),
//! reads the pty like any serial port, runs the real json-telemetry
//! transform in the sandbox, validates what it emits, and
//!
//! * publishes every MQTT message through the normal MQTT sink to its
//!   **embedded broker** (`[broker] embedded = true`, 127.0.0.1:1883 by
//!   default, `--mqtt-port`), which any MQTT client can subscribe to;
//! * serves the **admin API** (127.0.0.1:9180 by default, `--admin-port`):
//!   `/metrics`, `/health`, `/ready`, `/transforms`.
//!
//! The demo taps the host's outputs ([`crate::app::RunOptions::tap`]): it
//! appends every point as InfluxDB line protocol to a local file
//! (`--points`), since there is no InfluxDB, and with `--json` prints each
//! message and point as a JSON line on stdout (the shape of `sluice
//! transform test`). It prints what to run to watch all that, and a compact
//! summary every 5 s on stderr.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::RunOptions;
use crate::broker::BrokerError;
use crate::config::Config;
use crate::config::influx::{Precision, UnsignedMode};
use crate::jsonout;
use crate::metrics::Metrics;
use crate::pipeline::Emission;
use crate::pty::Pty;
use crate::sim::Telemetry;
use crate::sink::influx::line_protocol::Encoder;

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
    /// Port of the embedded MQTT broker on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// Port of the admin API (metrics, health) on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 9180)]
    pub admin_port: u16,
    /// Where points are appended as InfluxDB line protocol (default:
    /// sluice-demo-points.lp in the temp directory; truncated at start).
    #[arg(long)]
    pub points: Option<PathBuf>,
    /// Also print every MQTT message and point as a JSON line on stdout.
    #[arg(long)]
    pub json: bool,
    /// No summary every 5 s (the final one is still printed).
    #[arg(long)]
    pub quiet: bool,
}

/// What left the sandbox during the demo.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    messages: u64,
    points: u64,
    points_refused: u64,
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
    let config = demo_config(&pty.path, &module, args.mqtt_port, args.admin_port)?;
    let points_path = args
        .points
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("sluice-demo-points.lp"));
    let points_file = tokio::fs::File::create(&points_path)
        .await
        .with_context(|| format!("cannot create {} (--points)", points_path.display()))?;

    // The host as `sluice run` starts it; the demo taps its outputs.
    let (tap, emissions) = mpsc::channel(1024);
    let (ready, running) = tokio::sync::oneshot::channel();
    let stop = shutdown.child_token();
    let options = RunOptions {
        tap: Some(tap),
        ready: Some(ready),
        ..RunOptions::default()
    };
    let mut host = tokio::spawn(crate::app::run_with(config, options, stop.clone()));
    let running = tokio::select! {
        running = running => running.ok(),
        _ = &mut host => None,
    };
    let Some(running) = running else {
        stop.cancel();
        return Err(match host.await {
            Ok(Err(err)) => with_port_hint(err),
            Ok(Ok(())) => anyhow::anyhow!("the host stopped before it ran"),
            Err(err) => err.into(),
        });
    };
    let (Some(broker_addr), Some(admin_addr)) = (running.broker, running.admin) else {
        stop.cancel();
        let _ = host.await;
        bail!(
            "port {} is already in use (another sluice?); serve the demo's metrics on \
             another port with --admin-port N (0 picks a free port)",
            args.admin_port
        );
    };
    let metrics = running.metrics;

    eprintln!(
        "sluice demo: simulated node → {} → json-telemetry (wasm) → embedded MQTT broker + line-protocol file",
        pty.path.display()
    );
    eprintln!(
        "  watch the messages: mosquitto_sub -h {} -p {} -t 'iiot/#' -v",
        broker_addr.ip(),
        broker_addr.port()
    );
    eprintln!(
        "  metrics:            http://{admin_addr}/metrics  (also /health, /ready, /transforms)"
    );
    eprintln!("  points:             tail -f {}", points_path.display());
    eprintln!("  Ctrl-C stops");

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
    let tapped = tokio::spawn(take_outputs(emissions, points_file, args.json));

    let summary = (!args.quiet).then(|| {
        let metrics = metrics.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", summary_line(&metrics, sent.load(Ordering::Relaxed)));
            }
        })
    });

    // The simulator says when it has sent --frames; give the pipeline a
    // moment to read the last bytes, then drain.
    tokio::select! {
        Ok(()) = all_sent => tokio::time::sleep(Duration::from_millis(500)).await,
        _ = shutdown.cancelled() => {}
    }
    stop.cancel();
    // The host drains the pipelines and waits for the broker's confirmations.
    host.await??;
    let _ = tokio::task::spawn_blocking(move || simulator.join()).await;
    let tally = tapped.await.unwrap_or_default();
    if let Some(summary) = summary {
        summary.abort();
    }
    eprintln!("{}", summary_line(&metrics, sent.load(Ordering::Relaxed)));
    let confirmed = metrics.mqtt_delivered.get();
    eprintln!(
        "done: {} messages published ({confirmed} confirmed by the broker{}), {} points written to {}{}",
        tally.messages,
        if tally.messages > confirmed {
            format!(", {} unconfirmed at shutdown", tally.messages - confirmed)
        } else {
            String::new()
        },
        tally.points,
        points_path.display(),
        if tally.points_refused > 0 {
            format!(
                " ({} not expressible as line protocol)",
                tally.points_refused
            )
        } else {
            String::new()
        },
    );
    Ok(())
}

/// The embedded broker's "address in use", with how to pick another port.
fn with_port_hint(err: anyhow::Error) -> anyhow::Error {
    match err.downcast_ref::<BrokerError>() {
        Some(BrokerError::AddrInUse { addr }) => anyhow::anyhow!(
            "port {} is already in use ({addr}: another MQTT broker, e.g. mosquitto?); \
             run the demo's broker on another port with --mqtt-port N (0 picks a free port)",
            addr.port()
        ),
        _ => err,
    }
}

/// What the demo does with the host's outputs besides publishing them:
/// points to the line-protocol file (the demo has no InfluxDB); with
/// `json`, every message and point as a JSON line on stdout.
async fn take_outputs(
    mut emissions: mpsc::Receiver<Emission>,
    mut points_file: tokio::fs::File,
    json: bool,
) -> Tally {
    let mut tally = Tally::default();
    let mut encoder = Encoder::new(Precision::Ns, UnsignedMode::Native);
    let mut line = Vec::new();
    let mut told_about_file = false;
    while let Some(emission) = emissions.recv().await {
        if json {
            let mut stdout = std::io::stdout().lock();
            let output = &emission.output;
            for value in (output.messages().map(jsonout::message))
                .chain(output.points().map(|point| jsonout::point(&point)))
            {
                let _ = writeln!(stdout, "{value}");
            }
        }
        tally.messages += emission.output.message_count() as u64;
        for point in emission.output.owned_points() {
            line.clear();
            if encoder.encode(&point, &mut line).is_err() {
                tally.points_refused += 1;
                continue;
            }
            tally.points += 1;
            if let Err(err) = points_file.write_all(&line).await
                && !told_about_file
            {
                eprintln!("sluice demo: cannot write points: {err}");
                told_about_file = true;
            }
        }
    }
    let _ = points_file.flush().await;
    tally
}

fn summary_line(metrics: &Metrics, sent: u64) -> String {
    let stats = metrics.stats_json();
    let count = |key: &str| stats[key].as_u64().unwrap_or(0);
    let dropped: u64 = stats["dropped"]
        .as_object()
        .map(|d| d.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    format!(
        "frames sent {sent}, received {}; messages {} (delivered {}), points {}; dropped or refused {dropped} {}",
        count("frames_received"),
        count("messages_emitted"),
        count("mqtt_delivered"),
        count("points_emitted"),
        stats["dropped"],
    )
}

/// The demo's config, through the normal parser: one pipeline on the pty,
/// the embedded broker and the admin API on 127.0.0.1.
fn demo_config(
    port: &Path,
    module: &Path,
    mqtt_port: u16,
    admin_port: u16,
) -> anyhow::Result<Config> {
    let quote = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let text = format!(
        "version = 1\n\
         [broker]\n\
         embedded = true\n\
         listen = \"127.0.0.1:{mqtt_port}\"\n\
         [admin]\n\
         listen = \"127.0.0.1:{admin_port}\"\n\
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
    let artifacts = crate::wasm_build::build(&dir)?;
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
