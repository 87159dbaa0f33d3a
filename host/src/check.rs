//! `sluice check-config`: everything `sluice run` would check before it
//! starts reading ports, without starting anything.
//!
//! It parses and validates the file (every semantic problem at once), then
//! loads each pipeline's transform in the real sandbox and runs its `init`
//! with the configured key/values, so a module that does not implement the
//! contract or refuses its config is caught before deployment. Secrets
//! (passwords, tokens) are read from their environment variable or file the
//! way start-up reads them, so a missing variable or an unreadable file shows
//! here, not on the box at 3 a.m.; their values are never printed. It
//! writes nothing: no data, cache or dead-letter directory is created (the
//! compiled-module cache is only read).

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
    // Read-only: check-config creates nothing (not even the cache or data
    // directory), so it can run before the box is set up, as any user.
    let runtime = match Runtime::new(ModuleCache::read_only(config.cache_dir())) {
        Ok(runtime) => runtime,
        Err(err) => return vec![format!("cannot start the Wasm runtime: {err:#}")],
    };
    let mut problems = secret_problems(&config, &|var| std::env::var(var).ok());
    for (i, pipeline) in config.pipelines.iter().enumerate() {
        let key = format!("pipeline[{i}].transform");
        let limits = pipeline.effective_limits(config.limits).into();
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

/// Reads every configured secret as start-up would; one problem per secret
/// that cannot be read (naming the key, never the value).
pub fn secret_problems(config: &Config, env: &impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |result: Result<Option<crate::secret::Secret>, crate::secret::SecretError>| {
        if let Err(err) = result {
            problems.push(err.to_string());
        }
    };
    if config.admin.enabled {
        check(config.admin.token(env));
    }
    if let Some(mqtt) = &config.mqtt {
        check(crate::secret::read_secret(
            "mqtt.password_env",
            &mqtt.password_env,
            "mqtt.password_file",
            &mqtt.password_file,
            env,
        ));
    }
    if let Some(influx) = &config.influx {
        check(crate::secret::read_secret(
            "influx.password_env",
            &influx.password_env,
            "influx.password_file",
            &influx.password_file,
            env,
        ));
        check(crate::secret::read_secret(
            "influx.token_env",
            &influx.token_env,
            "influx.token_file",
            &influx.token_file,
            env,
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_secrets_are_reported_by_key_without_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cr3t\n").expect("write");
        let text = format!(
            r#"
version = 1
[mqtt]
host = "127.0.0.1"
username = "u"
password_env = "MQTT_PW"
[influx]
url = "http://127.0.0.1:8086"
database = "db"
token_file = "{}"
[[pipeline]]
name = "gw"
serial = {{ path = "/dev/x" }}
transform = {{ module = "t.wasm" }}
"#,
            token.display()
        );
        let config = Config::parse(Path::new("x.toml"), &text, |_| None).expect("parses");
        let problems = secret_problems(&config, &|_| None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("mqtt.password_env"), "{problems:?}");
        assert!(problems[0].contains("MQTT_PW"), "{problems:?}");
        let problems = secret_problems(&config, &|var| (var == "MQTT_PW").then(|| "pw".into()));
        assert!(problems.is_empty(), "{problems:?}");
        std::fs::remove_file(&token).expect("rm");
        let problems = secret_problems(&config, &|var| (var == "MQTT_PW").then(|| "pw".into()));
        assert!(
            problems.len() == 1 && problems[0].contains("influx.token_file"),
            "{problems:?}"
        );
        assert!(!problems[0].contains("s3cr3t"));
    }
}
