//! Transform cost: the same json-telemetry decode compiled natively and run
//! in the Wasm sandbox, measured alternately in one run, reported as a ratio.
//!
//! `cargo bench -p sluice --bench transform`
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
