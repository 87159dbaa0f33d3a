//! Modbus TCP polling against a real Modbus server: pymodbus
//! (`tests/support/modbus_device.py`), the `sluice` binary polling it with
//! the shipped modbus-registers transform, a real mosquitto and its own
//! subscriber. Values, a register that changes, an exception (a read past
//! the device's registers), a unit the gateway cannot reach beside live
//! ones, writes from MQTT (done, and refused by the device), and the server
//! going away and coming back.

use std::time::Duration;

use sluice_tests::{
    ModbusDevice, Mosquitto, Received, SluiceProcess, free_port, metric, mosquitto_sub, wasm,
};

fn write_config(dir: &std::path::Path, admin: u16, broker: u16, device: u16) -> std::path::PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            r#"
version = 1
data_dir = "{dir}"
[admin]
listen = "127.0.0.1:{admin}"
[mqtt]
host = "127.0.0.1"
port = {broker}
client_id = "modbus-test"
stats_interval_secs = 0
[[pipeline]]
name = "plant"
[pipeline.downlink]
topic = "plant/+/+/set"
[pipeline.modbus]
tcp = "127.0.0.1:{device}"
timeout_ms = 300
backoff_min_ms = 200
backoff_max_ms = 1000
[[pipeline.modbus.device]]
unit = 1
read = [
  {{ table = "holding", address = 0, count = 2, interval_ms = 100 }},
  {{ table = "input", address = 0, count = 4, interval_ms = 200 }},
  {{ table = "coils", address = 0, count = 8, interval_ms = 200 }},
  {{ table = "holding", address = 50, count = 2, interval_ms = 200 }},
]
[[pipeline.modbus.device]]
unit = 2
read = [{{ table = "holding", address = 0, count = 2, interval_ms = 200 }}]
[[pipeline.modbus.device]]
unit = 9
read = [{{ table = "holding", address = 0, count = 1, interval_ms = 100 }}]
{transform}"#,
            dir = dir.display(),
            transform = transform(),
        ),
    )
    .expect("config");
    path
}

/// The pipeline's transform: the shipped register map, with a map of the
/// simulated devices.
fn transform() -> String {
    format!(
        r#"[pipeline.transform]
module = "{}"
[pipeline.transform.config]
prefix = "plant"
retain = false
"device.1" = "boiler"
"device.2" = "meter"
"point.counter" = "holding 0 u16 unit_id=1"
"point.pressure" = "holding 1 u16 scale=0.1 unit_id=1 writable=true"
"point.temperature" = "input 0 f32 unit_id=1"
"point.offset" = "input 2 i32 unit_id=1"
"point.valve" = "coils 0 bool unit_id=1"
"point.energy" = "holding 0 u32 unit_id=2"
"point.far" = "holding 50 u16 unit_id=1 writable=true"
"#,
        wasm::MODBUS_REGISTERS
    )
}

/// `sluice_modbus_polls_total` of one pipeline, unit and result.
fn polls(admin: u16, pipeline: &str, unit: u8, result: &str) -> f64 {
    metric(
        admin,
        &format!(
            "sluice_modbus_polls_total{{pipeline=\"{pipeline}\",unit=\"{unit}\",result=\"{result}\"}}"
        ),
    )
}

