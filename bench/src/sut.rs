//! The systems under test: how each is configured, started, observed and
//! stopped.
//!
//! * `sluice` — the release binary, `sluice run` with a generated config:
//!   the pty, newline framing, the json-telemetry transform (QoS 1 or 0), the
//!   broker; twice: with the durable outbox (`data_dir`, default `fsync =
//!   "always"`) and without (`durable = false`).
//! * Node-RED 4 — `bench/peers/flow.json` (serial in → function → mqtt out)
//!   in a fresh user directory with `bench/peers/settings.js`.
//! * Python — `bench/peers/gateway.py` (pyserial + paho-mqtt) in
//!   `bench/peers/venv`.
//! * bare — `sluice-bench bare-publisher` (see [`crate::bare`]): no serial,
//!   no decoding.
//!
//! With an [`InfluxTarget`] every system also writes the frame's four points
//! to InfluxDB: sluice with its `[influx]` writer (batches of 5000 lines or
//! 1 s; durable exactly when the MQTT side is), Node-RED with `bench/peers/flow-influx.json` (the same flow plus
//! node-red-contrib-influxdb's `influxdb out`), Python with a `POST /write`
//! per frame, the bare publisher with pre-formatted lines in sluice's batches.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::bare::StepTimes;
use crate::feed::Pace;
use crate::procfs::{self, ProcSample};
use crate::util::{mono_ns, terminate};

/// A system under test.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Sut {
    /// sluice without the durable outbox (`durable = false`).
    Sluice,
    /// sluice with the durable outbox (the default when `data_dir` is set),
    /// `fsync = "always"`: every batch durable before it is sent.
    SluiceDurable,
    /// The durable outbox with `fsync = "interval"` (one sync per
    /// `fsync_interval_ms`, 1 s): the setting for CPU and latency.
    SluiceDurableInterval,
    /// sluice without the durable outbox, also a Sparkplug B edge node
    /// (`[mqtt.sparkplug]`: the points as NBIRTH/DBIRTH/NDATA/DDATA on a
    /// second connection).
    SluiceSparkplug,
    /// sluice without the durable outbox, kept to one CPU (`--cpus`, the
    /// last one the bench may use): the threads a frame crosses share a core.
    SluiceOneCore,
    /// sluice without the durable outbox, on every CPU the bench may use
    /// for good (`--cpus` with all of them, which turns packing off).
    SluiceEveryCpu,
    /// Node-RED 4: serial in → function → mqtt out.
    NodeRed,
    /// pyserial + paho-mqtt script.
    Python,
    /// rumqttc publishing pre-formatted messages: the ceiling.
    Bare,
}

impl Sut {
    /// Every system, in report order.
    pub const ALL: [Sut; 9] = [
        Sut::Sluice,
        Sut::SluiceDurable,
        Sut::SluiceDurableInterval,
        Sut::SluiceSparkplug,
        Sut::SluiceOneCore,
        Sut::SluiceEveryCpu,
        Sut::NodeRed,
        Sut::Python,
        Sut::Bare,
    ];

