//! Which message is where, keyed by packet ids the sink gives out itself.
//!
//! The sink never lets rumqttc choose a packet id: every QoS 1/2 publish is
//! put into the event loop's queue with an id from [`Tracker::free`], and an
//! id goes back to the pool only when its acknowledgement arrived. So the
//! client never holds two publishes under one id, never has more in flight
//! than the window, and an acknowledgement names exactly one message —
//! whatever order events arrive in.
//!
//! ```text
//! backlog / outbox ─► staged ─► in_flight(pkid) ─PubAck─► delivered
//!                       ▲           └─PubRec─► releasing(pkid) ─PubComp─► delivered
//!                       └── connection lost: everything unconfirmed, oldest first
//! ```
//!
//! A message keeps its packet id until it is confirmed, also across
//! reconnects: a QoS 2 publish re-sent under the same id is recognised by a
//! broker that kept the session. QoS 0 messages take no id; they count as
//! delivered when written, the most that QoS offers.

use std::collections::{HashMap, VecDeque};

use super::Entry;
use crate::model::Qos;

/// See the module docs.
pub(super) struct Tracker {
    /// Taken from the backlog or the outbox and not handed to the client
    /// yet (no free packet id, or no connection); oldest first.
    staged: VecDeque<Entry>,
    /// Packet ids the client holds nothing under, longest free first.
    free: VecDeque<u16>,
    /// Ids `1..=window` may be given out: the configured in-flight limit,
    /// lowered to the broker's receive maximum (MQTT 5).
    window: u16,
    /// Handed to the client under an id: in its queue, being written, or
    /// waiting for PubAck / PubRec.
    in_flight: HashMap<u16, Entry>,
    /// QoS 2 after PubRec, waiting for PubComp.
    releasing: HashMap<u16, Entry>,
    /// QoS 0 handed to the client, not written yet (the client writes in
    /// order, so the first written is the oldest).
    unwritten: VecDeque<Entry>,
}

impl Tracker {
    pub(super) fn new(window: u16) -> Tracker {
        Tracker {
            staged: VecDeque::new(),
            free: (1..=window).collect(),
            window,
            in_flight: HashMap::new(),
            releasing: HashMap::new(),
            unwritten: VecDeque::new(),
        }
    }

    /// Messages taken from the backlog or outbox and not yet confirmed.
    pub(super) fn unconfirmed(&self) -> usize {
        self.staged.len() + self.in_flight.len() + self.releasing.len() + self.unwritten.len()
    }

    pub(super) fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Whether the next message could get a packet id now.
    pub(super) fn has_free_id(&self) -> bool {
        !self.free.is_empty()
    }

    /// Appends newly taken messages (newer than anything tracked).
    pub(super) fn stage(&mut self, entries: impl IntoIterator<Item = Entry>) {
        self.staged.extend(entries);
    }

    /// Puts a message ahead of everything new but behind the re-sends,
    /// which hold packet ids already (the birth message after a connect):
    /// ahead of them it could wait for an id that only their acks free.
    pub(super) fn stage_after_resends(&mut self, entry: Entry) {
        let at = self
            .staged
            .iter()
            .take_while(|e| e.pkid.is_some() || e.qos == Qos::AtMostOnce)
            .count();
        self.staged.insert(at, entry);
    }

    /// The next staged message with the packet id it goes out under, and
    /// records it as handed over; `None` when nothing is staged or the
    /// window is full.
    pub(super) fn hand_over(&mut self) -> Option<(u16, Entry)> {
        let front = self.staged.front()?;
        if front.qos == Qos::AtMostOnce {
            let entry = self.staged.pop_front()?;
            self.unwritten.push_back(entry.clone());
            return Some((0, entry));
        }
        let pkid = match front.pkid {
            Some(pkid) => pkid,
            None => self.free.pop_front()?,
        };
        let mut entry = self.staged.pop_front()?;
        entry.pkid = Some(pkid);
        self.in_flight.insert(pkid, entry.clone());
        Some((pkid, entry))
    }

