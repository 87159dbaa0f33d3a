//! `systemctl reload` = SIGHUP: the transform's config changes on a running
//! host while frames flow, and not one frame is lost, duplicated or
//! reordered. Real things only: a pty fed at a steady rate, `sluice run` as
//! its own process, the json-telemetry component, mosquitto and
//! `mosquitto_sub`.
//!
//! Each reload flips the transform's `prefix` between `v0` and `v1`, so every
//! message says which configuration produced it: the sequence numbers must
//! arrive exactly once and in order, and the prefix must change exactly once
//! per reload (a frame is processed by exactly one version).

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use sluice::pty::Pty;
use sluice_tests::serial::WAIT;
use sluice_tests::{Mosquitto, SluiceProcess, mosquitto_sub, wasm};

const RELOADS: usize = 6;

fn config(
    pty: &Pty,
    broker: u16,
    data_dir: &std::path::Path,
    prefix: &str,
    module: &str,
    baud: u32,
) -> String {
    format!(
        r#"
version = 1
data_dir = "{}"
[mqtt]
host = "127.0.0.1"
port = {broker}
client_id = "reload-test"
stats_interval_secs = 0
[[pipeline]]
name = "gw"
channel_capacity = 4096
serial = {{ path = "{}", baud = {baud} }}
transform = {{ module = "{module}", config = {{ prefix = "{prefix}" }} }}
"#,
        data_dir.display(),
        pty.path.display(),
    )
}

