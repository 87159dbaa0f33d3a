//! The batching writer: points in, confirmed batches out.
//!
//! ```text
//! points (bounded) ──► encoder + batcher ──► ≤ max_batches_in_flight delivery tasks ──► Transport
//!                      (one task)            (retry, split, isolate, dead-letter)
//! ```
//!
//! * A batch is flushed at `batch_lines` lines, before it would exceed
//!   `batch_bytes`, or `flush_interval` after its first line — whichever
//!   comes first.
//! * When `max_batches_in_flight` batches are being written, the batcher
//!   stops taking points; the bounded channel fills and the pipelines wait.
//! * A delivery task owns its batch until every line is **settled**: either
//!   delivered (2xx, or not named in a partial write) or dead-lettered with a
//!   reason. Settlement is an explicit event ([`DeliveryHook`]) that a durable
//!   outbox can hook into; each point carries a sequence number assigned in
//!   arrival order.
//! * 5xx, 429, 408, connection errors and timeouts are retried forever with
//!   jittered exponential backoff (at least `Retry-After`). 401/403/404 and
//!   other client errors that no line caused (missing database, bad token)
//!   are logged as errors and retried every `auth_retry` — fixing the server
//!   fixes the pipeline, nothing lost. 413 splits the part in two. 400/422
//!   isolate the bad lines: by the server's message when it quotes them
//!   (InfluxDB 1.x/2.x "unable to parse '…'", v3's partial-write line
//!   numbers), else by bisection; the bad lines are dead-lettered with the
//!   server's message and the rest is sent again (rewriting a point with the
//!   same series and timestamp is idempotent in InfluxDB).
//! * Nothing is retried against a limit that drops data. Only shutdown gives
//!   up: after the flush deadline, what is still unsettled is dead-lettered
//!   as `shutdown_undelivered` (counted; the lines are in the dead-letter
//!   file for replay).

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics::{Metrics, SinkDrop};
use crate::model::{Point, Sink};
use crate::ratelimit::RateLimiter;
use crate::sync::lock;

use super::line_protocol::Encoder;
use super::transport::{Body, Reply, Transport};
use crate::config::influx::{ApiVersion, InfluxConfig};
use crate::sink::dead_letter::{Content, DeadLetter, DeadLetters};

/// Everything the writer needs besides its transport.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Which API (decides how error bodies are read).
    pub api: ApiVersion,
    /// The line encoder (precision, unsigned mode).
    pub encoder: Encoder,
    /// Flush at this many lines.
    pub batch_lines: usize,
    /// Flush before exceeding this many bytes.
    pub batch_bytes: usize,
    /// Flush this long after a batch's first line.
    pub flush_interval: Duration,
    /// Batches written at once.
    pub max_in_flight: usize,
    /// gzip request bodies.
    pub gzip: bool,
    /// Retry backoff floor.
    pub retry_min: Duration,
    /// Retry backoff ceiling.
    pub retry_max: Duration,
    /// Retry interval while the server refuses us (401/403/404).
    pub auth_retry: Duration,
}

impl WriterSettings {
    /// From `[influx]`.
    pub fn from_config(config: &InfluxConfig) -> Self {
        Self {
            api: config.api,
            encoder: Encoder::new(config.precision, config.unsigned_mode()),
            batch_lines: config.batch_lines.get(),
            batch_bytes: config.batch_bytes.get(),
            flush_interval: Duration::from_millis(config.flush_interval_ms.get()),
            max_in_flight: config.max_batches_in_flight.get(),
            gzip: config.gzip,
            retry_min: Duration::from_millis(config.retry_min_ms.get()),
            retry_max: Duration::from_millis(config.retry_max_ms.get()),
            auth_retry: Duration::from_millis(config.auth_retry_ms.get()),
        }
    }
}

/// Told when lines are settled. Sequence numbers are assigned to points in
/// the order the writer receives them, starting at 0; every one is settled
/// exactly once (delivered or dead-lettered), also at shutdown.
pub trait DeliveryHook: Send + Sync + 'static {
    /// The server confirmed these points.
    fn delivered(&self, _seqs: &[u64]) {}
    /// These points were dead-lettered (and counted).
    fn dead_lettered(&self, _seqs: &[u64]) {}
}

/// A hook that does nothing (the metrics count anyway).
pub struct NoHook;
impl DeliveryHook for NoHook {}

/// State shared by the batcher and its delivery tasks.
pub struct Shared<T> {
    transport: T,
    settings: WriterSettings,
    metrics: Arc<Metrics>,
    dead_letters: Arc<DeadLetters>,
    hook: Arc<dyn DeliveryHook>,
    give_up: CancellationToken,
    retry_log: Mutex<RateLimiter>,
    reject_log: Mutex<RateLimiter>,
}

impl<T: Transport> Shared<T> {
    /// Bundles the writer's dependencies. Cancelling `give_up` makes every
    /// unsettled line be dead-lettered as `shutdown_undelivered`.
    pub fn new(
        transport: T,
        settings: WriterSettings,
        metrics: Arc<Metrics>,
        dead_letters: Arc<DeadLetters>,
        hook: Arc<dyn DeliveryHook>,
        give_up: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            transport,
            settings,
            metrics,
            dead_letters,
            hook,
            give_up,
            retry_log: Mutex::new(RateLimiter::new(3, Duration::from_secs(60))),
            reject_log: Mutex::new(RateLimiter::new(5, Duration::from_secs(60))),
        })
    }
}

