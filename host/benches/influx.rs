//! InfluxDB writer throughput.
//!
//! `cargo bench -p sluice --bench influx` (needs `influxd`, Debian's
//! `influxdb`; `scripts/test.sh` installs it).
//!
//! * **encoder**: points/s of line-protocol encoding, a typical gateway point
//!   and one that needs escaping;
//! * **into influxd 1.6**: points/s from `InfluxSink` (channel → encoder →
//!   5000-line gzip'd batches, 2 in flight) into a real local influxd, side
//!   by side in the same run with the **ceiling**: a minimal writer that
//!   POSTs the same batches pre-encoded and pre-compressed, also 2 in
//!   flight. Rounds alternate; medians are reported.
//!
//! A plain harness (no criterion), like `transform.rs`.

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::config::influx::{InfluxConfig, Precision, UnsignedMode};
use sluice::metrics::Metrics;
use sluice::model::{FieldValue, Point};
use sluice::sink::influx::InfluxSink;
use sluice::sink::influx::line_protocol::Encoder;

const POINTS: usize = 200_000;
const ROUNDS: usize = 5;
const BATCH: usize = 5000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn gateway_point(i: usize, t0: i64) -> Point {
    Point {
        measurement: "environment".into(),
        tags: vec![("node".into(), format!("node{}", i % 2 + 1).into())],
        fields: vec![
            (
                "temperature".into(),
                FieldValue::Float(20.0 + (i % 100) as f64 * 0.1),
            ),
            ("humidity".into(), FieldValue::Float(54.1 + (i % 7) as f64)),
            ("battery".into(), FieldValue::Float(3.71)),
        ],
        timestamp_ns: Some(t0 + i as i64 * 1000),
    }
}

fn escaped_point(i: usize) -> Point {
    Point {
        measurement: "plant floor,hall=A".into(),
        tags: vec![
            ("zone".into(), "north wing, bay=3".into()),
            ("line".into(), "L 7".into()),
            ("asset".into(), "pump ü-12".into()),
        ],
        fields: vec![
            (
                "status".into(),
                FieldValue::Text(format!("ok \"{i}\" \\ fine").into()),
            ),
            ("rpm".into(), FieldValue::Int(1450 + i as i64 % 10)),
            ("running".into(), FieldValue::Bool(true)),
            ("load".into(), FieldValue::Float(0.734_5)),
        ],
        timestamp_ns: Some(1_700_000_000_000_000_000 + i as i64),
    }
}

fn bench_encoder(name: &str, points: &[Point]) {
    let mut encoder = Encoder::new(Precision::Ns, UnsignedMode::Integer);
    let mut out = Vec::with_capacity(1 << 20);
    let mut rates = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        for p in points {
            if out.len() > (1 << 20) {
                out.clear();
            }
            encoder.encode(black_box(p), &mut out).expect("encodable");
        }
        rates.push(points.len() as f64 / start.elapsed().as_secs_f64());
    }
    let rate = median(rates);
    println!("| {name} | {:.2} | {:.0} |", rate / 1e6, 1e9 / rate);
}

