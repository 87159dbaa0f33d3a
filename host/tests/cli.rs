//! The `sluice` command line, run as a user would run it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is in the repo")
        .to_owned()
}

/// transforms/json-telemetry, built once per test run with `sluice transform build`.
fn json_telemetry_module() -> &'static Path {
    static MODULE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MODULE.get_or_init(|| {
        let out = sluice()
            .args(["transform", "build"])
            .arg(repo().join("transforms"))
            .output()
            .expect("run sluice");
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "building transforms/ failed: {stderr}"
        );
        stdout
            .lines()
            .map(PathBuf::from)
            .find(|p| p.ends_with("json_telemetry.wasm"))
            .expect("json_telemetry.wasm among the artifacts")
    })
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `transform new` → `transform build` → `transform test`, in a temp dir,
/// plus the scaffold's own native unit test: the author's first ten minutes.
#[test]
fn transform_new_build_test_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Share one target dir across runs so the nested builds are incremental.
    let target_dir = repo().join("target/scaffold-test");

    let out = sluice()
        .args(["transform", "new", "line-echo", "--dir"])
        .arg(tmp.path())
        .output()
        .expect("run sluice");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "new failed: {stdout}{stderr}");
    let crate_dir = tmp.path().join("line-echo");
    // Self-contained: the SDK comes from the binary, not from a checkout.
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).expect("Cargo.toml");
    assert!(
        manifest.contains(r#"path = "vendor/sluice-sdk""#),
        "{manifest}"
    );
    let hello = std::fs::read_to_string(crate_dir.join("src/lib.rs")).expect("lib.rs");
    let code_lines = hello
        .lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("//"))
        .count();
    assert!(code_lines <= 25, "scaffold stays small: {code_lines} lines");

    let out = sluice()
        .args(["transform", "build"])
        .arg(&crate_dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .expect("run sluice");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "build failed: {stdout}{stderr}");
    let module = PathBuf::from(stdout.trim());
    assert!(module.ends_with("line_echo.wasm"), "{stdout}");

    let input = tmp.path().join("input.txt");
    std::fs::write(&input, b"hello there\n\xff\xfe\n").expect("write input");
    let out = sluice()
        .args(["transform", "test"])
        .arg(&module)
        .arg("--input")
        .arg(&input)
        .args(["--config", "prefix=lab", "--source", "port7"])
        .output()
        .expect("run sluice");
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a bad frame makes the exit code non-zero: {stderr}"
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(
        lines[0],
        serde_json::json!({"kind":"message","topic":"lab/port7","payload":"hello there","qos":1,"retain":true})
    );
    assert_eq!(lines[1]["kind"], "point");
    assert_eq!(lines[1]["fields"]["bytes"], 11);
    assert_eq!(lines[2]["kind"], "error");
    assert_eq!(lines[2]["line"], 2);
    assert_eq!(lines[2]["reason"], "decode_malformed");

    // --allow-errors: same output, exit 0.
    let out = sluice()
        .args(["transform", "test"])
        .arg(&module)
        .arg("--input")
        .arg(&input)
        .arg("--allow-errors")
        .output()
        .expect("run sluice");
    assert!(out.status.success());

    // The scaffold's own unit test runs natively with plain cargo test.
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .expect("run cargo test");
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "scaffold tests failed: {stdout}{stderr}"
    );
    assert!(stdout.contains("test result: ok. 1 passed"), "{stdout}");
}

/// `sluice transform test` on the sample line prints the documented topics.
#[test]
fn transform_test_prints_the_gateway_topics_for_the_sample_line() {
    let module = json_telemetry_module();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("sample.txt");
    std::fs::write(
        &input,
        r#"{"seq":1042,"n1":{"t":27.6,"h":54.1,"bat":3.71},"n2":{"t":26.0,"h":50.2,"bat":3.65},"sig":{"rssi":-39,"snr":9.5},"stats":{"rx":1201,"crc_err":3}}"#,
    )
    .expect("write");
    let out = sluice()
        .args(["transform", "test"])
        .arg(module)
        .arg("--input")
        .arg(&input)
        .output()
        .expect("run sluice");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let messages: Vec<(String, String, bool)> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .filter(|v| v["kind"] == "message")
        .map(|v| {
            assert_eq!(v["qos"], 1);
            (
                v["topic"].as_str().expect("topic").to_owned(),
                v["payload"].as_str().expect("payload").to_owned(),
                v["retain"].as_bool().expect("retain"),
            )
        })
        .collect();
    for (topic, payload, retain) in [
        ("iiot/node1/temperature", "27.6", true),
        ("iiot/node1/humidity", "54.1", true),
        ("iiot/node1/battery", "3.71", true),
        ("iiot/node2/temperature", "26.0", true),
        ("iiot/node2/humidity", "50.2", true),
        ("iiot/node2/battery", "3.65", true),
        ("iiot/signal/rssi", "-39", true),
        ("iiot/signal/snr", "9.5", true),
        ("iiot/stats/rx", "1201", false),
        ("iiot/stats/crc_err", "3", false),
    ] {
        let want = (topic.to_owned(), payload.to_owned(), retain);
        assert!(messages.contains(&want), "missing {want:?} in {messages:?}");
    }
}

