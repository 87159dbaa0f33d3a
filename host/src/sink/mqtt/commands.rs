//! Downlink commands: which pipeline takes the messages of which
//! subscription ([`CommandRoute`]), and the hand-over from the connection
//! task to the pipelines' workers, which never waits.

use tokio::sync::mpsc;

use crate::metrics::serial::{DownlinkDrop, SerialMetrics};
use crate::model::{DownlinkCommand, Qos};
use crate::ratelimit::RateLimiter;

/// Where the commands for one pipeline go (see the `sink::mqtt` docs).
#[derive(Debug, Clone)]
pub struct CommandRoute {
    /// The pipeline (logs).
    pub pipeline: String,
    /// The topic filter subscribed to.
    pub filter: String,
    /// Subscription QoS.
    pub qos: Qos,
    /// Hand over retained messages too.
    pub accept_retained: bool,
    /// The pipeline worker's command queue.
    pub commands: mpsc::Sender<DownlinkCommand>,
    /// Where refused commands are counted.
    pub metrics: SerialMetrics,
}

/// Hands an incoming publish to every pipeline whose filter matches, without
/// waiting (this runs in the task that polls the event loop). Returns how
/// many pipelines' filters matched.
pub(crate) fn route_command(
    routes: &[CommandRoute],
    topic: &str,
    payload: &[u8],
    retain: bool,
    warnings: &mut RateLimiter,
) -> usize {
    let mut matched = 0;
    for route in routes {
        if !crate::model::topic_matches_filter(topic, &route.filter) {
            continue;
        }
        matched += 1;
        if retain && !route.accept_retained {
            route.metrics.downlink_dropped(DownlinkDrop::Retained);
            if let Some(suppressed) = warnings.check() {
                tracing::warn!(pipeline = %route.pipeline, topic, suppressed,
                    "retained downlink command ignored (set downlink.accept_retained to take them)");
            }
            continue;
        }
        let command = DownlinkCommand {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
        };
        match route.commands.try_send(command) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                route
                    .metrics
                    .downlink_dropped(DownlinkDrop::CommandQueueFull);
                if let Some(suppressed) = warnings.check() {
                    tracing::warn!(pipeline = %route.pipeline, topic, suppressed,
                        "downlink command dropped: the transform's command queue is full");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                route.metrics.downlink_dropped(DownlinkDrop::Shutdown);
            }
        }
    }
    matched
}
