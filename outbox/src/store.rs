//! The writes: transactions over a file's queues (append, ack, expiry,
//! eviction), durable commits, the background thread's flushes and
//! compaction, the move of a file of the previous layout.

use super::*;

/// Depth facts read inside a transaction, applied to the stats after commit.
pub(crate) struct Tally {
    items: u64,
    oldest_ms: Option<u64>,
}

impl Tally {
    pub(crate) fn of(
        items: &impl ReadableTable<u64, &'static [u8]>,
    ) -> Result<Tally, redb::StorageError> {
        let oldest_ms = items
            .first()?
            .and_then(|(_, v)| split_value(v.value()).map(|(ts, _)| ts));
        Ok(Tally {
            items: items.len()?,
            oldest_ms,
        })
    }

    pub(crate) fn apply(self, s: &mut OutboxStats, meta: Meta) {
        s.depth_items = self.items;
        s.oldest_enqueued_ms = self.oldest_ms;
        s.depth_bytes = meta.depth_bytes;
        s.next_seq = meta.next_seq;
    }
}

/// What one part of an append did, before the stats know it.
pub(crate) struct PartDone {
    appended: Appended,
    acked: u64,
    tally: Tally,
}

impl Store {
    pub(crate) fn flush_due(&self, w: &Writer) -> bool {
        w.pending_since
            .is_some_and(|t| t.elapsed() >= self.interval)
    }

    /// Runs `body` in a write transaction with every queue's [`Meta`] (by
    /// queue index), writes the metas back and commits. Returns the body's
    /// value and the new metas. A durable commit is a checkpoint: it starts
    /// the journal's next generation.
    pub(crate) fn write<R>(
        &self,
        w: &mut Writer,
        op: &'static str,
        durable: bool,
        closing: bool,
        body: impl FnOnce(&redb::WriteTransaction, &mut [Meta]) -> Result<R, TxError>,
    ) -> Result<(R, Vec<Meta>), OutboxError> {
        self.write_journaled(w, op, durable, closing, body, |_: &R| None)
    }

