//! The admin HTTP API of a real `sluice run`: a pseudo-terminal feeding
//! telemetry, the json-telemetry component, a real mosquitto, and HTTP
//! requests from an independent client (reqwest) to the port the host logged.
//!
//! Also the embedded broker as a production option: `sluice run` with
//! `[broker] embedded = true` and no `[mqtt]`, and mosquitto's own
//! subscriber receiving the telemetry from it.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use openmetrics_parser::OpenMetricsValue;
use sluice::pty::Pty;
use sluice_tests::{Mosquitto, SluiceProcess, free_port, program, wasm};

const TOKEN: &str = "correct-horse-battery-staple";
const MQTT_PASSWORD: &str = "mqtt-Pa55word-never-logged";
/// The MQTT outbox bound in the admin test: about 36 telemetry lines (half
/// of it, the readiness limit, is reached after 18 or so).
const OUTBOX_BYTES: u64 = 16_384;

/// One telemetry line of the simulated gateway (11 MQTT messages).
fn frame(seq: u32) -> String {
    format!(
        r#"{{"seq":{seq},"n1":{{"t":21.5,"h":40.5,"bat":3.7}},"n2":{{"t":-1.0,"h":50.2,"bat":3.65}},"sig":{{"rssi":-40,"snr":7.25}},"stats":{{"rx":{seq},"crc_err":0}}}}"#
    ) + "\n"
}

/// A one-pipeline config for `pty` and `json-telemetry`, plus `sections`.
fn write_config(dir: &Path, pty: &Pty, sections: &str) -> std::path::PathBuf {
    let quote = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let text = format!(
        "version = 1\n\
         data_dir = {data}\n\
         {sections}\n\
         [[pipeline]]\n\
         name = \"gateway\"\n\
         [pipeline.serial]\n\
         path = {pty}\n\
         [pipeline.transform]\n\
         module = {module}\n\
         [pipeline.transform.config]\n\
         prefix = \"iiot\"\n",
        data = quote(&dir.join("data")),
        pty = quote(&pty.path),
        module = quote(Path::new(wasm::JSON_TELEMETRY)),
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// The address in the log line `<what> listening on <scheme>://ADDR`.
fn logged_addr(sluice: &SluiceProcess, needle: &str) -> String {
    assert!(
        sluice.wait_for_log(needle, Duration::from_secs(30)),
        "no {needle:?} in the log:\n{}",
        sluice.log()
    );
    let log = sluice.log();
    let start = log.find(needle).map(|i| i + needle.len()).unwrap_or(0);
    log[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, '\u{1b}' | '"'))
        .collect()
}

/// A blocking facade over reqwest for these tests.
struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
}

impl Http {
    fn new(addr: &str) -> Http {
        Http {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            base: format!("http://{addr}"),
        }
    }

    /// Status, content type and body.
    fn send(&self, request: reqwest::RequestBuilder) -> (u16, String, String) {
        self.runtime.block_on(async {
            let response = request.send().await.expect("admin API answers");
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (status, content_type, response.text().await.expect("body"))
        })
    }

    fn get(&self, path: &str) -> (u16, String, String) {
        self.send(self.client.get(format!("{}{path}", self.base)))
    }

    fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        self.get_json_as(path, None)
    }

    /// `GET path`, with `token` as bearer token if there is one.
    fn get_json_as(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (status, _, body) = self.send(request);
        let value = serde_json::from_str(&body)
            .unwrap_or_else(|err| panic!("GET {path}: not JSON ({err}): {body}"));
        (status, value)
    }

    fn post(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut request = self.client.post(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (status, _, body) = self.send(request);
        let value = serde_json::from_str(&body)
            .unwrap_or_else(|err| panic!("POST {path}: not JSON ({err}): {body}"));
        (status, value)
    }
}

