//! Capture and replay: the port task records every frame with its receive
//! time; `sluice replay` feeds capture files through the configured
//! transforms and sinks, keeping the recorded times.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sluice::pty::Pty;
use sluice::source::capture::{CaptureReader, CaptureWriter, Skipped, Tail};
use sluice_tests::serial::{PortHarness, WAIT, eventually, pipeline_config};
use sluice_tests::{Mosquitto, mosquitto_sub, sluice_bin, wasm};

fn quote(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

fn read_all(path: &Path) -> (Vec<(u64, Vec<u8>)>, Option<Tail>) {
    let mut reader = CaptureReader::open(path).expect("capture opens");
    let mut out = Vec::new();
    while let Some(r) = reader.next_record().expect("reads") {
        out.push((r.received_at_ns, r.data));
    }
    (out, reader.tail())
}

#[test]
fn the_port_task_captures_every_frame_with_its_receive_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = dir.path().join("captures/gw.cap");
    let mut pty = Pty::open().expect("openpty");
    let config = pipeline_config(
        "gw",
        &pty.path,
        "",
        &format!(
            "capture = {{ path = {}, max_bytes = 65536, keep = 2 }}",
            quote(&capture)
        ),
    );
    let mut port = PortHarness::start(&config).expect("port starts");
    assert!(port.wait_opens(1));
    pty.master
        .write_all(b"one\ntwo\n\xff\xfebinary\n\nfour\n")
        .expect("write");
    let frames: Vec<_> = (0..4).filter_map(|_| port.recv_frame(WAIT)).collect();
    assert_eq!(frames.len(), 4);
    assert!(port.stop(), "stop flushes the capture");
    let (records, tail) = read_all(&capture);
    assert_eq!(tail, Some(Tail::Clean));
    assert_eq!(
        records,
        frames
            .iter()
            .map(|f| (f.received_at_ns, f.data.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(port.serial().capture_records.get(), 4);
    assert_eq!(
        CaptureReader::open(&capture)
            .expect("opens")
            .header()
            .pipeline,
        "gw"
    );

    // A restart appends to the same file.
    let mut pty = Pty::open().expect("openpty");
    let config = pipeline_config(
        "gw",
        &pty.path,
        "",
        &format!("capture = {{ path = {} }}", quote(&capture)),
    );
    let mut port = PortHarness::start(&config).expect("port starts");
    assert!(port.wait_opens(1));
    pty.master.write_all(b"five\n").expect("write");
    assert_eq!(port.recv(WAIT), Some(b"five".to_vec()));
    assert!(port.stop());
    let (records, _) = read_all(&capture);
    assert_eq!(records.len(), 5);
    assert_eq!(records[4].1, b"five");
}

/// Records `lines` through a real port task into `capture` (appending, as
/// after a restart); their frames.
fn capture_through_a_port(capture: &Path, lines: &[String]) -> Vec<sluice::model::Frame> {
    let mut pty = Pty::open().expect("openpty");
    let config = pipeline_config(
        "gw",
        &pty.path,
        "",
        &format!("capture = {{ path = {} }}", quote(capture)),
    );
    let mut port = PortHarness::start(&config).expect("port starts");
    assert!(port.wait_opens(1));
    for line in lines {
        writeln!(pty.master, "{line}").expect("write");
    }
    let frames: Vec<_> = lines.iter().filter_map(|_| port.recv_frame(WAIT)).collect();
    assert_eq!(frames.len(), lines.len());
    assert!(port.stop(), "stop flushes the capture");
    frames
}

/// A record damaged in the middle of a capture (a bad disk block) costs that
/// record only: the port task's restart appends after it instead of cutting
/// the file there, and the reader and `sluice replay` skip it, count it and
/// go on with every record after it.
#[test]
fn damage_in_the_middle_costs_only_the_damaged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = dir.path().join("gw.cap");
    let seq = |range: std::ops::Range<u32>| -> Vec<String> {
        range.map(|i| format!(r#"{{"seq":{i}}}"#)).collect()
    };
    let mut frames = capture_through_a_port(&capture, &seq(0..10));

    // Flip a byte in the data of record 5 of 10.
    let mut bytes = std::fs::read(&capture).expect("read");
    let mut at = 24 + "gw".len();
    for _ in 0..5 {
        at += 16 + u32::from_le_bytes(bytes[at..at + 4].try_into().expect("len")) as usize;
    }
    let damaged_len = 16 + frames[5].data.len() as u64;
    bytes[at + 16] ^= 0x20;
    std::fs::write(&capture, &bytes).expect("write");
    frames.remove(5);

    frames.extend(capture_through_a_port(&capture, &seq(10..13)));
    let mut reader = CaptureReader::open(&capture).expect("capture opens");
    let mut records = Vec::new();
    while let Some(r) = reader.next_record().expect("reads") {
        records.push((r.received_at_ns, r.data));
    }
    let want: Vec<_> = frames
        .iter()
        .map(|f| (f.received_at_ns, f.data.clone()))
        .collect();
    assert_eq!(records, want);
    assert_eq!(reader.tail(), Some(Tail::Clean));
    assert_eq!(
        reader.skipped(),
        Skipped {
            stretches: 1,
            bytes: damaged_len,
            first_offset: Some(at as u64),
        }
    );

    let config = config_file(dir.path(), None);
    let (ok, stdout, stderr) = replay(&[
        capture.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
        "--stdout",
    ]);
    assert!(stderr.contains("replayed 12 frames"), "{stderr}");
    // The damage is reported, in the output and the exit code.
    assert!(
        !ok && stderr.contains("1 damaged stretch(es) of records ("),
        "{stderr}"
    );
    let seqs: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["topic"] == "hist/stats/seq")
        .filter_map(|v| v["payload"].as_str().map(str::to_owned))
        .collect();
    let want: Vec<String> = (0..13).filter(|&i| i != 5).map(|i| i.to_string()).collect();
    assert_eq!(seqs, want, "{stdout}");
}

/// A capture of telemetry lines recorded by pipeline `name`, one second apart
/// from `t0`.
fn write_capture(path: &Path, name: &str, t0: u64, lines: &[&str]) {
    let (mut w, _) = CaptureWriter::open(path, name, 1 << 20, 1).expect("capture");
    for (i, line) in lines.iter().enumerate() {
        w.append(t0 + i as u64 * 1_000_000_000, line.as_bytes())
            .expect("append");
    }
    w.sync().expect("sync");
}

fn config_file(dir: &Path, mqtt_port: Option<u16>) -> PathBuf {
    let path = dir.join("replay.toml");
    let mqtt = mqtt_port
        .map(|p| format!("[mqtt]\nhost = \"127.0.0.1\"\nport = {p}\nclient_id = \"replay-test\"\n"))
        .unwrap_or_default();
    std::fs::write(
        &path,
        format!(
            "version = 1\ndata_dir = {data}\n{mqtt}\
             [[pipeline]]\nname = \"gw\"\nserial = {{ path = \"/dev/ttyUSB-not-used\" }}\n\
             transform = {{ module = {module}, config = {{ prefix = \"hist\" }} }}\n\
             capture = {{ path = {cap} }}\n\
             [[pipeline]]\nname = \"other\"\nserial = {{ path = \"/dev/ttyUSB-not-used-either\" }}\n\
             transform = {{ module = {module} }}\n",
            data = quote(&dir.join("data")),
            module = quote(Path::new(wasm::JSON_TELEMETRY)),
            cap = quote(&dir.join("must-not-be-written.cap")),
        ),
    )
    .expect("config");
    path
}

const T0: u64 = 1_700_000_000_000_000_000;

/// A gateway line: json-telemetry makes 8 messages and 3 points of it.
const GATEWAY_LINE: &str = r#"{"seq":1,"n1":{"t":27.6,"h":54.1,"bat":3.71},"sig":{"rssi":-39,"snr":9.5},"stats":{"rx":1201,"crc_err":3}}"#;

/// Runs `sluice replay <args>`, killed if it has not finished within [`WAIT`].
fn replay(args: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = sluice_tests::kept_running(sluice_bin())
        .arg("replay")
        .args(args)
        .env("SLUICE_LOG", "warn")
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("run sluice replay");
    let mut status = None;
    eventually(WAIT, || {
        status = child.try_wait().expect("wait");
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (
        status.is_some_and(|s| s.success()),
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default()
            + if status.is_none() {
                "\n(killed: no exit within the deadline)"
            } else {
                ""
            },
    )
}

#[test]
fn replay_to_stdout_re_decodes_with_the_recorded_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), None);
    let old = dir.path().join("gw.cap.1");
    let new = dir.path().join("gw.cap");
    write_capture(
        &old,
        "gw",
        T0,
        &[r#"{"seq":1,"n1":{"t":20.0}}"#, "not json"],
    );
    write_capture(
        &new,
        "gw",
        T0 + 5_000_000_000,
        &[r#"{"seq":2,"n1":{"t":21.0}}"#],
    );
    let (ok, stdout, stderr) = replay(&[
        old.to_str().expect("utf-8"),
        new.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
        "--stdout",
    ]);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let seqs: Vec<&str> = lines
        .iter()
        .filter(|v| v["topic"] == "hist/stats/seq")
        .filter_map(|v| v["payload"].as_str())
        .collect();
    assert_eq!(seqs, ["1", "2"], "{stdout}");
    let mut stamps: Vec<u64> = lines
        .iter()
        .filter(|v| v["kind"] == "point")
        .filter_map(|v| v["timestamp"].as_u64())
        .collect();
    stamps.dedup();
    assert_eq!(stamps, [T0, T0 + 5_000_000_000], "{stdout}");
    assert!(stderr.contains("replayed 3 frames"), "{stderr}");
    assert!(stderr.contains("decode_malformed"), "{stderr}");
    assert!(!dir.path().join("must-not-be-written.cap").exists());
}

#[test]
fn replay_at_recorded_speed_keeps_the_pace_and_reports_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), None);
    let cap = dir.path().join("torn.cap");
    // Recorded 0.3 s apart, then an hour later (a clock jump), capped by
    // --max-gap to 0.3 s.
    let (mut w, _) = CaptureWriter::open(&cap, "gw", 1 << 20, 0).expect("capture");
    for (i, at) in [0, 300_000_000, 3_600_000_000_000].into_iter().enumerate() {
        w.append(T0 + at, format!(r#"{{"seq":{i}}}"#).as_bytes())
            .expect("append");
    }
    w.sync().expect("sync");
    drop(w);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&cap)
        .and_then(|mut f| f.write_all(&[9, 0, 0, 0, 1, 2]))
        .expect("tear");
    let started = std::time::Instant::now();
    let (ok, stdout, stderr) = replay(&[
        cap.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
        "--stdout",
        "--speed",
        "recorded",
        "--pipeline",
        "other",
        "--max-gap",
        "0.3",
    ]);
    // The recorded gaps are waited (a lower bound, not a timing assertion).
    assert!(started.elapsed() >= std::time::Duration::from_millis(600));
    assert!(!ok, "a damaged capture is reported in the exit code");
    assert!(stderr.contains("replayed 3 frames"), "{stderr}");
    assert!(
        stderr.contains("incomplete last record (6 bytes"),
        "{stderr}"
    );
    // --pipeline other: its transform has the default prefix.
    assert_eq!(stdout.matches("\"iiot/stats/seq\"").count(), 3, "{stdout}");
}

/// `replay --stdout | head`: once nobody reads the output any more, what
/// the transform still emits is counted as dropped (no sink takes it), not
/// lost without a trace.
#[test]
fn replay_to_a_closed_stdout_counts_what_it_could_not_print() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), None);
    let cap = dir.path().join("gw.cap");
    // Several MiB of output: more than a pipe holds.
    write_capture(&cap, "gw", T0, &vec![GATEWAY_LINE; 5000]);
    let mut child = sluice_tests::kept_running(sluice_bin())
        .args(["replay", "--stdout", "--config"])
        .arg(&config)
        .arg(&cap)
        .env("SLUICE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sluice replay");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut first)
        .expect("one line");
    assert!(first.contains("\"kind\""), "{first}");
    // The reader is gone (stdout closed), as after `| head -1`.
    let out = child.wait_with_output().expect("replay ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("replayed 5000 frames"), "{stderr}");
    assert!(stderr.contains("\"no_mqtt_sink_configured\""), "{stderr}");
    assert!(stderr.contains("\"no_influx_sink_configured\""), "{stderr}");
}

