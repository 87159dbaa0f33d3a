//! Binary framing end to end, with real things only: a pseudo-terminal as
//! the serial line, the `sluice` binary running the shipped
//! `examples/cayenne.toml` (COBS framing with a CRC-16/CCITT-FALSE trailer),
//! the cayenne-lpp component built from `transforms/`, a real mosquitto and
//! mosquitto's own subscriber.
//!
//! Between the good frames the line carries what real lines carry: noise
//! with and without a 0x00, a frame with a flipped bit, a frame longer than
//! `max_frame_bytes`, a frame whose CRC is fine but whose LPP is not. Every
//! good frame's messages must arrive, in order; every bad one must be
//! counted with its reason (seen in the debug log, one line per drop).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use bytes::BytesMut;
use sluice::pty::Pty;
use sluice_framing::{CrcKind, Framer, FramingConfig};
use sluice_tests::{Mosquitto, Received, SluiceProcess, mosquitto_sub, repo_root, wasm};

/// The framing of `examples/cayenne.toml`.
fn framer() -> Framer {
    FramingConfig::Cobs {
        crc: Some(CrcKind::Crc16CcittFalse),
    }
    .build(256, 115_200)
}

fn cobs(payload: &[u8]) -> Vec<u8> {
    let mut wire = BytesMut::new();
    framer().encode(payload, &mut wire).expect("encodable");
    wire.to_vec()
}

/// One good LPP frame and the `(topic, payload)` it must produce.
fn lpp_frame(seq: u16) -> (Vec<u8>, Vec<(String, String)>) {
    let temp = i16::try_from(seq).expect("small") * 7 - 40; // tenths of °C, some negative
    let humidity = (seq % 200) as u8; // half percent
    let accel_x = i16::try_from(seq).expect("small") * -3; // mG
    let mut payload = vec![0x01, 0x02]; // channel 1, analog input: the sequence number
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.extend_from_slice(&[0x03, 0x67]);
    payload.extend_from_slice(&temp.to_be_bytes());
    payload.extend_from_slice(&[0x03, 0x68, humidity]);
    payload.extend_from_slice(&[0x06, 0x71]);
    payload.extend_from_slice(&accel_x.to_be_bytes());
    payload.extend_from_slice(&[0x00, 0x00, 0x03, 0xE8]); // y = 0, z = 1 G
    let fixed = |v: i64, decimals: u32| {
        let pow = 10i64.pow(decimals);
        let sign = if v < 0 { "-" } else { "" };
        format!(
            "{sign}{}.{:0w$}",
            v.abs() / pow,
            v.abs() % pow,
            w = decimals as usize
        )
    };
    let t = |s: &str| format!("lpp/node7/{s}");
    let expected = vec![
        (t("analog_input_1"), fixed(i64::from(seq), 2)),
        (t("temperature_3"), fixed(i64::from(temp), 1)),
        (t("humidity_3"), fixed(i64::from(humidity) * 5, 1)),
        (t("accelerometer_6/x"), fixed(i64::from(accel_x), 3)),
        (t("accelerometer_6/y"), "0.000".to_string()),
        (t("accelerometer_6/z"), "1.000".to_string()),
    ];
    (payload, expected)
}

fn by_topic(items: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (topic, payload) in items {
        map.entry(topic.clone()).or_default().push(payload.clone());
    }
    map
}

#[test]
fn cobs_crc_frames_survive_a_noisy_line_in_order_and_bad_ones_are_counted() {
    let broker = Mosquitto::start();
    let mut pty = Pty::open().expect("openpty");
    let data_dir = tempfile::tempdir().expect("tempdir");
    let transforms_dir = std::path::Path::new(wasm::CAYENNE_LPP)
        .parent()
        .expect("component has a directory");

    let live = mosquitto_sub(broker.port, "lpp/#", &[]);
    let config = repo_root().join("examples/cayenne.toml");
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
            ("SLUICE_LPP_DEVICE", "node7".into()),
        ],
    );
    assert!(
        sluice.wait_for_log("serial port open", Duration::from_secs(30)),
        "sluice did not open the pty:\n{}",
        sluice.log()
    );

    let mut expected = Vec::new();
    let mut wire = Vec::new();
    // The port may open mid-frame: start with the tail of one.
    wire.extend_from_slice(&[0x67, 0x01, 0x10, 0x00]);
    for seq in 1..=30u16 {
        let (payload, messages) = lpp_frame(seq);
        match seq {
            // Noise ended by a 0x00: a COBS block cut short.
            5 => wire.extend_from_slice(b"\x0c\xff\xfe noise\x00"),
            // Noise without any 0x00: the next frame's leading 0x00 ends it.
            9 => wire.extend_from_slice(b"\x13\x37\xc0\xde more noise \xff"),
            // A flipped bit: the CRC catches it.
            12 => {
                let mut corrupt = cobs(&payload);
                corrupt[5] ^= 0x04;
                wire.extend_from_slice(&corrupt);
            }
            // Longer than max_frame_bytes (256).
            17 => {
                let mut big = BytesMut::new();
                FramingConfig::Cobs {
                    crc: Some(CrcKind::Crc16CcittFalse),
                }
                .build(4096, 115_200)
                .encode(&[0x01; 600], &mut big)
                .expect("encodable");
                wire.extend_from_slice(&big);
            }
            // Good framing, bad LPP: an unknown type (decode error, counted).
            21 => wire.extend_from_slice(&cobs(&[0x01, 0x67, 0x00, 0x10, 0x02, 0x74, 0x00])),
            // Zero-length frame (COBS `01` + nothing): dropped as empty.
            25 => wire.extend_from_slice(b"\x00\x01\x00"),
            _ => {}
        }
        wire.extend_from_slice(&cobs(&payload));
        expected.extend(messages);
    }
    // Written in odd-sized pieces so frames straddle reads.
    for piece in wire.chunks(37) {
        pty.master.write_all(piece).expect("write");
        std::thread::sleep(Duration::from_millis(2));
    }

    let got = live.wait_for(expected.len(), Duration::from_secs(30));
    let log = sluice.log();
    assert_eq!(
        got.len(),
        expected.len(),
        "expected {} messages, got {}.\nsluice log:\n{log}",
        expected.len(),
        got.len()
    );
    for Received {
        retain, qos, topic, ..
    } in &got
    {
        assert_eq!((*qos, *retain), (1, true), "QoS and retain of {topic}");
    }
    let got: Vec<(String, String)> = got.into_iter().map(|r| (r.topic, r.payload)).collect();
    // Every payload, in order per topic (the order MQTT guarantees); the
    // analog input on channel 1 carries the frame's sequence number.
    assert_eq!(by_topic(&got), by_topic(&expected));

    // Every bad frame counted, with its reason.
    for (reason, count) in [
        ("cobs_invalid", 3),
        ("crc_mismatch", 1),
        ("frame_oversized", 1),
        ("frame_empty", 1),
    ] {
        let seen = log
            .lines()
            .filter(|l| l.contains("framer dropped bytes") && l.contains(reason))
            .count();
        assert!(
            seen >= count,
            "expected {count} drop(s) with reason {reason}, saw {seen}.\nsluice log:\n{log}"
        );
    }
    assert!(
        log.contains("unknown LPP type 0x74 at byte 5"),
        "the LPP decode error is reported with its offset:\n{log}"
    );
    assert!(sluice.stop(), "sluice exits cleanly:\n{}", sluice.log());
}
