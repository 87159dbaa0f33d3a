//! The journal: what makes an append survive a crash without a durable
//! redb commit each time.
//!
//! A durable redb commit rewrites the B-tree pages it touched, scattered
//! over the file, and syncs them; on a small VM that is ~140 µs of CPU per
//! commit, and a commit that does not sync (`Durability::None`) is lost
//! even by a crash of the process. An append instead writes its records as
//! one entry to `NAME.journal`, one contiguous write, and with `fsync =
//! "always"` one `fdatasync` (~65 µs); with `fsync = "interval"` the entry
//! is in the kernel's page cache, which a crash of the process does not
//! lose, and the next checkpoint (within `fsync_interval_ms`) makes it
//! durable. Every durable redb commit (a checkpoint: within
//! `fsync_interval_ms`, when the journal is full, at close) stores a new
//! *generation* in the file's meta table, which retires every entry written
//! before it; the journal is then written again from its start.
//!
//! Opening the file replays the entries of the stored generation: each
//! record whose sequence number is not yet in its queue is inserted with
//! its enqueue time, and the open's own durable commit starts the next
//! generation. An entry holds everything one transaction appended, to all
//! its queues, under one CRC, so a torn write loses the whole entry (which
//! was never acknowledged to the caller) and never part of a frame.
//!
//! An entry also holds the acks made since the previous one, so a replay
//! leaves out what was delivered (and removes it from redb if a checkpoint
//! had stored it): between checkpoints the store keeps its newest items
//! in memory only (`store::Store::stage`), and most are acked there and never
//! written to redb at all.
//!
//! Entry: `magic u32 | body length u32 | crc32(generation ++ body) u32 |
//! generation u64 | body`, body: `parts u32`, per part `items table name
//! (u16 length + bytes) | records u32`, per record `seq u64 | enqueued ms u64
//! | length u32 | bytes`, then (magic `SLJ2` only) `acks u32`, per ack `seq
//! u64`; little-endian. Entries of magic `SLJ1` (the previous release) have
//! no acks. Written by hand: a write-ahead-log crate would bring its own
//! checkpoints, and this one must share redb's.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;

use super::error::is_no_space;
use super::*;

/// The journal's size: an entry that does not fit in what is left makes
/// the append a checkpoint instead, which writes the staged items still
/// unacked to redb. It is also the free space a recovery may need (the
/// replayed entries go into redb's pages), and about the memory staged
/// items can take. At 1000 frames/s of the JSON gateway with InfluxDB it
/// lasts a few seconds: InfluxDB's points (acked about a second after they
/// are written, with the writer's batches) are mostly acked before it
/// fills, and never written to redb (with 1 MiB they were, every second).
pub(crate) const JOURNAL_BYTES: u64 = 4 << 20;
/// Entries without acks (the previous release); still read.
const MAGIC_V1: u32 = 0x534c_4a31; // "SLJ1"
const MAGIC: u32 = 0x534c_4a32; // "SLJ2"
const HEADER: usize = 20;
/// Meta key: the generation whose entries a replay applies (u64 LE).
pub(crate) const META_JOURNAL_GEN: &str = "journal_gen";

/// `log.redb` → `log.journal`.
pub(crate) fn journal_path(db_path: &Path) -> PathBuf {
    db_path.with_extension("journal")
}

/// The open journal of a file, owned by its writer.
pub(crate) struct Journal {
    file: File,
    generation: u64,
    offset: u64,
    /// `fsync = "always"`: each entry is synced before `append` returns.
    sync_each: bool,
}

impl Journal {
    /// Opens (or creates) the journal for entries of `generation`, written
    /// from its start; with `sync_each`, every entry is synced.
    pub(crate) fn open(
        path: &Path,
        generation: u64,
        sync_each: bool,
    ) -> Result<Journal, OutboxError> {
        let created = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| io_error(path, "open the journal", source))?;
        if created {
            sync_parent_dir(path)?;
        }
        preallocate(&file, path);
        Ok(Journal {
            file,
            generation,
            offset: 0,
            sync_each,
        })
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether an appended entry is durable (synced) when `append` returns;
    /// if not, only a checkpoint makes it so.
    pub(crate) fn syncs(&self) -> bool {
        self.sync_each
    }