    /// The name in tables and charts.
    pub fn label(self) -> &'static str {
        match self {
            Sut::Sluice => "sluice",
            Sut::SluiceDurable => "sluice + durable outbox",
            Sut::SluiceDurableInterval => "sluice + outbox, fsync interval",
            Sut::SluiceSparkplug => "sluice + Sparkplug B edge node",
            Sut::SluiceOneCore => "sluice on one core",
            Sut::SluiceEveryCpu => "sluice on every CPU",
            Sut::NodeRed => "Node-RED 4",
            Sut::Python => "Python paho + pyserial",
            Sut::Bare => "bare rumqttc (ceiling)",
        }
    }

    /// Short id for file names.
    pub fn id(self) -> &'static str {
        match self {
            Sut::Sluice => "sluice",
            Sut::SluiceDurable => "sluice-durable",
            Sut::SluiceDurableInterval => "sluice-durable-interval",
            Sut::SluiceSparkplug => "sluice-sparkplug",
            Sut::SluiceOneCore => "sluice-one-core",
            Sut::SluiceEveryCpu => "sluice-every-cpu",
            Sut::NodeRed => "node-red",
            Sut::Python => "python",
            Sut::Bare => "bare",
        }
    }

    /// Whether it is one of the sluice variants.
    pub fn is_sluice(self) -> bool {
        matches!(
            self,
            Sut::Sluice
                | Sut::SluiceDurable
                | Sut::SluiceDurableInterval
                | Sut::SluiceSparkplug
                | Sut::SluiceOneCore
                | Sut::SluiceEveryCpu
        )
    }

    /// The durable outbox's `fsync` policy, for the variants that have one.
    pub fn outbox_fsync(self) -> Option<&'static str> {
        match self {
            Sut::SluiceDurable => Some("always"),
            Sut::SluiceDurableInterval => Some("interval"),
            _ => None,
        }
    }

    /// Whether it reads the pseudo-terminal (all but the bare publisher).
    pub fn reads_pty(self) -> bool {
        self != Sut::Bare
    }

    /// How long its start-up may take before the run counts as failed.
    pub fn startup_timeout(self) -> Duration {
        match self {
            Sut::NodeRed => Duration::from_secs(120),
            _ => Duration::from_secs(30),
        }
    }
}

/// Where everything is.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `target/release/sluice`.
    pub sluice_bin: PathBuf,
    /// This executable (for the bare publisher).
    pub bench_bin: PathBuf,
    /// The directory with `json_telemetry.wasm` and `cayenne_lpp.wasm`.
    pub transforms_dir: PathBuf,
    /// `bench/peers`.
    pub peers_dir: PathBuf,
    /// `node`.
    pub node_bin: PathBuf,
    /// Scratch space for configs, logs, data dirs.
    pub work_dir: PathBuf,
}

impl Paths {
    /// `bench/peers/venv/bin/python`.
    pub fn python_bin(&self) -> PathBuf {
        self.peers_dir.join("venv").join("bin").join("python")
    }

    /// Node-RED's entry point.
    pub fn node_red_js(&self) -> PathBuf {
        self.peers_dir.join("node_modules/node-red/red.js")
    }

    /// The compiled-module cache and outbox directory sluice runs share.
    pub fn sluice_data_dir(&self) -> PathBuf {
        self.work_dir.join("sluice-data")
    }

    /// Fails with the install command when a peer is missing.
    pub fn check(&self, suts: &[Sut]) -> Result<()> {
        let mut missing = Vec::new();
        let need = |p: &Path, what: &str, missing: &mut Vec<String>| {
            if !p.exists() {
                missing.push(format!("{what}: {} is missing", p.display()));
            }
        };
        if suts.iter().any(|s| s.is_sluice()) {
            need(
                &self.sluice_bin,
                "sluice (cargo build --release -p sluice)",
                &mut missing,
            );
            need(
                &self.transforms_dir.join("json_telemetry.wasm"),
                "json-telemetry (sluice transform build transforms)",
                &mut missing,
            );
        }
        if suts.contains(&Sut::NodeRed) {
            need(&self.node_red_js(), "Node-RED", &mut missing);
            need(
                &self.peers_dir.join("node_modules/node-red-node-serialport"),
                "node-red-node-serialport",
                &mut missing,
            );
            need(
                &self
                    .peers_dir
                    .join("node_modules/node-red-contrib-influxdb"),
                "node-red-contrib-influxdb",
                &mut missing,
            );
        }
        if suts.contains(&Sut::Python) {
            need(&self.python_bin(), "the Python venv", &mut missing);
        }
        if missing.is_empty() {
            Ok(())
        } else {
            bail!(
                "{}\n(scripts/bench-peers.sh installs the peers and builds sluice)",
                missing.join("\n")
            )
        }
    }
}

