//! The whole path once, as a user's first check on a new box: `sluice run`
//! with a pty, a real mosquitto and the admin API; 1,000 numbered frames
//! all arrive, `/health` and `/metrics` answer, SIGTERM ends it cleanly.
//! Timeouts are generous because `scripts/cross-check.sh` runs these tests
//! with an ARM build under qemu (`SLUICE_TEST_BIN`).
//!
//! The second test is the same check without a serial port, for an
//! emulator that cannot open one (qemu-user 7.2 has no `TCGETS2`): 1,000
//! frames replayed from a capture file (`sluice replay`) through the
//! transform, the durable log and MQTT to the subscriber, and `sluice run`
//! answering on the admin API while its port is missing.

use std::collections::BTreeSet;
use std::time::Duration;

use sluice::pty::Pty;
use sluice::source::capture::CaptureWriter;
use sluice_tests::{
    Mosquitto, SluiceProcess, feed_seq, free_port, http, metric, mosquitto_sub, wasm,
};

/// The smoke test's config: `serial` is the port's path.
fn write_config(
    dir: &std::path::Path,
    admin: u16,
    broker: u16,
    serial: &str,
) -> std::path::PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            r#"
version = 1
data_dir = "{}"
[admin]
listen = "127.0.0.1:{admin}"
[mqtt]
host = "127.0.0.1"
port = {}
client_id = "smoke"
stats_interval_secs = 0
[[pipeline]]
name = "gw"
serial = {{ path = "{}" }}
transform = {{ module = "{}" }}
"#,
            dir.display(),
            broker,
            serial,
            wasm::JSON_TELEMETRY,
        ),
    )
    .expect("config");
    path
}

/// `sluice run --config PATH`, once it runs. Not `run_config`: under qemu,
/// compiling the transform takes longer than its 30 s.
fn run_slowly(path: &std::path::Path) -> SluiceProcess {
    let sluice = SluiceProcess::spawn(&["run", "--config", path.to_str().expect("utf-8")], &[]);
    assert!(
        sluice.wait_for_log("sluice running", Duration::from_secs(180)),
        "{}",
        sluice.log()
    );
    sluice
}

#[test]
fn a_thousand_frames_arrive_and_the_admin_api_answers() {
    let broker = Mosquitto::start();
    let mut pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let path = write_config(
        dir.path(),
        admin,
        broker.port,
        &pty.path.display().to_string(),
    );
    let subscriber = mosquitto_sub(broker.port, "iiot/stats/seq", &["-q", "1"]);
    let mut sluice = run_slowly(&path);
    // The port opens (or the reason it does not is in the log at once).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !sluice.log().contains("serial port open")
        && !sluice.log().contains("cannot open serial port")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        sluice.log().contains("serial port open"),
        "{}",
        sluice.log()
    );
    let fed = feed_seq(&mut pty.master, 0, 1000);
    let got = subscriber.wait_for(fed as usize, Duration::from_secs(180));
    let seqs: BTreeSet<u64> = got.iter().filter_map(|r| r.payload.parse().ok()).collect();
    let missing: Vec<u64> = (0..fed).filter(|n| !seqs.contains(n)).take(20).collect();
    assert!(missing.is_empty(), "missing {missing:?}\n{}", sluice.log());

    let (status, body) = http(admin, "GET", "/health", b"").expect("GET /health");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        metric(admin, r#"sluice_frames_received_total{pipeline="gw"}"#),
        fed as f64
    );
    assert!(sluice.stop(), "{}", sluice.log());
}

#[test]
fn without_a_serial_port_replayed_frames_arrive_and_the_admin_api_answers() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let missing_port = dir.path().join("no-such-port");
    let path = write_config(
        dir.path(),
        admin,
        broker.port,
        &missing_port.display().to_string(),
    );
    let capture = dir.path().join("gw.cap");
    let (mut writer, _) = CaptureWriter::open(&capture, "gw", 16 << 20, 0).expect("capture");
    for seq in 0..1000u64 {
        writer
            .append(
                1_700_000_000_000_000_000 + seq,
                format!(r#"{{"seq":{seq}}}"#).as_bytes(),
            )
            .expect("append");
    }
    writer.sync().expect("sync");
    let subscriber = mosquitto_sub(broker.port, "iiot/stats/seq", &["-q", "1"]);

    let mut sluice = run_slowly(&path);
    let replay = std::process::Command::new(sluice_tests::sluice_bin())
        .args(["replay", "--config", path.to_str().expect("utf-8")])
        .arg(&capture)
        .output()
        .expect("sluice replay");
    let stderr = String::from_utf8_lossy(&replay.stderr);
    assert!(replay.status.success(), "{stderr}");
    assert!(stderr.contains("replayed 1000 frames"), "{stderr}");
    let got = subscriber.wait_for(1000, Duration::from_secs(180));
    let seqs: BTreeSet<u64> = got.iter().filter_map(|r| r.payload.parse().ok()).collect();
    let missing: Vec<u64> = (0..1000).filter(|n| !seqs.contains(n)).take(20).collect();
    assert!(missing.is_empty(), "missing {missing:?}\n{stderr}");

    let (status, body) = http(admin, "GET", "/health", b"").expect("GET /health");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        metric(admin, r#"sluice_serial_port_open{pipeline="gw"}"#),
        0.0,
        "the port is missing, and the host runs on"
    );
    assert!(sluice.stop(), "{}", sluice.log());
}