fn may_log(limiter: &Mutex<RateLimiter>) -> Option<u64> {
    lock(limiter).check()
}

/// A flushed batch: lines back to back, each ending in `\n`.
struct Batch {
    data: Bytes,
    /// `offsets[i]..offsets[i + 1]` is line `i` with its `\n`.
    offsets: Vec<usize>,
    seqs: Vec<u64>,
    flushed_at: Instant,
}

impl Batch {
    fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Line `i` without its `\n`.
    fn line(&self, i: usize) -> &[u8] {
        &self.data[self.offsets[i]..self.offsets[i + 1] - 1]
    }

    fn seqs_of(&self, part: &[usize]) -> Vec<u64> {
        part.iter().map(|&i| self.seqs[i]).collect()
    }

    /// The uncompressed request body for `part` (line indices, ascending):
    /// a slice of the batch when the lines are contiguous.
    fn raw(&self, part: &[usize]) -> Bytes {
        match (part.first(), part.last()) {
            (Some(&first), Some(&last)) if last - first + 1 == part.len() => {
                self.data.slice(self.offsets[first]..self.offsets[last + 1])
            }
            _ => {
                let mut joined = Vec::new();
                for &i in part {
                    joined.extend_from_slice(&self.data[self.offsets[i]..self.offsets[i + 1]]);
                }
                Bytes::from(joined)
            }
        }
    }
}

/// Bodies up to this size are compressed on the calling task; larger ones on
/// tokio's blocking pool. gzip (level 1) of a full batch (5000 lines, ~350
/// KB) takes milliseconds, more on a Raspberry Pi, and on an async worker
/// that would hold up MQTT and the serial ports — with `--async-threads 1`,
/// all of them.
const INLINE_GZIP_MAX: usize = 16 << 10;

/// The request body for `raw`: gzip'ed when `gzip` is set.
async fn request_body(raw: Bytes, gzip: bool) -> Body {
    if !gzip {
        return Body {
            bytes: raw,
            gzip: false,
        };
    }
    if raw.len() <= INLINE_GZIP_MAX {
        return gzipped(raw);
    }
    let plain = raw.clone();
    tokio::task::spawn_blocking(move || gzipped(raw))
        .await
        .unwrap_or(Body {
            bytes: plain,
            gzip: false,
        })
}

/// `raw` gzip'ed (level 1), or as it is if compression somehow failed.
fn gzipped(raw: Bytes) -> Body {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 8 + 64),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail; if it somehow did, send it plain.
    if encoder.write_all(&raw).is_ok()
        && let Ok(compressed) = encoder.finish()
    {
        return Body {
            bytes: Bytes::from(compressed),
            gzip: true,
        };
    }
    Body {
        bytes: raw,
        gzip: false,
    }
}

/// The batch being filled.
struct Builder {
    data: Vec<u8>,
    offsets: Vec<usize>,
    seqs: Vec<u64>,
}

impl Builder {
    fn new() -> Self {
        Self {
            data: Vec::new(),
            offsets: vec![0],
            seqs: Vec::new(),
        }
    }
    fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
    fn push(&mut self, line: &[u8], seq: u64) {
        self.data.extend_from_slice(line);
        self.offsets.push(self.data.len());
        self.seqs.push(seq);
    }
    fn take(&mut self) -> Batch {
        let taken = std::mem::replace(self, Builder::new());
        Batch {
            data: Bytes::from(taken.data),
            offsets: taken.offsets,
            seqs: taken.seqs,
            flushed_at: Instant::now(),
        }
    }
}

/// Runs the writer until `points` closes and every batch is settled.
pub async fn run<T: Transport>(mut points: mpsc::Receiver<Point>, shared: Arc<Shared<T>>) {
    let settings = shared.settings.clone();
    let mut encoder = settings.encoder.clone();
    let mut builder = Builder::new();
    let mut line = Vec::new();
    let mut carry: Option<(Vec<u8>, u64)> = None;
    let mut next_seq: u64 = 0;
    let mut deadline: Option<Instant> = None;
    let mut ready = false;
    let mut closed = false;
    let mut inflight = JoinSet::new();
    let mut inflight_lines: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut encode_log = RateLimiter::new(5, Duration::from_secs(60));

    loop {
        if ready || (closed && !builder.is_empty()) {
            if inflight.len() < settings.max_in_flight {
                let batch = builder.take();
                let lines = batch.len();
                let handle = inflight.spawn(deliver(shared.clone(), batch));
                inflight_lines.insert(handle.id(), lines);
                shared.metrics.influx.batches_in_flight.inc();
                ready = false;
                deadline = None;
                if let Some((carried, seq)) = carry.take() {
                    builder.push(&carried, seq);
                    deadline = Some(Instant::now() + settings.flush_interval);
                    ready = builder.seqs.len() >= settings.batch_lines
                        || builder.data.len() >= settings.batch_bytes;
                }
                continue;
            }
            if let Some(joined) = inflight.join_next_with_id().await {
                reap(&shared, &mut inflight_lines, joined);
            }
            continue;
        }
        if closed {
            break;
        }
        let flush_at = deadline.unwrap_or_else(Instant::now);
        tokio::select! {
            Some(joined) = inflight.join_next_with_id(), if !inflight.is_empty() => {
                reap(&shared, &mut inflight_lines, joined);
            }
            received = points.recv() => match received {
                None => closed = true,
                Some(point) => {
                    let seq = next_seq;
                    next_seq += 1;
                    line.clear();
                    match encoder.encode(&point, &mut line) {
                        Ok(()) => {
                            shared.metrics.influx.points_encoded.inc();
                            if !builder.is_empty()
                                && builder.data.len() + line.len() > settings.batch_bytes
                            {
                                carry = Some((std::mem::take(&mut line), seq));
                                ready = true;
                            } else {
                                if builder.is_empty() {
                                    deadline = Some(Instant::now() + settings.flush_interval);
                                }
                                builder.push(&line, seq);
                                ready = builder.seqs.len() >= settings.batch_lines
                                    || builder.data.len() >= settings.batch_bytes;
                            }
                        }
                        Err(err) => {
                            if let Some(suppressed) = encode_log.check() {
                                tracing::warn!(reason = err.reason(), suppressed,
                                    "point cannot be written as line protocol; dead-lettered: {err}");
                            }
                            let message = err.to_string();
                            shared.dead_letters.write(
                                &[DeadLetter {
                                    reason: SinkDrop::Unencodable(err.reason()),
                                    status: None,
                                    message: &message,
                                    content: Content::Point(crate::jsonout::point(&point)),
                                }],
                                &shared.metrics,
                            );
                            shared.hook.dead_lettered(&[seq]);
                        }
                    }
                }
            },
            () = tokio::time::sleep_until(flush_at), if deadline.is_some() => ready = true,
        }
    }
    while let Some(joined) = inflight.join_next_with_id().await {
        reap(&shared, &mut inflight_lines, joined);
    }
}

