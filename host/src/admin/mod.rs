//! The admin HTTP API (axum, HTTP/1, loopback by default): how an operator,
//! a Prometheus server or a container healthcheck sees a running host.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /health` | liveness: always 200 while the process serves, `{status, version, uptime_secs}` |
//! | `GET /ready` | 200 when the sinks can take data, else 503; JSON details either way (see [`readiness`]) |
//! | `GET /metrics` | [`Metrics::encode`] (prometheus-client's OpenMetrics text) |
//! | `GET /transforms` | each pipeline's transform: active version, history, per-version frames, failures by reason, mean call time, canary and quarantine state; config values only with the bearer token (a config can hold device keys), `"<redacted>"` otherwise |
//! | `PUT /transforms/{name}` | bearer token required: deploy a module (the body), see [`deploy`]; at most [`MAX_CONCURRENT_UPLOADS`] at once, 503 beyond |
//! | `POST /transforms/{name}/rollback` | bearer token required: back to the previous version |
//!
//! Mutating endpoints go behind [`auth::protect`]: without a configured
//! token they answer 403, without the right bearer token 401, before any of
//! the body is read, and the handler never runs (so nothing changes). An
//! authenticated deploy body is held in memory until the deploy is done, so
//! only [`MAX_CONCURRENT_UPLOADS`] are taken at once, each up to the body
//! limit (`hotswap.max_module_bytes` as base64 plus 1 MiB).
//!
//! Besides deploys and rollbacks, which go through [`crate::hotswap`], the
//! API only reads: metrics (atomics), gauges the sinks maintain, and a weak
//! handle on the InfluxDB writer's queue (weak, so the API never keeps the
//! writer alive at shutdown). It never holds a sink.

pub mod auth;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine as _;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

pub use auth::{TokenCheck, protect, require_token};

use crate::hotswap::{DeployError, DeployRequest, DeploySource, Hotswap};
use crate::metrics::Metrics;
use crate::model::Point;
use crate::sink::durable::DurableQueue;

/// The content type of `GET /metrics` (prometheus-client writes OpenMetrics).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The InfluxDB writer's queue counts as backed up from this fill ratio.
const INFLUX_QUEUE_NOT_READY: f64 = 0.9;
/// How long shutdown waits for open admin requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Deploy bodies received and held at once; one more is answered 503
/// before its body is read.
pub const MAX_CONCURRENT_UPLOADS: usize = 2;

/// One pipeline's transform, as `GET /transforms` lists it.
#[derive(Debug, Clone)]
pub struct TransformInfo {
    /// Pipeline name.
    pub pipeline: String,
    /// The component file.
    pub module: PathBuf,
    /// SHA-256 of the component (hex).
    pub hash: String,
}

/// What the admin API reads; filled in by `app::run_with`.
pub struct AdminState {
    /// The host's metrics.
    pub metrics: Arc<Metrics>,
    /// Whether an MQTT sink runs (its state is the `mqtt_connected` and
    /// `mqtt_backlog` gauges, which the sink maintains).
    pub mqtt_configured: bool,
    /// The InfluxDB writer's input queue, when `[influx]` is configured.
    pub influx_queue: Option<mpsc::WeakSender<Point>>,
    /// The durable outbox of each sink that has one, by sink (`mqtt`,
    /// `influx`); weak, like the InfluxDB queue.
    pub outboxes: Vec<(&'static str, Weak<DurableQueue>)>,
    /// `[admin] ready_outbox_fraction`: an outbox fuller than this fraction
    /// of its `max_bytes` makes the host not ready.
    pub ready_outbox_fraction: f64,
    /// Every pipeline's transform.
    pub transforms: Vec<TransformInfo>,
    /// The transform managers; `None`: deploy and rollback answer 501.
    pub hotswap: Option<Arc<Hotswap>>,
    /// Cancelled when the host starts shutting down (`/ready` turns 503).
    pub shutdown: CancellationToken,
    /// When the host started.
    pub started: Instant,
}

impl AdminState {
    /// A state with nothing configured but the metrics.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        AdminState {
            metrics,
            mqtt_configured: false,
            influx_queue: None,
            outboxes: Vec::new(),
            ready_outbox_fraction: crate::config::admin::DEFAULT_READY_OUTBOX_FRACTION,
            transforms: Vec::new(),
            hotswap: None,
            shutdown: CancellationToken::new(),
            started: Instant::now(),
        }
    }
}

