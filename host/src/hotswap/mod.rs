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
//! then does the worker get a [`SwapOrder`]; the swap itself is a move
//! (`crate::pipeline`). A refused module changes nothing: the reason goes
//! back to the caller (API response, log line) and into
//! `sluice_transform_deploys_total{pipeline,outcome}`.
//!
//! **Rollback** returns to the version that was running before the active
//! one (an undo stack: rolling back twice goes back two versions). The
//! compiled [`Module`] of the active version and of the versions a rollback
//! would return to is kept (`keep_modules`), so a rollback only
//! re-instantiates (about 0.3 ms); it is not put on probation again. The
//! worker rolls back by itself when a canary fails (it kept the old
//! instance); the manager learns of it through the [`CanaryVerdict`].
//!
//! **What is not kept across a restart:** the history lives in memory, and
//! after a restart the pipeline runs what the config file names. To make a
//! deploy permanent, point `[pipeline.transform] module` into the watched
//! directory (then the last file dropped there is what starts), or install
//! the module at the configured path.

pub mod vectors;
pub mod watch;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::hotswap::HotswapConfig;
use crate::config::{CaptureConfig, Config, PipelineConfig};
use crate::metrics::{HotswapMetrics, Metrics};
use crate::model::now_ns;
use crate::pipeline::guard::{CanaryPolicy, VersionStats, VersionStatsView};
use crate::pipeline::{CanaryVerdict, SwapDone, SwapOrder, VersionTag, WorkerControl, WorkerGuard};
use crate::runtime::{Limits, LoadError, Module, Runtime};
use crate::source::capture::CaptureHandle;
use crate::sync::lock;
use vectors::VectorError;

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

/// The body of a successful `PUT /transforms/{name}` or rollback.
#[derive(Debug, Serialize)]
pub struct DeployResponse<'a> {
    pipeline: &'a str,
    outcome: DeployOutcome,
    version: u64,
    sha256: &'a str,
    replaced: Option<u64>,
    vectors_passed: usize,
    swap_pause_us: f64,
    canary: bool,
}

/// One version in `GET /transforms`.
#[derive(Debug, Serialize)]
struct VersionView<'a> {
    version: u64,
    sha256: &'a str,
    source: &'static str,
    origin: &'a str,
    deployed_at: String,
    status: &'static str,
    rollback: Option<RollbackView<'a>>,
    previous: Option<u64>,
    module_kept: bool,
    config: serde_json::Map<String, serde_json::Value>,
    vectors_passed: usize,
    stats: VersionStatsView,
}

/// Why a version was rolled back.
#[derive(Debug, Serialize)]
struct RollbackView<'a> {
    automatic: bool,
    reason: &'a str,
}

/// A pipeline's versions in `GET /transforms`: the active one, whether a
/// canary runs, what a rollback returns to, the history (newest first).
#[derive(Debug, Serialize)]
pub struct HistoryView<'a> {
    active: Option<VersionView<'a>>,
    canary_running: bool,
    rollback_to: Option<u64>,
    history: Vec<VersionView<'a>>,
}

/// The state of one version in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// Serving frames.
    Active,
    /// Replaced by a later version.
    Inactive,
    /// Rolled back (by an operator, or by its failed canary).
    RolledBack {
        /// By the canary.
        auto: bool,
        /// Why, for the listing.
        reason: String,
    },
}

/// One version in the history.
struct Version {
    id: u64,
    sha256: String,
    source: &'static str,
    origin: String,
    deployed_at_ns: u64,
    config: Vec<(String, String)>,
    limits: Limits,
    /// Kept for the active version and what a rollback returns to.
    module: Option<Module>,
    stats: Arc<VersionStats>,
    /// The version that was running when this one took over.
    previous: Option<u64>,
    status: Status,
    vectors: usize,
}

