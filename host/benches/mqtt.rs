//! MQTT sink throughput and latency against a real local mosquitto, side by
//! side with a minimal rumqttc publisher that does nothing else (the
//! ceiling), in the same run.
//!
//! `cargo bench -p sluice --bench mqtt` (needs `mosquitto` installed).
//!
//! * throughput: N messages, timed from the first publish until the last
//!   confirmation (PubAck for QoS 1; written for QoS 0);
//! * latency: one message at a time, publish → confirmation, p50/p99;
//! * at QoS 0, 1, and 0 and 1 in turn.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use sluice::config::Config;
use sluice::metrics::Metrics;
use sluice::model::{MqttMessage, Qos};
use sluice::sink::durable::DurableQueue;
use sluice::sink::mqtt::MqttSink;

const MESSAGES: u64 = 50_000;
const LATENCY_SAMPLES: usize = 2_000;
const PAYLOAD: &[u8] = b"27.6";

struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker() -> Broker {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let conf = dir.path().join("m.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\nmax_queued_messages 0\n"
        ),
    )
    .expect("conf");
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("mosquitto is installed (scripts/test.sh installs it)");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mosquitto");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    Broker {
        child,
        port,
        _dir: dir,
    }
}

/// The QoS of message `i` at `level`: 0, 1, or 2 for QoS 0 and 1 in turn
/// (a QoS 0 message draws no MQTT reply, so a publish right after it shows
/// whether the TCP layer holds it back: Nagle's algorithm).
fn qos_of(level: u8, i: u64) -> (QoS, Qos) {
    match (level, i % 2) {
        (0, _) | (2, 0) => (QoS::AtMostOnce, Qos::AtMostOnce),
        _ => (QoS::AtLeastOnce, Qos::AtLeastOnce),
    }
}

/// The ceiling: a bare rumqttc client, publishing from one task and counting
/// confirmations in the polling task. Returns (msgs/s, latencies in µs).
async fn bare(port: u16, level: u8) -> (f64, Vec<f64>) {
    let mut options = MqttOptions::new(format!("bare-{level}"), "127.0.0.1", port);
    options.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (confirmed_tx, mut confirmed_rx) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let _ = confirmed_tx.send(());
                }
                Ok(Event::Outgoing(Outgoing::Publish(0))) => {
                    let _ = confirmed_tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let started = Instant::now();
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..MESSAGES {
                client
                    .publish("bench/bare", qos_of(level, i).0, false, PAYLOAD)
                    .await
                    .expect("publish");
            }
        })
    };
    for _ in 0..MESSAGES {
        confirmed_rx.recv().await.expect("confirmation");
    }
    let rate = MESSAGES as f64 / started.elapsed().as_secs_f64();
    publisher.await.expect("publisher");
    let mut latencies = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES as u64 {
        let t = Instant::now();
        client
            .publish("bench/bare", qos_of(level, i).0, false, PAYLOAD)
            .await
            .expect("publish");
        confirmed_rx.recv().await.expect("confirmation");
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    poller.abort();
    (rate, latencies)
}

/// One way of running sluice's sink in the comparison.
struct Variant {
    label: &'static str,
    /// Through the durable outbox (fsync always, in a temp dir).
    durable: bool,
    /// `[mqtt] protocol`.
    protocol: &'static str,
}

const VARIANTS: [Variant; 3] = [
    Variant {
        label: "sluice, in memory",
        durable: false,
        protocol: "3.1.1",
    },
    Variant {
        label: "sluice, MQTT 5",
        durable: false,
        protocol: "5",
    },
    Variant {
        label: "sluice, durable",
        durable: true,
        protocol: "3.1.1",
    },
];