/// Polls `check` until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every sample of `/metrics`, parsed by `openmetrics-parser` (a strict
/// OpenMetrics parser: it refuses malformed lines, unknown types, samples
/// that do not fit their family and a missing `# EOF`). Keyed by the series
/// as an exporter writes it, labels in the family's order: counters as
/// `name_total{…}`, gauges as `name{…}`, histograms as `name_count{…}` and
/// `name_sum{…}`.
fn scrape(text: &str) -> BTreeMap<String, f64> {
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(text)
        .unwrap_or_else(|err| panic!("/metrics is not valid OpenMetrics ({err:?}):\n{text}"));
    let mut samples = BTreeMap::new();
    for (name, family) in &exposition.families {
        for sample in family.iter_samples() {
            let labels = sample.get_labelset().expect("bound to its family");
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let mut insert = |suffix: &str, value: f64| {
                let series = format!("{name}{suffix}{labels}");
                assert!(
                    samples.insert(series.clone(), value).is_none(),
                    "duplicate series {series}"
                );
            };
            match &sample.value {
                OpenMetricsValue::Counter(counter) => insert("_total", counter.value.as_f64()),
                OpenMetricsValue::Gauge(value) | OpenMetricsValue::Unknown(value) => {
                    insert("", value.as_f64())
                }
                OpenMetricsValue::Histogram(histogram) => {
                    let count = histogram.count.expect("histogram _count");
                    insert("_count", count as f64);
                    insert("_sum", histogram.sum.expect("histogram _sum").as_f64());
                    let last = histogram.buckets.last().expect("buckets");
                    assert!(last.upper_bound.is_infinite(), "{name}: no +Inf bucket");
                    assert_eq!(last.count.as_f64(), count as f64, "{name}: +Inf != count");
                }
                other => panic!("{name}: unexpected metric type {other:?}"),
            }
        }
    }
    samples
}

