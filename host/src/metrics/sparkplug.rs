//! Sparkplug B edge node families (`sluice_sparkplug_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `{kind}`: the Sparkplug message type (`NBIRTH`, `DDATA`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Message type.
    pub kind: String,
}

/// `{reason}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Stable reason label.
    pub reason: String,
}

/// The edge node's counters.
#[derive(Debug, Default, Clone)]
pub struct SparkplugMetrics {
    /// 1 while the edge node is born (its births published, data flowing).
    pub online: Gauge,
    /// Messages published, by type.
    pub published: Family<KindLabel, Counter>,
    /// Points confirmed by the broker (a later round trip on the same
    /// connection), so removed from the queue.
    pub delivered: Counter,
    /// Points sent again after a connection broke before their
    /// confirmation (flagged historical; possible duplicates).
    pub resent: Counter,
    /// Commands (NCMD, DCMD) not acted on, by reason.
    pub commands_dropped: Family<ReasonLabel, Counter>,
}

impl SparkplugMetrics {
    /// Creates the families and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let f = Self::default();
        registry.register(
            "sparkplug_online",
            "1 while the Sparkplug edge node is born and publishing",
            f.online.clone(),
        );
        registry.register(
            "sparkplug_published",
            "Sparkplug messages published, by type",
            f.published.clone(),
        );
        registry.register(
            "sparkplug_delivered",
            "Points the broker confirmed (a round trip after them on the same connection)",
            f.delivered.clone(),
        );
        registry.register(
            "sparkplug_resent",
            "Points sent again, flagged historical, after a connection broke before they were confirmed",
            f.resent.clone(),
        );
        registry.register(
            "sparkplug_commands_dropped",
            "NCMD/DCMD messages or metrics not acted on, by reason",
            f.commands_dropped.clone(),
        );
        f
    }

    /// Counts a published message of type `kind`.
    pub fn published(&self, kind: &str) {
        self.published
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a command not acted on.
    pub fn command_dropped(&self, reason: &str) {
        self.commands_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
