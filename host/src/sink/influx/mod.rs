//! The InfluxDB sink: exact line protocol, batched, gzip'd writes over the
//! v1, v2 or v3 HTTP API, retries that never drop data, and a dead-letter
//! file for what the server refuses.
//!
//! * [`config`] — `[influx]`, secrets from env/file.
//! * [`line_protocol`] — the encoder (escaping, types, precision).
//! * [`writer`] — batching, bounded in-flight batches, retry/split/isolate,
//!   settlement events ([`writer::DeliveryHook`]).
//! * [`transport`] — the HTTP request (reqwest) and `Retry-After`.
//! * [`dead_letter`] — `<data_dir>/dead-letter/influx.jsonl`, rotated.
//!
//! [`InfluxSink::start`] wires them: the pipelines' points go through a
//! bounded channel (backpressure when InfluxDB is slow or away) to the
//! writer task. Shutdown: drop the sender, then [`InfluxSink::finish`]
//! waits for every batch to settle, up to a deadline after which the rest
//! is dead-lettered (`shutdown_undelivered`).

pub mod config;
pub mod dead_letter;
pub mod line_protocol;
pub mod transport;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::InfluxConfig;

use crate::metrics::Metrics;
use crate::model::Point;
use dead_letter::DeadLetters;
use transport::HttpTransport;
use writer::{DeliveryHook, NoHook, Shared, WriterSettings};

/// Why the sink did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A secret could not be read.
    #[error(transparent)]
    Credentials(#[from] config::CredentialError),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// No `data_dir` and no home directory to keep dead letters in.
    #[error("influx: set data_dir (dead letters are kept in <data_dir>/dead-letter/)")]
    NoDataDir,
    /// The dead-letter file could not be created.
    #[error("influx: cannot open the dead-letter file {path}: {source}")]
    DeadLetters {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The running writer.
pub struct InfluxSink {
    task: tokio::task::JoinHandle<()>,
    give_up: CancellationToken,
    metrics: Arc<Metrics>,
}

impl InfluxSink {
    /// Reads the secrets, opens the dead-letter file and starts the writer.
    /// Returns the sink and the sender the router feeds points into; the
    /// writer finishes when every clone of the sender is dropped.
    pub fn start(
        config: &InfluxConfig,
        data_dir: Option<&Path>,
        metrics: Arc<Metrics>,
    ) -> Result<(InfluxSink, mpsc::Sender<Point>), StartError> {
        Self::start_with_hook(config, data_dir, metrics, Arc::new(NoHook))
    }

    /// Like [`start`](Self::start), telling `hook` about every settled point.
    pub fn start_with_hook(
        config: &InfluxConfig,
        data_dir: Option<&Path>,
        metrics: Arc<Metrics>,
        hook: Arc<dyn DeliveryHook>,
    ) -> Result<(InfluxSink, mpsc::Sender<Point>), StartError> {
        let credentials = config.credentials(|name| std::env::var(name).ok())?;
        let transport = HttpTransport::new(config, &credentials)?;
        let dir = data_dir
            .map(Path::to_owned)
            .or_else(crate::config::default_state_dir)
            .ok_or(StartError::NoDataDir)?;
        let path = InfluxConfig::dead_letter_path(&dir);
        let dead_letters = DeadLetters::open(
            &path,
            config.dead_letter_max_bytes.get(),
            config.dead_letter_max_files.get(),
        )
        .map_err(|source| StartError::DeadLetters {
            path: path.clone(),
            source,
        })?;
        tracing::info!(url = %transport.url(), api = ?config.api, batch_lines = config.batch_lines.get(),
            gzip = config.gzip, dead_letters = %path.display(), "InfluxDB writer started");
        let give_up = CancellationToken::new();
        let shared = Shared::new(
            transport,
            WriterSettings::from_config(config),
            metrics.clone(),
            Arc::new(dead_letters),
            hook,
            give_up.clone(),
        );
        let (tx, rx) = mpsc::channel(config.channel_capacity.get());
        let task = tokio::spawn(writer::run(rx, shared));
        Ok((
            InfluxSink {
                task,
                give_up,
                metrics,
            },
            tx,
        ))
    }

    /// From now on, lines still unconfirmed `timeout` later are dead-lettered
    /// instead of retried (call when shutdown starts, so a dead server cannot
    /// hold shutdown — or the pipelines it backs up — forever).
    pub fn give_up_after(&self, timeout: Duration) {
        let give_up = self.give_up.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            give_up.cancel();
        });
    }

    /// Waits until the writer settled everything (the sender must be dropped).
    pub async fn finish(self) {
        if let Err(err) = self.task.await {
            tracing::error!(error = %err, "the InfluxDB writer task failed");
        }
        self.give_up.cancel();
        tracing::info!(
            delivered = self.metrics.influx.points_delivered.get(),
            "InfluxDB writer stopped"
        );
    }
}
