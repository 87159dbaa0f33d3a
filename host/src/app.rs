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
use crate::model::{MqttMessage, Point, Qos};
use crate::pipeline::{Emission, WorkerSettings, spawn_worker};
use crate::runtime::{ModuleCache, Runtime};
use crate::sink::influx::InfluxSink;
use crate::sink::mqtt::MqttSink;
use crate::source::Source;
use crate::source::serial::DownlinkSender;

/// Capacity of the channel from the workers to the sinks.
const EMISSION_CHANNEL: usize = 4096;
/// How long shutdown waits for the broker to confirm in-flight messages.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The running port tasks and transform workers.
pub struct Pipelines {
    ports: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    downlinks: std::collections::BTreeMap<String, DownlinkSender>,
}

impl Pipelines {
    /// The downlink queue of `pipeline`'s serial port (`None` for an unknown
    /// pipeline, or under `sluice replay`). See `source::serial::downlink`.
    pub fn downlink(&self, pipeline: &str) -> Option<DownlinkSender> {
        self.downlinks.get(pipeline).cloned()
    }

    /// Every pipeline's downlink queue, by pipeline name.
    pub fn downlinks(&self) -> &std::collections::BTreeMap<String, DownlinkSender> {
        &self.downlinks
    }

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
    start_pipelines_from(config, runtime, metrics, emissions, stop, &Source::Serial)
}

/// [`start_pipelines`] with the frames coming from `source` (serial ports,
/// or capture files for `sluice replay`). Required serial ports are opened
/// before anything starts reading.
pub fn start_pipelines_from(
    config: &Config,
    runtime: &Runtime,
    metrics: &Metrics,
    emissions: mpsc::Sender<Emission>,
    stop: CancellationToken,
    source: &Source,
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
        instances.push((instance, source.prepare(pipeline, metrics)?));
    }

    let mut ports = Vec::new();
    let mut workers = Vec::new();
    let mut downlinks = std::collections::BTreeMap::new();
    for (pipeline, (instance, prepared)) in config.pipelines.iter().zip(instances) {
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
        let started = prepared.spawn(frame_tx, stop.clone());
        ports.push(started.task);
        if let Some(downlink) = started.downlink {
            downlinks.insert(pipeline.name.clone(), downlink);
        }
    }
    Ok(Pipelines {
        ports,
        workers,
        downlinks,
    })
}

/// Runs the host until `shutdown` is cancelled, then drains and flushes.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_from(config, Source::Serial, shutdown).await
}

/// [`run`] with the frames coming from `source` (`sluice replay`).
pub async fn run_from(
    config: Config,
    source: Source,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::new(ModuleCache::new(config.cache_dir()))?;
    let mqtt = match &config.mqtt {
        Some(mqtt_config) => Some(Arc::new(MqttSink::start(mqtt_config, metrics.clone())?)),
        None => None,
    };
    let (influx, points) = match &config.influx {
        Some(influx_config) => {
            let (sink, points) =
                InfluxSink::start(influx_config, config.data_dir.as_deref(), metrics.clone())?;
            (Some(sink), Some(points))
        }
        None => (None, None),
    };
    let (emit_tx, emit_rx) = mpsc::channel(EMISSION_CHANNEL);
    let pipelines = start_pipelines_from(
        &config,
        &runtime,
        &metrics,
        emit_tx,
        shutdown.clone(),
        &source,
    )?;
    let router = tokio::spawn(route(emit_rx, mqtt.clone(), points, metrics.clone()));
    let stats = match (&config.mqtt, &mqtt) {
        (Some(mqtt_config), Some(sink)) if mqtt_config.stats_interval_secs > 0 => {
            Some(tokio::spawn(publish_stats(
                sink.clone(),
                metrics.clone(),
                format!(
                    "{}/status/{}/stats",
                    mqtt_config.status_topic_prefix,
                    mqtt_config.effective_client_id()
                ),
                Duration::from_secs(mqtt_config.stats_interval_secs),
            )))
        }
        _ => None,
    };
    tracing::info!(pipelines = config.pipelines.len(), "sluice running");

    shutdown.cancelled().await;
    tracing::info!("shutting down: draining pipelines");
    if let Some(influx) = &influx {
        // InfluxDB gets the same deadline; what it has not confirmed by then
        // is dead-lettered, so a dead server cannot hold shutdown.
        influx.give_up_after(FLUSH_TIMEOUT);
    }
    pipelines.join().await;
    let _ = router.await;
    if let Some(stats) = stats {
        stats.abort();
        let _ = stats.await;
    }
    if let Some(sink) = mqtt.and_then(Arc::into_inner) {
        let unconfirmed = sink.shutdown(FLUSH_TIMEOUT).await;
        if unconfirmed > 0 {
            tracing::error!(
                unconfirmed,
                "shutdown: broker did not confirm every message in time; they are lost"
            );
        }
    }
    if let Some(influx) = influx {
        influx.finish().await;
    }
    tracing::info!("sluice stopped");
    Ok(())
}

/// Publishes the gateway stats message (frames in, messages out, drops by
/// reason) every `every`, not retained.
async fn publish_stats(sink: Arc<MqttSink>, metrics: Arc<Metrics>, topic: String, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let payload = metrics.stats_json().to_string();
        sink.submit(MqttMessage {
            topic: topic.clone(),
            payload: payload.into_bytes(),
            qos: Qos::AtLeastOnce,
            retain: false,
        })
        .await;
    }
}

/// Sends messages to the MQTT sink and points to the InfluxDB writer. Without
/// `[mqtt]` / `[influx]` they are counted as such, with one log line, so none
/// disappears silently.
async fn route(
    mut emissions: mpsc::Receiver<Emission>,
    mqtt: Option<Arc<MqttSink>>,
    points: Option<mpsc::Sender<Point>>,
    metrics: Arc<Metrics>,
) {
    let mut told_about_points = false;
    let mut told_about_messages = false;
    while let Some(emission) = emissions.recv().await {
        match emission {
            Emission::Message(message) => match &mqtt {
                Some(sink) => sink.submit(message).await,
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
            Emission::Point(point) => match &points {
                // Waits while the writer's queue is full (backpressure).
                Some(points) => {
                    if points.send(point).await.is_err() {
                        metrics.sink_dropped("influx", "writer_stopped");
                    }
                }
                None => {
                    metrics.sink_dropped("influx", "no_influx_sink_configured");
                    if !told_about_points {
                        tracing::info!(
                            "transforms emit points but no [influx] is configured; points are counted and discarded"
                        );
                        told_about_points = true;
                    }
                }
            },
        }
    }
}
