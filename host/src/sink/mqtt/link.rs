//! One interface over rumqttc's two clients: MQTT 3.1.1 (`rumqttc`) and
//! MQTT 5 (`rumqttc::v5`).
//!
//! The sink's delivery tracking (`mod.rs`) is the same for both protocols;
//! what differs is how options are built, how events look and what an
//! acknowledgement can say. MQTT 5 acknowledgements carry a reason code, so a
//! publish the broker refused (an ACL denial, an invalid topic, a quota) is
//! reported as a [`Refusal`] instead of passing for a delivery; MQTT 3.1.1
//! has no way to say so (mosquitto acknowledges and drops a denied publish).
//!
//! The two rumqttc APIs are near-copies with distinct types, hence enums
//! with one arm per protocol rather than a trait with associated types: the
//! sink code stays non-generic and the match arms show every difference.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as v5p;
use rumqttc::{Outgoing, TlsConfiguration, Transport};

use super::{CommandRoute, Entry, MqttSetupError};
use crate::config::{MqttConfig, MqttProtocol};
use crate::model::Qos;

/// Bytes allowed in a PUBLISH packet beyond the payload: fixed header,
/// topic (up to 65535 + 2 length bytes), packet id and (MQTT 5) properties.
pub(crate) const PACKET_OVERHEAD: usize = 65_535 + 16;

