//! The `sluice` binary: parses the command line, sets up logging and signals,
//! and hands over to the library.

use std::num::NonZeroUsize;
use std::process::ExitCode;

use anyhow::Context as _;
use sluice::cli::{Cli, Command, LogFormat};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::from_env_and_args();
    init_logging(cli.log_format);
    if let Some(cpus) = &cli.cpus
        && let Err(err) = sluice::cpus::keep_to(cpus)
    {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    // `--cpus` fixes the CPUs; otherwise a host packs its threads itself.
    let pack = cli.cpus.is_none();
    match dispatch(cli.command, cli.async_threads, pack) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command, async_threads: NonZeroUsize, pack: bool) -> anyhow::Result<u8> {
    let govern = |shutdown: &CancellationToken| {
        if pack {
            tokio::spawn(sluice::cpus::packing::govern(shutdown.clone()));
        }
    };
    match command {
        Command::Run { config } => {
            block_on(async_threads, async {
                let shutdown = shutdown_on_signal();
                govern(&shutdown);
                sluice::app::run_file(&config, shutdown).await
            })?;
            Ok(0)
        }
        Command::CheckConfig { config } => Ok(sluice::check::check_config(&config)),
        Command::Demo(args) => {
            block_on(async_threads, async {
                let shutdown = shutdown_on_signal();
                govern(&shutdown);
                sluice::demo::run(args, shutdown).await
            })?;
            Ok(0)
        }
        Command::Replay(args) => block_on(async_threads, async {
            let shutdown = shutdown_on_signal();
            sluice::replay::run(args, shutdown).await
        }),
        Command::Simulate(args) => {
            block_on(async_threads, async {
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

/// Runs `future` on a tokio runtime of `threads` workers. Blocking tasks
/// still running when it returns (say, one stuck on a full outbox at a
/// bounded shutdown) get a second, then are left behind: a plain drop of
/// the runtime would wait for them forever.
fn block_on<T>(
    threads: NonZeroUsize,
    future: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.get())
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(future);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
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
        // A second signal: the operator does not want to wait.
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("second signal: exiting now; frames not yet in an outbox are lost");
        std::process::exit(sluice::shutdown::EXIT_DEADLINE);
    });
    token
}

fn init_logging(format: LogFormat) {
    // Blank counts as unset, as for the command line's variables.
    let filter = std::env::var("SLUICE_LOG")
        .ok()
        .filter(|directives| !directives.trim().is_empty())
        .map(tracing_subscriber::EnvFilter::try_new)
        .and_then(Result::ok)
        // rumqttd (the embedded broker) logs every client disconnect as an
        // ERROR; its own state is visible through our metrics instead.
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    // Colour only on a terminal, and never with NO_COLOR set (any value but
    // empty, as no-color.org says): a file or journald gets plain lines.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