fn reap<T>(
    shared: &Shared<T>,
    inflight_lines: &mut HashMap<tokio::task::Id, usize>,
    joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    shared.metrics.influx.batches_in_flight.dec();
    match joined {
        Ok((id, ())) => {
            inflight_lines.remove(&id);
        }
        Err(err) => {
            let lines = inflight_lines.remove(&err.id()).unwrap_or(0);
            for _ in 0..lines {
                shared
                    .metrics
                    .sink_dropped(Sink::Influx, SinkDrop::WriterTaskFailed);
            }
            tracing::error!(lines, error = %err, "an InfluxDB delivery task failed; its lines are lost");
        }
    }
}

/// What a reply means for the part that was sent.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// All lines written.
    Delivered,
    /// The server wrote all but these lines (index into the part, message).
    Partial(Vec<(usize, String)>),
    /// Nothing (necessarily) written; these lines are bad (may be empty:
    /// the server did not say which).
    Rejected {
        status: u16,
        message: String,
        bad: Vec<(usize, String)>,
    },
    /// Body too large.
    TooLarge { message: String },
    /// Try the same again later.
    Retry {
        outcome: &'static str,
        retry_after: Option<Duration>,
        message: String,
    },
    /// The server refuses us for a reason no line caused; retry slowly.
    Stuck {
        outcome: &'static str,
        status: u16,
        message: String,
    },
}

/// Messages of a 400 that mean "your configuration is wrong", not "a line is bad".
const CONFIG_ERRORS: &[&str] = &[
    "database not found",
    "retention policy not found",
    "bucket not found",
    "organization not found",
    "org not found",
];

fn classify(api: ApiVersion, reply: &Reply, part_lines: &[&[u8]]) -> Verdict {
    let (status, retry_after, body) = match reply {
        Reply::Failed(message) => {
            return Verdict::Retry {
                outcome: "retry",
                retry_after: None,
                message: message.clone(),
            };
        }
        Reply::Status {
            status,
            retry_after,
            body,
        } => (*status, *retry_after, body),
    };
    let json: Option<Value> = serde_json::from_str(body).ok();
    let message = json
        .as_ref()
        .and_then(|j| j.get("error").or_else(|| j.get("message")))
        .and_then(Value::as_str)
        .map_or_else(|| body.trim().to_owned(), str::to_owned);
    match status {
        200..=299 => Verdict::Delivered,
        400 | 422 => {
            let lower = message.to_ascii_lowercase();
            if CONFIG_ERRORS.iter().any(|e| lower.contains(e)) {
                return Verdict::Stuck {
                    outcome: "not_found",
                    status,
                    message,
                };
            }
            if api == ApiVersion::V3
                && let Some(bad) = v3_bad_lines(json.as_ref(), part_lines.len())
            {
                if lower.contains("partial write") {
                    return Verdict::Partial(bad);
                }
                return Verdict::Rejected {
                    status,
                    message,
                    bad,
                };
            }
            let bad = quoted_bad_lines(&message, part_lines);
            Verdict::Rejected {
                status,
                message,
                bad,
            }
        }
        413 => Verdict::TooLarge { message },
        401 | 403 => Verdict::Stuck {
            outcome: "unauthorized",
            status,
            message,
        },
        404 => Verdict::Stuck {
            outcome: "not_found",
            status,
            message,
        },
        408 | 429 | 500..=599 => Verdict::Retry {
            outcome: "retry",
            retry_after,
            message: if message.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {message}")
            },
        },
        _ => Verdict::Stuck {
            outcome: "misconfigured",
            status,
            message,
        },
    }
}