/// The InfluxDB 1.x database a run writes its points to.
#[derive(Debug, Clone)]
pub struct InfluxTarget {
    /// influxd's HTTP port on 127.0.0.1.
    pub port: u16,
    /// The run's own database.
    pub database: String,
}

/// One sluice pipeline in a generated config.
#[derive(Debug, Clone)]
pub struct SluicePipeline {
    /// `[[pipeline]] name`.
    pub name: String,
    /// The pty (or serial port) path.
    pub serial: PathBuf,
    /// `json_telemetry.wasm` or `cayenne_lpp.wasm` (file name in `transforms_dir`).
    pub module: &'static str,
    /// `framing = …` (inline TOML) or empty for newline.
    pub framing: &'static str,
    /// `[pipeline.transform.config]` lines.
    pub config: Vec<(String, String)>,
}

impl SluicePipeline {
    /// The json-telemetry gateway pipeline the comparison runs.
    pub fn gateway(serial: &Path, prefix: &str, qos: u8) -> Self {
        SluicePipeline {
            name: format!("gateway-{prefix}"),
            serial: serial.to_owned(),
            module: "json_telemetry.wasm",
            framing: "",
            config: vec![
                ("prefix".into(), prefix.into()),
                ("qos".into(), qos.to_string()),
            ],
        }
    }

    /// A Cayenne LPP line (COBS + CRC), as `examples/cayenne.toml`.
    pub fn cayenne(serial: &Path) -> Self {
        SluicePipeline {
            name: "lpp".into(),
            serial: serial.to_owned(),
            module: "cayenne_lpp.wasm",
            framing: r#"framing = { kind = "cobs", crc = "crc16_ccitt_false" }"#,
            config: vec![
                ("prefix".into(), "lpp".into()),
                ("device".into(), "node1".into()),
                ("qos".into(), "1".into()),
            ],
        }
    }
}

/// Where a generated config sends the data.
#[derive(Debug, Clone, Copy)]
pub struct SluiceSinks<'a> {
    /// The broker's port on 127.0.0.1.
    pub broker_port: u16,
    /// The durable outbox's `fsync` policy; `None`: no outbox.
    pub outbox_fsync: Option<&'a str>,
    /// InfluxDB as well.
    pub influx: Option<&'a InfluxTarget>,
    /// A Sparkplug B edge node as well (group [`SPARKPLUG_GROUP`], the
    /// client id as edge node id).
    pub sparkplug: bool,
}

/// The Sparkplug group of the edge node a sluice under test runs.
pub const SPARKPLUG_GROUP: &str = "sluice-bench";

/// A generated `sluice run` config.
pub fn sluice_config(
    paths: &Paths,
    data_dir: &Path,
    admin_port: u16,
    client_id: &str,
    sinks: SluiceSinks<'_>,
    pipelines: &[SluicePipeline],
) -> String {
    let SluiceSinks {
        broker_port,
        outbox_fsync,
        influx,
        sparkplug,
    } = sinks;
    let durable = outbox_fsync.is_some();
    let outbox = outbox_fsync
        .map(|fsync| format!("[mqtt.outbox]\nfsync = {fsync:?}\n\n"))
        .unwrap_or_default();
    let mut toml = format!(
        "# Generated by sluice-bench.\nversion = 1\ndata_dir = {data:?}\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\nclient_id = {client_id:?}\n\
         durable = {durable}\nstats_interval_secs = 0\n\n{outbox}\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n",
        data = data_dir.display().to_string(),
    );
    if sparkplug {
        // After [admin]: a table of [mqtt] may come anywhere.
        toml.push_str(&format!(
            "\n[mqtt.sparkplug]\ngroup_id = {SPARKPLUG_GROUP:?}\nedge_node_id = \"{client_id}\"\n"
        ));
    }
    if let Some(influx) = influx {
        // Durable like MQTT, with the same fsync policy; the writer's
        // defaults otherwise: batches of 5000 lines or 1 s.
        let outbox = outbox_fsync
            .map(|fsync| format!("\n[influx.outbox]\nfsync = {fsync:?}\n"))
            .unwrap_or_default();
        toml.push_str(&format!(
            "\n[influx]\nurl = \"http://127.0.0.1:{port}\"\ndatabase = {db:?}\n\
             durable = {durable}\n{outbox}",
            port = influx.port,
            db = influx.database,
        ));
    }
    for p in pipelines {
        toml.push_str(&format!(
            "\n[[pipeline]]\nname = {name:?}\n\n[pipeline.serial]\npath = {path:?}\n\
             baud = 115200\nmax_frame_bytes = 4096\n{framing}\n\n\
             [pipeline.transform]\nmodule = {module:?}\n\n[pipeline.transform.config]\n",
            name = p.name,
            path = p.serial.display().to_string(),
            framing = p.framing,
            module = paths.transforms_dir.join(p.module).display().to_string(),
        ));
        for (k, v) in &p.config {
            // Numbers stay numbers (`qos = 1`), the rest are strings.
            if v.parse::<i64>().is_ok() {
                toml.push_str(&format!("{k:?} = {v}\n"));
            } else {
                toml.push_str(&format!("{k:?} = {v:?}\n"));
            }
        }
    }
    toml
}

