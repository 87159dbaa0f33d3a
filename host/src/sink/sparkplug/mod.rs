//! The Sparkplug B edge node: the transforms' points as Sparkplug metrics.
//!
//! ```text
//! router ─► queue (durable log queue `sparkplug`, or memory) ─► session task ─► broker
//!                  ▲ acked once a round trip after them came back   │ (own connection)
//!                  └─────────────────────────────────────────────────┘
//! ```
//!
//! Sparkplug's session state (births, `seq`, `bdSeq`, aliases) must live
//! where the connection is, so the edge node is one task owning its own
//! rumqttc event loop ([`session`]), with a clean session and NDEATH as its
//! will, apart from the `[mqtt]` sink's persistent session. [`node`] decides
//! what to publish; [`proto`] is the payload. Births and data are QoS 0,
//! as the specification says; a point leaves the queue only when an
//! UNSUBACK that the broker sent after reading it came back (a broker
//! handles a connection's packets in order), so a connection that breaks
//! loses nothing: what was not confirmed is sent again after the next
//! births, flagged historical like everything that waited.

pub mod node;
pub mod proto;
mod queue;
mod session;

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;
use crate::config::sparkplug::SparkplugConfig;
use crate::model::Point;
use crate::sink::SinkContext;
use crate::sink::mqtt::CommandRoute;
pub use queue::Queue;

/// A running edge node.
pub struct SparkplugSink {
    queue: Queue,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl SparkplugSink {
    /// Starts the edge node's session task (it connects, and reconnects,
    /// on its own). NCMD/DCMD metrics go to the pipelines of `routes` (see
    /// `command_topic`).
    pub fn start(
        mqtt: &MqttConfig,
        config: &SparkplugConfig,
        context: SinkContext,
        routes: Vec<CommandRoute>,
    ) -> anyhow::Result<SparkplugSink> {
        let queue = match &context.durable {
            Some(durable) => Queue::durable(durable.clone(), context.metrics.clone()),
            None => Queue::in_memory(config.queue_capacity.get(), context.metrics.clone()),
        };
        let stop = CancellationToken::new();
        let session = session::Session::new(
            mqtt,
            config,
            queue.clone(),
            context.metrics.clone(),
            context.data_dir.as_deref(),
            routes,
        )?;
        let task = tokio::spawn(session.run(stop.clone()));
        Ok(SparkplugSink { queue, stop, task })
    }

    /// Queues a frame's points (in memory; with the durable log the router
    /// appends them to the log's queue itself). Waits while the queue is
    /// full.
    pub async fn submit(&self, points: Vec<Point>) {
        self.queue.push_all(points).await;
    }

    /// Whether the points go through the durable log.
    pub fn is_durable(&self) -> bool {
        self.queue.is_durable()
    }

    /// Stops the edge node: what is queued is sent and confirmed if the node
    /// is online (within `timeout`), then NDEATH and a clean disconnect.
    /// Returns how many points were left unconfirmed (they stay in the
    /// durable log, or are counted as dropped without it).
    pub async fn shutdown(self, timeout: Duration) -> u64 {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
        self.queue.close().await
    }
}
