//! `sluice outbox inspect` and `verify`: read a file without changing it.

use super::*;

/// What `sluice outbox inspect` shows of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectReport {
    /// The queue's name (empty in a file of the previous layout, which
    /// holds one queue).
    pub queue: String,
    /// Items stored.
    pub items: u64,
    /// Bytes counted against `max_bytes`.
    pub bytes: u64,
    /// Enqueue time of the oldest item, ms since the epoch.
    pub oldest_enqueued_ms: Option<u64>,
    /// Sequence numbers stored, oldest and newest.
    pub seq_range: Option<(u64, u64)>,
    /// The next sequence number.
    pub next_seq: u64,
    /// Of `items`, those still only in the journal (a host that crashed
    /// appended them after its last checkpoint; its next start restores
    /// them).
    pub from_journal: u64,
    /// Size of the file.
    pub file_bytes: u64,
}

/// Reads the depth of each queue of an outbox file without changing it. Fails with
/// [`OutboxError::InUse`] while a host has it open, and with a `Store`
/// error (`RepairAborted`) if it needs the repair that opening it does.
pub fn inspect(path: &Path) -> Result<Vec<InspectReport>, OutboxError> {
    let file_bytes = std::fs::metadata(path)
        .map_err(|source| OutboxError::Io {
            path: path.to_owned(),
            op: "inspect",
            source,
        })?
        .len();
    let run = || -> Result<Vec<InspectReport>, OutboxError> {
        let err = |e: redb::Error| OutboxError::from_redb(path, "inspect", e);
        match redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .open_read_only(path)
        {
            Ok(db) => inspect_db(&db, path, file_bytes),
            // Left by a crash: redb wants to repair it, which read-only
            // cannot. Repair a private copy instead, so inspecting never
            // changes the file a stopped host will reopen.
            Err(redb::DatabaseError::RepairAborted) => {
                let copy = tempfile::NamedTempFile::new().map_err(|source| OutboxError::Io {
                    path: path.to_owned(),
                    op: "inspect (copy for repair)",
                    source,
                })?;
                std::fs::copy(path, copy.path()).map_err(|source| OutboxError::Io {
                    path: path.to_owned(),
                    op: "inspect (copy for repair)",
                    source,
                })?;
                let db = redb::Builder::new()
                    .set_cache_size(CACHE_BYTES)
                    .open(copy.path())
                    .map_err(|e| err(e.into()))?;
                inspect_db(&db, path, file_bytes)
            }
            Err(e) => Err(err(e.into())),
        }
    };
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|payload| {
        Err(OutboxError::Corrupt {
            path: path.to_owned(),
            detail: format!("redb panicked: {}", panic_message(payload.as_ref())),
        })
    })
}

