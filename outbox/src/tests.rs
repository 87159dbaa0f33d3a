//! Outbox tests: behaviour, bounds, TTL, damaged files, a model-based
//! property test, crash safety with real `SIGKILL`s, and a full disk.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use rand::Rng as _;

use super::*;

fn config(max_bytes: u64) -> OutboxConfig {
    OutboxConfig {
        max_bytes: NonZeroU64::new(max_bytes).expect("non-zero"),
        ..OutboxConfig::default()
    }
}

fn fake_clock(start: u64) -> (Arc<AtomicU64>, Clock) {
    let now = Arc::new(AtomicU64::new(start));
    let read = now.clone();
    (now, Arc::new(move || read.load(Ordering::SeqCst)))
}

/// A record that says which item it is: index (u64 LE) then `len` bytes of
/// `index as u8`.
fn indexed(index: u64, len: usize) -> Vec<u8> {
    let mut r = index.to_le_bytes().to_vec();
    r.resize(8 + len, index as u8);
    r
}

fn index_of(record: &[u8]) -> Result<u64, String> {
    let (head, tail) = record
        .split_first_chunk::<8>()
        .ok_or_else(|| format!("record of {} bytes", record.len()))?;
    let index = u64::from_le_bytes(*head);
    if tail.iter().any(|&b| b != index as u8) {
        return Err(format!("record {index}: filler damaged"));
    }
    Ok(index)
}

fn refs(records: &[Vec<u8>]) -> Vec<&[u8]> {
    records.iter().map(Vec::as_slice).collect()
}

fn all(outbox: &Outbox) -> Vec<Item> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let batch = outbox.peek(after, 1000, usize::MAX).expect("peek");
        let Some(last) = batch.last() else {
            return out;
        };
        after = Some(last.seq);
        out.extend(batch);
    }
}

#[test]
fn append_peek_ack_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = path_in(dir.path(), "mqtt");
    let (_, clock) = fake_clock(1_000);
    let outbox = Outbox::open_with(&path, config(1 << 20), clock.clone(), true).expect("open");
    assert_eq!(outbox.recovery().items, 0);
    assert!(!outbox.recovery().repaired);
    let records: Vec<Vec<u8>> = (0..10).map(|i| indexed(i, i as usize)).collect();
    let a = outbox.append(&refs(&records[..4])).expect("append");
    assert_eq!(a.seqs, 0..4);
    let watch = outbox.subscribe();
    assert_eq!(*watch.borrow(), 4);
    let b = outbox.append(&refs(&records[4..])).expect("append");
    assert_eq!(b.seqs, 4..10);
    assert_eq!(*watch.borrow(), 10, "the watch follows appends");
    assert_eq!(outbox.append(&[]).expect("empty").seqs, 10..10);

    let items = outbox.peek(None, 3, usize::MAX).expect("peek");
    assert_eq!(items.iter().map(|i| i.seq).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(items[2].record, records[2]);
    assert_eq!(items[2].enqueued_ms, 1_000);
    // Byte limit: stops before exceeding, but returns at least one item.
    let items = outbox.peek(Some(2), 100, 8 + 3 + 8 + 4).expect("peek");
    assert_eq!(items.iter().map(|i| i.seq).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(outbox.peek(Some(8), 100, 0).expect("peek").len(), 1);
    assert!(outbox.peek(Some(9), 100, 100).expect("peek").is_empty());
    assert!(
        outbox
            .peek(Some(u64::MAX), 100, 100)
            .expect("peek")
            .is_empty()
    );
    let newest = outbox.peek_newest(None, 3, usize::MAX).expect("newest");
    assert_eq!(newest.iter().map(|i| i.seq).collect::<Vec<_>>(), [9, 8, 7]);
    let newest = outbox.peek_newest(Some(2), 5, usize::MAX).expect("newest");
    assert_eq!(newest.iter().map(|i| i.seq).collect::<Vec<_>>(), [1, 0]);
    let range = outbox.peek_range(3..6, 10, usize::MAX).expect("range");
    assert_eq!(range.iter().map(|i| i.seq).collect::<Vec<_>>(), [3, 4, 5]);

    assert_eq!(outbox.ack(&[0, 1, 5, 5, 42]).expect("ack"), 3);
    let stats = outbox.stats();
    assert_eq!(stats.depth_items, 7);
    let bytes: u64 = [2u64, 3, 4, 6, 7, 8, 9].iter().map(|&i| 8 + i + 16).sum();
    assert_eq!(stats.depth_bytes, bytes);
    assert_eq!(stats.appended, 10);
    assert_eq!(stats.acked, 3);
    assert_eq!(stats.oldest_enqueued_ms, Some(1_000));
    assert_eq!(stats.next_seq, 10);
    outbox.close().expect("close");

    let outbox = Outbox::open_with(&path, config(1 << 20), clock, true).expect("reopen");
    assert!(!outbox.recovery().repaired, "closed cleanly");
    assert_eq!(outbox.recovery().items, 7);
    assert_eq!(outbox.recovery().bytes, bytes);
    let seqs: Vec<u64> = all(&outbox).iter().map(|i| i.seq).collect();
    assert_eq!(seqs, [2, 3, 4, 6, 7, 8, 9]);
    // Sequence numbers keep increasing after everything is acked and reopened.
    outbox.ack(&seqs).expect("ack all");
    assert_eq!(outbox.stats().depth_bytes, 0);
    assert_eq!(outbox.stats().oldest_enqueued_ms, None);
    drop(outbox);
    let outbox = Outbox::open(&path, config(1 << 20)).expect("reopen");
    assert_eq!(outbox.append(&[b"x"]).expect("append").seqs, 10..11);
}

#[test]
fn a_second_open_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let first = Outbox::open(&path, OutboxConfig::default()).expect("open");
    let err = Outbox::open(&path, OutboxConfig::default()).expect_err("second open");
    assert!(matches!(err, OutboxError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("x.redb"), "{err}");
    // Nothing was moved aside.
    assert_eq!(file_names(dir.path()), ["x.journal", "x.redb"]);
    drop(first);
}

#[test]
fn drop_oldest_evicts_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let mut cfg = config(100 * 3);
    cfg.when_full = QueueFullPolicy::DropOldest;
    let outbox = Outbox::open(&path, cfg).expect("open");
    let r: Vec<Vec<u8>> = (0..5).map(|i| indexed(i, 100 - 16 - 8)).collect();
    outbox.append(&refs(&r[..3])).expect("fits");
    assert_eq!(outbox.stats().depth_bytes, 300);
    let a = outbox.append(&refs(&r[3..])).expect("evicts");
    assert_eq!((a.seqs, a.evicted), (3..5, 2));
    let seqs: Vec<u64> = all(&outbox).iter().map(|i| i.seq).collect();
    assert_eq!(seqs, [2, 3, 4]);
    let stats = outbox.stats();
    assert_eq!((stats.dropped_overflow, stats.depth_items), (2, 3));
    // Acking an evicted item is a no-op.
    assert_eq!(outbox.ack(&[0, 1]).expect("ack"), 0);
    let err = outbox.append(&[&[0u8; 300]]).expect_err("too large");
    assert!(
        matches!(err, OutboxError::TooLarge { needed: 316, .. }),
        "{err}"
    );
}

#[test]
fn block_refuses_until_there_is_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = Arc::new(Outbox::open(dir.path().join("x.redb"), config(200)).expect("open"));
    let a = outbox.append(&[&[1u8; 84], &[2u8; 84]]).expect("fits");
    let err = outbox.append(&[&[3u8; 10]]).expect_err("full");
    assert!(
        matches!(
            err,
            OutboxError::Full {
                needed: 26,
                depth_bytes: 200,
                max_bytes: 200,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(outbox.stats().refused_full, 1);
    assert_eq!(outbox.stats().depth_items, 2, "nothing written");
    assert!(!outbox.wait_for_room(26, Duration::from_millis(20)));
    let acker = {
        let outbox = outbox.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            outbox.ack(&[a.seqs.start]).expect("ack");
        })
    };
    assert!(outbox.wait_for_room(26, Duration::from_secs(10)));
    acker.join().expect("acker");
    assert_eq!(outbox.append(&[&[3u8; 10]]).expect("room").seqs, 2..3);
}

