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
//! `<client_id>-replay` and state directory `<data_dir>/replay`, and runs
//! no Sparkplug edge node (a second session of the live one would end it).
//! `--stdout` prints what would leave the box as JSON lines instead of
//! sending it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::app::{RunOptions, Running};
use crate::config::Config;
use crate::jsonout;
use crate::pipeline::Emission;
use crate::source::Source;
use crate::source::capture::CaptureReader;
use crate::source::replay::{ReplayPlan, Speed};

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
        // A second session of the live edge node would end the live one's
        // (its births, and the NDEATH at the end): the edge node is the
        // live host's alone.
        if mqtt.sparkplug.take().is_some() {
            tracing::info!(
                "replay: the Sparkplug edge node is not started (it belongs to the live host); points go to the other sinks"
            );
        }
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
    let source = Source::Replay(plan.clone());
    let (ready, running) = oneshot::channel();
    if args.stdout {
        print_run(config, source, ready, stop).await?;
    } else {
        let options = RunOptions {
            source,
            ready: Some(ready),
            ..RunOptions::default()
        };
        crate::app::run_with(config, options, stop).await?;
    }
    // What the sinks (or the closed stdout) did not take, by reason.
    if let Ok(running) = running.await {
        let dropped = running.metrics.stats_json()["dropped"].clone();
        if dropped.as_object().is_some_and(|d| !d.is_empty()) {
            eprintln!("dropped by reason: {dropped}");
        }
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
    mut config: Config,
    source: Source,
    ready: oneshot::Sender<Running>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    config.mqtt = None;
    config.influx = None;
    config.broker.embedded = false;
    let (tap, mut emissions) = mpsc::channel::<Emission>(1024);
    let printer = tokio::spawn(async move {
        use std::io::Write as _;
        let mut out = std::io::stdout();
        'frames: while let Some(emission) = emissions.recv().await {
            let output = &emission.output;
            let lines = (output.messages().map(jsonout::message))
                .chain(output.points().map(|point| jsonout::point(&point)));
            for line in lines {
                if writeln!(out, "{line}").is_err() {
                    break 'frames;
                }
            }
        }
    });
    let options = RunOptions {
        source,
        tap: Some(tap),
        ready: Some(ready),
    };
    crate::app::run_with(config, options, stop).await?;
    let _ = printer.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_runs_no_sparkplug_edge_node_and_its_own_client_id() {
        let text = r#"
            version = 1
            [mqtt]
            host = "127.0.0.1"
            client_id = "gw"
            [mqtt.sparkplug]
            group_id = "plant"
            edge_node_id = "gw1"
            [[pipeline]]
            name = "gateway"
            [pipeline.serial]
            path = "/dev/null"
            [pipeline.transform]
            module = "t.wasm"
        "#;
        let config = Config::parse(std::path::Path::new("t.toml"), text, |_| None).expect("parses");
        let files = BTreeMap::from([("gateway".to_owned(), vec![PathBuf::from("a.cap")])]);
        let mqtt = replay_config(config, &files).mqtt.expect("mqtt");
        assert!(mqtt.sparkplug.is_none());
        assert_eq!(mqtt.client_id.as_deref(), Some("gw-replay"));
    }
}