/// Every example config passes check-config; broken ones are explained.
#[test]
fn check_config_accepts_the_examples_and_explains_broken_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let module = json_telemetry_module();
    let transforms = module.parent().expect("artifact dir");
    for entry in std::fs::read_dir(repo().join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = sluice()
                .arg("check-config")
                .arg(&path)
                .env("SLUICE_DATA_DIR", tmp.path())
                .env("SLUICE_TRANSFORMS_DIR", transforms)
                .output()
                .expect("run sluice");
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "{}: {stdout}{stderr}", path.display());
        }
    }

    let cases: &[(&str, &[&str])] = &[
        (
            "version = 1\n[mqtt]\nhost = \"h\"\nprot = 1\n",
            &["unknown field `prot`", "line 4"],
        ),
        (
            "version = 1\n[mqtt]\nhost = \"${SURELY_UNSET_VAR}\"\n",
            &["line 3", "SURELY_UNSET_VAR is not set"],
        ),
        (
            "version = 2\n[[pipeline]]\nname = \"a b\"\nserial = { path = \"/dev/x\" }\ntransform = { module = \"/nonexistent.wasm\" }\n",
            &[
                "3 problem(s)",
                "version: this host reads config version 1",
                "pipeline[0].name",
                "pipeline[0].transform.module: /nonexistent.wasm is not a file",
            ],
        ),
        (
            &format!(
                "version = 1\n[[pipeline]]\nname = \"gw\"\nserial = {{ path = \"/dev/x\" }}\ntransform = {{ module = \"{}\", config = {{ qos = 7 }} }}\n",
                module.display()
            ),
            &["pipeline[0].transform.config", "invalid_config", "qos"],
        ),
    ];
    for (i, (config, expected)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, config).expect("write");
        let out = sluice()
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("run sluice");
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "case {i} must fail: {stdout}{stderr}"
        );
        for needle in *expected {
            assert!(
                stderr.contains(needle),
                "case {i}: {needle:?} not in:\n{stderr}"
            );
        }
    }
}

/// `sluice [global_args] demo` for 5 frames at 50/s, JSON lines on stdout,
/// ephemeral ports, points into `points`, the freshly built json-telemetry.
fn headless_demo(global_args: &[&str], points: &Path) -> Output {
    sluice()
        .args(global_args)
        .args(["demo", "--frames", "5", "--rate", "50", "--json"])
        .args(["--mqtt-port", "0", "--admin-port", "0", "--points"])
        .arg(points)
        .arg("--module")
        .arg(json_telemetry_module())
        .output()
        .expect("run sluice demo")
}

/// The README's main command, headless: the simulated node's frames go
/// through the real transform and come out as JSON lines (`--json`); nothing
/// is lost. Ephemeral ports, so it never collides with a broker on 1883.
#[test]
fn demo_runs_headless_and_accounts_for_every_frame() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let points_path = tmp.path().join("points.lp");
    let out = headless_demo(&[], &points_path);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let messages = lines.iter().filter(|v| v["kind"] == "message").count();
    let points = lines.iter().filter(|v| v["kind"] == "point").count();
    // 11 messages and 4 points per telemetry frame.
    assert_eq!((messages, points), (55, 20), "{stdout}");
    assert!(
        lines
            .iter()
            .any(|v| v["topic"] == "iiot/node1/temperature" && v["retain"] == true),
        "{stdout}"
    );
    assert!(stderr.contains("frames sent 5, received 5"), "{stderr}");
    // Every message went through the MQTT sink to the embedded broker, and
    // every point into the line-protocol file.
    assert!(
        stderr.contains("55 messages published (55 confirmed by the broker)"),
        "{stderr}"
    );
    let lines = std::fs::read_to_string(&points_path).expect("points file");
    assert_eq!(lines.lines().count(), 20, "{lines}");
    assert!(lines.starts_with("environment,node=node1 "), "{lines}");
}

