//! Hot swap: deploy, validate, version and roll back a pipeline's transform
//! on a running host, between two frames, without losing, duplicating or
//! reordering one.
//!
//! ```text
//!  watched dir (watch.rs) ─┐
//!  PUT /transforms/{name} ─┼─► TransformManager::deploy ──► validate (blocking pool) ──► SwapOrder ──► worker
//!  SIGHUP (reload.rs) ─────┘     one deploy at a time        load/compile (.cwasm cache)    (control queue,     swaps between two frames,
//!  POST …/rollback ─────────► TransformManager::rollback     instantiate + init              served first)      keeps the old instance
//!                                                             test vectors (vectors.rs)                         for the canary (guard.rs)
//! ```
//!
//! One [`TransformManager`] per pipeline owns the version history (number,
//! SHA-256, time, source — `config`, `reload`, `api`, `dir`, `rollback` —,
//! origin, transform config, limits, counters) and is the only thing that
//! sends swap orders to the pipeline's worker. Deploys to one pipeline are
//! serialised; the history itself is behind a plain mutex that only the
//! admin API's reads and the manager's own bookkeeping take.
//!
//! **Validation happens before activation, off the hot path.** The module is
//! checked for the Wasm magic (a core module is refused with a hint: sluice
//! loads components), compiled or loaded from the `.cwasm` cache, linked
//! against the host (which checks the WIT world: missing exports or foreign
//! imports are refused), instantiated with `init` and the pipeline's config,
//! and — when it ships test vectors — run against them on a separate
//! instance, so the instance that goes live has seen no test frame. Only
//! then does the worker get a [`SwapOrder`](crate::pipeline::SwapOrder);
//! the swap itself is a move (`crate::pipeline`). A refused module changes
//! nothing: the reason goes back to the caller (API response, log line) and
//! into `sluice_transform_deploys_total{pipeline,outcome}`.
//!
//! **Rollback** returns to the version that was running before the active
//! one (an undo stack: rolling back twice goes back two versions). The
//! compiled [`Module`] of the active version and of the versions a rollback
//! would return to is kept (`keep_modules`), so a rollback only
//! re-instantiates (about 0.3 ms); it is not put on probation again. The
//! worker rolls back by itself when a canary fails (it kept the old
//! instance); the manager learns of it through the
//! [`CanaryVerdict`](crate::pipeline::CanaryVerdict).
//!
//! **What is not kept across a restart:** the history lives in memory, and
//! after a restart the pipeline runs what the config file names. To make a
//! deploy permanent, point `[pipeline.transform] module` into the watched
//! directory (then the last file dropped there is what starts), or install
//! the module at the configured path.

mod manager;
pub mod vectors;
mod view;
pub mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::hotswap::HotswapConfig;
use crate::config::{CaptureConfig, Config, PipelineConfig};
use crate::metrics::Metrics;
use crate::pipeline::guard::VersionStats;
use crate::pipeline::{VersionTag, WorkerControl, WorkerGuard};
use crate::runtime::{Limits, LoadError, Module, Runtime};
use crate::source::capture::CaptureHandle;
pub use manager::TransformManager;
use vectors::VectorError;
pub use view::{DeployResponse, HistoryView};

/// What the listing shows instead of a config value to a caller without
/// the admin token.
pub const REDACTED: &str = "<redacted>";

/// Where a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploySource {
    /// The config file at start-up.
    Config,
    /// The config file after SIGHUP.
    Reload,
    /// `PUT /transforms/{name}`.
    Api,
    /// A file dropped into the watched directory.
    Dir,
}

impl DeploySource {
    /// Stable label (API, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            DeploySource::Config => "config",
            DeploySource::Reload => "reload",
            DeploySource::Api => "api",
            DeploySource::Dir => "dir",
        }
    }
}

/// A deploy: a new module, a new transform config, or both.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// Where it comes from.
    pub source: DeploySource,
    /// Human-readable origin: a path, or the API route.
    pub origin: String,
    /// The module bytes (`None`: keep the active module, e.g. a config change).
    pub wasm: Option<Vec<u8>>,
    /// The transform config (`None`: the active version's).
    pub config: Option<Vec<(String, String)>>,
    /// Sandbox limits (`None`: the active version's).
    pub limits: Option<Limits>,
    /// Test vectors, `.vectors.jsonl` text (`None`: none run).
    pub vectors: Option<String>,
}

impl DeployRequest {
    /// A new module from `source`, with the active config and limits.
    pub fn module(source: DeploySource, origin: impl Into<String>, wasm: Vec<u8>) -> Self {
        DeployRequest {
            source,
            origin: origin.into(),
            wasm: Some(wasm),
            config: None,
            limits: None,
            vectors: None,
        }
    }
}

