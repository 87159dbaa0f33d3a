//! Wiring: config → runtime → pipelines → sinks, and orderly shutdown.
//!
//! Shutdown order matters for "nothing lost": ports stop reading first; each
//! worker drains the frames already read; the router hands every emission to
//! the MQTT publisher; the publisher queues them; then the host waits (bounded)
//! for the broker to confirm what is in flight before disconnecting.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::MqttMessage;
use crate::pipeline::{Emission, WorkerSettings, spawn_worker};
use crate::runtime::{ModuleCache, Runtime};
use crate::sink::mqtt::MqttSink;

/// Capacity of the channel from the workers to the sinks.
const EMISSION_CHANNEL: usize = 4096;
/// How long shutdown waits for the broker to confirm in-flight messages.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The running port tasks and transform workers.
pub struct Pipelines {
    ports: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Pipelines {
    /// Waits until every port task stopped and every worker drained.
    pub async fn join(self) {
        for port in self.ports {
            let _ = port.await;
        }
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers {
                if worker.join().is_err() {
                    tracing::error!("a transform worker panicked");
                }
            }
        })
        .await;
    }
}

/// Loads every pipeline's transform and starts its port task and worker.
/// Fails (before anything starts reading) if a module does not load or its
/// `init` refuses the config.
pub fn start_pipelines(
    config: &Config,
    runtime: &Runtime,
    metrics: &Metrics,
    emissions: mpsc::Sender<Emission>,
    stop: CancellationToken,
) -> anyhow::Result<Pipelines> {
    let mut instances = Vec::new();
    for pipeline in &config.pipelines {
        let module = runtime
            .load_file(&pipeline.transform.module)
            .with_context(|| format!("pipeline {:?}: cannot load transform", pipeline.name))?;
        let limits = pipeline.limits.unwrap_or(config.limits).into();
        let instance = module
            .instantiate(&pipeline.name, &pipeline.transform.init_pairs(), limits)
            .with_context(|| format!("pipeline {:?}: transform rejected", pipeline.name))?;
        tracing::info!(pipeline = %pipeline.name, module = %pipeline.transform.module.display(),
            hash = &module.hash()[..12], cache = ?module.cache_outcome(), "transform loaded");
        instances.push(instance);
    }

    let mut ports = Vec::new();
    let mut workers = Vec::new();
    for (pipeline, instance) in config.pipelines.iter().zip(instances) {
        let name: Arc<str> = pipeline.name.as_str().into();
        let pipeline_metrics = metrics.pipeline(&pipeline.name);
        let (frame_tx, frame_rx) = mpsc::channel(pipeline.channel_capacity.get());
        let settings = WorkerSettings {
            pipeline: name.clone(),
            max_payload: config.max_payload_bytes(),
        };
        workers.push(spawn_worker(
            settings,
            instance,
            frame_rx,
            emissions.clone(),
            pipeline_metrics.clone(),
        )?);
        ports.push(tokio::spawn(crate::source::serial::run(
            name,
            pipeline.serial.clone(),
            frame_tx,
            pipeline_metrics,
            stop.clone(),
        )));
    }
    Ok(Pipelines { ports, workers })
}

/// Runs the host until `shutdown` is cancelled, then drains and flushes.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::new(ModuleCache::new(config.cache_dir()))?;
    let (emit_tx, emit_rx) = mpsc::channel(EMISSION_CHANNEL);
    let pipelines = start_pipelines(&config, &runtime, &metrics, emit_tx, shutdown.clone())?;

    let connection_stop = CancellationToken::new();
    let mqtt = config.mqtt.as_ref().map(|mqtt_config| {
        let (sink, connection) =
            MqttSink::start(mqtt_config, metrics.clone(), connection_stop.clone());
        (Arc::new(sink), connection)
    });
    let (msg_tx, msg_rx) = mpsc::channel(EMISSION_CHANNEL);
    let router = tokio::spawn(route(
        emit_rx,
        mqtt.is_some().then_some(msg_tx),
        metrics.clone(),
    ));
    let publisher = mqtt.as_ref().map(|(sink, _)| {
        let sink = sink.clone();
        tokio::spawn(async move { sink.run_publisher(msg_rx).await })
    });
    tracing::info!(pipelines = config.pipelines.len(), "sluice running");

    shutdown.cancelled().await;
    tracing::info!("shutting down: draining pipelines");
    pipelines.join().await;
    let _ = router.await;
    if let Some(publisher) = publisher {
        let _ = publisher.await;
    }
    if let Some((sink, connection)) = mqtt {
        let unconfirmed = sink.flush(FLUSH_TIMEOUT).await;
        if unconfirmed > 0 {
            tracing::error!(
                unconfirmed,
                "shutdown: broker did not confirm every message in time; they may be lost"
            );
        }
        sink.disconnect().await;
        if tokio::time::timeout(Duration::from_secs(1), connection)
            .await
            .is_err()
        {
            connection_stop.cancel();
        }
    }
    tracing::info!("sluice stopped");
    Ok(())
}

/// Sends messages to the MQTT publisher. Points have no sink yet (nor
/// messages without `[mqtt]`): they are counted as such, with one log line,
/// so none disappears silently.
async fn route(
    mut emissions: mpsc::Receiver<Emission>,
    messages: Option<mpsc::Sender<MqttMessage>>,
    metrics: Arc<Metrics>,
) {
    let mut told_about_points = false;
    let mut told_about_messages = false;
    while let Some(emission) = emissions.recv().await {
        match emission {
            Emission::Message(message) => match &messages {
                Some(messages) => {
                    if messages.send(message).await.is_err() {
                        metrics.sink_dropped("mqtt", "publisher_stopped");
                    }
                }
                None => {
                    metrics.sink_dropped("mqtt", "no_mqtt_sink_configured");
                    if !told_about_messages {
                        tracing::info!(
                            "transforms emit MQTT messages but no [mqtt] is configured; messages are counted and discarded"
                        );
                        told_about_messages = true;
                    }
                }
            },
            Emission::Point(_) => {
                metrics.sink_dropped("influx", "no_influx_sink_configured");
                if !told_about_points {
                    tracing::info!(
                        "transforms emit points but no InfluxDB sink is configured; points are counted and discarded"
                    );
                    told_about_points = true;
                }
            }
        }
    }
}
