//! The InfluxDB outbox against the real thing: `sluice run` (a process, with
//! a `data_dir`), a real influxd that is stopped, `kill -9` of sluice during
//! the outage, and a real mosquitto that must keep receiving while InfluxDB
//! is away (the outbox, not the router, absorbs the outage).
//!
//! Every point is stamped with its frame's receive time, so a re-sent point
//! overwrites itself in InfluxDB: after the crash the database must hold
//! every sequence number exactly once. As in `outbox_crash.rs`, the feed
//! pauses before the kill so only committed data is at stake.

use std::time::{Duration, Instant};

use sluice::pty::Pty;
use sluice_tests::{Influxd, Mosquitto, SluiceProcess, feed_seq, mosquitto_sub, wasm};

fn config(pty: &Pty, broker: u16, influx: &str, data_dir: &std::path::Path) -> String {
    format!(
        r#"
version = 1
data_dir = "{}"
[admin]
enabled = false
[mqtt]
host = "127.0.0.1"
port = {broker}
client_id = "influx-outbox-test"
stats_interval_secs = 0
[influx]
url = "{influx}"
database = "plant"
batch_lines = 200
flush_interval_ms = 50
# A small writer queue: without the outbox, an outage would fill it at once
# and stall MQTT behind it.
channel_capacity = 50
retry_min_ms = 50
retry_max_ms = 200
[[pipeline]]
name = "gw"
serial = {{ path = "{}" }}
transform = {{ module = "{}" }}
"#,
        data_dir.display(),
        pty.path.display(),
        wasm::JSON_TELEMETRY,
    )
}

/// Distinct `seq` values stored in `gateway_stats`.
fn stored(influx: &Influxd) -> Vec<u64> {
    let reply = influx.query("plant", "SELECT seq FROM gateway_stats");
    let mut seqs: Vec<u64> = reply["results"][0]["series"][0]["values"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|row| {
                    row[1]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .or(row[1].as_u64())
                })
                .collect()
        })
        .unwrap_or_default();
    seqs.sort_unstable();
    seqs
}

#[test]
fn influx_outage_and_kill_9_lose_no_point_and_do_not_stall_mqtt() {
    let broker = Mosquitto::start();
    let mut influx = Influxd::start();
    influx.create_database("plant");
    let mut pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config(&pty, broker.port, &influx.url(), dir.path())).expect("config");
    let subscriber = mosquitto_sub(broker.port, "iiot/stats/seq", &[]);

    let mut sluice = SluiceProcess::run_config(&path);
    let mut next = feed_seq(&mut pty.master, 0, 300);
    let wait_stored = |influx: &Influxd, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while stored(influx).len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        stored(influx)
    };
    assert_eq!(wait_stored(&influx, 300).len(), 300, "{}", sluice.log());

    // InfluxDB away: MQTT keeps flowing, points pile up in the outbox.
    influx.stop();
    next = feed_seq(&mut pty.master, next, 1000);
    let live = subscriber.wait_for(next as usize, Duration::from_secs(30));
    assert_eq!(
        live.len(),
        next as usize,
        "MQTT must not wait for InfluxDB:\n{}",
        sluice.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    sluice.kill();

    // Back in the other order: sluice first, then InfluxDB.
    let mut sluice = SluiceProcess::run_config(&path);
    next = feed_seq(&mut pty.master, next, 300);
    influx.restart();
    next = feed_seq(&mut pty.master, next, 300);
    let total = next as usize;
    let seqs = wait_stored(&influx, total);
    assert_eq!(
        seqs,
        (0..total as u64).collect::<Vec<_>>(),
        "every point exactly once:\n{}",
        sluice.log()
    );
    assert!(sluice.stop(), "{}", sluice.log());
    assert!(
        !dir.path().join("dead-letter/influx.jsonl").exists()
            || std::fs::read_to_string(dir.path().join("dead-letter/influx.jsonl"))
                .unwrap_or_default()
                .is_empty(),
        "nothing dead-lettered"
    );
}