/// Without a tap or sinks, everything a transform emits is counted as
/// dropped, each message and each point once.
#[test]
fn replay_without_sinks_counts_every_message_and_point_it_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), None);
    let cap = dir.path().join("gw.cap");
    write_capture(&cap, "gw", T0, &[GATEWAY_LINE; 50]);
    let (ok, _, stderr) = replay(&[
        cap.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("replayed 50 frames"), "{stderr}");
    let dropped = stderr
        .lines()
        .find_map(|l| l.strip_prefix("dropped by reason: "))
        .unwrap_or_else(|| panic!("no drop report: {stderr}"));
    let dropped: serde_json::Value = serde_json::from_str(dropped).expect("JSON");
    assert_eq!(dropped["no_mqtt_sink_configured"], 50 * 8, "{stderr}");
    assert_eq!(dropped["no_influx_sink_configured"], 50 * 3, "{stderr}");
}

#[test]
fn replay_refuses_a_capture_of_an_unknown_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), None);
    let cap = dir.path().join("x.cap");
    write_capture(&cap, "renamed", T0, &["{}"]);
    let (ok, _, stderr) = replay(&[
        cap.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("recorded by pipeline \"renamed\"") && stderr.contains("--pipeline"),
        "{stderr}"
    );
    std::fs::write(dir.path().join("text.cap"), "just text").expect("write");
    let (ok, _, stderr) = replay(&[
        dir.path().join("text.cap").to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    assert!(
        !ok && stderr.contains("not a sluice capture file"),
        "{stderr}"
    );
}

#[test]
fn replay_publishes_through_the_configured_sinks() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), Some(broker.port));
    let cap = dir.path().join("gw.cap");
    let lines: Vec<String> = (1..=20)
        .map(|i| format!(r#"{{"seq":{i},"n1":{{"t":2{}.5}}}}"#, i % 10))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    write_capture(&cap, "gw", T0, &refs);
    let live = mosquitto_sub(broker.port, "hist/stats/seq", &[]);
    let (ok, _, stderr) = replay(&[
        cap.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{stderr}");
    // Replay exits after the broker confirmed; the subscriber has them all.
    let got = live.wait_for(20, WAIT);
    let payloads: Vec<String> = got.into_iter().map(|r| r.payload).collect();
    let want: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    assert_eq!(payloads, want, "{stderr}");
    assert!(eventually(WAIT, || broker
        .log()
        .contains("replay-test-replay")));
}
