//! Opening a file: recovery after a crash, quarantine of a damaged file,
//! the queues' state records, the background thread.

use super::*;

/// Opens the file with these queues and starts its background thread.
pub(crate) fn open_store(
    path: &Path,
    queues: &[(&str, OutboxConfig)],
    clock: Clock,
    auto_expire: bool,
) -> Result<OutboxGroup, OutboxError> {
    let started = Instant::now();
    let name = path
        .file_stem()
        .map_or_else(|| "outbox".into(), |s| s.to_string_lossy().into_owned());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| OutboxError::Io {
            path: path.to_owned(),
            op: "create directory",
            source,
        })?;
    }
    let keys: Vec<(String, String)> = queues.iter().map(|(q, _)| queue_keys(q)).collect();
    let mut quarantined = None;
    let opened = match open_file(path, &keys) {
        Ok(opened) => opened,
        Err(OpenFailure::Fatal(err)) => return Err(err),
        Err(OpenFailure::Corrupt(reason)) => {
            let q = quarantine(path, &reason, (clock)())?;
            tracing::error!(
                outbox = %name,
                path = %path.display(),
                moved_to = %q.moved_to.display(),
                file_bytes = q.file_bytes,
                reason = %reason,
                "outbox file is unreadable: moved it aside and started an empty outbox; \
                 the items it held will not be delivered"
            );
            quarantined = Some(q);
            match open_file(path, &keys) {
                Ok(opened) => opened,
                Err(OpenFailure::Fatal(err)) => return Err(err),
                Err(OpenFailure::Corrupt(reason)) => {
                    return Err(OutboxError::Corrupt {
                        path: path.to_owned(),
                        detail: format!("a new, empty outbox file is unusable: {reason}"),
                    });
                }
            }
        }
    };
    let open_time = started.elapsed();
    let total_items: u64 = opened.queues.iter().map(|q| q.items).sum();
    if opened.repaired {
        tracing::warn!(
            outbox = %name,
            path = %path.display(),
            items = total_items,
            took_ms = open_time.as_millis() as u64,
            "outbox was not closed cleanly; recovered its last durable state"
        );
    } else {
        tracing::debug!(outbox = %name, items = total_items, "outbox opened");
    }
    let fsync = if queues.iter().any(|(_, c)| c.fsync == FsyncPolicy::Always) {
        FsyncPolicy::Always
    } else {
        FsyncPolicy::Interval
    };
    let interval = queues
        .iter()
        .map(|(_, c)| c.interval())
        .min()
        .unwrap_or(Duration::from_secs(1));
    let replayed: u64 = opened.queues.iter().map(|q| q.replayed).sum();
    if replayed > 0 {
        tracing::info!(outbox = %name, items = replayed,
            "appends made durable by the journal since the last checkpoint were restored");
    }
    let mut writer = Writer {
        journal: Journal::open(
            &journal::journal_path(path),
            opened.journal_generation,
            fsync == FsyncPolicy::Always,
        )?,
        pending_since: None,
        broken: false,
        compacted_len: 0,
        marks: Vec::with_capacity(queues.len()),
        unjournaled_since: None,
    };
    let mut queue_list = Vec::with_capacity(queues.len());
    for (index, (((queue_name, config), (items_table, state_key)), found)) in
        queues.iter().zip(keys).zip(opened.queues).enumerate()
    {
        let stats = OutboxStats {
            depth_items: found.items,
            depth_bytes: found.meta.depth_bytes,
            max_bytes: config.max_bytes.get(),
            oldest_enqueued_ms: found.oldest_ms,
            next_seq: found.meta.next_seq,
            ..OutboxStats::default()
        };
        let (appended_tx, _) = tokio::sync::watch::channel(found.meta.next_seq);
        writer.marks.push(Marks {
            seq_floor: found.meta.next_seq,
            ..Marks::default()
        });
        queue_list.push(Arc::new(Queue {
            index,
            name: if queue_name.is_empty() {
                name.clone()
            } else {
                (*queue_name).to_owned()
            },
            items_table,
            state_key,
            config: config.clone(),
            state: Mutex::new(stats),
            room: Condvar::new(),
            appended_tx,
            recovery: Recovery {
                repaired: opened.repaired,
                quarantined: quarantined.clone(),
                items: found.items,
                bytes: found.meta.depth_bytes,
                from_journal: found.replayed,
                open_time,
            },
            staged: Mutex::new(Staged::default()),
        }));
    }
    let store = Arc::new(Store {
        path: path.to_owned(),
        name: name.clone(),
        interval,
        clock,
        auto_expire,
        db: RwLock::new(Some(opened.db)),
        writer: Mutex::new(writer),
        stop: Mutex::new(false),
        wake: Condvar::new(),
        queues: queue_list,
    });
    let worker = store.clone();
    let flusher = std::thread::Builder::new()
        .name(format!("outbox-{name}"))
        .spawn(move || worker.run_flusher())
        .map_err(|source| OutboxError::Io {
            path: path.to_owned(),
            op: "start flusher thread",
            source,
        })?;
    let file = Arc::new(FileOwner {
        store: store.clone(),
        flusher: Mutex::new(Some(flusher)),
    });
    Ok(OutboxGroup {
        queues: store
            .queues
            .iter()
            .map(|queue| Outbox {
                file: file.clone(),
                queue: queue.clone(),
            })
            .collect(),
    })
}

