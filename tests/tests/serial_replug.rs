//! Unplug and replug, as udev does it: the config names a symlink; the
//! "device" (a pty) goes away, a new one appears, the symlink is pointed at
//! it, and reading resumes. Every wait has a deadline; nothing asserts on
//! timing.

use std::io::Write as _;
use std::time::Duration;

use sluice::pty::Pty;
use sluice::sim::wait_drained;
use sluice_tests::serial::{Link, PortHarness, WAIT, eventually, pipeline_config};
use sluice_tests::{Mosquitto, SluiceProcess, mosquitto_sub, wasm};

fn harness(link: &Link) -> PortHarness {
    // A short maximum backoff keeps the test quick; the behaviour is the
    // same with the default 5 s.
    let config = pipeline_config(
        "replug",
        &link.path,
        "reconnect_min_ms = 20\nreconnect_max_ms = 200",
        "",
    );
    PortHarness::start(&config).expect("port starts")
}

#[test]
fn delivery_resumes_after_each_replug_through_the_symlink() {
    let link = Link::new();
    let mut pty = Pty::open().expect("openpty");
    link.plug(&pty);
    let mut port = harness(&link);
    for round in 1..=3u64 {
        assert!(port.wait_opens(round), "round {round}: not reopened");
        for i in 0..5 {
            writeln!(pty.master, "round {round} frame {i}").expect("write");
        }
        let got = port.recv_n(5, WAIT);
        let want: Vec<Vec<u8>> = (0..5)
            .map(|i| format!("round {round} frame {i}").into_bytes())
            .collect();
        assert_eq!(got, want, "round {round}");
        // Unplug: the device and its node go away…
        assert!(wait_drained(&pty, WAIT));
        link.unplug();
        drop(pty);
        assert!(
            eventually(WAIT, || !port.is_open()),
            "round {round}: loss not noticed"
        );
        // …and come back as a new node behind the same symlink.
        pty = Pty::open().expect("openpty");
        link.plug(&pty);
    }
    assert!(port.wait_opens(4));
    writeln!(pty.master, "last").expect("write");
    assert_eq!(port.recv(WAIT), Some(b"last".to_vec()));
    assert_eq!(port.dropped("frame_truncated"), 0);
    assert!(port.stop());
}

#[test]
fn a_port_absent_at_start_up_is_read_once_it_appears() {
    let link = Link::new();
    let mut port = harness(&link);
    assert!(eventually(WAIT, || port.serial().open_failures("missing") >= 2));
    assert!(!port.is_open());
    let mut pty = Pty::open().expect("openpty");
    link.plug(&pty);
    assert!(port.wait_opens(1));
    pty.master
        .write_all(b"hello from a late device\n")
        .expect("write");
    assert_eq!(port.recv(WAIT), Some(b"hello from a late device".to_vec()));
    assert!(port.stop());
}

#[test]
fn a_symlink_to_nowhere_is_missing_until_the_device_is_back() {
    let link = Link::new();
    link.dangle();
    let mut port = harness(&link);
    assert!(eventually(WAIT, || port.serial().open_failures("missing") >= 1));
    let mut pty = Pty::open().expect("openpty");
    link.plug(&pty);
    assert!(port.wait_opens(1));
    pty.master.write_all(b"back\n").expect("write");
    assert_eq!(port.recv(WAIT), Some(b"back".to_vec()));
    assert!(port.stop());
}

/// The real binary, the shipped gateway config, a real broker: unplug and
/// replug twice; every frame written while plugged in is published, and the
/// log has one "lost" line per unplug, not one per retry.
#[test]
fn binary_resumes_publishing_after_replug() {
    let broker = Mosquitto::start();
    let link = Link::new();
    let data_dir = tempfile::tempdir().expect("tempdir");
    let transforms_dir = std::path::Path::new(wasm::JSON_TELEMETRY)
        .parent()
        .expect("component has a directory");
    let live = mosquitto_sub(broker.port, "iiot/stats/seq", &[]);
    let config = sluice_tests::repo_root().join("examples/gateway.toml");
    let mut pty = Pty::open().expect("openpty");
    link.plug(&pty);
    let mut sluice = SluiceProcess::spawn(
        &["run", "--config", config.to_str().expect("utf-8 path")],
        &[
            ("SLUICE_SERIAL", link.path.display().to_string()),
            ("SLUICE_MQTT_HOST", "127.0.0.1".into()),
            ("SLUICE_MQTT_PORT", broker.port.to_string()),
            ("SLUICE_DATA_DIR", data_dir.path().display().to_string()),
            (
                "SLUICE_TRANSFORMS_DIR",
                transforms_dir.display().to_string(),
            ),
            ("SLUICE_LOG", "info".into()),
        ],
    );
    let mut seq = 0u32;
    for round in 1..=3 {
        assert!(
            eventually(WAIT, || sluice.log().matches("serial port open").count()
                >= round),
            "round {round}: port not (re)opened:\n{}",
            sluice.log()
        );
        for _ in 0..5 {
            seq += 1;
            writeln!(
                pty.master,
                r#"{{"seq":{seq},"n1":{{"t":21.5,"h":40.0,"bat":3.7}},"sig":{{"rssi":-60,"snr":7.0}},"stats":{{"rx":{seq},"crc_err":0}}}}"#
            )
            .expect("write");
        }
        let got = live.wait_for(seq as usize, WAIT);
        assert_eq!(got.len(), seq as usize, "round {round}:\n{}", sluice.log());
        if round < 3 {
            assert!(wait_drained(&pty, WAIT));
            link.unplug();
            drop(pty);
            std::thread::sleep(Duration::from_millis(300)); // unplugged for a while
            pty = Pty::open().expect("openpty");
            link.plug(&pty);
        }
    }
    let payloads: Vec<String> = live.received().into_iter().map(|r| r.payload).collect();
    let want: Vec<String> = (1..=seq).map(|s| s.to_string()).collect();
    assert_eq!(payloads, want);
    let log = sluice.log();
    assert_eq!(log.matches("serial port lost").count(), 2, "{log}");
    assert!(
        !log.contains("cannot open serial port"),
        "the gap after a loss is implied:\n{log}"
    );
    assert!(sluice.stop(), "clean exit:\n{}", sluice.log());
}
