//! Wiring: config → runtime → pipelines → sinks, and orderly shutdown.
//!
//! Shutdown order matters for "nothing lost": ports stop reading first; each
//! worker drains the frames already read; the router hands every emission to
//! the MQTT publisher; the publisher queues them; then the host waits (bounded)
//! for the broker to confirm what is in flight before disconnecting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminServer, AdminState, TokenCheck, TransformInfo};
use crate::broker::EmbeddedBroker;
use crate::config::Config;
use crate::config::admin::AdminConfig;
use crate::hotswap::Hotswap;
use crate::hotswap::watch::DirWatcher;
use crate::metrics::Metrics;
use crate::model::{DownlinkCommand, MqttMessage, Qos, Sink};
use crate::outbox::{OutboxConfig, OutboxGroup};
use crate::pipeline::{
    Emission, Emitter, WorkerControl, WorkerDownlink, WorkerSettings, WorkerSpec,
};
use crate::reload::Reloader;
use crate::router::{self, Router};
use crate::runtime::{ModuleCache, Runtime};
use crate::secret::Secret;
use crate::sink::SinkContext;
use crate::sink::durable::{DurableLog, DurableQueue};
use crate::sink::influx::InfluxSink;
use crate::sink::mqtt::{CommandRoute, MqttSink};
use crate::sink::sparkplug::SparkplugSink;
use crate::source::serial::DownlinkSender;
use crate::source::{ReadAhead, Source};

/// How long shutdown waits for the broker to confirm in-flight messages.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The running port tasks and transform workers.
pub struct Pipelines {
    ports: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    downlinks: BTreeMap<String, DownlinkSender>,
    transforms: Vec<TransformInfo>,
    /// Each worker's control queue (transform swaps), by pipeline name.
    controls: BTreeMap<String, mpsc::Sender<WorkerControl>>,
    /// The transform managers (deploy, rollback, history).
    hotswap: Arc<Hotswap>,
}

impl Pipelines {
    /// The downlink queue of `pipeline`'s serial port (`None` for an unknown
    /// pipeline, or under `sluice replay`). See `source::serial::downlink`.
    pub fn downlink(&self, pipeline: &str) -> Option<DownlinkSender> {
        self.downlinks.get(pipeline).cloned()
    }

    /// Every pipeline's downlink queue, by pipeline name.
    pub fn downlinks(&self) -> &BTreeMap<String, DownlinkSender> {
        &self.downlinks
    }

    /// Every worker's control queue (for [`crate::reload`]), by pipeline.
    pub fn controls(&self) -> &BTreeMap<String, mpsc::Sender<WorkerControl>> {
        &self.controls
    }

    /// The transform managers (see [`crate::hotswap`]).
    pub fn hotswap(&self) -> Arc<Hotswap> {
        self.hotswap.clone()
    }

    /// Every pipeline's transform (module, hash), in config order.
    pub fn transforms(&self) -> &[TransformInfo] {
        &self.transforms
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
    emissions: impl Into<Emitter>,
    stop: CancellationToken,
) -> anyhow::Result<Pipelines> {
    start_pipelines_from(
        config,
        runtime,
        metrics,
        emissions.into(),
        stop,
        Inputs {
            source: &Source::Serial,
            commands: CommandQueues::new(),
            read_ahead: ReadAhead::Queues,
        },
    )
}

/// The downlink command queues of the pipelines that have one, by pipeline
/// name (the receiving ends, for the workers).
pub type CommandQueues = BTreeMap<String, mpsc::Receiver<DownlinkCommand>>;

/// For every pipeline with `[pipeline.downlink]`: the MQTT sink's route
/// (filter → queue) and the worker's end of the queue.
pub fn command_routes(config: &Config, metrics: &Metrics) -> (Vec<CommandRoute>, CommandQueues) {
    let mut routes = Vec::new();
    let mut queues = CommandQueues::new();
    for pipeline in &config.pipelines {
        let Some(downlink) = &pipeline.downlink else {
            continue;
        };
        let (tx, rx) = mpsc::channel(downlink.queue.get());
        routes.push(CommandRoute {
            pipeline: pipeline.name.clone(),
            filter: downlink.topic.clone(),
            qos: Qos::from_u8(downlink.qos).unwrap_or(Qos::AtLeastOnce),
            accept_retained: downlink.accept_retained,
            commands: tx,
            metrics: metrics.serial(&pipeline.name),
        });
        queues.insert(pipeline.name.clone(), rx);
    }
    (routes, queues)
}

/// Where pipelines get their frames and commands from.
pub struct Inputs<'a> {
    /// Serial ports, or capture files for `sluice replay`.
    pub source: &'a Source,
    /// Downlink commands (see [`command_routes`]).
    pub commands: CommandQueues,
    /// How far ports read ahead: with a durable log, what was read is safe
    /// only once committed.
    pub read_ahead: ReadAhead,
}

