//! Sinks: where validated emissions leave the box.

pub mod influx;
pub mod mqtt;
