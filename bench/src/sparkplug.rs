//! Just enough of a Sparkplug B payload for the subscriber to tell which
//! frame a message of sluice's edge node carries: metric names (births),
//! aliases and the 64-bit value (`gateway_stats/seq`, an Int64). Written
//! here from the specification's field numbers, apart from sluice's own
//! encoder; fields not listed are skipped when decoding.

/// `Payload`: only its metrics (field 2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// The metrics.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
}

/// `Payload.Metric`: name (1), alias (2), `long_value` (11).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// In births.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// In births and data.
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Int64/UInt64 values (a member of the `value` oneof in the
    /// specification; the only one read here).
    #[prost(uint64, optional, tag = "11")]
    pub long_value: Option<u64>,
}

/// The metric that carries a frame's sequence number.
pub const SEQ_METRIC: &str = "gateway_stats/seq";
