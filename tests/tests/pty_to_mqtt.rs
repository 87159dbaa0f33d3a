//! The walking skeleton end to end, with real things only: a pseudo-terminal
//! pair as the serial line, the `sluice` binary running the shipped
//! `examples/gateway.toml`, the json-telemetry component built from
//! `transforms/`, a real mosquitto, and mosquitto's own subscriber.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use sluice::pty::Pty;
use sluice_tests::{Mosquitto, Received, SluiceProcess, mosquitto_sub, repo_root, wasm};

/// One telemetry frame and the messages it must produce, built from the same
/// strings so the expectation does not depend on the transform.
struct TestFrame {
    line: String,
    /// (topic, payload, retain)
    expected: Vec<(String, String, bool)>,
}

fn frame(seq: u32, full: bool) -> TestFrame {
    let t1 = format!("{}.{}", 20 + seq % 7, seq % 10);
    let h1 = format!("{}.5", 40 + seq % 9);
    let bat1 = format!("3.{:02}", 70 - seq % 30); // e.g. "3.70": trailing zero kept
    let t2 = format!("-{}.0", seq % 5); // negative, ".0" kept
    let h2 = "50.2".to_string();
    let bat2 = "3.65".to_string();
    let rssi = format!("-{}", 30 + seq % 40);
    let snr = format!("{}.25", seq % 10);
    let rx = (1000 + seq).to_string();
    let crc = (seq / 3).to_string();
    let n2 = if full {
        format!(r#"{{"t":{t2},"h":{h2},"bat":{bat2}}}"#)
    } else {
        // Missing humidity: skipped, not zero-filled.
        format!(r#"{{"t":{t2},"bat":{bat2}}}"#)
    };
    let line = format!(
        r#"{{"seq":{seq},"n1":{{"t":{t1},"h":{h1},"bat":{bat1}}},"n2":{n2},"sig":{{"rssi":{rssi},"snr":{snr}}},"stats":{{"rx":{rx},"crc_err":{crc}}}}}"#
    );
    let sensor = |topic: &str, value: &str| (format!("iiot/{topic}"), value.to_string(), true);
    let counter = |topic: &str, value: &str| (format!("iiot/{topic}"), value.to_string(), false);
    let mut expected = vec![
        counter("stats/seq", &seq.to_string()),
        sensor("node1/temperature", &t1),
        sensor("node1/humidity", &h1),
        sensor("node1/battery", &bat1),
        sensor("node2/temperature", &t2),
    ];
    if full {
        expected.push(sensor("node2/humidity", &h2));
    }
    expected.extend([
        sensor("node2/battery", &bat2),
        sensor("signal/rssi", &rssi),
        sensor("signal/snr", &snr),
        counter("stats/rx", &rx),
        counter("stats/crc_err", &crc),
    ]);
    TestFrame { line, expected }
}

/// Payloads per topic, in arrival order.
fn by_topic<'a>(items: impl Iterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (topic, payload) in items {
        map.entry(topic.to_owned())
            .or_default()
            .push(payload.to_owned());
    }
    map
}

#[test]
fn serial_frames_reach_mosquitto_with_the_transforms_topics_qos_and_retain() {
    let broker = Mosquitto::start();
    let mut pty = Pty::open().expect("openpty");
    let data_dir = tempfile::tempdir().expect("tempdir");
    let transforms_dir = std::path::Path::new(wasm::JSON_TELEMETRY)
        .parent()
        .expect("component has a directory");

    let frames: Vec<TestFrame> = (1..=20).map(|seq| frame(seq, seq != 7)).collect();
    let expected_count: usize = frames.iter().map(|f| f.expected.len()).sum();

    // Subscribe before anything is published, so every live message counts.
    let live = mosquitto_sub(broker.port, "iiot/#", &[]);

    let config = repo_root().join("examples/gateway.toml");
    let mut sluice = SluiceProcess::spawn(
        &["run", "--config", config.to_str().expect("utf-8 path")],
        &[
            ("SLUICE_SERIAL", pty.path.display().to_string()),
            ("SLUICE_MQTT_HOST", "127.0.0.1".into()),
            ("SLUICE_MQTT_PORT", broker.port.to_string()),
            ("SLUICE_DATA_DIR", data_dir.path().display().to_string()),
            (
                "SLUICE_TRANSFORMS_DIR",
                transforms_dir.display().to_string(),
            ),
        ],
    );
    assert!(
        sluice.wait_for_log("serial port open", Duration::from_secs(30)),
        "sluice did not open the pty:\n{}",
        sluice.log()
    );

    for (i, f) in frames.iter().enumerate() {
        // Noise the framer and transform must survive without losing the
        // good frames around it: a non-JSON line and a blank line.
        if i == 10 {
            pty.master
                .write_all(b"garbage \xff\xfe not json\n\r\n")
                .expect("write");
        }
        pty.master.write_all(f.line.as_bytes()).expect("write");
        pty.master.write_all(b"\n").expect("write");
    }

    let got = live.wait_for(expected_count, Duration::from_secs(30));
    assert_eq!(
        got.len(),
        expected_count,
        "expected {expected_count} messages, got {}.\nsluice log:\n{}",
        got.len(),
        sluice.log()
    );
    // QoS 1 as the transform chose; retain exactly for sensor values.
    let retain_of: BTreeMap<&str, bool> = frames
        .iter()
        .flat_map(|f| f.expected.iter().map(|(t, _, r)| (t.as_str(), *r)))
        .collect();
    for Received {
        retain, qos, topic, ..
    } in &got
    {
        assert_eq!(*qos, 1, "QoS of {topic}");
        assert_eq!(
            Some(retain),
            retain_of.get(topic.as_str()),
            "retain flag of {topic}"
        );
    }
    // Every payload, in order per topic (the guarantee MQTT gives).
    let want = by_topic(
        frames
            .iter()
            .flat_map(|f| f.expected.iter().map(|(t, p, _)| (t.as_str(), p.as_str()))),
    );
    let have = by_topic(got.iter().map(|r| (r.topic.as_str(), r.payload.as_str())));
    assert_eq!(have, want);

    // A subscriber that arrives later sees the last sensor values (retained)
    // and no counters.
    let late = mosquitto_sub(broker.port, "iiot/#", &["--retained-only", "-W", "2"])
        .collect(Duration::from_secs(10));
    let last = frames.last().expect("20 frames");
    let mut want_retained: BTreeMap<String, String> = BTreeMap::new();
    for f in &frames {
        for (topic, payload, retain) in &f.expected {
            if *retain {
                want_retained.insert(topic.clone(), payload.clone());
            }
        }
    }
    let have_retained: BTreeMap<String, String> = late
        .iter()
        .map(|r| (r.topic.clone(), r.payload.clone()))
        .collect();
    assert!(late.iter().all(|r| r.retain), "{late:?}");
    assert_eq!(have_retained, want_retained);
    assert!(
        last.expected
            .iter()
            .any(|(t, _, r)| t.ends_with("stats/rx") && !r)
    );

    // The bad line was counted and logged, not fatal; shutdown is clean.
    assert!(
        sluice.log().contains("decode_malformed"),
        "the malformed frame should be logged with its reason:\n{}",
        sluice.log()
    );
    assert!(
        sluice.stop(),
        "sluice should exit cleanly on SIGTERM:\n{}",
        sluice.log()
    );
    drop(broker);
}