#[test]
fn items_expire_by_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (now, clock) = fake_clock(1_000_000);
    let mut cfg = config(1 << 20);
    cfg.max_age_secs = NonZeroU64::new(10);
    let outbox = Outbox::open_with(&dir.path().join("x.redb"), cfg, clock, true).expect("open");
    outbox.append(&[b"a", b"b"]).expect("append");
    now.store(1_005_000, Ordering::SeqCst);
    outbox.append(&[b"c"]).expect("append");
    assert_eq!(outbox.expire().expect("expire"), 0);
    now.store(1_010_001, Ordering::SeqCst);
    assert_eq!(outbox.expire().expect("expire"), 2);
    assert_eq!(outbox.stats().dropped_expired, 2);
    assert_eq!(outbox.stats().oldest_enqueued_ms, Some(1_005_000));
    // An append expires what is due in its own transaction.
    now.store(1_020_000, Ordering::SeqCst);
    let a = outbox.append(&[b"d"]).expect("append");
    assert_eq!((a.seqs, a.expired), (3..4, 1));
    assert_eq!(all(&outbox).len(), 1);
    let stats = outbox.stats();
    assert_eq!((stats.dropped_expired, stats.depth_bytes), (3, 17));
}

/// Appends are staged in memory once journaled and move into redb with the
/// checkpoint that retires the journal; a reader following the queue
/// meanwhile must see every item exactly once, in order, wherever it is at
/// that moment.
#[test]
fn a_reader_sees_each_item_once_while_items_move_into_the_file() {
    const ITEMS: u64 = 10_000;
    const LEN: usize = 1000;
    // Several journals' worth: several checkpoints.
    assert!(ITEMS * LEN as u64 > 2 * journal::JOURNAL_BYTES);
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = Arc::new(Outbox::open(dir.path().join("x.redb"), config(64 << 20)).expect("open"));
    let confirmed = Arc::new(Mutex::new(Vec::<u64>::new()));
    let writer = {
        let (outbox, confirmed) = (outbox.clone(), confirmed.clone());
        std::thread::spawn(move || {
            let mut rng = rand::rng();
            let mut next = 0u64;
            while next < ITEMS {
                let n = rng.random_range(1..=5).min(ITEMS - next);
                let records: Vec<Vec<u8>> = (next..next + n).map(|i| indexed(i, LEN)).collect();
                let acks = std::mem::take(&mut *confirmed.lock().expect("lock"));
                outbox
                    .append_and_ack(&refs(&records), &acks)
                    .expect("append");
                next += n;
            }
        })
    };
    let mut after = None;
    let mut expected = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while expected < ITEMS {
        assert!(Instant::now() < deadline, "stuck at item {expected}");
        let batch = outbox.peek(after, 7, usize::MAX).expect("peek");
        for item in &batch {
            assert_eq!(index_of(&item.record), Ok(expected), "at seq {}", item.seq);
            if let Some(previous) = after {
                assert_eq!(item.seq, previous + 1, "sequence numbers follow each other");
            }
            after = Some(item.seq);
            expected += 1;
        }
        confirmed
            .lock()
            .expect("lock")
            .extend(batch.iter().map(|item| item.seq));
    }
    writer.join().expect("writer");
    let acks = std::mem::take(&mut *confirmed.lock().expect("lock"));
    outbox.ack(&acks).expect("ack");
    let stats = outbox.stats();
    assert_eq!((stats.depth_items, stats.depth_bytes), (0, 0));
    assert_eq!(stats.acked, ITEMS);
}

/// Items acked while still staged are gone for good after a clean close;
/// items not acked are in the file, whether they reached redb or not.
#[test]
fn staged_items_survive_a_close_and_acked_ones_stay_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let outbox = Outbox::open(&path, config(1 << 20)).expect("open");
    let records: Vec<Vec<u8>> = (0..10).map(|i| indexed(i, 10)).collect();
    let first = outbox.append(&refs(&records[..5])).expect("append").seqs;
    // Closing writes them to redb.
    outbox.close().expect("close");
    let outbox = Outbox::open(&path, config(1 << 20)).expect("open");
    let second = outbox.append(&refs(&records[5..])).expect("append").seqs;
    // One acked in redb, two acked while staged.
    let acked = [first.start, second.start, second.start + 1];
    assert_eq!(outbox.ack(&acked).expect("ack"), 3);
    assert_eq!(outbox.stats().depth_items, 7);
    // Reads run across the two: redb's items, then the staged ones.
    let indexes = |items: Vec<Item>| -> Vec<u64> {
        items
            .iter()
            .map(|item| index_of(&item.record).expect("record"))
            .collect()
    };
    assert_eq!(indexes(all(&outbox)), vec![1, 2, 3, 4, 7, 8, 9]);
    let newest = outbox.peek_newest(None, 5, usize::MAX).expect("peek");
    assert_eq!(indexes(newest), vec![9, 8, 7, 4, 3]);
    let middle = outbox.peek_range(first.start + 3..second.end - 1, 10, usize::MAX);
    assert_eq!(indexes(middle.expect("peek")), vec![3, 4, 7, 8]);
    outbox.close().expect("close");
    let outbox = Outbox::open(&path, config(1 << 20)).expect("reopen");
    let left: Vec<u64> = all(&outbox)
        .iter()
        .map(|item| index_of(&item.record).expect("record"))
        .collect();
    assert_eq!(left, vec![1, 2, 3, 4, 7, 8, 9]);
    let stats = outbox.stats();
    assert_eq!(stats.depth_items, 7);
    assert_eq!(stats.depth_bytes, 7 * cost(18));
}

#[test]
fn background_thread_expires_and_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (now, clock) = fake_clock(1_000_000);
    let mut cfg = config(1 << 20);
    cfg.max_age_secs = NonZeroU64::new(1);
    cfg.fsync = FsyncPolicy::Interval;
    cfg.fsync_interval_ms = NonZeroU64::new(50).expect("non-zero");
    let outbox = Outbox::open_with(&dir.path().join("x.redb"), cfg, clock, true).expect("open");
    let before = outbox.stats().durable_commits;
    outbox.append(&[b"a"]).expect("append");
    let deadline = Instant::now() + Duration::from_secs(10);
    while outbox.stats().durable_commits == before {
        assert!(Instant::now() < deadline, "no background flush");
        std::thread::sleep(Duration::from_millis(10));
    }
    now.store(1_002_000, Ordering::SeqCst);
    while outbox.stats().depth_items > 0 {
        assert!(Instant::now() < deadline, "no background expiry");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(outbox.stats().dropped_expired, 1);
}

#[test]
fn drain_sends_live_first_and_backlog_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = Outbox::open(dir.path().join("x.redb"), config(1 << 20)).expect("open");
    let r: Vec<Vec<u8>> = (0..6).map(|i| indexed(i, 4)).collect();
    outbox.append(&refs(&r)).expect("backlog");
    let mut drain = Drain::new(outbox.next_seq());
    assert_eq!(drain.split(), 6);
    assert!(drain.next_live(&outbox, 10, 1000).expect("live").is_empty());
    outbox.append(&[b"live0", b"live1"]).expect("live");
    let live = drain.next_live(&outbox, 10, 1000).expect("live");
    assert_eq!(live.iter().map(|i| i.seq).collect::<Vec<_>>(), [6, 7]);
    assert!(drain.next_live(&outbox, 10, 1000).expect("live").is_empty());
    let b1 = drain.next_backlog(&outbox, 4, 1000).expect("backlog");
    assert_eq!(b1.iter().map(|i| i.seq).collect::<Vec<_>>(), [0, 1, 2, 3]);
    outbox.append(&[b"live2"]).expect("live");
    assert_eq!(drain.next_live(&outbox, 10, 1000).expect("live")[0].seq, 8);
    let b2 = drain.next_backlog(&outbox, 4, 1000).expect("backlog");
    assert_eq!(b2.iter().map(|i| i.seq).collect::<Vec<_>>(), [4, 5]);
    assert!(drain.backlog_done());
    assert!(
        drain
            .next_backlog(&outbox, 4, 1000)
            .expect("backlog")
            .is_empty()
    );
    // The connection breaks with 1, 4 and 7 unconfirmed: they become backlog.
    outbox.ack(&[0, 2, 3, 5, 6, 8]).expect("ack");
    drain.restart(outbox.next_seq());
    let again = drain.next_backlog(&outbox, 10, 1000).expect("backlog");
    assert_eq!(again.iter().map(|i| i.seq).collect::<Vec<_>>(), [1, 4, 7]);
    assert!(Drain::new(0).backlog_done());
}