/// InfluxDB 3: `{"error": "...", "data": [{"line_number": 2, "error_message": "...", "original_line": "..."}]}`
/// (1-based line numbers within the request body).
fn v3_bad_lines(json: Option<&Value>, lines: usize) -> Option<Vec<(usize, String)>> {
    let data = json?.get("data")?.as_array()?;
    let mut bad = Vec::new();
    for entry in data {
        let number = entry.get("line_number")?.as_u64()?;
        let index = usize::try_from(number).ok()?.checked_sub(1)?;
        if index >= lines {
            return None;
        }
        let message = entry
            .get("error_message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        bad.push((index, message));
    }
    (!bad.is_empty()).then_some(bad)
}

/// InfluxDB 1.x/2.x quote each unparseable line: `unable to parse 'LINE': reason`
/// (several joined by newlines). Finds those lines in the part, exactly.
fn quoted_bad_lines(message: &str, part_lines: &[&[u8]]) -> Vec<(usize, String)> {
    const MARK: &str = "unable to parse '";
    if !message.contains(MARK) {
        return Vec::new();
    }
    let mut by_text: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (i, line) in part_lines.iter().enumerate() {
        by_text.entry(line).or_default().push(i);
    }
    let mut bad = Vec::new();
    for (start, _) in message.match_indices(MARK) {
        let rest = &message[start + MARK.len()..];
        // The line may itself contain "': "; try every candidate end.
        for (end, _) in rest.match_indices("': ") {
            if let Some(indices) = by_text.remove(&rest.as_bytes()[..end]) {
                let reason_end = rest[end..].find('\n').map_or(rest.len(), |n| end + n);
                let text = format!("unable to parse '{}", &rest[..reason_end]);
                bad.extend(indices.into_iter().map(|i| (i, text.clone())));
                break;
            }
        }
    }
    bad.sort_unstable_by_key(|(i, _)| *i);
    bad
}

/// Delivers one batch: until every line is settled, or shutdown gives up.
async fn deliver<T: Transport>(shared: Arc<Shared<T>>, batch: Batch) {
    let settings = &shared.settings;
    let metrics = &shared.metrics.influx;
    let mut backoff = Backoff::new(settings.retry_min, settings.retry_max);
    let mut parts: VecDeque<Vec<usize>> = VecDeque::from([(0..batch.len()).collect()]);
    while let Some(part) = parts.pop_front() {
        let body = request_body(batch.raw(&part), settings.gzip).await;
        let mut failures: u32 = 0;
        loop {
            if shared.give_up.is_cancelled() {
                parts.push_front(part);
                give_up(&shared, &batch, parts);
                finish(&shared, &batch);
                return;
            }
            let started = std::time::Instant::now();
            let reply = tokio::select! {
                reply = shared.transport.write(body.clone()) => reply,
                () = shared.give_up.cancelled() => continue,
            };
            metrics
                .request_seconds
                .observe(started.elapsed().as_secs_f64());
            let part_lines: Vec<&[u8]> = part.iter().map(|&i| batch.line(i)).collect();
            match classify(settings.api, &reply, &part_lines) {
                Verdict::Delivered => {
                    metrics.request("ok");
                    if failures > 0 {
                        tracing::info!(
                            attempts = failures + 1,
                            lines = part.len(),
                            "InfluxDB write succeeded after retrying"
                        );
                    }
                    settle_delivered(&shared, &batch, &part);
                    backoff.reset();
                    break;
                }
                Verdict::Partial(bad) => {
                    metrics.request("partial");
                    let bad_set = dead_letter_lines(&shared, &batch, &part, &bad, Some(400));
                    let good: Vec<usize> = without(&part, &bad_set);
                    settle_delivered(&shared, &batch, &good);
                    break;
                }
                Verdict::Rejected {
                    status,
                    message,
                    bad,
                } => {
                    metrics.request("rejected");
                    if !bad.is_empty() {
                        let bad_set = dead_letter_lines(&shared, &batch, &part, &bad, Some(status));
                        let rest = without(&part, &bad_set);
                        if !rest.is_empty() {
                            parts.push_front(rest);
                        }
                    } else if part.len() == 1 {
                        let bad = [(0, message)];
                        dead_letter_lines(&shared, &batch, &part, &bad, Some(status));
                    } else {
                        // The server did not say which line: bisect.
                        let (left, right) = part.split_at(part.len() / 2);
                        parts.push_front(right.to_vec());
                        parts.push_front(left.to_vec());
                    }
                    break;
                }
                Verdict::TooLarge { message } => {
                    metrics.request("too_large");
                    if part.len() == 1 {
                        let letter = DeadLetter {
                            reason: SinkDrop::TooLarge,
                            status: Some(413),
                            message: &message,
                            content: Content::Line(batch.line(part[0])),
                        };
                        shared.dead_letters.write(&[letter], &shared.metrics);
                        shared.hook.dead_lettered(&batch.seqs_of(&part));
                    } else {
                        let (left, right) = part.split_at(part.len() / 2);
                        parts.push_front(right.to_vec());
                        parts.push_front(left.to_vec());
                    }
                    break;
                }
                Verdict::Retry {
                    outcome,
                    retry_after,
                    message,
                } => {
                    metrics.request(outcome);
                    failures += 1;
                    let delay = backoff
                        .next_delay()
                        .max(retry_after.unwrap_or(Duration::ZERO));
                    if let Some(suppressed) = may_log(&shared.retry_log) {
                        tracing::warn!(error = %message, retry_in_ms = delay.as_millis() as u64,
                            lines = part.len(), suppressed, "InfluxDB write failed; retrying (data kept)");
                    }
                    wait(&shared, delay).await;
                }
                Verdict::Stuck {
                    outcome,
                    status,
                    message,
                } => {
                    metrics.request(outcome);
                    failures += 1;
                    if let Some(suppressed) = may_log(&shared.retry_log) {
                        tracing::error!(status, error = %message, retry_in_ms = settings.auth_retry.as_millis() as u64,
                            lines = part.len(), suppressed,
                            "InfluxDB refuses our writes (credentials, database or URL?); keeping the data and retrying until this is fixed");
                    }
                    wait(&shared, settings.auth_retry).await;
                }
            }
        }
    }
    finish(&shared, &batch);
}

fn finish<T>(shared: &Shared<T>, batch: &Batch) {
    shared
        .metrics
        .influx
        .batch_seconds
        .observe(batch.flushed_at.elapsed().as_secs_f64());
}

async fn wait<T>(shared: &Shared<T>, delay: Duration) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = shared.give_up.cancelled() => {}
    }
}