/// Why a deploy or rollback did not happen. The running version stays.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No pipeline of that name.
    #[error("no pipeline named {0:?}")]
    UnknownPipeline(String),
    /// Not a WebAssembly binary at all.
    #[error("not a WebAssembly module: {0}")]
    NotWasm(String),
    /// A core module where a component is needed.
    #[error(
        "a core WebAssembly module, not a component: build the transform for wasm32-wasip2 (sluice transform build), or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// Larger than `hotswap.max_module_bytes`.
    #[error("module is {size} bytes, more than hotswap.max_module_bytes = {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Does not compile, or does not implement a supported WIT world.
    #[error("{0}")]
    Load(LoadError),
    /// Instantiation or `init` failed.
    #[error("{0}")]
    Init(LoadError),
    /// The test vectors are invalid or failed.
    #[error("{0}")]
    Vectors(VectorError),
    /// The pipeline's worker has stopped (shutdown).
    #[error("the pipeline has stopped")]
    Stopped,
    /// No earlier version to return to.
    #[error("nothing to roll back to: {0}")]
    NoRollback(String),
    /// A bug (a validation task died).
    #[error("internal error: {0}")]
    Internal(String),
}

impl DeployError {
    /// The `outcome` label of `sluice_transform_deploys_total` and the API.
    pub fn outcome(&self) -> &'static str {
        match self {
            DeployError::UnknownPipeline(_) => "unknown_pipeline",
            DeployError::NotWasm(_) => "invalid_module",
            DeployError::CoreModule => "not_a_component",
            DeployError::TooLarge { .. } => "too_large",
            DeployError::Load(LoadError::Contract(..)) => "wrong_contract",
            DeployError::Load(_) => "invalid_module",
            DeployError::Init(_) => "init_failed",
            DeployError::Vectors(VectorError::Failed { .. }) => "vectors_failed",
            DeployError::Vectors(_) => "invalid_vectors",
            DeployError::Stopped => "pipeline_stopped",
            DeployError::NoRollback(_) => "nothing_to_roll_back",
            DeployError::Internal(_) => "internal_error",
        }
    }

    /// Whether the module (or its vectors) was refused, as opposed to the
    /// request being impossible (unknown pipeline, stopped, nothing to roll
    /// back to).
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            DeployError::NotWasm(_)
                | DeployError::CoreModule
                | DeployError::TooLarge { .. }
                | DeployError::Load(_)
                | DeployError::Init(_)
                | DeployError::Vectors(_)
        )
    }
}

/// How a deploy or rollback that happened ended (a refused one is a
/// [`DeployError`], whose [`outcome`](DeployError::outcome) completes the
/// labels of `sluice_transform_deploys_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployOutcome {
    /// The new version serves frames.
    Activated,
    /// The same module and config as the active version: nothing changed.
    Unchanged,
    /// An earlier version serves frames again.
    RolledBack,
}

impl DeployOutcome {
    /// The metric label and API value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeployOutcome::Activated => "activated",
            DeployOutcome::Unchanged => "unchanged",
            DeployOutcome::RolledBack => "rolled_back",
        }
    }
}

/// What a successful deploy or rollback did.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployReport {
    /// How it ended.
    pub outcome: DeployOutcome,
    /// The version now active.
    pub version: u64,
    /// Its SHA-256.
    pub sha256: String,
    /// The version it replaced (`None` when unchanged).
    pub replaced: Option<u64>,
    /// Test vectors that passed.
    pub vectors: usize,
    /// How long the worker held frames for the swap (zero when unchanged).
    pub pause: std::time::Duration,
    /// Whether the new version is on probation.
    pub canary: bool,
}

impl DeployReport {
    /// The admin API's answer to the deploy or rollback of `pipeline`.
    pub fn response<'a>(&'a self, pipeline: &'a str) -> DeployResponse<'a> {
        DeployResponse {
            pipeline,
            outcome: self.outcome,
            version: self.version,
            sha256: &self.sha256,
            replaced: self.replaced,
            vectors_passed: self.vectors,
            swap_pause_us: (self.pause.as_secs_f64() * 1e7).round() / 10.0,
            canary: self.canary,
        }
    }
}

/// `<module without .wasm>.vectors.jsonl`: where a module's test vectors
/// live.
pub fn vectors_path(module: &Path) -> PathBuf {
    module.with_extension("vectors.jsonl")
}

