//! `[broker]`: the embedded MQTT broker's settings ([`crate::broker`]).

use std::net::SocketAddr;

use serde::Deserialize;

/// `[broker]`: the embedded MQTT broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Run the embedded broker (default false). Without `[mqtt]`, the MQTT
    /// sink then publishes to it.
    #[serde(default)]
    pub embedded: bool,
    /// Where it listens (MQTT 3.1.1, plain TCP). Default `127.0.0.1:1883`;
    /// port 0 picks a free port (logged).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            embedded: false,
            listen: default_listen(),
        }
    }
}