fn without(part: &[usize], bad: &[usize]) -> Vec<usize> {
    part.iter()
        .enumerate()
        .filter(|(k, _)| bad.binary_search(k).is_err())
        .map(|(_, &i)| i)
        .collect()
}

fn settle_delivered<T>(shared: &Shared<T>, batch: &Batch, part: &[usize]) {
    if part.is_empty() {
        return;
    }
    shared
        .metrics
        .influx
        .points_delivered
        .inc_by(part.len() as u64);
    shared.hook.delivered(&batch.seqs_of(part));
}

/// Dead-letters `bad` (indices into `part`); returns those indices, sorted.
fn dead_letter_lines<T>(
    shared: &Shared<T>,
    batch: &Batch,
    part: &[usize],
    bad: &[(usize, String)],
    status: Option<u16>,
) -> Vec<usize> {
    let letters: Vec<DeadLetter<'_>> = bad
        .iter()
        .map(|(k, message)| DeadLetter {
            reason: SinkDrop::ServerRejected,
            status,
            message,
            content: Content::Line(batch.line(part[*k])),
        })
        .collect();
    shared.dead_letters.write(&letters, &shared.metrics);
    let mut indices: Vec<usize> = bad.iter().map(|(k, _)| *k).collect();
    indices.sort_unstable();
    indices.dedup();
    let seqs: Vec<u64> = indices.iter().map(|&k| batch.seqs[part[k]]).collect();
    shared.hook.dead_lettered(&seqs);
    if let Some(suppressed) = may_log(&shared.reject_log)
        && let Some((_, message)) = bad.first()
    {
        tracing::warn!(lines = indices.len(), suppressed, path = %shared.dead_letters.path().display(),
            "InfluxDB rejected lines; dead-lettered: {message}");
    }
    indices
}

