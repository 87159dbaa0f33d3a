//! Sinks: where validated emissions leave the box.

pub mod durable;
pub mod influx;
pub mod mqtt;
