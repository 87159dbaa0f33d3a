//! Support for sluice's integration tests: real servers and real processes.
//!
//! * [`Mosquitto`] — a real broker per test on an ephemeral loopback port,
//!   with its own persistence directory; stop/restart at will; killed on drop.
//! * [`Influxd`], [`VictoriaMetrics`] — real InfluxDB 1.x and VictoriaMetrics
//!   servers per test (ephemeral ports, temp dirs, stop/restart, killed on drop).
//! * [`SluiceProcess`] — the real `sluice` binary as a child process.
//! * [`mosquitto_sub`] — an independent subscriber (mosquitto's own client).
//! * [`SparkplugHost`] — a Sparkplug B host application whose decoders the
//!   project did not write (pysparkplug and Eclipse Tahu's, which must agree).
//! * [`wasm`] — paths of the components built from `transforms/` and
//!   `tests/guests/` by this crate's build script.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod faultproxy;
pub mod serial;

/// Components built by `build.rs`.
pub mod wasm {
    /// transforms/json-telemetry.
    pub const JSON_TELEMETRY: &str = env!("SLUICE_WASM_JSON_TELEMETRY");
    /// transforms/cayenne-lpp.
    pub const CAYENNE_LPP: &str = env!("SLUICE_WASM_CAYENNE_LPP");
    /// transforms/modbus-registers.
    pub const MODBUS_REGISTERS: &str = env!("SLUICE_WASM_MODBUS_REGISTERS");
    /// tests/guests/misbehave.
    pub const MISBEHAVE: &str = env!("SLUICE_WASM_MISBEHAVE");
    /// tests/guests/tagger-a: tags each frame `tag/a`.
    pub const TAGGER_A: &str = env!("SLUICE_WASM_TAGGER_A");
    /// tests/guests/tagger-b: tags each frame `tag/b`.
    pub const TAGGER_B: &str = env!("SLUICE_WASM_TAGGER_B");
    /// tests/guests/tagger-flaky: tags `tag/flaky`, traps on odd numbers.
    pub const TAGGER_FLAKY: &str = env!("SLUICE_WASM_TAGGER_FLAKY");
    /// tests/guests/legacy-v0-1: the old contract, `sluice:transform@0.1.0`,
    /// built without the SDK.
    pub const LEGACY_V0_1: &str = env!("SLUICE_WASM_LEGACY_V0_1");
    /// `tests/guests/hostile`: sleeps, prints, floods, crafts huge outputs.
    pub const HOSTILE: &str = env!("SLUICE_WASM_HOSTILE");
    /// `tests/guests/hostile-v0-1`: 0.1.0 output lists aliasing one buffer.
    pub const HOSTILE_V0_1: &str = env!("SLUICE_WASM_HOSTILE_V0_1");
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
    /// Extra lines for mosquitto.conf (auth, limits).
    extra_conf: String,
    /// Whether it keeps sessions and messages across restarts.
    persistence: bool,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts a broker with persistence in a fresh temp dir, anonymous access.
    pub fn start() -> Mosquitto {
        Self::start_with(free_port(), "allow_anonymous true\n")
    }

    /// A broker that is not running yet (start it with [`restart`](Self::restart)).
    pub fn stopped(port: u16, extra_conf: &str) -> Mosquitto {
        Mosquitto {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            extra_conf: extra_conf.to_owned(),
            persistence: true,
            child: None,
        }
    }

    /// A broker that keeps nothing across restarts: a restart forgets every
    /// session and every message it had not delivered.
    pub fn start_without_persistence() -> Mosquitto {
        let mut broker = Self::stopped(free_port(), "allow_anonymous true\n");
        broker.persistence = false;
        broker.launch();
        broker
    }

    /// Kills the broker (SIGKILL: nothing saved, connections reset).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again after [`stop`](Self::stop) or [`kill`](Self::kill).
    pub fn start_again(&mut self) {
        self.launch();
    }

    /// Starts a broker on `port` with `extra_conf` appended to its config
    /// (which must say whether anonymous access is allowed).
    pub fn start_with(port: u16, extra_conf: &str) -> Mosquitto {
        let mut broker = Self::stopped(port, extra_conf);
        broker.launch();
        broker
    }

    /// The broker's temp dir (for password and ACL files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\npersistence {persistence}\n\
                 persistence_location {data}/\nuser root\nlog_dest file {log}\nlog_type all\n\
                 max_queued_messages 0\n{extra}",
                port = self.port,
                persistence = self.persistence,
                data = data.display(),
                log = self.dir.path().join("mosquitto.log").display(),
                extra = self.extra_conf,
            ),
        )
        .expect("write mosquitto.conf");
        let child = kept_running(program("mosquitto"))
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

    /// Starts it (again) on the same port with the same persistence.
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

