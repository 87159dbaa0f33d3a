//! sluice-core — the vocabulary and primitives the host's crates share.
//!
//! The data model between a source and a sink ([`model`]: frames in, MQTT
//! messages and points out), a frame's output as the host holds it and the
//! rules every output must meet ([`output`]: one buffer and an index; read
//! in place), frame tickets ([`ticket`]), a log-line rate limiter
//! ([`ratelimit`]) and [`sync::lock`].
//! It knows nothing of wasmtime, ports or sinks: `sluice-runtime` and the
//! host build on it, never the other way round.

pub mod model;
pub mod output;
pub mod ratelimit;
pub mod sync;
pub mod ticket;
