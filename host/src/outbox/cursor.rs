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
//! * when the connection breaks, [`Drain::restart`] with a new split makes
//!   everything unacknowledged backlog again (including live items that
//!   were sent but not confirmed), read oldest first.
//!
//! Order: each side is in sequence order, but live items overtake the
//! backlog. That is right for InfluxDB (points carry their timestamps); for
//! MQTT it means a subscriber sees new values before old ones of the same
//! topic, and a retained backlog message would replace a newer retained
//! value — a sink that needs strict order per topic reads only the backlog
//! side (`split = u64::MAX`), which is plain FIFO.

use super::{Item, Outbox, OutboxError};

/// The live cursor and the backlog cursor of one sink; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    split: u64,
    live_after: Option<u64>,
    backlog_after: Option<u64>,
    backlog_done: bool,
}

impl Drain {
    /// Items below `split` are backlog, the others live.
    pub fn new(split: u64) -> Drain {
        Drain {
            split,
            live_after: None,
            backlog_after: None,
            backlog_done: split == 0,
        }
    }

    /// The split point.
    pub fn split(&self) -> u64 {
        self.split
    }

    /// Everything unacknowledged becomes backlog again, up to the new split
    /// (after a broken connection: `outbox.next_seq()`).
    pub fn restart(&mut self, split: u64) {
        *self = Drain::new(split);
    }

    /// Whether the backlog has been handed out completely (items handed out
    /// may still wait for their acks).
    pub fn backlog_done(&self) -> bool {
        self.backlog_done
    }

    /// The next live items (sequence ≥ split) not handed out yet, oldest first.
    pub fn next_live(
        &mut self,
        outbox: &Outbox,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        let start = match self.live_after {
            Some(seq) => seq.saturating_add(1),
            None => self.split,
        };
        let items = outbox.peek_range(start.., max_items, max_bytes)?;
        if let Some(last) = items.last() {
            self.live_after = Some(last.seq);
        }
        Ok(items)
    }

    /// The next backlog items (sequence < split) not handed out yet, oldest
    /// first; empty once the backlog is done.
    pub fn next_backlog(
        &mut self,
        outbox: &Outbox,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>, OutboxError> {
        if self.backlog_done {
            return Ok(Vec::new());
        }
        let start = self.backlog_after.map_or(0, |seq| seq.saturating_add(1));
        let items = outbox.peek_range(start..self.split, max_items, max_bytes)?;
        match items.last() {
            Some(last) => self.backlog_after = Some(last.seq),
            None => self.backlog_done = true,
        }
        Ok(items)
    }
}
