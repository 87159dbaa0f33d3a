//! `sluice-bench`: sluice end to end against the tools users would pick
//! instead — Node-RED 4, a Python paho-mqtt + pyserial gateway — and a bare
//! rumqttc publisher (the ceiling), on one machine, in one run.
//!
//! A real mosquitto on an ephemeral loopback port; a pseudo-terminal per
//! run that the bench writes numbered gateway telemetry lines into (the
//! "serial port"); an independent rumqttc subscriber (`iiot/#`, QoS 1) that
//! timestamps every message. Phases (fixed rates of 100, 1000 and 10,000
//! frames/s; a zero-loss search at QoS 1 and QoS 0; 1000 frames/s writing
//! the points to a real influxd as well) each run every system
//! once per round, one after another, the order rotated per phase and round
//! so no system always goes first. Every system is started fresh for each
//! phase and stopped before the next starts, so only one system under test
//! runs at a time.
//!
//! `scripts/bench-peers.sh` installs the peers, builds sluice and runs this;
//! `sluice-bench run --help` lists the options. Output: `report.md`,
//! `results.json` and SVG charts in `--out` (default `bench/out`).

mod bare;
mod broker;
mod feed;
mod influx;
mod modbus;
mod procfs;
mod report;
mod run;
mod sparkplug;
mod subscriber;
mod sut;
mod svg;
mod util;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::report::{Machine, Results};
use crate::run::{RunContext, StepSpec};
use crate::sut::{Paths, Sut};

#[derive(Parser)]
#[command(about = "End-to-end benchmark: sluice vs Node-RED, Python and a bare publisher")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the comparison and write the report.
    Run(RunArgs),
    /// Re-render report.md and the charts from a results.json.
    Report {
        /// The results file.
        #[arg(long, default_value = "bench/out/results.json")]
        results: PathBuf,
        /// Where to write report.md and the charts.
        #[arg(long, default_value = "bench/out")]
        out: PathBuf,
    },
    /// Internal: the bare rumqttc publisher (a system under test).
    BarePublisher(bare::BareArgs),
    /// Modbus polling: sluice against a bare tokio-modbus client (TCP) and
    /// against the line's limit (RTU); prints a Markdown table.
    Modbus(modbus::ModbusArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Rounds: every phase runs every system once per round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Only these systems (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Sut>,
    /// Only these phases (ids as in the report: startup, rate-100,
    /// rate-1000, rate-10000, search-qos1, search-qos0, influx-1000).
    #[arg(long, value_delimiter = ',')]
    phases: Vec<String>,
    /// Seconds per fixed-rate step, multiplied by this (0.5 = a quick look).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// The repository root.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// The sluice binary (default: <repo>/target/release/sluice).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Where report.md, results.json and the charts go.
    #[arg(long, default_value = "bench/out")]
    out: PathBuf,
    /// Scratch directory (default: <repo>/target/sluice-bench).
    #[arg(long)]
    work: Option<PathBuf>,
    /// How this run was started, for the report.
    #[arg(long, default_value = "scripts/bench-peers.sh")]
    command_line: String,
}

/// A phase: one workload for a set of systems.
struct Phase {
    id: &'static str,
    qos: u8,
    suts: Vec<Sut>,
    spec: StepSpec,
    /// Also write every frame's points to InfluxDB.
    influx: bool,
}

fn phases(scale: f64) -> Vec<Phase> {
    let all = Sut::ALL.to_vec();
    let rate = |rate: f64, secs: f64| StepSpec::Rate {
        rate,
        secs: secs * scale,
    };
    let search = StepSpec::Search {
        burst_secs: 3.0 * scale,
        verify_secs: 3.0 * scale,
    };
    vec![
        Phase {
            id: "rate-100",
            qos: 1,
            suts: all.clone(),
            spec: rate(100.0, 3.0),
            influx: false,
        },
        Phase {
            id: "rate-1000",
            qos: 1,
            suts: all.clone(),
            spec: rate(1000.0, 4.0),
            influx: false,
        },
        Phase {
            id: "rate-10000",
            qos: 1,
            suts: all.clone(),
            spec: rate(10_000.0, 1.0),
            influx: false,
        },
        Phase {
            id: "search-qos1",
            qos: 1,
            suts: all,
            spec: search,
            influx: false,
        },
        Phase {
            id: "search-qos0",
            qos: 0,
            suts: vec![
                Sut::Sluice,
                Sut::SluiceDurable,
                Sut::SluiceDurableInterval,
                Sut::Bare,
            ],
            spec: search,
            influx: false,
        },
        // The same gateway with InfluxDB as well: MQTT and points.
        Phase {
            id: "influx-1000",
            qos: 1,
            suts: vec![
                Sut::Sluice,
                Sut::SluiceDurable,
                Sut::NodeRed,
                Sut::Python,
                Sut::Bare,
            ],
            spec: rate(1000.0, 4.0),
            influx: true,
        },
    ]
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::BarePublisher(args) => bare::main(args),
        Cmd::Modbus(args) => modbus::main(args),
        Cmd::Report { results, out } => {
            let bytes = std::fs::read(&results)
                .with_context(|| format!("reading {}", results.display()))?;
            let results: Results = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", results.display()))?;
            report::write(&results, &out)
        }
        Cmd::Run(args) => run_all(args),
    }
}

