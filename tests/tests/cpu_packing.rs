//! Where `sluice run` keeps its threads, watched from outside through
//! `/proc/PID/task/*/status` and `/metrics`: on one core while quiet, on
//! every CPU under load or when another process keeps that core busy, and
//! where `--cpus` put them when it is given (a CPU it may not use is
//! refused at start). A real mosquitto, a pty, the json-telemetry transform
//! and the durable log; the busy neighbour is a spinning shell, or a
//! transform spinning on every other frame of a second pipeline.

use std::io::Write as _;
use std::process::Child;
use std::time::Duration;

use sluice::pty::Pty;
use sluice_tests::{
    Feeder, Mosquitto, SluiceProcess, eventually_every, feed_seq, free_port, metric, mosquitto_sub,
    wasm,
};

const WAIT: Duration = Duration::from_secs(60);

/// A host with the admin API, on a pty, publishing to a real mosquitto.
struct Host {
    sluice: SluiceProcess,
    pty: Pty,
    admin: u16,
    broker: Mosquitto,
    dir: tempfile::TempDir,
}

/// The config of a host with its durable log (so its writer thread is
/// there too) on `pty`, publishing to `broker`; with `hostile`, a second
/// pipeline, `hostile`, runs the hostile test guest on that pty.
fn write_config(
    dir: &std::path::Path,
    admin: u16,
    broker: u16,
    pty: &Pty,
    hostile: Option<&Pty>,
) -> std::path::PathBuf {
    let second = hostile.map_or_else(String::new, |hostile| {
        format!(
            "[[pipeline]]\nname = \"hostile\"\nserial = {{ path = \"{}\" }}\ntransform = {{ module = \"{}\" }}\n",
            hostile.path.display(),
            wasm::HOSTILE
        )
    });
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            r#"
version = 1
data_dir = "{}"
[admin]
listen = "127.0.0.1:{admin}"
[mqtt]
host = "127.0.0.1"
port = {broker}
client_id = "packing"
stats_interval_secs = 0
[[pipeline]]
name = "gw"
serial = {{ path = "{}" }}
transform = {{ module = "{}" }}
{second}"#,
            dir.display(),
            pty.path.display(),
            wasm::JSON_TELEMETRY,
        ),
    )
    .expect("config");
    path
}

fn start(cli: &[&str]) -> Host {
    start_with_env(cli, &[], None)
}

fn start_with_env(cli: &[&str], env: &[(&str, String)], hostile: Option<&Pty>) -> Host {
    assert!(
        sluice::cpus::allowed().expect("affinity").cpus().len() >= 2,
        "these tests need two CPUs to move threads between"
    );
    let broker = Mosquitto::start();
    let pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let path = write_config(dir.path(), admin, broker.port, &pty, hostile);
    let mut args = cli.to_vec();
    args.extend(["run", "--config", path.to_str().expect("utf-8")]);
    // The caller's variables come last, so they win.
    let mut all_env = vec![("SLUICE_LOG", "info,sluice=debug,sluice::cpus=trace".into())];
    all_env.extend_from_slice(env);
    let sluice = SluiceProcess::spawn(&args, &all_env);
    assert!(
        sluice.wait_for_log("serial port open", WAIT),
        "{}",
        sluice.log()
    );
    Host {
        sluice,
        pty,
        admin,
        broker,
        dir,
    }
}

impl Host {
    /// The distinct `Cpus_allowed_list` of its threads.
    fn placements(&self) -> Vec<String> {
        let mut lists: Vec<String> = thread_cpus(self.sluice.pid().expect("running"))
            .into_iter()
            .map(|(_, cpus)| cpus)
            .collect();
        lists.sort();
        lists.dedup();
        lists
    }

    /// Waits until every thread is allowed exactly `list`.
    fn wait_for_placement(&self, list: &str, timeout: Duration) -> bool {
        eventually_every(timeout, Duration::from_millis(100), || {
            self.placements() == [list]
        })
    }

    /// The single CPU every thread is kept to, once they are.
    fn wait_until_packed(&self, timeout: Duration) -> Option<usize> {
        let mut cpu = None;
        eventually_every(timeout, Duration::from_millis(100), || {
            cpu = match self.placements().as_slice() {
                [one] => one.parse().ok(),
                _ => None,
            };
            cpu.is_some()
        });
        cpu
    }

    /// Waits until every thread is kept to one CPU; fails the test if that
    /// never happens.
    fn assert_packs(&self) {
        assert!(
            self.wait_until_packed(WAIT).is_some(),
            "never packed: {:?}\n{}",
            self.placements(),
            self.sluice.log()
        );
    }