/// The admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address is taken (another sluice? set `[admin] listen`).
    #[error("admin API: {addr} is already in use (another sluice? set [admin] listen)")]
    AddrInUse {
        /// The configured address.
        addr: SocketAddr,
    },
    /// Any other bind failure.
    #[error("admin API: cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The running admin server.
pub struct AdminServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Binds `listen` and serves `router(state, check)`. Logs
    /// `admin API listening on http://ADDR` with the real port.
    pub async fn start(
        listen: SocketAddr,
        state: AdminState,
        check: TokenCheck,
    ) -> Result<AdminServer, AdminError> {
        let bind_error = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                AdminError::AddrInUse { addr: listen }
            } else {
                AdminError::Bind {
                    addr: listen,
                    source,
                }
            }
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let token_configured = check.configured();
        let app = router(Arc::new(state), Arc::new(check));
        let stop = CancellationToken::new();
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        let task = tokio::spawn(async move {
            if let Err(err) = serve.await {
                tracing::error!(error = %err, "admin API stopped");
            }
        });
        tracing::info!(%addr, token_configured, "admin API listening on http://{addr}");
        Ok(AdminServer { addr, stop, task })
    }

    /// The bound address (the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open requests finish (up to 2 s), then stops.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// Every route. Mutating routes are wrapped in [`protect`].
pub fn router(state: Arc<AdminState>, check: Arc<TokenCheck>) -> axum::Router {
    // Base64 in a JSON body is 4/3 of the module, plus vectors and config.
    let body_limit = state.hotswap.as_ref().map_or(2 << 20, |h| {
        h.config()
            .max_module_bytes
            .get()
            .saturating_mul(3)
            .saturating_div(2)
            .saturating_add(1 << 20)
    });
    let uploads = Arc::new(Semaphore::new(MAX_CONCURRENT_UPLOADS));
    let mutating = protect(
        axum::Router::new()
            .route(
                "/transforms/{name}",
                put(deploy)
                    .layer(DefaultBodyLimit::max(body_limit))
                    .layer(axum::middleware::from_fn_with_state(uploads, limit_uploads)),
            )
            .route("/transforms/{name}/rollback", post(rollback)),
        check.clone(),
    );
    axum::Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/transforms", get(transforms).layer(Extension(check)))
        .merge(mutating)
        .fallback(not_found)
        .with_state(state)
}

async fn health(State(state): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
    }))
}

async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    let (is_ready, body) = readiness(&state);
    let status = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Whether the host can take data now, and why not. Ready means: not
/// shutting down, the MQTT sink (if configured) is connected, the InfluxDB
/// writer's queue (if configured) is below 90 % full, and every durable
/// outbox holds at most `ready_outbox_fraction` of its `max_bytes` (its
/// depth and limits are under `outbox` in the sink's details). Serial ports
/// are reported but do not count: an unplugged device is retried by the
/// host, and restarting sluice (what a failing check usually triggers)
/// would not bring it back.
pub fn readiness(state: &AdminState) -> (bool, serde_json::Value) {
    let metrics = &state.metrics;
    let mut reasons: Vec<String> = Vec::new();
    if state.shutdown.is_cancelled() {
        reasons.push("shutting down".into());
    }
    let mut mqtt = if state.mqtt_configured {
        let connected = metrics.mqtt_connected.get() == 1;
        if !connected {
            reasons.push("mqtt: not connected to the broker".into());
        }
        json!({
            "configured": true,
            "connected": connected,
            "backlog": metrics.mqtt_backlog.get(),
        })
    } else {
        json!({ "configured": false })
    };
    let mut influx = match &state.influx_queue {
        None => json!({ "configured": false }),
        Some(queue) => match queue.upgrade() {
            Some(sender) => {
                let capacity = sender.max_capacity();
                let queued = capacity.saturating_sub(sender.capacity());
                drop(sender);
                if queued as f64 >= capacity as f64 * INFLUX_QUEUE_NOT_READY {
                    reasons.push(format!(
                        "influx: writer queue {queued} of {capacity} points (InfluxDB slow or down?)"
                    ));
                }
                json!({
                    "configured": true,
                    "queued_points": queued,
                    "queue_capacity": capacity,
                    "batches_in_flight": metrics.influx.batches_in_flight.get(),
                })
            }
            None => {
                reasons.push("influx: writer stopped".into());
                json!({ "configured": true, "stopped": true })
            }
        },
    };
    for (sink, queue) in &state.outboxes {
        let details = outbox_readiness(sink, queue, state.ready_outbox_fraction, &mut reasons);
        match *sink {
            "mqtt" => mqtt["outbox"] = details,
            "influx" => influx["outbox"] = details,
            _ => {}
        }
    }
    let pipelines: Vec<_> = state
        .transforms
        .iter()
        .map(|t| {
            json!({
                "name": t.pipeline,
                "port_open": metrics.serial(&t.pipeline).port_open.get() == 1,
            })
        })
        .collect();
    let is_ready = reasons.is_empty();
    let body = json!({
        "status": if is_ready { "ready" } else { "not_ready" },
        "reasons": reasons,
        "mqtt": mqtt,
        "influx": influx,
        "pipelines": pipelines,
    });
    (is_ready, body)
}

