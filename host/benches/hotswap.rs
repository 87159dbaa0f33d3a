//! Transform hot swap: how long a swap holds the pipeline's frames, and what
//! a storm of swaps costs in throughput, against steady state in the same
//! run.
//!
//! `cargo bench -p sluice --bench hotswap`
//!
//! The real pipeline worker (`WorkerSpec::spawn`) with the real
//! deploy path (`Hotswap::deploy`: cached load, instantiate + init, swap
//! order, canary), in process: a producer thread pushes numbered frames as
//! fast as the worker takes them; a consumer thread timestamps every
//! message. The transforms are `tests/guests/tagger-a` and `tagger-b`
//! (built here), which tag each message with their version, so every switch
//! point is visible in the output.
//!
//! * **Swap pause, worker side**: what the worker reports for each swap —
//!   the time between taking the swap order and being ready for the next
//!   frame (compile, instantiate and `init` happen before, on another
//!   thread).
//! * **Gap at the switch**: at each switch point in the output, the time
//!   between the last message of the old version and the first of the new
//!   one, next to the ordinary gap between two messages (p50/p99 over all
//!   messages of the storm rounds). The difference is what a swap costs a
//!   frame in flight.
//! * **Throughput**: frames/s with no swaps, with a swap every 100 ms, and
//!   with swaps back to back (each deploy waits for the previous one),
//!   median of interleaved rounds.
//! * **First call on a fresh instance** vs the second: what the first frame
//!   after a swap pays on its own (linear memory touched for the first
//!   time), measured outside the pipeline.
//!
//! A plain harness (no criterion), like the other benches.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::hotswap::{DeployRequest, DeploySource, Hotswap};
use sluice::metrics::Metrics;
use sluice::model::Frame;
use sluice::pipeline::{WorkerSettings, WorkerSpec};
use sluice::runtime::{ModuleCache, Runtime};

const ROUNDS: usize = 5;
const FRAMES_PER_ROUND: u64 = 100_000;

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let index = ((values.len() - 1) as f64 * p).round() as usize;
    values[index]
}

fn median(mut values: Vec<f64>) -> f64 {
    percentile(&mut values, 0.5)
}

#[derive(Clone, Copy, PartialEq)]
enum Storm {
    None,
    Every(Duration),
    BackToBack,
}

struct Round {
    frames_per_sec: f64,
    swaps: usize,
    worker_pauses_us: Vec<f64>,
    switch_gaps_us: Vec<f64>,
    gaps_us: Vec<f64>,
}

struct Bench {
    hotswap: Arc<Hotswap>,
    modules: [Vec<u8>; 2],
    frames: tokio::sync::mpsc::Sender<Frame>,
    outputs: std::sync::mpsc::Receiver<(Instant, sluice::model::CompactString)>,
    tokio: tokio::runtime::Runtime,
    next_module: usize,
}