/// [`start_pipelines`] with other [`Inputs`]. Required serial ports are
/// opened before anything starts reading.
pub fn start_pipelines_from(
    config: &Config,
    runtime: &Runtime,
    metrics: &Metrics,
    emissions: Emitter,
    stop: CancellationToken,
    inputs: Inputs<'_>,
) -> anyhow::Result<Pipelines> {
    let Inputs {
        source,
        mut commands,
        read_ahead,
    } = inputs;
    let mut instances = Vec::new();
    let mut transforms = Vec::new();
    for pipeline in &config.pipelines {
        let module = runtime
            .load_file(&pipeline.transform.module)
            .with_context(|| format!("pipeline {:?}: cannot load transform", pipeline.name))?;
        let limits = pipeline.effective_limits(config.limits).into();
        let instance = module
            .instantiate(&pipeline.name, &pipeline.transform.init_pairs(), limits)
            .with_context(|| format!("pipeline {:?}: transform rejected", pipeline.name))?;
        tracing::info!(pipeline = %pipeline.name, module = %pipeline.transform.module.display(),
            hash = &module.hash()[..12], contract = module.contract(),
            cache = ?module.cache_outcome(), "transform loaded");
        transforms.push(TransformInfo {
            pipeline: pipeline.name.clone(),
            module: pipeline.transform.module.clone(),
            hash: module.hash().to_owned(),
        });
        instances.push((instance, source.prepare(pipeline, metrics)?));
    }

    let mut ports = Vec::new();
    let mut workers = Vec::new();
    let mut downlinks = BTreeMap::new();
    let mut controls = BTreeMap::new();
    let mut hotswap = Hotswap::builder(runtime, config, metrics);
    for (pipeline, (instance, prepared)) in config.pipelines.iter().zip(instances) {
        let name: Arc<str> = pipeline.name.as_str().into();
        let pipeline_metrics = metrics.pipeline(&pipeline.name);
        let (frame_tx, frame_rx) = mpsc::channel(pipeline.channel_capacity.get());
        let settings = WorkerSettings {
            pipeline: name.clone(),
            max_payload: config.max_payload_bytes(),
        };
        let started = prepared.spawn(frame_tx, stop.clone(), read_ahead.clone());
        ports.push(started.task);
        let worker_downlink = commands
            .remove(&pipeline.name)
            .map(|commands| WorkerDownlink {
                commands,
                port: started.downlink.clone(),
                metrics: metrics.serial(&pipeline.name),
            });
        if let Some(downlink) = started.downlink {
            downlinks.insert(pipeline.name.clone(), downlink);
        }
        let (control_tx, control_rx) = mpsc::channel(1);
        let guard = hotswap.add(pipeline, instance.module(), control_tx.clone());
        controls.insert(pipeline.name.clone(), control_tx);
        workers.push(
            WorkerSpec {
                settings,
                instance,
                frames: frame_rx,
                downlink: worker_downlink,
                control: Some(control_rx),
                emissions: emissions.clone(),
                metrics: pipeline_metrics.clone(),
                guard,
            }
            .spawn()?,
        );
    }
    Ok(Pipelines {
        ports,
        workers,
        downlinks,
        transforms,
        controls,
        hotswap: hotswap.build(),
    })
}

/// What a run does besides what its config says: where frames come from,
/// and who else sees what leaves the sandbox. `sluice run`, `demo` and
/// `replay` all start through [`run_with`].
#[derive(Default)]
pub struct RunOptions {
    /// Serial ports (default) or capture files.
    pub source: Source,
    /// Gets a copy of every frame's outputs (the demo's points file and
    /// `--json`, `replay --stdout`), before the sinks. Outputs for which no
    /// sink is configured are the tap's: they are not counted as dropped
    /// while the tap takes them (once its receiver is gone, they are).
    /// Waits while the tap is full, like a sink.
    pub tap: Option<mpsc::Sender<Emission>>,
    /// Told once the host runs: its metrics and the addresses it listens on.
    pub ready: Option<tokio::sync::oneshot::Sender<Running>>,
}