fn give_up<T>(shared: &Shared<T>, batch: &Batch, parts: VecDeque<Vec<usize>>) {
    let lines: Vec<usize> = parts.into_iter().flatten().collect();
    if lines.is_empty() {
        return;
    }
    let message = "shutdown: not confirmed by InfluxDB before the flush deadline";
    let letters: Vec<DeadLetter<'_>> = lines
        .iter()
        .map(|&i| DeadLetter {
            reason: SinkDrop::ShutdownUndelivered,
            status: None,
            message,
            content: Content::Line(batch.line(i)),
        })
        .collect();
    shared.dead_letters.write(&letters, &shared.metrics);
    shared.hook.dead_lettered(&batch.seqs_of(&lines));
    tracing::error!(lines = lines.len(), path = %shared.dead_letters.path().display(),
        "shutdown: InfluxDB did not confirm these lines in time; they are in the dead-letter file");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::influx::{Precision, UnsignedMode};
    use crate::model::FieldValue;
    use std::io::Read as _;

    type Script = Box<dyn FnMut(&str) -> Reply + Send>;

    /// A transport that answers from a script and records what it got.
    struct Scripted {
        script: Mutex<Script>,
        bodies: Mutex<Vec<String>>,
    }

    impl Scripted {
        fn new(script: impl FnMut(&str) -> Reply + Send + 'static) -> Self {
            Self {
                script: Mutex::new(Box::new(script)),
                bodies: Mutex::new(Vec::new()),
            }
        }
    }

    impl Transport for Arc<Scripted> {
        async fn write(&self, body: Body) -> Reply {
            let text = if body.gzip {
                let mut out = String::new();
                flate2::read::GzDecoder::new(&body.bytes[..])
                    .read_to_string(&mut out)
                    .expect("valid gzip");
                out
            } else {
                String::from_utf8(body.bytes.to_vec()).expect("utf-8")
            };
            // Let time pass like a real request would.
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.bodies.lock().expect("lock").push(text.clone());
            (self.script.lock().expect("lock"))(&text)
        }
    }

    fn ok() -> Reply {
        status(204, "")
    }
    fn status(code: u16, body: &str) -> Reply {
        Reply::Status {
            status: code,
            retry_after: None,
            body: body.into(),
        }
    }

    #[derive(Default)]
    struct Recorder {
        delivered: Mutex<Vec<u64>>,
        dead: Mutex<Vec<u64>>,
    }
    impl DeliveryHook for Recorder {
        fn delivered(&self, seqs: &[u64]) {
            self.delivered.lock().expect("lock").extend_from_slice(seqs);
        }
        fn dead_lettered(&self, seqs: &[u64]) {
            self.dead.lock().expect("lock").extend_from_slice(seqs);
        }
    }
    impl Recorder {
        /// Every seq in 0..n settled exactly once; returns (delivered, dead).
        fn check_exactly_once(&self, n: u64) -> (Vec<u64>, Vec<u64>) {
            let mut delivered = self.delivered.lock().expect("lock").clone();
            let mut dead = self.dead.lock().expect("lock").clone();
            delivered.sort_unstable();
            dead.sort_unstable();
            let mut all: Vec<u64> = delivered.iter().chain(&dead).copied().collect();
            all.sort_unstable();
            assert_eq!(
                all,
                (0..n).collect::<Vec<_>>(),
                "each point settled exactly once"
            );
            (delivered, dead)
        }
    }

    struct Harness {
        transport: Arc<Scripted>,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
        give_up: CancellationToken,
        dir: tempfile::TempDir,
        tx: Option<mpsc::Sender<Point>>,
        task: Option<tokio::task::JoinHandle<()>>,
    }

    fn settings() -> WriterSettings {
        WriterSettings {
            api: ApiVersion::V1,
            encoder: Encoder::new(Precision::Ns, UnsignedMode::Integer),
            batch_lines: 100,
            batch_bytes: 1 << 20,
            flush_interval: Duration::from_secs(1),
            max_in_flight: 2,
            gzip: true,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            auth_retry: Duration::from_secs(30),
        }
    }

    fn start(
        settings: WriterSettings,
        script: impl FnMut(&str) -> Reply + Send + 'static,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::new());
        let dead_letters = Arc::new(
            DeadLetters::open(
                Sink::Influx,
                &dir.path().join("influx.jsonl"),
                1 << 30,
                2,
                Default::default(),
            )
            .expect("open"),
        );
        let transport = Arc::new(Scripted::new(script));
        let recorder = Arc::new(Recorder::default());
        let give_up = CancellationToken::new();
        let shared = Shared::new(
            transport.clone(),
            settings,
            metrics.clone(),
            dead_letters,
            recorder.clone(),
            give_up.clone(),
        );
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(run(rx, shared));
        Harness {
            transport,
            recorder,
            metrics,
            give_up,
            dir,
            tx: Some(tx),
            task: Some(task),
        }
    }

    impl Harness {
        async fn send(&self, points: impl IntoIterator<Item = Point>) {
            let tx = self.tx.as_ref().expect("open");
            for p in points {
                tx.send(p).await.expect("writer alive");
            }
        }
        async fn finish(&mut self) {
            self.tx = None;
            if let Some(task) = self.task.take() {
                task.await.expect("writer task");
            }
        }
        fn bodies(&self) -> Vec<String> {
            self.transport.bodies.lock().expect("lock").clone()
        }
        fn dead_letters(&self) -> Vec<Value> {
            std::fs::read_to_string(self.dir.path().join("influx.jsonl"))
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).expect("json line"))
                .collect()
        }
        fn dropped(&self, reason: &str) -> u64 {
            let needle =
                format!("sluice_sink_dropped_total{{sink=\"influx\",reason=\"{reason}\"}} ");
            self.metrics
                .encode()
                .lines()
                .find_map(|l| l.strip_prefix(&needle).and_then(|n| n.parse().ok()))
                .unwrap_or(0)
        }
    }

    fn p(i: i64) -> Point {
        Point {
            measurement: "m".into(),
            tags: vec![("node".into(), "n1".into())],
            fields: vec![("v".into(), FieldValue::Int(i))],
            timestamp_ns: Some(i),
        }
    }
    fn points(n: i64) -> Vec<Point> {
        (0..n).map(p).collect()
    }
    fn lines_in(bodies: &[String]) -> usize {
        bodies.iter().map(|b| b.lines().count()).sum()
    }

    #[tokio::test]
    async fn bodies_are_gzipped_inline_or_on_the_blocking_pool() {
        let gunzip = |body: &Body| {
            let mut text = Vec::new();
            flate2::read::GzDecoder::new(&body.bytes[..])
                .read_to_end(&mut text)
                .expect("valid gzip");
            text
        };
        let small = Bytes::from_static(b"m v=1i 1\n");
        let large: Bytes = b"environment,node=node1 temperature=27.6 1700000000000000000\n"
            .repeat(2 * INLINE_GZIP_MAX / 50)
            .into();
        assert!(large.len() > INLINE_GZIP_MAX);
        for raw in [small, large] {
            let body = request_body(raw.clone(), true).await;
            assert!(body.gzip);
            assert_eq!(gunzip(&body), raw);
            let plain = request_body(raw.clone(), false).await;
            assert!(!plain.gzip);
            assert_eq!(plain.bytes, raw);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_by_lines_then_by_time() {
        let mut h = start(settings(), |_| ok());
        h.send(points(250)).await;
        h.finish().await;
        let bodies = h.bodies();
        let mut sizes: Vec<usize> = bodies.iter().map(|b| b.lines().count()).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, vec![50, 100, 100]);
        assert_eq!(h.metrics.influx.points_delivered.get(), 250);
        let (delivered, dead) = h.recorder.check_exactly_once(250);
        assert_eq!((delivered.len(), dead.len()), (250, 0));
        assert!(bodies[0].starts_with("m,node=n1 v=0i 0\n"), "{}", bodies[0]);
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_after_the_interval_without_more_points() {
        let h = start(settings(), |_| ok());
        h.send(points(3)).await;
        let start = Instant::now();
        while h.metrics.influx.points_delivered.get() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Paused time: deterministic, the flush happens at the interval.
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(h.bodies().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_by_bytes() {
        let line_len = "m,node=n1 v=10i 10\n".len();
        let mut s = settings();
        s.batch_bytes = line_len * 4;
        let mut h = start(s, |_| ok());
        h.send((10..30).map(p)).await;
        h.finish().await;
        for body in h.bodies() {
            assert!(body.len() <= line_len * 4, "{body:?}");
        }
        assert_eq!(lines_in(&h.bodies()), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_5xx_and_connection_errors_until_delivered() {
        let mut calls = 0;
        let mut h = start(settings(), move |_| {
            calls += 1;
            match calls {
                1 => Reply::Failed("connection refused".into()),
                2 => status(503, "{\"error\":\"overloaded\"}"),
                3 => status(500, "timeout"),
                _ => ok(),
            }
        });
        h.send(points(10)).await;
        h.finish().await;
        assert_eq!(h.bodies().len(), 4, "same batch sent until accepted");
        assert!(h.bodies().iter().all(|b| b == &h.bodies()[0]));
        assert_eq!(h.metrics.influx.requests_count("retry"), 3);
        let (delivered, dead) = h.recorder.check_exactly_once(10);
        assert_eq!((delivered.len(), dead.len()), (10, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after() {
        let mut calls = 0;
        let mut h = start(settings(), move |_| {
            calls += 1;
            if calls == 1 {
                Reply::Status {
                    status: 429,
                    retry_after: Some(Duration::from_secs(30)),
                    body: String::new(),
                }
            } else {
                ok()
            }
        });
        let start = Instant::now();
        h.send(points(100)).await;
        h.finish().await;
        assert!(
            start.elapsed() >= Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(h.metrics.influx.points_delivered.get(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn splits_on_413() {
        let mut h = start(settings(), |body| {
            if body.lines().count() > 30 {
                status(413, "{\"error\":\"Request Entity Too Large\"}")
            } else {
                ok()
            }
        });
        h.send(points(100)).await;
        h.finish().await;
        let accepted: Vec<String> = h
            .bodies()
            .into_iter()
            .filter(|b| b.lines().count() <= 30)
            .collect();
        assert_eq!(lines_in(&accepted), 100);
        let (delivered, _) = h.recorder.check_exactly_once(100);
        assert_eq!(delivered.len(), 100);
        assert_eq!(h.dropped("too_large"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_line_too_large_is_dead_lettered() {
        let mut h = start(settings(), |body| {
            if body.contains("v=7i") {
                status(413, "too large")
            } else {
                ok()
            }
        });
        h.send(points(10)).await;
        h.finish().await;
        let (delivered, dead) = h.recorder.check_exactly_once(10);
        assert_eq!((delivered.len(), dead), (9, vec![7]));
        assert_eq!(h.dropped("too_large"), 1);
    }

    /// 1.x style: the server names the line; one extra request.
    #[tokio::test(start_paused = true)]
    async fn isolates_a_bad_line_the_server_names() {
        let mut h = start(settings(), |body| {
            if let Some(bad) = body.lines().find(|l| l.contains("v=42i")) {
                status(
                    400,
                    &serde_json::json!({"error": format!("partial write: unable to parse '{bad}': invalid field format dropped=0")}).to_string(),
                )
            } else {
                ok()
            }
        });
        h.send(points(100)).await;
        h.finish().await;
        assert_eq!(h.bodies().len(), 2, "{:?}", h.bodies());
        let (delivered, dead) = h.recorder.check_exactly_once(100);
        assert_eq!((delivered.len(), dead), (99, vec![42]));
        let letters = h.dead_letters();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0]["line"], "m,node=n1 v=42i 42");
        assert_eq!(letters[0]["status"], 400);
        assert!(
            letters[0]["message"].as_str().is_some_and(
                |m| m.starts_with("unable to parse 'm,node=n1 v=42i 42': invalid field format")
            ),
            "{}",
            letters[0]
        );
        assert_eq!(h.dropped("server_rejected"), 1);
    }

    /// A type conflict names no line: bisect.
    #[tokio::test(start_paused = true)]
    async fn bisects_when_the_server_names_no_line() {
        let mut h = start(settings(), |body| {
            if body.contains("v=13i") || body.contains("v=77i") {
                status(
                    400,
                    "{\"error\":\"partial write: field type conflict dropped=1\"}",
                )
            } else {
                ok()
            }
        });
        h.send(points(100)).await;
        h.finish().await;
        let (delivered, dead) = h.recorder.check_exactly_once(100);
        assert_eq!((delivered.len(), dead), (98, vec![13, 77]));
        let letters = h.dead_letters();
        assert_eq!(letters.len(), 2);
        assert_eq!(
            letters[0]["message"],
            "partial write: field type conflict dropped=1"
        );
        assert!(
            h.bodies().len() < 40,
            "bisection is logarithmic: {}",
            h.bodies().len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn v3_partial_write_dead_letters_named_lines_only() {
        let mut s = settings();
        s.api = ApiVersion::V3;
        let mut h = start(s, |body| {
            let bad: Vec<Value> = body
                .lines()
                .enumerate()
                .filter(|(_, l)| l.contains("v=5i") || l.contains("v=6i"))
                .map(|(n, l)| serde_json::json!({"original_line": l, "line_number": n + 1, "error_message": "invalid column type"}))
                .collect();
            if bad.is_empty() {
                ok()
            } else {
                status(400, &serde_json::json!({"error": "partial write of line protocol occurred", "data": bad}).to_string())
            }
        });
        h.send(points(10)).await;
        h.finish().await;
        assert_eq!(h.bodies().len(), 1, "the rest was written; nothing resent");
        let (delivered, dead) = h.recorder.check_exactly_once(10);
        assert_eq!((delivered.len(), dead), (8, vec![5, 6]));
        assert_eq!(h.dead_letters()[0]["message"], "invalid column type");
    }

    #[tokio::test(start_paused = true)]
    async fn unauthorized_keeps_data_and_retries_slowly_until_fixed() {
        let mut calls = 0;
        let mut h = start(settings(), move |_| {
            calls += 1;
            if calls <= 3 {
                status(401, "{\"error\":\"authorization failed\"}")
            } else {
                ok()
            }
        });
        let start = Instant::now();
        h.send(points(10)).await;
        h.finish().await;
        assert!(
            start.elapsed() >= Duration::from_secs(90),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(h.metrics.influx.requests_count("unauthorized"), 3);
        let (delivered, _) = h.recorder.check_exactly_once(10);
        assert_eq!(delivered.len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn missing_database_is_not_a_bad_line() {
        let mut calls = 0;
        let mut h = start(settings(), move |_| {
            calls += 1;
            match calls {
                1 => status(404, "{\"error\":\"database not found: \\\"x\\\"\"}"),
                2 => status(400, "{\"error\":\"retention policy not found: rp\"}"),
                _ => ok(),
            }
        });
        h.send(points(10)).await;
        h.finish().await;
        let (delivered, _) = h.recorder.check_exactly_once(10);
        assert_eq!(delivered.len(), 10);
        assert_eq!(h.metrics.influx.requests_count("not_found"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn unencodable_points_are_dead_lettered_with_a_reason() {
        let mut h = start(settings(), |_| ok());
        let mut bad = p(1);
        bad.fields[0].1 = FieldValue::Float(f64::NAN);
        let mut big = p(2);
        big.fields[0].1 = FieldValue::UInt(u64::MAX);
        h.send([p(0), bad, big, p(3)]).await;
        h.finish().await;
        let (delivered, dead) = h.recorder.check_exactly_once(4);
        assert_eq!((delivered, dead), (vec![0, 3], vec![1, 2]));
        assert_eq!(h.dropped("non_finite_field"), 1);
        assert_eq!(h.dropped("unsigned_out_of_range"), 1);
        let letters = h.dead_letters();
        assert_eq!(letters[0]["point"]["measurement"], "m");
    }

    #[tokio::test(start_paused = true)]
    async fn backpressure_when_the_server_is_down() {
        let mut s = settings();
        s.batch_lines = 10;
        s.max_in_flight = 2;
        let h = start(s, |_| status(503, ""));
        let tx = h.tx.clone().expect("open");
        let mut sent = 0;
        // 2 batches in flight + 1 being filled + 16 in the channel, then full.
        for i in 0..1000 {
            match tokio::time::timeout(Duration::from_secs(5), tx.send(p(i))).await {
                Ok(Ok(())) => sent += 1,
                _ => break,
            }
        }
        assert!(
            sent <= 2 * 10 + 10 + 16 + 1,
            "sent {sent}: the writer must stop taking points"
        );
        assert!(sent >= 20, "sent {sent}");
    }

    #[tokio::test(start_paused = true)]
    async fn giving_up_at_shutdown_dead_letters_everything_unsettled() {
        let mut h = start(settings(), |_| Reply::Failed("connection refused".into()));
        h.send(points(250)).await;
        tokio::time::sleep(Duration::from_secs(20)).await;
        h.give_up.cancel();
        h.finish().await;
        let (delivered, dead) = h.recorder.check_exactly_once(250);
        assert_eq!((delivered.len(), dead.len()), (0, 250));
        assert_eq!(h.dropped("shutdown_undelivered"), 250);
        assert_eq!(h.dead_letters().len(), 250);
    }

    #[test]
    fn quoted_lines_are_found_exactly() {
        let lines: Vec<&[u8]> = vec![b"a x=1 1", b"b s=\"it': \" 2", b"c x= 3"];
        let message =
            "unable to parse 'b s=\"it': \" 2': bad\nunable to parse 'c x= 3': missing field value";
        let bad = quoted_bad_lines(message, &lines);
        assert_eq!(
            bad,
            vec![
                (1, "unable to parse 'b s=\"it': \" 2': bad".to_string()),
                (
                    2,
                    "unable to parse 'c x= 3': missing field value".to_string()
                )
            ]
        );
        assert!(quoted_bad_lines("unable to parse 'zzz': x", &lines).is_empty());
    }

    #[test]
    fn classification() {
        let lines: Vec<&[u8]> = vec![b"a x=1 1"];
        let v1 = |reply| classify(ApiVersion::V1, &reply, &lines);
        assert_eq!(v1(ok()), Verdict::Delivered);
        assert!(matches!(v1(status(503, "")), Verdict::Retry { .. }));
        assert!(matches!(v1(status(408, "")), Verdict::Retry { .. }));
        assert!(matches!(
            v1(Reply::Failed("x".into())),
            Verdict::Retry { .. }
        ));
        assert!(matches!(v1(status(413, "")), Verdict::TooLarge { .. }));
        assert!(matches!(
            v1(status(403, "")),
            Verdict::Stuck {
                outcome: "unauthorized",
                ..
            }
        ));
        assert!(matches!(
            v1(status(405, "")),
            Verdict::Stuck {
                outcome: "misconfigured",
                ..
            }
        ));
        assert!(matches!(
            v1(status(
                400,
                "{\"code\":\"not found\",\"message\":\"bucket not found\"}"
            )),
            Verdict::Stuck {
                outcome: "not_found",
                ..
            }
        ));
        match v1(status(
            422,
            "{\"code\":\"unprocessable entity\",\"message\":\"points beyond retention policy\"}",
        )) {
            Verdict::Rejected { message, bad, .. } => {
                assert_eq!(message, "points beyond retention policy");
                assert!(bad.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }
}
