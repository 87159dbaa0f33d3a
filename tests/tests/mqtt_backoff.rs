//! Reconnect logic over a paused clock: a broker that is not there costs a
//! bounded number of connection attempts, not a busy loop. (The connection
//! attempts are real: TCP to a loopback port nobody listens on.) And `flush`
//! against a real mosquitto.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice::config::Config;
use sluice::metrics::Metrics;
use sluice::model::{MqttMessage, Qos};
use sluice::sink::SinkContext;
use sluice::sink::mqtt::MqttSink;
use sluice_tests::free_port;

fn mqtt_config(port: u16, extra: &str) -> sluice::config::MqttConfig {
    let text = format!(
        "version = 1\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"backoff-test\"\n\
         reconnect_min_ms = 200\nreconnect_max_ms = 5000\n{extra}\n"
    );
    Config::parse(Path::new("test.toml"), &text, |_| None)
        .expect("valid config")
        .mqtt
        .expect("has [mqtt]")
}

#[tokio::test(start_paused = true)]
async fn absent_broker_costs_a_bounded_number_of_attempts() {
    let metrics = Arc::new(Metrics::new());
    let context = SinkContext::in_memory(metrics.clone(), None);
    let sink = MqttSink::start(&mqtt_config(free_port(), ""), context, Vec::new()).expect("starts");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let attempts = metrics.mqtt_connection_errors.get();
    // Backoff from 200 ms doubling to 5 s with jitter: a few dozen attempts a
    // minute at most; a busy loop would make thousands.
    assert!((5..=60).contains(&attempts), "{attempts} attempts in 60 s");
    drop(sink);
}

#[tokio::test(start_paused = true)]
async fn full_queue_with_drop_oldest_counts_every_eviction() {
    let metrics = Arc::new(Metrics::new());
    let config = mqtt_config(
        free_port(),
        "queue_capacity = 10\nqueue_full = \"drop_oldest\"",
    );
    let context = SinkContext::in_memory(metrics.clone(), None);
    let sink = MqttSink::start(&config, context, Vec::new()).expect("starts");
    for i in 0..100 {
        sink.submit(MqttMessage {
            topic: "t".into(),
            payload: format!("{i}").into_bytes().into(),
            qos: Qos::AtLeastOnce,
            retain: false,
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Nothing is confirmed (no broker). What the client took is still tracked
    // as unconfirmed; every other message is either queued or counted.
    let unconfirmed = sink.unconfirmed() as u64;
    let text = metrics.encode();
    let evicted: u64 = text
        .lines()
        .find(|l| l.contains("reason=\"queue_full_drop_oldest\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(evicted > 0, "{text}");
    assert_eq!(evicted + unconfirmed, 100, "every message is accounted for");
}

/// `flush` returns only when everything submitted so far is confirmed — the
/// shutdown relies on it — in memory and with the durable outbox. One message then a flush, 300 times, QoS 0 and 1
/// in turn, against a real mosquitto: each is counted as delivered when its
/// flush returns. (A message on its way from the backlog to the delivery
/// tracker was once invisible to `flush`, which then returned at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_returns_only_when_everything_submitted_is_confirmed() {
    flush_waits(false, 3000).await;
}

/// The same with the durable outbox: a message pushed to its writer thread
/// but not yet stored was once counted nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_with_the_outbox_returns_only_when_everything_submitted_is_confirmed() {
    flush_waits(true, 300).await;
}

async fn flush_waits(durable: bool, rounds: u64) {
    let broker = sluice_tests::Mosquitto::start();
    let metrics = Arc::new(Metrics::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = durable.then(|| {
        let outbox = sluice::outbox::Outbox::open(
            dir.path().join("mqtt.redb"),
            sluice::outbox::OutboxConfig::default(),
        )
        .expect("outbox");
        Arc::new(
            sluice::sink::durable::DurableQueue::start(
                sluice::model::Sink::Mqtt,
                outbox,
                metrics.clone(),
            )
            .expect("writer"),
        )
    });
    let context = SinkContext {
        metrics: metrics.clone(),
        data_dir: Some(dir.path().to_owned()),
        durable: queue,
    };
    let sink = MqttSink::start(&mqtt_config(broker.port, ""), context, Vec::new()).expect("starts");
    for i in 0..rounds {
        sink.submit(MqttMessage {
            topic: "flush/t".into(),
            payload: i.to_string().into_bytes().into(),
            qos: if i % 2 == 0 {
                Qos::AtMostOnce
            } else {
                Qos::AtLeastOnce
            },
            retain: false,
        })
        .await;
        assert_eq!(sink.flush(Duration::from_secs(10)).await, 0);
        assert_eq!(metrics.mqtt_delivered.get(), i + 1, "message {i}");
    }
    assert_eq!(sink.shutdown(Duration::from_secs(5)).await, 0);
}
