//! Shutdown: bounded by `shutdown_timeout_secs` in every state — here the
//! worst one, a broker that is down and an outbox full under `when_full =
//! "block"`, where the orderly shutdown can never finish — with what the
//! outbox holds delivered after the next start; and prompt and complete
//! once everything is delivered, whatever the outbox dropped before.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sluice::pty::Pty;
use sluice_tests::{Feeder, Mosquitto, SluiceProcess, free_port, metric, mosquitto_sub, wasm};

const SHUTDOWN_SECS: u64 = 3;

fn wait(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// A config: pty → json-telemetry → mosquitto on `port`, a 64 KiB MQTT
/// outbox with `when_full`, the admin API on `admin`.
fn write_config(
    dir: &std::path::Path,
    pty: &Pty,
    port: u16,
    admin: u16,
    when_full: &str,
) -> std::path::PathBuf {
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            r#"
version = 1
data_dir = "{data}"
shutdown_timeout_secs = {SHUTDOWN_SECS}
[admin]
listen = "127.0.0.1:{admin}"
[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "shutdown-test"
stats_interval_secs = 0
reconnect_min_ms = 50
reconnect_max_ms = 200
[mqtt.outbox]
max_bytes = 65536
when_full = "{when_full}"
[[pipeline]]
name = "gw"
serial = {{ path = "{pty}" }}
transform = {{ module = "{module}" }}
"#,
            data = dir.display(),
            pty = pty.path.display(),
            module = wasm::JSON_TELEMETRY,
        ),
    )
    .expect("config");
    config
}

#[test]
fn sigterm_is_bounded_with_the_broker_down_and_the_outbox_full() {
    let mut broker = Mosquitto::start();
    let pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let config = write_config(dir.path(), &pty, broker.port, admin, "block");
    let subscriber = mosquitto_sub(
        broker.port,
        "iiot/stats/seq",
        &["-c", "-i", "shutdown-test-sub", "-x", "3600"],
    );
    let mut sluice = SluiceProcess::run_config(&config);
    let items = || metric(admin, r#"sluice_outbox_items{sink="mqtt"}"#);

    // The broker goes away; frames fill the outbox, then the pipeline's
    // queues, then the pty: the feeder stalls.
    broker.stop();
    let feeder = Feeder::start(&pty.master, 0, 0, Some(20_000));
    let mut last = (u64::MAX, f64::NAN);
    assert!(
        wait(Duration::from_secs(60), || {
            std::thread::sleep(Duration::from_secs(1));
            let now = (feeder.log().next(), items());
            let stalled = now == last && now.1 > 0.0;
            last = now;
            stalled
        }),
        "the outbox never filled:\n{}",
        sluice.log()
    );
    let held = items();

    sluice.signal(Signal::SIGTERM);
    let status = sluice.wait_exit(Duration::from_secs(SHUTDOWN_SECS + 20));
    let log = sluice.log();
    let status = status.unwrap_or_else(|| panic!("SIGTERM did not end the host:\n{log}"));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("shutdown did not finish in time"), "{log}");

    // What the outbox held is delivered after the next start.
    feeder.request_stop();
    broker.restart();
    let _sluice = SluiceProcess::run_config(&config);
    assert!(
        wait(Duration::from_secs(60), || items() == 0.0
            && subscriber.received().len() as f64 >= held),
        "{held} items held at the shutdown, {} received",
        subscriber.received().len()
    );
}

/// Items the outbox evicted (or expired) before they were handed to the
/// client used to be waited for at shutdown as if still to come: every
/// shutdown after an eviction waited its full flush time and left the
/// confirmations in flight to be re-sent after the restart.
#[test]
fn after_evictions_a_drained_outbox_shuts_down_with_nothing_unconfirmed() {
    let mut broker = Mosquitto::start();
    let pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let config = write_config(dir.path(), &pty, broker.port, admin, "drop_oldest");
    let mut sluice = SluiceProcess::run_config(&config);
    let evicted = || {
        metric(
            admin,
            r#"sluice_sink_dropped_total{sink="mqtt",reason="outbox_overflow"}"#,
        )
    };

    broker.stop();
    let fed = Feeder::start(&pty.master, 0, 0, Some(3_000)).join().next();
    assert_eq!(fed, 3_000);
    assert!(
        wait(Duration::from_secs(60), || evicted() > 0.0),
        "the outbox never overflowed:\n{}",
        sluice.log()
    );
    broker.restart();
    assert!(
        wait(Duration::from_secs(60), || metric(
            admin,
            r#"sluice_outbox_items{sink="mqtt"}"#
        ) == 0.0),
        "the outbox never drained:\n{}",
        sluice.log()
    );

    sluice.signal(Signal::SIGTERM);
    let status = sluice.wait_exit(Duration::from_secs(SHUTDOWN_SECS + 20));
    let log = sluice.log();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    assert!(
        !log.contains("has not confirmed") && !log.contains("did not confirm"),
        "everything was delivered, yet shutdown reports unconfirmed messages:\n{log}"
    );
}