/// What to start.
pub struct Launch<'a> {
    /// Which system.
    pub sut: Sut,
    /// Where things are.
    pub paths: &'a Paths,
    /// The broker.
    pub broker_port: u16,
    /// The pty to read (all but the bare publisher).
    pub pty: Option<&'a Path>,
    /// QoS of the published messages.
    pub qos: u8,
    /// A directory of this run's own (config, logs, user dir).
    pub run_dir: &'a Path,
    /// Unique per run (client ids).
    pub run_id: &'a str,
    /// sluice only: replaces the single gateway pipeline.
    pub sluice_pipelines: Option<Vec<SluicePipeline>>,
    /// sluice only: a data directory instead of the shared one (a cold cache).
    pub sluice_data_dir: Option<PathBuf>,
    /// Also write the points to this InfluxDB database.
    pub influx: Option<&'a InfluxTarget>,
}

/// A running system under test; stopped on drop.
pub struct Proc {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// stdout + stderr.
    pub log: PathBuf,
    /// [`mono_ns`] just before spawning.
    pub spawned_ns: u64,
    /// sluice: the admin port (for `/ready`).
    pub admin_port: Option<u16>,
    bare: Option<BareIo>,
}

struct BareIo {
    stdin: ChildStdin,
    lines: Receiver<String>,
}

