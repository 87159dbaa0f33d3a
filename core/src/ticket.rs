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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// One port's count of unsettled frames (clones share it).
#[derive(Debug, Clone, Default)]
pub struct FrameTickets {
    shared: Arc<Shared>,
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
struct Held(Arc<Shared>);

impl Drop for Held {
    fn drop(&mut self) {
        if self.0.unsettled.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.settled.notify_waiters();
        }
    }
}

impl FrameTickets {
    /// A ticket for the next frame.
    pub fn issue(&self) -> FrameTicket {
        self.shared.unsettled.fetch_add(1, Ordering::SeqCst);
        FrameTicket {
            _held: Some(Arc::new(Held(self.shared.clone()))),
        }
    }

    /// Whether every frame issued a ticket is settled.
    pub fn all_settled(&self) -> bool {
        self.shared.unsettled.load(Ordering::SeqCst) == 0
    }

    /// Returns once every frame issued a ticket is settled.
    pub async fn settled(&self) {
        loop {
            let notified = self.shared.settled.notified();
            tokio::pin!(notified);
            // Registered before the check, so a settle in between wakes it.
            notified.as_mut().enable();
            if self.all_settled() {
                return;
            }
            notified.await;
        }
    }
}

impl FrameTicket {
    /// A ticket nobody waits for (frames of a replay, vectors, tests).
    pub fn none() -> Self {
        Self { _held: None }
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
            async move { FrameTickets { shared }.settled().await }
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
}
