//! One pipeline's [`TransformManager`]: its version history, validated
//! deploys, rollback, the canary's verdict, and what `GET /transforms`
//! lists of it. The only thing that sends swap orders to the worker.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::view::{HistoryView, RollbackView, VersionView};
use super::{
    DeployError, DeployOutcome, DeployReport, DeployRequest, DeploySource, REDACTED, vectors,
};
use crate::config::{Config, PipelineConfig};
use crate::metrics::HotswapMetrics;
use crate::model::now_ns;
use crate::pipeline::guard::{CanaryPolicy, VersionStats};
use crate::pipeline::{CanaryVerdict, SwapDone, SwapOrder, VersionTag, WorkerControl};
use crate::runtime::{Limits, Module, Runtime};
use crate::sync::lock;

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
    pub(super) metrics: HotswapMetrics,
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

fn join_error(err: tokio::task::JoinError) -> DeployError {
    DeployError::Internal(format!("validation task failed: {err}"))
}

impl TransformManager {
    /// The manager of `pipeline`, whose version 1 is `module` (loaded from
    /// the config), counted in `stats`.
    pub(super) fn new(
        pipeline: &PipelineConfig,
        module: &Module,
        config: &Config,
        runtime: Runtime,
        control: mpsc::Sender<WorkerControl>,
        metrics: HotswapMetrics,
        stats: Arc<VersionStats>,
    ) -> Self {
        let hotswap = &config.hotswap;
        let limits: Limits = pipeline.effective_limits(config.limits).into();
        let version = Version {
            id: 1,
            sha256: module.hash().to_owned(),
            source: DeploySource::Config.as_str(),
            origin: pipeline.transform.module.display().to_string(),
            deployed_at_ns: now_ns(),
            config: pipeline.transform.init_pairs(),
            limits,
            module: Some(module.clone()),
            stats,
            previous: None,
            status: Status::Active,
            vectors: 0,
        };
        TransformManager {
            pipeline: pipeline.name.clone(),
            runtime,
            control,
            settings: Settings {
                canary: hotswap.canary(),
                history: hotswap.history.get(),
                keep_modules: hotswap.keep_modules.get(),
                max_payload: config.max_payload_bytes(),
            },
            metrics,
            deploy_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                versions: vec![version],
                active: 1,
                next_id: 2,
                canary: None,
            }),
        }
    }

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
