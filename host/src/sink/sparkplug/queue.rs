//! Where the edge node's points wait until the broker confirmed them: the
//! durable log's queue `sparkplug`, or a bounded queue in memory. Both
//! number the points in order and are read from a sequence number on, so
//! the session re-reads from its last confirmation after a broken
//! connection.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, watch};

use crate::metrics::{Metrics, SinkDrop};
use crate::model::{Point, Sink};
use crate::sink::durable::DurableQueue;
use crate::sink::record;
use crate::sync::lock;

/// A point and its place in the queue.
pub(super) struct Item {
    /// Its sequence number (increasing).
    pub seq: u64,
    /// The point.
    pub point: Point,
}

/// The edge node's queue. Cheap to clone.
#[derive(Clone)]
pub enum Queue {
    /// The durable log's queue: survives the host.
    Durable {
        /// The log's queue.
        queue: Arc<DurableQueue>,
        /// Where damaged records are counted.
        metrics: Arc<Metrics>,
    },
    /// In memory only.
    Memory(Arc<Memory>),
}

/// The in-memory queue.
pub struct Memory {
    items: Mutex<MemoryItems>,
    metrics: Arc<Metrics>,
    /// A permit per free place: a full queue makes the pipelines wait.
    space: Semaphore,
    appended: watch::Sender<u64>,
}

struct MemoryItems {
    items: VecDeque<(u64, Point)>,
    next_seq: u64,
}

impl Memory {
    /// Tells the session that items were appended.
    fn announce(&self) {
        let next = lock(&self.items).next_seq;
        self.appended.send_replace(next);
    }
}

/// Bytes of records read at most per call.
const READ_BYTES: usize = 4 << 20;

impl Queue {
    pub(super) fn durable(queue: Arc<DurableQueue>, metrics: Arc<Metrics>) -> Queue {
        Queue::Durable { queue, metrics }
    }

    pub(super) fn in_memory(capacity: usize, metrics: Arc<Metrics>) -> Queue {
        Queue::Memory(Arc::new(Memory {
            metrics,
            items: Mutex::new(MemoryItems {
                items: VecDeque::new(),
                next_seq: 0,
            }),
            space: Semaphore::new(capacity),
            appended: watch::channel(0).0,
        }))
    }

    pub(super) fn is_durable(&self) -> bool {
        matches!(self, Queue::Durable { .. })
    }

    /// Appends `points`, waiting for room.
    pub(super) async fn push_all(&self, points: Vec<Point>) {
        match self {
            Queue::Durable { queue, metrics } => {
                for point in points {
                    if !queue.push(record::point_to_vec(&point)).await {
                        metrics.sink_dropped(Sink::Sparkplug, SinkDrop::OutboxClosed);
                    }
                }
            }
            Queue::Memory(memory) => {
                for point in points {
                    // Waiting for room: what is in already must be seen.
                    if memory.space.available_permits() == 0 {
                        memory.announce();
                    }
                    // The semaphore is never closed.
                    if let Ok(permit) = memory.space.acquire().await {
                        permit.forget();
                    }
                    let mut items = lock(&memory.items);
                    let seq = items.next_seq;
                    items.items.push_back((seq, point));
                    items.next_seq += 1;
                }
                // One wake-up for the frame's points.
                memory.announce();
            }
        }
    }

