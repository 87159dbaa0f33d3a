//! Chaos tests of the durable log, all against the real
//! thing: `sluice run` as a separate process with a `data_dir`, a pty fed at
//! a steady rate with numbered frames `{"seq":N}` (each becomes one MQTT
//! message `iiot/stats/seq` and one InfluxDB point `gateway_stats.seq`), a
//! real mosquitto with an independent persistent-session QoS 1 subscriber,
//! and a real influxd. The sluice process's RSS is sampled throughout and
//! must stay under [`RSS_BOUND_KIB`].
//!
//! * [`sigkill_five_times_while_the_feed_runs`]: SIGKILL at five random
//!   moments (seeded: the seed is printed, `SLUICE_CHAOS_SEED=N` replays it)
//!   while the feed keeps running, restart each time. What may be lost is
//!   exactly what had not been committed to the outbox when the process died
//!   (see [`COMMIT_WINDOW`]); everything else reaches both sinks.
//! * [`both_sinks_down_past_the_bound`]: both sinks away while the outboxes
//!   overflow, first with `drop_oldest` (every missing frame is counted as a
//!   drop, one warning per episode), then with `block` (nothing dropped; the
//!   backpressure reaches the pty).
//! * [`broker_and_influx_outages_while_the_feed_runs`]: the broker, then
//!   InfluxDB, away for [`OUTAGE`] each with the default backoff caps;
//!   nothing at all may be lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice::pty::Pty;
use sluice_tests::{
    FeedLog, Feeder, Influxd, Mosquitto, Received, RssSampler, SluiceProcess, Subscriber,
    eventually_every, free_port, metric, mosquitto_sub, wasm,
};

/// Bound on the sluice process's resident memory during every test here.
/// Generous (an idle host is ~30–60 MiB); it catches a queue that grows
/// with the outage or the backlog instead of staying on disk.
const RSS_BOUND_KIB: u64 = 256 * 1024;

/// How long a frame may take from the pty to a committed outbox record on
/// this (loaded, 2-core) machine. A frame whose write completed more than
/// this before a SIGKILL must have been committed, so it must be delivered;
/// frames written later may have died with the process (in the kernel's
/// buffer, the pipeline's queues, or the outbox writer's batch) — the
/// durability promise is "committed to the outbox ⇒ delivered", and this is
/// the window the test grants for "not yet committed". Normally a few ms.
const COMMIT_WINDOW: Duration = Duration::from_secs(2);

/// Frames per second of the steady feed.
const RATE: u32 = 200;

/// Each outage of [`broker_and_influx_outages_while_the_feed_runs`]: long
/// enough for a real outage's backoff. With the default backoff (MQTT 200 ms doubling to
/// 30 s, InfluxDB 100 ms doubling to 30 s) it takes the reconnect loop
/// through seven or eight doublings, so the sinks come back on a long,
/// jittered backoff as after a real outage (up to ~26 s after the restart,
/// which the waits below allow for).
const OUTAGE: Duration = Duration::from_secs(30);

struct Setup {
    broker: Mosquitto,
    influx: Influxd,
    pty: Pty,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    admin: u16,
}

fn setup(client: &str, extra: &str) -> Setup {
    let broker = Mosquitto::start();
    let influx = Influxd::start();
    influx.create_database("plant");
    let pty = Pty::open().expect("openpty");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    let admin = free_port();
    let setup = Setup {
        broker,
        influx,
        pty,
        dir,
        config,
        admin,
    };
    write_config(&setup, client, extra);
    setup
}

fn write_config(s: &Setup, client: &str, extra: &str) {
    let text = format!(
        r#"
version = 1
data_dir = "{data}"
[admin]
listen = "127.0.0.1:{admin}"
[mqtt]
host = "127.0.0.1"
port = {broker}
client_id = "{client}"
stats_interval_secs = 0
{mqtt_extra}
[influx]
url = "{influx}"
database = "plant"
batch_lines = 500
flush_interval_ms = 100
{influx_extra}
[[pipeline]]
name = "gw"
serial = {{ path = "{pty}" }}
transform = {{ module = "{module}" }}
"#,
        data = s.dir.path().display(),
        admin = s.admin,
        broker = s.broker.port,
        influx = s.influx.url(),
        pty = s.pty.path.display(),
        module = wasm::JSON_TELEMETRY,
        mqtt_extra = section(extra, "mqtt"),
        influx_extra = section(extra, "influx"),
    );
    std::fs::write(&s.config, text).expect("config");
}

