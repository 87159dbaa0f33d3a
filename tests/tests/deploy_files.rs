//! The deployment files checked against the code they deploy, so they cannot
//! rot while it moves:
//!
//! * `docker-compose.yml` passes `docker-compose config -q` (Debian's
//!   docker-compose v1, installed by scripts/test.sh) with `.env.example` and
//!   with no variables at all; `.env.example` lists every variable with the
//!   compose file's defaults; every service has a healthcheck; the sluice
//!   service sets every variable its config reads, and that config passes
//!   `sluice check-config`.
//! * The Dockerfile builds with the toolchain `rust-toolchain.toml` pins.
//! * `deploy/systemd/sluice.service` (the Debian package's unit) passes
//!   `systemd-analyze verify`, where
//!   that works (skipped, with the reason printed, where it does not).
//! * The Grafana dashboard uses only metric families the host registers, only
//!   the provisioned data sources, and exactly the measurements, fields and
//!   tags the json-telemetry transform writes.
//!
//! * Every `cargo run` the README and docs/ show picks one binary: the
//!   workspace has more than one (`sluice`, `sluice-bench`), so a bare
//!   `cargo run` from the root refuses to start.
//!
//! No container is started: there is no Docker engine where these run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sluice_tests::{program, repo_root, sluice_bin, wasm};

/// A gateway line with every section the transform knows (its doc example).
const SAMPLE_LINE: &str = r#"{"seq":1042,"n1":{"t":27.6,"h":54.1,"bat":3.71},"n2":{"t":26.0,"h":50.2,"bat":3.65},"sig":{"rssi":-39,"snr":9.5},"stats":{"rx":1201,"crc_err":3}}"#;

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn output_text(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `docker-compose -f docker-compose.yml --env-file <env_file> <args>` in the
/// repository root, in an environment without the caller's variables (a
/// developer's SLUICE_* or DOCKER_* must not change the verdict).
fn compose(env_file: &Path, args: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("tempdir");
    Command::new(program("docker-compose"))
        .current_dir(repo_root())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("LC_ALL", "C.UTF-8")
        .args(["-f", "docker-compose.yml", "--env-file"])
        .arg(env_file)
        .args(args)
        .output()
        .expect("run docker-compose")
}

/// The lines of a file that are not comments.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim_start().starts_with('#'))
}

/// `${NAME}` and `${NAME:-default}` references (`$${` is an escaped `$`).
fn variable_references(text: &str) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    for line in code_lines(text) {
        let mut rest = line;
        while let Some(at) = rest.find("${") {
            let escaped = at > 0 && rest.as_bytes()[at - 1] == b'$';
            let after = &rest[at + 2..];
            let end = after.find('}').expect("unterminated ${");
            let body = &after[..end];
            rest = &after[end + 1..];
            if escaped {
                continue;
            }
            match body.split_once(":-") {
                Some((name, default)) => found.push((name.to_owned(), Some(default.to_owned()))),
                None => found.push((body.to_owned(), None)),
            }
        }
    }
    found
}