    /// Whether an entry with a body of `body_len` bytes fits.
    pub(crate) fn fits(&self, body_len: usize) -> bool {
        self.offset + (HEADER + body_len) as u64 <= JOURNAL_BYTES
    }

    /// Writes an entry, and syncs it if the journal [`syncs`](Self::syncs).
    /// On an error the journal takes no more entries until the next
    /// checkpoint (a failed sync leaves the page cache in an unknown state,
    /// so nothing after it may rely on it).
    pub(crate) fn append(&mut self, body: &[u8]) -> io::Result<()> {
        let mut entry = Vec::with_capacity(HEADER + body.len());
        entry.extend_from_slice(&MAGIC.to_le_bytes());
        entry.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        entry.extend_from_slice(&checksum(self.generation, body).to_le_bytes());
        entry.extend_from_slice(&self.generation.to_le_bytes());
        entry.extend_from_slice(body);
        let written = self.file.write_all_at(&entry, self.offset).and_then(|()| {
            if self.sync_each {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {
                self.offset += entry.len() as u64;
                Ok(())
            }
            Err(err) => {
                self.offset = JOURNAL_BYTES;
                Err(err)
            }
        }
    }

    /// After a checkpoint: entries of `generation` from the start.
    pub(crate) fn reset(&mut self, generation: u64) {
        self.generation = generation;
        self.offset = 0;
    }
}

/// Writes zeros up to the journal's full size (once per file): an append
/// within the file's size syncs its data alone, while one that grows the
/// file makes every `fdatasync` write the inode too. Zeros are no entry. On
/// failure (a full disk) the journal grows as it is written instead.
fn preallocate(file: &File, path: &Path) {
    let len = match file.metadata() {
        Ok(meta) => meta.len(),
        Err(_) => return,
    };
    if len >= JOURNAL_BYTES {
        return;
    }
    let zeros = vec![0u8; usize::try_from(JOURNAL_BYTES - len).unwrap_or(0)];
    let written = file
        .write_all_at(&zeros, len)
        .and_then(|()| file.sync_all());
    if let Err(err) = written {
        tracing::debug!(journal = %path.display(), error = %err,
            "could not preallocate the journal; it grows as it is written");
        let _ = file.set_len(len);
    }
}

fn checksum(generation: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&generation.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

pub(crate) fn io_error(path: &Path, op: &'static str, source: io::Error) -> OutboxError {
    if is_no_space(&source) {
        OutboxError::NoSpace {
            path: path.to_owned(),
            op,
            source,
        }
    } else {
        OutboxError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    }
}

/// One queue's records and acks in an entry.
pub(crate) struct JournalPart<'a> {
    pub(crate) items_table: &'a str,
    pub(crate) first_seq: u64,
    pub(crate) records: &'a [&'a [u8]],
    pub(crate) acks: &'a [u64],
}

/// The body of an entry: the records of one transaction, all stamped `now`,
/// and acks.
pub(crate) fn encode(parts: &[JournalPart<'_>], now: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(body_len(parts));
    body.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    for part in parts {
        body.extend_from_slice(&(part.items_table.len() as u16).to_le_bytes());
        body.extend_from_slice(part.items_table.as_bytes());
        body.extend_from_slice(&(part.records.len() as u32).to_le_bytes());
        for (seq, record) in (part.first_seq..).zip(part.records) {
            body.extend_from_slice(&seq.to_le_bytes());
            body.extend_from_slice(&now.to_le_bytes());
            body.extend_from_slice(&(record.len() as u32).to_le_bytes());
            body.extend_from_slice(record);
        }
        body.extend_from_slice(&(part.acks.len() as u32).to_le_bytes());
        for seq in part.acks {
            body.extend_from_slice(&seq.to_le_bytes());
        }
    }
    body
}

/// The length [`encode`] will produce.
pub(crate) fn body_len(parts: &[JournalPart<'_>]) -> usize {
    4 + parts
        .iter()
        .map(|p| {
            2 + p.items_table.len()
                + 4
                + p.records.iter().map(|r| 20 + r.len()).sum::<usize>()
                + 4
                + 8 * p.acks.len()
        })
        .sum::<usize>()
}

/// A record found in the journal.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Replayed {
    pub(crate) items_table: String,
    pub(crate) seq: u64,
    pub(crate) enqueued_ms: u64,
    pub(crate) record: Vec<u8>,
}

/// What the intact entries of a generation hold, in the order written.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    pub(crate) records: Vec<Replayed>,
    /// By items table.
    pub(crate) acks: Vec<(String, u64)>,
}

/// The contents of the intact entries of `generation` in the journal at
/// `path`; nothing if there is no journal. Reading stops at the first entry
/// that is torn, damaged or of another generation (what lies beyond is
/// older, retired by a checkpoint).
pub(crate) fn read(path: &Path, generation: u64) -> Result<Contents, OutboxError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Contents::default()),
        Err(source) => return Err(io_error(path, "read the journal", source)),
    };
    let mut found = Contents::default();
    let mut at = 0usize;
    while let Some((body, with_acks, next)) = entry_at(&bytes, at, generation) {
        match decode(body, with_acks, &mut found) {
            Some(()) => {}
            None => {
                tracing::warn!(journal = %path.display(), offset = at,
                    "a journal entry passed its checksum but does not parse; replay stops there");
                break;
            }
        }
        at = next;
    }
    Ok(found)
}

