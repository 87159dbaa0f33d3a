//! The bad-input matrix of the serial side, each case on a real
//! pseudo-terminal through the real port task (or the real binary): no
//! panic, the right counter moves, good frames before and after arrive in
//! order.

use std::io::Write as _;
use std::time::{Duration, Instant};

use sluice::pty::Pty;
use sluice::sim::wait_drained;
use sluice_tests::serial::{PortHarness, WAIT, eventually, pipeline_config, write_in_background};
use sluice_tests::{SluiceProcess, wasm};

fn harness(pty: &Pty, serial_extra: &str) -> PortHarness {
    PortHarness::start(&pipeline_config("bad", &pty.path, serial_extra, "")).expect("port starts")
}

#[test]
fn garbage_invalid_utf8_and_empty_frames_between_good_ones() {
    let mut pty = Pty::open().expect("openpty");
    let mut port = harness(&pty, "");
    assert!(port.wait_opens(1));
    pty.master
        .write_all(b"good1\n\n\r\n\xff\xfe\x80 not text \x00\x01\ngood2\r\n\n\ngood3\n")
        .expect("write");
    let frames = port.recv_n(4, WAIT);
    assert_eq!(
        frames,
        vec![
            b"good1".to_vec(),
            b"\xff\xfe\x80 not text \x00\x01".to_vec(), // bytes, not text: delivered exactly
            b"good2".to_vec(),
            b"good3".to_vec(),
        ]
    );
    assert!(eventually(WAIT, || port.dropped("frame_empty") == 4));
    assert_eq!(port.received(), 4);
    assert!(port.stop());
}

#[test]
fn cobs_garbage_between_frames_is_dropped_and_counted() {
    let mut pty = Pty::open().expect("openpty");
    let mut port = harness(&pty, "framing = { kind = \"cobs\" }");
    assert!(port.wait_opens(1));
    // "hi" COBS-encoded is 03 'h' 'i' 00; 05 01 00 claims four bytes and
    // ends after one: invalid.
    pty.master
        .write_all(b"\x03hi\x00\x05\x01\x00\x03yo\x00")
        .expect("write");
    assert_eq!(port.recv_n(2, WAIT), vec![b"hi".to_vec(), b"yo".to_vec()]);
    assert!(eventually(WAIT, || port.dropped("cobs_invalid") == 1));
    assert!(port.stop());
}

#[test]
fn a_mebibyte_without_delimiter_is_dropped_and_the_port_resynchronises() {
    let pty = Pty::open().expect("openpty");
    let mut port = harness(&pty, "max_frame_bytes = 4096");
    assert!(port.wait_opens(1));
    let mut bytes = b"before\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'x', 1 << 20));
    bytes.extend_from_slice(b"\nafter\n");
    let writer = write_in_background(&pty, bytes);
    assert_eq!(
        port.recv_n(2, WAIT),
        vec![b"before".to_vec(), b"after".to_vec()]
    );
    assert!(writer.join().is_ok());
    assert_eq!(port.dropped("frame_oversized"), 1);
    assert_eq!(port.serial().bytes_received.get(), (1 << 20) + 7 + 7);
    assert!(port.stop());
}

#[test]
fn the_device_vanishing_mid_frame_counts_a_truncated_frame() {
    let mut pty = Pty::open().expect("openpty");
    let mut port = harness(&pty, "");
    assert!(port.wait_opens(1));
    pty.master.write_all(b"complete\nhalf a fr").expect("write");
    assert_eq!(port.recv(WAIT), Some(b"complete".to_vec()));
    // Closing a pty discards what the slave has not read: wait until the
    // host has the partial frame, then pull the plug.
    assert!(wait_drained(&pty, WAIT));
    drop(pty);
    assert!(eventually(WAIT, || port.dropped("frame_truncated") == 1));
    assert!(eventually(WAIT, || !port.is_open()));
    assert_eq!(port.unexpected_frame(Duration::from_millis(200)), None);
    assert!(port.stop());
}