/// The event loop. The sink puts its requests straight into its `pending`
/// queue; rumqttc's request channel stays unused (the client half is
/// dropped, the event loop keeps the channel open itself).
pub(super) enum Link {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What the broker said when it refused a publish (MQTT 5 only).
#[derive(Debug, Clone)]
pub(super) struct Refusal {
    /// The reason code in snake case, also the metric label
    /// (`refused_<code>`), e.g. `not_authorized`.
    pub code: &'static str,
    /// The broker's reason string, when it sent one.
    pub reason: Option<String>,
}

/// What the sink needs to know of one event-loop event.
#[derive(Debug)]
pub(super) enum LinkEvent {
    /// A CONNACK that accepted the connection.
    Connected {
        session_present: bool,
        /// The broker's maximum packet size (MQTT 5), if it announced one.
        max_packet_size: Option<u32>,
        /// How many QoS 1/2 publishes the broker takes in flight (MQTT 5).
        receive_max: Option<u16>,
    },
    /// QoS 1 acknowledgement (or refusal).
    PubAck { pkid: u16, refusal: Option<Refusal> },
    /// QoS 2, first acknowledgement (or refusal).
    PubRec { pkid: u16, refusal: Option<Refusal> },
    /// QoS 2, completed.
    PubComp { pkid: u16 },
    /// A publish was written with this packet id (0 for QoS 0).
    Sent(u16),
    /// An incoming publish (a downlink command).
    Command {
        topic: String,
        payload: Bytes,
        retain: bool,
    },
    /// SUBACK: per filter, whether the broker granted it.
    SubAck(Vec<bool>),
    /// Our DISCONNECT was written (clean shutdown).
    Disconnected,
    /// Anything else (pings, our own acks, …).
    Other,
}

fn qos_v311(qos: Qos) -> rumqttc::QoS {
    match qos {
        Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
        Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        Qos::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos_v5(qos: Qos) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        Qos::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        Qos::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        Qos::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// What every connection to the `[mqtt]` broker shares: the credentials
/// (username and password read from `password_env` / `password_file`) and
/// the TLS transport, if configured.
pub(crate) struct BrokerAccess {
    /// Username and password.
    pub credentials: Option<(String, String)>,
    /// TLS (`None`: plain TCP).
    pub transport: Option<Transport>,
}

impl BrokerAccess {
    /// Reads the secrets and certificates `[mqtt]` names.
    pub(crate) fn read(config: &MqttConfig) -> Result<BrokerAccess, MqttSetupError> {
        let credentials = match &config.username {
            Some(username) => {
                let password = crate::secret::read_secret(
                    "mqtt.password_env",
                    &config.password_env,
                    "mqtt.password_file",
                    &config.password_file,
                    &|var| std::env::var(var).ok(),
                )?;
                let password = password.map(|p| p.expose().to_owned()).unwrap_or_default();
                Some((username.clone(), password))
            }
            None => None,
        };
        let transport = match &config.tls {
            Some(tls) => {
                let read = |key: &'static str, path: &std::path::Path| {
                    std::fs::read(path).map_err(|source| MqttSetupError::ReadFile {
                        key,
                        path: path.display().to_string(),
                        source,
                    })
                };
                let ca = read("tls.ca_file", &tls.ca_file)?;
                let client_auth = match (&tls.client_cert_file, &tls.client_key_file) {
                    (Some(cert), Some(key)) => Some((
                        read("tls.client_cert_file", cert)?,
                        read("tls.client_key_file", key)?,
                    )),
                    _ => None,
                };
                Some(Transport::tls_with_config(TlsConfiguration::Simple {
                    ca,
                    alpn: None,
                    client_auth,
                }))
            }
            None => None,
        };
        Ok(BrokerAccess {
            credentials,
            transport,
        })
    }
}

/// Builds the event loop from `[mqtt]`, with a persistent
/// session and `offline` (retained) as last will on `status_topic`.
pub(super) fn connect(
    config: &MqttConfig,
    client_id: String,
    status_topic: &str,
) -> Result<Link, MqttSetupError> {
    let BrokerAccess {
        credentials,
        transport,
    } = BrokerAccess::read(config)?;
    let keep_alive = Duration::from_secs(u64::from(config.keep_alive_secs.get()));
    let max_packet = config
        .max_payload_bytes
        .get()
        .saturating_add(PACKET_OVERHEAD);
    // The request channel is not used (see `Link`).
    const CHANNEL: usize = 1;
    Ok(match config.protocol {
        MqttProtocol::V311 => {
            let mut options =
                rumqttc::MqttOptions::new(client_id, config.host.clone(), config.port);
            options.set_keep_alive(keep_alive);
            options.set_clean_session(false);
            options.set_inflight(config.max_inflight.get());
            options.set_max_packet_size(max_packet, max_packet);
            options.set_last_will(rumqttc::LastWill::new(
                status_topic,
                "offline",
                rumqttc::QoS::AtLeastOnce,
                true,
            ));
            if let Some((username, password)) = credentials {
                options.set_credentials(username, password);
            }
            if let Some(transport) = transport {
                options.set_transport(transport);
            }
            let mut eventloop = rumqttc::EventLoop::new(options, CHANNEL);
            eventloop.set_network_options(network_options());
            Link::V311(Box::new(eventloop))
        }
        MqttProtocol::V5 => {
            let mut options =
                rumqttc::v5::MqttOptions::new(client_id, config.host.clone(), config.port);
            options.set_keep_alive(keep_alive);
            // Keep the session: clean start off, and an expiry (0, the
            // default, would end the session at every disconnect).
            options.set_clean_start(false);
            options.set_session_expiry_interval(Some(config.session_expiry_secs));
            options.set_outgoing_inflight_upper_limit(config.max_inflight.get());
            options.set_max_packet_size(Some(u32::try_from(max_packet).unwrap_or(u32::MAX)));
            options.set_last_will(v5p::LastWill::new(
                status_topic,
                "offline",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                true,
                None,
            ));
            if let Some((username, password)) = credentials {
                options.set_credentials(username, password);
            }
            if let Some(transport) = transport {
                options.set_transport(transport);
            }
            options.set_network_options(network_options());
            Link::V5(Box::new(rumqttc::v5::EventLoop::new(options, CHANNEL)))
        }
    })
}

/// TCP options: no Nagle. rumqttc writes each packet as it goes; with
/// Nagle a publish written while an earlier one is unacknowledged at the
/// TCP level (a QoS 0 message gets no MQTT reply to carry the ACK) waits
/// for the peer's delayed ACK: measured 40 ms per QoS 1 message after a
/// QoS 0 one.
pub(crate) fn network_options() -> rumqttc::NetworkOptions {
    let mut options = rumqttc::NetworkOptions::new();
    options.set_tcp_nodelay(true);
    options
}

impl Link {
    /// Polls the event loop once. Errors come back as one line an operator
    /// can act on; the event loop reconnects on the next poll.
    pub(super) async fn poll(&mut self) -> Result<LinkEvent, String> {
        match self {
            Link::V311(eventloop) => eventloop
                .poll()
                .await
                .map(event_v311)
                .map_err(|e| describe_v311(&e)),
            Link::V5(eventloop) => eventloop
                .poll()
                .await
                .map(event_v5)
                .map_err(|e| describe_v5(&e)),
        }
    }

    /// Requests in the event loop's queue, not yet written.
    pub(super) fn pending_len(&self) -> usize {
        match self {
            Link::V311(eventloop) => eventloop.pending.len(),
            Link::V5(eventloop) => eventloop.pending.len(),
        }
    }

    /// Queues a publish under packet id `pkid` (0 for QoS 0), which must be
    /// free: rumqttc uses a preset id as it is.
    pub(super) fn push_publish(&mut self, pkid: u16, entry: Entry) {
        match self {
            Link::V311(eventloop) => {
                let topic = String::from(&*entry.topic);
                let mut publish =
                    rumqttc::Publish::from_bytes(topic, qos_v311(entry.qos), entry.payload);
                publish.retain = entry.retain;
                publish.pkid = pkid;
                eventloop
                    .pending
                    .push_back(rumqttc::Request::Publish(publish));
            }
            Link::V5(eventloop) => {
                let topic = entry.topic.as_str();
                let mut publish = v5p::Publish::new(topic, qos_v5(entry.qos), entry.payload, None);
                publish.retain = entry.retain;
                publish.pkid = pkid;
                eventloop
                    .pending
                    .push_back(rumqttc::v5::Request::Publish(publish));
            }
        }
    }

    /// Queues a DISCONNECT (clean shutdown).
    pub(super) fn push_disconnect(&mut self) {
        match self {
            Link::V311(eventloop) => eventloop
                .pending
                .push_back(rumqttc::Request::Disconnect(rumqttc::Disconnect)),
            Link::V5(eventloop) => eventloop
                .pending
                .push_back(rumqttc::v5::Request::Disconnect),
        }
    }

    /// Queues one SUBSCRIBE for every downlink route.
    pub(super) fn push_subscribe(&mut self, routes: &[CommandRoute]) {
        match self {
            Link::V311(eventloop) => {
                let filters = routes
                    .iter()
                    .map(|r| rumqttc::SubscribeFilter::new(r.filter.clone(), qos_v311(r.qos)));
                eventloop.pending.push_back(rumqttc::Request::Subscribe(
                    rumqttc::Subscribe::new_many(filters),
                ));
            }
            Link::V5(eventloop) => {
                let filters = routes
                    .iter()
                    .map(|r| v5p::Filter::new(r.filter.clone(), qos_v5(r.qos)));
                eventloop.pending.push_back(rumqttc::v5::Request::Subscribe(
                    v5p::Subscribe::new_many(filters, None),
                ));
            }
        }
    }

    /// The next event rumqttc already holds (read or produced in the same
    /// batch as the last one polled), without polling: what `poll` would
    /// return next, minus its timers and its `select`.
    pub(super) fn next_buffered(&mut self) -> Option<LinkEvent> {
        match self {
            Link::V311(eventloop) => eventloop.state.events.pop_front().map(event_v311),
            Link::V5(eventloop) => eventloop.state.events.pop_front().map(event_v5),
        }
    }

    /// After an established connection broke: the events rumqttc had
    /// read or produced but not yet returned (they belong to the old
    /// connection; rumqttc would return them after the next ConnAck).
    pub(super) fn take_buffered_events(&mut self) -> Vec<LinkEvent> {
        match self {
            Link::V311(eventloop) => eventloop.state.events.drain(..).map(event_v311).collect(),
            Link::V5(eventloop) => eventloop.state.events.drain(..).map(event_v5).collect(),
        }
    }

    /// After an established connection broke: removes every publish from
    /// the queue (rumqttc moved the unacknowledged ones there); the sink
    /// stages its own copies again. PubRels and the rest stay.
    pub(super) fn drop_pending_publishes(&mut self) {
        match self {
            Link::V311(eventloop) => eventloop
                .pending
                .retain(|r| !matches!(r, rumqttc::Request::Publish(_))),
            Link::V5(eventloop) => eventloop
                .pending
                .retain(|r| !matches!(r, rumqttc::v5::Request::Publish(_))),
        }
    }
}

fn event_v311(event: rumqttc::Event) -> LinkEvent {
    use rumqttc::{Event, Packet, SubscribeReasonCode};
    match event {
        Event::Incoming(Packet::ConnAck(ack)) => LinkEvent::Connected {
            session_present: ack.session_present,
            max_packet_size: None,
            receive_max: None,
        },
        Event::Incoming(Packet::PubAck(ack)) => LinkEvent::PubAck {
            pkid: ack.pkid,
            refusal: None,
        },
        Event::Incoming(Packet::PubRec(rec)) => LinkEvent::PubRec {
            pkid: rec.pkid,
            refusal: None,
        },
        Event::Incoming(Packet::PubComp(comp)) => LinkEvent::PubComp { pkid: comp.pkid },
        Event::Incoming(Packet::Publish(publish)) => LinkEvent::Command {
            topic: publish.topic,
            payload: publish.payload,
            retain: publish.retain,
        },
        Event::Incoming(Packet::SubAck(ack)) => LinkEvent::SubAck(
            ack.return_codes
                .iter()
                .map(|code| *code != SubscribeReasonCode::Failure)
                .collect(),
        ),
        Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::Sent(pkid),
        Event::Outgoing(Outgoing::Disconnect) => LinkEvent::Disconnected,
        _ => LinkEvent::Other,
    }
}

fn event_v5(event: rumqttc::v5::Event) -> LinkEvent {
    use rumqttc::v5::Event;
    use v5p::{Packet, PubAckReason, PubRecReason, SubscribeReasonCode};
    match event {
        // A refusing CONNACK comes back as an error from `poll`; its event
        // may still be buffered and must not pass for a connection.
        Event::Incoming(Packet::ConnAck(ack)) if ack.code == v5p::ConnectReturnCode::Success => {
            LinkEvent::Connected {
                session_present: ack.session_present,
                max_packet_size: ack.properties.as_ref().and_then(|p| p.max_packet_size),
                receive_max: ack.properties.as_ref().and_then(|p| p.receive_max),
            }
        }
        Event::Incoming(Packet::PubAck(ack)) => {
            let code = match ack.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                PubAckReason::UnspecifiedError => Some("unspecified_error"),
                PubAckReason::ImplementationSpecificError => Some("implementation_specific_error"),
                PubAckReason::NotAuthorized => Some("not_authorized"),
                PubAckReason::TopicNameInvalid => Some("topic_name_invalid"),
                PubAckReason::PacketIdentifierInUse => Some("packet_identifier_in_use"),
                PubAckReason::QuotaExceeded => Some("quota_exceeded"),
                PubAckReason::PayloadFormatInvalid => Some("payload_format_invalid"),
            };
            LinkEvent::PubAck {
                pkid: ack.pkid,
                refusal: code.map(|code| Refusal {
                    code,
                    reason: ack.properties.and_then(|p| p.reason_string),
                }),
            }
        }
        Event::Incoming(Packet::PubRec(rec)) => {
            let code = match rec.reason {
                PubRecReason::Success | PubRecReason::NoMatchingSubscribers => None,
                PubRecReason::UnspecifiedError => Some("unspecified_error"),
                PubRecReason::ImplementationSpecificError => Some("implementation_specific_error"),
                PubRecReason::NotAuthorized => Some("not_authorized"),
                PubRecReason::TopicNameInvalid => Some("topic_name_invalid"),
                PubRecReason::PacketIdentifierInUse => Some("packet_identifier_in_use"),
                PubRecReason::QuotaExceeded => Some("quota_exceeded"),
                PubRecReason::PayloadFormatInvalid => Some("payload_format_invalid"),
            };
            LinkEvent::PubRec {
                pkid: rec.pkid,
                refusal: code.map(|code| Refusal {
                    code,
                    reason: rec.properties.and_then(|p| p.reason_string),
                }),
            }
        }
        Event::Incoming(Packet::PubComp(comp)) => LinkEvent::PubComp { pkid: comp.pkid },
        Event::Incoming(Packet::Publish(publish)) => LinkEvent::Command {
            // The protocol requires UTF-8 topics; a broker that breaks that
            // gets its topic mangled, which no command route matches.
            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
            payload: publish.payload,
            retain: publish.retain,
        },
        Event::Incoming(Packet::SubAck(ack)) => LinkEvent::SubAck(
            ack.return_codes
                .iter()
                .map(|code| matches!(code, SubscribeReasonCode::Success(_)))
                .collect(),
        ),
        Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::Sent(pkid),
        Event::Outgoing(Outgoing::Disconnect) => LinkEvent::Disconnected,
        _ => LinkEvent::Other,
    }
}

/// A one-line reason an operator can act on.
fn describe_v311(err: &rumqttc::ConnectionError) -> String {
    match err {
        rumqttc::ConnectionError::ConnectionRefused(code) => {
            format!(
                "broker refused the connection: {code:?} (check credentials, client id and ACLs)"
            )
        }
        rumqttc::ConnectionError::Io(e) => format!("network: {e}"),
        other => other.to_string(),
    }
}

fn describe_v5(err: &rumqttc::v5::ConnectionError) -> String {
    use rumqttc::v5::{ConnectionError, StateError};
    match err {
        ConnectionError::ConnectionRefused(code) => {
            format!(
                "broker refused the connection: {code:?} (check credentials, client id and ACLs)"
            )
        }
        ConnectionError::MqttState(StateError::ConnFail { reason }) => {
            format!(
                "broker refused the connection: {reason:?} (check credentials, client id and ACLs)"
            )
        }
        ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code,
            reason_string,
        }) => format!(
            "broker closed the connection: {reason_code:?}{}",
            reason_string
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        ),
        ConnectionError::Io(e) => format!("network: {e}"),
        other => other.to_string(),
    }
}
