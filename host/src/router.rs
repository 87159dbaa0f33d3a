//! The router: the one place a frame's validated outputs are sent on.
//!
//! Every pipeline's worker routes its frames' `Emission`s itself, with a
//! [`Router`] of its own. Messages go to the MQTT sink and points to the
//! InfluxDB writer and the Sparkplug edge node; for sinks that keep data on
//! disk, the frame's records for all of them are pushed to the durable log
//! as one unit (committed together, and the frame's ticket dropped after
//! the commit). A tap, if any, gets a copy first. Adding a sink means a
//! field in [`Routes`] and an arm here.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::metrics::{Metrics, SinkDrop};
use crate::model::Sink;
use crate::output::TransformOutput;
use crate::sink::durable::{DurableLog, FrameRecords};
use crate::sink::influx::InfluxInput;
use crate::sink::mqtt::MqttSink;
use crate::sink::record;
use crate::sink::sparkplug::SparkplugSink;
use crate::ticket::FrameTicket;

/// What one frame hands to the sinks: its validated outputs, in the order
/// the transform emitted them. A frame's outputs travel together so the
/// durable log can commit them together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Emission {
    /// Validated messages and points; every point's timestamp is set
    /// (the frame's receive time when the transform gave none).
    pub output: TransformOutput,
    /// The frame's ticket: the port reads on once this is dropped (after
    /// the durable log committed the outputs).
    pub ticket: FrameTicket,
}

/// Where a worker hands its frames' outputs: straight to the sinks, or to
/// a channel (for the tests and benchmarks that read the outputs).
#[derive(Clone)]
pub enum Emitter {
    /// Routed on the worker's thread.
    Route(Router),
    /// Sent to a channel.
    Channel(mpsc::Sender<Emission>),
}

impl Emitter {
    /// Hands over one frame's outputs; false once the receiving end of the
    /// channel is gone.
    pub async fn emit(&mut self, emission: Emission) -> bool {
        match self {
            Emitter::Route(router) => {
                router.route(emission).await;
                true
            }
            Emitter::Channel(sender) => sender.send(emission).await.is_ok(),
        }
    }
}

impl From<mpsc::Sender<Emission>> for Emitter {
    fn from(sender: mpsc::Sender<Emission>) -> Emitter {
        Emitter::Channel(sender)
    }
}

/// Where a frame's outputs go.
pub struct Routes {
    /// See [`crate::app::RunOptions::tap`].
    pub tap: Option<mpsc::Sender<Emission>>,
    /// The MQTT sink (`[mqtt]`).
    pub mqtt: Option<Arc<MqttSink>>,
    /// The InfluxDB writer's input (`[influx]`).
    pub points: Option<InfluxInput>,
    /// The Sparkplug edge node (`[mqtt.sparkplug]`): points too.
    pub sparkplug: Option<Arc<SparkplugSink>>,
    /// The durable log (with a `data_dir` and a durable sink).
    pub log: Option<Arc<DurableLog>>,
    /// The MQTT sink's queue in the log, if it keeps data on disk.
    pub mqtt_queue: Option<usize>,
    /// The InfluxDB sink's queue in the log, if it keeps data on disk.
    pub influx_queue: Option<usize>,
    /// The Sparkplug edge node's queue in the log, if it keeps data on disk.
    pub sparkplug_queue: Option<usize>,
}

/// Sends each frame's messages to the MQTT sink and points to the InfluxDB
/// writer. What goes to durable sinks is pushed to the log as one unit, so
/// it is committed together. Without `[mqtt]` / `[influx]` outputs are the
/// tap's if there is one, else counted as such, with one log line, so none
/// disappears silently.
///
/// Each pipeline's worker has a clone and routes on its own thread, right
/// after the transform: a frame's outputs reach the sinks' queues without
/// another hand-off (every hand-off is a thread woken per frame).
#[derive(Clone)]
pub struct Router {
    routes: Arc<Routes>,
    metrics: Arc<Metrics>,
    /// The sinks' queues in the log, for those that keep data on disk.
    mqtt_queue: Option<usize>,
    influx_queue: Option<usize>,
    sparkplug_queue: Option<usize>,
    /// The tap, until its reader is gone.
    tap: Option<mpsc::Sender<Emission>>,
    told_about_points: bool,
    told_about_messages: bool,
}