#[test]
fn drain_defers_live_items_it_fell_behind_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = Outbox::open(dir.path().join("x.redb"), config(1 << 20)).expect("open");
    let r: Vec<Vec<u8>> = (0..4).map(|i| indexed(i, 4)).collect();
    outbox.append(&refs(&r)).expect("backlog");
    let mut drain = Drain::new(outbox.next_seq());
    // Backlog 0..4; live 4, 5 handed out, then the sink falls behind.
    assert_eq!(drain.next_backlog(&outbox, 1, 1000).expect("b")[0].seq, 0);
    let r: Vec<Vec<u8>> = (4..10).map(|i| indexed(i, 4)).collect();
    outbox.append(&refs(&r)).expect("live");
    let live = drain.next_live(&outbox, 2, 1000).expect("live");
    assert_eq!(live.iter().map(|i| i.seq).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(drain.live_lag(outbox.next_seq()), 4);
    assert_eq!(drain.defer_live(outbox.next_seq()), 4);
    assert_eq!(drain.defer_live(outbox.next_seq()), 0, "idempotent");
    assert_eq!(drain.live_lag(outbox.next_seq()), 0);
    // New items are live; 6..10 wait behind the first backlog, never
    // handed out twice, and items evicted meanwhile are skipped.
    outbox.append(&[b"new"]).expect("live");
    assert_eq!(drain.next_live(&outbox, 10, 1000).expect("live")[0].seq, 10);
    outbox.ack(&[2, 7]).expect("ack");
    let mut backlog = Vec::new();
    loop {
        let items = drain.next_backlog(&outbox, 2, 1000).expect("backlog");
        if items.is_empty() {
            break;
        }
        backlog.extend(items.iter().map(|i| i.seq));
    }
    assert_eq!(backlog, [1, 3, 6, 8, 9]);
    assert!(drain.backlog_done());
}

#[test]
fn inspect_and_verify_report_depth_and_problems() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let (_, clock) = fake_clock(5_000);
    let outbox = Outbox::open_with(&path, config(1 << 20), clock, true).expect("open");
    let r: Vec<Vec<u8>> = (0..5).map(|i| indexed(i, 10)).collect();
    outbox.append(&refs(&r)).expect("append");
    outbox.append(&[b"bad"]).expect("append");
    outbox.ack(&[0]).expect("ack");
    assert!(matches!(inspect(&path), Err(OutboxError::InUse { .. })));
    assert!(matches!(
        verify(&path, |_| Ok(())),
        Err(OutboxError::InUse { .. })
    ));
    drop(outbox);
    let reports = inspect(&path).expect("inspect");
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    assert_eq!(report.queue, "");
    assert_eq!(report.items, 5);
    assert_eq!(report.bytes, 4 * (18 + 16) + 3 + 16);
    assert_eq!(report.oldest_enqueued_ms, Some(5_000));
    assert_eq!(report.seq_range, Some((1, 5)));
    assert_eq!(report.next_seq, 6);
    assert!(report.file_bytes > 0);
    let report = verify(&path, |r| index_of(r).map(|_| ())).expect("verify");
    assert!(report.closed_cleanly && !report.repaired, "{report:?}");
    assert_eq!((report.items, report.problem_count), (5, 1));
    assert!(report.problems[0].starts_with("item 5:"), "{report:?}");
    assert!(matches!(
        inspect(&dir.path().join("missing.redb")),
        Err(OutboxError::Io { .. })
    ));
    assert!(verify(&dir.path().join("missing.redb"), |_| Ok(())).is_err());
    assert!(
        !dir.path().join("missing.redb").exists(),
        "verify creates nothing"
    );
}

/// Builds a cleanly closed outbox of 2,000 indexed items.
fn filled(path: &Path) -> u64 {
    let outbox = Outbox::open(path, OutboxConfig::default()).expect("open");
    for batch in 0..20 {
        let r: Vec<Vec<u8>> = (0..100).map(|i| indexed(batch * 100 + i, 200)).collect();
        outbox.append(&refs(&r)).expect("append");
    }
    outbox.close().expect("close");
    2_000
}

/// Opens a damaged file: it must either open (every item it returns intact
/// and in order) or be quarantined, never panic, and then work.
fn open_damaged(path: &Path, what: &str) -> Recovery {
    let outbox = Outbox::open(path, OutboxConfig::default())
        .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    let recovery = outbox.recovery().clone();
    let items = all(&outbox);
    let mut last = None;
    for item in &items {
        let index = index_of(&item.record).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(last < Some(index), "{what}: order");
        last = Some(index);
    }
    if let Some(q) = &recovery.quarantined {
        assert!(items.is_empty(), "{what}");
        assert!(q.moved_to.exists(), "{what}");
        assert!(
            q.moved_to.to_string_lossy().contains(".redb.corrupt-"),
            "{what}: {}",
            q.moved_to.display()
        );
    }
    let a = outbox.append(&[b"after"]).expect("append after recovery");
    assert_eq!(
        outbox.peek_newest(None, 1, 100).expect("peek")[0].seq,
        a.seqs.start
    );
    outbox.close().expect("close");
    recovery
}

/// Damage done to a file's bytes.
type Damage = Box<dyn Fn(&mut Vec<u8>, &mut rand::rngs::ThreadRng)>;

#[test]
fn truncated_or_garbled_files_recover_or_are_quarantined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let mut rng = rand::rng();
    let mut quarantined = 0;
    let cases: Vec<(String, Damage)> = vec![
        ("empty file".into(), Box::new(|b, _| b.clear())),
        ("10 bytes".into(), Box::new(|b, _| b.truncate(10))),
        ("half".into(), Box::new(|b, _| b.truncate(b.len() / 2))),
        (
            "tail page cut".into(),
            Box::new(|b, _| b.truncate(b.len() - 4096)),
        ),
        (
            "last byte cut".into(),
            Box::new(|b, _| b.truncate(b.len() - 1)),
        ),
        (
            "tail zeroed".into(),
            Box::new(|b, _| {
                let n = b.len();
                b[n - 8192..].fill(0);
            }),
        ),
        ("header garbled".into(), Box::new(|b, _| b[..64].fill(0xa5))),
        ("god byte flipped".into(), Box::new(|b, _| b[9] ^= 0xff)),
        (
            "not a database".into(),
            Box::new(|b, _| {
                b.clear();
                b.extend_from_slice(b"version = 1\n");
            }),
        ),
        (
            "extended with garbage".into(),
            Box::new(|b, _| b.extend_from_slice(&[0x77; 10_000])),
        ),
    ];
    let mut cases = cases;
    for round in 0..12 {
        cases.push((
            format!("random bytes garbled, round {round}"),
            Box::new(|b, rng| {
                for _ in 0..rng.random_range(1..16) {
                    let at = rng.random_range(0..b.len());
                    b[at] ^= rng.random_range(1..=255u8);
                }
            }),
        ));
        cases.push((
            format!("random tail cut, round {round}"),
            Box::new(|b, rng| {
                let cut = rng.random_range(1..b.len() / 4);
                b.truncate(b.len() - cut);
            }),
        ));
    }
    for (what, damage) in &cases {
        let _ = std::fs::remove_file(&path);
        filled(&path);
        let mut bytes = std::fs::read(&path).expect("read");
        damage(&mut bytes, &mut rng);
        std::fs::write(&path, &bytes).expect("write");
        let recovery = open_damaged(&path, what);
        if recovery.quarantined.is_some() {
            quarantined += 1;
        }
        eprintln!(
            "{what}: {}",
            match &recovery.quarantined {
                Some(q) => format!("quarantined ({})", q.reason),
                None => format!("opened, {} of 2000 items", recovery.items),
            }
        );
    }
    assert!(quarantined > 0, "no case was quarantined");
    // Each quarantined file was kept beside the new one.
    let kept = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().contains("corrupt"))
        })
        .count();
    assert!(kept >= 1);
}

