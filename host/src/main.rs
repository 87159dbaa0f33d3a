//! The `sluice` binary: parses the command line, sets up logging and signals,
//! and hands over to the library.

use std::num::NonZeroUsize;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use sluice::cli::{Cli, Command, LogFormat};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command, cli.async_threads) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command, async_threads: NonZeroUsize) -> anyhow::Result<u8> {
    let runtime = || tokio_runtime(async_threads);
    match command {
        Command::Run { config } => {
            runtime()?.block_on(async {
                let shutdown = shutdown_on_signal();
                sluice::app::run_file(&config, shutdown).await
            })?;
            Ok(0)
        }
        Command::CheckConfig { config } => Ok(sluice::check::check_config(&config)),
        Command::Demo(args) => {
            runtime()?.block_on(async {
                let shutdown = shutdown_on_signal();
                sluice::demo::run(args, shutdown).await
            })?;
            Ok(0)
        }
        Command::Replay(args) => runtime()?.block_on(async {
            let shutdown = shutdown_on_signal();
            sluice::replay::run(args, shutdown).await
        }),
        Command::Simulate(args) => {
            runtime()?.block_on(async {
                let shutdown = shutdown_on_signal();
                sluice::sim::simulate(args, shutdown).await
            })?;
            Ok(0)
        }
        Command::Outbox(command) => sluice::cli::outbox::run(command),
        Command::Transform(command) => {
            let code = sluice::cli::transform::run(command)?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
    }
}

fn tokio_runtime(threads: NonZeroUsize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.get())
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A token cancelled on SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    cancel.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        cancel.cancel();
    });
    token
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        // rumqttd (the embedded broker) logs every client disconnect as an
        // ERROR; its own state is visible through our metrics instead.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
