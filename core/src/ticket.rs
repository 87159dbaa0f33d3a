//! Frame tickets: how a port knows the frames it read are safe.
//!
//! With a durable log, a port reads no further while a frame of its last
//! read is unsettled: not yet committed to the log, nor finished otherwise
//! (refused and counted, or handed to a sink that keeps nothing on disk).
//! What arrives meanwhile waits in the kernel's serial buffer — or in the
//! device, with flow control — so a kill -9 loses at most what the last
//! read took from the kernel, never the host's queues.
//!
//! Each frame carries a [`FrameTicket`]; its clones travel with the frame's
//! outputs, and the frame is settled when the last clone is dropped,
//! wherever that happens. No path can forget to settle a frame, and none
//! can settle it early but by dropping it.
//!
//! [`InFlight`] counts, over every port, the frames on their way to the
//! log's writer: issued a ticket and neither *landed* (taken into the
//! writer's batch, or found to have nothing for the log) nor settled. When
//! it is zero, no frame can join a commit before the commit settles the
//! ones it has (each port waits for that), so the writer commits at once
//! instead of lingering for more.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// One port's count of unsettled frames (clones share it).
#[derive(Debug, Clone, Default)]
pub struct FrameTickets {
    shared: Arc<Shared>,
    in_flight: InFlight,
}

/// Frames on their way to the log's writer, over every port (clones share
/// the count). See the module docs.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    shared: Arc<Flight>,
}

#[derive(Debug, Default)]
struct Flight {
    frames: AtomicUsize,
    emptied: Notify,
}

/// Counts as a frame in flight while held ([`FrameTickets::delivering`]).
#[derive(Debug)]
pub struct Delivering(InFlight);

impl Drop for Delivering {
    fn drop(&mut self) {
        self.0.sub();
    }
}

impl InFlight {
    fn add(&self) {
        self.shared.frames.fetch_add(1, Ordering::SeqCst);
    }

    fn sub(&self) {
        if self.shared.frames.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.emptied.notify_waiters();
        }
    }

    /// Whether no frame is on its way to the writer.
    pub fn is_empty(&self) -> bool {
        self.shared.frames.load(Ordering::SeqCst) == 0
    }

    /// Returns once no frame is on its way to the writer.
    pub async fn emptied(&self) {
        wait_for(&self.shared.emptied, || self.is_empty()).await;
    }
}

/// Returns once `done()` holds, checked whenever `notify` wakes waiters.
async fn wait_for(notify: &Notify, done: impl Fn() -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        // Registered before the check, so a change in between wakes it.
        notified.as_mut().enable();
        if done() {
            return;
        }
        notified.await;
    }
}

#[derive(Debug, Default)]
struct Shared {
    unsettled: AtomicUsize,
    settled: Notify,
}

/// Held by a frame until it is settled; clones share it.
#[derive(Debug, Clone, Default)]
pub struct FrameTicket {
    /// Only ever dropped: the last drop settles the frame.
    _held: Option<Arc<Held>>,
}

#[derive(Debug)]
struct Held {
    port: Arc<Shared>,
    in_flight: InFlight,
    landed: AtomicBool,
}

impl Held {
    fn land(&self) {
        if !self.landed.swap(true, Ordering::SeqCst) {
            self.in_flight.sub();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.land();
        if self.port.unsettled.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.port.settled.notify_waiters();
        }
    }
}

impl FrameTickets {
    /// A port's count, its frames counted in `in_flight` too.
    pub fn new(in_flight: InFlight) -> Self {
        Self {
            shared: Arc::default(),
            in_flight,
        }
    }

    /// A ticket for the next frame.
    pub fn issue(&self) -> FrameTicket {
        self.shared.unsettled.fetch_add(1, Ordering::SeqCst);
        self.in_flight.add();
        FrameTicket {
            _held: Some(Arc::new(Held {
                port: self.shared.clone(),
                in_flight: self.in_flight.clone(),
                landed: AtomicBool::new(false),
            })),
        }
    }

    /// Held while a port hands over the frames of one read, so the writer
    /// does not commit the first before the others are issued.
    pub fn delivering(&self) -> Delivering {
        self.in_flight.add();
        Delivering(self.in_flight.clone())
    }

    /// Whether every frame issued a ticket is settled.
    pub fn all_settled(&self) -> bool {
        self.shared.unsettled.load(Ordering::SeqCst) == 0
    }

    /// Returns once every frame issued a ticket is settled.
    pub async fn settled(&self) {
        wait_for(&self.shared.settled, || self.all_settled()).await;
    }
}

impl FrameTicket {
    /// A ticket nobody waits for (frames of a replay, vectors, tests).
    pub fn none() -> Self {
        Self { _held: None }
    }

    /// The frame reached the log's writer, or has nothing for it: no
    /// longer in flight (it stays unsettled until its last clone goes).
    pub fn land(&self) {
        if let Some(held) = &self._held {
            held.land();
        }
    }
}

/// Tickets are not part of a frame's value: two frames with the same bytes
/// are equal whoever waits for them.
impl PartialEq for FrameTicket {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for FrameTicket {}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn settled_when_the_last_clone_of_every_ticket_is_dropped() {
        let tickets = FrameTickets::default();
        assert!(tickets.all_settled());
        let first = tickets.issue();
        let copy = first.clone();
        let second = tickets.issue();
        drop(first);
        drop(second);
        assert!(!tickets.all_settled(), "a clone still holds the first");
        let waiter = tokio::time::timeout(Duration::from_millis(50), tickets.settled());
        assert!(waiter.await.is_err(), "settled() waits for the clone");
        let wait = tokio::spawn({
            let shared = tickets.shared.clone();
            async move {
                FrameTickets {
                    shared,
                    in_flight: InFlight::default(),
                }
                .settled()
                .await
            }
        });
        tokio::task::yield_now().await;
        drop(copy);
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("woken by the last drop")
            .expect("task");
        assert!(tickets.all_settled());
        tickets.settled().await;
    }

    #[tokio::test]
    async fn a_frame_is_in_flight_until_it_lands_or_settles() {
        let in_flight = InFlight::default();
        let (a, b) = (
            FrameTickets::new(in_flight.clone()),
            FrameTickets::new(in_flight.clone()),
        );
        let first = a.issue();
        let second = b.issue();
        let delivering = a.delivering();
        assert!(!in_flight.is_empty());
        first.land();
        first.land();
        drop(delivering);
        assert!(
            !in_flight.is_empty(),
            "the second port's frame is on its way"
        );
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.emptied().await }
        });
        tokio::task::yield_now().await;
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when the last frame settled")
            .expect("task");
        assert!(!a.all_settled(), "landed is not settled");
        drop(first);
        assert!(a.all_settled() && in_flight.is_empty());
    }
}