/// Starts a system under test.
pub fn spawn(launch: Launch<'_>) -> Result<Proc> {
    let Launch {
        sut,
        paths,
        broker_port,
        pty,
        qos,
        run_dir,
        run_id,
        sluice_pipelines,
        sluice_data_dir,
        influx,
    } = launch;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let log = run_dir.join(format!("{}.log", sut.id()));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let pty_path = || pty.context("this system under test reads a pty");
    let mut admin_port = None;
    let mut command = match sut {
        Sut::Sluice
        | Sut::SluiceDurable
        | Sut::SluiceDurableInterval
        | Sut::SluiceSparkplug
        | Sut::SluiceOneCore
        | Sut::SluiceEveryCpu => {
            let port = crate::util::free_port()?;
            admin_port = Some(port);
            let data_dir = sluice_data_dir.unwrap_or_else(|| paths.sluice_data_dir());
            // A clean shutdown leaves the outbox empty, but start every run
            // from an empty one regardless; keep the .cwasm cache.
            let _ = std::fs::remove_dir_all(data_dir.join("outbox"));
            let pipelines = match sluice_pipelines {
                Some(p) => p,
                None => vec![SluicePipeline::gateway(pty_path()?, "iiot", qos)],
            };
            let config = sluice_config(
                paths,
                &data_dir,
                port,
                &format!("sluice-bench-{run_id}"),
                SluiceSinks {
                    broker_port,
                    outbox_fsync: sut.outbox_fsync(),
                    influx,
                    sparkplug: sut == Sut::SluiceSparkplug,
                },
                &pipelines,
            );
            let config_path = run_dir.join("sluice.toml");
            std::fs::write(&config_path, config)
                .with_context(|| format!("writing {}", config_path.display()))?;
            let mut c = Command::new(&paths.sluice_bin);
            match sut {
                Sut::SluiceOneCore => {
                    c.arg("--cpus").arg(last_allowed_cpu()?.to_string());
                }
                Sut::SluiceEveryCpu => {
                    c.arg("--cpus").arg(allowed_cpus()?);
                }
                _ => {}
            }
            c.arg("run").arg("--config").arg(&config_path);
            c.env("SLUICE_LOG", "info");
            c
        }
        Sut::NodeRed => {
            let user_dir = run_dir.join("node-red");
            std::fs::create_dir_all(&user_dir)?;
            let flow = match influx {
                Some(_) => "flow-influx.json",
                None => "flow.json",
            };
            std::fs::copy(paths.peers_dir.join(flow), user_dir.join("flow.json"))
                .with_context(|| format!("copying bench/peers/{flow}"))?;
            let mut c = Command::new(&paths.node_bin);
            c.arg(paths.node_red_js())
                .arg("--settings")
                .arg(paths.peers_dir.join("settings.js"))
                .arg("--userDir")
                .arg(&user_dir);
            c.env("SERIAL_PORT", pty_path()?)
                .env("MQTT_PORT", broker_port.to_string())
                .env("NODE_RED_PORT", crate::util::free_port()?.to_string());
            if let Some(influx) = influx {
                c.env("INFLUX_PORT", influx.port.to_string())
                    .env("INFLUX_DB", &influx.database);
            }
            c
        }
        Sut::Python => {
            let mut c = Command::new(paths.python_bin());
            c.arg(paths.peers_dir.join("gateway.py"))
                .arg("--serial")
                .arg(pty_path()?)
                .arg("--mqtt-port")
                .arg(broker_port.to_string())
                .arg("--qos")
                .arg(qos.to_string());
            if let Some(influx) = influx {
                c.arg("--influx-url")
                    .arg(format!("http://127.0.0.1:{}", influx.port))
                    .arg("--influx-db")
                    .arg(&influx.database);
            }
            c
        }
        Sut::Bare => {
            let mut c = Command::new(&paths.bench_bin);
            c.arg("bare-publisher")
                .arg("--port")
                .arg(broker_port.to_string())
                .arg("--qos")
                .arg(qos.to_string())
                .arg("--client-id")
                .arg(format!("bare-{run_id}"))
                .arg("--times-dir")
                .arg(run_dir.join("bare-times"));
            if let Some(influx) = influx {
                c.arg("--influx-port")
                    .arg(influx.port.to_string())
                    .arg("--influx-db")
                    .arg(&influx.database);
            }
            c
        }
    };
    command.stderr(log_file.try_clone()?);
    if sut == Sut::Bare {
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
    } else {
        command.stdin(Stdio::null()).stdout(log_file);
    }
    let spawned_ns = mono_ns();
    let mut child = crate::util::ends_with_the_bench(&mut command)
        .spawn()
        .with_context(|| format!("starting {}", sut.label()))?;
    let bare = if sut == Sut::Bare {
        let stdin = child.stdin.take().context("bare publisher stdin")?;
        let stdout = child.stdout.take().context("bare publisher stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        Some(BareIo { stdin, lines: rx })
    } else {
        None
    };
    Ok(Proc {
        pid: child.id(),
        child,
        log,
        spawned_ns,
        admin_port,
        bare,
    })
}

impl Proc {
    /// CPU time and memory now.
    pub fn sample(&self) -> Result<ProcSample> {
        procfs::sample(self.pid)
    }

    /// CPU seconds of its threads alive now, by thread name.
    pub fn cpu_by_thread(&self) -> std::collections::BTreeMap<String, f64> {
        procfs::cpu_by_thread(self.pid)
    }

    /// sluice: the seconds its transform calls took and how many there
    /// were, over every pipeline (`sluice_transform_call_seconds`); `None`
    /// for another system or when `/metrics` does not answer.
    pub fn transform_calls(&self) -> Option<(f64, f64)> {
        let body = metrics_text(self.admin_port?)?;
        let total = |name: &str| -> f64 {
            body.lines()
                .filter(|line| line.starts_with(name))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Some((
            total("sluice_transform_call_seconds_sum{"),
            total("sluice_transform_call_seconds_count{"),
        ))
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        crate::util::tail(&self.log, 15)
    }

    /// sluice: polls `GET /ready` every millisecond until it answers 200;
    /// returns when that happened ([`mono_ns`]).
    pub fn wait_ready_http(&mut self, timeout: Duration) -> Result<u64> {
        let port = self.admin_port.context("not a sluice process")?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if http_status(port, "/ready") == Some(200) {
                return Ok(mono_ns());
            }
            if !self.alive() {
                bail!("sluice exited during start-up:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        bail!(
            "sluice was not ready within {timeout:?}:\n{}",
            self.log_tail()
        )
    }

    /// Bare publisher: waits for its `ready` line (connected).
    pub fn bare_wait_ready(&mut self, timeout: Duration) -> Result<u64> {
        let line = self.bare_line(timeout)?;
        if line.trim() != "ready" {
            bail!("bare publisher said {line:?} instead of ready");
        }
        Ok(mono_ns())
    }

    /// Bare publisher: runs one step and returns its publish times.
    pub fn bare_step(
        &mut self,
        first_seq: u64,
        pace: Pace,
        frames: u64,
        max: Duration,
    ) -> Result<StepTimes> {
        let bare = self.bare.as_mut().context("not the bare publisher")?;
        let pace = match pace {
            Pace::Burst => "burst".to_owned(),
            Pace::Rate(r) => format!("{r}"),
        };
        writeln!(
            bare.stdin,
            "step {first_seq} {pace} {frames} {}",
            max.as_millis()
        )
        .context("writing to the bare publisher")?;
        bare.stdin.flush()?;
        let line = self.bare_line(max + Duration::from_secs(30))?;
        let path = line
            .strip_prefix("done ")
            .ok_or_else(|| anyhow!("bare publisher said {line:?}"))?;
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {path}"))
    }

    fn bare_line(&mut self, timeout: Duration) -> Result<String> {
        let bare = self.bare.as_mut().context("not the bare publisher")?;
        match bare.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "bare publisher silent for {timeout:?}:\n{}",
                    self.log_tail()
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                bail!("bare publisher exited:\n{}", self.log_tail())
            }
        }
    }

    /// SIGTERM (SIGKILL after 5 s) and reap.
    pub fn stop(mut self) {
        self.stop_in_place();
    }

    fn stop_in_place(&mut self) {
        // Closing the bare publisher's stdin ends it too.
        self.bare = None;
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop_in_place();
    }
}

/// A connection to 127.0.0.1:`port` that sent `GET path` (one request,
/// then closed by the server), with a 1 s read timeout.
fn get(port: u16, path: &str) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    Some(stream)
}

