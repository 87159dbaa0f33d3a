//! Hostile transforms through the real data path: a real
//! pseudo-terminal feeding newline-framed frames, the real `sluice run`
//! binary loading `tests/guests/hostile`, a real mosquitto and mosquitto's
//! own subscriber, `/metrics` from the admin API; and `sluice transform
//! test` as a transform author runs it.
//!
//! A hostile frame must cost only itself: the good frames around it arrive
//! in order, it is counted with a reason, the host's memory and log stay
//! bounded, the guest cannot forge a line of the host's log, sleeping costs
//! no time, `kill -TERM` is answered promptly, and an `init` that prints,
//! sleeps or panics is accepted or refused, never a crash of the host.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sluice::pty::Pty;
use sluice_tests::{
    Mosquitto, Received, SluiceProcess, Subscriber, free_port, http_with, metric, mosquitto_sub,
    sluice_bin, wasm,
};

/// The pipeline's name (the `pipeline` label of its metrics).
const PIPELINE: &str = "hostile";

/// The deadline for anything a test waits for (liveness, not speed).
const WAIT: Duration = Duration::from_secs(60);

/// A TOML string.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// A one-pipeline config: `pty` (newline framing) → hostile guest (config
/// key `init` = `init` when given; default `[limits]`) → mosquitto on
/// `broker_port`; the admin API on `admin_port`.
fn write_config(
    dir: &Path,
    pty: &Path,
    broker_port: u16,
    admin_port: u16,
    init: Option<&str>,
) -> PathBuf {
    let init = init.map_or_else(String::new, |mode| format!("init = {}\n", quote(mode)));
    let text = format!(
        "version = 1\n\
         data_dir = {data}\n\
         [mqtt]\n\
         host = \"127.0.0.1\"\n\
         port = {broker_port}\n\
         client_id = \"sluice-hostile-test\"\n\
         stats_interval_secs = 0\n\
         reconnect_min_ms = 50\n\
         reconnect_max_ms = 500\n\
         [admin]\n\
         listen = \"127.0.0.1:{admin_port}\"\n\
         token_env = \"{TOKEN_ENV}\"\n\
         [[pipeline]]\n\
         name = \"{PIPELINE}\"\n\
         [pipeline.serial]\n\
         path = {pty}\n\
         [pipeline.transform]\n\
         module = {module}\n\
         [pipeline.transform.config]\n\
         {init}",
        data = quote(&dir.join("data").display().to_string()),
        pty = quote(&pty.display().to_string()),
        module = quote(wasm::HOSTILE),
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// The environment variable that holds the admin API's bearer token.
const TOKEN_ENV: &str = "SLUICE_TEST_ADMIN_TOKEN";
const ADMIN_TOKEN: &str = "hostile-test-token";

/// `sluice run --config config`, with the admin token its config names.
fn start_sluice(config: &Path) -> SluiceProcess {
    SluiceProcess::spawn(
        &["run", "--config", config.to_str().expect("utf-8 path")],
        &[(TOKEN_ENV, ADMIN_TOKEN.to_owned())],
    )
}

/// `sluice run` on the hostile guest with a broker, a pty and an admin API
/// of its own, and a subscriber to `topics` on that broker.
struct Host {
    broker: Mosquitto,
    pty: Pty,
    admin: u16,
    live: Subscriber,
    sluice: SluiceProcess,
    _dir: tempfile::TempDir,
}

impl Host {
    /// Starts it and waits until the port is open and the API listens.
    fn start(topics: &str) -> Host {
        Self::start_with(Mosquitto::start(), topics)
    }

    /// [`start`](Self::start) with a broker of the test's own.
    fn start_with(broker: Mosquitto, topics: &str) -> Host {
        let pty = Pty::open().expect("openpty");
        let dir = tempfile::tempdir().expect("tempdir");
        let admin = free_port();
        let config = write_config(dir.path(), &pty.path, broker.port, admin, None);
        let live = mosquitto_sub(broker.port, topics, &[]);
        let sluice = start_sluice(&config);
        assert!(
            sluice.wait_for_log("serial port open", WAIT)
                && sluice.wait_for_log("admin API listening", WAIT),
            "{}",
            sluice.log()
        );
        Host {
            broker,
            pty,
            admin,
            live,
            sluice,
            _dir: dir,
        }
    }
}

/// A field of `/proc/PID/status` in KiB (`VmHWM`, `VmRSS`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Whether process `pid` has exited (a zombie its parent has not reaped, or
/// gone).
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status
            .lines()
            .find_map(|line| line.strip_prefix("State:"))
            .is_some_and(|state| matches!(state.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(_) => true,
    }
}

/// `sluice_frames_dropped_total{pipeline="hostile",reason=…}`.
fn dropped(admin_port: u16, reason: &str) -> f64 {
    metric(
        admin_port,
        &format!("sluice_frames_dropped_total{{pipeline=\"{PIPELINE}\",reason=\"{reason}\"}}"),
    )
}

/// Payloads on `topic`, in arrival order.
fn payloads(received: &[Received], topic: &str) -> Vec<String> {
    received
        .iter()
        .filter(|r| r.topic == topic)
        .map(|r| r.payload.clone())
        .collect()
}

/// Runs `sluice <args>` (stdin closed, the cache in a temp dir) until it
/// exits by itself or `timeout` passes (then kills it); returns its exit
/// status (`None`: it had to be killed), stdout and stderr.
fn run_to_exit(args: &[&str], timeout: Duration) -> (Option<ExitStatus>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child: Child = sluice_tests::kept_running(sluice_bin())
        .args(args)
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .env(TOKEN_ENV, ADMIN_TOKEN)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn sluice");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    (status, read(&stdout_path), read(&stderr_path))
}

#[test]
fn hostile_frames_cost_only_themselves() {
    let Host {
        mut pty,
        admin,
        live,
        mut sluice,
        // Bound, not `..`: what a pattern leaves out is dropped at once.
        broker: _broker,
        _dir,
    } = Host::start("hostile/#");
    let pid = sluice.pid().expect("running");

    // A good frame between every two hostile ones.
    let frames = [
        "ok:1",
        // 20 s of sleep: the guest's clock moves, nothing waits.
        "sleep:20000",
        "ok:2",
        // 6 M empty-topic messages in 24 MB: before the limits, ~500 MiB of
        // host memory to lift them; now refused on the buffer's size, before
        // it is copied out of the guest.
        "empty-topics:6000000",
        "ok:3",
        // One point with 13.6 M empty tags in 27 MB: ~770 MiB before.
        "tags:13600000",
        "ok:4",
        // An 8 MiB error message full of forged log lines.
        "big-error:8388608",
        "ok:5",
        // Eight 1 MiB log lines full of forged log lines, then a panic.
        "log-flood:8",
        "ok:6",
        // 100,000 valid messages in one frame (100 times the limit).
        "messages:100000",
        "ok:7",
        // A million: the guest cannot even build them within its memory cap
        // (its list of a million messages plus their packed copy need ~36
        // MiB), so this one ends as a trap, not at the output limit.
        "messages:1000000",
        "ok:8",
        // One tag more than a point may have.
        "tags:65",
        "ok:9",
        // Topics mosquitto drops the connection on: refused by the host
        // (counted per message), or they would be re-sent after every
        // reconnect and nothing behind them would ever be delivered.
        "topic:hostile/ctl/\u{1}",
        "topic:hostile/\u{ffff}",
        "ok:10",
    ];
    let mut bytes = Vec::new();
    for frame in frames {
        bytes.extend_from_slice(frame.as_bytes());
        bytes.push(b'\n');
    }
    pty.master.write_all(&bytes).expect("write frames");

    let expected_ok: Vec<String> = (1..=10).map(|n| n.to_string()).collect();
    let got = live.wait_until(WAIT, |received| {
        payloads(received, "hostile/ok").len() >= expected_ok.len()
            && !payloads(received, "hostile/slept").is_empty()
    });
    // Read the peak before anything else can change it.
    let peak_kib = status_kib(pid, "VmHWM").expect("VmHWM of the running host");
    let log = sluice.log();
    assert_eq!(
        payloads(&got, "hostile/ok"),
        expected_ok,
        "every good frame arrives, in order.\nreceived: {:?}\nlog:\n{}",
        got.iter()
            .map(|r| (&r.topic, r.payload.len()))
            .collect::<Vec<_>>(),
        tail(&log)
    );
    // The virtual clock: exactly the 20 s asked for (a real sleep moves a
    // real clock by a little more).
    assert_eq!(
        payloads(&got, "hostile/slept"),
        ["20000000000"],
        "{}",
        tail(&log)
    );
    // Nothing of the refused frames was published.
    assert!(
        got.iter()
            .all(|r| r.topic != "hostile/m" && !r.topic.is_empty()),
        "a refused frame's output was published: {} messages",
        got.len()
    );

    // Each hostile frame is counted with its reason (all read before the
    // last good frame, so the counters are final).
    for (reason, count) in [
        ("limit_output_bytes", 2.0), // empty-topics, tags:13600000
        ("limit_messages", 1.0),     // messages:100000
        ("limit_tags", 1.0),         // tags:65
        ("decode_malformed", 1.0),
        ("trap_panic", 1.0),        // log-flood
        ("trap_memory_limit", 1.0), // messages:1000000
    ] {
        assert_eq!(
            dropped(admin, reason),
            count,
            "frames_dropped{{reason=\"{reason}\"}}\n{}",
            tail(&log)
        );
    }
    assert_eq!(
        metric(
            admin,
            &format!("sluice_frames_received_total{{pipeline=\"{PIPELINE}\"}}")
        ),
        frames.len() as f64
    );
    assert_eq!(
        metric(
            admin,
            &format!(
                "sluice_outputs_dropped_total{{pipeline=\"{PIPELINE}\",reason=\"forbidden_char_in_topic\"}}"
            )
        ),
        2.0
    );

    // Memory: the guest's memory is capped at 32 MiB (`[limits]` default);
    // the bound allows the host its own working set, engine and code (more
    // in a debug build: ~85 MiB peak measured for this whole test), one
    // guest instance at its cap and the one that replaces it after a trap.
    // Before the output limits, lifting these frames took the host to
    // 500-770 MiB. 160 MiB is a correctness bound (what the host may
    // materialise from a frame is bounded), not a benchmark.
    const PEAK_BOUND_KIB: u64 = 160 << 10;
    eprintln!(
        "peak RSS of the host: {peak_kib} KiB; log: {} bytes",
        log.len()
    );
    assert!(
        peak_kib < PEAK_BOUND_KIB,
        "peak RSS {peak_kib} KiB, bound {PEAK_BOUND_KIB} KiB"
    );

    // The log: bounded (before, the 8 MiB error and the 8 MiB of guest log
    // lines went into it whole), and no line a guest wrote looks like one of
    // the host's own — the forged text is there, escaped, inside a line.
    assert!(
        log.len() < 256 << 10,
        "the log grew to {} bytes:\n{}",
        log.len(),
        tail(&log)
    );
    // Plain text: a log that goes to a file gets no colour escapes (so a
    // forged line could not hide behind one either).
    assert!(!log.contains('\u{1b}'), "colour escapes in the log file");
    let plain = &log;
    let forged: Vec<&str> = plain
        .lines()
        .filter(|line| line.trim_start().starts_with("2099-01-01"))
        .collect();
    assert!(forged.is_empty(), "forged log lines: {forged:?}");
    assert!(
        plain.contains("\\n2099-01-01"),
        "the guest's text should be in the log, escaped:\n{}",
        tail(&log)
    );
    assert!(
        plain
            .lines()
            .any(|line| line.contains("forged by a guest") && !line.starts_with("2099")),
        "{}",
        tail(&log)
    );

    assert!(sluice.stop(), "clean exit on SIGTERM:\n{}", tail(&log));
    drop(_broker);
}

/// Waits for the first `hostile/ok` message and checks it is the frame
/// `ok:after` (nothing of the frames before it got through).
fn assert_only_after_arrives(live: &Subscriber, sluice: &SluiceProcess) {
    let got = live.wait_until(WAIT, |received| {
        !payloads(received, "hostile/ok").is_empty()
    });
    assert_eq!(
        payloads(&got, "hostile/ok"),
        ["after"],
        "{}",
        tail(&sluice.log())
    );
}

/// The last 8 KiB of a log (for assertion messages).
fn tail(log: &str) -> &str {
    let mut start = log.len().saturating_sub(8 << 10);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

#[test]
fn a_sleeping_init_or_a_printing_init_is_accepted_and_a_panicking_init_is_refused() {
    let broker = Mosquitto::start();
    // Print and sleep: the host starts and the pipeline moves frames. (Both
    // used to end the host with exit code 101, "Cannot start a runtime from
    // within a runtime": wasmtime-wasi's blocking stdio and sleep on the
    // async runtime's thread that instantiated the transform.)
    for init in ["print", "sleep"] {
        let mut pty = Pty::open().expect("openpty");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(dir.path(), &pty.path, broker.port, free_port(), Some(init));
        let live = mosquitto_sub(broker.port, "hostile/ok", &[]);
        let mut sluice = start_sluice(&config);
        assert!(
            sluice.wait_for_log("serial port open", WAIT),
            "init = {init}:\n{}",
            sluice.log()
        );
        pty.master
            .write_all(format!("ok:{init}\n").as_bytes())
            .expect("write frame");
        let got = live.wait_for(1, WAIT);
        assert_eq!(
            payloads(&got, "hostile/ok"),
            [init],
            "init = {init}:\n{}",
            sluice.log()
        );
        if init == "print" {
            // What a guest prints is its log: a line each, stderr as warnings.
            let log = sluice.log();
            let line = |text: &str| {
                log.lines()
                    .find(|l| l.contains("sluice::guest") && l.contains(text))
                    .map(str::to_owned)
            };
            assert!(
                line("init prints to stdout").is_some_and(|l| l.contains("INFO")),
                "{log}"
            );
            assert!(
                line("init prints to stderr").is_some_and(|l| l.contains("WARN")),
                "{log}"
            );
        }
        assert!(
            sluice.stop(),
            "init = {init}: clean exit:\n{}",
            sluice.log()
        );
    }

    // Panic: refused at start-up with a clear error and an ordinary failure
    // exit code, not the host's own panic (101).
    let pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &pty.path,
        broker.port,
        free_port(),
        Some("panic"),
    );
    let (status, _, stderr) = run_to_exit(
        &["run", "--config", config.to_str().expect("utf-8 path")],
        WAIT,
    );
    let status = status.unwrap_or_else(|| panic!("still running after {WAIT:?}:\n{stderr}"));
    let code = status.code();
    assert!(
        code.is_some() && code != Some(0) && code != Some(101),
        "exit {status}, expected a non-zero exit code that is not a Rust panic's (101):\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("pipeline \"{PIPELINE}\": transform rejected")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Cannot start a runtime from within a runtime"),
        "{stderr}"
    );
    // The guest's panic message, which it writes to stderr, says why.
    assert!(stderr.contains("init panics"), "{stderr}");
}

#[test]
fn sigterm_returns_promptly_while_a_guest_spins() {
    let Host {
        mut pty,
        admin,
        live,
        mut sluice,
        // Bound, not `..`: what a pattern leaves out is dropped at once.
        broker: _broker,
        _dir,
    } = Host::start("hostile/ok");
    // The pipeline is live.
    pty.master.write_all(b"ok:before\n").expect("write frame");
    assert_eq!(
        payloads(&live.wait_for(1, WAIT), "hostile/ok"),
        ["before"],
        "{}",
        sluice.log()
    );

    // A ten-minute sleep (which used to hold the worker, and with it the
    // shutdown, for ten minutes), then a frame that loops forever (stopped
    // by the call timeout, 100 ms of CPU). SIGTERM as soon as the port has
    // read both, while the worker is busy with them.
    pty.master
        .write_all(b"sleep:600000\nspin\n")
        .expect("write frames");
    let received = format!("sluice_frames_received_total{{pipeline=\"{PIPELINE}\"}}");
    assert!(
        sluice_tests::eventually_every(WAIT, Duration::from_millis(5), || {
            metric(admin, &received) >= 3.0
        }),
        "{}",
        sluice.log()
    );
    let pid = sluice.pid().expect("running");
    let signalled = Instant::now();
    sluice.signal(nix::sys::signal::Signal::SIGTERM);

    // Generous: the call timeout is 100 ms of CPU or 5 s of wall clock.
    let bound = Duration::from_secs(20);
    let exited =
        sluice_tests::eventually_every(bound, Duration::from_millis(20), || has_exited(pid));
    let took = signalled.elapsed();
    assert!(
        exited,
        "still running {took:?} after SIGTERM:\n{}",
        tail(&sluice.log())
    );
    // It has exited: `stop` only reaps it and reads the status (a normal
    // SIGTERM shutdown exits 0).
    assert!(
        sluice.stop(),
        "SIGTERM should end the host with exit code 0:\n{}",
        tail(&sluice.log())
    );
    drop(_broker);
}

#[test]
fn transform_test_does_not_hang_on_a_sleeping_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("frames.txt");
    std::fs::write(&input, "sleep:20000\nok:after\n").expect("write input");
    let started = Instant::now();
    let (status, stdout, stderr) = run_to_exit(
        &[
            "transform",
            "test",
            wasm::HOSTILE,
            "--input",
            input.to_str().expect("utf-8 path"),
        ],
        WAIT,
    );
    let status = status.unwrap_or_else(|| {
        panic!(
            "`sluice transform test` still running after {:?}:\n{stdout}\n{stderr}",
            started.elapsed()
        )
    });
    assert!(status.success(), "exit {status}:\n{stdout}\n{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let payload_of = |topic: &str| -> Vec<&str> {
        lines
            .iter()
            .filter(|l| l["kind"] == "message" && l["topic"] == topic)
            .filter_map(|l| l["payload"].as_str())
            .collect()
    };
    // The guest slept 20 s by its own clock, exactly.
    assert_eq!(payload_of("hostile/slept"), ["20000000000"], "{stdout}");
    assert_eq!(payload_of("hostile/ok"), ["after"], "{stdout}");
}