/// `--async-threads` (`SLUICE_ASYNC_THREADS`) sizes the async runtime (one
/// worker by default, which every other test runs on): the demo runs, and
/// accounts for every frame, on three worker threads too; a count of 0 is
/// refused before anything starts.
#[test]
fn async_threads_three_run_the_demo_and_zero_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = headless_demo(&["--async-threads", "3"], &tmp.path().join("points.lp"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 75, "{stdout}");
    assert!(
        stderr.contains("55 messages published (55 confirmed by the broker)"),
        "{stderr}"
    );

    let out = sluice()
        .env("SLUICE_ASYNC_THREADS", "0")
        .args(["demo", "--frames", "1"])
        .output()
        .expect("run sluice");
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("--async-threads"), "{stderr}");
}

/// The demo's embedded broker is a real MQTT broker: an independent client
/// (mosquitto_sub, MQTT 3.1.1) receives the telemetry on `iiot/#`, and the
/// metrics URL the demo prints serves the host's counters.
#[test]
fn demo_publishes_to_its_embedded_broker_and_serves_metrics() {
    use std::io::{BufRead as _, BufReader, Read as _};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    };
    let (mqtt_port, admin_port) = (free_port(), free_port());
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut demo = sluice()
        .args(["demo", "--rate", "20", "--frames", "400", "--quiet"])
        .args(["--mqtt-port", &mqtt_port.to_string()])
        .args(["--admin-port", &admin_port.to_string()])
        .arg("--points")
        .arg(tmp.path().join("points.lp"))
        .arg("--module")
        .arg(json_telemetry_module())
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice demo");
    let mut stderr = BufReader::new(demo.stderr.take().expect("piped"));
    // The demo prints what to run once its broker and admin API are up.
    let mut banner = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !banner.contains("Ctrl-C stops") && Instant::now() < deadline {
        if stderr.read_line(&mut banner).unwrap_or(0) == 0 {
            break;
        }
    }
    let watch = format!("mosquitto_sub -h 127.0.0.1 -p {mqtt_port} -t 'iiot/#' -v");
    let metrics_url = format!("http://127.0.0.1:{admin_port}/metrics");
    assert!(banner.contains(&watch), "{banner}");
    assert!(banner.contains(&metrics_url), "{banner}");

    // Live messages, plus the retained sensor values at subscription time.
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &mqtt_port.to_string()])
        .args(["-t", "iiot/#", "-v", "-C", "30", "-W", "20"])
        .output()
        .expect("run mosquitto_sub (scripts/test.sh installs mosquitto-clients)");
    let received = String::from_utf8_lossy(&sub.stdout).into_owned();
    let topics: Vec<&str> = received
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(topic, _)| topic))
        .collect();
    assert_eq!(topics.len(), 30, "{received}");
    assert!(topics.iter().all(|t| t.starts_with("iiot/")), "{received}");
    assert!(topics.contains(&"iiot/node1/temperature"), "{received}");

    // GET /metrics with plain HTTP/1.1 (no client library needed).
    let mut http =
        std::net::TcpStream::connect(("127.0.0.1", admin_port)).expect("admin API listening");
    std::io::Write::write_all(
        &mut http,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("send request");
    let mut response = String::new();
    http.read_to_string(&mut response).expect("read response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("content-type: application/openmetrics-text"),
        "{response}"
    );
    assert!(
        response.contains("sluice_frames_received_total{pipeline=\"demo\"}"),
        "{response}"
    );
    assert!(
        response.contains("sluice_mqtt_delivered_total"),
        "{response}"
    );

    let _ = demo.kill();
    let _ = demo.wait();
}

