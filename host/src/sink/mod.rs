//! Sinks: where validated emissions leave the box.
//!
//! Every sink starts the same way: `start(config section, SinkContext)`
//! (the MQTT sink also takes the downlink command routes it subscribes
//! for). The router ([`crate::router`]) feeds them.

pub mod dead_letter;
pub mod durable;
pub mod influx;
pub mod mqtt;
pub mod record;
pub mod sparkplug;

use std::path::PathBuf;
use std::sync::Arc;

use crate::metrics::Metrics;
use durable::DurableQueue;

/// What every sink is started with besides its own config section.
#[derive(Clone)]
pub struct SinkContext {
    /// The host's counters.
    pub metrics: Arc<Metrics>,
    /// `data_dir`: the sink's dead letters go to `<data_dir>/dead-letter/`.
    pub data_dir: Option<PathBuf>,
    /// The sink's queue in the durable log: data waits there (on disk)
    /// until the sink confirms it. `None`: in memory only.
    pub durable: Option<Arc<DurableQueue>>,
}

impl SinkContext {
    /// A sink that keeps its data in memory, with its dead letters under
    /// `data_dir` if given.
    pub fn in_memory(metrics: Arc<Metrics>, data_dir: Option<PathBuf>) -> Self {
        Self {
            metrics,
            data_dir,
            durable: None,
        }
    }
}