    /// The client wrote a publish with this id. For QoS 0 (id 0) that
    /// settles the oldest unwritten message, which is returned.
    pub(super) fn sent(&mut self, pkid: u16) -> Option<Entry> {
        if pkid == 0 {
            return self.unwritten.pop_front();
        }
        if let Some(entry) = self.in_flight.get_mut(&pkid) {
            entry.written = true;
        }
        None
    }

    /// PubAck (or a refusing PubRec): the message under `pkid` is settled.
    pub(super) fn acked(&mut self, pkid: u16) -> Option<Entry> {
        let entry = self.in_flight.remove(&pkid)?;
        self.release(pkid);
        Some(entry)
    }

    /// PubRec: the broker has the QoS 2 message; PubComp settles it.
    pub(super) fn received(&mut self, pkid: u16) {
        if let Some(entry) = self.in_flight.remove(&pkid) {
            self.releasing.insert(pkid, entry);
        }
    }

    /// PubComp: the QoS 2 message under `pkid` is settled.
    pub(super) fn completed(&mut self, pkid: u16) -> Option<Entry> {
        let entry = self.releasing.remove(&pkid)?;
        self.release(pkid);
        Some(entry)
    }

    fn release(&mut self, pkid: u16) {
        if pkid <= self.window {
            self.free.push_back(pkid);
        }
    }

    /// The connection broke and the sink took every publish of ours out of
    /// the client's queue: what was handed over and not acknowledged goes
    /// back to the front of `staged`, oldest first, keeping its id. (QoS 2
    /// messages past PubRec stay: their PubRel is the client's to re-send.)
    pub(super) fn connection_lost(&mut self) {
        let mut lost: Vec<Entry> = self.in_flight.drain().map(|(_, e)| e).collect();
        lost.extend(self.unwritten.drain(..));
        self.restage(lost);
    }

    /// A new connection. `window` is the in-flight limit for it. Without
    /// the session the broker forgot the QoS 2 exchanges, and the client
    /// dropped its PubRels: those messages are sent again too. Returns how
    /// many messages will go out again that may have reached the broker
    /// (possible duplicates).
    pub(super) fn connected(&mut self, session_present: bool, window: u16) -> usize {
        if !session_present {
            let lost: Vec<Entry> = self.releasing.drain().map(|(_, e)| e).collect();
            self.restage(lost);
        }
        self.window = window;
        let reserved: Vec<u16> = self
            .releasing
            .keys()
            .copied()
            .chain(self.staged.iter().filter_map(|e| e.pkid))
            .chain(self.in_flight.keys().copied())
            .collect();
        self.free = (1..=window).filter(|id| !reserved.contains(id)).collect();
        self.staged
            .iter()
            .filter(|e| e.written && !e.status)
            .count()
    }

    fn restage(&mut self, mut lost: Vec<Entry>) {
        // Packet ids wrap around and entries came from several maps: the
        // order taken from the backlog or outbox is the true one.
        lost.sort_by_key(|e| e.seq);
        for entry in lost.into_iter().rev() {
            self.staged.push_front(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(seq: u64, qos: Qos) -> Entry {
        Entry {
            topic: format!("t/{seq}"),
            payload: Bytes::from(seq.to_string()),
            qos,
            retain: false,
            status: false,
            seq,
            durable: Some(seq),
            accepted_ns: 0,
            pkid: None,
            written: false,
        }
    }

    fn seqs(entries: &[(u16, Entry)]) -> Vec<u64> {
        entries.iter().map(|(_, e)| e.seq).collect()
    }

    fn drain(t: &mut Tracker) -> Vec<(u16, Entry)> {
        std::iter::from_fn(|| t.hand_over()).collect()
    }

    #[test]
    fn never_more_in_flight_than_the_window_and_ids_are_unique() {
        let mut t = Tracker::new(3);
        t.stage((0..5).map(|s| entry(s, Qos::AtLeastOnce)));
        let handed = drain(&mut t);
        assert_eq!(seqs(&handed), [0, 1, 2]);
        let ids: Vec<u16> = handed.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(t.unconfirmed(), 5);
        assert!(!t.has_free_id());
    }

    #[test]
    fn an_ack_settles_exactly_the_message_sent_under_its_id_in_any_order() {
        let mut t = Tracker::new(3);
        t.stage((0..6).map(|s| entry(s, Qos::AtLeastOnce)));
        drain(&mut t);
        // The broker acks out of order; the freed id goes to the next one.
        assert_eq!(t.acked(2).map(|e| e.seq), Some(1));
        let next = drain(&mut t);
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].0, next[0].1.seq), (2, 3));
        assert_eq!(t.acked(2).map(|e| e.seq), Some(3));
        assert_eq!(t.acked(1).map(|e| e.seq), Some(0));
        assert_eq!(t.acked(3).map(|e| e.seq), Some(2));
        // A stale or repeated ack for a settled id settles nothing.
        assert!(t.acked(3).is_none());
        assert_eq!(seqs(&drain(&mut t)), [4, 5]);
    }