/// A running host, as [`RunOptions::ready`] reports it.
#[derive(Clone)]
pub struct Running {
    /// The host's counters.
    pub metrics: Arc<Metrics>,
    /// The embedded broker's address (`[broker] embedded = true`).
    pub broker: Option<std::net::SocketAddr>,
    /// The admin API's address; `None` if it is disabled or could not
    /// listen (the host runs on without it).
    pub admin: Option<std::net::SocketAddr>,
}

/// Runs the host until `shutdown` is cancelled, then drains and flushes.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, RunOptions::default(), shutdown).await
}

/// `sluice run`: [`run`] with the config read from `path`, reloaded from
/// there on SIGHUP (see [`crate::reload`]: transforms swap between frames,
/// structural changes are reported as needing a restart).
pub async fn run_file(path: &std::path::Path, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Listen before anything starts: SIGHUP's default action kills.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    let config = Config::load(path)?;
    run_inner(
        config,
        RunOptions::default(),
        shutdown,
        Some((path.to_owned(), hangup)),
    )
    .await
}

/// [`run`] with `options` (the demo, `sluice replay`).
pub async fn run_with(
    config: Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_inner(config, options, shutdown, None).await
}

async fn run_inner(
    mut config: Config,
    options: RunOptions,
    shutdown: CancellationToken,
    reload: Option<(std::path::PathBuf, tokio::signal::unix::Signal)>,
) -> anyhow::Result<()> {
    let RunOptions { source, tap, ready } = options;
    // As the file says (before the embedded broker fills in `[mqtt]`), for
    // comparing with a reloaded file.
    let as_loaded = config.clone();
    // Read before anything connects, so a missing token fails fast.
    let admin_token = config.admin.token(|var| std::env::var(var).ok())?;
    let broker = embedded_broker(&mut config, &source).await?;
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::new(ModuleCache::new(config.cache_dir()))?;
    // Commands go to serial ports; a replay has none.
    let (routes, commands) = match source {
        Source::Serial => command_routes(&config, &metrics),
        Source::Replay(_) => (Vec::new(), CommandQueues::new()),
    };
    // The durable log: one queue per sink that keeps its data on disk.
    let durable_sinks = config.durable_sinks();
    let log = match config.data_dir.as_deref() {
        Some(data_dir) if !durable_sinks.is_empty() => {
            Some(open_log(data_dir, &durable_sinks, &metrics)?)
        }
        _ => None,
    };
    let read_ahead = match &log {
        Some(log) => ReadAhead::UntilSettled(log.in_flight()),
        None => ReadAhead::Queues,
    };
    let queue_index = |sink: Sink| durable_sinks.iter().position(|(name, _)| *name == sink);
    // Each durable outbox, for `GET /ready`.
    let mut outboxes: Vec<(&'static str, std::sync::Weak<DurableQueue>)> = Vec::new();
    // What a sink starts with: its queue in the log, if it has one.
    let mut context = |sink: Sink| {
        let durable = log
            .as_ref()
            .zip(queue_index(sink))
            .and_then(|(log, index)| log.queue(index));
        if let Some(queue) = &durable {
            outboxes.push((sink.as_str(), Arc::downgrade(queue)));
        }
        SinkContext {
            metrics: metrics.clone(),
            data_dir: config.data_dir.clone(),
            durable,
        }
    };
    // The edge node hands NCMD/DCMD metrics to the same pipelines.
    let sparkplug_routes = routes.clone();
    let mqtt = match &config.mqtt {
        Some(mqtt_config) => {
            if config.data_dir.is_none() {
                tracing::warn!(
                    "no data_dir: MQTT messages wait in memory only and are lost if the host dies"
                );
            }
            let context = context(Sink::Mqtt);
            Some(Arc::new(MqttSink::start(mqtt_config, context, routes)?))
        }
        None => None,
    };
    let sparkplug = match &config.mqtt {
        Some(mqtt_config) => match &mqtt_config.sparkplug {
            Some(sparkplug_config) => Some(Arc::new(SparkplugSink::start(
                mqtt_config,
                sparkplug_config,
                context(Sink::Sparkplug),
                sparkplug_routes,
            )?)),
            None => None,
        },
        None => None,
    };
    let (influx, points) = match &config.influx {
        Some(influx_config) => {
            let (sink, input) = InfluxSink::start(influx_config, context(Sink::Influx))?;
            (Some(sink), Some(input))
        }
        None => (None, None),
    };
    let influx_queue = influx.as_ref().map(InfluxSink::writer_queue);
    let routes = router::Routes {
        tap,
        mqtt: mqtt.clone(),
        points,
        sparkplug: sparkplug.clone(),
        log: log.map(Arc::new),
        mqtt_queue: queue_index(Sink::Mqtt),
        influx_queue: queue_index(Sink::Influx),
        sparkplug_queue: queue_index(Sink::Sparkplug),
    };
    let router = Router::new(routes, metrics.clone());
    let pipelines = start_pipelines_from(
        &config,
        &runtime,
        &metrics,
        Emitter::Route(router),
        shutdown.clone(),
        Inputs {
            source: &source,
            commands,
            read_ahead,
        },
    )?;
    let admin = match source {
        // A replay runs beside the live host, which serves the admin API.
        Source::Replay(_) => None,
        Source::Serial if !config.admin.enabled => None,
        Source::Serial => {
            let mut state = AdminState::new(metrics.clone());
            state.mqtt_configured = mqtt.is_some();
            state.influx_queue = influx_queue;
            state.outboxes = outboxes;
            state.ready_outbox_fraction = config.admin.ready_outbox_fraction;
            state.transforms = pipelines.transforms().to_vec();
            state.hotswap = Some(pipelines.hotswap());
            state.shutdown = shutdown.clone();
            start_admin(&config.admin, state, admin_token.as_ref()).await
        }
    };
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
    // `[hotswap] watch_dir`: a replay runs beside the live host, which watches.
    let watcher = match (&config.hotswap.watch_dir, &source) {
        (Some(dir), Source::Serial) => Some(DirWatcher::start(dir, pipelines.hotswap())?),
        _ => None,
    };
    tracing::info!(pipelines = config.pipelines.len(), "sluice running");
    if let Some(ready) = ready {
        let _ = ready.send(Running {
            metrics: metrics.clone(),
            broker: broker.as_ref().map(EmbeddedBroker::local_addr),
            admin: admin.as_ref().map(AdminServer::local_addr),
        });
    }

    match reload {
        Some((path, mut hangup)) => {
            let running = pipelines
                .transforms()
                .iter()
                .map(|t| (t.pipeline.clone(), t.hash.clone()))
                .collect();
            let mut reloader = Reloader::new(&path, as_loaded, pipelines.hotswap(), running);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some(()) = hangup.recv() => {
                        tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
                        let report = reloader.reload().await;
                        for line in &report.refused {
                            tracing::warn!("reload: {line}");
                        }
                        tracing::info!(swapped = ?report.swapped, unchanged = ?report.unchanged,
                            refused = report.refused.len(), "reload done");
                    }
                }
            }
        }
        None => shutdown.cancelled().await,
    }
    let _deadline =
        crate::shutdown::Deadline::arm(Duration::from_secs(config.shutdown_timeout_secs.get()));
    tracing::info!("shutting down: draining pipelines");
    if let Some(watcher) = watcher {
        watcher.stop().await;
    }
    if let Some(influx) = &influx {
        // InfluxDB gets the same deadline; what it has not confirmed by then
        // is dead-lettered, so a dead server cannot hold shutdown.
        influx.give_up_after(FLUSH_TIMEOUT);
    }
    pipelines.join().await;
    if let Some(stats) = stats {
        stats.abort();
        let _ = stats.await;
    }
    // Both MQTT connections flush at once, under the same deadline.
    let mqtt_done = async {
        if let Some(sink) = mqtt.and_then(Arc::into_inner) {
            let durable = sink.is_durable();
            let left = sink.shutdown(FLUSH_TIMEOUT).await as u64;
            report_unconfirmed("MQTT messages", left, durable);
        }
    };
    let sparkplug_done = async {
        if let Some(sink) = sparkplug.and_then(Arc::into_inner) {
            let durable = sink.is_durable();
            let left = sink.shutdown(FLUSH_TIMEOUT).await;
            report_unconfirmed("Sparkplug points", left, durable);
        }
    };
    tokio::join!(mqtt_done, sparkplug_done);
    if let Some(influx) = influx {
        influx.finish().await;
    }
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    tracing::info!("sluice stopped");
    Ok(())
}