/// `examples/reference.toml` shows optional keys as `#key = value` and
/// optional tables as `#[table]`. Uncommented they must still be valid, all
/// at once and with each `#framing = …` alternative in place of the active
/// framing, so the reference cannot drift from the config structs.
#[test]
fn reference_config_optional_keys_are_valid() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let transforms = json_telemetry_module().parent().expect("artifact dir");
    let reference =
        std::fs::read_to_string(repo().join("examples/reference.toml")).expect("reference.toml");
    // The files the optional keys name, relative to the config file.
    for file in [
        "certs/ca.pem",
        "certs/client.pem",
        "certs/client.key",
        "secrets/mqtt-password",
        "secrets/influx-password",
        "secrets/admin-token",
    ] {
        let path = tmp.path().join(file);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(&path, "not-a-secret\n").expect("write");
    }
    // The directory `[hotswap] watch_dir` names (under the data dir).
    std::fs::create_dir_all(tmp.path().join("data/transforms")).expect("mkdir");
    let is_setting = |line: &str| {
        line.strip_prefix('#')
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| c == '[' || c == '"' || c.is_ascii_lowercase())
    };
    let lines: Vec<&str> = reference.lines().collect();
    let all_on: Vec<&str> = lines
        .iter()
        .map(|&l| {
            if is_setting(l) && !l.starts_with("#framing") {
                &l[1..]
            } else {
                l
            }
        })
        .collect();
    let active = all_on
        .iter()
        .position(|l| l.starts_with("framing = "))
        .expect("an active framing");
    let alternatives: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| l.starts_with("framing = "))
        .collect();
    for kind in [
        "newline",
        "cobs",
        "slip",
        "length_prefixed",
        "fixed",
        "idle_gap",
    ] {
        assert!(
            alternatives
                .iter()
                .any(|l| l.contains(&format!("kind = \"{kind}\""))),
            "no #framing example for kind {kind}"
        );
    }
    let mut variants = vec![("all-optional-keys".to_owned(), all_on.join("\n"))];
    for (i, &alternative) in alternatives.iter().enumerate() {
        let mut variant = all_on.clone();
        variant[active] = alternative;
        variants.push((format!("framing-{i}"), variant.join("\n")));
    }
    for (name, config) in variants {
        let path = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("write");
        let out = sluice()
            .arg("check-config")
            .arg(&path)
            .env("SLUICE_DATA_DIR", tmp.path().join("data"))
            .env("SLUICE_TRANSFORMS_DIR", transforms)
            .output()
            .expect("run sluice");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{name}: {stdout}{stderr}");
    }
}

/// `sluice transform build DIR` with DIR relative to the working directory
/// (cargo runs inside DIR, where the relative path would name DIR/DIR).
#[test]
fn transform_build_takes_a_relative_directory() {
    let absolute = json_telemetry_module();
    let out = sluice()
        .args(["transform", "build", "transforms"])
        .current_dir(repo())
        .output()
        .expect("run sluice");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let artifacts: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    assert!(
        artifacts.iter().any(|p| p == absolute),
        "{} not among {artifacts:?}",
        absolute.display()
    );
    assert!(artifacts.iter().all(|p| p.is_absolute() && p.is_file()));
}

/// check-config leaves the box as it found it: no data directory, no module
/// cache (neither `<data_dir>/cache` nor `~/.cache/sluice`), nothing else.
#[test]
fn check_config_creates_no_directories() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).expect("mkdir home");
    let module = json_telemetry_module();
    let quote = |p: &Path| format!("{:?}", p.display().to_string());
    let pipeline = format!(
        "[[pipeline]]\nname = \"gw\"\nserial = {{ path = \"/dev/ttyUSB0\" }}\ntransform = {{ module = {} }}\n",
        quote(module)
    );
    let data_dir = tmp.path().join("var/lib/sluice");
    let with_data_dir = tmp.path().join("with-data-dir.toml");
    std::fs::write(
        &with_data_dir,
        format!(
            "version = 1\ndata_dir = \"${{SLUICE_DATA_DIR:-{}}}\"\n[mqtt]\nhost = \"127.0.0.1\"\n{pipeline}",
            data_dir.display()
        ),
    )
    .expect("write");
    let without = tmp.path().join("without-data-dir.toml");
    std::fs::write(&without, format!("version = 1\n{pipeline}")).expect("write");
    let reference = repo().join("examples/reference.toml");
    let reference_data = tmp.path().join("reference-data");

    for (config, data) in [
        (&with_data_dir, None),
        (&without, None),
        (&reference, Some(&reference_data)),
    ] {
        let mut command = sluice();
        command
            .arg("check-config")
            .arg(config)
            .current_dir(tmp.path())
            .env("HOME", &home)
            .env_remove("XDG_CACHE_HOME")
            .env_remove("XDG_STATE_HOME")
            .env_remove("SLUICE_DATA_DIR")
            .env(
                "SLUICE_TRANSFORMS_DIR",
                module.parent().expect("artifact dir"),
            );
        if let Some(data) = data {
            command.env("SLUICE_DATA_DIR", data);
        }
        let out = command.output().expect("run sluice");
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "{}: {stdout}{stderr}",
            config.display()
        );
    }
    let mut left: Vec<String> = std::fs::read_dir(tmp.path())
        .expect("read tmp")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["home", "with-data-dir.toml", "without-data-dir.toml"],
        "check-config created something"
    );
    assert_eq!(
        std::fs::read_dir(&home).expect("read home").count(),
        0,
        "check-config wrote under $HOME"
    );
}