/// `text` with every `${NAME:-default}` replaced by its default (and
/// `${NAME}` by nothing), as sluice would interpolate it with no variables set.
fn with_defaults(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after.find('}').expect("unterminated ${");
        out.push_str(after[..end].split_once(":-").map_or("", |(_, d)| d));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `KEY=VALUE` lines of an env file.
fn env_file_entries(text: &str) -> BTreeMap<String, String> {
    code_lines(text)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {l}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

#[test]
fn compose_file_is_valid_with_the_example_env_and_with_none() {
    let empty = tempfile::NamedTempFile::new().expect("temp file");
    for env_file in [repo_root().join(".env.example"), empty.path().to_owned()] {
        let out = compose(&env_file, &["config", "-q"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "docker-compose config -q with --env-file {}:\n{}",
            env_file.display(),
            output_text(&out)
        );
        // An unset variable is only a warning for docker-compose; here it
        // means a ${VAR} without a default.
        assert!(
            !stderr.contains("variable is not set"),
            "--env-file {}:\n{stderr}",
            env_file.display()
        );
    }
}

#[test]
fn env_example_lists_every_compose_variable_with_its_default() {
    let compose_text = read("docker-compose.yml");
    let example = env_file_entries(&read(".env.example"));
    let references = variable_references(&compose_text);
    assert!(
        !references.is_empty(),
        "no ${{VAR}} found in docker-compose.yml"
    );
    let mut used = BTreeSet::new();
    for (name, default) in &references {
        used.insert(name.clone());
        let documented = example.get(name).unwrap_or_else(|| {
            panic!("docker-compose.yml uses ${{{name}}}; add it to .env.example")
        });
        let default = default.as_ref().unwrap_or_else(|| {
            panic!("${{{name}}} has no default in docker-compose.yml (a clean clone has no .env)")
        });
        assert_eq!(
            default, documented,
            "${{{name}}}: the default in docker-compose.yml differs from .env.example"
        );
    }
    let stale: Vec<_> = example.keys().filter(|k| !used.contains(*k)).collect();
    assert!(
        stale.is_empty(),
        ".env.example sets variables docker-compose.yml does not use: {stale:?}"
    );
}

/// The resolved compose file as JSON (`docker-compose config`, converted by
/// the PyYAML docker-compose itself depends on). `None`, with the reason
/// printed, when that Python module is not importable by `python3`.
fn resolved_compose() -> Option<Value> {
    let out = compose(&repo_root().join(".env.example"), &["config"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let python = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = python else {
        println!("SKIPPED (structure of the compose file): python3 is not available");
        return None;
    };
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&out.stdout).expect("write to python3");
    }
    let converted = child.wait_with_output().expect("python3");
    if !converted.status.success() {
        println!(
            "SKIPPED (structure of the compose file): python3 cannot convert YAML: {}",
            String::from_utf8_lossy(&converted.stderr)
        );
        return None;
    }
    Some(serde_json::from_slice(&converted.stdout).expect("converted compose file is JSON"))
}

#[test]
fn every_service_has_a_healthcheck_and_sluice_is_wired_to_its_config() {
    let Some(config) = resolved_compose() else {
        return;
    };
    let services = config["services"].as_object().expect("services");
    for name in ["mosquitto", "influxdb", "sluice", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    for (name, service) in services {
        let test = &service["healthcheck"]["test"];
        assert!(
            test.as_array()
                .is_some_and(|t| t.len() > 1 && t[0] != "NONE"),
            "service {name} has no healthcheck: {test}"
        );
        // Bind mounts of repository files must point at files that exist
        // (`config -q` does not check that).
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let volume = volume.as_str().expect("volume is a string");
            if volume.starts_with('/') {
                let source = volume.split(':').next().expect("source");
                assert!(
                    Path::new(source).exists(),
                    "service {name}: {source} does not exist"
                );
            }
        }
    }
    for (service, needs) in [
        ("sluice", ["mosquitto", "influxdb"]),
        ("grafana", ["influxdb", "prometheus"]),
    ] {
        for need in needs {
            assert_eq!(
                services[service]["depends_on"][need]["condition"], "service_healthy",
                "{service} must wait for a healthy {need}"
            );
        }
    }

    let sluice = &services["sluice"];
    let env = sluice["environment"]
        .as_object()
        .expect("sluice environment");
    let devices: Vec<&str> = sluice["devices"]
        .as_array()
        .expect("sluice devices")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let serial = env["SLUICE_SERIAL"].as_str().expect("SLUICE_SERIAL");
    assert!(
        devices.iter().any(|d| d.split(':').nth(1) == Some(serial)),
        "SLUICE_SERIAL={serial} is not a device passed through: {devices:?}"
    );
    // Every variable deploy/sluice/gateway.toml reads, and the secrets it
    // names, are set by the compose file.
    let gateway = read("deploy/sluice/gateway.toml");
    let mut needed: BTreeSet<String> = variable_references(&gateway)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let parsed: toml::Value =
        toml::from_str(&with_defaults(&gateway)).expect("gateway.toml is TOML once interpolated");
    for table in ["influx", "admin", "mqtt"] {
        for key in ["token_env", "password_env"] {
            if let Some(var) = parsed
                .get(table)
                .and_then(|t| t.get(key))
                .and_then(|v| v.as_str())
            {
                needed.insert(var.to_owned());
            }
        }
    }
    for var in &needed {
        assert!(
            env.contains_key(var),
            "deploy/sluice/gateway.toml reads {var}; the sluice service does not set it"
        );
    }
    // The admin API is where the healthcheck and Prometheus look.
    let listen = env["SLUICE_ADMIN_LISTEN"]
        .as_str()
        .expect("SLUICE_ADMIN_LISTEN");
    let port = listen.rsplit(':').next().expect("port");
    let healthcheck = sluice["healthcheck"]["test"].to_string();
    assert!(
        healthcheck.contains(&format!("/dev/tcp/127.0.0.1/{port}")),
        "{healthcheck}"
    );
    assert!(
        read("deploy/prometheus/prometheus.yml").contains(&format!("\"sluice:{port}\"")),
        "deploy/prometheus/prometheus.yml does not scrape sluice:{port}"
    );
}

#[test]
fn the_compose_sluice_config_passes_check_config() {
    let data = tempfile::tempdir().expect("tempdir");
    let transforms = Path::new(wasm::JSON_TELEMETRY)
        .parent()
        .expect("artifact dir");
    let out = Command::new(sluice_bin())
        .arg("check-config")
        .arg(repo_root().join("deploy/sluice/gateway.toml"))
        .env("SLUICE_DATA_DIR", data.path())
        .env("SLUICE_TRANSFORMS_DIR", transforms)
        .env("SLUICE_ADMIN_LISTEN", "0.0.0.0:9180")
        .env("SLUICE_INFLUX_TOKEN", "test-token")
        .env("SLUICE_ADMIN_TOKEN", "test-admin-token")
        .output()
        .expect("run sluice");
    assert!(out.status.success(), "{}", output_text(&out));
}

#[test]
fn dockerfile_uses_the_pinned_toolchain_and_existing_files() {
    let toolchain: toml::Value =
        toml::from_str(&read("rust-toolchain.toml")).expect("rust-toolchain.toml");
    let channel = toolchain["toolchain"]["channel"]
        .as_str()
        .expect("toolchain.channel");
    let dockerfile = read("Dockerfile");
    for needle in [
        format!("FROM rust:{channel}-"),
        format!("rustup toolchain install {channel} "),
        "--target wasm32-wasip2".to_owned(),
        "--profile dist".to_owned(),
    ] {
        assert!(dockerfile.contains(&needle), "Dockerfile lacks {needle:?}");
    }
    assert!(read("Cargo.toml").contains("[profile.dist]"));
    for line in code_lines(&dockerfile) {
        let Some(args) = line.trim().strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                repo_root().join(source).exists(),
                "Dockerfile copies {source}, which does not exist"
            );
        }
    }
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        println!("SKIPPED: systemd-analyze is not installed");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // Does `verify` work here at all (containers without systemd may not)?
    let probe = dir.path().join("sluice-probe.service");
    std::fs::write(&probe, "[Service]\nExecStart=/bin/true\n").expect("write probe");
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&probe)
        .output()
        .expect("run systemd-analyze");
    if !out.status.success() || !out.stderr.is_empty() {
        println!(
            "SKIPPED: systemd-analyze verify does not work here (a trivial unit fails):\n{}",
            output_text(&out)
        );
        return;
    }
    // The real binary stands in for /usr/bin/sluice (the package's), which
    // `verify` requires to exist.
    let unit = read("deploy/systemd/sluice.service");
    assert!(unit.contains("ExecStart=/usr/bin/sluice run --config /etc/sluice/sluice.toml"));
    let path = dir.path().join("sluice.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/sluice", &sluice_bin().display().to_string()),
    )
    .expect("write unit");
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let all = output_text(&out);
    // Unknown keys and bad values are only warnings ("…, ignoring."), with
    // exit code 0: any line about the unit fails the test.
    let complaints: Vec<&str> = std::str::from_utf8(&out.stderr)
        .unwrap_or_default()
        .lines()
        .chain(std::str::from_utf8(&out.stdout).unwrap_or_default().lines())
        .filter(|l| l.contains("sluice.service") || l.contains("ignoring"))
        .collect();
    assert!(out.status.success() && complaints.is_empty(), "{all}");
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// `(datasource uid, query text)` of every query on the dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/dashboards/sluice.json"))
        .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "sluice");
    let mut queries = Vec::new();
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let uid = target["datasource"]["uid"]
                .as_str()
                .or_else(|| panel["datasource"]["uid"].as_str())
                .unwrap_or_else(|| panic!("panel {} has no data source uid", panel["title"]));
            let query = target["expr"]
                .as_str()
                .or_else(|| target["query"].as_str())
                .unwrap_or_else(|| panic!("panel {} has a target without a query", panel["title"]));
            queries.push((uid.to_owned(), query.to_owned()));
        }
    }
    queries
}