impl Router {
    /// A router to `routes`.
    pub fn new(routes: Routes, metrics: Arc<Metrics>) -> Router {
        let durable_queue = |queue: Option<usize>| queue.filter(|_| routes.log.is_some());
        Router {
            mqtt_queue: durable_queue(routes.mqtt_queue),
            influx_queue: durable_queue(routes.influx_queue),
            sparkplug_queue: durable_queue(routes.sparkplug_queue),
            tap: routes.tap.clone(),
            routes: Arc::new(routes),
            metrics,
            told_about_points: false,
            told_about_messages: false,
        }
    }

    /// Sends one frame's outputs on; waits while a sink's queue is full
    /// (backpressure).
    pub async fn route(&mut self, emission: Emission) {
        let Router {
            routes,
            metrics,
            mqtt_queue,
            influx_queue,
            sparkplug_queue,
            tap,
            told_about_points,
            told_about_messages,
        } = self;
        if let Some(sender) = tap {
            let copy = Emission {
                output: emission.output.clone(),
                ticket: FrameTicket::none(),
            };
            if sender.send(copy).await.is_err() {
                // Its reader is gone (e.g. `replay --stdout | head`): from
                // this frame on, outputs without a sink are counted.
                *tap = None;
            }
        }
        let tapped = tap.is_some();
        let Emission { output, ticket } = emission;
        let mut frame = FrameRecords::new();
        // Records of the frame for each sink, for the count if it is refused.
        let (mut to_mqtt, mut to_influx) = (0, 0);
        match (&routes.mqtt, *mqtt_queue) {
            (Some(_), Some(index)) => {
                for message in output.messages() {
                    frame.push((index, record::mqtt_to_vec(message)));
                }
                to_mqtt = output.message_count() as u64;
            }
            // Waits while the sink's backlog is full (backpressure).
            (Some(sink), None) if output.message_count() > 0 => {
                sink.submit_all(output.owned_messages()).await
            }
            (Some(_), None) => {}
            (None, _) if tapped => {}
            (None, _) if output.message_count() == 0 => {}
            (None, _) => {
                let count = output.message_count() as u64;
                metrics.sink_dropped_by(Sink::Mqtt, SinkDrop::NotConfigured, count);
                if !*told_about_messages {
                    tracing::info!(
                        "transforms emit MQTT messages but no [mqtt] is configured; messages are counted and discarded"
                    );
                    *told_about_messages = true;
                }
            }
        }
        // The edge node takes the points as well as InfluxDB.
        let mut to_sparkplug = 0;
        match (&routes.sparkplug, *sparkplug_queue) {
            (Some(_), Some(index)) => {
                for point in output.points() {
                    frame.push((index, record::point_to_vec(&point)));
                }
                to_sparkplug = output.point_count() as u64;
            }
            // Waits while its queue is full (backpressure).
            (Some(sink), None) if output.point_count() > 0 => {
                sink.submit(output.owned_points()).await;
            }
            _ => {}
        }
        let sparkplug_only = routes.sparkplug.is_some() && routes.points.is_none();
        // Counted once per frame: a labelled counter's lookup costs more
        // than a point.
        let mut points_unrouted = 0;
        for point in output.points() {
            match (&routes.points, *influx_queue) {
                (Some(_), Some(index)) => {
                    frame.push((index, record::point_to_vec(&point)));
                    to_influx += 1;
                }
                // Waits while the writer's queue is full (backpressure).
                (Some(points), None) => {
                    if !points.send(point.to_owned()).await {
                        metrics.sink_dropped(Sink::Influx, SinkDrop::WriterStopped);
                    }
                }
                (None, _) if tapped || sparkplug_only => {}
                (None, _) => points_unrouted += 1,
            }
        }
        if points_unrouted > 0 {
            metrics.sink_dropped_by(Sink::Influx, SinkDrop::NotConfigured, points_unrouted);
            if !*told_about_points {
                tracing::info!(
                    "transforms emit points but no [influx] is configured; points are counted and discarded"
                );
                *told_about_points = true;
            }
        }
        if let Some(log) = &routes.log
            && !frame.is_empty()
        {
            // Waits while the log's writer is behind (backpressure).
            // The frame's ticket is dropped once its records are committed.
            if !log.push_frame(frame, ticket).await {
                metrics.sink_dropped_by(Sink::Mqtt, SinkDrop::OutboxClosed, to_mqtt);
                metrics.sink_dropped_by(Sink::Influx, SinkDrop::OutboxClosed, to_influx);
                metrics.sink_dropped_by(Sink::Sparkplug, SinkDrop::OutboxClosed, to_sparkplug);
            }
        } else {
            // Nothing for the log: the writer need not wait for it.
            ticket.land();
        }
    }
}