/// Whether an open error means "this file is not a usable database" (move
/// it aside) rather than "cannot open it now" (report).
pub(crate) fn classify_open_error(path: &Path, err: redb::Error) -> OpenFailure {
    match err {
        redb::Error::Corrupted(detail) => OpenFailure::Corrupt(detail),
        redb::Error::UpgradeRequired(v) => {
            OpenFailure::Corrupt(format!("redb file format {v} needs an upgrade"))
        }
        redb::Error::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
            OpenFailure::Corrupt(e.to_string())
        }
        redb::Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            OpenFailure::Corrupt(format!("truncated: {e}"))
        }
        redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. } => {
            OpenFailure::Corrupt(format!("not a sluice outbox: {err}"))
        }
        redb::Error::ValueTooLarge(_) => OpenFailure::Corrupt(err.to_string()),
        other => OpenFailure::Fatal(OutboxError::from_redb(path, "open", other)),
    }
}

/// Opens or creates the database, checks the layout, reads each queue's
/// meta (`keys`: items table and state key per queue). A panic inside redb
/// (it trusts a file closed cleanly) is a corrupt file.
pub(crate) fn open_file(path: &Path, keys: &[(String, String)]) -> Result<Opened, OpenFailure> {
    match catch_unwind(AssertUnwindSafe(|| open_file_inner(path, keys))) {
        Ok(result) => result,
        Err(payload) => Err(OpenFailure::Corrupt(format!(
            "redb panicked while opening it: {}",
            panic_message(payload.as_ref())
        ))),
    }
}