#[test]
fn admin_api_of_a_running_host() {
    // A broker that checks the password sluice reads from its environment.
    let auth = tempfile::tempdir().expect("tempdir");
    let passwd = auth.path().join("passwd");
    let status = Command::new(program("mosquitto_passwd"))
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["gateway", MQTT_PASSWORD])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    let mut broker = Mosquitto::start_with(
        free_port(),
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            passwd.display()
        ),
    );
    let mut pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &pty,
        &format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nclient_id = \"sluice-admin-test\"\n\
             username = \"gateway\"\npassword_env = \"SLUICE_TEST_MQTT_PASSWORD\"\n\
             reconnect_max_ms = 500\nstats_interval_secs = 0\n\
             [mqtt.outbox]\nmax_bytes = {OUTBOX_BYTES}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"SLUICE_TEST_ADMIN_TOKEN\"\n\
             ready_outbox_fraction = 0.5\n",
            broker.port
        ),
    );
    // Debug logging everywhere (rumqttc, hyper, sluice), JSON lines: where
    // a credential would show if anything printed it.
    let mut sluice = SluiceProcess::spawn(
        &["run", "--config", config.to_str().expect("utf-8 path")],
        &[
            ("SLUICE_TEST_ADMIN_TOKEN", TOKEN.to_owned()),
            ("SLUICE_TEST_MQTT_PASSWORD", MQTT_PASSWORD.to_owned()),
            ("SLUICE_LOG", "debug".to_owned()),
            ("SLUICE_LOG_FORMAT", "json".to_owned()),
        ],
    );
    let addr = logged_addr(&sluice, "admin API listening on http://");
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    assert!(
        !sluice.log().contains(TOKEN),
        "the token must never be logged"
    );
    let http = Http::new(&addr);

    // Liveness.
    let (status, health) = http.get_json("/health");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));

    // Ready once MQTT is connected; the port is open.
    assert!(
        eventually(Duration::from_secs(20), || http.get_json("/ready").0 == 200),
        "never ready: {}\n{}",
        http.get_json("/ready").1,
        sluice.log()
    );
    let (_, ready) = http.get_json("/ready");
    assert_eq!(ready["mqtt"]["connected"], true, "{ready}");
    assert_eq!(ready["influx"]["configured"], false, "{ready}");
    assert_eq!(ready["pipelines"][0]["name"], "gateway", "{ready}");
    assert!(
        eventually(Duration::from_secs(10), || {
            http.get_json("/ready").1["pipelines"][0]["port_open"] == true
        }),
        "{}",
        sluice.log()
    );

    // /metrics: OpenMetrics, and the counters follow what the test sends.
    let frames_series = "sluice_frames_received_total{pipeline=\"gateway\"}";
    let metrics = || {
        let (status, content_type, body) = http.get("/metrics");
        assert_eq!(status, 200);
        assert_eq!(
            content_type,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        scrape(&body)
    };
    let before = metrics();
    assert_eq!(before.get(frames_series).copied().unwrap_or(0.0), 0.0);
    for seq in 1..=5 {
        pty.master
            .write_all(frame(seq).as_bytes())
            .expect("write frame");
    }
    assert!(
        eventually(Duration::from_secs(20), || {
            let m = metrics();
            m.get(frames_series) == Some(&5.0)
                && m.get("sluice_mqtt_delivered_total") == Some(&55.0)
                // One delivery-latency observation per confirmed message.
                && m.get("sluice_end_to_end_seconds_count{sink=\"mqtt\"}") == Some(&55.0)
        }),
        "{:?}\n{}",
        metrics(),
        sluice.log()
    );
    for seq in 6..=8 {
        pty.master
            .write_all(frame(seq).as_bytes())
            .expect("write frame");
    }
    // A frame is counted when the port reads it, its messages when the
    // worker has run the transform: wait for all three.
    assert!(
        eventually(Duration::from_secs(20), || {
            let m = metrics();
            m.get(frames_series) == Some(&8.0)
                && m.get("sluice_messages_emitted_total{pipeline=\"gateway\"}") == Some(&88.0)
                && m.get("sluice_transform_call_seconds_count{pipeline=\"gateway\"}") == Some(&8.0)
        }),
        "{:?}",
        metrics()
    );
    assert_eq!(metrics().get("sluice_mqtt_connected"), Some(&1.0));

    // /transforms: module, hash, counters.
    let (status, transforms) = http.get_json("/transforms");
    assert_eq!(status, 200);
    let entry = &transforms["transforms"][0];
    assert_eq!(entry["pipeline"], "gateway", "{transforms}");
    assert!(
        entry["module"]
            .as_str()
            .is_some_and(|m| m.ends_with("json_telemetry.wasm")),
        "{transforms}"
    );
    assert!(
        entry["sha256"]
            .as_str()
            .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit())),
        "{transforms}"
    );
    assert_eq!(entry["frames_received"], 8, "{transforms}");

    // Config values only for the operator (a config can hold device keys):
    // without the token, or with a wrong one, the keys with the values
    // redacted; with it, the values.
    for (token, prefix) in [
        (None, "<redacted>"),
        (Some("correct-horse-battery-stapl"), "<redacted>"),
        (Some(TOKEN), "iiot"),
    ] {
        let (status, listing) = http.get_json_as("/transforms", token);
        assert_eq!(status, 200, "{listing}");
        let entry = &listing["transforms"][0];
        assert_eq!(
            entry["active"]["config"],
            serde_json::json!({ "prefix": prefix }),
            "{listing}"
        );
        assert_eq!(entry["history"][0]["config"], entry["active"]["config"]);
        assert_eq!(listing.to_string().contains("iiot"), prefix == "iiot");
    }

    // Mutating endpoints: 401 without or with a wrong token; the right one
    // passes the auth layer (and there is no earlier version to return to).
    let rollback = "/transforms/gateway/rollback";
    let (status, body) = http.post(rollback, None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "missing bearer token");
    let (status, body) = http.post(rollback, Some("correct-horse-battery-stapl"));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid bearer token");
    let (status, body) = http.post(rollback, Some(TOKEN));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["outcome"], "nothing_to_roll_back", "{body}");
    let (_, transforms_after) = http.get_json("/transforms");
    assert_eq!(transforms_after["transforms"], transforms["transforms"]);

    // The broker goes away: not ready, with the reason.
    broker.stop();
    assert!(
        eventually(Duration::from_secs(20), || http.get_json("/ready").0 == 503),
        "still ready without a broker: {}",
        http.get_json("/ready").1
    );
    let (_, ready) = http.get_json("/ready");
    assert_eq!(ready["mqtt"]["connected"], false, "{ready}");
    let reasons = |ready: &serde_json::Value, prefix: &str| {
        ready["reasons"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r.as_str().is_some_and(|r| r.starts_with(prefix)))
        })
    };
    assert!(reasons(&ready, "mqtt: not connected"), "{ready}");
    assert!(!reasons(&ready, "mqtt: outbox"), "{ready}");
    assert_eq!(
        ready["mqtt"]["outbox"]["max_bytes"], OUTBOX_BYTES,
        "{ready}"
    );
    assert_eq!(
        ready["mqtt"]["outbox"]["ready_limit_bytes"],
        OUTBOX_BYTES / 2,
        "{ready}"
    );

    // Meanwhile the line keeps talking: the messages fill the outbox on disk
    // until it holds more than half its bound, and /ready says so.
    let mut sent = 8;
    while !reasons(&http.get_json("/ready").1, "mqtt: outbox") {
        assert!(
            sent < 60,
            "outbox never over half full: {}",
            http.get_json("/ready").1
        );
        sent += 1;
        pty.master
            .write_all(frame(sent).as_bytes())
            .expect("write frame");
        eventually(Duration::from_secs(10), || {
            metrics().get(frames_series) == Some(&f64::from(sent))
        });
    }
    let (status, ready) = http.get_json("/ready");
    assert_eq!(status, 503, "{ready}");
    let outbox = &ready["mqtt"]["outbox"];
    let depth = outbox["depth_bytes"].as_u64().expect("depth_bytes");
    assert!(depth > OUTBOX_BYTES / 2 && depth <= OUTBOX_BYTES, "{ready}");
    assert_eq!(
        metrics().get("sluice_outbox_bytes{sink=\"mqtt\"}"),
        Some(&(depth as f64)),
        "the gauge and /ready agree"
    );

    // …and ready again when the broker is back and the outbox has drained.
    broker.restart();
    assert!(
        eventually(Duration::from_secs(30), || http.get_json("/ready").0 == 200),
        "not ready after the broker came back: {}",
        http.get_json("/ready").1
    );
    let messages = f64::from(sent) * 11.0;
    assert!(
        eventually(Duration::from_secs(20), || {
            let m = metrics();
            m.get(frames_series) == Some(&f64::from(sent))
                && m.get("sluice_messages_emitted_total{pipeline=\"gateway\"}") == Some(&messages)
                && m.get("sluice_mqtt_delivered_total") == Some(&messages)
        }),
        "{:?}",
        metrics()
    );
    // What waited in the outbox during the outage shows in the latency.
    let m = metrics();
    assert_eq!(
        m.get("sluice_end_to_end_seconds_count{sink=\"mqtt\"}"),
        Some(&messages)
    );
    let sum = m
        .get("sluice_end_to_end_seconds_sum{sink=\"mqtt\"}")
        .copied()
        .unwrap_or(0.0);
    assert!(sum > 0.5, "latency sum {sum} s after an outage");

    assert!(
        sluice.stop(),
        "sluice should exit cleanly on SIGTERM:\n{}",
        sluice.log()
    );
    let log = sluice.log();
    assert!(log.contains("MQTT connected"), "{log}");
    for secret in [TOKEN, MQTT_PASSWORD] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[test]