impl Bench {
    fn round(&mut self, storm: Storm) -> Round {
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let frames = self.frames.clone();
            std::thread::spawn(move || {
                let source: Arc<str> = "bench".into();
                let started = Instant::now();
                for seq in 0..FRAMES_PER_ROUND {
                    let frame = Frame::new(source.clone(), 0, seq.to_string().into_bytes());
                    if frames.blocking_send(frame).is_err() {
                        break;
                    }
                }
                started
            })
        };
        let swapper = match storm {
            Storm::None => None,
            storm => {
                let hotswap = self.hotswap.clone();
                let modules = self.modules.clone();
                let stop = stop.clone();
                let handle = self.tokio.handle().clone();
                let mut next = self.next_module;
                Some(std::thread::spawn(move || {
                    let mut pauses = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let request = DeployRequest::module(
                            DeploySource::Api,
                            "bench",
                            modules[next].clone(),
                        );
                        let report = handle
                            .block_on(hotswap.deploy("bench", request))
                            .expect("deploy");
                        assert_eq!(report.outcome, sluice::hotswap::DeployOutcome::Activated);
                        pauses.push(report.pause.as_secs_f64() * 1e6);
                        next = 1 - next;
                        if let Storm::Every(every) = storm {
                            std::thread::sleep(every);
                        }
                    }
                    (pauses, next)
                }))
            }
        };
        let mut times = Vec::with_capacity(FRAMES_PER_ROUND as usize);
        let mut topics = Vec::with_capacity(FRAMES_PER_ROUND as usize);
        for _ in 0..FRAMES_PER_ROUND {
            let (at, topic) = self.outputs.recv().expect("an output per frame");
            times.push(at);
            topics.push(topic);
        }
        let finished = Instant::now();
        stop.store(true, Ordering::Relaxed);
        let started = producer.join().expect("producer");
        let worker_pauses_us = match swapper {
            Some(swapper) => {
                let (pauses, next) = swapper.join().expect("swapper");
                self.next_module = next;
                pauses
            }
            None => Vec::new(),
        };
        let mut switch_gaps_us = Vec::new();
        let mut gaps_us = Vec::with_capacity(times.len());
        for i in 1..times.len() {
            let gap = times[i].duration_since(times[i - 1]).as_secs_f64() * 1e6;
            gaps_us.push(gap);
            if topics[i] != topics[i - 1] {
                switch_gaps_us.push(gap);
            }
        }
        Round {
            frames_per_sec: FRAMES_PER_ROUND as f64
                / finished.duration_since(started).as_secs_f64(),
            swaps: switch_gaps_us.len(),
            worker_pauses_us,
            switch_gaps_us,
            gaps_us,
        }
    }
}