#[test]
fn dashboard_refers_to_the_provisioned_data_sources() {
    let datasources = read("deploy/grafana/provisioning/datasources/datasources.yml");
    let provisioned: BTreeSet<&str> = code_lines(&datasources)
        .filter_map(|l| l.trim().strip_prefix("uid:"))
        .map(str::trim)
        .collect();
    for (uid, query) in dashboard_queries() {
        assert!(
            provisioned.contains(uid.as_str()),
            "a query uses data source {uid:?}, provisioned are {provisioned:?}: {query}"
        );
    }
    // The dashboard provider loads the directory docker-compose.yml mounts.
    let providers = read("deploy/grafana/provisioning/dashboards/dashboards.yml");
    let path = code_lines(&providers)
        .find_map(|l| l.trim().strip_prefix("path:"))
        .map(str::trim)
        .expect("dashboards.yml has a path");
    assert!(
        read("docker-compose.yml").contains(&format!("./deploy/grafana/dashboards:{path}:ro")),
        "docker-compose.yml does not mount deploy/grafana/dashboards at {path}"
    );
}

/// Metric family names the host registers (`registry.register("name", …)`
/// anywhere under host/src), with the registry's `sluice_` prefix.
fn registered_families() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                for (at, _) in text.match_indices("register(") {
                    let after = text[at + "register(".len()..].trim_start();
                    if let Some(name) = after.strip_prefix('"').and_then(|r| r.split('"').next()) {
                        out.insert(format!("sluice_{name}"));
                    }
                }
            }
        }
    }
    let source = std::fs::read_to_string(repo_root().join("host/src/metrics/mod.rs"))
        .expect("metrics/mod.rs");
    assert!(
        source.contains("Registry::with_prefix(\"sluice\")"),
        "the registry prefix changed; update this test"
    );
    let mut names = BTreeSet::new();
    walk(&repo_root().join("host/src"), &mut names);
    names
}

