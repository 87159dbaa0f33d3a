//! Sources: where frames come from. Each source task owns its device, splits
//! the byte stream with a framer and hands frames to its pipeline through a
//! bounded channel.

pub mod capture;
pub mod modbus;

pub mod replay;
pub mod serial;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::PipelineConfig;
use crate::metrics::Metrics;
use crate::model::Frame;
use crate::ticket::InFlight;

/// Where the pipelines' frames come from.
#[derive(Debug, Clone, Default)]
pub enum Source {
    /// The configured serial ports (`sluice run`).
    #[default]
    Serial,
    /// Capture files (`sluice replay`).
    Replay(replay::ReplayPlan),
}

/// How far a serial port may read ahead of what is safe on disk.
#[derive(Debug, Clone)]
pub enum ReadAhead {
    /// As far as the pipeline's bounded queues hold (no durable log: a
    /// crash loses what is in memory anyway).
    Queues,
    /// No read while a frame of the last one is unsettled — not committed
    /// to the durable log nor finished otherwise ([`crate::ticket`]); the
    /// kernel's buffer holds what arrives meanwhile. The frames count in
    /// the log's [`InFlight`] on their way to it.
    UntilSettled(InFlight),
}

/// One pipeline's source, prepared but not reading yet.
pub enum PreparedSource {
    /// A serial port (opened already if `required`).
    Serial(Box<serial::PreparedPort>),
    /// A capture feed.
    Replay(replay::PreparedFeed),
    /// A Modbus poller.
    Modbus(Box<modbus::PreparedPoller>),
}

/// A running source.
pub struct StartedSource {
    /// The source task; ends after shutdown or when the source is exhausted.
    pub task: tokio::task::JoinHandle<()>,
    /// The downlink queue (serial ports only).
    pub downlink: Option<serial::DownlinkSender>,
}

impl Source {
    /// Prepares `pipeline`'s source; fails with a message naming the key
    /// when it cannot work (e.g. a `required` port that does not open).
    pub fn prepare(
        &self,
        pipeline: &PipelineConfig,
        metrics: &Metrics,
    ) -> anyhow::Result<PreparedSource> {
        Ok(match self {
            Source::Serial if pipeline.modbus.is_some() => {
                PreparedSource::Modbus(Box::new(modbus::prepare(pipeline, metrics)?))
            }
            Source::Serial => PreparedSource::Serial(Box::new(serial::prepare(pipeline, metrics)?)),
            Source::Replay(plan) => PreparedSource::Replay(plan.prepare(pipeline, metrics)?),
        })
    }
}

impl PreparedSource {
    /// Starts the source: frames go to `frames` until `stop`. A replay
    /// reads files it can read again, so it ignores `read_ahead`.
    pub fn spawn(
        self,
        frames: mpsc::Sender<Frame>,
        stop: CancellationToken,
        read_ahead: ReadAhead,
    ) -> StartedSource {
        match self {
            PreparedSource::Serial(port) => {
                let started = port.spawn(frames, stop, read_ahead);
                StartedSource {
                    task: started.task,
                    downlink: Some(started.downlink),
                }
            }
            PreparedSource::Modbus(poller) => {
                let downlink = poller.downlink().clone();
                StartedSource {
                    task: poller.spawn(frames, stop, read_ahead),
                    downlink: Some(downlink),
                }
            }
            PreparedSource::Replay(feed) => StartedSource {
                task: feed.spawn(frames, stop),
                downlink: None,
            },
        }
    }
}