#[test]
fn sighup_swaps_the_transform_config_between_two_frames() {
    let broker = Mosquitto::start();
    let pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.toml");
    let write_with = |prefix: &str, module: &str, baud: u32, more: &str| {
        let text = config(&pty, broker.port, dir.path(), prefix, module, baud);
        std::fs::write(&path, text + more).expect("write config");
    };
    let write = |prefix: &str, module: &str, baud: u32| write_with(prefix, module, baud, "");
    write("v0", wasm::JSON_TELEMETRY, 115_200);
    let subscriber = mosquitto_sub(broker.port, "+/stats/seq", &[]);
    let mut sluice = SluiceProcess::spawn(&["run", "--config", path.to_str().expect("utf-8")], &[]);
    assert!(
        sluice.wait_for_log("sluice running", Duration::from_secs(30)),
        "{}",
        sluice.log()
    );

    // A steady feed (~2000 frames/s) on its own thread.
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let mut master = pty.master.try_clone().expect("clone master");
        let (sent, stop) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    let seq = sent.load(Ordering::Relaxed);
                    writeln!(master, r#"{{"seq":{seq}}}"#).expect("write frame");
                    sent.store(seq + 1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let wait_frames = |n: u64| {
        let target = sent.load(Ordering::Relaxed) + n;
        while sent.load(Ordering::Relaxed) < target {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    for reload in 1..=RELOADS {
        wait_frames(300);
        write(&format!("v{}", reload % 2), wasm::JSON_TELEMETRY, 115_200);
        sluice.signal(Signal::SIGHUP);
        let swaps = |log: &str| log.matches("transform swapped").count();
        let deadline = std::time::Instant::now() + WAIT;
        while swaps(&sluice.log()) < reload && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(swaps(&sluice.log()), reload, "{}", sluice.log());
    }

    // A reload that cannot apply changes nothing: a file that does not
    // validate (missing module); a transform config the transform refuses
    // (`#` in the prefix), with structural changes (the port's baud rate,
    // the admin API, the embedded broker) that need a restart.
    wait_frames(300);
    write("broken", "/nonexistent/module.wasm", 115_200);
    sluice.signal(Signal::SIGHUP);
    assert!(
        sluice.wait_for_log("config not reloaded", WAIT),
        "{}",
        sluice.log()
    );
    wait_frames(300);
    write_with(
        "bad/#",
        wasm::JSON_TELEMETRY,
        9600,
        "[admin]\nlisten = \"127.0.0.1:0\"\n[broker]\nlisten = \"127.0.0.1:0\"\n",
    );
    sluice.signal(Signal::SIGHUP);
    assert!(
        sluice.wait_for_log("the running transform stays", WAIT),
        "{}",
        sluice.log()
    );
    for change in [
        "pipeline[0].serial: changed; takes effect after a restart",
        "admin: changed; takes effect after a restart",
        "broker: changed; takes effect after a restart",
    ] {
        assert!(
            sluice.wait_for_log(change, WAIT),
            "{change}:\n{}",
            sluice.log()
        );
    }
    wait_frames(300);
    stop.store(true, Ordering::Relaxed);
    feeder.join().expect("feeder");
    let total = sent.load(Ordering::Relaxed) as usize;

    let got = subscriber.wait_for(total, Duration::from_secs(60));
    let seqs: Vec<usize> = got
        .iter()
        .map(|r| r.payload.parse().expect("a sequence number"))
        .collect();
    assert_eq!(got.len(), total, "every frame once:\n{}", sluice.log());
    assert_eq!(
        seqs,
        (0..total).collect::<Vec<_>>(),
        "in order, no duplicates"
    );
    let prefixes: Vec<&str> = got
        .iter()
        .map(|r| r.topic.split('/').next().expect("a prefix"))
        .collect();
    let switches = prefixes.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(prefixes[0], "v0");
    assert_eq!(
        switches, RELOADS,
        "one switch per reload, at a single point"
    );
    assert!(prefixes.iter().all(|p| *p == "v0" || *p == "v1"));
    assert!(sluice.stop(), "{}", sluice.log());
}

/// A reload that changes nothing but an output limit applies it: the
/// transform is swapped, and a frame over the new limit is refused. (A
/// reload used to compare only the call timeout and the memory cap, report
/// such a change as applied, and keep the old limits.)
#[test]
fn sighup_applies_a_changed_output_limit() {
    let broker = Mosquitto::start();
    let pty = Pty::open().expect("openpty");
    let mut master = pty.master.try_clone().expect("clone master");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.toml");
    let write = |more: &str| {
        let text = config(
            &pty,
            broker.port,
            dir.path(),
            "v0",
            wasm::JSON_TELEMETRY,
            115_200,
        );
        std::fs::write(&path, text + more).expect("write config");
    };
    write("");
    let subscriber = mosquitto_sub(broker.port, "v0/#", &[]);
    let mut sluice = SluiceProcess::spawn(&["run", "--config", path.to_str().expect("utf-8")], &[]);
    assert!(
        sluice.wait_for_log("sluice running", Duration::from_secs(30)),
        "{}",
        sluice.log()
    );
    // The sample line makes 11 messages.
    let sample = r#"{"seq":1,"n1":{"t":27.6,"h":54.1,"bat":3.71},"n2":{"t":26.0,"h":50.2,"bat":3.65},"sig":{"rssi":-39,"snr":9.5},"stats":{"rx":1201,"crc_err":3}}"#;
    writeln!(master, "{sample}").expect("write frame");
    let before = subscriber.wait_for(11, WAIT).len();
    assert_eq!(before, 11, "{}", sluice.log());

    write("[limits]\nmax_messages_per_frame = 5\n");
    sluice.signal(Signal::SIGHUP);
    assert!(
        sluice.wait_for_log("transform swapped", WAIT),
        "the reload applies the limit:\n{}",
        sluice.log()
    );
    writeln!(master, "{}", sample.replace(r#""seq":1"#, r#""seq":2"#)).expect("write");
    writeln!(master, r#"{{"seq":3}}"#).expect("write frame");
    let got = subscriber.wait_for(before + 1, WAIT);
    assert!(
        sluice.wait_for_log("limit_messages", WAIT),
        "the frame over the new limit is refused with its reason:\n{}",
        sluice.log()
    );
    let after: Vec<(&str, &str)> = got[before..]
        .iter()
        .map(|r| (r.topic.as_str(), r.payload.as_str()))
        .collect();
    assert_eq!(after, [("v0/stats/seq", "3")], "{}", sluice.log());
    assert!(sluice.stop(), "{}", sluice.log());
}