/// Metric family → type, for the families the exposition lists when nothing
/// has happened yet (labelled families appear only once they have a child).
fn exposed_types() -> BTreeMap<String, String> {
    sluice::metrics::Metrics::new()
        .encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

#[test]
fn dashboard_uses_only_metrics_the_host_registers() {
    let families = registered_families();
    let types = exposed_types();
    assert!(
        families.len() > 20,
        "found only {families:?} under host/src"
    );
    let mut used = BTreeSet::new();
    for (uid, query) in dashboard_queries() {
        if uid != "prometheus" {
            continue;
        }
        let bytes = query.as_bytes();
        let mut i = 0;
        while let Some(at) = query[i..].find("sluice_") {
            let start = i + at;
            let preceded_by_ident =
                start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let end = query[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(query.len(), |n| start + n);
            i = end;
            if !preceded_by_ident {
                used.insert(query[start..end].to_owned());
            }
        }
    }
    assert!(used.len() > 15, "the dashboard uses only {used:?}");
    for series in &used {
        // OpenMetrics sample names: counters end in _total, histograms have
        // _bucket, _sum and _count, gauges are the family name.
        let (family, kind) = [
            ("_total", "counter"),
            ("_bucket", "histogram"),
            ("_sum", "histogram"),
            ("_count", "histogram"),
        ]
        .iter()
        .find_map(|(suffix, kind)| series.strip_suffix(suffix).map(|f| (f, *kind)))
        .unwrap_or((series.as_str(), "gauge"));
        assert!(
            families.contains(family),
            "the dashboard queries {series}, but host/src registers no {family} (registered: {families:?})"
        );
        if let Some(actual) = types.get(family) {
            assert_eq!(
                actual, kind,
                "{series}: {family} is a {actual}, not a {kind}"
            );
        }
    }
}

/// Measurement → (fields, tag keys) the json-telemetry transform writes for
/// [`SAMPLE_LINE`], from `sluice transform test`.
fn transform_points() -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("sample.txt");
    std::fs::write(&input, format!("{SAMPLE_LINE}\n")).expect("write sample");
    let out = Command::new(sluice_bin())
        .args(["transform", "test", wasm::JSON_TELEMETRY, "--input"])
        .arg(&input)
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .expect("run sluice transform test");
    assert!(out.status.success(), "{}", output_text(&out));
    let mut points: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let value: Value = serde_json::from_str(line).expect("a JSON line");
        if value["kind"] != "point" {
            continue;
        }
        let entry = points
            .entry(
                value["measurement"]
                    .as_str()
                    .expect("measurement")
                    .to_owned(),
            )
            .or_default();
        entry
            .0
            .extend(value["fields"].as_object().expect("fields").keys().cloned());
        entry
            .1
            .extend(value["tags"].as_object().expect("tags").keys().cloned());
    }
    assert!(!points.is_empty(), "no points:\n{}", output_text(&out));
    points
}