/// Reads the vectors beside `module`, if there are any.
pub async fn read_sidecar_vectors(module: &Path) -> std::io::Result<Option<String>> {
    match tokio::fs::read_to_string(vectors_path(module)).await {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Every pipeline's [`TransformManager`], plus what the ways in need.
pub struct Hotswap {
    managers: BTreeMap<String, Arc<TransformManager>>,
    config: HotswapConfig,
}

impl Hotswap {
    /// Starts registering the pipelines of `config`.
    pub fn builder<'a>(
        runtime: &Runtime,
        config: &'a Config,
        metrics: &'a Metrics,
    ) -> HotswapBuilder<'a> {
        HotswapBuilder {
            runtime: runtime.clone(),
            config,
            metrics,
            managers: BTreeMap::new(),
        }
    }

    /// The `[hotswap]` section it was built with.
    pub fn config(&self) -> &HotswapConfig {
        &self.config
    }

    /// The manager of `pipeline`.
    pub fn manager(&self, pipeline: &str) -> Option<&Arc<TransformManager>> {
        self.managers.get(pipeline)
    }

    /// Pipeline names, in order.
    pub fn pipelines(&self) -> impl Iterator<Item = &str> {
        self.managers.keys().map(String::as_str)
    }

    /// [`TransformManager::deploy`] on `pipeline`.
    pub async fn deploy(
        &self,
        pipeline: &str,
        request: DeployRequest,
    ) -> Result<DeployReport, DeployError> {
        let manager = self
            .manager(pipeline)
            .ok_or_else(|| DeployError::UnknownPipeline(pipeline.to_owned()))?;
        if let Some(wasm) = &request.wasm {
            let max = self.config.max_module_bytes.get();
            if wasm.len() > max {
                let err = DeployError::TooLarge {
                    size: wasm.len(),
                    max,
                };
                manager.metrics.deploy(pipeline, err.outcome());
                return Err(err);
            }
        }
        manager.deploy(request).await
    }

    /// [`TransformManager::rollback`] on `pipeline`.
    pub async fn rollback(&self, pipeline: &str) -> Result<DeployReport, DeployError> {
        self.manager(pipeline)
            .ok_or_else(|| DeployError::UnknownPipeline(pipeline.to_owned()))?
            .rollback()
            .await
    }
}

/// Registers each pipeline as it starts ([`crate::app`]).
pub struct HotswapBuilder<'a> {
    runtime: Runtime,
    config: &'a Config,
    metrics: &'a Metrics,
    managers: BTreeMap<String, Arc<TransformManager>>,
}

impl HotswapBuilder<'_> {
    /// Registers `pipeline`, which starts with `module` (loaded from the
    /// config), and returns what its worker needs: version 1's counters,
    /// the quarantine policy, the dead-letter capture, the swap-pause
    /// histogram.
    pub fn add(
        &mut self,
        pipeline: &PipelineConfig,
        module: &Module,
        control: mpsc::Sender<WorkerControl>,
    ) -> WorkerGuard {
        let hotswap = &self.config.hotswap;
        let stats = Arc::new(VersionStats::default());
        let hotswap_metrics = self.metrics.hotswap();
        let manager = TransformManager::new(
            pipeline,
            module,
            self.config,
            self.runtime.clone(),
            control,
            hotswap_metrics.clone(),
            stats.clone(),
        );
        hotswap_metrics.set_active_version(&pipeline.name, 1);
        self.managers
            .insert(pipeline.name.clone(), Arc::new(manager));
        WorkerGuard {
            version: VersionTag { id: 1, stats },
            quarantine: hotswap.quarantine(),
            baseline_frames: usize::try_from(hotswap.canary_frames.max(1)).unwrap_or(usize::MAX),
            dead_letter: self.dead_letter(&pipeline.name),
            swap_pause: Some(hotswap_metrics.swap_pause(&pipeline.name)),
        }
    }

    /// `<data_dir>/dead-letter/<pipeline>.cap`, when enabled and there is
    /// a state directory. A file that cannot be opened is an error in the
    /// log, not a reason not to start.
    fn dead_letter(&self, pipeline: &str) -> Option<CaptureHandle> {
        let hotswap = &self.config.hotswap;
        if !hotswap.dead_letter {
            return None;
        }
        let dir = self
            .config
            .data_dir
            .clone()
            .or_else(crate::config::default_state_dir)?;
        let capture = CaptureConfig {
            path: dir.join("dead-letter").join(format!("{pipeline}.cap")),
            max_bytes: hotswap.dead_letter_max_bytes,
            keep: 3,
        };
        match CaptureHandle::start(pipeline.into(), &capture, self.metrics.serial(pipeline)) {
            Ok(handle) => Some(handle),
            Err(err) => {
                tracing::error!(pipeline, error = %format!("{err:#}"),
                    "cannot open the dead-letter capture; refused frames are counted but not kept");
                None
            }
        }
    }

    /// The registry.
    pub fn build(self) -> Arc<Hotswap> {
        Arc::new(Hotswap {
            managers: self.managers,
            config: self.config.hotswap.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_live_beside_the_module() {
        assert_eq!(
            vectors_path(Path::new("/t/gw.wasm")),
            PathBuf::from("/t/gw.vectors.jsonl")
        );
    }
}
