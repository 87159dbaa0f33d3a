//! The ceiling: a bare rumqttc publisher of pre-formatted messages — no
//! serial port, no decoding, nothing but a task calling
//! `AsyncClient::publish` and a task polling the event loop that sends and
//! reads acknowledgements (rumqttc's defaults: 100 in flight), on tokio's
//! multi-threaded runtime.
//!
//! It runs as a child process (`sluice-bench bare-publisher`) so its CPU
//! time and memory are measured like every other system under test's. It
//! publishes the same eleven messages per frame as json-telemetry (same
//! topics, same retain flags, the frame's sequence number on
//! `iiot/stats/seq`), and takes each frame's "write time" just before the
//! frame's first publish, with the bench's clock.
//!
//! Protocol on stdin/stdout: it prints `ready` once connected; each line
//! `step <first_seq> <rate|burst> <frames> <max_ms>` runs one step, after
//! which it writes the step's times as JSON ([`StepTimes`]) to
//! `<times-dir>/step-<first_seq>.json` and prints `done <path>`. It exits at
//! the end of stdin.
//!
//! With `--influx-port` it also writes each frame's four points, as the
//! line protocol json-telemetry's points become (pre-formatted but for the
//! `seq` field and the timestamp), in sluice's default batches: 5000 lines
//! or 1 s after a batch's first line, one `POST /write` each.

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};

use crate::util::mono_ns;

/// `sluice-bench bare-publisher` options.
#[derive(Debug, clap::Args)]
pub struct BareArgs {
    /// Broker port on 127.0.0.1.
    #[arg(long)]
    pub port: u16,
    /// QoS of every message.
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// MQTT client id.
    #[arg(long, default_value = "bare-publisher")]
    pub client_id: String,
    /// Where to write each step's times.
    #[arg(long)]
    pub times_dir: PathBuf,
    /// Also write the points to InfluxDB 1.x on this port of 127.0.0.1.
    #[arg(long, requires = "influx_db")]
    pub influx_port: Option<u16>,
    /// The database for `--influx-port`.
    #[arg(long)]
    pub influx_db: Option<String>,
}

/// Lines per InfluxDB write at most (sluice's `batch_lines` default).
const INFLUX_BATCH_LINES: usize = 5000;
/// A batch is written this long after its first line at the latest
/// (sluice's `flush_interval_ms` default).
const INFLUX_FLUSH: Duration = Duration::from_secs(1);

/// A frame's points but for `seq` and the timestamp: (line up to the
/// timestamp), in json-telemetry's order.
const POINT_LINES: [&str; 3] = [
    "environment,node=node1 temperature=27.6,humidity=54.1,battery=3.71",
    "environment,node=node2 temperature=26,humidity=50.2,battery=3.65",
    "signal rssi=-39i,snr=9.5",
];

/// What one step published, and when.
#[derive(Debug, Serialize, Deserialize)]
pub struct StepTimes {
    /// Publish time ([`mono_ns`]) of each frame's first message.
    pub times: Vec<u64>,
    /// Largest delay behind the schedule.
    pub max_lag_ns: u64,
}

/// A frame's messages other than `seq`: (topic, payload, retain), in the
/// order json-telemetry emits them for the sample line.
const FIXED: [(&str, &str, bool); 10] = [
    ("iiot/node1/temperature", "27.6", true),
    ("iiot/node1/humidity", "54.1", true),
    ("iiot/node1/battery", "3.71", true),
    ("iiot/node2/temperature", "26.0", true),
    ("iiot/node2/humidity", "50.2", true),
    ("iiot/node2/battery", "3.65", true),
    ("iiot/signal/rssi", "-39", true),
    ("iiot/signal/snr", "9.5", true),
    ("iiot/stats/rx", "1201", false),
    ("iiot/stats/crc_err", "3", false),
];

/// Runs the publisher until stdin ends.
pub fn main(args: BareArgs) -> Result<()> {
    let qos = match args.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        n => bail!("--qos {n}: 0, 1 or 2"),
    };
    std::fs::create_dir_all(&args.times_dir)
        .with_context(|| format!("creating {}", args.times_dir.display()))?;
    // The cheapest way to run rumqttc, as a ceiling should be: one thread,
    // so a frame's eleven publishes are queued before the event loop runs
    // and go out in one write (the vendored rumqttc batches ready requests,
    // as sluice's MQTT sink gets them). `#[tokio::main]`'s multi-threaded
    // runtime polls the event loop beside the publisher: a write per
    // message, 30-50 % more CPU per frame.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(run(args, qos))
}