    fn changes(&self, reason: &str) -> f64 {
        metric(
            self.admin,
            &format!("sluice_cpu_placement_changes_total{{reason=\"{reason}\"}}"),
        )
    }
}

/// Each thread of process `pid`: its name and `Cpus_allowed_list`.
fn thread_cpus(pid: u32) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let status = std::fs::read_to_string(path.join("status")).ok()?;
            let cpus = status
                .lines()
                .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
            Some((name.trim().to_owned(), cpus.trim().to_owned()))
        })
        .collect()
}

/// A shell spinning on `cpu` until dropped.
struct Spinner(Child);

impl Spinner {
    fn on(cpu: usize) -> Spinner {
        let child = sluice_tests::kept_running("taskset")
            .args(["-c", &cpu.to_string(), "sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("taskset (util-linux)");
        Spinner(child)
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn every_cpu() -> String {
    sluice::cpus::allowed().expect("affinity").to_string()
}

/// The CPU list as `/proc` prints it (`0-1`, not `0,1`).
fn proc_list(cpus: &str) -> String {
    let numbers: Vec<usize> = cpus.split(',').map(|n| n.parse().expect("cpu")).collect();
    match numbers.as_slice() {
        [one] => one.to_string(),
        [first, .., last] if last - first + 1 == numbers.len() => format!("{first}-{last}"),
        _ => cpus.to_owned(),
    }
}

/// The two tests that move threads run one at a time: the spinner would
/// take half the machine from the flood.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Frames a second of a quiet feed. The debug build on a slow CI machine
/// spent 0.31 of a core at 100 a second, past the 0.25 below which a
/// second counts as quiet, so it never packed; 20 leave a wide margin.
const QUIET_RATE: u32 = 20;

#[test]
fn a_quiet_host_packs_onto_one_core_and_spreads_under_load() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let host = start(&[]);
    let feeder = Feeder::start(&host.pty.master, 0, QUIET_RATE, None);
    host.assert_packs();
    assert!(eventually_every(WAIT, Duration::from_millis(100), || {
        metric(host.admin, "sluice_cpus_in_use") == 1.0 && host.changes("quiet") >= 1.0
    }));
    drop(feeder);

    // Frames as fast as the pty takes them: more than half a core.
    let flood = Feeder::start(&host.pty.master, 0, 0, None);
    let all = proc_list(&every_cpu());
    assert!(
        eventually_every(WAIT, Duration::from_millis(100), || host.changes("load")
            >= 1.0),
        "{}",
        host.sluice.log()
    );
    // Spread while the flood lasts.
    assert!(
        host.wait_for_placement(&all, WAIT),
        "{:?}\n{}",
        host.placements(),
        host.sluice.log()
    );
    assert_eq!(
        metric(host.admin, "sluice_cpus_in_use"),
        sluice::cpus::allowed().expect("affinity").cpus().len() as f64
    );
    drop(flood);

    // Quiet again: packed again (after twice the quiet seconds, as that
    // packing was short).
    let packings = host.changes("quiet");
    host.assert_packs();
    assert!(
        eventually_every(WAIT, Duration::from_millis(100), || host.changes("quiet")
            > packings),
        "{}",
        host.sluice.log()
    );
}

#[test]
fn a_busy_neighbour_on_its_core_spreads_the_threads_then_they_pack_elsewhere() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let host = start(&[]);
    let _feeder = Feeder::start(&host.pty.master, 0, QUIET_RATE, None);
    let Some(packed) = host.wait_until_packed(WAIT) else {
        panic!("never packed\n{}", host.sluice.log());
    };
    let _spinner = Spinner::on(packed);
    assert!(
        eventually_every(WAIT, Duration::from_millis(100), || host
            .changes("contention")
            >= 1.0),
        "{:?}\n{}",
        host.placements(),
        host.sluice.log()
    );
    // The next packing avoids the busy core.
    let mut elsewhere = None;
    eventually_every(WAIT, Duration::from_millis(100), || {
        elsewhere = host
            .wait_until_packed(Duration::ZERO)
            .filter(|&cpu| cpu != packed);
        elsewhere.is_some()
    });
    assert!(elsewhere.is_some(), "{}", host.sluice.log());
}

#[test]
fn blank_variables_mean_the_defaults_so_a_blank_sluice_cpus_packs() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // What `SLUICE_CPUS: ${SLUICE_CPUS:-}` in a compose file passes when
    // the operator sets nothing.
    let blank = [
        ("SLUICE_CPUS", String::new()),
        ("SLUICE_ASYNC_THREADS", " ".into()),
        ("SLUICE_LOG_FORMAT", String::new()),
        // The default filter, which logs the "serial port open" `start`
        // waits for.
        ("SLUICE_LOG", String::new()),
    ];
    let host = start_with_env(&[], &blank, None);
    let _feeder = Feeder::start(&host.pty.master, 0, QUIET_RATE, None);
    host.assert_packs();
}

#[test]
fn a_transform_spinning_on_the_packed_core_costs_only_its_frames() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let hostile = Pty::open().expect("openpty");
    let host = start_with_env(&[], &[], Some(&hostile));
    let gateway = mosquitto_sub(host.broker.port, "iiot/stats/seq", &["-q", "1"]);
    let hostile_ok = mosquitto_sub(host.broker.port, "hostile/ok", &["-q", "1"]);
    let feeder = Feeder::start(&host.pty.master, 0, QUIET_RATE, None);
    host.assert_packs();