/// `Command::new(program)` for a process a test keeps running (a broker,
/// a database, sluice): it gets SIGTERM when the thread that spawned it
/// ends. A test binary killed mid-test (a CI timeout, `kill -9`) would
/// otherwise leave them running, holding the ports and pseudo-terminals
/// the next run needs. Each test runs on a thread of its own that spawns
/// and drops its fixtures, so this never ends a process a test still uses.
pub fn kept_running(program: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(program);
    // SAFETY: prctl is async-signal-safe, as `pre_exec` requires.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
    command
}

/// The `sluice` binary under test: the one built by this `cargo test` run,
/// or `SLUICE_TEST_BIN` (`scripts/cross-check.sh` points it at an ARM build
/// run by qemu).
pub fn sluice_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SLUICE_TEST_BIN") {
        return PathBuf::from(bin);
    }
    // Integration tests live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary is in target/<profile>/deps");
    let bin = profile_dir.join("sluice");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo test --workspace` (it builds the binary for the host's integration tests) or `cargo build -p sluice`",
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
        let mut command = kept_running(sluice_bin());
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

    /// SIGKILL: no goodbye, no flush (a crash or power cut, as far as the
    /// broker can tell).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `sluice run --config PATH`, returned once it logs "sluice running".
    pub fn run_config(path: &Path) -> SluiceProcess {
        let sluice = SluiceProcess::spawn(
            &["run", "--config", path.to_str().expect("utf-8 path")],
            &[],
        );
        assert!(
            sluice.wait_for_log("sluice running", Duration::from_secs(30)),
            "{}",
            sluice.log()
        );
        sluice
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. SIGHUP for a reload) without waiting.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
            nix::sys::signal::kill(pid, signal).expect("send signal");
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; its status,
    /// or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
    use std::sync::atomic::{AtomicU64, Ordering};
    static PROBES: AtomicU64 = AtomicU64::new(0);
    // A topic of its own, to see that the subscription is in place: a
    // message published before the broker took the SUBSCRIBE never arrives,
    // and on a loaded machine that can take seconds. `--retained-only`
    // would exit on the probe, so those subscribers only wait a moment.
    let probe = (!extra.contains(&"--retained-only")).then(|| {
        format!(
            "sluice-test/probe/{}/{}",
            std::process::id(),
            PROBES.fetch_add(1, Ordering::SeqCst)
        )
    });
    let mut command = kept_running(program("mosquitto_sub"));
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
        .args(["-q", "1", "--retain-as-published", "-t", topic])
        .args(["-F", "%r %q %t %p"]);
    if let Some(probe) = &probe {
        command.args(["-t", probe]);
    }
    let mut child = command
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mosquitto_sub");
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stdout = child.stdout.take().expect("piped stdout");
    let sink = received.clone();
    let (probed_tx, probed) = std::sync::mpsc::channel();
    let probe_topic = probe.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(message) = parse_received(&line) {
                if probe_topic.as_deref() == Some(message.topic.as_str()) {
                    let _ = probed_tx.send(());
                } else {
                    sink.lock().expect("not poisoned").push(message);
                }
            }
        }
    });
    match &probe {
        Some(probe) => {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let _ = Command::new(program("mosquitto_pub"))
                    .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                    .args(["-q", "1", "-t", probe, "-m", "probe"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                if probed.recv_timeout(Duration::from_millis(200)).is_ok() {
                    break;
                }
            }
        }
        None => std::thread::sleep(Duration::from_millis(300)),
    }
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

    /// Waits until `done(received so far)` holds or `timeout` passed;
    /// returns what arrived.
    pub fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if done(&received) || Instant::now() >= deadline {
                return received;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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

/// A minimal HTTP/1.0 client for talking to test servers (one request per
/// connection, no chunked encoding): returns the status and the body.
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    http_with(port, method, path, &[], body)
}

/// [`http`] with extra request headers (`("Authorization", "Bearer …")`).
pub fn http_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
    )?;
    for (name, value) in headers {
        write!(stream, "{name}: {value}\r\n")?;
    }
    write!(stream, "Content-Length: {}\r\n\r\n", body.len())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Percent-encodes a query-string value.
pub fn urlencode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A real InfluxDB 1.x (`influxd`, Debian's `influxdb` package) owned by one
/// test: ephemeral HTTP and RPC ports, its own meta/data/WAL directories;
/// stop/restart at will; killed on drop.
pub struct Influxd {
    /// HTTP API port (127.0.0.1).
    pub port: u16,
    rpc_port: u16,
    dir: tempfile::TempDir,
    auth_enabled: bool,
    admin: Option<(String, String)>,
    child: Option<Child>,
}

impl Influxd {
    /// Starts a fresh server and waits until `/ping` answers.
    pub fn start() -> Influxd {
        Self::start_with(false)
    }

    /// Starts a server with authentication on and an admin user
    /// (`admin`/`admin-pw`) that [`query`](Self::query) uses.
    pub fn start_with_auth() -> Influxd {
        let mut server = Self::start_with(true);
        let q = "CREATE USER admin WITH PASSWORD 'admin-pw' WITH ALL PRIVILEGES";
        let path = format!("/query?q={}", urlencode(q));
        let (status, body) = http(server.port, "POST", &path, b"").expect("create admin");
        assert_eq!(status, 200, "{body}");
        server.admin = Some(("admin".into(), "admin-pw".into()));
        server
    }

    fn start_with(auth_enabled: bool) -> Influxd {
        let mut server = Influxd {
            port: free_port(),
            rpc_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            auth_enabled,
            admin: None,
            child: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("influxd.log"))
            .expect("log file");
        let child = kept_running(program("influxd"))
            .args(["run", "-config", "/dev/null"])
            .env(
                "INFLUXDB_HTTP_BIND_ADDRESS",
                format!("127.0.0.1:{}", self.port),
            )
            .env(
                "INFLUXDB_BIND_ADDRESS",
                format!("127.0.0.1:{}", self.rpc_port),
            )
            .env("INFLUXDB_META_DIR", dir.join("meta"))
            .env("INFLUXDB_DATA_DIR", dir.join("data"))
            .env("INFLUXDB_DATA_WAL_DIR", dir.join("wal"))
            .env("INFLUXDB_REPORTING_DISABLED", "true")
            .env("INFLUXDB_DATA_QUERY_LOG_ENABLED", "false")
            .env("INFLUXDB_HTTP_AUTH_ENABLED", self.auth_enabled.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn influxd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(http(self.port, "GET", "/ping", b""), Ok((204, _))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "influxd did not start on port {}:\n{}",
            self.port,
            self.log()
        );
    }

    /// The base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs an InfluxQL statement (`POST /query`) and returns the JSON answer.
    pub fn query(&self, db: &str, q: &str) -> serde_json::Value {
        let mut path = format!("/query?db={}&epoch=ns&q={}", urlencode(db), urlencode(q));
        if let Some((user, password)) = &self.admin {
            path.push_str(&format!("&u={}&p={}", urlencode(user), urlencode(password)));
        }
        let (status, body) = http(self.port, "POST", &path, b"").expect("query influxd");
        assert_eq!(status, 200, "query {q:?}: {body}");
        // Numbers as their exact text (serde_json's default float parsing
        // may be off by one ULP; the comparison must be exact).
        serde_json::from_str(&numbers_as_strings(&body)).expect("query answer is JSON")
    }

    /// `CREATE DATABASE name`.
    pub fn create_database(&self, name: &str) {
        self.query("", &format!("CREATE DATABASE \"{name}\""));
    }

    /// Stops the server (SIGTERM).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
    }

    /// Starts it again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("influxd.log")).unwrap_or_default()
    }
}

impl Influxd {
    /// Every point in `db`, read back with `SHOW FIELD KEYS` (for the types)
    /// and `SELECT * FROM "<measurement>" GROUP BY *`, in a canonical form (tags sorted,
    /// fields sorted by key) for exact comparison.
    pub fn read_points(&self, db: &str) -> Vec<sluice::model::Point> {
        use sluice::model::{FieldValue, Point};
        use std::collections::BTreeMap;
        let mut types: BTreeMap<(String, String), String> = BTreeMap::new();
        let keys = self.query(db, "SHOW FIELD KEYS");
        for series in keys["results"][0]["series"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = series["name"].as_str().unwrap_or_default().to_owned();
            for row in series["values"].as_array().into_iter().flatten() {
                types.insert(
                    (name.clone(), row[0].as_str().unwrap_or_default().to_owned()),
                    row[1].as_str().unwrap_or_default().to_owned(),
                );
            }
        }
        let measurements: Vec<String> = types.keys().map(|(m, _)| m.clone()).collect();
        let mut measurements = measurements;
        measurements.dedup();
        let mut all_series = Vec::new();
        // One query per measurement: across measurements InfluxDB merges a
        // field name's types (an integer column next to a float one of the
        // same name comes back as a float).
        for measurement in &measurements {
            let quoted = measurement.replace('\\', "\\\\").replace('"', "\\\"");
            let data = self.query(db, &format!("SELECT * FROM \"{quoted}\" GROUP BY *"));
            all_series.extend(
                data["results"][0]["series"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
        let mut points = Vec::new();
        for series in &all_series {
            let name = series["name"].as_str().unwrap_or_default().to_owned();
            let mut tags: Vec<(String, String)> = series["tags"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| {
                    let v = v.as_str()?;
                    (!v.is_empty()).then(|| (k.clone(), v.to_owned()))
                })
                .collect();
            tags.sort();
            let columns: Vec<String> = series["columns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c.as_str().unwrap_or_default().to_owned())
                .collect();
            for row in series["values"].as_array().into_iter().flatten() {
                let mut fields = BTreeMap::new();
                let mut time = 0;
                for (column, value) in columns.iter().zip(row.as_array().into_iter().flatten()) {
                    if column == "time" {
                        time = value.as_str().and_then(|t| t.parse().ok()).expect("time");
                        continue;
                    }
                    if value.is_null() {
                        continue;
                    }
                    let kind = types
                        .get(&(name.clone(), column.clone()))
                        .map(String::as_str);
                    let text = value.as_str().unwrap_or_default();
                    let field =
                        match kind {
                            Some("float") => FieldValue::Float(text.parse().expect("float")),
                            Some("integer") => FieldValue::Int(text.parse().unwrap_or_else(|e| {
                                panic!("integer {name}.{column} = {value}: {e}")
                            })),
                            Some("unsigned") => FieldValue::UInt(text.parse().expect("unsigned")),
                            Some("boolean") => FieldValue::Bool(value.as_bool().expect("boolean")),
                            _ => FieldValue::Text(text.into()),
                        };
                    fields.insert(column.clone(), field);
                }
                points.push(Point {
                    measurement: name.as_str().into(),
                    tags: (tags.iter())
                        .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                        .collect(),
                    fields: (fields.into_iter()).map(|(k, v)| (k.into(), v)).collect(),
                    timestamp_ns: Some(time),
                });
            }
        }
        points
    }
}

/// Rewrites every JSON number outside strings as a string holding its exact
/// text, so it can be parsed with Rust's correctly rounding parsers.
pub fn numbers_as_strings(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + 64);
    let mut chars = json.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        if c == '"' {
            in_string = true;
            out.push(c);
        } else if c == '-' || c.is_ascii_digit() {
            out.push('"');
            out.push(c);
            while let Some(&n) = chars.peek() {
                if n.is_ascii_digit() || matches!(n, '.' | 'e' | 'E' | '+' | '-') {
                    out.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push('"');
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Influxd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A real VictoriaMetrics (Debian's `victoria-metrics`), which accepts line
/// protocol on `/write` and `/api/v2/write`; owned by one test, killed on drop.
pub struct VictoriaMetrics {
    /// HTTP port (127.0.0.1).
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl VictoriaMetrics {
    /// Starts a fresh server and waits until `/health` answers.
    pub fn start() -> VictoriaMetrics {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("vm.log")).expect("log file");
        let child = kept_running(program("victoria-metrics"))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!(
                "-storageDataPath={}",
                dir.path().join("data").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn victoria-metrics");
        let server = VictoriaMetrics {
            port,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(http(port, "GET", "/health", b""), Ok((200, _))) {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("victoria-metrics did not start:\n{}", server.log());
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every series matching `selector` from `/api/v1/export` (JSON lines),
    /// polled until at least `min_samples` samples are there or `timeout`
    /// passes (VictoriaMetrics makes new data readable after a flush).
    pub fn export(
        &self,
        selector: &str,
        min_samples: usize,
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let _ = http(self.port, "GET", "/internal/force_flush", b"");
            let path = format!("/api/v1/export?match[]={}", urlencode(selector));
            let (status, body) = http(self.port, "GET", &path, b"").expect("export");
            assert_eq!(status, 200, "{body}");
            let series: Vec<serde_json::Value> = body
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).expect("export line is JSON"))
                .collect();
            let samples: usize = series
                .iter()
                .map(|s| s["values"].as_array().map_or(0, Vec::len))
                .sum();
            if samples >= min_samples || Instant::now() >= deadline {
                return series;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vm.log")).unwrap_or_default()
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The real InfluxDB writer (`sluice::sink::influx`) on its own runtime, fed
/// from a test thread.
pub struct InfluxWriter {
    runtime: tokio::runtime::Runtime,
    sink: Option<sluice::sink::influx::InfluxSink>,
    tx: Option<sluice::sink::influx::InfluxInput>,
    /// The writer's metrics.
    pub metrics: std::sync::Arc<sluice::metrics::Metrics>,
    data_dir: tempfile::TempDir,
}

impl InfluxWriter {
    /// Starts a writer from an `[influx]` table's body (TOML).
    pub fn start(config_toml: &str) -> InfluxWriter {
        let config: sluice::config::influx::InfluxConfig =
            toml::from_str(config_toml).expect("[influx] parses");
        let problems = config.validate();
        assert!(problems.is_empty(), "{problems:?}");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let data_dir = tempfile::tempdir().expect("tempdir");
        let metrics = std::sync::Arc::new(sluice::metrics::Metrics::new());
        let (sink, tx) = {
            let _guard = runtime.enter();
            let context = sluice::sink::SinkContext::in_memory(
                metrics.clone(),
                Some(data_dir.path().to_owned()),
            );
            sluice::sink::influx::InfluxSink::start(&config, context).expect("writer starts")
        };
        InfluxWriter {
            runtime,
            sink: Some(sink),
            tx: Some(tx),
            metrics,
            data_dir,
        }
    }

    /// Queues points (waits while the writer's queue is full).
    pub fn send(&self, points: impl IntoIterator<Item = sluice::model::Point>) {
        let tx = self.tx.as_ref().expect("writer open");
        self.runtime.block_on(async {
            for point in points {
                assert!(tx.send(point).await, "writer alive");
            }
        });
    }

    /// Closes the queue and waits until every point is settled; after
    /// `give_up` what is unconfirmed is dead-lettered.
    pub fn finish(&mut self, give_up: Duration) {
        self.tx = None;
        if let Some(sink) = self.sink.take() {
            self.runtime.block_on(async {
                sink.give_up_after(give_up);
                sink.finish().await;
            });
        }
    }

    /// The dead letters written so far.
    pub fn dead_letters(&self) -> Vec<serde_json::Value> {
        let path = self
            .data_dir
            .path()
            .join("dead-letter")
            .join("influx.jsonl");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("dead letter is JSON"))
            .collect()
    }

    /// `sink_dropped{sink="influx", reason}`.
    pub fn dropped(&self, reason: &str) -> u64 {
        let needle = format!("sluice_sink_dropped_total{{sink=\"influx\",reason=\"{reason}\"}} ");
        self.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(&needle).and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    }

    /// Points InfluxDB confirmed.
    pub fn delivered(&self) -> u64 {
        self.metrics.influx.points_delivered.get()
    }
}

/// Writes the frames `{"seq":N}` for N in `from..from + count` to `to` (a
/// pty master), pausing 5 ms every 50 frames; returns the next N.
pub fn feed_seq(to: &mut impl std::io::Write, from: u64, count: u64) -> u64 {
    for seq in from..from + count {
        writeln!(to, r#"{{"seq":{seq}}}"#).expect("write frame");
        if seq % 50 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    from + count
}

/// Polls `condition` every `every` until it holds or `timeout` passes;
/// returns whether it held.
pub fn eventually_every(
    timeout: Duration,
    every: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// A value of sluice's `/metrics` (Prometheus text): the sample whose name
/// and labels are exactly `series` (e.g.
/// `sluice_sink_dropped_total{sink="mqtt",reason="outbox_overflow"}`); 0 when
/// absent (a counter never moved).
pub fn metric(admin_port: u16, series: &str) -> f64 {
    let (status, body) = http(admin_port, "GET", "/metrics", b"").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// `VmRSS` of process `pid` in KiB (from `/proc/PID/status`), if it runs.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Writes numbered frames `{"seq":N}` to a pty master from a thread of its
/// own at a steady rate, and records when each write completed. The master
/// is switched to non-blocking mode so that a full kernel buffer — sluice
/// not reading, i.e. backpressure reaching the serial port — is observed
/// (`EAGAIN`, counted in [`FeedLog::stalls`]) instead of just slowing down.
pub struct Feeder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    log: std::sync::Arc<std::sync::Mutex<FeedLog>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a [`Feeder`] wrote.
#[derive(Debug, Clone, Default)]
pub struct FeedLog {
    /// The first sequence number.
    pub first: u64,
    /// When the write of `first + i` completed (its last byte was accepted).
    pub written_at: Vec<Instant>,
    /// Times a write found the pty's buffer full (`EAGAIN`).
    pub stalls: u64,
}

impl FeedLog {
    /// The next sequence number (one past the last written).
    pub fn next(&self) -> u64 {
        self.first + self.written_at.len() as u64
    }
}

impl Feeder {
    /// Starts writing `{"seq":N}` for N = `from`, `from + 1`, … to `master`
    /// at `per_sec` frames per second (0: as fast as the pty accepts),
    /// stopping by itself after `limit` frames if given.
    pub fn start(master: &std::fs::File, from: u64, per_sec: u32, limit: Option<u64>) -> Feeder {
        Self::start_padded(master, from, per_sec, limit, 0)
    }

    /// [`start`](Self::start) with frames `{"seq":N,"pad":"xx…"}` of `pad`
    /// more bytes (an unknown key, which json-telemetry ignores).
    pub fn start_padded(
        master: &std::fs::File,
        from: u64,
        per_sec: u32,
        limit: Option<u64>,
        pad: usize,
    ) -> Feeder {
        use std::io::Write as _;
        use std::os::fd::AsRawFd as _;
        use std::sync::atomic::Ordering;
        let mut out = master.try_clone().expect("clone the pty master");
        let flags =
            nix::fcntl::fcntl(out.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).expect("F_GETFL");
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(out.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).expect("F_SETFL");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let log = std::sync::Arc::new(std::sync::Mutex::new(FeedLog {
            first: from,
            ..FeedLog::default()
        }));
        let (stop2, log2) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut seq = from;
            while !stop2.load(Ordering::SeqCst) && limit.is_none_or(|n| seq < from + n) {
                if per_sec > 0 {
                    let due =
                        start + Duration::from_secs_f64((seq - from) as f64 / f64::from(per_sec));
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                let frame = if pad == 0 {
                    format!("{{\"seq\":{seq}}}\n")
                } else {
                    format!("{{\"seq\":{seq},\"pad\":\"{}\"}}\n", "x".repeat(pad))
                };
                let mut rest = frame.as_bytes();
                while !rest.is_empty() {
                    match out.write(rest) {
                        Ok(n) => rest = &rest[n..],
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                            log2.lock().expect("not poisoned").stalls += 1;
                            if stop2.load(Ordering::SeqCst) && rest.len() == frame.len() {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        Err(err) => panic!("write to the pty: {err}"),
                    }
                }
                log2.lock()
                    .expect("not poisoned")
                    .written_at
                    .push(Instant::now());
                seq += 1;
            }
        });
        Feeder {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// What it wrote so far.
    pub fn log(&self) -> FeedLog {
        self.log.lock().expect("not poisoned").clone()
    }

    /// Waits until it wrote its `limit` (see [`start`](Self::start)) and
    /// returns the log.
    pub fn join(mut self) -> FeedLog {
        if let Some(thread) = self.thread.take() {
            thread.join().expect("feeder thread");
        }
        self.log()
    }

    /// Asks the feeder to start no new frame, without waiting for it. A
    /// frame already half written is still finished, which needs a reader:
    /// when sluice is blocked (sinks down, `when_full = "block"`), call this,
    /// bring the sinks back, then [`stop`](Self::stop) — stopping first
    /// would wait for a reader that waits for the sinks.
    pub fn request_stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops after the frame being written (a frame is never cut) and
    /// returns the log. A frame not started because the pty stayed full is
    /// not written. Waits for that frame to be accepted by the pty: see
    /// [`request_stop`](Self::request_stop) when nothing reads it.
    pub fn stop(mut self) -> FeedLog {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("feeder thread");
        }
        self.log()
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Samples a process's RSS from a thread every 100 ms; follows the process
/// it is pointed at ([`RssSampler::watch`]) across restarts.
pub struct RssSampler {
    pid: std::sync::Arc<std::sync::atomic::AtomicU32>,
    max_kib: std::sync::Arc<std::sync::atomic::AtomicU64>,
    samples: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling nothing (point it at a process with `watch`).
    pub fn start() -> RssSampler {
        use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
        let pid = std::sync::Arc::new(AtomicU32::new(0));
        let max_kib = std::sync::Arc::new(AtomicU64::new(0));
        let samples = std::sync::Arc::new(AtomicU64::new(0));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (p, m, n, s) = (pid.clone(), max_kib.clone(), samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let current = p.load(Ordering::SeqCst);
                if current != 0
                    && let Some(kib) = rss_kib(current)
                {
                    m.fetch_max(kib, Ordering::SeqCst);
                    n.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler {
            pid,
            max_kib,
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Samples `process` from now on.
    pub fn watch(&self, process: &SluiceProcess) {
        self.pid.store(
            process.pid().unwrap_or(0),
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// The highest RSS seen (KiB) and how many samples were taken.
    pub fn max_kib(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.max_kib.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `mosquitto_pub` of one QoS 1 message (plus `extra` arguments, e.g. `-r`).
pub fn mosquitto_pub(port: u16, topic: &str, payload: &str, extra: &[&str]) {
    let status = Command::new(program("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", payload])
        .args(extra)
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub {topic} failed");
}

/// The Python with pymodbus and pysparkplug: the venv `scripts/test.sh`
/// makes, or `SLUICE_TEST_PYTHON`.
fn test_python() -> PathBuf {
    let python = std::env::var_os("SLUICE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/test-venv/bin/python"));
    assert!(
        python.is_file(),
        "{} is missing: scripts/test.sh installs pymodbus and pysparkplug there (or set SLUICE_TEST_PYTHON)",
        python.display()
    );
    python
}

/// A Modbus TCP server of pymodbus (`tests/support/modbus_device.py`, in
/// the venv `scripts/test.sh` makes): the devices a Modbus pipeline polls.
/// Killed on drop.
pub struct ModbusDevice {
    /// Its port on 127.0.0.1 (TCP).
    pub port: u16,
    /// RTU: the serial line's other end, for sluice, and the process that
    /// links the two pseudo-terminals (socat, or the noisy line).
    pub bus: Option<(PathBuf, Child, tempfile::TempDir)>,
    child: Option<Child>,
}

impl ModbusDevice {
    /// Starts the devices over TCP on a free port.
    pub fn start_tcp() -> ModbusDevice {
        let mut device = ModbusDevice {
            port: free_port(),
            bus: None,
            child: None,
        };
        device.restart();
        device
    }

    /// Starts the devices as RTU slaves on one end of a pair of linked
    /// pseudo-terminals (socat); sluice opens the other, [`bus_path`]
    /// (Self::bus_path), as its serial port.
    pub fn start_rtu() -> ModbusDevice {
        Self::start_rtu_on(|bus, device| {
            let mut socat = kept_running("socat");
            socat
                .arg(format!("pty,raw,echo=0,link={}", bus.display()))
                .arg(format!("pty,raw,echo=0,link={}", device.display()));
            socat
        })
    }

    /// As [`start_rtu`](Self::start_rtu), on a noisy line
    /// (`tests/support/noisy_line.py`): every answer of the units in
    /// `garble`, and every second one of those in `flaky`, arrive with a
    /// damaged CRC.
    pub fn start_rtu_noisy(garble: &[u8], flaky: &[u8]) -> ModbusDevice {
        Self::start_rtu_on(|bus, device| {
            let mut line = kept_running(test_python());
            line.arg(repo_root().join("tests/support/noisy_line.py"))
                .arg(bus)
                .arg(device);
            for unit in garble {
                line.args(["--garble", &unit.to_string()]);
            }
            for unit in flaky {
                line.args(["--flaky", &unit.to_string()]);
            }
            line
        })
    }

    /// RTU on the pair of pseudo-terminals `line(bus, device)` makes.
    fn start_rtu_on(line: impl FnOnce(&Path, &Path) -> Command) -> ModbusDevice {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bus, device) = (dir.path().join("bus"), dir.path().join("device"));
        let linker = line(&bus, &device)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the serial line (scripts/test.sh installs socat)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(bus.exists() && device.exists()) {
            assert!(Instant::now() < deadline, "socat made no pty pair");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut modbus = ModbusDevice {
            port: 0,
            bus: Some((bus, linker, dir)),
            child: None,
        };
        modbus.restart();
        modbus
    }

    /// RTU: the serial port sluice reads.
    pub fn bus_path(&self) -> &Path {
        &self.bus.as_ref().expect("an RTU device").0
    }

    /// Starts it again on the same port (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        let mut command = kept_running(test_python());
        command.arg(repo_root().join("tests/support/modbus_device.py"));
        match &self.bus {
            None => command.args(["tcp", &self.port.to_string()]),
            Some((bus, _, _)) => command
                .arg("rtu")
                .arg(bus.with_file_name("device"))
                .arg("19200"),
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the Modbus device");
        self.child = Some(child);
        if self.bus.is_none() {
            assert!(
                wait_for_port(self.port, Duration::from_secs(20)),
                "the Modbus device did not listen on {}",
                self.port
            );
        }
    }

    /// SIGKILL: the connection drops, nothing answers until a restart.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ModbusDevice {
    fn drop(&mut self) {
        self.kill();
        if let Some((_, linker, _)) = self.bus.as_mut() {
            let _ = linker.kill();
            let _ = linker.wait();
        }
    }
}

/// A Sparkplug B host application (`tests/support/sparkplug_host.py`):
/// every message under `spBv1.0/<group>/` decoded by both pysparkplug and
/// Eclipse Tahu's `sparkplug-payload` (which `scripts/test.sh` installs), one
/// JSON object each; the script's docstring tells the format and the
/// commands. Killed on drop.
pub struct SparkplugHost {
    child: Child,
    stdin: std::process::ChildStdin,
    /// Message and error lines.
    messages: std::sync::mpsc::Receiver<serde_json::Value>,
    /// `ready` and `done` lines.
    answers: std::sync::mpsc::Receiver<serde_json::Value>,
    stderr: tempfile::NamedTempFile,
}

impl SparkplugHost {
    /// Connects to the broker on 127.0.0.1:`port`, subscribed to the group;
    /// `host_id` gives it a STATE topic (and Will). Returns once subscribed.
    pub fn start(port: u16, group: &str, host_id: Option<&str>) -> SparkplugHost {
        Self::launch(port, group, host_id, None)
    }

    /// Like [`start`](Self::start) with a persistent session as client
    /// `session`: the broker keeps what comes while the host is away (QoS 0
    /// too with mosquitto's `queue_qos0_messages true`).
    pub fn start_persistent(port: u16, group: &str, session: &str) -> SparkplugHost {
        Self::launch(port, group, None, Some(session))
    }

    fn launch(
        port: u16,
        group: &str,
        host_id: Option<&str>,
        session: Option<&str>,
    ) -> SparkplugHost {
        use std::io::BufRead as _;
        let stderr = tempfile::NamedTempFile::new().expect("temp file");
        let mut command = kept_running(test_python());
        command
            .arg(repo_root().join("tests/support/sparkplug_host.py"))
            .args(["--port", &port.to_string(), "--group", group]);
        if let Some(host_id) = host_id {
            command.args(["--host-id", host_id]);
        }
        if let Some(session) = session {
            command.args(["--session", session]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("reopen temp file"))
            .spawn()
            .expect("spawn sparkplug_host.py");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (message_tx, messages) = std::sync::mpsc::channel();
        let (answer_tx, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(
                    |_| serde_json::json!({ "error": format!("not JSON: {line}") }),
                );
                let answer = value.get("ready").is_some() || value.get("done").is_some();
                let sent = if answer {
                    answer_tx.send(value)
                } else {
                    message_tx.send(value)
                };
                if sent.is_err() {
                    break;
                }
            }
        });
        let host = SparkplugHost {
            child,
            stdin,
            messages,
            answers,
            stderr,
        };
        match host.answers.recv_timeout(Duration::from_secs(30)) {
            Ok(ready) if ready["ready"] == true => host,
            other => panic!(
                "sparkplug_host.py did not get ready ({other:?}): {}",
                host.stderr()
            ),
        }
    }

    /// Sends one command line (`online`, `rebirth edge1`, `ncmd ...`) and
    /// waits until it is published; panics if the script refuses it.
    pub fn command(&mut self, line: &str) {
        use std::io::Write as _;
        if let Err(error) = writeln!(self.stdin, "{line}").and_then(|()| self.stdin.flush()) {
            panic!(
                "sparkplug host: cannot send {line:?}: {error}; {}",
                self.stderr()
            );
        }
        let word = line.split_whitespace().next().unwrap_or_default();
        match self.answers.recv_timeout(Duration::from_secs(20)) {
            Ok(answer) if answer["done"] == word && answer.get("error").is_none() => {}
            other => panic!(
                "sparkplug host: {line:?} answered {other:?}; {}",
                self.stderr()
            ),
        }
    }

    /// The next decoded message, or error line (`{"topic", "error"}`), to
    /// arrive within `timeout`.
    pub fn next_message(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        self.messages.recv_timeout(timeout).ok()
    }

    /// What the script wrote to stderr (for assertion messages).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }
}

impl Drop for SparkplugHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    #[test]
    fn a_kept_running_process_ends_with_the_thread_that_spawned_it() {
        // A test thread ending (here a helper thread, so that this test
        // goes on) stands for the test binary dying.
        let mut child = std::thread::spawn(|| {
            kept_running("sleep")
                .arg("30")
                .spawn()
                .expect("spawn sleep")
        })
        .join()
        .expect("the spawning thread");
        let ended = eventually_every(Duration::from_secs(10), Duration::from_millis(20), || {
            child.try_wait().expect("try_wait").is_some()
        });
        if !ended {
            let _ = child.kill();
        }
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(nix::libc::SIGTERM), "{status:?}");
    }
}