#[test]
fn a_newer_format_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    filled(&path);
    {
        let db = Database::create(&path).expect("redb");
        let txn = db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert(META_FORMAT, 2u32.to_le_bytes().as_slice())
            .expect("insert");
        txn.commit().expect("commit");
    }
    let err = Outbox::open(&path, OutboxConfig::default()).expect_err("newer");
    assert!(
        matches!(err, OutboxError::UnsupportedFormat { found: 2, .. }),
        "{err}"
    );
    assert_eq!(file_names(dir.path()), ["x.journal", "x.redb"]);
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---- property test against a model ---------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<usize>, Vec<prop::sample::Index>),
    Ack(Vec<prop::sample::Index>),
    AckUnknown(u64),
    Peek(Option<prop::sample::Index>, usize, usize),
    PeekNewest(Option<prop::sample::Index>, usize, usize),
    Advance(u64),
    Expire,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (
            proptest::collection::vec(0usize..60, 0..6),
            proptest::collection::vec(any::<prop::sample::Index>(), 0..3)
        )
            .prop_map(|(sizes, acks)| Op::Append(sizes, acks)),
        2 => proptest::collection::vec(any::<prop::sample::Index>(), 1..4).prop_map(Op::Ack),
        1 => (100u64..200).prop_map(Op::AckUnknown),
        2 => (proptest::option::of(any::<prop::sample::Index>()), 0usize..6, 0usize..200)
            .prop_map(|(a, n, b)| Op::Peek(a, n, b)),
        1 => (proptest::option::of(any::<prop::sample::Index>()), 0usize..6, 0usize..200)
            .prop_map(|(a, n, b)| Op::PeekNewest(a, n, b)),
        1 => (0u64..6_000).prop_map(Op::Advance),
        1 => Just(Op::Expire),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    items: VecDeque<(u64, u64, Vec<u8>)>,
    next_seq: u64,
    evicted: u64,
    expired: u64,
}

impl Model {
    fn bytes(&self) -> u64 {
        self.items.iter().map(|(_, _, r)| cost(r.len())).sum()
    }

    fn expire(&mut self, now: u64, max_age_ms: u64) -> u64 {
        let mut n = 0;
        while self
            .items
            .front()
            .is_some_and(|(_, ts, _)| *ts < now.saturating_sub(max_age_ms))
        {
            self.items.pop_front();
            n += 1;
        }
        n
    }

    fn limit(items: Vec<&(u64, u64, Vec<u8>)>, max_items: usize, max_bytes: usize) -> Vec<Item> {
        let mut out: Vec<Item> = Vec::new();
        let mut bytes = 0;
        for (seq, ts, r) in items {
            if out.len() >= max_items || (!out.is_empty() && bytes + r.len() > max_bytes) {
                break;
            }
            bytes += r.len();
            out.push(Item {
                seq: *seq,
                enqueued_ms: *ts,
                record: r.clone(),
            });
        }
        out
    }
}

fn check_model(outbox: &Outbox, model: &Model) -> Result<(), TestCaseError> {
    let stats = outbox.stats();
    prop_assert_eq!(stats.depth_items, model.items.len() as u64);
    prop_assert_eq!(stats.depth_bytes, model.bytes());
    prop_assert_eq!(stats.next_seq, model.next_seq);
    prop_assert_eq!(stats.oldest_enqueued_ms, model.items.front().map(|i| i.1));
    let stored: Vec<(u64, u64, Vec<u8>)> = all(outbox)
        .into_iter()
        .map(|i| (i.seq, i.enqueued_ms, i.record))
        .collect();
    prop_assert_eq!(stored, model.items.iter().cloned().collect::<Vec<_>>());
    Ok(())
}

const MAX_AGE_MS: u64 = 10_000;

fn run_model(ops: Vec<Op>, drop_oldest: bool, interval: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.redb");
    let (now, clock) = fake_clock(1_000_000);
    let mut cfg = config(400);
    cfg.max_age_secs = NonZeroU64::new(MAX_AGE_MS / 1000);
    cfg.when_full = if drop_oldest {
        QueueFullPolicy::DropOldest
    } else {
        QueueFullPolicy::Block
    };
    cfg.fsync = if interval {
        FsyncPolicy::Interval
    } else {
        FsyncPolicy::Always
    };
    let open = || Outbox::open_with(&path, cfg.clone(), clock.clone(), false).expect("open");
    let mut outbox = open();
    let mut model = Model::default();
    let mut counter = 0u8;
    for op in ops {
        match op {
            Op::Append(sizes, picks) => {
                // `append_and_ack`: the acks apply first, and whether or
                // not the append is refused.
                let mut acks: Vec<u64> = picks
                    .iter()
                    .filter(|_| !model.items.is_empty())
                    .map(|p| model.items[p.index(model.items.len())].0)
                    .collect();
                acks.sort_unstable();
                acks.dedup();
                model.items.retain(|(s, _, _)| !acks.contains(s));
                let records: Vec<Vec<u8>> = sizes
                    .iter()
                    .map(|&n| {
                        counter = counter.wrapping_add(1);
                        vec![counter; n]
                    })
                    .collect();
                let needed: u64 = records.iter().map(|r| cost(r.len())).sum();
                let acked_before = outbox.stats().acked;
                let result = outbox.append_and_ack(&refs(&records), &acks);
                prop_assert_eq!(
                    outbox.stats().acked - acked_before,
                    acks.len() as u64,
                    "{:?}",
                    result
                );
                let t = now.load(Ordering::SeqCst);
                if records.is_empty() {
                    prop_assert!(result.is_ok());
                    continue;
                }
                if needed > 400 {
                    prop_assert!(
                        matches!(result, Err(OutboxError::TooLarge { .. })),
                        "{:?}",
                        result
                    );
                    continue;
                }
                let saved = model.items.clone();
                let expired = model.expire(t, MAX_AGE_MS);
                let mut evicted = 0;
                if !drop_oldest && model.bytes() + needed > 400 {
                    model.items = saved;
                    prop_assert!(
                        matches!(result, Err(OutboxError::Full { .. })),
                        "{:?}",
                        result
                    );
                    continue;
                }
                while model.bytes() + needed > 400 {
                    model.items.pop_front();
                    evicted += 1;
                }
                let first = model.next_seq;
                for r in records {
                    model.items.push_back((model.next_seq, t, r));
                    model.next_seq += 1;
                }
                model.evicted += evicted;
                model.expired += expired;
                let a = result.expect("append");
                prop_assert_eq!(a.seqs, first..model.next_seq);
                prop_assert_eq!((a.evicted, a.expired), (evicted, expired));
            }
            Op::Ack(picks) => {
                if model.items.is_empty() {
                    continue;
                }
                let mut seqs: Vec<u64> = picks
                    .iter()
                    .map(|p| model.items[p.index(model.items.len())].0)
                    .collect();
                seqs.sort_unstable();
                seqs.dedup();
                model.items.retain(|(s, _, _)| !seqs.contains(s));
                prop_assert_eq!(outbox.ack(&seqs).expect("ack"), seqs.len() as u64);
            }
            Op::AckUnknown(seq) => {
                let seq = model.next_seq + seq;
                prop_assert_eq!(outbox.ack(&[seq]).expect("ack"), 0);
            }
            Op::Peek(after, n, b) => {
                let after = after
                    .filter(|_| !model.items.is_empty())
                    .map(|p| model.items[p.index(model.items.len())].0);
                let want = Model::limit(
                    model
                        .items
                        .iter()
                        .filter(|i| after.is_none_or(|a| i.0 > a))
                        .collect(),
                    n,
                    b,
                );
                prop_assert_eq!(outbox.peek(after, n, b).expect("peek"), want);
            }
            Op::PeekNewest(before, n, b) => {
                let before = before
                    .filter(|_| !model.items.is_empty())
                    .map(|p| model.items[p.index(model.items.len())].0);
                let want = Model::limit(
                    model
                        .items
                        .iter()
                        .rev()
                        .filter(|i| before.is_none_or(|e| i.0 < e))
                        .collect(),
                    n,
                    b,
                );
                prop_assert_eq!(outbox.peek_newest(before, n, b).expect("peek"), want);
            }
            Op::Advance(ms) => {
                now.fetch_add(ms, Ordering::SeqCst);
            }
            Op::Expire => {
                let t = now.load(Ordering::SeqCst);
                let n = model.expire(t, MAX_AGE_MS);
                model.expired += n;
                prop_assert_eq!(outbox.expire().expect("expire"), n);
            }
            Op::Reopen => {
                outbox.close().expect("close");
                outbox = open();
                // Counters count since open.
                model.evicted = 0;
                model.expired = 0;
            }
        }
        check_model(&outbox, &model)?;
        let stats = outbox.stats();
        prop_assert_eq!(stats.dropped_overflow, model.evicted);
        prop_assert_eq!(stats.dropped_expired, model.expired);
    }
    outbox.close().expect("close");
    let report = verify(&path, |_| Ok(())).expect("verify");
    prop_assert!(report.closed_cleanly && !report.repaired);
    prop_assert_eq!(report.problem_count, 0, "{:?}", report.problems);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn behaves_like_a_bounded_fifo(
        ops in proptest::collection::vec(op(), 1..40),
        drop_oldest in any::<bool>(),
        interval in any::<bool>(),
    ) {
        run_model(ops, drop_oldest, interval)?;
    }
}