/// The queues of a file: their names, from the state records in [`META`].
pub(crate) fn queue_names(
    meta_table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<String>, redb::StorageError> {
    let mut names = Vec::new();
    for entry in meta_table.iter()? {
        let (key, _) = entry?;
        let key = key.value();
        if key == META_STATE {
            names.push(String::new());
        } else if let Some(name) = key.strip_suffix(&format!(".{META_STATE}")) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// The [`inspect`] reports of an open database, one per queue.
pub(crate) fn inspect_db(
    db: &impl redb::ReadableDatabase,
    path: &Path,
    file_bytes: u64,
) -> Result<Vec<InspectReport>, OutboxError> {
    let err = |e: redb::Error| OutboxError::from_redb(path, "inspect", e);
    let txn = db.begin_read().map_err(|e| err(e.into()))?;
    let meta_table = txn.open_table(META).map_err(|e| err(e.into()))?;
    let names = queue_names(&meta_table).map_err(|e| err(e.into()))?;
    if names.is_empty() {
        return Err(OutboxError::Corrupt {
            path: path.to_owned(),
            detail: "no state record: not a sluice outbox".into(),
        });
    }
    let mut reports = Vec::with_capacity(names.len());
    for name in names {
        let (items_table, state_key) = queue_keys(&name);
        let meta = meta_table
            .get(state_key.as_str())
            .map_err(|e| err(e.into()))?
            .and_then(|v| Meta::from_bytes(v.value()))
            .ok_or_else(|| OutboxError::Corrupt {
                path: path.to_owned(),
                detail: format!("damaged state record of queue {name:?}"),
            })?;
        let items = match txn.open_table(TableDefinition::<u64, &[u8]>::new(&items_table)) {
            Ok(items) => items,
            // A queue whose table was never written.
            Err(redb::TableError::TableDoesNotExist(_)) => {
                reports.push(InspectReport {
                    queue: name,
                    items: 0,
                    bytes: 0,
                    oldest_enqueued_ms: None,
                    seq_range: None,
                    next_seq: meta.next_seq,
                    from_journal: 0,
                    file_bytes,
                });
                continue;
            }
            Err(e) => return Err(err(e.into())),
        };
        let first = items.first().map_err(|e| err(e.into()))?;
        let last = items.last().map_err(|e| err(e.into()))?;
        let oldest_enqueued_ms = first
            .as_ref()
            .and_then(|(_, v)| split_value(v.value()).map(|(ts, _)| ts));
        let seq_range = first
            .zip(last)
            .map(|((a, _), (b, _))| (a.value(), b.value()));
        reports.push(InspectReport {
            queue: name,
            items: items.len().map_err(|e| err(e.into()))?,
            bytes: meta.depth_bytes,
            oldest_enqueued_ms,
            seq_range,
            next_seq: meta.next_seq,
            from_journal: 0,
            file_bytes,
        });
    }
    let pending = journal::pending(path, &meta_table).map_err(|e| match e {
        TxError::Outbox(e) => e,
        TxError::Redb(e) => err(e),
    })?;
    for (table, seq) in &pending.stored_acks {
        let Some(report) = reports
            .iter_mut()
            .find(|r| queue_keys(&r.queue).0 == *table)
        else {
            continue;
        };
        if let Some(freed) = stored_cost(&txn, table, *seq).map_err(err)? {
            report.items = report.items.saturating_sub(1);
            report.bytes = report.bytes.saturating_sub(freed);
        }
    }
    for found in pending.records {
        let Some(report) = reports
            .iter_mut()
            .find(|r| queue_keys(&r.queue).0 == found.items_table)
        else {
            continue;
        };
        report.items += 1;
        report.from_journal += 1;
        report.bytes += cost(found.record.len());
        report.oldest_enqueued_ms = report.oldest_enqueued_ms.or(Some(found.enqueued_ms));
        report.seq_range = Some(match report.seq_range {
            Some((first, _)) => (first, found.seq),
            None => (found.seq, found.seq),
        });
        report.next_seq = found.seq + 1;
    }
    // Acked records of the journal count too: their numbers are not handed
    // out again.
    for (table, next_seq) in &pending.next_seqs {
        if let Some(report) = reports
            .iter_mut()
            .find(|r| queue_keys(&r.queue).0 == *table)
        {
            report.next_seq = report.next_seq.max(*next_seq);
        }
    }
    Ok(reports)
}

/// What `sluice outbox verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The last process that had the file open closed it (false: it
    /// crashed or was killed; opening the file recovered its last durable
    /// state, as starting the host would).
    pub closed_cleanly: bool,
    /// redb's integrity check found a problem and repaired it.
    pub repaired: bool,
    /// Items read (those in the journal included).
    pub items: u64,
    /// Of `items`, those still only in the journal (see [`InspectReport`]).
    pub from_journal: u64,
    /// Their bytes, as counted against `max_bytes`.
    pub bytes: u64,
    /// Problems found (undecodable records, wrong bookkeeping), at most 20
    /// described; `problem_count` counts them all.
    pub problems: Vec<String>,
    /// Number of problems.
    pub problem_count: u64,
}

/// Checks an outbox file: redb's integrity check (checksums of every page;
/// repairs what a crash left, as opening would), then reads every item,
/// passes its record to `decode`, and checks the bookkeeping. Needs the file
/// to itself ([`OutboxError::InUse`] while a host runs). Does not create the
/// file and never moves it.
pub fn verify(
    path: &Path,
    decode: impl Fn(&[u8]) -> Result<(), String>,
) -> Result<VerifyReport, OutboxError> {
    let run = || -> Result<VerifyReport, OutboxError> {
        let err = |e: redb::Error| OutboxError::from_redb(path, "verify", e);
        let corrupt = |detail: String| OutboxError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        let mut db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .open(path)
            .map_err(|e| match classify_open_error(path, e.into()) {
                OpenFailure::Corrupt(detail) => corrupt(detail),
                OpenFailure::Fatal(err) => err,
            })?;
        let passed = match db.check_integrity() {
            Ok(passed) => passed,
            Err(e) => {
                return Err(match classify_open_error(path, e.into()) {
                    OpenFailure::Corrupt(detail) => corrupt(detail),
                    OpenFailure::Fatal(err) => err,
                });
            }
        };
        let mut report = VerifyReport {
            repaired: !passed,
            ..VerifyReport::default()
        };
        let problem = |report: &mut VerifyReport, text: String| {
            report.problem_count += 1;
            if report.problems.len() < 20 {
                report.problems.push(text);
            }
        };
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let meta_table = txn
            .open_table(META)
            .map_err(|e| corrupt(format!("not a sluice outbox: {e}")))?;
        let format = meta_table
            .get(META_FORMAT)
            .map_err(|e| err(e.into()))?
            .map(|v| v.value().to_vec());
        match format.as_deref().map(<[u8; 4]>::try_from) {
            Some(Ok(raw)) if u32::from_le_bytes(raw) == FORMAT_VERSION => {}
            Some(Ok(raw)) => {
                return Err(OutboxError::UnsupportedFormat {
                    path: path.to_owned(),
                    found: u32::from_le_bytes(raw),
                });
            }
            _ => return Err(corrupt("no valid format record".into())),
        }
        report.closed_cleanly = meta_table
            .get(META_CLEAN)
            .map_err(|e| err(e.into()))?
            .is_some_and(|v| v.value() == [1]);
        let names = queue_names(&meta_table).map_err(|e| err(e.into()))?;
        if names.is_empty() {
            return Err(corrupt("no valid state record".into()));
        }
        for name in names {
            // Problems name the queue when the file holds several.
            let label = if name.is_empty() {
                String::new()
            } else {
                format!("queue {name}: ")
            };
            let (items_table, state_key) = queue_keys(&name);
            let meta = meta_table
                .get(state_key.as_str())
                .map_err(|e| err(e.into()))?
                .and_then(|v| Meta::from_bytes(v.value()))
                .ok_or_else(|| corrupt(format!("{label}no valid state record")))?;
            let items = match txn.open_table(TableDefinition::<u64, &[u8]>::new(&items_table)) {
                Ok(items) => items,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(corrupt(format!("not a sluice outbox: {e}"))),
            };
            let mut last_seq = None;
            let mut bytes = 0;
            for entry in items.iter().map_err(|e| err(e.into()))? {
                let (k, v) = entry.map_err(|e| err(e.into()))?;
                let seq = k.value();
                last_seq = Some(seq);
                report.items += 1;
                match split_value(v.value()) {
                    Some((_, record)) => {
                        bytes += cost(record.len());
                        if let Err(why) = decode(record) {
                            problem(&mut report, format!("{label}item {seq}: {why}"));
                        }
                    }
                    None => problem(
                        &mut report,
                        format!("{label}item {seq}: damaged ({} bytes)", v.value().len()),
                    ),
                }
            }
            report.bytes += bytes;
            if bytes != meta.depth_bytes {
                let text = format!(
                    "{label}the state record counts {} bytes, the items add up to {bytes}",
                    meta.depth_bytes
                );
                problem(&mut report, text);
            }
            if let Some(last) = last_seq
                && last >= meta.next_seq
            {
                problem(
                    &mut report,
                    format!(
                        "{label}item {last} is not below the next sequence number {}",
                        meta.next_seq
                    ),
                );
            }
        }
        let pending = journal::pending(path, &meta_table).map_err(|e| match e {
            TxError::Outbox(e) => e,
            TxError::Redb(e) => err(e),
        })?;
        for (table, seq) in &pending.stored_acks {
            if let Some(freed) = stored_cost(&txn, table, *seq).map_err(err)? {
                report.items = report.items.saturating_sub(1);
                report.bytes = report.bytes.saturating_sub(freed);
            }
        }
        for found in pending.records {
            report.items += 1;
            report.from_journal += 1;
            report.bytes += cost(found.record.len());
            if let Err(why) = decode(&found.record) {
                let text = format!("journal: {} item {}: {why}", found.items_table, found.seq);
                problem(&mut report, text);
            }
        }
        Ok(report)
    };
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|payload| {
        Err(OutboxError::Corrupt {
            path: path.to_owned(),
            detail: format!("redb panicked: {}", panic_message(payload.as_ref())),
        })
    })
}

/// What item `seq` of `table` counts in the file's bytes, if the file holds
/// it (the journal acked it since: a replay removes it).
fn stored_cost(
    txn: &redb::ReadTransaction,
    table: &str,
    seq: u64,
) -> Result<Option<u64>, redb::Error> {
    let items = match txn.open_table(TableDefinition::<u64, &[u8]>::new(table)) {
        Ok(items) => items,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(items
        .get(seq)?
        .map(|v| cost(v.value().len().saturating_sub(8))))
}
