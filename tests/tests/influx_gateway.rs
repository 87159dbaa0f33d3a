//! End to end with real things only: a pseudo-terminal as the serial line,
//! the `sluice` binary running the shipped `examples/gateway-influx.toml`
//! (plus credentials), the json-telemetry component, a real mosquitto and a
//! real InfluxDB 1.6 with authentication on.

use std::io::Write as _;
use std::time::{Duration, Instant};

use sluice::pty::Pty;
use sluice_tests::{Influxd, Mosquitto, SluiceProcess, repo_root, wasm};

#[test]
fn serial_frames_become_points_in_influxdb() {
    let broker = Mosquitto::start();
    let influx = Influxd::start_with_auth();
    influx.create_database("plant");
    let password = "gateway-Pa55-word";
    influx.query(
        "",
        &format!("CREATE USER sluice WITH PASSWORD '{password}'"),
    );
    influx.query("", "GRANT WRITE ON plant TO sluice");

    let dir = tempfile::tempdir().expect("tempdir");
    let password_file = dir.path().join("influx-password");
    std::fs::write(&password_file, password).expect("password file");
    // The shipped example, with credentials added to its [influx] table (the
    // last table in the file).
    let example =
        std::fs::read_to_string(repo_root().join("examples/gateway-influx.toml")).expect("example");
    assert!(
        example
            .trim_end()
            .ends_with("# password_env = \"SLUICE_INFLUX_PASSWORD\"")
    );
    let config = dir.path().join("gateway-influx.toml");
    std::fs::write(
        &config,
        format!(
            "{example}username = \"sluice\"\npassword_file = \"{}\"\n",
            password_file.display()
        ),
    )
    .expect("config");

    let mut pty = Pty::open().expect("openpty");
    let transforms_dir = std::path::Path::new(wasm::JSON_TELEMETRY)
        .parent()
        .expect("component directory");
    let data_dir = dir.path().join("data");
    let mut sluice = SluiceProcess::spawn(
        &["run", "--config", config.to_str().expect("utf-8 path")],
        &[
            ("SLUICE_SERIAL", pty.path.display().to_string()),
            ("SLUICE_MQTT_HOST", "127.0.0.1".into()),
            ("SLUICE_MQTT_PORT", broker.port.to_string()),
            ("SLUICE_DATA_DIR", data_dir.display().to_string()),
            (
                "SLUICE_TRANSFORMS_DIR",
                transforms_dir.display().to_string(),
            ),
            ("SLUICE_INFLUX_URL", influx.url()),
            ("SLUICE_INFLUX_DB", "plant".into()),
        ],
    );
    assert!(
        sluice.wait_for_log("serial port open", Duration::from_secs(30)),
        "sluice did not open the pty:\n{}",
        sluice.log()
    );

    let frames = 30;
    let mut telemetry = sluice::sim::Telemetry::new(1);
    for _ in 0..frames {
        let line = telemetry.next_line();
        pty.master.write_all(line.as_bytes()).expect("write");
        pty.master.write_all(b"\n").expect("write");
        std::thread::sleep(Duration::from_millis(5));
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let count = |measurement: &str| -> usize {
        influx.query("plant", &format!("SELECT * FROM {measurement}"))["results"][0]["series"][0]
            ["values"]
            .as_array()
            .map_or(0, Vec::len)
    };
    while count("gateway_stats") < frames && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sluice.stop(), "clean shutdown:\n{}", sluice.log());

    assert_eq!(count("gateway_stats"), frames, "{}", sluice.log());
    assert_eq!(count("signal"), frames);
    let points = influx.read_points("plant");
    for node in ["node1", "node2"] {
        let env: Vec<_> = points
            .iter()
            .filter(|p| p.measurement == "environment" && p.tags == [("node".into(), node.into())])
            .collect();
        assert_eq!(env.len(), frames, "{node}");
        assert!(env.iter().all(|p| p.fields.len() == 3), "{env:?}");
    }
    let seqs: Vec<String> =
        influx.query("plant", "SELECT seq FROM gateway_stats")["results"][0]["series"][0]["values"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|row| row[1].as_str().unwrap_or_default().to_owned())
            .collect();
    assert_eq!(
        seqs,
        (1..=frames).map(|s| s.to_string()).collect::<Vec<_>>()
    );

    let log = sluice.log();
    assert!(log.contains("InfluxDB writer started"), "{log}");
    assert!(
        !log.contains(password),
        "the password must never be logged:\n{log}"
    );
    assert!(
        !data_dir.join("dead-letter/influx.jsonl").exists()
            || std::fs::read_to_string(data_dir.join("dead-letter/influx.jsonl"))
                .unwrap_or_default()
                .is_empty(),
        "nothing dead-lettered"
    );
}
