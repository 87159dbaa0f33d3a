//! The embedded MQTT broker (`[broker] embedded = true`, and `sluice demo`).
//!
//! What: a [rumqttd] 0.20 broker running inside the sluice process, MQTT
//! 3.1.1 on plain TCP, so local applications (a dashboard, a PLC gateway,
//! `mosquitto_sub`) can subscribe to what sluice publishes without a separate
//! broker on the box. Why: the demo must work on a machine with nothing
//! installed, and a small box often needs only one local broker.
//!
//! How it fits: [`EmbeddedBroker::start`] runs before the MQTT sink; when the
//! config has no `[mqtt]`, the sink connects to the embedded broker
//! ([`client_config`]) exactly as it would to an external one (persistent
//! session, acknowledgements, status topics), so delivery accounting is the
//! same. rumqttd's config is built here in code; there is no rumqttd config
//! file. It is built without TLS (`default-features = false`), which keeps
//! aws-lc-rs and openssl out of the tree.
//!
//! What it does not do (rumqttd 0.20, as configured here — see docs/configuration.md):
//! * **No persistence**: sessions, queued messages and retained messages live
//!   in memory and are gone when sluice restarts.
//! * **Bounded per-topic log**: rumqttd keeps each topic's messages in an
//!   in-memory commit log of at most [`SEGMENT_BYTES`] × [`SEGMENTS`]; a
//!   subscriber (even with a persistent session) that falls further behind
//!   than that misses the oldest messages.
//! * **No authentication, no ACLs, no TLS**: anyone who can reach `listen`
//!   can publish and subscribe to anything. Keep it on loopback (the
//!   default) or a trusted network.
//! * **MQTT 3.1.1 only** on `listen` (rumqttd serves v5 on a separate
//!   listener, which sluice does not configure).
//! * **No clean shutdown**: rumqttd 0.20 has no stop API; the broker's
//!   threads end with the process.
//!
//! [rumqttd]: https://docs.rs/rumqttd/0.20.0

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::config::MqttConfig;
use crate::config::broker::BrokerConfig;

/// Bytes of one segment of rumqttd's per-topic in-memory log.
pub const SEGMENT_BYTES: usize = 1 << 20;
/// Segments kept per topic (older ones are dropped).
pub const SEGMENTS: usize = 2;
/// Most client connections the broker accepts at once.
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send CONNECT after the TCP connection.
const CONNECT_TIMEOUT_MS: u16 = 10_000;
/// Largest packet the broker accepts (the MQTT sink's default payload limit
/// is 256 KiB; topic and headers come on top).
const MAX_PACKET_BYTES: usize = 1 << 20;
/// How long [`EmbeddedBroker::start`] waits for the listener to come up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The listen address is in use (another broker, or another sluice).
    #[error(
        "embedded MQTT broker: {addr} is already in use (another MQTT broker? choose another port)"
    )]
    AddrInUse {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// Binding failed for another reason (permission, no such address).
    #[error("embedded MQTT broker: cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The broker's thread could not be started.
    #[error("embedded MQTT broker: cannot start its thread: {0}")]
    Thread(std::io::Error),
    /// The broker did not come up (its log says why).
    #[error("embedded MQTT broker did not start listening on {addr} within {timeout:?}")]
    NotListening {
        /// The address.
        addr: SocketAddr,
        /// How long we waited.
        timeout: Duration,
    },
}

