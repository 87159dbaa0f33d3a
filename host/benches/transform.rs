//! Transform cost: the same json-telemetry decode compiled natively and run
//! in the Wasm sandbox, measured alternately in one run, reported as a ratio.
//!
//! `cargo bench -p sluice --bench transform`
//!
//! Then the same decode cold, as it runs at the rates of a deployment: each
//! call after the caches were flushed or after a 1 ms sleep.
//!
//! Also reports the one-off costs that decide start-up time: compiling the
//! component with Cranelift vs loading the cached `.cwasm`, and
//! instantiating (+ `init`).
//!
//! A plain harness (no criterion): the numbers that matter are ratios of
//! medians over interleaved rounds, which absorbs this machine's noise.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use json_telemetry::JsonTelemetry;
use sluice::model::Frame;
use sluice::runtime::{Limits, ModuleCache, Runtime};
use sluice_sdk::Transform as _;

const SAMPLE: &str = r#"{"seq":1042,"n1":{"t":27.6,"h":54.1,"bat":3.71},"n2":{"t":26.0,"h":50.2,"bat":3.65},"sig":{"rssi":-39,"snr":9.5},"stats":{"rx":1201,"crc_err":3}}"#;
const ROUNDS: usize = 15;
const FRAMES_PER_ROUND: usize = 20_000;
const COLD_CALLS: usize = 2_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds `call` takes.
fn timed(call: impl FnOnce()) -> f64 {
    let t = Instant::now();
    call();
    t.elapsed().as_nanos() as f64
}