/// Every `sluice_modbus` sample, for failure messages.
fn modbus_metrics(admin: u16) -> String {
    let (_, body) = sluice_tests::http(admin, "GET", "/metrics", b"").expect("metrics");
    body.lines()
        .filter(|l| l.starts_with("sluice_modbus"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The payloads seen on `topic`, in order.
fn values(received: &[Received], topic: &str) -> Vec<String> {
    received
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| m.payload.clone())
        .collect()
}

#[test]
fn devices_are_polled_and_a_dead_one_does_not_stall_the_others() {
    let broker = Mosquitto::start();
    let mut device = ModbusDevice::start_tcp();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let sub = mosquitto_sub(broker.port, "plant/#", &[]);
    let sluice =
        SluiceProcess::run_config(&write_config(dir.path(), admin, broker.port, device.port));

    let fixed = [
        ("plant/boiler/pressure", "20.0"),
        ("plant/boiler/temperature", "21.5"),
        ("plant/boiler/offset", "-5"),
        ("plant/boiler/valve", "true"),
        ("plant/meter/energy", "70000"),
    ];
    let received = sub.wait_until(Duration::from_secs(20), |got| {
        fixed
            .iter()
            .all(|(topic, _)| !values(got, topic).is_empty())
            && values(got, "plant/boiler/counter").len() >= 10
    });
    for (topic, want) in fixed {
        let seen = values(&received, topic);
        assert!(!seen.is_empty(), "nothing on {topic}: {}", sluice.log());
        assert!(
            seen.iter().all(|v| v == want),
            "{topic}: {seen:?}, want {want}"
        );
    }
    // Register 0 counts up every 100 ms on the device: polled every 100 ms,
    // its values rise, never fall.
    let counter: Vec<u32> = values(&received, "plant/boiler/counter")
        .iter()
        .map(|v| v.parse().expect("a number"))
        .collect();
    assert!(counter.len() >= 10, "{counter:?}");
    assert!(counter.windows(2).all(|w| w[0] <= w[1]), "{counter:?}");
    assert!(
        counter.last() > counter.first(),
        "the register never changed: {counter:?}"
    );

    let series = |unit: u8, result: &str| polls(admin, "plant", unit, result);
    // Unit 9 is not behind the gateway: it answers exception 11 (the target
    // device failed to respond), counted, and unit 9 is asked less and less
    // often (backoff 200 ms doubling to 1 s instead of every 100 ms), while
    // unit 1 kept its 100 ms turns (≥ 10 counter values above).
    let dead = series(9, "exception_11");
    let live = series(1, "ok");
    assert!(dead >= 1.0, "{}", modbus_metrics(admin));
    assert!(dead * 4.0 < live, "no backoff: {}", modbus_metrics(admin));
    assert_eq!(series(9, "ok"), 0.0);
    // A read past the device's registers is an exception, not a failure.
    assert!(series(1, "exception_2") >= 1.0);
    assert!(series(1, "ok") >= 20.0);
    assert_eq!(
        metric(admin, "sluice_modbus_connected{pipeline=\"plant\"}"),
        1.0
    );

    // Writes: a command the transform encodes is written to the device
    // (read back by the next poll); one the device refuses (an address past
    // its registers) is counted with the device's exception.
    let before = sub.received().len();
    sluice_tests::mosquitto_pub(broker.port, "plant/boiler/pressure/set", "25.0", &[]);
    sluice_tests::mosquitto_pub(broker.port, "plant/boiler/far/set", "1", &[]);
    let received = sub.wait_until(Duration::from_secs(10), |got| {
        values(&got[before.min(got.len())..], "plant/boiler/pressure").contains(&"25.0".into())
    });
    assert!(
        values(&received[before..], "plant/boiler/pressure").contains(&"25.0".into()),
        "the write did not land: {}",
        sluice.log()
    );
    let written = metric(admin, "sluice_downlink_written_total{pipeline=\"plant\"}");
    assert_eq!(written, 1.0, "{}", sluice.log());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let refused = "sluice_downlink_dropped_total{pipeline=\"plant\",reason=\"device_exception\"}";
    while metric(admin, refused) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the refused write was not counted: {}",
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The server goes away: the link is lost, reopened with backoff, and
    // polling resumes once it is back.
    device.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(admin, "sluice_modbus_connected{pipeline=\"plant\"}") != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the lost link was not noticed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        metric(
            admin,
            "sluice_modbus_connect_failures_total{pipeline=\"plant\"}"
        ) >= 1.0
    );
    let before = sub.received().len();
    device.restart();
    let received = sub.wait_until(Duration::from_secs(20), |got| {
        values(&got[before.min(got.len())..], "plant/meter/energy").len() >= 2
    });
    assert!(
        values(&received[before..], "plant/meter/energy").len() >= 2,
        "polling did not resume: {}",
        sluice.log()
    );
}

/// The config of an RTU pipeline `bus` on `device`'s line, publishing to
/// `broker`: `[pipeline.modbus]` and what follows are `modbus`.
fn rtu_config(
    dir: &std::path::Path,
    admin: u16,
    broker: u16,
    device: &ModbusDevice,
    modbus: &str,
) -> std::path::PathBuf {
    let path = dir.join("sluice.toml");
    let config = format!(
        r#"
version = 1
[admin]
listen = "127.0.0.1:{admin}"
[mqtt]
host = "127.0.0.1"
port = {broker}
client_id = "modbus-rtu-test"
stats_interval_secs = 0
[[pipeline]]
name = "bus"
serial = {{ path = "{bus}", baud = 19200, parity = "none" }}
[pipeline.modbus]
{modbus}"#,
        bus = device.bus_path().display(),
    );
    std::fs::write(&path, config).expect("config");
    path
}

/// RTU on a serial line of its own: pymodbus as the slaves on one end of a
/// pair of pseudo-terminals (socat), sluice the master on the other. Unit 9
/// is not on the bus: no answer at all, a real timeout (not retried here:
/// each timeout is one turn of the backoff).
#[test]
fn an_rtu_bus_is_polled_and_a_silent_unit_times_out() {
    let broker = Mosquitto::start();
    let device = ModbusDevice::start_rtu();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let sub = mosquitto_sub(broker.port, "plant/#", &[]);
    let path = rtu_config(
        dir.path(),
        admin,
        broker.port,
        &device,
        &format!(
            r#"
timeout_ms = 200
retries = 0
backoff_min_ms = 200
backoff_max_ms = 800
[[pipeline.modbus.device]]
unit = 1
read = [
  {{ table = "holding", address = 0, count = 2, interval_ms = 100 }},
  {{ table = "input", address = 0, count = 2, interval_ms = 300 }},
]
[[pipeline.modbus.device]]
unit = 9
read = [{{ table = "holding", address = 0, count = 1, interval_ms = 100 }}]
{transform}"#,
            transform = transform(),
        ),
    );
    let sluice = SluiceProcess::run_config(&path);
    let received = sub.wait_until(Duration::from_secs(20), |got| {
        values(got, "plant/boiler/counter").len() >= 10
            && !values(got, "plant/boiler/temperature").is_empty()
    });
    assert_eq!(
        values(&received, "plant/boiler/pressure")[0],
        "20.0",
        "{}",
        sluice.log()
    );
    assert_eq!(values(&received, "plant/boiler/temperature")[0], "21.5");
    let counter: Vec<u32> = values(&received, "plant/boiler/counter")
        .iter()
        .map(|v| v.parse().expect("a number"))
        .collect();
    assert!(counter.len() >= 10, "{counter:?}: {}", sluice.log());
    assert!(counter.windows(2).all(|w| w[0] <= w[1]), "{counter:?}");
    let series = |unit: u8, result: &str| polls(admin, "bus", unit, result);
    let (dead, live) = (series(9, "timeout"), series(1, "ok"));
    assert!(
        dead >= 1.0,
        "unit 9 never timed out: {}",
        modbus_metrics(admin)
    );
    assert!(
        dead * 4.0 < live,
        "unit 9 was not backed off: {dead} timeouts, {live} answers"
    );
}

/// A noisy RTU line (`tests/support/noisy_line.py` between sluice and the
/// pymodbus slaves damages CRCs): unit 4's answers always arrive damaged,
/// unit 5's every second one. Damaged answers are `crc_error`, not
/// `timeout`; with `retries = 1` unit 5 answers every turn on the retry
/// and never backs off, and unit 4 backs off without holding up unit 1.
#[test]
fn crc_errors_are_counted_and_retried() {
    let broker = Mosquitto::start();
    let device = ModbusDevice::start_rtu_noisy(&[4], &[5]);
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let sub = mosquitto_sub(broker.port, "plant/#", &[]);
    let read = r#"read = [{ table = "holding", address = 0, count = 2, interval_ms = 100 }]"#;
    let path = rtu_config(
        dir.path(),
        admin,
        broker.port,
        &device,
        &format!(
            r#"
timeout_ms = 500
retries = 1
backoff_min_ms = 60000
backoff_max_ms = 60000
[[pipeline.modbus.device]]
unit = 1
{read}
[[pipeline.modbus.device]]
unit = 4
{read}
[[pipeline.modbus.device]]
unit = 5
{read}
[pipeline.transform]
module = "{module}"
[pipeline.transform.config]
prefix = "plant"
retain = false
"device.1" = "steady"
"device.4" = "garbled"
"device.5" = "flaky"
"point.pair" = "holding 0 u32"
"#,
            module = wasm::MODBUS_REGISTERS,
        ),
    );
    let sluice = SluiceProcess::run_config(&path);
    let received = sub.wait_until(Duration::from_secs(30), |got| {
        values(got, "plant/flaky/pair").len() >= 5
    });
    let flaky = values(&received, "plant/flaky/pair");
    assert!(flaky.len() >= 5, "{flaky:?}: {}", sluice.log());
    assert!(flaky.iter().all(|v| v == "70000"), "{flaky:?}");
    assert!(
        values(&received, "plant/garbled/pair").is_empty(),
        "a damaged answer was published"
    );
    let series = |unit: u8, result: &str| polls(admin, "bus", unit, result);
    let all = modbus_metrics(admin);
    // Unit 4: one turn (asked, asked again), then a minute of backoff.
    assert_eq!(series(4, "crc_error"), 2.0, "{all}");
    assert_eq!(series(4, "timeout"), 0.0, "{all}");
    // Unit 5: every turn's first answer is damaged and its retry answered;
    // without the retry it would back off for a minute after the first.
    assert!(series(5, "crc_error") >= 5.0, "{all}");
    assert_eq!(series(5, "timeout"), 0.0, "{all}");
    assert!(series(5, "ok") >= 5.0, "{all}");
    assert!(series(1, "ok") >= 5.0, "{all}");
}
