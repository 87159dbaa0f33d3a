//! Config reload on SIGHUP (`systemctl reload sluice`), without dropping a
//! frame.
//!
//! What can change on a running host: a pipeline's transform — its module
//! file (a new build at the same path counts: the module hash is compared),
//! its `[pipeline.transform.config]` and its `limits`. A changed transform is
//! deployed like any other ([`crate::hotswap::TransformManager::deploy`],
//! source `reload`): loaded, compiled (or taken from the `.cwasm` cache),
//! `init`ialised and checked against its test vectors (`NAME.vectors.jsonl`
//! beside the module, if any) off the hot path; only a ready instance is
//! handed to the pipeline's worker, which swaps it in between two frames.
//! Frames that arrive meanwhile wait in the pipeline's bounded queue, so
//! none is lost, duplicated or reordered. A transform that fails to load or
//! refuses its config is reported and the running one stays.
//!
//! "Changed" is measured against what the file said (and the module hash it
//! resolved to) at the previous load, not against what runs now: a SIGHUP
//! for an unrelated change does not undo a version deployed through the
//! admin API or the watched directory.
//!
//! Everything else (ports, framing, downlink, capture, sinks, `data_dir`,
//! `[hotswap]`, the admin API (`[admin]`), the embedded broker (`[broker]`),
//! pipelines added or removed) is structural: it is reported as needing a
//! restart and left as it runs, so a reload never half-applies a change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, PipelineConfig};
use crate::hotswap::{DeployRequest, DeploySource, Hotswap};
use crate::runtime::module_hash;

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
    hotswap: Arc<Hotswap>,
    /// The module hash each pipeline's file entry resolved to at the last
    /// (re)load.
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
    check("hotswap", same(&old.hotswap, &new.hotswap));
    check("admin", same(&old.admin, &new.admin));
    check("broker", same(&old.broker, &new.broker));
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
        check(&format!("{key}.modbus"), a.modbus == b.modbus);
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
            &a.effective_limits(old.limits),
            &b.effective_limits(new.limits),
        )
}

impl Reloader {
    /// A reloader for the host started from `config` (read from `path`);
    /// `hotswap` deploys into the pipelines, `running` is the module hash
    /// each pipeline was started with.
    pub fn new(
        path: &Path,
        config: Config,
        hotswap: Arc<Hotswap>,
        running: BTreeMap<String, String>,
    ) -> Self {
        Reloader {
            path: path.to_owned(),
            current: config,
            hotswap,
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
                pipeline.limits = Some(fresh.effective_limits(new.limits).into());
            }
        }
        report
    }

    /// Deploys `pipeline`'s transform if its module file, its config or its
    /// limits changed. `Ok(false)`: nothing to do.
    async fn swap_if_changed(
        &mut self,
        old: &PipelineConfig,
        new_config: &Config,
        pipeline: &PipelineConfig,
    ) -> Result<bool, String> {
        let module_path = &pipeline.transform.module;
        let wasm = tokio::fs::read(module_path)
            .await
            .map_err(|e| format!("cannot load {}: {e}", module_path.display()))?;
        let hash = module_hash(&wasm);
        let same_module = self.running.get(&pipeline.name) == Some(&hash);
        if same_module && !transform_settings_changed(&self.current, old, new_config, pipeline) {
            return Ok(false);
        }
        let vectors = crate::hotswap::read_sidecar_vectors(module_path)
            .await
            .map_err(|e| format!("cannot read the test vectors: {e}"))?;
        let request = DeployRequest {
            source: DeploySource::Reload,
            origin: module_path.display().to_string(),
            wasm: Some(wasm),
            config: Some(pipeline.transform.init_pairs()),
            limits: Some(pipeline.effective_limits(new_config.limits).into()),
            vectors,
        };
        let report = self
            .hotswap
            .deploy(&pipeline.name, request)
            .await
            .map_err(|e| format!("rejected: {e}"))?;
        self.running.insert(pipeline.name.clone(), hash);
        Ok(report.outcome == crate::hotswap::DeployOutcome::Activated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
version = 1
[mqtt]
host = "127.0.0.1"
[[pipeline]]
name = "gw"
serial = { path = "/dev/ttyUSB0" }
transform = { module = "t.wasm" }
"#;

    fn parse(text: &str) -> Config {
        Config::parse(Path::new("sluice.toml"), text, |_| None).expect("parses")
    }

    #[test]
    fn admin_and_broker_changes_need_a_restart() {
        let old = parse(BASE);
        assert!(structural_changes(&old, &parse(BASE)).is_empty());

        let admin = parse(&format!(
            "{BASE}[admin]\nlisten = \"127.0.0.1:9999\"\ntoken_env = \"T\"\n"
        ));
        assert_eq!(
            structural_changes(&old, &admin),
            ["admin: changed; takes effect after a restart"]
        );

        let broker = parse(&format!("{BASE}[broker]\nembedded = true\n"));
        assert_eq!(
            structural_changes(&old, &broker),
            ["broker: changed; takes effect after a restart"]
        );

        let both = parse(&format!(
            "{BASE}[admin]\nenabled = false\n[broker]\nlisten = \"127.0.0.1:1884\"\n"
        ));
        assert_eq!(
            structural_changes(&old, &both),
            [
                "admin: changed; takes effect after a restart",
                "broker: changed; takes effect after a restart",
            ]
        );
    }

    #[test]
    fn a_global_limit_change_reaches_pipelines_that_override_other_keys() {
        let old = parse(&format!("{BASE}[pipeline.limits]\nmemory_mb = 64\n"));
        let new = parse(&format!(
            "{BASE}[pipeline.limits]\nmemory_mb = 64\n[limits]\ncall_timeout_ms = 20\n"
        ));
        assert!(structural_changes(&old, &new).is_empty());
        assert!(transform_settings_changed(
            &old,
            &old.pipelines[0],
            &new,
            &new.pipelines[0]
        ));
        assert!(!transform_settings_changed(
            &old,
            &old.pipelines[0],
            &old,
            &old.pipelines[0]
        ));
    }
}