async fn run(args: BareArgs, qos: QoS) -> Result<()> {
    let mut options = MqttOptions::new(&args.client_id, "127.0.0.1", args.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    // As sluice's MQTT sink: no Nagle.
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let points = match (args.influx_port, &args.influx_db) {
        (Some(port), Some(db)) => Some(spawn_influx_writer(port, db)),
        _ => None,
    };
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    tokio::spawn(async move {
        let mut connected = Some(connected_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = connected.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(tx) = connected.take() {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                    eprintln!("bare publisher: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    connected_rx
        .await
        .map_err(|_| anyhow!("event loop ended before connecting"))?
        .map_err(|e| anyhow!("connecting to 127.0.0.1:{}: {e}", args.port))?;
    say("ready")?;

    loop {
        let line = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map(|_| line)
        })
        .await
        .context("stdin reader")?
        .context("reading stdin")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let (first_seq, pace, frames, max_ms) = match words.as_slice() {
            [] => return Ok(()), // end of stdin
            ["step", first, pace, frames, max_ms] => (
                first.parse::<u64>().context("first_seq")?,
                match *pace {
                    "burst" => None,
                    rate => Some(rate.parse::<f64>().context("rate")?),
                },
                frames.parse::<u64>().context("frames")?,
                max_ms.parse::<u64>().context("max_ms")?,
            ),
            _ => bail!("unexpected command {line:?}"),
        };
        let step = publish_step(
            &client,
            points.as_ref(),
            qos,
            first_seq,
            pace,
            frames,
            max_ms,
        )
        .await?;
        let path = args.times_dir.join(format!("step-{first_seq}.json"));
        std::fs::write(&path, serde_json::to_vec(&step)?)
            .with_context(|| format!("writing {}", path.display()))?;
        say(&format!("done {}", path.display()))?;
    }
}

async fn publish_step(
    client: &AsyncClient,
    points: Option<&tokio::sync::mpsc::UnboundedSender<String>>,
    qos: QoS,
    first_seq: u64,
    rate: Option<f64>,
    frames: u64,
    max_ms: u64,
) -> Result<StepTimes> {
    let mut step = StepTimes {
        times: Vec::with_capacity(usize::try_from(frames).unwrap_or(0).min(4_000_000)),
        max_lag_ns: 0,
    };
    let start = mono_ns();
    let stop_at = start + max_ms * 1_000_000;
    for i in 0..frames {
        let scheduled = match rate {
            Some(rate) => start + (i as f64 * 1e9 / rate) as u64,
            None => mono_ns(),
        };
        let now = mono_ns();
        if now >= stop_at {
            break;
        }
        if scheduled > now {
            tokio::time::sleep(Duration::from_nanos(scheduled - now)).await;
        }
        let t = mono_ns();
        step.max_lag_ns = step.max_lag_ns.max(t.saturating_sub(scheduled));
        step.times.push(t);
        let seq = first_seq + i;
        client
            .publish("iiot/stats/seq", qos, false, seq.to_string())
            .await
            .context("publish")?;
        for (topic, payload, retain) in FIXED {
            client
                .publish(topic, qos, retain, payload)
                .await
                .context("publish")?;
        }
        if let Some(points) = points {
            let ts = epoch_ns();
            let mut lines = String::with_capacity(256);
            for line in POINT_LINES {
                lines.push_str(&format!("{line} {ts}\n"));
            }
            lines.push_str(&format!(
                "gateway_stats rx=1201i,crc_err=3i,seq={seq}i {ts}\n"
            ));
            points
                .send(lines)
                .map_err(|_| anyhow!("the InfluxDB writer stopped"))?;
        }
    }
    Ok(step)
}

/// Nanoseconds since the Unix epoch (the points' timestamps).
fn epoch_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The task that batches the frames' lines and writes them; frames are sent
/// to it as one string of lines each.
fn spawn_influx_writer(port: u16, db: &str) -> tokio::sync::mpsc::UnboundedSender<String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let url = format!("http://127.0.0.1:{port}/write?db={db}&precision=ns");
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut batch = String::new();
        let mut lines = 0usize;
        loop {
            // Wait for a batch's first frame, then fill it until it is full
            // or INFLUX_FLUSH has passed.
            let Some(first) = rx.recv().await else { break };
            batch.push_str(&first);
            lines += first.lines().count();
            let deadline = tokio::time::Instant::now() + INFLUX_FLUSH;
            while lines < INFLUX_BATCH_LINES {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(more)) => {
                        batch.push_str(&more);
                        lines += more.lines().count();
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let body = std::mem::take(&mut batch);
            lines = 0;
            match http.post(&url).body(body).send().await {
                Ok(answer) if answer.status().is_success() => {}
                Ok(answer) => eprintln!("bare publisher: InfluxDB answered {}", answer.status()),
                Err(e) => eprintln!("bare publisher: InfluxDB write failed: {e}"),
            }
        }
    });
    tx
}

fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