fn main() {
    let guests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/guests");
    let artifacts = sluice::wasm_build::build(&guests).expect("build tests/guests");
    let find = |name: &str| {
        let path = artifacts
            .iter()
            .find(|p| p.ends_with(name))
            .unwrap_or_else(|| panic!("{name} built"));
        std::fs::read(path).expect("read component")
    };
    let modules = [find("tagger_a.wasm"), find("tagger_b.wasm")];
    let dir = tempfile::tempdir().expect("tempdir");
    let module_path = dir.path().join("tagger_a.wasm");
    std::fs::write(&module_path, &modules[0]).expect("write module");
    let text = format!(
        "version = 1\n[hotswap]\ndead_letter = false\n[[pipeline]]\nname = \"bench\"\n\
         serial = {{ path = \"/dev/null\" }}\ntransform = {{ module = {:?} }}\n",
        module_path.display().to_string()
    );
    let config = Config::parse(Path::new("bench.toml"), &text, |_| None).expect("config");
    let pipeline = &config.pipelines[0];

    let runtime = Runtime::new(ModuleCache::new(Some(dir.path().join("cache")))).expect("rt");
    // Compile both once: the cache serves every later deploy.
    let module = runtime.load_bytes(&modules[0]).expect("tagger-a");
    runtime.load_bytes(&modules[1]).expect("tagger-b");
    let instance = module
        .instantiate(
            "bench",
            &[],
            pipeline.effective_limits(config.limits).into(),
        )
        .expect("instantiate");
    let (mut first_calls, mut second_calls) = (Vec::new(), Vec::new());
    let limits = pipeline.effective_limits(config.limits).into();
    for seq in 0..200u32 {
        let mut fresh = module
            .instantiate("bench", &[], limits)
            .expect("instantiate");
        for calls in [&mut first_calls, &mut second_calls] {
            let frame = Frame::new("bench".into(), 0, seq.to_string().into_bytes());
            let started = Instant::now();
            fresh.process(frame).expect("decodes");
            calls.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    let metrics = Metrics::new();
    let (control_tx, control_rx) = tokio::sync::mpsc::channel(1);
    let mut builder = Hotswap::builder(&runtime, &config, &metrics);
    let guard = builder.add(pipeline, &module, control_tx);
    let hotswap = builder.build();
    let (frame_tx, frame_rx) = tokio::sync::mpsc::channel(4096);
    let (emit_tx, mut emit_rx) = tokio::sync::mpsc::channel(4096);
    let worker = WorkerSpec {
        settings: WorkerSettings {
            pipeline: "bench".into(),
            max_payload: 1 << 20,
        },
        instance,
        frames: frame_rx,
        downlink: None,
        control: Some(control_rx),
        emissions: emit_tx.into(),
        metrics: metrics.pipeline("bench"),
        guard,
    }
    .spawn()
    .expect("worker");
    let (out_tx, out_rx) = std::sync::mpsc::sync_channel(4096);
    let consumer = std::thread::spawn(move || {
        'frames: while let Some(emission) = emit_rx.blocking_recv() {
            for m in emission.output.messages() {
                if out_tx.send((Instant::now(), m.topic.into())).is_err() {
                    break 'frames;
                }
            }
        }
    });
    let mut bench = Bench {
        hotswap,
        modules,
        frames: frame_tx,
        outputs: out_rx,
        tokio: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio"),
        next_module: 1,
    };
    // Warm-up.
    bench.round(Storm::None);

    let storms = [
        ("steady (no swaps)", Storm::None),
        (
            "swap every 100 ms",
            Storm::Every(Duration::from_millis(100)),
        ),
        ("swaps back to back", Storm::BackToBack),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); storms.len()];
    let mut swaps = vec![0usize; storms.len()];
    let mut seconds = vec![0f64; storms.len()];
    let mut worker_pauses = Vec::new();
    let mut switch_gaps: Vec<Vec<f64>> = vec![Vec::new(); storms.len()];
    let mut gaps = Vec::new();
    for _ in 0..ROUNDS {
        for (i, (_, storm)) in storms.iter().enumerate() {
            let round = bench.round(*storm);
            rates[i].push(round.frames_per_sec);
            swaps[i] += round.swaps;
            seconds[i] += FRAMES_PER_ROUND as f64 / round.frames_per_sec;
            if *storm != Storm::None {
                worker_pauses.extend(round.worker_pauses_us);
                switch_gaps[i].extend(round.switch_gaps_us);
                gaps.extend(round.gaps_us);
            }
        }
    }
    drop(bench);
    let _ = worker.join();
    let _ = consumer.join();

    println!(
        "tagger (1 message per frame), median of {ROUNDS} interleaved rounds × {FRAMES_PER_ROUND} frames"
    );
    println!("| load                   | frames/s | ratio to steady | swaps/s |");
    println!("|------------------------|---------:|----------------:|--------:|");
    let steady = median(rates[0].clone());
    for (i, (name, _)) in storms.iter().enumerate() {
        let rate = median(rates[i].clone());
        println!(
            "| {name:<22} | {rate:8.0} | {:15.2} | {:7.1} |",
            rate / steady,
            swaps[i] as f64 / seconds[i]
        );
    }
    println!();
    println!(
        "| per swap ({} swaps)                  | p50 µs | p99 µs |",
        worker_pauses.len()
    );
    println!("|---------------------------------------|-------:|-------:|");
    println!(
        "| worker pause (swap order → next frame) | {:6.1} | {:6.1} |",
        percentile(&mut worker_pauses, 0.5),
        percentile(&mut worker_pauses, 0.99)
    );
    for (i, (name, storm)) in storms.iter().enumerate() {
        if *storm != Storm::None {
            println!(
                "| output gap at a switch, {:<14} | {:6.1} | {:6.1} |",
                name.trim_start_matches("swap ")
                    .trim_start_matches("swaps "),
                percentile(&mut switch_gaps[i], 0.5),
                percentile(&mut switch_gaps[i], 0.99)
            );
        }
    }
    println!(
        "| output gap, any two messages          | {:6.1} | {:6.1} |",
        percentile(&mut gaps, 0.5),
        percentile(&mut gaps, 0.99)
    );
    println!(
        "| first call on a fresh instance        | {:6.1} | {:6.1} |",
        percentile(&mut first_calls, 0.5),
        percentile(&mut first_calls, 0.99)
    );
    println!(
        "| second call on it                     | {:6.1} | {:6.1} |",
        percentile(&mut second_calls, 0.5),
        percentile(&mut second_calls, 0.99)
    );
}