/// The body of the entry at `at` if it is intact and of `generation`,
/// whether it holds acks, and where the next one starts.
fn entry_at(bytes: &[u8], at: usize, generation: u64) -> Option<(&[u8], bool, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let with_acks = match word(0) {
        MAGIC => true,
        MAGIC_V1 => false,
        _ => return None,
    };
    let len = word(4) as usize;
    let crc = word(8);
    let entry_generation = u64::from_le_bytes(header[12..20].try_into().ok()?);
    if entry_generation != generation {
        return None;
    }
    let start = at + HEADER;
    let body = bytes.get(start..start.checked_add(len)?)?;
    (checksum(generation, body) == crc).then_some((body, with_acks, start + len))
}

/// Adds what `body` holds to `found`; `None` (and `found` unchanged) if it
/// does not parse.
fn decode(body: &[u8], with_acks: bool, found: &mut Contents) -> Option<()> {
    let mut cursor = body;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = cursor.split_at_checked(n)?;
        cursor = rest;
        Some(head)
    };
    let u16_of = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
    let u32_of = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    let mut records = Vec::new();
    let mut acks = Vec::new();
    let parts = u32_of(take(4)?);
    for _ in 0..parts {
        let name_len = u16_of(take(2)?) as usize;
        let items_table = std::str::from_utf8(take(name_len)?).ok()?.to_owned();
        let count = u32_of(take(4)?);
        for _ in 0..count {
            let seq = u64_of(take(8)?);
            let enqueued_ms = u64_of(take(8)?);
            let len = u32_of(take(4)?) as usize;
            let record = take(len)?.to_vec();
            records.push(Replayed {
                items_table: items_table.clone(),
                seq,
                enqueued_ms,
                record,
            });
        }
        if with_acks {
            for _ in 0..u32_of(take(4)?) {
                acks.push((items_table.clone(), u64_of(take(8)?)));
            }
        }
    }
    if !cursor.is_empty() {
        return None;
    }
    found.records.extend(records);
    found.acks.extend(acks);
    Some(())
}

/// The state key of the queue whose items table is `items_table` (see
/// `queue_keys`).
pub(crate) fn state_key_of(items_table: &str) -> String {
    match items_table.strip_suffix(".items") {
        Some(name) => format!("{name}.{META_STATE}"),
        None => META_STATE.to_owned(),
    }
}