/// One durable outbox's share of [`readiness`]: its depth against
/// `fraction` of its bound.
fn outbox_readiness(
    sink: &str,
    queue: &Weak<DurableQueue>,
    fraction: f64,
    reasons: &mut Vec<String>,
) -> serde_json::Value {
    let Some(queue) = queue.upgrade() else {
        reasons.push(format!("{sink}: outbox closed"));
        return json!({ "closed": true });
    };
    let stats = queue.outbox().stats();
    drop(queue);
    // f64 holds every byte count below 2^53 exactly; bounds are far below.
    let limit = (stats.max_bytes as f64 * fraction).floor() as u64;
    if stats.depth_bytes > limit {
        reasons.push(format!(
            "{sink}: outbox holds {} of {} bytes, above the ready limit of {limit} ({fraction} of max_bytes; sink slow or down?)",
            stats.depth_bytes, stats.max_bytes
        ));
    }
    json!({
        "depth_items": stats.depth_items,
        "depth_bytes": stats.depth_bytes,
        "max_bytes": stats.max_bytes,
        "ready_limit_bytes": limit,
    })
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

/// axum middleware: holds one of [`MAX_CONCURRENT_UPLOADS`] permits while
/// the request is served (its body received, the deploy run), or answers 503
/// without reading the body.
async fn limit_uploads(
    State(uploads): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = uploads.try_acquire() else {
        tracing::warn!("admin API: upload refused: {MAX_CONCURRENT_UPLOADS} already in progress");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::RETRY_AFTER, HeaderValue::from_static("1")),
                (header::CONNECTION, HeaderValue::from_static("close")),
            ],
            Json(json!({
                "error": format!(
                    "{MAX_CONCURRENT_UPLOADS} module uploads are already in progress; retry when one has finished"
                ),
            })),
        )
            .into_response();
    };
    next.run(request).await
}

async fn transforms(
    State(state): State<Arc<AdminState>>,
    Extension(check): Extension<Arc<TokenCheck>>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let show_config = check.authorizes(&headers);
    let list: Vec<serde_json::Value> = state
        .transforms
        .iter()
        .map(|t| {
            let counters = state.metrics.pipeline(&t.pipeline);
            let entry = TransformEntry {
                pipeline: &t.pipeline,
                module: t.module.display().to_string(),
                sha256: &t.hash,
                frames_received: counters.frames_received.get(),
                messages_emitted: counters.messages_emitted.get(),
                points_emitted: counters.points_emitted.get(),
                history: None,
            };
            let value = match state.hotswap.as_ref().and_then(|h| h.manager(&t.pipeline)) {
                Some(manager) => {
                    let (_, hash) = manager.active();
                    manager.with_history(show_config, |history| {
                        serde_json::to_value(TransformEntry {
                            sha256: &hash,
                            history: Some(history),
                            ..entry
                        })
                    })
                }
                None => serde_json::to_value(entry),
            };
            // Plain data: serializing it cannot fail.
            value.unwrap_or_default()
        })
        .collect();
    Json(json!({ "transforms": list }))
}