/// A running embedded broker. Dropping it does not stop it (rumqttd 0.20
/// has no stop API); it ends with the process.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    _thread: std::thread::JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts the broker on `config.listen` and waits until it accepts
    /// connections. Port 0 becomes a free port ([`local_addr`](Self::local_addr)).
    pub fn start(config: &BrokerConfig) -> Result<EmbeddedBroker, BrokerError> {
        // rumqttd binds inside its own thread and only logs a failure; bind
        // here first so "address in use" is a clear error, and so port 0
        // becomes a concrete port we can hand to rumqttd and report.
        let addr = {
            let probe = TcpListener::bind(config.listen).map_err(|source| {
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    BrokerError::AddrInUse {
                        addr: config.listen,
                    }
                } else {
                    BrokerError::Bind {
                        addr: config.listen,
                        source,
                    }
                }
            })?;
            probe.local_addr().map_err(|source| BrokerError::Bind {
                addr: config.listen,
                source,
            })?
            // Dropped here; rumqttd binds the same address right after
            // (SO_REUSEADDR is set on both sides).
        };
        let mut broker = rumqttd::Broker::new(rumqttd_config(addr));
        let thread = std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                // Returns only when every listener stopped (e.g. bind failed).
                if let Err(err) = broker.start() {
                    tracing::error!(error = %err, "embedded MQTT broker stopped");
                }
            })
            .map_err(BrokerError::Thread)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&connect_addr(addr), Duration::from_millis(200)).is_ok() {
                break;
            }
            if thread.is_finished() || Instant::now() >= deadline {
                return Err(BrokerError::NotListening {
                    addr,
                    timeout: START_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::info!(%addr, "embedded MQTT broker listening on mqtt://{addr}");
        Ok(EmbeddedBroker {
            addr,
            _thread: thread,
        })
    }

    /// The address it listens on (the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Where a client on this machine reaches a listener bound to `addr`
/// (`0.0.0.0` / `::` → loopback).
pub fn connect_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let loopback: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(loopback, addr.port())
    } else {
        addr
    }
}

/// The `[mqtt]` the sink uses when the config has none but the embedded
/// broker is on: every key at its default, host and port from `broker`
/// (see [`connect_addr`]). `client_suffix` is appended to the default client
/// id (`sluice replay` uses `-replay`, so it can run beside the live host).
pub fn client_config(broker: SocketAddr, client_suffix: &str) -> MqttConfig {
    let target = connect_addr(broker);
    let mut table = toml::Table::new();
    table.insert("host".into(), target.ip().to_string().into());
    table.insert("port".into(), i64::from(target.port()).into());
    // Deserialising an almost empty table keeps every default in one place
    // (config/mod.rs); it cannot fail for a host string and a u16 port.
    let mut config: MqttConfig = match toml::Value::Table(table).try_into() {
        Ok(config) => config,
        Err(err) => unreachable!("[mqtt] with host and port must parse: {err}"),
    };
    if !client_suffix.is_empty() {
        config.client_id = Some(format!("{}{client_suffix}", config.effective_client_id()));
    }
    config
}

/// rumqttd's configuration, built in code: one MQTT 3.1.1 listener, anonymous
/// access, small bounded per-topic logs, no metrics/console/bridge threads.
fn rumqttd_config(listen: SocketAddr) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: CONNECT_TIMEOUT_MS,
        max_payload_size: MAX_PACKET_BYTES,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        // Without dynamic filters rumqttd disconnects a client that
        // publishes to a topic nobody has subscribed to yet.
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "sluice-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: MAX_CONNECTIONS,
            max_outgoing_packet_count: 200,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENTS,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_strict_keys() {
        let config: BrokerConfig = toml::from_str("").expect("empty is valid");
        assert!(!config.embedded);
        assert_eq!(config.listen, BrokerConfig::default().listen);
        let err = toml::from_str::<BrokerConfig>("embeded = true").expect_err("typo");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn client_config_points_at_the_broker_with_defaults() {
        let config = client_config("0.0.0.0:1999".parse().expect("addr"), "-replay");
        assert_eq!(config.host, "127.0.0.1");
        assert_eq!(config.port, 1999);
        assert!(
            config
                .client_id
                .as_deref()
                .is_some_and(|id| id.starts_with("sluice-") && id.ends_with("-replay"))
        );
        assert_eq!(config.queue_capacity.get(), 100_000);
    }

    #[test]
    fn a_taken_port_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = EmbeddedBroker::start(&BrokerConfig {
            embedded: true,
            listen: addr,
        })
        .expect_err("port is taken");
        assert!(matches!(err, BrokerError::AddrInUse { .. }), "{err}");
    }
}