#[test]
fn a_directory_or_a_missing_path_is_retried_without_a_busy_loop() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, reason) in [
        (dir.path().to_owned(), "directory"),
        (dir.path().join("not-there"), "missing"),
    ] {
        let config = pipeline_config(
            "bad",
            &path,
            "reconnect_min_ms = 50\nreconnect_max_ms = 200",
            "",
        );
        let mut port = PortHarness::start(&config).expect("not fatal: required = false");
        let started = Instant::now();
        assert!(eventually(WAIT, || port.serial().open_failures(reason) >= 3));
        let attempts = port.serial().open_failures(reason);
        // The backoff never waits less than reconnect_min_ms.
        let bound = started.elapsed().as_millis() as u64 / 50 + 2;
        assert!(
            attempts <= bound,
            "{attempts} attempts, at most {bound} expected"
        );
        assert!(!port.is_open());
        assert!(port.stop());
    }
}

#[test]
fn ptys_accept_any_baud_rate_so_an_odd_one_still_reads() {
    // Linux ptys take every rate TCSETS2/BOTHER can express (checked: 0, 1,
    // 12345, 4000000, u32::MAX) and report it back unchanged, so no pty
    // refuses a baud rate; the refusal path (read-back mismatch) is unit
    // tested in `source::serial::open`, and config validation refuses rates
    // outside 50..=16000000.
    let mut pty = Pty::open().expect("openpty");
    let mut port = harness(
        &pty,
        "baud = 1234567\ndata_bits = 7\nparity = \"even\"\nstop_bits = 2",
    );
    assert!(port.wait_opens(1));
    pty.master.write_all(b"odd baud\n").expect("write");
    assert_eq!(port.recv(WAIT), Some(b"odd baud".to_vec()));
    assert_eq!(port.serial().open_failures("baud_refused"), 0);
    assert!(port.stop());
}

#[test]
fn a_port_held_exclusively_elsewhere_is_retried_until_released() {
    use nix::fcntl::{Flock, FlockArg};
    let mut pty = Pty::open().expect("openpty");
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pty.path)
        .expect("open slave");
    let lock = Flock::lock(holder, FlockArg::LockExclusiveNonblock).expect("flock");
    let mut port = harness(&pty, "reconnect_min_ms = 20\nreconnect_max_ms = 100");
    assert!(eventually(WAIT, || port.serial().open_failures("busy") >= 2));
    assert!(!port.is_open());
    drop(lock);
    assert!(port.wait_opens(1));
    pty.master.write_all(b"released\n").expect("write");
    assert_eq!(port.recv(WAIT), Some(b"released".to_vec()));
    assert!(port.stop());
}

/// A config for the binary with one pipeline on `path`.
fn binary_config(
    dir: &std::path::Path,
    path: &std::path::Path,
    serial_extra: &str,
) -> std::path::PathBuf {
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\ndata_dir = {data}\n[[pipeline]]\nname = \"gw\"\n\
             transform = {{ module = {module} }}\n[pipeline.serial]\npath = {path}\n{serial_extra}\n",
            data = toml_str(&dir.join("data")),
            module = toml_str(std::path::Path::new(wasm::JSON_TELEMETRY)),
            path = toml_str(path),
        ),
    )
    .expect("write config");
    config
}

fn toml_str(path: &std::path::Path) -> String {
    format!("{:?}", path.display().to_string())
}

#[test]
fn binary_logs_an_unusable_path_once_not_per_attempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = binary_config(
        dir.path(),
        dir.path(),
        "reconnect_min_ms = 20\nreconnect_max_ms = 40",
    );
    let mut sluice = SluiceProcess::spawn(
        &["run", "--config", config.to_str().expect("utf-8")],
        &[("SLUICE_LOG", "info".into())],
    );
    assert!(
        sluice.wait_for_log("is a directory", Duration::from_secs(30)),
        "{}",
        sluice.log()
    );
    // Many attempts later (≥ 25 at ≤ 40 ms each), still one line.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        sluice.log().matches("is a directory").count(),
        1,
        "{}",
        sluice.log()
    );
    assert!(sluice.stop(), "clean exit:\n{}", sluice.log());
}

#[test]
fn binary_refuses_to_start_without_a_required_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("ttyUSB9");
    let config = binary_config(dir.path(), &missing, "required = true");
    let out = std::process::Command::new(sluice_tests::sluice_bin())
        .args(["run", "--config", config.to_str().expect("utf-8")])
        .output()
        .expect("run sluice");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pipeline \"gw\": serial port")
            && stderr.contains("does not exist")
            && stderr.contains("serial.required = true"),
        "{stderr}"
    );
}