// ---- crash safety with real SIGKILLs ---------------------------------------

/// Set in the child: `<db path>|<log path>|always|interval|<first index>`.
const CHILD_ENV: &str = "SLUICE_OUTBOX_CRASH_CHILD";

/// Not a test of its own: the child process of `survives_sigkill_*`
/// (returns at once without the environment variable).
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [db, log, mode, first] = parts[..] else {
        panic!("bad spec {spec}");
    };
    let interval = mode == "interval";
    let mut cfg = config(1 << 30);
    if interval {
        cfg.fsync = FsyncPolicy::Interval;
        cfg.fsync_interval_ms = NonZeroU64::new(20).expect("non-zero");
    }
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .expect("log");
    let mut say = |line: String| log.write_all(line.as_bytes()).expect("log write");
    let outbox = Outbox::open(db, cfg).expect("child open");
    say("opened\n".into());
    let mut unacked: VecDeque<(u64, u64)> = all(&outbox)
        .iter()
        .map(|i| (i.seq, index_of(&i.record).expect("index")))
        .collect();
    let mut next: u64 = first.parse().expect("first index");
    let mut rng = rand::rng();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let n = rng.random_range(1..=16u64);
        let records: Vec<Vec<u8>> = (next..next + n)
            .map(|i| indexed(i, rng.random_range(0..120)))
            .collect();
        say(format!("try {next} {n}\n"));
        let a = outbox.append(&refs(&records)).expect("append");
        say(format!("ok {next} {n}\n"));
        unacked.extend(a.seqs.zip(next..next + n));
        next += n;
        if rng.random_ratio(1, 3) && unacked.len() > 1 {
            let k = rng.random_range(1..=unacked.len() / 2);
            let done: Vec<(u64, u64)> = unacked.drain(..k).collect();
            let seqs: Vec<u64> = done.iter().map(|d| d.0).collect();
            say(format!("acking {}\n", done[k - 1].1));
            outbox.ack(&seqs).expect("ack");
            say(format!("ack {}\n", done[k - 1].1));
        }
        if interval && rng.random_ratio(1, 6) {
            outbox.flush().expect("flush");
        }
    }
    std::process::exit(0);
}

#[derive(Default, Debug)]
struct ChildLog {
    opened: bool,
    tried_hi: Option<u64>,
    confirmed_hi: Option<u64>,
    acked_hi: Option<u64>,
    ack_intent_hi: Option<u64>,
}

fn parse_log(text: &str) -> ChildLog {
    let mut log = ChildLog::default();
    // A line cut by the kill has no newline and is ignored.
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        match words.first().copied() {
            Some("opened") => log.opened = true,
            Some("try") => log.tried_hi = num(1).zip(num(2)).map(|(a, n)| a + n - 1),
            Some("ok") => log.confirmed_hi = num(1).zip(num(2)).map(|(a, n)| a + n - 1),
            Some("ack") => log.acked_hi = num(1),
            Some("acking") => log.ack_intent_hi = num(1),
            _ => {}
        }
    }
    log
}

fn sigkill_rounds(interval: bool, rounds: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("crash.redb");
    let log_path = dir.path().join("child.log");
    let err_path = dir.path().join("child.err");
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = rand::rng();
    // What the file held when the round started (durable: the parent closed it).
    let mut lo: Option<u64> = None;
    let mut hi: Option<u64> = None;
    let mut next_index = 0u64;
    let mut repaired_rounds = 0;
    let mut lost_total = 0u64;
    for round in 0..rounds {
        let _ = std::fs::remove_file(&log_path);
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "tests::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!(
                    "{}|{}|{}|{next_index}",
                    db.display(),
                    log_path.display(),
                    if interval { "interval" } else { "always" }
                ),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err_path).expect("stderr file"))
            .spawn()
            .expect("spawn child");
        // Let it open first most of the time; sometimes kill it while opening.
        let opened_deadline = Instant::now() + Duration::from_secs(30);
        if rng.random_ratio(4, 5) {
            while !std::fs::read_to_string(&log_path).is_ok_and(|t| t.starts_with("opened")) {
                assert!(Instant::now() < opened_deadline, "child never opened");
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "child exited with {status}: {}",
                        std::fs::read_to_string(&err_path).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(1..120)));
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "child exited early with {status}: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let log = parse_log(&std::fs::read_to_string(&log_path).unwrap_or_default());

        let outbox = Outbox::open(&db, config(1 << 30)).expect("reopen after kill");
        assert!(
            outbox.recovery().quarantined.is_none(),
            "round {round}: quarantined"
        );
        if outbox.recovery().repaired {
            repaired_rounds += 1;
        }
        let items = all(&outbox);
        let indices: Vec<u64> = items
            .iter()
            .map(|i| index_of(&i.record).unwrap_or_else(|e| panic!("round {round}: {e}")))
            .collect();
        let ctx = format!("round {round} ({log:?}, before {lo:?}..={hi:?})");
        // Exactly once, in order: consecutive indices, increasing seqs.
        for pair in indices.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "{ctx}: gap or duplicate");
        }
        for pair in items.windows(2) {
            assert!(pair[0].seq < pair[1].seq, "{ctx}: seq order");
        }
        let first = indices.first().copied();
        let last = indices.last().copied();
        // Nothing that was durable at the start, or confirmed since, and was
        // not (possibly) acked is gone. An ack may have become durable as
        // soon as it was asked for (the flusher runs beside the child).
        let round_start = next_index;
        let need_from = lo
            .unwrap_or(round_start)
            .max(log.ack_intent_hi.map_or(0, |a| a + 1));
        // With either policy a crash of the process loses nothing
        // confirmed: `interval` trades only a power cut's last interval.
        if let Some(need_to) = log.confirmed_hi.max(hi).filter(|&h| h >= need_from) {
            assert!(
                first.is_some_and(|f| f <= need_from) && last.is_some_and(|l| l >= need_to),
                "{ctx}: lost items: have {first:?}..={last:?}, need {need_from}..={need_to}"
            );
        }
        if let (Some(lo), Some(first)) = (lo, first) {
            assert!(
                first >= lo,
                "{ctx}: an item acked before the round came back"
            );
        }
        // Nothing appears that was never appended.
        if let Some(last) = last {
            assert!(
                Some(last) <= log.tried_hi.max(hi),
                "{ctx}: item {last} was never appended"
            );
        }
        if let (Some(tried), Some(last)) = (log.tried_hi, last.or(hi)) {
            lost_total += tried.saturating_sub(last);
        }
        outbox.close().expect("close");
        let report = verify(&db, |r| index_of(r).map(|_| ())).expect("verify");
        assert_eq!(report.problem_count, 0, "{ctx}: {:?}", report.problems);
        lo = first;
        hi = last;
        next_index = match last {
            Some(last) => last + 1,
            None => log.tried_hi.map_or(next_index, |t| t + 1),
        };
    }
    eprintln!(
        "{rounds} SIGKILL rounds ({}): {repaired_rounds} recovered an unclean file, \
         {next_index} items appended in all, {lost_total} unconfirmed items lost",
        if interval { "interval" } else { "always" }
    );
    assert!(repaired_rounds > 0, "no round killed an open outbox");
}

