//! sluice — a WebAssembly-extensible edge runtime for industrial IoT.
//!
//! The native host owns every side effect (serial ports, MQTT, InfluxDB,
//! buffering, the admin API); sandboxed Wasm components ("transforms") decode
//! frames and decide what leaves the box. See `ARCHITECTURE.md` for the map.

pub mod admin;
pub mod app;
pub mod backoff;
pub mod broker;
pub mod check;
pub mod cli;
pub mod config;
pub mod cpus;
pub mod demo;
pub mod hotswap;
pub mod jsonout;
pub mod metrics;
pub use sluice_core::model;
pub use sluice_core::output;
pub use sluice_outbox as outbox;
pub mod pipeline;
pub mod pty;
pub use sluice_core::ratelimit;
pub mod reload;
pub mod replay;
pub mod router;
pub use sluice_runtime as runtime;
pub mod scaffold;
pub mod secret;
pub mod shutdown;
pub mod sim;
pub mod sink;
pub mod source;
pub(crate) use sluice_core::sync;
pub use sluice_core::ticket;
pub mod wasm_build;