impl Version {
    /// `show_config` false: the config's keys with every value
    /// [`REDACTED`].
    fn view(&self, canary: bool, show_config: bool) -> VersionView<'_> {
        let config: serde_json::Map<String, serde_json::Value> = self
            .config
            .iter()
            .map(|(k, v)| {
                let value = if show_config { v.as_str() } else { REDACTED };
                (k.clone(), value.into())
            })
            .collect();
        let (status, rollback) = match &self.status {
            Status::Active if canary => ("canary", None),
            Status::Active => ("active", None),
            Status::Inactive => ("inactive", None),
            Status::RolledBack { auto, reason } => (
                "rolled_back",
                Some(RollbackView {
                    automatic: *auto,
                    reason,
                }),
            ),
        };
        VersionView {
            version: self.id,
            sha256: &self.sha256,
            source: self.source,
            origin: &self.origin,
            deployed_at: rfc3339(self.deployed_at_ns),
            status,
            rollback,
            previous: self.previous,
            module_kept: self.module.is_some(),
            config,
            vectors_passed: self.vectors,
            stats: self.stats.view(),
        }
    }
}

/// Settings a manager applies to every deploy.
#[derive(Debug, Clone)]
struct Settings {
    canary: Option<CanaryPolicy>,
    history: usize,
    keep_modules: usize,
    max_payload: usize,
}

struct State {
    /// Oldest first.
    versions: Vec<Version>,
    active: u64,
    next_id: u64,
    /// The version on probation, if any.
    canary: Option<u64>,
}

impl State {
    fn get(&self, id: u64) -> Option<&Version> {
        self.versions.iter().find(|v| v.id == id)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Version> {
        self.versions.iter_mut().find(|v| v.id == id)
    }

    fn active(&self) -> Option<&Version> {
        self.get(self.active)
    }

    /// Makes `id` the active version (the one active so far becomes
    /// inactive unless it was rolled back).
    fn activate(&mut self, id: u64) {
        for version in &mut self.versions {
            if version.id == id {
                version.status = Status::Active;
            } else if version.status == Status::Active {
                version.status = Status::Inactive;
            }
        }
        self.active = id;
    }

    /// Drops compiled modules nothing can return to, and old entries.
    fn prune(&mut self, settings: &Settings) {
        let mut keep = HashSet::new();
        let mut next = Some(self.active);
        while let Some(id) = next {
            if keep.len() >= settings.keep_modules.max(1) || !keep.insert(id) {
                break;
            }
            next = self.get(id).and_then(|v| v.previous);
        }
        for version in &mut self.versions {
            if !keep.contains(&version.id) {
                version.module = None;
            }
        }
        while self.versions.len() > settings.history.max(1) {
            match self.versions.iter().position(|v| !keep.contains(&v.id)) {
                Some(index) => {
                    self.versions.remove(index);
                }
                None => break,
            }
        }
    }
}

/// One pipeline's transform: version history, deploys, rollbacks.
pub struct TransformManager {
    pipeline: String,
    runtime: Runtime,
    control: mpsc::Sender<WorkerControl>,
    settings: Settings,
    metrics: HotswapMetrics,
    deploy_lock: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

/// Refuses what is not a Wasm component before the compiler sees it, with
/// a message an operator can act on.
fn check_magic(wasm: &[u8]) -> Result<(), DeployError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE: [u8; 4] = [1, 0, 0, 0];
    if wasm.len() < 8 || &wasm[..4] != MAGIC {
        return Err(DeployError::NotWasm(format!(
            "{} bytes without the \\0asm header",
            wasm.len()
        )));
    }
    if wasm[4..8] == CORE {
        return Err(DeployError::CoreModule);
    }
    Ok(())
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

fn join_error(err: tokio::task::JoinError) -> DeployError {
    DeployError::Internal(format!("validation task failed: {err}"))
}

impl TransformManager {
    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The active version's number and SHA-256.
    pub fn active(&self) -> (u64, String) {
        let state = self.state();
        let hash = state.active().map(|v| v.sha256.clone()).unwrap_or_default();
        (state.active, hash)
    }

    /// Validates and activates a module and/or config. Counts and logs
    /// the outcome.
    pub async fn deploy(
        self: &Arc<Self>,
        request: DeployRequest,
    ) -> Result<DeployReport, DeployError> {
        let source = request.source.as_str();
        let origin = request.origin.clone();
        let result = self.deploy_inner(request).await;
        match &result {
            Ok(report) => {
                self.metrics.deploy(&self.pipeline, report.outcome.as_str());
                tracing::info!(pipeline = %self.pipeline, source, origin, outcome = report.outcome.as_str(),
                    version = report.version, sha256 = report.sha256.get(..12).unwrap_or_default(),
                    vectors = report.vectors, "transform deploy: {}", report.outcome.as_str());
            }
            Err(err) => {
                self.metrics.deploy(&self.pipeline, err.outcome());
                tracing::warn!(pipeline = %self.pipeline, source, origin, outcome = err.outcome(),
                    "transform deploy refused; the running version stays: {err}");
            }
        }
        result
    }