/// The lines of `extra` after `[<name>]` up to the next `[name]` line: a
/// tiny way to give each sink table its own extra keys from one string.
fn section(extra: &str, name: &str) -> String {
    let mut out = String::new();
    let mut current = "";
    for line in extra.lines() {
        let t = line.trim();
        if let Some(header) = t.strip_prefix("[sink:").and_then(|h| h.strip_suffix(']')) {
            current = header;
            continue;
        }
        if current == name {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The persistent-session QoS 1 subscriber (id `<client>-sub`), an RSS
/// sampler, and `sluice run` on the setup's config (sampled).
fn start(s: &Setup, client: &str) -> (Subscriber, RssSampler, SluiceProcess) {
    let subscriber = mosquitto_sub(
        s.broker.port,
        "iiot/stats/seq",
        &["-c", "-i", &format!("{client}-sub"), "-x", "3600"],
    );
    let rss = RssSampler::start();
    let sluice = SluiceProcess::run_config(&s.config);
    rss.watch(&sluice);
    (subscriber, rss, sluice)
}

/// Distinct sequence numbers stored in `gateway_stats`, with how many
/// points carry each (paged: InfluxDB 1.x caps rows per answer).
fn stored(influx: &Influxd, below: u64) -> BTreeMap<u64, u32> {
    let mut out = BTreeMap::new();
    let mut from = 0;
    while from < below {
        let q = format!(
            "SELECT seq FROM gateway_stats WHERE seq >= {from} AND seq < {}",
            from + 5000
        );
        let reply = influx.query("plant", &q);
        if let Some(rows) = reply["results"][0]["series"][0]["values"].as_array() {
            for row in rows {
                let seq = row[1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .or(row[1].as_u64());
                if let Some(seq) = seq {
                    *out.entry(seq).or_insert(0) += 1;
                }
            }
        }
        from += 5000;
    }
    out
}

/// How many times the subscriber received each sequence number, and the
/// order of first arrivals.
fn received_seqs(got: &[Received]) -> (BTreeMap<u64, u32>, Vec<u64>) {
    let mut count = BTreeMap::new();
    let mut first = Vec::new();
    for r in got {
        let seq: u64 = r.payload.parse().expect("a sequence number");
        let n = count.entry(seq).or_insert(0);
        if *n == 0 {
            first.push(seq);
        }
        *n += 1;
    }
    (count, first)
}

/// Waits until `done()` or `timeout` (polling every 200 ms: some checks
/// query InfluxDB).
fn wait(timeout: Duration, done: impl FnMut() -> bool) -> bool {
    eventually_every(timeout, Duration::from_millis(200), done)
}

/// A small seeded generator (xorshift64*): reproducible random kill times
/// without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn seed() -> u64 {
    std::env::var("SLUICE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// One SIGKILL: when, and the restart that followed.
struct Kill {
    at: Instant,
    ready: Instant,
}

/// Asserts that every sequence number in `0..total` is `present` except
/// those inside one of the `windows` (per kill, inclusive); returns the
/// missing ones per window. Each sink is checked on its own: a frame can die
/// after its MQTT record was committed and before its point was.
fn missing_outside(
    what: &str,
    present: &BTreeMap<u64, u32>,
    total: u64,
    windows: &[(u64, u64)],
) -> Vec<Vec<u64>> {
    let mut per_kill = vec![Vec::new(); windows.len()];
    let mut unexplained = Vec::new();
    for seq in 0..total {
        if present.contains_key(&seq) {
            continue;
        }
        match windows
            .iter()
            .position(|(lo, hi)| (*lo..=*hi).contains(&seq))
        {
            Some(k) => per_kill[k].push(seq),
            None => unexplained.push(seq),
        }
    }
    unexplained.truncate(20);
    assert!(
        unexplained.is_empty(),
        "{what}: frames missing outside every kill window {windows:?}: {unexplained:?}…"
    );
    per_kill
}

/// SIGKILL five times at random moments while the feed keeps running.
///
/// The window of a kill at time K, with the restarted host ready (it logged
/// "sluice running") at time R: from the first frame whose write completed
/// after K − [`COMMIT_WINDOW`] to the last frame written before R. A frame
/// outside every window must be in the subscriber's record and in InfluxDB;
/// a frame inside may be missing (it was not committed when the process
/// died, or it reached the pty while no process read it — bytes a restarted
/// process finds in the pty buffer are read, so usually these arrive too),
/// and the test prints how many were missing per kill and per sink.
/// Per-topic order holds over the whole run (first arrivals), and
/// duplicates (re-sends of committed but unconfirmed items) are counted, not
/// failures.
#[test]
fn sigkill_five_times_while_the_feed_runs() {
    let seed = seed();
    println!("SLUICE_CHAOS_SEED={seed}");
    let mut rng = Rng::new(seed);
    let s = setup(
        "chaos-kill",
        "[sink:mqtt]\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n[sink:influx]\nretry_min_ms = 50\nretry_max_ms = 200\n",
    );
    let (subscriber, rss, mut sluice) = start(&s, "chaos-kill");
    let feeder = Feeder::start(&s.pty.master, 0, RATE, None);
    let mut kills = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1500 + rng.below(2500)));
        let at = Instant::now();
        sluice.kill();
        std::thread::sleep(Duration::from_millis(rng.below(1000)));
        sluice = SluiceProcess::run_config(&s.config);
        rss.watch(&sluice);
        kills.push(Kill {
            at,
            ready: Instant::now(),
        });
    }
    // The last stretch runs undisturbed.
    std::thread::sleep(Duration::from_secs(3));
    let log: FeedLog = feeder.stop();
    let total = log.next();
    let windows: Vec<(u64, u64)> = kills
        .iter()
        .map(|k| {
            let lo = log
                .written_at
                .iter()
                .position(|t| *t + COMMIT_WINDOW > k.at)
                .unwrap_or(log.written_at.len()) as u64;
            let hi = log
                .written_at
                .iter()
                .rposition(|t| *t < k.ready)
                .unwrap_or(0) as u64;
            (lo, hi)
        })
        .collect();

    // Everything outside the windows arrives; the last frame (written long
    // after the last restart) marks the end.
    let last = total - 1;
    subscriber.wait_until(Duration::from_secs(60), |got| {
        got.iter().any(|r| r.payload == last.to_string())
    });
    assert!(
        wait(Duration::from_secs(60), || stored(&s.influx, total)
            .contains_key(&last)),
        "InfluxDB never got the last frame:\n{}",
        sluice.log()
    );
    // Let re-sends and the InfluxDB backlog settle.
    let mut points = stored(&s.influx, total);
    wait(Duration::from_secs(30), || {
        let now = stored(&s.influx, total);
        let settled = now == points;
        points = now;
        settled
    });
    let got = subscriber.received();
    let (mqtt, first) = received_seqs(&got);
    let mqtt_lost = missing_outside("MQTT", &mqtt, total, &windows);
    let influx_lost = missing_outside("InfluxDB", &points, total, &windows);

    // InfluxDB: a point per frame at most (re-sends overwrite themselves).
    let doubled: Vec<_> = points.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(doubled.is_empty(), "points stored twice: {doubled:?}");
    // MQTT order: the outbox is FIFO across restarts (what was committed
    // and unconfirmed is re-sent before anything newer, frames read after a
    // restart are appended after it), so the first arrivals are in order
    // over the whole run; re-sends only add duplicates.
    let out_of_order: Vec<_> = first.windows(2).filter(|w| w[0] >= w[1]).take(10).collect();
    assert!(out_of_order.is_empty(), "per-topic order: {out_of_order:?}");
    // Per kill: how many frames each sink lost, and when the earliest of
    // them was written relative to the kill (negative: before it).
    for (k, kill) in kills.iter().enumerate() {
        let at = |seqs: &[u64]| {
            seqs.first().map(|seq| {
                let t = log.written_at[(*seq - log.first) as usize];
                if t >= kill.at {
                    (t - kill.at).as_millis() as i64
                } else {
                    -((kill.at - t).as_millis() as i64)
                }
            })
        };
        println!(
            "kill {k}: window {:?}; lost MQTT {} (earliest written {:?} ms from the kill), InfluxDB {} ({:?} ms)",
            windows[k],
            mqtt_lost[k].len(),
            at(&mqtt_lost[k]),
            influx_lost[k].len(),
            at(&influx_lost[k]),
        );
    }
    let duplicates: u32 = mqtt.values().map(|n| n - 1).sum();
    let (max_rss, samples) = rss.max_kib();
    println!(
        "{total} frames; {duplicates} MQTT duplicates; max RSS {max_rss} KiB over {samples} samples"
    );
    assert!(samples > 0 && max_rss < RSS_BOUND_KIB, "RSS {max_rss} KiB");
    assert!(sluice.stop(), "{}", sluice.log());
}

/// The sample of `name{labels}` in sluice's `/metrics`.
fn counter(s: &Setup, series: &str) -> u64 {
    metric(s.admin, series) as u64
}

/// The log's lines without colour codes.
fn plain_lines(log: &str) -> Vec<String> {
    let mut plain = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(at) = rest.find('\x1b') {
        plain.push_str(&rest[..at]);
        rest = &rest[at..];
        rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
    }
    plain.push_str(rest);
    plain.lines().map(str::to_owned).collect()
}

/// Outbox `sink`'s "full" warnings: at least one, and never two without
/// a "has room again" between them (one warning per episode; a refill
/// after the outbox was back under half its bound is a new episode).
fn warnings_once_per_episode(log: &str, sink: &str, full: &str) -> usize {
    let warnings = warnings_at_most_once_per_episode(log, sink, full);
    assert!(warnings > 0, "{sink}: no warning:\n{log}");
    warnings
}

/// [`warnings_once_per_episode`], where none at all is fine too.
fn warnings_at_most_once_per_episode(log: &str, sink: &str, full: &str) -> usize {
    let outbox = format!("outbox={sink}");
    let mut warnings = 0;
    let mut open = false;
    for line in plain_lines(log).iter().filter(|l| l.contains(&outbox)) {
        if line.contains("WARN") && line.contains(full) {
            assert!(!open, "{sink}: a second warning in one episode:\n{log}");
            open = true;
            warnings += 1;
        } else if line.contains("outbox has room again") {
            open = false;
        }
    }
    warnings
}

/// Waits until sluice has read `total` frames and both outboxes stopped
/// changing (everything read is appended, or dropped by the policy).
fn wait_absorbed(s: &Setup, total: u64) {
    assert!(
        wait(Duration::from_secs(60), || counter(
            s,
            r#"sluice_frames_received_total{pipeline="gw"}"#
        ) >= total),
        "sluice did not read every frame"
    );
    let depth = || {
        (
            counter(s, r#"sluice_outbox_items{sink="mqtt"}"#),
            counter(s, r#"sluice_outbox_items{sink="influx"}"#),
            counter(
                s,
                r#"sluice_sink_dropped_total{sink="mqtt",reason="outbox_overflow"}"#,
            ),
            counter(
                s,
                r#"sluice_sink_dropped_total{sink="influx",reason="outbox_overflow"}"#,
            ),
        )
    };
    let mut last = depth();
    wait(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(1000));
        let now = depth();
        let stable = now == last;
        last = now;
        stable
    });
}

/// Both sinks away while the outboxes overflow their bound (64 KiB each,
/// about a thousand items), first with `drop_oldest`, then with `block`.
///
/// `drop_oldest`: afterwards every frame missing from the subscriber's
/// record (resp. InfluxDB) is counted in
/// `sluice_sink_dropped_total{sink,reason="outbox_overflow"}`, and the
/// counter exceeds the number missing by at most what the sink had already
/// taken out of the outbox before the eviction (the MQTT publisher's
/// hand-over batch, rumqttc's request queue and in-flight window; the
/// InfluxDB feeder's writer window); each sink logs one warning for the
/// whole episode.
///
/// `block`: a queue of the durable log fills — it holds whole frames back,
/// so the other queue need not fill too — then the pipeline's queues, then
/// the pty's kernel buffer: the feeder's non-blocking writes find it full
/// (observed backpressure). Nothing is dropped anywhere, and after the
/// sinks come back every frame arrives in both.
#[test]
fn both_sinks_down_past_the_bound() {
    let extra = |policy: &str| {
        format!(
            "[sink:mqtt]\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n\
             [mqtt.outbox]\nmax_bytes = 65536\nwhen_full = \"{policy}\"\n\
             [sink:influx]\nretry_min_ms = 50\nretry_max_ms = 200\n\
             [influx.outbox]\nmax_bytes = 65536\nwhen_full = \"{policy}\"\n"
        )
    };
    let mut s = setup("chaos-full", &extra("drop_oldest"));
    let (subscriber, rss, mut sluice) = start(&s, "chaos-full");

    // --- drop_oldest -------------------------------------------------------
    let warm = Feeder::start(&s.pty.master, 0, 0, Some(300)).join().next();
    assert_eq!(warm, 300);
    assert!(
        wait(Duration::from_secs(60), || subscriber.received().len()
            >= 300
            && stored(&s.influx, 300).len() == 300),
        "warm-up:\n{}",
        sluice.log()
    );
    s.broker.stop();
    s.influx.stop();
    let total = Feeder::start(&s.pty.master, warm, 2000, Some(5000))
        .join()
        .next();
    wait_absorbed(&s, total);
    s.broker.restart();
    s.influx.restart();
    assert!(
        wait(Duration::from_secs(90), || counter(
            &s,
            r#"sluice_outbox_items{sink="mqtt"}"#
        ) == 0
            && counter(&s, r#"sluice_outbox_items{sink="influx"}"#) == 0),
        "the outboxes drain once the sinks are back:\n{}",
        sluice.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    let (mqtt, _) = received_seqs(&subscriber.received());
    let points = stored(&s.influx, total);
    let log = sluice.log();
    // What a sink may already have read from its outbox when the eviction
    // came (evicted, counted, and still delivered): the MQTT publisher's
    // hand-over batch (64), rumqttc's request queue (16) and the in-flight
    // window (max_inflight, 100); the InfluxDB feeder's window,
    // batch_lines × (max_batches_in_flight + 1) = 500 × 3.
    for (sink, present, handed) in [("mqtt", &mqtt, 64 + 16 + 100), ("influx", &points, 1500)] {
        let missing: Vec<u64> = (0..total).filter(|n| !present.contains_key(n)).collect();
        let dropped = counter(
            &s,
            &format!(r#"sluice_sink_dropped_total{{sink="{sink}",reason="outbox_overflow"}}"#),
        );
        println!(
            "drop_oldest, {sink}: {total} frames, {} missing, {dropped} counted as dropped",
            missing.len()
        );
        assert!(
            missing.iter().all(|n| *n >= warm),
            "{sink}: only frames of the outage may be dropped: {:?}",
            &missing[..missing.len().min(20)]
        );
        assert!(!missing.is_empty(), "{sink}: the outbox did overflow");
        assert!(
            missing.len() as u64 <= dropped && dropped <= missing.len() as u64 + handed,
            "{sink}: {} missing, {dropped} counted:\n{log}",
            missing.len()
        );
        warnings_once_per_episode(&log, sink, "dropping the oldest items");
    }

    // --- block ---------------------------------------------------------------
    assert!(sluice.stop(), "{}", sluice.log());
    write_config(&s, "chaos-full", &extra("block"));
    let mut sluice = SluiceProcess::run_config(&s.config);
    rss.watch(&sluice);
    s.broker.stop();
    s.influx.stop();
    let from = total;
    let feeder = Feeder::start(&s.pty.master, from, 0, None);
    assert!(
        wait(Duration::from_secs(120), || feeder.log().stalls >= 100),
        "the pty never filled up: {} frames written:\n{}",
        feeder.log().written_at.len(),
        sluice.log()
    );
    // The feeder may be half-way through a frame the full pty cannot take
    // until the sinks are back and sluice reads again: stop it starting new
    // frames, bring the sinks back, then wait for it.
    feeder.request_stop();
    s.broker.restart();
    s.influx.restart();
    let total = feeder.stop().next();
    println!(
        "block: the pty buffer was full after {} frames",
        total - from
    );
    let got = subscriber.wait_until(Duration::from_secs(120), |got| {
        let (seen, _) = received_seqs(got);
        (from..total).all(|n| seen.contains_key(&n))
    });
    let (mqtt, first) = received_seqs(&got);
    let missing: Vec<u64> = (from..total)
        .filter(|n| !mqtt.contains_key(n))
        .take(20)
        .collect();
    assert!(
        missing.is_empty(),
        "block, MQTT missing {missing:?}:\n{}",
        sluice.log()
    );
    let block_first: Vec<u64> = first.into_iter().filter(|n| *n >= from).collect();
    assert!(
        block_first.windows(2).all(|w| w[0] < w[1]),
        "block: per-topic order"
    );
    assert!(
        wait(Duration::from_secs(120), || {
            let points = stored(&s.influx, total);
            (from..total).all(|n| points.contains_key(&n))
        }),
        "block: every point reaches InfluxDB:\n{}",
        sluice.log()
    );
    let log = sluice.log();
    let mut warnings = 0;
    for sink in ["mqtt", "influx"] {
        let dropped = counter(
            &s,
            &format!(r#"sluice_sink_dropped_total{{sink="{sink}",reason="outbox_overflow"}}"#),
        );
        assert_eq!(dropped, 0, "block never drops ({sink})");
        warnings += warnings_at_most_once_per_episode(&log, sink, "when_full = block");
    }
    assert!(warnings > 0, "a full queue warned:\n{log}");
    let (max_rss, samples) = rss.max_kib();
    println!("max RSS {max_rss} KiB over {samples} samples");
    assert!(samples > 0 && max_rss < RSS_BOUND_KIB, "RSS {max_rss} KiB");
    assert!(sluice.stop(), "{}", sluice.log());
}

/// The broker away for [`OUTAGE`], then InfluxDB, while the feed runs at a
/// steady rate, with the default reconnect/retry backoff. Nothing may be
/// lost: every frame reaches the subscriber (first arrivals in order,
/// duplicates counted) and InfluxDB (exactly once).
#[test]
fn broker_and_influx_outages_while_the_feed_runs() {
    let mut s = setup("chaos-outage", "");
    let (subscriber, rss, mut sluice) = start(&s, "chaos-outage");
    let feeder = Feeder::start(&s.pty.master, 0, RATE, None);
    std::thread::sleep(Duration::from_secs(2));
    s.broker.stop();
    std::thread::sleep(OUTAGE);
    s.broker.restart();
    std::thread::sleep(Duration::from_secs(2));
    s.influx.stop();
    std::thread::sleep(OUTAGE);
    s.influx.restart();
    std::thread::sleep(Duration::from_secs(2));
    let total = feeder.stop().next();

    let got = subscriber.wait_until(Duration::from_secs(90), |got| {
        let (seen, _) = received_seqs(got);
        seen.len() as u64 >= total
    });
    let (mqtt, first) = received_seqs(&got);
    let missing: Vec<u64> = (0..total)
        .filter(|n| !mqtt.contains_key(n))
        .take(20)
        .collect();
    assert!(
        missing.is_empty(),
        "MQTT missing {missing:?}:\n{}",
        sluice.log()
    );
    assert_eq!(first, (0..total).collect::<Vec<_>>(), "per-topic order");
    let mut points = BTreeMap::new();
    assert!(
        wait(Duration::from_secs(90), || {
            points = stored(&s.influx, total);
            points.len() as u64 >= total
        }),
        "InfluxDB has {} of {total} points:\n{}",
        points.len(),
        sluice.log()
    );
    assert!(
        points.iter().all(|(seq, n)| *seq < total && *n == 1),
        "every point exactly once"
    );
    let duplicates: u32 = mqtt.values().map(|n| n - 1).sum();
    let (max_rss, samples) = rss.max_kib();
    println!(
        "{total} frames through two {OUTAGE:?} outages; {duplicates} MQTT duplicates; max RSS {max_rss} KiB"
    );
    assert!(samples > 0 && max_rss < RSS_BOUND_KIB, "RSS {max_rss} KiB");
    // Delivery latency: one observation per written point, and the outage
    // shows (points waited ≥ the outage in the outbox).
    let influx_latency = |part: &str| {
        sluice_tests::metric(
            s.admin,
            &format!("sluice_end_to_end_seconds_{part}{{sink=\"influx\"}}"),
        )
    };
    assert!(influx_latency("count") >= total as f64);
    assert!(influx_latency("sum") > OUTAGE.as_secs_f64());
    assert!(sluice.stop(), "{}", sluice.log());
}
