//! Durable outbox throughput: append + ack of 120-byte records (a typical
//! MQTT message or encoded point) in batches of 1, 100 and 1000, with
//! `fsync = "always"` and `"interval"`, in items/s and MB/s of record
//! bytes, each against a baseline measured in the same run: the same bytes
//! written to a plain file with `write_all` and, for `always`, `sync_data`
//! after every batch (for `interval`, once per `fsync_interval_ms`). The
//! ratio is what redb's B-tree, copy-on-write pages, commit and the acks
//! cost over "just write the bytes". The outbox runs each case twice: with
//! the acks in the next batch's append transaction (`append_and_ack`, what
//! the durable queue does) and with an `ack` commit of their own.
//!
//! Then 1,000,000 queued items: fill time, file size, open time (which
//! verifies every page's checksum, the same work as crash recovery), and a
//! full read with `peek`.
//!
//! `cargo bench -p sluice --bench outbox`; `SLUICE_BENCH_DIR=/mnt/sd` runs it
//! on another disk (default: the system temp dir).
//!
//! A plain harness (no criterion), like the other benches: rounds interleave
//! the cases and the median is reported, which absorbs this machine's noise;
//! an fsync-bound case would also take criterion minutes to sample.

use std::io::Write as _;
use std::num::NonZeroU64;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice::outbox::{FsyncPolicy, Outbox, OutboxConfig};

const RECORD: usize = 120;
const ROUNDS: usize = 3;
/// Each case runs until this much time or `max_items`, whichever is first.
const CASE_TIME: Duration = Duration::from_millis(1500);
const INTERVAL_MS: u64 = 1000;
const MILLION: u64 = 1_000_000;

#[derive(Clone, Copy)]
struct Case {
    batch: usize,
    interval: bool,
}

impl Case {
    fn name(self) -> String {
        format!(
            "batch {:>4}, fsync {}",
            self.batch,
            if self.interval {
                "interval"
            } else {
                "always  "
            }
        )
    }
}

fn config(interval: bool) -> OutboxConfig {
    OutboxConfig {
        max_bytes: NonZeroU64::new(4 << 30).expect("non-zero"),
        fsync: if interval {
            FsyncPolicy::Interval
        } else {
            FsyncPolicy::Always
        },
        fsync_interval_ms: NonZeroU64::new(INTERVAL_MS).expect("non-zero"),
        ..OutboxConfig::default()
    }
}

fn record(i: u64) -> Vec<u8> {
    let mut r = vec![b'x'; RECORD];
    r[..8].copy_from_slice(&i.to_le_bytes());
    r
}

/// Items per second of append + ack through the outbox: with `combined`,
/// the way the durable queue's writer does it (one commit per batch that
/// appends it and acks the batch before), else an `append` and an `ack`
/// commit per batch.
fn run_outbox(dir: &Path, case: Case, combined: bool) -> f64 {
    let path = dir.join("bench.redb");
    let _ = std::fs::remove_file(&path);
    let outbox = Outbox::open(&path, config(case.interval)).expect("open");
    let records: Vec<Vec<u8>> = (0..case.batch as u64).map(record).collect();
    let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let start = Instant::now();
    let mut items = 0u64;
    let mut previous: Vec<u64> = Vec::new();
    while start.elapsed() < CASE_TIME {
        if combined {
            let appended = outbox
                .append_and_ack(&refs, &previous)
                .expect("append and ack");
            previous = appended.seqs.collect();
        } else {
            let appended = outbox.append(&refs).expect("append");
            let seqs: Vec<u64> = appended.seqs.collect();
            outbox.ack(&seqs).expect("ack");
        }
        items += case.batch as u64;
    }
    outbox.flush().expect("flush");
    let rate = items as f64 / start.elapsed().as_secs_f64();
    outbox.close().expect("close");
    rate
}