fn mutating_endpoints_refuse_without_a_configured_token() {
    let mut pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &pty, "[admin]\nlisten = \"127.0.0.1:0\"\n");
    let mut sluice = SluiceProcess::spawn(
        &["run", "--config", config.to_str().expect("utf-8 path")],
        &[],
    );
    let http = Http::new(&logged_addr(&sluice, "admin API listening on http://"));
    let (status, body) = http.post("/transforms/gateway/rollback", Some("anything"));
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "admin token not configured");
    // No sink configured: nothing to wait for, so ready at once.
    let (status, ready) = http.get_json("/ready");
    assert_eq!(status, 200, "{ready}");
    pty.master.write_all(frame(1).as_bytes()).expect("write");
    assert!(sluice.stop(), "{}", sluice.log());
}

/// An HTTP/1.1 request written by hand, so that the test decides when (and
/// whether) its body is sent.
struct RawRequest {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

/// One response as read off a [`RawRequest`]'s connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Header names lower-case.
    headers: BTreeMap<String, String>,
}

impl RawRequest {
    /// Connects and writes the head of `PUT path` with `Content-Length:
    /// length` and `headers`; none of the body.
    fn put(addr: &str, path: &str, length: u64, headers: &[&str]) -> RawRequest {
        let mut stream = TcpStream::connect(addr).expect("connect to the admin API");
        // A guard against a host that never answers; no assertion on time.
        for timeout in [TcpStream::set_read_timeout, TcpStream::set_write_timeout] {
            timeout(&stream, Some(Duration::from_secs(30))).expect("socket timeout");
        }
        let mut head = format!(
            "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/wasm\r\nContent-Length: {length}\r\n"
        );
        for header in headers {
            head.push_str(header);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("write the head");
        let reader = BufReader::new(stream.try_clone().expect("clone the stream"));
        RawRequest { stream, reader }
    }

    /// Reads the next response's status line and headers.
    fn read_head(&mut self) -> RawResponse {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("a status line (no answer?)");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {line:?}"));
        let mut headers = BTreeMap::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("a header line");
            let Some((name, value)) = line.trim_end().split_once(':') else {
                break;
            };
            headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
        }
        RawResponse { status, headers }
    }

