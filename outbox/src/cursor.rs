//! Two read positions over one outbox: live first, backlog paced.
//!
//! After an outage the outbox holds a backlog; new items keep arriving. A
//! sink that sent strictly oldest-first would make dashboards wait for the
//! whole backlog and flood the link. [`Drain`] splits the sequence space at
//! a point (normally [`Outbox::next_seq`] when the connection comes up):
//!
//! ```text
//!   seq:  0 ............ split-1 | split ..................... next_seq
//!         [ backlog, oldest first ] [ live tail, oldest first ]
//!          ^ backlog cursor           ^ live cursor
//! ```
//!
//! * [`Drain::next_live`] returns what arrived since the split (and since the
//!   last call), as fast as the sink can send it;
//! * [`Drain::next_backlog`] returns the next slice of the backlog, oldest
//!   first; the sink calls it at its own pace (a token bucket on items or
//!   bytes per second) — the pacing is the sink's, the outbox only reads;
//! * each cursor is "last sequence number handed out", not "acked": items
//!   stay in the outbox until [`Outbox::ack`], so a crash or a lost
//!   connection never loses what was handed out but not confirmed;
//! * when the connection breaks and the sink loses what it was sending,
//!   [`Drain::restart`] with a new split makes everything unacknowledged
//!   backlog again (including live items that were sent but not confirmed),
//!   read oldest first;
//! * when the sink keeps what it was sending (the InfluxDB writer retries
//!   its batches itself) but fell behind, [`Drain::defer_live`] moves only
//!   the live items not handed out yet to the end of the backlog, so there
//!   can be several backlog ranges (a second outage before the first
//!   backlog was written), each read oldest first.
//!
//! Order: each side is in sequence order, but live items overtake the
//! backlog. That is right for InfluxDB (points carry their timestamps); for
//! MQTT it means a subscriber sees new values before old ones of the same
//! topic, and a retained backlog message would replace a newer retained
//! value — a sink that needs strict order per topic reads only the backlog
//! side (`split = u64::MAX`), which is plain FIFO.

use std::collections::VecDeque;
use std::ops::Range;

use super::{Item, Outbox, OutboxError};

/// The live cursor and the backlog ranges of one sink; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    split: u64,
    /// The next live sequence number to read.
    live_from: u64,
    /// Sequence ranges not handed out yet, oldest first.
    backlog: VecDeque<Range<u64>>,
}

impl Drain {
    /// Items below `split` are backlog, the others live.
    pub fn new(split: u64) -> Drain {
        let mut backlog = VecDeque::new();
        if split > 0 {
            backlog.push_back(0..split);
        }
        Drain {
            split,
            live_from: split,
            backlog,
        }
    }

    /// The latest split point.
    pub fn split(&self) -> u64 {
        self.split
    }

    /// Everything unacknowledged becomes backlog again, up to the new split
    /// (after a broken connection: `outbox.next_seq()`).
    pub fn restart(&mut self, split: u64) {
        *self = Drain::new(split);
    }

    /// A sink that fell behind (its link was down, so live items piled up
    /// unsent): the live items not handed out yet, below `split`, join the
    /// end of the backlog, and live starts again at `split` (normally
    /// `outbox.next_seq()`). Items already handed out are not touched.
    /// Returns how many sequence numbers were deferred.
    pub fn defer_live(&mut self, split: u64) -> u64 {
        if split <= self.live_from {
            return 0;
        }
        let deferred = split - self.live_from;
        self.backlog.push_back(self.live_from..split);
        self.live_from = split;
        self.split = split;
        deferred
    }

    /// Live sequence numbers not handed out yet, given the outbox's
    /// `next_seq` (an upper bound: evicted or expired items are counted).
    pub fn live_lag(&self, next_seq: u64) -> u64 {
        next_seq.saturating_sub(self.live_from)
    }

    /// Whether the backlog has been handed out completely (items handed out
    /// may still wait for their acks).
    pub fn backlog_done(&self) -> bool {
        self.backlog.is_empty()
    }

    /// The next live items (sequence ≥ split) not handed out yet, oldest first.
    pub fn next_live(
        &mut self,
        outbox: &Outbox,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        let items = outbox.peek_range(self.live_from.., max_items, max_bytes)?;
        if let Some(last) = items.last() {
            self.live_from = last.seq.saturating_add(1);
        }
        Ok(items)
    }

    /// The next backlog items not handed out yet, oldest first; empty once
    /// the backlog is done.
    pub fn next_backlog(
        &mut self,
        outbox: &Outbox,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        while let Some(range) = self.backlog.front_mut() {
            let items = outbox.peek_range(range.clone(), max_items, max_bytes)?;
            match items.last() {
                Some(last) => {
                    range.start = last.seq.saturating_add(1);
                    if range.start >= range.end {
                        self.backlog.pop_front();
                    }
                    return Ok(items);
                }
                None => {
                    self.backlog.pop_front();
                }
            }
        }
        Ok(Vec::new())
    }
}