    /// [`write`](Self::write), and before the commit the journal entry
    /// `entry` makes of the body's value, if any, is written and synced: the
    /// commit is then durable through the journal (`durable` is false).
    pub(crate) fn write_journaled<R>(
        &self,
        w: &mut Writer,
        op: &'static str,
        durable: bool,
        closing: bool,
        body: impl FnOnce(&redb::WriteTransaction, &mut [Meta]) -> Result<R, TxError>,
        entry: impl FnOnce(&R) -> Option<Vec<u8>>,
    ) -> Result<(R, Vec<Meta>), OutboxError> {
        self.ensure_open(w)?;
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = guard.as_ref() else {
            return Err(self.closed_error(op));
        };
        let Writer { marks, journal, .. } = &mut *w;
        let next_generation = durable.then(|| journal.generation() + 1);
        let mut journaled = false;
        let mut journal_failed = false;
        let result = (|| -> Result<(R, Vec<Meta>), TxError> {
            let mut txn = db.begin_write()?;
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })?;
            let (value, metas) = {
                let meta_table = txn.open_table(META)?;
                let mut metas = Vec::with_capacity(self.queues.len());
                for (queue, marks) in self.queues.iter().zip(marks) {
                    let mut meta = match meta_table.get(queue.state_key.as_str())? {
                        Some(v) => Meta::from_bytes(v.value()),
                        None => None,
                    }
                    .ok_or_else(|| OutboxError::Corrupt {
                        path: self.path.clone(),
                        detail: format!("the state record of {} is missing or damaged", queue.name),
                    })?;
                    meta.next_seq = meta.next_seq.max(marks.seq_floor);
                    metas.push(meta);
                }
                // Closed while the body runs, which may write to it too.
                drop(meta_table);
                self.write_staged(&txn, &mut metas)?;
                let value = body(&txn, &mut metas)?;
                let mut meta_table = txn.open_table(META)?;
                for (queue, meta) in self.queues.iter().zip(&metas) {
                    meta_table.insert(queue.state_key.as_str(), meta.to_bytes().as_slice())?;
                }
                if closing {
                    meta_table.insert(META_CLEAN, [1u8].as_slice())?;
                }
                if let Some(generation) = next_generation {
                    meta_table.insert(
                        journal::META_JOURNAL_GEN,
                        generation.to_le_bytes().as_slice(),
                    )?;
                }
                (value, metas)
            };
            if let Some(body) = entry(&value) {
                // Dropping the transaction on an error rolls it back.
                journal.append(&body).map_err(|source| {
                    journal_failed = true;
                    TxError::Outbox(journal::io_error(&self.path, "append (journal)", source))
                })?;
                journaled = true;
            }
            txn.commit()?;
            Ok((value, metas))
        })();
        match result {
            Ok(done) => {
                // In redb now; a reader that saw them staged read redb only
                // below them.
                for queue in &self.queues {
                    *lock(&queue.staged) = Staged::default();
                }
                drop(guard);
                for (marks, meta) in w.marks.iter_mut().zip(&done.1) {
                    marks.seq_floor = meta.next_seq;
                }
                if let Some(generation) = next_generation {
                    w.journal.reset(generation);
                }
                if durable {
                    w.pending_since = None;
                    // Durable in redb now, staged ones acked included (never
                    // written).
                    for marks in &mut w.marks {
                        marks.unjournaled_acks.clear();
                    }
                    w.unjournaled_since = None;
                } else {
                    w.pending_since.get_or_insert_with(Instant::now);
                }
                if durable || (journaled && w.journal.syncs()) {
                    for queue in &self.queues {
                        lock(&queue.state).durable_commits += 1;
                    }
                }
                Ok(done)
            }
            Err(TxError::Outbox(err)) => {
                drop(guard);
                if journal_failed {
                    // The transaction was rolled back and redb is fine.
                    for queue in &self.queues {
                        lock(&queue.state).write_errors += 1;
                    }
                }
                Err(err)
            }
            Err(TxError::Redb(err)) => {
                drop(guard);
                // redb refuses further writes after a failed commit; reopen
                // (which repairs) before the next operation.
                w.broken = true;
                for queue in &self.queues {
                    lock(&queue.state).write_errors += 1;
                }
                Err(OutboxError::from_redb(&self.path, op, err))
            }
        }
    }

    /// Inside a transaction, before anything else: writes every queue's
    /// staged items to redb, so the transaction sees (and its bounds,
    /// evictions and acks apply to) the whole queue.
    fn write_staged(
        &self,
        txn: &redb::WriteTransaction,
        metas: &mut [Meta],
    ) -> Result<(), TxError> {
        let mut value = Vec::new();
        for (queue, meta) in self.queues.iter().zip(metas) {
            let staged = lock(&queue.staged);
            if staged.items.is_empty() {
                continue;
            }
            let mut items = txn.open_table(queue.items())?;
            for (&seq, (enqueued_ms, record)) in &staged.items {
                value.clear();
                value.extend_from_slice(&enqueued_ms.to_le_bytes());
                value.extend_from_slice(record);
                items.insert(seq, value.as_slice())?;
            }
            // `next_seq` is already past them (the sequence floor).
            meta.depth_bytes += staged.bytes;
        }
        Ok(())
    }

    pub(crate) fn closed_error(&self, op: &'static str) -> OutboxError {
        OutboxError::Store {
            path: self.path.clone(),
            op,
            source: Box::new(redb::Error::DatabaseClosed),
        }
    }

    /// Reopens the file after a failed commit (or a failed reopen).
    pub(crate) fn ensure_open(&self, w: &mut Writer) -> Result<(), OutboxError> {
        if !w.broken {
            return Ok(());
        }
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // Close the old handle first: the file lock allows one at a time.
        if let Some(old) = slot.take() {
            let _ = old.close();
        }
        let keys: Vec<(String, String)> = self
            .queues
            .iter()
            .map(|q| (q.items_table.clone(), q.state_key.clone()))
            .collect();
        let opened = open_file(&self.path, &keys).map_err(|failure| match failure {
            OpenFailure::Fatal(err) => err,
            OpenFailure::Corrupt(detail) => OutboxError::Corrupt {
                path: self.path.clone(),
                detail,
            },
        })?;
        *slot = Some(opened.db);
        // The reopen replayed the journal, which holds every staged item
        // (those acked meanwhile too: sent again, never lost).
        for queue in &self.queues {
            *lock(&queue.staged) = Staged::default();
        }
        for marks in &mut w.marks {
            marks.unjournaled_acks.clear();
        }
        w.unjournaled_since = None;
        drop(slot);
        w.broken = false;
        w.journal.reset(opened.journal_generation);
        // Pending non-durable commits were lost or made durable by the
        // repair; either way nothing is pending now.
        w.pending_since = None;
        for ((queue, found), marks) in self.queues.iter().zip(opened.queues).zip(&w.marks) {
            let mut s = lock(&queue.state);
            s.depth_items = found.items;
            s.depth_bytes = found.meta.depth_bytes;
            s.oldest_enqueued_ms = found.oldest_ms;
            s.next_seq = found.meta.next_seq.max(marks.seq_floor);
            let lost = marks.seq_floor.saturating_sub(found.meta.next_seq);
            s.lost_on_reopen += lost;
            drop(s);
            if lost > 0 {
                tracing::error!(outbox = %queue.name, lost, first = found.meta.next_seq,
                    "a failed write took back what was appended since the last durable commit (fsync = \"interval\"): those items are lost unless already delivered");
            }
            queue.room.notify_all();
            tracing::info!(outbox = %queue.name, items = found.items, "outbox reopened after a failed write");
        }
        Ok(())
    }

    pub(crate) fn flush_locked(&self, w: &mut Writer) -> Result<(), OutboxError> {
        if w.pending_since.is_none() && !w.broken {
            return Ok(());
        }
        self.durable_commit(w, "flush", false)
    }

    /// An otherwise empty durable commit; `closing` marks the file closed
    /// cleanly.
    pub(crate) fn durable_commit(
        &self,
        w: &mut Writer,
        op: &'static str,
        closing: bool,
    ) -> Result<(), OutboxError> {
        let (tallies, metas) = self.write(w, op, true, closing, |txn, _| {
            let mut tallies = Vec::with_capacity(self.queues.len());
            for queue in &self.queues {
                tallies.push(Tally::of(&txn.open_table(queue.items())?)?);
            }
            Ok(tallies)
        })?;
        for ((queue, tally), meta) in self.queues.iter().zip(tallies).zip(metas) {
            tally.apply(&mut lock(&queue.state), meta);
        }
        Ok(())
    }

    /// The append of [`OutboxGroup::append`].
    pub(crate) fn append(&self, parts: &[Part<'_>]) -> Result<Vec<Appended>, OutboxError> {
        let parts: Vec<Part<'_>> = parts
            .iter()
            .copied()
            .filter(|(index, _, _)| *index < self.queues.len())
            .collect();
        let acks: Vec<(usize, &[u64])> = parts.iter().map(|&(i, _, acks)| (i, acks)).collect();
        for &(index, records, _) in &parts {
            let needed: u64 = records.iter().map(|r| cost(r.len())).sum();
            let max_bytes = self.queues[index].config.max_bytes.get();
            if needed > max_bytes {
                self.ack(&acks)?;
                return Err(OutboxError::TooLarge {
                    path: self.path.clone(),
                    needed,
                    max_bytes,
                });
            }
        }
        if parts.iter().all(|(_, records, _)| records.is_empty()) {
            self.ack(&acks)?;
            return Ok(parts
                .iter()
                .map(|&(index, _, _)| {
                    let next = lock(&self.queues[index].state).next_seq;
                    Appended {
                        seqs: next..next,
                        evicted: 0,
                        expired: 0,
                    }
                })
                .collect());
        }
        let journal_parts = |first_seqs: &mut dyn Iterator<Item = u64>| -> Vec<JournalPart<'_>> {
            parts
                .iter()
                .zip(first_seqs)
                .filter(|((_, records, _), _)| !records.is_empty())
                .map(|(&(index, records, _), first_seq)| JournalPart {
                    items_table: &self.queues[index].items_table,
                    first_seq,
                    records,
                    // Applied in redb, durable with the next checkpoint.
                    acks: &[],
                })
                .collect()
        };
        let mut w = lock(&self.writer);
        let now = (self.clock)();
        // The common case, with a journal: no transaction at all.
        if !self.flush_due(&w)
            && let Some(staged) = self.stage(&mut w, &parts, now)
        {
            return staged.map(|(appended, _)| appended);
        }
        // Through the journal unless a checkpoint is due anyway or the
        // entry does not fit: then the commit itself is durable (with
        // either policy: a commit that is neither journaled nor durable
        // would not survive a crash of the process).
        let body_len = journal::body_len(&journal_parts(&mut std::iter::repeat(0)));
        let journaled = !self.flush_due(&w) && w.journal.fits(body_len);
        let durable = !journaled;
        let mut full_queue = None;
        let entry = |done: &Vec<PartDone>| {
            journaled.then(|| {
                let mut first_seqs = done.iter().map(|part| part.appended.seqs.start);
                journal::encode(&journal_parts(&mut first_seqs), now)
            })
        };
        let result = self.write_journaled(
            &mut w,
            "append",
            durable,
            false,
            |txn, metas| {
                let mut done = Vec::with_capacity(parts.len());
                for &(index, records, acks) in &parts {
                    let queue = &self.queues[index];
                    let mut items = txn.open_table(queue.items())?;
                    let meta = &mut metas[index];
                    let part = queue.append_in(&mut items, meta, records, acks, now, &self.path);
                    if let Err(TxError::Outbox(OutboxError::Full { .. })) = &part {
                        full_queue = Some(index);
                    }
                    done.push(part?);
                }
                Ok(done)
            },
            entry,
        );
        match result {
            Ok((done, metas)) => {
                let mut appended = Vec::with_capacity(done.len());
                let mut to_notify = Vec::with_capacity(done.len());
                for (&(index, _, _), part) in parts.iter().zip(done) {
                    let queue = &self.queues[index];
                    let meta = metas[index];
                    let records_n = part.appended.seqs.end - part.appended.seqs.start;
                    {
                        let mut s = lock(&queue.state);
                        s.acked += part.acked;
                        s.appended += records_n;
                        s.dropped_overflow += part.appended.evicted;
                        s.dropped_expired += part.appended.expired;
                        part.tally.apply(&mut s, meta);
                    }
                    queue.note_episodes(&mut w.marks[index], &part.appended, meta.depth_bytes);
                    to_notify.push((index, part.acked > 0, meta.next_seq));
                    appended.push(part.appended);
                }
                drop(w);
                for (index, acked, next_seq) in to_notify {
                    let queue = &self.queues[index];
                    queue.appended_tx.send_replace(next_seq);
                    if acked {
                        queue.room.notify_all();
                    }
                }
                Ok(appended)
            }
            Err(err @ OutboxError::Full { .. }) => {
                if let Some(index) = full_queue {
                    let queue = &self.queues[index];
                    lock(&queue.state).refused_full += 1;
                    let episode = w.marks[index].blocked_episode.get_or_insert(0);
                    if *episode == 0 {
                        tracing::warn!(
                            outbox = %queue.name,
                            max_bytes = queue.config.max_bytes.get(),
                            "outbox full: appends wait for deliveries (when_full = block)"
                        );
                    }
                    *episode += 1;
                }
                drop(w);
                // The refusal rolled the acks back with the append.
                self.ack(&acks)?;
                Err(err)
            }
            Err(err) => Err(err),
        }
    }

    /// An append without a redb transaction: the records are written to the
    /// journal (durable when this returns, like any journaled append) and
    /// staged in memory; acks of staged items remove them there, acks of
    /// stored items in a transaction of their own. The acks ride in the
    /// entry (with earlier ones not journaled yet), so a replay leaves out
    /// what was delivered. Most items are delivered and acked before the
    /// next checkpoint, and so never reach redb at all. With no records, the
    /// acks are applied without an entry (no sync): the next one carries
    /// them.
    ///
    /// `None` (nothing done) when the append needs the whole queue in redb:
    /// a bound to enforce (eviction or `block`), an expiry due, a journal
    /// too full for the entry (a checkpoint). The caller then takes the
    /// transaction, which writes the staged items first.
    fn stage(
        &self,
        w: &mut Writer,
        parts: &[Part<'_>],
        now: u64,
    ) -> Option<Result<(Vec<Appended>, u64), OutboxError>> {
        if w.broken {
            return None;
        }
        let mut seen = vec![false; self.queues.len()];
        for &(index, records, acks) in parts {
            if std::mem::replace(&mut seen[index], true) {
                return None;
            }
            if records.is_empty() {
                continue;
            }
            let queue = &self.queues[index];
            // Acks of stored items free room too, but are not counted: the
            // check errs on the side of a transaction.
            let freed: u64 = {
                let staged = lock(&queue.staged);
                acks.iter()
                    .filter_map(|seq| staged.items.get(seq))
                    .map(|(_, record)| cost(record.len()))
                    .sum()
            };
            let needed: u64 = records.iter().map(|r| cost(r.len())).sum();
            let s = lock(&queue.state);
            if s.depth_bytes.saturating_sub(freed) + needed > queue.config.max_bytes.get() {
                return None;
            }
            let expiry_due = queue.config.max_age_secs.is_some_and(|max_age| {
                s.oldest_enqueued_ms
                    .is_some_and(|oldest| oldest < now.saturating_sub(max_age.get() * 1000))
            });
            if expiry_due {
                return None;
            }
        }
        if parts.iter().any(|(_, records, _)| !records.is_empty()) {
            let Writer { journal, marks, .. } = &mut *w;
            let acks: Vec<Vec<u64>> = marks
                .iter()
                .enumerate()
                .map(|(index, marks)| {
                    let mut acks = marks.unjournaled_acks.clone();
                    if let Some((_, _, new)) = parts.iter().find(|part| part.0 == index) {
                        acks.extend_from_slice(new);
                    }
                    acks
                })
                .collect();
            let journal_parts: Vec<JournalPart<'_>> = (0..self.queues.len())
                .filter_map(|index| {
                    let records = parts
                        .iter()
                        .find(|part| part.0 == index)
                        .map_or(&[][..], |part| part.1);
                    (!records.is_empty() || !acks[index].is_empty()).then(|| JournalPart {
                        items_table: &self.queues[index].items_table,
                        first_seq: marks[index].seq_floor,
                        records,
                        acks: &acks[index],
                    })
                })
                .collect();
            if !journal.fits(journal::body_len(&journal_parts)) {
                return None;
            }
            if let Err(source) = journal.append(&journal::encode(&journal_parts, now)) {
                for queue in &self.queues {
                    lock(&queue.state).write_errors += 1;
                }
                return Some(Err(journal::io_error(
                    &self.path,
                    "append (journal)",
                    source,
                )));
            }
            for marks in marks.iter_mut() {
                marks.unjournaled_acks.clear();
            }
            w.unjournaled_since = None;
            w.after_journal_entry();
        } else {
            for &(index, _, acks) in parts {
                w.marks[index].unjournaled_acks.extend_from_slice(acks);
            }
            if parts.iter().any(|(_, _, acks)| !acks.is_empty()) {
                w.unjournaled_since.get_or_insert_with(Instant::now);
            }
        }
        // Acks of stored items: removed now, in redb only (staged items stay
        // above them).
        let mut stored_acks: Vec<(usize, Vec<u64>)> = Vec::new();
        for &(index, _, acks) in parts {
            let staged = lock(&self.queues[index].staged);
            let stored: Vec<u64> = acks
                .iter()
                .copied()
                .filter(|seq| !staged.items.contains_key(seq))
                .collect();
            if !stored.is_empty() {
                stored_acks.push((index, stored));
            }
        }
        let mut from_redb = Vec::new();
        if !stored_acks.is_empty() {
            match self.remove_stored(w, &stored_acks) {
                Ok(done) => from_redb = done,
                // The acks are journaled (or waiting to be): a replay applies
                // them, and the file is reopened before the next write.
                Err(err) => tracing::warn!(outbox = %self.name, error = %err,
                    "outbox: could not remove confirmed items; the file is reopened"),
            }
        }
        let mut appended = Vec::with_capacity(parts.len());
        let mut acked = 0;
        for &(index, records, acks) in parts {
            let queue = &self.queues[index];
            let marks = &mut w.marks[index];
            let first = marks.seq_floor;
            let mut staged = lock(&queue.staged);
            let mut s = lock(&queue.state);
            for seq in acks {
                if let Some((_, record)) = staged.items.remove(seq) {
                    staged.bytes -= cost(record.len());
                    s.depth_bytes = s.depth_bytes.saturating_sub(cost(record.len()));
                    s.depth_items = s.depth_items.saturating_sub(1);
                    s.acked += 1;
                    acked += 1;
                }
            }
            for (seq, record) in (first..).zip(records) {
                staged.bytes += cost(record.len());
                s.depth_bytes += cost(record.len());
                staged.items.insert(seq, (now, record.to_vec()));
            }
            let added = records.len() as u64;
            marks.seq_floor += added;
            s.depth_items += added;
            s.appended += added;
            s.next_seq = marks.seq_floor;
            if added > 0 && w.journal.syncs() {
                s.durable_commits += 1;
            }
            let staged_oldest = staged.items.values().next().map(|(ms, _)| *ms);
            if let Some((_, removed, tally, meta)) = from_redb.iter().find(|done| done.0 == index) {
                s.acked += removed;
                acked += removed;
                s.depth_items = tally.items + staged.items.len() as u64;
                s.depth_bytes = meta.depth_bytes + staged.bytes;
                s.oldest_enqueued_ms = tally.oldest_ms.or(staged_oldest);
            } else if s.depth_items == staged.items.len() as u64 {
                // Nothing stored: the oldest is staged.
                s.oldest_enqueued_ms = staged_oldest;
            }
            let depth_bytes = s.depth_bytes;
            drop((s, staged));
            let part = Appended {
                seqs: first..marks.seq_floor,
                evicted: 0,
                expired: 0,
            };
            queue.note_episodes(marks, &part, depth_bytes);
            appended.push(part);
        }
        for &(index, _, acks) in parts {
            let queue = &self.queues[index];
            queue.appended_tx.send_replace(w.marks[index].seq_floor);
            if !acks.is_empty() {
                queue.room.notify_all();
            }
        }
        Some(Ok((appended, acked)))
    }

    /// Removes acked items from redb without writing the staged ones (the
    /// acks are in the journal or will be: no checkpoint is needed for
    /// them). Returns per queue how many were removed, and what redb holds.
    fn remove_stored(
        &self,
        w: &mut Writer,
        acks: &[(usize, Vec<u64>)],
    ) -> Result<Vec<(usize, u64, Tally, Meta)>, OutboxError> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = guard.as_ref() else {
            return Err(self.closed_error("ack"));
        };
        let result = (|| -> Result<_, TxError> {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::None)?;
            let mut done = Vec::with_capacity(acks.len());
            {
                let mut meta_table = txn.open_table(META)?;
                for (index, seqs) in acks {
                    let queue = &self.queues[*index];
                    let mut meta = meta_table
                        .get(queue.state_key.as_str())?
                        .and_then(|v| Meta::from_bytes(v.value()))
                        .ok_or_else(|| OutboxError::Corrupt {
                            path: self.path.clone(),
                            detail: format!(
                                "the state record of {} is missing or damaged",
                                queue.name
                            ),
                        })?;
                    let mut items = txn.open_table(queue.items())?;
                    let removed = remove_in(&mut items, &mut meta, seqs)?;
                    let tally = Tally::of(&items)?;
                    meta_table.insert(queue.state_key.as_str(), meta.to_bytes().as_slice())?;
                    done.push((*index, removed, tally, meta));
                }
            }
            txn.commit()?;
            Ok(done)
        })();
        drop(guard);
        result.map_err(|err| {
            w.broken = true;
            for queue in &self.queues {
                lock(&queue.state).write_errors += 1;
            }
            match err {
                TxError::Outbox(err) => err,
                TxError::Redb(err) => OutboxError::from_redb(&self.path, "ack", err),
            }
        })
    }

    /// Writes the acks waiting for the journal in an entry of their own
    /// once they waited `fsync_interval_ms` (no append came to carry them),
    /// so a crash sends at most that much again.
    pub(crate) fn journal_acks_if_due(&self, w: &mut Writer) -> Result<(), OutboxError> {
        if w.unjournaled_since
            .is_none_or(|t| t.elapsed() < self.interval)
        {
            return Ok(());
        }
        let Writer { journal, marks, .. } = &mut *w;
        let journal_parts: Vec<JournalPart<'_>> = self
            .queues
            .iter()
            .zip(marks.iter())
            .filter(|(_, marks)| !marks.unjournaled_acks.is_empty())
            .map(|(queue, marks)| JournalPart {
                items_table: &queue.items_table,
                first_seq: marks.seq_floor,
                records: &[],
                acks: &marks.unjournaled_acks,
            })
            .collect();
        if journal.fits(journal::body_len(&journal_parts)) {
            journal
                .append(&journal::encode(&journal_parts, (self.clock)()))
                .map_err(|source| journal::io_error(&self.path, "append (journal)", source))?;
            for marks in marks.iter_mut() {
                marks.unjournaled_acks.clear();
            }
            w.unjournaled_since = None;
            w.after_journal_entry();
            Ok(())
        } else {
            // A checkpoint makes them durable too.
            self.durable_commit(w, "flush", false)
        }
    }

    /// Removes acked items from several queues in one transaction (unknown
    /// ones are ignored); returns how many were removed.
    pub(crate) fn ack(&self, acks: &[(usize, &[u64])]) -> Result<u64, OutboxError> {
        let acks: Vec<(usize, &[u64])> = acks
            .iter()
            .copied()
            .filter(|(index, seqs)| !seqs.is_empty() && *index < self.queues.len())
            .collect();
        if acks.is_empty() {
            return Ok(0);
        }
        let mut w = lock(&self.writer);
        let parts: Vec<Part<'_>> = acks
            .iter()
            .map(|&(index, seqs)| (index, &[][..], seqs))
            .collect();
        if let Some(Ok((_, acked))) = self.stage(&mut w, &parts, (self.clock)()) {
            return Ok(acked);
        }
        let durable = self.flush_due(&w);
        let (done, metas) = self.write(&mut w, "ack", durable, false, |txn, metas| {
            let mut done = Vec::with_capacity(acks.len());
            for &(index, seqs) in &acks {
                let queue = &self.queues[index];
                let mut items = txn.open_table(queue.items())?;
                let removed = remove_in(&mut items, &mut metas[index], seqs)?;
                done.push((removed, Tally::of(&items)?));
            }
            Ok(done)
        })?;
        drop(w);
        let mut total = 0;
        for (&(index, _), (removed, tally)) in acks.iter().zip(done) {
            let queue = &self.queues[index];
            let mut s = lock(&queue.state);
            s.acked += removed;
            tally.apply(&mut s, metas[index]);
            drop(s);
            queue.room.notify_all();
            total += removed;
        }
        Ok(total)
    }

    pub(crate) fn expire(&self, queue: &Queue) -> Result<u64, OutboxError> {
        let Some(max_age) = queue.config.max_age_secs else {
            return Ok(0);
        };
        let mut w = lock(&self.writer);
        let now = (self.clock)();
        // Look first: an empty pass should not cost a commit.
        let due = lock(&queue.state)
            .oldest_enqueued_ms
            .is_some_and(|oldest| oldest < now.saturating_sub(max_age.get().saturating_mul(1000)));
        if !due {
            queue.note_expired(&mut w.marks[queue.index], 0);
            return Ok(0);
        }
        let durable = self.flush_due(&w);
        let ((expired, tally), metas) =
            self.write(&mut w, "expire", durable, false, |txn, metas| {
                let mut items = txn.open_table(queue.items())?;
                let expired = queue.expire_in(&mut items, &mut metas[queue.index], now)?;
                Ok((expired, Tally::of(&items)?))
            })?;
        {
            let mut s = lock(&queue.state);
            s.dropped_expired += expired;
            tally.apply(&mut s, metas[queue.index]);
        }
        queue.note_expired(&mut w.marks[queue.index], expired);
        drop(w);
        queue.room.notify_all();
        Ok(expired)
    }

    pub(crate) fn read(
        &self,
        queue: &Queue,
        range: impl RangeBounds<u64>,
        newest_first: bool,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        let mut out = Vec::new();
        if max_items == 0 {
            return Ok(out);
        }
        let range = (
            clone_bound(range.start_bound()),
            clone_bound(range.end_bound()),
        );
        let guard = self.read_guard()?;
        let Some(db) = guard.as_ref() else {
            return Err(self.closed_error("read"));
        };
        // Staged items are the newest, and an item leaves the staged ones
        // only once its commit to redb is visible: redb is read below the
        // first staged item of this moment, so each item is found once.
        let (staged, first_staged) = {
            let staged = lock(&queue.staged);
            let to_item = |(&seq, (enqueued_ms, record)): (&u64, &(u64, Vec<u8>))| Item {
                seq,
                enqueued_ms: *enqueued_ms,
                record: record.clone(),
            };
            let items: Vec<Item> = if is_empty(range) {
                Vec::new()
            } else if newest_first {
                let in_range = staged.items.range(range);
                in_range.rev().take(max_items).map(to_item).collect()
            } else {
                let in_range = staged.items.range(range);
                in_range.take(max_items).map(to_item).collect()
            };
            (items, staged.items.keys().next().copied())
        };
        let mut bytes = 0usize;
        // Whether to go on after adding `item`.
        let mut add = |out: &mut Vec<Item>, item: Item| {
            if !out.is_empty() && bytes + item.record.len() > max_bytes {
                return false;
            }
            bytes += item.record.len();
            out.push(item);
            out.len() < max_items
        };
        let mut staged = staged.into_iter();
        if newest_first {
            for item in staged.by_ref() {
                if !add(&mut out, item) {
                    return Ok(out);
                }
            }
        }
        if let Some(redb_range) = below(range, first_staged) {
            let redb_err = |e: redb::Error| OutboxError::from_redb(&self.path, "read", e);
            let txn = db.begin_read().map_err(|e| redb_err(e.into()))?;
            let table = txn
                .open_table(queue.items())
                .map_err(|e| redb_err(e.into()))?;
            let iter = table.range(redb_range).map_err(|e| redb_err(e.into()))?;
            let iter: Box<dyn Iterator<Item = _>> = if newest_first {
                Box::new(iter.rev())
            } else {
                Box::new(iter)
            };
            for entry in iter {
                let (k, v) = entry.map_err(|e| redb_err(e.into()))?;
                let seq = k.value();
                let value = v.value();
                let Some((enqueued_ms, record)) = split_value(value) else {
                    return Err(OutboxError::CorruptItem {
                        path: self.path.clone(),
                        seq,
                        len: value.len(),
                    });
                };
                let item = Item {
                    seq,
                    enqueued_ms,
                    record: record.to_vec(),
                };
                if !add(&mut out, item) {
                    return Ok(out);
                }
            }
        }
        for item in staged {
            if !add(&mut out, item) {
                break;
            }
        }
        Ok(out)
    }

    /// The database for reading; reopens it first if a write broke it.
    pub(crate) fn read_guard(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, OutboxError> {
        {
            let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
            if guard.is_some() {
                return Ok(guard);
            }
        }
        let mut w = lock(&self.writer);
        self.ensure_open(&mut w)?;
        drop(w);
        Ok(self.db.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// See [`Outbox::absorb`].
    pub(crate) fn absorb(&self, queue: &Queue, legacy: &Path) -> Result<u64, OutboxError> {
        let marker = format!("{}.absorbed", queue.state_key);
        let read_marker = || -> Result<Option<u64>, OutboxError> {
            let guard = self.read_guard()?;
            let Some(db) = guard.as_ref() else {
                return Err(self.closed_error("absorb"));
            };
            let err = |e: redb::Error| OutboxError::from_redb(&self.path, "absorb", e);
            let txn = db.begin_read().map_err(|e| err(e.into()))?;
            let table = txn.open_table(META).map_err(|e| err(e.into()))?;
            let value = table.get(marker.as_str()).map_err(|e| err(e.into()))?;
            Ok(value.and_then(|v| <[u8; 8]>::try_from(v.value()).ok().map(u64::from_le_bytes)))
        };
        let set_marker = |value: Option<u64>| -> Result<(), OutboxError> {
            let mut w = lock(&self.writer);
            self.write(&mut w, "absorb", true, false, |txn, _| {
                let mut table = txn.open_table(META)?;
                match value {
                    Some(seq) => table.insert(marker.as_str(), seq.to_le_bytes().as_slice())?,
                    None => table.remove(marker.as_str())?,
                };
                Ok(())
            })?;
            Ok(())
        };
        let mut done = read_marker()?;
        if !legacy.exists() {
            // Finished before, and the file deleted: forget the position (a
            // new legacy file would count from 0 again).
            if done.is_some() {
                set_marker(None)?;
            }
            return Ok(0);
        }
        let old = Outbox::open_with(
            legacy,
            OutboxConfig {
                max_bytes: NonZeroU64::MAX,
                ..OutboxConfig::default()
            },
            self.clock.clone(),
            false,
        )?;
        let mut moved = 0u64;
        loop {
            let chunk = old.peek(done, 4096, 16 << 20)?;
            let Some(last) = chunk.last().map(|item| item.seq) else {
                break;
            };
            let mut w = lock(&self.writer);
            let ((), metas) = self.write(&mut w, "absorb", true, false, |txn, metas| {
                let mut items = txn.open_table(queue.items())?;
                let meta = &mut metas[queue.index];
                let mut value = Vec::new();
                for item in &chunk {
                    value.clear();
                    value.extend_from_slice(&item.enqueued_ms.to_le_bytes());
                    value.extend_from_slice(&item.record);
                    items.insert(meta.next_seq, value.as_slice())?;
                    meta.next_seq += 1;
                    meta.depth_bytes += cost(item.record.len());
                }
                let tally = Tally::of(&items)?;
                drop(items);
                txn.open_table(META)?
                    .insert(marker.as_str(), last.to_le_bytes().as_slice())?;
                let mut s = lock(&queue.state);
                s.appended += chunk.len() as u64;
                tally.apply(&mut s, *meta);
                Ok(())
            })?;
            drop(w);
            queue.appended_tx.send_replace(metas[queue.index].next_seq);
            moved += chunk.len() as u64;
            done = Some(last);
        }
        old.close()?;
        remove_durably(legacy)?;
        set_marker(None)?;
        if moved > 0 {
            tracing::info!(outbox = %queue.name, from = %legacy.display(), items = moved,
                "moved the items of an outbox file of the previous layout into the shared outbox");
        }
        Ok(moved)
    }

    /// The background thread: makes non-durable commits durable within
    /// `fsync_interval_ms`, expires items, retries a broken file.
    pub(crate) fn run_flusher(&self) {
        // At most one error log a minute (with how many were left out).
        let mut errors = ErrorLog::default();
        loop {
            let wait = {
                let w = lock(&self.writer);
                match w.pending_since {
                    Some(since) => self.interval.saturating_sub(since.elapsed()),
                    None => MAINTENANCE_TICK,
                }
                .min(MAINTENANCE_TICK)
            };
            {
                let stop = lock(&self.stop);
                if *stop {
                    return;
                }
                let (stop, _) = self
                    .wake
                    .wait_timeout(stop, wait)
                    .unwrap_or_else(PoisonError::into_inner);
                if *stop {
                    return;
                }
            }
            let mut result = Ok(0);
            if self.auto_expire {
                for queue in &self.queues {
                    result = result.and_then(|_| self.expire(queue));
                }
            }
            let result = result.and_then(|_| {
                let mut w = lock(&self.writer);
                if self.flush_due(&w) || w.broken {
                    self.flush_locked(&mut w)
                } else {
                    self.journal_acks_if_due(&mut w)
                }
            });
            let result = result.and_then(|()| self.shrink_if_drained());
            if let Err(err) = result
                && let Some(suppressed) = errors.check()
            {
                tracing::error!(
                    outbox = %self.name,
                    error = %err,
                    suppressed,
                    "outbox background flush or compaction failed; retrying"
                );
            }
        }
    }

    /// Gives a drained file's free pages back to the file system: when the
    /// file is larger than [`SHRINK_ABOVE_BYTES`] and [`SHRINK_FREE_RATIO`]
    /// times what it holds, compacts it (redb moves the live pages to the
    /// front and truncates the free tail). Appends, acks and reads wait for
    /// it; with little left in the file that is short (BENCHMARKS.md).
    pub(crate) fn shrink_if_drained(&self) -> Result<(), OutboxError> {
        let held = || {
            self.queues
                .iter()
                .map(|q| lock(&q.state).depth_bytes)
                .sum::<u64>()
                .max(1)
        };
        let file_len = || std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let worth_it = |len: u64, w: &Writer| {
            len > SHRINK_ABOVE_BYTES
                && len / SHRINK_FREE_RATIO >= held()
                && len > w.compacted_len.saturating_add(SHRINK_ABOVE_BYTES)
        };
        let mut w = lock(&self.writer);
        let before = file_len();
        // Staged items wait for a transaction, which compaction is not.
        let staged = self
            .queues
            .iter()
            .any(|q| !lock(&q.staged).items.is_empty());
        if w.broken || staged || !worth_it(before, &w) {
            return Ok(());
        }
        let started = Instant::now();
        // The write lock waits for reads in progress and keeps new ones out:
        // compaction needs no live transaction.
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = slot.as_mut() else {
            return Ok(());
        };
        let compacted = db.compact();
        drop(slot);
        match compacted {
            Ok(_) => {}
            Err(err @ redb::CompactionError::Storage(_)) => {
                // Nothing was lost (compaction commits like any write), but
                // the handle may be unusable: reopen before the next write.
                w.broken = true;
                for queue in &self.queues {
                    lock(&queue.state).write_errors += 1;
                }
                return Err(OutboxError::from_redb(&self.path, "compact", err.into()));
            }
            Err(err) => {
                // A live transaction or savepoint (none of ours outlives its
                // call): try again once the file has grown.
                w.compacted_len = before;
                return Err(OutboxError::from_redb(&self.path, "compact", err.into()));
            }
        }
        // Compaction's commits are durable, so whatever was pending is too.
        w.pending_since = None;
        let after = file_len();
        w.compacted_len = after;
        for queue in &self.queues {
            lock(&queue.state).compactions += 1;
        }
        tracing::info!(
            outbox = %self.name,
            before_mib = before as f64 / (1 << 20) as f64,
            after_mib = after as f64 / (1 << 20) as f64,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "outbox drained: compacted its file"
        );
        Ok(())
    }
}

/// Removes the items with these sequence numbers (unknown ones are
/// ignored) and returns how many were removed.
pub(crate) fn remove_in(
    items: &mut redb::Table<'_, u64, &'static [u8]>,
    meta: &mut Meta,
    seqs: &[u64],
) -> Result<u64, TxError> {
    let mut removed = 0;
    for &seq in seqs {
        if let Some(value) = items.remove(seq)? {
            meta.depth_bytes = meta
                .depth_bytes
                .saturating_sub(cost(value.value().len().saturating_sub(8)));
            removed += 1;
        }
    }
    Ok(removed)
}

impl Queue {
    /// One queue's part of an append: acks, expiries, room, the records.
    pub(crate) fn append_in(
        &self,
        items: &mut redb::Table<'_, u64, &'static [u8]>,
        meta: &mut Meta,
        records: &[&[u8]],
        acks: &[u64],
        now: u64,
        path: &Path,
    ) -> Result<PartDone, TxError> {
        let acked = remove_in(items, meta, acks)?;
        let mut appended = Appended {
            seqs: meta.next_seq..meta.next_seq,
            evicted: 0,
            expired: 0,
        };
        if !records.is_empty() {
            appended.expired = self.expire_in(items, meta, now)?;
            let needed: u64 = records.iter().map(|r| cost(r.len())).sum();
            let max_bytes = self.config.max_bytes.get();
            while meta.depth_bytes + needed > max_bytes {
                if self.config.when_full == QueueFullPolicy::Block {
                    return Err(OutboxError::Full {
                        path: path.to_owned(),
                        needed,
                        depth_bytes: meta.depth_bytes,
                        max_bytes,
                    }
                    .into());
                }
                let Some((_, value)) = items.pop_first()? else {
                    break;
                };
                meta.depth_bytes = meta
                    .depth_bytes
                    .saturating_sub(cost(value.value().len().saturating_sub(8)));
                appended.evicted += 1;
            }
            let first = meta.next_seq;
            let mut value = Vec::new();
            for record in records {
                value.clear();
                value.extend_from_slice(&now.to_le_bytes());
                value.extend_from_slice(record);
                items.insert(meta.next_seq, value.as_slice())?;
                meta.next_seq += 1;
                meta.depth_bytes += cost(record.len());
            }
            appended.seqs = first..meta.next_seq;
        }
        Ok(PartDone {
            appended,
            acked,
            tally: Tally::of(items)?,
        })
    }

    /// Pops expired items off the head. Enqueue times follow the wall clock,
    /// so a clock set back can leave an older item behind a newer one; it
    /// expires when it reaches the head.
    pub(crate) fn expire_in(
        &self,
        items: &mut redb::Table<'_, u64, &'static [u8]>,
        meta: &mut Meta,
        now: u64,
    ) -> Result<u64, TxError> {
        let Some(max_age) = self.config.max_age_secs else {
            return Ok(0);
        };
        let cutoff = now.saturating_sub(max_age.get().saturating_mul(1000));
        let mut expired = 0;
        loop {
            let len = match items.first()? {
                Some((_, v)) => match split_value(v.value()) {
                    Some((ts, record)) if ts < cutoff => Some(record.len()),
                    Some(_) => None,
                    // Damaged: let the reader report it.
                    None => None,
                },
                None => None,
            };
            let Some(len) = len else {
                break;
            };
            items.pop_first()?;
            meta.depth_bytes = meta.depth_bytes.saturating_sub(cost(len));
            expired += 1;
        }
        Ok(expired)
    }

    /// After an append: starts or ends the queue's episodes of expiries,
    /// evictions and refusals.
    pub(crate) fn note_episodes(&self, marks: &mut Marks, appended: &Appended, depth_bytes: u64) {
        self.note_expired(marks, appended.expired);
        // An episode (of evictions or refusals) ends once the queue is back
        // under half its bound: while deliveries free room item by item,
        // appends alternate between fitting and not, and each of those must
        // not be a new episode (and warning).
        let relieved = depth_bytes <= self.config.max_bytes.get() / 2;
        self.note_overflow(marks, appended.evicted, relieved);
        if relieved && let Some(refused) = marks.blocked_episode.take() {
            tracing::info!(
                outbox = %self.name,
                refused,
                "outbox has room again; appends resumed"
            );
        }
    }

    pub(crate) fn note_expired(&self, marks: &mut Marks, expired: u64) {
        if expired > 0 {
            let episode = marks.expiry_episode.get_or_insert(0);
            if *episode == 0 {
                tracing::warn!(
                    outbox = %self.name,
                    max_age_secs = self.config.max_age_secs.map_or(0, NonZeroU64::get),
                    "outbox items are expiring undelivered (max_age_secs); counted as dropped"
                );
            }
            *episode += expired;
        } else if let Some(total) = marks.expiry_episode.take() {
            tracing::info!(
                outbox = %self.name,
                expired = total,
                "outbox items stopped expiring"
            );
        }
    }

    pub(crate) fn note_overflow(&self, marks: &mut Marks, evicted: u64, relieved: bool) {
        if evicted > 0 {
            let episode = marks.overflow_episode.get_or_insert(0);
            if *episode == 0 {
                tracing::warn!(
                    outbox = %self.name,
                    max_bytes = self.config.max_bytes.get(),
                    "outbox full: dropping the oldest items (when_full = drop_oldest) until deliveries make room"
                );
            }
            *episode += evicted;
        } else if relieved && let Some(total) = marks.overflow_episode.take() {
            tracing::info!(
                outbox = %self.name,
                dropped = total,
                "outbox has room again; oldest items dropped in this episode"
            );
        }
    }
}

/// Deletes a file and makes the deletion durable (a missing file is fine).
pub(crate) fn remove_durably(path: &Path) -> Result<(), OutboxError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(OutboxError::Io {
                path: path.to_owned(),
                op: "remove",
                source,
            });
        }
    }
    sync_parent_dir(path)
}