/// One pipeline in `GET /transforms`.
#[derive(serde::Serialize)]
struct TransformEntry<'a> {
    pipeline: &'a str,
    module: String,
    sha256: &'a str,
    frames_received: u64,
    messages_emitted: u64,
    points_emitted: u64,
    /// With hot swap: the versions (`active`, `canary_running`,
    /// `rollback_to`, `history`).
    #[serde(flatten)]
    history: Option<crate::hotswap::HistoryView<'a>>,
}

fn not_implemented(name: &str) -> Response {
    (
        StatusCode::NOT_IMPLEMENTED,
        Json(json!({
            "error": "transform hot swap is not available in this process",
            "pipeline": name,
        })),
    )
        .into_response()
}

fn deploy_response(
    name: &str,
    result: Result<crate::hotswap::DeployReport, DeployError>,
) -> Response {
    match result {
        Ok(report) => (StatusCode::OK, Json(report.response(name))).into_response(),
        Err(err) => {
            let status = match &err {
                DeployError::UnknownPipeline(_) => StatusCode::NOT_FOUND,
                DeployError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                DeployError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
                DeployError::NoRollback(_) => StatusCode::CONFLICT,
                DeployError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (
                status,
                Json(json!({
                    "pipeline": name,
                    "outcome": err.outcome(),
                    "error": err.to_string(),
                })),
            )
                .into_response()
        }
    }
}

/// The JSON form of a deploy: everything optional, at least one of
/// `module` and `config`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    /// The component, base64.
    #[serde(default)]
    module: Option<String>,
    /// Test vectors, `.vectors.jsonl` text.
    #[serde(default)]
    vectors: Option<String>,
    /// The transform config (replaces the active one).
    #[serde(default)]
    config: Option<std::collections::BTreeMap<String, crate::config::ScalarValue>>,
}

fn bad_request(name: &str, message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "pipeline": name, "outcome": "bad_request", "error": message })),
    )
        .into_response()
}

/// `PUT /transforms/{name}`: deploys to pipeline `name`. The body is the
/// component itself (any content type but JSON), or with
/// `Content-Type: application/json` an object `{"module": base64,
/// "vectors": "jsonl text", "config": {"key": "value"}}` (all optional;
/// `config` alone is a config change of the running module). Answers 200
/// with the new (or unchanged) version, 422 with the reason when the module
/// is refused (the running version stays), 404 for an unknown pipeline.
async fn deploy(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(hotswap) = &state.hotswap else {
        return not_implemented(&name);
    };
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let origin = format!("PUT /transforms/{name}");
    let request = if json_body {
        let parsed: DeployBody = match serde_json::from_slice(&body) {
            Ok(parsed) => parsed,
            Err(err) => return bad_request(&name, format!("invalid JSON body: {err}")),
        };
        let wasm = match parsed
            .module
            .as_deref()
            .map(|m| base64::engine::general_purpose::STANDARD.decode(m.trim()))
        {
            Some(Ok(wasm)) => Some(wasm),
            Some(Err(err)) => return bad_request(&name, format!("module is not base64: {err}")),
            None => None,
        };
        if wasm.is_none() && parsed.config.is_none() {
            return bad_request(&name, "give `module`, `config` or both".into());
        }
        DeployRequest {
            source: DeploySource::Api,
            origin,
            wasm,
            config: parsed
                .config
                .map(|c| c.into_iter().map(|(k, v)| (k, v.0)).collect()),
            limits: None,
            vectors: parsed.vectors,
        }
    } else {
        if body.is_empty() {
            return bad_request(&name, "empty body: send the module".into());
        }
        DeployRequest::module(DeploySource::Api, origin, body.to_vec())
    };
    deploy_response(&name, hotswap.deploy(&name, request).await)
}

