//! Transform hot swap on a running host, with real things only:
//! a pty fed at a steady rate, `sluice run` as its own process, real Wasm
//! components (`tests/guests/tagger-*`, which tag every frame's message
//! with their version), mosquitto and `mosquitto_sub`, the admin API over
//! HTTP, the `sluice transform deploy|rollback` CLI and a watched directory.
//!
//! * `fifty_swaps_under_load`: numbered frames at [`STORM_RATE`] frames/s,
//!   50 swaps between `tagger-a` and `tagger-b`, alternately through the
//!   admin API and by dropping the file into the watched directory. The
//!   subscriber sees every sequence number exactly once, in order, each
//!   tagged by exactly one version, with the tag switching at a single
//!   point per swap; the host's own per-version counters add up to the
//!   frames sent.
//! * `refused_modules_rollbacks_and_auth`: modules that fail validation
//!   (not Wasm, a core module, a component of another world, an `init`
//!   error, failing test vectors) are refused with the reason and the old
//!   version keeps processing; an unauthenticated PUT is 401 and changes
//!   nothing; a module that traps on 50 % of the frames is rolled back by
//!   its canary, and every frame it refused is in the dead-letter capture;
//!   the CLI deploys (with sidecar vectors) and rolls back; a directory
//!   drop deploys.
//! * `quarantine_skips_and_dead_letters_frames`: the worker in process, a
//!   module trapping on every frame is quarantined and its frames are
//!   dead-lettered, then released by a good probe.
//!
//! The tests in this file run one at a time ([`SERIAL`]): the storm must
//! not share the 2 cores with another sluice.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::pty::Pty;
use sluice_tests::serial::{WAIT, eventually};
use sluice_tests::{Mosquitto, SluiceProcess, free_port, mosquitto_sub, wasm};

/// Frames per second of the storm test. The issue asks for 10,000/s; see
/// `BENCHMARKS.md` ("Transform hot swap") for what a debug build of the
/// host sustains on this project's 2-core machine and why this number.
const STORM_RATE: u64 = 10_000;
/// Swaps in the storm test.
const SWAPS: usize = 50;
/// The admin token the tests use.
const TOKEN: &str = "hotswap-t0ken";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Setup<'a> {
    pty: &'a Pty,
    broker: u16,
    admin: u16,
    dir: &'a Path,
    module: &'a str,
    transform_config: &'a str,
    hotswap: &'a str,
}

fn config(s: &Setup) -> String {
    format!(
        r#"
version = 1
data_dir = "{dir}"
[mqtt]
host = "127.0.0.1"
port = {broker}
client_id = "hotswap-test"
stats_interval_secs = 0
durable = false
[admin]
listen = "127.0.0.1:{admin}"
token_env = "HOTSWAP_TOKEN"
# A wall-clock deadline far above a tagger call: a loaded 2-core CI box
# can deschedule the worker mid-call for longer than the default 100 ms,
# and a timeout trap would drop a frame (counted, dead-lettered) that this
# test expects to see published.
[limits]
call_timeout_ms = 5000
[hotswap]
watch_dir = "{dir}/watch"
debounce_ms = 50
{hotswap}
[[pipeline]]
name = "gw"
channel_capacity = 4096
serial = {{ path = "{pty}", baud = 115200 }}
transform = {{ module = "{module}", config = {{ {transform_config} }} }}
"#,
        dir = s.dir.display(),
        broker = s.broker,
        admin = s.admin,
        hotswap = s.hotswap,
        pty = s.pty.path.display(),
        module = s.module,
        transform_config = s.transform_config,
    )
}

/// The admin API over HTTP.
struct Admin {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
}