/// A request to the admin API with the bearer token; (status, body).
fn admin_request(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    http_with(port, method, path, &headers, body.as_bytes()).expect("admin API request")
}

#[test]
fn a_deploy_whose_init_fails_or_panics_is_refused_with_a_bounded_answer() {
    let Host {
        mut pty,
        admin,
        live,
        sluice,
        // Bound, not `..`: what a pattern leaves out is dropped at once.
        broker: _broker,
        _dir,
    } = Host::start("hostile/#");

    // An init that answers with 8 MiB of forged log lines: the answer says
    // why in a bounded, escaped message.
    let path = format!("/transforms/{PIPELINE}");
    let (status, body) = admin_request(admin, "PUT", &path, r#"{"config":{"init":"big-error"}}"#);
    assert!((400..500).contains(&status), "{status}: {body:.300}");
    assert!(body.len() < 4096, "an answer of {} bytes", body.len());
    assert!(body.contains("forged by a guest"), "{body}");
    let log = sluice.log();
    assert!(log.len() < 64 << 10, "a log of {} bytes", log.len());
    assert!(
        !log.lines().any(|line| line.starts_with("2099-01-01")),
        "a guest forged a log line"
    );
    // An init that panics (it writes its message to stderr first): refused,
    // the host lives.
    let (status, body) = admin_request(admin, "PUT", &path, r#"{"config":{"init":"panic"}}"#);
    assert!((400..500).contains(&status), "{status}: {body:.300}");
    assert!(body.contains("panic"), "{body}");

    // The running version stays and serves.
    pty.master.write_all(b"ok:after\n").expect("write frame");
    assert_only_after_arrives(&live, &sluice);
}

/// A message the broker closes the connection on (mosquitto's
/// `max_packet_size` with MQTT 3.1.1, which has no other way to refuse):
/// re-sent first after every reconnect it would stop all delivery for good.
/// After a few attempts it is set aside — dead-lettered with its bytes,
/// counted — and the messages behind it are delivered, in order.
#[test]
fn a_message_the_broker_disconnects_on_is_set_aside_and_the_rest_flows() {
    let broker = Mosquitto::start_with(free_port(), "allow_anonymous true\nmax_packet_size 1000\n");
    let mut host = Host::start_with(broker, "hostile/#");
    let big = "x".repeat(2000);
    writeln!(host.pty.master, "ok:before").expect("write");
    writeln!(host.pty.master, "ok:{big}").expect("write");
    for i in 0..5 {
        writeln!(host.pty.master, "ok:after-{i}").expect("write");
    }
    let received = host.live.wait_until(WAIT, |r| {
        payloads(r, "hostile/ok").iter().any(|p| p == "after-4")
    });
    let mut got = payloads(&received, "hostile/ok");
    got.dedup();
    let want: Vec<String> = std::iter::once("before".to_owned())
        .chain((0..5).map(|i| format!("after-{i}")))
        .collect();
    assert_eq!(got, want, "{}", host.sluice.log());
    assert_eq!(
        metric(
            host.admin,
            r#"sluice_sink_dropped_total{sink="mqtt",reason="broker_disconnects"}"#
        ),
        1.0
    );
    let letters = std::fs::read_to_string(host._dir.path().join("data/dead-letter/mqtt.jsonl"))
        .expect("the dead-letter file");
    let letter: serde_json::Value =
        serde_json::from_str(letters.trim()).expect("one JSON dead letter");
    assert_eq!(letter["reason"], "broker_disconnects");
    assert_eq!(letter["topic"], "hostile/ok");
    assert_eq!(letter["qos"], 1);
    assert_eq!(letter["payload"], big.as_str());
    let log = host.sluice.log();
    assert!(log.contains("set aside"), "{log}");
    assert!(host.sluice.stop(), "clean exit:\n{log}");
}

/// A guest's log is rate-limited per pipeline, not per instance: a guest
/// that logs and then traps gets a fresh instance for the next frame, and
/// all of them share one budget (20 lines a second). Six frames of 40 lines
/// each, every one ending in a trap: a limiter per instance would let 120
/// through.
#[test]
fn instances_after_traps_share_one_log_budget() {
    let Host {
        mut pty,
        live,
        sluice,
        broker: _broker,
        _dir,
        ..
    } = Host::start("hostile/#");
    let started = Instant::now();
    let mut bytes = b"log-flood:40\n".repeat(6);
    bytes.extend_from_slice(b"ok:after\n");
    pty.master.write_all(&bytes).expect("write frames");
    assert_only_after_arrives(&live, &sluice);
    let seconds = started.elapsed().as_secs() + 1;
    let log = sluice.log();
    let guest_lines = log.lines().filter(|l| l.contains("sluice::guest")).count() as u64;
    println!("{guest_lines} guest log lines in {seconds} s (240 attempted)");
    assert!(guest_lines > 0, "{}", tail(&log));
    assert!(
        guest_lines <= 20 * seconds,
        "{guest_lines} guest log lines in {seconds} s:\n{}",
        tail(&log)
    );
}
