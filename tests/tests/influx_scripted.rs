//! The v2 and v3 write APIs and the failure matrix, against a small scripted
//! HTTP server inside the test.
//!
//! Why scripted: no InfluxDB 2 or 3 server is installable on this machine
//! (Debian ships InfluxDB 1.6, tested for real in `influx_v1.rs`, and
//! VictoriaMetrics, which accepts v2 writes but ignores tokens and never
//! answers 401/413/429 or partial writes; see `influx_v2_victoria.rs`). The
//! server answers with the status codes and JSON bodies InfluxDB 2/3 document
//! and checks the shape of every request: method, path, query, headers and
//! the gzip'd body.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice::model::{FieldValue, Point};
use sluice_tests::InfluxWriter;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
    /// The body, gunzipped when `Content-Encoding: gzip`.
    text: String,
    at: Instant,
}

impl Request {
    fn lines(&self) -> Vec<&str> {
        self.text.lines().collect()
    }
}

struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status,
        headers: vec![],
        body: body.into(),
    }
}

type Script = Box<dyn FnMut(&Request, usize) -> Answer + Send>;

/// A scripted HTTP/1.1 server on its own thread; killed on drop.
struct Scripted {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scripted {
    fn start(script: impl FnMut(&Request, usize) -> Answer + Send + 'static) -> Scripted {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<Script>> = Arc::new(Mutex::new(Box::new(script)));
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let seen = requests.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            tokio::spawn(serve(stream, seen.clone(), script.clone()));
                        }
                        _ = &mut stopped => return,
                    }
                }
            });
        });
        Scripted {
            port,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<Request>>>,
    script: Arc<Mutex<Script>>,
) {
    let mut buffer = Vec::new();
    loop {
        // Head.
        let head_end = loop {
            if let Some(n) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break n;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let target = request_line.next().unwrap_or_default().to_owned();
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        buffer.drain(..head_end + 4);
        while buffer.len() < length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buffer.drain(..length).collect();
        let text = if headers.get("content-encoding").map(String::as_str) == Some("gzip") {
            let mut out = String::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_string(&mut out)
                .expect("the body is valid gzip");
            out
        } else {
            String::from_utf8(body).expect("the body is UTF-8")
        };
        let request = Request {
            method,
            target,
            headers,
            text,
            at: Instant::now(),
        };
        let n = {
            let mut seen = seen.lock().expect("lock");
            seen.push(request.clone());
            seen.len()
        };
        let reply = (script.lock().expect("lock"))(&request, n);
        let mut out = format!(
            "HTTP/1.1 {} Scripted\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
            reply.status,
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&reply.body);
        if stream.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn points(n: i64) -> Vec<Point> {
    (0..n)
        .map(|i| Point {
            measurement: "env".into(),
            tags: vec![("node".into(), "n1".into())],
            fields: vec![("v".into(), FieldValue::Int(i))],
            timestamp_ns: Some(1_000 + i),
        })
        .collect()
}

fn line(i: i64) -> String {
    format!("env,node=n1 v={i}i {}", 1_000 + i)
}

const FAST: &str =
    "flush_interval_ms = 50\nretry_min_ms = 20\nretry_max_ms = 200\nauth_retry_ms = 200\n";

fn token_file(dir: &tempfile::TempDir, token: &str) -> String {
    let path = dir.path().join("token");
    std::fs::write(&path, token).expect("write token");
    path.display().to_string()
}

/// Every line accepted exactly once across the 2xx requests.
fn accepted_lines(requests: &[Request], ok: impl Fn(usize) -> bool) -> Vec<String> {
    let mut lines: Vec<String> = requests
        .iter()
        .enumerate()
        .filter(|(i, _)| ok(*i + 1))
        .flat_map(|(_, r)| r.lines().into_iter().map(str::to_owned))
        .collect();
    lines.sort();
    lines
}

fn all_lines(n: i64) -> Vec<String> {
    let mut lines: Vec<String> = (0..n).map(line).collect();
    lines.sort();
    lines
}

#[test]
fn v2_request_shape_and_a_bad_token_fixed_on_the_server() {
    let fixed = Arc::new(Mutex::new(false));
    let is_fixed = fixed.clone();
    let server = Scripted::start(move |_, _| {
        if *is_fixed.lock().expect("lock") {
            answer(204, "")
        } else {
            answer(
                401,
                r#"{"code":"unauthorized","message":"unauthorized access"}"#,
            )
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "tok-V2-secret";
    let mut writer = InfluxWriter::start(&format!(
        "url = \"{}/base\"\napi = \"v2\"\norg = \"acme corp\"\nbucket = \"plant/1\"\n\
         token_file = \"{}\"\n{FAST}",
        server.url(),
        token_file(&dir, token)
    ));
    writer.send(points(50));
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.requests().len() < 3 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(writer.delivered(), 0, "nothing counts as delivered on 401");
    *fixed.lock().expect("lock") = true;
    let deadline = Instant::now() + Duration::from_secs(10);
    while writer.delivered() < 50 {
        assert!(Instant::now() < deadline, "not delivered after the fix");
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.finish(Duration::from_secs(5));
    assert!(writer.dead_letters().is_empty());
    assert!(writer.metrics.influx.requests_count("unauthorized") >= 3);

    let requests = server.requests();
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.target,
            "/base/api/v2/write?org=acme+corp&bucket=plant%2F1&precision=ns"
        );
        assert_eq!(r.headers["authorization"], format!("Token {token}"));
        assert_eq!(r.headers["content-encoding"], "gzip");
        assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(
            r.lines(),
            (0..50).map(line).collect::<Vec<_>>(),
            "one batch, in order"
        );
    }
    assert!(!writer.metrics.encode().contains(token));
}

#[test]
fn v3_request_shape_forbidden_then_partial_write() {
    let server = Scripted::start(|request, n| {
        if n == 1 {
            return answer(403, r#"{"error":"forbidden"}"#);
        }
        let bad: Vec<serde_json::Value> = request
            .lines()
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains(" v=3i ") || l.contains(" v=7i "))
            .map(|(i, l)| {
                serde_json::json!({
                    "original_line": l,
                    "line_number": i + 1,
                    "error_message": format!("invalid column type for line {}", i + 1),
                })
            })
            .collect();
        if bad.is_empty() {
            answer(204, "")
        } else {
            answer(
                400,
                &serde_json::json!({"error": "partial write of line protocol occurred", "data": bad})
                    .to_string(),
            )
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = InfluxWriter::start(&format!(
        "url = \"{}\"\napi = \"v3\"\ndatabase = \"plant\"\nprecision = \"us\"\ngzip = false\n\
         token_file = \"{}\"\n{FAST}",
        server.url(),
        token_file(&dir, "tok-v3")
    ));
    writer.send(points(10));
    writer.finish(Duration::from_secs(10));

    let requests = server.requests();
    assert_eq!(
        requests.len(),
        2,
        "403, then one partial write; nothing re-sent"
    );
    for r in &requests {
        assert_eq!(r.target, "/api/v3/write_lp?db=plant&precision=microsecond");
        assert_eq!(r.headers["authorization"], "Bearer tok-v3");
        assert!(!r.headers.contains_key("content-encoding"), "gzip = false");
        // precision = "us": 1_000 + i ns is 1 µs.
        assert_eq!(r.lines()[4], "env,node=n1 v=4i 1");
    }
    assert_eq!(writer.delivered(), 8);
    let letters = writer.dead_letters();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["line"], "env,node=n1 v=3i 1");
    assert_eq!(letters[0]["message"], "invalid column type for line 4");
    assert_eq!(letters[1]["line"], "env,node=n1 v=7i 1");
    assert_eq!(writer.dropped("server_rejected"), 2);
}

#[test]
fn retry_after_on_429_and_503_is_honoured_and_nothing_is_lost() {
    let server = Scripted::start(|_, n| match n {
        1 => Answer {
            status: 429,
            headers: vec![("Retry-After", "2".into())],
            body: r#"{"code":"too many requests","message":"slow down"}"#.into(),
        },
        2 => Answer {
            status: 503,
            headers: vec![("Retry-After", "1".into())],
            body: String::new(),
        },
        3 => answer(500, r#"{"code":"internal error","message":"boom"}"#),
        _ => answer(204, ""),
    });
    let mut writer = InfluxWriter::start(&format!(
        "url = \"{}\"\ndatabase = \"d\"\n{FAST}",
        server.url()
    ));
    writer.send(points(30));
    writer.finish(Duration::from_secs(20));
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    assert!(requests.iter().all(|r| r.lines() == requests[0].lines()));
    // Lower bounds only: the server asked for 2 s and 1 s.
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(1900));
    assert!(requests[2].at - requests[1].at >= Duration::from_millis(900));
    assert_eq!(writer.delivered(), 30);
    assert_eq!(writer.metrics.influx.requests_count("retry"), 3);
}

#[test]
fn too_large_splits_until_every_line_is_accepted_once() {
    let server = Scripted::start(|request, _| {
        if request.lines().len() > 16 {
            answer(
                413,
                r#"{"code":"request too large","message":"body too large"}"#,
            )
        } else {
            answer(204, "")
        }
    });
    let mut writer = InfluxWriter::start(&format!(
        "url = \"{}\"\ndatabase = \"d\"\nbatch_lines = 100\n{FAST}",
        server.url()
    ));
    writer.send(points(100));
    writer.finish(Duration::from_secs(10));
    let requests = server.requests();
    let accepted = accepted_lines(&requests, |i| requests[i - 1].lines().len() <= 16);
    assert_eq!(accepted, all_lines(100));
    assert_eq!(writer.delivered(), 100);
    assert!(writer.dead_letters().is_empty());
}

/// InfluxDB 2.x quotes the line it cannot parse; the writer dead-letters that
/// line with the message and sends the rest again.
#[test]
fn v2_bad_line_named_by_the_server() {
    let server = Scripted::start(|request, _| {
        match request.lines().iter().find(|l| l.contains(" v=13i ")) {
            Some(bad) => answer(
                400,
                &serde_json::json!({
                    "code": "invalid",
                    "message": format!("unable to parse '{bad}': value out of range"),
                })
                .to_string(),
            ),
            None => answer(204, ""),
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = InfluxWriter::start(&format!(
        "url = \"{}\"\napi = \"v2\"\norg = \"o\"\nbucket = \"b\"\ntoken_file = \"{}\"\n{FAST}",
        server.url(),
        token_file(&dir, "t")
    ));
    writer.send(points(40));
    writer.finish(Duration::from_secs(10));
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].lines().len(), 39);
    let letters = writer.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["line"], line(13));
    assert_eq!(
        letters[0]["message"],
        format!("unable to parse '{}': value out of range", line(13))
    );
    assert_eq!(writer.delivered(), 39);
}