/// `POST /transforms/{name}/rollback`: back to the version that ran before
/// the active one. 409 when there is none.
async fn rollback(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    let Some(hotswap) = &state.hotswap else {
        return not_implemented(&name);
    };
    deploy_response(&name, hotswap.rollback(&name).await)
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": "not found" }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    async fn serve(state: AdminState, token: Option<&str>) -> (AdminServer, String) {
        let check = TokenCheck::new(token.map(Secret::new).as_ref());
        let server = AdminServer::start("127.0.0.1:0".parse().expect("addr"), state, check)
            .await
            .expect("bind an ephemeral port");
        let base = format!("http://{}", server.local_addr());
        (server, base)
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().build().expect("client")
    }

    async fn json(response: reqwest::Response) -> serde_json::Value {
        let text = response.text().await.expect("body");
        serde_json::from_str(&text).expect("JSON body")
    }

    #[tokio::test]
    async fn health_metrics_transforms() {
        let metrics = Arc::new(Metrics::new());
        metrics.pipeline("gw").frames_received.inc_by(3);
        let mut state = AdminState::new(metrics);
        state.transforms.push(TransformInfo {
            pipeline: "gw".into(),
            module: "/m/json_telemetry.wasm".into(),
            hash: "ab".repeat(32),
        });
        let (server, base) = serve(state, None).await;
        let http = client();

        let health = http
            .get(format!("{base}/health"))
            .send()
            .await
            .expect("get");
        assert_eq!(health.status(), 200);
        let body = json(health).await;
        assert_eq!(body["status"], "ok");
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        assert!(body["uptime_secs"].is_u64());

        let response = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            METRICS_CONTENT_TYPE
        );
        let text = response.text().await.expect("text");
        assert!(
            text.contains("sluice_frames_received_total{pipeline=\"gw\"} 3"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");

        let list = json(
            http.get(format!("{base}/transforms"))
                .send()
                .await
                .expect("get"),
        )
        .await;
        assert_eq!(list["transforms"][0]["pipeline"], "gw");
        assert_eq!(list["transforms"][0]["frames_received"], 3);
        assert_eq!(list["transforms"][0]["sha256"], "ab".repeat(32));

        let missing = http.get(format!("{base}/nope")).send().await.expect("get");
        assert_eq!(missing.status(), 404);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn ready_follows_the_mqtt_connection_and_the_influx_queue() {
        let metrics = Arc::new(Metrics::new());
        let (points, mut writer) = mpsc::channel::<Point>(10);
        let mut state = AdminState::new(metrics.clone());
        state.mqtt_configured = true;
        state.influx_queue = Some(points.downgrade());
        let shutdown = state.shutdown.clone();
        let (server, base) = serve(state, None).await;
        let http = client();
        let ready = || async {
            let response = http.get(format!("{base}/ready")).send().await.expect("get");
            let status = response.status().as_u16();
            (status, json(response).await)
        };

        let (status, body) = ready().await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["mqtt"]["connected"], false);
        metrics.mqtt_connected.set(1);
        let (status, body) = ready().await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["influx"]["queued_points"], 0);

        let point = || Point {
            measurement: "m".into(),
            tags: Default::default(),
            fields: Default::default(),
            timestamp_ns: None,
        };
        for _ in 0..9 {
            points.try_send(point()).expect("room");
        }
        let (status, body) = ready().await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["influx"]["queued_points"], 9);
        while writer.try_recv().is_ok() {}

        shutdown.cancel();
        let (status, body) = ready().await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["reasons"][0], "shutting down");
        server.shutdown().await;
    }

    /// A real outbox (redb file, writer thread) of 10,000 bytes filled with
    /// 1,000-byte records: ready up to the limit (0.5 here: 5,000 bytes),
    /// not ready above it with depth and limit in the details, ready again
    /// once acks drain it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ready_follows_the_outbox_depth() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::new());
        let config = crate::outbox::OutboxConfig {
            max_bytes: std::num::NonZeroU64::new(10_000).expect("non-zero"),
            ..Default::default()
        };
        let outbox =
            crate::outbox::Outbox::open(dir.path().join("mqtt.redb"), config).expect("open outbox");
        let queue = Arc::new(
            DurableQueue::start(crate::model::Sink::Mqtt, outbox, metrics.clone())
                .expect("writer thread"),
        );
        // An empty InfluxDB outbox beside it, reported under `influx`.
        let influx_outbox = crate::outbox::Outbox::open(
            dir.path().join("influx.redb"),
            crate::outbox::OutboxConfig::default(),
        )
        .expect("open outbox");
        let influx = Arc::new(
            DurableQueue::start(crate::model::Sink::Influx, influx_outbox, metrics.clone())
                .expect("writer thread"),
        );
        let (points, _writer) = mpsc::channel::<Point>(10);
        let mut state = AdminState::new(metrics);
        state.influx_queue = Some(points.downgrade());
        state.outboxes.push(("mqtt", Arc::downgrade(&queue)));
        state.outboxes.push(("influx", Arc::downgrade(&influx)));
        state.ready_outbox_fraction = 0.5;
        let mut appended = queue.appended();
        let mut push = async |n: u64| {
            for _ in 0..n {
                assert!(queue.push(vec![7u8; 984]).await);
            }
            let target = *appended.borrow() + n;
            appended
                .wait_for(|next| *next >= target)
                .await
                .expect("appended");
        };

        // 5 × (984 + 16 bytes of overhead) = 5,000: at the limit, still ready.
        push(5).await;
        let (is_ready, body) = readiness(&state);
        assert!(is_ready, "{body}");
        assert_eq!(body["mqtt"]["outbox"]["depth_bytes"], 5_000, "{body}");
        assert_eq!(body["mqtt"]["outbox"]["max_bytes"], 10_000, "{body}");
        assert_eq!(body["mqtt"]["outbox"]["ready_limit_bytes"], 5_000, "{body}");
        assert_eq!(body["influx"]["outbox"]["depth_bytes"], 0, "{body}");
        assert_eq!(body["influx"]["outbox"]["max_bytes"], 256 << 20, "{body}");

        push(1).await;
        let (is_ready, body) = readiness(&state);
        assert!(!is_ready, "{body}");
        assert_eq!(body["mqtt"]["outbox"]["depth_items"], 6, "{body}");
        assert_eq!(
            body["reasons"],
            json!([
                "mqtt: outbox holds 6000 of 10000 bytes, above the ready limit of 5000 (0.5 of max_bytes; sink slow or down?)"
            ])
        );

        // The sink confirms two items: back under the limit. The writer
        // thread may apply the two acks in separate batches (ready again
        // after the first, at 5,000 bytes), so wait for both.
        for item in queue.read_after(None, 2).expect("read") {
            queue.ack(item.seq);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while readiness(&state).1["mqtt"]["outbox"]["depth_bytes"] != 4_000 {
            assert!(Instant::now() < deadline, "{}", readiness(&state).1);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (is_ready, body) = readiness(&state);
        assert!(is_ready, "{body}");

        queue.close().await;
        drop(queue);
        influx.close().await;
        drop(influx);
        let (is_ready, body) = readiness(&state);
        assert!(!is_ready, "{body}");
        assert_eq!(
            body["reasons"],
            json!(["mqtt: outbox closed", "influx: outbox closed"])
        );
    }

    #[tokio::test]
    async fn mutating_endpoints_need_the_bearer_token() {
        let (server, base) = serve(AdminState::new(Arc::new(Metrics::new())), Some("t0k3n")).await;
        let http = client();
        let url = format!("{base}/transforms/gw/rollback");

        let none = http.post(&url).send().await.expect("post");
        assert_eq!(none.status(), 401);
        assert!(none.headers().contains_key(header::WWW_AUTHENTICATE));
        let body = json(none).await;
        assert_eq!(body["error"], "missing bearer token");

        let wrong = http
            .post(&url)
            .bearer_auth("t0k3m")
            .send()
            .await
            .expect("post");
        assert_eq!(wrong.status(), 401);
        let basic = http
            .post(&url)
            .basic_auth("admin", Some("t0k3n"))
            .send()
            .await
            .expect("post");
        assert_eq!(basic.status(), 401);

        let right = http
            .post(&url)
            .bearer_auth("t0k3n")
            .send()
            .await
            .expect("post");
        assert_eq!(right.status(), 501);
        server.shutdown().await;

        let (server, base) = serve(AdminState::new(Arc::new(Metrics::new())), None).await;
        let refused = http
            .post(format!("{base}/transforms/gw/rollback"))
            .bearer_auth("anything")
            .send()
            .await
            .expect("post");
        assert_eq!(refused.status(), 403);
        let body = json(refused).await;
        assert_eq!(body["error"], "admin token not configured");
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_taken_address_is_a_clear_error() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = taken.local_addr().expect("addr");
        let result = AdminServer::start(
            addr,
            AdminState::new(Arc::new(Metrics::new())),
            TokenCheck::new(None),
        )
        .await;
        assert!(matches!(result, Err(AdminError::AddrInUse { .. })));
    }
}
