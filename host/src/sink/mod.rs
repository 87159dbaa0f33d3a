//! Sinks: where validated emissions leave the box.

pub mod dead_letter;
pub mod durable;
pub mod influx;
pub mod mqtt;
pub mod record;