#[test]
fn survives_sigkill_with_fsync_always() {
    sigkill_rounds(false, 30);
}

#[test]
fn survives_sigkill_with_fsync_interval() {
    sigkill_rounds(true, 20);
}

// ---- a full disk --------------------------------------------------------------

struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A tmpfs of `size` bytes on a fresh directory, half of it taken by a
/// ballast file (removing it makes room again); `None` where mounting is
/// not allowed (not root).
fn small_disk(size: u64) -> Option<(tempfile::TempDir, Tmpfs, PathBuf)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={size}"))
        .arg("tmpfs")
        .arg(dir.path())
        .output();
    match mounted {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "skipped: cannot mount a 4 MiB tmpfs (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            eprintln!("skipped: cannot run mount: {e}");
            return None;
        }
    }
    let tmpfs = Tmpfs(dir.path().to_owned());
    let ballast = dir.path().join("ballast");
    let half = usize::try_from(size / 2).expect("size");
    std::fs::write(&ballast, vec![0u8; half]).expect("ballast");
    Some((dir, tmpfs, ballast))
}

#[test]
fn a_full_disk_is_a_clear_error_and_recovers() {
    // The room freed is more than the journal can hold: what a recovery may
    // need.
    let Some((dir, _tmpfs, ballast)) = small_disk(4 * journal::JOURNAL_BYTES) else {
        return;
    };
    let path = dir.path().join("full.redb");
    let outbox = Outbox::open(&path, config(1 << 30)).expect("open");
    let mut confirmed = 0u64;
    let err = loop {
        let r: Vec<Vec<u8>> = (confirmed..confirmed + 8)
            .map(|i| indexed(i, 1000))
            .collect();
        match outbox.append(&refs(&r)) {
            Ok(_) => confirmed += 8,
            Err(err) => break err,
        }
        assert!(confirmed < 10_000, "the disk never filled");
    };
    let text = err.to_string();
    assert!(err.is_disk_full(), "{text}");
    assert!(
        text.contains("full.redb") && text.contains("append"),
        "{text}"
    );
    assert!(text.to_lowercase().contains("no space left"), "{text}");
    assert!(outbox.stats().write_errors >= 1);
    // Still full: calls fail cleanly (or fit in a freed page), nothing panics.
    let _ = outbox.append(&[&indexed(confirmed, 1000)]);
    let _ = outbox.peek(None, 10, 1 << 20);
    // Room again: the outbox reopens itself and carries on.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let a = outbox
        .append(&[&indexed(900_000, 10)])
        .expect("append after space came back");
    let items = all(&outbox);
    let indices: Vec<u64> = items
        .iter()
        .filter_map(|i| index_of(&i.record).ok())
        .collect();
    // Every confirmed item is there once and in order; the failed batch may
    // or may not have become durable (redb says a failed commit may have).
    assert!(
        indices.len() as u64 > confirmed,
        "{} <= {confirmed}",
        indices.len()
    );
    for (want, got) in (0..confirmed).zip(&indices) {
        assert_eq!(want, *got);
    }
    assert_eq!(items.last().map(|i| i.seq), Some(a.seqs.start));
    eprintln!(
        "disk full after {confirmed} items of 1 KiB: {text}; recovered, {} items kept",
        indices.len()
    );
    outbox.close().expect("close");
    let report = verify(&path, |_| Ok(())).expect("verify");
    assert_eq!(report.problem_count, 0, "{:?}", report.problems);
}

/// With `fsync = "interval"` a full disk loses nothing confirmed either:
/// appends go to the journal, which a failed write leaves as it was, and
/// once the journal takes nothing more a commit is a durable one. Should a
/// failed commit ever make the outbox reopen its file at its last durable
/// state, the sequence numbers handed out since — to the MQTT cursor, the
/// InfluxDB drain, acks in flight — must never be handed out again: a
/// stale ack would delete a new item, a cursor past a reused number would
/// skip it.
#[test]
fn a_full_disk_with_fsync_interval_loses_nothing_and_reuses_no_sequence_number() {
    // As with `fsync = "always"`, the room freed must be more than the
    // journal holds: a checkpoint writes its items to the file.
    let Some((dir, _tmpfs, ballast)) = small_disk(4 * journal::JOURNAL_BYTES) else {
        return;
    };
    let path = dir.path().join("interval.redb");
    let mut cfg = config(1 << 30);
    cfg.fsync = FsyncPolicy::Interval;
    // Long enough that no durable commit happens during the test.
    cfg.fsync_interval_ms = NonZeroU64::new(600_000).expect("non-zero");
    let outbox = Outbox::open(&path, cfg).expect("open");
    let mut handed_out = 0u64;
    let mut i = 0u64;
    loop {
        let r: Vec<Vec<u8>> = (i..i + 8).map(|j| indexed(j, 1000)).collect();
        match outbox.append(&refs(&r)) {
            Ok(a) => handed_out = a.seqs.end,
            Err(err) => {
                assert!(err.is_disk_full(), "{err}");
                break;
            }
        }
        i += 8;
        assert!(i < 10_000, "the disk never filled");
    }
    std::fs::remove_file(&ballast).expect("remove ballast");
    let after = outbox
        .append(&[&indexed(900_000, 10)])
        .expect("append after space came back");
    assert!(
        after.seqs.start >= handed_out,
        "sequence number {} handed out again (already handed out up to {handed_out})",
        after.seqs.start
    );
    // Every confirmed item is there, in order.
    let kept: Vec<u64> = all(&outbox).iter().map(|item| item.seq).collect();
    let mut want: Vec<u64> = (0..handed_out).collect();
    want.push(after.seqs.start);
    assert_eq!(kept, want);
    assert_eq!(outbox.stats().lost_on_reopen, 0);
    // Acks of everything handed out before delete exactly that.
    outbox
        .ack(&(0..handed_out).collect::<Vec<_>>())
        .expect("ack");
    let left: Vec<u64> = all(&outbox).iter().map(|item| item.seq).collect();
    assert_eq!(left, [after.seqs.start]);
    outbox.close().expect("close");
}

/// After an outage's backlog is delivered the file gives its space back:
/// not while the file still holds much (half the backlog), then within a
/// tick once little is left; what is left survives it, in order, and the
/// outbox keeps working and reopens. A file that cannot shrink further is
/// not compacted again on every tick.
#[test]
fn a_drained_file_is_compacted_by_the_background_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let mut cfg = config(1 << 30);
    cfg.fsync = FsyncPolicy::Interval;
    let outbox = Outbox::open(&path, cfg.clone()).expect("open");
    let records: Vec<Vec<u8>> = (0..20_000).map(|i| indexed(i, 1000)).collect();
    let mut seqs = Vec::new();
    for chunk in records.chunks(1000) {
        seqs.extend(outbox.append(&refs(chunk)).expect("append").seqs);
    }
    outbox.flush().expect("flush");
    let file_len = || std::fs::metadata(&path).expect("stat").len();
    let full = file_len();
    assert!(full > 2 * SHRINK_ABOVE_BYTES, "{full}");
    let wait_ticks = |n: u32| std::thread::sleep(MAINTENANCE_TICK * n + MAINTENANCE_TICK / 2);

    outbox.ack(&seqs[..10_000]).expect("ack half");
    wait_ticks(2);
    assert_eq!(
        outbox.stats().compactions,
        0,
        "half the backlog is still there"
    );

    // Keep the last 10 items.
    outbox.ack(&seqs[10_000..19_990]).expect("ack the rest");
    let deadline = Instant::now() + Duration::from_secs(20);
    while outbox.stats().compactions == 0 {
        assert!(Instant::now() < deadline, "no compaction");
        std::thread::sleep(Duration::from_millis(20));
    }
    let small = file_len();
    assert!(small * 8 < full, "{full} -> {small}");
    wait_ticks(2);
    assert_eq!(outbox.stats().compactions, 1, "compacted again for nothing");
    let left: Vec<u64> = all(&outbox)
        .iter()
        .map(|item| index_of(&item.record).expect("intact"))
        .collect();
    assert_eq!(left, (19_990..20_000).collect::<Vec<_>>());

    let more = outbox.append(&[b"after"]).expect("append after");
    outbox.close().expect("close");
    let reopened = Outbox::open(&path, cfg).expect("reopen");
    assert_eq!(reopened.stats().depth_items, 11);
    assert_eq!(all(&reopened).last().expect("item").seq, more.seqs.start);
}