/// Logs what a sink's broker had not confirmed at shutdown: kept in the
/// durable log for the next start, or lost without one.
fn report_unconfirmed(what: &str, left: u64, durable: bool) {
    if left > 0 && durable {
        tracing::warn!(
            left,
            "shutdown: {what} the broker has not confirmed stay in the outbox and are sent after the next start"
        );
    } else if left > 0 {
        tracing::error!(
            left,
            "shutdown: {what} the broker did not confirm in time are lost (no durable outbox)"
        );
    }
}

/// Opens the durable log `<data_dir>/outbox/log.redb` with a queue per
/// sink, moves in what outbox files of the previous layout
/// (`<data_dir>/outbox/<sink>.redb`) still hold, and starts its writer
/// thread.
fn open_log(
    data_dir: &std::path::Path,
    sinks: &[(Sink, OutboxConfig)],
    metrics: &Arc<Metrics>,
) -> anyhow::Result<DurableLog> {
    let path = crate::outbox::log_path(data_dir);
    let queues: Vec<(&str, OutboxConfig)> = sinks
        .iter()
        .map(|(sink, config)| (sink.as_str(), config.clone()))
        .collect();
    let group = OutboxGroup::open(&path, &queues)
        .with_context(|| format!("cannot open the outbox {}", path.display()))?;
    for (index, (sink, _)) in sinks.iter().enumerate() {
        let Some(queue) = group.queue(index) else {
            continue;
        };
        let legacy = crate::outbox::path_in(data_dir, sink.as_str());
        let moved = queue.absorb(&legacy).with_context(|| {
            format!(
                "cannot move the items of {} into {}",
                legacy.display(),
                path.display()
            )
        })?;
        let stats = queue.stats();
        tracing::info!(path = %path.display(), items = stats.depth_items, bytes = stats.depth_bytes,
            moved_from_previous_layout = moved, "{sink} outbox open");
        metrics.outbox_depth(*sink, stats.depth_items, stats.depth_bytes);
    }
    let names: Vec<Sink> = sinks.iter().map(|(sink, _)| *sink).collect();
    Ok(DurableLog::start(group, &names, metrics.clone())?)
}

