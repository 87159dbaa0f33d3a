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
use sluice_tests::{Feeder, Influxd, Mosquitto, SluiceProcess, feed_seq, mosquitto_sub, wasm};

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

/// Live first, backlog paced: InfluxDB away for 10 s
/// while frames arrive at 200/s, so 2,000 points pile up; the writer holds
/// one window (`batch_lines × (max_batches_in_flight + 1)` = 200 points) and
/// the rest waits in the outbox. After InfluxDB is back, points of frames
/// written after the restart are in the database while the backlog (paced
/// at `backfill_points_per_sec = 200`, so about 9 s of work) is still
/// incomplete — dashboards recover at once — and in the end every point is
/// there exactly once. The observation is a state (new present, old not
/// yet all present), not a timing: the pacing is what keeps the backlog
/// incomplete, whatever the machine's load.
#[test]
fn after_an_influx_outage_new_points_go_first_and_the_backlog_is_paced() {
    let broker = Mosquitto::start();
    let mut influx = Influxd::start();
    influx.create_database("plant");
    let pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.toml");
    let config = config(&pty, broker.port, &influx.url(), dir.path()).replace(
        "batch_lines = 200\n",
        "batch_lines = 100\nmax_batches_in_flight = 1\nbackfill_points_per_sec = 200\n",
    );
    std::fs::write(&path, config).expect("config");
    let sluice = SluiceProcess::run_config(&path);
    let feeder = Feeder::start(&pty.master, 0, 200, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored(&influx).len() < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    influx.stop();
    let stopped_at = feeder.log().next();
    std::thread::sleep(Duration::from_secs(10));
    influx.restart();
    let restarted_at = feeder.log().next();
    let outage = stopped_at..restarted_at;

    // Wait for a point of a frame written a second after the restart.
    let live = restarted_at + 200;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = stored(&influx);
    while !seen.iter().any(|n| *n >= live) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        seen = stored(&influx);
    }
    assert!(seen.iter().any(|n| *n >= live), "{}", sluice.log());
    let backlog_written = seen.iter().filter(|n| outage.contains(n)).count();
    println!(
        "outage frames {outage:?}: {backlog_written} of {} written when frame {live} was",
        outage.end - outage.start
    );
    assert!(
        (backlog_written as u64) < outage.end - outage.start,
        "new points must not wait for the whole backlog"
    );
    assert!(
        sluice.log().contains("writing new points first"),
        "{}",
        sluice.log()
    );

    let total = feeder.stop().next();
    let deadline = Instant::now() + Duration::from_secs(90);
    while (stored(&influx).len() as u64) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        stored(&influx),
        (0..total).collect::<Vec<_>>(),
        "every point exactly once:\n{}",
        sluice.log()
    );
    drop(broker);
}
