//! The `sluice` command line (clap).

pub mod deploy;
pub mod outbox;
pub mod transform;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// sluice — a WebAssembly-extensible edge runtime for industrial IoT.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SLUICE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Worker threads of the async runtime (serial ports, sinks, admin API;
    /// transforms and outbox writers have threads of their own). Default:
    /// one per core. On a small box 1 costs less CPU per frame (fewer
    /// cross-thread wake-ups; see BENCHMARKS.md).
    #[arg(long, global = true, env = "SLUICE_ASYNC_THREADS")]
    pub async_threads: Option<std::num::NonZeroUsize>,
    /// Subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host with a config file.
    Run {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and the transforms it names; report every problem.
    CheckConfig {
        /// The config file (TOML).
        config: PathBuf,
    },
    /// A self-contained demo: a simulated sensor node on a pseudo-terminal,
    /// decoded by the json-telemetry transform; prints what would leave the box.
    Demo(crate::demo::DemoArgs),
    /// Write, build and test transforms.
    #[command(subcommand)]
    Transform(transform::TransformCommand),
    /// Feed capture files through the configured pipelines' transforms and
    /// sinks (re-decode history, test without hardware).
    Replay(crate::replay::ReplayArgs),
    /// A simulated sensor node on a pseudo-terminal, reachable through a
    /// symlink, writing telemetry at a chosen rate.
    Simulate(crate::sim::SimulateArgs),
    /// Inspect or verify the durable outboxes (depth, oldest item, integrity).
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
}