    async fn deploy_inner(
        self: &Arc<Self>,
        request: DeployRequest,
    ) -> Result<DeployReport, DeployError> {
        let _one_at_a_time = self.deploy_lock.lock().await;
        let (active_module, active_config, active_limits, active_hash, active_id) = {
            let state = self.state();
            let active = state
                .active()
                .ok_or_else(|| DeployError::Internal("no active version".into()))?;
            (
                active.module.clone(),
                active.config.clone(),
                active.limits,
                active.sha256.clone(),
                active.id,
            )
        };
        let config = request.config.unwrap_or_else(|| active_config.clone());
        let limits = request.limits.unwrap_or(active_limits);
        let vectors = request
            .vectors
            .as_deref()
            .map(vectors::parse)
            .transpose()
            .map_err(DeployError::Vectors)?;
        let module = match request.wasm {
            Some(wasm) => {
                check_magic(&wasm)?;
                let runtime = self.runtime.clone();
                tokio::task::spawn_blocking(move || runtime.load_bytes(&wasm))
                    .await
                    .map_err(join_error)?
                    .map_err(DeployError::Load)?
            }
            None => active_module
                .ok_or_else(|| DeployError::Internal("the active module is not kept".into()))?,
        };
        if module.hash() == active_hash && config == active_config && limits == active_limits {
            return Ok(DeployReport {
                outcome: DeployOutcome::Unchanged,
                version: active_id,
                sha256: active_hash,
                replaced: None,
                vectors: 0,
                pause: std::time::Duration::ZERO,
                canary: false,
            });
        }
        let name = self.pipeline.clone();
        let max_payload = self.settings.max_payload;
        let for_task = (module.clone(), config.clone());
        let (instance, passed) = tokio::task::spawn_blocking(move || {
            let (module, config) = for_task;
            let passed = match &vectors {
                Some(vectors) => {
                    // A separate instance: the one that goes live has seen
                    // no test frame.
                    let mut probe = module
                        .instantiate(&name, &config, limits)
                        .map_err(DeployError::Init)?;
                    vectors::run(&mut probe, vectors, &name, max_payload)
                        .map_err(DeployError::Vectors)?
                }
                None => 0,
            };
            let instance = module
                .instantiate(&name, &config, limits)
                .map_err(DeployError::Init)?;
            Ok::<_, DeployError>((instance, passed))
        })
        .await
        .map_err(join_error)??;

        let (id, stats) = {
            let mut state = self.state();
            let id = state.next_id;
            state.next_id += 1;
            (id, Arc::new(VersionStats::default()))
        };
        let canary = self.settings.canary;
        let (verdict_tx, verdict_rx) = match canary {
            Some(_) => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let done = self
            .swap(
                instance,
                VersionTag {
                    id,
                    stats: stats.clone(),
                },
                canary.zip(verdict_tx),
            )
            .await?;
        let sha256 = module.hash().to_owned();
        {
            let mut state = self.state();
            state.versions.push(Version {
                id,
                sha256: sha256.clone(),
                source: request.source.as_str(),
                origin: request.origin,
                deployed_at_ns: now_ns(),
                config,
                limits,
                module: Some(module),
                stats,
                previous: Some(done.replaced),
                status: Status::Active,
                vectors: passed,
            });
            state.activate(id);
            state.canary = verdict_rx.as_ref().map(|_| id);
            state.prune(&self.settings);
        }
        self.metrics.set_active_version(&self.pipeline, id);
        if let Some(rx) = verdict_rx {
            self.watch_canary(id, rx);
        }
        drop(done.released);
        Ok(DeployReport {
            outcome: DeployOutcome::Activated,
            version: id,
            sha256,
            replaced: Some(done.replaced),
            vectors: passed,
            pause: done.pause,
            canary: canary.is_some(),
        })
    }

    /// Orders the worker to swap `instance` in and waits until it did.
    async fn swap(
        &self,
        instance: crate::runtime::TransformInstance,
        version: VersionTag,
        canary: Option<(CanaryPolicy, oneshot::Sender<CanaryVerdict>)>,
    ) -> Result<SwapDone, DeployError> {
        let (done, done_rx) = oneshot::channel();
        let order = SwapOrder {
            instance: Box::new(instance),
            version,
            canary,
            done,
        };
        self.control
            .send(WorkerControl::Swap(order))
            .await
            .map_err(|_| DeployError::Stopped)?;
        done_rx.await.map_err(|_| DeployError::Stopped)
    }

    /// Follows a canary to its end and records the verdict.
    fn watch_canary(self: &Arc<Self>, id: u64, verdict: oneshot::Receiver<CanaryVerdict>) {
        let this = self.clone();
        tokio::spawn(async move {
            let verdict = verdict.await;
            let mut state = this.state();
            if state.canary == Some(id) {
                state.canary = None;
            }
            // Dropped after the lock is released: instances can take a
            // moment to tear down.
            let released;
            match verdict {
                Ok(CanaryVerdict::RolledBack {
                    frames,
                    failures,
                    baseline,
                    to,
                    released: failed,
                }) => {
                    released = Some(failed);
                    let reason = format!(
                        "canary: {failures} of its first {frames} frames failed ({:.0} %; the previous version's rate was {:.0} %)",
                        failures as f64 * 100.0 / frames.max(1) as f64,
                        baseline * 100.0
                    );
                    if let Some(version) = state.get_mut(id) {
                        version.status = Status::RolledBack { auto: true, reason };
                    }
                    if state.active == id {
                        state.activate(to);
                        this.metrics.set_active_version(&this.pipeline, to);
                    }
                    state.prune(&this.settings);
                    this.metrics.deploy(&this.pipeline, "auto_rolled_back");
                }
                Ok(CanaryVerdict::Passed { released: old, .. })
                | Ok(CanaryVerdict::Superseded { released: old }) => released = Some(old),
                Err(_) => released = None,
            }
            drop(state);
            drop(released);
        });
    }

    /// Returns to the version that ran before the active one. Counts and
    /// logs the outcome.
    pub async fn rollback(self: &Arc<Self>) -> Result<DeployReport, DeployError> {
        let result = self.rollback_inner().await;
        match &result {
            Ok(report) => {
                self.metrics.deploy(&self.pipeline, "rolled_back");
                tracing::warn!(pipeline = %self.pipeline, version = report.version,
                    replaced = report.replaced, "transform rolled back by request");
            }
            Err(err) => {
                tracing::warn!(pipeline = %self.pipeline, "transform rollback refused: {err}");
            }
        }
        result
    }

    async fn rollback_inner(self: &Arc<Self>) -> Result<DeployReport, DeployError> {
        let _one_at_a_time = self.deploy_lock.lock().await;
        let (from, target, module, config, limits, stats, sha256) = {
            let state = self.state();
            let active = state
                .active()
                .ok_or_else(|| DeployError::Internal("no active version".into()))?;
            let target_id = active.previous.ok_or_else(|| {
                DeployError::NoRollback(format!("version {} is the first this host ran", active.id))
            })?;
            let target = state.get(target_id).ok_or_else(|| {
                DeployError::NoRollback(format!("version {target_id} is no longer kept"))
            })?;
            let module = target.module.clone().ok_or_else(|| {
                DeployError::NoRollback(format!(
                    "the module of version {target_id} is no longer kept (hotswap.keep_modules)"
                ))
            })?;
            (
                active.id,
                target_id,
                module,
                target.config.clone(),
                target.limits,
                target.stats.clone(),
                target.sha256.clone(),
            )
        };
        let name = self.pipeline.clone();
        let instance =
            tokio::task::spawn_blocking(move || module.instantiate(&name, &config, limits))
                .await
                .map_err(join_error)?
                .map_err(DeployError::Init)?;
        let done = self
            .swap(instance, VersionTag { id: target, stats }, None)
            .await?;
        {
            let mut state = self.state();
            let replaced = done.replaced;
            if let Some(version) = state.get_mut(replaced)
                && replaced != target
            {
                version.status = Status::RolledBack {
                    auto: false,
                    reason: "rolled back by request".into(),
                };
            }
            state.activate(target);
            state.canary = None;
            state.prune(&self.settings);
        }
        self.metrics.set_active_version(&self.pipeline, target);
        drop(done.released);
        Ok(DeployReport {
            outcome: DeployOutcome::RolledBack,
            version: target,
            sha256,
            replaced: Some(from),
            vectors: 0,
            pause: done.pause,
            canary: false,
        })
    }

    /// What `GET /transforms` shows of this pipeline's versions, with their
    /// counters. Config values only with `show_config` (a config can hold
    /// device keys), [`REDACTED`] otherwise.
    pub fn with_history<R>(&self, show_config: bool, show: impl FnOnce(HistoryView<'_>) -> R) -> R {
        let state = self.state();
        let canary = state.canary;
        let active = state
            .active()
            .map(|v| v.view(canary == Some(v.id), show_config));
        let rollback_to = state
            .active()
            .and_then(|v| v.previous)
            .filter(|id| state.get(*id).is_some_and(|v| v.module.is_some()));
        let history: Vec<_> = state
            .versions
            .iter()
            .rev()
            .map(|v| v.view(canary == Some(v.id), show_config))
            .collect();
        show(HistoryView {
            active,
            canary_running: canary.is_some(),
            rollback_to,
            history,
        })
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
        let limits: Limits = pipeline.effective_limits(self.config.limits).into();
        let version = Version {
            id: 1,
            sha256: module.hash().to_owned(),
            source: DeploySource::Config.as_str(),
            origin: pipeline.transform.module.display().to_string(),
            deployed_at_ns: now_ns(),
            config: pipeline.transform.init_pairs(),
            limits,
            module: Some(module.clone()),
            stats: stats.clone(),
            previous: None,
            status: Status::Active,
            vectors: 0,
        };
        let hotswap_metrics = self.metrics.hotswap();
        hotswap_metrics.set_active_version(&pipeline.name, 1);
        let manager = TransformManager {
            pipeline: pipeline.name.clone(),
            runtime: self.runtime.clone(),
            control,
            settings: Settings {
                canary: hotswap.canary(),
                history: hotswap.history.get(),
                keep_modules: hotswap.keep_modules.get(),
                max_payload: self.config.max_payload_bytes(),
            },
            metrics: hotswap_metrics.clone(),
            deploy_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                versions: vec![version],
                active: 1,
                next_id: 2,
                canary: None,
            }),
        };
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

/// `YYYY-MM-DDTHH:MM:SSZ` for nanoseconds since the epoch (UTC).
fn rfc3339(ns: u64) -> String {
    crate::model::rfc3339(ns, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_check_names_the_problem() {
        assert!(matches!(
            check_magic(b"hello world"),
            Err(DeployError::NotWasm(_))
        ));
        assert!(matches!(
            check_magic(b"\0asm\x01\0\0\0"),
            Err(DeployError::CoreModule)
        ));
        assert!(check_magic(b"\0asm\x0d\0\x01\0").is_ok());
        assert_eq!(DeployError::CoreModule.outcome(), "not_a_component");
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096_123_456_789), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn vectors_live_beside_the_module() {
        assert_eq!(
            vectors_path(Path::new("/t/gw.wasm")),
            PathBuf::from("/t/gw.vectors.jsonl")
        );
    }

    fn version(id: u64, previous: Option<u64>) -> Version {
        Version {
            id,
            sha256: format!("{id:064}"),
            source: "api",
            origin: String::new(),
            deployed_at_ns: 0,
            config: Vec::new(),
            limits: Limits::default(),
            module: None,
            stats: Arc::default(),
            previous,
            status: Status::Inactive,
            vectors: 0,
        }
    }

    #[test]
    fn pruning_keeps_the_rollback_chain() {
        let settings = Settings {
            canary: None,
            history: 3,
            keep_modules: 2,
            max_payload: 1024,
        };
        let mut state = State {
            versions: (1..=6)
                .map(|id| version(id, (id > 1).then(|| id - 1)))
                .collect(),
            active: 6,
            next_id: 7,
            canary: None,
        };
        state.activate(6);
        state.prune(&settings);
        let ids: Vec<u64> = state.versions.iter().map(|v| v.id).collect();
        assert_eq!(ids, vec![4, 5, 6]);
        assert_eq!(state.get(6).map(|v| v.status.clone()), Some(Status::Active));
    }
}