fn group_of_two(path: &Path, a: OutboxConfig, b: OutboxConfig) -> OutboxGroup {
    OutboxGroup::open(path, &[("a", a), ("b", b)]).expect("open group")
}

/// Two queues in one file: one transaction appends to both, each keeps its
/// own sequence numbers, bounds and acks, and both survive a reopen.
#[test]
fn a_group_commits_its_queues_together_and_keeps_them_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.redb");
    let group = group_of_two(&path, config(1 << 20), config(1 << 20));
    let a = [indexed(1, 10), indexed(2, 10)];
    let b = [indexed(3, 20)];
    let done = group
        .append(&[(0, &refs(&a), &[]), (1, &refs(&b), &[])])
        .expect("append");
    assert_eq!(done[0].seqs, 0..2);
    assert_eq!(done[1].seqs, 0..1);
    let (qa, qb) = (group.queue(0).expect("a"), group.queue(1).expect("b"));
    assert_eq!(qa.stats().depth_items, 2);
    assert_eq!(qb.stats().depth_bytes, 8 + 20 + ITEM_OVERHEAD);
    // Acks name a queue: seq 0 of `a` is not seq 0 of `b`.
    group.ack(&[(0, &[0])]).expect("ack");
    assert_eq!(qa.stats().depth_items, 1);
    assert_eq!(qb.stats().depth_items, 1);
    drop(group);

    let reports = inspect(&path).expect("inspect");
    let names: Vec<&str> = reports.iter().map(|r| r.queue.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(reports[0].seq_range, Some((1, 1)));
    let verified = verify(&path, |r| index_of(r).map(|_| ())).expect("verify");
    assert_eq!(
        (verified.items, verified.problem_count),
        (2, 0),
        "{verified:?}"
    );

    let group = group_of_two(&path, config(1 << 20), config(1 << 20));
    let (qa, qb) = (group.queue(0).expect("a"), group.queue(1).expect("b"));
    let index = |items: Vec<Item>| -> Vec<u64> {
        items
            .iter()
            .map(|i| index_of(&i.record).expect("intact"))
            .collect()
    };
    assert_eq!(index(all(qa)), [2]);
    assert_eq!(index(all(qb)), [3]);
    assert_eq!(qa.next_seq(), 2, "numbers are not reused");
}

/// `block`: when one queue of a transaction is full, nothing of it is
/// written (a frame is never split), and the acks it carried still apply.
#[test]
fn a_full_queue_refuses_the_whole_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = config(3 * (8 + 10 + ITEM_OVERHEAD));
    let group = group_of_two(&dir.path().join("log.redb"), small, config(1 << 20));
    let three = [indexed(1, 10), indexed(2, 10), indexed(3, 10)];
    group.append(&[(0, &refs(&three), &[])]).expect("fits");
    let one = [indexed(4, 10)];
    let refused = group.append(&[(0, &refs(&one), &[0]), (1, &refs(&one), &[])]);
    // The ack of item 0 made room for exactly one: this time it fits.
    assert!(refused.is_ok(), "{refused:?}");
    let refused = group.append(&[(1, &refs(&one), &[]), (0, &refs(&one), &[])]);
    assert!(
        matches!(refused, Err(OutboxError::Full { .. })),
        "{refused:?}"
    );
    let (qa, qb) = (group.queue(0).expect("a"), group.queue(1).expect("b"));
    assert_eq!(qa.stats().depth_items, 3);
    assert_eq!(qb.stats().depth_items, 1, "b's part was not written either");
    assert_eq!(qa.stats().refused_full, 1);
}

/// A file of the previous layout (one queue, `Outbox::open`) moves into a
/// queue of the shared file: order and enqueue times kept, the file
/// deleted; a later file of that layout (a downgrade and upgrade again) is
/// moved in full, not skipped by the position the first one left.
#[test]
fn absorb_moves_a_file_of_the_previous_layout_in_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let legacy = dir.path().join("mqtt.redb");
    let (now, clock) = fake_clock(5_000);
    let old = Outbox::open_with(&legacy, config(1 << 20), clock.clone(), false).expect("open");
    let records: Vec<Vec<u8>> = (0..10).map(|i| indexed(i, 30)).collect();
    for chunk in records.chunks(3) {
        old.append(&refs(chunk)).expect("append");
        now.fetch_add(1000, Ordering::SeqCst);
    }
    old.ack(&[0, 1]).expect("delivered before the upgrade");
    drop(old);

    let group = group_of_two(
        &dir.path().join("log.redb"),
        config(1 << 20),
        config(1 << 20),
    );
    let queue = group.queue(1).expect("b");
    queue
        .append(&[&indexed(99, 1)])
        .expect("an item already there");
    assert_eq!(queue.absorb(&legacy).expect("absorb"), 8);
    assert!(!legacy.exists(), "the old file is deleted");
    let items = all(queue);
    let indexes: Vec<u64> = items
        .iter()
        .map(|i| index_of(&i.record).expect("intact"))
        .collect();
    assert_eq!(indexes, [99, 2, 3, 4, 5, 6, 7, 8, 9]);
    let times: Vec<u64> = items[1..].iter().map(|i| i.enqueued_ms).collect();
    assert_eq!(
        times,
        [5_000, 6_000, 6_000, 6_000, 7_000, 7_000, 7_000, 8_000]
    );
    assert_eq!(queue.stats().depth_items, 9);
    assert_eq!(queue.absorb(&legacy).expect("nothing left"), 0);

    let again = Outbox::open(&legacy, config(1 << 20)).expect("a new old-layout file");
    again
        .append(&[&indexed(50, 1), &indexed(51, 1)])
        .expect("append");
    drop(again);
    assert_eq!(queue.absorb(&legacy).expect("absorb"), 2);
}

/// A crash in the middle of moving a file in: the position committed with
/// the last chunk says where to go on, so nothing is moved twice.
#[test]
fn absorb_goes_on_where_a_crash_stopped_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let legacy = dir.path().join("influx.redb");
    let old = Outbox::open(&legacy, config(1 << 20)).expect("open");
    let records: Vec<Vec<u8>> = (0..6).map(|i| indexed(i, 5)).collect();
    old.append(&refs(&records)).expect("append");
    drop(old);
    let group = group_of_two(
        &dir.path().join("log.redb"),
        config(1 << 20),
        config(1 << 20),
    );
    let queue = group.queue(0).expect("a");
    // What a chunk of items 0..=3 commits with them (the items themselves
    // are already in the queue in this story).
    let store = &queue.file.store;
    let marker = format!("{}.absorbed", queue.queue.state_key);
    store
        .write(&mut lock(&store.writer), "test", true, false, |txn, _| {
            txn.open_table(META)?
                .insert(marker.as_str(), 3u64.to_le_bytes().as_slice())?;
            Ok(())
        })
        .expect("write the position");
    assert_eq!(queue.absorb(&legacy).expect("absorb"), 2);
    let indexes: Vec<u64> = all(queue)
        .iter()
        .map(|i| index_of(&i.record).expect("intact"))
        .collect();
    assert_eq!(indexes, [4, 5]);
}

/// Set in the child of `a_group_survives_sigkill_with_whole_transactions`:
/// `<db path>|<log path>|<first index>`.
const GROUP_CHILD_ENV: &str = "SLUICE_OUTBOX_GROUP_CRASH_CHILD";

/// A crash child's log, which the parent reads after the kill.
fn child_log(path: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("log")
}

