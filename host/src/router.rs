//! The router: the one place a frame's validated outputs are sent on.
//!
//! Every pipeline's worker hands it one `Emission` per frame. Messages go to
//! the MQTT sink and points to the InfluxDB writer; for sinks that keep data
//! on disk, the frame's records for all of them are pushed to the durable
//! log as one unit (committed together, and the frame's ticket dropped after
//! the commit). A tap, if any, gets a copy first. Adding a sink means a
//! field in [`Routes`] and an arm here.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::metrics::{Metrics, SinkDrop};
use crate::model::Sink;
use crate::pipeline::Emission;
use crate::sink::durable::{DurableLog, FrameRecords};
use crate::sink::influx::InfluxInput;
use crate::sink::mqtt::MqttSink;
use crate::sink::record;
use crate::ticket::FrameTicket;

/// Where a frame's outputs go.
pub struct Routes {
    /// See [`crate::app::RunOptions::tap`].
    pub tap: Option<mpsc::Sender<Emission>>,
    /// The MQTT sink (`[mqtt]`).
    pub mqtt: Option<Arc<MqttSink>>,
    /// The InfluxDB writer's input (`[influx]`).
    pub points: Option<InfluxInput>,
    /// The durable log (with a `data_dir` and a durable sink).
    pub log: Option<Arc<DurableLog>>,
    /// The MQTT sink's queue in the log, if it keeps data on disk.
    pub mqtt_queue: Option<usize>,
    /// The InfluxDB sink's queue in the log, if it keeps data on disk.
    pub influx_queue: Option<usize>,
}

/// Sends each frame's messages to the MQTT sink and points to the InfluxDB
/// writer. What goes to durable sinks is pushed to the log as one unit, so
/// it is committed together. Without `[mqtt]` / `[influx]` outputs are the
/// tap's if there is one, else counted as such, with one log line, so none
/// disappears silently.
pub async fn route(mut emissions: mpsc::Receiver<Emission>, routes: Routes, metrics: Arc<Metrics>) {
    let mut told_about_points = false;
    let mut told_about_messages = false;
    let durable_queue = |queue: Option<usize>| queue.filter(|_| routes.log.is_some());
    let (mqtt_queue, influx_queue) = (
        durable_queue(routes.mqtt_queue),
        durable_queue(routes.influx_queue),
    );
    let mut tap = routes.tap.clone();
    while let Some(emission) = emissions.recv().await {
        if let Some(sender) = &tap {
            let copy = Emission {
                messages: emission.messages.clone(),
                points: emission.points.clone(),
                ticket: FrameTicket::none(),
            };
            if sender.send(copy).await.is_err() {
                // Its reader is gone (e.g. `replay --stdout | head`): from
                // this frame on, outputs without a sink are counted.
                tap = None;
            }
        }
        let tapped = tap.is_some();
        let mut frame = FrameRecords::new();
        // Records of the frame for each sink, for the count if it is refused.
        let (mut to_mqtt, mut to_influx) = (0, 0);
        for message in emission.messages {
            match (&routes.mqtt, mqtt_queue) {
                (Some(_), Some(index)) => {
                    frame.push((index, record::mqtt_to_vec(&message)));
                    to_mqtt += 1;
                }
                (Some(sink), None) => sink.submit(message).await,
                (None, _) if tapped => {}
                (None, _) => {
                    metrics.sink_dropped(Sink::Mqtt, SinkDrop::NotConfigured);
                    if !told_about_messages {
                        tracing::info!(
                            "transforms emit MQTT messages but no [mqtt] is configured; messages are counted and discarded"
                        );
                        told_about_messages = true;
                    }
                }
            }
        }
        for point in emission.points {
            match (&routes.points, influx_queue) {
                (Some(_), Some(index)) => {
                    frame.push((index, record::point_to_vec(&point)));
                    to_influx += 1;
                }
                // Waits while the writer's queue is full (backpressure).
                (Some(points), None) => {
                    if !points.send(point).await {
                        metrics.sink_dropped(Sink::Influx, SinkDrop::WriterStopped);
                    }
                }
                (None, _) if tapped => {}
                (None, _) => {
                    metrics.sink_dropped(Sink::Influx, SinkDrop::NotConfigured);
                    if !told_about_points {
                        tracing::info!(
                            "transforms emit points but no [influx] is configured; points are counted and discarded"
                        );
                        told_about_points = true;
                    }
                }
            }
        }
        if let Some(log) = &routes.log
            && !frame.is_empty()
        {
            // Waits while the log's writer is behind (backpressure).
            // The frame's ticket is dropped once its records are committed.
            if !log.push_frame(frame, emission.ticket).await {
                metrics.sink_dropped_by(Sink::Mqtt, SinkDrop::OutboxClosed, to_mqtt);
                metrics.sink_dropped_by(Sink::Influx, SinkDrop::OutboxClosed, to_influx);
            }
        } else {
            // Nothing for the log: the writer need not wait for it.
            emission.ticket.land();
        }
    }
}