/// The generation whose entries a replay applies, as the file stores it
/// (`None`: the file never had a journal).
fn stored_generation(
    meta_table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<u64>, redb::StorageError> {
    Ok(meta_table
        .get(META_JOURNAL_GEN)?
        .and_then(|v| <[u8; 8]>::try_from(v.value()).ok().map(u64::from_le_bytes)))
}

/// What opening a file would do with its journal.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Records of the stored generation not yet in their queues and not
    /// acked, in order.
    pub(crate) records: Vec<Replayed>,
    /// Acks of items the file holds (stored by the last checkpoint).
    pub(crate) stored_acks: Vec<(String, u64)>,
    /// Per items table, the next sequence number past every record of the
    /// journal, acked ones too (numbers are never handed out twice).
    pub(crate) next_seqs: Vec<(String, u64)>,
}

/// What opening the file at `path` would restore from its journal.
pub(crate) fn pending(
    path: &Path,
    meta_table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Pending, TxError> {
    let Some(generation) = stored_generation(meta_table)? else {
        return Ok(Pending::default());
    };
    let contents = read(&journal_path(path), generation)?;
    let mut pending = Pending::default();
    let stored_next = |table: &str, pending: &mut Pending| -> Result<usize, TxError> {
        if let Some(slot) = pending.next_seqs.iter().position(|(t, _)| t == table) {
            return Ok(slot);
        }
        let next = meta_table
            .get(state_key_of(table).as_str())?
            .and_then(|v| Meta::from_bytes(v.value()))
            .unwrap_or_default()
            .next_seq;
        pending.next_seqs.push((table.to_owned(), next));
        Ok(pending.next_seqs.len() - 1)
    };
    // Before the records: the file's own next sequence numbers tell its
    // items from the journal's.
    for (table, seq) in &contents.acks {
        let slot = stored_next(table, &mut pending)?;
        if *seq < pending.next_seqs[slot].1 {
            pending.stored_acks.push((table.clone(), *seq));
        }
    }
    let acked: std::collections::HashSet<(&str, u64)> = contents
        .acks
        .iter()
        .map(|(table, seq)| (table.as_str(), *seq))
        .collect();
    for found in contents.records {
        let slot = stored_next(&found.items_table, &mut pending)?;
        if found.seq >= pending.next_seqs[slot].1 {
            pending.next_seqs[slot].1 = found.seq + 1;
            if !acked.contains(&(found.items_table.as_str(), found.seq)) {
                pending.records.push(found);
            }
        }
    }
    Ok(pending)
}

/// Inside the open's write transaction: applies the journal of the stored
/// generation and starts the next one. Returns the new generation and how
/// many items were inserted, by items table.
pub(crate) fn replay(
    txn: &redb::WriteTransaction,
    meta_table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    path: &Path,
) -> Result<(u64, Vec<(String, u64)>), TxError> {
    let mut inserted: Vec<(String, u64)> = Vec::new();
    let mut value = Vec::new();
    let pending = pending(path, &*meta_table)?;
    let meta_of = |meta_table: &redb::Table<'_, &'static str, &'static [u8]>, table: &str| {
        Ok::<_, TxError>(
            meta_table
                .get(state_key_of(table).as_str())?
                .and_then(|v| Meta::from_bytes(v.value()))
                .unwrap_or_default(),
        )
    };
    for (table, seq) in &pending.stored_acks {
        let mut meta = meta_of(meta_table, table)?;
        let mut items = txn.open_table(TableDefinition::<u64, &[u8]>::new(table))?;
        store::remove_in(&mut items, &mut meta, &[*seq])?;
        meta_table.insert(state_key_of(table).as_str(), meta.to_bytes().as_slice())?;
    }
    for found in pending.records {
        let state_key = state_key_of(&found.items_table);
        let mut meta = meta_of(meta_table, &found.items_table)?;
        let mut items = txn.open_table(TableDefinition::<u64, &[u8]>::new(&found.items_table))?;
        value.clear();
        value.extend_from_slice(&found.enqueued_ms.to_le_bytes());
        value.extend_from_slice(&found.record);
        items.insert(found.seq, value.as_slice())?;
        meta.depth_bytes += cost(found.record.len());
        meta_table.insert(state_key.as_str(), meta.to_bytes().as_slice())?;
        match inserted.iter_mut().find(|(t, _)| *t == found.items_table) {
            Some((_, n)) => *n += 1,
            None => inserted.push((found.items_table, 1)),
        }
    }
    for (table, next_seq) in &pending.next_seqs {
        let mut meta = meta_of(meta_table, table)?;
        if meta.next_seq < *next_seq {
            meta.next_seq = *next_seq;
            meta_table.insert(state_key_of(table).as_str(), meta.to_bytes().as_slice())?;
        }
    }
    let next = stored_generation(&*meta_table)?.unwrap_or(0) + 1;
    meta_table.insert(META_JOURNAL_GEN, next.to_le_bytes().as_slice())?;
    Ok((next, inserted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_entries(path: &Path, generation: u64, bodies: &[Vec<u8>]) {
        let mut journal = Journal::open(path, generation, true).expect("open");
        for body in bodies {
            journal.append(body).expect("append");
        }
    }

    #[test]
    fn entries_round_trip_and_stop_at_the_first_bad_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.journal");
        let a: &[&[u8]] = &[b"one", b"two"];
        let b: &[&[u8]] = &[b"three"];
        let first = encode(
            &[
                JournalPart {
                    items_table: "mqtt.items",
                    first_seq: 7,
                    records: a,
                    acks: &[],
                },
                JournalPart {
                    items_table: "influx.items",
                    first_seq: 0,
                    records: b,
                    acks: &[],
                },
            ],
            42,
        );
        assert_eq!(
            first.len(),
            body_len(&[
                JournalPart {
                    items_table: "mqtt.items",
                    first_seq: 7,
                    records: a,
                    acks: &[],
                },
                JournalPart {
                    items_table: "influx.items",
                    first_seq: 0,
                    records: b,
                    acks: &[],
                },
            ])
        );
        let second = encode(
            &[JournalPart {
                items_table: "mqtt.items",
                first_seq: 9,
                records: b,
                acks: &[],
            }],
            43,
        );
        write_entries(&path, 5, &[first.clone(), second.clone()]);
        let found = read(&path, 5).expect("read").records;
        let seqs: Vec<(&str, u64, &[u8])> = found
            .iter()
            .map(|r| (r.items_table.as_str(), r.seq, r.record.as_slice()))
            .collect();
        assert_eq!(
            seqs,
            vec![
                ("mqtt.items", 7, &b"one"[..]),
                ("mqtt.items", 8, &b"two"[..]),
                ("influx.items", 0, &b"three"[..]),
                ("mqtt.items", 9, &b"three"[..]),
            ]
        );
        assert_eq!(found[3].enqueued_ms, 43);
        // Another generation: retired entries are not replayed.
        assert!(read(&path, 4).expect("read").records.is_empty());
        // A torn second entry (one byte of it flipped) loses that entry
        // only, and all of it.
        let mut bytes = std::fs::read(&path).expect("read file");
        let last = 2 * HEADER + first.len() + second.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(read(&path, 5).expect("read").records.len(), 3);
        // A first entry cut short loses everything after it, both queues.
        bytes.truncate(HEADER + first.len() - 1);
        std::fs::write(&path, &bytes).expect("write");
        assert!(read(&path, 5).expect("read").records.is_empty());
    }

    #[test]
    fn a_new_generation_overwrites_from_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.journal");
        let one: &[&[u8]] = &[b"a-long-record-of-the-old-generation"];
        let two: &[&[u8]] = &[b"new"];
        let old = encode(
            &[JournalPart {
                items_table: "items",
                first_seq: 1,
                records: one,
                acks: &[],
            }],
            1,
        );
        write_entries(&path, 1, &[old.clone(), old]);
        let new = encode(
            &[JournalPart {
                items_table: "items",
                first_seq: 3,
                records: two,
                acks: &[],
            }],
            2,
        );
        write_entries(&path, 2, &[new]);
        let found = read(&path, 2).expect("read").records;
        assert_eq!(
            found.len(),
            1,
            "the old entries after the new one are not replayed"
        );
        assert_eq!(found[0].record, b"new");
    }
}