/// Runs the test `child` of this binary with `env` set to `spec`, and waits
/// until it wrote "opened" to `log`.
fn spawn_opened(child: &str, env: &str, spec: &str, log: &Path) -> std::process::Child {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = std::process::Command::new(exe)
        .args(["--exact", child, "--test-threads=1"])
        .env(env, spec)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(log).is_ok_and(|t| t.starts_with("opened")) {
        assert!(Instant::now() < deadline, "child never opened");
        assert!(child.try_wait().expect("wait").is_none(), "child exited");
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}

/// Not a test of its own: appends the same indices to both queues of a
/// group, one transaction each, until killed.
#[test]
fn group_crash_child() {
    let Ok(spec) = std::env::var(GROUP_CHILD_ENV) else {
        return;
    };
    let [db, log, first] = spec.split('|').collect::<Vec<_>>()[..] else {
        panic!("bad spec {spec}");
    };
    let mut log = child_log(log);
    let group = group_of_two(Path::new(db), config(1 << 30), config(1 << 30));
    log.write_all(b"opened\n").expect("log write");
    let mut next: u64 = first.parse().expect("first index");
    let mut rng = rand::rng();
    loop {
        let n = rng.random_range(1..=16u64);
        let a: Vec<Vec<u8>> = (next..next + n)
            .map(|i| indexed(i, rng.random_range(0..300)))
            .collect();
        let b: Vec<Vec<u8>> = (next..next + n).map(|i| indexed(i, 40)).collect();
        log.write_all(format!("try {next} {n}\n").as_bytes())
            .expect("log write");
        group
            .append(&[(0, &refs(&a), &[]), (1, &refs(&b), &[])])
            .expect("append");
        log.write_all(format!("ok {next} {n}\n").as_bytes())
            .expect("log write");
        next += n;
    }
}

/// Appends made durable by the journal come back after a `SIGKILL`, in both
/// queues of their transaction or in neither, and nothing confirmed is lost.
#[test]
fn a_group_survives_sigkill_with_whole_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("log.redb");
    let log_path = dir.path().join("child.log");
    let mut rng = rand::rng();
    let mut next_index = 0u64;
    let mut replayed_rounds = 0;
    for round in 0..12 {
        let _ = std::fs::remove_file(&log_path);
        let spec = format!("{}|{}|{next_index}", db.display(), log_path.display());
        let mut child = spawn_opened(
            "tests::group_crash_child",
            GROUP_CHILD_ENV,
            &spec,
            &log_path,
        );
        // Mostly within the first checkpoint interval: the journal holds it all.
        std::thread::sleep(Duration::from_millis(rng.random_range(20..400)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let log = parse_log(&std::fs::read_to_string(&log_path).unwrap_or_default());
        // The tools see what a start would restore, journal included.
        let reports = inspect(&db).expect("inspect after the kill");
        let verified = verify(&db, |r| index_of(r).map(|_| ())).expect("verify after the kill");
        let group = group_of_two(&db, config(1 << 30), config(1 << 30));
        let (qa, qb) = (group.queue(0).expect("a"), group.queue(1).expect("b"));
        let found = [qa, qb].map(|q| (q.stats().depth_items, q.recovery().from_journal));
        let reported: Vec<(u64, u64)> = reports.iter().map(|r| (r.items, r.from_journal)).collect();
        assert_eq!(reported, found, "round {round}: inspect");
        assert_eq!(verified.problem_count, 0, "{:?}", verified.problems);
        assert_eq!(
            (verified.items, verified.from_journal),
            (found[0].0 + found[1].0, found[0].1 + found[1].1),
            "round {round}: verify"
        );
        let indices = |q: &Outbox| -> Vec<u64> {
            all(q)
                .iter()
                .map(|i| index_of(&i.record).unwrap_or_else(|e| panic!("round {round}: {e}")))
                .collect()
        };
        let (a, b) = (indices(qa), indices(qb));
        let ctx = format!("round {round} ({log:?}, from {next_index})");
        assert_eq!(a, b, "{ctx}: the queues disagree");
        assert!(
            a.windows(2).all(|p| p[1] == p[0] + 1),
            "{ctx}: gap or duplicate"
        );
        let got_hi = a.last().copied();
        if let Some(confirmed) = log.confirmed_hi {
            assert!(
                got_hi >= Some(confirmed),
                "{ctx}: lost confirmed items, have {got_hi:?}"
            );
        }
        assert!(
            got_hi <= log.tried_hi.max(next_index.checked_sub(1)),
            "{ctx}: never appended"
        );
        if qa.recovery().from_journal > 0 {
            replayed_rounds += 1;
        }
        // Start the next round empty, where this one stopped.
        next_index = got_hi.map_or(next_index, |h| h + 1);
        let seqs_a: Vec<u64> = all(qa).iter().map(|i| i.seq).collect();
        let seqs_b: Vec<u64> = all(qb).iter().map(|i| i.seq).collect();
        group.ack(&[(0, &seqs_a), (1, &seqs_b)]).expect("ack");
    }
    assert!(replayed_rounds > 0, "no round replayed the journal");
}

const ACKS_CHILD_ENV: &str = "SLUICE_OUTBOX_ACKS_CRASH_CHILD";

/// Not a test of its own: appends batches until killed, each carrying the
/// acks of the batch before it — all of them but every fifth index, which
/// stays unconfirmed.
#[test]
fn acks_crash_child() {
    let Ok(spec) = std::env::var(ACKS_CHILD_ENV) else {
        return;
    };
    let [db, log] = spec.split('|').collect::<Vec<_>>()[..] else {
        panic!("bad spec {spec}");
    };
    let mut log = child_log(log);
    let outbox = Outbox::open(db, config(1 << 30)).expect("open");
    log.write_all(b"opened\n").expect("log write");
    let mut rng = rand::rng();
    let mut next = 0u64;
    let mut previous: Vec<(u64, u64)> = Vec::new();
    loop {
        let n = rng.random_range(1..=16u64);
        let records: Vec<Vec<u8>> = (next..next + n)
            .map(|i| indexed(i, rng.random_range(0..300)))
            .collect();
        let acks: Vec<u64> = previous
            .iter()
            .filter(|(index, _)| index % 5 != 0)
            .map(|(_, seq)| *seq)
            .collect();
        let appended = outbox
            .append_and_ack(&refs(&records), &acks)
            .expect("append");
        log.write_all(format!("ok {next} {n}\n").as_bytes())
            .expect("log write");
        previous = (next..next + n).zip(appended.seqs).collect();
        next += n;
    }
}

/// Acks are journaled with the next append: after a `SIGKILL` the items
/// confirmed before it stay gone (they used to come back, and be sent
/// again, until the next checkpoint), and every unconfirmed one is back.
#[test]
fn acks_survive_sigkill() {
    let mut rng = rand::rng();
    for round in 0..6 {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("acks.redb");
        let log_path = dir.path().join("child.log");
        let spec = format!("{}|{}", db.display(), log_path.display());
        let mut child = spawn_opened("tests::acks_crash_child", ACKS_CHILD_ENV, &spec, &log_path);
        // Within a journal generation and past a checkpoint or two.
        std::thread::sleep(Duration::from_millis(rng.random_range(50..2500)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let batches: Vec<(u64, u64)> = text
            .split_inclusive('\n')
            .filter(|line| line.starts_with("ok ") && line.ends_with('\n'))
            .filter_map(|line| {
                let mut words = line.split_whitespace().skip(1);
                Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
            })
            .collect();
        let Some(&(last_first, _)) = batches.last() else {
            continue;
        };
        // The tools see what a start restores, acks included.
        let reports = inspect(&db).expect("inspect after the kill");
        let outbox = Outbox::open(&db, config(1 << 30)).expect("reopen");
        let stats = outbox.stats();
        let reported: Vec<(u64, u64, u64)> = reports
            .iter()
            .map(|r| (r.items, r.bytes, r.next_seq))
            .collect();
        assert_eq!(
            reported,
            [(stats.depth_items, stats.depth_bytes, stats.next_seq)],
            "round {round}: inspect"
        );
        let found: Vec<u64> = all(&outbox)
            .iter()
            .map(|item| index_of(&item.record).expect("record"))
            .collect();
        let ctx = format!("round {round}, {} batches", batches.len());
        assert!(found.windows(2).all(|p| p[0] < p[1]), "{ctx}: out of order");
        for index in (0..last_first).filter(|i| i % 5 == 0) {
            assert!(found.contains(&index), "{ctx}: unconfirmed {index} lost");
        }
        // Confirmed by an append that returned: never back.
        let back: Vec<u64> = found
            .iter()
            .copied()
            .filter(|&i| i < last_first && i % 5 != 0)
            .collect();
        assert!(
            back.is_empty(),
            "{ctx}: {} confirmed items came back, from {:?}",
            back.len(),
            back.first()
        );
    }
}
