//! Framer throughput: every framing decoding the same realistic mix of
//! frames, in MB/s of wire bytes and frames/s, with the default newline
//! framer as the baseline ratio measured in the same run.
//!
//! `cargo bench -p sluice --bench framing`
//!
//! The mix: 20,000 frames of 8–240 payload bytes (sizes uniform, seeded),
//! text (printable ASCII) for the newline framings and uniformly random
//! bytes for the binary ones (so COBS sees a zero and SLIP an escape about
//! every 256 bytes, as real binary payloads do). The wire stream is built
//! once with `Framer::encode` and fed to the decoder in 4 KiB reads, the way
//! `FramedRead` would; the idle-gap framer gets `on_idle` after each frame.
//!
//! A plain harness (no criterion): rounds interleave the framings, and the
//! median per framing is reported, which absorbs this machine's noise.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sluice_framing::{Framer, FramerEvent, FramingConfig};
use tokio_util::codec::Decoder;

const FRAMES: usize = 20_000;
const ROUNDS: usize = 9;
const READ: usize = 4096;
const MAX_FRAME: usize = 1024;

/// A small deterministic generator (xorshift64*), so every run sees the
/// same bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Case {
    name: &'static str,
    framer: Framer,
    wire: Vec<u8>,
    /// Frame boundaries in `wire` for the idle-gap framer.
    ends: Vec<usize>,
}

fn config(toml_value: &str) -> FramingConfig {
    #[derive(serde::Deserialize)]
    struct W {
        framing: FramingConfig,
    }
    let w: W = toml::from_str(&format!("framing = {toml_value}")).expect("framing config");
    w.framing
}

fn case(name: &'static str, toml_value: &str, text: bool) -> Case {
    let cfg = config(toml_value);
    assert!(cfg.validate(MAX_FRAME, 115_200).is_empty(), "{toml_value}");
    let framer = cfg.build(MAX_FRAME, 115_200);
    let fixed = match &cfg {
        FramingConfig::Fixed { size, crc } => Some(size.get() - crc.map_or(0, |c| c.width())),
        _ => None,
    };
    let mut rng = Rng(0x5EED_F00D_CAFE_F00D);
    let mut wire = BytesMut::new();
    let mut ends = Vec::with_capacity(FRAMES);
    let mut payload = Vec::new();
    while ends.len() < FRAMES {
        let len = fixed.unwrap_or_else(|| 8 + rng.below(233));
        payload.clear();
        for _ in 0..len {
            let byte = if text {
                b' ' + rng.below(95) as u8
            } else {
                rng.next() as u8
            };
            payload.push(byte);
        }
        if framer.encode(&payload, &mut wire).is_ok() {
            ends.push(wire.len());
        }
    }
    Case {
        name,
        framer,
        wire: wire.to_vec(),
        ends,
    }
}

/// Decodes the whole stream once; returns the frames delivered.
fn decode_all(case: &mut Case) -> usize {
    let mut buf = BytesMut::with_capacity(2 * READ);
    let mut frames = 0;
    let mut count = |event: FramerEvent| {
        if let FramerEvent::Frame(data) = black_box(event) {
            black_box(&data);
            frames += 1;
        }
    };
    if case.framer.idle_gap().is_some() {
        let mut start = 0;
        for &end in &case.ends {
            for chunk in case.wire[start..end].chunks(READ) {
                buf.extend_from_slice(chunk);
                while let Some(e) = case.framer.decode(&mut buf).expect("infallible") {
                    count(e);
                }
            }
            if let Some(e) = case.framer.on_idle(&mut buf) {
                count(e);
            }
            start = end;
        }
    } else {
        for chunk in case.wire.chunks(READ) {
            buf.extend_from_slice(chunk);
            while let Some(e) = case.framer.decode(&mut buf).expect("infallible") {
                count(e);
            }
        }
        while let Some(e) = case.framer.decode_eof(&mut buf).expect("infallible") {
            count(e);
        }
    }
    frames
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut cases = vec![
        case("newline (baseline)", r#"{ kind = "newline" }"#, true),
        case(
            "newline \\r\\n",
            r#"{ kind = "newline", delimiter = "\r\n" }"#,
            true,
        ),
        case("cobs", r#"{ kind = "cobs" }"#, false),
        case(
            "cobs + crc16_ccitt_false",
            r#"{ kind = "cobs", crc = "crc16_ccitt_false" }"#,
            false,
        ),
        case("slip", r#"{ kind = "slip" }"#, false),
        case(
            "slip + crc16_ccitt_false",
            r#"{ kind = "slip", crc = "crc16_ccitt_false" }"#,
            false,
        ),
        case(
            "length_prefixed u16_be",
            r#"{ kind = "length_prefixed", header = "u16_be" }"#,
            false,
        ),
        case(
            "length_prefixed u16_be + crc32",
            r#"{ kind = "length_prefixed", header = "u16_be", crc = "crc32" }"#,
            false,
        ),
        case("fixed 64", r#"{ kind = "fixed", size = 64 }"#, false),
        case(
            "fixed 64 + crc16_modbus",
            r#"{ kind = "fixed", size = 64, crc = "crc16_modbus" }"#,
            false,
        ),
        case(
            "idle_gap + crc16_modbus",
            r#"{ kind = "idle_gap", gap_chars = 3.5, crc = "crc16_modbus" }"#,
            false,
        ),
    ];

    // Sanity: every framer gets every frame back.
    for case in &mut cases {
        assert_eq!(decode_all(case), FRAMES, "{}", case.name);
    }

    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (case, t) in cases.iter_mut().zip(&mut times) {
            let start = Instant::now();
            black_box(decode_all(case));
            t.push(start.elapsed());
        }
    }

    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    let base_rate = FRAMES as f64 / medians[0].as_secs_f64();
    println!(
        "{FRAMES} frames of 8-240 payload bytes per framing, {READ}-byte reads, median of {ROUNDS} rounds\n"
    );
    println!("| framing | wire MB/s | frames/s | vs newline (frames/s) |");
    println!("|---|---:|---:|---:|");
    for (case, median) in cases.iter().zip(&medians) {
        let secs = median.as_secs_f64();
        let mbps = case.wire.len() as f64 / secs / 1e6;
        let rate = FRAMES as f64 / secs;
        println!(
            "| {} | {:.0} | {:.2} M | {:.2}× |",
            case.name,
            mbps,
            rate / 1e6,
            rate / base_rate
        );
    }
}