/// Items per second of writing the same bytes (record + 16 bytes of key and
/// timestamp) to a file.
fn run_baseline(dir: &Path, case: Case) -> f64 {
    let path = dir.join("baseline.bin");
    let mut file = std::fs::File::create(&path).expect("baseline file");
    let mut buf = Vec::with_capacity(case.batch * (RECORD + 16));
    for i in 0..case.batch as u64 {
        buf.extend_from_slice(&i.to_le_bytes());
        buf.extend_from_slice(&i.to_le_bytes());
        buf.extend_from_slice(&record(i));
    }
    let start = Instant::now();
    let mut last_sync = Instant::now();
    let mut items = 0u64;
    let mut written = 0u64;
    while start.elapsed() < CASE_TIME {
        file.write_all(&buf).expect("write");
        written += buf.len() as u64;
        if !case.interval || last_sync.elapsed() >= Duration::from_millis(INTERVAL_MS) {
            file.sync_data().expect("sync");
            last_sync = Instant::now();
        }
        items += case.batch as u64;
        // Keep the file small, as acks keep the outbox small.
        if written > 64 << 20 {
            file.set_len(0).expect("truncate");
            written = 0;
        }
    }
    file.sync_data().expect("sync");
    items as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn million(dir: &Path) {
    let path = dir.join("million.redb");
    let _ = std::fs::remove_file(&path);
    let outbox = Outbox::open(&path, config(false)).expect("open");
    let start = Instant::now();
    let batch = 10_000u64;
    for b in 0..MILLION / batch {
        let records: Vec<Vec<u8>> = (b * batch..(b + 1) * batch).map(record).collect();
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        outbox.append(&refs).expect("append");
    }
    let fill = start.elapsed();
    let stats = outbox.stats();
    outbox.close().expect("close");
    let file_bytes = std::fs::metadata(&path).expect("stat").len();

    let start = Instant::now();
    let outbox = Outbox::open(&path, config(false)).expect("reopen");
    let open = start.elapsed();
    assert_eq!(outbox.recovery().items, MILLION);

    let start = Instant::now();
    let mut after = None;
    let mut read = 0u64;
    loop {
        let items = outbox.peek(after, 1000, 1 << 20).expect("peek");
        let Some(last) = items.last() else { break };
        after = Some(last.seq);
        read += items.len() as u64;
    }
    let peek = start.elapsed();
    assert_eq!(read, MILLION);

    let start = Instant::now();
    let seqs: Vec<u64> = (0..MILLION).collect();
    for chunk in seqs.chunks(10_000) {
        outbox.ack(chunk).expect("ack");
    }
    outbox.flush().expect("flush");
    let ack = start.elapsed();
    let drained_bytes = std::fs::metadata(&path).expect("stat").len();

    // The background thread compacts the drained file within a tick; the
    // longest append meanwhile is the stall a sink sees.
    let start = Instant::now();
    let mut longest_append = Duration::ZERO;
    while outbox.stats().compactions == 0 && start.elapsed() < Duration::from_secs(10) {
        let t = Instant::now();
        let probe = outbox.append(&[b"probe"]).expect("probe");
        longest_append = longest_append.max(t.elapsed());
        outbox.ack(&[probe.seqs.start]).expect("ack probe");
        std::thread::sleep(Duration::from_millis(1));
    }
    let compacted = outbox.stats().compactions > 0;
    let compacted_after = start.elapsed();
    let compacted_bytes = std::fs::metadata(&path).expect("stat").len();
    outbox.close().expect("close");
    let empty_bytes = std::fs::metadata(&path).expect("stat").len();

    let mb = |d: Duration| (MILLION as f64 * RECORD as f64) / d.as_secs_f64() / 1e6;
    println!(
        "\n1,000,000 items of {RECORD} bytes (depth_bytes {}):",
        stats.depth_bytes
    );
    println!(
        "  fill, batches of 10,000, fsync always  {:>8.2} s  {:>9.0} items/s  {:>6.1} MB/s",
        fill.as_secs_f64(),
        MILLION as f64 / fill.as_secs_f64(),
        mb(fill)
    );
    println!(
        "  file size                              {:>8.1} MiB ({:.2} x the record bytes)",
        file_bytes as f64 / (1 << 20) as f64,
        file_bytes as f64 / (MILLION as f64 * RECORD as f64)
    );
    println!(
        "  open (integrity check of every page)   {:>8.2} s",
        open.as_secs_f64()
    );
    println!(
        "  peek all, 1000 per call                {:>8.2} s  {:>9.0} items/s",
        peek.as_secs_f64(),
        MILLION as f64 / peek.as_secs_f64()
    );
    println!(
        "  ack all, 10,000 per call               {:>8.2} s  {:>9.0} items/s",
        ack.as_secs_f64(),
        MILLION as f64 / ack.as_secs_f64()
    );
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    println!(
        "  file size once drained                 {:>8.1} MiB",
        mib(drained_bytes)
    );
    if compacted {
        println!(
            "  compacted by the background thread    {:>8.2} s later: {:.1} MiB; \
             longest append meanwhile {:.1} ms",
            compacted_after.as_secs_f64(),
            mib(compacted_bytes),
            longest_append.as_secs_f64() * 1e3
        );
    } else {
        println!("  NOT compacted within 10 s of draining");
    }
    println!(
        "  file size after close                  {:>8.1} MiB",
        mib(empty_bytes)
    );
}

fn main() {
    let tmp;
    let dir = match std::env::var_os("SLUICE_BENCH_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            tmp = tempfile::tempdir().expect("tempdir");
            tmp.path().to_owned()
        }
    };
    let cases: Vec<Case> = [false, true]
        .into_iter()
        .flat_map(|interval| [1, 100, 1000].map(|batch| Case { batch, interval }))
        .collect();
    let mut outbox_rates = vec![Vec::new(); cases.len()];
    let mut separate_rates = vec![Vec::new(); cases.len()];
    let mut base_rates = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (i, case) in cases.iter().enumerate() {
            base_rates[i].push(run_baseline(&dir, *case));
            outbox_rates[i].push(run_outbox(&dir, *case, true));
            separate_rates[i].push(run_outbox(&dir, *case, false));
        }
    }
    println!(
        "append + ack of {RECORD}-byte records in {}, median of {ROUNDS} rounds of {:.1} s per case",
        dir.display(),
        CASE_TIME.as_secs_f64()
    );
    println!(
        "baseline: the same bytes (+16 per item) with write_all (+ sync_data per batch for always, per {INTERVAL_MS} ms for interval)\n"
    );
    println!(
        "outbox/s: one commit per batch (append_and_ack, as the durable queue does); separate/s: an append and an ack commit per batch\n"
    );
    println!(
        "{:<28} {:>12} {:>9}   {:>14} {:>9}   {:>8}   {:>12} {:>8}",
        "case", "outbox/s", "MB/s", "baseline/s", "MB/s", "ratio", "separate/s", "ratio"
    );
    for (i, case) in cases.iter().enumerate() {
        let o = median(outbox_rates[i].clone());
        let sep = median(separate_rates[i].clone());
        let b = median(base_rates[i].clone());
        println!(
            "{:<28} {:>12.0} {:>9.2}   {:>14.0} {:>9.2}   {:>8.3}   {:>12.0} {:>8.3}",
            case.name(),
            o,
            o * RECORD as f64 / 1e6,
            b,
            b * RECORD as f64 / 1e6,
            o / b,
            sep,
            sep / b
        );
    }
    million(&dir);
}