    // Forty frames that each spin until the call's 100 ms of CPU are up,
    // a good frame after each (so the module is not quarantined): four
    // seconds of a core, taken on the core every thread shares.
    const SPINS: usize = 40;
    let mut frames = String::new();
    for n in 0..SPINS {
        frames.push_str(&format!("spin\nok:{n}\n"));
    }
    hostile
        .master
        .try_clone()
        .expect("clone master")
        .write_all(frames.as_bytes())
        .expect("write hostile frames");
    let expected_ok: Vec<String> = (0..SPINS).map(|n| n.to_string()).collect();
    let got_ok = hostile_ok.wait_for(SPINS, WAIT);
    let written = feeder.stop().next();
    let got = gateway.wait_for(written as usize, WAIT);
    let log = host.sluice.log();

    // Every frame of the other pipeline arrived, in order, none lost.
    let seqs: Vec<u64> = got
        .iter()
        .map(|r| r.payload.parse().expect("a seq"))
        .collect();
    assert_eq!(seqs, (0..written).collect::<Vec<_>>(), "{log}");
    // The spinning frames cost only themselves: each timed out and was
    // counted; the good ones between them arrived, in order.
    let ok: Vec<String> = got_ok.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(ok, expected_ok, "{log}");
    assert_eq!(
        metric(
            host.admin,
            "sluice_frames_dropped_total{pipeline=\"hostile\",reason=\"trap_timeout\"}"
        ),
        SPINS as f64,
        "{log}"
    );
    // And the spinning did not keep the other pipeline's threads squeezed
    // onto its core: the load it made spread them.
    assert!(host.changes("load") >= 1.0, "{log}");
}

#[test]
fn cpus_fixes_the_placement() {
    let all = every_cpu();
    let host = start(&["--cpus", &all]);
    let _feeder = Feeder::start(&host.pty.master, 0, QUIET_RATE, None);
    // Longer than a packing's quiet seconds.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(host.placements(), [proc_list(&all)]);
    assert_eq!(host.changes("quiet"), 0.0);
    assert_eq!(
        metric(host.admin, "sluice_cpus_in_use"),
        sluice::cpus::allowed().expect("affinity").cpus().len() as f64
    );
}

#[test]
fn cpus_keeps_every_thread_to_the_cpus_given_and_refuses_one_it_may_not_use() {
    let allowed = sluice::cpus::allowed().expect("affinity");
    let (first, last) = match allowed.cpus() {
        [first, .., last] => (first.to_string(), *last),
        _ => panic!("these tests need two CPUs"),
    };
    let mut host = start(&["--cpus", &first]);
    let subscriber = mosquitto_sub(host.broker.port, "iiot/stats/seq", &["-q", "1"]);
    // Frames flow, so every thread a frame crosses has started.
    let fed = feed_seq(&mut host.pty.master, 0, 10);
    assert_eq!(subscriber.wait_for(fed as usize, WAIT).len(), fed as usize);
    let threads = thread_cpus(host.sluice.pid().expect("running"));
    assert!(
        threads
            .iter()
            .any(|(name, _)| name.starts_with("transform-")),
        "{threads:?}"
    );
    for (name, cpus) in &threads {
        assert_eq!(cpus, &first, "thread {name}");
    }
    assert!(host.sluice.stop(), "{}", host.sluice.log());

    // Through the environment, a CPU it may not use (the one after the
    // last it may): a clear error at start.
    let beyond = (last + 1).to_string();
    let path = write_config(
        host.dir.path(),
        free_port(),
        host.broker.port,
        &host.pty,
        None,
    );
    let mut refused = SluiceProcess::spawn(
        &["run", "--config", path.to_str().expect("utf-8")],
        &[("SLUICE_CPUS", beyond.clone())],
    );
    let status = refused.wait_exit(WAIT).expect("exits");
    assert!(!status.success());
    assert!(
        refused.log().contains(&format!(
            "--cpus {beyond}: CPU {beyond} is not one sluice may use"
        )),
        "{}",
        refused.log()
    );
}
