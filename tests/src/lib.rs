//! Support for sluice's integration tests: real servers and real processes.
//!
//! * [`Mosquitto`] — a real broker per test on an ephemeral loopback port,
//!   with its own persistence directory; stop/restart at will; killed on drop.
//! * [`SluiceProcess`] — the real `sluice` binary as a child process.
//! * [`mosquitto_sub`] — an independent subscriber (mosquitto's own client).
//! * [`wasm`] — paths of the components built from `transforms/` and
//!   `tests/guests/` by this crate's build script.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Components built by `build.rs`.
pub mod wasm {
    /// transforms/json-telemetry.
    pub const JSON_TELEMETRY: &str = env!("SLUICE_WASM_JSON_TELEMETRY");
    /// tests/guests/misbehave.
    pub const MISBEHAVE: &str = env!("SLUICE_WASM_MISBEHAVE");
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot reserve a loopback port")
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The full path of a required program (searching `PATH` and the sbin
/// directories, where Debian puts servers); fails with a clear message when
/// it is not installed.
pub fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed; run the README's test command (scripts/test.sh), which installs it"
            )
        })
}

/// A mosquitto broker owned by one test.
pub struct Mosquitto {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts a broker with persistence in a fresh temp dir.
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut broker = Mosquitto {
            port: free_port(),
            dir,
            child: None,
        };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {data}/\nuser root\nlog_dest file {log}\nlog_type all\n",
                port = self.port,
                data = data.display(),
                log = self.dir.path().join("mosquitto.log").display(),
            ),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(program("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "mosquitto did not start on port {}",
            self.port
        );
    }

    /// Stops the broker (SIGTERM, so it saves its persistence file).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(5));
        }
    }

    /// Starts it again on the same port with the same persistence.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The broker's log (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`.
pub fn terminate(child: &mut Child, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The `sluice` binary built by this `cargo test` run.
pub fn sluice_bin() -> PathBuf {
    // Integration tests live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary is in target/<profile>/deps");
    let bin = profile_dir.join("sluice");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (cargo build -p sluice), as scripts/test.sh does",
        bin.display()
    );
    bin
}

/// A running `sluice` process; killed on drop. Its stderr goes to a file.
pub struct SluiceProcess {
    child: Option<Child>,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SluiceProcess {
    /// Spawns `sluice <args>` with extra environment variables.
    pub fn spawn(args: &[&str], env: &[(&str, String)]) -> SluiceProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path = dir.path().join("sluice.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut command = Command::new(sluice_bin());
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env("SLUICE_LOG", "info,sluice=debug");
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn sluice");
        SluiceProcess {
            child: Some(child),
            log_path,
            _dir: dir,
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until its log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        match self.child.take() {
            Some(mut child) => {
                terminate(&mut child, Duration::from_secs(10));
                child.wait().map(|s| s.success()).unwrap_or(false)
            }
            None => false,
        }
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One message as seen by `mosquitto_sub -F '%r %q %t %p'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Retain flag as delivered.
    pub retain: bool,
    /// QoS as delivered.
    pub qos: u8,
    /// Topic.
    pub topic: String,
    /// Payload as text.
    pub payload: String,
}

/// A `mosquitto_sub` child; a thread parses its output as it arrives.
pub struct Subscriber {
    child: Child,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Starts `mosquitto_sub` on `topic` with MQTT 5 and retain-as-published (so
/// the retain flag the publisher set is visible on live messages), QoS 1.
/// `extra` adds flags (e.g. `-C N`, `--retained-only`, `-W secs`). Returns
/// once the subscription is active.
pub fn mosquitto_sub(port: u16, topic: &str, extra: &[&str]) -> Subscriber {
    use std::io::BufRead as _;
    let mut child = Command::new(program("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
        .args(["-q", "1", "--retain-as-published", "-t", topic])
        .args(["-F", "%r %q %t %p"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mosquitto_sub");
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stdout = child.stdout.take().expect("piped stdout");
    let sink = received.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(message) = parse_received(&line) {
                sink.lock().expect("not poisoned").push(message);
            }
        }
    });
    // mosquitto_sub has no "subscribed" signal; give it time to SUBSCRIBE.
    std::thread::sleep(Duration::from_millis(300));
    Subscriber {
        child,
        received,
        reader: Some(reader),
    }
}

impl Subscriber {
    /// Messages received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("not poisoned").clone()
    }

    /// Waits until at least `count` messages arrived or `timeout` passed;
    /// returns what arrived.
    pub fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && self.received.lock().expect("not poisoned").len() < count
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.received()
    }

    /// Waits for the process to exit by itself (use with `-C`/`-W`), or kills
    /// it at `timeout`; returns everything it printed.
    pub fn collect(mut self, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.received()
    }
}

fn parse_received(line: &str) -> Option<Received> {
    let mut parts = line.splitn(4, ' ');
    let retain = parts.next()? == "1";
    let qos = parts.next()?.parse().ok()?;
    let topic = parts.next()?.to_owned();
    let payload = parts.next().unwrap_or("").to_owned();
    Some(Received {
        retain,
        qos,
        topic,
        payload,
    })
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