fn run_all(args: RunArgs) -> Result<()> {
    let repo = std::fs::canonicalize(&args.repo)
        .with_context(|| format!("repository root {}", args.repo.display()))?;
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| repo.join("target/sluice-bench"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        repo.join(&args.out)
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let suts: Vec<Sut> = if args.only.is_empty() {
        Sut::ALL.to_vec()
    } else {
        args.only.clone()
    };
    let paths = Paths {
        sluice_bin: args
            .sluice
            .clone()
            .unwrap_or_else(|| repo.join("target/release/sluice")),
        bench_bin: std::env::current_exe().context("locating sluice-bench itself")?,
        transforms_dir: repo.join("transforms/target/wasm32-wasip2/release"),
        peers_dir: repo.join("bench/peers"),
        node_bin: util::program("node").unwrap_or_else(|_| PathBuf::from("node")),
        work_dir: work.clone(),
    };
    paths.check(&suts)?;
    let broker = broker::Mosquitto::start(&work)?;
    let machine = Machine::collect(&repo, &paths);
    eprintln!(
        "sluice-bench: mosquitto on 127.0.0.1:{}, scratch in {}",
        broker.port,
        work.display()
    );
    let mut results = Results {
        machine,
        command: args.command_line.clone(),
        rounds: args.rounds,
        scale: args.scale,
        runs: Vec::new(),
        startup: Vec::new(),
        pooled: Vec::new(),
        wall_secs: 0.0,
        raw: Default::default(),
    };
    let started = Instant::now();
    let wanted = |id: &str| args.phases.is_empty() || args.phases.iter().any(|p| p == id);
    let mut run_no = 0usize;
    let mut next_run = |label: &str| {
        run_no += 1;
        let id = format!("{run_no:03}-{label}");
        (work.join(&id), id)
    };

    if suts.iter().any(|s| s.is_sluice()) {
        warm_cache(&paths, &broker)?;
    }
    let phases = phases(args.scale);
    let influxd = if phases
        .iter()
        .any(|p| p.influx && wanted(p.id) && p.suts.iter().any(|s| suts.contains(s)))
    {
        let server = influx::Influxd::start(&work)?;
        eprintln!("sluice-bench: influxd on 127.0.0.1:{}", server.port);
        Some(server)
    } else {
        None
    };

    // sluice start-up and memory with three transforms: once compiling
    // (an empty cache of its own), then from the .cwasm cache, twice with
    // the binary's pages as the page cache had them (usually as the build
    // wrote them) and three times read from disk (as after a reboot, the
    // usual state of a box that starts sluice at boot). Eviction first would
    // change what "as found" means, so it comes last.
    if suts.iter().any(|s| s.is_sluice()) && wanted("startup") {
        let rounds = [
            (true, false),
            (false, false),
            (false, false),
            (false, true),
            (false, true),
            (false, true),
        ];
        for (cold, evict) in rounds {
            let (dir, id) = next_run("startup");
            let ctx = RunContext {
                paths: &paths,
                broker: &broker,
                run_dir: &dir,
                run_id: &id,
                influx: None,
            };
            let r = run::startup(&ctx, cold, evict);
            eprintln!("{}", report::startup_line(&r));
            results.startup.push(r);
        }
    }

    for round in 0..args.rounds {
        for (index, phase) in phases.iter().enumerate() {
            if !wanted(phase.id) {
                continue;
            }
            let mut order: Vec<Sut> = phase
                .suts
                .iter()
                .copied()
                .filter(|s| suts.contains(s))
                .collect();
            if order.is_empty() {
                continue;
            }
            let shift = (round + index) % order.len();
            order.rotate_left(shift);
            for (position, sut) in order.into_iter().enumerate() {
                let (dir, id) = next_run(&format!("{}-{}", phase.id, sut.id()));
                let ctx = RunContext {
                    paths: &paths,
                    broker: &broker,
                    run_dir: &dir,
                    run_id: &id,
                    influx: if phase.influx { influxd.as_ref() } else { None },
                };
                let r = run::run(&ctx, sut, phase.qos, phase.spec, phase.id, round, position);
                eprintln!("round {round} {}", report::run_line(&r));
                results.runs.push(r.clone());
                results.absorb_latencies(&r);
                results.wall_secs = started.elapsed().as_secs_f64();
                save(&results, &out)?;
            }
        }
    }
    results.wall_secs = started.elapsed().as_secs_f64();
    results.machine.load_at_end = report::loadavg();
    save(&results, &out)?;
    report::write(&results, &out)?;
    eprintln!(
        "sluice-bench: done in {:.0} s; report in {}",
        results.wall_secs,
        out.join("report.md").display()
    );
    Ok(())
}

/// Compiles the transforms into the shared `.cwasm` cache once, so no
/// measured sluice start-up includes compiling: a `sluice run` with both
/// transforms until it is ready, then stopped. (`sluice check-config` would
/// not do: it only reads the cache.)
fn warm_cache(paths: &Paths, broker: &broker::Mosquitto) -> Result<()> {
    let (gateway, lpp) = (feed::Pty::open()?, feed::Pty::open()?);
    let run_dir = paths.work_dir.join("warm-cache");
    let mut proc = sut::spawn(sut::Launch {
        sut: Sut::Sluice,
        paths,
        broker_port: broker.port,
        pty: None,
        qos: 1,
        run_dir: &run_dir,
        run_id: "warm-cache",
        sluice_pipelines: Some(vec![
            sut::SluicePipeline::gateway(&gateway.path, "iiot", 1),
            sut::SluicePipeline::cayenne(&lpp.path),
        ]),
        sluice_data_dir: None,
        influx: None,
    })?;
    proc.wait_ready_http(std::time::Duration::from_secs(120))
        .context("warming the .cwasm cache")?;
    proc.stop();
    Ok(())
}

fn save(results: &Results, out: &Path) -> Result<()> {
    let path = out.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(results)?)
        .with_context(|| format!("writing {}", path.display()))
}
