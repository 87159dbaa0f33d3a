//! Modbus poller metric families: requests by device and result, and
//! whether the bus (or TCP connection) is up.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::PipelineLabel;

/// `{pipeline, unit, result}` for Modbus requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabel {
    /// Pipeline name.
    pub pipeline: String,
    /// The device's unit id.
    pub unit: String,
    /// `ok`, `timeout`, `crc_error`, `exception_<code>`, `transport`,
    /// `mismatch`.
    pub result: String,
}

/// The Modbus metric families of one host.
#[derive(Debug, Default)]
pub struct ModbusFamilies {
    polls: Family<PollLabel, Counter>,
    connected: Family<PipelineLabel, Gauge>,
    connect_failures: Family<PipelineLabel, Counter>,
}

impl ModbusFamilies {
    /// Creates the families and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let f = Self::default();
        registry.register(
            "modbus_polls",
            "Modbus requests by device (unit id) and result: ok, timeout, crc_error (RTU: bytes came back but no frame whose CRC checks), exception_<code>, transport (the link failed), mismatch (an answer that does not fit the request)",
            f.polls.clone(),
        );
        registry.register(
            "modbus_connected",
            "1 while the pipeline's Modbus link (TCP connection or serial bus) is open",
            f.connected.clone(),
        );
        registry.register(
            "modbus_connect_failures",
            "Failed attempts to open the Modbus link",
            f.connect_failures.clone(),
        );
        f
    }

    /// The counters of one pipeline.
    pub fn pipeline(&self, pipeline: &str) -> ModbusMetrics {
        let label = PipelineLabel {
            pipeline: pipeline.to_owned(),
        };
        ModbusMetrics {
            pipeline: pipeline.to_owned(),
            polls: self.polls.clone(),
            connected: self.connected.get_or_create(&label).clone(),
            connect_failures: self.connect_failures.get_or_create(&label).clone(),
        }
    }
}

/// One pipeline's Modbus counters.
#[derive(Debug, Clone)]
pub struct ModbusMetrics {
    pipeline: String,
    polls: Family<PollLabel, Counter>,
    /// 1 while the link is open.
    pub connected: Gauge,
    /// Failed opens of the link.
    pub connect_failures: Counter,
}

impl ModbusMetrics {
    /// Counts one request to `unit` with `result`.
    pub fn poll(&self, unit: u8, result: &str) {
        self.polls
            .get_or_create(&PollLabel {
                pipeline: self.pipeline.clone(),
                unit: unit.to_string(),
                result: result.to_owned(),
            })
            .inc();
    }
}