/// The string literals after `needle` in `text` (`r._field == "x"` → `x`).
fn literals_after(text: &str, needle: &str) -> Vec<String> {
    text.match_indices(needle)
        .filter_map(|(at, _)| {
            let rest = text[at + needle.len()..].strip_prefix('"')?;
            rest.split('"').next().map(str::to_owned)
        })
        .collect()
}

#[test]
fn dashboard_shows_what_the_transform_writes_to_influxdb() {
    let written = transform_points();
    let mut shown: BTreeSet<(String, String)> = BTreeSet::new();
    for (uid, query) in dashboard_queries() {
        if uid != "influxdb" {
            continue;
        }
        let measurements = literals_after(&query, "r._measurement == ");
        let fields = literals_after(&query, "r._field == ");
        assert_eq!(measurements.len(), 1, "one measurement per query: {query}");
        let measurement = &measurements[0];
        let (known_fields, tags) = written.get(measurement).unwrap_or_else(|| {
            panic!("the dashboard queries measurement {measurement:?}; the transform writes {written:?}")
        });
        for field in fields {
            assert!(
                known_fields.contains(&field),
                "the dashboard queries {measurement}.{field}; the transform writes {known_fields:?}"
            );
            shown.insert((measurement.clone(), field));
        }
        // Tags kept for the legend exist on that measurement.
        if let Some(at) = query.find("keep(columns: [") {
            let list = &query[at + "keep(columns: [".len()..];
            let list = &list[..list.find(']').expect("closing ]")];
            for column in list.split(',').map(|c| c.trim().trim_matches('"')) {
                assert!(
                    column.starts_with('_') || tags.contains(column),
                    "the dashboard keeps column {column:?} of {measurement}; its tags are {tags:?}"
                );
            }
        }
    }
    for (measurement, (fields, _)) in &written {
        for field in fields {
            assert!(
                shown.contains(&(measurement.clone(), field.clone())),
                "the transform writes {measurement}.{field}, which no dashboard panel shows"
            );
        }
    }
}

#[test]
fn prometheus_config_passes_promtool_where_installed() {
    let Some(promtool) = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("promtool"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
    else {
        println!("SKIPPED: promtool is not installed");
        return;
    };
    let out = Command::new(promtool)
        .args(["check", "config"])
        .arg(repo_root().join("deploy/prometheus/prometheus.yml"))
        .output()
        .expect("run promtool");
    assert!(out.status.success(), "{}", output_text(&out));
}

/// The README's first command once stopped at "could not determine which
/// binary to run" (the bench crate added a second binary to the workspace):
/// every `cargo run` shown to a user names its package or binary, unless
/// the workspace has exactly one binary.
#[test]
fn documented_cargo_run_commands_pick_one_binary() {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", output_text(&out));
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let binaries: Vec<&str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(binaries.contains(&"sluice"), "{binaries:?}");
    let mut documents = vec![PathBuf::from("README.md")];
    for entry in std::fs::read_dir(repo_root().join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            documents.push(path.strip_prefix(repo_root()).expect("in repo").to_owned());
        }
    }
    let mut commands = 0;
    for document in &documents {
        let text = read(&document.to_string_lossy());
        for line in text.lines().filter(|l| l.contains("cargo run")) {
            commands += 1;
            let picks_one = [" -p ", " --package ", " --bin "]
                .iter()
                .any(|flag| line.contains(flag));
            assert!(
                picks_one || binaries.len() == 1,
                "{}: `{}` does not say which of {binaries:?} to run",
                document.display(),
                line.trim()
            );
        }
    }
    assert!(commands > 0, "the README shows how to run the demo");
}
