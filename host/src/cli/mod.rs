//! The `sluice` command line (clap).

pub mod deploy;
pub mod outbox;
pub mod transform;

use std::path::PathBuf;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// sluice — a WebAssembly-extensible edge runtime for industrial IoT.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SLUICE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Worker threads of the async runtime (serial ports, sinks, admin API;
    /// transforms, outbox writers and gzip have threads of their own).
    /// One is the default: it costs a third less CPU per frame than one per
    /// core (fewer cross-thread wake-ups) at the same throughput (see
    /// BENCHMARKS.md). Raise it if sluice's async side keeps a core busy.
    #[arg(long, global = true, env = "SLUICE_ASYNC_THREADS", default_value = "1")]
    pub async_threads: std::num::NonZeroUsize,
    /// Keep sluice to these CPUs, as `taskset -c` takes them (`1`, `0-1`),
    /// for good. Default: every CPU the process may use, with the threads
    /// packed onto one of them while sluice's load fits there (a frame
    /// costs about 40 % less CPU when the threads it wakes share a core;
    /// see docs/operations.md). Giving the CPUs turns packing off.
    #[arg(long, global = true, env = "SLUICE_CPUS")]
    pub cpus: Option<crate::cpus::CpuList>,
    /// Subcommand.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line and the environment, or exits with clap's
    /// message. A variable that is set but blank (`SLUICE_CPUS=`, what
    /// `${SLUICE_CPUS:-}` gives in a compose file) counts as unset: it
    /// means the default, not an invalid value.
    pub fn from_env_and_args() -> Cli {
        let matches = without_blank_env(Cli::command()).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
    }
}

/// `command` with the environment variables of its arguments (and its
/// subcommands') ignored where they are blank.
fn without_blank_env(mut command: clap::Command) -> clap::Command {
    let blank: Vec<clap::Id> = command
        .get_arguments()
        .filter(|arg| {
            arg.get_env()
                .and_then(std::env::var_os)
                .is_some_and(|value| value.to_string_lossy().trim().is_empty())
        })
        .map(|arg| arg.get_id().clone())
        .collect();
    for id in blank {
        command = command.mut_arg(id, |arg| arg.env(None));
    }
    let subcommands: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    for name in subcommands {
        command = command.mut_subcommand(name, without_blank_env);
    }
    command
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One async worker unless told otherwise (BENCHMARKS.md: a third less
    /// CPU per frame at the same throughput); the environment and the flag
    /// override it.
    #[test]
    fn one_async_worker_by_default() {
        let cli = Cli::try_parse_from(["sluice", "check-config", "x.toml"]).expect("parses");
        assert_eq!(cli.async_threads.get(), 1);
        let cli = Cli::try_parse_from(["sluice", "--async-threads", "4", "check-config", "x"])
            .expect("parses");
        assert_eq!(cli.async_threads.get(), 4);
        assert!(Cli::try_parse_from(["sluice", "--async-threads", "0", "demo"]).is_err());
    }
}