    /// Up to `max` items after `after` (from the oldest with `None`).
    /// Damaged records of the log are counted and confirmed (removed).
    pub(super) fn read_after(&self, after: Option<u64>, max: usize) -> Vec<Item> {
        match self {
            Queue::Durable { queue, metrics } => {
                let items = match queue.outbox().peek(after, max, READ_BYTES) {
                    Ok(items) => items,
                    Err(error) => {
                        tracing::error!(%error, "Sparkplug outbox: cannot read; retrying");
                        return Vec::new();
                    }
                };
                items
                    .into_iter()
                    .filter_map(|item| match record::decode_point(&item.record) {
                        Ok(point) => Some(Item {
                            seq: item.seq,
                            point,
                        }),
                        Err(error) => {
                            tracing::error!(seq = item.seq, %error,
                                "Sparkplug outbox: a damaged record is dropped");
                            metrics.sink_dropped(Sink::Sparkplug, SinkDrop::OutboxCorruptRecord);
                            queue.ack(item.seq);
                            None
                        }
                    })
                    .collect()
            }
            Queue::Memory(memory) => {
                let items = lock(&memory.items);
                let start = match after {
                    Some(after) => items.items.partition_point(|(seq, _)| *seq <= after),
                    None => 0,
                };
                items
                    .items
                    .range(start..)
                    .take(max)
                    .map(|(seq, point)| Item {
                        seq: *seq,
                        point: point.clone(),
                    })
                    .collect()
            }
        }
    }

    /// The broker confirmed every item up to `seq` (those read so far, in
    /// order): they leave the queue.
    pub(super) fn confirm(&self, seqs: impl IntoIterator<Item = u64>) {
        match self {
            Queue::Durable { queue, .. } => {
                for seq in seqs {
                    queue.ack(seq);
                }
            }
            Queue::Memory(memory) => {
                let Some(last) = seqs.into_iter().last() else {
                    return;
                };
                let removed = {
                    let mut items = lock(&memory.items);
                    let n = items.items.partition_point(|(seq, _)| *seq <= last);
                    items.items.drain(..n).count()
                };
                memory.space.add_permits(removed);
            }
        }
    }

    /// The sequence number the next appended item gets: what is below it
    /// waited (historical once births come after it).
    pub(super) fn next_seq(&self) -> u64 {
        match self {
            Queue::Durable { queue, .. } => queue.outbox().next_seq(),
            Queue::Memory(memory) => lock(&memory.items).next_seq,
        }
    }

    /// Changes whenever items were appended.
    pub(super) fn appended(&self) -> watch::Receiver<u64> {
        match self {
            Queue::Durable { queue, .. } => queue.appended(),
            Queue::Memory(memory) => memory.appended.subscribe(),
        }
    }

    /// At shutdown: the log's queue is closed (confirmations applied; what
    /// is left is sent after the next start); in memory, what is left is
    /// counted as dropped. Returns how many items are left.
    pub(super) async fn close(&self) -> u64 {
        match self {
            Queue::Durable { queue, .. } => {
                queue.close().await;
                queue.outbox().stats().depth_items
            }
            Queue::Memory(memory) => {
                let left = lock(&memory.items).items.len() as u64;
                memory.metrics.sink_dropped_by(
                    Sink::Sparkplug,
                    SinkDrop::ShutdownUndelivered,
                    left,
                );
                left
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FieldValue;

    fn point(value: i64) -> Point {
        Point {
            measurement: "m".into(),
            tags: Vec::new(),
            fields: vec![("v".into(), FieldValue::Int(value))],
            timestamp_ns: Some(1),
        }
    }

    #[tokio::test]
    async fn a_full_memory_queue_waits_until_the_broker_confirms() {
        let queue = Queue::in_memory(2, Arc::new(Metrics::new()));
        let mut appended = queue.appended();
        queue.push_all(vec![point(0), point(1)]).await;
        assert!(appended.has_changed().expect("open"));
        appended.borrow_and_update();
        let pusher = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.push_all(vec![point(2)]).await })
        };
        // The test runtime has one thread: yielding lets the push run
        // until it waits.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !pusher.is_finished(),
            "a full queue makes the pipeline wait"
        );
        let read = queue.read_after(None, 10);
        assert_eq!(read.iter().map(|i| i.seq).collect::<Vec<_>>(), [0, 1]);
        queue.confirm([0]);
        pusher.await.expect("pushed");
        let read = queue.read_after(Some(0), 10);
        assert_eq!(read.iter().map(|i| i.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(queue.next_seq(), 3);
        assert_eq!(queue.close().await, 2, "left unconfirmed at shutdown");
    }
}
