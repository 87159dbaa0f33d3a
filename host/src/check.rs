//! `sluice check-config`: everything `sluice run` would check before it
//! starts reading ports, without starting anything.
//!
//! It parses and validates the file (every semantic problem at once), then
//! loads each pipeline's transform in the real sandbox and runs its `init`
//! with the configured key/values, so a module that does not implement the
//! contract or refuses its config is caught before deployment.

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::runtime::{ModuleCache, Runtime};

/// Checks `path`; prints the verdict; returns the exit code (0 = valid).
pub fn check_config(path: &Path) -> u8 {
    let problems = problems(path);
    if problems.is_empty() {
        println!("{}: ok", path.display());
        0
    } else {
        eprintln!("{}: {} problem(s)", path.display(), problems.len());
        for problem in &problems {
            eprintln!("  - {problem}");
        }
        1
    }
}

/// Every problem found in the config at `path`.
pub fn problems(path: &Path) -> Vec<String> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(ConfigError::Invalid { problems, .. }) => return problems,
        Err(err) => return vec![err.to_string()],
    };
    let runtime = match Runtime::new(ModuleCache::new(config.cache_dir())) {
        Ok(runtime) => runtime,
        Err(err) => return vec![format!("cannot start the Wasm runtime: {err:#}")],
    };
    let mut problems = Vec::new();
    for (i, pipeline) in config.pipelines.iter().enumerate() {
        let key = format!("pipeline[{i}].transform");
        let limits = pipeline.limits.unwrap_or(config.limits).into();
        match runtime.load_file(&pipeline.transform.module) {
            Ok(module) => {
                if let Err(err) =
                    module.instantiate(&pipeline.name, &pipeline.transform.init_pairs(), limits)
                {
                    problems.push(format!("{key}.config: {err}"));
                }
            }
            Err(err) => problems.push(format!("{key}.module: {err}")),
        }
    }
    problems
}