/// Bad configs produce exactly these messages (a snapshot: any change to a
/// message shows up here and must be deliberate).
#[test]
fn check_config_messages_snapshot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown-key.toml",
            "version = 1\n[mqtt]\nhost = \"h\"\nprot = 1\n",
            "unknown-key.toml: 1 problem(s)
  - unknown-key.toml: TOML parse error at line 4, column 1
  |
4 | prot = 1
  | ^^^^
unknown field `prot`, expected one of `host`, `port`, `client_id`, `protocol`, `session_expiry_secs`, `keep_alive_secs`, `max_payload_bytes`, `max_inflight`, `reconnect_min_ms`, `reconnect_max_ms`, `username`, `password_env`, `password_file`, `tls`, `status_topic_prefix`, `stats_interval_secs`, `queue_capacity`, `queue_full`, `durable`, `outbox`, `sparkplug`

",
        ),
        (
            "unset-var.toml",
            "version = 1\n[mqtt]\nhost = \"${SURELY_UNSET_VAR}\"\n",
            "unset-var.toml: 1 problem(s)
  - unset-var.toml: line 3: environment variable SURELY_UNSET_VAR is not set (write ${SURELY_UNSET_VAR:-default} to give a default)
",
        ),
        (
            "out-of-range.toml",
            "version = 1\n[mqtt]\nhost = \"h\"\nport = 70000\n",
            "out-of-range.toml: 1 problem(s)
  - out-of-range.toml: TOML parse error at line 4, column 8
  |
4 | port = 70000
  |        ^^^^^
invalid value: integer `70000`, expected u16

",
        ),
        (
            "limits-typo.toml",
            "version = 1\n[[pipeline]]\nname = \"gw\"\nserial = { path = \"/dev/x\" }\ntransform = { module = \"/nonexistent.wasm\" }\n[pipeline.limits]\nmemory = 3\n",
            "limits-typo.toml: 1 problem(s)
  - limits-typo.toml: TOML parse error at line 7, column 1
  |
7 | memory = 3
  | ^^^^^^
unknown field `memory`, expected one of `call_timeout_ms`, `memory_mb`, `max_messages_per_frame`, `max_points_per_frame`, `max_tags_per_point`, `max_fields_per_point`, `max_output_bytes_per_frame`

",
        ),
        (
            "every-problem.toml",
            "version = 2
[mqtt]
host = \" \"
port = 0
username = \"u\"
password_env = \"P\"
password_file = \"/x\"
reconnect_min_ms = 9000
reconnect_max_ms = 10
[admin]
token_env = \"\"
ready_outbox_fraction = 0
[[pipeline]]
name = \"a b\"
serial = { path = \"/dev/x\", baud = 7, data_bits = 9, stop_bits = 3 }
transform = { module = \"/nonexistent.wasm\" }
[[pipeline]]
name = \"gw\"
serial = { path = \"/dev/x\" }
transform = { module = \"/nonexistent.wasm\" }
downlink = { topic = \"a/#/b\", qos = 3 }
",
            "every-problem.toml: 16 problem(s)
  - version: this host reads config version 1, the file says 2
  - mqtt.host: must not be empty
  - mqtt.port: must not be 0
  - mqtt.password_env: give password_env or password_file, not both
  - mqtt.reconnect_min_ms: must not exceed mqtt.reconnect_max_ms
  - admin.token_env: must name an environment variable
  - admin.ready_outbox_fraction: 0 is not in (0, 1]
  - pipeline[0].name: \"a b\" must be non-empty and use only letters, digits, '-', '_', '.'
  - pipeline[0].serial.baud: 7 is outside 50..=16000000
  - pipeline[0].serial.data_bits: must be 5, 6, 7 or 8, not 9
  - pipeline[0].serial.stop_bits: must be 1 or 2, not 3
  - pipeline[0].transform.module: /nonexistent.wasm is not a file
  - pipeline[1].downlink.topic: \"a/#/b\" is not a valid MQTT topic filter
  - pipeline[1].downlink.qos: 3 is not 0, 1 or 2
  - pipeline[1].transform.module: /nonexistent.wasm is not a file
  - pipeline[1].serial.path: /dev/x is already read by pipeline[0]
",
        ),
    ];
    for (name, config, expected) in cases {
        std::fs::write(tmp.path().join(name), config).expect("write");
        let out = sluice()
            .arg("check-config")
            .arg(name)
            .current_dir(tmp.path())
            .output()
            .expect("run sluice");
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {stdout}{stderr}");
        assert_eq!(stdout, "", "{name}");
        assert_eq!(stderr, *expected, "{name}");
    }
}

/// check-config reads every secret and names the key of one it cannot read,
/// never a value, on stdout or stderr.
#[test]
fn check_config_never_prints_secrets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let module = json_telemetry_module();
    std::fs::write(tmp.path().join("influx-token"), "influx-T0KEN-value\n").expect("write");
    let config = tmp.path().join("secrets.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1
[mqtt]
host = \"127.0.0.1\"
username = \"u\"
password_env = \"SNAPSHOT_MQTT_PASSWORD\"
[influx]
url = \"http://127.0.0.1:8086\"
database = \"db\"
token_file = \"influx-token\"
[admin]
token_env = \"SNAPSHOT_ADMIN_TOKEN\"
[[pipeline]]
name = \"gw\"
serial = {{ path = \"/dev/x\" }}
transform = {{ module = {:?} }}
",
            module.display().to_string()
        ),
    )
    .expect("write");
    let run = |env: &[(&str, &str)]| {
        let mut command = sluice();
        command.arg("check-config").arg(&config);
        for (key, value) in env {
            command.env(key, value);
        }
        let out = command.output().expect("run sluice");
        let (stdout, stderr) = text(&out);
        for secret in ["mqtt-Pa55-value", "admin-T0KEN-value", "influx-T0KEN-value"] {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "{secret} printed: {stdout}{stderr}"
            );
        }
        (out.status.code(), stdout, stderr)
    };
    let (code, _, stderr) = run(&[("SNAPSHOT_ADMIN_TOKEN", "admin-T0KEN-value")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("mqtt.password_env") && stderr.contains("SNAPSHOT_MQTT_PASSWORD"),
        "{stderr}"
    );
    let (code, stdout, stderr) = run(&[
        ("SNAPSHOT_ADMIN_TOKEN", "admin-T0KEN-value"),
        ("SNAPSHOT_MQTT_PASSWORD", "mqtt-Pa55-value"),
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

/// The shipped Modbus examples pass check-config as they are, and a plan
/// with reads past the protocol's limits is refused, naming the key.
#[test]
fn modbus_examples_pass_check_config_and_bad_plans_are_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let module = json_telemetry_module();
    let check = |config: &Path| {
        let out = sluice()
            .arg("check-config")
            .arg(config)
            .env("SLUICE_DATA_DIR", tmp.path().join("data"))
            .env(
                "SLUICE_TRANSFORMS_DIR",
                module.parent().expect("artifact dir"),
            )
            .output()
            .expect("run sluice");
        let (stdout, stderr) = text(&out);
        (out.status.success(), format!("{stdout}{stderr}"))
    };
    for example in ["examples/modbus-tcp.toml", "examples/modbus-rtu.toml"] {
        let (ok, output) = check(&repo().join(example));
        assert!(ok, "{example}: {output}");
    }
    let text = std::fs::read_to_string(repo().join("examples/modbus-tcp.toml"))
        .expect("example")
        .replace(
            "count = 2, interval_ms = 1000",
            "count = 126, interval_ms = 1000",
        );
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, text).expect("write");
    let (ok, output) = check(&bad);
    assert!(!ok, "{output}");
    assert!(
        output
            .contains("pipeline[0].modbus.device[0].read[0].count: 1 to 125 for holding, not 126"),
        "{output}"
    );
}