    #[test]
    fn a_lost_connection_restages_everything_unconfirmed_oldest_first_keeping_ids() {
        let mut t = Tracker::new(4);
        t.stage([
            entry(0, Qos::AtLeastOnce),
            entry(1, Qos::AtMostOnce),
            entry(2, Qos::ExactlyOnce),
            entry(3, Qos::AtLeastOnce),
            entry(4, Qos::AtLeastOnce),
        ]);
        let first = drain(&mut t);
        assert_eq!(seqs(&first), [0, 1, 2, 3, 4]);
        assert!(t.sent(1).is_none());
        t.received(2); // QoS 2 past PubRec: its PubRel is the client's.
        assert_eq!(t.acked(4).map(|e| e.seq), Some(4));
        t.stage([entry(5, Qos::AtLeastOnce)]);
        t.connection_lost();
        assert_eq!(t.connected(true, 4), 1, "seq 0 was written once");
        let again = drain(&mut t);
        assert_eq!(seqs(&again), [0, 1, 3, 5]);
        let ids: Vec<u16> = again.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 0, 3, 4], "old ids kept, the freed one reused");
        assert_eq!(t.completed(2).map(|e| e.seq), Some(2));
    }

    #[test]
    fn a_forgotten_session_sends_qos2_messages_past_pubrec_again() {
        let mut t = Tracker::new(2);
        t.stage([entry(0, Qos::ExactlyOnce), entry(1, Qos::AtLeastOnce)]);
        drain(&mut t);
        t.received(1);
        t.connection_lost();
        t.connected(false, 2);
        let again = drain(&mut t);
        assert_eq!(seqs(&again), [0, 1]);
        assert_eq!(again[0].0, 1);
        assert_eq!(t.unconfirmed(), 2);
    }

    #[test]
    fn a_smaller_broker_window_is_respected_and_ids_above_it_retire() {
        let mut t = Tracker::new(4);
        t.stage((0..4).map(|s| entry(s, Qos::AtLeastOnce)));
        drain(&mut t);
        t.connection_lost();
        t.connected(true, 2);
        // The four keep their ids (the client's table is sized for 4).
        assert_eq!(drain(&mut t).len(), 4);
        t.stage([entry(4, Qos::AtLeastOnce)]);
        assert!(t.hand_over().is_none());
        t.acked(4);
        assert!(t.hand_over().is_none(), "id 4 is above the window");
        t.acked(1);
        assert_eq!(t.hand_over().map(|(id, e)| (id, e.seq)), Some((1, 4)));
    }

    #[test]
    fn a_message_staged_at_a_reconnect_does_not_wait_behind_a_full_window() {
        let mut t = Tracker::new(2);
        t.stage((0..3).map(|s| entry(s, Qos::AtLeastOnce)));
        drain(&mut t);
        t.connection_lost();
        t.connected(true, 2);
        t.stage_after_resends(entry(9, Qos::AtLeastOnce));
        assert_eq!(seqs(&drain(&mut t)), [0, 1]);
        t.acked(1);
        assert_eq!(seqs(&drain(&mut t)), [9]);
    }

    #[test]
    fn qos0_is_settled_when_written_in_order() {
        let mut t = Tracker::new(1);
        t.stage([entry(0, Qos::AtMostOnce), entry(1, Qos::AtMostOnce)]);
        assert_eq!(drain(&mut t).len(), 2);
        assert_eq!(t.sent(0).map(|e| e.seq), Some(0));
        assert_eq!(t.unconfirmed(), 1);
    }
}