/// Makes a rename or removal of `path` durable: fsync of its directory.
pub(crate) fn sync_parent_dir(path: &Path) -> Result<(), OutboxError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| OutboxError::Io {
                path: path.to_owned(),
                op: "sync the directory",
                source,
            })?;
    }
    Ok(())
}

/// `range` cut below `first` (everything if `None`); `None` if nothing is
/// left of it.
pub(crate) fn below(
    range: (Bound<u64>, Bound<u64>),
    first: Option<u64>,
) -> Option<(Bound<u64>, Bound<u64>)> {
    let Some(first) = first else {
        return Some(range);
    };
    let end = match range.1 {
        Bound::Included(end) if end < first => Bound::Included(end),
        Bound::Excluded(end) if end < first => Bound::Excluded(end),
        _ => Bound::Excluded(first),
    };
    let cut = (range.0, end);
    (!is_empty(cut)).then_some(cut)
}

/// Whether no sequence number lies in `range` (`BTreeMap::range` panics on
/// some of those).
pub(crate) fn is_empty(range: (Bound<u64>, Bound<u64>)) -> bool {
    match range {
        (Bound::Included(start), Bound::Excluded(end)) => start >= end,
        (Bound::Included(start), Bound::Included(end)) => start > end,
        (Bound::Excluded(start), Bound::Excluded(end)) => start.saturating_add(1) >= end,
        (Bound::Excluded(start), Bound::Included(end)) => start >= end,
        (Bound::Excluded(start), Bound::Unbounded) => start == u64::MAX,
        (Bound::Unbounded, Bound::Excluded(end)) => end == 0,
        (Bound::Unbounded, _) | (Bound::Included(_), Bound::Unbounded) => false,
    }
}

pub(crate) fn clone_bound(bound: Bound<&u64>) -> Bound<u64> {
    match bound {
        Bound::Included(v) => Bound::Included(*v),
        Bound::Excluded(v) => Bound::Excluded(*v),
        Bound::Unbounded => Bound::Unbounded,
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state behind these locks is only changed after a commit, in
    // statements that cannot panic halfway; a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The background thread's error log: at most a line a minute, saying how
/// many were left out since the last.
#[derive(Default)]
pub(crate) struct ErrorLog {
    logged_at: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    /// `Some(left out since the last line)` if this error may be logged.
    pub(crate) fn check(&mut self) -> Option<u64> {
        if self
            .logged_at
            .is_some_and(|at| at.elapsed() < Duration::from_secs(60))
        {
            self.suppressed += 1;
            return None;
        }
        self.logged_at = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}
