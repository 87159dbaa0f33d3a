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
//! A QoS 2 message keeps its packet id until it is confirmed, also across
//! reconnects: a re-send under the same id is recognised by a broker that
//! kept the session. A QoS 1 message takes a fresh id after a reconnect (a
//! broker keeps no state for those). QoS 0 messages take no id; they count
//! as delivered when written, the most that QoS offers.
//!
//! **Messages the broker disconnects on.** A broker closes the connection
//! on a packet it will not take (MQTT 3.1.1 has no other way to say no):
//! re-sent first after every reconnect, such a message would stop all
//! delivery for good. A broker handles packets in order, so when a
//! connection breaks, the oldest message written on it and not acknowledged
//! is the suspect. After [`SUSPECT_AFTER`] such breaks in a row it is
//! *probed*: on the next connection the birth message goes alone first
//! (its acknowledgement shows the link and the broker work), then the
//! suspect alone. If the connection breaks before the suspect is
//! acknowledged [`POISON_AFTER`] times, it is set aside (the caller
//! dead-letters and counts it) and delivery goes on. A flaky link fails the
//! probe only if it breaks in the one round trip after a proven one, twice.

use std::collections::{HashMap, VecDeque};

use super::Entry;
use crate::model::Qos;

/// Breaks with the same suspect after which it is probed alone.
pub(super) const SUSPECT_AFTER: u8 = 3;
/// Failed probes after which the suspect is set aside.
pub(super) const POISON_AFTER: u8 = 2;

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
    /// An acknowledgement arrived on the current connection.
    proven: bool,
    /// The suspect probed on the current connection (its `seq`).
    probing: Option<u64>,
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
            proven: false,
            probing: None,
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
        if let Some(suspect) = self.probing {
            return self.hand_over_probe(suspect);
        }
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

    /// While probing: the birth message alone, then (once an ack proved
    /// the connection) the suspect alone, then nothing until it settles.
    fn hand_over_probe(&mut self, suspect: u64) -> Option<(u16, Entry)> {
        if !self.in_flight.is_empty() || !self.unwritten.is_empty() {
            return None;
        }
        let found = if self.proven {
            self.staged
                .iter()
                .position(|e| e.seq == suspect && !e.status)
        } else {
            self.staged.iter().position(|e| e.status)
        };
        let Some(at) = found else {
            // Nothing to probe with (or the suspect is gone): never stall.
            self.probing = None;
            return self.hand_over();
        };
        let pkid = match self.staged[at].pkid {
            Some(pkid) => pkid,
            None => self.free.pop_front()?,
        };
        let mut entry = self.staged.remove(at)?;
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
            entry.written_now = true;
        }
        None
    }

    /// PubAck (or a refusing PubRec): the message under `pkid` is settled.
    pub(super) fn acked(&mut self, pkid: u16) -> Option<Entry> {
        let entry = self.in_flight.remove(&pkid)?;
        self.release(pkid);
        self.settled(&entry);
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
        self.settled(&entry);
        Some(entry)
    }

    fn settled(&mut self, entry: &Entry) {
        self.proven = true;
        if self.probing == Some(entry.seq) && !entry.status {
            self.probing = None;
        }
    }

    fn release(&mut self, pkid: u16) {
        if pkid <= self.window {
            self.free.push_back(pkid);
        }
    }

    /// The connection broke and the sink took every publish of ours out of
    /// the client's queue: what was handed over and not acknowledged goes
    /// back to the front of `staged`, oldest first (QoS 1 messages give
    /// their ids back). QoS 2 messages past PubRec stay: their PubRel is the
    /// client's to re-send. Returns the messages set aside because the
    /// broker disconnects on them (module docs).
    pub(super) fn connection_lost(&mut self) -> Vec<Entry> {
        let suspect = self
            .in_flight
            .values()
            .filter(|e| e.written_now && !e.status)
            .min_by_key(|e| e.seq)
            .map(|e| e.seq);
        let mut lost: Vec<Entry> = self.in_flight.drain().map(|(_, e)| e).collect();
        lost.extend(self.unwritten.drain(..));
        let mut poisoned = Vec::new();
        let mut again = Vec::with_capacity(lost.len());
        for mut entry in lost {
            if entry.is_birth() {
                // Every connection gets a birth message of its own.
                if let Some(pkid) = entry.pkid.take() {
                    self.release(pkid);
                }
                continue;
            }
            if !entry.status && Some(entry.seq) == suspect {
                if self.probing == Some(entry.seq) {
                    if self.proven {
                        entry.failed_probes += 1;
                    }
                } else {
                    entry.strikes = entry.strikes.saturating_add(1);
                }
            }
            entry.written_now = false;
            if entry.failed_probes >= POISON_AFTER {
                if let Some(pkid) = entry.pkid.take() {
                    self.release(pkid);
                }
                poisoned.push(entry);
                continue;
            }
            if entry.qos == Qos::AtLeastOnce
                && let Some(pkid) = entry.pkid.take()
            {
                self.release(pkid);
            }
            again.push(entry);
        }
        self.restage(again);
        self.probing = None;
        self.proven = false;
        poisoned
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
        // A set: with a window of thousands, a list lookup per id would
        // make every reconnect quadratic.
        let reserved: std::collections::HashSet<u16> = self
            .releasing
            .keys()
            .copied()
            .chain(self.staged.iter().filter_map(|e| e.pkid))
            .chain(self.in_flight.keys().copied())
            .collect();
        self.free = (1..=window).filter(|id| !reserved.contains(id)).collect();
        self.probing = self
            .staged
            .iter()
            .find(|e| !e.status)
            .filter(|e| e.strikes >= SUSPECT_AFTER)
            .map(|e| e.seq);
        if let Some(seq) = self.probing {
            tracing::warn!(
                seq,
                "MQTT connections broke {SUSPECT_AFTER} times in a row with the same message the oldest unacknowledged; sending it alone to see whether the broker refuses it"
            );
        }
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

    fn entry(seq: u64, qos: Qos) -> Entry {
        let mut entry = Entry::data(crate::model::MqttMessage {
            topic: format!("t/{seq}").into(),
            payload: seq.to_string().into_bytes().into(),
            qos,
            retain: false,
        });
        entry.seq = seq;
        entry.durable = Some(seq);
        entry
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
        t.stage((0..4).map(|s| entry(s, Qos::ExactlyOnce)));
        drain(&mut t);
        t.connection_lost();
        t.connected(true, 2);
        // QoS 2 re-sends keep their ids (the client's table is sized for 4).
        assert_eq!(drain(&mut t).len(), 4);
        t.stage([entry(4, Qos::AtLeastOnce)]);
        assert!(t.hand_over().is_none());
        t.received(4);
        t.completed(4);
        assert!(t.hand_over().is_none(), "id 4 is above the window");
        t.received(1);
        t.completed(1);
        assert_eq!(t.hand_over().map(|(id, e)| (id, e.seq)), Some((1, 4)));
    }

    #[test]
    fn qos1_resends_take_fresh_ids_within_a_smaller_window() {
        let mut t = Tracker::new(4);
        t.stage((0..4).map(|s| entry(s, Qos::AtLeastOnce)));
        drain(&mut t);
        t.connection_lost();
        t.connected(true, 2);
        assert_eq!(seqs(&drain(&mut t)), [0, 1]);
        t.acked(1);
        assert_eq!(
            drain(&mut t)
                .iter()
                .map(|(id, e)| (*id, e.seq))
                .collect::<Vec<_>>(),
            [(1, 2)]
        );
    }

    #[test]
    fn a_message_staged_at_a_reconnect_does_not_wait_behind_a_full_window() {
        let mut t = Tracker::new(2);
        t.stage((0..3).map(|s| entry(s, Qos::ExactlyOnce)));
        drain(&mut t);
        t.connection_lost();
        t.connected(true, 2);
        t.stage_after_resends(entry(9, Qos::AtLeastOnce));
        assert_eq!(seqs(&drain(&mut t)), [0, 1]);
        t.received(1);
        t.completed(1);
        assert_eq!(seqs(&drain(&mut t)), [9]);
    }

    fn birth() -> Entry {
        Entry::status("sluice/status/x", super::super::BIRTH)
    }

    /// One connection: birth staged, everything handed over is written,
    /// then the connection breaks. Returns what was set aside.
    fn connection_that_breaks(t: &mut Tracker) -> Vec<Entry> {
        t.connected(true, 10);
        t.stage_after_resends(birth());
        for (pkid, _) in drain(t) {
            t.sent(pkid);
        }
        t.connection_lost()
    }

    #[test]
    fn a_message_the_broker_disconnects_on_is_probed_alone_then_set_aside() {
        let mut t = Tracker::new(10);
        t.stage((0..5).map(|s| entry(s, Qos::AtLeastOnce)));
        for _ in 0..SUSPECT_AFTER {
            assert!(connection_that_breaks(&mut t).is_empty());
        }
        for probe in 1..=POISON_AFTER {
            t.connected(true, 10);
            t.stage_after_resends(birth());
            // The birth alone, and nothing else until it is acknowledged.
            let first = drain(&mut t);
            assert_eq!(first.len(), 1);
            assert!(first[0].1.status);
            t.acked(first[0].0);
            // Then the suspect alone.
            let second = drain(&mut t);
            assert_eq!(seqs(&second), [0]);
            t.sent(second[0].0);
            let aside = t.connection_lost();
            if probe < POISON_AFTER {
                assert!(aside.is_empty());
            } else {
                assert_eq!(aside.iter().map(|e| e.seq).collect::<Vec<_>>(), [0]);
            }
        }
        // The rest flows as usual.
        t.connected(true, 10);
        let rest = drain(&mut t);
        assert_eq!(seqs(&rest), [1, 2, 3, 4]);
        assert_eq!(t.unconfirmed(), 4);
    }

    #[test]
    fn a_probe_the_broker_acknowledges_clears_the_suspicion() {
        let mut t = Tracker::new(10);
        t.stage((0..3).map(|s| entry(s, Qos::AtLeastOnce)));
        for _ in 0..SUSPECT_AFTER {
            connection_that_breaks(&mut t);
        }
        t.connected(true, 10);
        t.stage_after_resends(birth());
        let first = drain(&mut t);
        // A break before the birth was acknowledged proves nothing.
        t.sent(first[0].0);
        assert!(t.connection_lost().is_empty());
        t.connected(true, 10);
        t.stage_after_resends(birth());
        let first = drain(&mut t);
        t.acked(first[0].0);
        let suspect = drain(&mut t);
        assert_eq!(seqs(&suspect), [0]);
        assert_eq!(t.acked(suspect[0].0).map(|e| e.seq), Some(0));
        assert_eq!(seqs(&drain(&mut t)), [1, 2]);
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
