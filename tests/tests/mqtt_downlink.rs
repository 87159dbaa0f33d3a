//! Downlink end to end, real things only: `mosquitto_pub` → mosquitto →
//! `sluice run` (the shipped `examples/gateway.toml`, which subscribes to
//! `iiot/cmd/#`) → the json-telemetry transform's `encode-command` → the
//! port's newline framing → the pseudo-terminal, read on its master side.
//! Uplink keeps flowing meanwhile; a command the transform refuses and a
//! retained (stale) command are never written.

use std::io::Write as _;
use std::time::Duration;

use sluice::pty::Pty;
use sluice_tests::serial::{MasterReader, WAIT};
use sluice_tests::{
    Mosquitto, SluiceProcess, mosquitto_pub as publish, mosquitto_sub, repo_root, wasm,
};

#[test]
fn mqtt_commands_are_encoded_by_the_transform_and_written_to_the_port_in_order() {
    let broker = Mosquitto::start();
    let mut pty = Pty::open().expect("openpty");
    let written = MasterReader::start(&pty);
    let data_dir = tempfile::tempdir().expect("tempdir");
    let transforms_dir = std::path::Path::new(wasm::JSON_TELEMETRY)
        .parent()
        .expect("component has a directory");

    // A stale retained command waiting on the broker (an empty retained
    // payload would delete it instead): delivered to sluice on
    // subscribe with the retain flag, and must not be executed.
    publish(broker.port, "iiot/cmd/node1/reboot", "now", &["-r"]);

    let config = repo_root().join("examples/gateway.toml");
    let mut sluice = SluiceProcess::spawn(
        &["run", "--config", config.to_str().expect("utf-8 path")],
        &[
            ("SLUICE_SERIAL", pty.path.display().to_string()),
            ("SLUICE_MQTT_PORT", broker.port.to_string()),
            ("SLUICE_DATA_DIR", data_dir.path().display().to_string()),
            (
                "SLUICE_TRANSFORMS_DIR",
                transforms_dir.display().to_string(),
            ),
        ],
    );
    assert!(
        sluice.wait_for_log("downlink subscribed", Duration::from_secs(30)),
        "sluice did not subscribe to the command topic:\n{}",
        sluice.log()
    );
    assert!(
        sluice.wait_for_log("retained downlink command ignored", WAIT),
        "the retained command should be ignored and logged:\n{}",
        sluice.log()
    );

    let uplink = mosquitto_sub(broker.port, "iiot/stats/seq", &[]);
    let mut want = String::new();
    for i in 0..30 {
        // Uplink and downlink at the same time.
        writeln!(pty.master, r#"{{"seq":{i}}}"#).expect("write frame");
        if i == 15 {
            // Refused by the transform (no such node): counted, not written.
            publish(broker.port, "iiot/cmd/pump/start", "1", &[]);
        }
        let (topic, payload, line) = match i % 3 {
            0 => (
                "iiot/cmd/node1/interval",
                i.to_string(),
                format!(r#"{{"to":"n1","cmd":"interval","arg":{i}}}"#),
            ),
            1 => (
                "iiot/cmd/node2/led",
                format!(r#"{{"on":true,"n":{i}}}"#),
                format!(r#"{{"to":"n2","cmd":"led","arg":{{"on":true,"n":{i}}}}}"#),
            ),
            _ => (
                "iiot/cmd/node1/label",
                format!("room {i}"),
                format!(r#"{{"to":"n1","cmd":"label","arg":"room {i}"}}"#),
            ),
        };
        publish(broker.port, topic, &payload, &[]);
        want.push_str(&line);
        want.push('\n');
    }

    let got = written.wait_for(want.len(), WAIT);
    assert_eq!(
        String::from_utf8_lossy(&got),
        want,
        "commands on the serial line, in order, nothing else.\nsluice log:\n{}",
        sluice.log()
    );
    let seqs = uplink.wait_for(30, WAIT);
    assert_eq!(
        seqs.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
        (0..30).map(|i| i.to_string()).collect::<Vec<_>>(),
        "uplink frames flow while commands are written"
    );
    assert!(
        sluice
            .log()
            .contains("transform refused a downlink command"),
        "the refused command should be logged with its reason:\n{}",
        sluice.log()
    );
    // Nothing more arrives (the refused and the retained command stay unwritten).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        written.wait_for(want.len(), Duration::ZERO).len(),
        want.len()
    );
    assert!(sluice.stop(), "clean shutdown:\n{}", sluice.log());
}
