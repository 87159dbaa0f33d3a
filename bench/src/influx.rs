//! A real InfluxDB 1.x (`influxd`, Debian's `influxdb` package) for the
//! InfluxDB phase, on ephemeral loopback ports with its own directories
//! under the scratch directory, as the integration tests run it
//! (tests/src/lib.rs). Each run writes to a database of its own, so the
//! points a system stored can be counted afterwards.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::util::{free_port, program, terminate};

/// The points json-telemetry writes per frame of the sample line: one
/// `environment` per node (2), `signal`, `gateway_stats`.
pub const POINTS_PER_FRAME: u64 = 4;

/// A running influxd; stopped on drop.
pub struct Influxd {
    /// HTTP API port (127.0.0.1).
    pub port: u16,
    /// Its log file.
    pub log: PathBuf,
    child: Child,
}

impl Influxd {
    /// Starts a server with its state under `dir` and waits for `/ping`.
    pub fn start(dir: &Path) -> Result<Influxd> {
        let (port, rpc_port) = (free_port()?, free_port()?);
        let state = dir.join("influxd");
        std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        let log = state.join("influxd.log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = crate::util::ends_with_the_bench(&mut Command::new(program("influxd")?))
            .args(["run", "-config", "/dev/null"])
            .env("INFLUXDB_HTTP_BIND_ADDRESS", format!("127.0.0.1:{port}"))
            .env("INFLUXDB_BIND_ADDRESS", format!("127.0.0.1:{rpc_port}"))
            .env("INFLUXDB_META_DIR", state.join("meta"))
            .env("INFLUXDB_DATA_DIR", state.join("data"))
            .env("INFLUXDB_DATA_WAL_DIR", state.join("wal"))
            .env("INFLUXDB_REPORTING_DISABLED", "true")
            .env("INFLUXDB_DATA_QUERY_LOG_ENABLED", "false")
            // A log line per write request would measure the log.
            .env("INFLUXDB_HTTP_LOG_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("spawning influxd")?;
        let mut server = Influxd { port, log, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(server.http("GET", "/ping"), Ok((204, _))) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        terminate(&mut server.child, Duration::from_secs(1));
        bail!(
            "influxd did not answer /ping on port {port} within 20 s; its log:\n{}",
            crate::util::tail(&server.log, 20)
        )
    }

    /// `CREATE DATABASE name`.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.query("", &format!("CREATE DATABASE \"{name}\""))
            .map(drop)
    }

    /// How many of json-telemetry's points database `db` holds: every
    /// `environment.temperature`, `signal.rssi` and `gateway_stats.seq`.
    pub fn count_points(&self, db: &str) -> Result<u64> {
        let answer = self.query(
            db,
            "SELECT count(temperature) FROM environment; \
             SELECT count(rssi) FROM signal; SELECT count(seq) FROM gateway_stats",
        )?;
        let mut total = 0;
        for result in answer["results"].as_array().into_iter().flatten() {
            if let Some(error) = result.get("error") {
                bail!("counting points in {db}: {error}");
            }
            // No series at all (nothing written yet) is zero.
            for series in result["series"].as_array().into_iter().flatten() {
                total += series["values"][0][1].as_u64().unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Runs an InfluxQL statement (`POST /query`).
    fn query(&self, db: &str, q: &str) -> Result<serde_json::Value> {
        let url = reqwest::Url::parse_with_params("http://127.0.0.1/query", [("db", db), ("q", q)])
            .context("building the query URL")?;
        let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
        let (status, body) = self.http("POST", &path)?;
        if status != 200 {
            bail!("influxd answered {status} to {q:?}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("influxd's answer to {q:?}: {body}"))
    }

    /// One HTTP/1.0 request (so the answer is not chunked): status and body.
    fn http(&self, method: &str, path: &str) -> Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let status = answer
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
}

impl Drop for Influxd {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10));
    }
}