/// sluice's MQTT sink: submit → confirmation counted by the sink.
async fn sluice_sink(port: u16, level: u8, variant: &Variant) -> (f64, Vec<f64>) {
    let Variant {
        durable, protocol, ..
    } = *variant;
    let text = format!(
        "version = 1\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"sluice-bench-{level}\"\nstats_interval_secs = 0\nprotocol = \"{protocol}\"\n"
    );
    let config = Config::parse(std::path::Path::new("bench.toml"), &text, |_| None)
        .expect("config")
        .mqtt
        .expect("mqtt");
    let metrics = Arc::new(Metrics::new());
    let outbox_dir = tempfile::tempdir().expect("tempdir");
    let queue = durable.then(|| {
        let outbox = sluice::outbox::Outbox::open(
            outbox_dir.path().join("mqtt.redb"),
            sluice::outbox::OutboxConfig::default(),
        )
        .expect("outbox");
        Arc::new(
            DurableQueue::start(sluice::model::Sink::Mqtt, outbox, metrics.clone())
                .expect("writer"),
        )
    });
    let context = sluice::sink::SinkContext {
        metrics: metrics.clone(),
        data_dir: None,
        durable: queue,
    };
    let sink = MqttSink::start(&config, context, Vec::new()).expect("sink");
    let message = |i: u64| MqttMessage {
        topic: "bench/sluice".into(),
        payload: PAYLOAD.to_vec().into(),
        qos: qos_of(level, i).1,
        retain: false,
    };
    let started = Instant::now();
    for i in 0..MESSAGES {
        sink.submit(message(i)).await;
    }
    assert_eq!(
        sink.flush(Duration::from_secs(60)).await,
        0,
        "all confirmed"
    );
    assert_eq!(metrics.mqtt_delivered.get(), MESSAGES);
    let rate = MESSAGES as f64 / started.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES as u64 {
        let t = Instant::now();
        sink.submit(message(i)).await;
        sink.flush(Duration::from_secs(10)).await;
        assert_eq!(metrics.mqtt_delivered.get(), MESSAGES + i + 1);
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    sink.shutdown(Duration::from_secs(5)).await;
    (rate, latencies)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let broker = start_broker();
    println!(
        "{MESSAGES} messages of {} bytes to a local mosquitto; latency: {LATENCY_SAMPLES} sequential round trips",
        PAYLOAD.len()
    );
    println!("| QoS | publisher          | msgs/s  | ratio | p50 µs | p99 µs |");
    println!("|----:|--------------------|--------:|------:|-------:|-------:|");
    for level in [0u8, 1, 2] {
        // Alternate and repeat so neither side always gets the warm broker.
        let mut bare_runs = vec![];
        let mut variant_runs: Vec<Vec<(f64, Vec<f64>)>> = VARIANTS.iter().map(|_| vec![]).collect();
        for _ in 0..2 {
            bare_runs.push(runtime.block_on(bare(broker.port, level)));
            for (variant, runs) in VARIANTS.iter().zip(&mut variant_runs) {
                runs.push(runtime.block_on(sluice_sink(broker.port, level, variant)));
            }
        }
        let best = |runs: Vec<(f64, Vec<f64>)>| {
            let rate = runs.iter().map(|r| r.0).fold(0.0, f64::max);
            let mut lat: Vec<f64> = runs.into_iter().flat_map(|r| r.1).collect();
            lat.sort_by(f64::total_cmp);
            (rate, lat)
        };
        let (bare_rate, bare_lat) = best(bare_runs);
        let row = |label: &str, rate: f64, lat: &[f64]| {
            let qos = ["0", "1", "0+1"][usize::from(level)];
            println!(
                "| {qos} | {label:<18} | {rate:7.0} | {:5.2} | {:6.0} | {:6.0} |",
                rate / bare_rate,
                percentile(lat, 0.5),
                percentile(lat, 0.99)
            );
        };
        row("bare rumqttc", bare_rate, &bare_lat);
        for (variant, runs) in VARIANTS.iter().zip(variant_runs) {
            let (rate, lat) = best(runs);
            row(variant.label, rate, &lat);
        }
    }
}