fn main() {
    let transforms = Path::new(env!("CARGO_MANIFEST_DIR")).join("../transforms");
    let artifacts = sluice::wasm_build::build(&transforms).expect("build transforms/");
    let wasm_path = artifacts
        .iter()
        .find(|p| p.ends_with("json_telemetry.wasm"))
        .expect("json_telemetry.wasm");
    let wasm = std::fs::read(wasm_path).expect("read component");
    let config = vec![("prefix".to_string(), "iiot".to_string())];

    // One-off costs.
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(ModuleCache::new(Some(cache_dir.path().to_owned()))).expect("rt");
    let t = Instant::now();
    let module = runtime.load_bytes(&wasm).expect("compile");
    let compile = t.elapsed();
    let t = Instant::now();
    let module_cached = runtime.load_bytes(&wasm).expect("load cached");
    let cached = t.elapsed();
    let t = Instant::now();
    let mut instance = module_cached
        .instantiate("bench", &config, Limits::default())
        .expect("instantiate");
    let instantiate = t.elapsed();
    drop(module);

    let sdk_config =
        sluice_sdk::Config::from_pairs(config.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut native = JsonTelemetry::init(&sdk_config).expect("native init");
    let sdk_frame = sluice_sdk::Frame::new("bench", 0, SAMPLE);
    let source: Arc<str> = "bench".into();
    let host_frame = Frame::new(source.clone(), 0, SAMPLE.as_bytes().to_vec());

    // Sanity: both paths produce the same number of outputs.
    let native_out = sluice_sdk::process(&mut native, &sdk_frame).expect("native decode");
    let wasm_out = instance.process(host_frame.clone()).expect("wasm decode");
    assert_eq!(native_out.messages().len(), wasm_out.message_count());
    assert_eq!(native_out.points().len(), wasm_out.point_count());

    // The two halves of 0.2.0's packed output, run natively: what the SDK
    // adds in the guest (encode) and what the host does after the call
    // (decode into its own types).
    let packed = sluice_sdk::__private::encode_output(&native_out);
    let (mut native_ns, mut wasm_ns) = (vec![], vec![]);
    let (mut encode_ns, mut decode_ns) = (vec![], vec![]);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..FRAMES_PER_ROUND {
            black_box(sluice_sdk::__private::encode_output(black_box(&native_out)));
        }
        encode_ns.push(t.elapsed().as_nanos() as f64 / FRAMES_PER_ROUND as f64);

        let t = Instant::now();
        for _ in 0..FRAMES_PER_ROUND {
            let mut budget = sluice::runtime::output::Budget::new(Default::default());
            // The decoder takes the buffer, as the call hands over the one
            // it lifted: the copy here stands for that lift.
            black_box(
                sluice::runtime::packed::decode(black_box(packed.clone()), &mut budget)
                    .expect("ok"),
            );
        }
        decode_ns.push(t.elapsed().as_nanos() as f64 / FRAMES_PER_ROUND as f64);

        let t = Instant::now();
        for _ in 0..FRAMES_PER_ROUND {
            black_box(sluice_sdk::process(&mut native, black_box(&sdk_frame)).expect("ok"));
        }
        native_ns.push(t.elapsed().as_nanos() as f64 / FRAMES_PER_ROUND as f64);

        let t = Instant::now();
        for _ in 0..FRAMES_PER_ROUND {
            black_box(instance.process(black_box(host_frame.clone())).expect("ok"));
        }
        wasm_ns.push(t.elapsed().as_nanos() as f64 / FRAMES_PER_ROUND as f64);
    }
    // Cold calls: a call when the frame before it was long ago, as at
    // 1000 frames/s or fewer. Either L1, L2 and the TLB are flushed first
    // by writing every cache line of a buffer twice L2's size, or the
    // thread sleeps a millisecond first (what a deployment sees; this also
    // depends on what else the machine runs meanwhile).
    let mut pollution = vec![0u8; 8 << 20];
    let mut flush_caches = |round: u8| {
        for line in pollution.chunks_mut(64) {
            line[0] = line[0].wrapping_add(round);
        }
        black_box(&pollution);
    };
    let (mut cold_native, mut cold_wasm, mut slept_wasm) = (vec![], vec![], vec![]);
    for i in 0..COLD_CALLS {
        flush_caches(i as u8);
        cold_native.push(timed(|| {
            black_box(sluice_sdk::process(&mut native, black_box(&sdk_frame)).expect("ok"));
        }));
        flush_caches(i as u8);
        cold_wasm.push(timed(|| {
            black_box(instance.process(black_box(host_frame.clone())).expect("ok"));
        }));
        std::thread::sleep(Duration::from_millis(1));
        slept_wasm.push(timed(|| {
            black_box(instance.process(black_box(host_frame.clone())).expect("ok"));
        }));
    }
    let (cold_n, cold_w) = (median(cold_native), median(cold_wasm));
    let slept_w = median(slept_wasm);

    let (n, w) = (median(native_ns), median(wasm_ns));
    let (enc, dec) = (median(encode_ns), median(decode_ns));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "json-telemetry decode of the sample frame (11 messages + 4 points), median of {ROUNDS} rounds × {FRAMES_PER_ROUND} frames"
    );
    println!("| path                      | ns/frame | ratio to native |");
    println!("|---------------------------|---------:|----------------:|");
    println!("| native (same Rust code)   | {n:8.0} | {:15.2} |", 1.0);
    println!("| wasm, process (1 frame)   | {w:8.0} | {:15.2} |", w / n);
    println!(
        "| native: SDK packs output  | {enc:8.0} | {:15.2} |",
        enc / n
    );
    println!(
        "| native: host unpacks it   | {dec:8.0} | {:15.2} |",
        dec / n
    );
    println!();
    println!(
        "The same decode, cold: median of {COLD_CALLS} calls, each after the caches were flushed or a 1 ms sleep"
    );
    println!("| path                      | ns/frame | ratio to native |");
    println!("|---------------------------|---------:|----------------:|");
    println!(
        "| native, caches flushed    | {cold_n:8.0} | {:15.2} |",
        1.0
    );
    println!(
        "| wasm, caches flushed      | {cold_w:8.0} | {:15.2} |",
        cold_w / cold_n
    );
    println!(
        "| wasm, after a 1 ms sleep  | {slept_w:8.0} | {:15.2} |",
        slept_w / cold_n
    );
    println!();
    println!("| one-off                               | ms      |");
    println!("|---------------------------------------|--------:|");
    println!(
        "| compile component (Cranelift)         | {:7.2} |",
        ms(compile)
    );
    println!(
        "| load precompiled .cwasm from cache    | {:7.2} |",
        ms(cached)
    );
    println!(
        "| instantiate + init                    | {:7.3} |",
        ms(instantiate)
    );
    println!(
        "| compile / cached load                 | {:6.0}× |",
        compile.as_secs_f64() / cached.as_secs_f64()
    );
}