/// `[broker] embedded = true`: starts the embedded broker and, when there is
/// no `[mqtt]`, points the MQTT sink at it. Under `sluice replay` (which runs
/// beside the live host) no second broker starts: the replay publishes to the
/// live host's, as client `<id>-replay`.
async fn embedded_broker(
    config: &mut Config,
    source: &Source,
) -> anyhow::Result<Option<EmbeddedBroker>> {
    if !config.broker.embedded {
        return Ok(None);
    }
    let (broker, addr, client_suffix) = match source {
        Source::Serial => {
            let broker_config = config.broker.clone();
            let broker = tokio::task::spawn_blocking(move || EmbeddedBroker::start(&broker_config))
                .await??;
            let addr = broker.local_addr();
            (Some(broker), addr, "")
        }
        Source::Replay(_) => (None, config.broker.listen, "-replay"),
    };
    if config.mqtt.is_none() {
        config.mqtt = Some(crate::broker::client_config(addr, client_suffix));
    }
    Ok(broker)
}

/// Starts the admin API. When its address cannot be bound the host runs on
/// without it (logged as an error): monitoring must not stop the data path.
async fn start_admin(
    config: &AdminConfig,
    state: AdminState,
    token: Option<&Secret>,
) -> Option<AdminServer> {
    match AdminServer::start(config.listen, state, TokenCheck::new(token)).await {
        Ok(server) => Some(server),
        Err(err) => {
            tracing::error!(error = %err, "admin API not started; sluice runs without it");
            None
        }
    }
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
            topic: topic.as_str().into(),
            payload: payload.into_bytes().into(),
            qos: Qos::AtLeastOnce,
            retain: false,
        })
        .await;
    }
}