struct Influxd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Influxd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn start_influxd() -> Influxd {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let program = [
        "/usr/bin/influxd",
        "/usr/sbin/influxd",
        "/usr/local/bin/influxd",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file())
    .expect("influxd is not installed (scripts/test.sh installs it)");
    let child = Command::new(program)
        .args(["run", "-config", "/dev/null"])
        .env("INFLUXDB_HTTP_BIND_ADDRESS", format!("127.0.0.1:{port}"))
        .env(
            "INFLUXDB_BIND_ADDRESS",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("INFLUXDB_META_DIR", dir.path().join("meta"))
        .env("INFLUXDB_DATA_DIR", dir.path().join("data"))
        .env("INFLUXDB_DATA_WAL_DIR", dir.path().join("wal"))
        .env("INFLUXDB_REPORTING_DISABLED", "true")
        .env("INFLUXDB_HTTP_LOG_ENABLED", "false")
        .env("INFLUXDB_DATA_QUERY_LOG_ENABLED", "false")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn influxd");
    let server = Influxd {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "influxd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

async fn query(client: &reqwest::Client, port: u16, q: &str) -> String {
    client
        .post(format!("http://127.0.0.1:{port}/query"))
        .query(&[("q", q), ("db", "bench")])
        .send()
        .await
        .expect("query")
        .text()
        .await
        .expect("query body")
}

async fn sluice_writer(port: u16, db: &str, points: Vec<Point>, gzip: bool) -> f64 {
    let config: InfluxConfig = toml::from_str(&format!(
        "url = \"http://127.0.0.1:{port}\"\ndatabase = \"{db}\"\nbatch_lines = {BATCH}\n\
         batch_bytes = 8388608\ngzip = {gzip}\nmax_batches_in_flight = 2\n"
    ))
    .expect("config");
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Arc::new(Metrics::new());
    let n = points.len() as u64;
    let start = Instant::now();
    let context =
        sluice::sink::SinkContext::in_memory(metrics.clone(), Some(dir.path().to_owned()));
    let (sink, tx) = InfluxSink::start(&config, context).expect("start");
    for p in points {
        assert!(tx.send(p).await, "send");
    }
    drop(tx);
    sink.finish().await;
    let elapsed = start.elapsed();
    assert_eq!(metrics.influx.points_delivered.get(), n, "all delivered");
    n as f64 / elapsed.as_secs_f64()
}

/// The ceiling: the same batches, encoded (and compressed) before the clock
/// starts, POSTed with 2 requests always in flight.
async fn minimal_writer(
    client: &reqwest::Client,
    port: u16,
    db: &str,
    bodies: &[bytes::Bytes],
    gzip: bool,
    n: usize,
) -> f64 {
    use futures_util::StreamExt as _;
    let url = format!("http://127.0.0.1:{port}/write?db={db}&precision=ns");
    let start = Instant::now();
    let mut responses = futures_util::stream::iter(bodies.iter().map(|body| {
        let mut request = client.post(&url).body(body.clone());
        if gzip {
            request = request.header("Content-Encoding", "gzip");
        }
        request.send()
    }))
    .buffer_unordered(2);
    while let Some(response) = responses.next().await {
        let status = response.expect("post").status();
        assert!(status.is_success(), "{status}");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn encode_batches(points: &[Point], gzip: bool) -> Vec<bytes::Bytes> {
    use std::io::Write as _;
    let mut encoder = Encoder::new(Precision::Ns, UnsignedMode::Integer);
    points
        .chunks(BATCH)
        .map(|chunk| {
            let mut raw = Vec::new();
            for p in chunk {
                encoder.encode(p, &mut raw).expect("encodable");
            }
            if !gzip {
                return bytes::Bytes::from(raw);
            }
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&raw).expect("gzip");
            bytes::Bytes::from(gz.finish().expect("gzip"))
        })
        .collect()
}

fn main() {
    println!("| encoder | M points/s | ns/point |");
    println!("|---|---:|---:|");
    let gateway: Vec<Point> = (0..100_000).map(|i| gateway_point(i, 0)).collect();
    bench_encoder("gateway point (1 tag, 3 floats)", &gateway);
    let escaped: Vec<Point> = (0..100_000).map(escaped_point).collect();
    bench_encoder("point needing escapes (3 tags, 4 mixed fields)", &escaped);

    let influxd = start_influxd();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let port = influxd.port;
    runtime.block_on(async move {
        let client = reqwest::Client::new();
        let kinds = ["ceiling-gzip", "sluice-gzip", "ceiling-plain", "sluice-plain"];
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
        for round in 0..ROUNDS {
            for (k, kind) in kinds.iter().enumerate() {
                // A database per run, so no run overwrites another's points.
                let db = format!("{}{round}", kind.replace('-', "_"));
                query(&client, port, &format!("CREATE DATABASE {db}")).await;
                let t0 = 1_700_000_000_000_000_000 + round as i64 * 1_000_000_000_000;
                let points: Vec<Point> = (0..POINTS).map(|i| gateway_point(i, t0)).collect();
                let gzip = kind.ends_with("gzip");
                let rate = if kind.starts_with("ceiling") {
                    let bodies = encode_batches(&points, gzip);
                    minimal_writer(&client, port, &db, &bodies, gzip, POINTS).await
                } else {
                    sluice_writer(port, &db, points, gzip).await
                };
                rates[k].push(rate);
                query(&client, port, &format!("DROP DATABASE {db}")).await;
            }
        }
        let medians: Vec<f64> = rates.into_iter().map(median).collect();
        println!();
        println!(
            "| into influxd 1.6 ({POINTS} points, {BATCH}-line batches, 2 in flight) | k points/s | vs. ceiling |"
        );
        println!("|---|---:|---:|");
        for (name, rate, ceiling) in [
            ("ceiling: pre-encoded, pre-gzip'd batches, minimal POST loop", medians[0], medians[0]),
            ("sluice InfluxSink, gzip = true (default)", medians[1], medians[0]),
            ("ceiling: pre-encoded plain batches, minimal POST loop", medians[2], medians[2]),
            ("sluice InfluxSink, gzip = false", medians[3], medians[2]),
        ] {
            println!("| {name} | {:.0} | {:.2} |", rate / 1e3, rate / ceiling);
        }
    });
    drop(influxd);
}
