//! End to end through a serial pipeline: a pseudo-terminal → the port task
//! (its own reader, newline framing) → the json-telemetry transform in Wasm →
//! validated emissions, as `sluice run` wires it (`app::start_pipelines`).
//!
//! `cargo bench -p sluice --bench serial_pipeline`
//!
//! Baselines, measured alternately in the same run: the same bytes through
//! the same pty read by a bare loop that only splits lines (the ceiling of
//! the pty itself), and the Wasm transform called in a loop on one thread
//! (what the pipeline costs on top of decoding). Reports frames/s and MB/s
//! and the ratios.
//! A plain harness: medians of interleaved rounds absorb this machine's noise.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::metrics::Metrics;
use sluice::pipeline::Emission;
use sluice::pty::Pty;
use sluice::runtime::{ModuleCache, Runtime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SAMPLE: &str = r#"{"seq":1042,"n1":{"t":27.6,"h":54.1,"bat":3.71},"n2":{"t":26.0,"h":50.2,"bat":3.65},"sig":{"rssi":-39,"snr":9.5},"stats":{"rx":1201,"crc_err":3}}"#;
/// Outputs of one sample frame: 11 messages + 4 points.
const EMISSIONS_PER_FRAME: usize = 15;
const ROUNDS: usize = 7;
const FRAMES_PER_ROUND: usize = 20_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Writes `frames` sample lines to the pty master from a thread.
fn feed(master: &std::fs::File, frames: usize) -> std::thread::JoinHandle<()> {
    let mut master = master.try_clone().expect("clone master");
    std::thread::spawn(move || {
        let mut block = Vec::new();
        for _ in 0..100 {
            block.extend_from_slice(SAMPLE.as_bytes());
            block.push(b'\n');
        }
        for _ in 0..frames / 100 {
            master.write_all(&block).expect("write pty");
        }
    })
}

/// The ceiling: read the slave side raw and count newlines.
fn bare_round(pty: &Pty) -> f64 {
    let mut slave = std::fs::OpenOptions::new()
        .read(true)
        .open(&pty.path)
        .expect("open slave");
    raw_mode(&slave);
    let started = Instant::now();
    let writer = feed(&pty.master, FRAMES_PER_ROUND);
    let mut lines = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while lines < FRAMES_PER_ROUND {
        let n = slave.read(&mut buf).expect("read slave");
        lines += memchr_count(&buf[..n]);
    }
    let elapsed = started.elapsed().as_secs_f64();
    writer.join().expect("writer");
    FRAMES_PER_ROUND as f64 / elapsed
}

fn memchr_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

fn raw_mode(file: &std::fs::File) {
    use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
    let mut t = tcgetattr(file).expect("tcgetattr");
    cfmakeraw(&mut t);
    tcsetattr(file, SetArg::TCSANOW, &t).expect("tcsetattr");
}

/// One round through the real pipeline: frames/s until every emission of
/// every frame came out.
fn sluice_round(
    config: &Config,
    runtime: &Runtime,
    pty: &Pty,
    rt: &tokio::runtime::Runtime,
) -> f64 {
    rt.block_on(async {
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let (emit_tx, mut emit_rx) = mpsc::channel::<Emission>(4096);
        let pipelines =
            sluice::app::start_pipelines(config, runtime, &metrics, emit_tx, stop.clone())
                .expect("pipeline starts");
        // Let the port open before timing.
        let serial = metrics.serial("bench");
        while serial.port_open.get() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        let writer = feed(&pty.master, FRAMES_PER_ROUND);
        let mut seen = 0;
        while seen < FRAMES_PER_ROUND * EMISSIONS_PER_FRAME {
            match emit_rx.recv().await {
                Some(emission) => {
                    seen += emission.output.message_count() + emission.output.point_count()
                }
                None => panic!("pipeline stopped after {seen} emissions"),
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        writer.join().expect("writer");
        stop.cancel();
        drop(emit_rx);
        pipelines.join().await;
        FRAMES_PER_ROUND as f64 / elapsed
    })
}

fn main() {
    let transforms = Path::new(env!("CARGO_MANIFEST_DIR")).join("../transforms");
    let artifacts = sluice::wasm_build::build(&transforms).expect("build transforms/");
    let wasm_path = artifacts
        .iter()
        .find(|p| p.ends_with("json_telemetry.wasm"))
        .expect("json_telemetry.wasm");
    let pty = Pty::open().expect("openpty");
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        r#"
version = 1
[[pipeline]]
name = "bench"
serial = {{ path = "{}", max_frame_bytes = 4096 }}
transform = {{ module = "{}" }}
"#,
        pty.path.display(),
        wasm_path.display()
    );
    let config = Config::parse(Path::new("bench.toml"), &text, |_| None).expect("config");
    let runtime = Runtime::new(ModuleCache::new(Some(cache_dir.path().to_owned()))).expect("rt");
    let rt = tokio::runtime::Runtime::new().expect("tokio");

    // The transform alone, on this thread: what the pipeline adds on top.
    let module = runtime.load_file(wasm_path).expect("load");
    let mut instance = module
        .instantiate("bench", &[], sluice::runtime::Limits::default())
        .expect("instantiate");
    let frame = sluice::model::Frame::new("bench".into(), 0, SAMPLE.as_bytes().to_vec());
    let transform_round = |instance: &mut sluice::runtime::TransformInstance| {
        let started = Instant::now();
        for _ in 0..FRAMES_PER_ROUND {
            std::hint::black_box(instance.process(frame.clone()).expect("decode"));
        }
        FRAMES_PER_ROUND as f64 / started.elapsed().as_secs_f64()
    };

    let (mut bare, mut piped, mut alone) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bare.push(bare_round(&pty));
        piped.push(sluice_round(&config, &runtime, &pty, &rt));
        alone.push(transform_round(&mut instance));
    }
    let (b, s, t) = (median(bare), median(piped), median(alone));
    let mb = |fps: f64| fps * (SAMPLE.len() + 1) as f64 / 1e6;
    println!(
        "pty → newline framing → json-telemetry (Wasm) → 11 messages + 4 points per frame; median of {ROUNDS} rounds × {FRAMES_PER_ROUND} frames of {} bytes",
        SAMPLE.len() + 1
    );
    println!(
        "| path                                   | frames/s | MB/s  | ratio to bare pty | ratio to transform alone |"
    );
    println!(
        "|----------------------------------------|---------:|------:|------------------:|-------------------------:|"
    );
    for (name, rate) in [
        ("bare pty read + line count (ceiling)  ", b),
        ("transform alone (Wasm, one thread)    ", t),
        ("sluice pipeline (port task + worker)  ", s),
    ] {
        println!(
            "| {name} | {rate:8.0} | {:5.1} | {:17.2} | {:24.2} |",
            mb(rate),
            rate / b,
            rate / t
        );
    }
}