pub(crate) fn open_file_inner(
    path: &Path,
    keys: &[(String, String)],
) -> Result<Opened, OpenFailure> {
    // A file redb closed cleanly is trusted by a plain open, and a page
    // damaged since then makes redb panic when it is read (tested), long
    // after the open. Checking every page's checksum on open turns that into
    // a `Corrupted` error here, where the file can be moved aside. It costs a
    // read of the whole file per start.
    let mut builder = redb::Builder::new();
    builder
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(true);
    let db = builder
        .create(path)
        .map_err(|e| classify_open_error(path, e.into()))?;
    let fail = |e: redb::Error| classify_open_error(path, e);
    let txn = db.begin_write().map_err(|e| fail(e.into()))?;
    let (queues, repaired, journal_generation) = {
        let mut meta_table = txn.open_table(META).map_err(|e| fail(e.into()))?;
        let format = meta_table
            .get(META_FORMAT)
            .map_err(|e| fail(e.into()))?
            .map(|v| v.value().to_vec());
        let clean = meta_table
            .get(META_CLEAN)
            .map_err(|e| fail(e.into()))?
            .map(|v| v.value() == [1]);
        let repaired = format.is_some() && clean != Some(true);
        match &format {
            None => {}
            Some(raw) => {
                let version = <[u8; 4]>::try_from(raw.as_slice())
                    .map(u32::from_le_bytes)
                    .map_err(|_| OpenFailure::Corrupt("damaged format record".into()))?;
                if version > FORMAT_VERSION {
                    return Err(OpenFailure::Fatal(OutboxError::UnsupportedFormat {
                        path: path.to_owned(),
                        found: version,
                    }));
                }
                if version == 0 {
                    return Err(OpenFailure::Corrupt("format record says 0".into()));
                }
            }
        }
        // Before the queues are read: the journal adds to them.
        let (journal_generation, replayed) = if format.is_some() {
            journal::replay(&txn, &mut meta_table, path).map_err(|e| match e {
                TxError::Outbox(OutboxError::Corrupt { detail, .. }) => {
                    OpenFailure::Corrupt(detail)
                }
                TxError::Outbox(err) => OpenFailure::Fatal(err),
                TxError::Redb(err) => fail(err),
            })?
        } else {
            (1, Vec::new())
        };
        if format.is_none() {
            meta_table
                .insert(journal::META_JOURNAL_GEN, 1u64.to_le_bytes().as_slice())
                .map_err(|e| fail(e.into()))?;
        }
        let mut queues = Vec::with_capacity(keys.len());
        for (table_name, state_key) in keys {
            let items_table = txn
                .open_table(TableDefinition::<u64, &[u8]>::new(table_name))
                .map_err(|e| fail(e.into()))?;
            let items = items_table.len().map_err(|e| fail(e.into()))?;
            let stored = meta_table
                .get(state_key.as_str())
                .map_err(|e| fail(e.into()))?
                .map(|v| v.value().to_vec());
            let last = items_table
                .last()
                .map_err(|e| fail(e.into()))?
                .map(|(k, _)| k.value());
            let oldest_ms = match items_table.first().map_err(|e| fail(e.into()))? {
                Some((k, v)) => match split_value(v.value()) {
                    Some((ts, _)) => Some(ts),
                    None => {
                        return Err(OpenFailure::Corrupt(format!(
                            "item {} is damaged ({} bytes)",
                            k.value(),
                            v.value().len()
                        )));
                    }
                },
                None => None,
            };
            let meta = match (&format, stored) {
                (None, stored) => {
                    if items > 0 || stored.is_some() {
                        return Err(OpenFailure::Corrupt(
                            "items but no format record: not a sluice outbox".into(),
                        ));
                    }
                    Meta::default()
                }
                // A queue new to this file.
                (Some(_), None) if items == 0 => Meta::default(),
                (Some(_), stored) => {
                    let mut meta = stored
                        .as_deref()
                        .and_then(Meta::from_bytes)
                        .ok_or_else(|| OpenFailure::Corrupt("damaged state record".into()))?;
                    if let Some(last) = last {
                        meta.next_seq = meta.next_seq.max(last.saturating_add(1));
                    }
                    if items == 0 {
                        meta.depth_bytes = 0;
                    }
                    meta
                }
            };
            meta_table
                .insert(state_key.as_str(), meta.to_bytes().as_slice())
                .map_err(|e| fail(e.into()))?;
            queues.push(OpenedQueue {
                meta,
                items,
                oldest_ms,
                replayed: replayed
                    .iter()
                    .find(|(table, _)| table == table_name)
                    .map_or(0, |(_, n)| *n),
            });
        }
        if format.is_none() {
            meta_table
                .insert(META_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())
                .map_err(|e| fail(e.into()))?;
        }
        meta_table
            .insert(META_CLEAN, [0u8].as_slice())
            .map_err(|e| fail(e.into()))?;
        (queues, repaired, journal_generation)
    };
    txn.commit().map_err(|e| fail(e.into()))?;
    Ok(Opened {
        db,
        queues,
        repaired,
        journal_generation,
    })
}

/// Moves a damaged file aside as `NAME.corrupt-<unix ms>`.
pub(crate) fn quarantine(
    path: &Path,
    reason: &str,
    now_ms: u64,
) -> Result<Quarantined, OutboxError> {
    let io_err = |op, source| OutboxError::Io {
        path: path.to_owned(),
        op,
        source,
    };
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{now_ms}"));
    let moved_to = path.with_file_name(name);
    std::fs::rename(path, &moved_to).map_err(|e| io_err("move a damaged file aside", e))?;
    // The journal's entries belong to the damaged file's sequence numbers.
    let journal = journal::journal_path(path);
    if journal.exists() {
        let mut name = journal.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".corrupt-{now_ms}"));
        std::fs::rename(&journal, journal.with_file_name(name))
            .map_err(|e| io_err("move a damaged file's journal aside", e))?;
    }
    // Make the rename durable before a new file takes the name.
    sync_parent_dir(path)?;
    Ok(Quarantined {
        moved_to,
        file_bytes,
        reason: reason.to_owned(),
    })
}