    /// Reads the body of `response` (it has a `Content-Length`) as JSON.
    fn read_json(&mut self, response: &RawResponse) -> serde_json::Value {
        let length: usize = response.headers["content-length"]
            .parse()
            .expect("content-length");
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("the body");
        serde_json::from_slice(&body).expect("a JSON body")
    }

    /// Writes `count` zero bytes of body, as far as the connection takes
    /// them; returns how many it took.
    fn send_body(&mut self, count: u64) -> u64 {
        let chunk = vec![0u8; 64 << 10];
        let mut sent = 0;
        while sent < count {
            let n = chunk.len().min((count - sent) as usize);
            if self.stream.write_all(&chunk[..n]).is_err() {
                break;
            }
            sent += n as u64;
        }
        sent
    }
}

/// A host with the admin token set and no sinks; its admin address.
fn start_with_token(dir: &Path, pty: &Pty) -> (SluiceProcess, String) {
    let config = write_config(
        dir,
        pty,
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"SLUICE_TEST_ADMIN_TOKEN\"\n",
    );
    let sluice = SluiceProcess::spawn(
        &["run", "--config", config.to_str().expect("utf-8 path")],
        &[("SLUICE_TEST_ADMIN_TOKEN", TOKEN.to_owned())],
    );
    let addr = logged_addr(&sluice, "admin API listening on http://");
    (sluice, addr)
}

/// An unauthenticated upload is answered before the host reads its body,
/// so it costs the host no memory: a client that asks first
/// (`Expect: 100-continue`) gets the 401 instead of the go-ahead; one that
/// does not ask gets it before it has sent any of the body, and the host
/// takes none of it (the connection is closed: the 50 MB cannot be written).
#[test]
fn refused_uploads_are_answered_before_their_body() {
    const LENGTH: u64 = 50_000_000;
    let pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sluice, addr) = start_with_token(dir.path(), &pty);
    let path = "/transforms/gateway";

    let mut asking = RawRequest::put(&addr, path, LENGTH, &["Expect: 100-continue"]);
    let response = asking.read_head();
    assert_eq!(response.status, 401, "{response:?}");
    assert_eq!(response.headers["connection"], "close", "{response:?}");
    let body = asking.read_json(&response);
    assert_eq!(body["error"], "missing bearer token", "{body}");
    let mut rest = Vec::new();
    asking
        .reader
        .read_to_end(&mut rest)
        .expect("the host closes the connection");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));

    let mut plain = RawRequest::put(
        &addr,
        path,
        LENGTH,
        &["Authorization: Bearer correct-horse-battery-stapl"],
    );
    let response = plain.read_head();
    assert_eq!(response.status, 401, "{response:?}");
    assert_eq!(response.headers["connection"], "close", "{response:?}");
    let body = plain.read_json(&response);
    assert_eq!(body["error"], "invalid bearer token", "{body}");
    let sent = plain.send_body(LENGTH);
    assert!(sent < LENGTH, "the host took all {sent} bytes of the body");

    let http = Http::new(&addr);
    let (status, health) = http.get_json("/health");
    assert_eq!(status, 200, "{health}");
    assert!(sluice.stop(), "{}", sluice.log());
}

