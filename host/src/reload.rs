//! Config reload on SIGHUP (`systemctl reload sluice`), without dropping a
//! frame.
//!
//! What can change on a running host: a pipeline's transform — its module
//! file (a new build at the same path counts: the module hash is compared),
//! its `[pipeline.transform.config]` and its `limits`. The new transform is
//! loaded, compiled (or taken from the `.cwasm` cache) and `init`ialised off
//! the hot path; only a ready instance is handed to the pipeline's worker,
//! which swaps it in between two frames ([`WorkerControl::Swap`]). Frames
//! that arrive meanwhile wait in the pipeline's bounded queue, so none is
//! lost, duplicated or reordered. A transform that fails to load or refuses
//! its config is reported and the running one stays.
//!
//! Everything else (ports, framing, downlink, capture, sinks, the admin API,
//! pipelines added or removed) is structural: it is reported as needing a
//! restart and left as it runs, so a reload never half-applies a change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, PipelineConfig};
use crate::pipeline::WorkerControl;
use crate::runtime::Runtime;

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Pipelines whose transform was swapped.
    pub swapped: Vec<String>,
    /// Pipelines whose transform was unchanged.
    pub unchanged: Vec<String>,
    /// Changes that were refused (one line each, naming the key).
    pub refused: Vec<String>,
}

/// Reloads the config file into a running host.
pub struct Reloader {
    path: PathBuf,
    current: Config,
    runtime: Runtime,
    controls: BTreeMap<String, mpsc::Sender<WorkerControl>>,
    /// Module hash each pipeline runs now.
    running: BTreeMap<String, String>,
}

/// Compares two config values through their `Debug` form. The config types
/// are plain data (no secrets: those are only named, read at start-up), so
/// this is exact and spares every config type a `PartialEq` derive.
fn same<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// Lines naming what differs between `old` and `new` that a reload cannot
/// apply (empty: everything that changed is a transform change).
pub fn structural_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    let mut check = |key: &str, equal: bool| {
        if !equal {
            changes.push(format!("{key}: changed; takes effect after a restart"));
        }
    };
    check("data_dir", same(&old.data_dir, &new.data_dir));
    check("mqtt", same(&old.mqtt, &new.mqtt));
    check("influx", same(&old.influx, &new.influx));
    let names = |c: &Config| {
        c.pipelines
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>()
    };
    if names(old) != names(new) {
        changes.push(
            "pipeline: pipelines added, removed or renamed; takes effect after a restart".into(),
        );
        return changes;
    }
    for (i, (a, b)) in old.pipelines.iter().zip(&new.pipelines).enumerate() {
        let key = format!("pipeline[{i}]");
        check(&format!("{key}.serial"), same(&a.serial, &b.serial));
        check(&format!("{key}.downlink"), same(&a.downlink, &b.downlink));
        check(&format!("{key}.capture"), same(&a.capture, &b.capture));
        check(
            &format!("{key}.channel_capacity"),
            a.channel_capacity == b.channel_capacity,
        );
    }
    changes
}

fn transform_settings_changed(
    old: &Config,
    a: &PipelineConfig,
    new: &Config,
    b: &PipelineConfig,
) -> bool {
    !same(&a.transform, &b.transform)
        || !same(
            &a.limits.unwrap_or(old.limits),
            &b.limits.unwrap_or(new.limits),
        )
}

impl Reloader {
    /// A reloader for the host started from `config` (read from `path`);
    /// `controls` are the pipeline workers' control queues, `running` the
    /// module hash each pipeline was started with.
    pub fn new(
        path: &Path,
        config: Config,
        runtime: Runtime,
        controls: BTreeMap<String, mpsc::Sender<WorkerControl>>,
        running: BTreeMap<String, String>,
    ) -> Self {
        Reloader {
            path: path.to_owned(),
            current: config,
            runtime,
            controls,
            running,
        }
    }

    /// Reads the file again and applies what can be applied. A file that
    /// does not parse or validate changes nothing.
    pub async fn reload(&mut self) -> ReloadReport {
        let mut report = ReloadReport::default();
        let new = match Config::load(&self.path) {
            Ok(config) => config,
            Err(err) => {
                report.refused.push(format!("config not reloaded: {err}"));
                return report;
            }
        };
        report.refused = structural_changes(&self.current, &new);
        for (i, pipeline) in new.pipelines.iter().enumerate() {
            let Some(old) = self
                .current
                .pipelines
                .iter()
                .find(|p| p.name == pipeline.name)
                .cloned()
            else {
                continue;
            };
            match self.swap_if_changed(&old, &new, pipeline).await {
                Ok(true) => report.swapped.push(pipeline.name.clone()),
                Ok(false) => report.unchanged.push(pipeline.name.clone()),
                Err(reason) => report.refused.push(format!(
                    "pipeline[{i}].transform: {reason}; the running transform stays"
                )),
            }
        }
        // Remember what now runs; structural parts stay as started.
        for pipeline in &mut self.current.pipelines {
            if report.swapped.contains(&pipeline.name)
                && let Some(fresh) = new.pipelines.iter().find(|p| p.name == pipeline.name)
            {
                pipeline.transform = fresh.transform.clone();
                pipeline.limits = fresh.limits.or(Some(new.limits));
            }
        }
        report
    }

    /// Loads, checks and swaps in `pipeline`'s transform if its module file,
    /// its config or its limits changed. `Ok(false)`: nothing to do.
    async fn swap_if_changed(
        &mut self,
        old: &PipelineConfig,
        new_config: &Config,
        pipeline: &PipelineConfig,
    ) -> Result<bool, String> {
        let runtime = self.runtime.clone();
        let module_path = pipeline.transform.module.clone();
        let module = tokio::task::spawn_blocking(move || runtime.load_file(&module_path))
            .await
            .map_err(|e| format!("loader failed: {e}"))?
            .map_err(|e| format!("cannot load {}: {e}", pipeline.transform.module.display()))?;
        let same_module =
            self.running.get(&pipeline.name).map(String::as_str) == Some(module.hash());
        if same_module && !transform_settings_changed(&self.current, old, new_config, pipeline) {
            return Ok(false);
        }
        let limits = pipeline.limits.unwrap_or(new_config.limits).into();
        let name = pipeline.name.clone();
        let pairs = pipeline.transform.init_pairs();
        let hash = module.hash().to_owned();
        let instance =
            tokio::task::spawn_blocking(move || module.instantiate(&name, &pairs, limits))
                .await
                .map_err(|e| format!("loader failed: {e}"))?
                .map_err(|e| format!("rejected: {e}"))?;
        let control = self
            .controls
            .get(&pipeline.name)
            .ok_or_else(|| "the pipeline is not running".to_string())?;
        let (done, swapped) = oneshot::channel();
        control
            .send(WorkerControl::Swap {
                instance: Box::new(instance),
                done,
            })
            .await
            .map_err(|_| "the pipeline has stopped".to_string())?;
        swapped
            .await
            .map_err(|_| "the pipeline stopped before the swap".to_string())?;
        self.running.insert(pipeline.name.clone(), hash);
        Ok(true)
    }
}