impl Admin {
    fn new(port: u16) -> Admin {
        Admin {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        self.runtime.block_on(async {
            let response = request.send().await.expect("admin API answers");
            let status = response.status().as_u16();
            let text = response.text().await.expect("body");
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (status, body)
        })
    }

    fn transforms(&self) -> Value {
        let (status, body) = self.send(self.http.get(format!("{}/transforms", self.base)));
        assert_eq!(status, 200, "{body}");
        body["transforms"][0].clone()
    }

    fn metrics(&self) -> String {
        let (status, body) = self.send(self.http.get(format!("{}/metrics", self.base)));
        assert_eq!(status, 200);
        body.as_str().map(str::to_owned).unwrap_or_default()
    }

    fn deploys(&self, outcome: &str) -> u64 {
        let needle =
            format!("sluice_transform_deploys_total{{pipeline=\"gw\",outcome=\"{outcome}\"}} ");
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn put(&self, body: Vec<u8>, token: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .put(format!("{}/transforms/gw", self.base))
            .header("content-type", "application/wasm")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request)
    }

    fn put_json(&self, body: &Value) -> (u16, Value) {
        self.send(
            self.http
                .put(format!("{}/transforms/gw", self.base))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
    }

    /// The active version number and its SHA-256.
    fn active(&self) -> (u64, String) {
        let t = self.transforms();
        (
            t["active"]["version"].as_u64().expect("active version"),
            t["active"]["sha256"].as_str().expect("sha256").to_owned(),
        )
    }

    /// Waits until version `version` is active.
    fn wait_active(&self, version: u64) -> bool {
        eventually(WAIT, || self.active().0 == version)
    }
}

fn sha256(path: &str) -> String {
    sluice::runtime::module_hash(&std::fs::read(path).expect("read module"))
}

/// Writes numbered frames (`<seq>\n`) at `rate` per second on its own
/// thread, in batches every 10 ms.
struct Feeder {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Duration>>,
}

impl Feeder {
    fn start(pty: &Pty, rate: u64) -> Feeder {
        let mut master = pty.master.try_clone().expect("clone master");
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (sent.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut line = Vec::with_capacity(64 * 1024);
            while !st.load(Ordering::Relaxed) {
                // Catch up to the schedule (rate × elapsed), at most 1 s behind.
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                let seq = s.load(Ordering::Relaxed);
                let n = due.saturating_sub(seq).min(rate);
                line.clear();
                for i in 0..n {
                    line.extend_from_slice(format!("{}\n", seq + i).as_bytes());
                }
                master.write_all(&line).expect("write frames");
                s.store(seq + n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            started.elapsed()
        });
        Feeder {
            sent,
            stop,
            thread: Some(thread),
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until `n` more frames were written.
    fn wait_frames(&self, n: u64) {
        let target = self.sent() + n;
        while self.sent() < target {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops; returns (frames, seconds).
    fn stop(mut self) -> (u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self
            .thread
            .take()
            .map(|t| t.join().expect("feeder"))
            .unwrap_or_default();
        (self.sent(), elapsed.as_secs_f64())
    }
}

/// `(topic, seq)` of every message the subscriber got.
fn tagged(
    subscriber: &sluice_tests::Subscriber,
    total: usize,
    timeout: Duration,
) -> Vec<(String, u64)> {
    subscriber
        .wait_for(total, timeout)
        .into_iter()
        .map(|r| (r.topic, r.payload.parse().expect("a sequence number")))
        .collect()
}

/// Drops `module` into the watched directory the way an operator should:
/// a temp name in the same directory, then an atomic rename.
fn drop_into(watch: &Path, module: &str, vectors: Option<&str>) {
    if let Some(vectors) = vectors {
        let tmp = watch.join(".gw.vectors.jsonl.tmp");
        std::fs::write(&tmp, vectors).expect("write vectors");
        std::fs::rename(&tmp, watch.join("gw.vectors.jsonl")).expect("rename vectors");
    }
    let tmp = watch.join(".gw.wasm.tmp");
    std::fs::copy(module, &tmp).expect("copy module");
    std::fs::rename(&tmp, watch.join("gw.wasm")).expect("rename module");
}

fn start_host(setup: &Setup, path: &Path) -> SluiceProcess {
    std::fs::create_dir_all(setup.dir.join("watch")).expect("watch dir");
    std::fs::write(path, config(setup)).expect("write config");
    let sluice = SluiceProcess::spawn(
        &["run", "--config", path.to_str().expect("utf-8")],
        &[("HOTSWAP_TOKEN", TOKEN.to_owned())],
    );
    assert!(
        sluice.wait_for_log("sluice running", Duration::from_secs(60)),
        "{}",
        sluice.log()
    );
    sluice
}

#[test]
fn fifty_swaps_under_load() {
    let _one_at_a_time = serial();
    let broker = Mosquitto::start();
    let pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let admin_port = free_port();
    let setup = Setup {
        pty: &pty,
        broker: broker.port,
        admin: admin_port,
        dir: dir.path(),
        module: wasm::TAGGER_A,
        transform_config: "",
        hotswap: "history = 100",
    };
    let subscriber = mosquitto_sub(broker.port, "tag/#", &[]);
    let mut sluice = start_host(&setup, &dir.path().join("sluice.toml"));
    let admin = Admin::new(admin_port);
    let modules = [wasm::TAGGER_A, wasm::TAGGER_B];
    let bytes = modules.map(|m| std::fs::read(m).expect("read module"));
    let hashes = modules.map(sha256);
    // Compile both once before the storm (the swap pause excludes compiling
    // anyway; this keeps the first swaps from competing with Cranelift).
    assert_eq!(admin.put(bytes[1].clone(), Some(TOKEN)).0, 200);
    assert!(admin.wait_active(2));
    assert_eq!(admin.put(bytes[0].clone(), Some(TOKEN)).0, 200);
    assert!(admin.wait_active(3));

    let feeder = Feeder::start(&pty, STORM_RATE);
    let mut version = 3;
    let mut swap_pauses_us = Vec::new();
    for swap in 1..=SWAPS {
        feeder.wait_frames(STORM_RATE / 20);
        let next = swap % 2; // b, a, b, …
        version += 1;
        if swap % 2 == 1 {
            let (status, body) = admin.put(bytes[next].clone(), Some(TOKEN));
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["outcome"], "activated", "{body}");
            assert_eq!(body["version"], version, "{body}");
            swap_pauses_us.push(body["swap_pause_us"].as_f64().expect("pause"));
        } else {
            drop_into(&dir.path().join("watch"), modules[next], None);
        }
        assert!(
            admin.wait_active(version),
            "swap {swap}: version {version} never became active\n{}",
            sluice.log()
        );
        assert_eq!(admin.active().1, hashes[next]);
    }
    feeder.wait_frames(STORM_RATE / 10);
    let (total, seconds) = feeder.stop();
    eprintln!(
        "storm: {total} frames in {seconds:.1} s ({:.0} frames/s), {SWAPS} swaps; API swap pauses (µs): {swap_pauses_us:?}",
        total as f64 / seconds
    );

    let got = tagged(&subscriber, total as usize, Duration::from_secs(120));
    assert_eq!(
        got.len() as u64,
        total,
        "every frame once\n{}",
        sluice.log()
    );
    let seqs: Vec<u64> = got.iter().map(|(_, s)| *s).collect();
    assert!(
        seqs.iter().copied().eq(0..total),
        "in order, no duplicates, none missing"
    );
    assert!(got.iter().all(|(t, _)| t == "tag/a" || t == "tag/b"));
    assert_eq!(got[0].0, "tag/a");
    let switches = got.windows(2).filter(|w| w[0].0 != w[1].0).count();
    assert_eq!(switches, SWAPS, "one switch per swap, at a single point");

    // The host's own accounting: every frame was given to exactly one
    // version, and nothing was refused.
    let listing = admin.transforms();
    let history = listing["history"].as_array().expect("history");
    assert_eq!(history.len(), 3 + SWAPS, "{listing:#}");
    let frames: u64 = history
        .iter()
        .map(|v| v["stats"]["frames"].as_u64().expect("frames"))
        .sum();
    assert_eq!(frames, total, "{listing:#}");
    assert!(history.iter().all(|v| v["stats"]["failed"] == 0));
    let sources: Vec<&str> = history
        .iter()
        .filter_map(|v| v["source"].as_str())
        .collect();
    assert_eq!(sources.iter().filter(|s| **s == "dir").count(), SWAPS / 2);
    assert_eq!(admin.deploys("activated"), 2 + SWAPS as u64);
    assert!(sluice.stop(), "{}", sluice.log());
}

#[test]
fn refused_modules_rollbacks_and_auth() {
    let _one_at_a_time = serial();
    let broker = Mosquitto::start();
    let pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let admin_port = free_port();
    // `fail_init` makes misbehave's `init` fail; the taggers ignore it.
    let setup = Setup {
        pty: &pty,
        broker: broker.port,
        admin: admin_port,
        dir: dir.path(),
        module: wasm::TAGGER_A,
        transform_config: "fail_init = \"true\"",
        hotswap: "canary_frames = 200",
    };
    let subscriber = mosquitto_sub(broker.port, "tag/#", &[]);
    let mut sluice = start_host(&setup, &dir.path().join("sluice.toml"));
    let admin = Admin::new(admin_port);
    let feeder = Feeder::start(&pty, 1000);
    let (hash_a, hash_b) = (sha256(wasm::TAGGER_A), sha256(wasm::TAGGER_B));
    assert_eq!(admin.active(), (1, hash_a.clone()));

    // No token, a wrong token: 401, nothing changes.
    let tagger_b = std::fs::read(wasm::TAGGER_B).expect("read");
    for token in [None, Some("wrong")] {
        let (status, body) = admin.put(tagger_b.clone(), token);
        assert_eq!(status, 401, "{body}");
    }
    let listing = admin.transforms();
    assert_eq!(listing["active"]["version"], 1);
    assert_eq!(listing["history"].as_array().map(Vec::len), Some(1));
    assert!(!admin.metrics().contains("sluice_transform_deploys_total{"));

    // Modules that fail validation: refused with the reason, v1 stays.
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    for (module, outcome, needle) in [
        (
            b"#!/bin/sh\necho hi\n".to_vec(),
            "invalid_module",
            "not a WebAssembly module",
        ),
        (core_module, "not_a_component", "core WebAssembly module"),
        (empty_component, "wrong_contract", "sluice:transform@0.1.0"),
        (
            std::fs::read(wasm::MISBEHAVE).expect("read"),
            "init_failed",
            "fail_init",
        ),
    ] {
        feeder.wait_frames(100);
        let (status, body) = admin.put(module, Some(TOKEN));
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["outcome"], outcome, "{body}");
        let error = body["error"].as_str().expect("error");
        assert!(error.contains(needle), "{outcome}: {error}");
        assert_eq!(admin.deploys(outcome), 1);
    }
    let b64 = |bytes: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let (status, body) = admin.put_json(&serde_json::json!({
        "module": b64(&tagger_b),
        "vectors": "{\"name\":\"tags a\",\"input\":\"7\",\"expect\":{\"messages\":[{\"topic\":\"tag/a\",\"payload\":\"7\"}]}}\n",
    }));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["outcome"], "vectors_failed", "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("line 1 (tags a)") && e.contains("\"tag/b\"")),
        "{body}"
    );
    assert_eq!(admin.active(), (1, hash_a.clone()));
    assert!(
        sluice
            .log()
            .contains("transform deploy refused; the running version stays")
    );

    // The CLI deploys tagger-b with its sidecar vectors.
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    let staged_b = staging.join("tagger_b.wasm");
    std::fs::copy(wasm::TAGGER_B, &staged_b).expect("stage");
    std::fs::write(
        staging.join("tagger_b.vectors.jsonl"),
        "{\"input\":\"7\",\"expect\":{\"messages\":[{\"topic\":\"tag/b\",\"payload\":\"7\",\"qos\":1,\"retain\":false}]}}\n\
         {\"input\":\"seven\",\"expect\":{\"error\":\"malformed\"}}\n",
    )
    .expect("vectors");
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(sluice_tests::sluice_bin())
            .args(args)
            .env("HOTSWAP_TOKEN", TOKEN)
            .output()
            .expect("run the CLI");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let to = format!("http://127.0.0.1:{admin_port}");
    feeder.wait_frames(300);
    let (code, stdout, stderr) = cli(&[
        "transform",
        "deploy",
        staged_b.to_str().expect("utf-8"),
        "--name",
        "gw",
        "--to",
        &to,
        "--token-env",
        "HOTSWAP_TOKEN",
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let answer: Value = serde_json::from_str(stdout.trim()).expect("JSON answer");
    assert_eq!(answer["outcome"], "activated");
    assert_eq!(answer["vectors_passed"], 2);
    assert_eq!(admin.active(), (2, hash_b.clone()));

    // Wait for tagger-b's canary to pass, then deploy a module that traps on
    // every odd frame: its canary rolls it back to tagger-b by itself.
    assert!(
        eventually(WAIT, || admin.transforms()["canary_running"] == false),
        "{}\n{}",
        admin.transforms(),
        sluice.log()
    );
    feeder.wait_frames(300);
    let (status, body) = admin.put(
        std::fs::read(wasm::TAGGER_FLAKY).expect("read"),
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 3);
    assert_eq!(body["canary"], true);
    assert!(
        eventually(WAIT, || admin.deploys("auto_rolled_back") == 1),
        "{}",
        sluice.log()
    );
    assert_eq!(admin.active(), (2, hash_b.clone()));
    let listing = admin.transforms();
    let flaky = &listing["history"][0];
    assert_eq!(flaky["version"], 3, "{listing:#}");
    assert_eq!(flaky["status"], "rolled_back", "{listing:#}");
    assert_eq!(flaky["rollback"]["automatic"], true, "{listing:#}");
    let trapped = flaky["stats"]["failed_by_reason"]["trap_panic"]
        .as_u64()
        .expect("traps counted");
    assert!((41..=42).contains(&trapped), "{listing:#}");
    assert!(sluice.log().contains("canary failed"), "{}", sluice.log());

    // The CLI rolls back by request: to the version before tagger-b.
    feeder.wait_frames(300);
    let (code, stdout, stderr) = cli(&[
        "transform",
        "rollback",
        "gw",
        "--to",
        &to,
        "--token-env",
        "HOTSWAP_TOKEN",
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(admin.active(), (1, hash_a.clone()));
    let (code, stdout, _) = cli(&[
        "transform",
        "rollback",
        "gw",
        "--to",
        &to,
        "--token-env",
        "HOTSWAP_TOKEN",
    ]);
    assert_eq!(code, Some(1), "nothing before version 1: {stdout}");
    assert!(stdout.contains("nothing_to_roll_back"), "{stdout}");

    // A directory drop (with vectors) deploys.
    feeder.wait_frames(300);
    drop_into(
        &dir.path().join("watch"),
        wasm::TAGGER_B,
        Some("{\"input\":\"1\",\"expect\":{\"messages\":[{\"topic\":\"tag/b\"}]}}\n"),
    );
    assert!(admin.wait_active(4), "{}", sluice.log());
    let listing = admin.transforms();
    assert_eq!(listing["active"]["source"], "dir");
    assert_eq!(listing["active"]["vectors_passed"], 1);
    assert_eq!(listing["active"]["sha256"], hash_b);
    feeder.wait_frames(300);
    let (total, _) = feeder.stop();
    assert!(sluice.stop(), "{}", sluice.log());

    // Every frame is either published once, in order, or in the dead-letter
    // capture (the odd ones the flaky version trapped on).
    let mut dead = Vec::new();
    let capture = dir.path().join("dead-letter/gw.cap");
    let mut reader = sluice::source::capture::CaptureReader::open(&capture).expect("dead letters");
    while let Some(record) = reader.next_record().expect("readable") {
        let text = String::from_utf8(record.data).expect("utf-8");
        dead.push(text.trim().parse::<u64>().expect("a sequence number"));
    }
    assert_eq!(dead.len() as u64, trapped, "{dead:?}");
    assert!(dead.iter().all(|seq| seq % 2 == 1), "{dead:?}");
    let got = tagged(
        &subscriber,
        total as usize - dead.len(),
        Duration::from_secs(60),
    );
    let expected: Vec<u64> = (0..total).filter(|s| !dead.contains(s)).collect();
    let seqs: Vec<u64> = got.iter().map(|(_, s)| *s).collect();
    assert!(
        seqs == expected,
        "published once, in order, or dead-lettered"
    );
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    let mut runs: Vec<&str> = topics.clone();
    runs.dedup();
    assert_eq!(
        runs,
        ["tag/a", "tag/b", "tag/flaky", "tag/b", "tag/a", "tag/b"]
    );
}

#[test]
fn quarantine_skips_and_dead_letters_frames() {
    use sluice::model::Frame;
    use sluice::pipeline::guard::QuarantinePolicy;
    use sluice::pipeline::{WorkerGuard, WorkerSettings, WorkerSpec};
    use sluice::runtime::{Limits, ModuleCache, Runtime};
    use sluice::source::capture::{CaptureHandle, CaptureReader};

    let _one_at_a_time = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(ModuleCache::new(Some(dir.path().join("cache")))).expect("runtime");
    let module = runtime
        .load_file(wasm::MISBEHAVE.as_ref())
        .expect("misbehave loads");
    let instance = module
        .instantiate("p", &[], Limits::default())
        .expect("init");
    let metrics = sluice::metrics::Metrics::new();
    let capture = dir.path().join("dead-letter/p.cap");
    let dead_letter = CaptureHandle::start(
        "p".into(),
        &sluice::config::CaptureConfig {
            path: capture.clone(),
            max_bytes: std::num::NonZeroU64::new(1 << 20).expect("nonzero"),
            keep: 1,
        },
        metrics.serial("p"),
    )
    .expect("dead-letter capture");
    let (frame_tx, frame_rx) = tokio::sync::mpsc::channel(64);
    let (emit_tx, mut emit_rx) = tokio::sync::mpsc::channel(64);
    let (_control_tx, control_rx) = tokio::sync::mpsc::channel(1);
    let worker = WorkerSpec {
        settings: WorkerSettings {
            pipeline: Arc::from("p"),
            max_payload: 1000,
        },
        instance,
        frames: frame_rx,
        downlink: None,
        control: Some(control_rx),
        emissions: emit_tx.into(),
        metrics: metrics.pipeline("p"),
        guard: WorkerGuard {
            quarantine: QuarantinePolicy {
                after_traps: 3,
                backoff: Duration::from_millis(300),
                backoff_max: Duration::from_secs(1),
            },
            baseline_frames: 10,
            dead_letter: Some(dead_letter),
            ..WorkerGuard::default()
        },
    }
    .spawn()
    .expect("worker");
    let frame = |text: &str| Frame::new(Arc::from("p"), 1, text.as_bytes().to_vec());
    // Three traps quarantine it; the next two frames are skipped.
    for text in ["panic", "panic", "panic", "ok:skipped-1", "ok:skipped-2"] {
        frame_tx.blocking_send(frame(text)).expect("send");
    }
    assert!(eventually(WAIT, || metrics
        .frames_dropped_count("p", "quarantined")
        == 2));
    assert_eq!(metrics.frames_dropped_count("p", "trap_panic"), 3);
    // After the backoff a good probe releases it.
    std::thread::sleep(Duration::from_millis(400));
    frame_tx.blocking_send(frame("ok:probe")).expect("send");
    frame_tx.blocking_send(frame("ok:after")).expect("send");
    drop(frame_tx);
    worker.join().expect("worker ends");
    let mut texts = Vec::new();
    while let Ok(emission) = emit_rx.try_recv() {
        for m in emission.output.messages() {
            if m.topic == "test/ok" {
                texts.push(String::from_utf8(m.payload.to_vec()).expect("utf-8"));
            }
        }
    }
    assert_eq!(texts, ["probe", "after"]);
    let encoded = metrics.encode();
    assert!(
        encoded.contains("sluice_transform_quarantines_total{pipeline=\"p\"} 1"),
        "{encoded}"
    );
    let mut reader = CaptureReader::open(&capture).expect("dead letters");
    let mut dead = Vec::new();
    while let Some(record) = reader.next_record().expect("readable") {
        dead.push(String::from_utf8(record.data).expect("utf-8"));
    }
    assert_eq!(
        dead,
        ["panic", "panic", "panic", "ok:skipped-1", "ok:skipped-2"]
    );
}

/// The test vectors docs/transforms.md shows pass against the shipped
/// json-telemetry transform (so the documented format stays true).
#[test]
fn documented_vectors_pass_against_json_telemetry() {
    use sluice::runtime::{Limits, ModuleCache, Runtime};
    let readme = std::fs::read_to_string(sluice_tests::repo_root().join("docs/transforms.md"))
        .expect("docs/transforms.md");
    let section = readme
        .split("**Test vectors**")
        .nth(1)
        .expect("docs/transforms.md documents test vectors");
    let block = section
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a json block");
    let vectors = sluice::hotswap::vectors::parse(block).expect("the documented vectors parse");
    assert_eq!(vectors.len(), 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(ModuleCache::new(Some(dir.path().to_owned()))).expect("runtime");
    let module = runtime
        .load_file(wasm::JSON_TELEMETRY.as_ref())
        .expect("json-telemetry loads");
    let mut instance = module
        .instantiate("gw", &[], Limits::default())
        .expect("init");
    assert_eq!(
        sluice::hotswap::vectors::run(&mut instance, &vectors, "gw", 1 << 20),
        Ok(3)
    );
}