/// Authenticated uploads are held in memory until their deploy is done, so
/// only two are taken at once: with two in progress (the host said
/// `100 Continue` to both) a third is refused with 503 before its body is
/// read; once they are done, uploads are taken again.
#[test]
fn concurrent_uploads_are_bounded() {
    const LENGTH: u64 = 1 << 20;
    let pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sluice, addr) = start_with_token(dir.path(), &pty);
    let path = "/transforms/gateway";
    let authorization = format!("Authorization: Bearer {TOKEN}");
    let headers = [authorization.as_str(), "Expect: 100-continue"];

    let mut uploads: Vec<RawRequest> = (0..2)
        .map(|_| {
            let mut upload = RawRequest::put(&addr, path, LENGTH, &headers);
            let response = upload.read_head();
            assert_eq!(response.status, 100, "{response:?}");
            upload
        })
        .collect();

    let mut third = RawRequest::put(&addr, path, LENGTH, &headers);
    let response = third.read_head();
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(response.headers["retry-after"], "1", "{response:?}");
    let body = third.read_json(&response);
    assert_eq!(
        body["error"], "2 module uploads are already in progress; retry when one has finished",
        "{body}"
    );

    // The two finish (a MiB of zeros is no module) and free their places.
    for upload in &mut uploads {
        assert_eq!(upload.send_body(LENGTH), LENGTH);
        let response = upload.read_head();
        assert_eq!(response.status, 422, "{response:?}");
        let body = upload.read_json(&response);
        assert_eq!(body["outcome"], "invalid_module", "{body}");
    }
    let mut next = RawRequest::put(&addr, path, LENGTH, &headers);
    let response = next.read_head();
    assert_eq!(response.status, 100, "{response:?}");
    assert_eq!(next.send_body(LENGTH), LENGTH);
    let response = next.read_head();
    assert_eq!(response.status, 422, "{response:?}");
    assert!(sluice.stop(), "{}", sluice.log());
}

#[test]
fn embedded_broker_serves_local_subscribers() {
    let mut pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &pty,
        "[broker]\nembedded = true\nlisten = \"127.0.0.1:0\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut sluice = SluiceProcess::spawn(
        &["run", "--config", config.to_str().expect("utf-8 path")],
        &[],
    );
    let broker_addr = logged_addr(&sluice, "embedded MQTT broker listening on mqtt://");
    let port = broker_addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .expect("host:port");
    let http = Http::new(&logged_addr(&sluice, "admin API listening on http://"));
    assert!(
        eventually(Duration::from_secs(20), || http.get_json("/ready").0 == 200),
        "the sink never connected to the embedded broker: {}\n{}",
        http.get_json("/ready").1,
        sluice.log()
    );

    // mosquitto's own client, MQTT 3.1.1 (the embedded broker's protocol).
    let subscriber = sluice_tests::kept_running(program("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "iiot/#", "-v", "-q", "1", "-C", "22", "-W", "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mosquitto_sub");
    std::thread::sleep(Duration::from_millis(500));
    for seq in 1..=2 {
        pty.master.write_all(frame(seq).as_bytes()).expect("write");
    }
    let output = subscriber.wait_with_output().expect("mosquitto_sub");
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 22, "{text}\n{}", sluice.log());
    assert!(lines.contains(&"iiot/node1/temperature 21.5"), "{text}");
    assert!(lines.contains(&"iiot/stats/seq 2"), "{text}");

    // A late subscriber still gets the retained sensor values.
    let late = sluice_tests::kept_running(program("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "iiot/node2/#", "-v", "-C", "3", "-W", "10"])
        .output()
        .expect("mosquitto_sub");
    let late = String::from_utf8_lossy(&late.stdout);
    assert!(late.contains("iiot/node2/temperature -1.0"), "{late}");

    assert!(sluice.stop(), "{}", sluice.log());
}