/// The status code of `GET path` on 127.0.0.1:`port`, if it answered.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut head = [0u8; 12];
    get(port, path)?.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// The answer (head and body) of sluice's `GET /metrics` on admin port
/// `port`.
pub fn metrics_text(port: u16) -> Option<String> {
    let mut answer = String::new();
    get(port, "/metrics")?.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// The CPUs the bench may use, as `/proc` lists them (`0-1`).
fn allowed_cpus() -> Result<String> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list in /proc/self/status")?;
    Ok(list.trim().to_owned())
}

/// The highest-numbered CPU this process may use (`Cpus_allowed_list`).
fn last_allowed_cpu() -> Result<usize> {
    let list = allowed_cpus()?;
    list.rsplit([',', '-'])
        .next()
        .and_then(|last| last.parse().ok())
        .with_context(|| format!("unexpected Cpus_allowed_list {list:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_sluice_config_parses_as_toml() {
        let paths = Paths {
            sluice_bin: "/x/sluice".into(),
            bench_bin: "/x/bench".into(),
            transforms_dir: "/x/wasm".into(),
            peers_dir: "/x/peers".into(),
            node_bin: "node".into(),
            work_dir: "/tmp/w".into(),
        };
        let config = |fsync, influx, pipelines: &[SluicePipeline]| {
            sluice_config(
                &paths,
                Path::new("/tmp/w/data"),
                9999,
                "sluice-bench-1",
                SluiceSinks {
                    broker_port: 1883,
                    outbox_fsync: fsync,
                    influx,
                    sparkplug: false,
                },
                pipelines,
            )
        };
        let text = config(
            None,
            None,
            &[
                SluicePipeline::gateway(Path::new("/dev/pts/3"), "iiot", 1),
                SluicePipeline::cayenne(Path::new("/dev/pts/4")),
            ],
        );
        let value: toml::Value = toml::from_str(&text).unwrap();
        let pipelines = value["pipeline"].as_array().unwrap();
        assert_eq!(pipelines.len(), 2, "{text}");
        assert_eq!(value["mqtt"]["durable"].as_bool(), Some(false));
        assert_eq!(
            pipelines[0]["transform"]["config"]["qos"].as_integer(),
            Some(1)
        );
        assert_eq!(
            pipelines[0]["transform"]["config"]["prefix"].as_str(),
            Some("iiot")
        );
        assert_eq!(
            pipelines[1]["serial"]["framing"]["kind"].as_str(),
            Some("cobs")
        );
        assert_eq!(
            pipelines[1]["transform"]["module"].as_str(),
            Some("/x/wasm/cayenne_lpp.wasm")
        );
        assert!(value["mqtt"].get("outbox").is_none(), "{text}");
        assert!(value.get("influx").is_none(), "{text}");

        // The durable variants: the outbox on, with their fsync policy.
        for (sut, fsync) in [
            (Sut::SluiceDurable, "always"),
            (Sut::SluiceDurableInterval, "interval"),
        ] {
            let text = config(
                sut.outbox_fsync(),
                None,
                &[SluicePipeline::gateway(Path::new("/dev/pts/3"), "iiot", 1)],
            );
            let value: toml::Value = toml::from_str(&text).unwrap();
            assert_eq!(value["mqtt"]["durable"].as_bool(), Some(true), "{text}");
            assert_eq!(
                value["mqtt"]["outbox"]["fsync"].as_str(),
                Some(fsync),
                "{text}"
            );
            assert_eq!(value["admin"]["listen"].as_str(), Some("127.0.0.1:9999"));
        }

        // The InfluxDB phase: the writer on, to the run's own database.
        let influx = InfluxTarget {
            port: 8086,
            database: "run_042".into(),
        };
        let text = config(
            None,
            Some(&influx),
            &[SluicePipeline::gateway(Path::new("/dev/pts/3"), "iiot", 1)],
        );
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            value["influx"]["url"].as_str(),
            Some("http://127.0.0.1:8086"),
            "{text}"
        );
        assert_eq!(value["influx"]["database"].as_str(), Some("run_042"));
        assert_eq!(value["influx"]["durable"].as_bool(), Some(false));
        let text = config(
            Sut::SluiceDurable.outbox_fsync(),
            Some(&influx),
            &[SluicePipeline::gateway(Path::new("/dev/pts/3"), "iiot", 1)],
        );
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["influx"]["durable"].as_bool(), Some(true), "{text}");
        assert_eq!(
            value["influx"]["outbox"]["fsync"].as_str(),
            Some("always"),
            "{text}"
        );
    }
}
