//! Dead-letter files: what a sink gave up on, one JSON object per line, so
//! nothing leaves without a trace.
//!
//! `<data_dir>/dead-letter/<sink>.jsonl`; when it would grow past its bound
//! it is rotated (`influx.jsonl.1`, `.2`, …, keeping a number of files in
//! all; the oldest is deleted).
//!
//! ```json
//! {"time":"2025-01-31T12:00:00.123456789Z","sink":"influx","reason":"server_rejected","status":400,"message":"partial write: …","line":"m,t=x v=1 1700000000000000000"}
//! {"time":"…","sink":"mqtt","reason":"broker_disconnects","status":null,"message":"…","topic":"a/b","qos":1,"retain":false,"payload_base64":"eHh4","payload":"xxx"}
//! ```
//!
//! InfluxDB: `line` is the exact line protocol that was refused, so it can be
//! fixed and replayed (`jq -r .line influx.jsonl | curl --data-binary @- …`);
//! a point that could not be encoded at all carries `point` (its JSON form)
//! instead. MQTT: the message with its payload's bytes (`payload_base64`,
//! and `payload` when it is UTF-8).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::metrics::{Metrics, SinkDrop};
use crate::model::Sink;
use crate::sync::lock;

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// Why (also counted as `sink_dropped{sink, reason}`).
    pub reason: SinkDrop,
    /// HTTP status from the server, if it answered.
    pub status: Option<u16>,
    /// The server's (or the encoder's) message.
    pub message: &'a str,
    /// The line protocol line (without its `\n`), or the point as JSON.
    pub content: Content<'a>,
}

/// What was dead-lettered.
#[derive(Debug, Clone)]
pub enum Content<'a> {
    /// An encoded line.
    Line(&'a [u8]),
    /// A point that could not be encoded.
    Point(Value),
    /// An MQTT message.
    Message {
        /// Topic.
        topic: &'a str,
        /// Payload bytes.
        payload: &'a [u8],
        /// QoS (0, 1, 2).
        qos: u8,
        /// Retain flag.
        retain: bool,
    },
}

/// The dead-letter file (shared by the writer's tasks).
pub struct DeadLetters {
    /// The sink's name (the `sink` field and metric label).
    sink: Sink,
    /// Counted when the file cannot be written.
    write_failures: prometheus_client::metrics::counter::Counter,
    path: PathBuf,
    max_bytes: u64,
    max_files: u16,
    state: Mutex<State>,
}

struct State {
    file: Option<File>,
    size: u64,
}

impl DeadLetters {
    /// Opens (creates) the file and its directory for `sink`;
    /// `write_failures` counts the writes that fail.
    pub fn open(
        sink: Sink,
        path: &Path,
        max_bytes: u64,
        max_files: u16,
        write_failures: prometheus_client::metrics::counter::Counter,
    ) -> std::io::Result<DeadLetters> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(DeadLetters {
            sink,
            write_failures,
            path: path.to_owned(),
            max_bytes,
            max_files: max_files.max(1),
            state: Mutex::new(State {
                file: Some(file),
                size,
            }),
        })
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `letters` (and counts each as `sink_dropped{sink, reason}`).
    /// A failing disk is logged and counted, never fatal.
    pub fn write(&self, letters: &[DeadLetter<'_>], metrics: &Metrics) {
        if letters.is_empty() {
            return;
        }
        let time = rfc3339_now();
        let mut buffer = Vec::with_capacity(letters.len() * 128);
        for letter in letters {
            metrics.sink_dropped(self.sink, letter.reason);
            let mut entry = json!({
                "time": time,
                "sink": self.sink.as_str(),
                "reason": letter.reason.label(self.sink),
                "status": letter.status,
                "message": letter.message,
            });
            match &letter.content {
                Content::Line(line) => {
                    entry["line"] = Value::from(String::from_utf8_lossy(line).into_owned());
                }
                Content::Point(point) => entry["point"] = point.clone(),
                Content::Message {
                    topic,
                    payload,
                    qos,
                    retain,
                } => {
                    use base64::Engine as _;
                    entry["topic"] = Value::from(*topic);
                    entry["qos"] = Value::from(*qos);
                    entry["retain"] = Value::from(*retain);
                    entry["payload_base64"] =
                        Value::from(base64::engine::general_purpose::STANDARD.encode(payload));
                    if let Ok(text) = std::str::from_utf8(payload) {
                        entry["payload"] = Value::from(text);
                    }
                }
            }
            // Serializing a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut buffer, &entry);
            buffer.push(b'\n');
        }
        let mut state = lock(&self.state);
        if let Err(err) = self.append(&mut state, &buffer) {
            self.write_failures.inc();
            tracing::error!(sink = %self.sink, path = %self.path.display(), error = %err, lines = letters.len(),
                "cannot write dead letters; they are counted but lost");
        }
    }

    fn append(&self, state: &mut State, bytes: &[u8]) -> std::io::Result<()> {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if state.size > 0 && state.size.saturating_add(len) > self.max_bytes {
            state.file = None;
            self.rotate()?;
            state.size = 0;
        }
        if state.file.is_none() {
            state.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        if let Some(file) = &mut state.file {
            file.write_all(bytes)?;
            file.flush()?;
        }
        state.size = state.size.saturating_add(len);
        Ok(())
    }

    fn rotated(&self, n: u16) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&self) -> std::io::Result<()> {
        if self.max_files <= 1 {
            return match std::fs::remove_file(&self.path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            };
        }
        let oldest = self.max_files - 1;
        let _ = std::fs::remove_file(self.rotated(oldest));
        for n in (1..oldest).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1))
    }
}

/// Now as RFC 3339 UTC with nanoseconds.
fn rfc3339_now() -> String {
    rfc3339(crate::model::now_ns())
}

fn rfc3339(ns: u64) -> String {
    crate::model::rfc3339(ns, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_709_210_096_123_456_789),
            "2024-02-29T12:34:56.123456789Z"
        );
    }

    #[test]
    fn writes_json_lines_counts_and_rotates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dead-letter").join("influx.jsonl");
        let metrics = Metrics::new();
        let letters =
            DeadLetters::open(Sink::Influx, &path, 400, 3, Default::default()).expect("open");
        let letter = DeadLetter {
            reason: SinkDrop::ServerRejected,
            status: Some(400),
            message: "unable to parse 'm x=': missing field value",
            content: Content::Line(b"m,t=a\\ b x=\"q\\\"\" 1"),
        };
        letters.write(std::slice::from_ref(&letter), &metrics);
        let text = std::fs::read_to_string(&path).expect("read");
        let entry: Value = serde_json::from_str(text.trim()).expect("json");
        assert_eq!(entry["line"], "m,t=a\\ b x=\"q\\\"\" 1");
        assert_eq!(entry["reason"], "server_rejected");
        assert_eq!(entry["status"], 400);
        assert!(entry["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(
            metrics.encode().contains(
                "sluice_sink_dropped_total{sink=\"influx\",reason=\"server_rejected\"} 1"
            )
        );
        for _ in 0..20 {
            letters.write(std::slice::from_ref(&letter), &metrics);
        }
        assert!(path.exists());
        assert!(letters.rotated(1).exists());
        assert!(letters.rotated(2).exists());
        assert!(!letters.rotated(3).exists(), "only 3 files are kept");
        for file in [path.clone(), letters.rotated(1)] {
            let len = std::fs::metadata(&file).expect("meta").len();
            assert!(len <= 400, "{} is {len} bytes", file.display());
        }
    }
}
